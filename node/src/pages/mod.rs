//! The web pages (issue 14), served by `onecard serve` itself: server-rendered HTML from
//! templates (`node/templates/`, askama: checked at compile time, every value escaped), no
//! JavaScript needed for any action.
//!
//! Sign-in follows the patent: no password on any web site. After card and PIN at their own
//! reader, the reader shows a one-time code (`AuthAnswer::web_code`, issued by
//! [`issue_code`]); the consumer types it into `/web/sign-in` and gets a session in a cookie
//! (`HttpOnly`, `Secure`, `SameSite=Strict`, `Path=/web`, expiring with `[node]
//! session_ttl_secs`). The code is good once and for [`CODE_TTL_SECS`]; it carries 50 random
//! bits, so guessing one of the few codes alive at any moment is hopeless at any rate HTTP
//! allows. Every form carries the session's synchroniser token (`csrf`), compared in constant
//! time; a POST without the right one is refused (403) and changes nothing.
//!
//! Pages are not part of the JSON API: they are registered beside it (`configure`), not in
//! `api::ROUTES`, and answer HTML (errors too).

mod bills;
mod chart;
mod consumer;
mod spending;
mod wallet;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use rand::RngCore;
use serde::Deserialize;

use crate::records::{self, Session, WebSession};
use crate::state::Node;
use crate::store;

/// How long a web sign-in code shown at the reader stays good.
pub const CODE_TTL_SECS: u64 = 300;
/// The session cookie's name.
const COOKIE: &str = "onecard_session";
/// Crockford's base32, as the recharge codes: no I, L, O, U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Ten symbols of five bits: 50 bits.
const CODE_SYMBOLS: usize = 10;

/// Security headers on every page: nothing from elsewhere, no framing, no inline script.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// A new one-time code for `consumer` and its record (`ss/c/…`), written with the reader's
/// answer. Shown as `XXXXX-XXXXX`.
pub fn issue_code(consumer: &str, now: u64) -> (String, u64, store::Write) {
    let mut bytes = [0u8; CODE_SYMBOLS];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let code: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    let expires_at = now.saturating_add(CODE_TTL_SECS);
    let write = store::json(
        records::web_code_key(&code),
        &Session {
            consumer: consumer.to_string(),
            expires_at,
        },
    );
    let shown = format!("{}-{}", &code[..5], &code[5..]);
    (shown, expires_at, write)
}

/// A code as typed: dashes and spaces dropped, case ignored, `O` read as `0` and `I`, `L` as
/// `1`. `None` when it cannot be a code.
fn normalise(typed: &str) -> Option<String> {
    let mut out = String::with_capacity(CODE_SYMBOLS);
    for c in typed.chars().take(64) {
        if c == '-' || c.is_whitespace() {
            continue;
        }
        let c = match c.to_ascii_uppercase() {
            'O' => '0',
            'I' | 'L' => '1',
            u if u.is_ascii() && ALPHABET.contains(&(u as u8)) => u,
            _ => return None,
        };
        out.push(c);
    }
    (out.len() == CODE_SYMBOLS).then_some(out)
}

/// Registers the pages.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/web", web::get().to(home))
        .route("/web/style.css", web::get().to(style))
        .route("/web/sign-in", web::get().to(sign_in_page))
        .route("/web/sign-in", web::post().to(sign_in))
        .route("/web/sign-out", web::post().to(sign_out));
    consumer::configure(cfg);
    bills::configure(cfg);
    spending::configure(cfg);
    wallet::configure(cfg);
}

// ---------------------------------------------------------------------------------------------
// Answers.

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage<'a> {
    title: &'a str,
    message: &'a str,
}

/// An HTML answer with the pages' security headers.
fn html(status: StatusCode, body: String) -> HttpResponse {
    let mut r = HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn render(status: StatusCode, t: &impl Template) -> HttpResponse {
    match t.render() {
        Ok(body) => html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "a page did not render");
            HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("the page could not be rendered")
        }
    }
}

fn message(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    render(status, &MessagePage { title, message })
}

