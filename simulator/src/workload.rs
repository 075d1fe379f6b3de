//! The stream of commands: a deterministic function of the seed and the options.
//!
//! The generator never looks at what the engine answered, so the stream is the same however
//! the run goes; only how the jobs interleave depends on the concurrency. Workers pull jobs one
//! at a time; a job is a whole order lifecycle (its commands awaited in order), a tick, a bank
//! deposit, a change of a bank account's refuse flag, or (with `--services-pct`) a service
//! operation: a bill, a recharge card, a payroll batch or a credit-limit adjustment.

use std::collections::{BTreeSet, VecDeque};

use onecard_engine::model::Secs;
use onecard_engine::Amount;
use onecard_node::credit::{self, CreditPolicy, CreditRecord, Delta, PolicyKind};
use onecard_node::records::AutopayRule;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};

use crate::options::Mix;
use crate::population::{self, keyed_rng, BILLER_KINDS, EMPLOYERS, RECHARGE_BATCHES};

/// How far the simulated clock moves at each periodic tick.
pub const TICK_SECS: Secs = 60;

/// How an order lifecycle goes after `place_order` is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// Receipt confirmed, satisfied: settles (or waits for funds).
    Receipt,
    /// `wrong` wrong codes first (each `refused:code`), then the right one settles.
    Code { code: String, wrong: u32 },
    /// Released by time: a tick at or after placement + `after_secs` settles it.
    Time { after_secs: u64 },
    /// Cancelled while pending; released by code when `code` is set, else by receipt.
    Cancel { code: Option<String> },
    /// Receipt not satisfied (disputed), then satisfied: settles.
    DisputeSettle,
    /// Receipt not satisfied (disputed), then cancelled.
    DisputeCancel,
    /// Every allowed code attempt wrong: the last one disputes it; then cancelled.
    CodeDisputeCancel { code: String },
    /// Never released: expires at the final tick.
    Abandon { code: Option<String> },
}

impl Path {
    /// Whether the lifecycle settles through its own commands (so a refund can follow).
    pub fn settles_in_lifecycle(&self) -> bool {
        matches!(
            self,
            Path::Receipt | Path::Code { .. } | Path::DisputeSettle
        )
    }

    /// The short name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Path::Receipt => "receipt",
            Path::Code { .. } => "code",
            Path::Time { .. } => "time",
            Path::Cancel { .. } => "cancel",
            Path::DisputeSettle => "dispute_settle",
            Path::DisputeCancel => "dispute_cancel",
            Path::CodeDisputeCancel { .. } => "code_dispute_cancel",
            Path::Abandon { .. } => "abandon",
        }
    }
}

/// One order's whole life as the stream describes it. Amounts in cents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    /// Its index in the stream; the order id is `o{n}`, its refunds `r{n}.{k}`.
    pub n: u64,
    pub consumer: u64,
    pub merchant: u64,
    pub amount: i64,
    /// The simulated clock when it starts.
    pub now: Secs,
    pub path: Path,
    /// Refunds to make if the order settles in the lifecycle; they add up to at most `amount`.
    pub refunds: Vec<i64>,
    /// End by repeating its commands (idempotency, I6).
    pub repeat: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    Lifecycle(Lifecycle),
    Tick {
        now: Secs,
    },
    /// Money arriving from outside at a consumer's bank account.
    Deposit {
        consumer: u64,
        amount: i64,
    },
    /// Turn a consumer's bank account's refusal of debits on or off.
    BankMode {
        consumer: u64,
        refuse: bool,
    },
    /// A service operation (`--services-pct`).
    Service(Service),
}

/// A service operation, as the node would carry it out on the engine (without HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    Bill(BillJob),
    Recharge(RechargeJob),
    Payroll(PayrollJob),
    CreditLimit(LimitJob),
}

impl Service {
    /// The short name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Service::Bill(_) => "bill",
            Service::Recharge(_) => "recharge",
            Service::Payroll(_) => "payroll",
            Service::CreditLimit(_) => "credit_limit",
        }
    }
}

