//! HTTP as clients and gateways expect it, on every route of the node's route table
//! (`onecard_node::api::ROUTE_TABLE`), against a real `onecard serve` over real HTTP (a raw
//! HTTP/1.1 client on a socket, so that nothing adds or hides a header):
//! - a method a path does not have gets 405 with `Allow` naming exactly the path's methods
//!   (RFC 9110, 15.5.6); OPTIONS gets 204 with the same `Allow`; HEAD answers wherever GET
//!   does, with GET's status and headers and no body;
//! - a route reading a JSON body refuses a `text/plain` body, a form body (what `curl -d`
//!   sends) and a body with no `Content-Type` with 415 `unsupported_media_type`; a route reading
//!   no body takes an empty POST with no `Content-Type`;
//! - every authenticated route answers 401 with `WWW-Authenticate: Bearer realm=…` without
//!   credentials (and `error="invalid_token"` with wrong ones); open routes never 401;
//! - an invalid `X-Request-Id` is refused with 400 `invalid_request_id`, and nothing runs;
//! - `node/openapi.json` has exactly the table's routes and declares what the table implies
//!   (credentials, 401 with `WWW-Authenticate`, 415, request bodies, 400 for the request id).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::node::*;
use onecard_node::api::{Access, BodyKind, Route, ROUTE_TABLE};
use onecard_terminal::flow::PaymentEnd;
use serde_json::{json, Value};

/// An answer as it came off the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    /// Header names in lower case; a repeated header keeps every value.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The methods of `Allow`, upper case.
    fn allow(&self) -> Option<BTreeSet<String>> {
        self.header("allow").map(|v| {
            v.split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .filter(|m| !m.is_empty())
                .collect()
        })
    }
}

/// One request on its own connection (`Connection: close`): exactly the headers given, plus
/// `Host`, and `Content-Length` when there is a body.
fn raw(
    node: &NodeProc,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Raw {
    let addr = node
        .base
        .strip_prefix("http://")
        .expect("a plain HTTP node")
        .trim_end_matches('/')
        .to_string();
    let mut conn = TcpStream::connect(&addr).expect("connect to the node");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = body {
        request.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    request.push_str("\r\n");
    if let Some(b) = body {
        request.push_str(b);
    }
    conn.write_all(request.as_bytes()).expect("send");
    let mut bytes = Vec::new();
    conn.read_to_end(&mut bytes).expect("read the answer");
    parse(&bytes).unwrap_or_else(|| {
        panic!(
            "{method} {path}: not an HTTP answer: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn parse(bytes: &[u8]) -> Option<Raw> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = bytes[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Some(Raw {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The methods a path answers, by the table: its routes', HEAD with GET, OPTIONS always.
fn expected_allow(path: &str) -> BTreeSet<String> {
    let mut m: BTreeSet<String> = ROUTE_TABLE
        .iter()
        .filter(|r| r.path == path)
        .map(|r| r.method.to_ascii_uppercase())
        .collect();
    if m.contains("GET") {
        m.insert("HEAD".into());
    }
    m.insert("OPTIONS".into());
    m
}

fn paths() -> Vec<&'static str> {
    let mut seen = BTreeSet::new();
    ROUTE_TABLE
        .iter()
        .map(|r| r.path)
        .filter(|p| seen.insert(*p))
        .collect()
}

/// A path template with its parameters filled in.
fn concrete(path: &str, params: &BTreeMap<&str, String>) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => params
                    .get(name)
                    .unwrap_or_else(|| panic!("no value for {{{name}}} in {path}"))
                    .clone(),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// A node with everything a route may need: the admin token, a merchant's key, a consumer's
/// session, a paid order, an employer's key and its payroll batch `batch-x`.
struct Fixture {
    node: NodeProc,
    _dir: tempfile::TempDir,
    w: World,
    session: String,
    order: String,
    employer_key: String,
}

impl Fixture {
    fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeProc::start(&dir.path().join("data"));
        let w = setup(&node, None, None);
        let order = create_order(&node, &w, "12.50", true);
        let mut card = card_for(&w, 0);
        let (end, answer) = pay(&node, &w, &mut card, &order, PIN);
        assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
        let session = answer
            .and_then(|a| a.session)
            .expect("a consumer session")
            .token;
        let a = admin(
            &node,
            "/v1/admin/bank-accounts",
            json!({"account": "EMPLOYER-BANK", "balance": "100.00"}),
        );
        assert_eq!(a.status, 201, "{a:?}");
        let a = admin(
            &node,
            "/v1/admin/employers",
            json!({"id": "payer", "name": "Payer", "bank": "EMPLOYER-BANK"}),
        );
        assert_eq!(a.status, 201, "{a:?}");
        let employer_key = a.body["api_key"].as_str().unwrap().to_string();
        let batch = json!({"batch_id": "batch-x", "lines": [
            {"employee": "alice", "amount": "1.00", "account": "wallet"}
        ]});
        let a = call(
            "POST",
            &node.url("/v1/employer/payrolls"),
            Some(&employer_key),
            None,
            Some(&batch),
        );
        assert_eq!(a.status, 202, "{a:?}");
        Fixture {
            node,
            _dir: dir,
            w,
            session,
            order,
            employer_key,
        }
    }

    fn params(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("order", self.order.clone()),
            ("merchant", "shop".to_string()),
            ("bill", "bill_x".to_string()),
            ("biller", "shop".to_string()),
            ("month", "2026-03".to_string()),
            ("bank", "bk-x".to_string()),
            ("rule", "rule-x".to_string()),
            ("bank", "bk-x".to_string()),
            ("rule", "rule-x".to_string()),
            ("batch", "batch-x".to_string()),
            ("consumer", "alice".to_string()),
        ])
    }

    /// The credentials a route asks for: an employer's routes take an employer's key.
    fn token(&self, r: &Route) -> Option<String> {
        match r.access {
            Access::Open => None,
            Access::Admin => Some(ADMIN_TOKEN.to_string()),
            Access::Merchant if r.path.starts_with("/v1/employer/") => {
                Some(self.employer_key.clone())
            }
            Access::Merchant => Some(self.w.api_key.clone()),
            Access::Consumer => Some(self.session.clone()),
        }
    }
}

#[track_caller]
fn assert_error(a: &Raw, status: u16, code: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
    let body = a.json();
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.trim().is_empty()),
        "{what}: no message: {body}"
    );
    let id = a.header("x-request-id").expect("X-Request-Id");
    assert_eq!(body["error"]["request_id"], id, "{what}: {body}");
}

