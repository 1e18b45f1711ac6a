//! The stream of a connection: RECORDS frames appended to the volume as
//! they arrive (`receive`), and a committer thread that makes them durable
//! in groups and acknowledges them (`Committer`).

use super::quota::Budget;
use super::session::End;
use super::*;

/// Stops the committer when dropped.
pub(super) struct StopOnDrop<'a>(pub(super) &'a Committer);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Reads RECORDS frames and appends them until the peer closes.
pub(super) fn receive(
    reader: &mut BufReader<&Link>,
    vol: &Volume,
    ring_id: u64,
    commit: &Committer,
    stats: &Stats,
    budget: Option<&Budget>,
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
                if let Some(b) = budget {
                    // Refused, it is not appended, so not acknowledged:
                    // the agent's ring keeps it.
                    b.take(payload.len() as u64)?;
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
pub(super) struct Committer {
    state: Mutex<CommitState>,
    cv: Condvar,
}

impl Committer {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(CommitState::default()),
            cv: Condvar::new(),
        }
    }

    fn notify(&self) {
        lock(&self.state).pending += 1;
        self.cv.notify_one();
    }

    pub(super) fn stop(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_one();
    }

    fn failed(&self) -> bool {
        lock(&self.state).failed
    }

    pub(super) fn run(
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
