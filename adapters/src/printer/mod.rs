//! The merchant's order printer (F16): the delivery slip as ESC/POS, sent over TCP.
//!
//! - [`slip`]: [`DeliverySlip`], only what F22 lets a merchant see, and its ESC/POS bytes;
//! - [`escpos`]: the small encoder (the command bytes, [`escpos::sanitize`] for text);
//! - [`decode`](mod@decode): a strict decoder of exactly those bytes, for tests and the demo;
//! - [`tcp`]: [`print_to`], one slip to one printer over a std `TcpStream`.
//!
//! # Byte layout of a slip
//!
//! ```text
//! 1B 40                      ESC @      initialise
//! 1B 61 01                   ESC a 1    centre
//! 1B 45 01                   ESC E 1    bold on
//! "DELIVERY SLIP" 0A                    title
//! 1B 45 00                   ESC E 0    bold off
//! <merchant> 0A                         merchant (centred)
//! 1B 61 00                   ESC a 0    left
//! "Order: " <order_id> 0A
//! <rule> 0A                             32 dashes
//! "Deliver to: " <delivery_name> 0A
//! "Address: " <delivery_address> 0A
//! "Phone: " <delivery_phone> 0A
//! <rule> 0A
//! <qty> " x " <item> 0A                 per item ("(no items)" if none)
//! <rule> 0A
//! 1B 45 01                   ESC E 1    bold on
//! "TOTAL: " <amount> " " <currency> 0A
//! 1B 45 00                   ESC E 0    bold off
//! "Release: " <release> 0A
//! 1B 42 03 02                ESC B 3 2  beep 3 times, 100 ms each: the merchant hears it
//! 1B 64 04                   ESC d 4    feed 4 lines (past the cutter)
//! 1D 56 01                   GS V 1     partial cut
//! ```
//!
//! Every text between the commands is sanitised ASCII (`20`–`7E`): control characters are
//! removed (line breaks and tabs become spaces) and non-ASCII characters print as `?`, so the
//! only `1B`, `1D` and `0A` bytes in a slip are the ones above. Lines are not wrapped by the
//! encoder; a line longer than the paper wraps on the printer.
//!
//! # Not here yet: the print queue
//!
//! A print that fails ([`PrintError`]) is not retried by this module. The durable print queue —
//! retries with back-off, exactly one slip per order, the print status on the order — goes in
//! the node's journal (issue 5), which will call [`print_to`] for each pending slip.

pub mod decode;
pub mod escpos;
pub mod slip;
pub mod tcp;

pub use decode::{decode, DecodeError, Decoded};
pub use slip::DeliverySlip;
pub use tcp::{print_to, PrintError, Stage, DEFAULT_PORT};
