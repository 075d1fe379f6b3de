//! The adapters' workers: the print queue (delivery slips to the merchants' printers, ESC/POS
//! over TCP) and the webhook deliveries (HMAC-signed POSTs to the merchants). Both work from
//! the node store's queues (`pq/`, `wq/`), retry with back-off for as long as it takes, and
//! record every attempt; neither ever holds up the API.
//!
//! Exactly-once printing: a slip is marked printed, and taken off the queue, in one flushed
//! write right after the printer took all its bytes. Only a crash between those two moments
//! prints it a second time; the merchant can also ask for a reprint.

use std::collections::HashSet;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use onecard_adapters::printer::{print_to, DeliverySlip};
use onecard_engine::Amount;
use parking_lot::{Condvar, Mutex};
use sha2::Sha256;

use crate::records::{self, Checkout, DeliveryState, PrintJob, PrintState, WebhookDelivery};
use crate::state::{now_ms, Node};
use crate::store::Write;

/// Wakes the workers when work was queued; counts what waits.
#[derive(Default)]
pub struct Wake {
    generation: Mutex<u64>,
    cv: Condvar,
    print_depth: AtomicUsize,
    webhook_depth: AtomicUsize,
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

    /// (slips waiting to print, webhook events waiting to be delivered).
    pub fn depths(&self) -> (usize, usize) {
        (
            self.print_depth.load(Ordering::Relaxed),
            self.webhook_depth.load(Ordering::Relaxed),
        )
    }
}

/// Doubling back-off from 250 ms up to `max_ms`.
pub fn backoff_ms(attempts: u32, max_ms: u64) -> u64 {
    let exp = attempts.saturating_sub(1).min(20);
    (250u64 << exp).min(max_ms.max(250))
}

