//! The node's application layer: what the HTTP handlers and the outbox do with orders, apart
//! from HTTP. The checkout lookup, the order as a merchant sees it, one payment or
//! cancellation of an order at a time ([`OrderLocks`]), and step 4 (placing an authorised
//! order). The API's handlers (`api`) and the outbox both call down into it; it calls the
//! engine and the node store, and knows nothing of requests and status codes ([`AppError`]).

use std::sync::Arc;
use std::time::Duration;

use onecard_engine::cards::Authorisation;
use onecard_engine::commands::{PlaceCmd, ReaderPayment};
use onecard_engine::fast_map::FastDashMap;
use onecard_engine::{Amount, EngineError, OrderState, Outcome};
use onecard_protocol::wire::PlacedOrder;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::records::{
    self, Checkout, Delivery, Item, NewOrderAnswer, PrintJob, PrintState, ReleaseJson,
};
use crate::state::Node;
use crate::store::StoreError;

/// Why an application operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("no order {0:?}")]
    UnknownOrder(String),
    /// Another payment or cancellation of the order held it for longer than
    /// [`ORDER_LOCK_WAIT`].
    #[error("the order is being paid or cancelled right now; retry shortly")]
    OrderBusy,
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

/// How long a payment or cancellation waits for another one of the same order.
pub const ORDER_LOCK_WAIT: Duration = Duration::from_secs(2);

/// One lock per order in progress: a payment's placement and a cancellation of the same order
/// take turns (fairly, in arrival order), without polling; the entry goes when nobody holds
/// or waits for it.
#[derive(Default)]
pub struct OrderLocks {
    locks: FastDashMap<String, Arc<Mutex<()>>>,
}

/// The order's lock, held until dropped.
pub struct OrderGuard<'a> {
    locks: &'a OrderLocks,
    order: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl OrderLocks {
    /// Waits (up to [`ORDER_LOCK_WAIT`]) until nobody else is paying or cancelling `order`.
    pub async fn lock(&self, order: &str) -> Result<OrderGuard<'_>, AppError> {
        self.lock_within(order, ORDER_LOCK_WAIT).await
    }

    async fn lock_within(&self, order: &str, wait: Duration) -> Result<OrderGuard<'_>, AppError> {
        let mutex = self.locks.entry(order.to_string()).or_default().clone();
        // Whatever happens next, the entry is cleaned up by the guard or here.
        let mut pending = OrderGuard {
            locks: self,
            order: order.to_string(),
            guard: None,
        };
        match tokio::time::timeout(wait, mutex.lock_owned()).await {
            Ok(guard) => {
                pending.guard = Some(guard);
                Ok(pending)
            }
            Err(_) => Err(AppError::OrderBusy),
        }
    }

    /// How many orders have a lock entry (held or waited for).
    pub fn len(&self) -> usize {
        self.locks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locks.is_empty()
    }
}

impl Drop for OrderGuard<'_> {
    fn drop(&mut self) {
        self.guard = None;
        // Only the map holds the mutex now: nobody holds or waits for it.
        self.locks
            .locks
            .remove_if(&self.order, |_, m| Arc::strong_count(m) == 1);
    }
}

/// The checkout session of `order`.
pub fn checkout_of(node: &Node, order: &str) -> Result<Arc<Checkout>, AppError> {
    node.checkout(order)?
        .ok_or_else(|| AppError::UnknownOrder(order.to_string()))
}

/// The print status shown on an order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PrintStatus {
    /// `not_applicable` (digital goods: confirmed online), `no_printer`, `waiting_for_payment`,
    /// `queued` (retrying while the printer is offline), `printed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub printed_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reprints: Option<u32>,
}

