//! The reader program's payment flow with the card's applet in memory (no PC/SC) and the
//! authentication center in process: every way a payment can end at the reader, each with its
//! prompt, and nothing authorised by a broken exchange. (`pcsc_reader.rs` runs the same flow
//! over a real PC/SC stack.)

use std::net::{IpAddr, Ipv4Addr};

use onecard_engine::cards::{
    AuthCenter, AuthConfig, AuthOutcome, ChallengeIssued, EncryptedPin, IssuerKey, NewReader,
    Prompt, SoundCue, SwipeRefusal,
};
use onecard_sim::card::applet::CardApplet;
use onecard_terminal::channel::{CardChannel, CardIoError};
use onecard_terminal::flow::{
    self, prompts, Console, LinkError, NodeLink, PaymentEnd, PaymentRequest,
};
use onecard_testkit::LocalCenter;
use rand::rngs::StdRng;
use rand::SeedableRng;

const CARD: &str = "4000001234567890";
const PIN: &str = "2468";
const HOME: &str = "1 Main Street";

/// The applet in memory; can drop out after some exchanges, or cut its answers short.
struct MemoryCard {
    applet: CardApplet,
    exchanges: usize,
    fail_after: Option<(usize, CardIoError)>,
    truncate_answers_to: Option<usize>,
}

impl CardChannel for MemoryCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CardIoError> {
        if let Some((n, e)) = &self.fail_after {
            if self.exchanges >= *n {
                return Err(e.clone());
            }
        }
        self.exchanges += 1;
        let mut answer = self.applet.process(apdu);
        if let Some(n) = self.truncate_answers_to {
            answer.truncate(n);
        }
        Ok(answer)
    }
}

struct Consumer {
    pin: Option<String>,
    accept_address: bool,
    shown: Vec<Prompt>,
    asked: Vec<Prompt>,
}

impl Console for Consumer {
    fn show(&mut self, prompt: &Prompt) {
        self.shown.push(prompt.clone());
    }
    fn read_pin(&mut self) -> Option<String> {
        self.pin.clone()
    }
    fn confirm(&mut self, question: &Prompt) -> bool {
        self.asked.push(question.clone());
        self.accept_address
    }
}

fn setup() -> (AuthCenter, MemoryCard) {
    let center = AuthCenter::new(IssuerKey::from_bytes([3; 32]), AuthConfig::default());
    let mut changes = Vec::new();
    let key = center
        .issue_card(CARD, "alice", PIN, HOME, &mut changes)
        .unwrap();
    center
        .register_reader(
            NewReader {
                id: "reader-1".into(),
                owner: "alice".into(),
                card_number: CARD.into(),
                account: "alice".into(),
                network: "192.168.1.0/24".parse().unwrap(),
            },
            &mut changes,
        )
        .unwrap();
    let card = MemoryCard {
        applet: CardApplet::new(CARD.into(), "alice".into(), key, 0),
        exchanges: 0,
        fail_after: None,
        truncate_answers_to: None,
    };
    (center, card)
}

/// The authentication center as the reader program's node: the reader connects from its home
/// network, the account has 1000.00 of credit.
fn local(center: &mut AuthCenter) -> LocalCenter<'_, StdRng> {
    LocalCenter {
        center,
        changes: Vec::new(),
        peer: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)),
        available_credit_cents: 100_000,
        now: 50,
        rng: StdRng::seed_from_u64(10),
        reachable: true,
    }
}

fn consumer() -> Consumer {
    Consumer {
        pin: Some(PIN.into()),
        accept_address: true,
        shown: vec![],
        asked: vec![],
    }
}

fn order(id: &str, cents: u64, address: &str) -> PaymentRequest {
    PaymentRequest {
        reader_id: "reader-1".into(),
        order_id: id.into(),
        amount_cents: cents,
        delivery_address: address.into(),
    }
}

