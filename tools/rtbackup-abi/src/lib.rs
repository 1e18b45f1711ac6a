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
        assert_eq!(RTB_IOC_RING_OPEN, 0x4030_bb04);
        assert_eq!(RTB_IOC_MARK, 0xc078_bb05);
        assert_eq!(RTB_IOC_DIRTY, 0xc058_bb06);
        assert_eq!(RTB_RING_IOC_ACK, 0x4030_bb10);
        assert_eq!(RTB_RING_IOC_RESYNC, 0xc060_bb11);
    }

    #[test]
    fn record_header_round_trips_and_places_the_crc() {
        let h = RtbRecordHeader {
            magic: RTB_RECORD_MAGIC,
            op: RTB_OP_WRITE,
            flags: RTB_REC_FUA,
            pad: 0,
            size: 4160,
            payload_len: 4096,
            seq: 7,
            sector: 8,
            len: 4096,
            time_ns: 1,
            payload_crc: 0xdead_beef,
            header_crc: 0x0102_0304,
            reserved: 0,
        };
        let b = h.to_bytes();
        assert_eq!(RtbRecordHeader::from_bytes(&b), h);
        let at = RtbRecordHeader::HEADER_CRC_OFFSET;
        assert_eq!(&b[at..at + 4], &0x0102_0304u32.to_le_bytes());
        assert_eq!(&b[..4], b"RTBJ");
    }

    #[test]
    fn record_sizes_are_aligned() {
        assert_eq!(record_size(0), 64);
        assert_eq!(record_size(1), 128);
        assert_eq!(record_size(4096), 4160);
        assert_eq!(record_size(4097), 4224);
    }

    #[test]
    fn mark_names_follow_the_volume_name_rule() {
        for ok in [
            &b"a"[..],
            b"before-upgrade",
            b"v1.2_rc-3",
            b"x.",
            &[b'z'; 64],
        ] {
            assert_eq!(check_mark_name(ok), Ok(()), "{ok:?}");
        }
        for (bad, why) in [
            (&b""[..], "empty"),
            (&[b'z'; 65][..], "longer"),
            (b".hidden", "dot"),
            (b"a@b", "allowed"),
            (b"mark:x", "allowed"),
            (b"a b", "allowed"),
            (b"a/b", "allowed"),
            (b"caf\xc3\xa9", "allowed"),
            (b"nul\0", "allowed"),
        ] {
            let e = check_mark_name(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn mark_request_name_respects_name_len() {
        let mut m = RtbMark::ZERO;
        m.name[..3].copy_from_slice(b"abc");
        m.name_len = 3;
        assert_eq!(m.name_bytes(), Some(&b"abc"[..]));
        m.name_len = RTB_MARK_NAME_MAX as u32 + 1;
        assert_eq!(m.name_bytes(), None);
    }

    #[test]
    fn c_str_bytes_requires_a_nul() {
        assert_eq!(c_str_bytes(b"abc\0def"), Some(&b"abc"[..]));
        assert_eq!(c_str_bytes(b"\0"), Some(&b""[..]));
        assert_eq!(c_str_bytes(b"abc"), None);
    }
}
