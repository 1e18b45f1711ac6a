//! Userspace view of an rtbackup device's write-journal ring.
//!
//! The module records every write to `/dev/rtbackupN` in a per-device ring
//! that its agent maps read-only (ABI v2, "The write-journal ring" in
//! rust/uapi.rs). This crate reads it:
//!
//! * [`Ring`] opens and maps the kernel's ring of a device.
//! * [`RingView`] reads any ring in memory: the control page as atomics,
//!   the published records as zero-copy [`Batch`]es of slices, validating
//!   every record header and skipping padding. It does not depend on the
//!   kernel, so it is tested on rings built by [`mem::MemRing`], a
//!   producer that lays out records as the module does.
//! * [`RingSource`] is what a consumer needs of either: a view, moving the
//!   consumer position ([`RingSource::ack`] by seq) and waiting for records.

mod error;
mod kernel;
pub mod mem;
mod memory;
mod source;
mod view;

pub use error::{Result, RingError};
pub use kernel::Ring;
pub use memory::{AlignedBytes, SharedMemory};
pub use rtbackup_control::{Resync, ResyncOp};
pub use source::{RingSource, Wakeup};
pub use view::{Batch, Cursor, RecordSpan, RingGeometry, RingView, MIN_VIEW_DATA_SIZE};

#[cfg(test)]
mod tests;
