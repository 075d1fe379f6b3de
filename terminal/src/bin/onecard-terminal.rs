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
//!
//! The program runs on the consumer's machine and reaches the node only over its reader API: it
//! carries the reader protocol (`onecard-protocol`) and nothing of the node (no engine, no
//! store), so it cannot run the node in process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use onecard_terminal::apdu;
use onecard_terminal::channel::CardChannel;
use onecard_terminal::console::TerminalConsole;
use onecard_terminal::flow::{self, PaymentEnd, PaymentRequest};
use onecard_terminal::http_link::{HttpLink, LinkOptions};
use onecard_terminal::pcsc_reader::{list_readers, PcscReader};

const USAGE: &str = "usage: onecard-terminal readers
       onecard-terminal read-card [--reader NAME] [--wait-secs N]
       onecard-terminal pay --node URL --reader-id ID --order ID [--ca-cert FILE] [--reader NAME] [--wait-secs N]
       onecard-terminal login --node URL --reader-id ID [--ca-cert FILE] [--reader NAME] [--wait-secs N]";

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
    reader_id: Option<String>,
    order: Option<String>,
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
            "--reader-id" => o.reader_id = Some(value()?),
            "--order" => o.order = Some(value()?),
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

fn link_to(o: &Options, node: &str) -> Result<HttpLink, String> {
    let mut opts = LinkOptions::default();
    if let Some(path) = &o.ca_cert {
        let pem = std::fs::read(path).map_err(|e| format!("--ca-cert {}: {e}", path.display()))?;
        opts.ca_cert_pem = Some(pem);
    }
    HttpLink::new(node, opts).map_err(|e| e.0)
}

/// Waits for the card in the reader and runs the payment's authentication (or a sign-in) at
/// it, over `link`, on this terminal.
fn at_the_reader(
    o: &Options,
    link: &mut HttpLink,
    request: &PaymentRequest,
) -> Result<PaymentEnd, String> {
    let mut card = connect(o)?;
    Ok(flow::pay(
        &mut card,
        link,
        &mut TerminalConsole::stdio(),
        request,
        &mut rand::rngs::OsRng,
    ))
}

/// `login --node URL`: card and PIN at this reader for a session of the node's consumer API
/// (account, statement, receipts, codes); nothing is paid. Prints `session: TOKEN`.
fn login(o: &Options) -> Result<bool, String> {
    let node = need(&o.node, "--node")?;
    let reader_id = need(&o.reader_id, "--reader-id")?;
    let mut link = link_to(o, &node)?;
    let request = PaymentRequest::sign_in(&reader_id, &mut rand::rngs::OsRng);
    let end = at_the_reader(o, &mut link, &request)?;
    match end {
        PaymentEnd::Authorised(a) => {
            println!("signed in: account {}", a.account);
            match link.last_answer().and_then(|a| a.session.as_ref()) {
                Some(s) => {
                    println!("session: {}", s.token);
                    println!("expires at: {} (unix seconds)", s.expires_at);
                    if let Some(w) = link.last_answer().and_then(|a| a.web_code.as_ref()) {
                        println!(
                            "web sign-in code: {} (type it at the node's /web/sign-in; good once, until {} unix seconds)",
                            w.code, w.expires_at
                        );
                    }
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
/// API. The amount and the delivery address are the checkout's, as the node has them.
fn pay(o: &Options) -> Result<bool, String> {
    let node = need(&o.node, "--node")?;
    let reader_id = need(&o.reader_id, "--reader-id")?;
    let order_id = need(&o.order, "--order")?;
    let mut link = link_to(o, &node)?;
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
    let end = at_the_reader(o, &mut link, &request)?;
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
