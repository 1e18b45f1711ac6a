//! Resync after the ring overflowed into the dirty bitmap, or of chunks an
//! earlier agent left unfinished (Documentation/design.rst, "Overflow and
//! resync").
//!
//! Runs on the sender thread, between batches of ring records, so that the
//! records it makes go on the wire in seq order with the ring's: every
//! fetch reserves seqs at a ring position, the records before that position
//! are sent first, then one `RESYNC` record per fetched chunk (read from
//! the device), and, after the last fetch (which returns the device to
//! recording), a `RESYNC_END` naming the newest seq a chunk may contain.
//! Seqs that an interrupted resync reserved and never delivered are filled
//! with empty `RESYNC` records ([`fill_hole`]).

use crate::config::AgentConfig;
use crate::error::AgentError;
use crate::Telemetry;
use rtbackup_abi::{RTB_OP_RESYNC, RTB_OP_RESYNC_END};
use rtbackup_cli::progress::{Lines, Progress};
use rtbackup_proto::append_record;
use rtbackup_ring::{Cursor, RingSource};
use rtbackup_ring::{Resync, ResyncOp};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Passes that fetch without returning to recording, at most: writes
/// during a pass dirty chunks for the next; after this many the last pass
/// streams whatever is left.
const MAX_PASSES: u32 = 8;
/// A pass with at most this many bytes of chunks left is the last one.
const LAST_PASS_BYTES: u64 = 4 << 20;
/// Most bytes read from the device at once (a run of adjacent chunks).
const READ_RUN_BYTES: u64 = 1 << 20;
/// How often a long resync pass logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Where the sender puts records: the ring's batches and the records this
/// module makes go through the same acknowledgement bookkeeping.
pub(crate) trait Sink {
    /// Sends `records` (whole records, consecutive seqs up to `last_seq`)
    /// made by the agent, which sit at ring position `pos`.
    fn send_made(&mut self, pos: u64, records: &[u8], last_seq: u64) -> Result<(), AgentError>;

    /// Sends the ring's records from `from` up to ring position `limit`;
    /// returns the cursor after them (or at a gap of reserved seqs).
    fn send_ring_to(&mut self, from: Cursor, limit: u64) -> Result<Cursor, AgentError>;
}

/// Sends empty `RESYNC` records for the seqs `[at.seq, next_seq)`, reserved
/// at `at.pos` by a resync that did not deliver them (a connection or an
/// agent that ended mid-resync; its chunks are resynced again). Returns the
/// cursor after them.
pub(crate) fn fill_hole(
    sink: &mut impl Sink,
    at: Cursor,
    next_seq: u64,
    cfg: &AgentConfig,
) -> Result<Cursor, AgentError> {
    tracing::info!(
        first_seq = at.seq,
        last_seq = next_seq - 1,
        "filling seqs reserved by an interrupted resync"
    );
    let mut buf = Vec::new();
    let mut seq = at.seq;
    while seq < next_seq {
        append_record(&mut buf, RTB_OP_RESYNC, 0, seq, 0, 0, now_ns(), &[]);
        if buf.len() as u64 >= cfg.batch_bytes || seq + 1 == next_seq {
            sink.send_made(at.pos, &buf, seq)?;
            buf.clear();
        }
        seq += 1;
    }
    Ok(Cursor {
        pos: at.pos,
        seq: next_seq,
    })
}

/// What a finished resync leaves for the caller.
#[derive(Debug)]
pub(crate) struct Finished {
    /// Where the sender goes on reading the ring.
    pub(crate) cursor: Cursor,
    /// Seq of the `RESYNC_END` record: once the server acknowledged it,
    /// the resync set may be cleared (`RTB_RESYNC_DONE`).
    pub(crate) end_seq: u64,
}

