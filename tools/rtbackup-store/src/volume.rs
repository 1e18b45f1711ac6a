//! A volume open for ingest: the journal appender and the image applier.
//! By concern: `volume/open.rs` (lock, recovery, base image, index),
//! `volume/ingest.rs` (append, roll, sync) and `volume/apply.rs` (the image,
//! retention, retiring segments); this file holds the state and what reads
//! it.

mod apply;
mod ingest;
mod open;

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{posix_fadvise, Flock, FlockArg, PosixFadviseAdvice};
use rtbackup_proto::{records, RecordError};
use tracing::{debug, info, warn};

use crate::clock::{system_ns as now_ns, Clock};
use crate::error::{IoContext, Result, StoreError};
use crate::history::{scan, Scanner};
use crate::image::{sparse_copy, Target};
use crate::index::{Index, PointKind, PointRow, Rows};
use crate::journal::{segment_start, walk, CpTracker, Event, SegmentSource};
use crate::section::SectionTracker;
use crate::segment::{
    create_dir_all_durable, create_segment, parse_segment_file_name, read_segment_header,
    segment_file_name, sync_data, sync_dir, CreateSegmentError, Payloads, SegmentHeader,
    SEGMENT_HEADER_LEN,
};
use crate::state::{Position, VolumeState, MAX_RINGS};

/// File names inside a volume directory.
pub(crate) const STATE_FILE: &str = "state.json";
pub(crate) const IMAGE_FILE: &str = "image";
/// The volume at the base point, the oldest state held.
pub(crate) const BASE_FILE: &str = "base";
/// The history index (SQLite).
pub(crate) const INDEX_FILE: &str = "index.sqlite";
pub(crate) const JOURNAL_DIR: &str = "journal";
/// Held (shared or exclusive) by whoever reads or changes the image, the
/// checkpoint or the set of segments the checkpoint needs.
pub(crate) const LOCK_FILE: &str = "lock";
/// Held exclusively by the process that has the volume open for ingest.
pub(crate) const WRITER_LOCK_FILE: &str = "writer.lock";

/// How long opening a volume waits for the volume lock (held by a restore
/// for the whole copy) before answering [`StoreError::Locked`].
const OPEN_LOCK_WAIT: Duration = Duration::from_secs(2);
/// Pause between attempts to take the volume lock.
const OPEN_LOCK_RETRY: Duration = Duration::from_millis(50);

/// Volume directories (canonical) where an fsync failed in this process.
/// After a failed fsync the kernel may have dropped the dirty pages while
/// the page cache still shows them (and reports the error once), so nothing
/// this process reads back can be trusted: such a volume is never reopened
/// by this process ([`StoreError::FsyncFailed`]).
static FSYNC_FAILED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn fsync_key(dir: &Path) -> PathBuf {
    fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned())
}

/// Whether an fsync of the volume in `dir` failed in this process.
fn fsync_failed(dir: &Path) -> bool {
    lock(&FSYNC_FAILED).contains(&fsync_key(dir))
}

/// Notes a failed fsync of the volume in `dir` and makes its error.
fn fsync_error(dir: &Path, volume: &str, context: String, source: std::io::Error) -> StoreError {
    // Out of descriptors: the file or directory to sync could not even be
    // opened, so nothing failed to reach the disk. The operation fails and
    // is retried; the volume stays usable.
    if matches!(
        source.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE)
    ) {
        tracing::error!(
            volume,
            "out of file descriptors ({context}: {source}): nothing was synced; refused, not poisoned"
        );
        return StoreError::Io { context, source };
    }
    tracing::error!(
        volume,
        "fsync failed ({context}: {source}): the volume is poisoned until the process restarts"
    );
    lock(&FSYNC_FAILED).insert(fsync_key(dir));
    StoreError::Io { context, source }
}

/// Adds `ring` as the newest of the rings seen.
fn note_ring(rings: &mut Vec<u64>, ring: u64) {
    if rings.last() == Some(&ring) {
        return;
    }
    rings.retain(|&r| r != ring);
    rings.push(ring);
    if rings.len() > MAX_RINGS {
        rings.drain(..rings.len() - MAX_RINGS);
    }
}

