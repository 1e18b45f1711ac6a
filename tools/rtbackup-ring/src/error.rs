//! The error type of this crate.

use rtbackup_proto::RecordError;

/// Result with [`RingError`].
pub type Result<T, E = RingError> = std::result::Result<T, E>;

/// What went wrong with a ring.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// Talking to the module failed (resolving the device, opening the ring,
    /// acknowledging).
    #[error(transparent)]
    Control(#[from] rtbackup_control::Error),
    /// `mmap` of the ring failed.
    #[error("cannot map the ring of {device} ({bytes} bytes): {source}")]
    Map {
        /// The device.
        device: String,
        /// Bytes asked for.
        bytes: u64,
        /// The error.
        source: std::io::Error,
    },
    /// The control page does not describe a ring these tools can read.
    #[error("the ring's control page is invalid: {reason}")]
    BadControlPage {
        /// What is wrong.
        reason: String,
    },
    /// A record header in the ring is invalid: a kernel bug or memory
    /// corruption. The ring cannot be read past it.
    #[error("corrupt ring at position {pos} (offset {offset} of the data area): {reason}")]
    Corrupt {
        /// Byte position of the bad record.
        pos: u64,
        /// Its offset in the data area.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record header failed validation.
    #[error("corrupt ring at position {pos} (offset {offset} of the data area): {source}")]
    BadRecord {
        /// Byte position of the bad record.
        pos: u64,
        /// Its offset in the data area.
        offset: u64,
        /// What is wrong with it.
        source: RecordError,
    },
    /// A read or acknowledgement position outside the records in the ring.
    #[error("position {pos} is outside the ring's records [{tail}, {head}]")]
    Position {
        /// The position asked for.
        pos: u64,
        /// The consumer position.
        tail: u64,
        /// The producer position.
        head: u64,
    },
    /// A position inside a record where a record boundary is needed.
    #[error("position {pos} is not the end of a record in the ring")]
    NotRecordBoundary {
        /// The position.
        pos: u64,
    },
    /// A sequence number that is not (or no longer) in the ring.
    #[error("record seq {seq} is not in the ring (it holds seq {first} to {last})")]
    SeqNotInRing {
        /// The seq asked for.
        seq: u64,
        /// First seq held from the starting point.
        first: u64,
        /// Last seq published.
        last: u64,
    },
    /// `poll` on the ring failed.
    #[error("poll on the ring failed: {0}")]
    Poll(nix::errno::Errno),
    /// The kernel reported an error condition on the ring file descriptor
    /// (`POLLERR` or `POLLNVAL`; a detach is `POLLHUP`,
    /// [`crate::Wakeup::Detached`]).
    #[error("poll on the ring reported an error condition (revents {revents:#x})")]
    Hangup {
        /// The poll `revents`.
        revents: i16,
    },
    /// The device was detached: the in-memory ring takes no more records
    /// (see [`crate::mem::MemRing::detach`]).
    #[error("the device was detached: the ring takes no more records")]
    Detached,
    /// The in-memory ring refused a record (see [`crate::mem::MemRing`]).
    /// This ring cannot do that (a ring in memory without a device).
    #[error("{0} is not supported by this ring")]
    Unsupported(&'static str),
    /// Reading the device under the ring failed.
    #[error("reading {len} bytes at offset {offset} of {device}: {source}")]
    DeviceRead {
        /// The device.
        device: String,
        /// Byte offset.
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    #[error("the ring is full: {need} bytes needed, {free} free")]
    Full {
        /// Bytes the record (and its padding) needs.
        need: u64,
        /// Bytes free.
        free: u64,
    },
}
