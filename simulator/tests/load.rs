//! End-to-end tests of `onecard-sim load`: the built binary over the real engine, each run in
//! its own temporary data directory. Nothing here asserts on speed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onecard-sim"))
        .args(args)
        .output()
        .expect("onecard-sim runs")
}

/// Runs `load ARGS --json` and returns the JSON object on the last line of standard output,
/// after checking that the run exited as its `invariants_ok` says.
fn load(args: &[&str]) -> Value {
    let mut all = vec!["load", "--json"];
    all.extend_from_slice(args);
    let out = sim(&all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let v: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    let ok = v["invariants_ok"] == Value::Bool(true);
    assert_eq!(
        out.status.success(),
        ok,
        "exit status {:?} disagrees with invariants_ok: {v:#}",
        out.status
    );
    assert!(ok, "invariants failed: {v:#}\nstderr: {stderr}");
    v
}

fn n(v: &Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or(0)
}

fn outcome(v: &Value, key: &str) -> u64 {
    n(v, &["outcomes", key])
}

#[test]
fn a_short_run_keeps_every_invariant_and_exercises_every_kind_of_operation() {
    let v = load(&[
        "--consumers",
        "200",
        "--merchants",
        "20",
        "--orders",
        "500",
        "--concurrency",
        "32",
        "--seed",
        "11",
    ]);
    assert_eq!(n(&v, &["lifecycles_started"]), 500);
    assert_eq!(n(&v, &["lifecycles"]), 500, "{v:#}");
    // Some lifecycles repeat their placement (idempotency): more place commands than orders.
    assert!(n(&v, &["counts", "place"]) > 500);
    assert!(outcome(&v, "place:refused:conflict") > 0);
    assert_eq!(
        outcome(&v, "place:accepted") + outcome(&v, "place:refused:credit"),
        500 + outcome(&v, "place:refused:conflict"),
        "every repeat answered with the first outcome: {v:#}"
    );
    for kind in [
        "confirm",
        "code",
        "cancel",
        "refund",
        "tick",
        "deposit",
        "bank_mode",
    ] {
        assert!(n(&v, &["counts", kind]) > 0, "no {kind} in {v:#}");
    }
    // Every lifecycle's order is in the ledger, each in a state its path allows.
    let states: u64 = v["order_states"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(states, 500);
    assert!(n(&v, &["order_states", "settled"]) > 300, "{v:#}");
    assert!(n(&v, &["order_states", "cancelled"]) > 0);
    assert!(n(&v, &["order_states", "expired"]) > 0);
    assert!(outcome(&v, "confirm:settled") > 0 && outcome(&v, "code:settled") > 0);
    assert!(outcome(&v, "code:refused:code") > 0 && outcome(&v, "code:disputed") > 0);
    assert!(n(&v, &["topups_done"]) > 0);
    assert_eq!(n(&v, &["unexpected"]), 0);
    assert_eq!(n(&v, &["errors"]), 0);
    assert_eq!(v["verify"]["ok"], Value::Bool(true));
    for c in v["checks"].as_array().unwrap() {
        assert_eq!(c["ok"], Value::Bool(true), "{c}");
    }
    let p50 = v["p50_ms"].as_f64().unwrap();
    let p99 = v["p99_ms"].as_f64().unwrap();
    let p999 = v["p999_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999, "{v:#}");
    assert!(v["lifecycles_per_sec"].as_f64().unwrap() > 0.0);
    assert!(n(&v, &["peak_rss_bytes"]) > 0);
    assert_eq!(v["restarted"], Value::Bool(false));
    assert!(v["recovery_ms"].is_null());
    assert_eq!(v["digest"].as_str().unwrap().len(), 64);
}

#[test]
fn bank_refusals_and_a_restart_midway_keep_the_invariants() {
    let v = load(&[
        "--consumers",
        "150",
        "--merchants",
        "15",
        "--orders",
        "400",
        "--concurrency",
        "16",
        "--seed",
        "3",
        "--refuse-pct",
        "30",
        "--refuse-window",
        "100",
        "--restart-at-pct",
        "50",
    ]);
    assert_eq!(v["restarted"], Value::Bool(true), "{v:#}");
    assert!(v["recovery_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(n(&v, &["restart", "after_lifecycles"]), 200);
    assert_eq!(n(&v, &["restart", "bank_ops_reversed"]), 0);
    assert_eq!(n(&v, &["lifecycles"]), 400);
    // Refusals bit: top-ups were refused and settlements waited for funds.
    assert!(n(&v, &["counts", "bank_mode"]) > 0);
    assert!(n(&v, &["topups_refused"]) > 0, "{v:#}");
    let waited = outcome(&v, "confirm:awaiting_funds") + outcome(&v, "code:awaiting_funds");
    assert!(waited > 0, "no settlement waited for funds: {v:#}");
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "verify",
        "conservation",
        "bank_vs_ledger",
        "live_vs_journal",
        "orders",
        "recovery",
    ] {
        assert!(names.contains(&name), "no {name} check in {names:?}");
    }
}

#[test]
fn one_at_a_time_the_same_seed_gives_the_same_final_state() {
    let run = |seed: &str| {
        let v = load(&[
            "--consumers",
            "60",
            "--merchants",
            "8",
            "--orders",
            "150",
            "--concurrency",
            "1",
            "--refuse-pct",
            "10",
            "--tick-every",
            "10",
            "--seed",
            seed,
        ]);
        v["digest"].as_str().unwrap().to_string()
    };
    let (a, b, c) = (run("7"), run("7"), run("8"));
    assert_eq!(a, b, "two runs of seed 7 ended in different states");
    assert_ne!(a, c, "seeds 7 and 8 ended in the same state");
}

#[test]
fn a_duration_stops_the_run_early_and_the_checks_still_hold() {
    let v = load(&[
        "--consumers",
        "30",
        "--merchants",
        "5",
        "--orders",
        "10000000",
        "--concurrency",
        "8",
        "--duration",
        "1",
    ]);
    assert_eq!(v["stopped_by_duration"], Value::Bool(true));
    let started = n(&v, &["lifecycles_started"]);
    assert!(started > 0 && started < 10_000_000);
    assert_eq!(n(&v, &["lifecycles"]), started);
}

#[test]
fn a_given_data_directory_is_kept_and_must_start_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let d = dir.to_str().unwrap();
    let small = [
        "--consumers",
        "5",
        "--merchants",
        "2",
        "--orders",
        "20",
        "--data",
        d,
    ];
    let v = load(&small);
    assert_eq!(v["data_dir"].as_str(), Some(d));
    assert!(Path::new(d).join("log").is_dir());
    assert!(Path::new(d).join("view").is_dir());
    // A second population over the first would collide with its names: refused.
    let mut again = vec!["load"];
    again.extend_from_slice(&small);
    let out = sim(&again);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be empty"));
}

#[test]
fn help_documents_every_option_and_bad_options_are_refused() {
    let out = sim(&["load", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--consumers",
        "--merchants",
        "--orders",
        "--seed",
        "--concurrency",
        "--json",
        "--duration",
        "--data",
        "--keep",
        "--restart-at-pct",
        "--arbiters",
        "--config",
        "--code-pct",
        "--time-pct",
        "--cancel-pct",
        "--dispute-pct",
        "--abandon-pct",
        "--refund-pct",
        "--deposit-pct",
        "--refuse-pct",
        "--refuse-window",
        "--tick-every",
        "--zipf-s",
        "--setup-concurrency",
        "--bank",
    ] {
        assert!(help.contains(opt), "load --help does not mention {opt}");
    }
    let top = sim(&["--help"]);
    assert!(top.status.success());
    assert!(String::from_utf8_lossy(&top.stdout).contains("load"));

    for bad in [
        &["load", "--cancel-pct", "101"][..],
        &["load", "--restart-at-pct", "100"],
        &["load", "--code-pct", "60", "--time-pct", "50"],
        &["load", "--concurrency", "0"],
    ] {
        let out = sim(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?} was not refused");
    }
}

/// A running `onecard-sim bank` on a free port, killed when dropped.
struct BankSim {
    child: Child,
    url: String,
}

impl Drop for BankSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bank_sim(dir: &Path) -> BankSim {
    let mut child = Command::new(env!("CARGO_BIN_EXE_onecard-sim"))
        .args(["bank", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("onecard-sim bank runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("bank simulator listening on ")
        .unwrap_or_else(|| panic!("the bank simulator did not start: {line:?}"))
        .to_string();
    BankSim { child, url }
}

#[test]
fn against_the_iso_20022_bank_simulator_every_check_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let bank = bank_sim(&tmp.path().join("bank"));
    let v = load(&[
        "--consumers",
        "200",
        "--merchants",
        "20",
        "--orders",
        "2000",
        "--seed",
        "5",
        "--bank",
        &bank.url,
    ]);
    assert!(
        v["bank"].as_str().unwrap().contains(&bank.url),
        "{}",
        v["bank"]
    );
    assert_eq!(v["notes"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(n(&v, &["lifecycles"]), 2000);
    // Neither deposits nor refusals against an external bank.
    assert_eq!(n(&v, &["counts", "deposit"]), 0);
    assert_eq!(n(&v, &["counts", "bank_mode"]), 0);
    // Money went through the bank: top-ups paid, and some refused for funds (a quarter of the
    // consumers have little at the bank).
    assert!(n(&v, &["topups_done"]) > 0, "{v:#}");
    assert!(n(&v, &["order_states", "settled"]) > 1_000, "{v:#}");
    let checks = v["checks"].as_array().unwrap();
    for c in checks {
        assert_eq!(c["ok"], Value::Bool(true), "{c}");
    }
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in [
        "outcomes",
        "verify",
        "conservation",
        "live_vs_journal",
        "settlement_account",
        "bank_adapter",
        "population",
        "bank_vs_ledger",
        "orders",
    ] {
        assert!(names.contains(&name), "no {name} check in {names:?}");
    }

    // The bank now holds this population: a second run against it is refused, not mixed in.
    let out = sim(&[
        "load",
        "--consumers",
        "5",
        "--merchants",
        "2",
        "--orders",
        "10",
        "--bank",
        &bank.url,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already has 221 accounts"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn deposits_and_refusals_are_refused_with_an_external_bank() {
    for flag in ["--deposit-pct", "--refuse-pct"] {
        let out = sim(&["load", "--bank", "http://127.0.0.1:9", flag, "1"]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag) && err.contains("--bank"), "{err}");
    }
    // Naming them at 0 is fine (the run then fails to reach the bank: exit 1, not 2).
    let out = sim(&[
        "load",
        "--bank",
        "http://127.0.0.1:9",
        "--deposit-pct",
        "0",
        "--refuse-pct",
        "0",
        "--consumers",
        "2",
        "--merchants",
        "1",
        "--orders",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    for bad in [
        "https://127.0.0.1:9",
        "http://example.com:80",
        "127.0.0.1:9",
    ] {
        let out = sim(&["load", "--bank", bad]);
        assert_eq!(out.status.code(), Some(2), "--bank {bad} was not refused");
    }
}

/// `--services-pct`: bills under each autopay rule, recharges with wrong codes, payrolls and
/// credit-limit changes interleaved with the lifecycles, a restart midway, and every service's
/// own end-of-run check.
#[test]
fn a_services_mix_with_a_restart_keeps_every_invariant_and_each_services_rules() {
    let v = load(&[
        "--consumers",
        "200",
        "--merchants",
        "10",
        "--orders",
        "800",
        "--concurrency",
        "32",
        "--seed",
        "5",
        "--services-pct",
        "30",
        "--restart-at-pct",
        "50",
    ]);
    assert_eq!(v["restarted"], Value::Bool(true), "{v:#}");
    let s = &v["services"];
    for kind in ["bill", "recharge", "payroll", "credit_limit"] {
        assert!(n(s, &["done", kind]) > 0, "no {kind} in {s:#}");
    }
    for rule in ["always", "on_due_date", "up_to", "ask"] {
        assert!(
            n(s, &["bills", &format!("{rule}:placed")]) > 0,
            "no bill placed under {rule}: {s:#}"
        );
    }
    assert!(n(s, &["recharges", "codes_redeemed_already"]) > 0, "{s:#}");
    assert!(n(s, &["recharges", "codes_repeated"]) > 0, "{s:#}");
    assert!(n(s, &["payroll", "lines_paid"]) > 0, "{s:#}");
    // Every redeemed-again code was refused: each counted once among the outcomes.
    assert_eq!(
        outcome(&v, "recharge:refused:conflict"),
        n(s, &["recharges", "codes_redeemed_already"]),
        "{v:#}"
    );
    assert!(n(s, &["analysis", "consumer_months"]) > 0);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "credits_once",
        "employers",
        "recharge_batches",
        "wallet_cap",
        "credit_limits",
        "analysis",
        "recovery",
    ] {
        assert!(names.contains(&name), "no {name} check in {names:?}");
    }
}
