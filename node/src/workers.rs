//! The adapters' workers: the print queue (delivery slips to the merchants' printers, ESC/POS
//! over TCP) and the webhook deliveries (the notification outbox: merchants' order events and
//! every [`crate::notify::Notification`] to a recipient with an endpoint, sent through the
//! [`Notifier`] port, HMAC-signed). Both work from
//! the node store's queues (`pq/`, `wq/`), keyed by when each item is due, so that a pass reads
//! only what is due however much waits; they retry with back-off and record every attempt, and
//! neither ever holds up the API.
//!
//! Fairness: when a printer or a merchant's endpoint fails, its other due items in the pass are
//! moved to its next attempt time instead of being tried (and failing) one by one, so one
//! offline printer or endpoint cannot starve the others.
//!
//! Exactly-once printing: a slip is marked printed, and taken off the queue, in one flushed
//! write right after the printer took all its bytes. Only a crash between those two moments
//! prints it a second time; the merchant can also ask for a reprint.

use std::collections::HashSet;
use std::net::ToSocketAddrs;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use onecard_adapters::printer::{print_to, DeliverySlip};
use onecard_engine::Amount;
use parking_lot::{Condvar, Mutex};

use crate::notify::{Notifier, WebhookNotifier};
use crate::records::{self, Checkout, DeliveryState, PrintJob, PrintState, WebhookDelivery};
use crate::state::{now_ms, Node};
use crate::store::{self, Write};

/// Wakes the workers when work was queued.
#[derive(Default)]
pub struct Wake {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Wake {
    pub fn notify(&self) {
        *self.generation.lock() += 1;
        self.cv.notify_all();
    }

    /// Waits until notified after `seen`, or `timeout`; returns the generation now.
    fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let mut g = self.generation.lock();
        if *g == seen {
            self.cv.wait_for(&mut g, timeout);
        }
        *g
    }

    fn generation(&self) -> u64 {
        *self.generation.lock()
    }
}

/// Items read per pass of a queue.
const PASS: usize = 1000;

/// The due queue keys under `prefix` (at most [`PASS`]), and when the next one not yet due is.
fn due_keys(node: &Node, prefix: &str) -> Result<(Vec<String>, Option<u64>), String> {
    let now = now_ms();
    let (due, first_later) = node
        .store
        .keys_while(prefix, PASS, |k| match records::parse_queue_key(k) {
            Some((due, _)) => due <= now,
            None => true,
        })
        .map_err(|e| e.to_string())?;
    let next = first_later.and_then(|k| records::parse_queue_key(&k).map(|(d, _)| d));
    Ok((due, next))
}

/// How many slips wait to print and webhook events wait to be delivered (counted up to a
/// million each), for /metrics.
pub fn queue_depths(node: &Node) -> (usize, usize) {
    (
        node.store.count_prefix(records::PRINT_QUEUE, 1_000_000),
        node.store.count_prefix(records::WEBHOOK_QUEUE, 1_000_000),
    )
}

/// Doubling back-off from 250 ms up to `max_ms`.
pub fn backoff_ms(attempts: u32, max_ms: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(20);
    (250u64 << exp).min(max_ms.max(250))
}

/// The release condition in words, for the slip: never the special code itself.
pub fn release_words(release: &onecard_engine::Release) -> String {
    match release {
        onecard_engine::Release::Receipt => "on receipt".into(),
        onecard_engine::Release::Code(_) => "with the consumer's delivery code".into(),
        onecard_engine::Release::Time { after_secs } => {
            if after_secs % 86_400 == 0 {
                format!("automatically after {} day(s)", after_secs / 86_400)
            } else {
                format!("automatically after {after_secs} s")
            }
        }
    }
}

/// The delivery slip of a checkout: only what F22 allows.
pub fn slip_of(node: &Node, c: &Checkout) -> DeliverySlip {
    DeliverySlip {
        order_id: c.order_id.clone(),
        merchant: node
            .merchants
            .get(&c.merchant)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| c.merchant.clone()),
        amount: Amount::from_cents(c.amount_cents).to_string(),
        currency: c.currency.clone(),
        delivery_name: c.delivery.name.clone(),
        delivery_address: c.delivery.address.clone(),
        delivery_phone: c.delivery.phone.clone(),
        items: c
            .items
            .iter()
            .map(|i| (i.name.clone(), i.quantity))
            .collect(),
        release: release_words(&c.release.0),
    }
}

