//! The journal's writes: a batch appended (its space reserved ahead, a full
//! disk refused before anything is written), a new segment rolled, and the
//! group sync that makes appended records durable.

use super::*;

impl Volume {
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
    pub(super) fn write_error(&self, context: String, source: std::io::Error) -> StoreError {
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
    pub(super) fn roll(&self, j: &mut Journal, ring_id: u64, first_seq: u64) -> Result<()> {
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
}