fn pay(
    node: &mut dyn NodeLink,
    card: &mut MemoryCard,
    who: &mut Consumer,
    req: &PaymentRequest,
) -> PaymentEnd {
    flow::pay(card, node, who, req, &mut StdRng::seed_from_u64(11))
}

#[test]
fn a_payment_goes_through_reading_pin_and_card_signature() {
    let (mut center, mut card) = setup();
    let mut node = local(&mut center);
    let mut who = consumer();
    let end = pay(&mut node, &mut card, &mut who, &order("o-1", 1_000, HOME));
    assert!(
        matches!(end, PaymentEnd::Authorised(ref a) if a.order_id == "o-1" && a.card_last4 == "7890"),
        "{end:?}"
    );
    assert_eq!(
        who.shown,
        vec![
            prompts::reading_card(),
            Prompt::enter_pin(),
            Prompt::authorised()
        ]
    );
    assert_eq!(who.shown.last().unwrap().sound, SoundCue::Ok);
    assert_eq!(card.applet.counter(), 1);
    assert_eq!(node.center.card(CARD).unwrap().last_counter, 1);
}

#[test]
fn a_wrong_pin_is_shown_with_the_tries_left_and_locks_the_card_at_the_limit() {
    let (mut center, mut card) = setup();
    let mut node = local(&mut center);
    let mut who = consumer();
    who.pin = Some("0000".into());
    for (i, tries_left) in [(1, 2), (2, 1)] {
        let end = pay(
            &mut node,
            &mut card,
            &mut who,
            &order(&format!("o-{i}"), 100, HOME),
        );
        assert_eq!(end, PaymentEnd::Refused(Prompt::wrong_pin(tries_left)));
    }
    let end = pay(&mut node, &mut card, &mut who, &order("o-3", 100, HOME));
    assert_eq!(end, PaymentEnd::Refused(Prompt::card_locked()));
    // Locked: even the right PIN gets no challenge now.
    who.pin = Some(PIN.into());
    let end = pay(&mut node, &mut card, &mut who, &order("o-4", 100, HOME));
    assert_eq!(end, PaymentEnd::Refused(Prompt::card_locked()));
}

#[test]
fn another_delivery_address_is_asked_about_and_recorded() {
    let (mut center, mut card) = setup();
    let mut node = local(&mut center);
    let mut who = consumer();
    let end = pay(
        &mut node,
        &mut card,
        &mut who,
        &order("o-1", 100, "9 Elsewhere Road"),
    );
    assert!(
        matches!(end, PaymentEnd::Authorised(ref a) if a.temporary_address_change),
        "{end:?}"
    );
    assert_eq!(who.asked, vec![Prompt::confirm_address_change()]);
    who.accept_address = false;
    let end = pay(
        &mut node,
        &mut card,
        &mut who,
        &order("o-2", 100, "9 Elsewhere Road"),
    );
    assert_eq!(end, PaymentEnd::Refused(Prompt::address_change_declined()));
}

#[test]
fn an_amount_above_the_available_credit_suggests_another_means_of_payment() {
    let (mut center, mut card) = setup();
    let mut node = local(&mut center);
    node.available_credit_cents = 500;
    let end = pay(
        &mut node,
        &mut card,
        &mut consumer(),
        &order("o-1", 501, HOME),
    );
    assert_eq!(end, PaymentEnd::Refused(Prompt::credit_refused()));
}

#[test]
fn a_card_pulled_or_a_reader_gone_aborts_with_its_prompt_and_authorises_nothing() {
    for (after, error, prompt) in [
        (0, CardIoError::CardRemoved, prompts::card_removed()),
        (2, CardIoError::CardRemoved, prompts::card_removed()),
        (
            2,
            CardIoError::ReaderGone("unplugged".into()),
            prompts::reader_gone(),
        ),
        (
            1,
            CardIoError::Unresponsive("mute".into()),
            prompts::card_unreadable(),
        ),
    ] {
        let (mut center, mut card) = setup();
        let mut node = local(&mut center);
        card.fail_after = Some((after, error.clone()));
        let mut who = consumer();
        let end = pay(&mut node, &mut card, &mut who, &order("o-1", 100, HOME));
        match end {
            PaymentEnd::Aborted { prompt: p, .. } => {
                assert_eq!(p, prompt, "{error:?} after {after}")
            }
            other => panic!("{error:?} after {after}: {other:?}"),
        }
        assert_eq!(node.center.card(CARD).unwrap().last_counter, 0);
    }
}

