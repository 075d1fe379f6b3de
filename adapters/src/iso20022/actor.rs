//! The bank adapter's actor: the one place that talks to the bank.
//!
//! It runs on a thread of its own with its own actix system, whatever runtime its callers use
//! (the engine's arbiters, the batching port's collector, a test's executor). Each batch is a
//! message; the actor handles one at a time, so one exchange with the bank is in flight and the
//! blocking HTTP client blocks nobody else. The background resolution of unknown outcomes (and
//! the reading of notifications) is the actor's own timer, between batches.

use std::time::Duration;

use actix::prelude::*;
use onecard_engine::bank::{BankError, BankRequest, BankResult};

use super::bank::Iso20022Bank;

/// A batch of operations for the bank, answered per operation.
pub struct PerformBatch(pub Vec<BankRequest>);

impl Message for PerformBatch {
    type Result = Vec<BankResult>;
}

/// Stops the actor and its thread.
struct Stop;

impl Message for Stop {
    type Result = ();
}

struct BankActor {
    bank: Iso20022Bank,
    resolve_every: Duration,
}

impl Actor for BankActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.resolve_every, |act, _| act.bank.resolve_orphans());
    }
}

impl Handler<PerformBatch> for BankActor {
    type Result = MessageResult<PerformBatch>;

    fn handle(&mut self, msg: PerformBatch, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.bank.perform_now(msg.0))
    }
}

impl Handler<Stop> for BankActor {
    type Result = ();

    fn handle(&mut self, _msg: Stop, ctx: &mut Self::Context) {
        ctx.stop();
        System::current().stop();
    }
}

/// The running actor: where to send batches.
#[derive(Clone)]
pub struct BankActorHandle {
    addr: Addr<BankActor>,
}

impl BankActorHandle {
    /// Starts the actor for `bank` on a thread of its own.
    pub(crate) fn start(bank: Iso20022Bank, resolve_every: Duration) -> Result<Self, BankError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("onecard-bank-adapter".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let addr = BankActor {
                        bank,
                        resolve_every: resolve_every.max(Duration::from_millis(50)),
                    }
                    .start();
                    let _ = tx.send(addr);
                });
                let _ = system.run();
            })
            .map_err(|e| BankError::Unavailable(format!("cannot start the bank adapter: {e}")))?;
        let addr = rx
            .recv()
            .map_err(|_| BankError::Unavailable("the bank adapter did not start".into()))?;
        Ok(BankActorHandle { addr })
    }

    /// Sends a batch; the future resolves with the answers.
    pub(crate) fn perform(
        &self,
        requests: Vec<BankRequest>,
    ) -> impl std::future::Future<Output = Result<Vec<BankResult>, BankError>> {
        let sent = self.addr.send(PerformBatch(requests));
        async move {
            sent.await.map_err(|e| {
                BankError::Unavailable(format!("the bank adapter stopped without answering: {e}"))
            })
        }
    }

    /// Stops the actor (after the batch it is handling, if any).
    pub(crate) fn stop(&self) {
        self.addr.do_send(Stop);
    }
}
