//! Browser realtime sessions: `GET /api/v1/agents/{id}/realtime?token=…` upgrades to a
//! WebSocket on which a web page talks to an active agent (the token comes from
//! `POST /api/v1/agents/{id}/realtime-sessions`, created by the site's backend). Also the
//! demo page, `GET /demo/agent-web/`, when `[agents] demo_page` is on.
//!
//! Before the upgrade, and before any provider session opens, the token is redeemed
//! (signature, expiry, agent, single use) and the agent checked (exists, `active`, `web`
//! among its channels); a refusal is an HTTP error in the API's shape, with no upgrade.
//!
//! The protocol: JSON text frames.
//! - in: `{"type":"input_audio","audio":"<base64 pcm16 16 kHz mono>"}` of any length (cut
//!   into 20 ms frames here); `{"type":"stop"}` ends the conversation (the socket closes
//!   with 1000 once it is recorded). Other messages are ignored.
//! - out: `{"type":"session.started","callId":"<conversation id>"}` once the model
//!   provider took the setup (audio sent before it is not heard by the agent);
//!   `{"type":"output_audio","audio":"<base64 pcm16 24 kHz>","encoding":"pcm16",
//!   "sampleRate":24000}`; `{"type":"transcript","role":"assistant"|"user","text":"…"}`;
//!   `{"type":"clear"}` when the caller talked over the agent (drop what is queued).
//!   When the conversation ends on the switch's side (the agent's `end_call`, a provider
//!   failure, the agent deleted) the socket closes with 1000 and a reason.
//!
//! The session runs at 24 kHz, the providers' output rate: the agent's audio reaches the
//! browser without a rate change (a 16 kHz session would band-limit the voice to 8 kHz
//! and upsample it back), and the browser's 16 kHz input is upsampled here, once, to
//! 24 kHz frames (for OpenAI, whose input is 24 kHz, that is the only conversion).
//!
//! The agent's audio is pulled from the playout at real-time speed, as a phone leg's
//! pacer does: barge-in tells the provider how much of its answer was heard from what
//! was pulled. A lead of [`LEAD`] is sent ahead so that network jitter does not starve
//! the browser's queue; on a barge-in the browser drops it (`clear`), so "heard" is
//! overstated by that much at most.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use media::resample::Resampler;
use media::stream::Track;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::AppState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use crate::agents::model::{AgentStatus, Channel, ConversationChannel, MessageRole};
use crate::agents::realtime::TokenError;
use crate::agents::runtime::{self, AgentDeps, Party, SessionNotice};
use crate::streams::{EndReason, StreamEvent, StreamHandle};

/// What the browser sends.
const INPUT_RATE: u32 = 16_000;
/// What the browser gets, and the session's rate.
const SESSION_RATE: u32 = 24_000;
/// 20 ms.
const FRAME: Duration = Duration::from_millis(20);
/// Agent audio sent ahead of real time at most (the browser's jitter margin).
pub const LEAD: Duration = Duration::from_millis(100);
/// Largest message accepted from the browser: ~24 s of input audio in base64.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// How long a session that ends waits for its conversation to be recorded.
const FINISH_WAIT: Duration = Duration::from_secs(10);
/// How long a close waits for the browser's.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The demo page, `examples/agent-web/index.html`.
const DEMO_PAGE: &str = include_str!("../../examples/agent-web/index.html");

