//! The checks at the end of a run, and the digest of the final state.
//!
//! They read the state three ways and make them agree: the actors' live state (read before
//! closing), the journal's replay by `verify` (after closing) and the bank's balances (the
//! in-process simulated bank's, or with `--bank` the bank simulator's, read over its admin
//! API); and they hold all three against the simulator's own book of what was opened,
//! deposited and acknowledged.

use std::collections::{BTreeMap, HashMap};

use onecard_engine::engine::RecoveryInfo;
use onecard_engine::ledger::{
    merchant_clearing, recharge_clearing, CreditRecord, CreditSource, LedgerItem, LedgerState,
};
use onecard_engine::verify::{VerifyError, VerifyReport};
use onecard_engine::{Amount, Engine, EngineError, OrderState};
use sha2::{Digest, Sha256};

use crate::analysis::AnalysisRun;
use crate::population::{
    biller_bank, biller_id, consumer, consumer_bank, consumer_id, employer_bank, employer_id,
    merchant_bank, merchant_id, order_id, recharge_batch, BILLER_KINDS, EMPLOYERS,
    EMPLOYER_BANK_BALANCE, RECHARGE_BATCHES,
};
use crate::runner::{Book, End, Expected};

/// One named check and what it found.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name,
            ok,
            detail: detail.into(),
        }
    }
}

/// Cents as an amount with two decimals, for messages.
pub fn money(cents: i128) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let a = cents.unsigned_abs();
    format!("{sign}{}.{:02}", a / 100, a % 100)
}

fn wallets_and_merchants(s: &LedgerState) -> i128 {
    let w: i128 = s.consumers.values().map(|c| c.wallet.cents()).sum();
    let m: i128 = s.merchants.values().map(|m| m.balance.cents()).sum();
    w + m
}

/// What the checks look at.
pub struct Inputs<'a> {
    pub seed: u64,
    pub consumers: u64,
    pub merchants: u64,
    pub wallet_cap: i64,
    /// Money opened at the simulated bank, in cents.
    pub opening_total: i128,
    pub book: &'a Book,
    /// Lifecycles generated (started).
    pub lifecycles: u64,
    pub unexpected: u64,
    pub errors: u64,
    /// The actors' state just before closing, summarised, if it could be read.
    pub live: Option<&'a LiveSummary>,
    pub bank_balances: &'a [(String, Amount)],
    pub verify: &'a Result<VerifyReport, VerifyError>,
    /// What reopening found, if the run restarted the engine.
    pub recovery: Option<&'a RecoveryInfo>,
    /// With `--bank`: what the bank simulator and the adapter said at the end. `bank_balances`
    /// then holds every account but the settlement center's own.
    pub external: Option<&'a ExternalBank>,
    /// Whether the run had service operations (`--services-pct`): billers and employers were
    /// opened, and the services' checks run.
    pub services: bool,
    /// The spending analysis run over the journal at the end (with services).
    pub analysis: Option<&'a AnalysisRun>,
}

impl Inputs<'_> {
    /// Merchants opened: the population's, and with services the billers and employers.
    fn merchants_opened(&self) -> u64 {
        self.merchants
            + if self.services {
                BILLER_KINDS.len() as u64 + EMPLOYERS
            } else {
                0
            }
    }

    /// Money that came from outside the bank: deposits, and recharge cards redeemed (paid to
    /// the operator when the cards were sold, owed by the batches' clearing accounts).
    fn money_from_outside(&self) -> i128 {
        self.book.deposits_total + self.book.services.redeemed.values().sum::<i128>()
    }
}

/// What the checks read of an external bank (`--bank`) and of the ISO 20022 adapter.
#[derive(Debug, Clone)]
pub struct ExternalBank {
    /// The settlement center's own account (`ONECARD-SETTLEMENT`): the creditor of every
    /// debit of a consumer, the debtor of every credit to one.
    pub own_account: String,
    /// Its balance in cents (0.00 if no message has named it yet).
    pub own_balance: i128,
    /// `GET /admin/totals`: the sum of every balance, and how many accounts.
    pub total: i128,
    pub accounts: u64,
    /// Also of `/admin/totals`: the messages the bank answered, the transactions it booked.
    pub bank_messages: u64,
    pub bank_bookings: u64,
    /// The adapter's counters: messages sent, sent again, operations answered with an
    /// unknown outcome, and those still unresolved at the end.
    pub messages: u64,
    pub resends: u64,
    pub unknown_outcomes: u64,
    pub unresolved: usize,
}

/// What the checks keep of the actors' live state: enough to hold it against the replay
/// without keeping two whole ledgers in memory at once (a million consumers' ledger is about
/// a gigabyte).
pub struct LiveSummary {
    /// [`digest`] of the live state, with the bank's balances.
    pub digest: String,
    pub wallets_and_merchants: i128,
    pub consumers: usize,
    pub merchants: usize,
}

