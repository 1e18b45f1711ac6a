//! Behaviour of the store through its public API, against a model image
//! computed independently here.

mod common;

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use rtbackup_proto::{append_record, RTB_OP_FLUSH, RTB_OP_WRITE, RTB_REC_PREFLUSH};
use rtbackup_store::{
    segment_file_name, ApplyOutcome, CompactOutcome, LocalDirStore, Retention, Store, StoreError,
    VolumeOptions,
};

#[test]
fn append_reopen_and_consistency_points() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path().join("store")).unwrap();
    let mut m = Model::new();
    let vol = store.open_or_create_volume("db1", SIZE, 512).unwrap();
    assert_eq!(vol.durable_seq_for(RING), 0);

    // Two writes without a flush: durable, but not a consistency point.
    let mut batch = m.push(write(0, 1, 1024), 0);
    batch.extend(m.push(write(4, 2, 512), 0));
    let out = vol.append(RING, &batch).unwrap();
    assert_eq!((out.appended, out.skipped, out.last_seq), (2, 0, 2));
    assert_eq!(vol.durable_seq_for(RING), 0);
    assert_eq!(vol.sync().unwrap(), (RING, 2));
    assert_eq!(vol.durable_seq_for(RING), 2);
    assert_eq!(vol.apply(true).unwrap(), ApplyOutcome::UpToDate);
    let (img, seq) = restored(&store, "db1", d.path());
    assert_eq!(seq, 0);
    assert!(img == vec![0; SIZE as usize]);

    // A flush makes them a consistency point.
    vol.append(RING, &m.push(Op::Flush, 0)).unwrap();
    vol.sync().unwrap();
    // Restore replays durable records the image has not got yet.
    let (img, seq) = restored(&store, "db1", d.path());
    assert_eq!(seq, 3);
    assert!(img == m.at_cp.0);
    assert!(matches!(
        vol.apply(true).unwrap(),
        ApplyOutcome::Applied { records: 3, .. }
    ));
    assert_eq!(vol.checkpoint().seq, 3);

    // PREFLUSH: a consistency point before the record.
    let mut batch = m.push(write(8, 3, 512), 0);
    batch.extend(m.push(
        Op::Discard {
            sector: 0,
            len: 512,
        },
        0,
    ));
    batch.extend(m.push(write(16, 4, 512), RTB_REC_PREFLUSH));
    vol.append(RING, &batch).unwrap();
    vol.sync().unwrap();
    vol.apply(true).unwrap();
    assert_eq!(vol.checkpoint().seq, 5);
    let (img, seq) = restored(&store, "db1", d.path());
    assert_eq!(seq, 5);
    assert!(img == m.at_cp.0);

    // Reopen: durable seq and checkpoint survive; appends continue.
    drop(vol);
    let vol = store.open_volume("db1").unwrap();
    assert_eq!(vol.durable_seq_for(RING), 6);
    assert_eq!(vol.durable_seq_for(RING + 1), 0);
    assert_eq!(vol.checkpoint().seq, 5);
    vol.append(
        RING,
        &m.push(
            Op::Zeroes {
                sector: 1,
                len: 512,
            },
            0,
        ),
    )
    .unwrap();
    vol.append(RING, &m.push(Op::Flush, 0)).unwrap();
    vol.sync().unwrap();
    vol.apply(true).unwrap();
    let (img, seq) = restored(&store, "db1", d.path());
    assert_eq!(seq, 8);
    assert!(img == m.image);
    let st = store.volume_status("db1").unwrap();
    assert_eq!(
        (st.durable_seq, st.applied_seq, st.size_bytes),
        (8, 8, SIZE)
    );
}

