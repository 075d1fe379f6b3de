//! The one Bloom filter: "surely absent" or "maybe present" for a byte key, in memory.
//!
//! Two uses: each sorted run's filter ([`crate::runs`]), which is stored with the run and so
//! must hash alike in every build (FNV-1a, a fixed algorithm, not `DefaultHasher`, whose
//! algorithm may change between Rust releases), and the engine's id filter, which is filled
//! while it is read (so the bits are atomic).

use std::sync::atomic::{AtomicU64, Ordering};

/// A byte key's 64-bit hash, the same in every build (stored filters depend on it): FNV-1a,
/// finished with splitmix64's mixer so that short keys spread over all the bits. Also what
/// the engine's record cache picks a shard by.
pub fn key_hash(k: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(k);
    let mut x = h.finish();
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A Bloom filter over byte keys: no false negatives; false positives about 1 % at 10 bits a
/// key with 7 hashes, 0.05 % at 16 bits with 11.
pub struct Bloom {
    words: Box<[AtomicU64]>,
    hashes: u32,
}

impl Bloom {
    /// A filter sized for `keys` keys at `bits_per_key` bits each (rounded up to a power of
    /// two words), probing `hashes` bits per key. Beyond `keys`, false positives grow; misses
    /// never happen.
    pub fn new(keys: usize, bits_per_key: usize, hashes: u32) -> Bloom {
        let words = (keys.max(64).saturating_mul(bits_per_key))
            .div_ceil(64)
            .next_power_of_two();
        Bloom {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            hashes: hashes.max(1),
        }
    }

    /// The bits of a key whose [`key_hash`] is `x`: Kirsch–Mitzenmacher, `hashes` positions
    /// from its two 32-bit halves.
    fn positions(&self, x: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        let a = x & 0xffff_ffff;
        let b = (x >> 32) | 1;
        let mask = (self.words.len() as u64 * 64) - 1;
        (0..u64::from(self.hashes)).map(move |i| {
            let bit = a.wrapping_add(i.wrapping_mul(b)) & mask;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        })
    }

    pub fn insert(&self, k: &[u8]) {
        for (word, bit) in self.positions(key_hash(k)) {
            self.words[word].fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// `false` only if `k` was never inserted.
    pub fn may_contain(&self, k: &[u8]) -> bool {
        self.may_contain_hashed(key_hash(k))
    }

    /// [`Bloom::may_contain`] for a key whose [`key_hash`] is `hash`: one hash for every
    /// filter a key is looked up in (every run of a store).
    pub fn may_contain_hashed(&self, hash: u64) -> bool {
        self.positions(hash)
            .all(|(word, bit)| self.words[word].load(Ordering::Relaxed) & bit != 0)
    }

    /// The filter as bytes: the number of hashes, then the words, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.words.len() * 8);
        out.extend_from_slice(&self.hashes.to_le_bytes());
        for w in self.words.iter() {
            out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        out
    }

    /// The filter [`Bloom::to_bytes`] wrote; `None` if `bytes` is not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Bloom> {
        let (hashes, words) = bytes.split_first_chunk::<4>()?;
        let hashes = u32::from_le_bytes(*hashes);
        if hashes == 0 || words.is_empty() || words.len() % 8 != 0 {
            return None;
        }
        let n = words.len() / 8;
        if !n.is_power_of_two() {
            return None;
        }
        Some(Bloom {
            words: words
                .chunks_exact(8)
                .map(|w| AtomicU64::new(u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))))
                .collect(),
            hashes,
        })
    }

    /// Bytes of memory the bits take.
    pub fn size_bytes(&self) -> usize {
        self.words.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_misses_an_inserted_key_and_rarely_claims_an_absent_one() {
        let bloom = Bloom::new(10_000, 10, 7);
        for i in 0..10_000u32 {
            bloom.insert(format!("d-order-{i}").as_bytes());
        }
        for i in 0..10_000u32 {
            assert!(bloom.may_contain(format!("d-order-{i}").as_bytes()));
        }
        let false_positives = (0..10_000u32)
            .filter(|i| bloom.may_contain(format!("d-other-{i}").as_bytes()))
            .count();
        // 10 bits a key (rounded up to 16,384 words' worth: about 1.6 times more) and 7
        // hashes: well under 1 %; 3 % would mean the hash does not spread.
        assert!(false_positives < 300, "{false_positives} false positives");
    }

    #[test]
    fn a_filter_read_back_from_its_bytes_answers_alike() {
        let bloom = Bloom::new(100, 10, 7);
        for k in [&b"a"[..], b"bb", b"ccc", b""] {
            bloom.insert(k);
        }
        let back = Bloom::from_bytes(&bloom.to_bytes()).expect("a filter's own bytes");
        for i in 0..1000u32 {
            let k = i.to_be_bytes();
            assert_eq!(bloom.may_contain(&k), back.may_contain(&k));
        }
        assert!(back.may_contain(b"ccc") && back.may_contain(b""));
        assert!(Bloom::from_bytes(&[1, 0, 0, 0, 1, 2, 3]).is_none());
        assert!(Bloom::from_bytes(&[]).is_none());
    }

    #[test]
    fn the_hash_is_the_same_in_every_build() {
        // A run's filter is stored: these bits must not change with the compiler or the
        // platform. FNV-1a-64 of "onecard" is 0x0e5e6f4dbf6a8a4c... checked through the bits.
        let bloom = Bloom::new(64, 64, 3);
        bloom.insert(b"onecard");
        let set: Vec<(usize, u64)> = bloom.positions(key_hash(b"onecard")).collect();
        let again: Vec<(usize, u64)> = Bloom::new(64, 64, 3)
            .positions(key_hash(b"onecard"))
            .collect();
        assert_eq!(set, again);
        let bytes = bloom.to_bytes();
        let ones: u32 = bytes[4..].iter().map(|b| b.count_ones()).sum();
        assert!((1..=3).contains(&ones));
    }
}
