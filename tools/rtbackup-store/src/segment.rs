//! Journal segments: their header, the store of sealed segments and reading
//! records back.

use rtbackup_proto::read_full;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use rtbackup_proto::{
    parse_header, parse_record, RecordError, RecordRef, MAX_FRAME_PAYLOAD, RECORD_HEADER_LEN,
    RTB_OP_MARK, RTB_OP_RESYNC_END,
};

/// Bytes of a segment header; records start at this offset.
pub const SEGMENT_HEADER_LEN: u64 = 64;
/// `magic` of a segment header: "RTBS".
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"RTBS");
/// Segment format version.
pub const SEGMENT_VERSION: u32 = 1;

/// The header of a segment file: which ring its records belong to and the
/// seq of its first record. A segment holds records of one ring only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Segment number within the volume (consecutive from 1).
    pub id: u64,
    /// `ring_id` of every record in the segment.
    pub ring_id: u64,
    /// `seq` of the first record (the following ones are consecutive).
    pub first_seq: u64,
    /// Creation time, `CLOCK_REALTIME` nanoseconds.
    pub created_ns: u64,
}

impl SegmentHeader {
    /// Encodes the header: magic, version, id, ring_id, first_seq,
    /// created_ns, zeroes, and a CRC32C of bytes 0..60 at 60.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN as usize] {
        let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
        b[0..4].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        b[16..24].copy_from_slice(&self.ring_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.created_ns.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8; SEGMENT_HEADER_LEN as usize]) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut v = [0u8; 8];
            v.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(v)
        };
        if u32_at(0) != SEGMENT_MAGIC {
            return Err(format!(
                "bad segment magic {:#010x} (not an rtbackup segment)",
                u32_at(0)
            ));
        }
        let crc = crc32c::crc32c(&b[..60]);
        if crc != u32_at(60) {
            return Err(format!(
                "segment header checksum mismatch (stored {:#010x}, computed {crc:#010x})",
                u32_at(60)
            ));
        }
        if u32_at(4) != SEGMENT_VERSION {
            return Err(format!(
                "segment format version {} is not supported (this build reads {SEGMENT_VERSION})",
                u32_at(4)
            ));
        }
        if b[40..60].iter().any(|&x| x != 0) {
            return Err("reserved bytes of the segment header are not zero".into());
        }
        Ok(Self {
            id: u64_at(8),
            ring_id: u64_at(16),
            first_seq: u64_at(24),
            created_ns: u64_at(32),
        })
    }
}

/// File name of segment `id`.
pub fn segment_file_name(id: u64) -> String {
    format!("{id:016x}.seg")
}

/// Parses a segment file name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".seg")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A sealed segment in a [`SegmentStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Segment number.
    pub id: u64,
    /// Bytes.
    pub size: u64,
}

/// Where sealed segments live. Sealed segments are immutable; the segment
/// being appended is always a local file. Implementations: [`LocalDirStore`]
/// (a directory); an S3-compatible object store later.
pub trait SegmentStore: Send + Sync + Debug {
    /// Stores the sealed segment `id` of `volume` whose bytes are in the
    /// local file `local` (complete and fsynced). When this returns, the
    /// segment is durable in the store; `local` may have been moved away (a
    /// local store renames it). Storing an id again replaces it with the
    /// same bytes.
    fn put(&self, volume: &str, id: u64, local: &Path) -> io::Result<()>;
    /// Reads segment `id` from byte `offset` on (`NotFound` if absent).
    fn open_read(&self, volume: &str, id: u64, offset: u64) -> io::Result<Box<dyn SegmentRead>>;
    /// The sealed segments of `volume`, sorted by id.
    fn list(&self, volume: &str) -> io::Result<Vec<SegmentInfo>>;
    /// Deletes segment `id` (no error if absent).
    fn delete(&self, volume: &str, id: u64) -> io::Result<()>;
    /// Where segment `id` is, for messages.
    fn describe(&self, volume: &str, id: u64) -> String;
}

