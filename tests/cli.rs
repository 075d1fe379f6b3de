//! End to end: the real `onecard` binary, driven as a user would.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn onecard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(args)
        .output()
        .expect("run onecard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The scenario folder beside the project root (`../shared/scenarios`), as CI lays it out.
fn scenarios_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/scenarios");
    assert!(
        dir.is_dir(),
        "the shared scenarios are expected at {}",
        dir.display()
    );
    dir
}

/// The value printed after `key` on a line of the demo's final balances.
fn balance(stdout: &str, key: &str) -> String {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{stdout}"));
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn the_demo_walks_the_flow_ends_with_the_right_balances_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let out = onecard(&["demo", "--data", data.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    for step in [
        "placed and reserved",
        "refused for credit",
        "goods are received",
        "special code",
        "released by time",
        "drains the wallet",
        "above the cap",
        "swept to the bank",
        "cancelled order",
    ] {
        assert!(stdout.contains(step), "the demo does not show {step:?}");
    }
    assert!(stdout.contains("refused:credit"));
    // The six steps of F18 are named, and step 5 shows the delivery slip as the merchant's
    // simulated printer received it over TCP, decoded from its ESC/POS bytes.
    for step in [
        "[1 log in / check out]",
        "[2 swipe",
        "3 authenticate]",
        "[4 place]",
        "[5 print]",
        "[6 settle]",
    ] {
        assert!(
            stdout.contains(step),
            "the demo does not name step {step:?}"
        );
    }
    for line in ["DELIVERY SLIP", "Order: o-1001", "TOTAL: 120.00 EUR"] {
        assert!(
            stdout.contains(line),
            "no printed slip line {line:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("beeped 3 times"),
        "the printer did not beep:\n{stdout}"
    );
    // The balances worked out by hand from the demo's story.
    for (key, want) in [
        ("wallet:alice", "5000.00"),
        ("wallet:bob", "5000.00"),
        ("wallet:carol", "5000.00"),
        ("merchant:bookshop", "370.00"),
        ("merchant:grocer", "5080.00"),
        ("merchant:electronics", "4500.00"),
        // Each consumer's bank account, shown by owner (the account itself masked, I10).
        // Then the services: alice's salary overflows her full wallet into the bank; bob's
        // bill (45.20) is topped up from his bank and his recharge card (100.00) overflows to
        // it; carol's salary goes to her bank, and 500.00 comes from her linked savings.
        ("bank:alice", "22800.00"),
        ("bank:bob", "3054.80"),
        ("bank:carol", "4050.00"),
        ("merchant:city-water", "45.20"),
        ("merchant:acme", "0.00"),
        ("merchant:casino", "0.00"),
    ] {
        assert_eq!(balance(&stdout, key), want, "{key}");
    }
    // The services, a few lines each (SPEC F5–F10, F12).
    for line in [
        "Refused by your payment rules: payments for gambling are not allowed",
        "above the 1000.00 allowed per payment",
        "on the due date the bill is settled",
        "carol types the same code → refused:conflict",
        "throttled, not looked up",
        "a first file is refused whole, nothing paid",
        "has more than 2 decimals",
        "line 3: carol 1800.00 to the bank account → credited",
        "bob's limit → 1600.00",
        "savings now 1500.00",
        "bob: spent 45.20 (bill:water 45.20) | income 100.00",
        "alice: spent 4700.00 (books 120.00, electronics 4500.00, groceries 80.00) | income 2500.00",
    ] {
        assert!(stdout.contains(line), "the demo does not show {line:?}:\n{stdout}");
    }
    // 30000 + 8000 + 12000 opened for the consumers, 50000 for the employer, 2000 in carol's
    // savings, and 100.00 of a recharge card from outside.
    assert!(stdout.contains("total (banks + wallets + merchants) 102100.00"));
    assert!(stdout.contains("invariants I1-I6 and I8: ok"));

    // Then `verify` on the directory the demo left, as a user would run it.
    let out = onecard(&["verify", "--data", data.to_str().unwrap()]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "verify failed: {}", text(&out.stderr));
    assert!(report.contains("3 consumers"), "{report}");
    assert!(report.contains("6 merchants"), "{report}");
    assert!(
        report.contains("totals: wallets 15000.00, merchants 9995.20, bank clearing -24995.20"),
        "{report}"
    );
    assert!(report.contains("sum of all balances: 0.00"), "{report}");
    assert!(
        report.contains("top-ups: 6 paid by the bank, 0 refused"),
        "{report}"
    );
}

#[test]
fn the_demo_refuses_a_data_directory_that_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("something"), b"x").unwrap();
    let out = onecard(&["demo", "--data", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not empty"),
        "{}",
        text(&out.stderr)
    );
}

/// The scenario files (`*.json`) of a folder, sorted.
fn scenario_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shared_scenario_passes() {
    let files = scenario_files(&scenarios_dir());
    assert!(
        files.len() >= 17,
        "expected the shared scenarios, found {}",
        files.len()
    );
    plays_and_passes(&files);
}

/// The project's own scenarios of the services (`tests/scenarios/`, in the commands of
/// `docs/scenarios-services.md`).
#[test]
fn every_services_scenario_passes() {
    let files = scenario_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios"));
    assert!(
        files.len() >= 5,
        "expected the services' scenarios, found {}",
        files.len()
    );
    plays_and_passes(&files);
}

fn plays_and_passes(files: &[PathBuf]) {
    let mut args = vec!["scenario".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(&args)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "scenarios failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PASS ")).count(),
        files.len(),
        "{stdout}"
    );
}

#[test]
fn a_failing_expectation_is_printed_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wrong.json");
    std::fs::write(
        &file,
        r#"{"name":"wrong on purpose","steps":[
            {"at":0,"do":"open_consumer","consumer":"a","credit_limit":"10.00","bank":"ab","bank_balance":"100.00","wallet":"50.00","expect":"ok"},
            {"do":"open_merchant","merchant":"m","expect":"ok"},
            {"do":"place_order","id":"o1","consumer":"a","merchant":"m","amount":"20.00","release":{"on":"receipt"},"expect":"accepted"},
            {"check":{"wallet:a":"49.00","total":"100.00"}}
        ]}"#,
    )
    .unwrap();
    let out = onecard(&["scenario", file.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("step 3 (place_order): expected accepted, got refused:credit"),
        "{stdout}"
    );
    assert!(
        stdout.contains("check wallet:a: expected 49.00, got 50.00"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("check total"),
        "the right check must not be reported: {stdout}"
    );
}

#[test]
fn verify_of_a_directory_without_a_journal_fails_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = onecard(&["verify", "--data", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no journal here"),
        "{}",
        text(&out.stderr)
    );
}
