//! A ring in memory with a producer that behaves like the kernel's, for
//! tests and simulations of the consumer (the agent) without the module.
//!
//! The producer lays records out exactly as the module does: records start
//! at multiples of 64, never straddle the end of the data area (a PAD
//! record with seq 0 fills the rest and the record starts at offset 0),
//! are written completely before `head` is stored with release ordering,
//! and never overwrite bytes in `[tail, head)`. Acknowledgements are
//! checked as the kernel checks them (the end of a record in
//! `[tail, head]`). [`MemRing::detach`] ends it as a detach of the device
//! does: no record is added any more, the control page gets
//! `RTB_RING_F_DETACHED`, `wait` reports [`Wakeup::Detached`], and the
//! records left stay readable and can still be acknowledged.

use crate::error::{Result, RingError};
use crate::memory::{AlignedBytes, SharedMemory};
use crate::source::{RingSource, Wakeup};
use crate::view::{
    RingView, MIN_VIEW_DATA_SIZE, OFF_ABI_VERSION, OFF_BLOCK_SIZE, OFF_CAPACITY, OFF_DATA_OFFSET,
    OFF_DATA_SIZE, OFF_FLAGS, OFF_HEAD, OFF_HEAD_SEQ, OFF_MAGIC, OFF_RING_ID, OFF_TAIL,
    OFF_TAIL_SEQ,
};
use rtbackup_abi::{
    record_size, RTB_ABI_VERSION, RTB_OP_FLUSH, RTB_OP_PAD, RTB_OP_WRITE, RTB_RECORD_ALIGN,
    RTB_RING_F_DETACHED, RTB_RING_F_RESYNC, RTB_RING_F_TRACKING, RTB_RING_F_UNSYNCED,
    RTB_RING_MAGIC, RTB_RING_MAX_SIZE, RTB_RING_PAGE,
};
use rtbackup_control::{Resync, ResyncOp};
use rtbackup_proto::build_record;
use std::cell::UnsafeCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const PAGE: usize = RTB_RING_PAGE as usize;

/// The memory of a [`MemRing`]: zeroed, 8-aligned, written only by its
/// producer (under the producer's lock) outside the published records.
pub struct MemBuf {
    cells: Box<[UnsafeCell<u64>]>,
}

impl std::fmt::Debug for MemBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBuf").field("len", &self.len()).finish()
    }
}

// SAFETY: the control page fields that change are only accessed with
// atomics; data bytes are written by the producer only outside the
// published range `[tail, head)` that readers may look at, and only while
// holding the producer's lock (see `MemRing`).
unsafe impl Sync for MemBuf {}
// SAFETY: plain memory without thread affinity.
unsafe impl Send for MemBuf {}

// SAFETY: a boxed slice of `u64` is 8-aligned and does not move; see the
// `Sync` implementation for who writes what.
unsafe impl SharedMemory for MemBuf {
    fn as_ptr(&self) -> *const u8 {
        UnsafeCell::raw_get(self.cells.as_ptr()).cast::<u8>()
    }
    fn len(&self) -> usize {
        self.cells.len() * 8
    }
}

impl MemBuf {
    fn zeroed(len: usize) -> Self {
        Self {
            cells: (0..len.div_ceil(8)).map(|_| UnsafeCell::new(0)).collect(),
        }
    }

    fn store_u64(&self, off: usize, v: u64, order: Ordering) {
        assert!(off.is_multiple_of(8) && off < PAGE);
        // SAFETY: `off` is 8-aligned and inside the memory; the cells are
        // `UnsafeCell`s, valid for atomic reads and writes; every access
        // to the changing control fields is atomic.
        let a = unsafe { AtomicU64::from_ptr(UnsafeCell::raw_get(&self.cells[off / 8])) };
        a.store(v, order);
    }

