//! Tests of the authentication center, the PIN primitives and the prompts.

use std::net::IpAddr;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::auth::*;
use super::crypto::*;
use super::pin::*;
use super::prompt::*;

const CARD: &str = "4000001234567890";
const CARD_BOB: &str = "4000009876543210";
const READER: &str = "RDR-ALICE-01";
const READER_BOB: &str = "RDR-BOB-01";
const PIN: &str = "2580";
const HOME: &str = "12 Rue des Lilas, 75011 Paris";
const ORDER: &str = "order-1";
const AMOUNT: u64 = 4_999;
const CREDIT: u64 = 100_000;
const T0: u64 = 1_000_000;

fn master() -> IssuerKey {
    IssuerKey::from_bytes([9u8; 32])
}

fn home_peer() -> IpAddr {
    "192.168.1.20".parse().unwrap()
}

fn bob_peer() -> IpAddr {
    "2001:db8:1::20".parse().unwrap()
}

struct Fixture {
    center: AuthCenter,
    rng: StdRng,
    key: CardKey,
    counter: u32,
    /// What the node would journal, in order.
    changes: Vec<AuthChange>,
}

fn fixture() -> Fixture {
    fixture_with(AuthConfig::default())
}

fn fixture_with(config: AuthConfig) -> Fixture {
    let rng = StdRng::seed_from_u64(7);
    let center = AuthCenter::new(master(), config);
    let mut changes = Vec::new();
    let key = center
        .issue_card(CARD, "alice", PIN, HOME, &mut changes)
        .unwrap();
    center
        .issue_card(CARD_BOB, "bob", "987654", "1 Main Street", &mut changes)
        .unwrap();
    center
        .register_reader(
            NewReader {
                id: READER.into(),
                owner: "Alice Martin".into(),
                card_number: CARD.into(),
                account: "alice".into(),
                network: "192.168.1.0/24".parse().unwrap(),
            },
            &mut changes,
        )
        .unwrap();
    center
        .register_reader(
            NewReader {
                id: READER_BOB.into(),
                owner: "Bob & Co".into(),
                card_number: CARD_BOB.into(),
                account: "bob".into(),
                network: "2001:db8:1::/48".parse().unwrap(),
            },
            &mut changes,
        )
        .unwrap();
    Fixture {
        center,
        rng,
        key,
        counter: 0,
        changes,
    }
}

/// What the card and the reader program send for one challenge.
struct Submission {
    counter: u32,
    cryptogram: Vec<u8>,
    pin: EncryptedPin,
}

impl Fixture {
    fn swipe(&mut self, order: &str, amount: u64, now: u64) -> ChallengeIssued {
        self.center
            .swipe(READER, CARD, home_peer(), order, amount, now, &mut self.rng)
            .expect("swipe accepted")
    }

    /// The genuine card's next cryptogram and the PIN `pin` encrypted for `ch`.
    fn submission(
        &mut self,
        ch: &ChallengeIssued,
        order: &str,
        amount: u64,
        pin: &str,
    ) -> Submission {
        self.counter += 1;
        let cryptogram = cryptogram(&self.key, &ch.challenge, order, amount, self.counter)
            .unwrap()
            .to_vec();
        let pin = encrypt_pin(&ch.node_public, &ch.challenge, pin, &mut self.rng).unwrap();
        Submission {
            counter: self.counter,
            cryptogram,
            pin,
        }
    }

    fn submit(
        &mut self,
        ch: &ChallengeIssued,
        s: &Submission,
        address: &str,
        confirm: Option<bool>,
        credit: u64,
        now: u64,
    ) -> AuthOutcome {
        let outcome = self.center.authenticate(
            &ch.challenge_id,
            s.counter,
            &s.cryptogram,
            &s.pin,
            address,
            confirm,
            credit,
            now,
            |_| false,
            &mut self.changes,
        );
        self.recorded(ch, &outcome);
        outcome
    }

    /// What the node does once an authorisation is on record: the order is let go (these
    /// tests pay one order id again and again; the record, which refuses a second payer in the
    /// node, has its own tests).
    fn recorded(&self, ch: &ChallengeIssued, outcome: &AuthOutcome) {
        if let AuthOutcome::Authorised(a) = outcome {
            self.center
                .authorisation_recorded(&a.order_id, &ch.challenge_id);
        }
    }

    /// Swipe for the standard order and authenticate with `pin` from home.
    fn pay(&mut self, pin: &str, now: u64) -> AuthOutcome {
        let ch = self.swipe(ORDER, AMOUNT, now);
        let s = self.submission(&ch, ORDER, AMOUNT, pin);
        self.submit(&ch, &s, HOME, None, CREDIT, now)
    }

    fn card(&self) -> Card {
        self.center.card(CARD).unwrap()
    }
}

fn authorised(temporary_address_change: bool) -> AuthOutcome {
    AuthOutcome::Authorised(Authorisation {
        order_id: ORDER.into(),
        amount_cents: AMOUNT,
        card_last4: "7890".into(),
        account: "alice".into(),
        reader_id: READER.into(),
        temporary_address_change,
    })
}

// ---------------------------------------------------------------------------------------------
// The whole flow

#[test]
fn a_bound_card_with_the_right_pin_is_authorised() {
    let mut f = fixture();
    let ch = f.swipe(ORDER, AMOUNT, T0);
    assert_eq!(ch.expires_at, T0 + 120);
    assert!(ch.challenge_id.starts_with("ch_"));
    assert_eq!(ch.prompt(), Prompt::enter_pin());
    assert_eq!(f.center.outstanding_challenges(), 1);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    let out = f.submit(&ch, &s, HOME, None, CREDIT, T0 + 5);
    assert_eq!(out, authorised(false));
    assert!(out.is_authorised());
    assert_eq!(f.card().last_counter, 1);
    assert_eq!(
        f.center.outstanding_challenges(),
        0,
        "the challenge is used up"
    );
    // The same message again: the challenge is gone.
    assert_eq!(
        f.submit(&ch, &s, HOME, None, CREDIT, T0 + 6),
        AuthOutcome::TimedOut
    );
}

#[test]
fn issue_card_returns_the_derived_card_key() {
    let f = fixture();
    assert_eq!(f.key, derive_card_key(&master(), CARD));
    assert_eq!(f.card().status, CardStatus::Active);
    assert_eq!(f.card().last_counter, 0);
    let token = f.center.card_token(CARD);
    let pvk = derive_pin_key(&master());
    assert_eq!(
        f.card().pin_verifier,
        pin_verifier(&pvk, &token, PIN).unwrap(),
        "the stored verifier is the keyed MAC of the card and its PIN"
    );
}

// ---------------------------------------------------------------------------------------------
// Identity (F13)

#[test]
fn wrong_pins_are_counted_and_lock_the_card_until_an_administrator_unlocks_it() {
    let mut f = fixture();
    assert_eq!(f.pay("0000", T0), AuthOutcome::WrongPin { tries_left: 2 });
    assert_eq!(f.card().pin_failures, 1);
    assert_eq!(f.pay("1111", T0), AuthOutcome::WrongPin { tries_left: 1 });
    assert_eq!(f.pay("2222", T0), AuthOutcome::CardLocked);
    assert_eq!(f.card().status, CardStatus::Locked);
    assert_eq!(f.card().pin_failures, 3);

    // A locked card gets no challenge, even with the right PIN.
    let refused = f
        .center
        .swipe(READER, CARD, home_peer(), ORDER, AMOUNT, T0, &mut f.rng)
        .unwrap_err();
    assert_eq!(refused, SwipeRefusal::CardLocked);
    assert_eq!(refused.prompt(), Prompt::card_locked());

    f.center.unlock_card(CARD, &mut f.changes).unwrap();
    assert_eq!(f.card().status, CardStatus::Active);
    assert_eq!(f.card().pin_failures, 0);
    assert_eq!(f.pay(PIN, T0 + 1), authorised(false));
}

