//! [`Client`]: the real [`ServiceNow`], over HTTPS, and the mapping between the records and
//! their Table API columns.

use std::{sync::Arc, time::Instant};

use serde_json::{Map, Value};

use super::{
    BusinessRule, BusinessRuleFields, ClientConfig, ClientCredentials, Error, ErrorKind, Found, InstanceRecords,
    InstanceUrl, Lookup, SecretString, ServiceNow, SystemProperty, SystemPropertyFields, TokenGrant, User,
    batch::{self, Outcome, Refusals},
    http::{Call, Transport},
    oauth,
    query::EncodedQuery,
    table::{Read, ReadAnswer, Record, SYS_PROPERTIES, SYS_SCRIPT, SYS_USER_HAS_ROLE, Table, TableApi},
};

/// Most records one list reads: the names the operator looks up have a handful of rows at most
/// (duplicates included); a user has far fewer role grants.
const LIST_LIMIT: u32 = 1000;

/// The columns of `sys_script` read and written.
const RULE_COLUMNS: [&str; 15] = [
    "sys_id",
    "sys_created_on",
    "name",
    "collection",
    "when",
    "order",
    "active",
    "advanced",
    "action_insert",
    "action_update",
    "action_delete",
    "action_query",
    "filter_condition",
    "description",
    "script",
];

/// The columns of `sys_properties` read and written.
const PROPERTY_COLUMNS: [&str; 7] = [
    "sys_id",
    "sys_created_on",
    "name",
    "value",
    "type",
    "description",
    "is_private",
];

/// The real [`ServiceNow`]: one HTTP client shared by every instance (see [`ClientConfig`]).
/// Cheap to clone.
#[derive(Clone)]
pub struct Client {
    transport: Arc<Transport>,
    /// The instances that refused a batch lately: their lookups are sent apart.
    refusals: Arc<Refusals>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Builds the client. Fails when the CA bundle cannot be read or holds no certificate.
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        Ok(Client {
            transport: Arc::new(Transport::new(config)?),
            refusals: Arc::new(Refusals::default()),
        })
    }

    /// A [`Lookup`] as separate reads, roles first: the webhook records are read only when the
    /// roles were.
    async fn lookup_apart(&self, instance: &InstanceUrl, access_token: &SecretString, lookup: &Lookup<'_>) -> Found {
        let roles = self
            .user_roles(instance, access_token, lookup.user_sys_id, lookup.roles)
            .await;
        if roles.is_err() {
            return Found { roles, records: None };
        }
        let records = async {
            Ok(InstanceRecords {
                rules: self.business_rules(instance, access_token, lookup.rule_names).await?,
                properties: self.properties(instance, access_token, lookup.property_name).await?,
            })
        }
        .await;
        Found {
            roles,
            records: Some(records),
        }
    }

    fn table<'a>(&'a self, instance: &'a InstanceUrl, access_token: &'a SecretString) -> TableApi<'a> {
        TableApi {
            transport: &self.transport,
            instance,
            access_token,
        }
    }
}

