//! The population: consumers, merchants and their accounts at the simulated bank, drawn from
//! the seed, and opening them through the engine.
//!
//! Every consumer draws from its own random stream (the population key, stream = its index),
//! so any consumer can be regenerated alone — the final checks recompute opening balances that
//! way instead of keeping them — and opening them concurrently cannot change what they are.

use std::cell::Cell;
use std::sync::Arc;

use futures::{stream, TryStreamExt};
use indicatif::ProgressBar;
use onecard_engine::bank::BankError;
use onecard_engine::engine::OpenConsumer;
use onecard_engine::{Amount, Engine, EngineError, Outcome, SimBank};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::bank_admin::{AdminError, BankAdmin};

/// A random generator keyed by the seed and a purpose, so the population and the workload
/// never share a stream (changing one cannot shift the other).
pub fn keyed_rng(seed: u64, purpose: &str) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(b"onecard-sim/");
    h.update(purpose.as_bytes());
    h.update(seed.to_le_bytes());
    ChaCha8Rng::from_seed(h.finalize().into())
}

pub fn consumer_id(i: u64) -> String {
    numbered("c", i)
}
pub fn consumer_bank(i: u64) -> String {
    numbered("cb", i)
}
pub fn merchant_id(j: u64) -> String {
    numbered("m", j)
}
pub fn merchant_bank(j: u64) -> String {
    numbered("mb", j)
}
/// An order's id in a run: lifecycle `n`'s order.
pub fn order_id(n: u64) -> String {
    numbered("o", n)
}

/// `prefix` followed by `n` in decimal. Every command of a run names its accounts and order
/// this way, so it skips `format!`'s machinery (about 1,000 instructions a call).
fn numbered(prefix: &str, n: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n);
    let mut s = String::with_capacity(prefix.len() + digits.len());
    s.push_str(prefix);
    s.push_str(digits);
    s
}

/// The kinds of biller opened with `--services-pct`: one biller (a merchant) of each, with a
/// bank account at 0.00, which bills are paid to.
pub const BILLER_KINDS: [&str; 4] = ["water", "electricity", "gas", "phone"];
/// Employers opened with `--services-pct`: merchants whose bank accounts hold
/// [`EMPLOYER_BANK_BALANCE`], funding payroll batches.
pub const EMPLOYERS: u64 = 3;
/// 1,000,000,000.00: more than any run's payrolls can fund, so a funding is never refused.
pub const EMPLOYER_BANK_BALANCE: i64 = 100_000_000_000;
/// Batches of recharge cards (`batch0`, …): each has its clearing account in the ledger.
pub const RECHARGE_BATCHES: u64 = 4;

pub fn biller_id(k: usize) -> String {
    format!("biller-{}", BILLER_KINDS[k])
}
pub fn biller_bank(k: usize) -> String {
    format!("bb-{}", BILLER_KINDS[k])
}
pub fn employer_id(k: u64) -> String {
    format!("employer{k}")
}
pub fn employer_bank(k: u64) -> String {
    format!("eb{k}")
}
pub fn recharge_batch(k: u64) -> String {
    format!("batch{k}")
}

/// One consumer as opened. Amounts in cents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    pub credit_limit: i64,
    pub bank_balance: i64,
    pub wallet: i64,
}

/// Consumer `i` of the population of `seed`, for a wallet cap of `cap` cents.
///
/// A few consumers have a small credit limit (so some orders are refused for credit) and a
/// quarter have little money at the bank (so top-ups get refused and settlements the wallet
/// cannot cover wait for funds until a recharge arrives).
pub fn consumer(seed: u64, i: u64, cap: i64) -> ConsumerSpec {
    let mut rng = keyed_rng(seed, "population");
    rng.set_stream(i);
    let credit_limit = if rng.gen_bool(0.05) {
        rng.gen_range(10_000..=100_000)
    } else {
        rng.gen_range(200_000..=2_000_000)
    };
    let bank_balance = if rng.gen_bool(0.25) {
        rng.gen_range(0..=800_000)
    } else {
        rng.gen_range(2_000_000..=200_000_000)
    };
    let wallet = if rng.gen_bool(0.1) {
        0
    } else {
        rng.gen_range(0..=cap.min(bank_balance))
    };
    ConsumerSpec {
        credit_limit,
        bank_balance,
        wallet,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("simulated bank: {0}")]
    Bank(#[from] BankError),
    #[error("bank simulator: {0}")]
    Admin(#[from] AdminError),
    #[error(
        "the bank at {url} already has {accounts} accounts: give each run a bank simulator of \
         its own (`onecard-sim bank --data` on a fresh directory)"
    )]
    BankNotEmpty { url: String, accounts: u64 },
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
    #[error("opening {what} was answered {outcome}")]
    Refused { what: String, outcome: String },
    #[error("a blocking task failed: {0}")]
    Join(String),
}

/// What setup opened.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    /// Money put into the bank at opening, in cents (the conservation baseline).
    pub opening_total: i128,
}

fn expect_ok(
    what: impl FnOnce() -> String,
    r: Result<onecard_engine::CommandResult, EngineError>,
) -> Result<(), SetupError> {
    match r? {
        Ok(Outcome::Ok) => Ok(()),
        other => Err(SetupError::Refused {
            what: what(),
            outcome: match other {
                Ok(o) => o.as_str().to_string(),
                Err(r) => format!("{} ({})", r.code_str(), r.message),
            },
        }),
    }
}

/// Opens a bank account off the runtime's thread: `SimBank::open_account` flushes its store
/// synchronously, which would stall every other task on this single-threaded runtime.
async fn open_bank_account(
    bank: &Arc<SimBank>,
    name: String,
    cents: i64,
) -> Result<(), SetupError> {
    let bank = bank.clone();
    actix_rt::task::spawn_blocking(move || bank.open_account(&name, Amount::from_cents(cents)))
        .await
        .map_err(|e| SetupError::Join(e.to_string()))??;
    Ok(())
}

