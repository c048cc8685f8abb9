//! A fake realtime model provider (OpenAI Realtime or Gemini Live) on 127.0.0.1:0, for
//! driving `switchyard::agents::provider` and, later, whole agent calls.
//!
//! It speaks the wire protocol the way the real services do, as far as a test needs:
//! - checks the credentials at the handshake (OpenAI: `Authorization: Bearer <key>`,
//!   Gemini: `?key=<key>`) and refuses others with 401;
//! - OpenAI: sends `session.created` on connect and `session.updated` for every
//!   `session.update`; Gemini: answers `setup` with `setupComplete`. Server frames are
//!   text for OpenAI and binary (JSON inside) for Gemini, as the real services send them;
//! - records every message received ([`Log`]) and counts the caller audio;
//! - plays a script: steps of [`Trigger`] → [`Action`]s, in order. A step waits for its
//!   trigger (a kind of message — each such trigger consumes one message of that kind —
//!   or an amount of caller audio), then sends its actions.
//!
//! Message kinds: OpenAI's `type`; Gemini's top-level key, with `realtimeInput` split
//! into `realtimeInput.audio` / `realtimeInput.text`.
//!
//! Use from a test file with `#[path = "common/fake_realtime.rs"] mod fake_realtime;` (or
//! `mod common;` and `common::fake_realtime`).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Which provider to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    OpenAi,
    Gemini,
}

impl Flavor {
    /// Rate of the caller audio it receives.
    pub fn input_rate(self) -> u32 {
        match self {
            Flavor::OpenAi => 24_000,
            Flavor::Gemini => 16_000,
        }
    }

    /// The path the real service is on (the URL a test gives the client).
    fn path(self) -> &'static str {
        match self {
            Flavor::OpenAi => "/v1/realtime",
            Flavor::Gemini => {
                "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
            }
        }
    }
}

/// When a step runs.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Right after the previous step.
    Now,
    /// When one more message of this kind has arrived (each consumes one).
    Received(&'static str),
    /// When this much caller audio has arrived in total.
    InputAudioMs(u32),
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// One JSON message, in the flavor's frame type.
    Send(Value),
    Sleep(Duration),
    /// A close frame; the connection ends.
    Close(u16, &'static str),
}

#[derive(Debug, Clone)]
struct Step {
    trigger: Trigger,
    actions: Vec<Action>,
}

/// The handshake of one connection.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    pub path: String,
    pub query: HashMap<String, String>,
    pub authorization: Option<String>,
    pub accepted: bool,
}

/// Everything the server saw.
#[derive(Debug, Default)]
pub struct Log {
    pub handshakes: Vec<Handshake>,
    /// Every JSON message received, in order.
    pub messages: Vec<Value>,
    /// Caller audio received, in samples at the flavor's input rate.
    pub input_samples: u64,
    /// Messages that were not JSON objects.
    pub garbage: u32,
    /// Steps the script has completed.
    pub steps_done: usize,
    pub closed: bool,
}

impl Log {
    /// Messages of one kind.
    pub fn of_kind(&self, flavor: Flavor, kind: &str) -> Vec<Value> {
        self.messages
            .iter()
            .filter(|m| message_kind(flavor, m) == kind)
            .cloned()
            .collect()
    }

    pub fn kinds(&self, flavor: Flavor) -> Vec<String> {
        self.messages
            .iter()
            .map(|m| message_kind(flavor, m))
            .collect()
    }
}

/// Builds a [`FakeRealtime`].
#[derive(Debug)]
pub struct Builder {
    flavor: Flavor,
    api_key: String,
    steps: Vec<Step>,
}

impl Builder {
    /// The key clients must present (default `test-key`).
    pub fn api_key(mut self, key: &str) -> Self {
        self.api_key = key.to_owned();
        self
    }

    /// Appends a script step.
    pub fn step(mut self, trigger: Trigger, actions: Vec<Action>) -> Self {
        self.steps.push(Step { trigger, actions });
        self
    }

