// SPDX-License-Identifier: GPL-2.0 OR MIT

//! The rtbackup kernel/userspace ABI.
//!
//! This one file is compiled into the kernel module (as `crate::uapi`) and
//! into the userspace crate `rtbackup-abi`, so the two cannot drift. It uses
//! only `core` and fixed-width integers: every structure is `#[repr(C)]`, has
//! explicit padding, and its size is checked at compile time below. The ioctl
//! numbers encode the structure sizes, so a mismatched structure is refused
//! by the kernel with `ENOTTY` before any field is read.
//!
//! Versioning: every request carries `abi_version`. The module answers a
//! request only when it equals [`RTB_ABI_VERSION`]; otherwise it fails with
//! `EPROTO`, and userspace reports both versions (see [`RtbVersion`]).
//! Fields named `reserved` must be zero; later versions give them a meaning.

/// The version of this ABI. Bumped on any incompatible change.
pub const RTB_ABI_VERSION: u32 = 1;

/// The ioctl type byte ("magic") of rtbackup, free in
/// Documentation/userspace-api/ioctl/ioctl-number.rst of Linux 6.12.
pub const RTB_IOC_MAGIC: u32 = 0xBB;

/// Release of the module and the tools.
pub const RTB_RELEASE: &str = "0.1.0";

/// Name of the control misc device, `/dev/rtbackup-control`.
pub const RTB_CONTROL_NAME: &str = "rtbackup-control";

/// Prefix of the stacked disks: `/dev/rtbackup0`, `/dev/rtbackup1`, ...
pub const RTB_DISK_PREFIX: &str = "rtbackup";

/// Size of a path buffer, including the terminating NUL.
pub const RTB_PATH_MAX: usize = 256;

/// Size of a name buffer, including the terminating NUL.
pub const RTB_NAME_MAX: usize = 32;

/// Most devices attached at once.
pub const RTB_MAX_DEVICES: u32 = 256;

/// Device state bit: attached and serving I/O.
pub const RTB_STATE_ATTACHED: u32 = 1 << 0;

/// Device state bit: being detached; new opens fail with `ENXIO`.
pub const RTB_STATE_DETACHING: u32 = 1 << 1;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// Encodes an ioctl number as `_IOC(dir, type, nr, size)` of
/// include/uapi/asm-generic/ioctl.h (x86, arm64, riscv).
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    assert!(size < (1 << IOC_SIZESHIFT));
    (dir << IOC_DIRSHIFT)
        | (RTB_IOC_MAGIC << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// `_IOR(0xBB, 0, struct rtb_version)`: the module's ABI and release version.
pub const RTB_IOC_VERSION: u32 = ioc(IOC_READ, 0, core::mem::size_of::<RtbVersion>());

/// `_IOWR(0xBB, 1, struct rtb_attach)`: stack a new disk on a lower device.
pub const RTB_IOC_ATTACH: u32 = ioc(IOC_READ | IOC_WRITE, 1, core::mem::size_of::<RtbAttach>());

/// `_IOW(0xBB, 2, struct rtb_detach)`: remove a stacked disk.
pub const RTB_IOC_DETACH: u32 = ioc(IOC_WRITE, 2, core::mem::size_of::<RtbDetach>());

/// `_IOWR(0xBB, 3, struct rtb_list)`: describe the attached devices.
pub const RTB_IOC_LIST: u32 = ioc(IOC_READ | IOC_WRITE, 3, core::mem::size_of::<RtbList>());

/// Answer of [`RTB_IOC_VERSION`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbVersion {
    /// The module's [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// The module's release, NUL-terminated.
    pub release: [u8; RTB_NAME_MAX],
}

/// Request of [`RTB_IOC_ATTACH`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbAttach {
    /// In: [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// In: no flags are defined yet; must be zero.
    pub flags: u32,
    /// In: path of the lower block device, NUL-terminated.
    pub lower_path: [u8; RTB_PATH_MAX],
    /// Out: `N` of the new `/dev/rtbackupN`.
    pub index: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// In: must be zero.
    pub reserved: [u64; 8],
}

/// Request of [`RTB_IOC_DETACH`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbDetach {
    /// In: [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// In: no flags are defined yet; must be zero.
    pub flags: u32,
    /// In: `N` of `/dev/rtbackupN`.
    pub index: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// In: must be zero.
    pub reserved: [u64; 4],
}

