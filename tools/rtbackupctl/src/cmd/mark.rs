//! `rtbackupctl mark DEVICE NAME`: a named point in the backup's history.

use anyhow::bail;
use rtbackup_control::{flush_device, validate_mark_name, Control, Frozen};
use serde::Serialize;
use std::path::PathBuf;

/// Put a named mark in the record stream of DEVICE: the backup server can
/// restore the device as of the mark (the newest consistency point at or
/// before it). DEVICE is flushed first, so that this point is now. With
/// --freeze, the filesystem mounted at MOUNTPOINT is frozen (fsfreeze)
/// around the flush and the mark: the marked state is then clean (no
/// journal recovery or fsck), and no write slips in between. It is thawed
/// whatever happens.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The device (/dev/rtbackupN, rtbackupN, N or the lower device).
    device: String,
    /// The mark's name: 1 to 64 characters from A-Z, a-z, 0-9, '.', '_'
    /// and '-', not starting with '.'.
    #[arg(value_parser = parse_name)]
    name: String,
    /// Freeze the filesystem mounted at MOUNTPOINT, which must be on
    /// DEVICE, while marking.
    #[arg(long, value_name = "MOUNTPOINT")]
    freeze: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// A valid mark name; anything else is a usage error.
fn parse_name(name: &str) -> Result<String, rtbackup_control::Error> {
    validate_mark_name(name)?;
    Ok(name.to_owned())
}

#[derive(Serialize)]
struct Marked {
    device: String,
    name: String,
    seq: u64,
    frozen: bool,
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let dev = control.resolve(&self.device)?;
        let flush_and_mark = || -> rtbackup_control::Result<u64> {
            // fsync of the block device sends a flush, which the ring
            // records: the consistency point the mark resolves to.
            flush_device(&dev.device)?;
            control.mark(dev.index, &self.name)
        };
        let seq = match &self.freeze {
            None => flush_and_mark()?,
            Some(dir) => {
                let frozen = Frozen::freeze(dir, &dev.device, &dev.devt)?;
                let marked = flush_and_mark();
                match (marked, frozen.thaw()) {
                    (Ok(seq), Ok(())) => seq,
                    (Ok(seq), Err(thaw)) => bail!(
                        "{thaw} (mark {} was recorded as record {seq} of {})",
                        self.name,
                        dev.device
                    ),
                    (Err(e), Ok(())) => bail!("{e} ({} was thawed again)", dir.display()),
                    (Err(e), Err(thaw)) => bail!("{e}; and {thaw}"),
                }
            }
        };
        tracing::info!(device = %dev.device, name = %self.name, seq, "marked");
        let out = Marked {
            device: dev.device,
            name: self.name,
            seq,
            frozen: self.freeze.is_some(),
        };
        if self.json {
            super::print_json(&out)
        } else {
            println!(
                "mark {} recorded as record {} of {}",
                out.name, out.seq, out.device
            );
            Ok(())
        }
    }
}
