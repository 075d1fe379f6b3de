//! The bank port and the in-process simulated bank.
//!
//! Banks are outside the node. The engine reaches them only through [`BankPort`], whose
//! operations carry an id and are idempotent: a repeated id gets the first answer and moves no
//! money twice. A bank operation happens *before* the node journals the entry that records it,
//! so a crash can leave a bank operation the node never recorded. Recovery settles that with
//! the bank's list of unconfirmed operations: an operation whose id the journal holds is
//! confirmed; one it does not hold belonged to a command nobody was told about, and is reversed.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::money::Amount;

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
}

/// What the engine needs from a bank. Implementations: [`SimBank`] here; the ISO 20022 adapter
/// in `onecard-adapters` later.
pub trait BankPort: Send + Sync + 'static {
    /// Pulls money from a consumer's bank account into the node (top-up, funding).
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>>;
    /// Pushes money from the node to a bank account (refund overflow sweep).
    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>>;
    /// Operations done for the node that it has not confirmed as journaled.
    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError>;
    /// Marks operations as recorded by the node. Best effort: a lost confirmation only means
    /// recovery checks the operation against the journal again.
    fn confirm(&self, ids: &[String]);
    /// Undoes an operation the node never recorded; idempotent.
    fn reverse(&self, id: &str) -> Result<(), BankError>;
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SimAccount {
    balance: Amount,
    refuse: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct OpRecord {
    kind: BankOpKind,
    account: String,
    amount: Amount,
    answer: BankAnswer,
    reversed: bool,
}

struct SimState {
    accounts: HashMap<String, SimAccount>,
    ops: HashMap<String, OpRecord>,
}

/// An in-process bank whose balances, refuse flags and operations live in the data directory
/// (its own sled store, `DIR/simbank`), so restarts and crashes see the bank the node saw.
/// Every change is flushed before it is answered, through a small group-commit flusher.
pub struct SimBank {
    tree: sled::Tree,
    db: sled::Db,
    state: Mutex<SimState>,
    flush_tx: Mutex<Option<Sender<FlushWaiter>>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// Someone waiting for the next flush of the simulated bank's store.
type FlushWaiter = oneshot::Sender<Result<(), String>>;

const ACCT: u8 = b'a';
const OP: u8 = b'p';
const UNCONFIRMED: u8 = b'u';

fn key(prefix: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(prefix);
    k.extend_from_slice(id.as_bytes());
    k
}

impl SimBank {
    /// Opens (or creates) the simulated bank in `DIR/simbank`.
    pub fn open(data_dir: &Path) -> Result<Arc<SimBank>, BankError> {
        let db = crate::journal::open_sled(&data_dir.join("simbank"))
            .map_err(|e| BankError::Storage(e.to_string()))?;
        let tree = db
            .open_tree("bank")
            .map_err(|e| BankError::Storage(e.to_string()))?;
        let mut accounts = HashMap::new();
        let mut ops = HashMap::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(|e| BankError::Storage(e.to_string()))?;
            let id = String::from_utf8_lossy(&k[1..]).to_string();
            match k.first() {
                Some(&ACCT) => {
                    let a: SimAccount =
                        bincode::deserialize(&v).map_err(|e| BankError::Storage(e.to_string()))?;
                    accounts.insert(id, a);
                }
                Some(&OP) => {
                    let o: OpRecord =
                        bincode::deserialize(&v).map_err(|e| BankError::Storage(e.to_string()))?;
                    ops.insert(id, o);
                }
                _ => {}
            }
        }
        let (tx, rx) = unbounded();
        let flusher = {
            let db = db.clone();
            std::thread::Builder::new()
                .name("simbank-flush".into())
                .spawn(move || flush_loop(db, rx))
                .map_err(|e| BankError::Storage(e.to_string()))?
        };
        Ok(Arc::new(SimBank {
            tree,
            db,
            state: Mutex::new(SimState { accounts, ops }),
            flush_tx: Mutex::new(Some(tx)),
            flusher: Mutex::new(Some(flusher)),
        }))
    }

    fn durable(&self) -> Pin<Box<dyn std::future::Future<Output = Result<(), BankError>> + Send>> {
        let (tx, rx) = oneshot::channel();
        let sent = self
            .flush_tx
            .lock()
            .as_ref()
            .map(|s| s.send(tx).is_ok())
            .unwrap_or(false);
        Box::pin(async move {
            if !sent {
                return Err(BankError::Unavailable(
                    "the simulated bank is closed".into(),
                ));
            }
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(BankError::Storage(e)),
                Err(_) => Err(BankError::Unavailable("the simulated bank stopped".into())),
            }
        })
    }

    fn durable_blocking(&self) -> Result<(), BankError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| BankError::Storage(e.to_string()))
    }

    fn put_account(&self, batch: &mut sled::Batch, name: &str, a: &SimAccount) {
        batch.insert(
            key(ACCT, name),
            bincode::serialize(a).expect("plain struct"),
        );
    }

    fn apply(&self, batch: sled::Batch) -> Result<(), BankError> {
        self.tree
            .apply_batch(batch)
            .map_err(|e| BankError::Storage(e.to_string()))
    }

    /// Opens an account with an opening balance (money arriving from outside the system).
    pub fn open_account(&self, name: &str, balance: Amount) -> Result<(), BankError> {
        let mut st = self.state.lock();
        if st.accounts.contains_key(name) {
            return Err(BankError::AccountExists(name.into()));
        }
        let a = SimAccount {
            balance,
            refuse: false,
        };
        let mut b = sled::Batch::default();
        self.put_account(&mut b, name, &a);
        self.apply(b)?;
        st.accounts.insert(name.into(), a);
        drop(st);
        self.durable_blocking()
    }

    /// While `refuse` is set, every debit of the account is refused.
    pub fn set_refuse(&self, name: &str, refuse: bool) -> Result<(), BankError> {
        self.update_account(name, |a| {
            a.refuse = refuse;
            Ok(())
        })
    }

    /// Money arriving at the account from outside the system.
    pub fn deposit(&self, name: &str, amount: Amount) -> Result<(), BankError> {
        self.update_account(name, |a| {
            a.balance = a
                .balance
                .checked_add(amount)
                .map_err(|_| BankError::Overflow(name.into()))?;
            Ok(())
        })
    }

    fn update_account(
        &self,
        name: &str,
        f: impl FnOnce(&mut SimAccount) -> Result<(), BankError>,
    ) -> Result<(), BankError> {
        let mut st = self.state.lock();
        let a = st
            .accounts
            .get_mut(name)
            .ok_or_else(|| BankError::UnknownAccount(name.into()))?;
        let mut updated = a.clone();
        f(&mut updated)?;
        let mut b = sled::Batch::default();
        self.put_account(&mut b, name, &updated);
        self.apply(b)?;
        *a = updated;
        drop(st);
        self.durable_blocking()
    }

    pub fn balance(&self, name: &str) -> Option<Amount> {
        self.state.lock().accounts.get(name).map(|a| a.balance)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.state.lock().accounts.contains_key(name)
    }

    /// Every account and its balance, sorted by name.
    pub fn balances(&self) -> Vec<(String, Amount)> {
        let mut v: Vec<_> = self
            .state
            .lock()
            .accounts
            .iter()
            .map(|(k, a)| (k.clone(), a.balance))
            .collect();
        v.sort();
        v
    }

    pub fn total(&self) -> Amount {
        self.state
            .lock()
            .accounts
            .values()
            .fold(Amount::ZERO, |s, a| s.checked_add(a.balance).unwrap_or(s))
    }

    fn perform(&self, op: BankOp, kind: BankOpKind) -> Result<BankAnswer, BankError> {
        let mut st = self.state.lock();
        if let Some(prev) = st.ops.get(&op.id) {
            return Ok(prev.answer.clone());
        }
        let acct = st
            .accounts
            .get(&op.account)
            .ok_or_else(|| BankError::UnknownAccount(op.account.clone()))?;
        let mut updated = acct.clone();
        let answer = match kind {
            BankOpKind::Debit if acct.refuse => {
                BankAnswer::Refused("the bank refused the debit".into())
            }
            BankOpKind::Debit if acct.balance < op.amount => BankAnswer::Refused(format!(
                "insufficient funds: {} requested, {} available",
                op.amount, acct.balance
            )),
            BankOpKind::Debit => {
                updated.balance = acct
                    .balance
                    .checked_sub(op.amount)
                    .map_err(|e| BankError::Storage(e.to_string()))?;
                BankAnswer::Done
            }
            BankOpKind::Credit => {
                updated.balance = acct
                    .balance
                    .checked_add(op.amount)
                    .map_err(|e| BankError::Storage(e.to_string()))?;
                BankAnswer::Done
            }
        };
        let record = OpRecord {
            kind: kind.clone(),
            account: op.account.clone(),
            amount: op.amount,
            answer: answer.clone(),
            reversed: false,
        };
        let mut b = sled::Batch::default();
        b.insert(
            key(OP, &op.id),
            bincode::serialize(&record).expect("plain struct"),
        );
        if answer == BankAnswer::Done {
            self.put_account(&mut b, &op.account, &updated);
            b.insert(key(UNCONFIRMED, &op.id), &[]);
        }
        self.apply(b)?;
        if answer == BankAnswer::Done {
            st.accounts.insert(op.account.clone(), updated);
        }
        st.ops.insert(op.id, record);
        Ok(answer)
    }

    fn perform_durably(
        self: &Arc<Self>,
        op: BankOp,
        kind: BankOpKind,
    ) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        let result = self.perform(op, kind);
        let durable = self.durable();
        Box::pin(async move {
            let answer = result?;
            durable.await?;
            Ok(answer)
        })
    }

    /// Stops the flusher after a last flush. Further operations fail as unavailable.
    pub fn close(&self) {
        self.flush_tx.lock().take();
        if let Some(h) = self.flusher.lock().take() {
            let _ = h.join();
        }
        let _ = self.db.flush();
    }
}

