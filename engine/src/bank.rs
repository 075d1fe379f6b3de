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
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{unbounded, Receiver, Sender};
use futures::future::BoxFuture;
use futures::FutureExt;
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
    /// Operations decided but not yet on disk, with the generation of their latest change.
    /// Durable ones are read from the store: keeping every operation in memory would grow
    /// without bound (millions in a long load run) and make opening read them all.
    pending_ops: HashMap<String, (u64, OpRecord)>,
    generation: u64,
}

impl SimState {
    /// Records an operation's new state, to be written; returns the generation to prune by.
    fn stage_op(&mut self, id: &str, rec: OpRecord) -> u64 {
        self.generation += 1;
        self.pending_ops
            .insert(id.to_string(), (self.generation, rec));
        self.generation
    }
}

/// Someone waiting for a write of the simulated bank to be on disk.
enum Ack {
    Async(oneshot::Sender<Result<(), String>>),
    Blocking(std::sync::mpsc::Sender<Result<(), String>>),
    None,
}

/// Changes to the bank's store, in the order they were decided, and who waits for them.
struct Write {
    changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Operations this write makes durable (id, generation): dropped from memory after it.
    ops: Vec<(String, u64)>,
    ack: Ack,
}

/// An in-process bank whose balances, refuse flags and operations live in the data directory
/// (its own sled store, `DIR/simbank`), so restarts and crashes see the bank the node saw.
///
/// Every change is decided in memory under one lock and queued, in that order, to a writer
/// thread that applies everything queued as one sled batch, flushes once and then answers
/// (group commit): nothing is answered before it is on disk, and sled writes stay off the
/// callers' threads.
pub struct SimBank {
    tree: sled::Tree,
    db: sled::Db,
    state: Arc<Mutex<SimState>>,
    writes: Mutex<Option<Sender<Write>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

const ACCT: u8 = b'a';
const OP: u8 = b'p';
const UNCONFIRMED: u8 = b'u';

fn key(prefix: u8, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len() + 1);
    k.push(prefix);
    k.extend_from_slice(id.as_bytes());
    k
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    bincode::serialize(v).expect("plain struct")
}

fn storage(e: impl ToString) -> BankError {
    BankError::Storage(e.to_string())
}

impl SimBank {
    /// Opens (or creates) the simulated bank in `DIR/simbank`.
    pub fn open(data_dir: &Path) -> Result<Arc<SimBank>, BankError> {
        let db = crate::journal::open_sled(&data_dir.join("simbank"), Some(64 * 1024 * 1024))
            .map_err(storage)?;
        let tree = db.open_tree("bank").map_err(storage)?;
        let mut accounts = HashMap::new();
        for kv in tree.scan_prefix([ACCT]) {
            let (k, v) = kv.map_err(storage)?;
            let id = String::from_utf8_lossy(&k[1..]).to_string();
            accounts.insert(id, bincode::deserialize(&v).map_err(storage)?);
        }
        let state = Arc::new(Mutex::new(SimState {
            accounts,
            pending_ops: HashMap::new(),
            generation: 0,
        }));
        let (tx, rx) = unbounded();
        let writer = {
            let (db, tree, state) = (db.clone(), tree.clone(), state.clone());
            std::thread::Builder::new()
                .name("simbank-writer".into())
                .spawn(move || write_loop(db, tree, state, rx))
                .map_err(storage)?
        };
        Ok(Arc::new(SimBank {
            tree,
            db,
            state,
            writes: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
        }))
    }

    /// Queues changes. Must be called while holding the state lock, so that the writer sees
    /// changes in the order they were decided.
    fn queue(
        &self,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ops: Vec<(String, u64)>,
        ack: Ack,
    ) -> Result<(), BankError> {
        let writes = self.writes.lock();
        let tx = writes
            .as_ref()
            .ok_or_else(|| BankError::Unavailable("the simulated bank is closed".into()))?;
        tx.send(Write { changes, ops, ack })
            .map_err(|_| BankError::Unavailable("the simulated bank stopped".into()))
    }

    /// An operation by id: still being written, or from the store.
    fn op(&self, st: &SimState, id: &str) -> Result<Option<OpRecord>, BankError> {
        if let Some((_, rec)) = st.pending_ops.get(id) {
            return Ok(Some(rec.clone()));
        }
        match self.tree.get(key(OP, id)).map_err(storage)? {
            None => Ok(None),
            Some(v) => Ok(Some(bincode::deserialize(&v).map_err(storage)?)),
        }
    }

