//! A second leg on a call the switch terminates itself: an AI agent's `transfer_call`
//! whose REFER the caller's side refused dials the hand-off number and, once it answers,
//! bridges the caller to it in the agent's place.
//!
//! This is the first step of the core's "a call owns legs and a media topology" shape
//! (ARCHITECTURE §4.4b) on `CallTask`: the call keeps its first leg and endpoint, gains one
//! optional leg with its own endpoint, and its media topology turns from *endpoint ↔
//! agent stream* into *endpoint ↔ endpoint* (two PCM pipes, [`media::net::pipe`]), each
//! leg keeping its own codec.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use super::trunk::{Trunk, TrunkSlot};
use crate::model::CallRecord;

/// How long the hand-off number may ring before the transfer is given up.
pub(crate) const RING_TIMEOUT: Duration = Duration::from_secs(30);

/// The hand-off leg while it rings and once it is bridged.
#[derive(Debug)]
pub(crate) struct Handoff {
    pub leg: sip::ua::LegRef,
    /// The number dialled, as routed.
    pub number: String,
    endpoint: Option<media::net::RtpEndpoint>,
    offer: media::sdp::OfferParams,
    peer_ip: std::net::IpAddr,
    /// The target's place on its trunk, held while the leg lives.
    _slot: TrunkSlot,
    /// The agent waits for the outcome (answered, or why not).
    reply: Option<super::task::TransferReply>,
    ring_deadline: Option<Instant>,
    /// When the target answered and the caller was bridged to it.
    pub bridged_at: Option<Instant>,
    /// The target's dialog (for the call row, so a crash still ends it).
    pub dialog: Option<sip::ua::DialogSnapshot>,
    /// A CANCEL or BYE went out: the leg is on its way down.
    ending: bool,
}

/// What the hand-off leg's SIP event means for the call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HandoffOutcome {
    /// Nothing for the call (progress, the dialog, a re-INVITE answered).
    Nothing,
    /// The target answered with usable media: bridge it (see [`Handoff::bridge`]).
    Answered,
    /// The target never answered (or could not be reached): the agent goes on.
    Failed { code: u16 },
    /// The bridged target hung up: the call ends.
    Ended,
}

impl Handoff {
    /// Dials `number` for the call `record` (whose own trunk is `call_trunk`) with
    /// `caller_id` as From: the trunk the dialplan picks for the number from the call's
    /// trunk, else the call's trunk. `tx` is the call task's input (the new leg's events
    /// go there). On failure the reply comes back with why.
    pub(crate) async fn dial(
        shared: &Shared,
        record: &CallRecord,
        call_trunk: &Trunk,
        number: &str,
        caller_id: &str,
        reply: super::task::TransferReply,
    ) -> Result<Self, (super::task::TransferReply, String)> {
        let Some(tx) = shared.calls.get(&record.id).map(|e| e.value().clone()) else {
            return Err((reply, "the call has ended".to_owned()));
        };
        let (trunk, to) = route(shared, call_trunk, caller_id, number);
        let Ok(slot) = trunk.reserve_outbound(Instant::now()) else {
            return Err((reply, format!("trunk {} is at capacity", trunk.config.name)));
        };
        let addr = match trunk.resolve().await {
            Ok(addr) => addr,
            Err(e) => {
                return Err((
                    reply,
                    format!("trunk {} unreachable: {e}", trunk.config.name),
                ));
            }
        };
        let endpoint =
            match media::net::RtpEndpoint::open(&shared.ports, shared.config.rtp_bind_ip()) {
                Ok(e) => e,
                Err(e) => return Err((reply, format!("no media port free: {e}"))),
            };
        let media_ip = shared.advertise.media_ip_for(addr.ip());
        let offer = super::codecs::with_codecs(
            super::task::local_offer(&shared.config, media_ip, endpoint.local_addr().port()),
            &trunk.codecs(),
        );
        let leg = shared.next_leg();
        shared.legs.insert(leg, tx);
        let host = super::task::public_ip_for_uri(shared.advertise.sip_ip_for(addr.ip()));
        let sent = shared.ua.send(sip::ua::UaCommand::Invite {
            leg,
            target: sip::ua::Target {
                request_uri: trunk.request_uri(&to),
                addr,
                transport: trunk.sip_transport(),
            },
            from_uri: format!("sip:{caller_id}@{host}"),
            from_display: None,
            to_uri: format!("sip:{to}@{}:{}", trunk.uri.host, trunk.uri.port),
            body: Some(super::task::sdp_body(media::sdp::build_offer(&offer))),
            credentials: trunk.credentials(),
            extra_headers: Vec::new(),
            call_id: None,
        });
        if sent.is_err() {
            shared.legs.remove(&leg);
            return Err((reply, "the SIP stack is stopping".to_owned()));
        }
        tracing::info!(target = %to, trunk = %trunk.config.name, "hand-off: dialling the target");
        Ok(Self {
            leg,
            number: to,
            endpoint: Some(endpoint),
            offer,
            peer_ip: addr.ip(),
            _slot: slot,
            reply: Some(reply),
            ring_deadline: Some(Instant::now() + RING_TIMEOUT),
            bridged_at: None,
            dialog: None,
            ending: false,
        })
    }

