//! The history index of a volume (`index.sqlite`): every journal record,
//! consistency point and mark from the base checkpoint on, so that points
//! can be listed and found by time, seq or mark name, and writes audited,
//! without reading the journal.
//!
//! The index is derived data: the journal is authoritative. It is brought
//! up to the durable end of the journal after every commit, cut back to the
//! journal's end after recovery, trimmed to the base checkpoint after a
//! compaction, and rebuilt from the journal when it is missing, damaged or
//! of another format. SQLite runs in WAL mode with `synchronous=NORMAL`: a
//! crash may lose the last transactions, which the next catch-up redoes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rtbackup_proto::{RTB_OP_DISCARD, RTB_OP_RESYNC, RTB_OP_WRITE, RTB_OP_WRITE_ZEROES};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::section::{OpenSection, SectionTracker};
use crate::state::Position;

/// Version of the index schema; another version is rebuilt.
const INDEX_FORMAT: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL, size INTEGER NOT NULL,
    ring_id INTEGER NOT NULL, seq INTEGER NOT NULL, time_ns INTEGER NOT NULL,
    op INTEGER NOT NULL, flags INTEGER NOT NULL,
    start INTEGER NOT NULL, len INTEGER NOT NULL,
    consistent_seq INTEGER,
    UNIQUE (segment, offset));
CREATE INDEX IF NOT EXISTS records_seq ON records (seq);
-- The byte range each record changes, for reads at a point: an R*Tree
-- (32-bit float bounds, rounded outwards; matches are checked exactly).
CREATE VIRTUAL TABLE IF NOT EXISTS extents USING rtree (id, lo, hi);
CREATE TABLE IF NOT EXISTS points (
    segment INTEGER NOT NULL, offset INTEGER NOT NULL,
    ring_id INTEGER NOT NULL, seq INTEGER NOT NULL, time_ns INTEGER NOT NULL,
    kind TEXT NOT NULL, received_ns INTEGER NOT NULL,
    PRIMARY KEY (segment, offset)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (
    segment INTEGER NOT NULL, offset INTEGER NOT NULL,
    name TEXT NOT NULL, ring_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    time_ns INTEGER NOT NULL,
    point_segment INTEGER NOT NULL, point_offset INTEGER NOT NULL,
    point_ring INTEGER NOT NULL, point_seq INTEGER NOT NULL,
    PRIMARY KEY (segment, offset)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS marks_name ON marks (name);
";

/// Why a consistency point is one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointKind {
    /// The base image: the oldest state held (the empty volume until a
    /// compaction folds history into it).
    Base,
    /// After a FLUSH record.
    Flush,
    /// Before a record with the PREFLUSH flag.
    Preflush,
    /// The end of a ring (the device was detached or reattached).
    RingEnd,
    /// After a RESYNC_END record that closes a resync section.
    ResyncEnd,
}

impl PointKind {
    fn as_str(self) -> &'static str {
        match self {
            PointKind::Base => "base",
            PointKind::Flush => "flush",
            PointKind::Preflush => "preflush",
            PointKind::RingEnd => "ring-end",
            PointKind::ResyncEnd => "resync-end",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "base" => PointKind::Base,
            "flush" => PointKind::Flush,
            "preflush" => PointKind::Preflush,
            "ring-end" => PointKind::RingEnd,
            "resync-end" => PointKind::ResyncEnd,
            _ => return None,
        })
    }
}

/// A journal record as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRow {
    /// Where the record starts in the journal.
    pub segment: u64,
    /// Byte offset in the segment.
    pub offset: u64,
    /// Bytes of the record in the journal.
    pub size: u64,
    /// Ring of the record.
    pub ring_id: u64,
    /// Its seq.
    pub seq: u64,
    /// Submission time on the protected host, `CLOCK_REALTIME` ns.
    pub time_ns: u64,
    /// `RTB_OP_*`.
    pub op: u8,
    /// `RTB_REC_*`.
    pub flags: u8,
    /// First byte of the volume it changes.
    pub start: u64,
    /// Bytes it changes.
    pub len: u64,
    /// The `consistent_seq` of a RESYNC_END record.
    pub consistent_seq: Option<u64>,
}

