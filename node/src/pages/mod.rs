//! The web pages (issue 14), served by `onecard serve` itself: server-rendered HTML from
//! templates (`node/templates/`, askama: checked at compile time, every value escaped), no
//! JavaScript needed for any action.
//!
//! Sign-in follows the patent: no password on any web site. After card and PIN at their own
//! reader, the reader shows a one-time code (`AuthAnswer::web_code`, issued by
//! [`issue_code`]); the consumer types it into `/web/sign-in` and gets a session in a cookie
//! (`HttpOnly`, `Secure`, `SameSite=Strict`, `Path=/web`, expiring with `[node]
//! session_ttl_secs`). The code is good once and for `[node] web_code_ttl_secs` (five minutes by default); it carries 50 random
//! bits, so guessing one of the few codes alive at any moment is hopeless at any rate HTTP
//! allows. Every form carries the session's synchroniser token (`csrf`), compared in constant
//! time; a POST without the right one is refused (403) and changes nothing.
//!
//! Merchants sign in on `/web/merchant/sign-in` with their API key, the operator on
//! `/web/ops/sign-in` with the administrator's token (checked as the API checks them:
//! [`crate::api::merchant_of_key`], [`crate::api::is_admin_token`]). Their sessions are the
//! same cookie; each session knows its party ([`WebParty`]) and opens that party's pages only,
//! and a merchant's or the operator's ends as soon as its credential no longer opens the API
//! (a rotated API key, a changed administrator token).
//!
//! Pages are not part of the JSON API: they are registered beside it (`configure`), not in
//! `api::ROUTES`, and answer HTML (errors too).

mod bills;
mod chart;
mod consumer;
mod merchant;
mod operator;
mod spending;
mod wallet;

pub use operator::OpsState;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use askama::Template;
use rand::RngCore;
use serde::Deserialize;

use crate::records::{self, Session, WebParty, WebSession};
use crate::state::Node;
use crate::store;

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
pub fn issue_code(consumer: &str, now: u64, ttl_secs: u64) -> (String, u64, store::Write) {
    let mut bytes = [0u8; CODE_SYMBOLS];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let code: String = bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
        .collect();
    let expires_at = now.saturating_add(ttl_secs);
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
    merchant::configure(cfg);
    operator::configure(cfg);
}

// ---------------------------------------------------------------------------------------------
// Answers.

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    error: Option<&'a str>,
}

/// The sign-in page of a merchant (API key) or the operator (administrator's token).
#[derive(Template)]
#[template(path = "key_sign_in.html")]
struct KeySignInPage<'a> {
    title: &'a str,
    action: &'a str,
    /// The form field's name.
    field: &'a str,
    label: &'a str,
    explain: &'a str,
    error: Option<&'a str>,
}

fn key_sign_in_page(status: StatusCode, party: WebParty, error: Option<&str>) -> HttpResponse {
    let page = match party {
        WebParty::Merchant => KeySignInPage {
            title: "Merchant sign-in",
            action: "/web/merchant/sign-in",
            field: "api_key",
            label: "Your API key",
            explain: "Sign in with the API key the settlement center gave you (the one your \
                      shop sends to the API). It is checked as the API checks it.",
            error,
        },
        // A consumer signs in with the code from the reader, not with a key.
        WebParty::Consumer => return render(status, &SignInPage { error }),
        WebParty::Operator => KeySignInPage {
            title: "Operator sign-in",
            action: "/web/ops/sign-in",
            field: "token",
            label: "Administrator token",
            explain: "Sign in with the node's administrator token (ONECARD_ADMIN_TOKEN, or the \
                      admin-token file in the data directory).",
            error,
        },
    };
    render(status, &page)
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

/// The live session in the request's cookie, whoever's, with the cookie's token; `None`
/// without one (no cookie, an unknown or ended session).
fn live_session(
    node: &Node,
    req: &HttpRequest,
) -> Result<Option<(String, WebSession)>, store::StoreError> {
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
        .filter(|s| s.expires_at > node.now() && still_entitled(node, token, s))
        .map(|s| (token.to_string(), s)))
}

