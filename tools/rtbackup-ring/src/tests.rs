//! Tests of the ring reader against rings built by the in-memory producer.

use crate::mem::{MemRing, PollMode};
use crate::view::{OFF_DATA_SIZE, OFF_HEAD, OFF_MAGIC, OFF_TAIL};
use crate::{AlignedBytes, Cursor, RingError, RingSource, RingView, Wakeup};
use proptest::prelude::*;
use rtbackup_abi::{
    record_size, RTB_OP_DISCARD, RTB_OP_FLUSH, RTB_OP_MARK, RTB_OP_WRITE, RTB_RING_PAGE,
};
use std::time::Duration;

const PAGE: usize = RTB_RING_PAGE as usize;
const SMALL: u64 = 4096;

fn ring(size: u64) -> MemRing {
    MemRing::new(size, 0xfeed, 1 << 20, 512).unwrap()
}

/// A payload that identifies its record.
fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

fn write(r: &MemRing, len: usize) -> u64 {
    let seq = r.next_seq();
    r.append(RTB_OP_WRITE, 0, seq * 8, len as u64, &payload(seq, len))
        .unwrap()
}

/// Seqs and payloads of a batch, each record fully validated.
fn contents(r: &RingView<impl crate::SharedMemory>, from: Cursor, max: u64) -> Vec<(u64, Vec<u8>)> {
    let b = r.read_batch(from, max).unwrap();
    b.iter()
        .map(|rec| {
            let rec = rec.unwrap();
            (rec.seq(), rec.payload.to_vec())
        })
        .collect()
}

/// Acknowledges up to `seq`; the tests hold no batch across it.
fn ack(r: &MemRing, seq: u64, connected: bool) -> crate::Result<Cursor> {
    // SAFETY: callers hold no batch of the ring.
    unsafe { r.ack(seq, connected) }
}

/// Moves the tail; the tests hold no batch across it.
fn set_tail(r: &MemRing, pos: u64, connected: bool) -> crate::Result<()> {
    // SAFETY: callers hold no batch of the ring.
    unsafe { r.set_tail(pos, connected) }
}