#[test]
fn truncated_answers_from_the_card_are_refused_cleanly() {
    for keep in [0, 1, 3, 10] {
        let (mut center, mut card) = setup();
        let mut node = local(&mut center);
        card.truncate_answers_to = Some(keep);
        let end = pay(
            &mut node,
            &mut card,
            &mut consumer(),
            &order("o-1", 100, HOME),
        );
        match end {
            PaymentEnd::Aborted { prompt, .. } => assert_eq!(prompt, prompts::card_unreadable()),
            other => panic!("answers cut to {keep} bytes: {other:?}"),
        }
    }
}

/// A consumer slower than the challenge's lifetime: the node's clock moves on after the swipe.
struct Slow<'a, 'c>(&'a mut LocalCenter<'c, StdRng>);

impl NodeLink for Slow<'_, '_> {
    fn swipe(
        &mut self,
        r: &str,
        c: &str,
        o: &str,
        a: u64,
    ) -> Result<Result<ChallengeIssued, SwipeRefusal>, LinkError> {
        let got = self.0.swipe(r, c, o, a);
        self.0.now += 10_000;
        got
    }
    fn authenticate(
        &mut self,
        id: &str,
        n: u32,
        c: &[u8],
        p: &EncryptedPin,
        d: &str,
    ) -> Result<AuthOutcome, LinkError> {
        self.0.authenticate(id, n, c, p, d)
    }
    fn confirm_address_change(&mut self, id: &str, a: bool) -> Result<AuthOutcome, LinkError> {
        self.0.confirm_address_change(id, a)
    }
}

#[test]
fn an_unreachable_node_a_cancelled_pin_and_a_timed_out_challenge_each_say_so() {
    let (mut center, mut card) = setup();
    let mut node = local(&mut center);
    node.reachable = false;
    let end = pay(
        &mut node,
        &mut card,
        &mut consumer(),
        &order("o-1", 100, HOME),
    );
    assert!(
        matches!(end, PaymentEnd::Aborted { ref prompt, .. } if *prompt == prompts::node_unreachable()),
        "{end:?}"
    );

    let (mut center, mut card) = setup();
    let mut node = local(&mut center);
    let mut who = consumer();
    who.pin = None;
    let end = pay(&mut node, &mut card, &mut who, &order("o-1", 100, HOME));
    assert!(
        matches!(end, PaymentEnd::Aborted { ref prompt, .. } if *prompt == prompts::cancelled()),
        "{end:?}"
    );

    let (mut center, mut card) = setup();
    let mut node = local(&mut center);
    let end = pay(
        &mut Slow(&mut node),
        &mut card,
        &mut consumer(),
        &order("o-1", 100, HOME),
    );
    assert_eq!(end, PaymentEnd::Refused(Prompt::timed_out()));
}

#[test]
fn an_unknown_card_gets_no_challenge() {
    let (mut center, _) = setup();
    let mut node = local(&mut center);
    let number = "4000000000000001";
    let key =
        onecard_engine::cards::crypto::derive_card_key(&IssuerKey::from_bytes([3; 32]), number);
    let mut stranger = MemoryCard {
        applet: CardApplet::new(number.into(), "mallory".into(), key, 0),
        exchanges: 0,
        fail_after: None,
        truncate_answers_to: None,
    };
    let end = pay(
        &mut node,
        &mut stranger,
        &mut consumer(),
        &order("o-1", 100, HOME),
    );
    assert_eq!(end, PaymentEnd::Refused(Prompt::not_bound()));
}
