//! Number masking on the switching core. A call to a proxy number is a transit call whose
//! leg B the session picks: the other participant, through its proxy number's trunk, with
//! that proxy number as the caller. A message to a proxy number is relayed the same way
//! over SIP MESSAGE (RFC 3428).
//!
//! Nothing of the caller's INVITE is copied to leg B: the transit task builds B's INVITE
//! from the numbers given here (From, P-Asserted-Identity), with its own Call-ID, Contact
//! and SDP, so the caller's number reaches B in no header and no SDP line.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{mpsc, oneshot};

use super::metrics::InboundOutcome;
use super::task::{TaskInput, sdp_body};
use super::transit_task::{TransitSetup, TransitTask};
use super::trunk::{Trunk, TrunkSlot};
use super::{CALL_QUEUE, Shared};
use crate::model::{CallRecord, CallStatus};
use crate::proxy::{
    Capability, ProxyInteraction, ProxyLookup, ProxySession, SessionMode, UnknownCaller,
};

/// How long an announcement may hold a caller at most, past its own length.
const ANNOUNCEMENT_SLACK: Duration = Duration::from_secs(2);
/// A message relay waits this long for the far end's final response (Timer F is 32 s).
const MESSAGE_RESULT_WAIT: Duration = Duration::from_secs(40);

/// An INVITE the dialplan routed to a proxy number.
#[derive(Debug)]
pub(super) struct ProxyCall {
    pub leg: sip::ua::LegRef,
    pub offer: sip::ua::Body,
    pub request: Box<sip::msg::Request>,
    pub local_tag: String,
    pub source: std::net::SocketAddr,
    pub transport: sip::ua::Transport,
    pub source_trunk: Trunk,
    pub source_slot: TrunkSlot,
    /// The proxy number dialled, and the caller's number (E.164).
    pub proxy_number: String,
    pub caller: String,
}

/// Registers the leg (a CANCEL right behind the INVITE finds its owner) and looks the
/// session up in a task: the router must not wait on the database.
pub(super) fn start_call(shared: &Shared, call: ProxyCall) {
    let (tx, rx) = mpsc::channel(CALL_QUEUE);
    shared.legs.insert(call.leg, tx.clone());
    let shared = shared.clone();
    tokio::spawn(async move { run_call(shared, call, tx, rx).await });
}

fn reject(shared: &Shared, leg: sip::ua::LegRef, code: u16, reason: &str) {
    shared.legs.remove(&leg);
    let _ = shared.ua.send(sip::ua::UaCommand::Reject {
        leg,
        code,
        reason: reason.to_owned(),
        headers: Vec::new(),
    });
}

fn voice(mode: SessionMode) -> bool {
    mode != SessionMode::Messaging
}

async fn run_call(
    shared: Shared,
    call: ProxyCall,
    tx: mpsc::Sender<TaskInput>,
    rx: mpsc::Receiver<TaskInput>,
) {
    let now = Utc::now();
    let lookup = shared
        .store
        .lookup_proxy(&call.proxy_number, &call.caller, now)
        .await;
    let unknown = match lookup {
        Err(e) => {
            shared.metrics.store_error();
            tracing::error!(error = %e, "proxy session lookup failed; refusing the call");
            shared.metrics.inbound(InboundOutcome::Failed);
            reject(&shared, call.leg, 503, "Service Unavailable");
            return;
        }
        Ok(ProxyLookup::Open { session, from }) if voice(session.mode) => {
            bridge(shared, call, session, from, tx, rx).await;
            return;
        }
        Ok(ProxyLookup::Open { session, .. }) => {
            tracing::info!(session = %session.id, "masked call refused: the session is messaging only");
            Some(session.unknown_caller)
        }
        Ok(ProxyLookup::NoSession { last, .. }) => last.map(|s| s.unknown_caller),
        Ok(ProxyLookup::NotProxy) => None,
    };
    shared.metrics.inbound(InboundOutcome::Rejected);
    let choice = unknown.unwrap_or_else(|| UnknownCaller {
        sip_code: shared.config.proxy.unknown_caller_sip_code,
        announcement: shared.config.proxy.unknown_caller_announcement.clone(),
    });
    tracing::info!(
        proxy_number = %call.proxy_number,
        sip_code = choice.sip_code,
        announcement = ?choice.announcement,
        "call to a proxy number from a caller in no open session: not connected"
    );
    if let Some(name) = &choice.announcement {
        announce(&shared, &call, name, rx).await;
    }
    let reason = sip::msg::default_reason(choice.sip_code);
    reject(&shared, call.leg, choice.sip_code, reason);
}

