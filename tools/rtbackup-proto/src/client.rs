//! What the clients of the server's one-shot requests (ROLLBACK, VERIFY:
//! `rtbackup-rollback`, `rtbackup-verify`) share: connecting, and the
//! errors of talking to the server.

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use rtbackup_tls::{Credentials, Link, TlsError};

use crate::frame::{error_code, ErrorMsg, ProtoError};

/// How long [`connect`] waits for the server to connect, and then for each
/// read.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server cannot be reached.
    #[error("cannot connect to the backup server {server}: {source}")]
    Connect {
        /// HOST:PORT.
        server: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The server refused (or ended) the request with an ERROR.
    #[error("the backup server refused: {code}: {message}")]
    Refused {
        /// Its error code ([`error_code`]).
        code: String,
        /// Its message.
        message: String,
    },
    /// The wire failed or the server broke the framing.
    #[error("talking to the backup server: {0}")]
    Protocol(#[from] ProtoError),
    /// The server sent something that does not fit the request.
    #[error("the backup server sent {0}")]
    Unexpected(String),
    /// The TLS handshake failed (or no credentials for a remote server).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// No credentials, and the server is not on this machine.
    #[error("{0} is not a loopback address: give the client's credentials (--credentials FILE from `rtbackup-server enroll`)")]
    NeedCredentials(String),
}

impl From<ErrorMsg> for ClientError {
    fn from(e: ErrorMsg) -> Self {
        ClientError::Refused {
            code: e.code,
            message: e.message,
        }
    }
}

impl ClientError {
    /// The server's error code, when it refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the server holds no such volume (`no-such-volume`).
    pub fn is_no_such_volume(&self) -> bool {
        self.code() == Some(error_code::NO_SUCH_VOLUME)
    }
}

/// Connects to the server at HOST:PORT, with [`CLIENT_TIMEOUT`] to connect
/// and for each read; no Nagle delay. With `creds`, over TLS 1.3 as that
/// client (the server's identity checked against the CA in `creds`);
/// without, in plaintext, only to a loopback address (a server run with
/// `--insecure-loopback-only`).
pub fn connect(server: &str, creds: Option<&Credentials>) -> Result<Link, ClientError> {
    let connect_err = |source| ClientError::Connect {
        server: server.to_owned(),
        source,
    };
    let addr = server
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| {
            connect_err(io::Error::new(
                io::ErrorKind::NotFound,
                "no address for this name",
            ))
        })?;
    if creds.is_none() && !addr.ip().is_loopback() {
        return Err(ClientError::NeedCredentials(server.to_owned()));
    }
    let conn = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).map_err(connect_err)?;
    conn.set_read_timeout(Some(CLIENT_TIMEOUT))
        .map_err(connect_err)?;
    let _ = conn.set_nodelay(true);
    match creds {
        Some(c) => Ok(rtbackup_tls::connect(
            conn,
            c.client_config()?,
            CLIENT_TIMEOUT,
        )?),
        None => Ok(Link::plain(conn)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_name_the_server() {
        // A port nobody listens on (bound, then closed).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let e = connect(&addr, None).unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e}");
        assert!(e.to_string().contains(&addr), "{e}");
        assert!(matches!(
            connect("not an address", None),
            Err(ClientError::Connect { .. })
        ));
        assert!(matches!(
            connect("192.0.2.1:7420", None),
            Err(ClientError::NeedCredentials(_))
        ));
        let e = ClientError::from(ErrorMsg::new(error_code::NO_SUCH_VOLUME, "x"));
        assert!(e.is_no_such_volume() && e.code() == Some("no-such-volume"));
        assert_eq!(
            e.to_string(),
            "the backup server refused: no-such-volume: x"
        );
    }
}
