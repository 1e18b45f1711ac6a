//! The command line: one file per subcommand.

mod attach;
mod detach;
mod mark;
mod rollback;
mod set;
mod status;
mod sync;
mod verify;
mod version;

use clap::{Parser, Subcommand};
use rtbackup_control::{Control, CONTROL_PATH};
use std::path::PathBuf;

/// Configure rtbackup real-time backup devices.
#[derive(Debug, Parser)]
#[command(name = "rtbackupctl", version, about, long_about = None)]
pub struct Cli {
    /// The module's control device.
    #[arg(long, global = true, default_value = CONTROL_PATH, value_name = "PATH")]
    control: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Attach(attach::Args),
    Detach(detach::Args),
    Mark(mark::Args),
    Rollback(rollback::Args),
    Set(set::Args),
    Status(status::Args),
    Sync(sync::Args),
    Verify(verify::Args),
    Version(version::Args),
}

impl Cli {
    /// Runs the subcommand.
    pub fn run(self) -> anyhow::Result<()> {
        let open = || Control::open_path(&self.control);
        match self.command {
            Command::Attach(a) => a.run(&open()?),
            Command::Detach(a) => a.run(&open()?),
            Command::Mark(a) => a.run(&open()?),
            Command::Rollback(a) => a.run(&open()?),
            Command::Set(a) => a.run(&open()?),
            Command::Status(a) => a.run(&open()?),
            Command::Sync(a) => a.run(&open()?),
            Command::Verify(a) => a.run(&open()?),
            Command::Version(a) => a.run(&self.control),
        }
    }
}

/// `--on-full` of `attach` and `set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnFullArg {
    Block,
    Track,
}

impl From<OnFullArg> for rtbackup_control::OnFull {
    fn from(a: OnFullArg) -> Self {
        match a {
            OnFullArg::Block => Self::Block,
            OnFullArg::Track => Self::Track,
        }
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// This host's name, for the server's logs.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// How `verify` and `rollback` reach the backup server: as an enrolled
/// client over TLS, or in plaintext to a server on this machine.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerAccess {
    /// This host's credentials from `rtbackup-server enroll` (TLS 1.3; the
    /// agent's --credentials).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "insecure_loopback_only"
    )]
    credentials: Option<PathBuf>,
    /// Plaintext to a server on this machine started with
    /// --insecure-loopback-only (demos only).
    #[arg(long, conflicts_with = "credentials")]
    insecure_loopback_only: bool,
}

impl ServerAccess {
    /// The credentials, read and checked; `None` for plaintext.
    pub(crate) fn credentials(&self) -> anyhow::Result<Option<rtbackup_tls::Credentials>> {
        match &self.credentials {
            Some(p) => Ok(Some(rtbackup_tls::Credentials::load(p)?)),
            None => Ok(None),
        }
    }
}
