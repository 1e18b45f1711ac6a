//! Reading a ring: the control page and the published records.
//!
//! Nothing here talks to the kernel: a [`RingView`] reads any
//! [`SharedMemory`] laid out as the ABI says (rust/uapi.rs, "The
//! write-journal ring"), so the logic is tested on rings built in memory.

use crate::error::{Result, RingError};
use crate::memory::SharedMemory;
use rtbackup_abi::{
    RtbRingHeader, RTB_ABI_VERSION, RTB_OP_PAD, RTB_RECORD_ALIGN, RTB_RING_F_DETACHED,
    RTB_RING_F_RESYNC, RTB_RING_F_TRACKING, RTB_RING_F_UNSYNCED, RTB_RING_MAGIC, RTB_RING_MAX_SIZE,
    RTB_RING_PAGE,
};
use rtbackup_proto::{parse_header, RecordError, RecordRef, RECORD_HEADER_LEN};
use std::mem::offset_of;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Smallest data area a [`RingView`] accepts. The kernel's rings are at
/// least [`rtbackup_abi::RTB_RING_MIN_SIZE`]; in-memory test rings may be
/// as small as a page.
pub const MIN_VIEW_DATA_SIZE: u64 = 4096;

pub(crate) const OFF_MAGIC: usize = offset_of!(RtbRingHeader, magic);
pub(crate) const OFF_ABI_VERSION: usize = offset_of!(RtbRingHeader, abi_version);
pub(crate) const OFF_DATA_OFFSET: usize = offset_of!(RtbRingHeader, data_offset);
pub(crate) const OFF_DATA_SIZE: usize = offset_of!(RtbRingHeader, data_size);
pub(crate) const OFF_RING_ID: usize = offset_of!(RtbRingHeader, ring_id);
pub(crate) const OFF_CAPACITY: usize = offset_of!(RtbRingHeader, capacity_sectors);
pub(crate) const OFF_HEAD: usize = offset_of!(RtbRingHeader, head);
pub(crate) const OFF_TAIL: usize = offset_of!(RtbRingHeader, tail);
pub(crate) const OFF_HEAD_SEQ: usize = offset_of!(RtbRingHeader, head_seq);
pub(crate) const OFF_TAIL_SEQ: usize = offset_of!(RtbRingHeader, tail_seq);
pub(crate) const OFF_BLOCK_SIZE: usize = offset_of!(RtbRingHeader, logical_block_size);
pub(crate) const OFF_FLAGS: usize = offset_of!(RtbRingHeader, flags);

const HEADER_LEN: usize = std::mem::size_of::<RtbRingHeader>();
const PAGE: usize = RTB_RING_PAGE as usize;
const REC_HDR: u64 = RECORD_HEADER_LEN as u64;

/// Atomic load of the `u64` at byte `off` of the control page.
fn load_u64<M: SharedMemory + ?Sized>(mem: &M, off: usize, order: Ordering) -> u64 {
    assert!(off.is_multiple_of(8) && off + 8 <= HEADER_LEN && HEADER_LEN <= mem.len());
    // SAFETY: the assertion keeps the field inside the memory, which
    // `SharedMemory` guarantees to be 8-aligned and readable for as long as
    // `mem` is borrowed. Only an atomic load is done through the pointer,
    // which is allowed on memory that others write concurrently and on
    // read-only mappings (std::sync::atomic, "Atomic accesses to read-only
    // memory": a plain load of a native-width atomic).
    let a = unsafe { AtomicU64::from_ptr(mem.as_ptr().add(off).cast_mut().cast::<u64>()) };
    a.load(order)
}

/// Atomic load of the `u32` at byte `off` of the control page.
fn load_u32<M: SharedMemory + ?Sized>(mem: &M, off: usize) -> u32 {
    load_u32_ordered(mem, off, Ordering::Relaxed)
}

