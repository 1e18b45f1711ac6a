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
    #[error("the server refused: {code}: {message}")]
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
    /// The server's state and the ring's cannot both be right.
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
}

impl AgentError {
    /// Whether reconnecting cannot help: the agent should exit.
    pub fn is_fatal(&self) -> bool {
        match self {
            AgentError::Connect { .. } | AgentError::Protocol(_) | AgentError::AckTimeout(_) => {
                false
            }
            AgentError::Wire { source, .. } => matches!(
                source,
                ProtoError::UnsupportedVersion(_) | ProtoError::TooLarge(_)
            ),
            AgentError::Server { code, .. } => is_fatal_code(code),
            AgentError::Ring(_) | AgentError::Inconsistent(_) | AgentError::Config(_) => true,
        }
    }
}

/// Server error codes after which retrying is pointless.
pub fn is_fatal_code(code: &str) -> bool {
    matches!(
        code,
        error_code::SIZE_MISMATCH
            | error_code::BAD_VOLUME
            | error_code::UNSUPPORTED_VERSION
            | error_code::OUT_OF_RANGE
            | error_code::BAD_RECORD
    )
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
        assert!(!server("volume-busy").is_fatal());
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
    }
}
