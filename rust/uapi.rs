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
pub const RTB_ABI_VERSION: u32 = 6;

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

/// Longest mark name in bytes (see [`RtbMark`]).
pub const RTB_MARK_NAME_MAX: usize = 64;

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

/// `_IOW(0xBB, 4, struct rtb_ring_open)`: open the write-journal ring of a
/// device; the ioctl returns the new file descriptor.
pub const RTB_IOC_RING_OPEN: u32 = ioc(IOC_WRITE, 4, core::mem::size_of::<RtbRingOpen>());

/// `_IOWR(0xBB, 5, struct rtb_mark)`: put a named mark in the record
/// stream of a device; answers the mark record's `seq`.
pub const RTB_IOC_MARK: u32 = ioc(IOC_READ | IOC_WRITE, 5, core::mem::size_of::<RtbMark>());

/// `_IOW(0xBB, 16, struct rtb_ring_ack)`, on a ring file descriptor: the
/// records before `tail` are durable on the backup server (or, with
/// [`RTB_ACK_SPOOLED`], in the agent's spool).
pub const RTB_RING_IOC_ACK: u32 = ioc(IOC_WRITE, 16, core::mem::size_of::<RtbRingAck>());

/// Mark chunks of a device dirty and start tracking ([`RtbDirty`]; ABI v4).
pub const RTB_IOC_DIRTY: u32 = ioc(IOC_READ | IOC_WRITE, 6, core::mem::size_of::<RtbDirty>());
/// Change what a full ring does on a live device (ABI v6; [`RtbSet`]).
pub const RTB_IOC_SET: u32 = ioc(IOC_WRITE, 7, core::mem::size_of::<RtbSet>());

/// Ring file: resync step ([`RtbResync`]; ABI v4).
pub const RTB_RING_IOC_RESYNC: u32 =
    ioc(IOC_READ | IOC_WRITE, 17, core::mem::size_of::<RtbResync>());

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
    /// In: `RTB_ATTACH_*` bits.
    pub flags: u32,
    /// In: path of the lower block device, NUL-terminated.
    pub lower_path: [u8; RTB_PATH_MAX],
    /// Out: `N` of the new `/dev/rtbackupN`.
    pub index: u32,
    /// In (ABI v6): without [`RTB_ATTACH_TRACK`], how long writers wait for
    /// room in a full ring before it tracks instead, in milliseconds: at
    /// most [`RTB_BLOCK_TIMEOUT_MAX_MS`]; 0 waits as long as it takes.
    /// With [`RTB_ATTACH_TRACK`], kept for a later switch to blocking
    /// ([`RTB_IOC_SET`]).
    pub block_timeout_ms: u32,
    /// In: bytes of the write-journal ring's data area: a power of two
    /// from [`RTB_RING_MIN_SIZE`] to [`RTB_RING_MAX_SIZE`], or 0 for
    /// [`RTB_RING_DEFAULT_SIZE`].
    pub ring_size: u64,
    /// In: bytes of device one bit of the dirty bitmap stands for: a power
    /// of two from [`RTB_CHUNK_MIN`] to [`RTB_CHUNK_MAX`], at least the
    /// logical block size, or 0 for [`RTB_CHUNK_DEFAULT`].
    pub chunk_size: u64,
    /// In: must be zero.
    pub reserved: [u64; 6],
}

/// [`RtbAttach::flags`]: when the ring is full, track writes in the dirty
/// bitmap instead of making writers wait (`--on-full track`).
pub const RTB_ATTACH_TRACK: u32 = 1 << 0;

/// Longest block timeout: a week.
pub const RTB_BLOCK_TIMEOUT_MAX_MS: u32 = 7 * 24 * 3600 * 1000;

/// [`RtbSet::on_full`] and [`RtbRingInfo::on_full`]: writers wait for room
/// (for `block_timeout_ms` at most, if not 0).
pub const RTB_ON_FULL_BLOCK: u32 = 0;
/// [`RtbSet::on_full`] and [`RtbRingInfo::on_full`]: a full ring tracks.
pub const RTB_ON_FULL_TRACK: u32 = 1;

/// [`RtbSet::flags`]: set [`RtbSet::on_full`].
pub const RTB_SET_ON_FULL: u32 = 1 << 0;
/// [`RtbSet::flags`]: set [`RtbSet::block_timeout_ms`].
pub const RTB_SET_BLOCK_TIMEOUT: u32 = 1 << 1;

