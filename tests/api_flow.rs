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
        "[node]\ntick_interval_ms = 100\nsession_ttl_secs = 1\nsweep_secs = 1\n",
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

#[test]
fn a_reprint_prints_the_slip_once_more() {
    let dir = tempfile::tempdir().unwrap();
    let printer = Printer::start();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, Some(&printer.addr.to_string()), None);
    let order = create_order(&node, &w, "15.00", false);
    let reprint = |key: &str| {
        call(
            "POST",
            &node.url(&format!("/v1/orders/{order}/reprint")),
            Some(&w.api_key),
            Some(key),
            Some(&json!({})),
        )
    };
    // Nothing to reprint before the order is paid.
    assert_eq!(reprint("early").status, 409);
    let mut card = card_for(&w, 0);
    let (end, _) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let get = || {
        call(
            "GET",
            &node.url(&format!("/v1/orders/{order}")),
            Some(&w.api_key),
            None,
            None,
        )
    };
    eventually(20, || {
        (get().body["print"]["status"] == "printed").then_some(())
    })
    .expect("printed");
    assert_eq!(printer.slips().len(), 1);

    let again = reprint("reprint-1");
    assert_eq!(again.status, 202, "{:?}", again.body);
    assert_eq!(again.body["print"]["reprints"], 1);
    let slips = eventually(20, || {
        let s = printer.slips();
        (s.len() == 2).then_some(s)
    })
    .expect("the reprint arrives");
    assert_eq!(slips[0], slips[1], "the same slip");
    eventually(20, || {
        (get().body["print"]["status"] == "printed").then_some(())
    })
    .expect("printed again");
    // The same request again is a replay, not a third print.
    let replay = reprint("reprint-1");
    assert!(replay.replayed);
    std::thread::sleep(std::time::Duration::from_millis(800));
    assert_eq!(printer.slips().len(), 2);
}

#[test]
fn secrets_shown_once_are_not_stored_and_an_api_key_can_be_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProc::start(&data);
    let merchant = json!({"id": "kiosk", "name": "Kiosk"});
    let post = |path: &str, key: &str, body: &serde_json::Value| {
        call(
            "POST",
            &node.url(path),
            Some(ADMIN_TOKEN),
            Some(key),
            Some(body),
        )
    };
    let first = post("/v1/admin/merchants", "m-1", &merchant);
    assert_eq!(first.status, 201, "{:?}", first.body);
    let api_key = first.body["api_key"].as_str().unwrap().to_string();
    let replay = post("/v1/admin/merchants", "m-1", &merchant);
    assert!(replay.replayed);
    assert_eq!(replay.status, 201);
    assert!(
        replay.body["api_key"].is_null() && replay.body["webhook_secret"].is_null(),
        "{:?}",
        replay.body
    );
    assert_eq!(replay.body["id"], "kiosk");
    // Registering it again is a conflict, not a second set of credentials.
    let again = post("/v1/admin/merchants", "m-2", &merchant);
    assert_eq!(again.status, 409, "{:?}", again.body);

    // A new key: the old one stops working at once.
    let rotated = post("/v1/admin/merchants/kiosk/api-key", "rot-1", &json!({}));
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);
    let new_key = rotated.body["api_key"].as_str().unwrap().to_string();
    assert_ne!(new_key, api_key);
    let me = |k: &str| call("GET", &node.url("/v1/merchant"), Some(k), None, None).status;
    assert_eq!(me(&api_key), 401);
    assert_eq!(me(&new_key), 200);
    assert!(
        post("/v1/admin/merchants/kiosk/api-key", "rot-1", &json!({})).body["api_key"].is_null()
    );
    assert_eq!(
        post("/v1/admin/merchants/nobody/api-key", "rot-2", &json!({})).status,
        404
    );

    // A card issued with a key: the replay has no card key either.
    assert_eq!(
        admin(
            &node,
            "/v1/admin/bank-accounts",
            json!({"account": BANK, "balance": "100.00"})
        )
        .status,
        201
    );
    let consumer =
        json!({"consumer": "alice", "credit_limit": "100.00", "bank": BANK, "wallet": "0.00"});
    assert_eq!(admin(&node, "/v1/admin/consumers", consumer).status, 201);
    let card = json!({"number": CARD, "holder": "alice", "pin": PIN, "registered_address": HOME});
    let issued = post("/v1/admin/cards", "card-1", &card);
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    let card_key = issued.body["card_key"].as_str().unwrap().to_string();
    assert!(post("/v1/admin/cards", "card-1", &card).body["card_key"].is_null());
    assert_eq!(post("/v1/admin/cards", "card-2", &card).status, 409);

    // After the node is stopped, neither secret is anywhere in its files (I10), the new key
    // still works after a restart, and the old one does not.
    assert!(node.terminate().success());
    for file in common::files_under(&data) {
        let bytes = std::fs::read(&file).unwrap();
        for secret in [&api_key, &new_key, &card_key] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret in {}",
                file.display()
            );
        }
    }
    let node = NodeProc::start(&data);
    let me = |k: &str| call("GET", &node.url("/v1/merchant"), Some(k), None, None).status;
    assert_eq!(me(&new_key), 200);
    assert_eq!(me(&api_key), 401);
}

