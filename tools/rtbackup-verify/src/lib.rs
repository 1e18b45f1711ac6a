//! Client side of a verify (Documentation/protocol.rst, "Verify"): asks the
//! backup server for the checksum of every chunk of a volume at the end of
//! its durable journal (the state the volume's next records will be applied
//! to; [`VerifyPoint::consistent`] tells whether it is also a consistency
//! point's), so that a client can compare them with its device and send
//! (resync) only the chunks that differ. What a client does with the
//! differences is up to it.
//!
//! ```no_run
//! use rtbackup_verify::{chunk_checksum, fetch_checksums, VerifyError, VerifyRequest};
//!
//! let req = VerifyRequest::new("db1", "host-a", 64 << 10, 1 << 30);
//! let mut differ = Vec::new();
//! let point = fetch_checksums("backup:7070", None, &req, |first, sums| {
//!     for (i, sum) in sums.iter().enumerate() {
//!         let chunk = first + i as u64;
//!         let (_offset, len) = rtbackup_verify::chunk_extent(chunk, req.chunk_size, req.size_bytes);
//!         let bytes = vec![0u8; len as usize]; // read the device's chunk here
//!         if chunk_checksum(&bytes) != *sum {
//!             differ.push(chunk);
//!         }
//!     }
//!     Ok::<_, VerifyError>(())
//! })?;
//! println!("{} chunks differ from seq {}", differ.len(), point.seq);
//! # Ok::<_, VerifyError>(())
//! ```

use std::io::{BufReader, Read, Write};

pub use rtbackup_proto::{
    check_chunk_size, chunk_checksum, chunk_count, chunk_extent, connect, ChunkChecksum,
    ClientError as VerifyError, VerifyPoint, VerifyRequest, CLIENT_TIMEOUT,
};
use rtbackup_proto::{read_frame, write_frame, Frame, ProtoError, RollbackDone};

/// Asks the server at HOST:PORT for the checksums `req` describes and calls
/// `f(first_chunk, checksums)` for each batch as it arrives: in chunk
/// order, every chunk once, batches of 1 to 65536. Returns the state they
/// describe once all arrived (checked against the server's DONE). An error
/// of `f` ends the verify (closing the connection) and is returned. The
/// server sends a frame at least about every second while it reads, so
/// [`CLIENT_TIMEOUT`] per read is ample.
pub fn fetch_checksums<E: From<VerifyError>>(
    server: &str,
    creds: Option<&rtbackup_tls::Credentials>,
    req: &VerifyRequest,
    mut f: impl FnMut(u64, &[ChunkChecksum]) -> Result<(), E>,
) -> Result<VerifyPoint, E> {
    check_chunk_size(req.chunk_size).map_err(VerifyError::from)?;
    let mut c = Checksums::start(connect(server, creds)?, req)?;
    while let Some((first, sums)) = c.next_batch()? {
        f(first, &sums)?;
    }
    Ok(c.point)
}

/// A verify in progress on a connection: the point, then the checksums in
/// batches ([`Checksums::next_batch`]), each checked against the request.
#[derive(Debug)]
pub struct Checksums<S: Read> {
    r: BufReader<S>,
    point: VerifyPoint,
    size_bytes: u64,
    /// The next chunk expected.
    next: u64,
    /// CHECKSUMS frames received.
    frames: u64,
    /// DONE arrived.
    done: bool,
}

