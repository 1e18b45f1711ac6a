//! `rtbackupctl set DEVICE`: change what a live device does when its ring
//! is full.

use super::OnFullArg;
use rtbackup_cli::duration::parse_duration;
use rtbackup_control::{Control, OnFull};
use std::time::Duration;

/// Change what an attached device does when its ring is full, without
/// detaching it: `--on-full track` lets writers waiting for room go on at
/// once (the device tracks changed chunks, and the agent resyncs them);
/// `--on-full block` makes writers wait for the agent, for
/// `--block-timeout` at most. Settings not given stay as they are.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// /dev/rtbackupN, rtbackupN, N, or the lower device's path.
    device: String,
    /// `track` or `block` (see `rtbackupctl attach --help`).
    #[arg(long, value_enum)]
    on_full: Option<OnFullArg>,
    /// How long writers wait for room with `block` before the device
    /// tracks instead (30s, 5min, 1h...; at most 7d); 0 waits as long as
    /// it takes. A waiting writer's clock keeps running from its first
    /// wait.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    block_timeout: Option<Duration>,
    /// Print the device's settings afterwards as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let dev = control.resolve(&self.device)?;
        control.set_full_policy(dev.index, self.on_full.map(Into::into), self.block_timeout)?;
        let now = control.resolve(&dev.device)?;
        let (on_full, ms) = (now.ring.on_full, now.ring.block_timeout_ms);
        tracing::info!(device = %now.device, ?on_full, block_timeout_ms = ms, "set");
        if self.json {
            return super::print_json(&serde_json::json!({
                "device": now.device,
                "on_full": on_full,
                "block_timeout_ms": ms,
            }));
        }
        println!("{}: when full: {}", now.device, describe(on_full, ms));
        Ok(())
    }
}

/// What a full ring does, in words: `track`, `block (as long as it
/// takes)`, `block (60s, then track)`.
pub(crate) fn describe(on_full: OnFull, block_timeout_ms: u32) -> String {
    match (on_full, block_timeout_ms) {
        (OnFull::Track, _) => "track".into(),
        (OnFull::Block, 0) => "block (as long as it takes)".into(),
        (OnFull::Block, ms) => format!(
            "block ({}, then track)",
            humantime::format_duration(Duration::from_millis(ms.into()))
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_in_words() {
        assert_eq!(describe(OnFull::Track, 5000), "track");
        assert_eq!(describe(OnFull::Block, 0), "block (as long as it takes)");
        assert_eq!(describe(OnFull::Block, 60_000), "block (1m, then track)");
        assert_eq!(
            describe(OnFull::Block, 1500),
            "block (1s 500ms, then track)"
        );
    }
}