    /// When the target has rung too long (while it rings).
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.ring_deadline.filter(|_| !self.ending)
    }

    /// Rung too long: CANCEL (its 487 then fails the hand-off).
    pub(crate) fn handle_timeout(&mut self, shared: &Shared, now: Instant) {
        if self.ring_deadline.is_some_and(|d| now >= d) && !self.ending {
            tracing::warn!(target = %self.number, "hand-off target did not answer in time");
            self.ring_deadline = None;
            self.ending = true;
            let _ = shared.ua.send(sip::ua::UaCommand::Cancel { leg: self.leg });
        }
    }

    /// One SIP event of the hand-off leg.
    pub(crate) fn on_event(&mut self, shared: &Shared, ev: sip::ua::UaEvent) -> HandoffOutcome {
        use sip::ua::UaEvent;
        match ev {
            UaEvent::DialogEstablished { snapshot, .. } => {
                self.dialog = Some(*snapshot);
                HandoffOutcome::Nothing
            }
            UaEvent::Answered { body, .. } => {
                self.ring_deadline = None;
                let params = body
                    .as_ref()
                    .and_then(|b| media::sdp::negotiate_answer(&self.offer, &b.bytes).ok());
                match (params, &self.endpoint) {
                    (Some(params), Some(endpoint)) if !self.ending => {
                        endpoint.connect_from(params, Some(self.peer_ip));
                        HandoffOutcome::Answered
                    }
                    _ => {
                        // Unusable SDP (or answered while we cancelled): let it go.
                        tracing::warn!("hand-off target answered without usable media");
                        self.hang_up(shared);
                        HandoffOutcome::Failed { code: 488 }
                    }
                }
            }
            UaEvent::Failed { code, .. } => HandoffOutcome::Failed { code },
            UaEvent::Cancelled { .. } => HandoffOutcome::Failed { code: 487 },
            UaEvent::Terminated { .. } | UaEvent::SessionExpired { .. } if self.bridged() => {
                HandoffOutcome::Ended
            }
            UaEvent::Terminated { .. } => HandoffOutcome::Failed { code: 487 },
            UaEvent::Reoffer { id, body, .. } => {
                self.answer_reoffer(shared, id, body.as_ref());
                HandoffOutcome::Nothing
            }
            UaEvent::Refer { id, .. } => {
                // The target cannot pass the caller on again from here.
                let _ = shared.ua.send(sip::ua::UaCommand::ReferResponse {
                    leg: self.leg,
                    id,
                    code: 603,
                });
                HandoffOutcome::Nothing
            }
            _ => HandoffOutcome::Nothing,
        }
    }

    /// Bridges the call's `caller` endpoint to the target's: each hears the other through
    /// a PCM pipe at the rate of the leg that plays it. The caller's listener and source
    /// must have been stopped (the agent's stream).
    pub(crate) fn bridge(&mut self, caller: &mut media::net::RtpEndpoint) -> Result<(), String> {
        let b = self.endpoint.as_ref().and_then(|e| e.params());
        let (Some(target), Some(a), Some(b)) = (self.endpoint.as_mut(), caller.params(), b) else {
            return Err("no media to bridge".to_owned());
        };
        let a_rate = a.codec.audio_codec().sample_rate();
        let b_rate = b.codec.audio_codec().sample_rate();
        let (to_target, target_plays) = media::net::pipe::pipe(b_rate);
        let (to_caller, caller_plays) = media::net::pipe::pipe(a_rate);
        caller
            .listen(b_rate, Box::new(to_target))
            .map_err(|e| format!("cannot hear the caller: {e}"))?;
        target
            .listen(a_rate, Box::new(to_caller))
            .map_err(|e| format!("cannot hear the target: {e}"))?;
        target.play(Box::new(target_plays));
        caller.play(Box::new(caller_plays));
        self.bridged_at = Some(Instant::now());
        tracing::info!(
            caller_codec = ?a.codec,
            target_codec = ?b.codec,
            "hand-off: the caller is bridged to the target"
        );
        Ok(())
    }

    /// The caller is bridged to the target.
    pub(crate) fn bridged(&self) -> bool {
        self.bridged_at.is_some()
    }

    /// When the target's last RTP packet arrived (once bridged; `None` before any).
    pub(crate) fn last_received(&self) -> Option<Instant> {
        self.endpoint
            .as_ref()
            .filter(|_| self.bridged())
            .and_then(|e| e.stats().last_received)
    }

    /// Tells the agent how the hand-off went (once).
    pub(crate) fn reply(&mut self, result: Result<crate::agents::runtime::Transferred, String>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(result);
        }
    }

    /// Ends the leg: BYE once answered, else CANCEL (idempotent).
    pub(crate) fn hang_up(&mut self, shared: &Shared) {
        if self.ending {
            return;
        }
        self.ending = true;
        self.ring_deadline = None;
        let cmd = if self.bridged() || self.dialog.is_some() {
            sip::ua::UaCommand::Bye { leg: self.leg }
        } else {
            sip::ua::UaCommand::Cancel { leg: self.leg }
        };
        let _ = shared.ua.send(cmd);
    }

    /// Closes the target's endpoint and forgets its leg (the call is done with it).
    pub(crate) async fn close(mut self, shared: &Shared) {
        shared.legs.remove(&self.leg);
        self.reply(Err("the call has ended".to_owned()));
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.close().await;
        }
    }

    /// A re-INVITE from the target (hold, a new address): answered from its endpoint.
    fn answer_reoffer(&mut self, shared: &Shared, id: u64, body: Option<&sip::ua::Body>) {
        let (Some(endpoint), Some(body)) = (&self.endpoint, body) else {
            let sdp = media::sdp::build_offer(&self.offer);
            let _ = shared.ua.send(sip::ua::UaCommand::AnswerReoffer {
                leg: self.leg,
                id,
                body: Some(super::task::sdp_body(sdp)),
            });
            return;
        };
        let port = endpoint.local_addr().port();
        let local = super::task::next_description(&shared.config, port, &mut self.offer);
        match media::sdp::answer_offer(&body.bytes, &local) {
            Ok((sdp, params)) => {
                endpoint.connect_from(params, Some(self.peer_ip));
                let _ = shared.ua.send(sip::ua::UaCommand::AnswerReoffer {
                    leg: self.leg,
                    id,
                    body: Some(super::task::sdp_body(sdp)),
                });
            }
            Err(_) => {
                let _ = shared.ua.send(sip::ua::UaCommand::RejectReoffer {
                    leg: self.leg,
                    id,
                    code: 488,
                    reason: "Not Acceptable Here".to_owned(),
                });
            }
        }
    }
}

