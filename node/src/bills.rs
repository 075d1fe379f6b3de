//! Bills (F7), apart from HTTP: the autopay decision, paying a bill through the engine, what a
//! bill looks like to its consumer and biller, and the overdue scan.
//!
//! A biller is a merchant of a kind (`MerchantProfile::biller`), so a bill is paid as an order
//! is: [`pay`] places an engine order whose id is the bill's reference
//! ([`records::bill_ref`]), the biller as merchant, reserved against the consumer's credit,
//! and settled by the engine from the wallet and the bank with the top-up after it; the money
//! lands in the biller's balance and is paid out as any merchant's.
//!
//! The release is always a time release: `after_secs` 0 to pay at once (the engine's next tick
//! settles it) or the seconds until the due date. That keeps the settlement wholly on the
//! engine's path, in one command: the placement is durable with its release, the engine's
//! directory of timed work survives a restart, and no second command (a receipt confirmed at
//! once) can be lost between two steps and leave a bill reserved but never paid.
//!
//! The bill record holds what only the node knows (who posted it, the consumer's decision);
//! the money state is the engine order's, read when shown (never copied), as for orders.

use onecard_engine::commands::PlaceCmd;
use onecard_engine::{Amount, OrderState, Release};
use serde::{Deserialize, Serialize};

use crate::app::AppError;
use crate::notify::{self, Notification, Recipient};
use crate::records::{self, AutopayRule, Bill, BillState};
use crate::state::Node;
use crate::store::{self, Write};

/// What to do with a new bill, by the consumer's rule for its biller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillAction {
    /// Place it now and settle it at the next tick.
    PayNow,
    /// Place it now (reserved against credit), settle it on the due date.
    PayOnDueDate,
    /// Keep it until the consumer approves or declines it.
    Ask,
}

/// The consumer's rule decides; without one the consumer is asked.
pub fn decide(rule: Option<&AutopayRule>, amount: Amount) -> BillAction {
    match rule {
        Some(AutopayRule::Always) => BillAction::PayNow,
        Some(AutopayRule::UpTo { amount: limit }) if amount <= *limit => BillAction::PayNow,
        Some(AutopayRule::UpTo { .. }) => BillAction::Ask,
        Some(AutopayRule::OnDueDate) => BillAction::PayOnDueDate,
        Some(AutopayRule::Ask) | None => BillAction::Ask,
    }
}

/// The time release of a bill paid by `action` at `now`: 0 (the next tick) to pay at once, the
/// seconds left until the due date otherwise (0 when it is past). `None` for [`BillAction::Ask`].
pub fn release_after(action: BillAction, now: u64, due_date: u64) -> Option<u64> {
    match action {
        BillAction::PayNow => Some(0),
        BillAction::PayOnDueDate => Some(due_date.saturating_sub(now)),
        BillAction::Ask => None,
    }
}

/// The rule's name, as recorded on the bill.
pub fn rule_name(rule: Option<&AutopayRule>) -> &'static str {
    match rule {
        Some(AutopayRule::Always) => "always",
        Some(AutopayRule::UpTo { .. }) => "up_to",
        Some(AutopayRule::OnDueDate) => "on_due_date",
        Some(AutopayRule::Ask) => "ask",
        None => "none",
    }
}

/// Places the bill's engine order (idempotent by the bill's reference: a repeat returns the
/// first outcome, I6). A refusal (credit, funds) is the bill's failed payment: the engine
/// records it on the order ([`view`] shows it), and the outbox tells consumer and biller.
pub async fn pay(node: &Node, bill: &Bill, after_secs: u64) -> Result<(), AppError> {
    let result = node
        .engine
        .place(
            PlaceCmd {
                id: bill.reference.clone(),
                consumer: bill.consumer.clone(),
                merchant: bill.biller.clone(),
                amount: bill.amount,
                release: Release::Time { after_secs },
                // A bill is paid by the consumer's autopay rule, not at a reader: the
                // gateway rules (SPEC F9) are for payments at readers.
                at_reader: None,
            },
            node.now(),
        )
        .await?;
    node.outbox_wake.notify_one();
    if let Err(r) = result {
        tracing::info!(bill = %bill.reference, biller = %bill.biller, reason = %r.message, "a bill's payment was refused");
    }
    Ok(())
}

