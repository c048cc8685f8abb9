//! The OpenAI Realtime API (GA, `gpt-realtime`) over WebSocket, sans IO.
//!
//! Connection: `wss://api.openai.com/v1/realtime?model=<model>` with
//! `Authorization: Bearer <key>` (no `OpenAI-Beta` header: that selects the beta
//! protocol). The server opens with `session.created`; we send one `session.update`
//! (GA shape: `session.type = "realtime"`, formats and voice under `session.audio`) and
//! report [`ProviderEvent::Ready`] on `session.updated`.
//!
//! Event names follow the GA reference (`response.output_audio.delta`,
//! `response.output_audio_transcript.*`, `conversation.item.added`); the beta names
//! (`response.audio.delta`, `response.audio_transcript.*`) are accepted too, since
//! some deployments and proxies still speak them.
//!
//! - Greeting: `response.create` whose `response.instructions` asks for the text word for
//!   word — what the SDKs' `generate_reply(instructions=…)` sends. An assistant message
//!   item would only add text to the context, never audio.
//! - Tool calls: `response.output_item.done` with a `function_call` item carries name,
//!   `call_id` and the complete arguments (the Agents SDK's source);
//!   `response.function_call_arguments.done` is used as well when the name is known (from
//!   the event or from `response.output_item.added`), whichever comes first, once per
//!   `call_id`. The result goes back as a `function_call_output` item followed by
//!   `response.create` so the model speaks about it.
//! - Barge-in: with `server_vad` and `interrupt_response` the server cancels its response
//!   when `input_audio_buffer.speech_started` arrives; the call then reports what the
//!   caller heard, and [`Protocol::handle_truncate`] sends `conversation.item.truncate`
//!   for the last audio item (tracked from the deltas' `item_id`/`content_index`) so the
//!   model does not remember saying what nobody heard. Late deltas of a truncated item are
//!   dropped.
//! - `error` events: the socket stays open after most of them (per OpenAI's reference),
//!   so they are reported as non-fatal, except before `session.updated`, where an error
//!   means the setup was refused.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::{Value, json};

use super::greeting_instructions;

use super::{
    Incoming, Outgoing, Protocol, ProviderEvent, Role, SessionSetup, decode_pcm16le, encode_pcm16le,
};

/// The GA endpoint; the driver adds `?model=`.
pub const DEFAULT_URL: &str = "wss://api.openai.com/v1/realtime";
/// `audio/pcm` is 24 kHz both ways.
pub const SAMPLE_RATE: u32 = 24_000;
/// The input transcription model the Agents SDK defaults to.
pub const TRANSCRIPTION_MODEL: &str = "gpt-4o-mini-transcribe";

/// The assistant audio item the caller is hearing: what `conversation.item.truncate` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct AudioItem {
    item_id: String,
    content_index: u64,
    /// Samples received for it so far (the most that can have been heard).
    samples: u64,
    truncated: bool,
}

impl AudioItem {
    fn received_ms(&self) -> u64 {
        self.samples * 1000 / u64::from(SAMPLE_RATE)
    }
}

/// One OpenAI Realtime session.
#[derive(Debug, Default)]
pub struct OpenAiRealtime {
    outgoing: VecDeque<Outgoing>,
    events: VecDeque<ProviderEvent>,
    ready: bool,
    audio_item: Option<AudioItem>,
    /// `call_id` → function name, from `response.output_item.added`.
    call_names: HashMap<String, String>,
    /// Calls already reported (several events describe the same call).
    reported_calls: HashSet<String>,
}

impl OpenAiRealtime {
    pub fn new() -> Self {
        Self::default()
    }

    fn send(&mut self, message: Value) {
        self.outgoing.push_back(Outgoing::json(&message));
    }

    fn emit(&mut self, event: ProviderEvent) {
        self.events.push_back(event);
    }

