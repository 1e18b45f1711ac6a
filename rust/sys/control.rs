// SPDX-License-Identifier: GPL-2.0

//! The control misc device, `/dev/rtbackup-control`.
//!
//! Where the kernel has the Rust misc-device abstraction with the module as
//! the owner of its `file_operations` (probe `miscdevice`: 7.3), it
//! registers the device and builds them, and `ControlFile::ioctl`
//! dispatches. On older kernels (6.12, 7.2) the `struct miscdevice` and its
//! `file_operations` are static C structures in the glue, whose
//! `unlocked_ioctl` is `rtb_control_ioctl` below. Both hand each request to
//! [`Control::ioctl`](crate::control::Control::ioctl).
//!
//! C header: [`include/linux/miscdevice.h`](srctree/include/linux/miscdevice.h)

use super::compat;
use crate::{control::Control, uapi::RTB_CONTROL_NAME};
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;

/// The control state that ioctls are dispatched to; null when the device is
/// not registered.
static CONTROL: AtomicPtr<Control> = AtomicPtr::new(core::ptr::null_mut());

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

/// Hands an ioctl of the control device to the registered `Control`.
/// Process context; `arg` is an untrusted user address or value.
fn dispatch(cmd: u32, arg: u64) -> Result<isize> {
    let control = CONTROL.load(Ordering::Acquire);
    if control.is_null() {
        return Err(ENXIO);
    }
    // SAFETY: non-null `CONTROL` points to a live `Control` (invariant of
    // `ControlDevice`, which outlives every open file: the files hold a
    // reference on this module, whose unloading drops it).
    let control = unsafe { &*control };
    control.ioctl(cmd, compat::user_ptr(arg))
}

#[cfg(rtb_miscdevice)]
pub(crate) use abstraction::ControlDevice;
#[cfg(not(rtb_miscdevice))]
pub(crate) use glue_device::ControlDevice;

/// The device through the kernel's misc-device abstraction.
#[cfg(rtb_miscdevice)]
mod abstraction {
    use super::{dispatch, CONTROL, NAME};
    use crate::control::Control;
    use core::sync::atomic::Ordering;
    use kernel::{
        alloc::flags::GFP_KERNEL,
        fs::File,
        miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
        prelude::*,
        str::CStr,
    };

    /// An open file of the control device: it keeps no state of its own.
    pub(crate) struct ControlFile;

    #[vtable]
    impl MiscDevice for ControlFile {
        type Ptr = ();

        fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<()> {
            Ok(())
        }

        fn ioctl(_device: (), _file: &File, cmd: u32, arg: usize) -> Result<isize> {
            // `usize` is 64-bit on every architecture the module builds for.
            dispatch(cmd, arg as u64)
        }
    }

    /// The registered control device.
    ///
    /// # Invariants
    ///
    /// While this value exists, the misc device is registered and `CONTROL`
    /// points to a live `Control`.
    pub(crate) struct ControlDevice {
        _registration: Pin<KBox<MiscDeviceRegistration<ControlFile>>>,
    }

    impl ControlDevice {
        /// Registers `/dev/rtbackup-control`, dispatching to `control`.
        ///
        /// # Safety
        ///
        /// `control` must stay valid and must not move until the returned
        /// value is dropped.
        pub(crate) unsafe fn register(control: &Control) -> Result<Self> {
            let name = CStr::from_bytes_with_nul(&NAME).map_err(|_| EINVAL)?;
            CONTROL.store(core::ptr::from_ref(control).cast_mut(), Ordering::Release);
            let registration = KBox::pin_init(
                MiscDeviceRegistration::register(MiscDeviceOptions { name }),
                GFP_KERNEL,
            )
            .inspect_err(|_| CONTROL.store(core::ptr::null_mut(), Ordering::Release))?;
            // INVARIANT: registered above; `control` outlives us (caller).
            Ok(Self {
                _registration: registration,
            })
        }
    }

    impl Drop for ControlDevice {
        fn drop(&mut self) {
            // The registration is dropped (deregistered) after this: an
            // ioctl in between finds no `Control` and fails with ENXIO. None
            // can run anyway: open files hold a reference on this module
            // (the fops' owner), so it is not being unloaded.
            CONTROL.store(core::ptr::null_mut(), Ordering::Release);
        }
    }
}

/// The device as static C structures in the glue.
#[cfg(not(rtb_miscdevice))]
mod glue_device {
    use super::{dispatch, CONTROL, NAME};
    use crate::{control::Control, sys::glue};
    use core::sync::atomic::Ordering;
    use kernel::{
        bindings,
        error::to_result,
        ffi::{c_long, c_uint, c_ulong},
        prelude::*,
    };

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
        /// `control` must stay valid and must not move until the returned
        /// value is dropped.
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
            // SAFETY: registered (type invariant). After this no new file can
            // be opened; files already open hold a module reference
            // (fops.owner), so no ioctl can be running while the module is
            // being unloaded.
            unsafe { glue::rtb_control_deregister() };
            CONTROL.store(core::ptr::null_mut(), Ordering::Release);
        }
    }

    /// `unlocked_ioctl` of `/dev/rtbackup-control` (called from
    /// `rust/glue.c`).
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
        match dispatch(cmd, arg as u64) {
            Ok(v) => v as c_long,
            Err(e) => e.to_errno() as c_long,
        }
    }
}
