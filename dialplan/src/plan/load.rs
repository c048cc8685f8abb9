//! TOML schema for plans and its validation. Every error names where it is: the rule
//! (index and name) and, from toml's spans, the 1-based line.

use std::collections::HashMap;

use serde::Deserialize;
use toml::Spanned;

use super::{Action, NumberMatch, OwnedNumber, Pattern, PatternError, Plan, Rule, TimeWindow};
use super::{Weekday, hhmm};
use crate::e164::{self, NumberError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    default_country_code: Option<Spanned<String>>,
    #[serde(default)]
    numbers: Vec<Spanned<RawNumber>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNumber {
    number: Spanned<String>,
    tenant: Option<String>,
    webhook_url: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    to: Option<Spanned<RawMatch>>,
    from: Option<Spanned<RawMatch>>,
    source_trunk: Option<Spanned<OneOrMany>>,
    time: Option<Spanned<RawTime>>,
    agent: Option<Spanned<String>>,
    stream: Option<Spanned<RawStream>>,
    proxy: Option<Spanned<bool>>,
    trunks: Option<Spanned<Vec<String>>>,
    reject: Option<Spanned<i64>>,
    reason: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    url: String,
    encoding: Option<String>,
    sample_rate: Option<u32>,
    bidirectional: Option<bool>,
    #[serde(default)]
    parameters: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    exact: Option<String>,
    prefix: Option<String>,
    pattern: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTime {
    days: Option<Vec<String>>,
    start: Option<String>,
    end: Option<String>,
}

/// Which rule an error is about: its position in `[[rules]]` (0-based) and its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleId {
    pub index: usize,
    pub name: String,
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rules[{}] {:?}", self.index, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Not TOML, a wrong type, or an unknown key.
    #[error("{}{}{message}", at(.line), in_rule(.rule))]
    Syntax {
        line: Option<usize>,
        rule: Option<RuleId>,
        message: String,
    },
    #[error("{}default_country_code {value:?} must be 1 to 3 digits, not starting with 0", at(.line))]
    BadCountryCode { line: Option<usize>, value: String },
    #[error("{}numbers[{index}] {value:?}: {error}", at(.line))]
    BadOwnedNumber {
        index: usize,
        line: Option<usize>,
        value: String,
        error: NumberError,
    },
    #[error("{}numbers[{index}] {number} is listed twice", at(.line))]
    DuplicateOwnedNumber {
        index: usize,
        line: Option<usize>,
        number: String,
    },
    #[error("{}numbers[{index}] webhook_url {url:?} must be an http:// or https:// URL", at(.line))]
    BadWebhookUrl {
        index: usize,
        line: Option<usize>,
        url: String,
    },
    #[error("{}{rule}: {problem}", at(.line))]
    Rule {
        rule: RuleId,
        line: Option<usize>,
        problem: RuleProblem,
    },
}

impl PlanError {
    /// 1-based TOML line the error points at, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            PlanError::Syntax { line, .. }
            | PlanError::BadCountryCode { line, .. }
            | PlanError::BadOwnedNumber { line, .. }
            | PlanError::DuplicateOwnedNumber { line, .. }
            | PlanError::BadWebhookUrl { line, .. }
            | PlanError::Rule { line, .. } => *line,
        }
    }
}

fn at(line: &Option<usize>) -> String {
    line.map(|l| format!("line {l}: ")).unwrap_or_default()
}

