//! Sorted runs: a key-value store written only by appends, for the view's checkpoint.
//!
//! Why: a B-tree insert reads the leaf it changes. At a million consumers the view's tree is far
//! larger than any cache the memory bar allows, so every checkpointed key paged a leaf in and
//! wrote it back: 12–17 µs of CPU per key in sled (BENCHMARKS.md, "The write path, third
//! session"). Here a checkpoint is one new immutable file of sorted keys, written front to back
//! and synced once; reads look through the runs newest first; runs of about the same size are
//! merged in the background (size-tiered), so that a key is rewritten a few times over its life
//! instead of costing a random leaf rewrite every time it changes.
//!
//! - **A run** is a file `{id:020}.run`: blocks of about [`BLOCK_BYTES`] (each framed with its
//!   length and CRC32), then the block index (each block's first key), the run's last key and
//!   its Bloom filter, then a fixed footer with their offsets and a CRC32 over them. A value is
//!   a value or a removal (a tombstone, dropped when a merge reaches the oldest run).
//! - **The catalogue** of live runs is a sled tree: run id → rank (newest wins on a key). A
//!   new run is synced, then entered in the catalogue and the catalogue flushed: that flush is
//!   the commit. A merge enters its result and removes its sources in one sled batch, so a
//!   crash leaves either the sources or the result, never both or neither. Files the catalogue
//!   does not name (a run or a merge cut by a crash) are deleted at opening.
//! - **Readers** take a snapshot of the live runs (an `Arc`): a merge that retires a run unlinks
//!   its file, and a reader still holding it reads on through its open handle.
//!
//! Architecture invariant: the catalogue names exactly the runs whose files are whole and
//! synced; the newest run holding a key decides its value.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::bloom::{key_hash, Bloom};

/// A block's payload is closed once it holds this many bytes (a single larger entry makes a
/// block of its own). A point read reads one block.
pub const BLOCK_BYTES: usize = 4096;
/// Runs smaller than this are all of the lowest tier.
const TIER_BASE_BYTES: u64 = 4 << 20;
/// How many runs of one tier, side by side, are merged into one of the next.
const FAN_IN: usize = 6;
/// Past this many runs, the newest are merged whatever their tiers (a bound on a read's probes).
const MAX_RUNS: usize = 40;
/// Bloom filter: 10 bits a key and 7 probes, about 1 % false positives.
const BLOOM_BITS_PER_KEY: usize = 10;
const BLOOM_HASHES: u32 = 7;

const MAGIC: &[u8; 8] = b"OCRUN\0\0\x01";
const FOOTER_BYTES: usize = 8 + 8 * 4 + 4 + 4;
const TAG_REMOVED: u8 = 0;
const TAG_VALUE: u8 = 1;
const CATALOGUE: &str = "runs";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the runs' catalogue (sled): {0}")]
    Catalogue(#[from] sled::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: damaged: {reason}")]
    Corrupt { path: String, reason: String },
}

