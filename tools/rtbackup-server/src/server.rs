//! The TCP server: the accept loop, the connections' shared state and the
//! server's counters. Each connection has a thread (`server/session.rs`:
//! the handshake, HELLO and its checks, `server/quota.rs`: a client's
//! limits) and a committer doing group commits (`server/commit.rs`); every
//! open volume has a maintenance thread (`maintenance.rs`).

mod commit;
mod quota;
mod session;

use session::connection;
pub(crate) use session::{open_point_for_client, send_frame, session_error, ReadAt, SessionError};

use rtbackup_tls::{Link, Pki};
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtbackup_proto::{
    error_code, frame_type, read_frame, read_frame_raw, validate_volume_name, write_frame,
    ErrorMsg, Frame, Hello, ProtoError, Welcome, PROTOCOL_VERSION,
};
use rtbackup_store::{PointReader, PointSpec, Position, Store, StoreError, Volume, VolumeStatus};

use crate::error::{IoContext, Result, ServerError};
use crate::maintenance::{Maintained, Waker};
use tracing::{debug, error, info, warn};

/// Version reported in WELCOME.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a peer has to send its HELLO.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `--handshake-timeout`: how long a peer has for the whole
/// TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in their TLS handshake at once (not yet authenticated; they
/// take none of the `--max-connections` slots). When all are taken, a new
/// connection ends the oldest: a peer that holds handshakes open cannot
/// keep an agent's few-millisecond handshake out.
pub const MAX_HANDSHAKES: usize = 64;
/// Buffer for reading frames from a socket.
const SOCKET_BUF: usize = 1 << 20;
/// TCP keepalive: idle time before the first probe, interval between
/// probes, and probes unanswered before the connection is dropped. With
/// [`USER_TIMEOUT`] they end half-open connections (a client host that
/// vanished) in well under a minute, releasing their volume.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
const USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a write to a peer may block (an ACK to an agent that does not
/// read): the connection is then ended.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Sets the options of an accepted connection: no Nagle delay, keepalive,
/// user timeout and a write timeout.
pub fn configure_socket(conn: &TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    conn.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let s = socket2::SockRef::from(conn);
    s.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    s.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by the connections.
struct Shared {
    store: Store,
    /// Volumes open for ingest with their maintenance threads: every
    /// volume of the store from the start, kept open between connections.
    volumes: Mutex<HashMap<String, Maintained>>,
    /// Volumes a connection is streaming now: ring and connection id.
    busy: Mutex<HashMap<String, Busy>>,
    /// Sockets of authenticated connections (with TLS; all connections
    /// without), to end their reads on shutdown.
    conns: Mutex<HashMap<u64, Live>>,
    /// Sockets of connections in their TLS handshake, and when each came.
    handshakes: Mutex<HashMap<u64, (TcpStream, Instant)>>,
    /// `--max-connections`: authenticated connections served at once.
    max_connections: AtomicUsize,
    /// `--handshake-timeout`.
    handshake_timeout: Duration,
    next_conn: AtomicU64,
    /// The server is shutting down: reads were ended on purpose.
    stopping: AtomicBool,
    /// TLS with client certificates; `None`: plain (loopback demos).
    tls: Option<TlsServer>,
    stats: Arc<Stats>,
    /// The byte budgets of clients with live sessions (`quota.rs`): all
    /// sessions of a client draw on one.
    budgets: Mutex<HashMap<String, std::sync::Weak<quota::Budget>>>,
}

impl Shared {
    /// Registers a connection that starts its handshake; if
    /// [`MAX_HANDSHAKES`] are already in theirs, ends the oldest.
    fn admit(&self, id: u64, tcp: TcpStream, peer: SocketAddr) {
        let mut hs = lock(&self.handshakes);
        if hs.len() >= MAX_HANDSHAKES {
            if let Some((&old, (s, _))) = hs.iter().min_by_key(|(_, (_, since))| *since) {
                let from = s.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
                warn!(%peer, oldest = from, "{MAX_HANDSHAKES} connections in their handshake: ending the oldest");
                let _ = s.shutdown(Shutdown::Both);
                hs.remove(&old);
            }
        }
        hs.insert(id, (tcp, Instant::now()));
    }

    /// Moves connection `id` from the handshakes to the authenticated
    /// connections, unless they are at `--max-connections` (`Err`: how
    /// many there are) or it was ended meanwhile (`Err(None)`).
    fn authenticated(&self, id: u64, link: &Link) -> Result<(), Option<usize>> {
        let Some((tcp, _)) = lock(&self.handshakes).remove(&id) else {
            return Err(None);
        };
        let mut conns = lock(&self.conns);
        if conns.len() >= self.max_connections.load(Ordering::Relaxed) {
            return Err(Some(conns.len()));
        }
        let client = link
            .client_name()
            .zip(link.client_certificate())
            .map(|(n, c)| (n.to_owned(), c.to_vec()));
        conns.insert(id, Live { tcp, client });
        Ok(())
    }

    /// Ends the sessions whose certificate is no longer registered
    /// (`revoke`): within [`REVOCATION_CHECK`] of the revocation, not at
    /// their next connection.
    fn end_revoked(&self) {
        let Some(tls) = &self.tls else { return };
        for live in lock(&self.conns).values() {
            live.end_if_revoked(&tls.pki, "session");
        }
    }
}

/// An authenticated connection (of an agent, or an NBD reader): its
/// socket, and with TLS the client and the certificate (DER) it
/// authenticated with.
pub(crate) struct Live {
    pub(crate) tcp: TcpStream,
    pub(crate) client: Option<(String, Vec<u8>)>,
}

impl Live {
    /// Ends the connection (its `what`, for the log) if its certificate
    /// is no longer registered in `pki` (`revoke`).
    pub(crate) fn end_if_revoked(&self, pki: &Pki, what: &str) {
        let Some((client, cert)) = &self.client else {
            return;
        };
        if pki.client_of(cert).as_deref() != Some(client.as_str()) {
            let peer = self
                .tcp
                .peer_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string());
            warn!(
                peer,
                client, "the client's certificate was revoked: ending its {what}"
            );
            let _ = self.tcp.shutdown(Shutdown::Both);
        }
    }
}

/// How often live sessions are checked against revocation.
pub(crate) const REVOCATION_CHECK: Duration = Duration::from_secs(2);

/// What the server counts for its metrics (crate::metrics).
#[derive(Debug, Default)]
pub struct Stats {
    connections: AtomicU64,
    received: Mutex<HashMap<String, Received>>,
}

/// What a volume received since the server started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Records appended to its journal (duplicates skipped not counted).
    pub records: u64,
    /// Their bytes (headers and data).
    pub bytes: u64,
}