/// Opens a browser realtime session with an active agent: a WebSocket upgrade. The
/// credential is the single-use `token` of `POST /api/v1/agents/{id}/realtime-sessions`
/// (no API key: it is meant for a browser). The messages are JSON text frames: in,
/// `{"type":"input_audio","audio":"<base64 pcm16 16 kHz mono>"}` and `{"type":"stop"}`;
/// out, `{"type":"session.started","callId":"<conversation id>"}` (once the agent
/// listens), `{"type":"output_audio","audio":"<base64 pcm16 24 kHz>","encoding":"pcm16",
/// "sampleRate":24000}`, `{"type":"transcript","role":"assistant"|"user","text":"…"}` and
/// `{"type":"clear"}` (the caller talked over the agent: drop the queued audio). The
/// socket closes with 1000 when the conversation ends.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/realtime",
    operation_id = "open_realtime_session",
    tag = "agents",
    security(("realtime_token" = [])),
    params(("id" = String, Path, description = "The agent's id")),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket session"),
        (status = 400, description = "`VALIDATION_ERROR`: not a WebSocket upgrade request", body = ErrorBody),
        (status = 401, description = "`UNAUTHORIZED`: no token, or one expired, used already, not signed by this switch or for another agent", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such agent", body = ErrorBody),
        (status = 409, description = "`AGENT_NOT_ACTIVE`: the agent is not active; `CHANNEL_NOT_ENABLED`: `web` is not among its channels", body = ErrorBody),
        (status = 500, description = "`REALTIME_NOT_CONFIGURED`: no `[agents] realtime_signing_key`; `INTERNAL_ERROR`: the store failed", body = ErrorBody),
    )
)]
pub async fn open_realtime_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = query
        .as_deref()
        .and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "a realtime session token is required (?token=…, from POST \
                 /api/v1/agents/{id}/realtime-sessions)",
            )
        })?;
    // Checked before the token is redeemed: a plain GET does not use it up.
    let upgrade = upgrade.map_err(|_| {
        ApiError::validation(
            "upgrade",
            "not a WebSocket upgrade request: open this URL with a WebSocket client",
        )
    })?;
    let redeemed = crate::agents::realtime::redeem_realtime_token(
        state.store.as_ref(),
        &state.config,
        &id,
        &token,
    )
    .await
    .map_err(|e| match e {
        TokenError::NotConfigured => ApiError::new(
            ErrorCode::RealtimeNotConfigured,
            "realtime sessions are not configured on this switch ([agents] realtime_signing_key)",
        ),
        TokenError::Store(e) => e.into(),
        e => ApiError::new(
            ErrorCode::Unauthorized,
            format!("realtime session refused: {e}"),
        ),
    })?;
    let agent = state
        .store
        .get_agent(&redeemed.tenant, &id, chrono::Utc::now())
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    if agent.status != AgentStatus::Active {
        return Err(ApiError::new(
            ErrorCode::AgentNotActive,
            format!(
                "the agent is {}: only active agents take realtime sessions",
                agent.status.as_str()
            ),
        ));
    }
    if !agent.channels.contains(&Channel::Web) {
        return Err(ApiError::new(
            ErrorCode::ChannelNotEnabled,
            "the agent does not take web sessions: add \"web\" to its channels",
        ));
    }
    let deps = state.switch.agent_deps();
    let (tenant, agent_id) = (redeemed.tenant, agent.id);
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| run(socket, deps, tenant, agent_id)))
}

/// The browser demo (`examples/agent-web/index.html`): talk to an agent from this page.
/// Served only when `[agents] demo_page` is on (it asks for an API key: a demo only).
#[utoipa::path(
    get,
    path = "/demo/agent-web/",
    operation_id = "agent_web_demo",
    tag = "agents",
    security(()),
    responses(
        (status = 200, description = "The demo page", content_type = "text/html", body = String),
        (status = 404, description = "`NOT_FOUND`: `[agents] demo_page` is off (the default)", body = ErrorBody),
    )
)]
pub async fn demo_page(State(state): State<AppState>) -> Response {
    if !state.config.agents.demo_page {
        return ApiError::not_found("route").into_response();
    }
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        DEMO_PAGE,
    )
        .into_response()
}

/// Cuts the browser's audio (any length) into 20 ms frames, upsampled to the session
/// rate.
struct Uplink {
    resampler: Resampler,
    /// Input samples short of a frame, kept for the next message.
    pending: Vec<i16>,
    frame: Vec<i16>,
    sent: u64,
    dropped: u64,
}

impl Uplink {
    fn new() -> Option<Self> {
        let resampler = Resampler::new(INPUT_RATE, SESSION_RATE).ok()?;
        let frame = vec![0; resampler.output_frame_len()];
        Some(Self {
            resampler,
            pending: Vec::new(),
            frame,
            sent: 0,
            dropped: 0,
        })
    }

