//! The OneCard reader protocol (docs/reader-protocol.md): what both sides of it need, and
//! nothing of the node.
//!
//! - [`crypto`]: the card's key type and its cryptogram (HMAC-SHA256 over challenge, order,
//!   amount, counter), which the card computes and the node checks. How the issuer derives a
//!   card key from its master key is the node's business (`onecard_engine::cards::crypto`).
//! - [`pin`]: the PIN's transport encryption (X25519, HKDF-SHA256, ChaCha20-Poly1305): the
//!   reader program encrypts ([`encrypt_pin`]), the node decrypts ([`decrypt_pin`]).
//! - [`prompt`]: what the reader shows and plays.
//! - [`messages`]: the protocol's messages as types: a challenge, a refused swipe, the outcome
//!   of an authentication, an authorisation; sign-in order ids.
//! - [`wire`]: the reader API's JSON bodies (`/v1/reader/...`), bytes as hex (the `hex` crate
//!   is the one hex codec of the workspace).
//! - [`mask`]: how a card number (or any identifier shown by its last four) is shown.
//!
//! The crate sits below both the engine (the node's side) and the reader program
//! (`onecard-terminal`): neither side's code is in here, and nothing here does I/O.

pub mod crypto;
pub mod mask;
pub mod messages;
pub mod pin;
pub mod prompt;
pub mod wire;

pub use crypto::CardKey;
pub use mask::{mask_card_number, mask_last4};
pub use messages::{
    is_sign_in, AuthOutcome, Authorisation, ChallengeIssued, SwipeRefusal, SIGN_IN_PREFIX,
};
pub use pin::{
    decrypt_pin, encrypt_pin, is_valid_pin, EncryptedPin, PinError, PinSecret, ReaderPinKeys,
};
pub use prompt::{Prompt, SoundCue};
