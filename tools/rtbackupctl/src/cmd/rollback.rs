//! `rtbackupctl rollback DEVICE --to POINT`: bring the device back to a
//! past point by writing only the ranges changed since.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;
use rtbackup_control::Control;
use serde::Serialize;

/// Roll the device back to a past point: the backup server sends the byte
/// ranges changed after it, with their contents then, and they are written
/// to the device (through the filter, so the backup follows). Costs the
/// size of the damage, not of the disk. The device must not be mounted or
/// open; an agent must be streaming it.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The device (/dev/rtbackupN, rtbackupN, N or the lower device).
    device: String,
    /// The point: a time (2026-11-26T05:00:00Z, "10 minutes ago"), a seq
    /// (1234 or seq:1234), mark:NAME.
    #[arg(long, value_name = "POINT")]
    to: String,
    /// The backup server, HOST:PORT (as the agent's --server).
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// The device's volume name on the server (the agent's --volume).
    #[arg(long)]
    volume: String,
    #[command(flatten)]
    access: super::ServerAccess,
    /// Only show what would be written.
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for the server to hold everything written, before
    /// and after (0 waits forever).
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    sync_timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct RolledBack {
    device: String,
    volume: String,
    point_time: String,
    point_seq: u64,
    point_ring_id: u64,
    marks: Vec<String>,
    ranges: u64,
    bytes: u64,
    bytes_written: u64,
    device_bytes: u64,
    dry_run: bool,
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let dev = control.resolve(&self.device)?;
        // Exclusive: refused while mounted or claimed, and nothing else can
        // open it meanwhile.
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(&dev.device)
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    anyhow::anyhow!(
                        "{} is mounted or open: unmount it (and stop its users) before a rollback, \
                         which rewrites the device under any filesystem on it",
                        dev.device
                    )
                } else {
                    anyhow::Error::new(e).context(format!("opening {}", dev.device))
                }
            })?;
        let size = f
            .seek(SeekFrom::End(0))
            .with_context(|| format!("size of {}", dev.device))?;
        // The server must hold the device's newest state: everything
        // written before now.
        super::sync::flush_and_wait(control, &dev.device, self.sync_timeout)
            .context("before the rollback, the server must hold everything written")?;
        let host = super::hostname();
        let req = rtbackup_rollback::Request {
            server: self.server.clone(),
            volume: self.volume.clone(),
            point: self.to.clone(),
            dry_run: self.dry_run,
            size_bytes: size,
            client: host,
            credentials: self.access.credentials()?,
        };
        let tty = std::io::stderr().is_terminal() && !self.json;
        let out = rtbackup_rollback::run(&req, &f, |done, total| {
            if tty {
                eprint!("\rrtbackupctl: rollback: {done} of {total} bytes written");
                let _ = std::io::stderr().flush();
            }
        })
        .with_context(|| format!("rolling back {} to {}", dev.device, self.to))?;
        if tty {
            eprintln!();
        }
        if !self.dry_run {
            f.sync_all()
                .with_context(|| format!("flush {}", dev.device))?;
            drop(f);
            super::sync::flush_and_wait(control, &dev.device, self.sync_timeout).context(
                "the rollback is written to the device, but not yet confirmed on the server",
            )?;
        }
        let r = RolledBack {
            device: dev.device.clone(),
            volume: self.volume,
            point_time: out.plan.time.clone(),
            point_seq: out.plan.seq,
            point_ring_id: out.plan.ring_id,
            marks: out.plan.marks.clone(),
            ranges: out.plan.extents,
            bytes: out.plan.bytes,
            bytes_written: out.bytes_written,
            device_bytes: size,
            dry_run: self.dry_run,
        };
        if self.json {
            return super::print_json(&r);
        }
        let marks = if r.marks.is_empty() {
            String::new()
        } else {
            format!(", mark {}", r.marks.join(","))
        };
        if r.dry_run {
            println!(
                "{}: a rollback to {} (seq {}{marks}) would write {} range(s), {} bytes of {}",
                r.device, r.point_time, r.point_seq, r.ranges, r.bytes, r.device_bytes
            );
        } else if r.bytes_written == 0 {
            println!(
                "{}: already as of {} (seq {}{marks}): nothing to write",
                r.device, r.point_time, r.point_seq
            );
        } else {
            println!(
                "{}: rolled back to {} (seq {}{marks}): {} range(s), {} bytes written of {}",
                r.device, r.point_time, r.point_seq, r.ranges, r.bytes_written, r.device_bytes
            );
        }
        Ok(())
    }
}
