//! The agent's local spool (`--spool DIR`, Documentation/design.rst,
//! "Spool"): while the server cannot be reached and the ring fills, the
//! agent moves records out of the ring into files on a local disk, so
//! that a long outage neither blocks the device's writers nor falls back
//! to a resync; on the next connection they are sent first, in order.
//!
//! A spool file holds whole records exactly as the ring had them (each
//! with its header and payload checksums), back to back; its name says
//! the ring and the seq of its first record:
//! `<ring_id as 16 hex digits>-<first seq as 20 digits>.spool`. A file is
//! made durable (`fdatasync`, and the directory's entry on creation)
//! before the ring is told it may reuse the records' bytes, so a crash of
//! the agent or the host loses nothing: a torn tail of the last file can
//! only hold records that are still in the ring, and is cut off when the
//! spool is opened. Files of another ring (an earlier attach) are moved to
//! `stale/` and reported, never sent: the new attach's initial sync
//! brings the backup to the device's state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rtbackup_proto::records;

/// A new spool file is started once the current one holds this much.
pub(crate) const FILE_BYTES: u64 = 64 << 20;

/// An error of the spool, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("spool {path}: {what}")]
pub struct SpoolError {
    /// The file or directory.
    pub path: PathBuf,
    /// What went wrong.
    pub what: String,
}

fn err(path: &Path, what: impl std::fmt::Display) -> SpoolError {
    SpoolError {
        path: path.to_owned(),
        what: what.to_string(),
    }
}

/// One spool file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpoolFile {
    path: PathBuf,
    first_seq: u64,
    last_seq: u64,
    bytes: u64,
}

/// The spool of one ring: its files in seq order.
#[derive(Debug)]
pub(crate) struct Spool {
    dir: PathBuf,
    ring_id: u64,
    max_bytes: u64,
    files: Vec<SpoolFile>,
    /// Held for the spool's life: one agent per spool directory.
    _lock: File,
}

fn file_name(ring_id: u64, first_seq: u64) -> String {
    format!("{ring_id:016x}-{first_seq:020}.spool")
}

/// `(ring_id, first_seq)` of a spool file's name.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(".spool")?;
    let (ring, seq) = stem.split_once('-')?;
    if ring.len() != 16 || seq.len() != 20 {
        return None;
    }
    Some((u64::from_str_radix(ring, 16).ok()?, seq.parse().ok()?))
}

/// Syncs a directory, so that entries created or removed in it last.
fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err(dir, format_args!("syncing the directory: {e}")))
}

