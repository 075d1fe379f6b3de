//! Cards, readers and the authentication center (issue 4; SPEC F1–F3, F13–F15, I9, I10).
//!
//! - [`crypto`]: card keys (HKDF from the issuer master key), cryptograms (HMAC) and card
//!   tokens (HMAC under a key derived from the issuer master key: what the node stores instead
//!   of a card number, I10).
//! - [`pin`]: keyed PIN verifiers (HMAC under a key derived from the issuer master key) and the
//!   encrypted PIN transport (X25519, HKDF, ChaCha20-Poly1305).
//! - [`prompt`]: what the reader displays and plays at each step.
//! - [`auth`]: cards, readers, bindings and the swipe / authenticate flow.

pub mod auth;
pub mod crypto;
pub mod error;
pub mod pin;
pub mod prompt;

#[cfg(test)]
mod concurrency_tests;
#[cfg(test)]
mod tests;

pub use auth::{
    is_sign_in, mask_card_number, mask_last4, normalise_address, same_address, AuthCenter,
    AuthChange, AuthConfig, AuthOutcome, AuthState, Authorisation, Card, CardError, CardStatus,
    ChallengeIssued, ChangeLog, NewReader, Reader, SwipeRefusal, SIGN_IN_PREFIX,
};
pub use crypto::{CardKey, IssuerKey, TokenKey};
pub use pin::{
    decrypt_pin, derive_pin_key, encrypt_pin, pin_verifier, verify_pin, EncryptedPin, PinKey,
    PinSecret, PinVerifier,
};
pub use prompt::{Prompt, SoundCue};
