//! Reading a volume's journal across segments.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use rtbackup_proto::{RecordError, RecordRef};

use crate::error::{IoContext, Result, StoreError};
use crate::section::SectionTracker;
use crate::segment::{
    read_segment_header, segment_file_name, Payloads, ReadStop, SegmentHeader, SegmentRead,
    SegmentReader, SegmentStore, SEGMENT_HEADER_LEN,
};
use crate::state::Position;

/// Finds a volume's segments: the local journal directory first (the active
/// segment, or one sealed but not yet moved), then the segment store.
#[derive(Debug, Clone)]
pub(crate) struct SegmentSource {
    pub(crate) volume: String,
    pub(crate) journal_dir: PathBuf,
    pub(crate) store: Arc<dyn SegmentStore>,
}

impl SegmentSource {
    pub(crate) fn local_path(&self, id: u64) -> PathBuf {
        self.journal_dir.join(segment_file_name(id))
    }

    /// Name of segment `id` for messages.
    pub(crate) fn describe(&self, id: u64) -> String {
        let local = self.local_path(id);
        if local.exists() {
            local.display().to_string()
        } else {
            self.store.describe(&self.volume, id)
        }
    }

    /// Opens segment `id` at `offset`. A segment moved from the journal
    /// directory to the store between the two attempts is still found
    /// (moves are atomic renames or copy-then-delete).
    pub(crate) fn open(&self, id: u64, offset: u64) -> io::Result<Box<dyn SegmentRead>> {
        match File::open(self.local_path(id)) {
            Ok(mut f) => {
                f.seek(SeekFrom::Start(offset))?;
                Ok(Box::new(f))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.store.open_read(&self.volume, id, offset)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads and checks the header of segment `id`.
    pub(crate) fn header(&self, id: u64) -> Result<SegmentHeader> {
        let mut r = self.open(id, 0).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Corrupt {
                    segment: self.describe(id),
                    offset: 0,
                    reason: format!("segment {} is missing", segment_file_name(id)),
                }
            } else {
                StoreError::Io {
                    context: format!("opening segment {}", self.describe(id)),
                    source: e,
                }
            }
        })?;
        let h = read_segment_header(&mut r).map_err(|reason| StoreError::Corrupt {
            segment: self.describe(id),
            offset: 0,
            reason,
        })?;
        if h.id != id {
            return Err(StoreError::Corrupt {
                segment: self.describe(id),
                offset: 0,
                reason: format!("header says segment {}", h.id),
            });
        }
        Ok(h)
    }

    fn corrupt(&self, id: u64, offset: u64, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            segment: self.describe(id),
            offset,
            reason: reason.into(),
        }
    }
}

/// What a [`walk`] reports.
pub(crate) enum Event<'a, 'b> {
    /// A valid record between two positions (without its payload in a
    /// [`walk_reading`] with [`Payloads::Indexed`]).
    Record {
        rec: &'a RecordRef<'b>,
        start: Position,
        end: Position,
    },
    /// The walk leaves a segment (ending at `prev_end`) for the next one.
    Boundary {
        prev_end: Position,
        next: SegmentHeader,
    },
}

/// Invalid bytes at the end of the last segment.
#[derive(Debug)]
pub(crate) struct Tail {
    pub(crate) offset: u64,
    pub(crate) error: RecordError,
}

/// How a [`walk`] ended.
pub(crate) struct WalkEnd {
    /// Position after the last valid record.
    pub(crate) end: Position,
    /// Invalid bytes after `end` in the last segment (a torn tail after a
    /// crash, or a record being written right now).
    pub(crate) tail: Option<Tail>,
}

/// The position at the start of a segment.
pub(crate) fn segment_start(h: &SegmentHeader) -> Position {
    Position {
        segment: h.id,
        offset: SEGMENT_HEADER_LEN,
        ring_id: h.ring_id,
        seq: h.first_seq.saturating_sub(1),
    }
}

/// Walks the journal from `from` through segment `last_segment`, or until
/// the position `until`, calling `f` for every record and segment boundary.
/// Checks sequence continuity. Invalid bytes in a segment before
/// `last_segment` (or a walk that cannot reach `until`) are corruption;
/// invalid bytes in `last_segment` end the walk and are reported as its
/// tail.
pub(crate) fn walk(
    src: &SegmentSource,
    from: Position,
    last_segment: u64,
    until: Option<Position>,
    f: impl FnMut(Event<'_, '_>) -> Result<()>,
) -> Result<WalkEnd> {
    walk_reading(src, from, last_segment, until, Payloads::All, f)
}