/// A bill posted by a biller for a consumer who has an autopay rule for it. The runner decides
/// with the node's own `bills::decide` and `bills::release_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillJob {
    /// Its index among the service operations; the bill's order id is `b{n}`.
    pub n: u64,
    pub consumer: u64,
    /// Index into [`BILLER_KINDS`].
    pub biller: usize,
    pub amount: i64,
    pub rule: AutopayRule,
    /// The consumer's answer when asked (rule `ask`): approve (pay now) or decline.
    pub approve: bool,
    /// Seconds from `now` to the due date (1 to [`MAX_AFTER_SECS`]), for `on_due_date`.
    pub due_in: u64,
    /// The time release of a bill paid at once: the node's 0 s, or 1 s (both settle at the
    /// next tick).
    pub now_after: u64,
    pub now: Secs,
}

/// A recharge card redeemed by a consumer: a credit `rch{n}` from the card's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RechargeJob {
    pub n: u64,
    pub consumer: u64,
    /// Index of the batch (`batch{k}`).
    pub batch: u64,
    pub amount: i64,
    /// The consumer's overflow setting `refuse`: a recharge the cap has no room for is
    /// refused (`WalletOnly`); otherwise what does not fit goes to the bank account.
    pub wallet_only: bool,
    /// A wrong code: another consumer redeems the same code afterwards (same credit id, other
    /// content: `refused:conflict`).
    pub stolen_by: Option<u64>,
    /// The same consumer enters the code again (answered `credited`, nothing moves).
    pub repeat: bool,
    pub now: Secs,
}

/// One line of a payroll batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalaryLine {
    pub consumer: u64,
    pub amount: i64,
    /// Paid to the bank account (`Bank`) rather than the wallet (overflow to the bank).
    pub to_bank: bool,
}

/// A payroll batch `pay{n}`: the employer's balance funded (`fund{n}`), then its lines paid
/// one by one, as the node's payroll worker does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayrollJob {
    pub n: u64,
    pub employer: u64,
    pub lines: Vec<SalaryLine>,
    /// What the employer funds: the lines' total, or less (a batch deliberately under-funded,
    /// so that some lines fail for funds).
    pub funding: i64,
    /// Lines paid again afterwards (line numbers, from 1): a repeat answers as the first time.
    pub repeats: Vec<u32>,
    pub now: Secs,
}

/// A consumer's credit limit set anew, computed by the node's credit policy from a drawn
/// score (the consumer's opening limit as the card's credit line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitJob {
    pub n: u64,
    pub consumer: u64,
    pub limit: i64,
    pub reason: String,
    pub now: Secs,
}

/// The credit policy the adjustments are computed with: the opening limit as the card's
/// credit line, raised for settlements on time, lowered for failed bank debits down to 0 (so
/// some limits end below what the consumer has reserved).
pub fn adjustment_policy() -> CreditPolicy {
    CreditPolicy {
        kind: PolicyKind::CardCreditLine,
        min: Amount::ZERO,
        max: Amount::from_cents(5_000_000),
        raise_after: 5,
        raise_by: Amount::from_cents(50_000),
        lower_on_failed_debit: Amount::from_cents(200_000),
        ..CreditPolicy::default()
    }
}

/// The deterministic source of jobs.
pub struct Generator {
    rng: ChaCha8Rng,
    mix: Mix,
    consumers: u64,
    merchants: Zipf<f64>,
    merchant_count: u64,
    orders: u64,
    tick_every: u64,
    code_attempts_max: u32,
    /// Lifecycles generated so far.
    emitted: u64,
    clock: Secs,
    /// Refusals in force: (lifecycle index at which it is lifted, consumer), in that order.
    refusals: VecDeque<(u64, u64)>,
    refusing: BTreeSet<u64>,
    /// Every consumer whose bank was ever told to refuse.
    ever_refused: BTreeSet<u64>,
    /// Jobs generated and not yet handed out; refilled one lifecycle (and what precedes it) at
    /// a time, so a phase boundary always falls between lifecycles.
    queue: VecDeque<Job>,
    /// Service operations generated so far (they number bills, recharges, payrolls).
    services: u64,
    seed: u64,
    wallet_cap: i64,
}

