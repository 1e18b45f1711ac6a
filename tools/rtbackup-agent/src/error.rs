//! The error type of the agent.

use rtbackup_proto::{error_code, ProtoError};
use rtbackup_ring::RingError;
use std::time::Duration;

/// Why streaming stopped. [`AgentError::is_fatal`] tells whether
/// reconnecting can help.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The TCP connection could not be set up.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// `HOST:PORT`.
        server: String,
        /// The error.
        source: std::io::Error,
    },
    /// Sending to or receiving from the server failed (reset, closed,
    /// malformed frame).
    #[error("connection to {server} failed: {source}")]
    Wire {
        /// `HOST:PORT`.
        server: String,
        /// The error.
        source: ProtoError,
    },
    /// The server sent an ERROR frame.
    #[error("the server refused: {code}: {message}{}", server_hint(.code))]
    Server {
        /// The error code (`rtbackup_proto::error_code`).
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The server broke the protocol (an unexpected frame, an ACK of
    /// records never sent).
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// Records were sent and the server acknowledged nothing for too long.
    #[error("the server acknowledged nothing for {0:?} although records are outstanding")]
    AckTimeout(Duration),
    /// Reading or acknowledging the ring failed (a corrupt ring, a detached
    /// device, an acknowledgement the kernel refused).
    #[error("{0}")]
    Ring(#[from] RingError),
    /// A record is larger than a RECORDS frame can carry: it can never be
    /// sent. The kernel caps records well below the frame limit, so this
    /// means a module and tools that do not match (or a corrupt ring).
    #[error(
        "record seq {seq} is {bytes} bytes, more than a RECORDS frame can carry ({limit} bytes): \
         it can never be sent (the module caps records at 32 MiB: are the module and the tools \
         from the same version?)"
    )]
    RecordTooLarge {
        /// The record's seq.
        seq: u64,
        /// Its size in the ring.
        bytes: u64,
        /// The frame payload limit.
        limit: u64,
    },
    /// The server's state and the ring's cannot both be right.
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
    /// The agent is stopping: a long operation was given up.
    #[error("interrupted: the agent is stopping")]
    Interrupted,
    /// Comparing the device with the backup's checksums failed.
    #[error("verifying the device against the backup: {0}")]
    Verify(#[from] rtbackup_verify::VerifyError),
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The local spool cannot be opened or read back.
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

impl AgentError {
    /// Whether reconnecting cannot help: the agent should exit.
    pub fn is_fatal(&self) -> bool {
        match self {
            AgentError::Connect { .. }
            | AgentError::Protocol(_)
            | AgentError::AckTimeout(_)
            | AgentError::Interrupted => false,
            AgentError::Wire { source, .. } => matches!(
                source,
                ProtoError::UnsupportedVersion(_) | ProtoError::TooLarge(_)
            ),
            AgentError::Server { code, .. } => is_fatal_code(code),
            AgentError::Verify(e) => match e {
                rtbackup_verify::VerifyError::Refused { code, .. } => is_fatal_code(code),
                _ => false,
            },
            AgentError::Ring(_)
            | AgentError::RecordTooLarge { .. }
            | AgentError::Inconsistent(_)
            | AgentError::Spool(_)
            | AgentError::Config(_) => true,
        }
    }
}

/// Server error codes after which retrying is pointless: the server would
/// answer the same again and again (a HELLO it refuses for what it says,
/// records it cannot take). `volume-busy`, `too-many-connections`,
/// `internal`, `shutdown`, `seq-gap` and unknown codes are retried.
pub fn is_fatal_code(code: &str) -> bool {
    matches!(
        code,
        error_code::SIZE_MISMATCH
            | error_code::BAD_VOLUME
            | error_code::UNSUPPORTED_VERSION
            | error_code::PROTOCOL
            | error_code::STALE_RING
            | error_code::OUT_OF_RANGE
            | error_code::BAD_RECORD
            | error_code::FORBIDDEN
    )
}

/// What to do about a fatal server error, appended to its message.
fn server_hint(code: &str) -> &'static str {
    match code {
        error_code::SIZE_MISMATCH => {
            " (the volume on the server has another size than this device: \
             use another volume name, or remove the server's volume)"
        }
        error_code::BAD_VOLUME => " (fix --volume)",
        error_code::UNSUPPORTED_VERSION => {
            " (the agent and the server speak different protocol versions: install matching versions)"
        }
        error_code::PROTOCOL => {
            " (the server does not accept what this agent sends: install matching versions)"
        }
        error_code::STALE_RING => {
            " (the server's volume already holds records of a newer attach of the device than \
             this ring: this ring's records cannot be applied)"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> AgentError {
        AgentError::Server {
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn fatal_errors_are_those_a_retry_cannot_fix() {
        assert!(server("size-mismatch").is_fatal());
        assert!(server("bad-volume").is_fatal());
        assert!(server("unsupported-version").is_fatal());
        assert!(server("protocol").is_fatal());
        assert!(server("stale-ring").is_fatal());
        assert!(server("out-of-range").is_fatal());
        assert!(server("bad-record").is_fatal());
        assert!(!server("volume-busy").is_fatal());
        assert!(!server("too-many-connections").is_fatal());
        assert!(!server("something-new").is_fatal());
        assert!(!server("internal").is_fatal());
        assert!(!server("shutdown").is_fatal());
        assert!(!server("seq-gap").is_fatal());
        assert!(!AgentError::Protocol("x".into()).is_fatal());
        assert!(!AgentError::AckTimeout(Duration::from_secs(1)).is_fatal());
        let wire = |source| AgentError::Wire {
            server: "s".into(),
            source,
        };
        assert!(!wire(ProtoError::Closed).is_fatal());
        assert!(wire(ProtoError::UnsupportedVersion(2)).is_fatal());
        assert!(AgentError::Inconsistent("x".into()).is_fatal());
        let e = AgentError::RecordTooLarge {
            seq: 9,
            bytes: 1 << 27,
            limit: 1 << 26,
        };
        assert!(e.is_fatal());
        assert!(
            e.to_string().contains("record seq 9 is 134217728 bytes"),
            "{e}"
        );
    }

    #[test]
    fn fatal_server_errors_say_what_to_do() {
        let e = server("stale-ring").to_string();
        assert!(e.starts_with("the server refused: stale-ring: m ("), "{e}");
        assert!(e.contains("newer attach"), "{e}");
        assert_eq!(
            server("volume-busy").to_string(),
            "the server refused: volume-busy: m"
        );
    }
}
