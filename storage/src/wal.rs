//! The write-ahead log: segment files in one directory, written by one [`Wal`] and read by any
//! number of [`WalCursor`]s.
//!
//! # On-disk format (format version 1)
//!
//! A log is a directory of segment files named `{first_seq:020}.wal`, where `first_seq` is the
//! sequence number of the first record the segment holds (or will hold). Records are numbered
//! from 1 without gaps across segments, and every record carries the SHA-256 hash of the record
//! before it, so the whole log is one hash chain.
//!
//! Segment header, [`SEGMENT_HEADER_LEN`] = 72 bytes, integers little-endian:
//!
//! | bytes  | field                                                              |
//! |--------|--------------------------------------------------------------------|
//! | 0..8   | magic `b"OCWAL\0\0\0"`                                             |
//! | 8..12  | format version, u32 ([`FORMAT_VERSION`])                           |
//! | 12..28 | store id, 16 random bytes chosen when the log was created          |
//! | 28..36 | first_seq, u64                                                     |
//! | 36..68 | prev_hash: hash of record `first_seq - 1` (zeros when first_seq=1) |
//! | 68..72 | CRC-32 (crc32fast) of bytes 0..68, u32                             |
//!
//! Records follow the header back to back, [`RECORD_HEADER_LEN`] = 48 bytes plus the payload:
//!
//! | bytes     | field                                                     |
//! |-----------|-----------------------------------------------------------|
//! | 0..4      | len: payload length, u32, at most [`MAX_PAYLOAD`] (256 MiB) |
//! | 4..8      | CRC-32 of bytes 8..48+len (seq, prev_hash and payload)    |
//! | 8..16     | seq, u64                                                  |
//! | 16..48    | prev_hash: hash of record seq-1                           |
//! | 48..48+len| payload                                                   |
//!
//! A record's hash is the SHA-256 of its whole frame, bytes 0..48+len.
//!
//! # Durability and the torn tail
//!
//! The writer buffers records and writes them at [`Wal::sync`], which then fdatasync()s the
//! segment; a segment is fdatasync()ed and its directory entry made durable before the next one
//! is created, so only the last segment can ever end in a write that did not complete. At
//! [`Wal::open`], the last segment is scanned record by record and its end is classified:
//!
//! - bytes too short for a record header, a record whose length runs past the end of the file,
//!   a record failing its CRC with nothing but zero bytes (or nothing) after its declared end,
//!   and trailing zero bytes are a **torn tail**: a write that never completed and so was never
//!   acknowledged. The file is truncated to the end of the last good record and fsynced.
//! - a record failing its CRC, its sequence number or its chain with a non-zero byte after it is
//!   **damage** to a record that was written completely: open refuses with
//!   [`WalError::Corrupt`]. So is a damaged length field, recognised when the next record is
//!   found intact inside the span the damaged length claims.
//!
//! A CRC-failing record at the very end of the file is indistinguishable from a torn write and is
//! cut: this is the one place a flipped byte loses data instead of stopping the node.
//!
//! The segment being written is filled with zeros ahead of its records, up to 256 KiB at a time
//! (never past `segment_bytes`), so that most syncs after an append change neither the file's
//! size nor its block map and write the data alone (on ext4, an append's fdatasync also wrote
//! the inode: about twice the time and the CPU per sync on this machine kind). The step is small
//! because the sync that follows it writes the zeros too, and every command in its batch waits
//! for that: 4 MiB took 8.3 ms here, 256 KiB 0.8 ms (`scripts/sync-cost.py`). Those zeros are the
//! trailing zeros above: after a crash, open cuts them; a rotation and a clean close cut them
//! first. A reader following the segment judges its end on what the file holds now, not on
//! what it read ahead, since the writer writes over zeros it may have read.
//!
//! A new segment's header reaches the disk with its first records, at the first sync after the
//! rotation. So a last segment whose header is short, all zeros, or ours but failing its CRC,
//! with no intact record after it, is a creation that never completed: open removes it and the
//! segment before it is current again. A damaged header followed by an intact record is refused.
//!
//! Earlier segments are not rescanned at open: their headers are checked, and each one's last
//! record is located from the end of the file and must be the record the next segment's header
//! continues from (seq and hash). A full check of every record is [`WalReader::verify`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The log format this code writes and reads. The version covers the records' contents too,
/// since a record is an engine entry in its encoding: 2 since cards keep a keyed PIN verifier
/// and the rules a counter window (issue 11); 1 before.
pub const FORMAT_VERSION: u32 = 2;

/// A SHA-256 digest.
pub type Hash = [u8; 32];
/// Identifies one log, so a segment copied from another store is never mistaken for ours.
pub type StoreId = [u8; 16];

/// The first eight bytes of every segment.
pub const MAGIC: [u8; 8] = *b"OCWAL\0\0\0";
/// Size of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 72;
/// Size of a record's frame without its payload.
pub const RECORD_HEADER_LEN: usize = 48;
/// Largest payload a record may have; a larger length field is damage, never an allocation.
pub const MAX_PAYLOAD: u32 = 256 << 20;

const HEADER_OFF_VERSION: u64 = 8;
const HEADER_OFF_STORE: u64 = 12;
const HEADER_OFF_FIRST_SEQ: u64 = 28;
const HEADER_OFF_PREV: u64 = 36;
const ZERO_HASH: Hash = [0; 32];
/// Sequence numbers above this in a header are refused, so that `seq + 1` never overflows.
const MAX_FIRST_SEQ: u64 = u64::MAX / 2;

/// The write buffer goes to the file when it grows past this, even before `sync`.
const WRITE_BUFFER_FLUSH: usize = 1 << 20;
/// A buffer that grew for an unusually big record is given back once it is written.
const WRITE_BUFFER_KEEP: usize = 4 << 20;
/// Readers read this much ahead, so that a scan costs one syscall per many records.
const READ_AHEAD: usize = 256 << 10;
/// What a reader reads ahead first after it has been at the end of what is written (a follower
/// at the head): a follower that wakes for a record or two should not copy the zeros ahead of the
/// records (up to [`PREALLOCATE_STEP`]) each time. It doubles with each read up to
/// [`READ_AHEAD`], so a follower that has fallen behind scans as fast as ever.
const READ_AHEAD_AT_HEAD: usize = 16 << 10;
/// How far ahead of its records a segment file is filled with zeros (see
/// [`Wal::write_zeros_ahead`]): one size change per 256 KiB instead of one per sync. Small,
/// since the next sync writes the zeros (measured here, a write and `fdatasync` of 4 MiB took
/// 8.3 ms at the median, 256 KiB 0.8 ms, 4 KiB 0.3 ms: `scripts/sync-cost.py`).
const PREALLOCATE_STEP: u64 = 256 << 10;
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// How much of a segment's end is read at first when looking for its last record.
const TAIL_WINDOW: u64 = 64 << 10;
const SCRATCH: usize = 64 << 10;

/// Settings of a [`Wal`].
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// Rotate to a new segment before a record would take the current one past this size.
    pub segment_bytes: u64,
    /// Segments no longer needed (see [`Wal::release_through`]) are moved here; None: they stay
    /// in place.
    pub archive_dir: Option<PathBuf>,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: 64 << 20,
            archive_dir: None,
        }
    }
}

