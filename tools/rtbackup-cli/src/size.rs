//! The one size parser of rtbackup's commands: byte counts with binary
//! suffixes (`4096`, `512K`, `64M`, `1G`, `2T`, also `KiB`, `MB`...: all
//! binary), read by the `parse-size` crate.

/// A byte count, 0 included (a rate of 0: no limit).
pub fn parse_bytes_or_zero(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s.trim())
        .map_err(|e| format!("{s:?} is not a size ({e}; e.g. 4096, 512K, 64M, 1G)"))
}

/// A byte count of at least 1.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    match parse_bytes_or_zero(s)? {
        0 => Err(format!("{s:?} must be at least 1 byte")),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("4mib"), Ok(4 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert_eq!(parse_bytes_or_zero("0"), Ok(0));
        for bad in ["", "M", "-1M", "12Q", "99999999999999G", "0"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