/// Creates `dir` (and its missing parents) readable by this user alone
/// (0700), whatever the umask: the spool holds the device's data.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Spool {
    /// Opens (creating) the spool directory `dir` for ring `ring_id`, using
    /// at most `max_bytes`: checks every file's records, cuts a torn tail
    /// off the last one, and moves files of other rings to `stale/`.
    pub(crate) fn open(dir: &Path, ring_id: u64, max_bytes: u64) -> Result<Self, SpoolError> {
        private_dir(dir).map_err(|e| err(dir, format_args!("creating: {e}")))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| err(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(err(dir, "in use by another rtbackup-agent"))
            }
            Err(fs::TryLockError::Error(e)) => return Err(err(&lock_path, e)),
        }
        let mut mine = Vec::new();
        let entries = fs::read_dir(dir).map_err(|e| err(dir, format_args!("reading: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| err(dir, format_args!("reading: {e}")))?;
            let name = entry.file_name();
            let Some((ring, first_seq)) = name.to_str().and_then(parse_name) else {
                continue;
            };
            let path = entry.path();
            if ring == ring_id {
                mine.push((first_seq, path));
            } else {
                let stale = dir.join("stale");
                private_dir(&stale).map_err(|e| err(&stale, e))?;
                let to = stale.join(&name);
                fs::rename(&path, &to)
                    .map_err(|e| err(&path, format_args!("moving to {}: {e}", to.display())))?;
                tracing::warn!(
                    file = %to.display(),
                    ring_id = format_args!("{ring:#x}"),
                    "spooled records of an earlier attach were never delivered; kept aside, not sent \
                     (the new attach's initial sync brings the backup to the device's state)"
                );
            }
        }
        mine.sort();
        let mut files: Vec<SpoolFile> = Vec::new();
        let n = mine.len();
        for (i, (first_seq, path)) in mine.into_iter().enumerate() {
            let last = i + 1 == n;
            let f = check_file(&path, first_seq, last)?;
            if let Some(prev) = files.last() {
                if f.as_ref().is_some_and(|f| f.first_seq <= prev.last_seq) {
                    return Err(err(
                        &path,
                        format_args!(
                            "starts at seq {first_seq}, not after the previous file's last seq {}",
                            prev.last_seq
                        ),
                    ));
                }
            }
            match f {
                Some(f) => files.push(f),
                None => {
                    // The last file was created but holds no whole record.
                    fs::remove_file(&path).map_err(|e| err(&path, e))?;
                }
            }
        }
        let s = Self {
            dir: dir.to_owned(),
            ring_id,
            max_bytes,
            files,
            _lock: lock,
        };
        if !s.is_empty() {
            tracing::info!(
                dir = %dir.display(),
                first_seq = s.first_seq().unwrap_or(0),
                last_seq = s.last_seq().unwrap_or(0),
                bytes = s.bytes(),
                "spool holds records not yet on the server"
            );
        }
        Ok(s)
    }

    /// Whether no record is spooled.
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Seq of the first spooled record.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        self.files.first().map(|f| f.first_seq)
    }

    /// Seq of the last spooled record.
    pub(crate) fn last_seq(&self) -> Option<u64> {
        self.files.last().map(|f| f.last_seq)
    }

    /// Bytes of spooled records.
    pub(crate) fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// Bytes that may still be spooled.
    pub(crate) fn room(&self) -> u64 {
        self.max_bytes.saturating_sub(self.bytes())
    }

    /// Appends whole records, `parts` concatenated, whose seqs are
    /// `first_seq..=last_seq` (after every record spooled so far), and
    /// makes them durable.
    pub(crate) fn append(
        &mut self,
        parts: &[&[u8]],
        first_seq: u64,
        last_seq: u64,
    ) -> Result<(), SpoolError> {
        if let Some(prev) = self.last_seq() {
            if first_seq <= prev {
                return Err(err(
                    &self.dir,
                    format_args!("records from seq {first_seq} appended after seq {prev}"),
                ));
            }
        }
        let len: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let new_file = self.files.last().is_none_or(|f| f.bytes >= FILE_BYTES);
        if new_file {
            let path = self.dir.join(file_name(self.ring_id, first_seq));
            self.files.push(SpoolFile {
                path,
                first_seq,
                last_seq,
                bytes: 0,
            });
        }
        let Some(f) = self.files.last_mut() else {
            return Err(err(&self.dir, "no spool file"));
        };
        let res = (|| -> io::Result<()> {
            let mut out = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&f.path)?;
            // A failed append leaves a torn tail past `f.bytes`: cut it.
            if out.metadata()?.len() != f.bytes {
                out.set_len(f.bytes)?;
            }
            for p in parts {
                out.write_all(p)?;
            }
            out.sync_data()
        })();
        if let Err(e) = res {
            if new_file {
                let _ = fs::remove_file(&f.path);
                self.files.pop();
            }
            return Err(err(
                &self.dir,
                format_args!("writing records {first_seq}..={last_seq}: {e}"),
            ));
        }
        f.bytes += len;
        f.last_seq = last_seq;
        if new_file {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Removes the files whose records the server holds (all up to
    /// `durable_seq`).
    pub(crate) fn prune(&mut self, durable_seq: u64) -> Result<(), SpoolError> {
        let n = self
            .files
            .iter()
            .take_while(|f| f.last_seq <= durable_seq)
            .count();
        if n == 0 {
            return Ok(());
        }
        for f in self.files.drain(..n) {
            fs::remove_file(&f.path).map_err(|e| err(&f.path, format_args!("removing: {e}")))?;
        }
        sync_dir(&self.dir)
    }

    /// Calls `send` with the spooled records after `durable_seq`, in order,
    /// in groups of whole records of at most `max_bytes` (at least one
    /// record), with each group's last seq; after each file, calls
    /// `file_done` with the file's last seq.
    pub(crate) fn replay<E: From<SpoolError>>(
        &self,
        durable_seq: u64,
        max_bytes: u64,
        mut send: impl FnMut(&[u8], u64) -> Result<(), E>,
        mut file_done: impl FnMut(u64) -> Result<(), E>,
    ) -> Result<(), E> {
        for f in self.files.iter().filter(|f| f.last_seq > durable_seq) {
            let data = read_exact(&f.path, f.bytes)?;
            let mut group_start = 0usize;
            let mut group_end = 0usize;
            let mut group_last = 0u64;
            for rec in records(&data) {
                let rec =
                    rec.map_err(|e| err(&f.path, format_args!("record at byte {group_end}: {e}")))?;
                let at = group_end;
                group_end += rec.bytes.len();
                if rec.seq() <= durable_seq {
                    group_start = group_end;
                    continue;
                }
                if at > group_start && (group_end - group_start) as u64 > max_bytes {
                    send(&data[group_start..at], group_last)?;
                    group_start = at;
                }
                group_last = rec.seq();
            }
            if group_end > group_start {
                send(&data[group_start..group_end], group_last)?;
            }
            file_done(f.last_seq)?;
        }
        Ok(())
    }
}

/// Reads the first `len` bytes of `path`.
fn read_exact(path: &Path, len: u64) -> Result<Vec<u8>, SpoolError> {
    let f = File::open(path).map_err(|e| err(path, e))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| err(path, format_args!("reading: {e}")))?;
    Ok(buf)
}

