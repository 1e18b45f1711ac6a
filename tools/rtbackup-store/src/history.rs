//! History of a volume: the consistency points, marks and records from the
//! base checkpoint to the end of the journal, and how a restore point given
//! by a user (a time, a seq, a mark) is found among them.

use std::fmt;
use std::ops::ControlFlow;
use std::str::FromStr;

use serde::Serialize;

use crate::clock::system_ns as now_ns;
use crate::error::{Result, StoreError};
use crate::index::{Index, MarkRow, PointKind, PointRow, RecordRow, Rows};
use crate::journal::{walk_reading, Event, SegmentSource};
use crate::section::SectionTracker;
use crate::segment::Payloads;
use crate::state::Position;

/// A restore point as a user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointSpec {
    /// The newest consistency point.
    Latest,
    /// The newest consistency point at or before this time (ns since the
    /// epoch, the protected host's clock).
    Time(u64),
    /// The newest consistency point at or before the end of the newest
    /// record with this seq.
    Seq(u64),
    /// The consistency point of the mark with this name (an error if the
    /// name names several points).
    Mark(String),
    /// The point at this journal position (segment, offset): its id, as
    /// `points` prints it (`id:SEGMENT.OFFSET`), never ambiguous.
    Id(u64, u64),
}

/// Formats nanoseconds since the epoch as RFC 3339 (UTC), with as many
/// fractional digits as needed to read back the same instant.
pub fn format_time(ns: u64) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let nanos = (ns % 1_000_000_000) as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => format!("{ns}ns"),
    }
}

impl FromStr for PointSpec {
    type Err = String;

    /// `latest`, `now`, a seq (`1234` or `seq:1234`), a mark
    /// (`mark:NAME`), an RFC 3339 time (`2026-11-26T05:00:00Z`,
    /// `2026-11-26T06:00:00+01:00`, `2026-11-26 05:00:00` in UTC) or a
    /// time relative to now (`10 minutes ago`, `1h30m ago`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty point: give a time, a seq or mark:NAME".into());
        }
        if s == "latest" {
            return Ok(PointSpec::Latest);
        }
        if s == "now" {
            return Ok(PointSpec::Time(now_ns()));
        }
        if let Some(n) = s
            .strip_prefix("seq:")
            .or(s.bytes().all(|b| b.is_ascii_digit()).then_some(s))
        {
            return n
                .parse::<u64>()
                .map(PointSpec::Seq)
                .map_err(|e| format!("bad seq {n:?}: {e}"));
        }
        if let Some(id) = s.strip_prefix("id:") {
            let bad =
                || format!("bad point id {id:?}: expected SEGMENT.OFFSET, as `points` prints it");
            let (seg, off) = id.split_once('.').ok_or_else(bad)?;
            return Ok(PointSpec::Id(
                seg.parse().map_err(|_| bad())?,
                off.parse().map_err(|_| bad())?,
            ));
        }
        if let Some(name) = s.strip_prefix("mark:") {
            rtbackup_proto::validate_volume_name(name)
                .map_err(|e| format!("bad mark name {name:?}: {e}"))?;
            return Ok(PointSpec::Mark(name.to_owned()));
        }
        if let Some(ago) = s.strip_suffix(" ago") {
            let d = humantime::parse_duration(ago.trim())
                .map_err(|e| format!("bad duration {ago:?} in {s:?}: {e}"))?;
            let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            return Ok(PointSpec::Time(now_ns().saturating_sub(ns)));
        }
        let t = chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                    .or_else(|_| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
                    .map(|t| t.and_utc())
            })
            .map_err(|_| {
                format!(
                    "cannot read {s:?} as a point: expected latest, a time (2026-11-26T05:00:00Z, \
                     \"10 minutes ago\"), a seq (1234 or seq:1234) or mark:NAME"
                )
            })?;
        let ns = t
            .timestamp_nanos_opt()
            .filter(|&n| n >= 0)
            .ok_or_else(|| format!("time {s:?} is out of range"))?;
        Ok(PointSpec::Time(ns as u64))
    }
}

impl fmt::Display for PointSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PointSpec::Latest => write!(f, "latest"),
            PointSpec::Time(ns) => write!(f, "{}", format_time(*ns)),
            PointSpec::Seq(n) => write!(f, "seq:{n}"),
            PointSpec::Mark(m) => write!(f, "mark:{m}"),
            PointSpec::Id(seg, off) => write!(f, "id:{seg}.{off}"),
        }
    }
}

