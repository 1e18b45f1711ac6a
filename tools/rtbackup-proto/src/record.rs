//! Journal records: the unit the kernel ring, the wire and the server's
//! journal share, byte for byte (`RtbRecordHeader` in `rust/uapi.rs`).

use rtbackup_abi::{
    check_mark_name, record_size, RtbRecordHeader, RTB_MARK_NAME_MAX, RTB_OP_DISCARD, RTB_OP_FLUSH,
    RTB_OP_MARK, RTB_OP_PAD, RTB_OP_RESYNC, RTB_OP_RESYNC_END, RTB_OP_WRITE, RTB_OP_WRITE_ZEROES,
    RTB_RECORD_ALIGN, RTB_RECORD_MAGIC, RTB_REC_FUA, RTB_REC_PREFLUSH, RTB_RESYNC_END_PAYLOAD,
};

/// Bytes of a record header.
pub const RECORD_HEADER_LEN: usize = 64;

/// Every `RTB_REC_*` flag this version knows.
pub const KNOWN_RECORD_FLAGS: u8 = RTB_REC_FUA | RTB_REC_PREFLUSH;

/// Bytes of a 512-byte sector, the unit of `RtbRecordHeader::sector`.
pub const SECTOR_SIZE: u64 = 512;

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The buffer ends before the record does.
    #[error("record truncated: {need} bytes needed, {have} available")]
    Truncated {
        /// Bytes the record needs (the header, or `size` once the header is valid).
        need: u64,
        /// Bytes available.
        have: u64,
    },
    /// The first four bytes are not `RTBJ`.
    #[error(
        "bad record magic {found:#010x} (expected {:#010x}, \"RTBJ\")",
        RTB_RECORD_MAGIC
    )]
    BadMagic {
        /// The value found.
        found: u32,
    },
    /// The header checksum does not match the header.
    #[error("record header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    HeaderChecksum {
        /// `header_crc` as stored.
        stored: u32,
        /// CRC32C computed over the header.
        computed: u32,
    },
    /// A header field has a value the format does not allow.
    #[error("invalid record seq {seq}: {what}")]
    Invalid {
        /// `seq` of the record (its header checksum is valid).
        seq: u64,
        /// What is wrong.
        what: String,
    },
    /// The payload checksum does not match the payload.
    #[error("payload checksum mismatch in record seq {seq} (stored {stored:#010x}, computed {computed:#010x})")]
    PayloadChecksum {
        /// `seq` of the record.
        seq: u64,
        /// `payload_crc` as stored.
        stored: u32,
        /// CRC32C computed over the payload.
        computed: u32,
    },
    /// The padding after the payload is not all zero.
    #[error("non-zero padding after the payload of record seq {seq}")]
    Padding {
        /// `seq` of the record.
        seq: u64,
    },
}

impl RecordError {
    /// Whether the bytes simply end too early (a torn tail in a log, or a
    /// record split across buffers).
    pub fn is_truncated(&self) -> bool {
        matches!(self, RecordError::Truncated { .. })
    }
}

/// A validated record inside a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The decoded header.
    pub header: RtbRecordHeader,
    /// The payload (`header.payload_len` bytes): a write's or a resync
    /// chunk's data, a mark's name, a resync end's `consistent_seq`, else
    /// empty.
    pub payload: &'a [u8],
    /// The whole record including header and padding: `header.size` bytes.
    pub bytes: &'a [u8],
}

