//! The encoded-query engine (servicenow-api.md §2.5): a parser that never fails and an evaluator
//! that asks the caller for field values, so it knows nothing of tables or records.
//!
//! Grammar: blocks joined by `^NQ` are OR'ed; inside a block, terms joined by `^` are AND'ed and a
//! term starting with `OR` joins the previous condition in an OR group, so `a^b^ORc` is
//! `a AND (b OR c)`. `ORDERBY<field>` / `ORDERBYDESC<field>` terms may appear anywhere; `EQ` (the
//! condition builder's end marker) is ignored. A term that does not parse is recorded as invalid
//! and ignored, like the instance does.

use std::cmp::Ordering;

/// A comparison operator of an encoded-query condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `=`
    Eq,
    /// `!=` (matches empty values too)
    Ne,
    /// `LIKE` (contains)
    Like,
    /// `NOT LIKE`
    NotLike,
    /// `STARTSWITH`
    StartsWith,
    /// `ENDSWITH`
    EndsWith,
    /// `IN` (comma-separated list)
    In,
    /// `NOT IN`
    NotIn,
    /// `ISEMPTY`
    IsEmpty,
    /// `ISNOTEMPTY`
    IsNotEmpty,
    /// `ANYTHING`
    Anything,
    /// `EMPTYSTRING`
    EmptyString,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `BETWEEN` (`low@high`, inclusive)
    Between,
    /// `SAMEAS` (value names another field)
    SameAs,
    /// `NSAMEAS`
    NotSameAs,
}

/// Operators in the order they must be tried (longer spellings before their prefixes). `None`
/// marks operators the instance knows but the simulator does not evaluate: such terms are invalid.
const OPERATORS: &[(&str, Option<Operator>)] = &[
    ("ISNOTEMPTY", Some(Operator::IsNotEmpty)),
    ("ISEMPTY", Some(Operator::IsEmpty)),
    ("EMPTYSTRING", Some(Operator::EmptyString)),
    ("ANYTHING", Some(Operator::Anything)),
    ("NOT LIKE", Some(Operator::NotLike)),
    ("NOT IN", Some(Operator::NotIn)),
    ("STARTSWITH", Some(Operator::StartsWith)),
    ("ENDSWITH", Some(Operator::EndsWith)),
    ("NSAMEAS", Some(Operator::NotSameAs)),
    ("SAMEAS", Some(Operator::SameAs)),
    ("BETWEEN", Some(Operator::Between)),
    ("INSTANCEOF", None),
    ("LIKE", Some(Operator::Like)),
    ("IN", Some(Operator::In)),
    ("!=", Some(Operator::Ne)),
    ("<=", Some(Operator::Le)),
    (">=", Some(Operator::Ge)),
    ("=", Some(Operator::Eq)),
    ("<", Some(Operator::Lt)),
    (">", Some(Operator::Gt)),
];

/// One `<field><OPERATOR><value>` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// Field name, possibly dot-walked (`role.name`).
    pub field: String,
    /// The operator.
    pub op: Operator,
    /// The raw value (may be `javascript:...` until resolved).
    pub value: String,
}

/// One sort key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    /// Field name, possibly dot-walked.
    pub field: String,
    /// `ORDERBYDESC`.
    pub descending: bool,
}

/// A parsed encoded query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// OR'ed blocks (`^NQ`); each block is AND'ed groups; each group is OR'ed conditions.
    pub blocks: Vec<Vec<Vec<Condition>>>,
    /// Sort keys in the order given.
    pub order: Vec<Order>,
    /// Terms that did not parse (ignored when matching).
    pub invalid: Vec<String>,
}

/// The value of a field as the evaluator sees it.
#[derive(Clone, Debug, Default)]
pub struct FieldValue {
    /// The stored value (`""` when empty).
    pub value: String,
    /// For list-valued pseudo fields (`sys_user.roles`): the members, which `=`, `!=`, `IN` and
    /// `NOT IN` compare against one by one.
    pub members: Option<Vec<String>>,
}

