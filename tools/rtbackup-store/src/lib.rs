//! Storage of the rtbackup server (Documentation/store.rst).
//!
//! A store is a directory. Each volume has an append-only journal of the
//! records received (stored verbatim, checksums included), a sparse image
//! file holding the volume as of the last applied consistency point, and a
//! small state file with the checkpoint. Sealed journal segments go through
//! a [`SegmentStore`] ([`LocalDirStore`] today; an object store later).

mod clock;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod history;
mod image;
mod index;
mod journal;
mod point;
mod section;
mod segment;
mod state;
mod volume;

use std::fs::{self, File, OpenOptions};
use std::ops::ControlFlow;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::FlockArg;
use rtbackup_proto::validate_volume_name;
use serde::Serialize;

pub use clock::Clock;
pub use error::{Result, StoreError};
pub use history::{format_time, parse_volume_at, JournalEnd, PointInfo, PointSpec};
pub use index::{PointKind, RecordRow};
pub use point::PointReader;
pub use segment::{
    parse_segment_file_name, segment_file_name, LocalDirStore, SegmentHeader, SegmentInfo,
    SegmentRead, SegmentStore, SEGMENT_HEADER_LEN, SEGMENT_MAGIC, SEGMENT_VERSION,
};
pub use state::{Position, VolumeState, STORE_FORMAT_VERSION};
pub use volume::{
    AppendOutcome, ApplyOutcome, CompactOutcome, Retention, Volume, VolumeOptions, VolumeStatus,
};

use error::IoContext;
use history::HistoryView;
use image::{sparse_copy, Target};
use index::{Index, PointRow};
use journal::{walk, CpTracker, Event, SegmentSource};
use volume::{
    create_volume_files, journal_usage, local_segments, lock_volume, BASE_FILE, INDEX_FILE,
    JOURNAL_DIR, STATE_FILE,
};

/// Directory of the volumes in a store.
const VOLUMES_DIR: &str = "volumes";
/// Owners of volumes: one file per volume name holding the client's name.
const OWNERS_DIR: &str = "owners";
/// Directory of the [`LocalDirStore`] of sealed segments in a store.
const SEALED_DIR: &str = "sealed";

/// How far a restore got ([`Store::restore_at_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreProgress {
    /// Copying the image the point is based on: `done` of `total` bytes.
    Image {
        /// Bytes of the image gone through.
        done: u64,
        /// The volume's size.
        total: u64,
    },
    /// Replaying the journal onto it: `records` so far.
    Journal {
        /// Records replayed.
        records: u64,
    },
}

/// What [`Store::restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// The volume.
    pub volume: String,
    /// Ring of the last record in the restored state.
    pub ring_id: u64,
    /// Seq of the last record in the restored state (a consistency point).
    pub seq: u64,
    /// Bytes of the output (the volume size).
    pub bytes: u64,
    /// Bytes of data written: the image's data regions (holes skipped;
    /// through a buffer, all-zero chunks skipped too) and the replayed
    /// records' payloads.
    pub data_bytes: u64,
    /// Journal records replayed on top of the image.
    pub replayed_records: u64,
    /// The consistency point restored.
    pub point: PointInfo,
    /// Whether the copy started from the base image (an older point) rather
    /// than the current image.
    pub from_base: bool,
}

/// A store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    segments: Arc<dyn SegmentStore>,
    opts: VolumeOptions,
}

fn bad_name(name: &str) -> Result<()> {
    validate_volume_name(name).map_err(|e| StoreError::BadVolumeName {
        name: name.chars().take(80).collect(),
        reason: match e {
            rtbackup_proto::ProtoError::BadVolume { reason, .. } => reason.to_owned(),
            e => e.to_string(),
        },
    })
}

/// A volume as read-only commands see it: its segments, the shared lock
/// that keeps image and segments still, its state and its last segment.
type ReadSnapshot = (
    SegmentSource,
    Option<nix::fcntl::Flock<std::fs::File>>,
    VolumeState,
    u64,
);