/// Plays `name` to the caller as early media (183 with our SDP) until it ends, the
/// caller hangs up, or it has run too long.
async fn announce(
    shared: &Shared,
    call: &ProxyCall,
    name: &str,
    mut rx: mpsc::Receiver<TaskInput>,
) {
    let path = shared.config.proxy.announcements_dir.join(name);
    let clip = match tokio::task::spawn_blocking(move || media::source::Clip::load_wav(&path)).await
    {
        Ok(Ok(clip)) => clip,
        Ok(Err(e)) => {
            tracing::warn!(announcement = name, error = %e, "cannot play the announcement");
            return;
        }
        Err(_) => return,
    };
    let bind_ip = shared.config.rtp_bind_ip();
    let media_ip = shared.advertise.media_ip_for_offer(&call.offer.bytes);
    let Ok(endpoint) = media::net::RtpEndpoint::open(&shared.ports, bind_ip) else {
        tracing::warn!("no RTP port for an announcement");
        return;
    };
    let local = super::codecs::with_codecs(
        super::task::local_offer(&shared.config, media_ip, endpoint.local_addr().port()),
        &call.source_trunk.codecs(),
    );
    let Ok((sdp, params)) = media::sdp::answer_offer(&call.offer.bytes, &local) else {
        endpoint.close().await;
        return;
    };
    let rate = params.codec.audio_codec().sample_rate();
    let clip = match clip.resampled(rate) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(announcement = name, error = %e, "cannot resample the announcement");
            endpoint.close().await;
            return;
        }
    };
    let longest = Duration::from_millis(clip.duration_ms()) + ANNOUNCEMENT_SLACK;
    endpoint.connect_from(params, Some(call.source.ip()));
    let _ = shared.ua.send(sip::ua::UaCommand::Progress {
        leg: call.leg,
        code: 183,
        reason: "Session Progress".to_owned(),
        body: Some(sdp_body(sdp)),
    });
    let (player, done) = media::source::ClipPlayer::new(clip);
    endpoint.play(Box::new(player));
    let caller_gone = async {
        while let Some(input) = rx.recv().await {
            if let TaskInput::Sip(
                sip::ua::UaEvent::Terminated { .. } | sip::ua::UaEvent::Cancelled { .. },
            ) = input
            {
                return;
            }
        }
    };
    tokio::select! {
        r = done => tracing::info!(played = r.is_ok(), "announcement ended"),
        _ = caller_gone => tracing::info!("caller left during the announcement"),
        _ = tokio::time::sleep(longest) => tracing::info!("announcement cut: it ran too long"),
    }
    endpoint.close().await;
}

