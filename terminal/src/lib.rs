//! The OneCard reader program: the consumer's card reader at home.
//!
//! [`apdu`] speaks to the card's applet; the PC/SC backend (feature `pcsc`) finds the reader,
//! waits for the card and carries the APDUs; [`flow`] runs a payment; [`http_link`] reaches
//! the node's reader API. What the reader program shares with the node (the messages, the PIN's
//! encryption, the JSON bodies) is the `onecard-protocol` crate's: this crate does not depend
//! on the engine (the in-process links to it are `onecard-testkit`'s).

pub mod apdu;
pub mod channel;
pub mod console;
pub mod flow;
pub mod http_link;
#[cfg(feature = "pcsc")]
pub mod pcsc_reader;

/// The reader API's JSON bodies: `onecard_protocol::wire`, at the path they had here.
pub use onecard_protocol::wire;

/// A card number as it may be shown or logged: `onecard_protocol::mask_card_number` (the one
/// masking rule: all but the last four masked, a value of four or fewer masked whole).
pub use onecard_protocol::mask_card_number as mask;
