//! `TransitTask`: the tokio task that owns one transit call — the caller's leg A, the
//! outbound leg B (one per trunk tried), the media bridge between them and the sans-IO
//! [`Transit`] machine. Media is anchored: both legs' RTP goes through our bridge, so a
//! re-INVITE on one leg is answered here and never disturbs the other.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use media::relay::{RelayConfig, Side, SideParams};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::Shared;
use super::call::StatusChange;
use super::codecs::{preferring, with_codecs};
use super::task::{
    TaskInput, apply_change, local_offer, next_description, next_from, persist_status,
    record_event, sdp_body, sleep_until,
};
use super::transit::{Transit, TransitInput, TransitOutput};
use super::trunk::{Trunk, TrunkSlot};
use crate::model::CallRecord;

mod hold;
mod xfer;

/// When a bridge failure was last logged (seconds since the epoch).
static BRIDGE_FAILURE_LOGGED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the router hands over for a call it decided to carry.
#[derive(Debug)]
pub(crate) struct TransitSetup {
    pub record: Arc<CallRecord>,
    pub a_leg: sip::ua::LegRef,
    pub a_offer: sip::ua::Body,
    /// The caller's Max-Forwards; B gets one less.
    pub max_forwards: u32,
    /// P-Asserted-Identity from a trusted trunk, passed on.
    pub asserted_identity: Option<String>,
    /// Caller and called numbers as B should see them.
    pub from: String,
    pub to: String,
    pub trunks: Vec<Trunk>,
    /// The place the call holds on its source trunk.
    pub source_slot: Option<TrunkSlot>,
    /// What names the caller's dialog once answered (the callee's is added later).
    pub a_dialog: super::transit_dialogs::LegDialogs,
    /// The source trunk's codecs: what our answer to the caller may pick, in order.
    pub a_codecs: Vec<media::sdp::Codec>,
    /// The caller's Allow header (whether it takes a REFER).
    pub a_allow: Option<String>,
}

#[derive(Debug)]
pub(crate) struct TransitTask {
    shared: Shared,
    /// Shared with the store while a write of it is in flight, else ours alone.
    record: Arc<CallRecord>,
    machine: Transit,
    a_leg: sip::ua::LegRef,
    b_leg: Option<sip::ua::LegRef>,
    /// The codec A's offer and our answer agreed on (offered to B first).
    a_codec: media::sdp::Codec,
    /// Our SDP towards A (answer to A's offer) and the parameters behind it.
    a_local: media::sdp::OfferParams,
    a_sdp: String,
    /// The caller's offer, kept to answer it again in the callee's codec (see
    /// [`TransitTask::follow_b_codec`]) until `a_sdp_sent`.
    a_offer: bytes::Bytes,
    /// `a_sdp` has gone to the caller (in a 18x or the 2xx): it can no longer change.
    a_sdp_sent: bool,
    /// Our offer towards B.
    b_local: Option<media::sdp::OfferParams>,
    /// Leg B's media became known (18x or 2xx with SDP).
    b_media: bool,
    bridge: Option<media::net::bridge::Bridge>,
    max_forwards: u32,
    asserted_identity: Option<String>,
    from: String,
    to: String,
    trunks: Vec<Trunk>,
    _source_slot: Option<TrunkSlot>,
    out_slot: Option<TrunkSlot>,
    waiters: Vec<oneshot::Sender<CallRecord>>,
    media_check: Option<Instant>,
    /// Packets seen on both sides at the last check, and when that count last moved.
    media_seen: (u64, Instant),
    /// The media counters as last written to the call row (see `live_media`).
    media_published: u64,
    /// Both legs' dialogs, stored with `in_progress` for a BYE after a crash.
    dialogs: super::transit_dialogs::LegDialogs,
    /// A blind transfer asked for by one leg's REFER: the new party's leg while it rings.
    transfer: Option<Transfer>,
    /// Digits either party sends (RFC 4733), relayed by the bridge and reported as
    /// `call.dtmf` events with the side they came from.
    dtmf: Option<mpsc::Receiver<(Side, media::dtmf::DtmfEvent)>>,
    /// One party's hold mirrored to the other by re-INVITE.
    hold: hold::HoldState,
    /// Transfers asked for by API.
    xfer: xfer::XferState,
    /// A listen-only agent stream forking both parties' audio.
    stream: Option<super::agent_stream::AttachedStream>,
}

