//! The write-ahead log against its contract: round trips, torn tails cut, damage refused,
//! headers checked, rotation, archiving, a follower beside a live writer, a full disk, and a
//! property test of crashes at random points.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use onecard_storage::wal::{
    Hash, Wal, WalConfig, WalError, WalOpened, WalReader, WalRecord, FORMAT_VERSION, MAX_PAYLOAD,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const HDR: u64 = SEGMENT_HEADER_LEN as u64;
const RHDR: u64 = RECORD_HEADER_LEN as u64;

/// Deterministic content, different for every record, with zeros in it (so that zero bytes
/// inside records are exercised too).
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            if i % 7 == 3 {
                0
            } else {
                (seq as usize * 31 + i * 17) as u8
            }
        })
        .collect()
}

fn size_for(i: u64) -> usize {
    const SIZES: [usize; 9] = [0, 1, 47, 48, 100, 333, 1000, 4096, 7000];
    SIZES[(i as usize * 7 + 3) % SIZES.len()]
}

fn cfg(segment_bytes: u64) -> WalConfig {
    WalConfig {
        segment_bytes,
        archive_dir: None,
    }
}

fn open(dir: &Path) -> Result<(Wal, WalOpened), WalError> {
    Wal::open(dir, WalConfig::default(), None)
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

fn copy_dir(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn read_all(dir: &Path, archive: Option<&Path>) -> Result<Vec<WalRecord>, WalError> {
    let reader = WalReader::open(dir, archive)?;
    let mut c = reader.cursor_after(0)?;
    let mut out = Vec::new();
    while let Some(r) = c.next_upto(u64::MAX) {
        out.push(r?);
    }
    Ok(out)
}

/// The hash a record must have according to the documented format, computed independently.
fn expected_hash(seq: u64, prev: &Hash, payload: &[u8]) -> Hash {
    let mut body = Vec::new();
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(prev);
    body.extend_from_slice(payload);
    let crc = crc32fast::hash(&body);
    let mut frame = Vec::new();
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&body);
    Sha256::digest(&frame).into()
}

/// Records numbered from 1, each chained to the one before and hashed as documented.
fn check_chain(recs: &[WalRecord]) {
    let mut prev = [0u8; 32];
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "numbering");
        assert_eq!(r.prev_hash, prev, "chain at record {}", r.seq);
        assert_eq!(
            r.hash,
            expected_hash(r.seq, &prev, &r.payload),
            "hash of {}",
            r.seq
        );
        prev = r.hash;
    }
}

