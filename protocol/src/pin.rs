//! The PIN on its way from the reader program to the node (F13; docs/reader-protocol.md, 3.3).
//!
//! The PIN never travels in the clear. With each challenge the node sends the public half of
//! its X25519 agreement key; the reader program has its own ephemeral pair, agrees on a shared
//! secret, expands it with HKDF-SHA256 (salt [`PIN_TRANSPORT_SALT`], info = the 16-byte
//! challenge) into a ChaCha20-Poly1305 key and encrypts the PIN under a random nonce with the
//! challenge as associated data ([`encrypt_pin`], reader side; [`decrypt_pin`], node side). A
//! ciphertext is bound to its challenge: it cannot be replayed against another one, and any
//! change to it is detected.
//!
//! The key is per challenge even when the agreement is not: the node keeps one agreement key
//! for a short epoch (a minute) and the reader program may keep its pair while the node's key
//! is unchanged ([`ReaderPinKeys`]), each side then keeping the agreed secret
//! ([`AgreedSecret`]) instead of computing it again. The two X25519 operations on each side
//! cost more than the rest of a payment's cryptography together; what the reuse gives up is
//! forward secrecy within an epoch: whoever takes the node's memory during an epoch can read
//! the PINs sent under that epoch's key, and no others.
//!
//! How the node keeps PINs (a keyed verifier under a key derived from the issuer master key) is
//! the node's business: `onecard_engine::cards::pin`.
//!
//! Nothing here formats a PIN: [`PinSecret`] prints as a fixed placeholder (I10).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::crypto::CHALLENGE_LEN;

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

/// Why a PIN could not be encrypted or decrypted. Never carries the PIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// Not 4 to 12 ASCII digits.
    #[error("a PIN is 4 to 12 digits")]
    InvalidPin,
    /// The agreement or the AEAD failed: a low-order key, a tampered or foreign ciphertext, a
    /// plaintext that is not UTF-8 or too long for a PIN.
    #[error("the encrypted PIN could not be read")]
    Transport,
}

/// Whether `pin` is 4 to 12 ASCII digits.
pub fn is_valid_pin(pin: &str) -> bool {
    (PIN_MIN_DIGITS..=PIN_MAX_DIGITS).contains(&pin.len())
        && pin.bytes().all(|b| b.is_ascii_digit())
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
    /// The PIN itself: pass it to the node's verifier, never to a log.
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

/// The secret one X25519 key pair agreed with another's public key: the input of every PIN
/// transport key between the two. Overwritten when dropped (best effort, as [`PinSecret`]).
pub struct AgreedSecret([u8; 32]);

impl Drop for AgreedSecret {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|b| *b = 0);
        std::hint::black_box(&mut self.0);
    }
}

impl std::fmt::Debug for AgreedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgreedSecret(<secret>)")
    }
}

/// Agrees a secret between `own` and the peer's public key; `None` if the agreement was not
/// contributory (the peer sent a low-order point, which would make every key predictable).
pub fn agree(own: &StaticSecret, peer_public: &[u8; 32]) -> Option<AgreedSecret> {
    let shared = own.diffie_hellman(&PublicKey::from(*peer_public));
    shared
        .was_contributory()
        .then(|| AgreedSecret(*shared.as_bytes()))
}

/// The ChaCha20-Poly1305 key for one challenge: HKDF-SHA256 of the agreed secret, salt
/// [`PIN_TRANSPORT_SALT`], info the challenge.
fn transport_key(agreed: &AgreedSecret, challenge: &[u8; CHALLENGE_LEN]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(PIN_TRANSPORT_SALT), &agreed.0);
    let mut key = [0u8; 32];
    hk.expand(challenge, &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// A fresh X25519 secret: 32 bytes drawn from `rng` (the node's agreement key, the reader
/// program's ephemeral pair). The drawn bytes are wiped.
pub fn random_secret(rng: &mut (impl RngCore + CryptoRng)) -> StaticSecret {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    let secret = StaticSecret::from(bytes);
    bytes.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&mut bytes);
    secret
}

