//! Reading a volume as of a past consistency point (the NBD export, a
//! rollback) or as of the end of its journal (a verify), without writing an
//! image first: each read takes the newest data before the position read
//! from the journal records that cover it (newest first, found through the
//! index) and the rest from the image or the base image.
//!
//! The position need not be a consistency point: every record before it
//! counts (RESYNC records as writes), none after. It is fixed when the
//! reader is opened, and reads stay there while the volume moves on: the
//! records scanned after the index's end are those of that moment, index
//! rows are taken only up to where that scan started, and the image is
//! used only while its checkpoint is not past the position (else the base
//! image and the journal from the base point).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

use nix::fcntl::FlockArg;
use rtbackup_proto::{
    check_chunk_size, chunk_checksum, chunk_count, parse_record, ChunkChecksum, RTB_OP_DISCARD,
    RTB_OP_RESYNC, RTB_OP_WRITE, RTB_OP_WRITE_ZEROES,
};

use crate::error::{IoContext, Result, StoreError};
use crate::history::{HistoryView, JournalEnd, PointInfo};
use crate::index::RecordRow;
use crate::journal::SegmentSource;
use crate::state::{Position, VolumeState};
use crate::volume::{lock_volume, BASE_FILE, IMAGE_FILE, STATE_FILE};

/// Records kept decoded between reads (sequential reads of one big record
/// read it once).
const RECORD_CACHE: usize = 8;
/// Bytes [`PointReader::chunk_checksums`] reads at once (or one chunk, if
/// larger).
const CHECKSUM_READ_BYTES: u64 = 4 << 20;

/// A volume as of one consistency point, or as of the end of its journal,
/// for reading.
pub struct PointReader {
    dir: PathBuf,
    src: SegmentSource,
    point: PointInfo,
    /// Set when the reader reads the journal's end ([`crate::Store::open_end`]).
    end: Option<JournalEnd>,
    pos: Position,
    size: u64,
    block_size: u32,
    inner: Mutex<Inner>,
}

struct Inner {
    view: HistoryView,
    /// Recently read records: (segment, offset) and payload.
    cache: VecDeque<((u64, u64), Vec<u8>)>,
}

impl std::fmt::Debug for PointReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PointReader")
            .field("dir", &self.dir)
            .field("point", &self.point)
            .finish()
    }
}

/// Removes `[x, y)` from a sorted list of disjoint intervals.
fn cut(intervals: &mut Vec<(u64, u64)>, x: u64, y: u64) {
    let mut out = Vec::with_capacity(intervals.len() + 1);
    for &(a, b) in intervals.iter() {
        if b <= x || a >= y {
            out.push((a, b));
            continue;
        }
        if a < x {
            out.push((a, x));
        }
        if b > y {
            out.push((y, b));
        }
    }
    *intervals = out;
}

impl PointReader {
    pub(crate) fn new(
        dir: PathBuf,
        src: SegmentSource,
        view: HistoryView,
        point: PointInfo,
        pos: Position,
        st: &VolumeState,
    ) -> Self {
        Self {
            dir,
            src,
            point,
            end: None,
            pos,
            size: st.size_bytes,
            block_size: st.block_size,
            inner: Mutex::new(Inner {
                view,
                cache: VecDeque::new(),
            }),
        }
    }

    /// Makes a reader of the journal's end, at `end`.
    pub(crate) fn at_end(mut self, end: JournalEnd) -> Self {
        self.end = Some(end);
        self
    }

    /// The point read; for a reader of the journal's end, the newest
    /// consistency point at or before it (the end may have records after
    /// it: see [`PointReader::journal_end`]).
    pub fn point(&self) -> &PointInfo {
        &self.point
    }

    /// The journal's end, for a reader opened there
    /// ([`crate::Store::open_end`]): its last record and whether it is a
    /// consistency point's state.
    pub fn journal_end(&self) -> Option<&JournalEnd> {
        self.end.as_ref()
    }

