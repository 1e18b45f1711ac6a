//! Resync sections: the stretches of a journal where a resync copies chunks
//! in block order, so that no place inside is a state the device was in
//! (Documentation/design.rst, "Overflow and resync").
//!
//! Every reader of the stream that finds consistency points passes each
//! record and each ring end through one [`SectionTracker`], which turns the
//! *candidates* (after a FLUSH, before a PREFLUSH record, at a ring's end,
//! after a RESYNC_END) into points:
//!
//! * the first RESYNC record opens a section; while it is open, candidates
//!   are not points;
//! * a RESYNC_END while a section is open sets `close_at` to its
//!   `consistent_seq`; the first candidate after record `s` with
//!   `s >= close_at` is a point and closes the section (the end record's
//!   own end is a candidate);
//! * a RESYNC while `close_at` is set clears it (the ring overflowed again:
//!   wait for a new end); a RESYNC_END with no section open changes
//!   nothing;
//! * a section open at the end of a ring stays open, and forgets its
//!   `close_at` (a seq of the ended ring).
//!
//! Scans start at a consistency point, where no section is open, except
//! the index's catch-up, which stores the state with its position.

use rtbackup_proto::{RecordRef, RTB_OP_RESYNC, RTB_OP_RESYNC_END};

use crate::index::PointKind;

/// An open resync section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenSection {
    /// Seq of its first RESYNC record (in the ring it was in).
    pub(crate) since_seq: u64,
    /// `consistent_seq` of the RESYNC_END received for it, in the current
    /// ring: the first candidate at or after it closes the section.
    pub(crate) close_at: Option<u64>,
}

/// The consistency points one record makes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecordPoints {
    /// A point before the record (it has PREFLUSH).
    pub(crate) before: bool,
    /// A point after the record, and its kind.
    pub(crate) after: Option<PointKind>,
}

/// Where a stream stands with respect to resync sections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SectionTracker {
    open: Option<OpenSection>,
}

impl SectionTracker {
    /// The state with `open` as the section open (`None`: no section).
    pub(crate) fn new(open: Option<OpenSection>) -> Self {
        Self { open }
    }

    /// The section open, if any.
    pub(crate) fn open(&self) -> Option<OpenSection> {
        self.open
    }

    /// Notes record `rec`, the next of the stream, and says which of its
    /// candidates are consistency points.
    pub(crate) fn record(&mut self, rec: &RecordRef<'_>) -> RecordPoints {
        let seq = rec.seq();
        let before = rec.is_consistency_point_before() && self.candidate(seq.saturating_sub(1));
        let was_open = self.open.is_some();
        match (rec.op(), &mut self.open) {
            (RTB_OP_RESYNC, Some(s)) => s.close_at = None,
            (RTB_OP_RESYNC, None) => {
                self.open = Some(OpenSection {
                    since_seq: seq,
                    close_at: None,
                })
            }
            (RTB_OP_RESYNC_END, Some(s)) => s.close_at = rec.consistent_seq(),
            _ => {}
        }
        let kind = if rec.is_consistency_point_after() {
            Some(PointKind::Flush)
        } else if rec.op() == RTB_OP_RESYNC_END && was_open {
            Some(PointKind::ResyncEnd)
        } else {
            None
        };
        let after = kind.filter(|_| self.candidate(seq));
        RecordPoints { before, after }
    }

    /// Notes the end of a ring whose last record is `last_seq`: whether it
    /// is a consistency point. A section still open stays open, waiting
    /// for an end in the next ring.
    pub(crate) fn ring_end(&mut self, last_seq: u64) -> bool {
        let point = self.candidate(last_seq);
        if let Some(s) = &mut self.open {
            s.close_at = None;
        }
        point
    }

