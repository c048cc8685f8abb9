//! E.164 numbers (ITU-T E.164): `+`, a country code, at most 15 digits in all.

/// A validated E.164 number, always `+` followed by digits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for E164 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NumberError {
    #[error("number is empty")]
    Empty,
    #[error("number contains {0:?}, which is not a digit")]
    BadCharacter(char),
    #[error("number has {0} digits; E.164 allows 8 to 15 with the country code")]
    BadLength(usize),
    #[error("country code cannot start with 0")]
    LeadingZero,
    #[error("national number without a country code and no default country code")]
    NoCountryCode,
}

/// Strict check used by the API: exactly `+` then 8–15 digits, first digit not 0.
pub fn is_e164(s: &str) -> bool {
    parse_strict(s).is_ok()
}

pub fn parse_strict(s: &str) -> Result<E164, NumberError> {
    let digits = s.strip_prefix('+').ok_or(if s.is_empty() {
        NumberError::Empty
    } else {
        NumberError::NoCountryCode
    })?;
    check_digits(digits)?;
    Ok(E164(s.to_owned()))
}

/// Lenient normalisation for numbers from carriers: strips visual separators
/// (space, `-`, `.`, `(`, `)`), turns a leading `00` into `+`, and prefixes
/// `default_cc` (digits only, e.g. "1") to national numbers (leading trunk `0` dropped).
pub fn normalize(s: &str, default_cc: Option<&str>) -> Result<E164, NumberError> {
    let mut cleaned = String::with_capacity(s.len());
    for (i, c) in s.trim().chars().enumerate() {
        match c {
            ' ' | '-' | '.' | '(' | ')' => {}
            '+' if i == 0 => cleaned.push('+'),
            d if d.is_ascii_digit() => cleaned.push(d),
            other => return Err(NumberError::BadCharacter(other)),
        }
    }
    if cleaned.is_empty() {
        return Err(NumberError::Empty);
    }
    let full = if let Some(rest) = cleaned.strip_prefix('+') {
        format!("+{rest}")
    } else if let Some(rest) = cleaned.strip_prefix("00") {
        format!("+{rest}")
    } else {
        let cc = default_cc.ok_or(NumberError::NoCountryCode)?;
        let national = cleaned.strip_prefix('0').unwrap_or(&cleaned);
        format!("+{cc}{national}")
    };
    parse_strict(&full)
}

fn check_digits(digits: &str) -> Result<(), NumberError> {
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_digit()) {
        return Err(NumberError::BadCharacter(c));
    }
    if !(8..=15).contains(&digits.len()) {
        return Err(NumberError::BadLength(digits.len()));
    }
    if digits.starts_with('0') {
        return Err(NumberError::LeadingZero);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strict() {
        assert!(is_e164("+14155552671"));
        assert!(is_e164("+442071838750"));
        assert!(!is_e164("14155552671"));
        assert!(!is_e164("+1415555267a"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1234567"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164(""));
    }

    #[test]
    fn lenient() {
        assert_eq!(
            normalize("+1 (415) 555-2671", None).unwrap().as_str(),
            "+14155552671"
        );
        assert_eq!(
            normalize("0044 20 7183 8750", None).unwrap().as_str(),
            "+442071838750"
        );
        assert_eq!(
            normalize("020 7183 8750", Some("44")).unwrap().as_str(),
            "+442071838750"
        );
        assert_eq!(
            normalize("4155552671", None),
            Err(NumberError::NoCountryCode)
        );
    }

    proptest! {
        #[test]
        fn normalize_never_panics_and_yields_strict(s in "\\PC{0,24}") {
            if let Ok(n) = normalize(&s, Some("1")) {
                prop_assert!(is_e164(n.as_str()));
            }
        }

        #[test]
        fn strict_numbers_are_fixed_points(d in "[1-9][0-9]{7,14}") {
            let n = format!("+{d}");
            let normalized = normalize(&n, None).unwrap();
            prop_assert_eq!(normalized.as_str(), n.as_str());
        }
    }
}
