//! The rtbackup agent: streams the records of a device's write-journal
//! ring to a backup server (Documentation/protocol.rst).
//!
//! [`run`] is the whole agent minus the command line: it connects, says
//! HELLO, acknowledges to the ring what the server already holds, then
//! streams RECORDS frames built straight from the ring's memory while a
//! receiver thread moves the ring's consumer position on each ACK. On a
//! disconnect it tells the ring, backs off and reconnects; it returns on
//! a fatal error, when asked to stop, or once the device was detached and
//! every record left in its ring was delivered. It works on any
//! [`rtbackup_ring::RingSource`]: the kernel's
//! [`rtbackup_ring::Ring`], or an in-memory ring in tests.

mod acks;
pub mod cli;
mod config;
mod error;
pub mod fuzz;
mod initial;
mod metrics;
mod resync;
mod session;
mod spool;

pub use config::{AgentConfig, InitialSync};
pub use error::{is_fatal_code, AgentError};
pub use metrics::Telemetry;
pub use session::AGENT_VERSION;
pub use spool::SpoolError;

use config::Backoff;
use rtbackup_ring::RingSource;
use session::{run_session, SessionEnd, SessionReport};
use spool::Spool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A session that lasted this long resets the reconnection backoff even if
/// it acknowledged nothing (it was idle).
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Why [`run`] returned without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `stop` was set.
    Stopped,
    /// The device was detached, and every record of its ring was
    /// acknowledged by the server and then in the ring.
    Detached {
        /// Records the ring held in all (`head_seq - 1`).
        records: u64,
    },
}

/// Streams `ring` to the server of `cfg` until `stop` is set, the device
/// is detached and everything was delivered, or a fatal error happens.
/// Retryable errors are logged and followed by a reconnection with
/// exponential backoff; so is a failure while the records left at a detach
/// are being delivered.
pub fn run<S: RingSource>(
    ring: &S,
    cfg: &AgentConfig,
    stop: &AtomicBool,
) -> Result<Exit, AgentError> {
    rtbackup_proto::validate_volume_name(&cfg.volume)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    if cfg.batch_bytes == 0 || cfg.batch_bytes > rtbackup_proto::MAX_FRAME_PAYLOAD as u64 {
        return Err(AgentError::Config(format!(
            "batch size {} is not between 1 and {} bytes",
            cfg.batch_bytes,
            rtbackup_proto::MAX_FRAME_PAYLOAD
        )));
    }
    let mut spool = match &cfg.spool {
        Some(dir) => Some(Spool::open(
            dir,
            ring.view().ring_id(),
            cfg.spool_max_bytes,
        )?),
        None => None,
    };
    if let Some(sp) = &spool {
        cfg.telemetry.spooled(sp);
    }
    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    while !stop.load(Ordering::Relaxed) {
        if all_delivered(ring) && spool.as_ref().is_none_or(Spool::is_empty) {
            return Ok(detached(ring));
        }
        let started = Instant::now();
        let mut report = SessionReport::default();
        let result = run_session(ring, cfg, stop, &mut report, spool.as_mut());
        // Whatever happened, the server no longer hears from us.
        cfg.telemetry.connected.set(0);
        if let Err(e) = ring.report_connected(false) {
            tracing::warn!("cannot report the disconnection to the ring: {e}");
        }
        match result {
            Ok(SessionEnd::Stopped) => break,
            Ok(SessionEnd::Detached) => return Ok(detached(ring)),
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                if report.progressed || started.elapsed() >= HEALTHY_SESSION {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                let acked = ring.view().tail_seq().saturating_sub(1);
                if report.welcomed {
                    tracing::info!(server = %cfg.server, acked_seq = acked, "disconnected: {e}; reconnecting in {delay:?}");
                } else {
                    tracing::warn!(server = %cfg.server, "{e}; retrying in {delay:?}");
                }
                wait_spooling(ring, cfg, stop, delay, spool.as_mut());
            }
        }
    }
    Ok(Exit::Stopped)
}

/// Whether the device was detached and every record of its ring was
/// acknowledged (possibly by an earlier run).
fn all_delivered<S: RingSource>(ring: &S) -> bool {
    let view = ring.view();
    // The flag first: the head loaded after it is final.
    view.is_detached() && view.tail() == view.head()
}

/// The end of a run after a detach, with everything delivered.
fn detached<S: RingSource>(ring: &S) -> Exit {
    let records = ring.view().head_seq().saturating_sub(1);
    tracing::info!(
        ring_id = format_args!("{:#x}", ring.view().ring_id()),
        "device detached; all {records} records delivered"
    );
    Exit::Detached { records }
}

/// Waits `total` before the next connection attempt, waking every poll
/// interval to see whether `stop` was set and, with a spool, to move
/// records out of a filling ring into it.
fn wait_spooling<S: RingSource>(
    ring: &S,
    cfg: &AgentConfig,
    stop: &AtomicBool,
    total: Duration,
    mut spool: Option<&mut Spool>,
) {
    let end = Instant::now() + total;
    let tick = cfg.poll_interval.max(Duration::from_millis(1));
    while !stop.load(Ordering::Relaxed) {
        if let Some(sp) = spool.as_deref_mut() {
            if let Err(e) = spool_ring(ring, cfg, sp) {
                tracing::warn!("cannot spool: {e}; the ring keeps its records");
                spool = None;
            }
        }
        if let Some(sp) = spool.as_deref() {
            cfg.telemetry.spooled(sp);
        }
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(tick));
    }
}

/// Moves the ring's records into `spool` when the ring is more than half
/// full (a short outage leaves them in the ring), as far as the spool has
/// room and up to a gap of seqs (reserved by a resync: their records are
/// made when sent).
fn spool_ring<S: RingSource>(
    ring: &S,
    cfg: &AgentConfig,
    spool: &mut Spool,
) -> Result<(), AgentError> {
    let view = ring.view();
    if view.head() - view.tail() <= view.data_size() / 2 {
        return Ok(());
    }
    let mut cursor = view.tail_cursor();
    // What the server holds: everything before the spool's first record
    // (or before the tail when the spool is empty).
    let durable = spool.first_seq().unwrap_or(cursor.seq).saturating_sub(1);
    let (mut records, mut bytes) = (0u64, 0u64);
    loop {
        let batch = view.read_batch(cursor, cfg.batch_bytes)?;
        let (Some(first), Some(last)) = (batch.first_seq(), batch.last_seq()) else {
            break;
        };
        if batch.bytes() > spool.room() {
            tracing::warn!(
                spooled_bytes = spool.bytes(),
                "the spool is full (--spool-max); the ring fills and its on-full policy applies"
            );
            break;
        }
        spool.append(batch.parts(), first, last)?;
        records += batch.records();
        bytes += batch.bytes();
        cursor = batch.end();
        // SAFETY: the batch's bytes were copied to the spool and are not
        // used any more.
        unsafe { ring.set_tail_spooled(cursor, durable, false) }?;
    }
    if records > 0 {
        tracing::info!(
            records,
            bytes,
            last_seq = cursor.seq - 1,
            spooled_bytes = spool.bytes(),
            "ring more than half full while disconnected: records moved to the spool"
        );
    }
    Ok(())
}
