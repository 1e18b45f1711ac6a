//! The handshake and transmission loop of one NBD connection.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use tracing::{debug, info, warn};

use crate::proto::*;

impl<C: Connection + ?Sized> Connection for &mut C {
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<()> {
        (**self).send_file(file, offset, len)
    }
}

/// An export opened by a client: a fixed state of a volume.
pub trait Export: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Smallest block the export can be read in (its logical block size).
    fn block_size(&self) -> u32;
    /// A human description (shown by `nbdinfo`).
    fn description(&self) -> String;
    /// Fills `buf` with the bytes at `offset` (inside the export). The
    /// error is logged and the client gets `EIO`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), String>;
    /// When the `len` bytes at `offset` are a range of one file as they
    /// are, calls `send(file, file_offset)` and returns what it returned;
    /// else `Ok(None)` without calling it, and [`Export::read_at`] reads
    /// them. An `Err` is as for `read_at`. The default: never.
    fn send_plain(
        &self,
        offset: u64,
        len: u32,
        send: &mut dyn FnMut(&File, u64) -> io::Result<()>,
    ) -> Result<Option<io::Result<()>>, String> {
        let _ = (offset, len, send);
        Ok(None)
    }
}

/// The connection [`serve`] talks on.
pub trait Connection: Read + Write {
    /// Sends `len` bytes of `file` from `offset`, after what was written
    /// before. The default reads them into a buffer and writes that; a
    /// socket can hand the file's pages to the kernel instead (`sendfile`),
    /// which spares the copies in and out of this process.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<()> {
        let mut buf = vec![0u8; len.min(1 << 20)];
        let mut done = 0;
        while done < len {
            let n = buf.len().min(len - done);
            file.read_exact_at(&mut buf[..n], offset + done as u64)?;
            self.write_all(&buf[..n])?;
            done += n;
        }
        Ok(())
    }
}

/// What a client may open.
pub trait Exports: Sync {
    /// Names listed by `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;
    /// Opens `name`, or says why not (sent to the client, logged).
    fn open(&self, name: &str) -> Result<Box<dyn Export>, String>;
}

/// How [`serve`] describes an export in its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name as the client gave it.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The client broke the protocol.
    #[error("protocol error: {0}")]
    Proto(#[from] ProtoError),
}

fn io(context: &'static str) -> impl FnOnce(io::Error) -> NbdError {
    move |source| NbdError::Io { context, source }
}

/// Flags of every export: read-only, flush accepted (a no-op), and several
/// connections see the same bytes.
const TRANSMISSION_FLAGS: u16 =
    FLAG_HAS_FLAGS | FLAG_READ_ONLY | FLAG_SEND_FLUSH | FLAG_CAN_MULTI_CONN;

