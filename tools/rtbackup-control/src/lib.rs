//! Talk to the rtbackup kernel module through `/dev/rtbackup-control`, and
//! prepare the moments that marks name (flush, filesystem freeze).
//!
//! [`Control`] wraps the versioned ioctls of `rtbackup-abi` and turns errnos
//! into [`Error`]s that say what is wrong and what to do. The `rtbackupctl`
//! binary is a thin layer over this crate.

mod control;
mod diagnose;
mod direct;
mod error;
mod freeze;
mod ioctl;
mod status;

pub use control::{
    ring_ack, ring_resync, validate_mark_name, AttachOptions, AttachedDevice, Control,
    ModuleVersion, OnFull, Resync, ResyncOp, RingAck, CONTROL_PATH,
};
pub use direct::DirectReader;
pub use error::{Error, Result};
pub use freeze::{flush_device, Frozen};
pub use status::{DeviceStatus, RingStatus, Stats};

/// The ABI version these tools speak.
pub const ABI_VERSION: u32 = rtbackup_abi::RTB_ABI_VERSION;
