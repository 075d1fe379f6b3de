//! The payout scheduler: pays merchants' balances out to their bank accounts by the policy each
//! merchant has (`PayoutPolicy`: a threshold, a period, or both), from the node's ticker.
//!
//! The payouts due at one tick are asked for together, so that a bank reached by messages
//! gets them in one batch (one pain.001 with a transaction per merchant). Each is the engine's
//! `pay_out`: held, sent, journaled as paid or refused; a failure is logged and tried again at
//! a later tick (a threshold stays reached; a period's payout is tried until it goes through).

use std::collections::HashMap;

use onecard_engine::model::Secs;

use crate::state::Node;

/// What the scheduler remembers between ticks: per merchant, the last period whose payout went
/// through (or was not needed).
#[derive(Default)]
pub struct Scheduler {
    done_period: HashMap<String, u64>,
}

impl Scheduler {
    /// Pays out every merchant whose policy says so at `now`; returns how many were paid.
    pub async fn run(&mut self, node: &Node, now: Secs) -> usize {
        let mut due = Vec::new();
        for entry in node.merchants.iter() {
            let Some(policy) = entry.payout.clone() else {
                continue;
            };
            let id = entry.id.clone();
            let Some(free) = node.engine.merchant_free_balance(&id) else {
                continue;
            };
            let period = policy.every_secs.map(|every| now / every.max(1));
            // The first tick after a start only notes the period it is in.
            let new_period = match (period, self.done_period.get(&id)) {
                (Some(p), Some(done)) => p > *done,
                (Some(p), None) => {
                    self.done_period.insert(id.clone(), p);
                    false
                }
                (None, _) => false,
            };
            let over_threshold = policy.threshold.is_some_and(|t| free >= t);
            if free.is_positive() && (over_threshold || new_period) {
                due.push((id, period));
            } else if let Some(p) = period.filter(|_| new_period) {
                // Nothing to pay this period.
                self.done_period.insert(id, p);
            }
        }
        let calls = due.iter().map(|(id, _)| node.engine.pay_out(id, None, now));
        let results = futures::future::join_all(calls).await;
        let mut paid = 0;
        for ((id, period), result) in due.into_iter().zip(results) {
            match result {
                Ok(Ok(p)) => {
                    paid += 1;
                    tracing::info!(merchant = %id, payout = %p.payout, amount = %p.amount, "merchant paid out");
                    if let Some(period) = period {
                        self.done_period.insert(id, period);
                    }
                }
                Ok(Err(r)) => {
                    tracing::warn!(merchant = %id, reason = %r.message, "a scheduled payout was refused");
                }
                Err(e) => {
                    tracing::warn!(merchant = %id, error = %e, "a scheduled payout failed; tried again later");
                }
            }
        }
        paid
    }
}
