//! The ISO 20022 adapter against a hostile or broken bank, over real HTTP on loopback: every
//! unreadable answer (wrong namespace, missing or duplicated fields, unknown codes, entity
//! declarations, XXE, an answer of 100 MB, a report for another message) is an error, the
//! operation stays unresolved, nothing is taken as booked and nothing is sent again while the
//! bank's answers cannot be read; once the bank says it never received the message, it is sent
//! again (same id) and its answer resolves the operation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use onecard_adapters::iso20022::bank::{BankSettings, Iso20022Bank};
use onecard_engine::bank::{BankError, BankOp, BankPort};
use onecard_engine::money::Amount;

/// What the fake bank answers: to the initiation, and to status queries.
#[derive(Clone)]
enum Answer {
    Xml(String),
    Big(usize),
    NotFound,
    /// No answer for this long, then the connection closes.
    Hang(std::time::Duration),
}

struct FakeBank {
    base: String,
    post: Arc<Mutex<Answer>>,
    status: Arc<Mutex<Answer>>,
    posts: Arc<Mutex<u32>>,
}

impl FakeBank {
    fn start(post: Answer, status: Answer) -> FakeBank {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let post = Arc::new(Mutex::new(post));
        let status = Arc::new(Mutex::new(status));
        let posts = Arc::new(Mutex::new(0));
        let (p, s, n) = (post.clone(), status.clone(), posts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (p, s, n) = (p.clone(), s.clone(), n.clone());
                std::thread::spawn(move || serve(stream, &p, &s, &n));
            }
        });
        FakeBank {
            base,
            post,
            status,
            posts,
        }
    }
}

fn serve(stream: TcpStream, post: &Mutex<Answer>, status: &Mutex<Answer>, posts: &Mutex<u32>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = if request_line.starts_with("POST") {
            *posts.lock().unwrap() += 1;
            post.lock().unwrap().clone()
        } else {
            status.lock().unwrap().clone()
        };
        let ok = match answer {
            Answer::Hang(d) => {
                std::thread::sleep(d);
                return;
            }
            Answer::Xml(x) => write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{x}",
                x.len()
            ),
            Answer::NotFound => {
                write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                )
            }
            Answer::Big(n) => (|| {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {n}\r\n\r\n"
                )?;
                let chunk = vec![b'a'; 1 << 20];
                let mut left = n;
                while left > 0 {
                    let k = left.min(chunk.len());
                    stream.write_all(&chunk[..k])?;
                    left -= k;
                }
                Ok(())
            })(),
        };
        if ok.is_err() {
            return;
        }
    }
}

fn settings(base: &str) -> BankSettings {
    let mut s = BankSettings::for_endpoint(base, "EUR");
    s.timeout = std::time::Duration::from_secs(5);
    s.retries = 1;
    s.retry_backoff = std::time::Duration::from_millis(10);
    s.pending_wait = std::time::Duration::from_millis(50);
    s.resolve_interval = std::time::Duration::from_secs(3600);
    // Every unresolved operation is overdue at once: reported to operators.
    s.unresolved_alert = std::time::Duration::ZERO;
    s
}

fn op(id: &str) -> BankOp {
    BankOp {
        id: id.into(),
        account: "acct-1".into(),
        amount: Amount::from_cents(1_000),
    }
}

/// A pain.002 for `msg_id` with one transaction, `status_xml` its TxSts and reason.
fn report(namespace: &str, msg_id: &str, e2e: &str, tx: &str) -> String {
    report_of("pain.008.001.08", namespace, msg_id, e2e, tx)
}