#[test]
fn a_right_pin_resets_the_failure_count() {
    let mut f = fixture();
    assert_eq!(f.pay("0000", T0), AuthOutcome::WrongPin { tries_left: 2 });
    assert_eq!(f.pay("0000", T0), AuthOutcome::WrongPin { tries_left: 1 });
    assert_eq!(f.pay(PIN, T0), authorised(false));
    assert_eq!(f.card().pin_failures, 0);
    assert_eq!(f.pay("0000", T0), AuthOutcome::WrongPin { tries_left: 2 });
}

#[test]
fn the_failure_limit_is_configurable() {
    let mut f = fixture_with(AuthConfig {
        max_pin_failures: 1,
        ..AuthConfig::default()
    });
    assert_eq!(f.pay("0000", T0), AuthOutcome::CardLocked);
    assert_eq!(f.card().status, CardStatus::Locked);
}

#[test]
fn a_card_reported_lost_after_the_swipe_is_refused_at_authentication() {
    let mut f = fixture();
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    f.center.report_lost(CARD, &mut f.changes).unwrap();
    assert_eq!(
        f.submit(&ch, &s, HOME, None, CREDIT, T0),
        AuthOutcome::CardLost
    );
    assert_eq!(f.card().last_counter, 0, "nothing recorded for a lost card");
}

// ---------------------------------------------------------------------------------------------
// Card authenticity

#[test]
fn a_replayed_or_stale_counter_is_refused() {
    let mut f = fixture();
    f.counter = 4;
    assert_eq!(f.pay(PIN, T0), authorised(false));
    assert_eq!(f.card().last_counter, 5);

    // Same counter, correct cryptogram for a fresh challenge: a replayed counter.
    for stale in [5, 3, 0] {
        let ch = f.swipe(ORDER, AMOUNT, T0);
        let mut s = f.submission(&ch, ORDER, AMOUNT, PIN);
        s.counter = stale;
        s.cryptogram = cryptogram(&f.key, &ch.challenge, ORDER, AMOUNT, stale)
            .unwrap()
            .to_vec();
        let out = f.submit(&ch, &s, HOME, None, CREDIT, T0);
        assert_eq!(out, AuthOutcome::Replayed, "counter {stale}");
        assert_eq!(out.prompt(), Prompt::card_not_recognised());
        assert_eq!(f.card().last_counter, 5);
        assert_eq!(
            f.card().pin_failures,
            0,
            "no PIN check after a refused cryptogram"
        );
    }

    // A counter that jumps ahead is fine.
    f.counter = 99;
    assert_eq!(f.pay(PIN, T0), authorised(false));
    assert_eq!(f.card().last_counter, 100);
}

#[test]
fn a_wrong_cryptogram_is_refused_and_records_nothing() {
    let mut f = fixture();
    let other_card_key = derive_card_key(&master(), CARD_BOB);
    let other_issuer_key = derive_card_key(&IssuerKey::from_bytes([1u8; 32]), CARD);
    let cases: Vec<(&str, CryptogramMutation)> = vec![
        ("flipped bit", Box::new(|_, c| c[0] ^= 1)),
        ("last byte", Box::new(|_, c| c[15] ^= 0x80)),
        ("truncated", Box::new(|_, c| c.truncate(15))),
        ("extended", Box::new(|_, c| c.push(0))),
        ("empty", Box::new(|_, c| c.clear())),
        (
            "another card's key",
            Box::new(move |ch, c| {
                *c = cryptogram(&other_card_key, &ch.challenge, ORDER, AMOUNT, 1)
                    .unwrap()
                    .to_vec()
            }),
        ),
        (
            "another issuer's key",
            Box::new(move |ch, c| {
                *c = cryptogram(&other_issuer_key, &ch.challenge, ORDER, AMOUNT, 1)
                    .unwrap()
                    .to_vec()
            }),
        ),
        (
            "another order",
            Box::new(|ch, c| {
                *c = cryptogram(&f_key(), &ch.challenge, "order-2", AMOUNT, 1)
                    .unwrap()
                    .to_vec()
            }),
        ),
        (
            "another amount",
            Box::new(|ch, c| {
                *c = cryptogram(&f_key(), &ch.challenge, ORDER, AMOUNT + 1, 1)
                    .unwrap()
                    .to_vec()
            }),
        ),
        (
            "another challenge",
            Box::new(|_, c| {
                *c = cryptogram(&f_key(), &[0u8; 16], ORDER, AMOUNT, 1)
                    .unwrap()
                    .to_vec()
            }),
        ),
    ];
    for (name, mutate) in cases {
        let ch = f.swipe(ORDER, AMOUNT, T0);
        f.counter = 0;
        let mut s = f.submission(&ch, ORDER, AMOUNT, PIN);
        assert_eq!(s.counter, 1);
        mutate(&ch, &mut s.cryptogram);
        let out = f.submit(&ch, &s, HOME, None, CREDIT, T0);
        assert_eq!(out, AuthOutcome::BadCryptogram, "{name}");
        assert_eq!(out.prompt(), Prompt::card_not_recognised());
        assert_eq!(f.card().last_counter, 0, "{name}: counter not recorded");
        assert_eq!(
            f.center.outstanding_challenges(),
            0,
            "{name}: challenge used up"
        );
    }
    // Counter 1 is still unused, so the genuine card goes through with it.
    f.counter = 0;
    assert_eq!(f.pay(PIN, T0), authorised(false));
}

type CryptogramMutation = Box<dyn Fn(&ChallengeIssued, &mut Vec<u8>)>;
type PinTampering = fn(&mut EncryptedPin);

fn f_key() -> CardKey {
    derive_card_key(&master(), CARD)
}

// ---------------------------------------------------------------------------------------------
// Binding (F2, I9)

#[test]
fn a_card_works_only_on_its_own_reader() {
    let mut f = fixture();
    let mut swipe = |reader: &str, card: &str, peer: IpAddr| {
        f.center
            .swipe(reader, card, peer, ORDER, AMOUNT, T0, &mut f.rng)
            .map(|_| ())
    };
    // Alice's card on Bob's reader (from Bob's network), and the other way round.
    assert_eq!(
        swipe(READER_BOB, CARD, bob_peer()),
        Err(SwipeRefusal::CardNotBound)
    );
    assert_eq!(
        swipe(READER, CARD_BOB, home_peer()),
        Err(SwipeRefusal::CardNotBound)
    );
    // A card nobody issued.
    assert_eq!(
        swipe(READER, "4000000000000000", home_peer()),
        Err(SwipeRefusal::CardNotBound)
    );
    // A reader nobody registered.
    assert_eq!(
        swipe("RDR-NOBODY", CARD, home_peer()),
        Err(SwipeRefusal::UnknownReader)
    );
    assert_eq!(swipe(READER, CARD, home_peer()), Ok(()));
    for refusal in [
        SwipeRefusal::CardNotBound,
        SwipeRefusal::UnknownReader,
        SwipeRefusal::WrongNetwork,
    ] {
        assert_eq!(
            refusal.prompt().text,
            "This card does not belong to this reader"
        );
        assert_eq!(refusal.prompt().sound, SoundCue::Error);
    }
}

#[test]
fn an_authorisation_is_never_for_a_card_on_a_reader_it_is_not_bound_to() {
    // I9 through the whole flow: the only outcome that names a reader names the bound one.
    let mut f = fixture();
    let out = f.pay(PIN, T0);
    match out {
        AuthOutcome::Authorised(a) => {
            assert_eq!(a.card_last4, CARD[CARD.len() - 4..]);
            assert_eq!(f.center.reader_of_card(CARD).unwrap().id, a.reader_id)
        }
        other => panic!("{other:?}"),
    }
}

fn accepts(f: &mut Fixture, reader: &str, card: &str, peer: &str) -> Result<(), SwipeRefusal> {
    let peer: IpAddr = peer.parse().unwrap();
    f.center
        .swipe(reader, card, peer, ORDER, AMOUNT, T0, &mut f.rng)
        .map(|_| ())
}

