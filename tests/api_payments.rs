//! Card payments over the reader API with more than one payer (issue 11): an order takes one
//! authorisation, so a second card swiped for an order another card pays is refused before its
//! PIN, gets no session, and the order stays the first payer's.

mod common;

use common::node::*;
use onecard_protocol::crypto::cryptogram;
use onecard_protocol::{encrypt_pin, AuthOutcome, CardKey, ChallengeIssued};
use onecard_terminal::flow::NodeLink;
use onecard_terminal::http_link::{HttpLink, LinkOptions};
use serde_json::json;

const CARD_BOB: &str = "4000009876543210";
const PIN_BOB: &str = "135790";
const BANK_BOB: &str = "DE02120300000000202051";

/// Bob, a second consumer with his own card and reader (also on 127.0.0.1).
fn add_bob(node: &NodeProc) -> CardKey {
    let a = admin(
        node,
        "/v1/admin/bank-accounts",
        json!({"account": BANK_BOB, "balance": "1000.00"}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = admin(
        node,
        "/v1/admin/consumers",
        json!({"consumer": "bob", "credit_limit": "2000.00", "bank": BANK_BOB, "wallet": "0.00"}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let key = issue_card_with_reader(node, "bob", CARD_BOB, PIN_BOB, "reader-bob");
    CardKey::from_bytes(key)
}

/// Step 3 for `ch` with the card's cryptogram at `counter` and `pin`.
fn authenticate(
    link: &mut HttpLink,
    key: &CardKey,
    ch: &ChallengeIssued,
    order: &str,
    amount_cents: u64,
    counter: u32,
    pin: &str,
) -> AuthOutcome {
    let c = cryptogram(key, &ch.challenge, order, amount_cents, counter).unwrap();
    let pin = encrypt_pin(&ch.node_public, &ch.challenge, pin, &mut rand::rngs::OsRng).unwrap();
    link.authenticate(&ch.challenge_id, counter, &c, &pin, HOME)
        .expect("node reachable")
}

#[test]
fn a_second_payer_of_an_order_is_refused_before_the_pin_and_the_order_stays_the_firsts() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let bob_key = add_bob(&node);
    let alice_key = CardKey::from_bytes(w.card_key);
    let order = create_order(&node, &w, "12.50", true);

    // Both swipe while the order waits for payment.
    let mut alice = HttpLink::new(&node.base, LinkOptions::default()).unwrap();
    let mut bob = HttpLink::new(&node.base, LinkOptions::default()).unwrap();
    let alice_ch = alice
        .swipe(&w.reader_id, CARD, &order, 1250)
        .unwrap()
        .expect("alice's swipe");
    let bob_ch = bob
        .swipe("reader-bob", CARD_BOB, &order, 1250)
        .unwrap()
        .expect("bob's swipe");

    // Alice pays.
    let out = authenticate(&mut alice, &alice_key, &alice_ch, &order, 1250, 1, PIN);
    let AuthOutcome::Authorised(a) = &out else {
        panic!("{out:?}")
    };
    assert_eq!(a.account, "alice");
    let alice_answer = alice.last_answer().cloned().unwrap();
    assert_eq!(alice_answer.order.as_ref().unwrap().state, "pending");
    let alice_session = alice_answer.session.expect("alice's session").token;

    // Bob, with a wrong PIN even: refused as a second payer, not as a wrong PIN.
    let out = authenticate(&mut bob, &bob_key, &bob_ch, &order, 1250, 1, "000000");
    assert_eq!(out, AuthOutcome::OrderTaken);
    let bob_answer = bob.last_answer().cloned().unwrap();
    assert_eq!(bob_answer.outcome, "order_taken");
    assert_eq!(bob_answer.prompt.text, "This order is already being paid");
    assert!(
        bob_answer.session.is_none(),
        "no session for the second payer"
    );
    assert!(bob_answer.order.is_none());

    // The order is Alice's: her session sees it, and it is pending in her virtual account.
    let mine = call(
        "GET",
        &node.url(&format!("/v1/consumer/orders/{order}")),
        Some(&alice_session),
        None,
        None,
    );
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    assert_eq!(mine.body["state"], "pending");

    // Bob's card lost nothing to the refusal: his next payment, of another order, with his
    // right PIN, is authorised at the first try.
    let other = create_order(&node, &w, "3.00", true);
    let ch = bob
        .swipe("reader-bob", CARD_BOB, &other, 300)
        .unwrap()
        .expect("bob's swipe");
    let out = authenticate(&mut bob, &bob_key, &ch, &other, 300, 2, PIN_BOB);
    assert!(out.is_authorised(), "{out:?}");

    // And after a restart a late payer of Alice's order is still refused: at the swipe, since
    // the order is no longer waiting for payment.
    drop(node);
    let node = NodeProc::start(&dir.path().join("data"));
    let mut bob = HttpLink::new(&node.base, LinkOptions::default()).unwrap();
    let err = bob
        .swipe("reader-bob", CARD_BOB, &order, 1250)
        .expect_err("a paid order cannot be swiped");
    assert!(err.0.contains("order_not_payable"), "{err:?}");
}

#[test]
fn a_counter_that_jumps_too_far_is_refused_and_the_challenge_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let key = CardKey::from_bytes(w.card_key);
    let order = create_order(&node, &w, "5.00", true);
    let mut link = HttpLink::new(&node.base, LinkOptions::default()).unwrap();
    let ch = link
        .swipe(&w.reader_id, CARD, &order, 500)
        .unwrap()
        .expect("swipe");
    for counter in [u32::MAX, 1_001] {
        let out = authenticate(&mut link, &key, &ch, &order, 500, counter, PIN);
        assert_eq!(out, AuthOutcome::CounterOutOfWindow, "{counter}");
        assert_eq!(link.last_answer().unwrap().outcome, "counter_out_of_window");
    }
    // The same challenge, the counter within the window: paid.
    let out = authenticate(&mut link, &key, &ch, &order, 500, 1_000, PIN);
    assert!(out.is_authorised(), "{out:?}");
}

/// A swipe's answer goes out before its stored answer is synced (the challenge lives in memory
/// only), so a repeat can arrive before the record is readable: it must still get the same
/// challenge, never run the swipe again and never be told to wait; and another request with
/// the key is refused as for any other route.
#[test]
fn a_swipe_repeated_with_its_key_gets_the_same_challenge_at_once_and_after_the_record_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let order = create_order(&node, &w, "12.50", false);
    let body = json!({"reader_id": w.reader_id, "card_number": CARD, "order_id": order, "amount_cents": 1250});
    let swipe = |key: &str, body: &serde_json::Value| {
        call(
            "POST",
            &node.url("/v1/reader/swipe"),
            None,
            Some(key),
            Some(body),
        )
    };
    // Merchants keep the log busy meanwhile, so that syncs take their time and a repeat often
    // comes while its stored answer is still on its way.
    let busy = std::sync::atomic::AtomicBool::new(true);
    let first = std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                while busy.load(std::sync::atomic::Ordering::Relaxed) {
                    create_order(&node, &w, "1.00", false);
                }
            });
        }
        let mut first = None;
        for round in 0..100 {
            let key = format!("swipe-{round}");
            let answer = swipe(&key, &body);
            assert_eq!(answer.status, 200, "{:?}", answer.body);
            let challenge = answer.body["challenge_id"].clone();
            assert!(challenge.is_string(), "{:?}", answer.body);
            let again = swipe(&key, &body);
            assert_eq!(
                again.status, 200,
                "repeat in round {round}: {:?}",
                again.body
            );
            assert!(
                again.replayed,
                "the repeat in round {round} ran the swipe again"
            );
            assert_eq!(again.body["challenge_id"], challenge, "round {round}");
            first = Some(answer);
        }
        busy.store(false, std::sync::atomic::Ordering::Relaxed);
        first.unwrap()
    });
    // Long after: the record written and read back.
    let last_key = "swipe-99";
    let again = swipe(last_key, &body);
    assert!(
        again.replayed && again.body == first.body,
        "{:?}",
        again.body
    );
    let mut other = body.clone();
    other["amount_cents"] = json!(1251);
    let mismatch = swipe(last_key, &other);
    assert_eq!(mismatch.status, 422, "{:?}", mismatch.body);
    assert_eq!(mismatch.body["error"]["code"], "idempotency_mismatch");
    // The challenge the first swipe issued, answered to every repeat, is the live one.
    let issued: onecard_protocol::wire::SwipeAnswer =
        serde_json::from_value(first.body.clone()).unwrap();
    let ch = issued.into_result().unwrap().expect("a challenge");
    let key = CardKey::from_bytes(w.card_key);
    let c = cryptogram(&key, &ch.challenge, &order, 1250, 1).unwrap();
    let pin = encrypt_pin(&ch.node_public, &ch.challenge, PIN, &mut rand::rngs::OsRng).unwrap();
    let auth = serde_json::to_value(onecard_protocol::wire::AuthenticateBody {
        challenge_id: ch.challenge_id.clone(),
        counter: 1,
        cryptogram: hex::encode(c),
        pin: onecard_protocol::wire::PinBody::of(&pin),
        delivery_address: HOME.into(),
    })
    .unwrap();
    let authenticate = || {
        call(
            "POST",
            &node.url("/v1/reader/authenticate"),
            None,
            Some("auth-1"),
            Some(&auth),
        )
    };
    let paid = authenticate();
    assert_eq!(
        (paid.status, paid.body["outcome"].as_str()),
        (200, Some("authorised")),
        "{:?}",
        paid.body
    );
    assert!(paid.body["session"]["token"].is_string(), "{:?}", paid.body);
    // Its repeat: the same answer without the session, whose token is never stored.
    let again = authenticate();
    assert!(again.replayed);
    let mut without_session = paid.body.clone();
    without_session.as_object_mut().unwrap().remove("session");
    assert_eq!(again.body, without_session);
}
