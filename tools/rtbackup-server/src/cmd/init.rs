//! `rtbackup-server init`: create the store's certificate authority.

use anyhow::Context;
use std::path::PathBuf;

/// Create the store's certificate authority and the server's
/// certificate (once per store), for `serve` and `enroll`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store directory (created if missing).
    #[arg(long)]
    store: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self { store, json } = self;
        std::fs::create_dir_all(&store).with_context(|| format!("creating {}", store.display()))?;
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
}
