//! The outbox: follows the engine's journal with a durable cursor and turns what happened to
//! orders into work for the adapters: a print job when a physical order is placed (F16), a
//! webhook event to the merchant on every change of state, a line on the consumer's statement,
//! a merchant's payouts in its list.
//!
//! Because it reads the journal, nothing is lost between the engine and the adapters: whatever
//! the engine made durable is handled, after a crash too, and the work it creates is written
//! together with the new cursor in one atomic, flushed write. Handling a record twice (a crash
//! between the two) creates nothing twice: print jobs and events have ids derived from the
//! journal (`evt_<seq>_<entry>_<event>`), and existing ones are left alone.
//!
//! It also closes the one gap between an authorisation and its order: a `PaymentAuthorised`
//! whose order is not placed (the node stopped in between) is placed here.

use onecard_engine::feed::{FeedEntry, FeedKind, FeedRecord, OrderChange};
use onecard_engine::Amount;
use onecard_engine::CreditSource;
use std::sync::atomic::Ordering;

use crate::bills;
use crate::notify::{self, Notification, PartyKind, Recipient};
use crate::records::{self, Bill, MerchantPayout, PrintJob, PrintState, StatementLine};
use crate::state::{now_ms, Node};
use crate::store::{self, StoreError, Write};

/// Journal records read per step.
const BATCH: usize = 512;

/// The durable cursor is written with the outbox's work; when only records without entries
/// (the node's own records) went by, it is written once this many records lie behind it, so
/// that a restart reads back at most this many (and the cursor's own record is not a reason
/// to write it again).
const SAVE_CURSOR_EVERY: u64 = 10_000;

/// The last journal record the outbox has read. Everything up to it is handled: its work is
/// durable, or it had none.
pub fn cursor(node: &Node) -> Result<u64, StoreError> {
    let read = node.outbox_read.load(Ordering::Acquire);
    if read != u64::MAX {
        return Ok(read);
    }
    let saved = node.store.get::<u64>(records::CURSOR_KEY)?.unwrap_or(0);
    node.outbox_saved.store(saved, Ordering::Release);
    // Only the outbox's own task advances it; a reader racing it loads the same saved value.
    let _ = node
        .outbox_read
        .compare_exchange(u64::MAX, saved, Ordering::AcqRel, Ordering::Acquire);
    Ok(node.outbox_read.load(Ordering::Acquire))
}

/// Follows the journal until the node stops (and then until it has caught up).
pub async fn run(node: actix_web::web::Data<Node>) {
    loop {
        let r = step(&node).await;
        if matches!(r, Ok(read) if read > 0) {
            // The journal has grown: the history index and the credit follower follow it too.
            node.analysis_wake.notify_one();
            node.credit_wake.notify_one();
        }
        // Caught up, it is woken by the requests that journal something: a short backstop.
        let backstop = std::time::Duration::from_millis(100);
        if !crate::state::after_follower_step(
            &node,
            &node.outbox_wake,
            "outbox",
            BATCH,
            backstop,
            r,
        )
        .await
        {
            return;
        }
    }
}

/// Handles the next records; returns how many were read.
pub async fn step(node: &Node) -> Result<usize, String> {
    let cursor = cursor(node).map_err(|e| e.to_string())?;
    let feed = node
        .engine
        .feed_after(cursor, BATCH)
        .map_err(|e| e.to_string())?;
    if feed.through <= cursor {
        return Ok(0);
    }
    let read = (feed.through - cursor) as usize;
    let mut writes = Vec::new();
    let mut counted = Vec::new();
    for FeedRecord { seq, entries } in feed.records.iter().map(|r| &**r) {
        for (ei, entry) in entries.iter().enumerate() {
            handle_entry(node, *seq, ei, entry, &mut writes, &mut counted).await?;
        }
    }
    let saved = node.outbox_saved.load(Ordering::Acquire);
    if writes.is_empty() && counted.is_empty() && feed.through - saved < SAVE_CURSOR_EVERY {
        // Nothing to do in these records (the node's own, say): read past them in memory.
        node.outbox_read.store(feed.through, Ordering::Release);
        return Ok(read);
    }
    // The print and webhook workers scan their queues when woken: only for new work.
    let queued_work = writes.iter().any(records::queues_work);
    writes.push(store::json(records::CURSOR_KEY, &feed.through));
    node.store.commit(writes).await.map_err(|e| e.to_string())?;
    node.outbox_saved.store(feed.through, Ordering::Release);
    node.outbox_read.store(feed.through, Ordering::Release);
    // Counted once the step is durable: a step that failed and is retried counts once.
    for state in counted {
        node.metrics.order_event(state);
    }
    if queued_work {
        node.work_wake.notify();
    }
    Ok(read)
}