/// A segment opened for reading: its bytes in order, and a way past the
/// ones not wanted (the payloads an index does not read).
pub trait SegmentRead: Read + Send {
    /// Moves `n` bytes on, without reading them where the store can;
    /// returns how many it moved: fewer only at the end of the segment.
    /// By default they are read and dropped.
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        io::copy(&mut <&mut Self as Read>::take(self, n), &mut io::sink())
    }
}

impl SegmentRead for File {
    /// A seek, as far as the file's end (which a segment being appended
    /// moves on).
    fn skip(&mut self, n: u64) -> io::Result<u64> {
        let pos = self.stream_position()?;
        let moved = n.min(self.metadata()?.len().saturating_sub(pos));
        self.seek(SeekFrom::Start(pos + moved))?;
        Ok(moved)
    }
}

impl<T: AsRef<[u8]> + Send> SegmentRead for io::Cursor<T> {}

/// A [`SegmentStore`] in a local directory: `ROOT/VOLUME/ID.seg`.
#[derive(Debug, Clone)]
pub struct LocalDirStore {
    root: PathBuf,
}

impl LocalDirStore {
    /// A store in `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn dir(&self, volume: &str) -> PathBuf {
        self.root.join(volume)
    }

    fn path(&self, volume: &str, id: u64) -> PathBuf {
        self.dir(volume).join(segment_file_name(id))
    }
}

/// fsyncs a directory, making renames and creations in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fail_point(dir)?;
    File::open(dir)?.sync_all()
}

/// `fdatasync` of `f`, the file at `path` (for the tests' fault injection).
pub(crate) fn sync_data(f: &File, path: &Path) -> io::Result<()> {
    fail_point(path)?;
    f.sync_data()
}

/// Tests make fsyncs of paths under these fail with EIO.
#[cfg(test)]
pub(crate) static FAIL_FSYNC_UNDER: std::sync::Mutex<Vec<(PathBuf, i32)>> =
    std::sync::Mutex::new(Vec::new());

#[cfg(test)]
fn fail_point(path: &Path) -> io::Result<()> {
    let under = FAIL_FSYNC_UNDER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, errno)) = under.iter().find(|(p, _)| path.starts_with(p)) {
        return Err(io::Error::from_raw_os_error(*errno));
    }
    Ok(())
}

