//! `rtbackupctl attach DEVICE`: stack /dev/rtbackupN on a block device.

use rtbackup_control::Control;
use std::path::PathBuf;

/// Protect a block device: create /dev/rtbackupN on top of it and print its
/// path. The device is opened exclusively: it must not be mounted or in
/// use, and from now on is used only through /dev/rtbackupN.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The block device to protect, e.g. /dev/nvme0n1.
    device: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let attached = control.attach(&self.device)?;
        tracing::info!(device = %attached.device, lower = %attached.lower, "attached");
        if self.json {
            super::print_json(&attached)
        } else {
            println!("{}", attached.device);
            Ok(())
        }
    }
}
