//! Whether two forms of a property value mean the same, by the CRM's type of the property: what
//! crm-sync wrote (`1798675200000`, `1200`) and what the CRM reads back (`2026-12-31T00:00:00Z`,
//! `1200.0`) must not count as drift.

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime, PrimitiveDateTime, UtcOffset};

use crate::domain::crm::ValueKind;

/// Whether `a` and `b` are the same value of a property of kind `kind`. Text compares exactly;
/// a value that does not read as its kind compares as text.
pub fn equivalent(kind: ValueKind, a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (a, b) = (a.trim(), b.trim());
    match kind {
        ValueKind::Text => false,
        ValueKind::Number => match (integer(a), integer(b)) {
            // Whole numbers exactly: an id-like 9007199254740993 is not ...992.
            (Some(x), Some(y)) => x == y,
            _ => match (number(a), number(b)) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()),
                _ => false,
            },
        },
        ValueKind::Bool => matches!((boolean(a), boolean(b)), (Some(x), Some(y)) if x == y),
        ValueKind::DateTime => matches!((instant_ms(a), instant_ms(b)), (Some(x), Some(y)) if x == y),
        ValueKind::Date => matches!((day(a), day(b)), (Some(x), Some(y)) if x == y),
    }
}

fn number(text: &str) -> Option<f64> {
    if text.is_empty() {
        return None;
    }
    text.parse::<f64>().ok().filter(|n| n.is_finite())
}

/// A whole number written as one (`1200`, `-3`, `1200.0`): exact beyond f64's 2^53.
fn integer(text: &str) -> Option<i128> {
    let digits = text.strip_suffix(".0").unwrap_or(text);
    let unsigned = digits.strip_prefix('-').unwrap_or(digits);
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn boolean(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Epoch milliseconds of an instant written as epoch ms, RFC 3339 (`Z` or an offset),
/// Salesforce's `…+0000`, `YYYY-MM-DD HH:MM:SS` (UTC) or a bare day (midnight UTC).
pub fn instant_ms(text: &str) -> Option<i64> {
    // Epoch milliseconds, before 1970 too (`-14182980000`).
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    if !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let at = OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .or_else(|| {
            // `2026-11-27T10:15:00.000+0000`: an offset without a colon. Any text may get here,
            // so the cut must fall between characters.
            let cut = text
                .len()
                .checked_sub(5)
                .filter(|cut| text.is_char_boundary(*cut))?;
            let (stamp, offset) = text.split_at(cut);
            let sign = match offset.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let hours: i8 = offset.get(1..3)?.parse().ok()?;
            let minutes: i8 = offset.get(3..5)?.parse().ok()?;
            let offset = UtcOffset::from_hms(sign * hours, sign * minutes, 0).ok()?;
            let stamp = PrimitiveDateTime::parse(
                stamp,
                format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"),
            )
            .ok()?;
            Some(stamp.assume_offset(offset))
        })
        .or_else(|| {
            PrimitiveDateTime::parse(
                text,
                format_description!("[year]-[month]-[day] [hour]:[minute]:[second]"),
            )
            .ok()
            .map(PrimitiveDateTime::assume_utc)
        })
        .or_else(|| {
            Date::parse(text, format_description!("[year]-[month]-[day]"))
                .ok()
                .map(|date| date.midnight().assume_utc())
        })?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The UTC day of a date written as `YYYY-MM-DD`, an instant (above) or epoch ms.
fn day(text: &str) -> Option<Date> {
    if let Ok(date) = Date::parse(text, format_description!("[year]-[month]-[day]")) {
        return Some(date);
    }
    let ms = instant_ms(text)?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .map(OffsetDateTime::date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datetime_written_as_epoch_ms_equals_its_iso_read_back_in_every_crm_form() {
        for read in [
            "2026-12-31T00:00:00Z",
            "2026-12-31T00:00:00.000Z",
            "2026-12-31T01:00:00+01:00",
            "2026-12-31T00:00:00.000+0000",
            "2026-12-31 00:00:00",
        ] {
            assert!(equivalent(ValueKind::DateTime, "1798675200000", read), "{read}");
        }
        assert!(!equivalent(
            ValueKind::DateTime,
            "1798675200000",
            "2026-12-31T00:00:01Z"
        ));
    }

    #[test]
    fn a_date_compares_by_utc_day_whatever_its_form() {
        assert!(equivalent(ValueKind::Date, "2026-12-31", "1798675200000"));
        assert!(equivalent(ValueKind::Date, "2026-12-31T00:00:00Z", "2026-12-31"));
        assert!(!equivalent(ValueKind::Date, "2026-12-30", "2026-12-31"));
    }

    #[test]
    fn numbers_and_booleans_compare_by_value_not_spelling() {
        assert!(equivalent(ValueKind::Number, "1200", "1200.0"));
        assert!(equivalent(ValueKind::Number, "1200.50", "1200.5"));
        assert!(!equivalent(ValueKind::Number, "1200", "1201"));
        assert!(!equivalent(ValueKind::Number, "", "0"));
        assert!(equivalent(ValueKind::Bool, "true", "True"));
        assert!(!equivalent(ValueKind::Bool, "true", "false"));
    }

    #[test]
    fn instants_before_1970_and_large_whole_numbers_compare_exactly() {
        assert!(equivalent(
            ValueKind::DateTime,
            "-14182980000",
            "1969-07-20T20:17:00Z"
        ));
        assert!(equivalent(ValueKind::Date, "-14182980000", "1969-07-20"));
        assert!(!equivalent(
            ValueKind::Number,
            "9007199254740993",
            "9007199254740992"
        ));
        assert!(equivalent(ValueKind::Number, "1200", "1200.0"));
        assert!(equivalent(ValueKind::Number, "-0", "0"));
    }

    #[test]
    fn text_that_is_no_time_never_panics_whatever_its_characters() {
        for text in [
            "Q3 – TBD",
            "ü",
            "–––––",
            "2026-12-31T00:00:00.000+00–0",
            "+0000",
            "",
        ] {
            assert!(instant_ms(text).is_none(), "{text}");
            assert!(!equivalent(ValueKind::DateTime, text, "1798675200000"), "{text}");
            assert!(!equivalent(ValueKind::Date, text, "2026-12-31"), "{text}");
        }
    }

    #[test]
    fn text_and_values_that_do_not_read_as_their_kind_compare_exactly() {
        assert!(!equivalent(ValueKind::Text, "1200", "1200.0"));
        assert!(!equivalent(ValueKind::DateTime, "soon", "later"));
        assert!(equivalent(ValueKind::Number, "n/a", "n/a"));
        assert!(!equivalent(ValueKind::Number, "n/a", "N/A"));
    }
}