impl From<String> for FieldValue {
    fn from(value: String) -> Self {
        FieldValue { value, members: None }
    }
}

impl Query {
    /// Parses an encoded query. Never fails: unparseable terms land in [`Query::invalid`].
    pub fn parse(encoded: &str) -> Query {
        let mut query = Query::default();
        for block_text in encoded.split("^NQ") {
            let mut block: Vec<Vec<Condition>> = Vec::new();
            for term in block_text.split('^') {
                if term.is_empty() || term == "EQ" {
                    continue;
                }
                if let Some(field) = term.strip_prefix("ORDERBYDESC") {
                    push_order(&mut query, field, true, term);
                } else if let Some(field) = term.strip_prefix("ORDERBY") {
                    push_order(&mut query, field, false, term);
                } else if let Some(rest) = term.strip_prefix("OR") {
                    match (parse_condition(rest), block.last_mut()) {
                        (Some(condition), Some(group)) => group.push(condition),
                        (Some(condition), None) => block.push(vec![condition]),
                        (None, _) => query.invalid.push(term.to_string()),
                    }
                } else {
                    match parse_condition(term) {
                        Some(condition) => block.push(vec![condition]),
                        None => query.invalid.push(term.to_string()),
                    }
                }
            }
            if !block.is_empty() {
                query.blocks.push(block);
            }
        }
        query
    }

    /// True when the query has no conditions (it matches every row).
    pub fn has_conditions(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// Every condition, for resolving `javascript:` values in place.
    pub fn conditions_mut(&mut self) -> impl Iterator<Item = &mut Condition> {
        self.blocks.iter_mut().flatten().flatten()
    }

    /// Drops conditions and sort keys whose field `is_valid` rejects, recording them as invalid.
    pub fn retain_valid(&mut self, is_valid: impl Fn(&str) -> bool) {
        let mut dropped = Vec::new();
        for block in &mut self.blocks {
            for group in block.iter_mut() {
                group.retain(|c| {
                    let compares_fields = matches!(c.op, Operator::SameAs | Operator::NotSameAs);
                    let keep = is_valid(&c.field) && (!compares_fields || is_valid(&c.value));
                    if !keep {
                        dropped.push(c.field.clone());
                    }
                    keep
                });
            }
            block.retain(|group| !group.is_empty());
        }
        self.order.retain(|o| {
            let keep = is_valid(&o.field);
            if !keep {
                dropped.push(o.field.clone());
            }
            keep
        });
        self.invalid.extend(dropped);
    }

    /// Evaluates the query against one row; `lookup` returns a field's value.
    pub fn matches(&self, lookup: &dyn Fn(&str) -> FieldValue, case_sensitive: bool) -> bool {
        self.blocks.is_empty()
            || self.blocks.iter().any(|block| {
                block
                    .iter()
                    .all(|group| group.iter().any(|c| c.matches(lookup, case_sensitive)))
            })
    }
}

fn push_order(query: &mut Query, field: &str, descending: bool, term: &str) {
    if is_field_name(field) {
        query.order.push(Order {
            field: field.to_string(),
            descending,
        });
    } else {
        query.invalid.push(term.to_string());
    }
}

fn is_field_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

fn parse_condition(term: &str) -> Option<Condition> {
    let split = term
        .bytes()
        .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.'))
        .unwrap_or(term.len());
    let (field, rest) = term.split_at(split);
    if field.is_empty() || field.starts_with('.') || field.ends_with('.') {
        return None;
    }
    let (spelling, op) = OPERATORS.iter().find(|(s, _)| rest.starts_with(s))?;
    Some(Condition {
        field: field.to_string(),
        op: (*op)?,
        value: rest[spelling.len()..].to_string(),
    })
}

impl Condition {
    fn matches(&self, lookup: &dyn Fn(&str) -> FieldValue, cs: bool) -> bool {
        let field = lookup(&self.field);
        let actual = field.value.as_str();
        let any_member = |pred: &dyn Fn(&str) -> bool| match &field.members {
            Some(members) => members.iter().any(|m| pred(m)),
            None => pred(actual),
        };
        match self.op {
            Operator::Eq => any_member(&|v| text_eq(v, &self.value, cs)),
            Operator::Ne => !any_member(&|v| text_eq(v, &self.value, cs)),
            Operator::Like => contains(actual, &self.value, cs),
            Operator::NotLike => !contains(actual, &self.value, cs),
            Operator::StartsWith => fold(actual, cs).starts_with(fold(&self.value, cs).as_ref()),
            Operator::EndsWith => fold(actual, cs).ends_with(fold(&self.value, cs).as_ref()),
            Operator::In => any_member(&|v| self.value.split(',').any(|w| text_eq(v, w, cs))),
            Operator::NotIn => !any_member(&|v| self.value.split(',').any(|w| text_eq(v, w, cs))),
            Operator::IsEmpty => actual.trim().is_empty(),
            Operator::IsNotEmpty => !actual.trim().is_empty(),
            Operator::Anything => true,
            Operator::EmptyString => actual.is_empty(),
            Operator::Lt => !actual.is_empty() && compare(actual, &self.value, cs).is_lt(),
            Operator::Le => !actual.is_empty() && compare(actual, &self.value, cs).is_le(),
            Operator::Gt => !actual.is_empty() && compare(actual, &self.value, cs).is_gt(),
            Operator::Ge => !actual.is_empty() && compare(actual, &self.value, cs).is_ge(),
            Operator::Between => match self.value.split_once('@') {
                Some((low, high)) => {
                    !actual.is_empty() && compare(actual, low, cs).is_ge() && compare(actual, high, cs).is_le()
                }
                None => false,
            },
            Operator::SameAs => text_eq(actual, &lookup(&self.value).value, cs),
            Operator::NotSameAs => !text_eq(actual, &lookup(&self.value).value, cs),
        }
    }
}

fn fold(text: &str, case_sensitive: bool) -> std::borrow::Cow<'_, str> {
    if case_sensitive {
        std::borrow::Cow::Borrowed(text)
    } else {
        std::borrow::Cow::Owned(text.to_lowercase())
    }
}