impl LiveSummary {
    /// Summarises the running engine's state item by item (`Engine::visit_ledger`), without
    /// building it: a million consumers' ledger would be about another gigabyte beside the
    /// engine's own memory.
    pub fn of_engine(
        engine: &Engine,
        bank_balances: &[(String, Amount)],
    ) -> Result<LiveSummary, EngineError> {
        let mut d = StateDigest::default();
        let clock = engine.visit_ledger(|item| d.add(item))?;
        Ok(d.finish(clock, bank_balances))
    }
}

pub fn run(i: &Inputs) -> Vec<Check> {
    let mut checks = vec![Check::new(
        "outcomes",
        i.unexpected == 0 && i.errors == 0,
        format!(
            "{} outcomes the rules do not allow, {} engine or bank errors",
            i.unexpected, i.errors
        ),
    )];
    let replay = match i.verify {
        Ok(r) => {
            checks.push(Check::new(
                "verify",
                true,
                format!(
                    "I1-I6 and I8 hold over {} records, {} entries, {} events",
                    r.records, r.entries, r.events
                ),
            ));
            Some(&r.state)
        }
        Err(e) => {
            checks.push(Check::new("verify", false, e.to_string()));
            None
        }
    };
    let bank: HashMap<&str, i128> = i
        .bank_balances
        .iter()
        .map(|(k, v)| (k.as_str(), v.cents()))
        .collect();
    let bank_total: i128 = bank.values().sum();
    checks.push(conservation(i, bank_total, replay));
    match (i.live, replay) {
        (Some(live), Some(replay)) => {
            checks.push(live_equals_replay(live, replay, i.bank_balances))
        }
        (None, _) => checks.push(Check::new(
            "live_vs_journal",
            false,
            "the live state could not be read",
        )),
        (_, None) => {}
    }
    // The remaining checks read orders and clearing balances from the journal's replay (when
    // verify failed, the run has failed already).
    if let Some(ext) = i.external {
        checks.push(settlement_account(i, ext, replay));
        checks.push(Check::new(
            "bank_adapter",
            ext.unresolved == 0,
            format!(
                "the adapter (since it last opened): {} messages sent, {} sent again after a lost answer, {} operations answered with \
                 an unknown outcome, {} still unresolved at the end (must be 0); the bank answered \
                 {} messages and booked {} transactions",
                ext.messages,
                ext.resends,
                ext.unknown_outcomes,
                ext.unresolved,
                ext.bank_messages,
                ext.bank_bookings
            ),
        ));
    }
    if let Some(state) = replay {
        checks.push(population(i, state));
        checks.push(bank_reconciliation(i, state, &bank));
        checks.push(orders(i, state, &bank));
        if i.services {
            checks.extend(services(i, state));
        }
    }
    if let Some(r) = i.recovery {
        checks.push(Check::new(
            "recovery",
            r.bank_ops_reversed == 0,
            format!(
                "after a clean close: {} bank operations confirmed, {} reversed (must be 0: \
                 every operation belonged to an acknowledged command)",
                r.bank_ops_confirmed, r.bank_ops_reversed
            ),
        ));
    }
    checks
}

/// Money is neither made nor lost: the bank's total plus every wallet and merchant balance
/// (billers and employers included) equals what was opened at the bank plus what arrived from
/// outside: deposits, and recharge cards redeemed (which the batches' clearing accounts owe).
fn conservation(i: &Inputs, bank_total: i128, replay: Option<&LedgerState>) -> Check {
    let expected = i.opening_total + i.money_from_outside();
    let mut ok = true;
    let mut parts = vec![];
    let held_by = [
        ("journal", replay.map(wallets_and_merchants)),
        ("live", i.live.map(|l| l.wallets_and_merchants)),
    ];
    // With an external bank, its own account is left out here: it holds what the node owes
    // (the settlement_account check), which is the wallets and merchants' balances.
    let accounts = if i.external.is_some() {
        "the population's bank accounts"
    } else {
        "bank"
    };
    for (name, held) in held_by {
        let Some(held) = held else { continue };
        ok &= bank_total + held == expected;
        parts.push(format!(
            "{name}: {accounts} {} + wallets and merchants {} = {}",
            money(bank_total),
            money(held),
            money(bank_total + held)
        ));
    }
    ok &= !parts.is_empty();
    if i.services {
        let recharged = i.money_from_outside() - i.book.deposits_total;
        parts.push(format!(
            "expected: opening {} + deposits {} + recharges redeemed {} = {}",
            money(i.opening_total),
            money(i.book.deposits_total),
            money(recharged),
            money(expected)
        ));
        // The ledger's side of the same money: the recharge batches' clearing accounts owe
        // exactly what was redeemed (each is minus its redemptions).
        if let Some(s) = replay {
            let clearing: i128 = (0..RECHARGE_BATCHES)
                .filter_map(|k| {
                    s.merchant_clearing
                        .get(&recharge_clearing(&recharge_batch(k)))
                })
                .map(|a| a.cents())
                .sum();
            ok &= clearing == -recharged;
            parts.push(format!("recharge clearing accounts {}", money(clearing)));
        }
    } else {
        parts.push(format!(
            "expected: opening {} + deposits {} = {}",
            money(i.opening_total),
            money(i.book.deposits_total),
            money(expected)
        ));
    }
    if let Some(ext) = i.external {
        // Bookings only move money between the bank's accounts: its total (the settlement
        // center's account included) stays what was opened.
        ok &= ext.total == expected;
        parts.push(format!(
            "the bank's total over {} accounts (its own included): {}",
            ext.accounts,
            money(ext.total)
        ));
    }
    Check::new("conservation", ok, parts.join("; "))
}