#[test]
fn duplicates_are_skipped_gaps_and_bad_records_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let mut m = Model::new();
    let vol = store.open_or_create_volume("v", SIZE, 4096).unwrap();
    let r1 = m.push(write(0, 1, 512), 0);
    let r2 = m.push(write(1, 2, 512), 0);
    let r3 = m.push(Op::Flush, 0);
    let r4 = m.push(write(2, 3, 512), 0);
    vol.append(RING, &[r1.clone(), r2.clone()].concat())
        .unwrap();
    vol.sync().unwrap();
    let seg = active_segment(d.path(), "v");
    let len = fs::metadata(&seg).unwrap().len();
    // The same batch again: nothing stored.
    let out = vol
        .append(RING, &[r1.clone(), r2.clone()].concat())
        .unwrap();
    assert_eq!((out.appended, out.skipped), (0, 2));
    assert_eq!(fs::metadata(&seg).unwrap().len(), len);
    // Overlapping: only the new record is stored.
    let out = vol
        .append(RING, &[r2.clone(), r3.clone()].concat())
        .unwrap();
    assert_eq!((out.appended, out.skipped), (1, 1));
    vol.sync().unwrap();
    let len = fs::metadata(&seg).unwrap().len();

    // A gap.
    let e = vol.append(RING, &r4[..0]).unwrap();
    assert_eq!(e.appended, 0);
    let mut m2 = Model::new();
    for _ in 0..5 {
        m2.push(Op::Flush, 0);
    }
    let r6 = m2.push(write(0, 9, 512), 0);
    assert!(matches!(
        vol.append(RING, &r6),
        Err(StoreError::SeqGap {
            expected: 4,
            got: 6
        })
    ));
    // A gap inside a batch refuses all of it.
    assert!(matches!(
        vol.append(RING, &[r4.clone(), r6.clone()].concat()),
        Err(StoreError::SeqGap { .. })
    ));
    // Out of range.
    let oor = rtbackup_proto::build_record(RTB_OP_WRITE, 0, 4, SIZE / 512 - 1, 1024, 0, &[1; 1024]);
    let e = vol.append(RING, &oor).unwrap_err();
    assert!(matches!(e, StoreError::OutOfRange { seq: 4, .. }), "{e}");
    assert_eq!(e.code(), "out-of-range");
    // A bad payload checksum, after a valid record in the same batch.
    let mut bad = r4.clone();
    bad[70] ^= 1;
    let e = vol.append(RING, &[r4.clone(), bad].concat()).unwrap_err();
    assert!(matches!(e, StoreError::BadRecord { index: 1, .. }), "{e}");
    // Trailing garbage.
    let e = vol
        .append(RING, &[r4.clone(), vec![0u8; 10]].concat())
        .unwrap_err();
    assert!(e.is_bad_input(), "{e}");
    // Nothing of the refused batches was stored.
    assert_eq!(fs::metadata(&seg).unwrap().len(), len);
    assert_eq!(vol.durable_seq_for(RING), 3);
    vol.append(RING, &r4).unwrap();
    vol.sync().unwrap();
    assert_eq!(vol.durable_seq_for(RING), 4);
}

#[test]
fn size_mismatch_and_bad_names_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    drop(store.open_or_create_volume("v", SIZE, 512).unwrap());
    assert!(matches!(
        store.open_or_create_volume("v", SIZE * 2, 512),
        Err(StoreError::SizeMismatch { .. })
    ));
    assert!(matches!(
        store.open_or_create_volume("../x", SIZE, 512),
        Err(StoreError::BadVolumeName { .. })
    ));
    assert!(matches!(
        store.open_or_create_volume("w", 1000, 512),
        Err(StoreError::BadParameters(_))
    ));
    let v = store.open_volume("v").unwrap();
    assert!(matches!(store.open_volume("v"), Err(StoreError::Busy(_))));
    drop(v);
    assert_eq!(store.volumes().unwrap(), vec!["v".to_string()]);
}

