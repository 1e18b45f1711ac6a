//! Which records may leave the ring: the bookkeeping between the records
//! sent, the server's ACKs and the kernel's consumer position.
//!
//! A record leaves the ring (its bytes may be overwritten) only when the
//! server has acknowledged it *and* the frame carrying it has been written
//! completely: the sender reads the records straight from the ring's memory
//! while it writes them, so a (misbehaving or merely fast) server must not
//! free them under its feet.

use crate::error::AgentError;
use rtbackup_ring::{Cursor, RingSource};
use std::collections::VecDeque;
use std::time::Instant;

/// The state shared by the sender and the receiver of one connection.
#[derive(Debug)]
pub(crate) struct AckTracker {
    /// The consumer position as last set in the ring.
    acked: Cursor,
    /// Ends of the batches handed to the socket, oldest first, not yet
    /// acknowledged in the ring. `seq` of an end is the batch's last + 1.
    sent: VecDeque<Cursor>,
    /// Last seq whose frame was written completely.
    written: u64,
    /// Highest seq the server acknowledged.
    server_acked: u64,
    /// Since when records handed to the socket (written or still being
    /// written) have waited for an ACK (`None`: none outstanding). A write
    /// that blocks (a server that stopped reading) counts.
    waiting_since: Option<Instant>,
    /// The ring's position was moved at least once by a server ACK.
    progressed: bool,
    /// No record will be sent any more on this connection: the device was
    /// detached and everything up to the ring's final head was written.
    finished: bool,
}

impl AckTracker {
    /// Starts after `start`: every record before it is acknowledged.
    pub(crate) fn new(start: Cursor) -> Self {
        Self {
            acked: start,
            sent: VecDeque::new(),
            written: start.seq - 1,
            server_acked: start.seq - 1,
            waiting_since: None,
            progressed: false,
            finished: false,
        }
    }

    /// The consumer position as last set.
    pub(crate) fn acked(&self) -> Cursor {
        self.acked
    }

    /// Highest seq the server acknowledged.
    pub(crate) fn server_acked(&self) -> u64 {
        self.server_acked
    }

    /// Last seq handed to the socket.
    pub(crate) fn last_sent(&self) -> u64 {
        self.sent.back().map_or(self.acked.seq, |c| c.seq) - 1
    }

    /// Whether the server acknowledged something since the start.
    pub(crate) fn progressed(&self) -> bool {
        self.progressed
    }

    /// Whether everything written is acknowledged in the ring.
    pub(crate) fn all_acked(&self) -> bool {
        self.acked.seq - 1 == self.written && self.sent.is_empty()
    }