/// The settlement center's account at the bank holds exactly what the node owes: every
/// booked debit of a consumer was credited to it and every credit to one debited from it,
/// and each is one posting on that consumer's clearing account, so it holds minus the sum
/// of the clearing accounts — which by I2 (every balance of the ledger sums to zero) is the
/// sum of the wallets and the merchants' balances.
fn settlement_account(i: &Inputs, ext: &ExternalBank, replay: Option<&LedgerState>) -> Check {
    let own = ext.own_balance;
    let mut ok = true;
    let mut parts = vec![format!("{} holds {}", ext.own_account, money(own))];
    if let Some(s) = replay {
        let clearing: i128 = s.consumers.values().map(|c| c.bank_clearing.cents()).sum();
        let held = wallets_and_merchants(s);
        ok &= own == -clearing && own == held;
        parts.push(format!(
            "journal: minus the clearing accounts {}, wallets and merchants {}",
            money(-clearing),
            money(held)
        ));
    }
    if let Some(live) = i.live {
        ok &= own == live.wallets_and_merchants;
        parts.push(format!(
            "live: wallets and merchants {}",
            money(live.wallets_and_merchants)
        ));
    }
    ok &= replay.is_some() || i.live.is_some();
    Check::new("settlement_account", ok, parts.join("; "))
}

/// The journal rebuilds exactly what the actors held: the same digest of every account,
/// order and refund.
fn live_equals_replay(
    live: &LiveSummary,
    replay: &LedgerState,
    bank_balances: &[(String, Amount)],
) -> Check {
    let same = digest(replay, bank_balances) == live.digest;
    Check::new(
        "live_vs_journal",
        same,
        if same {
            format!(
                "the replay equals the actors' state ({} consumers, {} merchants; same digest)",
                live.consumers, live.merchants
            )
        } else {
            format!(
                "the replay and the actors' state differ (digests differ; {} and {} consumers)",
                replay.consumers.len(),
                live.consumers
            )
        },
    )
}

fn population(i: &Inputs, s: &LedgerState) -> Check {
    let has = |id: String, bank: String| {
        s.merchants
            .get(&id)
            .is_some_and(|m| m.bank.as_deref() == Some(bank.as_str()))
    };
    let ok = s.consumers.len() as u64 == i.consumers
        && s.merchants.len() as u64 == i.merchants_opened()
        && (0..i.merchants).all(|j| has(merchant_id(j), merchant_bank(j)))
        && (!i.services
            || ((0..BILLER_KINDS.len()).all(|k| has(biller_id(k), biller_bank(k)))
                && (0..EMPLOYERS).all(|k| has(employer_id(k), employer_bank(k)))));
    Check::new(
        "population",
        ok,
        format!(
            "{} consumers and {} merchants in the ledger, {} and {} opened",
            s.consumers.len(),
            s.merchants.len(),
            i.consumers,
            i.merchants_opened()
        ),
    )
}