/// Everything that can go wrong with the log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("disk full: no space left on the device holding {}", .path.display())]
    DiskFull { path: PathBuf },
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("journal record {seq} (segment {}, byte {offset}): {reason}", file_name(.segment))]
    Corrupt {
        seq: u64,
        segment: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "segment {} belongs to another store (store id {}, this store is {})",
        .segment.display(), hex::encode(.found), hex::encode(.expected)
    )]
    ForeignStore {
        segment: PathBuf,
        expected: StoreId,
        found: StoreId,
    },
    #[error(
        "segment {} was written in log format {found}; this OneCard reads format {}",
        .segment.display(), FORMAT_VERSION
    )]
    UnsupportedVersion { segment: PathBuf, found: u32 },
    #[error("the log stopped after an earlier write failed; restart the node")]
    Failed,
    #[error(
        "journal record {missing} is missing: the log continues at record {next} (segment {})",
        .segment.display()
    )]
    Gap {
        missing: u64,
        next: u64,
        segment: PathBuf,
    },
    #[error("segment {}: bad header: {reason}", .segment.display())]
    BadHeader { segment: PathBuf, reason: String },
    #[error(
        "a journal record of {len} bytes is over the limit of {} bytes",
        MAX_PAYLOAD
    )]
    TooLarge { len: usize },
}

fn file_name(p: &Path) -> String {
    match p.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => p.display().to_string(),
    }
}

fn io_err(path: &Path, e: io::Error) -> WalError {
    if crate::is_disk_full(&e) {
        WalError::DiskFull {
            path: path.to_path_buf(),
        }
    } else {
        WalError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn corrupt(seq: u64, segment: &Path, offset: u64, reason: impl Into<String>) -> WalError {
    WalError::Corrupt {
        seq,
        segment: segment.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn bad_header(segment: &Path, reason: impl Into<String>) -> WalError {
    WalError::BadHeader {
        segment: segment.to_path_buf(),
        reason: reason.into(),
    }
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub seq: u64,
    pub prev_hash: Hash,
    pub hash: Hash,
    pub payload: Vec<u8>,
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOpened {
    pub store_id: StoreId,
    /// First record in the directory's kept segments (1 for a new log).
    pub first_seq: u64,
    /// 0 when the log is empty.
    pub last_seq: u64,
    /// Zeros when the log is empty.
    pub last_hash: Hash,
    /// Bytes of a torn tail that open cut off (0 normally).
    pub torn_bytes: u64,
}

/// What [`WalReader::verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalVerified {
    /// None when the log holds no record.
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub last_hash: Hash,
    pub records: u64,
}

// ---------------------------------------------------------------------------------------------
// Encoding helpers

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn hash_at(b: &[u8], at: usize) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(&b[at..at + 32]);
    h
}

#[derive(Debug, Clone, Copy)]
struct SegHeader {
    store_id: StoreId,
    first_seq: u64,
    prev_hash: Hash,
}

fn encode_header(store_id: &StoreId, first_seq: u64, prev_hash: &Hash) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..28].copy_from_slice(store_id);
    h[28..36].copy_from_slice(&first_seq.to_le_bytes());
    h[36..68].copy_from_slice(prev_hash);
    let crc = crc32fast::hash(&h[0..68]);
    h[68..72].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks magic, version and CRC. The version comes before the CRC because another version
/// may lay its header out differently: its CRC would fail for no fault of the file.
fn decode_header(b: &[u8], path: &Path) -> Result<SegHeader, WalError> {
    if b.len() < SEGMENT_HEADER_LEN {
        return Err(bad_header(
            path,
            format!(
                "the file is {} bytes long, shorter than a segment header",
                b.len()
            ),
        ));
    }
    if b[0..8] != MAGIC {
        return Err(bad_header(path, "not a OneCard log segment (wrong magic)"));
    }
    let version = u32_at(b, HEADER_OFF_VERSION as usize);
    if version != FORMAT_VERSION {
        return Err(WalError::UnsupportedVersion {
            segment: path.to_path_buf(),
            found: version,
        });
    }
    let stored = u32_at(b, 68);
    let computed = crc32fast::hash(&b[0..68]);
    if stored != computed {
        return Err(bad_header(
            path,
            format!("header checksum mismatch (stored {stored:08x}, computed {computed:08x})"),
        ));
    }
    let mut store_id = [0u8; 16];
    store_id.copy_from_slice(&b[HEADER_OFF_STORE as usize..HEADER_OFF_FIRST_SEQ as usize]);
    let first_seq = u64_at(b, HEADER_OFF_FIRST_SEQ as usize);
    if first_seq == 0 || first_seq > MAX_FIRST_SEQ {
        return Err(bad_header(
            path,
            format!("first record number {first_seq} is out of range"),
        ));
    }
    Ok(SegHeader {
        store_id,
        first_seq,
        prev_hash: hash_at(b, HEADER_OFF_PREV as usize),
    })
}

// ---------------------------------------------------------------------------------------------
// Listing segments

#[derive(Debug, Clone, PartialEq, Eq)]
struct SegFile {
    first_seq: u64,
    path: PathBuf,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn parse_segment_name(name: &std::ffi::OsStr) -> Option<u64> {
    let name = name.to_str()?;
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    // Records are numbered from 1; a larger number could not be a header's first_seq either.
    digits
        .parse()
        .ok()
        .filter(|n| (1..=MAX_FIRST_SEQ).contains(n))
}

/// The segments of one directory, by first seq. `missing_ok`: a directory that does not exist
/// holds no segment (an archive nothing was released to yet).
fn list_dir(dir: &Path, missing_ok: bool) -> Result<Vec<SegFile>, WalError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if missing_ok && e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut segs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        if let Some(first_seq) = parse_segment_name(&entry.file_name()) {
            segs.push(SegFile {
                first_seq,
                path: entry.path(),
            });
        }
    }
    segs.sort_by_key(|s| s.first_seq);
    Ok(segs)
}

/// The log's directory listed before its archive: a segment being released moves from the
/// one to the other, so in this order it shows up twice rather than not at all.
fn list_all(dir: &Path, archive: Option<&Path>) -> Result<Vec<SegFile>, WalError> {
    let mut by_seq: BTreeMap<u64, SegFile> = BTreeMap::new();
    for s in list_dir(dir, false)? {
        by_seq.insert(s.first_seq, s);
    }
    if let Some(a) = archive {
        for s in list_dir(a, true)? {
            // The directory's copy wins: an archive copy may be a move that has not finished.
            by_seq.entry(s.first_seq).or_insert(s);
        }
    }
    Ok(by_seq.into_values().collect())
}

fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    let d = File::open(dir).map_err(|e| io_err(dir, e))?;
    d.sync_all().map_err(|e| io_err(dir, e))
}

fn read_full_at(file: &File, path: &Path, buf: &mut [u8], off: u64) -> Result<usize, WalError> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(path, e)),
        }
    }
    Ok(done)
}

// ---------------------------------------------------------------------------------------------
// Reading one segment

/// Forward reads of one segment through a read-ahead buffer. Bytes once read never change (the
/// log is append-only), but a file that was short may have grown since: every miss reads again.
struct SegReader {
    file: File,
    path: PathBuf,
    /// What was read, in `buf[..len]`; the bytes past `len` are stale. `buf` never shrinks, so
    /// that a follower at the head, which reads a little after every record, does not zero its
    /// buffer again before every read.
    buf: Vec<u8>,
    len: usize,
    buf_off: u64,
    /// How much the next read from the file reads ahead.
    read_ahead: usize,
}

