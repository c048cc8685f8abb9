//! `CallTask`: the tokio task that owns one `Call`, its SIP leg and its RTP endpoint.
//!
//! The run loop has str0m's shape: feed an input (a SIP event, an API command, or a timer
//! firing), drain the machine's outputs into I/O, then wait for whichever comes first of the
//! next input and `poll_timeout`.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::Shared;
use super::call::{Call, CallInput, CallOutput, StatusChange};
use super::status::q850_for_sip;
use super::trunk::Trunk;
use crate::model::{CallRecord, CallStatus, NewEvent};

#[derive(Debug)]
pub enum TaskInput {
    Sip(sip::ua::UaEvent),
    /// Hang up; the sender gets the call once it has ended.
    Hangup(oneshot::Sender<CallRecord>),
    /// Hang up because the switch is stopping (`end_reason: switch_shutdown`).
    Shutdown(oneshot::Sender<CallRecord>),
    /// Blind transfer of the far end to `target` (an E.164 number or a URI) by REFER; the
    /// sender learns whether the REFER could be sent (the call must be answered). `leg`
    /// picks the party of a transit call (calls with one far end ignore it).
    Transfer {
        target: String,
        leg: Option<super::transfer::TransferLeg>,
        reply: oneshot::Sender<Result<(), &'static str>>,
    },
    /// An AI agent's `transfer_call`: a blind transfer by REFER whose reply waits for the
    /// far end's answer to the REFER; a refused REFER falls back to dialling `target` and
    /// bridging the caller to it, and the reply waits for that answer.
    AgentTransfer {
        target: String,
        reply: oneshot::Sender<Result<crate::agents::runtime::Transferred, String>>,
    },
    /// Start an agent stream on the live call; the reply is its `streamSid`, or why not.
    StartStream {
        spec: super::agent_stream::StreamSpec,
        reply: oneshot::Sender<Result<String, &'static str>>,
    },
    /// Stop the call's stream `stream_id`; the reply says whether it was running.
    StopStream {
        stream_id: String,
        reply: oneshot::Sender<bool>,
    },
    /// What the call's agent stream reports.
    Stream {
        stream_id: String,
        event: crate::streams::StreamEvent,
    },
}

#[derive(Debug)]
pub(crate) struct CallTask {
    shared: Shared,
    /// Shared with the store while a write of it is in flight, else ours alone.
    record: Arc<CallRecord>,
    trunk: Trunk,
    leg: sip::ua::LegRef,
    endpoint: Option<media::net::RtpEndpoint>,
    offer: Option<media::sdp::OfferParams>,
    call: Call,
    waiters: Vec<oneshot::Sender<CallRecord>>,
    /// When to look for RTP next (answered calls with a media timeout only).
    media_check: Option<Instant>,
    /// Answer instant: the media timeout counts from here until a first packet arrives.
    answered: Option<Instant>,
    /// Digits the far end sends (RFC 4733), reported as `call.dtmf` events.
    dtmf: Option<mpsc::Receiver<media::dtmf::DtmfEvent>>,
    /// Inbound calls: the caller's SDP offer, answered by this task.
    inbound_offer: Option<sip::ua::Body>,
    /// The place this call holds on its trunk (freed when the task ends).
    _slot: Option<super::trunk::TrunkSlot>,
    /// The far end's dialog (inbound calls: the one our 200 creates), stored with
    /// `in_progress` so a crash still ends the call with a BYE; kept for a hand-off,
    /// whose row then names both legs.
    caller_dialog: Option<sip::ua::DialogSnapshot>,
    /// Where the far end's SIP comes from (the caller's source, the trunk's address): its
    /// RTP may come from there as well as from its SDP address; nobody else's latches.
    peer_ip: Option<std::net::IpAddr>,
    /// An agent stream to start once the call is answered.
    stream_spec: Option<super::agent_stream::StreamSpec>,
    /// The agent stream running on the call.
    stream: Option<super::agent_stream::AttachedStream>,
    /// An agent's transfer waiting for the far end's answer to its REFER: the number, and
    /// where the outcome goes.
    agent_transfer: Option<(String, TransferReply)>,
    /// The leg an agent's transfer dialled when the REFER was refused (see `handoff`).
    handoff: Option<super::handoff::Handoff>,
    /// The agent stream a hand-off took the caller from: its session ends on its own once
    /// the model has the result; stopped with the call in case it has not.
    retired_stream: Option<super::agent_stream::AttachedStream>,
}

pub(crate) type TransferReply =
    oneshot::Sender<Result<crate::agents::runtime::Transferred, String>>;

