//! `rtbackupctl status [DEVICE]`: what is attached, and its counters.

use comfy_table::{presets::NOTHING, Table};
use rtbackup_control::{Control, DeviceStatus};

/// Show attached devices: a table for people, --json for scripts.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only this device (/dev/rtbackupN, rtbackupN, N or the lower device).
    device: Option<String>,
    /// Print JSON: an object with a "devices" array.
    #[arg(long)]
    json: bool,
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn table(devices: &[DeviceStatus]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header([
        "DEVICE", "LOWER", "SIZE", "STATE", "OPEN", "READS", "WRITES", "WRITTEN", "FLUSHES",
        "ERRORS", "INFLIGHT",
    ]);
    for d in devices {
        t.add_row([
            d.device.clone(),
            d.lower.clone(),
            human_bytes(d.size_bytes),
            d.state.to_owned(),
            d.open_count.to_string(),
            d.stats.reads.to_string(),
            d.stats.writes.to_string(),
            human_bytes(d.stats.write_bytes),
            d.stats.flushes.to_string(),
            d.stats.errors.to_string(),
            d.stats.in_flight.to_string(),
        ]);
    }
    t
}

fn agent_state(d: &DeviceStatus) -> &'static str {
    match (d.ring.agent_attached, d.ring.agent_connected) {
        (true, true) => "connected",
        (true, false) => "disconnected",
        (false, _) => "none",
    }
}

/// Bytes of chunks still to resync (dirty or being resynced), or `-`.
fn resync_left(r: &rtbackup_control::RingStatus) -> String {
    let chunks = r.dirty_chunks + r.resync_chunks;
    if chunks == 0 {
        "-".into()
    } else {
        human_bytes(chunks.saturating_mul(r.chunk_size))
    }
}

fn replication_table(devices: &[DeviceStatus]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header([
        "DEVICE",
        "RING",
        "FILL",
        "WRITTEN-SEQ",
        "ACKED-SEQ",
        "LAG",
        "LAG-TIME",
        "SPOOLED",
        "WAITING",
        "AGENT",
        "MODE",
        "RESYNC",
        "WHEN-FULL",
    ]);
    for d in devices {
        let r = &d.ring;
        t.add_row([
            d.device.clone(),
            human_bytes(r.size_bytes),
            format!("{:.1}%", r.fill_percent()),
            r.last_written_seq.to_string(),
            r.last_acked_seq.to_string(),
            human_bytes(r.used_bytes),
            format!("{:.3}s", r.lag_ms as f64 / 1000.0),
            match r.spooled_records {
                0 => "-".to_owned(),
                n => format!("{n} records"),
            },
            r.waiting_writers.to_string(),
            agent_state(d).to_owned(),
            r.mode.to_owned(),
            resync_left(r),
            super::set::describe(r.on_full, r.block_timeout_ms),
        ]);
    }
    t
}

impl Args {
    pub(crate) fn run(self, control: &Control) -> anyhow::Result<()> {
        let devices = match &self.device {
            Some(name) => vec![control.resolve(name)?],
            None => control.list()?,
        };
        if self.json {
            return super::print_json(&serde_json::json!({
                "module": control.version(),
                "devices": devices,
            }));
        }
        if devices.is_empty() {
            println!("no devices attached");
        } else {
            println!("{}\n\n{}", table(&devices), replication_table(&devices));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_like_lsblk() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
    }
}