/// I/O counters of one device since attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtbStats {
    /// Read bios.
    pub reads: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Write bios (including those with FUA or PREFLUSH and data).
    pub writes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Discard and secure-erase bios.
    pub discards: u64,
    /// Bytes discarded.
    pub discard_bytes: u64,
    /// Write-zeroes bios.
    pub write_zeroes: u64,
    /// Bytes zeroed.
    pub write_zeroes_bytes: u64,
    /// Flushes: empty flush bios and writes carrying PREFLUSH.
    pub flushes: u64,
    /// Writes carrying FUA.
    pub fua_writes: u64,
    /// Bios completed with an error by the lower device.
    pub errors: u64,
    /// Bios sent to the lower device and not yet completed.
    pub in_flight: u64,
    /// Zero.
    pub reserved: [u64; 4],
}

/// One device in the answer of [`RTB_IOC_LIST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbDeviceInfo {
    /// `N` of `/dev/rtbackupN`.
    pub index: u32,
    /// `RTB_STATE_*` bits.
    pub state: u32,
    /// Major number of the stacked disk.
    pub disk_major: u32,
    /// Minor number of the stacked disk.
    pub disk_minor: u32,
    /// Major number of the lower device.
    pub lower_major: u32,
    /// Minor number of the lower device.
    pub lower_minor: u32,
    /// Openers of the stacked disk (mounts count as openers).
    pub open_count: u32,
    /// Logical block size in bytes.
    pub logical_block_size: u32,
    /// Physical block size in bytes.
    pub physical_block_size: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// Capacity in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Name of the stacked disk, `rtbackupN`, NUL-terminated.
    pub disk_name: [u8; RTB_NAME_MAX],
    /// Path the lower device was attached by, NUL-terminated.
    pub lower_path: [u8; RTB_PATH_MAX],
    /// Counters since attach.
    pub stats: RtbStats,
}

/// Request of [`RTB_IOC_LIST`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbList {
    /// In: [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// In: no flags are defined yet; must be zero.
    pub flags: u32,
    /// In: how many [`RtbDeviceInfo`] fit at `devices`, at most
    /// [`RTB_MAX_DEVICES`].
    pub capacity: u32,
    /// Out: how many devices are attached; only `min(count, capacity)`
    /// entries were written.
    pub count: u32,
    /// In: user address of an array of `capacity` [`RtbDeviceInfo`].
    pub devices: u64,
    /// In: must be zero.
    pub reserved: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<RtbVersion>() == 40);
const _: () = assert!(core::mem::size_of::<RtbAttach>() == 336);
const _: () = assert!(core::mem::size_of::<RtbDetach>() == 48);
const _: () = assert!(core::mem::size_of::<RtbStats>() == 128);
const _: () = assert!(core::mem::size_of::<RtbDeviceInfo>() == 464);
const _: () = assert!(core::mem::size_of::<RtbList>() == 40);

impl RtbVersion {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        pad: 0,
        release: [0; RTB_NAME_MAX],
    };
}

impl RtbAttach {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        flags: 0,
        lower_path: [0; RTB_PATH_MAX],
        index: 0,
        pad: 0,
        reserved: [0; 8],
    };
}

impl RtbDetach {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        flags: 0,
        index: 0,
        pad: 0,
        reserved: [0; 4],
    };
}

impl RtbDeviceInfo {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        index: 0,
        state: 0,
        disk_major: 0,
        disk_minor: 0,
        lower_major: 0,
        lower_minor: 0,
        open_count: 0,
        logical_block_size: 0,
        physical_block_size: 0,
        pad: 0,
        capacity_sectors: 0,
        disk_name: [0; RTB_NAME_MAX],
        lower_path: [0; RTB_PATH_MAX],
        stats: RtbStats {
            reads: 0,
            read_bytes: 0,
            writes: 0,
            write_bytes: 0,
            discards: 0,
            discard_bytes: 0,
            write_zeroes: 0,
            write_zeroes_bytes: 0,
            flushes: 0,
            fua_writes: 0,
            errors: 0,
            in_flight: 0,
            reserved: [0; 4],
        },
    };
}

impl RtbList {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        flags: 0,
        capacity: 0,
        count: 0,
        devices: 0,
        reserved: [0; 2],
    };
}

/// Returns the bytes of `buf` before its first NUL, or `None` when `buf`
/// holds no NUL (an unterminated string).
pub fn c_str_bytes(buf: &[u8]) -> Option<&[u8]> {
    let len = buf.iter().position(|&b| b == 0)?;
    Some(&buf[..len])
}