/// Connects the caller (participant `from`) to the other participant of `session`.
async fn bridge(
    shared: Shared,
    call: ProxyCall,
    session: ProxySession,
    from: usize,
    tx: mpsc::Sender<TaskInput>,
    rx: mpsc::Receiver<TaskInput>,
) {
    let caller = &session.participants[from];
    let callee = &session.participants[1 - from];
    let now = Utc::now();
    let out = match shared
        .store
        .get_proxy_number(&session.tenant, &callee.proxy_number, now)
        .await
    {
        Ok(Some(n)) if n.has(Capability::Voice) => n,
        Ok(_) => {
            tracing::warn!(number = %callee.proxy_number, "the callee's proxy number is gone or not for voice");
            shared.metrics.inbound(InboundOutcome::Rejected);
            reject(&shared, call.leg, 404, "Not Found");
            return;
        }
        Err(e) => {
            shared.metrics.store_error();
            tracing::error!(error = %e, "proxy number lookup failed");
            shared.metrics.inbound(InboundOutcome::Failed);
            reject(&shared, call.leg, 503, "Service Unavailable");
            return;
        }
    };
    let Some(trunk) = shared
        .inbound
        .trunks()
        .iter()
        .find(|t| t.config.name == out.trunk)
        .cloned()
    else {
        tracing::warn!(trunk = %out.trunk, number = %out.number, "a proxy number's trunk is not configured");
        shared.metrics.inbound(InboundOutcome::Failed);
        reject(&shared, call.leg, 503, "Service Unavailable");
        return;
    };
    let calls_cfg = &shared.config.calls;
    let created = chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
    let webhook_url = session.webhook_url.clone().or_else(|| {
        shared
            .config
            .tenants
            .iter()
            .find(|t| t.name == session.tenant)
            .and_then(|t| t.webhook_url.clone())
    });
    let record = Arc::new(CallRecord {
        id: format!(
            "call_{}",
            ulid::Ulid::new().to_string().to_ascii_lowercase()
        ),
        tenant: session.tenant.clone(),
        direction: "inbound".to_owned(),
        to: callee.number.clone(),
        from: caller.number.clone(),
        agent_id: None,
        status: CallStatus::Initiating,
        record: session.record,
        recording_url: None,
        webhook_url,
        max_duration: session
            .max_call_duration
            .unwrap_or(calls_cfg.default_max_duration as i64),
        ring_timeout: calls_cfg.default_ring_timeout as i64,
        metadata: serde_json::json!({
            "source_trunk": call.source_trunk.config.name,
            "route": "proxy",
            "proxy_number": caller.proxy_number,
            "outbound_proxy_number": callee.proxy_number,
        }),
        trunk: Some(trunk.config.name.clone()),
        sip_call_id: call.request.headers.call_id().map(str::to_owned),
        sip_code: None,
        sip_reason: None,
        q850_cause: None,
        end_reason: None,
        rtp_packets_received: 0,
        rtp_bytes_received: 0,
        rtp_packets_lost: 0,
        rtp_jitter_ms: None,
        mos: None,
        created_at: created,
        answered_at: None,
        ended_at: None,
        duration_seconds: None,
        sip_dialog: None,
        proxy_session_id: Some(session.id.clone()),
    });
    let request = call.request;
    let setup = TransitSetup {
        record: Arc::clone(&record),
        a_leg: call.leg,
        a_offer: call.offer,
        max_forwards: request.headers.max_forwards().unwrap_or(70),
        // The callee sees the proxy number only: From and P-Asserted-Identity.
        asserted_identity: Some(format!("<sip:{}@{}>", callee.proxy_number, trunk.uri.host)),
        from: callee.proxy_number.clone(),
        to: callee.number.clone(),
        trunks: vec![trunk],
        source_slot: Some(call.source_slot),
        a_allow: request.headers.get("Allow").map(str::to_owned),
        a_dialog: super::transit_dialogs::LegDialogs::new(
            request,
            call.local_tag,
            call.source,
            call.transport,
        ),
        a_codecs: call.source_trunk.codecs(),
    };
    let task = match TransitTask::new(shared.clone(), setup) {
        Ok(t) => t,
        Err((code, reason)) => {
            shared.metrics.inbound(InboundOutcome::Failed);
            reject(&shared, call.leg, code, reason);
            return;
        }
    };
    shared.metrics.inbound(InboundOutcome::Accepted);
    shared.metrics.call_started();
    shared.calls.insert(record.id.clone(), tx);
    if let Err(e) = super::task::record_created(&shared, &record).await {
        shared.metrics.store_error();
        tracing::error!(error = %e, "cannot record the masked call; refusing it");
        shared.calls.remove(&record.id);
        reject(&shared, call.leg, 500, "Server Internal Error");
        return;
    }
    let interaction = ProxyInteraction {
        id: format!("pi_{}", ulid::Ulid::new().to_string().to_ascii_lowercase()),
        session_id: session.id.clone(),
        tenant: session.tenant.clone(),
        kind: "voice".to_owned(),
        from_participant: caller.number.clone(),
        to_participant: callee.number.clone(),
        inbound_proxy_number: caller.proxy_number.clone(),
        outbound_proxy_number: callee.proxy_number.clone(),
        status: CallStatus::Initiating.as_str().to_owned(),
        call_id: Some(record.id.clone()),
        body_bytes: None,
        error: None,
        created_at: created,
        updated_at: created,
    };
    if let Err(e) = shared
        .store
        .put_proxy_interaction(&session, &interaction, true)
        .await
    {
        // The call goes on; its row names the session all the same.
        shared.metrics.store_error();
        tracing::error!(error = %e, "cannot record the masked call's interaction");
    }
    shared.webhooks.notify_one();
    tracing::info!(
        session = %session.id,
        call = %record.id,
        "masked call: bridging to the other participant"
    );
    drop(record);
    task.run(rx).await;
}

