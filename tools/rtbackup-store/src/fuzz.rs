//! Entry points of the fuzz targets `segment` and `point` in `tools/fuzz`
//! (Documentation/testing.rst, "Fuzzing"), kept here so that `cargo test`
//! feeds it the inputs the fuzzer found (`tests/fuzz_regressions.rs`).
//! Not an API.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rtbackup_proto::fuzz::{fix_record_checksums, split_mode};

use crate::history::{format_time, Scanner};
use crate::index::{PointKind, PointRow};
use crate::journal::{walk, CpTracker, Event, SegmentSource, WalkEnd};
use crate::section::SectionTracker;
use crate::segment::{
    read_segment_header, Payloads, ReadStop, SegmentHeader, SegmentInfo, SegmentRead,
    SegmentReader, SegmentStore, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
};
use crate::state::Position;

/// Most segments an input is cut into.
const MAX_SEGMENTS: usize = 8;

/// A [`SegmentStore`] holding the segments in memory.
#[derive(Debug, Default)]
struct MemStore {
    segments: BTreeMap<u64, Vec<u8>>,
}

impl SegmentStore for MemStore {
    fn put(&self, _volume: &str, _id: u64, _local: &Path) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn open_read(&self, _volume: &str, id: u64, offset: u64) -> io::Result<Box<dyn SegmentRead>> {
        let seg = self.segments.get(&id).ok_or(io::ErrorKind::NotFound)?;
        let from = usize::try_from(offset).map_or(seg.len(), |o| o.min(seg.len()));
        Ok(Box::new(io::Cursor::new(seg[from..].to_vec())))
    }

    fn list(&self, _volume: &str) -> io::Result<Vec<SegmentInfo>> {
        Ok(self
            .segments
            .iter()
            .map(|(&id, b)| SegmentInfo {
                id,
                size: b.len() as u64,
            })
            .collect())
    }

    fn delete(&self, _volume: &str, _id: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn describe(&self, _volume: &str, id: u64) -> String {
        format!("mem:{id}")
    }
}

/// Cuts an input into segment files: a new one starts at every offset that
/// is a multiple of 64 and holds the segment magic "RTBS".
fn cut(data: &[u8]) -> Vec<&[u8]> {
    let magic = SEGMENT_MAGIC.to_le_bytes();
    let mut starts = vec![0];
    let step = SEGMENT_HEADER_LEN as usize;
    let mut at = step;
    while at + 4 <= data.len() && starts.len() < MAX_SEGMENTS {
        if data[at..at + 4] == magic {
            starts.push(at);
        }
        at += step;
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, &s)| &data[s..starts.get(i + 1).copied().unwrap_or(data.len())])
        .collect()
}

