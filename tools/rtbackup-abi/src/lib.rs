//! The rtbackup kernel/userspace ABI.
//!
//! The definitions are in `rust/uapi.rs` at the top of the repository, the
//! very file the kernel module compiles as `crate::uapi`, so the ioctl
//! numbers and structure layouts of the tools and the module cannot drift.

#![no_std]

#[path = "../../../rust/uapi.rs"]
mod uapi;

pub use uapi::*;

#[cfg(test)]
mod tests {
    use super::*;

    // Values of the C macros _IOR/_IOW/_IOWR for the same type, number and
    // size, as computed by <asm-generic/ioctl.h>.
    #[test]
    fn ioctl_numbers_match_asm_generic_encoding() {
        assert_eq!(RTB_IOC_VERSION, 0x8028_bb00);
        assert_eq!(RTB_IOC_ATTACH, 0xc150_bb01);
        assert_eq!(RTB_IOC_DETACH, 0x4030_bb02);
        assert_eq!(RTB_IOC_LIST, 0xc028_bb03);
    }

    #[test]
    fn c_str_bytes_requires_a_nul() {
        assert_eq!(c_str_bytes(b"abc\0def"), Some(&b"abc"[..]));
        assert_eq!(c_str_bytes(b"\0"), Some(&b""[..]));
        assert_eq!(c_str_bytes(b"abc"), None);
    }
}
