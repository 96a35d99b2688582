//! Runs ServiceNow Business Rule scripts (servicenow-api.md §3.5) in an embedded JavaScript
//! engine (boa) with the Glide objects a webhook rule uses.
//!
//! A script sees these globals (see `prelude.js` for the details):
//! - `current` / `previous` — GlideRecord-like: `getValue`, `getDisplayValue`, `getElement`,
//!   `isValidField`, `getTableName`, `getUniqueValue`, `getRecordClassName`, `operation`,
//!   `isNewRecord`, `isValidRecord`, `changes`, and every field as a GlideElement property
//!   (`toString`, `getValue`, `getDisplayValue`, `getName`, `nil`, `changes`, `changesTo`,
//!   `changesFrom`; `'' + current.number` is the value, `current.priority == 1` compares it).
//!   `previous` is `null` when the host gives no before-image.
//! - `gs` — `getProperty(name, default)`, `info`/`warn`/`error`/`debug` with `{0}`…`{n}`
//!   substitution, `log`/`print` (info, second argument is the source and is not logged),
//!   `getUserID`, `getUserName`, `nowDateTime`, `nil`, `generateGUID`, and a no-op `eventQueue`.
//! - `sn_ws.RESTMessageV2` (also global `RESTMessageV2`) and its RESTResponseV2, `GlideDateTime`
//!   (a value holder defaulting to "now"; `getNumericValue` gives milliseconds since the epoch),
//!   `GlideCertificateEncryption` (scoped: `CertificateEncryption`) with `generateMac(key,
//!   algorithm, data)` as servicenow-api.md §3.6 describes it (Base64 key, Base64 MAC; HmacSHA256,
//!   HmacSHA384 and HmacSHA512), `JSUtil.nil` / `JSUtil.notNil`.
//!
//! Not modelled: writes to the record (`setValue`, assignments, `current.update()`, aborting the
//! action), `GlideRecord` queries, named REST messages (`new RESTMessageV2(name, method)` starts
//! empty) and `setStringParameter`, response headers (`getHeader` answers `''`), date
//! arithmetic, display values of references and choices (display value = value), and promise
//! jobs (`.then` callbacks and code after `await` never run: there is no event loop).
//! `JSON.stringify(current.number)` gives `{}` as on an instance: convert fields with
//! `getValue` or `'' +` first.
//!
//! Each run gets a fresh engine on a worker thread with a large stack. The worker reaches the
//! host's callbacks through a channel served by the calling thread, so `property` and `send`
//! run on the caller's thread and may block.
//!
//! Limits: every function invocation may run [`LOOP_ITERATION_LIMIT`] loop iterations and calls
//! nest at most [`RECURSION_LIMIT`] deep; both end the script with [`ScriptError::Limit`], which
//! the script cannot catch. Sources nested too deeply for the parser's stack (`guard.rs`) are
//! refused with [`ScriptError::Parse`]; a panic inside the engine becomes
//! [`ScriptError::Thrown`]. Not bounded: a loop calling a looping function (the limit is per
//! call), huge allocations (`'x'.repeat(1e9)`), and builtins walking data nested hundreds of
//! thousands deep built at run time (such a walk can still overflow the stack).

mod engine;
mod guard;
#[cfg(test)]
mod tests;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread;

use engine::{Call, Env};
pub use engine::{LOOP_ITERATION_LIMIT, RECURSION_LIMIT};

/// Stack of the worker thread a script runs on (reserved, touched only as used): the parser,
/// the compiler and calls through builtins (`[].map(f)`, getters) recurse on the native stack.
const WORKER_STACK_BYTES: usize = 512 * 1024 * 1024;
/// Estimated parser stack a script may need (see `guard.rs`); deeper sources are refused with
/// [`ScriptError::Parse`].
const PARSE_STACK_BUDGET: usize = WORKER_STACK_BYTES / 4 * 3;

/// What one Business Rule script sees.
pub struct ScriptInput<'a> {
    /// The JavaScript source (the rule's `script`, possibly wrapped in its `condition`).
    pub script: &'a str,
    /// `current.getTableName()`.
    pub table: &'a str,
    /// `current.operation()`: `"insert"`, `"update"` or `"delete"`.
    pub operation: &'a str,
    /// The record after the write: field → value, `""` for empty.
    pub current: &'a BTreeMap<String, String>,
    /// The record before the write; `None` makes `previous` `null` (inserts, async rules).
    pub previous: Option<&'a BTreeMap<String, String>>,
    /// `gs.getUserID()`.
    pub user_id: &'a str,
    /// `gs.getUserName()`.
    pub user_name: &'a str,
    /// `gs.nowDateTime()` and `new GlideDateTime()`: `YYYY-MM-DD HH:MM:SS` UTC.
    pub now: &'a str,
    /// `gs.getProperty(name)`: the property's value, `None` when it does not exist.
    pub property: &'a dyn Fn(&str) -> Option<String>,
}