/// Splits `VOLUME@POINT` (NBD export names) into the volume and the
/// point; `VOLUME` alone is the latest point.
pub fn parse_volume_at(name: &str) -> std::result::Result<(&str, PointSpec), String> {
    let (vol, spec) = match name.split_once('@') {
        Some((v, p)) => (v, p.parse::<PointSpec>()?),
        None => (name, PointSpec::Latest),
    };
    rtbackup_proto::validate_volume_name(vol).map_err(|e| e.to_string())?;
    Ok((vol, spec))
}

/// Turns journal walk events into index rows.
///
/// Point times never go backwards. A point's host time below the previous
/// point's (other than the base point's) is raised to it (and counted in
/// [`Rows::clamped`]): a host
/// whose clock was stepped back, or that forged a time, cannot put a new
/// point before older ones. A point's received time is the backup host's
/// clock when it is scanned (`now`, right after the records became
/// durable), never after the next segment was created (a scan of older
/// journal, as in an index rebuild) and never before the previous point's.
pub(crate) struct Scanner {
    last_point: PointRow,
    last_time: Option<u64>,
    /// The backup host's clock at the scan.
    now: u64,
    /// The first point in `rows` of the segment being walked, and the
    /// received time of the point before it.
    segment_first: usize,
    segment_floor: u64,
    /// Resync sections, which make consistency-point candidates not points.
    pub(crate) sections: SectionTracker,
    /// The end of the previous segment, when the walk just crossed into a
    /// segment of the same ring: the same place in the stream as the new
    /// segment's start, where points are recorded.
    crossed: Option<Position>,
    pub(crate) rows: Rows,
}

impl Scanner {
    /// A scan continuing after the point `last_point`, a record of time
    /// `last_time` and with the resync sections as `sections`, at `now` on
    /// the backup host's clock.
    pub(crate) fn new(
        last_point: PointRow,
        last_time: Option<u64>,
        sections: SectionTracker,
        now: u64,
    ) -> Self {
        Self {
            last_point,
            last_time,
            now,
            segment_first: 0,
            segment_floor: last_point.received_ns,
            sections,
            crossed: None,
            rows: Rows::default(),
        }
    }

    fn point(&mut self, pos: Position, time_ns: u64, kind: PointKind) {
        let last = self.last_point;
        if last.pos.same_place(&pos) {
            return;
        }
        // A new volume's base point has the backup host's time, not the
        // protected host's: no floor for host times.
        let floor = match last.kind {
            PointKind::Base => 0,
            _ => last.time_ns,
        };
        if time_ns < floor {
            self.rows.clamped += 1;
        }
        let p = PointRow {
            pos,
            time_ns: time_ns.max(floor),
            received_ns: self.now.max(last.received_ns),
            kind,
        };
        self.rows.points.push(p);
        self.last_point = p;
    }

    /// The walk leaves a segment for one created at `created_ns`: the
    /// segment's points were received before then.
    fn segment_end(&mut self, created_ns: u64) {
        let floor = self.segment_floor;
        for p in &mut self.rows.points[self.segment_first..] {
            p.received_ns = p.received_ns.min(created_ns).max(floor);
        }
        if let Some(p) = self.rows.points.last() {
            self.last_point.received_ns = p.received_ns;
        }
        self.segment_first = self.rows.points.len();
        self.segment_floor = self.last_point.received_ns;
    }

