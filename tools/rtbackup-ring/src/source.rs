//! What a consumer needs of a ring, whoever produces it.

use crate::error::Result;
use crate::memory::SharedMemory;
use crate::view::{Cursor, RingView};
use rtbackup_control::{Resync, ResyncOp};
use std::time::Duration;

/// Why [`RingSource::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// The producer signalled (records were published).
    Ready,
    /// The timeout passed, or a signal interrupted the wait.
    Timeout,
    /// The device was detached (`POLLHUP`): no record will be published
    /// any more; those in the ring can still be read and acknowledged
    /// (see [`crate::RingView::is_detached`]).
    Detached,
}

/// A ring as its consumer sees it: the kernel's ([`crate::Ring`]) or one
/// in memory ([`crate::mem::MemRing`]).
pub trait RingSource: Sync {
    /// The memory the ring lives in.
    type Memory: SharedMemory;

    /// The ring's memory, read-only.
    fn view(&self) -> &RingView<Self::Memory>;

    /// Moves the consumer position to `position`, the end of a record in
    /// `[tail, head]` (equal to `tail`: only reports `connected`), telling
    /// the producer that the records before it are durable on the server
    /// and may be overwritten, and whether the consumer is connected to
    /// the server.
    ///
    /// # Safety
    ///
    /// No slice of the ring's memory before `position`, obtained from
    /// [`RingView::read_batch`], may be in use by any thread from this
    /// call on: the producer reuses those bytes.
    unsafe fn set_tail(&self, position: u64, connected: bool) -> Result<()>;

    /// [`RingSource::set_tail`] to `cursor.pos`, also telling the producer
    /// that every seq before `cursor.seq` is durable on the server, so that
    /// its `tail_seq` passes seqs reserved for resync records there.
    ///
    /// # Safety
    ///
    /// As for [`RingSource::set_tail`].
    unsafe fn set_tail_at(&self, cursor: Cursor, connected: bool) -> Result<()> {
        // SAFETY: forwarded to our caller.
        unsafe { self.set_tail(cursor.pos, connected) }
    }

    /// [`RingSource::set_tail_at`] for records that the agent holds in its
    /// local spool (`RTB_ACK_SPOOLED`): their bytes may be reused, but the
    /// server holds durably only the seqs up to `durable_seq`, which is
    /// what the ring reports as durable (`rtbackupctl sync` waits for it).
    ///
    /// # Safety
    ///
    /// As for [`RingSource::set_tail`].
    unsafe fn set_tail_spooled(
        &self,
        cursor: Cursor,
        durable_seq: u64,
        connected: bool,
    ) -> Result<()> {
        let _ = (cursor, durable_seq, connected);
        Err(crate::RingError::Unsupported("a spool"))
    }

    /// Waits up to `timeout` for the ring to become readable, or for the
    /// device to be detached. How "readable" is decided depends on the
    /// producer: the kernel's ring is readable while records are
    /// unacknowledged (`head != tail`, level-triggered), so a consumer that
    /// waits while its sent records wait for acknowledgement would be woken
    /// at once, again and again; it should wait this way only when
    /// `head == tail`.
    fn wait(&self, timeout: Duration) -> Result<Wakeup>;

    /// One resync step (`RTB_RING_IOC_RESYNC`; Documentation/design.rst,
    /// "Overflow and resync").
    fn resync(&self, op: ResyncOp) -> Result<Resync> {
        let _ = op;
        Err(crate::RingError::Unsupported("resync"))
    }

    /// Bytes per chunk of the device's dirty bitmap.
    fn chunk_size(&self) -> Result<u64> {
        Err(crate::RingError::Unsupported("a dirty bitmap"))
    }

    /// Marks `chunks` (sorted chunk numbers) of the device dirty and starts
    /// tracking (`RTB_IOC_DIRTY`), so that the next resync sends them.
    fn mark_dirty(&self, chunks: &[u64]) -> Result<()> {
        let _ = chunks;
        Err(crate::RingError::Unsupported("marking chunks dirty"))
    }

    /// Reads `buf.len()` bytes of the device under the ring at byte
    /// `offset` (a resync chunk), bypassing any cache: what the device
    /// holds now.
    fn read_device(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _ = (offset, buf);
        Err(crate::RingError::Unsupported("reading the device"))
    }

    /// Sectors written to the protected device so far, as the block layer
    /// counts them; `None` where that is not known. A resync slows down
    /// while this grows (the applications are writing).
    fn written_sectors(&self) -> Option<u64> {
        None
    }

    /// Reports whether the consumer is connected to the server, without
    /// moving the consumer position.
    fn report_connected(&self, connected: bool) -> Result<()> {
        let tail = self.view().tail();
        // SAFETY: the position stays where it is, so no bytes are freed.
        unsafe { self.set_tail(tail, connected) }
    }

    /// Acknowledges every record up to and including `up_to_seq`: moves
    /// the consumer position to the end of that record, found by walking
    /// the records from the current one. A seq already acknowledged only
    /// reports `connected`. Returns the new consumer cursor.
    ///
    /// # Safety
    ///
    /// As for [`RingSource::set_tail`]: no slice of the records up to
    /// `up_to_seq` may be in use from this call on. Acknowledgements must
    /// not run concurrently with each other.
    unsafe fn ack(&self, up_to_seq: u64, connected: bool) -> Result<Cursor> {
        let tail = self.view().tail_cursor();
        let end = if up_to_seq < tail.seq {
            tail
        } else {
            self.view().end_of(tail, up_to_seq)?
        };
        // SAFETY: forwarded to our caller.
        unsafe { self.set_tail_at(end, connected) }?;
        Ok(end)
    }
}
