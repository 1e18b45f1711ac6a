// SPDX-License-Identifier: GPL-2.0

//! Probe: a module's `ThisModule` is the `THIS_MODULE` of its
//! `ModuleMetadata` (7.3), not a `THIS_MODULE` static in the crate root.

use kernel::{bindings, ModuleMetadata};

/// The probe.
pub const fn probe<M: ModuleMetadata>() -> *mut bindings::module {
    M::THIS_MODULE.as_ptr()
}