#[test]
fn ids_with_slashes_cannot_reach_another_merchants_records() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let key_of = |id: &str| {
        let m = admin(&node, "/v1/admin/merchants", json!({"id": id, "name": id}));
        assert_eq!(m.status, 201, "{:?}", m.body);
        m.body["api_key"].as_str().unwrap().to_string()
    };
    let a = key_of("a");
    let ab = key_of("a/b");
    let body = order_body("5.00", false);
    let mine = call(
        "POST",
        &node.url("/v1/orders"),
        Some(&a),
        Some("b/k1"),
        Some(&body),
    );
    let theirs = call(
        "POST",
        &node.url("/v1/orders"),
        Some(&ab),
        Some("k1"),
        Some(&body),
    );
    assert_eq!((mine.status, theirs.status), (201, 201));
    assert!(
        !theirs.replayed,
        "another merchant's answer: {:?}",
        theirs.body
    );
    assert_ne!(mine.body["id"], theirs.body["id"]);
    let list = |k: &str| call("GET", &node.url("/v1/orders?limit=1"), Some(k), None, None).body;
    let la = list(&a);
    assert_eq!(la["orders"].as_array().unwrap().len(), 1, "{la:?}");
    assert_eq!(la["orders"][0]["id"], mine.body["id"]);
    assert_eq!(list(&ab)["orders"][0]["id"], theirs.body["id"]);
}

#[test]
fn an_expired_checkout_cannot_be_paid_but_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ttl.toml");
    std::fs::write(
        &config,
        "[node]\ntick_interval_ms = 100\ncheckout_ttl_secs = 1\n",
    )
    .unwrap();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&config));
    let w = setup(&node, None, None);
    let order = create_order(&node, &w, "5.00", false);
    let get = || {
        call(
            "GET",
            &node.url(&format!("/v1/orders/{order}")),
            Some(&w.api_key),
            None,
            None,
        )
    };
    eventually(10, || (get().body["state"] == "expired").then_some(())).expect("expires");
    let swipe = call(
        "POST",
        &node.url("/v1/reader/swipe"),
        None,
        None,
        Some(
            &json!({"reader_id": w.reader_id, "card_number": CARD, "order_id": order, "amount_cents": 500}),
        ),
    );
    assert_eq!(swipe.status, 409, "{:?}", swipe.body);
    assert_eq!(swipe.body["error"]["code"], "order_not_payable");
    let cancelled = call(
        "POST",
        &node.url(&format!("/v1/orders/{order}/cancel")),
        Some(&w.api_key),
        None,
        Some(&json!({})),
    );
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    assert_eq!(get().body["state"], "cancelled");
}

