//! Reading a block device as it is now, bypassing the page cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of `O_DIRECT` buffers (a page: enough for any block size).
const DIRECT_ALIGN: usize = 4096;

/// A block device opened with `O_DIRECT`, for reads of what the device
/// holds (its page cache may be stale: filesystems write data around it).
#[derive(Debug)]
pub struct DirectReader {
    file: File,
    bounce: Vec<u8>,
}

impl DirectReader {
    /// Opens `path` read-only with `O_DIRECT`.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        Ok(Self {
            file,
            bounce: Vec::new(),
        })
    }

    /// Reads through the bounce buffer of an earlier reader (from
    /// [`into_buffer`](Self::into_buffer)): a new buffer costs an
    /// allocation and a zero fill per read.
    pub fn with_buffer(mut self, bounce: Vec<u8>) -> Self {
        self.bounce = bounce;
        self
    }

    /// The bounce buffer, for [`with_buffer`](Self::with_buffer).
    pub fn into_buffer(self) -> Vec<u8> {
        self.bounce
    }

    /// Fills `buf` from byte `offset`; both multiples of the logical block
    /// size (the buffer's address need not be aligned: reads go through an
    /// aligned bounce buffer).
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        // Grown, never shrunk: bytes already there are not zeroed again.
        if self.bounce.len() < buf.len() + DIRECT_ALIGN {
            self.bounce.resize(buf.len() + DIRECT_ALIGN, 0);
        }
        let at = self.bounce.as_ptr().align_offset(DIRECT_ALIGN);
        let aligned = &mut self.bounce[at..at + buf.len()];
        self.file.read_exact_at(aligned, offset)?;
        buf.copy_from_slice(aligned);
        Ok(())
    }
}
