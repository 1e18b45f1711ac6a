//! `rtbackup-server enroll`: issue a client certificate, with its limits and volumes.

use super::give_volume;
use anyhow::{bail, Context};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Issue a certificate for a client and print its credentials bundle
/// (JSON; give it to `rtbackup-agent --credentials` on that host). The
/// client may then use the volumes it creates, and only those.
#[derive(Debug, clap::Args)]
pub struct Args {
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
    /// qemu's tls-creds-x509 and nbd-client (-cacertfile, -certfile,
    /// -keyfile) take them.
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
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            store,
            client,
            days,
            output,
            pem_dir,
            admin,
            volumes,
            max_volumes,
            max_bytes,
        } = self;
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
