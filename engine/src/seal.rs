//! Bank account numbers at rest (SPEC I10): the node stores no full bank account number in the
//! clear. With a data key, a consumer's designated account is known to the ledger, the journal
//! and the view only by its *bank reference* (`"bk-"` + 32 hex digits: a truncated
//! HMAC-SHA256 under a key derived from the data key), deterministic so that a second
//! designation of the same account is still found by lookup; the account itself is kept only
//! sealed (ChaCha20-Poly1305 under another derived key, the reference as associated data) in
//! the consumer's opening event and record, and unsealed in memory when the bank must be asked.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use onecard_protocol::wire::to_hex;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;

/// HKDF salt of the key bank references are computed under.
pub const BANK_TOKEN_SALT: &[u8] = b"OneCard bank token v1";
/// HKDF salt of the key bank accounts are sealed under.
pub const BANK_SEAL_SALT: &[u8] = b"OneCard bank seal v1";
/// HKDF info of both derivations.
pub const BANK_KEY_INFO: &[u8] = b"bank";
/// What every bank reference starts with.
pub const BANK_REF_PREFIX: &str = "bk-";
/// Bytes of the HMAC a bank reference keeps.
pub const BANK_REF_BYTES: usize = 16;
/// Bytes of a ChaCha20-Poly1305 nonce, prepended to a sealed account.
pub const SEAL_NONCE_LEN: usize = 12;

/// The node's data key: bank references and sealed bank accounts are derived from it. Never
/// stored by the node; read from its configuration.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl DataKey {
    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(bytes)
    }

    /// A fresh random key (the demo's; a real node reads its key from its configuration).
    pub fn random(rng: &mut (impl RngCore + CryptoRng)) -> DataKey {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        DataKey(bytes)
    }

    /// A key for a purpose of the layer above (the node's recharge codes), derived with
    /// HKDF-SHA256 under `salt` and `info`; the data key itself never leaves this type. The
    /// salt must be the purpose's own (never [`BANK_TOKEN_SALT`] or [`BANK_SEAL_SALT`]), so
    /// that no derived key is one of the engine's.
    pub fn derive_subkey(&self, salt: &[u8], info: &[u8]) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut okm = [0u8; 32];
        hk.expand(info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    fn derive(&self, salt: &[u8]) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut okm = [0u8; 32];
        hk.expand(BANK_KEY_INFO, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }
}

// The key never appears in logs or debug output (I10).
impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<secret>)")
    }
}

/// A sealed bank account that does not open under this key and reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the sealed bank account of {0} does not open under the data key")]
pub struct UnsealError(pub String);

/// The bank reference of `account`: `"bk-"` + lowercase hex of the first
/// [`BANK_REF_BYTES`] bytes of HMAC-SHA256 over the account's UTF-8, under the key HKDF-SHA256
/// derives from `key` (salt [`BANK_TOKEN_SALT`], info [`BANK_KEY_INFO`]).
pub fn bank_ref(key: &DataKey, account: &str) -> String {
    let token_key = key.derive(BANK_TOKEN_SALT);
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&token_key).expect("HMAC takes any key length");
    mac.update(account.as_bytes());
    let full = mac.finalize().into_bytes();
    format!("{BANK_REF_PREFIX}{}", to_hex(&full[..BANK_REF_BYTES]))
}

/// `account` sealed under `key` for `bank_ref`: nonce (12 random bytes) | ChaCha20-Poly1305
/// ciphertext and tag, the reference as associated data.
pub fn seal(
    key: &DataKey,
    bank_ref: &str,
    account: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.derive(BANK_SEAL_SALT)));
    let mut nonce = [0u8; SEAL_NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: account.as_bytes(),
                aad: bank_ref.as_bytes(),
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any short message");
    let mut out = Vec::with_capacity(SEAL_NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// The account [`seal`] sealed for `bank_ref` under `key`.
pub fn unseal(key: &DataKey, bank_ref: &str, sealed: &[u8]) -> Result<String, UnsealError> {
    let fail = || UnsealError(bank_ref.to_string());
    if sealed.len() < SEAL_NONCE_LEN {
        return Err(fail());
    }
    let (nonce, ct) = sealed.split_at(SEAL_NONCE_LEN);
    let cipher = ChaCha20Poly1305::new(Key::from_slice(&key.derive(BANK_SEAL_SALT)));
    let pt = cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: bank_ref.as_bytes(),
            },
        )
        .map_err(|_| fail())?;
    String::from_utf8(pt).map_err(|_| fail())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey::from_bytes([9u8; 32])
    }

    #[test]
    fn bank_refs_are_keyed_stable_distinct_and_hide_the_account() {
        let a = bank_ref(&key(), "DE89370400440532013000");
        assert_eq!(a, bank_ref(&key(), "DE89370400440532013000"), "stable");
        assert!(a.starts_with(BANK_REF_PREFIX));
        assert_eq!(a.len(), BANK_REF_PREFIX.len() + 2 * BANK_REF_BYTES);
        assert!(a[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(!a.contains("3000") && !a.contains("DE89"));
        assert_ne!(a, bank_ref(&key(), "DE89370400440532013001"));
        assert_ne!(
            a,
            bank_ref(&DataKey::from_bytes([8u8; 32]), "DE89370400440532013000")
        );
        assert_eq!(format!("{:?}", key()), "DataKey(<secret>)");
    }

    #[test]
    fn a_sealed_account_opens_only_under_its_key_and_reference() {
        let mut rng = rand::thread_rng();
        let r = bank_ref(&key(), "alice-bank");
        let s = seal(&key(), &r, "alice-bank", &mut rng);
        assert!(!s.windows(10).any(|w| w == b"alice-bank"));
        assert_eq!(unseal(&key(), &r, &s).unwrap(), "alice-bank");
        // Random nonce: sealing twice differs.
        assert_ne!(s, seal(&key(), &r, "alice-bank", &mut rng));
        let other_ref = bank_ref(&key(), "bob-bank");
        assert!(
            unseal(&key(), &other_ref, &s).is_err(),
            "bound to its reference"
        );
        assert!(unseal(&DataKey::from_bytes([8u8; 32]), &r, &s).is_err());
        let mut tampered = s.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(unseal(&key(), &r, &tampered).is_err());
        assert!(unseal(&key(), &r, &s[..5]).is_err());
    }
}