impl<S: Read + Write> Checksums<S> {
    /// Sends VERIFY on a fresh connection (nothing sent on it yet) and reads
    /// the server's VERIFY_POINT. A chunk size out of range is refused here,
    /// before asking.
    pub fn start(mut stream: S, req: &VerifyRequest) -> Result<Self, VerifyError> {
        check_chunk_size(req.chunk_size)?;
        write_frame(&mut stream, &Frame::Verify(req.clone()))?;
        stream.flush().map_err(ProtoError::from)?;
        let mut r = BufReader::with_capacity(2 << 20, stream);
        let point = match read_frame(&mut r)? {
            Frame::VerifyPoint(p) => p,
            Frame::Error(e) => return Err(e.into()),
            f => {
                return Err(VerifyError::Unexpected(format!(
                    "{} instead of VERIFY_POINT",
                    f.name()
                )))
            }
        };
        let chunks = chunk_count(req.size_bytes, req.chunk_size);
        if point.chunk_size != req.chunk_size || point.chunks != chunks {
            return Err(VerifyError::Unexpected(format!(
                "VERIFY_POINT with {} chunks of {} bytes; asked for {} bytes in chunks of {} ({chunks})",
                point.chunks, point.chunk_size, req.size_bytes, req.chunk_size
            )));
        }
        Ok(Self {
            r,
            point,
            size_bytes: req.size_bytes,
            next: 0,
            frames: 0,
            done: false,
        })
    }
}

impl<S: Read> Checksums<S> {
    /// The state the checksums describe: the end of the volume's durable
    /// journal when the server answered.
    pub fn point(&self) -> &VerifyPoint {
        &self.point
    }

