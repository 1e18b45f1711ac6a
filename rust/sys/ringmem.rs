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
use kernel::{alloc::flags::GFP_KERNEL, bindings, error::to_result, prelude::*, sync::Arc};

/// The allocation behind a ring, shared by its writer ([`RingMem`]) and its
/// mapper ([`RingMapper`]); freed when both are gone.
///
/// # Invariants
///
/// `mem` was returned by `rtb_vmalloc_user(RTB_RING_PAGE + data_size)`
/// (zeroed, page-aligned) and is freed only in `drop`; `data_size` is a
/// power of two of at least a page.
struct RingAlloc {
    mem: NonNull<u8>,
    data_size: u64,
}

// SAFETY: the allocation is plain memory; who may write it is decided by
// `RingMem` (`&mut self`), and mapping it only inserts its pages.
unsafe impl Send for RingAlloc {}
// SAFETY: see above.
unsafe impl Sync for RingAlloc {}

impl Drop for RingAlloc {
    fn drop(&mut self) {
        // SAFETY: allocated by `rtb_vmalloc_user` (type invariant). No
        // mapping is left: each VMA holds the ring file, whose release drops
        // the last reference to the ring and so to this allocation.
        unsafe { glue::rtb_vfree(self.mem.as_ptr().cast()) };
    }
}

/// A ring's shared memory, as its writer sees it. Every method that writes
/// takes `&mut self`: the ring keeps this value under its mutex.
pub(crate) struct RingMem {
    alloc: Arc<RingAlloc>,
}

/// Maps a ring's memory into user address spaces; usable without the
/// ring's mutex (mapping only inserts pages).
pub(crate) struct RingMapper {
    alloc: Arc<RingAlloc>,
}

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

    fn flags(&self) -> bindings::vm_flags_t {
        // SAFETY: valid VMA (type invariant); `vm_flags` is the readable
        // alias of the flags union.
        unsafe { (*self.0).__bindgen_anon_2.vm_flags }
    }

    /// Whether the mapping was asked for with `PROT_WRITE` or `PROT_EXEC`.
    pub(crate) fn writable_or_executable(&self) -> bool {
        let wx = (bindings::VM_WRITE | bindings::VM_EXEC) as bindings::vm_flags_t;
        self.flags() & wx != 0
    }
}

impl RingMem {
    /// Allocates a zeroed ring with a data area of `data_size` bytes (a
    /// power of two, checked by the caller) and fills in the control page.
    pub(crate) fn new(data_size: u64, init: &RtbRingHeader) -> Result<(Self, RingMapper)> {
        if !data_size.is_power_of_two() || data_size < RTB_RING_PAGE {
            return Err(EINVAL);
        }
        let total = data_size.checked_add(RTB_RING_PAGE).ok_or(EINVAL)?;
        let total = kernel::ffi::c_ulong::try_from(total).map_err(|_| EINVAL)?;
        // SAFETY: plain allocation; the result is checked below.
        let mem = unsafe { glue::rtb_vmalloc_user(total) };
        let mem = NonNull::new(mem.cast::<u8>()).ok_or(ENOMEM)?;
        // INVARIANT: allocated above with the documented size.
        let alloc = RingAlloc { mem, data_size };
        // SAFETY: the control page is the first `RTB_RING_PAGE` bytes of our
        // allocation, page-aligned, and nobody else has access yet.
        unsafe { mem.as_ptr().cast::<RtbRingHeader>().write(*init) };
        let alloc = Arc::new(alloc, GFP_KERNEL)?;
        Ok((
            Self {
                alloc: alloc.clone(),
            },
            RingMapper { alloc },
        ))
    }

    fn mem(&self) -> NonNull<u8> {
        self.alloc.mem
    }

    /// Bytes of the data area.
    pub(crate) fn data_size(&self) -> u64 {
        self.alloc.data_size
    }

    fn data(&self) -> *mut u8 {
        // SAFETY: the data area starts right after the control page, inside
        // the allocation (invariant of `RingAlloc`).
        unsafe { self.mem().as_ptr().add(RTB_RING_PAGE as usize) }
    }

    /// Checks that `[off, off + len)` lies inside the data area.
    fn check(&self, off: u64, len: u64) -> Result {
        match off.checked_add(len) {
            Some(end) if end <= self.data_size() => Ok(()),
            _ => Err(EINVAL),
        }
    }

    /// Writes `bytes` at offset `off` of the data area.
    pub(crate) fn write(&mut self, off: u64, bytes: &[u8]) -> Result {
        self.check(off, bytes.len() as u64)?;
        // SAFETY: in bounds (checked); `&mut self` excludes other kernel
        // writers. Userspace may read these bytes concurrently (a racy read
        // of memory it maps is its own affair); it consumes only records
        // before the published head, and this range is after it.
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
        // among kernel writers (`&mut self`; see `write` for userspace); the
        // bio is valid and its pages are mapped by the glue for the copy.
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
        unsafe { AtomicU64::from_ptr(self.mem().as_ptr().add(offset).cast()) }
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

    /// Publishes the `RTB_RING_F_*` bits of the control page.
    pub(crate) fn publish_flags(&mut self, bits: u32) {
        // SAFETY: `flags` is a u32 field of the control page, 4-aligned, in
        // our allocation; userspace only reads it.
        let flags = unsafe {
            AtomicU32::from_ptr(
                self.mem()
                    .as_ptr()
                    .add(offset_of!(RtbRingHeader, flags))
                    .cast(),
            )
        };
        flags.store(bits, Ordering::Release);
    }
}

impl RingMapper {
    /// Bytes of the control page and data area.
    pub(crate) fn len(&self) -> u64 {
        RTB_RING_PAGE + self.alloc.data_size
    }

    /// Maps the ring read-only (and never writable or executable) into
    /// `vma`, which must not be longer than [`RingMapper::len`].
    pub(crate) fn map(&self, vma: &Vma) -> Result {
        if vma.len() > self.len() {
            return Err(EINVAL);
        }
        // SAFETY: `vma` is valid during mmap (its invariant); the memory
        // came from `vmalloc_user`, is at least as long as the VMA (checked)
        // and outlives every mapping: each VMA holds a reference to the ring
        // file, whose release drops the last reference to this allocation.
        to_result(unsafe { glue::rtb_vma_map_readonly(vma.0, self.alloc.mem.as_ptr().cast()) })
    }
}
