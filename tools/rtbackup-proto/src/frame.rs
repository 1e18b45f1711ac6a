//! The framing of the replication protocol (Documentation/protocol.rst).

use std::io::{self, IoSlice, Read, Write};

use serde::{Deserialize, Serialize};

use crate::crc::records_crc;
use crate::record::RECORD_HEADER_LEN;
use crate::verify::{
    decode_checksums, encode_checksums, ChunkChecksum, VerifyPoint, VerifyRequest,
    CHECKSUMS_HEADER_LEN, CHECKSUM_LEN, MAX_CHECKSUMS_PAYLOAD,
};

/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 16;
/// Largest frame payload.
pub const MAX_FRAME_PAYLOAD: usize = 64 << 20;
/// Largest payload of a JSON frame (HELLO, WELCOME, ERROR, …): checked before
/// anything is allocated, so a peer cannot make the receiver reserve a
/// [`MAX_FRAME_PAYLOAD`] buffer before the handshake.
pub const MAX_JSON_PAYLOAD: usize = 4 << 10;
/// Payload length of an ACK frame.
pub const ACK_PAYLOAD_LEN: usize = 8;
/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// `magic` of a frame header: the bytes "RTBW".
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RTBW");

/// Frame type codes.
pub mod frame_type {
    /// Agent → server handshake (JSON [`crate::Hello`]).
    pub const HELLO: u16 = 1;
    /// Server → agent handshake answer (JSON [`crate::Welcome`]).
    pub const WELCOME: u16 = 2;
    /// Agent → server records.
    pub const RECORDS: u16 = 3;
    /// Server → agent: highest durable seq (8 bytes LE).
    pub const ACK: u16 = 4;
    /// Either direction: JSON [`crate::ErrorMsg`]; the sender then closes.
    pub const ERROR: u16 = 5;
    /// Client → server: a rollback request ([`super::RollbackRequest`]).
    pub const ROLLBACK: u16 = 6;
    /// Server → client: what a rollback will write ([`super::RollbackPlan`]).
    pub const PLAN: u16 = 7;
    /// Server → client: [`super::EXTENT_MAGIC`], 4 zero bytes, 8 bytes of
    /// byte offset, then the data to write there.
    pub const EXTENT: u16 = 8;
    /// Server → client: the rollback's extents, or the verify's checksums,
    /// are all sent ([`super::RollbackDone`]).
    pub const DONE: u16 = 9;
    /// Client → server: a verify request ([`crate::VerifyRequest`]).
    pub const VERIFY: u16 = 10;
    /// Server → client: the point a verify's checksums describe
    /// ([`crate::VerifyPoint`]).
    pub const VERIFY_POINT: u16 = 11;
    /// Server → client: [`crate::CHECKSUMS_MAGIC`], 4 zero bytes, u64 first
    /// chunk, u32 count, 4 zero bytes, then `count` 16-byte checksums.
    pub const CHECKSUMS: u16 = 12;
    /// The highest type code.
    pub(crate) const LAST: u16 = CHECKSUMS;
}

/// `code`s of [`ErrorMsg`] the server sends.
pub mod error_code {
    /// The volume name is invalid.
    pub const BAD_VOLUME: &str = "bad-volume";
    /// HELLO's size differs from the stored volume's.
    pub const SIZE_MISMATCH: &str = "size-mismatch";
    /// Another connection is streaming this volume.
    pub const VOLUME_BUSY: &str = "volume-busy";
    /// The peer speaks a protocol version this side does not.
    pub const UNSUPPORTED_VERSION: &str = "unsupported-version";
    /// A frame is malformed (magic, length, checksum, type, truncation).
    pub const BAD_FRAME: &str = "bad-frame";
    /// A record in a RECORDS frame is malformed.
    pub const BAD_RECORD: &str = "bad-record";
    /// A record affects bytes beyond the end of the volume.
    pub const OUT_OF_RANGE: &str = "out-of-range";
    /// A record's seq is past the next expected one.
    pub const SEQ_GAP: &str = "seq-gap";
    /// A frame of a type not expected at this point, or a bad HELLO.
    pub const PROTOCOL: &str = "protocol";
    /// The server failed (e.g. an I/O error on its store).
    pub const INTERNAL: &str = "internal";
    /// HELLO names a ring this volume has already seen end (an older attach
    /// of the device): its records would rewrite history. Fatal.
    pub const STALE_RING: &str = "stale-ring";
    /// The server has as many connections as it accepts; retry later.
    pub const TOO_MANY_CONNECTIONS: &str = "too-many-connections";
    /// The volume of a request that reads one (VERIFY) does not exist.
    pub const NO_SUCH_VOLUME: &str = "no-such-volume";
    /// The server is shutting down and ended the request; retry later.
    pub const SHUTDOWN: &str = "shutdown";
    /// The volume belongs to another client (TLS: a client uses only its
    /// own volumes). Fatal.
    pub const FORBIDDEN: &str = "forbidden";
    /// The client is at a limit of its enrolment (volumes, stored bytes):
    /// nothing more is taken or acknowledged until the operator raises it
    /// or retention frees room; retry later.
    pub const OVER_QUOTA: &str = "over-quota";
    /// The backup host's disk is full: the records were not stored, nor
    /// are any acknowledged, until room is made; retry later.
    pub const STORE_FULL: &str = "store-full";
}

