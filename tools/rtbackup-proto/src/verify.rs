//! The payloads of a verify (Documentation/protocol.rst, "Verify"): a
//! client asks for the checksum of every chunk of a volume at the end of
//! its durable journal, to compare with its device.
//!
//! A chunk's checksum is the first 16 bytes of the BLAKE3 hash of its bytes
//! ([`chunk_checksum`]); chunk `i` is the bytes `[i * chunk_size, (i + 1) *
//! chunk_size)` of the volume, the last one cut at the volume's end
//! ([`chunk_extent`]).

use rtbackup_abi::{RTB_CHUNK_MAX, RTB_CHUNK_MIN};
use serde::{Deserialize, Serialize};

use crate::frame::ProtoError;

/// First bytes of a CHECKSUMS payload, "RTBC".
pub const CHECKSUMS_MAGIC: u32 = u32::from_le_bytes(*b"RTBC");
/// Bytes before the checksums of a CHECKSUMS payload: magic, 4 zero bytes,
/// `first_chunk` (u64), `count` (u32), 4 zero bytes.
pub const CHECKSUMS_HEADER_LEN: usize = 24;
/// Bytes of one chunk checksum.
pub const CHECKSUM_LEN: usize = 16;
/// Most checksums in one CHECKSUMS frame.
pub const MAX_CHECKSUMS_PER_FRAME: usize = 65536;
/// Largest CHECKSUMS payload.
pub const MAX_CHECKSUMS_PAYLOAD: usize =
    CHECKSUMS_HEADER_LEN + CHECKSUM_LEN * MAX_CHECKSUMS_PER_FRAME;

/// The checksum of one chunk: the first 16 bytes of its BLAKE3 hash.
pub type ChunkChecksum = [u8; CHECKSUM_LEN];

/// The frame type name CHECKSUMS errors carry.
const CHECKSUMS: &str = "CHECKSUMS";

/// A client asking for the checksums of a volume's chunks at the end of its
/// durable journal (the first frame of its connection).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// [`crate::PROTOCOL_VERSION`].
    pub protocol: u16,
    /// Volume name.
    pub volume: String,
    /// Client host name, for logs.
    pub client: String,
    /// Bytes per chunk: a power of two from [`RTB_CHUNK_MIN`] to
    /// [`RTB_CHUNK_MAX`] ([`check_chunk_size`]).
    pub chunk_size: u64,
    /// Size of the client's device (must be the volume's).
    pub size_bytes: u64,
}

impl VerifyRequest {
    /// A request of this protocol version.
    pub fn new(volume: &str, client: &str, chunk_size: u64, size_bytes: u64) -> Self {
        Self {
            protocol: crate::PROTOCOL_VERSION,
            volume: volume.to_owned(),
            client: client.to_owned(),
            chunk_size,
            size_bytes,
        }
    }
}

/// The server's answer to [`VerifyRequest`], before the checksums: the
/// state they describe, the end of the volume's durable journal (where the
/// next records of the volume will be applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyPoint {
    /// Seq of the last durable record (0: none of this ring).
    pub seq: u64,
    /// Ring of the last durable record.
    pub ring_id: u64,
    /// Time of the last durable record (RFC 3339, as the points listing
    /// prints times).
    pub time: String,
    /// Bytes per chunk (the request's).
    pub chunk_size: u64,
    /// Checksums that follow: the volume's size divided by `chunk_size`,
    /// rounded up.
    pub chunks: u64,
    /// Whether that state is a consistency point's: no record after the
    /// volume's latest consistency point changes data. False when the
    /// journal ends with writes no flush followed yet, or inside a resync
    /// section. A server that does not send it answered with its latest
    /// consistency point: true.
    #[serde(default = "answered_a_point")]
    pub consistent: bool,
}

/// [`VerifyPoint::consistent`] of servers that do not send it.
fn answered_a_point() -> bool {
    true
}