/// Runs a resync: fetch passes until few chunks are left, then the last
/// fetch, which returns the device to recording, and the end record.
/// `pending`: the first fetch also returns the chunks of an unfinished
/// resync. `cursor` is where the sender is in the ring. `fetch` runs the
/// fetch ioctl (the caller serializes it with `RTB_RESYNC_DONE` for an
/// earlier resync, which must not clear this one's chunks).
pub(crate) fn run<S: RingSource>(
    ring: &S,
    sink: &mut impl Sink,
    cfg: &AgentConfig,
    mut cursor: Cursor,
    mut pending: bool,
    mut fetch: impl FnMut(ResyncOp) -> Result<Resync, AgentError>,
) -> Result<Finished, AgentError> {
    let view = ring.view();
    let device_bytes = view.capacity_sectors() * 512;
    let mut pass = 0u32;
    let mut left_bytes = u64::MAX;
    loop {
        let stream = pass + 1 >= MAX_PASSES || (pass > 0 && left_bytes <= LAST_PASS_BYTES);
        let r = fetch(ResyncOp::Fetch { pending, stream })?;
        pending = false;
        pass += 1;
        let bytes = r.dirty.len() as u64 * r.chunk_size;
        tracing::info!(
            pass,
            chunks = r.dirty.len(),
            bytes,
            first_seq = r.first_seq,
            last = stream,
            "resync pass"
        );
        // The ring's records before the reserved seqs go first.
        if cursor.pos > r.head {
            return Err(AgentError::Inconsistent(format!(
                "the resync's seqs were reserved at ring position {} but records up to {} were already sent",
                r.head, cursor.pos
            )));
        }
        cursor = sink.send_ring_to(cursor, r.head)?;
        if cursor.pos != r.head {
            return Err(AgentError::Inconsistent(format!(
                "the ring's records end at {} before the resync's position {}",
                cursor.pos, r.head
            )));
        }
        if r.first_seq > cursor.seq {
            cursor = fill_hole(sink, cursor, r.first_seq, cfg)?;
        }
        if r.first_seq != cursor.seq {
            return Err(AgentError::Inconsistent(format!(
                "the resync reserved seqs from {} but the stream is at seq {}",
                r.first_seq, cursor.seq
            )));
        }
        // The first pass (what accumulated while nobody sent, or the whole
        // device at an initial sync) yields to the applications' writes:
        // while the device tracks, they only set bits. Later passes hold
        // what was written meanwhile and go at full speed so that the
        // resync converges; the last pass also because the ring fills
        // with the writes until it ends.
        let yielding = pass == 1 && !stream;
        let pace = Pace::new("resync", cfg.resync_max_rate, bytes)
            .yielding(cfg.resync_busy_rate.filter(|_| yielding))
            .reporting(&cfg.telemetry);
        send_chunks(
            ring,
            sink,
            cfg,
            cursor,
            &r.dirty,
            (r.chunk_size, device_bytes),
            pace,
        )?;
        cursor.seq += r.dirty.len() as u64;
        if stream {
            // Read after the last chunk: no chunk holds a recorded write
            // newer than the ring's last seq now. If the ring tracks again
            // (it overflowed, or chunks were marked dirty, during this
            // pass), chunks may hold writes that have no seq at all: the
            // section must stay open until the next resync's end.
            let consistent_seq = if view.is_tracking() {
                u64::MAX
            } else {
                view.head_seq().saturating_sub(1)
            };
            let mut buf = Vec::new();
            append_record(
                &mut buf,
                RTB_OP_RESYNC_END,
                0,
                cursor.seq,
                0,
                0,
                now_ns(),
                &consistent_seq.to_le_bytes(),
            );
            sink.send_made(cursor.pos, &buf, cursor.seq)?;
            let end_seq = cursor.seq;
            tracing::info!(passes = pass, end_seq, consistent_seq, "resync sent");
            cursor.seq += 1;
            return Ok(Finished { cursor, end_seq });
        }
        left_bytes = bytes;
    }
}

/// How long after the last write the applications count as writing (see
/// [`Pace`]).
const BUSY_FOR: Duration = Duration::from_secs(1);

/// Paces a resync pass (or an initial verify) and shows its progress: a
/// bar on a terminal, else a log line every [`PROGRESS_EVERY`] and one at
/// the end.
///
/// The pace is `max_rate` (none: as fast as it goes), and, while the
/// applications write to the device (its written-sector count grew within
/// [`BUSY_FOR`]), at most `busy_rate` (DRBD's `c-min-rate`): a resync
/// reading as fast as it can would take the disk and the CPU from the
/// writers, whose writes during it only set bitmap bits and cost nothing
/// else. When the writes stop it speeds up again.
pub(crate) struct Pace {
    max_rate: Option<u64>,
    busy_rate: Option<u64>,
    total: u64,
    done: u64,
    /// When the next read may start.
    next: Instant,
    /// The device's written-sector count when last seen, and since when
    /// the applications count as writing.
    written: Option<u64>,
    busy_since: Option<Instant>,
    last_write: Option<Instant>,
    /// Times the pace slowed down for writes.
    slowed: u32,
    progress: Option<Progress>,
    telemetry: Option<Telemetry>,
}