    pub async fn spawn(self) -> FakeRealtime {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let script = Arc::new(Mutex::new(Some(self.steps)));
        let changed = Arc::new(tokio::sync::Notify::new());
        let server = Server {
            flavor: self.flavor,
            api_key: self.api_key,
            log: log.clone(),
            changed: changed.clone(),
            script,
        };
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let server = server.clone();
                tokio::spawn(async move { server.connection(tcp).await });
            }
        });
        FakeRealtime {
            flavor: self.flavor,
            url: format!("ws://{addr}{}", self.flavor.path()),
            log,
            changed,
            task,
        }
    }
}

/// A running fake provider.
#[derive(Debug)]
pub struct FakeRealtime {
    pub flavor: Flavor,
    /// The endpoint (without the model or key parameter, which clients add).
    pub url: String,
    log: Arc<Mutex<Log>>,
    /// Notified after every change to the log.
    changed: Arc<tokio::sync::Notify>,
    task: JoinHandle<()>,
}

impl Drop for FakeRealtime {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRealtime {
    pub fn builder(flavor: Flavor) -> Builder {
        Builder {
            flavor,
            api_key: "test-key".to_owned(),
            steps: Vec::new(),
        }
    }

    /// Looks at the log.
    pub fn log<R>(&self, f: impl FnOnce(&Log) -> R) -> R {
        f(&self.log.lock().unwrap())
    }

    /// Waits (up to `limit`) until `f` holds on the log.
    pub async fn wait_until(&self, limit: Duration, f: impl Fn(&Log) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the check, so a change in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.log(&f) {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.log(&f);
            }
        }
    }

    /// Caller audio received so far, in ms.
    pub fn input_ms(&self) -> u64 {
        self.log(|l| l.input_samples * 1000 / u64::from(self.flavor.input_rate()))
    }
}

#[derive(Debug, Clone)]
struct Server {
    flavor: Flavor,
    api_key: String,
    log: Arc<Mutex<Log>>,
    changed: Arc<tokio::sync::Notify>,
    /// Played by the first accepted connection.
    script: Arc<Mutex<Option<Vec<Step>>>>,
}

type Ws = WebSocketStream<TcpStream>;

