// SPDX-License-Identifier: GPL-2.0

//! Probe: the misc-device abstraction (6.13) registers a device whose
//! `file_operations` dispatch `ioctl` to a `MiscDevice`, with the module as
//! their owner. The probe is a module of its own (with 6.15's `authors`),
//! since `#[vtable]` names the module of the impl in 7.3: a kernel between
//! 6.13 and 6.15 keeps the glue's misc device, which works everywhere.

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

/// The probe.
pub fn probe() -> impl PinInit<MiscDeviceRegistration<Probe>, Error> {
    MiscDeviceRegistration::register(MiscDeviceOptions { name: c"rtb_probe" })
}