/// How much history a volume keeps; older history is folded into the
/// base image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep every consistency point of this last span of time (`None`:
    /// no time limit).
    pub keep: Option<Duration>,
    /// Keep at most about this many bytes of journal (`None`: no limit).
    /// Whole segments are dropped, so the journal may exceed it by one
    /// segment.
    pub keep_bytes: Option<u64>,
    /// History received within this last span is never folded by size,
    /// however much a host writes (`None`: the `keep` window; with no
    /// `keep` either, size folds nothing). A compromised host cannot flush
    /// out its own recent history with junk.
    pub size_min_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep: Some(Duration::from_secs(24 * 3600)),
            keep_bytes: None,
            size_min_age: None,
        }
    }
}

/// Tunables of an open volume.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// A new segment is started when a batch would make the active one
    /// larger than this.
    pub segment_bytes: u64,
    /// History kept.
    pub retention: Retention,
    /// The image trails the journal by this long (a delayed replica).
    pub apply_delay: Duration,
    /// The backup host's clock, which the ages of retention and the apply
    /// delay are measured by.
    pub clock: Clock,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 256 << 20,
            retention: Retention::default(),
            apply_delay: Duration::ZERO,
            clock: Clock::system(),
        }
    }
}

/// Journal bytes a compaction folds into the base image in one step, so
/// that restores and the image's apply wait at most one step.
const FOLD_STEP_BYTES: u64 = 64 << 20;

/// What [`Volume::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactOutcome {
    /// The base image stands where retention wants it.
    UpToDate,
    /// The base image was advanced to this point.
    Folded {
        /// The new base point.
        base: Position,
        /// Records folded.
        records: u64,
        /// Whether more history is to be folded.
        more: bool,
    },
    /// Somebody (a restore) holds the volume lock; try later.
    Deferred,
}

/// What [`Volume::append`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Records appended.
    pub appended: usize,
    /// Records skipped as already held (seq at or below the last appended).
    pub skipped: usize,
    /// Bytes appended.
    pub bytes: u64,
    /// Highest seq appended so far in this ring (durable or not).
    pub last_seq: u64,
}

/// What [`Volume::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The image already stands at the last durable consistency point.
    UpToDate,
    /// The image was advanced to this checkpoint.
    Applied {
        /// The new checkpoint.
        checkpoint: Position,
        /// Records applied.
        records: u64,
    },
    /// Somebody (a restore) holds the volume lock; try later.
    Deferred,
}

/// A snapshot of a volume's counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VolumeStatus {
    /// Volume name.
    pub volume: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Current ring (of the newest journal records).
    pub ring_id: u64,
    /// Highest durable seq of `ring_id`.
    pub durable_seq: u64,
    /// The image checkpoint: ring and seq applied.
    pub applied_ring_id: u64,
    /// Seq of `applied_ring_id` applied to the image.
    pub applied_seq: u64,
    /// Bytes of journal segments held (local and sealed).
    pub journal_bytes: u64,
    /// Number of journal segments held.
    pub segments: u64,
    /// Whether the journal ends inside a resync section: no consistency
    /// point since it opened, the image and the latest restore point stay
    /// before it.
    pub resyncing: bool,
    /// Seq of the first RESYNC record of the open section (of the ring it
    /// was in).
    pub resync_since_seq: Option<u64>,
}

struct Journal {
    file: Arc<File>,
    header: SegmentHeader,
    /// End of the last appended record.
    appended: Position,
    /// End of the last durable record.
    durable: Position,
    /// Last consistency point among appended records, and the resync
    /// sections after the last appended record.
    pending: CpTracker,
    /// Last consistency point among durable records.
    durable_cp: Position,
    /// The resync sections after the last durable record.
    durable_sections: SectionTracker,
    poisoned: bool,
    /// Rings seen, oldest first; the current one last.
    rings: Vec<u64>,
    /// End of the active segment's space reserved ahead of its records
    /// (`fallocate`), so that a full disk refuses a batch before it is
    /// written instead of failing a later fsync; `u64::MAX` where the
    /// filesystem cannot reserve.
    reserved: u64,
}

/// How far ahead of its records a segment's space is reserved.
const RESERVE_AHEAD: u64 = 8 << 20;

