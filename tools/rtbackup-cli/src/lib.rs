//! What rtbackup's commands share at their edges, each generic part taken
//! from a well-kept crate:
//!
//! - [`config`]: `--config FILE` settings (TOML, via `toml`) turned into
//!   the command's own long options, so that the command line overrides
//!   them and clap checks them like typed ones;
//! - [`progress`]: a progress bar with rate and time left on a terminal
//!   (`indicatif`), plain progress lines otherwise;
//! - [`metrics`]: a Prometheus text endpoint (`prometheus-client`,
//!   `tiny_http`);
//! - [`logging`]: the one logging setup (`tracing-subscriber`) and the
//!   private umask of the daemons;
//! - [`size`]: the one size parser (`parse-size`);
//! - [`duration`]: the one duration parser (`humantime`).

pub mod config;
pub mod duration;
mod error;
pub mod logging;
pub mod metrics;
pub mod progress;
pub mod size;

pub use error::CliError;
