//! Asterisk-style number patterns, matched against the E.164 form (`+` and digits).
//!
//! `0`–`9` and `+` are literals, `X` is any digit, `N` is 2–9, `Z` is 1–9, `[1-5]` or
//! `[135]` is a set, and `.` is one or more digits. Matching is a position-set walk
//! (linear in pattern × number), so hostile patterns cannot blow up.

/// Longest pattern accepted; E.164 numbers are at most 16 characters, so anything far
/// longer is a typo.
const MAX_PATTERN_LEN: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Plus,
    /// Bit `d` set means digit `d` matches.
    Digits(u16),
    /// One or more digits.
    Dot,
}

/// A parsed pattern; see the module docs for the syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    tokens: Vec<Token>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern is longer than {MAX_PATTERN_LEN} characters")]
    TooLong,
    #[error("pattern must start with '+' (it is matched against the E.164 form)")]
    NoPlus,
    #[error("'+' may only appear first")]
    MisplacedPlus,
    #[error("{0:?} is not allowed in a pattern (digits, X, N, Z, '.', [ranges])")]
    BadCharacter(char),
    #[error("'[' without a closing ']'")]
    Unclosed,
    #[error("empty set '[]'")]
    EmptySet,
    #[error("range {0}-{1} runs backwards")]
    BackwardsRange(char, char),
    #[error("{0:?} is not allowed inside '[...]' (digits and '-' only)")]
    BadSetCharacter(char),
}

const ALL_DIGITS: u16 = 0b11_1111_1111;

impl Pattern {
    pub fn parse(source: &str) -> Result<Pattern, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        if source.len() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        let mut chars = source.chars().peekable();
        if chars.next_if_eq(&'+').is_none() {
            return Err(PatternError::NoPlus);
        }
        let mut tokens = vec![Token::Plus];
        while let Some(c) = chars.next() {
            let token = match c {
                '0'..='9' => Token::Digits(1 << (c as u8 - b'0')),
                'X' | 'x' => Token::Digits(ALL_DIGITS),
                'N' | 'n' => Token::Digits(ALL_DIGITS & !0b11),
                'Z' | 'z' => Token::Digits(ALL_DIGITS & !0b1),
                '.' => Token::Dot,
                '+' => return Err(PatternError::MisplacedPlus),
                '[' => {
                    let mut set: Vec<char> = Vec::new();
                    loop {
                        match chars.next() {
                            None => return Err(PatternError::Unclosed),
                            Some(']') => break,
                            Some(c) => set.push(c),
                        }
                    }
                    Token::Digits(parse_set(&set)?)
                }
                other => return Err(PatternError::BadCharacter(other)),
            };
            tokens.push(token);
        }
        Ok(Pattern {
            source: source.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `number` matches (not just a prefix).
    pub fn matches(&self, number: &str) -> bool {
        let m = self.tokens.len();
        // active[i]: the first i tokens have consumed the input read so far.
        let mut active = vec![false; m + 1];
        let mut next = vec![false; m + 1];
        active[0] = true;
        for c in number.chars() {
            let digit = c.to_digit(10);
            next.iter_mut().for_each(|s| *s = false);
            let mut any = false;
            for (i, token) in self.tokens.iter().enumerate() {
                if !active[i] {
                    continue;
                }
                let ok = match (token, digit) {
                    (Token::Plus, _) => c == '+',
                    (Token::Digits(set), Some(d)) => set & (1 << d) != 0,
                    (Token::Dot, Some(_)) => true,
                    _ => false,
                };
                if ok {
                    next[i + 1] = true;
                    any = true;
                }
            }
            // A '.' that has consumed a digit may keep consuming digits.
            for i in 1..=m {
                if active[i] && self.tokens[i - 1] == Token::Dot && digit.is_some() {
                    next[i] = true;
                    any = true;
                }
            }
            if !any {
                return false;
            }
            std::mem::swap(&mut active, &mut next);
        }
        active[m]
    }
}

fn parse_set(chars: &[char]) -> Result<u16, PatternError> {
    if chars.is_empty() {
        return Err(PatternError::EmptySet);
    }
    let mut set = 0u16;
    let mut i = 0;
    while i < chars.len() {
        let lo = chars[i];
        if !lo.is_ascii_digit() {
            return Err(PatternError::BadSetCharacter(lo));
        }
        if chars.get(i + 1) == Some(&'-') {
            let hi = *chars.get(i + 2).ok_or(PatternError::BadSetCharacter('-'))?;
            if !hi.is_ascii_digit() {
                return Err(PatternError::BadSetCharacter(hi));
            }
            if hi < lo {
                return Err(PatternError::BackwardsRange(lo, hi));
            }
            for d in (lo as u8 - b'0')..=(hi as u8 - b'0') {
                set |= 1 << d;
            }
            i += 3;
        } else {
            set |= 1 << (lo as u8 - b'0');
            i += 1;
        }
    }
    Ok(set)
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}