/// Reserves the space of `file` up to `end` (and [`RESERVE_AHEAD`]
/// beyond), from `from`, without changing its size. Returns the new end of
/// the reserved space: `u64::MAX` if the filesystem cannot reserve (the
/// writes themselves then meet a full disk).
fn reserve(file: &File, from: u64, end: u64) -> std::io::Result<u64> {
    use nix::fcntl::{fallocate, FallocateFlags};
    use std::os::fd::AsRawFd;
    let to = end.saturating_add(RESERVE_AHEAD);
    let (Ok(off), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return Ok(u64::MAX);
    };
    match fallocate(
        file.as_raw_fd(),
        FallocateFlags::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    ) {
        Ok(()) => Ok(to),
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::ENOSYS) => Ok(u64::MAX),
        Err(e) => Err(e.into()),
    }
}

struct ImageState {
    file: File,
    /// The base image.
    base: File,
    state: VolumeState,
    /// Lowest segment id that may still exist.
    oldest_segment: u64,
}

/// A volume open for ingest. `append` and `sync` may run on different
/// threads (group commit: `sync` does not block `append` while it waits
/// for the disk); `apply` advances the image.
pub struct Volume {
    name: String,
    dir: PathBuf,
    size_bytes: u64,
    block_size: u32,
    opts: VolumeOptions,
    src: SegmentSource,
    journal: Mutex<Journal>,
    /// Lock order: `image` before `index`; `journal` alone.
    image: Mutex<ImageState>,
    index: Mutex<Index>,
    _writer: Flock<File>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume").field("name", &self.name).finish()
    }
}

