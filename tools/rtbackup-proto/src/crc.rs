//! The CRC32C of a RECORDS frame from its records' own checksums.
//!
//! A RECORDS frame's payload is a run of records, each carrying the CRC32C
//! of its payload. The frame's CRC32C over the same bytes can be had from
//! those values and the lengths alone ("combining" CRCs, as zlib's
//! `crc32_combine`), touching only the 64-byte headers and the padding:
//! the sender and the receiver then pass over the data once for the
//! records, not twice more for the frame. The `crc32c` crate's
//! `crc32c_combine` builds 32×32 bit matrices on every call and costs as
//! much as a CRC of 40 4 KiB blocks; this one multiplies by a power of `x`
//! found in a table of `x^(2^k)`, a few dozen shifts.

use crate::record::{parse_header, RECORD_HEADER_LEN};
use rtbackup_abi::RTB_OP_PAD;

/// The CRC32C polynomial, bit-reflected.
const POLY: u32 = 0x82F6_3B78;

/// `a(x) * b(x) mod P(x)`, both in the reflected representation (bit 31 is
/// the coefficient of `x^0`).
const fn mul_mod(a: u32, mut b: u32) -> u32 {
    let mut product = 0u32;
    let mut bit = 1u32 << 31;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        bit >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// `X_POW_2K[k]` is `x^(2^k) mod P`, for every bit of a byte count (k
/// from 3 to 66).
const X_POW_2K: [u32; 67] = {
    let mut t = [0u32; 67];
    // x^1: the coefficient of x^1 is bit 30.
    let mut p = 1u32 << 30;
    let mut k = 0;
    while k < 67 {
        t[k] = p;
        p = mul_mod(p, p);
        k += 1;
    }
    t
};

/// `x^(8 * bytes) mod P`: what a CRC is multiplied by when `bytes` more
/// bytes follow the ones it covers.
const fn shift_for(bytes: u64) -> u32 {
    // x^0.
    let mut p = 1u32 << 31;
    // bytes * 8 = bytes * 2^3: bit k of `bytes` stands for x^(2^(k+3)).
    let mut n = bytes;
    let mut k = 3;
    while n != 0 {
        if n & 1 != 0 {
            p = mul_mod(X_POW_2K[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC32C of `A` followed by `B`, given `crc_a = crc32c(A)`,
/// `crc_b = crc32c(B)` and the length of `B`.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: u64) -> u32 {
    mul_mod(shift_for(len_b), crc_a) ^ crc_b
}

/// The CRC32C of the concatenation of `parts`, taking each record's
/// payload checksum (`payload_crc`) for its payload instead of reading it.
/// Equal to `crc32c` of the bytes when every record's payload matches its
/// `payload_crc`, which whoever uses the records checks
/// ([`crate::parse_record`]); so a frame's CRC checked this way and its
/// records checked when parsed cover every byte once. Bytes that are not a
/// record with a valid header (the rest of a part, from there on) are
/// checksummed as they are.
pub fn records_crc(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, part| part_crc(crc, part))
}

/// [`records_crc`] of one part, continuing from `crc`.
fn part_crc(mut crc: u32, part: &[u8]) -> u32 {
    let mut rest = part;
    while !rest.is_empty() {
        let Ok(h) = parse_header(rest) else {
            return crc32c::crc32c_append(crc, rest);
        };
        let size = h.size as usize;
        let payload_end = RECORD_HEADER_LEN + h.payload_len as usize;
        if size > rest.len() || payload_end > size || h.op == RTB_OP_PAD {
            return crc32c::crc32c_append(crc, rest);
        }
        crc = crc32c::crc32c_append(crc, &rest[..RECORD_HEADER_LEN]);
        crc = crc32c_combine(crc, h.payload_crc, u64::from(h.payload_len));
        crc = crc32c::crc32c_append(crc, &rest[payload_end..size]);
        rest = &rest[size..];
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::build_record;
    use proptest::prelude::*;
    use rtbackup_abi::{RTB_OP_FLUSH, RTB_OP_MARK, RTB_OP_RESYNC_END, RTB_OP_WRITE};

    proptest! {
        #[test]
        fn combine_equals_crc_of_the_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..300),
            b in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let whole = [a.as_slice(), b.as_slice()].concat();
            prop_assert_eq!(
                crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len() as u64),
                crc32c::crc32c(&whole)
            );
        }

        #[test]
        fn records_crc_equals_crc_of_valid_records(
            lens in proptest::collection::vec(0usize..3000, 0..8),
            split in any::<prop::sample::Index>(),
            tail in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut buf = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                let seq = i as u64 + 1;
                // Every kind of payload: none, data, a mark's name, a
                // resync end's seq; a PAD record's filler is not checked.
                let (op, sector, len, data) = match len % 5 {
                    0 => (RTB_OP_FLUSH, 0, 0, Vec::new()),
                    1 => (RTB_OP_MARK, 0, 0, format!("m{seq}").into_bytes()),
                    2 => (RTB_OP_RESYNC_END, 0, 0, seq.to_le_bytes().to_vec()),
                    _ => {
                        let data = vec![(seq * 7) as u8; len.next_multiple_of(512)];
                        (RTB_OP_WRITE, 8 * seq, data.len() as u64, data)
                    }
                };
                buf.extend_from_slice(&build_record(op, 0, seq, sector, len, 1, &data));
            }
            // A PAD record (its filler is checksummed as it is).
            let pad = build_record(RTB_OP_PAD, 0, 0, 0, 0, 0, &[]);
            prop_assert!(parse_header(&pad).is_ok());
            buf.extend_from_slice(&pad);
            prop_assert_eq!(records_crc(&[&buf]), crc32c::crc32c(&buf));
            // Split anywhere (inside a record too), and with bytes that
            // are no record after them.
            let at = split.index(buf.len() + 1);
            buf.extend_from_slice(&tail);
            prop_assert_eq!(records_crc(&[&buf[..at], &buf[at..]]), crc32c::crc32c(&buf));
        }
    }

    #[test]
    fn a_payload_that_does_not_match_its_checksum_changes_the_result() {
        let mut rec = build_record(RTB_OP_WRITE, 0, 1, 0, 512, 1, &[5u8; 512]);
        let good = records_crc(&[&rec]);
        assert_eq!(good, crc32c::crc32c(&rec));
        rec[RECORD_HEADER_LEN + 10] ^= 1;
        // The frame's CRC is taken from payload_crc: the same as before,
        // while the bytes' CRC changed. The record's own check catches it.
        assert_eq!(records_crc(&[&rec]), good);
        assert_ne!(crc32c::crc32c(&rec), good);
        assert!(crate::parse_record(&rec).is_err());
    }

    #[test]
    fn shifts_by_zero_and_by_powers_of_two() {
        assert_eq!(crc32c_combine(0x1234_5678, 0, 0), 0x1234_5678);
        // Any length: the table covers every bit of a u64.
        let _ = crc32c_combine(1, 2, u64::MAX);
        for n in [1u64, 2, 3, 64, 4096, 1 << 20, (1 << 22) + 3] {
            let a = [0xA5u8; 7];
            let b = vec![0x3Cu8; n as usize];
            let whole = [a.as_slice(), b.as_slice()].concat();
            assert_eq!(
                crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), n),
                crc32c::crc32c(&whole),
                "len {n}"
            );
        }
    }
}
