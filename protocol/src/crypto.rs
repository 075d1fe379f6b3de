//! The card's cryptogram: computed by the card (its applet) with the key it holds from
//! personalisation, checked by the node with the key it derives again (docs/reader-protocol.md,
//! 3.1 and 3.2).
//!
//! **Cryptogram:** HMAC-SHA256 under the card key over [`cryptogram_input`], truncated to
//! [`CRYPTOGRAM_LEN`] bytes. It binds the node's fresh challenge, the order, the amount and the
//! card's transaction counter, so a replay (same counter) or a cryptogram for another order or
//! amount is refused.
//!
//! The card key itself comes from the issuer master key (HKDF-SHA256): that derivation, the
//! master key and the card tokens are the issuer's, in `onecard_engine::cards::crypto`. A reader
//! program never sees a card key.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Bytes of the node's challenge.
pub const CHALLENGE_LEN: usize = 16;
/// Bytes of a cryptogram (a truncated HMAC-SHA256).
pub const CRYPTOGRAM_LEN: usize = 16;
/// Longest order id a cryptogram can cover (the engine's own limit on ids).
pub const MAX_ORDER_ID_LEN: usize = 128;

/// One card's secret key.
#[derive(Clone, PartialEq, Eq)]
pub struct CardKey([u8; 32]);

impl CardKey {
    pub fn from_bytes(bytes: [u8; 32]) -> CardKey {
        CardKey(bytes)
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

// Keys never appear in logs or debug output (I10).
impl std::fmt::Debug for CardKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CardKey(<secret>)")
    }
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

    #[test]
    fn a_cryptogram_covers_challenge_order_amount_and_counter() {
        let key = CardKey::from_bytes([3u8; 32]);
        assert_eq!(format!("{key:?}"), "CardKey(<secret>)");
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
        let other = CardKey::from_bytes([4u8; 32]);
        assert!(!cryptogram_matches(&other, &ch, "o-1", 1999, 7, &c));
        assert_eq!(cryptogram(&key, &ch, "", 1, 1), None);
        assert_eq!(cryptogram(&key, &ch, &"x".repeat(129), 1, 1), None);
        assert!(cryptogram(&key, &ch, &"x".repeat(128), 1, 1).is_some());
    }

    #[test]
    fn the_input_is_laid_out_as_published() {
        let input = cryptogram_input(&[0xa0; CHALLENGE_LEN], "ab", 0x0102, 7).unwrap();
        let mut expected = b"OCC1".to_vec();
        expected.extend_from_slice(&[0xa0; CHALLENGE_LEN]);
        expected.extend_from_slice(&[2, b'a', b'b']);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 2]);
        expected.extend_from_slice(&[0, 0, 0, 7]);
        assert_eq!(input, expected);
    }
}
