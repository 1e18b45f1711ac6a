// SPDX-License-Identifier: GPL-2.0

//! The memory of a write-journal ring, shared read-only with userspace: a
//! control page (`RtbRingHeader`) followed by the data area.
//!
//! The layout and the publication protocol are in `rust/uapi.rs`. This type
//! only moves bytes; which bytes go where is decided by `crate::ring`, which
//! keeps it under its mutex (every mutating method takes `&mut self`).
//!
//! C header: [`include/linux/vmalloc.h`](srctree/include/linux/vmalloc.h)

use super::{bio::BioRef, glue};
use crate::uapi::{RtbRecordHeader, RtbRingHeader, RTB_RING_PAGE};
use core::{
    mem::offset_of,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};
use kernel::{bindings, error::to_result, prelude::*};

/// A ring's shared memory.
///
/// # Invariants
///
/// `mem` was returned by `rtb_vmalloc_user(RTB_RING_PAGE + data_size)`
/// (zeroed, page-aligned) and is freed only in `drop`; `data_size` is a
/// power of two and a multiple of the record alignment.
pub(crate) struct RingMem {
    mem: NonNull<u8>,
    data_size: u64,
}

// SAFETY: the memory is owned by this value; shared access (`&self`) only
// reads, and the fields userspace reads concurrently are written atomically.
unsafe impl Send for RingMem {}
// SAFETY: see above.
unsafe impl Sync for RingMem {}

/// A user mapping being set up by `mmap`.
///
/// # Invariants
///
/// `vma` is the valid VMA passed to `file_operations.mmap`, with the mmap
/// lock held by the caller for the whole lifetime of this value.
pub(crate) struct Vma(*mut bindings::vm_area_struct);

impl Vma {
    /// # Safety
    ///
    /// `vma` must be the VMA passed to `file_operations.mmap`, used only
    /// during that call.
    pub(super) unsafe fn from_raw(vma: *mut bindings::vm_area_struct) -> Self {
        // INVARIANT: guaranteed by the caller.
        Self(vma)
    }

    /// Length of the mapping in bytes.
    pub(crate) fn len(&self) -> u64 {
        // SAFETY: valid VMA (type invariant); start/end are set before mmap.
        unsafe {
            let r = &(*self.0).__bindgen_anon_1.__bindgen_anon_1;
            r.vm_end.wrapping_sub(r.vm_start) as u64
        }
    }

    /// Offset of the mapping in the file, in pages.
    pub(crate) fn pgoff(&self) -> u64 {
        // SAFETY: valid VMA (type invariant).
        unsafe { (*self.0).vm_pgoff as u64 }
    }

    /// Whether the mapping was asked for with `PROT_WRITE`.
    pub(crate) fn writable(&self) -> bool {
        // SAFETY: valid VMA (type invariant); `vm_flags` is the readable
        // alias of the flags union.
        let flags = unsafe { (*self.0).__bindgen_anon_2.vm_flags };
        flags & bindings::VM_WRITE as bindings::vm_flags_t != 0
    }
}

impl RingMem {
    /// Allocates a zeroed ring with a data area of `data_size` bytes (a
    /// power of two, checked by the caller) and fills in the control page.
    pub(crate) fn new(data_size: u64, init: &RtbRingHeader) -> Result<Self> {
        if !data_size.is_power_of_two() || data_size < RTB_RING_PAGE {
            return Err(EINVAL);
        }
        let total = data_size.checked_add(RTB_RING_PAGE).ok_or(EINVAL)?;
        // SAFETY: plain allocation; the result is checked below.
        let mem = unsafe { glue::rtb_vmalloc_user(total as _) };
        let mem = NonNull::new(mem.cast::<u8>()).ok_or(ENOMEM)?;
        // INVARIANT: allocated above with the documented size.
        let this = Self { mem, data_size };
        // SAFETY: the control page is the first `RTB_RING_PAGE` bytes of our
        // allocation, page-aligned, and nobody else has access yet.
        unsafe { this.mem.as_ptr().cast::<RtbRingHeader>().write(*init) };
        Ok(this)
    }

    /// Bytes of the data area.
    pub(crate) fn data_size(&self) -> u64 {
        self.data_size
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area starts right after the control page, inside
        // the allocation (type invariant).
        unsafe { self.mem.as_ptr().add(RTB_RING_PAGE as usize) }
    }

    /// Checks that `[off, off + len)` lies inside the data area.
    fn check(&self, off: u64, len: u64) -> Result {
        match off.checked_add(len) {
            Some(end) if end <= self.data_size => Ok(()),
            _ => Err(EINVAL),
        }
    }

