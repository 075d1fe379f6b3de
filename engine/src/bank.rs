//! The bank port and the in-process simulated bank.
//!
//! Banks are outside the node. The engine reaches them only through [`BankPort`], whose
//! operations carry an id and are idempotent: a repeated id gets the first answer and moves no
//! money twice. An external bank's operation happens *before* the node journals the entry that
//! records it, so a crash can leave a bank operation the node never recorded. Recovery settles
//! that with the bank's list of unconfirmed operations: an operation whose id the journal holds
//! is confirmed; one it does not hold belonged to a command nobody was told about, and is
//! reversed.
//!
//! A bank reached by messages answers many operations in one: [`BankPort::perform_batch`].
//! The engine still asks for one operation at a time (each command waits for its own answer);
//! [`crate::bank_batch::BatchingBankPort`] sits in between and gathers the operations asked
//! for meanwhile into one batch call.
//!
//! The simulated bank ([`SimBank`]) keeps no store of its own: its accounts live in memory,
//! and each change becomes durable in the engine's log, in the same record as the entry that
//! names it (one sync for the settlement and the bank's side of it). A crash therefore loses
//! both or neither, and there is nothing to reconcile.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::fast_map::FastMap;
use crate::journal::{JournalHandle, LogParticipant, ParticipantLink};
use crate::money::Amount;
use crate::view::{self, ViewWrite};

/// One request to a bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankOp {
    /// Unique per operation; the bank answers a repeat with its first answer.
    pub id: String,
    pub account: String,
    pub amount: Amount,
}

/// The bank's answer to an operation it understood.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankAnswer {
    Done,
    /// The bank declined (no funds, account blocked, …): a business outcome, not a fault.
    Refused(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankOpKind {
    Debit,
    Credit,
}

/// An operation the bank performed for the node and the node has not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnconfirmedOp {
    pub id: String,
    pub kind: BankOpKind,
    pub account: String,
    pub amount: Amount,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BankError {
    #[error("no such bank account {0:?}")]
    UnknownAccount(String),
    #[error("bank account {0:?} already exists")]
    AccountExists(String),
    #[error("bank unavailable: {0}")]
    Unavailable(String),
    #[error("the balance of {0:?} would overflow")]
    Overflow(String),
    #[error("bank storage: {0}")]
    Storage(String),
    /// The bank's answer did not fit the request (a batch answered with the wrong number of
    /// answers, a message that cannot be read): nothing is known of the operations it was for.
    #[error("bank protocol: {0}")]
    Protocol(String),
}

/// One operation of a batch ([`BankPort::perform_batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BankRequest {
    /// What [`BankPort::debit`] does.
    Debit(BankOp),
    /// What [`BankPort::credit`] does.
    Credit(BankOp),
}

impl BankRequest {
    pub fn op(&self) -> &BankOp {
        match self {
            BankRequest::Debit(op) | BankRequest::Credit(op) => op,
        }
    }

    pub fn kind(&self) -> BankOpKind {
        match self {
            BankRequest::Debit(_) => BankOpKind::Debit,
            BankRequest::Credit(_) => BankOpKind::Credit,
        }
    }
}

/// The outcome of one operation: the bank's answer, or why this operation failed (an unknown
/// account, …) while the others of its batch may have been done.
pub type BankResult = Result<BankAnswer, BankError>;

