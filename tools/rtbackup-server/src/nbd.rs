//! The read-only NBD export of past states: export `VOLUME@POINT` (POINT as
//! for `restore --at`: a time, `seq:N`, `mark:NAME`, `latest`; `VOLUME`
//! alone is the latest point) is the volume as of that point, read in
//! place from the store (Documentation/nbd.rst). With TLS (the server's),
//! a client must start TLS with a certificate of the store's CA before
//! anything else, and then sees its own volumes only (an administrator's
//! certificate, all of them).

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtbackup_nbd::{Export, Exports, Handshake, NbdError, TlsMode};
use rtbackup_store::{PointReader, Store};
use rtbackup_tls::{rustls::ServerConfig, Pki};
use tracing::{error, info, warn};

use crate::error::{IoContext, Result, ServerError};
use crate::server::{configure_socket, Live, DEFAULT_HANDSHAKE_TIMEOUT, REVOCATION_CHECK};

/// Buffer of an NBD connection's socket.
const NBD_BUF: usize = 256 << 10;
/// NBD connections served at once; more are closed at once.
pub const MAX_NBD_CONNECTIONS: usize = 32;
/// How long a TLS export gives a peer to reach TLS (greeting and options
/// in plaintext) and then to finish the TLS handshake, however slowly it
/// sends.
const NBD_PLAINTEXT_DEADLINE: Duration = DEFAULT_HANDSHAKE_TIMEOUT;

/// The NBD connections being served, by id: their sockets, to end them on
/// shutdown or when the certificate they authenticated with is revoked.
#[derive(Default)]
struct Conns(Mutex<HashMap<u64, Live>>);

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `id` authenticated as `client` with `cert`.
    fn authenticated(&self, id: u64, client: &str, cert: &[u8]) {
        if let Some(c) = self.lock().get_mut(&id) {
            c.client = Some((client.to_owned(), cert.to_vec()));
        }
    }

    /// Ends the connections whose certificate `pki` no longer registers
    /// (`revoke`): within [`REVOCATION_CHECK`], not at their next one.
    fn end_revoked(&self, pki: &Pki) {
        for c in self.lock().values() {
            c.end_if_revoked(pki, "NBD connection");
        }
    }
}

/// Who reads the exports.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reader {
    /// A plaintext export (`--insecure-loopback-only`): every volume.
    Anyone,
    /// An administrator's certificate: every volume.
    Admin(String),
    /// A client's certificate: its own volumes.
    Client(String),
}

/// Splits an export name into the volume and the point
/// (`VOLUME@POINT`, `VOLUME` alone the latest).
pub use rtbackup_store::parse_volume_at as parse_export_name;

/// The volumes of a store as NBD exports, as `reader` may see them.
struct StoreExports<'a> {
    store: &'a Store,
    reader: Reader,
}

impl StoreExports<'_> {
    /// Whether the reader may read `volume`: the same answer for a volume
    /// of another client and for none, so that names cannot be probed.
    fn may_read(&self, volume: &str) -> bool {
        match &self.reader {
            Reader::Anyone | Reader::Admin(_) => true,
            Reader::Client(c) => self.store.owner(volume).ok().flatten().as_deref() == Some(c),
        }
    }
}

struct PointExport(PointReader);

impl Export for PointExport {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn block_size(&self) -> u32 {
        self.0.block_size()
    }

    fn description(&self) -> String {
        let p = self.0.point();
        let marks = if p.marks.is_empty() {
            String::new()
        } else {
            format!(", mark {}", p.marks.join(","))
        };
        format!(
            "rtbackup volume as of {} (ring {:#x}, seq {}{marks}), read-only",
            p.time, p.ring_id, p.seq
        )
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), String> {
        self.0.read_at(buf, offset).map_err(|e| e.to_string())
    }
}

