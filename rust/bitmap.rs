// SPDX-License-Identifier: GPL-2.0

//! Chunk bitmaps of a device: which chunks were written while the ring was
//! tracking instead of recording (the *dirty* set), and which were handed to
//! the agent for a resync that is not done yet (the *resync* set).
//!
//! One bit per `chunk_size` bytes, in 64-bit words (chunk `i` is bit
//! `i % 64` of word `i / 64`, the order of the ABI's bitmap). A bitmap keeps
//! its count of set bits, so the status costs nothing. All methods run under
//! the ring's mutex and never allocate: the words are allocated at attach.

use kernel::{alloc::flags::GFP_KERNEL, alloc::KVVec, prelude::*};

/// A bitmap of the chunks of one device.
pub(crate) struct ChunkBitmap {
    words: KVVec<u64>,
    /// Chunks (bits in use); the bits after it in the last word stay 0.
    chunks: u64,
    /// log2 of the chunk size in 512-byte sectors.
    sector_shift: u32,
    /// Bits set.
    count: u64,
}

impl ChunkBitmap {
    /// An empty bitmap for `capacity_sectors` sectors in chunks of
    /// `chunk_size` bytes (a power of two, at least 512).
    pub(crate) fn new(capacity_sectors: u64, chunk_size: u64) -> Result<Self> {
        if !chunk_size.is_power_of_two() || chunk_size < 512 {
            return Err(EINVAL);
        }
        let sector_shift = (chunk_size / 512).trailing_zeros();
        let chunks = capacity_sectors.div_ceil(1 << sector_shift);
        let nwords = usize::try_from(chunks.div_ceil(64)).map_err(|_| ENOMEM)?;
        let words = KVVec::from_elem(0, nwords, GFP_KERNEL)?;
        Ok(Self {
            words,
            chunks,
            sector_shift,
            count: 0,
        })
    }

    /// Chunks covered.
    pub(crate) fn chunks(&self) -> u64 {
        self.chunks
    }

    /// Bytes per chunk.
    pub(crate) fn chunk_size(&self) -> u64 {
        512u64 << self.sector_shift
    }

    /// Bits set.
    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// Bytes of the ABI's form of this bitmap: whole 64-bit words.
    pub(crate) fn abi_bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Sets the bits of the chunks that sectors `[start, end)` touch (an
    /// empty range touches none; a range past the end is clipped).
    pub(crate) fn set_sectors(&mut self, start: u64, end: u64) {
        if end <= start {
            return;
        }
        let first = start >> self.sector_shift;
        let last = ((end - 1) >> self.sector_shift).min(self.chunks.saturating_sub(1));
        let mut chunk = first;
        while chunk <= last {
            let word = (chunk / 64) as usize;
            let bit = chunk % 64;
            // Bits `bit..` of this word, up to `last`.
            let n = (64 - bit).min(last - chunk + 1);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            if let Some(w) = self.words.get_mut(word) {
                self.count += u64::from((mask & !*w).count_ones());
                *w |= mask;
            }
            chunk += n;
        }
    }

    /// Sets every chunk's bit.
    pub(crate) fn set_all(&mut self) {
        if self.chunks > 0 {
            self.set_sectors(0, self.chunks << self.sector_shift);
        }
    }

    /// Clears every bit.
    pub(crate) fn clear(&mut self) {
        for w in self.words.iter_mut() {
            *w = 0;
        }
        self.count = 0;
    }

    /// Sets every bit that is set in `other` (a bitmap of the same device).
    pub(crate) fn or_from(&mut self, other: &ChunkBitmap) {
        let mut count = 0;
        for (w, o) in self.words.iter_mut().zip(other.words.iter()) {
            *w |= *o;
            count += u64::from(w.count_ones());
        }
        self.count = count;
    }

    /// Sets the bits set in `bytes`, a bitmap in the ABI's form of exactly
    /// [`ChunkBitmap::abi_bytes`] bytes with no bit past the last chunk
    /// (`EINVAL` otherwise, and nothing changes). Returns how many bits
    /// were newly set.
    pub(crate) fn or_abi(&mut self, bytes: &[u8]) -> Result<u64> {
        if bytes.len() != self.abi_bytes() {
            return Err(EINVAL);
        }
        let word = |b: &[u8]| {
            let mut w = [0u8; 8];
            w.copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let tail_bits = self.chunks % 64;
        if tail_bits != 0 {
            if let Some(last) = bytes.chunks_exact(8).last() {
                if word(last) >> tail_bits != 0 {
                    return Err(EINVAL);
                }
            }
        }
        let mut added = 0;
        for (w, b) in self.words.iter_mut().zip(bytes.chunks_exact(8)) {
            let v = word(b);
            added += u64::from((v & !*w).count_ones());
            *w |= v;
        }
        self.count += added;
        Ok(added)
    }

    /// Writes the words, little-endian, into `out` (at least
    /// [`ChunkBitmap::abi_bytes`] long).
    pub(crate) fn export(&self, out: &mut [u8]) {
        for (w, dst) in self.words.iter().zip(out.chunks_exact_mut(8)) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
    }
}