    /// A candidate right after record `after_seq`: whether it is a point
    /// (closing the open section, if it reached its `close_at`).
    fn candidate(&mut self, after_seq: u64) -> bool {
        match self.open {
            None => true,
            Some(OpenSection {
                close_at: Some(c), ..
            }) if after_seq >= c => {
                self.open = None;
                true
            }
            Some(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtbackup_proto::{
        build_record, parse_record, RTB_OP_FLUSH, RTB_OP_MARK, RTB_OP_WRITE, RTB_REC_PREFLUSH,
    };

    /// Feeds `(op, flags, consistent_seq)` records with seqs from 1 and
    /// returns, per record, (point before, point after, open after it).
    fn run(t: &mut SectionTracker, ops: &[(u8, u8, u64)]) -> Vec<(bool, bool, bool)> {
        ops.iter()
            .enumerate()
            .map(|(i, &(op, flags, c))| {
                let seq = i as u64 + 1;
                let r = match op {
                    RTB_OP_WRITE => build_record(op, flags, seq, 0, 512, 0, &[1; 512]),
                    RTB_OP_RESYNC => {
                        build_record(op, 0, seq, 0, c * 512, 0, &vec![2; c as usize * 512])
                    }
                    RTB_OP_RESYNC_END => build_record(op, 0, seq, 0, 0, 0, &c.to_le_bytes()),
                    RTB_OP_MARK => build_record(op, 0, seq, 0, 0, 0, b"m"),
                    _ => build_record(op, flags, seq, 0, 0, 0, &[]),
                };
                let p = t.record(&parse_record(&r).unwrap());
                (p.before, p.after.is_some(), t.open().is_some())
            })
            .collect()
    }

    const W: (u8, u8, u64) = (RTB_OP_WRITE, 0, 0);
    const PW: (u8, u8, u64) = (RTB_OP_WRITE, RTB_REC_PREFLUSH, 0);
    const F: (u8, u8, u64) = (RTB_OP_FLUSH, 0, 0);
    const R: (u8, u8, u64) = (RTB_OP_RESYNC, 0, 1);
    const R0: (u8, u8, u64) = (RTB_OP_RESYNC, 0, 0);
    fn end(c: u64) -> (u8, u8, u64) {
        (RTB_OP_RESYNC_END, 0, c)
    }

    #[test]
    fn no_point_inside_a_section() {
        let mut t = SectionTracker::default();
        let got = run(&mut t, &[W, F, R, F, PW, R0, W, F, end(11), W, F, F]);
        let seqs = |f: fn(&(bool, bool, bool)) -> bool| -> Vec<usize> {
            (1..=got.len()).filter(|&i| f(&got[i - 1])).collect()
        };
        // The end (9) waits for seq 11; the flush after it closes.
        assert_eq!(seqs(|p| p.1), [2, 11, 12], "points after");
        assert_eq!(seqs(|p| p.0), [0usize; 0], "points before");
        assert_eq!(seqs(|p| p.2), (3..=10).collect::<Vec<_>>(), "open after");
        assert_eq!(t.open(), None);
    }

    #[test]
    fn an_end_at_or_before_itself_closes_at_once() {
        for c in [0, 2, 3] {
            let mut t = SectionTracker::default();
            let got = run(&mut t, &[R, R, end(c), W]);
            assert_eq!(got[2], (false, true, false), "consistent_seq {c}");
            assert_eq!(got[3], (false, false, false));
        }
    }

    #[test]
    fn a_preflush_after_close_at_closes() {
        let mut t = SectionTracker::default();
        // End at 3 waits for 5; record 6 has PREFLUSH: the point after 5.
        let got = run(&mut t, &[R, R, end(5), W, W, PW, W]);
        assert_eq!(got[5], (true, false, false));
        // Not before 5: the point after 4 (PREFLUSH on 5) is not one.
        let mut t = SectionTracker::default();
        let got = run(&mut t, &[R, R, end(5), W, PW, W, F]);
        assert_eq!(got[4], (false, false, true));
        assert_eq!(got[6], (false, true, false));
    }

    #[test]
    fn an_overflow_again_waits_for_a_new_end() {
        let mut t = SectionTracker::default();
        let got = run(&mut t, &[R, end(4), W, R, W, F, end(7), W]);
        assert_eq!(got[5], (false, false, true), "flush after the reopen");
        assert_eq!(got[6], (false, true, false), "the new end closes");
        assert_eq!(t.open(), None);
    }

    #[test]
    fn an_end_without_a_section_is_nothing() {
        let mut t = SectionTracker::default();
        let got = run(&mut t, &[W, end(1), W]);
        assert_eq!(got[1], (false, false, false));
    }

    #[test]
    fn a_ring_end_closes_only_a_section_ready_to_close() {
        let mut t = SectionTracker::default();
        run(&mut t, &[R, end(4), W]);
        assert!(!t.ring_end(3), "close_at 4 not reached");
        // Forgotten with the ring: seq 9 of the next ring is no end.
        assert_eq!(t.open().map(|s| (s.since_seq, s.close_at)), Some((1, None)));
        let got = run(&mut t, &[W, W, F]);
        assert_eq!(got[2], (false, false, true));
        let mut t = SectionTracker::default();
        run(&mut t, &[R, end(4), W, W]);
        assert!(t.ring_end(4));
        assert_eq!(t.open(), None);
        assert!(SectionTracker::default().ring_end(0));
    }
}