/// The agent's handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u16,
    /// Volume name (see [`validate_volume_name`]).
    pub volume: String,
    /// Size of the device in bytes.
    pub size_bytes: u64,
    /// Logical block size of the device.
    pub block_size: u32,
    /// `ring_id` of the current attach.
    pub ring_id: u64,
    /// Client host name, for logs.
    pub client: String,
    /// Agent version, for logs.
    pub agent_version: String,
}

/// The server's handshake answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u16,
    /// The volume.
    pub volume: String,
    /// The ring_id of HELLO.
    pub ring_id: u64,
    /// Highest seq of `ring_id` the server holds durably (0: none).
    pub durable_seq: u64,
    /// Server version, for logs.
    pub server_version: String,
}

/// First bytes of an EXTENT payload (so that no other frame's payload can
/// pass for one if its type field were damaged: the CRC covers the payload).
pub const EXTENT_MAGIC: u32 = u32::from_le_bytes(*b"RTBX");
/// Bytes before an EXTENT's data.
pub const EXTENT_HEADER_LEN: usize = 16;

/// A client asking for what it takes to bring its device back to a past
/// point: the byte ranges changed after it, with their contents at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    /// [`PROTOCOL_VERSION`].
    pub protocol: u16,
    /// Volume name.
    pub volume: String,
    /// Size of the client's device (must be the volume's).
    pub size_bytes: u64,
    /// The point, as `restore --at` takes it.
    pub point: String,
    /// Only the plan: no extents.
    pub dry_run: bool,
    /// Client host name, for logs.
    pub client: String,
}

/// The server's answer to [`RollbackRequest`], before the extents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackPlan {
    /// Time of the point (RFC 3339).
    pub time: String,
    /// Ring of the last record before the point.
    pub ring_id: u64,
    /// Seq of the last record before the point.
    pub seq: u64,
    /// Marks naming the point.
    pub marks: Vec<String>,
    /// Ranges changed after the point (merged).
    pub extents: u64,
    /// Bytes in them.
    pub bytes: u64,
}

/// The end of a rollback's extents (`frames` EXTENT frames, `bytes` of
/// data), or of a verify's checksums (`frames` CHECKSUMS frames covering
/// `bytes` of the volume: its size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackDone {
    /// EXTENT frames sent.
    pub frames: u64,
    /// Data bytes sent.
    pub bytes: u64,
}

/// An ERROR frame's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Machine-readable code ([`error_code`]).
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorMsg {
    /// An error message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// HELLO.
    Hello(Hello),
    /// WELCOME.
    Welcome(Welcome),
    /// RECORDS: concatenated records (not validated by [`read_frame`]
    /// beyond its length being a multiple of 64).
    Records(Vec<u8>),
    /// ACK: highest durable seq.
    Ack(u64),
    /// ERROR.
    Error(ErrorMsg),
    /// ROLLBACK.
    Rollback(RollbackRequest),
    /// PLAN.
    Plan(RollbackPlan),
    /// EXTENT: data to write at a byte offset.
    Extent {
        /// Byte offset on the device.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// DONE.
    Done(RollbackDone),
    /// VERIFY.
    Verify(VerifyRequest),
    /// VERIFY_POINT.
    VerifyPoint(VerifyPoint),
    /// CHECKSUMS: the checksums of chunks `first_chunk`, `first_chunk + 1`,
    /// … (see [`crate::verify`]).
    Checksums {
        /// Number of the first chunk.
        first_chunk: u64,
        /// Its checksum and those of the chunks after it, 1 to
        /// [`crate::MAX_CHECKSUMS_PER_FRAME`].
        sums: Vec<ChunkChecksum>,
    },
}

impl Frame {
    /// The frame's type code.
    pub fn frame_type(&self) -> u16 {
        match self {
            Frame::Hello(_) => frame_type::HELLO,
            Frame::Welcome(_) => frame_type::WELCOME,
            Frame::Records(_) => frame_type::RECORDS,
            Frame::Ack(_) => frame_type::ACK,
            Frame::Error(_) => frame_type::ERROR,
            Frame::Rollback(_) => frame_type::ROLLBACK,
            Frame::Plan(_) => frame_type::PLAN,
            Frame::Extent { .. } => frame_type::EXTENT,
            Frame::Done(_) => frame_type::DONE,
            Frame::Verify(_) => frame_type::VERIFY,
            Frame::VerifyPoint(_) => frame_type::VERIFY_POINT,
            Frame::Checksums { .. } => frame_type::CHECKSUMS,
        }
    }

    /// Name of the frame type, for messages.
    pub fn name(&self) -> &'static str {
        frame_type_name(self.frame_type())
    }
}

