//! `onecard demo`, section 11: the settlement center's services (SPEC F5–F10, F12), a few lines
//! each, on the same engine and journal as the orders before them.
//!
//! The money moves through the engine's own commands, exactly as the node sends them; what the
//! node decides around them comes from the node's own code, not from a copy: the autopay rule
//! (`bills::decide`), the recharge code's keyed hash and its throttle (`recharge`), the payroll
//! file's checks (`payroll::file`), the credit policy's arithmetic (`credit::apply`) and the
//! monthly analysis (`analysis::Item::of` and `apply` over the engine's feed). The HTTP API,
//! the notifications and their webhooks are the node's (`onecard serve`) and are tested in
//! `tests/services*.rs`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use onecard_engine::commands::{BankTransferCmd, CreditCmd, FundCmd, PlaceCmd, ReaderPayment};
use onecard_engine::ledger::{recharge_clearing, GatewayRules};
use onecard_engine::{Amount, CreditSource, CreditTarget, Release};
use onecard_node::analysis::{self, Item, YearMonth};
use onecard_node::bills::{self, BillAction};
use onecard_node::credit::{self, CreditPolicy, CreditRecord, Delta, PolicyKind};
use onecard_node::payroll::{self, file as payroll_file};
use onecard_node::recharge::{self, Code, KeySource, RechargeKey};
use onecard_node::records::{AutopayRule, MonthAggregate, PayAccount};
use onecard_protocol::mask_card_number;
use onecard_terminal::flow::PaymentEnd;

use super::{ended, show, Demo, DemoResult};

const DAY: u64 = 86_400;

/// The demo's merchants by category, as the node's merchant records give them (billers by
/// their kind, `bill:<kind>`).
fn category_of(merchant: &str) -> String {
    match merchant {
        "bookshop" => "books",
        "grocer" => "groceries",
        "electronics" => "electronics",
        "casino" => "gambling",
        "city-water" => "bill:water",
        _ => "other",
    }
    .to_string()
}

