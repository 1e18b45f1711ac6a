//! `rtbackup-server restore`: write a volume as of a restore point.

use super::{existing_store, VolumeArgs};
use anyhow::Context;
use rtbackup_cli::progress::{Lines, Progress};
use rtbackup_store::{PointSpec, RestoreProgress};
use std::path::PathBuf;

/// Write the latest consistent image of a volume to a file or block
/// device (safe while a server runs on the store).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vol: VolumeArgs,
    /// Output file (created or truncated; written sparse) or block
    /// device.
    #[arg(long)]
    output: PathBuf,
    /// Restore the newest consistency point at or before POINT: a time
    /// (2026-11-26T05:00:00Z, "10 minutes ago"), a seq (1234 or
    /// seq:1234), mark:NAME, id:ID (as `points` lists it), or latest.
    /// A mark name or seq that names several points is an error that
    /// lists them by id.
    #[arg(long, value_name = "POINT", default_value = "latest")]
    at: PointSpec,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            vol: VolumeArgs { store, volume },
            output,
            at,
            json,
        } = self;
        let st = existing_store(&store)?;
        let mut bar: Option<Progress> = None;
        let rep = st
            .restore_at_with(&volume, &output, &at, &mut |p| match p {
                RestoreProgress::Image { done, total } => bar
                    .get_or_insert_with(|| {
                        Progress::new(format!("restore {volume}"), total, Lines::Stderr)
                    })
                    .set(done),
                RestoreProgress::Journal { records } => {
                    if let Some(b) = bar.take() {
                        b.finish();
                    }
                    if records.is_multiple_of(64 * 1024) {
                        eprintln!("restore {volume}: {records} journal records replayed");
                    }
                }
            })
            .with_context(|| format!("restoring volume {volume} at {at}"))?;
        if let Some(b) = bar {
            b.finish();
        }
        if json {
            let mut v = serde_json::to_value(&rep)?;
            v["output"] = output.display().to_string().into();
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            let marks = if rep.point.marks.is_empty() {
                String::new()
            } else {
                format!(", mark {}", rep.point.marks.join(","))
            };
            println!(
                "restored volume {} as of {} (ring {:#x}, seq {}{marks}) to {}: {} bytes, {} of data, {} journal records replayed{}",
                rep.volume,
                rep.point.time,
                rep.ring_id,
                rep.seq,
                output.display(),
                rep.bytes,
                rep.data_bytes,
                rep.replayed_records,
                if rep.from_base { " onto the base image" } else { "" }
            );
        }
        Ok(())
    }
}
