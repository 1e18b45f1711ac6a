//! The command line of `rtbackup-agent`.

use crate::config::{AgentConfig, InitialSync};
use clap::Parser;
use std::time::Duration;

/// Streams the write journal of an rtbackup device to a backup server.
///
/// Every write to the device is recorded in the device's ring; the agent
/// sends the records to `rtbackup-server` and lets them leave the ring
/// once the server has stored them durably. It reconnects by itself after
/// a disconnect and stops cleanly on SIGTERM or SIGINT.
#[derive(Debug, Parser)]
#[command(name = "rtbackup-agent", version, args_override_self = true)]
pub struct Cli {
    /// Read settings from this TOML file: each key a long option without
    /// its dashes (server = "backup:7420"), and a table [device."PATH"]
    /// for the agent of --device PATH; options on the command line
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,

    /// The device to stream: /dev/rtbackupN, rtbackupN, N or its lower device.
    #[arg(long, value_name = "DEVICE")]
    pub device: String,

    /// The backup server, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,

    /// Name of the volume on the server ([A-Za-z0-9._-], 1 to 64 characters).
    #[arg(long, value_name = "NAME")]
    pub volume: String,

    /// Most record bytes per RECORDS frame (suffixes K, M, G; at most 64M).
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_size)]
    pub batch_bytes: u64,

    /// Hold a batch smaller than --batch-bytes back this long for more
    /// records (0: send at once).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub max_batch_delay_ms: u64,

    /// Give a connection up when records wait this long for an ACK.
    #[arg(long, value_name = "SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub ack_timeout_secs: u64,

    /// What the initial sync of a newly attached device sends: `verify`
    /// compares chunk checksums with the backup's latest state and sends
    /// the chunks that differ (on a new volume: every chunk that is not
    /// all zeroes); `full` sends every chunk; `none` sends nothing (only
    /// when the device is known to equal the backup). Writes meanwhile are
    /// tracked and resent; the backup is consistent again once it is done.
    #[arg(long, value_enum, default_value_t = InitialSyncArg::Verify)]
    pub initial_sync: InitialSyncArg,
    /// Most bytes per second a resync or initial sync reads from the
    /// device and sends (suffixes K, M, G; default: no limit), so that it
    /// leaves room for the applications and the network.
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub max_rate: Option<u64>,
    /// While the applications write to the device, a resync or initial
    /// sync reads at most this many bytes per second (suffixes K, M, G; 0:
    /// it never slows down), leaving the disk and the CPU to them, like
    /// DRBD's c-min-rate. Their writes meanwhile only set dirty bits; once
    /// they stop for a second it goes at full speed (or --max-rate) again.
    /// Not in the last pass of a resync, whose writes fill the ring.
    #[arg(long, value_name = "BYTES", default_value = "4M", value_parser = parse_bytes_or_zero)]
    pub busy_rate: u64,
    /// This host's credentials from `rtbackup-server enroll CLIENT`: TLS 1.3
    /// with the client's certificate, trusting only the server's CA.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "insecure_loopback_only"
    )]
    pub credentials: Option<std::path::PathBuf>,
    /// Plaintext, unauthenticated, to a server on this machine started with
    /// --insecure-loopback-only (demos only; refused for any other address).
    #[arg(long, conflicts_with = "credentials")]
    pub insecure_loopback_only: bool,
    /// A directory on another disk than the protected device where, while
    /// the server cannot be reached and the ring is more than half full,
    /// the agent moves records out of the ring (made durable first); they
    /// are sent first on the next connection. A long outage then neither
    /// blocks the device's writers nor ends in a resync, as long as the
    /// spool has room.
    #[arg(long, value_name = "DIR")]
    pub spool: Option<std::path::PathBuf>,
    /// Most bytes the spool may hold (suffixes K, M, G, T); when it is full
    /// the ring fills and its `--on-full` policy applies.
    #[arg(long, value_name = "BYTES", default_value = "8G", value_parser = parse_bytes)]
    pub spool_max: u64,
    /// Serve Prometheus text metrics on http://ADDR/metrics: lag in
    /// records, bytes and seconds, ring fill, bytes sent, connection,
    /// resync progress, spool. No authentication: keep it on loopback or
    /// a monitoring network.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Log filter (error, warn, info, debug, trace, or a tracing
    /// directive); default: RUST_LOG, else info.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// `--initial-sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialSyncArg {
    /// Send the chunks whose checksums differ from the backup's.
    Verify,
    /// Send every chunk.
    Full,
    /// Send nothing.
    None,
}

/// The table of per-device settings in a `--config` file.
pub const DEVICE_SECTION: rtbackup_cli::config::Section = rtbackup_cli::config::Section {
    table: "device",
    option: "device",
};

