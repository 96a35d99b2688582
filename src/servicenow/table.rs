//! Typed Table API calls over `/api/now/v2/table/<table>` (v2 pinned: a list without a match is
//! `200 {"result":[]}`, never the `404` of v1), and the caller's identity from
//! `/api/now/ui/user/current_user`.
//!
//! Every list asks only for the columns it reads (`sysparm_fields`), plain sys_ids for
//! references (`sysparm_exclude_reference_link=true`) and no row count (`sysparm_no_count=true`).

use serde_json::{Map, Value};

use super::{
    Error, ErrorKind, InstanceUrl, SecretString,
    http::{Call, Transport},
    query::EncodedQuery,
};

/// A table the client touches, with the metric label of each call on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Table {
    /// The table name, e.g. `sys_script`.
    pub name: &'static str,
    list: &'static str,
    create: &'static str,
    update: &'static str,
    delete: &'static str,
}

/// Business Rules.
pub(crate) const SYS_SCRIPT: Table = Table {
    name: "sys_script",
    list: "list_sys_script",
    create: "create_sys_script",
    update: "update_sys_script",
    delete: "delete_sys_script",
};
/// System Properties.
pub(crate) const SYS_PROPERTIES: Table = Table {
    name: "sys_properties",
    list: "list_sys_properties",
    create: "create_sys_properties",
    update: "update_sys_properties",
    delete: "delete_sys_properties",
};
/// Role grants.
pub(crate) const SYS_USER_HAS_ROLE: Table = Table {
    name: "sys_user_has_role",
    list: "list_sys_user_has_role",
    create: "create_sys_user_has_role",
    update: "update_sys_user_has_role",
    delete: "delete_sys_user_has_role",
};
/// One record as the Table API returns it: column → value (strings, in the default mode).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Record(pub Map<String, Value>);

impl Record {
    /// The value of `column` as text: `""` when absent or `null`; a reference's `value` when
    /// the instance sent `{link, value}` anyway; JSON booleans and numbers as written.
    pub fn text(&self, column: &str) -> String {
        match self.0.get(column) {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Object(reference)) => reference
                .get("value")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            Some(Value::Bool(flag)) => flag.to_string(),
            Some(Value::Number(number)) => number.to_string(),
            _ => String::new(),
        }
    }

    /// The value of a boolean column: `true` only for `"true"` (or JSON `true`).
    pub fn flag(&self, column: &str) -> bool {
        self.text(column).eq_ignore_ascii_case("true")
    }
}

/// Table API calls on one instance with one access token.
pub(crate) struct TableApi<'a> {
    /// The transport.
    pub transport: &'a Transport,
    /// The instance.
    pub instance: &'a InstanceUrl,
    /// The bearer token.
    pub access_token: &'a SecretString,
}

impl TableApi<'_> {
    /// A list of the records of `table` matching `query`, with `fields` only, at most `limit`:
    /// to send alone ([`TableApi::get`]) or in a batch.
    pub fn list_read(
        &self,
        table: Table,
        query: &EncodedQuery,
        fields: &[&str],
        limit: u32,
    ) -> Result<Read<'_>, Error> {
        let call = self.call(table, table.list, format!("list {}", table.name), "read");
        let mut url = reqwest::Url::parse(&self.instance.join(&collection_path(table))).map_err(|error| {
            call.error(ErrorKind::Protocol {
                reason: format!("refused to build the URL: {error}"),
            })
        })?;
        url.query_pairs_mut().extend_pairs([
            ("sysparm_query", query.as_str()),
            ("sysparm_fields", &fields.join(",")),
            ("sysparm_limit", &limit.to_string()),
            ("sysparm_exclude_reference_link", "true"),
            ("sysparm_no_count", "true"),
        ]);
        Ok(Read { call, url })
    }

    /// Sends `read` on its own; its answer, when `200`.
    pub async fn get<'r>(&self, read: &'r Read<'r>) -> Result<ReadAnswer<'r>, Error> {
        let request = self
            .transport
            .client()
            .get(read.url.clone())
            .bearer_auth(self.access_token.expose())
            .header(reqwest::header::ACCEPT, "application/json");
        let answer = self.transport.expect(&read.call, request, &[200]).await?;
        Ok(ReadAnswer { read, answer })
    }

    /// Inserts `values` into `table` (201); returns the new record's `fields`.
    pub async fn create(&self, table: Table, values: Map<String, Value>, fields: &[&str]) -> Result<Record, Error> {
        let call = self.call(
            table,
            table.create,
            format!("create a record in {}", table.name),
            "create",
        );
        let request = self
            .request(reqwest::Method::POST, &collection_path(table))
            .query(&[
                ("sysparm_fields", fields.join(",").as_str()),
                ("sysparm_exclude_reference_link", "true"),
            ])
            .json(&values);
        let answer = self.transport.expect(&call, request, &[201]).await?;
        answer
            .json::<Envelope<Map<String, Value>>>(&call)
            .map(|envelope| Record(envelope.result))
    }

    /// Sets `values` on the record `sys_id` of `table` (PATCH, 200); returns its `fields`.
    pub async fn update(
        &self,
        table: Table,
        sys_id: &str,
        values: Map<String, Value>,
        fields: &[&str],
    ) -> Result<Record, Error> {
        let call = self.call(
            table,
            table.update,
            format!("update {} record {sys_id:?}", table.name),
            "update",
        );
        let path = record_path(table, sys_id).ok_or_else(|| not_a_sys_id(&call))?;
        let request = self
            .request(reqwest::Method::PATCH, &path)
            .query(&[
                ("sysparm_fields", fields.join(",").as_str()),
                ("sysparm_exclude_reference_link", "true"),
            ])
            .json(&values);
        let answer = self.transport.expect(&call, request, &[200]).await?;
        answer
            .json::<Envelope<Map<String, Value>>>(&call)
            .map(|envelope| Record(envelope.result))
    }

    /// Deletes the record `sys_id` of `table` (204). A record already gone (404) is fine.
    pub async fn delete(&self, table: Table, sys_id: &str) -> Result<(), Error> {
        let call = self.call(
            table,
            table.delete,
            format!("delete {} record {sys_id:?}", table.name),
            "delete",
        );
        let path = record_path(table, sys_id).ok_or_else(|| not_a_sys_id(&call))?;
        let request = self.request(reqwest::Method::DELETE, &path);
        self.transport
            .expect(&call, request, &[204, 200, 404])
            .await
            .map(|_| ())
    }

    /// The caller from `/api/now/ui/user/current_user`: `user_sys_id`, `user_name`, `user_display_name`.
    pub async fn current_user(&self) -> Result<Record, Error> {
        let call = Call {
            instance: self.instance,
            metric: "current_user",
            action: "read the current user".to_owned(),
            resource: "current_user",
            operation: "read",
        };
        let request = self.request(reqwest::Method::GET, "/api/now/ui/user/current_user");
        let answer = self.transport.expect(&call, request, &[200]).await?;
        answer
            .json::<Envelope<Map<String, Value>>>(&call)
            .map(|envelope| Record(envelope.result))
    }

    /// A query error as this client's [`Error`]: a value it refuses to put in a query.
    pub fn refused(&self, table: Table, error: super::query::QueryError) -> Error {
        self.call(table, table.list, format!("list {}", table.name), "read")
            .error(ErrorKind::Protocol {
                reason: format!("refused to build the query: {error}"),
            })
    }

    fn call(&self, table: Table, metric: &'static str, action: String, operation: &'static str) -> Call<'_> {
        Call {
            instance: self.instance,
            metric,
            action,
            resource: table.name,
            operation,
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.transport
            .client()
            .request(method, self.instance.join(path))
            .bearer_auth(self.access_token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
    }
}

