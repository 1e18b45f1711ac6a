//! A volume open for ingest: the journal appender and the image applier.

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

/// Takes the volume lock to open the volume, waiting at most
/// [`OPEN_LOCK_WAIT`] (a restore holds it for the whole copy).
fn lock_for_open(dir: &Path, name: &str) -> Result<Flock<File>> {
    let deadline = Instant::now() + OPEN_LOCK_WAIT;
    loop {
        if let Some(l) = lock_volume(dir, FlockArg::LockExclusiveNonblock)? {
            return Ok(l);
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Locked(name.to_owned()));
        }
        std::thread::sleep(OPEN_LOCK_RETRY);
    }
}

/// Removes temporary segment files left by an interrupted segment creation.
fn remove_temp_segments(src: &SegmentSource) -> Result<()> {
    let dir = &src.journal_dir;
    let rd = fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))?;
    let mut removed = false;
    for ent in rd {
        let ent = ent.ctx(|| format!("listing {}", dir.display()))?;
        let is_temp = ent
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".tmp"))
            .and_then(parse_segment_file_name)
            .is_some();
        if is_temp {
            let p = ent.path();
            warn!(volume = %src.volume, file = %p.display(), "removing a segment left half-made by a crash");
            fs::remove_file(&p).ctx(|| format!("removing {}", p.display()))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir).ctx(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Removes the newest local segment if a crash while it was being created
/// left it without a valid header (stores made before segments were created
/// by rename): only when it holds no record (at most a header's length) and
/// an older segment exists. A longer file with a bad header is corruption
/// and is left for the walk to report.
fn drop_unfinished_newest_segment(src: &SegmentSource, local: &mut Vec<(u64, u64)>) -> Result<()> {
    let Some(&(id, len)) = local.last() else {
        return Ok(());
    };
    if id <= 1 || len > SEGMENT_HEADER_LEN {
        return Ok(());
    }
    let path = src.local_path(id);
    let mut f = File::open(&path).ctx(|| format!("opening {}", path.display()))?;
    let why = match read_segment_header(&mut f) {
        Ok(h) if h.id == id => return Ok(()),
        Ok(h) => format!("header says segment {}", h.id),
        Err(e) => e,
    };
    let has_older = local.len() >= 2
        || src
            .store
            .list(&src.volume)
            .ctx(|| format!("listing sealed segments of {}", src.volume))?
            .iter()
            .any(|s| s.id == id - 1);
    if !has_older {
        return Ok(());
    }
    warn!(
        volume = %src.volume,
        segment = %path.display(),
        bytes = len,
        "removing the newest segment, left without a valid header by a crash while it was created (it holds no record): {why}"
    );
    fs::remove_file(&path).ctx(|| format!("removing {}", path.display()))?;
    sync_dir(&src.journal_dir).ctx(|| format!("syncing {}", src.journal_dir.display()))?;
    local.pop();
    Ok(())
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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves consistent data behind (every
    // update is a plain assignment after the I/O it describes).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Volume {
    /// Opens an existing volume for ingest and recovers it: moves segments
    /// sealed but not yet stored, scans the journal from the checkpoint,
    /// truncates a torn tail of the active segment (reported, never
    /// applied), and replays durable records up to the last consistency
    /// point onto the image.
    pub(crate) fn open(dir: PathBuf, src: SegmentSource, opts: VolumeOptions) -> Result<Self> {
        let name = src.volume.clone();
        if fsync_failed(&dir) {
            return Err(StoreError::FsyncFailed(name));
        }
        let wl = dir.join(WRITER_LOCK_FILE);
        let wf = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wl)
            .ctx(|| format!("opening {}", wl.display()))?;
        let writer = match Flock::lock(wf, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, Errno::EWOULDBLOCK)) => return Err(StoreError::Busy(name)),
            Err((_, e)) => {
                return Err(StoreError::Io {
                    context: format!("locking {}", wl.display()),
                    source: e.into(),
                })
            }
        };
        let vlock = lock_for_open(&dir, &name)?;
        let state_path = dir.join(STATE_FILE);
        let mut state = VolumeState::load(&state_path)?;
        remove_temp_segments(&src)?;
        let mut local = local_segments(&src.journal_dir)?;
        drop_unfinished_newest_segment(&src, &mut local)?;
        let Some(&(active_id, _)) = local.last() else {
            return Err(StoreError::Corrupt {
                segment: src.journal_dir.display().to_string(),
                offset: 0,
                reason: "no active segment in the journal directory".into(),
            });
        };
        for &(id, _) in &local[..local.len() - 1] {
            info!(volume = %name, segment = id, "storing a segment sealed before a restart");
            let path = src.local_path(id);
            src.store
                .put(&name, id, &path)
                .ctx(|| format!("storing sealed segment {}", path.display()))?;
        }
        if state.checkpoint.segment > active_id {
            return Err(StoreError::BadState {
                path: state_path,
                reason: format!(
                    "checkpoint in segment {} after the active segment {active_id}",
                    state.checkpoint.segment
                ),
            });
        }
        let active_path = src.local_path(active_id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&active_path)
            .ctx(|| format!("opening {}", active_path.display()))?;
        // The page cache may hold bytes of the active segment that never
        // reached the disk (the previous process died before its fdatasync,
        // or that fdatasync failed): make them durable before counting them
        // as durable, with the directory entry...
        sync_data(&file, &active_path).map_err(|e| {
            fsync_error(&dir, &name, format!("syncing {}", active_path.display()), e)
        })?;
        sync_dir(&src.journal_dir).map_err(|e| {
            fsync_error(
                &dir,
                &name,
                format!("syncing {}", src.journal_dir.display()),
                e,
            )
        })?;
        // ...and have the walk below read the disk rather than the cache
        // (only clean pages are dropped; best effort).
        let _ = posix_fadvise(
            file.as_raw_fd(),
            0,
            0,
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        let mut cps = CpTracker::new(state.checkpoint);
        let mut rings = std::mem::take(&mut state.rings);
        note_ring(&mut rings, state.checkpoint.ring_id);
        let end = walk(&src, state.checkpoint, active_id, None, |e| {
            if let Event::Boundary { next, .. } = &e {
                note_ring(&mut rings, next.ring_id);
            }
            cps.event(&e);
            Ok(())
        })?;
        if end.end.segment != active_id {
            return Err(StoreError::Corrupt {
                segment: src.describe(end.end.segment),
                offset: end.end.offset,
                reason: "journal walk ended before the active segment".into(),
            });
        }
        note_ring(&mut rings, end.end.ring_id);
        if let Some(tail) = &end.tail {
            let len = file
                .metadata()
                .ctx(|| format!("stat {}", active_path.display()))?
                .len();
            let kept = quarantine(&dir, &file, active_id, tail.offset, len)?;
            warn!(
                volume = %name,
                segment = %active_path.display(),
                offset = tail.offset,
                discarded_bytes = len - tail.offset,
                last_valid_seq = end.end.seq,
                quarantined = %kept.display(),
                "torn tail in the active segment (records never acknowledged): {}; its bytes \
                 are kept in the quarantine file, the segment is cut there",
                tail.error
            );
            file.set_len(tail.offset)
                .ctx(|| format!("truncating {}", active_path.display()))?;
            file.sync_all().map_err(|e| {
                fsync_error(&dir, &name, format!("syncing {}", active_path.display()), e)
            })?;
        }
        let header = src.header(active_id)?;
        let image_path = dir.join(IMAGE_FILE);
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image_path)
            .ctx(|| format!("opening {}", image_path.display()))?;
        let ilen = image
            .metadata()
            .ctx(|| format!("stat {}", image_path.display()))?
            .len();
        if ilen != state.size_bytes {
            return Err(StoreError::BadState {
                path: image_path,
                reason: format!("image has {ilen} bytes, the volume {}", state.size_bytes),
            });
        }
        state.ring_id = end.end.ring_id;
        state.durable_seq = end.end.seq;
        state.rings = rings.clone();
        let base = open_base(&dir, &name, &image, &mut state)?;
        let index = open_index(&dir, &src, &state, end.end, &opts.clock)?;
        let oldest = src
            .store
            .list(&name)
            .ctx(|| format!("listing sealed segments of {name}"))?
            .first()
            .map_or(active_id, |s| s.id.min(active_id));
        let vol = Volume {
            name: name.clone(),
            size_bytes: state.size_bytes,
            block_size: state.block_size,
            dir,
            opts,
            src,
            journal: Mutex::new(Journal {
                file: Arc::new(file),
                header,
                appended: end.end,
                durable: end.end,
                pending: cps,
                durable_cp: cps.last,
                durable_sections: cps.sections,
                poisoned: false,
                rings,
                reserved: 0,
            }),
            image: Mutex::new(ImageState {
                file: image,
                base,
                state,
                oldest_segment: oldest,
            }),
            index: Mutex::new(index),
            _writer: writer,
        };
        {
            let target = vol.image_target(cps.last)?;
            let mut img = lock(&vol.image);
            let out = vol.apply_locked(&mut img, target, active_id)?;
            if let ApplyOutcome::Applied {
                checkpoint,
                records,
            } = out
            {
                info!(volume = %name, seq = checkpoint.seq, records, "replayed journal onto the image");
            }
            if let Some(to) = img.state.folding {
                info!(volume = %name, seq = to.seq, "finishing a fold of history interrupted by a crash");
                let p = img.state.oldest_point();
                vol.fold(&mut img, p)?;
            }
        }
        drop(vlock);
        debug!(volume = %name, ring_id = end.end.ring_id, durable_seq = end.end.seq, "volume open");
        Ok(vol)
    }

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

    /// Validates a batch of records of ring `ring_id` (a RECORDS frame's
    /// payload) and appends the records not held yet with one write. The
    /// whole batch is refused, and nothing of it stored, if any record is
    /// invalid, outside the volume, or leaves a gap in the sequence.
    /// Records are durable after the next [`Volume::sync`].
    pub fn append(&self, ring_id: u64, batch: &[u8]) -> Result<AppendOutcome> {
        // Validation needs no lock: checksums, ranges, consecutive seqs.
        let mut first = None;
        let mut last = 0u64;
        let mut count = 0usize;
        let mut valid = Vec::new();
        let mut it = records(batch);
        loop {
            let offset = it.offset();
            let Some(r) = it.next() else { break };
            let rec = r.map_err(|source| StoreError::BadRecord {
                index: count,
                offset,
                source,
            })?;
            let seq = rec.seq();
            if seq == 0 || seq == u64::MAX {
                // (u64::MAX would leave no next seq.)
                return Err(StoreError::Refused {
                    seq,
                    reason: "seq 0 and u64::MAX are not valid".into(),
                });
            }
            if rec.is_pad() {
                return Err(StoreError::BadRecord {
                    index: count,
                    offset,
                    source: RecordError::Invalid {
                        seq,
                        what: "padding record on the wire".into(),
                    },
                });
            }
            let (start, end) = rec.byte_range();
            if end > self.size_bytes {
                return Err(StoreError::OutOfRange {
                    seq,
                    start,
                    end,
                    size: self.size_bytes,
                });
            }
            if first.is_some() && seq != last + 1 {
                return Err(StoreError::SeqGap {
                    expected: last + 1,
                    got: seq,
                });
            }
            first.get_or_insert(seq);
            last = seq;
            count += 1;
            valid.push(rec);
        }
        let Some(first) = first else {
            return Ok(AppendOutcome {
                appended: 0,
                skipped: 0,
                bytes: 0,
                last_seq: self.durable_seq_for(ring_id),
            });
        };

        let mut j = lock(&self.journal);
        if j.poisoned {
            return Err(StoreError::Poisoned(self.name.clone()));
        }
        let new_ring = ring_id != j.appended.ring_id;
        if new_ring {
            self.check_ring_locked(&j, ring_id)?;
        }
        let expected = if new_ring {
            1
        } else {
            j.appended.seq.saturating_add(1)
        };
        if first > expected {
            return Err(StoreError::SeqGap {
                expected,
                got: first,
            });
        }
        let skipped = (expected - first) as usize;
        if skipped >= count {
            return Ok(AppendOutcome {
                appended: 0,
                skipped: count,
                bytes: 0,
                last_seq: j.appended.seq,
            });
        }
        let skip_off: usize = valid[..skipped].iter().map(|r| r.bytes.len()).sum();
        let data = &batch[skip_off..];
        if new_ring {
            self.roll(&mut j, ring_id, 1)?;
        } else if j.appended.offset > SEGMENT_HEADER_LEN
            && j.appended.offset + data.len() as u64 > self.opts.segment_bytes
        {
            self.roll(&mut j, ring_id, expected)?;
        }
        let at = j.appended.offset;
        let end = at + data.len() as u64;
        if end > j.reserved {
            match reserve(&j.file, at, end) {
                Ok(r) => j.reserved = r,
                Err(e) => {
                    let context = format!(
                        "reserving {} bytes of {} at offset {at}",
                        end - at + RESERVE_AHEAD,
                        self.src.describe(j.header.id)
                    );
                    return Err(self.write_error(context, e));
                }
            }
        }
        if let Err(e) = j.file.write_all_at(data, at) {
            // Take back a partial write; if that fails too, the segment's
            // end is unknown.
            if j.file.set_len(at).is_err() {
                j.poisoned = true;
            }
            let context = format!(
                "appending {} bytes to {} at offset {at}",
                data.len(),
                self.src.describe(j.header.id)
            );
            return Err(self.write_error(context, e));
        }
        // Consistency points among the records appended.
        let mut cps = j.pending;
        let mut start = j.appended;
        for rec in &valid[skipped..] {
            let end = Position {
                segment: start.segment,
                offset: start.offset + rec.bytes.len() as u64,
                ring_id,
                seq: rec.seq(),
            };
            cps.record(rec, start, end);
            start = end;
        }
        j.pending = cps;
        j.appended = start;
        Ok(AppendOutcome {
            appended: count - skipped,
            skipped,
            bytes: data.len() as u64,
            last_seq: last,
        })
    }

    /// The error of a failed write or reservation of this volume: `Full`
    /// for a full disk (nothing was stored; the volume stays usable).
    fn write_error(&self, context: String, source: std::io::Error) -> StoreError {
        if crate::error::is_full(&source) {
            warn!(volume = %self.name, "{context}: {source}: not stored, not acknowledged");
            return StoreError::Full {
                volume: self.name.clone(),
                context,
                source,
            };
        }
        StoreError::Io { context, source }
    }

    /// Seals the active segment and starts a new one for `ring_id` whose
    /// first record will be `first_seq`. The end of a ring is a consistency
    /// point, the device's state when its ring ended, unless a resync
    /// section stays open across it.
    fn roll(&self, j: &mut Journal, ring_id: u64, first_seq: u64) -> Result<()> {
        let old_id = j.header.id;
        let old_path = self.src.local_path(old_id);
        if let Err(e) = sync_data(&j.file, &old_path) {
            j.poisoned = true;
            return Err(fsync_error(
                &self.dir,
                &self.name,
                format!("syncing {}", old_path.display()),
                e,
            ));
        }
        j.durable = j.appended;
        j.durable_cp = j.pending.last;
        j.durable_sections = j.pending.sections;
        let header = SegmentHeader {
            id: old_id + 1,
            ring_id,
            first_seq,
            created_ns: self.opts.clock.now_ns(),
        };
        let path = self.src.local_path(header.id);
        let file = match create_segment(&path, &header) {
            Ok(f) => f,
            Err(CreateSegmentError { fsync: true, error }) => {
                j.poisoned = true;
                return Err(fsync_error(
                    &self.dir,
                    &self.name,
                    format!("creating {}", path.display()),
                    error,
                ));
            }
            Err(CreateSegmentError { error, .. }) => {
                return Err(self.write_error(format!("creating {}", path.display()), error))
            }
        };
        // The sealed segment keeps no space reserved past its end (the
        // filesystems that reserve free it on a truncate to its size).
        if j.reserved != u64::MAX {
            let _ = j.file.set_len(j.appended.offset);
        }
        j.reserved = 0;
        if ring_id != j.header.ring_id {
            note_ring(&mut j.rings, ring_id);
        }
        // The end of a ring (a consistency point unless a resync section
        // stays open).
        let prev_end = j.appended;
        j.pending.boundary(prev_end, &header);
        j.durable_cp = j.pending.last;
        j.durable_sections = j.pending.sections;
        j.file = Arc::new(file);
        j.header = header;
        j.appended = segment_start(&header);
        j.durable = j.appended;
        debug!(volume = %self.name, segment = header.id, ring_id, first_seq, "new segment");
        if let Err(e) = self.src.store.put(&self.name, old_id, &old_path) {
            // The segment stays in the journal directory, where readers
            // find it; the next open stores it.
            warn!(volume = %self.name, segment = %old_path.display(), "cannot store sealed segment: {e}");
        }
        Ok(())
    }

    /// Makes every appended record durable (`fdatasync`) and returns
    /// `(ring_id, seq)` of the last durable record. The journal is not
    /// locked while the disk works: appends go on and share the next sync.
    pub fn sync(&self) -> Result<(u64, u64)> {
        let (file, upto, cp, id) = {
            let j = lock(&self.journal);
            if j.poisoned {
                return Err(StoreError::Poisoned(self.name.clone()));
            }
            if !j.appended.is_after(&j.durable) {
                return Ok((j.durable.ring_id, j.durable.seq));
            }
            (Arc::clone(&j.file), j.appended, j.pending, j.header.id)
        };
        let r = sync_data(&file, &self.src.local_path(id));
        let mut j = lock(&self.journal);
        if let Err(e) = r {
            // After a failed fsync the page cache may have dropped the
            // data: nothing written since the last sync can be trusted.
            j.poisoned = true;
            return Err(fsync_error(
                &self.dir,
                &self.name,
                format!("syncing {}", self.src.describe(id)),
                e,
            ));
        }
        if upto.is_after(&j.durable) {
            j.durable = upto;
            j.durable_sections = cp.sections;
        }
        if cp.last.is_after(&j.durable_cp) {
            j.durable_cp = cp.last;
        }
        Ok((j.durable.ring_id, j.durable.seq))
    }

    /// Advances the image to the last durable consistency point: applies
    /// the records since the checkpoint, fsyncs the image, writes the new
    /// checkpoint, and retires segments no longer needed. With `wait`
    /// false, returns [`ApplyOutcome::Deferred`] instead of waiting for a
    /// restore that holds the volume lock.
    pub fn apply(&self, wait: bool) -> Result<ApplyOutcome> {
        let (durable, durable_cp, active) = {
            let j = lock(&self.journal);
            (j.durable, j.durable_cp, j.header.id)
        };
        // The index is derived data: failing to update it must not stop
        // the image (it is caught up again next time, or rebuilt at open).
        if let Err(e) = self.catch_up_index(durable) {
            warn!(volume = %self.name, "cannot update the history index: {e}");
        }
        let target = self.image_target(durable_cp)?;
        let mut img = lock(&self.image);
        if !target.is_after(&img.state.checkpoint) {
            return Ok(ApplyOutcome::UpToDate);
        }
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let Some(_vlock) = lock_volume(&self.dir, arg)? else {
            return Ok(ApplyOutcome::Deferred);
        };
        self.apply_locked(&mut img, target, active)
    }

    fn apply_locked(
        &self,
        img: &mut ImageState,
        target: Position,
        active: u64,
    ) -> Result<ApplyOutcome> {
        let from = img.state.checkpoint;
        if !target.is_after(&from) {
            return Ok(ApplyOutcome::UpToDate);
        }
        let n = self.replay_onto(&img.file, IMAGE_FILE, from, target)?;
        let durable = self.durable();
        img.state.rings = lock(&self.journal).rings.clone();
        img.state.checkpoint = target;
        img.state.ring_id = durable.0;
        img.state.durable_seq = durable.1;
        img.state.updated_ns = now_ns();
        img.state.store(&self.dir.join(STATE_FILE))?;
        self.retire_applied_segments(img, active);
        Ok(ApplyOutcome::Applied {
            checkpoint: target,
            records: n,
        })
    }

    /// Applies the journal's records from `from` to `to` onto `file` (the
    /// image or the base image, called `name` in the volume directory) and
    /// fdatasyncs it; a failed fsync poisons the volume. Returns the number
    /// of records applied.
    fn replay_onto(&self, file: &File, name: &str, from: Position, to: Position) -> Result<u64> {
        let path = self.dir.join(name);
        let mut t = Target::new(file, true);
        let mut n = 0u64;
        walk(&self.src, from, to.segment, Some(to), |e| {
            if let Event::Record { rec, .. } = e {
                t.apply(rec)
                    .ctx(|| format!("applying record seq {} to {}", rec.seq(), path.display()))?;
                n += 1;
            }
            Ok(())
        })?;
        if let Err(e) = sync_data(file, &path) {
            lock(&self.journal).poisoned = true;
            return Err(fsync_error(
                &self.dir,
                &self.name,
                format!("syncing {}", path.display()),
                e,
            ));
        }
        Ok(n)
    }

    /// Indexes the durable records not indexed yet, up to `durable`.
    fn catch_up_index(&self, durable: Position) -> Result<()> {
        let mut ix = lock(&self.index);
        catch_up(&mut ix, &self.src, durable, &self.opts.clock)
    }

    /// Where the image should stand: the last durable consistency point,
    /// or with an apply delay the newest point at least that old.
    fn image_target(&self, durable_cp: Position) -> Result<Position> {
        if self.opts.apply_delay.is_zero() {
            return Ok(durable_cp);
        }
        // The backup host's clock: the protected host's may lie.
        let horizon = self.opts.clock.ago(self.opts.apply_delay);
        let p = lock(&self.index).point_received_by(horizon)?;
        Ok(match p {
            Some(p) if !p.pos.is_after(&durable_cp) => p.pos,
            Some(_) => durable_cp,
            // Nothing old enough: stay (the checkpoint is never after it).
            None => Position {
                segment: 0,
                offset: 0,
                ring_id: 0,
                seq: 0,
            },
        })
    }

    /// The point the base image should advance to under the retention
    /// policy, if any.
    fn retention_target(&self) -> Result<Option<PointRow>> {
        let r = self.opts.retention;
        let ix = lock(&self.index);
        let mut target: Option<PointRow> = None;
        if let Some(keep) = r.keep {
            // The backup host's clock: the protected host's may lie.
            target = ix.point_received_by(self.opts.clock.ago(keep))?;
        }
        if let Some(cap) = r.keep_bytes {
            let mut segs = local_segments(&self.src.journal_dir)?;
            segs.extend(
                self.src
                    .store
                    .list(&self.name)
                    .ctx(|| format!("listing sealed segments of {}", self.name))?
                    .iter()
                    .map(|s| (s.id, s.size)),
            );
            segs.sort_unstable();
            segs.dedup_by_key(|s| s.0);
            // The oldest segment to keep: the newer ones fit in the cap.
            let mut total = 0u64;
            let mut keep_from = None;
            for &(id, size) in segs.iter().rev() {
                total = total.saturating_add(size);
                if total > cap {
                    break;
                }
                keep_from = Some(id);
            }
            let first = keep_from.or(segs.last().map(|s| s.0));
            if let Some(first) = first {
                let start = Position {
                    segment: first,
                    offset: 0,
                    ring_id: 0,
                    seq: 0,
                };
                // Never a point younger than the minimum age (the backup
                // host's clock).
                let oldest_young = match r.size_min_age.or(r.keep) {
                    Some(age) => ix.point_received_by(self.opts.clock.ago(age))?,
                    None => None,
                };
                let by_size = match (ix.first_point_after(start)?, oldest_young) {
                    (Some(p), Some(f)) if p.pos.is_after(&f.pos) => Some(f),
                    (Some(p), Some(_)) => Some(p),
                    _ => None,
                };
                if let Some(p) = by_size {
                    if target.is_none_or(|t| p.pos.is_after(&t.pos)) {
                        target = Some(p);
                    }
                }
            }
        }
        Ok(target)
    }

    /// Folds history older than the retention policy allows into the base
    /// image, one bounded step per call (at most about [`FOLD_STEP_BYTES`]
    /// of journal): applies the records from the base point to a later
    /// point onto the base image, fsyncs it, records the new base point in
    /// the state file, then deletes the segments and index rows no longer
    /// needed. A crash at any moment leaves the old base point recorded
    /// and the base image possibly ahead of it, which replaying from the
    /// base point (idempotent) makes right; nothing inside the window is
    /// lost. The base never passes the image's checkpoint.
    pub fn compact(&self) -> Result<CompactOutcome> {
        let Some(want) = self.retention_target()? else {
            return Ok(CompactOutcome::UpToDate);
        };
        let mut img = lock(&self.image);
        let base = img.state.base();
        let cp = img.state.checkpoint;
        let target = if want.pos.is_after(&cp) {
            match lock(&self.index).point_at_or_before(cp)? {
                Some(p) => p,
                None => return Ok(CompactOutcome::UpToDate),
            }
        } else {
            want
        };
        if !target.pos.is_after(&base) {
            return Ok(CompactOutcome::UpToDate);
        }
        let step = {
            let ix = lock(&self.index);
            let bound = Position {
                segment: base.segment,
                offset: base.offset.saturating_add(FOLD_STEP_BYTES),
                ring_id: 0,
                seq: 0,
            };
            let near = if target.pos.is_after(&bound) {
                ix.point_at_or_before(bound)?
                    .filter(|p| p.pos.is_after(&base))
                    .or(ix.first_point_after(base)?)
            } else {
                Some(target)
            };
            match near {
                Some(p) if !p.pos.is_after(&target.pos) => p,
                _ => target,
            }
        };
        let Some(_vlock) = lock_volume(&self.dir, FlockArg::LockExclusiveNonblock)? else {
            return Ok(CompactOutcome::Deferred);
        };
        let n = self.fold(&mut img, step)?;
        Ok(CompactOutcome::Folded {
            base: step.pos,
            records: n,
            more: target.pos.is_after(&step.pos),
        })
    }

    /// Folds the journal from the base point to `to` into the base image
    /// (with the volume lock held). Records the fold's end durably first:
    /// from then on, points before it are not restorable (the base image
    /// may hold later records), and a crash leaves it for
    /// [`Volume::open`] to finish.
    fn fold(&self, img: &mut ImageState, to: PointRow) -> Result<u64> {
        let base = img.state.base();
        if img.state.folding.map(|f| f.same_place(&to.pos)) != Some(true) {
            img.state.folding = Some(to.pos);
            img.state.folding_time_ns = to.time_ns;
            img.state.folding_received_ns = to.received_ns;
            img.state.updated_ns = now_ns();
            img.state.store(&self.dir.join(STATE_FILE))?;
        }
        let n = self.replay_onto(&img.base, BASE_FILE, base, to.pos)?;
        img.state.base = Some(to.pos);
        img.state.base_time_ns = to.time_ns;
        img.state.base_received_ns = to.received_ns;
        img.state.folding = None;
        img.state.folding_time_ns = 0;
        img.state.folding_received_ns = 0;
        img.state.updated_ns = now_ns();
        img.state.store(&self.dir.join(STATE_FILE))?;
        let active = lock(&self.journal).header.id;
        self.retire_applied_segments(img, active);
        lock(&self.index).trim_before(to.pos)?;
        debug!(volume = %self.name, seq = to.pos.seq, records = n, "folded history into the base image");
        Ok(n)
    }

    /// Deletes sealed segments that neither the image nor the base image
    /// needs any more (those before the segment of the older of the two
    /// points). Called with the volume lock held, so a restore never sees
    /// a segment it needs vanish. Failures are logged: a segment left
    /// behind is retried next time.
    fn retire_applied_segments(&self, img: &mut ImageState, active: u64) {
        let upto = img
            .state
            .checkpoint
            .segment
            .min(img.state.base().segment)
            .min(active);
        while img.oldest_segment < upto {
            let id = img.oldest_segment;
            if let Err(e) = self.src.store.delete(&self.name, id) {
                warn!(volume = %self.name, segment = id, "cannot delete applied segment: {e}");
                return;
            }
            let local = self.src.local_path(id);
            if let Err(e) = fs::remove_file(&local) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(volume = %self.name, segment = %local.display(), "cannot delete applied segment: {e}");
                    return;
                }
            }
            debug!(volume = %self.name, segment = id, "retired applied segment");
            img.oldest_segment += 1;
        }
    }
}

