//! Model-provider clients for AI voice agents: a call's audio goes to a realtime
//! speech-to-speech model (OpenAI Realtime, Gemini Live) and the model's audio comes back.
//!
//! Layout, in the house's sans-IO shape:
//! - [`Protocol`] is one provider's wire protocol as a value: feed it the session setup,
//!   the caller's PCM, tool results and barge-in truncations (`handle_*`), feed it every
//!   WebSocket message from the provider ([`Protocol::handle_message`]), then drain
//!   [`Protocol::poll_outgoing`] (JSON text frames to write) and [`Protocol::poll_event`]
//!   ([`ProviderEvent`]s for the call). No sockets, no clocks: [`openai::OpenAiRealtime`]
//!   and [`gemini::GeminiLive`] are unit-tested on message shapes from the providers'
//!   documentation.
//! - [`driver`] is the thin tokio task that owns the socket: [`spawn`] connects with the
//!   provider's credentials, pumps both ways and hands the call a [`ProviderSession`].
//!
//! Audio on both sides is 16-bit signed little-endian mono PCM, base64 in JSON. The call
//! resamples to [`Protocol::input_rate`] before sending and from
//! [`Protocol::output_rate`] after receiving (`media::resample`).

pub mod driver;
pub mod gemini;
pub mod openai;

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

pub use driver::{ProviderSession, SessionStats, spawn};

/// A function the model may call: `parameters` is a JSON Schema object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

/// What a session is configured with when it opens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionSetup {
    /// The provider's model name (`gpt-realtime`, `gemini-2.5-flash-native-audio-...`).
    pub model: String,
    /// The system prompt.
    pub instructions: String,
    /// A provider voice name; `None` leaves the provider's default.
    pub voice: Option<String>,
    /// BCP 47 (`en-US`); `None` lets the model detect it.
    pub language: Option<String>,
    /// Said first, verbatim, before the caller speaks.
    pub greeting: Option<String>,
    pub tools: Vec<ToolSpec>,
}

/// Who said a transcribed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// What a provider tells the call.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// The provider acknowledged the setup; audio flows from now on.
    Ready,
    /// Model speech at [`Protocol::output_rate`].
    Audio(Vec<i16>),
    /// The caller started talking over the model (barge-in): stop the playout now, then
    /// report how much was heard with `truncate`.
    SpeechStarted,
    /// The caller stopped talking.
    SpeechStopped,
    /// `is_final: false` is a fragment to append to the utterance in progress;
    /// `is_final: true` carries the whole utterance (not only the last fragment).
    Transcript {
        role: Role,
        text: String,
        is_final: bool,
    },
    /// The model wants a function run; answer with `tool_result(call_id, name, ..)`.
    ToolCall {
        call_id: String,
        name: String,
        arguments: serde_json::Value,
    },
    /// The model withdrew calls it had asked for (Gemini, after an interruption): their
    /// results are no longer wanted.
    ToolCallsCancelled { call_ids: Vec<String> },
    /// The model finished its turn (its audio may still be playing at the caller).
    ResponseDone,
    /// `fatal: true` ends the session (setup refused, socket closed).
    Error { message: String, fatal: bool },
}

impl ProviderEvent {
    /// Media may be dropped when the consumer is slow; everything else may not.
    pub fn is_audio(&self) -> bool {
        matches!(self, ProviderEvent::Audio(_))
    }
}

/// One WebSocket message from the provider. Gemini sends its JSON in binary frames.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> Incoming<'a> {
    /// The JSON in either kind of frame; `None` when it is not a JSON object.
    fn json(self) -> Option<serde_json::Value> {
        let parsed = match self {
            Incoming::Text(t) => serde_json::from_str::<serde_json::Value>(t),
            Incoming::Binary(b) => serde_json::from_slice::<serde_json::Value>(b),
        };
        parsed.ok().filter(serde_json::Value::is_object)
    }
}

/// One JSON text frame to write to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing(pub String);

impl Outgoing {
    fn json(value: &serde_json::Value) -> Self {
        Outgoing(value.to_string())
    }
}

