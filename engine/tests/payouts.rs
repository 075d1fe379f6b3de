//! Merchant payouts through the engine's public API, with the real journal and the simulated
//! bank: the balance goes to the merchant's bank account exactly once, a payout cannot spend
//! what a refund holds or what is not there, and `verify` replays it (I1, I2) with and without
//! a data key; the feed names every payout, and the log alone verifies beside the running
//! engine.

use std::sync::Arc;
use std::time::Duration;

use onecard_engine::engine::{EngineConfig, OpenConsumer, PaidOut, PlaceOrder};
use onecard_engine::feed::FeedKind;
use onecard_engine::{Amount, Engine, Outcome, RefusalKind, SimBank, SimBankPort};
use serde_json::json;

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

/// Merchant `shop` (bank account `shop-bank`, empty), merchant `nobank` (none), consumer
/// `alice` who settles orders of 120.00 and 80.00 with `shop`.
async fn world(engine: &Engine, bank: &SimBank) {
    bank.open_account("shop-bank", Amount::ZERO).unwrap();
    bank.open_account("alice-bank", amount("10000")).unwrap();
    engine
        .open_merchant("shop", Some("shop-bank"), 0)
        .await
        .unwrap()
        .unwrap();
    engine
        .open_merchant("nobank", None, 0)
        .await
        .unwrap()
        .unwrap();
    let req = OpenConsumer {
        consumer: "alice".into(),
        credit_limit: "1000".into(),
        bank: "alice-bank".into(),
        wallet: "500".into(),
    };
    assert_eq!(engine.open_consumer(req, 0).await.unwrap(), Ok(Outcome::Ok));
    for (id, a) in [("o1", "120.00"), ("o2", "80.00")] {
        let placed = engine
            .place_order(
                PlaceOrder {
                    id: id.into(),
                    consumer: "alice".into(),
                    merchant: "shop".into(),
                    amount: a.into(),
                    release: json!({"on": "receipt"}),
                },
                1,
            )
            .await
            .unwrap();
        assert_eq!(placed, Ok(Outcome::Accepted));
        engine.confirm_receipt(id, true, 2).await.unwrap().unwrap();
    }
}

async fn shop_balance(engine: &Engine) -> Amount {
    engine.merchant("shop").await.unwrap().unwrap().balance
}

