//! Number-masking proxy sessions: the tenant's pool of proxy numbers, sessions between two
//! participants, and how a participant is given a proxy number.
//!
//! A participant reaches the other party by dialling (or texting) its own proxy number; the
//! pair (proxy number, participant number) must therefore name one open session only. The
//! store enforces that with a unique key on `proxy_pairings`, whose rows exist only while
//! their session is open; [`rank_candidates`] is the preference order tried against it.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a proxy number can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Voice,
    Messaging,
}

/// A number of the tenant's pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProxyNumber {
    /// E.164.
    #[schema(example = "+14155550100")]
    pub number: String,
    #[serde(skip)]
    pub tenant: String,
    /// The trunk masked calls through this number use.
    pub trunk: String,
    pub capabilities: Vec<Capability>,
    /// `config` (a `[[proxy_numbers]]` entry, written again at every start) or `api`.
    #[schema(pattern = "^(config|api)$")]
    pub source: String,
    /// Open sessions' participants given this number now.
    pub active_pairings: i64,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub created_at: DateTime<Utc>,
}

impl ProxyNumber {
    pub fn has(&self, c: Capability) -> bool {
        self.capabilities.contains(&c)
    }
}

/// What a session relays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    Voice,
    Messaging,
    #[default]
    VoiceAndMessaging,
}

impl SessionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Voice => "voice",
            Self::Messaging => "messaging",
            Self::VoiceAndMessaging => "voice_and_messaging",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "voice" => Self::Voice,
            "messaging" => Self::Messaging,
            "voice_and_messaging" => Self::VoiceAndMessaging,
            _ => return None,
        })
    }

    /// The capabilities a pool number needs to serve a session of this mode.
    pub fn needs(self) -> &'static [Capability] {
        match self {
            Self::Voice => &[Capability::Voice],
            Self::Messaging => &[Capability::Messaging],
            Self::VoiceAndMessaging => &[Capability::Voice, Capability::Messaging],
        }
    }
}

/// `open` until closed (DELETE) or until `expires_at` passes (`expired`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    Closed,
    Expired,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Self::Open,
            "closed" => Self::Closed,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// One side of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Participant {
    /// The participant's real number (E.164); never shown to the other participant.
    #[schema(example = "+14155552671")]
    pub number: String,
    /// The pool number this participant dials or texts to reach the other one, and
    /// from which the other one's calls reach it.
    #[schema(example = "+14155550100")]
    pub proxy_number: String,
}

/// What happens to a caller who dials a proxy number without an open session for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnknownCaller {
    /// The SIP final response sent (default 404).
    #[schema(minimum = 400, maximum = 699)]
    pub sip_code: u16,
    /// A WAV file of `[proxy] announcements_dir` played as early media (183) before
    /// the rejection; none: rejected at once.
    pub announcement: Option<String>,
}

impl Default for UnknownCaller {
    fn default() -> Self {
        Self {
            sip_code: 404,
            announcement: None,
        }
    }
}

/// A proxy session.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ProxySession {
    /// `ps_<ulid>`.
    pub id: String,
    #[serde(skip)]
    pub tenant: String,
    pub status: SessionStatus,
    pub mode: SessionMode,
    /// Exactly two, in the order they were given.
    pub participants: Vec<Participant>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Where the session's events will be POSTed.
    pub webhook_url: Option<String>,
    /// Seconds a masked call may last (none: the switch's default).
    pub max_call_duration: Option<i64>,
    /// Record masked calls.
    pub record: bool,
    pub unknown_caller: UnknownCaller,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub created_at: DateTime<Utc>,
    /// When the session expires by itself (none: open until closed).
    #[serde(serialize_with = "crate::timefmt::serialize_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was closed or expired.
    #[serde(serialize_with = "crate::timefmt::serialize_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub closed_at: Option<DateTime<Utc>>,
}

impl ProxySession {
    /// The status as it reads at `now`: an open session past its `expires_at` is expired
    /// even before the sweep has marked its row.
    pub fn evaluated(mut self, now: DateTime<Utc>) -> Self {
        if self.status == SessionStatus::Open
            && let Some(at) = self.expires_at
            && at <= now
        {
            self.status = SessionStatus::Expired;
            self.closed_at = Some(at);
        }
        self
    }
}

