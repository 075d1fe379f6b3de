//! `node/openapi.json` against the code: the document describes exactly the routes of
//! `onecard_node::api::ROUTES` (both directions), the running node serves it verbatim at
//! `GET /openapi.json`, and every documented route answers over real HTTP (not with the
//! server's `no_such_route` or `method_not_allowed`).

mod common;

use std::collections::BTreeSet;

use common::node::*;
use serde_json::Value;

const DOCUMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/node/openapi.json");

/// The operation keys of an OpenAPI path item.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    let text = std::fs::read_to_string(DOCUMENT).expect("read node/openapi.json");
    serde_json::from_str(&text).expect("node/openapi.json is JSON")
}

/// (method, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let paths = doc["paths"].as_object().expect("`paths` is an object");
    let mut ops = BTreeSet::new();
    for (path, item) in paths {
        let item = item.as_object().expect("a path item is an object");
        for method in item.keys().filter(|k| METHODS.contains(&k.as_str())) {
            ops.insert((method.clone(), path.clone()));
        }
    }
    ops
}

/// (method, path) of every route the server registers.
fn routes() -> BTreeSet<(String, String)> {
    onecard_node::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

fn listing(ops: &BTreeSet<&(String, String)>) -> String {
    ops.iter()
        .map(|(m, p)| format!("  {} {p}", m.to_uppercase()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `{name}`s of a path template.
fn template_params(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_string)
        .collect()
}

/// A parameter object, following a `#/components/parameters/...` reference.
fn resolve<'a>(doc: &'a Value, p: &'a Value) -> &'a Value {
    match p["$ref"].as_str() {
        Some(r) => {
            let name = r
                .strip_prefix("#/components/parameters/")
                .unwrap_or_else(|| panic!("unexpected parameter reference {r}"));
            let target = &doc["components"]["parameters"][name];
            assert!(target.is_object(), "dangling reference {r}");
            target
        }
        None => p,
    }
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s);
                    }
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_document_describes_exactly_the_routes_of_the_code() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.0.3");
    let documented = documented(&doc);
    let routes = routes();
    assert_eq!(
        routes.len(),
        onecard_node::api::ROUTES.len(),
        "ROUTES lists a route twice"
    );
    let undocumented: BTreeSet<_> = routes.difference(&documented).collect();
    let invented: BTreeSet<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && invented.is_empty(),
        "node/openapi.json is out of step with onecard_node::api::ROUTES\n\
         routes the document lacks:\n{}\n\
         operations in the document that no route serves:\n{}",
        listing(&undocumented),
        listing(&invented),
    );
}

#[test]
fn every_operation_declares_its_path_parameters_and_idempotency_key() {
    let doc = document();
    let mut problems = Vec::new();
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][&method];
        let params: Vec<&Value> = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().map(|p| resolve(&doc, p)).collect())
            .unwrap_or_default();
        let declared: BTreeSet<String> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| p["name"].as_str().map(str::to_string))
            .collect();
        if declared != template_params(&path) {
            problems.push(format!(
                "{} {path}: path parameters {declared:?}",
                method.to_uppercase()
            ));
        }
        let header = |name: &str| {
            params
                .iter()
                .any(|p| p["in"] == "header" && p["name"] == name)
        };
        if !header("X-Request-Id") {
            problems.push(format!("{} {path}: no X-Request-Id", method.to_uppercase()));
        }
        let mutating = method != "get";
        if header("Idempotency-Key") != mutating {
            problems.push(format!(
                "{} {path}: Idempotency-Key declared: {}",
                method.to_uppercase(),
                !mutating
            ));
        }
        if !matches!(op["responses"].as_object(), Some(r) if !r.is_empty()) {
            problems.push(format!("{} {path}: no responses", method.to_uppercase()));
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let target = r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(&doc, |v, k| &v[k]));
        if !target.is_some_and(Value::is_object) {
            problems.push(format!("dangling reference {r}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_node_serves_the_document_and_answers_every_documented_route() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));

    // The document, verbatim.
    let served = call("GET", &node.url("/openapi.json"), None, None, None);
    assert_eq!(served.status, 200);
    assert_eq!(served.body, document(), "GET /openapi.json is not the file");
    assert!(served.request_id.is_some(), "no X-Request-Id");

    // Every route exists: no credentials and a dummy id get an answer of the route's own
    // (401, 404 unknown_order, 422, ...), never the server's "no such route/method".
    let mut missing = Vec::new();
    for (method, path) in onecard_node::api::ROUTES {
        let concrete: String = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') && seg.ends_with('}') {
                    "ord_x"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let method = method.to_uppercase();
        let body = (method != "GET").then_some("{}");
        let a = call_raw(&method, &node.url(&concrete), None, None, body);
        let code = a.body["error"]["code"].as_str().unwrap_or("");
        if (a.status == 404 && code == "no_such_route")
            || a.status == 405
            || code == "method_not_allowed"
        {
            missing.push(format!("{method} {concrete}: {} {:?}", a.status, a.body));
        }
        assert!(
            a.request_id.is_some(),
            "{method} {concrete}: no X-Request-Id"
        );
    }
    assert!(
        missing.is_empty(),
        "documented routes the node does not serve:\n{}",
        missing.join("\n")
    );

    // And what is not documented is not served.
    let nope = call("GET", &node.url("/v1/nope"), None, None, None);
    assert_eq!(nope.status, 404, "{:?}", nope.body);
    assert_eq!(
        nope.body["error"]["code"], "no_such_route",
        "{:?}",
        nope.body
    );
    let wrong = call_raw("DELETE", &node.url("/v1/orders"), None, None, None);
    assert_eq!(wrong.status, 405, "{:?}", wrong.body);
    assert_eq!(wrong.body["error"]["code"], "method_not_allowed");
}