fn flip(path: &Path, at: u64, mask: u8) {
    let mut b = fs::read(path).unwrap();
    b[at as usize] ^= mask;
    fs::write(path, b).unwrap();
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn append_zeros(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(&vec![0u8; n]).unwrap();
}

/// Rewrites a header field and fixes the header's CRC, as a deliberate (not accidental) edit.
fn patch_header(path: &Path, at: usize, bytes: &[u8]) {
    let mut b = fs::read(path).unwrap();
    b[at..at + bytes.len()].copy_from_slice(bytes);
    let crc = crc32fast::hash(&b[0..68]);
    b[68..72].copy_from_slice(&crc.to_le_bytes());
    fs::write(path, b).unwrap();
}

/// Writes records 1..=n with `size_for` sizes, one sync at the end. Returns their hashes.
fn write_log(dir: &Path, cfg: WalConfig, n: u64) -> Vec<Hash> {
    let (mut wal, _) = Wal::open(dir, cfg, None).unwrap();
    let mut hashes = Vec::new();
    for seq in 1..=n {
        let (s, h) = wal.append(&payload(seq, size_for(seq))).unwrap();
        assert_eq!(s, seq);
        hashes.push(h);
    }
    wal.sync().unwrap();
    hashes
}

fn first_seq_of(seg: &Path) -> u64 {
    seg.file_name().unwrap().to_str().unwrap()[..20]
        .parse()
        .unwrap()
}

fn corrupt_seq(e: &WalError) -> Option<u64> {
    match e {
        WalError::Corrupt { seq, .. } => Some(*seq),
        _ => None,
    }
}

/// Reads from record 1 and returns the first error, checking the records before it.
fn first_read_error(dir: &Path) -> (u64, WalError) {
    let reader = WalReader::open(dir, None).unwrap();
    let mut c = reader.cursor_after(0).unwrap();
    let mut n = 0;
    loop {
        match c.next_upto(u64::MAX) {
            None => panic!("read to the end after {n} records without an error"),
            Some(Ok(r)) => {
                n += 1;
                assert_eq!(r.seq, n);
            }
            Some(Err(e)) => return (n, e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Round trip

#[test]
fn round_trip_and_reopen_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let (mut wal, opened) = open(&dir).unwrap();
    assert_eq!(
        (opened.first_seq, opened.last_seq, opened.torn_bytes),
        (1, 0, 0)
    );
    assert_eq!(opened.last_hash, [0; 32]);
    let store = opened.store_id;
    let n = 300;
    let mut hashes = Vec::new();
    for seq in 1..=n {
        let (s, h) = wal.append(&payload(seq, size_for(seq))).unwrap();
        assert_eq!(s, seq);
        hashes.push(h);
        if seq % 37 == 0 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap();
    assert_eq!(wal.last_seq(), n);
    assert_eq!(wal.synced_seq(), n);
    drop(wal);

    // Exactly the documented layout: one header, then frames back to back.
    let segs = segments(&dir);
    assert_eq!(segs.len(), 1);
    assert_eq!(
        segs[0].file_name().unwrap().to_str().unwrap(),
        "00000000000000000001.wal"
    );
    let expect_len: u64 = HDR + (1..=n).map(|s| RHDR + size_for(s) as u64).sum::<u64>();
    assert_eq!(fs::metadata(&segs[0]).unwrap().len(), expect_len);
    let head = fs::read(&segs[0]).unwrap();
    assert_eq!(&head[0..8], b"OCWAL\0\0\0");
    assert_eq!(head[8..12], FORMAT_VERSION.to_le_bytes());
    assert_eq!(&head[12..28], &store);

    let recs = read_all(&dir, None).unwrap();
    assert_eq!(recs.len(), n as usize);
    check_chain(&recs);
    for r in &recs {
        assert_eq!(r.payload, payload(r.seq, size_for(r.seq)));
        assert_eq!(r.hash, hashes[r.seq as usize - 1]);
    }

    let (mut wal, opened) = open(&dir).unwrap();
    assert_eq!(opened.store_id, store);
    assert_eq!((opened.last_seq, opened.torn_bytes), (n, 0));
    assert_eq!(opened.last_hash, hashes[n as usize - 1]);
    let (s, _) = wal.append(b"after reopen").unwrap();
    assert_eq!(s, n + 1);
    wal.sync().unwrap();
    drop(wal);
    let recs = read_all(&dir, None).unwrap();
    assert_eq!(recs.len(), n as usize + 1);
    check_chain(&recs);
    assert_eq!(recs[n as usize].payload, b"after reopen");

    let v = WalReader::open(&dir, None).unwrap().verify().unwrap();
    assert_eq!(
        (v.first_seq, v.last_seq, v.records),
        (Some(1), n + 1, n + 1)
    );
}

#[test]
fn cursor_after_and_upto() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_log(&dir, cfg(3000), 60);
    assert!(segments(&dir).len() > 5);
    let reader = WalReader::open(&dir, None).unwrap();
    assert_eq!(reader.first_seq(), Some(1));
    for after in [0, 1, 7, 29, 59, 60, 75] {
        let mut c = reader.cursor_after(after).unwrap();
        assert_eq!(c.position(), after);
        let mut seen = Vec::new();
        while let Some(r) = c.next_upto(40) {
            seen.push(r.unwrap().seq);
        }
        let want: Vec<u64> = (after + 1..=40).collect();
        assert_eq!(seen, want, "after {after}, upto 40");
        // Raising `upto` continues where it stopped.
        while let Some(r) = c.next_upto(u64::MAX) {
            seen.push(r.unwrap().seq);
        }
        let want: Vec<u64> = (after + 1..=60).collect();
        assert_eq!(seen, want, "after {after}");
        assert_eq!(c.position(), after.max(60));
    }
}

#[test]
fn payload_over_the_limit_is_refused_without_poisoning() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(tmp.path()).unwrap();
    // calloc'ed: its pages are never touched, since the length is checked first.
    let big = vec![0u8; MAX_PAYLOAD as usize + 1];
    assert!(matches!(wal.append(&big), Err(WalError::TooLarge { .. })));
    assert_eq!(wal.append(b"fine").unwrap().0, 1);
    wal.sync().unwrap();
}

// ---------------------------------------------------------------------------------------------
// 2. Torn writes

#[test]
fn torn_last_record_is_cut_at_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let k = 6u64;
    let (mut wal, _) = open(&src).unwrap();
    let mut hashes = Vec::new();
    let sizes = [10usize, 0, 300, 48, 5, 200];
    for seq in 1..=k {
        hashes.push(
            wal.append(&payload(seq, sizes[seq as usize - 1]))
                .unwrap()
                .1,
        );
    }
    wal.sync().unwrap();
    drop(wal);
    let seg_name = segments(&src)[0].file_name().unwrap().to_owned();
    let start = HDR + sizes[..5].iter().map(|&s| RHDR + s as u64).sum::<u64>();
    let end = start + RHDR + 200;
    assert_eq!(fs::metadata(src.join(&seg_name)).unwrap().len(), end);

    let check_cut = |label: &str, prepare: &dyn Fn(&Path), torn: u64| {
        let dir = tmp.path().join(format!("case-{label}"));
        copy_dir(&src, &dir);
        let seg = dir.join(&seg_name);
        prepare(&seg);
        // A reader never cuts: it sees the first K-1 records and then the end.
        let before = fs::read(&seg).unwrap();
        let recs = read_all(&dir, None).unwrap();
        assert_eq!(recs.len() as u64, k - 1, "{label}: reader");
        assert_eq!(
            fs::read(&seg).unwrap(),
            before,
            "{label}: reader changed the file"
        );

        let (mut wal, opened) = open(&dir).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(opened.last_seq, k - 1, "{label}");
        assert_eq!(opened.last_hash, hashes[k as usize - 2], "{label}");
        assert_eq!(opened.torn_bytes, torn, "{label}");
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            start,
            "{label}: truncated"
        );
        let (s, h) = wal.append(b"again").unwrap();
        assert_eq!(s, k, "{label}");
        wal.sync().unwrap();
        drop(wal);
        let recs = read_all(&dir, None).unwrap();
        assert_eq!(recs.len() as u64, k, "{label}");
        check_chain(&recs);
        assert_eq!(recs[k as usize - 1].prev_hash, hashes[k as usize - 2]);
        assert_eq!(recs[k as usize - 1].hash, h);
        assert_eq!(recs[k as usize - 1].payload, b"again");
        fs::remove_dir_all(&dir).unwrap();
    };

    for cut in start..end {
        check_cut(
            &format!("cut-{cut}"),
            &|seg: &Path| set_len(seg, cut),
            cut - start,
        );
    }
    // The file was extended over the last record but part of it never written: zeros. (Not
    // `end - 1`: that payload byte is zero anyway.)
    for zero_from in [start + 1, start + 8, start + 30, start + RHDR, end - 2] {
        check_cut(
            &format!("zeroed-{zero_from}"),
            &|seg: &Path| {
                set_len(seg, zero_from);
                set_len(seg, end);
            },
            end - start,
        );
    }
    // ... and zeros after the torn record.
    check_cut(
        "cut-then-zeros",
        &|seg: &Path| {
            set_len(seg, start + 100);
            append_zeros(seg, 4000);
        },
        100 + 4000,
    );
}

#[test]
fn trailing_zeros_after_a_good_record_are_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let hashes = write_log(&src, WalConfig::default(), 5);
    let seg_name = segments(&src)[0].file_name().unwrap().to_owned();
    let good_len = fs::metadata(src.join(&seg_name)).unwrap().len();
    for zeros in [1usize, 7, 47, 48, 49, 100, 4096, 100_000] {
        let dir = tmp.path().join(format!("z{zeros}"));
        copy_dir(&src, &dir);
        append_zeros(&dir.join(&seg_name), zeros);
        assert_eq!(read_all(&dir, None).unwrap().len(), 5);
        let (mut wal, opened) = open(&dir).unwrap();
        assert_eq!(opened.last_seq, 5);
        assert_eq!(opened.torn_bytes, zeros as u64);
        assert_eq!(
            fs::metadata(dir.join(&seg_name)).unwrap().len(),
            good_len,
            "{zeros}"
        );
        let (s, _) = wal.append(b"x").unwrap();
        assert_eq!(s, 6);
        wal.sync().unwrap();
        drop(wal);
        let recs = read_all(&dir, None).unwrap();
        check_chain(&recs);
        assert_eq!(recs[5].prev_hash, hashes[4]);
    }
}

