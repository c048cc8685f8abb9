//! Inbound routing plan: owned numbers plus ordered rules, loaded from TOML.
//!
//! `Plan::route` walks the rules in order and the first whose conditions all hold decides
//! the call; the `Decision` carries a line of explanation per rule tried, for the
//! `switchyard route` CLI. Pure: the local time of day arrives inside the `Attempt`.

mod load;
mod pattern;

pub use load::{PlanError, RuleId, RuleProblem};
pub use pattern::{Pattern, PatternError};

use crate::e164::{self, E164};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Weekday {
    pub const ALL: [Weekday; 7] = [
        Weekday::Mon,
        Weekday::Tue,
        Weekday::Wed,
        Weekday::Thu,
        Weekday::Fri,
        Weekday::Sat,
        Weekday::Sun,
    ];

    /// `"mon"` … `"sun"`, case-insensitive.
    pub fn parse(s: &str) -> Option<Weekday> {
        Weekday::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Weekday::Mon => "mon",
            Weekday::Tue => "tue",
            Weekday::Wed => "wed",
            Weekday::Thu => "thu",
            Weekday::Fri => "fri",
            Weekday::Sat => "sat",
            Weekday::Sun => "sun",
        }
    }

    pub fn previous(self) -> Weekday {
        match self {
            Weekday::Mon => Weekday::Sun,
            Weekday::Tue => Weekday::Mon,
            Weekday::Wed => Weekday::Tue,
            Weekday::Thu => Weekday::Wed,
            Weekday::Fri => Weekday::Thu,
            Weekday::Sat => Weekday::Fri,
            Weekday::Sun => Weekday::Sat,
        }
    }
}

/// Wall-clock time in the plan's time zone, supplied by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    pub weekday: Weekday,
    /// Minutes since local midnight, 0..1440. Values past 1439 match no time window.
    pub minutes: u16,
}

impl std::fmt::Display for LocalTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.weekday.as_str(), hhmm(self.minutes))
    }
}

/// One inbound call attempt, numbers as received (the plan normalises them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub from: String,
    pub to: String,
    pub source_trunk: Option<String>,
    pub local_time: LocalTime,
}

/// How a rule matches a number (compared in E.164 form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NumberMatch {
    Exact(E164),
    /// `+` and 1–15 digits.
    Prefix(String),
    Pattern(Pattern),
}

impl NumberMatch {
    pub fn matches(&self, number: &E164) -> bool {
        match self {
            NumberMatch::Exact(n) => n == number,
            NumberMatch::Prefix(p) => number.as_str().starts_with(p.as_str()),
            NumberMatch::Pattern(p) => p.matches(number.as_str()),
        }
    }
}

impl std::fmt::Display for NumberMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumberMatch::Exact(n) => write!(f, "exactly {n}"),
            NumberMatch::Prefix(p) => write!(f, "prefix {p}"),
            NumberMatch::Pattern(p) => write!(f, "pattern {p}"),
        }
    }
}

/// Days plus a `[start, end)` window in minutes. `start > end` crosses midnight: the
/// part after midnight belongs to the day the window started on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeWindow {
    pub days: Vec<Weekday>,
    pub start: u16,
    /// Exclusive; 1440 means midnight at the end of the day.
    pub end: u16,
}

impl TimeWindow {
    pub fn contains(&self, t: LocalTime) -> bool {
        if t.minutes >= 1440 {
            return false;
        }
        let on = |d: Weekday| self.days.contains(&d);
        if self.start < self.end {
            on(t.weekday) && (self.start..self.end).contains(&t.minutes)
        } else {
            (on(t.weekday) && t.minutes >= self.start)
                || (on(t.weekday.previous()) && t.minutes < self.end)
        }
    }
}

impl std::fmt::Display for TimeWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let days: Vec<&str> = self.days.iter().map(|d| d.as_str()).collect();
        write!(
            f,
            "{} {}–{}",
            days.join(","),
            hhmm(self.start),
            hhmm(self.end)
        )
    }
}

fn hhmm(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Agent(String),
    /// Answer and stream the call's audio to (and from) an agent server.
    Stream(StreamAction),
    Proxy,
    Trunks(Vec<String>),
    Reject {
        sip_code: u16,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub to: Option<NumberMatch>,
    pub from: Option<NumberMatch>,
    /// The call must arrive on one of these trunks.
    pub source_trunks: Option<Vec<String>>,
    pub time: Option<TimeWindow>,
    pub action: Action,
    /// 1-based line of the rule in the TOML text.
    pub line: Option<usize>,
}

/// A number the operator owns on some trunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedNumber {
    pub number: E164,
    pub tenant: Option<String>,
    pub webhook_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    default_country_code: Option<String>,
    numbers: Vec<OwnedNumber>,
    rules: Vec<Rule>,
}