impl ServiceNow for Client {
    async fn refresh_token(
        &self,
        instance: &InstanceUrl,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<TokenGrant, Error> {
        oauth::refresh(&self.transport, instance, credentials, refresh_token).await
    }

    async fn exchange_code(
        &self,
        instance: &InstanceUrl,
        credentials: &ClientCredentials,
        code: &SecretString,
        redirect_uri: &str,
        pkce_verifier: &SecretString,
    ) -> Result<TokenGrant, Error> {
        oauth::exchange_code(
            &self.transport,
            instance,
            credentials,
            code,
            redirect_uri,
            pkce_verifier,
        )
        .await
    }

    async fn revoke(
        &self,
        instance: &InstanceUrl,
        _credentials: &ClientCredentials,
        token: &SecretString,
    ) -> Result<(), Error> {
        oauth::revoke(&self.transport, instance, token).await
    }

    async fn current_user(&self, instance: &InstanceUrl, access_token: &SecretString) -> Result<User, Error> {
        let record = self.table(instance, access_token).current_user().await?;
        let user = User {
            sys_id: record.text("user_sys_id"),
            user_name: record.text("user_name"),
            display_name: record.text("user_display_name"),
        };
        if user.sys_id.is_empty() || user.user_name.is_empty() {
            let call = Call {
                instance,
                metric: "current_user",
                action: "read the current user".to_owned(),
                resource: "current_user",
                operation: "read",
            };
            return Err(call.error(ErrorKind::Protocol {
                reason: "unexpected answer: the current user has no user_sys_id or user_name".to_owned(),
            }));
        }
        Ok(user)
    }

    async fn user_roles(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        user_sys_id: &str,
        names: &[&str],
    ) -> Result<Vec<String>, Error> {
        let api = self.table(instance, access_token);
        roles(api.get(&roles_read(&api, user_sys_id, names)?).await?)
    }

    async fn business_rules(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        names: &[&str],
    ) -> Result<Vec<BusinessRule>, Error> {
        let api = self.table(instance, access_token);
        rules(api.get(&rules_read(&api, names)?).await?)
    }

    async fn lookup(&self, instance: &InstanceUrl, access_token: &SecretString, lookup: &Lookup<'_>) -> Found {
        let api = self.table(instance, access_token);
        let reads = (
            roles_read(&api, lookup.user_sys_id, lookup.roles),
            rules_read(&api, lookup.rule_names),
            properties_read(&api, lookup.property_name),
        );
        // A read that cannot be built is reported by the same read sent apart.
        if let (Ok(roles_read), Ok(rules_read), Ok(properties_read)) = reads
            && !self.refusals.apart(instance.host(), Instant::now())
        {
            let reads = [roles_read, rules_read, properties_read];
            match batch::send(&api, &reads).await {
                Outcome::Answered([held, found_rules, found_properties]) => {
                    let records = found_rules.and_then(rules).and_then(|rules| {
                        Ok(InstanceRecords {
                            rules,
                            properties: properties(found_properties?)?,
                        })
                    });
                    return Found {
                        roles: held.and_then(roles),
                        records: Some(records),
                    };
                }
                Outcome::Failed(error) => {
                    return Found {
                        roles: Err(error),
                        records: None,
                    };
                }
                Outcome::Refused(error) => {
                    tracing::info!(instance = %instance.host(), %error, "the instance refused a batch: its reads are sent apart for an hour");
                    self.refusals.note(instance.host(), Instant::now());
                }
            }
        }
        self.lookup_apart(instance, access_token, lookup).await
    }

    async fn create_business_rule(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        fields: &BusinessRuleFields,
    ) -> Result<BusinessRule, Error> {
        let record = self
            .table(instance, access_token)
            .create(SYS_SCRIPT, rule_values(fields), &RULE_COLUMNS)
            .await?;
        rule(instance, &record)
    }

    async fn update_business_rule(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        sys_id: &str,
        fields: &BusinessRuleFields,
    ) -> Result<BusinessRule, Error> {
        let api = self.table(instance, access_token);
        let record = api
            .update(SYS_SCRIPT, sys_id, rule_values(fields), &RULE_COLUMNS)
            .await?;
        rule(instance, &record)
    }

    async fn delete_business_rule(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        sys_id: &str,
    ) -> Result<(), Error> {
        self.table(instance, access_token).delete(SYS_SCRIPT, sys_id).await
    }

    async fn properties(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        name: &str,
    ) -> Result<Vec<SystemProperty>, Error> {
        let api = self.table(instance, access_token);
        properties(api.get(&properties_read(&api, name)?).await?)
    }

    async fn create_property(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        fields: &SystemPropertyFields,
    ) -> Result<SystemProperty, Error> {
        let api = self.table(instance, access_token);
        let record = api
            .create(SYS_PROPERTIES, property_values(fields), &PROPERTY_COLUMNS)
            .await?;
        property(instance, &record)
    }

    async fn update_property(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        sys_id: &str,
        fields: &SystemPropertyFields,
    ) -> Result<SystemProperty, Error> {
        let api = self.table(instance, access_token);
        let record = api
            .update(SYS_PROPERTIES, sys_id, property_values(fields), &PROPERTY_COLUMNS)
            .await?;
        property(instance, &record)
    }

    async fn delete_property(
        &self,
        instance: &InstanceUrl,
        access_token: &SecretString,
        sys_id: &str,
    ) -> Result<(), Error> {
        self.table(instance, access_token).delete(SYS_PROPERTIES, sys_id).await
    }
}

/// The grants of `names` to `user_sys_id`, active ones only, one row per grant: see
/// [`ServiceNow::user_roles`].
fn roles_read<'a>(api: &'a TableApi<'a>, user_sys_id: &str, names: &[&str]) -> Result<Read<'a>, Error> {
    let query = EncodedQuery::new()
        .equals("user", user_sys_id)
        .and_then(|query| query.equals("state", "active"))
        .and_then(|query| query.any_of("role.name", names))
        .map_err(|error| api.refused(SYS_USER_HAS_ROLE, error))?;
    api.list_read(SYS_USER_HAS_ROLE, &query, &["role.name"], LIST_LIMIT)
}

/// The role names of [`roles_read`]'s answer, sorted, without duplicates.
fn roles(answer: ReadAnswer<'_>) -> Result<Vec<String>, Error> {
    let mut roles: Vec<String> = answer
        .records()?
        .iter()
        .map(|record| record.text("role.name"))
        .filter(|role| !role.is_empty())
        .collect();
    roles.sort();
    roles.dedup();
    Ok(roles)
}

/// The Business Rules named any of `names`, oldest first.
fn rules_read<'a>(api: &'a TableApi<'a>, names: &[&str]) -> Result<Read<'a>, Error> {
    named_read(api, SYS_SCRIPT, names, &RULE_COLUMNS)
}

/// The rules of [`rules_read`]'s answer.
fn rules(answer: ReadAnswer<'_>) -> Result<Vec<BusinessRule>, Error> {
    each_record(&answer, rule)
}

/// The System Properties named `name`, oldest first.
fn properties_read<'a>(api: &'a TableApi<'a>, name: &str) -> Result<Read<'a>, Error> {
    named_read(api, SYS_PROPERTIES, &[name], &PROPERTY_COLUMNS)
}

/// The properties of [`properties_read`]'s answer.
fn properties(answer: ReadAnswer<'_>) -> Result<Vec<SystemProperty>, Error> {
    each_record(&answer, property)
}

/// The `columns` of the records of `table` named any of `names`, oldest first.
fn named_read<'a>(api: &'a TableApi<'a>, table: Table, names: &[&str], columns: &[&str]) -> Result<Read<'a>, Error> {
    let query = EncodedQuery::new()
        .any_of("name", names)
        .and_then(|query| query.order_by("sys_created_on"))
        .map_err(|error| api.refused(table, error))?;
    api.list_read(table, &query, columns, LIST_LIMIT)
}

/// Each record of a list's answer, as `convert` reads it.
fn each_record<T>(
    answer: &ReadAnswer<'_>,
    convert: fn(&InstanceUrl, &Record) -> Result<T, Error>,
) -> Result<Vec<T>, Error> {
    let instance = answer.read.call.instance;
    answer
        .records()?
        .iter()
        .map(|record| convert(instance, record))
        .collect()
}

/// A `sys_script` record as a [`BusinessRule`]; one without a sys_id is an unexpected answer.
fn rule(instance: &InstanceUrl, record: &Record) -> Result<BusinessRule, Error> {
    Ok(BusinessRule {
        sys_id: sys_id(instance, record, SYS_SCRIPT.name)?,
        sys_created_on: record.text("sys_created_on"),
        fields: BusinessRuleFields {
            name: record.text("name"),
            collection: record.text("collection"),
            when: record.text("when"),
            order: record.text("order"),
            active: record.flag("active"),
            advanced: record.flag("advanced"),
            action_insert: record.flag("action_insert"),
            action_update: record.flag("action_update"),
            action_delete: record.flag("action_delete"),
            action_query: record.flag("action_query"),
            filter_condition: record.text("filter_condition"),
            description: record.text("description"),
            script: record.text("script"),
        },
    })
}

/// The managed columns of a Business Rule, as the Table API takes them (strings).
fn rule_values(fields: &BusinessRuleFields) -> Map<String, Value> {
    let text = |value: &str| Value::String(value.to_owned());
    let flag = |value: bool| Value::String(value.to_string());
    Map::from_iter([
        ("name".to_owned(), text(&fields.name)),
        ("collection".to_owned(), text(&fields.collection)),
        ("when".to_owned(), text(&fields.when)),
        ("order".to_owned(), text(&fields.order)),
        ("active".to_owned(), flag(fields.active)),
        ("advanced".to_owned(), flag(fields.advanced)),
        ("action_insert".to_owned(), flag(fields.action_insert)),
        ("action_update".to_owned(), flag(fields.action_update)),
        ("action_delete".to_owned(), flag(fields.action_delete)),
        ("action_query".to_owned(), flag(fields.action_query)),
        ("filter_condition".to_owned(), text(&fields.filter_condition)),
        ("description".to_owned(), text(&fields.description)),
        ("script".to_owned(), text(&fields.script)),
    ])
}

/// A `sys_properties` record as a [`SystemProperty`].
fn property(instance: &InstanceUrl, record: &Record) -> Result<SystemProperty, Error> {
    Ok(SystemProperty {
        sys_id: sys_id(instance, record, SYS_PROPERTIES.name)?,
        sys_created_on: record.text("sys_created_on"),
        fields: SystemPropertyFields {
            name: record.text("name"),
            value: record.text("value"),
            property_type: record.text("type"),
            description: record.text("description"),
            is_private: record.flag("is_private"),
        },
    })
}

/// The managed columns of a System Property.
fn property_values(fields: &SystemPropertyFields) -> Map<String, Value> {
    Map::from_iter([
        ("name".to_owned(), Value::String(fields.name.clone())),
        ("value".to_owned(), Value::String(fields.value.clone())),
        ("type".to_owned(), Value::String(fields.property_type.clone())),
        ("description".to_owned(), Value::String(fields.description.clone())),
        ("is_private".to_owned(), Value::String(fields.is_private.to_string())),
    ])
}

fn sys_id(instance: &InstanceUrl, record: &Record, table: &str) -> Result<String, Error> {
    let sys_id = record.text("sys_id");
    if sys_id.is_empty() {
        return Err(Error {
            action: format!("read {table}"),
            host: instance.host().to_owned(),
            kind: ErrorKind::Protocol {
                reason: format!("unexpected answer: a {table} record without sys_id"),
            },
        });
    }
    Ok(sys_id)
}
