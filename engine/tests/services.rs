//! The services' money commands through the engine's public API (SPEC F8, F10, F12), with the
//! real journal and the simulated bank: recharge credits under the wallet's cap, an employer
//! funded from its bank account paying salaries into wallets and bank accounts, bank
//! transfers into the wallet, credit limits set anew. Every id is idempotent, refusals move
//! nothing, and `verify` replays it all (I1–I6) with and without a data key.

use std::sync::Arc;
use std::time::Duration;

use onecard_engine::engine::{CreditCmd, EngineConfig, FundCmd, OpenConsumer, PlaceOrder};
use onecard_engine::feed::FeedKind;
use onecard_engine::ledger::{CreditSource, CreditTarget};
use onecard_engine::{Amount, Engine, Outcome, RefusalKind, SimBank, SimBankPort};
use serde_json::json;

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

fn recharge(id: &str, consumer: &str, a: &str, target: CreditTarget) -> CreditCmd {
    CreditCmd {
        id: id.into(),
        consumer: consumer.into(),
        source: CreditSource::RechargeCard { batch: "b1".into() },
        target,
        amount: amount(a),
    }
}

fn salary(id: &str, consumer: &str, a: &str, target: CreditTarget) -> CreditCmd {
    CreditCmd {
        id: id.into(),
        consumer: consumer.into(),
        source: CreditSource::Employer {
            employer: "acme".into(),
        },
        target,
        amount: amount(a),
    }
}

async fn open(engine: &Engine, bank: &SimBank, consumer: &str, wallet: &str) {
    bank.open_account(&format!("{consumer}-bank"), amount("10000"))
        .unwrap();
    let req = OpenConsumer {
        consumer: consumer.into(),
        credit_limit: "1000".into(),
        bank: format!("{consumer}-bank"),
        wallet: wallet.into(),
    };
    assert_eq!(engine.open_consumer(req, 0).await.unwrap(), Ok(Outcome::Ok));
}

async fn wallet(engine: &Engine, consumer: &str) -> Amount {
    engine
        .account_summary(consumer)
        .await
        .unwrap()
        .unwrap()
        .wallet
}

async fn balance(engine: &Engine, merchant: &str) -> Amount {
    engine.merchant(merchant).await.unwrap().unwrap().balance
}

