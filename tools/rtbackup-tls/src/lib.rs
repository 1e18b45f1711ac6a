//! rtbackup's authenticated, encrypted links (Documentation/security.rst):
//! TLS 1.3 only (rustls), both sides authenticated by certificates of one
//! certificate authority that the backup server creates for its store.
//!
//! * [`Pki`]: the server side: `rtbackup-server init` makes the CA and the
//!   server's certificate under `STORE/pki`; `enroll` issues a client
//!   certificate and registers it; `revoke` withdraws a client's
//!   certificates. The server accepts a client certificate only if it
//!   chains to the CA, is valid now, and is registered (not revoked); the
//!   registered file names the client.
//! * [`Credentials`]: what `enroll` prints for one client: its name, key
//!   and certificate, and the CA. A client trusts only that CA and only
//!   the name [`SERVER_NAME`] in the server's certificate, whatever address
//!   it connects to: the server's identity is pinned.
//! * [`Link`]: a TCP connection, plain (only for loopback demos) or TLS,
//!   that one thread can read while another writes, as the agent and the
//!   server do.

mod creds;
mod link;
mod pki;

pub use creds::Credentials;
pub use link::{accept, connect, Link, Peer};
pub use pki::{
    ClientInfo, ClientLimits, Expiring, Pki, DEFAULT_CLIENT_DAYS, DEFAULT_MAX_VOLUMES, PKI_DIR,
};
pub use rustls;

/// The name in the server's certificate that clients check.
pub const SERVER_NAME: &str = "rtbackup-server";

/// An error of the TLS layer.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of the PKI or a credentials file.
    #[error("{path}: {what}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        what: String,
    },
    /// The store has no PKI yet.
    #[error("{0} has no certificate authority: run `rtbackup-server init --store STORE` first")]
    NotInitialised(std::path::PathBuf),
    /// `init` on a store that has one.
    #[error("{0} already has a certificate authority")]
    AlreadyInitialised(std::path::PathBuf),
    /// A client name that cannot be used.
    #[error("bad client name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -)")]
    BadName(String),
    /// No such client.
    #[error("no client {0:?} is enrolled")]
    NoSuchClient(String),
    /// Making a certificate failed.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused a configuration or a handshake.
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The TLS handshake failed on the connection.
    #[error("TLS handshake with {peer}: {source}")]
    Handshake {
        /// The other end.
        peer: String,
        /// Why.
        source: std::io::Error,
    },
    /// A credentials file that does not parse.
    #[error("credentials {path}: {what}")]
    BadCredentials {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        what: String,
    },
}

/// Checks a client name: what `enroll` accepts and the server logs.
pub fn validate_client_name(name: &str) -> Result<(), TlsError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadName(name.to_owned()))
    }
}

/// The crypto provider of every configuration: rustls' ring provider.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate's fingerprint as the registry names it: BLAKE3 of its
/// DER, hex.
fn fingerprint(der: &[u8]) -> String {
    blake3::hash(der).to_hex().to_string()
}