/// Where the population's bank accounts are opened.
#[derive(Clone, Copy)]
pub enum Accounts<'a> {
    /// The engine's in-process simulated bank, one account at a time as each owner opens.
    Embedded(&'a Arc<SimBank>),
    /// A bank simulator's admin API: every account first, in bulk.
    External(&'a BankAdmin),
}

/// Opens every account at the bank simulator in a few bulk requests (the same names and
/// balances as the in-process bank gets), off the runtime's thread. Returns their sum.
async fn open_external(
    admin: &BankAdmin,
    seed: u64,
    consumers: u64,
    merchants: u64,
    cap: i64,
) -> Result<i128, SetupError> {
    let mut list: Vec<(String, i64)> = (0..merchants).map(|j| (merchant_bank(j), 0)).collect();
    let mut total = 0i128;
    for i in 0..consumers {
        let balance = consumer(seed, i, cap).bank_balance;
        total += i128::from(balance);
        list.push((consumer_bank(i), balance));
    }
    let admin = admin.clone();
    actix_rt::task::spawn_blocking(move || {
        // The checks hold the bank's total against what this run opened: another run's
        // accounts (or this population's, already moved) would be counted too.
        let before = admin.totals()?.accounts;
        if before > 0 {
            return Err(SetupError::BankNotEmpty {
                url: admin.base().to_string(),
                accounts: before,
            });
        }
        Ok(admin.open_accounts(&list)?)
    })
    .await
    .map_err(|e| SetupError::Join(e.to_string()))??;
    Ok(total)
}

/// Opens the merchants, then the consumers, `concurrency` at a time. Each consumer: its
/// account at the bank with its balance (with an external bank, all accounts first), then
/// `open_consumer`, which moves the starting wallet from that account. With `services`, the
/// billers and the employers too, after the merchants (in-process bank only).
#[allow(clippy::too_many_arguments)]
pub async fn open_all(
    engine: &Engine,
    accounts: Accounts<'_>,
    seed: u64,
    consumers: u64,
    merchants: u64,
    services: bool,
    concurrency: usize,
    progress: &ProgressBar,
) -> Result<Opened, SetupError> {
    let cap = i64::try_from(engine.rules().wallet_cap.cents()).unwrap_or(i64::MAX);
    let opening = Cell::new(0i128);
    let bank = match accounts {
        Accounts::Embedded(bank) => Some(bank),
        Accounts::External(admin) => {
            opening.set(open_external(admin, seed, consumers, merchants, cap).await?);
            None
        }
    };
    stream::iter((0..merchants).map(Ok::<u64, SetupError>))
        .try_for_each_concurrent(concurrency, |j| async move {
            if let Some(bank) = bank {
                open_bank_account(bank, merchant_bank(j), 0).await?;
            }
            let r = engine
                .open_merchant(&merchant_id(j), Some(&merchant_bank(j)), 0)
                .await;
            expect_ok(|| format!("merchant {}", merchant_id(j)), r)
        })
        .await?;
    if services {
        let Some(bank) = bank else {
            return Err(SetupError::Refused {
                what: "the services' billers and employers".into(),
                outcome: "not available with an external bank".into(),
            });
        };
        for k in 0..BILLER_KINDS.len() {
            open_bank_account(bank, biller_bank(k), 0).await?;
            let r = engine
                .open_merchant(&biller_id(k), Some(&biller_bank(k)), 0)
                .await;
            expect_ok(|| format!("biller {}", biller_id(k)), r)?;
        }
        for k in 0..EMPLOYERS {
            open_bank_account(bank, employer_bank(k), EMPLOYER_BANK_BALANCE).await?;
            opening.set(opening.get() + i128::from(EMPLOYER_BANK_BALANCE));
            let r = engine
                .open_merchant(&employer_id(k), Some(&employer_bank(k)), 0)
                .await;
            expect_ok(|| format!("employer {}", employer_id(k)), r)?;
        }
    }
    stream::iter((0..consumers).map(Ok::<u64, SetupError>))
        .try_for_each_concurrent(concurrency, |i| {
            let opening = &opening;
            async move {
                let spec = consumer(seed, i, cap);
                if let Some(bank) = bank {
                    open_bank_account(bank, consumer_bank(i), spec.bank_balance).await?;
                    opening.set(opening.get() + i128::from(spec.bank_balance));
                }
                let req = OpenConsumer {
                    consumer: consumer_id(i),
                    credit_limit: Amount::from_cents(spec.credit_limit).to_string(),
                    bank: consumer_bank(i),
                    wallet: Amount::from_cents(spec.wallet).to_string(),
                };
                expect_ok(
                    || format!("consumer {}", consumer_id(i)),
                    engine.open_consumer(req, 0).await,
                )?;
                progress.inc(1);
                Ok(())
            }
        })
        .await?;
    Ok(Opened {
        opening_total: opening.get(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_is_the_same_whenever_it_is_drawn() {
        let a: Vec<_> = (0..50).map(|i| consumer(7, i, 500_000)).collect();
        let b: Vec<_> = (0..50).rev().map(|i| consumer(7, i, 500_000)).collect();
        assert!(a.iter().eq(b.iter().rev()));
        assert_ne!(
            a,
            (0..50).map(|i| consumer(8, i, 500_000)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn wallets_fit_the_cap_and_the_bank_balance() {
        for i in 0..2_000 {
            let c = consumer(1, i, 500_000);
            assert!(c.wallet >= 0 && c.wallet <= 500_000 && c.wallet <= c.bank_balance);
            assert!(c.credit_limit > 0);
        }
    }
}
