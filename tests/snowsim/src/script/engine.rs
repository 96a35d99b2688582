//! The engine side of a script run: a fresh boa context with limits, the host's native functions
//! and the Glide prelude. Runs on the worker thread; talks to the calling thread through [`Call`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::mpsc::{self, Sender, SyncSender};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boa_engine::object::ObjectInitializer;
use boa_engine::{
    Context, JsArgs, JsError, JsNativeError, JsResult, JsString, JsValue, NativeFunction, Script, Source, js_string,
};

use super::{LogLevel, LogLine, OutboundRequest, OutboundResponse, PARSE_STACK_BUDGET, ScriptError, guard};

/// Loop iterations one function invocation (or the top level) may run before the script ends
/// with [`ScriptError::Limit`]; boa counts them per call frame.
pub const LOOP_ITERATION_LIMIT: u64 = 1_000_000;
/// How deep calls may nest before the script ends with [`ScriptError::Limit`].
pub const RECURSION_LIMIT: usize = 256;
/// Values the engine's operand stack may hold.
const STACK_SIZE_LIMIT: usize = 64 * 1024;

/// The Glide objects, written in JavaScript; evaluates to the setup function [`install`] calls.
const PRELUDE: &str = include_str!("prelude.js");

/// A request from the worker to the calling thread.
pub(super) enum Call {
    /// `gs.info` and friends.
    Log(LogLine),
    /// `gs.getProperty`: answer the value, `None` when absent.
    Property(String, SyncSender<Option<String>>),
    /// `RESTMessageV2.execute()`: send it and answer the response.
    Execute(OutboundRequest, SyncSender<OutboundResponse>),
    /// `RESTMessageV2.executeAsync()`: record it.
    Queue(OutboundRequest),
}

/// The parts of [`super::ScriptInput`] the worker needs (all `Send`).
pub(super) struct Env<'a> {
    pub(super) script: &'a str,
    pub(super) table: &'a str,
    pub(super) operation: &'a str,
    pub(super) current: &'a BTreeMap<String, String>,
    pub(super) previous: Option<&'a BTreeMap<String, String>>,
    pub(super) user_id: &'a str,
    pub(super) user_name: &'a str,
    pub(super) now: &'a str,
}

thread_local! {
    /// The channel to the calling thread, for the native functions of the run on this thread.
    static HOST: RefCell<Option<Sender<Call>>> = const { RefCell::new(None) };
}

/// Runs `env.script` in a fresh context; `host` is closed when this returns.
pub(super) fn evaluate(env: &Env<'_>, host: Sender<Call>) -> Result<(), ScriptError> {
    HOST.set(Some(host));
    let result = evaluate_in_new_context(env);
    HOST.take();
    result
}

fn evaluate_in_new_context(env: &Env<'_>) -> Result<(), ScriptError> {
    guard::check_nesting(env.script, PARSE_STACK_BUDGET).map_err(ScriptError::Parse)?;
    let context = &mut Context::default();
    let limits = context.runtime_limits_mut();
    limits.set_loop_iteration_limit(LOOP_ITERATION_LIMIT);
    limits.set_recursion_limit(RECURSION_LIMIT);
    limits.set_stack_size_limit(STACK_SIZE_LIMIT);
    install(env, context).map_err(|e| classify(&e, context))?;
    let script =
        Script::parse(Source::from_bytes(env.script), None, context).map_err(|e| ScriptError::Parse(e.to_string()))?;
    // Promise jobs are never run: there is no event loop after a rule (and boa 0.21 panics when a
    // job hits a runtime limit).
    script.evaluate(context).map(drop).map_err(|e| classify(&e, context))
}

/// Defines `current`, `previous`, `gs`, `sn_ws`, … as globals.
fn install(env: &Env<'_>, context: &mut Context) -> JsResult<()> {
    let host = ObjectInitializer::new(context)
        .function(NativeFunction::from_fn_ptr(property), js_string!("property"), 1)
        .function(NativeFunction::from_fn_ptr(log), js_string!("log"), 2)
        .function(NativeFunction::from_fn_ptr(execute), js_string!("execute"), 1)
        .function(NativeFunction::from_fn_ptr(queue), js_string!("queue"), 1)
        .function(NativeFunction::from_fn_ptr(basic_auth), js_string!("basicAuth"), 2)
        .function(NativeFunction::from_fn_ptr(mac), js_string!("mac"), 3)
        .function(NativeFunction::from_fn_ptr(guid), js_string!("guid"), 0)
        .build();
    let data = serde_json::json!({
        "table": env.table,
        "operation": env.operation,
        "current": env.current,
        "previous": env.previous,
        "userId": env.user_id,
        "userName": env.user_name,
        "now": env.now,
    });
    let data = JsValue::from_json(&data, context)?;
    let setup = Script::parse(Source::from_bytes(PRELUDE), None, context)?.evaluate(context)?;
    let setup = setup
        .as_callable()
        .ok_or_else(|| JsNativeError::typ().with_message("the Glide prelude is not a function"))?;
    setup.call(&JsValue::undefined(), &[host.into(), data], context)?;
    Ok(())
}