impl SegReader {
    fn open(path: &Path) -> Result<SegReader, WalError> {
        let file = File::open(path).map_err(|e| io_err(path, e))?;
        Ok(SegReader {
            file,
            path: path.to_path_buf(),
            buf: Vec::new(),
            len: 0,
            buf_off: 0,
            read_ahead: READ_AHEAD,
        })
    }

    fn file_len(&self) -> Result<u64, WalError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| io_err(&self.path, e))
    }

    /// Makes `[off, off + n)` available to `bytes`; false if the file ends first. Checks the
    /// file's length before reading so that a garbled length never sizes an allocation.
    fn fill(&mut self, off: u64, n: usize) -> Result<bool, WalError> {
        let end = off + n as u64;
        let buf_end = self.buf_off + self.len as u64;
        if off >= self.buf_off && end <= buf_end {
            return Ok(true);
        }
        let flen = self.file_len()?;
        if end > flen {
            return Ok(false);
        }
        if off >= self.buf_off && off <= buf_end {
            let keep_from = (off - self.buf_off) as usize;
            self.buf.copy_within(keep_from..self.len, 0);
            self.len -= keep_from;
        } else {
            self.len = 0;
        }
        self.buf_off = off;
        let target = (n.max(self.read_ahead) as u64).min(flen - off) as usize;
        self.read_ahead = (self.read_ahead * 2).min(READ_AHEAD);
        let have = self.len;
        if have < target {
            if self.buf.len() < target {
                self.buf.resize(target, 0);
            }
            let got = read_full_at(
                &self.file,
                &self.path,
                &mut self.buf[have..target],
                off + have as u64,
            )?;
            self.len = have + got;
        }
        Ok(self.len >= n)
    }

    /// Drops what was read ahead: the writer may have written over it since (a segment
    /// being written holds zeros ahead of its records, see [`Wal::write_zeros_ahead`]). The
    /// next read reads little ahead ([`READ_AHEAD_AT_HEAD`]).
    fn forget(&mut self) {
        self.len = 0;
        self.buf_off = 0;
        self.read_ahead = READ_AHEAD_AT_HEAD;
    }

    /// Bytes made available by a successful `fill` covering them.
    fn bytes(&self, off: u64, n: usize) -> &[u8] {
        let start = (off - self.buf_off) as usize;
        &self.buf[start..(start + n).min(self.len)]
    }

    /// Whether every byte from `from` to the end of the file is zero.
    fn zeros_from(&self, from: u64) -> Result<bool, WalError> {
        let mut scratch = vec![0u8; SCRATCH];
        let mut pos = from;
        loop {
            let got = read_full_at(&self.file, &self.path, &mut scratch, pos)?;
            if scratch[..got].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            if got < scratch.len() {
                return Ok(true);
            }
            pos += got as u64;
        }
    }

    /// Looks for an intact record numbered `seq` starting in `[from, to)`: proof that the
    /// record before it has a damaged length rather than an unfinished write.
    fn find_record(&self, from: u64, to: u64, seq: u64) -> Result<Option<u64>, WalError> {
        let flen = self.file_len()?;
        let to = to.min(flen.saturating_sub(RECORD_HEADER_LEN as u64 - 1));
        let want = seq.to_le_bytes();
        let mut chunk = vec![0u8; SCRATCH + 16];
        let mut pos = from;
        while pos < to {
            let got = read_full_at(&self.file, &self.path, &mut chunk, pos)?;
            let mut i = 0usize;
            while i + 16 <= got && pos + (i as u64) < to {
                if chunk[i + 8..i + 16] == want && self.intact_frame_at(pos + i as u64, flen)? {
                    return Ok(Some(pos + i as u64));
                }
                i += 1;
            }
            if got < chunk.len() {
                break;
            }
            pos += SCRATCH as u64;
        }
        Ok(None)
    }

    fn intact_frame_at(&self, p: u64, flen: u64) -> Result<bool, WalError> {
        let mut head = [0u8; RECORD_HEADER_LEN];
        if read_full_at(&self.file, &self.path, &mut head, p)? < RECORD_HEADER_LEN {
            return Ok(false);
        }
        let len = u32_at(&head, 0);
        if len > MAX_PAYLOAD || p + (RECORD_HEADER_LEN as u64) + u64::from(len) > flen {
            return Ok(false);
        }
        let mut payload = vec![0u8; len as usize];
        let off = p + RECORD_HEADER_LEN as u64;
        if read_full_at(&self.file, &self.path, &mut payload, off)? < payload.len() {
            return Ok(false);
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&head[8..]);
        h.update(&payload);
        Ok(h.finalize() == u32_at(&head, 4))
    }
}

/// What lies where the next record should start.
enum Step {
    Record {
        seq: u64,
        hash: Hash,
        len: u32,
        end: u64,
    },
    /// The file ends exactly here.
    End,
    /// An unfinished write starts here (see the module documentation).
    Torn(String),
}

/// Reads and checks the record at `off`, which must be record `exp` chaining from `prev`.
/// Damage is an error; what could be an unfinished write is `Torn`, for the caller to judge.
fn read_step(r: &mut SegReader, off: u64, exp: u64, prev: &Hash) -> Result<Step, WalError> {
    if !r.fill(off, RECORD_HEADER_LEN)? {
        let flen = r.file_len()?;
        if flen <= off {
            return Ok(Step::End);
        }
        return Ok(Step::Torn(format!(
            "the last {} bytes are too short for a record header",
            flen - off
        )));
    }
    let head = r.bytes(off, RECORD_HEADER_LEN);
    let len = u32_at(head, 0);
    let stored_crc = u32_at(head, 4);
    let seq = u64_at(head, 8);
    let rec_prev = hash_at(head, 16);
    if len > MAX_PAYLOAD {
        return Err(corrupt(
            exp,
            &r.path,
            off,
            format!("its length field says {len} bytes, over the limit of {MAX_PAYLOAD}"),
        ));
    }
    let frame = RECORD_HEADER_LEN + len as usize;
    let end = off + frame as u64;
    if !r.fill(off, frame)? {
        let flen = r.file_len()?;
        let search_from = off + RECORD_HEADER_LEN as u64;
        if let Some(p) = r.find_record(search_from, flen, exp + 1)? {
            return Err(corrupt(
                exp,
                &r.path,
                off,
                format!(
                    "its length field is damaged: {len} bytes would run past the end of the \
                     segment, but record {} starts at byte {p}",
                    exp + 1
                ),
            ));
        }
        return Ok(Step::Torn(format!(
            "record {exp} is cut short: the file ends {} bytes into its {frame}-byte frame",
            flen.saturating_sub(off)
        )));
    }
    let body = r.bytes(off, frame);
    let crc = crc32fast::hash(&body[8..]);
    if crc == stored_crc {
        // A record that passes its CRC was written in full: a wrong number or chain is damage
        // (or a foreign record), never an unfinished write.
        if seq != exp {
            return Err(corrupt(
                exp,
                &r.path,
                off,
                format!("the record there is numbered {seq}"),
            ));
        }
        if rec_prev != *prev {
            return Err(corrupt(
                exp,
                &r.path,
                off,
                format!(
                    "its prev_hash does not match the hash of record {}",
                    exp - 1
                ),
            ));
        }
        let hash: Hash = Sha256::digest(body).into();
        return Ok(Step::Record {
            seq,
            hash,
            len,
            end,
        });
    }
    if r.zeros_from(end)? {
        if r.zeros_from(off)? {
            return Ok(Step::Torn("zero bytes after the last record".into()));
        }
        if let Some(p) = r.find_record(off + RECORD_HEADER_LEN as u64, end, exp + 1)? {
            return Err(corrupt(
                exp,
                &r.path,
                off,
                format!(
                    "its length field is damaged: it says {len} bytes, but record {} starts \
                     at byte {p}",
                    exp + 1
                ),
            ));
        }
        return Ok(Step::Torn(format!(
            "record {exp} fails its checksum and nothing follows it"
        )));
    }
    Err(corrupt(
        exp,
        &r.path,
        off,
        format!("checksum mismatch (stored {stored_crc:08x}, computed {crc:08x})"),
    ))
}

