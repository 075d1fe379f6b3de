//! The issuer's side of the card's cryptography: the master key and what is derived from it.
//! The cryptogram itself, which the card computes and the node checks, is the protocol's
//! (`onecard_protocol::crypto`), re-exported here.
//!
//! - **Card key:** HKDF-SHA256 with the issuer master key as input keying material, the salt
//!   [`CARD_KEY_SALT`] and the card number (ASCII) as info; 32 bytes. A standard KDF, so one
//!   master key yields a distinct key per card and no card key is ever stored. Here and not in
//!   the protocol crate: only the issuer holds a master key (the card holds its own key from
//!   personalisation, the reader program none), so the master key's bytes never leave this
//!   module and its sibling `pin`.
//! - **Cryptogram:** HMAC-SHA256 under the card key over [`cryptogram_input`], truncated to
//!   [`CRYPTOGRAM_LEN`] bytes (`onecard_protocol::crypto`).
//! - **Card token:** what the node stores instead of a card number (I10). A *token key* is
//!   derived once from the issuer master key (HKDF-SHA256, salt [`CARD_TOKEN_SALT`], info
//!   [`CARD_TOKEN_INFO`], 32 bytes); a card's token is the lowercase hex of HMAC-SHA256 under
//!   the token key over the card number (ASCII). Stable for a card under one master key,
//!   distinct per card, and without the master key it cannot be turned back into the number
//!   (nor can a number be tried against it: the card-number space is small enough to enumerate,
//!   so an unkeyed hash would not do).

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use onecard_protocol::wire::to_hex;
use sha2::Sha256;

pub use onecard_protocol::crypto::{
    cryptogram, cryptogram_input, cryptogram_matches, CardKey, CHALLENGE_LEN, CRYPTOGRAM_LEN,
    MAX_ORDER_ID_LEN,
};

/// Salt of the card-key derivation; changing it changes every card key.
pub const CARD_KEY_SALT: &[u8] = b"OneCard card key v1";
/// Salt of the token-key derivation; changing it changes every card token.
pub const CARD_TOKEN_SALT: &[u8] = b"OneCard card token v1";
/// Info of the token-key derivation.
pub const CARD_TOKEN_INFO: &[u8] = b"token";
/// Hex digits of a card token (HMAC-SHA256, 32 bytes).
pub const CARD_TOKEN_LEN: usize = 64;

/// The issuer's master key. Never stored by the node; read from its configuration.
#[derive(Clone)]
pub struct IssuerKey([u8; 32]);

/// The key card tokens are computed under, derived from the issuer master key. Held in memory
/// by the authentication center only; never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl IssuerKey {
    pub fn from_bytes(bytes: [u8; 32]) -> IssuerKey {
        IssuerKey(bytes)
    }

    /// A key for a purpose of the layer above (the node's recharge codes when the node has
    /// no data key), derived with HKDF-SHA256 under `salt` and `info`; the master key itself
    /// never leaves this type. The salt must be the purpose's own (never one of this module's
    /// or `pin`'s), so that no derived key is a card key, the token key or the PIN key.
    pub fn derive_subkey(&self, salt: &[u8], info: &[u8]) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut okm = [0u8; 32];
        hk.expand(info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }

    /// The key itself, for the derivations of this module and `pin`.
    pub(super) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

// Keys never appear in logs or debug output (I10).
impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuerKey(<secret>)")
    }
}
impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

