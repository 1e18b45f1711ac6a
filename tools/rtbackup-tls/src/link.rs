//! A connection that one thread reads while another writes, plain or TLS.
//!
//! rustls keeps one state machine per connection, so the two directions
//! share it under a mutex, but never hold it while blocked on the socket:
//! a reader takes raw bytes from the socket with no lock held, then feeds
//! them to the state machine; a writer encrypts under the lock and sends
//! the records with only the write lock held. The write lock also orders
//! the TLS records that a reader must send (a key update's answer) with
//! the writer's.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::{Pki, TlsError, SERVER_NAME};

/// Raw bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Tls {
    conn: Mutex<Connection>,
    /// Held while records go out, so that they go out in order.
    write: Mutex<()>,
    /// Raw bytes read from the socket and not yet fed to `conn`; held while
    /// bytes come in, so that they are fed in order.
    read: Mutex<Vec<u8>>,
}

/// Who the other end of a link is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A client authenticated by its registered certificate.
    Client(String),
    /// The server (its certificate checked against the pinned CA).
    Server,
    /// Not authenticated: a plain connection (`--insecure-loopback-only`).
    Unauthenticated,
}

/// A TCP connection, plain or TLS, readable and writable through `&Link`
/// from different threads.
pub struct Link {
    tcp: TcpStream,
    tls: Option<Tls>,
    peer: Peer,
    /// The client's certificate (DER), on the server side of TLS.
    certificate: Option<Vec<u8>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .field("peer", &self.peer)
            .finish()
    }
}

impl Link {
    /// A plain, unauthenticated link.
    pub fn plain(tcp: TcpStream) -> Self {
        Self {
            tcp,
            tls: None,
            peer: Peer::Unauthenticated,
            certificate: None,
        }
    }

    /// The certificate (DER) the client authenticated with, on the server
    /// side: to check later that it is still registered.
    pub fn client_certificate(&self) -> Option<&[u8]> {
        self.certificate.as_deref()
    }

    /// The TCP socket, for its options and `shutdown`.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Whether the link is encrypted and authenticated.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Who the other end is.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// The client's name, when it authenticated with a certificate.
    pub fn client_name(&self) -> Option<&str> {
        match &self.peer {
            Peer::Client(n) => Some(n),
            _ => None,
        }
    }

    /// Shuts the socket down both ways: blocked reads and writes return.
    pub fn shutdown(&self) {
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    fn tls(tcp: TcpStream, conn: Connection, peer: Peer) -> Self {
        Self {
            tcp,
            tls: Some(Tls {
                conn: Mutex::new(conn),
                write: Mutex::new(()),
                read: Mutex::new(Vec::new()),
            }),
            peer,
            certificate: None,
        }
    }
}

impl Tls {
    /// Sends what the state machine has to send. The caller holds no lock.
    fn flush_records(&self, tcp: &TcpStream, plaintext: &[u8]) -> io::Result<()> {
        let _w = lock(&self.write);
        let mut out = Vec::with_capacity(plaintext.len() + 256);
        {
            let mut c = lock(&self.conn);
            if !plaintext.is_empty() {
                c.writer().write_all(plaintext)?;
            }
            while c.wants_write() {
                c.write_tls(&mut out)?;
            }
        }
        (&*tcp).write_all(&out)
    }

    fn read(&self, tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match lock(&self.conn).reader().read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
            let mut pending = lock(&self.read);
            if pending.is_empty() {
                let mut raw = [0u8; READ_CHUNK];
                let n = (&*tcp).read(&mut raw)?;
                if n == 0 {
                    // The peer closed the socket: rustls says whether
                    // cleanly (close_notify) or not.
                    let mut c = lock(&self.conn);
                    let _ = c.read_tls(&mut io::empty());
                    let _ = c.process_new_packets();
                    return match c.reader().read(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            Err(io::ErrorKind::UnexpectedEof.into())
                        }
                        r => r,
                    };
                }
                pending.extend_from_slice(&raw[..n]);
            }
            let mut c = lock(&self.conn);
            let mut rd = &pending[..];
            let mut failed = None;
            while !rd.is_empty() {
                // `Other`: the plaintext buffer is full; the rest of the
                // raw bytes waits until the caller has read some.
                match c.read_tls(&mut rd) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Other => break,
                    Err(e) => return Err(e),
                }
                if let Err(e) = c.process_new_packets() {
                    failed = Some(e);
                    break;
                }
            }
            let used = pending.len() - rd.len();
            pending.drain(..used);
            let wants = c.wants_write();
            drop(c);
            drop(pending);
            if wants {
                // An alert for the failure, or an answer to a key update.
                let _ = self.flush_records(tcp, &[]);
            }
            if let Some(e) = failed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl Read for &Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).read(buf),
            Some(t) => t.read(&self.tcp, buf),
        }
    }
}

