// SPDX-License-Identifier: GPL-2.0

//! What differs between the kernels the module supports, in one place.
//!
//! Every `cfg(rtb_*)` of the module is here or elsewhere in `sys`, and each
//! is set by a probe of the kernel tree being built against: Kbuild compiles
//! `rust/compat/NAME.rs` with the module's own rustc command line and passes
//! `--cfg rtb_NAME` if it compiles (Documentation/kernels.rst). Nothing is
//! decided by a kernel version number, so a distribution kernel that
//! backports an interface gets it too.
//!
//! The rest of the module names these items through `sys` and compiles
//! unchanged on every supported kernel.

/// The module's `module!` declaration, in the keys this kernel's macro takes
/// (`authors: [..]` since 6.15, `author: ".."` before).
#[cfg(rtb_module_authors)]
macro_rules! rtb_module {
    (type: $type:ident, name: $name:tt, author: $author:tt, description: $desc:tt,) => {
        ::kernel::prelude::module! {
            type: $type,
            name: $name,
            authors: [$author],
            description: $desc,
            license: "GPL",
        }
    };
}

/// The module's `module!` declaration, in the keys this kernel's macro takes
/// (`authors: [..]` since 6.15, `author: ".."` before).
#[cfg(not(rtb_module_authors))]
macro_rules! rtb_module {
    (type: $type:ident, name: $name:tt, author: $author:tt, description: $desc:tt,) => {
        ::kernel::prelude::module! {
            type: $type,
            name: $name,
            author: $author,
            description: $desc,
            license: "GPL",
        }
    };
}

use kernel::{bindings, ffi::c_void, str::CStr};

/// This module's `struct module`: the `THIS_MODULE` of its
/// `ModuleMetadata` since 7.3, a static in the crate root before.
#[cfg(rtb_module_metadata)]
pub(crate) const fn this_module() -> *mut bindings::module {
    <crate::LocalModule as kernel::ModuleMetadata>::THIS_MODULE.as_ptr()
}

/// This module's `struct module`: the `THIS_MODULE` of its
/// `ModuleMetadata` since 7.3, a static in the crate root before.
#[cfg(not(rtb_module_metadata))]
pub(crate) const fn this_module() -> *mut bindings::module {
    crate::THIS_MODULE.as_ptr()
}

#[cfg(rtb_transmute)]
pub(crate) use kernel::transmute::{AsBytes, FromBytes};
#[cfg(not(rtb_transmute))]
pub(crate) use kernel::types::{AsBytes, FromBytes};

pub(crate) use kernel::uaccess::UserPtr;

/// The user pointer of address `addr` (an ioctl argument or a pointer field
/// of an ABI structure). `UserPtr` is a newtype since 6.16, a `usize` before.
pub(crate) fn user_ptr(addr: u64) -> UserPtr {
    // Addresses are 64-bit on every architecture the module builds for
    // (Kconfig: 64BIT), so this cast loses nothing.
    #[cfg(rtb_user_ptr_newtype)]
    let ptr = UserPtr::from_addr(addr as usize);
    #[cfg(not(rtb_user_ptr_newtype))]
    let ptr = addr as UserPtr;
    ptr
}

/// The bytes of `s` without its terminating NUL (see
/// [`cstr_bytes_with_nul`]).
pub(crate) fn cstr_bytes(s: &CStr) -> &[u8] {
    cstr_bytes_with_nul(s)
        .split_last()
        .map_or(&[], |(_, bytes)| bytes)
}

/// The bytes of `s` with its terminating NUL. `kernel::str::CStr` is
/// `core::ffi::CStr` since 6.18, the kernel's own type before.
pub(crate) fn cstr_bytes_with_nul(s: &CStr) -> &[u8] {
    #[cfg(rtb_core_cstr)]
    let bytes = s.to_bytes_with_nul();
    #[cfg(not(rtb_core_cstr))]
    let bytes = s.as_bytes_with_nul();
    bytes
}

/// The pointer of a `ForeignOwnable` (`*mut` since 6.15, `*const` before).
#[cfg(rtb_foreign_mut)]
pub(crate) type ForeignPtr = *mut c_void;
/// The pointer of a `ForeignOwnable` (`*mut` since 6.15, `*const` before).
#[cfg(not(rtb_foreign_mut))]
pub(crate) type ForeignPtr = *const c_void;

/// `ptr` as the `*mut c_void` that C keeps in a `private_data`.
#[cfg(rtb_foreign_mut)]
pub(crate) fn foreign_as_mut(ptr: ForeignPtr) -> *mut c_void {
    ptr
}

/// `ptr` as the `*mut c_void` that C keeps in a `private_data`.
#[cfg(not(rtb_foreign_mut))]
pub(crate) fn foreign_as_mut(ptr: ForeignPtr) -> *mut c_void {
    ptr.cast_mut()
}