/// Every bank account holds what it was opened with, plus its deposits, plus what the ledger
/// says moved between it and the node (its clearing account: negative for money pulled in).
fn bank_reconciliation(i: &Inputs, s: &LedgerState, bank: &HashMap<&str, i128>) -> Check {
    let mut bad = vec![];
    let mut checked = 0u64;
    for n in 0..i.consumers {
        let Some(c) = s.consumers.get(&consumer_id(n)) else {
            continue;
        };
        let opening = i128::from(consumer(i.seed, n, i.wallet_cap).bank_balance);
        let deposits = i.book.deposits.get(&n).copied().unwrap_or(0);
        let expected = opening + deposits + c.bank_clearing.cents();
        let held = bank.get(consumer_bank(n).as_str()).copied();
        if held != Some(expected) {
            bad.push(format!(
                "{}: bank holds {}, expected opening {} + deposits {} + clearing {}",
                consumer_bank(n),
                held.map_or("nothing".into(), money),
                money(opening),
                money(deposits),
                money(c.bank_clearing.cents())
            ));
        }
        checked += 1;
    }
    let mut at_zero: Vec<String> = (0..i.merchants).map(merchant_bank).collect();
    if i.services {
        // Billers are never paid out: their accounts stay at 0.00. Employers' accounts hold
        // what they opened with, less their fundings (their clearing accounts, negative).
        at_zero.extend((0..BILLER_KINDS.len()).map(biller_bank));
        for k in 0..EMPLOYERS {
            let account = employer_bank(k);
            let clearing = s
                .merchant_clearing
                .get(&merchant_clearing(&account))
                .map_or(0, |a| a.cents());
            let expected = i128::from(EMPLOYER_BANK_BALANCE) + clearing;
            let held = bank.get(account.as_str()).copied();
            if held != Some(expected) {
                bad.push(format!(
                    "{account}: bank holds {}, expected opening {} + clearing {}",
                    held.map_or("nothing".into(), money),
                    money(EMPLOYER_BANK_BALANCE.into()),
                    money(clearing)
                ));
            }
            checked += 1;
        }
    }
    for account in &at_zero {
        if bank.get(account.as_str()) != Some(&0) {
            bad.push(format!("{account} is not at 0.00"));
        }
        checked += 1;
    }
    let accounts = (i.consumers + i.merchants_opened()) as usize;
    if bank.len() != accounts {
        bad.push(format!(
            "the bank has {} accounts, {accounts} were opened",
            bank.len()
        ));
    }
    let ok = bad.is_empty();
    let detail = if ok {
        format!("{checked} bank accounts agree with the ledger's clearing accounts")
    } else {
        format!("{} disagreements, first: {}", bad.len(), bad[0])
    };
    Check::new("bank_vs_ledger", ok, detail)
}

/// Every lifecycle's order (and every bill's) ended as its commands said it must, and
/// nothing else is there.
fn orders(i: &Inputs, s: &LedgerState, bank: &HashMap<&str, i128>) -> Check {
    let mut bad = vec![];
    let mut checked = 0u64;
    let lifecycles = (0..i.lifecycles).map(|n| {
        let id = order_id(n);
        let e = i.book.lifecycles.get(n as usize).copied().flatten();
        (id, e)
    });
    let bills = i
        .book
        .services
        .bills
        .iter()
        .map(|(id, e)| (id.clone(), Some(*e)));
    for (id, e) in lifecycles.chain(bills) {
        let Some(e): Option<Expected> = e else {
            bad.push(format!("{id} was generated but never run"));
            continue;
        };
        if e.end == End::Failed {
            continue;
        }
        let order = s
            .consumers
            .get(&consumer_id(e.consumer))
            .and_then(|c| c.orders.get(&id));
        let Some(o) = order else {
            bad.push(format!("{id} is not in the ledger"));
            continue;
        };
        checked += 1;
        let bank_balance = bank
            .get(consumer_bank(e.consumer).as_str())
            .copied()
            .unwrap_or(0);
        let fine = o.amount.cents() == i128::from(e.amount)
            && o.refunded.cents() == i128::from(e.refunded)
            && match (e.end, o.state) {
                (End::Refused, OrderState::Refused)
                | (End::SettledOrAwaiting, OrderState::Settled)
                | (End::Cancelled, OrderState::Cancelled)
                | (End::Expired, OrderState::Expired) => true,
                // After the drain (refusals lifted, a final tick) an order can only still wait
                // for funds if its bank account lacks them.
                (End::SettledOrAwaiting, OrderState::AwaitingFunds) => {
                    bank_balance < i128::from(e.amount)
                }
                _ => false,
            };
        if !fine {
            bad.push(format!(
                "{id}: {} with {} refunded, expected {:?} with {} refunded (amount {}, bank {})",
                o.state,
                o.refunded,
                e.end,
                money(e.refunded.into()),
                money(e.amount.into()),
                money(bank_balance)
            ));
        }
    }
    let in_ledger: u64 = s.consumers.values().map(|c| c.orders.len() as u64).sum();
    let bills = i.book.services.bills.len() as u64;
    if in_ledger != i.lifecycles + bills {
        bad.push(format!(
            "the ledger holds {in_ledger} orders, {} lifecycles were started and {bills} bills placed",
            i.lifecycles
        ));
    }
    let ok = bad.is_empty();
    let detail = if ok {
        format!("{checked} orders ended as their lifecycles (and bills) require")
    } else {
        format!("{} problems, first: {}", bad.len(), bad[0])
    };
    Check::new("orders", ok, detail)
}