/// The checksum of a chunk's bytes, as the server computes it: the first
/// 16 bytes of their BLAKE3 hash.
pub fn chunk_checksum(bytes: &[u8]) -> ChunkChecksum {
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&blake3::hash(bytes).as_bytes()[..CHECKSUM_LEN]);
    out
}

/// Checks a verify chunk size: a power of two from [`RTB_CHUNK_MIN`] (4 KiB)
/// to [`RTB_CHUNK_MAX`] (16 MiB).
pub fn check_chunk_size(chunk_size: u64) -> Result<(), ProtoError> {
    if chunk_size.is_power_of_two() && (RTB_CHUNK_MIN..=RTB_CHUNK_MAX).contains(&chunk_size) {
        Ok(())
    } else {
        Err(ProtoError::BadChunkSize(chunk_size))
    }
}

/// Chunks of a volume of `size_bytes`: the last one may be shorter.
/// `chunk_size` must not be 0.
pub fn chunk_count(size_bytes: u64, chunk_size: u64) -> u64 {
    size_bytes.div_ceil(chunk_size.max(1))
}

/// Byte offset and length of chunk `chunk` of a volume of `size_bytes`
/// (length 0 past the end).
pub fn chunk_extent(chunk: u64, chunk_size: u64, size_bytes: u64) -> (u64, u64) {
    let start = chunk.saturating_mul(chunk_size).min(size_bytes);
    let end = start.saturating_add(chunk_size).min(size_bytes);
    (start, end - start)
}

/// Encodes a CHECKSUMS payload: the checksums of chunks `first_chunk`,
/// `first_chunk + 1`, … (1 to [`MAX_CHECKSUMS_PER_FRAME`] of them).
pub fn encode_checksums(first_chunk: u64, sums: &[ChunkChecksum]) -> Result<Vec<u8>, ProtoError> {
    check_count(first_chunk, sums.len())?;
    let mut v = Vec::with_capacity(CHECKSUMS_HEADER_LEN + CHECKSUM_LEN * sums.len());
    v.extend_from_slice(&CHECKSUMS_MAGIC.to_le_bytes());
    v.extend_from_slice(&[0u8; 4]);
    v.extend_from_slice(&first_chunk.to_le_bytes());
    // check_count: at most MAX_CHECKSUMS_PER_FRAME, which fits a u32.
    v.extend_from_slice(&(sums.len() as u32).to_le_bytes());
    v.extend_from_slice(&[0u8; 4]);
    for s in sums {
        v.extend_from_slice(s);
    }
    Ok(v)
}

/// Decodes a CHECKSUMS payload into its first chunk and checksums, checking
/// the magic, the zero fields, the count (1 to [`MAX_CHECKSUMS_PER_FRAME`],
/// and no chunk number past `u64::MAX`) and that the length is exactly the
/// header and `count` checksums.
pub fn decode_checksums(payload: &[u8]) -> Result<(u64, Vec<ChunkChecksum>), ProtoError> {
    let malformed = |reason: String| ProtoError::Malformed {
        kind: CHECKSUMS,
        reason,
    };
    let header: &[u8; CHECKSUMS_HEADER_LEN] = payload
        .get(..CHECKSUMS_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            malformed(format!(
                "{} bytes of payload, less than its {CHECKSUMS_HEADER_LEN}-byte header",
                payload.len()
            ))
        })?;
    let [m0, m1, m2, m3, z0, z1, z2, z3, f0, f1, f2, f3, f4, f5, f6, f7, c0, c1, c2, c3, y0, y1, y2, y3] =
        *header;
    let magic = u32::from_le_bytes([m0, m1, m2, m3]);
    if magic != CHECKSUMS_MAGIC {
        return Err(malformed(format!(
            "bad magic {magic:#010x} (expected \"RTBC\")"
        )));
    }
    if [z0, z1, z2, z3, y0, y1, y2, y3] != [0u8; 8] {
        return Err(malformed("reserved header bytes are not zero".into()));
    }
    let first_chunk = u64::from_le_bytes([f0, f1, f2, f3, f4, f5, f6, f7]);
    let count = u32::from_le_bytes([c0, c1, c2, c3]) as usize;
    check_count(first_chunk, count)?;
    let body = &payload[CHECKSUMS_HEADER_LEN..];
    if body.len() != count * CHECKSUM_LEN {
        return Err(malformed(format!(
            "{} bytes of checksums for a count of {count} (expected {})",
            body.len(),
            count * CHECKSUM_LEN
        )));
    }
    let sums = body
        .chunks_exact(CHECKSUM_LEN)
        .map(|c| {
            let mut s = [0u8; CHECKSUM_LEN];
            s.copy_from_slice(c);
            s
        })
        .collect();
    Ok((first_chunk, sums))
}

