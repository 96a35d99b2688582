//! TEMPORARY STUB — the embedded-JavaScript runner for Business Rule scripts is being written by
//! another engineer and will replace this file. It keeps the agreed interface so the rest of the
//! crate compiles; until it lands every script is reported as "did not parse".

use std::collections::BTreeMap;

/// What one Business Rule script sees.
pub struct ScriptInput<'a> {
    pub script: &'a str,
    pub table: &'a str,
    pub operation: &'a str,
    pub current: &'a BTreeMap<String, String>,
    pub previous: Option<&'a BTreeMap<String, String>>,
    pub user_id: &'a str,
    pub user_name: &'a str,
    pub now: &'a str,
    pub property: &'a dyn Fn(&str) -> Option<String>,
}

/// An outbound HTTP request made by `sn_ws.RESTMessageV2`.
pub struct OutboundRequest {
    pub method: String,
    pub endpoint: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub timeout_ms: Option<u64>,
}

/// The answer handed back to a script's synchronous `execute()`.
pub struct OutboundResponse {
    pub status: u16,
    pub body: String,
    pub error: Option<String>,
}

/// Level of a line the script logged through `gs`.
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// One line the script logged.
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// What a script run produced.
pub struct ScriptOutcome {
    pub asynchronous: Vec<OutboundRequest>,
    pub log: Vec<LogLine>,
}

/// Why a script run failed.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("script did not parse: {0}")]
    Parse(String),
    #[error("script threw: {0}")]
    Thrown(String),
    #[error("script exceeded its execution limits")]
    Limit,
}

/// Runs one Business Rule script (stub: the engine has not landed yet).
pub fn run(
    input: &ScriptInput<'_>,
    _send: &mut dyn FnMut(&OutboundRequest) -> OutboundResponse,
) -> Result<ScriptOutcome, (ScriptError, Vec<LogLine>)> {
    let _ = input.script;
    Err((
        ScriptError::Parse("the JavaScript engine is not available yet (stub)".to_string()),
        Vec::new(),
    ))
}
