//! `rtbackupctl attach DEVICE`: stack /dev/rtbackupN on a block device.

use anyhow::{bail, Context};
use rtbackup_control::{AttachOptions, Control};
use std::path::PathBuf;

/// Protect a block device: create /dev/rtbackupN on top of it and print its
/// path. The device is opened exclusively: it must not be mounted or in
/// use, and from now on is used only through /dev/rtbackupN. Every write is
/// recorded in a ring in kernel memory until rtbackup-agent has delivered
/// it to the backup server; when the ring is full, writers wait
/// (`--on-full block`) or the device tracks changed chunks in a bitmap that
/// the agent resyncs later (`--on-full track`).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The block device to protect, e.g. /dev/nvme0n1.
    device: PathBuf,
    /// Size of the write-journal ring: a power of two from 1M to 4G
    /// (suffixes K, M, G; default 64M). It bounds how much the backup can
    /// lag before writers wait.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    ring_size: Option<u64>,
    /// What happens when the ring is full: `block` makes writers wait for
    /// the agent (every write keeps its order in the backup); `track`
    /// never makes them wait: changed chunks are marked in a bitmap and
    /// resynced by the agent, and the backup has no consistency point
    /// until the resync completes.
    #[arg(long, value_enum, default_value_t = OnFull::Block)]
    on_full: OnFull,
    /// Bytes of device per bit of the dirty bitmap: a power of two from 4K
    /// to 16M (default 64K). Smaller chunks resend less, at more bitmap
    /// memory (2 MiB per TiB at 64K).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `--on-full`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnFull {
    Block,
    Track,
}

/// Parses `64M`, `1G`, `1048576`, `512K` (binary units).
pub(crate) fn parse_size(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("'{s}' is not a size (examples: 1048576, 512K, 64M, 1G)"))?;
    let Some(v) = n.checked_mul(1 << shift) else {
        bail!("'{s}' is too large");
    };
    Ok(v)
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let opts = AttachOptions {
            ring_size: self.ring_size.unwrap_or(0),
            chunk_size: self.chunk_size.unwrap_or(0),
            track_on_full: self.on_full == OnFull::Track,
        };
        let attached = control.attach(&self.device, &opts)?;
        tracing::info!(device = %attached.device, lower = %attached.lower, "attached");
        if self.json {
            super::print_json(&attached)
        } else {
            println!("{}", attached.device);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("512K").unwrap(), 512 << 10);
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("99999999999G").is_err());
    }
}
