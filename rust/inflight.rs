// SPDX-License-Identifier: GPL-2.0

//! Writes in flight at the lower device, so that overlapping writes are
//! serialized.
//!
//! The journal records writes in submission order, and the backup replays
//! them in that order. Two overlapping writes in flight at once may reach
//! the media in either order, so a write that overlaps one in flight waits
//! until that one has completed before it is recorded and submitted: then
//! the record order is the media order (Documentation/design.rst, "Write
//! order").
//!
//! The table is a fixed array of slots of atomics. Claims and overlap
//! checks happen under the ring's mutex (process context), which makes
//! them one atomic step; completion releases a slot without any lock, from
//! any context. Each slot's generation is odd while
//! the slot is busy, so a waiter waits for "the generation moved", which
//! cannot be missed or confused with a later claim of the same slot.

use crate::sys::wait::Generation;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel::{alloc::flags::GFP_KERNEL, alloc::KVec, prelude::*};

/// Most writes in flight per device; more wait for a free slot.
pub(crate) const SLOTS: usize = 256;

struct Slot {
    /// Odd while busy.
    generation: Generation,
    /// First sector covered.
    start: AtomicU64,
    /// First sector after the range.
    end: AtomicU64,
}

/// What a writer must wait for before trying again: a generation that
/// moves when the write it waits for (or any write) completes.
pub(crate) struct Busy<'a> {
    generation: &'a Generation,
    seen: i32,
}

impl Busy<'_> {
    /// Sleeps until the generation moved (or one wait slice passed).
    pub(crate) fn wait(self) {
        self.generation.wait_changed(self.seen);
    }
}

/// The in-flight write table of one device.
pub(crate) struct InflightWrites {
    slots: KVec<Slot>,
    /// Bumped by every release: what a writer waits on when all slots are
    /// busy.
    freed: Generation,
    /// Slots at and above this index have never been claimed (so are free);
    /// only changed under the ring's mutex.
    high_water: AtomicUsize,
}

impl InflightWrites {
    pub(crate) fn new() -> Result<Self> {
        let mut slots = KVec::with_capacity(SLOTS, GFP_KERNEL)?;
        for _ in 0..SLOTS {
            slots.push(
                Slot {
                    generation: Generation::new(),
                    start: AtomicU64::new(0),
                    end: AtomicU64::new(0),
                },
                GFP_KERNEL,
            )?;
        }
        Ok(Self {
            slots,
            freed: Generation::new(),
            high_water: AtomicUsize::new(0),
        })
    }

    /// Finds a reason to wait before a write of sectors `[start, end)` may
    /// go: a busy slot that overlaps it, or, when every slot is busy, the
    /// next release of any. Call under the ring's mutex.
    pub(crate) fn must_wait(&self, start: u64, end: u64) -> Option<Busy<'_>> {
        // Sampled before the scan: a release after it moves `freed`.
        let freed = self.freed.get();
        let mut free = false;
        let high_water = self.high_water.load(Ordering::Relaxed);
        for slot in self.slots.iter().take(high_water) {
            let generation = slot.generation.get();
            if generation & 1 == 0 {
                free = true;
                continue;
            }
            let s = slot.start.load(Ordering::Relaxed);
            let e = slot.end.load(Ordering::Relaxed);
            if start < e && s < end {
                return Some(Busy {
                    generation: &slot.generation,
                    seen: generation,
                });
            }
        }
        if free || high_water < self.slots.len() {
            return None;
        }
        Some(Busy {
            generation: &self.freed,
            seen: freed,
        })
    }

    /// Claims a slot for sectors `[start, end)`; returns its token (never
    /// 0). Call under the ring's mutex, right after `must_wait` returned
    /// `None`.
    pub(crate) fn claim(&self, start: u64, end: u64) -> Result<usize> {
        let index = self
            .slots
            .iter()
            .position(|s| s.generation.get() & 1 == 0)
            .ok_or(EBUSY)?;
        let slot = &self.slots[index];
        slot.start.store(start, Ordering::Relaxed);
        slot.end.store(end, Ordering::Relaxed);
        // The range is visible before the slot reads as busy: the scan in
        // `must_wait` runs under the same mutex as this claim.
        slot.generation.bump_quiet();
        self.high_water.fetch_max(index + 1, Ordering::Relaxed);
        Ok(index + 1)
    }

    /// Notes every slot's generation (odd: busy) in `out`. Call under the
    /// ring's mutex, where slots are claimed.
    pub(crate) fn snapshot(&self, out: &mut [i32; SLOTS]) {
        for (o, slot) in out.iter_mut().zip(self.slots.iter()) {
            *o = slot.generation.get();
        }
    }

    /// Sleeps until every slot that was busy in `snap` has been released
    /// since (its generation moved). Process context, no lock held.
    pub(crate) fn wait_released(&self, snap: &[i32; SLOTS]) {
        for (&seen, slot) in snap.iter().zip(self.slots.iter()) {
            if seen & 1 == 0 {
                continue;
            }
            while slot.generation.get() == seen {
                slot.generation.wait_changed(seen);
            }
        }
    }

    /// Releases the slot of `token` and wakes its waiters. Any context.
    pub(crate) fn release(&self, token: usize) {
        if let Some(slot) = token.checked_sub(1).and_then(|i| self.slots.get(i)) {
            slot.generation.bump();
            self.freed.bump();
        }
    }
}