/// Writes W1 F2 W3 F4, syncs, then damages the last record (F4's
/// predecessor W3 + F4 are the last batch) at `cut`: truncated there, or
/// overwritten with `fill` from there on.
fn torn_tail_case(cut: usize, fill: Option<u8>) {
    let d = fast_tempdir();
    let store = Store::open(d.path()).unwrap();
    let mut m = Model::new();
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let mut first = m.push(write(0, 1, 1024), 0);
    first.extend(m.push(Op::Flush, 0));
    vol.append(RING, &first).unwrap();
    vol.sync().unwrap();
    let good = m.at_cp.0.clone();
    let mut last = m.push(write(8, 7, 1024), 0);
    last.extend(m.push(Op::Flush, 0));
    vol.append(RING, &last).unwrap();
    vol.sync().unwrap();
    // No apply: the server "crashed" before applying.
    drop(vol);
    let seg = active_segment(d.path(), "v");
    let full = fs::read(&seg).unwrap();
    let start = full.len() - last.len();
    let mut damaged = full[..start + cut].to_vec();
    if let Some(b) = fill {
        damaged.resize(full.len(), b);
        if damaged == full {
            return;
        }
    }
    fs::write(&seg, &damaged).unwrap();

    let vol = store.open_volume("v").unwrap();
    // W3 is damaged: everything after it is discarded, W3 and F4 never
    // applied. (A cut inside F4 keeps W3, which has no consistency point
    // after it.)
    let w3_len = last.len() - 64;
    let expect_seq = if cut >= w3_len { 3 } else { 2 };
    assert_eq!(vol.durable_seq_for(RING), expect_seq, "cut {cut}");
    assert_eq!(vol.checkpoint().seq, 2, "cut {cut}");
    let (img, seq) = restored(&store, "v", d.path());
    assert_eq!(seq, 2);
    assert!(img == good, "cut {cut}");
    let seg_len = fs::metadata(&seg).unwrap().len() as usize;
    assert_eq!(seg_len, start + if cut >= w3_len { w3_len } else { 0 });
    // What was cut is kept as evidence, byte for byte.
    let q = d.path().join("volumes/v/quarantine");
    let kept: Vec<_> = fs::read_dir(&q)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if damaged.len() > seg_len {
        assert_eq!(kept.len(), 1, "cut {cut}: {kept:?}");
        assert!(
            fs::read(&kept[0]).unwrap() == damaged[seg_len..],
            "cut {cut}"
        );
        assert!(kept[0]
            .to_str()
            .unwrap()
            .ends_with(&format!("-{seg_len}.bin")));
    } else {
        assert!(kept.is_empty(), "cut {cut}: {kept:?}");
    }
    // The agent resends; the stream goes on.
    vol.append(RING, &last).unwrap();
    vol.sync().unwrap();
    vol.apply(true).unwrap();
    let (img, seq) = restored(&store, "v", d.path());
    assert_eq!(seq, 4);
    assert!(img == m.image);
}

#[test]
fn torn_tail_at_every_offset_is_discarded() {
    let last_len = 64 + 1024 + 64;
    for cut in 0..last_len {
        torn_tail_case(cut, None);
    }
}

#[test]
fn garbage_tail_at_every_offset_is_discarded() {
    let last_len = 64 + 1024 + 64;
    for cut in (0..last_len).step_by(7) {
        torn_tail_case(cut, Some(0));
        torn_tail_case(cut, Some(0xa5));
    }
}

#[test]
fn corruption_in_a_sealed_segment_is_an_error() {
    let d = tempfile::tempdir().unwrap();
    let opts = VolumeOptions {
        segment_bytes: 2048,
        ..VolumeOptions::default()
    };
    let store = Store::with_segment_store(
        d.path(),
        Arc::new(LocalDirStore::new(d.path().join("sealed"))),
        opts,
    )
    .unwrap();
    let mut m = Model::new();
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    for i in 0..10 {
        vol.append(RING, &m.push(write(i, i as u8, 1024), 0))
            .unwrap();
    }
    vol.sync().unwrap();
    drop(vol);
    let sealed = d.path().join("sealed").join("v").join(segment_file_name(2));
    let mut bytes = fs::read(&sealed).unwrap();
    bytes[64 + 64 + 100] ^= 0x10;
    fs::write(&sealed, &bytes).unwrap();
    let e = store.open_volume("v").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, StoreError::Corrupt { offset: 64, .. }), "{msg}");
    assert!(msg.contains(&segment_file_name(2)), "{msg}");
    assert!(msg.contains("payload checksum mismatch"), "{msg}");
    assert!(store.restore("v", &d.path().join("out")).is_err());
}

