//! The engine through its public API, with the real actors, journal and simulated bank:
//! isolation and ordering of actors, passivation, the account-state view, restarts and bad
//! input.

mod common;

use common::GatedBank;

use std::sync::Arc;
use std::time::Duration;

use onecard_engine::engine::{EngineConfig, OpenConsumer, PlaceOrder, RefundRequest};
use onecard_engine::ledger::LedgerState;
use onecard_engine::{Amount, Engine, Outcome, RefusalKind, SimBank, SimBankPort};
use serde_json::json;
use tokio::sync::watch;

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        arbiters: 2,
        ..EngineConfig::default()
    }
}

async fn open_consumer(
    engine: &Engine,
    bank: &SimBank,
    id: &str,
    limit: &str,
    balance: &str,
    wallet: &str,
) {
    let acct = format!("{id}-bank");
    bank.open_account(&acct, amount(balance)).unwrap();
    let req = OpenConsumer {
        consumer: id.into(),
        credit_limit: limit.into(),
        bank: acct,
        wallet: wallet.into(),
    };
    assert_eq!(engine.open_consumer(req, 0).await.unwrap(), Ok(Outcome::Ok));
}

fn order(id: &str, consumer: &str, amount: &str) -> PlaceOrder {
    PlaceOrder {
        id: id.into(),
        consumer: consumer.into(),
        merchant: "shop".into(),
        amount: amount.into(),
        release: json!({"on": "receipt"}),
    }
}

/// An engine configured with `cfg` on the simulated bank, with a merchant `shop` open.
async fn engine_with_shop(dir: &std::path::Path, cfg: EngineConfig) -> (Engine, Arc<SimBank>) {
    let sim = SimBank::open(dir).unwrap();
    let engine = Engine::open(dir, cfg, Arc::new(SimBankPort(sim.clone())))
        .await
        .unwrap();
    engine
        .open_merchant("shop", None, 0)
        .await
        .unwrap()
        .unwrap();
    (engine, sim)
}

/// An engine whose bank holds every debit of `alice-bank` until the returned gate opens, with
/// a merchant `shop` open.
async fn gated_engine(dir: &std::path::Path) -> (Engine, Arc<SimBank>, watch::Sender<bool>) {
    let sim = SimBank::open(dir).unwrap();
    let (open_gate, gate) = watch::channel(false);
    let port = GatedBank {
        inner: SimBankPort(sim.clone()),
        stuck_account: Some("alice-bank".into()),
        gate,
        external: false,
        debits: Default::default(),
    };
    let engine = Engine::open(dir, config(), Arc::new(port)).await.unwrap();
    engine
        .open_merchant("shop", None, 0)
        .await
        .unwrap()
        .unwrap();
    (engine, sim, open_gate)
}

#[test]
fn a_stuck_account_does_not_hold_up_other_accounts() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim, open_gate) = gated_engine(dir.path()).await;
        // Alice's wallet is empty, so her settlement must ask the (stuck) bank.
        open_consumer(&engine, &sim, "alice", "1000", "1000", "0").await;
        open_consumer(&engine, &sim, "bob", "1000", "9000", "5000").await;
        assert_eq!(
            engine
                .place_order(order("a1", "alice", "10"), 1)
                .await
                .unwrap(),
            Ok(Outcome::Accepted)
        );

        let alice = engine.confirm_receipt("a1", true, 2);
        let bob = async {
            assert_eq!(
                engine
                    .place_order(order("b1", "bob", "20"), 2)
                    .await
                    .unwrap(),
                Ok(Outcome::Accepted)
            );
            assert_eq!(
                engine.confirm_receipt("b1", true, 2).await.unwrap(),
                Ok(Outcome::Settled)
            );
            // Bob is done while Alice's settlement still waits for her bank: open the gate.
            open_gate.send(true).unwrap();
        };
        let (alice_result, ()) = futures::join!(alice, bob);
        assert_eq!(alice_result.unwrap(), Ok(Outcome::Settled));
        assert_eq!(
            engine.merchant("shop").await.unwrap().unwrap().balance,
            amount("30")
        );
        engine.close().await.unwrap();
    });
}

#[test]
fn a_stuck_account_keeps_its_own_commands_waiting_in_order() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim, open_gate) = gated_engine(dir.path()).await;
        open_consumer(&engine, &sim, "alice", "1000", "1000", "0").await;
        engine
            .place_order(order("a1", "alice", "10"), 1)
            .await
            .unwrap()
            .unwrap();
        let settle = engine.confirm_receipt("a1", true, 2);
        // Queued behind the stuck settlement: must see it settled, not pending.
        let cancel = engine.cancel_order("a1", 2);
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            open_gate.send(true).unwrap();
        };
        let (s, c, ()) = futures::join!(settle, cancel, release);
        assert_eq!(s.unwrap(), Ok(Outcome::Settled));
        assert_eq!(
            c.unwrap().unwrap_err().kind,
            RefusalKind::State,
            "the cancel ran after the settlement"
        );
        engine.close().await.unwrap();
    });
}

#[test]
fn commands_for_one_account_are_applied_in_the_order_they_were_sent() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim) = engine_with_shop(dir.path(), config()).await;
        open_consumer(&engine, &sim, "alice", "1000.00", "9000", "5000").await;
        // Twenty orders of 100.00 sent at once against a limit of 1000.00: in order, exactly
        // the first ten fit.
        let sends: Vec<_> = (0..20)
            .map(|i| engine.place_order(order(&format!("o{i:02}"), "alice", "100"), 1))
            .collect();
        let results = futures::future::join_all(sends).await;
        for (i, r) in results.into_iter().enumerate() {
            let r = r.unwrap();
            if i < 10 {
                assert_eq!(r, Ok(Outcome::Accepted), "order {i}");
            } else {
                assert_eq!(r.unwrap_err().kind, RefusalKind::Credit, "order {i}");
            }
        }
        for i in 0..20u64 {
            let o = engine.order(&format!("o{i:02}")).await.unwrap().unwrap();
            assert_eq!(o.placement, i, "placement follows sending order");
        }
        engine.close().await.unwrap();
    });
}