    pub(crate) fn event(&mut self, e: &Event<'_, '_>) {
        match e {
            Event::Record { rec, start, end } => {
                let h = &rec.header;
                let points = self.sections.record(rec);
                if points.before {
                    // A point is recorded at one journal position even
                    // where a segment boundary gives it two, so that the
                    // point after record N is always at or before N's end.
                    let at = self.crossed.unwrap_or(*start);
                    self.point(at, h.time_ns, PointKind::Preflush);
                }
                self.crossed = None;
                let (first, _) = rec.byte_range();
                self.rows.records.push(RecordRow {
                    segment: start.segment,
                    offset: start.offset,
                    size: end.offset - start.offset,
                    ring_id: end.ring_id,
                    seq: h.seq,
                    time_ns: h.time_ns,
                    op: h.op,
                    flags: h.flags,
                    start: first,
                    len: h.len,
                    consistent_seq: rec.consistent_seq(),
                });
                if let Some(name) = rec.mark_name() {
                    self.rows.marks.push(MarkRow {
                        segment: start.segment,
                        offset: start.offset,
                        name: name.to_owned(),
                        ring_id: end.ring_id,
                        seq: h.seq,
                        time_ns: h.time_ns,
                        point: self.last_point.pos,
                    });
                }
                if let Some(kind) = points.after {
                    self.point(*end, h.time_ns, kind);
                }
                self.last_time = Some(h.time_ns);
            }
            Event::Boundary { prev_end, next } => {
                if next.ring_id != prev_end.ring_id {
                    if self.sections.ring_end(prev_end.seq) {
                        let t = self.last_time.unwrap_or(next.created_ns);
                        self.point(*prev_end, t, PointKind::RingEnd);
                    }
                    self.crossed = None;
                } else {
                    self.crossed = Some(*prev_end);
                }
                self.segment_end(next.created_ns);
            }
        }
    }
}

/// What [`scan`] found.
pub(crate) struct Scanned {
    pub(crate) rows: Rows,
    /// Where the scan ended.
    pub(crate) end: Position,
    /// The resync sections there.
    pub(crate) sections: SectionTracker,
}

/// Scans the journal from `from` (through segment `last`, or up to
/// `until`, reading `payloads`) into rows, continuing `sc` (made for the
/// last point, last record time and resync sections at `from`).
pub(crate) fn scan(
    src: &SegmentSource,
    from: Position,
    last: u64,
    until: Option<Position>,
    payloads: Payloads,
    mut sc: Scanner,
) -> Result<Scanned> {
    let end = walk_reading(src, from, last, until, payloads, |e| {
        sc.event(&e);
        Ok(())
    })?;
    Ok(Scanned {
        rows: sc.rows,
        end: end.end,
        sections: sc.sections,
    })
}

/// The id of the point at `pos` (`SEGMENT.OFFSET`).
fn point_id(pos: &Position) -> String {
    format!("{}.{}", pos.segment, pos.offset)
}

/// A consistency point as `points` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointInfo {
    /// When the volume was in this state (the protected host's clock,
    /// never before an earlier point's).
    pub time: String,
    /// The same, ns since the epoch.
    pub time_ns: u64,
    /// When the backup host had the point (its own clock, which retention
    /// and the apply delay go by).
    pub received: String,
    /// The same, ns since the epoch.
    pub received_ns: u64,
    /// Ring of the last record before the point.
    pub ring_id: u64,
    /// Seq of the last record before the point (0: none of this ring).
    pub seq: u64,
    /// Why it is a consistency point.
    pub kind: PointKind,
    /// Marks naming this point.
    pub marks: Vec<String>,
    /// Its id (`restore --at id:ID`): the journal position, unique in the
    /// volume's history.
    pub id: String,
    /// Journal position (segment, offset).
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

impl PointInfo {
    pub(crate) fn new(p: &PointRow, marks: Vec<String>) -> Self {
        Self {
            time: format_time(p.time_ns),
            time_ns: p.time_ns,
            received: format_time(p.received_ns),
            received_ns: p.received_ns,
            ring_id: p.pos.ring_id,
            seq: p.pos.seq,
            kind: p.kind,
            marks,
            id: point_id(&p.pos),
            segment: p.pos.segment,
            offset: p.pos.offset,
        }
    }
}

/// The end of a volume's journal, where the next record will be applied:
/// after the last (durable) record held, whatever the consistency points
/// say ([`crate::Store::open_end`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalEnd {
    /// Time of the last record (the protected host's clock; the base
    /// point's if the journal holds no record after it).
    pub time: String,
    /// The same, ns since the epoch.
    pub time_ns: u64,
    /// Ring of the last record (the base point's if none).
    pub ring_id: u64,
    /// Seq of the last record (the base point's if none).
    pub seq: u64,
    /// Whether the volume's bytes there are those of a consistency point:
    /// no record after the newest point at or before the end changes data.
    /// False after writes that no flush followed yet, and inside a resync
    /// section.
    pub consistent: bool,
    /// Journal position (segment, offset).
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
}