/// An outbound HTTP request made by `sn_ws.RESTMessageV2`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct OutboundRequest {
    /// Upper-cased HTTP method (`setHttpMethod('post')` → `POST`; `GET` when never set).
    pub method: String,
    /// `setEndpoint` with the `setQueryParameter` pairs appended.
    pub endpoint: String,
    /// `setRequestHeader` / `setBasicAuth` headers in the order first set (a later set of the
    /// same name, compared case-insensitively, replaces the value).
    pub headers: Vec<(String, String)>,
    /// `setRequestBody` (`""` when never set).
    pub body: String,
    /// `setHttpTimeout` in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// The answer handed back to a script's synchronous `execute()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    /// HTTP status; `0` when no answer arrived.
    pub status: u16,
    /// Response body.
    pub body: String,
    /// Transport failure (`haveError()` is then true and `getErrorMessage()` returns it).
    pub error: Option<String>,
}

/// Level of a line the script logged through `gs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// `gs.debug`.
    Debug,
    /// `gs.info`, `gs.log`, `gs.print`.
    Info,
    /// `gs.warn`.
    Warn,
    /// `gs.error`.
    Error,
}

/// One line the script logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Severity.
    pub level: LogLevel,
    /// The message after `{0}`-style substitution.
    pub message: String,
}

/// What a script run produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// `executeAsync()` requests in call order, for the host to send after the write.
    pub asynchronous: Vec<OutboundRequest>,
    /// Lines logged through `gs`, in order.
    pub log: Vec<LogLine>,
}

/// Why a script run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    /// The source is not valid JavaScript (the message carries the position).
    #[error("script did not parse: {0}")]
    Parse(String),
    /// An exception escaped the script, e.g. `Error: boom` or `TypeError: … is not a function`.
    /// Also reports a failure of the engine itself (it could not start, or it panicked).
    #[error("script threw: {0}")]
    Thrown(String),
    /// The script ran into the loop-iteration, recursion or stack limit.
    #[error("script exceeded its execution limits")]
    Limit,
}

/// Runs one Business Rule script. `execute()` (synchronous) calls `send` and hands its response
/// to the script; `executeAsync()` only records the request in [`ScriptOutcome::asynchronous`]
/// (the host sends it after the write), so the script's RESTResponseV2 for it reports status `0`,
/// an empty body and no error, and `waitForResponse(seconds)` returns at once.
///
/// On failure the lines logged before it are returned with the error. `property` and `send` are
/// called on the calling thread.
pub fn run(
    input: &ScriptInput<'_>,
    send: &mut dyn FnMut(&OutboundRequest) -> OutboundResponse,
) -> Result<ScriptOutcome, (ScriptError, Vec<LogLine>)> {
    let env = Env {
        script: input.script,
        table: input.table,
        operation: input.operation,
        current: input.current,
        previous: input.previous,
        user_id: input.user_id,
        user_name: input.user_name,
        now: input.now,
    };
    let mut outcome = ScriptOutcome::default();
    let result = thread::scope(|scope| {
        let (host, calls) = mpsc::channel();
        let env = &env;
        let worker = thread::Builder::new()
            .name("snowsim-script".to_string())
            .stack_size(WORKER_STACK_BYTES)
            .spawn_scoped(scope, move || engine::evaluate(env, host))
            .map_err(|e| ScriptError::Thrown(format!("could not start the script engine: {e}")))?;
        for call in calls {
            match call {
                Call::Log(line) => outcome.log.push(line),
                // A worker that stopped waiting for an answer needs none.
                Call::Property(name, reply) => drop(reply.send((input.property)(&name))),
                Call::Execute(request, reply) => drop(reply.send(send(&request))),
                Call::Queue(request) => outcome.asynchronous.push(request),
            }
        }
        worker.join().unwrap_or_else(|panic| {
            Err(ScriptError::Thrown(format!(
                "the script engine failed: {}",
                panic_message(panic.as_ref())
            )))
        })
    });
    match result {
        Ok(()) => Ok(outcome),
        Err(error) => Err((error, outcome.log)),
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}