/// Serves one connection: handshake, then the export the client chose,
/// until it disconnects. `Ok` for a clean end (`NBD_CMD_DISC`,
/// `NBD_OPT_ABORT`, or the client closing between requests).
pub fn serve<S: Connection>(
    mut s: S,
    exports: &dyn Exports,
    peer: &str,
) -> Result<Option<ExportInfo>, NbdError> {
    s.write_all(&greeting())
        .map_err(io("sending the greeting"))?;
    s.flush().map_err(io("sending the greeting"))?;
    let mut cf = [0u8; 4];
    s.read_exact(&mut cf)
        .map_err(io("reading the client flags"))?;
    let client_flags = u32::from_be_bytes(cf);
    if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
        return Err(ProtoError::Invalid(
            "the client does not speak the fixed newstyle handshake".into(),
        )
        .into());
    }
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtoError::Invalid(format!("unknown client flags {client_flags:#x}")).into());
    }
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    loop {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).map_err(io("reading an option"))?;
        let (opt, len) = parse_option_header(&h)?;
        let len = len as usize;
        if len > MAX_OPTION_DATA {
            return Err(
                ProtoError::Invalid(format!("option {opt} with {len} bytes of data")).into(),
            );
        }
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).map_err(io("reading an option"))?;
        let reply = |s: &mut S, kind: u32, d: &[u8]| -> Result<(), NbdError> {
            s.write_all(&option_reply(opt, kind, d))
                .map_err(io("sending an option reply"))
        };
        match opt {
            OPT_EXPORT_NAME => {
                let name = export_name(&data)?;
                let export = match exports.open(&name) {
                    Ok(e) => e,
                    Err(why) => {
                        // This option has no error reply: the protocol
                        // says to close the connection.
                        warn!(peer, export = %name, "NBD export refused: {why}");
                        return Ok(None);
                    }
                };
                let mut r = Vec::with_capacity(134);
                r.extend_from_slice(&export.size().to_be_bytes());
                r.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                if !no_zeroes {
                    r.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&r).map_err(io("sending the export"))?;
                s.flush().map_err(io("sending the export"))?;
                return transmission(s, export.as_ref(), &name, peer);
            }
            OPT_ABORT => {
                reply(&mut s, REP_ACK, &[])?;
                s.flush().map_err(io("sending an option reply"))?;
                return Ok(None);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    reply(&mut s, REP_ERR_INVALID, b"NBD_OPT_LIST takes no data")?;
                } else {
                    for name in exports.list() {
                        reply(&mut s, REP_SERVER, &rep_server(&name))?;
                    }
                    reply(&mut s, REP_ACK, &[])?;
                }
            }
            OPT_INFO | OPT_GO => {
                let (name, infos) = match parse_info_request(&data) {
                    Ok(x) => x,
                    Err(e) => {
                        reply(&mut s, REP_ERR_INVALID, e.to_string().as_bytes())?;
                        s.flush().map_err(io("sending an option reply"))?;
                        continue;
                    }
                };
                let export = match exports.open(&name) {
                    Ok(e) => e,
                    Err(why) => {
                        warn!(peer, export = %name, "NBD export refused: {why}");
                        reply(&mut s, REP_ERR_UNKNOWN, why.as_bytes())?;
                        s.flush().map_err(io("sending an option reply"))?;
                        continue;
                    }
                };
                reply(
                    &mut s,
                    REP_INFO,
                    &info_export(export.size(), TRANSMISSION_FLAGS),
                )?;
                let bs = export.block_size().max(1);
                reply(
                    &mut s,
                    REP_INFO,
                    &info_block_size(bs, bs.max(4096), MAX_READ),
                )?;
                if infos.contains(&INFO_DESCRIPTION) {
                    reply(&mut s, REP_INFO, &info_description(&export.description()))?;
                }
                reply(&mut s, REP_ACK, &[])?;
                s.flush().map_err(io("sending an option reply"))?;
                if opt == OPT_GO {
                    return transmission(s, export.as_ref(), &name, peer);
                }
            }
            OPT_STARTTLS => {
                reply(&mut s, REP_ERR_POLICY, b"TLS is not offered on this port")?;
            }
            _ => {
                reply(&mut s, REP_ERR_UNSUP, b"option not supported")?;
            }
        }
        s.flush().map_err(io("sending an option reply"))?;
    }
}