fn set_u64(img: &mut AlignedBytes, off: usize, v: u64) {
    img.as_mut_bytes()[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn empty_ring_reads_nothing() {
    let r = ring(SMALL);
    let v = r.view();
    assert_eq!(
        (v.head(), v.tail(), v.head_seq(), v.tail_seq()),
        (0, 0, 1, 1)
    );
    assert_eq!(v.ring_id(), 0xfeed);
    assert_eq!(v.capacity_sectors(), 1 << 20);
    assert_eq!(v.logical_block_size(), 512);
    let b = v.read_batch(v.tail_cursor(), 1 << 20).unwrap();
    assert!(b.is_empty());
    assert!(b.parts().is_empty());
    assert_eq!(b.end(), Cursor { pos: 0, seq: 1 });
    assert_eq!(b.first_seq(), None);
}

#[test]
fn records_are_read_in_order_zero_copy() {
    let r = ring(SMALL);
    for len in [0, 1, 100, 512] {
        write(&r, len);
    }
    r.append(RTB_OP_FLUSH, 0, 0, 0, &[]).unwrap();
    let v = r.view();
    let b = v.read_batch(v.tail_cursor(), 1 << 20).unwrap();
    assert_eq!(b.records(), 5);
    assert_eq!((b.first_seq(), b.last_seq()), (Some(1), Some(5)));
    assert_eq!(b.parts().len(), 1);
    let total: u64 = [0, 1, 100, 512, 0].iter().map(|&l| record_size(l)).sum();
    assert_eq!(b.bytes(), total);
    assert_eq!(b.end(), Cursor { pos: total, seq: 6 });
    // The slice is the ring's memory itself, not a copy.
    let data = crate::SharedMemory::as_ptr(v.memory()) as usize + PAGE;
    assert_eq!(b.parts()[0].as_ptr() as usize, data);
    let got = contents(v, v.tail_cursor(), 1 << 20);
    assert_eq!(got[2], (3, payload(3, 100)));
    assert_eq!(got[4].0, 5);
}

#[test]
fn batches_respect_max_bytes_but_hold_at_least_one_record() {
    let r = ring(SMALL);
    for _ in 0..6 {
        write(&r, 100); // 192 bytes each
    }
    let v = r.view();
    let b = v.read_batch(v.tail_cursor(), 400).unwrap();
    assert_eq!(
        (b.first_seq(), b.last_seq(), b.bytes()),
        (Some(1), Some(2), 384)
    );
    let b = v.read_batch(b.end(), 10).unwrap();
    assert_eq!((b.first_seq(), b.last_seq()), (Some(3), Some(3)));
    let b = v.read_batch(b.end(), 1 << 20).unwrap();
    assert_eq!((b.first_seq(), b.last_seq()), (Some(4), Some(6)));
    let b = v.read_batch(b.end(), 1 << 20).unwrap();
    assert!(b.is_empty());
    assert_eq!(
        b.end(),
        Cursor {
            pos: 6 * 192,
            seq: 7
        }
    );
}

#[test]
fn a_record_that_does_not_fit_is_preceded_by_padding() {
    let r = ring(SMALL);
    // 15 records of 256 bytes: 3840 bytes, 256 left before the end.
    for _ in 0..15 {
        write(&r, 192);
    }
    let v = r.view();
    // Acknowledge the first 4 to make room (1024 bytes).
    let c = ack(&r, 4, true).unwrap();
    assert_eq!(c, Cursor { pos: 1024, seq: 5 });
    // A 320-byte record does not fit in the 256 bytes left: padding.
    let seq = write(&r, 256);
    assert_eq!(seq, 16);
    assert_eq!(v.head(), SMALL + 320);
    let pad = v.record_at(3840).unwrap().unwrap();
    assert!(pad.is_pad());
    assert_eq!((pad.size, pad.seq), (256, 0));
    let b = v
        .read_batch(Cursor { pos: 3584, seq: 15 }, 1 << 20)
        .unwrap();
    assert_eq!(b.records(), 2);
    assert_eq!(b.parts().len(), 2);
    assert_eq!(b.parts()[0].len(), 256);
    assert_eq!(b.parts()[1].len(), 320);
    let data = crate::SharedMemory::as_ptr(v.memory()) as usize + PAGE;
    assert_eq!(b.parts()[1].as_ptr() as usize, data);
    let got = contents(v, Cursor { pos: 3584, seq: 15 }, 1 << 20);
    assert_eq!(got, vec![(15, payload(15, 192)), (16, payload(16, 256))]);
    // The end of record 16 is the position to acknowledge it with.
    let end = v.end_of(v.tail_cursor(), 16).unwrap();
    assert_eq!(
        end,
        Cursor {
            pos: SMALL + 320,
            seq: 17
        }
    );
    // Acknowledging 15 leaves the tail at the padding, which the next read
    // skips.
    let c = ack(&r, 15, true).unwrap();
    assert_eq!(c, Cursor { pos: 3840, seq: 16 });
    let b = v.read_batch(c, 1 << 20).unwrap();
    assert_eq!((b.first_seq(), b.last_seq()), (Some(16), Some(16)));
    assert_eq!(b.start().pos, SMALL);
}

#[test]
fn a_record_ending_exactly_at_the_end_needs_no_padding() {
    let r = ring(SMALL);
    for _ in 0..16 {
        write(&r, 192); // 16 * 256 = 4096
    }
    ack(&r, 2, true).unwrap();
    write(&r, 192);
    let v = r.view();
    assert_eq!(v.head(), SMALL + 256);
    let b = v
        .read_batch(Cursor { pos: 3840, seq: 16 }, 1 << 20)
        .unwrap();
    assert_eq!(b.parts().len(), 2);
    assert_eq!((b.parts()[0].len(), b.parts()[1].len()), (256, 256));
    assert_eq!((b.first_seq(), b.last_seq()), (Some(16), Some(17)));
}

#[test]
fn a_padding_record_at_the_end_of_what_is_published_is_passed() {
    let r = ring(SMALL);
    for _ in 0..15 {
        write(&r, 192);
    }
    ack(&r, 15, true).unwrap();
    write(&r, 256);
    let v = r.view();
    // Reading from after record 15 up to a head beyond the padding.
    let b = v.read_batch(v.tail_cursor(), 1 << 20).unwrap();
    assert_eq!(b.parts().len(), 1);
    assert_eq!(
        b.start(),
        Cursor {
            pos: SMALL,
            seq: 16
        }
    );
}

#[test]
fn marks_are_read_between_writes_and_after_padding() {
    let r = ring(SMALL);
    // 14 writes of 256 bytes, a mark of 128, a write: 128 bytes left.
    for _ in 0..14 {
        write(&r, 192);
    }
    let m1 = r.append(RTB_OP_MARK, 0, 0, 0, b"before-upgrade").unwrap();
    write(&r, 192);
    ack(&r, 4, true).unwrap();
    // A 320-byte write needs padding, then a mark follows it.
    let w = write(&r, 256);
    let m2 = r.append(RTB_OP_MARK, 0, 0, 0, &[b'z'; 64]).unwrap();
    assert_eq!((m1, w, m2), (15, 17, 18));
    let v = r.view();
    assert_eq!(v.record_at(14 * 256).unwrap().unwrap().size, 128);
    let b = v.read_batch(v.tail_cursor(), 1 << 20).unwrap();
    assert_eq!((b.first_seq(), b.last_seq()), (Some(5), Some(18)));
    let recs: Vec<_> = b.iter().collect::<Result<_, _>>().unwrap();
    let marks: Vec<_> = recs
        .iter()
        .filter_map(|rec| Some((rec.seq(), rec.mark_name()?.to_owned())))
        .collect();
    assert_eq!(
        marks,
        vec![(15, "before-upgrade".to_owned()), (18, "z".repeat(64))]
    );
    // A mark is acknowledged like any record.
    let c = ack(&r, 18, true).unwrap();
    assert_eq!(c.seq, 19);
}

#[test]
fn a_mark_with_a_bad_name_is_a_bad_record() {
    let r = ring(SMALL);
    write(&r, 10);
    // The header is valid (the name is only looked at with the payload).
    r.append(RTB_OP_MARK, 0, 0, 0, b"no@at").unwrap();
    let v = r.view();
    let b = v.read_batch(v.tail_cursor(), 1 << 20).unwrap();
    let mut it = b.iter();
    assert!(it.next().unwrap().is_ok());
    let e = it.next().unwrap().unwrap_err();
    assert!(e.to_string().contains("MARK name \"no@at\""), "{e}");
    // A mark with a range is refused on its header.
    let r = ring(SMALL);
    r.append(RTB_OP_MARK, 0, 8, 0, b"m").unwrap();
    let v = r.view();
    assert!(matches!(
        v.read_batch(v.tail_cursor(), 1 << 20),
        Err(RingError::BadRecord { pos: 0, .. })
    ));
}

#[test]
fn staged_records_are_invisible_until_published() {
    let r = ring(SMALL);
    write(&r, 10);
    r.stage_record(RTB_OP_WRITE, 0, 0, 10, &payload(2, 10))
        .unwrap();
    r.stage_record(RTB_OP_DISCARD, 0, 0, 4096, &[]).unwrap();
    let v = r.view();
    assert_eq!(v.head_seq(), 2);
    let b = v.read_batch(v.tail_cursor(), 1 << 20).unwrap();
    assert_eq!((b.first_seq(), b.last_seq()), (Some(1), Some(1)));
    assert!(matches!(
        v.end_of(v.tail_cursor(), 2),
        Err(RingError::SeqNotInRing {
            seq: 2,
            first: 1,
            last: 1
        })
    ));
    r.publish();
    let b = v.read_batch(b.end(), 1 << 20).unwrap();
    assert_eq!((b.first_seq(), b.last_seq()), (Some(2), Some(3)));
}

#[test]
fn acknowledging_moves_the_tail_to_record_ends_only() {
    let r = ring(SMALL);
    for _ in 0..3 {
        write(&r, 100);
    }
    let v = r.view();
    assert!(matches!(
        set_tail(&r, 100, true),
        Err(RingError::NotRecordBoundary { pos: 100 })
    ));
    assert!(matches!(
        set_tail(&r, 4 * 192, true),
        Err(RingError::Position { .. })
    ));
    assert!(matches!(
        ack(&r, 4, true),
        Err(RingError::SeqNotInRing {
            seq: 4,
            first: 1,
            last: 3
        })
    ));
    assert_eq!(ack(&r, 2, true).unwrap(), Cursor { pos: 384, seq: 3 });
    assert_eq!((v.tail(), v.tail_seq()), (384, 3));
    // Acknowledging an acknowledged seq only reports the state.
    assert_eq!(ack(&r, 1, false).unwrap(), Cursor { pos: 384, seq: 3 });
    r.report_connected(true).unwrap();
    let acks = r.acks();
    assert_eq!(acks.len(), 3);
    assert_eq!((acks[1].position, acks[1].connected), (384, false));
    assert!(acks[2].connected);
    // Reading from before the tail is refused.
    assert!(matches!(
        v.read_batch(Cursor { pos: 0, seq: 1 }, 1 << 20),
        Err(RingError::Position {
            pos: 0,
            tail: 384,
            head: 576
        })
    ));
    assert!(matches!(
        v.end_of(Cursor { pos: 384, seq: 3 }, 1),
        Err(RingError::SeqNotInRing { .. })
    ));
}

#[test]
fn end_of_walks_over_padding() {
    let r = ring(SMALL);
    for _ in 0..15 {
        write(&r, 192);
    }
    ack(&r, 14, true).unwrap();
    write(&r, 256);
    write(&r, 0);
    let v = r.view();
    let from = v.tail_cursor();
    assert_eq!(from, Cursor { pos: 3584, seq: 15 });
    assert_eq!(v.end_of(from, 14).unwrap(), from);
    assert_eq!(v.end_of(from, 15).unwrap(), Cursor { pos: 3840, seq: 16 });
    assert_eq!(
        v.end_of(from, 16).unwrap(),
        Cursor {
            pos: SMALL + 320,
            seq: 17
        }
    );
    assert_eq!(
        v.end_of(from, 17).unwrap(),
        Cursor {
            pos: SMALL + 384,
            seq: 18
        }
    );
    assert_eq!(
        v.cursor_at(from, SMALL).unwrap(),
        Cursor {
            pos: SMALL,
            seq: 16
        }
    );
}

/// A view of a copy of `r`'s memory, changed by `f`.
fn corrupted(r: &MemRing, f: impl FnOnce(&mut [u8])) -> RingView<AlignedBytes> {
    let mut img = r.snapshot();
    f(img.as_mut_bytes());
    RingView::new(img).unwrap()
}

fn three_records() -> MemRing {
    let r = ring(SMALL);
    for _ in 0..3 {
        write(&r, 100);
    }
    r
}

#[test]
fn corrupt_record_headers_are_errors() {
    let r = three_records();
    let start = Cursor { pos: 0, seq: 1 };
    // Every byte of the second record's header.
    for i in 0..64 {
        let v = corrupted(&r, |m| m[PAGE + 192 + i] ^= 0x40);
        let e = v.read_batch(start, 1 << 20).unwrap_err();
        assert!(
            matches!(
                e,
                RingError::BadRecord { pos: 192, .. } | RingError::Corrupt { pos: 192, .. }
            ),
            "byte {i}: {e}"
        );
        assert!(
            e.to_string().contains("corrupt ring at position 192"),
            "{e}"
        );
        assert!(v.end_of(start, 3).is_err());
        // What precedes the corruption is still readable.
        assert_eq!(v.end_of(start, 1).unwrap(), Cursor { pos: 192, seq: 2 });
    }
}

#[test]
fn seqs_jumping_ahead_are_gaps_and_going_back_are_errors() {
    // A jump ahead: seqs 2..=6 were reserved for resync chunks (ABI v4).
    let r = ring(SMALL);
    write(&r, 10);
    let rec = rtbackup_proto::build_record(RTB_OP_WRITE, 0, 7, 0, 10, 0, &[1; 10]);
    r.stage(&rec).unwrap();
    r.publish();
    let v = r.view();
    let b = v.read_batch(v.tail_cursor(), 1 << 20).unwrap();
    assert_eq!((b.records(), b.last_seq(), b.gap()), (1, Some(1), None));
    let after = b.end();
    let b = v.read_batch(after, 1 << 20).unwrap();
    assert!(b.is_empty());
    assert_eq!(b.gap(), Some(7));
    // A reserved seq ends where the jump is; the record after it as usual.
    assert_eq!(
        v.end_of(v.tail_cursor(), 4).unwrap(),
        Cursor {
            pos: after.pos,
            seq: 5
        }
    );
    let end7 = v.end_of(v.tail_cursor(), 7).unwrap();
    assert_eq!(end7.seq, 8);
    assert_eq!(
        v.end_of(
            Cursor {
                pos: after.pos,
                seq: 5
            },
            7
        )
        .unwrap(),
        end7
    );
    // Reading from the jump's seq goes on.
    let b = v
        .read_batch(
            Cursor {
                pos: after.pos,
                seq: 7,
            },
            1 << 20,
        )
        .unwrap();
    assert_eq!(b.first_seq(), Some(7));

    // Going back is corruption.
    let r = ring(SMALL);
    write(&r, 10);
    write(&r, 10);
    let rec = rtbackup_proto::build_record(RTB_OP_WRITE, 0, 2, 0, 10, 0, &[1; 10]);
    r.stage(&rec).unwrap();
    r.publish();
    let v = r.view();
    let e = v.read_batch(v.tail_cursor(), 1 << 20).unwrap_err();
    assert!(e.to_string().contains("seq 2, expected 3"), "{e}");
    let e = v.end_of(v.tail_cursor(), 3).unwrap_err();
    assert!(e.to_string().contains("seq 2, expected 3"), "{e}");
    // Reading with a starting seq past the record's is also caught.
    let e = v
        .read_batch(Cursor { pos: 0, seq: 5 }, 1 << 20)
        .unwrap_err();
    assert!(e.to_string().contains("seq 1, expected 5"), "{e}");
}

#[test]
fn records_crossing_limits_are_errors() {
    let r = three_records();
    let start = Cursor { pos: 0, seq: 1 };
    // `head` in the middle of the last record: it was not published whole.
    let v = corrupted(&r, |m| {
        m[OFF_HEAD..OFF_HEAD + 8].copy_from_slice(&500u64.to_le_bytes())
    });
    let e = v.read_batch(start, 1 << 20).unwrap_err();
    assert!(
        e.to_string()
            .contains("extends past the producer position 500"),
        "{e}"
    );
    // `head` too close to a record start for a header.
    let v = corrupted(&r, |m| {
        m[OFF_HEAD..OFF_HEAD + 8].copy_from_slice(&416u64.to_le_bytes())
    });
    let e = v.read_batch(start, 1 << 20).unwrap_err();
    assert!(
        matches!(e, RingError::Corrupt { .. } | RingError::Position { .. }),
        "{e}"
    );
    // `head` more than the data size ahead of `tail`.
    let mut img = r.snapshot();
    set_u64(&mut img, OFF_HEAD, SMALL + 64);
    let v = RingView::new(img).unwrap();
    let e = v.read_batch(start, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("more than the data size"), "{e}");
}

#[test]
fn bad_padding_is_an_error() {
    let r = ring(SMALL);
    for _ in 0..15 {
        write(&r, 192);
    }
    ack(&r, 15, true).unwrap();
    write(&r, 256);
    let from = Cursor { pos: 3840, seq: 16 };
    // A padding record of the wrong size (header checksum fixed up).
    let v = corrupted(&r, |m| {
        let h = &mut m[PAGE + 3840..PAGE + 3840 + 64];
        h[8..12].copy_from_slice(&128u32.to_le_bytes());
        let crc = rtbackup_proto::header_crc(h[..64].try_into().unwrap());
        h[52..56].copy_from_slice(&crc.to_le_bytes());
    });
    let e = v.read_batch(from, 1 << 20).unwrap_err();
    assert!(
        e.to_string()
            .contains("does not end at the end of the data area"),
        "{e}"
    );
    // A record where padding should be: it would cross the end.
    let v = corrupted(&r, |m| {
        let rec = rtbackup_proto::build_record(RTB_OP_WRITE, 0, 16, 0, 256, 0, &[3; 256]);
        m[PAGE + 3840..PAGE + 3840 + 64].copy_from_slice(&rec[..64]);
    });
    let e = v.read_batch(from, 1 << 20).unwrap_err();
    assert!(
        e.to_string().contains("crosses the end of the data area"),
        "{e}"
    );
}

#[test]
fn bad_control_pages_are_refused() {
    let r = three_records();
    let mut img = r.snapshot();
    img.as_mut_bytes()[OFF_MAGIC] = b'X';
    let e = RingView::new(img).unwrap_err();
    assert!(e.to_string().contains("magic"), "{e}");
    let mut img = r.snapshot();
    set_u64(&mut img, OFF_DATA_SIZE, 5000);
    let e = RingView::new(img).unwrap_err();
    assert!(e.to_string().contains("power of two"), "{e}");
    let mut img = r.snapshot();
    set_u64(&mut img, OFF_DATA_SIZE, 8192);
    let e = RingView::new(img).unwrap_err();
    assert!(
        e.to_string().contains("8192 available") || e.to_string().contains("needs"),
        "{e}"
    );
    let img = AlignedBytes::from_bytes(&r.snapshot().as_bytes()[..100]);
    assert!(RingView::new(img).is_err());
    let mut img = r.snapshot();
    img.as_mut_bytes()[4] = 1;
    let e = RingView::new(img).unwrap_err();
    assert!(e.to_string().contains("ABI version 1"), "{e}");
}

#[test]
fn misaligned_positions_are_errors() {
    let r = three_records();
    let mut img = r.snapshot();
    set_u64(&mut img, OFF_TAIL, 8);
    let v = RingView::new(img).unwrap();
    let e = v.read_batch(v.tail_cursor(), 1 << 20).unwrap_err();
    assert!(e.to_string().contains("aligned"), "{e}");
}

#[test]
fn the_ring_fills_up_and_acks_make_room() {
    let r = ring(SMALL);
    let mut n = 0;
    while r.append(RTB_OP_WRITE, 0, 0, 448, &[1; 448]).is_ok() {
        n += 1;
    }
    assert_eq!(n, 8);
    assert!(matches!(
        r.append(RTB_OP_WRITE, 0, 0, 448, &[1; 448]),
        Err(RingError::Full { need: 512, free: 0 })
    ));
    ack(&r, 1, true).unwrap();
    r.append(RTB_OP_WRITE, 0, 0, 448, &[1; 448]).unwrap();
    let e = r
        .append_wait(
            RTB_OP_WRITE,
            0,
            0,
            448,
            &[1; 448],
            Duration::from_millis(10),
        )
        .unwrap_err();
    assert!(matches!(e, RingError::Full { .. }));
}

#[test]
fn wait_reports_publications() {
    let r = ring(SMALL).with_poll_mode(PollMode::Edge);
    assert_eq!(r.wait(Duration::from_millis(1)).unwrap(), Wakeup::Timeout);
    write(&r, 1);
    assert_eq!(r.wait(Duration::ZERO).unwrap(), Wakeup::Ready);
    // Edge-triggered: once per publication.
    assert_eq!(r.wait(Duration::from_millis(1)).unwrap(), Wakeup::Timeout);
    // Level-triggered, as the kernel (and the default).
    let r = ring(SMALL);
    assert_eq!(r.wait(Duration::from_millis(1)).unwrap(), Wakeup::Timeout);
    write(&r, 1);
    assert_eq!(r.wait(Duration::ZERO).unwrap(), Wakeup::Ready);
    assert_eq!(r.wait(Duration::ZERO).unwrap(), Wakeup::Ready);
    ack(&r, 1, true).unwrap();
    assert_eq!(r.wait(Duration::from_millis(1)).unwrap(), Wakeup::Timeout);
    assert!(!r.view().is_detached());
    r.detach();
    assert_eq!(r.wait(Duration::ZERO).unwrap(), Wakeup::Detached);
}

#[test]
fn a_detached_ring_keeps_its_records_readable_and_acknowledgeable() {
    let r = ring(SMALL);
    write(&r, 100);
    write(&r, 200);
    // Staged but not yet published: a detach publishes it (the kernel
    // adds no record after a detach, but those it has are complete).
    let seq = r.next_seq();
    r.stage_record(RTB_OP_WRITE, 0, seq * 8, 10, &payload(seq, 10))
        .unwrap();
    assert_eq!(r.view().head_seq(), 3);
    assert_eq!(r.view().flags(), 0);
    r.detach();
    let v = r.view();
    assert!(v.is_detached());
    assert_eq!(v.flags(), rtbackup_abi::RTB_RING_F_DETACHED);
    assert_eq!(v.head_seq(), 4);
    // Readable, level-triggered, with the hangup.
    assert_eq!(r.wait(Duration::ZERO).unwrap(), Wakeup::Detached);
    assert_eq!(
        contents(v, v.tail_cursor(), 1 << 20)
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // No record is added any more.
    assert!(matches!(
        r.append(RTB_OP_WRITE, 0, 0, 1, &[1]),
        Err(RingError::Detached)
    ));
    assert!(matches!(
        r.append_wait(RTB_OP_FLUSH, 0, 0, 0, &[], Duration::from_millis(1)),
        Err(RingError::Detached)
    ));
    assert_eq!(v.head_seq(), 4);
    // Acknowledgements still work.
    ack(&r, 3, false).unwrap();
    assert_eq!(v.tail(), v.head());
    assert_eq!(r.wait(Duration::ZERO).unwrap(), Wakeup::Detached);
}

#[test]
fn a_writer_waiting_for_room_fails_on_detach() {
    let r = ring(SMALL);
    while r.append(RTB_OP_WRITE, 0, 0, 1000, &[7; 1000]).is_ok() {}
    std::thread::scope(|s| {
        let w = s.spawn(|| {
            r.append_wait(
                RTB_OP_WRITE,
                0,
                0,
                1000,
                &[7; 1000],
                Duration::from_secs(30),
            )
        });
        std::thread::sleep(Duration::from_millis(20));
        r.detach();
        assert!(matches!(w.join().unwrap(), Err(RingError::Detached)));
    });
}

#[test]
fn a_producer_and_a_consumer_in_parallel() {
    let r = ring(16 * 1024);
    const N: u64 = 3000;
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..N {
                let len = (i * 97 % 1500) as usize;
                let seq = r.next_seq();
                r.append_wait(
                    RTB_OP_WRITE,
                    0,
                    i,
                    len as u64,
                    &payload(seq, len),
                    Duration::from_secs(10),
                )
                .unwrap();
            }
        });
        let v = r.view();
        let mut cur = v.tail_cursor();
        let mut i = 0;
        while i < N {
            let b = v.read_batch(cur, 2048).unwrap();
            for rec in b.iter() {
                let rec = rec.unwrap();
                let len = (i * 97 % 1500) as usize;
                assert_eq!(rec.seq(), i + 1);
                assert_eq!(rec.payload, &payload(i + 1, len)[..]);
                i += 1;
            }
            cur = b.end();
            if let Some(last) = b.last_seq() {
                let c = ack(&r, last, true).unwrap();
                assert_eq!(c, cur);
            } else {
                r.wait(Duration::from_millis(50)).unwrap();
            }
        }
    });
}

