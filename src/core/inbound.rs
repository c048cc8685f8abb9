//! Who may call in, and where their calls go: trunk identification (source CIDR or
//! digest), the dialplan (loaded, validated, swapped on reload without touching live
//! calls), and the decision for one INVITE.
//!
//! Everything here is synchronous and clock-free except `now_secs`/`local_time`, which
//! the caller passes in, so admission is unit-tested without sockets.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use dialplan::plan::{Attempt, Decision, LocalTime, Plan, Route, Weekday};
use sip::digest_server::{AuthOutcome, Challenger};
use sip::msg::{Method, Request};

use super::trunk::Trunk;

/// How long a nonce we hand out stays good.
const NONCE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// The verdict on where an INVITE comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Arrived on this trunk (index into the trunk list).
    Trunk(usize),
    /// Send a digest challenge (401) with this `WWW-Authenticate` value.
    Challenge(String),
    /// Not a trunk and no credentials to check: 403, saying nothing about what exists.
    Refuse(&'static str),
    /// Wrong credentials (counted against the source and the user name): 403 as well.
    AuthFailed {
        why: &'static str,
        user: Option<String>,
    },
    /// The user name is slowed after failures: 403 unchecked, and not counted against the
    /// source (or a guesser locking a trunk's name would get the trunk itself banned).
    UserSlowed,
}

/// Dialplan errors at load, each with its rule and line.
#[derive(Debug, thiserror::Error)]
pub enum PlanLoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {}", .problems.join("; "))]
    Invalid { path: String, problems: Vec<String> },
}

/// Reads and validates a plan file against the configured trunk names.
pub fn load_plan(path: &Path, trunk_names: &[&str]) -> Result<Plan, PlanLoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanLoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let plan = Plan::from_toml(&text).map_err(|e| PlanLoadError::Invalid {
        path: path.display().to_string(),
        problems: e.to_string().lines().map(str::to_owned).collect(),
    })?;
    let unknown = plan.validate_trunks(trunk_names);
    if !unknown.is_empty() {
        return Err(PlanLoadError::Invalid {
            path: path.display().to_string(),
            problems: unknown.iter().map(ToString::to_string).collect(),
        });
    }
    Ok(plan)
}

/// Inbound side of the switch: trunks, digest challenger, the current plan.
pub struct Inbound {
    trunks: Arc<Vec<Trunk>>,
    cidrs: Vec<(ipnet::IpNet, usize)>,
    challenger: Mutex<Challenger>,
    plan: RwLock<Option<Arc<Plan>>>,
    utc_offset_minutes: i32,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("trunks", &self.trunks.len())
            .field("cidrs", &self.cidrs)
            .finish_non_exhaustive()
    }
}