    fn store_u32(&self, off: usize, v: u32) {
        assert!(off.is_multiple_of(4) && off < PAGE);
        let base = UnsafeCell::raw_get(self.cells.as_ptr()).cast::<u8>();
        // SAFETY: `off` is 4-aligned and inside the memory, which comes
        // from `UnsafeCell`s, valid for atomic reads and writes; readers
        // load these fields atomically.
        let a = unsafe { AtomicU32::from_ptr(base.add(off).cast::<u32>()) };
        a.store(v, Ordering::Release);
    }

    /// Writes `bytes` at `offset` of the data area.
    ///
    /// # Safety
    ///
    /// The caller holds the producer lock and the range lies outside the
    /// published records `[tail, head)`, so no reader looks at it.
    unsafe fn write_data(&self, offset: u64, bytes: &[u8]) {
        let start = PAGE + offset as usize;
        assert!(start + bytes.len() <= self.len());
        // SAFETY: in bounds (asserted); the pointer comes from the
        // `UnsafeCell` slice, so writing through it is allowed; no reader
        // looks at the range (our contract) and the lock excludes other
        // writers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                UnsafeCell::raw_get(self.cells.as_ptr())
                    .cast::<u8>()
                    .add(start),
                bytes.len(),
            );
        }
    }
}

/// One call of [`RingSource::set_tail`] on a [`MemRing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckCall {
    /// The new consumer position.
    pub position: u64,
    /// The new `tail_seq`: records up to `tail_seq - 1` are acknowledged.
    pub tail_seq: u64,
    /// The connection state reported.
    pub connected: bool,
    /// The seq the server holds durably, when records before the tail are
    /// only in the agent's spool ([`RingSource::set_tail_spooled`]).
    pub spooled_durable: Option<u64>,
}

#[derive(Debug)]
struct State {
    /// End of the records written, published or not.
    staged: u64,
    /// Seq of the next record to write.
    staged_seq: u64,
    head: u64,
    head_seq: u64,
    tail: u64,
    tail_seq: u64,
    /// As the kernel's `durable_seq` (ABI v5).
    durable_seq: u64,
    /// Records were published since the last wakeup (edge-triggered poll).
    woken: bool,
    /// The device was detached: no record is added any more.
    detached: bool,
    acks: Vec<AckCall>,
    /// The simulated device under the ring, if any.
    device: Option<Device>,
}

/// A device under a [`MemRing`], kept as the module keeps it: its bytes,
/// and the dirty bitmap and resync set of Documentation/design.rst,
/// "Overflow and resync".
#[derive(Debug)]
struct Device {
    image: Vec<u8>,
    chunk_size: u64,
    track_on_full: bool,
    tracking: bool,
    unsynced: bool,
    dirty: BTreeSet<u64>,
    resync: BTreeSet<u64>,
    /// Sectors written by [`MemRing::device_write`], as the block layer's
    /// statistics count them.
    written_sectors: u64,
}

impl Device {
    fn chunks(&self) -> u64 {
        (self.image.len() as u64).div_ceil(self.chunk_size)
    }

    fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = ((offset + len - 1) / self.chunk_size).min(self.chunks() - 1);
        self.dirty.extend(offset / self.chunk_size..=last);
    }

    fn flags(&self) -> u32 {
        let mut f = 0;
        if self.tracking {
            f |= RTB_RING_F_TRACKING;
        }
        if !self.resync.is_empty() {
            f |= RTB_RING_F_RESYNC;
        }
        if self.unsynced {
            f |= RTB_RING_F_UNSYNCED;
        }
        f
    }
}

/// How [`MemRing`]'s `wait` decides that the ring is readable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PollMode {
    /// Readable once after each publication (like perf's ring buffer).
    Edge,
    /// Readable while records are unacknowledged (`head != tail`), as the
    /// kernel's ring is.
    #[default]
    Level,
}

