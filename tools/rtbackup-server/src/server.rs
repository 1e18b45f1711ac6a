//! The TCP server: one thread per connection, one committer per connection
//! doing group commits; every open volume has a maintenance thread
//! (`maintenance.rs`).

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

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtbackup_proto::{
    error_code, frame_type, read_frame, read_frame_raw, validate_volume_name, write_frame,
    ErrorMsg, Frame, Hello, ProtoError, Welcome, PROTOCOL_VERSION,
};
use rtbackup_store::{PointReader, PointSpec, Position, Store, StoreError, Volume, VolumeStatus};

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
            let Some((client, cert)) = &live.client else {
                continue;
            };
            if tls.pki.client_of(cert).as_deref() != Some(client.as_str()) {
                let peer = live
                    .tcp
                    .peer_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string());
                warn!(
                    peer,
                    client, "the client's certificate was revoked: ending its session"
                );
                let _ = live.tcp.shutdown(Shutdown::Both);
            }
        }
    }
}

/// An authenticated connection: its socket, and with TLS the client and
/// the certificate (DER) it authenticated with.
struct Live {
    tcp: TcpStream,
    client: Option<(String, Vec<u8>)>,
}

/// How often live sessions are checked against revocation.
const REVOCATION_CHECK: Duration = Duration::from_secs(2);

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
    pub fn bind(store: Store, addr: &str) -> anyhow::Result<Self> {
        let lock_path = store.root().join("server.lock");
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let store_lock = match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => bail!(
                "another rtbackup-server is serving the store {}",
                store.root().display()
            ),
            Err((_, e)) => return Err(e).context(format!("locking {}", lock_path.display())),
        };
        let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
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
    pub fn handshake_timeout(mut self, t: Duration) -> anyhow::Result<Self> {
        Arc::get_mut(&mut self.shared)
            .context("the handshake timeout must be set before the server runs")?
            .handshake_timeout = t;
        Ok(self)
    }

    /// Requires TLS 1.3 with a client certificate of `pki` (registered, not
    /// revoked) on every connection; a client uses only its own volumes.
    pub fn with_tls(mut self, pki: Pki) -> anyhow::Result<Self> {
        let config = pki.server_config()?;
        let shared =
            Arc::get_mut(&mut self.shared).context("TLS must be set up before the server runs")?;
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
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `stop` becomes true, then ends every connection's reads,
    /// lets each finish its current commit (and ACK) and returns.
    pub fn run(self, stop: &AtomicBool) -> anyhow::Result<()> {
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
                Err(e) => return Err(e).context("polling the listening socket"),
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
fn open_volumes(store: &Store) -> anyhow::Result<HashMap<String, Maintained>> {
    let mut out = HashMap::new();
    for name in store.volumes()? {
        match store.open_volume(&name) {
            Ok(v) => {
                let m = Maintained::start(v)
                    .with_context(|| format!("starting the maintenance thread of {name}"))?;
                out.insert(name, m);
            }
            Err(e) => error!(volume = name, "cannot open the volume: {e}"),
        }
    }
    Ok(out)
}

/// Refuses a connection over the limit: ERROR `too-many-connections` on
/// a plain connection (a TLS client is only closed: the ERROR would come
/// before its handshake), without blocking the accept loop.
fn refuse(link: &Link) {
    let msg = "the server has as many connections as it accepts (--max-connections); retry later";
    let w = Mutex::new(link);
    send_error(&w, error_code::TOO_MANY_CONNECTIONS, msg);
    let _ = link.tcp().shutdown(Shutdown::Write);
    // Read what already arrived (a HELLO), so that closing does not reset
    // the connection before the peer reads the ERROR.
    if link.tcp().set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 8192];
        while matches!(link.tcp().read(&mut buf), Ok(1..)) {}
    }
}

/// Sends a frame to a client of a read-only request (ROLLBACK, VERIFY):
/// one write under the writer's lock. The socket is unbuffered: nothing
/// waits for a flush.
pub(crate) fn send_frame(writer: &Mutex<&Link>, f: &Frame) -> Result<(), SessionError> {
    write_frame(&mut *lock(writer), f)?;
    Ok(())
}