impl RunError {
    fn io(path: &Path, source: std::io::Error) -> RunError {
        RunError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn corrupt(path: &Path, reason: impl Into<String>) -> RunError {
        RunError::Corrupt {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }

    /// Whether the device is full (ENOSPC), in the run files or in sled.
    pub fn is_disk_full(&self) -> bool {
        match self {
            RunError::Io { source, .. } => crate::is_disk_full(source),
            RunError::Catalogue(sled::Error::Io(io)) => crate::is_disk_full(io),
            _ => false,
        }
    }
}

/// One block's place in its run's file, and its first key.
struct BlockRef {
    first: Box<[u8]>,
    offset: u64,
    len: u32,
}

/// One run, open for reading. Its file is unlinked when a merge retires it; the handle keeps
/// it readable for whoever still holds the run.
pub struct Run {
    id: u64,
    rank: u64,
    path: PathBuf,
    file: File,
    blocks: Vec<BlockRef>,
    last: Box<[u8]>,
    bloom: Bloom,
    entries: u64,
    bytes: u64,
}

/// What a run says of a key.
enum Lookup {
    Value(Vec<u8>),
    Removed,
    Absent,
}

/// An entry inside a block: the key's and the value's ranges in the block's buffer.
#[derive(Clone, Copy)]
struct EntryAt {
    key: (usize, usize),
    value: Option<(usize, usize)>,
    next: usize,
}

/// The entry of `block` at `pos` (just past the block's header at first), if any.
fn entry_at(block: &[u8], pos: usize) -> Option<Result<EntryAt, String>> {
    if pos >= block.len() {
        return None;
    }
    let bad = |what: &str| Some(Err(format!("an entry's {what} runs past its block")));
    let Some(klen) = read_u32(block, pos) else {
        return bad("key length");
    };
    let k0 = pos + 4;
    let k1 = k0 + klen as usize;
    let Some(&tag) = block.get(k1) else {
        return bad("key");
    };
    match tag {
        TAG_REMOVED => Some(Ok(EntryAt {
            key: (k0, k1),
            value: None,
            next: k1 + 1,
        })),
        TAG_VALUE => {
            let Some(vlen) = read_u32(block, k1 + 1) else {
                return bad("value length");
            };
            let v0 = k1 + 5;
            let v1 = v0 + vlen as usize;
            if v1 > block.len() {
                return bad("value");
            }
            Some(Ok(EntryAt {
                key: (k0, k1),
                value: Some((v0, v1)),
                next: v1,
            }))
        }
        t => Some(Err(format!("an entry has tag {t}"))),
    }
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
}

impl Run {
    fn file_name(id: u64) -> String {
        format!("{id:020}.run")
    }

    /// Opens a whole run: reads and checks its footer, index and filter.
    fn open(dir: &Path, id: u64, rank: u64) -> Result<Run, RunError> {
        let path = dir.join(Run::file_name(id));
        let file = File::open(&path).map_err(|e| RunError::io(&path, e))?;
        let size = file.metadata().map_err(|e| RunError::io(&path, e))?.len();
        if size < FOOTER_BYTES as u64 {
            return Err(RunError::corrupt(&path, "shorter than a run's footer"));
        }
        let mut footer = [0u8; FOOTER_BYTES];
        file.read_exact_at(&mut footer, size - FOOTER_BYTES as u64)
            .map_err(|e| RunError::io(&path, e))?;
        if &footer[..8] != MAGIC {
            return Err(RunError::corrupt(
                &path,
                "not a run of this format (its footer's magic differs)",
            ));
        }
        let field = |i: usize| read_u64(&footer, 8 + 8 * i).unwrap_or(0);
        let (index_off, index_len, bloom_off, bloom_len) = (field(0), field(1), field(2), field(3));
        let crc = read_u32(&footer, 40).unwrap_or(0);
        // The index and the filter lie end to end between the blocks and the footer; offsets
        // that overflow or point elsewhere are damage, never arithmetic to trust.
        let meta_end = index_off
            .checked_add(index_len)
            .filter(|&end| end == bloom_off)
            .and_then(|end| end.checked_add(bloom_len))
            .and_then(|end| end.checked_add(FOOTER_BYTES as u64));
        if meta_end != Some(size) || footer[44..] != [0u8; 4] {
            return Err(RunError::corrupt(
                &path,
                "its footer's offsets do not add up",
            ));
        }
        // Bounded by the file's size (checked above).
        let mut meta = vec![0u8; (index_len + bloom_len) as usize];
        file.read_exact_at(&mut meta, index_off)
            .map_err(|e| RunError::io(&path, e))?;
        if crc32fast::hash(&meta) != crc {
            return Err(RunError::corrupt(
                &path,
                "its index or filter fails its CRC",
            ));
        }
        let (index, bloom) = meta.split_at(index_len as usize);
        let bloom =
            Bloom::from_bytes(bloom).ok_or_else(|| RunError::corrupt(&path, "its filter"))?;
        let bad_index = || RunError::corrupt(&path, "its block index");
        let n = read_u64(index, 0).ok_or_else(bad_index)? as usize;
        let entries = read_u64(index, 8).ok_or_else(bad_index)?;
        let mut pos = 16;
        let read_key = |pos: &mut usize| -> Result<Box<[u8]>, RunError> {
            let len = read_u32(index, *pos).ok_or_else(bad_index)? as usize;
            let key = index.get(*pos + 4..*pos + 4 + len).ok_or_else(bad_index)?;
            *pos += 4 + len;
            Ok(key.into())
        };
        let last = read_key(&mut pos)?;
        let mut blocks = Vec::with_capacity(n.min(1 << 24));
        for _ in 0..n {
            let first = read_key(&mut pos)?;
            let offset = read_u64(index, pos).ok_or_else(bad_index)?;
            let len = read_u32(index, pos + 8).ok_or_else(bad_index)?;
            pos += 12;
            if offset
                .checked_add(u64::from(len))
                .is_none_or(|end| end > index_off)
            {
                return Err(bad_index());
            }
            blocks.push(BlockRef { first, offset, len });
        }
        Ok(Run {
            id,
            rank,
            path,
            file,
            blocks,
            last,
            bloom,
            entries,
            bytes: size,
        })
    }

    /// Block `i`, read and checked.
    fn block(&self, i: usize) -> Result<Vec<u8>, RunError> {
        let b = &self.blocks[i];
        let mut buf = vec![0u8; b.len as usize];
        self.file
            .read_exact_at(&mut buf, b.offset)
            .map_err(|e| RunError::io(&self.path, e))?;
        let len = read_u32(&buf, 0).unwrap_or(u32::MAX) as usize;
        let crc = read_u32(&buf, 4).unwrap_or(0);
        if len + 8 != buf.len() || crc32fast::hash(&buf[8..]) != crc {
            return Err(RunError::corrupt(
                &self.path,
                format!("block {i} (at byte {}) fails its CRC", b.offset),
            ));
        }
        Ok(buf)
    }

    /// `hash` is the key's [`key_hash`], computed once for all the runs.
    fn lookup(&self, k: &[u8], hash: u64) -> Result<Lookup, RunError> {
        if self.blocks.is_empty()
            || k < &*self.blocks[0].first
            || k > &*self.last
            || !self.bloom.may_contain_hashed(hash)
        {
            return Ok(Lookup::Absent);
        }
        let i = self.blocks.partition_point(|b| &*b.first <= k) - 1;
        let block = self.block(i)?;
        let mut pos = 8;
        while let Some(e) = entry_at(&block, pos) {
            let e = e.map_err(|r| RunError::corrupt(&self.path, format!("block {i}: {r}")))?;
            let key = &block[e.key.0..e.key.1];
            match key.cmp(k) {
                std::cmp::Ordering::Less => pos = e.next,
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal => {
                    return Ok(match e.value {
                        Some((v0, v1)) => Lookup::Value(block[v0..v1].to_vec()),
                        None => Lookup::Removed,
                    })
                }
            }
        }
        Ok(Lookup::Absent)
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Writes one run's file front to back.
struct RunWriter {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    block: Vec<u8>,
    block_first: Vec<u8>,
    blocks: Vec<BlockRef>,
    last: Vec<u8>,
    bloom: Bloom,
    entries: u64,
    /// Where the bytes not yet handed to writeback start, and where the step before began.
    writeback_from: u64,
    waited_upto: u64,
    /// For a merge: when it started, to keep it under `MERGE_BYTES_PER_SEC`.
    throttle_from: Option<std::time::Instant>,
}

/// A run's bytes are handed to the disk a step at a time as they are written, and the step
/// before waited for, so that a run never has more than two steps in flight: a merge of
/// hundreds of megabytes left dirty for its final sync stalled the log's `fdatasync` behind it
/// (a disk cache flush waits for the writes queued before it), and with it every command
/// waiting for durability. At a million consumers a lifecycle's p99 at 11,750/s went from
/// 80 ms (no pacing) to 34 ms (1 MiB steps); see BENCHMARKS.md.
const WRITEBACK_STEP: u64 = 256 << 10;
/// A merge writes at most this many bytes a second, so that the log's syncs never queue behind
/// much of it; a checkpoint is not held back (the overlay waits for it).
const MERGE_BYTES_PER_SEC: u64 = 64 << 20;

impl RunWriter {
    fn create(path: PathBuf, expected_keys: usize, throttled: bool) -> Result<RunWriter, RunError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| RunError::io(&path, e))?;
        Ok(RunWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            offset: 0,
            block: Vec::with_capacity(BLOCK_BYTES * 2),
            block_first: Vec::new(),
            blocks: Vec::new(),
            last: Vec::new(),
            bloom: Bloom::new(expected_keys, BLOOM_BITS_PER_KEY, BLOOM_HASHES),
            entries: 0,
            writeback_from: 0,
            waited_upto: 0,
            throttle_from: throttled.then(std::time::Instant::now),
        })
    }

    /// Starts writeback of the bytes written since the last step and waits for the step
    /// before it (`sync_file_range`: data only, no metadata; the final sync makes it durable).
    fn pace_writeback(&mut self) -> Result<(), RunError> {
        use std::os::unix::io::AsRawFd;
        if self.offset - self.writeback_from < WRITEBACK_STEP {
            return Ok(());
        }
        self.out.flush().map_err(|e| RunError::io(&self.path, e))?;
        let fd = self.out.get_ref().as_raw_fd();
        let range = |from: u64, to: u64| (from as libc::off64_t, (to - from) as libc::off64_t);
        let (from, len) = range(self.writeback_from, self.offset);
        // SAFETY: plain system calls on a descriptor this writer owns.
        let started = unsafe { libc::sync_file_range(fd, from, len, libc::SYNC_FILE_RANGE_WRITE) };
        let (wait_from, wait_len) = range(self.waited_upto, self.writeback_from);
        let waited = if wait_len > 0 {
            unsafe {
                libc::sync_file_range(
                    fd,
                    wait_from,
                    wait_len,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                )
            }
        } else {
            0
        };
        if started != 0 || waited != 0 {
            return Err(RunError::io(&self.path, std::io::Error::last_os_error()));
        }
        self.waited_upto = self.writeback_from;
        self.writeback_from = self.offset;
        if let Some(from) = self.throttle_from {
            let due = Duration::from_secs_f64(self.offset as f64 / MERGE_BYTES_PER_SEC as f64);
            if let Some(early) = due.checked_sub(from.elapsed()) {
                std::thread::sleep(early);
            }
        }
        Ok(())
    }

    /// Adds an entry; keys come strictly ascending (anything else is refused: a run out of
    /// order would answer reads wrongly).
    fn add(&mut self, k: &[u8], v: Option<&[u8]>) -> Result<(), RunError> {
        if self.entries > 0 && k <= self.last.as_slice() {
            return Err(RunError::corrupt(
                &self.path,
                "keys handed to a run out of order or twice",
            ));
        }
        let size = 4 + k.len() + 1 + v.map_or(0, |v| 4 + v.len());
        if !self.block.is_empty() && self.block.len() + size > BLOCK_BYTES + 8 {
            self.close_block()?;
        }
        if self.block.is_empty() {
            self.block.extend_from_slice(&[0u8; 8]);
            self.block_first.clear();
            self.block_first.extend_from_slice(k);
        }
        self.block
            .extend_from_slice(&(k.len() as u32).to_le_bytes());
        self.block.extend_from_slice(k);
        match v {
            None => self.block.push(TAG_REMOVED),
            Some(v) => {
                self.block.push(TAG_VALUE);
                self.block
                    .extend_from_slice(&(v.len() as u32).to_le_bytes());
                self.block.extend_from_slice(v);
            }
        }
        self.bloom.insert(k);
        self.last.clear();
        self.last.extend_from_slice(k);
        self.entries += 1;
        Ok(())
    }

    fn close_block(&mut self) -> Result<(), RunError> {
        let payload = (self.block.len() - 8) as u32;
        let crc = crc32fast::hash(&self.block[8..]);
        self.block[..4].copy_from_slice(&payload.to_le_bytes());
        self.block[4..8].copy_from_slice(&crc.to_le_bytes());
        self.out
            .write_all(&self.block)
            .map_err(|e| RunError::io(&self.path, e))?;
        self.blocks.push(BlockRef {
            first: std::mem::take(&mut self.block_first).into(),
            offset: self.offset,
            len: self.block.len() as u32,
        });
        self.offset += self.block.len() as u64;
        self.block.clear();
        self.pace_writeback()
    }

    /// Writes the index, the filter and the footer, syncs the file, and opens it as a run.
    fn finish(mut self, dir: &Path, id: u64, rank: u64) -> Result<Run, RunError> {
        if !self.block.is_empty() {
            self.close_block()?;
        }
        let mut index = Vec::with_capacity(32 + self.blocks.len() * 32);
        index.extend_from_slice(&(self.blocks.len() as u64).to_le_bytes());
        index.extend_from_slice(&self.entries.to_le_bytes());
        index.extend_from_slice(&(self.last.len() as u32).to_le_bytes());
        index.extend_from_slice(&self.last);
        for b in &self.blocks {
            index.extend_from_slice(&(b.first.len() as u32).to_le_bytes());
            index.extend_from_slice(&b.first);
            index.extend_from_slice(&b.offset.to_le_bytes());
            index.extend_from_slice(&b.len.to_le_bytes());
        }
        let bloom = self.bloom.to_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&index);
        crc.update(&bloom);
        let mut footer = Vec::with_capacity(FOOTER_BYTES);
        footer.extend_from_slice(MAGIC);
        let index_off = self.offset;
        let bloom_off = index_off + index.len() as u64;
        for f in [index_off, index.len() as u64, bloom_off, bloom.len() as u64] {
            footer.extend_from_slice(&f.to_le_bytes());
        }
        footer.extend_from_slice(&crc.finalize().to_le_bytes());
        footer.extend_from_slice(&[0u8; 4]);
        let io = |e| RunError::io(&self.path, e);
        self.out.write_all(&index).map_err(io)?;
        self.out.write_all(&bloom).map_err(io)?;
        self.out.write_all(&footer).map_err(io)?;
        let file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        sync_dir(dir)?;
        Run::open(dir, id, rank)
    }
}