/// Runs a mixed workload, closing and reopening twice; returns the final state as the actors
/// hold it.
async fn workload(dir: &std::path::Path, cfg: EngineConfig) -> LedgerState {
    let mut expected = None;
    for round in 0..3u64 {
        let sim = SimBank::open(dir).unwrap();
        let engine = Engine::open(dir, cfg.clone(), Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap();
        if let Some(before) = expected.take() {
            let now: LedgerState = engine.ledger_state().await.unwrap();
            assert_same_accounts(&before, &now);
        }
        if round == 0 {
            engine
                .open_merchant("shop", None, 0)
                .await
                .unwrap()
                .unwrap();
            for c in ["alice", "bob", "carol"] {
                open_consumer(&engine, &sim, c, "3000", "50000", "5000").await;
            }
        }
        for i in 0..30u64 {
            let who = ["alice", "bob", "carol"][(i % 3) as usize];
            let id = format!("r{round}-{i}");
            let t = round * 100 + i;
            let placed = engine
                .place_order(order(&id, who, &format!("{}.25", 10 + i * 7)), t)
                .await
                .unwrap();
            if placed == Ok(Outcome::Accepted) && i % 4 != 0 {
                engine.confirm_receipt(&id, true, t).await.unwrap().unwrap();
                if i % 5 == 0 {
                    let req = RefundRequest {
                        id: format!("rf-{id}"),
                        order: id.clone(),
                        amount: "5.00".into(),
                    };
                    engine.refund(req, t).await.unwrap().unwrap();
                }
            }
        }
        engine.tick(round * 100 + 99).await.unwrap().unwrap();
        expected = Some(engine.ledger_state().await.unwrap());
        engine.close().await.unwrap();
        sim.close();
        assert_eq!(Arc::strong_count(&sim), 1, "the engine let go of the bank");
    }
    expected.unwrap()
}

fn assert_same_accounts(a: &LedgerState, b: &LedgerState) {
    assert_eq!(a.consumers, b.consumers, "consumers differ after reopening");
    assert_eq!(a.merchants, b.merchants, "merchants differ after reopening");
}

#[test]
fn reopening_rebuilds_exactly_the_state_the_actors_held() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let state = workload(dir.path(), config()).await;
        assert!(state.consumers["alice"].orders.len() >= 30);
        let report = onecard_engine::verify::verify(dir.path()).unwrap();
        assert_same_accounts(&state, &report.state);
    });
}

#[test]
fn the_account_state_view_equals_the_whole_journal_replayed_with_actors_passivated_throughout() {
    let dir = tempfile::tempdir().unwrap();
    // Idle actors are passivated every 10 ms: commands keep activating them from the view.
    let cfg = EngineConfig {
        passivate_after: Duration::ZERO,
        ..config()
    };
    let state = actix_rt::System::new().block_on(workload(dir.path(), cfg));
    // verify replays the journal from its first record and compares the view with it.
    let report = onecard_engine::verify::verify(dir.path()).unwrap();
    assert_eq!(report.view_checked, Some(report.records));
    assert_eq!(state, report.state, "the view is exactly the replay");
}

#[test]
fn passivation_racing_with_commands_loses_no_message_and_no_money() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cfg = EngineConfig {
            // The engine's own sweeper passivates every 10 ms on an actor thread, and the
            // racer below as often as it gets to run on this one.
            passivate_after: Duration::ZERO,
            ..config()
        };
        let (engine, sim) = engine_with_shop(dir.path(), cfg).await;
        let consumers = ["ann", "ben", "cat", "dan"];
        for c in consumers {
            open_consumer(&engine, &sim, c, "100000", "1000000", "5000").await;
        }
        let stop = std::sync::atomic::AtomicBool::new(false);
        let racer = async {
            let mut swept = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                // Every actor with nothing outstanding goes, right now.
                swept += engine.passivate_idle(Duration::ZERO);
                tokio::task::yield_now().await;
            }
            swept
        };
        const ORDERS: u64 = 60;
        const STREAMS: u64 = 3;
        let traffic = async {
            // Per consumer, three streams of commands in flight at once: an actor retired
            // while one of them is queued would let a second actor start from a stale view.
            let streams = consumers
                .iter()
                .flat_map(|c| (0..STREAMS).map(move |s| (c, s)));
            let per_stream = streams.map(|(c, s)| {
                let engine = &engine;
                async move {
                    for i in (s..ORDERS).step_by(STREAMS as usize) {
                        let id = format!("{c}-{i}");
                        // The same place twice at once: one order, one outcome.
                        let (a, b) = futures::join!(
                            engine.place_order(order(&id, c, "10.00"), i),
                            engine.place_order(order(&id, c, "10.00"), i)
                        );
                        assert_eq!(a.unwrap(), Ok(Outcome::Accepted), "{id}");
                        assert_eq!(b.unwrap(), Ok(Outcome::Accepted), "{id} repeated");
                        if i % 2 == 0 {
                            let r = engine.confirm_receipt(&id, true, i).await.unwrap();
                            assert_eq!(r, Ok(Outcome::Settled), "{id}");
                        }
                        // Now and then a pause, so that all streams of a consumer are idle
                        // at once and its actor can be passivated between commands.
                        if (i / STREAMS).is_multiple_of(3) {
                            tokio::time::sleep(Duration::from_millis(2 + s)).await;
                        }
                    }
                }
            });
            futures::future::join_all(per_stream).await;
            stop.store(true, std::sync::atomic::Ordering::Release);
        };
        let (swept, ()) = futures::join!(racer, traffic);
        let residency = engine.residency();
        let passivations = residency
            .passivations
            .load(std::sync::atomic::Ordering::Relaxed);
        let activations = residency
            .activations
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(passivations as usize >= swept);
        assert!(
            activations > consumers.len() as u64 && passivations > 0,
            "the race happened: {activations} activations, {passivations} passivations"
        );
        engine.passivate_idle(Duration::ZERO);
        assert_eq!(engine.resident_consumers(), 0, "idle actors leave memory");
        let activations = |e: &Engine| {
            e.residency()
                .activations
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = activations(&engine);
        assert!(engine.touch("ann").await.unwrap(), "touch activates");
        assert_eq!(activations(&engine), before + 1);
        assert!(!engine.touch("nobody").await.unwrap());
        assert_eq!(activations(&engine), before + 1);
        // (The sweeper may have retired ann again by now; nothing else may be resident.)
        assert!(
            engine.resident_consumers() <= 1,
            "no slot stays for an unknown name"
        );

        // Every acknowledged command is there, read back through fresh activations.
        for c in consumers {
            let state = engine.consumer(c).await.unwrap().unwrap();
            assert_eq!(
                state.orders.len() as u64,
                ORDERS / 2,
                "{c}: the open orders"
            );
            // Half settled (5000.00 wallet pays them), half still reserved.
            assert_eq!(state.reserved, amount("300.00"), "{c}");
            assert_eq!(state.wallet, amount("5000.00"), "{c}: topped up to the cap");
            for i in 0..ORDERS {
                let o = engine.order(&format!("{c}-{i}")).await.unwrap().unwrap();
                let expected = if i % 2 == 0 {
                    onecard_engine::OrderState::Settled
                } else {
                    onecard_engine::OrderState::Pending
                };
                assert_eq!(o.state, expected, "{c}-{i}");
            }
            // A command on a passivated consumer activates it with its open orders.
            let r = engine
                .confirm_receipt(&format!("{c}-1"), true, ORDERS)
                .await
                .unwrap();
            assert_eq!(r, Ok(Outcome::Settled));
        }
        let shop = engine.merchant("shop").await.unwrap().unwrap();
        assert_eq!(
            shop.balance,
            amount("1240.00"),
            "4 × (30 + 1) orders of 10.00"
        );
        let live = engine.ledger_state().await.unwrap();
        engine.close().await.unwrap();
        sim.close();
        let report = onecard_engine::verify::verify(dir.path()).unwrap();
        assert_eq!(live, report.state);
    });
}

