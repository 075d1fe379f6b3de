//! The reader program's link to a running node: the node's reader API over HTTP(S)
//! (`/v1/reader/...`), with the JSON bodies of [`crate::wire`].
//!
//! Blocking (ureq), one request at a time, each with a fresh random `X-Request-Id` so that the
//! node's logs can be matched with the reader's. Every POST carries a fresh `Idempotency-Key`
//! and is sent once more, with the same key, when its answer is lost on the way (a transport
//! failure after the request may have arrived): the node then answers the retry with the
//! answer it gave, so an authentication whose answer was lost is neither decided twice (a
//! challenge is single-use) nor reported as failed when it succeeded. Every failure (the node
//! unreachable, a 4xx/5xx with its [`ErrorBody`], an answer that does not parse) is a
//! [`LinkError`]; no answer makes this module panic.
//!
//! TLS is rustls with the webpki roots, plus an optional extra trusted certificate in PEM
//! ([`LinkOptions::ca_cert_pem`]) for a node with a self-signed certificate. Such a certificate
//! must name the host the reader connects to (DNS name or IP address) and must not be marked as
//! a CA (`basicConstraints CA:TRUE`) if it is also the node's own certificate: webpki refuses a
//! CA certificate as a server's.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use onecard_protocol::{AuthOutcome, ChallengeIssued, EncryptedPin, SwipeRefusal};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::flow::{LinkError, NodeLink};
use crate::wire::{
    AuthAnswer, AuthenticateBody, CheckoutView, ConfirmAddressBody, ErrorBody, PinBody,
    SwipeAnswer, SwipeBody,
};
use onecard_protocol::wire::to_hex;

/// How long the link waits before it sends a POST whose answer was lost once more.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The largest answer body read from the node (the reader API's bodies are a few hundred bytes).
const MAX_BODY: u64 = 1 << 20;

/// How the link reaches the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkOptions {
    /// For the whole of one request (connect, send, answer). Default: 10 s.
    pub timeout: Duration,
    /// An extra trusted certificate (or several), in PEM, besides the webpki roots.
    pub ca_cert_pem: Option<Vec<u8>>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            timeout: Duration::from_secs(10),
            ca_cert_pem: None,
        }
    }
}

/// The node's reader API, as a [`NodeLink`]. See the module documentation.
pub struct HttpLink {
    agent: ureq::Agent,
    /// `http(s)://host[:port][/prefix]`, without a trailing `/`.
    base: String,
    last_answer: Option<AuthAnswer>,
}