fn sync_dir(dir: &Path) -> Result<(), RunError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RunError::io(dir, e))
}

/// A cursor over one run from a key on, a block at a time.
struct Cursor {
    run: Arc<Run>,
    block_no: usize,
    block: Vec<u8>,
    at: Option<EntryAt>,
}

impl Cursor {
    /// At the first entry whose key is `start` or after.
    fn seek(run: Arc<Run>, start: &[u8]) -> Result<Cursor, RunError> {
        let block_no = run
            .blocks
            .partition_point(|b| &*b.first <= start)
            .saturating_sub(1);
        let mut c = Cursor {
            run,
            block_no,
            block: Vec::new(),
            at: None,
        };
        if c.block_no < c.run.blocks.len() {
            c.block = c.run.block(c.block_no)?;
            c.settle(8)?;
            while c.key().is_some_and(|k| k < start) {
                c.advance()?;
            }
        }
        Ok(c)
    }

    /// Places the cursor at the entry at `pos` of the current block, or the next block's first.
    fn settle(&mut self, mut pos: usize) -> Result<(), RunError> {
        loop {
            match entry_at(&self.block, pos) {
                Some(Ok(e)) => {
                    self.at = Some(e);
                    return Ok(());
                }
                Some(Err(r)) => {
                    return Err(RunError::corrupt(
                        &self.run.path,
                        format!("block {}: {r}", self.block_no),
                    ))
                }
                None => {
                    self.block_no += 1;
                    if self.block_no >= self.run.blocks.len() {
                        self.at = None;
                        self.block = Vec::new();
                        return Ok(());
                    }
                    self.block = self.run.block(self.block_no)?;
                    pos = 8;
                }
            }
        }
    }