/// A provider's wire protocol, sans IO.
///
/// Inputs (`handle_*`) queue frames to write and events to report; the driver drains
/// [`Protocol::poll_outgoing`] after every input and [`Protocol::poll_event`] after
/// every message.
pub trait Protocol: Send + fmt::Debug {
    /// The rate of the PCM passed to [`Protocol::handle_audio`].
    fn input_rate(&self) -> u32;
    /// The rate of [`ProviderEvent::Audio`].
    fn output_rate(&self) -> u32;
    /// The first thing sent on a new connection.
    fn handle_setup(&mut self, setup: &SessionSetup);
    /// The caller's speech, any length, at `input_rate`.
    fn handle_audio(&mut self, pcm: &[i16]);
    /// The answer to a [`ProviderEvent::ToolCall`].
    fn handle_tool_result(&mut self, call_id: &str, name: &str, output: &serde_json::Value);
    /// The caller heard only the first `heard_ms` of the current assistant audio (barge-in):
    /// the model's memory of what it said is cut to match where the provider supports it.
    fn handle_truncate(&mut self, heard_ms: u32);
    /// One message from the provider.
    fn handle_message(&mut self, message: Incoming<'_>);
    fn poll_outgoing(&mut self) -> Option<Outgoing>;
    fn poll_event(&mut self) -> Option<ProviderEvent>;
    /// The provider announced the end of this connection and the session can go on over
    /// a new one: the driver reconnects and calls [`Protocol::handle_resume`]. True once
    /// per announcement.
    fn take_reconnect(&mut self) -> bool {
        false
    }
    /// Whether a dropped connection can be resumed on a new one.
    fn can_resume(&self) -> bool {
        false
    }
    /// The first thing sent on a connection that resumes the session.
    fn handle_resume(&mut self) {}
    /// Something the caller did that is not speech (keypad digits), told to the model as
    /// the caller's words; the model answers it.
    fn handle_user_text(&mut self, text: &str);
}

/// Which provider runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[serde(rename = "openai")]
    OpenAi,
    Gemini,
}

impl ProviderKind {
    /// The name in configuration (`[agents.providers.openai]`, `…gemini]`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Gemini => "gemini",
        }
    }

    /// The real endpoint (without the model or key, which [`driver`] adds).
    pub fn default_url(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => openai::DEFAULT_URL,
            ProviderKind::Gemini => gemini::DEFAULT_URL,
        }
    }

    /// A fresh protocol machine for this provider.
    pub fn protocol(self) -> Box<dyn Protocol> {
        match self {
            ProviderKind::OpenAi => Box::new(openai::OpenAiRealtime::new()),
            ProviderKind::Gemini => Box::new(gemini::GeminiLive::new()),
        }
    }

    pub fn input_rate(self) -> u32 {
        match self {
            ProviderKind::OpenAi => openai::SAMPLE_RATE,
            ProviderKind::Gemini => gemini::INPUT_RATE,
        }
    }

    pub fn output_rate(self) -> u32 {
        match self {
            ProviderKind::OpenAi => openai::SAMPLE_RATE,
            ProviderKind::Gemini => gemini::OUTPUT_RATE,
        }
    }
}

/// Models named `gemini…` (any case, with or without `models/`) run on Gemini; all others
/// (`gpt-realtime`, `gpt-4o-realtime-preview`, …) on OpenAI.
pub fn provider_for_model(model: &str) -> ProviderKind {
    let name = model.trim();
    let name = name.strip_prefix("models/").unwrap_or(name);
    if name.to_ascii_lowercase().starts_with("gemini") {
        ProviderKind::Gemini
    } else {
        ProviderKind::OpenAi
    }
}

/// How to reach a provider. Embedded in the switch's configuration by the call wiring.
///
/// The key is never logged, serialized or returned: `Debug` shows whether one is set and
/// serialization skips it.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// `None`: chosen from the model name ([`provider_for_model`]).
    #[serde(default)]
    pub kind: Option<ProviderKind>,
    /// Overrides the real endpoint (tests, proxies, regional endpoints); `ws` or `wss`.
    #[serde(default)]
    pub url: Option<String>,
    /// The key itself; prefer `api_key_env`.
    #[serde(default, skip_serializing)]
    pub api_key: Option<String>,
    /// The environment variable holding the key (`OPENAI_API_KEY`, `GEMINI_API_KEY`).
    #[serde(default)]
    pub api_key_env: Option<String>,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("api_key_env", &self.api_key_env)
            .finish()
    }
}

/// Why a provider session cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderConfigError {
    #[error("no API key: set api_key or api_key_env")]
    NoKey,
    #[error("the environment variable {0} named by api_key_env is not set or empty")]
    KeyEnvUnset(String),
    #[error("provider URL must be an absolute ws:// or wss:// URL")]
    BadUrl,
}

impl ProviderConfig {
    /// The provider for `model`: the configured kind, else by name.
    pub fn kind_for(&self, model: &str) -> ProviderKind {
        self.kind.unwrap_or_else(|| provider_for_model(model))
    }

    /// `api_key`, else the variable named by `api_key_env`.
    pub fn resolve_key(&self) -> Result<String, ProviderConfigError> {
        if let Some(key) = self.api_key.as_deref().filter(|k| !k.is_empty()) {
            return Ok(key.to_owned());
        }
        match self.api_key_env.as_deref() {
            Some(var) => std::env::var(var)
                .ok()
                .filter(|k| !k.is_empty())
                .ok_or_else(|| ProviderConfigError::KeyEnvUnset(var.to_owned())),
            None => Err(ProviderConfigError::NoKey),
        }
    }