fn run(cfg: EngineConfig) {
    let dir = tempfile::tempdir().unwrap();
    actix_rt::System::new().block_on(async {
        let bank = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), cfg.clone(), Arc::new(SimBankPort(bank.clone())))
            .await
            .unwrap();
        world(&engine, &bank).await;
        assert_eq!(shop_balance(&engine).await, amount("200.00"));

        // Refusals move nothing.
        let r = engine
            .pay_out("shop", Some(amount("200.01")), 3)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Funds);
        let r = engine
            .pay_out("shop", Some(amount("0.00")), 3)
            .await
            .unwrap();
        assert!(r.is_err(), "{r:?}");
        let r = engine.pay_out("nobank", None, 3).await.unwrap();
        assert!(r.is_err(), "{r:?}");
        let r = engine.pay_out("nobody", None, 3).await.unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Unknown);
        assert_eq!(shop_balance(&engine).await, amount("200.00"));
        assert_eq!(bank.balance("shop-bank"), Some(Amount::ZERO));

        // Part, then the rest.
        let PaidOut { amount: paid, .. } = engine
            .pay_out("shop", Some(amount("50.00")), 4)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(paid, amount("50.00"));
        assert_eq!(shop_balance(&engine).await, amount("150.00"));
        let first = engine.pay_out("shop", None, 5).await.unwrap().unwrap();
        assert_eq!(first.amount, amount("150.00"));
        assert_eq!(shop_balance(&engine).await, Amount::ZERO);
        assert_eq!(bank.balance("shop-bank"), Some(amount("200.00")));
        // Nothing left: nothing paid twice.
        let r = engine.pay_out("shop", None, 6).await.unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Funds);

        // Two payouts at once cannot both spend one balance.
        let placed = engine
            .place_order(
                PlaceOrder {
                    id: "o3".into(),
                    consumer: "alice".into(),
                    merchant: "shop".into(),
                    amount: "30.00".into(),
                    release: json!({"on": "receipt"}),
                },
                7,
            )
            .await
            .unwrap();
        assert_eq!(placed, Ok(Outcome::Accepted));
        engine
            .confirm_receipt("o3", true, 7)
            .await
            .unwrap()
            .unwrap();
        let (a, b) = futures::join!(
            engine.pay_out("shop", Some(amount("30.00")), 8),
            engine.pay_out("shop", Some(amount("30.00")), 8)
        );
        let done = [a.unwrap(), b.unwrap()]
            .iter()
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(done, 1);
        assert_eq!(shop_balance(&engine).await, Amount::ZERO);
        assert_eq!(bank.balance("shop-bank"), Some(amount("230.00")));

        // The feed tells followers of every payout (the node lists them for the merchant),
        // without the bank account.
        let feed = engine.feed_after(0, 10_000).unwrap();
        let paid: Vec<(String, String)> = feed
            .records
            .iter()
            .flat_map(|r| &r.entries)
            .flat_map(|e| &e.events)
            .filter_map(|ev| match &ev.kind {
                FeedKind::PayoutMade {
                    merchant, amount, ..
                } => Some((merchant.clone(), amount.to_string())),
                _ => None,
            })
            .collect();
        let shop = |a: &str| ("shop".to_string(), a.to_string());
        assert_eq!(paid, vec![shop("50.00"), shop("150.00"), shop("30.00")]);
        // The account payouts go to, for the merchant's own pages (unsealed with a data key).
        assert_eq!(
            engine.merchant_bank_account_of("shop").unwrap().as_deref(),
            Some("shop-bank")
        );
        assert_eq!(engine.merchant_bank_account_of("nobank").unwrap(), None);
        assert_eq!(engine.merchant_bank_account_of("nobody").unwrap(), None);

        // The full verify cannot open the store beside the running engine (its view is
        // locked); the log alone can be checked meanwhile, up to the last durable record.
        assert!(onecard_engine::verify::verify(dir.path()).is_err());
        let live = engine.verify_log().unwrap();
        assert!(live.log_only);
        assert_eq!(live.view_checked, None);
        assert_eq!(live.records, engine.last_seq().unwrap());
        assert_eq!(live.state.merchants["shop"].balance, Amount::ZERO);
        assert_eq!(live.state.total().unwrap(), Amount::ZERO);
        assert!(live.to_string().contains("not compared"), "{live}");
        engine.close().await.unwrap();
    });

    // The replay agrees: the merchant's balance, and I1/I2 with the merchant's clearing account.
    let report = onecard_engine::verify::verify(dir.path()).unwrap();
    assert_eq!(report.state.merchants["shop"].balance, Amount::ZERO);
    assert_eq!(report.state.total().unwrap(), Amount::ZERO);
    let clearing: Vec<Amount> = report.state.merchant_clearing.values().copied().collect();
    assert_eq!(clearing, vec![amount("230.00")]);
    // And the bank operations the journal records include the payouts, as credits.
    let ops = onecard_engine::bank_ops::journal_bank_ops(dir.path(), None).unwrap();
    let credits: Vec<String> = ops
        .iter()
        .filter(|o| o.kind == onecard_engine::bank::BankOpKind::Credit)
        .map(|o| o.amount.to_string())
        .collect();
    assert_eq!(credits, vec!["50.00", "150.00", "30.00"]);

    // Reopened: the balance and the bank are as they were.
    actix_rt::System::new().block_on(async {
        let bank = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), cfg, Arc::new(SimBankPort(bank.clone())))
            .await
            .unwrap();
        assert_eq!(
            engine.merchant("shop").await.unwrap().unwrap().balance,
            Amount::ZERO
        );
        assert_eq!(bank.balance("shop-bank"), Some(amount("230.00")));
        engine.close().await.unwrap();
    });
}

#[test]
fn a_merchant_is_paid_out_once_to_its_bank_account() {
    run(EngineConfig {
        arbiters: 2,
        ..EngineConfig::default()
    });
}

#[test]
fn payouts_work_the_same_with_a_data_key() {
    run(EngineConfig {
        arbiters: 2,
        data_key: Some(onecard_engine::DataKey::from_bytes([7u8; 32])),
        passivate_after: Duration::ZERO,
        ..EngineConfig::default()
    });
}