    /// Size of the volume.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Logical block size of the volume.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The byte ranges changed after the point, up to the newest record
    /// held when the reader was opened: the union of the ranges of every
    /// write, discard, write-zeroes and resync record after the point,
    /// sorted and merged. Writing the point's bytes of these ranges onto
    /// the device in its newest state gives the device as of the point (a
    /// rollback).
    pub fn changed_extents(&self) -> Result<Vec<(u64, u64)>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut v = Vec::new();
        inner.view.records_from(self.pos, |r| {
            if r.changes_data() {
                v.push((r.start, r.start + r.len));
            }
            ControlFlow::Continue(())
        })?;
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        Ok(merged)
    }

    /// The checksum ([`chunk_checksum`]) of every chunk of `chunk_size`
    /// bytes of the volume as of the point, in order; the last chunk is cut
    /// at the volume's end. Reads 4 MiB (or one chunk, if larger) at
    /// a time and calls `f(first_chunk, checksums)` with the chunks of each
    /// read, so memory does not grow with the volume. `chunk_size` is a
    /// power of two from 4 KiB to 16 MiB. An error of `f` stops the scan and
    /// is returned. Returns the number of chunks.
    pub fn chunk_checksums<E: From<StoreError>>(
        &self,
        chunk_size: u64,
        mut f: impl FnMut(u64, &[ChunkChecksum]) -> std::result::Result<(), E>,
    ) -> std::result::Result<u64, E> {
        check_chunk_size(chunk_size).map_err(|e| StoreError::BadParameters(e.to_string()))?;
        let chunks = chunk_count(self.size, chunk_size);
        let per_read = (CHECKSUM_READ_BYTES / chunk_size).max(1);
        let mut buf = Vec::new();
        let mut sums = Vec::with_capacity(per_read as usize);
        let mut first = 0;
        while first < chunks {
            let offset = first * chunk_size;
            let len = (per_read * chunk_size).min(self.size - offset);
            buf.resize(len as usize, 0);
            self.read_at(&mut buf, offset)?;
            sums.clear();
            sums.extend(buf.chunks(chunk_size as usize).map(chunk_checksum));
            f(first, &sums)?;
            first += sums.len() as u64;
        }
        Ok(chunks)
    }

    /// Fills `buf` with the volume's bytes at `offset` as of the point (or
    /// the journal's end).
    /// Fails if retention has folded the point away meanwhile.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                StoreError::BadParameters(format!(
                    "read of {} bytes at {offset} passes the end of the volume ({} bytes)",
                    buf.len(),
                    self.size
                ))
            })?;
        // The shared volume lock keeps the image, the base image, the state
        // and the segments still for this read.
        let _lock = lock_volume(&self.dir, FlockArg::LockShared)?;
        let st = VolumeState::load(&self.dir.join(STATE_FILE))?;
        if st.oldest_point().pos.is_after(&self.pos) {
            return Err(StoreError::NoSuchPoint(format!(
                "the point of {} has been folded into the base image by retention",
                self.point.time
            )));
        }
        let (from, file) =
            if st.checkpoint.is_after(&self.pos) && !st.checkpoint.same_state(&self.pos) {
                (st.base(), BASE_FILE)
            } else {
                (st.checkpoint, IMAGE_FILE)
            };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *inner;
        let mut uncovered = vec![(offset, end)];
        // Newest first: the journal after the index, then the index.
        let before_pos = |r: &RecordRow| {
            let at = r.start();
            !from.is_after(&at) && self.pos.is_after(&at)
        };
        let overlaps = |r: &RecordRow| r.len > 0 && r.start < end && r.start + r.len > offset;
        let tail: Vec<RecordRow> = inner
            .view
            .tail
            .records
            .iter()
            .rev()
            .filter(|r| before_pos(r) && overlaps(r))
            .copied()
            .collect();
        for r in &tail {
            self.fill(&mut inner.cache, buf, offset, &mut uncovered, r)?;
            if uncovered.is_empty() {
                break;
            }
        }
        if !uncovered.is_empty() {
            let upto = if self.pos.is_after(&inner.view.tail_from) {
                inner.view.tail_from
            } else {
                self.pos
            };
            // With nothing indexed between the image's state and the point
            // (the latest point, applied) the image alone answers, without
            // asking the index about the range's whole history.
            if let Some(ix) = inner.view.index.as_ref().filter(|_| upto.is_after(&from)) {
                let cache = &mut inner.cache;
                ix.overlapping(offset, end, from, upto, |r| {
                    self.fill(cache, buf, offset, &mut uncovered, &r)?;
                    Ok(if uncovered.is_empty() {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    })
                })?;
            }
        }
        if !uncovered.is_empty() {
            let path = self.dir.join(file);
            let f = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
            for (a, b) in uncovered {
                let dst = &mut buf[(a - offset) as usize..(b - offset) as usize];
                f.read_exact_at(dst, a)
                    .ctx(|| format!("reading {} at {a}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Copies what record `r` says about the still uncovered parts of
    /// `buf` (which starts at `offset`) and marks them covered.
    fn fill(
        &self,
        cache: &mut VecDeque<((u64, u64), Vec<u8>)>,
        buf: &mut [u8],
        offset: u64,
        uncovered: &mut Vec<(u64, u64)>,
        r: &RecordRow,
    ) -> Result<()> {
        let (rs, re) = (r.start, r.start + r.len);
        let parts: Vec<(u64, u64)> = uncovered
            .iter()
            .filter_map(|&(a, b)| {
                let (x, y) = (a.max(rs), b.min(re));
                (x < y).then_some((x, y))
            })
            .collect();
        if parts.is_empty() {
            return Ok(());
        }
        match r.op {
            RTB_OP_WRITE | RTB_OP_RESYNC => {
                let payload = self.payload(cache, r)?;
                for &(x, y) in &parts {
                    buf[(x - offset) as usize..(y - offset) as usize]
                        .copy_from_slice(&payload[(x - rs) as usize..(y - rs) as usize]);
                }
            }
            RTB_OP_DISCARD | RTB_OP_WRITE_ZEROES => {
                for &(x, y) in &parts {
                    buf[(x - offset) as usize..(y - offset) as usize].fill(0);
                }
            }
            _ => return Ok(()),
        }
        for (x, y) in parts {
            cut(uncovered, x, y);
        }
        Ok(())
    }

    /// The payload of record `r`, read from its segment and checked (both
    /// checksums), or from the cache.
    fn payload<'c>(
        &self,
        cache: &'c mut VecDeque<((u64, u64), Vec<u8>)>,
        r: &RecordRow,
    ) -> Result<&'c [u8]> {
        let key = (r.segment, r.offset);
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            let hit = cache.remove(i).unwrap_or_default();
            cache.push_front(hit);
        } else {
            let mut bytes = vec![0u8; r.size as usize];
            self.src
                .open(r.segment, r.offset)
                .and_then(|mut rd| rd.read_exact(&mut bytes))
                .ctx(|| {
                    format!(
                        "reading record seq {} from segment {} at offset {}",
                        r.seq,
                        self.src.describe(r.segment),
                        r.offset
                    )
                })?;
            let rec = parse_record(&bytes).map_err(|e| StoreError::Corrupt {
                segment: self.src.describe(r.segment),
                offset: r.offset,
                reason: e.to_string(),
            })?;
            if rec.seq() != r.seq || rec.byte_range() != (r.start, r.start + r.len) {
                return Err(StoreError::Corrupt {
                    segment: self.src.describe(r.segment),
                    offset: r.offset,
                    reason: format!(
                        "the index says record seq {} is here, the journal holds seq {}",
                        r.seq,
                        rec.seq()
                    ),
                });
            }
            let payload = rec.payload.to_vec();
            cache.push_front((key, payload));
            cache.truncate(RECORD_CACHE);
        }
        Ok(cache.front().map(|(_, p)| p.as_slice()).unwrap_or_default())
    }
}
