// SPDX-License-Identifier: GPL-2.0

//! Probe: `kernel::str::CStr` is `core::ffi::CStr` (6.18), with `to_bytes`.

use kernel::str::CStr;

/// The probe.
pub fn probe(s: &CStr) -> &[u8] {
    s.to_bytes()
}
