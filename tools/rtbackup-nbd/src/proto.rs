//! NBD wire format: constants, option and request parsing, reply encoding.
//! Everything here works on byte slices, so it can be fuzzed.

/// `NBDMAGIC`.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic and the prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of option replies.
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flags (server).
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// The server omits the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// The client does not want the 124 zero bytes.
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
/// The export is read-only.
pub const FLAG_READ_ONLY: u16 = 1 << 1;
/// The server accepts `NBD_CMD_FLUSH`.
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Several connections to one export see the same data.
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// Ends the handshake without an export.
pub const OPT_ABORT: u32 = 2;
/// Lists the exports.
pub const OPT_LIST: u32 = 3;
/// Upgrades to TLS (not offered).
pub const OPT_STARTTLS: u32 = 5;
/// Describes an export.
pub const OPT_INFO: u32 = 6;
/// Describes an export and enters transmission.
pub const OPT_GO: u32 = 7;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// An export in the answer of `NBD_OPT_LIST`.
pub const REP_SERVER: u32 = 2;
/// An information item of `NBD_OPT_INFO`/`NBD_OPT_GO`.
pub const REP_INFO: u32 = 3;
/// The option is not supported.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Refused by policy.
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// The option was malformed.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// `NBD_REP_ERR_TLS_REQD`: the server needs `NBD_OPT_STARTTLS` first.
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

/// Information types.
pub const INFO_EXPORT: u16 = 0;
/// The export's description.
pub const INFO_DESCRIPTION: u16 = 2;
/// Block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write (refused).
pub const CMD_WRITE: u16 = 1;
/// Disconnect.
pub const CMD_DISC: u16 = 2;
/// Flush (nothing to do: read-only).
pub const CMD_FLUSH: u16 = 3;
/// Trim (refused).
pub const CMD_TRIM: u16 = 4;
/// Cache (a hint).
pub const CMD_CACHE: u16 = 5;
/// Write zeroes (refused).
pub const CMD_WRITE_ZEROES: u16 = 6;

/// Error values of replies (Linux errno numbers, as the protocol uses).
pub const EPERM: u32 = 1;
/// I/O error.
pub const EIO: u32 = 5;
/// Invalid argument.
pub const EINVAL: u32 = 22;
/// Value too large.
pub const EOVERFLOW: u32 = 75;
/// Not supported.
pub const ENOTSUP: u32 = 95;

/// Longest export name accepted (the protocol allows 4096).
pub const MAX_NAME: usize = 4096;
/// Longest option payload read.
pub const MAX_OPTION_DATA: usize = 64 * 1024;
/// Longest read served in one request.
pub const MAX_READ: u32 = 8 << 20;

/// A malformed option or request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Bytes too short for what they must hold.
    #[error("{what}: {got} bytes, need {need}")]
    Short {
        /// What was being parsed.
        what: &'static str,
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A wrong magic number.
    #[error("bad {what} magic {got:#x}")]
    Magic {
        /// What was being parsed.
        what: &'static str,
        /// The value read.
        got: u64,
    },
    /// Something else is wrong.
    #[error("{0}")]
    Invalid(String),
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

fn need(what: &'static str, b: &[u8], n: usize) -> Result<(), ProtoError> {
    if b.len() < n {
        return Err(ProtoError::Short {
            what,
            got: b.len(),
            need: n,
        });
    }
    Ok(())
}

/// The server's greeting: magic, `IHAVEOPT`, handshake flags.
pub fn greeting() -> [u8; 18] {
    let mut g = [0u8; 18];
    g[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    g[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    g[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    g
}

/// The fixed part of an option (16 bytes): `(option, data length)`.
pub fn parse_option_header(b: &[u8]) -> Result<(u32, u32), ProtoError> {
    need("option header", b, 16)?;
    let magic = be_u64(b, 0);
    if magic != IHAVEOPT {
        return Err(ProtoError::Magic {
            what: "option",
            got: magic,
        });
    }
    Ok((be_u32(b, 8), be_u32(b, 12)))
}

/// The data of `NBD_OPT_INFO`/`NBD_OPT_GO`: the export name and the
/// information types requested.
pub fn parse_info_request(data: &[u8]) -> Result<(String, Vec<u16>), ProtoError> {
    need("info request", data, 4)?;
    let n = be_u32(data, 0) as usize;
    if n > MAX_NAME {
        return Err(ProtoError::Invalid(format!("export name of {n} bytes")));
    }
    need("info request", data, 4 + n + 2)?;
    let name = export_name(&data[4..4 + n])?;
    let count = be_u16(data, 4 + n) as usize;
    let rest = &data[4 + n + 2..];
    if rest.len() != count * 2 {
        return Err(ProtoError::Invalid(format!(
            "{count} information requests in {} bytes",
            rest.len()
        )));
    }
    let infos = rest.chunks_exact(2).map(|c| be_u16(c, 0)).collect();
    Ok((name, infos))
}

/// An export name: UTF-8, at most [`MAX_NAME`] bytes.
pub fn export_name(b: &[u8]) -> Result<String, ProtoError> {
    if b.len() > MAX_NAME {
        return Err(ProtoError::Invalid(format!(
            "export name of {} bytes",
            b.len()
        )));
    }
    String::from_utf8(b.to_vec())
        .map_err(|_| ProtoError::Invalid("export name is not UTF-8".into()))
}

/// An option reply.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(20 + data.len());
    r.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
    r.extend_from_slice(&option.to_be_bytes());
    r.extend_from_slice(&kind.to_be_bytes());
    r.extend_from_slice(&(data.len() as u32).to_be_bytes());
    r.extend_from_slice(data);
    r
}

/// `NBD_INFO_EXPORT`: size and transmission flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    d
}

/// `NBD_INFO_BLOCK_SIZE`.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&min.to_be_bytes());
    d.extend_from_slice(&preferred.to_be_bytes());
    d.extend_from_slice(&max.to_be_bytes());
    d
}

/// `NBD_INFO_DESCRIPTION`.
pub fn info_description(text: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(2 + text.len());
    d.extend_from_slice(&INFO_DESCRIPTION.to_be_bytes());
    d.extend_from_slice(text.as_bytes());
    d
}

/// `NBD_REP_SERVER` data for `NBD_OPT_LIST`.
pub fn rep_server(name: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + name.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d
}

/// A transmission request (28 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// `NBD_CMD_*`.
    pub command: u16,
    /// Echoed in the reply.
    pub handle: u64,
    /// Byte offset.
    pub offset: u64,
    /// Byte length.
    pub length: u32,
}

