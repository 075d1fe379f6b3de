//! Bills (F7) and notifications end to end, over the node's API: billers registered by the
//! operator post bills to consumers' virtual accounts; the consumer's autopay rule per biller
//! decides (always, up to an amount, on the due date, ask); a bill is paid as an order is
//! (reserved against credit, settled from the wallet and the bank) into the biller's balance;
//! failed payments and overdue bills are told to the consumer (inbox, own webhook) and to the
//! biller (signed webhook), durably: across a SIGKILL too.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::node::*;
use serde_json::{json, Value};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A node whose wallets are topped up only below 100.00, so that a payment from the wallet
/// shows as the wallet going down.
fn start(dir: &std::path::Path) -> NodeProc {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        "[rules]\ntopup_threshold = \"100.00\"\n[node]\ntick_interval_ms = 200\nwebhook_retry_max_ms = 1000\n",
    )
    .unwrap();
    NodeProc::start_with(&dir.join("data"), &[], Some(&cfg))
}

/// A registered biller: its API key and webhook secret.
struct Biller {
    id: String,
    key: String,
    secret: String,
}

fn register_biller(node: &NodeProc, id: &str, kind: &str, webhook: Option<&str>) -> Biller {
    let mut body = json!({"id": id, "name": format!("{id} utility"), "kind": kind});
    if let Some(w) = webhook {
        body["webhook_url"] = json!(w);
    }
    let a = admin(node, "/v1/admin/billers", body);
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["kind"], kind);
    Biller {
        id: id.to_string(),
        key: a.body["api_key"].as_str().unwrap().to_string(),
        secret: a.body["webhook_secret"].as_str().unwrap().to_string(),
    }
}

fn post_bill(node: &NodeProc, b: &Biller, body: Value) -> Answer {
    call(
        "POST",
        &node.url("/v1/biller/bills"),
        Some(&b.key),
        None,
        Some(&body),
    )
}

fn bill(id: &str, amount: &str, due: u64) -> Value {
    json!({"bill_id": id, "consumer": "alice", "amount": amount, "due_date": due, "period": "2026-11"})
}

/// A consumer session for alice (card and PIN at her reader, nothing paid).
fn session(node: &NodeProc, w: &World, counter: u32) -> String {
    let mut card = card_for(w, counter);
    let (_, answer) = sign_in(node, w, &mut card, PIN);
    answer
        .and_then(|a| a.session)
        .expect("a consumer session")
        .token
}

fn get(node: &NodeProc, path: &str, token: &str) -> Value {
    let a = call("GET", &node.url(path), Some(token), None, None);
    assert_eq!(a.status, 200, "GET {path}: {a:?}");
    a.body
}

fn set_rule(node: &NodeProc, s: &str, biller: &str, rule: Value) {
    let a = call(
        "PUT",
        &node.url(&format!("/v1/consumer/autopay/{biller}")),
        Some(s),
        None,
        Some(&rule),
    );
    assert_eq!(a.status, 200, "{a:?}");
}

fn bills_of(node: &NodeProc, s: &str) -> Vec<Value> {
    get(node, "/v1/consumer/bills", s)["bills"]
        .as_array()
        .unwrap()
        .clone()
}

/// The bill of `reference` as the consumer sees it, once `ok` holds (at most 20 s).
fn bill_when(node: &NodeProc, s: &str, reference: &str, ok: impl Fn(&Value) -> bool) -> Value {
    eventually(20, || {
        bills_of(node, s)
            .into_iter()
            .find(|b| b["reference"] == reference && ok(b))
    })
    .unwrap_or_else(|| panic!("bill {reference}: {:?}\n{}", bills_of(node, s), node.log()))
}

fn inbox(node: &NodeProc, s: &str) -> Vec<Value> {
    get(node, "/v1/consumer/notifications", s)["notifications"]
        .as_array()
        .unwrap()
        .clone()
}

