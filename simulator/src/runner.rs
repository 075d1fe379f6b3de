//! Runs jobs against the engine and checks every answer against what the rules allow.
//!
//! All workers are tasks on the runtime's one thread (the actix `System`): they share the
//! generator, the recorder and the book through `RefCell`s, never holding a borrow across an
//! await. The engine's actors run on their own arbiters, so the workers only wait.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use onecard_engine::commands::{CreditCmd, FundCmd};
use onecard_engine::engine::{PlaceCmd, RefundCmd};
use onecard_engine::ledger::{CreditSource, CreditTarget};
use onecard_engine::model::Secs;
use onecard_engine::{Amount, CommandResult, Engine, EngineError, Release, SimBank};
use onecard_node::bills::{self, BillAction};
use onecard_node::records::AutopayRule;

use crate::population::{
    biller_id, consumer_bank, consumer_id, employer_id, merchant_id, order_id, recharge_batch,
};
use crate::stats::{OpKind, Recorder};
use crate::workload::{
    BillJob, Generator, Job, Lifecycle, LimitJob, Path, PayrollJob, RechargeJob, Service,
};

/// How a lifecycle's order must look once the run has drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Refused for credit at placement (its id is taken, state `refused`).
    Refused,
    /// Settled, or still waiting for funds the bank does not have.
    SettledOrAwaiting,
    Cancelled,
    Expired,
    /// A command had an outcome the rules do not allow (already counted); not checked further.
    Failed,
}

/// What the simulator expects of one lifecycle's order. Amounts in cents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub consumer: u64,
    pub amount: i64,
    pub end: End,
    /// Refunds acknowledged on it.
    pub refunded: i64,
}

/// The simulator's own account of what happened, to check the engine's state against.
#[derive(Debug, Default)]
pub struct Book {
    /// By lifecycle index; `None` until the lifecycle has run.
    pub lifecycles: Vec<Option<Expected>>,
    /// Deposits acknowledged by the bank, by consumer, in cents.
    pub deposits: HashMap<u64, i128>,
    pub deposits_total: i128,
    /// What the service operations did (`--services-pct`).
    pub services: ServiceBook,
}

/// A credit the engine answered `credited` the first time its id was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credited {
    pub consumer: u64,
    pub amount: i64,
    pub source: CreditSource,
}

/// The service operations' part of the book: what the checks hold the ledger and the spending
/// analysis against. Amounts in cents.
#[derive(Debug, Default)]
pub struct ServiceBook {
    /// Bills whose order was placed, by order id (`b{n}`), and how it must end.
    pub bills: BTreeMap<String, Expected>,
    /// Bills by rule and what became of them: `always:placed`, `ask:declined`,
    /// `up_to:asked` (above the rule's limit: left for the consumer), `on_due_date:refused`.
    pub bill_outcomes: BTreeMap<String, u64>,
    /// Credits (recharges and salaries) credited, by credit id.
    pub credits: BTreeMap<String, Credited>,
    /// Redeemed from each recharge batch (`batch{k}`).
    pub redeemed: BTreeMap<String, i128>,
    /// Recharges refused because the wallet had no room (`WalletOnly`).
    pub recharges_refused: u64,
    /// A code already redeemed, tried by another consumer (each `refused:conflict`).
    pub codes_stolen: u64,
    /// A code entered again by the consumer who redeemed it (each `credited`, nothing moved).
    pub codes_repeated: u64,
    /// Per employer (merchant id): what its balance was funded with, what its lines paid.
    pub funded: BTreeMap<String, i128>,
    pub salaries_paid: BTreeMap<String, i128>,
    pub payrolls: u64,
    pub payrolls_underfunded: u64,
    pub lines_paid: u64,
    pub lines_failed: u64,
    pub lines_repeated: u64,
    /// Limits set per consumer, in the order acknowledged.
    pub limits: HashMap<u64, Vec<i64>>,
    pub limit_changes: u64,
}

impl ServiceBook {
    fn bill_outcome(&mut self, rule: &str, what: &str) {
        *self
            .bill_outcomes
            .entry(format!("{rule}:{what}"))
            .or_default() += 1;
    }
}