#[test]
fn ring_change_is_a_consistency_point_and_segments_retire() {
    let d = tempfile::tempdir().unwrap();
    // No history: every segment applied to the image may go.
    let opts = VolumeOptions {
        segment_bytes: 4096,
        retention: Retention {
            keep: Some(Duration::ZERO),
            ..Retention::default()
        },
        ..VolumeOptions::default()
    };
    let store = Store::with_segment_store(
        d.path(),
        Arc::new(LocalDirStore::new(d.path().join("sealed"))),
        opts,
    )
    .unwrap();
    let mut m = Model::new();
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    for i in 0..20 {
        vol.append(RING, &m.push(write(i * 2, i as u8 + 1, 1024), 0))
            .unwrap();
    }
    vol.sync().unwrap();
    assert_eq!(vol.apply(true).unwrap(), ApplyOutcome::UpToDate);
    assert!(store.volume_status("v").unwrap().segments > 5);
    // A new attach: the old ring's records all count.
    let old = m.image.clone();
    let mut m2 = Model::new();
    m2.image = old.clone();
    assert_eq!(vol.durable_seq_for(RING), 20);
    vol.append(RING + 1, &m2.push(write(1, 0xee, 512), 0))
        .unwrap();
    vol.sync().unwrap();
    assert_eq!(vol.durable_seq_for(RING), 0);
    assert_eq!(vol.durable_seq_for(RING + 1), 1);
    assert!(matches!(
        vol.apply(true).unwrap(),
        ApplyOutcome::Applied { records: 20, .. }
    ));
    let (img, seq) = restored(&store, "v", d.path());
    assert_eq!(seq, 20);
    assert!(img == old);
    while let CompactOutcome::Folded { .. } = vol.compact().unwrap() {}
    let st = store.volume_status("v").unwrap();
    assert!(st.segments <= 2, "{st:?}");
    assert_eq!((st.ring_id, st.durable_seq), (RING + 1, 1));
    // The stale ring cannot come back.
    let mut m3 = Model::new();
    for _ in 0..20 {
        m3.push(Op::Flush, 0);
    }
    let stale = m3.push(Op::Flush, 0);
    assert!(matches!(
        vol.append(RING, &stale),
        Err(StoreError::StaleRing { ring_id: RING, current, .. }) if current == RING + 1
    ));
    assert_eq!(vol.check_ring(RING).unwrap_err().code(), "stale-ring");
    vol.check_ring(RING + 1).unwrap();
    vol.check_ring(RING + 2).unwrap();
    // Also after a reopen, with the old ring's segments retired: the state
    // file remembers it.
    drop(vol);
    let vol = store.open_volume("v").unwrap();
    assert!(matches!(
        vol.check_ring(RING),
        Err(StoreError::StaleRing { .. })
    ));
    assert!(matches!(
        vol.append(RING, &Model::new().push(Op::Flush, 0)),
        Err(StoreError::StaleRing { .. })
    ));
    assert_eq!(vol.durable(), (RING + 1, 1));
}

/// A store with a volume whose journal has records 1..=2 (a write and a
/// flush) of `RING` in segment 2 (segment 1 is the creation's, of ring 0),
/// and a segment 3 being created by a crashed roll: `newest` is what of
/// segment 3's file made it to disk.
fn crashed_roll(newest: &[u8]) -> (tempfile::TempDir, Store, Model) {
    let d = fast_tempdir();
    let store = Store::open(d.path()).unwrap();
    let mut m = Model::new();
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let mut b = m.push(write(0, 3, 1024), 0);
    b.extend(m.push(Op::Flush, 0));
    vol.append(RING, &b).unwrap();
    vol.sync().unwrap();
    drop(vol);
    assert_eq!(
        active_segment(d.path(), "v").file_name().unwrap(),
        segment_file_name(2).as_str()
    );
    let jdir = d.path().join("volumes/v/journal");
    fs::write(jdir.join(segment_file_name(3)), newest).unwrap();
    (d, store, m)
}

