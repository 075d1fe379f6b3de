//! The settlement center's services end to end over the node's API (issue 13): the rules
//! each service adds, seen the way a consumer, a merchant and the reader see them. Each
//! service's own detailed tests are in `tests/services_*.rs`.

mod common;

use common::node::*;
use onecard_terminal::flow::PaymentEnd;
use serde_json::{json, Value};

fn put_rules(node: &NodeProc, session: &str, key: &str, rules: Value) -> Answer {
    call(
        "PUT",
        &node.url("/v1/consumer/gateway-rules"),
        Some(session),
        Some(key),
        Some(&rules),
    )
}

/// SPEC F9: the consumer's own payment rules, set through the consumer API after a sign-in at
/// the reader, refuse at the reader with their own prompt naming the rule; a payment within
/// them goes through; bad rules are refused with the reason; removed, they refuse nothing.
#[test]
fn a_gateway_rule_refuses_at_the_reader_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path());
    let w = setup(&node, None, None);
    let mut card = card_for(&w, 1);
    let (end, answer) = sign_in(&node, &w, &mut card, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let session = answer.unwrap().session.unwrap().token;

    let none = call(
        "GET",
        &node.url("/v1/consumer/gateway-rules"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(none.status, 200, "{:?}", none.body);
    assert_eq!(none.body["rules"], Value::Null);

    let set = put_rules(
        &node,
        &session,
        "rules-1",
        json!({"max_per_payment": "50.00", "max_per_day": "80.00", "blocked_merchants": ["casino"]}),
    );
    assert_eq!(set.status, 200, "{:?}", set.body);
    assert_eq!(set.body["rules"]["max_per_payment"], "50.00");

    // Above the limit per payment: refused at the reader, the rule named in the prompt.
    let order = create_order(&node, &w, "60.00", false);
    let (end, answer) = pay(&node, &w, &mut card, &order, PIN);
    let PaymentEnd::Refused(prompt) = end else {
        panic!("{end:?}")
    };
    assert!(
        prompt.text.contains("payment rules") && prompt.text.contains("50.00"),
        "{}",
        prompt.text
    );
    let answer = answer.unwrap();
    assert_eq!(answer.outcome, "gateway_refused");
    assert_eq!(answer.rule.as_deref(), Some("max_per_payment"));
    assert!(answer.order.is_none(), "nothing placed");

    // Within it: authorised and placed; then the day's limit refuses the next.
    let order = create_order(&node, &w, "45.00", false);
    let (end, _) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let read = call(
        "GET",
        &node.url("/v1/consumer/gateway-rules"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(read.body["spent_today"], "45.00", "{:?}", read.body);
    let order = create_order(&node, &w, "40.00", false);
    let (end, answer) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Refused(_)), "{end:?}");
    assert_eq!(answer.unwrap().rule.as_deref(), Some("max_per_day"));

    // Malformed rules: refused with the reason, the rules in force unchanged.
    for (i, bad) in [
        json!({"max_per_payment": "0.00"}),
        json!({"hours": {"from": "25:00", "to": "06:00"}}),
        json!({"max_per_day": "1.001"}),
        json!({"no_such_rule": true}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = put_rules(&node, &session, &format!("bad-{i}"), bad.clone());
        assert!(
            r.status == 400 || r.status == 422,
            "{bad}: {} {:?}",
            r.status,
            r.body
        );
    }
    // Removed: the same payment goes through.
    let removed = put_rules(&node, &session, "rules-2", Value::Null);
    assert_eq!(removed.status, 200, "{:?}", removed.body);
    assert_eq!(removed.body["rules"], Value::Null);
    let (end, _) = pay(&node, &w, &mut card, &order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
}

fn consumer_call(
    node: &NodeProc,
    session: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Answer {
    call(method, &node.url(path), Some(session), key, body.as_ref())
}

fn wallet_of(node: &NodeProc, session: &str) -> String {
    let a = consumer_call(node, session, "GET", "/v1/consumer/account", None, None);
    assert_eq!(a.status, 200, "{a:?}");
    a.body["wallet"].as_str().unwrap().to_string()
}

/// SPEC F5: a consumer links a second bank account, moves money between the two and into the
/// wallet (each transfer once, whatever the retries), designates the other one for top-ups,
/// and a standing transfer rule runs by itself, once per run, and says how it went.
#[test]
fn linked_bank_accounts_transfers_and_standing_rules() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        "[rules]\ntopup_threshold = \"100.00\"\n[node]\ntick_interval_ms = 200\n",
    )
    .unwrap();
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&cfg));
    let w = setup(&node, None, None);
    let mut card = card_for(&w, 1);
    let (end, answer) = sign_in(&node, &w, &mut card, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let s = answer.unwrap().session.unwrap().token;

    let list = consumer_call(&node, &s, "GET", "/v1/consumer/bank-accounts", None, None);
    assert_eq!(list.status, 200, "{list:?}");
    let accounts = list.body["accounts"].as_array().unwrap().clone();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["designated"], true);
    let main = accounts[0]["id"].as_str().unwrap().to_string();
    assert!(
        !main.contains(BANK),
        "an account's id is not its number: {main}"
    );
    assert_eq!(list.body["auto_top_up"]["from"], main.as_str());

    let opened = admin(
        &node,
        "/v1/admin/bank-accounts",
        json!({"account": "DE02120300000000202051", "balance": "300.00"}),
    );
    assert_eq!(opened.status, 201, "{opened:?}");
    let linked = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/bank-accounts",
        Some("link-1"),
        Some(json!({"account": "DE02120300000000202051"})),
    );
    assert_eq!(linked.status, 201, "{linked:?}");
    assert_eq!(linked.body["account"], "******************2051");
    assert_eq!(linked.body["designated"], false);
    let savings = linked.body["id"].as_str().unwrap().to_string();
    // The designated account of the consumer again: already hers, the same answer.
    let again = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/bank-accounts",
        Some("link-2"),
        Some(json!({"account": BANK})),
    );
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(again.body["id"], main.as_str());

    // Between the accounts: once per Idempotency-Key; without one, refused.
    let body = json!({"from": savings, "to": main, "amount": "100.00"});
    let t = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-1"),
        Some(body.clone()),
    );
    assert_eq!(t.status, 201, "{t:?}");
    let t2 = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-1"),
        Some(body.clone()),
    );
    assert_eq!((t2.status, &t2.body["id"]), (201, &t.body["id"]));
    let none = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        None,
        Some(body),
    );
    assert_eq!(none.status, 400, "{none:?}");
    // More than the account holds (200.00 left): refused, nothing moves.
    let short = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-2"),
        Some(json!({"from": savings, "to": main, "amount": "200.01"})),
    );
    assert_eq!(short.status, 409, "{short:?}");
    // Into the wallet (500.00 of 5000.00): all or nothing under the cap.
    let over = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-3"),
        Some(json!({"from": main, "to": "wallet", "amount": "4500.01"})),
    );
    assert_eq!(over.status, 422, "{over:?}");
    let into = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-4"),
        Some(json!({"from": savings, "to": "wallet", "amount": "50.00"})),
    );
    assert_eq!(into.status, 201, "{into:?}");
    assert_eq!(wallet_of(&node, &s), "550.00");
    let unknown = consumer_call(
        &node,
        &s,
        "POST",
        "/v1/consumer/transfers",
        Some("t-5"),
        Some(json!({"from": "bk-nope", "to": "wallet", "amount": "1.00"})),
    );
    assert_eq!(unknown.status, 404, "{unknown:?}");

    // Designated: the savings account is listed first.
    let d = consumer_call(
        &node,
        &s,
        "POST",
        &format!("/v1/consumer/bank-accounts/{savings}/designate"),
        Some("d-1"),
        None,
    );
    assert_eq!(d.status, 200, "{d:?}");
    assert_eq!(d.body[0]["id"], savings.as_str());

    // A standing rule, first run a second from now: it runs once, and says so.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let bad = consumer_call(
        &node,
        &s,
        "PUT",
        "/v1/consumer/transfer-rules/monthly",
        Some("r-0"),
        Some(json!({"from": main, "to": "wallet", "amount": "25.00", "day": 31})),
    );
    assert_eq!(bad.status, 422, "{bad:?}");
    let rule = consumer_call(
        &node,
        &s,
        "PUT",
        "/v1/consumer/transfer-rules/monthly",
        Some("r-1"),
        Some(
            json!({"from": main, "to": "wallet", "amount": "25.00", "day": 1, "first_run": now + 1}),
        ),
    );
    assert_eq!(rule.status, 200, "{rule:?}");
    let ran = eventually(20, || {
        let l = consumer_call(&node, &s, "GET", "/v1/consumer/bank-accounts", None, None);
        let r = l.body["transfer_rules"][0].clone();
        (!r["last_run"].is_null()).then_some(r)
    })
    .expect("the rule ran");
    assert_eq!(ran["last_run"]["result"], "done", "{ran}");
    assert!(ran["next_due"].as_u64().unwrap() > now + 1, "{ran}");
    assert_eq!(wallet_of(&node, &s), "575.00");
    let inbox = consumer_call(&node, &s, "GET", "/v1/consumer/notifications", None, None);
    assert!(
        inbox.body.to_string().contains("transfer.done"),
        "{:?}",
        inbox.body
    );
    let gone = consumer_call(
        &node,
        &s,
        "DELETE",
        "/v1/consumer/transfer-rules/monthly",
        None,
        None,
    );
    assert_eq!(gone.status, 200, "{gone:?}");
    let gone = consumer_call(
        &node,
        &s,
        "DELETE",
        "/v1/consumer/transfer-rules/monthly",
        None,
        None,
    );
    assert_eq!(gone.status, 404, "{gone:?}");
}