#[test]
fn torn_segment_header_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let hashes = write_log(&src, cfg(2000), 20);
    let segs = segments(&src);
    assert!(segs.len() >= 3);
    let (last_first, _) = {
        let name = segs.last().unwrap().file_name().unwrap().to_str().unwrap();
        (name[..20].parse::<u64>().unwrap(), ())
    };
    // The log as it was when the next segment was about to be created.
    let next_name = format!("{:020}.wal", 21);
    for (label, content) in [
        ("empty", vec![]),
        ("short", b"OCWAL\0\0\0\x01\0".to_vec()),
        ("zeros", vec![0u8; 72]),
        ("zeros-long", vec![0u8; 5000]),
    ] {
        let dir = tmp.path().join(label);
        copy_dir(&src, &dir);
        fs::write(dir.join(&next_name), &content).unwrap();
        assert_eq!(read_all(&dir, None).unwrap().len(), 20, "{label}");
        let (mut wal, opened) = open(&dir).unwrap();
        assert_eq!(
            (opened.last_seq, opened.last_hash),
            (20, hashes[19]),
            "{label}"
        );
        assert!(!dir.join(&next_name).exists(), "{label}: removed");
        assert_eq!(wal.append(b"y").unwrap().0, 21);
        wal.sync().unwrap();
        drop(wal);
        let recs = read_all(&dir, None).unwrap();
        assert_eq!(recs.len(), 21);
        check_chain(&recs);
    }
    assert!(last_first > 1);
    // A header torn half-way: ours (magic), failing its CRC, nothing intact after it.
    let dir = tmp.path().join("half-header");
    copy_dir(&src, &dir);
    let real = fs::read(segments(&src).last().unwrap()).unwrap();
    let mut content = real[..40].to_vec();
    content.resize(300, 0);
    fs::write(dir.join(&next_name), &content).unwrap();
    let (_wal, opened) = open(&dir).unwrap();
    assert_eq!(opened.last_seq, 20);
    assert!(!dir.join(&next_name).exists());
    drop(_wal);

    // A damaged header in front of intact records was synced once: refused, never removed.
    for (label, damage) in [("zeroed", 0..72usize), ("crc", 68..69)] {
        let dir = tmp.path().join(format!("damaged-{label}"));
        copy_dir(&src, &dir);
        let last = segments(&dir).pop().unwrap();
        let mut b = fs::read(&last).unwrap();
        for x in &mut b[damage] {
            *x = if label == "zeroed" { 0 } else { *x ^ 0x40 };
        }
        fs::write(&last, &b).unwrap();
        let err = open(&dir).unwrap_err();
        assert!(matches!(err, WalError::BadHeader { .. }), "{label}: {err}");
        assert!(last.exists());
        assert!(read_all(&dir, None).is_err(), "{label}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Damage before the tail

/// Positions inside record `seq`'s frame to damage: every header byte, and payload samples.
fn damage_positions(len: usize) -> Vec<u64> {
    let mut v: Vec<u64> = (0..RHDR).collect();
    for p in [0, 1, len / 3, len / 2, len.saturating_sub(1)] {
        if p < len {
            v.push(RHDR + p as u64);
        }
    }
    v.sort();
    v.dedup();
    v
}

#[test]
fn flipped_byte_before_the_tail_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let k = 8u64;
    write_log(&src, WalConfig::default(), k);
    let seg_name = segments(&src)[0].file_name().unwrap().to_owned();
    let mut start = HDR;
    let mut cases = 0;
    for seq in 1..k {
        let len = size_for(seq);
        for pos in damage_positions(len) {
            // 0x01: small changes (a length off by one); 0x80 on the length's top byte: a length
            // over the limit; 0x10: a length running past the end of the file.
            for mask in [0x01u8, 0x10, 0x80] {
                let dir = tmp.path().join("case");
                copy_dir(&src, &dir);
                flip(&dir.join(&seg_name), start + pos, mask);
                let label = format!("record {seq}, byte {pos}, mask {mask:#x}");
                let err = open(&dir).expect_err(&label);
                assert_eq!(corrupt_seq(&err), Some(seq), "{label}: {err}");
                let msg = err.to_string();
                assert!(
                    msg.starts_with(&format!(
                        "journal record {seq} (segment {}, byte {start}): ",
                        seg_name.to_str().unwrap()
                    )),
                    "{label}: {msg}"
                );
                let (n, rerr) = first_read_error(&dir);
                assert_eq!(n, seq - 1, "{label}");
                assert_eq!(corrupt_seq(&rerr), Some(seq), "{label}: {rerr}");
                // Nothing was cut.
                assert_eq!(
                    fs::metadata(dir.join(&seg_name)).unwrap().len(),
                    fs::metadata(src.join(&seg_name)).unwrap().len()
                );
                fs::remove_dir_all(&dir).unwrap();
                cases += 1;
            }
        }
        start += RHDR + len as u64;
    }
    assert!(cases > 7 * 48 * 3);
}

#[test]
fn flipped_byte_in_an_earlier_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let cfg = cfg(1000);
    let n = 40;
    // Small records: several per segment.
    let (mut wal, _) = Wal::open(&src, cfg.clone(), None).unwrap();
    for seq in 1..=n {
        wal.append(&payload(seq, 100)).unwrap();
    }
    wal.sync().unwrap();
    drop(wal);
    let segs = segments(&src);
    assert!(segs.len() >= 4);
    let per_seg = (fs::metadata(&segs[0]).unwrap().len() - HDR) / (RHDR + 100);
    assert!(per_seg >= 3);
    let seg_name = segs[1].file_name().unwrap().to_owned();
    let first: u64 = seg_name.to_str().unwrap()[..20].parse().unwrap();
    for idx in 0..per_seg {
        let seq = first + idx;
        let rec_start = HDR + idx * (RHDR + 100);
        for pos in [0u64, 3, 4, 9, 20, 47, 48, 100, 147] {
            let dir = tmp.path().join("case");
            copy_dir(&src, &dir);
            flip(&dir.join(&seg_name), rec_start + pos, 0x10);
            let label = format!("record {seq}, byte {pos}");
            if idx == per_seg - 1 {
                // The last record of a segment is what the next segment continues from: open
                // checks it.
                let err = open(&dir).expect_err(&label);
                assert_eq!(corrupt_seq(&err), Some(seq), "{label}: {err}");
            } else {
                // Earlier records of earlier segments are verify's job, not open's.
                let (_wal, opened) = Wal::open(&dir, cfg.clone(), None).unwrap();
                assert_eq!(opened.last_seq, n);
            }
            let (read, rerr) = first_read_error(&dir);
            assert_eq!(read, seq - 1, "{label}");
            assert_eq!(corrupt_seq(&rerr), Some(seq), "{label}: {rerr}");
            let verr = WalReader::open(&dir, None).unwrap().verify().unwrap_err();
            assert_eq!(corrupt_seq(&verr), Some(seq), "{label}: {verr}");
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    // A damaged header of an earlier segment.
    let dir = tmp.path().join("header");
    copy_dir(&src, &dir);
    flip(&dir.join(&seg_name), 40, 0x01);
    assert!(matches!(open(&dir), Err(WalError::BadHeader { .. })));
    assert!(matches!(
        read_all(&dir, None),
        Err(WalError::BadHeader { .. })
    ));
}

/// The documented limit of the torn-tail rule: damage to the very last record cannot be told
/// from an unfinished write, so that record is cut.
#[test]
fn flipped_byte_in_the_last_record_is_cut_as_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    write_log(&dir, WalConfig::default(), 5);
    let seg = &segments(&dir)[0];
    let len = fs::metadata(seg).unwrap().len();
    flip(seg, len - 1, 0x01);
    let (_wal, opened) = open(&dir).unwrap();
    assert_eq!(opened.last_seq, 4);
    assert_eq!(opened.torn_bytes, RHDR + size_for(5) as u64);
}

// ---------------------------------------------------------------------------------------------
// 4. Header checks

#[test]
fn foreign_segment_and_wrong_version_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    write_log(&a, cfg(3000), 10);
    write_log(&b, cfg(3000), 10);
    let a_id = WalReader::open(&a, None).unwrap().store_id().unwrap();
    let b_id = WalReader::open(&b, None).unwrap().store_id().unwrap();
    assert_ne!(a_id, b_id);
    let hex = hex::encode::<&[u8]>;

    // B's first segment slipped into A's directory as if it continued A.
    let dir = tmp.path().join("mixed");
    copy_dir(&a, &dir);
    let foreign = dir.join(format!("{:020}.wal", 11));
    fs::copy(&segments(&b)[0], &foreign).unwrap();
    let err = open(&dir).unwrap_err();
    match &err {
        WalError::ForeignStore {
            segment,
            expected,
            found,
        } => {
            assert_eq!(segment, &foreign);
            assert_eq!((expected, found), (&a_id, &b_id));
        }
        other => panic!("expected ForeignStore, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("belongs to another store"), "{msg}");
    assert!(
        msg.contains(&hex(&a_id)) && msg.contains(&hex(&b_id)),
        "{msg}"
    );
    assert!(matches!(
        read_all(&dir, None),
        Err(WalError::ForeignStore { .. })
    ));

    // The caller knows which store it wants.
    let err = Wal::open(&a, WalConfig::default(), Some(b_id)).unwrap_err();
    assert!(
        matches!(err, WalError::ForeignStore { expected, found, .. } if expected == b_id && found == a_id)
    );
    let (_wal, opened) = Wal::open(&a, WalConfig::default(), Some(a_id)).unwrap();
    assert_eq!(opened.store_id, a_id);
    drop(_wal);

    // A segment from an older format (its records' contents differ: refused, not misread) or
    // a future one.
    for version in [FORMAT_VERSION - 1, FORMAT_VERSION + 1] {
        for which in [0usize, 1] {
            let dir = tmp.path().join(format!("v{version}-{which}"));
            copy_dir(&a, &dir);
            let seg = segments(&dir)[which].clone();
            patch_header(&seg, 8, &version.to_le_bytes());
            let err = open(&dir).unwrap_err();
            assert!(
                matches!(&err, WalError::UnsupportedVersion { found, segment } if segment == &seg && *found == version),
                "{err}"
            );
            let msg = err.to_string();
            assert!(msg.contains(&format!("log format {version}")), "{msg}");
            assert!(
                msg.contains(&format!("this OneCard reads format {FORMAT_VERSION}")),
                "{msg}"
            );
            assert!(matches!(
                read_all(&dir, None),
                Err(WalError::UnsupportedVersion { found, .. }) if found == version
            ));
        }
    }

    // Not a segment at all.
    let dir = tmp.path().join("magic");
    copy_dir(&a, &dir);
    flip(&segments(&dir)[0], 0, 0x20);
    assert!(matches!(open(&dir), Err(WalError::BadHeader { .. })));
}

#[test]
fn new_log_takes_the_expected_store_id() {
    let tmp = tempfile::tempdir().unwrap();
    let id = [7u8; 16];
    let (_wal, opened) = Wal::open(tmp.path(), WalConfig::default(), Some(id)).unwrap();
    assert_eq!(opened.store_id, id);
    drop(_wal);
    assert_eq!(
        WalReader::open(tmp.path(), None).unwrap().store_id(),
        Some(id)
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Rotation

#[test]
fn rotation_gaps_and_broken_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let seg_bytes = 4096;
    let n = 200;
    let hashes = write_log(&src, cfg(seg_bytes), n);
    let segs = segments(&src);
    assert!(segs.len() > 20, "{} segments", segs.len());
    let firsts: Vec<u64> = segs.iter().map(|s| first_seq_of(s)).collect();
    for (i, s) in segs.iter().enumerate() {
        let len = fs::metadata(s).unwrap().len();
        let next = firsts.get(i + 1).copied().unwrap_or(n + 1);
        let records = next - firsts[i];
        assert!(records >= 1);
        // Past the limit only when a single record is bigger than the limit on its own.
        assert!(
            len <= seg_bytes || records == 1,
            "{s:?}: {len} bytes, {records} records"
        );
        // And a segment closed only when its next record would not fit.
        if let Some(&size) = (next <= n).then(|| size_for(next)).as_ref() {
            assert!(len + RHDR + size as u64 > seg_bytes, "{s:?} closed early");
        }
    }
    let recs = read_all(&src, None).unwrap();
    assert_eq!(recs.len() as u64, n);
    check_chain(&recs);
    for r in &recs {
        assert_eq!(r.payload, payload(r.seq, size_for(r.seq)));
    }
    let (mut wal, opened) = Wal::open(&src, cfg(seg_bytes), None).unwrap();
    assert_eq!(
        (opened.last_seq, opened.last_hash),
        (n, hashes[n as usize - 1])
    );
    wal.append(&payload(n + 1, 5000)).unwrap();
    wal.append(&payload(n + 2, 10)).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let recs = read_all(&src, None).unwrap();
    check_chain(&recs);
    assert_eq!(recs.len() as u64, n + 2);
    let segs = segments(&src);

    // A middle segment removed.
    let dir = tmp.path().join("gap");
    copy_dir(&src, &dir);
    let mid = segs.len() / 2;
    let missing = firsts[mid];
    fs::remove_file(dir.join(segs[mid].file_name().unwrap())).unwrap();
    let err = open(&dir).unwrap_err();
    assert!(
        matches!(err, WalError::Gap { missing: m, next, .. } if m == missing && next == firsts[mid + 1]),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("journal record {missing} is missing")),
        "{err}"
    );
    let rerr = read_all(&dir, None).unwrap_err();
    assert!(
        matches!(rerr, WalError::Gap { missing: m, .. } if m == missing),
        "{rerr}"
    );

    // A header that does not chain to the segment before it.
    for which in [mid, segs.len() - 1] {
        let dir = tmp.path().join(format!("chain-{which}"));
        copy_dir(&src, &dir);
        let seg = dir.join(segs[which].file_name().unwrap());
        patch_header(&seg, 36, &[0xAB; 32]);
        let first: u64 = segs[which].file_name().unwrap().to_str().unwrap()[..20]
            .parse()
            .unwrap();
        let err = open(&dir).unwrap_err();
        assert_eq!(corrupt_seq(&err), Some(first), "{err}");
        let (read, rerr) = first_read_error(&dir);
        assert_eq!(read, first - 1);
        assert_eq!(corrupt_seq(&rerr), Some(first), "{rerr}");
    }

    // A header whose first_seq disagrees with the segment before it (renamed to match).
    let dir = tmp.path().join("overlap");
    copy_dir(&src, &dir);
    let seg = dir.join(segs[mid].file_name().unwrap());
    let shifted = firsts[mid] - 1;
    patch_header(&seg, 28, &shifted.to_le_bytes());
    fs::rename(&seg, dir.join(format!("{shifted:020}.wal"))).unwrap();
    assert!(open(&dir).is_err());
    assert!(read_all(&dir, None).is_err());
}

// ---------------------------------------------------------------------------------------------
// 6. Archiving

#[test]
fn release_through_moves_only_covered_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let archive = tmp.path().join("archive");
    let cfg = WalConfig {
        segment_bytes: 3000,
        archive_dir: Some(archive.clone()),
    };
    let (mut wal, _) = Wal::open(&dir, cfg.clone(), None).unwrap();
    for seq in 1..=60 {
        wal.append(&payload(seq, 400)).unwrap();
    }
    wal.sync().unwrap();
    let firsts: Vec<u64> = segments(&dir)
        .iter()
        .map(|s| {
            s.file_name().unwrap().to_str().unwrap()[..20]
                .parse()
                .unwrap()
        })
        .collect();
    assert!(firsts.len() > 5);
    // Segment i is covered once seq reaches the record before segment i+1.
    let through = firsts[3] - 2; // segments 0, 1 fully; segment 2 not quite
    assert_eq!(wal.release_through(through).unwrap(), 2);
    assert_eq!(segments(&archive).len(), 2);
    assert_eq!(wal.release_through(through).unwrap(), 0);
    assert_eq!(wal.release_through(firsts[3] - 1).unwrap(), 1);
    // Never the current segment.
    let moved = wal.release_through(u64::MAX).unwrap();
    assert_eq!(moved, firsts.len() - 4);
    assert_eq!(segments(&dir).len(), 1);
    assert_eq!(segments(&archive).len(), firsts.len() - 1);
    wal.append(b"still writing").unwrap();
    wal.sync().unwrap();
    drop(wal);

    let recs = read_all(&dir, Some(&archive)).unwrap();
    assert_eq!(recs.len(), 61);
    check_chain(&recs);
    let v = WalReader::open(&dir, Some(&archive))
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!((v.first_seq, v.last_seq), (Some(1), 61));
    // Without the archive the log starts later, and asking for earlier records says so.
    let alone = WalReader::open(&dir, None).unwrap();
    assert_eq!(alone.first_seq(), Some(*firsts.last().unwrap()));
    assert!(matches!(
        alone.cursor_after(0),
        Err(WalError::Gap { missing: 1, .. })
    ));
    let mut c = alone.cursor_after(firsts.last().unwrap() - 1).unwrap();
    assert_eq!(
        c.next_upto(u64::MAX).unwrap().unwrap().seq,
        *firsts.last().unwrap()
    );

    let (_wal, opened) = Wal::open(&dir, cfg, None).unwrap();
    assert_eq!(opened.first_seq, *firsts.last().unwrap());
    assert_eq!(opened.last_seq, 61);

    // Without an archive directory nothing moves.
    let dir2 = tmp.path().join("log2");
    let (mut wal, _) = Wal::open(
        &dir2,
        WalConfig {
            segment_bytes: 3000,
            archive_dir: None,
        },
        None,
    )
    .unwrap();
    for seq in 1..=30 {
        wal.append(&payload(seq, 400)).unwrap();
    }
    wal.sync().unwrap();
    let before = segments(&dir2);
    assert_eq!(wal.release_through(u64::MAX).unwrap(), 0);
    assert_eq!(segments(&dir2), before);
}

#[test]
fn segment_before_an_unsynced_new_one_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let archive = tmp.path().join("archive");
    let cfg = WalConfig {
        segment_bytes: 1000,
        archive_dir: Some(archive.clone()),
    };
    let (mut wal, _) = Wal::open(&dir, cfg.clone(), None).unwrap();
    wal.append(&payload(1, 900)).unwrap();
    wal.sync().unwrap();
    // Rotates: the new segment's header is not on disk until the next sync.
    wal.append(&payload(2, 900)).unwrap();
    assert_eq!(wal.release_through(1).unwrap(), 0);
    drop(wal);
    // A crash now: the new segment is empty, and open removes it.
    let (_wal, opened) = Wal::open(&dir, cfg, None).unwrap();
    assert_eq!(opened.last_seq, 1);
}

