//! Durability and operations of a running `onecard serve`, end to end over real HTTP: an
//! offline printer that comes back prints each slip once (after a SIGKILL too), a webhook
//! endpoint that is down and comes back receives every event with a stable event id, the
//! `/metrics` counters move, and SIGTERM or SIGKILL during a stream of requests loses nothing
//! that was answered 2xx.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::node::*;
use onecard_adapters::printer::decode;
use onecard_terminal::flow::{self, PaymentEnd, PaymentRequest};
use onecard_terminal::http_link::{HttpLink, LinkOptions};
use serde_json::{json, Value};

/// A config file next to `dir` with a fast tick and short retry back-offs.
fn fast_config(dir: &Path) -> PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        "[node]\ntick_interval_ms = 200\nprint_retry_max_ms = 500\nwebhook_retry_max_ms = 500\n",
    )
    .unwrap();
    path
}

fn get_order(node: &NodeProc, w: &World, order: &str) -> Answer {
    call(
        "GET",
        &node.url(&format!("/v1/orders/{order}")),
        Some(&w.api_key),
        None,
        None,
    )
}

/// Pays `order` at the reader and checks that the node placed it (`pending`); returns the
/// consumer's session token.
fn pay_ok(node: &NodeProc, w: &World, card: &mut MemoryCard, order: &str) -> String {
    let (end, answer) = pay(node, w, card, order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    let answer = answer.expect("the node's answer");
    let placed = answer.order.expect("order placed");
    assert_eq!(
        (placed.id.as_str(), placed.state.as_str()),
        (order, "pending")
    );
    answer.session.expect("a consumer session").token
}

/// The consumer confirms receipt: the order settles.
fn settle(node: &NodeProc, session: &str, order: &str) {
    let a = call(
        "POST",
        &node.url(&format!("/v1/consumer/orders/{order}/receipt")),
        Some(session),
        Some(&format!("receipt-{order}")),
        Some(&json!({"satisfied": true})),
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["state"], "settled", "{:?}", a.body);
}

/// The order ids on the slips a printer received (each slip decoded from ESC/POS).
fn slip_orders(printer: &Printer) -> Vec<String> {
    printer
        .slips()
        .iter()
        .map(|s| {
            let d = decode(s).expect("valid ESC/POS");
            d.lines
                .iter()
                .find_map(|l| l.trim().strip_prefix("Order: ").map(str::to_string))
                .unwrap_or_else(|| panic!("no order on the slip: {:?}", d.lines))
        })
        .collect()
}

/// Waits until `order`'s print status is `queued` after at least one failed attempt.
fn wait_queued_after_a_failure(node: &NodeProc, w: &World, order: &str) -> Value {
    eventually(30, || {
        let o = get_order(node, w, order);
        let p = &o.body["print"];
        (p["status"] == "queued"
            && p["attempts"].as_u64().unwrap_or(0) >= 1
            && p["last_error"].as_str().is_some_and(|e| !e.is_empty()))
        .then_some(o.body)
    })
    .unwrap_or_else(|| {
        panic!(
            "the print job is not retried: {:?}",
            get_order(node, w, order).body
        )
    })
}

#[test]
fn an_offline_printer_that_comes_back_prints_the_slip_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path());
    let printer_addr = free_port(); // nothing listens there yet
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&config));
    let w = setup(&node, Some(&printer_addr.to_string()), None);
    let order = create_order(&node, &w, "12.00", false);
    let mut card = card_for(&w, 0);
    pay_ok(&node, &w, &mut card, &order);

    // The printer is offline: the order stays valid, the job waits and says why.
    let seen = wait_queued_after_a_failure(&node, &w, &order);
    assert_eq!(seen["state"], "pending", "{seen:?}");
    // More attempts follow while it stays offline.
    let attempts = seen["print"]["attempts"].as_u64().unwrap();
    eventually(30, || {
        let o = get_order(&node, &w, &order);
        (o.body["print"]["attempts"].as_u64().unwrap_or(0) > attempts).then_some(())
    })
    .expect("the print job is retried");

    // The printer comes back on its address: one slip, then `printed`.
    let printer = Printer::start_on(printer_addr);
    let printed = eventually(30, || {
        let o = get_order(&node, &w, &order);
        (o.body["print"]["status"] == "printed").then_some(o.body)
    })
    .expect("the slip is printed once the printer is back");
    assert_eq!(printed["state"], "pending");
    eprintln!(
        "printer back: printed after {} attempts",
        printed["print"]["attempts"]
    );
    assert!(printed["print"]["attempts"].as_u64().unwrap() >= 2);
    assert!(printed["print"]["last_error"].is_null(), "{printed:?}");
    assert!(printed["print"]["printed_at"].is_u64(), "{printed:?}");
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        slip_orders(&printer),
        vec![order.clone()],
        "exactly one slip"
    );
    assert_eq!(
        get_order(&node, &w, &order).body["print"]["status"],
        "printed"
    );
}