/// What the stream is drawn for.
#[derive(Debug, Clone)]
pub struct Shape {
    pub seed: u64,
    pub consumers: u64,
    pub merchants: u64,
    /// Lifecycles in the whole stream.
    pub orders: u64,
    pub mix: Mix,
    /// A tick every this many lifecycles.
    pub tick_every: u64,
    /// Exponent of the merchants' Zipf popularity.
    pub zipf_s: f64,
    /// From the engine's rules: how many wrong codes dispute an order, so a code path knows how
    /// many it may enter without disputing it.
    pub code_attempts_max: u32,
    /// The wallet cap in cents (the population's opening limits are drawn with it).
    pub wallet_cap: i64,
}

impl Generator {
    pub fn new(shape: Shape) -> Result<Generator, String> {
        let zipf = Zipf::new(shape.merchants, shape.zipf_s).map_err(|e| format!("zipf: {e}"))?;
        Ok(Generator {
            rng: keyed_rng(shape.seed, "workload"),
            mix: shape.mix,
            consumers: shape.consumers,
            merchants: zipf,
            merchant_count: shape.merchants,
            orders: shape.orders,
            tick_every: shape.tick_every.max(1),
            code_attempts_max: shape.code_attempts_max.max(1),
            emitted: 0,
            clock: 0,
            refusals: VecDeque::new(),
            refusing: BTreeSet::new(),
            ever_refused: BTreeSet::new(),
            queue: VecDeque::new(),
            services: 0,
            seed: shape.seed,
            wallet_cap: shape.wallet_cap,
        })
    }

    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// The next job, as long as fewer than `limit` lifecycles have been generated (or jobs
    /// generated before the limit remain).
    pub fn next_job(&mut self, limit: u64) -> Option<Job> {
        if self.queue.is_empty() && self.emitted < limit.min(self.orders) {
            self.refill();
        }
        self.queue.pop_front()
    }

    /// The end of the stream: every account that was ever told to refuse is told to stop,
    /// then one tick far enough ahead that every time release is due and every abandoned order
    /// has expired. What still waits for funds after it lacks money at the bank.
    ///
    /// Every account, not only the refusals still in force: with many jobs in flight, a
    /// refusal's lifting can reach the bank before the refusal itself (their jobs run
    /// concurrently), which leaves the account refusing. That only makes a refusal last longer
    /// during the run; the drain runs after every worker has finished, so it puts all of them
    /// right.
    pub fn drain(&mut self, order_expiry_secs: Secs) -> Vec<Job> {
        let mut jobs: Vec<Job> = self.queue.drain(..).collect();
        self.refusals.clear();
        self.refusing.clear();
        for consumer in std::mem::take(&mut self.ever_refused) {
            jobs.push(Job::BankMode {
                consumer,
                refuse: false,
            });
        }
        self.clock = self
            .clock
            .saturating_add(order_expiry_secs.max(MAX_AFTER_SECS))
            .saturating_add(TICK_SECS);
        jobs.push(Job::Tick { now: self.clock });
        jobs
    }

    fn pct(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.gen_bool((p / 100.0).min(1.0))
    }

    fn code(&mut self) -> String {
        format!("{:06}", self.rng.gen_range(0..1_000_000u32))
    }