impl RecordRef<'_> {
    /// `header.seq`.
    pub fn seq(&self) -> u64 {
        self.header.seq
    }

    /// `header.op`.
    pub fn op(&self) -> u8 {
        self.header.op
    }

    /// Whether this is a padding record (ring filler, not part of the stream).
    pub fn is_pad(&self) -> bool {
        self.header.op == RTB_OP_PAD
    }

    /// Whether a consistency point precedes this record (PREFLUSH flag).
    /// Inside a resync section it is not one (the store decides:
    /// Documentation/design.rst, "Overflow and resync").
    pub fn is_consistency_point_before(&self) -> bool {
        self.header.op != RTB_OP_PAD && self.header.flags & RTB_REC_PREFLUSH != 0
    }

    /// Whether a consistency point follows this record (a FLUSH). Inside a
    /// resync section it is not one (as above).
    pub fn is_consistency_point_after(&self) -> bool {
        self.header.op == RTB_OP_FLUSH
    }

    /// The `consistent_seq` of a RESYNC_END record (its 8-byte payload,
    /// little-endian); `None` for other ops.
    pub fn consistent_seq(&self) -> Option<u64> {
        if self.header.op != RTB_OP_RESYNC_END {
            return None;
        }
        self.payload
            .first_chunk::<8>()
            .map(|b| u64::from_le_bytes(*b))
    }

    /// The name of a MARK record (validated: 1 to 64 bytes of
    /// `[A-Za-z0-9._-]`, not starting with a dot); `None` for other ops.
    pub fn mark_name(&self) -> Option<&str> {
        if self.header.op != RTB_OP_MARK {
            return None;
        }
        std::str::from_utf8(self.payload).ok()
    }

    /// The byte range `[start, end)` of the device this record affects
    /// (empty for flushes, marks, resync ends and padding). Validation guarantees no
    /// overflow.
    pub fn byte_range(&self) -> (u64, u64) {
        let start = self.header.sector * SECTOR_SIZE;
        (start, start + self.header.len)
    }
}

/// Name of an `RTB_OP_*` value, for messages.
pub fn op_name(op: u8) -> &'static str {
    match op {
        RTB_OP_WRITE => "WRITE",
        RTB_OP_DISCARD => "DISCARD",
        RTB_OP_WRITE_ZEROES => "WRITE_ZEROES",
        RTB_OP_FLUSH => "FLUSH",
        RTB_OP_MARK => "MARK",
        RTB_OP_RESYNC => "RESYNC",
        RTB_OP_RESYNC_END => "RESYNC_END",
        RTB_OP_PAD => "PAD",
        _ => "unknown",
    }
}

/// CRC32C of the 64 header bytes with the `header_crc` field taken as zero.
pub fn header_crc(header: &[u8; RECORD_HEADER_LEN]) -> u32 {
    let off = RtbRecordHeader::HEADER_CRC_OFFSET;
    let crc = crc32c::crc32c(&header[..off]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &header[off + 4..])
}

fn invalid(seq: u64, what: impl Into<String>) -> RecordError {
    RecordError::Invalid {
        seq,
        what: what.into(),
    }
}

