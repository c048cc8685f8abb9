//! An agent audio stream on a call: one more audio end on the media engine. The call's
//! leg feeds decoded 20 ms frames to the stream driver (`crate::streams`), and, when the
//! stream is bidirectional, plays what the driver's playout queue gives it instead of
//! silence. The driver's events come back to the call task as [`TaskInput::Stream`].

use std::collections::BTreeMap;
use std::time::Duration;

use media::stream::{StreamFormat, Track};
use tokio::sync::mpsc;

use super::Shared;
use super::task::TaskInput;
use crate::model::CallRecord;
use crate::streams::{EndReason, PlayoutTap, StreamConfig, StreamEvent, StreamHandle};

/// What the API (or the dialplan) asks for: where to stream and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSpec {
    /// `ws://` or `wss://`, already checked against the SSRF guard.
    pub url: String,
    pub format: StreamFormat,
    /// `customParameters` of `start`.
    pub parameters: BTreeMap<String, String>,
    /// The server's audio is played to the call (else it only listens).
    pub bidirectional: bool,
    /// A normal close by the server (1000) hangs the call up (else the call goes on).
    pub hangup_on_close: bool,
    /// The far end is this AI agent's session (`crate::agents::runtime`) instead of a
    /// WebSocket server; `url` is then `agent:<id>`.
    pub agent: Option<AgentTarget>,
}

/// An agent a call talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentTarget {
    pub agent_id: String,
    /// Where `transfer_call` goes for this call's number (before the agent's own).
    pub handoff: Option<String>,
}

impl StreamSpec {
    /// The call talks to `agent_id` (its end-of-conversation hangs up, its failure too).
    pub fn agent(agent_id: &str, handoff: Option<String>) -> Self {
        StreamSpec {
            url: format!("agent:{agent_id}"),
            format: crate::agents::runtime::playout_format(),
            parameters: BTreeMap::new(),
            bidirectional: true,
            hangup_on_close: true,
            agent: Some(AgentTarget {
                agent_id: agent_id.to_owned(),
                handoff,
            }),
        }
    }
}

/// Transfers an agent's caller through the call task (SIP REFER, else a bridged leg).
struct TaskControl(mpsc::Sender<TaskInput>);

impl crate::agents::runtime::CallControl for TaskControl {
    fn transfer(
        &self,
        to: String,
    ) -> futures_util::future::BoxFuture<'static, Result<crate::agents::runtime::Transferred, String>>
    {
        let tx = self.0.clone();
        Box::pin(async move {
            let (reply, rx) = tokio::sync::oneshot::channel();
            tx.send(TaskInput::AgentTransfer { target: to, reply })
                .await
                .map_err(|_| "the call has ended".to_owned())?;
            match rx.await {
                Ok(result) => result,
                Err(_) => Err("the call has ended".to_owned()),
            }
        })
    }
}

/// The spec of a dialplan `stream` action (its URL goes through the SSRF guard when the
/// socket connects).
pub(crate) fn spec_of(action: &dialplan::plan::StreamAction) -> Result<StreamSpec, &'static str> {
    let format = StreamFormat::from_mime(
        action.encoding.as_deref().unwrap_or("audio/x-mulaw"),
        action.sample_rate.unwrap_or(8000),
    )
    .map_err(|_| "unsupported stream encoding or sample rate")?;
    Ok(StreamSpec {
        url: action.url.clone(),
        format,
        parameters: action.parameters.clone(),
        bidirectional: action.bidirectional,
        hangup_on_close: true,
        agent: None,
    })
}

/// A stream running on a call.
#[derive(Debug)]
pub(crate) struct AttachedStream {
    /// `streamSid`.
    pub id: String,
    pub handle: StreamHandle,
    pub spec: StreamSpec,
}

/// Plays the stream's downlink on a leg.
#[derive(Debug)]
pub struct PlayoutSource {
    tap: PlayoutTap,
    /// The last frame had no audio.
    idle: bool,
    /// Played, looped, while the socket is being reconnected (at the leg's rate), and
    /// where in it.
    hold: Option<(media::source::Clip, usize)>,
}

impl PlayoutSource {
    pub fn new(tap: PlayoutTap) -> Self {
        Self {
            tap,
            idle: true,
            hold: None,
        }
    }

    /// Loops `clip` (at the leg's PCM rate) while the stream reconnects.
    pub fn with_hold(mut self, clip: Option<media::source::Clip>) -> Self {
        self.hold = clip.filter(|c| !c.samples.is_empty()).map(|c| (c, 0));
        self
    }
}

