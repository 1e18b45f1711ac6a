//! `rtbackupctl verify DEVICE`: compare the device with its backup, chunk
//! by chunk, while it is in use; with `--repair`, resync what differs.

use anyhow::{bail, Context};
use rtbackup_control::{Control, DirectReader};
use rtbackup_verify::{chunk_checksum, chunk_extent, fetch_checksums, VerifyPoint, VerifyRequest};
use serde::Serialize;
use std::collections::BTreeSet;

use super::sync::flush_and_wait;
use rtbackup_cli::progress::{Lines, Progress};

/// Compare the device with the backup server's latest state of its volume:
/// the server sends a BLAKE3 checksum per chunk, this reads the device
/// (O_DIRECT) and compares. It first waits until the server has everything
/// written (as `sync`); a chunk that differs is checked again after a
/// second sync, so that a write during the verify is not reported. Exit
/// status 1 when chunks differ and were not repaired.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The device (/dev/rtbackupN, rtbackupN, N or the lower device).
    device: String,
    /// The backup server, HOST:PORT (as the agent's --server).
    #[arg(long, value_name = "HOST:PORT")]
    server: String,
    /// The device's volume name on the server (the agent's --volume).
    #[arg(long)]
    volume: String,
    #[command(flatten)]
    access: super::ServerAccess,
    /// Mark the chunks that differ dirty, so that the agent resyncs them,
    /// and wait until it has.
    #[arg(long)]
    repair: bool,
    /// Seconds to wait for the server to hold everything written (and for
    /// a repair's resync); 0 waits forever.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    sync_timeout: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A chunk that differs.
#[derive(Serialize)]
struct Difference {
    chunk: u64,
    offset: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct Verified {
    device: String,
    volume: String,
    point_seq: u64,
    point_time: String,
    chunk_size: u64,
    chunks: u64,
    differences: Vec<Difference>,
    repaired: bool,
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let creds = self.access.credentials()?;
        let dev = control.resolve(&self.device)?;
        let chunk = dev.ring.chunk_size;
        let size = dev.size_bytes;
        let req = VerifyRequest::new(&self.volume, &super::hostname(), chunk, size);
        flush_and_wait(control, &dev.device, self.sync_timeout)?;
        let (point, differ) = compare(&self.server, creds.as_ref(), &req, &dev.device, None)?;
        let (point, differ) = if differ.is_empty() {
            (point, differ)
        } else {
            // Written after the first sync? Look again after another.
            flush_and_wait(control, &dev.device, self.sync_timeout)?;
            compare(
                &self.server,
                creds.as_ref(),
                &req,
                &dev.device,
                Some(&differ),
            )?
        };
        let mut repaired = false;
        if self.repair && !differ.is_empty() {
            let chunks: Vec<u64> = differ.iter().copied().collect();
            control.dirty(dev.index, size.div_ceil(chunk), &chunks)?;
            // Waits for the agent's resync, then for the server.
            flush_and_wait(control, &dev.device, self.sync_timeout)
                .context("waiting for the agent to resync the chunks that differ")?;
            repaired = true;
        }
        let out = Verified {
            device: dev.device.clone(),
            volume: self.volume.clone(),
            point_seq: point.seq,
            point_time: point.time.clone(),
            chunk_size: chunk,
            chunks: point.chunks,
            differences: differ
                .iter()
                .map(|&c| {
                    let (offset, bytes) = chunk_extent(c, chunk, size);
                    Difference {
                        chunk: c,
                        offset,
                        bytes,
                    }
                })
                .collect(),
            repaired,
        };
        if self.json {
            super::print_json(&out)?;
        } else {
            for d in &out.differences {
                println!(
                    "differs: chunk {} (bytes {} to {})",
                    d.chunk,
                    d.offset,
                    d.offset + d.bytes
                );
            }
            println!(
                "{}: {} of {} chunks differ from volume {} as of {} (seq {}){}",
                out.device,
                out.differences.len(),
                out.chunks,
                out.volume,
                out.point_time,
                out.point_seq,
                if repaired { "; resynced" } else { "" }
            );
        }
        if !out.differences.is_empty() && !repaired {
            bail!(
                "{} chunk(s) of {} differ from the backup; run again with --repair to resync them",
                out.differences.len(),
                out.device
            );
        }
        Ok(())
    }
}

/// Compares the device at `path` with the server's checksums; only the
/// chunks in `only` when given. Returns the point and the chunks that
/// differ.
fn compare(
    server: &str,
    creds: Option<&rtbackup_tls::Credentials>,
    req: &VerifyRequest,
    path: &str,
    only: Option<&BTreeSet<u64>>,
) -> anyhow::Result<(VerifyPoint, BTreeSet<u64>)> {
    let mut dev = DirectReader::open(path).with_context(|| format!("opening {path}"))?;
    let mut buf = Vec::new();
    let mut differ = BTreeSet::new();
    let total = match only {
        Some(o) => o
            .iter()
            .map(|&c| chunk_extent(c, req.chunk_size, req.size_bytes).1)
            .sum(),
        None => req.size_bytes,
    };
    let mut progress = Progress::new(format!("verify {path}"), total, Lines::Stderr);
    let point = fetch_checksums(server, creds, req, |first, sums| -> anyhow::Result<()> {
        for (i, sum) in sums.iter().enumerate() {
            let c = first + i as u64;
            if only.is_some_and(|o| !o.contains(&c)) {
                continue;
            }
            let (offset, bytes) = chunk_extent(c, req.chunk_size, req.size_bytes);
            buf.resize(bytes as usize, 0);
            dev.read_at(&mut buf, offset)
                .with_context(|| format!("reading {path} at {offset}"))?;
            if chunk_checksum(&buf) != *sum {
                differ.insert(c);
            }
            progress.add(bytes);
        }
        Ok(())
    })?;
    progress.finish();
    Ok((point, differ))
}
