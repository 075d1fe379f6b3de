//! The authentication center under concurrent use (issue 11): one authorisation per order, the
//! counter window, and authentications of many cards, and of one card, at once.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::auth::*;
use super::crypto::*;
use super::pin::*;

const T0: u64 = 1_000_000;
const CREDIT: u64 = 1_000_000;
const HOME: &str = "1 Main Street";
const PIN: &str = "2580";

fn master() -> IssuerKey {
    IssuerKey::from_bytes([3u8; 32])
}

fn card_number(i: usize) -> String {
    format!("40000{i:011}")
}

fn peer(i: usize) -> IpAddr {
    IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// A center with `n` cards, each bound to its own reader `R-i` at address `peer(i)`.
fn center_with_cards(n: usize, config: AuthConfig) -> (AuthCenter, Vec<CardKey>) {
    let center = AuthCenter::new(master(), config);
    let mut changes = Vec::new();
    let keys = (0..n)
        .map(|i| {
            let key = center
                .issue_card(&card_number(i), &format!("c-{i}"), PIN, HOME, &mut changes)
                .unwrap();
            center
                .register_reader(
                    NewReader {
                        id: format!("R-{i}"),
                        owner: format!("owner {i}"),
                        card_number: card_number(i),
                        account: format!("c-{i}"),
                        network: format!("{}/32", peer(i)).parse().unwrap(),
                    },
                    &mut changes,
                )
                .unwrap();
            key
        })
        .collect();
    (center, keys)
}

fn swipe(center: &AuthCenter, i: usize, order: &str, amount: u64, seed: u64) -> ChallengeIssued {
    center
        .swipe(
            &format!("R-{i}"),
            &card_number(i),
            peer(i),
            order,
            amount,
            T0,
            &mut StdRng::seed_from_u64(seed),
        )
        .expect("swipe accepted")
}

/// The card's cryptogram and `pin` encrypted, for challenge `ch`.
fn submission(
    key: &CardKey,
    ch: &ChallengeIssued,
    order: &str,
    amount: u64,
    counter: u32,
    pin: &str,
    seed: u64,
) -> (Vec<u8>, EncryptedPin) {
    let c = cryptogram(key, &ch.challenge, order, amount, counter).unwrap();
    let pin = encrypt_pin(
        &ch.node_public,
        &ch.challenge,
        pin,
        &mut StdRng::seed_from_u64(seed),
    )
    .unwrap();
    (c.to_vec(), pin)
}

#[allow(clippy::too_many_arguments)]
fn authenticate(
    center: &AuthCenter,
    ch: &ChallengeIssued,
    key: &CardKey,
    order: &str,
    amount: u64,
    counter: u32,
    pin: &str,
    log: &mut Vec<AuthChange>,
) -> AuthOutcome {
    let (c, p) = submission(key, ch, order, amount, counter, pin, u64::from(counter));
    center.authenticate(
        &ch.challenge_id,
        counter,
        &c,
        &p,
        HOME,
        None,
        CREDIT,
        T0 + 1,
        |_| false,
        log,
    )
}

#[test]
fn a_counter_may_jump_only_within_the_window_and_a_refused_jump_keeps_the_challenge() {
    let (center, keys) = center_with_cards(1, AuthConfig::default());
    let mut log = Vec::new();
    let ch = swipe(&center, 0, "o-1", 500, 1);
    for too_far in [1_001, 5_000, u32::MAX] {
        assert_eq!(
            authenticate(&center, &ch, &keys[0], "o-1", 500, too_far, PIN, &mut log),
            AuthOutcome::CounterOutOfWindow,
            "{too_far}"
        );
        assert_eq!(
            center.outstanding_challenges(),
            1,
            "the challenge stays usable"
        );
    }
    assert!(log.is_empty(), "a refused jump changes nothing");
    assert_eq!(center.card(&card_number(0)).unwrap().last_counter, 0);
    assert_eq!(
        AuthOutcome::CounterOutOfWindow.prompt(),
        super::prompt::Prompt::counter_out_of_window()
    );
    // The same challenge with a counter within the window: authorised.
    let out = authenticate(&center, &ch, &keys[0], "o-1", 500, 1_000, PIN, &mut log);
    assert!(out.is_authorised(), "{out:?}");
    assert_eq!(center.card(&card_number(0)).unwrap().last_counter, 1_000);
    // The window is counted from the last accepted counter.
    let ch = swipe(&center, 0, "o-2", 500, 2);
    assert_eq!(
        authenticate(&center, &ch, &keys[0], "o-2", 500, 2_001, PIN, &mut log),
        AuthOutcome::CounterOutOfWindow
    );
    let out = authenticate(&center, &ch, &keys[0], "o-2", 500, 2_000, PIN, &mut log);
    assert!(out.is_authorised(), "{out:?}");
}

#[test]
fn the_window_is_configurable() {
    let (center, keys) = center_with_cards(
        1,
        AuthConfig {
            max_counter_jump: 1,
            ..AuthConfig::default()
        },
    );
    let mut log = Vec::new();
    let ch = swipe(&center, 0, "o-1", 500, 1);
    assert_eq!(
        authenticate(&center, &ch, &keys[0], "o-1", 500, 2, PIN, &mut log),
        AuthOutcome::CounterOutOfWindow
    );
    assert!(authenticate(&center, &ch, &keys[0], "o-1", 500, 1, PIN, &mut log).is_authorised());
}

#[test]
fn an_order_takes_one_authorisation_and_a_second_payer_is_refused_before_the_pin() {
    let (center, keys) = center_with_cards(3, AuthConfig::default());
    let mut log = Vec::new();
    let order = "shared-order";
    // Alice and Bob swipe the same order; Alice pays first.
    let alice = swipe(&center, 0, order, 700, 1);
    let bob = swipe(&center, 1, order, 700, 2);
    let out = authenticate(&center, &alice, &keys[0], order, 700, 1, PIN, &mut log);
    let AuthOutcome::Authorised(a) = &out else {
        panic!("{out:?}")
    };
    assert_eq!(a.account, "c-0");
    // Bob, while Alice's authorisation is on its way to the record: refused, and his PIN is
    // not even looked at (a wrong one counts nothing).
    let out = authenticate(&center, &bob, &keys[1], order, 700, 1, "0000", &mut log);
    assert_eq!(out, AuthOutcome::OrderTaken);
    assert_eq!(out.prompt(), super::prompt::Prompt::order_taken());
    assert_eq!(center.card(&card_number(1)).unwrap().pin_failures, 0);
    assert_eq!(center.outstanding_challenges(), 0, "Bob's challenge ended");

    // Once Alice's authorisation is on record, the record refuses Carol.
    center.authorisation_recorded(order, &alice.challenge_id);
    let carol = swipe(&center, 2, order, 700, 3);
    let (c, p) = submission(&keys[2], &carol, order, 700, 1, PIN, 9);
    let out = center.authenticate(
        &carol.challenge_id,
        1,
        &c,
        &p,
        HOME,
        None,
        CREDIT,
        T0 + 1,
        |o| o == order,
        &mut log,
    );
    assert_eq!(out, AuthOutcome::OrderTaken);
}

#[test]
fn an_order_whose_first_payer_failed_can_still_be_paid() {
    let (center, keys) = center_with_cards(2, AuthConfig::default());
    let mut log = Vec::new();
    let order = "o-x";
    let alice = swipe(&center, 0, order, 700, 1);
    let bob = swipe(&center, 1, order, 700, 2);
    assert_eq!(
        authenticate(&center, &alice, &keys[0], order, 700, 1, "0000", &mut log),
        AuthOutcome::WrongPin { tries_left: 2 }
    );
    let out = authenticate(&center, &bob, &keys[1], order, 700, 1, PIN, &mut log);
    assert!(out.is_authorised(), "{out:?}");
}

#[test]
fn a_thousand_concurrent_authentications_on_different_cards_are_all_decided_right() {
    const CARDS: usize = 1_000;
    const THREADS: usize = 8;
    let (center, keys) = center_with_cards(CARDS, AuthConfig::default());
    let center = Arc::new(center);
    let keys = Arc::new(keys);
    // Every card swipes first; then all authenticate at once. Every seventh card sends a wrong
    // PIN, every eleventh a cryptogram for the wrong amount.
    let challenges: Arc<Vec<ChallengeIssued>> = Arc::new(
        (0..CARDS)
            .map(|i| swipe(&center, i, &format!("o-{i}"), 100 + i as u64, i as u64))
            .collect(),
    );
    let start = Arc::new(Barrier::new(THREADS));
    let logs: Vec<Vec<AuthChange>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (center, keys, challenges, start) =
                    (&center, &keys, &challenges, start.clone());
                s.spawn(move || {
                    let mut log = Vec::new();
                    start.wait();
                    for i in (t..CARDS).step_by(THREADS) {
                        let order = format!("o-{i}");
                        let amount = 100 + i as u64;
                        let pin = if i % 7 == 0 { "0000" } else { PIN };
                        let signed = if i % 11 == 0 { amount + 1 } else { amount };
                        let (c, p) =
                            submission(&keys[i], &challenges[i], &order, signed, 1, pin, i as u64);
                        let out = center.authenticate(
                            &challenges[i].challenge_id,
                            1,
                            &c,
                            &p,
                            HOME,
                            None,
                            CREDIT,
                            T0 + 1,
                            |_| false,
                            &mut log,
                        );
                        let expected = if i % 11 == 0 {
                            "bad_cryptogram"
                        } else if i % 7 == 0 {
                            "wrong_pin"
                        } else {
                            "authorised"
                        };
                        let got = match &out {
                            AuthOutcome::BadCryptogram => "bad_cryptogram",
                            AuthOutcome::WrongPin { tries_left: 2 } => "wrong_pin",
                            AuthOutcome::Authorised(a)
                                if a.account == format!("c-{i}")
                                    && a.order_id == order
                                    && a.amount_cents == amount =>
                            {
                                "authorised"
                            }
                            other => panic!("card {i}: {other:?}"),
                        };
                        assert_eq!(got, expected, "card {i}");
                    }
                    log
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(center.outstanding_challenges(), 0);
    let changed: usize = logs.iter().map(Vec::len).sum();
    assert_eq!(
        changed,
        CARDS - CARDS.div_ceil(11),
        "one journaled change per card whose cryptogram was right"
    );
    for i in 0..CARDS {
        let card = center.card(&card_number(i)).unwrap();
        let expected = if i % 11 == 0 { 0 } else { 1 };
        assert_eq!(card.last_counter, expected, "card {i}");
        let failures = u32::from(i % 7 == 0 && i % 11 != 0);
        assert_eq!(card.pin_failures, failures, "card {i}");
    }
}

#[test]
fn concurrent_authentications_of_one_card_use_each_challenge_once_and_the_counter_only_grows() {
    const THREADS: usize = 8;
    const ROUNDS: u32 = 50;
    let (center, keys) = center_with_cards(1, AuthConfig::default());
    let log = Mutex::new(Vec::<AuthChange>::new());
    for round in 0..ROUNDS {
        let order = format!("o-{round}");
        let ch = swipe(&center, 0, &order, 300, u64::from(round));
        let start = Barrier::new(THREADS);
        let winners = AtomicU32::new(0);
        std::thread::scope(|s| {
            for t in 0..THREADS as u32 {
                let (center, keys, ch, order, start, winners, log) =
                    (&center, &keys, &ch, &order, &start, &winners, &log);
                s.spawn(move || {
                    // Each thread its own counter, above every counter of earlier rounds.
                    let counter = round * 100 + 1 + t * 3;
                    let (c, p) = submission(&keys[0], ch, order, 300, counter, PIN, u64::from(t));
                    start.wait();
                    // The center's log is only ever appended to under the card's entry lock;
                    // the mutex here just gathers the threads' records in that order.
                    let mut mine = Vec::new();
                    let out = center.authenticate(
                        &ch.challenge_id,
                        counter,
                        &c,
                        &p,
                        HOME,
                        None,
                        CREDIT,
                        T0 + 1,
                        |_| false,
                        &mut RecordInto(log, &mut mine),
                    );
                    match out {
                        AuthOutcome::Authorised(_) => {
                            winners.fetch_add(1, Ordering::SeqCst);
                        }
                        AuthOutcome::TimedOut => {}
                        other => panic!("round {round} thread {t}: {other:?}"),
                    }
                });
            }
        });
        assert_eq!(winners.load(Ordering::SeqCst), 1, "round {round}: one use");
        center.authorisation_recorded(&order, &ch.challenge_id);
    }
    let counters: Vec<u32> = log
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|c| match c {
            AuthChange::Card(card) => card.last_counter,
            AuthChange::Reader(_) => panic!("no reader changes"),
        })
        .collect();
    assert_eq!(counters.len(), ROUNDS as usize);
    assert!(
        counters.windows(2).all(|w| w[0] < w[1]),
        "the journaled counter only grows: {counters:?}"
    );
}

/// A [`ChangeLog`] that appends to a shared list at the moment the center records (under the
/// card's lock), so the list's order is the order the center made the changes in.
struct RecordInto<'a>(&'a Mutex<Vec<AuthChange>>, &'a mut Vec<AuthChange>);

impl ChangeLog for RecordInto<'_> {
    fn record(&mut self, changes: Vec<AuthChange>, _authorised: Option<&Authorisation>) {
        self.1.extend(changes.iter().cloned());
        self.0.lock().unwrap().extend(changes);
    }
}

#[test]
fn a_lock_out_reached_concurrently_locks_exactly_at_the_limit() {
    const THREADS: usize = 8;
    let (center, keys) = center_with_cards(
        1,
        AuthConfig {
            refused_swipes_per_minute: 1_000,
            ..AuthConfig::default()
        },
    );
    let counter = AtomicU32::new(0);
    let wrong = AtomicU32::new(0);
    let locked = AtomicU32::new(0);
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (center, keys, counter, wrong, locked, start) =
                (&center, &keys, &counter, &wrong, &locked, &start);
            s.spawn(move || {
                let mut log = Vec::new();
                start.wait();
                for attempt in 0..50u64 {
                    let order = format!("o-{t}-{attempt}");
                    let Ok(ch) = center.swipe(
                        "R-0",
                        &card_number(0),
                        peer(0),
                        &order,
                        300,
                        T0,
                        &mut StdRng::seed_from_u64(attempt * 100 + t as u64),
                    ) else {
                        return; // locked: the swipe is refused
                    };
                    // The card's counter, as the one physical card would give it.
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    match authenticate(center, &ch, &keys[0], &order, 300, n, "0000", &mut log) {
                        AuthOutcome::WrongPin { .. } => {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        AuthOutcome::CardLocked => {
                            locked.fetch_add(1, Ordering::SeqCst);
                        }
                        // Another thread's swipe replaced this challenge, or its counter
                        // overtook this one: nothing was counted.
                        AuthOutcome::TimedOut | AuthOutcome::Replayed => {}
                        other => panic!("{other:?}"),
                    }
                }
            });
        }
    });
    let card = center.card(&card_number(0)).unwrap();
    assert_eq!(card.status, CardStatus::Locked);
    assert_eq!(card.pin_failures, 3, "locked exactly at max_pin_failures");
    assert_eq!(wrong.load(Ordering::SeqCst), 2);
    // The third wrong PIN locked it; any authentication decided after that sees it locked.
    assert!(locked.load(Ordering::SeqCst) >= 1);
}