/// Sends an ERROR frame, best effort.
fn send_error(w: &Mutex<&Link>, code: &str, message: &str) {
    let f = Frame::Error(ErrorMsg::new(code, message));
    let mut s = lock(w);
    let _ = write_frame(&mut *s, &f).and_then(|()| s.flush().map_err(ProtoError::from));
}

/// After an ERROR: closes the sending side and reads what the peer still
/// sends for a moment, so that closing the socket with unread data does not
/// reset the connection before the peer has read the ERROR.
fn drain(w: &Mutex<&Link>) {
    let mut s = lock(w);
    let _ = s.tcp().shutdown(Shutdown::Write);
    let _ = s.tcp().set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0usize;
    while total < 64 << 20 {
        match std::io::Read::read(&mut *s, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Why a session ended.
enum End {
    /// The peer closed the connection.
    Closed,
    /// The server is shutting down.
    Shutdown,
}

/// An error of a session: what to tell the peer and log.
pub(crate) struct SessionError {
    code: &'static str,
    message: String,
    /// Tell the peer (false when the connection is already broken).
    send: bool,
    /// The store failed: drop the open volume, so that the next connection
    /// reopens (and recovers) it. Never for socket errors or bad input.
    evict: bool,
}

impl From<ProtoError> for SessionError {
    fn from(e: ProtoError) -> Self {
        let send = !matches!(e, ProtoError::Io(_) | ProtoError::Truncated { .. });
        Self {
            code: e.code(),
            message: e.to_string(),
            send,
            evict: false,
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
            send: true,
            evict: e.is_internal(),
        }
    }
}

pub(crate) fn session_error(code: &'static str, message: impl Into<String>) -> SessionError {
    SessionError {
        code,
        message: message.into(),
        send: true,
        evict: false,
    }
}

/// Where a client's read-only request reads a volume.
pub(crate) enum ReadAt {
    /// A consistency point (ROLLBACK).
    Point(PointSpec),
    /// The end of the journal (VERIFY): up to this position after the last
    /// durable record, taken before the store is read, if the volume is
    /// open for ingest ([`Store::open_end`]).
    End(Option<Position>),
}

/// Opens `volume` at `at` for a client's read-only request (ROLLBACK,
/// VERIFY: `kind`), after checking, in this order, its protocol version,
/// the volume name and the point (an unparsable one is `protocol`); then
/// checks that the client's device has the volume's size. A volume the
/// store does not hold is `missing_volume`, a point it does not hold
/// `bad-volume`.
pub(crate) fn open_point_for_client(
    store: &Store,
    kind: &str,
    protocol: u16,
    volume: &str,
    size_bytes: u64,
    at: Result<ReadAt, String>,
    missing_volume: &'static str,
) -> Result<PointReader, SessionError> {
    if protocol != PROTOCOL_VERSION {
        return Err(session_error(
            error_code::UNSUPPORTED_VERSION,
            format!("protocol {protocol} in {kind}; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    validate_volume_name(volume)?;
    let at = at.map_err(|e| session_error(error_code::PROTOCOL, e))?;
    let reader = match at {
        ReadAt::Point(spec) => store.open_point(volume, &spec),
        ReadAt::End(durable) => store.open_end(volume, durable),
    }
    .map_err(|e| match e {
        StoreError::NoSuchVolume(_) => session_error(missing_volume, e.to_string()),
        StoreError::NoSuchPoint(_) => session_error(error_code::BAD_VOLUME, e.to_string()),
        e => SessionError::from(e),
    })?;
    if reader.size() != size_bytes {
        return Err(session_error(
            error_code::SIZE_MISMATCH,
            format!(
                "the device has {size_bytes} bytes, volume {volume} {}",
                reader.size()
            ),
        ));
    }
    Ok(reader)
}

fn connection(shared: &Shared, conn: TcpStream, peer: SocketAddr, id: u64) {
    let link = match &shared.tls {
        Some(t) => {
            let timeout = shared.handshake_timeout;
            match rtbackup_tls::accept(conn, Arc::clone(&t.config), &t.pki, timeout) {
                Ok(l) => l,
                Err(e) => {
                    warn!(%peer, "connection refused: {e}");
                    return;
                }
            }
        }
        None => Link::plain(conn),
    };
    // Authenticated (or plain): now it takes a connection slot.
    match shared.authenticated(id, &link) {
        Ok(()) => {}
        Err(Some(live)) => {
            let client = link.client_name().unwrap_or("-");
            warn!(%peer, client, live, "too many connections; refusing");
            refuse(&link);
            return;
        }
        // Ended as the oldest handshake.
        Err(None) => return,
    }
    let writer = Mutex::new(&link);
    let mut volume = String::new();
    let client = link.client_name().unwrap_or("-").to_owned();
    match session(shared, &link, &writer, peer, id, &mut volume) {
        Ok(End::Closed) => info!(%peer, client, volume, "connection closed by the agent"),
        Ok(End::Shutdown) => info!(%peer, client, volume, "connection ended: server shutdown"),
        Err(e) => {
            error!(%peer, client, volume, code = e.code, "{}; closing the connection", e.message);
            if e.send {
                send_error(&writer, e.code, &e.message);
                drain(&writer);
            }
        }
    }
    link.shutdown();
}

/// Whether the client of `link` may use `volume`: with TLS, the volume must
/// be its own (its owner is the client whose HELLO created it, or, for a
/// volume from before owners, claimed it with `claim`); a plain link
/// (`--insecure-loopback-only`) is not checked.
fn authorize(shared: &Shared, link: &Link, volume: &str, claim: bool) -> Result<(), SessionError> {
    let Some(client) = link.client_name() else {
        return Ok(());
    };
    validate_volume_name(volume)?;
    let refused = || {
        session_error(
            error_code::FORBIDDEN,
            format!("volume {volume} belongs to another client; client {client} may use only its own volumes"),
        )
    };
    match shared.store.owner(volume)? {
        Some(owner) if owner == client => Ok(()),
        Some(_) => Err(refused()),
        // A volume from before owners is no client's to take: the
        // operator gives it (`rtbackup-server claim`).
        None if claim && shared.store.exists(volume)? => {
            warn!(
                client,
                volume,
                "an existing volume with no owner is not given to the first client that asks: \
                 rtbackup-server claim --volume {volume} CLIENT gives it"
            );
            Err(refused())
        }
        None if claim => {
            quota_for_new_volume(shared, client)?;
            let owner = shared.store.claim(volume, client)?;
            if owner == client {
                Ok(())
            } else {
                Err(refused())
            }
        }
        // Another client's volume or none at all: the same answer, so
        // that names of other clients' volumes cannot be probed.
        None => Err(refused()),
    }
}

/// The limits of `client` from its enrolment (`None` without TLS: no
/// clients, no limits).
fn limits_of(
    shared: &Shared,
    client: &str,
) -> Result<Option<rtbackup_tls::ClientLimits>, SessionError> {
    let Some(tls) = &shared.tls else {
        return Ok(None);
    };
    tls.pki
        .limits(client)
        .map(Some)
        .map_err(|e| session_error(error_code::INTERNAL, e.to_string()))
}

/// Refuses a volume more to a client at its `max_volumes`.
fn quota_for_new_volume(shared: &Shared, client: &str) -> Result<(), SessionError> {
    let Some(limits) = limits_of(shared, client)? else {
        return Ok(());
    };
    let owned = shared.store.volumes_of(client)?.len();
    if owned >= limits.max_volumes as usize {
        warn!(
            client,
            owned,
            max = limits.max_volumes,
            "a volume over the client's limit refused"
        );
        return Err(session_error(
            error_code::OVER_QUOTA,
            format!(
                "client {client} owns {owned} volumes, its limit (enroll --max-volumes); \
                 the operator can raise it"
            ),
        ));
    }
    Ok(())
}

/// How many more bytes of records client `client` may send: its
/// `max_bytes` less the journal its volumes hold (`None`: no limit).
fn byte_budget(shared: &Shared, client: Option<&str>) -> Result<Option<u64>, SessionError> {
    let Some(client) = client else {
        return Ok(None);
    };
    let Some(max) = limits_of(shared, client)?.and_then(|l| l.max_bytes) else {
        return Ok(None);
    };
    let mut held = 0u64;
    for v in shared.store.volumes_of(client)? {
        // An open volume's counters come from memory; a name given at
        // enrolment may have no volume yet.
        let open = lock(&shared.volumes).get(&v).map(|m| Arc::clone(&m.volume));
        let bytes = match open {
            Some(vol) => vol.status()?.journal_bytes,
            None if shared.store.exists(&v)? => shared.store.volume_status(&v)?.journal_bytes,
            None => 0,
        };
        held = held.saturating_add(bytes);
    }
    if held >= max {
        return Err(over_bytes(client, held, max));
    }
    Ok(Some(max - held))
}

fn over_bytes(client: &str, held: u64, max: u64) -> SessionError {
    warn!(
        client,
        held, max, "the client's history is at its limit: nothing more acknowledged"
    );
    session_error(
        error_code::OVER_QUOTA,
        format!(
            "client {client} holds {held} bytes of history, its limit is {max} \
             (enroll --max-bytes): nothing more is acknowledged until retention \
             frees room or the operator raises it; the ring keeps the records"
        ),
    )
}

/// Gets the open volume or opens (creating) it, with its maintenance
/// thread's waker.
fn get_volume(shared: &Shared, hello: &Hello) -> Result<(Arc<Volume>, Arc<Waker>), SessionError> {
    if let Some(m) = lock(&shared.volumes).get(&hello.volume) {
        let v = &m.volume;
        if v.size_bytes() != hello.size_bytes {
            return Err(StoreError::SizeMismatch {
                volume: hello.volume.clone(),
                stored: v.size_bytes(),
                requested: hello.size_bytes,
            }
            .into());
        }
        return Ok((Arc::clone(v), Arc::clone(&m.waker)));
    }
    let v =
        shared
            .store
            .open_or_create_volume(&hello.volume, hello.size_bytes, hello.block_size)?;
    let m = Maintained::start(v).map_err(|e| {
        session_error(
            error_code::INTERNAL,
            format!("cannot start the volume's maintenance thread: {e}"),
        )
    })?;
    let out = (Arc::clone(&m.volume), Arc::clone(&m.waker));
    lock(&shared.volumes).insert(hello.volume.clone(), m);
    Ok(out)
}

fn session(
    shared: &Shared,
    link: &Link,
    writer: &Mutex<&Link>,
    peer: SocketAddr,
    conn_id: u64,
    volume_name: &mut String,
) -> Result<End, SessionError> {
    link.tcp()
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(ProtoError::from)?;
    // HELLO is read unbuffered (exactly its bytes; its size is capped by the
    // codec): nothing large is allocated for a peer before its handshake.
    let hello = match read_frame(&mut &*link) {
        Ok(Frame::Hello(h)) => h,
        Ok(Frame::Rollback(req)) => {
            volume_name.clone_from(&req.volume);
            authorize(shared, link, &req.volume, false)?;
            crate::rollback::serve_rollback(&shared.store, &req, writer, peer)?;
            return Ok(End::Closed);
        }
        Ok(Frame::Verify(req)) => {
            volume_name.clone_from(&req.volume);
            authorize(shared, link, &req.volume, false)?;
            // The durable end, taken before the store is read: records
            // appended but not durable yet stay out of the answer.
            let durable = lock(&shared.volumes)
                .get(&req.volume)
                .map(|m| m.volume.durable_position());
            crate::verify::serve_verify(
                &shared.store,
                durable,
                &req,
                writer,
                peer,
                &shared.stopping,
            )?;
            return Ok(End::Closed);
        }
        Ok(f) => {
            return Err(session_error(
                error_code::PROTOCOL,
                format!("expected HELLO, ROLLBACK or VERIFY, got {}", f.name()),
            ))
        }
        Err(ProtoError::Closed) => return Ok(End::Closed),
        Err(e) => return Err(e.into()),
    };
    if hello.protocol != PROTOCOL_VERSION {
        return Err(session_error(
            error_code::UNSUPPORTED_VERSION,
            format!(
                "protocol {} in HELLO; this server speaks {PROTOCOL_VERSION}",
                hello.protocol
            ),
        ));
    }
    validate_volume_name(&hello.volume)?;
    volume_name.clone_from(&hello.volume);
    authorize(shared, link, &hello.volume, true)?;
    let _busy = {
        let mut busy = lock(&shared.busy);
        if let Some(b) = busy.get(&hello.volume).copied() {
            let mut message = format!(
                "volume {} is being streamed by another connection",
                hello.volume
            );
            if b.ring_id == hello.ring_id {
                // The same attach reconnecting: its old connection is dead
                // or half-open. End it, so that it releases the volume
                // promptly; the agent retries with backoff.
                if let Some(old) = lock(&shared.conns).get(&b.conn) {
                    let _ = old.tcp.shutdown(Shutdown::Both);
                }
                info!(%peer, volume = hello.volume, old_connection = b.conn,
                    "the same ring reconnected: ending its previous connection");
                message.push_str(" of the same ring, which is being ended; retry");
            }
            return Err(session_error(error_code::VOLUME_BUSY, message));
        }
        busy.insert(
            hello.volume.clone(),
            Busy {
                ring_id: hello.ring_id,
                conn: conn_id,
            },
        );
        BusyGuard {
            shared,
            volume: hello.volume.clone(),
        }
    };
    let budget = byte_budget(shared, link.client_name())?;
    let (vol, waker) = get_volume(shared, &hello)?;
    vol.check_ring(hello.ring_id)?;
    let durable_seq = vol.durable_seq_for(hello.ring_id);
    info!(
        %peer, volume = hello.volume, client = hello.client, agent = hello.agent_version,
        ring_id = format_args!("{:#x}", hello.ring_id), durable_seq, "agent connected"
    );
    {
        let mut w = lock(writer);
        let welcome = Frame::Welcome(Welcome {
            protocol: PROTOCOL_VERSION,
            volume: hello.volume.clone(),
            ring_id: hello.ring_id,
            durable_seq,
            server_version: SERVER_VERSION.into(),
        });
        write_frame(&mut *w, &welcome)?;
        w.flush().map_err(ProtoError::from)?;
    }
    // No read timeout while streaming (an idle agent is fine); a dead peer
    // is detected by keepalive and the user timeout.
    link.tcp()
        .set_read_timeout(None)
        .map_err(ProtoError::from)?;
    let mut reader = BufReader::with_capacity(SOCKET_BUF, link);

    let commit = Committer::new();
    let result = thread::scope(|s| {
        let (c, w, v) = (&commit, &*waker, &vol);
        // Stops the committer however this closure ends (a panic included),
        // so that the scope's join cannot wait forever.
        let _stop = StopOnDrop(&commit);
        let committer = s.spawn(move || c.run(v, hello.ring_id, writer, peer, w));
        let quota = budget.map(|b| (link.client_name().unwrap_or("-"), b));
        let r = receive(
            &mut reader,
            &vol,
            hello.ring_id,
            &commit,
            &shared.stats,
            quota,
        );
        commit.stop();
        let cr = committer.join().unwrap_or_else(|_| {
            Err(session_error(
                error_code::INTERNAL,
                "committer thread panicked",
            ))
        });
        match (r, cr) {
            // A failing committer ends the reads; its error is the cause.
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e),
            (Ok(End::Closed), Ok(())) if shared.stopping.load(Ordering::SeqCst) => {
                Ok(End::Shutdown)
            }
            (Ok(end), Ok(())) => Ok(end),
        }
    });
    if let Err(e) = &result {
        if e.evict {
            // The volume may be poisoned (a failed write or fsync): the
            // next connection reopens and recovers it. Dropped outside the
            // lock: the maintenance thread is joined.
            let m = lock(&shared.volumes).remove(&hello.volume);
            drop(m);
        }
    }
    result
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

/// Stops the committer when dropped.
struct StopOnDrop<'a>(&'a Committer);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Reads RECORDS frames and appends them until the peer closes.
fn receive(
    reader: &mut BufReader<&Link>,
    vol: &Volume,
    ring_id: u64,
    commit: &Committer,
    stats: &Stats,
    quota: Option<(&str, u64)>,
) -> Result<End, SessionError> {
    let mut payload = Vec::new();
    // Bytes the client may still send (its quota at HELLO).
    let mut left = quota.map(|(_, b)| b);
    loop {
        if commit.failed() {
            // The committer reports its own error.
            return Ok(End::Closed);
        }
        let t = match read_frame_raw(reader, &mut payload) {
            Ok(t) => t,
            Err(ProtoError::Closed) => return Ok(End::Closed),
            Err(e) => return Err(e.into()),
        };
        match t {
            frame_type::RECORDS => {
                if let (Some(l), Some((client, max))) = (left, quota) {
                    let n = payload.len() as u64;
                    if n > l {
                        // Not appended, so not acknowledged: the agent's
                        // ring keeps it.
                        return Err(over_bytes(client, max - l, max));
                    }
                    left = Some(l - n);
                }
                let out = vol.append(ring_id, &payload)?;
                debug!(
                    volume = vol.name(),
                    appended = out.appended,
                    skipped = out.skipped,
                    bytes = out.bytes,
                    "batch"
                );
                if out.appended > 0 {
                    stats.count(vol.name(), out.appended as u64, out.bytes);
                    commit.notify();
                }
            }
            frame_type::ERROR => {
                let f = rtbackup_proto::decode_frame(t, std::mem::take(&mut payload))?;
                return Err(SessionError {
                    code: error_code::PROTOCOL,
                    message: format!("agent sent an error: {f:?}"),
                    send: false,
                    evict: false,
                });
            }
            t => {
                return Err(session_error(
                    error_code::PROTOCOL,
                    format!(
                        "unexpected {} frame after the handshake",
                        rtbackup_proto::frame_type_name(t)
                    ),
                ))
            }
        }
    }
}

#[derive(Default)]
struct CommitState {
    /// Batches appended since the committer last looked.
    pending: u64,
    stop: bool,
    failed: bool,
}

/// Group commit: fsyncs whatever was appended and ACKs.
struct Committer {
    state: Mutex<CommitState>,
    cv: Condvar,
}

impl Committer {
    fn new() -> Self {
        Self {
            state: Mutex::new(CommitState::default()),
            cv: Condvar::new(),
        }
    }

    fn notify(&self) {
        lock(&self.state).pending += 1;
        self.cv.notify_one();
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_one();
    }

    fn failed(&self) -> bool {
        lock(&self.state).failed
    }

    fn run(
        &self,
        vol: &Volume,
        ring_id: u64,
        writer: &Mutex<&Link>,
        peer: SocketAddr,
        waker: &Waker,
    ) -> Result<(), SessionError> {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.run_inner(vol, ring_id, writer, peer, waker)
        }))
        .unwrap_or_else(|_| {
            Err(session_error(
                error_code::INTERNAL,
                "committer thread panicked",
            ))
        });
        if r.is_err() {
            lock(&self.state).failed = true;
            // Wake the reader blocked on the socket.
            let _ = lock(writer).tcp().shutdown(Shutdown::Read);
        }
        r
    }

    fn run_inner(
        &self,
        vol: &Volume,
        ring_id: u64,
        writer: &Mutex<&Link>,
        peer: SocketAddr,
        waker: &Waker,
    ) -> Result<(), SessionError> {
        let mut acked = vol.durable_seq_for(ring_id);
        // The connection cannot take ACKs any more (a write failed or timed
        // out, perhaps in the middle of a frame): the connection is being
        // ended; the records are still synced.
        let mut broken = false;
        loop {
            let stop = {
                let mut st = lock(&self.state);
                while st.pending == 0 && !st.stop {
                    st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                st.pending = 0;
                st.stop
            };
            let (r, seq) = vol.sync()?;
            if r == ring_id && seq > acked && !broken {
                let mut w = lock(writer);
                // A failed ACK (peer gone, or not reading for the write
                // timeout) is not an error of the store: the records are
                // durable and the agent resends after reconnecting. The
                // connection is ended (the reader sees it closed).
                match write_frame(&mut *w, &Frame::Ack(seq))
                    .and_then(|()| w.flush().map_err(ProtoError::from))
                {
                    Ok(()) => acked = seq,
                    Err(e) => {
                        info!(%peer, volume = vol.name(), "cannot send ACK {seq}: {e}; ending the connection");
                        w.shutdown();
                        broken = true;
                    }
                }
            }
            waker.want();
            if stop && !vol.has_unsynced() {
                return Ok(());
            }
        }
    }
}