/// What the engine needs from a bank. Implementations: [`SimBank`] here; the ISO 20022 adapter
/// in `onecard-adapters` later.
pub trait BankPort: Send + Sync + 'static {
    /// Pulls money from a consumer's bank account into the node (top-up, funding).
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>>;
    /// Pushes money from the node to a bank account (refund overflow sweep).
    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>>;
    /// Performs many operations in one call (for a bank reached by messages: one message for
    /// the batch). Answers in the order of `requests`, one per request, each as `debit` or
    /// `credit` would have answered it alone: a refusal or an error concerns that operation
    /// only. `Err` means the call as a whole failed (the bank unreachable, …) and nothing is
    /// known of any of its operations. Every operation keeps its own id, so a repeat of the
    /// batch, or of one of its operations, moves no money twice.
    ///
    /// The default performs them one after the other through `debit` and `credit`, so a port
    /// that has nothing better to do need not implement it. [`crate::bank_batch`] gathers
    /// concurrent `debit`s and `credit`s into such calls.
    fn perform_batch(
        &self,
        requests: Vec<BankRequest>,
    ) -> BoxFuture<'static, Result<Vec<BankResult>, BankError>> {
        // Started in order, awaited in order: a port whose calls do their work when polled
        // does it one after the other; one that does it when called, in the batch's order.
        let calls: Vec<_> = requests
            .into_iter()
            .map(|r| match r {
                BankRequest::Debit(op) => self.debit(op),
                BankRequest::Credit(op) => self.credit(op),
            })
            .collect();
        async move {
            let mut answers = Vec::with_capacity(calls.len());
            for call in calls {
                answers.push(call.await);
            }
            Ok(answers)
        }
        .boxed()
    }
    /// Operations done for the node that it has not confirmed as journaled.
    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError>;
    /// Marks operations as recorded by the node. Best effort: a lost confirmation only means
    /// recovery checks the operation against the journal again.
    fn confirm(&self, ids: &[String]);
    /// Undoes an operation the node never recorded; idempotent.
    fn reverse(&self, id: &str) -> Result<(), BankError>;
    /// Called once by the engine at opening, before any operation. A bank whose durable state
    /// rides on the engine's log (the simulated bank) loads it from the view, registers with
    /// the journal and answers `true`: its operations are durable with the entries that name
    /// them, so there is nothing to reconcile and no operation index to keep. `names` maps an
    /// account to the name the node stores for it (its keyed reference under a data key, I10).
    /// An external bank keeps its own books and answers `false`. Runs while the engine scans
    /// its consumers, on another thread.
    fn attach(&self, _journal: &JournalHandle, _names: AccountNames) -> Result<bool, BankError> {
        Ok(false)
    }
    /// After `attach`, before any operation: `moved` is, by stored account name, what the
    /// node's ledger has moved to (positive) or from (negative) each account, its clearing
    /// balance. The simulated bank adds it to the accounts' balances.
    fn add_moved(&self, _moved: &HashMap<String, Amount>) -> Result<(), BankError> {
        Ok(())
    }
}

/// How the node names a bank account at rest: the account itself, or its keyed reference.
pub type AccountNames = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// An account at the simulated bank as decided: every operation answered so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SimAccount {
    balance: Amount,
    refuse: bool,
}

/// What the view keeps of an account (`s` + its stored name): only what the operators change,
/// in records of its own. The money the node moves to and from the account is already durable
/// in the ledger, as the postings on the account's clearing account, in the same record as the
/// settlement that moved it; at opening the balance is `base` plus that clearing balance. So a
/// settlement writes nothing for the bank but its own entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimRecord {
    /// The opening balance plus every deposit.
    pub base: Amount,
    pub refuse: bool,
}

struct Account {
    live: SimAccount,
    /// As durable: changed only by records written, in log order.
    durable: SimRecord,
}

/// A change of the simulated bank waiting for the record that makes it durable.
enum Change {
    Open(Amount),
    Deposit(Amount),
    Refuse(bool),
    /// A debit (negative) or credit: durable with the entry naming it (as its clearing
    /// postings); kept here until then to answer a repeated id, or to be undone.
    Moved(Amount),
}

struct Pending {
    /// The account's stored name.
    account: String,
    change: Change,
    /// What the operation was answered (for a repeated id while it is in flight).
    answer: BankAnswer,
}

#[derive(Default)]
struct SimState {
    /// By stored name.
    accounts: FastMap<String, Account>,
    /// Changes decided, by operation id, until the record naming them is written.
    pending: FastMap<String, Pending>,
    /// The engine's log, once an engine has opened with the bank.
    link: Option<Link>,
}

#[derive(Clone)]
struct Link {
    journal: ParticipantLink,
    names: AccountNames,
}

/// An in-process bank for the demo, the tests and the load simulator. Its accounts live in
/// memory; their durable state is in the engine's data directory, written in the engine's
/// log by the same records as the entries that move their money, so restarts and crashes see
/// the bank the node saw. It works once an engine has opened with it ([`BankPort::attach`]).
pub struct SimBank {
    state: Mutex<SimState>,
    next_change: AtomicU64,
}

fn not_attached() -> BankError {
    BankError::Unavailable(
        "the simulated bank is not open yet: it opens with the engine (Engine::open)".into(),
    )
}

impl SimBank {
    /// A simulated bank for the engine that will open in `data_dir`; its accounts are loaded
    /// when that engine opens.
    pub fn open(_data_dir: &Path) -> Result<Arc<SimBank>, BankError> {
        Ok(Arc::new(SimBank {
            state: Mutex::new(SimState::default()),
            next_change: AtomicU64::new(0),
        }))
    }

    fn link(&self) -> Result<Link, BankError> {
        self.state.lock().link.clone().ok_or_else(not_attached)
    }