// ---------------------------------------------------------------------------------------------
// A month of all the services together.

mod month {
    use std::collections::{BTreeMap, HashMap};
    use std::path::Path;
    use std::sync::Arc;

    use onecard_engine::commands::{BankTransferCmd, CreditCmd, FundCmd, PlaceCmd, ReaderPayment};
    use onecard_engine::feed::FeedKind;
    use onecard_engine::ledger::{recharge_clearing, GatewayRules};
    use onecard_engine::model::CommandResult;
    use onecard_engine::{
        verify, Amount, CreditSource, CreditTarget, Engine, EngineConfig, OpenConsumer, Release,
        SimBank, SimBankPort,
    };
    use onecard_node::analysis::{self, Item, YearMonth};
    use onecard_node::bills::{self, BillAction};
    use onecard_node::credit::{self, CreditPolicy, CreditRecord, Delta, PolicyKind};
    use onecard_node::payroll::{self, file as payroll_file};
    use onecard_node::records::{AutopayRule, MonthAggregate, PayAccount};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// 2026-11-01 00:00 UTC.
    const START: u64 = 1_793_491_200;
    const DAY: u64 = 86_400;
    const CONSUMERS: usize = 6;
    /// (merchant, category) of the shops paid at readers.
    const SHOPS: [(&str, &str); 3] = [
        ("shop", "groceries"),
        ("books", "books"),
        ("casino", "gambling"),
    ];
    const BILLERS: [(&str, &str); 2] = [("water", "bill:water"), ("power", "bill:electricity")];

