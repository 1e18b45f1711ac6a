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
    /// `BLK_FEAT_IO_STAT`.
    pub(crate) fn rtb_blk_feat_io_stat() -> c_uint;
    /// `BLK_FEAT_STABLE_WRITES`.
    pub(crate) fn rtb_blk_feat_stable_writes() -> c_uint;
    /// `BLK_FEAT_ZONED`.
    pub(crate) fn rtb_blk_feat_zoned() -> c_uint;
    /// `blk_alloc_disk(lim, NUMA_NO_NODE)`: a bio-based gendisk or an `ERR_PTR`.
    pub(crate) fn rtb_alloc_disk(lim: *mut bindings::queue_limits) -> *mut bindings::gendisk;
    /// `wait_var_event(var, READ_ONCE(*var) == 0)`; woken by `wake_up_var(var)`.
    pub(crate) fn rtb_wait_var_zero(var: *mut c_uint);
    /// Registers the control misc device under `name`, which must outlive it.
    pub(crate) fn rtb_control_register(name: *const c_char) -> c_int;
    /// Deregisters the control misc device.
    pub(crate) fn rtb_control_deregister();
}
