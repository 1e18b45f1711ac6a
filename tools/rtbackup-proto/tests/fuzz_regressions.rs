//! The fuzz targets of this crate (`frame`, `records`: tools/fuzz) on their
//! checked-in inputs, so that `cargo test` runs them without cargo-fuzz:
//! the seed corpora (generated here from valid encodings) and the inputs
//! that once broke something (`tools/fuzz/regressions/TARGET/`).

use std::path::Path;

use rtbackup_proto::fuzz::{check_target, frame_target, records_target};
use rtbackup_proto::*;

/// A padding record of `size` bytes.
fn pad(size: u32) -> Vec<u8> {
    let h = RtbRecordHeader {
        magic: RTB_RECORD_MAGIC,
        op: RTB_OP_PAD,
        size,
        ..RtbRecordHeader::ZERO
    };
    let mut b = h.to_bytes().to_vec();
    let crc = header_crc(&h.to_bytes());
    let at = RtbRecordHeader::HEADER_CRC_OFFSET;
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    b.resize(size as usize, 0xee);
    b
}

/// One valid record of every op, with consecutive seqs.
fn sample_records() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "write",
            build_record(RTB_OP_WRITE, RTB_REC_FUA, 1, 8, 100, 1, &[0xab; 100]),
        ),
        (
            "write-preflush",
            build_record(RTB_OP_WRITE, RTB_REC_PREFLUSH, 2, 0, 512, 2, &[1; 512]),
        ),
        (
            "discard",
            build_record(RTB_OP_DISCARD, 0, 3, 16, 4096, 3, &[]),
        ),
        (
            "write-zeroes",
            build_record(RTB_OP_WRITE_ZEROES, 0, 4, 24, 8192, 4, &[]),
        ),
        ("flush", build_record(RTB_OP_FLUSH, 0, 5, 0, 0, 5, &[])),
        (
            "mark",
            build_record(RTB_OP_MARK, 0, 6, 0, 0, 6, b"before-upgrade"),
        ),
        (
            "resync",
            build_record(RTB_OP_RESYNC, 0, 7, 32, 1024, 7, &[2; 1024]),
        ),
        (
            "resync-end",
            build_record(RTB_OP_RESYNC_END, 0, 8, 0, 0, 8, &7u64.to_le_bytes()),
        ),
        ("pad", pad(192)),
    ]
}

fn record_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = sample_records();
    let all: Vec<u8> = seeds.iter().flat_map(|(_, b)| b.clone()).collect();
    seeds.push(("all", all.clone()));
    for (_, b) in &mut seeds {
        b.insert(0, 0);
    }
    // Mode 1: the target fixes the checksums (here already right).
    seeds.push(("all-fixup", [&[1u8][..], &all].concat()));
    seeds
}

fn sample_frames() -> Vec<(&'static str, Frame)> {
    let records: Vec<u8> = sample_records()
        .into_iter()
        .filter(|(n, _)| *n != "pad")
        .flat_map(|(_, b)| b)
        .collect();
    vec![
        (
            "hello",
            Frame::Hello(Hello {
                protocol: PROTOCOL_VERSION,
                volume: "db1".into(),
                size_bytes: 1 << 30,
                block_size: 512,
                ring_id: 1234567890123,
                client: "host-a".into(),
                agent_version: "0.1.0".into(),
            }),
        ),
        (
            "welcome",
            Frame::Welcome(Welcome {
                protocol: PROTOCOL_VERSION,
                volume: "db1".into(),
                ring_id: 7,
                durable_seq: 41,
                server_version: "0.1.0".into(),
            }),
        ),
        ("records", Frame::Records(records)),
        ("ack", Frame::Ack(41)),
        (
            "error",
            Frame::Error(ErrorMsg::new(error_code::SEQ_GAP, "expected 5, got 7")),
        ),
        (
            "rollback",
            Frame::Rollback(RollbackRequest {
                protocol: PROTOCOL_VERSION,
                volume: "db1".into(),
                size_bytes: 1 << 30,
                point: "mark:before-upgrade".into(),
                dry_run: false,
                client: "host-a".into(),
            }),
        ),
        (
            "plan",
            Frame::Plan(RollbackPlan {
                time: "2026-11-26T05:00:00Z".into(),
                ring_id: 7,
                seq: 40,
                marks: vec!["before-upgrade".into()],
                extents: 1,
                bytes: 64,
            }),
        ),
        (
            "extent",
            Frame::Extent {
                offset: 4096,
                data: vec![7; 64],
            },
        ),
        (
            "done",
            Frame::Done(RollbackDone {
                frames: 1,
                bytes: 64,
            }),
        ),
        (
            "verify",
            Frame::Verify(VerifyRequest::new("db1", "host-a", 64 << 10, 1 << 30)),
        ),
        (
            "verify-point",
            Frame::VerifyPoint(VerifyPoint {
                seq: 40,
                ring_id: 7,
                time: "2026-11-26T05:00:00Z".into(),
                chunk_size: 64 << 10,
                chunks: 16384,
                consistent: false,
            }),
        ),
        (
            "checksums",
            Frame::Checksums {
                first_chunk: 16,
                sums: vec![[3; 16], chunk_checksum(b"x")],
            },
        ),
    ]
}

fn frame_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds: Vec<_> = sample_frames()
        .into_iter()
        .map(|(n, f)| (n, [&[0u8][..], &encode_frame(&f).unwrap()].concat()))
        .collect();
    let stream: Vec<u8> = sample_frames()
        .iter()
        .flat_map(|(_, f)| encode_frame(f).unwrap())
        .collect();
    seeds.push(("stream", [&[0u8][..], &stream].concat()));
    // Mode: checksums fixed up, reads of at most 5 bytes.
    seeds.push((
        "stream-fixup-dribble",
        [&[1u8 | 5 << 1][..], &stream].concat(),
    ));
    seeds
}

#[test]
fn seeds_are_valid() {
    for (name, b) in record_seeds() {
        let n = records(&b[1..]).count();
        assert!(records(&b[1..]).all(|r| r.is_ok()) && n > 0, "{name}");
    }
    for (name, b) in frame_seeds() {
        let mut r = &b[1..];
        while !r.is_empty() {
            read_frame(&mut r).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

fn tools() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn frame_inputs() {
    check_target(tools(), "frame", &frame_seeds(), frame_target);
}

#[test]
fn records_inputs() {
    check_target(tools(), "records", &record_seeds(), records_target);
}