/// Whether the credential a session was opened with still opens the API: the merchant's API
/// key is still its key, the administrator's token is still the node's.
fn still_entitled(node: &Node, token: &str, s: &WebSession) -> bool {
    use subtle::ConstantTimeEq;
    match (s.party, s.credential.as_deref()) {
        (WebParty::Consumer, _) => true,
        (WebParty::Merchant, Some(key_hash)) => {
            node.api_keys.get(key_hash).is_some_and(|m| *m == s.id)
        }
        (WebParty::Operator, Some(bound)) => {
            let expected = operator_binding(node, token);
            bool::from(expected.as_bytes().ct_eq(bound.as_bytes()))
        }
        (_, None) => false,
    }
}

/// What ties an operator's session to the administrator's token: a digest of the token's
/// digest and the cookie's token, so that neither the token's digest is stored nor the
/// session outlives a change of the token.
fn operator_binding(node: &Node, token: &str) -> String {
    records::sha256_hex(format!("onecard-web-ops\0{}\0{token}", node.admin_token_hash).as_bytes())
}

/// The live session of `party`; `None` without one, or when the cookie is another party's:
/// a consumer's session never opens a merchant's page, nor the other way round.
fn signed_in(
    node: &Node,
    req: &HttpRequest,
    party: WebParty,
) -> Result<Option<WebSession>, store::StoreError> {
    Ok(live_session(node, req)?
        .map(|(_, s)| s)
        .filter(|s| s.party == party))
}

/// A consumer's live session, as the consumer's pages use it: the consumer, and the session
/// (its form token) through `Deref`.
pub(super) struct ConsumerSession {
    pub consumer: String,
    session: WebSession,
}

impl std::ops::Deref for ConsumerSession {
    type Target = WebSession;

    fn deref(&self) -> &WebSession {
        &self.session
    }
}

/// The signed-in consumer's session, from the cookie; `None` without a live one of a
/// consumer's.
fn session_of(
    node: &Node,
    req: &HttpRequest,
) -> Result<Option<ConsumerSession>, store::StoreError> {
    Ok(
        signed_in(node, req, WebParty::Consumer)?.map(|session| ConsumerSession {
            consumer: session.id.clone(),
            session,
        }),
    )
}

/// Where a party's pages start, and where it signs in.
fn home_of(party: WebParty) -> &'static str {
    match party {
        WebParty::Consumer => "/web/account",
        WebParty::Merchant => "/web/merchant",
        WebParty::Operator => "/web/ops",
    }
}

fn sign_in_of(party: WebParty) -> &'static str {
    match party {
        WebParty::Consumer => "/web/sign-in",
        WebParty::Merchant => "/web/merchant/sign-in",
        WebParty::Operator => "/web/ops/sign-in",
    }
}

/// The session cookie for `token` (`max_age` its lifetime; zero clears it).
fn session_cookie(token: &str, max_age: actix_web::cookie::time::Duration) -> Cookie<'_> {
    Cookie::build(COOKIE, token)
        .path("/web")
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .max_age(max_age)
        .finish()
}