/// Request of [`RTB_IOC_SET`]: what a device's full ring does from now on.
/// Writers waiting for room when it changes to track go on at once (the
/// ring tracks); a new timeout counts from each writer's first wait.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbSet {
    /// In: [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// In: `RTB_SET_*` bits, at least one: which settings to change. A
    /// setting whose bit is clear must be zero.
    pub flags: u32,
    /// In: `N` of `/dev/rtbackupN`.
    pub index: u32,
    /// In: `RTB_ON_FULL_*`.
    pub on_full: u32,
    /// In: as [`RtbAttach::block_timeout_ms`].
    pub block_timeout_ms: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// In: must be zero.
    pub reserved: [u64; 4],
}

/// Default [`RtbAttach::chunk_size`]: 64 KiB.
pub const RTB_CHUNK_DEFAULT: u64 = 64 << 10;
/// Smallest chunk size.
pub const RTB_CHUNK_MIN: u64 = 4096;
/// Largest chunk size: a chunk must fit in one record.
pub const RTB_CHUNK_MAX: u64 = 16 << 20;

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
    /// The write-journal ring.
    pub ring: RtbRingInfo,
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
const _: () = assert!(core::mem::size_of::<RtbDeviceInfo>() == 464 + 128);
const _: () = assert!(core::mem::size_of::<RtbList>() == 40);
const _: () = assert!(core::mem::size_of::<RtbSet>() == 56);

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
        block_timeout_ms: 0,
        ring_size: 0,
        chunk_size: 0,
        reserved: [0; 6],
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