#[cfg(not(test))]
fn fail_point(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// Creates `dir` and its missing parents, fsyncing the parent of each
/// directory created so that the creation is durable.
pub(crate) fn create_dir_all_durable(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new(""));
    create_dir_all_durable(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent),
        // Created concurrently: its creator syncs the parent.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

impl SegmentStore for LocalDirStore {
    fn put(&self, volume: &str, id: u64, local: &Path) -> io::Result<()> {
        let dir = self.dir(volume);
        create_dir_all_durable(&dir)?;
        let dst = self.path(volume, id);
        match fs::rename(local, &dst) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::EXDEV) => {
                let tmp = dir.join(format!("{}.tmp", segment_file_name(id)));
                let mut out = File::create(&tmp)?;
                io::copy(&mut File::open(local)?, &mut out)?;
                out.sync_all()?;
                fs::rename(&tmp, &dst)?;
                sync_dir(&dir)?;
                fs::remove_file(local)?;
            }
            Err(e) => return Err(e),
        }
        sync_dir(&dir)?;
        if let Some(parent) = local.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn open_read(&self, volume: &str, id: u64, offset: u64) -> io::Result<Box<dyn SegmentRead>> {
        let mut f = File::open(self.path(volume, id))?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(f))
    }

    fn list(&self, volume: &str) -> io::Result<Vec<SegmentInfo>> {
        let rd = match fs::read_dir(self.dir(volume)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent?;
            if let Some(id) = ent.file_name().to_str().and_then(parse_segment_file_name) {
                out.push(SegmentInfo {
                    id,
                    size: ent.metadata()?.len(),
                });
            }
        }
        out.sort_by_key(|s| s.id);
        Ok(out)
    }

    fn delete(&self, volume: &str, id: u64) -> io::Result<()> {
        match fs::remove_file(self.path(volume, id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn describe(&self, volume: &str, id: u64) -> String {
        self.path(volume, id).display().to_string()
    }
}

/// Why [`create_segment`] failed.
#[derive(Debug)]
pub(crate) struct CreateSegmentError {
    /// An fsync failed (rather than creating, writing or renaming).
    pub(crate) fsync: bool,
    pub(crate) error: io::Error,
}

/// Name of the temporary file a segment is made in (not a segment name).
pub(crate) fn segment_temp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

/// Writes a new segment file with its header and makes it durable: the
/// header goes into a temporary file, which is fsynced and renamed into
/// place, and the directory is fsynced. A crash leaves either no segment or
/// a complete header; a failure leaves no file under the segment's name,
/// and a file left under it (by a failure after the rename) is replaced.
pub(crate) fn create_segment(
    path: &Path,
    header: &SegmentHeader,
) -> Result<File, CreateSegmentError> {
    let io = |error| CreateSegmentError {
        fsync: false,
        error,
    };
    let sync = |error| CreateSegmentError { fsync: true, error };
    let tmp = segment_temp_path(path);
    let made = (|| {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&header.encode()).map_err(io)?;
        fail_point(&tmp).and_then(|()| f.sync_all()).map_err(sync)?;
        fs::rename(&tmp, path).map_err(io)?;
        Ok(f)
    })();
    let f = match made {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(sync)?;
    }
    Ok(f)
}

/// Why reading a record from a segment stopped.
#[derive(Debug)]
pub(crate) enum ReadStop {
    /// The segment ends exactly at a record boundary.
    End,
    /// The bytes at `offset` are not a valid record (torn or corrupt).
    Invalid { offset: u64, error: RecordError },
    /// An I/O error.
    Io(io::Error),
}

/// Which records a [`SegmentReader`] reads whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payloads {
    /// Every record is read whole and fully validated, payload checksum
    /// included.
    All,
    /// The headers (validated, their own checksum included) and the
    /// payloads an index reads: marks' names and resync ends' consistent
    /// seqs. Other payloads are skipped unread and unchecked, so a record
    /// read this way has an empty `payload` and only its header in `bytes`.
    /// For records already validated once (appended), whose data the apply
    /// and every restore check again.
    Indexed,
}

/// Reads records of one segment sequentially with a fixed-size buffer plus
/// one reused record buffer (at most the largest record).
pub(crate) struct SegmentReader {
    reader: BufReader<Box<dyn SegmentRead>>,
    offset: u64,
    buf: Vec<u8>,
    /// The last payload was skipped past the buffer: the next header is
    /// read alone, not with a buffer's worth of the payload after it.
    direct: bool,
}

/// Buffer size for sequential journal reads.
pub(crate) const READ_BUF: usize = 1 << 20;

/// A payload the index skips is skipped in the segment (a seek for a
/// file), not read through the buffer, when at least this much of it is
/// past the buffer.
const SKIP_UNREAD: u64 = 64 << 10;

impl SegmentReader {
    /// Reads from `reader`, which is positioned at byte `offset` of the
    /// segment.
    pub(crate) fn new(reader: Box<dyn SegmentRead>, offset: u64) -> Self {
        Self {
            reader: BufReader::with_capacity(READ_BUF, reader),
            offset,
            buf: Vec::new(),
            direct: false,
        }
    }