fn run(cfg: EngineConfig) {
    let dir = tempfile::tempdir().unwrap();
    actix_rt::System::new().block_on(async {
        let bank = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), cfg.clone(), Arc::new(SimBankPort(bank.clone())))
            .await
            .unwrap();
        open(&engine, &bank, "alice", "4900").await;
        open(&engine, &bank, "bob", "1000").await;
        bank.open_account("acme-bank", amount("3000")).unwrap();
        engine
            .open_merchant("acme", Some("acme-bank"), 0)
            .await
            .unwrap()
            .unwrap();

        // Recharge: 100 of room; 250 → 100 to the wallet, 150 to the bank account.
        let r = engine
            .credit(
                recharge("rc-1", "alice", "250.00", CreditTarget::WalletOverflowToBank),
                1,
            )
            .await
            .unwrap();
        assert_eq!(r, Ok(Outcome::Credited));
        assert_eq!(wallet(&engine, "alice").await, amount("5000.00"));
        assert_eq!(bank.balance("alice-bank"), Some(amount("5250.00")));
        // The same id again: the first answer, nothing moves.
        let r = engine
            .credit(
                recharge("rc-1", "alice", "250.00", CreditTarget::WalletOverflowToBank),
                2,
            )
            .await
            .unwrap();
        assert_eq!(r, Ok(Outcome::Credited));
        assert_eq!(bank.balance("alice-bank"), Some(amount("5250.00")));
        // The same id for someone else, or another amount: a conflict.
        for other in [
            recharge("rc-1", "bob", "250.00", CreditTarget::WalletOverflowToBank),
            recharge("rc-1", "alice", "25.00", CreditTarget::WalletOverflowToBank),
        ] {
            let r = engine.credit(other, 2).await.unwrap();
            assert_eq!(r.unwrap_err().kind, RefusalKind::Conflict);
        }
        // Into the wallet only, where it has no room: refused, and the id stays free.
        let r = engine
            .credit(recharge("rc-2", "alice", "1.00", CreditTarget::WalletOnly), 3)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Amount);
        let r = engine
            .credit(recharge("rc-2", "bob", "1.00", CreditTarget::WalletOnly), 3)
            .await
            .unwrap();
        assert_eq!(r, Ok(Outcome::Credited));
        assert_eq!(wallet(&engine, "bob").await, amount("1001.00"));
        // Bad input.
        for (cmd, kind) in [
            (
                recharge("rc-3", "alice", "0.00", CreditTarget::Bank),
                RefusalKind::Amount,
            ),
            (
                recharge("", "alice", "1.00", CreditTarget::Bank),
                RefusalKind::Invalid,
            ),
            (
                recharge("rc-3", "nobody", "1.00", CreditTarget::Bank),
                RefusalKind::Unknown,
            ),
            (
                salary("s-0", "alice", "1.00", CreditTarget::Bank)
                    .with_employer("nobody"),
                RefusalKind::Unknown,
            ),
        ] {
            let r = engine.credit(cmd, 3).await.unwrap();
            assert_eq!(r.unwrap_err().kind, kind);
        }

        // Salaries: the employer's balance must cover them; it is funded from its bank.
        let r = engine
            .credit(salary("s-1", "bob", "700.00", CreditTarget::WalletOverflowToBank), 4)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Funds);
        let fund = FundCmd {
            id: "f-1".into(),
            merchant: "acme".into(),
            amount: amount("2000.00"),
        };
        assert_eq!(
            engine.fund_merchant(fund.clone(), 5).await.unwrap(),
            Ok(Outcome::Credited)
        );
        assert_eq!(
            engine.fund_merchant(fund.clone(), 5).await.unwrap(),
            Ok(Outcome::Credited)
        );
        assert_eq!(balance(&engine, "acme").await, amount("2000.00"));
        assert_eq!(bank.balance("acme-bank"), Some(amount("1000.00")));
        let other = FundCmd {
            amount: amount("1.00"),
            ..fund.clone()
        };
        assert_eq!(
            engine.fund_merchant(other, 5).await.unwrap().unwrap_err().kind,
            RefusalKind::Conflict
        );
        // More than the employer's bank account holds: refused, nothing moves.
        let big = FundCmd {
            id: "f-2".into(),
            merchant: "acme".into(),
            amount: amount("1000.01"),
        };
        assert_eq!(
            engine.fund_merchant(big, 5).await.unwrap().unwrap_err().kind,
            RefusalKind::Funds
        );
        assert_eq!(bank.balance("acme-bank"), Some(amount("1000.00")));

        // Into bob's wallet (room 3999.00), and into alice's bank account.
        let r = engine
            .credit(salary("s-1", "bob", "700.00", CreditTarget::WalletOverflowToBank), 6)
            .await
            .unwrap();
        assert_eq!(r, Ok(Outcome::Credited));
        let r = engine
            .credit(salary("s-2", "alice", "1200.00", CreditTarget::Bank), 6)
            .await
            .unwrap();
        assert_eq!(r, Ok(Outcome::Credited));
        // Repeats pay nothing twice, even at once.
        let (a, b) = futures::join!(
            engine.credit(salary("s-2", "alice", "1200.00", CreditTarget::Bank), 7),
            engine.credit(salary("s-2", "alice", "1200.00", CreditTarget::Bank), 7)
        );
        assert_eq!(a.unwrap(), Ok(Outcome::Credited));
        assert_eq!(b.unwrap(), Ok(Outcome::Credited));
        assert_eq!(wallet(&engine, "bob").await, amount("1701.00"));
        assert_eq!(bank.balance("alice-bank"), Some(amount("6450.00")));
        assert_eq!(balance(&engine, "acme").await, amount("100.00"));
        // Two salaries at once cannot both spend the last 100.00.
        let (a, b) = futures::join!(
            engine.credit(salary("s-3", "bob", "100.00", CreditTarget::Bank), 8),
            engine.credit(salary("s-4", "alice", "100.00", CreditTarget::Bank), 8)
        );
        let paid = [a.unwrap(), b.unwrap()]
            .into_iter()
            .filter(|r| r.is_ok())
            .count();
        assert_eq!(paid, 1);
        assert_eq!(balance(&engine, "acme").await, Amount::ZERO);

        // A bank transfer into the wallet, within the cap only.
        let transfer = |id: &str, a: &str| CreditCmd {
            id: id.into(),
            consumer: "bob".into(),
            source: CreditSource::BankTransfer,
            target: CreditTarget::WalletOnly,
            amount: amount(a),
        };
        let before = bank.balance("bob-bank").unwrap();
        let r = engine.credit(transfer("t-1", "3299.00"), 9).await.unwrap();
        assert_eq!(r, Ok(Outcome::Credited));
        assert_eq!(wallet(&engine, "bob").await, amount("5000.00"));
        assert_eq!(
            bank.balance("bob-bank"),
            Some(before.checked_sub(amount("3299.00")).unwrap())
        );
        let r = engine.credit(transfer("t-2", "0.01"), 9).await.unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Amount);
        let back = CreditCmd {
            target: CreditTarget::Bank,
            ..transfer("t-3", "1.00")
        };
        assert_eq!(
            engine.credit(back, 9).await.unwrap().unwrap_err().kind,
            RefusalKind::Invalid
        );

        // Credit limits: lowered below what is reserved, the reservation stays and new ones
        // are refused.
        let place = |id: &str, a: &str| PlaceOrder {
            id: id.into(),
            consumer: "alice".into(),
            merchant: "acme".into(),
            amount: a.into(),
            release: json!({"on": "receipt"}),
        };
        assert_eq!(
            engine.place_order(place("o1", "600.00"), 10).await.unwrap(),
            Ok(Outcome::Accepted)
        );
        let r = engine
            .set_credit_limit("alice", amount("500.00"), "a failed bank debit", 11)
            .await
            .unwrap();
        assert_eq!(r, Ok(Outcome::Ok));
        let summary = engine.account_summary("alice").await.unwrap().unwrap();
        assert_eq!(summary.credit_limit, amount("500.00"));
        assert_eq!(summary.reserved, amount("600.00"));
        let r = engine.place_order(place("o2", "1.00"), 12).await.unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Credit);
        assert_eq!(
            engine.confirm_receipt("o1", true, 13).await.unwrap(),
            Ok(Outcome::Settled)
        );
        let r = engine
            .set_credit_limit("alice", amount("1.00").checked_neg(), "why", 14)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Amount);
        let r = engine
            .set_credit_limit("alice", amount("1.00"), "", 14)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Invalid);
        let r = engine
            .set_credit_limit("nobody", amount("1.00"), "why", 14)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Unknown);

        // The feed tells followers what happened, with the reason of the limit's change.
        let feed = engine.feed_after(0, 10_000).unwrap();
        let kinds: Vec<FeedKind> = feed
            .records
            .iter()
            .flat_map(|r| &r.entries)
            .flat_map(|e| &e.events)
            .map(|e| e.kind.clone())
            .collect();
        let credited = kinds
            .iter()
            .filter(|k| matches!(k, FeedKind::Credited { .. }))
            .count();
        assert_eq!(credited, 6, "rc-1, rc-2, s-1, s-2, one of s-3/s-4, t-1");
        assert!(kinds.iter().any(|k| matches!(k,
            FeedKind::CreditLimitChanged { consumer, limit, reason }
                if consumer == "alice" && *limit == amount("500.00") && reason == "a failed bank debit")));
        assert!(kinds.iter().any(|k| matches!(k,
            FeedKind::MerchantFunded { funding, amount: a, .. } if funding == "f-1" && *a == amount("2000.00"))));
        engine.close().await.unwrap();
    });

    // The replay agrees (I1–I6), and the money is all there (I2).
    let report = onecard_engine::verify::verify(dir.path()).unwrap();
    assert_eq!(report.state.total().unwrap(), Amount::ZERO);
    assert_eq!(report.state.credits.len(), 7, "6 credits and 1 funding");
    assert_eq!(
        report.state.merchant_clearing.get("recharge:b1").copied(),
        Some(amount("251.00").checked_neg())
    );
    // The journal's bank operations (what reconciliation matches a statement against): a
    // recharge's overflow is a credit of what went to the bank (rc-1: 150.00), not the net of
    // it and the batch's clearing account, which is no bank's.
    let ops = onecard_engine::bank_ops::journal_bank_ops(dir.path(), None).unwrap();
    let at_the_recharge: Vec<_> = ops
        .iter()
        .filter(|o| o.at == 1)
        .map(|o| (o.kind.clone(), o.amount))
        .collect();
    assert_eq!(
        at_the_recharge,
        vec![(onecard_engine::bank::BankOpKind::Credit, amount("150.00"))],
        "{ops:?}"
    );

    // Reopened: repeats still answer as the first time, and move nothing.
    actix_rt::System::new().block_on(async {
        let bank = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), cfg, Arc::new(SimBankPort(bank.clone())))
            .await
            .unwrap();
        let before = bank.balance("alice-bank");
        let r = engine
            .credit(salary("s-2", "alice", "1200.00", CreditTarget::Bank), 20)
            .await
            .unwrap();
        assert_eq!(r, Ok(Outcome::Credited));
        let r = engine
            .credit(salary("s-2", "alice", "1200.01", CreditTarget::Bank), 20)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Conflict);
        assert_eq!(bank.balance("alice-bank"), before);
        let fund = FundCmd {
            id: "f-1".into(),
            merchant: "acme".into(),
            amount: amount("2000.00"),
        };
        assert_eq!(
            engine.fund_merchant(fund, 20).await.unwrap(),
            Ok(Outcome::Credited)
        );
        assert_eq!(bank.balance("acme-bank"), Some(amount("1000.00")));
        assert_eq!(
            engine
                .account_summary("alice")
                .await
                .unwrap()
                .unwrap()
                .credit_limit,
            amount("500.00")
        );
        engine.close().await.unwrap();
    });
}

