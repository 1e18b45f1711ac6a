//! Opening a volume: its lock, the journal's recovery (temporary and
//! unfinished segments, a torn or bad tail cut off and kept in
//! `quarantine/`), the base image and the history index caught up.

use super::*;

/// Takes the volume lock to open the volume, waiting at most
/// [`OPEN_LOCK_WAIT`] (a restore holds it for the whole copy).
pub(super) fn lock_for_open(dir: &Path, name: &str) -> Result<Flock<File>> {
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
pub(super) fn remove_temp_segments(src: &SegmentSource) -> Result<()> {
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
pub(super) fn drop_unfinished_newest_segment(
    src: &SegmentSource,
    local: &mut Vec<(u64, u64)>,
) -> Result<()> {
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
}

/// Opens the base image, creating it for a volume of store format 1 (which
/// kept no history): a copy of the image, with the base point at the
/// checkpoint. Writes the state in the current format.
pub(super) fn open_base(
    dir: &Path,
    name: &str,
    image: &File,
    state: &mut VolumeState,
) -> Result<File> {
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
pub(super) fn quarantine(
    dir: &Path,
    file: &File,
    segment: u64,
    from: u64,
    len: u64,
) -> Result<PathBuf> {
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
pub(super) fn open_index(
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