impl RecordRow {
    /// The position before the record.
    pub fn start(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.offset,
            ring_id: self.ring_id,
            seq: self.seq,
        }
    }

    /// The position after the record.
    pub fn end(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.offset + self.size,
            ring_id: self.ring_id,
            seq: self.seq,
        }
    }

    /// Whether the record changes bytes of the volume: a WRITE, DISCARD,
    /// WRITE_ZEROES or RESYNC of at least one byte.
    pub fn changes_data(&self) -> bool {
        self.len > 0 && DATA_OPS.contains(&self.op)
    }
}

/// The operations that change bytes of the volume (when `len > 0`).
const DATA_OPS: [u8; 4] = [
    RTB_OP_WRITE,
    RTB_OP_DISCARD,
    RTB_OP_WRITE_ZEROES,
    RTB_OP_RESYNC,
];

/// A consistency point: a state of the volume a restore can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointRow {
    /// The journal position: every record before it, none after.
    pub pos: Position,
    /// When the volume was in this state (protected host's clock, never
    /// before the previous point's: see [`crate::history::Scanner`]).
    pub time_ns: u64,
    /// When the backup host had the point (its own clock, never before
    /// the previous point's), which retention and the apply delay go by.
    pub received_ns: u64,
    /// Why it is a consistency point.
    pub kind: PointKind,
}

/// A named mark in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkRow {
    /// The MARK record's position in the journal.
    pub segment: u64,
    /// Byte offset of the MARK record.
    pub offset: u64,
    /// The name.
    pub name: String,
    /// Ring of the MARK record.
    pub ring_id: u64,
    /// Seq of the MARK record.
    pub seq: u64,
    /// When it was recorded.
    pub time_ns: u64,
    /// The consistency point it names: the newest at or before it.
    pub point: Position,
}

/// An open index.
pub(crate) struct Index {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("path", &self.path).finish()
    }
}

fn to_i(v: u64) -> i64 {
    v as i64
}

fn to_u(v: i64) -> u64 {
    v as u64
}

impl Index {
    fn err(&self, what: &str, e: rusqlite::Error) -> StoreError {
        StoreError::Index {
            path: self.path.clone(),
            context: what.to_owned(),
            source: e,
        }
    }