impl Inbound {
    pub fn new(
        trunks: Arc<Vec<Trunk>>,
        realm: &str,
        plan: Option<Plan>,
        utc_offset_minutes: i32,
    ) -> Self {
        let cidrs = trunks
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                t.config
                    .inbound_cidrs
                    .iter()
                    .filter_map(|c| crate::config::parse_cidr(c))
                    .map(move |net| (net, i))
            })
            .collect();
        let secret: [u8; 32] = rand::random();
        Self {
            trunks,
            cidrs,
            challenger: Mutex::new(Challenger::new(secret, realm.to_owned(), NONCE_TTL)),
            plan: RwLock::new(plan.map(Arc::new)),
            utc_offset_minutes,
        }
    }

    pub fn trunks(&self) -> &Arc<Vec<Trunk>> {
        &self.trunks
    }

    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.read().ok().and_then(|p| p.clone())
    }

    /// Swap the plan; calls already routed keep the decision they got.
    pub fn set_plan(&self, plan: Plan) {
        if let Ok(mut p) = self.plan.write() {
            *p = Some(Arc::new(plan));
        }
    }

    /// Source networks we trust (exempt from the per-source rate limit).
    pub fn trusted_networks(&self) -> Vec<ipnet::IpNet> {
        self.cidrs.iter().map(|(n, _)| *n).collect()
    }

    /// Which trunk an INVITE from `source` arrived on. The most specific CIDR wins;
    /// otherwise a trunk with inbound credentials may claim it by digest.
    pub fn admit(
        &self,
        source: IpAddr,
        req: &Request,
        now_secs: u64,
        guard: &super::auth_guard::AuthGuard,
    ) -> Admission {
        if let Some((_, i)) = self
            .cidrs
            .iter()
            .filter(|(net, _)| net.contains(&source))
            .max_by_key(|(net, _)| net.prefix_len())
        {
            return Admission::Trunk(*i);
        }
        if !self
            .trunks
            .iter()
            .any(|t| t.config.inbound_username.is_some())
        {
            return Admission::Refuse("source not on any trunk");
        }
        let Ok(mut challenger) = self.challenger.lock() else {
            return Admission::Refuse("challenger unavailable");
        };
        let Some(auth) = req.headers.get("Authorization") else {
            return Admission::Challenge(challenger.challenge(now_secs, &mut rand::rng(), false));
        };
        let user = sip::auth::DigestResponse::parse(auth)
            .ok()
            .map(|d| d.username);
        if let Some(u) = &user
            && guard.gate_user(u, now_secs) == super::auth_guard::Gate::UserLocked
        {
            // Not even checked: a right guess now would teach the guesser nothing.
            return Admission::UserSlowed;
        }
        let lookup = |user: &str| {
            self.trunks
                .iter()
                .find(|t| t.config.inbound_username.as_deref() == Some(user))
                .and_then(|t| t.config.inbound_password.clone())
        };
        match challenger.check(now_secs, auth, &Method::Invite, &req.uri, lookup) {
            AuthOutcome::Ok { username } => self
                .trunks
                .iter()
                .position(|t| t.config.inbound_username.as_deref() == Some(username.as_str()))
                .map_or(
                    Admission::AuthFailed {
                        why: "unknown user",
                        user: None,
                    },
                    Admission::Trunk,
                ),
            AuthOutcome::Stale => {
                Admission::Challenge(challenger.challenge(now_secs, &mut rand::rng(), true))
            }
            AuthOutcome::Replay => Admission::AuthFailed {
                why: "nonce replayed",
                user,
            },
            AuthOutcome::Invalid(why) => Admission::AuthFailed { why, user },
        }
    }

    /// The dialplan's decision for a call that arrived on `trunk`.
    pub fn route(
        &self,
        trunk: &str,
        req: &Request,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Decision {
        let attempt = Attempt {
            from: caller_number(req),
            to: uri_user(&req.uri).unwrap_or_default().to_owned(),
            source_trunk: Some(trunk.to_owned()),
            local_time: local_time(now, self.utc_offset_minutes),
        };
        match self.plan() {
            Some(plan) => plan.route(&attempt),
            None => Decision {
                route: Route::Reject {
                    sip_code: 403,
                    reason: "Forbidden".into(),
                },
                rule: None,
                explanation: vec!["no dialplan loaded".into()],
                to_e164: None,
                from_e164: None,
            },
        }
    }
}

impl Inbound {
    /// The plan's decision for a number (a transfer target), as if it arrived on `trunk`.
    /// The dial plan rule that bars an outbound API call, if one does: the first rule that
    /// matches (from, to, no source trunk) is a `reject`. No rule matching is no barring:
    /// API calls are routed by caller id, not by the plan.
    pub fn barring_rule(&self, from: &str, to: &str) -> Option<String> {
        let plan = self.plan()?;
        let decision = plan.route(&Attempt {
            from: from.to_owned(),
            to: to.to_owned(),
            source_trunk: None,
            local_time: local_time(chrono::Utc::now(), self.utc_offset_minutes),
        });
        match (&decision.route, decision.rule) {
            (Route::Reject { .. }, Some(rule)) => Some(rule),
            _ => None,
        }
    }

