//! `onecard demo`: the payment flow, told step by step on the real engine (actors, journal on
//! sled, simulated bank), ending with every balance and the `verify` checks.
//!
//! Every order is paid at the consumer's reader first (SPEC F18 steps 2–3): the reader program's
//! flow (`onecard_terminal::flow`) reads the consumer's card — the virtual card's applet, in
//! memory here (`tests/pcsc_reader.rs` runs the same over a real PC/SC stack) — swipes at the
//! node, takes the PIN, lets the card sign the node's challenge, and the node's authentication
//! center checks card, PIN, address and credit. The reader's prompts are printed.
//!
//! Every accepted order then prints its delivery slip (F16, step 5): each merchant has a
//! simulated order printer, a real TCP listener on loopback that records the bytes of each
//! connection as a port-9100 printer receives them. The demo builds the slip (only what F22
//! allows), sends its ESC/POS bytes with the printer adapter's `print_to`, and prints what the
//! printer received, decoded back to text.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use onecard_adapters::printer::{decode, print_to, DeliverySlip, DEFAULT_PORT};
mod services;

use onecard_engine::cards::{IssuerKey, NewReader, Prompt};
use onecard_engine::commands::ReaderPayment;
use onecard_engine::engine::{IssueCard, OpenConsumer, PlaceOrder, RefundRequest};
use onecard_engine::model::{CommandResult, Refusal};
use onecard_engine::{verify, Amount, DataKey, Engine, NodeConfig, SimBank, SimBankPort};
use onecard_node::workers::release_words;
use onecard_protocol::mask_card_number;
use onecard_sim::card::applet::CardApplet;
use onecard_terminal::channel::{CardChannel, CardIoError};
use onecard_terminal::flow::{self, Console, PaymentEnd, PaymentRequest};
use onecard_testkit::EngineLink;
use serde_json::json;

/// Where every consumer's reader connects from in the demo (its registered network).
const HOME_NETWORK: &str = "192.168.1.0/24";
const READER_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10));

/// The demo's clock starts on 1 November 2026, 09:00 UTC (Unix seconds): the engine's time
/// is whatever its caller says, and the monthly analysis names the month.
const DEMO_START: u64 = 1_793_523_600;

/// How long the demo gives a print (connect, then write) and the printer's answer.
const PRINT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many slips are printed in full; the rest get one line each.
const SLIPS_IN_FULL: usize = 2;
/// The paper's width in columns (58 mm roll, Font A): centred lines are shown centred in it.
const PAPER_COLUMNS: usize = 32;

/// A merchant's order printer, simulated: a TCP listener on loopback (playing port 9100) whose
/// thread hands over the bytes of each connection, as the printer received them.
struct SimPrinter {
    label: String,
    addr: SocketAddr,
    jobs: mpsc::Receiver<Vec<u8>>,
}

impl SimPrinter {
    fn start(label: String) -> DemoResult<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (tx, jobs) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("printer {label}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    // A job ends when the sender shuts down its write half. What arrived before
                    // an error is handed over as is: the decoder says what is wrong with it.
                    let _ = conn.set_read_timeout(Some(PRINT_TIMEOUT));
                    let mut bytes = Vec::new();
                    let _ = conn.read_to_end(&mut bytes);
                    if tx.send(bytes).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(SimPrinter { label, addr, jobs })
    }

    /// The bytes of the next print job the printer received.
    fn next_job(&self) -> DemoResult<Vec<u8>> {
        self.jobs
            .recv_timeout(PRINT_TIMEOUT)
            .map_err(|e| format!("printer {} received nothing: {e}", self.label))
    }

    fn tag(&self) -> String {
        format!("[printer {} @{}]", self.label, self.addr)
    }
}

/// A merchant as the demo registers it: its display name (printed on its slips) and its
/// simulated order printer.
struct DemoMerchant {
    name: String,
    printer: SimPrinter,
}

/// What the demo's merchants sell, a couple of items per slip.
fn demo_items(merchant: &str) -> Vec<(String, u32)> {
    let items: &[(&str, u32)] = match merchant {
        "bookshop" => &[("Paperback novel", 2), ("Bookmark", 1)],
        "grocer" => &[("Vegetable box", 1), ("Olive oil 1 l", 2)],
        "electronics" => &[("Laptop 14in", 1), ("USB-C charger", 1)],
        _ => &[("Goods", 1)],
    };
    items.iter().map(|(i, q)| (i.to_string(), *q)).collect()
}