impl Server {
    async fn connection(self, tcp: TcpStream) {
        let flavor = self.flavor;
        let key = self.api_key.clone();
        let mut seen = Handshake::default();
        // The callback's type is tungstenite's; its error is an HTTP response.
        #[allow(clippy::result_large_err)]
        let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            seen.path = req.uri().path().to_owned();
            seen.query = req
                .uri()
                .query()
                .map(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .into_owned()
                        .collect()
                })
                .unwrap_or_default();
            seen.authorization = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let ok = match flavor {
                Flavor::OpenAi => seen.authorization.as_deref() == Some(&format!("Bearer {key}")),
                Flavor::Gemini => seen.query.get("key") == Some(&key),
            };
            seen.accepted = ok;
            if ok {
                Ok(resp)
            } else {
                let mut refused = ErrorResponse::new(Some("bad credentials".to_owned()));
                *refused.status_mut() = StatusCode::UNAUTHORIZED;
                Err(refused)
            }
        };
        let accepted = tokio_tungstenite::accept_hdr_async(tcp, check).await;
        self.log.lock().unwrap().handshakes.push(seen);
        self.changed.notify_waiters();
        let Ok(ws) = accepted else { return };
        let steps = self.script.lock().unwrap().take().unwrap_or_default();
        self.session(ws, steps).await;
        self.log.lock().unwrap().closed = true;
        self.changed.notify_waiters();
    }

    async fn send(&self, ws: &mut Ws, message: &Value) -> bool {
        let frame = match self.flavor {
            Flavor::OpenAi => Message::Text(message.to_string().into()),
            Flavor::Gemini => Message::Binary(message.to_string().into_bytes().into()),
        };
        ws.send(frame).await.is_ok()
    }

    async fn session(&self, mut ws: Ws, steps: Vec<Step>) {
        if self.flavor == Flavor::OpenAi {
            let created = json!({
                "type": "session.created",
                "event_id": "event_fake_created",
                "session": { "type": "realtime", "object": "realtime.session", "id": "sess_fake" },
            });
            if !self.send(&mut ws, &created).await {
                return;
            }
        }
        let mut next = 0usize;
        // Messages of each kind consumed by `Received` triggers.
        let mut consumed: HashMap<String, usize> = HashMap::new();
        loop {
            // Run every step whose trigger holds.
            while next < steps.len() && self.triggered(&steps[next].trigger, &mut consumed) {
                for action in &steps[next].actions {
                    match action {
                        Action::Send(message) => {
                            if !self.send(&mut ws, message).await {
                                return;
                            }
                        }
                        Action::Sleep(d) => tokio::time::sleep(*d).await,
                        Action::Close(code, reason) => {
                            let frame = CloseFrame {
                                code: CloseCode::from(*code),
                                reason: (*reason).into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                            self.log.lock().unwrap().steps_done = next + 1;
                            self.changed.notify_waiters();
                            // Drain until the client answers the close.
                            while let Some(Ok(_)) = ws.next().await {}
                            return;
                        }
                    }
                }
                next += 1;
                self.log.lock().unwrap().steps_done = next;
                self.changed.notify_waiters();
            }
            let message = match ws.next().await {
                Some(Ok(Message::Text(t))) => serde_json::from_str::<Value>(t.as_str()).ok(),
                Some(Ok(Message::Binary(b))) => serde_json::from_slice::<Value>(&b).ok(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            };
            let Some(message) = message.filter(Value::is_object) else {
                self.log.lock().unwrap().garbage += 1;
                self.changed.notify_waiters();
                continue;
            };
            let kind = message_kind(self.flavor, &message);
            {
                let mut log = self.log.lock().unwrap();
                log.input_samples += input_samples(self.flavor, &message);
                log.messages.push(message);
            }
            self.changed.notify_waiters();
            // What the real service answers by itself.
            let reply = match (self.flavor, kind.as_str()) {
                (Flavor::OpenAi, "session.update") => Some(json!({
                    "type": "session.updated",
                    "event_id": "event_fake_updated",
                    "session": { "type": "realtime", "object": "realtime.session", "id": "sess_fake" },
                })),
                (Flavor::Gemini, "setup") => Some(json!({ "setupComplete": {} })),
                _ => None,
            };
            if let Some(reply) = reply
                && !self.send(&mut ws, &reply).await
            {
                return;
            }
        }
    }

    fn triggered(&self, trigger: &Trigger, consumed: &mut HashMap<String, usize>) -> bool {
        let log = self.log.lock().unwrap();
        match trigger {
            Trigger::Now => true,
            Trigger::InputAudioMs(ms) => {
                log.input_samples * 1000 / u64::from(self.flavor.input_rate()) >= u64::from(*ms)
            }
            Trigger::Received(kind) => {
                let have = log
                    .messages
                    .iter()
                    .filter(|m| message_kind(self.flavor, m) == *kind)
                    .count();
                let used = consumed.entry((*kind).to_owned()).or_insert(0);
                if have > *used {
                    *used += 1;
                    true
                } else {
                    false
                }
            }
        }
    }
}

/// A message's kind (see the module documentation).
pub fn message_kind(flavor: Flavor, message: &Value) -> String {
    match flavor {
        Flavor::OpenAi => message
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        Flavor::Gemini => {
            let Some(key) = message.as_object().and_then(|o| o.keys().next().cloned()) else {
                return String::new();
            };
            if key == "realtimeInput" {
                let inner = &message["realtimeInput"];
                for sub in [
                    "audio",
                    "text",
                    "mediaChunks",
                    "activityStart",
                    "activityEnd",
                ] {
                    if inner.get(sub).is_some() {
                        return format!("realtimeInput.{sub}");
                    }
                }
            }
            key
        }
    }
}

fn input_samples(flavor: Flavor, message: &Value) -> u64 {
    let data = match flavor {
        Flavor::OpenAi if message["type"] == "input_audio_buffer.append" => {
            message["audio"].as_str()
        }
        Flavor::Gemini => message
            .pointer("/realtimeInput/audio/data")
            .and_then(Value::as_str),
        _ => None,
    };
    data.and_then(|d| BASE64.decode(d).ok())
        .map_or(0, |b| (b.len() / 2) as u64)
}

/// `ms` of a sine at `freq` Hz, amplitude 8000, sampled at `rate`.
pub fn tone(freq: f64, rate: u32, ms: u32) -> Vec<i16> {
    let n = (rate / 1000 * ms) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * freq * t).sin()) as i16
        })
        .collect()
}

