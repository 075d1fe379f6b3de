//! The reader program against a real PC/SC stack: pcscd, the vpcd driver and the virtual card.
#![cfg(feature = "pcsc")]
