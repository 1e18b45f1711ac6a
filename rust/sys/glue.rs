// SPDX-License-Identifier: GPL-2.0

//! Declarations of the C glue in `rust/glue.c`.
//!
//! C header: [`rust/glue.h`](../glue.h)

use kernel::{bindings, ffi::c_char, ffi::c_int, ffi::c_uint};

// `improper_ctypes`: with lockdep off, `queue_limits` and `gendisk` reach
// zero-sized C structs (`lock_class_key`); they are only passed by pointer.
#[allow(improper_ctypes)]
extern "C" {
    /// `BLK_OPEN_READ | BLK_OPEN_WRITE`.
    pub(crate) fn rtb_blk_open_read_write() -> c_uint;
    /// `BLK_OPEN_RESTRICT_WRITES`.
    pub(crate) fn rtb_blk_open_restrict_writes() -> c_uint;
    /// `BLK_FEAT_IO_STAT`.
    pub(crate) fn rtb_blk_feat_io_stat() -> c_uint;
    /// `BLK_FEAT_STABLE_WRITES`.
    pub(crate) fn rtb_blk_feat_stable_writes() -> c_uint;
    /// `BLK_FEAT_ZONED`.
    pub(crate) fn rtb_blk_feat_zoned() -> c_uint;
    /// `blk_alloc_disk(lim, NUMA_NO_NODE)`: a bio-based gendisk or an `ERR_PTR`.
    pub(crate) fn rtb_alloc_disk(lim: *mut bindings::queue_limits) -> *mut bindings::gendisk;
    /// `atomic_inc(v)`.
    pub(crate) fn rtb_atomic_inc(v: *mut bindings::atomic_t);
    /// `atomic_read(v)`.
    pub(crate) fn rtb_atomic_read(v: *mut bindings::atomic_t) -> c_int;
    /// `atomic_dec_and_wake_up(v)`: fully ordered, wakes `rtb_wait_atomic_zero`.
    pub(crate) fn rtb_atomic_dec_and_wake_up(v: *mut bindings::atomic_t);
    /// `wait_var_event(v, atomic_read_acquire(v) == 0)`.
    pub(crate) fn rtb_wait_atomic_zero(v: *mut bindings::atomic_t);
    /// Registers the control misc device under `name`, which must outlive it.
    pub(crate) fn rtb_control_register(name: *const c_char) -> c_int;
    /// Deregisters the control misc device.
    pub(crate) fn rtb_control_deregister();
}