/// The card in the consumer's reader: the virtual card's applet, in memory.
struct CardInReader(CardApplet);

impl CardChannel for CardInReader {
    fn transmit(&mut self, apdu: &[u8]) -> Result<Vec<u8>, CardIoError> {
        Ok(self.0.process(apdu))
    }
}

/// The consumer at the reader: types the PIN, says yes to a one-time address; the display and
/// the sound are printed.
struct ReaderConsole<'a> {
    who: &'a str,
    pin: &'a str,
}

impl Console for ReaderConsole<'_> {
    fn show(&mut self, prompt: &Prompt) {
        println!(
            "    [{}'s reader] {} ({:?} sound)",
            self.who, prompt.text, prompt.sound
        );
    }
    fn read_pin(&mut self) -> Option<String> {
        println!("    [{}'s reader] ****", self.who);
        Some(self.pin.to_string())
    }
    fn confirm(&mut self, question: &Prompt) -> bool {
        println!("    [{}'s reader] {} → yes", self.who, question.text);
        true
    }
}

/// The demo consumers' PINs, in the order their cards are issued: six digits, and digit runs
/// that appear nowhere else, so that `tests/secrets_at_rest.rs` (which repeats them) can look
/// for them in the demo's output and its data directory (I10).
const DEMO_PINS: [&str; 3] = ["418273", "529384", "630495"];

/// The demo's `n`th card number (from 1): sixteen digits. The node stores only its token and
/// last four digits; the output shows it masked.
fn demo_card_number(n: usize) -> String {
    format!("40000000000000{n:02}")
}

/// A consumer's card and reader, as issued and registered for the demo. The full card number
/// and the PIN live here, in the consumer's hands (the card, the consumer's memory), not in
/// the node.
struct Holder {
    number: String,
    card: CardInReader,
    reader_id: String,
    pin: String,
    address: String,
    /// The name and phone the consumer's orders are delivered to (printed on the slips).
    delivery_name: String,
    delivery_phone: String,
}

type DemoResult<T> = Result<T, String>;

fn show(r: &CommandResult) -> String {
    match r {
        Ok(o) => o.as_str().to_string(),
        Err(refusal) => format!("{} — {}", refusal.code_str(), refusal.message),
    }
}

struct Demo {
    engine: Engine,
    bank: Arc<SimBank>,
    now: u64,
    holders: std::collections::HashMap<String, Holder>,
    merchants: std::collections::HashMap<String, DemoMerchant>,
    currency: String,
    slips_printed: usize,
}

/// How a payment at the reader ended, in a line.
fn ended(end: &PaymentEnd) -> String {
    match end {
        PaymentEnd::Authorised(_) => "authorised".into(),
        PaymentEnd::Refused(p) => format!("refused: {}", p.text),
        PaymentEnd::Aborted { prompt, .. } => format!("aborted: {}", prompt.text),
    }
}

impl Demo {
    /// `owner`'s card at reader `reader_id`, with `pin` (default: the right one): only the
    /// authentication, no order placed.
    fn at_reader(
        &mut self,
        owner: &str,
        reader_id: &str,
        pin: Option<&str>,
        order: &str,
        cents: u64,
    ) -> PaymentEnd {
        self.authenticate_at_reader(owner, reader_id, pin, None, order, cents)
    }

    /// `owner`'s card at their own reader, with the right PIN, paying `merchant` (with what
    /// the consumer's gateway rules see of it): only the authentication, no order placed.
    fn at_reader_paying(
        &mut self,
        owner: &str,
        paying: (&str, ReaderPayment),
        order: &str,
        cents: u64,
    ) -> PaymentEnd {
        let reader_id = match self.holders.get(owner) {
            Some(h) => h.reader_id.clone(),
            None => return PaymentEnd::Refused(Prompt::not_bound()),
        };
        let paying = Some((paying.0.to_string(), paying.1));
        self.authenticate_at_reader(owner, &reader_id, None, paying, order, cents)
    }

