//! One connection to the server: handshake, resume, then a sender, a
//! receiver and a supervisor until it ends.

use crate::acks::AckTracker;
use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::resync::{self, Sink};
use crate::spool::Spool;
use rtbackup_proto::{
    read_frame, write_frame, write_records_frame, Frame, Hello, ProtoError, Welcome,
    MAX_FRAME_PAYLOAD, PROTOCOL_VERSION,
};
use rtbackup_ring::ResyncOp;
use rtbackup_ring::{Batch, Cursor, RingSource, RingView, SharedMemory, Wakeup};
use rtbackup_tls::Link;
use socket2::{SockRef, TcpKeepalive};
use std::io::{self, BufReader, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The agent's version, sent in HELLO.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// While records wait for their ACK and nothing new is published, the
/// sender sleeps on the receiver's [`Signal`] at most this long before it
/// looks at the ring's head again: the kernel's poll is level-triggered
/// (readable while records are unacknowledged), so it cannot be used to
/// wait then.
pub(crate) const OUTSTANDING_RECHECK: Duration = Duration::from_millis(2);

/// TCP keepalive on the server connection: first probe after this long
/// idle...
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// ... then one every this long...
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// ... and the connection is dead after this many unanswered.
pub(crate) const KEEPALIVE_PROBES: u32 = 3;

/// How a connection ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionEnd {
    /// The agent was asked to stop.
    Stopped,
    /// The device was detached and every record of its ring was
    /// acknowledged by the server and in the ring.
    Detached,
}

/// What a finished connection achieved, for the reconnection policy.
#[derive(Debug, Default)]
pub(crate) struct SessionReport {
    /// The handshake succeeded.
    pub(crate) welcomed: bool,
    /// The server acknowledged records.
    pub(crate) progressed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens the connection, trying each address of `server`: TLS 1.3 as the
/// client of `cfg.credentials`, or plaintext to a loopback address
/// (`--insecure-loopback-only`).
fn connect(cfg: &AgentConfig) -> Result<Link, AgentError> {
    let err = |source| AgentError::Connect {
        server: cfg.server.clone(),
        source,
    };
    let addrs = cfg.server.to_socket_addrs().map_err(err)?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for addr in addrs {
        if cfg.credentials.is_none() && !addr.ip().is_loopback() {
            return Err(AgentError::Config(format!(
                "{} is not a loopback address: plaintext (--insecure-loopback-only) is refused; \
                 give --credentials FILE from `rtbackup-server enroll`",
                cfg.server
            )));
        }
        match TcpStream::connect_timeout(&addr, cfg.connect_timeout) {
            Ok(s) => {
                configure_socket(&s, cfg).map_err(err)?;
                return match &cfg.credentials {
                    Some(c) => {
                        let config = c
                            .client_config()
                            .map_err(|e| AgentError::Config(e.to_string()))?;
                        rtbackup_tls::connect(s, config, cfg.handshake_timeout).map_err(|e| {
                            AgentError::Connect {
                                server: cfg.server.clone(),
                                source: io::Error::new(
                                    io::ErrorKind::ConnectionRefused,
                                    e.to_string(),
                                ),
                            }
                        })
                    }
                    None => Ok(Link::plain(s)),
                };
            }
            Err(e) => last = e,
        }
    }
    Err(err(last))
}

/// Sets the options that make a dead server host (or a server that stopped
/// reading) noticed well within a minute: no Nagle delay, a write timeout,
/// TCP keepalive while idle and `TCP_USER_TIMEOUT` while data is
/// unacknowledged.
pub(crate) fn configure_socket(s: &TcpStream, cfg: &AgentConfig) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(cfg.write_timeout.max(Duration::from_millis(1))))?;
    let sock = SockRef::from(s);
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES),
    )?;
    sock.set_tcp_user_timeout(Some(cfg.tcp_user_timeout.max(Duration::from_millis(1))))?;
    Ok(())
}

/// A reader of the handshake answer that gives up at a deadline or when
/// the agent is asked to stop (the socket has a short read timeout).
struct HandshakeReader<'a> {
    stream: &'a Link,
    stop: &'a AtomicBool,
    deadline: Instant,
}

impl Read for HandshakeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&mut &*self.stream).read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.stop.load(Ordering::Relaxed) {
                        return Err(io::Error::other("stopping"));
                    }
                    if Instant::now() >= self.deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no answer to HELLO in time",
                        ));
                    }
                }
                r => return r,
            }
        }
    }
}