/// Maps an error that escaped the script to [`ScriptError`].
fn classify(error: &JsError, context: &mut Context) -> ScriptError {
    if error.as_native().is_some_and(JsNativeError::is_runtime_limit) {
        return ScriptError::Limit;
    }
    let message = match (error.try_native(context), error.as_opaque()) {
        // Not `Display`, which appends the source position.
        (Ok(native), _) if native.message().is_empty() => native.kind.to_string(),
        (Ok(native), _) => format!("{}: {}", native.kind, native.message()),
        (Err(_), Some(value)) => value
            .to_string(context)
            .map_or_else(|_| error.to_string(), |s| s.to_std_string_escaped()),
        (Err(_), None) => error.to_string(),
    };
    ScriptError::Thrown(message)
}

/// `host.property(name)` → the value, or `undefined` when the property does not exist.
fn property(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let name = string_arg(args, 0, context)?;
    let value = ask(|reply| Call::Property(name, reply))?;
    Ok(value.map_or_else(JsValue::undefined, |v| js_value(&v)))
}

/// `host.log(level, message)` with level `debug`, `info`, `warn` or `error`.
fn log(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let level = match string_arg(args, 0, context)?.as_str() {
        "debug" => LogLevel::Debug,
        "warn" => LogLevel::Warn,
        "error" => LogLevel::Error,
        _ => LogLevel::Info,
    };
    let message = string_arg(args, 1, context)?;
    tell(Call::Log(LogLine { level, message }))?;
    Ok(JsValue::undefined())
}

/// `host.execute(requestJson)` → `{status, body, error}`.
fn execute(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let request = request_arg(args, context)?;
    let response = ask(|reply| Call::Execute(request, reply))?;
    let answer = serde_json::json!({
        "status": response.status,
        "body": response.body,
        "error": response.error,
    });
    JsValue::from_json(&answer, context)
}

/// `host.queue(requestJson)`.
fn queue(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let request = request_arg(args, context)?;
    tell(Call::Queue(request))?;
    Ok(JsValue::undefined())
}

/// `host.basicAuth(user, password)` → the `Authorization` header value.
fn basic_auth(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let user = string_arg(args, 0, context)?;
    let password = string_arg(args, 1, context)?;
    Ok(js_value(&format!(
        "Basic {}",
        STANDARD.encode(format!("{user}:{password}"))
    )))
}

/// `host.mac(key, algorithm, data)`: `GlideCertificateEncryption.generateMac` (servicenow-api.md
/// §3.6): the key is Base64 and is decoded first, the MAC is over the UTF-8 bytes of `data`, the
/// result is standard Base64. A key that is not Base64 or an algorithm other than `HmacSHA256`,
/// `HmacSHA384` and `HmacSHA512` throws (the instance knows more Java MAC names, e.g. `HmacSHA1`;
/// snowsim models only these).
fn mac(_: &JsValue, args: &[JsValue], context: &mut Context) -> JsResult<JsValue> {
    let key = string_arg(args, 0, context)?;
    let algorithm = string_arg(args, 1, context)?;
    let data = string_arg(args, 2, context)?;
    let key = STANDARD
        .decode(key.trim())
        .map_err(|_| JsNativeError::error().with_message("generateMac: the key is not Base64"))?;
    let tag = match algorithm.as_str() {
        "HmacSHA256" => hmac_of::<sha2::Sha256>(&key, &data),
        "HmacSHA384" => hmac_of::<sha2::Sha384>(&key, &data),
        "HmacSHA512" => hmac_of::<sha2::Sha512>(&key, &data),
        other => {
            return Err(JsNativeError::error()
                .with_message(format!("generateMac: {other} Mac not available"))
                .into());
        }
    };
    Ok(js_value(&STANDARD.encode(tag)))
}

fn hmac_of<D: sha2::Digest + sha2::digest::core_api::BlockSizeUser>(key: &[u8], data: &str) -> Vec<u8> {
    use hmac::Mac as _;
    let mut mac = hmac::SimpleHmac::<D>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `host.guid()`: `gs.generateGUID()`, 32 lower-case hexadecimal digits.
fn guid(_: &JsValue, _: &[JsValue], _: &mut Context) -> JsResult<JsValue> {
    Ok(js_value(&crate::store::new_sys_id()))
}

fn string_arg(args: &[JsValue], index: usize, context: &mut Context) -> JsResult<String> {
    Ok(args.get_or_undefined(index).to_string(context)?.to_std_string_escaped())
}

fn request_arg(args: &[JsValue], context: &mut Context) -> JsResult<OutboundRequest> {
    let json = string_arg(args, 0, context)?;
    serde_json::from_str(&json).map_err(|e| {
        JsNativeError::typ()
            .with_message(format!("malformed outbound request: {e}"))
            .into()
    })
}

fn js_value(text: &str) -> JsValue {
    JsValue::from(JsString::from(text))
}

/// Sends `call` to the calling thread.
fn tell(call: Call) -> JsResult<()> {
    let sent = HOST.with_borrow(|host| host.as_ref().is_some_and(|host| host.send(call).is_ok()));
    if sent { Ok(()) } else { Err(host_gone()) }
}

/// Sends the call `make` builds around a reply channel and waits for the answer.
fn ask<T>(make: impl FnOnce(SyncSender<T>) -> Call) -> JsResult<T> {
    let (reply, answer) = mpsc::sync_channel(1);
    tell(make(reply))?;
    answer.recv().map_err(|_| host_gone())
}

fn host_gone() -> JsError {
    JsNativeError::error()
        .with_message("the simulator stopped serving this script")
        .into()
}
