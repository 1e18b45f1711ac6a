//! `rtbackup-server points`: a volume's restore points.

use super::{existing_store, VolumeArgs};
use anyhow::Context;
use rtbackup_store::PointInfo;

/// List the restore points of a volume: the base point, every
/// consistency point (flush) held, and the marks.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vol: VolumeArgs,
    /// Only points with a mark.
    #[arg(long)]
    marks: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            vol: VolumeArgs { store, volume },
            marks,
            json,
        } = self;
        let st = existing_store(&store)?;
        let mut points = st
            .points(&volume)
            .with_context(|| format!("listing the points of volume {volume}"))?;
        if marks {
            points.retain(|p| !p.marks.is_empty());
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&points)?);
        } else {
            print_points(&points);
        }
        Ok(())
    }
}

fn print_points(points: &[PointInfo]) {
    println!(
        "{:<16} {:<32} {:<32} {:>18} {:>12} {:<10} MARKS",
        "ID", "TIME", "RECEIVED", "RING_ID", "SEQ", "KIND"
    );
    for p in points {
        let kind = serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{:<16} {:<32} {:<32} {:>#18x} {:>12} {:<10} {}",
            p.id,
            p.time,
            p.received,
            p.ring_id,
            p.seq,
            kind,
            p.marks.join(",")
        );
    }
}