impl Exports for StoreExports<'_> {
    fn list(&self) -> Vec<String> {
        let mut v = self.store.volumes().unwrap_or_default();
        v.retain(|name| self.may_read(name));
        v
    }

    fn open(&self, name: &str) -> Result<Box<dyn Export>, String> {
        let (vol, spec) = parse_export_name(name)?;
        if !self.may_read(vol) {
            return Err(format!("no volume {vol} that this certificate may read"));
        }
        let r = self
            .store
            .open_point(vol, &spec)
            .map_err(|e| e.to_string())?;
        info!(
            export = name,
            seq = r.point().seq,
            time = %r.point().time,
            "NBD export resolved"
        );
        Ok(Box::new(PointExport(r)))
    }
}

/// Serves NBD on `listener` until `stop`, one thread per connection (at
/// most [`MAX_NBD_CONNECTIONS`]): with `tls` (the server's configuration
/// and PKI), TLS with a registered client certificate first.
pub fn run(
    listener: TcpListener,
    store: Store,
    tls: Option<(Arc<ServerConfig>, Pki)>,
    stop: &AtomicBool,
) -> Result<()> {
    let shared = Arc::new((store, tls));
    let conns = Arc::new(Conns::default());
    let mut next_id = 0u64;
    let mut threads = Vec::new();
    let mut checked = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if checked.elapsed() >= REVOCATION_CHECK {
            if let Some((_, pki)) = &shared.1 {
                conns.end_revoked(pki);
            }
            checked = Instant::now();
        }
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => {}
            Ok(_) => match listener.accept() {
                Ok((conn, peer)) => {
                    threads.retain(|t: &thread::JoinHandle<()>| !t.is_finished());
                    if threads.len() >= MAX_NBD_CONNECTIONS {
                        warn!(%peer, "{MAX_NBD_CONNECTIONS} NBD connections already; closing");
                        continue;
                    }
                    if let Err(e) = configure_socket(&conn) {
                        warn!(%peer, "cannot set socket options: {e}");
                    }
                    next_id += 1;
                    let id = next_id;
                    if let Ok(tcp) = conn.try_clone() {
                        conns.lock().insert(id, Live { tcp, client: None });
                    }
                    let shared = Arc::clone(&shared);
                    let conns = Arc::clone(&conns);
                    let t = thread::Builder::new()
                        .name(format!("nbd-{peer}"))
                        .spawn(move || {
                            let peer = peer.to_string();
                            let closer = conn.try_clone();
                            let (store, tls) = &*shared;
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                let authenticated = |client: &str, cert: &[u8]| {
                                    conns.authenticated(id, client, cert);
                                };
                                connection(conn, store, tls.as_ref(), &peer, &authenticated)
                            }));
                            conns.lock().remove(&id);
                            match r {
                                Ok(Ok(())) => info!(%peer, "NBD connection closed"),
                                Ok(Err(e)) => warn!(%peer, "NBD connection ended: {e:#}"),
                                Err(_) => error!(%peer, "NBD connection thread panicked"),
                            }
                            // The listener keeps a clone for shutdown: close
                            // the socket now, so the client sees the end.
                            if let Ok(c) = closer {
                                let _ = c.shutdown(Shutdown::Both);
                            }
                        });
                    match t {
                        Ok(t) => threads.push(t),
                        Err(e) => error!(%peer, "cannot start an NBD connection thread: {e}"),
                    }
                }
                Err(e) => warn!("NBD accept failed: {e}"),
            },
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(ServerError::io("polling the NBD socket", e)),
        }
        threads.retain(|t| !t.is_finished());
    }
    for c in conns.lock().values() {
        let _ = c.tcp.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// One NBD connection: plaintext, or STARTTLS and then the client's own
/// exports (`authenticated` is told the client and its certificate).
fn connection(
    conn: TcpStream,
    store: &Store,
    tls: Option<&(Arc<ServerConfig>, Pki)>,
    peer: &str,
    authenticated: &dyn Fn(&str, &[u8]),
) -> Result<()> {
    let Some((config, pki)) = tls else {
        let exports = StoreExports {
            store,
            reader: Reader::Anyone,
        };
        let rw = ReadWrite {
            r: BufReader::with_capacity(
                NBD_BUF,
                conn.try_clone().doing(|| "duplicating the socket".into())?,
            ),
            w: BufWriter::with_capacity(NBD_BUF, conn),
        };
        rtbackup_nbd::serve(rw, &exports, peer)?;
        return Ok(());
    };
    // Until TLS, unbuffered (nothing may be read past STARTTLS) and under
    // one deadline, whatever the peer trickles.
    let deadline = Instant::now() + NBD_PLAINTEXT_DEADLINE;
    let mut plain = Deadline {
        tcp: &conn,
        until: deadline,
    };
    let no_zeroes = rtbackup_nbd::greet(&mut plain)?;
    let nobody = StoreExports {
        store,
        reader: Reader::Client(String::new()),
    };
    let no_zeroes =
        match rtbackup_nbd::negotiate(plain, &nobody, peer, no_zeroes, TlsMode::Required)? {
            Handshake::Ended(_) => return Ok(()),
            Handshake::StartTls { no_zeroes, .. } => no_zeroes,
        };
    conn.set_read_timeout(None)
        .doing(|| "clearing the read timeout".into())?;
    let left = deadline.saturating_duration_since(Instant::now());
    let link = rtbackup_tls::accept(
        conn,
        Arc::clone(config),
        pki,
        left.max(Duration::from_millis(1)),
    )?;
    let client = link.client_name().unwrap_or_default().to_owned();
    if let Some(cert) = link.client_certificate() {
        authenticated(&client, cert);
    }
    let reader = if pki.is_admin(&client) {
        Reader::Admin(client)
    } else {
        Reader::Client(client)
    };
    info!(peer, reader = ?reader, "NBD over TLS");
    let exports = StoreExports { store, reader };
    let rw = ReadWrite {
        r: BufReader::with_capacity(NBD_BUF, &link),
        w: BufWriter::with_capacity(NBD_BUF, &link),
    };
    let end = rtbackup_nbd::negotiate(rw, &exports, peer, no_zeroes, TlsMode::Established)?;
    match end {
        Handshake::Ended(_) => Ok(()),
        Handshake::StartTls { .. } => Err(NbdError::Proto(
            rtbackup_nbd::proto::ProtoError::Invalid("TLS started twice".into()),
        )
        .into()),
    }
}

/// A socket whose reads and writes all end by `until`.
struct Deadline<'a> {
    tcp: &'a TcpStream,
    until: Instant,
}