impl RtbSet {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        flags: 0,
        index: 0,
        on_full: 0,
        block_timeout_ms: 0,
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
        ring: RtbRingInfo::ZERO,
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

// ---------------------------------------------------------------------------
// The write-journal ring (ABI v2).
//
// `RTB_IOC_RING_OPEN` returns a file descriptor for one device's ring; one
// may be open per device at a time (the agent's handle; `EBUSY` otherwise).
// `mmap(fd, 0, RTB_RING_PAGE + data_size, PROT_READ, MAP_SHARED)` maps the
// control page (an [`RtbRingHeader`]) followed by the data area. The mapping
// is read-only: the consumer moves its position with `RTB_RING_IOC_ACK`.
// `poll(fd, POLLIN)` is level-triggered: readable while `head != tail`;
// `POLLHUP` once the device is detached.
//
// Positions (`head`, `tail`) are byte counts since attach; a position's
// offset in the data area is `pos & (data_size - 1)`. The kernel writes a
// record completely, then publishes it by storing `head` with release
// ordering; the consumer loads `head` with acquire ordering and may read
// every record in `[tail, head)`. `head_seq` is not updated atomically with
// `head`: take sequence numbers from the records themselves. Records start
// at multiples of [`RTB_RECORD_ALIGN`] and never wrap: when a record does
// not fit before the end of the data area, an [`RTB_OP_PAD`] record fills
// the rest.
//
// A record is an [`RtbRecordHeader`] and, for writes, `payload_len` bytes of
// data (for marks, the mark's name), padded with zeroes to `size`. The same
// bytes travel on the wire and are stored in the server's journal
// (Documentation/protocol.rst).
// ---------------------------------------------------------------------------

/// Size of the control page at offset 0 of a ring mapping.
pub const RTB_RING_PAGE: u64 = 4096;

/// Smallest ring data area.
pub const RTB_RING_MIN_SIZE: u64 = 1 << 20;

/// Largest ring data area.
pub const RTB_RING_MAX_SIZE: u64 = 1 << 32;

/// Ring data area when attach asks for 0.
pub const RTB_RING_DEFAULT_SIZE: u64 = 64 << 20;

/// `magic` of [`RtbRingHeader`]: "RTBR".
pub const RTB_RING_MAGIC: u32 = u32::from_le_bytes(*b"RTBR");

/// `magic` of [`RtbRecordHeader`]: "RTBJ".
pub const RTB_RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RTBJ");

/// Alignment and size granule of records.
pub const RTB_RECORD_ALIGN: u64 = 64;

/// A write; the payload is the data written at `sector`.
pub const RTB_OP_WRITE: u8 = 1;
/// A discard (or secure erase) of `len` bytes at `sector`; no payload.
pub const RTB_OP_DISCARD: u8 = 2;
/// A write of zeroes over `len` bytes at `sector`; no payload.
pub const RTB_OP_WRITE_ZEROES: u8 = 3;
/// A cache flush: a consistency point; no payload, `sector` and `len` 0.
pub const RTB_OP_FLUSH: u8 = 4;
/// A named mark (ABI v3, [`RTB_IOC_MARK`]): the payload is the name (see
/// [`check_mark_name`]); `flags`, `sector` and `len` are 0. It changes no
/// data: a mark names the newest consistency point at or before it.
pub const RTB_OP_MARK: u8 = 5;
/// A chunk of the device's content read by the agent during a resync (ABI
/// v4; never recorded by the kernel): `sector`, `len` and, as payload, the
/// `len` bytes read. Its `seq` is one the kernel reserved for it (see
/// [`RTB_RING_IOC_RESYNC`]); `len` 0 (no payload) fills a reserved seq
/// that an interrupted resync left unused.
pub const RTB_OP_RESYNC: u8 = 6;
/// The end of a resync's data (ABI v4; made by the agent): the payload is
/// [`RTB_RESYNC_END_PAYLOAD`] bytes, the little-endian `consistent_seq`: no
/// chunk before it holds a write newer than that seq, so the backup is
/// consistent again at the first consistency point at or after it
/// (Documentation/design.rst, "Overflow and resync").
pub const RTB_OP_RESYNC_END: u8 = 7;
/// Payload bytes of an [`RTB_OP_RESYNC_END`] record.
pub const RTB_RESYNC_END_PAYLOAD: u32 = 8;
/// Filler up to the end of the data area; not part of the stream (`seq` 0).
pub const RTB_OP_PAD: u8 = 0x7f;

/// Record flag: the write carried FUA.
pub const RTB_REC_FUA: u8 = 1 << 0;
/// Record flag: the write carried PREFLUSH (a consistency point precedes
/// it).
pub const RTB_REC_PREFLUSH: u8 = 1 << 1;

/// `RtbRingHeader::flags` bit: the device was detached; no record will be
/// added (the agent drains what is left and stops).
pub const RTB_RING_F_DETACHED: u32 = 1 << 0;
/// `RtbRingHeader::flags` bit (ABI v4): the ring overflowed (or a full
/// resync was asked for) and writes are being tracked in the dirty bitmap,
/// not recorded; the agent must resync.
pub const RTB_RING_F_TRACKING: u32 = 1 << 1;
/// `RtbRingHeader::flags` bit (ABI v4): nothing has told the backup what
/// this attach's device holds yet. A device is attached tracking, with this
/// flag and no dirty chunk; the agent's initial sync (a full copy, a
/// checksum verify against the backup, or nothing when the operator says
/// they match) marks the chunks to send, and the first fetch that returns
/// to recording ([`RTB_RESYNC_F_STREAM`]) clears it.
pub const RTB_RING_F_UNSYNCED: u32 = 1 << 3;
/// `RtbRingHeader::flags` bit (ABI v4): chunks were fetched for a resync
/// that is not done yet ([`RTB_RESYNC_DONE`]); an agent that starts must
/// resync them (fetch with [`RTB_RESYNC_F_PENDING`]).
pub const RTB_RING_F_RESYNC: u32 = 1 << 2;

/// `RtbRingInfo::agent` bit: a ring file descriptor is open.
pub const RTB_AGENT_OPEN: u32 = 1 << 0;
/// `RtbRingInfo::agent` bit: the agent reported a live server connection
/// with its last acknowledgement.
pub const RTB_AGENT_CONNECTED: u32 = 1 << 1;

/// `RtbRingAck::flags` bit: the agent is connected to the server.
pub const RTB_ACK_CONNECTED: u32 = 1 << 0;
/// `RtbRingAck::flags` bit (ABI v5): the records before `tail` are safe in
/// the agent's local spool but the server holds only those up to
/// `acked_seq`: the ring may reuse their bytes, and reports `acked_seq`
/// (not `tail_seq - 1`) as durable on the server (`RtbRingInfo::
/// durable_seq`, what `rtbackupctl sync` waits for).
pub const RTB_ACK_SPOOLED: u32 = 1 << 1;

/// The control page at offset 0 of a ring mapping. The kernel updates
/// `head`, `tail`, `head_seq` and `tail_seq`; userspace reads them as
/// atomics (`head` with acquire ordering).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbRingHeader {
    /// [`RTB_RING_MAGIC`].
    pub magic: u32,
    /// [`RTB_ABI_VERSION`] of the module.
    pub abi_version: u32,
    /// Offset of the data area in the mapping: [`RTB_RING_PAGE`].
    pub data_offset: u64,
    /// Bytes of the data area, a power of two.
    pub data_size: u64,
    /// Random identity of this attach: sequence numbers restart at 1 with
    /// every attach, so (ring_id, seq) names a record.
    pub ring_id: u64,
    /// Capacity of the device in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Producer position: end of the last published record.
    pub head: u64,
    /// Consumer position: start of the first record not acknowledged.
    pub tail: u64,
    /// Sequence number the next record will get (the first is 1).
    pub head_seq: u64,
    /// Sequence number of the first record not acknowledged.
    pub tail_seq: u64,
    /// Logical block size of the device in bytes.
    pub logical_block_size: u32,
    /// `RTB_RING_F_*` bits.
    pub flags: u32,
    /// Zero.
    pub reserved: [u64; 6],
}