/// Opens the base image, creating it for a volume of store format 1 (which
/// kept no history): a copy of the image, with the base point at the
/// checkpoint. Writes the state in the current format.
fn open_base(dir: &Path, name: &str, image: &File, state: &mut VolumeState) -> Result<File> {
    let path = dir.join(BASE_FILE);
    if state.base.is_some() {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ctx(|| format!("opening {}", path.display()))?;
        let len = f
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        if len != state.size_bytes {
            return Err(StoreError::BadState {
                path,
                reason: format!(
                    "base image has {len} bytes, the volume {}",
                    state.size_bytes
                ),
            });
        }
        return Ok(f);
    }
    info!(
        volume = name,
        "upgrading the volume to store format {}: copying the image to the base image",
        crate::STORE_FORMAT_VERSION
    );
    let tmp = dir.join(format!("{BASE_FILE}.tmp"));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .ctx(|| format!("creating {}", tmp.display()))?;
    f.set_len(state.size_bytes)
        .ctx(|| format!("sizing {}", tmp.display()))?;
    let mut t = Target::new(&f, true);
    sparse_copy(image, state.size_bytes, &mut t, true, &mut |_| {})
        .ctx(|| format!("copying the image to {}", tmp.display()))?;
    sync_data(&f, &tmp)
        .map_err(|e| fsync_error(dir, name, format!("syncing {}", tmp.display()), e))?;
    fs::rename(&tmp, &path).ctx(|| format!("renaming {} into place", tmp.display()))?;
    sync_dir(dir).map_err(|e| fsync_error(dir, name, format!("syncing {}", dir.display()), e))?;
    state.base = Some(state.checkpoint);
    state.base_time_ns = now_ns();
    state.base_received_ns = state.base_time_ns;
    state.format = crate::STORE_FORMAT_VERSION;
    state.store(&dir.join(STATE_FILE))?;
    Ok(f)
}