    fn amount(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    fn outcome(r: &CommandResult) -> String {
        match r {
            Ok(o) => o.as_str().to_string(),
            Err(e) => e.code_str(),
        }
    }

    fn who(i: usize) -> String {
        format!("c{i}")
    }

    fn category_of(merchant: &str) -> String {
        SHOPS
            .iter()
            .chain(BILLERS.iter())
            .find(|(m, _)| *m == merchant)
            .map_or("other", |(_, c)| c)
            .to_string()
    }

    struct World {
        dir: tempfile::TempDir,
        cfg: EngineConfig,
        engine: Option<Engine>,
        bank: Option<Arc<SimBank>>,
    }

    impl World {
        async fn open(&mut self) {
            let bank = SimBank::open(self.dir.path()).unwrap();
            let engine = Engine::open(
                self.dir.path(),
                self.cfg.clone(),
                Arc::new(SimBankPort(bank.clone())),
            )
            .await
            .unwrap();
            self.engine = Some(engine);
            self.bank = Some(bank);
        }

        /// A restart: everything acknowledged is there again, nothing else.
        async fn restart(&mut self) {
            let before = self.e().ledger_state().await.unwrap();
            let banks_before = self.b().balances();
            self.engine.take().unwrap().close().await.unwrap();
            self.bank.take().unwrap().close();
            self.open().await;
            assert_eq!(self.e().ledger_state().await.unwrap(), before);
            assert_eq!(self.b().balances(), banks_before);
        }

        fn e(&self) -> &Engine {
            self.engine.as_ref().unwrap()
        }

        fn b(&self) -> &SimBank {
            self.bank.as_ref().unwrap()
        }

        /// Banks, wallets and merchants' balances together.
        async fn total(&self) -> Amount {
            let state = self.e().ledger_state().await.unwrap();
            let mut t = self.b().total();
            for c in state.consumers.values() {
                t = t.checked_add(c.wallet).unwrap();
            }
            for m in state.merchants.values() {
                t = t.checked_add(m.balance).unwrap();
            }
            t
        }
    }

    /// What the test itself counts, to hold the engine's and the analysis's sums against.
    #[derive(Default)]
    struct Book {
        /// Spending (settled orders) and income (recharges, salaries) per consumer.
        spent: BTreeMap<String, Amount>,
        income: BTreeMap<String, Amount>,
        /// Credit ids acknowledged `credited`, with their amount.
        credited: BTreeMap<String, Amount>,
        recharged: Amount,
        salaries_paid: Amount,
        funded: Amount,
        /// Orders waiting for the consumer: (order, consumer, release by code?).
        open_orders: Vec<(String, String)>,
        /// Orders placed at readers for the consumer with gateway rules, per day.
        ruled_spent: HashMap<u64, Amount>,
    }

    fn add(map: &mut BTreeMap<String, Amount>, k: &str, a: Amount) {
        let v = map.entry(k.to_string()).or_default();
        *v = v.checked_add(a).unwrap();
    }

    /// SPEC F5–F10, F12 over 30 days of the engine's clock, as the node drives them: payments
    /// at readers under one consumer's gateway rules, water and power bills under each autopay
    /// rule, recharge cards (used again, by another), deposits from linked accounts, transfers
    /// between them, a payroll batch cut by a restart halfway and sent again whole, the credit
    /// policy setting limits at the month's end, a restart in the middle of the month. Then:
    /// `verify` (I1–I6, I8), conservation with the recharges as the only money from outside,
    /// wallets within the cap, every credit once in the journal, the employer's balance, the
    /// gateway's limits, and the month's analysis equal to the sums counted here.
    #[test]
    fn a_month_of_all_the_services_together_keeps_every_invariant() {
        actix_rt::System::new().block_on(month_of_services());
    }

    async fn month_of_services() {
        let mut w = World {
            dir: tempfile::tempdir().unwrap(),
            cfg: EngineConfig::default(),
            engine: None,
            bank: None,
        };
        w.open().await;
        let mut rng = StdRng::seed_from_u64(202_611);
        let mut book = Book::default();
        let cap = w.cfg.rules.wallet_cap;

        // Parties: consumers with a designated and a linked savings account, shops, billers,
        // an employer with its bank account.
        let mut savings = Vec::new();
        for i in 0..CONSUMERS {
            let c = who(i);
            w.b()
                .open_account(&format!("{c}-bank"), amount("20000.00"))
                .unwrap();
            w.b()
                .open_account(&format!("{c}-savings"), amount("3000.00"))
                .unwrap();
            let r = w
                .e()
                .open_consumer(
                    OpenConsumer {
                        consumer: c.clone(),
                        credit_limit: "3000.00".into(),
                        bank: format!("{c}-bank"),
                        wallet: "5000.00".into(),
                    },
                    START,
                )
                .await
                .unwrap();
            assert_eq!(outcome(&r), "ok");
            let stored = w
                .e()
                .link_bank(&c, &format!("{c}-savings"), START)
                .await
                .unwrap()
                .unwrap();
            savings.push(stored);
        }
        for (m, _) in SHOPS.iter().chain(BILLERS.iter()) {
            assert_eq!(
                outcome(&w.e().open_merchant(m, None, START).await.unwrap()),
                "ok"
            );
        }
        w.b()
            .open_account("acme-bank", amount("100000.00"))
            .unwrap();
        assert_eq!(
            outcome(
                &w.e()
                    .open_merchant("acme", Some("acme-bank"), START)
                    .await
                    .unwrap()
            ),
            "ok"
        );
        // c0 pays at most 300.00 a payment and 500.00 a day, and never for gambling.
        let rules = GatewayRules {
            max_per_payment: Some(amount("300.00")),
            max_per_day: Some(amount("500.00")),
            blocked_categories: vec!["gambling".into()],
            ..GatewayRules::default()
        };
        let r = w
            .e()
            .set_gateway_rules("c0", Some(rules), START)
            .await
            .unwrap();
        assert_eq!(outcome(&r), "ok");
        let autopay = [
            Some(AutopayRule::Always),
            Some(AutopayRule::UpTo {
                amount: amount("60.00"),
            }),
            Some(AutopayRule::OnDueDate),
            Some(AutopayRule::Ask),
            None,
            Some(AutopayRule::OnDueDate),
        ];
        let opening = w.total().await;
        let mut gateway_refusals = 0;

        for day in 0..30u64 {
            let morning = START + day * DAY + 8 * 3600;
            let now = |h: u64| morning + h * 60;
            // Yesterday's orders: most received, some cancelled.
            for (n, (order, _)) in std::mem::take(&mut book.open_orders)
                .into_iter()
                .enumerate()
            {
                let r = if rng.gen_bool(0.85) {
                    w.e()
                        .confirm_receipt(&order, true, now(n as u64))
                        .await
                        .unwrap()
                } else {
                    w.e().cancel_order(&order, now(n as u64)).await.unwrap()
                };
                let o = outcome(&r);
                assert!(
                    ["settled", "cancelled", "awaiting_funds"].contains(&o.as_str()),
                    "{order}: {o}"
                );
            }
            // Payments at the readers.
            for i in 0..CONSUMERS {
                let c = who(i);
                for k in 0..rng.gen_range(0..3) {
                    let (merchant, category) = SHOPS[rng.gen_range(0..SHOPS.len())];
                    let cents = rng.gen_range(1_000..45_000);
                    let a = Amount::from_cents(cents);
                    let id = format!("o-{day}-{i}-{k}");
                    let cmd = PlaceCmd {
                        id: id.clone(),
                        consumer: c.clone(),
                        merchant: merchant.into(),
                        amount: a,
                        release: Release::Receipt,
                        at_reader: Some(ReaderPayment {
                            category: category.into(),
                        }),
                    };
                    let r = w.e().place(cmd, now(30 + k)).await.unwrap();
                    let o = outcome(&r);
                    match o.as_str() {
                        "accepted" => {
                            if i == 0 {
                                assert!(a <= amount("300.00") && category != "gambling", "{id}");
                                let spent = book.ruled_spent.entry(day).or_default();
                                *spent = spent.checked_add(a).unwrap();
                                assert!(
                                    *spent <= amount("500.00"),
                                    "c0 spent {spent} on day {day}"
                                );
                            }
                            book.open_orders.push((id, c.clone()));
                        }
                        "refused:gateway" => {
                            assert_eq!(i, 0, "only c0 has rules");
                            gateway_refusals += 1;
                        }
                        "refused:credit" => {}
                        other => panic!("{id}: {other}"),
                    }
                }
            }
            // Bills: water on the 3rd, power on the 10th, due a week later.
            for (biller, bill_day, base) in [("water", 2, 3_000), ("power", 9, 5_000)] {
                if day != bill_day {
                    continue;
                }
                for (i, rule) in autopay.iter().enumerate() {
                    let c = who(i);
                    let a = Amount::from_cents(base + 1_000 * i as i64);
                    let due = now(0) + 7 * DAY;
                    let mut action = bills::decide(rule.as_ref(), a);
                    if action == BillAction::Ask {
                        // The consumer approves every other bill it is asked about.
                        if i % 2 == 1 {
                            continue;
                        }
                        action = BillAction::PayNow;
                    }
                    let after_secs = bills::release_after(action, now(60), due).unwrap();
                    let cmd = PlaceCmd {
                        id: format!("bill-{biller}-{c}"),
                        consumer: c.clone(),
                        merchant: biller.into(),
                        amount: a,
                        release: Release::Time { after_secs },
                        at_reader: None,
                    };
                    let r = w.e().place(cmd, now(60)).await.unwrap();
                    assert_eq!(outcome(&r), "accepted", "{biller} bill of {c}");
                }
            }
            // Recharge cards on the 6th and the 21st: each code once; a code used again by
            // its consumer changes nothing, by another consumer is refused.
            if day == 5 || day == 20 {
                for i in 0..CONSUMERS {
                    let cmd = CreditCmd {
                        id: format!("rc-{day}-{i}"),
                        consumer: who(i),
                        source: CreditSource::RechargeCard {
                            batch: "B-11".into(),
                        },
                        target: if i % 2 == 0 {
                            CreditTarget::WalletOverflowToBank
                        } else {
                            CreditTarget::WalletOnly
                        },
                        amount: amount("50.00"),
                    };
                    let r = w.e().credit(cmd.clone(), now(90)).await.unwrap();
                    let o = outcome(&r);
                    match o.as_str() {
                        "credited" => {
                            book.credited.insert(cmd.id.clone(), cmd.amount);
                            book.recharged = book.recharged.checked_add(cmd.amount).unwrap();
                            add(&mut book.income, &cmd.consumer, cmd.amount);
                        }
                        // A full wallet and "refuse": nothing moves, the code stays unused.
                        "refused:amount" => assert_eq!(cmd.target, CreditTarget::WalletOnly),
                        other => panic!("{}: {other}", cmd.id),
                    }
                    let again = w.e().credit(cmd.clone(), now(91)).await.unwrap();
                    assert_eq!(outcome(&again), o, "a repeat answers the first outcome");
                    if o == "credited" {
                        let stolen = CreditCmd {
                            consumer: who((i + 1) % CONSUMERS),
                            ..cmd
                        };
                        let r = w.e().credit(stolen, now(92)).await.unwrap();
                        assert_eq!(outcome(&r), "refused:conflict");
                    }
                }
            }
            // Deposits from the linked savings on the 9th, transfers to the designated account
            // on the 13th.
            if day == 8 || day == 12 {
                for (i, stored) in savings.iter().enumerate() {
                    let c = who(i);
                    let r = if day == 8 {
                        let cmd = CreditCmd {
                            id: format!("dep-{i}"),
                            consumer: c.clone(),
                            source: CreditSource::LinkedBank {
                                bank: stored.clone(),
                            },
                            target: CreditTarget::WalletOnly,
                            amount: amount("100.00"),
                        };
                        w.e().credit(cmd, now(120)).await.unwrap()
                    } else {
                        let designated = w.e().bank_accounts(&c).unwrap().unwrap()[0].clone();
                        let cmd = BankTransferCmd {
                            id: format!("tr-{i}"),
                            consumer: c.clone(),
                            from: stored.clone(),
                            to: designated,
                            amount: amount("200.00"),
                        };
                        w.e().transfer_between_banks(cmd, now(120)).await.unwrap()
                    };
                    let o = outcome(&r);
                    assert!(
                        ["credited", "ok", "refused:amount"].contains(&o.as_str()),
                        "{c} on day {day}: {o}"
                    );
                }
            }
            // The payroll on the 25th, cut by a restart halfway, then sent again whole.
            if day == 24 {
                pay_salaries(&mut w, &mut book, now(150)).await;
            }
            // A restart in the middle of the month.
            if day == 15 {
                w.restart().await;
            }
            // The credit policy at the month's end: on-time settlements raise the limit.
            if day == 29 {
                set_limits(&w, now(200)).await;
            }
            // The node's scheduler ticks through the day: time releases, expiries.
            for h in [12, 18, 23] {
                let r = w.e().tick(START + day * DAY + h * 3600).await.unwrap();
                assert_eq!(outcome(&r), "ok");
            }
        }
        assert!(gateway_refusals > 0, "c0's rules never refused anything");

        // Every bill settled by the month's end (due within it, banks well funded).
        for (biller, _) in BILLERS {
            for i in 0..CONSUMERS {
                if let Some(o) = w
                    .e()
                    .order(&format!("bill-{biller}-{}", who(i)))
                    .await
                    .unwrap()
                {
                    assert_eq!(o.state.as_str(), "settled", "{biller} bill of c{i}");
                }
            }
        }
        let state = w.e().ledger_state().await.unwrap();
        // Money: the recharges are the only money from outside.
        assert_eq!(
            w.total().await,
            opening.checked_add(book.recharged).unwrap(),
            "banks + wallets + merchants"
        );
        assert_eq!(
            state
                .merchant_clearing
                .get(&recharge_clearing("B-11"))
                .copied(),
            Some(book.recharged.checked_neg())
        );
        for c in state.consumers.values() {
            assert!(
                c.wallet >= Amount::ZERO && c.wallet <= cap,
                "{}: {}",
                c.id,
                c.wallet
            );
        }
        assert_eq!(
            state.merchants["acme"].balance,
            book.funded.checked_sub(book.salaries_paid).unwrap()
        );
        // Every credit once in the journal, and the month's analysis as counted here.
        let mut credits: BTreeMap<String, Amount> = BTreeMap::new();
        let mut months: BTreeMap<String, MonthAggregate> = BTreeMap::new();
        let november = YearMonth::of_unix(START);
        let mut after = 0;
        loop {
            let feed = w.e().feed_after(after, 512).unwrap();
            for record in &feed.records {
                for entry in &record.entries {
                    for event in &entry.events {
                        if let FeedKind::Credited {
                            credit,
                            source,
                            amount,
                            ..
                        } = &event.kind
                        {
                            if source.is_income() {
                                assert!(
                                    credits.insert(credit.clone(), *amount).is_none(),
                                    "credit {credit} twice in the journal"
                                );
                            }
                        }
                        if let FeedKind::OrderSettled {
                            consumer,
                            wallet_paid,
                            bank_paid,
                            ..
                        } = &event.kind
                        {
                            add(
                                &mut book.spent,
                                consumer,
                                wallet_paid.checked_add(*bank_paid).unwrap(),
                            );
                        }
                        if YearMonth::of_unix(entry.at) == november {
                            if let Some(item) = Item::of(&event.kind, category_of).unwrap() {
                                let agg = months.entry(item.consumer().to_string()).or_default();
                                analysis::apply(agg, &item).unwrap();
                            }
                        }
                    }
                }
            }
            if feed.through == after {
                break;
            }
            after = feed.through;
        }
        assert_eq!(credits, book.credited, "each credit acknowledged, once");
        for i in 0..CONSUMERS {
            let c = who(i);
            let m = months.get(&c).cloned().unwrap_or_default();
            assert_eq!(
                m.spending,
                book.spent.get(&c).copied().unwrap_or_default(),
                "{c}"
            );
            assert_eq!(
                m.income,
                book.income.get(&c).copied().unwrap_or_default(),
                "{c}"
            );
            let bills: Amount = m
                .by_category
                .iter()
                .filter(|(k, _)| k.starts_with("bill:"))
                .try_fold(Amount::ZERO, |s, (_, a)| s.checked_add(*a))
                .unwrap();
            assert!(
                bills.is_positive() || i % 2 == 1,
                "{c}'s bills are not in the analysis"
            );
        }
        let dir = w.dir.path().to_path_buf();
        w.engine.take().unwrap().close().await.unwrap();
        w.bank.take().unwrap().close();
        verified(&dir);
    }

    fn verified(dir: &Path) {
        let report = verify::verify(dir).unwrap();
        assert!(report.state.consumers.len() == CONSUMERS);
    }

    /// The employer's payroll: checked whole, funded, paid line by line; a restart cuts it
    /// halfway and the whole batch is sent again, as the node's payroll task does on opening.
    async fn pay_salaries(w: &mut World, book: &mut Book, now: u64) {
        let mut csv = String::from("employee,amount,account\n");
        for i in 0..CONSUMERS {
            let account = if i % 3 == 0 { "bank" } else { "wallet" };
            csv.push_str(&format!("{},{}.50,{account}\n", who(i), 1_000 + 100 * i));
        }
        let known = |e: &str| Ok::<bool, ()>(e.starts_with('c'));
        let batch = payroll_file::check(payroll_file::read_csv(csv.as_bytes()), known)
            .unwrap()
            .unwrap();
        let reference = "acme-2026-11";
        let fund = FundCmd {
            id: payroll::funding_id(reference),
            merchant: "acme".into(),
            amount: batch.total,
        };
        assert_eq!(
            outcome(&w.e().fund_merchant(fund, now).await.unwrap()),
            "credited"
        );
        book.funded = book.funded.checked_add(batch.total).unwrap();
        let line_cmd = |line: &payroll_file::PayLine| CreditCmd {
            id: payroll::credit_id(reference, line.line),
            consumer: line.employee.clone(),
            source: CreditSource::Employer {
                employer: "acme".into(),
            },
            target: match line.account {
                PayAccount::Wallet => CreditTarget::WalletOverflowToBank,
                PayAccount::Bank => CreditTarget::Bank,
            },
            amount: line.amount,
        };
        let half = batch.lines.len() / 2;
        for line in &batch.lines[..half] {
            let r = w.e().credit(line_cmd(line), now).await.unwrap();
            assert_eq!(outcome(&r), "credited");
        }
        w.restart().await;
        let employer_before = w.e().merchant("acme").await.unwrap().unwrap().balance;
        let mut paid_now = Amount::ZERO;
        for line in &batch.lines {
            let cmd = line_cmd(line);
            let r = w.e().credit(cmd.clone(), now + 1).await.unwrap();
            assert_eq!(outcome(&r), "credited", "line {}", line.line);
            if book.credited.insert(cmd.id, cmd.amount).is_none() {
                book.salaries_paid = book.salaries_paid.checked_add(cmd.amount).unwrap();
                add(&mut book.income, &cmd.consumer, cmd.amount);
            }
            if line.line as usize > half + 1 {
                paid_now = paid_now.checked_add(cmd.amount).unwrap();
            }
        }
        // The lines paid before the restart moved nothing the second time.
        let employer_after = w.e().merchant("acme").await.unwrap().unwrap().balance;
        assert_eq!(
            employer_before.checked_sub(employer_after).unwrap(),
            paid_now
        );
        assert_eq!(employer_after, Amount::ZERO);
    }

    /// The credit policy `deposit_multiple` over the month's on-time settlements.
    async fn set_limits(w: &World, now: u64) {
        // 2 × the opening deposit of 5000.00, +100.00 for every 3 settlements on time, at
        // most 12000.00.
        let policy = CreditPolicy {
            kind: PolicyKind::DepositMultiple,
            raise_after: 3,
            max: amount("12000.00"),
            ..CreditPolicy::default()
        };
        let mut raised = 0;
        let state = w.e().ledger_state().await.unwrap();
        for c in state.consumers.values() {
            let settled = c
                .orders
                .values()
                .filter(|o| o.state.as_str() == "settled")
                .count() as u64;
            let mut record =
                CreditRecord::opened(amount("3000.00"), amount("5000.00"), policy.kind);
            let delta = Delta {
                on_time: settled,
                ..Delta::default()
            };
            let Some(change) = credit::apply(&policy, &mut record, &delta).unwrap() else {
                continue;
            };
            let r = w
                .e()
                .set_credit_limit(&c.id, change.limit, &change.reason, now)
                .await
                .unwrap();
            assert_eq!(outcome(&r), "ok");
            let after = w.e().consumer(&c.id).await.unwrap().unwrap();
            assert_eq!(after.credit_limit, change.limit);
            assert!(
                after.credit_limit > amount("10000.00"),
                "{}: {}",
                c.id,
                change.reason
            );
            raised += 1;
            // A lower limit keeps what is reserved.
            assert_eq!(after.reserved, c.reserved);
        }
        assert_eq!(raised, CONSUMERS, "every consumer settled orders on time");
    }
}