impl Stats {
    /// Connections being served now.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// What each volume received, by name.
    pub fn received(&self) -> Vec<(String, Received)> {
        let mut v: Vec<_> = lock(&self.received)
            .iter()
            .map(|(k, r)| (k.clone(), *r))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    fn count(&self, volume: &str, records: u64, bytes: u64) {
        let mut all = lock(&self.received);
        let r = all.entry(volume.to_owned()).or_default();
        r.records += records;
        r.bytes += bytes;
    }
}

/// The server's TLS setup.
struct TlsServer {
    config: Arc<rtbackup_tls::rustls::ServerConfig>,
    pki: Pki,
}

/// Who streams a busy volume.
#[derive(Debug, Clone, Copy)]
struct Busy {
    ring_id: u64,
    conn: u64,
}

/// Removes a volume from the busy set when dropped.
struct BusyGuard<'a> {
    shared: &'a Shared,
    volume: String,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.busy).remove(&self.volume);
    }
}

/// A live connection's entry in [`Shared::conns`]; removed when dropped.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(&self.shared.handshakes).remove(&self.id);
        lock(&self.shared.conns).remove(&self.id);
        self.shared
            .stats
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The volumes a server has open (every volume of its store that opened),
/// whose state is read from memory: no volume lock, no journal walk, so a
/// metrics scrape never slows ingest.
#[derive(Clone)]
pub struct OpenVolumes(Arc<Shared>);

impl OpenVolumes {
    /// Each open volume's name and counters, sorted by name.
    pub fn statuses(&self) -> Vec<(String, rtbackup_store::Result<VolumeStatus>)> {
        let mut vols: Vec<(String, Arc<Volume>)> = lock(&self.0.volumes)
            .iter()
            .map(|(n, m)| (n.clone(), Arc::clone(&m.volume)))
            .collect();
        vols.sort_by(|a, b| a.0.cmp(&b.0));
        vols.into_iter().map(|(n, v)| (n, v.status())).collect()
    }
}

/// A running server bound to its address.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    _store_lock: Flock<std::fs::File>,
}

