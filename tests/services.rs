//! The settlement center's services end to end over the node's API (issue 13): the rules
//! each service adds, seen the way a consumer, a merchant and the reader see them. Each
//! service's own detailed tests are in `tests/services_*.rs`.

mod common;

use common::node::*;
use onecard_terminal::flow::PaymentEnd;
use serde_json::{json, Value};

fn put_rules(node: &NodeProc, session: &str, key: &str, rules: Value) -> Answer {
    call(
        "PUT",
        &node.url("/v1/consumer/gateway-rules"),
        Some(session),
        Some(key),
        Some(&rules),
    )
}

/// SPEC F9: the consumer's own payment rules, set through the consumer API after a sign-in at
/// the reader, refuse at the reader with their own prompt naming the rule; a payment within
/// them goes through; bad rules are refused with the reason; removed, they refuse nothing.
#[test]
fn a_gateway_rule_refuses_at_the_reader_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path());
    let w = setup(&node, None, None);
    let mut card = card_for(&w, 1);
    let (end, answer) = sign_in(&node, &w, &mut card, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let session = answer.unwrap().session.unwrap().token;

    let none = call(
        "GET",
        &node.url("/v1/consumer/gateway-rules"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(none.status, 200, "{:?}", none.body);
    assert_eq!(none.body["rules"], Value::Null);

    let set = put_rules(
        &node,
        &session,
        "rules-1",
        json!({"max_per_payment": "50.00", "max_per_day": "80.00", "blocked_merchants": ["casino"]}),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(set.body["rules"]["max_per_payment"], "50.00");

    // Above the limit per payment: refused at the reader, the rule named in the prompt.
    let order = create_order(&node, &w, "60.00", false);
    let (end, answer) = pay(&node, &w, &mut card, &order, PIN);
    let PaymentEnd::Refused(prompt) = end else {
        panic!("{end:?}")
    };
    assert!(
        prompt.text.contains("payment rules") && prompt.text.contains("50.00"),
        "{}",
        prompt.text
    );
    let answer = answer.unwrap();
    assert_eq!(answer.outcome, "gateway_refused");
    assert_eq!(answer.rule.as_deref(), Some("max_per_payment"));
    assert!(answer.order.is_none(), "nothing placed");

    // Within it: authorised and placed; then the day's limit refuses the next.
    let order = create_order(&node, &w, "45.00", false);
    let (end, _) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let read = call(
        "GET",
        &node.url("/v1/consumer/gateway-rules"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(read.body["spent_today"], "45.00", "{:?}", read.body);
    let order = create_order(&node, &w, "40.00", false);
    let (end, answer) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Refused(_)), "{end:?}");
    assert_eq!(answer.unwrap().rule.as_deref(), Some("max_per_day"));

    // Malformed rules: refused with the reason, the rules in force unchanged.
    for (i, bad) in [
        json!({"max_per_payment": "0.00"}),
        json!({"hours": {"from": "25:00", "to": "06:00"}}),
        json!({"max_per_day": "1.001"}),
        json!({"no_such_rule": true}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = put_rules(&node, &session, &format!("bad-{i}"), bad.clone());
        assert!(
            r.status == 400 || r.status == 422,
            "{bad}: {} {:?}",
            r.status,
            r.body
        );
    }
    // Removed: the same payment goes through.
    let removed = put_rules(&node, &session, "rules-2", Value::Null);
    assert_eq!(removed.status, 200, "{:?}", removed.body);
    assert_eq!(removed.body["rules"], Value::Null);
    let (end, _) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
}

fn consumer_call(
    node: &NodeProc,
    session: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    call(method, &node.url(path), Some(session), key, body.as_ref())
}

fn wallet_of(node: &NodeProc, session: &str) -> String {
    let a = consumer_call(node, session, "GET", "/v1/consumer/account", None, None);
    assert_eq!(a.status, 200, "{a:?}");
    a.body["wallet"].as_str().unwrap().to_string()
}

/// SPEC F5: a consumer links a second bank account, moves money between the two and into the
/// wallet (each transfer once, whatever the retries), designates the other one for top-ups,
/// and a standing transfer rule runs by itself, once per run, and says how it went.
#[test]
fn linked_bank_accounts_transfers_and_standing_rules() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "[rules]\ntopup_threshold = \"100.00\"\n[node]\ntick_interval_ms = 200\n",
    )
    .unwrap();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&cfg));
    let w = setup(&node, None, None);
    let mut card = card_for(&w, 1);
    let (end, answer) = sign_in(&node, &w, &mut card, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let s = answer.unwrap().session.unwrap().token;

    let list = consumer_call(&node, &s, "GET", "/v1/consumer/bank-accounts", None, None);
    assert_eq!(list.status, 200, "{list:?}");
    let accounts = list.body["accounts"].as_array().unwrap().clone();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["designated"], true);
    let main = accounts[0]["id"].as_str().unwrap().to_string();
    assert!(
        !main.contains(BANK),
        "an account's id is not its number: {main}"
    );
    assert_eq!(list.body["auto_top_up"]["from"], main.as_str());

    let opened = admin(
        &node,
        "/v1/admin/bank-accounts",
        json!({"account": "DE02120300000000202051", "balance": "300.00"}),
    );
    assert_eq!(opened.status, 201, "{opened:?}");
    let linked = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/bank-accounts",
        Some("link-1"),
        Some(json!({"account": "DE02120300000000202051"})),
    );
    assert_eq!(linked.status, 201, "{linked:?}");
    assert_eq!(linked.body["account"], "******************2051");
    assert_eq!(linked.body["designated"], false);
    let savings = linked.body["id"].as_str().unwrap().to_string();
    // The designated account of the consumer again: already hers, the same answer.
    let again = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/bank-accounts",
        Some("link-2"),
        Some(json!({"account": BANK})),
    );
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.body["id"], main.as_str());

    // Between the accounts: once per Idempotency-Key; without one, refused.
    let body = json!({"from": savings, "to": main, "amount": "100.00"});
    let t = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-1"),
        Some(body.clone()),
    );
    assert_eq!(t.status, 201, "{t:?}");
    let t2 = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-1"),
        Some(body.clone()),
    );
    assert_eq!((t2.status, &t2.body["id"]), (201, &t.body["id"]));
    let none = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        None,
        Some(body),
    );
    assert_eq!(none.status, 400, "{none:?}");
    // More than the account holds (200.00 left): refused, nothing moves.
    let short = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-2"),
        Some(json!({"from": savings, "to": main, "amount": "200.01"})),
    );
    assert_eq!(short.status, 409, "{short:?}");
    // Into the wallet (500.00 of 5000.00): all or nothing under the cap.
    let over = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-3"),
        Some(json!({"from": main, "to": "wallet", "amount": "4500.01"})),
    );
    assert_eq!(over.status, 422, "{over:?}");
    let into = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-4"),
        Some(json!({"from": savings, "to": "wallet", "amount": "50.00"})),
    );
    assert_eq!(into.status, 201, "{into:?}");
    assert_eq!(wallet_of(&node, &s), "550.00");
    let unknown = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-5"),
        Some(json!({"from": "bk-nope", "to": "wallet", "amount": "1.00"})),
    );
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // Designated: the savings account is listed first.
    let d = consumer_call(
        &node,
        &s,
        "POST",
        &format!("/v1/consumer/bank-accounts/{savings}/designate"),
        Some("d-1"),
        None,
    );
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.body[0]["id"], savings.as_str());

    // A standing rule, first run a second from now: it runs once, and says so.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bad = consumer_call(
        &node,
        &s,
        "PUT",
        "/v1/consumer/transfer-rules/monthly",
        Some("r-0"),
        Some(json!({"from": main, "to": "wallet", "amount": "25.00", "day": 31})),
    );
    assert_eq!(bad.status, 422, "{bad:?}");
    let rule = consumer_call(
        &node,
        &s,
        "PUT",
        "/v1/consumer/transfer-rules/monthly",
        Some("r-1"),
        Some(
            json!({"from": main, "to": "wallet", "amount": "25.00", "day": 1, "first_run": now + 1}),
        ),
    );
    assert_eq!(rule.status, 200, "{rule:?}");
    let ran = eventually(20, || {
        let l = consumer_call(&node, &s, "GET", "/v1/consumer/bank-accounts", None, None);
        let r = l.body["transfer_rules"][0].clone();
        (!r["last_run"].is_null()).then_some(r)
    })
    .expect("the rule ran");
    assert_eq!(ran["last_run"]["result"], "done", "{ran}");
    assert!(ran["next_due"].as_u64().unwrap() > now + 1, "{ran}");
    assert_eq!(wallet_of(&node, &s), "575.00");
    let inbox = consumer_call(&node, &s, "GET", "/v1/consumer/notifications", None, None);
    assert!(
        inbox.body.to_string().contains("transfer.done"),
        "{:?}",
        inbox.body
    );
    let gone = consumer_call(
        &node,
        &s,
        "DELETE",
        "/v1/consumer/transfer-rules/monthly",
        None,
        None,
    );
    assert_eq!(gone.status, 200, "{gone:?}");
    let gone = consumer_call(
        &node,
        &s,
        "DELETE",
        "/v1/consumer/transfer-rules/monthly",
        None,
        None,
    );
    assert_eq!(gone.status, 404, "{gone:?}");
}