trait WithEmployer {
    fn with_employer(self, employer: &str) -> Self;
}

impl WithEmployer for CreditCmd {
    fn with_employer(mut self, employer: &str) -> Self {
        self.source = CreditSource::Employer {
            employer: employer.into(),
        };
        self
    }
}

#[test]
fn credits_fundings_and_limits_are_exact_idempotent_and_replayed() {
    run(EngineConfig {
        arbiters: 2,
        ..EngineConfig::default()
    });
}

#[test]
fn the_same_with_a_data_key_and_no_resident_actors() {
    run(EngineConfig {
        arbiters: 2,
        data_key: Some(onecard_engine::DataKey::from_bytes([7u8; 32])),
        passivate_after: Duration::ZERO,
        ..EngineConfig::default()
    });
}

/// SPEC F5: several bank accounts per consumer; one designated for top-ups; transfers between
/// them and into the wallet through the node, idempotent by id; replayed by `verify` and kept
/// across a restart.
fn linked_accounts(cfg: EngineConfig) {
    use onecard_engine::engine::BankTransferCmd;
    let dir = tempfile::tempdir().unwrap();
    let transfer = |id: &str, from: &str, to: &str, a: &str| BankTransferCmd {
        id: id.into(),
        consumer: "carol".into(),
        from: from.into(),
        to: to.into(),
        amount: amount(a),
    };
    let (main, savings) = actix_rt::System::new().block_on(async {
        let bank = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), cfg.clone(), Arc::new(SimBankPort(bank.clone())))
            .await
            .unwrap();
        open(&engine, &bank, "carol", "4000").await;
        open(&engine, &bank, "dave", "0").await;
        bank.open_account("carol-savings", amount("500")).unwrap();
        let main = engine.bank_accounts("carol").unwrap().unwrap()[0].clone();
        let savings = engine
            .link_bank("carol", "carol-savings", 1)
            .await
            .unwrap()
            .unwrap();
        // Linking again is the same; someone else's account is refused.
        assert_eq!(
            engine.link_bank("carol", "carol-savings", 1).await.unwrap(),
            Ok(savings.clone())
        );
        let r = engine.link_bank("carol", "dave-bank", 1).await.unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Conflict);
        let r = engine.link_bank("carol", "", 1).await.unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Invalid);
        assert_eq!(
            engine.bank_accounts("carol").unwrap().unwrap(),
            vec![main.clone(), savings.clone()]
        );

        // Between the two accounts, through the node.
        let t = transfer("tr-1", &main, &savings, "1000.00");
        assert_eq!(
            engine.transfer_between_banks(t.clone(), 2).await.unwrap(),
            Ok(Outcome::Ok)
        );
        assert_eq!(
            engine.transfer_between_banks(t, 2).await.unwrap(),
            Ok(Outcome::Ok)
        );
        assert_eq!(bank.balance("carol-savings"), Some(amount("1500.00")));
        assert_eq!(bank.balance("carol-bank"), Some(amount("5000.00")));
        // More than the account holds: refused, and the other side is untouched.
        let r = engine
            .transfer_between_banks(transfer("tr-2", &savings, &main, "1500.01"), 3)
            .await
            .unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Funds);
        assert_eq!(bank.balance("carol-savings"), Some(amount("1500.00")));
        for (t, kind) in [
            (transfer("tr-3", &main, &main, "1.00"), RefusalKind::Invalid),
            (
                transfer("tr-3", &main, "dave-bank", "1.00"),
                RefusalKind::Unknown,
            ),
            (
                transfer("tr-3", &main, &savings, "0.00"),
                RefusalKind::Amount,
            ),
            (
                transfer("tr-1", &main, &savings, "2.00"),
                RefusalKind::Conflict,
            ),
        ] {
            let r = engine.transfer_between_banks(t, 3).await.unwrap();
            assert_eq!(r.unwrap_err().kind, kind);
        }

        // From the linked account into the wallet (room 1000.00).
        let into_wallet = CreditCmd {
            id: "dep-1".into(),
            consumer: "carol".into(),
            source: CreditSource::LinkedBank {
                bank: savings.clone(),
            },
            target: CreditTarget::WalletOnly,
            amount: amount("600.00"),
        };
        assert_eq!(
            engine.credit(into_wallet, 4).await.unwrap(),
            Ok(Outcome::Credited)
        );
        assert_eq!(wallet(&engine, "carol").await, amount("4600.00"));
        assert_eq!(bank.balance("carol-savings"), Some(amount("900.00")));

        // Designated: the savings account now tops the wallet up.
        assert_eq!(
            engine.designate_bank("carol", &savings, 5).await.unwrap(),
            Ok(Outcome::Ok)
        );
        let r = engine.designate_bank("carol", "nope", 5).await.unwrap();
        assert_eq!(r.unwrap_err().kind, RefusalKind::Unknown);
        engine
            .open_merchant("shop", None, 0)
            .await
            .unwrap()
            .unwrap();
        let order = PlaceOrder {
            id: "o-1".into(),
            consumer: "carol".into(),
            merchant: "shop".into(),
            amount: "100.00".into(),
            release: json!({"on": "receipt"}),
        };
        assert_eq!(
            engine.place_order(order, 6).await.unwrap(),
            Ok(Outcome::Accepted)
        );
        assert_eq!(
            engine.confirm_receipt("o-1", true, 7).await.unwrap(),
            Ok(Outcome::Settled)
        );
        assert_eq!(wallet(&engine, "carol").await, amount("5000.00"));
        assert_eq!(bank.balance("carol-savings"), Some(amount("400.00")));
        assert_eq!(bank.balance("carol-bank"), Some(amount("5000.00")));
        engine.close().await.unwrap();
        (main, savings)
    });
    let report = onecard_engine::verify::verify(dir.path()).unwrap();
    assert_eq!(report.state.total().unwrap(), Amount::ZERO);
    actix_rt::System::new().block_on(async {
        let bank = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(dir.path(), cfg, Arc::new(SimBankPort(bank.clone())))
            .await
            .unwrap();
        // The bank's balances come back from the log, every account's.
        assert_eq!(bank.balance("carol-savings"), Some(amount("400.00")));
        assert_eq!(bank.balance("carol-bank"), Some(amount("5000.00")));
        assert_eq!(
            engine.bank_accounts("carol").unwrap().unwrap(),
            vec![savings.clone(), main.clone()]
        );
        assert_eq!(
            engine
                .transfer_between_banks(transfer("tr-1", &main, &savings, "1000.00"), 8)
                .await
                .unwrap(),
            Ok(Outcome::Ok)
        );
        assert_eq!(bank.balance("carol-savings"), Some(amount("400.00")));
        engine.close().await.unwrap();
    });
}

