//! The OneCard reader program: the consumer's card reader at home.
//!
//! [`apdu`] speaks to the card's applet; the PC/SC backend (feature `pcsc`) finds the reader,
//! waits for the card and carries the APDUs.

pub mod apdu;
pub mod channel;
pub mod console;
#[cfg(feature = "pcsc")]
pub mod pcsc_reader;

/// A card number as it may be shown or logged: only the last four digits (SPEC I10).
pub fn mask(card_number: &str) -> String {
    let n = card_number.chars().count();
    let keep = n.min(4);
    let mut s: String = "*".repeat(n - keep);
    s.extend(card_number.chars().skip(n - keep));
    s
}
pub mod flow;
pub mod http_link;
pub mod wire;
