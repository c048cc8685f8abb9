//! The Gemini Live API (`BidiGenerateContent`) over WebSocket, sans IO.
//!
//! Connection: `wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.
//! v1beta.GenerativeService.BidiGenerateContent?key=<key>` (the key as a query parameter,
//! as Google's WebSocket guide documents). The first message is `setup`; the server
//! answers `setupComplete` ([`ProviderEvent::Ready`]) and nothing else may be sent before
//! it, so audio that arrives earlier is dropped and the greeting waits. The server sends
//! its JSON in binary frames as well as text frames; both are accepted. Field names are
//! the proto's JSON (camelCase) names, as in `google-genai`'s converters.
//!
//! - Audio in: `realtimeInput.audio` (`{data, mimeType: "audio/pcm;rate=16000"}`), the
//!   current field; `mediaChunks` is deprecated.
//! - Greeting: `realtimeInput.text`. `clientContent` turns were the older way, but
//!   `gemini-3.1-flash-live-preview` refused `clientContent` after setup (LiveKit
//!   agents PR 5251/5262), while realtime text works on 2.5 and 3.x (Pipecat sends user
//!   text that way).
//! - Tools: `functionDeclarations` with the JSON Schema adapted to Gemini's OpenAPI
//!   subset (as Pipecat's adapter does: `additionalProperties` and `x-` keys dropped,
//!   union types as `anyOf`, non-string enums dropped). `toolCall.functionCalls[]`
//!   (`id`, `name`, `args`) → [`ProviderEvent::ToolCall`]; results go back as
//!   `toolResponse.functionResponses[]`; `toolCallCancellation.ids` →
//!   [`ProviderEvent::ToolCallsCancelled`].
//! - Barge-in: `serverContent.interrupted` → [`ProviderEvent::SpeechStarted`] (the only
//!   VAD signal the API gives; there is no speech-stopped event). **Truncation is not
//!   possible**: the API has no message for it. On an interruption the server cancels the
//!   generation itself and keeps what it had already sent; LiveKit's plugin logs
//!   "truncate is not supported by the Google Realtime API" and sends nothing, Pipecat
//!   sends nothing either. [`Protocol::handle_truncate`] is therefore a no-op here: the
//!   model may remember a few hundred milliseconds more than the caller heard.
//! - Transcripts: `inputTranscription`/`outputTranscription` carry fragments
//!   (`is_final: false`); the whole utterance is reported final when the transcription
//!   says `finished`, when the turn completes or is interrupted, and (for the caller) when
//!   the model starts answering.
//! - Session resumption: every `setup` asks for it (`sessionResumption: {}`), and the
//!   server's `sessionResumptionUpdate`s give the latest `newHandle` while `resumable`.
//!   On `goAway` (the server will close in `timeLeft`: connections last about ten
//!   minutes) the driver opens a new connection at once and its `setup` carries
//!   `sessionResumption.handle`, so a long call keeps its conversation; a connection that
//!   drops unannounced is resumed the same way. The greeting is not asked for again.
//!   Without a handle, `goAway` is a non-fatal [`ProviderEvent::Error`] and the close
//!   that follows is fatal.

use std::collections::VecDeque;

use serde_json::{Map, Value, json};

use super::greeting_instructions;

use super::{
    Incoming, Outgoing, Protocol, ProviderEvent, Role, SessionSetup, decode_pcm16le, encode_pcm16le,
};

/// The Gemini API (AI Studio key) endpoint; the driver adds `?key=`.
pub const DEFAULT_URL: &str = "wss://generativelanguage.googleapis.com/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent";
/// Input audio: 16-bit PCM at 16 kHz.
pub const INPUT_RATE: u32 = 16_000;
/// Output audio: 16-bit PCM at 24 kHz.
pub const OUTPUT_RATE: u32 = 24_000;

const INPUT_MIME: &str = "audio/pcm;rate=16000";

/// One Gemini Live session.
#[derive(Debug, Default)]
pub struct GeminiLive {
    outgoing: VecDeque<Outgoing>,
    events: VecDeque<ProviderEvent>,
    ready: bool,
    /// Sent once `setupComplete` arrives.
    pending_greeting: Option<String>,
    user_text: String,
    assistant_text: String,
    /// Caller audio dropped because the setup was not acknowledged yet (samples).
    dropped_before_ready: u64,
    /// The `setup` message, sent again (with a handle) to resume on a new connection.
    setup: Option<Value>,
    /// The latest handle the server said the session can be resumed from.
    resume_handle: Option<String>,
    /// `goAway` arrived and the session can be resumed: reconnect.
    reconnect: bool,
}