/// Why a message was not relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRefusal {
    /// Over `[proxy] max_message_bytes`.
    TooLarge {
        limit: usize,
    },
    /// No open session (of this tenant, for messaging) pairs the sender with the number.
    UnknownPair,
    /// The other participant's number or trunk cannot carry it.
    Unroutable(String),
    Store(String),
}

/// Relays `body` from `sender` (texting `proxy_number`) to the other participant of their
/// session, from that participant's proxy number, over SIP MESSAGE through its trunk.
/// Returns the interaction at once (`sending`); it becomes `delivered` or `failed` when
/// the far end answers, each change a `proxy.interaction` event.
pub(super) async fn relay_message(
    shared: &Shared,
    tenant: Option<&str>,
    proxy_number: &str,
    sender: &str,
    content_type: &str,
    body: bytes::Bytes,
) -> Result<ProxyInteraction, MessageRefusal> {
    let limit = shared.config.proxy.max_message_bytes;
    if body.len() > limit {
        return Err(MessageRefusal::TooLarge { limit });
    }
    let now = Utc::now();
    let lookup = shared
        .store
        .lookup_proxy(proxy_number, sender, now)
        .await
        .map_err(|e| MessageRefusal::Store(e.to_string()))?;
    let ProxyLookup::Open { session, from } = lookup else {
        return Err(MessageRefusal::UnknownPair);
    };
    if session.mode == SessionMode::Voice || tenant.is_some_and(|t| t != session.tenant) {
        return Err(MessageRefusal::UnknownPair);
    }
    let caller = session.participants[from].clone();
    let callee = session.participants[1 - from].clone();
    let out = shared
        .store
        .get_proxy_number(&session.tenant, &callee.proxy_number, now)
        .await
        .map_err(|e| MessageRefusal::Store(e.to_string()))?
        .filter(|n| n.has(Capability::Messaging))
        .ok_or_else(|| {
            MessageRefusal::Unroutable(format!(
                "proxy number {} cannot send messages",
                callee.proxy_number
            ))
        })?;
    let trunk = shared
        .inbound
        .trunks()
        .iter()
        .find(|t| t.config.name == out.trunk)
        .cloned()
        .ok_or_else(|| MessageRefusal::Unroutable(format!("trunk {} is gone", out.trunk)))?;
    let addr = trunk
        .resolve()
        .await
        .map_err(|e| MessageRefusal::Unroutable(format!("trunk {}: {e}", out.trunk)))?;
    let at = chrono::DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
    let mut interaction = ProxyInteraction {
        id: format!("pi_{}", ulid::Ulid::new().to_string().to_ascii_lowercase()),
        session_id: session.id.clone(),
        tenant: session.tenant.clone(),
        kind: "messaging".to_owned(),
        from_participant: caller.number.clone(),
        to_participant: callee.number.clone(),
        inbound_proxy_number: caller.proxy_number.clone(),
        outbound_proxy_number: callee.proxy_number.clone(),
        status: "sending".to_owned(),
        call_id: None,
        body_bytes: Some(body.len() as i64),
        error: None,
        created_at: at,
        updated_at: at,
    };
    shared
        .store
        .put_proxy_interaction(&session, &interaction, true)
        .await
        .map_err(|e| MessageRefusal::Store(e.to_string()))?;
    shared.webhooks.notify_one();
    let msg = shared.next_leg();
    let (done_tx, done_rx) = oneshot::channel();
    shared.messages.insert(msg, done_tx);
    let host = super::task::public_ip_for_uri(shared.advertise.sip_ip_for(addr.ip()));
    let _ = shared.ua.send(sip::ua::UaCommand::Message {
        msg,
        target: sip::ua::Target {
            request_uri: trunk.request_uri(&callee.number),
            addr,
            transport: trunk.sip_transport(),
        },
        from_uri: format!("sip:{}@{host}", callee.proxy_number),
        to_uri: format!(
            "sip:{}@{}:{}",
            callee.number, trunk.uri.host, trunk.uri.port
        ),
        content_type: content_type.to_owned(),
        body,
        credentials: trunk.credentials(),
        extra_headers: vec![sip::msg::Header::new(
            "P-Asserted-Identity",
            format!("<sip:{}@{}>", callee.proxy_number, trunk.uri.host),
        )],
    });
    tracing::info!(session = %session.id, interaction = %interaction.id, trunk = %trunk.config.name, "masked message relayed");
    let returned = interaction.clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let result = tokio::time::timeout(MESSAGE_RESULT_WAIT, done_rx).await;
        shared.messages.remove(&msg);
        let (status, error) = match result {
            Ok(Ok((code, _))) if (200..300).contains(&code) => ("delivered", None),
            Ok(Ok((code, reason))) => ("failed", Some(format!("{code} {reason}"))),
            _ => ("failed", Some("no final response".to_owned())),
        };
        interaction.status = status.to_owned();
        interaction.error = error;
        interaction.updated_at = Utc::now();
        if let Err(e) = shared
            .store
            .put_proxy_interaction(&session, &interaction, false)
            .await
        {
            shared.metrics.store_error();
            tracing::error!(error = %e, "cannot record a message's outcome");
        }
        shared.webhooks.notify_one();
        tracing::info!(interaction = %interaction.id, status, "masked message outcome");
    });
    Ok(returned)
}