/// Scans a segment that is not the last one, all of it: a torn end is damage there, since the
/// writer completes a segment before it creates the next one. Returns its last seq and hash.
fn scan_sealed(path: &Path, header: &SegHeader) -> Result<(u64, Hash), WalError> {
    let mut r = SegReader::open(path)?;
    let mut off = SEGMENT_HEADER_LEN as u64;
    let mut exp = header.first_seq;
    let mut prev = header.prev_hash;
    loop {
        match read_step(&mut r, off, exp, &prev)? {
            Step::Record { hash, end, .. } => {
                off = end;
                exp += 1;
                prev = hash;
            }
            Step::End => return Ok((exp - 1, prev)),
            Step::Torn(reason) => {
                return Err(corrupt(
                    exp,
                    path,
                    off,
                    format!("{reason}, in a segment that is not the last one"),
                ))
            }
        }
    }
}

/// Whether the last record of a complete segment is record `want_seq` with hash `want_hash`,
/// found from the end of the file: the record whose length field reaches exactly to the end.
/// Reads a few KiB instead of the segment; any doubt returns false and the caller scans.
fn last_record_is(
    file: &File,
    path: &Path,
    flen: u64,
    header: &SegHeader,
    want_seq: u64,
    want_hash: &Hash,
) -> Result<bool, WalError> {
    let hlen = SEGMENT_HEADER_LEN as u64;
    let rlen = RECORD_HEADER_LEN as u64;
    if flen == hlen {
        return Ok(header.first_seq - 1 == want_seq && header.prev_hash == *want_hash);
    }
    if flen < hlen + rlen {
        return Ok(false);
    }
    let body_len = flen - hlen;
    let max_frame = rlen + u64::from(MAX_PAYLOAD);
    let mut window = TAIL_WINDOW.min(body_len);
    let mut next_p = flen - rlen;
    loop {
        let wstart = flen - window;
        let mut data = vec![0u8; window as usize];
        if read_full_at(file, path, &mut data, wstart)? < data.len() {
            return Ok(false);
        }
        let mut p = next_p;
        loop {
            let i = (p - wstart) as usize;
            if u64::from(u32_at(&data, i)) == flen - p - rlen && u64_at(&data, i + 8) == want_seq {
                let frame = &data[i..];
                if crc32fast::hash(&frame[8..]) == u32_at(&data, i + 4) {
                    let hash: Hash = Sha256::digest(frame).into();
                    return Ok(hash == *want_hash);
                }
            }
            if p == wstart {
                break;
            }
            p -= 1;
        }
        if wstart == hlen || window >= max_frame {
            return Ok(false);
        }
        next_p = wstart - 1;
        window = (window * 4).min(body_len).min(max_frame);
    }
}

// ---------------------------------------------------------------------------------------------
// The writer

/// The log's single writer. Not shared by design: one group-commit thread owns it. Dropping it
/// writes nothing: what was appended after the last [`Wal::sync`] was never acknowledged.
pub struct Wal {
    dir: PathBuf,
    cfg: WalConfig,
    store_id: StoreId,
    /// The segments in `dir`, oldest first; the last one is being written.
    segments: Vec<SegFile>,
    file: File,
    /// Length of the current segment, counting what is still buffered.
    seg_len: u64,
    /// Bytes of the current segment written to the file (its records end here).
    file_pos: u64,
    /// Bytes of the current segment covered by the last sync.
    synced_pos: u64,
    /// The current segment file's length: past `file_pos` it holds zeros written ahead
    /// ([`PREALLOCATE_STEP`]), so that an fdatasync after an append finds the file's size and
    /// blocks unchanged and writes the data alone, not the inode too.
    allocated: u64,
    /// Cleared when writing zeros ahead failed (a full disk): the segment then grows by its
    /// appends alone.
    preallocate: bool,
    seg_records: u64,
    buf: Vec<u8>,
    last_seq: u64,
    last_hash: Hash,
    synced_seq: u64,
    /// Something was appended since the last fdatasync.
    data_dirty: bool,
    /// A segment was created since the directory was last fsynced.
    dir_dirty: bool,
    /// The current segment's header and directory entry are on disk. Until they are, the
    /// segment before it must stay in the directory: a crash would remove the current one at
    /// open, and the directory must still end where the log ends.
    current_durable: bool,
    poisoned: bool,
}

