//! The login's MFA step (servicenow-api.md §7 "Who can consent": from Yokohama on, "for
//! Authorization code grant type MFA is required as part of the user login flow before giving the
//! OAuth consent", `platform-security/authentication/mfa-enforcement-scope.md`), behind the
//! `require_mfa` switch. After a correct password the login form answers an MFA page instead of
//! starting a session; its form `#mfa_form` (POST `/validate_multifactor_auth_code.do`: hidden
//! `sysparm_mfa` and `sysparm_goto`, field `#mfa_code`, button `#mfa_verify`) takes a 6-digit code.
//! A wrong code shows the page again with `#mfa_error`; the right one starts the session and
//! goes on to `sysparm_goto` (the consent page). The page's ids and wording are the simulator's.
//!
//! Where a person reads the code off an authenticator app, a test asks the management interface
//! (`Admin::mfa_code`, `GET /snowsim/mfa/{user}`): each user has one current code, replaced once
//! it is used, as a time-based code is good once.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::response::{Html, IntoResponse, Response};
use rand::Rng;

use crate::consent::{escape, insert_fresh, login_page, page, start_session};
use crate::instance::{Instance, State};

/// Where the MFA form posts.
pub const VALIDATE_PATH: &str = "/validate_multifactor_auth_code.do";
/// How long a password stays good for its MFA step, milliseconds.
const PENDING_MS: i64 = 5 * 60 * 1000;

/// A correct password waiting for its code.
#[derive(Clone, Debug)]
struct Pending {
    user_sys_id: String,
    expires_ms: i64,
}

/// The MFA state of one instance: each user's current code and the logins waiting for one.
#[derive(Debug, Default)]
pub struct Mfa {
    codes: HashMap<String, String>,
    pending: HashMap<String, Pending>,
}

impl Mfa {
    /// The user's current code (made on first use).
    pub fn code(&mut self, user_sys_id: &str) -> String {
        self.codes
            .entry(user_sys_id.to_string())
            .or_insert_with(|| format!("{:06}", rand::rng().random_range(0..1_000_000u32)))
            .clone()
    }

    /// Records a correct password for `user_sys_id`; the token the MFA form carries.
    fn begin(&mut self, user_sys_id: &str, now_ms: i64) -> String {
        let pending = Pending {
            user_sys_id: user_sys_id.to_string(),
            expires_ms: now_ms + PENDING_MS,
        };
        insert_fresh(&mut self.pending, pending, |p| p.expires_ms > now_ms)
    }

    /// Checks `code` for the login `token`: the user when it is right (the token and the code
    /// are used up), an error for the page otherwise.
    fn verify(&mut self, token: &str, code: &str, now_ms: i64) -> Result<String, Refusal> {
        let pending = self
            .pending
            .get(token)
            .filter(|p| p.expires_ms > now_ms)
            .cloned()
            .ok_or(Refusal::Expired)?;
        if code.trim() != self.code(&pending.user_sys_id) {
            return Err(Refusal::WrongCode);
        }
        self.pending.remove(token);
        self.codes.remove(&pending.user_sys_id);
        Ok(pending.user_sys_id)
    }
}

/// Why a code was not accepted.
enum Refusal {
    /// No such login waiting (unknown or expired token): log in again.
    Expired,
    /// The code is not the user's current one: try again.
    WrongCode,
}

/// After a correct password for `user_sys_id`: the MFA page when the instance asks for one,
/// otherwise `None` (the session starts at once).
pub fn challenge(state: &mut State, user_sys_id: &str, goto: &str, now_ms: i64) -> Option<Response> {
    if !state.behaviour.require_mfa {
        return None;
    }
    let token = state.mfa.begin(user_sys_id, now_ms);
    Some(mfa_page(&token, goto, None))
}

/// `POST /validate_multifactor_auth_code.do`: the MFA form.
pub async fn validate(Extension(instance): Extension<Arc<Instance>>, body: Bytes) -> Response {
    let params: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |name: &str| params.get(name).cloned().unwrap_or_default();
    let goto = crate::consent::local_goto(&get("sysparm_goto"));
    let token = get("sysparm_mfa");
    let now_ms = instance.clock.now_ms();
    let mut state = instance.state.lock();
    match state.mfa.verify(&token, &get("mfa_code"), now_ms) {
        Ok(user) => start_session(&mut state, &user, &goto, now_ms),
        Err(Refusal::WrongCode) => mfa_page(&token, &goto, Some("Invalid code. Please try again.")),
        Err(Refusal::Expired) => login_page(&goto, Some("Your login has expired. Please log in again.")),
    }
}

fn mfa_page(token: &str, goto: &str, error: Option<&str>) -> Response {
    let error = error
        .map(|e| format!("<p id=\"mfa_error\">{}</p>\n", escape(e)))
        .unwrap_or_default();
    let body = format!(
        "<h1>Multi-factor authentication</h1>\n<p>Enter the 6-digit code from your authenticator app.</p>\n{error}\
         <form id=\"mfa_form\" method=\"POST\" action=\"{VALIDATE_PATH}\">\n\
         <label for=\"mfa_code\">Code</label> <input id=\"mfa_code\" name=\"mfa_code\" type=\"text\" inputmode=\"numeric\" autocomplete=\"one-time-code\">\n\
         <input type=\"hidden\" name=\"sysparm_mfa\" value=\"{}\">\n\
         <input type=\"hidden\" name=\"sysparm_goto\" value=\"{}\">\n\
         <button id=\"mfa_verify\" name=\"mfa_verify\" type=\"submit\">Verify</button>\n</form>",
        escape(token),
        escape(goto)
    );
    Html(page("Multi-factor authentication | ServiceNow", &body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_good_once_for_a_waiting_login() {
        let mut mfa = Mfa::default();
        let token = mfa.begin("u1", 0);
        let code = mfa.code("u1");
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let wrong = if code == "000000" { "000001" } else { "000000" };
        assert!(matches!(mfa.verify(&token, wrong, 1), Err(Refusal::WrongCode)));
        assert_eq!(mfa.verify(&token, &code, 2).ok().as_deref(), Some("u1"));
        assert!(matches!(mfa.verify(&token, &code, 3), Err(Refusal::Expired)));
    }

    #[test]
    fn a_waiting_login_expires() {
        let mut mfa = Mfa::default();
        let token = mfa.begin("u1", 0);
        let code = mfa.code("u1");
        assert!(matches!(mfa.verify(&token, &code, PENDING_MS), Err(Refusal::Expired)));
    }
}
