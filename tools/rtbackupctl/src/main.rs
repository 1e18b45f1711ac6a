//! rtbackupctl: configure rtbackup devices.
//!
//! Exit status: 0 on success, 1 when the operation failed (the message on
//! stderr says why), 2 on a usage error.

use clap::Parser;
use rtbackupctl::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RTBACKUP_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtbackupctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