/// An order as the merchant sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderView {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub merchant: String,
    pub amount: String,
    pub currency: String,
    pub items: Vec<Item>,
    pub delivery: Delivery,
    pub release: ReleaseJson,
    pub digital: bool,
    pub created_at: u64,
    /// `awaiting_payment`, `pending`, `awaiting_funds`, `disputed`, `settled`, `cancelled`,
    /// `expired`, `refused`.
    pub state: String,
    pub refunded: String,
    /// Where the consumer's reader opens this checkout (the order id is the checkout
    /// session's id).
    pub checkout_path: String,
    /// After this (unix seconds) an unpaid order can no longer be paid: it is `expired`.
    pub checkout_expires_at: u64,
    pub print: PrintStatus,
    /// When the merchant marked the goods shipped (unix seconds), if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipped_at: Option<u64>,
}

/// What a checkout just created answers beyond the checkout itself (see
/// [`order_view_as_created`]).
pub fn new_order_answer(node: &Node, c: &Checkout) -> NewOrderAnswer {
    let has_printer = merchant_has_printer(node, &c.merchant);
    NewOrderAnswer {
        order: c.order_id.clone(),
        print: if c.digital {
            "not_applicable"
        } else if has_printer {
            "waiting_for_payment"
        } else {
            "no_printer"
        }
        .into(),
        checkout_expires_at: checkout_expires_at(node, c),
    }
}

/// When an unpaid order stops being payable (unix seconds).
fn checkout_expires_at(node: &Node, c: &Checkout) -> u64 {
    c.created_at.saturating_add(node.settings.checkout_ttl_secs)
}

fn merchant_has_printer(node: &Node, merchant: &str) -> bool {
    node.merchants
        .get(merchant)
        .map(|m| m.printer.is_some())
        .unwrap_or(false)
}

/// The order as its creation answered it: nothing to look up (no order in the engine, no
/// print job yet), the same bytes whenever it is rebuilt (an idempotent replay).
pub fn order_view_as_created(c: &Checkout, created: &NewOrderAnswer) -> OrderView {
    view_of(
        c,
        "awaiting_payment".into(),
        Amount::ZERO,
        created.checkout_expires_at,
        status(&created.print),
    )
}

/// The checkout's fields with what is known of the order beyond them.
fn view_of(
    c: &Checkout,
    state: String,
    refunded: Amount,
    checkout_expires_at: u64,
    print: PrintStatus,
) -> OrderView {
    OrderView {
        id: c.order_id.clone(),
        reference: c.reference.clone(),
        merchant: c.merchant.clone(),
        amount: Amount::from_cents(c.amount_cents).to_string(),
        currency: c.currency.clone(),
        items: c.items.clone(),
        delivery: c.delivery.clone(),
        release: c.release.clone(),
        digital: c.digital,
        created_at: c.created_at,
        state,
        refunded: refunded.to_string(),
        checkout_path: format!("/v1/reader/checkouts/{}", c.order_id),
        checkout_expires_at,
        print,
        shipped_at: c.shipped_at,
    }
}

/// Whether the order can still be paid: not placed, not cancelled, not expired. The cheap
/// question a swipe asks ([`order_view`] answers the full one).
pub fn awaiting_payment(node: &Node, c: &Checkout) -> Result<bool, AppError> {
    Ok(c.cancelled_at.is_none()
        && node.now() < checkout_expires_at(node, c)
        && node.engine.order_owner(&c.order_id)?.is_none())
}

/// What the merchant sees of an order now: the checkout, the engine's state, the print job.
pub async fn order_view(node: &Node, c: &Checkout) -> Result<OrderView, AppError> {
    let placed = node.engine.order_summary(&c.order_id).await?;
    let (state, refunded) = match &placed {
        Some(o) => (o.state.as_str().to_string(), o.refunded),
        None if c.cancelled_at.is_some() => ("cancelled".to_string(), Amount::ZERO),
        None if node.now() >= checkout_expires_at(node, c) => ("expired".to_string(), Amount::ZERO),
        None => ("awaiting_payment".to_string(), Amount::ZERO),
    };
    let merchant_has_printer = merchant_has_printer(node, &c.merchant);
    let job = node
        .store
        .get::<PrintJob>(&records::print_job_key(&c.order_id))?;
    let print = match (&job, c.digital) {
        (_, true) => status("not_applicable"),
        (Some(j), _) => PrintStatus {
            status: match j.state {
                PrintState::Queued => "queued",
                PrintState::Printed => "printed",
            }
            .to_string(),
            attempts: Some(j.attempts),
            last_error: j.last_error.clone(),
            printed_at: j.printed_at,
            reprints: Some(j.reprints),
        },
        (None, false) if !merchant_has_printer => status("no_printer"),
        (None, false) => match placed.as_ref().map(|o| o.state) {
            // Placed and accepted: the outbox is about to queue the slip.
            Some(s) if s != OrderState::Refused => status("queued"),
            _ => status("waiting_for_payment"),
        },
    };
    Ok(view_of(
        c,
        state,
        refunded,
        checkout_expires_at(node, c),
        print,
    ))
}