/// A webhook event for a merchant, if it has a webhook endpoint and the event is new.
pub fn webhook_write(
    node: &Node,
    merchant: &str,
    event_id: &str,
    kind: &str,
    order: &str,
    state: &str,
    at: u64,
) -> Vec<Write> {
    webhook_with(
        node,
        merchant,
        event_id,
        kind,
        order,
        state,
        at,
        serde_json::json!({}),
    )
}

#[allow(clippy::too_many_arguments)]
fn webhook_with(
    node: &Node,
    merchant: &str,
    event_id: &str,
    kind: &str,
    order: &str,
    state: &str,
    at: u64,
    extra: serde_json::Value,
) -> Vec<Write> {
    // Most merchants' orders have no endpoint: nothing to read for them.
    if node
        .merchants
        .get(merchant)
        .and_then(|m| m.webhook_url.clone())
        .is_none()
    {
        return Vec::new();
    }
    let reference = node
        .checkout(order)
        .ok()
        .flatten()
        .and_then(|c| c.reference.clone());
    let mut data = serde_json::json!({ "order_id": order, "state": state });
    if let Some(r) = reference {
        data["reference"] = serde_json::Value::String(r);
    }
    if let (Some(d), Some(extra)) = (data.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            d.insert(k.clone(), v.clone());
        }
    }
    let event = Notification {
        id: event_id.to_string(),
        recipient: Recipient::merchant(merchant),
        event_type: kind.to_string(),
        payload: data,
        created_at: at,
    };
    notify::delivery_writes(
        node,
        PartyKind::Merchant,
        merchant,
        event_id,
        event.envelope(),
    )
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, event = %event_id, "queueing a webhook event failed");
        Vec::new()
    })
}

async fn merchant_of_order(node: &Node, order: &str) -> Option<String> {
    if let Ok(Some(c)) = node.checkout(order) {
        return Some(c.merchant.clone());
    }
    node.engine
        .order(order)
        .await
        .ok()
        .flatten()
        .map(|o| o.merchant)
}

fn line(
    writes: &mut Vec<Write>,
    consumer: &str,
    seq: u64,
    (entry, event): (usize, usize),
    line: StatementLine,
) {
    writes.push(store::record(
        records::statement_key(consumer, seq, entry, event),
        &line,
    ));
}

fn neg(a: Amount) -> String {
    a.checked_neg().to_string()
}