impl Book {
    fn record(&mut self, n: u64, e: Expected) {
        let n = n as usize;
        if self.lifecycles.len() <= n {
            self.lifecycles.resize(n + 1, None);
        }
        self.lifecycles[n] = Some(e);
    }
}

/// Outcomes as scenario files write them: `settled`, `refused:credit`, …
fn outcome_str(r: &CommandResult) -> &'static str {
    match r {
        Ok(o) => o.as_str(),
        Err(refusal) => refusal.kind.code(),
    }
}

/// `accepted`, or `refused:credit` when the consumer's available credit is short (orders in
/// flight and orders waiting for funds hold reservations).
const PLACED: &[&str] = &["accepted", "refused:credit"];
/// Direct mode (off in the default rules): an order up to `direct_max` settles at once, or is
/// refused for funds when the wallet and the bank cannot pay it.
const PLACED_DIRECT: &[&str] = &["settled", "refused:funds"];
/// A release whose condition is met: the wallet and the bank pay, or the bank cannot and the
/// order waits for funds.
const SETTLES: &[&str] = &["settled", "awaiting_funds"];

/// What the workers share for the whole run, across the engine's restart.
pub struct Common {
    pub gen: RefCell<Generator>,
    pub rec: RefCell<Recorder>,
    pub book: RefCell<Book>,
    pub progress: ProgressBar,
    pub code_attempts_max: u32,
    /// Orders up to this many cents settle at once (direct mode); 0 turns it off.
    pub direct_max: i64,
    /// Stop starting jobs at this instant (`--duration`).
    pub deadline: Option<Instant>,
    /// Set once the deadline has passed; later phases start nothing.
    pub stopped: Cell<bool>,
    /// `--rate`: lifecycles start on this schedule.
    pub pace: Option<Pace>,
    /// Per employer, what its balance holds as the simulator reckons it: a payroll batch holds
    /// its employer's lock from funding to its last line, as the node's payroll worker pays
    /// one batch at a time, so every line's outcome is known before it is asked.
    pub employers: Vec<futures::lock::Mutex<i128>>,
}

/// An even schedule of lifecycle starts: the n-th starts no earlier than `start + n × every`.
pub struct Pace {
    pub start: Instant,
    pub every: Duration,
    pub started: Cell<u32>,
}

impl Pace {
    pub fn per_second(rate: f64) -> Pace {
        Pace {
            start: Instant::now(),
            every: Duration::from_secs_f64(1.0 / rate),
            started: Cell::new(0),
        }
    }

    /// Waits for the next slot of the schedule.
    async fn next_slot(&self) {
        let n = self.started.get();
        self.started.set(n.saturating_add(1));
        let due = self.start + self.every * n;
        if due > Instant::now() {
            actix_rt::time::sleep_until(due.into()).await;
        }
    }
}

/// One phase of the run: the engine and bank it talks to, and how far it goes. Cloned into
/// every worker.
#[derive(Clone)]
pub struct Ctx {
    pub engine: Rc<Engine>,
    /// The in-process simulated bank, for deposits and refuse flags; `None` with an external
    /// bank (`--bank`), where the workload has neither.
    pub bank: Option<Arc<SimBank>>,
    /// Generate lifecycles up to this index (exclusive) in this phase.
    pub limit: u64,
    pub common: Rc<Common>,
}

impl std::ops::Deref for Ctx {
    type Target = Common;
    fn deref(&self) -> &Common {
        &self.common
    }
}