impl CallTask {
    pub(crate) fn new(
        shared: Shared,
        record: Arc<CallRecord>,
        trunk: Trunk,
        leg: sip::ua::LegRef,
        mut endpoint: media::net::RtpEndpoint,
        inbound_offer: Option<sip::ua::Body>,
        slot: Option<super::trunk::TrunkSlot>,
    ) -> Self {
        let dtmf = endpoint.take_dtmf_events();
        let call = Call::new(
            std::time::Duration::from_secs(record.ring_timeout.max(1) as u64),
            std::time::Duration::from_secs(record.max_duration.max(1) as u64),
        );
        Self {
            shared,
            record,
            trunk,
            leg,
            endpoint: Some(endpoint),
            offer: None,
            call,
            waiters: Vec::new(),
            media_check: None,
            answered: None,
            dtmf,
            inbound_offer,
            _slot: slot,
            caller_dialog: None,
            peer_ip: None,
            stream_spec: None,
            stream: None,
            agent_transfer: None,
            handoff: None,
            retired_stream: None,
        }
    }

    /// Streams the call's audio to an agent once answered.
    pub(crate) fn with_stream(mut self, spec: Option<super::agent_stream::StreamSpec>) -> Self {
        self.stream_spec = spec;
        self
    }

    /// Inbound calls: the caller's dialog once we answer (see `DialogSnapshot::incoming`).
    pub(crate) fn with_caller_dialog(mut self, dialog: Option<sip::ua::DialogSnapshot>) -> Self {
        self.caller_dialog = dialog;
        self
    }

