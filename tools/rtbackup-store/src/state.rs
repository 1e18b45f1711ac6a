//! The per-volume state file (`state.json`).

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};
use crate::index::{PointKind, PointRow};
use crate::segment::sync_dir;

/// Version of the store's on-disk format (Documentation/store.rst).
/// Format 1 (no base image, no history) is read and upgraded.
pub const STORE_FORMAT_VERSION: u32 = 2;

/// How many ring ids a volume remembers (the oldest are forgotten).
pub const MAX_RINGS: usize = 4096;

/// A position in a volume's journal, with the stream position it stands
/// for: every record before it (in segment order) and none after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Segment number.
    pub segment: u64,
    /// Byte offset in the segment (a record boundary).
    pub offset: u64,
    /// `ring_id` of the last record before the position (of the segment).
    pub ring_id: u64,
    /// `seq` of the last record before the position (0: none of this ring).
    pub seq: u64,
}

impl Position {
    /// Whether `self` is after `other` in the journal.
    pub fn is_after(&self, other: &Position) -> bool {
        (self.segment, self.offset) > (other.segment, other.offset)
    }

    /// Whether `self` and `other` are the same place in the journal.
    pub fn same_place(&self, other: &Position) -> bool {
        (self.segment, self.offset) == (other.segment, other.offset)
    }

    /// Whether `self` and `other` stand for the same state of the stream:
    /// the same place, or the end of one segment and the start of the next
    /// of the same ring (a ring's records never reappear after another's,
    /// so ring and seq name one place in the stream).
    pub fn same_state(&self, other: &Position) -> bool {
        self.same_place(other) || (self.ring_id == other.ring_id && self.seq == other.seq)
    }
}

/// Contents of `state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeState {
    /// [`STORE_FORMAT_VERSION`].
    pub format: u32,
    /// Volume name.
    pub volume: String,
    /// Volume size in bytes.
    pub size_bytes: u64,
    /// Logical block size of the source device.
    pub block_size: u32,
    /// Current ring_id as of the last state write (the journal is
    /// authoritative: its newest segment's header).
    pub ring_id: u64,
    /// Highest durable seq of `ring_id` as of the last state write (the
    /// journal is authoritative: the last valid record).
    pub durable_seq: u64,
    /// Where the image stands: every record before this position is
    /// applied to the image, none after; always a consistency point.
    pub checkpoint: Position,
    /// Where the base image stands, the oldest state held (format 2;
    /// `None` in format 1, where it is the checkpoint): a consistency point
    /// at or before the checkpoint. The journal is held from here on.
    #[serde(default)]
    pub base: Option<Position>,
    /// Time of the base point (the protected host's clock).
    #[serde(default)]
    pub base_time_ns: u64,
    /// When the backup host had the base point (its own clock; 0 in
    /// older state files, which then show `base_time_ns`).
    #[serde(default)]
    pub base_received_ns: u64,
    /// A fold of history into the base image in progress up to this point:
    /// the base image may already hold records up to it, so no point
    /// before it can be restored. Set (durably) before the fold starts,
    /// cleared when `base` moves to it; a fold interrupted by a crash is
    /// finished when the volume is opened again.
    #[serde(default)]
    pub folding: Option<Position>,
    /// Time of the `folding` point.
    #[serde(default)]
    pub folding_time_ns: u64,
    /// When the backup host had the `folding` point.
    #[serde(default)]
    pub folding_received_ns: u64,
    /// Rings the volume has seen, oldest first, the current one last (at
    /// most [`MAX_RINGS`]). A HELLO or record of any of them but the
    /// current one is refused (`stale-ring`). Absent in older state files.
    #[serde(default)]
    pub rings: Vec<u64>,
    /// Creation time, `CLOCK_REALTIME` nanoseconds.
    pub created_ns: u64,
    /// Time of the last state write.
    pub updated_ns: u64,
}

impl VolumeState {
    /// Where the base image stands (the checkpoint in format 1).
    pub fn base(&self) -> Position {
        self.base.unwrap_or(self.checkpoint)
    }

    /// The oldest point that can be restored: the base point, or the end
    /// of a fold in progress.
    pub(crate) fn oldest_point(&self) -> PointRow {
        let (pos, time_ns, received_ns) = match self.folding {
            Some(f) => (f, self.folding_time_ns, self.folding_received_ns),
            None if self.base.is_some() => (self.base(), self.base_time_ns, self.base_received_ns),
            None => (self.checkpoint, self.updated_ns, self.updated_ns),
        };
        PointRow {
            pos,
            time_ns,
            received_ns: if received_ns == 0 {
                time_ns
            } else {
                received_ns
            },
            kind: PointKind::Base,
        }
    }

    /// Reads and checks a state file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).ctx(|| format!("reading {}", path.display()))?;
        let bad = |reason: String| StoreError::BadState {
            path: path.to_owned(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        match v.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == u64::from(STORE_FORMAT_VERSION) || f == 1 => {}
            Some(f) => {
                return Err(bad(format!(
                    "store format {f} is not supported (this build reads {STORE_FORMAT_VERSION})"
                )))
            }
            None => return Err(bad("no format version".into())),
        }
        serde_json::from_value(v).map_err(|e| bad(e.to_string()))
    }

    /// Replaces the state file atomically and durably: write a temporary
    /// file, fsync, rename over `path`, fsync the directory.
    pub fn store(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = path.with_extension("json.tmp");
        let ctx = || format!("writing {}", tmp.display());
        let mut f = File::create(&tmp).ctx(ctx)?;
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| StoreError::BadState {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        json.push(b'\n');
        f.write_all(&json).ctx(ctx)?;
        f.sync_all().ctx(ctx)?;
        fs::rename(&tmp, path).ctx(|| format!("renaming {} into place", tmp.display()))?;
        sync_dir(dir).ctx(|| format!("syncing {}", dir.display()))?;
        Ok(())
    }
}