/// Runs the print queue until the node stops.
pub fn print_loop(node: Arc<NodeRef>) {
    let node = &node.0;
    let mut seen = node.work_wake.generation();
    while !node.is_stopping() {
        let next_due = match print_pass(node) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "print queue pass failed");
                Some(now_ms() + 1000)
            }
        };
        let wait = next_due
            .map(|d| d.saturating_sub(now_ms()).clamp(1, 1000))
            .unwrap_or(1000);
        seen = node.work_wake.wait(seen, Duration::from_millis(wait));
    }
}

/// The node, shared with the worker threads.
pub struct NodeRef(pub actix_web::web::Data<Node>);

/// Printers served at once in one pass: each printer's slips go one after the other, different
/// printers in parallel, so that a printer that hangs until the timeout holds up only its own
/// slips.
const PRINTERS_AT_ONCE: usize = 32;

fn min_due(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A due print job: its queue key, the job, the order's checkout.
type DueSlip = (String, PrintJob, std::sync::Arc<Checkout>);

/// Prints every due slip once; returns when the next queued one is due.
fn print_pass(node: &Node) -> Result<Option<u64>, String> {
    let (due, mut next_due) = due_keys(node, records::PRINT_QUEUE)?;
    let mut by_printer: std::collections::BTreeMap<String, Vec<DueSlip>> = Default::default();
    let mut stale = Vec::new();
    for key in due {
        let Some((_, order)) = records::parse_queue_key(&key) else {
            stale.push(store::remove(key));
            continue;
        };
        let job = node
            .store
            .get::<PrintJob>(&records::print_job_key(order))
            .map_err(|e| e.to_string())?;
        let Some(job) = job.filter(|j| j.state == PrintState::Queued) else {
            // Printed or gone: not queued any more.
            stale.push(store::remove(key));
            continue;
        };
        let Some(checkout) = node.checkout(order).map_err(|e| e.to_string())? else {
            tracing::error!(order = %order, "a print job without its order: dropped from the queue");
            stale.push(store::remove(key));
            continue;
        };
        by_printer
            .entry(job.printer.clone())
            .or_default()
            .push((key, job, checkout));
    }
    if !stale.is_empty() {
        node.store
            .commit_blocking(stale)
            .map_err(|e| e.to_string())?;
    }
    let groups: Vec<_> = by_printer.into_values().collect();
    for chunk in groups.chunks(PRINTERS_AT_ONCE) {
        let dues = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|jobs| scope.spawn(move || print_on_one_printer(node, jobs)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a print thread panicked".into()))
                })
                .collect::<Vec<_>>()
        });
        for due in dues {
            next_due = min_due(next_due, due?);
        }
    }
    Ok(next_due)
}

/// The writes that move a queued job to a new due time.
fn requeue_print(key: &str, job: &mut PrintJob, due_ms: u64) -> Vec<Write> {
    job.next_attempt_ms = due_ms;
    vec![
        store::remove(key.to_string()),
        store::json(records::print_queue_key(due_ms, &job.order_id), &()),
        store::json(records::print_job_key(&job.order_id), &*job),
    ]
}

/// One printer's due slips, in order. At the first failure the rest wait for the printer's
/// next attempt (they would fail too); returns that time.
fn print_on_one_printer(node: &Node, jobs: &[DueSlip]) -> Result<Option<u64>, String> {
    for (i, (key, job, checkout)) in jobs.iter().enumerate() {
        if node.is_stopping() {
            return Ok(None);
        }
        let mut job = job.clone();
        // The merchant's printer as it is now: a printer replaced while slips waited gets them.
        if let Some(p) = node
            .merchants
            .get(&job.merchant)
            .and_then(|m| m.printer.clone())
        {
            job.printer = p;
        }
        let order = checkout.order_id.as_str();
        let bytes = slip_of(node, checkout).to_escpos();
        let timeout = Duration::from_millis(node.settings.print_timeout_ms);
        let result = job
            .printer
            .to_socket_addrs()
            .map_err(|e| format!("printer {}: {e}", job.printer))
            .and_then(|mut a| {
                a.next()
                    .ok_or_else(|| format!("printer {}: no address", job.printer))
            })
            .and_then(|addr| print_to(addr, &bytes, timeout).map_err(|e| e.to_string()));
        job.attempts += 1;
        match result {
            Ok(()) => {
                node.metrics.prints_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(order = %order, printer = %job.printer, attempts = job.attempts, "delivery slip printed");
                job.state = PrintState::Printed;
                job.printed_at = Some(now_ms() / 1000);
                job.last_error = None;
                node.store
                    .commit_blocking(vec![
                        store::remove(key.clone()),
                        store::json(records::print_job_key(order), &job),
                    ])
                    .map_err(|e| e.to_string())?;
            }
            Err(e) => {
                node.metrics.prints_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(order = %order, printer = %job.printer, attempts = job.attempts, error = %e, "printer unavailable; will retry");
                job.last_error = Some(e);
                let retry_at =
                    now_ms() + backoff_ms(job.attempts, node.settings.print_retry_max_ms);
                let mut writes = requeue_print(key, &mut job, retry_at);
                // The printer's other due slips wait for the same moment, untried.
                for (later_key, later_job, _) in &jobs[i + 1..] {
                    let mut later = later_job.clone();
                    writes.extend(requeue_print(later_key, &mut later, retry_at));
                }
                node.store
                    .commit_blocking(writes)
                    .map_err(|e| e.to_string())?;
                return Ok(Some(retry_at));
            }
        }
    }
    Ok(None)
}