    /// The caller's signalling source (inbound calls).
    pub(crate) fn with_peer_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.peer_ip = Some(ip);
        self
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<TaskInput>) {
        let span = tracing::info_span!("call", call_id = %self.record.id);
        async move {
            let start = if self.inbound_offer.is_some() {
                CallInput::StartInbound
            } else {
                CallInput::Start
            };
            self.call.handle(Instant::now(), start);
            self.drain().await;
            while !self.call.is_done() {
                let deadline = self.call.poll_timeout();
                tokio::select! {
                    input = rx.recv() => match input {
                        Some(input) => self.on_input(input).await,
                        None => break,
                    },
                    () = sleep_until(deadline) => self.call.handle_timeout(Instant::now()),
                    () = sleep_until(self.media_check) => self.check_media(Instant::now()),
                    () = sleep_until(self.handoff.as_ref().and_then(|h| h.poll_timeout())) => {
                        if let Some(h) = self.handoff.as_mut() {
                            h.handle_timeout(&self.shared, Instant::now());
                        }
                    }
                    Some(digit) = next_from(&mut self.dtmf) => self.on_dtmf(digit).await,
                }
                self.drain().await;
            }
            for stream in [self.stream.take(), self.retired_stream.take()]
                .into_iter()
                .flatten()
            {
                stream.handle.stop();
            }
            if let Some(mut handoff) = self.handoff.take() {
                handoff.hang_up(&self.shared);
                handoff.close(&self.shared).await;
            }
            self.shared.legs.remove(&self.leg);
            self.shared.calls.remove(&self.record.id);
            for w in self.waiters.drain(..) {
                let _ = w.send(CallRecord::clone(&self.record));
            }
            tracing::info!(status = self.record.status.as_str(), "call ended");
        }
        .instrument(span)
        .await;
    }

    async fn on_input(&mut self, input: TaskInput) {
        use sip::ua::UaEvent;
        let now = Instant::now();
        let input = match input {
            TaskInput::Hangup(reply) => {
                self.waiters.push(reply);
                CallInput::Hangup
            }
            TaskInput::Shutdown(reply) => {
                self.waiters.push(reply);
                CallInput::Shutdown
            }
            TaskInput::Transfer { target, reply, .. } => {
                let result = if self.answered.is_some() && !self.call.is_done() {
                    // An E.164 number as a SIP URI on our trunk: carriers cannot dial tel:.
                    let target = super::transfer::refer_uri(&target, &self.trunk);
                    tracing::info!(%target, "transfer: REFER sent");
                    let _ = self.shared.ua.send(sip::ua::UaCommand::Refer {
                        leg: self.leg,
                        refer_to: format!("<{target}>"),
                    });
                    Ok(())
                } else {
                    Err("the call is not answered")
                };
                let _ = reply.send(result);
                return;
            }
            TaskInput::AgentTransfer { target, reply } => {
                if self.answered.is_none() || self.call.is_done() {
                    let _ = reply.send(Err("the call is not answered".to_owned()));
                } else if self.agent_transfer.is_some() || self.handoff.is_some() {
                    let _ = reply.send(Err("a transfer is already under way".to_owned()));
                } else {
                    let uri = super::transfer::refer_uri(&target, &self.trunk);
                    tracing::info!(target = %uri, "agent transfer: REFER sent");
                    let _ = self.shared.ua.send(sip::ua::UaCommand::Refer {
                        leg: self.leg,
                        refer_to: format!("<{uri}>"),
                    });
                    self.agent_transfer = Some((target, reply));
                }
                return;
            }
            TaskInput::StartStream { spec, reply } => {
                let result = match (
                    &self.stream,
                    self.answered,
                    self.endpoint.as_ref().and_then(|e| e.params()),
                ) {
                    (Some(_), _, _) => Err("a stream already runs on this call"),
                    (None, Some(_), Some(params)) if !self.call.is_done() => {
                        self.stream_spec = Some(spec);
                        self.start_stream(&params);
                        self.stream
                            .as_ref()
                            .map(|s| s.id.clone())
                            .ok_or("the stream could not start")
                    }
                    _ => Err("the call is not answered"),
                };
                let _ = reply.send(result);
                return;
            }
            TaskInput::StopStream { stream_id, reply } => {
                let running = self.stream.as_ref().is_some_and(|s| s.id == stream_id);
                if let Some(stream) = self.stream.as_ref().filter(|_| running) {
                    // The driver sends `stop`; its `Ended(Stopped)` reports it.
                    stream.handle.stop();
                    if let Some(endpoint) = self.endpoint.as_mut() {
                        endpoint.stop_listening();
                        endpoint.stop_playing();
                    }
                }
                let _ = reply.send(running);
                return;
            }
            TaskInput::Stream { stream_id, event } => {
                let Some(stream) = self.stream.as_ref().filter(|s| s.id == stream_id) else {
                    return;
                };
                let hangup =
                    super::agent_stream::report(&self.shared, &self.record, stream, &event).await;
                if matches!(event, crate::streams::StreamEvent::Ended(_)) {
                    self.stream = None;
                }
                match hangup {
                    Some(true) => CallInput::StreamEnded,
                    Some(false) => CallInput::StreamFailed,
                    None => return,
                }
            }
            TaskInput::Sip(ev)
                if self
                    .handoff
                    .as_ref()
                    .is_some_and(|h| ev.leg() == Some(h.leg)) =>
            {
                self.on_handoff_event(ev).await;
                return;
            }
            TaskInput::Sip(ev) => match ev {
                UaEvent::ReferResult { code, .. } => {
                    if code >= 300 {
                        tracing::warn!(code, "transfer refused by the far end");
                    }
                    match self.agent_transfer.take() {
                        Some((_, reply)) if code < 300 => {
                            self.transfer_event("accepted", code, true).await;
                            let _ = reply.send(Ok(crate::agents::runtime::Transferred::Referred));
                        }
                        Some((number, reply)) => {
                            self.transfer_event("refer_refused", code, true).await;
                            self.dial_handoff(&number, code, reply).await;
                        }
                        None => self.transfer_event("accepted", code, code < 300).await,
                    }
                    return;
                }
                UaEvent::ReferNotify {
                    status_code,
                    terminated,
                    ..
                } => {
                    let state = match status_code {
                        100..=199 => "trying",
                        200..=299 => "succeeded",
                        _ => "failed",
                    };
                    self.transfer_event(state, status_code, true).await;
                    if terminated && (200..300).contains(&status_code) {
                        CallInput::Transferred
                    } else {
                        return;
                    }
                }
                UaEvent::Progress { code, .. } => CallInput::Progress { code },
                UaEvent::DialogEstablished { snapshot, .. } => {
                    // Written with the in_progress status that follows at once.
                    Arc::make_mut(&mut self.record).sip_dialog = super::dialog::to_json(&snapshot);
                    self.caller_dialog = Some(*snapshot);
                    return;
                }
                UaEvent::Answered { body, .. } => {
                    self.connect_media(body.as_ref());
                    self.answered = Some(now);
                    self.media_check = self.media_timeout().map(|t| now + t);
                    CallInput::Answered
                }
                UaEvent::Failed { code, reason, .. } => CallInput::Failed { code, reason },
                UaEvent::Cancelled { .. } => CallInput::Cancelled,
                // The user agent's Timer H: our 2xx to the caller was never ACKed.
                UaEvent::Terminated {
                    by_remote: false,
                    code: Some(408),
                    ..
                } if self.inbound_offer.is_some() => CallInput::AckTimeout,
                UaEvent::Terminated { by_remote, .. } => CallInput::Terminated { by_remote },
                UaEvent::SessionExpired { .. } => CallInput::SessionExpired,
                UaEvent::Refer { leg, id, .. } => {
                    // Calls the switch terminates itself have no second party to hand over.
                    let _ = self.shared.ua.send(sip::ua::UaCommand::ReferResponse {
                        leg,
                        id,
                        code: 603,
                    });
                    return;
                }
                UaEvent::Reoffer { id, body, .. } => {
                    self.answer_reoffer(id, body.as_ref());
                    return;
                }
                _ => return,
            },
        };
        self.call.handle(now, input);
    }

    /// Progress of a transfer by REFER as a `call.transfer` event.
    async fn transfer_event(&self, state: &str, sip_code: u16, ok: bool) {
        let state = if ok { state } else { "failed" };
        self.transfer_event_by(state, sip_code, "refer").await;
    }

    /// A `call.transfer` event: `method` is `refer` (the far end was asked to call) or
    /// `dial` (the switch called the target and bridged it).
    async fn transfer_event_by(&self, state: &str, sip_code: u16, method: &str) {
        record_event(
            &self.shared,
            &self.record,
            "call.transfer",
            serde_json::json!({"transfer_state": state, "sip_code": sip_code, "method": method}),
        )
        .await;
    }

    /// The agent's REFER was refused (`refused`): dial `number` and bridge the caller to
    /// it once it answers (the agent hears the outcome then).
    async fn dial_handoff(&mut self, number: &str, refused: u16, reply: TransferReply) {
        // The hand-off presents the person being transferred as the caller.
        let caller_id = if self.inbound_offer.is_some() {
            self.record.from.clone()
        } else {
            self.record.to.clone()
        };
        match super::handoff::Handoff::dial(
            &self.shared,
            &self.record,
            &self.trunk,
            number,
            &caller_id,
            reply,
        )
        .await
        {
            Ok(handoff) => self.handoff = Some(handoff),
            Err((reply, why)) => {
                tracing::warn!(%why, "hand-off: cannot dial the target");
                let _ = reply.send(Err(format!(
                    "the far end refused the transfer ({refused}) and the switch cannot dial it: {why}"
                )));
                self.transfer_event_by("failed", 503, "dial").await;
            }
        }
    }

    /// An event of the hand-off leg: bridge it once answered, give it up if it fails, end
    /// the call when the person it reached hangs up.
    async fn on_handoff_event(&mut self, ev: sip::ua::UaEvent) {
        use super::handoff::HandoffOutcome;
        let Some(handoff) = self.handoff.as_mut() else {
            return;
        };
        match handoff.on_event(&self.shared, ev) {
            HandoffOutcome::Nothing => {}
            HandoffOutcome::Answered => self.bridge_handoff().await,
            HandoffOutcome::Failed { code } => {
                if let Some(mut handoff) = self.handoff.take() {
                    tracing::warn!(code, target = %handoff.number, "hand-off target did not answer; the agent goes on");
                    handoff.reply(Err(format!(
                        "the far end refused the transfer and {} did not answer ({code})",
                        handoff.number
                    )));
                    handoff.close(&self.shared).await;
                }
                self.transfer_event_by("failed", code, "dial").await;
            }
            HandoffOutcome::Ended => {
                tracing::info!("the hand-off target hung up");
                self.call.handle(Instant::now(), CallInput::HandoffBye);
            }
        }
    }

    /// The hand-off target answered: the agent steps out and the caller hears the target.
    async fn bridge_handoff(&mut self) {
        let (Some(handoff), Some(endpoint)) = (self.handoff.as_mut(), self.endpoint.as_mut())
        else {
            return;
        };
        // The agent's audio paths make way for the bridge's.
        endpoint.stop_listening();
        endpoint.stop_playing();
        match handoff.bridge(endpoint) {
            Ok(()) => {
                handoff.reply(Ok(crate::agents::runtime::Transferred::Bridged));
                // Its end must not end the call: it is no longer the call's stream.
                self.retired_stream = self.stream.take();
                let number = handoff.number.clone();
                let dialogs = super::handoff::dialogs_json(
                    self.caller_dialog.as_ref(),
                    handoff.dialog.as_ref(),
                );
                super::handoff::mark_transferred(&mut self.record, &number);
                Arc::make_mut(&mut self.record).sip_dialog = dialogs;
                tracing::info!(target = %number, "hand-off done: the caller is bridged");
                // Written with the event: a crash from here on BYEs both parties.
                self.transfer_event_by("succeeded", 200, "dial").await;
            }
            Err(why) => {
                tracing::warn!(%why, "hand-off: cannot bridge; hanging the target up");
                handoff.reply(Err(format!("cannot bridge the caller: {why}")));
                handoff.hang_up(&self.shared);
                if let Some(handoff) = self.handoff.take() {
                    handoff.close(&self.shared).await;
                }
                self.call.handle(Instant::now(), CallInput::StreamFailed);
            }
        }
    }

    /// A digit is a fact about the call, not a status: an outbox event of its own.
    async fn on_dtmf(&mut self, d: media::dtmf::DtmfEvent) {
        let clock = self.endpoint.as_ref().and_then(|e| e.params());
        let duration_ms = d.duration_ms(clock.map_or(8000, |p| p.clock_rate));
        tracing::info!(digit = %d.digit, duration_ms, "DTMF received");
        if let Some(stream) = &self.stream {
            stream.handle.send_dtmf(d.digit);
        }
        record_event(
            &self.shared,
            &self.record,
            "call.dtmf",
            serde_json::json!({"digit": d.digit.to_string(), "duration_ms": duration_ms}),
        )
        .await;
    }

    fn media_timeout(&self) -> Option<std::time::Duration> {
        let secs = self.shared.config.rtp.media_timeout_s;
        (secs > 0).then(|| std::time::Duration::from_secs(secs))
    }

    /// No RTP for `media_timeout` since the last packet (or since answer): end the call.
    fn check_media(&mut self, now: Instant) {
        let (Some(timeout), Some(endpoint), Some(answered)) =
            (self.media_timeout(), &self.endpoint, self.answered)
        else {
            self.media_check = None;
            return;
        };
        let mut last = endpoint
            .stats()
            .last_received
            .unwrap_or(answered)
            .max(answered);
        // Bridged to a hand-off party: its silence ends the call as well (counted from
        // the bridging, which comes after the answer).
        if let Some(handoff) = self.handoff.as_ref().filter(|h| h.bridged()) {
            let since = handoff.bridged_at.unwrap_or(answered);
            last = last.min(handoff.last_received().unwrap_or(since).max(since));
        }
        if now.saturating_duration_since(last) >= timeout {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "no RTP from the far end: ending the call"
            );
            self.media_check = None;
            self.call.handle(now, CallInput::MediaTimeout);
        } else {
            self.media_check = Some(last + timeout);
        }
    }

    fn connect_media(&mut self, body: Option<&sip::ua::Body>) {
        let (Some(endpoint), Some(offer), Some(body)) = (&mut self.endpoint, &self.offer, body)
        else {
            tracing::warn!("answer without SDP; media not connected");
            return;
        };
        match media::sdp::negotiate_answer(offer, &body.bytes) {
            Ok(params) => {
                tracing::info!(remote = %params.remote, codec = ?params.codec, "media connected");
                endpoint.connect_from(params, self.peer_ip);
                if self.record.record {
                    start_recording(&self.shared.config, &self.record.id, endpoint, &params);
                }
                self.start_stream(&params);
            }
            Err(e) => tracing::warn!(error = %e, "unusable SDP answer; media not connected"),
        }
    }

    /// Connects the agent stream asked for, now that the leg's codec is known. A stream
    /// that cannot start is reported (`call.stream.failed`) and the call goes on.
    fn start_stream(&mut self, params: &media::sdp::StreamParams) {
        let (Some(spec), Some(endpoint)) = (self.stream_spec.take(), self.endpoint.as_mut()) else {
            return;
        };
        let Some(tx) = self
            .shared
            .calls
            .get(&self.record.id)
            .map(|e| e.value().clone())
        else {
            return;
        };
        match super::agent_stream::start_on_endpoint(
            &self.shared,
            &self.record,
            spec,
            endpoint,
            params,
            tx,
        ) {
            Ok(stream) => {
                tracing::info!(stream = %stream.id, url = %stream.spec.url, "agent stream connecting");
                self.stream = Some(stream);
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the agent stream"),
        }
    }

    async fn drain(&mut self) {
        while let Some(out) = self.call.poll_output() {
            match out {
                CallOutput::Invite => self.send_invite().await,
                CallOutput::Answer => self.answer_inbound(),
                CallOutput::Cancel => self.send_sip(sip::ua::UaCommand::Cancel { leg: self.leg }),
                CallOutput::Bye => self.send_sip(sip::ua::UaCommand::Bye { leg: self.leg }),
                CallOutput::Status(change) => self.apply_status(change).await,
            }
        }
    }

    fn send_sip(&mut self, cmd: sip::ua::UaCommand) {
        if self.shared.ua.send(cmd).is_err() {
            // The SIP driver is gone (shutting down): the call cannot progress.
            tracing::error!("SIP driver gone");
            self.call.handle(
                Instant::now(),
                CallInput::Failed {
                    code: 503,
                    reason: "SIP Driver Stopped".to_owned(),
                },
            );
        }
    }

    /// A re-INVITE or UPDATE from the far end: answered from our endpoint with the mirrored
    /// direction (hold: `sendonly` gets `recvonly`), following a new address or codec.
    fn answer_reoffer(&mut self, id: u64, body: Option<&sip::ua::Body>) {
        let leg = self.leg;
        let (Some(endpoint), Some(body)) = (&mut self.endpoint, body) else {
            // No offer in it (or no media): repeat what we last said.
            let sdp = self.offer.as_ref().map(media::sdp::build_offer);
            let _ = self.shared.ua.send(sip::ua::UaCommand::AnswerReoffer {
                leg,
                id,
                body: sdp.map(sdp_body),
            });
            return;
        };
        let port = endpoint.local_addr().port();
        let local = match &mut self.offer {
            Some(prev) => next_description(&self.shared.config, port, prev),
            None => {
                let addr = self.shared.advertise.media_ip_for_offer(&body.bytes);
                local_offer(&self.shared.config, addr, port)
            }
        };
        match media::sdp::answer_offer(&body.bytes, &local) {
            Ok((sdp, params)) => {
                tracing::info!(direction = ?params.direction, remote = %params.remote, "re-offer answered");
                endpoint.connect_from(params, self.peer_ip);
                let _ = self.shared.ua.send(sip::ua::UaCommand::AnswerReoffer {
                    leg,
                    id,
                    body: Some(sdp_body(sdp)),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-offer refused");
                let _ = self.shared.ua.send(sip::ua::UaCommand::RejectReoffer {
                    leg,
                    id,
                    code: 488,
                    reason: "Not Acceptable Here".to_owned(),
                });
            }
        }
    }

    /// Answers the caller's offer from our RTP endpoint.
    fn answer_inbound(&mut self) {
        let (Some(endpoint), Some(offer)) = (&mut self.endpoint, &self.inbound_offer) else {
            return;
        };
        let addr = self.shared.advertise.media_ip_for_offer(&offer.bytes);
        // The source trunk's codecs pick the answer's codec.
        let local = super::codecs::with_codecs(
            local_offer(&self.shared.config, addr, endpoint.local_addr().port()),
            &self.trunk.codecs(),
        );
        match media::sdp::answer_offer(&offer.bytes, &local) {
            Ok((sdp, params)) => {
                endpoint.connect_from(params, self.peer_ip);
                if self.record.record {
                    start_recording(&self.shared.config, &self.record.id, endpoint, &params);
                }
                self.start_stream(&params);
                let now = Instant::now();
                self.answered = Some(now);
                self.media_check = self.media_timeout().map(|t| now + t);
                // The agreed codec first, so a re-offer listing it again keeps it.
                let codecs = super::codecs::preferring(&local.codecs, params.codec);
                self.offer = Some(super::codecs::with_codecs(local, &codecs));
                // Written with the in_progress status that follows at once.
                if let Some(d) = &self.caller_dialog {
                    Arc::make_mut(&mut self.record).sip_dialog = super::dialog::to_json(d);
                }
                self.send_sip(sip::ua::UaCommand::Answer {
                    leg: self.leg,
                    body: Some(sdp_body(sdp)),
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "caller's SDP offer unusable");
                self.send_sip(sip::ua::UaCommand::Reject {
                    leg: self.leg,
                    code: 488,
                    reason: "Not Acceptable Here".to_owned(),
                    headers: Vec::new(),
                });
                // The router checked the offer before creating this task, so this is
                // not expected; end the call rather than leave it hanging.
                self.call
                    .handle(Instant::now(), CallInput::Terminated { by_remote: true });
            }
        }
    }

    async fn send_invite(&mut self) {
        let target = match self.trunk.resolve().await {
            Ok(addr) => addr,
            Err(e) => {
                tracing::warn!(trunk = %self.trunk.config.name, error = %e, "trunk address does not resolve");
                self.call.handle(
                    Instant::now(),
                    CallInput::Failed {
                        code: 503,
                        reason: "Trunk Unreachable".to_owned(),
                    },
                );
                return;
            }
        };
        self.peer_ip = Some(target.ip());
        let media_ip = self.shared.advertise.media_ip_for(target.ip());
        let sip_ip = self.shared.advertise.sip_ip_for(target.ip());
        let Some(endpoint) = &self.endpoint else {
            return;
        };
        let session_id = Utc::now().timestamp_micros().unsigned_abs();
        let offer = media::sdp::OfferParams {
            session_id,
            session_version: session_id,
            addr: media_ip,
            port: endpoint.local_addr().port(),
            codecs: self.trunk.codecs(),
            dtmf_pt: Some(101),
            ptime_ms: 20,
            direction: media::sdp::Direction::SendRecv,
        };
        let sdp = media::sdp::build_offer(&offer);
        self.offer = Some(offer);
        let credentials = match (&self.trunk.config.username, &self.trunk.config.password) {
            (Some(u), Some(p)) => Some(sip::auth::Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => None,
        };
        let transport = match self.trunk.config.transport {
            crate::config::TrunkTransport::Udp => sip::ua::Transport::Udp,
            crate::config::TrunkTransport::Tcp => sip::ua::Transport::Tcp,
        };
        let from_uri = format!("sip:{}@{}", self.record.from, public_ip_for_uri(sip_ip));
        self.send_sip(sip::ua::UaCommand::Invite {
            leg: self.leg,
            target: sip::ua::Target {
                request_uri: self.trunk.request_uri(&self.record.to),
                addr: target,
                transport,
            },
            from_uri,
            from_display: None,
            to_uri: format!(
                "sip:{}@{}:{}",
                self.record.to, self.trunk.uri.host, self.trunk.uri.port
            ),
            body: Some(sip::ua::Body {
                content_type: "application/sdp".to_owned(),
                bytes: sdp.into_bytes().into(),
            }),
            credentials,
            extra_headers: Vec::new(),
            call_id: self.record.sip_call_id.clone(),
        });
        tracing::info!(trunk = %self.trunk.config.name, %target, to = %self.record.to, "INVITE sent");
    }

    async fn apply_status(&mut self, change: StatusChange) {
        let now = Utc::now();
        let r = Arc::make_mut(&mut self.record);
        apply_change(r, &change, now);
        if change.status.is_terminal()
            && let Some(endpoint) = self.endpoint.take()
        {
            let (stats, recording) = endpoint.close_with_recording().await;
            match recording {
                Some(Ok(rec)) => {
                    tracing::info!(
                        duration_ms = rec.info.duration_ms,
                        samples = rec.info.samples,
                        dropped = rec.dropped,
                        jitter = ?rec.jitter,
                        "recording finished"
                    );
                    r.recording_url = Some(recording_url(&self.shared.config, &r.id));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "recording failed"),
                None => {}
            }
            set_media_stats(
                r,
                stats.packets_received,
                stats.bytes_received,
                stats.lost,
                stats.jitter_ms,
            );
            self.shared
                .metrics
                .rtp(stats.packets_received, stats.bytes_received);
        }
        persist_status(&self.shared, &self.record, change.status).await;
        tracing::info!(status = change.status.as_str(), sip_code = ?change.sip_code, "status");
    }
}

/// Applies a status change to the record: status, SIP code/reason, answer and end times,
/// end reason and Q.850 cause.
pub(crate) fn apply_change(r: &mut CallRecord, change: &StatusChange, now: chrono::DateTime<Utc>) {
    r.status = change.status;
    if let Some(code) = change.sip_code {
        r.sip_code = Some(i32::from(code));
    }
    if change.sip_reason.is_some() {
        r.sip_reason = change.sip_reason.clone();
    }
    if change.status == CallStatus::InProgress {
        r.answered_at = Some(now);
    }
    if change.status.is_terminal() {
        // A provisional code (the 180 of `ringing`) is no call's outcome: a terminal change
        // that names no final code leaves none.
        if change.sip_code.is_none() && r.sip_code.is_some_and(|c| c < 200) {
            r.sip_code = None;
            r.sip_reason = None;
        }
        r.sip_dialog = None;
        r.ended_at = Some(now);
        r.duration_seconds = Some(r.answered_at.map_or(0, |a| (now - a).num_seconds().max(0)));
        r.end_reason = change.end_reason.map(|e| e.as_str().to_owned());
        let code = change.sip_code.unwrap_or(match change.status {
            CallStatus::Completed => 200,
            CallStatus::Cancelled => 487,
            _ => 0,
        });
        r.q850_cause = Some(match (change.status, change.end_reason) {
            (CallStatus::NoAnswer, Some(super::call::EndReason::RingTimeout)) => 19,
            // Recovery on timer expiry.
            (
                _,
                Some(super::call::EndReason::MediaTimeout | super::call::EndReason::AckTimeout),
            ) => 102,
            (CallStatus::Cancelled, _) => 16,
            _ => q850_for_sip(code),
        });
    }
}

/// Packets, loss, jitter and an E-model MOS onto the record.
pub(crate) fn set_media_stats(
    r: &mut CallRecord,
    packets: u64,
    bytes: u64,
    lost: u64,
    jitter_ms: f64,
) {
    r.rtp_packets_received = packets as i64;
    r.rtp_bytes_received = bytes as i64;
    r.rtp_packets_lost = lost as i64;
    if packets > 0 {
        r.rtp_jitter_ms = Some(round2(jitter_ms));
        let expected = packets + lost;
        let loss_percent = 100.0 * lost as f64 / expected.max(1) as f64;
        // No RTCP round trip yet: one-way delay is taken as one 20 ms packet plus a
        // jitter buffer two jitters deep, what a receiver would add.
        let delay_ms = 20.0 + 2.0 * jitter_ms;
        r.mos = Some(round2(media::quality::mos(
            0.0,
            delay_ms,
            loss_percent,
            4.3,
        )));
    }
}

/// Writes the record and its `call.<status>` event in one transaction, then nudges the
/// webhook deliverer.
pub(crate) async fn persist_status(shared: &Shared, r: &Arc<CallRecord>, status: CallStatus) {
    let extra = if status.is_terminal() {
        serde_json::json!({
            "sip_code": r.sip_code,
            "sip_reason": r.sip_reason,
            "q850_cause": r.q850_cause,
            "end_reason": r.end_reason,
        })
    } else {
        serde_json::json!({})
    };
    shared.metrics.status(status);
    record_event(shared, r, &format!("call.{}", status.as_str()), extra).await;
}

/// Writes the call as it stands with one outbox event (a status change, a digit, transfer
/// progress) in one transaction, then wakes the deliverer if there is somewhere to send it.
pub(crate) async fn record_event(
    shared: &Shared,
    r: &Arc<CallRecord>,
    event_type: &str,
    extra: serde_json::Value,
) {
    let event = NewEvent {
        event_type: event_type.to_owned(),
        extra,
    };
    match shared.store.update_call(r, Some(&event)).await {
        Ok(Some(ev)) => wake_deliverer(shared, &ev),
        Ok(None) => {}
        Err(e) => {
            shared.metrics.store_error();
            tracing::error!(error = %e, event_type, "failed to record a call event");
        }
    }
}

/// Writes a new call with its `call.initiating` event (if the store records it) and wakes
/// the deliverer if there is somewhere to send it.
pub(crate) async fn record_created(
    shared: &Shared,
    r: &Arc<CallRecord>,
) -> Result<(), crate::store::StoreError> {
    let event = NewEvent {
        event_type: "call.initiating".to_owned(),
        extra: serde_json::json!({}),
    };
    if let Some(created) = shared.store.create_call(r, &event).await? {
        wake_deliverer(shared, &created);
    }
    shared.metrics.status(CallStatus::Initiating);
    Ok(())
}

/// Without an endpoint an event is stored as `no_endpoint`: nothing to deliver, so the
/// deliverer is left asleep.
fn wake_deliverer(shared: &Shared, event: &crate::model::CallEvent) {
    if event.state == crate::model::DeliveryState::Pending {
        shared.webhooks.notify_one();
    }
}

/// Starts recording the far end into `{recordings.dir}/{call_id}.wav`; a failure is
/// logged and the call goes on unrecorded (`recording_url` stays null).
fn start_recording(
    config: &crate::config::Config,
    call_id: &str,
    endpoint: &mut media::net::RtpEndpoint,
    params: &media::sdp::StreamParams,
) {
    let dir = &config.recordings.dir;
    // One mkdir on answer: cheap enough not to need a blocking thread.
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create recordings dir; not recording");
        return;
    }
    let path = dir.join(format!("{call_id}.wav"));
    match endpoint.start_recording(&path, params) {
        Ok(()) => tracing::info!(path = %path.display(), "recording"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot record"),
    }
}

/// `{public base}/api/v1/voice/calls/{id}/recording`; the base is `http.public_url`, else
/// the bound HTTP address (an unspecified listen IP is replaced by the public IP).
pub(crate) fn recording_url(config: &crate::config::Config, call_id: &str) -> String {
    let base = match &config.http.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let listen = config.http.listen;
            let ip = if listen.ip().is_unspecified() {
                config.public_ip()
            } else {
                listen.ip()
            };
            format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
        }
    };
    format!("{base}/api/v1/voice/calls/{call_id}/recording")
}

/// What we offer or answer with from `addr`:`port` (`addr` as the peer must see it: see
/// `advertise`): PCMU, PCMA, telephone-event 101, 20 ms.
pub(crate) fn local_offer(
    _config: &crate::config::Config,
    addr: std::net::IpAddr,
    port: u16,
) -> media::sdp::OfferParams {
    let session_id = Utc::now().timestamp_micros().unsigned_abs();
    media::sdp::OfferParams {
        session_id,
        session_version: session_id,
        addr,
        port,
        codecs: vec![media::sdp::Codec::Pcmu, media::sdp::Codec::Pcma],
        dtmf_pt: Some(101),
        ptime_ms: 20,
        direction: media::sdp::Direction::SendRecv,
    }
}

/// Our next session description in a session: same `o=` id, version one higher (RFC 3264
/// §8), from `port`; `prev` is bumped so the following one goes higher again.
pub(crate) fn next_description(
    config: &crate::config::Config,
    port: u16,
    prev: &mut media::sdp::OfferParams,
) -> media::sdp::OfferParams {
    prev.session_version += 1;
    media::sdp::OfferParams {
        session_id: prev.session_id,
        session_version: prev.session_version,
        // The session keeps its codec list (a trunk's, not the default), and its address:
        // the peer and its route have not changed.
        codecs: prev.codecs.clone(),
        ..local_offer(config, prev.addr, port)
    }
}

pub(crate) fn sdp_body(sdp: String) -> sip::ua::Body {
    sip::ua::Body {
        content_type: "application/sdp".to_owned(),
        bytes: sdp.into_bytes().into(),
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub(crate) fn public_ip_for_uri(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        std::net::IpAddr::V4(v4) => v4.to_string(),
    }
}

/// The next item from an optional channel; pends forever when there is none or once it
/// has closed (the closed channel is dropped so a `select!` loop does not spin on it).
pub(crate) async fn next_from<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    match r.recv().await {
        Some(item) => Some(item),
        None => {
            *rx = None;
            std::future::pending().await
        }
    }
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