    /// The next batch of checksums: its first chunk and the checksums of it
    /// and the chunks after it. `None` once every chunk has arrived and
    /// the server's DONE agrees.
    pub fn next_batch(&mut self) -> Result<Option<(u64, Vec<ChunkChecksum>)>, VerifyError> {
        if self.done {
            return Ok(None);
        }
        match read_frame(&mut self.r)? {
            Frame::Checksums { first_chunk, sums } => {
                let end = first_chunk.saturating_add(sums.len() as u64);
                if first_chunk != self.next || end > self.point.chunks {
                    return Err(VerifyError::Unexpected(format!(
                        "checksums of chunks {first_chunk}..{end} when chunk {} of {} was next",
                        self.next, self.point.chunks
                    )));
                }
                self.next = end;
                self.frames += 1;
                Ok(Some((first_chunk, sums)))
            }
            Frame::Done(RollbackDone { frames, bytes }) => {
                if self.next != self.point.chunks
                    || frames != self.frames
                    || bytes != self.size_bytes
                {
                    return Err(VerifyError::Unexpected(format!(
                        "DONE with {frames} frames of {bytes} bytes after {} frames and {} of {} \
                         chunks of {} bytes",
                        self.frames, self.next, self.point.chunks, self.size_bytes
                    )));
                }
                self.done = true;
                Ok(None)
            }
            Frame::Error(e) => Err(e.into()),
            f => Err(VerifyError::Unexpected(format!(
                "{} during the checksums",
                f.name()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtbackup_proto::error_code;
    use std::net::TcpListener;
    use std::thread;

    const SIZE: u64 = 10 * 4096 + 512;

    fn point(chunks: u64) -> Frame {
        Frame::VerifyPoint(VerifyPoint {
            seq: 7,
            ring_id: 9,
            time: "2026-11-26T05:00:00Z".into(),
            chunk_size: 4096,
            chunks,
            consistent: true,
        })
    }

    fn sums(first: u64, n: u64) -> Frame {
        Frame::Checksums {
            first_chunk: first,
            sums: (first..first + n).map(|c| [c as u8; 16]).collect(),
        }
    }

    fn done(frames: u64, bytes: u64) -> Frame {
        Frame::Done(RollbackDone { frames, bytes })
    }

    /// A server that reads the VERIFY, answers `frames` and closes; returns
    /// its address and the request it got.
    fn fake(frames: Vec<Frame>) -> (String, thread::JoinHandle<VerifyRequest>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let req = match read_frame(&mut s).unwrap() {
                Frame::Verify(r) => r,
                f => panic!("{f:?}"),
            };
            for f in frames {
                // The client may have gone (a callback's error).
                let _ = write_frame(&mut s, &f);
            }
            req
        });
        (addr, t)
    }

    fn run(frames: Vec<Frame>) -> Result<(VerifyPoint, Vec<(u64, usize)>), VerifyError> {
        let (addr, t) = fake(frames);
        let req = VerifyRequest::new("v", "test", 4096, SIZE);
        let mut calls = Vec::new();
        let r = fetch_checksums(&addr, None, &req, |first, s| {
            for (i, sum) in s.iter().enumerate() {
                assert_eq!(*sum, [(first + i as u64) as u8; 16]);
            }
            calls.push((first, s.len()));
            Ok::<_, VerifyError>(())
        });
        assert_eq!(t.join().unwrap(), req);
        r.map(|p| (p, calls))
    }

    #[test]
    fn checksums_arrive_in_order_and_end_with_done() {
        let (p, calls) = run(vec![point(11), sums(0, 4), sums(4, 7), done(2, SIZE)]).unwrap();
        assert_eq!((p.seq, p.chunks), (7, 11));
        assert_eq!(calls, [(0, 4), (4, 7)]);
    }

    #[test]
    fn what_does_not_fit_the_request_is_refused() {
        let unexpected = |frames: Vec<Frame>, want: &str| match run(frames) {
            Err(VerifyError::Unexpected(m)) => assert!(m.contains(want), "{m} (want {want:?})"),
            other => panic!("{other:?}"),
        };
        unexpected(vec![point(10)], "VERIFY_POINT with 10 chunks");
        unexpected(vec![done(0, 0)], "DONE instead of VERIFY_POINT");
        unexpected(vec![point(11), sums(1, 4)], "chunks 1..5 when chunk 0");
        unexpected(
            vec![point(11), sums(0, 4), sums(0, 4)],
            "chunks 0..4 when chunk 4",
        );
        unexpected(vec![point(11), sums(0, 12)], "0..12 when chunk 0 of 11");
        unexpected(
            vec![point(11), sums(0, 4), done(1, SIZE)],
            "DONE with 1 frames",
        );
        unexpected(
            vec![point(11), sums(0, 11), done(2, SIZE)],
            "DONE with 2 frames",
        );
        unexpected(vec![point(11), sums(0, 11), done(1, 4096)], "of 4096 bytes");
        unexpected(vec![point(11), point(11)], "VERIFY_POINT during");
        // Closed before DONE.
        match run(vec![point(11), sums(0, 11)]) {
            Err(VerifyError::Protocol(ProtoError::Closed)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_of_the_server_and_of_the_callback() {
        let e = run(vec![Frame::Error(rtbackup_proto::ErrorMsg::new(
            error_code::NO_SUCH_VOLUME,
            "no volume",
        ))])
        .unwrap_err();
        assert!(e.is_no_such_volume(), "{e}");
        let e = run(vec![
            point(11),
            sums(0, 3),
            Frame::Error(rtbackup_proto::ErrorMsg::new(error_code::INTERNAL, "disk")),
        ])
        .unwrap_err();
        assert_eq!(e.code(), Some("internal"));
        assert!(!e.is_no_such_volume());

        #[derive(Debug)]
        enum Mine {
            Stop,
            Verify(VerifyError),
        }
        impl From<VerifyError> for Mine {
            fn from(e: VerifyError) -> Self {
                Mine::Verify(e)
            }
        }
        let (addr, _t) = fake(vec![point(11), sums(0, 4), sums(4, 7), done(2, SIZE)]);
        let req = VerifyRequest::new("v", "test", 4096, SIZE);
        let mut calls = 0;
        let r = fetch_checksums(&addr, None, &req, |_, _| {
            calls += 1;
            Err(Mine::Stop)
        });
        assert!(matches!(r, Err(Mine::Stop)) && calls == 1, "{r:?}");
        // Refused before connecting.
        let r = fetch_checksums(
            &addr,
            None,
            &VerifyRequest::new("v", "t", 1000, SIZE),
            |_, _| Ok::<_, Mine>(()),
        );
        assert!(
            matches!(
                r,
                Err(Mine::Verify(VerifyError::Protocol(
                    ProtoError::BadChunkSize(1000)
                )))
            ),
            "{r:?}"
        );
    }
}