impl Drop for Wal {
    /// A clean close leaves no zeros ahead of the last record.
    fn drop(&mut self) {
        if self.poisoned {
            return;
        }
        if self.cut_zeros_ahead().is_ok() && !self.data_dirty {
            let _ = self.file.sync_data();
        }
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("store_id", &hex::encode(self.store_id))
            .field("segments", &self.segments.len())
            .field("last_seq", &self.last_seq)
            .field("synced_seq", &self.synced_seq)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

struct CheckedSeg {
    seg: SegFile,
    header: SegHeader,
    file: File,
    len: u64,
}

impl Wal {
    /// Opens the log in `dir`, creating the directory and a first segment if it holds no
    /// segment. The new log's store id is `expect_store` when given (so a caller can choose
    /// it), a fresh random one otherwise. `expect_store`: if Some and the segments carry another
    /// id → [`WalError::ForeignStore`]. Checks every segment's header and the continuity from
    /// each segment to the next (seq and hash chain), scans the last segment completely and
    /// cuts a torn tail from it (see the module documentation).
    pub fn open(
        dir: &Path,
        cfg: WalConfig,
        expect_store: Option<StoreId>,
    ) -> Result<(Wal, WalOpened), WalError> {
        Wal::open_keeping(dir, cfg, expect_store, 0)
    }

    /// [`Wal::open`] for a caller that knows records up to `keep_through` were acknowledged
    /// (a checkpoint covers them): what looks like a torn tail at or below it cannot be an
    /// unfinished write, so it is refused as damage and nothing is cut.
    pub fn open_keeping(
        dir: &Path,
        cfg: WalConfig,
        expect_store: Option<StoreId>,
        keep_through: u64,
    ) -> Result<(Wal, WalOpened), WalError> {
        let existed = dir.exists();
        fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        if !existed {
            if let Some(parent) = dir.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                fsync_dir(parent)?;
            }
        }
        let mut segs = list_dir(dir, false)?;

        // A crash right after creating a segment leaves it empty or zero-filled: it never held
        // an acknowledged record, so it goes and the previous segment is current again.
        if let Some(last) = segs.last() {
            if unfinished_segment(&mut SegReader::open(&last.path)?, last.first_seq)? {
                fs::remove_file(&last.path).map_err(|e| io_err(&last.path, e))?;
                fsync_dir(dir)?;
                segs.pop();
            }
        }
        if segs.is_empty() {
            let store_id = expect_store.unwrap_or_else(rand::random);
            return Wal::create(dir, cfg, store_id);
        }

        let mut store = expect_store;
        let mut prev: Option<CheckedSeg> = None;
        for seg in segs.iter() {
            let checked = check_header(seg, &mut store)?;
            match &prev {
                None => {
                    if checked.header.first_seq == 1 && checked.header.prev_hash != ZERO_HASH {
                        return Err(corrupt(
                            1,
                            &seg.path,
                            HEADER_OFF_PREV,
                            "the first segment's prev_hash is not zero",
                        ));
                    }
                }
                Some(p) => check_continuity(p, &checked)?,
            }
            prev = Some(checked);
        }
        let Some(last) = prev else {
            return Err(bad_header(dir, "segment list vanished while opening"));
        };
        let store_id = last.header.store_id;
        drop(last.file);

        let mut r = SegReader::open(&last.seg.path)?;
        let mut off = SEGMENT_HEADER_LEN as u64;
        let mut exp = last.header.first_seq;
        let mut prev_hash = last.header.prev_hash;
        let mut records = 0u64;
        let mut torn_bytes = 0u64;
        loop {
            match read_step(&mut r, off, exp, &prev_hash)? {
                Step::Record { hash, end, .. } => {
                    off = end;
                    exp += 1;
                    prev_hash = hash;
                    records += 1;
                }
                Step::End => break,
                Step::Torn(reason) => {
                    if exp <= keep_through {
                        return Err(corrupt(
                            exp,
                            &last.seg.path,
                            off,
                            format!("{reason}; the record was acknowledged (a checkpoint covers record {keep_through}), so it is damage, not an unfinished write: nothing was cut"),
                        ));
                    }
                    torn_bytes = r.file_len()? - off;
                    break;
                }
            }
        }
        drop(r);
        let path = &last.seg.path;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        if torn_bytes > 0 {
            file.set_len(off).map_err(|e| io_err(path, e))?;
        }
        // What open found counts as the log from now on, even if the process that wrote it
        // died before its sync: make it durable before anything is appended after it.
        file.sync_all().map_err(|e| io_err(path, e))?;
        fsync_dir(dir)?;
        let opened = WalOpened {
            store_id,
            first_seq: segs[0].first_seq,
            last_seq: exp - 1,
            last_hash: prev_hash,
            torn_bytes,
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            cfg,
            store_id,
            segments: segs,
            file,
            seg_len: off,
            file_pos: off,
            synced_pos: off,
            allocated: off,
            preallocate: true,
            seg_records: records,
            buf: Vec::with_capacity(64 << 10),
            last_seq: exp - 1,
            last_hash: prev_hash,
            synced_seq: exp - 1,
            data_dirty: false,
            dir_dirty: false,
            current_durable: true,
            poisoned: false,
        };
        Ok((wal, opened))
    }

    fn create(dir: &Path, cfg: WalConfig, store_id: StoreId) -> Result<(Wal, WalOpened), WalError> {
        let path = dir.join(segment_name(1));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // The store id is durable before open returns: callers may record it elsewhere.
        file.write_all_at(&encode_header(&store_id, 1, &ZERO_HASH), 0)
            .map_err(|e| io_err(&path, e))?;
        file.sync_data().map_err(|e| io_err(&path, e))?;
        fsync_dir(dir)?;
        let opened = WalOpened {
            store_id,
            first_seq: 1,
            last_seq: 0,
            last_hash: ZERO_HASH,
            torn_bytes: 0,
        };
        let wal = Wal {
            dir: dir.to_path_buf(),
            cfg,
            store_id,
            segments: vec![SegFile { first_seq: 1, path }],
            file,
            seg_len: SEGMENT_HEADER_LEN as u64,
            file_pos: SEGMENT_HEADER_LEN as u64,
            synced_pos: SEGMENT_HEADER_LEN as u64,
            allocated: SEGMENT_HEADER_LEN as u64,
            preallocate: true,
            seg_records: 0,
            buf: Vec::with_capacity(64 << 10),
            last_seq: 0,
            last_hash: ZERO_HASH,
            synced_seq: 0,
            data_dirty: false,
            dir_dirty: false,
            current_durable: true,
            poisoned: false,
        };
        Ok((wal, opened))
    }

    /// Appends one record to the buffer (no sync; the buffer is written at [`Wal::sync`], or
    /// earlier when it grows past 1 MiB). Rotates first if the record would take the segment
    /// past `segment_bytes`; a segment always holds at least one record. Returns the record's
    /// seq and hash.
    pub fn append(&mut self, payload: &[u8]) -> Result<(u64, Hash), WalError> {
        if self.poisoned {
            return Err(WalError::Failed);
        }
        let len = match u32::try_from(payload.len()) {
            Ok(l) if l <= MAX_PAYLOAD => l,
            _ => return Err(WalError::TooLarge { len: payload.len() }),
        };
        let frame = (RECORD_HEADER_LEN + payload.len()) as u64;
        if self.seg_records > 0 && self.seg_len + frame > self.cfg.segment_bytes {
            let r = self.rotate();
            self.poison_on_err(r)?;
        }
        let seq = self.last_seq + 1;
        let start = self.buf.len();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&seq.to_le_bytes());
        self.buf.extend_from_slice(&self.last_hash);
        self.buf.extend_from_slice(payload);
        let crc = crc32fast::hash(&self.buf[start + 8..]);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        let hash: Hash = Sha256::digest(&self.buf[start..]).into();
        self.last_seq = seq;
        self.last_hash = hash;
        self.seg_len += frame;
        self.seg_records += 1;
        self.data_dirty = true;
        if self.buf.len() >= WRITE_BUFFER_FLUSH {
            let r = self.write_buf();
            self.poison_on_err(r)?;
        }
        Ok((seq, hash))
    }

