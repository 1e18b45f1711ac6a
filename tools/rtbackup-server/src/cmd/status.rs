//! `rtbackup-server status`: the volumes of a store, and warnings about clients.

use super::{existing_store, StoreArgs};
use anyhow::Context;

/// Show the volumes of a store.
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
                let held = st.journal_bytes_of(&c.name, |_| None)?;
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