/// Reader side: encrypts `pin` for the node whose agreement key is `node_public`, with a fresh
/// key pair of the reader's. Draws the reader's secret (32 bytes), then the nonce (12 bytes),
/// from `rng`. [`ReaderPinKeys::encrypt`] does the same and keeps the pair for the node key's
/// next challenges.
///
/// `InvalidPin` unless the PIN is 4 to 12 ASCII digits (the reader can say so before anything
/// is sent); `Transport` if `node_public` is a low-order point (the key would be known to
/// anyone, so the PIN would as good as travel in the clear).
pub fn encrypt_pin(
    node_public: &[u8; 32],
    challenge: &[u8; CHALLENGE_LEN],
    pin: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<EncryptedPin, PinError> {
    ReaderPinKeys::default().encrypt(node_public, challenge, pin, rng)
}

/// Reader side, with the secret agreed already and the PIN checked: draws the nonce (12 bytes)
/// and encrypts.
fn encrypt_agreed(
    agreed: &AgreedSecret,
    reader_public: [u8; 32],
    challenge: &[u8; CHALLENGE_LEN],
    pin: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<EncryptedPin, PinError> {
    let mut key = transport_key(agreed, challenge);
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
        .map_err(|_| PinError::Transport)?;
    Ok(EncryptedPin {
        reader_public,
        nonce,
        ciphertext,
    })
}

/// A reader program's PIN keys: its key pair and the secret agreed with the node's current
/// agreement key, kept while the node sends the same key and made afresh when it changes.
#[derive(Default)]
pub struct ReaderPinKeys {
    current: Option<([u8; 32], [u8; 32], AgreedSecret)>,
}

impl std::fmt::Debug for ReaderPinKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaderPinKeys(<secret>)")
    }
}