    /// The name the node stores for `account`.
    fn stored(&self, account: &str) -> Result<String, BankError> {
        Ok((self.link()?.names)(account))
    }

    /// Makes an operator's change durable in a record of its own, waiting for it.
    fn write(&self, account: String, change: Change) -> Result<(), BankError> {
        let link = self.link()?;
        let id = format!(
            "simbank:{}",
            self.next_change.fetch_add(1, Ordering::Relaxed)
        );
        self.state.lock().pending.insert(
            id.clone(),
            Pending {
                account,
                change,
                answer: BankAnswer::Done,
            },
        );
        link.journal
            .append_ops_blocking(vec![id])
            .map(|_| ())
            .map_err(|e| BankError::Storage(e.to_string()))
    }

    /// Opens an account with an opening balance (money arriving from outside the system).
    pub fn open_account(&self, name: &str, balance: Amount) -> Result<(), BankError> {
        let key = self.stored(name)?;
        {
            let mut st = self.state.lock();
            if st.accounts.contains_key(&key) {
                return Err(BankError::AccountExists(name.into()));
            }
            st.accounts.insert(
                key.clone(),
                Account {
                    live: SimAccount {
                        balance,
                        refuse: false,
                    },
                    durable: SimRecord::default(),
                },
            );
        }
        self.write(key, Change::Open(balance))
    }

    /// While `refuse` is set, every debit of the account is refused.
    pub fn set_refuse(&self, name: &str, refuse: bool) -> Result<(), BankError> {
        let key = self.stored(name)?;
        self.live_account(name, &key, |a| {
            a.refuse = refuse;
            Ok(())
        })?;
        self.write(key, Change::Refuse(refuse))
    }

    /// Money arriving at the account from outside the system.
    pub fn deposit(&self, name: &str, amount: Amount) -> Result<(), BankError> {
        let key = self.stored(name)?;
        self.live_account(name, &key, |a| {
            a.balance = a
                .balance
                .checked_add(amount)
                .map_err(|_| BankError::Overflow(name.into()))?;
            Ok(())
        })?;
        self.write(key, Change::Deposit(amount))
    }

    fn live_account(
        &self,
        name: &str,
        key: &str,
        f: impl FnOnce(&mut SimAccount) -> Result<(), BankError>,
    ) -> Result<(), BankError> {
        let mut st = self.state.lock();
        let a = st
            .accounts
            .get_mut(key)
            .ok_or_else(|| BankError::UnknownAccount(name.into()))?;
        let mut updated = a.live.clone();
        f(&mut updated)?;
        a.live = updated;
        Ok(())
    }

    /// The balance as decided (operations answered so far).
    pub fn balance(&self, name: &str) -> Option<Amount> {
        let key = self.stored(name).ok()?;
        self.state.lock().accounts.get(&key).map(|a| a.live.balance)
    }

    pub fn exists(&self, name: &str) -> bool {
        match self.stored(name) {
            Ok(key) => self.state.lock().accounts.contains_key(&key),
            Err(_) => false,
        }
    }

    /// Every account by its stored name (the account itself without a data key), with its
    /// balance, sorted by name.
    pub fn balances(&self) -> Vec<(String, Amount)> {
        let mut v: Vec<_> = self
            .state
            .lock()
            .accounts
            .iter()
            .map(|(k, a)| (k.clone(), a.live.balance))
            .collect();
        v.sort();
        v
    }

    pub fn total(&self) -> Amount {
        self.state
            .lock()
            .accounts
            .values()
            .fold(Amount::ZERO, |s, a| {
                s.checked_add(a.live.balance).unwrap_or(s)
            })
    }

    /// Decides an operation in memory; it becomes durable with the entry that names it. A
    /// repeated id still in flight gets the first answer and changes nothing.
    fn perform(&self, op: BankOp, debit: bool) -> Result<BankAnswer, BankError> {
        let mut st = self.state.lock();
        let key = match &st.link {
            Some(link) => (link.names)(&op.account),
            None => return Err(not_attached()),
        };
        if let Some(prev) = st.pending.get(&op.id) {
            return Ok(prev.answer.clone());
        }
        let acct = st
            .accounts
            .get_mut(&key)
            .ok_or_else(|| BankError::UnknownAccount(op.account.clone()))?;
        let answer = if debit {
            if acct.live.refuse {
                return Ok(BankAnswer::Refused("the bank refused the debit".into()));
            }
            if acct.live.balance < op.amount {
                return Ok(BankAnswer::Refused(format!(
                    "insufficient funds: {} requested, {} available",
                    op.amount, acct.live.balance
                )));
            }
            acct.live.balance = acct
                .live
                .balance
                .checked_sub(op.amount)
                .map_err(|e| BankError::Storage(e.to_string()))?;
            BankAnswer::Done
        } else {
            acct.live.balance = acct
                .live
                .balance
                .checked_add(op.amount)
                .map_err(|_| BankError::Overflow(op.account.clone()))?;
            BankAnswer::Done
        };
        let delta = if debit {
            op.amount.checked_neg()
        } else {
            op.amount
        };
        st.pending.insert(
            op.id,
            Pending {
                account: key,
                change: Change::Moved(delta),
                answer: answer.clone(),
            },
        );
        Ok(answer)
    }

