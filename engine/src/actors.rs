//! Per-account actors on actix.
//!
//! Each consumer and each merchant account is owned by exactly one actor; only that actor
//! changes its state. A consumer actor handles a command as one atomic unit
//! (`AtomicResponse`): the pure rules decide, the bank is asked when money must come from it,
//! the events are applied and journaled, and the caller is answered once the journal has them
//! on disk. Because a handler is atomic, a check and the debit that follows it cannot be
//! interleaved with another command for the same account; other accounts are not held up,
//! since every actor has its own mailbox and the actors are spread over a pool of arbiters.
//!
//! A consumer actor holds its account and its open orders. An order a command names that is
//! not resident (a settled order being refunded, a repeated id) is read from the account-state
//! view first; after the command, closed orders leave memory again. Every entry carries the
//! view's writes for the account, so an idle actor can be dropped at any time.
//!
//! A settlement moves money consumer → merchant in one balanced event written by the consumer
//! actor; after it is durable the merchant actor is told to apply its credit. A refund asks the
//! merchant actor to debit first (it owns the balance that must cover it), then writes the one
//! balanced refund event.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;

use crate::bank::{BankAnswer, BankOp};
use crate::commands::ReaderPayment;
use crate::error::EngineError;
use crate::ledger::{
    ConsumerState, CreditRecord, CreditSource, CreditTarget, Entry, Event, EventKind, GatewayRules,
    PlaceDecision, ReleaseDecision,
};
use crate::model::{CommandResult, OrderState, Outcome, Refusal, Release, Secs};
use crate::money::Amount;
use crate::router::{Lease, LiveActor, Shared};
use crate::view;

/// A command for one consumer's actor.
#[derive(Debug, Clone)]
pub enum ConsumerCmd {
    Place {
        id: String,
        merchant: String,
        amount: Amount,
        release: Release,
        /// The engine found no order with this id (and holds its claim): nothing to look up.
        fresh: bool,
        /// A payment at a reader: the consumer's gateway rules apply.
        at_reader: Option<ReaderPayment>,
    },
    /// New payment-gateway rules (SPEC F9); `None` removes them.
    SetGatewayRules {
        rules: Option<GatewayRules>,
    },
    ConfirmReceipt {
        order: String,
        satisfied: bool,
    },
    EnterCode {
        order: String,
        code: String,
    },
    Cancel {
        order: String,
    },
    Refund {
        id: String,
        order: String,
        amount: Amount,
    },
    /// Money for this consumer, under an id (SPEC F8, F12).
    Credit {
        id: String,
        source: CreditSource,
        target: CreditTarget,
        amount: Amount,
    },
    /// Another bank account for this consumer (SPEC F5): its stored name and, with a data
    /// key, the account sealed.
    LinkBank {
        bank: String,
        sealed: Option<Vec<u8>>,
    },
    /// A linked account becomes the designated one.
    DesignateBank {
        bank: String,
    },
    /// Money from one of the consumer's bank accounts to another, under an id.
    TransferBetweenBanks {
        id: String,
        from: String,
        to: String,
        amount: Amount,
    },
    /// A new credit limit, and why (SPEC F10).
    SetCreditLimit {
        limit: Amount,
        reason: String,
    },
    Tick,
    /// Nothing to do: answers once the actor is up (activation, liveness).
    Touch,
    /// The bank's answer to a top-up asked for after a settlement was acknowledged (an
    /// external bank): sent by the actor to itself. `answer` is the bank's answer, or why it
    /// could not be had (a fault: the outcome unknown).
    TopUpAnswered {
        amount: Amount,
        op: String,
        answer: Result<BankAnswer, String>,
    },
}

#[derive(Debug, Clone)]
pub enum ConsumerReply {
    Done(CommandResult),
}

pub struct ConsumerMsg {
    pub cmd: ConsumerCmd,
    pub now: Secs,
    /// Keeps the actor resident until this message is handled.
    pub lease: Lease<ConsumerActor>,
    /// Where the answer goes. Dropped unanswered if the actor stops first.
    reply: tokio::sync::oneshot::Sender<Result<ConsumerReply, EngineError>>,
}

impl Message for ConsumerMsg {
    type Result = ();
}

/// Hands `cmd` to the actor `lease` is on and waits for its answer.
pub(crate) async fn ask(
    lease: Lease<ConsumerActor>,
    cmd: ConsumerCmd,
    now: Secs,
) -> Result<ConsumerReply, EngineError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    lease.deliver(|lease| ConsumerMsg {
        cmd,
        now,
        lease,
        reply,
    });
    answer.await.map_err(|_| {
        EngineError::Unavailable("account actor unreachable: it stopped before answering".into())
    })?
}