/// Checks the records of a spool file named for `first_seq`. A torn tail
/// (the last file only: an append cut short by a crash) is cut off;
/// anything else that does not parse is damage, reported with its offset.
/// `None`: the file holds no whole record.
fn check_file(path: &Path, first_seq: u64, last: bool) -> Result<Option<SpoolFile>, SpoolError> {
    let data = fs::read(path).map_err(|e| err(path, format_args!("reading: {e}")))?;
    let mut off = 0usize;
    let mut last_seq = None::<u64>;
    let mut it = records(&data);
    for rec in it.by_ref() {
        match rec {
            Ok(r) => {
                let expect_first = last_seq.is_none() && r.seq() != first_seq;
                if expect_first || last_seq.is_some_and(|s| r.seq() <= s) {
                    return Err(err(
                        path,
                        format_args!("record seq {} at byte {off} is out of order", r.seq()),
                    ));
                }
                last_seq = Some(r.seq());
                off += r.bytes.len();
            }
            Err(e) if last && (e.is_truncated() || data[off..].iter().all(|&b| b == 0)) => {
                tracing::warn!(file = %path.display(), offset = off, "cutting off a torn spool tail ({e}); those records are still in the ring");
                break;
            }
            Err(e) => return Err(err(path, format_args!("damaged record at byte {off}: {e}"))),
        }
    }
    if off != data.len() {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| err(path, e))?;
        f.set_len(off as u64)
            .and_then(|()| f.sync_all())
            .map_err(|e| err(path, format_args!("cutting the torn tail: {e}")))?;
    }
    Ok(last_seq.map(|last_seq| SpoolFile {
        path: path.to_owned(),
        first_seq,
        last_seq,
        bytes: off as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtbackup_proto::{build_record, RTB_OP_WRITE};

    fn rec(seq: u64) -> Vec<u8> {
        build_record(
            RTB_OP_WRITE,
            0,
            seq,
            seq,
            512,
            1000 + seq,
            &[seq as u8; 512],
        )
    }

    fn recs(from: u64, to: u64) -> Vec<u8> {
        (from..=to).flat_map(rec).collect()
    }

    /// Every record the spool replays after `durable`, as (seq) list.
    fn replayed(s: &Spool, durable: u64, max: u64) -> (Vec<u64>, Vec<u64>) {
        let mut seqs = Vec::new();
        let mut done = Vec::new();
        s.replay::<SpoolError>(
            durable,
            max,
            |bytes, last| {
                let got: Vec<u64> = records(bytes).map(|r| r.unwrap().seq()).collect();
                assert_eq!(got.last(), Some(&last));
                assert!(bytes.len() as u64 <= max || got.len() == 1);
                seqs.extend(got);
                Ok(())
            },
            |last| {
                done.push(last);
                Ok(())
            },
        )
        .unwrap();
        (seqs, done)
    }

    #[test]
    fn append_reopen_replay_prune() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 7, 1 << 30).unwrap();
        assert!(s.is_empty());
        let a = recs(1, 10);
        s.append(&[&a[..a.len() / 2], &a[a.len() / 2..]], 1, 10)
            .unwrap();
        s.append(&[&recs(11, 12)], 11, 12).unwrap();
        assert!(s.append(&[&recs(12, 12)], 12, 12).is_err(), "out of order");
        assert_eq!((s.first_seq(), s.last_seq()), (Some(1), Some(12)));
        drop(s);
        let mut s = Spool::open(d.path(), 7, 1 << 30).unwrap();
        assert_eq!((s.first_seq(), s.last_seq()), (Some(1), Some(12)));
        let (seqs, done) = replayed(&s, 4, 3 * rec(1).len() as u64);
        assert_eq!(seqs, (5..=12).collect::<Vec<_>>());
        assert_eq!(done, vec![12]);
        s.prune(11).unwrap();
        assert_eq!(
            s.last_seq(),
            Some(12),
            "a file is removed only when all of it is on the server"
        );
        s.prune(12).unwrap();
        assert!(s.is_empty());
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "only the lock is left"
        );
    }

    /// The spool holds the device's data: its directories are 0700 and its
    /// files 0600 even under a umask of 000.
    #[test]
    fn spool_files_are_private_whatever_the_umask() {
        use nix::sys::stat::{umask, Mode};
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/spool");
        let old = umask(Mode::empty());
        let made = (|| {
            let mut s = Spool::open(&dir, 7, 1 << 30)?;
            s.append(&[&recs(1, 3)], 1, 3)?;
            drop(s);
            // A file of another ring goes to stale/.
            fs::write(dir.join(file_name(9, 1)), recs(1, 1)).unwrap();
            Spool::open(&dir, 7, 1 << 30)
        })();
        umask(old);
        made.unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("stale")), 0o700);
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                assert_eq!(mode(&p), 0o600, "{}", p.display());
            }
        }
    }

    #[test]
    fn one_agent_per_spool() {
        let d = tempfile::tempdir().unwrap();
        let _s = Spool::open(d.path(), 7, 1 << 30).unwrap();
        let e = Spool::open(d.path(), 7, 1 << 30).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
    }

    #[test]
    fn torn_tail_is_cut_and_damage_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 7, 1 << 30).unwrap();
        s.append(&[&recs(1, 3)], 1, 3).unwrap();
        let path = s.files[0].path.clone();
        drop(s);
        // A crash in the middle of an append.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&rec(4)[..300]).unwrap();
        drop(f);
        let s = Spool::open(d.path(), 7, 1 << 30).unwrap();
        assert_eq!(s.last_seq(), Some(3));
        assert_eq!(fs::metadata(&path).unwrap().len(), 3 * rec(1).len() as u64);
        drop(s);
        // A flipped payload byte is damage, not a torn tail.
        let mut data = fs::read(&path).unwrap();
        data[rec(1).len() + 100] ^= 1;
        fs::write(&path, &data).unwrap();
        let e = Spool::open(d.path(), 7, 1 << 30).unwrap_err();
        assert!(e.to_string().contains("damaged record at byte"), "{e}");
    }

    #[test]
    fn other_rings_files_are_set_aside() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 7, 1 << 30).unwrap();
        s.append(&[&recs(1, 2)], 1, 2).unwrap();
        drop(s);
        let s = Spool::open(d.path(), 8, 1 << 30).unwrap();
        assert!(s.is_empty());
        assert_eq!(fs::read_dir(d.path().join("stale")).unwrap().count(), 1);
    }

    #[test]
    fn room_and_new_files() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path(), 7, 10_000).unwrap();
        let r = rec(1).len() as u64;
        s.append(&[&recs(1, 2)], 1, 2).unwrap();
        assert_eq!(s.room(), 10_000 - 2 * r);
        assert_eq!(parse_name(&file_name(7, 1)), Some((7, 1)));
        assert_eq!(parse_name("junk.spool"), None);
    }
}
