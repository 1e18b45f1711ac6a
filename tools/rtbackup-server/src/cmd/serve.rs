//! `rtbackup-server serve`: receive record streams from agents into a store.

use super::{addr_with_port, listen_addr, NBD_PORT};
use crate::server::Server;
use anyhow::{bail, Context};
use rtbackup_cli::duration::parse_duration;
use rtbackup_store::{LocalDirStore, Retention, Store, VolumeOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tracing::info;

/// Receive record streams from agents into a store.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Read settings from this TOML file: each key a long option of
    /// this command without its dashes (store = "/var/lib/rtbackup");
    /// options on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve Prometheus text metrics on http://ADDR/metrics
    /// (connections, per volume: records received, journal size,
    /// durable seq, last restore point). No authentication: keep it on
    /// loopback or a monitoring network.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Store directory (created if missing).
    #[arg(long)]
    store: PathBuf,
    /// Address to listen on: IP:PORT, IP, or HOST[:PORT] (port 7420 by
    /// default). Every connection is TLS 1.3 with a client certificate
    /// from `enroll` (the store needs `init` first).
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: String,
    /// No TLS: plaintext, unauthenticated connections, every client
    /// may use every volume. For demos on one machine only: refused
    /// unless --listen is a loopback address.
    #[arg(long)]
    insecure_loopback_only: bool,
    /// Start a new journal segment after this many MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    segment_mib: u64,
    /// Authenticated connections served at once; more are refused
    /// (ERROR too-many-connections) until some end. Connections still
    /// in their TLS handshake take none of these slots (at most 64 at
    /// once; a new one ends the oldest).
    #[arg(long, default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536))]
    max_connections: usize,
    /// A peer that has not finished its TLS handshake this long after
    /// connecting is cut off, however slowly it keeps sending.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_timeout)]
    handshake_timeout: std::time::Duration,
    /// Keep every restore point of this last span of time (7d, 12h,
    /// 90min; "forever" for no limit); older history is folded into
    /// each volume's base image.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_keep)]
    keep: KeepTime,
    /// Keep at most about this much journal per volume (100G, 512M),
    /// folding the oldest history first; whichever of --keep and
    /// --keep-size folds more wins.
    #[arg(long, value_name = "SIZE", value_parser = rtbackup_cli::size::parse_bytes)]
    keep_size: Option<u64>,
    /// History younger than this is never folded by --keep-size,
    /// however much a host writes (default: the --keep window; with
    /// --keep forever, size folds nothing).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_size_min_age: Option<std::time::Duration>,
    /// Address of the read-only NBD export of past states (export
    /// VOLUME@POINT, e.g. db1@mark:before-upgrade), or "none" (the
    /// default). Clients start TLS with a certificate of the store's CA
    /// and read their own volumes only (an `enroll --admin`
    /// certificate, all of them); without TLS (--insecure-loopback-only)
    /// loopback only. Port 10809 unless given.
    #[arg(long, value_name = "ADDR", default_value = "none")]
    nbd_listen: String,
    /// Keep each volume's image this far behind the stream (a delayed
    /// replica: 1h); restores of any point are unaffected.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    apply_delay: std::time::Duration,
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            config: _,
            metrics,
            store,
            listen,
            insecure_loopback_only,
            segment_mib,
            max_connections,
            handshake_timeout,
            keep,
            keep_size,
            keep_size_min_age,
            nbd_listen,
            apply_delay,
        } = self;
        let opts = VolumeOptions {
            segment_bytes: segment_mib << 20,
            retention: Retention {
                keep: keep.0,
                keep_bytes: keep_size,
                size_min_age: keep_size_min_age,
            },
            apply_delay,
            ..VolumeOptions::default()
        };
        let st = Store::with_segment_store(
            &store,
            Arc::new(LocalDirStore::new(store.join("sealed"))),
            opts,
        )?;
        raise_descriptor_limit();
        let nbd = match nbd_listen.as_str() {
            "none" => None,
            a => {
                let a = addr_with_port(a, NBD_PORT);
                Some(
                    std::net::TcpListener::bind(&a)
                        .with_context(|| format!("listening for NBD on {a}"))?,
                )
            }
        };
        let nbd_store = st.clone();
        let listen = listen_addr(&listen);
        let tls = if insecure_loopback_only {
            let addrs: Vec<std::net::SocketAddr> =
                std::net::ToSocketAddrs::to_socket_addrs(&listen)
                    .with_context(|| format!("resolving {listen}"))?
                    .collect();
            if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
                bail!(
                    "--insecure-loopback-only refuses to listen on {listen}: not a loopback address; \
                     use TLS (`rtbackup-server init`, `enroll`) on any network"
                );
            }
            tracing::warn!(
                %listen,
                "INSECURE: no TLS, no authentication: any local process may stream to, verify or roll back \
                 from any volume (--insecure-loopback-only; for demos only)"
            );
            None
        } else {
            Some(rtbackup_tls::Pki::open(&store).context(
                "the server needs TLS credentials (or --insecure-loopback-only for a demo on 127.0.0.1)",
            )?)
        };
        let mut server = Server::bind(st, &listen)?
            .max_connections(max_connections)
            .handshake_timeout(handshake_timeout)?;
        // The NBD export takes the server's TLS, or is plaintext on
        // loopback only.
        let nbd_tls = match &tls {
            Some(pki) => Some((pki.nbd_server_config()?, pki.clone())),
            None => None,
        };
        if let (Some(l), None) = (&nbd, &nbd_tls) {
            let a = l.local_addr()?;
            if !a.ip().is_loopback() {
                bail!("--insecure-loopback-only refuses NBD on {a}: not a loopback address");
            }
        }
        let metrics_pki = tls.clone();
        if let Some(pki) = tls {
            server = server.with_tls(pki)?;
        }
        let addr = server.local_addr()?;
        let metrics = match &metrics {
            Some(a) => Some(crate::metrics::start(
                a,
                nbd_store.clone(),
                server.open_volumes(),
                metrics_pki,
                server.stats(),
            )?),
            None => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&stop))
                .context("installing signal handlers")?;
        }
        info!(%addr, store = %store.display(), "listening");
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        let nbd_thread = match nbd {
            Some(l) => {
                let nbd_addr = l.local_addr()?;
                info!(%nbd_addr, "NBD exports of past states");
                writeln!(out, "nbd on {nbd_addr}")?;
                let stop = Arc::clone(&stop);
                Some(
                    std::thread::Builder::new()
                        .name("nbd".into())
                        .spawn(move || crate::nbd::run(l, nbd_store, nbd_tls, &stop))
                        .context("starting the NBD thread")?,
                )
            }
            None => None,
        };
        if let Some(m) = &metrics {
            writeln!(out, "metrics on {}", m.addr())?;
        }
        out.flush()?;
        drop(out);
        let r = server.run(&stop);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = nbd_thread {
            match t.join() {
                Ok(Err(e)) => tracing::error!("NBD: {e:#}"),
                Err(_) => tracing::error!("the NBD thread panicked"),
                Ok(Ok(())) => {}
            }
        }
        drop(metrics);
        r?;
        info!("stopped");
        Ok(())
    }
}

/// `--keep`: a duration or "forever".
#[derive(Debug, Clone, Copy)]
pub struct KeepTime(Option<std::time::Duration>);

fn parse_keep(s: &str) -> Result<KeepTime, String> {
    if s == "forever" {
        return Ok(KeepTime(None));
    }
    parse_duration(s).map(|d| KeepTime(Some(d)))
}

/// Raises the soft limit of open files to the hard one: every open volume
/// holds about 7 descriptors (the unit also sets LimitNOFILE).
fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(soft, hard, "cannot raise the open files limit: {e}"),
        },
        Ok((soft, _)) => info!(limit = soft, "open files limit"),
        Err(e) => tracing::warn!("cannot read the open files limit: {e}"),
    }
}

/// A timeout: a duration above zero.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: a timeout must be above zero")),
        d => Ok(d),
    }
}