/// Directory of a volume's quarantined bytes: what recovery cut from the
/// journal, kept as evidence (Documentation/store.rst, "Recovery").
pub(crate) const QUARANTINE_DIR: &str = "quarantine";

/// Copies bytes `[from, len)` of the active segment `segment` (open as
/// `file`) into a new file of the volume's quarantine directory, durably,
/// before recovery cuts them off; returns its path.
fn quarantine(dir: &Path, file: &File, segment: u64, from: u64, len: u64) -> Result<PathBuf> {
    let qdir = dir.join(QUARANTINE_DIR);
    create_dir_all_durable(&qdir).ctx(|| format!("creating {}", qdir.display()))?;
    let path = qdir.join(format!("{segment:016x}-{from}.bin"));
    let ctx = || {
        format!(
            "quarantining bytes {from}..{len} of segment {segment} in {}",
            path.display()
        )
    };
    let mut out = File::create(&path).ctx(ctx)?;
    let mut src = file.try_clone().ctx(ctx)?;
    std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(from)).ctx(ctx)?;
    std::io::copy(&mut std::io::Read::take(&mut src, len - from), &mut out).ctx(ctx)?;
    out.sync_all().ctx(ctx)?;
    sync_dir(&qdir).ctx(ctx)?;
    Ok(path)
}

