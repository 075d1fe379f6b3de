//! The checks at the end of a run, and the digest of the final state.
//!
//! They read the state three ways and make them agree: the actors' live state (read before
//! closing), the journal's replay by `verify` (after closing) and the bank's balances (the
//! in-process simulated bank's, or with `--bank` the bank simulator's, read over its admin
//! API); and they hold all three against the simulator's own book of what was opened,
//! deposited and acknowledged.

use std::collections::{BTreeMap, HashMap};

use onecard_engine::engine::RecoveryInfo;
use onecard_engine::ledger::LedgerState;
use onecard_engine::verify::{VerifyError, VerifyReport};
use onecard_engine::{Amount, OrderState};
use sha2::{Digest, Sha256};

use crate::population::{consumer, consumer_bank, consumer_id, merchant_bank, merchant_id};
use crate::runner::{Book, End};

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
    pub fn of(s: &LedgerState, bank_balances: &[(String, Amount)]) -> LiveSummary {
        LiveSummary {
            digest: digest(s, bank_balances),
            wallets_and_merchants: wallets_and_merchants(s),
            consumers: s.consumers.len(),
            merchants: s.merchants.len(),
        }
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
/// equals what was opened at the bank plus what arrived from outside.
fn conservation(i: &Inputs, bank_total: i128, replay: Option<&LedgerState>) -> Check {
    let expected = i.opening_total + i.book.deposits_total;
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
    parts.push(format!(
        "expected: opening {} + deposits {} = {}",
        money(i.opening_total),
        money(i.book.deposits_total),
        money(expected)
    ));
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
    let ok = s.consumers.len() as u64 == i.consumers
        && s.merchants.len() as u64 == i.merchants
        && (0..i.merchants).all(|j| {
            s.merchants
                .get(&merchant_id(j))
                .is_some_and(|m| m.bank.as_deref() == Some(merchant_bank(j).as_str()))
        });
    Check::new(
        "population",
        ok,
        format!(
            "{} consumers and {} merchants in the ledger, {} and {} opened",
            s.consumers.len(),
            s.merchants.len(),
            i.consumers,
            i.merchants
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
    for j in 0..i.merchants {
        if bank.get(merchant_bank(j).as_str()) != Some(&0) {
            bad.push(format!("{} is not at 0.00", merchant_bank(j)));
        }
        checked += 1;
    }
    let accounts = (i.consumers + i.merchants) as usize;
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

/// Every lifecycle's order ended as its commands said it must, and nothing else is there.
fn orders(i: &Inputs, s: &LedgerState, bank: &HashMap<&str, i128>) -> Check {
    let mut bad = vec![];
    let mut checked = 0u64;
    for n in 0..i.lifecycles {
        let id = format!("o{n}");
        let Some(Some(e)) = i.book.lifecycles.get(n as usize) else {
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
    if in_ledger != i.lifecycles {
        bad.push(format!(
            "the ledger holds {in_ledger} orders, {} lifecycles were started",
            i.lifecycles
        ));
    }
    let ok = bad.is_empty();
    let detail = if ok {
        format!("{checked} orders ended as their lifecycles require")
    } else {
        format!("{} problems, first: {}", bad.len(), bad[0])
    };
    Check::new("orders", ok, detail)
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

/// SHA-256 over the final state in a canonical order: the clock; every consumer (limits,
/// reservation, wallet, clearing balance, orders and refunds sorted by id); every merchant;
/// every bank account. Bank operation ids are left out: the engine draws their prefix at
/// random on every open.
pub fn digest(s: &LedgerState, bank_balances: &[(String, Amount)]) -> String {
    let mut h = Sha256::new();
    let mut put = |line: String| {
        h.update(line.as_bytes());
        h.update(b"\n");
    };
    put(format!("clock {}", s.clock));
    for (id, c) in &s.consumers {
        put(format!(
            "consumer {id} limit {} reserved {} wallet {} clearing {} bank {} next {}",
            c.credit_limit, c.reserved, c.wallet, c.bank_clearing, c.bank, c.next_placement
        ));
        let mut orders: Vec<_> = c.orders.values().collect();
        orders.sort_by(|a, b| a.id.cmp(&b.id));
        for o in orders {
            put(format!(
                "order {} {} {} {:?} at {} #{} {} attempts {} refunded {} first {:?}",
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
            ));
        }
        let mut refunds: Vec<_> = c.refunds.iter().collect();
        refunds.sort_by(|a, b| a.0.cmp(b.0));
        for (rid, r) in refunds {
            put(format!("refund {rid} {} {}", r.order, r.amount));
        }
    }
    for (id, m) in &s.merchants {
        put(format!("merchant {id} {:?} {}", m.bank, m.balance));
    }
    let mut balances: Vec<_> = bank_balances.iter().collect();
    balances.sort();
    for (account, b) in balances {
        put(format!("bank {account} {b}"));
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_prints_two_decimals() {
        assert_eq!(money(0), "0.00");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(-123_456), "-1234.56");
    }
}
