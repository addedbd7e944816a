//! Timestamps exactly as Python's `datetime.isoformat()` writes them for UTC, because the other
//! programs sharing the table compare and sort these strings.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Timelike, Utc};

/// `2025-06-20T17:03:12.345678+00:00`; the fraction only when non-zero, always microseconds.
pub fn format_timestamp(t: DateTime<Utc>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S");
    let micros = t.nanosecond() / 1_000 % 1_000_000;
    if micros == 0 {
        format!("{base}+00:00")
    } else {
        format!("{base}.{micros:06}+00:00")
    }
}

/// Accepts `+00:00` and `Z` (or any offset), with or without a fraction, and a naive timestamp
/// (no offset) which older writers produced for UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(truncate_to_micros(t.with_timezone(&Utc)));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| truncate_to_micros(n.and_utc()))
}

/// A Unix-seconds value from the OpenAI API as a timestamp.
pub fn from_unix_seconds(secs: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0)
}

/// RFC 3339 with `Z`, for logs and message bodies that no Python program parses.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn truncate_to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.nanosecond() / 1_000 * 1_000;
    t.with_nanosecond(nanos).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_python_isoformat() {
        let t = parse_timestamp("2025-06-20T17:03:12.345678+00:00").unwrap();
        assert_eq!(format_timestamp(t), "2025-06-20T17:03:12.345678+00:00");
        let whole = from_unix_seconds(1_750_438_992).unwrap();
        assert_eq!(format_timestamp(whole), "2025-06-20T17:03:12+00:00");
        let small = parse_timestamp("2025-06-20T17:03:12.000100Z").unwrap();
        assert_eq!(format_timestamp(small), "2025-06-20T17:03:12.000100+00:00");
    }

    #[test]
    fn reads_every_accepted_shape() {
        for s in [
            "2025-06-20T17:03:12Z",
            "2025-06-20T17:03:12+00:00",
            "2025-06-20T17:03:12",
            "2025-06-20T19:03:12+02:00",
        ] {
            let t = parse_timestamp(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(format_timestamp(t), "2025-06-20T17:03:12+00:00", "{s}");
        }
        assert_eq!(
            format_timestamp(parse_timestamp("2025-06-20T17:03:12.5Z").unwrap()),
            "2025-06-20T17:03:12.500000+00:00"
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "yesterday", "2025-13-01T00:00:00Z", "2025-06-20 17:03"] {
            assert!(parse_timestamp(s).is_none(), "{s}");
        }
    }
}