/// [`walk`], reading the records' payloads as `payloads` says (with
/// [`Payloads::Indexed`], most records reach `f` without their payload).
pub(crate) fn walk_reading(
    src: &SegmentSource,
    from: Position,
    last_segment: u64,
    until: Option<Position>,
    payloads: Payloads,
    mut f: impl FnMut(Event<'_, '_>) -> Result<()>,
) -> Result<WalkEnd> {
    let mut header = src.header(from.segment)?;
    let mut pos = from;
    if pos.offset < SEGMENT_HEADER_LEN {
        return Err(src.corrupt(
            pos.segment,
            pos.offset,
            "position inside the segment header",
        ));
    }
    if pos.offset == SEGMENT_HEADER_LEN {
        pos = segment_start(&header);
    } else if pos.ring_id != header.ring_id {
        return Err(src.corrupt(
            pos.segment,
            pos.offset,
            format!(
                "position of ring {:#x} in a segment of ring {:#x}",
                pos.ring_id, header.ring_id
            ),
        ));
    }
    loop {
        let seg = pos.segment;
        let r = src
            .open(seg, pos.offset)
            .ctx(|| format!("opening segment {}", src.describe(seg)))?;
        let mut reader = SegmentReader::new(r, pos.offset);
        loop {
            if until.is_some_and(|u| u.same_place(&pos)) {
                return Ok(WalkEnd {
                    end: pos,
                    tail: None,
                });
            }
            let rec = match reader.next_record(payloads) {
                Ok(rec) => rec,
                Err(ReadStop::End) => break,
                Err(ReadStop::Invalid { offset, error }) => {
                    if seg >= last_segment && until.is_none() {
                        return Ok(WalkEnd {
                            end: pos,
                            tail: Some(Tail { offset, error }),
                        });
                    }
                    return Err(src.corrupt(seg, offset, error.to_string()));
                }
                Err(ReadStop::Io(e)) => {
                    return Err(StoreError::Io {
                        context: format!(
                            "reading segment {} at offset {}",
                            src.describe(seg),
                            reader.offset()
                        ),
                        source: e,
                    })
                }
            };
            let start = pos;
            // No seq follows u64::MAX: a record with it is valid on its own,
            // and `pos.seq + 1` overflowed on the next one (a panic in
            // debug builds; tools/fuzz/regressions/segment).
            let Some(want) = pos.seq.checked_add(1) else {
                return Err(src.corrupt(
                    seg,
                    start.offset,
                    format!("record seq {} after seq {}", rec.seq(), pos.seq),
                ));
            };
            if rec.is_pad() || rec.seq() != want {
                return Err(src.corrupt(
                    seg,
                    start.offset,
                    format!("record seq {} where seq {want} belongs", rec.seq()),
                ));
            }
            let end = Position {
                segment: seg,
                offset: start.offset + u64::from(rec.header.size),
                ring_id: header.ring_id,
                seq: rec.seq(),
            };
            if let Some(u) = until {
                if u.segment == seg && end.offset > u.offset {
                    return Err(src.corrupt(
                        seg,
                        start.offset,
                        format!("record crosses the position {}", u.offset),
                    ));
                }
            }
            f(Event::Record {
                rec: &rec,
                start,
                end,
            })?;
            pos = end;
        }
        if let Some(u) = until {
            if u.segment <= seg {
                return Err(src.corrupt(
                    seg,
                    pos.offset,
                    format!("segment ends before position {}", u.offset),
                ));
            }
        }
        if seg >= last_segment {
            return Ok(WalkEnd {
                end: pos,
                tail: None,
            });
        }
        let next = src.header(seg + 1)?;
        // (checked_add: no seq follows u64::MAX, as above.)
        if next.ring_id == pos.ring_id && Some(next.first_seq) != pos.seq.checked_add(1) {
            return Err(src.corrupt(
                seg + 1,
                0,
                format!(
                    "segment starts at seq {} but the previous one ends at seq {}",
                    next.first_seq, pos.seq
                ),
            ));
        }
        if next.first_seq == 0 {
            return Err(src.corrupt(seg + 1, 0, "segment header with first seq 0"));
        }
        f(Event::Boundary {
            prev_end: pos,
            next,
        })?;
        header = next;
        pos = segment_start(&header);
    }
}

/// Tracks consistency points seen in a walk or in appended records, and
/// the resync sections that make candidates not points.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpTracker {
    /// The last consistency point seen.
    pub(crate) last: Position,
    /// The resync sections after the last record seen.
    pub(crate) sections: SectionTracker,
}

impl CpTracker {
    /// A tracker starting at the consistency point `start` (where no
    /// resync section is open).
    pub(crate) fn new(start: Position) -> Self {
        Self {
            last: start,
            sections: SectionTracker::default(),
        }
    }

    /// Notes a record between `start` and `end`.
    pub(crate) fn record(&mut self, rec: &RecordRef<'_>, start: Position, end: Position) {
        let p = self.sections.record(rec);
        if p.before {
            self.last = start;
        }
        if p.after.is_some() {
            self.last = end;
        }
    }

    /// Notes a segment boundary: the end of a ring is a consistency point
    /// (unless a resync section stays open).
    pub(crate) fn boundary(&mut self, prev_end: Position, next: &SegmentHeader) {
        if next.ring_id != prev_end.ring_id && self.sections.ring_end(prev_end.seq) {
            self.last = prev_end;
        }
    }

    pub(crate) fn event(&mut self, e: &Event<'_, '_>) {
        match e {
            Event::Record { rec, start, end } => self.record(rec, *start, *end),
            Event::Boundary { prev_end, next } => self.boundary(*prev_end, next),
        }
    }
}