    /// Writes what is buffered and fdatasync()s the current segment, and fsyncs the directory
    /// if a segment was created since the last sync. After Ok, every appended record survives a
    /// crash.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Failed);
        }
        let r = self.sync_inner();
        self.poison_on_err(r)
    }

    fn sync_inner(&mut self) -> Result<(), WalError> {
        if self.data_dirty {
            self.write_buf()?;
            let path = self.current_path();
            self.file.sync_data().map_err(|e| io_err(path, e))?;
            self.data_dirty = false;
            self.synced_pos = self.file_pos;
        }
        if self.dir_dirty {
            fsync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        self.current_durable = true;
        self.synced_seq = self.last_seq;
        Ok(())
    }

    /// Writes the buffer to the segment file without syncing it: the bytes reach the page
    /// cache, not the disk. For tests that simulate a crash after a partial write-back.
    pub fn flush(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Failed);
        }
        let r = self.write_buf();
        self.poison_on_err(r)
    }

    /// After a failed write or fsync the state of the file is unknown (a failed fsync may have
    /// dropped the dirty pages), so nothing more is written until a restart re-reads it.
    fn poison_on_err<T>(&mut self, r: Result<T, WalError>) -> Result<T, WalError> {
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn current_path(&self) -> &Path {
        match self.segments.last() {
            Some(s) => &s.path,
            None => &self.dir,
        }
    }

    fn write_buf(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = match self.segments.last() {
            Some(s) => &s.path,
            None => &self.dir,
        };
        self.file
            .write_all_at(&self.buf, self.file_pos)
            .map_err(|e| io_err(path, e))?;
        self.file_pos += self.buf.len() as u64;
        self.buf.clear();
        if self.file_pos > self.allocated {
            self.allocated = self.file_pos;
            self.write_zeros_ahead();
        }
        if self.buf.capacity() > WRITE_BUFFER_KEEP {
            self.buf.shrink_to(WRITE_BUFFER_FLUSH);
        }
        Ok(())
    }

    /// Extends the segment file with zeros up to [`PREALLOCATE_STEP`] past its records (not
    /// past `segment_bytes`). The zeros reach the disk with the next sync, once per step; the
    /// syncs after it then change no size and no block map. After a crash the zeros are a torn
    /// tail, cut at open like any unfinished write. A failure (a full disk) only stops the
    /// writing ahead: the zeros written so far are cut, and the appends go on without.
    fn write_zeros_ahead(&mut self) {
        if !self.preallocate {
            return;
        }
        let target = (self.file_pos + PREALLOCATE_STEP).min(self.cfg.segment_bytes);
        let mut at = self.allocated;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            if self.file.write_all_at(&ZEROS[..n], at).is_err() {
                self.preallocate = false;
                let _ = self.file.set_len(self.file_pos);
                self.allocated = self.file_pos;
                return;
            }
            at += n as u64;
        }
        self.allocated = self.allocated.max(target);
    }

    /// Cuts the zeros written ahead of the current segment's records (at rotation and at a
    /// clean close), so that only a crash leaves them.
    fn cut_zeros_ahead(&mut self) -> Result<(), WalError> {
        if self.allocated > self.file_pos {
            let path = self.current_path().to_path_buf();
            self.file
                .set_len(self.file_pos)
                .map_err(|e| io_err(&path, e))?;
            self.allocated = self.file_pos;
        }
        Ok(())
    }

    /// The segment being closed is made complete and durable, entry included, before the next
    /// one exists: so only the last segment can ever have a torn tail, and a later segment is
    /// never durable without the ones before it.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.write_buf()?;
        self.cut_zeros_ahead()?;
        let old = self.current_path().to_path_buf();
        self.file.sync_data().map_err(|e| io_err(&old, e))?;
        if self.dir_dirty {
            fsync_dir(&self.dir)?;
            self.dir_dirty = false;
        }
        let first_seq = self.last_seq + 1;
        let path = self.dir.join(segment_name(first_seq));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        self.file = file;
        self.file_pos = 0;
        self.synced_pos = 0;
        self.allocated = 0;
        self.preallocate = true;
        self.segments.push(SegFile { first_seq, path });
        self.dir_dirty = true;
        self.data_dirty = true;
        self.current_durable = false;
        self.buf
            .extend_from_slice(&encode_header(&self.store_id, first_seq, &self.last_hash));
        self.seg_len = SEGMENT_HEADER_LEN as u64;
        self.seg_records = 0;
        Ok(())
    }

    /// Last appended seq (not necessarily synced).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Hash of the last appended record (zeros for an empty log).
    pub fn last_hash(&self) -> Hash {
        self.last_hash
    }

    /// Bytes of the current (last) segment that the last sync made durable: its records end
    /// there, whatever the file's length (zeros are written ahead of the records).
    pub fn synced_len(&self) -> u64 {
        self.synced_pos
    }

    /// Last seq covered by a successful [`Wal::sync`] (or found at open).
    pub fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    pub fn store_id(&self) -> StoreId {
        self.store_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier write or sync failed (every append and sync now returns `Failed`).
    pub fn is_failed(&self) -> bool {
        self.poisoned
    }

    /// Segments whose records are all ≤ `seq` (never the current segment) are no longer needed
    /// for recovery: with an archive_dir they are moved there (rename, or copy+fsync+remove
    /// across file systems); without one nothing happens. Returns how many were moved.
    pub fn release_through(&mut self, seq: u64) -> Result<usize, WalError> {
        let Some(archive) = self.cfg.archive_dir.clone() else {
            return Ok(0);
        };
        let keep = if self.current_durable { 1 } else { 2 };
        let mut moved = 0;
        while self.segments.len() > keep && self.segments[1].first_seq - 1 <= seq {
            if moved == 0 {
                fs::create_dir_all(&archive).map_err(|e| io_err(&archive, e))?;
            }
            let seg = self.segments[0].clone();
            let r = move_segment(&seg.path, &archive);
            if r.is_err() && moved > 0 {
                // Make the moves already done durable before reporting.
                let _ = fsync_dir(&archive);
                let _ = fsync_dir(&self.dir);
            }
            r?;
            self.segments.remove(0);
            moved += 1;
        }
        if moved > 0 {
            fsync_dir(&archive)?;
            fsync_dir(&self.dir)?;
        }
        Ok(moved)
    }
}

/// Whether a last segment is one whose creation never completed: its header is short, zero,
/// or ours but failing its CRC (a torn write of it: the magic, or the part of it that reached
/// the file, then zeros where the rest did not), and no intact record follows it. Its
/// header reaches the disk with its first records, at the first sync after the rotation, so
/// such a segment never held an acknowledged record. A header that is damaged but followed by
/// an intact record was synced once: that is damage, refused by the header check.
fn unfinished_segment(r: &mut SegReader, first_seq: u64) -> Result<bool, WalError> {
    if !r.fill(0, SEGMENT_HEADER_LEN)? {
        return Ok(true);
    }
    let b = r.bytes(0, SEGMENT_HEADER_LEN);
    let zero = b.iter().all(|&x| x == 0);
    let magic = &b[0..8];
    let torn_magic =
        (0..=MAGIC.len()).any(|k| magic[..k] == MAGIC[..k] && magic[k..].iter().all(|&x| x == 0));
    let ours_torn = torn_magic
        && matches!(u32_at(b, HEADER_OFF_VERSION as usize), 0 | FORMAT_VERSION)
        && crc32fast::hash(&b[0..68]) != u32_at(b, 68);
    if !zero && !ours_torn {
        return Ok(false);
    }
    let first_intact = r.file_len()? >= (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN) as u64
        && r.fill(SEGMENT_HEADER_LEN as u64, RECORD_HEADER_LEN)?
        && u64_at(r.bytes(SEGMENT_HEADER_LEN as u64, RECORD_HEADER_LEN), 8) == first_seq
        && r.intact_frame_at(SEGMENT_HEADER_LEN as u64, r.file_len()?)?;
    Ok(!first_intact)
}

