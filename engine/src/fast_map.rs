//! The hasher of the engine's in-memory maps, and the map types built on it.
//!
//! The standard library's SipHash-1-3 was about 3.5 % of the CPU of a simulator run (every
//! command hashes its order, consumer, merchant and bank ids into several maps). foldhash is
//! several times cheaper per short key and still seeded at random per process, so a client
//! cannot precompute colliding ids; it is not a defence against an attacker who learns the
//! seed by timing a long-running node, which SipHash's keyed design would be. Nothing here is
//! stored or compared between processes: the stored Bloom filters use `storage::bloom`'s
//! fixed hash.

/// The engine's `BuildHasher`: foldhash, randomly seeded per process.
pub type FastHasher = foldhash::fast::RandomState;
/// A `HashMap` on [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;
/// A `HashSet` on [`FastHasher`].
pub type FastSet<K> = std::collections::HashSet<K, FastHasher>;
/// A `DashMap` (a sharded concurrent map) on [`FastHasher`].
pub type FastDashMap<K, V> = dashmap::DashMap<K, V, FastHasher>;