/// The header of a record, in the ring, on the wire and in the journal.
/// Little-endian (the ring is only shared within one machine; the tools
/// convert on big-endian hosts, of which none is supported yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbRecordHeader {
    /// [`RTB_RECORD_MAGIC`].
    pub magic: u32,
    /// `RTB_OP_*`.
    pub op: u8,
    /// `RTB_REC_*`.
    pub flags: u8,
    /// Zero.
    pub pad: u16,
    /// Bytes of the record: header, payload and padding to a multiple of
    /// [`RTB_RECORD_ALIGN`].
    pub size: u32,
    /// Bytes of payload after the header (`len` for writes, the name's
    /// length for marks, else 0).
    pub payload_len: u32,
    /// Sequence number, from 1, consecutive within a ring; 0 for padding.
    pub seq: u64,
    /// First 512-byte sector affected.
    pub sector: u64,
    /// Bytes affected.
    pub len: u64,
    /// Submission time, `CLOCK_REALTIME` in nanoseconds.
    pub time_ns: u64,
    /// CRC32C (Castagnoli, as `crc32c(0, payload)`) of the payload; 0 when
    /// there is none.
    pub payload_crc: u32,
    /// CRC32C of the 64 header bytes with this field set to zero.
    pub header_crc: u32,
    /// Zero.
    pub reserved: u64,
}

/// Request of [`RTB_IOC_RING_OPEN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbRingOpen {
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

/// Request of [`RTB_RING_IOC_ACK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbRingAck {
    /// In: [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// In: `RTB_ACK_*` bits.
    pub flags: u32,
    /// In: the new consumer position: the end of a record in
    /// `[tail, head]` (`EINVAL` otherwise). Equal to `tail` only reports
    /// the connection state.
    pub tail: u64,
    /// In (ABI v4): the highest seq the server holds durably, or 0. Seqs
    /// reserved for resync records are never in the ring, so `tail_seq`
    /// could not pass them otherwise; it becomes at least `acked_seq + 1`
    /// (`EINVAL` unless below `head_seq`).
    pub acked_seq: u64,
    /// In: must be zero.
    pub reserved: [u64; 3],
}

