// SPDX-License-Identifier: GPL-2.0

//! The control misc device, `/dev/rtbackup-control`.
//!
//! The `struct miscdevice` and its `file_operations` are static C structures
//! in the glue (6.12 has no misc-device abstraction); their
//! `unlocked_ioctl` is [`rtb_control_ioctl`] below, which hands the request
//! to [`Control::ioctl`](crate::control::Control::ioctl).
//!
//! C header: [`include/linux/miscdevice.h`](srctree/include/linux/miscdevice.h)

use super::{compat, glue};
use crate::{control::Control, uapi::RTB_CONTROL_NAME};
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::{
    bindings,
    error::to_result,
    ffi::{c_long, c_uint, c_ulong},
    prelude::*,
};

const NAME_LEN: usize = RTB_CONTROL_NAME.len() + 1;

/// `RTB_CONTROL_NAME` with a terminating NUL, as `misc_register` wants.
static NAME: [u8; NAME_LEN] = {
    let src = RTB_CONTROL_NAME.as_bytes();
    let mut buf = [0u8; NAME_LEN];
    let mut i = 0;
    while i < src.len() {
        buf[i] = src[i];
        i += 1;
    }
    buf
};

/// The control state that ioctls are dispatched to; null when the device is
/// not registered.
static CONTROL: AtomicPtr<Control> = AtomicPtr::new(core::ptr::null_mut());

/// The registered control device.
///
/// # Invariants
///
/// While this value exists, the misc device is registered and `CONTROL`
/// points to a live `Control`.
pub(crate) struct ControlDevice(());

impl ControlDevice {
    /// Registers `/dev/rtbackup-control`, dispatching to `control`.
    ///
    /// # Safety
    ///
    /// `control` must stay valid and must not move until the returned value
    /// is dropped.
    pub(crate) unsafe fn register(control: &Control) -> Result<Self> {
        CONTROL.store(core::ptr::from_ref(control).cast_mut(), Ordering::Release);
        // SAFETY: `NAME` is static and NUL-terminated.
        let ret = unsafe { glue::rtb_control_register(NAME.as_ptr()) };
        if let Err(e) = to_result(ret) {
            CONTROL.store(core::ptr::null_mut(), Ordering::Release);
            return Err(e);
        }
        // INVARIANT: registered above; `control` outlives us (caller).
        Ok(Self(()))
    }
}

impl Drop for ControlDevice {
    fn drop(&mut self) {
        // SAFETY: registered (type invariant). After this no new file can be
        // opened; files already open hold a module reference (fops.owner),
        // so no ioctl can be running while the module is being unloaded.
        unsafe { glue::rtb_control_deregister() };
        CONTROL.store(core::ptr::null_mut(), Ordering::Release);
    }
}

/// `unlocked_ioctl` of `/dev/rtbackup-control` (called from `rust/glue.c`).
///
/// # Safety
///
/// Called by the VFS for an open file of the control device, in process
/// context; `arg` is an untrusted user address or value.
#[no_mangle]
pub(crate) unsafe extern "C" fn rtb_control_ioctl(
    _file: *mut bindings::file,
    cmd: c_uint,
    arg: c_ulong,
) -> c_long {
    let control = CONTROL.load(Ordering::Acquire);
    if control.is_null() {
        return ENXIO.to_errno() as c_long;
    }
    // SAFETY: non-null `CONTROL` points to a live `Control` (invariant of
    // `ControlDevice`, which outlives every open file as explained in drop).
    let control = unsafe { &*control };
    match control.ioctl(cmd, compat::user_ptr(arg as u64)) {
        Ok(v) => v as c_long,
        Err(e) => e.to_errno() as c_long,
    }
}