/// The services' own rules, read from the journal's replay and held against the book.
fn services(i: &Inputs, s: &LedgerState) -> Vec<Check> {
    vec![
        credits_once(i, s),
        employers(i, s),
        recharge_batches(i, s),
        wallet_cap(i, s),
        credit_limits(i, s),
        analysis(i, s),
    ]
}

/// A check's detail: what was checked when it holds, else the number of problems and the
/// first few.
fn verdict(name: &'static str, bad: &[String], good: String) -> Check {
    if bad.is_empty() {
        Check::new(name, true, good)
    } else {
        let first: Vec<&str> = bad.iter().take(3).map(String::as_str).collect();
        Check::new(
            name,
            false,
            format!("{} problems, first: {}", bad.len(), first.join("; ")),
        )
    }
}

/// The consumers' credits of the ledger (recharges, salaries), by id.
fn consumer_credits(s: &LedgerState) -> BTreeMap<&str, (&str, i128, &CreditSource)> {
    s.credits
        .iter()
        .filter_map(|(id, r)| match r {
            CreditRecord::Consumer {
                consumer,
                source,
                amount,
                ..
            } => Some((id.as_str(), (consumer.as_str(), amount.cents(), source))),
            _ => None,
        })
        .collect()
}

/// Every credit id was credited at most once (the journal's feed holds one `Credited` event
/// per id), and the ledger's credits are exactly those the workload saw answered `credited`
/// the first time: the same ids, consumers and amounts, so the same sum.
fn credits_once(i: &Inputs, s: &LedgerState) -> Check {
    let book = &i.book.services.credits;
    let ledger = consumer_credits(s);
    let mut bad = vec![];
    if let Some(a) = i.analysis {
        for (id, n) in &a.credited {
            if *n > 1 {
                bad.push(format!(
                    "credit id {id} was credited {n} times in the journal"
                ));
            }
        }
        if a.credited.len() != ledger.len() {
            bad.push(format!(
                "the journal credits {} ids, the ledger holds {}",
                a.credited.len(),
                ledger.len()
            ));
        }
    } else {
        bad.push("the journal's feed was not read".into());
    }
    for (id, c) in book {
        match ledger.get(id.as_str()) {
            Some((consumer, amount, source))
                if *consumer == consumer_id(c.consumer)
                    && *amount == i128::from(c.amount)
                    && **source == c.source => {}
            other => bad.push(format!(
                "{id}: credited {} to {} by the workload, the ledger has {other:?}",
                money(c.amount.into()),
                consumer_id(c.consumer)
            )),
        }
    }
    for id in ledger.keys() {
        if !book.contains_key(*id) {
            bad.push(format!(
                "{id} is credited in the ledger, never in the workload"
            ));
        }
    }
    let booked: i128 = book.values().map(|c| i128::from(c.amount)).sum();
    let held: i128 = ledger.values().map(|(_, a, _)| a).sum();
    if booked != held {
        bad.push(format!(
            "credited {} by the workload, {} in the ledger",
            money(booked),
            money(held)
        ));
    }
    let sb = &i.book.services;
    verdict(
        "credits_once",
        &bad,
        format!(
            "{} credits ({} recharges, {} salaries) credited once each, {} in all; {} codes \
             redeemed already refused to another consumer, {} repeats by the same consumer \
             moved nothing, {} salary lines repeated",
            ledger.len(),
            ledger
                .values()
                .filter(|(_, _, src)| matches!(src, CreditSource::RechargeCard { .. }))
                .count(),
            ledger
                .values()
                .filter(|(_, _, src)| matches!(src, CreditSource::Employer { .. }))
                .count(),
            money(held),
            sb.codes_stolen,
            sb.codes_repeated,
            sb.lines_repeated
        ),
    )
}

