// SPDX-License-Identifier: GPL-2.0

//! rtbackup: real-time block-level backup.
//!
//! `rtbackupctl attach /dev/sdX` stacks `/dev/rtbackupN` on a block device;
//! every bio to it is passed to the lower device, and every write, discard,
//! write-zeroes and flush is recorded in the device's journal ring, which the
//! agent maps and drains to the backup server.
//!
//! Files by concern: `uapi` (the ABI shared with the tools), `control` (the
//! device table and its ioctls), `device` (one protected device and its
//! request path), `ring` (the write-journal ring), `onfull` (what a full
//! ring does), `inflight` (write ordering), `sys` (the only code that
//! touches C).

mod bitmap;
mod control;
mod device;
mod inflight;
mod onfull;
mod ring;
#[macro_use]
mod sys;
#[allow(dead_code, unreachable_pub)]
mod uapi;

use kernel::{alloc::flags::GFP_KERNEL, prelude::*};

rtb_module! {
    type: RtBackup,
    name: "rtbackup",
    author: "The rtbackup developers",
    description: "Real-time block-level backup: a stacked write-journal block device",
}

/// The module: its control device and the table of attached devices.
///
/// Field order is teardown order: the control device goes first, so no
/// ioctl can reach `control` while it is dropped.
struct RtBackup {
    _control_dev: sys::control::ControlDevice,
    control: Pin<KBox<control::Control>>,
}

impl kernel::Module for RtBackup {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // The record checksums must be the CRC32C that the tools compute.
        if sys::crc32c(b"123456789") != 0xe306_9283 {
            pr_err!("crc32c() gives a non-standard result; refusing to load\n");
            return Err(EINVAL);
        }
        let control = KBox::pin_init(control::Control::new()?, GFP_KERNEL)?;
        // SAFETY: `control` is pinned on the heap and is dropped after the
        // control device (field order of `RtBackup`).
        let control_dev = unsafe { sys::control::ControlDevice::register(&control) }?;
        pr_info!(
            "loaded, release {}, ABI version {}\n",
            uapi::RTB_RELEASE,
            uapi::RTB_ABI_VERSION
        );
        Ok(Self {
            _control_dev: control_dev,
            control,
        })
    }
}

impl Drop for RtBackup {
    fn drop(&mut self) {
        // Every attached device holds a module reference, so the table is
        // empty here; dropping `control` would detach any device anyway.
        let _ = &self.control;
        pr_info!("unloaded\n");
    }
}