    fn refill(&mut self) {
        let n = self.emitted;
        if n > 0 && n % self.tick_every == 0 {
            self.clock += TICK_SECS;
            self.queue.push_back(Job::Tick { now: self.clock });
        }
        while let Some(&(until, consumer)) = self.refusals.front() {
            if until > n {
                break;
            }
            self.refusals.pop_front();
            self.refusing.remove(&consumer);
            self.queue.push_back(Job::BankMode {
                consumer,
                refuse: false,
            });
        }
        let consumer = self.rng.gen_range(0..self.consumers);
        // Zipf samples 1..=n as a float; rank 1 is the most popular merchant.
        let rank = self.merchants.sample(&mut self.rng) as u64;
        let merchant = rank.clamp(1, self.merchant_count) - 1;
        // Recharges and refusals go to the consumer whose order comes next, so they meet an
        // order (a uniformly chosen account would almost never see one in a large population).
        if self.pct(self.mix.deposit) {
            let amount = self.rng.gen_range(10_000..=1_000_000);
            self.queue.push_back(Job::Deposit { consumer, amount });
        }
        if self.pct(self.mix.refuse) && self.refusing.insert(consumer) {
            self.ever_refused.insert(consumer);
            self.queue.push_back(Job::BankMode {
                consumer,
                refuse: true,
            });
            self.refusals
                .push_back((n + self.mix.refuse_window, consumer));
        }
        // Service operations come before the lifecycle, as that share of the work items: p of
        // them for every 1 − p lifecycles, each drawn with probability p / (1 − p) capped at 1
        // (and again while it lands, for shares above a half). Nothing is drawn at 0, so the
        // stream without services is exactly what it was.
        let share = self.mix.services / 100.0;
        if share > 0.0 {
            let per_lifecycle = share / (1.0 - share);
            let mut expected = per_lifecycle;
            while expected > 0.0 {
                if self.rng.gen_bool(expected.min(1.0)) {
                    let job = self.service();
                    self.queue.push_back(Job::Service(job));
                }
                expected -= 1.0;
            }
        }
        let amount = self.amount();
        let path = self.path();
        let refunds = if path.settles_in_lifecycle() && self.pct(self.mix.refund) {
            self.refunds(amount)
        } else {
            vec![]
        };
        let repeat = self.pct(self.mix.repeat);
        self.queue.push_back(Job::Lifecycle(Lifecycle {
            n,
            consumer,
            merchant,
            amount,
            now: self.clock,
            path,
            refunds,
            repeat,
        }));
        self.emitted += 1;
    }

    /// One service operation: bills and recharges most often, payrolls and limit changes less.
    fn service(&mut self) -> Service {
        let n = self.services;
        self.services += 1;
        let now = self.clock;
        let consumer = self.rng.gen_range(0..self.consumers);
        match self.rng.gen_range(0..10u8) {
            0..=3 => Service::Bill(self.bill(n, consumer, now)),
            4..=6 => Service::Recharge(self.recharge(n, consumer, now)),
            7 => Service::Payroll(self.payroll(n, now)),
            _ => Service::CreditLimit(self.limit_change(n, consumer, now)),
        }
    }

    /// A bill of 5.00 to 1500.00 (log-uniform), under one of the four autopay rules.
    fn bill(&mut self, n: u64, consumer: u64, now: Secs) -> BillJob {
        let biller = self.rng.gen_range(0..BILLER_KINDS.len());
        let amount = self.log_uniform(500, 150_000);
        let rule = match self.rng.gen_range(0..4u8) {
            0 => AutopayRule::Always,
            1 => AutopayRule::OnDueDate,
            2 => AutopayRule::UpTo {
                amount: Amount::from_cents(self.log_uniform(1_000, 100_000)),
            },
            _ => AutopayRule::Ask,
        };
        BillJob {
            n,
            consumer,
            biller,
            amount,
            rule,
            approve: self.rng.gen_bool(0.7),
            due_in: self.rng.gen_range(1..=MAX_AFTER_SECS),
            now_after: self.rng.gen_range(0..=1),
            now,
        }
    }

    /// A card of 10, 20, 50, 100 or 200.00 from one of the batches; one in ten is then tried
    /// by another consumer, one in ten entered again by its own.
    fn recharge(&mut self, n: u64, consumer: u64, now: Secs) -> RechargeJob {
        const FACES: [i64; 5] = [1_000, 2_000, 5_000, 10_000, 20_000];
        let amount = FACES[self.rng.gen_range(0..FACES.len())];
        let stolen_by = self.rng.gen_bool(0.1).then(|| {
            // Another consumer: any but this one (with one consumer, nobody).
            (consumer + self.rng.gen_range(1..self.consumers.max(2))) % self.consumers
        });
        RechargeJob {
            n,
            consumer,
            batch: self.rng.gen_range(0..RECHARGE_BATCHES),
            amount,
            wallet_only: self.rng.gen_bool(0.3),
            stolen_by: stolen_by.filter(|o| *o != consumer),
            repeat: self.rng.gen_bool(0.1),
            now,
        }
    }