#[test]
fn the_reader_must_connect_from_its_registered_ipv4_network() {
    let mut f = fixture_with(AuthConfig {
        refused_swipes_per_minute: 100,
        ..AuthConfig::default()
    });
    for ok in [
        "192.168.1.0",
        "192.168.1.1",
        "192.168.1.255",
        "::ffff:192.168.1.9",
    ] {
        assert_eq!(accepts(&mut f, READER, CARD, ok), Ok(()), "{ok}");
    }
    for bad in [
        "192.168.0.255",
        "192.168.2.0",
        "10.0.0.1",
        "::ffff:192.168.2.9",
        "::192.168.1.9",
        "2001:db8:1::20",
        "::1",
    ] {
        assert_eq!(
            accepts(&mut f, READER, CARD, bad),
            Err(SwipeRefusal::WrongNetwork),
            "{bad}"
        );
    }
}

#[test]
fn the_reader_must_connect_from_its_registered_ipv6_network() {
    let mut f = fixture_with(AuthConfig {
        refused_swipes_per_minute: 100,
        ..AuthConfig::default()
    });
    for ok in [
        "2001:db8:1::",
        "2001:db8:1::1",
        "2001:db8:1:ffff:ffff:ffff:ffff:ffff",
    ] {
        assert_eq!(accepts(&mut f, READER_BOB, CARD_BOB, ok), Ok(()), "{ok}");
    }
    for bad in [
        "2001:db8:2::",
        "2001:db8:0:ffff:ffff:ffff:ffff:ffff",
        "2001:db9:1::1",
        "192.168.1.20",
    ] {
        assert_eq!(
            accepts(&mut f, READER_BOB, CARD_BOB, bad),
            Err(SwipeRefusal::WrongNetwork),
            "{bad}"
        );
    }
}

#[test]
fn a_single_address_registration_accepts_only_that_address() {
    let mut rng = StdRng::seed_from_u64(1);
    let center = AuthCenter::new(
        master(),
        AuthConfig {
            refused_swipes_per_minute: 100,
            ..AuthConfig::default()
        },
    );
    let mut changes = Vec::new();
    center
        .issue_card(CARD, "alice", PIN, HOME, &mut changes)
        .unwrap();
    center
        .issue_card(CARD_BOB, "bob", PIN, HOME, &mut changes)
        .unwrap();
    center
        .register_reader(
            NewReader {
                id: "v4".into(),
                owner: "alice".into(),
                card_number: CARD.into(),
                account: "alice".into(),
                network: "203.0.113.7/32".parse().unwrap(),
            },
            &mut changes,
        )
        .unwrap();
    center
        .register_reader(
            NewReader {
                id: "v6".into(),
                owner: "bob".into(),
                card_number: CARD_BOB.into(),
                account: "bob".into(),
                network: "2001:db8::7/128".parse().unwrap(),
            },
            &mut changes,
        )
        .unwrap();
    let mut try_peer = |reader: &str, card: &str, peer: &str| {
        center
            .swipe(
                reader,
                card,
                peer.parse().unwrap(),
                ORDER,
                AMOUNT,
                T0,
                &mut rng,
            )
            .map(|_| ())
    };
    assert_eq!(try_peer("v4", CARD, "203.0.113.7"), Ok(()));
    assert_eq!(
        try_peer("v4", CARD, "203.0.113.6"),
        Err(SwipeRefusal::WrongNetwork)
    );
    assert_eq!(
        try_peer("v4", CARD, "203.0.113.8"),
        Err(SwipeRefusal::WrongNetwork)
    );
    assert_eq!(try_peer("v6", CARD_BOB, "2001:db8::7"), Ok(()));
    assert_eq!(
        try_peer("v6", CARD_BOB, "2001:db8::6"),
        Err(SwipeRefusal::WrongNetwork)
    );
    assert_eq!(
        try_peer("v6", CARD_BOB, "2001:db8::8"),
        Err(SwipeRefusal::WrongNetwork)
    );
}

#[test]
fn bindings_are_one_to_one() {
    let mut f = fixture();
    let reader = |id: &str, card: &str, account: &str| NewReader {
        id: id.into(),
        owner: "someone".into(),
        card_number: card.into(),
        account: account.into(),
        network: "10.0.0.0/8".parse().unwrap(),
    };
    // A second reader for Alice's card.
    assert_eq!(
        f.center
            .register_reader(reader("RDR-2", CARD, "alice"), &mut f.changes),
        Err(CardError::CardAlreadyBound {
            card: "************7890".into(),
            reader: READER.into()
        })
    );
    // A second binding for Alice's reader.
    assert_eq!(
        f.center
            .register_reader(reader(READER, CARD_BOB, "bob"), &mut f.changes),
        Err(CardError::DuplicateReader(READER.into()))
    );
    // A reader for a card nobody issued, or for someone else's account.
    f.center
        .issue_card("4000005555555555", "carol", PIN, HOME, &mut f.changes)
        .unwrap();
    assert_eq!(
        f.center
            .register_reader(reader("RDR-3", "4000000000000000", "carol"), &mut f.changes),
        Err(CardError::UnknownCard("************0000".into()))
    );
    assert_eq!(
        f.center.register_reader(
            reader("RDR-3", "4000005555555555", "mallory"),
            &mut f.changes
        ),
        Err(CardError::AccountMismatch {
            account: "mallory".into(),
            card: "************5555".into()
        })
    );
    assert_eq!(
        f.center
            .register_reader(reader("", "4000005555555555", "carol"), &mut f.changes),
        Err(CardError::InvalidField { field: "reader id" })
    );
    assert_eq!(
        f.center
            .register_reader(reader("RDR-3", "4000005555555555", "carol"), &mut f.changes),
        Ok(())
    );
    assert_eq!(
        f.center.reader_of_card("4000005555555555").unwrap().id,
        "RDR-3"
    );
}

#[test]
fn issuing_checks_number_pin_and_duplicates() {
    let mut f = fixture();
    let mut issue = |number: &str, pin: &str| {
        f.center
            .issue_card(number, "dave", pin, HOME, &mut f.changes)
            .map(|_| ())
    };
    assert_eq!(
        issue(CARD, PIN),
        Err(CardError::DuplicateCard("************7890".into()))
    );
    assert_eq!(issue("40000012345", PIN), Err(CardError::InvalidCardNumber));
    assert_eq!(
        issue("40000012345678901234", PIN),
        Err(CardError::InvalidCardNumber)
    );
    assert_eq!(
        issue("4000-0012-3456-78", PIN),
        Err(CardError::InvalidCardNumber)
    );
    assert_eq!(issue("400000123456", "12a4"), Err(CardError::InvalidPin));
    assert_eq!(issue("400000123456", PIN), Ok(()));
    assert_eq!(issue("4000001234567890123", PIN), Ok(()));
}

// ---------------------------------------------------------------------------------------------
// Card status

#[test]
fn a_lost_card_is_refused_and_cannot_be_unlocked() {
    let mut f = fixture();
    f.center.report_lost(CARD, &mut f.changes).unwrap();
    assert_eq!(f.card().status, CardStatus::Lost);
    let refused = f
        .center
        .swipe(READER, CARD, home_peer(), ORDER, AMOUNT, T0, &mut f.rng)
        .unwrap_err();
    assert_eq!(refused, SwipeRefusal::CardLost);
    assert_eq!(refused.prompt(), Prompt::card_lost());
    assert_eq!(
        f.center.unlock_card(CARD, &mut f.changes),
        Err(CardError::CardLost("************7890".into()))
    );
    assert_eq!(f.card().status, CardStatus::Lost);
    assert_eq!(
        f.center.report_lost("4000000000000000", &mut f.changes),
        Err(CardError::UnknownCard("************0000".into()))
    );
}