#[test]
fn a_print_job_accepted_before_a_sigkill_is_printed_once_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path());
    let data = dir.path().join("data");
    let printer_addr = free_port();
    let mut node = NodeProc::start_with(&data, &[], Some(&config));
    let w = setup(&node, Some(&printer_addr.to_string()), None);
    let mut card = card_for(&w, 0);

    // One job already retried against the offline printer …
    let retried = create_order(&node, &w, "3.00", false);
    pay_ok(&node, &w, &mut card, &retried);
    wait_queued_after_a_failure(&node, &w, &retried);
    // … and one paid just before the kill (its job may not be queued yet: the outbox makes it
    // from the journal, after the restart if need be).
    let fresh = create_order(&node, &w, "4.00", false);
    pay_ok(&node, &w, &mut card, &fresh);
    node.kill();

    let printer = Printer::start_on(printer_addr);
    let node = NodeProc::start_with(&data, &[], Some(&config));
    for order in [&retried, &fresh] {
        let o = eventually(30, || {
            let o = get_order(&node, &w, order);
            (o.body["print"]["status"] == "printed").then_some(o.body)
        })
        .unwrap_or_else(|| panic!("{order} not printed: {:?}", get_order(&node, &w, order)));
        assert_eq!(o["state"], "pending", "{o:?}");
    }
    thread::sleep(Duration::from_secs(3));
    let mut slips = slip_orders(&printer);
    slips.sort();
    let mut expected = vec![retried, fresh];
    expected.sort();
    assert_eq!(slips, expected, "each order printed exactly once");
}