/// Atomic load of the `u32` at byte `off` of the control page, with `order`.
fn load_u32_ordered<M: SharedMemory + ?Sized>(mem: &M, off: usize, order: Ordering) -> u32 {
    assert!(off.is_multiple_of(4) && off + 4 <= HEADER_LEN && HEADER_LEN <= mem.len());
    // SAFETY: as in `load_u64`.
    let a = unsafe { AtomicU32::from_ptr(mem.as_ptr().add(off).cast_mut().cast::<u32>()) };
    a.load(order)
}

/// The fixed facts of a ring, from its control page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes of the data area, a power of two.
    pub data_size: u64,
    /// Identity of the attach the ring belongs to.
    pub ring_id: u64,
    /// Capacity of the device in 512-byte sectors.
    pub capacity_sectors: u64,
    /// Logical block size of the device in bytes.
    pub logical_block_size: u32,
}

impl RingGeometry {
    /// Reads and checks the control page at the start of `mem` (which
    /// needs to hold only the page): magic, ABI version, data offset and a
    /// power-of-two data size.
    pub fn read<M: SharedMemory + ?Sized>(mem: &M) -> Result<Self> {
        let bad = |reason: String| RingError::BadControlPage { reason };
        if mem.len() < HEADER_LEN {
            return Err(bad(format!(
                "{} bytes mapped, the control page needs {HEADER_LEN}",
                mem.len()
            )));
        }
        let magic = load_u32(mem, OFF_MAGIC);
        if magic != RTB_RING_MAGIC {
            return Err(bad(format!(
                "magic {magic:#010x}, expected {RTB_RING_MAGIC:#010x} (\"RTBR\")"
            )));
        }
        let abi = load_u32(mem, OFF_ABI_VERSION);
        if abi != RTB_ABI_VERSION {
            return Err(bad(format!(
                "the module's ring has ABI version {abi}, these tools speak {RTB_ABI_VERSION}: install matching versions"
            )));
        }
        let data_offset = load_u64(mem, OFF_DATA_OFFSET, Ordering::Relaxed);
        if data_offset != RTB_RING_PAGE {
            return Err(bad(format!(
                "data offset {data_offset}, expected {RTB_RING_PAGE}"
            )));
        }
        let data_size = load_u64(mem, OFF_DATA_SIZE, Ordering::Relaxed);
        if !data_size.is_power_of_two()
            || !(MIN_VIEW_DATA_SIZE..=RTB_RING_MAX_SIZE).contains(&data_size)
        {
            return Err(bad(format!(
                "data size {data_size} is not a power of two from {MIN_VIEW_DATA_SIZE} to {RTB_RING_MAX_SIZE}"
            )));
        }
        Ok(Self {
            data_size,
            ring_id: load_u64(mem, OFF_RING_ID, Ordering::Relaxed),
            capacity_sectors: load_u64(mem, OFF_CAPACITY, Ordering::Relaxed),
            logical_block_size: load_u32(mem, OFF_BLOCK_SIZE),
        })
    }

    /// Bytes of a mapping of the whole ring: control page and data area.
    pub fn mapping_len(&self) -> u64 {
        RTB_RING_PAGE + self.data_size
    }
}

/// A place in the record stream: the byte position of a record and the
/// `seq` that comes next there. PAD records in between do not count: they
/// have no seq. The record at `pos` has that seq, or a higher one when
/// seqs were reserved there for resync chunks (ABI v4,
/// `RTB_RING_IOC_RESYNC`): those seqs travel in records the agent makes,
/// between the ring's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// Byte position since attach.
    pub pos: u64,
    /// The next sequence number at `pos`.
    pub seq: u64,
}

/// Where one record lies in the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordSpan {
    /// Byte position since attach.
    pub pos: u64,
    /// Bytes of the record (`RtbRecordHeader::size`).
    pub size: u64,
    /// Its `seq` (0 for padding).
    pub seq: u64,
    /// Its `RTB_OP_*`.
    pub op: u8,
}

impl RecordSpan {
    /// Position after the record.
    pub fn end(&self) -> u64 {
        self.pos + self.size
    }