fn inbox_has(node: &NodeProc, s: &str, kind: &str, reference: &str) -> Option<Value> {
    inbox(node, s)
        .into_iter()
        .find(|n| n["type"] == kind && n["data"]["reference"] == reference)
}

fn balance(node: &NodeProc, key: &str) -> String {
    get(node, "/v1/merchant", key)["balance"]
        .as_str()
        .unwrap()
        .to_string()
}

fn account(node: &NodeProc, s: &str) -> Value {
    get(node, "/v1/consumer/account", s)
}

/// The webhooks of one type the endpoint took, as JSON bodies.
fn hooks_of(endpoint: &Endpoint, kind: &str) -> Vec<(Hook, Value)> {
    endpoint
        .hooks()
        .into_iter()
        .filter(|h| h.accepted)
        .filter_map(|h| {
            let v: Value = serde_json::from_str(&h.body).ok()?;
            (v["type"] == kind).then_some((h, v))
        })
        .collect()
}

#[test]
fn a_biller_is_registered_and_a_bill_id_is_idempotent_per_biller() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let w = setup(&node, None, None);
    let water = register_biller(&node, "water-co", "water", None);
    let s = session(&node, &w, 0);

    // The kind is one of four; an ordinary merchant cannot post bills.
    let bad = admin(
        &node,
        "/v1/admin/billers",
        json!({"id": "x", "name": "X", "kind": "cable"}),
    );
    assert_eq!(bad.status, 422, "{bad:?}");
    let not_biller = post_bill(
        &node,
        &Biller {
            id: "shop".into(),
            key: w.api_key.clone(),
            secret: String::new(),
        },
        bill("B-0", "1.00", now() + 3600),
    );
    assert_eq!(not_biller.status, 403, "{not_biller:?}");
    assert_eq!(not_biller.body["error"]["code"], "not_a_biller");
    // The biller is a merchant: its account, balance 0.
    assert_eq!(balance(&node, &water.key), "0.00");

    // A bill for an unknown consumer: 404, nothing stored (the same bill id is free).
    let mut nobody = bill("B-1", "40.00", now() + 3600);
    nobody["consumer"] = json!("nobody");
    let a = post_bill(&node, &water, nobody);
    assert_eq!(a.status, 404, "{a:?}");
    assert_eq!(a.body["error"]["code"], "unknown_consumer");

    // Posted (no rule: the consumer is asked).
    let due = now() + 3600;
    let first = post_bill(&node, &water, bill("B-1", "40.00", due));
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["status"], "awaiting_approval");
    assert_eq!(first.body["rule"], "none");
    assert_eq!(first.body["amount"], "40.00");
    // Posted twice, the same: the same bill, nothing new.
    let again = post_bill(&node, &water, bill("B-1", "40.00", due));
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["reference"], first.body["reference"]);
    // The same bill id with other content: a conflict, the bill unchanged.
    let other = post_bill(&node, &water, bill("B-1", "41.00", due));
    assert_eq!(other.status, 409, "{other:?}");
    assert_eq!(other.body["error"]["code"], "bill_conflict");
    // Another biller may use the same bill id: another bill.
    let gas = register_biller(&node, "gas-co", "gas", None);
    let theirs = post_bill(&node, &gas, bill("B-1", "41.00", due));
    assert_eq!(theirs.status, 201, "{theirs:?}");
    assert_ne!(theirs.body["reference"], first.body["reference"]);
    // With an Idempotency-Key, a repeat gets the first answer itself.
    let keyed = |body: &Value| {
        call(
            "POST",
            &node.url("/v1/biller/bills"),
            Some(&water.key),
            Some("post-B-2"),
            Some(body),
        )
    };
    let b2 = keyed(&bill("B-2", "5.00", due));
    assert_eq!(b2.status, 201);
    let b2_again = keyed(&bill("B-2", "5.00", due));
    assert!(b2_again.replayed && b2_again.status == 201, "{b2_again:?}");
    // Bad bodies: clear 422s, never a panic.
    for body in [
        json!({"bill_id": "B-3", "consumer": "alice", "amount": "-1", "due_date": due, "period": "p"}),
        json!({"bill_id": "B-3", "consumer": "alice", "amount": "1.001", "due_date": due, "period": "p"}),
        json!({"bill_id": "", "consumer": "alice", "amount": "1.00", "due_date": due, "period": "p"}),
        json!({"bill_id": "B-3", "consumer": "alice", "amount": "1.00", "due_date": 0, "period": "p"}),
        json!({"bill_id": "B-3", "consumer": "alice", "amount": "1.00", "due_date": "2026-11-30", "period": "p"}),
        json!({"bill_id": "B-3", "consumer": "alice", "amount": "1.00", "due_date": due, "period": ""}),
        json!({"bill_id": "B-3", "consumer": "alice", "amount": "1.00", "due_date": due, "period": "p", "x": 1}),
    ] {
        let a = post_bill(&node, &water, body.clone());
        assert_eq!(a.status, 422, "{body}: {a:?}");
        assert_eq!(a.body["error"]["code"], "invalid_field", "{body}: {a:?}");
    }
    // Alice sees her three bills, newest first, and a notification for each.
    let list = bills_of(&node, &s);
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(list[0]["bill_id"], "B-2");
    let received: Vec<Value> = inbox(&node, &s)
        .into_iter()
        .filter(|n| n["type"] == "bill.received")
        .collect();
    assert_eq!(received.len(), 3, "{received:?}");
    assert_eq!(received[0]["data"]["action"], "approve_or_decline");
    // The inbox a page at a time, newest first.
    let first_page = get(&node, "/v1/consumer/notifications?limit=2", &s);
    let page: Vec<Value> = first_page["notifications"].as_array().unwrap().clone();
    assert_eq!(page.len(), 2, "{first_page}");
    assert_eq!(page[0]["data"]["bill_id"], "B-2");
    let after = first_page["next_after"].as_str().expect("a next page");
    let rest = get(
        &node,
        &format!("/v1/consumer/notifications?limit=2&after={after}"),
        &s,
    );
    assert_eq!(rest["notifications"].as_array().unwrap().len(), 1, "{rest}");
    assert!(rest.get("next_after").is_none(), "{rest}");
    for bad in ["limit=0", "limit=501", "nope=1"] {
        let a = call(
            "GET",
            &node.url(&format!("/v1/consumer/notifications?{bad}")),
            Some(&s),
            None,
            None,
        );
        assert_eq!(a.status, 422, "{bad}: {a:?}");
    }
    // Rules only for billers that exist.
    let a = call(
        "PUT",
        &node.url("/v1/consumer/autopay/shop"),
        Some(&s),
        None,
        Some(&json!({"rule": "always"})),
    );
    assert_eq!(a.status, 404, "{a:?}");
    assert_eq!(a.body["error"]["code"], "unknown_biller");
    for bad in [
        json!({"rule": "sometimes"}),
        json!({"rule": "up_to"}),
        json!({"rule": "up_to", "amount": "0.00"}),
    ] {
        let a = call(
            "PUT",
            &node.url("/v1/consumer/autopay/water-co"),
            Some(&s),
            None,
            Some(&bad),
        );
        assert_eq!(a.status, 422, "{bad}: {a:?}");
    }
}