/// Sends HELLO and waits for WELCOME.
fn handshake<S: RingSource>(
    stream: &Link,
    ring: &S,
    cfg: &AgentConfig,
    stop: &AtomicBool,
) -> Result<Option<Welcome>, AgentError> {
    let view = ring.view();
    let wire = |source| AgentError::Wire {
        server: cfg.server.clone(),
        source,
    };
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        volume: cfg.volume.clone(),
        size_bytes: view.capacity_sectors().saturating_mul(512),
        block_size: view.logical_block_size(),
        ring_id: view.ring_id(),
        client: cfg.client.clone(),
        agent_version: AGENT_VERSION.to_owned(),
    };
    write_frame(&mut &*stream, &Frame::Hello(hello)).map_err(wire)?;
    let io = |e: io::Error| wire(ProtoError::Io(e));
    stream
        .tcp()
        .set_read_timeout(Some(cfg.poll_interval.max(Duration::from_millis(1))))
        .map_err(io)?;
    let mut reader = HandshakeReader {
        stream,
        stop,
        deadline: Instant::now() + cfg.handshake_timeout,
    };
    let frame = match read_frame(&mut reader) {
        Err(_) if stop.load(Ordering::Relaxed) => return Ok(None),
        r => r.map_err(wire)?,
    };
    stream.tcp().set_read_timeout(None).map_err(io)?;
    welcome_of(frame, &cfg.server, &cfg.volume, view.ring_id()).map(Some)
}

/// The server's answer to HELLO for `volume` of ring `ring_id`, checked:
/// a WELCOME of this protocol, volume and ring (an ERROR is the server's
/// refusal; anything else a protocol error).
pub(crate) fn welcome_of(
    frame: Frame,
    server: &str,
    volume: &str,
    ring_id: u64,
) -> Result<Welcome, AgentError> {
    let welcome = match frame {
        Frame::Welcome(w) => w,
        Frame::Error(e) => {
            return Err(AgentError::Server {
                code: e.code,
                message: e.message,
            })
        }
        f => {
            return Err(AgentError::Protocol(format!(
                "{} frame in answer to HELLO",
                f.name()
            )))
        }
    };
    if welcome.protocol != PROTOCOL_VERSION {
        return Err(AgentError::Wire {
            server: server.to_owned(),
            source: ProtoError::UnsupportedVersion(welcome.protocol),
        });
    }
    if welcome.volume != volume || welcome.ring_id != ring_id {
        return Err(AgentError::Inconsistent(format!(
            "the server welcomed volume {:?} ring {} in answer to volume {volume:?} ring {ring_id}",
            welcome.volume, welcome.ring_id,
        )));
    }
    Ok(welcome)
}

/// Where to resume after the server said it holds everything up to
/// `durable_seq`: records it holds that are still in the ring leave it at
/// once; the rest is sent from the returned cursor.
pub(crate) fn resume_point<M: SharedMemory>(
    view: &RingView<M>,
    durable_seq: u64,
) -> Result<Cursor, AgentError> {
    let tail = view.tail_cursor();
    let head_seq = view.head_seq();
    if tail.seq == 0 || head_seq < tail.seq {
        return Err(AgentError::Inconsistent(format!(
            "the ring's control page says tail_seq {} and head_seq {head_seq}",
            tail.seq
        )));
    }
    let last_written = head_seq - 1;
    if durable_seq > last_written {
        return Err(AgentError::Inconsistent(format!(
            "the server holds records up to seq {durable_seq} of ring {:#x}, but this ring has written only up to seq {last_written}: \
             the server's volume does not belong to this attach (same ring_id?) — refusing to stream",
            view.ring_id()
        )));
    }
    if durable_seq + 1 < tail.seq {
        return Err(AgentError::Inconsistent(format!(
            "the server holds records of ring {:#x} only up to seq {durable_seq}, but records up to seq {} were acknowledged \
             earlier and have left the ring: the server lost records it had acknowledged (or is another server); \
             the volume needs a full resynchronisation",
            view.ring_id(),
            tail.seq - 1
        )));
    }
    Ok(view.end_of(tail, durable_seq)?)
}

/// Why a connection is being closed; the first reason wins.
#[derive(Debug)]
enum Close {
    Stopped,
    /// The device was detached and everything was delivered.
    Detached,
    Failed(AgentError),
}

/// Wakes the sender when the receiver moved the ring's consumer position
/// or the connection is closing: what it waits for while its records wait
/// for their ACK.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    /// The number of notifications so far.
    pub(crate) fn generation(&self) -> u64 {
        *lock(&self.generation)
    }

    /// Wakes the waiters.
    pub(crate) fn notify(&self) {
        *lock(&self.generation) += 1;
        self.cv.notify_all();
    }

    /// Waits up to `timeout` for a notification after `seen` (a
    /// [`Signal::generation`]); whether one came.
    pub(crate) fn wait_after(&self, seen: u64, timeout: Duration) -> bool {
        let g = lock(&self.generation);
        let (g, _) = self
            .cv
            .wait_timeout_while(g, timeout, |g| *g == seen)
            .unwrap_or_else(|e| e.into_inner());
        *g != seen
    }
}

