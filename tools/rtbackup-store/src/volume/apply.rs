//! The image behind the journal: durable records applied up to the newest
//! consistency point (or the delayed one), retention folding old history
//! into the base image, and applied segments retired.

use super::*;

impl Volume {
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

    pub(super) fn apply_locked(
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
    pub(super) fn replay_onto(
        &self,
        file: &File,
        name: &str,
        from: Position,
        to: Position,
    ) -> Result<u64> {
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
    pub(super) fn catch_up_index(&self, durable: Position) -> Result<()> {
        let mut ix = lock(&self.index);
        catch_up(&mut ix, &self.src, durable, &self.opts.clock)
    }

    /// Where the image should stand: the last durable consistency point,
    /// or with an apply delay the newest point at least that old.
    pub(super) fn image_target(&self, durable_cp: Position) -> Result<Position> {
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
    pub(super) fn retention_target(&self) -> Result<Option<PointRow>> {
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
    pub(super) fn fold(&self, img: &mut ImageState, to: PointRow) -> Result<u64> {
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
    pub(super) fn retire_applied_segments(&self, img: &mut ImageState, active: u64) {
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