impl Server {
    /// Opens the store (taking its server lock: one server per store) and
    /// binds `addr`.
    pub fn bind(store: Store, addr: &str) -> Result<Self> {
        let lock_path = store.root().join("server.lock");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .doing(|| format!("opening {}", lock_path.display()))?;
        let store_lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(ServerError::StoreInUse(store.root().to_path_buf()))
            }
            Err((_, e)) => {
                return Err(ServerError::io(
                    format!("locking {}", lock_path.display()),
                    e,
                ))
            }
        };
        let listener = TcpListener::bind(addr).doing(|| format!("listening on {addr}"))?;
        let volumes = open_volumes(&store)?;
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                store,
                volumes: Mutex::new(volumes),
                busy: Mutex::new(HashMap::new()),
                conns: Mutex::new(HashMap::new()),
                handshakes: Mutex::new(HashMap::new()),
                max_connections: AtomicUsize::new(DEFAULT_MAX_CONNECTIONS),
                handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
                next_conn: AtomicU64::new(1),
                stopping: AtomicBool::new(false),
                tls: None,
                stats: Arc::default(),
                budgets: Mutex::new(HashMap::new()),
            }),
            _store_lock: store_lock,
        })
    }

    /// Sets how many authenticated connections are served at once (at
    /// least 1); more are refused with ERROR `too-many-connections`.
    pub fn max_connections(self, n: usize) -> Self {
        self.shared
            .max_connections
            .store(n.max(1), Ordering::Relaxed);
        self
    }

    /// Sets how long a peer has for the whole TLS handshake.
    pub fn handshake_timeout(mut self, t: Duration) -> Result<Self> {
        Arc::get_mut(&mut self.shared)
            .ok_or(ServerError::AlreadyRunning("the handshake timeout"))?
            .handshake_timeout = t;
        Ok(self)
    }

    /// Requires TLS 1.3 with a client certificate of `pki` (registered, not
    /// revoked) on every connection; a client uses only its own volumes.
    pub fn with_tls(mut self, pki: Pki) -> Result<Self> {
        let config = pki.server_config()?;
        let shared = Arc::get_mut(&mut self.shared).ok_or(ServerError::AlreadyRunning("TLS"))?;
        shared.tls = Some(TlsServer { config, pki });
        Ok(self)
    }

    /// Its counters, for the metrics endpoint.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    /// The volumes it has open, for the metrics endpoint.
    pub fn open_volumes(&self) -> OpenVolumes {
        OpenVolumes(Arc::clone(&self.shared))
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .doing(|| "reading the listening address".into())
    }

    /// Serves until `stop` becomes true, then ends every connection's reads,
    /// lets each finish its current commit (and ACK) and returns.
    pub fn run(self, stop: &AtomicBool) -> Result<()> {
        let mut threads = Vec::new();
        let mut checked = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if checked.elapsed() >= REVOCATION_CHECK {
                self.shared.end_revoked();
                checked = Instant::now();
            }
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(0) => {}
                Ok(_) => match self.listener.accept() {
                    Ok((conn, peer)) => {
                        if let Err(e) = configure_socket(&conn) {
                            warn!(%peer, "cannot set socket options: {e}");
                        }
                        let shared = Arc::clone(&self.shared);
                        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                        match conn.try_clone() {
                            Ok(c) => shared.admit(id, c, peer),
                            Err(e) => {
                                warn!(%peer, "cannot register connection: {e}");
                                continue;
                            }
                        }
                        let t =
                            thread::Builder::new()
                                .name(format!("conn-{peer}"))
                                .spawn(move || {
                                    // Unregisters (closing the socket) even
                                    // if the connection panics.
                                    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
                                    let _registered = Registered {
                                        shared: &shared,
                                        id,
                                    };
                                    connection(&shared, conn, peer, id);
                                });
                        match t {
                            Ok(t) => threads.push(t),
                            Err(e) => error!(%peer, "cannot start a connection thread: {e}"),
                        }
                    }
                    Err(e) => warn!("accept failed: {e}"),
                },
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(ServerError::io("polling the listening socket", e)),
            }
            threads.retain(|t| !t.is_finished());
        }
        info!(connections = threads.len(), "shutting down");
        self.shared.stopping.store(true, Ordering::SeqCst);
        for c in lock(&self.shared.conns).values() {
            let _ = c.tcp.shutdown(Shutdown::Read);
        }
        for (c, _) in lock(&self.shared.handshakes).values() {
            let _ = c.shutdown(Shutdown::Both);
        }
        for t in threads {
            let _ = t.join();
        }
        // Each maintenance thread makes a last apply and ends.
        let volumes: Vec<Maintained> = lock(&self.shared.volumes).drain().map(|(_, m)| m).collect();
        drop(volumes);
        Ok(())
    }
}

/// Opens (recovering) every volume of the store and starts its maintenance
/// thread, so that retention and a delayed image advance even for a volume
/// whose agent never connects again. A volume that cannot be opened is
/// reported and left closed; its agent's next connection tries again and
/// gets the error.
fn open_volumes(store: &Store) -> Result<HashMap<String, Maintained>> {
    let mut out = HashMap::new();
    for name in store.volumes()? {
        match store.open_volume(&name) {
            Ok(v) => {
                let m = Maintained::start(v)
                    .doing(|| format!("starting the maintenance thread of {name}"))?;
                out.insert(name, m);
            }
            Err(e) => error!(volume = name, "cannot open the volume: {e}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn accepted_sockets_detect_dead_peers() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        configure_socket(&s).unwrap();
        let r = socket2::SockRef::from(&s);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(r.keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(r.keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(r.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        assert_eq!(s.write_timeout().unwrap(), Some(WRITE_TIMEOUT));
        assert!(s.nodelay().unwrap());
    }
}
