//! `onecard demo`: the payment flow, told step by step on the real engine (actors, journal on
//! sled, simulated bank), ending with every balance and the `verify` checks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use onecard_engine::engine::{OpenConsumer, PlaceOrder, RefundRequest};
use onecard_engine::model::CommandResult;
use onecard_engine::{verify, Amount, Engine, NodeConfig, SimBank, SimBankPort};
use serde_json::json;

type DemoResult<T> = Result<T, String>;

fn show(r: &CommandResult) -> String {
    match r {
        Ok(o) => o.as_str().to_string(),
        Err(refusal) => format!("{} — {}", refusal.code_str(), refusal.message),
    }
}

struct Demo {
    engine: Engine,
    bank: Arc<SimBank>,
    now: u64,
}

impl Demo {
    async fn consumer_line(&self, id: &str) -> DemoResult<String> {
        let c = self
            .engine
            .consumer(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("consumer vanished")?;
        let bank = self.bank.balance(&c.bank).unwrap_or(Amount::ZERO);
        Ok(format!(
            "{id}: wallet {} | reserved {} of credit {} (available {}) | bank {} {}",
            c.wallet,
            c.reserved,
            c.credit_limit,
            c.available_credit(),
            c.bank,
            bank
        ))
    }

    async fn merchant_balance(&self, id: &str) -> DemoResult<Amount> {
        Ok(self
            .engine
            .merchant(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("merchant vanished")?
            .balance)
    }

    async fn place(
        &self,
        id: &str,
        consumer: &str,
        merchant: &str,
        amount: &str,
        release: serde_json::Value,
    ) -> DemoResult<CommandResult> {
        let req = PlaceOrder {
            id: id.into(),
            consumer: consumer.into(),
            merchant: merchant.into(),
            amount: amount.into(),
            release,
        };
        let r = self
            .engine
            .place_order(req, self.now)
            .await
            .map_err(|e| e.to_string())?;
        println!(
            "  place order {id}: {consumer} pays {merchant} {amount} → {}",
            show(&r)
        );
        Ok(r)
    }

    fn expect(&self, r: &CommandResult, want: &str) -> DemoResult<()> {
        let got = match r {
            Ok(o) => o.as_str().to_string(),
            Err(e) => e.code_str(),
        };
        if got != want {
            return Err(format!("expected {want}, got {got}"));
        }
        Ok(())
    }
}

fn load_config(config: Option<PathBuf>) -> DemoResult<NodeConfig> {
    match config {
        Some(p) => NodeConfig::load(&p).map_err(|e| e.to_string()),
        None if Path::new("config.toml").exists() => {
            NodeConfig::load(Path::new("config.toml")).map_err(|e| e.to_string())
        }
        None => Ok(NodeConfig::default()),
    }
}

pub async fn run(data: Option<PathBuf>, config: Option<PathBuf>) -> DemoResult<()> {
    let cfg = load_config(config)?;
    let dir = match data {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(&d)
                    .map_err(|e| e.to_string())?
                    .next()
                    .is_some()
            {
                return Err(format!(
                    "{} is not empty; the demo needs a fresh data directory",
                    d.display()
                ));
            }
            d
        }
        // Kept after the demo, so that `onecard verify --data DIR` can be run on it.
        None => tempfile::Builder::new()
            .prefix("onecard-demo-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep(),
    };
    let rules = cfg.engine.rules.clone();
    println!("OneCard demo — data directory {}", dir.display());
    println!(
        "rules: wallet cap {} {cur}, top-up threshold {}, direct mode up to {}, orders expire after {} s",
        rules.wallet_cap,
        rules.topup_threshold,
        rules.direct_max,
        rules.order_expiry_secs,
        cur = cfg.currency
    );
    let bank = SimBank::open(&dir).map_err(|e| e.to_string())?;
    let engine = Engine::open(
        &dir,
        cfg.engine.clone(),
        Arc::new(SimBankPort(bank.clone())),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut d = Demo {
        engine,
        bank: bank.clone(),
        now: 0,
    };

    println!("\n== Registering consumers (virtual account + wallet + designated bank account) and merchants");
    for (who, limit, bank_acct, balance) in [
        ("alice", "20000.00", "alice-bank", "30000.00"),
        ("bob", "1000.00", "bob-bank", "8000.00"),
        ("carol", "10000.00", "carol-bank", "12000.00"),
    ] {
        d.bank
            .open_account(
                bank_acct,
                Amount::parse(balance).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
        let req = OpenConsumer {
            consumer: who.into(),
            credit_limit: limit.into(),
            bank: bank_acct.into(),
            wallet: rules.wallet_cap.to_string(),
        };
        let r = d
            .engine
            .open_consumer(req, d.now)
            .await
            .map_err(|e| e.to_string())?;
        d.expect(&r, "ok")?;
        println!("  {}", d.consumer_line(who).await?);
    }
    for m in ["bookshop", "grocer", "electronics"] {
        let r = d
            .engine
            .open_merchant(m, None, d.now)
            .await
            .map_err(|e| e.to_string())?;
        d.expect(&r, "ok")?;
        println!("  merchant {m}: balance 0.00");
    }

    println!("\n== 1. An order placed and reserved against the virtual account's credit");
    let r = d
        .place(
            "o-1001",
            "alice",
            "bookshop",
            "120.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    println!("  {}", d.consumer_line("alice").await?);

    println!("\n== 2. An order refused for credit");
    let r = d
        .place(
            "o-1002",
            "bob",
            "electronics",
            "1500.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "refused:credit")?;

    println!("\n== 3. Release when the goods are received (the wallet pays, then is topped up to the cap)");
    d.now += 3_600;
    let r = d
        .engine
        .confirm_receipt("o-1001", true, d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  alice confirms receipt of o-1001 → {}", show(&r));
    d.expect(&r, "settled")?;
    println!("  {}", d.consumer_line("alice").await?);
    println!(
        "  bookshop balance {}",
        d.merchant_balance("bookshop").await?
    );

    println!("\n== 4. Release by a special code handed over at delivery");
    let r = d
        .place(
            "o-1003",
            "carol",
            "bookshop",
            "250.00",
            json!({"on": "code", "code": "739104"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    let r = d
        .engine
        .enter_code("o-1003", "111111", d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  carol enters a wrong code → {}", show(&r));
    d.expect(&r, "refused:code")?;
    let r = d
        .engine
        .enter_code("o-1003", "739104", d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  carol enters the right code → {}", show(&r));
    d.expect(&r, "settled")?;

    println!("\n== 5. An order released by time (one hour after placement)");
    let r = d
        .place(
            "o-1004",
            "alice",
            "grocer",
            "80.00",
            json!({"on": "time", "after_secs": 3600}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    d.now += 1_800;
    let r = d.engine.tick(d.now).await.map_err(|e| e.to_string())?;
    d.expect(&r, "ok")?;
    let state = d
        .engine
        .order("o-1004")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("order vanished")?
        .state;
    println!("  after 30 minutes: o-1004 is {state}");
    d.now += 1_800;
    let r = d.engine.tick(d.now).await.map_err(|e| e.to_string())?;
    d.expect(&r, "ok")?;
    let state = d
        .engine
        .order("o-1004")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("order vanished")?
        .state;
    println!("  after 60 minutes: o-1004 is {state}");
    if state.as_str() != "settled" {
        return Err(format!("o-1004 should have settled, is {state}"));
    }

    println!("\n== 6. An order that drains the wallet, then the top-up back to exactly the cap");
    let r = d
        .place(
            "o-1005",
            "carol",
            "grocer",
            "5000.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    println!("  before: {}", d.consumer_line("carol").await?);
    let r = d
        .engine
        .confirm_receipt("o-1005", true, d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  carol confirms receipt → {} (wallet paid 5000.00, fell to 0.00, topped up from carol-bank)", show(&r));
    d.expect(&r, "settled")?;
    println!("  after:  {}", d.consumer_line("carol").await?);

    println!(
        "\n== 7. An order above the cap: the wallet pays what it holds, the bank pays the rest"
    );
    let r = d
        .place(
            "o-1006",
            "alice",
            "electronics",
            "7500.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    let r = d
        .engine
        .confirm_receipt("o-1006", true, d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "  alice confirms receipt → {} (wallet 5000.00 + bank 2500.00, then top-up 5000.00)",
        show(&r)
    );
    d.expect(&r, "settled")?;
    println!("  {}", d.consumer_line("alice").await?);

    println!("\n== 8. A refund whose overflow above the cap is swept to the bank account");
    let req = RefundRequest {
        id: "rf-1".into(),
        order: "o-1006".into(),
        amount: "3000.00".into(),
    };
    let r = d
        .engine
        .refund(req, d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  electronics refunds 3000.00 of o-1006 → {} (the wallet is full, so all of it goes to alice-bank)", show(&r));
    d.expect(&r, "refunded")?;
    println!("  {}", d.consumer_line("alice").await?);

    println!("\n== 9. A cancelled order: the reservation is released");
    let r = d
        .place(
            "o-1007",
            "bob",
            "bookshop",
            "400.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    println!("  {}", d.consumer_line("bob").await?);
    let r = d
        .engine
        .cancel_order("o-1007", d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  bob cancels o-1007 → {}", show(&r));
    d.expect(&r, "cancelled")?;
    println!("  {}", d.consumer_line("bob").await?);

    println!("\n== Final balances");
    let state = d.engine.ledger_state().await.map_err(|e| e.to_string())?;
    let mut total = d.bank.total();
    for c in state.consumers.values() {
        println!(
            "  wallet:{:<12} {:>10}   reserved:{:<10} {:>10}",
            c.id, c.wallet, c.id, c.reserved
        );
        total = total.checked_add(c.wallet).map_err(|e| e.to_string())?;
    }
    for m in state.merchants.values() {
        println!("  merchant:{:<10} {:>10}", m.id, m.balance);
        total = total.checked_add(m.balance).map_err(|e| e.to_string())?;
    }
    for (acct, bal) in d.bank.balances() {
        println!("  bank:{:<14} {:>10}", acct, bal);
    }
    println!("  total (banks + wallets + merchants) {total}");

    d.engine.close().await.map_err(|e| e.to_string())?;
    bank.close();
    println!(
        "\n== Verify (the same checks as `onecard verify --data {}`)",
        dir.display()
    );
    let report = verify::verify(&dir).map_err(|e| e.to_string())?;
    println!("{report}");
    Ok(())
}
