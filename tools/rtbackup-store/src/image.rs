//! Applying records to an image and copying images sparsely.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{copy_file_range, fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};
use rtbackup_proto::{RecordRef, RTB_OP_DISCARD, RTB_OP_RESYNC, RTB_OP_WRITE, RTB_OP_WRITE_ZEROES};

/// Chunk size for copies and zero fills.
pub(crate) const CHUNK: usize = 1 << 20;

/// A file that records are applied to: the image, or a restore output.
pub(crate) struct Target<'a> {
    pub(crate) file: &'a File,
    /// Whether zeroing may punch holes (a regular file) or must write zeroes
    /// (a block device).
    pub(crate) sparse: bool,
    /// Reused zero buffer.
    zeroes: Vec<u8>,
}

impl<'a> Target<'a> {
    pub(crate) fn new(file: &'a File, sparse: bool) -> Self {
        Self {
            file,
            sparse,
            zeroes: Vec::new(),
        }
    }

    /// Makes `[off, off + len)` read as zeroes.
    pub(crate) fn zero(&mut self, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.sparse {
            let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
            match fallocate(self.file.as_raw_fd(), flags, off as i64, len as i64) {
                Ok(()) => return Ok(()),
                Err(e) if punch_error_is_fatal(e) => return Err(e.into()),
                Err(e) => {
                    // Not supported here (EOPNOTSUPP, ENOSYS, EINVAL, ...):
                    // write zeroes, and stop trying for this target.
                    tracing::debug!("cannot punch holes ({e}); writing zeroes instead");
                    self.sparse = false;
                }
            }
        }
        if self.zeroes.is_empty() {
            self.zeroes = vec![0u8; CHUNK];
        }
        let mut done = 0;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            self.file.write_all_at(&self.zeroes[..n], off + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Applies one record (validated and inside the volume): a resync
    /// chunk is written like a write.
    pub(crate) fn apply(&mut self, rec: &RecordRef<'_>) -> io::Result<()> {
        let (start, end) = rec.byte_range();
        match rec.op() {
            RTB_OP_WRITE | RTB_OP_RESYNC => self.file.write_all_at(rec.payload, start),
            RTB_OP_DISCARD | RTB_OP_WRITE_ZEROES => self.zero(start, end - start),
            _ => Ok(()),
        }
    }
}

/// Whether a failed hole punch is an error of the storage (EIO, ENOSPC)
/// rather than a lack of support, after which zeroes are written instead.
fn punch_error_is_fatal(e: Errno) -> bool {
    matches!(e, Errno::EIO | Errno::ENOSPC)
}

/// The next data region of `f` at or after `pos` and before `size`, using
/// `SEEK_DATA`/`SEEK_HOLE`; `[pos, size)` if the file system cannot tell.
fn next_data(f: &File, pos: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let start = match lseek(fd, pos as i64, Whence::SeekData) {
        Ok(s) => s as u64,
        Err(Errno::ENXIO) => return Ok(None),
        Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => return Ok(Some((pos, size))),
        Err(e) => return Err(e.into()),
    };
    if start >= size {
        return Ok(None);
    }
    let end = lseek(fd, start as i64, Whence::SeekHole)?;
    Ok(Some((start, (end as u64).min(size))))
}

/// Whether `buf` is all zeroes. Compares 4 KiB at a time with a zero page
/// (memcmp, vectorised) rather than byte by byte: restores scan every
/// byte of the image with this.
fn is_zero(buf: &[u8]) -> bool {
    static ZERO: [u8; 4096] = [0; 4096];
    buf.chunks(ZERO.len()).all(|c| c == &ZERO[..c.len()])
}

/// Copies `[pos, pos + len)` of `src` to the same place in `dst` inside
/// the kernel (`copy_file_range`: a reflink on XFS or Btrfs, a page cache
/// copy without the trip through user space elsewhere). Returns how many
/// bytes it copied: fewer than `len` when the kernel stopped early or
/// cannot copy between these two files (different file systems on older
/// kernels, no support); 0 tells the caller to copy through a buffer.
fn kernel_copy(src: &File, dst: &File, pos: u64, len: u64) -> io::Result<u64> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = (pos + done) as i64;
        let mut off_out = off_in;
        let want = (len - done) as usize;
        match copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
            Ok(0) => break,
            Ok(n) => done += n as u64,
            Err(Errno::EINTR) => {}
            Err(e) if kernel_copy_unsupported(e) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// Whether `copy_file_range` failed because it cannot copy between these
/// files (rather than because of the storage: EIO, ENOSPC).
fn kernel_copy_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::EXDEV | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EBADF
    )
}

/// Copies `size` bytes of `src` to `dst`, skipping its holes (the store
/// keeps images sparse: discards and zeroing punch holes). Data regions
/// are copied by the kernel ([`kernel_copy`]) where it can, between two
/// regular files, whole (zeroes written as data stay data); otherwise
/// through one buffer, skipping all-zero chunks too. When `dst` is not
/// known to read as zeroes already (`dst_zeroed` false), skipped ranges are
/// zeroed in it. Memory: one chunk. Returns the bytes of data written
/// (the skipped ranges not counted).
pub(crate) fn sparse_copy(
    src: &File,
    size: u64,
    dst: &mut Target<'_>,
    dst_zeroed: bool,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    copy_regions(src, size, dst, dst_zeroed, true, progress)
}

