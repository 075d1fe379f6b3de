//! The card's cryptography, shared by the node (which derives every card key from the issuer
//! master key) and the card applet (which holds its own key from personalisation).
//!
//! - **Card key:** HKDF-SHA256 with the issuer master key as input keying material, the salt
//!   [`CARD_KEY_SALT`] and the card number (ASCII) as info; 32 bytes. A standard KDF, so one
//!   master key yields a distinct key per card and no card key is ever stored.
//! - **Cryptogram:** HMAC-SHA256 under the card key over [`cryptogram_input`], truncated to
//!   [`CRYPTOGRAM_LEN`] bytes. It binds the node's fresh challenge, the order, the amount and
//!   the card's transaction counter, so a replay (same counter) or a cryptogram for another
//!   order or amount is refused.
//! - **Card token:** what the node stores instead of a card number (I10). A *token key* is
//!   derived once from the issuer master key (HKDF-SHA256, salt [`CARD_TOKEN_SALT`], info
//!   [`CARD_TOKEN_INFO`], 32 bytes); a card's token is the lowercase hex of HMAC-SHA256 under
//!   the token key over the card number (ASCII). Stable for a card under one master key,
//!   distinct per card, and without the master key it cannot be turned back into the number
//!   (nor can a number be tried against it: the card-number space is small enough to enumerate,
//!   so an unkeyed hash would not do).

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Salt of the card-key derivation; changing it changes every card key.
pub const CARD_KEY_SALT: &[u8] = b"OneCard card key v1";
/// Salt of the token-key derivation; changing it changes every card token.
pub const CARD_TOKEN_SALT: &[u8] = b"OneCard card token v1";
/// Info of the token-key derivation.
pub const CARD_TOKEN_INFO: &[u8] = b"token";
/// Hex digits of a card token (HMAC-SHA256, 32 bytes).
pub const CARD_TOKEN_LEN: usize = 64;
/// Bytes of the node's challenge.
pub const CHALLENGE_LEN: usize = 16;
/// Bytes of a cryptogram (a truncated HMAC-SHA256).
pub const CRYPTOGRAM_LEN: usize = 16;
/// Longest order id a cryptogram can cover (the engine's own limit on ids).
pub const MAX_ORDER_ID_LEN: usize = 128;

/// The issuer's master key. Never stored by the node; read from its configuration.
#[derive(Clone)]
pub struct IssuerKey([u8; 32]);

/// One card's secret key.
#[derive(Clone, PartialEq, Eq)]
pub struct CardKey([u8; 32]);

/// The key card tokens are computed under, derived from the issuer master key. Held in memory
/// by the authentication center only; never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenKey([u8; 32]);

impl IssuerKey {
    pub fn from_bytes(bytes: [u8; 32]) -> IssuerKey {
        IssuerKey(bytes)
    }

    /// The key itself, for the derivations of this module and `pin`.
    pub(super) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl CardKey {
    pub fn from_bytes(bytes: [u8; 32]) -> CardKey {
        CardKey(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

// Keys never appear in logs or debug output (I10).
impl std::fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuerKey(<secret>)")
    }
}
impl std::fmt::Debug for CardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardKey(<secret>)")
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
    CardKey(okm)
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
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `token` looks like a card token: [`CARD_TOKEN_LEN`] lowercase hex digits.
pub fn is_card_token(token: &str) -> bool {
    token.len() == CARD_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The bytes a cryptogram covers:
///
/// ```text
/// "OCC1" | challenge [16] | order id length u8 | order id (UTF-8) | amount in cents u64 BE | counter u32 BE
/// ```
///
/// `None` if the order id is empty or longer than [`MAX_ORDER_ID_LEN`].
pub fn cryptogram_input(
    challenge: &[u8; CHALLENGE_LEN],
    order_id: &str,
    amount_cents: u64,
    counter: u32,
) -> Option<Vec<u8>> {
    let id = order_id.as_bytes();
    if id.is_empty() || id.len() > MAX_ORDER_ID_LEN {
        return None;
    }
    let mut v = Vec::with_capacity(4 + CHALLENGE_LEN + 1 + id.len() + 8 + 4);
    v.extend_from_slice(b"OCC1");
    v.extend_from_slice(challenge);
    v.push(id.len() as u8);
    v.extend_from_slice(id);
    v.extend_from_slice(&amount_cents.to_be_bytes());
    v.extend_from_slice(&counter.to_be_bytes());
    Some(v)
}

/// The cryptogram a card with `key` computes; `None` for an order id [`cryptogram_input`]
/// refuses.
pub fn cryptogram(
    key: &CardKey,
    challenge: &[u8; CHALLENGE_LEN],
    order_id: &str,
    amount_cents: u64,
    counter: u32,
) -> Option<[u8; CRYPTOGRAM_LEN]> {
    let input = cryptogram_input(challenge, order_id, amount_cents, counter)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes any key length");
    mac.update(&input);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; CRYPTOGRAM_LEN];
    out.copy_from_slice(&full[..CRYPTOGRAM_LEN]);
    Some(out)
}

/// Whether `presented` is the cryptogram for these values, compared in constant time.
pub fn cryptogram_matches(
    key: &CardKey,
    challenge: &[u8; CHALLENGE_LEN],
    order_id: &str,
    amount_cents: u64,
    counter: u32,
    presented: &[u8],
) -> bool {
    match cryptogram(key, challenge, order_id, amount_cents, counter) {
        Some(expected) => {
            presented.len() == CRYPTOGRAM_LEN && bool::from(expected.ct_eq(presented))
        }
        None => false,
    }
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
    fn a_cryptogram_covers_challenge_order_amount_and_counter() {
        let key = derive_card_key(&master(), "4000001234567890");
        let ch = [1u8; CHALLENGE_LEN];
        let c = cryptogram(&key, &ch, "o-1", 1999, 7).unwrap();
        assert!(cryptogram_matches(&key, &ch, "o-1", 1999, 7, &c));
        assert!(!cryptogram_matches(
            &key,
            &[2u8; CHALLENGE_LEN],
            "o-1",
            1999,
            7,
            &c
        ));
        assert!(!cryptogram_matches(&key, &ch, "o-2", 1999, 7, &c));
        assert!(!cryptogram_matches(&key, &ch, "o-1", 2000, 7, &c));
        assert!(!cryptogram_matches(&key, &ch, "o-1", 1999, 8, &c));
        assert!(!cryptogram_matches(&key, &ch, "o-1", 1999, 7, &c[..15]));
        let other = derive_card_key(&master(), "4000001234567891");
        assert!(!cryptogram_matches(&other, &ch, "o-1", 1999, 7, &c));
        assert_eq!(cryptogram(&key, &ch, "", 1, 1), None);
        assert_eq!(cryptogram(&key, &ch, &"x".repeat(129), 1, 1), None);
    }

    #[test]
    fn card_tokens_are_keyed_stable_distinct_and_hide_the_number() {
        let key = derive_token_key(&master());
        assert_eq!(key, derive_token_key(&master()));
        assert_eq!(format!("{key:?}"), "TokenKey(<secret>)");
        // Not a card key: another salt and info.
        assert_ne!(key.0, derive_card_key(&master(), "token").0);
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
            hex(&key.0),
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

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
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
