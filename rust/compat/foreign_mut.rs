// SPDX-License-Identifier: GPL-2.0

//! Probe: `ForeignOwnable` passes `*mut c_void` (6.15), not `*const`.

use kernel::{ffi::c_void, sync::Arc, types::ForeignOwnable};

/// The probe.
pub fn probe(a: Arc<u8>) -> *mut c_void {
    a.into_foreign()
}