/// [`sparse_copy`], trying the kernel's copy first if `in_kernel`.
fn copy_regions(
    src: &File,
    size: u64,
    dst: &mut Target<'_>,
    dst_zeroed: bool,
    in_kernel: bool,
    progress: &mut dyn FnMut(u64),
) -> io::Result<u64> {
    // copy_file_range copies between regular files only.
    let mut in_kernel = in_kernel && dst.file.metadata()?.is_file();
    let mut buf = Vec::new();
    let mut written = 0;
    let mut pos = 0u64;
    // Start of the range not yet written to `dst` (zero in the source).
    let mut zero_from = 0u64;
    let flush_zero = |dst: &mut Target<'_>, from: u64, to: u64| -> io::Result<()> {
        if !dst_zeroed && to > from {
            dst.zero(from, to - from)?;
        }
        Ok(())
    };
    while pos < size {
        let Some((start, end)) = next_data(src, pos, size)? else {
            break;
        };
        pos = start;
        while pos < end {
            let n = (end - pos).min(CHUNK as u64) as usize;
            if in_kernel {
                let done = kernel_copy(src, dst.file, pos, n as u64)?;
                if done > 0 {
                    flush_zero(dst, zero_from, pos)?;
                    written += done;
                    pos += done;
                    zero_from = pos;
                    progress(pos);
                    continue;
                }
                // Nothing copied (the source ends early, or the kernel
                // cannot): the buffer says which.
                in_kernel = false;
            }
            if buf.is_empty() {
                buf = vec![0u8; CHUNK];
            }
            src.read_exact_at(&mut buf[..n], pos)?;
            if !is_zero(&buf[..n]) {
                flush_zero(dst, zero_from, pos)?;
                dst.file.write_all_at(&buf[..n], pos)?;
                written += n as u64;
                zero_from = pos + n as u64;
            }
            pos += n as u64;
            progress(pos);
        }
    }
    flush_zero(dst, zero_from, size)?;
    progress(size);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_check() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 10000]));
        for at in [0, 4095, 4096, 9999] {
            let mut b = [0u8; 10000];
            b[at] = 1;
            assert!(!is_zero(&b), "{at}");
        }
    }

    #[test]
    fn sparse_copy_preserves_content() {
        let d = tempfile::tempdir().unwrap();
        let src = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("src"))
            .unwrap();
        let size = 5 * CHUNK as u64 + 1000;
        src.set_len(size).unwrap();
        src.write_all_at(b"hello", 3).unwrap();
        src.write_all_at(&[7u8; 3000], 2 * CHUNK as u64 - 100)
            .unwrap();
        src.write_all_at(b"end", size - 3).unwrap();
        for (zeroed, in_kernel) in [(true, true), (false, true), (true, false), (false, false)] {
            let dst = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(d.path().join("dst"))
                .unwrap();
            if !zeroed {
                dst.write_all_at(&vec![0xffu8; size as usize], 0).unwrap();
            } else {
                dst.set_len(size).unwrap();
            }
            let mut t = Target::new(&dst, !zeroed);
            let mut last = 0;
            let data = copy_regions(&src, size, &mut t, zeroed, in_kernel, &mut |p| {
                assert!(p >= last && p <= size);
                last = p;
            })
            .unwrap();
            assert_eq!(last, size);
            let a = std::fs::read(d.path().join("src")).unwrap();
            let b = std::fs::read(d.path().join("dst")).unwrap();
            assert!(a == b, "zeroed={zeroed} in_kernel={in_kernel}");
            // The buffer skips all-zero chunks; the kernel copies the
            // source's data regions whole.
            assert!(data > 0 && data <= size, "{data}");
        }
    }

    #[test]
    fn only_io_errors_of_hole_punching_are_fatal() {
        for e in [Errno::EIO, Errno::ENOSPC] {
            assert!(punch_error_is_fatal(e), "{e}");
        }
        for e in [
            Errno::EINVAL,
            Errno::ENOSYS,
            Errno::EOPNOTSUPP,
            Errno::ENODEV,
        ] {
            assert!(!punch_error_is_fatal(e), "{e}");
        }
    }

    #[test]
    fn zero_without_holes_writes_zeroes() {
        let d = tempfile::tempdir().unwrap();
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.path().join("f"))
            .unwrap();
        f.write_all_at(&vec![1u8; 3 * CHUNK], 0).unwrap();
        for sparse in [false, true] {
            let mut t = Target::new(&f, sparse);
            t.zero(10, 2 * CHUNK as u64).unwrap();
            let b = std::fs::read(d.path().join("f")).unwrap();
            assert!(b[..10].iter().all(|&x| x == 1));
            assert!(b[10..10 + 2 * CHUNK].iter().all(|&x| x == 0));
            assert!(b[10 + 2 * CHUNK..].iter().all(|&x| x == 1));
            f.write_all_at(&vec![1u8; 3 * CHUNK], 0).unwrap();
        }
    }
}
