// SPDX-License-Identifier: GPL-2.0

//! The write-journal ring of one device: every write, discard, write-zeroes
//! and flush becomes a record, in the order the device receives them, and
//! stays in the ring until the agent says the backup server has it.
//!
//! Producer (the request path, process context): [`Ring::record`] waits
//! until the bio overlaps no write in flight and the ring has room, then,
//! under the mutex, copies the bio's data into the ring, checksums it,
//! writes the header and publishes the new head. [`Ring::record_mark`]
//! (the control ioctl) waits for room alone and records a mark's name as
//! the payload. Consumer (the agent, through its ring file): reads published
//! records from its read-only mapping and moves the tail with [`Ring::ack`]
//! once the server has them durably.
//!
//! Overflow (Documentation/design.rst, "Overflow and resync"): a ring
//! attached with `RTB_ATTACH_TRACK` that has no room switches to tracking:
//! writes set bits in the dirty bitmap instead of being recorded. The agent
//! fetches the bits ([`Ring::ioctl`], `RTB_RING_IOC_RESYNC`), which reserves
//! sequence numbers for the chunks it will send, and finally switches the
//! ring back to recording.
//!
//! The layout and publication protocol are described in `rust/uapi.rs`; the
//! ordering argument in Documentation/design.rst.

use crate::bitmap::ChunkBitmap;
use crate::inflight::{InflightWrites, SLOTS};
use crate::onfull::{FullPolicy, FullWait, Next, Overflow};
use crate::sys::{
    self,
    bio::{BioRef, ReqOp},
    ringmem::{RingMapper, RingMem, Vma},
    wait::{Generation, PollQueue, WaitEnd},
};
use crate::uapi::{
    check_mark_name, record_size, RtbRecordHeader, RtbResync, RtbRingAck, RtbRingHeader,
    RtbRingInfo, RTB_ABI_VERSION, RTB_ACK_CONNECTED, RTB_ACK_SPOOLED, RTB_AGENT_CONNECTED,
    RTB_AGENT_OPEN, RTB_DISK_PREFIX, RTB_OP_DISCARD, RTB_OP_FLUSH, RTB_OP_MARK, RTB_OP_PAD,
    RTB_OP_WRITE, RTB_OP_WRITE_ZEROES, RTB_RECORD_ALIGN, RTB_RECORD_MAGIC, RTB_REC_FUA,
    RTB_REC_PREFLUSH, RTB_RESYNC_DONE, RTB_RESYNC_FETCH, RTB_RESYNC_F_PENDING, RTB_RESYNC_F_STREAM,
    RTB_RESYNC_TRACK_ALL, RTB_RING_F_DETACHED, RTB_RING_F_RESYNC, RTB_RING_F_TRACKING,
    RTB_RING_F_UNSYNCED, RTB_RING_IOC_ACK, RTB_RING_IOC_RESYNC, RTB_RING_MAGIC, RTB_RING_PAGE,
};
use core::mem::size_of;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use kernel::{
    alloc::{flags::GFP_KERNEL, KVVec},
    new_mutex,
    prelude::*,
    sync::{Arc, Mutex},
    uaccess::{UserPtr, UserSlice},
};

const HEADER_LEN: u64 = size_of::<RtbRecordHeader>() as u64;

/// Largest payload of one record, whatever the ring size: a record must fit
/// in one frame of the wire protocol (64 MiB).
const MAX_RECORD_PAYLOAD: u64 = 32 << 20;

/// Zeroes for the padding after a payload.
static ZEROES: [u8; RTB_RECORD_ALIGN as usize] = [0; RTB_RECORD_ALIGN as usize];

/// The header fields of a record, as the ring records them for a bio or a
/// mark.
struct Entry {
    op: u8,
    flags: u8,
    sector: u64,
    len: u64,
    has_payload: bool,
}

