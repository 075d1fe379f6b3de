//! The six steps end to end over real HTTP against a running `onecard serve`: the merchant
//! creates an order, the reader program pays it with the (simulated) card, the merchant's
//! printer receives the slip, the consumer confirms receipt, the merchant gets signed
//! webhooks, and the balances are right.

mod common;

use common::node::*;
use onecard_adapters::printer::decode;
use onecard_terminal::flow::PaymentEnd;
use serde_json::json;

#[test]
fn an_order_is_paid_at_the_reader_printed_settled_and_reported_to_the_merchant() {
    let dir = tempfile::tempdir().unwrap();
    let printer = Printer::start();
    let endpoint = Endpoint::start();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(
        &node,
        Some(&printer.addr.to_string()),
        Some(&endpoint.url()),
    );

    // Step 1: the merchant's checkout.
    let order = create_order(&node, &w, "42.50", false);
    let seen = call(
        "GET",
        &node.url(&format!("/v1/orders/{order}")),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(seen.body["state"], "awaiting_payment");
    assert_eq!(seen.body["print"]["status"], "waiting_for_payment");

    // Steps 2-4 at the reader.
    let mut card = card_for(&w, 0);
    let (end, answer) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let answer = answer.expect("the node's answer");
    let placed = answer.order.expect("order placed");
    assert_eq!(
        (placed.id.as_str(), placed.state.as_str()),
        (order.as_str(), "pending")
    );
    let session = answer.session.expect("a consumer session").token;

    // Step 5: the slip at the printer, exactly the order's delivery data (F22), with a beep.
    let slips = eventually(20, || {
        let s = printer.slips();
        (!s.is_empty()).then_some(s)
    })
    .expect("the slip is printed");
    let decoded = decode(&slips[0]).expect("valid ESC/POS");
    let text = decoded.lines.join("\n");
    for expected in [
        "DELIVERY SLIP",
        "The Tea Shop",
        &format!("Order: {order}"),
        "Deliver to: Alice Example",
        "Address: 1 Main Street",
        "Phone: +49 30 123456",
        "2 x Green tea",
        "1 x Teapot",
        "TOTAL: 42.50 EUR",
        "Release: on receipt",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not on the slip:\n{text}"
        );
    }
    assert!(
        !text.contains(CARD) && !text.contains("alice"),
        "consumer data on the slip:\n{text}"
    );
    assert!(decoded.beeps > 0, "the merchant must hear it");
    let printed = eventually(10, || {
        let o = call(
            "GET",
            &node.url(&format!("/v1/orders/{order}")),
            Some(&w.api_key),
            None,
            None,
        );
        (o.body["print"]["status"] == "printed").then_some(o)
    })
    .expect("print status on the order");
    assert_eq!(printed.body["state"], "pending");

    // Step 6: the consumer confirms receipt with the session from the reader.
    let account = call(
        "GET",
        &node.url("/v1/consumer/account"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(account.status, 200, "{:?}", account.body);
    assert_eq!(account.body["reserved"], "42.50");
    assert_eq!(account.body["open_orders"][0]["id"], order.as_str());
    let confirmed = call(
        "POST",
        &node.url(&format!("/v1/consumer/orders/{order}/receipt")),
        Some(&session),
        Some("receipt-1"),
        Some(&json!({"satisfied": true})),
    );
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.body);
    assert_eq!(confirmed.body["state"], "settled");

    // Balances: the wallet paid and was topped up back to the cap from the bank; the merchant
    // holds the amount.
    let account = call(
        "GET",
        &node.url("/v1/consumer/account"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(account.body["reserved"], "0.00");
    let merchant = call(
        "GET",
        &node.url("/v1/merchant"),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(merchant.body["balance"], "42.50", "{:?}", merchant.body);
    let o = call(
        "GET",
        &node.url(&format!("/v1/orders/{order}")),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(o.body["state"], "settled");

    // Webhooks: placed then settled, each signed with the merchant's secret, ids unique.
    let hooks = eventually(20, || {
        let h = endpoint.hooks();
        h.iter()
            .any(|h| h.body.contains("order.settled"))
            .then_some(h)
    })
    .expect("webhooks delivered");
    for h in &hooks {
        assert!(signature_ok(&w.webhook_secret, h), "bad signature on {h:?}");
        let body: serde_json::Value = serde_json::from_str(&h.body).unwrap();
        assert_eq!(body["id"], h.event_id.as_str());
        assert_eq!(body["data"]["order_id"], order.as_str());
        assert_eq!(body["data"]["reference"], "web-1001");
        assert!(
            !h.body.contains("alice"),
            "consumer id in a webhook: {}",
            h.body
        );
    }
    let kinds: Vec<String> = hooks
        .iter()
        .map(|h| {
            serde_json::from_str::<serde_json::Value>(&h.body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds, ["order.placed", "order.settled"], "{hooks:?}");

    // The statement shows the order and its settlement.
    let st = call(
        "GET",
        &node.url("/v1/consumer/statement"),
        Some(&session),
        None,
        None,
    );
    let events: Vec<&str> = st.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"order.placed") && events.contains(&"order.settled"),
        "{events:?}"
    );
}

#[test]
fn digital_goods_are_not_printed_and_a_wrong_pin_places_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let printer = Printer::start();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, Some(&printer.addr.to_string()), None);
    let order = create_order(&node, &w, "9.99", true);
    let mut card = card_for(&w, 0);

    let (end, answer) = pay(&node, &w, &mut card, &order, "0000");
    assert!(matches!(end, PaymentEnd::Refused(_)), "{end:?}");
    assert_eq!(answer.unwrap().outcome, "wrong_pin");
    let o = call(
        "GET",
        &node.url(&format!("/v1/orders/{order}")),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(o.body["state"], "awaiting_payment");

    let (end, _) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let o = call(
        "GET",
        &node.url(&format!("/v1/orders/{order}")),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(o.body["state"], "pending");
    assert_eq!(o.body["print"]["status"], "not_applicable");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        printer.slips().is_empty(),
        "digital goods are confirmed online, not printed"
    );
}

#[test]
fn a_consumer_signs_in_at_the_reader_with_card_and_pin_and_nothing_is_paid() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let mut card = card_for(&w, 0);

    // A wrong PIN: no session.
    let (end, answer) = sign_in(&node, &w, &mut card, "0000");
    assert!(matches!(end, PaymentEnd::Refused(_)), "{end:?}");
    let answer = answer.unwrap();
    assert_eq!(answer.outcome, "wrong_pin");
    assert!(answer.session.is_none());

    // The right PIN: a session for the consumer API, and no order anywhere.
    let (end, answer) = sign_in(&node, &w, &mut card, PIN);
    let PaymentEnd::Authorised(auth) = end else {
        panic!("{end:?}")
    };
    assert_eq!((auth.account.as_str(), auth.amount_cents), ("alice", 0));
    let answer = answer.unwrap();
    assert!(
        answer.order.is_none(),
        "a sign-in places nothing: {answer:?}"
    );
    let session = answer.session.expect("a session").token;
    let account = call(
        "GET",
        &node.url("/v1/consumer/account"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(account.status, 200, "{:?}", account.body);
    assert_eq!(account.body["consumer"], "alice");
    assert_eq!(account.body["wallet"], "500.00");
    assert_eq!(account.body["reserved"], "0.00");
    assert_eq!(account.body["bank_account"], "******************3000");
    assert!(account.body["open_orders"].as_array().unwrap().is_empty());
    let orders = call("GET", &node.url("/v1/orders"), Some(&w.api_key), None, None);
    assert!(orders.body["orders"].as_array().unwrap().is_empty());

    // A sign-in id with an amount, or a payment swipe for zero, is refused at the swipe.
    let swipe = |order: &str, cents: u64| {
        call(
            "POST",
            &node.url("/v1/reader/swipe"),
            None,
            None,
            Some(
                &json!({"reader_id": w.reader_id, "card_number": CARD, "order_id": order, "amount_cents": cents}),
            ),
        )
    };
    let a = swipe("signin-abc", 100);
    assert_eq!(
        (a.status, a.body["result"].as_str()),
        (200, Some("refused")),
        "{:?}",
        a.body
    );
    assert_eq!(a.body["reason"], "invalid_order");
    // Not a session: the merchant's key and garbage are refused by the consumer API.
    for token in [w.api_key.as_str(), "nonsense"] {
        let a = call(
            "GET",
            &node.url("/v1/consumer/account"),
            Some(token),
            None,
            None,
        );
        assert_eq!(a.status, 401, "{:?}", a.body);
    }
}

#[test]
fn a_session_expires_and_is_then_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("short.toml");
    std::fs::write(
        &config,
        "[node]\ntick_interval_ms = 100\nsession_ttl_secs = 1\nsession_sweep_secs = 1\n",
    )
    .unwrap();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&config));
    let w = setup(&node, None, None);
    let mut card = card_for(&w, 0);
    let (_, answer) = sign_in(&node, &w, &mut card, PIN);
    let session = answer.unwrap().session.expect("a session").token;
    let expired = eventually(20, || {
        let a = call(
            "GET",
            &node.url("/v1/consumer/account"),
            Some(&session),
            None,
            None,
        );
        (a.status == 401).then_some(a)
    })
    .expect("the session expires");
    let message = expired.body["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("expired") || message.contains("unknown"),
        "{message}"
    );
    // The sweep removes it from the store: then it is unknown, not expired.
    eventually(20, || {
        let a = call(
            "GET",
            &node.url("/v1/consumer/account"),
            Some(&session),
            None,
            None,
        );
        (a.body["error"]["message"] == "unknown session").then_some(())
    })
    .expect("the expired session is forgotten");
}
