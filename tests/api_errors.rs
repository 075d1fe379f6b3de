//! Bad requests against a running `onecard serve`: each gets a 4xx with a clear JSON error
//! (`{"error":{"code","message"}}`) and changes nothing; `Idempotency-Key` on the mutating
//! routes (replays, mismatches, keys per merchant, a retried refund, concurrent duplicates);
//! the validation of orders and the cancellation rules.

mod common;

use std::process::Command;
use std::sync::{Arc, Barrier};

use common::node::*;
use onecard_terminal::flow::PaymentEnd;
use serde_json::{json, Value};

/// Asserts a JSON error answer: the status, the stable code and a non-empty message.
#[track_caller]
fn assert_error(a: &Answer, status: u16, code: &str) {
    assert_eq!(a.status, status, "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], code, "{:?}", a.body);
    let message = a.body["error"]["message"].as_str().unwrap_or("");
    assert!(!message.trim().is_empty(), "no message: {:?}", a.body);
    assert!(!a.replayed, "an error replayed: {a:?}");
}

/// Registers one more merchant; returns its API key.
fn register_merchant(node: &NodeProc, id: &str) -> String {
    let a = admin(
        node,
        "/v1/admin/merchants",
        json!({"id": id, "name": format!("Merchant {id}")}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["api_key"].as_str().unwrap().to_string()
}

fn get(node: &NodeProc, path: &str, token: &str) -> Answer {
    call("GET", &node.url(path), Some(token), None, None)
}

fn post(node: &NodeProc, path: &str, token: &str, idem: Option<&str>, body: &Value) -> Answer {
    call("POST", &node.url(path), Some(token), idem, Some(body))
}

/// The merchant's orders, as GET /v1/orders lists them.
fn orders(node: &NodeProc, key: &str) -> Vec<Value> {
    let a = get(node, "/v1/orders?limit=500", key);
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body["orders"].as_array().unwrap().clone()
}

fn order_state(node: &NodeProc, key: &str, order: &str) -> String {
    let a = get(node, &format!("/v1/orders/{order}"), key);
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body["state"].as_str().unwrap().to_string()
}

fn balance(node: &NodeProc, key: &str) -> String {
    let a = get(node, "/v1/merchant", key);
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body["balance"].as_str().unwrap().to_string()
}

/// Pays `order` at alice's reader; returns the consumer session.
fn pay_order(node: &NodeProc, w: &World, counter: u32, order: &str) -> String {
    let mut card = card_for(w, counter);
    let (end, answer) = pay(node, w, &mut card, order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    answer
        .expect("the node's answer")
        .session
        .expect("a consumer session")
        .token
}

/// The consumer confirms receipt: the order settles.
fn settle(node: &NodeProc, session: &str, order: &str) {
    let a = post(
        node,
        &format!("/v1/consumer/orders/{order}/receipt"),
        session,
        None,
        &json!({"satisfied": true}),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["state"], "settled", "{:?}", a.body);
}

/// SIGTERM (exit 0), then `onecard verify --data DIR` passes.
fn stop_and_verify(mut node: NodeProc) {
    let status = node.terminate();
    assert!(status.success(), "exit {status:?}: {}", node.log());
    let out = Command::new(env!("CARGO_BIN_EXE_onecard"))
        .arg("verify")
        .arg("--data")
        .arg(&node.data)
        .output()
        .expect("run onecard verify");
    assert!(
        out.status.success(),
        "verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything a bad request could have changed, as the merchants and the consumer see it.
fn snapshot(node: &NodeProc, keys: &[&str], session: &str) -> Vec<Value> {
    let mut all = Vec::new();
    for key in keys {
        all.push(Value::Array(orders(node, key)));
        all.push(get(node, "/v1/merchant", key).body);
    }
    all.push(get(node, "/v1/consumer/account", session).body);
    all
}

#[test]
fn bad_requests_get_clear_json_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let shop = w.api_key.clone();
    let other = register_merchant(&node, "other");

    // Some state to keep: an open checkout, a paid order, a settled one, another merchant's.
    let open = create_order(&node, &w, "12.00", false);
    let paid = create_order(&node, &w, "7.50", false);
    let session = pay_order(&node, &w, 0, &paid);
    let settled = create_order(&node, &w, "20.00", false);
    let s2 = pay_order(&node, &w, 1, &settled);
    settle(&node, &s2, &settled);
    let theirs = post(&node, "/v1/orders", &other, None, &order_body("3.00", true));
    assert_eq!(theirs.status, 201, "{:?}", theirs.body);
    let theirs = theirs.body["id"].as_str().unwrap().to_string();
    assert_eq!(order_state(&node, &shop, &open), "awaiting_payment");
    assert_eq!(order_state(&node, &shop, &paid), "pending");
    assert_eq!(order_state(&node, &shop, &settled), "settled");
    let before = snapshot(&node, &[&shop, &other], &session);

    let orders_url = node.url("/v1/orders");
    let raw = |method: &str, path: &str, token: Option<&str>, body: Option<&str>| {
        call_raw(method, &node.url(path), token, None, body)
    };

    // Malformed JSON: 400 invalid_json, on every route that reads a JSON body.
    for (i, body) in [
        "{\"amount\":",
        "not json",
        "",
        "{\"amount\":\"1.00\"} trailing",
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("bad-json-{i}");
        let a = call_raw("POST", &orders_url, Some(&shop), Some(&key), Some(body));
        assert_error(&a, 400, "invalid_json");
    }
    let a = raw(
        "POST",
        &format!("/v1/orders/{settled}/refunds"),
        Some(&shop),
        Some("{amount: 1}"),
    );
    assert_error(&a, 400, "invalid_json");
    let a = raw(
        "POST",
        &format!("/v1/consumer/orders/{paid}/receipt"),
        Some(&session),
        Some("{\"satisfied\": tru"),
    );
    assert_error(&a, 400, "invalid_json");
    let a = raw(
        "POST",
        "/v1/admin/merchants",
        Some(ADMIN_TOKEN),
        Some("{\"id\": \"x\""),
    );
    assert_error(&a, 400, "invalid_json");
    let a = raw("POST", "/v1/reader/swipe", None, Some("[1, 2"));
    assert_error(&a, 400, "invalid_json");

    // Missing fields and wrong types: 422 invalid_field.
    let mut wrong: Vec<Value> = vec![
        json!({}),
        json!({"amount": "1.00"}),
        json!([]),
        json!(null),
        json!("an order"),
    ];
    for (field, value) in [
        ("amount", json!(5)),
        ("amount", json!(null)),
        ("items", json!("tea")),
        ("items", json!([{"name": "tea"}])),
        ("items", json!([{"name": "tea", "quantity": -1}])),
        ("delivery", json!("1 Main Street")),
        ("digital", json!("yes")),
        ("reference", json!(42)),
        ("unexpected", json!(true)),
    ] {
        let mut b = order_body("1.00", false);
        b[field] = value;
        wrong.push(b);
    }
    let mut b = order_body("1.00", false);
    b["delivery"].as_object_mut().unwrap().remove("phone");
    wrong.push(b);
    for b in &wrong {
        let a = post(&node, "/v1/orders", &shop, None, b);
        assert_error(&a, 422, "invalid_field");
    }
    for b in [
        json!({}),
        json!({"amount": 5}),
        json!({"amount": "1.00", "x": 1}),
    ] {
        let a = post(
            &node,
            &format!("/v1/orders/{settled}/refunds"),
            &shop,
            None,
            &b,
        );
        assert_error(&a, 422, "invalid_field");
    }
    let a = post(
        &node,
        &format!("/v1/consumer/orders/{paid}/receipt"),
        &session,
        None,
        &json!({"satisfied": "yes"}),
    );
    assert_error(&a, 422, "invalid_field");
    let a = admin(&node, "/v1/admin/merchants", json!({"name": "No id"}));
    assert_error(&a, 422, "invalid_field");
    for q in ["limit=abc", "limit=0", "bogus=1"] {
        let a = get(&node, &format!("/v1/orders?{q}"), &shop);
        assert_error(&a, 422, "invalid_field");
    }

    // Unknown ids: 404 unknown_order.
    let nope = "ord_does_not_exist";
    let a = get(&node, &format!("/v1/orders/{nope}"), &shop);
    assert_error(&a, 404, "unknown_order");
    for (path, body) in [
        (format!("/v1/orders/{nope}/cancel"), json!({})),
        (
            format!("/v1/orders/{nope}/refunds"),
            json!({"amount": "1.00"}),
        ),
        (format!("/v1/orders/{nope}/reprint"), json!({})),
    ] {
        let a = post(&node, &path, &shop, None, &body);
        assert_error(&a, 404, "unknown_order");
    }
    let a = call(
        "GET",
        &node.url(&format!("/v1/reader/checkouts/{nope}")),
        None,
        None,
        None,
    );
    assert_error(&a, 404, "unknown_order");
    let a = get(&node, &format!("/v1/consumer/orders/{nope}"), &session);
    assert_error(&a, 404, "unknown_order");
    let a = post(
        &node,
        &format!("/v1/consumer/orders/{nope}/receipt"),
        &session,
        None,
        &json!({"satisfied": true}),
    );
    assert_error(&a, 404, "unknown_order");
    // The consumer's view of an order that is not hers (the other merchant's, unpaid).
    let a = get(&node, &format!("/v1/consumer/orders/{theirs}"), &session);
    assert_error(&a, 404, "unknown_order");

    // A huge body: 413 body_too_large (the default limit is 64 KiB), whatever the route.
    let mut huge = order_body("1.00", false);
    huge["reference"] = json!("x".repeat(70 * 1024));
    let huge = huge.to_string();
    let a = call_raw("POST", &orders_url, Some(&shop), Some("huge"), Some(&huge));
    assert_error(&a, 413, "body_too_large");
    let a = raw(
        "POST",
        &format!("/v1/orders/{open}/cancel"),
        Some(&shop),
        Some(&huge),
    );
    assert_error(&a, 413, "body_too_large");
    let a = raw(
        "POST",
        "/v1/admin/merchants",
        Some(ADMIN_TOKEN),
        Some(&huge),
    );
    assert_error(&a, 413, "body_too_large");
    let megabyte = format!("{{\"amount\":\"{}\"}}", "9".repeat(1 << 20));
    let a = call_raw("POST", &orders_url, Some(&shop), None, Some(&megabyte));
    assert_error(&a, 413, "body_too_large");
    // Just under the limit is read (and then refused for its content, not its size).
    let mut big = order_body("1.00", false);
    big["reference"] = json!("x".repeat(60 * 1024));
    let a = post(&node, "/v1/orders", &shop, None, &big);
    assert_error(&a, 422, "invalid_field");

    // A wrong or missing API key: 401, on reads and writes.
    for token in [
        Some("sk_wrong"),
        None,
        Some(ADMIN_TOKEN),
        Some(session.as_str()),
    ] {
        let a = call("GET", &orders_url, token, None, None);
        assert_error(&a, 401, "unauthenticated");
        let a = call(
            "POST",
            &orders_url,
            token,
            Some("k-401"),
            Some(&order_body("1.00", false)),
        );
        assert_error(&a, 401, "unauthenticated");
        let a = call(
            "POST",
            &node.url(&format!("/v1/orders/{open}/cancel")),
            token,
            None,
            Some(&json!({})),
        );
        assert_error(&a, 401, "unauthenticated");
        let a = call("GET", &node.url("/v1/merchant"), token, None, None);
        assert_error(&a, 401, "unauthenticated");
    }
    let a = call_raw("GET", &orders_url, None, None, None);
    assert_error(&a, 401, "unauthenticated");
    // The scheme is case-insensitive; another scheme is no key.
    let with_auth = |auth: String| match agent().get(&orders_url).set("Authorization", &auth).call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(s, _)) => s,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(with_auth(format!("bearer {shop}")), 200);
    assert_eq!(with_auth(format!("BEARER {shop}")), 200);
    assert_eq!(with_auth(format!("Basic {shop}")), 401);
    assert_eq!(with_auth(format!("Bearer{shop}")), 401);
    // A consumer route with a merchant's key is no session either.
    let a = get(&node, "/v1/consumer/account", &shop);
    assert_error(&a, 401, "unauthenticated");

    // Another merchant's order: 404, exactly as if it did not exist.
    for (key, order) in [(&other, &open), (&other, &settled), (&shop, &theirs)] {
        let a = get(&node, &format!("/v1/orders/{order}"), key);
        assert_error(&a, 404, "unknown_order");
        for (path, body) in [
            (format!("/v1/orders/{order}/cancel"), json!({})),
            (
                format!("/v1/orders/{order}/refunds"),
                json!({"amount": "1.00"}),
            ),
            (format!("/v1/orders/{order}/reprint"), json!({})),
        ] {
            let a = post(&node, &path, key, None, &body);
            assert_error(&a, 404, "unknown_order");
        }
    }

    // A wrong administrator token: 401.
    for token in [Some("wrong-admin-token"), None, Some(shop.as_str())] {
        let a = call(
            "POST",
            &node.url("/v1/admin/merchants"),
            token,
            None,
            Some(&json!({"id": "intruder", "name": "Intruder"})),
        );
        assert_error(&a, 401, "unauthenticated");
        let a = call(
            "POST",
            &node.url("/v1/admin/bank-accounts"),
            token,
            None,
            Some(&json!({"account": "DE00000000000000000001", "balance": "1.00"})),
        );
        assert_error(&a, 401, "unauthenticated");
    }

    // An unknown route: 404 no_such_route; a wrong method: 405 method_not_allowed.
    for (method, path) in [
        ("GET", "/v1/nope"),
        ("POST", "/v2/orders"),
        ("GET", "/v1/orders/x/y/z"),
        ("GET", "/"),
    ] {
        let a = raw(method, path, Some(&shop), None);
        assert_error(&a, 404, "no_such_route");
    }
    for (method, path) in [
        ("DELETE", "/v1/orders".to_string()),
        ("PUT", format!("/v1/orders/{open}")),
        ("GET", format!("/v1/orders/{open}/cancel")),
        ("POST", "/v1/merchant".to_string()),
        ("GET", "/v1/admin/merchants".to_string()),
        ("POST", "/healthz".to_string()),
    ] {
        let a = raw(method, &path, Some(&shop), Some("{}"));
        assert_error(&a, 405, "method_not_allowed");
    }

    // Nothing changed: the same orders in the same states, the same balances and account.
    let after = snapshot(&node, &[&shop, &other], &session);
    assert_eq!(before, after);
    assert_eq!(orders(&node, &shop).len(), 3);
    assert_eq!(orders(&node, &other).len(), 1);
    // The keys the bad requests carried are still free.
    let a = post(
        &node,
        "/v1/orders",
        &shop,
        Some("huge"),
        &order_body("1.00", true),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert!(!a.replayed);
    let a = post(
        &node,
        "/v1/orders",
        &shop,
        Some("k-401"),
        &order_body("1.00", true),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert!(!a.replayed);
    assert_eq!(orders(&node, &shop).len(), 5);

    stop_and_verify(node);
}

#[test]
fn the_same_key_replays_the_answer_and_a_different_request_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let shop = w.api_key.clone();
    let other = register_merchant(&node, "other");
    let body = order_body("15.00", false);

    let first = post(&node, "/v1/orders", &shop, Some("order-1"), &body);
    assert_eq!(first.status, 201, "{:?}", first.body);
    assert!(!first.replayed);
    let again = post(&node, "/v1/orders", &shop, Some("order-1"), &body);
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert!(again.replayed, "no Idempotent-Replayed header");
    assert_eq!(again.body, first.body);
    let id = first.body["id"].as_str().unwrap().to_string();
    let listed = orders(&node, &shop);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    // The same key with another body, or on another route: 422 idempotency_mismatch.
    for other_body in [order_body("15.01", false), order_body("15.00", true)] {
        let a = post(&node, "/v1/orders", &shop, Some("order-1"), &other_body);
        assert_error(&a, 422, "idempotency_mismatch");
    }
    let a = post(
        &node,
        &format!("/v1/orders/{id}/cancel"),
        &shop,
        Some("order-1"),
        &json!({}),
    );
    assert_error(&a, 422, "idempotency_mismatch");
    assert_eq!(orders(&node, &shop).len(), 1);
    assert_eq!(order_state(&node, &shop, &id), "awaiting_payment");

    // Keys are per merchant: the other merchant's "order-1" is its own.
    let theirs = post(&node, "/v1/orders", &other, Some("order-1"), &body);
    assert_eq!(theirs.status, 201, "{:?}", theirs.body);
    assert!(!theirs.replayed);
    assert_ne!(theirs.body["id"], first.body["id"]);
    assert_eq!(theirs.body["merchant"], "other");
    let theirs_again = post(&node, "/v1/orders", &other, Some("order-1"), &body);
    assert!(theirs_again.replayed);
    assert_eq!(theirs_again.body, theirs.body);
    // And the first merchant's key still answers with the first merchant's order.
    let mine = post(&node, "/v1/orders", &shop, Some("order-1"), &body);
    assert!(mine.replayed);
    assert_eq!(mine.body["id"], id.as_str());
    assert_eq!(orders(&node, &shop).len(), 1);
    assert_eq!(orders(&node, &other).len(), 1);

    // The replay is the answer as it was given, whatever happened to the order since (it is
    // rebuilt from the checkout, not stored whole).
    let cancelled = post(
        &node,
        &format!("/v1/orders/{id}/cancel"),
        &shop,
        Some("cancel-order-1"),
        &json!({}),
    );
    assert!(cancelled.status / 100 == 2, "{:?}", cancelled.body);
    assert_eq!(order_state(&node, &shop, &id), "cancelled");
    let after_cancel = post(&node, "/v1/orders", &shop, Some("order-1"), &body);
    assert!(after_cancel.replayed);
    assert_eq!(after_cancel.body, first.body);

    // A body that does not validate ran nothing: its answer is not stored, so the caller can
    // fix the body and retry with the same key.
    let zero = order_body("0", false);
    let a = post(&node, "/v1/orders", &shop, Some("order-zero"), &zero);
    assert_error(&a, 422, "invalid_field");
    let b = post(&node, "/v1/orders", &shop, Some("order-zero"), &zero);
    assert_eq!((b.status, b.replayed), (422, false));
    assert_eq!(orders(&node, &shop).len(), 1);
    let fixed = post(
        &node,
        "/v1/orders",
        &shop,
        Some("order-zero"),
        &order_body("3.00", false),
    );
    assert_eq!(
        (fixed.status, fixed.replayed),
        (201, false),
        "{:?}",
        fixed.body
    );
    let again = post(
        &node,
        "/v1/orders",
        &shop,
        Some("order-zero"),
        &order_body("3.00", false),
    );
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(orders(&node, &shop).len(), 2);

    // A cancellation retried with its key: the same answer.
    let c1 = post(
        &node,
        &format!("/v1/orders/{id}/cancel"),
        &shop,
        Some("cancel-1"),
        &json!({}),
    );
    assert_eq!(c1.status, 200, "{:?}", c1.body);
    assert_eq!(c1.body["state"], "cancelled");
    let c2 = post(
        &node,
        &format!("/v1/orders/{id}/cancel"),
        &shop,
        Some("cancel-1"),
        &json!({}),
    );
    assert_eq!((c2.status, c2.replayed), (200, true));
    assert_eq!(c2.body, c1.body);
    assert_eq!(order_state(&node, &shop, &id), "cancelled");

    stop_and_verify(node);
}

#[test]
fn a_refund_retried_with_the_same_key_refunds_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let shop = w.api_key.clone();
    let order = create_order(&node, &w, "20.00", false);
    let session = pay_order(&node, &w, 0, &order);
    settle(&node, &session, &order);
    assert_eq!(balance(&node, &shop), "20.00");

    let path = format!("/v1/orders/{order}/refunds");
    let r1 = post(
        &node,
        &path,
        &shop,
        Some("refund-1"),
        &json!({"amount": "5.00"}),
    );
    assert_eq!(r1.status, 200, "{:?}", r1.body);
    assert!(!r1.replayed);
    assert_eq!(r1.body["amount"], "5.00");
    assert_eq!(r1.body["order"]["refunded"], "5.00", "{:?}", r1.body);
    assert_eq!(balance(&node, &shop), "15.00");
    let r2 = post(
        &node,
        &path,
        &shop,
        Some("refund-1"),
        &json!({"amount": "5.00"}),
    );
    assert_eq!((r2.status, r2.replayed), (200, true), "{:?}", r2.body);
    assert_eq!(r2.body, r1.body);
    assert_eq!(balance(&node, &shop), "15.00");

    // The same key with another amount: refused, nothing refunded.
    let r3 = post(
        &node,
        &path,
        &shop,
        Some("refund-1"),
        &json!({"amount": "6.00"}),
    );
    assert_error(&r3, 422, "idempotency_mismatch");
    // No key and no id: refused, so that a blind retry can never pay twice.
    let r4 = post(&node, &path, &shop, None, &json!({"amount": "1.00"}));
    assert_error(&r4, 400, "refund_id_required");
    // Invalid amounts and too much: refused.
    for amount in ["0", "-1", "abc", "1.234"] {
        let a = post(
            &node,
            &path,
            &shop,
            Some(&format!("refund-bad-{amount}")),
            &json!({"amount": amount}),
        );
        assert_eq!(a.status, 422, "{amount}: {:?}", a.body);
    }
    let a = post(
        &node,
        &path,
        &shop,
        Some("refund-too-much"),
        &json!({"amount": "15.01"}),
    );
    assert!(a.status == 409 || a.status == 422, "{:?}", a.body);
    assert_eq!(balance(&node, &shop), "15.00");
    let o = get(&node, &format!("/v1/orders/{order}"), &shop);
    assert_eq!(o.body["refunded"], "5.00");
    assert_eq!(o.body["state"], "settled");

    // A second refund with a new key is a new refund.
    let r5 = post(
        &node,
        &path,
        &shop,
        Some("refund-2"),
        &json!({"amount": "5.00"}),
    );
    assert_eq!(r5.status, 200, "{:?}", r5.body);
    assert_ne!(r5.body["refund_id"], r1.body["refund_id"]);
    assert_eq!(balance(&node, &shop), "10.00");

    stop_and_verify(node);
}

#[test]
fn concurrent_duplicates_create_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let shop = w.api_key.clone();
    const THREADS: usize = 10;
    const ROUNDS: usize = 3;
    for round in 0..ROUNDS {
        let key = format!("dup-{round}");
        let body = order_body(&format!("{}.00", round + 1), false);
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (barrier, url, shop, key, body) = (
                    barrier.clone(),
                    node.url("/v1/orders"),
                    shop.clone(),
                    key.clone(),
                    body.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    call("POST", &url, Some(&shop), Some(&key), Some(&body))
                })
            })
            .collect();
        let answers: Vec<Answer> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut created = Vec::new();
        for a in &answers {
            match a.status {
                201 => created.push(a.body["id"].as_str().unwrap().to_string()),
                409 => assert_error(a, 409, "idempotency_in_progress"),
                _ => panic!("unexpected answer {a:?}"),
            }
        }
        assert!(!created.is_empty(), "{answers:?}");
        assert!(created.iter().all(|id| id == &created[0]), "{created:?}");
        let originals = answers
            .iter()
            .filter(|a| a.status == 201 && !a.replayed)
            .count();
        assert_eq!(originals, 1, "{answers:?}");
        // A retry after the storm gets the one order.
        let a = post(&node, "/v1/orders", &shop, Some(&key), &body);
        assert_eq!((a.status, a.replayed), (201, true), "{:?}", a.body);
        assert_eq!(a.body["id"], created[0].as_str());
        let listed = orders(&node, &shop);
        assert_eq!(listed.len(), round + 1, "{listed:?}");
    }
    stop_and_verify(node);
}