/// A pain.002 answering message `msg_id` of kind `message` (`pain.008.001.08`, …).
fn report_of(message: &str, namespace: &str, msg_id: &str, e2e: &str, tx: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Document xmlns="{namespace}"><CstmrPmtStsRpt><GrpHdr><MsgId>R1</MsgId><CreDtTm>2026-12-06T10:00:00Z</CreDtTm></GrpHdr><OrgnlGrpInfAndSts><OrgnlMsgId>{msg_id}</OrgnlMsgId><OrgnlMsgNmId>{message}</OrgnlMsgNmId></OrgnlGrpInfAndSts><OrgnlPmtInfAndSts><OrgnlPmtInfId>{msg_id}</OrgnlPmtInfId><TxInfAndSts><OrgnlEndToEndId>{e2e}</OrgnlEndToEndId>{tx}</TxInfAndSts></OrgnlPmtInfAndSts></CstmrPmtStsRpt></Document>"#
    )
}

const PAIN_002: &str = "urn:iso:std:iso:20022:tech:xsd:pain.002.001.12";

fn hostile_answers(msg_id: &str, e2e: &str) -> Vec<(&'static str, Answer)> {
    let xxe = format!(
        r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>{}"#,
        report(PAIN_002, msg_id, e2e, "<TxSts>&x;</TxSts>")
            .trim_start_matches(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
    );
    let laughs = format!(
        r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>{}"#,
        report(PAIN_002, msg_id, e2e, "<TxSts>&c;</TxSts>")
            .trim_start_matches(r#"<?xml version="1.0" encoding="UTF-8"?>"#)
    );
    vec![
        (
            "wrong namespace",
            Answer::Xml(report(
                "urn:iso:std:iso:20022:tech:xsd:pain.002.001.03",
                msg_id,
                e2e,
                "<TxSts>ACSC</TxSts>",
            )),
        ),
        (
            "unknown status code",
            Answer::Xml(report(PAIN_002, msg_id, e2e, "<TxSts>WXYZ</TxSts>")),
        ),
        (
            "unknown reason code",
            Answer::Xml(report(
                PAIN_002,
                msg_id,
                e2e,
                "<TxSts>RJCT</TxSts><StsRsnInf><Rsn><Cd>ZZ99</Cd></Rsn></StsRsnInf>",
            )),
        ),
        (
            "missing status",
            Answer::Xml(report(PAIN_002, msg_id, e2e, "")),
        ),
        (
            "duplicated status",
            Answer::Xml(report(
                PAIN_002,
                msg_id,
                e2e,
                "<TxSts>ACSC</TxSts><TxSts>ACSC</TxSts>",
            )),
        ),
        (
            "a report of another message",
            Answer::Xml(report(PAIN_002, "OTHER", e2e, "<TxSts>ACSC</TxSts>")),
        ),
        (
            "a report of another operation",
            Answer::Xml(report(
                PAIN_002,
                msg_id,
                "someone-else",
                "<TxSts>ACSC</TxSts>",
            )),
        ),
        ("external entity (XXE)", Answer::Xml(xxe)),
        ("entity expansion", Answer::Xml(laughs)),
        ("not XML", Answer::Xml("{\"status\": \"ok\"}".into())),
        ("an answer of 100 MB", Answer::Big(100 << 20)),
    ]
}

#[test]
fn every_hostile_or_broken_answer_is_an_error_and_nothing_is_taken_as_booked() {
    let ids = ["h-1"];
    let dir = tempfile::tempdir().unwrap();
    // The message id is derived from the operations: the same for every attempt.
    let probe = FakeBank::start(Answer::NotFound, Answer::NotFound);
    let probe_bank = Iso20022Bank::open(settings(&probe.base), dir.path(), None).unwrap();
    let msg_id = probe_bank
        .message_for(onecard_adapters::iso20022::Direction::Debit, &[op(ids[0])])
        .msg_id;
    probe_bank.close();
    drop(probe_bank);

    for (what, answer) in hostile_answers(&msg_id, ids[0]) {
        let dir = tempfile::tempdir().unwrap();
        let bank = FakeBank::start(answer.clone(), answer);
        let adapter = Iso20022Bank::open(settings(&bank.base), dir.path(), None).unwrap();
        let got = futures::executor::block_on(adapter.debit(op(ids[0])));
        assert!(
            matches!(got, Err(BankError::Unavailable(_) | BankError::Protocol(_))),
            "{what}: {got:?}"
        );
        // Unknown: kept, not taken as booked, and not sent again while the bank's answers
        // cannot be read (the status is asked before any resend).
        adapter.resolve_orphans();
        let stats = adapter.stats();
        assert_eq!(stats.unresolved.load(Ordering::Relaxed), 1, "{what}");
        assert_eq!(
            stats.unresolved_overdue.load(Ordering::Relaxed),
            1,
            "{what}"
        );
        assert_eq!(stats.reversals.load(Ordering::Relaxed), 0, "{what}");
        assert_eq!(
            *bank.posts.lock().unwrap(),
            1,
            "{what}: sent again without an answer"
        );
        let unresolved = adapter.unresolved();
        assert_eq!(unresolved.len(), 1, "{what}");
        assert_eq!(
            (unresolved[0].id.as_str(), unresolved[0].booked),
            (ids[0], false)
        );
        assert_eq!(unresolved[0].msg_id, msg_id);
        assert!(adapter.unconfirmed().unwrap().is_empty(), "{what}");
        // The bank then says it never received it. That is not taken as "not booked" (the
        // message could still be on its way): it is sent again, and the bank rejects it now.
        *bank.status.lock().unwrap() = Answer::NotFound;
        *bank.post.lock().unwrap() = Answer::Xml(report(
            PAIN_002,
            &msg_id,
            ids[0],
            "<TxSts>RJCT</TxSts><StsRsnInf><Rsn><Cd>AM04</Cd></Rsn></StsRsnInf>",
        ));
        adapter.resolve_orphans();
        assert_eq!(*bank.posts.lock().unwrap(), 2, "{what}: sent again once");
        assert_eq!(stats.unresolved.load(Ordering::Relaxed), 0, "{what}");
        assert_eq!(
            stats.unresolved_overdue.load(Ordering::Relaxed),
            0,
            "{what}"
        );
        assert_eq!(stats.reversals.load(Ordering::Relaxed), 0, "{what}");
        adapter.close();
    }
}

#[test]
fn a_lost_answer_is_asked_about_before_any_resend_and_a_booking_is_taken_once() {
    let dir = tempfile::tempdir().unwrap();
    let probe = FakeBank::start(Answer::NotFound, Answer::NotFound);
    let adapter = Iso20022Bank::open(settings(&probe.base), dir.path(), None).unwrap();
    let msg_id = adapter
        .message_for(onecard_adapters::iso20022::Direction::Debit, &[op("l-1")])
        .msg_id;
    adapter.close();
    drop(adapter);
    // The answer to the initiation cannot be read; the status query says it was booked.
    let bank = FakeBank::start(
        Answer::Xml("<broken".into()),
        Answer::Xml(report(PAIN_002, &msg_id, "l-1", "<TxSts>ACSC</TxSts>")),
    );
    let adapter = Iso20022Bank::open(settings(&bank.base), dir.path(), None).unwrap();
    let got = futures::executor::block_on(adapter.debit(op("l-1")));
    assert_eq!(got, Ok(onecard_engine::bank::BankAnswer::Done));
    assert_eq!(*bank.posts.lock().unwrap(), 1, "booked: never sent again");
    // Booked and not yet confirmed by the engine: reported at opening.
    let unconfirmed = adapter.unconfirmed().unwrap();
    assert_eq!(unconfirmed.len(), 1);
    assert_eq!(unconfirmed[0].id, "l-1");
    adapter.confirm(&["l-1".to_string()]);
    assert!(adapter.unconfirmed().unwrap().is_empty());
    adapter.close();
}

/// The adapter's log as a crash left it: the message was sent (its line is synced first) and
/// no answer was recorded. Made by copying the log while the bank holds the answer back.
fn log_of_a_crash_in_flight(id: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let bank = FakeBank::start(
        Answer::Hang(std::time::Duration::from_secs(3)),
        Answer::Hang(std::time::Duration::from_secs(3)),
    );
    let adapter = Iso20022Bank::open(settings(&bank.base), dir.path(), None).unwrap();
    let msg_id = adapter
        .message_for(onecard_adapters::iso20022::Direction::Debit, &[op(id)])
        .msg_id;
    let call = adapter.debit(op(id));
    let waiting = std::thread::spawn(move || futures::executor::block_on(call));
    while *bank.posts.lock().unwrap() == 0 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let crashed = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(crashed.path().join("bank")).unwrap();
    std::fs::copy(
        dir.path().join("bank/sent.jsonl"),
        crashed.path().join("bank/sent.jsonl"),
    )
    .unwrap();
    adapter.close();
    drop(waiting);
    (crashed, msg_id)
}

#[test]
fn an_unknown_outcome_at_opening_is_confirmed_if_the_journal_holds_it_and_never_reversed() {
    let (crashed, msg_id) = log_of_a_crash_in_flight("c-1");
    // The bank cannot be reached at opening: the operation is reported as perhaps booked.
    let bank = FakeBank::start(Answer::Xml("<broken".into()), Answer::Xml("<broken".into()));
    let adapter = Iso20022Bank::open(settings(&bank.base), crashed.path(), None).unwrap();
    let unconfirmed = adapter.unconfirmed().unwrap();
    assert_eq!(unconfirmed.len(), 1);
    assert_eq!(unconfirmed[0].id, "c-1");
    // The engine's journal holds it (answered before the crash): confirmed. Once the bank says
    // it booked it, nothing is reversed.
    adapter.confirm(&["c-1".to_string()]);
    *bank.status.lock().unwrap() =
        Answer::Xml(report(PAIN_002, &msg_id, "c-1", "<TxSts>ACSC</TxSts>"));
    adapter.resolve_orphans();
    let stats = adapter.stats();
    assert_eq!(stats.reversals.load(Ordering::Relaxed), 0);
    assert_eq!(stats.unresolved.load(Ordering::Relaxed), 0);
    assert!(adapter.unconfirmed().unwrap().is_empty());
    adapter.close();
}

#[test]
fn an_unknown_outcome_the_journal_lacks_is_reversed_only_once_the_bank_says_it_booked_it() {
    let (crashed, msg_id) = log_of_a_crash_in_flight("u-1");
    let bank = FakeBank::start(Answer::Xml("<broken".into()), Answer::Xml("<broken".into()));
    let adapter = Iso20022Bank::open(settings(&bank.base), crashed.path(), None).unwrap();
    let unconfirmed = adapter.unconfirmed().unwrap();
    assert_eq!(unconfirmed.len(), 1);
    // The journal does not hold it: the engine asks to reverse it. Its outcome is unknown, so
    // nothing is sent yet.
    adapter.reverse("u-1").unwrap();
    let posts_before = *bank.posts.lock().unwrap();
    adapter.resolve_orphans();
    let stats = adapter.stats();
    assert_eq!(stats.reversals.load(Ordering::Relaxed), 0);
    assert_eq!(stats.unresolved.load(Ordering::Relaxed), 1);
    assert_eq!(
        *bank.posts.lock().unwrap(),
        posts_before,
        "nothing sent blindly"
    );
    // The bank says it booked it: the reversal (a credit transfer, `RV-u-1`) goes out.
    *bank.status.lock().unwrap() =
        Answer::Xml(report(PAIN_002, &msg_id, "u-1", "<TxSts>ACSC</TxSts>"));
    let reversal = BankOp {
        id: onecard_adapters::iso20022::bank::reversal_id("u-1"),
        ..op("u-1")
    };
    let rv_msg = adapter
        .message_for(
            onecard_adapters::iso20022::Direction::Credit,
            std::slice::from_ref(&reversal),
        )
        .msg_id;
    *bank.post.lock().unwrap() = Answer::Xml(report_of(
        "pain.001.001.09",
        PAIN_002,
        &rv_msg,
        &reversal.id,
        "<TxSts>ACSC</TxSts>",
    ));
    adapter.resolve_orphans();
    assert_eq!(stats.reversals.load(Ordering::Relaxed), 1);
    assert_eq!(stats.unresolved.load(Ordering::Relaxed), 0);
    adapter.close();
}