#[test]
fn bad_input_gets_a_typed_refusal_and_changes_nothing() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim) = engine_with_shop(dir.path(), config()).await;
        open_consumer(&engine, &sim, "alice", "1000", "9000", "5000").await;
        engine
            .place_order(order("o1", "alice", "100"), 1)
            .await
            .unwrap()
            .unwrap();
        engine.cancel_order("o1", 1).await.unwrap().unwrap();
        let before = engine.ledger_state().await.unwrap();
        let bank_before = sim.total();

        let kind = |r: onecard_engine::CommandResult| r.unwrap_err().kind;
        assert_eq!(
            kind(
                engine
                    .place_order(order("x1", "mallory", "1"), 2)
                    .await
                    .unwrap()
            ),
            RefusalKind::Unknown
        );
        assert_eq!(
            kind(engine.confirm_receipt("nope", true, 2).await.unwrap()),
            RefusalKind::Unknown
        );
        assert_eq!(
            kind(engine.confirm_receipt("o1", true, 2).await.unwrap()),
            RefusalKind::State
        );
        let refund = RefundRequest {
            id: "r1".into(),
            order: "o1".into(),
            amount: "1.00".into(),
        };
        assert_eq!(
            kind(engine.refund(refund, 2).await.unwrap()),
            RefusalKind::State
        );
        for bad in ["12.345", "-1", "0", "abc", "", "1e3"] {
            assert_eq!(
                kind(
                    engine
                        .place_order(order("x2", "alice", bad), 2)
                        .await
                        .unwrap()
                ),
                RefusalKind::Amount,
                "{bad:?}"
            );
        }
        assert_eq!(
            kind(
                engine
                    .place_order(order("o1", "alice", "101"), 2)
                    .await
                    .unwrap()
            ),
            RefusalKind::Conflict
        );
        let mut malformed = order("x3", "alice", "1");
        malformed.release = json!({"on": "time", "after_secs": 0});
        assert_eq!(
            kind(engine.place_order(malformed, 2).await.unwrap()),
            RefusalKind::Invalid
        );

        let after = engine.ledger_state().await.unwrap();
        assert_same_accounts(&before, &after);
        assert_eq!(sim.total(), bank_before);
        for id in ["x1", "x2", "x3"] {
            assert!(
                engine.order(id).await.unwrap().is_none(),
                "{id} left a trace"
            );
        }
        engine.close().await.unwrap();
    });
}

/// Two refunds with one new id and different content, at once: the first is refused (more
/// than its order) and leaves no trace, so the second must be refunded, as in either serial
/// order; it used to get "conflict" while the first was in flight. The same for places: a
/// place of a new id held by a place of an unknown consumer goes ahead once that one is
/// refused.
#[test]
fn a_command_waits_for_another_holding_its_id_and_answers_as_a_serial_order_would() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim) = engine_with_shop(dir.path(), config()).await;
        open_consumer(&engine, &sim, "alice", "1000.00", "5000.00", "50.00").await;
        open_consumer(&engine, &sim, "bob", "1000.00", "5000.00", "50.00").await;
        for i in 0..20 {
            let (oa, ob) = (format!("oa{i}"), format!("ob{i}"));
            for (id, who) in [(&oa, "alice"), (&ob, "bob")] {
                let placed = engine
                    .place_order(order(id, who, "10.00"), 1)
                    .await
                    .unwrap();
                assert_eq!(placed, Ok(Outcome::Accepted));
                let settled = engine.confirm_receipt(id, true, 1).await.unwrap();
                assert_eq!(settled, Ok(Outcome::Settled));
            }
            let too_much = RefundRequest {
                id: format!("r{i}"),
                order: oa.clone(),
                amount: "50.00".into(),
            };
            let fine = RefundRequest {
                id: format!("r{i}"),
                order: ob.clone(),
                amount: "5.00".into(),
            };
            let (first, second) =
                futures::join!(engine.refund(too_much, 2), engine.refund(fine, 2));
            let first = first.unwrap();
            assert!(
                matches!(&first, Err(r) if r.kind != RefusalKind::Conflict),
                "the refund above its order is refused for what it is: {first:?}"
            );
            assert_eq!(second.unwrap(), Ok(Outcome::Refunded), "round {i}");

            // A place by an unknown consumer holds the id until it is refused; a place of the
            // same id by bob then goes ahead.
            let id = format!("p{i}");
            let (ghost, real) = futures::join!(
                engine.place_order(order(&id, "ghost", "10.00"), 3),
                engine.place_order(order(&id, "bob", "11.00"), 3)
            );
            let ghost = ghost.unwrap();
            assert!(
                matches!(&ghost, Err(r) if r.kind == RefusalKind::Unknown),
                "{ghost:?}"
            );
            assert_eq!(real.unwrap(), Ok(Outcome::Accepted), "round {i}");
        }
        engine.close().await.unwrap();
        let report = onecard_engine::verify::verify(dir.path()).unwrap();
        assert_eq!(report.state.consumers["bob"].refunds.len(), 20);
    });
}

#[test]
fn concurrent_opens_of_one_name_let_exactly_one_through() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), config(), Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap();
        for i in 0..8 {
            sim.open_account(&format!("b{i}"), amount("100")).unwrap();
        }
        // Eight opens of "alice" with eight different bank accounts, all at once.
        let opens = (0..8).map(|i| {
            let req = OpenConsumer {
                consumer: "alice".into(),
                credit_limit: "10".into(),
                bank: format!("b{i}"),
                wallet: "1".into(),
            };
            engine.open_consumer(req, 0)
        });
        let results = futures::future::join_all(opens).await;
        let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(e)) if e.kind == RefusalKind::Conflict))
            .count();
        assert_eq!((ok, conflicts), (1, 7));
        // Only the winner's wallet was filled: 1.00 left exactly one bank account.
        assert_eq!(sim.total(), amount("799"));
        engine.close().await.unwrap();
    });
}

