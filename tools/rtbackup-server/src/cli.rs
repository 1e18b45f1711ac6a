//! Command line of `rtbackup-server`.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rtbackup_cli::progress::{Lines, Progress};
use rtbackup_store::{
    format_time, parse_duration, LocalDirStore, PointInfo, PointSpec, RestoreProgress, Retention,
    Store, VolumeOptions,
};
use tracing::info;

use crate::server::Server;

/// Default TCP port.
pub const DEFAULT_PORT: u16 = 7420;

/// The rtbackup backup server.
#[derive(Debug, Parser)]
#[command(name = "rtbackup-server", version, about, args_override_self = true)]
pub struct Cli {
    /// Log level (error, warn, info, debug, trace; default: RUST_LOG, or
    /// info).
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Receive record streams from agents into a store.
    #[command(args_override_self = true)]
    Serve {
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
    },
    /// Create the store's certificate authority and the server's
    /// certificate (once per store), for `serve` and `enroll`.
    Init {
        /// Store directory (created if missing).
        #[arg(long)]
        store: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Issue a certificate for a client and print its credentials bundle
    /// (JSON; give it to `rtbackup-agent --credentials` on that host). The
    /// client may then use the volumes it creates, and only those.
    Enroll {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// The client's name (1 to 64 of A-Z a-z 0-9 . _ -).
        client: String,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = rtbackup_tls::DEFAULT_CLIENT_DAYS, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Write the bundle to this new file (mode 0600) instead of
        /// standard output (which must then not be a terminal: the bundle
        /// holds a private key).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Also write the certificate as PEM files into this new directory
        /// (mode 0700): ca-cert.pem, client-cert.pem and client-key.pem, as
        /// qemu's tls-creds-x509 and nbd-client (-A, -F, -K) take them.
        #[arg(long, value_name = "DIR")]
        pem_dir: Option<PathBuf>,
        /// An administrator: its certificates read every client's volumes
        /// over NBD (others read their own only).
        #[arg(long)]
        admin: bool,
        /// Give this volume name to the client now (repeat for more), so
        /// that no other client can take the name first.
        #[arg(long = "volume", value_name = "NAME")]
        volumes: Vec<String>,
        /// Volumes the client may own (default 16; kept from an earlier
        /// enrolment unless given).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
        max_volumes: Option<u32>,
        /// Bytes of history its volumes may hold together (512G; default
        /// no limit): past it, nothing more is acknowledged, and its hosts
        /// keep the records in their rings.
        #[arg(long, value_name = "SIZE", value_parser = rtbackup_cli::size::parse_bytes)]
        max_bytes: Option<u64>,
    },
    /// Give a volume to a client: one from before volumes had owners (no
    /// client's HELLO takes it), or a name reserved before its first
    /// stream. A volume another client owns is refused.
    Claim {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// The volume.
        #[arg(long)]
        volume: String,
        /// The client that gets it.
        client: String,
    },
    /// Withdraw every certificate of a client: the server refuses them from
    /// the next connection on. Its volumes and their history stay.
    Revoke {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// The client's name.
        client: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the enrolled clients, their certificates and the volumes they
    /// own.
    Clients {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the latest consistent image of a volume to a file or block
    /// device (safe while a server runs on the store).
    Restore {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Volume name.
        #[arg(long)]
        volume: String,
        /// Output file (created or truncated; written sparse) or block
        /// device.
        #[arg(long)]
        output: PathBuf,
        /// Restore the newest consistency point at or before POINT: a time
        /// (2026-11-26T05:00:00Z, "10 minutes ago"), a seq (1234 or
        /// seq:1234), mark:NAME, id:ID (as `points` lists it), or latest.
        /// A mark name or seq that names several points is an error that
        /// lists them by id.
        #[arg(long, value_name = "POINT", default_value = "latest")]
        at: PointSpec,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the restore points of a volume: the base point, every
    /// consistency point (flush) held, and the marks.
    Points {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Volume name.
        #[arg(long)]
        volume: String,
        /// Only points with a mark.
        #[arg(long)]
        marks: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the writes held in a volume's history (time, byte range,
    /// length, operation): what changed, and when.
    Log {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Volume name.
        #[arg(long)]
        volume: String,
        /// Only writes since POINT (a time: those submitted at or after it;
        /// seq:N or mark:NAME: those after that point).
        #[arg(long, value_name = "POINT")]
        since: Option<PointSpec>,
        /// Print JSON (one array).
        #[arg(long)]
        json: bool,
    },
    /// Show the volumes of a store.
    Status {
        /// Store directory.
        #[arg(long)]
        store: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    use clap::CommandFactory;
    let args = match rtbackup_cli::config::with_config_files(
        &Cli::command(),
        std::env::args_os().collect(),
        None,
    ) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtbackup-server: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    if let Err(e) = rtbackup_cli::logging::init(cli.log_level.as_deref(), "RUST_LOG", "info") {
        eprintln!("rtbackup-server: {e}");
        return ExitCode::from(2);
    }
    rtbackup_cli::logging::private_files();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtbackup-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ADDR` with the default port when it has none.
pub fn listen_addr(s: &str) -> String {
    addr_with_port(s, DEFAULT_PORT)
}

/// Default port of the NBD export.
pub const NBD_PORT: u16 = 10809;

/// `ADDR` with `port` when it has none.
fn addr_with_port(s: &str, port: u16) -> String {
    if s.parse::<SocketAddr>().is_ok() {
        return s.to_owned();
    }
    if let Ok(ip) = s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return SocketAddr::new(ip, port).to_string();
    }
    if s.contains(':') {
        s.to_owned()
    } else {
        format!("{s}:{port}")
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

/// Makes `client` the owner of `volume` in the store at `dir` (created if
/// need be), unless another client owns it.
fn give_volume(dir: &Path, volume: &str, client: &str) -> anyhow::Result<()> {
    let st = Store::open(dir)?;
    let owner = st.claim(volume, client)?;
    if owner != client {
        bail!("volume {volume} belongs to client {owner}");
    }
    Ok(())
}

/// Writes `creds` as qemu's and nbd-client's PEM files into the new
/// directory `dir` (mode 0700; the key 0600).
fn write_pem_dir(dir: &Path, creds: &rtbackup_tls::Credentials) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    for (name, pem, mode) in [
        ("ca-cert.pem", &creds.ca, 0o644),
        ("client-cert.pem", &creds.certificate, 0o644),
        ("client-key.pem", &creds.key, 0o600),
    ] {
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        f.write_all(pem.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A timeout: a duration above zero.
fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: a timeout must be above zero")),
        d => Ok(d),
    }
}

fn print_points(points: &[PointInfo]) {
    println!(
        "{:<16} {:<32} {:<32} {:>18} {:>12} {:<10} MARKS",
        "ID", "TIME", "RECEIVED", "RING_ID", "SEQ", "KIND"
    );
    for p in points {
        let kind = serde_json::to_value(p.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{:<16} {:<32} {:<32} {:>#18x} {:>12} {:<10} {}",
            p.id,
            p.time,
            p.received,
            p.ring_id,
            p.seq,
            kind,
            p.marks.join(",")
        );
    }
}

fn existing_store(dir: &Path) -> anyhow::Result<Store> {
    if !dir.join("volumes").is_dir() {
        bail!("no rtbackup store at {}", dir.display());
    }
    Ok(Store::open(dir)?)
}

fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Init { store, json } => {
            std::fs::create_dir_all(&store)
                .with_context(|| format!("creating {}", store.display()))?;
            rtbackup_tls::Pki::init(&store)?;
            let pki = store.join(rtbackup_tls::PKI_DIR);
            if json {
                let v = serde_json::json!({ "store": store, "pki": pki });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "certificate authority created in {}; enroll clients with `rtbackup-server enroll --store {} NAME`",
                    pki.display(),
                    store.display()
                );
            }
            Ok(())
        }
        Command::Enroll {
            store,
            client,
            days,
            output,
            pem_dir,
            admin,
            volumes,
            max_volumes,
            max_bytes,
        } => {
            use std::io::IsTerminal;
            if output.is_none() && std::io::stdout().is_terminal() {
                bail!(
                    "the bundle holds a private key: not printed to a terminal; \
                     use --output FILE, or redirect standard output"
                );
            }
            let pki = rtbackup_tls::Pki::open(&store)?;
            rtbackup_tls::validate_client_name(&client)?;
            for v in &volumes {
                give_volume(&store, v, &client)?;
            }
            let creds = pki.enroll(&client, days)?;
            if max_volumes.is_some() || max_bytes.is_some() {
                let mut limits = pki.limits(&client)?;
                if let Some(n) = max_volumes {
                    limits.max_volumes = n;
                }
                if max_bytes.is_some() {
                    limits.max_bytes = max_bytes;
                }
                pki.set_limits(&client, limits)?;
            }
            if admin {
                pki.make_admin(&client)?;
            }
            if let Some(dir) = &pem_dir {
                write_pem_dir(dir, &creds)?;
                eprintln!("PEM files of client {client} written to {}", dir.display());
            }
            let json = creds.to_json() + "\n";
            match output {
                Some(path) => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    f.write_all(json.as_bytes())
                        .and_then(|()| f.sync_all())
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!(
                        "credentials of client {client} written to {} (valid {days} days)",
                        path.display()
                    );
                }
                None => std::io::stdout().write_all(json.as_bytes())?,
            }
            Ok(())
        }
        Command::Claim {
            store,
            volume,
            client,
        } => {
            rtbackup_tls::validate_client_name(&client)?;
            give_volume(&store, &volume, &client)?;
            println!("volume {volume} belongs to client {client}");
            Ok(())
        }
        Command::Revoke {
            store,
            client,
            json,
        } => {
            let n = rtbackup_tls::Pki::open(&store)?.revoke(&client)?;
            if json {
                let v = serde_json::json!({ "client": client, "revoked_certificates": n });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("revoked {n} certificate(s) of client {client}");
            }
            Ok(())
        }
        Command::Clients { store, json } => {
            let clients = rtbackup_tls::Pki::open(&store)?.clients()?;
            let st = existing_store(&store)?;
            let mut rows = Vec::new();
            for c in clients {
                let mut volumes = Vec::new();
                for v in st.volumes()? {
                    if st.owner(&v)?.as_deref() == Some(c.name.as_str()) {
                        volumes.push(v);
                    }
                }
                rows.push((c, volumes));
            }
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(c, vols)| {
                        serde_json::json!({
                            "client": c.name,
                            "certificates": c.certificates,
                            "revoked": c.revoked,
                            "admin": c.admin,
                            "volumes": vols,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<24} {:>6} {:>8} {:>5}  VOLUMES",
                    "CLIENT", "CERTS", "REVOKED", "ADMIN"
                );
                for (c, vols) in &rows {
                    println!(
                        "{:<24} {:>6} {:>8} {:>5}  {}",
                        c.name,
                        c.certificates.len(),
                        c.revoked.len(),
                        if c.admin { "yes" } else { "no" },
                        if vols.is_empty() {
                            "-".to_owned()
                        } else {
                            vols.join(",")
                        }
                    );
                }
            }
            Ok(())
        }
        Command::Serve {
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
            apply_delay,
            nbd_listen,
        } => {
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
                Some(pki) => Some((pki.server_config()?, pki.clone())),
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
        Command::Restore {
            store,
            volume,
            output,
            at,
            json,
        } => {
            let st = existing_store(&store)?;
            let mut bar: Option<Progress> = None;
            let rep = st
                .restore_at_with(&volume, &output, &at, &mut |p| match p {
                    RestoreProgress::Image { done, total } => bar
                        .get_or_insert_with(|| {
                            Progress::new(format!("restore {volume}"), total, Lines::Stderr)
                        })
                        .set(done),
                    RestoreProgress::Journal { records } => {
                        if let Some(b) = bar.take() {
                            b.finish();
                        }
                        if records.is_multiple_of(64 * 1024) {
                            eprintln!("restore {volume}: {records} journal records replayed");
                        }
                    }
                })
                .with_context(|| format!("restoring volume {volume} at {at}"))?;
            if let Some(b) = bar {
                b.finish();
            }
            if json {
                let mut v = serde_json::to_value(&rep)?;
                v["output"] = output.display().to_string().into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let marks = if rep.point.marks.is_empty() {
                    String::new()
                } else {
                    format!(", mark {}", rep.point.marks.join(","))
                };
                println!(
                    "restored volume {} as of {} (ring {:#x}, seq {}{marks}) to {}: {} bytes, {} of data, {} journal records replayed{}",
                    rep.volume,
                    rep.point.time,
                    rep.ring_id,
                    rep.seq,
                    output.display(),
                    rep.bytes,
                    rep.data_bytes,
                    rep.replayed_records,
                    if rep.from_base { " onto the base image" } else { "" }
                );
            }
            Ok(())
        }
        Command::Points {
            store,
            volume,
            marks,
            json,
        } => {
            let st = existing_store(&store)?;
            let mut points = st
                .points(&volume)
                .with_context(|| format!("listing the points of volume {volume}"))?;
            if marks {
                points.retain(|p| !p.marks.is_empty());
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&points)?);
            } else {
                print_points(&points);
            }
            Ok(())
        }
        Command::Log {
            store,
            volume,
            since,
            json,
        } => {
            let st = existing_store(&store)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut first = true;
            if json {
                write!(out, "[")?;
            } else {
                writeln!(
                    out,
                    "{:<32} {:>18} {:>12} {:<12} {:>25} {:>12}",
                    "TIME", "RING_ID", "SEQ", "OP", "SECTORS", "BYTES"
                )?;
            }
            let mut failed: Option<std::io::Error> = None;
            st.log(&volume, since.as_ref(), |r| {
                let res = if json {
                    let mut v = serde_json::json!({
                        "time": format_time(r.time_ns),
                        "time_ns": r.time_ns,
                        "ring_id": r.ring_id,
                        "seq": r.seq,
                        "op": rtbackup_proto::op_name(r.op),
                        "fua": r.flags & rtbackup_proto::RTB_REC_FUA != 0,
                        "preflush": r.flags & rtbackup_proto::RTB_REC_PREFLUSH != 0,
                        "start": r.start,
                        "length": r.len,
                        "sector": r.start / 512,
                        "sectors": r.len.div_ceil(512),
                    });
                    if let Some(c) = r.consistent_seq {
                        v["consistent_seq"] = c.into();
                    }
                    let sep = if first { "\n" } else { ",\n" };
                    write!(out, "{sep}  {v}")
                } else {
                    writeln!(
                        out,
                        "{:<32} {:>#18x} {:>12} {:<12} {:>25} {:>12}",
                        format_time(r.time_ns),
                        r.ring_id,
                        r.seq,
                        rtbackup_proto::op_name(r.op),
                        if r.len == 0 {
                            "-".to_owned()
                        } else {
                            format!("{}+{}", r.start / 512, r.len.div_ceil(512))
                        },
                        r.len
                    )
                };
                first = false;
                match res {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(e) => {
                        failed = Some(e);
                        ControlFlow::Break(())
                    }
                }
            })
            .with_context(|| format!("listing the writes of volume {volume}"))?;
            if let Some(e) = failed {
                // A closed pipe (`| head`) just ends the listing.
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e).context("writing the log");
            }
            if json {
                writeln!(out, "{}]", if first { "" } else { "\n" })?;
            }
            out.flush()?;
            Ok(())
        }
        Command::Status { store, json } => {
            let st = existing_store(&store)?;
            if rtbackup_tls::Pki::exists(&store) {
                let pki = rtbackup_tls::Pki::open(&store)?;
                for c in pki.expiring(crate::metrics::EXPIRY_WARNING)? {
                    let left = crate::metrics::seconds_left(c.not_after);
                    let when = if left < 0 {
                        format!("expired {} days ago", -left / 86_400)
                    } else {
                        format!("expires in {} days", left / 86_400)
                    };
                    eprintln!(
                        "warning: a certificate of client {} {when} ({}); enroll it again",
                        c.client, c.fingerprint
                    );
                }
                for c in pki.clients()? {
                    let limits = pki.limits(&c.name)?;
                    let owned = st.volumes_of(&c.name)?;
                    if owned.len() >= limits.max_volumes as usize {
                        eprintln!(
                            "warning: client {} owns {} volumes, its limit: a new one is refused",
                            c.name,
                            owned.len()
                        );
                    }
                    let Some(max) = limits.max_bytes else {
                        continue;
                    };
                    let mut held = 0u64;
                    for v in owned.iter().filter(|v| st.exists(v).unwrap_or(false)) {
                        held = held.saturating_add(st.volume_status(v)?.journal_bytes);
                    }
                    if held >= max {
                        eprintln!(
                            "warning: client {} holds {held} bytes of history, its limit is {max}: \
                             nothing more of it is acknowledged",
                            c.name
                        );
                    }
                }
            }
            let mut all = Vec::new();
            for v in st.volumes()? {
                all.push(
                    st.volume_status(&v)
                        .with_context(|| format!("volume {v}"))?,
                );
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<24} {:>16} {:>18} {:>12} {:>12} {:>14} {:>8} RESYNC",
                    "VOLUME",
                    "SIZE",
                    "RING_ID",
                    "DURABLE_SEQ",
                    "APPLIED_SEQ",
                    "JOURNAL_BYTES",
                    "SEGMENTS"
                );
                for s in all {
                    let resync = match s.resync_since_seq {
                        Some(seq) => format!("since seq {seq}"),
                        None => "-".to_owned(),
                    };
                    println!(
                        "{:<24} {:>16} {:>#18x} {:>12} {:>12} {:>14} {:>8} {resync}",
                        s.volume,
                        s.size_bytes,
                        s.ring_id,
                        s.durable_seq,
                        s.applied_seq,
                        s.journal_bytes,
                        s.segments
                    );
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_port() {
        assert_eq!(listen_addr("127.0.0.1:1"), "127.0.0.1:1");
        assert_eq!(listen_addr("10.0.0.5"), "10.0.0.5:7420");
        assert_eq!(listen_addr("::1"), "[::1]:7420");
        assert_eq!(listen_addr("[::1]:9"), "[::1]:9");
        assert_eq!(listen_addr("backup"), "backup:7420");
        assert_eq!(listen_addr("backup:1"), "backup:1");
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
