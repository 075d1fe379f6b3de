//! PINs (F13): how the node stores them and how they travel from the reader program.
//!
//! - **Storage:** only a keyed PIN verifier ([`PinVerifier`]): an HMAC-SHA256 of the card's
//!   token and the PIN under the PIN verification key ([`PinKey`]), which is derived from the
//!   issuer master key and never stored, as banks keep PIN verification values under a key in
//!   their HSM. A PIN has only 10⁴–10⁶ values, so no unkeyed hash, however slow, protects it
//!   once the store leaks; a keyed MAC does, and costs microseconds instead of an Argon2id's
//!   14 ms (ARCHITECTURE.md, "Threat model of the PIN").
//! - **Transport:** the PIN never travels in the clear. With each challenge the node sends the
//!   public half of a fresh X25519 key pair; the reader program makes its own ephemeral pair,
//!   agrees on a shared secret, expands it with HKDF-SHA256 (salt [`PIN_TRANSPORT_SALT`], info =
//!   the 16-byte challenge) into a ChaCha20-Poly1305 key and encrypts the PIN under a random
//!   nonce with the challenge as associated data ([`encrypt_pin`], reader side;
//!   [`decrypt_pin`], node side). A ciphertext is bound to its challenge: it cannot be replayed
//!   against another one, and any change to it is detected.
//!
//! Nothing here formats a PIN: [`PinVerifier`] and [`PinSecret`] print as fixed placeholders (I10).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};

use super::crypto::{IssuerKey, CHALLENGE_LEN};
use super::error::CardError;

/// Fewest digits in a PIN.
pub const PIN_MIN_DIGITS: usize = 4;
/// Most digits in a PIN.
pub const PIN_MAX_DIGITS: usize = 12;
/// Salt of the HKDF that turns the X25519 shared secret into the PIN transport key.
pub const PIN_TRANSPORT_SALT: &[u8] = b"OneCard PIN v1";
/// Bytes of a ChaCha20-Poly1305 nonce.
pub const PIN_NONCE_LEN: usize = 12;
/// Bytes of the Poly1305 tag appended to the ciphertext.
const TAG_LEN: usize = 16;

/// Whether `pin` is 4 to 12 ASCII digits.
pub fn is_valid_pin(pin: &str) -> bool {
    (PIN_MIN_DIGITS..=PIN_MAX_DIGITS).contains(&pin.len())
        && pin.bytes().all(|b| b.is_ascii_digit())
}

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
        hex::encode(v.0)
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

/// A PIN as the reader program sends it: encrypted to the node's per-challenge key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptedPin {
    /// The reader program's ephemeral X25519 public key.
    pub reader_public: [u8; 32],
    /// The ChaCha20-Poly1305 nonce.
    pub nonce: [u8; PIN_NONCE_LEN],
    /// The encrypted PIN (UTF-8) followed by the 16-byte tag.
    pub ciphertext: Vec<u8>,
}

/// A decrypted PIN. Prints as a placeholder, and its bytes are overwritten when it is dropped
/// (best effort: `std::hint::black_box` keeps the compiler from skipping the overwrite).
pub struct PinSecret(String);

impl PinSecret {
    /// The PIN itself: pass it to [`verify_pin`], never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for PinSecret {
    fn drop(&mut self) {
        wipe(std::mem::take(&mut self.0).into_bytes());
    }
}

impl std::fmt::Debug for PinSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinSecret(<secret>)")
    }
}

fn wipe(mut bytes: Vec<u8>) {
    bytes.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&mut bytes);
}

/// The ChaCha20-Poly1305 key for one challenge from an X25519 shared secret; `None` if the
/// agreement was not contributory (the peer sent a low-order point, which would make the key
/// predictable).
fn transport_key(
    own: &StaticSecret,
    peer_public: &[u8; 32],
    challenge: &[u8; CHALLENGE_LEN],
) -> Option<[u8; 32]> {
    let shared = own.diffie_hellman(&PublicKey::from(*peer_public));
    if !shared.was_contributory() {
        return None;
    }
    let hk = Hkdf::<Sha256>::new(Some(PIN_TRANSPORT_SALT), shared.as_bytes());
    let mut key = [0u8; 32];
    hk.expand(challenge, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    Some(key)
}

/// A fresh X25519 secret from `rng`.
pub(crate) fn random_secret(rng: &mut (impl RngCore + CryptoRng)) -> StaticSecret {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let secret = StaticSecret::from(bytes);
    bytes.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&mut bytes);
    secret
}

/// Reader side: encrypts `pin` for the node whose per-challenge public key is `node_public`.
///
/// `InvalidPin` unless the PIN is 4 to 12 ASCII digits (the reader can say so before anything
/// is sent); `PinTransport` if `node_public` is a low-order point (the key would be known to
/// anyone, so the PIN would as good as travel in the clear).
pub fn encrypt_pin(
    node_public: &[u8; 32],
    challenge: &[u8; CHALLENGE_LEN],
    pin: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<EncryptedPin, CardError> {
    if !is_valid_pin(pin) {
        return Err(CardError::InvalidPin);
    }
    let reader_secret = random_secret(rng);
    let reader_public = PublicKey::from(&reader_secret).to_bytes();
    let mut key =
        transport_key(&reader_secret, node_public, challenge).ok_or(CardError::PinTransport)?;
    let mut nonce = [0u8; PIN_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
    key.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&mut key);
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: pin.as_bytes(),
                aad: challenge,
            },
        )
        .map_err(|_| CardError::PinTransport)?;
    Ok(EncryptedPin {
        reader_public,
        nonce,
        ciphertext,
    })
}

/// Node side: decrypts a PIN sent for `challenge` with the challenge's secret. Any change to
/// the public key, nonce, ciphertext or challenge gives `PinTransport`, as does a plaintext that
/// is not UTF-8 or longer than a PIN can be.
pub fn decrypt_pin(
    node_secret: &StaticSecret,
    challenge: &[u8; CHALLENGE_LEN],
    encrypted: &EncryptedPin,
) -> Result<PinSecret, CardError> {
    if encrypted.ciphertext.len() > PIN_MAX_DIGITS + TAG_LEN {
        return Err(CardError::PinTransport);
    }
    let mut key = transport_key(node_secret, &encrypted.reader_public, challenge)
        .ok_or(CardError::PinTransport)?;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key));
    key.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&mut key);
    let plain = cipher
        .decrypt(
            Nonce::from_slice(&encrypted.nonce),
            Payload {
                msg: &encrypted.ciphertext,
                aad: challenge,
            },
        )
        .map_err(|_| CardError::PinTransport)?;
    match String::from_utf8(plain) {
        Ok(pin) => Ok(PinSecret(pin)),
        Err(e) => {
            wipe(e.into_bytes());
            Err(CardError::PinTransport)
        }
    }
}