    /// Loads the accounts as the engine's view holds them (what the ledger moved comes after,
    /// [`BankPort::add_moved`]) and registers with the journal.
    fn attach(
        self: &Arc<Self>,
        journal: &JournalHandle,
        names: AccountNames,
    ) -> Result<(), BankError> {
        let mut accounts = FastMap::default();
        for kv in journal.view().sim_accounts() {
            let (name, bytes) = kv.map_err(|e| BankError::Storage(e.to_string()))?;
            let r: SimRecord =
                bincode::deserialize(&bytes).map_err(|e| BankError::Storage(e.to_string()))?;
            let balance = r.base;
            accounts.insert(
                name,
                Account {
                    live: SimAccount {
                        balance,
                        refuse: r.refuse,
                    },
                    durable: r,
                },
            );
        }
        {
            let mut st = self.state.lock();
            st.accounts = accounts;
            st.pending.clear();
            st.link = Some(Link {
                journal: journal.participant_link(),
                names,
            });
        }
        if !journal.set_participant(self.clone()) {
            return Err(BankError::Unavailable(
                "the journal already carries another bank".into(),
            ));
        }
        Ok(())
    }

    /// Nothing to close: the bank's durable state is the engine's. Kept so that callers need
    /// not know.
    pub fn close(&self) {}
}

impl LogParticipant for SimBank {
    fn record_writes(&self, bank_ops: &[String], out: &mut Vec<ViewWrite>) {
        let mut st = self.state.lock();
        for id in bank_ops {
            let Some(p) = st.pending.remove(id) else {
                continue;
            };
            let Some(acct) = st.accounts.get_mut(&p.account) else {
                continue;
            };
            let d = &mut acct.durable;
            // Bounded amounts: the same arithmetic already succeeded on the live balance.
            match p.change {
                Change::Moved(_) => continue,
                Change::Open(base) => {
                    *d = SimRecord {
                        base,
                        refuse: false,
                    }
                }
                Change::Deposit(x) => d.base = d.base.checked_add(x).unwrap_or(d.base),
                Change::Refuse(on) => d.refuse = on,
            }
            out.push(view::sim_account_write(
                &p.account,
                bincode::serialize(d).unwrap_or_default(),
            ));
        }
    }
}

/// A shared simulated bank used as the engine's port.
#[derive(Clone)]
pub struct SimBankPort(pub Arc<SimBank>);