impl Entry {
    /// The record for `bio`, or `None` for bios that change nothing.
    fn of(bio: &BioRef<'_>) -> Option<Self> {
        let len = u64::from(bio.bytes());
        let sector = bio.sector();
        let mut flags = 0;
        if bio.is_fua() {
            flags |= RTB_REC_FUA;
        }
        if bio.is_preflush() {
            flags |= RTB_REC_PREFLUSH;
        }
        let (op, has_payload) = match bio.op() {
            ReqOp::Write if len == 0 && bio.is_preflush() => (RTB_OP_FLUSH, false),
            ReqOp::Write if len == 0 => return None,
            ReqOp::Write => (RTB_OP_WRITE, true),
            ReqOp::Flush => (RTB_OP_FLUSH, false),
            ReqOp::Discard | ReqOp::SecureErase => (RTB_OP_DISCARD, false),
            ReqOp::WriteZeroes => (RTB_OP_WRITE_ZEROES, false),
            ReqOp::Read | ReqOp::Other(_) => return None,
        };
        if op == RTB_OP_FLUSH {
            return Some(Self {
                op,
                flags: flags & RTB_REC_PREFLUSH,
                sector: 0,
                len: 0,
                has_payload: false,
            });
        }
        Some(Self {
            op,
            flags,
            sector,
            len,
            has_payload,
        })
    }

    /// Sectors `[start, end)` it changes; `None` for a flush.
    fn range(&self) -> Option<(u64, u64)> {
        (self.op != RTB_OP_FLUSH).then(|| {
            let end = self.sector.saturating_add(self.len.div_ceil(512));
            (self.sector, end)
        })
    }

    fn payload_len(&self) -> u64 {
        if self.has_payload {
            self.len
        } else {
            0
        }
    }
}

/// Where the payload of a record comes from.
enum Payload<'a, 'b> {
    /// None: discards, write-zeroes, flushes.
    Empty,
    /// The data of a write bio, this many bytes.
    Bio(&'a BioRef<'b>, u64),
    /// These bytes: a mark's name.
    Bytes(&'a [u8]),
}

impl Payload<'_, '_> {
    fn len(&self) -> u64 {
        match self {
            Self::Empty => 0,
            Self::Bio(_, len) => *len,
            Self::Bytes(bytes) => bytes.len() as u64,
        }
    }
}

/// The encoded header of a record, with both checksums filled in.
fn encode_header(mut h: RtbRecordHeader) -> [u8; 64] {
    h.header_crc = 0;
    let mut bytes = h.to_bytes();
    let crc = sys::crc32c(&bytes).to_le_bytes();
    let at = RtbRecordHeader::HEADER_CRC_OFFSET;
    bytes[at..at + 4].copy_from_slice(&crc);
    bytes
}

/// The mutable part of a ring.
struct RingState {
    mem: RingMem,
    /// End of the last published record.
    head: u64,
    /// Start of the first record not acknowledged.
    tail: u64,
    /// Sequence number of the next record.
    head_seq: u64,
    /// Sequence number of the first record not acknowledged.
    tail_seq: u64,
    /// The highest seq the server holds durably: `tail_seq - 1`, or less
    /// while records before the tail are only in the agent's spool.
    durable_seq: u64,
    /// When the tail last moved.
    last_ack_ns: u64,
    /// What the agent said with its last acknowledgement.
    connected: bool,
    /// The device is gone; nothing more will be recorded.
    detached: bool,
    /// Writes set bits in `dirty` instead of being recorded.
    tracking: bool,
    /// No initial sync has returned the ring to recording yet.
    unsynced: bool,
    /// `RTB_RING_F_*` bits, as published in the control page.
    flags: u32,
    /// Chunks written while tracking, not fetched yet.
    dirty: ChunkBitmap,
    /// Chunks fetched for the resync in progress.
    resync: ChunkBitmap,
    /// Times the ring overflowed into tracking.
    overflows: u64,
}

impl RingState {
    fn mask(&self) -> u64 {
        self.mem.data_size() - 1
    }

    /// Publishes the flags that follow from the state.
    fn publish_flags(&mut self) {
        let mut flags = 0;
        if self.detached {
            flags |= RTB_RING_F_DETACHED;
        }
        if self.tracking {
            flags |= RTB_RING_F_TRACKING;
        }
        if self.resync.count() > 0 {
            flags |= RTB_RING_F_RESYNC;
        }
        if self.unsynced {
            flags |= RTB_RING_F_UNSYNCED;
        }
        if flags != self.flags {
            self.flags = flags;
            self.mem.publish_flags(flags);
        }
    }

