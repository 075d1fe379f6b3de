//! PINs (F13): how the node stores them, and (from the protocol crate, re-exported here) how
//! they travel from the reader program.
//!
//! - **Storage:** only a keyed PIN verifier ([`PinVerifier`]): an HMAC-SHA256 of the card's
//!   token and the PIN under the PIN verification key ([`PinKey`]), which is derived from the
//!   issuer master key and never stored, as banks keep PIN verification values under a key in
//!   their HSM. A PIN has only 10⁴–10⁶ values, so no unkeyed hash, however slow, protects it
//!   once the store leaks; a keyed MAC does, and costs microseconds instead of an Argon2id's
//!   14 ms (ARCHITECTURE.md, "Threat model of the PIN").
//! - **Transport** (`onecard_protocol::pin`): the PIN never travels in the clear. With each
//!   challenge the node sends the public half of its X25519 agreement key (one per epoch of
//!   [`AGREEMENT_KEY_LIFETIME_SECS`](super::AGREEMENT_KEY_LIFETIME_SECS)); the reader program
//!   has its own ephemeral pair, agrees on a shared secret, expands it with HKDF-SHA256 (salt
//!   [`PIN_TRANSPORT_SALT`], info = the 16-byte challenge) into a ChaCha20-Poly1305 key and
//!   encrypts the PIN under a random nonce with the challenge as associated data
//!   ([`encrypt_pin`], reader side; [`decrypt_pin`], node side). A ciphertext is bound to its
//!   challenge: it cannot be replayed against another one, and any change to it is detected.
//!
//! Nothing here formats a PIN: [`PinVerifier`] and [`PinSecret`] print as fixed placeholders (I10).

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::crypto::IssuerKey;
use super::error::CardError;
use onecard_protocol::wire::to_hex;

pub use onecard_protocol::pin::{
    decrypt_pin, encrypt_pin, is_valid_pin, EncryptedPin, PinError, PinSecret, ReaderPinKeys,
    PIN_MAX_DIGITS, PIN_MIN_DIGITS, PIN_NONCE_LEN, PIN_TRANSPORT_SALT,
};

/// Salt of the HKDF that derives the PIN verification key from the issuer master key.
pub const PIN_KEY_SALT: &[u8] = b"OneCard PIN verification key v1";
/// Info of the PIN verification key's HKDF.
pub const PIN_KEY_INFO: &[u8] = b"pvk";
/// The domain tag that starts every PIN verifier's input.
pub const PIN_VERIFIER_TAG: &[u8] = b"OCPV1";
/// Bytes of a PIN verifier (HMAC-SHA256).
pub const PIN_VERIFIER_LEN: usize = 32;

/// The PIN verification key (PVK): derived from the issuer master key, held in memory by the
/// authentication center only and never stored. Every PIN verifier is a MAC under it.
#[derive(Clone, PartialEq, Eq)]
pub struct PinKey([u8; 32]);

impl std::fmt::Debug for PinKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinKey(<secret>)")
    }
}

/// The PIN verification key of `master`: HKDF-SHA256 (salt [`PIN_KEY_SALT`], info
/// [`PIN_KEY_INFO`]), 32 bytes.
pub fn derive_pin_key(master: &IssuerKey) -> PinKey {
    let hk = Hkdf::<Sha256>::new(Some(PIN_KEY_SALT), master.as_bytes());
    let mut okm = [0u8; 32];
    hk.expand(PIN_KEY_INFO, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    PinKey(okm)
}

/// What the node stores to check a card's PIN (a PIN verification value): HMAC-SHA256 under
/// the [`PinKey`] over
///
/// ```text
/// "OCPV1" | card token length u8 | card token (ASCII) | PIN length u8 | PIN (ASCII digits)
/// ```
///
/// Without the key it says nothing about the PIN, however few values a PIN has: that is why
/// it is keyed and not a (slow) hash. Serialises as lowercase hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PinVerifier([u8; PIN_VERIFIER_LEN]);

impl PinVerifier {
    pub fn as_bytes(&self) -> &[u8; PIN_VERIFIER_LEN] {
        &self.0
    }

    /// Whether `other` is this verifier, compared in constant time.
    pub fn matches(&self, other: &PinVerifier) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl TryFrom<String> for PinVerifier {
    type Error = CardError;
    fn try_from(hex: String) -> Result<PinVerifier, CardError> {
        let mut bytes = [0u8; PIN_VERIFIER_LEN];
        hex::decode_to_slice(&hex, &mut bytes).map_err(|_| CardError::InvalidPinVerifier)?;
        Ok(PinVerifier(bytes))
    }
}

impl From<PinVerifier> for String {
    fn from(v: PinVerifier) -> String {
        to_hex(&v.0)
    }
}

impl std::fmt::Debug for PinVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinVerifier(<keyed>)")
    }
}

/// The verifier of `pin` for the card with token `card_token` (see [`PinVerifier`]);
/// `InvalidPin` unless the PIN is 4 to 12 ASCII digits.
pub fn pin_verifier(key: &PinKey, card_token: &str, pin: &str) -> Result<PinVerifier, CardError> {
    if !is_valid_pin(pin) {
        return Err(CardError::InvalidPin);
    }
    // A token is 64 hex digits (checked where cards are made); the length byte keeps the
    // encoding unambiguous for any token the caller passes.
    let token = card_token.as_bytes();
    let token_len = u8::try_from(token.len()).map_err(|_| CardError::InvalidPin)?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC takes any key length");
    mac.update(PIN_VERIFIER_TAG);
    mac.update(&[token_len]);
    mac.update(token);
    mac.update(&[pin.len() as u8]);
    mac.update(pin.as_bytes());
    Ok(PinVerifier(mac.finalize().into_bytes().into()))
}

/// Whether `pin` is the PIN `stored` was made from, for the card `card_token`: a MAC and a
/// constant-time comparison, microseconds. A malformed PIN never matches.
pub fn verify_pin(key: &PinKey, card_token: &str, stored: &PinVerifier, pin: &str) -> bool {
    match pin_verifier(key, card_token, pin) {
        Ok(v) => v.matches(stored),
        Err(_) => false,
    }
}
