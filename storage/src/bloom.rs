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

/// A Bloom filter over byte keys: no false negatives; false positives about 1.1 % at 10 bits a
/// key with 7 hashes, 0.23 % at 16 bits with 6 (0.8 % and 0.09 % for the older, spread
/// filters; measured with 26,000 and 16,384 keys).
///
/// A key's bits all lie in one 64-byte block (a cache line), so an insert or a lookup in a
/// large filter (the engine's id filter is 32 MiB) costs one cache miss, not one per probe.
/// Filters written before blocks (stored with older runs) spread the probes over the whole
/// filter; they are read and probed as they were written.
pub struct Bloom {
    words: Box<[AtomicU64]>,
    hashes: u32,
    layout: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Every probe anywhere in the filter (the stored filters of older runs).
    Spread,
    /// Every probe of a key in one block of [`BLOCK_WORDS`] words.
    Blocked,
}

/// Words in a block: 8 × 64 bits, one cache line.
const BLOCK_WORDS: usize = 8;

/// Set in the stored number of hashes of a blocked filter; older filters never have it (their
/// number of hashes is small).
const BLOCKED_FLAG: u32 = 1 << 31;

impl Bloom {
    /// A filter sized for `keys` keys at `bits_per_key` bits each (rounded up to a power of
    /// two words), probing `hashes` bits per key. Beyond `keys`, false positives grow; misses
    /// never happen.
    pub fn new(keys: usize, bits_per_key: usize, hashes: u32) -> Bloom {
        let words = (keys.max(64).saturating_mul(bits_per_key))
            .div_ceil(64)
            .next_power_of_two()
            .max(BLOCK_WORDS);
        Bloom {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            hashes: hashes.clamp(1, 64),
            layout: Layout::Blocked,
        }
    }

    /// The bits of a key whose [`key_hash`] is `x`: Kirsch–Mitzenmacher, `hashes` positions
    /// from two halves of the hash. Blocked: the block from the upper 32 bits, the positions
    /// in it from two 16-bit halves of the lower 32. Spread: the positions in the whole filter
    /// from the two 32-bit halves.
    fn positions(&self, x: u64) -> impl Iterator<Item = (usize, u64)> + '_ {
        let (base, a, b, mask) = match self.layout {
            Layout::Blocked => {
                let blocks = (self.words.len() / BLOCK_WORDS) as u64;
                let block = (x >> 32) & (blocks - 1);
                let bits = (BLOCK_WORDS * 64) as u64;
                (block * bits, x & 0xffff, ((x >> 16) & 0xffff) | 1, bits - 1)
            }
            Layout::Spread => (
                0,
                x & 0xffff_ffff,
                (x >> 32) | 1,
                (self.words.len() as u64 * 64) - 1,
            ),
        };
        (0..u64::from(self.hashes)).map(move |i| {
            let bit = base + (a.wrapping_add(i.wrapping_mul(b)) & mask);
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

    /// The filter as bytes: the number of hashes (with [`BLOCKED_FLAG`] for a blocked filter),
    /// then the words, little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.words.len() * 8);
        let flag = match self.layout {
            Layout::Blocked => BLOCKED_FLAG,
            Layout::Spread => 0,
        };
        out.extend_from_slice(&(self.hashes | flag).to_le_bytes());
        for w in self.words.iter() {
            out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        out
    }

    /// The filter [`Bloom::to_bytes`] wrote; `None` if `bytes` is not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Bloom> {
        let (hashes, words) = bytes.split_first_chunk::<4>()?;
        let stored = u32::from_le_bytes(*hashes);
        let (hashes, layout) = if stored & BLOCKED_FLAG != 0 {
            (stored & !BLOCKED_FLAG, Layout::Blocked)
        } else {
            (stored, Layout::Spread)
        };
        if hashes == 0 || hashes > 64 || words.is_empty() || words.len() % 8 != 0 {
            return None;
        }
        let n = words.len() / 8;
        if !n.is_power_of_two() || (layout == Layout::Blocked && n < BLOCK_WORDS) {
            return None;
        }
        Some(Bloom {
            words: words
                .chunks_exact(8)
                .map(|w| AtomicU64::new(u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))))
                .collect(),
            hashes,
            layout,
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

    /// Builds a filter's stored bytes: the stored number of hashes, then 64 words with the
    /// given ones set.
    fn stored(hashes: u32, set: &[(usize, u64)]) -> Vec<u8> {
        let mut words = [0u64; 64];
        for &(i, w) in set {
            words[i] = w;
        }
        let mut out = hashes.to_le_bytes().to_vec();
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// The bits below were computed by an independent implementation (Python: FNV-1a, the
    /// splitmix64 finish, Kirsch–Mitzenmacher positions) for "a", "bb" and "ccc" with 7 hashes
    /// in 64 words, the way filters were stored before blocks: such a filter still answers
    /// "maybe" for its keys, and is written back unchanged.
    #[test]
    fn a_filter_stored_before_blocks_is_probed_as_it_was_written() {
        let bytes = stored(
            7,
            &[
                (0, 0x2000_0000_0000),
                (2, 0x10_0000_0000_0000),
                (3, 0x100_0000_0000_0000),
                (4, 0x800_0000_0000_0000),
                (7, 0x4),
                (9, 0x200),
                (10, 0x100_0000_0000),
                (11, 0x1_0000),
                (12, 0x4000_0000),
                (13, 0x4_0000_0000_0000),
                (14, 0x10_0000),
                (22, 0x8_0000_0000_0000),
                (31, 0x10_0000_0000_0000),
                (40, 0x20_0000_0000_0000),
                (41, 0x2000_0000_0000),
                (43, 0x8_0000_0000),
                (45, 0x200_0000),
                (47, 0x8000),
                (49, 0x40_0000_0000_0000),
                (58, 0x80_0000_0000_0000),
                (62, 0x40_0000_0000),
            ],
        );
        let bloom = Bloom::from_bytes(&bytes).expect("a filter of an older run");
        for k in [&b"a"[..], b"bb", b"ccc"] {
            assert!(bloom.may_contain(k));
        }
        assert_eq!(bloom.to_bytes(), bytes);
    }

    /// A blocked filter sets exactly the bits the independent implementation computes: each
    /// key's 7 bits in the 512-bit block its hash's upper half names.
    #[test]
    fn a_blocked_filter_sets_the_bits_an_independent_implementation_computes() {
        let bloom = Bloom::new(64, 64, 7);
        for k in [&b"a"[..], b"bb", b"ccc"] {
            bloom.insert(k);
        }
        let want = stored(
            7 | BLOCKED_FLAG,
            &[
                (8, 0x800_0000_0000),
                (9, 0x4_0000_0000),
                (10, 0x200_0000),
                (11, 0x1_0000),
                (14, 0x2000_0000_0000_0040),
                (15, 0x10_0000_0000_0000),
                (32, 0x400_0000),
                (33, 0x20_0000_0000),
                (34, 0x1_0000_0000_0000),
                (35, 0x800_0000_0000_0000),
                (37, 0x40),
                (38, 0x2_0000),
                (39, 0x8000),
                (59, 0x100_0000_0000_0000),
                (60, 0x80_0004_0000_2000),
                (61, 0x40_0002_0000_1000),
            ],
        );
        assert_eq!(bloom.to_bytes(), want);
        let back = Bloom::from_bytes(&want).expect("its own bytes");
        assert!(back.may_contain(b"a") && back.may_contain(b"bb") && back.may_contain(b"ccc"));
    }

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
