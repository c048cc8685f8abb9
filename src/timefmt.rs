//! RFC 3339 timestamps written straight into a stack buffer. chrono's own writer goes
//! through `core::fmt` a field at a time; a status event serialises three or four
//! timestamps and that was about 5 % of the SQLite writer's CPU per call. The output is
//! byte for byte chrono's `SecondsFormat::Millis` with `Z` (checked by the property test
//! below).
//!
//! Every timestamp the switch shows (API responses, callback payloads, stored JSON) has
//! exactly three fractional digits: the database keeps milliseconds, so a callback built
//! from the in-memory call and the API reading the row show the same string.

use chrono::{DateTime, Datelike as _, SecondsFormat, Timelike as _, Utc};

/// The output: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
const LEN: usize = 24;

/// Calls `f` with `dt` as RFC 3339 in UTC with milliseconds (truncated, not rounded) and a
/// `Z`, as chrono writes it with `to_rfc3339_opts(SecondsFormat::Millis, true)`; years
/// outside 0..=9999 and leap seconds take chrono's path.
fn with_rfc3339<R>(dt: &DateTime<Utc>, f: impl FnOnce(&str) -> R) -> R {
    let year = dt.year();
    let nanos = dt.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        return f(&dt.to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    let mut buf = [0u8; LEN];
    let mut put = |at: usize, value: u32, digits: usize| {
        let mut v = value;
        for i in (0..digits).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, year.unsigned_abs(), 4);
    put(5, dt.month(), 2);
    put(8, dt.day(), 2);
    put(11, dt.hour(), 2);
    put(14, dt.minute(), 2);
    put(17, dt.second(), 2);
    put(20, nanos / 1_000_000, 3);
    for (at, byte) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        buf[at] = byte;
    }
    // Only ASCII digits and separators were written.
    match std::str::from_utf8(&buf) {
        Ok(s) => f(s),
        Err(_) => f(&dt.to_rfc3339_opts(SecondsFormat::Millis, true)),
    }
}

/// `to_rfc3339_opts(SecondsFormat::Millis, true)`.
pub fn millis(dt: &DateTime<Utc>) -> String {
    with_rfc3339(dt, str::to_owned)
}

/// `serialize_with` for a `DateTime<Utc>`: RFC 3339, milliseconds, `Z`.
pub fn serialize<S: serde::Serializer>(dt: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    with_rfc3339(dt, |text| s.serialize_str(text))
}

/// `serialize_with` for an `Option<DateTime<Utc>>`.
pub fn serialize_opt<S: serde::Serializer>(
    dt: &Option<DateTime<Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match dt {
        Some(dt) => serialize(dt, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use proptest::prelude::*;

    fn chrono_millis(dt: &DateTime<Utc>) -> String {
        dt.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    #[test]
    fn always_three_fractional_digits() {
        let base = Utc.with_ymd_and_hms(2026, 12, 5, 18, 33, 12).single();
        let Some(base) = base else {
            panic!("a valid date");
        };
        let cases = [
            (0, "2026-12-05T18:33:12.000Z"),
            (271_000_000, "2026-12-05T18:33:12.271Z"),
            (271_500_100, "2026-12-05T18:33:12.271Z"),
            (1, "2026-12-05T18:33:12.000Z"),
            (999_999_999, "2026-12-05T18:33:12.999Z"),
        ];
        for (nanos, want) in cases {
            let dt = base + chrono::Duration::nanoseconds(i64::from(nanos));
            assert_eq!(millis(&dt), want, "{nanos} ns");
            let json = serde_json::to_value(Wrap(dt)).unwrap_or_default();
            assert_eq!(json, serde_json::json!(want));
        }
        let far = Utc.with_ymd_and_hms(12026, 1, 1, 0, 0, 0).single();
        if let Some(far) = far {
            assert_eq!(millis(&far), chrono_millis(&far), "a five-digit year");
        }
    }

    #[derive(serde::Serialize)]
    struct Wrap(#[serde(serialize_with = "serialize")] DateTime<Utc>);

    proptest! {
        #[test]
        fn matches_chrono_for_any_instant(secs in -62_000_000_000i64..300_000_000_000, nanos in 0u32..1_000_000_000) {
            if let Some(dt) = DateTime::from_timestamp(secs, nanos) {
                prop_assert_eq!(millis(&dt), chrono_millis(&dt));
            }
        }
    }
}
