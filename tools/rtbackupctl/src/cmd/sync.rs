//! `rtbackupctl sync DEVICE`: flush, then wait until the server has it all.

use anyhow::{bail, Context};
use rtbackup_control::Control;
use serde::Serialize;
use std::fs::File;
use std::time::{Duration, Instant};

/// Flush the device and wait until everything written before the flush is
/// durable on the backup server (acknowledged to the agent). Use it in
/// scripts, before a restore, before shutdown.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The device (/dev/rtbackupN, rtbackupN, N or the lower device).
    device: String,
    /// Give up after this many seconds (exit status 1); 0 waits forever.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Synced {
    device: String,
    seq: u64,
    waited_ms: u64,
}

/// Whether every write of the device is in its record stream: the ring is
/// recording and no resync is owed.
fn in_stream(d: &rtbackup_control::DeviceStatus) -> bool {
    d.ring.mode == "recording" && d.ring.dirty_chunks == 0 && d.ring.resync_chunks == 0
}

/// Flushes `device` (a resolved `/dev/rtbackupN`) and waits until the
/// server holds durably every record written before the flush; returns the
/// seq of the last of them. While the ring tracks or a resync is owed, the
/// flush is not in the record stream: then it waits for the agent's resync
/// to complete and flushes again. `timeout` 0 waits forever.
pub(crate) fn flush_and_wait(control: &Control, device: &str, timeout: u64) -> anyhow::Result<u64> {
    let start = Instant::now();
    let deadline = (timeout > 0).then(|| start + Duration::from_secs(timeout));
    let mut warned = false;
    let mut warn_no_agent = |now: &rtbackup_control::DeviceStatus| {
        if !now.ring.agent_attached && !warned {
            eprintln!(
                "rtbackupctl: {device}: no rtbackup-agent is running for this device; waiting"
            );
            warned = true;
        }
    };
    let (target, ring_id) = loop {
        // Wait for the resync, if any: a flush while the ring tracks is
        // not in the record stream.
        let before = loop {
            let now = control.resolve(device)?;
            if in_stream(&now) {
                break now;
            }
            warn_no_agent(&now);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                bail!(
                    "timed out after {timeout} s: {device} is {} with {} chunk(s) to resync; \
                     is rtbackup-agent running and connected?",
                    now.ring.mode,
                    now.ring.dirty_chunks + now.ring.resync_chunks
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // fsync of the block device writes back its page cache and sends a
        // flush, which the ring records after every write it covers.
        let file = File::open(device).with_context(|| format!("open {device}"))?;
        file.sync_all().with_context(|| format!("flush {device}"))?;
        drop(file);
        let after = control.resolve(device)?;
        // Recording before and after with no overflow between: the flush
        // was recorded, and the last seq now is at or after it.
        if in_stream(&after)
            && after.ring.ring_id == before.ring.ring_id
            && after.ring.overflows == before.ring.overflows
        {
            break (after.ring.last_written_seq, after.ring.ring_id);
        }
    };
    loop {
        let now = control.resolve(device)?;
        if now.ring.ring_id != ring_id {
            bail!("{device} was detached and attached again while waiting");
        }
        if now.ring.last_acked_seq >= target {
            return Ok(target);
        }
        warn_no_agent(&now);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!(
                "timed out after {timeout} s: {} record(s), {} byte(s) of {device} not yet on the server \
                 (agent: {}); is rtbackup-agent running and connected?",
                target.saturating_sub(now.ring.last_acked_seq),
                now.ring.used_bytes,
                if now.ring.agent_connected {
                    "connected"
                } else if now.ring.agent_attached {
                    "not connected to the server"
                } else {
                    "not running"
                }
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let start = Instant::now();
        let dev = control.resolve(&self.device)?;
        let seq = flush_and_wait(control, &dev.device, self.timeout)?;
        let out = Synced {
            device: dev.device.clone(),
            seq,
            waited_ms: start.elapsed().as_millis() as u64,
        };
        if self.json {
            super::print_json(&out)
        } else {
            println!(
                "{}: durable on the server through record {}",
                out.device, out.seq
            );
            Ok(())
        }
    }
}