/// An accepted REFER in progress: `new_leg` is being called to replace `side`'s party.
#[derive(Debug)]
struct Transfer {
    side: Side,
    /// The leg whose party is replaced (the referrer when a REFER asked).
    referrer: sip::ua::LegRef,
    /// A REFER asked: the referrer hears NOTIFYs.
    notify: bool,
    new_leg: sip::ua::LegRef,
    offer: media::sdp::OfferParams,
    /// The target's place on its trunk; becomes the call's outbound slot on success.
    slot: TrunkSlot,
    /// The target's dialog once it answers: stored in place of the replaced party's, so
    /// a crash after the transfer still ends the right calls.
    dialog: Option<sip::ua::DialogSnapshot>,
}

impl TransitTask {
    /// Opens the bridge (A's side from its offer) and builds our answer for A. Errors when
    /// the offer has no usable audio (the caller gets 488) or no ports are free (503).
    pub(crate) fn new(shared: Shared, setup: TransitSetup) -> Result<Self, (u16, &'static str)> {
        let config = &shared.config;
        let bind_ip = config.rtp_bind_ip();
        let a_media_ip = shared.advertise.media_ip_for_offer(&setup.a_offer.bytes);
        // A first answer only to learn the caller's codec; redone once our port is known.
        let probe = with_codecs(local_offer(config, a_media_ip, 0), &setup.a_codecs);
        let (_, a_params) = media::sdp::answer_offer(&setup.a_offer.bytes, &probe)
            .map_err(|_| (488u16, "Not Acceptable Here"))?;
        let a_side =
            SideParams::try_from(&a_params).map_err(|_| (488u16, "Not Acceptable Here"))?;
        // B's side is a placeholder until its answer says where and in what codec.
        let b_side = SideParams {
            remote: None,
            ..a_side
        };
        let mut bridge = media::net::bridge::Bridge::open(
            &shared.ports,
            bind_ip,
            a_side,
            b_side,
            RelayConfig::default(),
        )
        .map_err(|e| {
            // Ports or descriptors exhausted, or a bind failure: the operator needs to know
            // which, but under overload once a second is enough.
            shared.metrics.media_refused();
            if super::metrics::once_per_second(&BRIDGE_FAILURE_LOGGED) {
                tracing::warn!(error = %e, "cannot open a media bridge; refusing calls with 503");
            }
            (503u16, "Service Unavailable")
        })?;
        let dtmf = bridge.take_dtmf_events();
        // A caller that starts on hold (sendonly/inactive) gets no RTP from the start.
        bridge.set_direction(Side::A, a_params.direction);
        // The caller's RTP may come from its SDP address or, behind NAT, from where its
        // INVITE came; nobody else may latch its side (RTP hijack).
        bridge.set_signalling_ip(Side::A, setup.a_dialog.a_source());
        // The chosen codec first: the same answer now, and re-offers keep it.
        let a_local = with_codecs(
            local_offer(config, a_media_ip, bridge.local_addr(Side::A).port()),
            &preferring(&setup.a_codecs, a_params.codec),
        );
        let (a_sdp, _) = media::sdp::answer_offer(&setup.a_offer.bytes, &a_local)
            .map_err(|_| (488u16, "Not Acceptable Here"))?;
        let machine = Transit::new(
            setup.trunks.len(),
            Duration::from_secs(setup.record.ring_timeout.max(1) as u64),
            Duration::from_secs(setup.record.max_duration.max(1) as u64),
        );
        Ok(Self {
            shared,
            record: setup.record,
            machine,
            a_leg: setup.a_leg,
            b_leg: None,
            a_codec: a_params.codec,
            a_local,
            a_sdp,
            a_offer: setup.a_offer.bytes.clone(),
            a_sdp_sent: false,
            b_local: None,
            b_media: false,
            bridge: Some(bridge),
            max_forwards: setup.max_forwards,
            asserted_identity: setup.asserted_identity,
            from: setup.from,
            to: setup.to,
            trunks: setup.trunks,
            _source_slot: setup.source_slot,
            out_slot: None,
            waiters: Vec::new(),
            media_check: None,
            media_seen: (0, Instant::now()),
            media_published: 0,
            dialogs: setup.a_dialog,
            transfer: None,
            dtmf,
            hold: hold::HoldState::default(),
            xfer: xfer::XferState::new(setup.a_allow),
            stream: None,
        })
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<TaskInput>) {
        let span = tracing::info_span!("call", call_id = %self.record.id);
        async move {
            self.machine.handle(Instant::now(), TransitInput::Start);
            self.drain().await;
            while !self.machine.is_done() {
                let deadline = self.machine.poll_timeout();
                tokio::select! {
                    input = rx.recv() => match input {
                        Some(input) => self.on_input(input).await,
                        None => break,
                    },
                    () = sleep_until(deadline) => self.machine.handle_timeout(Instant::now()),
                    () = sleep_until(self.media_check) => {
                        self.check_media(Instant::now());
                        let (bridge, seen) = (self.bridge.as_ref(), &mut self.media_published);
                        super::live_media::publish(&self.shared, &mut self.record, bridge, seen)
                            .await;
                    }
                    () = sleep_until(self.hold.poll_timeout()) => self.hold_timeout(Instant::now()),
                    Some((side, digit)) = next_from(&mut self.dtmf) => self.on_dtmf(side, digit).await,
                }
                self.drain().await;
            }
            self.shared.legs.remove(&self.a_leg);
            if let Some(b) = self.b_leg {
                self.shared.legs.remove(&b);
            }
            if let Some(stream) = self.stream.take() {
                stream.handle.stop();
            }
            self.shared.calls.remove(&self.record.id);
            for w in self.waiters.drain(..) {
                let _ = w.send(CallRecord::clone(&self.record));
            }
            tracing::info!(status = self.record.status.as_str(), "transit call ended");
        }
        .instrument(span)
        .await;
    }