    fn authenticate_at_reader(
        &mut self,
        owner: &str,
        reader_id: &str,
        pin: Option<&str>,
        paying: Option<(String, ReaderPayment)>,
        order: &str,
        cents: u64,
    ) -> PaymentEnd {
        let Some(holder) = self.holders.get_mut(owner) else {
            return PaymentEnd::Refused(Prompt::not_bound());
        };
        let pin = pin.unwrap_or(&holder.pin).to_string();
        let request = PaymentRequest {
            reader_id: reader_id.into(),
            order_id: order.into(),
            amount_cents: cents,
            delivery_address: holder.address.clone(),
        };
        flow::pay(
            &mut holder.card,
            &mut EngineLink {
                engine: &self.engine,
                peer: READER_ADDRESS,
                now: self.now,
                at_reader: paying,
            },
            &mut ReaderConsole {
                who: owner,
                pin: &pin,
            },
            &request,
            &mut rand::rngs::OsRng,
        )
    }

    /// Issues the consumer's card (the PIN kept only as a keyed verifier, the card key derived from
    /// the issuer master key) and registers their reader, bound 1:1 to card and account.
    async fn issue_card_and_reader(&mut self, who: &str, name: &str) -> DemoResult<()> {
        let n = self.holders.len() + 1;
        let number = demo_card_number(n);
        let pin = DEMO_PINS
            .get(n - 1)
            .ok_or_else(|| format!("no demo PIN for a card number {n}"))?
            .to_string();
        let address = format!("{n} Demo Street, Springfield");
        let key = self
            .engine
            .issue_card(
                IssueCard {
                    number: number.clone(),
                    holder: who.into(),
                    pin: pin.clone(),
                    registered_address: address.clone(),
                },
                self.now,
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let reader_id = format!("reader-{who}");
        self.engine
            .register_reader(
                NewReader {
                    id: reader_id.clone(),
                    owner: who.into(),
                    card_number: number.clone(),
                    account: who.into(),
                    network: HOME_NETWORK.parse().map_err(|e| format!("{e}"))?,
                },
                self.now,
            )
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        println!(
            "  {who}'s card {} issued (PIN kept only as a keyed verifier), bound to {reader_id} at {HOME_NETWORK}",
            mask_card_number(&number)
        );
        self.holders.insert(
            who.to_string(),
            Holder {
                number: number.clone(),
                card: CardInReader(CardApplet::new(number, who.into(), key, 0)),
                reader_id,
                pin,
                address,
                delivery_name: name.into(),
                delivery_phone: format!("+1 555 01{n:02}"),
            },
        );
        Ok(())
    }

    /// Registers merchant `id`, shown as `name`, with its simulated order printer.
    async fn open_merchant(&mut self, id: &str, name: &str) -> DemoResult<()> {
        let r = self
            .engine
            .open_merchant(id, None, self.now)
            .await
            .map_err(|e| e.to_string())?;
        self.expect(&r, "ok")?;
        let printer = SimPrinter::start(format!("{id}-1"))?;
        println!(
            "  merchant {id} ({name}): balance 0.00, order printer {} at {} (simulated, plays port {DEFAULT_PORT})",
            printer.label, printer.addr
        );
        self.merchants.insert(
            id.into(),
            DemoMerchant {
                name: name.into(),
                printer,
            },
        );
        Ok(())
    }

    /// Step 5: the delivery slip of an accepted order goes to the merchant's printer as
    /// ESC/POS over TCP; what the printer received is decoded and shown (in full for the
    /// first slips, in a line for the rest).
    fn print_slip(
        &mut self,
        id: &str,
        consumer: &str,
        merchant: &str,
        amount: &str,
        release: &serde_json::Value,
    ) -> DemoResult<()> {
        let holder = self
            .holders
            .get(consumer)
            .ok_or_else(|| format!("{consumer} has no card"))?;
        let shop = self
            .merchants
            .get(merchant)
            .ok_or_else(|| format!("merchant {merchant} has no printer"))?;
        // Only what F22 lets a merchant see: no card, no bank account, no consumer id.
        let slip = DeliverySlip {
            order_id: id.into(),
            merchant: shop.name.clone(),
            amount: amount.into(),
            currency: self.currency.clone(),
            delivery_name: holder.delivery_name.clone(),
            delivery_address: holder.address.clone(),
            delivery_phone: holder.delivery_phone.clone(),
            items: demo_items(merchant),
            release: onecard_engine::engine::parse_release(release)
                .map(|r| release_words(&r))
                .map_err(|r| r.message)?,
        };
        let bytes = slip.to_escpos();
        let printer = &shop.printer;
        print_to(printer.addr, &bytes, PRINT_TIMEOUT).map_err(|e| e.to_string())?;
        let received = printer.next_job()?;
        let printed = decode(&received).map_err(|e| format!("{}: {e}", printer.tag()))?;
        if printed.lines != slip.text_lines() {
            return Err(format!(
                "{} printed {:?}, the slip was {:?}",
                printer.tag(),
                printed.lines,
                slip.text_lines()
            ));
        }
        self.slips_printed += 1;
        if self.slips_printed > SLIPS_IN_FULL {
            println!(
                "  [5 print] {} slip for {id} printed ({} lines, beeped {} times, cut)",
                printer.tag(),
                printed.lines.len(),
                printed.beeps
            );
            return Ok(());
        }
        println!(
            "  [5 print] the delivery slip goes to {}'s printer: {} bytes of ESC/POS over TCP",
            shop.name,
            bytes.len()
        );
        println!(
            "    {} received {} bytes; it prints:",
            printer.tag(),
            received.len()
        );
        for (i, line) in printed.lines.iter().enumerate() {
            let line = if printed.centred_lines.contains(&i) {
                format!("{line:^PAPER_COLUMNS$}").trim_end().to_string()
            } else {
                line.clone()
            };
            println!("      | {line}");
        }
        println!(
            "    {} beeped {} times (the merchant hears it), fed {} lines and cut the paper",
            printer.tag(),
            printed.beeps,
            printed.fed_lines
        );
        Ok(())
    }

    async fn consumer_line(&self, id: &str) -> DemoResult<String> {
        let c = self
            .engine
            .consumer(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("consumer vanished")?;
        // The node knows the account by its reference only (I10); the operator's lookup
        // unseals it, and the demo shows it masked.
        let account = self
            .engine
            .bank_account_of(id)
            .map_err(|e| e.to_string())?
            .ok_or("consumer vanished")?;
        let bank = self.bank.balance(&account).unwrap_or(Amount::ZERO);
        Ok(format!(
            "{id}: wallet {} | reserved {} of credit {} (available {}) | bank {} {}",
            c.wallet,
            c.reserved,
            c.credit_limit,
            c.available_credit(),
            mask_card_number(&account),
            bank
        ))
    }

    async fn merchant_balance(&self, id: &str) -> DemoResult<Amount> {
        Ok(self
            .engine
            .merchant(id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("merchant vanished")?
            .balance)
    }

    async fn place(
        &mut self,
        id: &str,
        consumer: &str,
        merchant: &str,
        amount: &str,
        release: serde_json::Value,
    ) -> DemoResult<CommandResult> {
        let shop = self
            .merchants
            .get(merchant)
            .map_or(merchant, |m| m.name.as_str());
        println!(
            "  [1 log in / check out] {shop} opens checkout {id} for {amount} {}; {consumer} pays by card",
            self.currency
        );
        println!("  [2 swipe, 3 authenticate] {consumer} pays order {id} ({amount} to {merchant}) at the reader:");
        let cents = Amount::parse(amount).map_err(|e| e.to_string())?.cents();
        let holder = self
            .holders
            .get_mut(consumer)
            .ok_or_else(|| format!("{consumer} has no card"))?;
        let request = PaymentRequest {
            reader_id: holder.reader_id.clone(),
            order_id: id.into(),
            amount_cents: u64::try_from(cents).map_err(|e| e.to_string())?,
            delivery_address: holder.address.clone(),
        };
        let end = flow::pay(
            &mut holder.card,
            &mut EngineLink {
                engine: &self.engine,
                peer: READER_ADDRESS,
                now: self.now,
                at_reader: None,
            },
            &mut ReaderConsole {
                who: consumer,
                pin: &holder.pin,
            },
            &request,
            &mut rand::rngs::OsRng,
        );
        let r = match end {
            PaymentEnd::Authorised(_) => {
                let req = PlaceOrder {
                    id: id.into(),
                    consumer: consumer.into(),
                    merchant: merchant.into(),
                    amount: amount.into(),
                    release: release.clone(),
                };
                self.engine
                    .place_order(req, self.now)
                    .await
                    .map_err(|e| e.to_string())?
            }
            PaymentEnd::Refused(p) if p == Prompt::credit_refused() => {
                Err(Refusal::credit(format!("at the reader: {}", p.text)))
            }
            other => return Err(format!("the payment at the reader ended: {other:?}")),
        };
        println!(
            "  [4 place] place order {id}: {consumer} pays {merchant} {amount} → {}",
            show(&r)
        );
        if r.as_ref().is_ok_and(|o| o.as_str() == "accepted") {
            self.print_slip(id, consumer, merchant, amount, &release)?;
        }
        Ok(r)
    }

    fn expect(&self, r: &CommandResult, want: &str) -> DemoResult<()> {
        let got = match r {
            Ok(o) => o.as_str().to_string(),
            Err(e) => e.code_str(),
        };
        if got != want {
            return Err(format!("expected {want}, got {got}"));
        }
        Ok(())
    }
}

fn load_config(config: Option<PathBuf>) -> DemoResult<NodeConfig> {
    match config {
        Some(p) => NodeConfig::load(&p).map_err(|e| e.to_string()),
        None if Path::new("config.toml").exists() => {
            NodeConfig::load(Path::new("config.toml")).map_err(|e| e.to_string())
        }
        None => Ok(NodeConfig::default()),
    }
}

pub async fn run(data: Option<PathBuf>, config: Option<PathBuf>) -> DemoResult<()> {
    let cfg = load_config(config)?;
    let dir = match data {
        Some(d) => {
            if d.exists()
                && std::fs::read_dir(&d)
                    .map_err(|e| e.to_string())?
                    .next()
                    .is_some()
            {
                return Err(format!(
                    "{} is not empty; the demo needs a fresh data directory",
                    d.display()
                ));
            }
            d
        }
        // Kept after the demo, so that `onecard verify --data DIR` can be run on it.
        None => tempfile::Builder::new()
            .prefix("onecard-demo-")
            .tempdir()
            .map_err(|e| e.to_string())?
            .keep(),
    };
    let rules = cfg.engine.rules.clone();
    println!("OneCard demo — data directory {}", dir.display());
    println!(
        "rules: wallet cap {} {cur}, top-up threshold {}, direct mode up to {}, orders expire after {} s",
        rules.wallet_cap,
        rules.topup_threshold,
        rules.direct_max,
        rules.order_expiry_secs,
        cur = cfg.currency
    );
    // The card issuer's master key: drawn for this run, held in memory, never stored.
    let mut engine_cfg = cfg.engine.clone();
    engine_cfg.issuer_key = Some(IssuerKey::from_bytes(rand::random()));
    // The data key: bank accounts are stored only as references and sealed under it (I10).
    engine_cfg.data_key = Some(DataKey::random(&mut rand::thread_rng()));
    println!("cards: the issuer master key is drawn for this run and never stored; card keys derive from it");
    println!("bank accounts: stored only as keyed references, sealed under a data key drawn for this run");
    println!(
        "payments: each runs the six steps of F18; the lines below are tagged with their step:"
    );
    for step in [
        "[1 log in / check out] the shop opens the checkout, the consumer pays by card",
        "[2 swipe] the card goes into the consumer's reader, bound to it",
        "[3 authenticate] PIN, delivery address, then credit",
        "[4 place] the order enters the virtual account, its amount reserved",
        "[5 print] the delivery slip goes to the merchant's printer (ESC/POS over TCP)",
        "[6 settle] on its release condition, the money goes to the merchant",
    ] {
        println!("  {step}");
    }
    let bank = SimBank::open(&dir).map_err(|e| e.to_string())?;
    let engine = Engine::open(&dir, engine_cfg, Arc::new(SimBankPort(bank.clone())))
        .await
        .map_err(|e| e.to_string())?;
    let mut d = Demo {
        engine,
        bank: bank.clone(),
        now: DEMO_START,
        holders: std::collections::HashMap::new(),
        merchants: std::collections::HashMap::new(),
        currency: cfg.currency.clone(),
        slips_printed: 0,
    };

    println!("\n== Registering consumers (virtual account + wallet + designated bank account) and merchants");
    for (who, name, limit, bank_acct, balance) in [
        (
            "alice",
            "Alice Martin",
            "20000.00",
            "alice-bank",
            "30000.00",
        ),
        ("bob", "Bob Nguyen", "1000.00", "bob-bank", "8000.00"),
        ("carol", "Carol Diaz", "10000.00", "carol-bank", "12000.00"),
    ] {
        d.bank
            .open_account(
                bank_acct,
                Amount::parse(balance).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
        let req = OpenConsumer {
            consumer: who.into(),
            credit_limit: limit.into(),
            bank: bank_acct.into(),
            wallet: rules.wallet_cap.to_string(),
        };
        let r = d
            .engine
            .open_consumer(req, d.now)
            .await
            .map_err(|e| e.to_string())?;
        d.expect(&r, "ok")?;
        println!("  {}", d.consumer_line(who).await?);
        d.issue_card_and_reader(who, name).await?;
    }
    for (m, name) in [
        ("bookshop", "Corner Bookshop"),
        ("grocer", "Green Grocer"),
        ("electronics", "Volt Electronics"),
    ] {
        d.open_merchant(m, name).await?;
    }

    println!("\n== 1. An order placed and reserved against the virtual account's credit");
    let r = d
        .place(
            "o-1001",
            "alice",
            "bookshop",
            "120.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    println!("  {}", d.consumer_line("alice").await?);

    println!("\n== 2. An order refused for credit");
    let r = d
        .place(
            "o-1002",
            "bob",
            "electronics",
            "1500.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "refused:credit")?;

    println!("\n== 3. Release when the goods are received (the wallet pays, then is topped up to the cap)");
    d.now += 3_600;
    let r = d
        .engine
        .confirm_receipt("o-1001", true, d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "  [6 settle] alice confirms receipt of o-1001 → {}",
        show(&r)
    );
    d.expect(&r, "settled")?;
    println!("  {}", d.consumer_line("alice").await?);
    println!(
        "  bookshop balance {}",
        d.merchant_balance("bookshop").await?
    );

    println!("\n== 4. Release by a special code handed over at delivery");
    let r = d
        .place(
            "o-1003",
            "carol",
            "bookshop",
            "250.00",
            json!({"on": "code", "code": "739104"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    let r = d
        .engine
        .enter_code("o-1003", "111111", d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  [6 settle] carol enters a wrong code → {}", show(&r));
    d.expect(&r, "refused:code")?;
    let r = d
        .engine
        .enter_code("o-1003", "739104", d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  [6 settle] carol enters the right code → {}", show(&r));
    d.expect(&r, "settled")?;

    println!("\n== 5. An order released by time (one hour after placement)");
    let r = d
        .place(
            "o-1004",
            "alice",
            "grocer",
            "80.00",
            json!({"on": "time", "after_secs": 3600}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    d.now += 1_800;
    let r = d.engine.tick(d.now).await.map_err(|e| e.to_string())?;
    d.expect(&r, "ok")?;
    let state = d
        .engine
        .order("o-1004")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("order vanished")?
        .state;
    println!("  [6 settle] after 30 minutes: o-1004 is {state}");
    d.now += 1_800;
    let r = d.engine.tick(d.now).await.map_err(|e| e.to_string())?;
    d.expect(&r, "ok")?;
    let state = d
        .engine
        .order("o-1004")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("order vanished")?
        .state;
    println!("  [6 settle] after 60 minutes: o-1004 is {state}");
    if state.as_str() != "settled" {
        return Err(format!("o-1004 should have settled, is {state}"));
    }

    println!("\n== 6. An order that drains the wallet, then the top-up back to exactly the cap");
    let r = d
        .place(
            "o-1005",
            "carol",
            "grocer",
            "5000.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    println!("  before: {}", d.consumer_line("carol").await?);
    let r = d
        .engine
        .confirm_receipt("o-1005", true, d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  [6 settle] carol confirms receipt → {} (wallet paid 5000.00, fell to 0.00, topped up from carol's bank account)", show(&r));
    d.expect(&r, "settled")?;
    println!("  after:  {}", d.consumer_line("carol").await?);

    println!(
        "\n== 7. An order above the cap: the wallet pays what it holds, the bank pays the rest"
    );
    let r = d
        .place(
            "o-1006",
            "alice",
            "electronics",
            "7500.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    let r = d
        .engine
        .confirm_receipt("o-1006", true, d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "  [6 settle] alice confirms receipt → {} (wallet 5000.00 + bank 2500.00, then top-up 5000.00)",
        show(&r)
    );
    d.expect(&r, "settled")?;
    println!("  {}", d.consumer_line("alice").await?);

    println!("\n== 8. A refund whose overflow above the cap is swept to the bank account");
    let req = RefundRequest {
        id: "rf-1".into(),
        order: "o-1006".into(),
        amount: "3000.00".into(),
    };
    let r = d
        .engine
        .refund(req, d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  electronics refunds 3000.00 of o-1006 → {} (the wallet is full, so all of it goes to alice's bank account)", show(&r));
    d.expect(&r, "refunded")?;
    println!("  {}", d.consumer_line("alice").await?);

    println!("\n== 9. A cancelled order: the reservation is released");
    let r = d
        .place(
            "o-1007",
            "bob",
            "bookshop",
            "400.00",
            json!({"on": "receipt"}),
        )
        .await?;
    d.expect(&r, "accepted")?;
    println!("  {}", d.consumer_line("bob").await?);
    let r = d
        .engine
        .cancel_order("o-1007", d.now)
        .await
        .map_err(|e| e.to_string())?;
    println!("  bob cancels o-1007 → {}", show(&r));
    d.expect(&r, "cancelled")?;
    println!("  {}", d.consumer_line("bob").await?);

    println!(
        "\n== 10. The authentication center refuses: a card on another's reader (I9), a wrong PIN"
    );
    let end = d.at_reader("alice", "reader-bob", None, "o-1008", 1_000);
    println!("  [2 swipe] alice's card in bob's reader → {}", ended(&end));
    if end != PaymentEnd::Refused(Prompt::not_bound()) {
        return Err(format!("a card on another reader must be refused: {end:?}"));
    }
    let end = d.at_reader("carol", "reader-carol", Some("0000"), "o-1009", 1_000);
    println!(
        "  [3 authenticate] carol types a wrong PIN → {}",
        ended(&end)
    );
    if end != PaymentEnd::Refused(Prompt::wrong_pin(2)) {
        return Err(format!("a wrong PIN must be counted: {end:?}"));
    }
    let card = d
        .engine
        .card(&d.holders["carol"].number)
        .map_err(|e| e.to_string())?
        .ok_or("carol's card vanished")?;
    println!(
        "  carol's card: {} wrong PIN(s) recorded, transaction counter {} (both durable)",
        card.pin_failures, card.last_counter
    );

    d.services().await?;

    println!("\n== Final balances");
    let state = d.engine.ledger_state().await.map_err(|e| e.to_string())?;
    let mut total = d.bank.total();
    for c in state.consumers.values() {
        println!(
            "  wallet:{:<12} {:>10}   reserved:{:<10} {:>10}",
            c.id, c.wallet, c.id, c.reserved
        );
        total = total.checked_add(c.wallet).map_err(|e| e.to_string())?;
    }
    for m in state.merchants.values() {
        println!("  merchant:{:<10} {:>10}", m.id, m.balance);
        total = total.checked_add(m.balance).map_err(|e| e.to_string())?;
    }
    // The consumers' bank accounts, by owner; the account itself masked (I10).
    for c in state.consumers.values() {
        let acct = d
            .engine
            .bank_account_of(&c.id)
            .map_err(|e| e.to_string())?
            .ok_or("consumer vanished")?;
        let bal = d.bank.balance(&acct).unwrap_or(Amount::ZERO);
        println!(
            "  bank:{:<14} {:>10}   account {}",
            c.id,
            bal,
            mask_card_number(&acct)
        );
    }
    let recharged = Demo::recharged(&state)?;
    println!("  total (banks + wallets + merchants) {total}: what the bank accounts held when opened, plus {recharged} of recharge cards redeemed (money from outside, paid when the cards were sold)");

    d.engine.close().await.map_err(|e| e.to_string())?;
    bank.close();
    println!(
        "\n== Verify (the same checks as `onecard verify --data {}`)",
        dir.display()
    );
    let report = verify::verify(&dir).map_err(|e| e.to_string())?;
    println!("{report}");
    Ok(())
}
