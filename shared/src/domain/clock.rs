use std::time::{SystemTime, UNIX_EPOCH};

/// The time source; injected so that rules about time (replay windows, leases) are testable.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The machine's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the system clock is set after 1970");
        i64::try_from(since_epoch.as_millis()).expect("milliseconds since 1970 fit in an i64")
    }
}

/// Formats epoch milliseconds as RFC 3339 in UTC, always with milliseconds, for humans reading
/// stored items and for messages.
pub fn rfc3339(ms: i64) -> String {
    const FORMAT: &[time::format_description::FormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_milliseconds_format_as_utc_rfc3339() {
        assert_eq!(rfc3339(1_462_216_307_945), "2016-05-02T19:11:47.945Z");
        assert_eq!(rfc3339(1_795_774_800_000), "2026-11-27T10:20:00.000Z");
    }
}
