// SPDX-License-Identifier: GPL-2.0

//! The module's only unsafe boundary.
//!
//! Every `bindings::` call and every call into the C glue (`rust/glue.c`)
//! lives under this module. It exposes safe types whose invariants are
//! documented on the type and established where they are constructed; the
//! device, control and (later) ring logic use only these types.
//!
//! Linux 6.12's `kernel` crate has no bio, bio-based gendisk or misc-device
//! abstractions; when the module moves to a kernel that has them, this layer
//! is what shrinks.

pub(crate) mod bdev;
pub(crate) mod bio;
#[macro_use]
mod compat;
pub(crate) mod control;
pub(crate) mod disk;
mod glue;
pub(crate) mod ringfile;
pub(crate) mod ringmem;
pub(crate) mod wait;

use crate::uapi;
pub(crate) use compat::{cstr_bytes, user_ptr};
use compat::{AsBytes, FromBytes};
use kernel::{bindings, error::Error};

/// `GFP_NOIO`, which bindgen cannot see: `__GFP_RECLAIM` is
/// `__GFP_DIRECT_RECLAIM | __GFP_KSWAPD_RECLAIM` (include/linux/gfp_types.h).
pub(crate) const GFP_NOIO: bindings::gfp_t =
    (1 << bindings::___GFP_DIRECT_RECLAIM_BIT) | (1 << bindings::___GFP_KSWAPD_RECLAIM_BIT);

// Cross-check: GFP_KERNEL is GFP_NOIO plus __GFP_IO and __GFP_FS.
const _: () = assert!(
    bindings::GFP_KERNEL
        == GFP_NOIO | (1 << bindings::___GFP_IO_BIT) | (1 << bindings::___GFP_FS_BIT)
);

/// `EPROTO`, which `kernel::error::code` lacks in 6.12.
pub(crate) fn eproto() -> Error {
    Error::from_errno(-(bindings::EPROTO as i32))
}

/// `EOPNOTSUPP`, which `kernel::error::code` lacks in 6.12.
pub(crate) fn eopnotsupp() -> Error {
    Error::from_errno(-(bindings::EOPNOTSUPP as i32))
}

/// `EOVERFLOW`, which `kernel::error::code` lacks in 6.12.
pub(crate) fn eoverflow() -> Error {
    Error::from_errno(-(bindings::EOVERFLOW as i32))
}

/// CRC32C (Castagnoli) of `bytes`, the standard variant (initial value and
/// final XOR all ones) that userspace's `crc32c` crates compute.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    // SAFETY: `bytes` is a valid slice for the duration of the call.
    !unsafe { glue::rtb_crc32c(!0, bytes.as_ptr().cast(), bytes.len()) }
}

/// The time, `CLOCK_REALTIME` in nanoseconds.
pub(crate) fn real_time_ns() -> u64 {
    // SAFETY: reads the clock; callable in any context.
    unsafe { glue::rtb_ktime_real_ns() }
}

/// The time since boot, `CLOCK_MONOTONIC` in nanoseconds: for intervals.
pub(crate) fn monotonic_ns() -> u64 {
    // SAFETY: reads the clock; callable in any context.
    let ns = unsafe { bindings::ktime_get() };
    // The monotonic clock starts at 0 and never goes back.
    u64::try_from(ns).unwrap_or(0)
}

/// A random 64-bit number.
pub(crate) fn random_u64() -> u64 {
    // SAFETY: callable in process context; may not block on entropy in
    // 6.12 (it returns what the CRNG has).
    unsafe { bindings::get_random_u64() }
}

/// Whether the calling task may administer devices (`CAP_SYS_ADMIN`).
pub(crate) fn capable_sys_admin() -> bool {
    // SAFETY: `capable` only inspects the current task's credentials.
    unsafe { bindings::capable(bindings::CAP_SYS_ADMIN as i32) }
}

/// A reference on this module: `rmmod` fails with `EBUSY` while one exists.
///
/// # Invariants
///
/// The module's reference count was incremented when this was created and
/// is decremented when it is dropped.
pub(crate) struct ModuleRef(());

impl ModuleRef {
    /// Takes a reference on this module.
    pub(crate) fn get() -> Self {
        // SAFETY: the module is live: this code runs from an ioctl of a file
        // whose `fops.owner` is this module, which holds a reference.
        unsafe { bindings::__module_get(compat::this_module()) };
        // INVARIANT: the reference was taken above.
        Self(())
    }
}

impl Drop for ModuleRef {
    fn drop(&mut self) {
        // SAFETY: by the type invariant this reference was taken in `get`.
        unsafe { bindings::module_put(compat::this_module()) };
    }
}

// SAFETY: the ABI structures consist of integers and integer arrays only, with
// explicit padding fields (sizes asserted in uapi.rs), so every bit pattern is
// a valid value and no byte is uninitialised padding.
unsafe impl FromBytes for uapi::RtbVersion {}
// SAFETY: see above.
unsafe impl AsBytes for uapi::RtbVersion {}
// SAFETY: see above.
unsafe impl FromBytes for uapi::RtbAttach {}
// SAFETY: see above.
unsafe impl AsBytes for uapi::RtbAttach {}
// SAFETY: see above.
unsafe impl FromBytes for uapi::RtbDetach {}
// SAFETY: see above.
unsafe impl AsBytes for uapi::RtbDetach {}
// SAFETY: see above.
unsafe impl FromBytes for uapi::RtbList {}
// SAFETY: see above.
unsafe impl AsBytes for uapi::RtbList {}
// SAFETY: see above.
unsafe impl AsBytes for uapi::RtbDeviceInfo {}
// SAFETY: see above.
unsafe impl FromBytes for uapi::RtbRingOpen {}
// SAFETY: see above.
unsafe impl FromBytes for uapi::RtbRingAck {}
// SAFETY: see above.
unsafe impl FromBytes for uapi::RtbMark {}
// SAFETY: see above.
unsafe impl AsBytes for uapi::RtbMark {}
// SAFETY: as above: repr(C), integers only, explicit padding.
unsafe impl FromBytes for uapi::RtbResync {}
// SAFETY: as above.
unsafe impl AsBytes for uapi::RtbResync {}
// SAFETY: as above.
unsafe impl FromBytes for uapi::RtbDirty {}
// SAFETY: as above.
unsafe impl AsBytes for uapi::RtbDirty {}
// SAFETY: as above.
unsafe impl FromBytes for uapi::RtbSet {}
