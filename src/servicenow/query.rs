//! Encoded queries (`sysparm_query`) built from parts that cannot change the query's meaning.
//!
//! ServiceNow has no escape for the condition separator `^`: a value holding it would silently
//! become two conditions (`name=a^ORname=b`), and a value starting with `javascript:` is run as
//! script on the instance. Such values are refused rather than sent as a different query. The
//! builder never uses `IN` lists either, whose `,` separator has no escape: a choice of values is
//! spelled `f=a^ORf=b`.

/// Why a query part was refused. Says which field; never repeats the value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The field name is not `[A-Za-z0-9_.]+` (a dot walks a reference, as in `role.name`).
    #[error("the field name {field:?} is not a plain (dot-walked) column name")]
    Field {
        /// The field name.
        field: String,
    },
    /// The value holds `^`, which an encoded query cannot escape.
    #[error("the value for {field} contains '^', which an encoded query cannot escape")]
    Caret {
        /// The field the value was for.
        field: String,
    },
    /// The value starts with `javascript:`, which the instance would run as script.
    #[error("the value for {field} starts with 'javascript:', which the instance would run as script")]
    Script {
        /// The field the value was for.
        field: String,
    },
    /// A choice of no values matches nothing, which an encoded query cannot say.
    #[error("no values given for {field}")]
    NoValues {
        /// The field.
        field: String,
    },
}

/// An encoded query: conditions joined by `^` (AND). Build with [`EncodedQuery::equals`] and
/// [`EncodedQuery::any_of`]; read with [`EncodedQuery::as_str`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodedQuery {
    text: String,
}

impl EncodedQuery {
    /// An empty query (matches every record).
    pub fn new() -> Self {
        EncodedQuery::default()
    }

    /// Adds `field=value` (AND).
    pub fn equals(self, field: &str, value: &str) -> Result<Self, QueryError> {
        self.any_of(field, &[value])
    }

    /// Adds `field=v1^ORfield=v2…` (AND with what is already there; `^OR` binds tighter).
    pub fn any_of(mut self, field: &str, values: &[&str]) -> Result<Self, QueryError> {
        check_field(field)?;
        if values.is_empty() {
            return Err(QueryError::NoValues {
                field: field.to_owned(),
            });
        }
        for (index, value) in values.iter().enumerate() {
            check_value(field, value)?;
            let separator = match (index, self.text.is_empty()) {
                (0, true) => "",
                (0, false) => "^",
                _ => "^OR",
            };
            self.text.push_str(separator);
            self.text.push_str(field);
            self.text.push('=');
            self.text.push_str(value);
        }
        Ok(self)
    }

    /// Adds `ORDERBY<field>` (ascending).
    pub fn order_by(mut self, field: &str) -> Result<Self, QueryError> {
        check_field(field)?;
        if !self.text.is_empty() {
            self.text.push('^');
        }
        self.text.push_str("ORDERBY");
        self.text.push_str(field);
        Ok(self)
    }

    /// The query text, for `sysparm_query` (the URL encoder escapes it for transport).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn check_field(field: &str) -> Result<(), QueryError> {
    let plain = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if field.split('.').all(plain) {
        Ok(())
    } else {
        Err(QueryError::Field {
            field: field.to_owned(),
        })
    }
}

fn check_value(field: &str, value: &str) -> Result<(), QueryError> {
    if value.contains('^') {
        return Err(QueryError::Caret {
            field: field.to_owned(),
        });
    }
    let lead = value.trim_start();
    if lead
        .get(..11)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("javascript:"))
    {
        return Err(QueryError::Script {
            field: field.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_joined_with_and_and_choices_with_or() {
        let query = EncodedQuery::new()
            .any_of("name", &["Neo Agent — Task Webhook", "Neo Agent — Incident Webhook"])
            .and_then(|q| q.equals("active", "true"))
            .and_then(|q| q.order_by("sys_created_on"))
            .unwrap();
        assert_eq!(
            query.as_str(),
            "name=Neo Agent — Task Webhook^ORname=Neo Agent — Incident Webhook^active=true^ORDERBYsys_created_on"
        );
    }

    #[test]
    fn a_dot_walked_field_is_accepted() {
        let query = EncodedQuery::new()
            .equals("user", "abc")
            .and_then(|q| q.equals("role.name", "itil"))
            .unwrap();
        assert_eq!(query.as_str(), "user=abc^role.name=itil");
    }

    #[test]
    fn a_value_with_a_caret_is_refused_rather_than_split_into_two_conditions() {
        let error = EncodedQuery::new().equals("name", "x^ORname=y").unwrap_err();
        assert_eq!(error, QueryError::Caret { field: "name".into() });
        assert!(
            !error.to_string().contains("x^OR"),
            "the value is not repeated: {error}"
        );
    }

    #[test]
    fn a_value_that_the_instance_would_run_as_script_is_refused() {
        let error = EncodedQuery::new()
            .equals("user", " JavaScript:gs.getUserID()")
            .unwrap_err();
        assert_eq!(error, QueryError::Script { field: "user".into() });
    }

    #[test]
    fn a_field_name_with_operators_or_separators_is_refused() {
        for field in ["name!", "name=x", "", "role..name", "a b"] {
            assert!(EncodedQuery::new().equals(field, "v").is_err(), "field {field:?}");
        }
    }

    #[test]
    fn an_empty_choice_is_refused() {
        assert_eq!(
            EncodedQuery::new().any_of("name", &[]),
            Err(QueryError::NoValues { field: "name".into() })
        );
    }

    #[test]
    fn commas_and_other_operators_inside_values_stay_values() {
        let query = EncodedQuery::new().equals("name", "a,b LIKE c!=d").unwrap();
        assert_eq!(query.as_str(), "name=a,b LIKE c!=d");
    }
}