    async fn on_input(&mut self, input: TaskInput) {
        use sip::ua::UaEvent;
        let now = Instant::now();
        let ev = match input {
            TaskInput::Hangup(reply) => {
                self.waiters.push(reply);
                self.machine.handle(now, TransitInput::Hangup);
                return;
            }
            TaskInput::Shutdown(reply) => {
                self.waiters.push(reply);
                self.machine.handle(now, TransitInput::Shutdown);
                return;
            }
            TaskInput::Transfer { target, leg, reply } => {
                let _ = reply.send(self.api_transfer(target, leg).await);
                return;
            }
            TaskInput::AgentTransfer { reply, .. } => {
                // No agent talks on a transit call (its streams only listen).
                let _ = reply.send(Err("not a call with an agent".to_owned()));
                return;
            }
            TaskInput::StartStream { spec, reply } => {
                let _ = reply.send(self.start_stream(spec));
                return;
            }
            TaskInput::StopStream { stream_id, reply } => {
                let running = self.stream.as_ref().is_some_and(|s| s.id == stream_id);
                if running && let Some(stream) = &self.stream {
                    stream.handle.stop();
                    if let Some(bridge) = self.bridge.as_mut() {
                        bridge.stop_listening();
                    }
                }
                let _ = reply.send(running);
                return;
            }
            TaskInput::Stream { stream_id, event } => {
                self.on_stream_event(&stream_id, event).await;
                return;
            }
            TaskInput::Sip(ev) => ev,
        };
        let input = match ev {
            // Leg A (the caller). Timer H: it never ACKed our 200.
            UaEvent::Terminated {
                leg,
                by_remote: false,
                code: Some(408),
            } if leg == self.a_leg => TransitInput::AAckTimeout,
            UaEvent::Terminated { leg, by_remote, .. } if leg == self.a_leg => {
                TransitInput::ATerminated { by_remote }
            }
            UaEvent::SessionExpired { leg } if leg == self.a_leg || Some(leg) == self.b_leg => {
                TransitInput::SessionExpired
            }
            UaEvent::Reoffer { leg, id, body, .. } => {
                self.answer_reoffer(leg, id, body.as_ref());
                return;
            }
            UaEvent::ReinviteResult { leg, code, body } => {
                self.on_reinvite_result(leg, code, body.as_ref());
                return;
            }
            UaEvent::ReferResult { leg, code } => {
                self.on_refer_result(leg, code).await;
                return;
            }
            UaEvent::ReferNotify {
                leg,
                status_code,
                terminated,
            } => {
                self.on_refer_notify(leg, status_code, terminated).await;
                return;
            }
            UaEvent::Refer {
                leg, id, refer_to, ..
            } => {
                self.on_refer(leg, id, &refer_to).await;
                return;
            }
            ref ev
                if self
                    .transfer
                    .as_ref()
                    .is_some_and(|t| event_leg(ev) == Some(t.new_leg)) =>
            {
                self.on_transfer_event(ev.clone()).await;
                return;
            }
            // Leg B (the callee); events of a leg we already gave up on are ignored.
            UaEvent::DialogEstablished { leg, snapshot } if Some(leg) == self.b_leg => {
                self.dialogs.b_established(*snapshot);
                return;
            }
            UaEvent::Progress {
                leg, code, body, ..
            } if Some(leg) == self.b_leg => {
                let early_media = body.as_ref().is_some_and(|b| self.b_answered_media(b));
                TransitInput::BProgress { code, early_media }
            }
            UaEvent::Answered { leg, body } if Some(leg) == self.b_leg => {
                if let Some(b) = &body {
                    self.b_answered_media(b);
                }
                if !self.b_media {
                    tracing::warn!("callee answered without usable SDP; media one-way at best");
                }
                self.media_seen = (0, now);
                self.media_check = self.media_timeout().map(|t| now + t);
                TransitInput::BAnswered
            }
            UaEvent::Failed {
                leg, code, reason, ..
            } if Some(leg) == self.b_leg => {
                self.out_slot = None;
                TransitInput::BFailed { code, reason }
            }
            UaEvent::Cancelled { leg } if Some(leg) == self.b_leg => TransitInput::BCancelled,
            UaEvent::Terminated { leg, by_remote, .. } if Some(leg) == self.b_leg => {
                TransitInput::BTerminated { by_remote }
            }
            _ => return,
        };
        self.machine.handle(now, input);
    }