#[test]
fn unfinished_newest_segment_without_records_is_removed_at_open() {
    let header = {
        // A valid header of segment 2 (as a finished roll writes it).
        let (d, store, _) = crashed_roll(&[]);
        let vol = store.open_volume("v").unwrap();
        vol.append(RING + 1, &Model::new().push(Op::Flush, 0))
            .unwrap();
        drop(vol);
        let seg = fs::read(
            d.path()
                .join("volumes/v/journal")
                .join(segment_file_name(3)),
        )
        .unwrap();
        seg[..64].to_vec()
    };
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("half header", header[..32].to_vec()),
        ("zeroed header", vec![0u8; 64]),
    ] {
        let (d, store, mut m) = crashed_roll(&bytes);
        let vol = store
            .open_volume("v")
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(vol.durable(), (RING, 2), "{what}");
        let jdir = d.path().join("volumes/v/journal");
        assert!(!jdir.join(segment_file_name(3)).exists(), "{what}");
        // The next roll makes segment 2 again, and the stream goes on.
        let mut b = m.push(write(4, 9, 512), 0);
        b.extend(m.push(Op::Flush, 0));
        vol.append(RING, &b).unwrap();
        vol.sync().unwrap();
        vol.append(RING + 1, &Model::new().push(Op::Flush, 0))
            .unwrap();
        vol.sync().unwrap();
        vol.apply(true).unwrap();
        let (img, seq) = restored(&store, "v", d.path());
        assert_eq!(seq, 1, "{what}");
        assert!(img == m.image, "{what}");
        drop(vol);
        store.open_volume("v").unwrap();
    }
}

#[test]
fn newest_segment_with_bad_header_and_records_is_not_removed() {
    let mut bytes = vec![0u8; 64];
    bytes.extend(Model::new().push(Op::Flush, 0));
    let (d, store, _) = crashed_roll(&bytes);
    let e = store.open_volume("v").unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    let seg = d
        .path()
        .join("volumes/v/journal")
        .join(segment_file_name(3));
    assert_eq!(fs::read(seg).unwrap(), bytes);
}

#[test]
fn leftovers_of_a_failed_roll_do_not_block_the_next_one() {
    let (d, store, _) = crashed_roll(&[]);
    let jdir = d.path().join("volumes/v/journal");
    // A temporary file left by a crash inside segment creation is removed
    // at open.
    let tmp2 = jdir.join(format!("{}.tmp", segment_file_name(3)));
    fs::write(&tmp2, b"partial").unwrap();
    let vol = store.open_volume("v").unwrap();
    assert!(!tmp2.exists());
    // Files left under the next segment's names by a roll that failed
    // after its rename (and a stray temporary file) are replaced.
    fs::write(jdir.join(segment_file_name(3)), b"x").unwrap();
    fs::write(jdir.join(format!("{}.tmp", segment_file_name(3))), b"y").unwrap();
    let mut m = Model::new();
    vol.append(RING + 7, &m.push(Op::Flush, 0)).unwrap();
    vol.sync().unwrap();
    assert_eq!(vol.durable(), (RING + 7, 1));
    drop(vol);
    let vol = store.open_volume("v").unwrap();
    assert_eq!(vol.durable(), (RING + 7, 1));
}

#[test]
fn opening_does_not_wait_for_a_long_restore() {
    use nix::fcntl::{Flock, FlockArg};
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    drop(store.open_or_create_volume("v", SIZE, 512).unwrap());
    let f = fs::File::open(d.path().join("volumes/v/lock")).unwrap();
    let l = Flock::lock(f, FlockArg::LockShared).unwrap();
    let t = std::time::Instant::now();
    let e = store.open_volume("v").unwrap_err();
    assert!(matches!(e, StoreError::Locked(_)), "{e}");
    assert_eq!(e.code(), "volume-busy");
    assert!(!e.is_internal());
    assert!(t.elapsed() < std::time::Duration::from_secs(10));
    drop(l);
    store.open_volume("v").unwrap();
}

#[test]
fn extreme_seqs_are_refused_without_panicking() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    let mut b = Vec::new();
    append_record(&mut b, RTB_OP_FLUSH, 0, u64::MAX, 0, 0, 0, &[]);
    append_record(&mut b, RTB_OP_FLUSH, 0, 1, 0, 0, 0, &[]);
    let e = vol.append(RING, &b).unwrap_err();
    assert!(
        matches!(e, StoreError::Refused { seq: u64::MAX, .. }),
        "{e}"
    );
    assert!(e.is_bad_input());
    let mut b = Vec::new();
    append_record(&mut b, RTB_OP_FLUSH, 0, u64::MAX, 0, 0, 0, &[]);
    assert!(vol.append(RING, &b).unwrap_err().is_bad_input());
    assert_eq!(vol.durable(), (0, 0));
}