    fn configure(conn: &Connection) -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(30))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }

    /// Opens the index of a volume for writing, creating it (or recreating
    /// it, when damaged or of another format) empty: `Ok((index, fresh))`.
    pub(crate) fn open_rw(path: &Path) -> Result<(Self, bool)> {
        match Self::try_open_rw(path) {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(index = %path.display(), "rebuilding the history index from the journal: {e}");
                for suffix in ["", "-wal", "-shm"] {
                    let p = PathBuf::from(format!("{}{suffix}", path.display()));
                    if let Err(e) = std::fs::remove_file(&p) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            return Err(StoreError::Io {
                                context: format!("removing {}", p.display()),
                                source: e,
                            });
                        }
                    }
                }
                let (ix, _) = Self::try_open_rw(path)?;
                Ok((ix, true))
            }
        }
    }

    fn try_open_rw(path: &Path) -> Result<(Self, bool)> {
        let wrap = |context: &str, e| StoreError::Index {
            path: path.to_owned(),
            context: context.to_owned(),
            source: e,
        };
        let conn = Connection::open(path).map_err(|e| wrap("opening", e))?;
        Self::configure(&conn).map_err(|e| wrap("configuring", e))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| wrap("creating the schema", e))?;
        let ix = Index {
            conn,
            path: path.to_owned(),
        };
        let format = ix.meta("format")?;
        let fresh = match format {
            None => {
                ix.set_meta("format", INDEX_FORMAT)?;
                true
            }
            Some(INDEX_FORMAT) => false,
            Some(f) => {
                return Err(wrap(
                    &format!("index format {f}, this build uses {INDEX_FORMAT}"),
                    rusqlite::Error::InvalidQuery,
                ))
            }
        };
        let check: String = ix
            .conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| wrap("checking", e))?;
        if check != "ok" {
            return Err(wrap(
                &format!("integrity check: {check}"),
                rusqlite::Error::InvalidQuery,
            ));
        }
        Ok((ix, fresh))
    }

    /// Opens an index to read it; `None` if it does not exist or is of
    /// another format (read-only commands then scan the journal).
    pub(crate) fn open_ro(path: &Path) -> Result<Option<Self>> {
        if !path.exists() {
            return Ok(None);
        }
        // Read-write without create: a database in WAL mode can only be
        // read by a connection that may create its shared-memory file.
        // Nothing here writes.
        let conn = match Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .or_else(|_| {
            Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(index = %path.display(), "cannot open the history index ({e}); scanning the journal instead");
                return Ok(None);
            }
        };
        let _ = conn.busy_timeout(Duration::from_secs(30));
        let ix = Index {
            conn,
            path: path.to_owned(),
        };
        match ix.meta("format") {
            Ok(Some(INDEX_FORMAT)) => Ok(Some(ix)),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(index = %path.display(), "cannot read the history index ({e}); scanning the journal instead");
                Ok(None)
            }
        }
    }

    fn meta(&self, key: &str) -> Result<Option<i64>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err("reading meta", e))
    }

    fn set_meta(&self, key: &str, value: i64) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err("writing meta", e))
    }

    /// Runs `f`'s reads in one read transaction, so that they see the index
    /// as of one commit. A reader's connection needs it while the server
    /// adds rows: separate reads (say, the four keys of the indexed
    /// position) may otherwise straddle a commit and mix two states. Not
    /// for use inside another transaction of this connection.
    pub(crate) fn read_consistent<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        // A deferred transaction: its snapshot is taken at its first read
        // and kept until it ends (WAL mode); ended by dropping (a rollback
        // of nothing).
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(|e| self.err("starting a read transaction", e))?;
        let out = f(self);
        drop(tx);
        out
    }

    /// The journal position indexed so far (`None`: nothing yet).
    pub(crate) fn indexed(&self) -> Result<Option<Position>> {
        let get = |k| self.meta(k);
        match (
            get("indexed_segment")?,
            get("indexed_offset")?,
            get("indexed_ring")?,
            get("indexed_seq")?,
        ) {
            (Some(s), Some(o), Some(r), Some(q)) => Ok(Some(Position {
                segment: to_u(s),
                offset: to_u(o),
                ring_id: to_u(r),
                seq: to_u(q),
            })),
            _ => Ok(None),
        }
    }

    /// The resync section open at the indexed position (see
    /// [`Index::indexed`]).
    pub(crate) fn indexed_sections(&self) -> Result<SectionTracker> {
        let open = match self.meta(RESYNC_SINCE)? {
            Some(since) => Some(OpenSection {
                since_seq: to_u(since),
                close_at: self.meta(RESYNC_CLOSE_AT)?.map(to_u),
            }),
            None => None,
        };
        Ok(SectionTracker::new(open))
    }

    /// Adds the rows of one journal range, ending at `end` with the
    /// resync sections as `sections`, in one transaction (already present
    /// rows are kept: catching up twice is harmless).
    pub(crate) fn add(
        &mut self,
        rows: &Rows,
        end: Position,
        sections: SectionTracker,
    ) -> Result<()> {
        let path = self.path.clone();
        let wrap = |e| StoreError::Index {
            path: path.clone(),
            context: "adding journal records".into(),
            source: e,
        };
        let tx = self.conn.transaction().map_err(wrap)?;
        {
            let mut rec = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO records
                     (segment, offset, size, ring_id, seq, time_ns, op, flags, start, len,
                      consistent_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(wrap)?;
            let mut ext = tx
                .prepare_cached("INSERT INTO extents (id, lo, hi) VALUES (?1, ?2, ?3)")
                .map_err(wrap)?;
            for r in &rows.records {
                let added = rec
                    .execute(params![
                        to_i(r.segment),
                        to_i(r.offset),
                        to_i(r.size),
                        to_i(r.ring_id),
                        to_i(r.seq),
                        to_i(r.time_ns),
                        r.op,
                        r.flags,
                        to_i(r.start),
                        to_i(r.len),
                        r.consistent_seq.map(to_i)
                    ])
                    .map_err(wrap)?;
                if added == 1 && r.len > 0 {
                    let id = tx.last_insert_rowid();
                    ext.execute(params![id, r.start as f64, (r.start + r.len - 1) as f64])
                        .map_err(wrap)?;
                }
            }
            let mut pt = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO points
                     (segment, offset, ring_id, seq, time_ns, kind, received_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(wrap)?;
            for p in &rows.points {
                pt.execute(params![
                    to_i(p.pos.segment),
                    to_i(p.pos.offset),
                    to_i(p.pos.ring_id),
                    to_i(p.pos.seq),
                    to_i(p.time_ns),
                    p.kind.as_str(),
                    to_i(p.received_ns)
                ])
                .map_err(wrap)?;
            }
            let mut mk = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO marks
                     (segment, offset, name, ring_id, seq, time_ns,
                      point_segment, point_offset, point_ring, point_seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )
                .map_err(wrap)?;
            for m in &rows.marks {
                mk.execute(params![
                    to_i(m.segment),
                    to_i(m.offset),
                    m.name,
                    to_i(m.ring_id),
                    to_i(m.seq),
                    to_i(m.time_ns),
                    to_i(m.point.segment),
                    to_i(m.point.offset),
                    to_i(m.point.ring_id),
                    to_i(m.point.seq)
                ])
                .map_err(wrap)?;
            }
        }
        set_indexed(&tx, end, sections).map_err(wrap)?;
        tx.commit().map_err(wrap)
    }

    /// Forgets what the journal no longer holds after recovery: records
    /// and marks at or after `end`, points after it. An indexed position
    /// after `end` moves back to the last point at or before it, where no
    /// resync section is open (the state at `end` itself is not known), or
    /// is forgotten if there is none (the index is then rebuilt).
    pub(crate) fn trim_after(&mut self, end: Position) -> Result<()> {
        let path = self.path.clone();
        let wrap = |e| StoreError::Index {
            path: path.clone(),
            context: "trimming the index to the journal".into(),
            source: e,
        };
        let indexed = self.indexed()?;
        let at = params![to_i(end.segment), to_i(end.offset)];
        let tx = self.conn.transaction().map_err(wrap)?;
        tx.execute(
            "DELETE FROM extents WHERE id IN
             (SELECT id FROM records WHERE (segment, offset) >= (?1, ?2))",
            at,
        )
        .map_err(wrap)?;
        tx.execute(
            "DELETE FROM records WHERE (segment, offset) >= (?1, ?2)",
            at,
        )
        .map_err(wrap)?;
        tx.execute("DELETE FROM marks WHERE (segment, offset) >= (?1, ?2)", at)
            .map_err(wrap)?;
        // A point is a place between records: one at `end` is still valid.
        tx.execute("DELETE FROM points WHERE (segment, offset) > (?1, ?2)", at)
            .map_err(wrap)?;
        if indexed.is_some_and(|i| i.is_after(&end)) {
            let back = tx
                .query_row(
                    "SELECT segment, offset, ring_id, seq, time_ns, kind, received_ns FROM points
                     ORDER BY segment DESC, offset DESC LIMIT 1",
                    [],
                    Self::point_from,
                )
                .optional()
                .map_err(wrap)?;
            match back {
                Some(p) => set_indexed(&tx, p.pos, SectionTracker::default()).map_err(wrap)?,
                None => {
                    tx.execute("DELETE FROM meta WHERE key LIKE 'indexed_%'", [])
                        .map_err(wrap)?;
                }
            }
        }
        tx.commit().map_err(wrap)
    }

    /// Forgets the history folded into the base image: everything before
    /// `base`, and marks naming a point before it.
    pub(crate) fn trim_before(&mut self, base: Position) -> Result<()> {
        let path = self.path.clone();
        let wrap = |e| StoreError::Index {
            path: path.clone(),
            context: "trimming folded history".into(),
            source: e,
        };
        let at = params![to_i(base.segment), to_i(base.offset)];
        let tx = self.conn.transaction().map_err(wrap)?;
        for q in [
            "DELETE FROM extents WHERE id IN
             (SELECT id FROM records WHERE (segment, offset) < (?1, ?2))",
            "DELETE FROM records WHERE (segment, offset) < (?1, ?2)",
            "DELETE FROM points WHERE (segment, offset) < (?1, ?2)",
            "DELETE FROM marks WHERE (point_segment, point_offset) < (?1, ?2)",
        ] {
            tx.execute(q, at).map_err(wrap)?;
        }
        tx.commit().map_err(wrap)
    }

    /// Empties the index (it will be rebuilt from `base`).
    pub(crate) fn clear(&mut self) -> Result<()> {
        self.conn
            .execute_batch(
                "BEGIN; DELETE FROM extents; DELETE FROM records; DELETE FROM points;
                 DELETE FROM marks;
                 DELETE FROM meta WHERE key LIKE 'indexed_%'; COMMIT;",
            )
            .map_err(|e| self.err("clearing", e))
    }

    fn point_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<PointRow> {
        let kind: String = r.get(5)?;
        Ok(PointRow {
            pos: Position {
                segment: to_u(r.get(0)?),
                offset: to_u(r.get(1)?),
                ring_id: to_u(r.get(2)?),
                seq: to_u(r.get(3)?),
            },
            time_ns: to_u(r.get(4)?),
            received_ns: to_u(r.get(6)?),
            kind: PointKind::parse(&kind).unwrap_or(PointKind::Flush),
        })
    }

    /// Points from `from` on (inclusive), oldest first.
    pub(crate) fn points(&self, from: Position) -> Result<Vec<PointRow>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT segment, offset, ring_id, seq, time_ns, kind, received_ns FROM points
                 WHERE (segment, offset) >= (?1, ?2) ORDER BY segment, offset",
            )
            .map_err(|e| self.err("listing points", e))?;
        let rows = st
            .query_map(
                params![to_i(from.segment), to_i(from.offset)],
                Self::point_from,
            )
            .map_err(|e| self.err("listing points", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("listing points", e))
    }

    /// The newest point the backup host had at or before `received_ns`.
    pub(crate) fn point_received_by(&self, received_ns: u64) -> Result<Option<PointRow>> {
        self.newest_point_by("received_ns", received_ns)
    }

    /// The newest point with a (host) time at or before `time_ns`.
    pub(crate) fn point_at_time(&self, time_ns: u64) -> Result<Option<PointRow>> {
        self.newest_point_by("time_ns", time_ns)
    }

    /// The newest point whose time `column` is at or before `ns` (point
    /// times never go backwards, so it is also the latest such time).
    fn newest_point_by(&self, column: &'static str, ns: u64) -> Result<Option<PointRow>> {
        self.conn
            .query_row(
                &format!(
                    "SELECT segment, offset, ring_id, seq, time_ns, kind, received_ns FROM points
                     WHERE {column} <= ?1 ORDER BY segment DESC, offset DESC LIMIT 1"
                ),
                [to_i(ns)],
                Self::point_from,
            )
            .optional()
            .map_err(|e| self.err(&format!("finding a point by {column}"), e))
    }

    /// The newest point at or before `pos`.
    pub(crate) fn point_at_or_before(&self, pos: Position) -> Result<Option<PointRow>> {
        self.conn
            .query_row(
                "SELECT segment, offset, ring_id, seq, time_ns, kind, received_ns FROM points
                 WHERE (segment, offset) <= (?1, ?2) ORDER BY segment DESC, offset DESC LIMIT 1",
                params![to_i(pos.segment), to_i(pos.offset)],
                Self::point_from,
            )
            .optional()
            .map_err(|e| self.err("finding a point", e))
    }

    fn record_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<RecordRow> {
        Ok(RecordRow {
            segment: to_u(r.get(0)?),
            offset: to_u(r.get(1)?),
            size: to_u(r.get(2)?),
            ring_id: to_u(r.get(3)?),
            seq: to_u(r.get(4)?),
            time_ns: to_u(r.get(5)?),
            op: r.get(6)?,
            flags: r.get(7)?,
            start: to_u(r.get(8)?),
            len: to_u(r.get(9)?),
            consistent_seq: r.get::<_, Option<i64>>(10)?.map(to_u),
        })
    }

    /// Every record with this seq (of any ring), oldest first.
    pub(crate) fn records_with_seq(&self, seq: u64) -> Result<Vec<RecordRow>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT segment, offset, size, ring_id, seq, time_ns, op, flags, start, len,
                        consistent_seq
                 FROM records WHERE seq = ?1 ORDER BY segment, offset",
            )
            .map_err(|e| self.err("finding records by seq", e))?;
        let rows = st
            .query_map([to_i(seq)], Self::record_from)
            .map_err(|e| self.err("finding records by seq", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("finding records by seq", e))
    }

    /// The newest record that starts before `pos`.
    pub(crate) fn last_record_before(&self, pos: Position) -> Result<Option<RecordRow>> {
        self.conn
            .query_row(
                "SELECT segment, offset, size, ring_id, seq, time_ns, op, flags, start, len,
                        consistent_seq
                 FROM records WHERE (segment, offset) < (?1, ?2)
                 ORDER BY segment DESC, offset DESC LIMIT 1",
                params![to_i(pos.segment), to_i(pos.offset)],
                Self::record_from,
            )
            .optional()
            .map_err(|e| self.err("finding the last record", e))
    }

    /// Whether a record that starts in `[from, to)` changes bytes of the
    /// volume ([`RecordRow::changes_data`]).
    pub(crate) fn changes_data_between(&self, from: Position, to: Position) -> Result<bool> {
        let [w, d, z, r] = DATA_OPS;
        self.conn
            .query_row(
                "SELECT 1 FROM records
                 WHERE (segment, offset) >= (?1, ?2) AND (segment, offset) < (?3, ?4)
                   AND len > 0 AND op IN (?5, ?6, ?7, ?8)
                 LIMIT 1",
                params![
                    to_i(from.segment),
                    to_i(from.offset),
                    to_i(to.segment),
                    to_i(to.offset),
                    w,
                    d,
                    z,
                    r
                ],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(|e| self.err("finding records that change data", e))
    }

    /// Records from position `from` on, oldest first, passed to `f`.
    pub(crate) fn records_from(
        &self,
        from: Position,
        mut f: impl FnMut(RecordRow) -> Result<()>,
    ) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT segment, offset, size, ring_id, seq, time_ns, op, flags, start, len,
                        consistent_seq
                 FROM records WHERE (segment, offset) >= (?1, ?2) ORDER BY segment, offset",
            )
            .map_err(|e| self.err("listing records", e))?;
        let rows = st
            .query_map(
                params![to_i(from.segment), to_i(from.offset)],
                Self::record_from,
            )
            .map_err(|e| self.err("listing records", e))?;
        for r in rows {
            f(r.map_err(|e| self.err("listing records", e))?)?;
        }
        Ok(())
    }

    /// Records in `[from, to)` that change bytes of `[a, b)`, newest first,
    /// passed to `f` until it breaks.
    pub(crate) fn overlapping(
        &self,
        a: u64,
        b: u64,
        from: Position,
        to: Position,
        mut f: impl FnMut(RecordRow) -> Result<std::ops::ControlFlow<()>>,
    ) -> Result<()> {
        if b <= a {
            return Ok(());
        }
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT r.segment, r.offset, r.size, r.ring_id, r.seq, r.time_ns, r.op, r.flags,
                        r.start, r.len, r.consistent_seq
                 FROM extents e JOIN records r ON r.id = e.id
                 WHERE e.lo <= ?2 AND e.hi >= ?1
                   AND r.start < ?3 AND r.start + r.len > ?8
                   AND (r.segment, r.offset) >= (?4, ?5) AND (r.segment, r.offset) < (?6, ?7)
                 ORDER BY r.id DESC",
            )
            .map_err(|e| self.err("finding records of a range", e))?;
        let rows = st
            .query_map(
                params![
                    a as f64,
                    (b - 1) as f64,
                    to_i(b),
                    to_i(from.segment),
                    to_i(from.offset),
                    to_i(to.segment),
                    to_i(to.offset),
                    to_i(a)
                ],
                Self::record_from,
            )
            .map_err(|e| self.err("finding records of a range", e))?;
        for r in rows {
            let r = r.map_err(|e| self.err("finding records of a range", e))?;
            if f(r)?.is_break() {
                break;
            }
        }
        Ok(())
    }

    fn mark_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<MarkRow> {
        Ok(MarkRow {
            segment: to_u(r.get(0)?),
            offset: to_u(r.get(1)?),
            name: r.get(2)?,
            ring_id: to_u(r.get(3)?),
            seq: to_u(r.get(4)?),
            time_ns: to_u(r.get(5)?),
            point: Position {
                segment: to_u(r.get(6)?),
                offset: to_u(r.get(7)?),
                ring_id: to_u(r.get(8)?),
                seq: to_u(r.get(9)?),
            },
        })
    }

    /// Marks from `from` on, oldest first.
    pub(crate) fn marks(&self, from: Position) -> Result<Vec<MarkRow>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT segment, offset, name, ring_id, seq, time_ns,
                        point_segment, point_offset, point_ring, point_seq
                 FROM marks WHERE (segment, offset) >= (?1, ?2) ORDER BY segment, offset",
            )
            .map_err(|e| self.err("listing marks", e))?;
        let rows = st
            .query_map(
                params![to_i(from.segment), to_i(from.offset)],
                Self::mark_from,
            )
            .map_err(|e| self.err("listing marks", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("listing marks", e))
    }

    /// Every mark called `name`, oldest first.
    pub(crate) fn marks_named(&self, name: &str) -> Result<Vec<MarkRow>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT segment, offset, name, ring_id, seq, time_ns,
                        point_segment, point_offset, point_ring, point_seq
                 FROM marks WHERE name = ?1 ORDER BY segment, offset",
            )
            .map_err(|e| self.err("finding marks", e))?;
        let rows = st
            .query_map([name], Self::mark_from)
            .map_err(|e| self.err("finding marks", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("finding marks", e))
    }

    /// Names of the marks naming the point at `pos`, oldest first.
    pub(crate) fn marks_at(&self, pos: Position) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT name FROM marks WHERE point_segment = ?1 AND point_offset = ?2
                 ORDER BY segment, offset",
            )
            .map_err(|e| self.err("listing marks", e))?;
        let rows = st
            .query_map(params![to_i(pos.segment), to_i(pos.offset)], |r| r.get(0))
            .map_err(|e| self.err("listing marks", e))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
            .map_err(|e| self.err("listing marks", e))
    }

    /// The first point after `pos`.
    pub(crate) fn first_point_after(&self, pos: Position) -> Result<Option<PointRow>> {
        self.conn
            .query_row(
                "SELECT segment, offset, ring_id, seq, time_ns, kind, received_ns FROM points
                 WHERE (segment, offset) > (?1, ?2) ORDER BY segment, offset LIMIT 1",
                params![to_i(pos.segment), to_i(pos.offset)],
                Self::point_from,
            )
            .optional()
            .map_err(|e| self.err("finding a point", e))
    }

    /// The newest point at or before the newest position in the journal
    /// (for resuming a scan: the point marks refer to).
    pub(crate) fn last_point(&self) -> Result<Option<PointRow>> {
        self.conn
            .query_row(
                "SELECT segment, offset, ring_id, seq, time_ns, kind, received_ns FROM points
                 ORDER BY segment DESC, offset DESC LIMIT 1",
                [],
                Self::point_from,
            )
            .optional()
            .map_err(|e| self.err("finding the last point", e))
    }

    /// Time of the newest record (for the time of a ring's end).
    pub(crate) fn last_record_time(&self) -> Result<Option<u64>> {
        self.conn
            .query_row(
                "SELECT time_ns FROM records ORDER BY segment DESC, offset DESC LIMIT 1",
                [],
                |r| r.get::<_, i64>(0),
            )
            .optional()
            .map(|o| o.map(to_u))
            .map_err(|e| self.err("finding the last record", e))
    }
}

