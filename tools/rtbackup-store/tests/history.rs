//! History: restore points by seq, time and mark, listing, the audit log,
//! retention folding history into the base image (also across a crash),
//! the index rebuilt from the journal, and the delayed image.

mod common;

use std::fs;
use std::ops::ControlFlow;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use rtbackup_proto::RTB_REC_PREFLUSH;
use rtbackup_store::{
    Clock, CompactOutcome, PointInfo, PointKind, PointSpec, Store, StoreError, VolumeOptions,
};

/// The backup host's clock of a test: [`rounds`] sets it to the time of
/// the last record of each batch, as an honest host's clock in step with
/// the server's.
fn test_clock() -> Clock {
    Clock::manual(T0)
}

/// An age that keeps the points from about `time_of(seq)` on when the
/// clock reads `time_of(now_seq)`.
fn keep_from(now_seq: u64, seq: u64) -> Duration {
    Duration::from_nanos((time_of(now_seq) - time_of(seq)).saturating_sub(500_000_000))
}

/// Points without the time the backup host received them: a journal read
/// without the index, or indexed again, has them as received when read.
fn host_view(mut points: Vec<PointInfo>) -> Vec<PointInfo> {
    for p in &mut points[1..] {
        p.received = String::new();
        p.received_ns = 0;
    }
    points
}

fn clocked(o: VolumeOptions, clock: &Clock) -> VolumeOptions {
    VolumeOptions {
        clock: clock.clone(),
        ..o
    }
}

/// write A, flush, mark m1, write B (preflush), flush, mark m2, write C.
fn marked_stream(m: &mut Model) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(m.push(write(0, 0xa1, 1024), 0));
    b.extend(m.push(Op::Flush, 0));
    b.extend(m.push(Op::Mark("m1".into()), 0));
    b.extend(m.push(write(1, 0xb2, 512), RTB_REC_PREFLUSH));
    b.extend(m.push(Op::Flush, 0));
    b.extend(m.push(Op::Mark("m2".into()), 0));
    b.extend(m.push(write(4, 0xc3, 512), 0));
    b
}