    /// The far end of one leg asks us (REFER) to connect the other party elsewhere: we call
    /// the target (routed like a new call from the source trunk) and, once it answers, it
    /// takes the referrer's place on the bridge; the referrer hears NOTIFYs and our BYE.
    async fn on_refer(&mut self, leg: sip::ua::LegRef, id: u64, refer_to: &str) {
        let side = if leg == self.a_leg {
            Side::A
        } else if Some(leg) == self.b_leg {
            Side::B
        } else {
            return;
        };
        // Refused with the code already: nothing more to do here.
        let _ = self.transfer_to(side, Some((leg, id)), refer_to).await;
    }

    /// Calls `refer_to` (routed like a new call from the source trunk) to take `side`'s
    /// place on the bridge once it answers. `refer`: the REFER that asked for it (answered
    /// here; the referrer hears NOTIFYs); without one (an API transfer) nobody is
    /// notified. `self.transfer` is set when the target is being called.
    async fn transfer_to(
        &mut self,
        side: Side,
        refer: Option<(sip::ua::LegRef, u64)>,
        refer_to: &str,
    ) -> Result<(), u16> {
        let Some(leg) = (match side {
            Side::A => Some(self.a_leg),
            Side::B => self.b_leg,
        }) else {
            return Err(481);
        };
        let refuse = |code: u16| {
            if let Some((leg, id)) = refer {
                let _ = self
                    .shared
                    .ua
                    .send(sip::ua::UaCommand::ReferResponse { leg, id, code });
            }
        };
        if self.record.status != crate::model::CallStatus::InProgress
            || self.transfer.is_some()
            || self.xfer_pending()
        {
            refuse(491);
            return Err(491);
        }
        let target = super::inbound::uri_user(refer_to.trim_matches(|c| c == '<' || c == '>'))
            .unwrap_or_default()
            .to_owned();
        let source = self.record.metadata["source_trunk"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let decision = self
            .shared
            .inbound
            .route_number(&source, &self.from, &target);
        let trunk = match &decision.route {
            dialplan::plan::Route::Trunks(names) => names.first().and_then(|n| {
                self.shared
                    .inbound
                    .trunks()
                    .iter()
                    .find(|t| &t.config.name == n)
                    .cloned()
            }),
            _ => None,
        };
        let (Some(trunk), Some(to), Some(bridge)) = (trunk, decision.to_e164, &self.bridge) else {
            tracing::warn!(%refer_to, route = ?decision.route, "transfer target not routable");
            refuse(603);
            return Err(603);
        };
        let Ok(slot) = trunk.reserve_outbound(Instant::now()) else {
            refuse(503);
            return Err(503);
        };
        let Ok(addr) = trunk.resolve().await else {
            refuse(503);
            return Err(503);
        };
        refuse(202);
        // The new party's RTP may come from its trunk's address (the old party is latched
        // already and keeps its place until the answer moves the side).
        bridge.set_signalling_ip(side, Some(addr.ip()));
        let media_ip = self.shared.advertise.media_ip_for(addr.ip());
        // The target's trunk's codecs, the party that stays first (pass-through if it can).
        let staying = match side {
            Side::B => Some(self.a_codec),
            Side::A => self
                .b_local
                .as_ref()
                .and_then(|o| o.codecs.first().copied()),
        };
        let codecs = match staying {
            Some(c) => preferring(&trunk.codecs(), c),
            None => trunk.codecs(),
        };
        let offer = with_codecs(
            local_offer(
                &self.shared.config,
                media_ip,
                bridge.local_addr(side).port(),
            ),
            &codecs,
        );
        let new_leg = self.shared.next_leg();
        if let Some(tx) = self.shared.legs.get(&self.a_leg).map(|e| e.value().clone()) {
            self.shared.legs.insert(new_leg, tx);
        }
        let host = super::task::public_ip_for_uri(self.shared.advertise.sip_ip_for(addr.ip()));
        self.send(sip::ua::UaCommand::Invite {
            leg: new_leg,
            target: sip::ua::Target {
                request_uri: trunk.request_uri(to.as_str()),
                addr,
                transport: trunk.sip_transport(),
            },
            from_uri: format!("sip:{}@{host}", self.from),
            from_display: None,
            to_uri: format!("sip:{}@{}:{}", to, trunk.uri.host, trunk.uri.port),
            body: Some(sdp_body(media::sdp::build_offer(&offer))),
            credentials: trunk.credentials(),
            extra_headers: Vec::new(),
            call_id: None,
        });
        tracing::info!(?side, target = %to, trunk = %trunk.config.name, "transfer: calling the target");
        self.transfer = Some(Transfer {
            side,
            referrer: leg,
            notify: refer.is_some(),
            new_leg,
            offer,
            slot,
            dialog: None,
        });
        Ok(())
    }

    async fn on_transfer_event(&mut self, ev: sip::ua::UaEvent) {
        use sip::ua::UaEvent;
        if let UaEvent::DialogEstablished { snapshot, .. } = ev {
            if let Some(t) = &mut self.transfer {
                t.dialog = Some(*snapshot);
            }
            return;
        }
        let Some(t) = &self.transfer else {
            return;
        };
        let (referrer, notifies) = (t.referrer, t.notify);
        let notify = |code: u16, reason: &str, terminated: bool| {
            notifies.then(|| sip::ua::UaCommand::Notify {
                leg: referrer,
                status_code: code,
                reason: reason.to_owned(),
                terminated,
            })
        };
        match ev {
            // The UA sent `100 Trying` with the 202; the referrer hears the outcome next.
            UaEvent::Progress { .. } => {}
            UaEvent::Answered { body, .. } => {
                let params = body
                    .as_ref()
                    .and_then(|b| media::sdp::negotiate_answer(&t.offer, &b.bytes).ok());
                if let (Some(bridge), Some(p)) = (&self.bridge, params)
                    && let Ok(side) = SideParams::try_from(&p)
                {
                    bridge.set_side(t.side, side);
                    bridge.update_remote(t.side, p.remote);
                    bridge.set_direction(t.side, p.direction);
                }
                if let Some(n) = notify(200, "OK", true) {
                    self.send(n);
                }
                self.send(sip::ua::UaCommand::Bye { leg: t.referrer });
                let (side, new_leg, referrer) = (t.side, t.new_leg, t.referrer);
                match side {
                    Side::A => self.a_leg = new_leg,
                    Side::B => self.b_leg = Some(new_leg),
                }
                self.hold.reset(side);
                self.shared.legs.remove(&referrer);
                let done = self.transfer.take();
                if let Some(d) = done.as_ref().and_then(|t| t.dialog.clone()) {
                    let json = self.dialogs.replaced(side == Side::A, d);
                    Arc::make_mut(&mut self.record).sip_dialog = json;
                    if let Err(e) = self.shared.store.update_call(&self.record, None).await {
                        self.shared.metrics.store_error();
                        tracing::warn!(error = %e, "cannot store the transfer target's dialog");
                    }
                }
                self.out_slot = done.map(|t| t.slot);
                Arc::make_mut(&mut self.record).metadata["transferred"] = serde_json::json!(true);
                tracing::info!(?side, "transfer done: the target replaced the referrer");
                self.transfer_event("succeeded", 200, side.other(), "dial")
                    .await;
            }
            UaEvent::Failed { code, reason, .. } => {
                if let Some(n) = notify(code, &reason, true) {
                    self.send(n);
                }
                let side = t.side;
                self.shared.legs.remove(&t.new_leg);
                self.transfer = None;
                tracing::warn!(code, "transfer target failed; the call goes on");
                self.transfer_event("failed", code, side.other(), "dial")
                    .await;
            }
            _ => {}
        }
    }

    /// B's SDP (in a 18x or the 2xx): point the bridge's B side at it. True when usable.
    fn b_answered_media(&mut self, body: &sip::ua::Body) -> bool {
        let (Some(offer), Some(bridge)) = (&self.b_local, &self.bridge) else {
            return false;
        };
        match media::sdp::negotiate_answer(offer, &body.bytes) {
            Ok(params) => match SideParams::try_from(&params) {
                Ok(side) => {
                    bridge.set_side(Side::B, side);
                    bridge.set_direction(Side::B, params.direction);
                    self.b_media = true;
                    tracing::info!(remote = %params.remote, codec = ?params.codec, "callee media");
                    self.follow_b_codec(params.codec);
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "callee codec not relayable");
                    false
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "callee SDP unusable");
                false
            }
        }
    }