    /// 1 to 12 lines of 50.00 to 5000.00; one batch in four funded with only 30 to 90 % of its
    /// total, one in five repeating one or two of its lines.
    fn payroll(&mut self, n: u64, now: Secs) -> PayrollJob {
        let employer = self.rng.gen_range(0..EMPLOYERS);
        let count = self.rng.gen_range(1..=12usize);
        let lines: Vec<SalaryLine> = (0..count)
            .map(|_| SalaryLine {
                consumer: self.rng.gen_range(0..self.consumers),
                amount: self.log_uniform(5_000, 500_000),
                to_bank: self.rng.gen_bool(0.4),
            })
            .collect();
        let total: i64 = lines.iter().map(|l| l.amount).sum();
        let funding = if self.rng.gen_bool(0.25) {
            (total * self.rng.gen_range(30..=90) / 100).max(1)
        } else {
            total
        };
        let repeats = if self.rng.gen_bool(0.2) {
            let k = self.rng.gen_range(1..=2u32.min(count as u32));
            (0..k)
                .map(|_| self.rng.gen_range(1..=count as u32))
                .collect()
        } else {
            vec![]
        };
        PayrollJob {
            n,
            employer,
            lines,
            funding,
            repeats,
            now,
        }
    }

    /// The node's credit policy ([`adjustment_policy`]) over a drawn score: settlements on
    /// time (up), a few failed bank debits (down), or many (down to 0, below anything
    /// reserved). The limit and its reason are the policy's (`credit::apply`).
    fn limit_change(&mut self, n: u64, consumer: u64, now: Secs) -> LimitJob {
        let policy = adjustment_policy();
        let opening = population::consumer(self.seed, consumer, self.wallet_cap);
        let mut record = CreditRecord::opened(
            Amount::from_cents(opening.credit_limit),
            Amount::from_cents(opening.wallet),
            policy.kind,
        );
        let delta = match self.rng.gen_range(0..3u8) {
            0 => Delta {
                on_time: self.rng.gen_range(5..=60),
                ..Delta::default()
            },
            1 => Delta {
                failed_debits: self.rng.gen_range(1..=4),
                ..Delta::default()
            },
            _ => Delta {
                failed_debits: 30,
                ..Delta::default()
            },
        };
        // Under a dynamic policy and with no limit computed before, `apply` always gives one.
        let (limit, reason) = match credit::apply(&policy, &mut record, &delta) {
            Ok(Some(p)) => (p.limit, p.reason),
            _ => (
                Amount::from_cents(opening.credit_limit),
                "credit policy applied".to_string(),
            ),
        };
        LimitJob {
            n,
            consumer,
            limit: i64::try_from(limit.cents()).unwrap_or(i64::MAX),
            reason,
            now,
        }
    }

    /// Log-uniform between `lo` and `hi` cents.
    fn log_uniform(&mut self, lo: i64, hi: i64) -> i64 {
        let x = self.rng.gen_range((lo as f64).ln()..(hi as f64).ln()).exp();
        (x.round() as i64).clamp(lo, hi)
    }

    /// Log-uniform between 1.00 and 3000.00: many small orders, a few large ones that the
    /// wallet cannot cover alone.
    fn amount(&mut self) -> i64 {
        let (lo, hi) = (100f64.ln(), 300_000f64.ln());
        let x = self.rng.gen_range(lo..hi).exp();
        (x.round() as i64).clamp(100, 300_000)
    }

    fn path(&mut self) -> Path {
        let m = &self.mix;
        let bounds = [m.code, m.time, m.cancel, m.dispute, m.abandon];
        let mut u = self.rng.gen_range(0.0..100.0);
        let mut which = bounds.len();
        for (k, b) in bounds.iter().enumerate() {
            if u < *b {
                which = k;
                break;
            }
            u -= b;
        }
        let max = self.code_attempts_max;
        match which {
            0 => {
                let code = self.code();
                // One code lifecycle in five stumbles first, never often enough to dispute.
                let wrong = if max > 1 && self.rng.gen_bool(0.2) {
                    self.rng.gen_range(1..max)
                } else {
                    0
                };
                Path::Code { code, wrong }
            }
            1 => Path::Time {
                after_secs: self.rng.gen_range(1..=MAX_AFTER_SECS),
            },
            2 => {
                let code = self.rng.gen_bool(0.3).then(|| self.code());
                Path::Cancel { code }
            }
            3 => match self.rng.gen_range(0..3u8) {
                0 => Path::DisputeSettle,
                1 => Path::DisputeCancel,
                _ => Path::CodeDisputeCancel { code: self.code() },
            },
            4 => {
                let code = self.rng.gen_bool(0.3).then(|| self.code());
                Path::Abandon { code }
            }
            _ => Path::Receipt,
        }
    }