#[test]
fn linked_bank_accounts_transfer_and_designate() {
    linked_accounts(EngineConfig {
        arbiters: 2,
        ..EngineConfig::default()
    });
}

#[test]
fn linked_bank_accounts_with_a_data_key() {
    linked_accounts(EngineConfig {
        arbiters: 2,
        data_key: Some(onecard_engine::DataKey::from_bytes([9u8; 32])),
        passivate_after: Duration::ZERO,
        ..EngineConfig::default()
    });
}

/// A limit lowered below what is reserved keeps the reservation (SPEC F10): I4 holds at the
/// moment of each reservation, so `verify` accepts a consumer that ends with more reserved
/// than its lowered limit (found by `onecard-sim load --services-pct`: an order still waiting
/// for funds at the end of a run, its consumer's limit lowered since).
#[test]
fn verify_accepts_a_reservation_above_a_limit_lowered_after_it() {
    let dir = tempfile::tempdir().unwrap();
    actix_rt::System::new().block_on(async {
        let bank = SimBank::open(dir.path()).unwrap();
        let engine = Engine::open(
            dir.path(),
            EngineConfig::default(),
            Arc::new(SimBankPort(bank.clone())),
        )
        .await
        .unwrap();
        open(&engine, &bank, "alice", "100").await;
        bank.open_account("acme-bank", amount("0")).unwrap();
        engine
            .open_merchant("acme", Some("acme-bank"), 0)
            .await
            .unwrap()
            .unwrap();
        let order = PlaceOrder {
            id: "o1".into(),
            consumer: "alice".into(),
            merchant: "acme".into(),
            amount: "600.00".into(),
            release: json!({"on": "receipt"}),
        };
        assert_eq!(
            engine.place_order(order, 1).await.unwrap(),
            Ok(Outcome::Accepted)
        );
        let r = engine
            .set_credit_limit("alice", amount("0.00"), "a failed bank debit", 2)
            .await
            .unwrap();
        assert_eq!(r, Ok(Outcome::Ok));
        engine.close().await.unwrap();
    });
    let report = onecard_engine::verify::verify(dir.path()).unwrap();
    let alice = &report.state.consumers["alice"];
    assert_eq!(alice.reserved, amount("600.00"));
    assert_eq!(alice.credit_limit, amount("0.00"));
}
