//! Entry points of the fuzz targets in `tools/fuzz` (Documentation/testing.rst,
//! "Fuzzing"), kept here so that `cargo test` feeds the same functions the
//! inputs the fuzzers found (`tests/fuzz_regressions.rs`). Not an API.
//!
//! Every entry point takes arbitrary bytes and must return without
//! panicking; it panics only when an invariant of the code under test is
//! broken (a decoded frame that does not encode back to itself, …).
//!
//! The first byte of an input is a mode byte: bit 0 asks for the checksums
//! to be fixed up ([`fix_frame_checksums`], [`fix_record_checksums`]) before
//! parsing, so that the fuzzer gets past the CRC checks and reaches the
//! field checks behind them; bits 1 to 4 give the largest read the
//! in-memory stream returns at once (0: all of it), to exercise the loops
//! that read a frame in pieces.

use std::io::{self, Read};

use crate::frame::{
    decode_frame, encode_frame, read_frame, read_frame_raw, Frame, FRAME_HEADER_LEN,
    MAX_JSON_PAYLOAD,
};
use crate::record::{
    build_record, header_crc, parse_header, parse_record, records, RECORD_HEADER_LEN,
};
use rtbackup_abi::{record_size, RtbRecordHeader, RTB_OP_PAD, RTB_RECORD_MAGIC};

/// The mode byte of an input: `(fix checksums, largest read or 0)`, and the
/// bytes after it.
pub fn split_mode(data: &[u8]) -> ((bool, usize), &[u8]) {
    match data.split_first() {
        Some((&m, rest)) => ((m & 1 != 0, usize::from((m >> 1) & 0xf)), rest),
        None => ((false, 0), data),
    }
}

/// A reader over a byte slice that returns at most `max` bytes per call
/// (all of them when `max` is 0).
#[derive(Debug)]
pub struct Dribble<'a> {
    data: &'a [u8],
    max: usize,
}

impl<'a> Dribble<'a> {
    /// Reads `data`, `max` bytes at a time at most (0: no limit).
    pub fn new(data: &'a [u8], max: usize) -> Self {
        Self { data, max }
    }

    /// The bytes not read yet.
    pub fn remaining(&self) -> &'a [u8] {
        self.data
    }
}

impl Read for Dribble<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut n = buf.len().min(self.data.len());
        if self.max > 0 {
            n = n.min(self.max);
        }
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Makes the consecutive records at the start of `buf` pass the magic and
/// checksum checks: sets each header's magic, its payload CRC (when the
/// payload is in `buf`) and its header CRC, then goes on at `size` bytes
/// further, until a `size` that is 0, not a multiple of 64 or past the end.
pub fn fix_record_checksums(buf: &mut [u8]) {
    let mut off = 0usize;
    while buf.len() - off >= RECORD_HEADER_LEN {
        let b = &mut buf[off..];
        b[..4].copy_from_slice(&RTB_RECORD_MAGIC.to_le_bytes());
        let size = le32(b, 8) as usize;
        let payload_len = le32(b, 12) as usize;
        if let Some(payload) = b.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + payload_len) {
            let crc = crc32c::crc32c(payload);
            b[48..52].copy_from_slice(&crc.to_le_bytes());
        }
        let hb: &mut [u8; RECORD_HEADER_LEN] =
            (&mut b[..RECORD_HEADER_LEN]).try_into().expect("64 bytes");
        let crc = header_crc(hb);
        let at = RtbRecordHeader::HEADER_CRC_OFFSET;
        hb[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        if size == 0 || !size.is_multiple_of(RECORD_HEADER_LEN) || size > b.len() {
            break;
        }
        off += size;
    }
}

/// Makes the consecutive frames of `buf` pass the checksum check: each
/// frame's payload CRC is set (after fixing the records of a RECORDS
/// payload), until a frame whose payload is not all in `buf`.
pub fn fix_frame_checksums(buf: &mut [u8]) {
    let mut off = 0usize;
    while buf.len() - off >= FRAME_HEADER_LEN {
        let h = &buf[off..off + FRAME_HEADER_LEN];
        let t = u16::from_le_bytes([h[6], h[7]]);
        let len = le32(h, 8) as usize;
        let start = off + FRAME_HEADER_LEN;
        let Some(end) = start.checked_add(len).filter(|&e| e <= buf.len()) else {
            break;
        };
        if t == crate::frame_type::RECORDS {
            fix_record_checksums(&mut buf[start..end]);
        }
        let crc = crate::frame_crc(t, &buf[start..end]);
        buf[off + 12..off + 16].copy_from_slice(&crc.to_le_bytes());
        off = end;
    }
}