impl BankPort for SimBankPort {
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        futures::future::ready(self.0.perform(op, true)).boxed()
    }

    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        futures::future::ready(self.0.perform(op, false)).boxed()
    }

    /// Nothing is ever unconfirmed: an operation is durable with its entry or not at all.
    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError> {
        Ok(Vec::new())
    }

    fn confirm(&self, _ids: &[String]) {}

    /// Undoes an operation no durable entry names (its command failed before journaling).
    /// Idempotent: an unknown or already undone id changes nothing.
    fn reverse(&self, id: &str) -> Result<(), BankError> {
        let mut st = self.0.state.lock();
        let Some(p) = st.pending.remove(id) else {
            return Ok(());
        };
        if let (Change::Moved(delta), Some(acct)) = (p.change, st.accounts.get_mut(&p.account)) {
            acct.live.balance = acct
                .live
                .balance
                .checked_sub(delta)
                .map_err(|e| BankError::Storage(e.to_string()))?;
        }
        Ok(())
    }

    fn attach(&self, journal: &JournalHandle, names: AccountNames) -> Result<bool, BankError> {
        self.0.attach(journal, names)?;
        Ok(true)
    }

    fn add_moved(&self, moved: &HashMap<String, Amount>) -> Result<(), BankError> {
        let mut st = self.0.state.lock();
        for (name, amount) in moved {
            if let Some(a) = st.accounts.get_mut(name) {
                a.live.balance = a
                    .live
                    .balance
                    .checked_add(*amount)
                    .map_err(|e| BankError::Storage(e.to_string()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Journal, JournalConfig};

    fn op(id: &str, cents: i64) -> BankOp {
        BankOp {
            id: id.into(),
            account: "acct".into(),
            amount: Amount::from_cents(cents),
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    /// The bank opened with a journal; `moved` plays the ledger's clearing balances.
    fn attached(dir: &Path, moved: i64) -> (Journal, Arc<SimBank>, SimBankPort) {
        let (journal, _) = Journal::open(dir, JournalConfig::default()).unwrap();
        let bank = SimBank::open(dir).unwrap();
        let port = SimBankPort(bank.clone());
        let names: AccountNames = Arc::new(|a: &str| a.to_string());
        let moved = HashMap::from([("acct".to_string(), Amount::from_cents(moved))]);
        assert!(port.attach(&journal.handle(), names).unwrap());
        port.add_moved(&moved).unwrap();
        (journal, bank, port)
    }

    #[test]
    fn operator_changes_are_durable_and_money_moved_comes_from_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (journal, bank, port) = attached(dir.path(), 0);
            bank.open_account("acct", Amount::from_cents(10_000))
                .unwrap();
            assert_eq!(
                bank.open_account("acct", Amount::ZERO),
                Err(BankError::AccountExists("acct".into()))
            );
            assert_eq!(block_on(port.debit(op("d1", 6_000))), Ok(BankAnswer::Done));
            // A repeat while in flight gets the first answer and moves nothing.
            assert_eq!(block_on(port.debit(op("d1", 6_000))), Ok(BankAnswer::Done));
            assert_eq!(bank.balance("acct"), Some(Amount::from_cents(4_000)));
            let refused = block_on(port.debit(op("d2", 6_000))).unwrap();
            assert!(matches!(refused, BankAnswer::Refused(_)), "{refused:?}");
            bank.deposit("acct", Amount::from_cents(1)).unwrap();
            journal.close().unwrap();
        }
        // Reopened with the ledger saying 60.00 left for the node (d1's entry): opening
        // balance and deposit from the bank's own records, the rest from the ledger.
        let (journal, bank, port) = attached(dir.path(), -6_000);
        assert_eq!(bank.balance("acct"), Some(Amount::from_cents(4_001)));
        assert!(port.unconfirmed().unwrap().is_empty());
        bank.set_refuse("acct", true).unwrap();
        journal.close().unwrap();
        let (_journal, bank, port) = attached(dir.path(), -6_000);
        assert_eq!(bank.balance("acct"), Some(Amount::from_cents(4_001)));
        let refused = block_on(port.debit(op("d4", 1))).unwrap();
        assert!(matches!(refused, BankAnswer::Refused(_)), "{refused:?}");
    }

    #[test]
    fn a_batch_answers_every_operation_in_order_and_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (_journal, bank, port) = attached(dir.path(), 0);
        bank.open_account("acct", Amount::from_cents(10_000))
            .unwrap();
        let nobody = BankOp {
            account: "nobody".into(),
            ..op("x", 1)
        };
        let answers = block_on(port.perform_batch(vec![
            BankRequest::Debit(op("b1", 6_000)),
            BankRequest::Debit(nobody),
            // Refused: 40.00 left after b1, in the batch's order.
            BankRequest::Debit(op("b2", 6_000)),
            BankRequest::Credit(op("b3", 2_000)),
            // A repeated id gets the first answer.
            BankRequest::Debit(op("b1", 6_000)),
            BankRequest::Debit(op("b4", 6_000)),
        ]))
        .unwrap();
        assert_eq!(answers.len(), 6);
        assert_eq!(answers[0], Ok(BankAnswer::Done));
        assert_eq!(answers[1], Err(BankError::UnknownAccount("nobody".into())));
        assert!(
            matches!(answers[2], Ok(BankAnswer::Refused(_))),
            "{answers:?}"
        );
        assert_eq!(answers[3], Ok(BankAnswer::Done));
        assert_eq!(answers[4], Ok(BankAnswer::Done));
        assert_eq!(answers[5], Ok(BankAnswer::Done));
        assert_eq!(bank.balance("acct"), Some(Amount::ZERO));
        assert_eq!(block_on(port.perform_batch(vec![])), Ok(vec![]));
    }

    #[test]
    fn a_bank_not_yet_opened_with_an_engine_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let bank = SimBank::open(dir.path()).unwrap();
        let err = bank.open_account("acct", Amount::ZERO).unwrap_err();
        assert!(err.to_string().contains("opens with the engine"), "{err}");
    }
}