/// Checks the number of checksums of a CHECKSUMS frame.
fn check_count(first_chunk: u64, count: usize) -> Result<(), ProtoError> {
    let reason = if count == 0 {
        "no checksums (a frame carries 1 or more)".to_owned()
    } else if count > MAX_CHECKSUMS_PER_FRAME {
        format!("{count} checksums, more than the {MAX_CHECKSUMS_PER_FRAME} allowed")
    } else if first_chunk.checked_add(count as u64).is_none() {
        format!("{count} checksums from chunk {first_chunk} pass the last chunk number")
    } else {
        return Ok(());
    };
    Err(ProtoError::Malformed {
        kind: CHECKSUMS,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chunk_checksum_is_a_blake3_prefix() {
        // BLAKE3 of the empty input (the published test vector).
        assert_eq!(
            chunk_checksum(b""),
            [
                0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc,
                0xc9, 0x49
            ]
        );
        assert_ne!(chunk_checksum(&[0; 4096]), chunk_checksum(&[0; 4097]));
    }

    #[test]
    fn chunk_sizes() {
        for ok in [4096, 8192, 64 << 10, 16 << 20] {
            check_chunk_size(ok).unwrap();
        }
        for bad in [0, 1, 512, 2048, 4095, 4097, 12288, 32 << 20, u64::MAX] {
            let e = check_chunk_size(bad).unwrap_err();
            assert_eq!(e.code(), crate::error_code::PROTOCOL, "{bad}");
            assert!(e.to_string().contains("power of two"), "{e}");
        }
    }

    #[test]
    fn chunks_of_a_volume() {
        assert_eq!(chunk_count(1 << 20, 4096), 256);
        assert_eq!(chunk_count((1 << 20) + 512, 4096), 257);
        assert_eq!(chunk_extent(0, 4096, 10000), (0, 4096));
        assert_eq!(chunk_extent(2, 4096, 10000), (8192, 1808));
        assert_eq!(chunk_extent(3, 4096, 10000), (10000, 0));
        assert_eq!(chunk_extent(u64::MAX, 4096, 10000), (10000, 0));
    }

    #[test]
    fn verify_point_json_of_older_servers_is_a_point() {
        let old = br#"{"seq": 40, "ring_id": 7, "time": "2026-11-26T05:00:00Z",
                       "chunk_size": 65536, "chunks": 3}"#;
        let p = crate::decode_frame(crate::frame_type::VERIFY_POINT, old.to_vec()).unwrap();
        let crate::Frame::VerifyPoint(p) = p else {
            panic!("{p:?}");
        };
        assert!(p.consistent);
        assert_eq!((p.seq, p.ring_id, p.chunks), (40, 7, 3));
        let json = serde_json::to_value(VerifyPoint {
            consistent: false,
            ..p
        })
        .unwrap();
        assert_eq!(json["consistent"], false);
    }

    #[test]
    fn payload_layout() {
        let p = encode_checksums(0x0102_0304_0506_0708, &[[0xaa; 16], [0xbb; 16]]).unwrap();
        assert_eq!(&p[..4], b"RTBC");
        assert_eq!(&p[4..8], &[0; 4]);
        assert_eq!(&p[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&p[16..20], &[2, 0, 0, 0]);
        assert_eq!(&p[20..24], &[0; 4]);
        assert_eq!(&p[24..40], &[0xaa; 16]);
        assert_eq!(&p[40..], &[0xbb; 16]);
        assert_eq!(p.len(), 24 + 2 * 16);
    }

    #[test]
    fn bad_payloads_are_refused_with_a_reason() {
        let good = encode_checksums(5, &[[1; 16], [2; 16], [3; 16]]).unwrap();
        let check = |p: &[u8], want: &str| {
            let e = decode_checksums(p).unwrap_err();
            assert!(
                matches!(
                    e,
                    ProtoError::Malformed {
                        kind: "CHECKSUMS",
                        ..
                    }
                ) && e.to_string().contains(want),
                "{e} (want {want:?})"
            );
        };
        check(&good[..23], "less than its 24-byte header");
        let mut p = good.clone();
        p[0] = b'X';
        check(&p, "bad magic");
        for i in (4..8).chain(20..24) {
            let mut p = good.clone();
            p[i] = 1;
            check(&p, "not zero");
        }
        check(
            &good[..good.len() - 1],
            "47 bytes of checksums for a count of 3",
        );
        let mut p = good.clone();
        p.push(0);
        check(&p, "49 bytes of checksums");
        let mut p = good.clone();
        p[16..20].copy_from_slice(&0u32.to_le_bytes());
        check(&p[..24], "no checksums");
        let mut p = good.clone();
        p[16..20].copy_from_slice(&65537u32.to_le_bytes());
        check(&p, "more than the 65536 allowed");
        let mut p = good.clone();
        p[8..16].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        check(&p, "pass the last chunk number");
        assert!(encode_checksums(0, &[]).is_err());
        assert!(encode_checksums(0, &vec![[0; 16]; MAX_CHECKSUMS_PER_FRAME + 1]).is_err());
        let full = encode_checksums(0, &vec![[7; 16]; MAX_CHECKSUMS_PER_FRAME]).unwrap();
        assert_eq!(full.len(), MAX_CHECKSUMS_PAYLOAD);
        assert_eq!(
            decode_checksums(&full).unwrap().1.len(),
            MAX_CHECKSUMS_PER_FRAME
        );
    }

    proptest! {
        #[test]
        fn checksums_round_trip(
            first in any::<u64>(),
            sums in proptest::collection::vec(any::<[u8; 16]>(), 1..300),
        ) {
            let first = first.min(u64::MAX - sums.len() as u64);
            let p = encode_checksums(first, &sums).unwrap();
            prop_assert_eq!(p.len(), CHECKSUMS_HEADER_LEN + 16 * sums.len());
            let (f, s) = decode_checksums(&p).unwrap();
            prop_assert_eq!(f, first);
            prop_assert_eq!(s, sums);
        }

        /// A damaged header or a cut or grown payload is refused; damaged
        /// checksum bytes decode (the frame CRC is what catches those).
        #[test]
        fn corrupted_payloads_are_refused(
            first in 0u64..1 << 40,
            sums in proptest::collection::vec(any::<[u8; 16]>(), 1..50),
            at in any::<proptest::sample::Index>(),
            x in 1u8..=255,
            cut in any::<proptest::sample::Index>(),
            extra in 1usize..40,
        ) {
            let p = encode_checksums(first, &sums).unwrap();
            let i = at.index(CHECKSUMS_HEADER_LEN);
            let mut bad = p.clone();
            bad[i] ^= x;
            match decode_checksums(&bad) {
                // A first_chunk byte is not checked beyond overflow.
                Ok((f, s)) => prop_assert!((8..16).contains(&i) && f != first && s == sums),
                Err(e) => {
                    let malformed = matches!(e, ProtoError::Malformed { .. });
                    prop_assert!(malformed, "{}", e);
                }
            }
            let n = cut.index(p.len());
            prop_assert!(decode_checksums(&p[..n]).is_err());
            let mut grown = p.clone();
            grown.extend(std::iter::repeat_n(0u8, extra));
            prop_assert!(decode_checksums(&grown).is_err());
        }

        #[test]
        fn garbage_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_checksums(&buf);
        }
    }
}