    /// Since when records handed to the socket have waited for an ACK.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        self.waiting_since
    }

    /// A batch ending at `end` is about to be written: from `now` on its
    /// records wait for an ACK, even while the write blocks.
    pub(crate) fn sending(&mut self, end: Cursor, now: Instant) {
        debug_assert!(end.seq > self.last_sent() + 1);
        self.sent.push_back(end);
        if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
    }

    /// The frame carrying the records up to `last_seq` was written.
    pub(crate) fn written(&mut self, last_seq: u64) {
        self.written = last_seq;
    }

    /// Nothing more will be sent: the device was detached and every record
    /// up to its final head was written.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether the device was detached and every record of the ring was
    /// sent, acknowledged by the server and acknowledged in the ring.
    pub(crate) fn delivered_all(&self) -> bool {
        self.finished && self.all_acked()
    }

    /// The server acknowledged everything up to `seq`.
    pub(crate) fn server_ack(&mut self, seq: u64, now: Instant) -> Result<(), AgentError> {
        if seq > self.last_sent() {
            return Err(AgentError::Protocol(format!(
                "ACK of seq {seq}, but only records up to {} were sent",
                self.last_sent()
            )));
        }
        if seq > self.server_acked {
            self.server_acked = seq;
            self.waiting_since = (seq < self.last_sent()).then_some(now);
        }
        Ok(())
    }

    /// Moves the ring's consumer position as far as the server's ACKs and
    /// the completed writes allow. Returns the new position, if it moved.
    pub(crate) fn apply<S: RingSource>(&mut self, ring: &S) -> Result<Option<Cursor>, AgentError> {
        let target = self.server_acked.min(self.written);
        if target < self.acked.seq {
            return Ok(None);
        }
        // The end of the last whole batch acknowledged is known; a record
        // inside a batch is found by walking from the batch's start.
        let mut from = self.acked;
        while let Some(&end) = self.sent.front() {
            if end.seq - 1 > target {
                break;
            }
            from = end;
            self.sent.pop_front();
        }
        let to = ring.view().end_of(from, target)?;
        // SAFETY: every record up to `target` is in a frame that was written
        // completely (`target <= written`), and the sender holds slices of
        // the batch it is writing only until the write returns: nothing up
        // to `target` is still in use. `self` is behind the connection's
        // mutex, so acknowledgements do not run concurrently.
        unsafe { ring.set_tail_at(to, true) }?;
        self.acked = to;
        self.progressed = true;
        Ok(Some(to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtbackup_abi::RTB_OP_WRITE;
    use rtbackup_ring::mem::MemRing;

    fn ring_with(n: u64) -> MemRing {
        let r = MemRing::new(8192, 1, 1 << 20, 512).unwrap();
        for i in 0..n {
            r.append(RTB_OP_WRITE, 0, i, 100, &[i as u8; 100]).unwrap();
        }
        r
    }

    /// Sends the records `from..` in batches of `per` records.
    fn send_all(t: &mut AckTracker, r: &MemRing, per: u64, now: Instant) -> Vec<Cursor> {
        let mut ends = Vec::new();
        let mut cur = t.acked();
        loop {
            let b = r.view().read_batch(cur, per * 192).unwrap();
            if b.is_empty() {
                return ends;
            }
            t.sending(b.end(), now);
            t.written(b.last_seq().unwrap());
            ends.push(b.end());
            cur = b.end();
        }
    }

    #[test]
    fn acks_of_whole_batches_move_the_ring_to_their_ends() {
        let r = ring_with(9);
        let now = Instant::now();
        let mut t = AckTracker::new(r.view().tail_cursor());
        let ends = send_all(&mut t, &r, 3, now);
        assert_eq!(ends.len(), 3);
        assert_eq!(t.last_sent(), 9);
        assert_eq!(t.waiting_since(), Some(now));
        t.server_ack(6, now).unwrap();
        assert_eq!(t.apply(&r).unwrap(), Some(ends[1]));
        assert_eq!(r.view().tail_cursor(), ends[1]);
        assert!(t.waiting_since().is_some());
        t.server_ack(9, now).unwrap();
        assert_eq!(t.apply(&r).unwrap(), Some(ends[2]));
        assert!(t.all_acked());
        assert_eq!(t.waiting_since(), None);
        assert!(t.progressed());
        // Nothing more to do.
        assert_eq!(t.apply(&r).unwrap(), None);
        assert_eq!(r.acks().len(), 2);
    }

    #[test]
    fn an_ack_inside_a_batch_moves_the_ring_to_that_record() {
        let r = ring_with(6);
        let now = Instant::now();
        let mut t = AckTracker::new(r.view().tail_cursor());
        send_all(&mut t, &r, 6, now);
        t.server_ack(4, now).unwrap();
        assert_eq!(
            t.apply(&r).unwrap(),
            Some(Cursor {
                pos: 4 * 192,
                seq: 5
            })
        );
        t.server_ack(5, now).unwrap();
        assert_eq!(
            t.apply(&r).unwrap(),
            Some(Cursor {
                pos: 5 * 192,
                seq: 6
            })
        );
        t.server_ack(6, now).unwrap();
        assert_eq!(
            t.apply(&r).unwrap(),
            Some(Cursor {
                pos: 6 * 192,
                seq: 7
            })
        );
        assert!(t.all_acked());
        let acks = r.acks();
        assert_eq!(
            acks.iter().map(|a| a.tail_seq).collect::<Vec<_>>(),
            [5, 6, 7]
        );
        assert!(acks.iter().all(|a| a.connected));
    }

    #[test]
    fn records_still_being_written_stay_in_the_ring() {
        let r = ring_with(4);
        let now = Instant::now();
        let mut t = AckTracker::new(r.view().tail_cursor());
        let b = r.view().read_batch(t.acked(), 1 << 20).unwrap();
        t.sending(b.end(), now);
        // The server acknowledges before the write returned.
        t.server_ack(4, now).unwrap();
        assert_eq!(t.apply(&r).unwrap(), None);
        assert_eq!(r.view().tail(), 0);
        t.written(4);
        assert_eq!(t.apply(&r).unwrap(), Some(b.end()));
        assert_eq!(t.waiting_since(), None);
    }

    #[test]
    fn acks_of_records_never_sent_are_protocol_violations() {
        let r = ring_with(4);
        let now = Instant::now();
        let mut t = AckTracker::new(r.view().tail_cursor());
        let e = t.server_ack(1, now).unwrap_err();
        assert!(
            e.to_string()
                .contains("ACK of seq 1, but only records up to 0 were sent"),
            "{e}"
        );
        let b = r.view().read_batch(t.acked(), 2 * 192).unwrap();
        t.sending(b.end(), now);
        t.written(2);
        assert!(t.server_ack(3, now).is_err());
        t.server_ack(2, now).unwrap();
        // Old or repeated ACKs are harmless.
        t.server_ack(1, now).unwrap();
        t.server_ack(0, now).unwrap();
        assert_eq!(t.apply(&r).unwrap(), Some(b.end()));
        assert_eq!(r.view().tail_seq(), 3);
    }

    #[test]
    fn a_tracker_resuming_mid_ring_starts_at_its_cursor() {
        let r = ring_with(5);
        let now = Instant::now();
        // SAFETY: no batch is in use.
        let start = unsafe { r.ack(2, true) }.unwrap();
        let mut t = AckTracker::new(start);
        assert_eq!(t.last_sent(), 2);
        assert!(t.all_acked());
        send_all(&mut t, &r, 1, now);
        t.server_ack(3, now).unwrap();
        assert_eq!(
            t.apply(&r).unwrap(),
            Some(Cursor {
                pos: 3 * 192,
                seq: 4
            })
        );
        assert!(!t.all_acked());
    }

    #[test]
    fn the_ack_timer_starts_when_sending_starts() {
        let r = ring_with(6);
        let t0 = Instant::now();
        let t1 = t0 + std::time::Duration::from_secs(1);
        let t2 = t0 + std::time::Duration::from_secs(2);
        let mut t = AckTracker::new(r.view().tail_cursor());
        assert_eq!(t.waiting_since(), None);
        let b1 = r.view().read_batch(t.acked(), 3 * 192).unwrap();
        // The write of the frame may block (a server that stopped
        // reading): the records wait for their ACK from now on.
        t.sending(b1.end(), t0);
        assert_eq!(t.waiting_since(), Some(t0));
        t.written(3);
        assert_eq!(t.waiting_since(), Some(t0));
        let b2 = r.view().read_batch(b1.end(), 3 * 192).unwrap();
        t.sending(b2.end(), t1);
        assert_eq!(t.waiting_since(), Some(t0), "the oldest wait counts");
        // An ACK of the first batch while the second is still being
        // written: the second waits from the ACK on.
        t.server_ack(3, t2).unwrap();
        assert_eq!(t.waiting_since(), Some(t2));
        t.apply(&r).unwrap();
        t.written(6);
        t.server_ack(6, t2).unwrap();
        assert_eq!(t.waiting_since(), None);
    }

    #[test]
    fn everything_is_delivered_once_finished_and_acknowledged() {
        let r = ring_with(4);
        let now = Instant::now();
        let mut t = AckTracker::new(r.view().tail_cursor());
        send_all(&mut t, &r, 2, now);
        t.finish();
        assert!(!t.delivered_all());
        t.server_ack(2, now).unwrap();
        t.apply(&r).unwrap();
        assert!(!t.delivered_all());
        t.server_ack(4, now).unwrap();
        // Acknowledged by the server, not yet in the ring.
        assert!(!t.delivered_all());
        t.apply(&r).unwrap();
        assert!(t.delivered_all());
        // Not finished: more records may come.
        let mut u = AckTracker::new(r.view().tail_cursor());
        assert!(u.all_acked() && !u.delivered_all());
        u.finish();
        assert!(u.delivered_all());
    }
}
