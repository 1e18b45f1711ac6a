//! Resync sections (Documentation/design.rst, "Overflow and resync"): the
//! consistency points inside them are not points for the image, the
//! restore points, the index or recovery; sections across commits, a
//! restart, ring ends, and an index cut back by recovery.

mod common;

use std::fs;
use std::ops::ControlFlow;
use std::path::Path;

use common::*;
use rtbackup_proto::{RTB_OP_RESYNC, RTB_OP_RESYNC_END, RTB_REC_PREFLUSH};
use rtbackup_store::{PointKind, PointSpec, Store};

/// (ring, seq, kind, marks) of every point listed.
fn points(store: &Store) -> Vec<(u64, u64, PointKind, Vec<String>)> {
    store
        .points("v")
        .unwrap()
        .into_iter()
        .map(|p| (p.ring_id, p.seq, p.kind, p.marks))
        .collect()
}

fn seqs(store: &Store) -> Vec<u64> {
    points(store).into_iter().map(|p| p.1).collect()
}

fn image_file(dir: &Path) -> Vec<u8> {
    fs::read(dir.join("volumes/v/image")).unwrap()
}

/// The model's image at the point after record `seq`.
fn at(m: &Model, seq: u64) -> Vec<u8> {
    m.points
        .iter()
        .find(|p| p.0 == seq)
        .map(|p| p.2.clone())
        .unwrap_or_else(|| panic!("no model point at seq {seq}"))
}

fn read_all(store: &Store, spec: &PointSpec) -> (u64, Vec<u8>) {
    let r = store.open_point("v", spec).unwrap();
    let mut buf = vec![0u8; SIZE as usize];
    r.read_at(&mut buf, 0).unwrap();
    (r.point().seq, buf)
}