    /// The `session` object of `session.update`.
    pub fn session_config(setup: &SessionSetup) -> Value {
        let mut transcription = json!({ "model": TRANSCRIPTION_MODEL });
        if let Some(lang) = setup.language.as_deref().and_then(iso639_1) {
            // The transcription model wants ISO-639-1 (`en`), not a full tag.
            transcription["language"] = json!(lang);
        }
        let mut output = json!({ "format": { "type": "audio/pcm", "rate": SAMPLE_RATE } });
        if let Some(voice) = &setup.voice {
            output["voice"] = json!(voice);
        }
        let tools: Vec<Value> = setup
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                })
            })
            .collect();
        json!({
            "type": "realtime",
            "model": setup.model,
            "output_modalities": ["audio"],
            "instructions": setup.instructions,
            "audio": {
                "input": {
                    "format": { "type": "audio/pcm", "rate": SAMPLE_RATE },
                    "transcription": transcription,
                    // Server VAD: the usual choice on phone lines; the server answers at
                    // the end of a turn and cancels its answer when the caller barges in.
                    "turn_detection": {
                        "type": "server_vad",
                        "create_response": true,
                        "interrupt_response": true,
                    },
                },
                "output": output,
            },
            "tools": tools,
            "tool_choice": "auto",
        })
    }

    fn on_event(&mut self, event: &Value) {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "session.created" => {}
            "session.updated" if !self.ready => {
                self.ready = true;
                self.emit(ProviderEvent::Ready);
            }
            "response.output_audio.delta" | "response.audio.delta" => self.on_audio_delta(event),
            "response.output_audio_transcript.delta" | "response.audio_transcript.delta" => {
                if let Some(delta) = str_field(event, "delta").filter(|d| !d.is_empty()) {
                    self.emit(transcript(Role::Assistant, delta, false));
                }
            }
            "response.output_audio_transcript.done" | "response.audio_transcript.done" => {
                if let Some(text) = str_field(event, "transcript") {
                    self.emit(transcript(Role::Assistant, text, true));
                }
            }
            "conversation.item.input_audio_transcription.delta" => {
                if let Some(delta) = str_field(event, "delta").filter(|d| !d.is_empty()) {
                    self.emit(transcript(Role::User, delta, false));
                }
            }
            "conversation.item.input_audio_transcription.completed" => {
                if let Some(text) = str_field(event, "transcript") {
                    self.emit(transcript(Role::User, text, true));
                }
            }
            "input_audio_buffer.speech_started" => self.emit(ProviderEvent::SpeechStarted),
            "input_audio_buffer.speech_stopped" => self.emit(ProviderEvent::SpeechStopped),
            "response.output_item.added" => {
                if let Some(item) = event.get("item").filter(|i| is_function_call(i))
                    && let (Some(call_id), Some(name)) =
                        (str_field(item, "call_id"), str_field(item, "name"))
                {
                    self.call_names.insert(call_id.to_owned(), name.to_owned());
                }
            }
            "response.function_call_arguments.done" => {
                let Some(call_id) = str_field(event, "call_id") else {
                    return;
                };
                let name = str_field(event, "name")
                    .map(str::to_owned)
                    .or_else(|| self.call_names.get(call_id).cloned());
                if let (Some(name), Some(arguments)) = (name, str_field(event, "arguments")) {
                    self.report_call(call_id, &name, arguments);
                }
            }
            "response.output_item.done" => {
                if let Some(item) = event.get("item") {
                    self.function_call_item(item);
                }
            }
            "response.done" => {
                let response = event.get("response");
                // A call whose other events were missed is still in the response's output.
                let items = response
                    .and_then(|r| r.get("output"))
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for item in &items {
                    self.function_call_item(item);
                }
                if response.and_then(|r| str_field(r, "status")) == Some("failed") {
                    let message = response
                        .and_then(|r| r.pointer("/status_details/error/message"))
                        .and_then(Value::as_str)
                        .unwrap_or("response failed");
                    self.emit(ProviderEvent::Error {
                        message: format!("response failed: {message}"),
                        fatal: false,
                    });
                }
                self.emit(ProviderEvent::ResponseDone);
            }
            "error" => {
                let error = event.get("error");
                let message = error
                    .and_then(|e| str_field(e, "message"))
                    .unwrap_or("unknown error");
                let code = error
                    .and_then(|e| str_field(e, "code").or_else(|| str_field(e, "type")))
                    .unwrap_or("error");
                self.emit(ProviderEvent::Error {
                    message: format!("{code}: {message}"),
                    fatal: !self.ready,
                });
            }
            _ => {}
        }
    }

    fn on_audio_delta(&mut self, event: &Value) {
        let (Some(item_id), Some(delta)) = (str_field(event, "item_id"), str_field(event, "delta"))
        else {
            return;
        };
        let content_index = event
            .get("content_index")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let Some(pcm) = decode_pcm16le(delta) else {
            self.emit(ProviderEvent::Error {
                message: "audio delta is not base64".to_owned(),
                fatal: false,
            });
            return;
        };
        let same = self
            .audio_item
            .as_ref()
            .is_some_and(|a| a.item_id == item_id && a.content_index == content_index);
        if !same {
            self.audio_item = Some(AudioItem {
                item_id: item_id.to_owned(),
                content_index,
                samples: 0,
                truncated: false,
            });
        }
        let Some(item) = self.audio_item.as_mut() else {
            return;
        };
        if item.truncated {
            // The caller barged in and the model was told it stopped here.
            return;
        }
        item.samples += pcm.len() as u64;
        if !pcm.is_empty() {
            self.emit(ProviderEvent::Audio(pcm));
        }
    }

    fn function_call_item(&mut self, item: &Value) {
        if !is_function_call(item) {
            return;
        }
        if let (Some(call_id), Some(name), Some(arguments)) = (
            str_field(item, "call_id"),
            str_field(item, "name"),
            str_field(item, "arguments"),
        ) {
            self.report_call(call_id, name, arguments);
        }
    }

    fn report_call(&mut self, call_id: &str, name: &str, arguments: &str) {
        if !self.reported_calls.insert(call_id.to_owned()) {
            return;
        }
        self.call_names.remove(call_id);
        self.emit(ProviderEvent::ToolCall {
            call_id: call_id.to_owned(),
            name: name.to_owned(),
            arguments: parse_arguments(arguments),
        });
    }
}