/// Checks the fields of a header whose checksum is valid.
fn check_header(h: &RtbRecordHeader) -> Result<(), RecordError> {
    let seq = h.seq;
    if h.pad != 0 {
        return Err(invalid(seq, format!("pad field is {:#x}, not zero", h.pad)));
    }
    if h.reserved != 0 {
        return Err(invalid(
            seq,
            format!("reserved field is {:#x}, not zero", h.reserved),
        ));
    }
    let size = u64::from(h.size);
    if size % RTB_RECORD_ALIGN != 0 || size < record_size(u64::from(h.payload_len)) {
        return Err(invalid(
            seq,
            format!(
                "size {} is not a multiple of {RTB_RECORD_ALIGN} of at least {} (payload_len {})",
                h.size,
                record_size(u64::from(h.payload_len)),
                h.payload_len
            ),
        ));
    }
    if h.flags & !KNOWN_RECORD_FLAGS != 0 {
        return Err(invalid(seq, format!("unknown flags {:#04x}", h.flags)));
    }
    match h.op {
        RTB_OP_WRITE => {
            if u64::from(h.payload_len) != h.len {
                return Err(invalid(
                    seq,
                    format!("WRITE with payload_len {} != len {}", h.payload_len, h.len),
                ));
            }
        }
        RTB_OP_DISCARD | RTB_OP_WRITE_ZEROES | RTB_OP_FLUSH | RTB_OP_PAD => {
            if h.payload_len != 0 {
                return Err(invalid(
                    seq,
                    format!(
                        "{} with payload_len {} (must be 0)",
                        op_name(h.op),
                        h.payload_len
                    ),
                ));
            }
            if h.payload_crc != 0 {
                return Err(invalid(
                    seq,
                    format!("{} with payload_crc not zero", op_name(h.op)),
                ));
            }
        }
        RTB_OP_RESYNC => {
            if u64::from(h.payload_len) != h.len {
                return Err(invalid(
                    seq,
                    format!("RESYNC with payload_len {} != len {}", h.payload_len, h.len),
                ));
            }
            if !h.len.is_multiple_of(SECTOR_SIZE) {
                return Err(invalid(
                    seq,
                    format!(
                        "RESYNC with len {} (must be a multiple of {SECTOR_SIZE})",
                        h.len
                    ),
                ));
            }
        }
        RTB_OP_RESYNC_END => {
            if h.payload_len != RTB_RESYNC_END_PAYLOAD {
                return Err(invalid(
                    seq,
                    format!(
                        "RESYNC_END with payload_len {} (must be {RTB_RESYNC_END_PAYLOAD})",
                        h.payload_len
                    ),
                ));
            }
        }
        RTB_OP_MARK => {
            if h.payload_len == 0 || h.payload_len as usize > RTB_MARK_NAME_MAX {
                return Err(invalid(
                    seq,
                    format!(
                        "MARK with payload_len {} (a name of 1 to {RTB_MARK_NAME_MAX} bytes)",
                        h.payload_len
                    ),
                ));
            }
        }
        op => return Err(invalid(seq, format!("unknown op {op}"))),
    }
    match h.op {
        RTB_OP_FLUSH if h.sector != 0 || h.len != 0 => {
            return Err(invalid(seq, "FLUSH with a non-zero sector or len"));
        }
        RTB_OP_MARK | RTB_OP_RESYNC_END if h.sector != 0 || h.len != 0 || h.flags != 0 => {
            return Err(invalid(
                seq,
                format!(
                    "{} with sector {}, len {}, flags {:#04x} (must all be 0)",
                    op_name(h.op),
                    h.sector,
                    h.len,
                    h.flags
                ),
            ));
        }
        RTB_OP_RESYNC if h.flags != 0 => {
            return Err(invalid(
                seq,
                format!("RESYNC with flags {:#04x} (must be 0)", h.flags),
            ));
        }
        RTB_OP_PAD if h.seq != 0 || h.sector != 0 || h.len != 0 || h.flags != 0 => {
            return Err(invalid(
                seq,
                "PAD with a non-zero seq, sector, len or flags",
            ));
        }
        RTB_OP_PAD => {}
        _ if h.seq == 0 => return Err(invalid(seq, format!("{} with seq 0", op_name(h.op)))),
        _ => {}
    }
    let overflow = h
        .sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|s| s.checked_add(h.len))
        .is_none();
    if overflow {
        return Err(invalid(
            seq,
            format!("range sector {} + len {} overflows", h.sector, h.len),
        ));
    }
    Ok(())
}

/// Decodes and validates only the 64-byte header at the start of `buf`
/// (magic, header checksum, fields), not the payload. Useful to learn a
/// record's `size` before its bytes are all available.
pub fn parse_header(buf: &[u8]) -> Result<RtbRecordHeader, RecordError> {
    let Some(hb) = buf.first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(RecordError::Truncated {
            need: RECORD_HEADER_LEN as u64,
            have: buf.len() as u64,
        });
    };
    let h = RtbRecordHeader::from_bytes(hb);
    if h.magic != RTB_RECORD_MAGIC {
        return Err(RecordError::BadMagic { found: h.magic });
    }
    let computed = header_crc(hb);
    if computed != h.header_crc {
        return Err(RecordError::HeaderChecksum {
            stored: h.header_crc,
            computed,
        });
    }
    check_header(&h)?;
    Ok(h)
}