/// Name of a frame type code, for messages.
pub fn frame_type_name(t: u16) -> &'static str {
    match t {
        frame_type::HELLO => "HELLO",
        frame_type::WELCOME => "WELCOME",
        frame_type::RECORDS => "RECORDS",
        frame_type::ACK => "ACK",
        frame_type::ERROR => "ERROR",
        frame_type::ROLLBACK => "ROLLBACK",
        frame_type::PLAN => "PLAN",
        frame_type::EXTENT => "EXTENT",
        frame_type::DONE => "DONE",
        frame_type::VERIFY => "VERIFY",
        frame_type::VERIFY_POINT => "VERIFY_POINT",
        frame_type::CHECKSUMS => "CHECKSUMS",
        _ => "unknown",
    }
}

/// Errors of the wire protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The peer closed the connection at a frame boundary.
    #[error("connection closed by peer")]
    Closed,
    /// The connection ended inside a frame.
    #[error("connection closed inside a frame ({got} of {expected} bytes of the {part})")]
    Truncated {
        /// "frame header" or "frame payload".
        part: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The frame header does not start with "RTBW".
    #[error("bad frame magic {0:#010x} (not an rtbackup peer?)")]
    BadMagic(u32),
    /// A protocol version this side does not speak.
    #[error("unsupported protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(u16),
    /// An unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u16),
    /// A payload length above [`MAX_FRAME_PAYLOAD`].
    #[error("frame payload of {0} bytes exceeds the limit of {MAX_FRAME_PAYLOAD}")]
    TooLarge(usize),
    /// The payload checksum does not match.
    #[error(
        "{kind} frame checksum mismatch (header says {stored:#010x}, payload has {computed:#010x})"
    )]
    Checksum {
        /// Frame type name.
        kind: &'static str,
        /// CRC in the header.
        stored: u32,
        /// CRC of the received payload.
        computed: u32,
    },
    /// A payload that does not decode as its type says.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// Frame type name.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An invalid volume name.
    #[error("invalid volume name {name:?}: {reason}")]
    BadVolume {
        /// The name (possibly cut).
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A verify chunk size that is not a power of two from 4 KiB to 16 MiB.
    #[error("chunk size {0} is not a power of two from 4096 to 16 MiB")]
    BadChunkSize(u64),
    /// An I/O error.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl ProtoError {
    /// The [`error_code`] this error corresponds to when sent to the peer.
    pub fn code(&self) -> &'static str {
        match self {
            ProtoError::UnsupportedVersion(_) => error_code::UNSUPPORTED_VERSION,
            ProtoError::BadVolume { .. } => error_code::BAD_VOLUME,
            ProtoError::Io(_) => error_code::INTERNAL,
            ProtoError::BadChunkSize(_) => error_code::PROTOCOL,
            _ => error_code::BAD_FRAME,
        }
    }
}

