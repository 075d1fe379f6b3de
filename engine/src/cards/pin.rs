//! PINs (F13): how the node stores them and how they travel from the reader program.
//!
//! - **Storage:** only an Argon2id hash in PHC string format ([`PinHash`]); the production
//!   parameters are the `argon2` crate's defaults ([`PinHasher::default`]), tests use a cheap
//!   set ([`PinHasher::with_params`]). Verification reads the parameters from the stored hash,
//!   so hashes made with other parameters still verify.
//! - **Transport:** the PIN never travels in the clear. With each challenge the node sends the
//!   public half of a fresh X25519 key pair; the reader program makes its own ephemeral pair,
//!   agrees on a shared secret, expands it with HKDF-SHA256 (salt [`PIN_TRANSPORT_SALT`], info =
//!   the 16-byte challenge) into a ChaCha20-Poly1305 key and encrypts the PIN under a random
//!   nonce with the challenge as associated data ([`encrypt_pin`], reader side;
//!   [`decrypt_pin`], node side). A ciphertext is bound to its challenge: it cannot be replayed
//!   against another one, and any change to it is detected.
//!
//! Nothing here formats a PIN: [`PinHash`] and [`PinSecret`] print as fixed placeholders (I10).

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use super::crypto::CHALLENGE_LEN;
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
/// Bytes of the random salt of a PIN hash.
const SALT_LEN: usize = 16;

/// Whether `pin` is 4 to 12 ASCII digits.
pub fn is_valid_pin(pin: &str) -> bool {
    (PIN_MIN_DIGITS..=PIN_MAX_DIGITS).contains(&pin.len())
        && pin.bytes().all(|b| b.is_ascii_digit())
}

/// An Argon2id PIN hash, kept as its PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`).
///
/// Serialises as that string; deserialising checks it is a well-formed Argon2id PHC string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PinHash(String);

impl PinHash {
    /// A stored hash, checked to be an Argon2id PHC string.
    pub fn from_phc(phc: String) -> Result<PinHash, CardError> {
        let parsed = PasswordHash::new(&phc).map_err(|_| CardError::InvalidPinHash)?;
        if parsed.algorithm != argon2::ARGON2ID_IDENT || parsed.hash.is_none() {
            return Err(CardError::InvalidPinHash);
        }
        Ok(PinHash(phc))
    }

    /// The PHC string (a hash: safe to store, still not worth logging).
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PinHash {
    type Error = CardError;
    fn try_from(phc: String) -> Result<PinHash, CardError> {
        PinHash::from_phc(phc)
    }
}

impl From<PinHash> for String {
    fn from(hash: PinHash) -> String {
        hash.0
    }
}

impl std::fmt::Debug for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinHash(argon2id)")
    }
}

/// Hashes PINs with Argon2id under fixed parameters.
#[derive(Clone, Debug)]
pub struct PinHasher {
    params: Params,
}

impl Default for PinHasher {
    /// The `argon2` crate's default Argon2id parameters (19 MiB, 2 passes, 1 lane): production.
    fn default() -> PinHasher {
        PinHasher {
            params: Params::DEFAULT,
        }
    }
}

impl PinHasher {
    /// Other parameters (memory in KiB, passes, lanes), e.g. a cheap set for tests.
    pub fn with_params(m_cost_kib: u32, t_cost: u32, p_cost: u32) -> Result<PinHasher, CardError> {
        let params = Params::new(m_cost_kib, t_cost, p_cost, None)
            .map_err(|e| CardError::PinHashing(e.to_string()))?;
        Ok(PinHasher { params })
    }

    /// The parameters new hashes are made with.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The Argon2id hash of `pin` under a fresh random salt; `InvalidPin` unless `pin` is 4 to
    /// 12 ASCII digits.
    pub fn hash(
        &self,
        pin: &str,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<PinHash, CardError> {
        if !is_valid_pin(pin) {
            return Err(CardError::InvalidPin);
        }
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| CardError::PinHashing(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone());
        let hash = argon
            .hash_password(pin.as_bytes(), &salt)
            .map_err(|e| CardError::PinHashing(e.to_string()))?;
        Ok(PinHash(hash.to_string()))
    }
}

/// [`PinHasher::hash`] with the production parameters.
pub fn hash_pin(pin: &str, rng: &mut (impl RngCore + CryptoRng)) -> Result<PinHash, CardError> {
    PinHasher::default().hash(pin, rng)
}

/// Whether `pin` is the PIN `hash` was made from (constant-time comparison of the Argon2
/// outputs; the parameters come from the hash). A malformed PIN never matches.
pub fn verify_pin(hash: &PinHash, pin: &str) -> bool {
    if !is_valid_pin(pin) {
        return false;
    }
    let Ok(parsed) = PasswordHash::new(&hash.0) else {
        return false;
    };
    Argon2::default()
        .verify_password(pin.as_bytes(), &parsed)
        .is_ok()
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