#[test]
fn a_flood_gets_clear_overload_errors_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let accepted = actix_rt::System::new().block_on(async {
        let cfg = EngineConfig {
            max_in_flight: 16,
            ..config()
        };
        let (engine, sim) = engine_with_shop(dir.path(), cfg).await;
        for c in 0..20 {
            open_consumer(&engine, &sim, &format!("c{c}"), "100000", "100000", "5000").await;
        }
        // 2,000 orders at once against room for 16.
        let flood = (0..2000).map(|i| {
            engine.place_order(order(&format!("f{i}"), &format!("c{}", i % 20), "1.00"), 1)
        });
        let results = futures::future::join_all(flood).await;
        let mut accepted = Vec::new();
        let mut overloaded = 0;
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(Ok(Outcome::Accepted)) => accepted.push(format!("f{i}")),
                Err(onecard_engine::EngineError::Overloaded(n)) => {
                    assert!(n >= 16, "refused with only {n} in progress");
                    overloaded += 1;
                }
                other => panic!("order f{i}: unexpected {other:?}"),
            }
        }
        assert!(accepted.len() >= 16, "the first 16 get through");
        assert_eq!(accepted.len() + overloaded, 2000);
        assert!(
            overloaded > 0,
            "a flood beyond the bound must be refused, not queued"
        );
        assert_eq!(engine.in_flight(), 0, "every admission was given back");
        // A refused order left no trace: its id is still free.
        let refused = (0..2000)
            .map(|i| format!("f{i}"))
            .find(|id| !accepted.contains(id))
            .unwrap();
        assert!(engine.order(&refused).await.unwrap().is_none());
        engine.close().await.unwrap();
        sim.close();
        accepted
    });
    // Every acknowledged order is in the journal.
    let report = onecard_engine::verify::verify(dir.path()).unwrap();
    let pending = report.orders_by_state.get("pending").copied().unwrap_or(0);
    assert_eq!(pending, accepted.len());
}

mod cards {
    use super::*;
    use onecard_engine::cards::crypto::{card_token, cryptogram, derive_token_key};
    use onecard_engine::cards::{
        derive_pin_key, encrypt_pin, pin_verifier, AuthOutcome, CardKey, CardStatus,
        ChallengeIssued, EncryptedPin, IssuerKey, NewReader,
    };
    use onecard_engine::engine::IssueCard;
    use std::net::IpAddr;

    const CARD: &str = "4000001234567890";
    /// Twelve digits: long enough that finding it in the store's bytes would not be chance.
    const PIN: &str = "739164285017";
    const HOME: &str = "5 Rose Lane";

    fn card_config() -> EngineConfig {
        EngineConfig {
            issuer_key: Some(IssuerKey::from_bytes([5; 32])),
            ..config()
        }
    }

    fn peer() -> IpAddr {
        "10.0.0.7".parse().unwrap()
    }