    /// Queues changes (under the state lock) and waits, on this thread, until they are durable.
    fn write_blocking(
        &self,
        st: parking_lot::MutexGuard<'_, SimState>,
        changes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
        ops: Vec<(String, u64)>,
    ) -> Result<(), BankError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.queue(changes, ops, Ack::Blocking(tx))?;
        drop(st);
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BankError::Storage(e)),
            Err(_) => Err(BankError::Unavailable("the simulated bank stopped".into())),
        }
    }

    fn account_change(name: &str, a: &SimAccount) -> (Vec<u8>, Option<Vec<u8>>) {
        (key(ACCT, name), Some(encode(a)))
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
        let change = Self::account_change(name, &a);
        st.accounts.insert(name.into(), a);
        self.write_blocking(st, vec![change], vec![])
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
        let change = Self::account_change(name, &updated);
        *a = updated;
        self.write_blocking(st, vec![change], vec![])
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

    /// Decides an operation in memory and queues its changes; the future resolves once they
    /// are on disk. A repeated id gets the first answer and changes nothing.
    fn perform(
        &self,
        op: BankOp,
        kind: BankOpKind,
    ) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        let decided = (|| {
            let mut st = self.state.lock();
            if let Some(prev) = self.op(&st, &op.id)? {
                // Answered only once durable: the first answer's write may still be queued.
                let (tx, rx) = oneshot::channel();
                self.queue(vec![], vec![], Ack::Async(tx))?;
                return Ok((prev.answer, rx));
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
                    updated.balance = acct.balance.checked_sub(op.amount).map_err(storage)?;
                    BankAnswer::Done
                }
                BankOpKind::Credit => {
                    updated.balance = acct
                        .balance
                        .checked_add(op.amount)
                        .map_err(|_| BankError::Overflow(op.account.clone()))?;
                    BankAnswer::Done
                }
            };
            let record = OpRecord {
                kind,
                account: op.account.clone(),
                amount: op.amount,
                answer: answer.clone(),
                reversed: false,
            };
            let mut changes = vec![(key(OP, &op.id), Some(encode(&record)))];
            if answer == BankAnswer::Done {
                changes.push(Self::account_change(&op.account, &updated));
                changes.push((key(UNCONFIRMED, &op.id), Some(vec![])));
                st.accounts.insert(op.account.clone(), updated);
            }
            let generation = st.stage_op(&op.id, record);
            let (tx, rx) = oneshot::channel();
            self.queue(changes, vec![(op.id, generation)], Ack::Async(tx))?;
            Ok((answer, rx))
        })();
        async move {
            let (answer, durable) = decided?;
            match durable.await {
                Ok(Ok(())) => Ok(answer),
                Ok(Err(e)) => Err(BankError::Storage(e)),
                Err(_) => Err(BankError::Unavailable("the simulated bank stopped".into())),
            }
        }
        .boxed()
    }

    /// Stops the writer after everything queued is written and flushed.
    pub fn close(&self) {
        self.writes.lock().take();
        if let Some(h) = self.writer.lock().take() {
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

fn write_loop(db: sled::Db, tree: sled::Tree, state: Arc<Mutex<SimState>>, rx: Receiver<Write>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        let mut batch = sled::Batch::default();
        for w in &group {
            for (k, v) in &w.changes {
                match v {
                    Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                    None => batch.remove(k.as_slice()),
                }
            }
        }
        let result = tree
            .apply_batch(batch)
            .and_then(|_| db.flush().map(|_| ()))
            .map_err(|e| e.to_string());
        if result.is_ok() {
            // Durable now: readable from the store. A later change of the same operation
            // (a reversal still queued) keeps its newer generation in memory.
            let mut st = state.lock();
            for (id, generation) in group.iter().flat_map(|w| &w.ops) {
                if st.pending_ops.get(id).is_some_and(|(g, _)| g == generation) {
                    st.pending_ops.remove(id);
                }
            }
        }
        for w in group {
            match w.ack {
                Ack::Async(tx) => {
                    let _ = tx.send(result.clone());
                }
                Ack::Blocking(tx) => {
                    let _ = tx.send(result.clone());
                }
                Ack::None => {}
            }
        }
    }
}

/// A shared simulated bank used as the engine's port.
#[derive(Clone)]
pub struct SimBankPort(pub Arc<SimBank>);

impl BankPort for SimBankPort {
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.0.perform(op, BankOpKind::Debit)
    }

    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.0.perform(op, BankOpKind::Credit)
    }

    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError> {
        let st = self.0.state.lock();
        let mut v = Vec::new();
        for kv in self.0.tree.scan_prefix([UNCONFIRMED]) {
            let (k, _) = kv.map_err(storage)?;
            let id = String::from_utf8_lossy(&k[1..]).to_string();
            if let Some(r) = self.0.op(&st, &id)? {
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
        // Not waited for: a lost confirmation is checked again at the next recovery.
        let changes = ids.iter().map(|id| (key(UNCONFIRMED, id), None)).collect();
        let _st = self.0.state.lock();
        let _ = self.0.queue(changes, vec![], Ack::None);
    }

    fn reverse(&self, id: &str) -> Result<(), BankError> {
        let bank = &self.0;
        let mut st = bank.state.lock();
        let Some(rec) = bank.op(&st, id)? else {
            return Err(BankError::Unavailable(format!("no operation {id}")));
        };
        let mut changes = vec![(key(UNCONFIRMED, id), None)];
        if rec.answer == BankAnswer::Done && !rec.reversed {
            let acct = st.accounts.get(&rec.account).cloned().unwrap_or_default();
            let mut updated = acct.clone();
            updated.balance = match rec.kind {
                BankOpKind::Debit => acct.balance.checked_add(rec.amount),
                BankOpKind::Credit => acct.balance.checked_sub(rec.amount),
            }
            .map_err(storage)?;
            let reversed = OpRecord {
                reversed: true,
                ..rec.clone()
            };
            changes.push((key(OP, id), Some(encode(&reversed))));
            changes.push(SimBank::account_change(&rec.account, &updated));
            st.accounts.insert(rec.account.clone(), updated);
            let generation = st.stage_op(id, reversed);
            return bank.write_blocking(st, changes, vec![(id.to_string(), generation)]);
        }
        bank.write_blocking(st, changes, vec![])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_repeated_operation_gets_its_first_answer_while_queued_once_durable_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let bank = SimBank::open(dir.path()).unwrap();
        bank.open_account("acct", Amount::from_cents(10_000))
            .unwrap();
        let port = SimBankPort(bank.clone());
        // Queued together: the repeat is decided while the first write may still be pending.
        let (first, repeat) = block_on(async {
            futures::join!(port.debit(op("d1", 6_000)), port.debit(op("d1", 6_000)))
        });
        assert_eq!(first.unwrap(), BankAnswer::Done);
        assert_eq!(repeat.unwrap(), BankAnswer::Done);
        assert_eq!(bank.balance("acct"), Some(Amount::from_cents(4_000)));
        // Durable by now, and no longer held in memory: read back from the store.
        assert!(bank.state.lock().pending_ops.is_empty());
        let refused = block_on(port.debit(op("d2", 6_000))).unwrap();
        assert!(matches!(refused, BankAnswer::Refused(_)), "{refused:?}");
        assert_eq!(
            block_on(port.debit(op("d1", 6_000))).unwrap(),
            BankAnswer::Done
        );
        bank.close();
        drop((port, bank));

        let bank = SimBank::open(dir.path()).unwrap();
        let port = SimBankPort(bank.clone());
        assert_eq!(
            block_on(port.debit(op("d1", 6_000))).unwrap(),
            BankAnswer::Done
        );
        assert!(matches!(
            block_on(port.debit(op("d2", 1))).unwrap(),
            BankAnswer::Refused(_)
        ));
        assert_eq!(bank.balance("acct"), Some(Amount::from_cents(4_000)));
        // Never confirmed by the node: listed, and reversed exactly once.
        let ids: Vec<String> = port
            .unconfirmed()
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(ids, vec!["d1".to_string()], "a refused debit moved nothing");
        port.reverse("d1").unwrap();
        port.reverse("d1").unwrap();
        assert_eq!(bank.balance("acct"), Some(Amount::from_cents(10_000)));
        assert!(port.unconfirmed().unwrap().is_empty());
        bank.close();
    }
}