    /// The header of the record at `pos` (a record boundary in
    /// `[tail, head)`), checked: `EIO` if the ring is damaged there.
    fn header_at(&self, pos: u64) -> Result<RtbRecordHeader> {
        let h = self.mem.read_header(pos & self.mask())?;
        if h.magic != RTB_RECORD_MAGIC || h.size == 0 || u64::from(h.size) % RTB_RECORD_ALIGN != 0 {
            return Err(EIO);
        }
        Ok(h)
    }

    /// The seq of the first record at or after `pos` (a record boundary in
    /// `[tail, head]`), padding skipped: `head_seq` if there is none.
    fn first_seq_from(&self, mut pos: u64) -> Result<u64> {
        while pos < self.head {
            let h = self.header_at(pos)?;
            if h.op != RTB_OP_PAD {
                return Ok(h.seq);
            }
            pos += u64::from(h.size);
        }
        Ok(self.head_seq)
    }

    /// Submission time of the oldest record not acknowledged.
    fn oldest_unacked_ns(&self) -> u64 {
        let mut pos = self.tail;
        while pos < self.head {
            let Ok(h) = self.mem.read_header(pos & self.mask()) else {
                return 0;
            };
            if h.op != RTB_OP_PAD {
                return h.time_ns;
            }
            if h.size == 0 {
                return 0;
            }
            pos += u64::from(h.size);
        }
        0
    }
}

/// What [`Ring::with_room`] does when the task is killed while it waits
/// for room.
#[derive(Clone, Copy)]
enum OnKill {
    /// Let the ring track: a bio must go on, and nothing is lost.
    Track,
    /// Fail with `EINTR` (a mark: the ioctl returns to a dying task).
    Fail,
}

/// Where [`Ring::with_room`] lets a record go.
#[derive(Clone, Copy)]
enum Room {
    /// Into the ring, after `pad` bytes of padding, `size` bytes.
    Record { pad: u64, size: u64 },
    /// Nowhere: the ring is tracking; writes set dirty bits.
    Track,
}

/// The geometry of a device's bitmaps.
#[derive(Clone, Copy)]
pub(crate) struct BitmapGeometry {
    /// Chunks of the device.
    pub(crate) chunks: u64,
    /// Bytes per chunk.
    pub(crate) chunk_size: u64,
    /// Bytes of a bitmap in the ABI's form.
    pub(crate) abi_bytes: usize,
}

/// The buffers of a fetch, allocated at attach.
struct FetchBuf {
    /// The fetched bitmap in its ABI form, copied to the agent.
    bytes: KVVec<u8>,
    /// Generations of the in-flight slots at the fetch.
    generations: [i32; SLOTS],
}

/// The write-journal ring of a device.
pub(crate) struct Ring {
    state: Pin<KBox<Mutex<RingState>>>,
    /// Maps the ring's memory without taking the mutex.
    mapper: RingMapper,
    /// Writes in flight, for write ordering.
    inflight: InflightWrites,
    /// Bumped whenever room appears (an acknowledgement) or the ring stops.
    room: Generation,
    /// The agent's `poll()` sleeps here.
    poll: PollQueue,
    /// A ring file is open (the agent's handle); only one may be.
    agent_open: AtomicBool,
    /// What a full ring does.
    policy: FullPolicy,
    /// `N` of `/dev/rtbackupN`, for messages.
    index: u32,
    /// Serializes fetches; never taken by writers. Taken before `state`.
    fetch: Pin<KBox<Mutex<FetchBuf>>>,
    /// The bitmaps' geometry, fixed at attach: read without the mutex.
    geometry: BitmapGeometry,
    ring_id: u64,
    data_size: u64,
    full_waits: AtomicU64,
    waiting: AtomicU32,
}

impl Ring {
    /// The ring of `/dev/rtbackup<index>`: `data_size` bytes (a power of
    /// two, validated by the caller) for a device of `capacity_sectors`
    /// sectors, with dirty bitmaps of `chunk_size` bytes per bit (a power of
    /// two, validated by the caller), full as `policy` says.
    pub(crate) fn new(
        index: u32,
        data_size: u64,
        capacity_sectors: u64,
        logical_block_size: u32,
        chunk_size: u64,
        policy: FullPolicy,
    ) -> Result<Arc<Self>> {
        let dirty = ChunkBitmap::new(capacity_sectors, chunk_size)?;
        let resync = ChunkBitmap::new(capacity_sectors, chunk_size)?;
        let geometry = BitmapGeometry {
            chunks: dirty.chunks(),
            chunk_size: dirty.chunk_size(),
            abi_bytes: dirty.abi_bytes(),
        };
        let bytes = KVVec::from_elem(0, dirty.abi_bytes(), GFP_KERNEL)?;
        let fetch = KBox::pin_init(
            new_mutex!(
                FetchBuf {
                    bytes,
                    generations: [0; SLOTS],
                },
                "rtbackup_fetch"
            ),
            GFP_KERNEL,
        )?;
        let ring_id = sys::random_u64();
        let header = RtbRingHeader {
            magic: RTB_RING_MAGIC,
            abi_version: RTB_ABI_VERSION,
            data_offset: RTB_RING_PAGE,
            data_size,
            ring_id,
            capacity_sectors,
            head: 0,
            tail: 0,
            head_seq: 1,
            tail_seq: 1,
            logical_block_size,
            // A new attach tracks until the agent's initial sync.
            flags: RTB_RING_F_TRACKING | RTB_RING_F_UNSYNCED,
            reserved: [0; 6],
        };
        let (mem, mapper) = RingMem::new(data_size, &header)?;
        let state = KBox::pin_init(
            new_mutex!(
                RingState {
                    mem,
                    head: 0,
                    tail: 0,
                    head_seq: 1,
                    tail_seq: 1,
                    durable_seq: 0,
                    last_ack_ns: 0,
                    connected: false,
                    detached: false,
                    tracking: true,
                    unsynced: true,
                    flags: RTB_RING_F_TRACKING | RTB_RING_F_UNSYNCED,
                    dirty,
                    resync,
                    overflows: 0,
                },
                "rtbackup_ring"
            ),
            GFP_KERNEL,
        )?;
        Ok(Arc::new(
            Self {
                state,
                mapper,
                inflight: InflightWrites::new()?,
                room: Generation::new(),
                poll: PollQueue::new()?,
                agent_open: AtomicBool::new(false),
                policy,
                index,
                fetch,
                geometry,
                ring_id,
                data_size,
                full_waits: AtomicU64::new(0),
                waiting: AtomicU32::new(0),
            },
            GFP_KERNEL,
        )?)
    }

