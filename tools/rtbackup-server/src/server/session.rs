//! One connection of an agent or a client's read-only request: the TLS
//! handshake and its slot, HELLO (ROLLBACK, VERIFY) and its checks (the
//! volume's owner, busy, ring and quota), WELCOME, then the stream, read
//! here and committed by `commit.rs`; and the errors it tells the peer.

use super::commit::{receive, Committer, StopOnDrop};
use super::quota::{byte_budget, quota_for_new_volume};
use super::*;

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
pub(super) enum End {
    /// The peer closed the connection.
    Closed,
    /// The server is shutting down.
    Shutdown,
}

/// An error of a session: what to tell the peer and log.
pub(crate) struct SessionError {
    pub(super) code: &'static str,
    pub(super) message: String,
    /// Tell the peer (false when the connection is already broken).
    pub(super) send: bool,
    /// The store failed: drop the open volume, so that the next connection
    /// reopens (and recovers) it. Never for socket errors or bad input.
    pub(super) evict: bool,
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

pub(super) fn connection(shared: &Shared, conn: TcpStream, peer: SocketAddr, id: u64) {
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
        let r = receive(
            &mut reader,
            &vol,
            hello.ring_id,
            &commit,
            &shared.stats,
            budget.as_deref(),
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