/// Parses and fully validates the record at the start of `buf`: magic,
/// header checksum, `size` (a multiple of 64, large enough for the payload,
/// within `buf`), a known op and flags, zero pad/reserved fields,
/// `payload_len == len` for writes and resync chunks (whose `len` is a
/// multiple of 512), a valid name for marks, 8 bytes for resync ends and 0
/// otherwise,
/// the payload checksum, and zero padding after the payload (except for
/// `RTB_OP_PAD` records, whose filler is not checked). `buf` may hold more
/// bytes after the record.
pub fn parse_record(buf: &[u8]) -> Result<RecordRef<'_>, RecordError> {
    let header = parse_header(buf)?;
    let size = header.size as usize;
    if size > buf.len() {
        return Err(RecordError::Truncated {
            need: size as u64,
            have: buf.len() as u64,
        });
    }
    let bytes = &buf[..size];
    let payload_end = RECORD_HEADER_LEN + header.payload_len as usize;
    let payload = &bytes[RECORD_HEADER_LEN..payload_end];
    if header.op != RTB_OP_PAD {
        let computed = crc32c::crc32c(payload);
        if computed != header.payload_crc {
            return Err(RecordError::PayloadChecksum {
                seq: header.seq,
                stored: header.payload_crc,
                computed,
            });
        }
        if bytes[payload_end..].iter().any(|&b| b != 0) {
            return Err(RecordError::Padding { seq: header.seq });
        }
    }
    if header.op == RTB_OP_MARK {
        check_mark_name(payload).map_err(|why| {
            invalid(
                header.seq,
                format!(
                    "MARK name {:?}: {why}",
                    String::from_utf8_lossy(payload)
                        .chars()
                        .take(80)
                        .collect::<String>()
                ),
            )
        })?;
    }
    Ok(RecordRef {
        header,
        payload,
        bytes,
    })
}

/// Iterator over consecutive records in a buffer; see [`records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    buf: &'a [u8],
    offset: usize,
    failed: bool,
}