/// The trunk and the number as the dialplan routes `number` from `call_trunk` (as if a
/// call to it came in there), else `call_trunk` with the number as given.
fn route(shared: &Shared, call_trunk: &Trunk, caller_id: &str, number: &str) -> (Trunk, String) {
    let decision = shared
        .inbound
        .route_number(&call_trunk.config.name, caller_id, number);
    if let dialplan::plan::Route::Trunks(names) = &decision.route
        && let Some(trunk) = names
            .first()
            .and_then(|n| shared.inbound.trunks().iter().find(|t| &t.config.name == n))
    {
        let to = decision
            .to_e164
            .map_or_else(|| number.to_owned(), |n| n.to_string());
        return (trunk.clone(), to);
    }
    (call_trunk.clone(), number.to_owned())
}

/// Both legs' dialogs as the call row's `sip_dialog` (a crash then BYEs both).
pub(crate) fn dialogs_json(
    caller: Option<&sip::ua::DialogSnapshot>,
    target: Option<&sip::ua::DialogSnapshot>,
) -> Option<String> {
    let legs: Vec<&sip::ua::DialogSnapshot> = caller.into_iter().chain(target).collect();
    super::dialog::to_json_all(&legs)
}

/// The record as written after a hand-off: `metadata.transferred`.
pub(crate) fn mark_transferred(record: &mut Arc<CallRecord>, number: &str) {
    let r = Arc::make_mut(record);
    r.metadata["transferred"] = serde_json::json!(true);
    r.metadata["transferred_to"] = serde_json::json!(number);
}
