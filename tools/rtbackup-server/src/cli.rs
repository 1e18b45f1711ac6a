//! Command line of `rtbackup-server`.

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rtbackup_store::{LocalDirStore, Store, VolumeOptions};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::server::Server;

/// Default TCP port.
pub const DEFAULT_PORT: u16 = 7420;

/// The rtbackup backup server.
#[derive(Debug, Parser)]
#[command(name = "rtbackup-server", version, about)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace) unless RUST_LOG is set.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive record streams from agents into a store.
    Serve {
        /// Store directory (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// Address to listen on: IP:PORT, IP, or HOST[:PORT] (port 7420 by
        /// default). The protocol has no authentication: listen on a
        /// trusted network only.
        #[arg(long, default_value = "127.0.0.1:7420")]
        listen: String,
        /// Start a new journal segment after this many MiB.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        segment_mib: u64,
        /// Connections served at once; more are refused (ERROR
        /// too-many-connections) until some end.
        #[arg(long, default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
        max_connections: usize,
    },
    /// Write the latest consistent image of a volume to a file or block
    /// device (safe while a server runs on the store).
    Restore {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Volume name.
        #[arg(long)]
        volume: String,
        /// Output file (created or truncated; written sparse) or block
        /// device.
        #[arg(long)]
        output: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the volumes of a store.
    Status {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cli.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtbackup-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ADDR` with the default port when it has none.
pub fn listen_addr(s: &str) -> String {
    if s.parse::<SocketAddr>().is_ok() {
        return s.to_owned();
    }
    if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return SocketAddr::new(ip, DEFAULT_PORT).to_string();
    }
    if s.contains(':') {
        s.to_owned()
    } else {
        format!("{s}:{DEFAULT_PORT}")
    }
}

fn existing_store(dir: &Path) -> anyhow::Result<Store> {
    if !dir.join("volumes").is_dir() {
        bail!("no rtbackup store at {}", dir.display());
    }
    Ok(Store::open(dir)?)
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve {
            store,
            listen,
            segment_mib,
            max_connections,
        } => {
            let opts = VolumeOptions {
                segment_bytes: segment_mib << 20,
            };
            let st = Store::with_segment_store(
                &store,
                Arc::new(LocalDirStore::new(store.join("sealed"))),
                opts,
            )?;
            let server = Server::bind(st, &listen_addr(&listen))?.max_connections(max_connections);
            let addr = server.local_addr()?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, Arc::clone(&stop))
                    .context("installing signal handlers")?;
            }
            info!(%addr, store = %store.display(), "listening");
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {addr}")?;
            out.flush()?;
            drop(out);
            server.run(&stop)?;
            info!("stopped");
            Ok(())
        }
        Command::Restore {
            store,
            volume,
            output,
            json,
        } => {
            let st = existing_store(&store)?;
            let rep = st
                .restore(&volume, &output)
                .with_context(|| format!("restoring volume {volume}"))?;
            if json {
                let mut v = serde_json::to_value(&rep)?;
                v["output"] = output.display().to_string().into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "restored volume {} (ring {:#x}, seq {}) to {}: {} bytes, {} of data, {} journal records replayed",
                    rep.volume,
                    rep.ring_id,
                    rep.seq,
                    output.display(),
                    rep.bytes,
                    rep.data_bytes,
                    rep.replayed_records
                );
            }
            Ok(())
        }
        Command::Status { store, json } => {
            let st = existing_store(&store)?;
            let mut all = Vec::new();
            for v in st.volumes()? {
                all.push(
                    st.volume_status(&v)
                        .with_context(|| format!("volume {v}"))?,
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<24} {:>16} {:>18} {:>12} {:>12} {:>14} {:>8}",
                    "VOLUME",
                    "SIZE",
                    "RING_ID",
                    "DURABLE_SEQ",
                    "APPLIED_SEQ",
                    "JOURNAL_BYTES",
                    "SEGMENTS"
                );
                for s in all {
                    println!(
                        "{:<24} {:>16} {:>#18x} {:>12} {:>12} {:>14} {:>8}",
                        s.volume,
                        s.size_bytes,
                        s.ring_id,
                        s.durable_seq,
                        s.applied_seq,
                        s.journal_bytes,
                        s.segments
                    );
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port() {
        assert_eq!(listen_addr("127.0.0.1:1"), "127.0.0.1:1");
        assert_eq!(listen_addr("10.0.0.5"), "10.0.0.5:7420");
        assert_eq!(listen_addr("::1"), "[::1]:7420");
        assert_eq!(listen_addr("[::1]:9"), "[::1]:9");
        assert_eq!(listen_addr("backup"), "backup:7420");
        assert_eq!(listen_addr("backup:1"), "backup:1");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