impl Drop for SimBank {
    fn drop(&mut self) {
        self.close();
    }
}

fn flush_loop(db: sled::Db, rx: Receiver<FlushWaiter>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let r = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for w in waiting {
            let _ = w.send(r.clone());
        }
    }
}

/// A shared simulated bank used as the engine's port.
#[derive(Clone)]
pub struct SimBankPort(pub Arc<SimBank>);

impl BankPort for SimBankPort {
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.0.perform_durably(op, BankOpKind::Debit)
    }

    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.0.perform_durably(op, BankOpKind::Credit)
    }

    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError> {
        let st = self.0.state.lock();
        let mut v = Vec::new();
        for kv in self.0.tree.scan_prefix([UNCONFIRMED]) {
            let (k, _) = kv.map_err(|e| BankError::Storage(e.to_string()))?;
            let id = String::from_utf8_lossy(&k[1..]).to_string();
            if let Some(r) = st.ops.get(&id) {
                v.push(UnconfirmedOp {
                    id,
                    kind: r.kind.clone(),
                    account: r.account.clone(),
                    amount: r.amount,
                });
            }
        }
        Ok(v)
    }

    fn confirm(&self, ids: &[String]) {
        let mut b = sled::Batch::default();
        for id in ids {
            b.remove(key(UNCONFIRMED, id));
        }
        // Not flushed on purpose: a lost confirmation is re-checked at the next recovery.
        let _ = self.0.tree.apply_batch(b);
    }

    fn reverse(&self, id: &str) -> Result<(), BankError> {
        let bank = &self.0;
        let mut st = bank.state.lock();
        let Some(rec) = st.ops.get(id).cloned() else {
            return Err(BankError::Unavailable(format!("no operation {id}")));
        };
        let mut b = sled::Batch::default();
        b.remove(key(UNCONFIRMED, id));
        if rec.answer == BankAnswer::Done && !rec.reversed {
            let acct = st.accounts.get(&rec.account).cloned().unwrap_or_default();
            let mut updated = acct.clone();
            updated.balance = match rec.kind {
                BankOpKind::Debit => acct.balance.checked_add(rec.amount),
                BankOpKind::Credit => acct.balance.checked_sub(rec.amount),
            }
            .map_err(|e| BankError::Storage(e.to_string()))?;
            let mut rec2 = rec.clone();
            rec2.reversed = true;
            b.insert(
                key(OP, id),
                bincode::serialize(&rec2).expect("plain struct"),
            );
            bank.put_account(&mut b, &rec.account, &updated);
            bank.apply(b)?;
            st.accounts.insert(rec.account.clone(), updated);
            st.ops.insert(id.to_string(), rec2);
        } else {
            bank.apply(b)?;
        }
        drop(st);
        bank.durable_blocking()
    }
}