impl ReaderPinKeys {
    /// [`encrypt_pin`] for the challenge's `node_public`. With the node key of the last call
    /// it reuses the pair and its agreed secret (drawing only the nonce); with another it
    /// draws a new pair first, as [`encrypt_pin`] does, and forgets the old one.
    pub fn encrypt(
        &mut self,
        node_public: &[u8; 32],
        challenge: &[u8; CHALLENGE_LEN],
        pin: &str,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<EncryptedPin, PinError> {
        if !is_valid_pin(pin) {
            return Err(PinError::InvalidPin);
        }
        match &self.current {
            Some((node, _, _)) if node == node_public => {}
            _ => {
                self.current = None;
                let reader_secret = random_secret(rng);
                let reader_public = PublicKey::from(&reader_secret).to_bytes();
                let agreed = agree(&reader_secret, node_public).ok_or(PinError::Transport)?;
                self.current = Some((*node_public, reader_public, agreed));
            }
        }
        let Some((_, reader_public, agreed)) = &self.current else {
            return Err(PinError::Transport);
        };
        encrypt_agreed(agreed, *reader_public, challenge, pin, rng)
    }
}

/// Node side: decrypts a PIN sent for `challenge` with the node's agreement secret. Any change
/// to the public key, nonce, ciphertext or challenge gives `Transport`, as does a plaintext that
/// is not UTF-8 or longer than a PIN can be.
pub fn decrypt_pin(
    node_secret: &StaticSecret,
    challenge: &[u8; CHALLENGE_LEN],
    encrypted: &EncryptedPin,
) -> Result<PinSecret, PinError> {
    if encrypted.ciphertext.len() > PIN_MAX_DIGITS + TAG_LEN {
        return Err(PinError::Transport);
    }
    let agreed = agree(node_secret, &encrypted.reader_public).ok_or(PinError::Transport)?;
    decrypt_agreed(&agreed, challenge, encrypted)
}

/// [`decrypt_pin`] with the secret agreed with `encrypted.reader_public` already (the node
/// keeps those of its current agreement key).
pub fn decrypt_agreed(
    agreed: &AgreedSecret,
    challenge: &[u8; CHALLENGE_LEN],
    encrypted: &EncryptedPin,
) -> Result<PinSecret, PinError> {
    if encrypted.ciphertext.len() > PIN_MAX_DIGITS + TAG_LEN {
        return Err(PinError::Transport);
    }
    let mut key = transport_key(agreed, challenge);
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
        .map_err(|_| PinError::Transport)?;
    match String::from_utf8(plain) {
        Ok(pin) => Ok(PinSecret(pin)),
        Err(e) => {
            wipe(e.into_bytes());
            Err(PinError::Transport)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn an_encrypted_pin_round_trips_only_for_its_challenge() {
        let mut rng = StdRng::seed_from_u64(3);
        let node = random_secret(&mut rng);
        let node_public = PublicKey::from(&node).to_bytes();
        let challenge = [5u8; 16];
        let enc = encrypt_pin(&node_public, &challenge, "123456", &mut rng).unwrap();
        assert_eq!(enc.ciphertext.len(), 6 + 16);
        assert!(!enc.ciphertext.windows(6).any(|w| w == b"123456"));
        let pin = decrypt_pin(&node, &challenge, &enc).unwrap();
        assert_eq!(pin.expose(), "123456");
        assert_eq!(format!("{pin:?}"), "PinSecret(<secret>)");

        // Two encryptions of the same PIN differ (fresh key pair and nonce).
        let again = encrypt_pin(&node_public, &challenge, "123456", &mut rng).unwrap();
        assert_ne!(enc.reader_public, again.reader_public);
        assert_ne!(enc.ciphertext, again.ciphertext);

        // Another challenge, another node key.
        assert_eq!(
            decrypt_pin(&node, &[6u8; 16], &enc).unwrap_err(),
            PinError::Transport
        );
        let other = random_secret(&mut rng);
        assert_eq!(
            decrypt_pin(&other, &challenge, &enc).unwrap_err(),
            PinError::Transport
        );
        // Too long to be a PIN: refused before any key agreement.
        let mut long = enc.clone();
        long.ciphertext = vec![0; PIN_MAX_DIGITS + TAG_LEN + 1];
        assert_eq!(
            decrypt_pin(&node, &challenge, &long).unwrap_err(),
            PinError::Transport
        );

        // Bad PINs are refused before anything is sent.
        for bad in ["123", "1234567890123", "12a4", "", "١٢٣٤"] {
            assert_eq!(
                encrypt_pin(&node_public, &challenge, bad, &mut rng).unwrap_err(),
                PinError::InvalidPin,
                "{bad:?}"
            );
        }
        // A low-order node key would make the transport key public.
        assert_eq!(
            encrypt_pin(&[0u8; 32], &challenge, "1234", &mut rng).unwrap_err(),
            PinError::Transport
        );
    }

    #[test]
    fn a_reader_keeps_its_pair_while_the_node_key_stays_and_each_challenge_gets_its_own_key() {
        let mut rng = StdRng::seed_from_u64(4);
        let node = random_secret(&mut rng);
        let node_public = PublicKey::from(&node).to_bytes();
        let mut keys = ReaderPinKeys::default();
        let first = keys
            .encrypt(&node_public, &[1u8; 16], "2468", &mut rng)
            .unwrap();
        let second = keys
            .encrypt(&node_public, &[2u8; 16], "2468", &mut rng)
            .unwrap();
        assert_eq!(first.reader_public, second.reader_public, "pair kept");

        // The node, with the secret agreed once, reads both, each only for its own challenge.
        let agreed = agree(&node, &first.reader_public).unwrap();
        assert_eq!(
            decrypt_agreed(&agreed, &[1u8; 16], &first)
                .unwrap()
                .expose(),
            "2468"
        );
        assert_eq!(
            decrypt_agreed(&agreed, &[2u8; 16], &second)
                .unwrap()
                .expose(),
            "2468"
        );
        assert_eq!(
            decrypt_agreed(&agreed, &[2u8; 16], &first).unwrap_err(),
            PinError::Transport
        );
        // The same as agreeing afresh.
        assert_eq!(
            decrypt_pin(&node, &[2u8; 16], &second).unwrap().expose(),
            "2468"
        );

        // A new node key: a new pair, which the old agreement cannot read.
        let next = random_secret(&mut rng);
        let next_public = PublicKey::from(&next).to_bytes();
        let third = keys
            .encrypt(&next_public, &[3u8; 16], "2468", &mut rng)
            .unwrap();
        assert_ne!(third.reader_public, first.reader_public, "new pair");
        assert_eq!(
            decrypt_pin(&next, &[3u8; 16], &third).unwrap().expose(),
            "2468"
        );
        assert_eq!(
            decrypt_agreed(&agreed, &[3u8; 16], &third).unwrap_err(),
            PinError::Transport
        );

        // Bad PINs and a low-order node key, as with encrypt_pin; the kept pair is not lost to a
        // bad PIN.
        assert_eq!(
            keys.encrypt(&next_public, &[4u8; 16], "12", &mut rng)
                .unwrap_err(),
            PinError::InvalidPin
        );
        let fourth = keys
            .encrypt(&next_public, &[4u8; 16], "2468", &mut rng)
            .unwrap();
        assert_eq!(fourth.reader_public, third.reader_public);
        assert_eq!(
            keys.encrypt(&[0u8; 32], &[5u8; 16], "2468", &mut rng)
                .unwrap_err(),
            PinError::Transport
        );
        assert_eq!(
            format!("{keys:?} {agreed:?}"),
            "ReaderPinKeys(<secret>) AgreedSecret(<secret>)"
        );
    }

    #[test]
    fn pins_are_four_to_twelve_ascii_digits() {
        assert!(is_valid_pin("1234"));
        assert!(is_valid_pin("123456789012"));
        for bad in ["123", "1234567890123", "12a4", "", "١٢٣٤", " 1234"] {
            assert!(!is_valid_pin(bad), "{bad:?}");
        }
    }
}
