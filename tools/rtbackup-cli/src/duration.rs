//! The one duration parser of rtbackup's commands: `30s`, `90min`, `12h`,
//! `7d`, `1h 30m`, and `0`, read by the `humantime` crate.

use std::time::Duration;

/// A duration, 0 included (what 0 means is the option's to say).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}; e.g. 30s, 90min, 12h, 7d)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration(" 90min "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "soon", "-1s", "5", "3 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
