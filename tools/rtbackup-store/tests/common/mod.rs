//! The test stream model shared by the store's integration tests: records
//! and the device image they produce, computed independently of the store.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rtbackup_proto::{
    append_record, RTB_OP_DISCARD, RTB_OP_FLUSH, RTB_OP_MARK, RTB_OP_RESYNC, RTB_OP_RESYNC_END,
    RTB_OP_WRITE, RTB_OP_WRITE_ZEROES, RTB_REC_PREFLUSH,
};
use rtbackup_store::{
    LocalDirStore, PointSpec, Retention, Store, StoreError, Volume, VolumeOptions,
};

pub const SIZE: u64 = 64 * 1024;
pub const RING: u64 = 0xabcdef;

/// One operation of a test stream.
#[derive(Debug, Clone)]
pub enum Op {
    Write {
        sector: u64,
        data: Vec<u8>,
    },
    Discard {
        sector: u64,
        len: u64,
    },
    Zeroes {
        sector: u64,
        len: u64,
    },
    Flush,
    Mark(String),
    /// A chunk read by a resync (`data` empty: a reserved seq filled).
    Resync {
        sector: u64,
        data: Vec<u8>,
    },
    /// The end of a resync's data, with `consistent_seq` = the record's
    /// own seq + `delta` (at least 0).
    ResyncEnd {
        delta: i64,
    },
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
    /// The open resync section: seq of its first RESYNC record, and the
    /// `consistent_seq` of its end once one came. While a section is open,
    /// flushes and the rest are no consistency points
    /// (Documentation/design.rst, "Overflow and resync").
    pub section: Option<(u64, Option<u64>)>,
    /// Seqs of the records after which a section was open and not yet
    /// past its `consistent_seq`: no point can be there.
    pub inside: Vec<u64>,
    /// The time the next records carry (default: [`time_of`] their seq), as
    /// a host with a stepped or forged clock sends.
    pub host_time: Option<u64>,
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
            section: None,
            inside: Vec::new(),
            host_time: None,
        }
    }

    /// A consistency-point candidate after record `seq` (of time `time`):
    /// a point unless a section is open that this does not close.
    fn candidate(&mut self, seq: u64, time: u64) {
        if let Some((_, close_at)) = self.section {
            match close_at {
                Some(c) if seq >= c => self.section = None,
                _ => return,
            }
        }
        self.at_cp = (self.image.clone(), seq);
        self.points.push((seq, time, self.image.clone()));
    }

    /// Adds an op, returns its record.
    pub fn push(&mut self, op: Op, flags: u8) -> Vec<u8> {
        let seq = self.ops.len() as u64 + 1;
        let time = self.host_time.unwrap_or_else(|| time_of(seq));
        if flags & RTB_REC_PREFLUSH != 0 {
            self.candidate(seq - 1, time);
        }
        let was_open = self.section.is_some();
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
            Op::Resync { sector, data } => {
                let s = (*sector * 512) as usize;
                self.image[s..s + data.len()].copy_from_slice(data);
                let len = data.len() as u64;
                append_record(&mut rec, RTB_OP_RESYNC, 0, seq, *sector, len, time, data);
                match &mut self.section {
                    Some((_, close_at)) => *close_at = None,
                    None => self.section = Some((seq, None)),
                }
            }
            Op::ResyncEnd { delta } => {
                let c = seq.saturating_add_signed(*delta);
                append_record(
                    &mut rec,
                    RTB_OP_RESYNC_END,
                    0,
                    seq,
                    0,
                    0,
                    time,
                    &c.to_le_bytes(),
                );
                if let Some((_, close_at)) = &mut self.section {
                    *close_at = Some(c);
                }
            }
        }
        if matches!(op, Op::Flush) || (matches!(op, Op::ResyncEnd { .. }) && was_open) {
            self.candidate(seq, time);
        }
        if let Some((_, close_at)) = self.section {
            if close_at.is_none_or(|c| seq < c) {
                self.inside.push(seq);
            }
        }
        self.ops.push((op, flags));
        rec
    }
}

/// A model of a new ring continuing the device state of `m`.
pub fn continued(m: &Model) -> Model {
    Model {
        image: m.image.clone(),
        at_cp: m.at_cp.clone(),
        ..Model::new()
    }
}

/// A new store (in a temporary directory) with volume "v".
pub fn fresh() -> (tempfile::TempDir, Store, Volume) {
    let d = fast_tempdir();
    let store = store_with(d.path(), VolumeOptions::default());
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    (d, store, vol)
}

/// Appends `batch` to `vol`, syncs it and applies (which also indexes it).
pub fn commit(vol: &Volume, ring: u64, batch: &[u8]) {
    vol.append(ring, batch).unwrap();
    vol.sync().unwrap();
    vol.apply(true).unwrap();
}

pub fn store_with(dir: &Path, opts: VolumeOptions) -> Store {
    Store::with_segment_store(dir, Arc::new(LocalDirStore::new(dir.join("sealed"))), opts).unwrap()
}

pub fn opts(segment_bytes: u64, keep: Option<Duration>, keep_bytes: Option<u64>) -> VolumeOptions {
    VolumeOptions {
        segment_bytes,
        retention: Retention {
            keep,
            keep_bytes,
            // Size alone decides in these tests.
            size_min_age: Some(Duration::ZERO),
        },
        ..VolumeOptions::default()
    }
}

/// Restores volume "v" at `at`: the image and the seq of the point.
pub fn restore_at(store: &Store, dir: &Path, at: &PointSpec) -> Result<(Vec<u8>, u64), StoreError> {
    let out = dir.join("at.img");
    let rep = store.restore_at("v", &out, at)?;
    Ok((fs::read(&out).unwrap(), rep.seq))
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

/// The newest point of the model at or after `from` and at or before the
/// end of record `seq` (`from` itself if none).
pub fn point_at_or_before(m: &Model, seq: u64, from: u64) -> u64 {
    m.points
        .iter()
        .rev()
        .map(|p| p.0)
        .find(|&p| p <= seq && p >= from)
        .unwrap_or(from)
}

pub fn write(sector: u64, byte: u8, len: usize) -> Op {
    Op::Write {
        sector,
        data: vec![byte; len],
    }
}

pub fn resync(sector: u64, byte: u8, len: usize) -> Op {
    Op::Resync {
        sector,
        data: vec![byte; len],
    }
}
