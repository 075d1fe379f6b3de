//! `onecard-terminal`: the reader program at the consumer's home (build with `--features pcsc`).
//!
//! - `onecard-terminal readers` lists the card readers PC/SC sees.
//! - `onecard-terminal read-card [--reader NAME] [--wait-secs N]` waits for a card, selects
//!   the OneCard application and shows what the card says (card number masked).
//! - `onecard-terminal pay --node URL --reader-id ID --order ID [--ca-cert FILE] [--reader NAME]
//!   [--wait-secs N]` pays an order through a running node's reader API (`URL/v1/reader/...`,
//!   http or https; `--ca-cert` adds a trusted certificate in PEM, for a node with a
//!   self-signed one): fetches the checkout and shows the merchant, the amount and the delivery
//!   address, then runs the payment's authentication at this reader for the node's amount and
//!   address: waits for the card, reads it, swipes at the node, asks for the PIN (no echo on a
//!   terminal), lets the card sign the node's challenge, sends the encrypted PIN, answers an
//!   address question, shows every prompt and rings the bell on outcomes. On authorisation it
//!   prints the order the node placed (`order: ID STATE [REFUSAL]`) and the consumer's session
//!   (`session: TOKEN`). Exit code 0 when authorised and the order is `pending` or `settled`.
//! - `onecard-terminal login --node URL --reader-id ID [--ca-cert FILE] [--reader NAME]` signs
//!   in with card and PIN at this reader, nothing paid, and prints a session for the node's
//!   consumer API (`session: TOKEN`).
//! - `onecard-terminal pay --node-data DIR --reader-id ID --order ID --amount A [--address TEXT]
//!   [--reader NAME] [--wait-secs N]` runs the same authentication with the node in process, on
//!   its data directory (the node's own store, with its keys from `ONECARD_ISSUER_KEY` /
//!   `ONECARD_DATA_KEY`): for a machine with the node's store and no node running. Exit code 0
//!   when authorised.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use onecard_engine::{Amount, Engine, EngineConfig, SimBank, SimBankPort};
use onecard_terminal::apdu;
use onecard_terminal::channel::CardChannel;
use onecard_terminal::console::TerminalConsole;
use onecard_terminal::flow::{self, EngineLink, PaymentEnd, PaymentRequest};
use onecard_terminal::http_link::{HttpLink, LinkOptions};
use onecard_terminal::pcsc_reader::{list_readers, PcscReader};

const USAGE: &str = "usage: onecard-terminal readers
       onecard-terminal read-card [--reader NAME] [--wait-secs N]
       onecard-terminal pay --node URL --reader-id ID --order ID [--ca-cert FILE] [--reader NAME] [--wait-secs N]
       onecard-terminal login --node URL --reader-id ID [--ca-cert FILE] [--reader NAME] [--wait-secs N]
       onecard-terminal pay --node-data DIR --reader-id ID --order ID --amount A [--address TEXT] [--reader NAME] [--wait-secs N]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("readers") => readers(),
        Some("read-card") => options(&args[1..]).and_then(|o| read_card(&o)),
        Some("pay") => options(&args[1..]).and_then(|o| pay(&o)),
        Some("login") => options(&args[1..]).and_then(|o| login(&o)),
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(true)
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("onecard-terminal: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Options {
    reader: Option<String>,
    wait: Option<Duration>,
    node: Option<String>,
    ca_cert: Option<PathBuf>,
    node_data: Option<PathBuf>,
    reader_id: Option<String>,
    order: Option<String>,
    amount: Option<String>,
    address: Option<String>,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--reader" => o.reader = Some(value()?),
            "--wait-secs" => {
                let n: u64 = value()?
                    .parse()
                    .map_err(|_| "--wait-secs takes a number of seconds".to_string())?;
                o.wait = Some(Duration::from_secs(n));
            }
            "--node" => o.node = Some(value()?),
            "--ca-cert" => o.ca_cert = Some(PathBuf::from(value()?)),
            "--node-data" => o.node_data = Some(PathBuf::from(value()?)),
            "--reader-id" => o.reader_id = Some(value()?),
            "--order" => o.order = Some(value()?),
            "--amount" => o.amount = Some(value()?),
            "--address" => o.address = Some(value()?),
            other => return Err(format!("unknown option {other:?}; {USAGE}")),
        }
    }
    Ok(o)
}

