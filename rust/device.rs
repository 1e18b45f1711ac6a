// SPDX-License-Identifier: GPL-2.0

//! One protected device: the lower block device, its counters, and the fate
//! of every bio submitted to `/dev/rtbackupN`.
//!
//! Life of a bio (this is the request path; keep this description current):
//!
//! 0. The disk splits the bio to its queue limits: no write is larger than
//!    a quarter of the ring.
//! 1. `submit_bio` (submitter's context, may sleep): the bio is counted by
//!    operation. Writes, discards, write-zeroes and flushes are recorded in
//!    the journal ring ([`Ring::record`]): this waits while the bio overlaps
//!    a write in flight or the ring is full, then copies the data (the pages
//!    are stable: the ring holds exactly the bytes that go to disk). Then
//!    every bio, read or write, is remapped: a clone goes to the lower
//!    device.
//! 2. `end_bio` (any context, may be hard IRQ): the lower device's status is
//!    counted and the write's in-flight slot released; the original bio then
//!    completes with exactly that status.
//!
//! Opening is refused once a detach has begun, so a detach that found no
//! opener cannot race with a new mount.

use crate::ring::Ring;
use crate::sys::{
    bdev::LowerDevice,
    bio::{BioRef, BlkStatus, ReqOp},
    disk::{Action, DiskOps},
};
use crate::uapi::RtbStats;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use kernel::{alloc::KVec, prelude::*, sync::Arc};

/// I/O counters, updated without locks.
#[derive(Default)]
struct Stats {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    writes: AtomicU64,
    write_bytes: AtomicU64,
    discards: AtomicU64,
    discard_bytes: AtomicU64,
    write_zeroes: AtomicU64,
    write_zeroes_bytes: AtomicU64,
    flushes: AtomicU64,
    fua_writes: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Relaxed);
}

impl Stats {
    fn count_submit(&self, bio: &BioRef<'_>) {
        let bytes = u64::from(bio.bytes());
        let op = bio.op();
        match op {
            ReqOp::Read => {
                bump(&self.reads, 1);
                bump(&self.read_bytes, bytes);
            }
            ReqOp::Write if bytes == 0 => {}
            ReqOp::Write => {
                bump(&self.writes, 1);
                bump(&self.write_bytes, bytes);
                if bio.is_fua() {
                    bump(&self.fua_writes, 1);
                }
            }
            ReqOp::Discard | ReqOp::SecureErase => {
                bump(&self.discards, 1);
                bump(&self.discard_bytes, bytes);
            }
            ReqOp::WriteZeroes => {
                bump(&self.write_zeroes, 1);
                bump(&self.write_zeroes_bytes, bytes);
            }
            ReqOp::Flush | ReqOp::Other(_) => {}
        }
        if bio.is_preflush() || op == ReqOp::Flush {
            bump(&self.flushes, 1);
        }
    }

    fn snapshot(&self, in_flight: u32) -> RtbStats {
        RtbStats {
            reads: self.reads.load(Relaxed),
            read_bytes: self.read_bytes.load(Relaxed),
            writes: self.writes.load(Relaxed),
            write_bytes: self.write_bytes.load(Relaxed),
            discards: self.discards.load(Relaxed),
            discard_bytes: self.discard_bytes.load(Relaxed),
            write_zeroes: self.write_zeroes.load(Relaxed),
            write_zeroes_bytes: self.write_zeroes_bytes.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            fua_writes: self.fua_writes.load(Relaxed),
            errors: self.errors.load(Relaxed),
            in_flight: u64::from(in_flight),
            reserved: [0; 4],
        }
    }
}

/// A protected device.
pub(crate) struct Device {
    index: u32,
    lower: LowerDevice,
    /// The path it was attached by, without NUL.
    lower_path: KVec<u8>,
    /// Set once a detach has begun; new opens fail.
    detaching: AtomicBool,
    stats: Stats,
    /// The write-journal ring; a ring file (the agent's) may hold it longer.
    ring: Arc<Ring>,
}

impl Device {
    /// A device numbered `index` over `lower`, attached by `lower_path`.
    pub(crate) fn new(
        index: u32,
        lower: LowerDevice,
        lower_path: KVec<u8>,
        ring: Arc<Ring>,
    ) -> Self {
        Self {
            index,
            lower,
            lower_path,
            detaching: AtomicBool::new(false),
            stats: Stats::default(),
            ring,
        }
    }

    /// The write-journal ring.
    pub(crate) fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// `N` of `/dev/rtbackupN`.
    pub(crate) fn index(&self) -> u32 {
        self.index
    }

    /// The lower device.
    pub(crate) fn lower_device(&self) -> &LowerDevice {
        &self.lower
    }

    /// The path the lower device was attached by.
    pub(crate) fn lower_path(&self) -> &[u8] {
        &self.lower_path
    }

    /// Refuses opens from now on and stops the ring. Call with the disk's
    /// open lock held and no opener: no bio can be submitted any more.
    pub(crate) fn begin_detach(&self) {
        self.detaching.store(true, Relaxed);
        self.ring.detach();
    }

    /// Whether a detach has begun.
    pub(crate) fn is_detaching(&self) -> bool {
        self.detaching.load(Relaxed)
    }

    /// The counters, with `in_flight` from the disk.
    pub(crate) fn stats(&self, in_flight: u32) -> RtbStats {
        self.stats.snapshot(in_flight)
    }
}

impl DiskOps for Device {
    fn lower(&self) -> &LowerDevice {
        &self.lower
    }

    fn open(&self) -> Result {
        if self.is_detaching() {
            return Err(ENXIO);
        }
        Ok(())
    }

    fn submit_bio(&self, bio: &BioRef<'_>) -> Action {
        self.stats.count_submit(bio);
        match bio.op() {
            // Zone management and driver-private operations have no meaning
            // on a non-zoned bio-based disk (zoned lowers are refused).
            ReqOp::Other(_) => Action::Complete(BlkStatus::not_supported()),
            ReqOp::Read => Action::Remap { token: 0 },
            _ => match self.ring.record(bio) {
                Ok(token) => Action::Remap { token },
                Err(e) => {
                    bump(&self.stats.errors, 1);
                    Action::Complete(BlkStatus::from_error(e))
                }
            },
        }
    }

    fn end_bio(&self, _bio: &BioRef<'_>, status: BlkStatus, token: usize) {
        self.ring.complete(token);
        if !status.is_ok() {
            bump(&self.stats.errors, 1);
        }
    }
}