impl Pace {
    pub(crate) fn new(what: &'static str, max_rate: Option<u64>, total: u64) -> Self {
        Self {
            max_rate: max_rate.filter(|&r| r > 0),
            busy_rate: None,
            total,
            done: 0,
            next: Instant::now(),
            written: None,
            busy_since: None,
            last_write: None,
            slowed: 0,
            progress: Some(Progress::new(what, total, Lines::Log).every(PROGRESS_EVERY)),
            telemetry: None,
        }
    }

    /// Slows down to `rate` while the device is written (0 or `None`:
    /// never).
    pub(crate) fn yielding(mut self, rate: Option<u64>) -> Self {
        self.busy_rate = rate.filter(|&r| r > 0);
        self
    }

    /// Shows the progress in the agent's metrics too.
    pub(crate) fn reporting(mut self, telemetry: &Telemetry) -> Self {
        telemetry.resync_bytes.set(self.total as i64);
        telemetry.resync_done_bytes.set(0);
        self.telemetry = Some(telemetry.clone());
        self
    }

    /// Before `bytes` more are read, given the device's written-sector
    /// count now (`None`: unknown): sleeps as long as the pace says.
    pub(crate) fn before(&mut self, bytes: u64, written: Option<u64>) {
        let wait = self.plan(bytes, written, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if let Some(p) = &mut self.progress {
            p.set(self.done);
        }
        if let Some(t) = &self.telemetry {
            t.resync_done_bytes.set(self.done as i64);
        }
        self.done += bytes;
    }

    /// How long to wait at `now` before reading `bytes` more; books them.
    fn plan(&mut self, bytes: u64, written: Option<u64>, now: Instant) -> Duration {
        if let (Some(was), Some(is)) = (self.written, written) {
            if is != was {
                self.last_write = Some(now);
            }
        }
        self.written = written;
        let busy = self
            .last_write
            .is_some_and(|t| now.saturating_duration_since(t) < BUSY_FOR);
        let rate = match (busy, self.busy_rate) {
            (true, Some(b)) => Some(self.max_rate.map_or(b, |m| m.min(b))),
            _ => self.max_rate,
        };
        // Logged at info once per pass; a writer that comes and goes
        // (a journal commit every few seconds) switches often.
        if busy && self.busy_rate.is_some() && self.busy_since.is_none() {
            if self.slowed == 0 {
                tracing::info!(
                    rate = self.busy_rate,
                    "the device is being written: the resync slows down"
                );
            } else {
                tracing::debug!(rate = self.busy_rate, "the resync slows down again");
            }
            self.slowed += 1;
            self.busy_since = Some(now);
        } else if !busy {
            if let Some(since) = self.busy_since.take() {
                tracing::debug!(
                    after_ms = now.saturating_duration_since(since).as_millis() as u64,
                    "the device is idle: the resync speeds up"
                );
            }
        }
        let Some(rate) = rate else {
            self.next = now;
            return Duration::ZERO;
        };
        let start = self.next.max(now);
        self.next = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
        start - now
    }
}

impl Drop for Pace {
    /// The last progress line (or the bar's last state), also after an
    /// interruption.
    fn drop(&mut self) {
        if let Some(mut p) = self.progress.take() {
            p.set(self.done);
            p.finish();
        }
        if let Some(t) = &self.telemetry {
            t.resync_bytes.set(0);
            t.resync_done_bytes.set(0);
        }
    }
}

/// Reads the `chunks` (sorted chunk numbers) from the device, runs of
/// adjacent ones at a time, at the pace of `pace`, and sends each as a
/// `RESYNC` record with the seqs from `at.seq` on. `geometry`: the chunk
/// size and the device's size in bytes.
fn send_chunks<S: RingSource>(
    ring: &S,
    sink: &mut impl Sink,
    cfg: &AgentConfig,
    at: Cursor,
    chunks: &[u64],
    (chunk_size, device_bytes): (u64, u64),
    mut pace: Pace,
) -> Result<(), AgentError> {
    let mut buf = Vec::new();
    let mut data = Vec::new();
    let mut seq = at.seq;
    let mut i = 0;
    while i < chunks.len() {
        // A run of adjacent chunks, READ_RUN_BYTES at most.
        let first = chunks[i];
        let mut n = 1;
        while i + n < chunks.len()
            && chunks[i + n] == first + n as u64
            && (n as u64 + 1) * chunk_size <= READ_RUN_BYTES
        {
            n += 1;
        }
        let start = first * chunk_size;
        let end = ((first + n as u64) * chunk_size).min(device_bytes);
        if start >= end {
            return Err(AgentError::Inconsistent(format!(
                "resync chunk {first} is past the end of the device ({device_bytes} bytes)"
            )));
        }
        data.resize((end - start) as usize, 0);
        pace.before(data.len() as u64, ring.written_sectors());
        ring.read_device(start, &mut data)?;
        for (k, piece) in data.chunks(chunk_size as usize).enumerate() {
            let offset = start + k as u64 * chunk_size;
            append_record(
                &mut buf,
                RTB_OP_RESYNC,
                0,
                seq,
                offset / 512,
                piece.len() as u64,
                now_ns(),
                piece,
            );
            seq += 1;
            if buf.len() as u64 >= cfg.batch_bytes {
                sink.send_made(at.pos, &buf, seq - 1)?;
                buf.clear();
            }
        }
        i += n;
    }
    if !buf.is_empty() {
        sink.send_made(at.pos, &buf, seq - 1)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Pace, BUSY_FOR};
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    /// The waits a pace plans for reads of `bytes` at the given offsets
    /// from a start (in ms), with the device's written-sector counts.
    fn waits(mut p: Pace, steps: &[(u64, Option<u64>)], bytes: u64) -> Vec<u128> {
        let t0 = Instant::now();
        p.next = t0;
        steps
            .iter()
            .map(|&(ms, w)| p.plan(bytes, w, t0 + Duration::from_millis(ms)).as_millis())
            .collect()
    }

    #[test]
    fn max_rate_spaces_the_reads() {
        // 1 MiB at 4 MiB/s: one read per 250 ms, whenever asked.
        let p = Pace::new("test", Some(4 * MIB), 8 * MIB);
        let steps = [
            (0, None),
            (0, None),
            (100, None),
            (1000, None),
            (1000, None),
        ];
        assert_eq!(waits(p, &steps, MIB), [0, 250, 400, 0, 250]);
        // No limit: never waits.
        let p = Pace::new("test", None, 8 * MIB);
        assert_eq!(waits(p, &steps, MIB), [0; 5]);
        // A rate of 0 is no limit.
        let p = Pace::new("test", Some(0), 8 * MIB).yielding(Some(0));
        assert_eq!(
            waits(p, &[(0, Some(1)), (0, Some(9)), (0, Some(20))], MIB),
            [0; 3]
        );
    }

    #[test]
    fn writes_slow_it_down_until_they_stop() {
        let busy_ms = BUSY_FOR.as_millis() as u64;
        let p = Pace::new("test", None, 64 * MIB).yielding(Some(2 * MIB));
        let steps = [
            (0, Some(100)),   // first look: no write seen yet
            (0, Some(100)),   // idle
            (0, Some(108)),   // written: 2 MiB/s, the next read in 500 ms
            (0, Some(108)),   // (still busy)
            (500, Some(108)), // (still busy)
            // No write for BUSY_FOR: full speed again.
            (busy_ms + 1, Some(108)),
            (busy_ms + 1, Some(108)),
        ];
        assert_eq!(waits(p, &steps, MIB), [0, 0, 0, 500, 500, 0, 0]);
        // The lower of the two rates holds while busy.
        let p = Pace::new("test", Some(MIB), 64 * MIB).yielding(Some(2 * MIB));
        assert_eq!(
            waits(p, &[(0, Some(1)), (0, Some(2)), (0, Some(3))], MIB),
            [0, 1000, 2000]
        );
        // An unknown count never counts as writing.
        let p = Pace::new("test", None, 64 * MIB).yielding(Some(MIB));
        assert_eq!(waits(p, &[(0, None), (0, None), (0, None)], MIB), [0, 0, 0]);
    }
}
