//! Client side of a rollback (Documentation/protocol.rst, "Rollback"): asks
//! the backup server for the byte ranges of a volume changed after a point,
//! with their contents at that point, and writes them to the device, so
//! that undoing damage costs the size of the damage, not of the disk.
//!
//! The device must be in the server's newest state (everything written is
//! durable on the server) and must not change meanwhile: `rtbackupctl
//! rollback` holds it open exclusively and syncs it first.

use std::io::{BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::time::Duration;

use rtbackup_proto::{
    read_frame, write_frame, Frame, ProtoError, RollbackDone, RollbackPlan, RollbackRequest,
    PROTOCOL_VERSION,
};

/// How long to wait for the server to connect or answer.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// The server cannot be reached.
    #[error("cannot connect to the backup server {server}: {source}")]
    Connect {
        /// HOST:PORT.
        server: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused.
    #[error("the backup server refused the rollback: {code}: {message}")]
    Refused {
        /// Its error code.
        code: String,
        /// Its message.
        message: String,
    },
    /// The wire failed or the server broke the protocol.
    #[error("talking to the backup server: {0}")]
    Protocol(#[from] ProtoError),
    /// The server sent something that does not fit.
    #[error("the backup server sent {0}")]
    Unexpected(String),
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

fn refused(e: rtbackup_proto::ErrorMsg) -> RollbackError {
    RollbackError::Refused {
        code: e.code,
        message: e.message,
    }
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
    let connect_err = |source| RollbackError::Connect {
        server: req.server.clone(),
        source,
    };
    let addr = req
        .server
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address for this name",
            ))
        })?;
    let conn = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(connect_err)?;
    conn.set_read_timeout(Some(TIMEOUT)).map_err(connect_err)?;
    let _ = conn.set_nodelay(true);
    let mut w = conn.try_clone().map_err(connect_err)?;
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
    let mut r = BufReader::with_capacity(2 << 20, conn);
    let plan = match read_frame(&mut r)? {
        Frame::Plan(p) => p,
        Frame::Error(e) => {
            return Err(RollbackError::Refused {
                code: e.code,
                message: e.message,
            })
        }
        f => {
            return Err(RollbackError::Unexpected(format!(
                "{} instead of PLAN",
                f.name()
            )))
        }
    };
    let mut frames = 0u64;
    let mut written = 0u64;
    progress(0, plan.bytes);
    loop {
        match read_frame(&mut r)? {
            Frame::Extent { offset, data } => {
                let end = offset.checked_add(data.len() as u64);
                if req.dry_run || end.is_none_or(|e| e > req.size_bytes) {
                    return Err(RollbackError::Unexpected(format!(
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
                    return Err(RollbackError::Unexpected(format!(
                        "DONE with {f} extents and {bytes} bytes, but {frames} and {written} arrived"
                    )));
                }
                if !req.dry_run && written != plan.bytes {
                    return Err(RollbackError::Unexpected(format!(
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
            Frame::Error(e) => return Err(refused(e)),
            f => {
                return Err(RollbackError::Unexpected(format!(
                    "{} during the extents",
                    f.name()
                )))
            }
        }
    }
}
