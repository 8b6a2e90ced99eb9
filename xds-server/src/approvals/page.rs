//! The approval page on meshgate's admin API: plain HTML, one small inline script (the
//! refresh), no external resources.
//!
//! | path | what |
//! |---|---|
//! | `GET /approvals` | the sign-in form, or (signed in) every request: pending, approved, used, rejected, expired |
//! | `POST /approvals/sign-in` | `credential` = a consumer's JWT or API key, validated as the filter validates callers; the consumer must hold an approver role |
//! | `POST /approvals/decide` | `id`, `decision` (`approve`/`reject`), `reason`, `csrf` |
//! | `POST /approvals/sign-out` | `csrf` |
//!
//! Security: the session is a random token in an `HttpOnly`, `SameSite=Strict` cookie
//! scoped to `/approvals` (`Secure` with admin TLS), kept in the approval store (so both
//! replicas know it) under its SHA-256, for [`SESSION_SECS`]. Every change is a POST that
//! carries the session's CSRF token; a GET changes nothing. Everything shown is
//! HTML-escaped; the page forbids framing and every resource but its own nonce'd script.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use meshgate_core::identity::{AuthMethod, Credentials, TokenCache};
use meshgate_core::redact::{Direction, RedactionCounts};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::store::{self, DecideError, Kv, Record};
use super::{audit, now, Approvals};

/// How long a sign-in lasts.
pub const SESSION_SECS: u64 = 1800;
/// The session cookie's name.
pub const COOKIE: &str = "meshgate_approver";
const SESSION_PREFIX: &str = "meshgate:approval:session:";
/// The most requests the page lists.
const MAX_LISTED: usize = 200;
/// The longest reason kept.
const MAX_REASON: usize = 500;

/// The page's routes (outside the admin token: the page authenticates approvers itself).
pub fn routes(approvals: Arc<Approvals>) -> Router {
    Router::new()
        .route("/approvals", get(show))
        .route("/approvals/sign-in", post(sign_in))
        .route("/approvals/decide", post(decide))
        .route("/approvals/sign-out", post(sign_out))
        .with_state(approvals)
}

/// A signed-in approver.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    consumer: String,
    roles: Vec<String>,
    csrf: String,
    expires_at: u64,
}

fn random_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).ok()?;
    Some(hex::encode(bytes))
}

fn session_key(token: &str) -> String {
    format!("{SESSION_PREFIX}{}", hex::encode(Sha256::digest(token.as_bytes())))
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

async fn session(approvals: &Approvals, headers: &HeaderMap) -> Option<Session> {
    let token = cookie_token(headers)?;
    let text = approvals.kv().get_text(&session_key(&token), now()).await.ok()??;
    let session: Session = serde_json::from_str(&text).ok()?;
    (session.expires_at > now()).then_some(session)
}

/// Equal without saying where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    Sha256::digest(a.as_bytes()) == Sha256::digest(b.as_bytes())
}

/// HTML-escapes `text` (element content and quoted attribute values).
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

