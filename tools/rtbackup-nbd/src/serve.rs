//! The handshake and transmission loop of one NBD connection.

use std::io::{self, Read, Write};

use tracing::{debug, info, warn};

use crate::proto::*;

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

/// Where a handshake stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Not offered: `NBD_OPT_STARTTLS` is refused (a plaintext server).
    Off,
    /// Required and not started yet: nothing but `NBD_OPT_STARTTLS` and
    /// `NBD_OPT_ABORT` is answered (`NBD_REP_ERR_TLS_REQD`).
    Required,
    /// On: the options go on inside TLS.
    Established,
}

/// How [`negotiate`] ended.
#[derive(Debug)]
pub enum Handshake<S> {
    /// The connection is over: `Some` if an export was served.
    Ended(Option<ExportInfo>),
    /// The client asked for TLS and was told yes: the caller runs the TLS
    /// handshake on `stream` and goes on with [`negotiate`] inside it.
    StartTls {
        /// The connection, with nothing read past the option.
        stream: S,
        /// The client's `NBD_FLAG_C_NO_ZEROES`.
        no_zeroes: bool,
    },
}

/// Serves one plaintext connection: handshake, then the export the client
/// chose, until it disconnects. `Ok` for a clean end (`NBD_CMD_DISC`,
/// `NBD_OPT_ABORT`, or the client closing between requests).
pub fn serve<S: Read + Write>(
    mut s: S,
    exports: &dyn Exports,
    peer: &str,
) -> Result<Option<ExportInfo>, NbdError> {
    let no_zeroes = greet(&mut s)?;
    match negotiate(s, exports, peer, no_zeroes, TlsMode::Off)? {
        Handshake::Ended(e) => Ok(e),
        Handshake::StartTls { .. } => Err(ProtoError::Invalid("TLS is not offered".into()).into()),
    }
}

/// Sends the greeting and reads the client's flags: whether it asked for
/// `NBD_FLAG_C_NO_ZEROES`.
pub fn greet<S: Read + Write>(s: &mut S) -> Result<bool, NbdError> {
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
    Ok(client_flags & FLAG_C_NO_ZEROES != 0)
}

/// The option haggling after [`greet`], then the export the client chose
/// until it disconnects, or the switch to TLS.
pub fn negotiate<S: Read + Write>(
    mut s: S,
    exports: &dyn Exports,
    peer: &str,
    no_zeroes: bool,
    tls: TlsMode,
) -> Result<Handshake<S>, NbdError> {
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
        if tls == TlsMode::Required && !matches!(opt, OPT_STARTTLS | OPT_ABORT) {
            if opt == OPT_EXPORT_NAME {
                // No error reply exists for it: close.
                warn!(peer, "NBD export asked for before TLS; closing");
                return Ok(Handshake::Ended(None));
            }
            reply(
                &mut s,
                REP_ERR_TLS_REQD,
                b"TLS is required: NBD_OPT_STARTTLS first",
            )?;
            s.flush().map_err(io("sending an option reply"))?;
            continue;
        }
        match opt {
            OPT_EXPORT_NAME => {
                let name = export_name(&data)?;
                let export = match exports.open(&name) {
                    Ok(e) => e,
                    Err(why) => {
                        // This option has no error reply: the protocol
                        // says to close the connection.
                        warn!(peer, export = %name, "NBD export refused: {why}");
                        return Ok(Handshake::Ended(None));
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
                return transmission(s, export.as_ref(), &name, peer).map(Handshake::Ended);
            }
            OPT_ABORT => {
                reply(&mut s, REP_ACK, &[])?;
                s.flush().map_err(io("sending an option reply"))?;
                return Ok(Handshake::Ended(None));
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
                    return transmission(s, export.as_ref(), &name, peer).map(Handshake::Ended);
                }
            }
            OPT_STARTTLS => match tls {
                TlsMode::Off => reply(&mut s, REP_ERR_POLICY, b"TLS is not offered on this port")?,
                TlsMode::Established => reply(&mut s, REP_ERR_INVALID, b"TLS is already on")?,
                TlsMode::Required if !data.is_empty() => {
                    reply(&mut s, REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data")?
                }
                TlsMode::Required => {
                    reply(&mut s, REP_ACK, &[])?;
                    s.flush().map_err(io("sending an option reply"))?;
                    return Ok(Handshake::StartTls {
                        stream: s,
                        no_zeroes,
                    });
                }
            },
            _ => {
                reply(&mut s, REP_ERR_UNSUP, b"option not supported")?;
            }
        }
        s.flush().map_err(io("sending an option reply"))?;
    }
}

fn transmission<S: Read + Write>(
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
            buf.resize(r.length as usize, 0);
            if let Err(why) = export.read_at(&mut buf, r.offset) {
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
