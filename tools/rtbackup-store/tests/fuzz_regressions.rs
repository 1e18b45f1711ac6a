//! The fuzz target of this crate (`segment`: tools/fuzz) on its checked-in
//! inputs, so that `cargo test` runs it without cargo-fuzz: the seed corpus
//! (generated here from valid segments) and the inputs that once broke
//! something (`tools/fuzz/regressions/segment/`).

use std::path::Path;

use rtbackup_proto::fuzz::check_target;
use rtbackup_proto::{
    build_record, RTB_OP_DISCARD, RTB_OP_FLUSH, RTB_OP_MARK, RTB_OP_RESYNC, RTB_OP_RESYNC_END,
    RTB_OP_WRITE, RTB_REC_PREFLUSH,
};
use rtbackup_store::fuzz::{point_target, segment_target};
use rtbackup_store::SegmentHeader;

/// A segment file: its header, then records of every kind with seqs from
/// `first_seq` (`n` of them, at most 8).
fn segment(id: u64, ring_id: u64, first_seq: u64, n: usize) -> Vec<u8> {
    let mut b = SegmentHeader {
        id,
        ring_id,
        first_seq,
        created_ns: 1_700_000_000_000_000_000,
    }
    .encode()
    .to_vec();
    let t = |s: u64| 1_700_000_000_000_000_000 + s * 1000;
    for s in (first_seq..).take(n) {
        let rec = match (s - first_seq) % 8 {
            0 => build_record(RTB_OP_WRITE, 0, s, 8, 100, t(s), &[0xab; 100]),
            1 => build_record(RTB_OP_FLUSH, 0, s, 0, 0, t(s), &[]),
            2 => build_record(RTB_OP_MARK, 0, s, 0, 0, t(s), b"before-upgrade"),
            3 => build_record(RTB_OP_RESYNC, 0, s, 16, 512, t(s), &[1; 512]),
            4 => build_record(RTB_OP_RESYNC_END, 0, s, 0, 0, t(s), &(s + 1).to_le_bytes()),
            5 => build_record(RTB_OP_DISCARD, 0, s, 0, 4096, t(s), &[]),
            6 => build_record(RTB_OP_WRITE, RTB_REC_PREFLUSH, s, 0, 512, t(s), &[2; 512]),
            _ => build_record(RTB_OP_FLUSH, 0, s, 0, 0, t(s), &[]),
        };
        b.extend_from_slice(&rec);
    }
    b
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let one = segment(1, 7, 1, 8);
    let mut seeds = vec![
        ("one-segment", one.clone()),
        ("torn-tail", one[..one.len() - 100].to_vec()),
        ("header-only", segment(1, 7, 1, 0)),
        (
            "same-ring",
            [
                segment(1, 7, 1, 3),
                segment(2, 7, 4, 5),
                segment(3, 7, 9, 0),
            ]
            .concat(),
        ),
        (
            "ring-change",
            [segment(1, 7, 1, 4), segment(2, 8, 1, 8)].concat(),
        ),
    ];
    for (_, b) in &mut seeds {
        b.insert(0, 0);
    }
    // Mode 1: the target fixes the checksums (here already right).
    seeds.push(("one-segment-fixup", [&[1u8][..], &one].concat()));
    seeds
}

#[test]
fn segment_inputs() {
    let tools = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    check_target(tools, "segment", &seeds(), segment_target);
}

/// Points and export names as users and NBD clients type them.
fn point_seeds() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("latest", "latest"),
        ("seq", "seq:1234"),
        ("bare-seq", "1234"),
        ("mark", "mark:before-upgrade"),
        ("id", "id:3.1048640"),
        ("time", "2026-11-26T05:00:00Z"),
        ("offset-time", "2026-11-26T06:00:00.5+01:00"),
        ("spaced-time", "2026-11-26 05:00:00"),
        ("ago", "10 minutes ago"),
        ("export", "db1@mark:before-upgrade"),
        ("export-id", "db1@id:2.64"),
        ("export-bare", "db1"),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.as_bytes().to_vec()))
    .collect()
}

#[test]
fn point_inputs() {
    let tools = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    check_target(tools, "point", &point_seeds(), point_target);
}
