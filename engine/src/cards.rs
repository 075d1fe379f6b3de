//! Cards, readers and the authentication center (issue 4; SPEC F1–F3, F13–F15, I9, I10).
//!
//! What both sides of the reader protocol need (the cryptogram, the PIN's transport
//! encryption, the prompts, the messages, masking) is the `onecard-protocol` crate's; this
//! module re-exports it at the paths it always had, and adds the issuer's and the node's part:
//!
//! - [`crypto`]: the issuer master key, card keys (HKDF from it) and card tokens (HMAC under a
//!   key derived from it: what the node stores instead of a card number, I10); the cryptogram
//!   (HMAC) from the protocol.
//! - [`pin`]: keyed PIN verifiers (HMAC under a key derived from the issuer master key); the
//!   encrypted PIN transport (X25519, HKDF, ChaCha20-Poly1305) from the protocol.
//! - [`prompt`]: what the reader displays and plays at each step (the protocol's).
//! - [`auth`]: cards, readers, bindings and the swipe / authenticate flow.

pub mod auth;
pub mod crypto;
pub mod error;
pub mod pin;
pub use onecard_protocol::prompt;

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod tests;

pub use auth::{
    is_sign_in, mask_card_number, mask_last4, normalise_address, same_address, AuthCenter,
    AuthChange, AuthConfig, AuthOutcome, AuthState, Authorisation, Card, CardError, CardStatus,
    ChallengeIssued, ChangeLog, NewReader, Reader, SwipeRefusal, AGREEMENT_KEY_LIFETIME_SECS,
    SIGN_IN_PREFIX,
};
pub use crypto::{CardKey, IssuerKey, TokenKey};
pub use pin::{
    decrypt_pin, derive_pin_key, encrypt_pin, pin_verifier, verify_pin, EncryptedPin, PinError,
    PinKey, PinSecret, PinVerifier, ReaderPinKeys,
};
pub use prompt::{Prompt, SoundCue};