#[test]
fn each_autopay_rule_pays_as_the_consumer_said() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let w = setup(&node, None, None);
    let hooks = Endpoint::start();
    let water = register_biller(&node, "water-co", "water", None);
    let power = register_biller(&node, "power-co", "electricity", None);
    let phone = register_biller(&node, "phone-co", "phone", Some(&hooks.url()));
    let gas = register_biller(&node, "gas-co", "gas", None);
    let s = session(&node, &w, 0);
    set_rule(&node, &s, &water.id, json!({"rule": "always"}));
    set_rule(
        &node,
        &s,
        &power.id,
        json!({"rule": "up_to", "amount": "50.00"}),
    );
    set_rule(&node, &s, &gas.id, json!({"rule": "on_due_date"}));
    set_rule(&node, &s, &phone.id, json!({"rule": "ask"}));
    let rules = get(&node, "/v1/consumer/autopay", &s);
    assert_eq!(rules["rules"].as_array().unwrap().len(), 4, "{rules}");
    assert!(rules["rules"]
        .as_array()
        .unwrap()
        .contains(&json!({"biller": "power-co", "rule": "up_to", "amount": "50.00"})));
    let due = now() + 3600;

    // always: paid at once, from the wallet, into the biller's balance.
    let a = post_bill(&node, &water, bill("W-1", "40.00", due));
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["rule"], "always");
    let reference = a.body["reference"].as_str().unwrap().to_string();
    bill_when(&node, &s, &reference, |b| b["status"] == "paid");
    assert_eq!(balance(&node, &water.key), "40.00");
    assert_eq!(account(&node, &s)["wallet"], "460.00");
    assert_eq!(account(&node, &s)["reserved"], "0.00");
    assert!(eventually(10, || inbox_has(&node, &s, "bill.paid", &reference)).is_some());
    let statement = get(&node, "/v1/consumer/statement", &s);
    assert!(
        statement["lines"].as_array().unwrap().iter().any(|l| {
            l["event"] == "order.settled"
                && l["order_id"] == reference.as_str()
                && l["amount"] == "-40.00"
        }),
        "{statement}"
    );

    // up_to 50.00: 30.00 is paid, 80.00 waits for the consumer.
    let below = post_bill(&node, &power, bill("P-1", "30.00", due));
    assert_eq!(below.status, 201, "{below:?}");
    let above = post_bill(&node, &power, bill("P-2", "80.00", due));
    assert_eq!(above.body["status"], "awaiting_approval", "{above:?}");
    bill_when(&node, &s, below.body["reference"].as_str().unwrap(), |b| {
        b["status"] == "paid"
    });
    assert_eq!(balance(&node, &power.key), "30.00");
    // Approved: paid as by `always`.
    let above_ref = above.body["reference"].as_str().unwrap();
    let approve = call(
        "POST",
        &node.url(&format!("/v1/consumer/bills/{above_ref}/approve")),
        Some(&s),
        Some("approve-P-2"),
        None,
    );
    assert_eq!(approve.status, 200, "{approve:?}");
    bill_when(&node, &s, above_ref, |b| b["status"] == "paid");
    assert_eq!(balance(&node, &power.key), "110.00");
    // Deciding a bill twice the other way: a conflict.
    let decline = call(
        "POST",
        &node.url(&format!("/v1/consumer/bills/{above_ref}/decline")),
        Some(&s),
        None,
        None,
    );
    assert_eq!(decline.status, 409, "{decline:?}");

    // ask: declined, nothing paid, the biller told by its webhook.
    let asked = post_bill(&node, &phone, bill("T-1", "25.00", due));
    assert_eq!(asked.body["status"], "awaiting_approval", "{asked:?}");
    let asked_ref = asked.body["reference"].as_str().unwrap();
    let declined = call(
        "POST",
        &node.url(&format!("/v1/consumer/bills/{asked_ref}/decline")),
        Some(&s),
        None,
        None,
    );
    assert_eq!(declined.status, 200, "{declined:?}");
    assert_eq!(declined.body["status"], "declined");
    let told = eventually(20, || {
        hooks_of(&hooks, "bill.declined")
            .into_iter()
            .find(|(_, v)| v["data"]["reference"] == asked_ref)
    })
    .expect("the biller is told of the decline");
    assert!(signature_ok(&phone.secret, &told.0), "{told:?}");
    assert_eq!(balance(&node, &phone.key), "0.00");
    // Another consumer's bill, or none, is not found.
    let a = call(
        "POST",
        &node.url("/v1/consumer/bills/bill_nope/approve"),
        Some(&s),
        None,
        None,
    );
    assert_eq!(a.status, 404, "{a:?}");

    // on_due_date: reserved now, settled once the due date has come.
    let soon = now() + 4;
    let scheduled = post_bill(&node, &gas, bill("G-1", "60.00", soon));
    assert_eq!(scheduled.status, 201, "{scheduled:?}");
    assert_eq!(scheduled.body["status"], "scheduled");
    assert_eq!(account(&node, &s)["reserved"], "60.00");
    assert_eq!(balance(&node, &gas.key), "0.00");
    let gas_ref = scheduled.body["reference"].as_str().unwrap();
    let paid = bill_when(&node, &s, gas_ref, |b| b["status"] == "paid");
    assert!(now() >= soon, "paid before its due date: {paid}");
    assert_eq!(balance(&node, &gas.key), "60.00");
    assert_eq!(account(&node, &s)["reserved"], "0.00");
    assert_eq!(
        paid["overdue"], false,
        "a bill paid on its due date is not overdue"
    );
    // Paid on time: never reported overdue.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(inbox_has(&node, &s, "bill.overdue", gas_ref).is_none());

    // Bills are orders to the ledger: `verify` replays them (I1-I6).
    let mut node = node;
    assert!(node.terminate().success(), "{}", node.log());
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(["verify", "--data"])
        .arg(&node.data)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