    /// An engine on `dir` with the issuer key, and its simulated bank.
    async fn open_with_cards(dir: &std::path::Path) -> (Engine, Arc<SimBank>) {
        let sim = SimBank::open(dir).unwrap();
        let engine = Engine::open(dir, card_config(), Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap();
        (engine, sim)
    }

    /// An engine on `dir` with consumer alice (limit 1000.00), merchant shop, alice's card
    /// (PIN, home address) and her reader `rdr-1` on 10.0.0.0/24; the card's key.
    async fn alice_with_card_at_shop(dir: &std::path::Path) -> (Engine, Arc<SimBank>, CardKey) {
        let (engine, sim) = open_with_cards(dir).await;
        open_consumer(&engine, &sim, "alice", "1000", "9000", "5000").await;
        engine
            .open_merchant("shop", None, 0)
            .await
            .unwrap()
            .unwrap();
        let key = engine
            .issue_card(
                IssueCard {
                    number: CARD.into(),
                    holder: "alice".into(),
                    pin: PIN.into(),
                    registered_address: HOME.into(),
                },
                1,
            )
            .await
            .unwrap()
            .unwrap();
        engine
            .register_reader(
                NewReader {
                    id: "rdr-1".into(),
                    owner: "alice".into(),
                    card_number: CARD.into(),
                    account: "alice".into(),
                    network: "10.0.0.0/24".parse().unwrap(),
                },
                1,
            )
            .await
            .unwrap()
            .unwrap();
        (engine, sim, key)
    }

    /// Swipes alice's card on her reader for `order` of `cents`, and answers the challenge
    /// as her reader program would: the cryptogram for `counter` and `pin` encrypted to it.
    async fn swipe_and_answer(
        engine: &Engine,
        key: &CardKey,
        order: &str,
        cents: u64,
        counter: u32,
        pin: &str,
    ) -> (ChallengeIssued, [u8; 16], EncryptedPin) {
        let ch: ChallengeIssued = engine
            .swipe(
                "rdr-1",
                CARD,
                peer(),
                order,
                Amount::from_cents(cents as i64),
                10,
            )
            .await
            .unwrap()
            .unwrap();
        let c = cryptogram(key, &ch.challenge, order, cents, counter).unwrap();
        let pin =
            encrypt_pin(&ch.node_public, &ch.challenge, pin, &mut rand::thread_rng()).unwrap();
        (ch, c, pin)
    }

    async fn attempt(
        engine: &Engine,
        key: &CardKey,
        counter: u32,
        pin: &str,
        order: &str,
    ) -> AuthOutcome {
        let (ch, c, pin) = swipe_and_answer(engine, key, order, 2_500, counter, pin).await;
        engine
            .authenticate(&ch.challenge_id, counter, &c, &pin, HOME, None, None, 10)
            .await
            .unwrap()
    }

    #[test]
    fn counters_pin_failures_and_locks_survive_a_restart_and_the_view_equals_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let key = actix_rt::System::new().block_on(async {
            let (engine, sim, key) = alice_with_card_at_shop(dir.path()).await;
            let unknown = engine
                .issue_card(
                    IssueCard {
                        number: "4000009999999999".into(),
                        holder: "nobody".into(),
                        pin: PIN.into(),
                        registered_address: HOME.into(),
                    },
                    1,
                )
                .await
                .unwrap();
            assert!(unknown.is_err(), "a card only for an existing consumer");
            assert!(matches!(
                attempt(&engine, &key, 1, PIN, "o-1").await,
                AuthOutcome::Authorised(_)
            ));
            let recorded = engine.authorisation("o-1").unwrap().expect("recorded");
            assert!(!recorded.temporary_address_change);
            assert_eq!(
                (recorded.account.as_str(), recorded.card_last4.as_str()),
                ("alice", "7890")
            );
            // Delivered elsewhere: the consumer confirms a one-time address; it is recorded
            // with the order.
            let (ch, c, pin) = swipe_and_answer(&engine, &key, "o-away", 2_500, 2, PIN).await;
            let away = engine
                .authenticate(
                    &ch.challenge_id,
                    2,
                    &c,
                    &pin,
                    "9 Other Road",
                    None,
                    None,
                    10,
                )
                .await
                .unwrap();
            assert_eq!(away, AuthOutcome::ConfirmAddressChange);
            let away = engine
                .confirm_address_change(&ch.challenge_id, true, None, 10)
                .await
                .unwrap();
            assert!(matches!(away, AuthOutcome::Authorised(ref a) if a.temporary_address_change));
            assert!(
                engine
                    .authorisation("o-away")
                    .unwrap()
                    .expect("recorded")
                    .temporary_address_change
            );
            // Above the available credit (1000.00): refused for credit.
            let (ch, c, pin) = swipe_and_answer(&engine, &key, "o-big", 100_001, 3, PIN).await;
            assert!(matches!(
                engine
                    .authenticate(&ch.challenge_id, 3, &c, &pin, HOME, None, None, 10)
                    .await
                    .unwrap(),
                AuthOutcome::CreditRefused { .. }
            ));
            assert_eq!(
                attempt(&engine, &key, 4, "0000", "o-2").await,
                AuthOutcome::WrongPin { tries_left: 2 }
            );
            assert_eq!(
                attempt(&engine, &key, 5, "0000", "o-3").await,
                AuthOutcome::WrongPin { tries_left: 1 }
            );
            engine.close().await.unwrap();
            sim.close();
            key
        });
        actix_rt::System::new().block_on(async {
            let (engine, sim) = open_with_cards(dir.path()).await;
            let card = engine.card(CARD).unwrap().unwrap();
            assert_eq!((card.last_counter, card.pin_failures), (5, 2), "durable");
            // An old counter is a replay, also after the restart.
            assert_eq!(
                attempt(&engine, &key, 5, PIN, "o-4").await,
                AuthOutcome::Replayed
            );
            // The third wrong PIN in a row, across the restart, locks the card.
            assert_eq!(
                attempt(&engine, &key, 6, "0000", "o-5").await,
                AuthOutcome::CardLocked
            );
            engine.close().await.unwrap();
            sim.close();
        });
        let report = onecard_engine::verify::verify(dir.path()).unwrap();
        let token = card_token(&derive_token_key(&IssuerKey::from_bytes([5; 32])), CARD);
        let card = report.state.auth.card_by_token(&token).unwrap();
        assert_eq!(card.last4, "7890");
        assert_eq!(card.status, CardStatus::Locked, "the replay agrees");
        assert_eq!(card.last_counter, 6);
        assert_eq!(
            report.state.authorisations.keys().collect::<Vec<_>>(),
            ["o-1", "o-away"],
            "the replay holds both authorisations"
        );
        // No PIN, no key, no card number in the store (I10): only the keyed PIN verifier and
        // the card's token.
        let mut bytes = Vec::new();
        for f in super::files_under(dir.path()) {
            bytes.extend(std::fs::read(f).unwrap());
        }
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        let master = IssuerKey::from_bytes([5; 32]);
        let pvk = derive_pin_key(&master);
        let verifier = pin_verifier(&pvk, &token, PIN).unwrap();
        assert_eq!(
            card.pin_verifier, verifier,
            "the replay holds the keyed verifier"
        );
        let verifier_hex = String::from(verifier.clone());
        assert!(has(verifier_hex.as_bytes()), "the PIN verifier is stored");
        assert!(!has(PIN.as_bytes()), "the PIN is never stored");
        assert!(!has(&[5u8; 32]), "the issuer master key is never stored");
        // Without the key the verifier gives nothing away: trying every 4-digit PIN and the
        // real one under a key guessed wrong (zero, or another issuer's) never reproduces it,
        // and no unkeyed digest of token and PIN is stored either.
        for guess_key in [
            derive_pin_key(&IssuerKey::from_bytes([0; 32])),
            derive_pin_key(&IssuerKey::from_bytes([6; 32])),
        ] {
            let candidates = (0..10_000)
                .map(|n| format!("{n:04}"))
                .chain([PIN.to_string()]);
            for pin in candidates {
                let guess = pin_verifier(&guess_key, &token, &pin).unwrap();
                assert!(!guess.matches(&verifier));
            }
        }
        {
            use sha2::{Digest, Sha256};
            let unkeyed = Sha256::digest(format!("{token}{PIN}").as_bytes());
            assert!(!has(&unkeyed) && !has(hex::encode(unkeyed).as_bytes()));
        }
        assert!(!has(key.as_bytes()), "the card key is never stored");
        assert!(!has(CARD.as_bytes()), "the card number is never stored");
        assert!(has(token.as_bytes()), "the card's token is stored");
    }

    /// An authentication queued, not awaited: the order's placement queued behind it needs no
    /// wait in between, lands after it in the log, and both are there after a restart; until
    /// the authentication is recorded its order stays held against another payment.
    #[test]
    fn a_placement_queued_behind_its_authentication_follows_it_in_the_log() {
        use onecard_engine::commands::PlaceCmd;
        use onecard_engine::feed::FeedKind;
        let dir = tempfile::tempdir().unwrap();
        actix_rt::System::new().block_on(async {
            let (engine, sim, key) = alice_with_card_at_shop(dir.path()).await;
            let (ch, c, pin) = swipe_and_answer(&engine, &key, "o-q", 2_500, 1, PIN).await;
            let queued = engine
                .authenticate_queued(&ch.challenge_id, 1, &c, &pin, HOME, None, None, 10)
                .await
                .unwrap();
            let AuthOutcome::Authorised(auth) = queued.outcome().clone() else {
                panic!("{:?}", queued.outcome());
            };
            // Held until recorded: another authentication for the order is refused before its
            // PIN meanwhile.
            let (ch2, c2, pin2) = swipe_and_answer(&engine, &key, "o-q", 2_500, 2, PIN).await;
            let second = engine
                .authenticate(&ch2.challenge_id, 2, &c2, &pin2, HOME, None, None, 10)
                .await
                .unwrap();
            assert_eq!(second, AuthOutcome::OrderTaken);
            let placed = engine
                .place(
                    PlaceCmd {
                        id: "o-q".into(),
                        consumer: auth.account.clone(),
                        merchant: "shop".into(),
                        amount: amount("25.00"),
                        release: onecard_engine::Release::Receipt,
                        at_reader: None,
                    },
                    10,
                )
                .await
                .unwrap();
            assert!(placed.is_ok(), "{placed:?}");
            assert_eq!(
                queued.recorded().await.unwrap(),
                AuthOutcome::Authorised(auth)
            );
            assert!(engine.authorisation("o-q").unwrap().is_some());
            engine.close().await.unwrap();
            sim.close();
        });
        actix_rt::System::new().block_on(async {
            let (engine, sim) = open_with_cards(dir.path()).await;
            assert!(engine.authorisation("o-q").unwrap().is_some(), "durable");
            let feed = engine.feed_after(0, usize::MAX).unwrap();
            let order: Vec<&str> = feed
                .records
                .iter()
                .flat_map(|r| &r.entries)
                .flat_map(|e| &e.events)
                .filter_map(|e| match &e.kind {
                    FeedKind::PaymentAuthorised(a) if a.order_id == "o-q" => Some("authorised"),
                    FeedKind::OrderPlaced { order, .. } if order == "o-q" => Some("placed"),
                    _ => None,
                })
                .collect();
            assert_eq!(order, ["authorised", "placed"]);
            engine.close().await.unwrap();
            sim.close();
        });
        // verify replays the log (an error if anything is out of place) and checks the view.
        let report = onecard_engine::verify::verify(dir.path()).unwrap();
        assert_eq!(report.view_checked, Some(report.records));
        assert!(report.state.authorisations.contains_key("o-q"));
    }