    fn push(&mut self, pcm: &[u8], handle: &StreamHandle) {
        self.pending.extend(
            pcm.chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]])),
        );
        let n = self.resampler.input_frame_len();
        let mut used = 0;
        while self.pending.len() - used >= n {
            let input = &self.pending[used..used + n];
            used += n;
            match self.resampler.process(input, &mut self.frame) {
                Ok(m) if handle.send_audio(Track::Inbound, self.frame[..m].to_vec()) => {
                    self.sent += 1;
                }
                _ => self.dropped += 1,
            }
        }
        self.pending.drain(..used);
    }
}

/// Pulls the agent's audio at real-time speed (plus [`LEAD`]).
struct Downlink {
    frame: Vec<i16>,
    /// When the audio sent so far ends, played from its first frame in real time.
    sent_until: Instant,
    sent_frames: u64,
}

impl Downlink {
    /// The audio due now, as one message (none when nothing is queued).
    fn pull(&mut self, handle: &StreamHandle) -> Option<Message> {
        let now = Instant::now();
        let mut bytes = Vec::new();
        while self.sent_until < now + LEAD {
            if handle.playout().fill(&mut self.frame) == 0 {
                break;
            }
            bytes.extend(self.frame.iter().flat_map(|s| s.to_le_bytes()));
            self.sent_until = self.sent_until.max(now) + FRAME;
            self.sent_frames += 1;
        }
        (!bytes.is_empty()).then(|| {
            text(json!({
                "type": "output_audio",
                "audio": BASE64.encode(&bytes),
                "encoding": "pcm16",
                "sampleRate": SESSION_RATE,
            }))
        })
    }
}

fn text(value: Value) -> Message {
    Message::Text(value.to_string().into())
}

fn notice_message(notice: SessionNotice) -> Option<Message> {
    match notice {
        SessionNotice::Conversation(_) => None,
        SessionNotice::Transcript { role, text: line } => {
            let role = match role {
                MessageRole::User => "user",
                MessageRole::Assistant => "assistant",
                _ => return None,
            };
            Some(text(
                json!({"type": "transcript", "role": role, "text": line}),
            ))
        }
        SessionNotice::Cleared { .. } => Some(text(json!({"type": "clear"}))),
    }
}

/// Why the socket closes, for the close frame (at most 123 bytes).
fn close_reason(reason: &EndReason) -> &'static str {
    match reason {
        EndReason::ServerClosed => "the agent ended the conversation",
        EndReason::Stopped => "the conversation was stopped",
        EndReason::GaveUp { .. } => "the agent's model provider failed",
        EndReason::FailedToConnect { .. } => "the agent could not be reached",
        EndReason::Invalid(_) => "the agent is not available",
    }
}

/// Closes with `code` and waits (briefly) for the browser's close in return, so that the
/// TCP connection does not end before the browser has read the close frame.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// How the loop ended.
enum Ending {
    /// The browser asked (`stop`): close once the conversation is recorded.
    Stop,
    /// The browser went away.
    Gone,
    /// The conversation ended on the switch's side.
    Ended(EndReason),
}