/// One step of a random producer/consumer schedule.
#[derive(Clone, Debug)]
enum Op {
    /// Append a write with this payload length.
    Append(usize),
    /// Stage a record without publishing it.
    Stage(usize),
    Publish,
    /// Read a batch of at most this many bytes.
    Read(u64),
    /// Acknowledge this fraction (in 1/8) of what was read and not acked.
    Ack(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..700).prop_map(Op::Append),
        1 => (0usize..300).prop_map(Op::Stage),
        1 => Just(Op::Publish),
        3 => (1u64..3000).prop_map(Op::Read),
        2 => (0u8..=8).prop_map(Op::Ack),
    ]
}

proptest! {
    /// Against a model: every record is read exactly once, in order, with
    /// its bytes; batches never exceed the limit (unless one record does),
    /// have at most two parts and never show unpublished records; acks
    /// land on record ends.
    #[test]
    fn random_schedules_match_the_model(ops in proptest::collection::vec(op(), 1..200)) {
        let r = ring(SMALL);
        let v = r.view();
        let mut lens = Vec::new(); // payload length of seq i + 1
        let mut published = 0u64; // last published seq
        let mut cur = v.tail_cursor();
        let mut ends = std::collections::BTreeMap::new(); // seq -> end position
        for op in ops {
            match op {
                Op::Append(len) => {
                    let seq = r.next_seq();
                    if r.append(RTB_OP_WRITE, 0, seq, len as u64, &payload(seq, len)).is_ok() {
                        lens.push(len);
                        published = seq;
                    }
                }
                Op::Stage(len) => {
                    let seq = r.next_seq();
                    if r.stage_record(RTB_OP_WRITE, 0, seq, len as u64, &payload(seq, len)).is_ok() {
                        lens.push(len);
                    }
                }
                Op::Publish => {
                    r.publish();
                    published = lens.len() as u64;
                }
                Op::Read(max) => {
                    let b = v.read_batch(cur, max).unwrap();
                    prop_assert!(b.parts().len() <= 2);
                    prop_assert!(b.bytes() <= max || b.records() == 1);
                    let mut seq = cur.seq;
                    let mut pos_bytes = 0;
                    for rec in b.iter() {
                        let rec = rec.unwrap();
                        prop_assert_eq!(rec.seq(), seq);
                        prop_assert!(seq <= published);
                        let len = lens[seq as usize - 1];
                        prop_assert_eq!(rec.payload, &payload(seq, len)[..]);
                        pos_bytes += rec.bytes.len() as u64;
                        seq += 1;
                    }
                    prop_assert_eq!(pos_bytes, b.bytes());
                    prop_assert_eq!(b.end().seq, seq);
                    if b.is_empty() {
                        // Nothing more was published.
                        prop_assert_eq!(cur.seq, published + 1);
                    }
                    let mut walk = b.start();
                    for s in cur.seq..seq {
                        walk = v.end_of(walk, s).unwrap();
                        ends.insert(s, walk.pos);
                    }
                    if !b.is_empty() {
                        prop_assert_eq!(walk, b.end());
                    }
                    cur = b.end();
                }
                Op::Ack(eighths) => {
                    let tail = v.tail_cursor();
                    let unacked = cur.seq - tail.seq;
                    let n = unacked * u64::from(eighths) / 8;
                    if n > 0 {
                        let seq = tail.seq + n - 1;
                        let c = ack(&r, seq, true).unwrap();
                        prop_assert_eq!(c.seq, seq + 1);
                        prop_assert_eq!(Some(&c.pos), ends.get(&seq));
                        prop_assert_eq!(v.tail_cursor(), c);
                    }
                }
            }
            prop_assert!(v.head() - v.tail() <= v.data_size());
        }
    }

    /// Random corruption of a ring image never panics the reader.
    #[test]
    fn corrupted_rings_never_panic(
        lens in proptest::collection::vec(0usize..600, 1..30),
        acks in 0usize..30,
        flips in proptest::collection::vec((0usize..(PAGE + SMALL as usize), any::<u8>()), 1..8),
    ) {
        let r = ring(SMALL);
        for (i, len) in lens.iter().enumerate() {
            let seq = r.next_seq();
            if r.append(RTB_OP_WRITE, 0, seq, *len as u64, &payload(seq, *len)).is_err() {
                ack(&r, seq - 1, true).unwrap();
                r.append(RTB_OP_WRITE, 0, seq, *len as u64, &payload(seq, *len)).unwrap();
            }
            if i == acks {
                ack(&r, seq, true).unwrap();
            }
        }
        let mut img = r.snapshot();
        for (at, x) in flips {
            img.as_mut_bytes()[at] ^= x;
        }
        if let Ok(v) = RingView::new(img) {
            let from = v.tail_cursor();
            if let Ok(b) = v.read_batch(from, 1 << 20) {
                prop_assert!(b.parts().len() <= 2);
                let _ = b.iter().count();
            }
            let _ = v.end_of(from, from.seq.wrapping_add(3));
            let _ = v.cursor_at(from, from.pos.wrapping_add(192));
            let _ = v.record_at(from.pos);
        }
    }
}