    /// SPEC F9: the consumer's gateway rules refuse at authentication, naming the rule (the
    /// reader shows it), and again, atomically with the reservation, at placement; the daily
    /// total survives a restart, and orders no reader pays are not subject to them.
    #[test]
    fn gateway_rules_refuse_at_the_reader_and_at_placement_and_survive_a_restart() {
        use onecard_engine::commands::{PlaceCmd, ReaderPayment};
        use onecard_engine::ledger::GatewayRules;
        let dir = tempfile::tempdir().unwrap();
        let shop = ReaderPayment {
            category: "electronics".into(),
        };
        let place = |id: &str, amount_: &str, at_reader: Option<ReaderPayment>| PlaceCmd {
            id: id.into(),
            consumer: "alice".into(),
            merchant: "shop".into(),
            amount: amount(amount_),
            release: onecard_engine::Release::Receipt,
            at_reader,
        };
        actix_rt::System::new().block_on(async {
            let (engine, sim, key) = alice_with_card_at_shop(dir.path()).await;
            let pay = |counter: u32, order: &'static str| {
                let engine = &engine;
                let key = &key;
                let shop = &shop;
                async move {
                    let ch = engine
                        .swipe("rdr-1", CARD, peer(), order, amount("25.00"), 10)
                        .await
                        .unwrap()
                        .unwrap();
                    let c = cryptogram(key, &ch.challenge, order, 2_500, counter).unwrap();
                    let pin =
                        encrypt_pin(&ch.node_public, &ch.challenge, PIN, &mut rand::thread_rng())
                            .unwrap();
                    engine
                        .authenticate(
                            &ch.challenge_id,
                            counter,
                            &c,
                            &pin,
                            HOME,
                            None,
                            Some(("shop", shop)),
                            10,
                        )
                        .await
                        .unwrap()
                }
            };
            let rules = GatewayRules {
                max_per_payment: Some(amount("20.00")),
                ..Default::default()
            };
            let set = engine
                .set_gateway_rules("alice", Some(rules), 5)
                .await
                .unwrap();
            assert_eq!(set, Ok(onecard_engine::Outcome::Ok));
            let bad = GatewayRules {
                max_per_day: Some(Amount::ZERO),
                ..Default::default()
            };
            let r = engine
                .set_gateway_rules("alice", Some(bad), 5)
                .await
                .unwrap();
            assert_eq!(r.unwrap_err().kind, onecard_engine::RefusalKind::Invalid);
            match pay(1, "o-1").await {
                AuthOutcome::GatewayRefused { rule, reason } => {
                    assert_eq!(rule, "max_per_payment");
                    assert!(reason.contains("20.00"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
            assert!(engine.authorisation("o-1").unwrap().is_none());
            // A sign-in is no payment: no rule applies.
            let rules = GatewayRules {
                max_per_payment: Some(amount("30.00")),
                max_per_day: Some(amount("40.00")),
                blocked_merchants: vec!["casino".into()],
                ..Default::default()
            };
            engine
                .set_gateway_rules("alice", Some(rules.clone()), 6)
                .await
                .unwrap()
                .unwrap();
            assert!(matches!(pay(2, "o-2").await, AuthOutcome::Authorised(_)));
            let placed = engine
                .place(place("o-2", "25.00", Some(shop.clone())), 10)
                .await
                .unwrap();
            assert_eq!(placed, Ok(onecard_engine::Outcome::Accepted));
            // 25 + 25 is above the 40 a day: refused at the reader …
            assert!(matches!(
                pay(3, "o-3").await,
                AuthOutcome::GatewayRefused { ref rule, .. } if rule == "max_per_day"
            ));
            // … and at placement, should two authorisations have passed at once.
            let r = engine
                .place(place("o-4", "25.00", Some(shop.clone())), 10)
                .await
                .unwrap();
            assert_eq!(r.unwrap_err().kind, onecard_engine::RefusalKind::Gateway);
            // Not a payment at a reader (a bill its rule pays): not subject to the rules.
            let r = engine.place(place("o-5", "25.00", None), 10).await.unwrap();
            assert_eq!(r, Ok(onecard_engine::Outcome::Accepted));
            let (stored, spent) = engine.gateway_rules("alice", 10).unwrap().unwrap();
            assert_eq!((stored, spent), (Some(rules.clone()), amount("25.00")));
            engine.close().await.unwrap();
            sim.close();
        });
        onecard_engine::verify::verify(dir.path()).unwrap();
        actix_rt::System::new().block_on(async {
            let (engine, sim) = open_with_cards(dir.path()).await;
            let (stored, spent) = engine.gateway_rules("alice", 10).unwrap().unwrap();
            assert!(stored.is_some());
            assert_eq!(spent, amount("25.00"));
            let r = engine
                .place(place("o-6", "15.01", Some(shop.clone())), 11)
                .await
                .unwrap();
            assert_eq!(r.unwrap_err().kind, onecard_engine::RefusalKind::Gateway);
            // A day later the day's total starts again.
            let r = engine
                .place(place("o-7", "30.00", Some(shop.clone())), 10 + 86_400)
                .await
                .unwrap();
            assert_eq!(r, Ok(onecard_engine::Outcome::Accepted));
            engine
                .set_gateway_rules("alice", None, 10 + 86_400)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                engine
                    .gateway_rules("alice", 10 + 86_400)
                    .unwrap()
                    .unwrap()
                    .0,
                None
            );
            engine.close().await.unwrap();
            sim.close();
        });
        onecard_engine::verify::verify(dir.path()).unwrap();
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn store_contains(dir: &std::path::Path, needle: &[u8]) -> bool {
    files_under(dir).into_iter().any(|f| {
        std::fs::read(f)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
    })
}

/// I10 for bank accounts: with a data key the node's store holds no bank account, only
/// references and sealed accounts, and the money flows exactly as without a key: the same
/// top-ups and refund overflows reach the same real accounts, across restarts (each reopening
/// starts with no unsealed account in memory), and `verify` passes.
#[test]
fn with_a_data_key_no_bank_account_is_stored_and_the_money_flows_as_without() {
    let plain = tempfile::tempdir().unwrap();
    let sealed = tempfile::tempdir().unwrap();
    let keyed = EngineConfig {
        data_key: Some(onecard_engine::DataKey::from_bytes([42u8; 32])),
        passivate_after: Duration::ZERO,
        ..config()
    };
    let (plain_state, sealed_state) = actix_rt::System::new().block_on(async {
        (
            workload(plain.path(), config()).await,
            workload(sealed.path(), keyed.clone()).await,
        )
    });
    let accounts = ["alice-bank", "bob-bank", "carol-bank"];

    // The same money, account by account: at the bank and in the ledger.
    let balances = |dir: &std::path::Path, cfg: EngineConfig| {
        actix_rt::System::new().block_on(async {
            let bank = SimBank::open(dir).unwrap();
            let engine = Engine::open(dir, cfg, Arc::new(SimBankPort(bank.clone())))
                .await
                .unwrap();
            let b: Vec<Option<Amount>> = accounts.iter().map(|a| bank.balance(a)).collect();
            engine.close().await.unwrap();
            b
        })
    };
    let plain_balances = balances(plain.path(), config());
    let sealed_balances = balances(sealed.path(), keyed.clone());
    assert_eq!(plain_balances, sealed_balances);
    for (a, b) in accounts.iter().zip(&sealed_balances) {
        assert!(b.unwrap() < amount("50000"), "{a}: the bank paid top-ups");
    }
    for (id, p) in &plain_state.consumers {
        let s = &sealed_state.consumers[id];
        assert_eq!(p.bank, format!("{id}-bank"));
        assert_eq!(p.bank_sealed, None);
        assert!(
            s.bank.starts_with("bk-") && s.bank.len() == 35,
            "{}",
            s.bank
        );
        assert!(s.bank_sealed.is_some());
        assert_eq!(
            (p.wallet, p.reserved, p.bank_clearing, p.orders.len()),
            (s.wallet, s.reserved, s.bank_clearing, s.orders.len()),
            "{id}"
        );
        assert!(s.refunds.len() == p.refunds.len() && !s.refunds.is_empty());
    }

    // The node's store holds references and no account; the keyless one holds the accounts.
    // (the log and the view's checkpoint; the simulated bank's accounts ride on them too)
    let node_store = sealed.path().to_path_buf();
    assert!(store_contains(&node_store, b"bk-"));
    for a in accounts {
        assert!(store_contains(plain.path(), a.as_bytes()));
        assert!(
            !store_contains(&node_store, a.as_bytes()),
            "{a} stored in the clear"
        );
    }

    // verify replays the sealed journal and finds the view equal to it.
    let report = onecard_engine::verify::verify(sealed.path()).unwrap();
    assert_eq!(report.view_checked, Some(report.records));
    assert_eq!(sealed_state, report.state);

    // After one more restart: the operator's lookup unseals the account; a designated
    // account is still found by its reference; another key cannot unseal it.
    actix_rt::System::new().block_on(async {
        let sim = SimBank::open(sealed.path()).unwrap();
        let engine = Engine::open(
            sealed.path(),
            keyed.clone(),
            Arc::new(SimBankPort(sim.clone())),
        )
        .await
        .unwrap();
        for a in accounts {
            assert!(engine.has_bank_account(a).unwrap(), "{a}");
        }
        assert_eq!(
            engine.bank_account_of("alice").unwrap().as_deref(),
            Some("alice-bank")
        );
        assert_eq!(engine.bank_account_of("nobody").unwrap(), None);
        // A merchant's bank account is kept the same way: reference and sealed form only.
        let payee_bank = "DE89370400440532013000";
        engine
            .open_merchant("payee", Some(payee_bank), 1_000)
            .await
            .unwrap()
            .unwrap();
        let payee = engine.merchant("payee").await.unwrap().unwrap();
        assert!(payee.bank.as_deref().is_some_and(|b| b.starts_with("bk-")));
        assert!(payee.bank_sealed.is_some());
        let again = OpenConsumer {
            consumer: "dave".into(),
            credit_limit: "10".into(),
            bank: "alice-bank".into(),
            wallet: "0".into(),
        };
        let r = engine.open_consumer(again, 1_000).await.unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Conflict);
        engine.close().await.unwrap();
        sim.close();
        drop(sim);

        let sim = SimBank::open(sealed.path()).unwrap();
        let wrong = EngineConfig {
            data_key: Some(onecard_engine::DataKey::from_bytes([7u8; 32])),
            ..config()
        };
        let engine = Engine::open(sealed.path(), wrong, Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap();
        assert!(engine.bank_account_of("alice").is_err());
        engine.close().await.unwrap();

        // Opened without the key it was written with, the store is refused with a reason.
        let err = Engine::open(sealed.path(), config(), Arc::new(SimBankPort(sim.clone())))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("data key"), "{err}");
        sim.close();
    });
    assert!(
        !store_contains(sealed.path(), b"DE89370400440532013000"),
        "a merchant's bank account stored in the clear"
    );
}

#[test]
fn the_feed_gives_what_happened_to_orders_and_wallets_in_journal_order_with_stable_positions() {
    use onecard_engine::feed::{FeedKind, OrderChange};
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim) = engine_with_shop(dir.path(), config()).await;
        open_consumer(&engine, &sim, "alice", "1000", "9000", "100").await;
        engine
            .place_order(order("o1", "alice", "30"), 1)
            .await
            .unwrap()
            .unwrap();
        engine.cancel_order("o1", 2).await.unwrap().unwrap();
        engine
            .place_order(order("o2", "alice", "5000"), 3)
            .await
            .unwrap()
            .unwrap_err();

        let read = engine.feed_after(0, usize::MAX).unwrap();
        assert_eq!(read.through, engine.last_seq().unwrap());
        let feed = read.records;
        let seqs: Vec<u64> = feed.iter().map(|r| r.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let kinds: Vec<&FeedKind> = feed
            .iter()
            .flat_map(|r| &r.entries)
            .flat_map(|e| &e.events)
            .map(|e| &e.kind)
            .collect();
        // Opening accounts and the configuration are not the feed's; the orders are, in order.
        assert!(matches!(
            kinds.as_slice(),
            [
                FeedKind::OrderPlaced { order: o1, result: Ok(_), .. },
                FeedKind::OrderChanged { order: c1, change: OrderChange::Cancelled, .. },
                FeedKind::OrderPlaced { order: o2, result: Err(_), amount, .. },
            ] if o1 == "o1" && c1 == "o1" && o2 == "o2" && *amount == Amount::parse("5000").unwrap()
        ), "{kinds:#?}");
        // A follower's cursor: what came after a record, read again, is the same.
        let after_first = engine.feed_after(feed[0].seq, usize::MAX).unwrap();
        assert_eq!(after_first.records, feed[1..].to_vec());
        // Two followers at different places, reading a record at a time in turns (the outbox
        // and the history index): each reads the whole feed, in order, once.
        let (mut a, mut b) = (0u64, feed[0].seq);
        let (mut read_a, mut read_b) = (Vec::new(), Vec::new());
        while a < read.through || b < read.through {
            for (cursor, got) in [(&mut a, &mut read_a), (&mut b, &mut read_b)] {
                let step = engine.feed_after(*cursor, 1).unwrap();
                got.extend(step.records);
                *cursor = step.through;
            }
        }
        assert_eq!(read_a, feed);
        assert_eq!(read_b, feed[1..].to_vec());
        engine.close().await.unwrap();
        sim.close();
    });
}

/// The followers read the records this process just wrote from memory (the writer keeps their
/// entries); after a restart the same records come from the log. Both must be the same.
#[test]
fn the_feed_from_memory_is_the_log_read_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (live, through) = actix_rt::System::new().block_on(async {
        let (engine, sim) = engine_with_shop(dir.path(), config()).await;
        open_consumer(&engine, &sim, "alice", "1000", "9000", "100").await;
        for i in 0..20u64 {
            let id = format!("o{i}");
            engine
                .place_order(order(&id, "alice", "3"), i)
                .await
                .unwrap()
                .unwrap();
            if i % 2 == 0 {
                engine.confirm_receipt(&id, true, i).await.unwrap().unwrap();
            }
        }
        let live = engine.records_after(0, usize::MAX).unwrap();
        let through = engine.last_seq().unwrap();
        let stats = engine.journal_stats();
        assert_eq!(
            (
                stats
                    .feed_from_memory
                    .load(std::sync::atomic::Ordering::Relaxed),
                stats
                    .feed_from_log
                    .load(std::sync::atomic::Ordering::Relaxed)
            ),
            (live.len() as u64, 0)
        );
        engine.close().await.unwrap();
        sim.close();
        (live, through)
    });
    assert_eq!(live.last().map(|r| r.0), Some(through));
    actix_rt::System::new().block_on(async {
        let sim = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), config(), Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap();
        let read_back = engine.records_after(0, usize::MAX).unwrap();
        assert_eq!(read_back[..live.len()], live[..]);
        let from_log = |e: &Engine| {
            e.journal_stats()
                .feed_from_log
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        assert_eq!(from_log(&engine), read_back.len() as u64);
        // And records written after the restart, from memory, read back from a given place.
        for i in 20..30u64 {
            engine
                .place_order(order(&format!("o{i}"), "alice", "3"), i)
                .await
                .unwrap()
                .unwrap();
        }
        let before = from_log(&engine);
        let newer = engine
            .records_after(read_back.len() as u64, usize::MAX)
            .unwrap();
        assert!(newer.len() >= 10, "{}", newer.len());
        assert_eq!(
            from_log(&engine),
            before,
            "the records written since were read back"
        );
        let through = read_back.len() as u64;
        assert_eq!(
            engine.records_after(through, 3).unwrap(),
            newer[..3].to_vec()
        );
        engine.close().await.unwrap();
        sim.close();
        let sim = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), config(), Arc::new(SimBankPort(sim.clone())))
            .await
            .unwrap();
        assert_eq!(
            engine.records_after(through, usize::MAX).unwrap()[..newer.len()],
            newer[..]
        );
        engine.close().await.unwrap();
        sim.close();
    });
}

