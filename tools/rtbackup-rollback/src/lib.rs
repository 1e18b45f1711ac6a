//! Client side of a rollback (Documentation/protocol.rst, "Rollback"): asks
//! the backup server for the byte ranges of a volume changed after a point,
//! with their contents at that point, and writes them to the device, so
//! that undoing damage costs the size of the damage, not of the disk.
//!
//! The device must be in the server's newest state (everything written is
//! durable on the server) and must not change meanwhile: `rtbackupctl
//! rollback` holds it open exclusively and syncs it first.

use std::io::{BufReader, Write};
use std::os::unix::fs::FileExt;

use rtbackup_proto::{
    connect, read_frame, write_frame, ClientError, Frame, ProtoError, RollbackDone, RollbackPlan,
    RollbackRequest, PROTOCOL_VERSION,
};

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// Connecting, the wire, or the server's refusal or answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Writing the device failed.
    #[error("writing {len} bytes at offset {offset} of the device: {source} (the device is now partly rolled back: run the rollback again)")]
    Write {
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<ProtoError> for RollbackError {
    fn from(e: ProtoError) -> Self {
        RollbackError::Client(e.into())
    }
}

fn unexpected(what: String) -> RollbackError {
    ClientError::Unexpected(what).into()
}

/// A rollback to ask for.
#[derive(Debug, Clone)]
pub struct Request {
    /// HOST:PORT of the server.
    pub server: String,
    /// The volume.
    pub volume: String,
    /// The point (as `restore --at` takes it).
    pub point: String,
    /// Only the plan.
    pub dry_run: bool,
    /// Size of the device.
    pub size_bytes: u64,
    /// This host, for the server's log.
    pub client: String,
    /// This client's credentials (TLS); `None`: plaintext to a loopback
    /// server run with `--insecure-loopback-only`.
    pub credentials: Option<rtbackup_tls::Credentials>,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The server's plan: the point and the ranges changed after it.
    pub plan: RollbackPlan,
    /// Extent frames received and written.
    pub frames: u64,
    /// Bytes written to the device.
    pub bytes_written: u64,
}

/// Asks the server and writes each range to `device` (at its offset) as it
/// arrives; `progress(done, total)` is called after each. Returns once the
/// server said it sent everything and all of it was written (not yet
/// synced: the caller flushes the device).
pub fn run(
    req: &Request,
    device: &impl FileExt,
    mut progress: impl FnMut(u64, u64),
) -> Result<Outcome, RollbackError> {
    let conn = connect(&req.server, req.credentials.as_ref())?;
    let mut w = &conn;
    write_frame(
        &mut w,
        &Frame::Rollback(RollbackRequest {
            protocol: PROTOCOL_VERSION,
            volume: req.volume.clone(),
            size_bytes: req.size_bytes,
            point: req.point.clone(),
            dry_run: req.dry_run,
            client: req.client.clone(),
        }),
    )?;
    w.flush().map_err(ProtoError::from)?;
    let mut r = BufReader::with_capacity(2 << 20, &conn);
    let plan = match read_frame(&mut r)? {
        Frame::Plan(p) => p,
        Frame::Error(e) => return Err(ClientError::from(e).into()),
        f => return Err(unexpected(format!("{} instead of PLAN", f.name()))),
    };
    let mut frames = 0u64;
    let mut written = 0u64;
    progress(0, plan.bytes);
    loop {
        match read_frame(&mut r)? {
            Frame::Extent { offset, data } => {
                let end = offset.checked_add(data.len() as u64);
                if req.dry_run || end.is_none_or(|e| e > req.size_bytes) {
                    return Err(unexpected(format!(
                        "an extent of {} bytes at {offset} (device of {} bytes{})",
                        data.len(),
                        req.size_bytes,
                        if req.dry_run { ", dry run" } else { "" }
                    )));
                }
                device
                    .write_all_at(&data, offset)
                    .map_err(|source| RollbackError::Write {
                        offset,
                        len: data.len(),
                        source,
                    })?;
                frames += 1;
                written += data.len() as u64;
                progress(written, plan.bytes);
            }
            Frame::Done(RollbackDone { frames: f, bytes }) => {
                if f != frames || bytes != written {
                    return Err(unexpected(format!(
                        "DONE with {f} extents and {bytes} bytes, but {frames} and {written} arrived"
                    )));
                }
                if !req.dry_run && written != plan.bytes {
                    return Err(unexpected(format!(
                        "{written} bytes, but its plan said {}",
                        plan.bytes
                    )));
                }
                return Ok(Outcome {
                    plan,
                    frames,
                    bytes_written: written,
                });
            }
            Frame::Error(e) => return Err(ClientError::from(e).into()),
            f => return Err(unexpected(format!("{} during the extents", f.name()))),
        }
    }
}
