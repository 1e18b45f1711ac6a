//! Serving a rollback: the byte ranges of a volume changed after a point,
//! with their contents at that point, so that `rtbackupctl rollback` can
//! bring the device back by writing only what changed
//! (Documentation/protocol.rst, "Rollback").

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Mutex;

use rtbackup_proto::{
    error_code, validate_volume_name, write_frame, Frame, RollbackDone, RollbackPlan,
    RollbackRequest, PROTOCOL_VERSION,
};
use rtbackup_store::{PointSpec, Store, StoreError};
use tracing::info;

use crate::server::{session_error, SessionError};

/// Data bytes per EXTENT frame.
const EXTENT_CHUNK: u64 = 1 << 20;

/// Answers a ROLLBACK: PLAN, the EXTENT frames (unless a dry run), DONE.
pub(crate) fn serve_rollback(
    store: &Store,
    req: &RollbackRequest,
    writer: &Mutex<std::net::TcpStream>,
    peer: SocketAddr,
) -> Result<(), SessionError> {
    if req.protocol != PROTOCOL_VERSION {
        return Err(session_error(
            error_code::UNSUPPORTED_VERSION,
            format!(
                "protocol {} in ROLLBACK; this server speaks {PROTOCOL_VERSION}",
                req.protocol
            ),
        ));
    }
    validate_volume_name(&req.volume)?;
    let spec: PointSpec = req
        .point
        .parse()
        .map_err(|e: String| session_error(error_code::PROTOCOL, e))?;
    let reader = store.open_point(&req.volume, &spec).map_err(|e| match e {
        StoreError::NoSuchVolume(_) | StoreError::NoSuchPoint(_) => {
            session_error(error_code::BAD_VOLUME, e.to_string())
        }
        e => SessionError::from(e),
    })?;
    if reader.size() != req.size_bytes {
        return Err(session_error(
            error_code::SIZE_MISMATCH,
            format!(
                "the device has {} bytes, volume {} {}",
                req.size_bytes,
                req.volume,
                reader.size()
            ),
        ));
    }
    let extents = reader.changed_extents()?;
    let bytes: u64 = extents.iter().map(|(a, b)| b - a).sum();
    let p = reader.point();
    info!(
        %peer, volume = req.volume, client = req.client, point = %p.time, seq = p.seq,
        extents = extents.len(), bytes, dry_run = req.dry_run, "rollback"
    );
    let send = |f: &Frame| -> Result<(), SessionError> {
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *w, f)?;
        Ok(())
    };
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
    }))?;
    writer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .flush()
        .map_err(rtbackup_proto::ProtoError::from)?;
    Ok(())
}
