//! The shared table of instance-URL cases, seen from the unit tests.

use super::UrlRule;

/// One URL and the first rule it breaks (`None`: accepted).
pub(crate) struct Case {
    pub url: &'static str,
    pub rejected_by: Option<UrlRule>,
}

pub(crate) const CASES: &[Case] = include!("../../../tests/data/instance_url_cases.rs");