/// What became of a consumer's decision on a bill ([`consumer_decides`]).
#[derive(Debug)]
pub enum Decided {
    /// Done (or done already the same way): the bill as it is now.
    Done(Bill),
    /// No such bill of this consumer's.
    Unknown,
    /// Decided the other way before: `declined`, or `being paid`.
    Already(&'static str),
}

/// The consumer approves (paid at once, as by `always`) or declines a bill that waits for
/// them. Deciding the same way twice is harmless: an approval whose placement was interrupted
/// is finished. Under the bill's order lock, so that two decisions do not interleave.
pub async fn consumer_decides(
    node: &Node,
    consumer: &str,
    reference: &str,
    approve: bool,
) -> Result<Decided, AppError> {
    let _busy = node.order_locks.lock(reference).await?;
    let mut bill = match node.store.get::<Bill>(&records::bill_key(reference))? {
        Some(b) if b.consumer == consumer => b,
        _ => return Ok(Decided::Unknown),
    };
    match (bill.state, approve) {
        (BillState::AwaitingApproval, true) => {
            bill.state = BillState::Paying;
            bill.release_after_secs = Some(0);
            bill.decided_at = Some(node.now());
            // Durable before the order, as when a bill is posted.
            node.store
                .commit(vec![store::json(records::bill_key(reference), &bill)])
                .await?;
            pay(node, &bill, 0).await?;
        }
        (BillState::AwaitingApproval, false) => {
            bill.state = BillState::Declined;
            bill.decided_at = Some(node.now());
            let mut writes = vec![store::json(records::bill_key(reference), &bill)];
            let ns = notifications(
                node,
                &bill,
                "bill.declined",
                &format!("ntf_{reference}_declined"),
                true,
                serde_json::json!({ "status": "declined" }),
            );
            writes.extend(notify::writes_all(node, &ns)?);
            node.store.commit(writes).await?;
            node.work_wake.notify();
        }
        // Approved twice: finish a placement that was interrupted, else nothing to do.
        (BillState::Paying, true) => {
            if node.engine.order_owner(reference)?.is_none() {
                pay(node, &bill, bill.release_after_secs.unwrap_or(0)).await?;
            }
        }
        (BillState::Declined, false) => {}
        (BillState::Declined, true) => return Ok(Decided::Already("declined")),
        (_, _) => return Ok(Decided::Already("being paid")),
    }
    Ok(Decided::Done(bill))
}

/// A bill as its consumer and its biller see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BillView {
    /// The node's reference of the bill (and the id of the order that pays it).
    pub reference: String,
    pub biller: String,
    pub bill_id: String,
    pub consumer: String,
    pub amount: String,
    pub currency: String,
    pub due_date: u64,
    pub period: String,
    pub posted_at: u64,
    /// `awaiting_approval`, `declined`, `paying` (being placed), `scheduled` (reserved against
    /// credit, settles at its time), `awaiting_funds`, `paid`, `failed`, or the order's state
    /// (`disputed`, `cancelled`, `expired`).
    pub status: String,
    /// The autopay rule that decided when the bill was posted (`none`: no rule, asked).
    pub rule: String,
    /// Not paid (nor declined) and past its due date.
    pub overdue: bool,
    /// Why the payment failed (`refused_credit`, ...), with the engine's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

/// The status word of a bill whose order is in `state`.
fn paid_status(state: OrderState) -> &'static str {
    match state {
        OrderState::Pending => "scheduled",
        OrderState::Settled => "paid",
        OrderState::Refused => "failed",
        other => other.as_str(),
    }
}