    /// Whether it is a padding record.
    pub fn is_pad(&self) -> bool {
        self.op == RTB_OP_PAD
    }
}

/// Consecutive published records, as at most two slices of the ring's
/// memory (two when they wrap around the end of the data area). Padding is
/// left out.
#[derive(Clone, Debug)]
pub struct Batch<'a> {
    parts: [&'a [u8]; 2],
    nparts: usize,
    start: Cursor,
    end: Cursor,
    records: u64,
    bytes: u64,
    gap: Option<u64>,
}

impl<'a> Batch<'a> {
    /// When the batch is empty because the next published record has a
    /// seq past `end().seq` (seqs reserved for resync chunks in between):
    /// that record's seq.
    pub fn gap(&self) -> Option<u64> {
        self.gap
    }

    /// The records' bytes, straight from the ring: concatenated, they are
    /// whole records in order.
    pub fn parts(&self) -> &[&'a [u8]] {
        &self.parts[..self.nparts]
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Records in the batch.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of the records.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Where the first record is (reading started there, or just after a
    /// padding record there).
    pub fn start(&self) -> Cursor {
        self.start
    }

    /// Where the next read starts: just after the last record (the
    /// position to acknowledge it with), or, when the batch is empty, after
    /// a padding record passed over.
    pub fn end(&self) -> Cursor {
        self.end
    }

    /// `seq` of the first record.
    pub fn first_seq(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.start.seq)
    }

    /// `seq` of the last record.
    pub fn last_seq(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.end.seq - 1)
    }

    /// The records, each fully validated (payload checksum included) by
    /// [`rtbackup_proto::parse_record`].
    pub fn iter(&self) -> impl Iterator<Item = std::result::Result<RecordRef<'a>, RecordError>> {
        let parts = self.parts;
        parts
            .into_iter()
            .take(self.nparts)
            .flat_map(rtbackup_proto::records)
    }
}

/// A ring in shared memory, read as its consumer.
///
/// Reads never go past the producer position `head` (loaded with acquire
/// ordering, pairing with the producer's release store) nor outside the
/// data area; every record header read is validated, and a ring that is
/// not as the ABI says gives [`RingError::Corrupt`] or
/// [`RingError::BadRecord`], never a panic.
///
/// Slices returned by [`RingView::read_batch`] point into the shared
/// memory. They stay valid while the consumer position (`tail`) has not
/// been moved past them: see [`crate::RingSource::set_tail`].
#[derive(Debug)]
pub struct RingView<M: SharedMemory> {
    mem: M,
    geometry: RingGeometry,
    mask: u64,
}

impl<M: SharedMemory> RingView<M> {
    /// A view of the ring in `mem`, which must hold the control page and
    /// the whole data area.
    pub fn new(mem: M) -> Result<Self> {
        let geometry = RingGeometry::read(&mem)?;
        if (mem.len() as u64) < geometry.mapping_len() {
            return Err(RingError::BadControlPage {
                reason: format!(
                    "data size {} needs {} bytes of memory, {} available",
                    geometry.data_size,
                    geometry.mapping_len(),
                    mem.len()
                ),
            });
        }
        Ok(Self {
            mem,
            mask: geometry.data_size - 1,
            geometry,
        })
    }

    /// The memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// The fixed facts of the ring.
    pub fn geometry(&self) -> RingGeometry {
        self.geometry
    }

    /// Bytes of the data area.
    pub fn data_size(&self) -> u64 {
        self.geometry.data_size
    }

    /// Identity of the attach: `(ring_id, seq)` names a record.
    pub fn ring_id(&self) -> u64 {
        self.geometry.ring_id
    }

