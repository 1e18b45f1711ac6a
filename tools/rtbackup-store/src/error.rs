//! Errors of the store.

use std::io;
use std::path::PathBuf;

use rtbackup_proto::{error_code, RecordError};

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What failed, e.g. "writing segment /store/volumes/db1/journal/…".
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A record of an incoming batch is malformed.
    #[error("bad record #{index} (byte {offset} of the batch): {source}")]
    BadRecord {
        /// Index of the record in the batch.
        index: usize,
        /// Byte offset of the record in the batch.
        offset: usize,
        /// Why.
        #[source]
        source: RecordError,
    },
    /// A record that is not allowed on the wire (e.g. padding).
    #[error("record seq {seq} not allowed in a batch: {reason}")]
    Refused {
        /// `seq` of the record.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A record affects bytes beyond the end of the volume.
    #[error("record seq {seq} affects bytes [{start}, {end}) beyond the end of the volume ({size} bytes)")]
    OutOfRange {
        /// `seq` of the record.
        seq: u64,
        /// First byte affected.
        start: u64,
        /// End of the range affected.
        end: u64,
        /// Volume size.
        size: u64,
    },
    /// A record's seq is not the next one expected.
    #[error("sequence gap: expected seq {expected}, got {got}")]
    SeqGap {
        /// The next seq expected.
        expected: u64,
        /// The seq received.
        got: u64,
    },
    /// The stored data is damaged: never applied, needs an operator.
    #[error("corrupt journal: segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        /// Segment name or path.
        segment: String,
        /// Byte offset in the segment.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The history index failed (it is rebuilt from the journal when
    /// damaged).
    #[error("history index {path}: {context}: {source}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// No restore point matches what was asked.
    #[error("no such restore point: {0}")]
    NoSuchPoint(String),
    /// What was asked names several restore points (a mark name used
    /// again, a seq of several rings): the message lists them by id.
    #[error("ambiguous restore point: {0}")]
    AmbiguousPoint(String),
    /// A state file or other metadata is unreadable.
    #[error("bad state file {path}: {reason}")]
    BadState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A volume name is invalid.
    #[error("invalid volume name {name:?}: {reason}")]
    BadVolumeName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Volume parameters are invalid.
    #[error("invalid volume parameters: {0}")]
    BadParameters(String),
    /// The volume does not exist.
    #[error("no volume {0:?} in the store")]
    NoSuchVolume(String),
    /// The volume exists with another size.
    #[error("volume {volume:?} has {stored} bytes, not {requested}")]
    SizeMismatch {
        /// The volume.
        volume: String,
        /// Its size in the store.
        stored: u64,
        /// The size asked for.
        requested: u64,
    },
    /// The store's disk is full (or its quota reached): nothing was
    /// stored; the volume stays usable once room is made.
    #[error(
        "the store's disk is full ({context}): records of volume {volume:?} are neither \
         stored nor acknowledged until room is made; the protected host keeps them"
    )]
    Full {
        /// The volume.
        volume: String,
        /// What failed.
        context: String,
        /// ENOSPC or EDQUOT.
        #[source]
        source: io::Error,
    },
    /// The volume is open elsewhere (another process or handle).
    #[error("volume {0:?} is in use by another process")]
    Busy(String),
    /// A previous write failed in a way that left the journal in an unknown
    /// state; the volume must be reopened.
    #[error("volume {0:?} is unusable after an earlier write error; reopen it")]
    Poisoned(String),
    /// An fsync of the volume failed earlier in this process. The kernel may
    /// have dropped the unwritten pages (and reports the error only once),
    /// so the page cache no longer tells what is on disk: the volume cannot
    /// be opened again by this process.
    #[error(
        "volume {0:?}: an fsync failed earlier in this process, so what is on disk is unknown; \
         check the disk and restart the server to recover the volume"
    )]
    FsyncFailed(String),
    /// The volume lock is held (by a restore or a status scan) for longer
    /// than opening waits.
    #[error("volume {0:?} is locked by a restore or another reader; try again later")]
    Locked(String),
    /// A record of a ring this volume has already seen end.
    #[error("ring {ring_id:#x} of volume {volume:?} has ended (the volume has moved on to ring {current:#x}); an older attach cannot stream into it")]
    StaleRing {
        /// The volume.
        volume: String,
        /// The ring refused.
        ring_id: u64,
        /// The volume's current ring.
        current: u64,
    },
}

impl StoreError {
    /// The protocol error code that tells a peer about this error.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::BadRecord { .. } | StoreError::Refused { .. } => error_code::BAD_RECORD,
            StoreError::OutOfRange { .. } => error_code::OUT_OF_RANGE,
            StoreError::SeqGap { .. } => error_code::SEQ_GAP,
            StoreError::BadVolumeName { .. } => error_code::BAD_VOLUME,
            StoreError::BadParameters(_) => error_code::PROTOCOL,
            StoreError::SizeMismatch { .. } => error_code::SIZE_MISMATCH,
            StoreError::Busy(_) | StoreError::Locked(_) => error_code::VOLUME_BUSY,
            StoreError::StaleRing { .. } => error_code::STALE_RING,
            StoreError::NoSuchVolume(_) => error_code::NO_SUCH_VOLUME,
            StoreError::Full { .. } => error_code::STORE_FULL,
            _ => error_code::INTERNAL,
        }
    }

    /// Whether the error is about the peer's input (as opposed to the
    /// server or its store).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            StoreError::BadRecord { .. }
                | StoreError::Refused { .. }
                | StoreError::OutOfRange { .. }
                | StoreError::SeqGap { .. }
                | StoreError::BadVolumeName { .. }
                | StoreError::BadParameters(_)
                | StoreError::SizeMismatch { .. }
                | StoreError::StaleRing { .. }
        )
    }

    /// Whether the error is the store's own failure (I/O on the store,
    /// corruption, a poisoned volume): an open volume that reported it
    /// should be dropped and recovered by the next open. Errors about the
    /// peer's input and contention (busy, locked) are not.
    pub fn is_internal(&self) -> bool {
        !self.is_bad_input()
            && !matches!(
                self,
                StoreError::Busy(_)
                    | StoreError::Locked(_)
                    | StoreError::NoSuchVolume(_)
                    | StoreError::Full { .. }
            )
    }
}

/// Whether `e` says the disk is full (`ENOSPC`, or `EDQUOT`: a quota).
pub(crate) fn is_full(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
    )
}

/// Result of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Adds context to I/O errors.
pub(crate) trait IoContext<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| StoreError::Io {
            context: f(),
            source,
        })
    }
}