#[test]
fn a_webhook_endpoint_that_is_down_then_back_receives_every_event_with_a_stable_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path());
    let endpoint = Endpoint::start();
    endpoint.down.store(true, Ordering::SeqCst);
    let node = NodeProc::start_with(&dir.path().join("data"), &[], Some(&config));
    let w = setup(&node, None, Some(&endpoint.url()));
    let order = create_order(&node, &w, "25.00", false);
    let mut card = card_for(&w, 0);
    let session = pay_ok(&node, &w, &mut card, &order);
    settle(&node, &session, &order);

    // Down: the same event is attempted again and again, with the same id.
    eventually(30, || {
        let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
        for h in endpoint.hooks() {
            *by_id.entry(h.event_id).or_default() += 1;
        }
        (by_id.len() == 2 && by_id.values().all(|n| *n >= 2)).then_some(())
    })
    .unwrap_or_else(|| panic!("no retries: {:?}", endpoint.hooks()));
    assert!(endpoint.hooks().iter().all(|h| !h.accepted));

    // Back up: every event arrives.
    endpoint.down.store(false, Ordering::SeqCst);
    eventually(30, || {
        let hooks = endpoint.hooks();
        let ids: BTreeSet<&str> = hooks.iter().map(|h| h.event_id.as_str()).collect();
        ids.iter()
            .all(|id| hooks.iter().any(|h| h.accepted && h.event_id == *id))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not every event delivered: {:?}", endpoint.hooks()));
    // Once accepted, an event is not sent again.
    thread::sleep(Duration::from_secs(2));
    let hooks = endpoint.hooks();

    let mut by_id: BTreeMap<&str, Vec<&Hook>> = BTreeMap::new();
    for h in &hooks {
        assert!(!h.event_id.is_empty(), "no OneCard-Event-Id: {h:?}");
        assert!(signature_ok(&w.webhook_secret, h), "bad signature: {h:?}");
        by_id.entry(h.event_id.as_str()).or_default().push(h);
    }
    let mut types = Vec::new();
    for (id, tries) in &by_id {
        eprintln!("webhook {id}: {} attempts", tries.len());
        assert!(tries.len() >= 3, "{id}: {} attempts", tries.len());
        assert!(
            tries.iter().all(|t| t.body == tries[0].body),
            "{id}: the body changed between retries: {tries:?}"
        );
        assert_eq!(
            tries.iter().filter(|t| t.accepted).count(),
            1,
            "{id}: delivered again after a 2xx: {tries:?}"
        );
        assert!(tries.last().unwrap().accepted, "{id}: retried after a 2xx");
        let body: Value = serde_json::from_str(&tries[0].body).unwrap();
        assert_eq!(body["id"], *id);
        assert_eq!(body["data"]["order_id"], order.as_str());
        types.push(body["type"].as_str().unwrap().to_string());
    }
    types.sort();
    assert_eq!(types, ["order.placed", "order.settled"], "{hooks:?}");
}

#[test]
fn webhook_events_queued_before_a_sigkill_are_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = fast_config(dir.path());
    let data = dir.path().join("data");
    let endpoint = Endpoint::start();
    endpoint.down.store(true, Ordering::SeqCst);
    let mut node = NodeProc::start_with(&data, &[], Some(&config));
    let w = setup(&node, None, Some(&endpoint.url()));
    let order = create_order(&node, &w, "8.00", false);
    let mut card = card_for(&w, 0);
    let session = pay_ok(&node, &w, &mut card, &order);
    settle(&node, &session, &order);
    // Both events attempted at least once (so queued), then the node is killed.
    eventually(30, || {
        let ids: BTreeSet<String> = endpoint.hooks().into_iter().map(|h| h.event_id).collect();
        (ids.len() == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("events not attempted: {:?}", endpoint.hooks()));
    node.kill();
    let before: BTreeSet<String> = endpoint.hooks().into_iter().map(|h| h.event_id).collect();

    endpoint.down.store(false, Ordering::SeqCst);
    let _node = NodeProc::start_with(&data, &[], Some(&config));
    eventually(30, || {
        let hooks = endpoint.hooks();
        before
            .iter()
            .all(|id| hooks.iter().any(|h| h.accepted && &h.event_id == id))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("not delivered after the restart: {:?}", endpoint.hooks()));
    thread::sleep(Duration::from_secs(2));
    let hooks = endpoint.hooks();
    let ids: BTreeSet<String> = hooks.iter().map(|h| h.event_id.clone()).collect();
    assert_eq!(
        ids, before,
        "the same event ids after the restart, no new ones"
    );
    for id in &ids {
        let tries: Vec<&Hook> = hooks.iter().filter(|h| &h.event_id == id).collect();
        assert_eq!(tries.iter().filter(|h| h.accepted).count(), 1, "{tries:?}");
        assert!(tries.iter().all(|t| t.body == tries[0].body), "{tries:?}");
        assert!(tries.iter().all(|t| signature_ok(&w.webhook_secret, t)));
    }
}

/// The value of one sample line (`name` with its labels, exactly as exposed), 0 if absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn metrics(node: &NodeProc) -> String {
    let a = call("GET", &node.url("/metrics"), None, None, None);
    assert_eq!(a.status, 200);
    match a.body {
        Value::String(s) => s,
        other => panic!("/metrics is not text: {other:?}"),
    }
}

#[test]
fn metrics_counters_move_when_orders_are_created_and_settled() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    let created = "onecard_orders_created_total";
    let placed = "onecard_order_events_total{state=\"placed\"}";
    let settled = "onecard_order_events_total{state=\"settled\"}";
    let posts = "onecard_http_requests_total{route=\"/v1/orders\",method=\"POST\",status=\"201\"}";
    let before = metrics(&node);

    let orders: Vec<String> = (0..3)
        .map(|_| create_order(&node, &w, "5.00", false))
        .collect();
    let mut card = card_for(&w, 0);
    for o in &orders[..2] {
        let session = pay_ok(&node, &w, &mut card, o);
        settle(&node, &session, o);
    }

    let after = eventually(30, || {
        let m = metrics(&node);
        (sample(&m, settled) - sample(&before, settled) >= 2.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("no settled events counted:\n{}", metrics(&node)));
    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(delta(created), 3.0, "{after}");
    assert_eq!(delta(posts), 3.0, "{after}");
    assert_eq!(delta(placed), 2.0, "{after}");
    assert_eq!(delta(settled), 2.0, "{after}");
    for gauge in [
        "onecard_journal_records_total",
        "onecard_journal_entries_total",
        "onecard_journal_batch_commits",
        "onecard_node_store_commits_total",
        "onecard_journal_flushes_total",
    ] {
        assert!(
            after.contains(&format!("# TYPE {gauge} ")) && after.contains(&format!("\n{gauge} ")),
            "{gauge} missing:\n{after}"
        );
    }
    assert!(sample(&after, "onecard_journal_records_total") > 0.0);
}

#[test]
fn healthz_says_ok() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let a = call("GET", &node.url("/healthz"), None, None, None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["status"], "ok", "{:?}", a.body);
    assert!(a.body["journal_seq"].is_u64(), "{:?}", a.body);
}

/// A request that may fail at the transport (the node is going away): `Err` when no HTTP
/// answer came back.
fn try_call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    token: &str,
    idem: &str,
    body: &Value,
) -> Result<(u16, Value), String> {
    let result = agent
        .request(method, url)
        .set("Authorization", &format!("Bearer {token}"))
        .set("Idempotency-Key", idem)
        .set("Content-Type", "application/json")
        .send_string(&body.to_string());
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let text = resp.into_string().map_err(|e| e.to_string())?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// What the client threads saw.
#[derive(Default)]
struct Tally {
    /// Order ids answered 2xx.
    acked: Vec<String>,
    /// Every Idempotency-Key sent, with its body.
    keys: Vec<(String, Value)>,
    /// Answers that were not 2xx, by status; transport failures under 0.
    refused: BTreeMap<u16, usize>,
}

/// `threads` clients creating orders until `stop`.
fn order_creators(
    node: &NodeProc,
    w: &World,
    threads: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Mutex<Tally>>,
) -> Vec<thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (url, key) = (node.url("/v1/orders"), w.api_key.clone());
            let (stop, tally) = (stop.clone(), tally.clone());
            thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let idem = format!("stream-{t}-{i}");
                    let mut body = order_body("1.00", false);
                    body["reference"] = json!(idem);
                    i += 1;
                    tally
                        .lock()
                        .unwrap()
                        .keys
                        .push((idem.clone(), body.clone()));
                    match try_call(&agent, "POST", &url, &key, &idem, &body) {
                        Ok((status, b)) if (200..300).contains(&status) => {
                            let id = b["id"].as_str().expect("an order id").to_string();
                            tally.lock().unwrap().acked.push(id);
                        }
                        Ok((status, _)) => {
                            *tally.lock().unwrap().refused.entry(status).or_default() += 1;
                        }
                        Err(_) => {
                            *tally.lock().unwrap().refused.entry(0).or_default() += 1;
                            // The node is gone or going: do not spin.
                            thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
            })
        })
        .collect()
}

