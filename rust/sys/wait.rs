// SPDX-License-Identifier: GPL-2.0

//! Sleeping and waking: generation counters that writers wait on, and the
//! wait queue that `poll()` on a ring file sleeps on.
//!
//! C header: [`include/linux/wait_bit.h`](srctree/include/linux/wait_bit.h)

use super::glue;
use kernel::{
    alloc::flags::GFP_KERNEL, bindings, ffi::c_long, prelude::*, time::msecs_to_jiffies,
    types::Opaque,
};

/// A counter that can be waited on until it changes.
///
/// Waiters sleep uninterruptibly, in slices of at most [`WAIT_SLICE_MS`], so
/// that a long wait (a ring full while the agent is down) is not reported as
/// a hung task; the caller re-checks its condition after each slice.
///
/// # Invariants
///
/// `v` is an initialised `atomic_t`.
pub(crate) struct Generation {
    v: Opaque<bindings::atomic_t>,
}

// SAFETY: an atomic_t is made for concurrent use from any thread; all access
// goes through the atomic_* functions.
unsafe impl Send for Generation {}
// SAFETY: see above.
unsafe impl Sync for Generation {}

/// Longest single sleep in [`Generation::wait_changed`].
pub(crate) const WAIT_SLICE_MS: u32 = 10_000;

/// How [`Generation::wait_changed_killable`] ended.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    /// The value changed (or may have: the caller re-checks).
    Changed,
    /// The time ran out first.
    TimedOut,
    /// The task has a fatal signal: it must stop waiting.
    Killed,
}

impl Generation {
    /// A counter at 0.
    pub(crate) fn new() -> Self {
        // INVARIANT: a zeroed atomic_t is ATOMIC_INIT(0).
        Self {
            v: Opaque::new(bindings::atomic_t::default()),
        }
    }

    /// The current value.
    pub(crate) fn get(&self) -> i32 {
        // SAFETY: `v` is an initialised atomic_t (type invariant).
        unsafe { glue::rtb_atomic_read(self.v.get()) }
    }

    /// Increments without waking anybody.
    pub(crate) fn bump_quiet(&self) {
        // SAFETY: as in `get`.
        unsafe { glue::rtb_atomic_inc(self.v.get()) };
    }

    /// Increments and wakes the waiters. Callable in any context.
    pub(crate) fn bump(&self) {
        // SAFETY: as in `get`; `wake_up_var` only hashes the address.
        unsafe { glue::rtb_atomic_inc_and_wake_up(self.v.get()) };
    }

    /// Sleeps until the value differs from `old`, or for one slice at most.
    /// Process context only.
    pub(crate) fn wait_changed(&self, old: i32) {
        // A slice of milliseconds in jiffies fits a `long` on every kernel.
        let timeout = c_long::try_from(msecs_to_jiffies(WAIT_SLICE_MS)).unwrap_or(c_long::MAX);
        // SAFETY: as in `get`; the caller is in process context and holds no
        // spinlock (only `Ring` calls this, after dropping its mutex).
        unsafe { glue::rtb_wait_atomic_changed(self.v.get(), old, timeout) };
    }

    /// Sleeps until the value differs from `old`, for `ms` milliseconds
    /// (at most [`WAIT_SLICE_MS`]) or until the task is killed. Process
    /// context only.
    pub(crate) fn wait_changed_killable(&self, old: i32, ms: u32) -> WaitEnd {
        let jiffies = msecs_to_jiffies(ms.clamp(1, WAIT_SLICE_MS));
        let timeout = c_long::try_from(jiffies).unwrap_or(c_long::MAX);
        // SAFETY: as in `wait_changed`.
        let ret = unsafe { glue::rtb_wait_atomic_changed_killable(self.v.get(), old, timeout) };
        match ret {
            0 => WaitEnd::TimedOut,
            r if r < 0 => WaitEnd::Killed,
            _ => WaitEnd::Changed,
        }
    }
}

/// A wait queue for `poll()`.
///
/// # Invariants
///
/// `wq` is initialised by `init_waitqueue_head` and never moves (boxed).
pub(crate) struct PollQueue {
    wq: KBox<Opaque<bindings::wait_queue_head>>,
}

// SAFETY: a wait_queue_head is used from any thread under its own spinlock.
unsafe impl Send for PollQueue {}
// SAFETY: see above.
unsafe impl Sync for PollQueue {}

impl PollQueue {
    /// An empty wait queue.
    pub(crate) fn new() -> Result<Self> {
        let wq = KBox::new(Opaque::uninit(), GFP_KERNEL)?;
        // SAFETY: `wq` is allocated, will not move, and is initialised here
        // before any use.
        unsafe { glue::rtb_waitqueue_init(wq.get()) };
        // INVARIANT: initialised above, boxed.
        Ok(Self { wq })
    }

    /// Wakes the pollers (`EPOLLIN`), if any. Callable in any context.
    pub(crate) fn wake(&self) {
        // SAFETY: initialised (type invariant).
        unsafe { glue::rtb_wake_up_poll(self.wq.get(), false) };
    }

    /// Wakes the pollers with `EPOLLHUP` as well.
    pub(crate) fn wake_hangup(&self) {
        // SAFETY: initialised (type invariant).
        unsafe { glue::rtb_wake_up_poll(self.wq.get(), true) };
    }

    pub(super) fn as_ptr(&self) -> *mut bindings::wait_queue_head {
        self.wq.get()
    }
}