/// The state the threads of one connection share.
struct Conn<'a> {
    stream: &'a Link,
    closed: Mutex<Option<Close>>,
    closed_cv: Condvar,
    is_closed: AtomicBool,
    /// Stop sending new batches (the agent is stopping; outstanding ACKs
    /// may still arrive).
    draining: AtomicBool,
    acks: Mutex<AckTracker>,
    /// Notified on each move of the consumer position and on closing.
    signal: Signal,
    /// Seq of the end record of the last resync sent, until the server
    /// acknowledged it and the resync set was cleared. Held across the
    /// resync ioctls, so that clearing one resync's set never races with
    /// the next resync's fetch.
    resync_end: Mutex<Option<u64>>,
}

impl Conn<'_> {
    fn close(&self, why: Close) {
        let mut c = lock(&self.closed);
        if c.is_none() {
            match &why {
                Close::Stopped => tracing::debug!("closing the connection: stopping"),
                Close::Detached => tracing::debug!("closing the connection: all delivered"),
                Close::Failed(e) => tracing::debug!("closing the connection: {e}"),
            }
            *c = Some(why);
            self.is_closed.store(true, Ordering::Release);
            // Unblocks the sender's write and the receiver's read.
            self.stream.shutdown();
            self.closed_cv.notify_all();
            self.signal.notify();
        }
    }

    fn fail(&self, e: AgentError) {
        self.close(Close::Failed(e));
    }

    fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::Acquire)
    }

    /// Whether the sender should stop sending.
    fn closing(&self) -> bool {
        self.is_closed() || self.draining.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for the connection to close.
    fn wait_closed(&self, timeout: Duration) -> bool {
        let c = lock(&self.closed);
        if c.is_some() {
            return true;
        }
        let (c, _) = self
            .closed_cv
            .wait_timeout(c, timeout)
            .unwrap_or_else(|e| e.into_inner());
        c.is_some()
    }
}

/// Reads records from the ring and sends them, until the connection closes.
fn sender<S: RingSource>(ring: &S, cfg: &AgentConfig, conn: &Conn<'_>, start: Cursor) {
    if let Err(e) = send_loop(ring, cfg, conn, start) {
        conn.fail(e);
    }
}