/// Every order answered 2xx is there; each key sent, retried after the restart, gives exactly
/// one order (the original answer if it was processed, a new order if not).
fn check_durable(node: &NodeProc, w: &World, tally: &Tally) {
    assert!(!tally.acked.is_empty(), "no request was answered");
    for id in &tally.acked {
        let o = get_order(node, w, id);
        assert_eq!(o.status, 200, "acknowledged order {id} lost: {:?}", o.body);
    }
    let acked: BTreeSet<&str> = tally.acked.iter().map(String::as_str).collect();
    assert_eq!(acked.len(), tally.acked.len(), "an order id answered twice");
    let agent = agent();
    let mut ids = BTreeSet::new();
    for (idem, body) in &tally.keys {
        let (status, b) = try_call(
            &agent,
            "POST",
            &node.url("/v1/orders"),
            &w.api_key,
            idem,
            body,
        )
        .unwrap_or_else(|e| panic!("retry of {idem}: {e}"));
        assert_eq!(status, 201, "retry of {idem}: {b:?}");
        ids.insert(b["id"].as_str().unwrap().to_string());
    }
    assert!(acked.iter().all(|id| ids.contains(*id)));
    // No key made two orders: the merchant has exactly one order per key.
    let mut listed = 0;
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("/v1/orders?limit=500&after={a}"),
            None => "/v1/orders?limit=500".to_string(),
        };
        let page = call("GET", &node.url(&q), Some(&w.api_key), None, None);
        assert_eq!(page.status, 200, "{:?}", page.body);
        listed += page.body["orders"].as_array().unwrap().len();
        match page.body["next_after"].as_str() {
            Some(a) => after = Some(a.to_string()),
            None => break,
        }
    }
    assert_eq!(listed, tally.keys.len(), "one order per Idempotency-Key");
}