#[test]
fn apply_defers_while_a_restore_holds_the_lock() {
    use nix::fcntl::{Flock, FlockArg};
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let mut m = Model::new();
    let vol = store.open_or_create_volume("v", SIZE, 512).unwrap();
    vol.append(RING, &m.push(write(0, 1, 512), RTB_REC_PREFLUSH))
        .unwrap();
    vol.append(RING, &m.push(Op::Flush, 0)).unwrap();
    vol.sync().unwrap();
    let f = fs::File::open(d.path().join("volumes/v/lock")).unwrap();
    let l = Flock::lock(f, FlockArg::LockShared).unwrap();
    assert_eq!(vol.apply(false).unwrap(), ApplyOutcome::Deferred);
    // Appends and syncs go on meanwhile.
    vol.append(RING, &m.push(write(1, 2, 512), 0)).unwrap();
    vol.sync().unwrap();
    drop(l);
    assert!(matches!(
        vol.apply(false).unwrap(),
        ApplyOutcome::Applied { .. }
    ));
    assert_eq!(vol.checkpoint().seq, 2);
}

fn arb_op() -> impl Strategy<Value = (Op, u8)> {
    let sectors = SIZE / 512;
    let op = prop_oneof![
        4 => (0..sectors - 8, 1usize..8, any::<u8>()).prop_map(|(s, n, b)| Op::Write {
            sector: s,
            data: (0..n * 512).map(|i| b.wrapping_add(i as u8)).collect()
        }),
        1 => (0..sectors - 16, 1u64..16).prop_map(|(s, n)| Op::Discard { sector: s, len: n * 512 }),
        1 => (0..sectors - 16, 1u64..16).prop_map(|(s, n)| Op::Zeroes { sector: s, len: n * 512 }),
        1 => Just(Op::Flush),
    ];
    (op, prop_oneof![4 => Just(0u8), 1 => Just(RTB_REC_PREFLUSH)])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random streams cut into random batches, with resends, reopens and
    /// small segments: the restore always equals the model image at the
    /// last consistency point.
    #[test]
    fn restore_equals_model(
        ops in proptest::collection::vec(arb_op(), 1..60),
        cuts in proptest::collection::vec((1usize..6, any::<bool>(), any::<bool>(), 0usize..3), 1..30),
        seg in 1024u64..16384,
    ) {
        let d = fast_tempdir();
        let store = Store::with_segment_store(
            d.path(),
            Arc::new(LocalDirStore::new(d.path().join("sealed"))),
            VolumeOptions { segment_bytes: seg, ..VolumeOptions::default() },
        ).unwrap();
        let mut m = Model::new();
        let recs: Vec<Vec<u8>> = ops.iter().map(|(op, f)| m.push(op.clone(), *f)).collect();
        // The models at every consistency point, by seq.
        let mut mm = Model::new();
        let mut cp_images = std::collections::BTreeMap::new();
        cp_images.insert(0u64, mm.image.clone());
        for (op, f) in &ops {
            mm.push(op.clone(), *f);
            cp_images.insert(mm.at_cp.1, mm.at_cp.0.clone());
        }
        let mut vol = Some(store.open_or_create_volume("p", SIZE, 512).unwrap());
        let mut next = 0usize;
        let mut ci = 0;
        while next < recs.len() {
            let (n, reopen, apply, resend) = cuts[ci % cuts.len()];
            ci += 1;
            let v = vol.as_ref().unwrap();
            let from = next.saturating_sub(resend);
            let to = (next + n).min(recs.len());
            let batch = recs[from..to].concat();
            v.append(RING, &batch).unwrap();
            next = to;
            if apply || to == recs.len() {
                v.sync().unwrap();
                v.apply(true).unwrap();
                let seq = v.checkpoint().seq;
                prop_assert!(cp_images.contains_key(&seq));
            }
            if reopen {
                // Unsynced records may be lost on a real crash; here the
                // page cache keeps them, so the durable seq is at least
                // what was synced.
                drop(vol.take());
                vol = Some(store.open_volume("p").unwrap());
                next = vol.as_ref().unwrap().durable_seq_for(RING) as usize;
            }
        }
        let v = vol.as_ref().unwrap();
        v.sync().unwrap();
        v.apply(true).unwrap();
        let (img, seq) = restored(&store, "p", d.path());
        prop_assert_eq!(seq, mm.at_cp.1);
        prop_assert!(img == cp_images[&seq]);
        prop_assert!(img == mm.at_cp.0);
    }
}