const SOME_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FROB",
];

#[test]
fn every_path_answers_its_methods_head_and_options_and_405s_the_others_with_allow() {
    let f = Fixture::start();
    let node = &f.node;
    let params = f.params();
    let mut problems = Vec::new();
    for path in paths() {
        let url = concrete(path, &params);
        let expected = expected_allow(path);
        for method in SOME_METHODS.iter().filter(|m| !expected.contains(**m)) {
            let a = raw(node, method, &url, &[], None);
            if a.status != 405 || a.allow().as_ref() != Some(&expected) {
                problems.push(format!(
                    "{method} {path}: {} Allow {:?} (expected 405 Allow {expected:?})",
                    a.status,
                    a.header("allow")
                ));
                continue;
            }
            if *method != "HEAD" {
                assert_error(&a, 405, "method_not_allowed", &format!("{method} {path}"));
            }
        }
        let o = raw(node, "OPTIONS", &url, &[], None);
        if o.status != 204 || o.allow().as_ref() != Some(&expected) || !o.body.is_empty() {
            problems.push(format!(
                "OPTIONS {path}: {} Allow {:?} body {:?} (expected 204 Allow {expected:?})",
                o.status,
                o.header("allow"),
                String::from_utf8_lossy(&o.body)
            ));
        }
        assert!(o.header("x-request-id").is_some(), "OPTIONS {path}");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // HEAD wherever GET: the same status and headers, no body.
    for r in ROUTE_TABLE.iter().filter(|r| r.method == "get") {
        let url = concrete(r.path, &params);
        let token = f.token(r).map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = token
            .iter()
            .map(|t| ("Authorization", t.as_str()))
            .collect();
        let get = raw(node, "GET", &url, &headers, None);
        let head = raw(node, "HEAD", &url, &headers, None);
        assert_eq!(get.status, 200, "GET {}: {get:?}", r.path);
        assert_eq!(head.status, get.status, "HEAD {}: {head:?}", r.path);
        assert!(
            head.body.is_empty(),
            "HEAD {}: a body {:?}",
            r.path,
            String::from_utf8_lossy(&head.body)
        );
        assert_eq!(
            head.header("content-type"),
            get.header("content-type"),
            "HEAD {}",
            r.path
        );
        let length = |a: &Raw| a.header("content-length").map(str::to_string);
        // /healthz and /metrics count requests and journal records: their size may move.
        if matches!(r.path, "/healthz" | "/metrics") {
            assert!(
                length(&head).is_some(),
                "HEAD {}: no Content-Length",
                r.path
            );
        } else {
            assert_eq!(length(&head), length(&get), "HEAD {}", r.path);
            assert_eq!(
                length(&get),
                Some(get.body.len().to_string()),
                "GET {}",
                r.path
            );
        }
        assert!(head.header("x-request-id").is_some(), "HEAD {}", r.path);
    }
    // A HEAD that fails has the failure's status and headers, still without a body.
    let h = raw(node, "HEAD", "/v1/orders/ord_nope", &[], None);
    assert_eq!(h.status, 401, "{h:?}");
    assert!(h.header("www-authenticate").is_some() && h.body.is_empty());
}

#[test]
fn json_routes_refuse_bodies_not_declared_json_with_415() {
    let f = Fixture::start();
    let node = &f.node;
    // Ids nobody has: the body is checked before any is looked up, and a route that reads no
    // body (a new API key, a cancellation) must change nothing here.
    let params = BTreeMap::from([
        ("order", "ord_nope".to_string()),
        ("merchant", "nobody".to_string()),
        ("bill", "bill_nope".to_string()),
        ("biller", "nobody".to_string()),
        ("month", "2026-03".to_string()),
        ("bank", "bk-x".to_string()),
        ("rule", "rule-x".to_string()),
        ("batch", "batch-x".to_string()),
        ("consumer", "nobody".to_string()),
    ]);
    let mut problems = Vec::new();
    for r in ROUTE_TABLE.iter().filter(|r| r.method != "get") {
        let url = concrete(r.path, &params);
        let method = r.method.to_ascii_uppercase();
        let token = f.token(r).map(|t| format!("Bearer {t}"));
        let auth: Vec<(&str, &str)> = token
            .iter()
            .map(|t| ("Authorization", t.as_str()))
            .collect();
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut h = auth.clone();
            h.extend_from_slice(extra);
            h
        };
        let cases: [(&str, Vec<(&str, &str)>); 4] = [
            ("text/plain", with(&[("Content-Type", "text/plain")])),
            (
                "a form (curl -d)",
                with(&[("Content-Type", "application/x-www-form-urlencoded")]),
            ),
            ("no Content-Type", with(&[])),
            (
                "a JSON-like type that is not application/json",
                with(&[("Content-Type", "application/merge-patch+json")]),
            ),
        ];
        for (what, headers) in cases {
            let a = raw(node, &method, &url, &headers, Some("{}"));
            if a.status != 415 || a.json()["error"]["code"] != "unsupported_media_type" {
                problems.push(format!(
                    "{method} {} with {what}: {} {}",
                    r.path,
                    a.status,
                    String::from_utf8_lossy(&a.body)
                ));
            } else {
                assert_error(
                    &a,
                    415,
                    "unsupported_media_type",
                    &format!("{method} {}", r.path),
                );
            }
        }
        // No body at all: fine on a route that reads none, 415 on one that reads JSON.
        let a = raw(node, &method, &url, &auth, None);
        let is_415 = a.status == 415;
        if is_415 != matches!(r.body, BodyKind::Json | BodyKind::JsonOrCsv) {
            problems.push(format!(
                "{method} {} with no body and no Content-Type: {} {}",
                r.path,
                a.status,
                String::from_utf8_lossy(&a.body)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // What is accepted: application/json in any case, with parameters; charset UTF-8 only.
    let orders = "/v1/orders";
    let key = format!("Bearer {}", f.w.api_key);
    let body = order_body("3.00", true).to_string();
    for (i, ct) in [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json;charset=\"UTF-8\"",
        "application/json; charset=UTF8; profile=x",
    ]
    .into_iter()
    .enumerate()
    {
        let idem = format!("ct-ok-{i}");
        let a = raw(
            node,
            "POST",
            orders,
            &[
                ("Authorization", &key),
                ("Content-Type", ct),
                ("Idempotency-Key", &idem),
            ],
            Some(&body),
        );
        assert_eq!(a.status, 201, "{ct}: {a:?}");
    }
    for ct in [
        "application/json; charset=iso-8859-1",
        "text/json",
        "application/jsonx",
        "json",
        "",
    ] {
        let a = raw(
            node,
            "POST",
            orders,
            &[("Authorization", &key), ("Content-Type", ct)],
            Some(&body),
        );
        assert_error(&a, 415, "unsupported_media_type", ct);
    }
    // Two Content-Types: which one? Refused.
    let a = raw(
        node,
        "POST",
        orders,
        &[
            ("Authorization", &key),
            ("Content-Type", "application/json"),
            ("Content-Type", "text/plain"),
        ],
        Some(&body),
    );
    assert_error(&a, 415, "unsupported_media_type", "two Content-Types");
    // An empty JSON body declared JSON is malformed JSON, as before.
    let a = raw(
        node,
        "POST",
        orders,
        &[
            ("Authorization", &key),
            ("Content-Type", "application/json"),
        ],
        Some(""),
    );
    assert_error(&a, 400, "invalid_json", "an empty JSON body");
    // The refused requests created nothing.
    let listed = call(
        "GET",
        &node.url("/v1/orders?limit=500"),
        Some(&f.w.api_key),
        None,
        None,
    );
    assert_eq!(listed.body["orders"].as_array().map(Vec::len), Some(6));

    // Routes that read no body work as clients call them: an empty POST, no Content-Type.
    let open = create_order(node, &f.w, "4.00", true);
    let a = raw(
        node,
        "POST",
        &format!("/v1/orders/{open}/cancel"),
        &[("Authorization", &key)],
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["state"], "cancelled");
    let a = raw(
        node,
        "POST",
        &format!("/v1/orders/{}/reprint", f.order),
        &[("Authorization", &key), ("Content-Length", "0")],
        None,
    );
    // A digital order has no slip: the route's own answer, not 415.
    assert_error(&a, 409, "nothing_to_reprint", "reprint");
    let a = admin(
        node,
        "/v1/admin/merchants",
        json!({"id": "other", "name": "Other"}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let admin_auth = format!("Bearer {ADMIN_TOKEN}");
    let a = raw(
        node,
        "POST",
        "/v1/admin/merchants/other/api-key",
        &[("Authorization", &admin_auth)],
        None,
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.json()["api_key"].as_str().is_some());
}

#[test]
fn authenticated_routes_challenge_with_www_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let params = BTreeMap::from([
        ("order", "ord_x".to_string()),
        ("merchant", "m".to_string()),
        ("bill", "bill_x".to_string()),
        ("biller", "b".to_string()),
        ("month", "2026-03".to_string()),
        ("bank", "bk-x".to_string()),
        ("rule", "rule-x".to_string()),
        ("batch", "batch-x".to_string()),
        ("consumer", "c".to_string()),
    ]);
    let mut problems = Vec::new();
    let mut methods: Vec<(Route, String)> = Vec::new();
    for r in ROUTE_TABLE {
        methods.push((*r, r.method.to_ascii_uppercase()));
        if r.method == "get" {
            methods.push((*r, "HEAD".into()));
        }
    }
    for (r, method) in methods {
        let url = concrete(r.path, &params);
        let json_ct = [("Content-Type", "application/json")];
        let body = (method != "GET" && method != "HEAD").then_some("{}");
        let headers: &[(&str, &str)] = if body.is_some() { &json_ct } else { &[] };
        let bare = raw(&node, &method, &url, headers, body);
        let mut wrong_headers = headers.to_vec();
        wrong_headers.push(("Authorization", "Bearer not-a-credential"));
        let wrong = raw(&node, &method, &url, &wrong_headers, body);
        match r.access.realm() {
            None => {
                for a in [&bare, &wrong] {
                    if a.status == 401 || a.header("www-authenticate").is_some() {
                        problems.push(format!("{method} {} (open): {a:?}", r.path));
                    }
                }
            }
            Some(realm) => {
                let challenge = format!("Bearer realm=\"{}\"", realm.name());
                if bare.status != 401 || bare.header("www-authenticate") != Some(&challenge) {
                    problems.push(format!(
                        "{method} {} without credentials: {} WWW-Authenticate {:?} (expected 401 {challenge})",
                        r.path,
                        bare.status,
                        bare.header("www-authenticate")
                    ));
                }
                let invalid = format!("{challenge}, error=\"invalid_token\"");
                if wrong.status != 401 || wrong.header("www-authenticate") != Some(&invalid) {
                    problems.push(format!(
                        "{method} {} with a wrong token: {} WWW-Authenticate {:?} (expected 401 {invalid})",
                        r.path,
                        wrong.status,
                        wrong.header("www-authenticate")
                    ));
                }
                if method != "HEAD" {
                    assert_error(&bare, 401, "unauthenticated", r.path);
                    assert_error(&wrong, 401, "unauthenticated", r.path);
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn an_invalid_request_id_is_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let key = format!("Bearer {}", w.api_key);
    let body = order_body("5.00", true).to_string();
    let long = "r".repeat(129);
    for (what, ids) in [
        ("a space", vec!["req 1"]),
        ("129 characters", vec![long.as_str()]),
        ("empty", vec![""]),
        ("non-ASCII", vec!["req-é"]),
        ("two headers", vec!["a", "b"]),
    ] {
        let mut headers = vec![
            ("Authorization", key.as_str()),
            ("Content-Type", "application/json"),
        ];
        headers.extend(ids.iter().map(|id| ("X-Request-Id", *id)));
        let a = raw(&node, "POST", "/v1/orders", &headers, Some(&body));
        assert_error(&a, 400, "invalid_request_id", what);
        let fresh = a.header("x-request-id").unwrap();
        assert!(
            fresh.len() == 16 && fresh.bytes().all(|b| b.is_ascii_hexdigit()),
            "{what}: {fresh}"
        );
    }
    let listed = call("GET", &node.url("/v1/orders"), Some(&w.api_key), None, None);
    assert_eq!(listed.body["orders"], json!([]), "a refused request ran");
    // A valid one is kept, at the longest too.
    let id = "r".repeat(128);
    let a = raw(&node, "GET", "/healthz", &[("X-Request-Id", &id)], None);
    assert_eq!(a.status, 200);
    assert_eq!(a.header("x-request-id"), Some(id.as_str()));
}

// ---------------------------------------------------------------------------------------------
// The document against the table.

fn document() -> Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/node/openapi.json"))
        .expect("read node/openapi.json");
    serde_json::from_str(&text).expect("node/openapi.json is JSON")
}

#[test]
fn the_document_has_the_tables_routes_and_declares_what_they_answer() {
    let doc = document();
    let operations: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| {
                    [
                        "get", "put", "post", "delete", "options", "head", "patch", "trace",
                    ]
                    .contains(&k.as_str())
                })
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    let table: BTreeSet<(String, String)> = ROUTE_TABLE
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(table.len(), ROUTE_TABLE.len(), "a route twice in the table");
    assert_eq!(
        operations, table,
        "node/openapi.json's operations are not the table's"
    );
    let legacy: BTreeSet<(String, String)> = onecard_node::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(legacy, table, "ROUTES and ROUTE_TABLE differ");

    let mut problems = Vec::new();
    for r in ROUTE_TABLE {
        let op = &doc["paths"][r.path][r.method];
        let name = format!("{} {}", r.method.to_uppercase(), r.path);
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        let security = op["security"].as_array().cloned().unwrap_or_default();
        match r.access {
            Access::Open => {
                if !security.is_empty() {
                    problems.push(format!("{name}: open, but security {security:?}"));
                }
                if responses.contains_key("401") {
                    problems.push(format!("{name}: open, but declares 401"));
                }
            }
            access => {
                let scheme = match access {
                    Access::Admin => "admin",
                    Access::Merchant => "merchantKey",
                    _ => "consumerSession",
                };
                if security != vec![json!({ scheme: [] })] {
                    problems.push(format!("{name}: security {security:?}, expected {scheme}"));
                }
                if responses
                    .get("401")
                    .and_then(|r| r["headers"].get("WWW-Authenticate"))
                    .is_none()
                {
                    problems.push(format!("{name}: no 401 with WWW-Authenticate"));
                }
            }
        }
        if r.method != "get" && !responses.contains_key("415") {
            problems.push(format!("{name}: no 415"));
        }
        if !responses.contains_key("400") {
            problems.push(format!("{name}: no 400 (invalid_request_id)"));
        }
        let body = &op["requestBody"];
        match r.body {
            BodyKind::Json => {
                if body["required"] != true || body["content"]["application/json"].is_null() {
                    problems.push(format!("{name}: reads JSON, but requestBody {body}"));
                }
                if !responses.contains_key("422") {
                    problems.push(format!("{name}: reads JSON, but no 422"));
                }
            }
            BodyKind::JsonOrCsv => {
                if body["required"] != true
                    || body["content"]["application/json"].is_null()
                    || body["content"]["text/csv"].is_null()
                {
                    problems.push(format!("{name}: reads JSON or CSV, but requestBody {body}"));
                }
                if !responses.contains_key("422") {
                    problems.push(format!("{name}: reads a file, but no 422"));
                }
            }
            BodyKind::None => {
                if body.is_object() && body["required"] != false {
                    problems.push(format!("{name}: reads no body, but requestBody {body}"));
                }
            }
        }
        // Every route behind an id answers 404 for an unknown one; every mutating route may
        // answer 409 (idempotency_in_progress) and 422 (idempotency_mismatch).
        if r.path.contains('{') && !responses.contains_key("404") {
            problems.push(format!("{name}: a path id, but no 404"));
        }
        if r.method != "get" {
            for s in ["409", "422"] {
                if !responses.contains_key(s) {
                    problems.push(format!("{name}: mutating, but no {s}"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The bounds `node/openapi.json` states for request fields are the node's: a value just inside
/// is taken, one just outside refused (the cases an API fuzzer found matching the old document
/// and refused with 422 among them).
#[test]
fn the_bounds_the_document_states_are_the_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let doc = document();
    let schema =
        |name: &str, field: &str| doc["components"]["schemas"][name]["properties"][field].clone();
    // The document says what these tests assume.
    assert!(schema("CreateOrder", "amount")["pattern"]
        .as_str()
        .is_some_and(|p| p.contains("{0,15}")));
    assert_eq!(schema("MerchantRequest", "webhook_url")["minLength"], 7);
    assert_eq!(schema("ReaderRequest", "network")["minLength"], 2);
    assert_eq!(schema("Item", "name")["maxLength"], 200);
    assert!(schema("OpenConsumerRequest", "consumer")["pattern"]
        .as_str()
        .is_some_and(|p| p.contains("\\u0000-\\u001f")));

    let order = |amount: &str, name: &str| {
        let mut body = order_body(amount, true);
        body["items"][0]["name"] = json!(name);
        call(
            "POST",
            &node.url("/v1/orders"),
            Some(&w.api_key),
            None,
            Some(&body),
        )
    };
    for (amount, status) in [
        ("0", 422),
        ("0.00", 422),
        ("0.01", 201),
        ("9999999999999999.99", 201),
        ("0009999999999999999.99", 201),
        ("10000000000000000", 422),
        ("90686373204717230.40", 422),
        ("1.234", 422),
    ] {
        let a = order(amount, "tea");
        assert_eq!(a.status, status, "amount {amount}: {:?}", a.body);
    }
    // Lengths are characters, as `maxLength` counts them.
    for (name, status) in [
        ("é".repeat(200), 201),
        ("é".repeat(201), 422),
        ("a\nb".to_string(), 201),
        ("a\tb".to_string(), 422),
        ("\u{3000}\n".to_string(), 422),
    ] {
        let a = order("1.00", &name);
        assert_eq!(a.status, status, "item name {name:?}: {:?}", a.body);
    }
    let merchant = |id: &str, url: &str| {
        admin(
            &node,
            "/v1/admin/merchants",
            json!({"id": id, "name": "M", "webhook_url": url}),
        )
    };
    assert_eq!(merchant("m1", "").status, 422);
    assert_eq!(merchant("m2", "ftp://x").status, 422);
    assert_eq!(merchant("m3", "http://").status, 201);
    assert_eq!(merchant("m\u{7}4", "http://x").status, 422);
    assert_eq!(merchant(&"m".repeat(129), "http://x").status, 422);
    assert_eq!(merchant(&"m".repeat(128), "http://x").status, 201);
    let consumer = |id: &str| {
        admin(
            &node,
            "/v1/admin/consumers",
            json!({"consumer": id, "credit_limit": "0", "bank": "nowhere", "wallet": "0"}),
        )
    };
    assert_eq!(consumer("c\u{0}1").status, 422);
    assert_eq!(consumer("c\u{85}1").status, 422);
    let reader = |id: &str, network: &str| {
        admin(
            &node,
            "/v1/admin/readers",
            json!({"id": id, "owner": "alice", "card_number": CARD, "account": "alice", "network": network}),
        )
    };
    assert_eq!(reader("r1", "").status, 422);
    assert_eq!(reader("r\u{1b}2", "127.0.0.1").status, 422);
    assert_eq!(reader("", "127.0.0.1").status, 422);
}
