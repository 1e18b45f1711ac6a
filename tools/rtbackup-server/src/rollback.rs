//! Serving a rollback: the byte ranges of a volume changed after a point,
//! with their contents at that point, so that `rtbackupctl rollback` can
//! bring the device back by writing only what changed
//! (Documentation/protocol.rst, "Rollback").

use std::net::SocketAddr;
use std::sync::Mutex;

use rtbackup_proto::{error_code, Frame, RollbackDone, RollbackPlan, RollbackRequest};
use rtbackup_store::Store;
use tracing::info;

use crate::server::{open_point_for_client, send_frame, ReadAt, SessionError};

/// Data bytes per EXTENT frame.
const EXTENT_CHUNK: u64 = 1 << 20;

/// Answers a ROLLBACK: PLAN, the EXTENT frames (unless a dry run), DONE.
pub(crate) fn serve_rollback(
    store: &Store,
    req: &RollbackRequest,
    writer: &Mutex<&rtbackup_tls::Link>,
    peer: SocketAddr,
) -> Result<(), SessionError> {
    let reader = open_point_for_client(
        store,
        "ROLLBACK",
        req.protocol,
        &req.volume,
        req.size_bytes,
        req.point.parse().map(ReadAt::Point),
        error_code::BAD_VOLUME,
    )?;
    let extents = reader.changed_extents()?;
    let bytes: u64 = extents.iter().map(|(a, b)| b - a).sum();
    let p = reader.point();
    info!(
        %peer, volume = req.volume, client = req.client, point = %p.time, seq = p.seq,
        extents = extents.len(), bytes, dry_run = req.dry_run, "rollback"
    );
    let send = |f: &Frame| send_frame(writer, f);
    send(&Frame::Plan(RollbackPlan {
        time: p.time.clone(),
        ring_id: p.ring_id,
        seq: p.seq,
        marks: p.marks.clone(),
        extents: extents.len() as u64,
        bytes,
    }))?;
    let mut frames = 0u64;
    let mut sent = 0u64;
    if !req.dry_run {
        let mut buf = Vec::new();
        for (a, b) in extents {
            let mut off = a;
            while off < b {
                let n = (b - off).min(EXTENT_CHUNK);
                buf.resize(n as usize, 0);
                reader.read_at(&mut buf, off)?;
                send(&Frame::Extent {
                    offset: off,
                    data: std::mem::take(&mut buf),
                })?;
                frames += 1;
                sent += n;
                off += n;
            }
        }
    }
    send(&Frame::Done(RollbackDone {
        frames,
        bytes: sent,
    }))
}