impl<'a> Records<'a> {
    /// Byte offset in the buffer of the next record (after an error: of the
    /// record that failed).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The bytes not consumed yet.
    pub fn remaining(&self) -> &'a [u8] {
        &self.buf[self.offset..]
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RecordRef<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.offset >= self.buf.len() {
            return None;
        }
        match parse_record(&self.buf[self.offset..]) {
            Ok(r) => {
                self.offset += r.bytes.len();
                Some(Ok(r))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl std::iter::FusedIterator for Records<'_> {}

/// The consecutive records of `buf`, each validated by [`parse_record`]. The
/// iteration ends at the end of `buf` or after the first error.
pub fn records(buf: &[u8]) -> Records<'_> {
    Records {
        buf,
        offset: 0,
        failed: false,
    }
}

/// Builds a record with both checksums, padded with zeroes to
/// `record_size(payload.len())`. For tests and test producers: it encodes
/// what it is given, valid or not (e.g. `len` need not match the payload).
///
/// # Panics
/// If `payload` is 4 GiB or larger.
pub fn build_record(
    op: u8,
    flags: u8,
    seq: u64,
    sector: u64,
    len: u64,
    time_ns: u64,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(record_size(payload.len() as u64) as usize);
    append_record(&mut out, op, flags, seq, sector, len, time_ns, payload);
    out
}

/// Like [`build_record`], appending to `out`.
///
/// # Panics
/// If `payload` is 4 GiB or larger.
#[allow(clippy::too_many_arguments)]
pub fn append_record(
    out: &mut Vec<u8>,
    op: u8,
    flags: u8,
    seq: u64,
    sector: u64,
    len: u64,
    time_ns: u64,
    payload: &[u8],
) {
    let payload_len = u32::try_from(payload.len()).expect("record payload of 4 GiB or more");
    let size = record_size(u64::from(payload_len));
    let size = u32::try_from(size).expect("record of 4 GiB or more");
    let mut h = RtbRecordHeader {
        magic: RTB_RECORD_MAGIC,
        op,
        flags,
        pad: 0,
        size,
        payload_len,
        seq,
        sector,
        len,
        time_ns,
        payload_crc: if payload.is_empty() {
            0
        } else {
            crc32c::crc32c(payload)
        },
        header_crc: 0,
        reserved: 0,
    };
    h.header_crc = header_crc(&h.to_bytes());
    let start = out.len();
    out.extend_from_slice(&h.to_bytes());
    out.extend_from_slice(payload);
    out.resize(start + size as usize, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut v = build_record(RTB_OP_WRITE, RTB_REC_FUA, 7, 8, 100, 123, &[0xab; 100]);
        append_record(&mut v, RTB_OP_FLUSH, 0, 8, 0, 0, 124, &[]);
        append_record(
            &mut v,
            RTB_OP_DISCARD,
            RTB_REC_PREFLUSH,
            9,
            16,
            4096,
            125,
            &[],
        );
        v
    }

    #[test]
    fn round_trip_and_iteration() {
        let buf = sample();
        let recs: Vec<_> = records(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0].seq(), 7);
        assert_eq!(recs[0].payload, &[0xab; 100][..]);
        assert_eq!(recs[0].bytes.len(), 192);
        assert_eq!(recs[0].byte_range(), (4096, 4196));
        assert!(recs[1].is_consistency_point_after());
        assert!(recs[2].is_consistency_point_before());
        assert_eq!(recs[2].header.len, 4096);
    }

    #[test]
    fn crc_of_empty_payload_is_zero() {
        assert_eq!(crc32c::crc32c(&[]), 0);
    }

    #[test]
    fn rejects_bad_fields() {
        // Unknown op.
        let r = build_record(9, 0, 1, 0, 0, 0, &[]);
        assert!(matches!(parse_record(&r), Err(RecordError::Invalid { .. })));
        // Write with payload_len != len.
        let r = build_record(RTB_OP_WRITE, 0, 1, 0, 10, 0, &[1; 9]);
        assert!(matches!(parse_record(&r), Err(RecordError::Invalid { .. })));
        // Discard with payload.
        let r = build_record(RTB_OP_DISCARD, 0, 1, 0, 9, 0, &[1; 9]);
        assert!(matches!(parse_record(&r), Err(RecordError::Invalid { .. })));
        // Unknown flag.
        let r = build_record(RTB_OP_FLUSH, 0x80, 1, 0, 0, 0, &[]);
        assert!(matches!(parse_record(&r), Err(RecordError::Invalid { .. })));
        // Seq 0 on a non-pad record.
        let r = build_record(RTB_OP_FLUSH, 0, 0, 0, 0, 0, &[]);
        assert!(matches!(parse_record(&r), Err(RecordError::Invalid { .. })));
        // Range overflow.
        let r = build_record(RTB_OP_DISCARD, 0, 1, u64::MAX / 512, 4096, 0, &[]);
        assert!(matches!(parse_record(&r), Err(RecordError::Invalid { .. })));
        // Padding records are valid but flagged.
        let mut r = build_record(RTB_OP_PAD, 0, 0, 0, 0, 0, &[]);
        assert!(parse_record(&r).unwrap().is_pad());
        // A pad's filler is not checked, but its size is.
        r.resize(256, 0xee);
        let mut h = RtbRecordHeader::from_bytes(r.first_chunk().unwrap());
        h.size = 256;
        h.header_crc = header_crc(&h.to_bytes());
        r[..64].copy_from_slice(&h.to_bytes());
        assert_eq!(parse_record(&r).unwrap().bytes.len(), 256);
        assert!(parse_record(&r[..255]).unwrap_err().is_truncated());
    }

    #[test]
    fn a_mark_carries_its_name() {
        let r = build_record(RTB_OP_MARK, 0, 12, 0, 0, 99, b"before-upgrade");
        assert_eq!(r.len(), 128);
        let rec = parse_record(&r).unwrap();
        assert_eq!(rec.op(), RTB_OP_MARK);
        assert_eq!(rec.mark_name(), Some("before-upgrade"));
        assert_eq!(rec.byte_range(), (0, 0));
        assert!(!rec.is_consistency_point_before());
        assert!(!rec.is_consistency_point_after());
        assert_eq!(op_name(rec.op()), "MARK");
        let longest = [b'x'; RTB_MARK_NAME_MAX];
        let r = build_record(RTB_OP_MARK, 0, 1, 0, 0, 0, &longest);
        assert_eq!(parse_record(&r).unwrap().mark_name().unwrap().len(), 64);
        // Other records have no name.
        let w = build_record(RTB_OP_WRITE, 0, 1, 0, 4, 0, b"name");
        assert_eq!(parse_record(&w).unwrap().mark_name(), None);
    }

    /// Records of `op` with each (flags, sector, len, payload) are invalid,
    /// with an error saying why.
    fn assert_invalid(op: u8, cases: &[(u8, u64, u64, &[u8], &str)]) {
        for &(flags, sector, len, payload, why) in cases {
            let r = build_record(op, flags, 4, sector, len, 0, payload);
            let e = parse_record(&r).unwrap_err();
            assert!(
                matches!(e, RecordError::Invalid { seq: 4, .. }),
                "{why}: {e}"
            );
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn marks_with_bad_names_are_refused() {
        let too_long = [b'x'; RTB_MARK_NAME_MAX + 1];
        let cases: Vec<(u8, u64, u64, &[u8], &str)> = [
            (&b""[..], "payload_len 0"),
            (&too_long[..], "payload_len 65"),
            (b".hidden", "starts with a dot"),
            (b"vol@mark", "only A-Z"),
            (b"mark:x", "only A-Z"),
            (b"with space", "only A-Z"),
            (b"nul\0", "only A-Z"),
            (b"\xff\xfe", "only A-Z"),
        ]
        .into_iter()
        .map(|(name, why)| (0, 0, 0, name, why))
        .collect();
        assert_invalid(RTB_OP_MARK, &cases);
    }

    #[test]
    fn marks_with_a_range_or_flags_are_refused() {
        for (flags, sector, len) in [
            (0, 8, 0),
            (0, 0, 4096),
            (RTB_REC_PREFLUSH, 0, 0),
            (RTB_REC_FUA, 0, 0),
        ] {
            let r = build_record(RTB_OP_MARK, flags, 3, sector, len, 0, b"m1");
            let e = parse_record(&r).unwrap_err();
            assert!(
                e.to_string().contains("MARK with sector"),
                "{flags} {sector} {len}: {e}"
            );
        }
        // A mark's header alone is checked too (the ring reads headers).
        let r = build_record(RTB_OP_MARK, 0, 3, 1, 0, 0, b"m1");
        assert!(parse_header(&r).is_err());
        let r = build_record(RTB_OP_MARK, 0, 0, 0, 0, 0, b"m1");
        assert!(parse_record(&r).unwrap_err().to_string().contains("seq 0"));
        // Its name is covered by the payload checksum and padding check.
        let mut r = build_record(RTB_OP_MARK, 0, 3, 0, 0, 0, b"m1");
        r[64] = b'n';
        assert!(matches!(
            parse_record(&r),
            Err(RecordError::PayloadChecksum { .. })
        ));
        let mut r = build_record(RTB_OP_MARK, 0, 3, 0, 0, 0, b"m1");
        r[70] = 1;
        assert!(matches!(parse_record(&r), Err(RecordError::Padding { .. })));
    }

    #[test]
    fn resync_chunks_are_writes_of_whole_sectors() {
        let r = build_record(RTB_OP_RESYNC, 0, 9, 16, 1024, 5, &[3; 1024]);
        let rec = parse_record(&r).unwrap();
        assert_eq!(op_name(rec.op()), "RESYNC");
        assert_eq!(rec.byte_range(), (8192, 9216));
        assert_eq!(rec.payload, &[3; 1024][..]);
        assert!(!rec.is_consistency_point_before());
        assert!(!rec.is_consistency_point_after());
        assert_eq!(rec.consistent_seq(), None);
        // An empty one fills a reserved seq.
        let r = build_record(RTB_OP_RESYNC, 0, 10, 0, 0, 5, &[]);
        assert_eq!(parse_record(&r).unwrap().byte_range(), (0, 0));
        assert_invalid(
            RTB_OP_RESYNC,
            &[
                (0, 0, 1024, &[3u8; 512], "payload_len 512 != len 1024"),
                (0, 0, 100, &[3u8; 100], "multiple of 512"),
                (RTB_REC_FUA, 0, 512, &[3u8; 512], "flags 0x01"),
                (RTB_REC_PREFLUSH, 0, 512, &[3u8; 512], "flags 0x02"),
                (0, u64::MAX / 512, 512, &[3u8; 512], "overflows"),
            ],
        );
        let r = build_record(RTB_OP_RESYNC, 0, 0, 0, 0, 0, &[]);
        assert!(parse_record(&r).unwrap_err().to_string().contains("seq 0"));
    }

    #[test]
    fn a_resync_end_carries_its_consistent_seq() {
        let r = build_record(RTB_OP_RESYNC_END, 0, 12, 0, 0, 5, &77u64.to_le_bytes());
        assert_eq!(r.len(), 128);
        let rec = parse_record(&r).unwrap();
        assert_eq!(op_name(rec.op()), "RESYNC_END");
        assert_eq!(rec.consistent_seq(), Some(77));
        assert_eq!(rec.byte_range(), (0, 0));
        assert!(!rec.is_consistency_point_before());
        assert!(!rec.is_consistency_point_after());
        assert!(rec.mark_name().is_none());
        assert_invalid(
            RTB_OP_RESYNC_END,
            &[
                (0, 0, 0, &[1u8; 7], "payload_len 7 (must be 8)"),
                (0, 0, 0, &[1u8; 9], "payload_len 9 (must be 8)"),
                (0, 0, 0, &[], "payload_len 0 (must be 8)"),
                (0, 8, 0, &[1u8; 8], "RESYNC_END with sector 8"),
                (0, 0, 512, &[1u8; 8], "len 512"),
                (RTB_REC_PREFLUSH, 0, 0, &[1u8; 8], "flags 0x02"),
            ],
        );
        // Other records have no consistent_seq.
        let w = build_record(RTB_OP_WRITE, 0, 1, 0, 8, 0, &[1; 8]);
        assert_eq!(parse_record(&w).unwrap().consistent_seq(), None);
    }

    #[test]
    fn error_messages_name_the_problem() {
        let mut r = build_record(RTB_OP_WRITE, 0, 42, 0, 64, 0, &[5; 64]);
        r[100] ^= 1;
        let msg = parse_record(&r).unwrap_err().to_string();
        assert!(
            msg.contains("payload checksum mismatch in record seq 42"),
            "{msg}"
        );
        r[0] = b'X';
        let msg = parse_record(&r).unwrap_err().to_string();
        assert!(msg.contains("bad record magic"), "{msg}");
    }

    fn arb_record() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![
                Just(RTB_OP_WRITE),
                Just(RTB_OP_DISCARD),
                Just(RTB_OP_WRITE_ZEROES),
                Just(RTB_OP_FLUSH),
                Just(RTB_OP_MARK),
                Just(RTB_OP_RESYNC),
                Just(RTB_OP_RESYNC_END)
            ],
            0u8..4,
            1u64..1 << 40,
            0u64..1 << 30,
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<u64>(),
        )
            .prop_map(|(op, flags, seq, sector, data, t)| match op {
                RTB_OP_WRITE => build_record(op, flags, seq, sector, data.len() as u64, t, &data),
                RTB_OP_FLUSH => build_record(op, flags, seq, 0, 0, t, &[]),
                RTB_OP_MARK => {
                    let name: Vec<u8> = data
                        .iter()
                        .take(RTB_MARK_NAME_MAX)
                        .map(|b| b"abcXYZ019._-"[*b as usize % 12])
                        .collect();
                    let name = if name.is_empty() || name[0] == b'.' {
                        b"m".to_vec()
                    } else {
                        name
                    };
                    build_record(op, 0, seq, 0, 0, t, &name)
                }
                RTB_OP_RESYNC => {
                    let chunk: Vec<u8> = data
                        .iter()
                        .cycle()
                        .take(data.len() % 3 * 512)
                        .copied()
                        .collect();
                    build_record(op, 0, seq, sector, chunk.len() as u64, t, &chunk)
                }
                RTB_OP_RESYNC_END => build_record(op, 0, seq, 0, 0, t, &t.to_le_bytes()),
                _ => build_record(op, flags, seq, sector, data.len() as u64 * 512, t, &[]),
            })
    }

    proptest! {
        #[test]
        fn built_records_parse(rec in arb_record()) {
            let r = parse_record(&rec).unwrap();
            prop_assert_eq!(r.bytes, &rec[..]);
            let mut again = build_record(r.header.op, r.header.flags, r.header.seq,
                r.header.sector, r.header.len, r.header.time_ns, r.payload);
            prop_assert_eq!(&again, &rec);
            again.extend_from_slice(&[1, 2, 3]);
            prop_assert_eq!(parse_record(&again).unwrap().bytes, &rec[..]);
        }

        #[test]
        fn every_single_byte_corruption_is_detected(
            rec in arb_record(), at in any::<proptest::sample::Index>(), x in 1u8..=255
        ) {
            let mut bad = rec.clone();
            let i = at.index(bad.len());
            bad[i] ^= x;
            // Followed by more bytes, so that a grown `size` is not a truncation.
            bad.extend_from_slice(&[0u8; 4096]);
            match parse_record(&bad) {
                Err(_) => {}
                Ok(r) => prop_assert!(false, "corruption at {} undetected: {:?}", i, r.header),
            }
        }

        #[test]
        fn every_truncation_is_detected(rec in arb_record()) {
            for n in 0..rec.len() {
                let e = parse_record(&rec[..n]).unwrap_err();
                prop_assert!(e.is_truncated(), "cut at {}: {}", n, e);
            }
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_record(&buf);
            let _ = records(&buf).count();
        }

        #[test]
        fn garbage_with_valid_magic_never_panics(mut buf in proptest::collection::vec(any::<u8>(), 64..512)) {
            buf[..4].copy_from_slice(&RTB_RECORD_MAGIC.to_le_bytes());
            let hb: [u8; 64] = buf[..64].try_into().unwrap();
            let crc = header_crc(&hb);
            buf[52..56].copy_from_slice(&crc.to_le_bytes());
            let _ = parse_record(&buf);
        }

        #[test]
        fn sequences_iterate(recs in proptest::collection::vec(arb_record(), 0..8)) {
            let buf: Vec<u8> = recs.concat();
            let parsed: Vec<_> = records(&buf).collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(parsed.len(), recs.len());
            for (p, r) in parsed.iter().zip(&recs) {
                prop_assert_eq!(p.bytes, &r[..]);
            }
        }
    }
}