    /// Writes `bytes` at offset `off` of the data area.
    pub(crate) fn write(&mut self, off: u64, bytes: &[u8]) -> Result {
        self.check(off, bytes.len() as u64)?;
        // SAFETY: in bounds (checked); `&mut self` excludes other writers;
        // userspace only reads published records, which lie elsewhere.
        unsafe {
            core::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.data().add(off as usize),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// Copies the data of `bio` to offset `off`; it must be exactly `len`
    /// bytes.
    pub(crate) fn copy_bio(&mut self, off: u64, bio: &BioRef<'_>, len: u64) -> Result {
        self.check(off, len)?;
        // SAFETY: the destination is in bounds (checked) and exclusively ours
        // (`&mut self`); the bio is valid and its pages are stable while it
        // is in flight (the disk has BLK_FEAT_STABLE_WRITES).
        let copied = unsafe {
            glue::rtb_bio_copy_data(
                bio.as_ptr(),
                self.data().add(off as usize).cast(),
                len as usize,
            )
        };
        if copied as u64 != len {
            return Err(EIO);
        }
        Ok(())
    }

    /// CRC32C of `len` bytes at offset `off` of the data area.
    pub(crate) fn crc32c(&self, off: u64, len: u64) -> Result<u32> {
        self.check(off, len)?;
        // SAFETY: in bounds (checked); the bytes were written by us.
        let bytes =
            unsafe { core::slice::from_raw_parts(self.data().add(off as usize), len as usize) };
        Ok(super::crc32c(bytes))
    }

    /// Reads the record header at offset `off` of the data area.
    pub(crate) fn read_header(&self, off: u64) -> Result<RtbRecordHeader> {
        self.check(off, 64)?;
        let mut b = [0u8; 64];
        // SAFETY: in bounds (checked); only the kernel writes the ring.
        unsafe {
            core::ptr::copy_nonoverlapping(self.data().add(off as usize), b.as_mut_ptr(), 64)
        };
        Ok(RtbRecordHeader::from_bytes(&b))
    }

    fn header_u64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: `offset` is the offset of a u64 field of the control page
        // (callers use `offset_of!`), 8-aligned in a page-aligned allocation
        // that lives as long as `self`; userspace only reads it.
        unsafe { AtomicU64::from_ptr(self.mem.as_ptr().add(offset).cast()) }
    }

    /// Publishes the producer position: records before `head` are complete
    /// (release ordering, paired with the consumer's acquire load).
    pub(crate) fn publish_head(&mut self, head: u64, head_seq: u64) {
        self.header_u64(offset_of!(RtbRingHeader, head_seq))
            .store(head_seq, Ordering::Relaxed);
        self.header_u64(offset_of!(RtbRingHeader, head))
            .store(head, Ordering::Release);
    }

    /// Publishes the consumer position.
    pub(crate) fn publish_tail(&mut self, tail: u64, tail_seq: u64) {
        self.header_u64(offset_of!(RtbRingHeader, tail_seq))
            .store(tail_seq, Ordering::Relaxed);
        self.header_u64(offset_of!(RtbRingHeader, tail))
            .store(tail, Ordering::Release);
    }

    /// Sets `RTB_RING_F_*` bits in the control page.
    pub(crate) fn set_flags(&mut self, bits: u32) {
        // SAFETY: `flags` is a u32 field of the control page, 4-aligned, in
        // our allocation; userspace only reads it.
        let flags = unsafe {
            AtomicU32::from_ptr(
                self.mem
                    .as_ptr()
                    .add(offset_of!(RtbRingHeader, flags))
                    .cast(),
            )
        };
        flags.fetch_or(bits, Ordering::Release);
    }

    /// Maps the whole ring read-only into `vma`.
    pub(crate) fn map(&self, vma: &Vma) -> Result {
        // SAFETY: `vma` is valid during mmap (its invariant); `mem` came from
        // `vmalloc_user` and outlives every mapping: each VMA holds a
        // reference to the file, whose release drops the last `Arc` of the
        // ring that owns this memory.
        to_result(unsafe { glue::rtb_vma_map_readonly(vma.0, self.mem.as_ptr().cast()) })
    }
}

impl Drop for RingMem {
    fn drop(&mut self) {
        // SAFETY: allocated by `rtb_vmalloc_user` (type invariant), no longer
        // mapped anywhere (see `map`).
        unsafe { glue::rtb_vfree(self.mem.as_ptr().cast()) };
    }
}