    pub fn route_number(&self, trunk: &str, from: &str, to: &str) -> Decision {
        let attempt = Attempt {
            from: from.to_owned(),
            to: to.to_owned(),
            source_trunk: Some(trunk.to_owned()),
            local_time: local_time(chrono::Utc::now(), self.utc_offset_minutes),
        };
        match self.plan() {
            Some(plan) => plan.route(&attempt),
            None => Decision {
                route: Route::Reject {
                    sip_code: 403,
                    reason: "Forbidden".into(),
                },
                rule: None,
                explanation: vec!["no dialplan loaded".into()],
                to_e164: None,
                from_e164: None,
            },
        }
    }
}

/// The caller: the user part of P-Asserted-Identity when a trusted trunk sent one (RFC
/// 3325), else of From.
pub fn caller_number(req: &Request) -> String {
    let pai = req
        .headers
        .get("P-Asserted-Identity")
        .and_then(|v| sip::msg::NameAddr::parse(v).ok())
        .map(|n| n.uri);
    let from = req.headers.from().map(|f| f.uri);
    pai.as_deref()
        .and_then(uri_user)
        .or_else(|| from.as_deref().and_then(uri_user))
        .unwrap_or_default()
        .to_owned()
}

/// `sip:+123@host;p` → `+123`; `tel:+123;p` → `+123`. Visual separators are kept for the
/// dialplan's normaliser.
pub fn uri_user(uri: &str) -> Option<&str> {
    let uri = uri.trim().trim_start_matches('<').trim_end_matches('>');
    if let Some(rest) = uri.strip_prefix("tel:") {
        return rest.split(';').next().filter(|u| !u.is_empty());
    }
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    user.split(';').next().filter(|u| !u.is_empty())
}

/// Wall-clock weekday and minute of the day at `offset` minutes from UTC.
pub fn local_time(now: chrono::DateTime<chrono::Utc>, offset_minutes: i32) -> LocalTime {
    use chrono::{Datelike, Timelike};
    let local = now + chrono::Duration::minutes(i64::from(offset_minutes));
    let weekday = match local.weekday() {
        chrono::Weekday::Mon => Weekday::Mon,
        chrono::Weekday::Tue => Weekday::Tue,
        chrono::Weekday::Wed => Weekday::Wed,
        chrono::Weekday::Thu => Weekday::Thu,
        chrono::Weekday::Fri => Weekday::Fri,
        chrono::Weekday::Sat => Weekday::Sat,
        chrono::Weekday::Sun => Weekday::Sun,
    };
    LocalTime {
        weekday,
        minutes: (local.hour() * 60 + local.minute()) as u16,
    }
}

#[cfg(test)]
mod tests {
    fn guard() -> crate::core::auth_guard::AuthGuard {
        crate::core::auth_guard::AuthGuard::new(&crate::config::SecurityConfig::default())
    }

    use super::*;
    use crate::config::{TrunkConfig, TrunkTransport};

    fn trunk(name: &str, cidrs: &[&str], user: Option<(&str, &str)>) -> Trunk {
        Trunk::new(TrunkConfig {
            name: name.into(),
            uri: "sip:127.0.0.1:5070".into(),
            transport: TrunkTransport::Udp,
            username: None,
            password: None,
            numbers: vec![],
            tenant: "acme".into(),
            inbound_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
            inbound_username: user.map(|u| u.0.to_owned()),
            inbound_password: user.map(|u| u.1.to_owned()),
            max_concurrent: 0,
            max_cps: 0,
            register: false,
            register_expires: 3600,
            keepalive_interval_s: 0,
            codecs: crate::config::default_codecs(),
        })
        .unwrap()
    }

