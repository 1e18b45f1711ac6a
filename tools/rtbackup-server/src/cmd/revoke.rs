//! `rtbackup-server revoke`: withdraw a client's certificates and end its sessions.

use std::path::PathBuf;

/// Withdraw every certificate of a client: the server refuses them from
/// the next connection on. Its volumes and their history stay.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    store: PathBuf,
    /// The client's name.
    client: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            store,
            client,
            json,
        } = self;
        let n = rtbackup_tls::Pki::open(&store)?.revoke(&client)?;
        if json {
            let v = serde_json::json!({ "client": client, "revoked_certificates": n });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("revoked {n} certificate(s) of client {client}");
        }
        Ok(())
    }
}
