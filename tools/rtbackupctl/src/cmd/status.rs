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

fn human_bytes(n: u64) -> String {
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
            println!("{}", table(&devices));
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