/// Checks a volume name: 1 to 64 characters from `[A-Za-z0-9._-]`, not
/// starting with a dot.
pub fn validate_volume_name(name: &str) -> Result<(), ProtoError> {
    let bad = |reason| ProtoError::BadVolume {
        name: name.chars().take(80).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > 64 {
        return Err(bad("longer than 64 characters"));
    }
    if name.starts_with('.') {
        return Err(bad("starts with a dot"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
    }
    Ok(())
}

fn encode_header(t: u16, len: usize, crc: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    h[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    h[6..8].copy_from_slice(&t.to_le_bytes());
    // The callers check `len <= MAX_FRAME_PAYLOAD`, which fits a u32.
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Encodes a frame (header and payload) into bytes.
pub fn encode_frame(f: &Frame) -> Result<Vec<u8>, ProtoError> {
    let owned;
    let payload: &[u8] = match f {
        Frame::Records(r) => r,
        f => {
            owned = encode_payload(f)?;
            &owned
        }
    };
    if payload.len() > MAX_FRAME_PAYLOAD {
        return Err(ProtoError::TooLarge(payload.len()));
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    let t = f.frame_type();
    out.extend_from_slice(&encode_header(t, payload.len(), frame_crc(t, payload)));
    out.extend_from_slice(payload);
    Ok(out)
}

/// The payload of a frame (of a RECORDS frame, a copy of its records).
fn encode_payload(f: &Frame) -> Result<Vec<u8>, ProtoError> {
    let json = match f {
        Frame::Hello(h) => serde_json::to_vec(h),
        Frame::Welcome(w) => serde_json::to_vec(w),
        Frame::Error(e) => serde_json::to_vec(e),
        Frame::Rollback(r) => serde_json::to_vec(r),
        Frame::Plan(p) => serde_json::to_vec(p),
        Frame::Done(d) => serde_json::to_vec(d),
        Frame::Verify(r) => serde_json::to_vec(r),
        Frame::VerifyPoint(p) => serde_json::to_vec(p),
        Frame::Records(r) => return Ok(r.clone()),
        Frame::Ack(seq) => return Ok(seq.to_le_bytes().to_vec()),
        Frame::Checksums { first_chunk, sums } => return encode_checksums(*first_chunk, sums),
        Frame::Extent { offset, data } => {
            let mut v = Vec::with_capacity(EXTENT_HEADER_LEN + data.len());
            v.extend_from_slice(&EXTENT_MAGIC.to_le_bytes());
            v.extend_from_slice(&[0u8; 4]);
            v.extend_from_slice(&offset.to_le_bytes());
            v.extend_from_slice(data);
            return Ok(v);
        }
    };
    json.map_err(|e| ProtoError::Malformed {
        kind: f.name(),
        reason: e.to_string(),
    })
}

/// Writes one frame. Small frames go out with a single write; call `flush`
/// on buffered writers.
pub fn write_frame(w: &mut impl Write, f: &Frame) -> Result<(), ProtoError> {
    if let Frame::Records(r) = f {
        return write_records_frame(w, &[r]);
    }
    w.write_all(&encode_frame(f)?)?;
    Ok(())
}

/// Writes one RECORDS frame whose payload is the concatenation of `parts`
/// (e.g. two slices of a ring that wrapped), without copying them.
pub fn write_records_frame(w: &mut impl Write, parts: &[&[u8]]) -> Result<(), ProtoError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_FRAME_PAYLOAD {
        return Err(ProtoError::TooLarge(len));
    }
    let header = encode_header(frame_type::RECORDS, len, records_crc(parts));
    let mut bufs: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
    bufs.push(&header);
    bufs.extend(parts.iter().copied().filter(|p| !p.is_empty()));
    write_all_vectored(w, &bufs)?;
    Ok(())
}

/// `write_all` over several buffers with `write_vectored`.
fn write_all_vectored(w: &mut impl Write, bufs: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < bufs.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&bufs[idx][off..])
            .chain(bufs[idx + 1..].iter().copied())
            .map(IoSlice::new)
            .collect();
        let mut n = match w.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while idx < bufs.len() && n > 0 {
            let left = bufs[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Reads until `buf` is full or EOF; returns the bytes read (fewer than
/// `buf.len()` only at EOF).
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads one frame into `payload` (reused: no allocation once it is large
/// enough) and returns its type, after checking the magic,
/// version, type, length and payload checksum ([`frame_crc`]: a RECORDS
/// payload's records are then checked when parsed). The payload is not
/// decoded; see [`decode_frame`].
pub fn read_frame_raw(r: &mut impl Read, payload: &mut Vec<u8>) -> Result<u16, ProtoError> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    let got = read_full(r, &mut h)?;
    if got == 0 {
        return Err(ProtoError::Closed);
    }
    if got >= 4 {
        let magic = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        if magic != FRAME_MAGIC {
            return Err(ProtoError::BadMagic(magic));
        }
    }
    if got < FRAME_HEADER_LEN {
        return Err(ProtoError::Truncated {
            part: "frame header",
            got,
            expected: FRAME_HEADER_LEN,
        });
    }
    let version = u16::from_le_bytes([h[4], h[5]]);
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    let t = u16::from_le_bytes([h[6], h[7]]);
    if !(frame_type::HELLO..=frame_type::LAST).contains(&t) {
        return Err(ProtoError::UnknownType(t));
    }
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if len > MAX_FRAME_PAYLOAD {
        return Err(ProtoError::TooLarge(len));
    }
    check_payload_len(t, len)?;
    let stored = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    // Into the bytes the buffer already holds (read_to_end would zero its
    // spare capacity on every frame); only what passes them grows as it
    // arrives, so a header alone claiming 64 MiB takes no memory.
    let kept = payload.len().min(len);
    payload.truncate(kept);
    let mut got = read_full(r, payload)?;
    if got == kept && kept < len {
        got += r.take((len - kept) as u64).read_to_end(payload)?;
    }
    if got < len {
        return Err(ProtoError::Truncated {
            part: "frame payload",
            got,
            expected: len,
        });
    }
    let computed = frame_crc(t, payload);
    if computed != stored {
        return Err(ProtoError::Checksum {
            kind: frame_type_name(t),
            stored,
            computed,
        });
    }
    Ok(t)
}

/// The CRC32C of a frame's payload as its header carries it. For a RECORDS
/// frame it is taken from the records' own payload checksums
/// ([`records_crc`]): the frame's check covers the headers and padding,
/// each record's check ([`crate::parse_record`], which every consumer of
/// records runs) its payload, and neither passes over the data twice.
pub fn frame_crc(t: u16, payload: &[u8]) -> u32 {
    if t == frame_type::RECORDS {
        records_crc(&[payload])
    } else {
        crc32c::crc32c(payload)
    }
}

/// Checks a payload length against the limit of its frame type, before the
/// payload is read.
fn check_payload_len(t: u16, len: usize) -> Result<(), ProtoError> {
    let kind = frame_type_name(t);
    match t {
        frame_type::HELLO
        | frame_type::WELCOME
        | frame_type::ERROR
        | frame_type::ROLLBACK
        | frame_type::PLAN
        | frame_type::DONE
        | frame_type::VERIFY
        | frame_type::VERIFY_POINT
            if len > MAX_JSON_PAYLOAD =>
        {
            Err(ProtoError::Malformed {
                kind,
                reason: format!("{len} bytes of payload, more than the {MAX_JSON_PAYLOAD} allowed"),
            })
        }
        frame_type::ACK if len != ACK_PAYLOAD_LEN => Err(ProtoError::Malformed {
            kind,
            reason: format!("{len} bytes of payload, not {ACK_PAYLOAD_LEN}"),
        }),
        frame_type::EXTENT if len < EXTENT_HEADER_LEN => Err(ProtoError::Malformed {
            kind,
            reason: format!(
                "{len} bytes of payload, less than its {EXTENT_HEADER_LEN}-byte header"
            ),
        }),
        frame_type::CHECKSUMS
            if !(CHECKSUMS_HEADER_LEN + CHECKSUM_LEN..=MAX_CHECKSUMS_PAYLOAD).contains(&len)
                || !(len - CHECKSUMS_HEADER_LEN).is_multiple_of(CHECKSUM_LEN) =>
        {
            Err(ProtoError::Malformed {
                kind,
                reason: format!(
                    "{len} bytes of payload, not a {CHECKSUMS_HEADER_LEN}-byte header and 1 to \
                     {} checksums of {CHECKSUM_LEN} bytes",
                    crate::MAX_CHECKSUMS_PER_FRAME
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Decodes the payload of a frame of type `t` (as returned by
/// [`read_frame_raw`]).
pub fn decode_frame(t: u16, payload: Vec<u8>) -> Result<Frame, ProtoError> {
    let kind = frame_type_name(t);
    let malformed = |reason: String| ProtoError::Malformed { kind, reason };
    let json_err = |e: serde_json::Error| malformed(e.to_string());
    Ok(match t {
        frame_type::HELLO => Frame::Hello(serde_json::from_slice(&payload).map_err(json_err)?),
        frame_type::WELCOME => Frame::Welcome(serde_json::from_slice(&payload).map_err(json_err)?),
        frame_type::ERROR => Frame::Error(serde_json::from_slice(&payload).map_err(json_err)?),
        frame_type::ROLLBACK => {
            Frame::Rollback(serde_json::from_slice(&payload).map_err(json_err)?)
        }
        frame_type::PLAN => Frame::Plan(serde_json::from_slice(&payload).map_err(json_err)?),
        frame_type::DONE => Frame::Done(serde_json::from_slice(&payload).map_err(json_err)?),
        frame_type::VERIFY => Frame::Verify(serde_json::from_slice(&payload).map_err(json_err)?),
        frame_type::VERIFY_POINT => {
            Frame::VerifyPoint(serde_json::from_slice(&payload).map_err(json_err)?)
        }
        frame_type::CHECKSUMS => {
            let (first_chunk, sums) = decode_checksums(&payload)?;
            Frame::Checksums { first_chunk, sums }
        }
        frame_type::EXTENT => {
            if payload.len() < EXTENT_HEADER_LEN {
                return Err(malformed(format!(
                    "{} bytes of payload, less than its {EXTENT_HEADER_LEN}-byte header",
                    payload.len()
                )));
            }
            let magic = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            if magic != EXTENT_MAGIC || payload[4..8] != [0u8; 4] {
                return Err(malformed(format!("bad extent header (magic {magic:#x})")));
            }
            let mut o = [0u8; 8];
            o.copy_from_slice(&payload[8..16]);
            Frame::Extent {
                offset: u64::from_le_bytes(o),
                data: payload[EXTENT_HEADER_LEN..].to_vec(),
            }
        }
        frame_type::ACK => {
            let b: [u8; 8] = payload
                .as_slice()
                .try_into()
                .map_err(|_| malformed(format!("{} bytes of payload, not 8", payload.len())))?;
            Frame::Ack(u64::from_le_bytes(b))
        }
        frame_type::RECORDS => {
            if !payload.len().is_multiple_of(RECORD_HEADER_LEN) {
                return Err(malformed(format!(
                    "{} bytes of payload, not a multiple of {RECORD_HEADER_LEN}",
                    payload.len()
                )));
            }
            Frame::Records(payload)
        }
        t => return Err(ProtoError::UnknownType(t)),
    })
}

/// Reads and decodes one frame. A peer that closes the connection between
/// frames gives [`ProtoError::Closed`]; one that closes inside a frame
/// gives [`ProtoError::Truncated`].
pub fn read_frame(r: &mut impl Read) -> Result<Frame, ProtoError> {
    let mut payload = Vec::new();
    let t = read_frame_raw(r, &mut payload)?;
    decode_frame(t, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::build_record;
    use proptest::prelude::*;
    use rtbackup_abi::RTB_OP_WRITE;

    fn hello() -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            volume: "db1".into(),
            size_bytes: 1 << 30,
            block_size: 512,
            ring_id: 1234567890123,
            client: "host-a".into(),
            agent_version: "0.1.0".into(),
        }
    }

    fn frames() -> Vec<Frame> {
        vec![
            Frame::Hello(hello()),
            Frame::Welcome(Welcome {
                protocol: 1,
                volume: "db1".into(),
                ring_id: 7,
                durable_seq: 41,
                server_version: "0.1.0".into(),
            }),
            Frame::Records(build_record(RTB_OP_WRITE, 0, 1, 0, 3, 0, b"abc")),
            Frame::Records(Vec::new()),
            Frame::Ack(0xdead_beef_1234),
            Frame::Error(ErrorMsg::new(error_code::SEQ_GAP, "expected 5, got 7")),
            Frame::Rollback(RollbackRequest {
                protocol: 1,
                volume: "db1".into(),
                size_bytes: 1 << 30,
                point: "mark:before-upgrade".into(),
                dry_run: false,
                client: "host-a".into(),
            }),
            Frame::Plan(RollbackPlan {
                time: "2026-11-26T05:00:00Z".into(),
                ring_id: 7,
                seq: 40,
                marks: vec!["before-upgrade".into()],
                extents: 3,
                bytes: 12288,
            }),
            Frame::Extent {
                offset: 4096,
                data: vec![7; 4096],
            },
            Frame::Extent {
                offset: 0,
                data: Vec::new(),
            },
            Frame::Done(RollbackDone {
                frames: 2,
                bytes: 4096,
            }),
            Frame::Verify(VerifyRequest {
                protocol: 1,
                volume: "db1".into(),
                client: "host-a".into(),
                chunk_size: 64 << 10,
                size_bytes: 1 << 30,
            }),
            Frame::VerifyPoint(VerifyPoint {
                seq: 40,
                ring_id: 7,
                time: "2026-11-26T05:00:00Z".into(),
                chunk_size: 64 << 10,
                chunks: 16384,
                consistent: false,
            }),
            Frame::Checksums {
                first_chunk: 65536,
                sums: vec![[3; 16], crate::chunk_checksum(b"x")],
            },
        ]
    }

    #[test]
    fn round_trip_stream_and_clean_close() {
        let mut wire = Vec::new();
        for f in frames() {
            write_frame(&mut wire, &f).unwrap();
        }
        let mut r = &wire[..];
        for f in frames() {
            assert_eq!(read_frame(&mut r).unwrap(), f);
        }
        assert!(matches!(read_frame(&mut r), Err(ProtoError::Closed)));
    }

    #[test]
    fn hello_json_matches_the_documented_example() {
        let v: serde_json::Value = serde_json::from_slice(
            &encode_frame(&Frame::Hello(hello())).unwrap()[FRAME_HEADER_LEN..],
        )
        .unwrap();
        assert_eq!(v["volume"], "db1");
        assert_eq!(v["size_bytes"], 1u64 << 30);
        assert_eq!(v["ring_id"], 1234567890123u64);
    }

    #[test]
    fn records_frame_from_parts_equals_contiguous() {
        let a = build_record(RTB_OP_WRITE, 0, 1, 0, 3, 0, b"abc");
        let b = build_record(RTB_OP_WRITE, 0, 2, 8, 5, 0, b"defgh");
        let mut one = Vec::new();
        write_records_frame(&mut one, &[&a, &[], &b]).unwrap();
        let mut two = Vec::new();
        write_frame(&mut two, &Frame::Records([a.clone(), b.clone()].concat())).unwrap();
        assert_eq!(one, two);
    }

    /// A writer that accepts at most 7 bytes per call and only from the
    /// first slice, to exercise the vectored write loop.
    struct Dribble(Vec<u8>);
    impl Write for Dribble {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(7);
            self.0.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_write_survives_short_writes() {
        let a = build_record(RTB_OP_WRITE, 0, 1, 0, 100, 0, &[9; 100]);
        let b = build_record(RTB_OP_WRITE, 0, 2, 8, 1, 0, &[1]);
        let mut d = Dribble(Vec::new());
        write_records_frame(&mut d, &[&a, &b]).unwrap();
        let f = read_frame(&mut &d.0[..]).unwrap();
        assert_eq!(f, Frame::Records([a, b].concat()));
    }

    #[test]
    fn errors_are_specific() {
        let wire = encode_frame(&Frame::Ack(1)).unwrap();
        let mut bad = wire.clone();
        bad[0] = b'X';
        let e = read_frame(&mut &bad[..]).unwrap_err();
        assert!(e.to_string().contains("not an rtbackup peer"), "{e}");
        let mut bad = wire.clone();
        bad[4] = 2;
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtoError::UnsupportedVersion(2))
        ));
        let mut bad = wire.clone();
        bad[8..12].copy_from_slice(&((MAX_FRAME_PAYLOAD + 1) as u32).to_le_bytes());
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtoError::TooLarge(_))
        ));
        assert!(matches!(
            read_frame(&mut &wire[..10]),
            Err(ProtoError::Truncated { .. })
        ));
        assert!(matches!(
            read_frame(&mut &wire[..20]),
            Err(ProtoError::Truncated { .. })
        ));
        let big = vec![0u8; MAX_FRAME_PAYLOAD + 64];
        assert!(matches!(
            write_records_frame(&mut Vec::new(), &[&big]),
            Err(ProtoError::TooLarge(_))
        ));
    }

    #[test]
    fn control_frame_lengths_are_capped_before_reading() {
        // A HELLO header announcing more than the JSON limit is refused
        // before its payload is read (none follows here).
        for (t, len) in [
            (frame_type::HELLO, MAX_JSON_PAYLOAD + 1),
            (frame_type::WELCOME, MAX_FRAME_PAYLOAD),
            (frame_type::ERROR, 1 << 20),
            (frame_type::ACK, 9),
            (frame_type::ACK, 0),
            (frame_type::VERIFY, MAX_JSON_PAYLOAD + 1),
            (frame_type::VERIFY_POINT, MAX_JSON_PAYLOAD + 1),
            (frame_type::CHECKSUMS, 0),
            (frame_type::CHECKSUMS, CHECKSUMS_HEADER_LEN),
            (frame_type::CHECKSUMS, CHECKSUMS_HEADER_LEN + 17),
            (frame_type::CHECKSUMS, MAX_CHECKSUMS_PAYLOAD + CHECKSUM_LEN),
        ] {
            let wire = encode_header(t, len, 0);
            let mut payload = Vec::new();
            match read_frame_raw(&mut &wire[..], &mut payload) {
                Err(ProtoError::Malformed { kind, .. }) => {
                    assert_eq!(kind, frame_type_name(t))
                }
                r => panic!("type {t} len {len}: {r:?}"),
            }
            assert_eq!(payload.capacity(), 0, "type {t} len {len}");
        }
        // At the limit is fine.
        let body = vec![b' '; MAX_JSON_PAYLOAD];
        let mut wire = encode_header(frame_type::HELLO, body.len(), crc32c::crc32c(&body)).to_vec();
        wire.extend_from_slice(&body);
        let mut payload = Vec::new();
        assert_eq!(
            read_frame_raw(&mut &wire[..], &mut payload).unwrap(),
            frame_type::HELLO
        );
    }

    #[test]
    fn payload_buffer_is_reused() {
        let big = Frame::Records(build_record(RTB_OP_WRITE, 0, 1, 0, 4096, 0, &[5; 4096]));
        let small = Frame::Records(build_record(RTB_OP_WRITE, 0, 2, 0, 3, 0, b"abc"));
        let mut wire = encode_frame(&big).unwrap();
        wire.extend(encode_frame(&small).unwrap());
        let mut r = &wire[..];
        let mut payload = Vec::new();
        read_frame_raw(&mut r, &mut payload).unwrap();
        let (cap, ptr) = (payload.capacity(), payload.as_ptr());
        read_frame_raw(&mut r, &mut payload).unwrap();
        assert_eq!((payload.capacity(), payload.as_ptr()), (cap, ptr));
        assert_eq!(decode_frame(frame_type::RECORDS, payload).unwrap(), small);
    }

    #[test]
    fn a_header_alone_takes_no_payload_memory() {
        // A frame claiming the largest payload, then nothing: the buffer
        // grows only with bytes that arrive, fresh or reused.
        let mut wire = encode_header(frame_type::RECORDS, MAX_FRAME_PAYLOAD, 0).to_vec();
        wire.extend_from_slice(&[7u8; 100]);
        for mut payload in [Vec::new(), vec![1u8; 4096]] {
            match read_frame_raw(&mut &wire[..], &mut payload) {
                Err(ProtoError::Truncated { got, expected, .. }) => {
                    assert_eq!((got, expected), (100, MAX_FRAME_PAYLOAD))
                }
                r => panic!("{r:?}"),
            }
            assert!(payload.capacity() < 1 << 20, "{}", payload.capacity());
        }
        // Fewer bytes than a reused buffer holds: the same count.
        let mut payload = vec![1u8; 4096];
        let mut short = encode_header(frame_type::RECORDS, 2048, 0).to_vec();
        short.extend_from_slice(&[7u8; 64]);
        match read_frame_raw(&mut &short[..], &mut payload) {
            Err(ProtoError::Truncated { got, .. }) => assert_eq!(got, 64),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn volume_names() {
        for ok in ["db1", "a", "A.b_c-9", &"x".repeat(64)] {
            validate_volume_name(ok).unwrap();
        }
        for bad in [
            "",
            ".hidden",
            "a/b",
            "..",
            "a b",
            "é",
            &"x".repeat(65),
            "a\0",
        ] {
            assert!(validate_volume_name(bad).is_err(), "{bad:?}");
        }
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (any::<u64>(), "[a-z]{1,10}").prop_map(|(r, v)| Frame::Hello(Hello {
                ring_id: r,
                volume: v,
                ..hello()
            })),
            (any::<u64>(), any::<u64>()).prop_map(|(r, d)| Frame::Welcome(Welcome {
                protocol: 1,
                volume: "v".into(),
                ring_id: r,
                durable_seq: d,
                server_version: "x".into()
            })),
            any::<u64>().prop_map(Frame::Ack),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..100))
                .prop_map(|(offset, data)| Frame::Extent { offset, data }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(frames, bytes)| Frame::Done(RollbackDone { frames, bytes })),
            ("[a-z]{1,10}", ".{0,20}").prop_map(|(v, p)| Frame::Rollback(RollbackRequest {
                protocol: 1,
                volume: v,
                size_bytes: 1 << 20,
                point: p,
                dry_run: true,
                client: "c".into()
            })),
            ".{0,40}".prop_map(|m| Frame::Error(ErrorMsg::new("internal", m))),
            ("[a-z]{1,10}", any::<u64>(), any::<u64>()).prop_map(|(v, c, s)| {
                Frame::Verify(VerifyRequest {
                    protocol: 1,
                    volume: v,
                    client: "c".into(),
                    chunk_size: c,
                    size_bytes: s,
                })
            }),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(seq, ring_id, chunks, consistent)| {
                    Frame::VerifyPoint(VerifyPoint {
                        seq,
                        ring_id,
                        time: "2026-11-26T05:00:00Z".into(),
                        chunk_size: 4096,
                        chunks,
                        consistent,
                    })
                }
            ),
            (
                0u64..1 << 50,
                proptest::collection::vec(any::<[u8; 16]>(), 1..20)
            )
                .prop_map(|(first_chunk, sums)| Frame::Checksums { first_chunk, sums }),
            proptest::collection::vec(any::<u8>(), 1..200).prop_map(|d| {
                Frame::Records(build_record(RTB_OP_WRITE, 0, 1, 0, d.len() as u64, 0, &d))
            }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(f in arb_frame()) {
            let wire = encode_frame(&f).unwrap();
            prop_assert_eq!(read_frame(&mut &wire[..]).unwrap(), f);
        }

        #[test]
        fn every_single_byte_corruption_is_detected(
            f in arb_frame(), at in any::<proptest::sample::Index>(), x in 1u8..=255
        ) {
            let mut wire = encode_frame(&f).unwrap();
            let i = at.index(wire.len());
            wire[i] ^= x;
            // More bytes follow, so that a grown length is not a truncation.
            wire.extend_from_slice(&[0u8; 300]);
            match read_frame(&mut &wire[..]) {
                Err(_) => {}
                // Frame-level checks cannot tell records from other bytes of a
                // length multiple of 64; the record layer must then object.
                Ok(Frame::Records(r)) => {
                    prop_assert!(crate::records(&r).any(|r| r.is_err()),
                        "corruption at {} undetected", i);
                }
                Ok(g) => prop_assert!(false, "corruption at {} undetected: {:?}", i, g),
            }
        }

        #[test]
        fn every_truncation_is_detected(f in arb_frame()) {
            let wire = encode_frame(&f).unwrap();
            prop_assert!(matches!(read_frame(&mut &wire[..0]), Err(ProtoError::Closed)));
            for n in 1..wire.len() {
                let e = read_frame(&mut &wire[..n]).unwrap_err();
                prop_assert!(matches!(e, ProtoError::Truncated { .. }), "cut at {}: {}", n, e);
            }
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_frame(&mut &buf[..]);
        }

        #[test]
        fn garbage_after_a_valid_header_never_panics(
            t in 0u16..14, body in proptest::collection::vec(any::<u8>(), 0..300)
        ) {
            let mut wire = encode_header(t, body.len(), crc32c::crc32c(&body)).to_vec();
            wire.extend_from_slice(&body);
            let _ = read_frame(&mut &wire[..]);
        }
    }
}