fn verify(data: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_onecard"))
        .arg("verify")
        .arg("--data")
        .arg(data)
        .env("ONECARD_ISSUER_KEY", ISSUER_KEY)
        .env("ONECARD_DATA_KEY", DATA_KEY)
        .output()
        .expect("run onecard verify");
    assert!(
        out.status.success(),
        "verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Clients create orders; after a second, `signal`; the node drains and exits 0; after a
/// restart every order answered 2xx is there, and the data directory verifies.
fn signal_during_a_stream_of_requests(signal: i32) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProc::start(&data);
    let w = setup(&node, None, None);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients = order_creators(&node, &w, 4, &stop, &tally);

    thread::sleep(Duration::from_secs(1));
    let asked = std::time::Instant::now();
    let status = if signal == libc::SIGTERM {
        node.terminate()
    } else {
        node.signal_and_wait(signal)
    };
    let stopped_in = asked.elapsed();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let clean = eventually(10, || node.log().contains("stopped cleanly").then_some(()));
    assert!(status.success(), "exit {status:?}:\n{}", node.log());
    assert!(clean.is_some(), "{}", node.log());

    let mut node = NodeProc::start(&data);
    let tally = tally.lock().unwrap();
    eprintln!(
        "signal {signal}: stopped in {stopped_in:?}; {} acknowledged of {} sent; not acknowledged: {:?}",
        tally.acked.len(),
        tally.keys.len(),
        tally.refused
    );
    check_durable(&node, &w, &tally);
    assert!(node.terminate().success());
    verify(&data);
}

#[test]
fn sigterm_during_a_stream_of_requests_loses_nothing_answered_and_exits_zero() {
    signal_during_a_stream_of_requests(libc::SIGTERM);
}

#[test]
fn sigint_during_a_stream_of_requests_loses_nothing_answered_and_exits_zero() {
    signal_during_a_stream_of_requests(libc::SIGINT);
}

/// A payment through the reader that may fail at the transport: the placed order's state when
/// the node answered authorised.
fn try_pay(base: &str, w: &World, card: &mut MemoryCard, order: &str) -> Option<String> {
    let mut link = HttpLink::new(base, LinkOptions::default()).ok()?;
    let checkout = link.checkout(order).ok()?;
    let req = PaymentRequest {
        reader_id: w.reader_id.clone(),
        order_id: order.to_string(),
        amount_cents: checkout.amount_cents,
        delivery_address: checkout.delivery_address.clone(),
    };
    let mut keypad = Keypad {
        pin: PIN.into(),
        accept: true,
        shown: Vec::new(),
    };
    match flow::pay(card, &mut link, &mut keypad, &req, &mut rand::rngs::OsRng) {
        PaymentEnd::Authorised(_) => {
            let answer = link.last_answer()?;
            (answer.outcome == "authorised")
                .then(|| answer.order.as_ref().map(|o| o.state.clone()))
                .flatten()
        }
        _ => None,
    }
}

#[test]
fn sigkill_during_a_stream_of_api_calls_loses_no_acknowledged_order_or_payment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProc::start(&data);
    let w = setup(&node, None, None);
    // A second merchant whose orders a reader pays while `shop`'s clients create orders.
    let m = admin(
        &node,
        "/v1/admin/merchants",
        json!({"id": "kiosk", "name": "The Kiosk"}),
    );
    assert_eq!(m.status, 201, "{:?}", m.body);
    let kiosk = World {
        api_key: m.body["api_key"].as_str().unwrap().to_string(),
        ..w.clone()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients = order_creators(&node, &w, 3, &stop, &tally);
    // (created and answered 2xx, authorised and answered `pending`)
    let payer_seen: Arc<Mutex<(Vec<String>, Vec<String>)>> = Arc::default();
    let payer = {
        let (base, url, kiosk) = (node.base.clone(), node.url("/v1/orders"), kiosk.clone());
        let (stop, seen) = (stop.clone(), payer_seen.clone());
        thread::spawn(move || {
            let agent = agent();
            let mut card = card_for(&kiosk, 0);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let body = order_body("0.50", false);
                let idem = format!("pay-{i}");
                let Ok((201, b)) = try_call(&agent, "POST", &url, &kiosk.api_key, &idem, &body)
                else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let order = b["id"].as_str().unwrap().to_string();
                seen.lock().unwrap().0.push(order.clone());
                match try_pay(&base, &kiosk, &mut card, &order).as_deref() {
                    Some("pending") => seen.lock().unwrap().1.push(order),
                    Some(other) => panic!("{order} authorised as {other}"),
                    None => {}
                }
            }
        })
    };

    // Long enough for a few payments (each checks the PIN with Argon2).
    thread::sleep(Duration::from_secs(3));
    node.kill();
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    payer.join().unwrap();

    let mut node = NodeProc::start(&data);
    let (kiosk_created, paid) = payer_seen.lock().unwrap().clone();
    let tally = tally.lock().unwrap();
    eprintln!(
        "SIGKILL: {} acknowledged of {} sent; not acknowledged: {:?}; reader: {} created, {} paid",
        tally.acked.len(),
        tally.keys.len(),
        tally.refused,
        kiosk_created.len(),
        paid.len()
    );
    assert!(!paid.is_empty(), "no payment went through");
    for order in &kiosk_created {
        let o = get_order(&node, &kiosk, order);
        assert_eq!(
            o.status, 200,
            "acknowledged order {order} lost: {:?}",
            o.body
        );
    }
    for order in &paid {
        let o = get_order(&node, &kiosk, order);
        assert_eq!(
            o.body["state"], "pending",
            "authorised order {order} not placed after the restart: {:?}",
            o.body
        );
    }
    check_durable(&node, &w, &tally);
    assert!(node.terminate().success());
    verify(&data);
}

