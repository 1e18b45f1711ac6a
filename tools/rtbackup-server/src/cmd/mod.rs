//! The command line of `rtbackup-server`, one file per subcommand (as a
//! library: the binary runs it, and rtbackup-docgen renders its man pages
//! and completions from it).

use anyhow::bail;
use clap::{Parser, Subcommand};
use rtbackup_store::Store;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod claim;
mod clients;
mod enroll;
mod init;
mod log;
mod points;
mod restore;
mod revoke;
mod serve;
mod status;

/// A store that must exist, and `--json`.
#[derive(Debug, clap::Args)]
pub(crate) struct StoreArgs {
    /// Store directory.
    #[arg(long)]
    store: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A volume of a store.
#[derive(Debug, clap::Args)]
pub(crate) struct VolumeArgs {
    /// Store directory.
    #[arg(long)]
    store: PathBuf,
    /// Volume name.
    #[arg(long)]
    volume: String,
}

/// Default TCP port.
pub const DEFAULT_PORT: u16 = 7420;

/// The rtbackup backup server.
#[derive(Debug, Parser)]
#[command(name = "rtbackup-server", version, about, args_override_self = true)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace; default: RUST_LOG, or
    /// info).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive record streams from agents into a store.
    #[command(args_override_self = true)]
    Serve(serve::Args),
    /// Create the store's certificate authority and the server's
    /// certificate (once per store), for `serve` and `enroll`.
    Init(init::Args),
    /// Issue a certificate for a client and print its credentials bundle
    /// (JSON; give it to `rtbackup-agent --credentials` on that host). The
    /// client may then use the volumes it creates, and only those.
    Enroll(enroll::Args),
    /// Give a volume to a client: one from before volumes had owners (no
    /// client's HELLO takes it), or a name reserved before its first
    /// stream. A volume another client owns is refused.
    Claim(claim::Args),
    /// Withdraw every certificate of a client: the server refuses them from
    /// the next connection on. Its volumes and their history stay.
    Revoke(revoke::Args),
    /// List the enrolled clients, their certificates and the volumes they
    /// own.
    Clients(clients::Args),
    /// Write the latest consistent image of a volume to a file or block
    /// device (safe while a server runs on the store).
    Restore(restore::Args),
    /// List the restore points of a volume: the base point, every
    /// consistency point (flush) held, and the marks.
    Points(points::Args),
    /// List the writes held in a volume's history (time, byte range,
    /// length, operation): what changed, and when.
    Log(log::Args),
    /// Show the volumes of a store.
    Status(status::Args),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    use clap::CommandFactory;
    let args = match rtbackup_cli::config::with_config_files(
        &Cli::command(),
        std::env::args_os().collect(),
        None,
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtbackup-server: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    if let Err(e) = rtbackup_cli::logging::init(cli.log_level.as_deref(), "RUST_LOG", "info") {
        eprintln!("rtbackup-server: {e}");
        return ExitCode::from(2);
    }
    rtbackup_cli::logging::private_files();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtbackup-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Serve(a) => a.run(),
        Command::Init(a) => a.run(),
        Command::Enroll(a) => a.run(),
        Command::Claim(a) => a.run(),
        Command::Revoke(a) => a.run(),
        Command::Clients(a) => a.run(),
        Command::Restore(a) => a.run(),
        Command::Points(a) => a.run(),
        Command::Log(a) => a.run(),
        Command::Status(a) => a.run(),
    }
}

/// `ADDR` with the default port when it has none.
pub fn listen_addr(s: &str) -> String {
    addr_with_port(s, DEFAULT_PORT)
}

/// Default port of the NBD export.
pub const NBD_PORT: u16 = 10809;

/// `ADDR` with `port` when it has none.
fn addr_with_port(s: &str, port: u16) -> String {
    if s.parse::<SocketAddr>().is_ok() {
        return s.to_owned();
    }
    if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return SocketAddr::new(ip, port).to_string();
    }
    if s.contains(':') {
        s.to_owned()
    } else {
        format!("{s}:{port}")
    }
}

/// Makes `client` the owner of `volume` in the store at `dir` (created if
/// need be), unless another client owns it.
fn give_volume(dir: &Path, volume: &str, client: &str) -> anyhow::Result<()> {
    let st = Store::open(dir)?;
    let owner = st.claim(volume, client)?;
    if owner != client {
        bail!("volume {volume} belongs to client {owner}");
    }
    Ok(())
}

fn existing_store(dir: &Path) -> anyhow::Result<Store> {
    if !dir.join("volumes").is_dir() {
        bail!("no rtbackup store at {}", dir.display());
    }
    Ok(Store::open(dir)?)
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
