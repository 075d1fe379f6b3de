//! Dynamic credit (SPEC F10) end to end, against a real `onecard serve` with a `[credit]`
//! policy in its config:
//! - `deposit_multiple`: the consumer opens with the multiple of the wallet's deposit; on-time
//!   settlements raise the limit step by step up to `max`; a dispute lowers it; a failed bank
//!   debit (an account with too little money for a settlement's bank part) lowers it below
//!   what is reserved — the reservation stays, a new order is refused for credit at the
//!   reader; every change is readable with its reason through `GET /v1/consumer/credit`
//!   (newest first, paginated) and `GET /v1/admin/consumers/{consumer}/credit`, and is in the
//!   consumer's inbox; after a SIGKILL and a restart the score and the limit are the same
//!   (nothing counted twice).
//! - `card_credit_line`: the operator records the card's credit line and the limit follows it,
//!   within the bounds; an overdue bill lowers it.

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::node::*;
use onecard_terminal::flow::PaymentEnd;
use serde_json::{json, Value};

fn start(dir: &Path, credit: &str) -> NodeProc {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[rules]\ntopup_threshold = \"100.00\"\n[node]\ntick_interval_ms = 200\n[credit]\n{credit}"
        ),
    )
    .unwrap();
    NodeProc::start_with(&dir.join("data"), &[], Some(&cfg))
}

const DEPOSIT_POLICY: &str = "policy = \"deposit_multiple\"
deposit_multiple = \"2.0\"
min = \"100.00\"
max = \"1250.00\"
raise_after = 2
raise_by = \"100.00\"
lower_on_failed_debit = \"400.00\"
lower_on_dispute = \"150.00\"
lower_on_overdue_bill = \"50.00\"
";

fn get(node: &NodeProc, token: &str, path: &str) -> Answer {
    call("GET", &node.url(path), Some(token), None, None)
}

/// Waits until the credit follower has counted the journal up to where it is now.
fn credit_caught_up(node: &NodeProc) {
    let health = || call("GET", &node.url("/healthz"), None, None, None).body;
    let end = health()["journal_seq"].as_u64().expect("journal_seq");
    let reached = eventually(30, || {
        (health()["credit_seq"].as_u64().expect("credit_seq") >= end).then_some(())
    });
    assert!(reached.is_some(), "credit did not catch up: {}", node.log());
}

/// The consumer's credit once its limit is `limit` (the follower is a moment behind).
fn credit_when(node: &NodeProc, token: &str, path: &str, limit: &str) -> Value {
    eventually(30, || {
        let a = get(node, token, path);
        assert_eq!(a.status, 200, "{a:?}");
        (a.body["limit"] == limit).then_some(a.body)
    })
    .unwrap_or_else(|| {
        panic!(
            "the limit never became {limit}: {:?}\n{}",
            get(node, token, path),
            node.log()
        )
    })
}

/// ... and once its history holds `n` changes.
fn history_when(node: &NodeProc, token: &str, path: &str, n: usize) -> Value {
    eventually(30, || {
        let a = get(node, token, path);
        (a.body["history"].as_array().map_or(0, Vec::len) >= n).then_some(a.body)
    })
    .unwrap_or_else(|| panic!("no {n} changes: {:?}", get(node, token, path)))
}

