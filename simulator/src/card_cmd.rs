//! `onecard-sim card`: a virtual OneCard smart card in a real PC/SC stack (F1).
//!
//! `applet` (in the simulator's library, `onecard_sim::card`) is the card itself (pure APDU
//! processing); `vpcd` plugs it into a reader of
//! vsmartcard's vpcd driver over TCP, so pcscd and any PC/SC program see a card in
//! `Virtual PCD 00 00` (port 35963) or `Virtual PCD 00 01` (port 35964). The subcommand
//! personalises the card (its key derived from the issuer master key and the card number),
//! inserts it and serves until vpcd closes the connection or the process is ended (Ctrl-C or
//! SIGTERM end the process; the kernel closing the socket removes the card).

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use onecard_engine::cards::crypto;
use onecard_engine::cards::mask_card_number;

use crate::options::CardArgs;
use onecard_sim::card::applet::CardApplet;
use onecard_sim::card::vpcd;

/// Why the card could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("{0}")]
    Personalisation(String),
    #[error("cannot reach vpcd at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connection to vpcd at {addr}: {source}")]
    Session {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// `host:port`, with an IPv6 host in brackets.
fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Personalises the card, inserts it into vpcd and serves it until vpcd closes the connection
/// or `stop` is set. Writes one line to `log` on insertion and one on removal (the card number
/// masked, never the key). Returns the card's counter at removal.
pub fn serve(args: &CardArgs, stop: &AtomicBool, log: &mut dyn Write) -> Result<u32, CardError> {
    CardApplet::check_personalisation(&args.card_number, &args.holder)
        .map_err(CardError::Personalisation)?;
    let key = crypto::derive_card_key(&args.issuer_key_hex, &args.card_number);
    let mut applet = CardApplet::new(
        args.card_number.clone(),
        args.holder.clone(),
        key,
        args.counter,
    );
    let masked = mask_card_number(&args.card_number);
    let addr = display_addr(&args.host, args.port);
    let stream = vpcd::connect_with_retry(
        (args.host.as_str(), args.port),
        Duration::from_secs_f64(args.connect_timeout),
    )
    .map_err(|source| CardError::Connect {
        addr: addr.clone(),
        source,
    })?;
    // The log is best effort: a closed stderr does not stop the card.
    let _ = writeln!(log, "virtual card {masked} inserted into {addr}");
    let result = vpcd::run_card(stream, &mut applet, stop);
    let _ = writeln!(
        log,
        "virtual card {masked} removed from {addr} (counter {})",
        applet.counter()
    );
    result.map_err(|source| CardError::Session { addr, source })?;
    Ok(applet.counter())
}

/// `onecard-sim card`: exit 0 when vpcd closes the connection, 1 if vpcd cannot be reached or
/// the connection fails, 2 for a card that cannot be personalised.
pub fn main(args: CardArgs) -> ExitCode {
    // Nothing sets it: Ctrl-C and SIGTERM end the process, which removes the card.
    let stop = AtomicBool::new(false);
    match serve(&args, &stop, &mut std::io::stderr()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e @ CardError::Personalisation(_)) => {
            eprintln!("onecard-sim card: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("onecard-sim card: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use onecard_sim::card::applet;
    // The reader program's own APDU builders: the card and the reader agree on the protocol.
    use onecard_terminal::apdu::{generate_cryptogram, select as select_apdu};

    const NUMBER: &str = "4000001234567890";
    const HOLDER: &str = "c-000042";

    fn generate_apdu(challenge: &[u8; 16], amount: u64, order_id: &str) -> Vec<u8> {
        generate_cryptogram(challenge, amount, order_id).expect("a valid order id")
    }
    use crate::options::CardArgs;
    use clap::Parser;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    const KEY_HEX: &str = "0707070707070707070707070707070707070707070707070707070707070707";

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        card: CardArgs,
    }

    fn parse(args: &[&str]) -> Result<CardArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("card").chain(args.iter().copied())).map(|c| c.card)
    }

    #[test]
    fn options_parse_with_defaults() {
        let a = parse(&[
            "--card-number",
            NUMBER,
            "--holder",
            HOLDER,
            "--issuer-key-hex",
            KEY_HEX,
        ])
        .unwrap();
        assert_eq!(a.port, 35963);
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.counter, 0);
        assert_eq!(a.card_number, NUMBER);
        assert_eq!(a.holder, HOLDER);
        // The key never shows in the options' debug output.
        assert!(!format!("{a:?}").contains("0707"), "{a:?}");
        let upper = KEY_HEX.replace('7', "A");
        let a = parse(&[
            "--port",
            "35964",
            "--host",
            "::1",
            "--card-number",
            NUMBER,
            "--holder",
            "Ada L",
            "--issuer-key-hex",
            &upper,
            "--counter",
            "4294967295",
        ])
        .unwrap();
        assert_eq!(
            (a.port, a.host.as_str(), a.counter),
            (35964, "::1", u32::MAX)
        );
    }

    #[test]
    fn bad_options_are_refused_without_echoing_the_key() {
        let base = ["--card-number", NUMBER, "--holder", HOLDER];
        for bad_key in [
            &KEY_HEX[..62],
            &format!("{KEY_HEX}07"),
            &KEY_HEX.replace("07", "0g"),
            "",
        ] {
            let mut args = base.to_vec();
            args.extend(["--issuer-key-hex", bad_key]);
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains("64 hexadecimal"), "{e}");
            if !bad_key.is_empty() {
                assert!(!e.contains(bad_key), "the key was echoed: {e}");
            }
        }
        assert!(parse(&base).is_err(), "the key is required");
        let bad_number = [
            "--card-number",
            "4000 0012",
            "--holder",
            HOLDER,
            "--issuer-key-hex",
            KEY_HEX,
        ];
        assert!(parse(&bad_number).is_err());
        let bad_holder = [
            "--card-number",
            NUMBER,
            "--holder",
            "",
            "--issuer-key-hex",
            KEY_HEX,
        ];
        assert!(parse(&bad_holder).is_err());
    }

    /// The subcommand against a fake vpcd: inserted, one transaction, removed when vpcd closes.
    #[test]
    fn serve_inserts_the_card_and_returns_when_vpcd_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port().to_string();
        let args = parse(&[
            "--port",
            &port,
            "--card-number",
            NUMBER,
            "--holder",
            HOLDER,
            "--issuer-key-hex",
            KEY_HEX,
            "--counter",
            "41",
        ])
        .unwrap();
        let card = std::thread::spawn(move || {
            let mut log = Vec::new();
            let r = serve(&args, &AtomicBool::new(false), &mut log);
            (r, String::from_utf8(log).unwrap())
        });
        let (mut vpcd, _) = listener.accept().unwrap();
        let mut exchange = |payload: &[u8]| -> Vec<u8> {
            let mut f = (payload.len() as u16).to_be_bytes().to_vec();
            f.extend_from_slice(payload);
            std::io::Write::write_all(&mut vpcd, &f).unwrap();
            read_frame(&mut vpcd)
        };
        assert_eq!(exchange(&[vpcd::GET_ATR]), applet::ATR);
        assert_eq!(exchange(&select_apdu()), [0x90, 0x00]);
        let resp = exchange(&generate_apdu(&[2; 16], 100, "o-9"));
        assert_eq!(resp[..4], 42u32.to_be_bytes());
        // The key is the one derived from the issuer key and the card number.
        let key = crypto::derive_card_key(&crypto::IssuerKey::from_bytes([7; 32]), NUMBER);
        assert!(crypto::cryptogram_matches(
            &key,
            &[2; 16],
            "o-9",
            100,
            42,
            &resp[4..20]
        ));
        drop(vpcd);
        let (r, log) = card.join().unwrap();
        assert_eq!(r.unwrap(), 42);
        let addr = format!("127.0.0.1:{port}");
        assert_eq!(
            log,
            format!(
                "virtual card ************7890 inserted into {addr}\n\
                 virtual card ************7890 removed from {addr} (counter 42)\n"
            )
        );
        assert!(!log.contains(NUMBER) && !log.contains("0707"));
    }

    #[test]
    fn serve_reports_an_unreachable_vpcd() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let args = parse(&[
            "--port",
            &port,
            "--card-number",
            NUMBER,
            "--holder",
            HOLDER,
            "--issuer-key-hex",
            KEY_HEX,
            "--connect-timeout",
            "0.2",
        ])
        .unwrap();
        let mut log = Vec::new();
        let e = serve(&args, &AtomicBool::new(false), &mut log).unwrap_err();
        assert!(matches!(e, CardError::Connect { .. }), "{e}");
        assert!(log.is_empty());
    }

    fn read_frame(s: &mut TcpStream) -> Vec<u8> {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).unwrap();
        let mut p = vec![0u8; usize::from(u16::from_be_bytes(h))];
        s.read_exact(&mut p).unwrap();
        p
    }
}