impl Protocol for OpenAiRealtime {
    fn input_rate(&self) -> u32 {
        SAMPLE_RATE
    }

    fn output_rate(&self) -> u32 {
        SAMPLE_RATE
    }

    fn handle_setup(&mut self, setup: &SessionSetup) {
        self.send(json!({
            "type": "session.update",
            "session": Self::session_config(setup),
        }));
        if let Some(greeting) = setup.greeting.as_deref().filter(|g| !g.trim().is_empty()) {
            // Events are applied in order: this response already uses the session above.
            self.send(json!({
                "type": "response.create",
                "response": { "instructions": greeting_instructions(greeting) },
            }));
        }
    }

    fn handle_audio(&mut self, pcm: &[i16]) {
        if pcm.is_empty() {
            return;
        }
        self.send(json!({
            "type": "input_audio_buffer.append",
            "audio": encode_pcm16le(pcm),
        }));
    }

    fn handle_tool_result(&mut self, call_id: &str, _name: &str, output: &Value) {
        // `output` is a string in the API; JSON results travel serialized.
        let output = match output {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.send(json!({
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": call_id,
                "output": output,
            },
        }));
        self.send(json!({ "type": "response.create" }));
    }

    fn handle_user_text(&mut self, text: &str) {
        self.send(json!({
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{ "type": "input_text", "text": text }],
            },
        }));
        self.send(json!({ "type": "response.create" }));
    }

    fn handle_truncate(&mut self, heard_ms: u32) {
        let Some(item) = self.audio_item.as_mut() else {
            return;
        };
        if item.truncated || u64::from(heard_ms) >= item.received_ms() {
            // Everything received was heard: nothing to cut (the server refuses an end
            // past the audio it sent).
            return;
        }
        item.truncated = true;
        let message = json!({
            "type": "conversation.item.truncate",
            "item_id": item.item_id,
            "content_index": item.content_index,
            "audio_end_ms": heard_ms,
        });
        self.send(message);
    }

    fn handle_message(&mut self, message: Incoming<'_>) {
        match message.json() {
            Some(event) => self.on_event(&event),
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
}

/// `en-US` → `en`; `None` for an empty tag.
fn iso639_1(tag: &str) -> Option<String> {
    let primary = tag.split(['-', '_']).next()?.trim().to_ascii_lowercase();
    (!primary.is_empty()).then_some(primary)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn is_function_call(item: &Value) -> bool {
    str_field(item, "type") == Some("function_call")
}

fn transcript(role: Role, text: &str, is_final: bool) -> ProviderEvent {
    ProviderEvent::Transcript {
        role,
        text: text.to_owned(),
        is_final,
    }
}

/// Arguments are a JSON string; an empty one is `{}`, and text that is not JSON is passed
/// on as a string for the tool to judge.
pub(super) fn parse_arguments(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| Value::String(arguments.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::provider::ToolSpec;

    fn drain_out(p: &mut OpenAiRealtime) -> Vec<Value> {
        std::iter::from_fn(|| p.poll_outgoing())
            .map(|o| serde_json::from_str(&o.0).unwrap())
            .collect()
    }

    fn drain_events(p: &mut OpenAiRealtime) -> Vec<ProviderEvent> {
        std::iter::from_fn(|| p.poll_event()).collect()
    }

    fn feed(p: &mut OpenAiRealtime, v: Value) -> Vec<ProviderEvent> {
        p.handle_message(Incoming::Text(&v.to_string()));
        drain_events(p)
    }

    fn setup() -> SessionSetup {
        SessionSetup {
            model: "gpt-realtime".into(),
            instructions: "You answer the phone for Acme.".into(),
            voice: Some("marin".into()),
            language: Some("en-US".into()),
            greeting: Some("Hello, Acme here.".into()),
            tools: vec![ToolSpec {
                name: "get_weather".into(),
                description: "Weather for a city".into(),
                parameters: json!({
                    "type": "object",
                    "properties": { "city": { "type": "string" } },
                    "required": ["city"],
                }),
            }],
        }
    }

    #[test]
    fn setup_sends_the_ga_session_update_then_the_greeting() {
        let mut p = OpenAiRealtime::new();
        p.handle_setup(&setup());
        let out = drain_out(&mut p);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            json!({
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "model": "gpt-realtime",
                    "output_modalities": ["audio"],
                    "instructions": "You answer the phone for Acme.",
                    "audio": {
                        "input": {
                            "format": { "type": "audio/pcm", "rate": 24000 },
                            "transcription": { "model": "gpt-4o-mini-transcribe", "language": "en" },
                            "turn_detection": {
                                "type": "server_vad",
                                "create_response": true,
                                "interrupt_response": true,
                            },
                        },
                        "output": {
                            "format": { "type": "audio/pcm", "rate": 24000 },
                            "voice": "marin",
                        },
                    },
                    "tools": [{
                        "type": "function",
                        "name": "get_weather",
                        "description": "Weather for a city",
                        "parameters": {
                            "type": "object",
                            "properties": { "city": { "type": "string" } },
                            "required": ["city"],
                        },
                    }],
                    "tool_choice": "auto",
                },
            })
        );
        assert_eq!(out[1]["type"], "response.create");
        let instructions = out[1]["response"]["instructions"].as_str().unwrap();
        assert!(
            instructions.contains("\"Hello, Acme here.\""),
            "{instructions}"
        );
        assert!(instructions.contains("word for word"));
    }

    #[test]
    fn keypad_text_is_a_user_message_then_a_response() {
        let mut p = OpenAiRealtime::new();
        p.handle_user_text("[The caller pressed on the keypad: 42#]");
        assert_eq!(
            drain_out(&mut p),
            vec![
                json!({
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{ "type": "input_text", "text": "[The caller pressed on the keypad: 42#]" }],
                    },
                }),
                json!({ "type": "response.create" }),
            ]
        );
    }

    #[test]
    fn no_greeting_no_voice_no_language() {
        let mut p = OpenAiRealtime::new();
        let s = SessionSetup {
            model: "gpt-realtime".into(),
            ..SessionSetup::default()
        };
        p.handle_setup(&s);
        let out = drain_out(&mut p);
        assert_eq!(out.len(), 1);
        let session = &out[0]["session"];
        assert!(session["audio"]["output"].get("voice").is_none());
        assert!(
            session["audio"]["input"]["transcription"]
                .get("language")
                .is_none()
        );
        assert_eq!(session["tools"], json!([]));
    }

    #[test]
    fn ready_on_session_updated_only_once() {
        let mut p = OpenAiRealtime::new();
        // From the reference: session.created arrives first and is not the ack.
        let created = json!({
            "type": "session.created",
            "event_id": "event_C9G5RJeJ2gF77mV7f2B1j",
            "session": { "type": "realtime", "object": "realtime.session", "id": "sess_C9G5QPteg4UIbotdKLoYQ", "model": "gpt-realtime-2025-08-28" }
        });
        assert_eq!(feed(&mut p, created), vec![]);
        let updated = json!({ "type": "session.updated", "event_id": "event_C9G8mqI3IucaojlVKE8Cs", "session": { "type": "realtime" } });
        assert_eq!(feed(&mut p, updated.clone()), vec![ProviderEvent::Ready]);
        assert_eq!(feed(&mut p, updated), vec![]);
    }

    #[test]
    fn audio_is_sent_as_base64_pcm16le() {
        let mut p = OpenAiRealtime::new();
        p.handle_audio(&[1, -2]);
        p.handle_audio(&[]);
        let out = drain_out(&mut p);
        assert_eq!(
            out,
            vec![json!({ "type": "input_audio_buffer.append", "audio": "AQD+/w==" })]
        );
    }

    fn delta(kind: &str, item: &str, pcm: &[i16]) -> Value {
        json!({
            "type": kind,
            "event_id": "event_CCXGRvq3LNJyT5H2G8kYC",
            "response_id": "resp_CCXGRxbY0n6WE4EszhXc1",
            "item_id": item,
            "output_index": 0,
            "content_index": 0,
            "delta": encode_pcm16le(pcm),
        })
    }

    #[test]
    fn audio_deltas_ga_and_beta_names() {
        let mut p = OpenAiRealtime::new();
        let pcm: Vec<i16> = (0..480).map(|i| i as i16).collect();
        assert_eq!(
            feed(&mut p, delta("response.output_audio.delta", "item_a", &pcm)),
            vec![ProviderEvent::Audio(pcm.clone())]
        );
        assert_eq!(
            feed(&mut p, delta("response.audio.delta", "item_a", &pcm)),
            vec![ProviderEvent::Audio(pcm)]
        );
    }

    #[test]
    fn truncate_cuts_the_last_audio_item_at_what_was_heard() {
        let mut p = OpenAiRealtime::new();
        // Nothing played yet: nothing to truncate.
        p.handle_truncate(100);
        assert!(drain_out(&mut p).is_empty());
        // 200 ms then 300 ms on a second item.
        feed(
            &mut p,
            delta("response.output_audio.delta", "item_a", &[0; 4800]),
        );
        feed(
            &mut p,
            delta("response.output_audio.delta", "item_b", &[0; 4800]),
        );
        feed(
            &mut p,
            delta("response.output_audio.delta", "item_b", &[0; 2400]),
        );
        p.handle_truncate(250);
        assert_eq!(
            drain_out(&mut p),
            vec![json!({
                "type": "conversation.item.truncate",
                "item_id": "item_b",
                "content_index": 0,
                "audio_end_ms": 250,
            })]
        );
        // Once per item; late deltas of the cut item are not played.
        p.handle_truncate(100);
        assert!(drain_out(&mut p).is_empty());
        assert_eq!(
            feed(
                &mut p,
                delta("response.output_audio.delta", "item_b", &[0; 480])
            ),
            vec![]
        );
        // A new item plays again; all of it heard: nothing to cut.
        assert_eq!(
            feed(
                &mut p,
                delta("response.output_audio.delta", "item_c", &[0; 480])
            )
            .len(),
            1
        );
        p.handle_truncate(20);
        assert!(drain_out(&mut p).is_empty());
    }

    #[test]
    fn transcripts_both_ways() {
        let mut p = OpenAiRealtime::new();
        let ev = feed(
            &mut p,
            json!({ "type": "response.output_audio_transcript.delta", "event_id": "event_1", "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0, "delta": "Hello" }),
        );
        assert_eq!(ev, vec![transcript(Role::Assistant, "Hello", false)]);
        let ev = feed(
            &mut p,
            json!({ "type": "response.audio_transcript.done", "event_id": "event_2", "response_id": "resp_1", "item_id": "item_1", "output_index": 0, "content_index": 0, "transcript": "Hello, how can I help?" }),
        );
        assert_eq!(
            ev,
            vec![transcript(Role::Assistant, "Hello, how can I help?", true)]
        );
        let ev = feed(
            &mut p,
            json!({
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "event_CCXGRvq3LNJyT5H2G8kYC",
                "item_id": "item_CCXGRxbY0n6WE4EszhXc1",
                "content_index": 0,
                "transcript": "What's the weather in Paris?",
                "usage": { "type": "tokens", "total_tokens": 22, "input_tokens": 13, "output_tokens": 9 }
            }),
        );
        assert_eq!(
            ev,
            vec![transcript(Role::User, "What's the weather in Paris?", true)]
        );
    }

    #[test]
    fn vad_events() {
        let mut p = OpenAiRealtime::new();
        let ev = feed(
            &mut p,
            json!({ "type": "input_audio_buffer.speech_started", "event_id": "event_B1", "audio_start_ms": 1000, "item_id": "item_003" }),
        );
        assert_eq!(ev, vec![ProviderEvent::SpeechStarted]);
        let ev = feed(
            &mut p,
            json!({ "type": "input_audio_buffer.speech_stopped", "event_id": "event_B2", "audio_end_ms": 2000, "item_id": "item_003" }),
        );
        assert_eq!(ev, vec![ProviderEvent::SpeechStopped]);
    }

    #[test]
    fn a_function_call_is_reported_once_whatever_announces_it() {
        let mut p = OpenAiRealtime::new();
        let item = json!({
            "id": "item_fc1",
            "type": "function_call",
            "status": "in_progress",
            "call_id": "call_AbC123",
            "name": "get_weather",
            "arguments": ""
        });
        let added = json!({ "type": "response.output_item.added", "event_id": "e1", "response_id": "resp_1", "output_index": 0, "item": item });
        assert_eq!(feed(&mut p, added), vec![]);
        let done_args = json!({
            "type": "response.function_call_arguments.done",
            "event_id": "e2",
            "response_id": "resp_1",
            "item_id": "item_fc1",
            "output_index": 0,
            "call_id": "call_AbC123",
            "arguments": "{\"city\":\"Paris\"}"
        });
        let expected = ProviderEvent::ToolCall {
            call_id: "call_AbC123".into(),
            name: "get_weather".into(),
            arguments: json!({ "city": "Paris" }),
        };
        assert_eq!(feed(&mut p, done_args), vec![expected.clone()]);
        let mut done_item = item.clone();
        done_item["status"] = json!("completed");
        done_item["arguments"] = json!("{\"city\":\"Paris\"}");
        let item_done = json!({ "type": "response.output_item.done", "event_id": "e3", "response_id": "resp_1", "output_index": 0, "item": done_item });
        assert_eq!(feed(&mut p, item_done), vec![]);
        let response_done = json!({
            "type": "response.done",
            "event_id": "e4",
            "response": { "id": "resp_1", "object": "realtime.response", "status": "completed", "status_details": null, "output": [done_item] }
        });
        assert_eq!(
            feed(&mut p, response_done),
            vec![ProviderEvent::ResponseDone]
        );

        // Only output_item.done seen: still reported.
        let mut p = OpenAiRealtime::new();
        let mut other = item.clone();
        other["call_id"] = json!("call_2");
        other["arguments"] = json!("");
        let ev = feed(
            &mut p,
            json!({ "type": "response.output_item.done", "event_id": "e5", "response_id": "resp_2", "output_index": 0, "item": other }),
        );
        assert_eq!(
            ev,
            vec![ProviderEvent::ToolCall {
                call_id: "call_2".into(),
                name: "get_weather".into(),
                arguments: json!({})
            }]
        );
    }

    #[test]
    fn tool_results_go_back_as_an_item_and_a_new_response() {
        let mut p = OpenAiRealtime::new();
        p.handle_tool_result("call_AbC123", "get_weather", &json!({ "temp_c": 21 }));
        p.handle_tool_result("call_2", "hangup", &json!("done"));
        assert_eq!(
            drain_out(&mut p),
            vec![
                json!({ "type": "conversation.item.create", "item": { "type": "function_call_output", "call_id": "call_AbC123", "output": "{\"temp_c\":21}" } }),
                json!({ "type": "response.create" }),
                json!({ "type": "conversation.item.create", "item": { "type": "function_call_output", "call_id": "call_2", "output": "done" } }),
                json!({ "type": "response.create" }),
            ]
        );
    }

    #[test]
    fn errors_are_fatal_only_before_the_session_is_up() {
        let mut p = OpenAiRealtime::new();
        let error = json!({
            "type": "error",
            "event_id": "event_890",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_event",
                "message": "The 'type' field is missing.",
                "param": null,
                "event_id": "event_567"
            }
        });
        assert_eq!(
            feed(&mut p, error.clone()),
            vec![ProviderEvent::Error {
                message: "invalid_event: The 'type' field is missing.".into(),
                fatal: true
            }]
        );
        feed(&mut p, json!({ "type": "session.updated", "session": {} }));
        assert_eq!(
            feed(&mut p, error),
            vec![ProviderEvent::Error {
                message: "invalid_event: The 'type' field is missing.".into(),
                fatal: false
            }]
        );
        let failed = json!({
            "type": "response.done",
            "response": { "id": "r", "status": "failed", "status_details": { "type": "failed", "error": { "type": "server_error", "message": "boom" } }, "output": [] }
        });
        assert_eq!(
            feed(&mut p, failed),
            vec![
                ProviderEvent::Error {
                    message: "response failed: boom".into(),
                    fatal: false
                },
                ProviderEvent::ResponseDone
            ]
        );
        p.handle_message(Incoming::Text("not json"));
        assert!(matches!(
            drain_events(&mut p)[..],
            [ProviderEvent::Error { fatal: false, .. }]
        ));
    }
}