/// A MESSAGE from a trunk: admitted as an INVITE would be, then relayed when the
/// sender and the number it texted name an open session.
pub(super) fn on_message(shared: &Shared, event: sip::ua::UaEvent) {
    let sip::ua::UaEvent::MessageIn {
        msg,
        source,
        request,
        body,
        ..
    } = event
    else {
        return;
    };
    let respond = move |shared: &Shared, code: u16| {
        let _ = shared.ua.send(sip::ua::UaCommand::MessageResponse {
            msg,
            code,
            reason: sip::msg::default_reason(code).to_owned(),
        });
    };
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The same gate as an INVITE's: a banned source is not looked at, and a wrong
    // digest answer counts towards its ban (a MESSAGE is no side door for guessing).
    if shared.auth_guard.gate_source(source.ip(), now_secs) == super::auth_guard::Gate::Banned {
        respond(shared, 403);
        return;
    }
    let index = match shared
        .inbound
        .admit(source.ip(), &request, now_secs, &shared.auth_guard)
    {
        super::inbound::Admission::Trunk(i) => i,
        super::inbound::Admission::AuthFailed { user, .. } => {
            shared
                .auth_guard
                .failed(source.ip(), user.as_deref(), now_secs);
            respond(shared, 403);
            return;
        }
        _ => {
            respond(shared, 403);
            return;
        }
    };
    let Some(trunk) = shared.inbound.trunks().get(index).cloned() else {
        respond(shared, 403);
        return;
    };
    let decision = shared
        .inbound
        .route(&trunk.config.name, &request, Utc::now());
    let (Some(to), Some(from)) = (decision.to_e164, decision.from_e164) else {
        respond(shared, 404);
        return;
    };
    let Some(body) = body else {
        respond(shared, 400);
        return;
    };
    if !body.content_type.to_ascii_lowercase().starts_with("text/") {
        respond(shared, 415);
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let code = match relay_message(
            &shared,
            None,
            to.as_str(),
            from.as_str(),
            &body.content_type,
            body.bytes,
        )
        .await
        {
            Ok(_) => 202,
            Err(MessageRefusal::TooLarge { .. }) => 413,
            Err(MessageRefusal::UnknownPair) => 404,
            Err(MessageRefusal::Unroutable(why)) => {
                tracing::warn!(reason = why, "masked message not relayed");
                503
            }
            Err(MessageRefusal::Store(e)) => {
                shared.metrics.store_error();
                tracing::error!(error = e, "masked message lookup failed");
                500
            }
        };
        respond(&shared, code);
    });
}

/// The far end's final response to a MESSAGE we relayed.
pub(super) fn on_message_result(shared: &Shared, msg: u64, code: u16, reason: String) {
    if let Some((_, tx)) = shared.messages.remove(&msg) {
        let _ = tx.send((code, reason));
    }
}
