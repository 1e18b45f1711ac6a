//! Checks that a ring refuses acknowledgements that claim more than they
//! move past (issue 16, item 9): with the agent stopped and records
//! waiting in the ring of DEVICE, an acknowledgement that moves the tail
//! past the first record but names the seq of a later one, or any seq not
//! yet written, is `EINVAL` and changes nothing; one that moves nothing
//! and names the seq before the tail is accepted. Nothing is acknowledged
//! that the server does not hold.
//!
//! Usage: rtb-ack-check DEVICE. Exit status 0 when every check held, 1
//! otherwise, 2 on a usage error.

use rtbackup_control::{ring_ack, RingAck};
use rtbackup_ring::{Ring, RingSource};
use std::os::fd::AsFd;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [device] = args.as_slice() else {
        eprintln!("usage: rtb-ack-check DEVICE");
        return ExitCode::from(2);
    };
    match check(device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtb-ack-check: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(device: &str) -> Result<(), String> {
    let ring = Ring::open(device).map_err(|e| format!("opening the ring of {device}: {e}"))?;
    let view = ring.view();
    let tail = view.tail_cursor();
    let batch = view
        .read_batch(tail, 1 << 20)
        .map_err(|e| format!("reading the ring: {e}"))?;
    let seqs: Vec<u64> = batch
        .iter()
        .map(|r| r.map(|r| r.header.seq))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("a record in the ring: {e}"))?;
    if seqs.len() < 3 {
        return Err(format!(
            "{} records wait in the ring; the check needs 3",
            seqs.len()
        ));
    }
    let first_end = view
        .end_of(tail, seqs[0])
        .map_err(|e| format!("finding the end of seq {}: {e}", seqs[0]))?;
    let fd = ring.fd().as_fd();
    let (before_tail, before_seq) = (view.tail(), view.tail_seq());
    let mut failed = Vec::new();
    for (what, acked_seq) in [
        ("the seq of the second record", seqs[1]),
        ("the seq of the third record", seqs[2]),
        ("a seq not written yet", view.head_seq() + 10),
    ] {
        let ack = RingAck {
            tail: first_end.pos,
            acked_seq,
            connected: false,
            spooled: false,
        };
        match ring_ack(fd, &ack) {
            Err(e) if e.errno() == Some(nix::errno::Errno::EINVAL) => {
                println!(
                    "refused (EINVAL): past seq {} with {what} ({acked_seq})",
                    seqs[0]
                );
            }
            r => failed.push(format!(
                "an acknowledgement past seq {} naming {what} ({acked_seq}): {r:?}, want EINVAL",
                seqs[0]
            )),
        }
        if (view.tail(), view.tail_seq()) != (before_tail, before_seq) {
            failed.push(format!("a refused acknowledgement moved the tail ({what})"));
        }
    }
    let report = RingAck {
        tail: before_tail,
        acked_seq: before_seq.saturating_sub(1),
        connected: false,
        spooled: false,
    };
    if let Err(e) = ring_ack(fd, &report) {
        failed.push(format!("an acknowledgement that moves nothing: {e}"));
    } else {
        println!("accepted: an acknowledgement that moves nothing");
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}
