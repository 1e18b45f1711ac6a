//! The memory a ring lives in: the kernel's shared mapping, or a buffer.

use std::sync::Arc;

/// Memory holding a ring: the control page ([`rtbackup_abi::RtbRingHeader`])
/// at offset 0, the data area at [`rtbackup_abi::RTB_RING_PAGE`].
///
/// The memory may be shared with a producer that changes it concurrently
/// (the kernel); [`crate::RingView`] reads the control page's fields only
/// with atomic loads and hands out slices only of published records, which
/// the producer leaves alone until the consumer position passes them.
///
/// # Safety
///
/// Implementors guarantee that `as_ptr()` is aligned to 8 bytes and valid
/// for reads of `len()` bytes, at the same address, for as long as the
/// value lives, and that nobody writes bytes of the data area in the
/// published, unacknowledged range `[tail, head)` of the ring it holds.
pub unsafe trait SharedMemory: Send + Sync {
    /// Start of the memory.
    fn as_ptr(&self) -> *const u8;
    /// Bytes of memory.
    fn len(&self) -> usize;
    /// Whether `len()` is 0.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// SAFETY: a memory map stays at its address until dropped; mmap returns
// page-aligned addresses; the kernel only writes the data area outside
// `[tail, head)` (ABI v2 contract in rust/uapi.rs).
unsafe impl SharedMemory for memmap2::Mmap {
    fn as_ptr(&self) -> *const u8 {
        <[u8]>::as_ptr(self)
    }
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
}

// SAFETY: forwards to `T`, which the `Arc` keeps alive at the same address.
unsafe impl<T: SharedMemory + ?Sized> SharedMemory for Arc<T> {
    fn as_ptr(&self) -> *const u8 {
        (**self).as_ptr()
    }
    fn len(&self) -> usize {
        (**self).len()
    }
}

/// An owned, 8-byte aligned byte buffer holding a ring image (e.g. a
/// [`crate::mem::MemRing::snapshot`] to inspect or corrupt in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        Self {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    /// A copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut b = Self::zeroed(bytes.len());
        b.as_mut_bytes().copy_from_slice(bytes);
        b
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialized bytes; u8 has no
        // alignment or validity requirements.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    /// The bytes, to change.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_bytes`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

// SAFETY: the buffer is 8-aligned (a `Vec<u64>`), is not moved or changed
// while borrowed (`as_mut_bytes` needs `&mut self`, which a `RingView`
// owning it never hands out).
unsafe impl SharedMemory for AlignedBytes {
    fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }
    fn len(&self) -> usize {
        self.len
    }
}