/// State of a device's ring in [`RtbDeviceInfo`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtbRingInfo {
    /// Bytes of the data area.
    pub size: u64,
    /// Bytes of records not yet acknowledged (`head - tail`).
    pub used: u64,
    /// Sequence number of the next record (records written: `head_seq - 1`).
    pub head_seq: u64,
    /// Sequence number of the first record not acknowledged (acknowledged:
    /// `tail_seq - 1`).
    pub tail_seq: u64,
    /// Submission time (`CLOCK_REALTIME` ns) of the oldest record not
    /// acknowledged; 0 when all are.
    pub oldest_unacked_ns: u64,
    /// Time of the last acknowledgement (`CLOCK_REALTIME` ns); 0 if none.
    pub last_ack_ns: u64,
    /// Times a writer had to wait for room in the ring.
    pub full_waits: u64,
    /// Random identity of this attach (see [`RtbRingHeader::ring_id`]).
    pub ring_id: u64,
    /// Writers waiting for room now.
    pub waiting_writers: u32,
    /// `RTB_AGENT_*` bits.
    pub agent: u32,
    /// `RTB_RING_F_*` bits, as in the ring's control page.
    pub flags: u64,
    /// Chunks marked dirty in the bitmap and not yet fetched.
    pub dirty_chunks: u64,
    /// Chunks fetched for a resync that is not done yet.
    pub resync_chunks: u64,
    /// Bytes per bitmap chunk.
    pub chunk_size: u64,
    /// Times the ring overflowed into tracking.
    pub overflows: u64,
    /// (ABI v5) The highest seq the server holds durably, as the agent
    /// last said: `tail_seq - 1` unless records before the tail are only in
    /// the agent's spool ([`RTB_ACK_SPOOLED`]).
    pub durable_seq: u64,
    /// (ABI v6) `RTB_ON_FULL_*`: what the ring does when full.
    pub on_full: u32,
    /// (ABI v6) With [`RTB_ON_FULL_BLOCK`], how long writers wait before
    /// the ring tracks, in milliseconds; 0: as long as it takes.
    pub block_timeout_ms: u32,
}

const _: () = assert!(core::mem::size_of::<RtbRingHeader>() == 128);
const _: () = assert!(core::mem::size_of::<RtbRecordHeader>() == RTB_RECORD_ALIGN as usize);
const _: () = assert!(core::mem::size_of::<RtbRingOpen>() == 48);
const _: () = assert!(core::mem::size_of::<RtbRingAck>() == 48);
const _: () = assert!(core::mem::size_of::<RtbRingInfo>() == 128);

// ---------------------------------------------------------------------------
// Marks (ABI v3).
//
// `RTB_IOC_MARK` on the control device appends an [`RTB_OP_MARK`] record,
// whose payload is the mark's name, to the ring of a device, in order with
// the device's writes, and answers its `seq`. The mark itself changes no
// data; the backup server resolves it to the newest consistency point at or
// before it. `rtbackupctl mark` flushes the device (or freezes its
// filesystem) first, so that this consistency point is the moment of the
// mark.
// ---------------------------------------------------------------------------

/// Request of [`RTB_IOC_MARK`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbMark {
    /// In: [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// In: `N` of `/dev/rtbackupN`.
    pub index: u32,
    /// In: no flags are defined yet; must be zero.
    pub flags: u32,
    /// In: bytes of `name` used, 1 to [`RTB_MARK_NAME_MAX`].
    pub name_len: u32,
    /// In: the name (see [`check_mark_name`]); bytes after `name_len` are
    /// ignored.
    pub name: [u8; RTB_MARK_NAME_MAX],
    /// In: zero. Out: `seq` of the mark record.
    pub seq: u64,
    /// In: must be zero.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<RtbMark>() == 120);

impl RtbMark {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        index: 0,
        flags: 0,
        name_len: 0,
        name: [0; RTB_MARK_NAME_MAX],
        seq: 0,
        reserved: [0; 4],
    };

    /// The name, or `None` when `name_len` exceeds the buffer.
    pub fn name_bytes(&self) -> Option<&[u8]> {
        self.name.get(..self.name_len as usize)
    }
}

/// Checks a mark name: 1 to [`RTB_MARK_NAME_MAX`] bytes from
/// `[A-Za-z0-9._-]`, not starting with `.` (the rule of volume names; `@`
/// and `:` are excluded because export names are `VOLUME@mark:NAME`).
/// Returns what is wrong.
pub fn check_mark_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > RTB_MARK_NAME_MAX {
        return Err("longer than 64 bytes");
    }
    if name.first() == Some(&b'.') {
        return Err("starts with a dot");
    }
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-');
    if !name.iter().all(allowed) {
        return Err("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed");
    }
    Ok(())
}

impl RtbRingInfo {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        size: 0,
        used: 0,
        head_seq: 0,
        tail_seq: 0,
        oldest_unacked_ns: 0,
        last_ack_ns: 0,
        full_waits: 0,
        ring_id: 0,
        waiting_writers: 0,
        agent: 0,
        flags: 0,
        dirty_chunks: 0,
        resync_chunks: 0,
        chunk_size: 0,
        overflows: 0,
        durable_seq: 0,
        on_full: 0,
        block_timeout_ms: 0,
    };
}

impl RtbRingOpen {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        flags: 0,
        index: 0,
        pad: 0,
        reserved: [0; 4],
    };
}