pub struct ConsumerActor {
    state: Rc<RefCell<ConsumerState>>,
    shared: Arc<Shared>,
    /// When this actor last told the directory its consumer's time-driven work starts
    /// (`None`: not yet): the directory is this actor's to keep for its consumer, so an
    /// unchanged answer needs no lookup in it.
    time_work_noted: Rc<Cell<Option<Option<Secs>>>>,
    /// Counted among the live actors while it exists (closing waits for none to be left).
    _live: LiveActor,
}

impl ConsumerActor {
    /// An actor for a consumer as the view holds it: the account and its open orders.
    pub fn new(state: ConsumerState, shared: Arc<Shared>) -> ConsumerActor {
        ConsumerActor {
            state: Rc::new(RefCell::new(state)),
            _live: LiveActor::new(shared.clone()),
            shared,
            time_work_noted: Rc::new(Cell::new(None)),
        }
    }
}

impl Actor for ConsumerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.mailbox_capacity);
    }
}

impl Handler<ConsumerMsg> for ConsumerActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: ConsumerMsg, _ctx: &mut Self::Context) -> Self::Result {
        let ConsumerMsg {
            cmd,
            lease,
            now,
            reply,
        } = msg;
        let run = Run {
            st: self.state.clone(),
            shared: self.shared.clone(),
            time_work_noted: self.time_work_noted.clone(),
            now,
            bank_ops: RefCell::new(Vec::new()),
            submitted: Cell::new(false),
            topups: RefCell::new(Vec::new()),
        };
        AtomicResponse::new(Box::pin(
            async move {
                let result = run.command(cmd).await;
                if result.is_ok() {
                    run.start_topups(&lease);
                }
                // Handled: the actor may be passivated from now on (not while a top-up it
                // started waits for the bank: that holds a lease of its own).
                drop(lease);
                // The asker may have stopped waiting: then nobody needs the answer.
                let _ = reply.send(result);
            }
            .into_actor(self),
        ))
    }
}

/// One command's run inside a consumer actor. Never holds a `RefCell` borrow across an await.
struct Run {
    st: Rc<RefCell<ConsumerState>>,
    shared: Arc<Shared>,
    time_work_noted: Rc<Cell<Option<Option<Secs>>>>,
    now: Secs,
    /// Bank operations the bank did for this command and no durable entry names yet.
    bank_ops: RefCell<Vec<String>>,
    /// Whether an entry of this command went to the journal (whatever came of it).
    submitted: Cell<bool>,
    /// Top-ups to ask the bank for once this command is done (an external bank), each
    /// counted in the account's `topup_in_flight` meanwhile.
    topups: RefCell<Vec<Amount>>,
}

impl Run {
    async fn command(&self, cmd: ConsumerCmd) -> Result<ConsumerReply, EngineError> {
        let result = self.run(cmd).await;
        if result.is_err() {
            self.undo();
        }
        // Closed orders and refunds live in the view; only open orders stay resident.
        {
            let mut st = self.st.borrow_mut();
            st.orders.retain(|_, o| o.state.is_open());
            st.refunds.clear();
        }
        result
    }

    /// After a fault the events applied in memory are not all durable: the account goes back
    /// to what the view holds (the durable state), and bank operations no durable entry names
    /// are undone. Not after a failed journal write, though: the record may have reached the
    /// disk even so, and the journal accepts nothing more, so the restart that must follow
    /// settles the bank's side (the simulated bank from the log itself; an external one by the
    /// reconciliation at opening).
    fn undo(&self) {
        // Top-ups of earlier commands may still wait for the bank: they stay counted; this
        // command's never start.
        let pending = self
            .topups
            .borrow_mut()
            .drain(..)
            .try_fold(Amount::ZERO, |s, a| s.checked_add(a))
            .unwrap_or(Amount::ZERO);
        let in_flight = self
            .st
            .borrow()
            .topup_in_flight
            .checked_sub(pending)
            .unwrap_or(Amount::ZERO);
        if !self.submitted.get() {
            for op in self.bank_ops.borrow_mut().drain(..) {
                if let Err(e) = self.shared.bank.reverse(&op) {
                    tracing::error!(op = %op, error = %e, "could not undo a bank operation of a failed command; the next opening reconciles it");
                }
            }
        }
        let id = self.st.borrow().id.clone();
        match self.shared.view.consumer(&id) {
            Ok(Some(mut durable)) => {
                durable.topup_in_flight = in_flight;
                *self.st.borrow_mut() = durable
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(consumer = %id, error = %e, "could not reload a consumer after a failed command")
            }
        }
    }

    /// Makes an order this consumer owns resident. Open orders always are; a closed one is
    /// read from the view.
    fn load_order(&self, order: &str) -> Result<(), EngineError> {
        if self.st.borrow().orders.contains_key(order) {
            return Ok(());
        }
        if let Some(stored) = self.shared.view.closed_order(order)? {
            let mut st = self.st.borrow_mut();
            if stored.consumer == st.id {
                st.orders.insert(order.to_string(), Box::new(stored.order));
            }
        }
        Ok(())
    }

