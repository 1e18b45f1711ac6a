//! The initial sync of a new attach (Documentation/design.rst, "Initial
//! sync"): the module attaches a device tracking, with no dirty chunk and
//! `RTB_RING_F_UNSYNCED`, so that every write from the attach on is
//! tracked. Before the first resync, the agent marks the chunks the backup
//! lacks: every chunk (`full`), the chunks whose checksums differ from the
//! backup's latest state (`verify`), or none (`none`). The resync that
//! follows sends them and returns the device to recording.

use crate::config::{AgentConfig, InitialSync};
use crate::error::AgentError;
use crate::resync::Pace;
use rtbackup_ring::{ResyncOp, RingSource};
use rtbackup_verify::{chunk_checksum, fetch_checksums, VerifyRequest};

/// Most bytes read from the device at once while verifying.
const READ_RUN_BYTES: u64 = 1 << 20;

/// Marks what the initial sync must send, as `cfg.initial_sync` says.
/// `closing` says when to give up (the agent is stopping).
pub(crate) fn prepare<S: RingSource>(
    ring: &S,
    cfg: &AgentConfig,
    closing: &dyn Fn() -> bool,
) -> Result<(), AgentError> {
    match cfg.initial_sync {
        InitialSync::Full => {
            tracing::info!("initial sync: every chunk of the device");
            ring.resync(ResyncOp::TrackAll)?;
        }
        InitialSync::None => {
            tracing::warn!(
                "initial sync: none (--initial-sync none): the backup is trusted to equal the device"
            );
        }
        InitialSync::Verify => {
            let differ = differing_chunks(ring, cfg, closing)?;
            tracing::info!(
                chunks = differ.len(),
                "initial sync: chunks that differ from the backup"
            );
            ring.mark_dirty(&differ)?;
        }
    }
    Ok(())
}

/// The chunks whose checksums differ between the device and the server's
/// latest state of the volume (HELLO created it, zeroes, if it is new).
fn differing_chunks<S: RingSource>(
    ring: &S,
    cfg: &AgentConfig,
    closing: &dyn Fn() -> bool,
) -> Result<Vec<u64>, AgentError> {
    let chunk = ring.chunk_size()?;
    let size = ring.view().capacity_sectors() * 512;
    let req = VerifyRequest::new(&cfg.volume, &cfg.client, chunk, size);
    let mut local = LocalChunks::new(
        ring,
        chunk,
        size,
        Pace::new("initial verify", cfg.resync_max_rate, size)
            .yielding(cfg.resync_busy_rate)
            .reporting(&cfg.telemetry),
    );
    let mut differ = Vec::new();
    let point = fetch_checksums(
        &cfg.server,
        cfg.credentials.as_ref(),
        &req,
        |first, sums| {
            if closing() {
                return Err(AgentError::Interrupted);
            }
            for (i, sum) in sums.iter().enumerate() {
                let c = first + i as u64;
                if local.checksum(c)? != *sum {
                    differ.push(c);
                }
            }
            Ok::<_, AgentError>(())
        },
    )?;
    tracing::info!(
        seq = point.seq,
        time = %point.time,
        consistent = point.consistent,
        chunks = size.div_ceil(chunk),
        "compared with the backup's durable end"
    );
    Ok(differ)
}

/// Reads the device's chunks in order, a run at a time, and hashes them.
struct LocalChunks<'a, S> {
    ring: &'a S,
    pace: Pace,
    chunk: u64,
    size: u64,
    /// First chunk in `buf`.
    first: u64,
    buf: Vec<u8>,
}

impl<'a, S: RingSource> LocalChunks<'a, S> {
    fn new(ring: &'a S, chunk: u64, size: u64, pace: Pace) -> Self {
        Self {
            ring,
            pace,
            chunk,
            size,
            first: 0,
            buf: Vec::new(),
        }
    }

    /// The checksum of chunk `c` as the device holds it now.
    fn checksum(&mut self, c: u64) -> Result<[u8; 16], AgentError> {
        let start = c * self.chunk;
        if start >= self.size {
            return Err(AgentError::Inconsistent(format!(
                "the server sent a checksum for chunk {c}, past the end of the device"
            )));
        }
        let held = self.buf.len() as u64;
        let buf_start = self.first * self.chunk;
        if start < buf_start || start >= buf_start + held {
            let len = (READ_RUN_BYTES.max(self.chunk)).min(self.size - start);
            self.buf.resize(len as usize, 0);
            self.pace.before(len, self.ring.written_sectors());
            self.ring.read_device(start, &mut self.buf)?;
            self.first = c;
        }
        let off = ((c - self.first) * self.chunk) as usize;
        let end = (off + self.chunk as usize).min(self.buf.len());
        Ok(chunk_checksum(&self.buf[off..end]))
    }
}