    /// Capacity of the device in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.geometry.capacity_sectors
    }

    /// Logical block size of the device.
    pub fn logical_block_size(&self) -> u32 {
        self.geometry.logical_block_size
    }

    /// Producer position: the end of the last published record (acquire:
    /// every record before it is completely written).
    pub fn head(&self) -> u64 {
        load_u64(&self.mem, OFF_HEAD, Ordering::Acquire)
    }

    /// Consumer position: the start of the first record not acknowledged.
    pub fn tail(&self) -> u64 {
        load_u64(&self.mem, OFF_TAIL, Ordering::Acquire)
    }

    /// Sequence number the next record will get.
    pub fn head_seq(&self) -> u64 {
        load_u64(&self.mem, OFF_HEAD_SEQ, Ordering::Acquire)
    }

    /// Sequence number of the first record not acknowledged.
    pub fn tail_seq(&self) -> u64 {
        load_u64(&self.mem, OFF_TAIL_SEQ, Ordering::Acquire)
    }

    /// The control page's `RTB_RING_F_*` bits (acquire).
    pub fn flags(&self) -> u32 {
        load_u32_ordered(&self.mem, OFF_FLAGS, Ordering::Acquire)
    }

    /// Whether writes are being tracked in the dirty bitmap instead of
    /// recorded ([`RTB_RING_F_TRACKING`]): a resync is due.
    pub fn is_tracking(&self) -> bool {
        self.flags() & RTB_RING_F_TRACKING != 0
    }

    /// Whether the initial sync of this attach is still to be done
    /// ([`RTB_RING_F_UNSYNCED`]).
    pub fn is_unsynced(&self) -> bool {
        self.flags() & RTB_RING_F_UNSYNCED != 0
    }

    /// Whether chunks of an unfinished resync wait ([`RTB_RING_F_RESYNC`]).
    pub fn resync_owed(&self) -> bool {
        self.flags() & RTB_RING_F_RESYNC != 0
    }

    /// Whether the device was detached ([`RTB_RING_F_DETACHED`]): no record
    /// will be published any more. The producer sets the flag after its
    /// last record was published, so a [`Self::head`] loaded after this
    /// returned `true` is final. The records in `[tail, head)` stay
    /// readable and can still be acknowledged.
    pub fn is_detached(&self) -> bool {
        self.flags() & RTB_RING_F_DETACHED != 0
    }

    /// The consumer position and its seq. Both change only when the
    /// consumer acknowledges, so they are consistent unless an
    /// acknowledgement runs concurrently.
    pub fn tail_cursor(&self) -> Cursor {
        Cursor {
            pos: self.tail(),
            seq: self.tail_seq(),
        }
    }

    /// Offset of a position in the data area.
    pub fn offset(&self, pos: u64) -> u64 {
        pos & self.mask
    }

    /// Bytes of the data area at `pos`.
    ///
    /// The caller guarantees that `[pos, pos + len)` does not cross the end
    /// of the data area and lies within `[tail, head)` for a `head` loaded
    /// by [`Self::head`].
    fn bytes(&self, pos: u64, len: u64) -> &[u8] {
        let off = self.offset(pos);
        assert!(off + len <= self.geometry.data_size);
        // SAFETY: the range lies inside the data area (asserted), which
        // `RingView::new` checked to be inside the memory; the memory
        // outlives `&self`. It lies in `[tail, head)`: published (the
        // acquire load of `head` orders the producer's writes before our
        // reads) and not reused by the producer until the consumer moves
        // `tail` past it, which `RingSource::set_tail`'s contract forbids
        // while the slice is in use.
        unsafe {
            std::slice::from_raw_parts(self.mem.as_ptr().add(PAGE + off as usize), len as usize)
        }
    }

    fn corrupt(&self, pos: u64, reason: String) -> RingError {
        RingError::Corrupt {
            pos,
            offset: self.offset(pos),
            reason,
        }
    }

    /// Loads `head` and `tail` and checks that `pos` lies between them.
    fn bounds(&self, pos: u64) -> Result<u64> {
        // `head` first: the producer never gets more than `data_size`
        // ahead of the tail of the moment, and `tail` only grows.
        let head = self.head();
        let tail = self.tail();
        if head.wrapping_sub(tail) > self.geometry.data_size {
            return Err(self.corrupt(
                tail,
                format!(
                    "head {head} and tail {tail} are more than the data size {} apart",
                    self.geometry.data_size
                ),
            ));
        }
        if pos < tail || pos > head {
            return Err(RingError::Position { pos, tail, head });
        }
        if !pos.is_multiple_of(RTB_RECORD_ALIGN) {
            return Err(self.corrupt(pos, format!("position is not {RTB_RECORD_ALIGN}-aligned")));
        }
        Ok(head)
    }

    /// The record at `pos`, which the caller has checked to be in
    /// `[tail, head]`; `None` at `head`.
    fn span_at(&self, pos: u64, head: u64) -> Result<Option<RecordSpan>> {
        if pos == head {
            return Ok(None);
        }
        let to_end = self.geometry.data_size - self.offset(pos);
        let avail = (head - pos).min(to_end);
        if avail < REC_HDR {
            return Err(self.corrupt(
                pos,
                format!(
                    "only {avail} bytes before {}, a record header needs {REC_HDR}",
                    if avail == to_end {
                        "the end of the data area"
                    } else {
                        "the producer position"
                    }
                ),
            ));
        }
        let header =
            parse_header(self.bytes(pos, REC_HDR)).map_err(|source| RingError::BadRecord {
                pos,
                offset: self.offset(pos),
                source,
            })?;
        let size = u64::from(header.size);
        let span = RecordSpan {
            pos,
            size,
            seq: header.seq,
            op: header.op,
        };
        if span.is_pad() && size != to_end {
            return Err(self.corrupt(
                pos,
                format!(
                    "padding record of {size} bytes does not end at the end of the data area ({to_end} bytes away)"
                ),
            ));
        }
        if size > to_end {
            return Err(self.corrupt(
                pos,
                format!(
                    "record seq {} of {size} bytes crosses the end of the data area ({to_end} bytes away)",
                    header.seq
                ),
            ));
        }
        if size > head - pos {
            return Err(self.corrupt(
                pos,
                format!(
                    "record seq {} of {size} bytes extends past the producer position {head}",
                    header.seq
                ),
            ));
        }
        Ok(Some(span))
    }

    /// The record at `pos` (padding included), or `None` at `head`. `pos`
    /// must be a record start in `[tail, head]`.
    pub fn record_at(&self, pos: u64) -> Result<Option<RecordSpan>> {
        let head = self.bounds(pos)?;
        self.span_at(pos, head)
    }

    /// The published records from `from`, up to `max_bytes` of them (but
    /// at least one when one is published), skipping padding, as slices
    /// of the ring. Every header is validated and the seqs must follow on
    /// from `from.seq`; the batch stops before a record whose seq jumps
    /// ahead (seqs reserved in between; [`Batch::gap`] when that is the
    /// first record).
    pub fn read_batch(&self, from: Cursor, max_bytes: u64) -> Result<Batch<'_>> {
        self.read_batch_to(from, max_bytes, u64::MAX)
    }

    /// [`Self::read_batch`], with no record ending after position `limit`.
    pub fn read_batch_to(&self, from: Cursor, max_bytes: u64, limit: u64) -> Result<Batch<'_>> {
        let head = self.bounds(from.pos)?.min(limit.max(from.pos));
        let mut batch = Batch {
            parts: [&[], &[]],
            nparts: 0,
            start: from,
            end: from,
            records: 0,
            bytes: 0,
            gap: None,
        };
        let mut pos = from.pos;
        let mut seq = from.seq;
        // Start of the contiguous run of records not yet put in `parts`.
        let mut run: Option<u64> = None;
        while let Some(span) = self.span_at(pos, head)? {
            if span.is_pad() {
                self.close_run(&mut batch, &mut run, pos);
                pos = span.end();
                if batch.records == 0 {
                    batch.start.pos = pos;
                    batch.end.pos = pos;
                }
                continue;
            }
            if span.seq < seq {
                return Err(
                    self.corrupt(pos, format!("record has seq {}, expected {seq}", span.seq))
                );
            }
            if span.seq > seq {
                if batch.records == 0 {
                    batch.gap = Some(span.seq);
                }
                break;
            }
            if batch.records > 0 && batch.bytes + span.size > max_bytes {
                break;
            }
            if run.is_none() && batch.nparts == batch.parts.len() {
                // Cannot happen in a valid ring: at most one wrap fits in
                // `[tail, head)`. Stop here; the rest comes next time.
                break;
            }
            run.get_or_insert(pos);
            pos = span.end();
            seq = seq.wrapping_add(1);
            batch.records += 1;
            batch.bytes += span.size;
            batch.end = Cursor { pos, seq };
            if self.offset(pos) == 0 {
                self.close_run(&mut batch, &mut run, pos);
            }
        }
        let end = batch.end.pos;
        self.close_run(&mut batch, &mut run, end);
        Ok(batch)
    }

    /// Ends the contiguous run of records that started at `run` with the
    /// record ending at `pos`, adding it to `batch`.
    fn close_run<'a>(&'a self, batch: &mut Batch<'a>, run: &mut Option<u64>, pos: u64) {
        if let Some(start) = run.take() {
            batch.parts[batch.nparts] = self.bytes(start, pos - start);
            batch.nparts += 1;
        }
    }

    /// The cursor just after record `seq`, found by walking the records
    /// from `from` (a record start in `[tail, head]`). `seq` may be
    /// `from.seq - 1` (the answer is `from`). A `seq` reserved between the
    /// ring's records (before a record whose seq jumps past it, or at the
    /// end below `head_seq`) ends at that place. This is the position to
    /// acknowledge `seq` with.
    pub fn end_of(&self, from: Cursor, seq: u64) -> Result<Cursor> {
        if seq.checked_add(1) == Some(from.seq) {
            return Ok(from);
        }
        let not_in_ring = |last: u64| RingError::SeqNotInRing {
            seq,
            first: from.seq,
            last,
        };
        if seq < from.seq {
            return Err(not_in_ring(self.head_seq().saturating_sub(1)));
        }
        let head = self.bounds(from.pos)?;
        let mut pos = from.pos;
        let mut cur = from.seq;
        let reserved = |pos: u64| Cursor {
            pos,
            seq: seq.wrapping_add(1),
        };
        loop {
            let Some(span) = self.span_at(pos, head)? else {
                if seq < self.head_seq() {
                    return Ok(reserved(pos));
                }
                return Err(not_in_ring(cur.wrapping_sub(1)));
            };
            if span.is_pad() {
                pos = span.end();
                continue;
            }
            if span.seq < cur {
                return Err(
                    self.corrupt(pos, format!("record has seq {}, expected {cur}", span.seq))
                );
            }
            if span.seq > seq {
                return Ok(reserved(pos));
            }
            cur = span.seq;
            pos = span.end();
            if cur == seq {
                return Ok(Cursor {
                    pos,
                    seq: seq.wrapping_add(1),
                });
            }
            cur = cur.wrapping_add(1);
        }
    }

    /// The cursor at position `pos`, found by walking the records from
    /// `from`: `pos` must be the end of a record (or `from.pos` itself).
    /// This is how a producer checks an acknowledged position.
    pub fn cursor_at(&self, from: Cursor, pos: u64) -> Result<Cursor> {
        let head = self.bounds(from.pos)?;
        if pos < from.pos || pos > head {
            return Err(RingError::Position {
                pos,
                tail: from.pos,
                head,
            });
        }
        let mut cur = from;
        while cur.pos < pos {
            let Some(span) = self.span_at(cur.pos, head)? else {
                break;
            };
            cur.pos = span.end();
            if !span.is_pad() {
                if span.seq < cur.seq {
                    return Err(self.corrupt(
                        span.pos,
                        format!("record has seq {}, expected {}", span.seq, cur.seq),
                    ));
                }
                cur.seq = span.seq.wrapping_add(1);
            }
        }
        if cur.pos != pos {
            return Err(RingError::NotRecordBoundary { pos });
        }
        Ok(cur)
    }
}