fn text_eq(a: &str, b: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        a == b
    } else if a.is_ascii() && b.is_ascii() {
        a.eq_ignore_ascii_case(b)
    } else {
        a.to_lowercase() == b.to_lowercase()
    }
}

fn contains(haystack: &str, needle: &str, case_sensitive: bool) -> bool {
    fold(haystack, case_sensitive).contains(fold(needle, case_sensitive).as_ref())
}

/// Compares two stored values the way the instance orders and range-compares them: numerically
/// when both are numbers, otherwise as text (`glide_date_time` values sort correctly as text).
pub fn compare(a: &str, b: &str, case_sensitive: bool) -> Ordering {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => fold(a, case_sensitive).cmp(&fold(b, case_sensitive)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn row(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn eval(query: &str, record: &HashMap<String, String>) -> bool {
        let lookup = |f: &str| FieldValue::from(record.get(f).cloned().unwrap_or_default());
        Query::parse(query).matches(&lookup, false)
    }

    #[test]
    fn or_binds_tighter_than_and() {
        let r = row(&[("a", "1"), ("b", "0"), ("c", "1")]);
        assert!(eval("a=1^b=1^ORc=1", &r));
        assert!(!eval("a=0^b=1^ORc=1", &r));
        let q = Query::parse("a=1^b=1^ORc=1");
        assert_eq!(q.blocks.len(), 1);
        assert_eq!(q.blocks[0].len(), 2);
        assert_eq!(q.blocks[0][1].len(), 2);
    }

    #[test]
    fn new_query_blocks_are_ored() {
        let r = row(&[("a", "1"), ("b", "2")]);
        assert!(eval("a=9^NQb=2", &r));
        assert!(!eval("a=9^NQb=3", &r));
    }

    #[test]
    fn every_operator_evaluates() {
        let r = row(&[
            ("name", "Neo Agent — Task Webhook"),
            ("order", "100"),
            ("empty", ""),
            ("when", "after"),
            ("copy", "after"),
        ]);
        let cases = [
            ("name=Neo Agent — Task Webhook", true),
            ("name=neo agent — task webhook", true),
            ("name!=Neo Agent — Task Webhook", false),
            ("nameLIKEtask", true),
            ("nameNOT LIKEtask", false),
            ("nameSTARTSWITHNeo", true),
            ("nameENDSWITHWebhook", true),
            ("whenINbefore,after", true),
            ("whenNOT INbefore,after", false),
            ("emptyISEMPTY", true),
            ("emptyISNOTEMPTY", false),
            ("emptyEMPTYSTRING", true),
            ("nameANYTHING", true),
            ("order<101", true),
            ("order<=100", true),
            ("order>100", false),
            ("order>=100", true),
            ("order>99.5", true),
            ("orderBETWEEN50@150", true),
            ("orderBETWEEN101@150", false),
            ("whenSAMEAScopy", true),
            ("whenNSAMEAScopy", false),
            ("empty<5", false),
            ("empty!=x", true),
        ];
        for (query, expected) in cases {
            assert_eq!(eval(query, &r), expected, "{query}");
        }
    }

    #[test]
    fn order_terms_anywhere_and_end_marker_ignored() {
        let q = Query::parse("ORDERBYname^active=true^ORDERBYDESCnumber^EQ");
        assert_eq!(
            q.order,
            vec![
                Order {
                    field: "name".into(),
                    descending: false
                },
                Order {
                    field: "number".into(),
                    descending: true
                }
            ]
        );
        assert_eq!(q.blocks.len(), 1);
        assert!(q.invalid.is_empty());
    }

    #[test]
    fn invalid_parts_are_ignored_and_recorded() {
        let r = row(&[("active", "true")]);
        let q = Query::parse("active=true^Garbage^fieldDYNAMICxyz^x");
        assert_eq!(q.invalid, vec!["Garbage", "fieldDYNAMICxyz", "x"]);
        assert!(eval("active=true^Garbage", &r));
        let mut q = Query::parse("bogus=1^active=true");
        q.retain_valid(|f| f == "active");
        assert_eq!(q.invalid, vec!["bogus"]);
        let lookup = |f: &str| FieldValue::from(r.get(f).cloned().unwrap_or_default());
        assert!(q.matches(&lookup, false));
    }

    #[test]
    fn dot_walks_and_javascript_values_parse() {
        let mut q = Query::parse("user=javascript:gs.getUserID()^role.name=itil");
        assert_eq!(q.blocks[0][0][0].value, "javascript:gs.getUserID()");
        assert_eq!(q.blocks[0][1][0].field, "role.name");
        for c in q.conditions_mut() {
            if c.value == "javascript:gs.getUserID()" {
                c.value = "abc".into();
            }
        }
        let r = row(&[("user", "abc"), ("role.name", "itil")]);
        let lookup = |f: &str| FieldValue::from(r.get(f).cloned().unwrap_or_default());
        assert!(q.matches(&lookup, false));
    }

    #[test]
    fn list_members_compare_one_by_one() {
        let roles = FieldValue {
            value: "itil,admin".into(),
            members: Some(vec!["itil".into(), "admin".into()]),
        };
        let lookup = |_: &str| roles.clone();
        assert!(Query::parse("roles=itil").matches(&lookup, false));
        assert!(!Query::parse("roles!=admin").matches(&lookup, false));
        assert!(Query::parse("rolesLIKEdmi").matches(&lookup, false));
    }

    #[test]
    fn case_sensitivity_is_a_switch() {
        let r = row(&[("name", "Neo")]);
        let lookup = |f: &str| FieldValue::from(r.get(f).cloned().unwrap_or_default());
        assert!(Query::parse("name=neo").matches(&lookup, false));
        assert!(!Query::parse("name=neo").matches(&lookup, true));
    }

    #[test]
    fn malformed_input_never_panics() {
        for text in ["", "^", "^OR", "ORx", "=", "^NQ^NQ", "a", "é=1", "ORDERBY", "a=b^ORc"] {
            let _ = Query::parse(text);
        }
    }
}
