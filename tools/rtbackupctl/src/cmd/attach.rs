//! `rtbackupctl attach DEVICE`: stack /dev/rtbackupN on a block device.

use super::OnFullArg;
use rtbackup_cli::duration::parse_duration;
use rtbackup_control::{AttachOptions, Control};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Protect a block device: create /dev/rtbackupN on top of it and print its
/// path. The device is opened exclusively: it must not be mounted or in
/// use, and from now on is used only through /dev/rtbackupN. Every write is
/// recorded in a ring in kernel memory until rtbackup-agent has delivered
/// it to the backup server; when the ring is full, the device tracks
/// changed chunks in a bitmap that the agent resyncs later (`--on-full
/// track`, the default) or writers wait (`--on-full block`, for
/// `--block-timeout` at most). `rtbackupctl set` changes both later.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The block device to protect, e.g. /dev/nvme0n1.
    device: PathBuf,
    /// Size of the write-journal ring: a power of two from 1M to 4G
    /// (suffixes K, M, G; default 64M). It bounds how much the backup can
    /// lag before writers wait.
    #[arg(long, value_name = "SIZE", value_parser = rtbackup_cli::size::parse_bytes)]
    ring_size: Option<u64>,
    /// What happens when the ring is full: `track` (the default: the
    /// production disk never waits for the backup) marks changed chunks in
    /// a bitmap that the agent resyncs, and the backup has no consistency
    /// point until the resync completes; `block` makes writers wait for the
    /// agent (every write keeps its order in the backup, at the price of a
    /// stalled disk while the agent or the server is gone, for
    /// --block-timeout at most).
    #[arg(long, value_enum, default_value_t = OnFullArg::Track)]
    on_full: OnFullArg,
    /// With --on-full block: how long writers wait for room before the
    /// device tracks instead (30s, 5min, 1h...; at most 7d); 0 waits as
    /// long as it takes. A writer killed while it waits stops waiting, and
    /// the device tracks.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    block_timeout: Duration,
    /// Bytes of device per bit of the dirty bitmap: a power of two from 4K
    /// to 16M (default 64K). Smaller chunks resend less, at more bitmap
    /// memory (2 MiB per TiB at 64K).
    #[arg(long, value_name = "SIZE", value_parser = rtbackup_cli::size::parse_bytes)]
    chunk_size: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let opts = AttachOptions {
            ring_size: self.ring_size.unwrap_or(0),
            chunk_size: self.chunk_size.unwrap_or(0),
            on_full: self.on_full.into(),
            block_timeout: self.block_timeout,
        };
        let attached = control.attach(&self.device, &opts)?;
        tracing::info!(device = %attached.device, lower = %attached.lower, "attached");
        if writes_may_bypass(Path::new(WRITE_MOUNTED_PARAM)) {
            eprintln!(
                "rtbackupctl: warning: this kernel lets programs write to {} directly while \
                 {} is in use (block.bdev_allow_write_mounted=1), and such writes are not \
                 backed up; boot with bdev_allow_write_mounted=0",
                attached.lower, attached.device
            );
        }
        if self.json {
            super::print_json(&attached)
        } else {
            println!("{}", attached.device);
            Ok(())
        }
    }
}

/// The block layer's switch that lets a device opened exclusively (as the
/// lower device of /dev/rtbackupN is) still be opened for writing by
/// others (CONFIG_BLK_DEV_WRITE_MOUNTED; Debian's kernels have it on).
const WRITE_MOUNTED_PARAM: &str = "/sys/module/block/parameters/bdev_allow_write_mounted";

/// Whether the parameter file `param` says plain writers may bypass the
/// filter (`Y`); absent (a kernel without the switch, where they cannot):
/// no.
fn writes_may_bypass(param: &Path) -> bool {
    std::fs::read_to_string(param).is_ok_and(|v| v.trim() == "Y")
}

#[cfg(test)]
mod tests {
    use super::writes_may_bypass;

    #[test]
    fn the_write_mounted_switch_is_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("param");
        assert!(!writes_may_bypass(&p));
        std::fs::write(&p, "Y\n").unwrap();
        assert!(writes_may_bypass(&p));
        std::fs::write(&p, "N\n").unwrap();
        assert!(!writes_may_bypass(&p));
    }
}