fn reasons(credit: &Value) -> Vec<String> {
    credit["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["limit"].as_str().unwrap(),
                c["reason"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_deposit_multiple_limit_rises_with_settlements_on_time_falls_with_disputes_and_failed_debits_and_survives_a_crash(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path(), DEPOSIT_POLICY);
    // alice's bank account holds 600.00: 500.00 go into her wallet at opening, 100.00 are
    // left for a settlement's bank part (the wallet is topped up only below 100.00).
    let a = admin(
        &node,
        "/v1/admin/bank-accounts",
        json!({"account": BANK, "balance": "600.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let a = admin(
        &node,
        "/v1/admin/consumers",
        json!({"consumer": "alice", "credit_limit": "2000.00", "bank": BANK, "wallet": "500.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    // 2.0 × the deposit, not the limit asked for.
    assert_eq!(a.body["credit_limit"], "1000.00", "{a:?}");
    let m = admin(
        &node,
        "/v1/admin/merchants",
        json!({"id": "shop", "name": "The Tea Shop"}),
    );
    assert_eq!(m.status, 201, "{m:?}");
    let key = issue_card_with_reader(&node, "alice", CARD, PIN, "reader-alice");
    let w = World {
        api_key: m.body["api_key"].as_str().unwrap().to_string(),
        webhook_secret: String::new(),
        card_key: key,
        reader_id: "reader-alice".into(),
    };
    let mut counter = 0;
    let mut pay_order = |node: &NodeProc, amount: &str| {
        counter += 1;
        let order = create_order(node, &w, amount, true);
        let session = pay_with_session(node, &w, counter, &order);
        (order, session)
    };

    let (order, session) = pay_order(&node, "10.00");
    let r = confirm_receipt(&node, &session, &order);
    assert_eq!(r.body["state"], "settled", "{r:?}");
    let c = credit_when(&node, &session, "/v1/consumer/credit", "1000.00");
    assert_eq!(c["policy"]["name"], "deposit_multiple");
    assert_eq!(c["policy"]["deposit_multiple"], "2.0");
    assert_eq!(
        (c["policy"]["min"].as_str(), c["policy"]["max"].as_str()),
        (Some("100.00"), Some("1250.00"))
    );
    assert_eq!(c["deposit"], "500.00");
    assert_eq!(c["base"], "1000.00");
    assert_eq!(
        c["history"],
        json!([]),
        "opened at the policy's limit: no change yet"
    );

    // Settlements on time: +100.00 every two, up to max (1250.00), never beyond.
    let mut session = session;
    for _ in 0..7 {
        let (order, s) = pay_order(&node, "10.00");
        let r = confirm_receipt(&node, &s, &order);
        assert_eq!(r.body["state"], "settled", "{r:?}");
        session = s;
    }
    let c = credit_when(&node, &session, "/v1/consumer/credit", "1250.00");
    credit_caught_up(&node);
    let c2 = get(&node, &session, "/v1/consumer/credit").body;
    assert_eq!(c2["limit"], "1250.00");
    assert_eq!(c2["score"]["on_time_settlements"], 8, "{c2}");
    let h = history_when(&node, &session, "/v1/consumer/credit", 3);
    assert_eq!(
        reasons(&h),
        [
            "1250.00 2 settlements on time: +100.00 (within the policy's bounds 100.00 to 1250.00)",
            "1200.00 2 settlements on time: +100.00",
            "1100.00 2 settlements on time: +100.00",
        ],
        "{c}"
    );

    // A dispute: 1000 + 400 - 150 = 1250 before the bounds, so still at max... the score
    // counts it, and the next dispute shows: two disputes, 1000 + 400 - 300 = 1100.
    let (d1, s) = pay_order(&node, "20.00");
    let r = call(
        "POST",
        &node.url(&format!("/v1/consumer/orders/{d1}/receipt")),
        Some(&s),
        None,
        Some(&json!({"satisfied": false})),
    );
    assert_eq!(r.body["state"], "disputed", "{r:?}");
    credit_caught_up(&node);
    let c = get(&node, &s, "/v1/consumer/credit").body;
    assert_eq!(
        (c["limit"].as_str(), &c["score"]["disputes"]),
        (Some("1250.00"), &json!(1))
    );
    let (d2, s) = pay_order(&node, "20.00");
    let r = call(
        "POST",
        &node.url(&format!("/v1/consumer/orders/{d2}/receipt")),
        Some(&s),
        None,
        Some(&json!({"satisfied": false})),
    );
    assert_eq!(r.body["state"], "disputed", "{r:?}");
    credit_when(&node, &s, "/v1/consumer/credit", "1100.00");
    // The limit is the engine's at once; its history is the credit follower's index of the
    // journal, a moment later.
    let c = history_when(&node, &s, "/v1/consumer/credit", 4);
    assert_eq!(c["score"]["disputes"], 2, "{c}");
    let newest = &c["history"][0];
    assert_eq!(
        newest["reason"],
        format!("dispute on order {d2}: -150.00"),
        "{c}"
    );

    // A failed bank debit: the wallet holds 420.00 and the bank 100.00, so an order of 700.00
    // waits for funds (its bank part of 280.00 is refused): 1100 - 400 = 700.00, below what
    // is reserved (700.00 + the two disputed 20.00s).
    let (big, s) = pay_order(&node, "700.00");
    let r = confirm_receipt(&node, &s, &big);
    assert_eq!(r.body["state"], "awaiting_funds", "{r:?}");
    credit_when(&node, &s, "/v1/consumer/credit", "700.00");
    let c = history_when(&node, &s, "/v1/consumer/credit", 5);
    assert_eq!(c["score"]["failed_bank_debits"], 1, "{c}");
    assert_eq!(
        c["history"][0]["reason"], "failed bank debit: -400.00",
        "{c}"
    );
    assert_eq!(
        c["reserved"], "740.00",
        "the lower limit cancels nothing: {c}"
    );
    assert_eq!(c["available"], "0.00", "{c}");
    let acct = get(&node, &s, "/v1/consumer/account").body;
    assert_eq!(
        (
            acct["credit_limit"].as_str(),
            acct["available_credit"].as_str()
        ),
        (Some("700.00"), Some("0.00")),
        "{acct}"
    );
    let order = get(&node, &s, &format!("/v1/consumer/orders/{big}")).body;
    assert_eq!(order["state"], "awaiting_funds", "{order}");
    // A new order is refused for credit at the reader.
    let small = create_order(&node, &w, "1.00", true);
    counter += 1;
    let mut card = card_for(&w, counter + 100);
    let (end, _) = pay(&node, &w, &mut card, &small, PIN);
    match end {
        PaymentEnd::Refused(p) => assert!(p.text.contains("credit"), "{p:?}"),
        other => panic!("not refused for credit: {other:?}"),
    }

    // Every change: through the API with its reason, newest first, a page at a time.
    let all = get(&node, &s, "/v1/consumer/credit?limit=100").body;
    assert_eq!(
        reasons(&all),
        [
            "700.00 failed bank debit: -400.00".to_string(),
            format!("1100.00 dispute on order {d2}: -150.00"),
            "1250.00 2 settlements on time: +100.00 (within the policy's bounds 100.00 to 1250.00)"
                .to_string(),
            "1200.00 2 settlements on time: +100.00".to_string(),
            "1100.00 2 settlements on time: +100.00".to_string(),
        ]
    );
    let page = get(&node, &s, "/v1/consumer/credit?limit=2").body;
    assert_eq!(page["history"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_str().expect("next_after").to_string();
    let rest = get(
        &node,
        &s,
        &format!("/v1/consumer/credit?limit=100&after={after}"),
    )
    .body;
    assert_eq!(rest["history"].as_array().unwrap().len(), 3);
    assert!(rest.get("next_after").is_none(), "{rest}");
    for bad in ["?limit=0", "?limit=101", "?limit=x", "?colour=red"] {
        let a = get(&node, &s, &format!("/v1/consumer/credit{bad}"));
        assert_eq!(a.status, 422, "{bad}: {a:?}");
        assert_eq!(a.body["error"]["code"], "invalid_field");
    }
    // The operator sees the same; another consumer's credit needs the admin token.
    let op = get(
        &node,
        ADMIN_TOKEN,
        "/v1/admin/consumers/alice/credit?limit=100",
    )
    .body;
    assert_eq!(reasons(&op), reasons(&all));
    let nobody = get(&node, ADMIN_TOKEN, "/v1/admin/consumers/nobody/credit");
    assert_eq!(nobody.status, 404, "{nobody:?}");
    assert_eq!(
        get(&node, &s, "/v1/admin/consumers/alice/credit").status,
        401
    );
    // The consumer is told of each change, in the inbox.
    let told = eventually(20, || {
        let n = get(&node, &s, "/v1/consumer/notifications").body["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == "credit.limit_changed")
            .count();
        (n == 5).then_some(n)
    });
    assert_eq!(
        told,
        Some(5),
        "{:?}",
        get(&node, &s, "/v1/consumer/notifications")
    );

    // SIGKILL and restart: the same score, the same limit, nothing counted twice.
    credit_caught_up(&node);
    let before = get(
        &node,
        ADMIN_TOKEN,
        "/v1/admin/consumers/alice/credit?limit=100",
    )
    .body;
    node.kill();
    let node = start(dir.path(), DEPOSIT_POLICY);
    credit_caught_up(&node);
    std::thread::sleep(std::time::Duration::from_millis(600));
    credit_caught_up(&node);
    let after = get(
        &node,
        ADMIN_TOKEN,
        "/v1/admin/consumers/alice/credit?limit=100",
    )
    .body;
    assert_eq!(after["limit"], before["limit"], "{after}");
    assert_eq!(after["score"], before["score"], "{after}");
    assert_eq!(after["history"], before["history"], "{after}");
    assert_eq!(after["reserved"], "740.00");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_card_credit_line_set_by_the_operator_is_the_limit_within_the_bounds_and_an_overdue_bill_lowers_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        dir.path(),
        "policy = \"card_credit_line\"\nmin = \"50.00\"\nmax = \"5000.00\"\nlower_on_overdue_bill = \"75.00\"\n",
    );
    let a = admin(
        &node,
        "/v1/admin/bank-accounts",
        json!({"account": BANK, "balance": "1000.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let a = admin(
        &node,
        "/v1/admin/consumers",
        json!({"consumer": "carol", "credit_limit": "800.00", "bank": BANK, "wallet": "0.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    // Until the operator records the line, the limit given at opening stands for it.
    assert_eq!(a.body["credit_limit"], "800.00");
    let path = "/v1/admin/consumers/carol/credit";
    let c = credit_when(&node, ADMIN_TOKEN, path, "800.00");
    assert_eq!(c["policy"]["name"], "card_credit_line");
    assert!(c["policy"].get("deposit_multiple").is_none(), "{c}");

    let put = |who: &str, body: Value, key: Option<&str>| {
        call(
            "PUT",
            &node.url(&format!("/v1/admin/consumers/{who}/credit-line")),
            Some(ADMIN_TOKEN),
            key,
            Some(&body),
        )
    };
    let r = put("carol", json!({"amount": "3000.00"}), Some("line-1"));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["limit"], "3000.00", "{r:?}");
    assert_eq!(r.body["applies"], true);
    // A repeat of the request is the same answer, and changes nothing.
    let again = put("carol", json!({"amount": "3000.00"}), Some("line-1"));
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.body, r.body);
    // Above max: held at max; back down again.
    let r = put("carol", json!({"amount": "9000.00"}), None);
    assert_eq!(r.body["limit"], "5000.00", "{r:?}");
    let r = put("carol", json!({"amount": "3000.00"}), None);
    assert_eq!(r.body["limit"], "3000.00", "{r:?}");
    for bad in [
        json!({"amount": "1.001"}),
        json!({"amount": "-5"}),
        json!({"amount": 5}),
        json!({}),
    ] {
        let r = put("carol", bad.clone(), None);
        assert_eq!(r.status, 422, "{bad}: {r:?}");
    }
    let r = put("nobody", json!({"amount": "10.00"}), None);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(r.body["error"]["code"], "unknown_consumer");

    // An overdue bill (posted past its due date, waiting for carol's approval): -75.00.
    let biller = admin(
        &node,
        "/v1/admin/billers",
        json!({"id": "water", "name": "Water utility", "kind": "water"}),
    );
    assert_eq!(biller.status, 201, "{biller:?}");
    let bill = call(
        "POST",
        &node.url("/v1/biller/bills"),
        biller.body["api_key"].as_str(),
        None,
        Some(
            &json!({"bill_id": "W-1", "consumer": "carol", "amount": "30.00", "due_date": now() - 60, "period": "2026-11"}),
        ),
    );
    assert!(bill.status == 201 || bill.status == 200, "{bill:?}");
    let c = credit_when(&node, ADMIN_TOKEN, path, "2925.00");
    assert_eq!(c["score"]["overdue_bills"], 1, "{c}");
    assert_eq!(c["credit_line"], "3000.00");
    assert_eq!(
        reasons(&history_when(&node, ADMIN_TOKEN, path, 4)),
        [
            "2925.00 overdue bill W-1: -75.00",
            "3000.00 card credit line set to 3000.00",
            "5000.00 card credit line set to 9000.00 (within the policy's bounds 50.00 to 5000.00)",
            "3000.00 card credit line set to 3000.00",
        ]
    );
}