/// Each employer's balance is what it was funded with less the salaries it paid: as the
/// workload counted them, and as the ledger's fundings and salary credits say.
fn employers(i: &Inputs, s: &LedgerState) -> Check {
    let sb = &i.book.services;
    let mut bad = vec![];
    let mut parts = vec![];
    for k in 0..EMPLOYERS {
        let e = employer_id(k);
        let balance = s.merchants.get(&e).map_or(0, |m| m.balance.cents());
        let funded = sb.funded.get(&e).copied().unwrap_or(0);
        let paid = sb.salaries_paid.get(&e).copied().unwrap_or(0);
        let ledger_funded: i128 = s
            .credits
            .values()
            .filter_map(|r| match r {
                CreditRecord::Merchant { merchant, amount } if *merchant == e => {
                    Some(amount.cents())
                }
                _ => None,
            })
            .sum();
        let ledger_paid: i128 = consumer_credits(s)
            .values()
            .filter(
                |(_, _, src)| matches!(src, CreditSource::Employer { employer } if *employer == e),
            )
            .map(|(_, a, _)| a)
            .sum();
        if balance != funded - paid || ledger_funded != funded || ledger_paid != paid {
            bad.push(format!(
                "{e}: balance {}, funded {} − paid {} by the workload, funded {} − paid {} in the ledger",
                money(balance),
                money(funded),
                money(paid),
                money(ledger_funded),
                money(ledger_paid)
            ));
        }
        parts.push(format!(
            "{e} {} = {} − {}",
            money(balance),
            money(funded),
            money(paid)
        ));
    }
    verdict(
        "employers",
        &bad,
        format!(
            "balance = funded − salaries paid: {}; {} payrolls ({} under-funded), {} lines paid, {} failed for funds",
            parts.join(", "),
            sb.payrolls,
            sb.payrolls_underfunded,
            sb.lines_paid,
            sb.lines_failed
        ),
    )
}

/// Each recharge batch's clearing account is minus what was redeemed from it.
fn recharge_batches(i: &Inputs, s: &LedgerState) -> Check {
    let sb = &i.book.services;
    let ledger = consumer_credits(s);
    let mut bad = vec![];
    let mut parts = vec![];
    for k in 0..RECHARGE_BATCHES {
        let batch = recharge_batch(k);
        let clearing = s
            .merchant_clearing
            .get(&recharge_clearing(&batch))
            .map_or(0, |a| a.cents());
        let redeemed = sb.redeemed.get(&batch).copied().unwrap_or(0);
        let in_ledger: i128 = ledger
            .values()
            .filter(
                |(_, _, src)| matches!(src, CreditSource::RechargeCard { batch: b } if *b == batch),
            )
            .map(|(_, a, _)| a)
            .sum();
        if clearing != -redeemed || in_ledger != redeemed {
            bad.push(format!(
                "{batch}: clearing {}, redeemed {} by the workload, {} in the ledger's credits",
                money(clearing),
                money(redeemed),
                money(in_ledger)
            ));
        }
        parts.push(format!("{batch} {}", money(clearing)));
    }
    verdict(
        "recharge_batches",
        &bad,
        format!(
            "each batch's clearing = − redeemed: {}; {} recharges refused for the cap",
            parts.join(", "),
            sb.recharges_refused
        ),
    )
}

/// No wallet above the cap (I3) after all the credits; `verify` checks it after every event.
fn wallet_cap(i: &Inputs, s: &LedgerState) -> Check {
    let cap = i128::from(i.wallet_cap);
    let bad: Vec<String> = s
        .consumers
        .values()
        .filter(|c| c.wallet.cents() > cap || c.wallet.is_negative())
        .map(|c| format!("{} holds {}", c.id, c.wallet))
        .collect();
    let full = s
        .consumers
        .values()
        .filter(|c| c.wallet.cents() == cap)
        .count();
    verdict(
        "wallet_cap",
        &bad,
        format!(
            "every wallet within 0.00 and the cap {} ({full} at the cap)",
            money(cap)
        ),
    )
}

/// Every consumer's limit is the one opened with or one the workload set. A limit lowered
/// below what is reserved keeps the reservation (I4 holds at the moment of each reservation,
/// which `verify` checks event by event).
fn credit_limits(i: &Inputs, s: &LedgerState) -> Check {
    let sb = &i.book.services;
    let mut bad = vec![];
    let mut below = 0;
    for n in 0..i.consumers {
        let Some(c) = s.consumers.get(&consumer_id(n)) else {
            continue;
        };
        let limit = c.credit_limit.cents();
        let opening = i128::from(consumer(i.seed, n, i.wallet_cap).credit_limit);
        let set = sb.limits.get(&n);
        let known = match set {
            None => limit == opening,
            Some(v) => v.iter().any(|l| i128::from(*l) == limit),
        };
        if !known {
            bad.push(format!(
                "{}: limit {}, opened with {}, set to {:?}",
                c.id,
                c.credit_limit,
                money(opening),
                set
            ));
        }
        below += usize::from(c.reserved.cents() > limit);
    }
    verdict(
        "credit_limits",
        &bad,
        format!(
            "{} limits set for {} consumers, each ending at one of them; {below} consumers end \
             with more reserved than their lowered limit (kept: I4 holds when reserving)",
            sb.limit_changes,
            sb.limits.len()
        ),
    )
}