#[test]
fn a_lock_out_also_ends_the_previous_challenge_of_the_reader() {
    let mut f = fixture_with(AuthConfig {
        max_pin_failures: 1,
        ..AuthConfig::default()
    });
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(f.pay("0000", T0), AuthOutcome::CardLocked);
    // `ch` was replaced by the swipe inside `pay`, and the card is locked anyway.
    assert_eq!(
        f.submit(&ch, &s, HOME, None, CREDIT, T0),
        AuthOutcome::TimedOut
    );
    assert_eq!(f.card().status, CardStatus::Locked);
}

// ---------------------------------------------------------------------------------------------
// Address (F14)

#[test]
fn the_registered_address_matches_regardless_of_case_and_spacing() {
    let mut f = fixture();
    for address in [
        HOME,
        "  12 rue des lilas,   75011 PARIS ",
        "12\tRue des Lilas,\n75011 Paris",
        "",
        "   ",
    ] {
        let ch = f.swipe(ORDER, AMOUNT, T0);
        let s = f.submission(&ch, ORDER, AMOUNT, PIN);
        assert_eq!(
            f.submit(&ch, &s, address, None, CREDIT, T0),
            authorised(false),
            "{address:?}"
        );
    }
    assert!(!same_address(HOME, "12 Rue des Lilas, 75012 Paris"));
    assert!(!same_address(HOME, "12 Rue desLilas, 75011 Paris"));
    assert_eq!(normalise_address("  A  b\tC "), "a b c");
}

#[test]
fn a_different_address_is_asked_then_confirmed() {
    let mut f = fixture();
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    let out = f.submit(&ch, &s, "5 Quai Voltaire, Paris", None, CREDIT, T0);
    assert_eq!(out, AuthOutcome::ConfirmAddressChange);
    assert_eq!(out.prompt(), Prompt::confirm_address_change());
    assert_eq!(
        f.center.outstanding_challenges(),
        1,
        "the challenge waits for the answer"
    );
    assert_eq!(f.card().last_counter, 1, "card and PIN are proven");

    let out =
        f.center
            .confirm_address_change(&ch.challenge_id, true, CREDIT, T0 + 30, &mut f.changes);
    assert_eq!(out, authorised(true));
    assert_eq!(
        f.card().registered_address,
        HOME,
        "the change is for this order only"
    );
    assert_eq!(f.center.outstanding_challenges(), 0);
    // Answering twice does nothing.
    assert_eq!(
        f.center
            .confirm_address_change(&ch.challenge_id, true, CREDIT, T0 + 31, &mut f.changes),
        AuthOutcome::TimedOut
    );
}

#[test]
fn a_different_address_is_asked_then_declined() {
    let mut f = fixture();
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", None, CREDIT, T0),
        AuthOutcome::ConfirmAddressChange
    );
    let out =
        f.center
            .confirm_address_change(&ch.challenge_id, false, CREDIT, T0 + 1, &mut f.changes);
    assert_eq!(out, AuthOutcome::AddressChangeDeclined);
    assert_eq!(out.prompt(), Prompt::address_change_declined());
    assert_eq!(f.center.outstanding_challenges(), 0);
}

#[test]
fn the_address_decision_can_be_given_up_front() {
    let mut f = fixture();
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", Some(true), CREDIT, T0),
        authorised(true)
    );
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", Some(false), CREDIT, T0),
        AuthOutcome::AddressChangeDeclined
    );
    // A decision about an address that does not differ changes nothing.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, HOME, Some(false), CREDIT, T0),
        authorised(false)
    );
}

#[test]
fn the_address_question_comes_after_the_pin_and_before_credit() {
    let mut f = fixture();
    // A wrong PIN is reported before the address question.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, "0000");
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", None, 0, T0),
        AuthOutcome::WrongPin { tries_left: 2 }
    );
    // The address question before the credit refusal, then the credit refusal.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", None, 0, T0),
        AuthOutcome::ConfirmAddressChange
    );
    assert_eq!(
        f.center
            .confirm_address_change(&ch.challenge_id, true, AMOUNT - 1, T0, &mut f.changes),
        AuthOutcome::CreditRefused {
            amount_cents: AMOUNT,
            available_cents: AMOUNT - 1
        }
    );
}

#[test]
fn the_address_answer_is_only_taken_for_a_waiting_challenge_in_time() {
    let mut f = fixture();
    // A challenge that was never authenticated cannot skip to the answer.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    assert_eq!(
        f.center
            .confirm_address_change(&ch.challenge_id, true, CREDIT, T0, &mut f.changes),
        AuthOutcome::TimedOut
    );
    assert_eq!(f.center.outstanding_challenges(), 0);

    // The answer after the challenge expired.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", None, CREDIT, T0),
        AuthOutcome::ConfirmAddressChange
    );
    assert_eq!(
        f.center.confirm_address_change(
            &ch.challenge_id,
            true,
            CREDIT,
            ch.expires_at,
            &mut f.changes
        ),
        AuthOutcome::TimedOut
    );

    // Sending the same cryptogram again instead of answering: a replay, which ends it.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", None, CREDIT, T0),
        AuthOutcome::ConfirmAddressChange
    );
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", Some(true), CREDIT, T0),
        AuthOutcome::Replayed
    );
    assert_eq!(
        f.center
            .confirm_address_change(&ch.challenge_id, true, CREDIT, T0, &mut f.changes),
        AuthOutcome::TimedOut
    );

    // The card reported lost while the consumer reads the question.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, "elsewhere", None, CREDIT, T0),
        AuthOutcome::ConfirmAddressChange
    );
    f.center.report_lost(CARD, &mut f.changes).unwrap();
    assert_eq!(
        f.center
            .confirm_address_change(&ch.challenge_id, true, CREDIT, T0, &mut f.changes),
        AuthOutcome::CardLost
    );
}

// ---------------------------------------------------------------------------------------------
// Credit (F15)

#[test]
fn an_amount_above_the_available_credit_is_refused() {
    let mut f = fixture();
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    let out = f.submit(&ch, &s, HOME, None, AMOUNT - 1, T0);
    assert_eq!(
        out,
        AuthOutcome::CreditRefused {
            amount_cents: AMOUNT,
            available_cents: AMOUNT - 1
        }
    );
    assert_eq!(
        out.prompt().text,
        "Amount above your available credit: please choose another means of payment"
    );
    assert_eq!(f.card().pin_failures, 0);
    // Exactly the available credit is fine.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(f.submit(&ch, &s, HOME, None, AMOUNT, T0), authorised(false));
}

// ---------------------------------------------------------------------------------------------
// Challenges

#[test]
fn a_challenge_expires_after_its_ttl() {
    let mut f = fixture();
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, HOME, None, CREDIT, T0 + 120),
        AuthOutcome::TimedOut
    );
    assert_eq!(
        f.center.outstanding_challenges(),
        0,
        "an expired challenge is dropped"
    );
    assert_eq!(f.card().last_counter, 0);

    // One second earlier is still in time.
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&ch, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&ch, &s, HOME, None, CREDIT, T0 + 119),
        authorised(false)
    );

    // Unknown ids and purging.
    assert_eq!(
        f.center.authenticate(
            "ch_nope",
            9,
            &[0; 16],
            &s.pin,
            HOME,
            None,
            CREDIT,
            T0,
            |_| false,
            &mut f.changes
        ),
        AuthOutcome::TimedOut
    );
    f.swipe(ORDER, AMOUNT, T0);
    f.center.purge_expired(T0 + 119);
    assert_eq!(f.center.outstanding_challenges(), 1);
    f.center.purge_expired(T0 + 120);
    assert_eq!(f.center.outstanding_challenges(), 0);
}

