//! `rtbackupctl detach DEVICE`: remove /dev/rtbackupN.

use rtbackup_control::Control;

/// Remove /dev/rtbackupN and release its lower device. Refused while the
/// device is mounted or open.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// /dev/rtbackupN, rtbackupN, N, or the lower device's path.
    device: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let dev = control.resolve(&self.device)?;
        control.detach(dev.index)?;
        tracing::info!(device = %dev.device, "detached");
        if self.json {
            super::print_json(&serde_json::json!({
                "device": dev.device,
                "lower": dev.lower,
                "detached": true,
            }))
        } else {
            Ok(())
        }
    }
}