/// Base64 PCM16 little-endian.
pub fn pcm_b64(pcm: &[i16]) -> String {
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    BASE64.encode(bytes)
}

/// Goertzel power of `freq` in `x` (relative units, comparable within one signal).
pub fn goertzel(x: &[i16], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &s in x {
        let s0 = f64::from(s) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// Splits `pcm` into `chunks` nearly equal pieces.
fn split(pcm: &[i16], chunks: usize) -> Vec<&[i16]> {
    let size = pcm.len().div_ceil(chunks.max(1)).max(1);
    pcm.chunks(size).collect()
}

/// OpenAI: a 24 kHz tone as `response.output_audio.delta` events of one audio item.
pub fn openai_audio(item_id: &str, pcm: &[i16], chunks: usize) -> Vec<Action> {
    split(pcm, chunks)
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            Action::Send(json!({
                "type": "response.output_audio.delta",
                "event_id": format!("event_delta_{item_id}_{i}"),
                "response_id": "resp_fake",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": pcm_b64(chunk),
            }))
        })
        .collect()
}

/// OpenAI: a function call as the service announces it (item added, arguments done,
/// item done).
pub fn openai_function_call(call_id: &str, name: &str, arguments: &Value) -> Vec<Action> {
    let args = arguments.to_string();
    let item = |status: &str, args: &str| {
        json!({
            "id": format!("item_{call_id}"),
            "object": "realtime.item",
            "type": "function_call",
            "status": status,
            "call_id": call_id,
            "name": name,
            "arguments": args,
        })
    };
    vec![
        Action::Send(json!({
            "type": "response.output_item.added",
            "event_id": "event_fc_added",
            "response_id": "resp_fc",
            "output_index": 0,
            "item": item("in_progress", ""),
        })),
        Action::Send(json!({
            "type": "response.function_call_arguments.done",
            "event_id": "event_fc_args",
            "response_id": "resp_fc",
            "item_id": format!("item_{call_id}"),
            "output_index": 0,
            "call_id": call_id,
            "arguments": args,
        })),
        Action::Send(json!({
            "type": "response.output_item.done",
            "event_id": "event_fc_done",
            "response_id": "resp_fc",
            "output_index": 0,
            "item": item("completed", &args),
        })),
    ]
}

/// OpenAI: `response.done` for a completed response.
pub fn openai_response_done(response_id: &str) -> Action {
    Action::Send(json!({
        "type": "response.done",
        "event_id": format!("event_done_{response_id}"),
        "response": {
            "id": response_id,
            "object": "realtime.response",
            "status": "completed",
            "status_details": null,
            "output": [],
        },
    }))
}

/// Gemini: 24 kHz audio as `serverContent.modelTurn` inline data.
pub fn gemini_audio(pcm: &[i16], chunks: usize) -> Vec<Action> {
    split(pcm, chunks)
        .into_iter()
        .map(|chunk| {
            Action::Send(json!({
                "serverContent": {
                    "modelTurn": {
                        "parts": [{
                            "inlineData": { "mimeType": "audio/pcm;rate=24000", "data": pcm_b64(chunk) },
                        }],
                    },
                },
            }))
        })
        .collect()
}