/// The spending analysis' totals equal sums computed apart from it, from the ledger: per
/// consumer, spending = settled orders' amounts − refunds, income = recharges and salaries
/// credited; per kind of bill, spending = the settled bills paid to its biller.
fn analysis(i: &Inputs, s: &LedgerState) -> Check {
    let Some(a) = i.analysis else {
        return Check::new("analysis", false, "the analysis did not run");
    };
    let mut bad: Vec<String> = a.error.iter().cloned().collect();
    let totals = a.totals();
    let credits = consumer_credits(s);
    let mut income: HashMap<&str, i128> = HashMap::new();
    for (consumer, amount, source) in credits.values() {
        if source.is_income() {
            *income.entry(consumer).or_default() += amount;
        }
    }
    let mut by_biller = vec![0i128; BILLER_KINDS.len()];
    let mut counted = 0;
    for c in s.consumers.values() {
        let mut spent = 0i128;
        for o in c.orders.values() {
            if o.state == OrderState::Settled {
                spent += o.amount.cents();
                if let Some(k) = (0..BILLER_KINDS.len()).find(|k| biller_id(*k) == o.merchant) {
                    by_biller[k] += o.amount.cents();
                }
            }
        }
        spent -= c.refunds.values().map(|r| r.amount.cents()).sum::<i128>();
        let earned = income.get(c.id.as_str()).copied().unwrap_or(0);
        let (a_spent, a_earned) = totals.get(c.id.as_str()).copied().unwrap_or((0, 0));
        if (a_spent, a_earned) != (spent, earned) {
            bad.push(format!(
                "{}: the analysis has spending {} and income {}, the ledger {} and {}",
                c.id,
                money(a_spent),
                money(a_earned),
                money(spent),
                money(earned)
            ));
        }
        counted += 1;
    }
    for (k, kind) in BILLER_KINDS.iter().enumerate() {
        let category = format!("bill:{kind}");
        let in_index = a.category_total(&category);
        if in_index != by_biller[k] {
            bad.push(format!(
                "{category}: {} in the analysis, {} settled to {}",
                money(in_index),
                money(by_biller[k]),
                biller_id(k)
            ));
        }
    }
    let spending: i128 = totals.values().map(|t| t.0).sum();
    let earned: i128 = totals.values().map(|t| t.1).sum();
    verdict(
        "analysis",
        &bad,
        format!(
            "the spending analysis over {} records ({} events, {} counted) in {:.1} ms: {} \
             consumer-months in {} months, spending {} and income {} in all, equal to the \
             ledger's sums for each of {counted} consumers and each kind of bill",
            a.records,
            a.events,
            a.counted,
            a.millis,
            a.index.len(),
            a.months(),
            money(spending),
            money(earned)
        ),
    )
}

/// Orders by state, from the final state.
pub fn order_states(s: &LedgerState) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for c in s.consumers.values() {
        for o in c.orders.values() {
            *m.entry(o.state.as_str()).or_default() += 1;
        }
    }
    m
}

/// The digest of a final state with the bank's balances: the same whether the state is read
/// whole (a replay) or one item at a time (the running engine's view).
pub fn digest(s: &LedgerState, bank_balances: &[(String, Amount)]) -> String {
    let mut d = StateDigest::default();
    s.visit(|item| d.add(item));
    d.finish(s.clock, bank_balances).digest
}

/// A digest of a state that does not depend on the order its items come in, so that it can
/// be taken one item at a time from a view (consumers, then closed orders, …) and from a
/// replay (each consumer with its orders) alike: every item is written as a line (a consumer's
/// limits, reservation, wallet, clearing balance and bank; each order and refund with the
/// consumer holding it; each merchant; each credit record) and hashed with SHA-256, and the
/// hashes are added up, four 64-bit lanes at a time (a multiset hash). The final digest is
/// SHA-256 over the clock, that sum and the bank's balances, sorted. An equality check
/// between two readings of the engine's own state, not a defence against a forger. Bank
/// operation ids are left out: the engine draws their prefix at random on every open.
#[derive(Default)]
pub struct StateDigest {
    sum: [u64; 4],
    wallets_and_merchants: i128,
    consumers: usize,
    merchants: usize,
    line: String,
}

