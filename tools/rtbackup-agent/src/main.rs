//! rtbackup-agent: stream an rtbackup device's write journal to a backup
//! server.
//!
//! Exit status: 0 after SIGTERM/SIGINT or once the device was detached and
//! every record left in its ring was delivered, 1 on a fatal error (the
//! message on stderr says why), 2 on a usage error.

use anyhow::Context;
use clap::Parser;
use rtbackup_agent::cli::Cli;
use rtbackup_ring::Ring;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn main() -> ExitCode {
    let args = match rtbackup_agent::cli::args_with_config(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtbackup-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    if let Err(e) = rtbackup_cli::logging::init(cli.log_level.as_deref(), "RUST_LOG", "info") {
        eprintln!("rtbackup-agent: {e}");
        return ExitCode::from(2);
    }
    rtbackup_cli::logging::private_files();
    match agent(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtbackup-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn agent(cli: &Cli) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while stopping exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let client = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let cfg = cli.config(client)?;
    if cfg.credentials.is_none() {
        tracing::warn!(
            server = %cfg.server,
            "INSECURE: --insecure-loopback-only: plaintext, unauthenticated (demos on one machine only)"
        );
    }
    io_flusher();
    let ring =
        Ring::open(&cli.device).with_context(|| format!("opening the ring of {}", cli.device))?;
    let _metrics = match &cli.metrics {
        Some(addr) => {
            let mut registry = prometheus_client::registry::Registry::with_prefix("rtbackup_agent");
            cfg.telemetry.register(&mut registry);
            let telemetry = cfg.telemetry.clone();
            let device = ring.device().device.clone();
            Some(rtbackup_cli::metrics::MetricsServer::start(
                addr,
                registry,
                move || match rtbackup_control::Control::open().and_then(|c| c.resolve(&device)) {
                    Ok(dev) => telemetry.sample(&dev.ring),
                    Err(e) => tracing::warn!("metrics: cannot read the ring's state: {e}"),
                },
            )?)
        }
        None => None,
    };
    tracing::info!(
        device = %ring.device().device,
        ring_id = format_args!("{:#x}", ring.ring_id()),
        ring_bytes = ring.data_size(),
        tail_seq = ring.tail_seq(),
        head_seq = ring.head_seq(),
        server = %cfg.server,
        volume = %cfg.volume,
        "rtbackup-agent {} starting",
        rtbackup_agent::AGENT_VERSION
    );
    match rtbackup_agent::run(&ring, &cfg, &stop)? {
        rtbackup_agent::Exit::Stopped => tracing::info!("stopped"),
        // `run` said that everything was delivered.
        rtbackup_agent::Exit::Detached { .. } => {}
    }
    // Closing the ring's descriptor (dropping `ring`) lets the kernel free
    // it, after everything was delivered and acknowledged.
    drop(ring);
    Ok(())
}

/// `PR_SET_IO_FLUSHER` (include/uapi/linux/prctl.h; not in the libc crate
/// for Linux yet).
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Keeps the agent running when memory is short and what the kernel must
/// write back goes through the protected disk (swap on it, or its page
/// cache): its memory is locked, so no page of it waits on the disk it
/// drains, and as an I/O flusher (`PR_SET_IO_FLUSHER`) its allocations
/// never recurse into writeback. Either failing (no CAP_SYS_RESOURCE or
/// CAP_IPC_LOCK) is reported, not fatal.
fn io_flusher() {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    if let Err(e) = mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        tracing::warn!("cannot lock the agent's memory ({e}): under memory pressure it may wait on the disk it drains");
    }
    // SAFETY: prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) passes no pointers and
    // changes only this process's allocation flags.
    let r = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
    if r != 0 {
        tracing::warn!(
            "cannot mark the agent as an I/O flusher ({}): under memory pressure its allocations may wait on writeback",
            std::io::Error::last_os_error()
        );
    }
}