impl RtbRingAck {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        flags: 0,
        tail: 0,
        acked_seq: 0,
        reserved: [0; 3],
    };
}

impl RtbRecordHeader {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        magic: 0,
        op: 0,
        flags: 0,
        pad: 0,
        size: 0,
        payload_len: 0,
        seq: 0,
        sector: 0,
        len: 0,
        time_ns: 0,
        payload_crc: 0,
        header_crc: 0,
        reserved: 0,
    };

    /// Offset of `header_crc` in the encoded header.
    pub const HEADER_CRC_OFFSET: usize = 52;

    /// The 64 bytes of this header, little-endian.
    pub fn to_bytes(self) -> [u8; 64] {
        let mut b = [0u8; 64];
        put(&mut b, 0, &self.magic.to_le_bytes());
        b[4] = self.op;
        b[5] = self.flags;
        put(&mut b, 6, &self.pad.to_le_bytes());
        put(&mut b, 8, &self.size.to_le_bytes());
        put(&mut b, 12, &self.payload_len.to_le_bytes());
        put(&mut b, 16, &self.seq.to_le_bytes());
        put(&mut b, 24, &self.sector.to_le_bytes());
        put(&mut b, 32, &self.len.to_le_bytes());
        put(&mut b, 40, &self.time_ns.to_le_bytes());
        put(&mut b, 48, &self.payload_crc.to_le_bytes());
        put(&mut b, 52, &self.header_crc.to_le_bytes());
        put(&mut b, 56, &self.reserved.to_le_bytes());
        b
    }

    /// Decodes 64 bytes; checks nothing (see the tools' record parser).
    pub fn from_bytes(b: &[u8; 64]) -> Self {
        Self {
            magic: le32(b, 0),
            op: b[4],
            flags: b[5],
            pad: u16::from_le_bytes([b[6], b[7]]),
            size: le32(b, 8),
            payload_len: le32(b, 12),
            seq: le64(b, 16),
            sector: le64(b, 24),
            len: le64(b, 32),
            time_ns: le64(b, 40),
            payload_crc: le32(b, 48),
            header_crc: le32(b, 52),
            reserved: le64(b, 56),
        }
    }
}

/// Bytes a record with `payload_len` bytes of payload takes in the ring.
pub const fn record_size(payload_len: u64) -> u64 {
    (RTB_RECORD_ALIGN + payload_len + RTB_RECORD_ALIGN - 1) & !(RTB_RECORD_ALIGN - 1)
}

fn put(dst: &mut [u8; 64], at: usize, src: &[u8]) {
    let mut i = 0;
    while i < src.len() {
        dst[at + i] = src[i];
        i += 1;
    }
}

fn le32(b: &[u8; 64], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8; 64], at: usize) -> u64 {
    let mut v = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        v[i] = b[at + i];
        i += 1;
    }
    u64::from_le_bytes(v)
}

// ---------------------------------------------------------------------------
// Overflow, dirty bitmap and resync (ABI v4).
//
// Every device has a dirty bitmap, one bit per `chunk_size` bytes. While the
// ring is *tracking* ([`RTB_RING_F_TRACKING`]: it overflowed with
// [`RTB_ATTACH_TRACK`], or a full resync was asked for), writes set bits
// instead of being recorded, and never wait for the agent. The agent
// resyncs through `RTB_RING_IOC_RESYNC` on its ring file:
//
// - [`RTB_RESYNC_TRACK_ALL`]: mark every chunk dirty and start tracking (an
//   initial sync).
// - [`RTB_RESYNC_FETCH`]: move the dirty bits to the *resync* set, copy them
//   to `bitmap` (with [`RTB_RESYNC_F_PENDING`] the whole resync set: chunks
//   an earlier agent fetched and did not finish), wait until every write
//   submitted before has completed (so that reading a fetched chunk sees
//   them), and reserve one `seq` per returned chunk from `first_seq` on: the
//   agent sends each chunk as an [`RTB_OP_RESYNC`] record with its reserved
//   seq, in the stream between the records before and after. With
//   [`RTB_RESYNC_F_STREAM`] the device returns to recording in the same
//   step, and one more seq is reserved, after the chunks', for the
//   [`RTB_OP_RESYNC_END`] record.
// - [`RTB_RESYNC_DONE`]: forget the resync set (the server has the chunks
//   and the end durably); `EBUSY` while tracking.
//
// Marks are refused with `EBUSY` while tracking: there is no write order to
// put them in.
// ---------------------------------------------------------------------------