#[test]
fn a_bill_above_the_credit_limit_fails_and_consumer_and_biller_are_told() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let w = setup(&node, None, None);
    let biller_hooks = Endpoint::start();
    let consumer_hooks = Endpoint::start();
    let power = register_biller(&node, "power-co", "electricity", Some(&biller_hooks.url()));
    let s = session(&node, &w, 0);
    set_rule(&node, &s, &power.id, json!({"rule": "always"}));
    // Alice's own webhook: the secret is shown once.
    let settings = call(
        "PUT",
        &node.url("/v1/consumer/notification-settings"),
        Some(&s),
        Some("settings-1"),
        Some(&json!({"webhook_url": consumer_hooks.url()})),
    );
    assert_eq!(settings.status, 200, "{settings:?}");
    let consumer_secret = settings.body["webhook_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let replay = call(
        "PUT",
        &node.url("/v1/consumer/notification-settings"),
        Some(&s),
        Some("settings-1"),
        Some(&json!({"webhook_url": consumer_hooks.url()})),
    );
    assert!(
        replay.replayed && replay.body["webhook_secret"].is_null(),
        "{replay:?}"
    );

    // Credit limit 2000.00: a bill of 2500.00 is refused by the engine's credit check.
    let a = post_bill(&node, &power, bill("P-9", "2500.00", now() + 3600));
    assert_eq!(a.status, 201, "{a:?}");
    assert_eq!(a.body["status"], "failed", "{a:?}");
    assert_eq!(a.body["failure"]["code"], "refused_credit", "{a:?}");
    let reference = a.body["reference"].as_str().unwrap().to_string();
    assert_eq!(account(&node, &s)["reserved"], "0.00");
    assert_eq!(balance(&node, &power.key), "0.00");

    // The consumer's inbox, and her webhook, signed with her secret.
    let n = eventually(20, || {
        inbox_has(&node, &s, "bill.payment_failed", &reference)
    })
    .expect("in the inbox");
    assert_eq!(n["data"]["reason"], "refused_credit", "{n}");
    let (hook, body) = eventually(20, || {
        hooks_of(&consumer_hooks, "bill.payment_failed")
            .into_iter()
            .next()
    })
    .expect("the consumer's webhook");
    assert!(signature_ok(&consumer_secret, &hook), "{hook:?}");
    assert_eq!(body["id"], n["id"], "one id for inbox and webhook");
    assert_eq!(hook.event_id, n["id"].as_str().unwrap());
    // The biller's webhook, signed with the biller's secret.
    let (hook, body) = eventually(20, || {
        hooks_of(&biller_hooks, "bill.payment_failed")
            .into_iter()
            .next()
    })
    .expect("the biller's webhook");
    assert!(signature_ok(&power.secret, &hook), "{hook:?}");
    assert_eq!(body["data"]["bill_id"], "P-9");
    assert_eq!(body["data"]["reason"], "refused_credit");
    // Once each.
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(hooks_of(&biller_hooks, "bill.payment_failed").len(), 1);
    assert_eq!(hooks_of(&consumer_hooks, "bill.payment_failed").len(), 1);
}