/// A session to create: everything but the proxy numbers, which the store allocates.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: String,
    pub tenant: String,
    pub mode: SessionMode,
    /// The two participants' numbers.
    pub participants: [String; 2],
    pub metadata: serde_json::Value,
    pub webhook_url: Option<String>,
    pub max_call_duration: Option<i64>,
    pub record: bool,
    pub unknown_caller: UnknownCaller,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A call or message relayed in a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProxyInteraction {
    /// `pi_<ulid>`.
    pub id: String,
    pub session_id: String,
    #[serde(skip)]
    pub tenant: String,
    #[schema(pattern = "^(voice|messaging)$")]
    pub kind: String,
    /// The participant who called or texted (real number).
    pub from_participant: String,
    /// The participant it was relayed to (real number).
    pub to_participant: String,
    /// The proxy number dialled (the caller's), and the one shown to the callee.
    pub inbound_proxy_number: String,
    pub outbound_proxy_number: String,
    /// Voice: the relayed call's status (as a call's); messaging: `sending`, then
    /// `delivered` or `failed`.
    pub status: String,
    /// The relayed call (`call_…`), for voice.
    pub call_id: Option<String>,
    /// The message body's length in bytes, for messaging (the body itself is not kept).
    pub body_bytes: Option<i64>,
    /// Why a message failed (the far end's SIP status, or a transport error).
    pub error: Option<String>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub updated_at: DateTime<Utc>,
}

/// What a call or message to a proxy number from a given number finds.
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyLookup {
    /// The sender is participant `from` (0 or 1) of this open session.
    Open { session: ProxySession, from: usize },
    /// The number is in a pool, but the sender is in no open session on it; `last` is
    /// the latest closed or expired session that paired them, if any (its
    /// `unknown_caller` choice applies).
    NoSession {
        tenant: String,
        last: Option<ProxySession>,
    },
    /// No pool has this number.
    NotProxy,
}

/// Digits two E.164 numbers share from the start (country code, then area code...).
pub fn common_prefix(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// Pool numbers a participant may be given, best first: the number it had with the same
/// counterpart before (`sticky`), then the longest prefix shared with the participant's
/// number (same country, then area code), then the ones in use (`usage` above 0: the pool
/// stays small), then by number. Numbers in `taken` (already paired with this participant in an open
/// session) are left out.
pub fn rank_candidates<'a>(
    pool: &'a [String],
    participant: &str,
    sticky: Option<&str>,
    taken: &HashSet<String>,
    usage: &HashMap<String, i64>,
) -> Vec<&'a str> {
    let mut out: Vec<&str> = pool
        .iter()
        .map(String::as_str)
        .filter(|n| !taken.contains(*n))
        .collect();
    out.sort_by(|a, b| {
        let key = |n: &str| {
            (
                std::cmp::Reverse(sticky == Some(n)),
                std::cmp::Reverse(common_prefix(n, participant)),
                std::cmp::Reverse(usage.get(n).copied().unwrap_or(0)),
            )
        };
        key(a).cmp(&key(b)).then_with(|| a.cmp(b))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn sticky_then_geo_then_most_used() {
        let p = pool(&[
            "+14155550100",
            "+12025550100",
            "+442071230000",
            "+14155550199",
        ]);
        let mut usage = HashMap::new();
        usage.insert("+14155550199".to_owned(), 5);
        let none = HashSet::new();
        // Geo: a San Francisco participant gets a 415 number, the busier one first.
        let r = rank_candidates(&p, "+14155552671", None, &none, &usage);
        assert_eq!(r[..2], ["+14155550199", "+14155550100"]);
        assert_eq!(r[2], "+12025550100", "same country before another country");
        // A London participant: the UK number.
        let r = rank_candidates(&p, "+447700900123", None, &none, &usage);
        assert_eq!(r[0], "+442071230000");
        // Sticky beats geography.
        let r = rank_candidates(&p, "+14155552671", Some("+442071230000"), &none, &usage);
        assert_eq!(r[0], "+442071230000");
        // Taken numbers are not offered.
        let taken: HashSet<String> = ["+14155550199".to_owned()].into();
        let r = rank_candidates(&p, "+14155552671", None, &taken, &usage);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], "+14155550100");
    }

    #[test]
    fn expired_reads_as_expired() {
        let now = Utc::now();
        let s = ProxySession {
            id: "ps_x".into(),
            tenant: "t".into(),
            status: SessionStatus::Open,
            mode: SessionMode::Voice,
            participants: vec![],
            metadata: serde_json::json!({}),
            webhook_url: None,
            max_call_duration: None,
            record: false,
            unknown_caller: UnknownCaller::default(),
            created_at: now,
            expires_at: Some(now - chrono::Duration::seconds(1)),
            closed_at: None,
        };
        assert_eq!(s.clone().evaluated(now).status, SessionStatus::Expired);
        let later = ProxySession {
            expires_at: Some(now + chrono::Duration::seconds(1)),
            ..s
        };
        assert_eq!(later.evaluated(now).status, SessionStatus::Open);
    }
}
