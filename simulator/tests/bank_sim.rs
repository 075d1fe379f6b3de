//! `onecard-sim bank` end to end: the real binary on a free port, spoken to over HTTP.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use onecard_adapters::iso20022::{
    Direction, Initiation, Notification, Reason, Side, Statement, StatusReport, Transfer, TxReport,
    TxStatus, PAIN_008,
};
use onecard_engine::money::Amount;
use serde_json::{json, Value};

/// A running simulator, killed (SIGKILL) when dropped.
struct Sim {
    child: Child,
    base: String,
    dir: PathBuf,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the simulator on `dir`; `Err` with its standard error if it stops before listening.
fn try_start(dir: &Path, flags: &[&str]) -> Result<Sim, String> {
    std::fs::create_dir_all(dir).unwrap();
    let log_path = dir.with_extension("log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_onecard-sim"))
        .args(["bank", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir)
        .args(flags)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(addr) = line.trim().strip_prefix("bank simulator listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
    };
    Ok(Sim {
        base: addr.to_string(),
        child,
        dir: dir.to_path_buf(),
    })
}

fn start(dir: &Path, flags: &[&str]) -> Sim {
    try_start(dir, flags).unwrap_or_else(|stderr| panic!("the simulator did not start: {stderr}"))
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match result {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("transport error: {e}"),
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> (u16, String) {
        answer(agent().get(&self.url(path)).call())
    }

    fn post(&self, path: &str, body: &str) -> (u16, String) {
        answer(agent().post(&self.url(path)).send_string(body))
    }

    fn json(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        let (code, text) = self.post(path, &body.to_string());
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn open(&self, account: &str, balance: &str) {
        let (code, body) = self.post_json(
            "/admin/accounts",
            json!({"account": account, "balance": balance}),
        );
        assert_eq!(code, 201, "{body}");
    }

    fn balance(&self, account: &str) -> String {
        self.json(&format!("/admin/accounts/{account}"))["balance"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn total(&self) -> String {
        self.json("/admin/totals")["total"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn faults(&self, update: Value) -> Value {
        let (code, body) = self.post_json("/admin/faults", update);
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Posts an initiation that must be answered with a pain.002.
    fn initiate(&self, xml: &str) -> (String, StatusReport) {
        let (code, body) = self.post("/iso20022/initiations", xml);
        assert_eq!(code, 200, "{body}");
        let report = StatusReport::from_xml(body.as_bytes()).unwrap();
        (body, report)
    }

    /// Follows the notifications as a client does (asking after the highest number it has
    /// with none missing) until there is none: the sequence numbers served.
    fn follow_notifications(&self) -> Vec<Notification> {
        let mut got = Vec::new();
        let mut have = std::collections::BTreeSet::new();
        let mut cursor = 0;
        loop {
            let (code, body) = self.get(&format!("/iso20022/notifications?after={cursor}"));
            if code == 204 {
                return got;
            }
            assert_eq!(code, 200, "{body}");
            let n = Notification::from_xml(body.as_bytes()).unwrap();
            have.insert(n.sequence);
            while have.contains(&(cursor + 1)) {
                cursor += 1;
            }
            got.push(n);
            assert!(got.len() < 100, "notifications never end");
        }
    }

    fn statement(&self, account: &str) -> Statement {
        let (code, body) = self.get(&format!("/iso20022/statements/{account}/{}", today()));
        assert_eq!(code, 200, "{body}");
        Statement::from_xml(body.as_bytes()).unwrap()
    }

    fn journal(&self) -> PathBuf {
        self.dir.join("bank.journal")
    }
}

fn today() -> time::Date {
    time::OffsetDateTime::now_utc().date()
}

fn amount(s: &str) -> Amount {
    Amount::parse(s).unwrap()
}

const OWN: &str = "OWN-ACCOUNT";

fn initiation(direction: Direction, msg_id: &str, txs: &[(&str, &str, &str)]) -> Initiation {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap();
    Initiation {
        direction,
        msg_id: msg_id.into(),
        created: now,
        initiator_name: "OneCard Settlement".into(),
        creditor_id: "DE98ZZZ09999999999".into(),
        own_account: OWN.into(),
        currency: "EUR".into(),
        requested: now.date(),
        transfers: txs
            .iter()
            .map(|(e2e, account, amt)| Transfer {
                end_to_end_id: e2e.to_string(),
                account: account.to_string(),
                amount: amount(amt),
            })
            .collect(),
    }
}

fn pain008(msg_id: &str, txs: &[(&str, &str, &str)]) -> String {
    initiation(Direction::Debit, msg_id, txs).to_xml().unwrap()
}

fn pain001(msg_id: &str, txs: &[(&str, &str, &str)]) -> String {
    initiation(Direction::Credit, msg_id, txs).to_xml().unwrap()
}

fn statuses(r: &StatusReport) -> Vec<TxStatus> {
    r.transactions.iter().map(|t| t.status.clone()).collect()
}

const RJCT_AC01: TxStatus = TxStatus::Rejected(Reason::IncorrectAccount);
const RJCT_AC04: TxStatus = TxStatus::Rejected(Reason::ClosedAccount);
const RJCT_AM04: TxStatus = TxStatus::Rejected(Reason::InsufficientFunds);

#[test]
fn initiations_book_what_they_can_and_conserve_money() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(&tmp.path().join("bank"), &[]);
    sim.open("ACC-A", "100.00");
    sim.open("ACC-B", "5.00");
    // The admin calls: the same opening again is fine, another balance is a conflict.
    assert_eq!(
        sim.post_json(
            "/admin/accounts",
            json!({"account": "ACC-B", "balance": "5.00"})
        )
        .0,
        200
    );
    assert_eq!(
        sim.post_json(
            "/admin/accounts",
            json!({"account": "ACC-B", "balance": "6.00"})
        )
        .0,
        409
    );
    assert_eq!(
        sim.post_json(
            "/admin/accounts",
            json!({"account": "ACC-C", "balance": "1.001"})
        )
        .0,
        400
    );
    assert_eq!(sim.get("/admin/accounts/ACC-C").0, 404);
    assert_eq!(sim.total(), "105.00");

    let (_, report) = sim.initiate(&pain008(
        "MSG-DD-1",
        &[
            ("E1", "ACC-A", "30.00"),
            ("E2", "NOPE", "1.00"),
            ("E3", "ACC-B", "10.00"),
        ],
    ));
    assert_eq!(report.original_msg_id, "MSG-DD-1");
    assert_eq!(report.original_direction, Direction::Debit);
    assert_eq!(
        statuses(&report),
        [TxStatus::Accepted, RJCT_AC01, RJCT_AM04]
    );
    let ids: Vec<&str> = report
        .transactions
        .iter()
        .map(|t| t.original_end_to_end_id.as_str())
        .collect();
    assert_eq!(ids, ["E1", "E2", "E3"]);
    assert_eq!(sim.balance("ACC-A"), "70.00");
    assert_eq!(sim.balance("ACC-B"), "5.00");
    assert_eq!(sim.balance(OWN), "30.00");
    assert_eq!(sim.total(), "105.00");

    // A credit transfer pays from the own account, never below zero.
    let (_, report) = sim.initiate(&pain001(
        "MSG-CT-1",
        &[("E4", "ACC-B", "20.00"), ("E5", "ACC-A", "10.01")],
    ));
    assert_eq!(statuses(&report), [TxStatus::Accepted, RJCT_AM04]);
    assert_eq!(sim.balance(OWN), "10.00");
    assert_eq!(sim.balance("ACC-B"), "25.00");
    let totals = sim.json("/admin/totals");
    assert_eq!(
        totals,
        json!({"accounts": 3, "total": "105.00", "messages": 2, "bookings": 2})
    );

    // One notification per booked initiation, of the own account's entries.
    let notes = sim.follow_notifications();
    let seqs: Vec<u64> = notes.iter().map(|n| n.sequence).collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(notes[0].account, OWN);
    assert_eq!(notes[0].entries.len(), 1);
    assert_eq!(notes[0].entries[0].end_to_end_id, "E1");
    assert_eq!(notes[0].entries[0].side, Side::Credit);
    assert_eq!(notes[0].entries[0].amount, amount("30.00"));
    assert_eq!(notes[1].entries[0].side, Side::Debit);

    // The statement: every entry of the day, balances that add up.
    let st = sim.statement(OWN);
    assert_eq!((st.opening, st.closing), (Amount::ZERO, amount("10.00")));
    assert_eq!(st.entries.len(), 2);
    let st = sim.statement("ACC-A");
    assert_eq!(
        (st.opening, st.closing),
        (amount("100.00"), amount("70.00"))
    );
    assert_eq!(
        sim.get(&format!("/iso20022/statements/NOPE/{}", today())).0,
        404
    );
    assert_eq!(sim.get("/iso20022/statements/ACC-A/yesterday").0, 400);
}

#[test]
fn a_message_id_is_booked_once() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(&tmp.path().join("bank"), &[]);
    sim.open("ACC-A", "50.00");
    let xml = pain008("MSG-1", &[("E1", "ACC-A", "10.00")]);
    let (first, report) = sim.initiate(&xml);
    assert_eq!(statuses(&report), [TxStatus::Accepted]);
    let (again, _) = sim.initiate(&xml);
    assert_eq!(again, first);
    // Rebuilt a moment later (another creation time), it is still the same message.
    let mut rebuilt = initiation(Direction::Debit, "MSG-1", &[("E1", "ACC-A", "10.00")]);
    rebuilt.created += time::Duration::seconds(5);
    assert_eq!(sim.initiate(&rebuilt.to_xml().unwrap()).0, first);
    assert_eq!(sim.balance("ACC-A"), "40.00");

    let other = pain008("MSG-1", &[("E1", "ACC-A", "11.00")]);
    assert_eq!(sim.post("/iso20022/initiations", &other).0, 409);
    assert_eq!(sim.balance("ACC-A"), "40.00");

    assert_eq!(sim.get("/iso20022/initiations/MSG-1/status"), (200, first));
    assert_eq!(sim.get("/iso20022/initiations/MSG-404/status").0, 404);

    // Eight copies at once: one booking, one answer.
    let xml = pain008("MSG-2", &[("E2", "ACC-A", "1.00")]);
    let answers: Vec<(u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| sim.post("/iso20022/initiations", &xml)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        answers.iter().all(|a| a == &answers[0] && a.0 == 200),
        "{answers:?}"
    );
    assert_eq!(sim.balance("ACC-A"), "39.00");
    let totals = sim.json("/admin/totals");
    assert_eq!(
        (totals["messages"].as_u64(), totals["bookings"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(totals["total"], "50.00");
}

#[test]
fn balances_and_messages_survive_a_kill_and_a_torn_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    let mut sim = start(&dir, &[]);
    sim.open("ACC-A", "20.00");
    sim.open("ACC-B", "3.00");
    let xml = pain008("MSG-1", &[("E1", "ACC-A", "5.00")]);
    let (report, _) = sim.initiate(&xml);
    let (code, _) = sim.post_json("/admin/accounts/ACC-B/close", json!({}));
    assert_eq!(code, 200);
    sim.child.kill().unwrap();
    sim.child.wait().unwrap();
    // A crash in the middle of a write: half a record, no newline.
    let journal = sim.journal();
    drop(sim);
    OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap()
        .write_all(br#"{"record":"account_opened","account":"ACC-Z","bal"#)
        .unwrap();

    let sim = start(&dir, &[]);
    assert_eq!(sim.balance("ACC-A"), "15.00");
    assert_eq!(sim.balance(OWN), "5.00");
    assert_eq!(sim.json("/admin/accounts/ACC-B")["closed"], true);
    assert_eq!(sim.get("/admin/accounts/ACC-Z").0, 404);
    assert_eq!(
        sim.get("/iso20022/initiations/MSG-1/status"),
        (200, report.clone())
    );
    assert_eq!(sim.initiate(&xml).0, report);
    assert_eq!(sim.balance("ACC-A"), "15.00");
    assert_eq!(sim.total(), "23.00");
    assert_eq!(sim.follow_notifications().len(), 1);
    let mut text = String::new();
    File::open(&journal)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.ends_with('\n') && !text.contains("ACC-Z"), "{text}");
    // Booking goes on after the restart.
    let (_, r) = sim.initiate(&pain008("MSG-2", &[("E2", "ACC-A", "15.00")]));
    assert_eq!(statuses(&r), [TxStatus::Accepted]);
    assert_eq!(sim.balance(OWN), "20.00");
}

#[test]
fn accounts_open_in_bulk_all_or_nothing_and_are_listed_in_one_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    let sim = start(&dir, &[]);
    sim.open("ACC-A", "1.00");
    let list: Vec<Value> = (0..2_500)
        .map(|i| json!({"account": format!("B{i}"), "balance": format!("{i}.05")}))
        .collect();
    // The same opening again (ACC-A) counts as existing; the rest are created.
    let mut body = list.clone();
    body.push(json!({"account": "ACC-A", "balance": "1.00"}));
    let (code, answer) = sim.post_json("/admin/accounts", Value::Array(body));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer, json!({"created": 2_500, "existing": 1}));
    // One conflict anywhere, or an account named twice with two balances: nothing opened.
    let conflicts = [
        json!([{"account": "NEW-1", "balance": "1.00"}, {"account": "B7", "balance": "0.00"}]),
        json!([{"account": "NEW-1", "balance": "1.00"}, {"account": "NEW-1", "balance": "2.00"}]),
    ];
    for body in conflicts {
        let (code, answer) = sim.post_json("/admin/accounts", body);
        assert_eq!(code, 409, "{answer}");
    }
    let bad =
        json!([{"account": "NEW-2", "balance": "1.00"}, {"account": "a b", "balance": "1.00"}]);
    assert_eq!(sim.post_json("/admin/accounts", bad).0, 400);
    assert_eq!(sim.get("/admin/accounts/NEW-1").0, 404);
    assert_eq!(sim.get("/admin/accounts/NEW-2").0, 404);
    // 1.00 + sum(i + 0.05 for i < 2500)
    let total = "3123876.00";
    assert_eq!(sim.total(), total);

    let check = |sim: &Sim| {
        let all = sim.json("/admin/accounts");
        let all = all["accounts"].as_array().unwrap();
        assert_eq!(all.len(), 2_501);
        assert_eq!(
            all[0],
            json!({"account": "ACC-A", "balance": "1.00", "closed": false})
        );
        assert!(all
            .iter()
            .any(|a| a == &json!({"account": "B42", "balance": "42.05", "closed": false})));
        assert_eq!(sim.balance("B2499"), "2499.05");
        assert_eq!(sim.json("/admin/totals")["accounts"], 2_501);
        assert_eq!(sim.total(), total);
    };
    check(&sim);
    // The bulk opening is in the journal: a restart replays it.
    drop(sim);
    let sim = start(&dir, &[]);
    check(&sim);
    let (code, answer) = sim.post_json("/admin/accounts", Value::Array(list));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer, json!({"created": 0, "existing": 2_500}));
}

#[test]
fn a_damaged_journal_line_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("bank");
    let sim = start(&dir, &[]);
    sim.open("ACC-A", "20.00");
    sim.open("ACC-B", "20.00");
    let journal = sim.journal();
    drop(sim);
    let text = std::fs::read_to_string(&journal).unwrap();
    std::fs::write(&journal, text.replacen("ACC-A", "ACC-A\"", 1)).unwrap();
    let stderr = try_start(&dir, &[])
        .err()
        .expect("a damaged journal must stop the start");
    assert!(stderr.contains("bank.journal line 1"), "{stderr}");
}

#[test]
fn a_dropped_or_slow_answer_is_booked_all_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(
        &tmp.path().join("bank"),
        &["--drop-after-booking", "1", "--hang-ms", "2000"],
    );
    sim.open("ACC-A", "10.00");
    let impatient = ureq::AgentBuilder::new()
        .timeout(Duration::from_millis(300))
        .build();
    let xml = pain008("MSG-1", &[("E1", "ACC-A", "4.00")]);
    let lost = impatient
        .post(&sim.url("/iso20022/initiations"))
        .send_string(&xml);
    assert!(matches!(lost, Err(ureq::Error::Transport(_))), "{lost:?}");
    let (code, body) = sim.get("/iso20022/initiations/MSG-1/status");
    assert_eq!(code, 200);
    let report = StatusReport::from_xml(body.as_bytes()).unwrap();
    assert_eq!(statuses(&report), [TxStatus::Accepted]);
    assert_eq!(sim.balance("ACC-A"), "6.00");
    // Only the next one was dropped.
    let (_, r) = sim.initiate(&pain008("MSG-2", &[("E2", "ACC-A", "1.00")]));
    assert_eq!(statuses(&r), [TxStatus::Accepted]);
    assert_eq!(sim.json("/admin/faults")["drop_after_booking"], 0);

    let faults = sim.faults(json!({"delay_ms": 150}));
    assert_eq!(faults["delay_ms"], 150);
    assert_eq!(faults["hang_ms"], 2000);
    let t = Instant::now();
    assert_eq!(sim.get("/iso20022/initiations/MSG-2/status").0, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(sim.post_json("/admin/faults", json!({"delay": 1})).0, 400);
}

#[test]
fn forced_rejections_and_closed_accounts() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(&tmp.path().join("bank"), &[]);
    sim.open("ACC-A", "10.00");
    sim.open("ACC-B", "10.00");
    sim.faults(json!({"reject_next": {"count": 1, "code": "AC06"}}));
    let (_, r) = sim.initiate(&pain008(
        "MSG-1",
        &[("E1", "ACC-A", "1.00"), ("E2", "ACC-A", "1.00")],
    ));
    assert_eq!(
        statuses(&r),
        [
            TxStatus::Rejected(Reason::BlockedAccount),
            TxStatus::Accepted
        ]
    );
    assert_eq!(
        sim.json("/admin/faults")["reject_next"],
        json!({"count": 0, "code": "AC06"})
    );
    assert_eq!(sim.balance("ACC-A"), "9.00");

    let (code, body) = sim.post_json("/admin/accounts/ACC-B/close", json!({}));
    assert_eq!((code, &body["closed"]), (200, &json!(true)));
    assert_eq!(
        sim.post_json("/admin/accounts/NOPE/close", json!({})).0,
        404
    );
    let (_, r) = sim.initiate(&pain008("MSG-2", &[("E3", "ACC-B", "1.00")]));
    assert_eq!(statuses(&r), [RJCT_AC04]);
    let (_, r) = sim.initiate(&pain001("MSG-3", &[("E4", "ACC-B", "1.00")]));
    assert_eq!(statuses(&r), [RJCT_AC04]);
    assert_eq!(sim.balance("ACC-B"), "10.00");
    assert_eq!(sim.total(), "20.00");
    // A message that booked nothing makes no notification.
    assert_eq!(sim.follow_notifications().len(), 1);
}

#[test]
fn a_statement_can_miss_a_line_but_not_its_amount() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(&tmp.path().join("bank"), &["--omit-statement-line"]);
    sim.open("ACC-A", "10.00");
    sim.initiate(&pain008(
        "MSG-1",
        &[("E1", "ACC-A", "2.00"), ("E2", "ACC-A", "3.00")],
    ));
    let st = sim.statement(OWN);
    assert_eq!(st.entries.len(), 1);
    assert_eq!(st.entries[0].end_to_end_id, "E2");
    assert_eq!((st.opening, st.closing), (Amount::ZERO, amount("5.00")));
    assert_eq!(sim.balance(OWN), "5.00");
    sim.faults(json!({"omit_statement_line": false}));
    assert_eq!(sim.statement(OWN).entries.len(), 2);
}

#[test]
fn notifications_come_in_order_twice_or_swapped() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(&tmp.path().join("bank"), &["--duplicate-notifications"]);
    sim.open("ACC-A", "10.00");
    for i in 1..=4 {
        sim.initiate(&pain008(
            &format!("MSG-{i}"),
            &[(&format!("E{i}"), "ACC-A", "1.00")],
        ));
    }
    let seqs = |notes: Vec<Notification>| notes.iter().map(|n| n.sequence).collect::<Vec<_>>();
    assert_eq!(seqs(sim.follow_notifications()), [1, 1, 2, 2, 3, 3, 4, 4]);
    sim.faults(json!({"duplicate_notifications": false, "reorder_notifications": true}));
    let notes = sim.follow_notifications();
    assert_eq!(notes[0].entries[0].end_to_end_id, "E2");
    assert_eq!(seqs(notes), [2, 1, 4, 3]);
    sim.faults(json!({"reorder_notifications": false}));
    assert_eq!(seqs(sim.follow_notifications()), [1, 2, 3, 4]);
    assert_eq!(sim.get("/iso20022/notifications?after=4").0, 204);
}

#[test]
fn bad_xml_is_refused_and_books_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = start(&tmp.path().join("bank"), &[]);
    sim.open("ACC-A", "100.00");
    let good = pain008("MSG-BAD", &[("E1", "ACC-A", "30.00")]);
    // The DOCTYPE goes after the XML declaration, if there is one.
    let at = if good.starts_with("<?xml") {
        good.find("?>").unwrap() + 2
    } else {
        0
    };
    let xxe = format!(
        "{}<!DOCTYPE Document [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{}",
        &good[..at],
        good[at..].replacen("ACC-A", "&xxe;", 1)
    );
    let bad = [
        xxe,
        good.replace(PAIN_008, "urn:iso:std:iso:20022:tech:xsd:pain.008.001.02"),
        good.replace(">30.00<", ">30.005<"),
        good[..good.len() / 2].to_string(),
        "not xml at all".to_string(),
        String::new(),
    ];
    assert_ne!(bad[2], good, "the amount is written as 30.00");
    for body in &bad {
        let (code, text) = sim.post("/iso20022/initiations", body);
        assert_eq!(code, 400, "{body}: {text}");
        assert!(!text.is_empty());
    }
    // A status report is no initiation.
    let pain002 = StatusReport {
        msg_id: "R1".into(),
        created: time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap(),
        original_msg_id: "MSG-BAD".into(),
        original_direction: Direction::Debit,
        transactions: vec![TxReport {
            original_end_to_end_id: "E1".into(),
            status: TxStatus::Accepted,
        }],
    };
    let (code, _) = sim.post("/iso20022/initiations", &pain002.to_xml().unwrap());
    assert_eq!(code, 400);
    assert_eq!(sim.get("/iso20022/initiations/MSG-BAD/status").0, 404);
    assert_eq!(
        sim.json("/admin/totals"),
        json!({"accounts": 1, "total": "100.00", "messages": 0, "bookings": 0})
    );
    assert_eq!(sim.balance("ACC-A"), "100.00");

    // Over 16 MiB: refused from the headers alone.
    let addr = sim.base.trim_start_matches("http://");
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        tcp,
        "POST /iso20022/initiations HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n",
        16 * 1024 * 1024 + 1
    )
    .unwrap();
    let mut head = [0u8; 12];
    tcp.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413");
    // And the books are as they were; the simulator still answers.
    assert_eq!(sim.balance("ACC-A"), "100.00");
}
