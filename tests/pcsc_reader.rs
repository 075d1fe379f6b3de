//! The reader program against a real PC/SC stack: `pcscd` with the vsmartcard `vpcd` driver,
//! and the virtual OneCard card (`onecard_sim::card`) plugged into `Virtual PCD 00 00` or
//! `00 01` over TCP, as a card would sit in a USB reader. The node side is the engine's
//! authentication center in process, or a running `onecard serve` over HTTP on loopback (the
//! last tests: a merchant's order paid with `onecard-terminal pay --node`).
//!
//! Each test starts `pcscd -f -a` itself (in the foreground, as root, no systemd) and stops it
//! at the end; the tests share the vpcd ports, so they run one at a time (nextest group
//! `serial`). Needs the Debian packages `pcscd`, `vsmartcard-vpcd` and `libpcsclite-dev`,
//! which `scripts/test.sh` installs.
#![cfg(feature = "pcsc")]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use onecard_engine::cards::{AuthCenter, AuthConfig, IssuerKey, NewReader, Prompt};
use onecard_engine::engine::{EngineConfig, IssueCard, OpenConsumer};
use onecard_engine::{Amount, Engine, SimBank, SimBankPort};
use onecard_sim::card::applet::CardApplet;
use onecard_sim::card::vpcd;
use onecard_terminal::flow::{self, Console, PaymentEnd, PaymentRequest};
use onecard_terminal::pcsc_reader::{PcscReader, ReaderError};
use onecard_testkit::{EngineLink, LocalCenter};
use rand::rngs::StdRng;
use rand::SeedableRng;

const READER_0: &str = "Virtual PCD 00 00";
const READER_1: &str = "Virtual PCD 00 01";
const PORT_0: u16 = 35963;
const PORT_1: u16 = 35964;
const CARD_A: &str = "4000001234567890";
const CARD_B: &str = "4000009876543210";
const PIN: &str = "4711";
const HOME: &str = "1 Main Street, Springfield";

fn master() -> IssuerKey {
    IssuerKey::from_bytes([42u8; 32])
}

/// `pcscd` in the foreground, started for this test and stopped (SIGTERM) when dropped.
struct Pcscd {
    child: Child,
}