fn send_loop<S: RingSource>(
    ring: &S,
    cfg: &AgentConfig,
    conn: &Conn<'_>,
    start: Cursor,
) -> Result<(), AgentError> {
    let view = ring.view();
    let mut sink = ConnSink { ring, cfg, conn };
    let mut cursor = start;
    // The first resync of a connection also resends the chunks of an
    // unfinished one: what an earlier connection sent may not be durable.
    let mut first_resync = true;
    let mut owed = view.resync_owed();
    let mut initial_prepared = false;
    // When the first records of a batch held back by `max_batch_delay`
    // were seen.
    let mut holding_since: Option<Instant> = None;
    let closing = || conn.closing();
    while !conn.closing() {
        // Loaded before the records are read: once the device is detached,
        // the head that `read_batch` loads after this is final.
        let detached = view.is_detached();
        let head_before = view.head();
        let batch = view.read_batch(cursor, cfg.batch_bytes)?;
        if batch.is_empty() {
            cursor = batch.end();
            if let Some(next) = batch.gap() {
                cursor = resync::fill_hole(&mut sink, cursor, next, cfg)?;
                // The filler opens a resync section on the server (its
                // resync's end may be among the lost seqs): a resync, even
                // of nothing, closes it.
                owed = true;
                continue;
            }
            if !detached && view.is_unsynced() && !initial_prepared {
                // A new attach: mark what the backup lacks; the resync
                // below sends it and returns the device to recording.
                initial_prepared = true;
                crate::initial::prepare(ring, cfg, &closing)?;
                owed = true;
            }
            if !detached && (view.is_tracking() || owed) {
                let pending = std::mem::take(&mut first_resync);
                owed = false;
                let fin = resync::run(ring, &mut sink, cfg, cursor, pending, |op| {
                    let mut end = lock(&conn.resync_end);
                    *end = None;
                    Ok(ring.resync(op)?)
                });
                let fin = match fin {
                    Ok(f) => f,
                    Err(e) if view.is_detached() => {
                        // Detached mid-resync: deliver what was sent; the
                        // backup's newest consistent point stays before it.
                        tracing::warn!("the device was detached during a resync ({e}); the backup stays at its last consistent point");
                        finish(conn, cursor);
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                *lock(&conn.resync_end) = Some(fin.end_seq);
                // The server may have acknowledged the end record before
                // it was stored above: the receiver then found no resync
                // to clear, and no later ACK comes if the device is idle.
                let acked = lock(&conn.acks).server_acked();
                resync_acknowledged(ring, conn, acked);
                cursor = fin.cursor;
                continue;
            }
            if detached {
                finish(conn, cursor);
                return Ok(());
            }
            wait_for_records(ring, &conn.signal, closing, head_before, cfg.poll_interval)?;
            continue;
        }
        if !detached && batch.bytes() < cfg.batch_bytes && !cfg.max_batch_delay.is_zero() {
            let since = *holding_since.get_or_insert_with(Instant::now);
            let left = cfg.max_batch_delay.saturating_sub(since.elapsed());
            if !left.is_zero() {
                let wait = left.min(cfg.poll_interval);
                wait_for_records(ring, &conn.signal, closing, head_before, wait)?;
                continue;
            }
        }
        holding_since = None;
        cursor = sink.send_batch(&batch)?;
    }
    Ok(())
}

/// Sends on the connection's socket, keeping the acknowledgement
/// bookkeeping: the ring's batches and the records the agent makes.
struct ConnSink<'r, 'c, 'a, S> {
    ring: &'r S,
    cfg: &'r AgentConfig,
    conn: &'c Conn<'a>,
}

impl<S: RingSource> ConnSink<'_, '_, '_, S> {
    /// Writes one RECORDS frame of `parts` whose records end at `end`.
    fn send_parts(&mut self, parts: &[&[u8]], end: Cursor) -> Result<(), AgentError> {
        let conn = self.conn;
        lock(&conn.acks).sending(end, Instant::now());
        let mut w = conn.stream;
        if let Err(source) = write_records_frame(&mut w, parts) {
            return Err(AgentError::Wire {
                server: self.cfg.server.clone(),
                source,
            });
        }
        let bytes: usize = parts.iter().map(|p| p.len()).sum();
        self.cfg.telemetry.sent_bytes.inc_by(bytes as u64);
        let mut acks = lock(&conn.acks);
        acks.written(end.seq - 1);
        acks.apply(self.ring)?;
        Ok(())
    }

    /// Sends a batch of the ring's records; returns the cursor after it.
    fn send_batch(&mut self, batch: &rtbackup_ring::Batch<'_>) -> Result<Cursor, AgentError> {
        check_frame_fits(batch, MAX_FRAME_PAYLOAD as u64)?;
        self.send_parts(batch.parts(), batch.end())?;
        tracing::debug!(
            first_seq = batch.start().seq,
            last_seq = batch.end().seq - 1,
            records = batch.records(),
            bytes = batch.bytes(),
            "sent batch"
        );
        Ok(batch.end())
    }
}

impl<S: RingSource> Sink for ConnSink<'_, '_, '_, S> {
    fn send_made(&mut self, pos: u64, records: &[u8], last_seq: u64) -> Result<(), AgentError> {
        let end = Cursor {
            pos,
            seq: last_seq + 1,
        };
        self.send_parts(&[records], end)
    }

    fn send_ring_to(&mut self, from: Cursor, limit: u64) -> Result<Cursor, AgentError> {
        let view = self.ring.view();
        let mut cursor = from;
        loop {
            let batch = view.read_batch_to(cursor, self.cfg.batch_bytes, limit)?;
            if batch.is_empty() {
                cursor = batch.end();
                match batch.gap() {
                    Some(next) => cursor = resync::fill_hole(self, cursor, next, self.cfg)?,
                    None => return Ok(cursor),
                }
                continue;
            }
            cursor = self.send_batch(&batch)?;
        }
    }
}

/// A batch must fit in one RECORDS frame. Batches of several records are
/// at most `batch_bytes`, so only a single record larger than the limit
/// can fail this: it could never be sent.
pub(crate) fn check_frame_fits(batch: &Batch<'_>, limit: u64) -> Result<(), AgentError> {
    if batch.bytes() > limit {
        return Err(AgentError::RecordTooLarge {
            seq: batch.start().seq,
            bytes: batch.bytes(),
            limit,
        });
    }
    Ok(())
}

/// The device was detached and every record up to its final head, which
/// ends at `end`, was written: the connection ends once the server has
/// acknowledged them all.
fn finish(conn: &Conn<'_>, end: Cursor) {
    let mut acks = lock(&conn.acks);
    acks.finish();
    let done = acks.delivered_all();
    drop(acks);
    tracing::debug!(
        last_seq = end.seq - 1,
        "device detached: every record sent; waiting for the last ACKs"
    );
    if done {
        conn.close(Close::Detached);
    }
}