/// A ring in memory with a kernel-like producer; see the module docs.
#[derive(Debug)]
pub struct MemRing {
    view: RingView<Arc<MemBuf>>,
    mem: Arc<MemBuf>,
    state: Mutex<State>,
    changed: Condvar,
    poll_mode: PollMode,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl MemRing {
    /// An empty ring with a data area of `data_size` bytes (a power of two
    /// of at least [`MIN_VIEW_DATA_SIZE`]), for a device of
    /// `capacity_sectors` sectors.
    pub fn new(
        data_size: u64,
        ring_id: u64,
        capacity_sectors: u64,
        logical_block_size: u32,
    ) -> Result<Self> {
        if !data_size.is_power_of_two()
            || !(MIN_VIEW_DATA_SIZE..=RTB_RING_MAX_SIZE).contains(&data_size)
        {
            return Err(RingError::BadControlPage {
                reason: format!(
                    "data size {data_size} is not a power of two of at least {MIN_VIEW_DATA_SIZE}"
                ),
            });
        }
        let len =
            usize::try_from(RTB_RING_PAGE + data_size).map_err(|_| RingError::BadControlPage {
                reason: format!("data size {data_size} exceeds the address space"),
            })?;
        let mem = Arc::new(MemBuf::zeroed(len));
        mem.store_u32(OFF_MAGIC, RTB_RING_MAGIC);
        mem.store_u32(OFF_ABI_VERSION, RTB_ABI_VERSION);
        mem.store_u64(OFF_DATA_OFFSET, RTB_RING_PAGE, Ordering::Relaxed);
        mem.store_u64(OFF_DATA_SIZE, data_size, Ordering::Relaxed);
        mem.store_u64(OFF_RING_ID, ring_id, Ordering::Relaxed);
        mem.store_u64(OFF_CAPACITY, capacity_sectors, Ordering::Relaxed);
        mem.store_u64(OFF_HEAD_SEQ, 1, Ordering::Relaxed);
        mem.store_u64(OFF_TAIL_SEQ, 1, Ordering::Relaxed);
        mem.store_u32(OFF_BLOCK_SIZE, logical_block_size);
        let view = RingView::new(Arc::clone(&mem))?;
        Ok(Self {
            view,
            mem,
            state: Mutex::new(State {
                staged: 0,
                staged_seq: 1,
                head: 0,
                head_seq: 1,
                tail: 0,
                tail_seq: 1,
                durable_seq: 0,
                woken: false,
                detached: false,
                acks: Vec::new(),
                device: None,
            }),
            changed: Condvar::new(),
            poll_mode: PollMode::Level,
        })
    }

    /// Chooses how `wait` reports readiness (default: [`PollMode::Level`],
    /// as the kernel).
    pub fn with_poll_mode(mut self, mode: PollMode) -> Self {
        self.poll_mode = mode;
        self
    }

    /// Puts a simulated device under the ring (zeroes, `capacity_sectors`
    /// sectors) with dirty bitmaps of `chunk_size` bytes per bit; with
    /// `track_on_full`, a write that does not fit starts tracking, as the
    /// module attached with `--on-full track` does.
    pub fn with_device(self, chunk_size: u64, track_on_full: bool) -> Self {
        let bytes = self.view.capacity_sectors() * 512;
        self.lock().device = Some(Device {
            image: vec![0; bytes as usize],
            chunk_size,
            track_on_full,
            tracking: false,
            unsynced: false,
            dirty: BTreeSet::new(),
            resync: BTreeSet::new(),
            written_sectors: 0,
        });
        self
    }

    /// Puts the simulated device in the state of a fresh attach: tracking,
    /// with no dirty chunk, until an initial sync returns it to recording.
    pub fn unsynced(self) -> Self {
        {
            let mut st = self.lock();
            let dev = Self::device_mut(&mut st);
            dev.tracking = true;
            dev.unsynced = true;
            self.publish_device_flags(&st);
        }
        self
    }

    fn device_mut(st: &mut State) -> &mut Device {
        st.device
            .as_mut()
            .expect("MemRing::with_device was not called")
    }

    fn publish_device_flags(&self, st: &State) {
        let mut flags = self.view.flags() & RTB_RING_F_DETACHED;
        if let Some(d) = &st.device {
            flags |= d.flags();
        }
        self.mem.store_u32(OFF_FLAGS, flags);
    }

    /// Records `rec` (built for the next seq by `make`) as the module
    /// records a bio of the simulated device: in the ring, or, while
    /// tracking, not at all (`None`). A full ring starts tracking when the
    /// device tracks on full; otherwise [`RingError::Full`].
    fn device_record(
        &self,
        st: &mut State,
        make: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Option<u64>> {
        if Self::device_mut(st).tracking {
            return Ok(None);
        }
        let seq = st.staged_seq;
        match self.stage_locked(st, &make(seq)) {
            Ok(_) => {
                self.publish_locked(st);
                Ok(Some(seq))
            }
            Err(RingError::Full { .. }) if Self::device_mut(st).track_on_full => {
                Self::device_mut(st).tracking = true;
                self.publish_device_flags(st);
                self.changed.notify_all();
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// A write to the simulated device, as the module handles it: recorded
    /// in the ring (returns its seq), or, while tracking, marked dirty
    /// (returns `None`); see `device_record`.
    pub fn device_write(&self, sector: u64, data: &[u8]) -> Result<Option<u64>> {
        let mut st = self.lock();
        let len = data.len() as u64;
        let seq = self.device_record(&mut st, |seq| {
            build_record(RTB_OP_WRITE, 0, seq, sector, len, now_ns(), data)
        })?;
        let dev = Self::device_mut(&mut st);
        let offset = sector * 512;
        dev.image[offset as usize..(offset + len) as usize].copy_from_slice(data);
        dev.written_sectors += len.div_ceil(512);
        if seq.is_none() {
            dev.mark(offset, len);
        }
        Ok(seq)
    }

    /// A flush of the simulated device: a FLUSH record, or nothing while
    /// tracking.
    pub fn device_flush(&self) -> Result<Option<u64>> {
        let mut st = self.lock();
        self.device_record(&mut st, |seq| {
            build_record(RTB_OP_FLUSH, 0, seq, 0, 0, now_ns(), &[])
        })
    }

    /// Puts `data` on the simulated device at `offset` as if it had been
    /// written before the attach: neither recorded nor tracked.
    pub fn device_preload(&self, offset: u64, data: &[u8]) {
        let mut st = self.lock();
        let dev = Self::device_mut(&mut st);
        dev.image[offset as usize..offset as usize + data.len()].copy_from_slice(data);
    }

    /// The simulated device's bytes.
    pub fn device_image(&self) -> Vec<u8> {
        self.lock()
            .device
            .as_ref()
            .map(|d| d.image.clone())
            .unwrap_or_default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes `size` needs at the staging position, with the padding in
    /// front of it when it does not fit before the end of the data area.
    fn room_needed(&self, st: &State, size: u64) -> u64 {
        let to_end = self.view.data_size() - self.view.offset(st.staged);
        if size <= to_end {
            size
        } else {
            to_end + size
        }
    }

    fn free(&self, st: &State) -> u64 {
        self.view.data_size() - (st.staged - st.tail)
    }

    /// Writes `record` (raw bytes, not checked: tests stage corrupt
    /// records too) after the last one, with a PAD record before it when
    /// it does not fit before the end of the data area, without publishing
    /// it. The next record gets the next seq whatever `record` holds.
    /// Returns the record's position.
    pub fn stage(&self, record: &[u8]) -> Result<u64> {
        let mut st = self.lock();
        self.stage_locked(&mut st, record)
    }

    fn stage_locked(&self, st: &mut State, record: &[u8]) -> Result<u64> {
        if st.detached {
            return Err(RingError::Detached);
        }
        let size = record.len() as u64;
        assert!(
            size >= RTB_RECORD_ALIGN && size.is_multiple_of(RTB_RECORD_ALIGN),
            "a record is a multiple of {RTB_RECORD_ALIGN} bytes"
        );
        let need = self.room_needed(st, size);
        let free = self.free(st);
        if need > free {
            return Err(RingError::Full { need, free });
        }
        let to_end = self.view.data_size() - self.view.offset(st.staged);
        if size > to_end {
            let mut pad = build_record(RTB_OP_PAD, 0, 0, 0, 0, 0, &[]);
            let pad_size = u32::try_from(to_end).expect("data area below 4 GiB for padding");
            pad[8..12].copy_from_slice(&pad_size.to_le_bytes());
            let hdr: &[u8; 64] = pad[..64].try_into().expect("64-byte header");
            let crc = rtbackup_proto::header_crc(hdr);
            pad[52..56].copy_from_slice(&crc.to_le_bytes());
            // SAFETY: we hold the lock; `[staged, staged + need)` is free
            // (checked above), outside `[tail, head)`.
            unsafe { self.mem.write_data(self.view.offset(st.staged), &pad) };
            st.staged += to_end;
        }
        let pos = st.staged;
        // SAFETY: as above; the record fits before the end of the area.
        unsafe { self.mem.write_data(self.view.offset(pos), record) };
        st.staged += size;
        st.staged_seq += 1;
        Ok(pos)
    }

    /// Builds a record with the next seq (see [`rtbackup_proto::build_record`])
    /// and stages it. Returns its seq.
    pub fn stage_record(
        &self,
        op: u8,
        flags: u8,
        sector: u64,
        len: u64,
        payload: &[u8],
    ) -> Result<u64> {
        let mut st = self.lock();
        let seq = st.staged_seq;
        let rec = build_record(op, flags, seq, sector, len, now_ns(), payload);
        self.stage_locked(&mut st, &rec)?;
        Ok(seq)
    }

    /// Publishes every staged record: stores `head` (release) and
    /// `head_seq`, and wakes waiters.
    pub fn publish(&self) {
        let mut st = self.lock();
        self.publish_locked(&mut st);
    }

    fn publish_locked(&self, st: &mut State) {
        st.head = st.staged;
        st.head_seq = st.staged_seq;
        self.mem
            .store_u64(OFF_HEAD_SEQ, st.head_seq, Ordering::Release);
        self.mem.store_u64(OFF_HEAD, st.head, Ordering::Release);
        st.woken = true;
        self.changed.notify_all();
    }

    /// Stages and publishes one record; fails with [`RingError::Full`] when
    /// there is no room. Returns its seq.
    pub fn append(&self, op: u8, flags: u8, sector: u64, len: u64, payload: &[u8]) -> Result<u64> {
        let mut st = self.lock();
        let seq = st.staged_seq;
        let rec = build_record(op, flags, seq, sector, len, now_ns(), payload);
        self.stage_locked(&mut st, &rec)?;
        self.publish_locked(&mut st);
        Ok(seq)
    }

    /// Like [`MemRing::append`], waiting up to `timeout` for the consumer
    /// to make room, as a writer in the kernel waits.
    pub fn append_wait(
        &self,
        op: u8,
        flags: u8,
        sector: u64,
        len: u64,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let size = record_size(payload.len() as u64);
        let mut st = self.lock();
        while self.room_needed(&st, size) > self.free(&st) {
            if st.detached {
                return Err(RingError::Detached);
            }
            let now = Instant::now();
            if now >= deadline || size > self.view.data_size() {
                return Err(RingError::Full {
                    need: self.room_needed(&st, size),
                    free: self.free(&st),
                });
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let seq = st.staged_seq;
        let rec = build_record(op, flags, seq, sector, len, now_ns(), payload);
        self.stage_locked(&mut st, &rec)?;
        self.publish_locked(&mut st);
        Ok(seq)
    }

    /// Seq the next staged record gets.
    pub fn next_seq(&self) -> u64 {
        self.lock().staged_seq
    }

    /// Every acknowledgement so far, in order.
    pub fn acks(&self) -> Vec<AckCall> {
        self.lock().acks.clone()
    }

    /// Detaches the device, as the kernel does: publishes what was staged
    /// (a record in the ring at a detach is complete), sets
    /// `RTB_RING_F_DETACHED` in the control page (after the last `head`),
    /// makes `wait` report [`Wakeup::Detached`] and every later (or
    /// waiting) append fail with [`RingError::Detached`]. The records left
    /// stay readable and acknowledgements keep working.
    pub fn detach(&self) {
        let mut st = self.lock();
        if st.staged != st.head {
            self.publish_locked(&mut st);
        }
        st.detached = true;
        self.mem
            .store_u32(OFF_FLAGS, self.view.flags() | RTB_RING_F_DETACHED);
        self.changed.notify_all();
    }

    /// A copy of the whole ring memory (control page and data area).
    pub fn snapshot(&self) -> AlignedBytes {
        let _st = self.lock();
        let mut out = AlignedBytes::zeroed(self.mem.len());
        // SAFETY: the memory is readable for `len()` bytes; holding the
        // lock excludes the producer's writes, and the control fields are
        // only written under the lock too.
        let src = unsafe { std::slice::from_raw_parts(self.mem.as_ptr(), self.mem.len()) };
        out.as_mut_bytes().copy_from_slice(src);
        out
    }

    /// The seq the ring reports as durable on the server (the kernel's
    /// `RtbRingInfo::durable_seq`).
    pub fn durable_seq(&self) -> u64 {
        self.lock().durable_seq
    }

    /// Moves the tail as the kernel's `RTB_RING_IOC_ACK` does; `spooled`:
    /// the durable seq of an `RTB_ACK_SPOOLED` acknowledgement.
    fn move_tail(
        &self,
        cursor: crate::view::Cursor,
        connected: bool,
        spooled: Option<u64>,
    ) -> Result<()> {
        let position = cursor.pos;
        let mut st = self.lock();
        let from = crate::view::Cursor {
            pos: st.tail,
            seq: st.tail_seq,
        };
        let mut cur = self.view.cursor_at(from, position)?;
        // As the kernel: reserved seqs may be covered, never a record the
        // ring still holds after the new tail.
        let mut next = st.staged_seq;
        let mut at = position;
        while let Some(span) = self.view.record_at(at)? {
            if !span.is_pad() {
                next = span.seq;
                break;
            }
            at = span.end();
        }
        if cursor.seq.saturating_sub(1) >= next || spooled.is_some_and(|d| d >= next) {
            return Err(rtbackup_control::Error::sys("ack", nix::errno::Errno::EINVAL).into());
        }
        cur.seq = cur.seq.max(cursor.seq).min(st.staged_seq);
        // As the kernel (rust/ring.rs, `ack`).
        match spooled {
            Some(d) => st.durable_seq = d.min(cur.seq.saturating_sub(1)),
            None if cur.seq != st.tail_seq => st.durable_seq = cur.seq.saturating_sub(1),
            None => {}
        }
        st.tail = cur.pos;
        st.tail_seq = cur.seq;
        self.mem.store_u64(OFF_TAIL_SEQ, cur.seq, Ordering::Release);
        self.mem.store_u64(OFF_TAIL, cur.pos, Ordering::Release);
        st.acks.push(AckCall {
            position,
            tail_seq: cur.seq,
            connected,
            spooled_durable: spooled,
        });
        self.changed.notify_all();
        Ok(())
    }
}

impl RingSource for MemRing {
    type Memory = Arc<MemBuf>;

    fn view(&self) -> &RingView<Arc<MemBuf>> {
        &self.view
    }

    unsafe fn set_tail(&self, position: u64, connected: bool) -> Result<()> {
        // SAFETY: forwarded to our caller.
        unsafe {
            self.set_tail_at(
                crate::view::Cursor {
                    pos: position,
                    seq: 0,
                },
                connected,
            )
        }
    }

    /// As the kernel: `tail_seq` from the records, and at least
    /// `cursor.seq` (seqs reserved for resync records the server holds).
    unsafe fn set_tail_at(&self, cursor: crate::view::Cursor, connected: bool) -> Result<()> {
        self.move_tail(cursor, connected, None)
    }

    unsafe fn set_tail_spooled(
        &self,
        cursor: crate::view::Cursor,
        durable_seq: u64,
        connected: bool,
    ) -> Result<()> {
        self.move_tail(cursor, connected, Some(durable_seq))
    }

    fn resync(&self, op: ResyncOp) -> Result<Resync> {
        let mut st = self.lock();
        if st.device.is_none() {
            return Err(RingError::Unsupported("resync"));
        }
        if st.detached {
            return Err(rtbackup_control::Error::sys("resync", nix::errno::Errno::ENXIO).into());
        }
        if st.staged != st.head {
            self.publish_locked(&mut st);
        }
        let head = st.head;
        let next_seq = st.staged_seq;
        let dev = Self::device_mut(&mut st);
        let mut out = Resync {
            chunk_size: dev.chunk_size,
            chunks: dev.chunks(),
            ..Resync::default()
        };
        let mut reserve = 0;
        match op {
            ResyncOp::TrackAll => {
                dev.dirty.extend(0..dev.chunks());
                dev.tracking = true;
            }
            ResyncOp::Done => {
                if dev.tracking {
                    return Err(rtbackup_control::Error::sys(
                        "resync done",
                        nix::errno::Errno::EBUSY,
                    )
                    .into());
                }
                dev.resync.clear();
            }
            ResyncOp::Fetch { pending, stream } => {
                let dirty = std::mem::take(&mut dev.dirty);
                dev.resync.extend(dirty.iter().copied());
                out.dirty = if pending {
                    dev.resync.iter().copied().collect()
                } else {
                    dirty.into_iter().collect()
                };
                out.first_seq = next_seq;
                out.head = head;
                reserve = out.dirty.len() as u64 + u64::from(stream);
                if stream {
                    dev.tracking = false;
                    dev.unsynced = false;
                }
            }
        }
        if reserve > 0 {
            st.staged_seq += reserve;
            self.publish_locked(&mut st);
        }
        self.publish_device_flags(&st);
        self.changed.notify_all();
        Ok(out)
    }

    fn chunk_size(&self) -> Result<u64> {
        self.lock()
            .device
            .as_ref()
            .map(|d| d.chunk_size)
            .ok_or(RingError::Unsupported("a dirty bitmap"))
    }

    fn mark_dirty(&self, chunks: &[u64]) -> Result<()> {
        let mut st = self.lock();
        let Some(dev) = st.device.as_mut() else {
            return Err(RingError::Unsupported("marking chunks dirty"));
        };
        if let Some(&c) = chunks.iter().find(|&&c| c >= dev.chunks()) {
            return Err(rtbackup_control::Error::Inconsistent(format!(
                "chunk {c} is past the device"
            ))
            .into());
        }
        dev.dirty.extend(chunks.iter().copied());
        dev.tracking = true;
        self.publish_device_flags(&st);
        self.changed.notify_all();
        Ok(())
    }

    fn written_sectors(&self) -> Option<u64> {
        self.lock().device.as_ref().map(|d| d.written_sectors)
    }

    fn read_device(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let st = self.lock();
        let Some(dev) = &st.device else {
            return Err(RingError::Unsupported("reading the device"));
        };
        let src = usize::try_from(offset)
            .ok()
            .and_then(|o| dev.image.get(o..o.checked_add(buf.len())?));
        let Some(src) = src else {
            return Err(RingError::DeviceRead {
                device: "memory device".into(),
                offset,
                len: buf.len(),
                source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            });
        };
        buf.copy_from_slice(src);
        Ok(())
    }

    fn wait(&self, timeout: Duration) -> Result<Wakeup> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.detached {
                // POLLHUP (with POLLIN while records are unacknowledged).
                return Ok(Wakeup::Detached);
            }
            let tracking = st.device.as_ref().is_some_and(|d| d.tracking);
            let ready = match self.poll_mode {
                PollMode::Edge => std::mem::take(&mut st.woken),
                PollMode::Level => st.head != st.tail || tracking,
            };
            if ready {
                return Ok(Wakeup::Ready);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Wakeup::Timeout);
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}
