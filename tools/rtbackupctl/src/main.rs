//! rtbackupctl: configure rtbackup devices.
//!
//! Exit status: 0 on success, 1 when the operation failed (the message on
//! stderr says why), 2 on a usage error.

use clap::Parser;
use rtbackupctl::Cli;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = rtbackup_cli::logging::init(None, "RTBACKUP_LOG", "warn") {
        eprintln!("rtbackupctl: {e}");
        return ExitCode::from(2);
    }
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtbackupctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