/// One browser session, from the upgrade to the close.
async fn run(mut socket: WebSocket, deps: AgentDeps, tenant: String, agent_id: String) {
    let (notice_tx, mut notices) = mpsc::channel(64);
    let party = Party {
        tenant,
        agent_id: agent_id.clone(),
        call_id: None,
        from: None,
        to: None,
        contact: "web".to_owned(),
        channel: ConversationChannel::Web,
        handoff: None,
        notices: Some(notice_tx),
    };
    let (Some(mut uplink), Ok(stream)) = (
        Uplink::new(),
        runtime::spawn(deps, party, SESSION_RATE, None),
    ) else {
        close(&mut socket, 1011, "the agent session could not start").await;
        return;
    };
    let crate::streams::Stream {
        handle,
        mut events,
        task,
    } = stream;
    let mut downlink = Downlink {
        frame: vec![0; handle.call_frame_len()],
        sent_until: Instant::now(),
        sent_frames: 0,
    };
    let audio_ready = handle.playout().audio_ready();
    let mut pacer = tokio::time::interval(FRAME);
    pacer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conversation_id = String::new();
    let mut started = false;
    // Notices before `session.started`, and their messages.
    let mut early: Vec<SessionNotice> = Vec::new();
    let mut held: Vec<Message> = Vec::new();
    let mut ignored = 0u64;
    tracing::info!(agent = %agent_id, "browser realtime session opened");

    let ending = loop {
        let mut outgoing: Vec<Message> = Vec::new();
        tokio::select! {
            message = socket.recv() => match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break Ending::Gone,
                Some(Ok(Message::Text(t))) => {
                    let parsed: Option<Value> = serde_json::from_str(t.as_str()).ok();
                    match parsed.as_ref().and_then(|v| v["type"].as_str()) {
                        Some("input_audio") => {
                            match parsed.as_ref().and_then(|v| v["audio"].as_str()).map(|a| BASE64.decode(a)) {
                                Some(Ok(pcm)) => uplink.push(&pcm, &handle),
                                _ => ignored += 1,
                            }
                        }
                        Some("stop") => break Ending::Stop,
                        _ => ignored += 1,
                    }
                }
                // Pings are answered by the socket itself; binary frames are not the
                // protocol.
                Some(Ok(_)) => {}
            },
            event = events.recv() => match event {
                Some(StreamEvent::Connected) if !started => {
                    // The conversation's id was reported before the provider was asked
                    // to connect: it is in the queue already.
                    while let Ok(notice) = notices.try_recv() {
                        early.push(notice);
                    }
                    for notice in early.drain(..) {
                        match notice {
                            SessionNotice::Conversation(id) => conversation_id = id,
                            other => held.extend(notice_message(other)),
                        }
                    }
                    started = true;
                    outgoing.push(text(json!({"type": "session.started", "callId": conversation_id})));
                    outgoing.append(&mut held);
                }
                Some(StreamEvent::Ended(reason)) => break Ending::Ended(reason),
                Some(_) => {}
                None => break Ending::Ended(EndReason::Stopped),
            },
            Some(notice) = notices.recv() => match notice {
                // Nothing goes out before `session.started`.
                notice if !started => early.push(notice),
                SessionNotice::Conversation(id) => conversation_id = id,
                SessionNotice::Cleared { .. } => {
                    // The browser drops its queue too: the lead starts over.
                    downlink.sent_until = Instant::now();
                    outgoing.extend(notice_message(notice));
                }
                other => outgoing.extend(notice_message(other)),
            },
            // The agent's audio waits for `session.started` in the playout.
            _ = pacer.tick(), if started => outgoing.extend(downlink.pull(&handle)),
            () = audio_ready.notified(), if started => outgoing.extend(downlink.pull(&handle)),
        }
        let mut gone = false;
        for message in outgoing {
            if socket.send(message).await.is_err() {
                gone = true;
                break;
            }
        }
        if gone {
            break Ending::Gone;
        }
    };

    handle.stop();
    // The conversation is recorded when the task ends: wait for it, so that a client
    // that sees the close can read the conversation as ended.
    let reason = match tokio::time::timeout(FINISH_WAIT, task).await {
        Ok(Ok(reason)) => reason,
        _ => EndReason::Stopped,
    };
    match ending {
        Ending::Stop => close(&mut socket, 1000, "stopped").await,
        Ending::Ended(reason) => close(&mut socket, 1000, close_reason(&reason)).await,
        // Sends the answer to the browser's close, if that is how it went.
        Ending::Gone => {
            let _ = futures_util::SinkExt::close(&mut socket).await;
        }
    }
    tracing::info!(
        agent = %agent_id,
        conversation = %conversation_id,
        ?reason,
        frames_in = uplink.sent,
        frames_dropped = uplink.dropped,
        frames_out = downlink.sent_frames,
        ignored,
        "browser realtime session closed"
    );
}