/// A GET of the Table API, described before it is sent: alone ([`TableApi::get`]) or as an
/// item of a Batch API request (`super::batch`), with the same URL and the same checks.
pub(crate) struct Read<'a> {
    /// How the call is counted and what its errors say.
    pub call: Call<'a>,
    /// The absolute URL, query included.
    pub url: reqwest::Url,
}

impl Read<'_> {
    /// The URL relative to the instance (path and query), as a batch item names it.
    pub fn relative_url(&self) -> String {
        match self.url.query() {
            Some(query) => format!("{}?{query}", self.url.path()),
            None => self.url.path().to_owned(),
        }
    }
}

/// The `200` answer to a [`Read`].
pub(crate) struct ReadAnswer<'a> {
    /// The read it answers.
    pub read: &'a Read<'a>,
    /// The answer.
    pub answer: super::http::Answer,
}

impl ReadAnswer<'_> {
    /// The records of a list's `{"result":[…]}`.
    pub fn records(&self) -> Result<Vec<Record>, Error> {
        self.answer
            .json::<Envelope<Vec<Map<String, Value>>>>(&self.read.call)
            .map(|envelope| envelope.result.into_iter().map(Record).collect())
    }
}

#[derive(serde::Deserialize)]
struct Envelope<T> {
    result: T,
}

fn not_a_sys_id(call: &Call<'_>) -> Error {
    call.error(ErrorKind::Protocol {
        reason: "refused to call: the value is not a sys_id".to_owned(),
    })
}

fn collection_path(table: Table) -> String {
    format!("/api/now/v2/table/{}", table.name)
}

/// The path of one record, when `sys_id` looks like one (`[A-Za-z0-9_-]+`; real ones are 32
/// hex digits): nothing else may reach the path.
fn record_path(table: Table, sys_id: &str) -> Option<String> {
    let plain = !sys_id.is_empty()
        && sys_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    plain.then(|| format!("/api/now/v2/table/{}/{sys_id}", table.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_read_as_the_table_api_sends_them() {
        let record = Record(
            serde_json::json!({
                "name": "Neo", "active": "true", "advanced": "false", "order": 100, "flag": true,
                "user": {"link": "https://x/api/now/table/sys_user/abc", "value": "abc"}, "empty": null
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
        assert_eq!(record.text("name"), "Neo");
        assert!(record.flag("active"));
        assert!(!record.flag("advanced"));
        assert!(record.flag("flag"));
        assert_eq!(record.text("order"), "100");
        assert_eq!(record.text("user"), "abc");
        assert_eq!(record.text("empty"), "");
        assert_eq!(record.text("missing"), "");
    }

    #[test]
    fn a_sys_id_cannot_leave_its_path_segment() {
        assert_eq!(
            record_path(SYS_SCRIPT, "abc123").as_deref(),
            Some("/api/now/v2/table/sys_script/abc123")
        );
        for sys_id in ["", "..", "../x", "a?b", "a b", "a/b"] {
            assert_eq!(record_path(SYS_SCRIPT, sys_id), None, "{sys_id:?}");
        }
    }
}