fn amount(text: &str) -> DemoResult<Amount> {
    Amount::parse(text).map_err(|e| e.to_string())
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Demo {
    /// The services, one after the other.
    pub(super) async fn services(&mut self) -> DemoResult<()> {
        println!("\n== 11. The settlement center's services");
        self.gateway_rules().await?;
        self.bill().await?;
        self.recharge_card().await?;
        self.salaries().await?;
        self.dynamic_credit().await?;
        self.linked_accounts().await?;
        self.monthly_analysis()?;
        Ok(())
    }

    /// F9: the consumer's own rules, checked when the reader authenticates the payment.
    async fn gateway_rules(&mut self) -> DemoResult<()> {
        println!(
            "  -- gateway rules (F9): alice allows at most 1000.00 a payment and blocks gambling"
        );
        let r = self
            .engine
            .open_merchant("casino", None, self.now)
            .await
            .map_err(err)?;
        self.expect(&r, "ok")?;
        let rules = GatewayRules {
            max_per_payment: Some(amount("1000.00")?),
            blocked_categories: vec!["gambling".into()],
            ..GatewayRules::default()
        };
        let r = self
            .engine
            .set_gateway_rules("alice", Some(rules), self.now)
            .await
            .map_err(err)?;
        self.expect(&r, "ok")?;
        for (merchant, order, cents) in [
            ("casino", "o-2001", 5_000u32),
            ("grocer", "o-2002", 150_000),
        ] {
            let payment = ReaderPayment {
                category: category_of(merchant),
            };
            let end = self.at_reader_paying("alice", (merchant, payment), order, u64::from(cents));
            println!(
                "  [3 authenticate] alice pays {merchant} {} at her reader → {}",
                Amount::from_cents(i64::from(cents)),
                ended(&end)
            );
            if !matches!(end, PaymentEnd::Refused(_)) {
                return Err(format!("the gateway rules must refuse {order}: {end:?}"));
            }
        }
        Ok(())
    }

    /// F7: a bill from a biller, paid by the consumer's autopay rule "on the due date":
    /// reserved against credit at once, settled when due, like any order.
    async fn bill(&mut self) -> DemoResult<()> {
        let r = self
            .engine
            .open_merchant("city-water", None, self.now)
            .await
            .map_err(err)?;
        self.expect(&r, "ok")?;
        let due = self.now + 3 * DAY;
        let bill_amount = amount("45.20")?;
        let rule = AutopayRule::OnDueDate;
        let action = bills::decide(Some(&rule), bill_amount);
        let after_secs = bills::release_after(action, self.now, due)
            .ok_or("the rule on_due_date must pay the bill")?;
        println!(
            "  -- bills (F7): city-water posts bill W-2026-11 to bob, {bill_amount} due in 3 days; bob's rule for city-water is {}",
            bills::rule_name(Some(&rule))
        );
        debug_assert_eq!(action, BillAction::PayOnDueDate);
        let cmd = PlaceCmd {
            id: "bill-city-water-W-2026-11".into(),
            consumer: "bob".into(),
            merchant: "city-water".into(),
            amount: bill_amount,
            release: Release::Time { after_secs },
            at_reader: None,
        };
        let r = self.engine.place(cmd, self.now).await.map_err(err)?;
        println!("  the bill is placed as an order → {}", show(&r));
        self.expect(&r, "accepted")?;
        println!("  {}", self.consumer_line("bob").await?);
        self.now = due;
        let r = self.engine.tick(self.now).await.map_err(err)?;
        self.expect(&r, "ok")?;
        let state = self
            .engine
            .order("bill-city-water-W-2026-11")
            .await
            .map_err(err)?
            .ok_or("the bill's order vanished")?
            .state;
        println!("  [6 settle] on the due date the bill is {state}");
        if state.as_str() != "settled" {
            return Err(format!("the bill should have settled, is {state}"));
        }
        println!("  {}", self.consumer_line("bob").await?);
        Ok(())
    }

    /// F8: a prepaid recharge card, redeemed once; what the full wallet has no room for goes
    /// to the bank account. Wrong codes are throttled.
    async fn recharge_card(&mut self) -> DemoResult<()> {
        let key = RechargeKey::from_bytes(rand::random(), KeySource::DataKey);
        let code = Code::generate(&mut rand::rngs::OsRng);
        let mac = key.code_mac(&code);
        println!(
            "  -- recharge cards (F8): batch B-2026-12 issues a card of 100.00, code {} (the node keeps only its keyed hash {}…)",
            code.display(),
            &mac[..12]
        );
        let redeem = |consumer: &str| CreditCmd {
            id: recharge::credit_id(&mac),
            consumer: consumer.into(),
            source: CreditSource::RechargeCard {
                batch: "B-2026-12".into(),
            },
            target: CreditTarget::WalletOverflowToBank,
            amount: Amount::from_cents(10_000),
        };
        let r = self
            .engine
            .credit(redeem("bob"), self.now)
            .await
            .map_err(err)?;
        println!(
            "  bob redeems it → {} (his wallet is at the cap: the 100.00 goes to his bank account)",
            show(&r)
        );
        self.expect(&r, "credited")?;
        println!("  {}", self.consumer_line("bob").await?);
        let r = self
            .engine
            .credit(redeem("carol"), self.now)
            .await
            .map_err(err)?;
        println!("  carol types the same code → {}", show(&r));
        self.expect(&r, "refused:conflict")?;
        // Wrong codes count against the consumer (and the reader's address) whatever they
        // are: the fourth within the window is not even looked up.
        let throttle = recharge::Throttle::new(3, Duration::from_secs(15 * 60));
        let at_ms = self.now * 1000;
        for attempt in 1..=4 {
            match throttle.strike("carol", None, at_ms) {
                Ok(strike) => {
                    strike.wrong();
                    println!("  carol types a wrong code ({attempt} of 3 allowed in 15 minutes) → refused");
                }
                Err(wait) => println!(
                    "  carol types a wrong code ({attempt}) → throttled, not looked up: try again in {} s",
                    wait.as_secs()
                ),
            }
        }
        Ok(())
    }

    /// F12: an employer's payroll file, checked as a whole, then funded from the employer's
    /// bank account and paid line by line.
    async fn salaries(&mut self) -> DemoResult<()> {
        println!("  -- salaries (F12): employer acme uploads its payroll for November");
        self.bank
            .open_account("acme-bank", amount("50000.00")?)
            .map_err(err)?;
        let r = self
            .engine
            .open_merchant("acme", Some("acme-bank"), self.now)
            .await
            .map_err(err)?;
        self.expect(&r, "ok")?;
        let consumers = ["alice", "bob", "carol"];
        let known = |who: &str| Ok::<bool, String>(consumers.contains(&who));
        let bad = b"employee,amount,account\nalice,2500.00,wallet\nbob,1200.555,bank\nalice,10.00,wallet\n";
        match payroll_file::check(payroll_file::read_csv(bad), known)? {
            Ok(_) => return Err("a payroll with bad lines must be refused".into()),
            Err(refused) => {
                println!("  a first file is refused whole, nothing paid:");
                for p in &refused.problems {
                    println!(
                        "    line {}: {}",
                        p.line.map_or("-".into(), |l| l.to_string()),
                        p.message
                    );
                }
            }
        }
        let good = b"employee,amount,account\nalice,2500.00,wallet\ncarol,1800.00,bank\n";
        let batch = payroll_file::check(payroll_file::read_csv(good), known)?
            .map_err(|r| format!("the payroll should pass: {r:?}"))?;
        let reference = "acme-2026-11";
        let r = self
            .engine
            .fund_merchant(
                FundCmd {
                    id: payroll::funding_id(reference),
                    merchant: "acme".into(),
                    amount: batch.total,
                },
                self.now,
            )
            .await
            .map_err(err)?;
        println!(
            "  the corrected file: 2 lines, {} funded from acme's bank account → {}",
            batch.total,
            show(&r)
        );
        self.expect(&r, "credited")?;
        for line in &batch.lines {
            let target = match line.account {
                PayAccount::Wallet => CreditTarget::WalletOverflowToBank,
                PayAccount::Bank => CreditTarget::Bank,
            };
            let cmd = CreditCmd {
                id: payroll::credit_id(reference, line.line),
                consumer: line.employee.clone(),
                source: CreditSource::Employer {
                    employer: "acme".into(),
                },
                target,
                amount: line.amount,
            };
            let r = self.engine.credit(cmd, self.now).await.map_err(err)?;
            println!(
                "  line {}: {} {} to the {} → {}",
                line.line,
                line.employee,
                line.amount,
                match line.account {
                    PayAccount::Wallet => "wallet",
                    PayAccount::Bank => "bank account",
                },
                show(&r)
            );
            self.expect(&r, "credited")?;
        }
        println!("  {}", self.consumer_line("alice").await?);
        println!("  {}", self.consumer_line("carol").await?);
        Ok(())
    }

    /// F10: the credit policy raises bob's limit for the bill he paid on time and the card
    /// credit line the operator recorded; a lower limit later keeps what is reserved.
    async fn dynamic_credit(&mut self) -> DemoResult<()> {
        let policy = CreditPolicy {
            kind: PolicyKind::CardCreditLine,
            raise_after: 1,
            ..CreditPolicy::default()
        };
        let mut record = CreditRecord::opened(amount("1000.00")?, amount("5000.00")?, policy.kind);
        let delta = Delta {
            on_time: 1,
            credit_line: Some(amount("1500.00")?),
            ..Delta::default()
        };
        let change = credit::apply(&policy, &mut record, &delta)
            .map_err(err)?
            .ok_or("the policy should change bob's limit")?;
        println!(
            "  -- dynamic credit (F10, policy card_credit_line): bob's limit → {} ({})",
            change.limit, change.reason
        );
        let r = self
            .engine
            .set_credit_limit("bob", change.limit, &change.reason, self.now)
            .await
            .map_err(err)?;
        self.expect(&r, "ok")?;
        println!("  {}", self.consumer_line("bob").await?);
        Ok(())
    }

    /// F5: a second bank account linked, money moved between the consumer's accounts.
    async fn linked_accounts(&mut self) -> DemoResult<()> {
        self.bank
            .open_account("carol-savings", amount("2000.00")?)
            .map_err(err)?;
        let savings = self
            .engine
            .link_bank("carol", "carol-savings", self.now)
            .await
            .map_err(err)?
            .map_err(|r| r.message)?;
        let accounts = self
            .engine
            .bank_accounts("carol")
            .map_err(err)?
            .ok_or("carol vanished")?;
        let designated = accounts.first().ok_or("carol has no bank account")?.clone();
        println!(
            "  -- linked bank accounts (F5): carol links {} beside her designated {}",
            mask_card_number("carol-savings"),
            mask_card_number(&self.engine.real_bank_account(&designated).map_err(err)?)
        );
        let cmd = BankTransferCmd {
            id: "tr-carol-1".into(),
            consumer: "carol".into(),
            from: savings,
            to: designated,
            amount: amount("500.00")?,
        };
        let r = self
            .engine
            .transfer_between_banks(cmd, self.now)
            .await
            .map_err(err)?;
        println!(
            "  carol moves 500.00 from savings to her designated account → {} (savings now {})",
            show(&r),
            self.bank.balance("carol-savings").unwrap_or(Amount::ZERO)
        );
        self.expect(&r, "ok")?;
        Ok(())
    }

    /// F6: the month's income and spending per consumer, from the engine's typed feed as the
    /// node's history index is built (never by scanning the accounts).
    fn monthly_analysis(&self) -> DemoResult<()> {
        let month = YearMonth::of_unix(self.now);
        let mut months: HashMap<String, MonthAggregate> = HashMap::new();
        let mut after = 0;
        loop {
            let feed = self.engine.feed_after(after, 1024).map_err(err)?;
            for record in &feed.records {
                for entry in &record.entries {
                    if YearMonth::of_unix(entry.at) != month {
                        continue;
                    }
                    for event in &entry.events {
                        if let Some(item) = Item::of(&event.kind, category_of).map_err(err)? {
                            let agg = months.entry(item.consumer().to_string()).or_default();
                            analysis::apply(agg, &item).map_err(err)?;
                        }
                    }
                }
            }
            if feed.through == after {
                break;
            }
            after = feed.through;
        }
        println!(
            "  -- spending analysis (F6), {} from the journal's feed:",
            month.name()
        );
        let names: BTreeMap<_, _> = months.iter().collect();
        for (who, m) in names {
            let by_category = m
                .by_category
                .iter()
                .map(|(c, a)| format!("{c} {a}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "  {who}: spent {} ({}) | income {}",
                m.spending,
                if by_category.is_empty() {
                    "nothing".into()
                } else {
                    by_category
                },
                m.income
            );
        }
        Ok(())
    }

    /// What the recharge cards redeemed brought in from outside: their batch's clearing
    /// account is debited by each (the operator was paid when the cards were sold).
    pub(super) fn recharged(state: &onecard_engine::ledger::LedgerState) -> DemoResult<Amount> {
        state
            .merchant_clearing
            .get(&recharge_clearing("B-2026-12"))
            .map_or(Ok(Amount::ZERO), |a| Ok(a.checked_neg()))
    }
}