impl GeminiLive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Input samples dropped before `setupComplete`.
    pub fn dropped_before_ready(&self) -> u64 {
        self.dropped_before_ready
    }

    fn send(&mut self, message: Value) {
        self.outgoing.push_back(Outgoing::json(&message));
    }

    fn emit(&mut self, event: ProviderEvent) {
        self.events.push_back(event);
    }

    /// The `setup` message.
    pub fn setup_message(setup: &SessionSetup) -> Value {
        let model = if setup.model.starts_with("models/") {
            setup.model.clone()
        } else {
            format!("models/{}", setup.model)
        };
        let mut generation = json!({ "responseModalities": ["AUDIO"] });
        let mut speech = Map::new();
        if let Some(voice) = &setup.voice {
            speech.insert(
                "voiceConfig".into(),
                json!({ "prebuiltVoiceConfig": { "voiceName": voice } }),
            );
        }
        if let Some(lang) = &setup.language {
            speech.insert("languageCode".into(), json!(lang));
        }
        if !speech.is_empty() {
            generation["speechConfig"] = Value::Object(speech);
        }
        let mut body = json!({
            "model": model,
            "generationConfig": generation,
            "systemInstruction": { "parts": [{ "text": setup.instructions }] },
            "inputAudioTranscription": {},
            "outputAudioTranscription": {},
        });
        if !setup.tools.is_empty() {
            let declarations: Vec<Value> = setup
                .tools
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "description": t.description,
                        "parameters": adapt_schema(&t.parameters),
                    })
                })
                .collect();
            body["tools"] = json!([{ "functionDeclarations": declarations }]);
        }
        json!({ "setup": body })
    }

    fn send_greeting(&mut self, greeting: &str) {
        self.send(json!({ "realtimeInput": { "text": greeting_instructions(greeting) } }));
    }

    fn flush_user(&mut self) {
        if !self.user_text.trim().is_empty() {
            let text = std::mem::take(&mut self.user_text);
            self.emit(transcript(Role::User, text.trim(), true));
        }
        self.user_text.clear();
    }

    fn flush_assistant(&mut self) {
        if !self.assistant_text.trim().is_empty() {
            let text = std::mem::take(&mut self.assistant_text);
            self.emit(transcript(Role::Assistant, text.trim(), true));
        }
        self.assistant_text.clear();
    }

    fn on_message(&mut self, message: &Value) {
        if message.get("setupComplete").is_some() && !self.ready {
            self.ready = true;
            self.emit(ProviderEvent::Ready);
            if let Some(greeting) = self.pending_greeting.take() {
                self.send_greeting(&greeting);
            }
        }
        // Fields are not exclusive (3.x bundles audio, transcripts and turnComplete):
        // content first, the end of the turn last.
        if let Some(content) = message.get("serverContent") {
            self.on_server_content(content);
        }
        if let Some(calls) = message
            .pointer("/toolCall/functionCalls")
            .and_then(Value::as_array)
        {
            for call in calls {
                let Some(name) = call.get("name").and_then(Value::as_str) else {
                    continue;
                };
                // Vertex omits ids; the name then identifies the call.
                let call_id = call.get("id").and_then(Value::as_str).unwrap_or(name);
                let arguments = call.get("args").cloned().unwrap_or_else(|| json!({}));
                self.emit(ProviderEvent::ToolCall {
                    call_id: call_id.to_owned(),
                    name: name.to_owned(),
                    arguments,
                });
            }
        }
        if let Some(ids) = message
            .pointer("/toolCallCancellation/ids")
            .and_then(Value::as_array)
        {
            let call_ids = ids
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            self.emit(ProviderEvent::ToolCallsCancelled { call_ids });
        }
        if let Some(update) = message.get("sessionResumptionUpdate") {
            let handle = update.get("newHandle").and_then(Value::as_str);
            let resumable = update.get("resumable").and_then(Value::as_bool) == Some(true);
            if let (true, Some(handle)) = (resumable, handle.filter(|h| !h.is_empty())) {
                self.resume_handle = Some(handle.to_owned());
            }
        }
        if let Some(go_away) = message.get("goAway")
            && self.resume_handle.is_some()
        {
            self.reconnect = true;
            let left = go_away
                .get("timeLeft")
                .and_then(Value::as_str)
                .unwrap_or("?");
            tracing::info!(
                time_left = left,
                "Gemini goAway: resuming on a new connection"
            );
        } else if let Some(go_away) = message.get("goAway") {
            let left = go_away
                .get("timeLeft")
                .and_then(Value::as_str)
                .unwrap_or("a moment");
            self.emit(ProviderEvent::Error {
                message: format!("the provider will close the session in {left}"),
                fatal: false,
            });
        }
    }

    fn on_server_content(&mut self, content: &Value) {
        let flag = |name: &str| content.get(name).and_then(Value::as_bool) == Some(true);
        if flag("interrupted") {
            self.flush_assistant();
            self.emit(ProviderEvent::SpeechStarted);
        }
        if let Some(text) = content
            .pointer("/inputTranscription/text")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.user_text.push_str(text);
            self.emit(transcript(Role::User, text, false));
        }
        if content
            .pointer("/inputTranscription/finished")
            .and_then(Value::as_bool)
            == Some(true)
        {
            self.flush_user();
        }
        if let Some(parts) = content
            .pointer("/modelTurn/parts")
            .and_then(Value::as_array)
        {
            for part in parts {
                let Some(inline) = part.get("inlineData") else {
                    continue;
                };
                let mime = inline.get("mimeType").and_then(Value::as_str).unwrap_or("");
                if !mime.starts_with("audio/pcm") {
                    continue;
                }
                let Some(data) = inline.get("data").and_then(Value::as_str) else {
                    continue;
                };
                // The model answering means the caller's utterance is over.
                self.flush_user();
                match decode_pcm16le(data) {
                    Some(pcm) if !pcm.is_empty() => self.emit(ProviderEvent::Audio(pcm)),
                    Some(_) => {}
                    None => self.emit(ProviderEvent::Error {
                        message: "audio part is not base64".to_owned(),
                        fatal: false,
                    }),
                }
            }
        }
        if let Some(text) = content
            .pointer("/outputTranscription/text")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.flush_user();
            self.assistant_text.push_str(text);
            self.emit(transcript(Role::Assistant, text, false));
        }
        if content
            .pointer("/outputTranscription/finished")
            .and_then(Value::as_bool)
            == Some(true)
        {
            self.flush_assistant();
        }
        if flag("turnComplete") {
            self.flush_user();
            self.flush_assistant();
            self.emit(ProviderEvent::ResponseDone);
        }
    }
}