async fn handle_entry(
    node: &Node,
    seq: u64,
    ei: usize,
    entry: &FeedEntry,
    writes: &mut Vec<Write>,
    counted: &mut Vec<&'static str>,
) -> Result<(), String> {
    let at = entry.at;
    for ev in &entry.events {
        let vi = ev.index;
        let id = format!("evt_{seq}_{ei}_{vi}");
        let n = (ei, vi);
        let mut order_event = |merchant: &str, order: &str, kind: &str, state: &str, extra| {
            writes.extend(webhook_with(
                node, merchant, &id, kind, order, state, at, extra,
            ));
        };
        match &ev.kind {
            FeedKind::PaymentAuthorised(a) => {
                let placed = node
                    .engine
                    .order_owner(&a.order_id)
                    .map_err(|e| e.to_string())?
                    .is_some();
                let has_checkout = node
                    .store
                    .get_raw(&records::checkout_key(&a.order_id))
                    .map_err(|e| e.to_string())?
                    .is_some();
                if !placed && has_checkout {
                    tracing::warn!(order = %a.order_id, "placing an authorised order whose placement was interrupted");
                    crate::app::place(node, a)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            FeedKind::OrderPlaced {
                order,
                consumer,
                merchant,
                amount,
                result,
            } => {
                let state = match result {
                    Ok(onecard_engine::Outcome::Settled) => "settled",
                    Ok(onecard_engine::Outcome::AwaitingFunds) => "awaiting_funds",
                    Ok(_) => "pending",
                    Err(_) => "refused",
                };
                counted.push(if state == "refused" {
                    "refused"
                } else {
                    "placed"
                });
                let (kind, detail) = match result {
                    Ok(_) => ("order.placed", None),
                    Err(r) => ("order.refused", Some(r.code_str())),
                };
                if let Some(bill) = bills::bill_of_order(node, order).map_err(|e| e.to_string())? {
                    if let Err(r) = result {
                        writes.extend(bill_failed(node, &bill, &id, &r.code_str(), &r.message)?);
                    }
                } else {
                    order_event(
                        merchant,
                        order,
                        kind,
                        state,
                        serde_json::json!({ "amount": amount.to_string() }),
                    );
                }
                line(
                    writes,
                    consumer,
                    seq,
                    n,
                    StatementLine {
                        at,
                        event: kind.to_string(),
                        order_id: Some(order.clone()),
                        merchant: Some(merchant.clone()),
                        amount: Some(amount.to_string()),
                        detail,
                    },
                );
                if result.is_ok() {
                    writes.extend(print_job(node, order, merchant)?);
                }
            }
            FeedKind::OrderSettled {
                order,
                consumer,
                merchant,
                wallet_paid,
                bank_paid,
            } => {
                counted.push("settled");
                let total = wallet_paid
                    .checked_add(*bank_paid)
                    .map_err(|e| e.to_string())?;
                if let Some(bill) = bills::bill_of_order(node, order).map_err(|e| e.to_string())? {
                    let ns = bills::notifications(
                        node,
                        &bill,
                        "bill.paid",
                        &format!("ntf_{id}"),
                        true,
                        serde_json::json!({ "status": "paid" }),
                    );
                    writes.extend(notify::writes_all(node, &ns).map_err(|e| e.to_string())?);
                } else {
                    order_event(
                        merchant,
                        order,
                        "order.settled",
                        "settled",
                        serde_json::json!({ "amount": total.to_string() }),
                    );
                }
                line(
                    writes,
                    consumer,
                    seq,
                    n,
                    StatementLine {
                        at,
                        event: "order.settled".into(),
                        order_id: Some(order.clone()),
                        merchant: Some(merchant.clone()),
                        amount: Some(neg(total)),
                        detail: Some(format!("wallet {wallet_paid}, bank {bank_paid}")),
                    },
                );
            }
            FeedKind::OrderChanged {
                order,
                consumer,
                change,
            } => {
                let (kind, state) = match change {
                    OrderChange::AwaitingFunds { .. } => ("order.awaiting_funds", "awaiting_funds"),
                    OrderChange::Disputed => ("order.disputed", "disputed"),
                    OrderChange::Cancelled => ("order.cancelled", "cancelled"),
                    OrderChange::Expired => ("order.expired", "expired"),
                };
                counted.push(state);
                if let Some(bill) = bills::bill_of_order(node, order).map_err(|e| e.to_string())? {
                    if let OrderChange::AwaitingFunds { reason } = change {
                        writes.extend(bill_failed(node, &bill, &id, "awaiting_funds", reason)?);
                    }
                } else if let Some(m) = merchant_of_order(node, order).await {
                    order_event(&m, order, kind, state, serde_json::json!({}));
                }
                line(
                    writes,
                    consumer,
                    seq,
                    n,
                    StatementLine {
                        at,
                        event: kind.to_string(),
                        order_id: Some(order.clone()),
                        merchant: None,
                        amount: None,
                        detail: match change {
                            OrderChange::AwaitingFunds { reason } => Some(reason.clone()),
                            _ => None,
                        },
                    },
                );
            }
            FeedKind::Refunded {
                refund,
                order,
                consumer,
                merchant,
                amount,
            } => {
                counted.push("refunded");
                order_event(
                    merchant,
                    order,
                    "order.refunded",
                    "settled",
                    serde_json::json!({ "refund_id": refund, "refund_amount": amount.to_string() }),
                );
                line(
                    writes,
                    consumer,
                    seq,
                    n,
                    StatementLine {
                        at,
                        event: "order.refunded".into(),
                        order_id: Some(order.clone()),
                        merchant: Some(merchant.clone()),
                        amount: Some(amount.to_string()),
                        detail: None,
                    },
                );
            }
            FeedKind::WalletToppedUp { consumer, amount } => line(
                writes,
                consumer,
                seq,
                n,
                StatementLine {
                    at,
                    event: "wallet.topped_up".into(),
                    order_id: None,
                    merchant: None,
                    amount: Some(amount.to_string()),
                    detail: Some("from the designated bank account".into()),
                },
            ),
            FeedKind::TopUpRefused {
                consumer,
                amount,
                reason,
            } => line(
                writes,
                consumer,
                seq,
                n,
                StatementLine {
                    at,
                    event: "wallet.top_up_refused".into(),
                    order_id: None,
                    merchant: None,
                    amount: Some(amount.to_string()),
                    detail: Some(reason.clone()),
                },
            ),
            FeedKind::Credited {
                credit,
                consumer,
                source,
                amount,
                to_wallet,
                to_bank,
            } => line(
                writes,
                consumer,
                seq,
                n,
                StatementLine {
                    at,
                    event: "account.credited".into(),
                    order_id: None,
                    merchant: match source {
                        CreditSource::Employer { employer } => Some(employer.clone()),
                        _ => None,
                    },
                    amount: Some(amount.to_string()),
                    detail: Some(format!(
                        "{} {credit}: wallet {to_wallet}, bank {to_bank}",
                        source.kind()
                    )),
                },
            ),
            FeedKind::CreditLimitChanged {
                consumer,
                limit,
                reason,
            } => line(
                writes,
                consumer,
                seq,
                n,
                StatementLine {
                    at,
                    event: "credit.limit_changed".into(),
                    order_id: None,
                    merchant: None,
                    amount: Some(limit.to_string()),
                    detail: Some(reason.clone()),
                },
            ),
            FeedKind::BankTransferred {
                transfer,
                consumer,
                amount,
            } => line(
                writes,
                consumer,
                seq,
                n,
                StatementLine {
                    at,
                    event: "bank.transferred".into(),
                    order_id: None,
                    merchant: None,
                    amount: Some(amount.to_string()),
                    detail: Some(format!("between the consumer's bank accounts ({transfer})")),
                },
            ),
            // An employer's own account has no statement here.
            FeedKind::MerchantFunded { .. } => {}
            // The merchant's list of payouts (its pages), by the record that made each.
            FeedKind::PayoutMade {
                payout,
                merchant,
                amount,
            } => writes.push(store::json(
                records::merchant_payout_key(merchant, seq, ei, vi),
                &MerchantPayout {
                    payout: payout.clone(),
                    amount: *amount,
                    at,
                    refused: None,
                },
            )),
            FeedKind::PayoutRefused {
                payout,
                merchant,
                amount,
                reason,
            } => writes.push(store::json(
                records::merchant_payout_key(merchant, seq, ei, vi),
                &MerchantPayout {
                    payout: payout.clone(),
                    amount: *amount,
                    at,
                    refused: Some(reason.clone()),
                },
            )),
        }
    }
    Ok(())
}

/// A bill's failed payment (refused at placement, or its settlement left awaiting funds),
/// for its consumer and its biller.
fn bill_failed(
    node: &Node,
    bill: &Bill,
    event_id: &str,
    code: &str,
    message: &str,
) -> Result<Vec<Write>, String> {
    let ns = bills::notifications(
        node,
        bill,
        "bill.payment_failed",
        &format!("ntf_{event_id}"),
        true,
        serde_json::json!({ "reason": code.replace(':', "_"), "message": message }),
    );
    notify::writes_all(node, &ns).map_err(|e| e.to_string())
}

/// The print job for a placed physical order whose merchant has a printer, if not yet queued.
fn print_job(node: &Node, order: &str, merchant: &str) -> Result<Vec<Write>, String> {
    let Some(c) = node.checkout(order).map_err(|e| e.to_string())? else {
        return Ok(Vec::new());
    };
    if c.digital {
        return Ok(Vec::new());
    }
    let Some(printer) = node.merchants.get(merchant).and_then(|m| m.printer.clone()) else {
        return Ok(Vec::new());
    };
    let key = records::print_job_key(order);
    if node
        .store
        .get_raw(&key)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(Vec::new());
    }
    let job = PrintJob {
        order_id: order.to_string(),
        merchant: merchant.to_string(),
        printer,
        state: PrintState::Queued,
        attempts: 0,
        last_error: None,
        next_attempt_ms: now_ms(),
        printed_at: None,
        reprints: 0,
    };
    Ok(vec![
        store::json(key, &job),
        store::json(records::print_queue_key(job.next_attempt_ms, order), &()),
    ])
}