/// Why [`wait_for_records`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// The ring's head moved past `head_before`.
    Published,
    /// The device was detached.
    Detached,
    /// The consumer position moved (an ACK), or the signal was notified.
    Signalled,
    /// `closing` said so.
    Closing,
    /// The timeout passed.
    Timeout,
}

/// Waits up to `timeout` for the ring to publish records past
/// `head_before`, for the device to be detached, for `signal` (an ACK
/// moved the consumer position; the connection is closing) or for
/// `closing`, without spinning on a level-triggered poll:
///
/// * when nothing is unacknowledged (`tail == head`), it waits in
///   [`RingSource::wait`], which then blocks until a record is published;
/// * while records wait for their ACK, the kernel's ring stays readable,
///   so it sleeps on `signal` instead, looking at the head again every
///   [`OUTSTANDING_RECHECK`].
pub(crate) fn wait_for_records<S: RingSource>(
    ring: &S,
    signal: &Signal,
    closing: impl Fn() -> bool,
    head_before: u64,
    timeout: Duration,
) -> Result<Woken, AgentError> {
    let view = ring.view();
    let deadline = Instant::now() + timeout;
    loop {
        // Before the checks, so that a notification after them is seen.
        let seen = signal.generation();
        if closing() {
            return Ok(Woken::Closing);
        }
        if view.is_detached() {
            return Ok(Woken::Detached);
        }
        let head = view.head();
        if head != head_before {
            return Ok(Woken::Published);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(Woken::Timeout);
        }
        let left = deadline - now;
        if view.tail() == head {
            // Readable only once a record is published (or the device is
            // detached): this blocks. A wakeup is checked again above.
            if ring.wait(left)? == Wakeup::Detached {
                return Ok(Woken::Detached);
            }
        } else if signal.wait_after(seen, left.min(OUTSTANDING_RECHECK)) {
            return Ok(Woken::Signalled);
        }
    }
}