    fn invite(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:+12025550100@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:+442071838750@carrier>;tag=1\r\n\
             To: <sip:+12025550100@127.0.0.1>\r\n\
             Call-ID: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match sip::msg::parse(text.as_bytes()).unwrap() {
            sip::msg::SipMessage::Request(r) => r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn most_specific_cidr_wins_and_strangers_are_refused() {
        let trunks = Arc::new(vec![
            trunk("wide", &["10.0.0.0/8"], None),
            trunk("narrow", &["10.0.0.1"], None),
        ]);
        let inbound = Inbound::new(trunks, "sy", None, 0);
        let req = invite("");
        assert_eq!(
            inbound.admit("10.0.0.1".parse().unwrap(), &req, 0, &guard()),
            Admission::Trunk(1)
        );
        assert_eq!(
            inbound.admit("10.9.9.9".parse().unwrap(), &req, 0, &guard()),
            Admission::Trunk(0)
        );
        assert!(matches!(
            inbound.admit("192.0.2.1".parse().unwrap(), &req, 0, &guard()),
            Admission::Refuse(_)
        ));
    }

    #[test]
    fn digest_trunk_is_challenged_then_admitted_and_replay_refused() {
        let trunks = Arc::new(vec![trunk("auth", &[], Some(("carrier", "s3cret")))]);
        let inbound = Inbound::new(trunks, "sy", None, 0);
        let req = invite("");
        let Admission::Challenge(www) =
            inbound.admit("192.0.2.1".parse().unwrap(), &req, 100, &guard())
        else {
            panic!("expected a challenge")
        };
        let ch = sip::auth::DigestChallenge::parse(&www).unwrap();
        let creds = sip::auth::Credentials {
            username: "carrier".into(),
            password: "s3cret".into(),
        };
        let auth = sip::auth::authorization(&ch, &creds, &Method::Invite, &req.uri, "abcd", 1);
        let signed = invite(&format!("Authorization: {auth}\r\n"));
        assert_eq!(
            inbound.admit("192.0.2.1".parse().unwrap(), &signed, 101, &guard()),
            Admission::Trunk(0)
        );
        assert!(matches!(
            inbound.admit("192.0.2.1".parse().unwrap(), &signed, 102, &guard()),
            Admission::AuthFailed {
                why: "nonce replayed",
                ..
            }
        ));
        let wrong = sip::auth::Credentials {
            username: "carrier".into(),
            password: "nope".into(),
        };
        let bad = sip::auth::authorization(&ch, &wrong, &Method::Invite, &req.uri, "abce", 1);
        let bad = invite(&format!("Authorization: {bad}\r\n"));
        assert!(matches!(
            inbound.admit("192.0.2.1".parse().unwrap(), &bad, 103, &guard()),
            Admission::AuthFailed { user: Some(ref u), .. } if u == "carrier"
        ));
    }

    #[test]
    fn caller_prefers_pai_and_called_is_the_request_uri_user() {
        let req = invite("P-Asserted-Identity: <sip:+15551230000@carrier>\r\n");
        assert_eq!(caller_number(&req), "+15551230000");
        assert_eq!(caller_number(&invite("")), "+442071838750");
        assert_eq!(uri_user("sip:+1202@h;transport=udp"), Some("+1202"));
        assert_eq!(uri_user("tel:+1-202;phone-context=x"), Some("+1-202"));
        assert_eq!(uri_user("sip:h"), None);
    }

    #[test]
    fn without_a_plan_everything_is_403() {
        let inbound = Inbound::new(Arc::new(vec![]), "sy", None, 0);
        let d = inbound.route("t", &invite(""), chrono::Utc::now());
        assert_eq!(
            d.route,
            Route::Reject {
                sip_code: 403,
                reason: "Forbidden".into()
            }
        );
    }

    #[test]
    fn plan_routes_by_source_trunk() {
        let plan = Plan::from_toml(
            "[[rules]]\nname = \"us\"\nto = { prefix = \"+1\" }\nsource_trunk = \"a\"\ntrunks = [\"b\"]\n",
        )
        .unwrap();
        let inbound = Inbound::new(Arc::new(vec![]), "sy", Some(plan), 0);
        let d = inbound.route("a", &invite(""), chrono::Utc::now());
        assert_eq!(d.route, Route::Trunks(vec!["b".into()]));
        let d = inbound.route("other", &invite(""), chrono::Utc::now());
        assert!(matches!(d.route, Route::Reject { sip_code: 404, .. }));
    }
}