fn check_header(seg: &SegFile, store: &mut Option<StoreId>) -> Result<CheckedSeg, WalError> {
    let path = &seg.path;
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    let got = read_full_at(&file, path, &mut b, 0)?;
    let header = decode_header(&b[..got], path)?;
    match store {
        Some(expected) if *expected != header.store_id => {
            return Err(WalError::ForeignStore {
                segment: path.clone(),
                expected: *expected,
                found: header.store_id,
            })
        }
        Some(_) => {}
        None => *store = Some(header.store_id),
    }
    if header.first_seq != seg.first_seq {
        return Err(bad_header(
            path,
            format!(
                "the file name says it starts at record {}, its header says {}",
                seg.first_seq, header.first_seq
            ),
        ));
    }
    Ok(CheckedSeg {
        seg: seg.clone(),
        header,
        file,
        len,
    })
}

/// Checks that `next` starts where `prev` ends; cheap when it does, a full scan of `prev` to
/// name the fault when it does not.
fn check_continuity(prev: &CheckedSeg, next: &CheckedSeg) -> Result<(), WalError> {
    let want_seq = next.header.first_seq - 1;
    if last_record_is(
        &prev.file,
        &prev.seg.path,
        prev.len,
        &prev.header,
        want_seq,
        &next.header.prev_hash,
    )? {
        return Ok(());
    }
    let (last_seq, last_hash) = scan_sealed(&prev.seg.path, &prev.header)?;
    if last_seq < want_seq {
        return Err(WalError::Gap {
            missing: last_seq + 1,
            next: next.header.first_seq,
            segment: next.seg.path.clone(),
        });
    }
    if last_seq > want_seq {
        return Err(corrupt(
            next.header.first_seq,
            &next.seg.path,
            HEADER_OFF_FIRST_SEQ,
            format!(
                "the segment starts at record {}, but segment {} already holds records through {}",
                next.header.first_seq,
                file_name(&prev.seg.path),
                last_seq
            ),
        ));
    }
    if last_hash != next.header.prev_hash {
        return Err(corrupt(
            next.header.first_seq,
            &next.seg.path,
            HEADER_OFF_PREV,
            format!(
                "the segment header's prev_hash does not match the hash of record {} (the last \
                 record of segment {})",
                last_seq,
                file_name(&prev.seg.path)
            ),
        ));
    }
    Ok(())
}

fn move_segment(src: &Path, archive: &Path) -> Result<(), WalError> {
    let name = src
        .file_name()
        .ok_or_else(|| bad_header(src, "segment path has no file name"))?;
    let dst = archive.join(name);
    match fs::rename(src, &dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            // Across file systems: the copy gets its final name only once it is durable, so a
            // crash leaves either the original alone or two identical complete copies.
            let mut tmp_name = name.to_os_string();
            tmp_name.push(".tmp");
            let tmp = archive.join(tmp_name);
            fs::copy(src, &tmp).map_err(|e| io_err(&tmp, e))?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err(&tmp, e))?;
            fs::rename(&tmp, &dst).map_err(|e| io_err(&dst, e))?;
            fsync_dir(archive)?;
            fs::remove_file(src).map_err(|e| io_err(src, e))
        }
        Err(e) => Err(io_err(src, e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Readers

/// Reads a log, in this process beside its [`Wal`] or in another one.
#[derive(Debug, Clone)]
pub struct WalReader {
    dir: PathBuf,
    archive: Option<PathBuf>,
    segments: Vec<SegFile>,
    store_id: Option<StoreId>,
}

impl WalReader {
    /// Lists the segments of `dir` and, if given, of `archive_dir` (archived ones first, by
    /// first seq). A missing archive directory holds no segment; a missing `dir` is an error.
    pub fn open(dir: &Path, archive_dir: Option<&Path>) -> Result<WalReader, WalError> {
        let segments = list_all(dir, archive_dir)?;
        let store_id = match segments.first() {
            None => None,
            Some(first) => {
                let mut r = SegReader::open(&first.path)?;
                if segments.len() == 1 && unfinished_segment(&mut r, first.first_seq)? {
                    // A log being created, or one whose creation crashed: nothing in it yet.
                    None
                } else {
                    let mut b = [0u8; SEGMENT_HEADER_LEN];
                    let got = read_full_at(&r.file, &r.path, &mut b, 0)?;
                    Some(decode_header(&b[..got], &first.path)?.store_id)
                }
            }
        };
        Ok(WalReader {
            dir: dir.to_path_buf(),
            archive: archive_dir.map(Path::to_path_buf),
            segments,
            store_id,
        })
    }

    pub fn store_id(&self) -> Option<StoreId> {
        self.store_id
    }

    /// First seq of the oldest segment listed.
    pub fn first_seq(&self) -> Option<u64> {
        self.segments.first().map(|s| s.first_seq)
    }

    /// A cursor positioned after record `after` (0: before the first record). The segment is
    /// found by its first seq; the records before `after` in it are read and checked too, since
    /// they are what links the segment header's prev_hash to the first record returned.
    pub fn cursor_after(&self, after: u64) -> Result<WalCursor, WalError> {
        let mut cursor = WalCursor {
            dir: self.dir.clone(),
            archive: self.archive.clone(),
            store_id: self.store_id,
            state: CursorState::Unlisted,
            next_seq: after.saturating_add(1),
            prev_hash: None,
            after,
            position: after,
        };
        if !self.segments.is_empty() {
            cursor.start_in(&self.segments)?;
        }
        Ok(cursor)
    }

    /// Reads every record from the oldest listed segment to the end, checking framing, CRC,
    /// numbering and the hash chain across all segments.
    pub fn verify(&self) -> Result<WalVerified, WalError> {
        let mut out = WalVerified {
            first_seq: None,
            last_seq: 0,
            last_hash: ZERO_HASH,
            records: 0,
        };
        let Some(first) = self.first_seq() else {
            return Ok(out);
        };
        let mut c = self.cursor_after(first - 1)?;
        while let Some(rec) = c.next_upto(u64::MAX) {
            let rec = rec?;
            if out.first_seq.is_none() {
                out.first_seq = Some(rec.seq);
            }
            out.last_seq = rec.seq;
            out.last_hash = rec.hash;
            out.records += 1;
        }
        Ok(out)
    }
}

enum CursorState {
    /// No segment chosen yet (the log held none when last listed).
    Unlisted,
    /// The segment to read next; its header is read when a record in it is wanted.
    Pending(SegFile),
    Reading {
        seg: SegFile,
        reader: SegReader,
        off: u64,
    },
}

/// Reads records in order; see [`WalCursor::next_upto`].
pub struct WalCursor {
    dir: PathBuf,
    archive: Option<PathBuf>,
    store_id: Option<StoreId>,
    state: CursorState,
    /// The record to be read next (returned, or skipped when ≤ `after`).
    next_seq: u64,
    /// Hash of record `next_seq - 1`, once known.
    prev_hash: Option<Hash>,
    after: u64,
    position: u64,
}

impl fmt::Debug for WalCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalCursor")
            .field("dir", &self.dir)
            .field("next_seq", &self.next_seq)
            .field("position", &self.position)
            .finish()
    }
}