impl std::fmt::Debug for HttpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpLink")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl HttpLink {
    /// A link to the node at `base_url` (`http://host:port` or `https://…`, optionally with a
    /// path prefix). Fails if the URL is not http(s) or the CA certificate is not usable.
    pub fn new(base_url: &str, opts: LinkOptions) -> Result<HttpLink, LinkError> {
        let base = base_url.trim().trim_end_matches('/').to_string();
        let lower = base.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"))
            .ok_or_else(|| {
                LinkError(format!(
                    "the node's URL must start with http:// or https://: {base_url:?}"
                ))
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(LinkError(format!(
                "the node's URL has no host: {base_url:?}"
            )));
        }
        if base.contains(['?', '#']) {
            return Err(LinkError(format!(
                "the node's URL must not have a query or a fragment: {base_url:?}"
            )));
        }
        let mut builder = ureq::AgentBuilder::new()
            .timeout(opts.timeout)
            .timeout_connect(opts.timeout)
            // A redirect is not part of the API; a POST must not be replayed elsewhere.
            .redirects(0)
            .user_agent(concat!("onecard-terminal/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &opts.ca_cert_pem {
            builder = builder.tls_config(tls_config(pem)?);
        }
        Ok(HttpLink {
            agent: builder.build(),
            base,
            last_answer: None,
        })
    }

    /// The node's base URL, as used (no trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Step 1: the checkout session of an order (merchant, amount, delivery address).
    pub fn checkout(&mut self, order_id: &str) -> Result<CheckoutView, LinkError> {
        if matches!(order_id, "" | "." | "..") {
            return Err(LinkError(format!("not an order id: {order_id:?}")));
        }
        let path = format!("/v1/reader/checkouts/{}", encode_path_segment(order_id));
        match self.exchange::<(), CheckoutView>("GET", &path, None, None) {
            Err(Failure::Status(404, message)) => Err(LinkError(format!(
                "the order {order_id:?} is unknown to the node ({message})"
            ))),
            other => other.map_err(Failure::into_link_error),
        }
    }

    /// The last answer to an authentication or an address confirmation, as the node sent it:
    /// when authorised, with the placed order and the consumer's session.
    pub fn last_answer(&self) -> Option<&AuthAnswer> {
        self.last_answer.as_ref()
    }

    fn post<B: Serialize, A: DeserializeOwned>(
        &mut self,
        path: &str,
        body: &B,
    ) -> Result<A, LinkError> {
        let key = request_id() + &request_id();
        match self.exchange("POST", path, Some(body), Some(&key)) {
            Err(Failure::Lost(_)) => {
                std::thread::sleep(RETRY_PAUSE);
                self.exchange("POST", path, Some(body), Some(&key))
            }
            other => other,
        }
        .map_err(Failure::into_link_error)
    }

    fn auth_answer(&mut self, answer: AuthAnswer) -> Result<AuthOutcome, LinkError> {
        let outcome = answer.to_outcome().ok_or_else(|| {
            LinkError(format!(
                "the node's answer is not one it sends (outcome {:?})",
                answer.outcome
            ))
        })?;
        self.last_answer = Some(answer);
        Ok(outcome)
    }

    /// One request, one answer: the answer's JSON on a 2xx, else why not.
    fn exchange<B: Serialize, A: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        idempotency_key: Option<&str>,
    ) -> Result<A, Failure> {
        let url = format!("{}{}", self.base, path);
        let request_id = request_id();
        let mut request = self
            .agent
            .request(method, &url)
            .set("X-Request-Id", &request_id)
            .set("Accept", "application/json");
        if let Some(key) = idempotency_key {
            request = request.set("Idempotency-Key", key);
        }
        let result = match body {
            Some(b) => {
                let json = serde_json::to_string(b)
                    .map_err(|e| Failure::Other(format!("cannot encode the request: {e}")))?;
                request
                    .set("Content-Type", "application/json")
                    .send_string(&json)
            }
            None => request.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                // The transport error names the URL.
                return Err(Failure::Lost(format!(
                    "{t} ({method}, request {request_id})"
                )));
            }
        };
        let status = response.status();
        let text = read_body(response).map_err(|e| {
            Failure::Other(format!(
                "{method} {url} (request {request_id}): reading the answer: {e}"
            ))
        })?;
        if !(200..300).contains(&status) {
            let message = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(e) => format!(
                    "{} ({}), request {request_id}",
                    e.error.message, e.error.code
                ),
                Err(_) => format!(
                    "HTTP {status} from {method} {url}, request {request_id}: {}",
                    snippet(&text)
                ),
            };
            return Err(Failure::Status(status, message));
        }
        serde_json::from_str(&text).map_err(|e| {
            Failure::Other(format!(
                "the node's answer to {method} {url} (request {request_id}) does not parse: {e}: {}",
                snippet(&text)
            ))
        })
    }
}

/// Why an exchange failed: a status with the node's message, no answer (the node unreachable
/// or the connection lost: the request may or may not have arrived), or anything else.
#[derive(Debug)]
enum Failure {
    Status(u16, String),
    Lost(String),
    Other(String),
}

