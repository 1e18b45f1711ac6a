// SPDX-License-Identifier: GPL-2.0

//! Probe: `UserPtr` is a newtype made with `from_addr` (6.16), not `usize`.

use kernel::uaccess::UserPtr;

/// The probe.
pub fn probe(addr: usize) -> UserPtr {
    UserPtr::from_addr(addr)
}