impl media::source::AudioSource for PlayoutSource {
    fn fill(&mut self, _rate: u32, out: &mut [i16]) -> bool {
        if let Some((clip, pos)) = self.hold.as_mut()
            && self.tap.is_reconnecting()
        {
            for s in out.iter_mut() {
                *s = clip.samples.get(*pos).copied().unwrap_or(0);
                *pos = (*pos + 1) % clip.samples.len();
            }
            self.idle = false;
            return true;
        }
        if let Some((_, pos)) = self.hold.as_mut() {
            // The next outage starts the sound from its beginning.
            *pos = 0;
        }
        self.idle = self.tap.fill(out) == 0;
        true
    }

    fn idle(&self) -> bool {
        self.idle
    }

    fn wake(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        Some(self.tap.audio_ready())
    }
}

/// Hands a leg's decoded frames to the stream (`inbound`: what the far end says; on a
/// bridge, channel 1 is the callee, `outbound`).
#[derive(Debug)]
pub struct StreamSink {
    handle: StreamHandle,
    tracks: [Track; 2],
}

impl StreamSink {
    pub fn new(handle: StreamHandle) -> Self {
        Self {
            handle,
            tracks: [Track::Inbound, Track::Outbound],
        }
    }
}

impl media::net::listen::FrameSink for StreamSink {
    fn frame(&mut self, channel: usize, pcm: &[i16]) -> bool {
        // A full queue drops the frame (counted by the driver): never block the media.
        let track = self.tracks.get(channel).copied().unwrap_or(Track::Inbound);
        self.handle.send_audio(track, pcm.to_vec());
        true
    }
}

/// The driver's settings for `spec` on `record`'s call, its frames at `call_rate`.
fn config_for(
    shared: &Shared,
    record: &CallRecord,
    spec: &StreamSpec,
    call_rate: u32,
    tracks: Vec<Track>,
) -> StreamConfig {
    let mut config = StreamConfig::new(spec.url.clone(), record.id.clone(), record.tenant.clone());
    config.format = spec.format;
    config.call_rate = call_rate;
    config.bidirectional = spec.bidirectional;
    config.grace = Duration::from_secs(shared.config.streams.grace_s);
    config.start.custom_parameters = spec.parameters.clone();
    config.start.from = Some(record.from.clone());
    config.start.to = Some(record.to.clone());
    config.start.tracks = tracks;
    config
}

/// Reports a stream event of `stream` on `record`'s call (its callback, if any) and
/// says what it does to the call: `Some(true)` hang up as the agent ended it,
/// `Some(false)` as it failed.
pub(crate) async fn report(
    shared: &Shared,
    record: &std::sync::Arc<CallRecord>,
    stream: &AttachedStream,
    event: &StreamEvent,
) -> Option<bool> {
    let (callback, hangup) = event_of(stream, event);
    if let Some((kind, extra)) = callback {
        tracing::info!(stream = %stream.id, event = kind, "agent stream");
        super::task::record_event(shared, record, kind, extra).await;
    }
    hangup
}

/// Starts `spec` on an answered call whose leg runs `params`, fed from `endpoint`.
pub(crate) fn start_on_endpoint(
    shared: &Shared,
    record: &CallRecord,
    spec: StreamSpec,
    endpoint: &mut media::net::RtpEndpoint,
    params: &media::sdp::StreamParams,
    tx: mpsc::Sender<TaskInput>,
) -> Result<AttachedStream, String> {
    let call_rate = params.codec.audio_codec().sample_rate();
    let (id, stream) = match &spec.agent {
        Some(target) => {
            let inbound = record.direction == "inbound";
            let party = crate::agents::runtime::Party {
                tenant: record.tenant.clone(),
                agent_id: target.agent_id.clone(),
                call_id: Some(record.id.clone()),
                from: Some(record.from.clone()),
                to: Some(record.to.clone()),
                contact: if inbound {
                    record.from.clone()
                } else {
                    record.to.clone()
                },
                channel: crate::agents::model::ConversationChannel::Voice,
                handoff: target.handoff.clone(),
                notices: None,
            };
            let control: std::sync::Arc<dyn crate::agents::runtime::CallControl> =
                std::sync::Arc::new(TaskControl(tx.clone()));
            let stream = crate::agents::runtime::spawn(
                shared.agents.clone(),
                party,
                call_rate,
                Some(control),
            )
            .map_err(|e| format!("{e:?}"))?;
            (format!("MZ{}", ulid::Ulid::new()), stream)
        }
        None => {
            let config = config_for(shared, record, &spec, call_rate, vec![Track::Inbound]);
            let id = config.stream_sid.clone();
            let stream = crate::streams::spawn(config, shared.stream_connector.clone())
                .map_err(|e| format!("{e:?}"))?;
            (id, stream)
        }
    };
    if spec.bidirectional {
        let hold = shared
            .hold_sound
            .as_ref()
            .and_then(|clip| clip.resampled(call_rate).ok());
        endpoint.play(Box::new(
            PlayoutSource::new(stream.handle.playout().clone()).with_hold(hold),
        ));
    }
    endpoint
        .listen(
            call_rate,
            Box::new(StreamSink {
                handle: stream.handle.clone(),
                tracks: [Track::Inbound, Track::Outbound],
            }),
        )
        .map_err(|e| e.to_string())?;
    forward_events(shared, id.clone(), stream.handle.clone(), stream.events, tx);
    Ok(AttachedStream {
        id,
        handle: stream.handle,
        spec,
    })
}

