//! Puts a mark in the record stream of DEVICE with the bare `RTB_IOC_MARK`
//! ioctl: no flush before it, unlike `rtbackupctl mark` (whose flush would
//! wait in a full ring as a writer does). 62-on-full kills it while it
//! waits for room, to check that a killed mark fails and leaves the ring
//! recording (issue 16, item 10).
//!
//! Usage: rtb-mark DEVICE NAME. Prints the mark's seq. Exit status 0 when
//! the mark was recorded, 1 otherwise, 2 on a usage error.

use rtbackup_control::Control;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [device, name] = args.as_slice() else {
        eprintln!("usage: rtb-mark DEVICE NAME");
        return ExitCode::from(2);
    };
    let marked =
        Control::open().and_then(|c| c.resolve(device).and_then(|d| c.mark(d.index, name)));
    match marked {
        Ok(seq) => {
            println!("{seq}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rtb-mark: {e}");
            ExitCode::FAILURE
        }
    }
}