/// The release condition in words, for the slip: never the special code itself.
pub fn release_words(release: &serde_json::Value) -> String {
    match onecard_engine::engine::parse_release(release) {
        Ok(onecard_engine::Release::Receipt) => "on receipt".into(),
        Ok(onecard_engine::Release::Code(_)) => "with the consumer's delivery code".into(),
        Ok(onecard_engine::Release::Time { after_secs }) => {
            if after_secs % 86_400 == 0 {
                format!("automatically after {} day(s)", after_secs / 86_400)
            } else {
                format!("automatically after {after_secs} s")
            }
        }
        Err(_) => "see the order".into(),
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
        release: release_words(&c.release),
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

/// Prints every due slip once; returns when the next queued one is due.
fn print_pass(node: &Node) -> Result<Option<u64>, String> {
    let queued = node
        .store
        .scan::<()>("pq/", None, 10_000)
        .map_err(|e| e.to_string())?;
    node.work_wake
        .print_depth
        .store(queued.len(), Ordering::Relaxed);
    let mut next_due: Option<u64> = None;
    let mut by_printer: std::collections::BTreeMap<String, Vec<(String, PrintJob, Checkout)>> =
        Default::default();
    for (key, ()) in queued {
        let order = &key[3..];
        let job = node
            .store
            .get::<PrintJob>(&records::print_job_key(order))
            .map_err(|e| e.to_string())?;
        let Some(job) = job.filter(|j| j.state == PrintState::Queued) else {
            // Printed or gone: not queued any more.
            node.store
                .commit_blocking(vec![Write::remove(key.clone())])
                .map_err(|e| e.to_string())?;
            continue;
        };
        if job.next_attempt_ms > now_ms() {
            next_due = min_due(next_due, Some(job.next_attempt_ms));
            continue;
        }
        let Some(checkout) = node
            .store
            .get::<Checkout>(&records::checkout_key(order))
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        by_printer
            .entry(job.printer.clone())
            .or_default()
            .push((key, job, checkout));
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

/// One printer's due slips, in order; stops at the first failure (the rest would fail too).
fn print_on_one_printer(
    node: &Node,
    jobs: &[(String, PrintJob, Checkout)],
) -> Result<Option<u64>, String> {
    for (key, job, checkout) in jobs {
        if node.is_stopping() {
            return Ok(None);
        }
        let mut job = job.clone();
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
        let mut writes = Vec::new();
        let failed_until = match result {
            Ok(()) => {
                node.metrics.prints_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(order = %order, printer = %job.printer, attempts = job.attempts, "delivery slip printed");
                job.state = PrintState::Printed;
                job.printed_at = Some(now_ms() / 1000);
                job.last_error = None;
                writes.push(Write::remove(key.clone()));
                None
            }
            Err(e) => {
                node.metrics.prints_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(order = %order, printer = %job.printer, attempts = job.attempts, error = %e, "printer unavailable; will retry");
                job.last_error = Some(e);
                job.next_attempt_ms =
                    now_ms() + backoff_ms(job.attempts, node.settings.print_retry_max_ms);
                Some(job.next_attempt_ms)
            }
        };
        writes.push(Write::json(records::print_job_key(order), &job));
        node.store
            .commit_blocking(writes)
            .map_err(|e| e.to_string())?;
        if failed_until.is_some() {
            return Ok(failed_until);
        }
    }
    Ok(None)
}

/// `OneCard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: u64, body: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
        <Hmac<Sha256> as Mac>::new_from_slice(b"-").expect("HMAC takes any key")
    });
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    format!(
        "t={t},v1={}",
        onecard_terminal::wire::to_hex(&mac.finalize().into_bytes())
    )
}

/// Dispatches due webhook deliveries to `workers` threads until the node stops.
pub fn webhook_loop(node: Arc<NodeRef>, workers: usize) {
    let (tx, rx) = crossbeam_channel::bounded::<String>(workers * 4);
    let in_progress: Arc<Mutex<HashSet<String>>> = Arc::default();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(node.0.settings.webhook_timeout_ms))
        .redirects(0)
        .build();
    let mut threads = Vec::new();
    for i in 0..workers.max(1) {
        let (node, rx, in_progress, agent) =
            (node.clone(), rx.clone(), in_progress.clone(), agent.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("webhook-{i}"))
                .spawn(move || {
                    for event in rx {
                        if let Err(e) = deliver(&node.0, &agent, &event) {
                            tracing::error!(error = %e, event = %event, "webhook bookkeeping failed");
                        }
                        in_progress.lock().remove(&event);
                        node.0.work_wake.notify();
                    }
                })
                .expect("spawn a webhook thread"),
        );
    }
    let n = &node.0;
    let mut seen = n.work_wake.generation();
    while !n.is_stopping() {
        let mut next_due: Option<u64> = None;
        match n.store.scan::<()>("wq/", None, 10_000) {
            Err(e) => tracing::error!(error = %e, "webhook queue scan failed"),
            Ok(queued) => {
                n.work_wake
                    .webhook_depth
                    .store(queued.len(), Ordering::Relaxed);
                for (key, ()) in queued {
                    let event = key[3..].to_string();
                    if in_progress.lock().contains(&event) {
                        continue;
                    }
                    let due = n
                        .store
                        .get::<WebhookDelivery>(&records::webhook_key(&event))
                        .ok()
                        .flatten()
                        .map(|d| d.next_attempt_ms)
                        .unwrap_or(0);
                    if due > now_ms() {
                        next_due = Some(next_due.map_or(due, |d| d.min(due)));
                        continue;
                    }
                    in_progress.lock().insert(event.clone());
                    if tx.try_send(event.clone()).is_err() {
                        // All workers busy: try again on the next pass.
                        in_progress.lock().remove(&event);
                        next_due = Some(now_ms() + 20);
                        break;
                    }
                }
            }
        }
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

fn deliver(node: &Node, agent: &ureq::Agent, event: &str) -> Result<(), String> {
    let key = records::webhook_key(event);
    let queue_key = records::webhook_queue_key(event);
    let Some(mut d) = node
        .store
        .get::<WebhookDelivery>(&key)
        .map_err(|e| e.to_string())?
    else {
        return node
            .store
            .commit_blocking(vec![Write::remove(queue_key)])
            .map_err(|e| e.to_string());
    };
    if d.state == DeliveryState::Delivered {
        return node
            .store
            .commit_blocking(vec![Write::remove(queue_key)])
            .map_err(|e| e.to_string());
    }
    let secret = node
        .merchants
        .get(&d.merchant)
        .map(|m| m.webhook_secret.clone())
        .unwrap_or_default();
    let t = now_ms() / 1000;
    let result = agent
        .post(&d.url)
        .set("Content-Type", "application/json")
        .set("OneCard-Event-Id", &d.event_id)
        .set("OneCard-Signature", &signature(&secret, t, &d.payload))
        .send_string(&d.payload);
    d.attempts += 1;
    let mut writes = Vec::new();
    match result {
        Ok(r) if (200..300).contains(&r.status()) => {
            node.metrics.webhooks_ok.fetch_add(1, Ordering::Relaxed);
            d.state = DeliveryState::Delivered;
            d.delivered_at = Some(t);
            d.last_error = None;
            writes.push(Write::remove(queue_key));
        }
        other => {
            node.metrics.webhooks_failed.fetch_add(1, Ordering::Relaxed);
            let e = match other {
                Ok(r) => format!("status {}", r.status()),
                Err(ureq::Error::Status(code, _)) => format!("status {code}"),
                Err(e) => e.to_string(),
            };
            tracing::warn!(event = %d.event_id, merchant = %d.merchant, attempts = d.attempts, error = %e, "webhook not delivered; will retry");
            d.last_error = Some(e);
            d.next_attempt_ms =
                now_ms() + backoff_ms(d.attempts, node.settings.webhook_retry_max_ms);
        }
    }
    writes.push(Write::json(key, &d));
    node.store
        .commit_blocking(writes)
        .map_err(|e| e.to_string())
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
    fn signature_is_hmac_sha256_of_time_and_body() {
        // Checked against: printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_x
        let s = signature("whsec_x", 1_700_000_000, "{\"a\":1}");
        assert_eq!(
            s,
            "t=1700000000,v1=b3438763ab46d9634b9844c8722818eaf523f803db1327484c6067462a5fd6d1"
        );
    }

    #[test]
    fn the_slip_never_shows_the_release_code() {
        let w = release_words(&serde_json::json!({"on":"code","code":"SECRET-42"}));
        assert!(!w.contains("SECRET"));
        assert_eq!(
            release_words(&serde_json::json!({"on":"time","after_secs":172800})),
            "automatically after 2 day(s)"
        );
    }
}