    fn load_refund(&self, refund: &str) -> Result<(), EngineError> {
        if let Some(stored) = self.shared.view.refund(refund)? {
            let mut st = self.st.borrow_mut();
            if stored.consumer == st.id {
                st.refunds.insert(refund.to_string(), stored.refund);
            }
        }
        Ok(())
    }

    async fn run(&self, cmd: ConsumerCmd) -> Result<ConsumerReply, EngineError> {
        match &cmd {
            ConsumerCmd::Place { id, fresh, .. } => {
                if !fresh {
                    self.load_order(id)?
                }
            }
            ConsumerCmd::ConfirmReceipt { order, .. }
            | ConsumerCmd::EnterCode { order, .. }
            | ConsumerCmd::Cancel { order } => self.load_order(order)?,
            ConsumerCmd::Refund { id, order, .. } => {
                self.load_order(order)?;
                self.load_refund(id)?;
            }
            ConsumerCmd::Tick
            | ConsumerCmd::Touch
            | ConsumerCmd::TopUpAnswered { .. }
            | ConsumerCmd::Credit { .. }
            | ConsumerCmd::SetCreditLimit { .. }
            | ConsumerCmd::SetGatewayRules { .. }
            | ConsumerCmd::LinkBank { .. }
            | ConsumerCmd::DesignateBank { .. }
            | ConsumerCmd::TransferBetweenBanks { .. } => {}
        }
        let result = match cmd {
            ConsumerCmd::Place {
                id,
                merchant,
                amount,
                release,
                at_reader,
                ..
            } => self.place(id, merchant, amount, release, at_reader).await?,
            ConsumerCmd::SetGatewayRules { rules } => {
                let (consumer, same) = {
                    let st = self.st.borrow();
                    (st.id.clone(), st.gateway.as_deref() == rules.as_ref())
                };
                if !same {
                    let ev = Event::new(EventKind::GatewayRulesSet { consumer, rules });
                    self.commit(vec![ev]).await?;
                }
                Ok(Outcome::Ok)
            }
            ConsumerCmd::ConfirmReceipt { order, satisfied } => {
                let d = self.st.borrow().decide_receipt(&order, satisfied);
                self.release(&order, d).await?
            }
            ConsumerCmd::EnterCode { order, code } => {
                let d = self
                    .st
                    .borrow()
                    .decide_code(&order, &code, &self.shared.rules);
                self.release(&order, d).await?
            }
            ConsumerCmd::Cancel { order } => {
                let d = self.st.borrow().decide_cancel(&order);
                match d {
                    Ok(ev) => {
                        self.commit(vec![ev]).await?;
                        Ok(Outcome::Cancelled)
                    }
                    Err(r) => Err(r),
                }
            }
            ConsumerCmd::Refund { id, order, amount } => self.refund(id, order, amount).await?,
            ConsumerCmd::Credit {
                id,
                source,
                target,
                amount,
            } => self.credit(id, source, target, amount).await?,
            ConsumerCmd::LinkBank { bank, sealed } => {
                let (consumer, known) = {
                    let st = self.st.borrow();
                    (st.id.clone(), st.has_bank(&bank))
                };
                if !known {
                    let ev = Event::new(EventKind::BankLinked {
                        consumer,
                        bank,
                        bank_sealed: sealed,
                    });
                    self.commit(vec![ev]).await?;
                }
                Ok(Outcome::Ok)
            }
            ConsumerCmd::DesignateBank { bank } => {
                let (consumer, designated, linked) = {
                    let st = self.st.borrow();
                    (
                        st.id.clone(),
                        st.bank == bank,
                        st.linked.contains_key(&bank),
                    )
                };
                if designated {
                    Ok(Outcome::Ok)
                } else if !linked {
                    Err(Refusal::unknown(format!(
                        "{bank} is not a linked bank account of {consumer}"
                    )))
                } else {
                    let ev = Event::new(EventKind::BankDesignated { consumer, bank });
                    self.commit(vec![ev]).await?;
                    Ok(Outcome::Ok)
                }
            }
            ConsumerCmd::TransferBetweenBanks {
                id,
                from,
                to,
                amount,
            } => self.transfer_between_banks(id, from, to, amount).await?,
            ConsumerCmd::SetCreditLimit { limit, reason } => {
                self.set_credit_limit(limit, reason).await?
            }
            ConsumerCmd::Tick => self.tick().await?,
            ConsumerCmd::Touch => Ok(Outcome::Ok),
            ConsumerCmd::TopUpAnswered { amount, op, answer } => {
                self.topup_answered(amount, op, answer).await?;
                Ok(Outcome::Ok)
            }
        };
        {
            let st = self.st.borrow();
            let next = st.next_time_work(&self.shared.rules);
            if self.time_work_noted.get() != Some(next) {
                self.shared.note_time_work(&st.id, next);
                self.time_work_noted.set(Some(next));
            }
        }
        Ok(ConsumerReply::Done(result))
    }