#[test]
fn orders_are_validated_and_cancellation_follows_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let shop = w.api_key.clone();

    let mut bad = Vec::new();
    for amount in ["0", "-1", "1.234", "abc", "", " 1.00", "1e3", "0.00"] {
        bad.push((format!("amount {amount:?}"), order_body(amount, false)));
    }
    for (field, value) in [
        ("name", json!("   ")),
        ("name", json!("")),
        ("address", json!("")),
        ("phone", json!("call me maybe")),
        ("phone", json!("+49 30 12345x")),
        ("phone", json!("")),
    ] {
        let mut b = order_body("1.00", false);
        b["delivery"][field] = value;
        bad.push((format!("delivery.{field}"), b));
    }
    for release in [
        json!({"on": "bogus"}),
        json!({}),
        json!("receipt"),
        json!({"on": "code"}),
        json!({"on": "time", "after_secs": "soon"}),
    ] {
        let mut b = order_body("1.00", false);
        b["release"] = release.clone();
        bad.push((format!("release {release}"), b));
    }
    let mut b = order_body("1.00", false);
    b["items"] = json!([{"name": "tea", "quantity": 0}]);
    bad.push(("quantity 0".into(), b));
    let mut b = order_body("1.00", false);
    b["items"] = json!([{"name": " ", "quantity": 1}]);
    bad.push(("blank item name".into(), b));
    for (what, b) in &bad {
        let a = post(&node, "/v1/orders", &shop, None, b);
        assert_eq!(a.status, 422, "{what}: {:?}", a.body);
        assert_eq!(
            a.body["error"]["code"], "invalid_field",
            "{what}: {:?}",
            a.body
        );
        assert!(a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    assert!(
        orders(&node, &shop).is_empty(),
        "an invalid order was created"
    );

    // Cancel an open checkout twice: both 200, cancelled; it stays cancelled.
    let open = create_order(&node, &w, "4.00", false);
    let cancel = format!("/v1/orders/{open}/cancel");
    for _ in 0..2 {
        let a = post(&node, &cancel, &shop, None, &json!({}));
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(a.body["state"], "cancelled", "{:?}", a.body);
        assert!(!a.replayed);
    }
    assert_eq!(order_state(&node, &shop, &open), "cancelled");
    // A cancelled checkout cannot be opened for payment.
    let co = call(
        "GET",
        &node.url(&format!("/v1/reader/checkouts/{open}")),
        None,
        None,
        None,
    );
    assert_eq!(co.status, 200, "{:?}", co.body);
    assert_eq!(co.body["status"], "cancelled");

    // A paid and settled order cannot be cancelled: 409, and it stays settled.
    let order = create_order(&node, &w, "8.00", false);
    let session = pay_order(&node, &w, 0, &order);
    settle(&node, &session, &order);
    let a = post(
        &node,
        &format!("/v1/orders/{order}/cancel"),
        &shop,
        Some("cancel-settled"),
        &json!({}),
    );
    assert_eq!(a.status, 409, "{:?}", a.body);
    assert!(a.body["error"]["code"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert_eq!(order_state(&node, &shop, &order), "settled");
    assert_eq!(balance(&node, &shop), "8.00");
    let states: Vec<Value> = orders(&node, &shop)
        .iter()
        .map(|o| o["state"].clone())
        .collect();
    assert_eq!(states.len(), 2);
    assert!(states.contains(&json!("cancelled")) && states.contains(&json!("settled")));

    stop_and_verify(node);
}

#[test]
fn an_idempotency_key_must_be_1_to_255_visible_characters() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let shop = w.api_key.clone();
    let body = order_body("2.00", false);

    let long = "k".repeat(256);
    for key in [long.as_str(), "a key with spaces"] {
        let a = post(&node, "/v1/orders", &shop, Some(key), &body);
        assert_error(&a, 400, "invalid_idempotency_key");
    }
    let a = call_raw(
        "POST",
        &node.url("/v1/admin/merchants"),
        Some(ADMIN_TOKEN),
        Some(&long),
        Some(&json!({"id": "m2", "name": "M2"}).to_string()),
    );
    assert_error(&a, 400, "invalid_idempotency_key");
    assert!(orders(&node, &shop).is_empty());

    // 255 is fine, and replays.
    let ok = "k".repeat(255);
    let a = post(&node, "/v1/orders", &shop, Some(&ok), &body);
    assert_eq!((a.status, a.replayed), (201, false), "{:?}", a.body);
    let b = post(&node, "/v1/orders", &shop, Some(&ok), &body);
    assert_eq!((b.status, b.replayed), (201, true), "{:?}", b.body);
    assert_eq!(a.body, b.body);
    assert_eq!(orders(&node, &shop).len(), 1);

    stop_and_verify(node);
}

#[test]
fn a_body_declared_larger_than_the_limit_is_refused_before_it_is_sent() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let addr = node.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    // Promises 10 MB, sends 2 bytes and waits: the answer must not wait for the rest.
    write!(
        conn,
        "POST /v1/orders HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{}}",
        w.api_key
    )
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = conn
        .read(&mut answer)
        .expect("an answer before the body is complete");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("body_too_large"), "{text}");
}