    /// The largest payload a record may carry: a quarter of the ring, at
    /// most [`MAX_RECORD_PAYLOAD`]. The disk splits bigger bios.
    pub(crate) fn max_payload(&self) -> u32 {
        (self.data_size / 4).min(MAX_RECORD_PAYLOAD) as u32
    }

    /// Records `bio` if it changes the device. Sleeps while it overlaps a
    /// write in flight or the ring is full. Returns the token to pass to
    /// [`Ring::complete`] when the bio completes (0: nothing to release).
    pub(crate) fn record(&self, bio: &BioRef<'_>) -> Result<usize> {
        let Some(entry) = Entry::of(bio) else {
            return Ok(0);
        };
        let payload_len = entry.payload_len();
        if payload_len > u64::from(self.max_payload()) {
            return Err(EIO);
        }
        let payload = if entry.has_payload {
            Payload::Bio(bio, payload_len)
        } else {
            Payload::Empty
        };
        let range = entry.range();
        let token = self.with_room(
            record_size(payload_len),
            range,
            OnKill::Track,
            |st, room| {
                let Some((start, end)) = range else {
                    // A flush: while tracking there is no order to mark.
                    return match room {
                        Room::Track => Ok(0),
                        Room::Record { pad, size } => {
                            self.write_record(st, &entry, payload, pad, size).map(|_| 0)
                        }
                    };
                };
                // Tracked writes take a slot too: a fetch waits for them.
                let token = self.inflight.claim(start, end)?;
                let written = match room {
                    Room::Track => {
                        st.dirty.set_sectors(start, end);
                        Ok(())
                    }
                    Room::Record { pad, size } => self
                        .write_record(st, &entry, payload, pad, size)
                        .map(|_| ()),
                };
                if let Err(e) = written {
                    self.inflight.release(token);
                    return Err(e);
                }
                Ok(token)
            },
        )?;
        self.poll.wake();
        Ok(token)
    }