impl Ctx {
    /// `concurrency` workers pulling jobs until the phase's stream ends.
    ///
    /// Each worker is its own task, as each client connection would be in a server. Polled
    /// together inside one task (`join_all`), every reply would re-poll the pending siblings
    /// once tokio's cooperative budget runs out, which costs the simulator, not the engine.
    pub async fn run(&self, concurrency: usize) {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let ctx = self.clone();
                actix_rt::spawn(async move { ctx.worker().await })
            })
            .collect();
        for w in workers {
            if let Err(e) = w.await {
                self.rec
                    .borrow_mut()
                    .error(format!("a worker task failed: {e}"));
            }
        }
    }

    async fn worker(&self) {
        loop {
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                self.stopped.set(true);
            }
            if self.stopped.get() {
                return;
            }
            let job = self.gen.borrow_mut().next_job(self.limit);
            match job {
                Some(job) => {
                    if let (Job::Lifecycle(_), Some(pace)) = (&job, &self.pace) {
                        pace.next_slot().await;
                    }
                    self.job(job).await
                }
                None => return,
            }
        }
    }

    pub async fn job(&self, job: Job) {
        match job {
            Job::Lifecycle(lc) => self.lifecycle(lc).await,
            Job::Tick { now } => {
                self.command(
                    OpKind::Tick,
                    || "tick".into(),
                    &["ok"],
                    self.engine.tick(now),
                )
                .await;
            }
            Job::Deposit { consumer, amount } => {
                let account = consumer_bank(consumer);
                let what = format!("bank_deposit {amount} cents to {account}");
                let ok = self
                    .bank_call(OpKind::Deposit, what, move |b| {
                        b.deposit(&account, Amount::from_cents(amount))
                    })
                    .await;
                if ok {
                    let mut book = self.book.borrow_mut();
                    *book.deposits.entry(consumer).or_default() += i128::from(amount);
                    book.deposits_total += i128::from(amount);
                }
            }
            Job::BankMode { consumer, refuse } => {
                let account = consumer_bank(consumer);
                let what = format!("bank_mode {account} refuse={refuse}");
                self.bank_call(OpKind::BankMode, what, move |b| {
                    b.set_refuse(&account, refuse)
                })
                .await;
            }
            Job::Service(service) => {
                let name = service.name();
                let done = match service {
                    Service::Bill(b) => self.bill(b).await,
                    Service::Recharge(r) => self.recharge(r).await,
                    Service::Payroll(p) => self.payroll(p).await,
                    Service::CreditLimit(l) => self.credit_limit(l).await,
                };
                if done.is_some() {
                    self.rec.borrow_mut().service_done(name);
                }
            }
        }
    }

    /// A bill, as the node pays it: its consumer's autopay rule decides (`bills::decide`);
    /// what is paid is an order to the biller with a time release (0 or 1 s: the next tick
    /// settles it; or the seconds to the due date), which settles or waits for funds, or is
    /// refused for credit. A bill the rule leaves to the consumer is approved (paid at once)
    /// or declined (nothing placed); one above an `up_to` limit stays asked, unpaid.
    async fn bill(&self, b: BillJob) -> Option<()> {
        let amount = Amount::from_cents(b.amount);
        let rule = bills::rule_name(Some(&b.rule));
        let action = bills::decide(Some(&b.rule), amount);
        let after = match action {
            BillAction::PayNow => b.now_after,
            BillAction::PayOnDueDate => {
                bills::release_after(action, b.now, b.now.saturating_add(b.due_in))?
            }
            BillAction::Ask if b.rule == AutopayRule::Ask => {
                if !b.approve {
                    self.book
                        .borrow_mut()
                        .services
                        .bill_outcome(rule, "declined");
                    return Some(());
                }
                b.now_after
            }
            BillAction::Ask => {
                self.book.borrow_mut().services.bill_outcome(rule, "asked");
                return Some(());
            }
        };
        let id = format!("b{}", b.n);
        let req = PlaceCmd {
            id: id.clone(),
            consumer: consumer_id(b.consumer),
            merchant: biller_id(b.biller),
            amount,
            release: Release::Time { after_secs: after },
            // Paid by the rule, not at a reader: the gateway rules do not apply.
            at_reader: None,
        };
        let allowed = if b.amount <= self.direct_max {
            PLACED_DIRECT
        } else {
            PLACED
        };
        let what = || format!("place_order {id} (bill, rule {rule})");
        let placed = self
            .command(OpKind::Bill, what, allowed, self.engine.place(req, b.now))
            .await;
        let end = match placed {
            None => End::Failed,
            Some("refused:credit" | "refused:funds") => End::Refused,
            Some(_) => End::SettledOrAwaiting,
        };
        let mut book = self.book.borrow_mut();
        book.services.bill_outcome(
            rule,
            if end == End::Refused {
                "refused"
            } else {
                "placed"
            },
        );
        book.services.bills.insert(
            id,
            Expected {
                consumer: b.consumer,
                amount: b.amount,
                end,
                refunded: 0,
            },
        );
        placed.map(|_| ())
    }

    /// A recharge card redeemed: a credit from the card's batch, under the code's credit id.
    /// Into the wallet with the overflow to the bank account, or (`wallet_only`) refused when
    /// the cap has no room. Then its wrong codes: another consumer entering the redeemed code
    /// (the same id with other content: `refused:conflict`), the consumer entering it again
    /// (`credited`, nothing moves).
    async fn recharge(&self, r: RechargeJob) -> Option<()> {
        let batch = recharge_batch(r.batch);
        let cmd = CreditCmd {
            id: format!("rch{}", r.n),
            consumer: consumer_id(r.consumer),
            source: CreditSource::RechargeCard {
                batch: batch.clone(),
            },
            target: if r.wallet_only {
                CreditTarget::WalletOnly
            } else {
                CreditTarget::WalletOverflowToBank
            },
            amount: Amount::from_cents(r.amount),
        };
        let allowed: &[&str] = if r.wallet_only {
            &["credited", "refused:amount"]
        } else {
            &["credited"]
        };
        let what = || format!("credit {} (recharge from {batch})", cmd.id);
        let first = self
            .command(
                OpKind::Recharge,
                what,
                allowed,
                self.engine.credit(cmd.clone(), r.now),
            )
            .await?;
        if first != "credited" {
            // A refused credit leaves the code usable: nothing to steal or repeat.
            self.book.borrow_mut().services.recharges_refused += 1;
            return Some(());
        }
        {
            let mut book = self.book.borrow_mut();
            let s = &mut book.services;
            s.credits.insert(
                cmd.id.clone(),
                Credited {
                    consumer: r.consumer,
                    amount: r.amount,
                    source: cmd.source.clone(),
                },
            );
            *s.redeemed.entry(batch).or_default() += i128::from(r.amount);
        }
        if let Some(other) = r.stolen_by {
            let stolen = CreditCmd {
                consumer: consumer_id(other),
                ..cmd.clone()
            };
            let what = || {
                format!(
                    "credit {} by {} (a code redeemed already)",
                    cmd.id, stolen.consumer
                )
            };
            self.command(
                OpKind::Recharge,
                what,
                &["refused:conflict"],
                self.engine.credit(stolen.clone(), r.now),
            )
            .await?;
            self.book.borrow_mut().services.codes_stolen += 1;
        }
        if r.repeat {
            let what = || format!("credit {} (the same code again)", cmd.id);
            self.command(
                OpKind::Recharge,
                what,
                &["credited"],
                self.engine.credit(cmd.clone(), r.now),
            )
            .await?;
            self.book.borrow_mut().services.codes_repeated += 1;
        }
        Some(())
    }

    /// A payroll batch, as the node's payroll worker pays it: the employer's balance funded
    /// from its bank account, then each line credited from that balance (to the wallet with
    /// the overflow to the bank, or to the bank account), under the node's line ids. Holding
    /// the employer's lock, the simulator knows the balance, so each line must be `credited`
    /// when the balance covers it and `refused:funds` when not (an under-funded batch). Then
    /// the repeated lines answer as they did the first time.
    async fn payroll(&self, p: PayrollJob) -> Option<()> {
        let employer = employer_id(p.employer);
        let lock = self.employers.get(p.employer as usize)?;
        let mut balance = lock.lock().await;
        let reference = format!("pay{}", p.n);
        let fund = FundCmd {
            id: format!("fund{}", p.n),
            merchant: employer.clone(),
            amount: Amount::from_cents(p.funding),
        };
        let what = || format!("fund_merchant {} ({employer} for {reference})", fund.id);
        self.command(
            OpKind::Fund,
            what,
            &["credited"],
            self.engine.fund_merchant(fund.clone(), p.now),
        )
        .await?;
        *balance += i128::from(p.funding);
        let total: i64 = p.lines.iter().map(|l| l.amount).sum();
        {
            let mut book = self.book.borrow_mut();
            let s = &mut book.services;
            *s.funded.entry(employer.clone()).or_default() += i128::from(p.funding);
            s.payrolls += 1;
            s.payrolls_underfunded += u64::from(p.funding < total);
        }
        let mut first = Vec::with_capacity(p.lines.len());
        for (k, line) in p.lines.iter().enumerate() {
            let cmd = CreditCmd {
                id: onecard_node::payroll::credit_id(&reference, k as u32 + 1),
                consumer: consumer_id(line.consumer),
                source: CreditSource::Employer {
                    employer: employer.clone(),
                },
                target: if line.to_bank {
                    CreditTarget::Bank
                } else {
                    CreditTarget::WalletOverflowToBank
                },
                amount: Amount::from_cents(line.amount),
            };
            let expected = if i128::from(line.amount) <= *balance {
                "credited"
            } else {
                "refused:funds"
            };
            let what = || format!("credit {} (salary from {employer})", cmd.id);
            let o = self
                .command(
                    OpKind::Salary,
                    what,
                    &[expected],
                    self.engine.credit(cmd.clone(), p.now),
                )
                .await?;
            let mut book = self.book.borrow_mut();
            let s = &mut book.services;
            if o == "credited" {
                *balance -= i128::from(line.amount);
                *s.salaries_paid.entry(employer.clone()).or_default() += i128::from(line.amount);
                s.lines_paid += 1;
                s.credits.insert(
                    cmd.id.clone(),
                    Credited {
                        consumer: line.consumer,
                        amount: line.amount,
                        source: cmd.source.clone(),
                    },
                );
            } else {
                s.lines_failed += 1;
            }
            first.push((cmd, o));
        }
        for line in &p.repeats {
            let Some((cmd, o)) = first.get(*line as usize - 1) else {
                continue;
            };
            let what = || format!("credit {} (salary line repeated)", cmd.id);
            self.command(
                OpKind::Salary,
                what,
                &[*o],
                self.engine.credit(cmd.clone(), p.now),
            )
            .await?;
            self.book.borrow_mut().services.lines_repeated += 1;
        }
        Some(())
    }

    /// A credit limit set anew with the policy's reason. Always `ok`: a limit below what is
    /// reserved refuses new reservations only (I4 holds at the moment of reservation).
    async fn credit_limit(&self, l: LimitJob) -> Option<()> {
        let consumer = consumer_id(l.consumer);
        let what = || {
            format!(
                "set_credit_limit {consumer} to {}",
                Amount::from_cents(l.limit)
            )
        };
        self.command(
            OpKind::CreditLimit,
            what,
            &["ok"],
            self.engine
                .set_credit_limit(&consumer, Amount::from_cents(l.limit), &l.reason, l.now),
        )
        .await?;
        let mut book = self.book.borrow_mut();
        book.services.limit_changes += 1;
        book.services
            .limits
            .entry(l.consumer)
            .or_default()
            .push(l.limit);
        Some(())
    }

    /// A call to the simulated bank, off the runtime's thread: the bank flushes its store
    /// synchronously, which would stall every worker.
    async fn bank_call<F>(&self, kind: OpKind, what: String, f: F) -> bool
    where
        F: FnOnce(&SimBank) -> Result<(), onecard_engine::bank::BankError> + Send + 'static,
    {
        let Some(bank) = self.bank.clone() else {
            self.rec.borrow_mut().error(format!(
                "{what}: needs the in-process simulated bank (not available with --bank)"
            ));
            return false;
        };
        let start = Instant::now();
        let r = actix_rt::task::spawn_blocking(move || f(&bank)).await;
        match r {
            Ok(Ok(())) => {
                self.rec.borrow_mut().op(kind, start.elapsed(), "ok");
                true
            }
            Ok(Err(e)) => {
                self.rec
                    .borrow_mut()
                    .error(format!("{what}: bank error: {e}"));
                false
            }
            Err(e) => {
                self.rec
                    .borrow_mut()
                    .error(format!("{what}: blocking task failed: {e}"));
                false
            }
        }
    }

    /// Awaits one engine command, times it, and checks its outcome. `None` when the outcome is
    /// not one of `allowed` or the engine failed (both recorded).
    /// `what` names the command in a report line; it is only built when there is one.
    async fn command(
        &self,
        kind: OpKind,
        what: impl FnOnce() -> String,
        allowed: &[&str],
        fut: impl Future<Output = Result<CommandResult, EngineError>>,
    ) -> Option<&'static str> {
        let start = Instant::now();
        let result = fut.await;
        let took = start.elapsed();
        let mut rec = self.rec.borrow_mut();
        match result {
            Err(e) => {
                rec.error(format!("{}: engine error: {e}", what()));
                None
            }
            Ok(r) => {
                let outcome = outcome_str(&r);
                rec.op(kind, took, outcome);
                if allowed.contains(&outcome) {
                    Some(outcome)
                } else {
                    let message = r.err().map(|r| format!(" ({})", r.message));
                    rec.unexpected(format!(
                        "{}: {outcome}{} where the rules allow {}",
                        what(),
                        message.unwrap_or_default(),
                        allowed.join(" or ")
                    ));
                    None
                }
            }
        }
    }

    async fn lifecycle(&self, lc: Lifecycle) {
        let steps = self.steps(&lc).await;
        let (end, refunded) = steps.unwrap_or((End::Failed, 0));
        self.book.borrow_mut().record(
            lc.n,
            Expected {
                consumer: lc.consumer,
                amount: lc.amount,
                end,
                refunded,
            },
        );
        if steps.is_some() {
            self.rec.borrow_mut().lifecycle_done(lc.path.name());
        }
        self.progress.inc(1);
    }

    /// The lifecycle's commands in order. Returns how its order must end and what was refunded,
    /// or `None` at the first outcome the rules do not allow.
    async fn steps(&self, lc: &Lifecycle) -> Option<(End, i64)> {
        let id = order_id(lc.n);
        let now = lc.now;
        let release = match &lc.path {
            Path::Code { code, .. }
            | Path::CodeDisputeCancel { code }
            | Path::Cancel { code: Some(code) }
            | Path::Abandon { code: Some(code) } => Release::Code(code.clone()),
            Path::Time { after_secs } => Release::Time {
                after_secs: *after_secs,
            },
            _ => Release::Receipt,
        };
        let req = PlaceCmd {
            id: id.clone(),
            consumer: consumer_id(lc.consumer),
            merchant: merchant_id(lc.merchant),
            amount: Amount::from_cents(lc.amount),
            release,
            at_reader: None,
        };
        let what = || format!("place_order {id}");
        let allowed = if lc.amount <= self.direct_max {
            PLACED_DIRECT
        } else {
            PLACED
        };
        // Kept only for a lifecycle that repeats its placement.
        let again = lc.repeat.then(|| req.clone());
        let placed = self
            .command(OpKind::Place, what, allowed, self.engine.place(req, now))
            .await?;
        let (end, settled) = match placed {
            "refused:credit" | "refused:funds" => (End::Refused, false),
            // Direct mode settled it at once: nothing to release.
            "settled" => (End::SettledOrAwaiting, true),
            _ => self.release(lc, &id, now).await?,
        };
        let refunded = if settled {
            self.refund(lc, &id, now).await?
        } else {
            0
        };
        if let Some(req) = again {
            self.repeat(lc, req, placed, settled, now).await?;
        }
        Some((end, refunded))
    }

    /// What follows an accepted placement, by path: `(how the order must end, settled now)`.
    async fn release(&self, lc: &Lifecycle, id: &str, now: Secs) -> Option<(End, bool)> {
        Some(match &lc.path {
            Path::Receipt => self.confirm(id, now).await?,
            Path::Code { code, wrong } => {
                for k in 1..=*wrong {
                    self.wrong_code(id, code, k, now).await?;
                }
                let what = || format!("enter_code {id} (right)");
                let o = self
                    .command(
                        OpKind::Code,
                        what,
                        SETTLES,
                        self.engine.enter_code(id, code, now),
                    )
                    .await?;
                (End::SettledOrAwaiting, o == "settled")
            }
            Path::Time { .. } => (End::SettledOrAwaiting, false),
            Path::Cancel { .. } => {
                self.cancel(id, now).await?;
                (End::Cancelled, false)
            }
            Path::DisputeSettle => {
                self.dissatisfied(id, now).await?;
                self.confirm(id, now).await?
            }
            Path::DisputeCancel => {
                self.dissatisfied(id, now).await?;
                self.cancel(id, now).await?;
                (End::Cancelled, false)
            }
            Path::CodeDisputeCancel { code } => {
                for k in 1..=self.code_attempts_max {
                    self.wrong_code(id, code, k, now).await?;
                }
                self.cancel(id, now).await?;
                (End::Cancelled, false)
            }
            Path::Abandon { .. } => (End::Expired, false),
        })
    }

    /// A client retrying (I6): the same order again gets its first outcome and changes
    /// nothing; the same id with another amount is a conflict and leaves no trace; the last
    /// refund again is answered `refunded` and moves nothing. The final checks then find the
    /// order and its refunds exactly as the lifecycle left them.
    async fn repeat(
        &self,
        lc: &Lifecycle,
        req: PlaceCmd,
        first: &str,
        settled: bool,
        now: Secs,
    ) -> Option<()> {
        let id = req.id.clone();
        let what = || format!("place_order {id} (repeated)");
        self.command(
            OpKind::Place,
            what,
            &[first],
            self.engine.place(req.clone(), now),
        )
        .await?;
        let other = PlaceCmd {
            amount: Amount::from_cents(lc.amount + 1),
            ..req
        };
        let what = || format!("place_order {id} (same id, another amount)");
        self.command(
            OpKind::Place,
            what,
            &["refused:conflict"],
            self.engine.place(other, now),
        )
        .await?;
        if let (true, Some(amount)) = (settled, lc.refunds.last()) {
            let req = refund_request(lc.n, lc.refunds.len() - 1, &id, *amount);
            let what = || format!("refund {} of {id} (repeated)", req.id);
            self.command(
                OpKind::Refund,
                what,
                &["refunded"],
                self.engine.refund_typed(req.clone(), now),
            )
            .await?;
        }
        Some(())
    }

    /// Receipt confirmed, satisfied.
    async fn confirm(&self, id: &str, now: Secs) -> Option<(End, bool)> {
        let what = || format!("confirm_receipt {id}");
        let o = self
            .command(
                OpKind::Confirm,
                what,
                SETTLES,
                self.engine.confirm_receipt(id, true, now),
            )
            .await?;
        Some((End::SettledOrAwaiting, o == "settled"))
    }

    /// Receipt confirmed, not satisfied: a pending receipt order becomes disputed.
    async fn dissatisfied(&self, id: &str, now: Secs) -> Option<()> {
        let what = || format!("confirm_receipt {id} (not satisfied)");
        self.command(
            OpKind::Confirm,
            what,
            &["disputed"],
            self.engine.confirm_receipt(id, false, now),
        )
        .await
        .map(|_| ())
    }

    /// The `k`-th wrong code: `refused:code`, except the last allowed attempt, which disputes.
    async fn wrong_code(&self, id: &str, code: &str, k: u32, now: Secs) -> Option<()> {
        let allowed: &[&str] = if k >= self.code_attempts_max {
            &["disputed"]
        } else {
            &["refused:code"]
        };
        let what = || format!("enter_code {id} (wrong, attempt {k})");
        let wrong = format!("x{code}");
        self.command(
            OpKind::Code,
            what,
            allowed,
            self.engine.enter_code(id, &wrong, now),
        )
        .await
        .map(|_| ())
    }

    async fn cancel(&self, id: &str, now: Secs) -> Option<()> {
        let what = || format!("cancel_order {id}");
        self.command(
            OpKind::Cancel,
            what,
            &["cancelled"],
            self.engine.cancel_order(id, now),
        )
        .await
        .map(|_| ())
    }

    /// The lifecycle's refunds of its settled order. The merchant's balance always covers
    /// them: it was credited this order's amount, and every refund of any of its orders is
    /// bounded by that order's amount — so `refused:funds` would be a bug.
    async fn refund(&self, lc: &Lifecycle, id: &str, now: Secs) -> Option<i64> {
        let mut refunded = 0;
        for (k, amount) in lc.refunds.iter().enumerate() {
            let req = refund_request(lc.n, k, id, *amount);
            let what = || format!("refund {} of {id}", req.id);
            self.command(
                OpKind::Refund,
                what,
                &["refunded"],
                self.engine.refund_typed(req.clone(), now),
            )
            .await?;
            refunded += amount;
        }
        Some(refunded)
    }
}

/// The k-th refund of lifecycle `n`: its id is derived, so a repeat sends the same request.
fn refund_request(n: u64, k: usize, order: &str, cents: i64) -> RefundCmd {
    RefundCmd {
        id: format!("r{n}.{k}"),
        order: order.to_string(),
        amount: Amount::from_cents(cents),
    }
}
