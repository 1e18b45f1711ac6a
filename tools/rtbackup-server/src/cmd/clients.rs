//! `rtbackup-server clients`: the enrolled clients and their volumes.

use super::{existing_store, StoreArgs};

/// List the enrolled clients, their certificates and the volumes they
/// own.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    at: StoreArgs,
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            at: StoreArgs { store, json },
        } = self;
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
}