/// The history of a volume as read-only commands see it: the index (if
/// usable) plus the journal after what it holds, scanned now.
pub(crate) struct HistoryView {
    pub(crate) base: PointRow,
    pub(crate) index: Option<Index>,
    /// Rows of the journal after the index's end (or after the base).
    pub(crate) tail: Rows,
    /// Where the tail starts.
    pub(crate) tail_from: Position,
    /// Where the journal ended when it was scanned: after its last valid
    /// record (durable or not: a server may be appending).
    pub(crate) end: Position,
}

impl HistoryView {
    /// Builds the view of a volume whose base image stands at `base`.
    pub(crate) fn open(
        src: &SegmentSource,
        base: PointRow,
        index: Option<Index>,
        last_segment: u64,
    ) -> Result<Self> {
        let mut from = base.pos;
        let mut last_point = base;
        let mut last_time = None;
        // The base point is a consistency point: no resync section open.
        let mut sections = SectionTracker::default();
        let mut index = index;
        if let Some(ix) = &index {
            // All of one commit: the server may index more meanwhile.
            let state = ix.read_consistent(|ix| match ix.indexed()? {
                Some(i) if !base.pos.is_after(&i) => Ok(Some((
                    i,
                    ix.last_point()?.unwrap_or(base),
                    ix.last_record_time()?,
                    ix.indexed_sections()?,
                ))),
                _ => Ok(None),
            })?;
            match state {
                Some(s) => (from, last_point, last_time, sections) = s,
                // Behind the base (a compaction trims it next): unusable.
                None => index = None,
            }
        }
        let tail = scan(
            src,
            from,
            last_segment,
            None,
            // The journal's end may be torn or being written: checked whole.
            Payloads::All,
            Scanner::new(last_point, last_time, sections, now_ns()),
        )?;
        Ok(Self {
            base,
            index,
            tail: tail.rows,
            tail_from: from,
            end: tail.end,
        })
    }

    /// Every point, oldest first, with the names of the marks on each.
    pub(crate) fn points(&self) -> Result<Vec<PointInfo>> {
        let mut points = vec![self.base];
        let mut marks = Vec::new();
        if let Some(ix) = &self.index {
            points.extend(
                ix.points(self.base.pos)?
                    .into_iter()
                    .filter(|p| p.pos.is_after(&self.base.pos)),
            );
            marks.extend(ix.marks(self.base.pos)?);
        }
        points.extend(self.tail.points.iter().copied());
        marks.extend(self.tail.marks.iter().cloned());
        points.dedup_by(|a, b| a.pos.same_place(&b.pos));
        let mut out = Vec::with_capacity(points.len());
        let mut mi = marks.iter().peekable();
        for p in &points {
            // Marks are in journal order, and so are the points they name.
            let mut names = Vec::new();
            while let Some(m) = mi.peek() {
                if m.point.is_after(&p.pos) {
                    break;
                }
                if m.point.same_place(&p.pos) {
                    names.push(m.name.clone());
                }
                mi.next();
            }
            out.push(PointInfo::new(p, names));
        }
        Ok(out)
    }

    /// The point `p` as shown to users, with the names of its marks.
    pub(crate) fn info(&self, p: &PointRow) -> Result<PointInfo> {
        let mut names = match &self.index {
            Some(ix) => ix.marks_at(p.pos)?,
            None => Vec::new(),
        };
        names.extend(
            self.tail
                .marks
                .iter()
                .filter(|m| m.point.same_place(&p.pos))
                .map(|m| m.name.clone()),
        );
        names.dedup();
        Ok(PointInfo::new(p, names))
    }

    fn newest_point(&self) -> Result<PointRow> {
        if let Some(p) = self.tail.points.last() {
            return Ok(*p);
        }
        if let Some(ix) = &self.index {
            if let Some(p) = ix.last_point()? {
                if !self.base.pos.is_after(&p.pos) {
                    return Ok(p);
                }
            }
        }
        Ok(self.base)
    }

    /// The newest point at or before `pos` (the base point if none).
    pub(crate) fn point_at_or_before(&self, pos: Position) -> Result<PointRow> {
        if let Some(p) = self
            .tail
            .points
            .iter()
            .rev()
            .find(|p| !p.pos.is_after(&pos))
        {
            return Ok(*p);
        }
        if let Some(ix) = &self.index {
            if let Some(p) = ix.point_at_or_before(pos)? {
                if !self.base.pos.is_after(&p.pos) {
                    return Ok(p);
                }
            }
        }
        Ok(self.base)
    }