// ---------------------------------------------------------------------------------------------
// 7. A follower beside a live writer

#[test]
fn follower_sees_every_synced_record_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let archive = tmp.path().join("archive");
    let cfg = WalConfig {
        segment_bytes: 64 << 10,
        archive_dir: Some(archive.clone()),
    };
    let (mut wal, _) = Wal::open(&dir, cfg, None).unwrap();
    let synced = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let total = {
        let synced = synced.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seq = 0u64;
            for batch in 0..400u64 {
                for _ in 0..(batch * 7 % 50 + 1) {
                    seq += 1;
                    let size = (seq * 131 % 2000) as usize;
                    assert_eq!(wal.append(&payload(seq, size)).unwrap().0, seq);
                }
                wal.sync().unwrap();
                synced.store(seq, Ordering::Release);
                if batch % 50 == 49 {
                    // Archive behind the follower's back, too.
                    wal.release_through(seq / 2).unwrap();
                }
            }
            done.store(true, Ordering::Release);
            seq
        })
    };
    let reader = WalReader::open(&dir, Some(&archive)).unwrap();
    let mut cursor = reader.cursor_after(0).unwrap();
    let mut next = 1u64;
    let mut prev = [0u8; 32];
    loop {
        let finished = done.load(Ordering::Acquire);
        let upto = synced.load(Ordering::Acquire);
        while let Some(r) = cursor.next_upto(upto) {
            let r = r.unwrap();
            assert_eq!(r.seq, next);
            assert!(r.seq <= upto);
            assert_eq!(r.prev_hash, prev);
            assert_eq!(r.payload, payload(r.seq, (r.seq * 131 % 2000) as usize));
            prev = r.hash;
            next += 1;
        }
        assert_eq!(cursor.position(), upto);
        if finished {
            break;
        }
        std::thread::yield_now();
    }
    let total = total.join().unwrap();
    assert_eq!(next - 1, total);
    assert!(segments(&archive).len() > 3);
}