#[test]
fn the_agreement_key_lasts_its_epoch_and_a_challenge_keeps_its_own_across_the_change() {
    let mut f = fixture();
    let end = T0 + AGREEMENT_KEY_LIFETIME_SECS;
    let first = f.swipe(ORDER, AMOUNT, T0);
    // The reader keeps its pair while the node's key stays.
    let mut reader_keys = ReaderPinKeys::default();
    let mut submission = |f: &mut Fixture, ch: &ChallengeIssued, pin: &str| {
        let mut s = f.submission(ch, ORDER, AMOUNT, PIN);
        s.pin = reader_keys
            .encrypt(&ch.node_public, &ch.challenge, pin, &mut f.rng)
            .unwrap();
        s
    };
    let s = submission(&mut f, &first, PIN);
    assert_eq!(
        f.submit(&first, &s, HOME, None, CREDIT, T0),
        authorised(false)
    );
    // A wrong PIN under the kept agreement is still a wrong PIN, not an unreadable one.
    let second = f.swipe(ORDER, AMOUNT, end - 1);
    assert_eq!(second.node_public, first.node_public, "the same epoch");
    let s = submission(&mut f, &second, "0000");
    let kept_pair = s.pin.reader_public;
    assert_eq!(
        f.submit(&second, &s, HOME, None, CREDIT, end - 1),
        AuthOutcome::WrongPin { tries_left: 2 }
    );
    // Issued at the epoch's last second, answered after it: its key still reads it.
    let third = f.swipe(ORDER, AMOUNT, end - 1);
    let s = submission(&mut f, &third, PIN);
    assert_eq!(s.pin.reader_public, kept_pair);
    assert_eq!(
        f.submit(&third, &s, HOME, None, CREDIT, end + 5),
        authorised(false)
    );
    // The next epoch: a new key, and the reader a new pair.
    let fourth = f.swipe(ORDER, AMOUNT, end);
    assert_ne!(fourth.node_public, first.node_public, "a new epoch");
    let s = submission(&mut f, &fourth, PIN);
    assert_ne!(s.pin.reader_public, kept_pair);
    assert_eq!(
        f.submit(&fourth, &s, HOME, None, CREDIT, end),
        authorised(false)
    );
    // A PIN encrypted to the old epoch's key does not read under the new one.
    let fifth = f.swipe(ORDER, AMOUNT, end + 1);
    let mut s = f.submission(&fifth, ORDER, AMOUNT, PIN);
    s.pin = encrypt_pin(&first.node_public, &fifth.challenge, PIN, &mut f.rng).unwrap();
    assert_eq!(
        f.submit(&fifth, &s, HOME, None, CREDIT, end + 1),
        AuthOutcome::PinUnreadable
    );

    // Past the second epoch, a purge (the engine's tick) lets the key go even with no swipe.
    assert!(f.center.holds_agreement_key());
    f.center
        .purge_expired(end + AGREEMENT_KEY_LIFETIME_SECS - 1);
    assert!(f.center.holds_agreement_key());
    f.center.purge_expired(end + AGREEMENT_KEY_LIFETIME_SECS);
    assert!(!f.center.holds_agreement_key());
}

#[test]
fn a_new_swipe_replaces_the_readers_outstanding_challenge() {
    let mut f = fixture();
    let first = f.swipe(ORDER, AMOUNT, T0);
    let second = f.swipe("order-2", 10, T0);
    assert_ne!(first.challenge_id, second.challenge_id);
    assert_ne!(first.challenge, second.challenge);
    assert_eq!(f.center.outstanding_challenges(), 1);
    let s = f.submission(&first, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&first, &s, HOME, None, CREDIT, T0),
        AuthOutcome::TimedOut
    );
    // A challenge covers its own order and amount only.
    let s = f.submission(&second, ORDER, AMOUNT, PIN);
    assert_eq!(
        f.submit(&second, &s, HOME, None, CREDIT, T0),
        AuthOutcome::BadCryptogram
    );
}

#[test]
fn a_swipe_for_an_invalid_order_is_refused() {
    let mut f = fixture();
    let long = "x".repeat(129);
    for (order, amount) in [("", 1), (long.as_str(), 1), (ORDER, 0)] {
        let refused = f
            .center
            .swipe(READER, CARD, home_peer(), order, amount, T0, &mut f.rng)
            .unwrap_err();
        assert_eq!(refused, SwipeRefusal::InvalidOrder);
        assert_eq!(refused.prompt(), Prompt::invalid_order());
    }
    let max = "y".repeat(128);
    f.center
        .swipe(READER, CARD, home_peer(), &max, 1, T0, &mut f.rng)
        .unwrap();
}