/// Takes the volume lock (`LOCK_FILE`). `None` if `wait` is false and
/// somebody else holds it.
pub(crate) fn lock_volume(dir: &Path, arg: FlockArg) -> Result<Option<Flock<File>>> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(|| format!("opening {}", path.display()))?;
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        // Interrupted by a signal: try again.
        Err((_, Errno::EINTR)) => lock_volume(dir, arg),
        Err((_, e)) => Err(StoreError::Io {
            context: format!("locking {}", path.display()),
            source: e.into(),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data behind (every
    // update is a plain assignment after the I/O it describes).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Volume {
    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Logical block size recorded at creation.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The highest durable seq of `ring_id` (0 unless it is the current
    /// ring).
    pub fn durable_seq_for(&self, ring_id: u64) -> u64 {
        let j = lock(&self.journal);
        if j.durable.ring_id == ring_id {
            j.durable.seq
        } else {
            0
        }
    }

    /// `(ring_id, seq)` of the last durable record.
    pub fn durable(&self) -> (u64, u64) {
        let j = lock(&self.journal);
        (j.durable.ring_id, j.durable.seq)
    }

    /// The journal position after the last durable record (what
    /// [`crate::Store::open_end`] takes to leave out records not durable
    /// yet).
    pub fn durable_position(&self) -> Position {
        lock(&self.journal).durable
    }

    /// Seq of the first RESYNC record of the resync section the durable
    /// journal ends in, if it does (Documentation/design.rst, "Overflow and
    /// resync").
    pub fn resync_since(&self) -> Option<u64> {
        lock(&self.journal)
            .durable_sections
            .open()
            .map(|s| s.since_seq)
    }

    /// Refuses a ring this volume has seen end ([`StoreError::StaleRing`]):
    /// its records would be stored after those of a newer attach.
    pub fn check_ring(&self, ring_id: u64) -> Result<()> {
        let j = lock(&self.journal);
        self.check_ring_locked(&j, ring_id)
    }

    fn check_ring_locked(&self, j: &Journal, ring_id: u64) -> Result<()> {
        let current = j.appended.ring_id;
        if ring_id != current && j.rings.contains(&ring_id) {
            return Err(StoreError::StaleRing {
                volume: self.name.clone(),
                ring_id,
                current,
            });
        }
        Ok(())
    }

    /// Whether records were appended that are not durable yet.
    pub fn has_unsynced(&self) -> bool {
        let j = lock(&self.journal);
        j.appended.is_after(&j.durable)
    }

    /// The checkpoint the image stands at.
    pub fn checkpoint(&self) -> Position {
        lock(&self.image).state.checkpoint
    }

    /// Counters of the volume.
    pub fn status(&self) -> Result<VolumeStatus> {
        let (ring_id, durable_seq) = self.durable();
        let resync_since_seq = self.resync_since();
        let cp = self.checkpoint();
        let (segments, journal_bytes) = journal_usage(&self.src)?;
        Ok(VolumeStatus {
            volume: self.name.clone(),
            size_bytes: self.size_bytes,
            block_size: self.block_size,
            ring_id,
            durable_seq,
            applied_ring_id: cp.ring_id,
            applied_seq: cp.seq,
            journal_bytes,
            segments,
            resyncing: resync_since_seq.is_some(),
            resync_since_seq,
        })
    }
}

/// Local segment ids in a journal directory, sorted.
pub(crate) fn local_segments(journal_dir: &Path) -> Result<Vec<(u64, u64)>> {
    let mut ids = Vec::new();
    let rd = fs::read_dir(journal_dir).ctx(|| format!("listing {}", journal_dir.display()))?;
    for ent in rd {
        let ent = ent.ctx(|| format!("listing {}", journal_dir.display()))?;
        if let Some(id) = ent.file_name().to_str().and_then(parse_segment_file_name) {
            let len = ent
                .metadata()
                .ctx(|| format!("stat {}", ent.path().display()))?
                .len();
            ids.push((id, len));
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Indexes the journal from where `ix` stands up to `upto`.
fn catch_up(ix: &mut Index, src: &SegmentSource, upto: Position, clock: &Clock) -> Result<()> {
    let Some(from) = ix.indexed()? else {
        return Ok(());
    };
    if !upto.is_after(&from) {
        return Ok(());
    }
    let last_point = ix.last_point()?.unwrap_or(PointRow {
        pos: from,
        time_ns: 0,
        received_ns: 0,
        kind: PointKind::Base,
    });
    let last_time = ix.last_record_time()?;
    let sections = ix.indexed_sections()?;
    let s = scan(
        src,
        from,
        upto.segment,
        Some(upto),
        // Durable records: the index needs their headers (checked), marks
        // and resync ends (read whole). Their data was checked when they
        // were appended (those after the checkpoint also when the volume
        // was opened); the apply and every restore or NBD read that uses
        // it check it again, and a rebuilt index leaves rot in older
        // records to the restore that reads them.
        Payloads::Indexed,
        Scanner::new(last_point, last_time, sections, clock.now_ns()),
    )?;
    if s.rows.clamped > 0 {
        warn!(
            volume = %src.volume,
            points = s.rows.clamped,
            "points whose host time was before an earlier point's (the protected host's clock went back, or forged); each shows the earlier time"
        );
    }
    ix.add(&s.rows, s.end, s.sections)
}

/// Number and bytes of a volume's segments (local and sealed).
pub(crate) fn journal_usage(src: &SegmentSource) -> Result<(u64, u64)> {
    let local = local_segments(&src.journal_dir)?;
    let sealed = src
        .store
        .list(&src.volume)
        .ctx(|| format!("listing sealed segments of {}", src.volume))?;
    let mut ids: Vec<(u64, u64)> = local;
    ids.extend(sealed.iter().map(|s| (s.id, s.size)));
    ids.sort_unstable();
    ids.dedup_by_key(|s| s.0);
    Ok((ids.len() as u64, ids.iter().map(|s| s.1).sum()))
}

/// Creates the files of a new volume in `dir` (which must not exist).
pub(crate) fn create_volume_files(dir: &Path, state: &VolumeState) -> Result<()> {
    let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
    let journal = dir.join(JOURNAL_DIR);
    fs::create_dir_all(&journal).ctx(|| ctx("creating", &journal))?;
    for name in [IMAGE_FILE, BASE_FILE] {
        let image = dir.join(name);
        let f = File::create(&image).ctx(|| ctx("creating", &image))?;
        f.set_len(state.size_bytes)
            .and_then(|()| f.sync_all())
            .ctx(|| ctx("sizing", &image))?;
    }
    let header = SegmentHeader {
        id: state.checkpoint.segment,
        ring_id: state.checkpoint.ring_id,
        first_seq: state.checkpoint.seq + 1,
        created_ns: state.created_ns,
    };
    let seg = journal.join(segment_file_name(header.id));
    create_segment(&seg, &header)
        .map_err(|e| e.error)
        .ctx(|| ctx("creating", &seg))?;
    for f in [LOCK_FILE, WRITER_LOCK_FILE] {
        let p = dir.join(f);
        File::create(&p).ctx(|| ctx("creating", &p))?;
    }
    state.store(&dir.join(STATE_FILE))?;
    crate::segment::sync_dir(dir).ctx(|| ctx("syncing", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::FAIL_FSYNC_UNDER;
    use crate::Store;
    use rtbackup_proto::{build_record, RTB_OP_FLUSH, RTB_OP_WRITE};

    fn fail_fsyncs_under(p: &Path, errno: Option<i32>) {
        let mut v = lock(&FAIL_FSYNC_UNDER);
        match errno {
            Some(e) => v.push((p.to_owned(), e)),
            None => v.retain(|x| x.0 != p),
        }
    }

    fn batch(from: u64) -> Vec<u8> {
        let mut b = build_record(RTB_OP_WRITE, 0, from, 0, 512, 0, &[7; 512]);
        b.extend(build_record(RTB_OP_FLUSH, 0, from + 1, 0, 0, 0, &[]));
        b
    }

    #[test]
    fn failed_sync_poisons_the_volume_for_the_process() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let vol = store.open_or_create_volume("v", 1 << 16, 512).unwrap();
        vol.append(5, &batch(1)).unwrap();
        vol.sync().unwrap();
        vol.append(5, &batch(3)).unwrap();
        let jdir = d.path().join("volumes/v/journal");
        fail_fsync_under_guarded(&jdir, || {
            let e = vol.sync().unwrap_err();
            assert!(matches!(e, StoreError::Io { .. }), "{e}");
        });
        // The handle refuses work, and the volume cannot be reopened by
        // this process even though fsyncs would succeed again.
        assert!(matches!(vol.sync(), Err(StoreError::Poisoned(_))));
        assert!(matches!(
            vol.append(5, &batch(5)),
            Err(StoreError::Poisoned(_))
        ));
        assert_eq!(vol.durable(), (5, 2));
        drop(vol);
        let e = store.open_volume("v").unwrap_err();
        assert!(matches!(e, StoreError::FsyncFailed(_)), "{e}");
        assert!(e.is_internal());
        assert!(e.to_string().contains("restart"), "{e}");
    }

    /// Running out of descriptors while syncing (EMFILE opening the
    /// directory) refuses that operation but is no failed fsync: the
    /// volume is not poisoned, and it opens and syncs once descriptors
    /// are back.
    #[test]
    fn running_out_of_descriptors_poisons_nothing() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let vol = store.open_or_create_volume("m", 1 << 16, 512).unwrap();
        vol.append(5, &batch(1)).unwrap();
        drop(vol);
        let jdir = d.path().join("volumes/m/journal");
        fail_with_under_guarded(&jdir, nix::libc::EMFILE, || {
            let e = store.open_volume("m").unwrap_err();
            assert!(e.to_string().contains("Too many open files"), "{e}");
        });
        let vol = store.open_volume("m").unwrap();
        assert_eq!(vol.durable(), (5, 2));
        vol.append(5, &batch(3)).unwrap();
        vol.sync().unwrap();
    }

    #[test]
    fn open_syncs_the_active_segment_before_trusting_it() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let vol = store.open_or_create_volume("w", 1 << 16, 512).unwrap();
        // Appended but never synced: a crashed process's page cache.
        vol.append(9, &batch(1)).unwrap();
        drop(vol);
        let jdir = d.path().join("volumes/w/journal");
        fail_fsync_under_guarded(&jdir, || {
            let e = store.open_volume("w").unwrap_err();
            assert!(matches!(e, StoreError::Io { .. }), "{e}");
        });
        assert!(matches!(
            store.open_volume("w"),
            Err(StoreError::FsyncFailed(_))
        ));
    }

    #[test]
    fn open_counts_unsynced_records_once_synced() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let vol = store.open_or_create_volume("u", 1 << 16, 512).unwrap();
        vol.append(9, &batch(1)).unwrap();
        drop(vol);
        let vol = store.open_volume("u").unwrap();
        assert_eq!(vol.durable(), (9, 2));
    }

    fn fail_fsync_under_guarded(p: &Path, f: impl FnOnce()) {
        fail_with_under_guarded(p, nix::libc::EIO, f);
    }

    fn fail_with_under_guarded(p: &Path, errno: i32, f: impl FnOnce()) {
        fail_fsyncs_under(p, Some(errno));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        fail_fsyncs_under(p, None);
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    }
}