    fn key(&self) -> Option<&[u8]> {
        self.at.map(|e| &self.block[e.key.0..e.key.1])
    }

    fn value(&self) -> Option<Option<&[u8]>> {
        self.at.map(|e| e.value.map(|(v0, v1)| &self.block[v0..v1]))
    }

    fn advance(&mut self) -> Result<(), RunError> {
        match self.at {
            Some(e) => self.settle(e.next),
            None => Ok(()),
        }
    }
}

/// Several runs' cursors merged in key order, the newest run deciding each key.
struct Merging {
    /// Oldest first, as the runs are.
    cursors: Vec<Cursor>,
}

impl Merging {
    fn new(runs: &[Arc<Run>], start: &[u8]) -> Result<Merging, RunError> {
        Ok(Merging {
            cursors: runs
                .iter()
                .map(|r| Cursor::seek(r.clone(), start))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Calls `f` with the next key and its newest value (`None`: removed), then moves past it.
    /// `false` once every cursor is at its end.
    fn next_with(
        &mut self,
        f: impl FnOnce(&[u8], Option<&[u8]>) -> Result<(), RunError>,
    ) -> Result<bool, RunError> {
        let mut newest: Option<usize> = None;
        for (i, c) in self.cursors.iter().enumerate() {
            let Some(k) = c.key() else { continue };
            newest = match newest {
                Some(j) if self.cursors[j].key().is_some_and(|best| best < k) => Some(j),
                _ => Some(i),
            };
        }
        let Some(winner) = newest else {
            return Ok(false);
        };
        // The older cursors at the same key step past it first; then the winner's own slices
        // are handed over without a copy, and the winner steps on.
        let (older, rest) = self.cursors.split_at_mut(winner);
        let (winning, newer) = rest.split_first_mut().unwrap_or_else(|| unreachable!());
        let key = winning.key().unwrap_or_default();
        for c in older.iter_mut().chain(newer.iter_mut()) {
            if c.key() == Some(key) {
                c.advance()?;
            }
        }
        f(key, winning.value().unwrap_or(None))?;
        winning.advance()?;
        Ok(true)
    }
}

/// Every live key from a start key on, in key order, with its newest value (removals skipped).
pub struct RunScan {
    merging: Result<Merging, Option<RunError>>,
}

impl Iterator for RunScan {
    type Item = Result<(Vec<u8>, Vec<u8>), RunError>;

    fn next(&mut self) -> Option<Self::Item> {
        let merging = match &mut self.merging {
            Ok(m) => m,
            Err(e) => return e.take().map(Err),
        };
        loop {
            let mut out = None;
            let step = merging.next_with(|k, v| {
                out = v.map(|v| (k.to_vec(), v.to_vec()));
                Ok(())
            });
            match step {
                Err(e) => {
                    self.merging = Err(None);
                    return Some(Err(e));
                }
                Ok(false) => return None,
                Ok(true) => {
                    if let Some(kv) = out {
                        return Some(Ok(kv));
                    }
                }
            }
        }
    }
}

/// Ids and ranks handed out, under the lock that changes the set of live runs.
struct Counters {
    next_id: u64,
    next_rank: u64,
}

/// What a merge left, for tests and the checkpoint's statistics.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub runs: usize,
    pub entries: u64,
    pub bytes: u64,
}

/// The store: the live runs and their catalogue.
pub struct RunStore {
    dir: PathBuf,
    db: sled::Db,
    catalogue: sled::Tree,
    /// Oldest first.
    live: RwLock<Arc<[Arc<Run>]>>,
    counters: Mutex<Counters>,
    /// One merge at a time.
    merging: Mutex<()>,
    /// The background merger's wake-up, once started: each new run nudges it.
    merger: Mutex<Option<crossbeam_channel::Sender<()>>>,
    /// Runs written so far (merges change no content and do not count): a scan that reads
    /// beside the writer compares it to know when its snapshot of the runs may lack a key.
    generation: std::sync::atomic::AtomicU64,
}

fn catalogue_key(id: u64) -> [u8; 9] {
    let mut k = [b'r'; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

impl RunStore {
    /// Opens the runs in `dir` named by the catalogue in `db`; deletes the files it does not
    /// name (cut by a crash before their commit, or retired by a merge).
    pub fn open(db: sled::Db, dir: &Path) -> Result<RunStore, RunError> {
        std::fs::create_dir_all(dir).map_err(|e| RunError::io(dir, e))?;
        RunStore::open_with(db, dir, true)
    }

    /// Opens the runs for reading only, as a check does: files the catalogue does not name are
    /// left alone (a check must not delete what it may be asked about).
    pub fn open_to_read(db: sled::Db, dir: &Path) -> Result<RunStore, RunError> {
        RunStore::open_with(db, dir, false)
    }

    fn open_with(db: sled::Db, dir: &Path, delete_unnamed: bool) -> Result<RunStore, RunError> {
        let catalogue = db.open_tree(CATALOGUE)?;
        let mut runs = Vec::new();
        for kv in catalogue.scan_prefix(b"r") {
            let (k, v) = kv?;
            let (Ok(id), Ok(rank)) = (
                <[u8; 8]>::try_from(&k[1..]).map(u64::from_be_bytes),
                <[u8; 8]>::try_from(v.as_ref()).map(u64::from_be_bytes),
            ) else {
                return Err(RunError::corrupt(
                    dir,
                    "the runs' catalogue holds a bad entry",
                ));
            };
            runs.push(Arc::new(Run::open(dir, id, rank)?));
        }
        runs.sort_by_key(|r| r.rank);
        let named: std::collections::HashSet<String> =
            runs.iter().map(|r| Run::file_name(r.id)).collect();
        let listing = match std::fs::read_dir(dir) {
            Ok(_) if !delete_unnamed => None,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && runs.is_empty() => None,
            Ok(listing) => Some(listing),
            Err(e) => return Err(RunError::io(dir, e)),
        };
        for entry in listing.into_iter().flatten() {
            let entry = entry.map_err(|e| RunError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".run") && !named.contains(&name) {
                std::fs::remove_file(entry.path()).map_err(|e| RunError::io(&entry.path(), e))?;
            }
        }
        let counters = Counters {
            next_id: runs.iter().map(|r| r.id + 1).max().unwrap_or(1),
            next_rank: runs.iter().map(|r| r.rank + 1).max().unwrap_or(1),
        };
        Ok(RunStore {
            dir: dir.to_path_buf(),
            db,
            catalogue,
            live: RwLock::new(runs.into()),
            counters: Mutex::new(counters),
            merging: Mutex::new(()),
            merger: Mutex::new(None),
            generation: Default::default(),
        })
    }

    /// How many runs have been written since opening: it changes whenever the contents may.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn snapshot(&self) -> Arc<[Arc<Run>]> {
        self.live.read().clone()
    }

    /// The newest value of `k`.
    pub fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, RunError> {
        let hash = key_hash(k);
        for run in self.snapshot().iter().rev() {
            match run.lookup(k, hash)? {
                Lookup::Value(v) => return Ok(Some(v)),
                Lookup::Removed => return Ok(None),
                Lookup::Absent => {}
            }
        }
        Ok(None)
    }

    /// Every live key from `start` on (inclusive), in key order.
    pub fn scan_from(&self, start: &[u8]) -> RunScan {
        RunScan {
            merging: Merging::new(&self.snapshot(), start).map_err(Some),
        }
    }

    /// Writes `entries` (strictly ascending keys; `None`: removed) as one new run, newest of
    /// all, durable when this returns. `expected` sizes its filter (more is allowed). Nothing
    /// is written for no entries.
    pub fn write_run<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        expected: usize,
    ) -> Result<(), RunError> {
        let mut entries = entries.into_iter().peekable();
        if entries.peek().is_none() {
            return Ok(());
        }
        let id = {
            let mut c = self.counters.lock();
            c.next_id += 1;
            c.next_id - 1
        };
        let path = self.dir.join(Run::file_name(id));
        let mut w = RunWriter::create(path.clone(), expected, false)?;
        let written = (|| {
            for (k, v) in entries {
                w.add(k, v)?;
            }
            Ok::<_, RunError>(())
        })();
        if let Err(e) = written {
            drop(w);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        // The rank is taken when the run joins the set, under the lock that orders it.
        let mut counters = self.counters.lock();
        let rank = counters.next_rank;
        let run = match w.finish(&self.dir, id, rank) {
            Ok(run) => run,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        self.catalogue
            .insert(catalogue_key(id), &rank.to_be_bytes())?;
        self.db.flush()?;
        counters.next_rank += 1;
        let mut live = self.live.write();
        let mut next: Vec<Arc<Run>> = live.iter().cloned().collect();
        next.push(Arc::new(run));
        *live = next.into();
        self.generation.fetch_add(1, Ordering::Release);
        drop(live);
        drop(counters);
        if let Some(nudge) = &*self.merger.lock() {
            let _ = nudge.try_send(());
        }
        Ok(())
    }

    /// The runs to merge next, by position (oldest first): `FAN_IN` or more runs of one tier
    /// side by side, the newest such group first; or the newest runs past `MAX_RUNS`.
    fn pick(runs: &[Arc<Run>]) -> Option<Range<usize>> {
        let tier = |r: &Run| -> u32 {
            let mut t = 0;
            let mut size = TIER_BASE_BYTES;
            while r.bytes >= size {
                t += 1;
                size = size.saturating_mul(FAN_IN as u64);
            }
            t
        };
        let mut end = runs.len();
        while end > 0 {
            let t = tier(&runs[end - 1]);
            let mut start = end - 1;
            while start > 0 && tier(&runs[start - 1]) == t {
                start -= 1;
            }
            if end - start >= FAN_IN {
                return Some(start..end);
            }
            end = start;
        }
        (runs.len() > MAX_RUNS).then(|| runs.len() - MAX_RUNS / 2..runs.len())
    }

    /// Merges one group of runs if the policy asks for it; `false` if there was none. Stops
    /// early (leaving everything as it was) once `stop` is set.
    pub fn merge_once(&self, stop: &AtomicBool) -> Result<bool, RunError> {
        let _one = self.merging.lock();
        let runs = self.snapshot();
        let Some(range) = RunStore::pick(&runs) else {
            return Ok(false);
        };
        self.merge(&runs, range, stop)
    }

    /// Merges every run into one (tests, tools).
    pub fn merge_all(&self) -> Result<(), RunError> {
        let _one = self.merging.lock();
        let runs = self.snapshot();
        if runs.len() > 1 {
            self.merge(&runs, 0..runs.len(), &AtomicBool::new(false))?;
        }
        Ok(())
    }

    fn merge(
        &self,
        runs: &[Arc<Run>],
        range: Range<usize>,
        stop: &AtomicBool,
    ) -> Result<bool, RunError> {
        let sources = &runs[range.clone()];
        let keep_removals = range.start > 0;
        let expected: u64 = sources.iter().map(|r| r.entries).sum();
        let rank = sources.iter().map(|r| r.rank).max().unwrap_or(0);
        let id = {
            let mut c = self.counters.lock();
            c.next_id += 1;
            c.next_id - 1
        };
        let path = self.dir.join(Run::file_name(id));
        let abandon = |e: Option<RunError>| {
            let _ = std::fs::remove_file(&path);
            e.map_or(Ok(false), Err)
        };
        let mut w = RunWriter::create(path.clone(), expected as usize, true)?;
        let mut merging = match Merging::new(sources, &[]) {
            Ok(m) => m,
            Err(e) => return abandon(Some(e)),
        };
        let mut n: u64 = 0;
        loop {
            let more = merging.next_with(|k, v| {
                if v.is_some() || keep_removals {
                    w.add(k, v)?;
                }
                Ok(())
            });
            match more {
                Err(e) => return abandon(Some(e)),
                Ok(false) => break,
                Ok(true) => {}
            }
            n += 1;
            if n.is_multiple_of(4096) && stop.load(Ordering::Relaxed) {
                drop(w);
                return abandon(None);
            }
        }
        drop(merging);
        if w.entries == 0 {
            // Everything was removed: the sources go, nothing replaces them.
            drop(w);
            let _ = std::fs::remove_file(&path);
            return self.install(sources, None).map(|_| true);
        }
        let merged = match w.finish(&self.dir, id, rank) {
            Ok(run) => run,
            Err(e) => return abandon(Some(e)),
        };
        self.install(sources, Some(merged)).map(|_| true)
    }

    /// Replaces `sources` (side by side in the live set) by `merged`: in the catalogue in one
    /// batch, flushed, then in memory; then unlinks their files.
    fn install(&self, sources: &[Arc<Run>], merged: Option<Run>) -> Result<(), RunError> {
        let _counters = self.counters.lock();
        let mut batch = sled::Batch::default();
        for r in sources {
            batch.remove(&catalogue_key(r.id));
        }
        if let Some(m) = &merged {
            batch.insert(&catalogue_key(m.id), &m.rank.to_be_bytes());
        }
        self.catalogue.apply_batch(batch)?;
        self.db.flush()?;
        let mut live = self.live.write();
        let first = live
            .iter()
            .position(|r| r.id == sources[0].id)
            .unwrap_or(live.len());
        let mut next: Vec<Arc<Run>> = live[..first].to_vec();
        next.extend(merged.map(Arc::new));
        next.extend(
            live[(first + sources.len()).min(live.len())..]
                .iter()
                .cloned(),
        );
        *live = next.into();
        drop(live);
        for r in sources {
            let _ = std::fs::remove_file(&r.path);
        }
        Ok(())
    }

    /// The live runs: how many, their entries (versions of keys, removals included) and bytes.
    pub fn stats(&self) -> RunStats {
        let runs = self.snapshot();
        RunStats {
            runs: runs.len(),
            entries: runs.iter().map(|r| r.entries).sum(),
            bytes: runs.iter().map(|r| r.bytes).sum(),
        }
    }

    /// Starts the background merger: it merges after each new run (and every few seconds)
    /// while the policy finds work, until the returned handle is dropped.
    pub fn start_merger(self: &Arc<Self>) -> std::io::Result<Merger> {
        let (nudge, nudged) = crossbeam_channel::bounded::<()>(1);
        *self.merger.lock() = Some(nudge.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (store, stopping) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("view-merger".into())
            .spawn(move || {
                lower_priority();
                merge_loop(&store, &nudged, &stopping)
            })?;
        Ok(Merger {
            store: self.clone(),
            nudge: Some(nudge),
            stop,
            thread: Some(thread),
        })
    }
}

/// The merger gives way to the commands: a merge has no one waiting for it, and on two cores it
/// competed with the actors and the log writer for whole time slices (nice 10: about a tenth
/// of a core's share while they are busy, all of an idle one).
fn lower_priority() {
    // SAFETY: plain system calls on this thread's own id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

fn merge_loop(store: &RunStore, nudged: &crossbeam_channel::Receiver<()>, stopping: &AtomicBool) {
    loop {
        match nudged.recv_timeout(Duration::from_secs(5)) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            _ if stopping.load(Ordering::Relaxed) => return,
            _ => {}
        }
        loop {
            match store.merge_once(stopping) {
                Ok(true) if !stopping.load(Ordering::Relaxed) => {}
                Ok(_) => break,
                Err(e) => {
                    // Reads and new runs go on meanwhile; the merge is tried again later (a
                    // full disk may have room by then).
                    tracing::error!(error = %e, "merging the view's runs failed; trying again in a minute");
                    let again = std::time::Instant::now() + Duration::from_secs(60);
                    while let Some(left) = again.checked_duration_since(std::time::Instant::now()) {
                        match nudged.recv_timeout(left) {
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                            _ if stopping.load(Ordering::Relaxed) => return,
                            _ => {}
                        }
                    }
                    break;
                }
            }
        }
    }
}

/// The background merger's handle: [`Merger::nudge`] after a new run; dropping it stops the
/// merger (a merge under way is abandoned, its file deleted) and waits for it.
pub struct Merger {
    store: Arc<RunStore>,
    nudge: Option<crossbeam_channel::Sender<()>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Merger {
    pub fn nudge(&self) {
        if let Some(n) = &self.nudge {
            let _ = n.try_send(());
        }
    }
}

impl Drop for Merger {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.nudge.take();
        self.store.merger.lock().take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
