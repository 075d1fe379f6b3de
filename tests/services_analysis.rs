//! The spending analysis (SPEC F6) end to end, against a real `onecard serve`: merchants with
//! categories, a consumer's settled orders and a refund counted by category and merchant,
//! spending limits firing one alert each per month, the statement as text and as HTML (every
//! value escaped), malformed months refused, another consumer seeing none of it, and the same
//! aggregates after a SIGKILL and a restart (nothing counted twice).
//!
//! The node's clock is the system's (the harness has no clock to set), so everything here
//! happens in the current month; months apart (the comparison with the month before, a
//! refund in a later month) are exercised by the aggregation's unit tests
//! (`node/src/analysis.rs`, `node/src/api/analysis.rs`).

mod common;

use common::node::*;
use onecard_engine::cards::CardKey;
use onecard_sim::card::applet::CardApplet;
use onecard_terminal::flow::PaymentEnd;
use serde_json::{json, Value};

/// The current month (UTC), `YYYY-MM`, and the one before.
fn this_month() -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let (y, m) = (now.year(), now.month() as u8);
    let (py, pm) = if m == 1 { (y - 1, 12) } else { (y, m - 1) };
    (format!("{y:04}-{m:02}"), format!("{py:04}-{pm:02}"))
}

fn get(node: &NodeProc, token: &str, path: &str) -> Answer {
    call("GET", &node.url(path), Some(token), None, None)
}

/// The statement's status, `Content-Type` and body, asked for with `accept`.
fn statement(
    node: &NodeProc,
    token: &str,
    month: &str,
    accept: Option<&str>,
) -> (u16, String, String) {
    let mut req = agent()
        .get(&node.url(&format!("/v1/consumer/analysis/{month}/statement")))
        .set("Authorization", &format!("Bearer {token}"));
    if let Some(a) = accept {
        req = req.set("Accept", a);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("statement: {e}"),
    };
    let status = resp.status();
    let kind = resp.header("content-type").unwrap_or("").to_string();
    (status, kind, resp.into_string().unwrap())
}

/// Creates an order with `merchant`, pays it at alice's reader (card counter `counter`) and
/// confirms receipt (it settles); returns the order and the session.
fn settle(node: &NodeProc, merchant: &World, counter: u32, amount: &str) -> (String, String) {
    let order = create_order(node, merchant, amount, false);
    let session = pay_with_session(node, merchant, counter, &order);
    let r = confirm_receipt(node, &session, &order);
    assert_eq!(r.body["state"], "settled", "{r:?}");
    (order, session)
}

/// The analysis once the index shows `spent` for the month (it follows the journal a moment
/// behind).
fn analysis_when(node: &NodeProc, session: &str, month: &str, spent: &str) -> Value {
    let path = format!("/v1/consumer/analysis/{month}");
    eventually(30, || {
        let a = get(node, session, &path);
        assert_eq!(a.status, 200, "{a:?}");
        (a.body["spending"]["total"]["amount"] == spent).then_some(a.body)
    })
    .unwrap_or_else(|| {
        panic!(
            "the index never showed {spent}: {:?}\n{}",
            get(node, session, &path),
            node.log()
        )
    })
}

/// Waits until the history index has counted the journal up to where it is now
/// (`/healthz`: `analysis_seq` reaches the `journal_seq` read first).
fn index_caught_up(node: &NodeProc) {
    let health = || call("GET", &node.url("/healthz"), None, None, None).body;
    let end = health()["journal_seq"].as_u64().expect("journal_seq");
    let reached = eventually(30, || {
        (health()["analysis_seq"].as_u64().expect("analysis_seq") >= end).then_some(())
    });
    assert!(
        reached.is_some(),
        "the index did not catch up: {}",
        node.log()
    );
}

fn line<'a>(lines: &'a Value, key: &str, name: &str) -> &'a Value {
    lines
        .as_array()
        .and_then(|l| l.iter().find(|x| x[key] == name))
        .unwrap_or_else(|| panic!("no {key} {name} in {lines}"))
}

