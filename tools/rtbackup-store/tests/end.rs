//! Reading a volume at the end of its journal (`Store::open_end`, what the
//! server's verify describes): every record counts, the writes after the
//! last consistency point and an open resync section's chunks included,
//! because the next records are applied there; only durable records when
//! the ingesting volume's durable position is given; the end stays fixed
//! while the volume moves on.

mod common;

use std::fs;

use common::*;
use rtbackup_proto::{chunk_checksum, ChunkChecksum, RTB_REC_PREFLUSH};
use rtbackup_store::{PointReader, PointSpec, Store, StoreError, Volume};

fn sums(r: &PointReader, chunk_size: u64) -> Vec<ChunkChecksum> {
    let mut all = Vec::new();
    r.chunk_checksums(chunk_size, |first, s| {
        assert_eq!(first, all.len() as u64);
        all.extend_from_slice(s);
        Ok::<_, StoreError>(())
    })
    .unwrap();
    all
}

fn expected(image: &[u8]) -> Vec<ChunkChecksum> {
    image.chunks(4096).map(chunk_checksum).collect()
}

/// Opens the end (up to the volume's durable position) and checks what it
/// says: the last record `seq` of `ring`, `consistent`, the newest point
/// `point_seq`, and the bytes `image`.
fn check_end(
    store: &Store,
    vol: Option<&Volume>,
    (ring, seq): (u64, u64),
    consistent: bool,
    point_seq: u64,
    image: &[u8],
) -> PointReader {
    let r = store
        .open_end("v", vol.map(Volume::durable_position))
        .unwrap();
    let end = r.journal_end().unwrap().clone();
    assert_eq!(
        (end.ring_id, end.seq, end.consistent, r.point().seq),
        (ring, seq, consistent, point_seq),
        "{end:?}"
    );
    if seq > 0 {
        assert_eq!(end.time_ns, time_of(seq));
    }
    assert!(sums(&r, 4096) == expected(image), "checksums at seq {seq}");
    let mut buf = vec![0u8; SIZE as usize];
    r.read_at(&mut buf, 0).unwrap();
    assert!(buf == image, "bytes at seq {seq}");
    r
}

#[test]
fn the_end_holds_the_writes_after_the_last_point() {
    let (d, store, vol) = fresh();
    // Nothing yet: the base point, zeroes.
    check_end(&store, Some(&vol), (0, 0), true, 0, &[0; SIZE as usize]);

    let mut m = Model::new();
    let mut b = Vec::new();
    b.extend(m.push(write(0, 0xa1, 4096), 0)); // 1
    b.extend(m.push(Op::Flush, 0)); // 2: a point
    b.extend(m.push(write(8, 0xb2, 1024), 0)); // 3
    b.extend(m.push(
        Op::Zeroes {
            sector: 2,
            len: 512,
        },
        0,
    )); // 4
    commit(&vol, RING, &b);
    // Write 3 and the zeroes were never flushed: the latest point is 2,
    // the end (where the next records apply) holds them. Indexed: the
    // index answers.
    assert_eq!(m.at_cp.1, 2);
    assert!(m.at_cp.0 != m.image);
    let r4 = check_end(&store, Some(&vol), (RING, 4), false, 2, &m.image);
    let latest = store.open_point("v", &PointSpec::Latest).unwrap();
    assert!(sums(&latest, 4096) == expected(&m.at_cp.0));
    let img4 = m.image.clone();

    // Durable, not indexed yet: the journal after the index answers. A
    // mark after a flush changes no data: the end is the point's state.
    let mut b = Vec::new();
    b.extend(m.push(write(16, 0xc3, 2048), 0)); // 5
    b.extend(m.push(Op::Flush, 0)); // 6
    b.extend(m.push(Op::Mark("m".into()), 0)); // 7
    vol.append(RING, &b).unwrap();
    vol.sync().unwrap();
    check_end(&store, Some(&vol), (RING, 7), true, 6, &m.image);
    let img7 = m.image.clone();

    // Appended but not durable: left out given the durable position, in
    // the scan of the journal otherwise. Before a PREFLUSH write is a
    // point, after it not.
    let b = m.push(write(1, 0xd4, 512), RTB_REC_PREFLUSH); // 8
    vol.append(RING, &b).unwrap();
    // (The point before the PREFLUSH record 8 is at the end of 7.)
    check_end(&store, Some(&vol), (RING, 7), true, 7, &img7);
    check_end(&store, None, (RING, 8), false, 7, &m.image);
    vol.sync().unwrap();
    vol.apply(true).unwrap();
    let r8 = check_end(&store, Some(&vol), (RING, 8), false, 7, &m.image);
    let img8 = m.image.clone();

    // The volume moves on past the readers' ends (its image with it): they
    // stay where they were.
    let mut b = Vec::new();
    b.extend(m.push(write(0, 0xee, 8192), 0)); // 9
    b.extend(m.push(Op::Flush, 0)); // 10
    commit(&vol, RING, &b);
    assert_eq!(vol.checkpoint().seq, 10);
    assert!(sums(&r4, 4096) == expected(&img4));
    assert!(sums(&r8, 4096) == expected(&img8));
    let r10 = check_end(&store, Some(&vol), (RING, 10), true, 10, &m.image);
    // A mark changes no data (indexed this time).
    commit(&vol, RING, &m.push(Op::Mark("n".into()), 0)); // 11
    check_end(&store, Some(&vol), (RING, 11), true, 10, &m.image);

    // With no index at all (a read-only look at a stopped server's store):
    // the whole journal is scanned, to the same end.
    drop((vol, r4, r8, r10));
    fs::remove_file(d.path().join("volumes/v/index.sqlite")).unwrap();
    check_end(&store, None, (RING, 11), true, 10, &m.image);
}

#[test]
fn the_end_inside_an_open_resync_section_holds_its_chunks() {
    let (d, store, vol) = fresh();
    let mut m = Model::new();
    let b = [
        m.push(write(0, 0xa1, 1024), 0),               // 1
        m.push(Op::Flush, 0),                          // 2: a point
        m.push(write(4, 0xb1, 512), 0),                // 3: after it
        m.push(resync(8, 0xc1, 1024), 0),              // 4: opens a section
        m.push(resync(0, 0, 0), 0),                    // 5: an empty chunk
        m.push(write(2, 0xb2, 512), RTB_REC_PREFLUSH), // 6: no point before
    ]
    .concat();
    commit(&vol, RING, &b);
    assert_eq!(m.at_cp.1, 2);
    let before = m.at_cp.0.clone();
    assert!(before != m.image);
    check_end(&store, Some(&vol), (RING, 6), false, 2, &m.image);
    assert_eq!(
        restore_at(&store, d.path(), &PointSpec::Latest).unwrap(),
        (before, 2)
    );

    // The ring ends inside the section (no point there); the next ring's
    // records go on from the end, chunks included.
    let mut m = Model {
        section: m.section.map(|(since, _)| (since, None)),
        ..continued(&m)
    };
    let ring_b = RING + 1;
    let b = [
        m.push(resync(16, 0xc2, 512), 0), // 1
        m.push(write(40, 0xd3, 512), 0),  // 2
    ]
    .concat();
    vol.append(ring_b, &b).unwrap();
    vol.sync().unwrap();
    check_end(&store, Some(&vol), (ring_b, 2), false, 2, &m.image);

    // The end record closes the section: the end is a point again.
    commit(&vol, ring_b, &m.push(Op::ResyncEnd { delta: 0 }, 0)); // 3
    assert_eq!(m.at_cp.1, 3);
    check_end(&store, Some(&vol), (ring_b, 3), true, 3, &m.image);
}