#[test]
fn an_unpaid_bill_is_reported_overdue_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let w = setup(&node, None, None);
    let hooks = Endpoint::start();
    let water = register_biller(&node, "water-co", "water", Some(&hooks.url()));
    let s = session(&node, &w, 0);
    // No rule: the bill waits for the consumer, who does nothing.
    let due = now() + 2;
    let a = post_bill(&node, &water, bill("W-7", "12.00", due));
    assert_eq!(a.body["status"], "awaiting_approval", "{a:?}");
    let reference = a.body["reference"].as_str().unwrap().to_string();
    let n = eventually(20, || inbox_has(&node, &s, "bill.overdue", &reference))
        .expect("the consumer is told");
    assert_eq!(n["data"]["status"], "awaiting_approval");
    let (hook, _) = eventually(20, || hooks_of(&hooks, "bill.overdue").into_iter().next())
        .expect("the biller is told");
    assert!(signature_ok(&water.secret, &hook));
    assert_eq!(bill_when(&node, &s, &reference, |_| true)["overdue"], true);
    // Once: a few more scans report nothing more.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let overdue: Vec<Value> = inbox(&node, &s)
        .into_iter()
        .filter(|n| n["type"] == "bill.overdue")
        .collect();
    assert_eq!(overdue.len(), 1, "{overdue:?}");
    assert_eq!(hooks_of(&hooks, "bill.overdue").len(), 1);
    // Paid late, it is paid all the same.
    let approve = call(
        "POST",
        &node.url(&format!("/v1/consumer/bills/{reference}/approve")),
        Some(&s),
        None,
        None,
    );
    assert_eq!(approve.status, 200, "{approve:?}");
    let paid = bill_when(&node, &s, &reference, |b| b["status"] == "paid");
    assert_eq!(paid["overdue"], false);
}