/// What a bill is now: the node's record and the engine order's state.
pub async fn view(node: &Node, bill: &Bill) -> Result<BillView, AppError> {
    let (status, failure) = match bill.state {
        BillState::AwaitingApproval => ("awaiting_approval", None),
        BillState::Declined => ("declined", None),
        BillState::Paying => match node.engine.order(&bill.reference).await? {
            None => ("paying", None),
            Some(o) => (
                paid_status(o.state),
                match (&o.state, &o.first_result) {
                    (OrderState::Refused, Err(r)) => Some(Failure {
                        code: r.code_str().replace(':', "_"),
                        message: r.message.clone(),
                    }),
                    _ => None,
                },
            ),
        },
    };
    let open = !matches!(status, "paid" | "declined");
    Ok(BillView {
        reference: bill.reference.clone(),
        biller: bill.biller.clone(),
        bill_id: bill.bill_id.clone(),
        consumer: bill.consumer.clone(),
        amount: bill.amount.to_string(),
        currency: node.currency.clone(),
        due_date: bill.due_date,
        period: bill.period.clone(),
        posted_at: bill.posted_ms / 1000,
        status: status.to_string(),
        rule: bill.rule.clone(),
        overdue: open && bill.due_date <= node.now(),
        failure,
    })
}

/// The bill of an engine order, if the order pays one.
pub fn bill_of_order(node: &Node, order: &str) -> Result<Option<Bill>, AppError> {
    if !order.starts_with("bill_") {
        return Ok(None);
    }
    Ok(node.store.get::<Bill>(&records::bill_key(order))?)
}

/// The notifications of a bill's event to its consumer and its biller (`to_biller`), with ids
/// `<base>_c` and `<base>_m`, stable for the event.
pub fn notifications(
    node: &Node,
    bill: &Bill,
    event_type: &str,
    base_id: &str,
    to_biller: bool,
    extra: serde_json::Value,
) -> Vec<Notification> {
    let mut payload = serde_json::json!({
        "reference": bill.reference,
        "biller": bill.biller,
        "bill_id": bill.bill_id,
        "consumer": bill.consumer,
        "amount": bill.amount.to_string(),
        "currency": node.currency,
        "due_date": bill.due_date,
        "period": bill.period,
    });
    if let (Some(p), Some(e)) = (payload.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            p.insert(k.clone(), v.clone());
        }
    }
    let now = node.now();
    let mut out = vec![Notification {
        id: format!("{base_id}_c"),
        recipient: Recipient::consumer(&bill.consumer),
        event_type: event_type.to_string(),
        payload: payload.clone(),
        created_at: now,
    }];
    if to_biller {
        out.push(Notification {
            id: format!("{base_id}_m"),
            recipient: Recipient::merchant(&bill.biller),
            event_type: event_type.to_string(),
            payload,
            created_at: now,
        });
    }
    out
}

/// How long the overdue scan waits to look again at a bill whose settlement is scheduled (its
/// time release falls due at the due date, and the next tick settles it).
const RECHECK_SECS: u64 = 2;

/// Bills read per pass of the overdue scan.
const PASS: usize = 1000;