pub use crate::notify::signature;

/// Recipients whose endpoint failed (by [`circuit`]), and until when their events wait.
type Circuits = Arc<Mutex<std::collections::HashMap<String, u64>>>;

/// The circuit of a recipient's endpoint: a merchant and a consumer of the same id are two.
fn circuit(d: &WebhookDelivery) -> String {
    format!("{}:{}", d.party.as_str(), d.recipient)
}

/// Dispatches due webhook deliveries to `workers` threads until the node stops, sending them
/// through the webhook adapter.
pub fn webhook_loop(node: Arc<NodeRef>, workers: usize) {
    let notifier = Arc::new(WebhookNotifier::new(Duration::from_millis(
        node.0.settings.webhook_timeout_ms,
    )));
    delivery_loop(node, workers, notifier)
}

/// Dispatches due deliveries to `workers` threads until the node stops, sending them through
/// `notifier`.
pub fn delivery_loop(node: Arc<NodeRef>, workers: usize, notifier: Arc<dyn Notifier>) {
    let (tx, rx) = crossbeam_channel::bounded::<(String, String)>(workers * 4);
    let in_progress: Arc<Mutex<HashSet<String>>> = Arc::default();
    let circuits: Circuits = Arc::default();
    let mut threads = Vec::new();
    for i in 0..workers.max(1) {
        let (node, rx, in_progress, circuits, notifier) = (
            node.clone(),
            rx.clone(),
            in_progress.clone(),
            circuits.clone(),
            notifier.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("webhook-{i}"))
            .spawn(move || {
                for (key, event) in rx {
                    match deliver(&node.0, notifier.as_ref(), &key, &event) {
                        Ok(Attempt::Failed { circuit, retry_at }) => {
                            circuits.lock().insert(circuit, retry_at);
                        }
                        Ok(Attempt::Delivered { circuit }) => {
                            circuits.lock().remove(&circuit);
                        }
                        Ok(Attempt::Nothing) => {}
                        Err(e) => {
                            tracing::error!(error = %e, event = %event, "webhook bookkeeping failed")
                        }
                    }
                    in_progress.lock().remove(&event);
                    node.0.work_wake.notify();
                }
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => tracing::error!(error = %e, "cannot start a webhook thread"),
        }
    }
    let n = &node.0;
    let mut seen = n.work_wake.generation();
    while !n.is_stopping() {
        let next_due = match webhook_pass(n, &tx, &in_progress, &circuits) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "webhook queue pass failed");
                Some(now_ms() + 1000)
            }
        };
        let wait = next_due
            .map(|d| d.saturating_sub(now_ms()).clamp(1, 1000))
            .unwrap_or(1000);
        seen = n.work_wake.wait(seen, Duration::from_millis(wait));
    }
    drop(tx);
    for t in threads {
        let _ = t.join();
    }
}

/// Hands every due event to the workers, except those of recipients whose endpoint just
/// failed: those are moved to the endpoint's next attempt time. Returns when to look again.
fn webhook_pass(
    n: &Node,
    tx: &crossbeam_channel::Sender<(String, String)>,
    in_progress: &Mutex<HashSet<String>>,
    circuits: &Circuits,
) -> Result<Option<u64>, String> {
    let (due, mut next_due) = due_keys(n, records::WEBHOOK_QUEUE)?;
    let mut moved = Vec::new();
    for key in due {
        let Some((_, event)) = records::parse_queue_key(&key) else {
            moved.push(store::remove(key));
            continue;
        };
        let event = event.to_string();
        if in_progress.lock().contains(&event) {
            continue;
        }
        let Some(mut d) = n
            .store
            .get::<WebhookDelivery>(&records::webhook_key(&event))
            .map_err(|e| e.to_string())?
            .filter(|d| d.state == DeliveryState::Pending)
        else {
            moved.push(store::remove(key));
            continue;
        };
        let open_until = circuits.lock().get(&circuit(&d)).copied();
        if let Some(until) = open_until.filter(|u| *u > now_ms()) {
            d.next_attempt_ms = until;
            moved.push(store::remove(key));
            moved.push(store::json(records::webhook_queue_key(until, &event), &()));
            moved.push(store::json(records::webhook_key(&event), &d));
            next_due = min_due(next_due, Some(until));
            continue;
        }
        in_progress.lock().insert(event.clone());
        if tx.try_send((key, event.clone())).is_err() {
            // Every worker is busy: the rest waits for the next pass.
            in_progress.lock().remove(&event);
            next_due = Some(now_ms() + 20);
            break;
        }
    }
    if !moved.is_empty() {
        n.store.commit_blocking(moved).map_err(|e| e.to_string())?;
    }
    Ok(next_due)
}