#[test]
fn an_endpoint_that_is_down_does_not_hold_up_another_merchants_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fast.toml");
    std::fs::write(
        &config,
        "[node]\ntick_interval_ms = 100\nwebhook_retry_max_ms = 60000\n",
    )
    .unwrap();
    let down = Endpoint::start();
    down.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let up = Endpoint::start();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&config));
    let w = setup(&node, None, Some(&down.url()));
    let other = admin(
        &node,
        "/v1/admin/merchants",
        json!({"id": "other", "name": "Other", "webhook_url": up.url()}),
    );
    assert_eq!(other.status, 201);
    let other_key = other.body["api_key"].as_str().unwrap().to_string();
    let mut card = card_for(&w, 0);
    // Many events for the merchant whose endpoint is down.
    for _ in 0..5 {
        let order = create_order(&node, &w, "1.00", false);
        let (end, _) = pay(&node, &w, &mut card, &order, PIN);
        assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    }
    // Then one for the other merchant: delivered while the first endpoint is still down.
    let o = call(
        "POST",
        &node.url("/v1/orders"),
        Some(&other_key),
        None,
        Some(&order_body("2.00", false)),
    );
    let order = o.body["id"].as_str().unwrap().to_string();
    let w_other = World {
        api_key: other_key,
        ..w.clone()
    };
    let (end, _) = pay(&node, &w_other, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let got = eventually(20, || {
        up.hooks().iter().find(|h| h.body.contains(&order)).cloned()
    })
    .expect("the other merchant's webhook is delivered");
    assert!(got.accepted && got.body.contains("order.placed"));
    assert!(down.hooks().iter().all(|h| !h.accepted));
    // The failing endpoint's events were tried, not dropped.
    assert!(!down.hooks().is_empty());

    // A made-up method is counted as OTHER, not as a new label.
    let _ = agent().request("FROB", &node.url("/healthz")).call();
    let metrics = call("GET", &node.url("/metrics"), None, None, None);
    let text = metrics.body.as_str().unwrap().to_string();
    assert!(
        text.contains("method=\"OTHER\"") && !text.contains("FROB"),
        "{text}"
    );
}

#[test]
fn an_idempotency_key_is_kept_for_its_time_then_may_be_used_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ttl.toml");
    std::fs::write(
        &config,
        "[node]\ntick_interval_ms = 100\nidempotency_ttl_secs = 2\nsweep_secs = 1\n",
    )
    .unwrap();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&config));
    let w = setup(&node, None, None);
    let body = order_body("4.00", false);
    let post = || {
        call(
            "POST",
            &node.url("/v1/orders"),
            Some(&w.api_key),
            Some("cart-7"),
            Some(&body),
        )
    };
    let first = post();
    assert_eq!(first.status, 201);
    let replay = post();
    assert!(replay.replayed);
    assert_eq!(replay.body["id"], first.body["id"]);
    // Once the record is swept, the same key makes a new order.
    let later = eventually(20, || {
        let a = post();
        (!a.replayed).then_some(a)
    })
    .expect("the key is forgotten after its time");
    assert_eq!(later.status, 201);
    assert_ne!(later.body["id"], first.body["id"]);
}

/// A new idempotency key is answered "not stored" from the engine's id filter, without a read.
/// The filter must know every stored key: those written by this process, and after a restart
/// (a clean stop or SIGKILL) those on disk, so that a repeat is replayed and never runs again.
#[test]
fn an_idempotency_key_is_replayed_after_a_restart_and_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProc::start(&data);
    let w = setup(&node, None, None);
    let body = order_body("4.00", false);
    let post = |node: &NodeProc, key: &str| {
        call(
            "POST",
            &node.url("/v1/orders"),
            Some(&w.api_key),
            Some(key),
            Some(&body),
        )
    };
    let first = post(&node, "cart-1");
    assert_eq!((first.status, first.replayed), (201, false));
    assert!(post(&node, "cart-1").replayed);
    node.terminate();
    let mut node = NodeProc::start(&data);
    let again = post(&node, "cart-1");
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.body["id"], first.body["id"]);
    let second = post(&node, "cart-2");
    assert_eq!((second.status, second.replayed), (201, false));
    node.kill();
    let node = NodeProc::start(&data);
    for (key, created) in [("cart-1", &first), ("cart-2", &second)] {
        let again = post(&node, key);
        assert!(again.replayed, "{key}: {again:?}");
        assert_eq!(again.body["id"], created.body["id"], "{key}");
    }
    let third = post(&node, "cart-3");
    assert_eq!((third.status, third.replayed), (201, false));
}
