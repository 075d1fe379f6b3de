//! Helpers shared by the engine's integration tests.

use std::sync::Arc;

use futures::future::BoxFuture;
use onecard_engine::bank::{BankAnswer, BankError, BankOp, UnconfirmedOp};
use onecard_engine::{Amount, BankPort, SimBankPort};
use tokio::sync::watch;

/// The simulated bank with a gate: debits (of `stuck_account`, or of every account when it is
/// `None`) wait until the gate opens, a stuck outside call. `external` makes it answer `attach`
/// as an external bank does (its operations are not durable with the log), so that the engine
/// asks for top-ups after their settlement. Debits are recorded as they go through.
pub struct GatedBank {
    pub inner: SimBankPort,
    pub stuck_account: Option<String>,
    pub gate: watch::Receiver<bool>,
    pub external: bool,
    pub debits: Arc<parking_lot::Mutex<Vec<Amount>>>,
}

impl BankPort for GatedBank {
    fn debit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        let inner = self.inner.clone();
        let mut gate = self.gate.clone();
        let debits = self.debits.clone();
        let stuck = match &self.stuck_account {
            Some(account) => *account == op.account,
            None => true,
        };
        Box::pin(async move {
            if stuck {
                let _ = gate.wait_for(|open| *open).await;
            }
            debits.lock().push(op.amount);
            inner.debit(op).await
        })
    }
    fn credit(&self, op: BankOp) -> BoxFuture<'static, Result<BankAnswer, BankError>> {
        self.inner.credit(op)
    }
    fn unconfirmed(&self) -> Result<Vec<UnconfirmedOp>, BankError> {
        self.inner.unconfirmed()
    }
    fn confirm(&self, ids: &[String]) {
        self.inner.confirm(ids)
    }
    fn reverse(&self, id: &str) -> Result<(), BankError> {
        self.inner.reverse(id)
    }
    fn attach(
        &self,
        journal: &onecard_engine::journal::JournalHandle,
        names: onecard_engine::bank::AccountNames,
    ) -> Result<bool, BankError> {
        let durable_with_log = self.inner.attach(journal, names)?;
        Ok(durable_with_log && !self.external)
    }
    fn add_moved(
        &self,
        moved: &std::collections::HashMap<String, Amount>,
    ) -> Result<(), BankError> {
        self.inner.add_moved(moved)
    }
}