fn pcscd_running() -> bool {
    Command::new("pgrep")
        .arg("-x")
        .arg("pcscd")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Pcscd {
    fn start() -> Pcscd {
        assert!(
            !pcscd_running(),
            "a pcscd not started by this test is running; stop it first (these tests start their own)"
        );
        // A second try when the readers do not come up: the machine is shared and busy, and
        // pcscd's vpcd driver may find one of its ports still held for a moment.
        let mut last_error = String::new();
        for _attempt in 0..2 {
            let child = Command::new("pcscd")
                .args(["--foreground", "--auto-exit"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start pcscd (Debian package pcscd; scripts/test.sh installs it)");
            let started = Pcscd { child };
            // Up once its readers are listed: the vpcd driver then listens on its ports.
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                match PcscReader::open(Some(READER_1)) {
                    Ok(_) => return started,
                    Err(e) if Instant::now() > deadline => {
                        last_error = e.to_string();
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
            drop(started);
            std::thread::sleep(Duration::from_secs(2));
        }
        let sockets = Command::new("ss")
            .args(["-tan"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains(":3596"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        panic!("pcscd did not come up: {last_error}\nsockets on the vpcd ports:\n{sockets}");
    }
}

impl Drop for Pcscd {
    fn drop(&mut self) {
        // SIGTERM lets pcscd remove its socket; then wait for it to be gone for good.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The virtual card, inserted into the vpcd reader on `port` until removed (or dropped).
struct InsertedCard {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<CardApplet>>,
}

impl InsertedCard {
    fn insert(port: u16, mut applet: CardApplet) -> InsertedCard {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let stream = vpcd::connect_with_retry(("127.0.0.1", port), Duration::from_secs(10))
                .expect("vpcd listens on its port");
            let _ = vpcd::run_card(stream, &mut applet, &flag);
            applet
        });
        InsertedCard {
            stop,
            thread: Some(thread),
        }
    }

    /// Pulls the card out of the reader; returns it (with its counter).
    fn remove(&mut self) -> Option<CardApplet> {
        self.stop.store(true, Ordering::Release);
        self.thread.take().map(|t| t.join().expect("card thread"))
    }
}

impl Drop for InsertedCard {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The consumer at the keypad: types `pin`, and may do something (pull the card) first.
struct Consumer {
    pin: String,
    shown: Vec<Prompt>,
    before_pin: Option<Box<dyn FnMut()>>,
}

impl Console for Consumer {
    fn show(&mut self, prompt: &Prompt) {
        self.shown.push(prompt.clone());
    }
    fn read_pin(&mut self) -> Option<String> {
        if let Some(f) = self.before_pin.as_mut() {
            f();
        }
        Some(self.pin.clone())
    }
    fn confirm(&mut self, _question: &Prompt) -> bool {
        true
    }
}

/// Two cards, each bound 1:1 to its reader id on the loopback network.
fn node() -> (AuthCenter, CardApplet, CardApplet) {
    let center = AuthCenter::new(master(), AuthConfig::default());
    let mut changes = Vec::new();
    let mut applets = Vec::new();
    for (number, holder, reader) in [(CARD_A, "alice", "reader-A"), (CARD_B, "bob", "reader-B")] {
        let key = center
            .issue_card(number, holder, PIN, HOME, &mut changes)
            .expect("issue");
        center
            .register_reader(
                NewReader {
                    id: reader.into(),
                    owner: holder.into(),
                    card_number: number.into(),
                    account: holder.into(),
                    network: "127.0.0.0/8".parse().expect("net"),
                },
                &mut changes,
            )
            .expect("register");
        applets.push(CardApplet::new(number.into(), holder.into(), key, 0));
    }
    let b = applets.pop().expect("b");
    let a = applets.pop().expect("a");
    (center, a, b)
}

/// The node, in process: the authentication center, the account's available credit, and the
/// address the reader program connects from (loopback).
fn link(center: &mut AuthCenter) -> LocalCenter<'_, StdRng> {
    LocalCenter {
        center,
        changes: Vec::new(),
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        available_credit_cents: 100_000,
        now: 1_000,
        rng: StdRng::seed_from_u64(2),
        reachable: true,
    }
}

fn request(reader_id: &str, order: &str) -> PaymentRequest {
    PaymentRequest {
        reader_id: reader_id.into(),
        order_id: order.into(),
        amount_cents: 4_250,
        delivery_address: HOME.into(),
    }
}

fn consumer() -> Consumer {
    Consumer {
        pin: PIN.into(),
        shown: Vec::new(),
        before_pin: None,
    }
}

#[test]
fn the_terminal_finds_the_virtual_reader_reads_the_card_and_is_authorised_by_the_engine() {
    let _pcscd = Pcscd::start();
    let dir = tempfile::tempdir().expect("temp dir");
    actix_rt::System::new().block_on(async {
        // The node: a consumer with 1000.00 of credit, her card issued and her reader bound.
        let (engine, bank, applet) = node_with_alice(dir.path()).await;

        // The card in Virtual PCD 00 00, read through PC/SC by the reader program.
        let mut inserted = InsertedCard::insert(PORT_0, applet);
        let reader = PcscReader::open(Some(READER_0)).expect("Virtual PCD 00 00 is attached");
        assert_eq!(reader.name(), READER_0);
        reader
            .wait_for_card(Duration::from_secs(10))
            .expect("the card is inserted");
        let mut card = reader.connect().expect("connect to the card");
        let mut console = consumer();
        let end = flow::pay(
            &mut card,
            &mut EngineLink {
                engine: &engine,
                peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
                now: 10,
                at_reader: None,
            },
            &mut console,
            &request("reader-A", "o-1"),
            &mut StdRng::seed_from_u64(3),
        );
        match &end {
            PaymentEnd::Authorised(a) => {
                assert_eq!(a.order_id, "o-1");
                assert_eq!(a.amount_cents, 4_250);
                assert_eq!(a.account, "alice");
                assert_eq!(a.card_last4, "7890");
                assert!(!a.temporary_address_change);
            }
            other => panic!(
                "expected an authorisation, got {other:?}; shown {:?}",
                console.shown
            ),
        }
        assert_eq!(
            console.shown.last(),
            Some(&Prompt::authorised()),
            "the reader shows the outcome"
        );
        drop(card);
        let applet = inserted.remove().expect("the card comes back");
        assert_eq!(applet.counter(), 1, "the card signed once");
        let stored = engine.card(CARD_A).expect("engine").expect("card");
        assert_eq!(stored.last_counter, 1, "the node recorded the counter");
        engine.close().await.expect("close");
        bank.close();
    });
    // Durable and consistent: the journal's replay agrees with the view, card included.
    let report = onecard_engine::verify::verify(dir.path()).expect("verify");
    assert_eq!(report.view_checked, Some(report.records));
}

#[test]
fn pulling_the_card_in_the_middle_of_the_flow_aborts_it_cleanly() {
    let _pcscd = Pcscd::start();
    let (mut center, card_a, _) = node();
    let inserted = Arc::new(Mutex::new(InsertedCard::insert(PORT_0, card_a)));
    let reader = PcscReader::open(Some(READER_0)).expect("reader");
    reader.wait_for_card(Duration::from_secs(10)).expect("card");
    let mut card = reader.connect().expect("connect");
    let mut console = consumer();
    // The consumer pulls the card while the reader asks for the PIN.
    let pull = inserted.clone();
    console.before_pin = Some(Box::new(move || {
        pull.lock().unwrap().remove();
        // pcscd notices within its polling interval.
        std::thread::sleep(Duration::from_millis(600));
    }));
    let end = flow::pay(
        &mut card,
        &mut link(&mut center),
        &mut console,
        &request("reader-A", "o-2"),
        &mut StdRng::seed_from_u64(4),
    );
    match &end {
        PaymentEnd::Aborted { prompt, .. } => {
            assert_eq!(prompt, &flow::prompts::card_removed(), "{end:?}");
        }
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(console.shown.last(), Some(&flow::prompts::card_removed()));
    assert_eq!(
        center.card(CARD_A).expect("card").last_counter,
        0,
        "nothing was authenticated"
    );
}

#[test]
fn the_reader_service_vanishing_in_the_middle_of_the_flow_aborts_it_cleanly() {
    let pcscd = Arc::new(Mutex::new(Some(Pcscd::start())));
    let (mut center, card_a, _) = node();
    let _inserted = InsertedCard::insert(PORT_0, card_a);
    let reader = PcscReader::open(Some(READER_0)).expect("reader");
    reader.wait_for_card(Duration::from_secs(10)).expect("card");
    let mut card = reader.connect().expect("connect");
    let mut console = consumer();
    // While the reader asks for the PIN, the PC/SC service goes away (as when the reader's
    // driver dies or the reader is unplugged): the card can no longer be reached.
    let stop = pcscd.clone();
    console.before_pin = Some(Box::new(move || {
        stop.lock().unwrap().take();
    }));
    let end = flow::pay(
        &mut card,
        &mut link(&mut center),
        &mut console,
        &request("reader-A", "o-4"),
        &mut StdRng::seed_from_u64(6),
    );
    match &end {
        PaymentEnd::Aborted { prompt, reason } => {
            eprintln!("the service vanished: {reason} → {}", prompt.text);
            assert!(
                [
                    flow::prompts::reader_gone(),
                    flow::prompts::no_service(),
                    flow::prompts::card_removed()
                ]
                .contains(prompt),
                "a clear prompt, got {prompt:?} ({reason})"
            );
        }
        other => panic!("expected an abort, got {other:?}"),
    }
    assert_eq!(
        center.card(CARD_A).expect("card").last_counter,
        0,
        "nothing was authenticated"
    );
}

#[test]
fn a_card_on_a_reader_it_is_not_bound_to_is_refused() {
    let _pcscd = Pcscd::start();
    let (mut center, card_a, _card_b) = node();
    // Alice's card in the reader that is bob's (reader-B, bound to card B).
    let _inserted = InsertedCard::insert(PORT_1, card_a);
    let reader = PcscReader::open(Some(READER_1)).expect("reader");
    reader.wait_for_card(Duration::from_secs(10)).expect("card");
    let mut card = reader.connect().expect("connect");
    let mut console = consumer();
    let end = flow::pay(
        &mut card,
        &mut link(&mut center),
        &mut console,
        &request("reader-B", "o-3"),
        &mut StdRng::seed_from_u64(5),
    );
    assert_eq!(end, PaymentEnd::Refused(Prompt::not_bound()));
    assert_eq!(center.outstanding_challenges(), 0);
    assert_eq!(
        center.card(CARD_A).expect("card").last_counter,
        0,
        "no challenge, no signature"
    );
}

#[test]
fn without_pcscd_the_terminal_says_no_reader_service_is_available() {
    assert!(
        !pcscd_running(),
        "a pcscd not started by this test is running; stop it first"
    );
    match PcscReader::open(Some(READER_0)) {
        Err(ReaderError::NoService(_)) => {}
        Err(other) => panic!("expected NoService, got {other}"),
        Ok(_) => panic!("a reader without pcscd"),
    }
    let shown = ReaderError::NoService("x".into()).to_string();
    assert!(shown.contains("pcscd"), "{shown}");
}

/// Opens the node on `dir` with alice (1000.00 of credit), her card issued and her reader
/// bound to loopback; returns the engine, its bank, and her card personalised.
async fn node_with_alice(dir: &std::path::Path) -> (Engine, Arc<SimBank>, CardApplet) {
    let bank = SimBank::open(dir).expect("bank");
    let cfg = EngineConfig {
        issuer_key: Some(master()),
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir, cfg, Arc::new(SimBankPort(bank.clone())))
        .await
        .expect("engine");
    // The simulated bank opens with the engine: its accounts are records of the engine's log.
    bank.open_account("alice-bank", Amount::from_cents(900_000))
        .expect("bank account");
    engine
        .open_consumer(
            OpenConsumer {
                consumer: "alice".into(),
                credit_limit: "1000.00".into(),
                bank: "alice-bank".into(),
                wallet: "5000.00".into(),
            },
            0,
        )
        .await
        .expect("engine")
        .expect("opened");
    let key = engine
        .issue_card(
            IssueCard {
                number: CARD_A.into(),
                holder: "alice".into(),
                pin: PIN.into(),
                registered_address: HOME.into(),
            },
            0,
        )
        .await
        .expect("engine")
        .expect("issued");
    engine
        .register_reader(
            NewReader {
                id: "reader-A".into(),
                owner: "alice".into(),
                card_number: CARD_A.into(),
                account: "alice".into(),
                network: "127.0.0.0/8".parse().expect("net"),
            },
            0,
        )
        .await
        .expect("engine")
        .expect("registered");
    (
        engine,
        bank,
        CardApplet::new(CARD_A.into(), "alice".into(), key, 0),
    )
}

/// The reader program: the `onecard-terminal` binary of the terminal crate (which carries
/// nothing of the node), built with its `pcsc` feature.
fn terminal_program() -> std::path::PathBuf {
    common::workspace_binary(
        "onecard-terminal",
        "onecard-terminal",
        &["pcsc"],
        &["terminal", "protocol"],
    )
}

/// Runs the `onecard-terminal` binary with `stdin` typed in; (status, stdout, stderr).
fn terminal(args: &[&str], stdin: &str) -> (std::process::ExitStatus, String, String) {
    use std::io::{Read, Write};
    let mut child = Command::new(terminal_program())
        .args(args)
        .env("ONECARD_ISSUER_KEY", "2a".repeat(32))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run onecard-terminal");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("type");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("onecard-terminal hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .expect("out")
        .read_to_string(&mut out)
        .expect("read");
    child
        .stderr
        .take()
        .expect("err")
        .read_to_string(&mut err)
        .expect("read");
    (status, out, err)
}

#[test]
fn the_terminal_program_reaches_the_node_only_over_http() {
    // The reader program carries nothing of the node: it cannot open a node's data directory
    // in process (the test kit's `EngineLink` does that for the tests and the demo), and it
    // says what it needs before it looks for a reader.
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().to_str().expect("utf-8 path");
    let (status, _, err) = terminal(
        &[
            "pay",
            "--node-data",
            data,
            "--reader-id",
            "reader-A",
            "--order",
            "o-7",
        ],
        "",
    );
    assert!(!status.success());
    assert!(err.contains("unknown option \"--node-data\""), "{err}");
    let (status, _, err) = terminal(&["pay", "--reader-id", "reader-A", "--order", "o-7"], "");
    assert!(!status.success());
    assert!(err.contains("missing --node"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Over HTTP: a running `onecard serve`, the merchant's order, and `onecard-terminal pay --node`.

/// The card the node issued over its admin API (`card_key` of `POST /v1/admin/cards`), as the
/// virtual card: alice's number and holder reference, its counter at 0.
fn issued_card(w: &common::node::World) -> CardApplet {
    common::node::card_for(w, 0).0
}

/// `onecard-terminal pay --node` at Virtual PCD 00 00 for `order`, with `pin` typed in.
fn pay_at_node(
    node: &common::node::NodeProc,
    w: &common::node::World,
    order: &str,
    pin: &str,
) -> (std::process::ExitStatus, String, String) {
    terminal(
        &[
            "pay",
            "--node",
            &node.base,
            "--reader",
            READER_0,
            "--reader-id",
            &w.reader_id,
            "--order",
            order,
            "--wait-secs",
            "10",
        ],
        &format!("{pin}\n"),
    )
}

/// `GET /v1/orders/{order}` as the merchant.
fn merchant_order(
    node: &common::node::NodeProc,
    w: &common::node::World,
    order: &str,
) -> serde_json::Value {
    let a = common::node::call(
        "GET",
        &node.url(&format!("/v1/orders/{order}")),
        Some(&w.api_key),
        None,
        None,
    );
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body
}

#[test]
fn the_terminal_program_pays_a_merchants_order_at_a_running_node_with_the_virtual_card() {
    use common::node::{call, create_order, eventually, setup, NodeProc, Printer};
    let dir = tempfile::tempdir().expect("temp dir");
    let printer = Printer::start();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, Some(&printer.addr.to_string()), None);
    // Step 1: the merchant's checkout, over HTTP.
    let order = create_order(&node, &w, "42.50", false);
    assert_eq!(
        merchant_order(&node, &w, &order)["state"],
        "awaiting_payment"
    );

    // Steps 2-4: the reader program opens the checkout at the node and pays it with the card
    // in the PC/SC reader, the PIN typed on its standard input.
    // The reader program is built (once, by the first test that needs it) before the card is
    // inserted: a build of minutes on a loaded machine must not stand between the card's
    // insertion and its first use.
    terminal_program();
    let _pcscd = Pcscd::start();
    let mut inserted = InsertedCard::insert(PORT_0, issued_card(&w));
    let (status, out, err) = pay_at_node(&node, &w, &order, common::node::PIN);
    assert!(
        status.success(),
        "stdout:\n{out}\nstderr:\n{err}\nnode:\n{}",
        node.log()
    );
    let lines: Vec<&str> = out.lines().collect();
    for expected in [
        format!("checkout: order {order}"),
        "merchant: The Tea Shop".to_string(),
        "amount: 42.50 EUR".to_string(),
        format!("deliver to: Alice Example, {}", common::node::HOME),
        format!("order: {order} pending"),
    ] {
        assert!(
            lines.iter().any(|l| l.trim_end() == expected),
            "{expected:?} not in the output:\n{out}"
        );
    }
    assert!(out.contains("Enter your PIN"), "{out}");
    assert!(out.contains("Payment authorised"), "{out}");
    let session = lines
        .iter()
        .find_map(|l| l.strip_prefix("session: "))
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|| panic!("no session line:\n{out}"));
    assert!(!session.is_empty(), "{out}");
    assert!(
        !out.contains(&format!("PIN: {}", common::node::PIN)),
        "the PIN is never shown:\n{out}"
    );
    let applet = inserted.remove().expect("the card comes back");
    assert_eq!(applet.counter(), 1, "the card signed once");

    // Step 5: the slip at the merchant's printer, decoded from its ESC/POS bytes.
    let slips = eventually(20, || {
        let s = printer.slips();
        (!s.is_empty()).then_some(s)
    })
    .expect("the slip is printed");
    let decoded = onecard_adapters::printer::decode(&slips[0]).expect("valid ESC/POS");
    let text = decoded.lines.join("\n");
    for expected in [
        format!("Order: {order}"),
        "Deliver to: Alice Example".to_string(),
        format!("Address: {}", common::node::HOME),
    ] {
        assert!(
            decoded.lines.iter().any(|l| l.contains(&expected)),
            "{expected:?} not on the slip:\n{text}"
        );
    }
    let printed = eventually(20, || {
        let o = merchant_order(&node, &w, &order);
        (o["print"]["status"] == "printed").then_some(o)
    })
    .expect("the print status on the order");
    assert_eq!(printed["state"], "pending");

    // Step 6: the consumer confirms receipt with the session the reader program printed.
    let confirmed = call(
        "POST",
        &node.url(&format!("/v1/consumer/orders/{order}/receipt")),
        Some(&session),
        None,
        Some(&serde_json::json!({"satisfied": true})),
    );
    assert_eq!(confirmed.status, 200, "{:?}", confirmed.body);
    assert_eq!(confirmed.body["state"], "settled");
    assert_eq!(merchant_order(&node, &w, &order)["state"], "settled");
    assert_eq!(printer.slips().len(), 1, "printed once");
}

#[test]
fn a_wrong_pin_at_the_virtual_reader_places_no_order_at_the_running_node() {
    use common::node::{create_order, setup, NodeProc, Printer};
    let dir = tempfile::tempdir().expect("temp dir");
    let printer = Printer::start();
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, Some(&printer.addr.to_string()), None);
    let order = create_order(&node, &w, "9.99", false);

    // The reader program is built (once, by the first test that needs it) before the card is
    // inserted: a build of minutes on a loaded machine must not stand between the card's
    // insertion and its first use.
    terminal_program();
    let _pcscd = Pcscd::start();
    let _inserted = InsertedCard::insert(PORT_0, issued_card(&w));
    let (status, out, err) = pay_at_node(&node, &w, &order, "0000");
    assert!(!status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("\u{7}\u{7}Wrong PIN, 2 tries left"), "{out}");
    assert!(
        !out.lines()
            .any(|l| l.starts_with("order: ") || l.starts_with("session: ")),
        "nothing placed, no session:\n{out}"
    );
    let o = merchant_order(&node, &w, &order);
    assert_eq!(o["state"], "awaiting_payment", "{o}");
    assert_eq!(o["print"]["status"], "waiting_for_payment", "{o}");

    // The same card and order, the right PIN: now it is placed (the card's counter moved on).
    let (status, out, err) = pay_at_node(&node, &w, &order, common::node::PIN);
    assert!(status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.lines()
            .any(|l| l.trim_end() == format!("order: {order} pending")),
        "{out}"
    );
    assert_eq!(merchant_order(&node, &w, &order)["state"], "pending");
}

#[test]
fn the_terminal_program_signs_in_with_card_and_pin_for_a_consumer_session() {
    use common::node::{call, setup, NodeProc};
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProc::start(&dir.path().join("data"));
    let w = setup(&node, None, None);
    // The reader program is built (once, by the first test that needs it) before the card is
    // inserted: a build of minutes on a loaded machine must not stand between the card's
    // insertion and its first use.
    terminal_program();
    let _pcscd = Pcscd::start();
    let mut inserted = InsertedCard::insert(PORT_0, issued_card(&w));
    let (status, out, err) = terminal(
        &[
            "login",
            "--node",
            &node.base,
            "--reader",
            READER_0,
            "--reader-id",
            &w.reader_id,
            "--wait-secs",
            "10",
        ],
        &format!("{}\n", common::node::PIN),
    );
    assert!(
        status.success(),
        "stdout:\n{out}\nstderr:\n{err}\nnode:\n{}",
        node.log()
    );
    assert!(
        out.contains("Enter your PIN") && out.contains("Signed in"),
        "{out}"
    );
    assert!(out.contains("signed in: account alice"), "{out}");
    let session = out
        .lines()
        .find_map(|l| l.strip_prefix("session: "))
        .map(|t| t.trim().to_string())
        .unwrap_or_else(|| panic!("no session line:\n{out}"));
    let account = call(
        "GET",
        &node.url("/v1/consumer/account"),
        Some(&session),
        None,
        None,
    );
    assert_eq!(account.status, 200, "{:?}", account.body);
    assert_eq!(account.body["consumer"], "alice");
    let applet = inserted.remove().expect("the card comes back");
    assert_eq!(
        applet.counter(),
        1,
        "the card signed the sign-in's challenge"
    );
}
