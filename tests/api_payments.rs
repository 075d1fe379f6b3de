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
