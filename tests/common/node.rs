//! A running `onecard serve` for the end-to-end tests, over real HTTP on loopback: start it on
//! a free port with a fresh data directory, call its API, stop it with SIGTERM or SIGKILL, and
//! the peers a node talks to played by real sockets (a port-9100 printer, a merchant's webhook
//! endpoint). Also a simulated card (the applet in memory) for paying through the reader API.
#![allow(dead_code)] // not every test binary uses every helper

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use onecard_engine::cards::{CardKey, Prompt};
use onecard_sim::card::applet::CardApplet;
use onecard_terminal::channel::{CardChannel, CardIoError};
use onecard_terminal::flow::{self, Console, PaymentEnd, PaymentRequest};
use onecard_terminal::http_link::{HttpLink, LinkOptions};
use onecard_terminal::wire::AuthAnswer;
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const ISSUER_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
pub const DATA_KEY: &str = "2222222222222222222222222222222222222222222222222222222222222222";
pub const CARD: &str = "4000001234567890";
pub const PIN: &str = "2468";
pub const HOME: &str = "1 Main Street";
pub const BANK: &str = "DE89370400440532013000";

/// A `onecard serve` process.
pub struct NodeProc {
    child: Option<Child>,
    pub base: String,
    pub data: PathBuf,
    log: Arc<Mutex<String>>,
}

impl NodeProc {
    /// Starts a node on `data` (created if absent) on a free loopback port; waits until it
    /// listens.
    pub fn start(data: &Path) -> NodeProc {
        NodeProc::start_with(data, &[], None)
    }

    pub fn start_with(data: &Path, env: &[(&str, &str)], config: Option<&Path>) -> NodeProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_onecard"));
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data")
            .arg(data)
            .env("ONECARD_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("ONECARD_ISSUER_KEY", ISSUER_KEY)
            .env("ONECARD_DATA_KEY", DATA_KEY)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        } else {
            // Not the repository's config.toml: the built-in defaults, with a fast tick.
            let cfg = data.with_extension("toml");
            std::fs::write(&cfg, "[node]\ntick_interval_ms = 200\n").unwrap();
            cmd.arg("--config").arg(cfg);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn onecard serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        if let Some(tx) = tx.take() {
                            let url = rest.split_whitespace().next().unwrap_or("").to_string();
                            let _ = tx.send(url);
                        }
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let base = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("the node did not start: {}", log.lock().unwrap());
            }
        };
        NodeProc {
            child: Some(child),
            base,
            data: data.to_path_buf(),
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What the node wrote on standard error so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// SIGTERM, then waits for the exit (at most 2 minutes).
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.pid();
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        self.wait(Duration::from_secs(120))
    }

    /// Sends `signal` (e.g. SIGINT), then waits for the exit (at most 2 minutes).
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let pid = self.pid();
        unsafe {
            libc::kill(pid, signal);
        }
        self.wait(Duration::from_secs(120))
    }

    /// SIGKILL: nothing gets to run.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let mut child = self.child.take().expect("running");
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the node did not stop: {}", self.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP answer: status, JSON body (or `Value::String` of a non-JSON body), headers asked for.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub replayed: bool,
    pub request_id: Option<String>,
}

/// One agent for the test binary: its connections are kept alive and reused, so the tests do
/// not churn through thousands of ephemeral ports (which could land on the vpcd ports the PC/SC
/// tests need).
pub fn agent() -> ureq::Agent {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    AGENT
        .get_or_init(|| {
            ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(30))
                .max_idle_connections_per_host(64)
                .build()
        })
        .clone()
}

/// One request. `token` goes in `Authorization: Bearer`, `idem` in `Idempotency-Key`.
pub fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    idem: Option<&str>,
    body: Option<&Value>,
) -> Answer {
    call_raw(
        method,
        url,
        token,
        idem,
        body.map(|b| b.to_string()).as_deref(),
    )
}

pub fn call_raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    idem: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut req = agent().request(method, url);
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    if let Some(k) = idem {
        req = req.set("Idempotency-Key", k);
    }
    let result = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let replayed = resp.header("idempotent-replayed").is_some();
    let request_id = resp.header("x-request-id").map(str::to_string);
    let text = resp.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        body,
        replayed,
        request_id,
    }
}

pub fn admin(node: &NodeProc, path: &str, body: Value) -> Answer {
    call(
        "POST",
        &node.url(path),
        Some(ADMIN_TOKEN),
        None,
        Some(&body),
    )
}

/// What [`setup`] registered.
#[derive(Debug, Clone)]
pub struct World {
    pub api_key: String,
    pub webhook_secret: String,
    pub card_key: [u8; 32],
    pub reader_id: String,
}

