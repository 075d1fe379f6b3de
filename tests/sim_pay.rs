//! `onecard-sim pay` end to end: simulated readers pay against a real `onecard serve` over HTTP
//! for a few seconds, every planted wrong PIN and foreign card is refused, nothing else fails,
//! and the node's own counters (`/metrics`) agree with what the simulator counted.

mod common;

use std::process::Command;

use common::node::*;
use serde_json::Value;

/// A counter of the node's `/metrics` text: the sample whose name and labels are `series`.
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().expect("a number") as u64)
        .unwrap_or(0)
}

fn n(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} is not a count in {v:#}"))
}

#[test]
fn simulated_readers_pay_and_the_node_counts_the_same_payments() {
    let sim = common::onecard_sim();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));

    let out = Command::new(&sim)
        .args(["pay", "--node", &node.base, "--json"])
        .args(["--readers", "4", "--duration", "3", "--warmup", "0.5"])
        // Enough planted refusals and address questions to see each in a few seconds.
        .args(["--wrong-pin-share", "0.2", "--foreign-reader-share", "0.2"])
        .args(["--address-change-share", "0.2"])
        .args(["--node-pid", &node.pid().to_string()])
        .env("ONECARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("onecard-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last).unwrap_or_else(|e| {
        panic!(
            "the last line is not JSON ({e}): {stdout}\nstderr: {stderr}\nnode: {}",
            node.log()
        )
    });
    assert!(
        out.status.success(),
        "exit {:?}: {v:#}\nstderr: {stderr}",
        out.status
    );

    // What the simulator saw.
    let payments = n(&v, "/payments");
    assert!(payments > 0, "{v:#}");
    assert!(v["payments_per_sec"].as_f64().unwrap() > 0.0, "{v:#}");
    assert_eq!(n(&v, "/errors"), 0, "{v:#}");
    assert_eq!(v["refusals_ok"], true, "{v:#}");
    for planted in ["wrong_pin", "foreign_reader"] {
        let p = n(&v, &format!("/planted/{planted}/planted"));
        assert!(p > 0, "no {planted} planted: {v:#}");
        assert_eq!(p, n(&v, &format!("/planted/{planted}/refused")), "{v:#}");
    }
    assert!(n(&v, "/address_confirmations") > 0, "{v:#}");
    for key in [
        "p50_ms",
        "p99_ms",
        "client_cpu_us_per_payment",
        "node_cpu_secs",
    ] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {v:#}");
    }
    for step in [
        "create_order",
        "checkout",
        "swipe",
        "authenticate",
        "receipt",
        "payment",
    ] {
        assert!(n(&v, &format!("/steps/{step}/count")) > 0, "{step}: {v:#}");
    }
    assert_eq!(n(&v, "/readers"), 4);
    assert!(v["machine"]["cores"].as_u64().unwrap() > 0);

    // The node's view of the same run (its counters cover the whole run, warm-up included, as
    // the simulator's totals do). Orders are counted by the outbox as it follows the journal.
    let t = &v["totals"];
    let total_payments = n(t, "/payments");
    assert!(total_payments >= payments);
    assert_eq!(
        n(t, "/settled"),
        total_payments,
        "every placed order was received: {t}"
    );
    let mut metrics = String::new();
    let agreed = eventually(20, || {
        metrics = call("GET", &node.url("/metrics"), None, None, None)
            .body
            .as_str()
            .unwrap_or_default()
            .to_string();
        let placed = metric(&metrics, "onecard_order_events_total{state=\"placed\"}");
        let settled = metric(&metrics, "onecard_order_events_total{state=\"settled\"}");
        (placed == total_payments && settled == total_payments).then_some(())
    });
    assert!(
        agreed.is_some(),
        "the node's placed and settled orders are not the simulator's {total_payments}:\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "onecard_orders_created_total"),
        n(t, "/orders_created")
    );
    for (route, status, key) in [
        ("/v1/orders", 201, "orders_created"),
        ("/v1/reader/checkouts/{order}", 200, "checkouts"),
        ("/v1/reader/swipe", 200, "swipes"),
        ("/v1/reader/authenticate", 200, "authentications"),
        ("/v1/reader/confirm-address", 200, "address_confirmations"),
        ("/v1/consumer/orders/{order}/receipt", 200, "receipts"),
    ] {
        let method = if key == "checkouts" { "GET" } else { "POST" };
        let series = format!(
            "onecard_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}}"
        );
        assert_eq!(
            metric(&metrics, &series),
            n(t, &format!("/{key}")),
            "{series}"
        );
    }
    // Nothing the node answered with an error.
    for line in metrics.lines() {
        if line.starts_with("onecard_http_requests_total") && !line.ends_with(" 0") {
            let status = line.split("status=\"").nth(1).unwrap_or("");
            assert!(
                status.starts_with('2'),
                "the node answered an error: {line}"
            );
        }
    }
}

/// `--rate` paces the readers: never more payments than were due, however fast the node is,
/// and the report says the rate it was paced at.
#[test]
fn a_paced_run_makes_no_more_payments_than_were_due() {
    let sim = common::onecard_sim();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let (readers, rate, duration, warmup) = (4.0, 20.0, 2.0, 0.5);
    let out = Command::new(&sim)
        .args(["pay", "--node", &node.base, "--json"])
        .args([
            "--readers",
            "4",
            "--rate",
            "20",
            "--duration",
            "2",
            "--warmup",
            "0.5",
        ])
        .args(["--wrong-pin-share", "0", "--foreign-reader-share", "0"])
        .env("ONECARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("onecard-sim runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("the last line is not JSON ({e}): {stdout}"));
    assert!(out.status.success(), "{v:#}");
    assert_eq!(v["rate"].as_f64(), Some(rate), "{v:#}");
    let payments = n(&v, "/payments") as f64;
    let all = n(&v, "/totals/payments") as f64;
    assert!(payments > 0.0, "{v:#}");
    // Due in the whole run: one per reader at the start, then `rate` a second; a payment
    // due before the end may finish after it.
    let due = readers + rate * (warmup + duration);
    assert!(all <= due, "{all} payments, {due} were due: {v:#}");
    assert!(payments <= rate * duration + readers, "{v:#}");
}
