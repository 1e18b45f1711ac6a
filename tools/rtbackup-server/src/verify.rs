//! Serving a verify: the checksum of every chunk of a volume at the end of
//! its durable journal, so that a client (the agent at re-attach,
//! `rtbackupctl verify`) can compare them with its device and send only
//! the chunks that differ (Documentation/protocol.rst, "Verify").
//!
//! The end, not the latest consistency point: the records a new attach
//! sends are applied on top of the end, which holds the old attach's
//! records after its last flush (its ring's end becomes a consistency point
//! once the new ring starts) and any resync section still open. A chunk
//! whose device bytes differ from the end must be sent again, or the backup
//! would keep bytes the device lost (a write that never reached the media
//! before a power cut).
//!
//! Read-only, like a rollback: it reads through the store's point reader,
//! a bounded piece at a time, so it runs while an agent streams the volume
//! on another connection and its memory does not grow with the volume.

use rtbackup_tls::Link;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rtbackup_proto::{
    check_chunk_size, chunk_count, error_code, ChunkChecksum, Frame, RollbackDone, VerifyPoint,
    VerifyRequest, MAX_CHECKSUMS_PER_FRAME,
};
use rtbackup_store::{Position, Store};
use tracing::info;

use crate::server::{open_point_for_client, send_frame, session_error, ReadAt, SessionError};

/// Longest a filled part of a CHECKSUMS frame waits for more: a client sees
/// progress about this often even when a frame takes long to fill (large
/// chunks, a slow store), and can keep a read timeout.
const FRAME_INTERVAL: Duration = Duration::from_secs(1);

/// Answers a VERIFY: VERIFY_POINT, the CHECKSUMS frames, DONE. `durable`
/// is the position after the last durable record of the volume if it is
/// open for ingest, taken before this call.
pub(crate) fn serve_verify(
    store: &Store,
    durable: Option<Position>,
    req: &VerifyRequest,
    writer: &Mutex<&Link>,
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
        Ok(ReadAt::End(durable)),
        error_code::NO_SUCH_VOLUME,
    )?;
    let Some(end) = reader.journal_end() else {
        return Err(session_error(
            error_code::INTERNAL,
            "the store opened a point, not the journal's end",
        ));
    };
    let p = reader.point();
    let chunks = chunk_count(reader.size(), req.chunk_size);
    info!(
        %peer, volume = req.volume, client = req.client, time = %end.time, seq = end.seq,
        consistent = end.consistent, latest_point_seq = p.seq,
        chunk_size = req.chunk_size, chunks, "verify"
    );
    let started = Instant::now();
    send_frame(
        writer,
        &Frame::VerifyPoint(VerifyPoint {
            seq: end.seq,
            ring_id: end.ring_id,
            time: end.time.clone(),
            chunk_size: req.chunk_size,
            chunks,
            consistent: end.consistent,
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
        %peer, volume = req.volume, seq = end.seq, chunks, frames = out.frames,
        seconds = format_args!("{secs:.3}"),
        mib_per_s = format_args!("{:.1}", reader.size() as f64 / (1 << 20) as f64 / secs.max(1e-6)),
        "verify done"
    );
    Ok(())
}

/// Gathers checksums into CHECKSUMS frames: sent when full, or when the
/// oldest unsent one has waited [`FRAME_INTERVAL`].
struct Batcher<'a, 'l> {
    writer: &'a Mutex<&'l Link>,
    /// Checksums not sent yet, of the chunks before `next`.
    sums: Vec<ChunkChecksum>,
    /// The next chunk expected.
    next: u64,
    /// Frames sent.
    frames: u64,
    last_sent: Instant,
}

impl Batcher<'_, '_> {
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