/// Opens the history index, rebuilt if missing or damaged, trimmed to the
/// journal (which ends at `end` after recovery) and to the base point, and
/// caught up with the journal.
fn open_index(
    dir: &Path,
    src: &SegmentSource,
    state: &VolumeState,
    end: Position,
    clock: &Clock,
) -> Result<Index> {
    let (mut ix, fresh) = Index::open_rw(&dir.join(INDEX_FILE))?;
    let base = state.base();
    if !fresh {
        ix.trim_after(end)?;
    }
    let usable = !fresh && ix.indexed()?.is_some_and(|i| !base.is_after(&i));
    if !usable {
        if !fresh {
            warn!(volume = %src.volume, "the history index is behind the base point; rebuilding it");
        }
        ix.clear()?;
        let rows = Rows {
            points: vec![PointRow {
                pos: base,
                time_ns: state.base_time_ns,
                received_ns: match state.base_received_ns {
                    0 => state.base_time_ns,
                    t => t,
                },
                kind: PointKind::Base,
            }],
            ..Rows::default()
        };
        // The base point is a consistency point: no resync section open.
        ix.add(&rows, base, SectionTracker::default())?;
    }
    ix.trim_before(base)?;
    catch_up(&mut ix, src, end, clock)?;
    Ok(ix)
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