/// [`RtbResync::op`]: mark every chunk dirty and start tracking.
pub const RTB_RESYNC_TRACK_ALL: u32 = 1;
/// [`RtbResync::op`]: fetch dirty chunks and reserve seqs for them.
pub const RTB_RESYNC_FETCH: u32 = 2;
/// [`RtbResync::op`]: the resync is complete; clear the resync set.
pub const RTB_RESYNC_DONE: u32 = 3;

/// [`RtbResync::flags`] of a fetch: return the whole resync set (chunks
/// fetched earlier and not done), not only the newly dirty chunks.
pub const RTB_RESYNC_F_PENDING: u32 = 1 << 0;
/// [`RtbResync::flags`] of a fetch: return to recording in the same step
/// and reserve a seq for the resync's end record.
pub const RTB_RESYNC_F_STREAM: u32 = 1 << 1;

/// Request of [`RTB_RING_IOC_RESYNC`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbResync {
    /// In: [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// In: `RTB_RESYNC_TRACK_ALL`, `_FETCH` or `_DONE`.
    pub op: u32,
    /// In: `RTB_RESYNC_F_*` bits (fetch only).
    pub flags: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// In (fetch): user address of the bitmap buffer, 64-bit words of
    /// little-endian bit order (chunk `i` is bit `i % 64` of word `i / 64`).
    pub bitmap: u64,
    /// In (fetch): bytes at `bitmap`: at least `8 * ceil(chunks / 64)`
    /// (`EINVAL` otherwise; nothing is fetched).
    pub bitmap_bytes: u64,
    /// Out: bytes per chunk.
    pub chunk_size: u64,
    /// Out: chunks of the device (bits of the bitmap).
    pub chunks: u64,
    /// Out (fetch): chunks set in the returned bitmap.
    pub count: u64,
    /// Out (fetch): the first reserved seq; `count` seqs are reserved for
    /// the chunks (in bitmap order), plus one for the end record with
    /// [`RTB_RESYNC_F_STREAM`].
    pub first_seq: u64,
    /// Out (fetch): the ring position (a record boundary) where the
    /// reserved seqs sit: after every record ending at or before it, before
    /// every record after it.
    pub head: u64,
    /// In: must be zero.
    pub reserved: [u64; 3],
}

const _: () = assert!(core::mem::size_of::<RtbResync>() == 96);

impl RtbResync {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        op: 0,
        flags: 0,
        pad: 0,
        bitmap: 0,
        bitmap_bytes: 0,
        chunk_size: 0,
        chunks: 0,
        count: 0,
        first_seq: 0,
        head: 0,
        reserved: [0; 3],
    };
}

/// Request of [`RTB_IOC_DIRTY`] on the control device: mark the chunks set
/// in `bitmap` (the layout of [`RtbResync::bitmap`]) dirty and start
/// tracking (also when none is set), so that the agent resyncs them. Used to
/// repair what a verify found different, and by the agent's initial verify.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtbDirty {
    /// In: [`RTB_ABI_VERSION`].
    pub abi_version: u32,
    /// In: `N` of `/dev/rtbackupN`.
    pub index: u32,
    /// In: no flags are defined yet; must be zero.
    pub flags: u32,
    /// Explicit padding, zero.
    pub pad: u32,
    /// In: user address of the bitmap.
    pub bitmap: u64,
    /// In: its bytes: exactly `8 * ceil(chunks / 64)` (`EINVAL`
    /// otherwise, as for bits set past the last chunk).
    pub bitmap_bytes: u64,
    /// Out: chunks newly marked dirty.
    pub count: u64,
    /// Out: chunks of the device.
    pub chunks: u64,
    /// Out: bytes per chunk.
    pub chunk_size: u64,
    /// In: must be zero.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<RtbDirty>() == 88);

impl RtbDirty {
    /// An all-zero value.
    pub const ZERO: Self = Self {
        abi_version: 0,
        index: 0,
        flags: 0,
        pad: 0,
        bitmap: 0,
        bitmap_bytes: 0,
        count: 0,
        chunks: 0,
        chunk_size: 0,
        reserved: [0; 4],
    };
}
