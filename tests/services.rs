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
