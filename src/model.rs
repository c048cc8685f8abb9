//! Durable facts shared by the API, the switch core, the store and the webhook worker.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The public call statuses (voice-api.txt) and their wire names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Initiating,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
    Cancelled,
    Failed,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initiating => "initiating",
            Self::Ringing => "ringing",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "initiating" => Self::Initiating,
            "ringing" => Self::Ringing,
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "busy" => Self::Busy,
            "no_answer" => Self::NoAnswer,
            "cancelled" => Self::Cancelled,
            "failed" => Self::Failed,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Busy | Self::NoAnswer | Self::Cancelled | Self::Failed
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Developer,
    Member,
    /// The switch's administrator, above every tenant: all trunks, dial plan reloads.
    /// Tenant owners and admins manage their own tenant only.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Developer => "developer",
            Self::Member => "member",
            Self::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "owner" => Self::Owner,
            "admin" => Self::Admin,
            "developer" => Self::Developer,
            "member" => Self::Member,
            "operator" => Self::Operator,
            _ => return None,
        })
    }
}

/// One call, as stored and as served by the API (`serde` gives the API shape).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallRecord {
    pub id: String,
    #[serde(skip)]
    pub tenant: String,
    /// "outbound" or "inbound".
    #[schema(pattern = "^(outbound|inbound)$")]
    pub direction: String,
    pub to: String,
    pub from: String,
    pub agent_id: Option<String>,
    pub status: CallStatus,
    pub record: bool,
    pub recording_url: Option<String>,
    pub webhook_url: Option<String>,
    pub max_duration: i64,
    pub ring_timeout: i64,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    pub trunk: Option<String>,
    pub sip_call_id: Option<String>,
    /// Final SIP status code and reason (from the far end, or the one we sent).
    pub sip_code: Option<i32>,
    pub sip_reason: Option<String>,
    /// Q.850 cause (RFC 3326 mapping of the SIP code).
    pub q850_cause: Option<i32>,
    /// Why the call ended, in words an operator can read ("remote_bye", "hangup", "max_duration", "ring_timeout", "switch_restart", ...).
    pub end_reason: Option<String>,
    pub rtp_packets_received: i64,
    pub rtp_bytes_received: i64,
    /// RTP packets missing from the far end's stream (RFC 3550 cumulative loss).
    pub rtp_packets_lost: i64,
    /// RFC 3550 interarrival jitter of the far end's stream, in milliseconds.
    pub rtp_jitter_ms: Option<f64>,
    /// Estimated listening quality (ITU-T G.107 E-model, 1.0–4.5) from loss and jitter.
    pub mos: Option<f64>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timefmt::serialize_opt")]
    pub answered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timefmt::serialize_opt")]
    pub ended_at: Option<DateTime<Utc>>,
    pub duration_seconds: Option<i64>,
    /// The answered call's SIP dialog (JSON, see `core::dialog_json`), kept so a call left
    /// live by a crash can be ended with a BYE at start-up. Internal: not in the API.
    #[serde(skip)]
    pub sip_dialog: Option<String>,
    /// The number-masking session a masked call belongs to.
    pub proxy_session_id: Option<String>,
}

/// A status-callback event to enqueue in the outbox, in the same transaction as the call row.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// e.g. "call.initiating", "call.ringing", "call.in_progress", "call.completed", "call.busy", ...
    pub event_type: String,
    /// Extra fields for terminal events: {"sip_code", "sip_reason", "q850_cause"}; merged into the payload.
    pub extra: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its turn or its next attempt.
    Pending,
    Delivered,
    /// No `webhook_url` on the call: recorded for the event list, nothing to send.
    NoEndpoint,
    /// Gave up after the configured number of attempts; can be redelivered through the API.
    Failed,
}

/// A JSON document kept as its text: serialised once when the event is written, then
/// stored, listed and POSTed as is (building a `serde_json::Value` tree per event was a
/// measurable share of a call's CPU under load).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonText(String);

impl JsonText {
    /// Text that is already valid JSON (produced by `serde_json`), or an error.
    pub fn new(text: String) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<serde::de::IgnoredAny>(&text)?;
        Ok(JsonText(text))
    }

    /// Text straight from `serde_json::to_string`, which cannot be invalid.
    pub(crate) fn from_serialized(text: String) -> Self {
        JsonText(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The document as a value (for tests and callers that inspect it).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(d)?;
        Ok(JsonText(raw.get().to_owned()))
    }
}

/// An outbox row: one status-callback event of one call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallEvent {
    /// "evt_<ulid>"; also the `webhook-id` header.
    pub id: String,
    pub call_id: String,
    #[serde(skip)]
    pub tenant: String,
    /// Per-call sequence number, 1, 2, 3, ... assigned by the store inside the transaction.
    pub sequence: i64,
    pub event_type: String,
    /// The JSON body POSTed to the webhook (event id, type, sequence, timestamp, call object, extras).
    #[schema(value_type = Object)]
    pub payload: JsonText,
    pub webhook_url: Option<String>,
    pub state: DeliveryState,
    pub attempts: i64,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timefmt::serialize_opt")]
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub tenant: String,
    pub role: Role,
}