    /// Byte offset of the next record.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads and validates the next record, whole or as `payloads` says.
    pub(crate) fn next_record(&mut self, payloads: Payloads) -> Result<RecordRef<'_>, ReadStop> {
        let start = self.offset;
        let invalid = |error| ReadStop::Invalid {
            offset: start,
            error,
        };
        // Reads go into the reused buffer's capacity (no zero fill).
        self.buf.clear();
        let got = if self.direct && self.reader.buffer().is_empty() {
            // Straight from the segment: the buffer holds nothing of it.
            self.buf.resize(RECORD_HEADER_LEN, 0);
            let got = read_full(self.reader.get_mut(), &mut self.buf).map_err(ReadStop::Io)?;
            self.buf.truncate(got);
            got
        } else {
            (&mut self.reader)
                .take(RECORD_HEADER_LEN as u64)
                .read_to_end(&mut self.buf)
                .map_err(ReadStop::Io)?
        };
        self.direct = false;
        if got == 0 {
            return Err(ReadStop::End);
        }
        let header = parse_header(&self.buf).map_err(invalid)?;
        let size = header.size as usize;
        if size > MAX_FRAME_PAYLOAD {
            return Err(invalid(RecordError::Invalid {
                seq: header.seq,
                what: format!("size {size} is larger than any frame"),
            }));
        }
        let skip = payloads == Payloads::Indexed
            && got == RECORD_HEADER_LEN
            && !matches!(header.op, RTB_OP_MARK | RTB_OP_RESYNC_END);
        if skip {
            let want = (size - RECORD_HEADER_LEN) as u64;
            let buffered = self.reader.buffer().len() as u64;
            let skipped = if want >= buffered + SKIP_UNREAD {
                // The buffer's part, then the rest unread.
                self.reader.consume(buffered as usize);
                self.direct = true;
                buffered
                    + self
                        .reader
                        .get_mut()
                        .skip(want - buffered)
                        .map_err(ReadStop::Io)?
            } else {
                io::copy(&mut (&mut self.reader).take(want), &mut io::sink())
                    .map_err(ReadStop::Io)?
            };
            if skipped < want {
                return Err(invalid(RecordError::Truncated {
                    need: size as u64,
                    have: RECORD_HEADER_LEN as u64 + skipped,
                }));
            }
            self.offset += size as u64;
            return Ok(RecordRef {
                header,
                payload: &[],
                bytes: &self.buf[..RECORD_HEADER_LEN],
            });
        }
        if got == RECORD_HEADER_LEN && size > RECORD_HEADER_LEN {
            self.buf.reserve(size - RECORD_HEADER_LEN);
            (&mut self.reader)
                .take((size - RECORD_HEADER_LEN) as u64)
                .read_to_end(&mut self.buf)
                .map_err(ReadStop::Io)?;
        }
        let rec = parse_record(&self.buf).map_err(invalid)?;
        self.offset += size as u64;
        Ok(rec)
    }
}