    /// Records a mark named `name` (see `check_mark_name`; `EINVAL`
    /// otherwise) after everything recorded so far. Sleeps while the ring is
    /// full, as a writer does; `ENXIO` once the device is detached, `EBUSY`
    /// while tracking (there is no write order to place it in). Returns the
    /// mark record's sequence number.
    pub(crate) fn record_mark(&self, name: &[u8]) -> Result<u64> {
        check_mark_name(name).map_err(|_| EINVAL)?;
        let entry = Entry {
            op: RTB_OP_MARK,
            flags: 0,
            sector: 0,
            len: 0,
            // The payload is the name, not data of `len` bytes.
            has_payload: false,
        };
        let size = record_size(name.len() as u64);
        let seq = self.with_room(size, None, OnKill::Fail, |st, room| match room {
            Room::Track => Err(EBUSY),
            Room::Record { pad, size } => {
                self.write_record(st, &entry, Payload::Bytes(name), pad, size)
            }
        })?;
        self.poll.wake();
        Ok(seq)
    }

    /// Waits until the ring takes a record of `size` bytes, then runs `f`
    /// under the mutex with the [`Room`] for it: the padding to write
    /// before it and `size`, or [`Room::Track`] while tracking. While a
    /// record's sectors `range` overlap a write in flight, drops the mutex,
    /// sleeps and starts again; also while the record (with its padding)
    /// does not fit between head and tail, as long as the [`FullPolicy`]
    /// says (killably: a killed task does as `on_kill` says); then the ring
    /// starts tracking. `ENXIO` once detached.
    fn with_room<R>(
        &self,
        size: u64,
        range: Option<(u64, u64)>,
        on_kill: OnKill,
        f: impl FnOnce(&mut RingState, Room) -> Result<R>,
    ) -> Result<R> {
        let mut wait = FullWait::default();
        loop {
            let mut st = self.state.lock();
            if st.detached {
                return Err(ENXIO);
            }
            if let Some((start, end)) = range {
                if let Some(busy) = self.inflight.must_wait(start, end) {
                    drop(st);
                    busy.wait();
                    continue;
                }
            }
            if st.tracking {
                return f(&mut st, Room::Track);
            }
            let off = st.head & st.mask();
            let to_end = self.data_size - off;
            let pad = if size > to_end { to_end } else { 0 };
            if st.head - st.tail + pad + size > self.data_size {
                let first = !wait.started();
                let ms = match wait.next(&self.policy, sys::monotonic_ns()) {
                    Next::Wait(ms) => ms,
                    Next::Track(why) => {
                        self.overflow(&mut st, why);
                        return f(&mut st, Room::Track);
                    }
                };
                let generation = self.room.get();
                drop(st);
                if first {
                    self.full_waits.fetch_add(1, Relaxed);
                }
                self.waiting.fetch_add(1, Relaxed);
                let end = self.room.wait_changed_killable(generation, ms);
                self.waiting.fetch_sub(1, Relaxed);
                if end == WaitEnd::Killed {
                    match on_kill {
                        OnKill::Track => wait.kill(),
                        OnKill::Fail => return Err(EINTR),
                    }
                }
                continue;
            }
            return f(&mut st, Room::Record { pad, size });
        }
    }

    /// A full ring starts tracking, for the reason `why`.
    fn overflow(&self, st: &mut RingState, why: Overflow) {
        st.overflows += 1;
        self.start_tracking(st);
        let (prefix, index) = (RTB_DISK_PREFIX, self.index);
        match why {
            Overflow::Policy => pr_warn!("{prefix}{index}: ring full: tracking writes\n"),
            Overflow::TimedOut => pr_warn!(
                "{prefix}{index}: ring full for the block timeout ({} ms): tracking writes\n",
                self.policy.abi().1
            ),
            Overflow::Killed => pr_warn!(
                "{prefix}{index}: ring full and a waiting writer killed: tracking writes\n"
            ),
        }
    }

    /// Changes what a full ring does; writers waiting for room decide anew.
    pub(crate) fn set_full_policy(&self, track: Option<bool>, block_timeout_ms: Option<u32>) {
        self.policy.set(track, block_timeout_ms);
        self.room.bump();
    }

    /// What a full ring does: `RTB_ON_FULL_*` and the block timeout.
    pub(crate) fn info_policy(&self) -> (u32, u32) {
        self.policy.abi()
    }