enum Attempt {
    Delivered { circuit: String },
    Failed { circuit: String, retry_at: u64 },
    Nothing,
}

fn deliver(
    node: &Node,
    notifier: &dyn Notifier,
    key: &str,
    event: &str,
) -> Result<Attempt, String> {
    let record_key = records::webhook_key(event);
    let Some(mut d) = node
        .store
        .get::<WebhookDelivery>(&record_key)
        .map_err(|e| e.to_string())?
        .filter(|d| d.state == DeliveryState::Pending)
    else {
        node.store
            .commit_blocking(vec![store::remove(key.to_string())])
            .map_err(|e| e.to_string())?;
        return Ok(Attempt::Nothing);
    };
    let give_up_ms = node
        .settings
        .webhook_give_up_after_secs
        .saturating_mul(1000);
    if d.created_ms > 0 && now_ms().saturating_sub(d.created_ms) > give_up_ms {
        node.metrics
            .webhooks_abandoned
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(event = %d.event_id, party = d.party.as_str(), recipient = %d.recipient, attempts = d.attempts, "webhook abandoned: not delivered in time");
        d.state = DeliveryState::Abandoned;
        node.store
            .commit_blocking(vec![
                store::remove(key.to_string()),
                store::json(record_key, &d),
            ])
            .map_err(|e| e.to_string())?;
        return Ok(Attempt::Nothing);
    }
    // The recipient's endpoint and secret as they are now: an endpoint changed while events
    // waited gets them.
    let endpoint =
        match crate::notify::endpoint_of(node, d.party, &d.recipient).map_err(|e| e.to_string())? {
            Some(e) => {
                d.url = e.url.clone();
                e
            }
            None => crate::notify::Endpoint {
                url: d.url.clone(),
                secret: String::new(),
            },
        };
    let result = notifier.send(&endpoint, &d.event_id, &d.payload);
    d.attempts += 1;
    let mut writes = vec![store::remove(key.to_string())];
    let attempt = match result {
        Ok(()) => {
            node.metrics.webhooks_ok.fetch_add(1, Ordering::Relaxed);
            d.state = DeliveryState::Delivered;
            d.delivered_at = Some(now_ms() / 1000);
            d.last_error = None;
            Attempt::Delivered {
                circuit: circuit(&d),
            }
        }
        Err(e) => {
            node.metrics.webhooks_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(event = %d.event_id, party = d.party.as_str(), recipient = %d.recipient, attempts = d.attempts, error = %e, "webhook not delivered; will retry");
            d.last_error = Some(e.0);
            d.next_attempt_ms =
                now_ms() + backoff_ms(d.attempts, node.settings.webhook_retry_max_ms);
            writes.push(store::json(
                records::webhook_queue_key(d.next_attempt_ms, event),
                &(),
            ));
            Attempt::Failed {
                circuit: circuit(&d),
                retry_at: d.next_attempt_ms,
            }
        }
    };
    writes.push(store::json(record_key, &d));
    node.store
        .commit_blocking(writes)
        .map_err(|e| e.to_string())?;
    Ok(attempt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        assert_eq!(backoff_ms(1, 60_000), 250);
        assert_eq!(backoff_ms(2, 60_000), 500);
        assert_eq!(backoff_ms(5, 60_000), 4000);
        assert_eq!(backoff_ms(50, 60_000), 60_000);
    }

    #[test]
    fn the_slip_never_shows_the_release_code() {
        let w = release_words(&onecard_engine::Release::Code("SECRET-42".into()));
        assert!(!w.contains("SECRET"));
        assert_eq!(
            release_words(&onecard_engine::Release::Time {
                after_secs: 172_800
            }),
            "automatically after 2 day(s)"
        );
    }
}