fn utc(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn page(nonce: &str, title: &str, body: &str, refresh: bool) -> Response {
    let script = if refresh {
        format!(
            "<script nonce=\"{nonce}\">setInterval(function(){{var a=document.activeElement;\
             if(!a||a.tagName!=='INPUT'||!a.value){{location.reload();}}}},4000);</script>"
        )
    } else {
        String::new()
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>\
         body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}}\
         .pending{{background:#fff6d5}}.approved{{background:#e3f6e3}}.rejected{{background:#f9e0e0}}\
         .expired,.used{{color:#777}}.focus{{outline:3px solid #36c}}pre{{margin:0;white-space:pre-wrap}}\
         .error{{color:#a00}}</style></head><body><h1>{title}</h1>{body}{script}</body></html>",
        title = esc(title),
    );
    let mut response = (StatusCode::OK, html).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

fn sign_in_form(nonce: &str, focus: Option<&str>, error: Option<&str>) -> Response {
    let error = error.map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e))).unwrap_or_default();
    let focus =
        focus.map(|id| format!("<input type=\"hidden\" name=\"id\" value=\"{}\">", esc(id))).unwrap_or_default();
    let body = format!(
        "{error}<p>Sign in with the JWT or API key of a consumer holding an approver role.</p>\
         <form id=\"sign-in\" method=\"post\" action=\"/approvals/sign-in\">{focus}\
         <label>Token or API key <input type=\"password\" name=\"credential\" autocomplete=\"off\" required></label> \
         <button type=\"submit\">Sign in</button></form>"
    );
    page(nonce, "Meshgate approvals", &body, false)
}

#[derive(Debug, Deserialize)]
struct ShowQuery {
    id: Option<String>,
    error: Option<String>,
}

async fn show(State(approvals): State<Arc<Approvals>>, Query(q): Query<ShowQuery>, headers: HeaderMap) -> Response {
    let nonce = random_token().unwrap_or_default();
    let Some(session) = session(&approvals, &headers).await else {
        return sign_in_form(&nonce, q.id.as_deref(), q.error.as_deref());
    };
    let now = now();
    let records = match store::list(&approvals.kv(), now).await {
        Ok(records) => records,
        Err(e) => {
            let body = format!("<p class=\"error\">The approval store is unavailable: {}</p>", esc(&e.to_string()));
            return page(&nonce, "Meshgate approvals", &body, true);
        }
    };
    let compiled = approvals.compiled();
    let mut rows = String::new();
    for record in records.iter().take(MAX_LISTED) {
        let rule = compiled.as_ref().and_then(|c| c.rules.get(&record.rule));
        // Only approvers of a rule see its requests.
        if !rule.is_some_and(|r| r.approver(&session.roles)) {
            continue;
        }
        let state = record.state(now);
        let focus = if q.id.as_deref() == Some(record.id.as_str()) { " focus" } else { "" };
        let arguments = match (&record.arguments, compiled.as_ref()) {
            (Some(arguments), Some(c)) => shown_arguments(c, record, arguments, &session.roles),
            _ => "<i>not shown</i>".to_string(),
        };
        let decided = match (&record.decided_by, record.decided_at) {
            (Some(by), Some(at)) => format!("{} at {}", esc(by), utc(at)),
            _ => "—".to_string(),
        };
        let reason = record.reason.as_deref().map(esc).unwrap_or_default();
        let actions = if state != "pending" {
            String::new()
        } else if record.consumer == session.consumer && !rule.is_some_and(|r| r.allow_self_approval) {
            "your own request: another approver decides".to_string()
        } else {
            let id = esc(&record.id);
            let csrf = esc(&session.csrf);
            format!(
                "<form method=\"post\" action=\"/approvals/decide\" class=\"approve\">\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"decision\" value=\"approve\"><input type=\"hidden\" name=\"reason\" value=\"\">\
                 <button type=\"submit\" id=\"approve-{id}\">Approve</button></form>\
                 <form method=\"post\" action=\"/approvals/decide\" class=\"reject\">\
                 <input type=\"hidden\" name=\"id\" value=\"{id}\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"decision\" value=\"reject\">\
                 <input type=\"text\" name=\"reason\" id=\"reason-{id}\" placeholder=\"reason\" maxlength=\"{MAX_REASON}\">\
                 <button type=\"submit\" id=\"reject-{id}\">Reject</button></form>"
            )
        };
        rows.push_str(&format!(
            "<tr class=\"{state}{focus}\" id=\"{id}\" data-state=\"{state}\"><td><code>{id}</code></td><td>{state}</td>\
             <td>{caller}</td><td><code>{tool}</code></td><td>{rule}</td><td>{created}</td><td>{expires}</td>\
             <td>{arguments}</td><td>{decided}</td><td>{reason}</td><td>{actions}</td></tr>",
            id = esc(&record.id),
            caller = esc(&record.consumer),
            tool = esc(&format!("{}/{}", record.server, record.tool)),
            rule = esc(&record.rule),
            created = utc(record.created_at),
            expires = utc(record.expires_at),
        ));
    }
    if rows.is_empty() {
        rows = "<tr><td colspan=\"11\">No requests for your approver roles.</td></tr>".to_string();
    }
    let error =
        q.error.as_deref().map(|e| format!("<p class=\"error\" id=\"error\">{}</p>", esc(e))).unwrap_or_default();
    let body = format!(
        "<p>Signed in as <b id=\"who\">{who}</b>. <form method=\"post\" action=\"/approvals/sign-out\" style=\"display:inline\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Sign out</button></form></p>{error}\
         <table id=\"requests\"><tr><th>Request</th><th>State</th><th>Caller</th><th>Tool</th><th>Rule</th>\
         <th>Requested</th><th>Expires</th><th>Arguments</th><th>Decided</th><th>Reason</th><th></th></tr>{rows}</table>",
        who = esc(&session.consumer),
        csrf = esc(&session.csrf),
    );
    page(&nonce, "Meshgate approvals", &body, true)
}

/// The arguments as an approver may see them: every redaction rule for this tool applied
/// (as to an answer read by the approver), and nothing at all when a rule would block them.
fn shown_arguments(
    compiled: &super::Compiled,
    record: &Record,
    arguments: &serde_json::Value,
    roles: &[String],
) -> String {
    let text = serde_json::to_string_pretty(arguments).unwrap_or_default();
    let redactor = &compiled.filter.redactor;
    let mut shown = text;
    for direction in [Direction::Request, Direction::Response] {
        if let Some(plan) = redactor.plan(&record.server, Some(&record.tool), roles, direction) {
            match plan.redact_text(&shown, &mut RedactionCounts::new()) {
                Ok(Some(redacted)) => shown = redacted,
                Ok(None) => {}
                Err(_) => return "<i>withheld by a redaction rule</i>".to_string(),
            }
        }
    }
    format!("<pre>{}</pre>", esc(&shown))
}

#[derive(Debug, Deserialize)]
struct SignInForm {
    credential: String,
    #[serde(default)]
    id: Option<String>,
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(value) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn back(id: Option<&str>, error: Option<&str>) -> String {
    let mut to = "/approvals".to_string();
    let mut sep = '?';
    for (key, value) in [("id", id), ("error", error)] {
        if let Some(value) = value {
            to.push(sep);
            to.push_str(key);
            to.push('=');
            to.push_str(&url_encode(value));
            sep = '&';
        }
    }
    to
}

fn url_encode(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn sign_in(State(approvals): State<Arc<Approvals>>, Form(form): Form<SignInForm>) -> Response {
    let id = form.id.as_deref().filter(|id| id.len() <= 64);
    let Some(compiled) = approvals.compiled() else {
        return redirect(&back(id, Some("no registry is loaded")));
    };
    let credential = form.credential.trim();
    // A JWT has three dot-separated parts; anything else is an API key.
    let looks_like_jwt = credential.split('.').count() == 3;
    let bearer = format!("Bearer {credential}");
    let creds = if looks_like_jwt {
        Credentials { authorization: Some(&bearer), ..Default::default() }
    } else {
        Credentials { api_key: Some(credential), ..Default::default() }
    };
    let consumer = match compiled.filter.authenticator.authenticate(creds, now(), &mut TokenCache::new(1)) {
        Ok(consumer) if matches!(consumer.method, AuthMethod::Jwt | AuthMethod::ApiKey) => consumer,
        Ok(_) => return redirect(&back(id, Some("sign in with a JWT or an API key"))),
        Err(e) => {
            tracing::info!(target: "meshgate::audit", event = "approval_sign_in_refused", reason = %e, "approval page sign-in refused");
            return redirect(&back(id, Some(&format!("sign-in refused: {e}"))));
        }
    };
    if !compiled.rules.rules().iter().any(|r| r.approver(&consumer.roles)) {
        tracing::info!(target: "meshgate::audit", event = "approval_sign_in_refused", consumer = %consumer.name, reason = "no approver role", "approval page sign-in refused");
        return redirect(&back(id, Some(&format!("{} holds no approver role", consumer.name))));
    }
    let (Some(token), Some(csrf)) = (random_token(), random_token()) else {
        return redirect(&back(id, Some("no randomness available")));
    };
    let session = Session {
        consumer: consumer.name.clone(),
        roles: consumer.roles.clone(),
        csrf,
        expires_at: now() + SESSION_SECS,
    };
    let text = serde_json::to_string(&session).unwrap_or_default();
    if let Err(e) = approvals.kv().put_new(&session_key(&token), &text, session.expires_at, now()).await {
        return redirect(&back(id, Some(&format!("the approval store is unavailable: {e}"))));
    }
    tracing::info!(target: "meshgate::audit", event = "approval_sign_in", approver = %consumer.name, "approval page sign-in");
    let mut response = redirect(&back(id, None));
    let secure = if approvals.secure_cookies { "; Secure" } else { "" };
    let cookie =
        format!("{COOKIE}={token}; Path=/approvals; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Debug, Deserialize)]
struct DecideForm {
    id: String,
    decision: String,
    #[serde(default)]
    reason: String,
    csrf: String,
}

async fn decide(State(approvals): State<Arc<Approvals>>, headers: HeaderMap, Form(form): Form<DecideForm>) -> Response {
    let Some(session) = session(&approvals, &headers).await else {
        return (StatusCode::UNAUTHORIZED, "sign in first\n").into_response();
    };
    if !same_secret(&form.csrf, &session.csrf) {
        return (StatusCode::FORBIDDEN, "the form's CSRF token does not match this session\n").into_response();
    }
    let approve = match form.decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return (StatusCode::BAD_REQUEST, "decision must be approve or reject\n").into_response(),
    };
    let reason: String = form.reason.trim().chars().take(MAX_REASON).collect();
    let reason = if approve || !reason.is_empty() { reason } else { "no reason given".to_string() };
    let rules = |name: &str| approvals.rule(name);
    let decision = store::Decision { approver: &session.consumer, roles: &session.roles, approve, reason: &reason };
    let decided = store::decide(&approvals.kv(), &form.id, decision, &rules, now()).await;
    match decided {
        Ok(record) => {
            let event = if approve { "approved" } else { "rejected" };
            approvals.metrics.record(&record.rule, event);
            audit(event, &record, Some(&session.consumer), (!approve).then_some(reason.as_str()));
            redirect(&back(Some(&record.id), None))
        }
        Err(e) => {
            if matches!(e, DecideError::SelfApproval(_) | DecideError::NotApprover(_)) {
                tracing::info!(
                    target: "meshgate::audit",
                    event = "approval_decision_refused",
                    id = %form.id,
                    approver = %session.consumer,
                    reason = %e,
                    "approval decision refused"
                );
            }
            let id = (form.id.len() <= 64).then_some(form.id.as_str());
            redirect(&back(id, Some(&e.to_string())))
        }
    }
}

#[derive(Debug, Deserialize)]
struct SignOutForm {
    csrf: String,
}

async fn sign_out(
    State(approvals): State<Arc<Approvals>>,
    headers: HeaderMap,
    Form(form): Form<SignOutForm>,
) -> Response {
    if let (Some(session), Some(token)) = (session(&approvals, &headers).await, cookie_token(&headers)) {
        if same_secret(&form.csrf, &session.csrf) {
            let _ = approvals.kv().remove(&session_key(&token), now()).await;
        }
    }
    let mut response = redirect("/approvals");
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("meshgate_approver=; Path=/approvals; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

impl Kv {
    /// The text at `key`, for the page's sessions.
    pub async fn get_text(&self, key: &str, now: u64) -> Result<Option<String>, store::StoreError> {
        self.get(key, now).await
    }

    /// Writes `value` at a new `key` until `keep_until`.
    pub async fn put_new(&self, key: &str, value: &str, keep_until: u64, now: u64) -> Result<(), store::StoreError> {
        if self.cas(key, None, value, keep_until, now).await? {
            Ok(())
        } else {
            Err(store::StoreError::Contended)
        }
    }

    /// Ends `key` now.
    pub async fn remove(&self, key: &str, now: u64) -> Result<(), store::StoreError> {
        if let Some(current) = self.get(key, now).await? {
            self.cas(key, Some(&current), "", now + 1, now).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("a\u{0}b\u{1b}c\nd"), "a\u{fffd}b\u{fffd}c\nd");
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_709_251_199), "2024-02-29 23:59:59 UTC");
        assert_eq!(utc(1_796_083_200), "2026-12-01 00:00:00 UTC");
    }

    #[test]
    fn only_well_formed_session_cookies_are_read() {
        let mut headers = HeaderMap::new();
        let token = "ab".repeat(32);
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("other=1; {COOKIE}={token}")).unwrap());
        assert_eq!(cookie_token(&headers), Some(token));
        headers.insert(header::COOKIE, HeaderValue::from_static("meshgate_approver=../../etc"));
        assert_eq!(cookie_token(&headers), None);
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
    }

    #[test]
    fn redirects_carry_only_encoded_values() {
        assert_eq!(back(Some("ap_1"), Some("no <b> & co")), "/approvals?id=ap_1&error=no%20%3Cb%3E%20%26%20co");
        assert_eq!(back(None, None), "/approvals");
    }
}