    /// Switches to tracking; writers waiting for room go on (they find the
    /// ring tracking) and the agent's poll sees it.
    fn start_tracking(&self, st: &mut RingState) {
        st.tracking = true;
        st.publish_flags();
        self.room.bump();
        self.poll.wake();
    }

    /// Writes (padding and) the record at the head and publishes it.
    /// Returns its sequence number.
    fn write_record(
        &self,
        st: &mut RingState,
        entry: &Entry,
        payload: Payload<'_, '_>,
        pad: u64,
        size: u64,
    ) -> Result<u64> {
        let mut head = st.head;
        if pad > 0 {
            let filler = encode_header(RtbRecordHeader {
                magic: RTB_RECORD_MAGIC,
                op: RTB_OP_PAD,
                size: pad as u32,
                ..RtbRecordHeader::ZERO
            });
            st.mem.write(head & st.mask(), &filler)?;
            head += pad;
        }
        let off = head & st.mask();
        let payload_len = payload.len();
        match payload {
            Payload::Empty => {}
            Payload::Bio(bio, len) => st.mem.copy_bio(off + HEADER_LEN, bio, len)?,
            Payload::Bytes(bytes) => st.mem.write(off + HEADER_LEN, bytes)?,
        }
        let payload_crc = if payload_len > 0 {
            st.mem.crc32c(off + HEADER_LEN, payload_len)?
        } else {
            0
        };
        let tail_pad = size - HEADER_LEN - payload_len;
        st.mem
            .write(off + HEADER_LEN + payload_len, &ZEROES[..tail_pad as usize])?;
        let seq = st.head_seq;
        let header = encode_header(RtbRecordHeader {
            magic: RTB_RECORD_MAGIC,
            op: entry.op,
            flags: entry.flags,
            size: size as u32,
            payload_len: payload_len as u32,
            seq,
            sector: entry.sector,
            len: entry.len,
            time_ns: sys::real_time_ns(),
            payload_crc,
            ..RtbRecordHeader::ZERO
        });
        st.mem.write(off, &header)?;
        st.head = head + size;
        st.head_seq += 1;
        let (head, head_seq) = (st.head, st.head_seq);
        st.mem.publish_head(head, head_seq);
        Ok(seq)
    }

    /// The bio of `token` completed at the lower device. Any context.
    pub(crate) fn complete(&self, token: usize) {
        if token != 0 {
            self.inflight.release(token);
        }
    }

    /// Moves the tail to `req.tail`, the end of a record in `[tail, head]`.
    fn ack(&self, req: &RtbRingAck) -> Result {
        if req.abi_version != RTB_ABI_VERSION {
            return Err(sys::eproto());
        }
        if req.flags & !(RTB_ACK_CONNECTED | RTB_ACK_SPOOLED) != 0
            || req.reserved.iter().any(|&r| r != 0)
        {
            return Err(EINVAL);
        }
        let mut st = self.state.lock();
        if req.tail < st.tail || req.tail > st.head || req.acked_seq >= st.head_seq {
            return Err(EINVAL);
        }
        let mut pos = st.tail;
        let mut seq = st.tail_seq;
        while pos < req.tail {
            let h = st.header_at(pos)?;
            if h.op != RTB_OP_PAD {
                seq = h.seq + 1;
            }
            pos += u64::from(h.size);
        }
        if pos != req.tail {
            return Err(EINVAL);
        }
        // The acknowledgement may cover seqs reserved for resync records
        // (sent apart, never in the ring), but never a record the ring
        // still holds after the new tail: `sync` would report durable what
        // the server does not have.
        if req.acked_seq >= st.first_seq_from(req.tail)? {
            return Err(EINVAL);
        }
        // Seqs reserved for resync records the server acknowledged.
        let seq = seq.max(req.acked_seq.saturating_add(1)).max(st.tail_seq);
        let moved = req.tail != st.tail;
        st.tail = req.tail;
        // What the server holds: as the agent says while records are only
        // in its spool; otherwise everything before a tail that moved. An
        // acknowledgement that moves nothing (a connection report) leaves
        // it, so that it never claims spooled records for the server.
        if req.flags & RTB_ACK_SPOOLED != 0 {
            st.durable_seq = req.acked_seq.min(seq.saturating_sub(1));
        } else if seq != st.tail_seq {
            st.durable_seq = seq.saturating_sub(1);
        }
        st.tail_seq = seq;
        st.connected = req.flags & RTB_ACK_CONNECTED != 0;
        if moved {
            st.last_ack_ns = sys::real_time_ns();
        }
        let (tail, tail_seq) = (st.tail, st.tail_seq);
        st.mem.publish_tail(tail, tail_seq);
        drop(st);
        if moved {
            self.room.bump();
        }
        Ok(())
    }