    /// In full (half the time), or one or two partial refunds.
    fn refunds(&mut self, amount: i64) -> Vec<i64> {
        if amount < 2 || self.rng.gen_bool(0.5) {
            return vec![amount];
        }
        let first = self.rng.gen_range(1..amount);
        if self.rng.gen_bool(0.5) {
            return vec![first];
        }
        let rest = amount - first;
        vec![first, self.rng.gen_range(1..=rest)]
    }
}

/// The longest time release: due within three periodic ticks.
pub const MAX_AFTER_SECS: u64 = 3 * TICK_SECS;

#[cfg(test)]
mod tests {
    use super::*;

    fn mix() -> Mix {
        Mix {
            code: 20.0,
            time: 15.0,
            cancel: 5.0,
            dispute: 3.0,
            abandon: 1.0,
            refund: 10.0,
            repeat: 2.0,
            deposit: 5.0,
            refuse: 2.0,
            refuse_window: 50,
            services: 0.0,
        }
    }

    fn shape(seed: u64, consumers: u64, merchants: u64, orders: u64) -> Shape {
        Shape {
            seed,
            consumers,
            merchants,
            orders,
            mix: mix(),
            tick_every: 40,
            zipf_s: 1.1,
            code_attempts_max: 5,
            wallet_cap: 500_000,
        }
    }

    fn all(seed: u64, limit: u64) -> Vec<Job> {
        let mut g = Generator::new(shape(seed, 100, 10, 2_000)).unwrap();
        let mut v = vec![];
        while let Some(j) = g.next_job(limit) {
            v.push(j);
        }
        v
    }

    #[test]
    fn the_stream_depends_only_on_the_seed() {
        assert_eq!(all(3, 2_000), all(3, 2_000));
        assert_ne!(all(3, 2_000), all(4, 2_000));
    }

    #[test]
    fn a_phase_limit_cuts_between_lifecycles_and_the_rest_follows() {
        let mut g = Generator::new(shape(3, 100, 10, 2_000)).unwrap();
        let mut v = vec![];
        while let Some(j) = g.next_job(700) {
            v.push(j);
        }
        assert!(matches!(v.last(), Some(Job::Lifecycle(l)) if l.n == 699));
        while let Some(j) = g.next_job(u64::MAX) {
            v.push(j);
        }
        assert_eq!(v, all(3, u64::MAX));
    }

    #[test]
    fn refunds_never_exceed_the_amount_and_refusals_are_lifted() {
        let mut g = Generator::new(shape(9, 50, 5, 5_000)).unwrap();
        let mut refusing = BTreeSet::new();
        while let Some(j) = g.next_job(u64::MAX) {
            match j {
                Job::Lifecycle(l) => {
                    assert!(l.refunds.iter().sum::<i64>() <= l.amount);
                    assert!(l.refunds.iter().all(|r| *r > 0));
                    assert!((100..=300_000).contains(&l.amount));
                    if let Path::Code { wrong, .. } = l.path {
                        assert!(wrong < 5);
                    }
                }
                Job::BankMode { consumer, refuse } => {
                    assert_eq!(refusing.insert(consumer), refuse);
                    if !refuse {
                        refusing.remove(&consumer);
                    }
                }
                _ => {}
            }
        }
        let mut lifted = BTreeSet::new();
        for j in g.drain(604_800) {
            if let Job::BankMode { consumer, refuse } = j {
                assert!(!refuse);
                lifted.insert(consumer);
            }
        }
        // Every refusal still in force is lifted (and the others again).
        assert!(refusing.is_subset(&lifted));
    }
}