    /// The callee chose `b_codec`, not the caller's: if the caller offered it too (and its
    /// trunk allows it) and has not heard our answer yet, answer it in that codec instead,
    /// so the legs share a codec and the bridge passes media through untranscoded.
    fn follow_b_codec(&mut self, b_codec: media::sdp::Codec) {
        if self.a_sdp_sent || b_codec == self.a_codec || !self.a_local.codecs.contains(&b_codec) {
            return;
        }
        let local = with_codecs(
            self.a_local.clone(),
            &preferring(&self.a_local.codecs, b_codec),
        );
        let Ok((sdp, params)) = media::sdp::answer_offer(&self.a_offer, &local) else {
            return;
        };
        let (Some(bridge), Ok(side)) = (&self.bridge, SideParams::try_from(&params)) else {
            return;
        };
        if params.codec != b_codec {
            return; // The caller did not offer it.
        }
        bridge.set_side(Side::A, side);
        tracing::info!(from = ?self.a_codec, to = ?b_codec, "caller answered in the callee's codec");
        self.a_codec = b_codec;
        self.a_local = local;
        self.a_sdp = sdp;
    }

    /// A re-INVITE or UPDATE on either leg: answered here from our side of the bridge
    /// (hold gets the mirrored direction), and the bridge follows a new address or codec.
    fn answer_reoffer(&mut self, leg: sip::ua::LegRef, id: u64, body: Option<&sip::ua::Body>) {
        let side = if leg == self.a_leg {
            Side::A
        } else if Some(leg) == self.b_leg {
            Side::B
        } else {
            return;
        };
        let Some(bridge) = &self.bridge else {
            return;
        };
        let Some(body) = body else {
            // No offer (a refresh): repeat our current session description.
            let sdp = self.current_sdp(side);
            let _ = self.shared.ua.send(sip::ua::UaCommand::AnswerReoffer {
                leg,
                id,
                body: sdp.map(sdp_body),
            });
            return;
        };
        let port = bridge.local_addr(side).port();
        let base = match side {
            Side::A => Some(&mut self.a_local),
            Side::B => self.b_local.as_mut(),
        };
        let Some(base) = base else {
            // An offer on B before we ever offered there: cannot happen with a conforming
            // peer, but it must still be answered.
            let _ = self.shared.ua.send(sip::ua::UaCommand::RejectReoffer {
                leg,
                id,
                code: 491,
                reason: "Request Pending".to_owned(),
            });
            return;
        };
        let local = next_description(&self.shared.config, port, base);
        match media::sdp::answer_offer(&body.bytes, &local) {
            Ok((sdp, params)) => {
                if let Ok(p) = SideParams::try_from(&params) {
                    bridge.set_side(side, p);
                }
                tracing::info!(?side, direction = ?params.direction, remote = %params.remote, "re-offer answered");
                if side == Side::A {
                    self.a_sdp = sdp.clone();
                }
                let _ = self.shared.ua.send(sip::ua::UaCommand::AnswerReoffer {
                    leg,
                    id,
                    body: Some(sdp_body(sdp)),
                });
                self.mirror_hold(side, params.direction);
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

    fn current_sdp(&self, side: Side) -> Option<String> {
        match side {
            Side::A => Some(self.a_sdp.clone()),
            Side::B => self.b_local.as_ref().map(media::sdp::build_offer),
        }
    }

    async fn drain(&mut self) {
        while let Some(out) = self.machine.poll_output() {
            match out {
                TransitOutput::InviteB { index } => self.invite_b(index).await,
                TransitOutput::ProgressA { code, early_media } => {
                    let body = (early_media && self.b_media).then(|| sdp_body(self.a_sdp.clone()));
                    self.a_sdp_sent |= body.is_some();
                    let reason = if code == 183 {
                        "Session Progress"
                    } else {
                        "Ringing"
                    };
                    self.send(sip::ua::UaCommand::Progress {
                        leg: self.a_leg,
                        code,
                        reason: reason.to_owned(),
                        body,
                    });
                }
                TransitOutput::AnswerA => {
                    self.a_sdp_sent = true;
                    self.send(sip::ua::UaCommand::Answer {
                        leg: self.a_leg,
                        body: Some(sdp_body(self.a_sdp.clone())),
                    });
                }
                TransitOutput::RejectA { code, reason } => self.send(sip::ua::UaCommand::Reject {
                    leg: self.a_leg,
                    code,
                    reason,
                    headers: Vec::new(),
                }),
                TransitOutput::CancelB => {
                    if let Some(leg) = self.b_leg {
                        self.send(sip::ua::UaCommand::Cancel { leg });
                    }
                }
                TransitOutput::ByeA => self.send(sip::ua::UaCommand::Bye { leg: self.a_leg }),
                TransitOutput::ByeB => {
                    if let Some(leg) = self.b_leg {
                        self.send(sip::ua::UaCommand::Bye { leg });
                    }
                }
                TransitOutput::Status(change) => self.apply_status(change).await,
            }
        }
    }

    /// A listen-only stream of both parties (`inbound`: the caller, `outbound`: the
    /// callee), on an answered call; the media between them is not touched.
    fn start_stream(
        &mut self,
        spec: super::agent_stream::StreamSpec,
    ) -> Result<String, &'static str> {
        if self.stream.is_some() {
            return Err("a stream already runs on this call");
        }
        if self.record.status != crate::model::CallStatus::InProgress {
            return Err("the call is not answered");
        }
        let tx = self
            .shared
            .calls
            .get(&self.record.id)
            .map(|e| e.value().clone())
            .ok_or("the call is ending")?;
        let bridge = self.bridge.as_mut().ok_or("the call has no media")?;
        match super::agent_stream::start_on_bridge(&self.shared, &self.record, spec, bridge, tx) {
            Ok(stream) => {
                let id = stream.id.clone();
                tracing::info!(stream = %id, url = %stream.spec.url, "listen-only agent stream connecting");
                self.stream = Some(stream);
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the agent stream");
                Err("the stream could not start")
            }
        }
    }

    async fn on_stream_event(&mut self, stream_id: &str, event: crate::streams::StreamEvent) {
        let Some(stream) = self.stream.as_ref().filter(|s| s.id == stream_id) else {
            return;
        };
        let hangup = super::agent_stream::report(&self.shared, &self.record, stream, &event).await;
        if matches!(event, crate::streams::StreamEvent::Ended(_)) {
            self.stream = None;
            if let Some(bridge) = self.bridge.as_mut() {
                bridge.stop_listening();
            }
        }
        if hangup.is_some() {
            self.machine.handle(Instant::now(), TransitInput::Hangup);
        }
    }

    fn send(&self, cmd: sip::ua::UaCommand) {
        if self.shared.ua.send(cmd).is_err() {
            tracing::error!("SIP driver gone");
        }
    }

    /// INVITE on the trunk `index`, from a fresh leg; a trunk that is down or over its
    /// limits counts as a 503 (so the machine fails over).
    async fn invite_b(&mut self, index: usize) {
        let now = Instant::now();
        if let Some(old) = self.b_leg.take() {
            self.shared.legs.remove(&old);
        }
        self.out_slot = None;
        self.b_media = false;
        let Some(trunk) = self.trunks.get(index).cloned() else {
            return;
        };
        Arc::make_mut(&mut self.record).trunk = Some(trunk.config.name.clone());
        let slot = match trunk.reserve_outbound(now) {
            Ok(s) => s,
            Err(why) => {
                tracing::warn!(trunk = %trunk.config.name, reason = why.as_str(), "trunk skipped");
                self.shared.metrics.trunk_skipped();
                self.machine.handle(
                    now,
                    TransitInput::BUnavailable {
                        reason: why.as_str().to_owned(),
                    },
                );
                return;
            }
        };
        let addr = match trunk.resolve().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(trunk = %trunk.config.name, error = %e, "trunk address does not resolve");
                self.machine.handle(
                    now,
                    TransitInput::BUnavailable {
                        reason: "Trunk Unreachable".to_owned(),
                    },
                );
                return;
            }
        };
        let Some(bridge) = &self.bridge else {
            return;
        };
        // The callee's RTP comes from its SDP address or its trunk's.
        bridge.set_signalling_ip(Side::B, Some(addr.ip()));
        let media_ip = self.shared.advertise.media_ip_for(addr.ip());
        // The caller's codec first: with the same codec on both legs the bridge only
        // rewrites headers.
        let offer = with_codecs(
            local_offer(
                &self.shared.config,
                media_ip,
                bridge.local_addr(Side::B).port(),
            ),
            &preferring(&trunk.codecs(), self.a_codec),
        );
        let sdp = media::sdp::build_offer(&offer);
        self.b_local = Some(offer);
        let leg = self.shared.next_leg();
        if let Some(tx) = self.shared.legs.get(&self.a_leg).map(|e| e.value().clone()) {
            self.shared.legs.insert(leg, tx);
        }
        self.b_leg = Some(leg);
        self.out_slot = Some(slot);
        let host = super::task::public_ip_for_uri(self.shared.advertise.sip_ip_for(addr.ip()));
        let mut extra = vec![sip::msg::Header::new(
            "Max-Forwards",
            self.max_forwards.saturating_sub(1).to_string(),
        )];
        if let Some(pai) = &self.asserted_identity {
            extra.push(sip::msg::Header::new("P-Asserted-Identity", pai.clone()));
        }
        self.send(sip::ua::UaCommand::Invite {
            leg,
            target: sip::ua::Target {
                request_uri: trunk.request_uri(&self.to),
                addr,
                transport: trunk.sip_transport(),
            },
            from_uri: format!("sip:{}@{host}", self.from),
            from_display: None,
            to_uri: format!("sip:{}@{}:{}", self.to, trunk.uri.host, trunk.uri.port),
            body: Some(sdp_body(sdp)),
            credentials: trunk.credentials(),
            extra_headers: extra,
            call_id: None,
        });
        tracing::info!(trunk = %trunk.config.name, %addr, to = %self.to, attempt = index + 1, "transit INVITE sent");
    }