/// The card key of `card_number` under `master`.
pub fn derive_card_key(master: &IssuerKey, card_number: &str) -> CardKey {
    let hk = Hkdf::<Sha256>::new(Some(CARD_KEY_SALT), &master.0);
    let mut okm = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 × 32: expand cannot fail.
    hk.expand(card_number.as_bytes(), &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    CardKey::from_bytes(okm)
}

/// The token key under `master`: HKDF-SHA256 (salt [`CARD_TOKEN_SALT`], info
/// [`CARD_TOKEN_INFO`]), 32 bytes.
pub fn derive_token_key(master: &IssuerKey) -> TokenKey {
    let hk = Hkdf::<Sha256>::new(Some(CARD_TOKEN_SALT), &master.0);
    let mut okm = [0u8; 32];
    hk.expand(CARD_TOKEN_INFO, &mut okm)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    TokenKey(okm)
}

/// The card token of `card_number`: lowercase hex of HMAC-SHA256 under `key` over the number's
/// ASCII ([`CARD_TOKEN_LEN`] characters).
pub fn card_token(key: &TokenKey, card_number: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes any key length");
    mac.update(card_number.as_bytes());
    to_hex(&mac.finalize().into_bytes())
}

/// Whether `token` looks like a card token: [`CARD_TOKEN_LEN`] lowercase hex digits.
pub fn is_card_token(token: &str) -> bool {
    token.len() == CARD_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> IssuerKey {
        IssuerKey::from_bytes([7u8; 32])
    }

    #[test]
    fn card_keys_are_distinct_per_card_and_stable() {
        let a = derive_card_key(&master(), "4000001234567890");
        let b = derive_card_key(&master(), "4000001234567891");
        assert_ne!(a, b);
        assert_eq!(a, derive_card_key(&master(), "4000001234567890"));
        let other_issuer = derive_card_key(&IssuerKey::from_bytes([8u8; 32]), "4000001234567890");
        assert_ne!(a, other_issuer);
        assert_eq!(format!("{a:?}"), "CardKey(<secret>)");
    }

    #[test]
    fn the_cryptogram_is_made_under_the_derived_card_key() {
        let key = derive_card_key(&master(), "4000001234567890");
        let ch = [1u8; CHALLENGE_LEN];
        let c = cryptogram(&key, &ch, "o-1", 1999, 7).unwrap();
        assert!(cryptogram_matches(&key, &ch, "o-1", 1999, 7, &c));
        let other = derive_card_key(&master(), "4000001234567891");
        assert!(!cryptogram_matches(&other, &ch, "o-1", 1999, 7, &c));
    }

    #[test]
    fn card_tokens_are_keyed_stable_distinct_and_hide_the_number() {
        let key = derive_token_key(&master());
        assert_eq!(key, derive_token_key(&master()));
        assert_eq!(format!("{key:?}"), "TokenKey(<secret>)");
        // Not a card key: another salt and info.
        assert_ne!(&key.0, derive_card_key(&master(), "token").as_bytes());
        let a = card_token(&key, "4000001234567890");
        assert_eq!(a, card_token(&key, "4000001234567890"), "stable");
        assert!(is_card_token(&a), "{a}");
        assert!(!a.contains("4000001234567890") && !a.contains("7890"));
        assert_ne!(a, card_token(&key, "4000001234567891"), "distinct per card");
        let other_issuer = derive_token_key(&IssuerKey::from_bytes([8u8; 32]));
        assert_ne!(a, card_token(&other_issuer, "4000001234567890"));
        // The design pinned: HKDF-SHA256(salt "OneCard card token v1", ikm master, info
        // "token", 32 bytes), then HMAC-SHA256 over the ASCII number, lowercase hex (computed
        // independently with Python's hmac and hashlib).
        assert_eq!(
            to_hex(&key.0),
            "f52a69dc4673a0a2285b882055bbb3b9fec214fcc66897e98f112fa7fdff61dc"
        );
        assert_eq!(
            a,
            "ef18e7c0bbbd1609d924d3bd5e15cf2f94a518383171d1c364813d8f162cfc98"
        );
        assert!(!is_card_token(&a.to_uppercase()));
        assert!(!is_card_token(&a[1..]));
        assert!(!is_card_token(""));
    }

    /// RFC 5869 test case 1 pins the KDF to the standard (HKDF-SHA256), independently of this
    /// module's salt and info.
    #[test]
    fn hkdf_is_the_standard_one() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let hk = Hkdf::<Sha256>::new(Some(&salt), &ikm);
        let mut okm = [0u8; 42];
        hk.expand(&info, &mut okm).unwrap();
        assert_eq!(okm[..8], [0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a]);
    }
}