// ---------------------------------------------------------------------------------------------
// 8. A full disk

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; detaching never touches our memory.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Mounts a tmpfs of `size` on `at`; None where this process may not mount.
fn mount_tmpfs(at: &Path, size: &str) -> Option<Unmount> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
    let opts = std::ffi::CString::new(format!("size={size}")).unwrap();
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Some(Unmount(at.to_path_buf()))
    } else {
        eprintln!(
            "NOTE: cannot mount a tmpfs on {} ({}): skipping",
            at.display(),
            std::io::Error::last_os_error()
        );
        None
    }
}

#[test]
fn disk_full_then_failed_then_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let Some(_guard) = mount_tmpfs(&mnt, "1m") else {
        return;
    };
    fs::write(mnt.join("filler"), vec![1u8; 256 << 10]).unwrap();
    let dir = mnt.join("log");
    let (mut wal, _) = open(&dir).unwrap();
    let mut synced = 0u64;
    let mut appended = 0u64;
    let first_err = loop {
        let seq = appended + 1;
        match wal.append(&payload(seq, 1000)) {
            Ok(_) => appended = seq,
            Err(e) => break e,
        }
        if appended - synced >= 10 {
            match wal.sync() {
                Ok(()) => synced = appended,
                Err(e) => break e,
            }
        }
        assert!(appended < 10_000, "the disk never filled");
    };
    assert!(
        matches!(first_err, WalError::DiskFull { .. }),
        "{first_err}"
    );
    assert!(first_err.to_string().contains("disk full"), "{first_err}");
    assert!(synced > 100);
    assert!(wal.is_failed());
    let e = wal.append(b"more").unwrap_err();
    assert!(matches!(e, WalError::Failed), "{e}");
    assert!(e.to_string().contains("restart the node"));
    assert!(matches!(wal.sync(), Err(WalError::Failed)));
    drop(wal);

    fs::remove_file(mnt.join("filler")).unwrap();
    let (mut wal, opened) = open(&dir).unwrap();
    assert!(opened.last_seq >= synced, "{} < {synced}", opened.last_seq);
    let recs = read_all(&dir, None).unwrap();
    assert_eq!(recs.len() as u64, opened.last_seq);
    check_chain(&recs);
    for r in &recs {
        assert_eq!(r.payload, payload(r.seq, 1000));
    }
    wal.append(b"after").unwrap();
    wal.sync().unwrap();
}

