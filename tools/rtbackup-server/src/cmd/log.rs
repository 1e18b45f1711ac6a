//! `rtbackup-server log`: a volume's journal records (the audit log).

use super::{existing_store, VolumeArgs};
use anyhow::Context;
use rtbackup_store::{format_time, PointSpec};
use std::io::Write;
use std::ops::ControlFlow;

/// List the writes held in a volume's history (time, byte range,
/// length, operation): what changed, and when.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    vol: VolumeArgs,
    /// Only writes since POINT (a time: those submitted at or after it;
    /// seq:N or mark:NAME: those after that point).
    #[arg(long, value_name = "POINT")]
    since: Option<PointSpec>,
    /// Print JSON (one array).
    #[arg(long)]
    json: bool,
}

impl Args {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let Self {
            vol: VolumeArgs { store, volume },
            since,
            json,
        } = self;
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
}