#[test]
fn monthly_spending_by_category_and_merchant_with_alerts_statements_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProc::start(&data);
    let w = setup(&node, None, None);
    let (month, previous) = this_month();

    // Categories: `shop` by PATCH, `gadgets` at registration; a bad one is refused.
    let patch = |body: Value| {
        call(
            "PATCH",
            &node.url("/v1/admin/merchants/shop"),
            Some(ADMIN_TOKEN),
            None,
            Some(&body),
        )
    };
    for bad in ["Groceries", "bill:water", "a b", "x".repeat(33).as_str()] {
        let r = patch(json!({ "category": bad }));
        assert_eq!(r.status, 422, "{bad}: {r:?}");
    }
    let r = patch(json!({"category": "groceries"}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["category"], "groceries");
    let r = admin(
        &node,
        "/v1/admin/merchants",
        json!({"id": "gadgets", "name": "Tom & Jerry's <Gadgets>", "category": "Electronics"}),
    );
    assert_eq!(r.status, 422, "{r:?}");
    let r = admin(
        &node,
        "/v1/admin/merchants",
        json!({"id": "gadgets", "name": "Tom & Jerry's <Gadgets>", "category": "electronics"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.body["category"], "electronics");
    let gadgets = World {
        api_key: r.body["api_key"].as_str().unwrap().to_string(),
        ..w.clone()
    };

    // Groceries 30.00; then alice sets her limits.
    let (_, session) = settle(&node, &w, 1, "30.00");
    let limits = |body: Value| {
        call(
            "PUT",
            &node.url("/v1/consumer/alerts"),
            Some(&session),
            None,
            Some(&body),
        )
    };
    for bad in [
        json!({"monthly_limit": "1.234"}),
        json!({"monthly_limit": "0.00"}),
        json!({"categories": {"Electronics": "1.00"}}),
        json!({"limit": "1.00"}),
    ] {
        let r = limits(bad.clone());
        assert_eq!(r.status, 422, "{bad}: {r:?}");
    }
    let set = limits(json!({"monthly_limit": "150", "categories": {"electronics": "100.00"}}));
    assert_eq!(set.status, 200, "{set:?}");
    let expected_limits = json!({
        "consumer": "alice",
        "monthly_limit": "150.00",
        "categories": {"electronics": "100.00"}
    });
    assert_eq!(set.body, expected_limits);
    assert_eq!(
        get(&node, &session, "/v1/consumer/alerts").body,
        expected_limits
    );

    // Electronics 80.00 then 30.00 (crosses its 100.00), groceries 20.00 (the total crosses
    // 150.00), a refund of 30.00 (both fall below), electronics 25.00 (both cross again: no
    // second alert this month).
    settle(&node, &gadgets, 2, "80.00");
    let (refunded, _) = settle(&node, &gadgets, 3, "30.00");
    settle(&node, &w, 4, "20.00");
    let r = call(
        "POST",
        &node.url(&format!("/v1/orders/{refunded}/refunds")),
        Some(&gadgets.api_key),
        Some("refund-1"),
        Some(&json!({"amount": "30.00"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let a = analysis_when(&node, &session, &month, "130.00");
    assert_eq!(
        a["counts"],
        json!({"orders_settled": 4, "refunds": 1, "credits": 0})
    );
    settle(&node, &gadgets, 5, "25.00");
    let a = analysis_when(&node, &session, &month, "155.00");

    assert_eq!(a["consumer"], "alice");
    assert_eq!(a["month"], month);
    assert_eq!(a["previous_month"], previous);
    assert_eq!(
        a["spending"]["total"],
        json!({"amount": "155.00", "previous": "0.00", "change": "155.00"})
    );
    assert_eq!(
        a["income"]["total"],
        json!({"amount": "0.00", "previous": "0.00", "change": "0.00"}),
        "top-ups from the consumer's own bank are not income"
    );
    let cats = &a["spending"]["by_category"];
    assert_eq!(line(cats, "category", "electronics")["amount"], "105.00");
    assert_eq!(line(cats, "category", "groceries")["amount"], "50.00");
    assert_eq!(cats[0]["category"], "electronics", "largest first: {cats}");
    let merchants = &a["spending"]["by_merchant"];
    let g = line(merchants, "merchant", "gadgets");
    assert_eq!(g["amount"], "105.00");
    assert_eq!(g["name"], "Tom & Jerry's <Gadgets>");
    assert_eq!(g["category"], "electronics");
    assert_eq!(line(merchants, "merchant", "shop")["amount"], "50.00");
    assert_eq!(
        a["counts"],
        json!({"orders_settled": 5, "refunds": 1, "credits": 0})
    );

    // Exactly one alert per limit this month.
    let fired = get(&node, &session, "/v1/consumer/alerts/fired");
    assert_eq!(fired.status, 200, "{fired:?}");
    let alerts = fired.body["alerts"].as_array().unwrap().clone();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    let by_scope = |s: &str| alerts.iter().find(|x| x["scope"] == s).unwrap().clone();
    let cat = by_scope("category");
    assert_eq!(
        (
            &cat["category"],
            &cat["limit"],
            &cat["spent"],
            &cat["month"]
        ),
        (
            &json!("electronics"),
            &json!("100.00"),
            &json!("110.00"),
            &json!(month)
        )
    );
    let total = by_scope("total");
    assert_eq!(
        (&total["limit"], &total["spent"]),
        (&json!("150.00"), &json!("160.00"))
    );
    assert_eq!(a["alerts"].as_array().map(Vec::len), Some(2), "{a}");
    let one_month = get(
        &node,
        &session,
        &format!("/v1/consumer/alerts/fired?month={month}"),
    );
    assert_eq!(one_month.body["alerts"].as_array().map(Vec::len), Some(2));
    let other_month = get(
        &node,
        &session,
        &format!("/v1/consumer/alerts/fired?month={previous}"),
    );
    assert_eq!(other_month.body["alerts"], json!([]));

    // The statement: text by default, HTML when asked for, every value escaped.
    let (status, kind, text) = statement(&node, &session, &month, None);
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/plain"), "{kind}");
    assert!(
        text.contains("Tom & Jerry's <Gadgets> (gadgets, electronics)"),
        "{text}"
    );
    assert!(
        text.contains("155.00") && text.contains("+155.00"),
        "{text}"
    );
    assert!(text.contains("spending in electronics reached 110.00 (your limit: 100.00)"));
    let (status, kind, html) = statement(
        &node,
        &session,
        &month,
        Some("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
    );
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/html"), "{kind}");
    assert!(
        html.contains("Tom &amp; Jerry&#39;s &lt;Gadgets&gt; (gadgets, electronics)"),
        "{html}"
    );
    assert!(!html.contains("<Gadgets>"), "{html}");

    // Malformed months: 400 with a clear error, as JSON; a month with nothing: zeros.
    for bad in ["2026-13", "2026-3", "march", "2026-03-01", "1969-12"] {
        for path in [
            format!("/v1/consumer/analysis/{bad}"),
            format!("/v1/consumer/analysis/{bad}/statement"),
            format!("/v1/consumer/alerts/fired?month={bad}"),
        ] {
            let r = get(&node, &session, &path);
            assert_eq!(r.status, 400, "{path}: {r:?}");
            assert_eq!(r.body["error"]["code"], "invalid_month", "{path}: {r:?}");
            assert!(
                r.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("YYYY-MM"),
                "{r:?}"
            );
        }
    }
    let empty = get(&node, &session, "/v1/consumer/analysis/2001-01");
    assert_eq!(empty.status, 200, "{empty:?}");
    assert_eq!(empty.body["spending"]["total"]["amount"], "0.00");
    assert_eq!(empty.body["spending"]["by_category"], json!([]));

    // Another consumer sees none of it, and his limits are his own.
    let bank_bob = "DE02120300000000202051";
    let r = admin(
        &node,
        "/v1/admin/bank-accounts",
        json!({"account": bank_bob, "balance": "100.00"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = admin(
        &node,
        "/v1/admin/consumers",
        json!({"consumer": "bob", "credit_limit": "100.00", "bank": bank_bob, "wallet": "0.00"}),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let bob_card = "4000009876543210";
    let key = issue_card_with_reader(&node, "bob", bob_card, PIN, "reader-bob");
    let bob = World {
        card_key: key,
        reader_id: "reader-bob".into(),
        ..w.clone()
    };
    let mut card = MemoryCard(CardApplet::new(
        bob_card.into(),
        "bob".into(),
        CardKey::from_bytes(key),
        0,
    ));
    let (end, answer) = sign_in(&node, &bob, &mut card, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let bob_session = answer.and_then(|a| a.session).expect("a session").token;
    let b = get(
        &node,
        &bob_session,
        &format!("/v1/consumer/analysis/{month}"),
    );
    assert_eq!(b.status, 200, "{b:?}");
    assert_eq!(b.body["consumer"], "bob");
    assert_eq!(b.body["spending"]["total"]["amount"], "0.00");
    assert_eq!(b.body["spending"]["by_merchant"], json!([]));
    assert_eq!(b.body["alerts"], json!([]));
    assert_eq!(
        get(&node, &bob_session, "/v1/consumer/alerts/fired").body["alerts"],
        json!([])
    );
    let (_, _, bob_text) = statement(&node, &bob_session, &month, None);
    assert!(!bob_text.contains("Gadgets"), "{bob_text}");
    let r = call(
        "PUT",
        &node.url("/v1/consumer/alerts"),
        Some(&bob_session),
        None,
        Some(&json!({"monthly_limit": "1.00"})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        get(&node, &session, "/v1/consumer/alerts").body,
        expected_limits
    );

    // One more settlement, then SIGKILL at once (the index may or may not have counted it):
    // after the restart the index reads the journal again from its cursor and counts every
    // event once.
    settle(&node, &w, 6, "5.00");
    node.kill();
    let node = NodeProc::start(&data);
    let after = analysis_when(&node, &session, &month, "160.00");
    index_caught_up(&node);
    let settled = get(&node, &session, &format!("/v1/consumer/analysis/{month}")).body;
    assert_eq!(settled, after, "the index moved after catching up");
    assert_eq!(
        line(&after["spending"]["by_category"], "category", "groceries")["amount"],
        "55.00"
    );
    assert_eq!(
        line(&after["spending"]["by_category"], "category", "electronics")["amount"],
        "105.00"
    );
    assert_eq!(
        after["counts"],
        json!({"orders_settled": 6, "refunds": 1, "credits": 0})
    );
    let fired_after = get(&node, &session, "/v1/consumer/alerts/fired");
    assert_eq!(fired_after.body["alerts"].as_array().unwrap(), &alerts);

    // And a restart with everything counted changes nothing either.
    let mut node = node;
    assert!(node.terminate().success(), "{}", node.log());
    let node = NodeProc::start(&data);
    index_caught_up(&node);
    let again = get(&node, &session, &format!("/v1/consumer/analysis/{month}")).body;
    assert_eq!(again, after);
}