impl Write for &Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).write(buf),
            Some(t) => t.flush_records(&self.tcp, buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        (&self.tcp).flush()
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        (&*self).flush()
    }
}

/// Runs a handshake on `tcp`, all of it within `timeout`: a peer that
/// trickles its bytes (one every few seconds, each within a read timeout)
/// is cut off at the deadline all the same.
fn handshake(tcp: &TcpStream, conn: &mut Connection, timeout: Duration) -> io::Result<()> {
    let (rt, wt) = (tcp.read_timeout()?, tcp.write_timeout()?);
    let deadline = Instant::now() + timeout;
    let mut io = tcp;
    let mut r = Ok(());
    // In TLS 1.3 the client's last flight may still be queued after the
    // handshake.
    while r.is_ok() && (conn.is_handshaking() || conn.wants_write()) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            r = Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("TLS handshake not finished within {timeout:?}"),
            ));
            break;
        }
        let t = Some(left.max(Duration::from_millis(1)));
        r = tcp
            .set_read_timeout(t)
            .and_then(|()| tcp.set_write_timeout(t));
        if r.is_err() {
            break;
        }
        r = handshake_step(conn, &mut io);
    }
    tcp.set_read_timeout(rt)?;
    tcp.set_write_timeout(wt)?;
    r
}

/// One write or one read of a handshake (not `complete_io`, which reads
/// on for as long as bytes keep coming).
fn handshake_step(conn: &mut Connection, io: &mut &TcpStream) -> io::Result<()> {
    if conn.wants_write() {
        return conn.write_tls(io).map(|_| ());
    }
    if conn.read_tls(io)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection in the TLS handshake",
        ));
    }
    if let Err(e) = conn.process_new_packets() {
        // Best effort: the alert that tells the peer why.
        let _ = conn.write_tls(io);
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    Ok(())
}

/// The client side: TLS 1.3 to a server whose certificate names
/// [`SERVER_NAME`] and chains to the CA of `config`.
pub fn connect(
    tcp: TcpStream,
    config: Arc<ClientConfig>,
    timeout: Duration,
) -> Result<Link, TlsError> {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let name = ServerName::try_from(SERVER_NAME)
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
    let mut c = ClientConnection::new(config, name)?;
    c.set_buffer_limit(None);
    let mut conn = Connection::from(c);
    handshake(&tcp, &mut conn, timeout).map_err(|source| TlsError::Handshake { peer, source })?;
    Ok(Link::tls(tcp, conn, Peer::Server))
}

/// The server side: TLS 1.3 with a client certificate registered in `pki`;
/// the link knows the client's name.
pub fn accept(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    pki: &Pki,
    timeout: Duration,
) -> Result<Link, TlsError> {
    let peer = tcp
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let mut s = ServerConnection::new(config)?;
    s.set_buffer_limit(None);
    let mut conn = Connection::from(s);
    handshake(&tcp, &mut conn, timeout).map_err(|source| TlsError::Handshake {
        peer: peer.clone(),
        source,
    })?;
    let cert = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec());
    let name = cert
        .as_deref()
        .and_then(|c| pki.client_of(c))
        .ok_or_else(|| TlsError::Handshake {
            peer,
            source: io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the client's certificate is not registered",
            ),
        })?;
    let mut link = Link::tls(tcp, conn, Peer::Client(name));
    link.certificate = cert;
    Ok(link)
}