/// Starts a listen-only `spec` on a bridged (transit) call: both parties' audio, the
/// caller as the `inbound` track and the callee as `outbound`, nothing played back.
pub(crate) fn start_on_bridge(
    shared: &Shared,
    record: &CallRecord,
    mut spec: StreamSpec,
    bridge: &mut media::net::bridge::Bridge,
    tx: mpsc::Sender<TaskInput>,
) -> Result<AttachedStream, String> {
    spec.bidirectional = false;
    // The frames come at the stream's own rate: no second resampling in the driver.
    let call_rate = spec.format.sample_rate();
    let tracks = vec![Track::Inbound, Track::Outbound];
    let config = config_for(shared, record, &spec, call_rate, tracks);
    let id = config.stream_sid.clone();
    let stream = crate::streams::spawn(config, shared.stream_connector.clone())
        .map_err(|e| format!("{e:?}"))?;
    bridge
        .listen(
            call_rate,
            Box::new(StreamSink {
                handle: stream.handle.clone(),
                tracks: [Track::Inbound, Track::Outbound],
            }),
        )
        .map_err(|e| e.to_string())?;
    forward_events(shared, id.clone(), stream.handle.clone(), stream.events, tx);
    Ok(AttachedStream {
        id,
        handle: stream.handle,
        spec,
    })
}

/// The driver's events, to the call task; the stream's counters to `/metrics` at its end
/// (whether or not the call is still there to hear of it).
fn forward_events(
    shared: &Shared,
    id: String,
    handle: StreamHandle,
    mut events: mpsc::Receiver<StreamEvent>,
    tx: mpsc::Sender<TaskInput>,
) {
    let metrics = shared.metrics.clone();
    metrics.stream_started();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            let end = matches!(event, StreamEvent::Ended(_));
            if let StreamEvent::Ended(reason) = &event {
                let how = match reason {
                    EndReason::ServerClosed => "server_closed",
                    EndReason::Stopped => "stopped",
                    _ => "failed",
                };
                metrics.stream_ended(how, &handle.stats());
            }
            if tx
                .send(TaskInput::Stream {
                    stream_id: id.clone(),
                    event,
                })
                .await
                .is_err()
                || end
            {
                return;
            }
        }
    });
}

/// The callback a stream event becomes (type, extra fields), and what it does to the
/// call: `Some(true)` hang up as the agent ended it, `Some(false)` as it failed.
fn event_of(
    stream: &AttachedStream,
    event: &StreamEvent,
) -> (Option<(&'static str, serde_json::Value)>, Option<bool>) {
    let base = |extra: serde_json::Value| {
        let mut v = serde_json::json!({"stream_id": stream.id, "url": stream.spec.url});
        if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        v
    };
    match event {
        StreamEvent::Connected => (
            Some(("call.stream.started", base(serde_json::json!({})))),
            None,
        ),
        StreamEvent::Reconnecting { reason } => {
            tracing::warn!(stream = %stream.id, reason, "agent stream dropped: reconnecting");
            (None, None)
        }
        StreamEvent::Resumed { attempts } => {
            tracing::info!(stream = %stream.id, attempts, "agent stream resumed");
            (None, None)
        }
        StreamEvent::Ended(EndReason::ServerClosed) => (
            Some((
                "call.stream.stopped",
                base(serde_json::json!({"reason": "server_closed"})),
            )),
            stream.spec.hangup_on_close.then_some(true),
        ),
        StreamEvent::Ended(EndReason::Stopped) => (
            Some((
                "call.stream.stopped",
                base(serde_json::json!({"reason": "stopped"})),
            )),
            None,
        ),
        StreamEvent::Ended(
            EndReason::GaveUp { after, reason } | EndReason::FailedToConnect { after, reason },
        ) => (
            Some((
                "call.stream.failed",
                base(serde_json::json!({
                    "reason": reason,
                    "after_ms": after.as_millis() as u64,
                })),
            )),
            // A call the agent talks on cannot go on without it; a fork can.
            stream.spec.bidirectional.then_some(false),
        ),
        StreamEvent::Ended(EndReason::Invalid(why)) => (
            Some((
                "call.stream.failed",
                base(serde_json::json!({"reason": why})),
            )),
            stream.spec.bidirectional.then_some(false),
        ),
    }
}