impl Protocol for GeminiLive {
    fn input_rate(&self) -> u32 {
        INPUT_RATE
    }

    fn output_rate(&self) -> u32 {
        OUTPUT_RATE
    }

    fn handle_setup(&mut self, setup: &SessionSetup) {
        let mut message = Self::setup_message(setup);
        message["setup"]["sessionResumption"] = json!({});
        self.send(message.clone());
        self.setup = Some(message);
        self.pending_greeting = setup.greeting.clone().filter(|g| !g.trim().is_empty());
    }

    fn handle_audio(&mut self, pcm: &[i16]) {
        if pcm.is_empty() {
            return;
        }
        if !self.ready {
            self.dropped_before_ready += pcm.len() as u64;
            return;
        }
        self.send(json!({
            "realtimeInput": {
                "audio": { "data": encode_pcm16le(pcm), "mimeType": INPUT_MIME },
            },
        }));
    }

    fn handle_tool_result(&mut self, call_id: &str, name: &str, output: &Value) {
        // `response` must be an object; other values go under `output`, the key Gemini
        // reads as the function's output.
        let response = match output {
            Value::Object(_) => output.clone(),
            other => json!({ "output": other }),
        };
        self.send(json!({
            "toolResponse": {
                "functionResponses": [{ "id": call_id, "name": name, "response": response }],
            },
        }));
    }

    fn handle_user_text(&mut self, text: &str) {
        // Text in the realtime input is a turn of the caller's, answered like speech.
        self.send(json!({ "realtimeInput": { "text": text } }));
    }

    fn handle_truncate(&mut self, _heard_ms: u32) {
        // No truncate in the Live API: see the module documentation.
    }

    fn handle_message(&mut self, message: Incoming<'_>) {
        match message.json() {
            Some(value) => self.on_message(&value),
            None => self.emit(ProviderEvent::Error {
                message: "provider sent a message that is not a JSON object".to_owned(),
                fatal: false,
            }),
        }
    }

    fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.outgoing.pop_front()
    }

    fn poll_event(&mut self) -> Option<ProviderEvent> {
        self.events.pop_front()
    }

    fn take_reconnect(&mut self) -> bool {
        std::mem::take(&mut self.reconnect)
    }

    fn can_resume(&self) -> bool {
        self.resume_handle.is_some() && self.setup.is_some()
    }

    fn handle_resume(&mut self) {
        let (Some(mut message), Some(handle)) = (self.setup.clone(), self.resume_handle.clone())
        else {
            return;
        };
        message["setup"]["sessionResumption"] = json!({ "handle": handle });
        // Until the new connection's `setupComplete`, audio is dropped as at the start;
        // what the old one had half-said is reported as it stands.
        self.ready = false;
        self.flush_user();
        self.flush_assistant();
        self.send(message);
    }
}

fn transcript(role: Role, text: &str, is_final: bool) -> ProviderEvent {
    ProviderEvent::Transcript {
        role,
        text: text.to_owned(),
        is_final,
    }
}

/// JSON Schema → the OpenAPI 3.0 subset Gemini's `Schema` accepts (it refuses the rest).
pub fn adapt_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        match (key.as_str(), value) {
            ("additionalProperties", _) => {}
            (k, _) if k.starts_with("x-") => {}
            ("properties", Value::Object(props)) => {
                // Keys here are parameter names, not keywords: keep them all.
                let adapted = props
                    .iter()
                    .map(|(name, prop)| (name.clone(), adapt_schema(prop)))
                    .collect();
                out.insert(key.clone(), Value::Object(adapted));
            }
            ("type", Value::Array(types)) => {
                let any_of = types.iter().map(|t| json!({ "type": t })).collect();
                out.insert("anyOf".into(), Value::Array(any_of));
            }
            ("enum", Value::Array(members)) if !members.iter().all(Value::is_string) => {}
            (_, Value::Object(_)) => {
                out.insert(key.clone(), adapt_schema(value));
            }
            (_, Value::Array(items)) => {
                out.insert(key.clone(), items.iter().map(adapt_schema).collect());
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::provider::ToolSpec;

    fn drain_out(p: &mut GeminiLive) -> Vec<Value> {
        std::iter::from_fn(|| p.poll_outgoing())
            .map(|o| serde_json::from_str(&o.0).unwrap())
            .collect()
    }

    fn drain_events(p: &mut GeminiLive) -> Vec<ProviderEvent> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    /// Messages arrive as binary frames from the real service.
    fn feed(p: &mut GeminiLive, v: Value) -> Vec<ProviderEvent> {
        p.handle_message(Incoming::Binary(v.to_string().as_bytes()));
        drain_events(p)
    }

    fn setup() -> SessionSetup {
        SessionSetup {
            model: "gemini-2.5-flash-native-audio-preview-12-2025".into(),
            instructions: "You answer the phone for Acme.".into(),
            voice: Some("Aoede".into()),
            language: Some("en-US".into()),
            greeting: Some("Hello, Acme here.".into()),
            tools: vec![ToolSpec {
                name: "get_weather".into(),
                description: "Weather for a city".into(),
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "city": { "type": "string", "x-mcp-header": "c" },
                        "days": { "type": ["integer", "null"] },
                        "unit": { "type": "string", "enum": ["c", "f"] },
                        "level": { "type": "integer", "enum": [1, 2] },
                    },
                    "required": ["city"],
                    "additionalProperties": false,
                }),
            }],
        }
    }

    #[test]
    fn setup_then_greeting_after_setup_complete() {
        let mut p = GeminiLive::new();
        p.handle_setup(&setup());
        let out = drain_out(&mut p);
        assert_eq!(
            out,
            vec![json!({
                "setup": {
                    "model": "models/gemini-2.5-flash-native-audio-preview-12-2025",
                    "generationConfig": {
                        "responseModalities": ["AUDIO"],
                        "speechConfig": {
                            "voiceConfig": { "prebuiltVoiceConfig": { "voiceName": "Aoede" } },
                            "languageCode": "en-US",
                        },
                    },
                    "systemInstruction": { "parts": [{ "text": "You answer the phone for Acme." }] },
                    "inputAudioTranscription": {},
                    "outputAudioTranscription": {},
                    "sessionResumption": {},
                    "tools": [{
                        "functionDeclarations": [{
                            "name": "get_weather",
                            "description": "Weather for a city",
                            "parameters": {
                                "type": "object",
                                "properties": {
                                    "city": { "type": "string" },
                                    "days": { "anyOf": [{ "type": "integer" }, { "type": "null" }] },
                                    "unit": { "type": "string", "enum": ["c", "f"] },
                                    "level": { "type": "integer" },
                                },
                                "required": ["city"],
                            },
                        }],
                    }],
                },
            })]
        );
        // Nothing before setupComplete: audio is dropped, the greeting waits.
        p.handle_audio(&[0; 320]);
        assert!(drain_out(&mut p).is_empty());
        assert_eq!(p.dropped_before_ready(), 320);
        // From the reference: `{"setupComplete": {}}`.
        assert_eq!(
            feed(&mut p, json!({ "setupComplete": {} })),
            vec![ProviderEvent::Ready]
        );
        let out = drain_out(&mut p);
        assert_eq!(out.len(), 1);
        let text = out[0]["realtimeInput"]["text"].as_str().unwrap();
        assert!(text.contains("\"Hello, Acme here.\""), "{text}");
        assert_eq!(feed(&mut p, json!({ "setupComplete": {} })), vec![]);
        assert!(drain_out(&mut p).is_empty());
    }

    #[test]
    fn minimal_setup_has_no_speech_config_or_tools() {
        let s = SessionSetup {
            model: "models/gemini-live-2.5-flash".into(),
            ..SessionSetup::default()
        };
        let m = GeminiLive::setup_message(&s);
        assert_eq!(m["setup"]["model"], "models/gemini-live-2.5-flash");
        assert!(m["setup"]["generationConfig"].get("speechConfig").is_none());
        assert!(m["setup"].get("tools").is_none());
    }

    #[test]
    fn audio_goes_as_realtime_input_audio() {
        let mut p = GeminiLive::new();
        feed(&mut p, json!({ "setupComplete": {} }));
        p.handle_audio(&[1, -2]);
        assert_eq!(
            drain_out(&mut p),
            vec![
                json!({ "realtimeInput": { "audio": { "data": "AQD+/w==", "mimeType": "audio/pcm;rate=16000" } } })
            ]
        );
    }

    #[test]
    fn model_audio_transcripts_and_turns() {
        let mut p = GeminiLive::new();
        let pcm: Vec<i16> = (0..480).map(|i| (i * 3) as i16).collect();
        let ev = feed(
            &mut p,
            json!({ "serverContent": { "inputTranscription": { "text": "What's the" } } }),
        );
        assert_eq!(ev, vec![transcript(Role::User, "What's the", false)]);
        feed(
            &mut p,
            json!({ "serverContent": { "inputTranscription": { "text": " weather?" } } }),
        );
        // 3.x bundles audio and its transcription in one message.
        let ev = feed(
            &mut p,
            json!({
                "serverContent": {
                    "modelTurn": { "parts": [{ "inlineData": { "mimeType": "audio/pcm;rate=24000", "data": encode_pcm16le(&pcm) } }] },
                    "outputTranscription": { "text": "It's sunny." }
                }
            }),
        );
        assert_eq!(
            ev,
            vec![
                transcript(Role::User, "What's the weather?", true),
                ProviderEvent::Audio(pcm),
                transcript(Role::Assistant, "It's sunny.", false),
            ]
        );
        let ev = feed(
            &mut p,
            json!({ "serverContent": { "generationComplete": true } }),
        );
        assert_eq!(ev, vec![]);
        let ev = feed(
            &mut p,
            json!({ "serverContent": { "turnComplete": true }, "usageMetadata": { "promptTokenCount": 10, "totalTokenCount": 20 } }),
        );
        assert_eq!(
            ev,
            vec![
                transcript(Role::Assistant, "It's sunny.", true),
                ProviderEvent::ResponseDone
            ]
        );
    }

    #[test]
    fn interrupted_is_barge_in_and_truncate_sends_nothing() {
        let mut p = GeminiLive::new();
        feed(
            &mut p,
            json!({ "serverContent": { "outputTranscription": { "text": "Let me" } } }),
        );
        let ev = feed(&mut p, json!({ "serverContent": { "interrupted": true } }));
        assert_eq!(
            ev,
            vec![
                transcript(Role::Assistant, "Let me", true),
                ProviderEvent::SpeechStarted
            ]
        );
        p.handle_truncate(120);
        assert!(drain_out(&mut p).is_empty());
    }

    #[test]
    fn tool_calls_cancellations_and_results() {
        let mut p = GeminiLive::new();
        let ev = feed(
            &mut p,
            json!({
                "toolCall": {
                    "functionCalls": [
                        { "id": "function-call-1234", "name": "get_weather", "args": { "city": "Paris" } },
                        { "name": "hang_up" }
                    ]
                }
            }),
        );
        assert_eq!(
            ev,
            vec![
                ProviderEvent::ToolCall {
                    call_id: "function-call-1234".into(),
                    name: "get_weather".into(),
                    arguments: json!({ "city": "Paris" })
                },
                ProviderEvent::ToolCall {
                    call_id: "hang_up".into(),
                    name: "hang_up".into(),
                    arguments: json!({})
                },
            ]
        );
        let ev = feed(
            &mut p,
            json!({ "toolCallCancellation": { "ids": ["function-call-1234"] } }),
        );
        assert_eq!(
            ev,
            vec![ProviderEvent::ToolCallsCancelled {
                call_ids: vec!["function-call-1234".into()]
            }]
        );
        p.handle_tool_result(
            "function-call-1234",
            "get_weather",
            &json!({ "temp_c": 21 }),
        );
        p.handle_tool_result("x", "hang_up", &json!("ok"));
        assert_eq!(
            drain_out(&mut p),
            vec![
                json!({ "toolResponse": { "functionResponses": [{ "id": "function-call-1234", "name": "get_weather", "response": { "temp_c": 21 } }] } }),
                json!({ "toolResponse": { "functionResponses": [{ "id": "x", "name": "hang_up", "response": { "output": "ok" } }] } }),
            ]
        );
    }

    #[test]
    fn go_away_with_a_handle_resumes_on_a_new_connection() {
        let mut p = GeminiLive::new();
        p.handle_setup(&setup());
        drain_out(&mut p);
        feed(&mut p, json!({ "setupComplete": {} }));
        assert_eq!(drain_out(&mut p).len(), 1, "the greeting");
        assert!(!p.can_resume());
        // Not resumable at this point (e.g. a tool call runs): no handle kept.
        feed(
            &mut p,
            json!({ "sessionResumptionUpdate": { "newHandle": "", "resumable": false } }),
        );
        assert!(!p.can_resume());
        feed(
            &mut p,
            json!({ "sessionResumptionUpdate": { "newHandle": "h-2", "resumable": true } }),
        );
        assert!(p.can_resume());
        // goAway with a handle: no error, a reconnect (asked once).
        assert_eq!(
            feed(&mut p, json!({ "goAway": { "timeLeft": "50s" } })),
            vec![]
        );
        assert!(p.take_reconnect());
        assert!(!p.take_reconnect());
        p.handle_resume();
        let out = drain_out(&mut p);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(
            out[0]["setup"]["sessionResumption"],
            json!({ "handle": "h-2" })
        );
        assert_eq!(out[0]["setup"]["model"], setup_model());
        // Audio waits for the new setupComplete; the greeting is not asked for again.
        p.handle_audio(&[0; 320]);
        assert!(drain_out(&mut p).is_empty());
        assert_eq!(
            feed(&mut p, json!({ "setupComplete": {} })),
            vec![ProviderEvent::Ready]
        );
        assert!(drain_out(&mut p).is_empty());
        p.handle_audio(&[0; 320]);
        assert_eq!(drain_out(&mut p).len(), 1);
    }

    #[test]
    fn keypad_text_is_realtime_input_text() {
        let mut p = GeminiLive::new();
        p.handle_user_text("[The caller pressed on the keypad: 7]");
        assert_eq!(
            drain_out(&mut p),
            vec![json!({ "realtimeInput": { "text": "[The caller pressed on the keypad: 7]" } })]
        );
    }

    fn setup_model() -> Value {
        json!("models/gemini-2.5-flash-native-audio-preview-12-2025")
    }

    #[test]
    fn go_away_and_garbage() {
        let mut p = GeminiLive::new();
        let ev = feed(&mut p, json!({ "goAway": { "timeLeft": "10s" } }));
        assert_eq!(
            ev,
            vec![ProviderEvent::Error {
                message: "the provider will close the session in 10s".into(),
                fatal: false
            }]
        );
        p.handle_message(Incoming::Binary(b"\xff\x00"));
        assert!(matches!(
            drain_events(&mut p)[..],
            [ProviderEvent::Error { fatal: false, .. }]
        ));
        // Text frames work too.
        p.handle_message(Incoming::Text(r#"{"setupComplete":{}}"#));
        assert_eq!(drain_events(&mut p), vec![ProviderEvent::Ready]);
    }
}
