//! Test helpers for the rtbackup VM tests; see the binaries in `src/bin`.

use rtbackup_abi::*;
use std::ffi::c_void;

/// `_IOC_WRITE`: userspace writes, the kernel reads.
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: the kernel writes, userspace reads.
pub const IOC_READ: u32 = 2;

/// `_IOC(dir, ty, nr, size)` of include/uapi/asm-generic/ioctl.h, with each
/// field cut to its width (two direction bits, 14 size bits).
pub fn ioc_type(dir: u32, ty: u32, nr: u32, size: u32) -> u32 {
    ((dir & 3) << 30) | ((size & 0x3fff) << 16) | ((ty & 0xff) << 8) | (nr & 0xff)
}

/// `_IOC(dir, 0xBB, nr, size)`: a number of rtbackup's type.
pub fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
    ioc_type(dir, RTB_IOC_MAGIC, nr, size)
}

/// The errno of the last failed call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// Issues an ioctl: its return value, or the errno.
///
/// # Safety
///
/// The kernel may write to `arg` and to addresses in the structure there:
/// each must be memory that nothing else uses (a request structure of the
/// caller's, a scratch area) or an address that cannot be written.
pub unsafe fn ioctl_ret(fd: i32, cmd: u32, arg: *mut c_void) -> Result<i32, i32> {
    // SAFETY: the kernel validates every argument, and bad pointers make it
    // fail with EFAULT; what it may write to is the caller's (see above).
    let r = unsafe { libc::ioctl(fd, cmd as _, arg) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// The attached devices' entries (`RTB_IOC_LIST`), or the errno.
pub fn list(fd: i32) -> Result<Vec<RtbDeviceInfo>, i32> {
    let mut infos = vec![RtbDeviceInfo::ZERO; RTB_MAX_DEVICES as usize];
    let n = list_into(fd, &mut infos)?;
    infos.truncate(n);
    Ok(infos)
}

/// Lists the attached devices into `buf` (at most [`RTB_MAX_DEVICES`]
/// entries are used) and returns how many it holds, or the errno; reuses
/// the buffer, so a caller listing often does not clear 150 KB each time.
pub fn list_into(fd: i32, buf: &mut [RtbDeviceInfo]) -> Result<usize, i32> {
    let capacity = buf.len().min(RTB_MAX_DEVICES as usize);
    let mut req = RtbList::ZERO;
    req.abi_version = RTB_ABI_VERSION;
    req.capacity = capacity as u32;
    req.devices = buf.as_mut_ptr() as u64;
    // SAFETY: the kernel writes `req` and at most `capacity` entries of
    // `buf`, both ours.
    unsafe { ioctl_ret(fd, RTB_IOC_LIST, (&raw mut req).cast()) }?;
    Ok((req.count as usize).min(capacity))
}