fn in_rule(rule: &Option<RuleId>) -> String {
    rule.as_ref().map(|r| format!("{r}: ")).unwrap_or_default()
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleProblem {
    #[error("rule name is empty")]
    EmptyName,
    #[error("name already used by rules[{first_index}]")]
    DuplicateName { first_index: usize },
    #[error("no action: give one of agent, stream, proxy = true, trunks, reject")]
    NoAction,
    #[error("more than one action ({0}): give exactly one")]
    MultipleActions(String),
    #[error("`reason` only goes with `reject`")]
    ReasonWithoutReject,
    #[error("reject code {0} is outside 400–699")]
    RejectCode(i64),
    #[error("`trunks` is empty")]
    EmptyTrunks,
    #[error("`source_trunk` is empty")]
    EmptySourceTrunk,
    #[error("agent id is empty")]
    EmptyAgent,
    #[error("stream url {0:?} must start with ws:// or wss://")]
    StreamUrl(String),
    #[error("`{field}` needs exactly one of exact, prefix, pattern")]
    MatchForm { field: &'static str },
    #[error("`{field}` number {value:?}: {error}")]
    BadNumber {
        field: &'static str,
        value: String,
        error: NumberError,
    },
    #[error("`{field}` prefix {value:?} must be '+' and 1 to 15 digits")]
    BadPrefix { field: &'static str, value: String },
    #[error("`{field}` pattern {value:?}: {error}")]
    BadPattern {
        field: &'static str,
        value: String,
        error: PatternError,
    },
    #[error("time: {0}")]
    BadTime(String),
    #[error("trunk {0:?} is not a configured trunk")]
    UnknownTrunk(String),
}

/// Maps byte offsets to 1-based lines.
struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of<T>(&self, s: &Spanned<T>) -> Option<usize> {
        self.at(s.span().start)
    }

    fn at(&self, offset: usize) -> Option<usize> {
        let before = self.0.get(..offset)?;
        Some(before.bytes().filter(|&b| b == b'\n').count() + 1)
    }
}

pub(super) fn load(text: &str) -> Result<Plan, PlanError> {
    let lines = Lines(text);
    let raw: RawPlan = toml::from_str(text).map_err(|e| syntax_error(text, &lines, &e))?;

    let default_country_code = match raw.default_country_code {
        None => None,
        Some(cc) => {
            let v = cc.get_ref();
            let ok = (1..=3).contains(&v.len())
                && v.bytes().all(|b| b.is_ascii_digit())
                && !v.starts_with('0');
            if !ok {
                return Err(PlanError::BadCountryCode {
                    line: lines.of(&cc),
                    value: v.clone(),
                });
            }
            Some(v.clone())
        }
    };

    let mut numbers: Vec<OwnedNumber> = Vec::new();
    for (index, n) in raw.numbers.into_iter().enumerate() {
        let line = lines.of(&n);
        let n = n.into_inner();
        let number =
            e164::parse_strict(n.number.get_ref()).map_err(|error| PlanError::BadOwnedNumber {
                index,
                line: lines.of(&n.number),
                value: n.number.get_ref().clone(),
                error,
            })?;
        if numbers.iter().any(|o| o.number == number) {
            return Err(PlanError::DuplicateOwnedNumber {
                index,
                line,
                number: number.to_string(),
            });
        }
        let webhook_url = match n.webhook_url {
            None => None,
            Some(url) => {
                let u = url.get_ref();
                let rest = u
                    .strip_prefix("https://")
                    .or_else(|| u.strip_prefix("http://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                    return Err(PlanError::BadWebhookUrl {
                        index,
                        line: lines.of(&url),
                        url: u.clone(),
                    });
                }
                Some(u.clone())
            }
        };
        numbers.push(OwnedNumber {
            number,
            tenant: n.tenant,
            webhook_url,
        });
    }

    let mut rules = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (index, r) in raw.rules.into_iter().enumerate() {
        let rule_line = lines.of(&r);
        let r = r.into_inner();
        let id = RuleId {
            index,
            name: r.name.get_ref().clone(),
        };
        let fail = |line: Option<usize>, problem: RuleProblem| PlanError::Rule {
            rule: id.clone(),
            line: line.or(rule_line),
            problem,
        };
        if id.name.trim().is_empty() {
            return Err(fail(lines.of(&r.name), RuleProblem::EmptyName));
        }
        if let Some(&first_index) = names.get(&id.name) {
            return Err(fail(
                lines.of(&r.name),
                RuleProblem::DuplicateName { first_index },
            ));
        }
        names.insert(id.name.clone(), index);

        let to =
            r.to.map(|m| number_match("to", &m).map_err(|p| fail(lines.of(&m), p)))
                .transpose()?;
        let from = r
            .from
            .map(|m| number_match("from", &m).map_err(|p| fail(lines.of(&m), p)))
            .transpose()?;
        let source_trunks = match r.source_trunk {
            None => None,
            Some(s) => {
                let list = match s.get_ref() {
                    OneOrMany::One(t) => vec![t.clone()],
                    OneOrMany::Many(ts) => ts.clone(),
                };
                if list.is_empty() || list.iter().any(|t| t.is_empty()) {
                    return Err(fail(lines.of(&s), RuleProblem::EmptySourceTrunk));
                }
                Some(list)
            }
        };
        let time = r
            .time
            .map(|t| {
                time_window(t.get_ref())
                    .map_err(|why| fail(lines.of(&t), RuleProblem::BadTime(why)))
            })
            .transpose()?;

        let mut actions: Vec<(&str, Option<usize>)> = Vec::new();
        if let Some(a) = &r.agent {
            actions.push(("agent", lines.of(a)));
        }
        if let Some(st) = &r.stream {
            actions.push(("stream", lines.of(st)));
        }
        // `proxy = false` is the same as leaving it out.
        if let Some(p) = r.proxy.as_ref().filter(|p| *p.get_ref()) {
            actions.push(("proxy", lines.of(p)));
        }
        if let Some(t) = &r.trunks {
            actions.push(("trunks", lines.of(t)));
        }
        if let Some(c) = &r.reject {
            actions.push(("reject", lines.of(c)));
        }
        if actions.len() > 1 {
            let names: Vec<&str> = actions.iter().map(|(n, _)| *n).collect();
            // Point at whichever action comes last in the text.
            return Err(fail(
                actions.iter().filter_map(|(_, l)| *l).max(),
                RuleProblem::MultipleActions(names.join(", ")),
            ));
        }
        if let (Some(reason), None) = (&r.reason, &r.reject) {
            return Err(fail(lines.of(reason), RuleProblem::ReasonWithoutReject));
        }
        let action = if let Some(a) = r.agent {
            if a.get_ref().is_empty() {
                return Err(fail(lines.of(&a), RuleProblem::EmptyAgent));
            }
            Action::Agent(a.into_inner())
        } else if let Some(st) = r.stream {
            let line = lines.of(&st);
            let st = st.into_inner();
            let lower = st.url.to_ascii_lowercase();
            if !(lower.starts_with("ws://") || lower.starts_with("wss://")) {
                return Err(fail(line, RuleProblem::StreamUrl(st.url)));
            }
            Action::Stream(super::StreamAction {
                url: st.url,
                encoding: st.encoding,
                sample_rate: st.sample_rate,
                bidirectional: st.bidirectional.unwrap_or(true),
                parameters: st.parameters,
            })
        } else if r.proxy.is_some_and(|p| p.into_inner()) {
            Action::Proxy
        } else if let Some(t) = r.trunks {
            if t.get_ref().is_empty() || t.get_ref().iter().any(|n| n.is_empty()) {
                return Err(fail(lines.of(&t), RuleProblem::EmptyTrunks));
            }
            Action::Trunks(t.into_inner())
        } else if let Some(c) = r.reject {
            let code = *c.get_ref();
            let sip_code = u16::try_from(code)
                .ok()
                .filter(|c| (400..=699).contains(c))
                .ok_or_else(|| fail(lines.of(&c), RuleProblem::RejectCode(code)))?;
            let reason = r
                .reason
                .map(Spanned::into_inner)
                .unwrap_or_else(|| default_reason(sip_code).to_owned());
            Action::Reject { sip_code, reason }
        } else {
            return Err(fail(rule_line, RuleProblem::NoAction));
        };

        rules.push(Rule {
            name: id.name.clone(),
            to,
            from,
            source_trunks,
            time,
            action,
            line: rule_line,
        });
    }

    Ok(Plan {
        default_country_code,
        numbers,
        rules,
    })
}

/// toml's own error, placed on a line and, when inside `[[rules]]`, on a rule: the
/// text is re-read loosely (any keys) to find which rule's span holds the error.
fn syntax_error(text: &str, lines: &Lines<'_>, e: &toml::de::Error) -> PlanError {
    #[derive(Deserialize)]
    struct Loose {
        #[serde(default)]
        rules: Vec<Spanned<toml::Table>>,
    }
    let span = e.span();
    let rule = span.as_ref().and_then(|span| {
        let loose: Loose = toml::from_str(text).ok()?;
        loose.rules.iter().enumerate().find_map(|(index, r)| {
            let s = r.span();
            (s.start <= span.start && span.end <= s.end).then(|| RuleId {
                index,
                name: r
                    .get_ref()
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or("")
                    .to_owned(),
            })
        })
    });
    PlanError::Syntax {
        line: span.and_then(|s| lines.at(s.start)),
        rule,
        message: e.message().trim_end().to_owned(),
    }
}

fn number_match(field: &'static str, m: &Spanned<RawMatch>) -> Result<NumberMatch, RuleProblem> {
    match m.get_ref() {
        RawMatch {
            exact: Some(v),
            prefix: None,
            pattern: None,
        } => e164::parse_strict(v)
            .map(NumberMatch::Exact)
            .map_err(|error| RuleProblem::BadNumber {
                field,
                value: v.clone(),
                error,
            }),
        RawMatch {
            exact: None,
            prefix: Some(v),
            pattern: None,
        } => {
            let ok = v.strip_prefix('+').is_some_and(|d| {
                (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
            });
            if ok {
                Ok(NumberMatch::Prefix(v.clone()))
            } else {
                Err(RuleProblem::BadPrefix {
                    field,
                    value: v.clone(),
                })
            }
        }
        RawMatch {
            exact: None,
            prefix: None,
            pattern: Some(v),
        } => Pattern::parse(v)
            .map(NumberMatch::Pattern)
            .map_err(|error| RuleProblem::BadPattern {
                field,
                value: v.clone(),
                error,
            }),
        _ => Err(RuleProblem::MatchForm { field }),
    }
}

fn time_window(t: &RawTime) -> Result<TimeWindow, String> {
    let days = match &t.days {
        None => Weekday::ALL.to_vec(),
        Some(list) if list.is_empty() => return Err("`days` is empty".into()),
        Some(list) => {
            let mut days = Vec::new();
            for d in list {
                let day = Weekday::parse(d)
                    .ok_or_else(|| format!("unknown day {d:?} (use mon, tue, … sun)"))?;
                if !days.contains(&day) {
                    days.push(day);
                }
            }
            days
        }
    };
    let (start, end) = match (&t.start, &t.end) {
        (None, None) => (0, 1440),
        (Some(s), Some(e)) => (parse_hhmm(s, false)?, parse_hhmm(e, true)?),
        _ => return Err("give both `start` and `end`, or neither".into()),
    };
    if start == end {
        return Err(format!(
            "start and end are both {}; leave both out for all day",
            hhmm(start)
        ));
    }
    Ok(TimeWindow { days, start, end })
}

/// `"HH:MM"`, 00:00–23:59; `"24:00"` too when it is an end.
fn parse_hhmm(s: &str, is_end: bool) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time; use \"HH:MM\", 00:00 to 23:59");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !(h.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    match (h, m) {
        (24, 0) if is_end => Ok(1440),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

fn default_reason(code: u16) -> &'static str {
    match code {
        403 => "Forbidden",
        404 => "Not Found",
        480 => "Temporarily Unavailable",
        486 => "Busy Here",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Rejected",
    }
}