/// Length of a request header.
pub const REQUEST_LEN: usize = 28;

/// Parses a request header.
pub fn parse_request(b: &[u8]) -> Result<Request, ProtoError> {
    need("request", b, REQUEST_LEN)?;
    let magic = be_u32(b, 0);
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::Magic {
            what: "request",
            got: u64::from(magic),
        });
    }
    Ok(Request {
        flags: be_u16(b, 4),
        command: be_u16(b, 6),
        handle: be_u64(b, 8),
        offset: be_u64(b, 16),
        length: be_u32(b, 24),
    })
}

/// A simple reply header (16 bytes; read data follows it).
pub fn simple_reply(error: u32, handle: u64) -> [u8; 16] {
    let mut r = [0u8; 16];
    r[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    r[4..8].copy_from_slice(&error.to_be_bytes());
    r[8..].copy_from_slice(&handle.to_be_bytes());
    r
}

/// What the server does with a request: its error (0: serve it) given the
/// export size. Pure policy, no I/O.
pub fn check_request(r: &Request, size: u64) -> u32 {
    match r.command {
        CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES => EPERM,
        CMD_READ | CMD_CACHE => {
            if r.length > MAX_READ {
                return EOVERFLOW;
            }
            match r.offset.checked_add(u64::from(r.length)) {
                Some(end) if end <= size => 0,
                _ => EINVAL,
            }
        }
        CMD_FLUSH => 0,
        _ => EINVAL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn info_request_round_trip_and_errors() {
        let mut d = Vec::new();
        d.extend_from_slice(&5u32.to_be_bytes());
        d.extend_from_slice(b"vol@x");
        d.extend_from_slice(&2u16.to_be_bytes());
        d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        assert_eq!(
            parse_info_request(&d),
            Ok(("vol@x".to_string(), vec![INFO_EXPORT, INFO_BLOCK_SIZE]))
        );
        assert!(parse_info_request(&d[..d.len() - 1]).is_err());
        let mut long = d.clone();
        long.push(0);
        assert!(parse_info_request(&long).is_err());
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_info_request(&huge).is_err());
        let mut bad_utf8 = Vec::new();
        bad_utf8.extend_from_slice(&1u32.to_be_bytes());
        bad_utf8.push(0xff);
        bad_utf8.extend_from_slice(&0u16.to_be_bytes());
        assert!(parse_info_request(&bad_utf8).is_err());
    }

    #[test]
    fn requests_are_checked_against_the_export() {
        let r = |command, offset, length| Request {
            flags: 0,
            command,
            handle: 1,
            offset,
            length,
        };
        assert_eq!(check_request(&r(CMD_READ, 0, 4096), 4096), 0);
        assert_eq!(check_request(&r(CMD_READ, 1, 4096), 4096), EINVAL);
        assert_eq!(check_request(&r(CMD_READ, u64::MAX, 1), 4096), EINVAL);
        assert_eq!(
            check_request(&r(CMD_READ, 0, MAX_READ + 1), u64::MAX),
            EOVERFLOW
        );
        for c in [CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES] {
            assert_eq!(check_request(&r(c, 0, 512), 4096), EPERM);
        }
        assert_eq!(check_request(&r(CMD_FLUSH, 0, 0), 4096), 0);
        assert_eq!(check_request(&r(99, 0, 0), 4096), EINVAL);
    }

    #[test]
    fn request_layout() {
        let mut b = Vec::new();
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&CMD_READ.to_be_bytes());
        b.extend_from_slice(&0x1122u64.to_be_bytes());
        b.extend_from_slice(&4096u64.to_be_bytes());
        b.extend_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(
            r,
            Request {
                flags: 1,
                command: CMD_READ,
                handle: 0x1122,
                offset: 4096,
                length: 512
            }
        );
        b[0] ^= 1;
        assert!(matches!(parse_request(&b), Err(ProtoError::Magic { .. })));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_request(&b);
            let _ = parse_option_header(&b);
            let _ = parse_info_request(&b);
            let _ = export_name(&b);
        }
    }
}
