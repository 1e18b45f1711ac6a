//! The server library's error: what can stop the server or one of its
//! NBD connections. Each variant says what was being done; the cause is its
//! source, never repeated in its message (the binary prints the chain).

use std::path::PathBuf;

/// Result of the server library.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

/// An error of the server library.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A system call failed while doing `what`.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another server holds the store's lock.
    #[error("another rtbackup-server is serving the store {0}")]
    StoreInUse(PathBuf),
    /// A setting changed after the server started.
    #[error("{0} must be set before the server runs")]
    AlreadyRunning(&'static str),
    /// The store.
    #[error(transparent)]
    Store(#[from] rtbackup_store::StoreError),
    /// TLS or the PKI.
    #[error(transparent)]
    Tls(#[from] rtbackup_tls::TlsError),
    /// The NBD protocol.
    #[error(transparent)]
    Nbd(#[from] rtbackup_nbd::NbdError),
}

impl ServerError {
    /// An I/O error while doing `what`.
    pub(crate) fn io(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        Self::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Adds what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    /// The error as [`ServerError::Io`] with `what`.
    fn doing(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Into<std::io::Error>> IoContext<T> for std::result::Result<T, E> {
    fn doing(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| ServerError::io(what(), e))
    }
}