/// Fuzz target `segment`: the input is one or more segment files (see
/// [`cut`]) of a volume, numbered from 1, read back the ways the store
/// reads its journal: each segment's header and records with the segment
/// reader, then the whole journal with the walk that recovery, status,
/// the history index and restores use (consistency points, resync
/// sections, index rows), and again up to the end the first walk found.
///
/// The mode byte (bit 0, as in [`rtbackup_proto::fuzz`]) fixes up the
/// checksums of segment headers (and their ids) and records.
pub fn segment_target(data: &[u8]) {
    let ((fix, _), rest) = split_mode(data);
    let mut segments: Vec<Vec<u8>> = cut(rest).into_iter().map(<[u8]>::to_vec).collect();
    if fix {
        for (i, s) in segments.iter_mut().enumerate() {
            if let Some(h) = s.first_chunk_mut::<{ SEGMENT_HEADER_LEN as usize }>() {
                h[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                let crc = crc32c::crc32c(&h[..60]);
                h[60..].copy_from_slice(&crc.to_le_bytes());
                fix_record_checksums(&mut s[SEGMENT_HEADER_LEN as usize..]);
            }
        }
    }

    // Each segment on its own.
    for s in &segments {
        let mut r = &s[..];
        let Ok(h) = read_segment_header(&mut r) else {
            continue;
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        let mut reader = SegmentReader::new(Box::new(io::Cursor::new(r.to_vec())), 64);
        // Read as an index does, the same segment gives the same headers,
        // at least as far as the whole records are valid.
        let mut indexed = SegmentReader::new(Box::new(io::Cursor::new(r.to_vec())), 64);
        loop {
            let before = reader.offset();
            match reader.next_record(Payloads::All) {
                Ok(rec) => {
                    let size = rec.bytes.len() as u64;
                    let header = rec.header;
                    let _ = format_time(header.time_ns);
                    assert_eq!(reader.offset(), before + size);
                    let light = indexed
                        .next_record(Payloads::Indexed)
                        .expect("a valid record read whole, but not as the index reads it");
                    assert_eq!(light.header, header);
                    assert_eq!(indexed.offset(), reader.offset());
                }
                Err(ReadStop::End) => {
                    assert_eq!(before, s.len() as u64, "end before the end");
                    break;
                }
                Err(ReadStop::Invalid { offset, .. }) => {
                    assert_eq!(offset, before);
                    break;
                }
                Err(ReadStop::Io(e)) => panic!("I/O error from memory: {e}"),
            }
        }
    }

    // The journal as a whole.
    let last = segments.len() as u64;
    let store = MemStore {
        segments: (1..).zip(segments).collect(),
    };
    let src = SegmentSource {
        volume: "fuzz".into(),
        // Never a directory: every segment comes from the store.
        journal_dir: PathBuf::from("/proc/self/rtbackup-fuzz-no-such-dir"),
        store: Arc::new(store),
    };
    let Ok(first) = src.header(1) else {
        return;
    };
    let from = Position {
        segment: 1,
        offset: SEGMENT_HEADER_LEN,
        ring_id: first.ring_id,
        seq: 0,
    };
    let mut cps = CpTracker::new(from);
    let base = PointRow {
        pos: from,
        time_ns: 0,
        received_ns: 0,
        kind: PointKind::Base,
    };
    let mut scanner = Scanner::new(base, None, SectionTracker::default(), 1);
    let mut records = 0u64;
    let end = walk(&src, from, last, None, |e| {
        if let Event::Record { start, end, .. } = &e {
            assert!(end.is_after(start));
            records += 1;
        }
        cps.event(&e);
        scanner.event(&e);
        Ok(())
    });
    let Ok(WalkEnd { end, .. }) = end else {
        return;
    };
    assert_eq!(scanner.rows.records.len() as u64, records);
    assert!(!cps.last.is_after(&end), "a point after the end");
    for p in &scanner.rows.points {
        assert!(!p.pos.is_after(&end), "a point after the end");
    }
    // Whatever times the records carry, point times never go backwards.
    for w in scanner.rows.points.windows(2) {
        assert!(
            w[0].time_ns <= w[1].time_ns,
            "a point before the previous one"
        );
        assert!(w[0].received_ns <= w[1].received_ns);
    }
    // Up to the end found, the same walk must succeed and see the same
    // records (this is how a restore replays the journal to a point).
    let mut again = 0u64;
    let to = walk(&src, from, end.segment, Some(end), |e| {
        if let Event::Record { .. } = e {
            again += 1;
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("the walk to the end {end:?} fails: {e}"));
    assert_eq!(to.end, end);
    assert_eq!(again, records);
}

/// The `point` target: restore points and NBD export names as a peer or a
/// user types them (`restore --at`, `VOLUME@POINT`). Whatever the bytes,
/// parsing answers without panicking, and a point that parses prints as
/// text that reads back as the same point.
pub fn point_target(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(spec) = s.parse::<crate::PointSpec>() {
        let text = spec.to_string();
        let again: crate::PointSpec = text
            .parse()
            .unwrap_or_else(|e| panic!("{s:?} reads as {spec:?}, printed {text:?}: {e}"));
        assert_eq!(again, spec, "{s:?} printed as {text:?}");
    }
    if let Ok((vol, spec)) = crate::parse_volume_at(s) {
        let name = format!("{vol}@{spec}");
        assert_eq!(
            crate::parse_volume_at(&name),
            Ok((vol, spec.clone())),
            "{s:?} printed as {name:?}"
        );
    }
}
