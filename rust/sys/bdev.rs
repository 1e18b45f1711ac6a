// SPDX-License-Identifier: GPL-2.0

//! The lower block device, opened exclusively.
//!
//! C header: [`include/linux/blkdev.h`](srctree/include/linux/blkdev.h)

use super::glue;
use core::ptr::NonNull;
use kernel::{alloc::flags::GFP_KERNEL, bindings, error::from_err_ptr, prelude::*, str::CStr};

/// `MINORBITS` of include/linux/kdev_t.h: a `dev_t` is `major << 20 | minor`.
const MINORBITS: u32 = 20;

/// A block device opened for reading and writing with an exclusive claim, so
/// that nobody can mount or claim it around the filter. The open also asks
/// for `BLK_OPEN_RESTRICT_WRITES`: where the kernel enforces it
/// (`bdev_allow_write_mounted=0` or `CONFIG_BLK_DEV_WRITE_MOUNTED=n`), plain
/// writers of the lower device are refused too, as for a mounted filesystem.
///
/// # Invariants
///
/// `file` is a block device file returned by `bdev_file_open_by_path` with
/// `BLK_OPEN_READ | BLK_OPEN_WRITE | BLK_OPEN_RESTRICT_WRITES` and `holder`
/// as the exclusive holder; this value owns that reference and releases it,
/// with the claim, on drop.
pub(crate) struct LowerDevice {
    file: NonNull<bindings::file>,
    /// A unique address that identifies this claim: claims by the same
    /// holder do not exclude each other, so each device needs its own.
    holder: KBox<u64>,
}

// SAFETY: the file reference may be used and released from any thread.
unsafe impl Send for LowerDevice {}
// SAFETY: `&LowerDevice` only reads immutable properties of the device.
unsafe impl Sync for LowerDevice {}

impl LowerDevice {
    /// Opens the block device at `path` exclusively.
    ///
    /// Fails with `ENOENT` if the path does not exist, `ENOTBLK` if it is not
    /// a block device, `EBUSY` if it is mounted, claimed, a partition of it
    /// (or the disk holding it) is in use, or (with write restriction
    /// enforced) somebody has it open for writing, `EACCES` if it is
    /// read-only.
    pub(crate) fn open(path: &CStr) -> Result<Self> {
        let holder = KBox::new(0u64, GFP_KERNEL)?;
        let holder_ptr: *const u64 = &*holder;
        // SAFETY: `path` is NUL-terminated; `holder_ptr` stays valid for as
        // long as the claim (it is freed only after `fput` in `drop`).
        let file = from_err_ptr(unsafe {
            bindings::bdev_file_open_by_path(
                path.as_char_ptr(),
                glue::rtb_blk_open_read_write() | glue::rtb_blk_open_restrict_writes(),
                holder_ptr.cast_mut().cast(),
                core::ptr::null(),
            )
        })?;
        // INVARIANT: `file` was opened above as the invariant requires.
        Ok(Self {
            file: NonNull::new(file).ok_or(ENODEV)?,
            holder,
        })
    }

    /// The `struct block_device` of the open file.
    pub(super) fn as_raw_bdev(&self) -> *mut bindings::block_device {
        // SAFETY: `self.file` is an open block device file (type invariant).
        unsafe { bindings::file_bdev(self.file.as_ptr()) }
    }

    /// Capacity in 512-byte sectors.
    pub(crate) fn nr_sectors(&self) -> u64 {
        // SAFETY: the bdev is valid while the file is open.
        unsafe { (*self.as_raw_bdev()).bd_nr_sectors }
    }

    /// Major and minor number.
    pub(crate) fn devt(&self) -> (u32, u32) {
        // SAFETY: the bdev is valid while the file is open.
        let dev = unsafe { (*self.as_raw_bdev()).bd_dev };
        (dev >> MINORBITS, dev & ((1 << MINORBITS) - 1))
    }

    /// Logical and physical block size in bytes.
    pub(crate) fn block_sizes(&self) -> (u32, u32) {
        // SAFETY: the bdev, its disk and its queue are valid while the file is
        // open; the limits are only read.
        let lim = unsafe { &(*(*(*self.as_raw_bdev()).bd_disk).queue).limits };
        (lim.logical_block_size, lim.physical_block_size)
    }

    /// Whether the device is a disk of this module (stacking rtbackup on
    /// itself is refused).
    pub(crate) fn is_this_module(&self) -> bool {
        // SAFETY: the bdev, its disk and the disk's fops are valid while the
        // file is open.
        let owner = unsafe { (*(*(*self.as_raw_bdev()).bd_disk).fops).owner };
        owner == super::compat::this_module()
    }
}

impl Drop for LowerDevice {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we own this file reference.
        // `bdev_fput` gives up the claim and the write restriction at once,
        // under the disk's open_mutex; a plain `fput` would defer that to
        // task work, after `holder` (a field, freed after this) is gone.
        unsafe { bindings::bdev_fput(self.file.as_ptr()) };
        let _ = &self.holder;
    }
}