#[test]
fn actors_on_a_host_thread_that_stops_are_activated_again_from_everything_they_queued() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim) = engine_with_shop(dir.path(), config()).await;
        open_consumer(&engine, &sim, "ann", "100000", "1000000", "5000").await;
        engine.passivate_idle(Duration::ZERO);
        let engine = Arc::new(engine);
        const ORDERS: usize = 40;
        let ids: Vec<String> = (0..ORDERS).map(|i| format!("ann-{i}")).collect();

        // A host thread (as an HTTP worker is) activates ann's actor on its own arbiter and
        // has many places in flight when its arbiter stops.
        let host = actix_rt::Arbiter::new();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        {
            let engine = engine.clone();
            let ids = ids.clone();
            host.spawn(async move {
                onecard_engine::host_actors_here();
                let first = engine.place_order(order(&ids[0], "ann", "10.00"), 1).await;
                let _ = first_tx.send(first.map_err(|e| e.to_string()));
                let rest = ids[1..]
                    .iter()
                    .map(|id| engine.place_order(order(id, "ann", "10.00"), 1));
                futures::future::join_all(rest).await;
            });
        }
        assert_eq!(first_rx.await.unwrap(), Ok(Ok(Outcome::Accepted)));
        assert_eq!(
            engine.resident_consumers(),
            1,
            "ann's actor runs on the host"
        );
        let activations = |e: &Engine| {
            e.residency()
                .activations
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = activations(&engine);
        host.stop();
        host.join().unwrap();

        // From another thread: the dead actor is replaced by a fresh one, which sees every
        // order the stopped one queued. Each retry is one order, whatever came of the first.
        for id in &ids {
            let again = engine
                .place_order(order(id, "ann", "10.00"), 2)
                .await
                .unwrap();
            assert_eq!(again, Ok(Outcome::Accepted), "{id}");
        }
        assert_eq!(activations(&engine), before + 1, "one fresh actor");
        let ann = engine.consumer("ann").await.unwrap().unwrap();
        assert_eq!(ann.orders.len(), ORDERS, "each order once");
        assert_eq!(ann.reserved, amount("400.00"), "each order reserved once");

        let engine = Arc::try_unwrap(engine)
            .ok()
            .expect("the host let go of the engine");
        engine.close().await.unwrap();
        let report = onecard_engine::verify::verify(dir.path()).unwrap();
        assert_eq!(report.view_checked, Some(report.records));
    });
}

#[test]
fn closing_waits_for_the_actors_a_host_thread_still_runs() {
    actix_rt::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (engine, sim) = engine_with_shop(dir.path(), config()).await;
        open_consumer(&engine, &sim, "ann", "100000", "1000000", "5000").await;
        engine.passivate_idle(Duration::ZERO);
        // This thread hosts ann's actor, and keeps running after the engine is closed.
        onecard_engine::host_actors_here();
        let placed = engine.place_order(order("ann-1", "ann", "10.00"), 1).await;
        assert_eq!(placed.unwrap(), Ok(Outcome::Accepted));
        assert_eq!(engine.resident_consumers(), 1);
        engine.close().await.unwrap();
        // The store is free: nothing of the engine holds it open any more.
        let report = onecard_engine::verify::verify(dir.path()).unwrap();
        assert_eq!(report.view_checked, Some(report.records));
    });
}
