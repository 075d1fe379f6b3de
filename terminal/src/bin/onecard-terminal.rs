//! `onecard-terminal`: the reader program at the consumer's home.
//!
//! - `onecard-terminal readers` lists the card readers PC/SC sees.
//! - `onecard-terminal read-card [--reader NAME] [--wait-secs N]` waits for a card, selects
//!   the OneCard application and shows what the card says (card number masked).
//!
//! Paying needs the node's HTTP API (a later issue); the payment flow itself is the library's
//! [`onecard_terminal::flow`], driven in process by the tests until then.

use std::process::ExitCode;
use std::time::Duration;

use onecard_terminal::apdu;
use onecard_terminal::channel::CardChannel;
use onecard_terminal::pcsc_reader::PcscReader;

const USAGE: &str = "usage: onecard-terminal readers | read-card [--reader NAME] [--wait-secs N]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("readers") => readers(),
        Some("read-card") => read_card(&args[1..]),
        Some("--help") | Some("-h") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("onecard-terminal: {e}");
            ExitCode::FAILURE
        }
    }
}

fn readers() -> Result<(), String> {
    let ctx = pcsc::Context::establish(pcsc::Scope::User)
        .map_err(|e| format!("no smart-card service is running: start pcscd ({e})"))?;
    let names = ctx.list_readers_owned().map_err(|e| match e {
        pcsc::Error::NoReadersAvailable => "no card reader is attached".to_string(),
        e => e.to_string(),
    })?;
    for n in names {
        println!("{}", n.to_string_lossy());
    }
    Ok(())
}

fn read_card(args: &[String]) -> Result<(), String> {
    let mut reader = None;
    let mut wait = Duration::from_secs(30);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--reader" => reader = Some(it.next().ok_or(USAGE)?.clone()),
            "--wait-secs" => {
                let n: u64 = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--wait-secs takes a number of seconds")?;
                wait = Duration::from_secs(n);
            }
            other => return Err(format!("unknown option {other:?}; {USAGE}")),
        }
    }
    let r = PcscReader::open(reader.as_deref()).map_err(|e| e.to_string())?;
    println!("reader: {}", r.name());
    r.wait_for_card(wait).map_err(|e| e.to_string())?;
    let mut card = r.connect().map_err(|e| e.to_string())?;
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
    Ok(())
}