    /// Handles an ioctl of the ring file.
    pub(crate) fn ioctl(&self, cmd: u32, arg: UserPtr) -> Result<isize> {
        match cmd {
            RTB_RING_IOC_ACK => {
                let req: RtbRingAck = UserSlice::new(arg, size_of::<RtbRingAck>())
                    .reader()
                    .read()?;
                self.ack(&req)?;
                Ok(0)
            }
            RTB_RING_IOC_RESYNC => {
                self.resync_ioctl(arg)?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }

    /// The geometry of the device's bitmaps.
    pub(crate) fn bitmap_geometry(&self) -> BitmapGeometry {
        self.geometry
    }

    /// Marks the chunks set in `bitmap` (the ABI's form, validated here)
    /// dirty and starts tracking; returns how many were newly marked.
    /// `ENXIO` once detached.
    pub(crate) fn mark_dirty(&self, bitmap: &[u8]) -> Result<u64> {
        let mut st = self.state.lock();
        if st.detached {
            return Err(ENXIO);
        }
        let added = st.dirty.or_abi(bitmap)?;
        self.start_tracking(&mut st);
        Ok(added)
    }

    /// Handles `RTB_RING_IOC_RESYNC`: validates the request completely,
    /// runs it, and answers the bitmap's geometry (and, for a fetch, the
    /// count and the first reserved seq).
    fn resync_ioctl(&self, arg: UserPtr) -> Result {
        let (mut reader, mut writer) = UserSlice::new(arg, size_of::<RtbResync>()).reader_writer();
        let mut req: RtbResync = reader.read()?;
        if req.abi_version != RTB_ABI_VERSION {
            return Err(sys::eproto());
        }
        let outputs = [
            req.chunk_size,
            req.chunks,
            req.count,
            req.first_seq,
            req.head,
        ];
        if req.pad != 0
            || req.flags & !(RTB_RESYNC_F_PENDING | RTB_RESYNC_F_STREAM) != 0
            || outputs.iter().any(|&v| v != 0)
            || req.reserved.iter().any(|&r| r != 0)
        {
            return Err(EINVAL);
        }
        let fetch_args = req.flags != 0 || req.bitmap != 0 || req.bitmap_bytes != 0;
        // Fault before anything changes if the answer cannot be written
        // (a read-only or unmapped request): every op changes the ring.
        writer.write(&req)?;
        match req.op {
            RTB_RESYNC_FETCH => self.fetch(&mut req)?,
            RTB_RESYNC_TRACK_ALL if !fetch_args => {
                let mut st = self.state.lock();
                if st.detached {
                    return Err(ENXIO);
                }
                st.dirty.set_all();
                self.start_tracking(&mut st);
            }
            RTB_RESYNC_DONE if !fetch_args => {
                let mut st = self.state.lock();
                if st.tracking {
                    return Err(EBUSY);
                }
                st.resync.clear();
                st.publish_flags();
            }
            _ => return Err(EINVAL),
        }
        req.chunk_size = self.geometry.chunk_size;
        req.chunks = self.geometry.chunks;
        UserSlice::new(arg, size_of::<RtbResync>())
            .writer()
            .write(&req)
    }

    /// Fetches dirty chunks into `req.bitmap` and reserves their seqs (see
    /// `rust/uapi.rs`). The agent's buffer is checked by writing zeroes to
    /// it before anything changes; the bitmap is copied out after the ring's
    /// mutex is dropped (a fault there must not hold up writers), and after
    /// the writes in flight at the fetch have completed.
    fn fetch(&self, req: &mut RtbResync) -> Result {
        let mut guard = self.fetch.lock();
        let fb = &mut *guard;
        let len = fb.bytes.len();
        if req.bitmap_bytes < len as u64 {
            return Err(EINVAL);
        }
        fb.bytes.iter_mut().for_each(|b| *b = 0);
        UserSlice::new(sys::user_ptr(req.bitmap), len)
            .writer()
            .write_slice(&fb.bytes)?;
        let stream = req.flags & RTB_RESYNC_F_STREAM != 0;
        let (count, first_seq, head) = {
            let mut guard = self.state.lock();
            let st = &mut *guard;
            if st.detached {
                return Err(ENXIO);
            }
            st.resync.or_from(&st.dirty);
            let fetched = if req.flags & RTB_RESYNC_F_PENDING != 0 {
                &st.resync
            } else {
                &st.dirty
            };
            fetched.export(&mut fb.bytes);
            let count = fetched.count();
            st.dirty.clear();
            let first_seq = st.head_seq;
            st.head_seq = first_seq
                .checked_add(count + u64::from(stream))
                .ok_or_else(sys::eoverflow)?;
            let (head, head_seq) = (st.head, st.head_seq);
            st.mem.publish_head(head, head_seq);
            if stream {
                st.tracking = false;
                st.unsynced = false;
            }
            st.publish_flags();
            self.inflight.snapshot(&mut fb.generations);
            (count, first_seq, head)
        };
        self.inflight.wait_released(&fb.generations);
        UserSlice::new(sys::user_ptr(req.bitmap), len)
            .writer()
            .write_slice(&fb.bytes)?;
        req.count = count;
        req.first_seq = first_seq;
        req.head = head;
        Ok(())
    }

    /// Maps the ring read-only into `vma` (offset 0, at most the whole).
    /// Takes no lock: writers are not held up, and the ring's mutex is never
    /// taken under `mmap_lock`.
    pub(crate) fn mmap(&self, vma: &Vma) -> Result {
        if vma.writable_or_executable() {
            return Err(EACCES);
        }
        if vma.pgoff() != 0 || vma.len() > self.mapper.len() {
            return Err(EINVAL);
        }
        self.mapper.map(vma)
    }

    /// The wait queue of `poll()`.
    pub(crate) fn poll_queue(&self) -> &PollQueue {
        &self.poll
    }

    /// (readable, hung up) for `poll()`: readable while records wait for
    /// an acknowledgement or the ring is tracking (a resync is due); hung
    /// up once detached. Level-triggered and stateless, so any number of
    /// `poll`/`epoll` calls see the same.
    pub(crate) fn poll_state(&self) -> (bool, bool) {
        let st = self.state.lock();
        (st.head != st.tail || st.tracking, st.detached)
    }

    /// Takes the agent's handle; `EBUSY` if another agent holds it.
    pub(crate) fn claim_agent(&self) -> Result {
        if self.agent_open.swap(true, Relaxed) {
            return Err(EBUSY);
        }
        Ok(())
    }

    /// The agent's handle was closed.
    pub(crate) fn release_agent(&self) {
        self.state.lock().connected = false;
        self.agent_open.store(false, Relaxed);
    }

    /// The device is being detached: no more records; pollers see a hangup.
    pub(crate) fn detach(&self) {
        let mut st = self.state.lock();
        st.detached = true;
        st.publish_flags();
        drop(st);
        self.room.bump();
        self.poll.wake_hangup();
    }

    /// The state shown by `RTB_IOC_LIST`.
    pub(crate) fn info(&self) -> RtbRingInfo {
        let (on_full, block_timeout_ms) = self.policy.abi();
        let st = self.state.lock();
        let mut agent = 0;
        if self.agent_open.load(Relaxed) {
            agent |= RTB_AGENT_OPEN;
            if st.connected {
                agent |= RTB_AGENT_CONNECTED;
            }
        }
        RtbRingInfo {
            size: self.data_size,
            used: st.head - st.tail,
            head_seq: st.head_seq,
            tail_seq: st.tail_seq,
            oldest_unacked_ns: st.oldest_unacked_ns(),
            last_ack_ns: st.last_ack_ns,
            full_waits: self.full_waits.load(Relaxed),
            ring_id: self.ring_id,
            waiting_writers: self.waiting.load(Relaxed),
            agent,
            flags: u64::from(st.flags),
            dirty_chunks: st.dirty.count(),
            resync_chunks: st.resync.count(),
            chunk_size: self.geometry.chunk_size,
            overflows: st.overflows,
            durable_seq: st.durable_seq,
            on_full,
            block_timeout_ms,
        }
    }
}