    fn media_timeout(&self) -> Option<Duration> {
        let secs = self.shared.config.rtp.media_timeout_s;
        (secs > 0).then(|| Duration::from_secs(secs))
    }

    /// Neither side sent RTP for the media timeout: end the call.
    fn check_media(&mut self, now: Instant) {
        let (Some(timeout), Some(bridge)) = (self.media_timeout(), &self.bridge) else {
            self.media_check = None;
            return;
        };
        let seen =
            bridge.counters(Side::A).received_packets + bridge.counters(Side::B).received_packets;
        // A call on hold may carry no RTP at all (inactive) for as long as it likes.
        if seen != self.media_seen.0 || self.hold.on_hold() {
            self.media_seen = (seen, now);
        }
        if now.saturating_duration_since(self.media_seen.1) >= timeout {
            tracing::warn!(
                timeout_s = timeout.as_secs(),
                "no RTP on either leg: ending the call"
            );
            self.media_check = None;
            self.machine.handle(now, TransitInput::MediaTimeout);
        } else {
            // Polled at a fraction of the timeout: a counter has no "last packet" instant.
            self.media_check = Some(now + (timeout / 4).max(Duration::from_millis(250)));
        }
    }

    /// A digit crossed the bridge (it was relayed as RFC 4733 to the other side too).
    async fn on_dtmf(&mut self, side: Side, d: media::dtmf::DtmfEvent) {
        let clock = self.bridge.as_ref().map_or(8000, |b| b.clock_rate(side));
        let duration_ms = d.duration_ms(clock);
        let from = if side == Side::A { "caller" } else { "callee" };
        tracing::info!(digit = %d.digit, duration_ms, from, "DTMF relayed");
        let extra = serde_json::json!({
            "digit": d.digit.to_string(),
            "duration_ms": duration_ms,
            "from": from,
        });
        record_event(&self.shared, &self.record, "call.dtmf", extra).await;
    }