impl WalCursor {
    /// The next record, fully checked (framing, CRC, seq = previous+1, prev_hash = previous
    /// record's hash, across segments too), or None at the end. Never returns (or reads) a
    /// record with seq > `upto`: pass the last synced seq so that a record being written is
    /// never read half-way. New segments are found by listing the directory again when the
    /// current one is exhausted. A torn tail at the end of the last segment is the end; nothing
    /// is ever cut. After an error the cursor stays where it was.
    pub fn next_upto(&mut self, upto: u64) -> Option<Result<WalRecord, WalError>> {
        match self.step(upto) {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// Seq of the last record returned (or `after`).
    pub fn position(&self) -> u64 {
        self.position
    }

    fn list(&self) -> Result<Vec<SegFile>, WalError> {
        list_all(&self.dir, self.archive.as_deref())
    }

    fn start_in(&mut self, segs: &[SegFile]) -> Result<(), WalError> {
        let next = self.after.saturating_add(1);
        let idx = segs.partition_point(|s| s.first_seq <= next);
        if idx == 0 {
            return Err(WalError::Gap {
                missing: next,
                next: segs[0].first_seq,
                segment: segs[0].path.clone(),
            });
        }
        let seg = segs[idx - 1].clone();
        self.next_seq = seg.first_seq;
        self.prev_hash = None;
        self.state = CursorState::Pending(seg);
        Ok(())
    }

    fn step(&mut self, upto: u64) -> Result<Option<WalRecord>, WalError> {
        loop {
            match &mut self.state {
                CursorState::Unlisted => {
                    let segs = self.list()?;
                    if segs.is_empty() {
                        return Ok(None);
                    }
                    self.start_in(&segs)?;
                }
                CursorState::Pending(seg) => {
                    if self.next_seq > upto {
                        return Ok(None);
                    }
                    let seg = seg.clone();
                    if !self.enter(seg)? {
                        return Ok(None);
                    }
                }
                CursorState::Reading { seg, reader, off } => {
                    if self.next_seq > upto {
                        // At the head: what was read ahead holds the zeros ahead of the
                        // records, which the next records will have replaced by the next call.
                        reader.forget();
                        return Ok(None);
                    }
                    let prev = self.prev_hash.unwrap_or(ZERO_HASH);
                    let mut step = read_step(reader, *off, self.next_seq, &prev);
                    if !matches!(step, Ok(Step::Record { .. })) {
                        // What was read ahead may predate the writer's last records: judge
                        // the end of what is readable on the file as it is now.
                        reader.forget();
                        step = read_step(reader, *off, self.next_seq, &prev);
                    }
                    match step? {
                        Step::Record {
                            seq,
                            hash,
                            len,
                            end,
                        } => {
                            let start = *off + RECORD_HEADER_LEN as u64;
                            let payload = (seq > self.after)
                                .then(|| reader.bytes(start, len as usize).to_vec());
                            *off = end;
                            self.next_seq = seq + 1;
                            self.prev_hash = Some(hash);
                            if let Some(payload) = payload {
                                self.position = seq;
                                return Ok(Some(WalRecord {
                                    seq,
                                    prev_hash: prev,
                                    hash,
                                    payload,
                                }));
                            }
                        }
                        Step::End => {
                            let cur = seg.first_seq;
                            if !self.advance(cur)? {
                                return Ok(None);
                            }
                        }
                        Step::Torn(reason) => {
                            let (cur, path, at) = (seg.first_seq, seg.path.clone(), *off);
                            if self.following(cur)?.is_some() {
                                return Err(corrupt(
                                    self.next_seq,
                                    &path,
                                    at,
                                    format!("{reason}, in a segment that is not the last one"),
                                ));
                            }
                            return Ok(None);
                        }
                    }
                }
            }
        }
    }

    /// The segment after the one starting at `cur`, in a fresh listing.
    fn following(&self, cur: u64) -> Result<Option<SegFile>, WalError> {
        Ok(self.list()?.into_iter().find(|s| s.first_seq > cur))
    }

    /// Moves on from the exhausted segment starting at `cur`; false when there is none after it.
    fn advance(&mut self, cur: u64) -> Result<bool, WalError> {
        let Some(next) = self.following(cur)? else {
            return Ok(false);
        };
        if next.first_seq > self.next_seq {
            return Err(WalError::Gap {
                missing: self.next_seq,
                next: next.first_seq,
                segment: next.path,
            });
        }
        if next.first_seq < self.next_seq {
            return Err(corrupt(
                next.first_seq,
                &next.path,
                HEADER_OFF_FIRST_SEQ,
                format!(
                    "the segment starts at record {}, but the segment before it holds records \
                     through {}",
                    next.first_seq,
                    self.next_seq - 1
                ),
            ));
        }
        self.state = CursorState::Pending(next);
        Ok(true)
    }

    /// Opens a listed segment; one released to the archive since it was listed is looked up
    /// again.
    fn open_segment(&self, seg: SegFile) -> Result<(SegFile, SegReader), WalError> {
        match SegReader::open(&seg.path) {
            Ok(r) => Ok((seg, r)),
            Err(WalError::Io { path, source }) if source.kind() == io::ErrorKind::NotFound => {
                match self
                    .list()?
                    .into_iter()
                    .find(|s| s.first_seq >= seg.first_seq)
                {
                    Some(moved) if moved.first_seq == seg.first_seq => {
                        let r = SegReader::open(&moved.path)?;
                        Ok((moved, r))
                    }
                    Some(later) => Err(WalError::Gap {
                        missing: self.next_seq,
                        next: later.first_seq,
                        segment: later.path,
                    }),
                    None => Err(WalError::Io { path, source }),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Opens a segment and checks its header, including that it continues the chain read so
    /// far. False when it is the last segment and its header is not (yet) written.
    fn enter(&mut self, seg: SegFile) -> Result<bool, WalError> {
        let (seg, mut reader) = self.open_segment(seg)?;
        if unfinished_segment(&mut reader, seg.first_seq)? {
            if self.following(seg.first_seq)?.is_some() {
                return Err(bad_header(
                    &seg.path,
                    "the header is missing or torn, in a segment that is not the last one",
                ));
            }
            return Ok(false);
        }
        let header = decode_header(reader.bytes(0, SEGMENT_HEADER_LEN), &seg.path)?;
        match self.store_id {
            Some(expected) if expected != header.store_id => {
                return Err(WalError::ForeignStore {
                    segment: seg.path,
                    expected,
                    found: header.store_id,
                })
            }
            Some(_) => {}
            None => self.store_id = Some(header.store_id),
        }
        if header.first_seq != seg.first_seq {
            return Err(bad_header(
                &seg.path,
                format!(
                    "the file name says it starts at record {}, its header says {}",
                    seg.first_seq, header.first_seq
                ),
            ));
        }
        match self.prev_hash {
            None => {
                if header.first_seq == 1 && header.prev_hash != ZERO_HASH {
                    return Err(corrupt(
                        1,
                        &seg.path,
                        HEADER_OFF_PREV,
                        "the first segment's prev_hash is not zero",
                    ));
                }
                self.prev_hash = Some(header.prev_hash);
            }
            Some(prev) => {
                if header.prev_hash != prev {
                    return Err(corrupt(
                        header.first_seq,
                        &seg.path,
                        HEADER_OFF_PREV,
                        format!(
                            "the segment header's prev_hash does not match the hash of record {}",
                            header.first_seq - 1
                        ),
                    ));
                }
            }
        }
        self.state = CursorState::Reading {
            seg,
            reader,
            off: SEGMENT_HEADER_LEN as u64,
        };
        Ok(true)
    }
}
