// SPDX-License-Identifier: GPL-2.0

//! Bios: a read-only view of a bio in flight, request operations, status
//! codes, and the `bio_set` that clones are allocated from.
//!
//! C header: [`include/linux/blk_types.h`](srctree/include/linux/blk_types.h)

use core::{marker::PhantomData, ptr::NonNull};
use kernel::{
    alloc::flags::GFP_KERNEL, bindings, error::to_result, error::Error, prelude::*, types::Opaque,
};

/// `REQ_OP_MASK`: the low `REQ_OP_BITS` bits of `bi_opf` hold the operation.
const REQ_OP_MASK: u32 = (1 << bindings::REQ_OP_BITS) - 1;
/// `REQ_FUA`.
const REQ_FUA: u32 = 1 << bindings::req_flag_bits___REQ_FUA;
/// `REQ_PREFLUSH`.
const REQ_PREFLUSH: u32 = 1 << bindings::req_flag_bits___REQ_PREFLUSH;

/// The operation of a bio (`enum req_op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReqOp {
    /// `REQ_OP_READ`.
    Read,
    /// `REQ_OP_WRITE`.
    Write,
    /// `REQ_OP_FLUSH` (only seen below request-based queues; bio-based
    /// drivers get empty `REQ_OP_WRITE | REQ_PREFLUSH` bios instead).
    Flush,
    /// `REQ_OP_DISCARD`.
    Discard,
    /// `REQ_OP_SECURE_ERASE`.
    SecureErase,
    /// `REQ_OP_WRITE_ZEROES`.
    WriteZeroes,
    /// Any other operation (zone management, driver private).
    Other(u32),
}

/// A `blk_status_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlkStatus(bindings::blk_status_t);

impl BlkStatus {
    /// `BLK_STS_OK`.
    pub(crate) const OK: Self = Self(bindings::BLK_STS_OK as bindings::blk_status_t);

    /// The status the block layer uses for `err` (`errno_to_blk_status`).
    pub(crate) fn from_error(err: Error) -> Self {
        // SAFETY: `errno_to_blk_status` is a pure table lookup.
        Self(unsafe { bindings::errno_to_blk_status(err.to_errno()) })
    }

    /// `BLK_STS_NOTSUPP`.
    pub(crate) fn not_supported() -> Self {
        Self::from_error(super::eopnotsupp())
    }

    /// A raw status from the block layer.
    pub(super) fn from_raw(raw: bindings::blk_status_t) -> Self {
        Self(raw)
    }

    /// Whether this is `BLK_STS_OK`.
    pub(crate) fn is_ok(self) -> bool {
        self == Self::OK
    }

    /// The raw value.
    pub(crate) fn raw(self) -> bindings::blk_status_t {
        self.0
    }
}

/// A read-only view of a bio that the block layer handed to this module.
///
/// # Invariants
///
/// `bio` points to a valid bio that is not completed while the view exists
/// (lifetime `'a`).
pub(crate) struct BioRef<'a> {
    bio: NonNull<bindings::bio>,
    _p: PhantomData<&'a bindings::bio>,
}

impl<'a> BioRef<'a> {
    /// Creates a view of `bio`.
    ///
    /// # Safety
    ///
    /// `bio` must be valid and must not be completed during `'a`.
    pub(super) unsafe fn from_raw(bio: NonNull<bindings::bio>) -> Self {
        // INVARIANT: guaranteed by the caller.
        Self {
            bio,
            _p: PhantomData,
        }
    }

    pub(super) fn as_ptr(&self) -> *mut bindings::bio {
        self.bio.as_ptr()
    }

    /// First 512-byte sector.
    pub(crate) fn sector(&self) -> u64 {
        // SAFETY: `self.bio` is valid (type invariant); see `bytes`.
        unsafe { (*self.bio.as_ptr()).bi_iter.bi_sector }
    }

    fn opf(&self) -> u32 {
        // SAFETY: `self.bio` is valid (type invariant); `bi_opf` does not
        // change while the bio is ours.
        unsafe { (*self.bio.as_ptr()).bi_opf }
    }

    /// The operation.
    pub(crate) fn op(&self) -> ReqOp {
        let op = self.opf() & REQ_OP_MASK;
        match op {
            bindings::req_op_REQ_OP_READ => ReqOp::Read,
            bindings::req_op_REQ_OP_WRITE => ReqOp::Write,
            bindings::req_op_REQ_OP_FLUSH => ReqOp::Flush,
            bindings::req_op_REQ_OP_DISCARD => ReqOp::Discard,
            bindings::req_op_REQ_OP_SECURE_ERASE => ReqOp::SecureErase,
            bindings::req_op_REQ_OP_WRITE_ZEROES => ReqOp::WriteZeroes,
            other => ReqOp::Other(other),
        }
    }

    /// Whether the bio carries `REQ_FUA`.
    pub(crate) fn is_fua(&self) -> bool {
        self.opf() & REQ_FUA != 0
    }

    /// Whether the bio carries `REQ_PREFLUSH`.
    pub(crate) fn is_preflush(&self) -> bool {
        self.opf() & REQ_PREFLUSH != 0
    }

    /// Size in bytes.
    pub(crate) fn bytes(&self) -> u32 {
        // SAFETY: `self.bio` is valid (type invariant); the original bio's
        // iterator is not advanced by this module or the layers below, which
        // work on clones.
        unsafe { (*self.bio.as_ptr()).bi_iter.bi_size }
    }
}

/// A pool that bio clones are allocated from, so that allocation in the I/O
/// path can always make progress (mempool-backed, `GFP_NOIO`).
///
/// # Invariants
///
/// `inner` was zeroed and then initialised by `bioset_init`; it is released
/// by `bioset_exit` on drop. It lives on the heap and never moves.
pub(super) struct BioSet {
    inner: KBox<Opaque<bindings::bio_set>>,
}

// SAFETY: a bio_set is used from any CPU by design; its pools are locked.
unsafe impl Send for BioSet {}
// SAFETY: see above.
unsafe impl Sync for BioSet {}

impl BioSet {
    /// Creates a pool of `pool_size` reserved bios with `front_pad` bytes of
    /// per-bio context in front of each.
    pub(super) fn new(pool_size: u32, front_pad: u32) -> Result<Self> {
        let inner = KBox::new(Opaque::<bindings::bio_set>::uninit(), GFP_KERNEL)?;
        // SAFETY: `inner.get()` is valid for writing one `bio_set`;
        // `bioset_init` expects it zeroed (and calls `bioset_exit` on its own
        // failure path, which must see zeroed fields).
        unsafe { core::ptr::write_bytes(inner.get(), 0, 1) };
        // SAFETY: `inner.get()` is a zeroed, heap-allocated `bio_set`.
        to_result(unsafe { bindings::bioset_init(inner.get(), pool_size, front_pad, 0) })?;
        // INVARIANT: initialised above, on the heap.
        Ok(Self { inner })
    }

    /// The raw pointer.
    pub(super) fn as_ptr(&self) -> *mut bindings::bio_set {
        self.inner.get()
    }
}

impl Drop for BioSet {
    fn drop(&mut self) {
        // SAFETY: initialised by `bioset_init` (type invariant); the owner
        // guarantees no bio from this set is still allocated.
        unsafe { bindings::bioset_exit(self.inner.get()) };
    }
}