/// Checks what can be checked of valid records: the fields agree with the
/// bytes, and a record of the smallest size encodes back to itself.
fn check_records(buf: &[u8]) {
    let mut it = records(buf);
    let mut offset = 0usize;
    while let Some(r) = it.next() {
        let Ok(r) = r else {
            assert_eq!(it.offset(), offset, "offset after an error");
            assert!(it.next().is_none(), "records after an error");
            return;
        };
        let h = r.header;
        assert_eq!(r.bytes.len(), h.size as usize);
        assert_eq!(r.payload.len(), h.payload_len as usize);
        assert_eq!(r.bytes, &buf[offset..offset + r.bytes.len()]);
        assert_eq!(parse_header(r.bytes), Ok(h));
        assert_eq!(parse_record(r.bytes), Ok(r));
        let (start, end) = r.byte_range();
        assert!(start <= end);
        let _ = (
            r.consistent_seq(),
            r.mark_name(),
            r.is_consistency_point_before(),
        );
        if r.op() != RTB_OP_PAD && u64::from(h.size) == record_size(u64::from(h.payload_len)) {
            let again = build_record(h.op, h.flags, h.seq, h.sector, h.len, h.time_ns, r.payload);
            assert_eq!(again, r.bytes, "record seq {} does not encode back", h.seq);
        }
        offset += r.bytes.len();
        assert_eq!(it.offset(), offset);
    }
    assert_eq!(offset, buf.len(), "records stopped early without an error");
}

/// Fuzz target `records`: [`records`] and [`parse_record`] over a buffer of
/// concatenated records.
pub fn records_target(data: &[u8]) {
    let ((fix, _), rest) = split_mode(data);
    let mut buf = rest.to_vec();
    if fix {
        fix_record_checksums(&mut buf);
    }
    check_records(&buf);
}

/// Fuzz target `frame`: reads frames from a stream until an error or the
/// end, with [`read_frame_raw`] and a reused payload buffer, and with
/// [`read_frame`]; a frame that decodes must encode back to the same frame,
/// and the records of a RECORDS frame are parsed.
pub fn frame_target(data: &[u8]) {
    let ((fix, max), rest) = split_mode(data);
    let mut buf = rest.to_vec();
    if fix {
        fix_frame_checksums(&mut buf);
    }
    let mut raw = Dribble::new(&buf, max);
    let mut whole = Dribble::new(&buf, max);
    let mut payload = Vec::new();
    loop {
        let a =
            read_frame_raw(&mut raw, &mut payload).and_then(|t| decode_frame(t, payload.clone()));
        let b = read_frame(&mut whole);
        assert_eq!(raw.remaining().len(), whole.remaining().len());
        let f = match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                a
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                return;
            }
            (a, b) => panic!("read_frame_raw gave {a:?}, read_frame {b:?}"),
        };
        let wire = encode_frame(&f).expect("a decoded frame encodes");
        match read_frame(&mut &wire[..]) {
            Ok(g) => assert_eq!(g, f, "frame does not decode back to itself"),
            // A JSON payload may re-encode longer than it came (a field
            // with a default that was absent) and pass the limit.
            Err(e) => assert!(
                wire.len() - FRAME_HEADER_LEN > MAX_JSON_PAYLOAD,
                "{} frame does not decode back: {e}",
                f.name()
            ),
        }
        if let Frame::Records(r) = &f {
            check_records(r);
        }
    }
}

/// For the crates' regression tests (`tests/fuzz_regressions.rs`): runs
/// the entry point `entry` of fuzz target `target` on its seeds as `seeds`
/// generates them (name, bytes), checks that `tools/fuzz/corpus/TARGET`
/// holds them (writes them there with `RTB_FUZZ_SEEDS=write` in the
/// environment), then runs it on every file of that corpus and of
/// `tools/fuzz/regressions/TARGET`. `tools` is the tools workspace's
/// directory.
pub fn check_target(
    tools: &std::path::Path,
    target: &str,
    seeds: &[(&str, Vec<u8>)],
    entry: fn(&[u8]),
) {
    for (name, bytes) in seeds {
        eprintln!("fuzz seed {target}/{name}");
        entry(bytes);
    }
    let corpus = tools.join("fuzz/corpus").join(target);
    check_seeds(&corpus, seeds);
    feed_dir(&corpus, entry);
    feed_dir(&tools.join("fuzz/regressions").join(target), entry);
}

/// Feeds every file of `dir` (none if it does not exist) to `entry`,
/// naming each on stderr first so that a failing test says which input
/// broke it.
fn feed_dir(dir: &std::path::Path, entry: fn(&[u8])) {
    let mut paths: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("reading a corpus directory").path())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    paths.sort();
    for p in &paths {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        eprintln!("fuzz input {}", p.display());
        entry(&data);
    }
}

/// Checks that the seed corpus in `dir` holds the files `seeds`, or
/// writes them there with `RTB_FUZZ_SEEDS=write`.
fn check_seeds(dir: &std::path::Path, seeds: &[(&str, Vec<u8>)]) {
    let write = std::env::var_os("RTB_FUZZ_SEEDS").is_some_and(|v| v == "write");
    if write {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
    for (name, bytes) in seeds {
        let p = dir.join(name);
        if write {
            std::fs::write(&p, bytes).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        let on_disk = std::fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (RTB_FUZZ_SEEDS=write cargo test writes the seeds)",
                p.display()
            )
        });
        assert!(
            on_disk == *bytes,
            "{} differs from its generator (RTB_FUZZ_SEEDS=write cargo test writes the seeds)",
            p.display()
        );
    }
}
