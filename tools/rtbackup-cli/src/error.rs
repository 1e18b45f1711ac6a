//! The error type of this crate.

use std::path::PathBuf;

/// What can go wrong at a command's edge.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A settings file cannot be read.
    #[error("cannot read the settings file {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A settings file is not valid TOML, or a setting is not one of the
    /// command's options or has a value of the wrong kind.
    #[error("settings file {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// `--log-level` is not a valid filter.
    #[error("invalid log filter {filter:?}: {message}")]
    LogFilter {
        /// The filter given.
        filter: String,
        /// Why it is invalid.
        message: String,
    },
    /// `--config` without a file name.
    #[error("--config needs a file name")]
    ConfigMissingValue,
    /// The metrics endpoint cannot listen on its address.
    #[error("cannot serve metrics on {addr}: {message}")]
    MetricsListen {
        /// The address asked for.
        addr: String,
        /// Why.
        message: String,
    },
}
