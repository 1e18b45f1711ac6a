// SPDX-License-Identifier: GPL-2.0

//! Declarations of the C glue in `rust/glue.c`.
//!
//! C header: [`rust/glue.h`](../glue.h)

use kernel::{
    bindings,
    ffi::{c_int, c_long, c_uint, c_ulong, c_void},
};

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
    /// `BLK_FEAT_WRITE_CACHE`.
    pub(crate) fn rtb_blk_feat_write_cache() -> c_uint;
    /// `BLK_FEAT_FUA`.
    pub(crate) fn rtb_blk_feat_fua() -> c_uint;
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
    #[cfg(not(rtb_miscdevice))]
    pub(crate) fn rtb_control_register(name: *const kernel::ffi::c_char) -> c_int;
    /// Deregisters the control misc device.
    #[cfg(not(rtb_miscdevice))]
    pub(crate) fn rtb_control_deregister();
    /// `atomic_inc(v)`, a full barrier, `wake_up_var(v)`.
    pub(crate) fn rtb_atomic_inc_and_wake_up(v: *mut bindings::atomic_t);
    /// `wait_var_event_timeout(v, atomic_read_acquire(v) != old, timeout)`
    /// (uninterruptible): 0 on timeout, else the jiffies left.
    pub(crate) fn rtb_wait_atomic_changed(
        v: *mut bindings::atomic_t,
        old: c_int,
        timeout: c_long,
    ) -> c_long;
    /// The same in `TASK_KILLABLE`: `-ERESTARTSYS` when killed.
    pub(crate) fn rtb_wait_atomic_changed_killable(
        v: *mut bindings::atomic_t,
        old: c_int,
        timeout: c_long,
    ) -> c_long;
    /// Copies the data of `bio` (from its current iterator) to `dst`;
    /// returns the bytes copied, or 0 if they exceed `cap`.
    pub(crate) fn rtb_bio_copy_data(bio: *mut bindings::bio, dst: *mut c_void, cap: usize)
        -> usize;
    /// `crc32c(crc, p, len)` of lib/libcrc32c.c: a raw CRC32C update with
    /// no pre- or post-inversion.
    pub(crate) fn rtb_crc32c(crc: u32, p: *const c_void, len: usize) -> u32;
    /// `ktime_get_real_ns()`.
    pub(crate) fn rtb_ktime_real_ns() -> u64;
    /// `vmalloc_user(size)`: zeroed, mappable to userspace; null on failure.
    pub(crate) fn rtb_vmalloc_user(size: c_ulong) -> *mut c_void;
    /// `vfree(p)`.
    pub(crate) fn rtb_vfree(p: *mut c_void);
    /// Marks `vma` never writable (clears `VM_MAYWRITE`), not expandable or
    /// dumpable, and maps `mem` (from `rtb_vmalloc_user`) into it.
    pub(crate) fn rtb_vma_map_readonly(
        vma: *mut bindings::vm_area_struct,
        mem: *mut c_void,
    ) -> c_int;
    /// `init_waitqueue_head(wq)`.
    pub(crate) fn rtb_waitqueue_init(wq: *mut bindings::wait_queue_head);
    /// Wakes pollers of `wq` (`EPOLLIN`, and `EPOLLHUP` if `hup`), if there
    /// are any.
    pub(crate) fn rtb_wake_up_poll(wq: *mut bindings::wait_queue_head, hup: bool);
    /// `poll_wait(file, wq, pt)`.
    pub(crate) fn rtb_poll_wait(
        file: *mut bindings::file,
        wq: *mut bindings::wait_queue_head,
        pt: *mut bindings::poll_table_struct,
    );
    /// `EPOLLIN | EPOLLRDNORM`.
    pub(crate) fn rtb_epollin() -> c_uint;
    /// `EPOLLHUP`.
    pub(crate) fn rtb_epollhup() -> c_uint;
    /// A new file descriptor of a ring file whose `private_data` is `priv_`,
    /// or a negative errno.
    pub(crate) fn rtb_ring_getfd(priv_: *mut c_void) -> c_int;
}
