//! RFC 3339 timestamps written straight into a stack buffer. chrono's own writer goes
//! through `core::fmt` a field at a time; a status event serialises three or four
//! timestamps and that was about 5 % of the SQLite writer's CPU per call. The output is
//! byte for byte chrono's (checked by the property test below), so the API and the
//! stored payloads do not change.

use chrono::{DateTime, Datelike as _, SecondsFormat, Timelike as _, Utc};

/// The longest output: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const MAX_LEN: usize = 30;

/// How many fractional digits to write.
#[derive(Clone, Copy)]
enum Fraction {
    /// chrono's `SecondsFormat::AutoSi`: none, 3, 6 or 9, the fewest that are exact.
    Auto,
    /// Always 3 (`SecondsFormat::Millis`: truncated, not rounded).
    Millis,
}

/// Calls `f` with `dt` as RFC 3339 in UTC with a `Z`, as chrono writes it with
/// `to_rfc3339_opts(format, true)`; years outside 0..=9999 and leap seconds take
/// chrono's path.
fn with_rfc3339<R>(dt: &DateTime<Utc>, fraction: Fraction, f: impl FnOnce(&str) -> R) -> R {
    let year = dt.year();
    let nanos = dt.nanosecond();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        let format = match fraction {
            Fraction::Auto => SecondsFormat::AutoSi,
            Fraction::Millis => SecondsFormat::Millis,
        };
        return f(&dt.to_rfc3339_opts(format, true));
    }
    let mut buf = [0u8; MAX_LEN];
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
    let (value, digits) = match fraction {
        Fraction::Millis => (nanos / 1_000_000, 3),
        Fraction::Auto if nanos == 0 => (0, 0),
        Fraction::Auto if nanos.is_multiple_of(1_000_000) => (nanos / 1_000_000, 3),
        Fraction::Auto if nanos.is_multiple_of(1_000) => (nanos / 1_000, 6),
        Fraction::Auto => (nanos, 9),
    };
    let mut len = 19;
    if digits > 0 {
        put(20, value, digits);
        len = 20 + digits;
    }
    for (at, byte) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')] {
        buf[at] = byte;
    }
    if digits > 0 {
        buf[19] = b'.';
    }
    buf[len] = b'Z';
    // Only ASCII digits and separators were written.
    match std::str::from_utf8(&buf[..=len]) {
        Ok(s) => f(s),
        Err(_) => f(&dt.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
    }
}

/// `to_rfc3339_opts(SecondsFormat::Millis, true)`.
pub fn millis(dt: &DateTime<Utc>) -> String {
    with_rfc3339(dt, Fraction::Millis, str::to_owned)
}

/// `serialize_with` for a `DateTime<Utc>`: the same string as chrono's `Serialize`.
pub fn serialize<S: serde::Serializer>(dt: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    with_rfc3339(dt, Fraction::Auto, |text| s.serialize_str(text))
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

    fn ours(dt: &DateTime<Utc>) -> String {
        with_rfc3339(dt, Fraction::Auto, str::to_owned)
    }

    fn chrono_serde(dt: &DateTime<Utc>) -> String {
        serde_json::to_value(dt)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    #[test]
    fn every_fraction_width_matches_chrono() {
        let base = Utc.with_ymd_and_hms(2026, 12, 5, 18, 33, 12).single();
        let Some(base) = base else {
            panic!("a valid date");
        };
        for nanos in [0, 271_000_000, 271_500_000, 271_500_100, 1, 999_999_999] {
            let dt = base + chrono::Duration::nanoseconds(i64::from(nanos));
            assert_eq!(ours(&dt), chrono_serde(&dt), "{nanos} ns");
            assert_eq!(millis(&dt), dt.to_rfc3339_opts(SecondsFormat::Millis, true));
        }
        let far = Utc.with_ymd_and_hms(12026, 1, 1, 0, 0, 0).single();
        if let Some(far) = far {
            assert_eq!(ours(&far), chrono_serde(&far), "a five-digit year");
        }
    }

    proptest! {
        #[test]
        fn matches_chrono_for_any_instant(secs in -62_000_000_000i64..300_000_000_000, nanos in 0u32..1_000_000_000, round in 0u32..4) {
            // Round the fraction to whole s/ms/us sometimes, so every width is drawn.
            let nanos = match round { 0 => 0, 1 => nanos / 1_000_000 * 1_000_000, 2 => nanos / 1_000 * 1_000, _ => nanos };
            if let Some(dt) = DateTime::from_timestamp(secs, nanos) {
                prop_assert_eq!(ours(&dt), chrono_serde(&dt));
                prop_assert_eq!(millis(&dt), dt.to_rfc3339_opts(SecondsFormat::Millis, true));
            }
        }
    }
}