/// Reads the server's frames and moves the ring's consumer position on
/// each ACK, until the connection closes.
fn receiver<S: RingSource>(ring: &S, cfg: &AgentConfig, conn: &Conn<'_>) {
    let mut r = BufReader::with_capacity(4096, conn.stream);
    loop {
        let frame = match read_frame(&mut r) {
            Ok(f) => f,
            Err(_) if conn.is_closed() => return,
            Err(source) => {
                return conn.fail(AgentError::Wire {
                    server: cfg.server.clone(),
                    source,
                })
            }
        };
        match frame {
            Frame::Ack(seq) => {
                let mut acks = lock(&conn.acks);
                let moved = acks
                    .server_ack(seq, Instant::now())
                    .and_then(|()| acks.apply(ring));
                match moved {
                    Ok(Some(c)) => {
                        tracing::trace!(seq, tail = c.pos, "acknowledged");
                        let done = acks.delivered_all();
                        drop(acks);
                        resync_acknowledged(ring, conn, seq);
                        conn.signal.notify();
                        if done {
                            return conn.close(Close::Detached);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => return conn.fail(e),
                }
            }
            Frame::Error(e) => {
                return conn.fail(AgentError::Server {
                    code: e.code,
                    message: e.message,
                })
            }
            f => {
                return conn.fail(AgentError::Protocol(format!(
                    "unexpected {} frame while streaming",
                    f.name()
                )))
            }
        }
    }
}

/// Once the server has acknowledged a resync's end record, clears the
/// resync set in the kernel (`RTB_RESYNC_DONE`): its chunks are durable.
fn resync_acknowledged<S: RingSource>(ring: &S, conn: &Conn<'_>, acked: u64) {
    let mut end = lock(&conn.resync_end);
    let Some(end_seq) = *end else { return };
    if acked < end_seq {
        return;
    }
    match ring.resync(ResyncOp::Done) {
        Ok(_) => tracing::info!(end_seq, "resync complete: the server has every chunk"),
        // Tracking again: the next resync's end clears the set.
        Err(e) => tracing::info!(end_seq, "resync set kept: {e}"),
    }
    *end = None;
}

/// One connection: connect, handshake, resume, stream until it fails or
/// `stop` is set. Fills `report` as it goes.
pub(crate) fn run_session<S: RingSource>(
    ring: &S,
    cfg: &AgentConfig,
    stop: &AtomicBool,
    report: &mut SessionReport,
    spool: Option<&mut Spool>,
) -> Result<SessionEnd, AgentError> {
    let stream = connect(cfg)?;
    let Some(welcome) = handshake(&stream, ring, cfg, stop)? else {
        return Ok(SessionEnd::Stopped);
    };
    report.welcomed = true;
    cfg.telemetry.connected.set(1);
    cfg.telemetry.connections.inc();
    let view = ring.view();
    let mut durable_seq = welcome.durable_seq;
    if let Some(spool) = spool {
        let acked = send_spool(&stream, ring, cfg, stop, spool, durable_seq)?;
        report.progressed |= acked > durable_seq;
        durable_seq = acked;
    }
    let tail_seq = view.tail_seq();
    let start = resume_point(view, durable_seq)?;
    // Records the server already has leave the ring now; this also reports
    // the connection.
    // SAFETY: no batch of the ring is in use: the sender has not started.
    unsafe { ring.set_tail_at(start, true) }?;
    tracing::info!(
        server = %cfg.server,
        volume = %cfg.volume,
        server_version = %welcome.server_version,
        durable_seq,
        skipped = start.seq - tail_seq,
        resume_seq = start.seq,
        head_seq = view.head_seq(),
        "connected; resuming"
    );
    let conn = Conn {
        stream: &stream,
        closed: Mutex::new(None),
        closed_cv: Condvar::new(),
        is_closed: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        acks: Mutex::new(AckTracker::new(start)),
        signal: Signal::default(),
        resync_end: Mutex::new(None),
    };
    std::thread::scope(|s| {
        s.spawn(|| receiver(ring, cfg, &conn));
        s.spawn(|| sender(ring, cfg, &conn, start));
        supervise(cfg, stop, &conn);
    });
    let acks = lock(&conn.acks);
    report.progressed = acks.progressed();
    let acked = acks.acked();
    drop(acks);
    let why = lock(&conn.closed).take();
    match why {
        Some(Close::Failed(e)) => Err(e),
        Some(Close::Detached) => Ok(SessionEnd::Detached),
        Some(Close::Stopped) | None => {
            tracing::info!(acked_seq = acked.seq - 1, "stopped streaming");
            Ok(SessionEnd::Stopped)
        }
    }
}

/// Sends the spooled records after `durable_seq` (what the server holds),
/// before anything of the ring, and waits for the server's ACKs file by
/// file, telling the ring what the server holds as they come
/// (`RTB_ACK_SPOOLED`); then removes what the server holds from the
/// spool. Returns the highest seq the server holds.
fn send_spool<S: RingSource>(
    stream: &Link,
    ring: &S,
    cfg: &AgentConfig,
    stop: &AtomicBool,
    spool: &mut Spool,
    durable_seq: u64,
) -> Result<u64, AgentError> {
    spool.prune(durable_seq)?;
    let (Some(first), Some(last)) = (spool.first_seq(), spool.last_seq()) else {
        return Ok(durable_seq);
    };
    if first > durable_seq + 1 {
        // The server lacks records before the spool's: resume_point says
        // what that means.
        tracing::warn!(
            durable_seq,
            spool_first_seq = first,
            "the server lacks records before the spool's"
        );
        return Ok(durable_seq);
    }
    tracing::info!(
        first_seq = durable_seq + 1,
        last_seq = last,
        bytes = spool.bytes(),
        "sending the spooled records first"
    );
    let wire = |source| AgentError::Wire {
        server: cfg.server.clone(),
        source,
    };
    let io = |e: io::Error| wire(ProtoError::Io(e));
    stream
        .tcp()
        .set_read_timeout(Some(cfg.poll_interval.max(Duration::from_millis(1))))
        .map_err(io)?;
    let mut acked = durable_seq;
    spool.replay(
        durable_seq,
        cfg.batch_bytes,
        |bytes, _last| {
            write_records_frame(&mut &*stream, &[bytes]).map_err(wire)?;
            cfg.telemetry.sent_bytes.inc_by(bytes.len() as u64);
            Ok(())
        },
        |file_last| {
            while acked < file_last {
                let mut reader = HandshakeReader {
                    stream,
                    stop,
                    deadline: Instant::now() + cfg.ack_timeout,
                };
                match read_frame(&mut reader) {
                    Ok(Frame::Ack(seq)) => acked = acked.max(seq),
                    Ok(Frame::Error(e)) => {
                        return Err(AgentError::Server {
                            code: e.code,
                            message: e.message,
                        })
                    }
                    Ok(f) => {
                        return Err(AgentError::Protocol(format!(
                            "unexpected {} frame while sending the spool",
                            f.name()
                        )))
                    }
                    Err(_) if stop.load(Ordering::Relaxed) => return Err(AgentError::Interrupted),
                    Err(ProtoError::Io(e)) if e.kind() == io::ErrorKind::TimedOut => {
                        return Err(AgentError::AckTimeout(cfg.ack_timeout))
                    }
                    Err(e) => return Err(wire(e)),
                }
            }
            let tail = ring.view().tail_cursor();
            // SAFETY: the consumer position does not move.
            unsafe { ring.set_tail_spooled(tail, acked, true) }?;
            tracing::debug!(acked_seq = acked, "spooled records acknowledged");
            Ok(())
        },
    )?;
    stream.tcp().set_read_timeout(None).map_err(io)?;
    spool.prune(acked)?;
    cfg.telemetry.spooled(spool);
    tracing::info!(acked_seq = acked, "the server holds every spooled record");
    Ok(acked)
}

/// Watches the connection: stops it when asked (after a short drain of
/// outstanding ACKs) and gives it up when ACKs stop coming.
fn supervise(cfg: &AgentConfig, stop: &AtomicBool, conn: &Conn<'_>) {
    let tick = cfg
        .poll_interval
        .clamp(Duration::from_millis(1), Duration::from_millis(100));
    let mut drain_until: Option<Instant> = None;
    while !conn.wait_closed(tick) {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) && drain_until.is_none() {
            conn.draining.store(true, Ordering::Release);
            conn.signal.notify();
            drain_until = Some(now + cfg.drain_timeout);
        }
        let acks = lock(&conn.acks);
        if let Some(until) = drain_until {
            if acks.all_acked() || now >= until {
                drop(acks);
                conn.close(Close::Stopped);
                continue;
            }
        }
        if let Some(since) = acks.waiting_since() {
            if now.duration_since(since) > cfg.ack_timeout {
                drop(acks);
                conn.fail(AgentError::AckTimeout(cfg.ack_timeout));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtbackup_abi::RTB_OP_WRITE;
    use rtbackup_ring::mem::{MemBuf, MemRing};
    use std::net::TcpListener;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// A ring whose `wait` calls are counted.
    struct Counting {
        ring: MemRing,
        waits: AtomicUsize,
    }

    impl Counting {
        fn new(n: u64) -> Self {
            Self {
                ring: ring_with(n),
                waits: AtomicUsize::new(0),
            }
        }
        fn waits(&self) -> usize {
            self.waits.load(Ordering::SeqCst)
        }
    }

    impl RingSource for Counting {
        type Memory = Arc<MemBuf>;
        fn view(&self) -> &RingView<Arc<MemBuf>> {
            self.ring.view()
        }
        unsafe fn set_tail(&self, position: u64, connected: bool) -> rtbackup_ring::Result<()> {
            // SAFETY: forwarded from our caller.
            unsafe { self.ring.set_tail(position, connected) }
        }
        fn wait(&self, timeout: Duration) -> rtbackup_ring::Result<Wakeup> {
            self.waits.fetch_add(1, Ordering::SeqCst);
            self.ring.wait(timeout)
        }
    }

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn waiting_for_an_ack_does_not_poll_the_level_triggered_ring() {
        // Everything sent (the sender is at head), nothing acknowledged:
        // the ring is readable all the time, so polling it would spin.
        let r = Counting::new(3);
        let head = r.view().head();
        let signal = Signal::default();
        let woken = wait_for_records(&r, &signal, || false, head, Duration::from_millis(30));
        assert_eq!(woken.unwrap(), Woken::Timeout);
        assert_eq!(
            r.waits(),
            0,
            "the ring was polled while records were unacknowledged"
        );
    }

    #[test]
    fn an_ack_wakes_the_waiting_sender() {
        let r = Counting::new(3);
        let head = r.view().head();
        let signal = Signal::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(10));
                // SAFETY: no batch of the ring is in use.
                unsafe { r.ack(3, true) }.unwrap();
                signal.notify();
            });
            let woken = wait_for_records(&r, &signal, || false, head, LONG).unwrap();
            assert_eq!(woken, Woken::Signalled);
        });
        assert_eq!(r.waits(), 0);
    }

    #[test]
    fn with_nothing_unacknowledged_the_sender_blocks_in_poll() {
        let r = Counting::new(3);
        // SAFETY: no batch of the ring is in use.
        unsafe { r.ack(3, true) }.unwrap();
        let head = r.view().head();
        let signal = Signal::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(10));
                r.ring.append(RTB_OP_WRITE, 0, 0, 1, &[1]).unwrap();
            });
            let woken = wait_for_records(&r, &signal, || false, head, LONG).unwrap();
            assert_eq!(woken, Woken::Published);
        });
        // One poll, which blocked until the record came.
        assert_eq!(r.waits(), 1);
    }

    #[test]
    fn a_detach_or_closing_ends_the_wait() {
        for acked in [false, true] {
            let r = Counting::new(3);
            if acked {
                // SAFETY: no batch of the ring is in use.
                unsafe { r.ack(3, true) }.unwrap();
            }
            let head = r.view().head();
            let signal = Signal::default();
            std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(Duration::from_millis(10));
                    r.ring.detach();
                });
                let woken = wait_for_records(&r, &signal, || false, head, LONG).unwrap();
                assert_eq!(woken, Woken::Detached, "acked {acked}");
            });
        }
        let r = Counting::new(3);
        let head = r.view().head();
        let signal = Signal::default();
        let closing = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(10));
                closing.store(true, Ordering::SeqCst);
                signal.notify();
            });
            let woken =
                wait_for_records(&r, &signal, || closing.load(Ordering::SeqCst), head, LONG);
            // The notification may be seen as such or as closing.
            assert!(matches!(woken.unwrap(), Woken::Signalled | Woken::Closing));
        });
    }

    #[test]
    fn a_record_larger_than_a_frame_is_reported() {
        let r = MemRing::new(8192, 7, 1 << 20, 512).unwrap();
        r.append(RTB_OP_WRITE, 0, 0, 2000, &[1; 2000]).unwrap();
        r.append(RTB_OP_WRITE, 0, 8, 100, &[1; 100]).unwrap();
        let v = r.view();
        // At least one record per batch, even if larger than asked.
        let b = v.read_batch(v.tail_cursor(), 1000).unwrap();
        assert_eq!(b.records(), 1);
        let e = check_frame_fits(&b, 1024).unwrap_err();
        assert!(e.is_fatal());
        assert!(
            e.to_string().starts_with(
                "record seq 1 is 2112 bytes, more than a RECORDS frame can carry (1024 bytes)"
            ),
            "{e}"
        );
        check_frame_fits(&b, 2112).unwrap();
        let b = v.read_batch(b.end(), 1000).unwrap();
        check_frame_fits(&b, 1024).unwrap();
    }

    #[test]
    fn the_connection_notices_a_dead_server_host() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = AgentConfig::new(listener.local_addr().unwrap().to_string(), "v", "c");
        cfg.write_timeout = Duration::from_secs(7);
        cfg.tcp_user_timeout = Duration::from_secs(30);
        let link = connect(&cfg).unwrap();
        let s = link.tcp();
        assert!(s.nodelay().unwrap());
        assert_eq!(s.write_timeout().unwrap(), Some(Duration::from_secs(7)));
        let sock = SockRef::from(s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(10));
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(5));
        assert_eq!(sock.keepalive_retries().unwrap(), 3);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(30))
        );
    }

    fn ring_with(n: u64) -> MemRing {
        let r = MemRing::new(8192, 7, 1 << 20, 512).unwrap();
        for i in 0..n {
            r.append(RTB_OP_WRITE, 0, i, 100, &[1; 100]).unwrap();
        }
        r
    }

    #[test]
    fn resume_after_what_the_server_holds() {
        let r = ring_with(5);
        let v = r.view();
        assert_eq!(resume_point(v, 0).unwrap(), Cursor { pos: 0, seq: 1 });
        assert_eq!(
            resume_point(v, 3).unwrap(),
            Cursor {
                pos: 3 * 192,
                seq: 4
            }
        );
        assert_eq!(
            resume_point(v, 5).unwrap(),
            Cursor {
                pos: 5 * 192,
                seq: 6
            }
        );
        let e = resume_point(v, 6).unwrap_err();
        assert!(e.is_fatal());
        assert!(e.to_string().contains("holds records up to seq 6"), "{e}");
        assert!(e.to_string().contains("only up to seq 5"), "{e}");
    }

    #[test]
    fn a_server_behind_the_acknowledged_records_is_fatal() {
        let r = ring_with(5);
        // SAFETY: no batch is in use.
        unsafe { r.ack(3, true) }.unwrap();
        let v = r.view();
        assert_eq!(
            resume_point(v, 3).unwrap(),
            Cursor {
                pos: 3 * 192,
                seq: 4
            }
        );
        assert_eq!(
            resume_point(v, 4).unwrap(),
            Cursor {
                pos: 4 * 192,
                seq: 5
            }
        );
        let e = resume_point(v, 2).unwrap_err();
        assert!(e.is_fatal());
        assert!(e.to_string().contains("only up to seq 2"), "{e}");
        assert!(
            e.to_string().contains("up to seq 3 were acknowledged"),
            "{e}"
        );
    }
}