/// `stream = { url = "wss://…", encoding, sample_rate, bidirectional, parameters }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamAction {
    pub url: String,
    pub encoding: Option<String>,
    pub sample_rate: Option<u32>,
    pub bidirectional: bool,
    pub parameters: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Agent(String),
    /// Answer here and stream the audio to an agent server.
    Stream(StreamAction),
    /// Look the call up among proxy sessions on this (called) number.
    Proxy {
        number: E164,
    },
    /// Route out, trying the trunks in this order.
    Trunks(Vec<String>),
    Reject {
        sip_code: u16,
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub route: Route,
    /// Name of the rule that decided, if any.
    pub rule: Option<String>,
    /// Why each earlier rule did not match, then why the deciding one did.
    pub explanation: Vec<String>,
    pub to_e164: Option<E164>,
    pub from_e164: Option<E164>,
}

impl Plan {
    /// Parses and validates a plan; see `examples/basic.toml` for the format.
    pub fn from_toml(text: &str) -> Result<Plan, PlanError> {
        load::load(text)
    }

    pub fn default_country_code(&self) -> Option<&str> {
        self.default_country_code.as_deref()
    }

    pub fn numbers(&self) -> &[OwnedNumber] {
        &self.numbers
    }

    /// The owned-number entry for `number`, if the plan lists it.
    pub fn number(&self, number: &E164) -> Option<&OwnedNumber> {
        self.numbers.iter().find(|n| &n.number == number)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// One error per rule naming a trunk (as action or as source) not in `known`.
    pub fn validate_trunks(&self, known: &[&str]) -> Vec<PlanError> {
        let mut errors = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let used = rule
                .source_trunks
                .iter()
                .flatten()
                .chain(match &rule.action {
                    Action::Trunks(t) => t.iter(),
                    _ => [].iter(),
                });
            for trunk in used {
                if !known.contains(&trunk.as_str()) {
                    errors.push(PlanError::Rule {
                        rule: RuleId {
                            index,
                            name: rule.name.clone(),
                        },
                        line: rule.line,
                        problem: RuleProblem::UnknownTrunk(trunk.clone()),
                    });
                }
            }
        }
        errors
    }

    pub fn route(&self, a: &Attempt) -> Decision {
        let cc = self.default_country_code.as_deref();
        let from_e164 = e164::normalize(&a.from, cc).ok();
        let to_e164 = match e164::normalize(&a.to, cc) {
            Ok(n) => n,
            Err(e) => {
                return Decision {
                    route: Route::Reject {
                        sip_code: 404,
                        reason: "invalid called number".into(),
                    },
                    rule: None,
                    explanation: vec![format!("called number {:?} is not usable: {e}", a.to)],
                    to_e164: None,
                    from_e164,
                };
            }
        };
        let mut explanation = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let label = format!("rules[{index}] {:?}", rule.name);
            match rule_matches(rule, a, &to_e164, from_e164.as_ref()) {
                Err(why) => explanation.push(format!("{label} skipped: {why}")),
                Ok(why) => {
                    explanation.push(format!("{label} matched: {}", why.join("; ")));
                    let route = match &rule.action {
                        Action::Agent(id) => Route::Agent(id.clone()),
                        Action::Stream(st) => Route::Stream(st.clone()),
                        Action::Proxy => Route::Proxy {
                            number: to_e164.clone(),
                        },
                        Action::Trunks(t) => Route::Trunks(t.clone()),
                        Action::Reject { sip_code, reason } => Route::Reject {
                            sip_code: *sip_code,
                            reason: reason.clone(),
                        },
                    };
                    return Decision {
                        route,
                        rule: Some(rule.name.clone()),
                        explanation,
                        to_e164: Some(to_e164),
                        from_e164,
                    };
                }
            }
        }
        explanation.push("no rule matched".into());
        Decision {
            route: Route::Reject {
                sip_code: 404,
                reason: "no route".into(),
            },
            rule: None,
            explanation,
            to_e164: Some(to_e164),
            from_e164,
        }
    }
}

/// `Ok(reasons it matched)` or `Err(the first condition that failed)`.
fn rule_matches(
    rule: &Rule,
    a: &Attempt,
    to: &E164,
    from: Option<&E164>,
) -> Result<Vec<String>, String> {
    let mut why = Vec::new();
    if let Some(m) = &rule.to {
        if !m.matches(to) {
            return Err(format!("called {to} does not match {m}"));
        }
        why.push(format!("called {to} matches {m}"));
    }
    if let Some(m) = &rule.from {
        match from {
            None => {
                return Err(format!(
                    "caller {:?} is not a usable number, so cannot match {m}",
                    a.from
                ));
            }
            Some(f) if !m.matches(f) => return Err(format!("caller {f} does not match {m}")),
            Some(f) => why.push(format!("caller {f} matches {m}")),
        }
    }
    if let Some(trunks) = &rule.source_trunks {
        match &a.source_trunk {
            Some(t) if trunks.contains(t) => why.push(format!("source trunk {t:?} is listed")),
            Some(t) => return Err(format!("source trunk {t:?} not in {trunks:?}")),
            None => return Err(format!("no source trunk, rule wants one of {trunks:?}")),
        }
    }
    if let Some(w) = &rule.time {
        if !w.contains(a.local_time) {
            return Err(format!("{} is outside {w}", a.local_time));
        }
        why.push(format!("{} is within {w}", a.local_time));
    }
    if why.is_empty() {
        why.push("rule has no conditions".into());
    }
    Ok(why)
}
