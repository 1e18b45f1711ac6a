//! rtbackupctl's command line, as a library: the binary runs it, and
//! rtbackup-docgen renders its man pages and completions from it.

mod cmd;

pub use cmd::Cli;