    /// Applies events in memory (checking the account's invariants), journals them as one
    /// entry and waits until it is durable. Then merchants are told of their credits.
    async fn commit(&self, events: Vec<Event>) -> Result<(), EngineError> {
        self.apply_all(&events)?;
        self.journal(events).await
    }

    fn apply_all(&self, events: &[Event]) -> Result<(), EngineError> {
        for ev in events {
            self.apply(ev)?;
        }
        Ok(())
    }

    fn apply(&self, ev: &Event) -> Result<(), EngineError> {
        let mut st = self.st.borrow_mut();
        st.apply(ev, self.now)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        st.check_wallet(&self.shared.rules)
            .map_err(|e| EngineError::Internal(e.to_string()))
    }

    /// Journals events already applied in memory.
    async fn journal(&self, events: Vec<Event>) -> Result<(), EngineError> {
        if events.is_empty() {
            return Ok(());
        }
        let entry = Entry::new(self.now, events);
        let writes = view::consumer_writes(&self.st.borrow(), &entry);
        self.submitted.set(true);
        self.shared.journal.append(&entry, writes).await?;
        // Durable: the bank operations it names are no longer this command's to undo.
        self.bank_ops.borrow_mut().clear();
        {
            let st = self.st.borrow();
            for order in entry.events.iter().filter_map(Event::order) {
                if let Some(o) = st.orders.get(order) {
                    self.shared.note_order(&st.id, o);
                }
            }
        }
        let ops: Vec<String> = entry.bank_ops().cloned().collect();
        if !ops.is_empty() {
            self.shared.bank.confirm(&ops);
        }
        Ok(())
    }

    async fn place(
        &self,
        id: String,
        merchant: String,
        amount: Amount,
        release: Release,
        at_reader: Option<ReaderPayment>,
    ) -> Result<CommandResult, EngineError> {
        if let Some(o) = self.st.borrow().orders.get(&id) {
            let same = o.merchant == merchant && o.amount == amount && o.release == release;
            return Ok(if same {
                o.first_result.clone()
            } else {
                Err(Refusal::conflict(format!(
                    "order id {id} is already used by another order"
                )))
            });
        }
        // The gateway rules first (the consumer's own conditions), then credit.
        let gateway = match &at_reader {
            None => Ok(None),
            Some(p) => {
                self.st
                    .borrow()
                    .decide_gateway(&id, &merchant, &p.category, amount, self.now)
            }
        };
        let (decision, spent) = match gateway {
            Err(r) => (PlaceDecision::Refused(r), None),
            Ok(spent) => (
                self.st.borrow().decide_place(amount, &self.shared.rules),
                spent,
            ),
        };
        match decision {
            PlaceDecision::Refused(r) => {
                let ev = self.st.borrow().placed_event(
                    &id,
                    &merchant,
                    amount,
                    &release,
                    Err(r.clone()),
                    false,
                );
                self.commit(vec![ev]).await?;
                Ok(Err(r))
            }
            PlaceDecision::Accept => {
                let ev = self.st.borrow().placed_event(
                    &id,
                    &merchant,
                    amount,
                    &release,
                    Ok(Outcome::Accepted),
                    false,
                );
                self.commit([ev].into_iter().chain(spent).collect()).await?;
                Ok(Ok(Outcome::Accepted))
            }
            PlaceDecision::Direct => {
                let funding = self.st.borrow().funding(amount);
                let mut bank_op = None;
                if funding.bank_part.is_positive() {
                    match self.debit_bank(funding.bank_part).await? {
                        Ok(op) => bank_op = Some(op),
                        Err(reason) => {
                            let r = Refusal::funds(format!(
                                "direct order {id} cannot be funded: wallet holds {}, and the bank: {reason}",
                                funding.wallet_part
                            ));
                            let ev = self.st.borrow().placed_event(
                                &id,
                                &merchant,
                                amount,
                                &release,
                                Err(r.clone()),
                                true,
                            );
                            self.commit(vec![ev]).await?;
                            return Ok(Err(r));
                        }
                    }
                }
                let placed = self.st.borrow().placed_event(
                    &id,
                    &merchant,
                    amount,
                    &release,
                    Ok(Outcome::Settled),
                    true,
                );
                self.apply(&placed)?;
                let settled = self
                    .st
                    .borrow()
                    .settled_event(&id, &merchant, funding, bank_op);
                self.apply(&settled)?;
                let mut events = vec![placed, settled];
                if let Some(spent) = spent {
                    self.apply(&spent)?;
                    events.push(spent);
                }
                events.extend(self.top_up().await?);
                self.journal(events).await?;
                Ok(Ok(Outcome::Settled))
            }
        }
    }