    /// Finds the point `spec` names, with the marks on it.
    pub(crate) fn resolve(&self, spec: &PointSpec) -> Result<PointRow> {
        let oldest = || format_time(self.base.time_ns);
        match spec {
            PointSpec::Latest => self.newest_point(),
            PointSpec::Time(t) => {
                if let Some(p) = self.tail.points.iter().rev().find(|p| p.time_ns <= *t) {
                    return Ok(*p);
                }
                if let Some(ix) = &self.index {
                    if let Some(p) = ix.point_at_time(*t)? {
                        if !self.base.pos.is_after(&p.pos) {
                            return Ok(p);
                        }
                    }
                }
                if self.base.time_ns <= *t {
                    return Ok(self.base);
                }
                Err(StoreError::NoSuchPoint(format!(
                    "{} is before the oldest restore point held ({})",
                    format_time(*t),
                    oldest()
                )))
            }
            PointSpec::Seq(n) => {
                let mut recs: Vec<RecordRow> = match &self.index {
                    Some(ix) => ix.records_with_seq(*n)?,
                    None => Vec::new(),
                };
                recs.extend(self.tail.records.iter().filter(|r| r.seq == *n).copied());
                recs.retain(|r| !self.base.pos.is_after(&r.end()));
                let mut points = Vec::new();
                for r in &recs {
                    points.push(self.point_at_or_before(r.end())?);
                }
                if points.is_empty() && self.base.pos.seq == *n {
                    // The record that ends at the base point (folded).
                    points.push(self.base);
                }
                self.one_of(
                    points,
                    || format!("seq {n}"),
                    || {
                        format!(
                            "no record with seq {n} in the history held (it starts at {})",
                            oldest()
                        )
                    },
                )
            }
            PointSpec::Mark(name) => {
                let mut marks: Vec<MarkRow> = match &self.index {
                    Some(ix) => ix.marks_named(name)?,
                    None => Vec::new(),
                };
                marks.extend(self.tail.marks.iter().filter(|m| &m.name == name).cloned());
                marks.retain(|m| !self.base.pos.is_after(&m.point));
                let mut points = Vec::new();
                for m in &marks {
                    points.push(self.point_at_or_before(m.point)?);
                }
                self.one_of(
                    points,
                    || format!("mark {name:?}"),
                    || {
                        format!(
                            "no mark {name:?} in the history held (it starts at {})",
                            oldest()
                        )
                    },
                )
            }
            PointSpec::Id(segment, offset) => {
                let pos = Position {
                    segment: *segment,
                    offset: *offset,
                    ring_id: 0,
                    seq: 0,
                };
                let p = self.point_at_or_before(pos)?;
                if p.pos.same_place(&pos) {
                    Ok(p)
                } else {
                    Err(StoreError::NoSuchPoint(format!(
                        "no point with id {segment}.{offset} in the history held (it starts at {})",
                        oldest()
                    )))
                }
            }
        }
    }