impl Failure {
    fn into_link_error(self) -> LinkError {
        match self {
            Failure::Status(status, message) => {
                LinkError(format!("the node answered {status}: {message}"))
            }
            Failure::Lost(message) | Failure::Other(message) => LinkError(message),
        }
    }
}

impl NodeLink for HttpLink {
    fn swipe(
        &mut self,
        reader_id: &str,
        card_number: &str,
        order_id: &str,
        amount_cents: u64,
    ) -> Result<Result<ChallengeIssued, SwipeRefusal>, LinkError> {
        let body = SwipeBody {
            reader_id: reader_id.to_string(),
            card_number: card_number.to_string(),
            order_id: order_id.to_string(),
            amount_cents,
        };
        let answer: SwipeAnswer = self.post("/v1/reader/swipe", &body)?;
        answer.into_result().ok_or_else(|| {
            LinkError("the node's answer to the swipe is not one it sends".to_string())
        })
    }

    fn authenticate(
        &mut self,
        challenge_id: &str,
        counter: u32,
        cryptogram: &[u8],
        pin: &EncryptedPin,
        delivery_address: &str,
    ) -> Result<AuthOutcome, LinkError> {
        let body = AuthenticateBody {
            challenge_id: challenge_id.to_string(),
            counter,
            cryptogram: to_hex(cryptogram),
            pin: PinBody::of(pin),
            delivery_address: delivery_address.to_string(),
        };
        let answer: AuthAnswer = self.post("/v1/reader/authenticate", &body)?;
        self.auth_answer(answer)
    }

    fn confirm_address_change(
        &mut self,
        challenge_id: &str,
        accept: bool,
    ) -> Result<AuthOutcome, LinkError> {
        let body = ConfirmAddressBody {
            challenge_id: challenge_id.to_string(),
            accept,
        };
        let answer: AuthAnswer = self.post("/v1/reader/confirm-address", &body)?;
        self.auth_answer(answer)
    }
}