#[test]
fn notifications_survive_a_sigkill_and_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = start(dir.path());
    let w = setup(&node, None, None);
    let hooks = Endpoint::start();
    hooks.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let power = register_biller(&node, "power-co", "electricity", Some(&hooks.url()));
    let s = session(&node, &w, 0);
    set_rule(&node, &s, &power.id, json!({"rule": "always"}));
    let a = post_bill(&node, &power, bill("P-1", "2500.00", now() + 3600));
    assert_eq!(a.body["status"], "failed", "{a:?}");
    // The endpoint is down: tried, refused.
    eventually(20, || {
        hooks
            .hooks()
            .iter()
            .any(|h| !h.accepted && h.body.contains("bill.payment_failed"))
            .then_some(())
    })
    .expect("an attempt while the endpoint is down");
    node.kill();
    hooks.down.store(false, std::sync::atomic::Ordering::SeqCst);

    let node = start(dir.path());
    let (hook, body) = eventually(30, || {
        hooks_of(&hooks, "bill.payment_failed").into_iter().next()
    })
    .unwrap_or_else(|| panic!("not delivered after the restart\n{}", node.log()));
    assert!(signature_ok(&power.secret, &hook));
    assert_eq!(body["data"]["bill_id"], "P-1");
    // Still in the consumer's inbox, once.
    let s = session(&node, &w, 1);
    let failed: Vec<Value> = inbox(&node, &s)
        .into_iter()
        .filter(|n| n["type"] == "bill.payment_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
}