fn status(s: &str) -> PrintStatus {
    PrintStatus {
        status: s.to_string(),
        attempts: None,
        last_error: None,
        printed_at: None,
        reprints: None,
    }
}

/// Why a delivery slip cannot be printed again now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReprintRefusal {
    #[error("this order has no delivery slip (digital goods, no printer, or not paid yet)")]
    NothingToReprint,
    #[error("the slip is still queued for its first print; it prints once the printer answers")]
    PrintPending,
}

impl ReprintRefusal {
    /// The API's error code.
    pub fn code(self) -> &'static str {
        match self {
            ReprintRefusal::NothingToReprint => "nothing_to_reprint",
            ReprintRefusal::PrintPending => "print_pending",
        }
    }
}

/// Why goods cannot be marked shipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("only a paid order whose money is still reserved (pending or awaiting funds) can be marked shipped; this one is {0}")]
pub struct ShipRefusal(pub &'static str);

/// The merchant marks the goods of its order `c` shipped: a note on the checkout, for the
/// merchant's board and the order's view; the money still waits for the consumer's release
/// condition. Only a paid order whose money is reserved can be; marking it again changes
/// nothing. Under the order's lock, so that it does not interleave with a cancellation. The
/// checkout as it is now, and the write that records it (empty when it was shipped already),
/// for the caller to commit with its own.
pub async fn mark_shipped(
    node: &Node,
    c: &Checkout,
) -> Result<Result<(Checkout, Vec<crate::store::Write>), ShipRefusal>, AppError> {
    let _busy = node.order_locks.lock(&c.order_id).await?;
    let Some(stored) = node.checkout(&c.order_id)? else {
        return Err(AppError::UnknownOrder(c.order_id.clone()));
    };
    let mut now = Checkout::clone(&stored);
    if now.shipped_at.is_some() {
        return Ok(Ok((now, Vec::new())));
    }
    let state = match node.engine.order_summary(&now.order_id).await? {
        Some(o) => o.state,
        None => return Ok(Err(ShipRefusal("not paid"))),
    };
    if !matches!(state.as_str(), "pending" | "awaiting_funds") {
        return Ok(Err(ShipRefusal(state.as_str())));
    }
    now.shipped_at = Some(node.now());
    let write = crate::store::record(records::checkout_key(&now.order_id), &now);
    Ok(Ok((now, vec![write])))
}

/// A reprint of `order`'s delivery slip (F16) asked for by its merchant: the print job as it
/// will be, queued again, and the writes that queue it. The caller commits them (with its own
/// writes: the API's idempotency record) and then wakes the print worker.
pub fn reprint(
    node: &Node,
    order: &str,
) -> Result<Result<(PrintJob, Vec<crate::store::Write>), ReprintRefusal>, AppError> {
    let key = records::print_job_key(order);
    let Some(mut job) = node.store.get::<PrintJob>(&key)? else {
        return Ok(Err(ReprintRefusal::NothingToReprint));
    };
    if job.state == PrintState::Queued {
        return Ok(Err(ReprintRefusal::PrintPending));
    }
    job.state = PrintState::Queued;
    job.reprints += 1;
    job.next_attempt_ms = crate::state::now_ms();
    job.last_error = None;
    let writes = vec![
        crate::store::json(
            records::print_queue_key(job.next_attempt_ms, &job.order_id),
            &(),
        ),
        crate::store::json(key, &job),
    ];
    Ok(Ok((job, writes)))
}

/// Step 4: places the authorised order in the consumer's virtual account. Idempotent by the
/// order id: the outbox calls it again for every authorisation it finds in the journal, so an
/// authorisation whose placement a crash interrupted is still placed.
pub async fn place(node: &Node, auth: &Authorisation) -> Result<PlacedOrder, AppError> {
    // Read under the order's lock: a cancellation may have just gone before.
    let _busy = node.order_locks.lock(&auth.order_id).await?;
    let c = checkout_of(node, &auth.order_id)?;
    if c.cancelled_at.is_some() {
        return Ok(PlacedOrder {
            id: c.order_id.clone(),
            state: "cancelled".into(),
            refusal: Some("refused:state".into()),
        });
    }
    // A payment started (swiped) before the checkout expired may finish within a challenge's
    // lifetime after it; later, nothing is placed, whatever the journal says was authorised.
    let deadline =
        checkout_expires_at(node, &c).saturating_add(node.engine.rules().auth.challenge_ttl_secs);
    if node.now() >= deadline && node.engine.order_owner(&c.order_id)?.is_none() {
        return Ok(PlacedOrder {
            id: c.order_id.clone(),
            state: "expired".into(),
            refusal: Some("refused:state".into()),
        });
    }
    let amount = Amount::from_cents(c.amount_cents);
    if u64::try_from(c.amount_cents).ok() != Some(auth.amount_cents) {
        return Err(AppError::Internal(format!(
            "authorised {} cents for order {} of {} cents",
            auth.amount_cents, c.order_id, c.amount_cents
        )));
    }
    let result = node
        .engine
        .place(
            PlaceCmd {
                id: c.order_id.clone(),
                consumer: auth.account.clone(),
                merchant: c.merchant.clone(),
                amount,
                release: c.release.0.clone(),
                at_reader: Some(reader_payment(node, &c.merchant)),
            },
            node.now(),
        )
        .await?;
    Ok(match result {
        Ok(Outcome::Settled) => PlacedOrder {
            id: c.order_id.clone(),
            state: "settled".into(),
            refusal: None,
        },
        Ok(Outcome::AwaitingFunds) => PlacedOrder {
            id: c.order_id.clone(),
            state: "awaiting_funds".into(),
            refusal: None,
        },
        Ok(_) => PlacedOrder {
            id: c.order_id.clone(),
            state: "pending".into(),
            refusal: None,
        },
        Err(r) => PlacedOrder {
            id: c.order_id.clone(),
            state: "refused".into(),
            refusal: Some(r.code_str()),
        },
    })
}

/// What the consumer's gateway rules (SPEC F9) see of a payment at a reader to `merchant`
/// besides the merchant and the amount: the merchant's category.
pub fn reader_payment(node: &Node, merchant: &str) -> ReaderPayment {
    ReaderPayment {
        category: crate::analysis::category_of(node, merchant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_order_lock_is_taken_in_turn_without_polling_and_then_forgotten() {
        let locks = Arc::new(OrderLocks::default());
        let first = locks.lock("o-1").await.unwrap();
        // Another order is not held up.
        drop(locks.lock("o-2").await.unwrap());
        // A second payer of o-1 waits for the first, and gets it as soon as it is let go.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let _held = locks.lock("o-1").await.unwrap();
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "o-1 is held");
        drop(first);
        let waited = waiter.await.unwrap();
        assert!(waited >= Duration::from_millis(50));
        assert!(locks.is_empty(), "nobody holds or waits: the entry is gone");
    }

    #[tokio::test]
    async fn an_order_held_too_long_is_busy_and_nothing_is_left_behind() {
        let locks = OrderLocks::default();
        let held = locks.lock("o-1").await.unwrap();
        let err = locks
            .lock_within("o-1", Duration::from_millis(20))
            .await
            .err()
            .expect("busy");
        assert!(matches!(err, AppError::OrderBusy));
        assert_eq!(locks.len(), 1, "still held");
        drop(held);
        assert!(locks.is_empty());
    }
}