    /// The one point of `points` (duplicates merged): none is `missing`,
    /// several are ambiguous, listed with their ids.
    fn one_of(
        &self,
        mut points: Vec<PointRow>,
        what: impl FnOnce() -> String,
        missing: impl FnOnce() -> String,
    ) -> Result<PointRow> {
        points.sort_by_key(|p| (p.pos.segment, p.pos.offset));
        points.dedup_by(|a, b| a.pos.same_place(&b.pos));
        match points.as_slice() {
            [] => Err(StoreError::NoSuchPoint(missing())),
            [p] => Ok(*p),
            many => Err(StoreError::AmbiguousPoint(format!(
                "{} names {} points: {}; give one by its id",
                what(),
                many.len(),
                many.iter()
                    .map(|p| format!(
                        "id:{} ({}, ring {:#x} seq {})",
                        point_id(&p.pos),
                        format_time(p.time_ns),
                        p.pos.ring_id,
                        p.pos.seq
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The journal's end at `pos`, a record boundary at or before
    /// [`HistoryView::end`] and not before the base point: the last record
    /// before it and whether the bytes there are a consistency point's;
    /// with the newest point at or before it.
    pub(crate) fn end_at(&self, pos: Position) -> Result<(JournalEnd, PointRow)> {
        if self.base.pos.is_after(&pos) || pos.is_after(&self.end) {
            return Err(StoreError::NoSuchPoint(format!(
                "journal position {}:{} is outside the history held",
                pos.segment, pos.offset
            )));
        }
        // Index rows stop at the tail's start.
        let indexed_upto = if pos.is_after(&self.tail_from) {
            self.tail_from
        } else {
            pos
        };
        let last = match self
            .tail
            .records
            .iter()
            .rev()
            .find(|r| pos.is_after(&r.start()))
        {
            Some(r) => Some(*r),
            None => match &self.index {
                Some(ix) => ix.last_record_before(indexed_upto)?,
                None => None,
            },
        }
        // A record before the base point is folded into the base image.
        .filter(|r| !self.base.pos.is_after(&r.start()));
        if let Some(r) = last.filter(|r| r.end().is_after(&pos)) {
            return Err(StoreError::BadParameters(format!(
                "journal position {}:{} is inside the record of seq {}",
                pos.segment, pos.offset, r.seq
            )));
        }
        let point = self.point_at_or_before(pos)?;
        let between = |r: &&RecordRow| !point.pos.is_after(&r.start()) && pos.is_after(&r.start());
        let mut changed = self
            .tail
            .records
            .iter()
            .filter(between)
            .any(RecordRow::changes_data);
        if let Some(ix) = self.index.as_ref() {
            if !changed && indexed_upto.is_after(&point.pos) {
                changed = ix.changes_data_between(point.pos, indexed_upto)?;
            }
        }
        let (ring_id, seq, time_ns) = match last {
            Some(r) => (r.ring_id, r.seq, r.time_ns),
            None => (self.base.pos.ring_id, self.base.pos.seq, self.base.time_ns),
        };
        let end = JournalEnd {
            time: format_time(time_ns),
            time_ns,
            ring_id,
            seq,
            consistent: !changed,
            segment: pos.segment,
            offset: pos.offset,
        };
        Ok((end, point))
    }

    /// Every record from `from` on, oldest first.
    pub(crate) fn records_from(
        &self,
        from: Position,
        mut f: impl FnMut(&RecordRow) -> ControlFlow<()>,
    ) -> Result<()> {
        if let Some(ix) = &self.index {
            let mut stopped = false;
            ix.records_from(from, |r| {
                if stopped || r.end().is_after(&self.tail_from) {
                    return Ok(());
                }
                stopped = f(&r).is_break();
                Ok(())
            })?;
            if stopped {
                return Ok(());
            }
        }
        for r in &self.tail.records {
            if !from.is_after(&r.start()) && f(r).is_break() {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_specs_parse() {
        let p = |s: &str| s.parse::<PointSpec>();
        assert_eq!(p("latest"), Ok(PointSpec::Latest));
        assert_eq!(p("1234"), Ok(PointSpec::Seq(1234)));
        assert_eq!(p("seq:7"), Ok(PointSpec::Seq(7)));
        assert_eq!(
            p("mark:before-upgrade"),
            Ok(PointSpec::Mark("before-upgrade".into()))
        );
        let t = 1_764_133_200_000_000_000; // 2025-11-26T05:00:00Z
        assert_eq!(p("2025-11-26T05:00:00Z"), Ok(PointSpec::Time(t)));
        assert_eq!(p("2025-11-26T06:00:00+01:00"), Ok(PointSpec::Time(t)));
        assert_eq!(p("2025-11-26 05:00:00"), Ok(PointSpec::Time(t)));
        assert_eq!(
            p("2025-11-26T05:00:00.5Z"),
            Ok(PointSpec::Time(t + 500_000_000))
        );
        let before = now_ns();
        let Ok(PointSpec::Time(ago)) = p("10 minutes ago") else {
            panic!("relative time");
        };
        let ten = 600_000_000_000;
        assert!(ago + ten >= before && ago + ten <= now_ns());
        for bad in [
            "",
            "seq:",
            "seq:x",
            "mark:",
            "mark:a@b",
            "mark:.x",
            "tomorrow",
            "5 parsecs ago",
            "99999999999999999999999",
        ] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
        // What is shown reads back as the same point.
        for t in [t, t + 1, t + 123_456_789] {
            assert_eq!(p(&PointSpec::Time(t).to_string()), Ok(PointSpec::Time(t)));
        }
    }
}
