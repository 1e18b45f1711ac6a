//! The one logging setup of rtbackup's commands: `tracing` to standard
//! error, coloured on a terminal, filtered by the command's `--log-level`
//! if given, else by an environment variable, else by a default.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::CliError;

/// Installs the subscriber: `level` (the command line) wins over the
/// environment variable `env`, which wins over `default`.
pub fn init(level: Option<&str>, env: &str, default: &str) -> Result<(), CliError> {
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| CliError::LogFilter {
            filter: l.to_owned(),
            message: e.to_string(),
        })?,
        None => EnvFilter::try_from_env(env).unwrap_or_else(|_| EnvFilter::new(default)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

/// Files and directories this process creates are its user's alone
/// (umask 077), whatever umask it was started with: a store, a spool and
/// their keys hold other hosts' data.
pub fn private_files() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}