    /// The URL to connect to for `model`: OpenAI takes the model as `?model=`, Gemini
    /// the key as `?key=` (its documented auth; OpenAI's key goes in a header instead).
    /// Parameters already in an override URL are kept.
    pub fn endpoint(
        &self,
        kind: ProviderKind,
        model: &str,
        key: &str,
    ) -> Result<url::Url, ProviderConfigError> {
        let base = self.url.as_deref().unwrap_or(kind.default_url());
        let mut url =
            crate::streams::parse_stream_url(base).map_err(|_| ProviderConfigError::BadUrl)?;
        let (name, value) = match kind {
            ProviderKind::OpenAi => ("model", model),
            ProviderKind::Gemini => ("key", key),
        };
        if !url.query_pairs().any(|(k, _)| k == name) {
            url.query_pairs_mut().append_pair(name, value);
        }
        Ok(url)
    }
}

/// What the model is told so that it says the greeting first, verbatim (both providers
/// take it as a one-off instruction; neither has a "speak this text" message).
pub(crate) fn greeting_instructions(greeting: &str) -> String {
    format!(
        "Greet the caller by saying exactly the following, word for word, and nothing else: \
         \"{greeting}\""
    )
}

/// Base64 of `pcm` as 16-bit little-endian.
pub(crate) fn encode_pcm16le(pcm: &[i16]) -> String {
    let mut bytes = Vec::with_capacity(pcm.len() * 2);
    for s in pcm {
        bytes.extend_from_slice(&s.to_le_bytes());
    }
    BASE64.encode(bytes)
}

/// 16-bit little-endian PCM from base64; `None` if not base64. A trailing odd byte is
/// dropped.
pub(crate) fn decode_pcm16le(b64: &str) -> Option<Vec<i16>> {
    let bytes = BASE64.decode(b64).ok()?;
    Some(
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_pick_their_provider() {
        assert_eq!(
            provider_for_model("gemini-2.5-flash-native-audio-preview-12-2025"),
            ProviderKind::Gemini
        );
        assert_eq!(
            provider_for_model("models/gemini-live-2.5-flash"),
            ProviderKind::Gemini
        );
        assert_eq!(
            provider_for_model("Gemini-3.1-flash-live-preview"),
            ProviderKind::Gemini
        );
        assert_eq!(provider_for_model("gpt-realtime"), ProviderKind::OpenAi);
        assert_eq!(
            provider_for_model("gpt-4o-realtime-preview"),
            ProviderKind::OpenAi
        );
        assert_eq!(provider_for_model("something-else"), ProviderKind::OpenAi);
    }

    #[test]
    fn pcm_round_trips_little_endian() {
        let pcm = [0i16, 1, -1, i16::MAX, i16::MIN, 0x1234];
        let b64 = encode_pcm16le(&pcm);
        // 0x1234 little-endian is 34 12.
        let raw = BASE64.decode(&b64).unwrap();
        assert_eq!(&raw[10..], &[0x34, 0x12]);
        assert_eq!(decode_pcm16le(&b64).unwrap(), pcm);
        assert_eq!(decode_pcm16le("not base64!"), None);
    }

    #[test]
    fn the_key_is_never_shown_or_serialized() {
        let config = ProviderConfig {
            kind: Some(ProviderKind::OpenAi),
            api_key: Some("sk-secret".into()),
            ..ProviderConfig::default()
        };
        assert!(!format!("{config:?}").contains("sk-secret"));
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("sk-secret"), "{json}");
        assert_eq!(config.resolve_key().unwrap(), "sk-secret");
        let parsed: ProviderConfig = serde_json::from_str(
            r#"{"kind":"gemini","api_key_env":"SWITCHYARD_TEST_UNSET_KEY_VAR"}"#,
        )
        .unwrap();
        assert_eq!(parsed.kind, Some(ProviderKind::Gemini));
        assert_eq!(
            parsed.resolve_key(),
            Err(ProviderConfigError::KeyEnvUnset(
                "SWITCHYARD_TEST_UNSET_KEY_VAR".into()
            ))
        );
        assert_eq!(
            ProviderConfig::default().resolve_key(),
            Err(ProviderConfigError::NoKey)
        );
    }

    #[test]
    fn endpoints_carry_the_model_or_the_key() {
        let config = ProviderConfig::default();
        let url = config
            .endpoint(ProviderKind::OpenAi, "gpt-realtime", "k")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        );
        let url = config
            .endpoint(ProviderKind::Gemini, "gemini-x", "k1")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key=k1"
        );
        let config = ProviderConfig {
            url: Some("ws://127.0.0.1:9/v1/realtime?model=pinned".into()),
            ..ProviderConfig::default()
        };
        let url = config
            .endpoint(ProviderKind::OpenAi, "gpt-realtime", "k")
            .unwrap();
        assert_eq!(url.as_str(), "ws://127.0.0.1:9/v1/realtime?model=pinned");
        let bad = ProviderConfig {
            url: Some("https://example.com/".into()),
            ..ProviderConfig::default()
        };
        assert_eq!(
            bad.endpoint(ProviderKind::OpenAi, "m", "k"),
            Err(ProviderConfigError::BadUrl)
        );
    }
}