#[test]
fn marks_times_and_seqs_name_the_right_points() {
    let d = tempfile::tempdir().unwrap();
    let store = store_with(d.path(), VolumeOptions::default());
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let mut m = Model::new();
    vol.append(RING, &marked_stream(&mut m)).unwrap();
    vol.sync().unwrap();
    vol.apply(true).unwrap();
    // Model points: after 2 (flush), before 4 (= after 3), after 5.
    let img = |seq: u64| {
        m.points
            .iter()
            .rev()
            .find(|p| p.0 == seq)
            .map(|p| p.2.clone())
            .unwrap()
    };
    let check = |at: PointSpec, seq: u64| {
        let (bytes, got) = restore_at(&store, d.path(), &at).unwrap();
        assert_eq!(got, seq, "{at}");
        assert!(bytes == img(seq), "{at}: image differs from the model");
    };
    check(PointSpec::Mark("m1".into()), 2);
    check(PointSpec::Mark("m2".into()), 5);
    check(PointSpec::Latest, 5);
    check(PointSpec::Seq(2), 2);
    check(PointSpec::Seq(4), 3);
    check(PointSpec::Seq(7), 5);
    check(PointSpec::Time(time_of(2)), 2);
    // The point before record 4 (PREFLUSH) has record 4's time.
    check(PointSpec::Time(time_of(4) - 1), 2);
    check(PointSpec::Time(time_of(4)), 3);
    check(PointSpec::Time(time_of(9)), 5);
    let (zero, seq) = restore_at(&store, d.path(), &PointSpec::Seq(1)).unwrap();
    assert_eq!(seq, 0);
    assert!(zero.iter().all(|&b| b == 0));
    for bad in [PointSpec::Mark("nope".into()), PointSpec::Seq(99)] {
        let e = restore_at(&store, d.path(), &bad).unwrap_err();
        assert!(matches!(e, StoreError::NoSuchPoint(_)), "{e}");
    }
    // Before the volume existed and before any record.
    let e = restore_at(&store, d.path(), &PointSpec::Time(T0 - 1)).unwrap_err();
    assert!(
        e.to_string().contains("before the oldest restore point"),
        "{e}"
    );

    let points = store.points("v").unwrap();
    let summary: Vec<_> = points
        .iter()
        .map(|p| (p.seq, p.kind, p.marks.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (0, PointKind::Base, vec![]),
            (2, PointKind::Flush, vec!["m1".to_string()]),
            (3, PointKind::Preflush, vec![]),
            (5, PointKind::Flush, vec!["m2".to_string()]),
        ]
    );
    let found = store
        .find_point("v", &PointSpec::Mark("m2".into()))
        .unwrap();
    assert_eq!((found.seq, found.time_ns), (5, time_of(5)));

    let mut log = Vec::new();
    store
        .log("v", None, |r| {
            log.push((r.seq, r.op, r.start, r.len));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(log.len(), 7);
    assert_eq!(log[0], (1, rtbackup_proto::RTB_OP_WRITE, 0, 1024));
    assert_eq!(log[6], (7, rtbackup_proto::RTB_OP_WRITE, 4 * 512, 512));
    let mut since = Vec::new();
    store
        .log("v", Some(&PointSpec::Mark("m1".into())), |r| {
            since.push(r.seq);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(since, vec![3, 4, 5, 6, 7]);
    let mut first = Vec::new();
    store
        .log("v", Some(&PointSpec::Time(time_of(4))), |r| {
            first.push(r.seq);
            ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(first, vec![4]);

    // The same answers with the server stopped and the index gone: read
    // from the journal alone.
    drop(vol);
    fs::remove_file(d.path().join("volumes/v/index.sqlite")).unwrap();
    assert_eq!(
        host_view(store.points("v").unwrap()),
        host_view(points.clone())
    );
    check(PointSpec::Mark("m1".into()), 2);
    // Reopening rebuilds it.
    let vol = store.open_volume("v").unwrap();
    assert!(d.path().join("volumes/v/index.sqlite").exists());
    assert_eq!(
        host_view(store.points("v").unwrap()),
        host_view(points.clone())
    );
    drop(vol);
    // A damaged index is rebuilt too.
    fs::write(d.path().join("volumes/v/index.sqlite"), b"garbage").unwrap();
    let vol = store.open_volume("v").unwrap();
    assert_eq!(
        host_view(store.points("v").unwrap()),
        host_view(points.clone())
    );

    // Reads at a point, with the index and (server stopped, index gone)
    // without it.
    let read_all = |at: &PointSpec| {
        let r = store.open_point("v", at).unwrap();
        let mut buf = vec![0u8; SIZE as usize];
        r.read_at(&mut buf, 0).unwrap();
        (r.point().seq, buf)
    };
    assert_eq!(read_all(&PointSpec::Mark("m1".into())), (2, img(2)));
    assert_eq!(read_all(&PointSpec::Latest), (5, img(5)));
    drop(vol);
    fs::remove_file(d.path().join("volumes/v/index.sqlite")).unwrap();
    assert_eq!(read_all(&PointSpec::Mark("m1".into())), (2, img(2)));
    let r = store.open_point("v", &PointSpec::Latest).unwrap();
    let mut buf = vec![0u8; 512];
    assert!(r.read_at(&mut buf, SIZE - 511).is_err());
    assert!(r.read_at(&mut buf, u64::MAX - 10).is_err());
}

/// A stream of `n` rounds: a few writes, then a flush, each committed
/// when `clock` reads the time of its flush; returns the model.
fn rounds(vol: &rtbackup_store::Volume, clock: &Clock, n: u64) -> Model {
    let mut m = Model::new();
    for i in 0..n {
        let mut b = Vec::new();
        b.extend(m.push(write((i * 3) % 120, i as u8 + 1, 1024), 0));
        b.extend(m.push(write((i * 7 + 1) % 120, i as u8 + 100, 512), 0));
        b.extend(m.push(Op::Flush, 0));
        clock.set(time_of(m.ops.len() as u64));
        vol.append(RING, &b).unwrap();
        vol.sync().unwrap();
        vol.apply(true).unwrap();
    }
    m
}

fn fold_all(vol: &rtbackup_store::Volume) -> u64 {
    let mut steps = 0;
    while let CompactOutcome::Folded { .. } = vol.compact().unwrap() {
        steps += 1;
    }
    steps
}

#[test]
fn retention_by_time_folds_old_history_and_keeps_the_window() {
    let d = tempfile::tempdir().unwrap();
    // Keep from about round 20 (flush seq 60) on, after 30 rounds.
    let clock = test_clock();
    let o = opts(4096, Some(keep_from(90, 60)), None);
    let store = store_with(d.path(), clocked(o, &clock));
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let m = rounds(&vol, &clock, 30);
    let before = store.volume_status("v").unwrap().segments;
    let old = store.open_point("v", &PointSpec::Seq(3)).unwrap();
    let mut buf = vec![0u8; 4096];
    old.read_at(&mut buf, 0).unwrap();
    assert!(fold_all(&vol) > 0);
    // A reader of a point folded away meanwhile gets an error, not data.
    let e = old.read_at(&mut buf, 0).unwrap_err();
    assert!(e.to_string().contains("folded"), "{e}");
    let points = store.points("v").unwrap();
    assert_eq!((points[0].seq, points[0].kind), (60, PointKind::Base));
    assert_eq!(points.len(), 11, "{points:?}");
    // Every point in the window restores exactly; older ones are gone.
    for (seq, _, img) in &m.points {
        let r = restore_at(&store, d.path(), &PointSpec::Seq(*seq));
        if *seq >= 60 {
            let (bytes, got) = r.unwrap();
            assert_eq!(got, *seq);
            assert!(&bytes == img, "seq {seq}");
        } else {
            assert!(matches!(r, Err(StoreError::NoSuchPoint(_))), "seq {seq}");
        }
    }
    let after = store.volume_status("v").unwrap().segments;
    assert!(after < before, "segments {before} -> {after}");
    // Reopened, the same.
    drop(vol);
    let vol = store.open_volume("v").unwrap();
    assert_eq!(store.points("v").unwrap(), points);
    assert_eq!(vol.compact().unwrap(), CompactOutcome::UpToDate);
}

#[test]
fn retention_by_size_drops_whole_old_segments() {
    let d = tempfile::tempdir().unwrap();
    let clock = test_clock();
    let store = store_with(d.path(), clocked(opts(4096, None, Some(3 * 4096)), &clock));
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let m = rounds(&vol, &clock, 40);
    fold_all(&vol);
    let st = store.volume_status("v").unwrap();
    assert!(st.journal_bytes <= 4 * 4096, "{st:?}");
    let points = store.points("v").unwrap();
    let oldest = points[0].seq;
    assert!(oldest > 0 && points.len() > 3, "{points:?}");
    for (seq, _, img) in m.points.iter().filter(|p| p.0 >= oldest) {
        let (bytes, _) = restore_at(&store, d.path(), &PointSpec::Seq(*seq)).unwrap();
        assert!(&bytes == img, "seq {seq}");
    }
    let (latest, _) = restore_at(&store, d.path(), &PointSpec::Latest).unwrap();
    assert!(latest == m.image);
}

#[test]
fn a_fold_interrupted_by_a_crash_is_finished_and_nothing_older_restores_meanwhile() {
    let d = tempfile::tempdir().unwrap();
    let clock = test_clock();
    let store = store_with(d.path(), clocked(opts(4096, None, None), &clock));
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let m = rounds(&vol, &clock, 12);
    drop(vol);
    // What a crash in the middle of folding up to seq 18 leaves: the fold
    // recorded in the state file, and the base image holding records up to
    // seq 18 (here all of them) while the base point is still the start.
    let (at18, _) = restore_at(&store, d.path(), &PointSpec::Seq(18)).unwrap();
    let vdir = d.path().join("volumes/v");
    fs::write(vdir.join("base"), &at18).unwrap();
    let p18 = store.find_point("v", &PointSpec::Seq(18)).unwrap();
    let state_path = vdir.join("state.json");
    let mut st: serde_json::Value =
        serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    st["folding"] = serde_json::json!({
        "segment": p18.segment, "offset": p18.offset, "ring_id": p18.ring_id, "seq": p18.seq
    });
    st["folding_time_ns"] = p18.time_ns.into();
    fs::write(&state_path, serde_json::to_vec(&st).unwrap()).unwrap();
    // Points before it are refused, never restored wrong.
    for seq in [0, 3, 15] {
        let r = restore_at(&store, d.path(), &PointSpec::Seq(seq));
        assert!(
            matches!(r, Err(StoreError::NoSuchPoint(_))),
            "seq {seq}: {r:?}"
        );
    }
    let check_window = |store: &Store| {
        for (seq, _, img) in m.points.iter().filter(|p| p.0 >= 18) {
            let (bytes, _) = restore_at(store, d.path(), &PointSpec::Seq(*seq)).unwrap();
            assert!(&bytes == img, "seq {seq}");
        }
    };
    check_window(&store);
    // Opening finishes the fold.
    let _vol = store.open_volume("v").unwrap();
    let st: serde_json::Value = serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    assert!(st["folding"].is_null(), "{st}");
    assert_eq!(st["base"]["seq"], 18);
    check_window(&store);
    assert_eq!(store.points("v").unwrap()[0].seq, 18);
}

#[test]
fn the_delayed_image_trails_the_stream() {
    let d = tempfile::tempdir().unwrap();
    let clock = test_clock();
    let mut o = clocked(opts(1 << 20, None, None), &clock);
    o.apply_delay = keep_from(30, 15);
    let store = store_with(d.path(), o);
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let m = rounds(&vol, &clock, 10);
    let st = store.volume_status("v").unwrap();
    assert_eq!(st.applied_seq, 15, "{st:?}");
    assert_eq!(st.durable_seq, 30);
    let (latest, seq) = restore_at(&store, d.path(), &PointSpec::Latest).unwrap();
    assert_eq!(seq, 30);
    assert!(latest == m.image);
}

fn arb_op() -> impl Strategy<Value = (Op, u8)> {
    prop_oneof![
        2 => (0u64..100, any::<u8>(), 1usize..4).prop_map(|(s, b, n)| (write(s, b, n * 512), 0)),
        1 => (0u64..100, any::<u8>()).prop_map(|(s, b)| (write(s, b, 512), RTB_REC_PREFLUSH)),
        2 => Just((Op::Flush, 0)),
        1 => (0u8..4).prop_map(|i| (Op::Mark(format!("mark-{i}")), 0)),
        1 => (0u64..100, 1u64..8).prop_map(|(s, n)| (
            Op::Discard {
                sector: s,
                len: n * 512
            },
            0
        )),
        // Resync sections: chunks (some empty, filling a reserved seq) and
        // ends whose consistent_seq is before, at or after themselves.
        2 => (0u64..100, any::<u8>(), 0usize..4).prop_map(|(s, b, n)| (
            Op::Resync {
                sector: s,
                data: vec![b; n * 512]
            },
            0
        )),
        1 => (-3i64..4).prop_map(|delta| (Op::ResyncEnd { delta }, 0)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every consistency point of a random stream restores to the model's
    /// image at that point, by seq and by mark, whatever the segment size,
    /// the commits and a retention fold on the way. Resync sections hide
    /// the points inside them: the points listed are exactly the model's,
    /// none inside a section; a seq inside one gives the point before it;
    /// the image and the latest point stay before an open section.
    #[test]
    fn every_point_restores_to_its_state(
        ops in proptest::collection::vec(arb_op(), 1..50),
        cuts in proptest::collection::vec(1usize..6, 1..20),
        seg in 1024u64..8192,
        fold_at in 0u64..50,
        chunk in 1usize..20000,
    ) {
        let d = fast_tempdir();
        let clock = test_clock();
        let store = store_with(d.path(), clocked(opts(seg, None, None), &clock));
        let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
        let mut m = Model::new();
        let recs: Vec<Vec<u8>> = ops.iter().map(|(op, f)| m.push(op.clone(), *f)).collect();
        let mut i = 0;
        for c in cuts.iter().cycle() {
            if i >= recs.len() { break; }
            let end = (i + c).min(recs.len());
            clock.set(time_of(end as u64));
            vol.append(RING, &recs[i..end].concat()).unwrap();
            vol.sync().unwrap();
            vol.apply(true).unwrap();
            i = end;
        }
        let image = fs::read(d.path().join("volumes/v/image")).unwrap();
        prop_assert!(image == m.at_cp.0, "the image is not at the last point");
        let st = store.volume_status("v").unwrap();
        prop_assert_eq!(st.resyncing, m.section.is_some());
        prop_assert_eq!(st.resync_since_seq, m.section.map(|s| s.0));
        prop_assert_eq!(st.applied_seq, m.at_cp.1);
        end_matches(&store, Some(&vol), &m)?;
        drop(vol);
        // Fold up to the newest point at or before seq `fold_at` with a
        // store that keeps only from there.
        let oldest = store.find_point("v", &PointSpec::Seq(fold_at)).map(|p| p.seq).unwrap_or(0);
        let keep = keep_from(m.ops.len() as u64, oldest.max(1));
        let folding = store_with(d.path(), clocked(opts(seg, Some(keep), None), &clock));
        let vol = folding.open_volume("v").unwrap();
        fold_all(&vol);
        let listed = store.points("v").unwrap();
        let base = listed[0].seq;
        prop_assert!(base <= oldest.max(1));
        let got: Vec<(u64, u64)> = listed[1..]
            .iter()
            .filter(|p| p.seq > base)
            .map(|p| (p.seq, p.time_ns))
            .collect();
        let mut want: Vec<(u64, u64)> = m.points.iter().filter(|p| p.0 > base).map(|p| (p.0, p.1)).collect();
        want.dedup_by_key(|p| p.0);
        prop_assert_eq!(&got, &want);
        for p in &listed {
            prop_assert!(!m.inside.contains(&p.seq), "point {:?} inside a resync section", p);
        }
        for seq in base..=m.ops.len() as u64 {
            let p = store.find_point("v", &PointSpec::Seq(seq)).unwrap();
            prop_assert_eq!(p.seq, point_at_or_before(&m, seq, base), "at seq {}", seq);
        }
        for (seq, _, img) in m.points.iter().filter(|p| p.0 >= base) {
            let (bytes, got) = restore_at(&store, d.path(), &PointSpec::Seq(*seq)).unwrap();
            prop_assert_eq!(got, *seq);
            prop_assert!(&bytes == img, "seq {}", seq);
            // Read in place, in pieces of odd sizes, as NBD clients do.
            let r = store.open_point("v", &PointSpec::Seq(*seq)).unwrap();
            prop_assert_eq!(r.point().seq, *seq);
            let mut at = 0usize;
            let mut n = chunk;
            while at < img.len() {
                let len = n.min(img.len() - at);
                let mut buf = vec![0xeeu8; len];
                r.read_at(&mut buf, at as u64).unwrap();
                prop_assert!(buf[..] == img[at..at + len], "seq {} bytes {}..{}", seq, at, at + len);
                at += len;
                n = n * 3 % 7919 + 512;
            }
        }
        // A mark name naming one point held restores it; one naming
        // several is ambiguous, and each of them restores by its id.
        let mut names: Vec<&String> = m.marks.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        for name in names {
            let mut seqs: Vec<u64> = m.marks.iter().filter(|(n, s)| n == name && *s >= base).map(|x| x.1).collect();
            seqs.sort_unstable();
            seqs.dedup();
            let r = restore_at(&store, d.path(), &PointSpec::Mark(name.clone()));
            match seqs.as_slice() {
                [] => prop_assert!(matches!(r, Err(StoreError::NoSuchPoint(_))), "mark {}: {:?}", name, r),
                [seq] => {
                    let (bytes, got) = r.unwrap();
                    prop_assert_eq!(got, *seq);
                    let img = &m.points.iter().rev().find(|p| p.0 == *seq).map(|p| p.2.clone())
                        .unwrap_or_else(|| vec![0; SIZE as usize]);
                    prop_assert!(&bytes == img, "mark {}", name);
                }
                many => {
                    let Err(StoreError::AmbiguousPoint(msg)) = r else {
                        return Err(TestCaseError::fail(format!("mark {name} names {many:?}: {r:?}")));
                    };
                    prop_assert_eq!(msg.matches("id:").count(), many.len(), "{}", msg);
                }
            }
        }
        // Every point listed restores by its id.
        for p in store.points("v").unwrap() {
            let at: PointSpec = format!("id:{}", p.id).parse().unwrap();
            let (_, got) = restore_at(&store, d.path(), &at).unwrap();
            prop_assert_eq!(got, p.seq);
        }
        let (latest, _) = restore_at(&store, d.path(), &PointSpec::Latest).unwrap();
        prop_assert!(latest == m.at_cp.0);
        end_matches(&store, Some(&vol), &m)?;
    }
}

/// The end of the journal (`Store::open_end`) holds every record of the
/// model, the last one's seq, and is consistent when no record after the
/// model's last point changes data.
fn end_matches(
    store: &Store,
    vol: Option<&rtbackup_store::Volume>,
    m: &Model,
) -> Result<(), TestCaseError> {
    let r = store
        .open_end("v", vol.map(rtbackup_store::Volume::durable_position))
        .unwrap();
    let end = r.journal_end().unwrap();
    let last_point = m.points.last().map_or(0, |p| p.0);
    let changed = m.ops[last_point as usize..].iter().any(|(op, _)| match op {
        Op::Write { data, .. } | Op::Resync { data, .. } => !data.is_empty(),
        Op::Discard { len, .. } | Op::Zeroes { len, .. } => *len > 0,
        _ => false,
    });
    prop_assert_eq!(
        (end.ring_id, end.seq, end.consistent),
        (RING, m.ops.len() as u64, !changed)
    );
    let mut buf = vec![0u8; SIZE as usize];
    r.read_at(&mut buf, 0).unwrap();
    prop_assert!(buf == m.image, "the end is not after every record");
    Ok(())
}

/// A compromised host steps its clock back three days and forges a FLUSH
/// stamped 1970 (Documentation/security.rst, "Time"). Retention and the
/// delayed image go by the backup host's clock: nothing younger than the
/// window is folded, the image does not jump ahead, the mark taken before
/// the step still restores, and point times never go backwards.
#[test]
fn a_host_clock_stepped_back_or_forged_deletes_no_history() {
    let d = tempfile::tempdir().unwrap();
    let clock = test_clock();
    let hour = Duration::from_secs(3600);
    let mut o = clocked(opts(4096, Some(hour), None), &clock);
    o.apply_delay = Duration::from_secs(600);
    let store = store_with(d.path(), o);
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let mut m = Model::new();
    let mut good = marked_stream(&mut m);
    good.extend(m.push(Op::Flush, 0));
    clock.set(time_of(8));
    commit(&vol, RING, &good);
    let good_image = m.at_cp.0.clone();
    clock.advance(Duration::from_secs(600));

    m.host_time = Some(time_of(8) - 3 * 86_400 * 1_000_000_000);
    let mut stepped = Vec::new();
    stepped.extend(m.push(write(8, 0xdd, 4096), 0));
    stepped.extend(m.push(Op::Flush, 0));
    m.host_time = Some(0);
    stepped.extend(m.push(write(16, 0xee, 4096), 0));
    stepped.extend(m.push(Op::Flush, 0));
    commit(&vol, RING, &stepped);

    // A minute later on the backup host's clock: the image, ten minutes
    // behind, holds the first batch only, whatever the later records say
    // of their age.
    clock.advance(Duration::from_secs(60));
    vol.apply(true).unwrap();
    assert_eq!(store.volume_status("v").unwrap().applied_seq, 8);
    // Within the hour: nothing is folded.
    assert_eq!(fold_all(&vol), 0);
    let (bytes, seq) = restore_at(&store, d.path(), &PointSpec::Mark("m2".into())).unwrap();
    assert_eq!(seq, 5);
    assert!(bytes == m.points.iter().find(|p| p.0 == 5).unwrap().2);
    let (bytes, seq) = restore_at(&store, d.path(), &PointSpec::Seq(8)).unwrap();
    assert_eq!(seq, 8);
    assert!(bytes == good_image);

    // Host times are raised to the last honest one, received times are
    // the backup host's, and neither goes backwards.
    let points = store.points("v").unwrap();
    let after: Vec<_> = points.iter().filter(|p| p.seq > 8).collect();
    assert_eq!(after.len(), 2, "{points:?}");
    for p in &after {
        assert_eq!(p.time_ns, time_of(8), "{p:?}");
        assert_eq!(p.received_ns, time_of(8) + 600 * 1_000_000_000, "{p:?}");
    }
    for w in points[1..].windows(2) {
        assert!(w[0].time_ns <= w[1].time_ns && w[0].received_ns <= w[1].received_ns);
    }

    // Once the backup host's clock passes the hour, retention folds.
    clock.advance(hour);
    vol.apply(true).unwrap();
    assert!(fold_all(&vol) > 0);
    assert_eq!(store.points("v").unwrap()[0].seq, 12);
}

/// `--keep-size` does not let a host flush out its own recent history:
/// junk written far past the cap folds nothing received within the
/// minimum age, and once that history is old enough on the backup host's
/// clock, size folds as before. By default the minimum age is the `--keep`
/// window.
#[test]
fn junk_past_the_size_cap_folds_no_young_history() {
    let d = tempfile::tempdir().unwrap();
    let clock = test_clock();
    let mut o = clocked(opts(4096, None, Some(3 * 4096)), &clock);
    o.retention.size_min_age = Some(Duration::from_secs(3600));
    let store = store_with(d.path(), o);
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let m = rounds(&vol, &clock, 40);
    assert_eq!(
        fold_all(&vol),
        0,
        "history younger than the minimum age folded by size"
    );
    let st = store.volume_status("v").unwrap();
    assert!(st.journal_bytes > 6 * 4096, "{st:?}");
    let (bytes, _) = restore_at(&store, d.path(), &PointSpec::Seq(3)).unwrap();
    assert!(bytes == m.points.iter().find(|p| p.0 == 3).unwrap().2);
    // An hour and a half on: old enough; size folds.
    clock.advance(Duration::from_secs(5400));
    assert!(fold_all(&vol) > 0);
    let st = store.volume_status("v").unwrap();
    assert!(st.journal_bytes <= 4 * 4096, "{st:?}");

    // The default: the keep window (2 hours here, so the fold above is by
    // size alone on a second volume).
    let d = tempfile::tempdir().unwrap();
    let clock = test_clock();
    let mut o = clocked(
        opts(4096, Some(Duration::from_secs(7200)), Some(3 * 4096)),
        &clock,
    );
    o.retention.size_min_age = None;
    let store = store_with(d.path(), o);
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    rounds(&vol, &clock, 40);
    clock.advance(Duration::from_secs(5400));
    assert_eq!(
        fold_all(&vol),
        0,
        "history inside the keep window folded by size"
    );
    clock.advance(Duration::from_secs(3600));
    assert!(fold_all(&vol) > 0);
}

/// A compromised host cannot re-point a known-good mark name: a name that
/// names two points is an error listing both by id, and each id restores
/// its own point. A seq of two rings (a re-attach) is ambiguous the same
/// way; a seq of one ring still resolves.
#[test]
fn a_mark_name_used_again_or_a_seq_of_two_rings_is_ambiguous() {
    let (d, store, vol) = fresh();
    let mut m = Model::new();
    let mut b = Vec::new();
    b.extend(m.push(write(0, 0x11, 512), 0));
    b.extend(m.push(Op::Flush, 0));
    b.extend(m.push(Op::Mark("good".into()), 0));
    b.extend(m.push(write(0, 0x66, 512), 0));
    b.extend(m.push(Op::Flush, 0));
    b.extend(m.push(Op::Mark("good".into()), 0));
    commit(&vol, RING, &b);
    let e = restore_at(&store, d.path(), &PointSpec::Mark("good".into())).unwrap_err();
    let StoreError::AmbiguousPoint(msg) = &e else {
        panic!("{e}")
    };
    let points = store.points("v").unwrap();
    let good: Vec<_> = points.iter().filter(|p| p.marks == ["good"]).collect();
    assert_eq!(good.len(), 2, "{points:?}");
    for p in &good {
        assert!(msg.contains(&format!("id:{}", p.id)), "{msg}");
        let at: PointSpec = format!("id:{}", p.id).parse().unwrap();
        let (bytes, seq) = restore_at(&store, d.path(), &at).unwrap();
        assert_eq!(seq, p.seq);
        assert_eq!(bytes[0], if p.seq == 2 { 0x11 } else { 0x66 });
    }
    let e = restore_at(&store, d.path(), &PointSpec::Id(99, 64)).unwrap_err();
    assert!(matches!(e, StoreError::NoSuchPoint(_)), "{e}");
    assert!("id:x".parse::<PointSpec>().is_err());

    // A second ring (the device attached again) with the same seqs.
    let mut m2 = continued(&m);
    let mut b = Vec::new();
    b.extend(m2.push(write(8, 0x22, 512), 0));
    b.extend(m2.push(Op::Flush, 0));
    commit(&vol, RING + 1, &b);
    let e = restore_at(&store, d.path(), &PointSpec::Seq(2)).unwrap_err();
    assert!(matches!(e, StoreError::AmbiguousPoint(_)), "{e}");
    assert_eq!(
        restore_at(&store, d.path(), &PointSpec::Seq(5)).unwrap().1,
        5
    );
}