impl Store {
    /// Opens (creating if needed) the store in `root`, with sealed segments
    /// in `root/sealed`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let segments = Arc::new(LocalDirStore::new(root.join(SEALED_DIR)));
        Self::with_segment_store(root, segments, VolumeOptions::default())
    }

    /// Opens (creating if needed) the store in `root` with another segment
    /// store and options.
    pub fn with_segment_store(
        root: impl Into<PathBuf>,
        segments: Arc<dyn SegmentStore>,
        opts: VolumeOptions,
    ) -> Result<Self> {
        let root = root.into();
        let vols = root.join(VOLUMES_DIR);
        segment::create_dir_all_durable(&vols).ctx(|| format!("creating {}", vols.display()))?;
        Ok(Self {
            root,
            segments,
            opts,
        })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.root.join(VOLUMES_DIR).join(name)
    }

    fn source(&self, name: &str) -> SegmentSource {
        SegmentSource {
            volume: name.to_owned(),
            journal_dir: self.volume_dir(name).join(JOURNAL_DIR),
            store: Arc::clone(&self.segments),
        }
    }

    /// Names of the volumes, sorted.
    pub fn volumes(&self) -> Result<Vec<String>> {
        let dir = self.root.join(VOLUMES_DIR);
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).ctx(|| format!("listing {}", dir.display()))? {
            let ent = ent.ctx(|| format!("listing {}", dir.display()))?;
            if let Some(n) = ent.file_name().to_str() {
                if validate_volume_name(n).is_ok() {
                    out.push(n.to_owned());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The client that owns volume `name`, if one does: with TLS, the
    /// server lets a client use only its own volumes. Owners are kept in
    /// `owners/NAME`, apart from the volume (a name can be owned before
    /// its volume is created).
    pub fn owner(&self, name: &str) -> Result<Option<String>> {
        bad_name(name)?;
        let path = self.root.join(OWNERS_DIR).join(name);
        match fs::read_to_string(&path) {
            Ok(s) => Ok(Some(s.trim_end().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                context: format!("reading {}", path.display()),
                source: e,
            }),
        }
    }

    /// Bytes of journal the volumes of `client` hold together (what
    /// `enroll --max-bytes` limits): a volume's from `open` when it gives
    /// them (a server's open volume, from memory), else read from the
    /// store; a name owned with no volume yet holds none.
    pub fn journal_bytes_of(
        &self,
        client: &str,
        open: impl Fn(&str) -> Option<Result<u64>>,
    ) -> Result<u64> {
        let mut held = 0u64;
        for v in self.volumes_of(client)? {
            let bytes = match open(&v) {
                Some(b) => b?,
                None if self.exists(&v)? => self.volume_status(&v)?.journal_bytes,
                None => 0,
            };
            held = held.saturating_add(bytes);
        }
        Ok(held)
    }

    /// The volumes client `client` owns, sorted.
    pub fn volumes_of(&self, client: &str) -> Result<Vec<String>> {
        let dir = self.root.join(OWNERS_DIR);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("listing {}", dir.display()),
                    source: e,
                })
            }
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if bad_name(&name).is_ok() && self.owner(&name)?.as_deref() == Some(client) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Makes `client` the owner of volume `name` unless it has one; returns
    /// the owner. Atomic: of two clients claiming at once, one wins.
    pub fn claim(&self, name: &str, client: &str) -> Result<String> {
        bad_name(name)?;
        let dir = self.root.join(OWNERS_DIR);
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        fs::write(&tmp, format!("{client}\n")).ctx(|| format!("writing {}", tmp.display()))?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("syncing {}", tmp.display()))?;
        // link(2) fails if the owner exists: the first claim wins.
        let won = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match won {
            Ok(()) => {
                segment::sync_dir(&dir).ctx(|| format!("syncing {}", dir.display()))?;
                Ok(client.to_owned())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(self.owner(name)?.unwrap_or_default())
            }
            Err(e) => Err(StoreError::Io {
                context: format!("creating {}", path.display()),
                source: e,
            }),
        }
    }

    /// Whether volume `name` exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        bad_name(name)?;
        Ok(self.volume_dir(name).join(STATE_FILE).exists())
    }

    /// Opens volume `name` for ingest (see [`Volume`]): recovers it first.
    pub fn open_volume(&self, name: &str) -> Result<Volume> {
        bad_name(name)?;
        let dir = self.volume_dir(name);
        if !dir.join(STATE_FILE).exists() {
            return Err(StoreError::NoSuchVolume(name.to_owned()));
        }
        Volume::open(dir, self.source(name), self.opts.clone())
    }

    /// Opens volume `name`, creating it with `size_bytes` and `block_size`
    /// if it does not exist. An existing volume of another size is refused.
    pub fn open_or_create_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
    ) -> Result<Volume> {
        bad_name(name)?;
        if !block_size.is_power_of_two() || !(512..=65536).contains(&block_size) {
            return Err(StoreError::BadParameters(format!(
                "block size {block_size} is not a power of two from 512 to 65536"
            )));
        }
        if size_bytes == 0 || !size_bytes.is_multiple_of(u64::from(block_size)) {
            return Err(StoreError::BadParameters(format!(
                "size {size_bytes} is not a positive multiple of the block size {block_size}"
            )));
        }
        let dir = self.volume_dir(name);
        if !dir.join(STATE_FILE).exists() {
            self.create_volume(name, size_bytes, block_size)?;
        }
        let vol = Volume::open(dir, self.source(name), self.opts.clone())?;
        if vol.size_bytes() != size_bytes {
            return Err(StoreError::SizeMismatch {
                volume: name.to_owned(),
                stored: vol.size_bytes(),
                requested: size_bytes,
            });
        }
        Ok(vol)
    }

    /// Creates a volume: its files are made in a temporary directory (names
    /// starting with a dot are not volume names) renamed into place.
    fn create_volume(&self, name: &str, size_bytes: u64, block_size: u32) -> Result<()> {
        let vols = self.root.join(VOLUMES_DIR);
        let tmp = vols.join(format!(".{name}.creating"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).ctx(|| format!("removing {}", tmp.display()))?;
        }
        let now = self.opts.clock.now_ns();
        let start = Position {
            segment: 1,
            offset: SEGMENT_HEADER_LEN,
            ring_id: 0,
            seq: 0,
        };
        let st = VolumeState {
            format: STORE_FORMAT_VERSION,
            volume: name.to_owned(),
            size_bytes,
            block_size,
            ring_id: 0,
            durable_seq: 0,
            checkpoint: start,
            base: Some(start),
            base_time_ns: now,
            base_received_ns: now,
            rings: Vec::new(),
            folding: None,
            folding_time_ns: 0,
            folding_received_ns: 0,
            created_ns: now,
            updated_ns: now,
        };
        create_volume_files(&tmp, &st)?;
        let dir = self.volume_dir(name);
        match fs::rename(&tmp, &dir) {
            Ok(()) => {}
            // Created concurrently by someone else: use theirs.
            Err(_) if dir.join(STATE_FILE).exists() => {
                let _ = fs::remove_dir_all(&tmp);
                return Ok(());
            }
            Err(e) => {
                return Err(StoreError::Io {
                    context: format!("renaming {} to {}", tmp.display(), dir.display()),
                    source: e,
                })
            }
        }
        segment::sync_dir(&vols).ctx(|| format!("syncing {}", vols.display()))?;
        tracing::info!(volume = name, size_bytes, block_size, "created volume");
        Ok(())
    }

    /// Scans a volume without changing it (safe while a server runs):
    /// its size, durable position (journal end), checkpoint, journal use
    /// and whether the journal ends inside a resync section.
    pub fn volume_status(&self, name: &str) -> Result<VolumeStatus> {
        let (src, _lock, st, last) = self.read_snapshot(name)?;
        // The checkpoint is a consistency point: no resync section open.
        let mut cps = CpTracker::new(st.checkpoint);
        let end = walk(&src, st.checkpoint, last, None, |e| {
            cps.event(&e);
            Ok(())
        })?;
        let resync_since_seq = cps.sections.open().map(|s| s.since_seq);
        let (segments, journal_bytes) = journal_usage(&src)?;
        Ok(VolumeStatus {
            volume: name.to_owned(),
            size_bytes: st.size_bytes,
            block_size: st.block_size,
            ring_id: end.end.ring_id,
            durable_seq: end.end.seq,
            applied_ring_id: st.checkpoint.ring_id,
            applied_seq: st.checkpoint.seq,
            journal_bytes,
            segments,
            resyncing: resync_since_seq.is_some(),
            resync_since_seq,
        })
    }

    /// What read-only commands start from: the volume's segments, a shared
    /// lock that keeps the image and segments still, its state and its last
    /// segment.
    fn read_snapshot(&self, name: &str) -> Result<ReadSnapshot> {
        bad_name(name)?;
        let dir = self.volume_dir(name);
        if !dir.join(STATE_FILE).exists() {
            return Err(StoreError::NoSuchVolume(name.to_owned()));
        }
        let src = self.source(name);
        let lock = lock_volume(&dir, FlockArg::LockShared)?;
        let st = VolumeState::load(&dir.join(STATE_FILE))?;
        let last = self.last_segment(&src)?;
        Ok((src, lock, st, last))
    }

    fn last_segment(&self, src: &SegmentSource) -> Result<u64> {
        let local = local_segments(&src.journal_dir)?;
        let sealed = src
            .store
            .list(&src.volume)
            .ctx(|| format!("listing sealed segments of {}", src.volume))?;
        local
            .last()
            .map(|s| s.0)
            .into_iter()
            .chain(sealed.last().map(|s| s.id))
            .max()
            .ok_or_else(|| StoreError::Corrupt {
                segment: src.journal_dir.display().to_string(),
                offset: 0,
                reason: "the volume has no journal segment".into(),
            })
    }

    /// Writes the latest consistent image of volume `name` to `output`: the
    /// image at its checkpoint plus the journal's records up to the last
    /// consistency point it holds. Safe while a server ingests into the
    /// store (the volume lock keeps the image and the needed segments
    /// still; the server only defers applying meanwhile). `output` is a
    /// regular file (created or truncated, written sparse) or a block
    /// device of at least the volume's size (written in full). It is
    /// fsynced before this returns.
    pub fn restore(&self, name: &str, output: &Path) -> Result<RestoreReport> {
        self.restore_at(name, output, &PointSpec::Latest)
    }

    /// Writes the state of volume `name` at the newest consistency point at
    /// or before `at` (see [`PointSpec`]) to `output`, like
    /// [`Store::restore`]. A point at or after the image's checkpoint is
    /// the image plus the journal up to it; an older one, the base image
    /// plus the journal from the base point. Points older than the base
    /// point (folded by retention) are gone.
    pub fn restore_at(&self, name: &str, output: &Path, at: &PointSpec) -> Result<RestoreReport> {
        self.restore_at_with(name, output, at, &mut |_| {})
    }

    /// [`Store::restore_at`], telling `progress` how far it got.
    pub fn restore_at_with(
        &self,
        name: &str,
        output: &Path,
        at: &PointSpec,
        progress: &mut dyn FnMut(RestoreProgress),
    ) -> Result<RestoreReport> {
        let (src, _lock, st, last) = self.read_snapshot(name)?;
        let view = self.history_view(name, &src, &st, last)?;
        let point = view.resolve(at)?;
        let target = point.pos;
        let info = view.info(&point)?;
        let from_base = st.checkpoint.is_after(&target) && !st.checkpoint.same_state(&target);
        let (from, image_path) = if from_base {
            (st.base(), self.volume_dir(name).join(BASE_FILE))
        } else {
            (
                st.checkpoint,
                self.volume_dir(name).join(volume::IMAGE_FILE),
            )
        };
        if same_file(output, &image_path)
            || same_file(output, &self.volume_dir(name).join(volume::IMAGE_FILE))
        {
            return Err(StoreError::BadParameters(format!(
                "{} is the volume's image itself",
                output.display()
            )));
        }
        let octx = || format!("writing {}", output.display());
        let is_blockdev = fs::metadata(output)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let out = if is_blockdev {
            OpenOptions::new().write(true).read(true).open(output)
        } else {
            OpenOptions::new()
                .write(true)
                .read(true)
                .create(true)
                .truncate(true)
                .open(output)
        }
        .ctx(octx)?;
        if is_blockdev {
            let len = block_device_size(&out).ctx(octx)?;
            if len < st.size_bytes {
                return Err(StoreError::BadParameters(format!(
                    "{} has {len} bytes, the volume {}",
                    output.display(),
                    st.size_bytes
                )));
            }
        } else {
            out.set_len(st.size_bytes).ctx(octx)?;
        }
        let image = File::open(&image_path).ctx(|| format!("opening {}", image_path.display()))?;
        let mut t = Target::new(&out, !is_blockdev);
        let total = st.size_bytes;
        let mut data_bytes = sparse_copy(&image, total, &mut t, !is_blockdev, &mut |done| {
            progress(RestoreProgress::Image { done, total })
        })
        .ctx(|| format!("copying {} to {}", image_path.display(), output.display()))?;
        let mut replayed = 0u64;
        if target.is_after(&from) {
            walk(&src, from, target.segment, Some(target), |e| {
                if let Event::Record { rec, .. } = e {
                    t.apply(rec).ctx(octx)?;
                    data_bytes += rec.payload.len() as u64;
                    replayed += 1;
                    if replayed.is_multiple_of(1024) {
                        progress(RestoreProgress::Journal { records: replayed });
                    }
                }
                Ok(())
            })?;
        }
        out.sync_all().ctx(octx)?;
        if !is_blockdev {
            // The output's directory entry (it may have been created).
            let parent = output.parent().unwrap_or(Path::new(""));
            segment::sync_dir(parent).ctx(|| format!("syncing {}", parent.display()))?;
        }
        Ok(RestoreReport {
            volume: name.to_owned(),
            ring_id: target.ring_id,
            seq: target.seq,
            bytes: st.size_bytes,
            data_bytes,
            replayed_records: replayed,
            point: info,
            from_base,
        })
    }

    /// The history of a volume for read-only commands: the index and the
    /// journal after it.
    fn history_view(
        &self,
        name: &str,
        src: &SegmentSource,
        st: &VolumeState,
        last: u64,
    ) -> Result<HistoryView> {
        let base = st.oldest_point();
        let index = Index::open_ro(&self.volume_dir(name).join(INDEX_FILE))?;
        HistoryView::open(src, base, index, last)
    }

    /// The restore points of volume `name`, oldest first: the base point,
    /// then every consistency point of the journal, with their marks.
    pub fn points(&self, name: &str) -> Result<Vec<PointInfo>> {
        let (src, _lock, st, last) = self.read_snapshot(name)?;
        self.history_view(name, &src, &st, last)?.points()
    }

    /// Opens volume `name` for reading as of the point `at` names (see
    /// [`PointReader`]); the point is fixed now ("latest" is the newest
    /// point at this moment).
    pub fn open_point(&self, name: &str, at: &PointSpec) -> Result<PointReader> {
        self.open_reader(name, |view| {
            let p = view.resolve(at)?;
            Ok((p.pos, p, None))
        })
    }

    /// Opens volume `name` for reading as of the end of its journal: after
    /// its last record, where the next record will be applied, whatever the
    /// consistency points say (writes after the last flush, an open resync
    /// section count). The reader's [`PointReader::journal_end`] tells the
    /// last record and whether the state there is a consistency point's;
    /// its [`PointReader::point`] is the newest point at or before it.
    ///
    /// A server appends records before they are durable: `durable`, the
    /// position after the last durable record of the volume's ingesting
    /// [`Volume`] ([`Volume::durable_position`]) taken before this call,
    /// keeps them out; `None` reads after the last valid record found (a
    /// volume that no process ingests). The end is fixed now: records
    /// stored later never show in the reads.
    pub fn open_end(&self, name: &str, durable: Option<Position>) -> Result<PointReader> {
        self.open_reader(name, |view| {
            let pos = durable
                .filter(|d| !d.is_after(&view.end))
                .unwrap_or(view.end);
            let (end, p) = view.end_at(pos)?;
            Ok((pos, p, Some(end)))
        })
    }

    /// Opens a reader of volume `name` at the position `at` finds in its
    /// history (with the newest point at or before it, and the journal's
    /// end if it reads there).
    fn open_reader(
        &self,
        name: &str,
        at: impl FnOnce(&HistoryView) -> Result<(Position, PointRow, Option<JournalEnd>)>,
    ) -> Result<PointReader> {
        let (src, _lock, st, last) = self.read_snapshot(name)?;
        if st.base.is_none() {
            return Err(StoreError::BadParameters(format!(
                "volume {name} is in store format 1: let the server open it once to upgrade it"
            )));
        }
        let view = self.history_view(name, &src, &st, last)?;
        let (pos, p, end) = at(&view)?;
        let info = view.info(&p)?;
        let reader = PointReader::new(self.volume_dir(name), src, view, info, pos, &st);
        Ok(match end {
            Some(e) => reader.at_end(e),
            None => reader,
        })
    }

    /// The newest restore point the history index holds, read without the
    /// volume lock and without reading the journal (for metrics scrapes,
    /// which must never slow ingest): `None` if there is no usable index.
    pub fn indexed_latest_point(&self, name: &str) -> Result<Option<PointInfo>> {
        bad_name(name)?;
        let Some(ix) = Index::open_ro(&self.volume_dir(name).join(INDEX_FILE))? else {
            return Ok(None);
        };
        match ix.last_point()? {
            Some(p) => Ok(Some(PointInfo::new(&p, Vec::new()))),
            None => Ok(None),
        }
    }

    /// Finds the restore point `at` names, without restoring.
    pub fn find_point(&self, name: &str, at: &PointSpec) -> Result<PointInfo> {
        let (src, _lock, st, last) = self.read_snapshot(name)?;
        let view = self.history_view(name, &src, &st, last)?;
        let p = view.resolve(at)?;
        view.info(&p)
    }

    /// The journal records of volume `name` (the audit log), oldest first,
    /// from `since` on: with a time, the records submitted at or after it;
    /// with a seq or a mark, the records after that point. `None`: the
    /// whole history held. `f` may stop the listing.
    pub fn log(
        &self,
        name: &str,
        since: Option<&PointSpec>,
        mut f: impl FnMut(&RecordRow) -> ControlFlow<()>,
    ) -> Result<()> {
        let (src, _lock, st, last) = self.read_snapshot(name)?;
        let view = self.history_view(name, &src, &st, last)?;
        let (from, min_time) = match since {
            None => (st.base(), 0),
            Some(PointSpec::Time(t)) => {
                let from = view
                    .resolve(&PointSpec::Time(*t))
                    .map_or(st.base(), |p| p.pos);
                (from, *t)
            }
            Some(spec) => (view.resolve(spec)?.pos, 0),
        };
        view.records_from(from, |r| {
            if r.time_ns < min_time {
                return ControlFlow::Continue(());
            }
            f(r)
        })
    }
}

/// Whether two paths name the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Size of a block device.
fn block_device_size(f: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}