/// The program's arguments with the settings of its `--config` files
/// before them (see [`rtbackup_cli::config`]).
pub fn args_with_config(
    args: Vec<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, rtbackup_cli::CliError> {
    use clap::CommandFactory;
    rtbackup_cli::config::with_config_files(&Cli::command(), args, Some(DEVICE_SECTION))
}

impl Cli {
    /// The agent's settings; `client` is this host's name (the name in the
    /// credentials, when given). Fails if the credentials cannot be read.
    pub fn config(&self, client: impl Into<String>) -> Result<AgentConfig, crate::AgentError> {
        let mut cfg = AgentConfig::new(self.server.clone(), self.volume.clone(), client);
        cfg.batch_bytes = self.batch_bytes;
        cfg.max_batch_delay = Duration::from_millis(self.max_batch_delay_ms);
        cfg.ack_timeout = Duration::from_secs(self.ack_timeout_secs);
        cfg.resync_max_rate = self.max_rate;
        cfg.resync_busy_rate = Some(self.busy_rate).filter(|&r| r > 0);
        cfg.spool = self.spool.clone();
        cfg.spool_max_bytes = self.spool_max;
        if let Some(path) = &self.credentials {
            let creds = rtbackup_tls::Credentials::load(path)
                .map_err(|e| crate::AgentError::Config(e.to_string()))?;
            cfg.client = creds.client.clone();
            cfg.credentials = Some(creds);
        }
        cfg.initial_sync = match self.initial_sync {
            InitialSyncArg::Verify => InitialSync::Verify,
            InitialSyncArg::Full => InitialSync::Full,
            InitialSyncArg::None => InitialSync::None,
        };
        Ok(cfg)
    }
}

pub use rtbackup_cli::size::{parse_bytes, parse_bytes_or_zero};

/// [`parse_bytes`] for a size that must fit in one frame: at most 64 MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let v = parse_bytes(s)?;
    let max = rtbackup_proto::MAX_FRAME_PAYLOAD as u64;
    if v > max {
        return Err(format!("{s:?} must be between 1 byte and {}M", max >> 20));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("4mib"), Ok(4 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert!(parse_size("65M").is_err());
        assert!(parse_size("1G").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("4X").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999999999999999").is_err());
        assert_eq!(parse_bytes("8G"), Ok(8 << 30));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("99999999T").is_err());
    }

    #[test]
    fn command_line() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "rtbackup-agent",
            "--device",
            "/dev/rtbackup0",
            "--server",
            "backup:7070",
            "--volume",
            "db1",
            "--batch-bytes",
            "1M",
            "--max-batch-delay-ms",
            "5",
            "--insecure-loopback-only",
        ])
        .unwrap();
        let cfg = cli.config("host-a").unwrap();
        assert!(cfg.credentials.is_none());
        assert_eq!(cfg.server, "backup:7070");
        assert_eq!(cfg.volume, "db1");
        assert_eq!(cfg.client, "host-a");
        assert_eq!(cfg.batch_bytes, 1 << 20);
        assert_eq!(cfg.max_batch_delay, Duration::from_millis(5));
        assert_eq!(cfg.ack_timeout, Duration::from_secs(60));
        assert_eq!((cfg.spool, cfg.spool_max_bytes), (None, 8 << 30));
        // The arguments every command line below starts with.
        let base = [
            "rtbackup-agent",
            "--device",
            "0",
            "--server",
            "s:1",
            "--volume",
            "v",
        ];
        let spool = [
            "--spool",
            "/srv/spool",
            "--spool-max",
            "100G",
            "--max-rate",
            "1G",
            "--insecure-loopback-only",
        ];
        let cli = Cli::try_parse_from([&base[..], &spool].concat()).unwrap();
        let cfg = cli.config("h").unwrap();
        assert_eq!(
            cfg.spool.as_deref(),
            Some(std::path::Path::new("/srv/spool"))
        );
        assert_eq!(cfg.spool_max_bytes, 100 << 30);
        assert_eq!(cfg.resync_max_rate, Some(1 << 30));
        assert_eq!(cfg.resync_busy_rate, Some(4 << 20));
        for (arg, rate) in [("0", None), ("512K", Some(512 << 10))] {
            let a = [&base[..], &spool, &["--busy-rate", arg]].concat();
            let cfg = Cli::try_parse_from(a).unwrap().config("h").unwrap();
            assert_eq!(cfg.resync_busy_rate, rate, "{arg}");
        }
        let err = Cli::try_parse_from(["rtbackup-agent", "--device", "0", "--server", "s:1"])
            .unwrap_err();
        assert!(err.to_string().contains("--volume"), "{err}");
        // Neither credentials nor the explicit plaintext flag.
        let err = Cli::try_parse_from(base).unwrap_err();
        assert!(err.to_string().contains("--credentials"), "{err}");
        // A credentials file that cannot be read is an error of config().
        let with_creds = [&base[..], &["--credentials", "/nonexistent/creds.json"]].concat();
        let cli = Cli::try_parse_from(with_creds).unwrap();
        assert!(cli.config("h").is_err());
    }
}