/// Meta keys of the resync section open at the indexed position (absent:
/// none, or no `close_at`).
const RESYNC_SINCE: &str = "indexed_resync_since";
const RESYNC_CLOSE_AT: &str = "indexed_resync_close_at";

/// Records in `tx` that the index holds the journal up to `end`, where the
/// resync sections stand as `sections`.
fn set_indexed(
    tx: &rusqlite::Transaction<'_>,
    end: Position,
    sections: SectionTracker,
) -> rusqlite::Result<()> {
    let mut meta = tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?;
    let open = sections.open();
    for (k, v) in [
        ("indexed_segment", Some(end.segment)),
        ("indexed_offset", Some(end.offset)),
        ("indexed_ring", Some(end.ring_id)),
        ("indexed_seq", Some(end.seq)),
        (RESYNC_SINCE, open.map(|s| s.since_seq)),
        (RESYNC_CLOSE_AT, open.and_then(|s| s.close_at)),
    ] {
        match v {
            Some(v) => meta.execute(params![k, to_i(v)])?,
            None => tx.execute("DELETE FROM meta WHERE key = ?1", [k])?,
        };
    }
    Ok(())
}

/// Rows produced by scanning part of the journal.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rows {
    pub(crate) records: Vec<RecordRow>,
    pub(crate) points: Vec<PointRow>,
    pub(crate) marks: Vec<MarkRow>,
    /// Points whose host time was before the previous point's (and was
    /// raised to it).
    pub(crate) clamped: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(segment: u64, offset: u64, ring_id: u64, seq: u64) -> Position {
        Position {
            segment,
            offset,
            ring_id,
            seq,
        }
    }

    /// A reader's reads inside `read_consistent` see one commit, though the
    /// server commits between them; outside, each read sees the newest (so
    /// the four keys of a position read apart could mix two commits).
    #[test]
    fn consistent_reads_see_one_commit() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("index.sqlite");
        let (mut w, _) = Index::open_rw(&path).unwrap();
        let none = SectionTracker::default();
        let (p1, p2, p3) = (
            pos(1, 64, 0, 0),
            pos(2, 6400, 0x43, 3),
            pos(2, 9000, 0x43, 9),
        );
        w.add(&Rows::default(), p1, none).unwrap();
        let r = Index::open_ro(&path).unwrap().unwrap();
        let (a, b) = r
            .read_consistent(|r| {
                let a = r.indexed()?;
                w.add(&Rows::default(), p2, none)?;
                Ok((a, r.indexed()?))
            })
            .unwrap();
        assert_eq!((a, b), (Some(p1), Some(p1)));
        assert_eq!(r.indexed().unwrap(), Some(p2));
        let a = r.indexed().unwrap();
        w.add(&Rows::default(), p3, none).unwrap();
        assert_eq!((a, r.indexed().unwrap()), (Some(p2), Some(p3)));
    }
}