#[test]
fn a_resync_section_hides_its_points_until_it_closes() {
    let (d, store, vol) = fresh();
    let mut m = Model::new();
    let mut b = Vec::new();
    b.extend(m.push(write(0, 0xa1, 1024), 0)); // 1
    b.extend(m.push(Op::Flush, 0)); // 2: a point
    b.extend(m.push(Op::Mark("before".into()), 0)); // 3
    b.extend(m.push(resync(8, 0xc1, 1024), 0)); // 4: opens a section
    b.extend(m.push(resync(0, 0, 0), 0)); // 5: an empty chunk
    b.extend(m.push(Op::Flush, 0)); // 6: inside
    b.extend(m.push(write(4, 0xb2, 512), RTB_REC_PREFLUSH)); // 7: inside
    commit(&vol, RING, &b);
    let before = at(&m, 2);
    assert_eq!(
        points(&store),
        [
            (0, 0, PointKind::Base, vec![]),
            (RING, 2, PointKind::Flush, vec!["before".to_string()]),
        ]
    );
    let st = store.volume_status("v").unwrap();
    assert!(st.resyncing, "{st:?}");
    assert_eq!((st.resync_since_seq, st.applied_seq), (Some(4), 2));
    assert_eq!(vol.status().unwrap(), st);
    assert!(
        image_file(d.path()) == before,
        "the image passed the section"
    );
    let (latest, seq) = restore_at(&store, d.path(), &PointSpec::Latest).unwrap();
    assert_eq!(seq, 2);
    assert!(latest == before);
    assert_eq!(read_all(&store, &PointSpec::Latest), (2, before.clone()));
    for spec in [
        PointSpec::Seq(4),
        PointSpec::Seq(6),
        PointSpec::Seq(7),
        PointSpec::Time(time_of(6)),
        PointSpec::Time(time_of(7)),
    ] {
        assert_eq!(store.find_point("v", &spec).unwrap().seq, 2, "{spec}");
    }

    // Durable but neither applied nor indexed: read-only commands scan the
    // journal after the index from the section state stored with it (the
    // flush at 9 comes before any RESYNC of this part).
    let mut b = Vec::new();
    b.extend(m.push(Op::Mark("inside".into()), 0)); // 8
    b.extend(m.push(Op::Flush, 0)); // 9: inside
    b.extend(m.push(Op::ResyncEnd { delta: 2 }, 0)); // 10: consistent at 12
    b.extend(m.push(resync(16, 0xc2, 512), 0)); // 11: overflow again
    b.extend(m.push(Op::Flush, 0)); // 12: inside (waits for a new end)
    vol.append(RING, &b).unwrap();
    vol.sync().unwrap();
    let mut resent = b;
    assert_eq!(seqs(&store), [0, 2]);
    let inside = PointSpec::Mark("inside".into());
    assert_eq!(store.find_point("v", &inside).unwrap().seq, 2);
    // A restart replays up to the last point, before the section.
    drop(vol);
    let vol = store.open_volume("v").unwrap();
    assert_eq!(vol.checkpoint().seq, 2);
    assert_eq!(vol.resync_since(), Some(4));
    assert!(image_file(d.path()) == before);
    assert_eq!(seqs(&store), [0, 2]);

    let mut b = Vec::new();
    b.extend(m.push(Op::ResyncEnd { delta: 0 }, 0)); // 13: closes at once
    b.extend(m.push(write(2, 0xd4, 512), 0)); // 14
    b.extend(m.push(Op::Flush, 0)); // 15
    commit(&vol, RING, &b);
    resent.extend(b);
    let marks = vec!["before".to_string(), "inside".to_string()];
    assert_eq!(
        points(&store),
        [
            (0, 0, PointKind::Base, vec![]),
            (RING, 2, PointKind::Flush, marks),
            (RING, 13, PointKind::ResyncEnd, vec![]),
            (RING, 15, PointKind::Flush, vec![]),
        ]
    );
    let model: Vec<u64> = m.points.iter().map(|p| p.0).collect();
    assert_eq!(model, [2, 13, 15]);
    let st = store.volume_status("v").unwrap();
    assert!(!st.resyncing, "{st:?}");
    assert_eq!((st.resync_since_seq, st.applied_seq), (None, 15));
    assert!(image_file(d.path()) == m.image);
    for seq in [2, 13, 15] {
        let (bytes, got) = restore_at(&store, d.path(), &PointSpec::Seq(seq)).unwrap();
        assert_eq!(got, seq);
        assert!(bytes == at(&m, seq), "seq {seq}");
        assert_eq!(read_all(&store, &PointSpec::Seq(seq)), (seq, at(&m, seq)));
    }
    assert_eq!(store.find_point("v", &PointSpec::Seq(12)).unwrap().seq, 2);
    // Rolling back to a point before the section rewrites the chunks too.
    let r = store
        .open_point("v", &PointSpec::Mark("before".into()))
        .unwrap();
    assert_eq!(
        r.changed_extents().unwrap(),
        [(1024, 1536), (2048, 2560), (4096, 5120), (8192, 8704)]
    );
    let mut log = Vec::new();
    store
        .log("v", None, |r| {
            if matches!(r.op, RTB_OP_RESYNC | RTB_OP_RESYNC_END) {
                log.push((r.seq, r.op, r.start, r.len, r.consistent_seq));
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        log,
        [
            (4, RTB_OP_RESYNC, 4096, 1024, None),
            (5, RTB_OP_RESYNC, 0, 0, None),
            (10, RTB_OP_RESYNC_END, 0, 0, Some(12)),
            (11, RTB_OP_RESYNC, 8192, 512, None),
            (13, RTB_OP_RESYNC_END, 0, 0, Some(13)),
        ]
    );

    // The same from the journal alone, and from a rebuilt index.
    let listed = points(&store);
    drop(vol);
    fs::remove_file(d.path().join("volumes/v/index.sqlite")).unwrap();
    assert_eq!(points(&store), listed);
    let vol = store.open_volume("v").unwrap();
    assert_eq!(points(&store), listed);
    assert!(store.volume_status("v").unwrap().resync_since_seq.is_none());

    // Records sent again (after a reconnect) are skipped: their RESYNC
    // (11) does not reopen the section.
    resent.extend(m.push(write(6, 0xe5, 512), 0)); // 16
    resent.extend(m.push(Op::Flush, 0)); // 17
    let out = vol.append(RING, &resent).unwrap();
    assert_eq!((out.skipped, out.appended), (8, 2));
    vol.sync().unwrap();
    vol.apply(true).unwrap();
    assert_eq!(seqs(&store), [0, 2, 13, 15, 17]);
    assert_eq!(vol.checkpoint().seq, 17);
    assert!(image_file(d.path()) == m.image);
}

#[test]
fn sections_and_ring_ends() {
    let (d, store, vol) = fresh();
    let (ring_a, ring_b, ring_c) = (RING, RING + 1, RING + 2);
    // Ring A: a point, then a section whose end waits for seq 5, which
    // never comes.
    let mut m = Model::new();
    let mut b = m.push(write(0, 1, 512), 0); // 1
    b.extend(m.push(Op::Flush, 0)); // 2: a point
    b.extend(m.push(resync(4, 2, 512), 0)); // 3: opens
    b.extend(m.push(Op::ResyncEnd { delta: 1 }, 0)); // 4: waits for 5
    commit(&vol, ring_a, &b);
    let a2 = at(&m, 2);

    // Ring B: the end of ring A is no point, and seq 5 of ring B does not
    // close ring A's section (its consistent_seq was a seq of ring A).
    let mut m = Model {
        section: m.section.map(|(since, _)| (since, None)),
        ..continued(&m)
    };
    let mut b = Vec::new();
    for i in 0..4 {
        b.extend(m.push(write(8 + i, 3, 512), 0)); // 1..=4
    }
    b.extend(m.push(Op::Flush, 0)); // 5: inside
    commit(&vol, ring_b, &b);
    let st = store.volume_status("v").unwrap();
    assert!(st.resyncing);
    assert_eq!((st.ring_id, st.resync_since_seq), (ring_b, Some(3)));
    assert_eq!(seqs(&store), [0, 2]);
    let (latest, seq) = restore_at(&store, d.path(), &PointSpec::Latest).unwrap();
    assert_eq!(seq, 2);
    assert!(latest == a2);
    let mut b = m.push(Op::ResyncEnd { delta: 0 }, 0); // 6: closes
                                                       // A new section whose end is reached by the end of the ring.
    b.extend(m.push(resync(4, 5, 512), 0)); // 7: opens
    b.extend(m.push(Op::ResyncEnd { delta: 1 }, 0)); // 8: waits for 9
    b.extend(m.push(write(1, 6, 512), 0)); // 9
    commit(&vol, ring_b, &b);
    let b9 = m.image.clone();

    // Ring C: ring B's end is after seq 9, a point that closes it.
    let mut m = continued(&m);
    let mut b = m.push(write(2, 7, 512), 0); // 1
    b.extend(m.push(Op::Flush, 0)); // 2
    commit(&vol, ring_c, &b);
    let got: Vec<_> = points(&store)
        .into_iter()
        .map(|(r, s, k, _)| (r, s, k))
        .collect();
    assert_eq!(
        got,
        [
            (0, 0, PointKind::Base),
            (ring_a, 2, PointKind::Flush),
            (ring_b, 6, PointKind::ResyncEnd),
            (ring_b, 9, PointKind::RingEnd),
            (ring_c, 2, PointKind::Flush),
        ]
    );
    assert!(!store.volume_status("v").unwrap().resyncing);
    assert!(image_file(d.path()) == m.image);
    // Seq 9 is only in ring B: its end.
    let (bytes, seq) = restore_at(&store, d.path(), &PointSpec::Seq(9)).unwrap();
    assert_eq!(seq, 9);
    assert!(bytes == b9);
}

#[test]
fn an_index_cut_back_by_recovery_restarts_from_a_point() {
    let (d, store, vol) = fresh();
    let mut m = Model::new();
    let recs = [
        m.push(write(0, 1, 512), 0),
        m.push(Op::Flush, 0),
        m.push(Op::Mark("m".into()), 0),
        m.push(resync(4, 2, 512), 0),
        m.push(resync(0, 0, 0), 0),
    ];
    // Indexed up to seq 5, inside the section.
    commit(&vol, RING, &recs.concat());
    drop(vol);
    // Records 4 and 5 are lost (as when recovery cuts a damaged active
    // segment): the index ends after them, in a section the journal no
    // longer has.
    let seg = active_segment(d.path(), "v");
    let keep: usize = 64 + recs[..3].iter().map(Vec::len).sum::<usize>();
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(keep as u64).unwrap();
    drop(f);
    let vol = store.open_volume("v").unwrap();
    assert_eq!(vol.durable(), (RING, 3));
    assert_eq!(vol.resync_since(), None);
    // Seqs 4 and 5 again, with no resync: the flush is a point.
    let mut m = Model::new();
    let mut b = Vec::new();
    for (op, flags) in [
        (write(0, 1, 512), 0),
        (Op::Flush, 0),
        (Op::Mark("m".into()), 0),
    ] {
        m.push(op, flags);
    }
    b.extend(m.push(write(8, 3, 512), 0));
    b.extend(m.push(Op::Flush, 0));
    commit(&vol, RING, &b);
    let got: Vec<_> = points(&store)
        .into_iter()
        .map(|(_, s, _, marks)| (s, marks))
        .collect();
    assert_eq!(got, [(0, vec![]), (2, vec!["m".to_string()]), (5, vec![])]);
    assert!(!store.volume_status("v").unwrap().resyncing);
    let (latest, seq) = restore_at(&store, d.path(), &PointSpec::Latest).unwrap();
    assert_eq!(seq, 5);
    assert!(latest == m.image);
}