/// One pass of the overdue scan: reads the due index by key range up to now (only the bills
/// that are due, however many wait), and for each due bill not paid reports it once to
/// consumer and biller, in the same commit that takes it off the index. A bill whose payment
/// is scheduled is looked at again shortly; one whose placement a crash interrupted is placed
/// now. Returns how many bills were reported.
pub async fn overdue_pass(node: &Node) -> Result<usize, AppError> {
    let now = node.now();
    let (due, _) = node.store.keys_while("bd/", PASS, |k| {
        records::parse_bill_due_key(k).is_none_or(|(d, _)| d <= now)
    })?;
    let mut reported = 0;
    for key in due {
        let mut writes: Vec<Write> = vec![store::remove(key.clone())];
        let bill = match records::parse_bill_due_key(&key) {
            Some((_, reference)) => node.store.get::<Bill>(&records::bill_key(reference))?,
            None => None,
        };
        let Some(bill) = bill else {
            node.store.commit(writes).await?;
            continue;
        };
        let report = match bill.state {
            BillState::Declined => false,
            BillState::AwaitingApproval => true,
            BillState::Paying => match node.engine.order(&bill.reference).await? {
                None => {
                    // Decided but never placed (a crash in between): paid now, looked at again.
                    let _busy = node.order_locks.lock(&bill.reference).await?;
                    pay(node, &bill, 0).await?;
                    writes.push(store::json(
                        records::bill_due_key(now + RECHECK_SECS, &bill.reference),
                        &(),
                    ));
                    false
                }
                Some(o) if o.state == OrderState::Settled => false,
                Some(o) if o.state == OrderState::Pending && o.due_at().is_some() => {
                    let at = o.due_at().unwrap_or(now).max(now) + RECHECK_SECS;
                    writes.push(store::json(records::bill_due_key(at, &bill.reference), &()));
                    false
                }
                Some(_) => true,
            },
        };
        if report {
            let v = view(node, &bill).await?;
            let ns = notifications(
                node,
                &bill,
                "bill.overdue",
                &format!("ntf_{}_overdue", bill.reference),
                true,
                serde_json::json!({ "status": v.status }),
            );
            writes.extend(notify::writes_all(node, &ns)?);
            reported += 1;
            tracing::info!(bill = %bill.reference, biller = %bill.biller, status = %v.status, "bill overdue: reported");
            // The consumer's credit score counts the bill in the same commit as the report
            // (once, as the report is once), and the limit follows (SPEC F10).
            crate::credit::overdue_bill(node, &bill.consumer, &bill.bill_id, writes).await?;
            continue;
        }
        node.store.commit(writes).await?;
    }
    if reported > 0 {
        node.work_wake.notify();
    }
    Ok(reported)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Amount {
        Amount::parse_positive(s).unwrap()
    }

    #[test]
    fn each_rule_decides_what_happens_to_a_bill() {
        assert_eq!(decide(None, a("10")), BillAction::Ask);
        assert_eq!(decide(Some(&AutopayRule::Ask), a("10")), BillAction::Ask);
        assert_eq!(
            decide(Some(&AutopayRule::Always), a("10")),
            BillAction::PayNow
        );
        assert_eq!(
            decide(Some(&AutopayRule::OnDueDate), a("10")),
            BillAction::PayOnDueDate
        );
        let up_to = AutopayRule::UpTo { amount: a("50.00") };
        assert_eq!(decide(Some(&up_to), a("49.99")), BillAction::PayNow);
        assert_eq!(
            decide(Some(&up_to), a("50.00")),
            BillAction::PayNow,
            "up to includes the limit"
        );
        assert_eq!(decide(Some(&up_to), a("50.01")), BillAction::Ask);
    }

    #[test]
    fn a_bill_is_released_at_once_or_on_its_due_date() {
        assert_eq!(release_after(BillAction::PayNow, 100, 500), Some(0));
        assert_eq!(release_after(BillAction::PayOnDueDate, 100, 500), Some(400));
        // Posted after its due date: settled at the next tick.
        assert_eq!(release_after(BillAction::PayOnDueDate, 600, 500), Some(0));
        assert_eq!(release_after(BillAction::Ask, 100, 500), None);
    }

    #[test]
    fn a_bills_status_is_its_orders_in_bill_words() {
        assert_eq!(paid_status(OrderState::Pending), "scheduled");
        assert_eq!(paid_status(OrderState::Settled), "paid");
        assert_eq!(paid_status(OrderState::Refused), "failed");
        assert_eq!(paid_status(OrderState::AwaitingFunds), "awaiting_funds");
    }
}