/// Opens a session of `party` for `id`, with `more` writes in the same commit (a used code's
/// removal), and answers with its cookie, sending to the party's pages. A session the browser
/// still carries is ended in the same commit: one browser, one session. `credential` makes
/// the session's [`WebSession::credential`] from the new cookie token.
async fn open_session(
    node: &Node,
    req: &HttpRequest,
    party: WebParty,
    id: String,
    credential: impl FnOnce(&str) -> Option<String>,
    mut more: Vec<store::Write>,
) -> HttpResponse {
    let token = records::random_hex(32);
    let session = WebSession {
        party,
        id,
        expires_at: node.now().saturating_add(node.settings.session_ttl_secs),
        csrf: records::random_hex(32),
        credential: credential(&token),
    };
    if let Some(old) = req.cookie(COOKIE) {
        if old.value().len() == 64 && old.value().bytes().all(|b| b.is_ascii_hexdigit()) {
            more.push(store::remove(records::web_session_key(old.value())));
        }
    }
    more.push(store::json(records::web_session_key(&token), &session));
    if let Err(e) = node.store.commit(more).await {
        return fault(e);
    }
    let cookie = session_cookie(
        &token,
        actix_web::cookie::time::Duration::seconds(
            i64::try_from(node.settings.session_ttl_secs).unwrap_or(i64::MAX),
        ),
    );
    let mut r = see_other(home_of(party));
    if let Ok(v) = HeaderValue::from_str(&cookie.to_string()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// Whether a form's token is the session's, in constant time (the length is no secret).
fn csrf_ok(session: &WebSession, sent: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(session.csrf.as_bytes().ct_eq(sent.as_bytes()))
}

async fn home(node: web::Data<Node>, req: HttpRequest) -> HttpResponse {
    match live_session(&node, &req) {
        Ok(Some((_, s))) => see_other(home_of(s.party)),
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

async fn sign_in(
    node: web::Data<Node>,
    req: HttpRequest,
    form: Option<web::Form<SignInForm>>,
) -> HttpResponse {
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
    open_session(
        &node,
        &req,
        WebParty::Consumer,
        grant.consumer,
        |_| None,
        vec![store::remove(key)],
    )
    .await
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
    let (token, session) = match live_session(&node, &req) {
        Ok(Some(s)) => s,
        Ok(None) => return see_other("/web/sign-in"),
        Err(e) => return fault(e),
    };
    if !form.is_some_and(|f| csrf_ok(&session, &f.csrf)) {
        return forbidden();
    }
    if let Err(e) = node
        .store
        .commit(vec![store::remove(records::web_session_key(&token))])
        .await
    {
        return fault(e);
    }
    let gone = session_cookie("", actix_web::cookie::time::Duration::ZERO);
    let mut r = see_other(sign_in_of(session.party));
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
        let (shown, expires, _) = issue_code("alice", 100, 300);
        assert_eq!(expires, 400);
        assert_eq!(shown.len(), 11);
        assert!(normalise(&shown).is_some());
    }

    #[test]
    fn a_web_session_of_before_the_parties_is_a_consumers() {
        let s: WebSession =
            serde_json::from_str(r#"{"consumer":"alice","expires_at":5,"csrf":"x"}"#).unwrap();
        assert_eq!(s.party, WebParty::Consumer);
        assert_eq!(s.id, "alice");
        assert_eq!(s.credential, None);
        let m = WebSession {
            party: WebParty::Merchant,
            id: "shop".into(),
            expires_at: 9,
            csrf: "y".into(),
            credential: Some("h".into()),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert!(text.contains(r#""party":"merchant""#), "{text}");
        // The sweep reads the end of every record under `ss/`: web sessions of any party,
        // sign-in codes and API sessions.
        for record in [
            text,
            serde_json::to_string(&Session {
                consumer: "alice".into(),
                expires_at: 9,
            })
            .unwrap(),
        ] {
            let e: records::Expiring = serde_json::from_str(&record).unwrap();
            assert_eq!(e.expires_at, 9);
        }
    }

    #[test]
    fn tokens_compare_whole() {
        let s = WebSession {
            party: WebParty::Consumer,
            id: "alice".into(),
            expires_at: 1,
            csrf: "abc".into(),
            credential: None,
        };
        assert!(csrf_ok(&s, "abc"));
        assert!(!csrf_ok(&s, "abd"));
        assert!(!csrf_ok(&s, "ab"));
        assert!(!csrf_ok(&s, ""));
    }
}
