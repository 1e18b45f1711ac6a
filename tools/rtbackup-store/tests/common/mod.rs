//! The test stream model shared by the store's integration tests: records
//! and the device image they produce, computed independently of the store.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use rtbackup_proto::{
    append_record, RTB_OP_DISCARD, RTB_OP_FLUSH, RTB_OP_MARK, RTB_OP_WRITE, RTB_OP_WRITE_ZEROES,
    RTB_REC_PREFLUSH,
};
use rtbackup_store::Store;

pub const SIZE: u64 = 64 * 1024;
pub const RING: u64 = 0xabcdef;

/// One operation of a test stream.
#[derive(Debug, Clone)]
pub enum Op {
    Write { sector: u64, data: Vec<u8> },
    Discard { sector: u64, len: u64 },
    Zeroes { sector: u64, len: u64 },
    Flush,
    Mark(String),
}

/// A stream of records with its model: the device state after each record
/// and at each consistency point.
pub struct Model {
    pub ops: Vec<(Op, u8)>,
    pub image: Vec<u8>,
    /// Model image at the last consistency point, and its seq.
    pub at_cp: (Vec<u8>, u64),
    /// Every consistency point: seq of the last record before it, time,
    /// image.
    pub points: Vec<(u64, u64, Vec<u8>)>,
    /// Marks: name, seq of the point they name.
    pub marks: Vec<(String, u64)>,
}

/// Submission time of record `seq` in test streams: one second apart.
pub fn time_of(seq: u64) -> u64 {
    T0 + seq * 1_000_000_000
}

/// Time of record 0 (2023-11-14T22:13:20Z).
pub const T0: u64 = 1_700_000_000_000_000_000;

impl Model {
    pub fn new() -> Self {
        Self {
            ops: Vec::new(),
            image: vec![0; SIZE as usize],
            at_cp: (vec![0; SIZE as usize], 0),
            points: Vec::new(),
            marks: Vec::new(),
        }
    }

    /// Adds an op, returns its record.
    pub fn push(&mut self, op: Op, flags: u8) -> Vec<u8> {
        let seq = self.ops.len() as u64 + 1;
        let time = time_of(seq);
        if flags & RTB_REC_PREFLUSH != 0 {
            self.at_cp = (self.image.clone(), seq - 1);
            self.points.push((seq - 1, time, self.image.clone()));
        }
        let mut rec = Vec::new();
        match &op {
            Op::Write { sector, data } => {
                let s = (*sector * 512) as usize;
                self.image[s..s + data.len()].copy_from_slice(data);
                append_record(
                    &mut rec,
                    RTB_OP_WRITE,
                    flags,
                    seq,
                    *sector,
                    data.len() as u64,
                    time,
                    data,
                );
            }
            Op::Discard { sector, len } | Op::Zeroes { sector, len } => {
                let s = (*sector * 512) as usize;
                self.image[s..s + *len as usize].fill(0);
                let code = if matches!(op, Op::Discard { .. }) {
                    RTB_OP_DISCARD
                } else {
                    RTB_OP_WRITE_ZEROES
                };
                append_record(&mut rec, code, flags, seq, *sector, *len, time, &[]);
            }
            Op::Flush => {
                append_record(&mut rec, RTB_OP_FLUSH, flags, seq, 0, 0, time, &[]);
            }
            Op::Mark(name) => {
                append_record(&mut rec, RTB_OP_MARK, 0, seq, 0, 0, time, name.as_bytes());
                self.marks.push((name.clone(), self.at_cp.1));
            }
        }
        if matches!(op, Op::Flush) {
            self.at_cp = (self.image.clone(), seq);
            self.points.push((seq, time, self.image.clone()));
        }
        self.ops.push((op, flags));
        rec
    }
}

pub fn restored(store: &Store, vol: &str, dir: &Path) -> (Vec<u8>, u64) {
    let out = dir.join("restored.img");
    let rep = store.restore(vol, &out).unwrap();
    assert_eq!(rep.bytes, SIZE);
    (fs::read(&out).unwrap(), rep.seq)
}

pub fn active_segment(root: &Path, vol: &str) -> PathBuf {
    let jdir = root.join("volumes").join(vol).join("journal");
    let mut segs: Vec<_> = fs::read_dir(&jdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

/// A temporary directory on tmpfs when there is one (fsync is free there),
/// for tests that create many stores.
pub fn fast_tempdir() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(_) => tempfile::tempdir().unwrap(),
    }
}

pub fn write(sector: u64, byte: u8, len: usize) -> Op {
    Op::Write {
        sector,
        data: vec![byte; len],
    }
}