impl StateDigest {
    pub fn add(&mut self, item: LedgerItem<'_>) {
        use std::fmt::Write;
        self.line.clear();
        let l = &mut self.line;
        // Writing to a String cannot fail.
        let _ = match item {
            LedgerItem::Consumer(c) => {
                self.consumers += 1;
                self.wallets_and_merchants += c.wallet.cents();
                write!(
                    l,
                    "consumer {} limit {} reserved {} wallet {} clearing {} bank {} next {}",
                    c.id,
                    c.credit_limit,
                    c.reserved,
                    c.wallet,
                    c.bank_clearing,
                    c.bank,
                    c.next_placement
                )
            }
            LedgerItem::Order { consumer, order: o } => write!(
                l,
                "order {} of {consumer} {} {} {:?} at {} #{} {} attempts {} refunded {} first {:?}",
                o.id,
                o.merchant,
                o.amount,
                o.release,
                o.placed_at,
                o.placement,
                o.state,
                o.code_attempts,
                o.refunded,
                o.first_result.as_ref().map_err(|r| r.kind)
            ),
            LedgerItem::Refund {
                consumer,
                id,
                refund,
            } => write!(
                l,
                "refund {id} of {consumer} {} {}",
                refund.order, refund.amount
            ),
            LedgerItem::Merchant { id, merchant } => {
                self.merchants += 1;
                self.wallets_and_merchants += merchant.balance.cents();
                write!(l, "merchant {id} {:?} {}", merchant.bank, merchant.balance)
            }
            LedgerItem::Credit { id, record } => write!(l, "credit {id} {record:?}"),
        };
        let h = Sha256::digest(self.line.as_bytes());
        for (lane, bytes) in self.sum.iter_mut().zip(h.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(bytes);
            *lane = lane.wrapping_add(u64::from_le_bytes(b));
        }
    }

    pub fn finish(self, clock: u64, bank_balances: &[(String, Amount)]) -> LiveSummary {
        let mut h = Sha256::new();
        h.update(format!("clock {clock}\n").as_bytes());
        for lane in self.sum {
            h.update(lane.to_le_bytes());
        }
        let mut balances: Vec<_> = bank_balances.iter().collect();
        balances.sort();
        for (account, b) in balances {
            h.update(format!("bank {account} {b}\n").as_bytes());
        }
        LiveSummary {
            digest: hex::encode(h.finalize()),
            wallets_and_merchants: self.wallets_and_merchants,
            consumers: self.consumers,
            merchants: self.merchants,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digest is the same whichever order the items come in (a view is read consumers
    /// first, then closed orders; a replay consumer by consumer), and it sees an order held by
    /// another consumer, another wallet, another bank balance.
    #[test]
    fn the_state_digest_ignores_the_order_of_items_but_not_their_content() {
        use onecard_engine::ledger::{consumer_opened_event, Entry};
        use onecard_engine::{Outcome, Release, RulesConfig};
        let mut s = LedgerState::new(RulesConfig::default());
        for (who, bank) in [("alice", "ab"), ("bob", "bb")] {
            let open = consumer_opened_event(
                who,
                Amount::from_cents(10_000),
                bank,
                Amount::from_cents(500),
                None,
            );
            s.apply_entry(&Entry::new(0, vec![open])).unwrap();
        }
        for (who, id) in [("alice", "o-1"), ("bob", "o-2"), ("alice", "o-3")] {
            let ev = s.consumers[who].placed_event(
                id,
                "shop",
                Amount::from_cents(100),
                &Release::Receipt,
                Ok(Outcome::Accepted),
                false,
            );
            s.apply_entry(&Entry::new(0, vec![ev])).unwrap();
        }
        let banks = vec![("ab".to_string(), Amount::from_cents(7))];
        let whole = digest(&s, &banks);
        let mut count = 0;
        s.visit(|_| count += 1);
        assert_eq!(count, 5, "two consumers and three orders");
        // The same items, orders first and consumers last, each kind in reverse.
        let mut reversed = StateDigest::default();
        let consumers: Vec<_> = s.consumers.values().collect();
        for c in consumers.iter().rev() {
            for o in c.orders.values() {
                reversed.add(LedgerItem::Order {
                    consumer: &c.id,
                    order: o,
                });
            }
        }
        for c in consumers.iter().rev() {
            reversed.add(LedgerItem::Consumer(c));
        }
        assert_eq!(reversed.finish(s.clock, &banks).digest, whole);

        let mut moved = s.clone();
        let o = moved
            .consumers
            .get_mut("alice")
            .unwrap()
            .orders
            .remove("o-3")
            .unwrap();
        moved
            .consumers
            .get_mut("bob")
            .unwrap()
            .orders
            .insert("o-3".into(), o);
        assert_ne!(
            digest(&moved, &banks),
            whole,
            "an order held by another consumer"
        );
        let mut richer = s.clone();
        richer.consumers.get_mut("bob").unwrap().wallet = Amount::from_cents(501);
        assert_ne!(digest(&richer, &banks), whole, "another wallet");
        let other_bank = vec![("ab".to_string(), Amount::from_cents(8))];
        assert_ne!(digest(&s, &other_bank), whole, "another bank balance");
    }

    #[test]
    fn money_prints_two_decimals() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(-123_456), "-1234.56");
    }
}
