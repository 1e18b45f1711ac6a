//! Serving a verify: the checksum of every chunk of a volume at its latest
//! consistency point, so that a client (the agent at re-attach,
//! `rtbackupctl verify`) can compare them with its device and send only
//! the chunks that differ (Documentation/protocol.rst, "Verify").
//!
//! Read-only, like a rollback: it reads through the store's point reader,
//! a bounded piece at a time, so it runs while an agent streams the volume
//! on another connection and its memory does not grow with the volume.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rtbackup_proto::{
    check_chunk_size, chunk_count, error_code, ChunkChecksum, Frame, RollbackDone, VerifyPoint,
    VerifyRequest, MAX_CHECKSUMS_PER_FRAME,
};
use rtbackup_store::{PointSpec, Store};
use tracing::info;

use crate::server::{open_point_for_client, send_frame, session_error, SessionError};

/// Longest a filled part of a CHECKSUMS frame waits for more: a client sees
/// progress about this often even when a frame takes long to fill (large
/// chunks, a slow store), and can keep a read timeout.
const FRAME_INTERVAL: Duration = Duration::from_secs(1);

/// Answers a VERIFY: VERIFY_POINT, the CHECKSUMS frames, DONE.
pub(crate) fn serve_verify(
    store: &Store,
    req: &VerifyRequest,
    writer: &Mutex<TcpStream>,
    peer: SocketAddr,
    stopping: &AtomicBool,
) -> Result<(), SessionError> {
    check_chunk_size(req.chunk_size)?;
    let reader = open_point_for_client(
        store,
        "VERIFY",
        req.protocol,
        &req.volume,
        req.size_bytes,
        Ok(PointSpec::Latest),
        error_code::NO_SUCH_VOLUME,
    )?;
    let p = reader.point();
    let chunks = chunk_count(reader.size(), req.chunk_size);
    info!(
        %peer, volume = req.volume, client = req.client, point = %p.time, seq = p.seq,
        chunk_size = req.chunk_size, chunks, "verify"
    );
    let started = Instant::now();
    send_frame(
        writer,
        &Frame::VerifyPoint(VerifyPoint {
            seq: p.seq,
            ring_id: p.ring_id,
            time: p.time.clone(),
            chunk_size: req.chunk_size,
            chunks,
        }),
    )?;
    let mut out = Batcher {
        writer,
        sums: Vec::with_capacity(chunks.min(MAX_CHECKSUMS_PER_FRAME as u64) as usize),
        next: 0,
        frames: 0,
        last_sent: Instant::now(),
    };
    reader.chunk_checksums(req.chunk_size, |first, sums| {
        if stopping.load(Ordering::SeqCst) {
            return Err(session_error(
                error_code::SHUTDOWN,
                "the server is shutting down; retry the verify later",
            ));
        }
        out.push(first, sums)
    })?;
    out.send()?;
    send_frame(
        writer,
        &Frame::Done(RollbackDone {
            frames: out.frames,
            bytes: reader.size(),
        }),
    )?;
    let secs = started.elapsed().as_secs_f64();
    info!(
        %peer, volume = req.volume, seq = p.seq, chunks, frames = out.frames,
        seconds = format_args!("{secs:.3}"),
        mib_per_s = format_args!("{:.1}", reader.size() as f64 / (1 << 20) as f64 / secs.max(1e-6)),
        "verify done"
    );
    Ok(())
}

/// Gathers checksums into CHECKSUMS frames: sent when full, or when the
/// oldest unsent one has waited [`FRAME_INTERVAL`].
struct Batcher<'a> {
    writer: &'a Mutex<TcpStream>,
    /// Checksums not sent yet, of the chunks before `next`.
    sums: Vec<ChunkChecksum>,
    /// The next chunk expected.
    next: u64,
    /// Frames sent.
    frames: u64,
    last_sent: Instant,
}

impl Batcher<'_> {
    /// Adds the checksums of chunks `first..` (which follow the previous).
    fn push(&mut self, first: u64, sums: &[ChunkChecksum]) -> Result<(), SessionError> {
        if first != self.next {
            return Err(session_error(
                error_code::INTERNAL,
                format!(
                    "checksums of chunk {first} came when {} was next",
                    self.next
                ),
            ));
        }
        for s in sums {
            self.sums.push(*s);
            self.next += 1;
            if self.sums.len() == MAX_CHECKSUMS_PER_FRAME {
                self.send()?;
            }
        }
        if self.last_sent.elapsed() >= FRAME_INTERVAL {
            self.send()?;
        }
        Ok(())
    }

    /// Sends what is gathered (nothing if nothing is).
    fn send(&mut self) -> Result<(), SessionError> {
        if self.sums.is_empty() {
            return Ok(());
        }
        let first_chunk = self.next - self.sums.len() as u64;
        let f = Frame::Checksums {
            first_chunk,
            sums: std::mem::take(&mut self.sums),
        };
        send_frame(self.writer, &f)?;
        if let Frame::Checksums { sums, .. } = f {
            // Reuse the allocation.
            self.sums = sums;
            self.sums.clear();
        }
        self.frames += 1;
        self.last_sent = Instant::now();
        Ok(())
    }
}
