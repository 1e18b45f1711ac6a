//! The read-only NBD export of past states: export `VOLUME@POINT` (POINT as
//! for `restore --at`: a time, `seq:N`, `mark:NAME`, `latest`; `VOLUME`
//! alone is the latest point) is the volume as of that point, read in
//! place from the store (Documentation/nbd.rst).

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::Context;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rtbackup_nbd::{Export, Exports};
use rtbackup_store::{PointReader, PointSpec, Store};
use tracing::{error, info, warn};

use crate::server::configure_socket;

/// Buffer of an NBD connection's socket.
const NBD_BUF: usize = 256 << 10;

/// Splits an export name into the volume and the point.
pub fn parse_export_name(name: &str) -> Result<(&str, PointSpec), String> {
    let (vol, spec) = match name.split_once('@') {
        Some((v, p)) => (v, p.parse::<PointSpec>()?),
        None => (name, PointSpec::Latest),
    };
    rtbackup_proto::validate_volume_name(vol).map_err(|e| e.to_string())?;
    Ok((vol, spec))
}

/// The volumes of a store as NBD exports.
struct StoreExports {
    store: Store,
}

struct PointExport(PointReader);

impl Export for PointExport {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn block_size(&self) -> u32 {
        self.0.block_size()
    }

    fn description(&self) -> String {
        let p = self.0.point();
        let marks = if p.marks.is_empty() {
            String::new()
        } else {
            format!(", mark {}", p.marks.join(","))
        };
        format!(
            "rtbackup volume as of {} (ring {:#x}, seq {}{marks}), read-only",
            p.time, p.ring_id, p.seq
        )
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), String> {
        self.0.read_at(buf, offset).map_err(|e| e.to_string())
    }
}

impl Exports for StoreExports {
    fn list(&self) -> Vec<String> {
        self.store.volumes().unwrap_or_default()
    }

    fn open(&self, name: &str) -> Result<Box<dyn Export>, String> {
        let (vol, spec) = parse_export_name(name)?;
        let r = self
            .store
            .open_point(vol, &spec)
            .map_err(|e| e.to_string())?;
        info!(
            export = name,
            seq = r.point().seq,
            time = %r.point().time,
            "NBD export resolved"
        );
        Ok(Box::new(PointExport(r)))
    }
}

/// Serves NBD on `listener` until `stop`; one thread per connection.
pub fn run(listener: TcpListener, store: Store, stop: &AtomicBool) -> anyhow::Result<()> {
    let exports = Arc::new(StoreExports { store });
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) => {}
            Ok(_) => match listener.accept() {
                Ok((conn, peer)) => {
                    if let Err(e) = configure_socket(&conn) {
                        warn!(%peer, "cannot set socket options: {e}");
                    }
                    if let Ok(c) = conn.try_clone() {
                        conns.lock().unwrap_or_else(|p| p.into_inner()).push(c);
                    }
                    let exports = Arc::clone(&exports);
                    let t = thread::Builder::new()
                        .name(format!("nbd-{peer}"))
                        .spawn(move || {
                            let peer = peer.to_string();
                            let closer = conn.try_clone();
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                conn.try_clone().map(|w| {
                                    let rw = ReadWrite {
                                        r: BufReader::with_capacity(NBD_BUF, conn),
                                        w: BufWriter::with_capacity(NBD_BUF, w),
                                    };
                                    rtbackup_nbd::serve(rw, exports.as_ref(), &peer)
                                })
                            }));
                            match r {
                                Ok(Ok(Ok(_))) => info!(%peer, "NBD connection closed"),
                                Ok(Ok(Err(e))) => warn!(%peer, "NBD connection ended: {e}"),
                                Ok(Err(e)) => error!(%peer, "NBD connection: {e}"),
                                Err(_) => error!(%peer, "NBD connection thread panicked"),
                            }
                            // The listener keeps a clone for shutdown: close
                            // the socket now, so the client sees the end.
                            if let Ok(c) = closer {
                                let _ = c.shutdown(Shutdown::Both);
                            }
                        });
                    match t {
                        Ok(t) => threads.push(t),
                        Err(e) => error!(%peer, "cannot start an NBD connection thread: {e}"),
                    }
                }
                Err(e) => warn!("NBD accept failed: {e}"),
            },
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("polling the NBD socket"),
        }
        threads.retain(|t| !t.is_finished());
        conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c| c.peer_addr().is_ok());
    }
    for c in conns.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = c.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// A socket as one `Read + Write` with buffering both ways.
struct ReadWrite {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
}

impl Read for ReadWrite {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for ReadWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names() {
        assert_eq!(parse_export_name("db1"), Ok(("db1", PointSpec::Latest)));
        assert_eq!(
            parse_export_name("db1@seq:12"),
            Ok(("db1", PointSpec::Seq(12)))
        );
        assert_eq!(
            parse_export_name("db1@mark:before-upgrade"),
            Ok(("db1", PointSpec::Mark("before-upgrade".into())))
        );
        assert!(matches!(
            parse_export_name("db1@2026-11-26T05:00:00Z"),
            Ok(("db1", PointSpec::Time(_)))
        ));
        for bad in [
            "",
            "@latest",
            "../x@latest",
            "db1@",
            "db1@someday",
            "db1@mark:a@b",
        ] {
            assert!(parse_export_name(bad).is_err(), "{bad}");
        }
    }
}