fn transmission<S: Connection>(
    mut s: S,
    export: &dyn Export,
    name: &str,
    peer: &str,
) -> Result<Option<ExportInfo>, NbdError> {
    let size = export.size();
    info!(peer, export = name, size, "NBD export opened");
    let done = ExportInfo {
        name: name.to_owned(),
        size,
    };
    let mut buf = Vec::new();
    loop {
        let mut h = [0u8; REQUEST_LEN];
        match s.read_exact(&mut h) {
            Ok(()) => {}
            // A client closing between requests is a clean end too.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Some(done)),
            Err(e) => return Err(io("reading a request")(e)),
        }
        let r = parse_request(&h)?;
        if r.command == CMD_WRITE {
            // Its data follows the request: read it off before refusing.
            if r.length > MAX_READ {
                return Err(ProtoError::Invalid(format!("a write of {} bytes", r.length)).into());
            }
            io::copy(&mut (&mut s).take(u64::from(r.length)), &mut io::sink())
                .map_err(io("reading write data"))?;
        }
        if r.command == CMD_DISC {
            debug!(peer, export = name, "NBD disconnect");
            return Ok(Some(done));
        }
        let mut err = check_request(&r, size);
        if err == 0 && r.command == CMD_READ {
            // Straight from a file where the export's bytes are one as
            // they are: the reply header, then the file's range.
            let reply = simple_reply(0, r.handle);
            let mut send = |file: &File, at: u64| {
                s.write_all(&reply)?;
                s.send_file(file, at, r.length as usize)
            };
            let failed = match export.send_plain(r.offset, r.length, &mut send) {
                Ok(None) => {
                    buf.resize(r.length as usize, 0);
                    export.read_at(&mut buf, r.offset).err()
                }
                Ok(Some(Ok(()))) => {
                    s.flush().map_err(io("sending a reply"))?;
                    continue;
                }
                // Part of the reply may be out: only closing is left.
                Ok(Some(Err(e))) => return Err(io("sending read data")(e)),
                Err(why) => Some(why),
            };
            if let Some(why) = failed {
                warn!(
                    peer,
                    export = name,
                    offset = r.offset,
                    length = r.length,
                    "NBD read failed: {why}"
                );
                err = EIO;
            }
        }
        s.write_all(&simple_reply(err, r.handle))
            .map_err(io("sending a reply"))?;
        if err == 0 && r.command == CMD_READ {
            s.write_all(&buf).map_err(io("sending read data"))?;
        }
        s.flush().map_err(io("sending a reply"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Seek};

    /// A client that sent `input` and reads what the server wrote.
    struct Client {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Client {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Client {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Connection for Client {}

    const SIZE: u64 = 8192;

    /// Its first half is in a file as it is, the third quarter is
    /// assembled (0xab), reading the last quarter fails.
    struct HalfPlain {
        file: File,
    }

    impl Export for HalfPlain {
        fn size(&self) -> u64 {
            SIZE
        }

        fn block_size(&self) -> u32 {
            512
        }

        fn description(&self) -> String {
            "test".into()
        }

        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), String> {
            if offset >= SIZE / 4 * 3 {
                return Err("broken".into());
            }
            buf.fill(0xab);
            Ok(())
        }

        fn send_plain(
            &self,
            offset: u64,
            _len: u32,
            send: &mut dyn FnMut(&File, u64) -> io::Result<()>,
        ) -> Result<Option<io::Result<()>>, String> {
            match offset {
                o if o < SIZE / 2 => Ok(Some(send(&self.file, o))),
                o if o < SIZE / 4 * 3 => Ok(None),
                _ => Err("broken".into()),
            }
        }
    }

    struct One(File);

    impl Exports for One {
        fn list(&self) -> Vec<String> {
            vec!["x".into()]
        }

        fn open(&self, _name: &str) -> Result<Box<dyn Export>, String> {
            let file = self.0.try_clone().map_err(|e| e.to_string())?;
            Ok(Box::new(HalfPlain { file }))
        }
    }

    fn request(out: &mut Vec<u8>, command: u16, handle: u64, offset: u64, length: u32) {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&command.to_be_bytes());
        out.extend_from_slice(&handle.to_be_bytes());
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(&length.to_be_bytes());
    }

    #[test]
    fn reads_from_a_plain_file_range_an_assembled_buffer_or_fail_with_eio() {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
        file.write_all(&bytes).unwrap();
        file.rewind().unwrap();
        let mut input = Vec::new();
        input.extend_from_slice(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes());
        input.extend_from_slice(&IHAVEOPT.to_be_bytes());
        input.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
        input.extend_from_slice(&1u32.to_be_bytes());
        input.extend_from_slice(b"x");
        request(&mut input, CMD_READ, 1, 512, 1024);
        request(&mut input, CMD_READ, 2, SIZE / 2, 512);
        request(&mut input, CMD_READ, 3, SIZE - 512, 512);
        request(&mut input, CMD_DISC, 4, 0, 0);
        let mut c = Client {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        let info = serve(&mut c, &One(file), "test").unwrap();
        assert_eq!(info.map(|i| i.size), Some(SIZE));
        // Greeting (18 bytes), then the export's size and flags (10).
        let mut out = &c.output[28..];
        let mut reply = |handle: u64, error: u32, data: Option<&[u8]>| {
            assert_eq!(out[..16], simple_reply(error, handle), "reply {handle}");
            out = &out[16..];
            if let Some(d) = data {
                assert_eq!(&out[..d.len()], d, "data of reply {handle}");
                out = &out[d.len()..];
            }
        };
        reply(1, 0, Some(&bytes[512..1536]));
        reply(2, 0, Some(&[0xab; 512]));
        reply(3, EIO, None);
        assert!(out.is_empty(), "{} bytes more", out.len());
    }
}