#[test]
fn a_sign_in_is_for_zero_and_only_a_sign_in_is() {
    let mut f = fixture();
    let refused = f
        .center
        .swipe(READER, CARD, home_peer(), "signin-1", 5, T0, &mut f.rng)
        .unwrap_err();
    assert_eq!(refused, SwipeRefusal::InvalidOrder);
    f.center
        .swipe(READER, CARD, home_peer(), "signin-2", 0, T0, &mut f.rng)
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Rate limit on refused swipes

#[test]
fn refused_swipes_are_rate_limited_per_reader_for_a_minute() {
    let mut f = fixture();
    let away: IpAddr = "10.1.2.3".parse().unwrap();
    for i in 0..5 {
        let refused = f
            .center
            .swipe(READER, CARD, away, ORDER, AMOUNT, T0 + i, &mut f.rng)
            .unwrap_err();
        assert_eq!(refused, SwipeRefusal::WrongNetwork, "refusal {i}");
    }
    // The limit is reached: even a perfect swipe is refused unchecked until T0 + 60.
    for t in [T0 + 5, T0 + 59] {
        let refused = f
            .center
            .swipe(READER, CARD, home_peer(), ORDER, AMOUNT, t, &mut f.rng)
            .unwrap_err();
        assert_eq!(refused, SwipeRefusal::RateLimited { retry_at: T0 + 60 });
        assert_eq!(refused.prompt().text, "Too many attempts: wait a minute");
    }
    // Other readers are not affected; unknown readers are simply refused.
    assert!(f
        .center
        .swipe(
            READER_BOB,
            CARD_BOB,
            bob_peer(),
            ORDER,
            AMOUNT,
            T0 + 10,
            &mut f.rng
        )
        .is_ok());
    for _ in 0..10 {
        assert_eq!(
            f.center
                .swipe(
                    "RDR-NOBODY",
                    CARD,
                    home_peer(),
                    ORDER,
                    AMOUNT,
                    T0,
                    &mut f.rng
                )
                .unwrap_err(),
            SwipeRefusal::UnknownReader
        );
    }
    // The window passes.
    assert!(f
        .center
        .swipe(
            READER,
            CARD,
            home_peer(),
            ORDER,
            AMOUNT,
            T0 + 60,
            &mut f.rng
        )
        .is_ok());
    // A new window counts from its first refusal.
    for i in 0..5 {
        assert_eq!(
            f.center
                .swipe(
                    READER,
                    CARD_BOB,
                    home_peer(),
                    ORDER,
                    AMOUNT,
                    T0 + 100 + i,
                    &mut f.rng
                )
                .unwrap_err(),
            SwipeRefusal::CardNotBound
        );
    }
    assert_eq!(
        f.center
            .swipe(
                READER,
                CARD,
                home_peer(),
                ORDER,
                AMOUNT,
                T0 + 159,
                &mut f.rng
            )
            .unwrap_err(),
        SwipeRefusal::RateLimited { retry_at: T0 + 160 }
    );
    assert!(f
        .center
        .swipe(
            READER,
            CARD,
            home_peer(),
            ORDER,
            AMOUNT,
            T0 + 160,
            &mut f.rng
        )
        .is_ok());
}

#[test]
fn refusals_in_an_old_window_do_not_count() {
    let mut f = fixture();
    let away: IpAddr = "10.1.2.3".parse().unwrap();
    for t in [T0, T0 + 20, T0 + 40, T0 + 59] {
        f.center
            .swipe(READER, CARD, away, ORDER, AMOUNT, t, &mut f.rng)
            .unwrap_err();
    }
    // Window [T0, T0+60) had 4 refusals; the next two fall into a new window.
    for t in [T0 + 60, T0 + 61] {
        assert_eq!(
            f.center
                .swipe(READER, CARD, away, ORDER, AMOUNT, t, &mut f.rng)
                .unwrap_err(),
            SwipeRefusal::WrongNetwork
        );
    }
    assert!(f
        .center
        .swipe(
            READER,
            CARD,
            home_peer(),
            ORDER,
            AMOUNT,
            T0 + 62,
            &mut f.rng
        )
        .is_ok());
}

// ---------------------------------------------------------------------------------------------
// PIN transport and storage

// (The transport itself is tested in `onecard_protocol::pin`.)

#[test]
fn a_tampered_encrypted_pin_is_refused_and_not_counted() {
    let mut f = fixture();
    let tamperings: Vec<(&str, PinTampering)> = vec![
        ("ciphertext", |e| e.ciphertext[0] ^= 1),
        ("tag", |e| {
            let n = e.ciphertext.len();
            e.ciphertext[n - 1] ^= 1
        }),
        ("nonce", |e| e.nonce[3] ^= 1),
        ("reader key", |e| e.reader_public[7] ^= 1),
        ("low-order reader key", |e| e.reader_public = [0u8; 32]),
        ("truncated", |e| e.ciphertext.truncate(10)),
        ("empty", |e| e.ciphertext.clear()),
        ("too long", |e| e.ciphertext.resize(64, 0)),
    ];
    for (name, tamper) in tamperings {
        let ch = f.swipe(ORDER, AMOUNT, T0);
        let mut s = f.submission(&ch, ORDER, AMOUNT, PIN);
        tamper(&mut s.pin);
        let out = f.submit(&ch, &s, HOME, None, CREDIT, T0);
        assert_eq!(out, AuthOutcome::PinUnreadable, "{name}");
        assert_eq!(out.prompt(), Prompt::pin_unreadable());
        assert_eq!(f.card().pin_failures, 0, "{name}: not a wrong PIN");
        assert_eq!(f.card().status, CardStatus::Active);
    }
    // A PIN encrypted for another challenge (replayed from an earlier session).
    let old = f.swipe(ORDER, AMOUNT, T0);
    let old_pin = f.submission(&old, ORDER, AMOUNT, PIN).pin;
    let ch = f.swipe(ORDER, AMOUNT, T0);
    let mut s = f.submission(&ch, ORDER, AMOUNT, PIN);
    s.pin = old_pin;
    assert_eq!(
        f.submit(&ch, &s, HOME, None, CREDIT, T0),
        AuthOutcome::PinUnreadable
    );
}

#[test]
fn pin_verifiers_match_only_the_right_pin_of_the_right_card_under_the_right_key() {
    let pvk = derive_pin_key(&master());
    let token = card_token(&derive_token_key(&master()), CARD);
    let v = pin_verifier(&pvk, &token, "0042").unwrap();
    assert!(verify_pin(&pvk, &token, &v, "0042"));
    for wrong in ["0043", "042", "00420", "", "abcd", "0042 "] {
        assert!(!verify_pin(&pvk, &token, &v, wrong), "{wrong:?}");
    }
    // Bound to the card: the same PIN on another card gives another verifier.
    let other = card_token(&derive_token_key(&master()), CARD_BOB);
    assert_ne!(pin_verifier(&pvk, &other, "0042").unwrap(), v);
    assert!(!verify_pin(&pvk, &other, &v, "0042"));
    // And to the key: another issuer's key gives another verifier.
    let other_key = derive_pin_key(&IssuerKey::from_bytes([10u8; 32]));
    assert_ne!(pin_verifier(&other_key, &token, "0042").unwrap(), v);
    assert!(!verify_pin(&other_key, &token, &v, "0042"));
    // Deterministic: no salt is needed, the key is the secret.
    assert_eq!(pin_verifier(&pvk, &token, "0042").unwrap(), v);
    assert_eq!(format!("{v:?}"), "PinVerifier(<keyed>)");
    assert_eq!(format!("{pvk:?}"), "PinKey(<secret>)");

    for bad in ["123", "1234567890123", "12 4", "+123", "١٢٣٤"] {
        assert_eq!(
            pin_verifier(&pvk, &token, bad).unwrap_err(),
            CardError::InvalidPin,
            "{bad:?}"
        );
    }
    assert!(pin_verifier(&pvk, &token, "1234").is_ok());
    assert!(pin_verifier(&pvk, &token, "123456789012").is_ok());
}

#[test]
fn pin_verifiers_serialise_as_hex_and_nothing_else_is_accepted() {
    let pvk = derive_pin_key(&master());
    let v = pin_verifier(&pvk, &"ab".repeat(32), "7777").unwrap();
    let json = serde_json::to_string(&v).unwrap();
    assert_eq!(json.len(), 2 + 64);
    assert!(!json.contains("7777"));
    let back: PinVerifier = serde_json::from_str(&json).unwrap();
    assert_eq!(back, v);
    for bad in [
        "\"7777\"",
        "\"\"",
        &format!("\"{}\"", "zz".repeat(32)),
        &format!("\"{}\"", "ab".repeat(31)),
    ] {
        assert!(serde_json::from_str::<PinVerifier>(bad).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Prompts (F3)

#[test]
fn every_outcome_has_its_prompt_and_sound() {
    use SoundCue::*;
    let cases: Vec<(Prompt, &str, SoundCue)> = vec![
        (Prompt::enter_pin(), "Enter your PIN", Attention),
        (
            AuthOutcome::TimedOut.prompt(),
            "Session timed out: swipe again",
            Error,
        ),
        (
            AuthOutcome::CardLocked.prompt(),
            "Card locked: contact your bank",
            Locked,
        ),
        (
            AuthOutcome::CardLost.prompt(),
            "Card reported lost: contact your bank",
            Locked,
        ),
        (
            AuthOutcome::BadCryptogram.prompt(),
            "Card not recognised",
            Error,
        ),
        (AuthOutcome::Replayed.prompt(), "Card not recognised", Error),
        (
            AuthOutcome::PinUnreadable.prompt(),
            "PIN could not be read: swipe again",
            Error,
        ),
        (
            AuthOutcome::WrongPin { tries_left: 2 }.prompt(),
            "Wrong PIN, 2 tries left",
            Error,
        ),
        (
            AuthOutcome::WrongPin { tries_left: 1 }.prompt(),
            "Wrong PIN, 1 try left",
            Error,
        ),
        (
            AuthOutcome::ConfirmAddressChange.prompt(),
            "Delivery address differs from your registered one: confirm this one-time change?",
            Attention,
        ),
        (
            AuthOutcome::AddressChangeDeclined.prompt(),
            "Payment cancelled: delivery address not confirmed",
            Error,
        ),
        (
            AuthOutcome::CreditRefused {
                amount_cents: 2,
                available_cents: 1,
            }
            .prompt(),
            "Amount above your available credit: please choose another means of payment",
            Error,
        ),
        (authorised(false).prompt(), "Payment authorised", Ok),
        (
            SwipeRefusal::RateLimited { retry_at: 0 }.prompt(),
            "Too many attempts: wait a minute",
            Error,
        ),
        (
            SwipeRefusal::UnknownReader.prompt(),
            "This card does not belong to this reader",
            Error,
        ),
        (
            SwipeRefusal::CardNotBound.prompt(),
            "This card does not belong to this reader",
            Error,
        ),
        (
            SwipeRefusal::WrongNetwork.prompt(),
            "This card does not belong to this reader",
            Error,
        ),
        (
            SwipeRefusal::CardLocked.prompt(),
            "Card locked: contact your bank",
            Locked,
        ),
        (
            SwipeRefusal::CardLost.prompt(),
            "Card reported lost: contact your bank",
            Locked,
        ),
        (
            SwipeRefusal::InvalidOrder.prompt(),
            "Order not valid: return to the shop",
            Error,
        ),
    ];
    for (prompt, text, sound) in cases {
        assert_eq!(prompt.text, text);
        assert_eq!(prompt.sound, sound, "{text}");
        assert!(
            prompt.text.len() <= 90,
            "short enough for a reader display: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// I10: masking, and what is stored

#[test]
fn card_numbers_are_masked_in_every_text() {
    assert_eq!(mask_card_number(CARD), "************7890");
    assert_eq!(mask_card_number("12345"), "*2345");
    assert_eq!(mask_card_number("1234"), "****");
    assert_eq!(mask_card_number(""), "");

    let mut f = fixture();
    let out = f.pay(PIN, T0);
    let texts = [
        format!("{:?}", f.card()),
        format!("{:?}", f.center.reader(READER).unwrap()),
        format!("{out:?}"),
        format!("{:?}", f.center),
        format!("{:?}", f.center.state()),
        CardError::DuplicateCard(mask_card_number(CARD)).to_string(),
        format!("{:?}", f.key),
        format!("{:?}", derive_token_key(&master())),
        format!(
            "{:?}",
            NewReader {
                id: READER.into(),
                owner: "Alice Martin".into(),
                card_number: CARD.into(),
                account: "alice".into(),
                network: "192.168.1.0/24".parse().unwrap(),
            }
        ),
    ];
    for text in texts {
        assert!(!text.contains(CARD), "full card number in {text}");
        assert!(!text.contains("2580"), "PIN in {text}");
    }
    assert!(format!("{out:?}").contains("************7890"));
    assert!(format!("{:?}", f.card()).contains("************7890"));
    assert!(format!("{:?}", f.card()).contains("PinVerifier(<keyed>)"));
    assert_eq!(mask_last4("7890"), "************7890");
}

#[test]
fn the_node_keeps_a_token_and_the_last_four_digits_never_the_card_number() {
    let mut f = fixture();
    let token = card_token(&derive_token_key(&master()), CARD);
    assert_eq!(f.center.card_token(CARD), token);
    assert_eq!(f.card().token, token);
    assert_eq!(f.card().last4, "7890");
    assert_eq!(f.center.reader(READER).unwrap().card_token, token);
    assert_eq!(f.center.state().card_by_token(&token), Some(&f.card()));
    assert_eq!(f.center.card(CARD_BOB).unwrap().last4, "3210");

    // Everything the node journals and stores, through every kind of change.
    let mut changes = std::mem::take(&mut f.changes);
    assert_eq!(f.pay("0000", T0), AuthOutcome::WrongPin { tries_left: 2 });
    assert_eq!(f.pay(PIN, T0), authorised(false));
    f.center
        .set_registered_address(CARD, "2 New Road", &mut f.changes)
        .unwrap();
    f.center.report_lost(CARD_BOB, &mut f.changes).unwrap();
    changes.extend(std::mem::take(&mut f.changes));
    let stored = [
        serde_json::to_string(&f.center.state()).unwrap(),
        serde_json::to_string(&changes).unwrap(),
    ];
    let binary = bincode::serialize(&changes).unwrap();
    for number in [CARD, CARD_BOB] {
        for text in &stored {
            assert!(!text.contains(number), "full card number stored: {text}");
        }
        assert!(
            !binary.windows(number.len()).any(|w| w == number.as_bytes()),
            "full card number in the journaled changes"
        );
    }
    assert!(stored[0].contains(&token) && stored[0].contains("\"last4\":\"7890\""));
    let verifier = String::from(f.card().pin_verifier);
    assert!(!stored[1].contains(PIN) && stored[1].contains(&verifier));
}

#[test]
fn a_token_is_only_matched_by_its_card_number_under_its_issuer_key() {
    let mut f = fixture();
    // Another number with the same last four digits is another card.
    assert_eq!(
        f.center
            .swipe(
                READER,
                "4000000000007890",
                home_peer(),
                ORDER,
                AMOUNT,
                T0,
                &mut f.rng
            )
            .map(|_| ()),
        Err(SwipeRefusal::CardNotBound)
    );
    assert!(f.center.card("4000000000007890").is_none());
    // Tokens are keyed by the issuer master key: a store restored under another key loads (a
    // token cannot be checked without the number) but none of its cards matches a swipe.
    let other = AuthCenter::new(IssuerKey::from_bytes([10u8; 32]), AuthConfig::default());
    assert_ne!(other.card_token(CARD), f.center.card_token(CARD));
    let restored =
        AuthCenter::from_state(IssuerKey::from_bytes([10u8; 32]), f.center.state().clone())
            .unwrap();
    assert!(restored.card(CARD).is_none());
    assert_eq!(
        restored
            .swipe(READER, CARD, home_peer(), ORDER, AMOUNT, T0, &mut f.rng)
            .map(|_| ()),
        Err(SwipeRefusal::CardNotBound)
    );
}

#[test]
fn a_stored_card_with_a_malformed_token_or_last_four_is_refused() {
    let f = fixture();
    let json = serde_json::to_string(&f.center.state()).unwrap();
    let token = f.center.card_token(CARD);
    for (what, tampered) in [
        (
            "upper-case token",
            json.replace(&token, &token.to_uppercase()),
        ),
        ("short token", json.replace(&token, &token[1..])),
        (
            "last four",
            json.replace("\"last4\":\"7890\"", "\"last4\":\"78x0\""),
        ),
        (
            "full number as last four",
            json.replace("\"last4\":\"7890\"", &format!("\"last4\":\"{CARD}\"")),
        ),
    ] {
        assert_ne!(tampered, json, "{what}");
        let state: AuthState = serde_json::from_str(&tampered).unwrap();
        assert_eq!(
            AuthCenter::from_state(master(), state).err(),
            Some(CardError::InvalidCardToken),
            "{what}"
        );
    }
    // A reader whose card token names no card.
    let tampered = json.replace(
        &format!("\"card_token\":\"{token}\""),
        &format!("\"card_token\":\"{}\"", "0".repeat(64)),
    );
    let state: AuthState = serde_json::from_str(&tampered).unwrap();
    assert_eq!(
        AuthCenter::from_state(master(), state).err(),
        Some(CardError::UnknownCard("with token 00000000…".into()))
    );
}

#[test]
fn the_state_round_trips_but_challenges_do_not_survive_a_restart() {
    let mut f = fixture();
    assert_eq!(f.pay("0000", T0), AuthOutcome::WrongPin { tries_left: 2 });
    let pending = f.swipe(ORDER, AMOUNT, T0);
    let s = f.submission(&pending, ORDER, AMOUNT, PIN);

    let json = serde_json::to_string(&f.center.state()).unwrap();
    assert!(json.contains("\"network\":\"192.168.1.0/24\""));
    assert!(json.contains(&String::from(f.card().pin_verifier)));
    let state: AuthState = serde_json::from_str(&json).unwrap();
    assert_eq!(state, f.center.state());

    let restarted = AuthCenter::from_state(master(), state).unwrap();
    assert_eq!(restarted.outstanding_challenges(), 0);
    assert_eq!(restarted.card(CARD).unwrap().pin_failures, 1);
    assert_eq!(restarted.card(CARD).unwrap().last_counter, 1);
    assert_eq!(restarted.reader_of_card(CARD).unwrap().id, READER);
    assert_eq!(
        restarted.authenticate(
            &pending.challenge_id,
            s.counter,
            &s.cryptogram,
            &s.pin,
            HOME,
            None,
            CREDIT,
            T0,
            |_| false,
            &mut f.changes
        ),
        AuthOutcome::TimedOut
    );
    // The restarted center still checks bindings and cryptograms with the same master key.
    let mut rng = StdRng::seed_from_u64(99);
    let ch = restarted
        .swipe(READER, CARD, home_peer(), ORDER, AMOUNT, T0, &mut rng)
        .unwrap();
    let c = cryptogram(&f.key, &ch.challenge, ORDER, AMOUNT, 7).unwrap();
    let pin = encrypt_pin(&ch.node_public, &ch.challenge, PIN, &mut rng).unwrap();
    assert_eq!(
        restarted.authenticate(
            &ch.challenge_id,
            7,
            &c,
            &pin,
            HOME,
            None,
            CREDIT,
            T0,
            |_| false,
            &mut f.changes
        ),
        authorised(false)
    );
    // Defaults fill in a missing configuration.
    let partial: AuthConfig = serde_json::from_str("{\"max_pin_failures\":5}").unwrap();
    assert_eq!(partial.challenge_ttl_secs, 120);
    assert_eq!(partial.refused_swipes_per_minute, 5);
}

#[test]
fn an_inconsistent_stored_state_is_refused() {
    let f = fixture();
    let json = serde_json::to_string(&f.center.state()).unwrap();
    // Bob's reader pointed at Alice's card: two readers for one card, and the wrong account.
    let tampered = json.replace(
        &format!("\"card_token\":\"{}\"", f.center.card_token(CARD_BOB)),
        &format!("\"card_token\":\"{}\"", f.center.card_token(CARD)),
    );
    assert_ne!(tampered, json);
    let state: AuthState = serde_json::from_str(&tampered).unwrap();
    assert!(AuthCenter::from_state(master(), state).is_err());
    let bad_net = json.replace("192.168.1.0/24", "192.168.1.0/33");
    assert!(serde_json::from_str::<AuthState>(&bad_net).is_err());
}

// ---------------------------------------------------------------------------------------------
// Properties

#[derive(Clone, Debug)]
enum Mutation {
    ChallengeByte(usize, u8),
    Order(String),
    Amount(u64),
    Counter(u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0usize..16, 1u8..=255).prop_map(|(i, x)| Mutation::ChallengeByte(i, x)),
        "[a-zA-Z0-9-]{1,40}"
            .prop_filter("another order", |o| o != ORDER)
            .prop_map(Mutation::Order),
        (1u64..=u64::MAX).prop_map(Mutation::Amount),
        (1u32..=u32::MAX).prop_map(Mutation::Counter),
    ]
}

#[derive(Clone, Copy, Debug)]
enum PinOp {
    Right,
    Wrong,
    Unlock,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A cryptogram computed over anything but the exact challenge, order, amount and counter
    /// of the submission is refused, and records nothing.
    #[test]
    fn any_change_to_what_the_cryptogram_covers_is_refused(m in mutation()) {
        let mut f = fixture();
        let ch = f.swipe(ORDER, AMOUNT, T0);
        let mut s = f.submission(&ch, ORDER, AMOUNT, PIN);
        let (mut challenge, mut order, mut amount, mut counter) =
            (ch.challenge, ORDER.to_string(), AMOUNT, s.counter);
        match m {
            Mutation::ChallengeByte(i, x) => challenge[i] ^= x,
            Mutation::Order(o) => order = o,
            Mutation::Amount(x) => amount ^= x,
            Mutation::Counter(x) => counter ^= x,
        }
        s.cryptogram = cryptogram(&f.key, &challenge, &order, amount, counter).unwrap().to_vec();
        prop_assert_eq!(f.submit(&ch, &s, HOME, None, CREDIT, T0), AuthOutcome::BadCryptogram);
        prop_assert_eq!(f.card().last_counter, 0);
        prop_assert_eq!(f.card().pin_failures, 0);
    }

    /// PIN failures, lock-out and unlock follow a simple model.
    #[test]
    fn pin_failures_follow_the_model(ops in proptest::collection::vec(
        prop_oneof![Just(PinOp::Right), Just(PinOp::Wrong), Just(PinOp::Unlock)], 0..12)
    ) {
        const MAX: u32 = 3;
        let mut f = fixture();
        let (mut locked, mut failures) = (false, 0u32);
        for (i, op) in ops.into_iter().enumerate() {
            // A minute and more apart, so the refused-swipe limiter never interferes.
            let now = T0 + 61 * i as u64;
            match op {
                PinOp::Unlock => {
                    f.center.unlock_card(CARD, &mut f.changes).unwrap();
                    locked = false;
                    failures = 0;
                }
                PinOp::Right | PinOp::Wrong => {
                    if locked {
                        let refused = f.center
                            .swipe(READER, CARD, home_peer(), ORDER, AMOUNT, now, &mut f.rng)
                            .unwrap_err();
                        prop_assert_eq!(refused, SwipeRefusal::CardLocked);
                        continue;
                    }
                    let pin = if matches!(op, PinOp::Right) { PIN } else { "9999" };
                    let out = f.pay(pin, now);
                    let expected = if matches!(op, PinOp::Right) {
                        failures = 0;
                        authorised(false)
                    } else {
                        failures += 1;
                        if failures >= MAX {
                            locked = true;
                            AuthOutcome::CardLocked
                        } else {
                            AuthOutcome::WrongPin { tries_left: MAX - failures }
                        }
                    };
                    prop_assert_eq!(out, expected);
                }
            }
            prop_assert_eq!(f.card().pin_failures, failures);
            prop_assert_eq!(
                f.card().status,
                if locked { CardStatus::Locked } else { CardStatus::Active }
            );
        }
    }

    /// Case and whitespace never make an address differ.
    #[test]
    fn addresses_compare_without_case_and_spacing(
        words in proptest::collection::vec("[a-zA-Z0-9,]{1,8}", 1..6),
        seps in proptest::collection::vec(prop_oneof![Just(" "), Just("  "), Just("\t"), Just(" \n ")], 6),
        upper in any::<bool>(),
    ) {
        let registered = words.join(" ");
        let mut delivery = String::from(seps[0]);
        for (i, w) in words.iter().enumerate() {
            delivery.push_str(&if upper { w.to_uppercase() } else { w.to_lowercase() });
            delivery.push_str(seps[(i + 1) % seps.len()]);
        }
        prop_assert!(same_address(&registered, &delivery));
        let other = format!("{registered}x");
        prop_assert!(!same_address(&registered, &other));
    }
}

/// Replays every journaled change into a fresh state, as the node does on restart.
fn replayed(changes: &[AuthChange], config: AuthConfig) -> AuthState {
    let mut state = AuthState::new(config);
    for c in changes {
        state.apply(c);
    }
    state
}

#[test]
fn the_changes_taken_after_each_call_replay_to_the_same_state() {
    let mut f = fixture();
    let mut journal = std::mem::take(&mut f.changes);
    assert_eq!(journal.len(), 4, "two cards and two readers");
    let check = |f: &mut Fixture, journal: &mut Vec<AuthChange>, what: &str| {
        journal.extend(std::mem::take(&mut f.changes));
        assert_eq!(
            replayed(journal, AuthConfig::default()),
            f.center.state(),
            "after {what}"
        );
    };
    assert_eq!(f.pay(PIN, T0), authorised(false));
    check(&mut f, &mut journal, "a payment (counter)");
    for _ in 0..3 {
        f.pay("0000", T0);
    }
    assert_eq!(f.card().status, CardStatus::Locked);
    check(&mut f, &mut journal, "three wrong PINs (lock)");
    f.center.unlock_card(CARD, &mut f.changes).unwrap();
    check(&mut f, &mut journal, "unlock");
    f.center
        .set_registered_address(CARD, "2 New Road", &mut f.changes)
        .unwrap();
    check(&mut f, &mut journal, "address");
    // A refused cryptogram changes nothing, and nothing is taken.
    let ch = f.swipe("o-x", 10, T0);
    let mut s = f.submission(&ch, "o-x", 10, PIN);
    s.cryptogram[0] ^= 1;
    assert_eq!(
        f.submit(&ch, &s, HOME, None, CREDIT, T0),
        AuthOutcome::BadCryptogram
    );
    assert!(std::mem::take(&mut f.changes).is_empty());
    f.center.report_lost(CARD, &mut f.changes).unwrap();
    check(&mut f, &mut journal, "lost");
    // Restored from the replayed state, the center refuses what the original refuses.
    let restored =
        AuthCenter::from_state(master(), replayed(&journal, AuthConfig::default())).unwrap();
    assert_eq!(restored.card(CARD).unwrap().status, CardStatus::Lost);
    assert_eq!(
        restored.card(CARD).unwrap().last_counter,
        f.card().last_counter
    );
}
