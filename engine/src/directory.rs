//! The id directories: which consumer an order id belongs to, and which order and refund ids
//! are taken, without asking an actor.
//!
//! The engine checks an id's first use (I6) and finds the consumer that owns an order before
//! it routes a command, so these lookups must not need the actor. What is open or in progress
//! lives here, in memory: ids being placed or refunded right now (claimed before they reach
//! the view, so that two concurrent commands with one id and different content cannot both
//! go ahead), the open orders (they live inside their consumer's record, so this is what finds
//! their consumer) and the consumers with time-driven work. Closed orders and refunds are
//! looked up in the account-state view. Separate from the router because it is about ids, not
//! actors: the actors keep it current (`Shared::note_order`, `Shared::note_time_work`),
//! recovery rebuilds it from the consumer records, and the engine's commands read it.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::mapref::entry::Entry as MapEntry;

use crate::error::EngineError;
use crate::fast_map::FastDashMap;
use crate::ledger::Order;
use crate::model::{Refusal, Release, Secs};
use crate::money::Amount;
use crate::view::StateView;

/// The content that identifies an order id's first use (I6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderKey {
    pub(crate) consumer: String,
    pub(crate) merchant: String,
    pub(crate) amount: Amount,
    pub(crate) release: Release,
}

impl OrderKey {
    pub(crate) fn of(consumer: &str, o: &Order) -> OrderKey {
        OrderKey {
            consumer: consumer.to_string(),
            merchant: o.merchant.clone(),
            amount: o.amount,
            release: o.release.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RefundKey {
    pub(crate) order: String,
    pub(crate) amount: Amount,
}

/// The content that identifies a credit or transfer id's first use (I6): one name space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CreditKey {
    Credit {
        consumer: String,
        source: crate::ledger::CreditSource,
        target: crate::ledger::CreditTarget,
        amount: Amount,
    },
    Transfer {
        consumer: String,
        from: String,
        to: String,
        amount: Amount,
    },
    /// An employer's funding: ids are shared with consumers' credits and transfers (I6).
    Funding { merchant: String, amount: Amount },
}

/// The directories of ids in progress, open orders and consumers with time-driven work.
#[derive(Default)]
pub(crate) struct Directory {
    /// Order ids being placed right now: claimed before they are in the view, so that two
    /// concurrent places of one id with different content cannot both go ahead.
    pub(crate) placing: FastDashMap<String, OrderKey>,
    /// Refund ids being refunded right now.
    pub(crate) refunding: FastDashMap<String, RefundKey>,
    /// Credit ids being credited right now.
    pub(crate) crediting: FastDashMap<String, CreditKey>,
    /// Open orders (pending, awaiting funds, disputed) → their content. Closed orders are
    /// looked up in the view; open ones live inside their consumer's record, so this map is
    /// what finds their consumer. Rebuilt at start-up from the consumer records.
    pub(crate) open_orders: FastDashMap<String, OrderKey>,
    /// Consumers that will have time-driven work, and from when on (`next_time_work`): a
    /// tick visits only those due, so its work follows what is due, not what is open.
    pub(crate) timed: FastDashMap<String, Secs>,
    /// Wakes commands waiting for a claim of `placing` or `refunding` to be released.
    pub(crate) releases: Releases,
}

impl Directory {
    /// Keeps the open-order directory up to date after an order changed durably.
    pub(crate) fn note_order(&self, consumer: &str, order: &Order) {
        if order.state.is_open() {
            self.open_orders
                .entry(order.id.clone())
                .or_insert_with(|| OrderKey::of(consumer, order));
        } else {
            self.open_orders.remove(&order.id);
        }
    }

    /// Keeps the consumers a tick must visit up to date: `next` is when this one will first
    /// have time-driven work, if ever.
    pub(crate) fn note_time_work(&self, consumer: &str, next: Option<Secs>) {
        match next {
            Some(at) => {
                if self.timed.get(consumer).map(|e| *e) != Some(at) {
                    self.timed.insert(consumer.to_string(), at);
                }
            }
            None => {
                if self.timed.contains_key(consumer) {
                    self.timed.remove(consumer);
                }
            }
        }
    }

    /// What an order id was first used with, as `in_memory` or `closed` take from where it
    /// lives: being placed now, open (both in memory), or closed in the view. The one place
    /// that knows where to look, and in which order.
    fn find_order<T>(
        &self,
        view: &StateView,
        order: &str,
        in_memory: impl Fn(&OrderKey) -> T,
        closed: impl FnOnce(crate::view::StoredOrder) -> T,
    ) -> Result<Option<T>, EngineError> {
        if let Some(k) = self.placing.get(order) {
            return Ok(Some(in_memory(&k)));
        }
        if let Some(k) = self.open_orders.get(order) {
            return Ok(Some(in_memory(&k)));
        }
        Ok(view.closed_order(order)?.map(closed))
    }

    /// The content an order id was first used with: being placed now, open, or closed in
    /// the view.
    pub(crate) fn order_key(
        &self,
        view: &StateView,
        order: &str,
    ) -> Result<Option<OrderKey>, EngineError> {
        self.find_order(view, order, OrderKey::clone, |s| {
            OrderKey::of(&s.consumer, &s.order)
        })
    }

    /// The consumer an order id belongs to: as `order_key`, but copying only the consumer.
    pub(crate) fn owner_of_order(
        &self,
        view: &StateView,
        order: &str,
    ) -> Result<Result<String, Refusal>, EngineError> {
        let owner = self.find_order(view, order, |k| k.consumer.clone(), |s| s.consumer)?;
        Ok(owner.ok_or_else(|| Refusal::unknown(format!("no order {order:?}"))))
    }
}

/// An id claimed by a command in progress; released on drop.
pub(crate) struct IdClaim<'a, K> {
    map: &'a FastDashMap<String, K>,
    releases: &'a Releases,
    id: Option<String>,
}

impl<K> Drop for IdClaim<'_, K> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.map.remove(&id);
            self.releases.released();
        }
    }
}

/// Claims `id` for `key` in `map`: `Err(())` if it is claimed with other content; a guard
/// that releases the claim if this call made it.
pub(crate) fn claim_id<'a, K: PartialEq + Clone>(
    map: &'a FastDashMap<String, K>,
    releases: &'a Releases,
    id: &str,
    key: &K,
) -> Result<IdClaim<'a, K>, ()> {
    match map.entry(id.to_string()) {
        MapEntry::Occupied(o) if o.get() != key => Err(()),
        MapEntry::Occupied(_) => Ok(IdClaim {
            map,
            releases,
            id: None,
        }),
        MapEntry::Vacant(v) => {
            v.insert(key.clone());
            Ok(IdClaim {
                map,
                releases,
                id: Some(id.to_string()),
            })
        }
    }
}

/// Lets a command whose id is claimed in flight by another command with other content wait
/// for that command to finish, and then decide. Refusing at once would answer "conflict" for
/// an id the other command may yet leave free (a refused refund leaves no trace; a crash loses
/// an unacknowledged place): an answer no serial order of the two commands gives.
#[derive(Default)]
pub(crate) struct Releases {
    /// Commands waiting now: a release wakes them only when there are some.
    waiting: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Releases {
    fn released(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Waits until `claimed_by_another()` is false, checked again after every release.
    pub(crate) async fn wait_while(&self, claimed_by_another: impl Fn() -> bool) {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        if !claimed_by_another() {
            return;
        }
        // Counted before the check below, so that a release after the check sees a waiter.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !claimed_by_another() {
                return;
            }
            notified.await;
        }
    }
}
