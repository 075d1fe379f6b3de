//! Top-ups with an external bank (one whose answers take a message round trip): a settlement
//! is acknowledged once the wallet has paid; the top-up is asked for afterwards, counted
//! against the cap while it waits (I3: a second settlement meanwhile asks only for what is
//! left), and journaled when the bank answers. The wallet ends at exactly the cap, never
//! above, and `verify` replays it.

mod common;

use common::GatedBank;

use std::sync::Arc;
use std::time::Duration;

use onecard_engine::engine::{EngineConfig, OpenConsumer, PlaceOrder};
use onecard_engine::{Amount, Engine, Outcome, SimBank, SimBankPort};
use serde_json::json;
use tokio::sync::watch;

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

fn order(id: &str, amount: &str) -> PlaceOrder {
    PlaceOrder {
        id: id.into(),
        consumer: "alice".into(),
        merchant: "shop".into(),
        amount: amount.into(),
        release: json!({"on": "receipt"}),
    }
}

#[test]
fn a_settlement_is_acknowledged_before_its_top_up_and_the_wallet_ends_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EngineConfig {
        arbiters: 2,
        // Passivation must not lose a top-up that waits for the bank.
        passivate_after: Duration::ZERO,
        ..EngineConfig::default()
    };
    actix_rt::System::new().block_on(async {
        let sim = SimBank::open(dir.path()).unwrap();
        let (open_gate, gate) = watch::channel(true);
        let debits = Arc::new(parking_lot::Mutex::new(Vec::new()));
        // The simulated bank dressed as an external one, every debit held at the gate.
        let port = GatedBank {
            inner: SimBankPort(sim.clone()),
            stuck_account: None,
            gate,
            external: true,
            debits: debits.clone(),
        };
        let engine = Engine::open(dir.path(), cfg.clone(), Arc::new(port))
            .await
            .unwrap();
        engine
            .open_merchant("shop", None, 0)
            .await
            .unwrap()
            .unwrap();
        sim.open_account("alice-bank", amount("10000")).unwrap();
        let req = OpenConsumer {
            consumer: "alice".into(),
            credit_limit: "1000".into(),
            bank: "alice-bank".into(),
            wallet: "4900".into(),
        };
        assert_eq!(engine.open_consumer(req, 0).await.unwrap(), Ok(Outcome::Ok));

        // The bank stops answering: settlements still go through (the wallet pays).
        debits.lock().clear();
        open_gate.send_replace(false);
        for (id, a) in [("o1", "40.00"), ("o2", "25.00")] {
            let placed = engine.place_order(order(id, a), 1).await.unwrap();
            assert_eq!(placed, Ok(Outcome::Accepted));
            let settled =
                tokio::time::timeout(Duration::from_secs(10), engine.confirm_receipt(id, true, 2))
                    .await
                    .expect("acknowledged while the bank has not answered the top-up")
                    .unwrap();
            assert_eq!(settled, Ok(Outcome::Settled));
        }
        // 4900 - 40 - 25: each top-up waits; the second asks only for its own 25.00 (the
        // first's 140.00 is counted as in flight), so together they fill to exactly the cap.
        let alice = engine.consumer("alice").await.unwrap().unwrap();
        assert_eq!(alice.wallet, amount("4835.00"));
        assert!(debits.lock().is_empty());

        open_gate.send(true).unwrap();
        let filled = async {
            loop {
                let w = engine.consumer("alice").await.unwrap().unwrap().wallet;
                if w == amount("5000.00") {
                    return;
                }
                assert!(w <= amount("5000.00"), "above the cap: {w}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), filled)
            .await
            .expect("the top-ups complete");
        let mut asked = debits.lock().clone();
        asked.sort();
        assert_eq!(asked, vec![amount("25.00"), amount("140.00")]);
        // 10000 - 4900 opening - 165 of top-ups.
        assert_eq!(sim.balance("alice-bank"), Some(amount("4935.00")));
        engine.close().await.unwrap();
    });
    let report = onecard_engine::verify::verify(dir.path()).unwrap();
    assert_eq!(report.state.consumers["alice"].wallet, amount("5000.00"));
}