impl Deadline<'_> {
    fn arm(&self) -> std::io::Result<()> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS within {NBD_PLAINTEXT_DEADLINE:?}"),
            ));
        }
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        (&mut &*self.tcp).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        (&mut &*self.tcp).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A stream as one `Read + Write` with buffering both ways.
struct ReadWrite<R: Read, W: Write> {
    r: BufReader<R>,
    w: BufWriter<W>,
}

impl<R: Read, W: Write> Read for ReadWrite<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl<R: Read, W: Write> Write for ReadWrite<R, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtbackup_store::PointSpec;

    #[test]
    fn export_names() {
        assert_eq!(parse_export_name("db1"), Ok(("db1", PointSpec::Latest)));
        assert_eq!(
            parse_export_name("db1@seq:12"),
            Ok(("db1", PointSpec::Seq(12)))
        );
        assert_eq!(
            parse_export_name("db1@mark:before-upgrade"),
            Ok(("db1", PointSpec::Mark("before-upgrade".into())))
        );
        assert!(matches!(
            parse_export_name("db1@2026-11-26T05:00:00Z"),
            Ok(("db1", PointSpec::Time(_)))
        ));
        for bad in [
            "",
            "@latest",
            "../x@latest",
            "db1@",
            "db1@someday",
            "db1@mark:a@b",
        ] {
            assert!(parse_export_name(bad).is_err(), "{bad}");
        }
    }
}