/// A bank account, consumer `alice` (credit 2000.00, wallet 500.00), merchant `shop` with the
/// given printer and webhook endpoint, alice's card and her reader at 127.0.0.1.
pub fn setup(node: &NodeProc, printer: Option<&str>, webhook: Option<&str>) -> World {
    let a = admin(
        node,
        "/v1/admin/bank-accounts",
        json!({"account": BANK, "balance": "10000.00"}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = admin(
        node,
        "/v1/admin/consumers",
        json!({"consumer": "alice", "credit_limit": "2000.00", "bank": BANK, "wallet": "500.00"}),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let mut m = json!({"id": "shop", "name": "The Tea Shop"});
    if let Some(p) = printer {
        m["printer"] = json!(p);
    }
    if let Some(w) = webhook {
        m["webhook_url"] = json!(w);
    }
    let merchant = admin(node, "/v1/admin/merchants", m);
    assert_eq!(merchant.status, 201, "{:?}", merchant.body);
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

/// Issues `holder` a card with `pin` (registered address [`HOME`]) and registers its reader
/// `reader_id` at 127.0.0.1; returns the card key the node gave for personalising the card.
pub fn issue_card_with_reader(
    node: &NodeProc,
    holder: &str,
    card: &str,
    pin: &str,
    reader_id: &str,
) -> [u8; 32] {
    let issued = admin(
        node,
        "/v1/admin/cards",
        json!({"number": card, "holder": holder, "pin": pin, "registered_address": HOME}),
    );
    assert_eq!(issued.status, 201, "{:?}", issued.body);
    let reader = admin(
        node,
        "/v1/admin/readers",
        json!({"id": reader_id, "owner": holder, "card_number": card, "account": holder, "network": "127.0.0.1"}),
    );
    assert_eq!(reader.status, 201, "{:?}", reader.body);
    hex::decode(issued.body["card_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap()
}

/// A merchant's order body.
pub fn order_body(amount: &str, digital: bool) -> Value {
    json!({
        "amount": amount,
        "items": [{"name": "Green tea", "quantity": 2}, {"name": "Teapot", "quantity": 1}],
        "delivery": {"name": "Alice Example", "address": HOME, "phone": "+49 30 123456"},
        "release": {"on": "receipt"},
        "digital": digital,
        "reference": "web-1001"
    })
}

/// Creates an order as merchant; returns its id.
pub fn create_order(node: &NodeProc, w: &World, amount: &str, digital: bool) -> String {
    let a = call(
        "POST",
        &node.url("/v1/orders"),
        Some(&w.api_key),
        None,
        Some(&order_body(amount, digital)),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    a.body["id"].as_str().unwrap().to_string()
}

/// The card's applet in memory: a simulated card in a simulated reader.
pub struct MemoryCard(pub CardApplet);

impl CardChannel for MemoryCard {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CardIoError> {
        Ok(self.0.process(apdu))
    }
}

/// The consumer at the reader: types `pin`, answers address questions with `accept`.
pub struct Keypad {
    pub pin: String,
    pub accept: bool,
    pub shown: Vec<Prompt>,
}

impl Console for Keypad {
    fn show(&mut self, prompt: &Prompt) {
        self.shown.push(prompt.clone());
    }
    fn read_pin(&mut self) -> Option<String> {
        Some(self.pin.clone())
    }
    fn confirm(&mut self, _question: &Prompt) -> bool {
        self.accept
    }
}

pub fn card_for(w: &World, counter: u32) -> MemoryCard {
    MemoryCard(CardApplet::new(
        CARD.into(),
        "alice".into(),
        CardKey::from_bytes(w.card_key),
        counter,
    ))
}

/// Steps 1 to 4 over the reader API with the simulated card: opens the checkout, pays it with
/// `pin`. Returns how it ended and the node's last answer (order, session).
pub fn pay(
    node: &NodeProc,
    w: &World,
    card: &mut MemoryCard,
    order: &str,
    pin: &str,
) -> (PaymentEnd, Option<AuthAnswer>) {
    let mut link = HttpLink::new(&node.base, LinkOptions::default()).expect("link");
    let checkout = link.checkout(order).expect("checkout");
    let req = PaymentRequest {
        reader_id: w.reader_id.clone(),
        order_id: order.to_string(),
        amount_cents: checkout.amount_cents,
        delivery_address: checkout.delivery_address.clone(),
    };
    let mut keypad = Keypad {
        pin: pin.into(),
        accept: true,
        shown: Vec::new(),
    };
    let end = flow::pay(card, &mut link, &mut keypad, &req, &mut rand::rngs::OsRng);
    (end, link.last_answer().cloned())
}

/// Pays `order` at the reader with the simulated card (transaction counter `counter`) and the
/// right PIN; asserts it is authorised and returns the consumer session the node issued.
pub fn pay_with_session(node: &NodeProc, w: &World, counter: u32, order: &str) -> String {
    let mut card = card_for(w, counter);
    let (end, answer) = pay(node, w, &mut card, order, PIN);
    assert!(matches!(end, PaymentEnd::Authorised(_)), "{end:?}");
    answer
        .and_then(|a| a.session)
        .expect("a consumer session")
        .token
}

/// The consumer confirms receipt of `order`, satisfied: the node's answer.
pub fn confirm_receipt(node: &NodeProc, session: &str, order: &str) -> Answer {
    call(
        "POST",
        &node.url(&format!("/v1/consumer/orders/{order}/receipt")),
        Some(session),
        Some(&format!("receipt-{order}")),
        Some(&json!({"satisfied": true})),
    )
}

/// A port-9100 printer: records every connection's bytes.
pub struct Printer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Printer {
    pub fn start() -> Printer {
        Printer::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// On a given address (to bring an offline printer back on its port).
    pub fn start_on(addr: SocketAddr) -> Printer {
        let listener = TcpListener::bind(addr).expect("bind printer");
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        {
            let received = received.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    let mut bytes = Vec::new();
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let _ = conn.read_to_end(&mut bytes);
                    received.lock().unwrap().push(bytes);
                }
            });
        }
        Printer { addr, received }
    }

    pub fn slips(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }
}

/// A free loopback port with nothing listening on it (an offline printer or endpoint).
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A merchant's webhook endpoint: records every request (headers, body); answers 200, or 503
/// while `down` is set.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Hook>>>,
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub event_id: String,
    pub signature: String,
    pub body: String,
    /// Whether the endpoint answered 2xx to this one.
    pub accepted: bool,
}

impl Endpoint {
    pub fn start() -> Endpoint {
        Endpoint::start_on("127.0.0.1:0".parse().unwrap())
    }

    pub fn start_on(addr: SocketAddr) -> Endpoint {
        let listener = TcpListener::bind(addr).expect("bind endpoint");
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<Hook>>> = Arc::default();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (received, down) = (received.clone(), down.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let (received, down) = (received.clone(), down.clone());
                    thread::spawn(move || serve_hooks(conn, &received, &down));
                }
            });
        }
        Endpoint {
            addr,
            received,
            down,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.received.lock().unwrap().clone()
    }
}

fn serve_hooks(conn: TcpStream, received: &Mutex<Vec<Hook>>, down: &std::sync::atomic::AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut conn = conn;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let (mut len, mut event_id, mut signature) = (0usize, String::new(), String::new());
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "onecard-event-id" => event_id = v.trim().to_string(),
                    "onecard-signature" => signature = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let is_down = down.load(std::sync::atomic::Ordering::SeqCst);
        received.lock().unwrap().push(Hook {
            event_id,
            signature,
            body: String::from_utf8_lossy(&body).into_owned(),
            accepted: !is_down,
        });
        let status = if is_down {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        );
    }
}

/// Checks a webhook's `OneCard-Signature` (`t=…,v1=hex(HMAC-SHA256(secret, "t.body"))`).
pub fn signature_ok(secret: &str, hook: &Hook) -> bool {
    use hmac::{Hmac, Mac};
    let Some((t, v1)) = hook
        .signature
        .split_once(",v1=")
        .and_then(|(t, v)| Some((t.strip_prefix("t=")?, v)))
    else {
        return false;
    };
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", hook.body).as_bytes());
    hex::encode(mac.finalize().into_bytes()) == v1
}

/// Polls `f` until it gives `Some`, for at most `secs` seconds.
pub fn eventually<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A sign-in at the reader with the simulated card (card and PIN, nothing paid): how it ended
/// and the node's last answer (with the session when it worked).
pub fn sign_in(
    node: &NodeProc,
    w: &World,
    card: &mut MemoryCard,
    pin: &str,
) -> (PaymentEnd, Option<AuthAnswer>) {
    let mut link = HttpLink::new(&node.base, LinkOptions::default()).expect("link");
    let req = PaymentRequest::sign_in(&w.reader_id, &mut rand::rngs::OsRng);
    let mut keypad = Keypad {
        pin: pin.into(),
        accept: true,
        shown: Vec::new(),
    };
    let end = flow::pay(card, &mut link, &mut keypad, &req, &mut rand::rngs::OsRng);
    (end, link.last_answer().cloned())
}
