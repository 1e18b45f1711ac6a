//! The TCP server: one thread per connection, one committer per connection
//! doing group commits.

use std::collections::{HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtbackup_proto::{
    error_code, frame_type, read_frame, read_frame_raw, validate_volume_name, write_frame,
    ErrorMsg, Frame, Hello, ProtoError, Welcome, PROTOCOL_VERSION,
};
use rtbackup_store::{ApplyOutcome, Store, StoreError, Volume};
use tracing::{debug, error, info, warn};

/// Version reported in WELCOME.
pub const SERVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long a peer has to send its HELLO.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// Buffer for reading frames from a socket.
const SOCKET_BUF: usize = 1 << 20;
/// How often an idle committer retries a deferred apply.
const APPLY_RETRY: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by the connections.
struct Shared {
    store: Store,
    /// Volumes open for ingest, kept open between connections.
    volumes: Mutex<HashMap<String, Arc<Volume>>>,
    /// Volumes a connection is streaming now.
    busy: Mutex<HashSet<String>>,
    /// Sockets of live connections, to end their reads on shutdown.
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    /// The server is shutting down: reads were ended on purpose.
    stopping: AtomicBool,
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
        lock(&self.shared.conns).remove(&self.id);
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
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                store,
                volumes: Mutex::new(HashMap::new()),
                busy: Mutex::new(HashSet::new()),
                conns: Mutex::new(HashMap::new()),
                next_conn: AtomicU64::new(1),
                stopping: AtomicBool::new(false),
            }),
            _store_lock: store_lock,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until `stop` becomes true, then ends every connection's reads,
    /// lets each finish its current commit (and ACK) and returns.
    pub fn run(self, stop: &AtomicBool) -> anyhow::Result<()> {
        let mut threads = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(0) => {}
                Ok(_) => match self.listener.accept() {
                    Ok((conn, peer)) => {
                        let shared = Arc::clone(&self.shared);
                        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
                        match conn.try_clone() {
                            Ok(c) => {
                                lock(&shared.conns).insert(id, c);
                            }
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
                                    let _registered = Registered {
                                        shared: &shared,
                                        id,
                                    };
                                    connection(&shared, conn, peer);
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
            let _ = c.shutdown(Shutdown::Read);
        }
        for t in threads {
            let _ = t.join();
        }
        Ok(())
    }
}

/// Sends an ERROR frame, best effort.
fn send_error(w: &Mutex<TcpStream>, code: &str, message: &str) {
    let f = Frame::Error(ErrorMsg::new(code, message));
    let mut s = lock(w);
    let _ = write_frame(&mut *s, &f).and_then(|()| s.flush().map_err(ProtoError::from));
}

/// After an ERROR: closes the sending side and reads what the peer still
/// sends for a moment, so that closing the socket with unread data does not
/// reset the connection before the peer has read the ERROR.
fn drain(w: &Mutex<TcpStream>) {
    let mut s = lock(w);
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
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
struct SessionError {
    code: &'static str,
    message: String,
    /// Tell the peer (false when the connection is already broken).
    send: bool,
}

impl From<ProtoError> for SessionError {
    fn from(e: ProtoError) -> Self {
        let send = !matches!(e, ProtoError::Io(_) | ProtoError::Truncated { .. });
        Self {
            code: e.code(),
            message: e.to_string(),
            send,
        }
    }
}

impl From<StoreError> for SessionError {
    fn from(e: StoreError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
            send: true,
        }
    }
}

fn session_error(code: &'static str, message: impl Into<String>) -> SessionError {
    SessionError {
        code,
        message: message.into(),
        send: true,
    }
}

fn connection(shared: &Shared, conn: TcpStream, peer: SocketAddr) {
    let _ = conn.set_nodelay(true);
    let writer = match conn.try_clone() {
        Ok(w) => Mutex::new(w),
        Err(e) => {
            error!(%peer, "cannot clone the socket: {e}");
            return;
        }
    };
    let mut volume = String::new();
    match session(shared, conn, &writer, peer, &mut volume) {
        Ok(End::Closed) => info!(%peer, volume, "connection closed by the agent"),
        Ok(End::Shutdown) => info!(%peer, volume, "connection ended: server shutdown"),
        Err(e) => {
            error!(%peer, volume, code = e.code, "{}; closing the connection", e.message);
            if e.send {
                send_error(&writer, e.code, &e.message);
                drain(&writer);
            }
        }
    }
    let _ = lock(&writer).shutdown(Shutdown::Both);
}

/// Gets the open volume or opens (creating) it.
fn get_volume(shared: &Shared, hello: &Hello) -> Result<Arc<Volume>, StoreError> {
    if let Some(v) = lock(&shared.volumes).get(&hello.volume) {
        if v.size_bytes() != hello.size_bytes {
            return Err(StoreError::SizeMismatch {
                volume: hello.volume.clone(),
                stored: v.size_bytes(),
                requested: hello.size_bytes,
            });
        }
        return Ok(Arc::clone(v));
    }
    let v = Arc::new(shared.store.open_or_create_volume(
        &hello.volume,
        hello.size_bytes,
        hello.block_size,
    )?);
    lock(&shared.volumes).insert(hello.volume.clone(), Arc::clone(&v));
    Ok(v)
}

fn session(
    shared: &Shared,
    conn: TcpStream,
    writer: &Mutex<TcpStream>,
    peer: SocketAddr,
    volume_name: &mut String,
) -> Result<End, SessionError> {
    conn.set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(ProtoError::from)?;
    let mut reader = BufReader::with_capacity(SOCKET_BUF, conn);
    let hello = match read_frame(&mut reader) {
        Ok(Frame::Hello(h)) => h,
        Ok(f) => {
            return Err(session_error(
                error_code::PROTOCOL,
                format!("expected HELLO, got {}", f.name()),
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
    let _busy = {
        let mut busy = lock(&shared.busy);
        if !busy.insert(hello.volume.clone()) {
            return Err(session_error(
                error_code::VOLUME_BUSY,
                format!(
                    "volume {} is being streamed by another connection",
                    hello.volume
                ),
            ));
        }
        BusyGuard {
            shared,
            volume: hello.volume.clone(),
        }
    };
    let vol = get_volume(shared, &hello)?;
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
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(ProtoError::from)?;

    let commit = Committer::new();
    let applier = Applier::new();
    let result = thread::scope(|s| {
        let (c, a, v) = (&commit, &applier, &vol);
        let committer = s.spawn(move || c.run(v, hello.ring_id, writer, peer, a));
        s.spawn(move || a.run(v));
        let r = receive(&mut reader, &vol, hello.ring_id, &commit);
        commit.stop();
        let cr = committer.join().unwrap_or_else(|_| {
            Err(session_error(
                error_code::INTERNAL,
                "committer thread panicked",
            ))
        });
        applier.stop();
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
        if e.code == error_code::INTERNAL {
            // The volume may be poisoned (a failed write or fsync): the
            // next connection reopens and recovers it.
            lock(&shared.volumes).remove(&hello.volume);
        }
    }
    result
}

/// Reads RECORDS frames and appends them until the peer closes.
fn receive(
    reader: &mut BufReader<TcpStream>,
    vol: &Volume,
    ring_id: u64,
    commit: &Committer,
) -> Result<End, SessionError> {
    let mut payload = Vec::new();
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
                let out = vol.append(ring_id, &payload)?;
                debug!(
                    volume = vol.name(),
                    appended = out.appended,
                    skipped = out.skipped,
                    bytes = out.bytes,
                    "batch"
                );
                if out.appended > 0 {
                    commit.notify();
                }
            }
            frame_type::ERROR => {
                let f = rtbackup_proto::decode_frame(t, std::mem::take(&mut payload))?;
                return Err(SessionError {
                    code: error_code::PROTOCOL,
                    message: format!("agent sent an error: {f:?}"),
                    send: false,
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
        writer: &Mutex<TcpStream>,
        peer: SocketAddr,
        applier: &Applier,
    ) -> Result<(), SessionError> {
        let r = self.run_inner(vol, ring_id, writer, peer, applier);
        if r.is_err() {
            lock(&self.state).failed = true;
            // Wake the reader blocked on the socket.
            let _ = lock(writer).shutdown(Shutdown::Read);
        }
        r
    }

    fn run_inner(
        &self,
        vol: &Volume,
        ring_id: u64,
        writer: &Mutex<TcpStream>,
        peer: SocketAddr,
        applier: &Applier,
    ) -> Result<(), SessionError> {
        let mut acked = vol.durable_seq_for(ring_id);
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
            if r == ring_id && seq > acked {
                let mut w = lock(writer);
                // A failed ACK (peer gone) is not an error of the store:
                // the records are durable and the agent resends after
                // reconnecting.
                match write_frame(&mut *w, &Frame::Ack(seq))
                    .and_then(|()| w.flush().map_err(ProtoError::from))
                {
                    Ok(()) => acked = seq,
                    Err(e) => debug!(%peer, "cannot send ACK {seq}: {e}"),
                }
            }
            applier.want();
            if stop && !vol.has_unsynced() {
                return Ok(());
            }
        }
    }
}

#[derive(Default)]
struct ApplyState {
    wanted: bool,
    stop: bool,
}

/// Advances the image after commits, on its own thread so that applying
/// never delays the next group commit and its ACK.
struct Applier {
    state: Mutex<ApplyState>,
    cv: Condvar,
}

impl Applier {
    fn new() -> Self {
        Self {
            state: Mutex::new(ApplyState::default()),
            cv: Condvar::new(),
        }
    }

    fn want(&self) {
        lock(&self.state).wanted = true;
        self.cv.notify_one();
    }

    fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_one();
    }

    /// Applies when asked, and retries every [`APPLY_RETRY`] while a
    /// restore defers it. Makes a last attempt when stopped.
    fn run(&self, vol: &Volume) {
        // A restarted server may have durable records to apply.
        let mut retry = true;
        loop {
            let stop = {
                let mut st = lock(&self.state);
                while !st.wanted && !st.stop {
                    let (g, t) = self
                        .cv
                        .wait_timeout(st, APPLY_RETRY)
                        .unwrap_or_else(|p| p.into_inner());
                    st = g;
                    if t.timed_out() && retry {
                        break;
                    }
                }
                st.wanted = false;
                st.stop
            };
            retry = match vol.apply(false) {
                Ok(ApplyOutcome::Deferred) => true,
                Ok(ApplyOutcome::Applied {
                    checkpoint,
                    records,
                }) => {
                    debug!(
                        volume = vol.name(),
                        seq = checkpoint.seq,
                        records,
                        "image advanced"
                    );
                    false
                }
                Ok(ApplyOutcome::UpToDate) => false,
                Err(e) => {
                    // Ingest goes on (the journal holds the records); the
                    // next commit tries again.
                    error!(volume = vol.name(), "cannot advance the image: {e}");
                    false
                }
            };
            if stop {
                return;
            }
        }
    }
}