/// The rustls configuration: the webpki roots and the certificates of `pem`.
fn tls_config(pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, LinkError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert =
            cert.map_err(|e| LinkError(format!("the CA certificate is not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| LinkError(format!("the CA certificate cannot be trusted: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(LinkError(
            "the CA certificate file has no PEM CERTIFICATE in it".to_string(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| LinkError(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// At most [`MAX_BODY`] bytes of the answer, as text (invalid UTF-8 replaced).
fn read_body(response: ureq::Response) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(MAX_BODY)
        .read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The start of a body, for an error message.
fn snippet(text: &str) -> String {
    const MAX: usize = 200;
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    let mut s: String = text.chars().take(MAX).collect();
    if text.chars().count() > MAX {
        s.push('…');
    }
    format!("{s:?}")
}

/// 16 random lowercase hex digits.
fn request_id() -> String {
    to_hex(&rand::random::<[u8; 8]>())
}

/// A URL path segment: every byte but the unreserved ones (RFC 3986: `A-Z a-z 0-9 - . _ ~`)
/// percent-encoded, so that `/`, `?`, `#`, `%`, spaces and non-ASCII stay inside the segment.
/// (`.` and `..` stay as they are, and a URL resolves them away even encoded: callers refuse
/// them.)
pub fn encode_path_segment(segment: &str) -> String {
    let mut s = String::with_capacity(segment.len());
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{PlacedOrder, SessionBody};
    use onecard_protocol::Authorisation;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::thread::JoinHandle;

    /// What the test server saw of the one request it answered.
    #[derive(Debug)]
    struct Seen {
        request_line: String,
        /// Header names lowercased.
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn read_request(stream: &mut dyn std::io::Read) -> Seen {
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (n, v) = line.split_once(':').unwrap();
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; len];
        reader.read_exact(&mut body).unwrap();
        Seen {
            request_line: request_line.trim_end().to_string(),
            headers,
            body: String::from_utf8(body).unwrap(),
        }
    }

    fn response(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// A server on a loopback port that answers one request with `answer`; its base URL, and
    /// the request it saw.
    fn serve_once(answer: String) -> (String, JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let seen = read_request(&mut stream);
            stream.write_all(answer.as_bytes()).unwrap();
            stream.flush().unwrap();
            seen
        });
        (base, handle)
    }

    fn link(base: &str) -> HttpLink {
        HttpLink::new(
            base,
            LinkOptions {
                timeout: Duration::from_secs(5),
                ca_cert_pem: None,
            },
        )
        .unwrap()
    }

    fn challenge() -> ChallengeIssued {
        ChallengeIssued {
            challenge_id: "ch-1".into(),
            challenge: [7; 16],
            node_public: [9; 32],
            expires_at: 1_000,
        }
    }

    fn pin() -> EncryptedPin {
        EncryptedPin {
            reader_public: [1; 32],
            nonce: [2; 12],
            ciphertext: vec![3; 20],
        }
    }

    #[test]
    fn a_challenge_answer_parses_and_the_request_carries_the_body_and_a_request_id() {
        let answer = serde_json::to_string(&SwipeAnswer::from_result(Ok(challenge()))).unwrap();
        let (base, server) = serve_once(response("200 OK", &answer));
        let got = link(&base).swipe("reader-1", "4000123412341234", "o-42", 1234);
        assert_eq!(got, Ok(Ok(challenge())));
        let seen = server.join().unwrap();
        assert_eq!(seen.request_line, "POST /v1/reader/swipe HTTP/1.1");
        let id = seen.header("x-request-id").expect("an X-Request-Id header");
        assert_eq!(id.len(), 16);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(seen.header("content-type"), Some("application/json"));
        let body: SwipeBody = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(
            body,
            SwipeBody {
                reader_id: "reader-1".into(),
                card_number: "4000123412341234".into(),
                order_id: "o-42".into(),
                amount_cents: 1234,
            }
        );
    }

    #[test]
    fn a_refusal_is_a_refusal_not_an_error() {
        let answer =
            serde_json::to_string(&SwipeAnswer::from_result(Err(SwipeRefusal::RateLimited {
                retry_at: 77,
            })))
            .unwrap();
        let (base, server) = serve_once(response("200 OK", &answer));
        let got = link(&base).swipe("r", "c", "o", 1);
        assert_eq!(got, Ok(Err(SwipeRefusal::RateLimited { retry_at: 77 })));
        server.join().unwrap();
    }

    #[test]
    fn a_post_whose_answer_is_lost_is_sent_once_more_with_the_same_idempotency_key() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let answer = serde_json::to_string(&SwipeAnswer::from_result(Ok(challenge()))).unwrap();
        let server = std::thread::spawn(move || {
            // The first request arrives and its connection drops before any answer.
            let (mut first, _) = listener.accept().unwrap();
            let lost = read_request(&mut first);
            drop(first);
            let (mut second, _) = listener.accept().unwrap();
            let retried = read_request(&mut second);
            second
                .write_all(response("200 OK", &answer).as_bytes())
                .unwrap();
            (lost, retried)
        });
        let got = link(&base).swipe("reader-1", "4000123412341234", "o-42", 1234);
        assert_eq!(got, Ok(Ok(challenge())));
        let (lost, retried) = server.join().unwrap();
        let key = lost.header("idempotency-key").expect("an Idempotency-Key");
        assert_eq!(key.len(), 32);
        assert_eq!(retried.header("idempotency-key"), Some(key), "the same key");
        assert_eq!(lost.body, retried.body, "the same request");
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(request_id(), request_id());
    }

    #[test]
    fn an_unknown_order_is_a_link_error_with_the_nodes_message() {
        let body = r#"{"error":{"code":"unknown_order","message":"no checkout session for o/1","request_id":"abc"}}"#;
        let (base, server) = serve_once(response("404 Not Found", body));
        let err = link(&base).checkout("o/1 ä").unwrap_err();
        assert!(err.0.contains("unknown"), "{err}");
        assert!(err.0.contains("no checkout session for o/1"), "{err}");
        let seen = server.join().unwrap();
        // The order id is one path segment, percent-encoded.
        assert_eq!(
            seen.request_line,
            "GET /v1/reader/checkouts/o%2F1%20%C3%A4 HTTP/1.1"
        );
        assert!(seen.header("x-request-id").is_some());
    }

    #[test]
    fn a_checkout_view_parses() {
        let view = CheckoutView {
            order_id: "o-1".into(),
            merchant: "Shop".into(),
            amount: "12.34".into(),
            amount_cents: 1234,
            currency: "EUR".into(),
            delivery_name: "Alice".into(),
            delivery_address: "1 Main St".into(),
            status: "awaiting_payment".into(),
        };
        let (base, server) = serve_once(response("200 OK", &serde_json::to_string(&view).unwrap()));
        assert_eq!(link(&base).checkout("o-1"), Ok(view));
        let seen = server.join().unwrap();
        assert_eq!(seen.request_line, "GET /v1/reader/checkouts/o-1 HTTP/1.1");
    }

    #[test]
    fn other_statuses_carry_the_nodes_message_or_the_body() {
        let body = r#"{"error":{"code":"invalid_json","message":"missing field `pin`"}}"#;
        let (base, server) = serve_once(response("400 Bad Request", body));
        let err = link(&base).confirm_address_change("ch", true).unwrap_err();
        assert!(
            err.0.contains("400") && err.0.contains("missing field `pin`"),
            "{err}"
        );
        server.join().unwrap();

        let (base, server) = serve_once(response("502 Bad Gateway", "<html>oops</html>"));
        let err = link(&base).confirm_address_change("ch", true).unwrap_err();
        assert!(err.0.contains("502") && err.0.contains("oops"), "{err}");
        server.join().unwrap();

        let (base, server) = serve_once(
            "HTTP/1.1 302 Found\r\nLocation: http://example.invalid/\r\nContent-Length: 0\r\n\r\n"
                .to_string(),
        );
        let err = link(&base).swipe("r", "c", "o", 1).unwrap_err();
        assert!(err.0.contains("302"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn garbage_answers_are_link_errors() {
        for body in [
            "not json at all",
            "",
            r#"{"result":"challenge"}"#,
            r#"{"result":"approved","prompt":{"text":"x","sound":"ok"}}"#,
        ] {
            let (base, server) = serve_once(response("200 OK", body));
            let err = link(&base).swipe("r", "c", "o", 1).unwrap_err();
            assert!(err.0.contains("does not parse"), "{body:?}: {err}");
            server.join().unwrap();
        }
        // Well-formed JSON that is not an answer the node sends: bad hex, unknown reason,
        // unknown outcome.
        let bad_hex = serde_json::json!({
            "result": "challenge", "challenge_id": "c", "challenge": "zz", "node_public": "00",
            "expires_at": 1, "prompt": challenge().prompt(),
        });
        let (base, server) = serve_once(response("200 OK", &bad_hex.to_string()));
        assert!(link(&base).swipe("r", "c", "o", 1).is_err());
        server.join().unwrap();
        let mut answer = AuthAnswer::of(&AuthOutcome::TimedOut);
        answer.outcome = "teleported".into();
        let (base, server) =
            serve_once(response("200 OK", &serde_json::to_string(&answer).unwrap()));
        let mut l = link(&base);
        let err = l.authenticate("c", 1, &[1, 2], &pin(), "addr").unwrap_err();
        assert!(err.0.contains("teleported"), "{err}");
        assert!(l.last_answer().is_none());
        server.join().unwrap();
        // A truncated answer (shorter than its Content-Length).
        let (base, server) = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"result\""
                .to_string(),
        );
        assert!(link(&base).swipe("r", "c", "o", 1).is_err());
        server.join().unwrap();
    }

    #[test]
    fn a_refused_connection_is_a_link_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = link(&base).swipe("r", "c", "o", 1).unwrap_err();
        assert!(err.0.contains(&base), "{err}");
    }

    #[test]
    fn a_silent_node_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let held = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(1500));
            drop(stream);
        });
        let mut l = HttpLink::new(
            &base,
            LinkOptions {
                timeout: Duration::from_millis(300),
                ca_cert_pem: None,
            },
        )
        .unwrap();
        assert!(l.swipe("r", "c", "o", 1).is_err());
        held.join().unwrap();
    }

    #[test]
    fn an_authorisation_keeps_the_placed_order_and_the_session() {
        let auth = Authorisation {
            order_id: "o-1".into(),
            amount_cents: 1234,
            card_last4: "1234".into(),
            account: "alice".into(),
            reader_id: "r".into(),
            temporary_address_change: false,
        };
        let mut answer = AuthAnswer::of(&AuthOutcome::Authorised(auth.clone()));
        answer.order = Some(PlacedOrder {
            id: "o-1".into(),
            state: "pending".into(),
            refusal: None,
        });
        answer.session = Some(SessionBody {
            token: "tok".into(),
            expires_at: 99,
        });
        let (base, server) =
            serve_once(response("200 OK", &serde_json::to_string(&answer).unwrap()));
        let mut l = link(&base);
        let got = l.authenticate("ch-1", 5, &[0xab, 0xcd], &pin(), "1 Main St");
        assert_eq!(got, Ok(AuthOutcome::Authorised(auth)));
        assert_eq!(l.last_answer(), Some(&answer));
        let seen = server.join().unwrap();
        assert_eq!(seen.request_line, "POST /v1/reader/authenticate HTTP/1.1");
        let body: AuthenticateBody = serde_json::from_str(&seen.body).unwrap();
        assert_eq!(
            body,
            AuthenticateBody {
                challenge_id: "ch-1".into(),
                counter: 5,
                cryptogram: "abcd".into(),
                pin: PinBody::of(&pin()),
                delivery_address: "1 Main St".into(),
            }
        );
    }

    #[test]
    fn the_base_url_is_checked() {
        for bad in [
            "",
            "node:8080",
            "ftp://node",
            "http://",
            "http:///x",
            "http://n/?q",
        ] {
            assert!(
                HttpLink::new(bad, LinkOptions::default()).is_err(),
                "{bad:?}"
            );
        }
        let l = HttpLink::new("https://node.example:8443/api/", LinkOptions::default()).unwrap();
        assert_eq!(l.base_url(), "https://node.example:8443/api");
        assert!(link("http://127.0.0.1:1").checkout("..").is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_path_segment("o-1_A.b~"), "o-1_A.b~");
        assert_eq!(encode_path_segment("a b/c?d#e%f"), "a%20b%2Fc%3Fd%23e%25f");
        assert_eq!(encode_path_segment("é"), "%C3%A9");
    }

    #[test]
    fn a_ca_certificate_must_be_pem() {
        for bad in [&b"not a certificate"[..], b"", TEST_KEY.as_bytes()] {
            let opts = LinkOptions {
                ca_cert_pem: Some(bad.to_vec()),
                ..LinkOptions::default()
            };
            assert!(HttpLink::new("https://127.0.0.1:1", opts).is_err());
        }
        let broken = TEST_CERT.replace("MIIB", "M!!B");
        let opts = LinkOptions {
            ca_cert_pem: Some(broken.into_bytes()),
            ..LinkOptions::default()
        };
        assert!(HttpLink::new("https://127.0.0.1:1", opts).is_err());
    }

    /// A self-signed certificate for 127.0.0.1 and localhost (not a CA), valid until 2126, and
    /// its key: made with `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
    /// -addext subjectAltName=IP:127.0.0.1,DNS:localhost -addext basicConstraints=critical,CA:FALSE`.
    const TEST_CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIByzCCAXKgAwIBAgIUYQLMTOAbQjxaE2Q9mU42/QSoqJAwCgYIKoZIzj0EAwIw
HDEaMBgGA1UEAwwRb25lY2FyZCB0ZXN0IG5vZGUwIBcNMjYxMTI2MDcxNzU2WhgP
MjEyNjExMDIwNzE3NTZaMBwxGjAYBgNVBAMMEW9uZWNhcmQgdGVzdCBub2RlMFkw
EwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEpwQfXtF9+YouifWk+8I/3sS1lTV9CCO8
AL8BZr5nWgwIT2sL+yP2ktohvgeH0Gz8LQR3G5/qlPTmqhWlyYm+06OBjzCBjDAd
BgNVHQ4EFgQUoWJ8nPLWZxcSdc7qWy5XOA63JSQwHwYDVR0jBBgwFoAUoWJ8nPLW
ZxcSdc7qWy5XOA63JSQwGgYDVR0RBBMwEYcEfwAAAYIJbG9jYWxob3N0MAwGA1Ud
EwEB/wQCMAAwCwYDVR0PBAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMAoGCCqG
SM49BAMCA0cAMEQCIHOUjqYUGPCgckR3ENR7ng5GEwZJ5h4HSenFit4OvMbiAiAE
RHgcrS3MQ7I41I7lZ9WFtSGfvq3kSMIefcmtrF9bbg==
-----END CERTIFICATE-----
";
    const TEST_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLWR6k9Tu/LcfuJmg
telSeOcz1JgBCTdWEZXezgoPUHihRANCAASnBB9e0X35ii6J9aT7wj/exLWVNX0I
I7wAvwFmvmdaDAhPawv7I/aS2iG+B4fQbPwtBHcbn+qU9OaqFaXJib7T
-----END PRIVATE KEY-----
";

    /// A TLS server on a loopback port with [`TEST_CERT`] that answers one request.
    fn serve_once_tls(answer: String) -> (String, JoinHandle<Option<Seen>>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut tcp, _): (TcpStream, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
            // A client that does not trust the certificate hangs up in the handshake.
            let mut first = [0u8; 1];
            if tls.read_exact(&mut first).is_err() {
                return None;
            }
            let mut rest = std::io::Read::chain(&first[..], &mut tls);
            let seen = read_request(&mut rest);
            tls.write_all(answer.as_bytes()).unwrap();
            tls.flush().unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            Some(seen)
        });
        (format!("https://127.0.0.1:{port}"), handle)
    }

    #[test]
    fn https_with_a_trusted_self_signed_certificate() {
        let view = CheckoutView {
            order_id: "o-1".into(),
            merchant: "Shop".into(),
            amount: "1.00".into(),
            amount_cents: 100,
            currency: "EUR".into(),
            delivery_name: "A".into(),
            delivery_address: "B".into(),
            status: "awaiting_payment".into(),
        };
        let body = serde_json::to_string(&view).unwrap();
        let (base, server) = serve_once_tls(response("200 OK", &body));
        let mut l = HttpLink::new(
            &base,
            LinkOptions {
                timeout: Duration::from_secs(5),
                ca_cert_pem: Some(TEST_CERT.as_bytes().to_vec()),
            },
        )
        .unwrap();
        assert_eq!(l.checkout("o-1"), Ok(view));
        let seen = server.join().unwrap().expect("the request");
        assert_eq!(seen.request_line, "GET /v1/reader/checkouts/o-1 HTTP/1.1");

        // Without the certificate, the webpki roots do not trust it.
        let (base, server) = serve_once_tls(response("200 OK", &body));
        let err = link(&base).checkout("o-1").unwrap_err();
        assert!(err.0.contains("https://127.0.0.1"), "{err}");
        assert!(server.join().unwrap().is_none());
    }
}