fn readers() -> Result<bool, String> {
    for n in list_readers().map_err(|e| e.to_string())? {
        println!("{n}");
    }
    Ok(true)
}

fn connect(o: &Options) -> Result<onecard_terminal::pcsc_reader::PcscCard, String> {
    let r = PcscReader::open(o.reader.as_deref()).map_err(|e| e.to_string())?;
    println!("reader: {}", r.name());
    r.wait_for_card(o.wait.unwrap_or(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    r.connect().map_err(|e| e.to_string())
}

fn read_card(o: &Options) -> Result<bool, String> {
    let mut card = connect(o)?;
    let sel = card.transmit(&apdu::select()).map_err(|e| e.to_string())?;
    apdu::check(&sel).map_err(|e| e.to_string())?;
    let data = card
        .transmit(&apdu::read_card_data())
        .map_err(|e| e.to_string())?;
    let data = apdu::parse_card_data(&data).map_err(|e| e.to_string())?;
    println!(
        "card: {} (holder {}), transaction counter {}",
        onecard_terminal::mask(&data.card_number),
        data.holder_ref,
        data.counter
    );
    Ok(true)
}

fn need(v: &Option<String>, name: &str) -> Result<String, String> {
    v.clone().ok_or_else(|| format!("missing {name}; {USAGE}"))
}

fn pay(o: &Options) -> Result<bool, String> {
    if let Some(node) = &o.node {
        return pay_over_http(o, node);
    }
    if o.ca_cert.is_some() {
        return Err(format!("--ca-cert goes with --node; {USAGE}"));
    }
    let dir = o
        .node_data
        .clone()
        .ok_or_else(|| format!("pay needs --node URL or --node-data DIR; {USAGE}"))?;
    let amount = Amount::parse_positive(&need(&o.amount, "--amount")?)
        .map_err(|e| format!("--amount: {e}"))?;
    let request = PaymentRequest {
        reader_id: need(&o.reader_id, "--reader-id")?,
        order_id: need(&o.order, "--order")?,
        amount_cents: u64::try_from(amount.cents()).map_err(|e| e.to_string())?,
        delivery_address: o.address.clone().unwrap_or_default(),
    };
    let mut cfg = EngineConfig::default();
    onecard_engine::config::secret_keys_from_env(&mut cfg, |v| std::env::var(v).ok())?;
    let mut card = connect(o)?;
    actix_rt::System::new().block_on(async move {
        let bank = SimBank::open(&dir).map_err(|e| e.to_string())?;
        let engine = Engine::open(&dir, cfg, Arc::new(SimBankPort(bank.clone())))
            .await
            .map_err(|e| format!("the node at {}: {e}", dir.display()))?;
        let now = engine.clock();
        let end = flow::pay(
            &mut card,
            &mut EngineLink {
                engine: &engine,
                peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
                now,
            },
            &mut TerminalConsole::stdio(),
            &request,
            &mut rand::rngs::OsRng,
        );
        engine.close().await.map_err(|e| e.to_string())?;
        bank.close();
        Ok(match end {
            PaymentEnd::Authorised(a) => {
                println!(
                    "authorised: order {} for {} from account {}",
                    a.order_id, amount, a.account
                );
                true
            }
            PaymentEnd::Refused(_) => false,
            PaymentEnd::Aborted { reason, .. } => {
                eprintln!("onecard-terminal: {reason}");
                false
            }
        })
    })
}

fn link_to(o: &Options, node: &str) -> Result<HttpLink, String> {
    let mut opts = LinkOptions::default();
    if let Some(path) = &o.ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
        opts.ca_cert_pem = Some(pem);
    }
    HttpLink::new(node, opts).map_err(|e| e.0)
}

/// `login --node URL`: card and PIN at this reader for a session of the node's consumer API
/// (account, statement, receipts, codes); nothing is paid. Prints `session: TOKEN`.
fn login(o: &Options) -> Result<bool, String> {
    let node = need(&o.node, "--node")?;
    let reader_id = need(&o.reader_id, "--reader-id")?;
    let mut link = link_to(o, &node)?;
    let request = PaymentRequest::sign_in(&reader_id, &mut rand::rngs::OsRng);
    let mut card = connect(o)?;
    let end = flow::pay(
        &mut card,
        &mut link,
        &mut TerminalConsole::stdio(),
        &request,
        &mut rand::rngs::OsRng,
    );
    match end {
        PaymentEnd::Authorised(a) => {
            println!("signed in: account {}", a.account);
            match link.last_answer().and_then(|a| a.session.as_ref()) {
                Some(s) => {
                    println!("session: {}", s.token);
                    println!("expires at: {} (unix seconds)", s.expires_at);
                    Ok(true)
                }
                None => {
                    eprintln!("onecard-terminal: the node issued no session");
                    Ok(false)
                }
            }
        }
        PaymentEnd::Refused(_) => Ok(false),
        PaymentEnd::Aborted { reason, .. } => {
            eprintln!("onecard-terminal: {reason}");
            Ok(false)
        }
    }
}

/// `pay --node URL`: the checkout, the payment and the placed order, through the node's reader
/// API.
fn pay_over_http(o: &Options, node: &str) -> Result<bool, String> {
    if o.node_data.is_some() {
        return Err(format!("give --node or --node-data, not both; {USAGE}"));
    }
    if o.amount.is_some() || o.address.is_some() {
        return Err(format!(
            "with --node the amount and the delivery address are the node's: no --amount or --address; {USAGE}"
        ));
    }
    let reader_id = need(&o.reader_id, "--reader-id")?;
    let order_id = need(&o.order, "--order")?;
    let mut link = link_to(o, node)?;
    let view = link.checkout(&order_id).map_err(|e| e.0)?;
    println!("checkout: order {}", view.order_id);
    println!("merchant: {}", view.merchant);
    println!("amount: {} {}", view.amount, view.currency);
    println!(
        "deliver to: {}, {}",
        view.delivery_name, view.delivery_address
    );
    if view.status != "awaiting_payment" {
        println!("status: {}", view.status);
    }
    let request = PaymentRequest {
        reader_id,
        order_id,
        amount_cents: view.amount_cents,
        delivery_address: view.delivery_address.clone(),
    };
    let mut card = connect(o)?;
    let end = flow::pay(
        &mut card,
        &mut link,
        &mut TerminalConsole::stdio(),
        &request,
        &mut rand::rngs::OsRng,
    );
    match end {
        PaymentEnd::Authorised(a) => {
            println!(
                "authorised: order {} for {} {} from account {}",
                a.order_id, view.amount, view.currency, a.account
            );
            let answer = link.last_answer();
            let mut placed = false;
            match answer.and_then(|a| a.order.as_ref()) {
                Some(order) => {
                    match &order.refusal {
                        Some(r) => println!("order: {} {} ({r})", order.id, order.state),
                        None => println!("order: {} {}", order.id, order.state),
                    }
                    placed = matches!(order.state.as_str(), "pending" | "settled");
                }
                None => eprintln!("onecard-terminal: the node placed no order"),
            }
            if let Some(session) = answer.and_then(|a| a.session.as_ref()) {
                println!("session: {}", session.token);
            }
            Ok(placed)
        }
        PaymentEnd::Refused(_) => Ok(false),
        PaymentEnd::Aborted { reason, .. } => {
            eprintln!("onecard-terminal: {reason}");
            // The node may have authorised and placed the order and only its answer was lost:
            // ask it how the order stands now, so the consumer is not told the wrong thing.
            if let Ok(now) = link.checkout(&view.order_id) {
                if matches!(now.status.as_str(), "pending" | "settled") {
                    println!(
                        "order: {} {} (the node's answer was lost; the payment went through)",
                        now.order_id, now.status
                    );
                    return Ok(true);
                }
            }
            Ok(false)
        }
    }
}