fn see_other(to: &str) -> HttpResponse {
    let mut r = HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn fault(e: impl std::fmt::Display) -> HttpResponse {
    tracing::error!(error = %e, "a page failed");
    message(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The node could not answer. Nothing was changed; try again in a moment.",
    )
}

async fn style() -> HttpResponse {
    let mut r = HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .body(include_str!("../../templates/style.css"));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Sessions.

/// The signed-in consumer's session, from the cookie; `None` without a live one.
fn session_of(node: &Node, req: &HttpRequest) -> Result<Option<WebSession>, store::StoreError> {
    let Some(cookie) = req.cookie(COOKIE) else {
        return Ok(None);
    };
    let token = cookie.value();
    if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    Ok(node
        .store
        .get::<WebSession>(&records::web_session_key(token))?
        .filter(|s| s.expires_at > node.now()))
}

/// Whether a form's token is the session's, in constant time (the length is no secret).
fn csrf_ok(session: &WebSession, sent: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(session.csrf.as_bytes().ct_eq(sent.as_bytes()))
}

async fn home(node: web::Data<Node>, req: HttpRequest) -> HttpResponse {
    match session_of(&node, &req) {
        Ok(Some(_)) => see_other("/web/account"),
        Ok(None) => see_other("/web/sign-in"),
        Err(e) => fault(e),
    }
}

async fn sign_in_page() -> HttpResponse {
    render(StatusCode::OK, &SignInPage { error: None })
}

#[derive(Debug, Deserialize)]
struct SignInForm {
    code: String,
}

async fn sign_in(node: web::Data<Node>, form: Option<web::Form<SignInForm>>) -> HttpResponse {
    let refused =
        |status: StatusCode, error: &str| render(status, &SignInPage { error: Some(error) });
    let Some(form) = form else {
        return refused(StatusCode::BAD_REQUEST, "Type the code your reader shows.");
    };
    let Some(code) = normalise(&form.code) else {
        return refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            "That is not a code: it has ten letters and digits, as the reader shows it.",
        );
    };
    let key = records::web_code_key(&code);
    // One sign-in at a time (they are rare): the code is read and removed under the lock, in
    // the same commit as the new session, so a code signs in once even when sent twice at once.
    let _one_at_a_time = node.web_sign_in.lock().await;
    let found = match node.store.get::<Session>(&key) {
        Ok(f) => f,
        Err(e) => return fault(e),
    };
    let now = node.now();
    let Some(grant) = found.filter(|g| g.expires_at > now) else {
        return refused(
            StatusCode::UNAUTHORIZED,
            "This code is unknown, used or expired. Sign in at your reader again for a new one.",
        );
    };
    let token = records::random_hex(32);
    let session = WebSession {
        consumer: grant.consumer,
        expires_at: now.saturating_add(node.settings.session_ttl_secs),
        csrf: records::random_hex(32),
    };
    if let Err(e) = node
        .store
        .commit(vec![
            store::remove(key),
            store::json(records::web_session_key(&token), &session),
        ])
        .await
    {
        return fault(e);
    }
    let cookie = Cookie::build(COOKIE, token)
        .path("/web")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(node.settings.session_ttl_secs).unwrap_or(i64::MAX),
        ))
        .finish();
    let mut r = see_other("/web/account");
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(
    node: web::Data<Node>,
    req: HttpRequest,
    form: Option<web::Form<CsrfForm>>,
) -> HttpResponse {
    let session = match session_of(&node, &req) {
        Ok(Some(s)) => s,
        Ok(None) => return see_other("/web/sign-in"),
        Err(e) => return fault(e),
    };
    if !form.is_some_and(|f| csrf_ok(&session, &f.csrf)) {
        return forbidden();
    }
    if let Some(c) = req.cookie(COOKIE) {
        if let Err(e) = node
            .store
            .commit(vec![store::remove(records::web_session_key(c.value()))])
            .await
        {
            return fault(e);
        }
    }
    let gone = Cookie::build(COOKIE, "")
        .path("/web")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(actix_web::cookie::time::Duration::ZERO)
        .finish();
    let mut r = see_other("/web/sign-in");
    if let Ok(v) = HeaderValue::from_str(&gone.to_string()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

fn forbidden() -> HttpResponse {
    message(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form is not from your current session. Nothing was changed; reload the page and try again.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_as_typed() {
        assert_eq!(normalise("abcde-fghjk"), Some("ABCDEFGHJK".into()));
        assert_eq!(
            normalise(" oiL23 45678 "),
            Some("01123 45678".replace(' ', ""))
        );
        assert_eq!(normalise("ABCDE"), None);
        assert_eq!(normalise("ABCDE-FGHJU"), None, "U is not a symbol");
        assert_eq!(normalise("ABCDE-FGHJKX"), None);
    }

    #[test]
    fn issued_codes_are_ten_symbols_shown_in_two_groups() {
        let (shown, expires, _) = issue_code("alice", 100);
        assert_eq!(expires, 100 + CODE_TTL_SECS);
        assert_eq!(shown.len(), 11);
        assert!(normalise(&shown).is_some());
    }

    #[test]
    fn tokens_compare_whole() {
        let s = WebSession {
            consumer: "alice".into(),
            expires_at: 1,
            csrf: "abc".into(),
        };
        assert!(csrf_ok(&s, "abc"));
        assert!(!csrf_ok(&s, "abd"));
        assert!(!csrf_ok(&s, "ab"));
        assert!(!csrf_ok(&s, ""));
    }
}
