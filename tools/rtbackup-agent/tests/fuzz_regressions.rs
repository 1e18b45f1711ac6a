//! The fuzz target of this crate (`agent`: tools/fuzz) on its checked-in
//! inputs, so that `cargo test` runs it without cargo-fuzz: the seed
//! corpus (generated here: a server's answers, fair and hostile) and the
//! inputs that once broke something (`tools/fuzz/regressions/agent/`).

use std::path::Path;

use rtbackup_agent::fuzz::server_frames_target;
use rtbackup_proto::fuzz::check_target;
use rtbackup_proto::{encode_frame, ErrorMsg, Frame, Welcome, PROTOCOL_VERSION};

/// 10 records in batches of 2: the shape byte of the inputs.
const SHAPE: u8 = 9 | (1 << 5);

fn welcome(durable_seq: u64, ring_id: u64) -> Frame {
    Frame::Welcome(Welcome {
        protocol: PROTOCOL_VERSION,
        volume: "vol".into(),
        ring_id,
        durable_seq,
        server_version: "fuzz".into(),
    })
}

/// Mode 0, the shape, then `frames` as the server sends them.
fn input(frames: &[Frame]) -> Vec<u8> {
    let mut v = vec![0, SHAPE];
    for f in frames {
        v.extend(encode_frame(f).unwrap());
    }
    v
}

fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let w = |d| welcome(d, 0x5eed);
    vec![
        ("fair", input(&[w(0), Frame::Ack(4), Frame::Ack(10)])),
        ("resume", input(&[w(6), Frame::Ack(8), Frame::Ack(10)])),
        ("ack-back", input(&[w(0), Frame::Ack(5), Frame::Ack(3)])),
        ("ack-unsent", input(&[w(0), Frame::Ack(5), Frame::Ack(11)])),
        ("ack-max", input(&[w(0), Frame::Ack(u64::MAX)])),
        ("welcome-unwritten", input(&[w(99), Frame::Ack(10)])),
        (
            "welcome-other-ring",
            input(&[welcome(0, 7), Frame::Ack(10)]),
        ),
        ("no-welcome", input(&[Frame::Ack(3)])),
        ("welcome-twice", input(&[w(2), w(2), Frame::Ack(4)])),
        (
            "error",
            input(&[w(0), Frame::Error(ErrorMsg::new("internal", "no"))]),
        ),
        ("garbage", vec![1, SHAPE, 0xff, 0, 0, 0, 9, 9, 9]),
    ]
}

#[test]
fn agent_target_on_its_inputs() {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    check_target(&tools, "agent", &seeds(), server_frames_target);
}
