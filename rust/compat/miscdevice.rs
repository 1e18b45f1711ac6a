// SPDX-License-Identifier: GPL-2.0

//! Probe: the misc-device abstraction registers a device whose
//! `file_operations` dispatch `ioctl` to a `MiscDevice` and name the module
//! of the impl as their owner (`MiscDevice::OwnerModule`, 7.3), so that an
//! open file pins the module. Before 7.3 the abstraction leaves `owner`
//! null: `rmmod` would succeed under an open control device, so those
//! kernels keep the glue's misc device. The probe is a module of its own,
//! since `#[vtable]` names the module of the impl.

use kernel::{
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    prelude::*,
};

module! {
    type: ProbeModule,
    name: "rtb_probe",
    authors: ["rtbackup"],
    description: "probe",
    license: "GPL",
}

/// The probe's module.
pub struct ProbeModule;

impl kernel::Module for ProbeModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        Ok(ProbeModule)
    }
}

/// The probe.
pub struct Probe;

#[vtable]
impl MiscDevice for Probe {
    type Ptr = ();

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<()> {
        Ok(())
    }

    fn ioctl(_device: (), _file: &File, _cmd: u32, _arg: usize) -> Result<isize> {
        Ok(0)
    }
}

/// The module that owns the device's `file_operations`.
pub type Owner = <Probe as MiscDevice>::OwnerModule;

/// The probe.
pub fn probe() -> impl PinInit<MiscDeviceRegistration<Probe>, Error> {
    MiscDeviceRegistration::register(MiscDeviceOptions { name: c"rtb_probe" })
}