    /// Asks the bank for `amount` from the consumer's designated account. `Ok(Err(reason))`
    /// is a refusal; `Err` is a fault (the bank unreachable).
    async fn debit_bank(&self, amount: Amount) -> Result<Result<String, String>, EngineError> {
        let bank_ref = self.st.borrow().bank.clone();
        self.debit_bank_account(&bank_ref, amount).await
    }

    /// [`Run::debit_bank`] from any of the consumer's accounts (its stored name).
    async fn debit_bank_account(
        &self,
        bank_ref: &str,
        amount: Amount,
    ) -> Result<Result<String, String>, EngineError> {
        let account = self.shared.real_bank_account(bank_ref)?;
        let id = self.shared.new_bank_op_id();
        let op = BankOp {
            id: id.clone(),
            account,
            amount,
        };
        match self.shared.bank.debit(op).await {
            Ok(BankAnswer::Done) => {
                self.bank_ops.borrow_mut().push(id.clone());
                Ok(Ok(id))
            }
            Ok(BankAnswer::Refused(reason)) => Ok(Err(reason)),
            // The bank's own answer that it has no such account: a refusal, not a fault.
            // Not named: the reason may be journaled, and the account is not (I10).
            Err(crate::bank::BankError::UnknownAccount(_)) => {
                Ok(Err("the bank knows no such account".to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Events for a top-up back to exactly the cap, if the wallet is below the threshold.
    /// Applied already; the caller journals them with the rest of the command.
    ///
    /// With an external bank the top-up does not hold up the settlement: it is counted in
    /// `topup_in_flight` (so that no later command asks for it again, and the wallet with it
    /// stays within the cap, I3), asked for once the command is done, and journaled when the
    /// bank answers (`TopUpAnswered`). A crash meanwhile loses only the request: the bank's
    /// side is reconciled at opening.
    async fn top_up(&self) -> Result<Vec<Event>, EngineError> {
        let needed = self.st.borrow().topup_needed(&self.shared.rules);
        let Some(amount) = needed else {
            return Ok(vec![]);
        };
        if self
            .shared
            .async_topups
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            {
                let mut st = self.st.borrow_mut();
                st.topup_in_flight = st
                    .topup_in_flight
                    .checked_add(amount)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
            }
            self.topups.borrow_mut().push(amount);
            return Ok(vec![]);
        }
        self.st.borrow_mut().topup_in_flight = amount;
        let answer = self.debit_bank(amount).await;
        self.st.borrow_mut().topup_in_flight = Amount::ZERO;
        // A top-up the bank could not be asked for, or whose answer is unknown, does not undo
        // the settlement that needed it: the wallet has paid, and the top-up is recorded as
        // not done (the next settlement tries again). An operation the bank did after all is
        // resolved by the bank's adapter, which reverses it: the journal never names it.
        let answer = match answer {
            Err(EngineError::Bank(e)) => Ok(Err(format!("the bank could not be asked: {e}"))),
            other => other,
        };
        let ev = match answer? {
            Ok(op) => self.st.borrow().topped_up_event(amount, op),
            Err(reason) => {
                let consumer = self.st.borrow().id.clone();
                Event::new(EventKind::TopUpRefused {
                    consumer,
                    amount,
                    reason,
                })
            }
        };
        self.apply(&ev)?;
        Ok(vec![ev])
    }

    /// Asks the bank for the top-ups this command left for after it (an external bank), each
    /// on a task of its own holding a lease, so that the actor stays resident until the answer
    /// has been handled. The answer comes back as a `TopUpAnswered` command.
    fn start_topups(&self, lease: &Lease<ConsumerActor>) {
        let amounts: Vec<Amount> = self.topups.borrow_mut().drain(..).collect();
        if amounts.is_empty() {
            return;
        }
        let bank_ref = self.st.borrow().bank.clone();
        for amount in amounts {
            let lease = lease.another();
            let shared = self.shared.clone();
            let bank_ref = bank_ref.clone();
            let now = self.now;
            shared
                .topups_pending
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            actix::spawn(async move {
                let op = shared.new_bank_op_id();
                let answer = match shared.real_bank_account(&bank_ref) {
                    Ok(account) => shared
                        .bank
                        .debit(BankOp {
                            id: op.clone(),
                            account,
                            amount,
                        })
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let cmd = ConsumerCmd::TopUpAnswered { amount, op, answer };
                if let Err(e) = ask(lease, cmd, now).await {
                    // The bank's side is reconciled at the next opening.
                    tracing::error!(error = %e, "a top-up's answer could not be recorded in its account");
                }
                shared
                    .topups_pending
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            });
        }
    }

    /// The bank answered a top-up asked for after its settlement: journals it as done or
    /// refused, and it no longer counts as in flight.
    async fn topup_answered(
        &self,
        amount: Amount,
        op: String,
        answer: Result<BankAnswer, String>,
    ) -> Result<(), EngineError> {
        {
            let mut st = self.st.borrow_mut();
            st.topup_in_flight = st
                .topup_in_flight
                .checked_sub(amount)
                .map_err(|e| EngineError::Internal(e.to_string()))?;
        }
        let consumer = self.st.borrow().id.clone();
        let ev = match answer {
            Ok(BankAnswer::Done) => {
                // Undone if this entry cannot be journaled.
                self.bank_ops.borrow_mut().push(op.clone());
                self.st.borrow().topped_up_event(amount, op)
            }
            Ok(BankAnswer::Refused(reason)) => Event::new(EventKind::TopUpRefused {
                consumer,
                amount,
                reason,
            }),
            Err(fault) => Event::new(EventKind::TopUpRefused {
                consumer,
                amount,
                reason: format!("the bank could not be asked: {fault}"),
            }),
        };
        self.commit(vec![ev]).await
    }

    /// Settles an order whose condition is met: wallet first, the bank for the rest, then the
    /// top-up. If the bank cannot pay its part nothing moves and the order awaits funds.
    /// Returns the events (already applied) and the outcome.
    async fn settle(&self, order: &str) -> Result<(Vec<Event>, Outcome), EngineError> {
        let (amount, merchant, state) = {
            let st = self.st.borrow();
            let o = st
                .orders
                .get(order)
                .ok_or_else(|| EngineError::Internal(format!("order {order} vanished")))?;
            (o.amount, o.merchant.clone(), o.state)
        };
        let funding = self.st.borrow().funding(amount);
        let mut bank_op = None;
        if funding.bank_part.is_positive() {
            // The bank unreachable, or its answer unknown: the order awaits funds (and is tried
            // again at the next tick) rather than failing; an operation the bank did after all
            // is reversed by the bank's adapter, as the journal never names it.
            let answer = match self.debit_bank(funding.bank_part).await {
                Err(EngineError::Bank(e)) => Ok(Err(format!("the bank could not be asked: {e}"))),
                other => other,
            };
            match answer? {
                Ok(op) => bank_op = Some(op),
                Err(reason) => {
                    if state == OrderState::AwaitingFunds {
                        return Ok((vec![], Outcome::AwaitingFunds));
                    }
                    let consumer = self.st.borrow().id.clone();
                    let ev = Event::new(EventKind::OrderAwaitingFunds {
                        order: order.to_string(),
                        consumer,
                        reason,
                    });
                    self.apply(&ev)?;
                    return Ok((vec![ev], Outcome::AwaitingFunds));
                }
            }
        }
        let settled = self
            .st
            .borrow()
            .settled_event(order, &merchant, funding, bank_op);
        self.apply(&settled)?;
        let mut events = vec![settled];
        events.extend(self.top_up().await?);
        Ok((events, Outcome::Settled))
    }

    async fn release(
        &self,
        order: &str,
        decision: Result<ReleaseDecision, Refusal>,
    ) -> Result<CommandResult, EngineError> {
        match decision {
            Err(r) => Ok(Err(r)),
            Ok(ReleaseDecision::Record(events, result)) => {
                self.commit(events).await?;
                Ok(result)
            }
            Ok(ReleaseDecision::Settle) => {
                let (events, outcome) = self.settle(order).await?;
                self.journal(events).await?;
                Ok(Ok(outcome))
            }
        }
    }

    async fn refund(
        &self,
        id: String,
        order: String,
        amount: Amount,
    ) -> Result<CommandResult, EngineError> {
        if let Some(r) = self.st.borrow().refunds.get(&id) {
            return Ok(if r.order == order && r.amount == amount {
                Ok(Outcome::Refunded)
            } else {
                Err(Refusal::conflict(format!(
                    "refund id {id} is already used by another refund"
                )))
            });
        }
        let merchant = match self.st.borrow().check_refund(&order, amount) {
            Ok(o) => o.merchant.clone(),
            Err(r) => return Ok(Err(r)),
        };
        if let Err(r) = self.shared.debit_merchant_for_refund(&merchant, amount)? {
            return Ok(Err(r));
        }
        let (to_wallet, to_bank) = self.st.borrow().refund_split(amount, &self.shared.rules);
        let mut bank_op = None;
        if to_bank.is_positive() {
            let bank_ref = self.st.borrow().bank.clone();
            let account = match self.shared.real_bank_account(&bank_ref) {
                Ok(a) => a,
                Err(e) => {
                    // Give the merchant its money back: nothing of the refund happened.
                    self.shared.credit_merchant_back(&merchant, amount);
                    return Err(e);
                }
            };
            let op_id = self.shared.new_bank_op_id();
            let answer = self
                .shared
                .bank
                .credit(BankOp {
                    id: op_id.clone(),
                    account,
                    amount: to_bank,
                })
                .await;
            match answer {
                Ok(BankAnswer::Done) => {
                    self.bank_ops.borrow_mut().push(op_id.clone());
                    bank_op = Some(op_id)
                }
                other => {
                    // Give the merchant its money back: nothing of the refund happened.
                    self.shared.credit_merchant_back(&merchant, amount);
                    return match other {
                        Err(e) => Err(e.into()),
                        Ok(_) => Ok(Err(Refusal::funds(
                            "the bank refused the overflow of the refund",
                        ))),
                    };
                }
            }
        }
        let ev = {
            let st = self.st.borrow();
            let o = st
                .orders
                .get(&order)
                .ok_or_else(|| EngineError::Internal("order vanished".into()))?;
            st.refunded_event(&id, o, amount, to_wallet, to_bank, bank_op)
        };
        self.commit(vec![ev]).await?;
        Ok(Ok(Outcome::Refunded))
    }

    /// A credit: the source pays (a recharge batch, an employer's balance held meanwhile, the
    /// designated bank account by a debit), the wallet takes what the cap allows, the bank
    /// account the rest (or all of it, for a credit to the bank). A repeat of the id answers
    /// as the first time; a refused credit leaves no trace.
    async fn credit(
        &self,
        id: String,
        source: CreditSource,
        target: CreditTarget,
        amount: Amount,
    ) -> Result<CommandResult, EngineError> {
        let consumer = self.st.borrow().id.clone();
        if let Some(first) = self.shared.view.credit(&id)? {
            let same = matches!(&first, CreditRecord::Consumer { consumer: c, source: s, target: t, amount: a, .. }
                if *c == consumer && *s == source && *t == target && *a == amount);
            return Ok(if same {
                Ok(Outcome::Credited)
            } else {
                Err(Refusal::conflict(format!(
                    "credit id {id} is already used by another credit"
                )))
            });
        }
        let split = self
            .st
            .borrow()
            .credit_split(&source, target, amount, &self.shared.rules);
        let (to_wallet, to_bank) = match split {
            Ok(split) => split,
            Err(r) => return Ok(Err(r)),
        };
        let employer = match &source {
            CreditSource::Employer { employer } => Some(employer.clone()),
            _ => None,
        };
        if let Some(employer) = &employer {
            if let Err(r) = self.shared.debit_merchant_for_refund(employer, amount)? {
                return Ok(Err(r));
            }
        }
        // Whatever goes wrong from here, the employer's hold is given back.
        let give_back = |employer: &Option<String>| {
            if let Some(e) = employer {
                self.shared.credit_merchant_back(e, amount);
            }
        };
        let mut bank_op = None;
        let debit_from = match &source {
            CreditSource::BankTransfer => Some(self.st.borrow().bank.clone()),
            CreditSource::LinkedBank { bank } => Some(bank.clone()),
            _ => None,
        };
        if let Some(from) = debit_from {
            match self.debit_bank_account(&from, amount).await {
                Ok(Ok(op)) => bank_op = Some(op),
                Ok(Err(reason)) => {
                    return Ok(Err(Refusal::funds(format!(
                        "the bank refused the transfer of {amount}: {reason}"
                    ))))
                }
                Err(e) => return Err(e),
            }
        }
        if to_bank.is_positive() {
            match self.credit_bank(to_bank).await {
                Ok(Ok(op)) => bank_op = Some(op),
                Ok(Err(reason)) => {
                    give_back(&employer);
                    return Ok(Err(Refusal::funds(format!(
                        "the bank refused the credit of {to_bank}: {reason}"
                    ))));
                }
                Err(e) => {
                    give_back(&employer);
                    return Err(e);
                }
            }
        }
        let ev = self
            .st
            .borrow()
            .credited_event(&id, &source, target, amount, to_wallet, to_bank, bank_op);
        self.commit(vec![ev]).await?;
        Ok(Ok(Outcome::Credited))
    }

    /// Asks the bank to pay `amount` into the consumer's designated account. `Ok(Err(reason))`
    /// is a refusal; `Err` is a fault.
    async fn credit_bank(&self, amount: Amount) -> Result<Result<String, String>, EngineError> {
        let bank_ref = self.st.borrow().bank.clone();
        self.credit_bank_account(&bank_ref, amount).await
    }

    /// [`Run::credit_bank`] into any of the consumer's accounts (its stored name).
    async fn credit_bank_account(
        &self,
        bank_ref: &str,
        amount: Amount,
    ) -> Result<Result<String, String>, EngineError> {
        let account = self.shared.real_bank_account(bank_ref)?;
        let id = self.shared.new_bank_op_id();
        let op = BankOp {
            id: id.clone(),
            account,
            amount,
        };
        match self.shared.bank.credit(op).await {
            Ok(BankAnswer::Done) => {
                self.bank_ops.borrow_mut().push(id.clone());
                Ok(Ok(id))
            }
            Ok(BankAnswer::Refused(reason)) => Ok(Err(reason)),
            // The bank's own answer that it has no such account: a refusal, not a fault.
            // Not named: the reason may be journaled, and the account is not (I10).
            Err(crate::bank::BankError::UnknownAccount(_)) => {
                Ok(Err("the bank knows no such account".to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Money from one of the consumer's bank accounts to another through the node: the bank
    /// debits `from`, then credits `to`; if the credit cannot be done the debit is reversed and
    /// nothing is journaled. A repeat of the id answers as the first time.
    async fn transfer_between_banks(
        &self,
        id: String,
        from: String,
        to: String,
        amount: Amount,
    ) -> Result<CommandResult, EngineError> {
        let consumer = self.st.borrow().id.clone();
        if let Some(first) = self.shared.view.credit(&id)? {
            let same = matches!(&first, CreditRecord::Transfer { consumer: c, from: f, to: t, amount: a }
                if *c == consumer && *f == from && *t == to && *a == amount);
            return Ok(if same {
                Ok(Outcome::Ok)
            } else {
                Err(Refusal::conflict(format!(
                    "transfer id {id} is already used by another transfer or credit"
                )))
            });
        }
        {
            let st = self.st.borrow();
            if from == to {
                return Ok(Err(Refusal::invalid(
                    "a transfer needs two different accounts",
                )));
            }
            if let Some(unknown) = [&from, &to].into_iter().find(|b| !st.has_bank(b)) {
                return Ok(Err(Refusal::unknown(format!(
                    "{unknown} is not a bank account of {consumer}"
                ))));
            }
        }
        let debit_op = match self.debit_bank_account(&from, amount).await? {
            Ok(op) => op,
            Err(reason) => {
                return Ok(Err(Refusal::funds(format!(
                    "the bank refused to debit {from}: {reason}"
                ))))
            }
        };
        let credit_op = match self.credit_bank_account(&to, amount).await {
            Ok(Ok(op)) => op,
            other => {
                // Nothing of the transfer may stay half done: the debit is given back.
                if let Err(e) = self.shared.bank.reverse(&debit_op) {
                    tracing::error!(op = %debit_op, error = %e, "could not reverse the debit of a failed transfer; the next opening reconciles it");
                }
                self.bank_ops.borrow_mut().retain(|op| *op != debit_op);
                return match other {
                    Ok(Err(reason)) => Ok(Err(Refusal::funds(format!(
                        "the bank refused to credit {to}: {reason}"
                    )))),
                    Err(e) => Err(e),
                    Ok(Ok(_)) => unreachable!("matched above"),
                };
            }
        };
        let ev = Event::with_postings(
            EventKind::BankTransferred {
                transfer: id,
                consumer,
                from: from.clone(),
                to: to.clone(),
                amount,
                debit_op,
                credit_op,
            },
            vec![
                crate::ledger::Posting::new(
                    crate::ledger::AccountRef::BankClearing(from),
                    amount.checked_neg(),
                ),
                crate::ledger::Posting::new(crate::ledger::AccountRef::BankClearing(to), amount),
            ],
        );
        self.commit(vec![ev]).await?;
        Ok(Ok(Outcome::Ok))
    }

    /// A new credit limit: journaled with its reason unless it is the limit already.
    async fn set_credit_limit(
        &self,
        limit: Amount,
        reason: String,
    ) -> Result<CommandResult, EngineError> {
        let (consumer, current) = {
            let st = self.st.borrow();
            (st.id.clone(), st.credit_limit)
        };
        if limit != current {
            let ev = Event::new(EventKind::CreditLimitChanged {
                consumer,
                limit,
                reason,
            });
            self.commit(vec![ev]).await?;
        }
        Ok(Ok(Outcome::Ok))
    }

    /// Time-driven work, in the order FORMAT.md fixes: awaiting settlements in placement
    /// order, then due time releases, then expiry. One entry for the whole tick.
    async fn tick(&self) -> Result<CommandResult, EngineError> {
        let rules = self.shared.rules.clone();
        let mut events = Vec::new();
        let awaiting = self.st.borrow().awaiting_funds();
        for order in awaiting {
            events.extend(self.settle(&order).await?.0);
        }
        let due = self.st.borrow().time_due(self.now);
        for order in due {
            events.extend(self.settle(&order).await?.0);
        }
        let expiring = self.st.borrow().expiring(self.now, &rules);
        for order in expiring {
            let ev = self.st.borrow().simple_event(&order, OrderState::Expired);
            self.apply(&ev)?;
            events.push(ev);
        }
        self.journal(events).await?;
        Ok(Ok(Outcome::Ok))
    }
}