    async fn apply_status(&mut self, change: StatusChange) {
        let r = Arc::make_mut(&mut self.record);
        apply_change(r, &change, Utc::now());
        if change.status == crate::model::CallStatus::InProgress {
            r.sip_dialog = self.dialogs.answered_json();
            if r.record
                && let Some(bridge) = self.bridge.as_mut()
            {
                start_recording(&self.shared.config, &r.id, bridge);
            }
        }
        if change.status.is_terminal()
            && let Some(bridge) = self.bridge.take()
        {
            let (counters, stats, recording) = bridge.close_with_recording().await;
            let (packets, bytes) = super::live_media::apply(r, &counters, &stats);
            self.shared.metrics.rtp(packets, bytes);
            match recording {
                Some(Ok(outcome)) => {
                    tracing::info!(
                        path = %outcome.info.path.display(),
                        duration_ms = outcome.info.duration_ms,
                        "recording finished"
                    );
                    r.recording_url = Some(super::task::recording_url(&self.shared.config, &r.id));
                }
                Some(Err(e)) => tracing::warn!(error = %e, "recording failed"),
                None => {}
            }
        }
        persist_status(&self.shared, &self.record, change.status).await;
        tracing::info!(status = change.status.as_str(), sip_code = ?change.sip_code, "status");
    }
}

/// Records both parties into `{recordings.dir}/{call_id}.wav` (left: the caller, right:
/// the callee); a failure is logged and the call goes on unrecorded.
fn start_recording(
    config: &crate::config::Config,
    call_id: &str,
    bridge: &mut media::net::bridge::Bridge,
) {
    let dir = &config.recordings.dir;
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create recordings dir; not recording");
        return;
    }
    let path = dir.join(format!("{call_id}.wav"));
    match bridge.start_recording(&path) {
        Ok(()) => tracing::info!(path = %path.display(), "recording both parties"),
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot record"),
    }
}

fn event_leg(ev: &sip::ua::UaEvent) -> Option<sip::ua::LegRef> {
    use sip::ua::UaEvent;
    match ev {
        UaEvent::Progress { leg, .. }
        | UaEvent::Answered { leg, .. }
        | UaEvent::Failed { leg, .. }
        | UaEvent::Terminated { leg, .. }
        | UaEvent::Cancelled { leg }
        | UaEvent::DialogEstablished { leg, .. } => Some(*leg),
        _ => None,
    }
}