#[test]
fn archive_on_another_file_system_is_copied() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let Some(_guard) = mount_tmpfs(&mnt, "4m") else {
        return;
    };
    let dir = tmp.path().join("log");
    let archive = mnt.join("archive");
    let cfg = WalConfig {
        segment_bytes: 3000,
        archive_dir: Some(archive.clone()),
    };
    let (mut wal, _) = Wal::open(&dir, cfg, None).unwrap();
    for seq in 1..=40 {
        wal.append(&payload(seq, 400)).unwrap();
    }
    wal.sync().unwrap();
    let n = segments(&dir).len();
    assert_eq!(wal.release_through(u64::MAX).unwrap(), n - 1);
    assert_eq!(segments(&dir).len(), 1);
    assert_eq!(segments(&archive).len(), n - 1);
    assert!(fs::read_dir(&archive).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_str()
        .unwrap()
        .ends_with(".tmp")));
    drop(wal);
    let recs = read_all(&dir, Some(&archive)).unwrap();
    assert_eq!(recs.len(), 40);
    check_chain(&recs);
}

// ---------------------------------------------------------------------------------------------
// 9. Crashes at random points

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    Sync,
    /// Buffered bytes reach the file (the page cache) without a sync.
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..4096).prop_map(Op::Append),
        2 => Just(Op::Sync),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn crash_keeps_synced_records_and_nothing_partial(
        ops in prop::collection::vec(op(), 1..80),
        flush_before_crash in any::<bool>(),
        cut in 0.0f64..=1.0,
        zeros in prop_oneof![3 => Just(0usize), 1 => 1usize..3000],
        killed in any::<bool>(),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let cfg = cfg(8192);
        let (mut wal, _) = Wal::open(&dir, cfg.clone(), None).unwrap();
        let mut payloads: Vec<Vec<u8>> = Vec::new();
        let mut synced = 0usize;
        // The last segment and its length at the last sync: bytes below it are durable. A new
        // log's header is synced by open.
        let mut synced_at = Some((segments(&dir).pop().unwrap(), HDR));
        for op in &ops {
            match op {
                Op::Append(n) => {
                    let seq = payloads.len() as u64 + 1;
                    let p = payload(seq, *n);
                    prop_assert_eq!(wal.append(&p).unwrap().0, seq);
                    payloads.push(p);
                }
                Op::Sync => {
                    wal.sync().unwrap();
                    synced = payloads.len();
                    // The records' end, not the file's: zeros are written ahead of them.
                    let last = segments(&dir).pop().unwrap();
                    synced_at = Some((last, wal.synced_len()));
                }
                Op::Flush => wal.flush().unwrap(),
            }
        }
        if flush_before_crash {
            wal.flush().unwrap();
        }
        if killed {
            // SIGKILL: no destructor; the zeros written ahead of the records stay.
            std::mem::forget(wal);
        } else {
            drop(wal);
        }

        // The crash: the last segment keeps its durable part and some of the rest.
        let last = segments(&dir).pop().unwrap();
        let len = fs::metadata(&last).unwrap().len();
        let durable = match &synced_at {
            Some((p, l)) if *p == last => *l,
            // Created by a rotation after the last sync: none of it is durable.
            _ => 0,
        };
        let keep = durable + ((len - durable) as f64 * cut) as u64;
        set_len(&last, keep.min(len));
        if zeros > 0 {
            append_zeros(&last, zeros);
        }

        let (mut wal, opened) = Wal::open(&dir, cfg.clone(), None).unwrap();
        let kept = opened.last_seq as usize;
        prop_assert!(kept >= synced, "kept {} < synced {}", kept, synced);
        prop_assert!(kept <= payloads.len());
        let recs = read_all(&dir, None).unwrap();
        prop_assert_eq!(recs.len(), kept);
        check_chain(&recs);
        for r in &recs {
            prop_assert_eq!(&r.payload, &payloads[r.seq as usize - 1]);
        }
        if let Some(r) = recs.last() {
            prop_assert_eq!(r.hash, opened.last_hash);
        }
        let (s, _) = wal.append(b"after the crash").unwrap();
        prop_assert_eq!(s, kept as u64 + 1);
        wal.sync().unwrap();
        drop(wal);
        let (_wal, opened) = Wal::open(&dir, cfg, None).unwrap();
        prop_assert_eq!((opened.last_seq, opened.torn_bytes), (kept as u64 + 1, 0));
        let recs = read_all(&dir, None).unwrap();
        check_chain(&recs);
    }
}

// ---------------------------------------------------------------------------------------------