#[test]
fn a_body_that_arrives_in_two_parts_is_read_whole() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let addr = node.base.trim_start_matches("http://").to_string();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.set_nodelay(true).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let body = order_body("12.34", true).to_string();
    let (first, rest) = body.as_bytes().split_at(body.len() / 2);
    // The headers and half the body, then the other half a moment later: the node reads the
    // part that came, waits (under its body timeout) and reads on.
    write!(
        conn,
        "POST /v1/orders HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        w.api_key,
        body.len()
    )
    .unwrap();
    conn.write_all(first).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    conn.write_all(rest).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .expect("the answer once the body is complete");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let json: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["amount"], "12.34", "{answer}");
    let id = json["id"].as_str().unwrap();
    let listed = orders(&node, &w.api_key);
    assert!(listed.iter().any(|o| o["id"] == id), "{listed:?}");
    stop_and_verify(node);
}

#[test]
fn an_error_names_the_request_id_the_log_has() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let a = call(
        "GET",
        &node.url("/v1/orders/ord_nope"),
        Some("wrong"),
        None,
        None,
    );
    assert_eq!(a.status, 401);
    let id = a.request_id.clone().expect("X-Request-Id");
    assert_eq!(a.body["error"]["request_id"], id.as_str(), "{:?}", a.body);
    assert_eq!(a.body["error"]["code"], "unauthenticated");
    // A caller's own request id is kept (and checked: no spaces or control characters).
    let resp = agent()
        .get(&node.url("/v1/nope"))
        .set("X-Request-Id", "shop-req-42")
        .call()
        .unwrap_err();
    let ureq::Error::Status(404, r) = resp else {
        panic!("{resp:?}")
    };
    assert_eq!(r.header("x-request-id"), Some("shop-req-42"));
    let body: serde_json::Value = r.into_json().unwrap();
    assert_eq!(body["error"]["request_id"], "shop-req-42");
    eventually(5, || {
        node.log().contains("request_id=shop-req-42").then_some(())
    })
    .expect("the same id in the node's log");
}