/// A crash between steps 3 and 4: the authorisation is in the journal, the order is not placed.
/// The engine alone plays steps 2-3 on the stopped node's data directory (as the node does up
/// to the moment it would place the order); the restarted node's outbox finds the
/// authorisation in the journal and places the order, which then prints.
#[test]
fn an_authorisation_journaled_before_a_crash_is_placed_after_the_restart() {
    use std::sync::Arc;

    use onecard_engine::cards::IssuerKey;
    use onecard_engine::{DataKey, Engine, EngineConfig, SimBank, SimBankPort};
    use onecard_terminal::flow::{self, PaymentEnd, PaymentRequest};
    use onecard_testkit::EngineLink;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let printer = Printer::start();
    let mut node = NodeProc::start(&data);
    let w = setup(&node, Some(&printer.addr.to_string()), None);
    let order = create_order(&node, &w, "12.00", false);
    node.kill();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (end, placed_before) = actix_rt::System::new().block_on(async {
        let cfg = EngineConfig {
            issuer_key: Some(IssuerKey::from_bytes([0x11; 32])),
            data_key: Some(DataKey::from_bytes([0x22; 32])),
            ..EngineConfig::default()
        };
        let bank = SimBank::open(&data).unwrap();
        let engine = Engine::open(&data, cfg, Arc::new(SimBankPort(bank)))
            .await
            .unwrap();
        let request = PaymentRequest {
            reader_id: w.reader_id.clone(),
            order_id: order.clone(),
            amount_cents: 1200,
            delivery_address: HOME.into(),
        };
        let mut keypad = Keypad {
            pin: PIN.into(),
            accept: true,
            shown: Vec::new(),
        };
        let end = flow::pay(
            &mut card_for(&w, 0),
            &mut EngineLink {
                engine: &engine,
                peer: "127.0.0.1".parse().unwrap(),
                now,
                at_reader: None,
            },
            &mut keypad,
            &request,
            &mut rand::rngs::OsRng,
        );
        let placed = engine.order(&order).await.unwrap().is_some();
        engine.close().await.unwrap();
        (end, placed)
    });
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    assert!(!placed_before, "nothing placed before the restart");

    let node = NodeProc::start(&data);
    let get = || {
        call(
            "GET",
            &node.url(&format!("/v1/orders/{order}")),
            Some(&w.api_key),
            None,
            None,
        )
        .body
    };
    let o = eventually(30, || {
        let o = get();
        (o["state"] == "pending").then_some(o)
    })
    .unwrap_or_else(|| {
        panic!(
            "the authorised order is placed: {:?}\n{}",
            get(),
            node.log()
        )
    });
    assert_eq!(o["amount"], "12.00");
    eventually(30, || (get()["print"]["status"] == "printed").then_some(()))
        .expect("and its slip printed");
    assert_eq!(printer.slips().len(), 1);
}
