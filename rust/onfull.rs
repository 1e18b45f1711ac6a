// SPDX-License-Identifier: GPL-2.0

//! What a full ring does (Documentation/design.rst, "Overflow and resync"):
//! track (the default: the device never stops for the backup), or make
//! writers wait for room, for a bounded time or as long as it takes.
//!
//! The policy is read without the ring's mutex and changed at any time by
//! `RTB_IOC_SET`. A writer that waits keeps a [`FullWait`]: it decides,
//! after each wake-up, whether to wait on, and for how long, or to give
//! up and let the ring track. No unsafe code, no locks: the ring calls it
//! under its mutex and sleeps after dropping it.

use crate::uapi::{RTB_ON_FULL_BLOCK, RTB_ON_FULL_TRACK};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};

/// The policy of one ring.
pub(crate) struct FullPolicy {
    track: AtomicBool,
    /// Milliseconds a writer waits before the ring tracks; 0: no bound.
    block_timeout_ms: AtomicU32,
}

impl FullPolicy {
    /// A policy that tracks when `track`, else makes writers wait up to
    /// `block_timeout_ms` (validated by the caller; 0: no bound).
    pub(crate) fn new(track: bool, block_timeout_ms: u32) -> Self {
        Self {
            track: AtomicBool::new(track),
            block_timeout_ms: AtomicU32::new(block_timeout_ms),
        }
    }

    /// Changes the settings given; the caller wakes the waiters.
    pub(crate) fn set(&self, track: Option<bool>, block_timeout_ms: Option<u32>) {
        if let Some(ms) = block_timeout_ms {
            self.block_timeout_ms.store(ms, Relaxed);
        }
        if let Some(track) = track {
            self.track.store(track, Relaxed);
        }
    }

    /// Whether a full ring tracks at once.
    pub(crate) fn tracks(&self) -> bool {
        self.track.load(Relaxed)
    }

    /// The `RTB_ON_FULL_*` value and the block timeout, for `RTB_IOC_LIST`.
    pub(crate) fn abi(&self) -> (u32, u32) {
        let on_full = if self.tracks() {
            RTB_ON_FULL_TRACK
        } else {
            RTB_ON_FULL_BLOCK
        };
        (on_full, self.block_timeout_ms.load(Relaxed))
    }
}

/// Why a full ring stopped recording and started tracking.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// The policy is to track.
    Policy,
    /// A writer waited the whole block timeout.
    TimedOut,
    /// A writer that waited was killed.
    Killed,
}

/// What a writer that finds the ring full does next.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Sleep until room appears, for this many milliseconds at most (the
    /// sleeper caps it at its slice), then decide again.
    Wait(u32),
    /// Stop waiting: the ring tracks.
    Track(Overflow),
}

/// One writer's wait for room, from its first full ring on.
#[derive(Default)]
pub(crate) struct FullWait {
    /// When it first found the ring full (monotonic ns).
    since_ns: Option<u64>,
    /// It was killed while it waited.
    killed: bool,
}

impl FullWait {
    /// Whether this writer has found the ring full before.
    pub(crate) fn started(&self) -> bool {
        self.since_ns.is_some()
    }

    /// The writer was killed in its wait: it waits no more.
    pub(crate) fn kill(&mut self) {
        self.killed = true;
    }

    /// Decides at `now_ns` (monotonic) what a writer does with the ring full.
    pub(crate) fn next(&mut self, policy: &FullPolicy, now_ns: u64) -> Next {
        if policy.tracks() {
            return Next::Track(Overflow::Policy);
        }
        if self.killed {
            return Next::Track(Overflow::Killed);
        }
        let since = *self.since_ns.get_or_insert(now_ns);
        let limit_ms = policy.block_timeout_ms.load(Relaxed);
        if limit_ms == 0 {
            return Next::Wait(u32::MAX);
        }
        let waited_ms = now_ns.saturating_sub(since) / 1_000_000;
        match u64::from(limit_ms).checked_sub(waited_ms) {
            Some(left) if left > 0 => Next::Wait(u32::try_from(left).unwrap_or(u32::MAX)),
            _ => Next::Track(Overflow::TimedOut),
        }
    }
}
