// SPDX-License-Identifier: GPL-2.0

//! Ring files: the file descriptor `RTB_IOC_RING_OPEN` returns, an anonymous
//! inode whose `file_operations` (static, in the glue) call the functions
//! below, which hand each request to the safe [`Ring`].
//!
//! The file's `private_data` owns one reference to the ring (an `Arc`), so
//! the ring and its memory outlive every mapping of it: a VMA holds the
//! file, and `release` runs only after the last VMA is gone.
//!
//! C header: [`include/linux/anon_inodes.h`](srctree/include/linux/anon_inodes.h)

use super::{
    compat::{self, ForeignPtr},
    glue,
    ringmem::Vma,
};
use crate::ring::Ring;
use kernel::{
    bindings,
    ffi::{c_int, c_long, c_uint, c_ulong},
    prelude::*,
    sync::Arc,
    types::ForeignOwnable,
};

/// Creates a ring file for `ring` and returns its new file descriptor.
pub(crate) fn open_fd(ring: Arc<Ring>) -> Result<i32> {
    let ptr = ring.into_foreign();
    // SAFETY: the glue stores `ptr` as the file's private data; the static
    // fops turn it back into the `Arc` in `rtb_ring_release`.
    let fd = unsafe { glue::rtb_ring_getfd(compat::foreign_as_mut(ptr)) };
    if fd < 0 {
        // SAFETY: no file was created, so the reference is still ours.
        drop(unsafe { Arc::<Ring>::from_foreign(ptr) });
        return Err(Error::from_errno(fd));
    }
    Ok(fd)
}

/// The ring of a ring file.
///
/// # Safety
///
/// `file` must be a live ring file (created by [`open_fd`]) whose release
/// has not run.
unsafe fn ring_of<'a>(file: *mut bindings::file) -> &'a Ring {
    // SAFETY: `private_data` is the `Arc` stored by `open_fd`, alive until
    // release (caller's guarantee).
    let ring = unsafe { Arc::<Ring>::borrow((*file).private_data as ForeignPtr) };
    // SAFETY: the borrow is valid as long as the file is (see above); the
    // reference is not kept beyond the callback.
    unsafe { &*core::ptr::from_ref::<Ring>(&*ring) }
}

/// `file_operations.mmap` of a ring file.
///
/// # Safety
///
/// Called by the VFS for a live ring file with a VMA being set up.
#[no_mangle]
pub(crate) unsafe extern "C" fn rtb_ring_mmap(
    file: *mut bindings::file,
    vma: *mut bindings::vm_area_struct,
) -> c_int {
    // SAFETY: called by the VFS for a ring file (see above).
    let ring = unsafe { ring_of(file) };
    // SAFETY: this is the VMA of this mmap call.
    let vma = unsafe { Vma::from_raw(vma) };
    match ring.mmap(&vma) {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// `file_operations.poll` of a ring file.
///
/// # Safety
///
/// Called by the VFS for a live ring file.
#[no_mangle]
pub(crate) unsafe extern "C" fn rtb_ring_poll(
    file: *mut bindings::file,
    pt: *mut bindings::poll_table_struct,
) -> c_uint {
    // SAFETY: called by the VFS for a ring file.
    let ring = unsafe { ring_of(file) };
    // SAFETY: the wait queue lives as long as the ring, which outlives the
    // file (it holds a reference); `pt` is the VFS's.
    unsafe { glue::rtb_poll_wait(file, ring.poll_queue().as_ptr(), pt) };
    let (readable, hangup) = ring.poll_state();
    let mut mask = 0;
    if readable {
        // SAFETY: returns a constant.
        mask |= unsafe { glue::rtb_epollin() };
    }
    if hangup {
        // SAFETY: returns a constant.
        mask |= unsafe { glue::rtb_epollhup() };
    }
    mask
}

/// `file_operations.unlocked_ioctl` of a ring file.
///
/// # Safety
///
/// Called by the VFS for a live ring file, in process context; `arg` is an
/// untrusted user address.
#[no_mangle]
pub(crate) unsafe extern "C" fn rtb_ring_ioctl(
    file: *mut bindings::file,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    // SAFETY: called by the VFS for a ring file.
    let ring = unsafe { ring_of(file) };
    match ring.ioctl(cmd, compat::user_ptr(arg as u64)) {
        Ok(v) => v as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}

/// `file_operations.release` of a ring file.
///
/// # Safety
///
/// Called once by the VFS when the last reference to a ring file is gone.
#[no_mangle]
pub(crate) unsafe extern "C" fn rtb_ring_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: `private_data` holds the reference taken by `open_fd`; this is
    // the only release of the file, so we may take it back.
    let ring = unsafe { Arc::<Ring>::from_foreign((*file).private_data as ForeignPtr) };
    ring.release_agent();
    0
}
