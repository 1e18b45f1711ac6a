//! Entry point of the fuzz target `agent` in `tools/fuzz` (Documentation/
//! testing.rst, "Fuzzing"): the agent's handling of a hostile server's
//! frames, kept here so that `cargo test` feeds it the inputs the fuzzer
//! found. Not an API.
//!
//! An input is a mode byte (as `rtbackup_proto::fuzz`: checksums fixed up,
//! largest read), a byte giving how many records the ring holds (1 to 48)
//! and how many go in a batch (1 to 8), then the server's side of a
//! connection: the frames the agent reads. It sends every record (as the
//! sender does), then reads the frames as the handshake and the receiver
//! do: the first must be a WELCOME for this volume and ring, whose durable
//! seq gives where to resume; then ACKs move the ring's consumer position.
//! It stops at the first error, as the agent ends the connection.
//!
//! It panics only when the agent would lose a record: the ring's tail
//! passes a record the server did not acknowledge, or one whose frame was
//! not written.

use crate::acks::AckTracker;
use crate::session::{resume_point, welcome_of};
use rtbackup_abi::RTB_OP_WRITE;
use rtbackup_proto::fuzz::{fix_frame_checksums, split_mode, Dribble};
use rtbackup_proto::{read_frame, Frame};
use rtbackup_ring::mem::MemRing;
use rtbackup_ring::RingSource;
use std::time::Instant;

const RING_ID: u64 = 0x5eed;
const VOLUME: &str = "vol";

/// Runs one input; see the module's documentation.
pub fn server_frames_target(data: &[u8]) {
    let ((fix, max), rest) = split_mode(data);
    let Some((&shape, frames)) = rest.split_first() else {
        return;
    };
    let count = u64::from(shape % 48) + 1;
    let per = u64::from(shape >> 5) + 1;
    let ring = MemRing::new(64 << 10, RING_ID, 1 << 20, 512).expect("a valid ring");
    for i in 0..count {
        ring.append(RTB_OP_WRITE, 0, i * 8, 512, &[i as u8; 512])
            .expect("room for every record");
    }
    let mut buf = frames.to_vec();
    if fix {
        fix_frame_checksums(&mut buf);
    }
    let mut server = Dribble::new(&buf, max);

    // The handshake: a WELCOME for this volume and ring.
    let Ok(frame) = read_frame(&mut server) else {
        return;
    };
    let Ok(welcome) = welcome_of(frame, "fuzz", VOLUME, RING_ID) else {
        return;
    };
    let view = ring.view();
    let Ok(start) = resume_point(view, welcome.durable_seq) else {
        return;
    };
    // Records the server says it holds leave the ring at once, as in the
    // agent's session.
    // SAFETY: no batch of the ring is in use: nothing is being sent yet.
    unsafe { ring.set_tail_at(start, true) }.expect("the resume point is a record's end");
    assert!(
        view.tail_cursor().seq <= welcome.durable_seq + 1,
        "resumed past what the server holds"
    );
    let mut acks = AckTracker::new(start);
    let now = Instant::now();
    let mut cur = start;
    loop {
        let batch = view.read_batch(cur, per * 576).expect("a readable ring");
        let Some(last) = batch.last_seq() else { break };
        acks.sending(batch.end(), now);
        acks.written(last);
        cur = batch.end();
    }

    // The stream: ACKs until an error.
    while let Ok(frame) = read_frame(&mut server) {
        let Frame::Ack(seq) = frame else { return };
        if acks.server_ack(seq, now).is_err() || acks.apply(&ring).is_err() {
            return;
        }
        let tail = view.tail_cursor();
        assert!(
            tail.seq - 1 <= acks.server_acked().max(welcome.durable_seq),
            "the ring freed seq {} but the server acknowledged only {}",
            tail.seq - 1,
            acks.server_acked()
        );
        assert!(tail.seq <= view.head_seq(), "the tail passed the head");
    }
}