/// Reads a segment's header from `r` (positioned at 0).
pub(crate) fn read_segment_header(r: &mut impl Read) -> Result<SegmentHeader, String> {
    let mut b = [0u8; SEGMENT_HEADER_LEN as usize];
    let got = read_full(r, &mut b).map_err(|e| format!("reading the segment header: {e}"))?;
    if got < b.len() {
        return Err(format!(
            "segment header truncated ({got} of {SEGMENT_HEADER_LEN} bytes)"
        ));
    }
    SegmentHeader::decode(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtbackup_proto::{build_record, RTB_OP_WRITE};

    /// Records whose payloads the index skips: some small (read through
    /// the buffer), some past it (skipped unread), and a mark between.
    fn records() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (seq, len) in [(1u64, 4096usize), (2, 200 << 10), (3, 1 << 20), (4, 4096)] {
            let payload: Vec<u8> = (0..len).map(|i| (i as u64 * 7 + seq) as u8).collect();
            out.push(build_record(
                RTB_OP_WRITE,
                0,
                seq,
                seq * 8,
                len as u64,
                seq,
                &payload,
            ));
        }
        out.insert(
            3,
            build_record(RTB_OP_MARK, 0, 5, 0, 0, 9, b"before-upgrade"),
        );
        out.push(build_record(
            RTB_OP_WRITE,
            0,
            6,
            0,
            3 << 20,
            10,
            &vec![5u8; 3 << 20],
        ));
        out
    }

    fn file_reader(bytes: &[u8]) -> SegmentReader {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        SegmentReader::new(Box::new(f), 0)
    }

    #[test]
    fn indexed_reads_skip_payloads_in_files_and_cursors() {
        let recs = records();
        let bytes = recs.concat();
        let mut whole = file_reader(&bytes);
        let mut from_file = file_reader(&bytes);
        let mut from_cursor = SegmentReader::new(Box::new(io::Cursor::new(bytes.clone())), 0);
        for r in &recs {
            let rec = whole.next_record(Payloads::All).unwrap();
            assert_eq!(rec.bytes, &r[..]);
            let header = rec.header;
            for light in [&mut from_file, &mut from_cursor] {
                let l = light.next_record(Payloads::Indexed).unwrap();
                assert_eq!(l.header, header);
                // A mark's name is read; other payloads are not.
                if header.op == RTB_OP_MARK {
                    assert_eq!(l.payload, b"before-upgrade");
                } else {
                    assert!(l.payload.is_empty());
                }
                assert_eq!(light.offset(), whole.offset());
            }
        }
        // The last payload (3 MiB) was skipped past the buffer.
        assert!(from_file.direct && from_cursor.direct);
        for r in [&mut whole, &mut from_file, &mut from_cursor] {
            assert!(matches!(
                r.next_record(Payloads::Indexed),
                Err(ReadStop::End)
            ));
        }
    }

    #[test]
    fn indexed_reads_find_a_payload_cut_short() {
        let recs = records();
        let bytes = recs.concat();
        let at = |i: usize| -> usize { recs[..i].iter().map(Vec::len).sum() };
        let cuts = [
            // In the 200 KiB payload, 1000 bytes from its end: what is
            // missing is less than a skip's worth (read through).
            (at(2) - 1000, at(1)),
            // In the 1 MiB payload, far from its end: skipped unread.
            (at(2) + (300 << 10), at(2)),
            // In the mark's header, read alone after that skip.
            (at(3) + 10, at(3)),
            // In the last payload (3 MiB, skipped).
            (bytes.len() - 1, at(recs.len() - 1)),
        ];
        for (cut, at) in cuts {
            let mut r = file_reader(&bytes[..cut]);
            let stop = loop {
                match r.next_record(Payloads::Indexed) {
                    Ok(_) => {}
                    Err(e) => break e,
                }
            };
            match stop {
                ReadStop::Invalid { offset, error } => {
                    assert_eq!(offset, at as u64);
                    assert!(error.is_truncated(), "{error}");
                }
                _ => panic!("cut at {cut}: not found"),
            }
        }
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = SegmentHeader {
            id: 3,
            ring_id: 77,
            first_seq: 12,
            created_ns: 99,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        for i in 0..b.len() {
            let mut bad = b;
            bad[i] ^= 0x40;
            assert!(SegmentHeader::decode(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn names() {
        assert_eq!(segment_file_name(26), "000000000000001a.seg");
        assert_eq!(parse_segment_file_name("000000000000001a.seg"), Some(26));
        assert_eq!(parse_segment_file_name("1a.seg"), None);
        assert_eq!(parse_segment_file_name("000000000000001a.seg.tmp"), None);
    }

    #[test]
    fn local_dir_store() {
        let d = tempfile::tempdir().unwrap();
        let s = LocalDirStore::new(d.path().join("sealed"));
        assert!(s.list("v").unwrap().is_empty());
        let src = d.path().join("x");
        fs::write(&src, b"0123456789").unwrap();
        s.put("v", 5, &src).unwrap();
        assert!(!src.exists());
        assert_eq!(s.list("v").unwrap(), vec![SegmentInfo { id: 5, size: 10 }]);
        let mut r = s.open_read("v", 5, 4).unwrap();
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(out, "456789");
        s.delete("v", 5).unwrap();
        s.delete("v", 5).unwrap();
        assert_eq!(
            s.open_read("v", 5, 0).err().unwrap().kind(),
            io::ErrorKind::NotFound
        );
    }
}
