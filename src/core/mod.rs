//! The switching core: one task per call, a registry to find them, and the routers that
//! carry SIP events from the user agent to the call that owns the leg.
//!
//! ```text
//!   api ──originate/hangup──► Switch ──spawn──► CallTask (owns Call + RtpEndpoint)
//!                                │                 ▲   │
//!                       legs: LegRef → task        │   └─ UaCommand ─► sip::net driver
//!                                └──── UaEvent ────┘                      │
//!                                                                   UDP/TCP sockets
//! ```
//! Durable facts (the call row and its callback events) go through `Store` in one
//! transaction per status change; the webhook deliverer is nudged after each.

pub mod advertise;
pub mod agent_stream;
pub mod auth_guard;
pub mod call;
pub mod codecs;
pub mod dialog;
mod handoff;
pub mod inbound;
mod incoming;
mod live_media;
pub mod masked;
pub mod metrics;
pub mod status;
pub mod task;
pub mod tenant_policy;
pub mod transfer;
pub mod transit;
mod transit_dialogs;
pub mod transit_task;
pub mod trunk;
pub mod trunk_watch;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::model::{CallRecord, CallStatus, NewEvent};
use crate::store::{Store, StoreError};
use task::{CallTask, TaskInput};
use trunk::Trunk;

/// What the API asks for when it places a call (already validated for shape).
#[derive(Clone, Debug)]
pub struct OriginateRequest {
    pub to: String,
    pub from: String,
    pub agent_id: Option<String>,
    pub webhook_url: Option<String>,
    pub record: bool,
    pub max_duration: Option<u64>,
    pub ring_timeout: Option<u64>,
    pub metadata: serde_json::Value,
    /// Stream the call's audio to (and from) an agent's WebSocket once answered.
    pub stream: Option<agent_stream::StreamSpec>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    #[error("{0} is not a caller id this account owns")]
    UnknownCallerId(String),
    #[error("call not found")]
    NotFound,
    #[error("call has already ended")]
    AlreadyEnded(Box<CallRecord>),
    #[error("no RTP ports free")]
    NoMediaPorts,
    #[error("the switch is busy; retry")]
    Overloaded,
    #[error("{0}")]
    NotTransferable(&'static str),
    #[error("{0}")]
    NotStreamable(&'static str),
    #[error(transparent)]
    Refused(#[from] tenant_policy::Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Handles the call tasks share.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub webhooks: Arc<tokio::sync::Notify>,
    pub ua: sip::net::UaHandle,
    pub ports: media::net::PortPool,
    pub legs: Arc<DashMap<sip::ua::LegRef, mpsc::Sender<TaskInput>>>,
    pub calls: Arc<DashMap<String, mpsc::Sender<TaskInput>>>,
    pub metrics: Arc<metrics::Metrics>,
    pub inbound: Arc<inbound::Inbound>,
    /// Which of our addresses each peer is told.
    pub advertise: Arc<advertise::Advertise>,
    /// What tenants' API calls may dial, and how many at once.
    pub tenant_policy: Arc<tenant_policy::TenantPolicy>,
    /// Bans and slows sources and user names that fail digest authentication.
    pub auth_guard: Arc<auth_guard::AuthGuard>,
    /// Opens agent stream sockets through the SSRF guard.
    pub stream_connector: Arc<dyn crate::streams::Connector>,
    /// MESSAGEs relayed and waiting for their final response, by message id.
    pub messages: Arc<DashMap<u64, tokio::sync::oneshot::Sender<(u16, String)>>>,
    /// What AI agent sessions need (store, providers, tool client, live registry).
    pub agents: crate::agents::runtime::AgentDeps,
    /// `[streams] hold_sound`, loaded once.
    pub hold_sound: Option<media::source::Clip>,
    next_leg: Arc<AtomicU64>,
}

impl Shared {
    /// A reference for a leg we originate (incoming legs carry `INCOMING_LEG_BIT`).
    pub fn next_leg(&self) -> sip::ua::LegRef {
        self.next_leg.fetch_add(1, Ordering::Relaxed)
    }
}

/// The switch as the API sees it.
#[derive(Debug, Clone)]
pub struct Switch {
    shared: Shared,
    trunks: Arc<Vec<Trunk>>,
}

/// Leg references for BYEs of dialogs restored after a crash (no call task owns them).
const RESTORED_LEGS: u64 = 1 << 62;

/// Queue depth per call task: commands beyond this get `Overloaded` rather than piling up.
pub(crate) const CALL_QUEUE: usize = 64;

impl Switch {
    /// Agents' numbers changed (an agent was created, updated or deleted): inbound
    /// routing reloads them.
    pub async fn agent_numbers_changed(&self) {
        if let Err(e) = self.shared.agents.refresh_numbers().await {
            tracing::error!(error = %e, "cannot reload the agents' numbers");
        }
    }

    /// The agents' live conversations (the API ends a deleted agent's through it).
    pub fn live_conversations(&self) -> Arc<crate::agents::LiveConversations> {
        Arc::clone(&self.shared.agents.live)
    }

    /// What an agent session needs (the API starts browser sessions with it).
    pub fn agent_deps(&self) -> crate::agents::runtime::AgentDeps {
        self.shared.agents.clone()
    }

    /// Wire the core to a running SIP driver and close out calls a previous run left live.
    pub async fn start(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        webhooks: Arc<tokio::sync::Notify>,
        ua: sip::net::UaHandle,
        mut ua_events: mpsc::Receiver<sip::ua::UaEvent>,
        ports: media::net::PortPool,
        plan: Option<dialplan::plan::Plan>,
    ) -> Result<Self, StoreError> {
        let trunks: Arc<Vec<Trunk>> = Arc::new(
            config
                .trunks
                .iter()
                .filter_map(|t| Trunk::new(t.clone()).ok())
                .collect(),
        );
        let inbound = Arc::new(inbound::Inbound::new(
            trunks.clone(),
            &config.sip.realm,
            plan,
            config.dialplan.utc_offset_minutes,
        ));
        let config_guard = config.outbound_guard();
        let agents = crate::agents::runtime::AgentDeps {
            store: store.clone(),
            config: config.clone(),
            live: Arc::new(crate::agents::LiveConversations::new()),
            http: crate::agents::tools::client(&config_guard).map_err(|e| {
                StoreError::Corrupt(format!("cannot build the agents' HTTP client: {e}"))
            })?,
            connector: Arc::new(crate::streams::DirectConnector),
            numbers: Arc::new(dashmap::DashSet::new()),
            metrics: Arc::new(crate::agents::runtime::AgentMetrics::default()),
        };
        agents.refresh_numbers().await?;
        let hold_sound = config.streams.hold_sound.as_ref().and_then(|path| {
            match media::source::Clip::load_wav(path) {
                Ok(clip) => Some(clip),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "[streams] hold_sound unusable: reconnections are silent");
                    None
                }
            }
        });
        let shared = Shared {
            hold_sound,
            agents,
            advertise: Arc::new(advertise::Advertise::new(&config)),
            tenant_policy: Arc::new(tenant_policy::TenantPolicy::new(&config.tenants)),
            auth_guard: Arc::new(auth_guard::AuthGuard::new(&config.security)),
            config,
            store,
            webhooks,
            ua: ua.clone(),
            ports,
            legs: Arc::new(DashMap::new()),
            calls: Arc::new(DashMap::new()),
            metrics: Arc::new(metrics::Metrics::default()),
            inbound,
            messages: Arc::new(DashMap::new()),
            stream_connector: Arc::new(crate::streams::GuardedConnector::new(config_guard)),
            next_leg: Arc::new(AtomicU64::new(1)),
        };
        close_out_live_calls(&shared).await?;

        let router = shared.clone();
        tokio::spawn(async move {
            while let Some(event) = ua_events.recv().await {
                route_ua_event(&router, event);
            }
        });
        trunk_watch::start(&shared, &trunks);
        Ok(Self { shared, trunks })
    }

    pub fn trunks(&self) -> &Arc<Vec<Trunk>> {
        &self.trunks
    }

    pub fn inbound(&self) -> &Arc<inbound::Inbound> {
        &self.shared.inbound
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Relays a masked message that reached the switch by HTTP (a carrier's webhook).
    pub async fn relay_proxy_message(
        &self,
        tenant: &str,
        proxy_number: &str,
        sender: &str,
        body: bytes::Bytes,
    ) -> Result<crate::proxy::ProxyInteraction, masked::MessageRefusal> {
        masked::relay_message(
            &self.shared,
            Some(tenant),
            proxy_number,
            sender,
            "text/plain;charset=UTF-8",
            body,
        )
        .await
    }

    pub fn live_calls(&self) -> usize {
        self.shared.calls.len()
    }

    /// Prometheus text exposition of the core's and the SIP stack's counters.
    pub async fn render_metrics(&self) -> String {
        let sip = self.shared.ua.stats().await.ok();
        let kernel = self.shared.ports.kernel_forwarder().map(|k| k.stats());
        let mut text =
            self.shared
                .metrics
                .render(self.live_calls(), sip.as_ref(), &self.trunks, kernel);
        self.shared.tenant_policy.render(&mut text);
        text.push_str("# TYPE switchyard_rtp_foreign_dropped_total counter\n");
        text.push_str(&format!(
            "switchyard_rtp_foreign_dropped_total {}\n",
            media::net::FOREIGN_RTP_DROPPED.load(std::sync::atomic::Ordering::Relaxed)
        ));
        let now_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.shared.auth_guard.render(&mut text, now_secs);
        self.shared.agents.metrics.render(&mut text);
        text
    }

    /// Validate the route, write the `initiating` row and its event, and start the call task.
    pub async fn originate(
        &self,
        tenant: &str,
        req: OriginateRequest,
    ) -> Result<CallRecord, CoreError> {
        let entries: Vec<dialplan::outbound::TrunkEntry> = self
            .trunks
            .iter()
            .map(|t| dialplan::outbound::TrunkEntry {
                name: t.config.name.clone(),
                tenant: t.config.tenant.clone(),
                numbers: t.config.numbers.clone(),
            })
            .collect();
        let names = match dialplan::outbound::route_outbound(&entries, tenant, &req.from) {
            dialplan::outbound::OutboundRoute::Trunks(names) => names,
            dialplan::outbound::OutboundRoute::UnknownCallerId => {
                return Err(CoreError::UnknownCallerId(req.from));
            }
        };
        let trunks: Vec<Trunk> = names
            .iter()
            .filter_map(|n| self.trunks.iter().find(|t| &t.config.name == n).cloned())
            .collect();
        let Some(first) = trunks.first() else {
            return Err(CoreError::UnknownCallerId(req.from));
        };
        let slot = self.shared.tenant_policy.admit(
            tenant,
            &req.to,
            self.shared.inbound.barring_rule(&req.from, &req.to),
            std::time::Instant::now(),
        )?;

        let calls_cfg = &self.shared.config.calls;
        // Millisecond precision: what the store keeps, so the API shows the same value twice.
        let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis())
            .unwrap_or_else(Utc::now);
        let record = CallRecord {
            id: format!(
                "call_{}",
                ulid::Ulid::new().to_string().to_ascii_lowercase()
            ),
            tenant: tenant.to_owned(),
            direction: "outbound".to_owned(),
            to: req.to.clone(),
            from: req.from.clone(),
            agent_id: req.agent_id.clone(),
            status: CallStatus::Initiating,
            record: req.record,
            recording_url: None,
            webhook_url: req.webhook_url.clone(),
            max_duration: req.max_duration.unwrap_or(calls_cfg.default_max_duration) as i64,
            ring_timeout: req.ring_timeout.unwrap_or(calls_cfg.default_ring_timeout) as i64,
            metadata: req.metadata.clone(),
            trunk: Some(first.config.name.clone()),
            // Ours, not the user agent's, so the row names the SIP dialog from the start.
            sip_call_id: Some(format!(
                "{}@{}",
                ulid::Ulid::new().to_string().to_ascii_lowercase(),
                self.shared
                    .advertise
                    .call_id_host(&self.shared.config.node.name)
            )),
            sip_code: None,
            sip_reason: None,
            q850_cause: None,
            end_reason: None,
            rtp_packets_received: 0,
            rtp_bytes_received: 0,
            rtp_packets_lost: 0,
            rtp_jitter_ms: None,
            mos: None,
            created_at: now,
            answered_at: None,
            ended_at: None,
            duration_seconds: None,
            sip_dialog: None,
            proxy_session_id: None,
        };
        let bind_ip = self.shared.config.rtp_bind_ip();
        let endpoint = media::net::RtpEndpoint::open(&self.shared.ports, bind_ip)
            .map_err(|_| CoreError::NoMediaPorts)?;

        let record = Arc::new(record);
        task::record_created(&self.shared, &record).await?;
        self.shared.metrics.call_started();
        // The API's copy; the task keeps the shared one to itself.
        let created = CallRecord::clone(&record);

        let leg = self.shared.next_leg();
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        self.shared.legs.insert(leg, tx.clone());
        self.shared.calls.insert(record.id.clone(), tx);
        let task = CallTask::new(
            self.shared.clone(),
            record,
            first.clone(),
            leg,
            endpoint,
            None,
            None,
        )
        .with_stream(req.stream.clone());
        // Boxed for the same reason as an inbound call's task (see `incoming::start`). The
        // tenant's slot is held for the call's life.
        tokio::spawn(Box::pin(async move {
            let _slot = slot;
            task.run(rx).await;
        }));
        Ok(created)
    }

    /// Hang up a live call; resolves with the call once it has ended (CANCEL or BYE done),
    /// or after a few seconds with the call as it stands.
    pub async fn hangup(&self, tenant: &str, id: &str) -> Result<CallRecord, CoreError> {
        let current = self
            .shared
            .store
            .get_call(tenant, id)
            .await?
            .ok_or(CoreError::NotFound)?;
        if current.status.is_terminal() {
            return Err(CoreError::AlreadyEnded(Box::new(current)));
        }
        let Some(tx) = self.shared.calls.get(id).map(|e| e.value().clone()) else {
            // Live in the database but not in this process: ended while we looked.
            let again = self
                .shared
                .store
                .get_call(tenant, id)
                .await?
                .ok_or(CoreError::NotFound)?;
            return Err(CoreError::AlreadyEnded(Box::new(again)));
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        tx.try_send(TaskInput::Hangup(reply_tx))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => CoreError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => CoreError::NotFound,
            })?;
        match tokio::time::timeout(Duration::from_secs(10), reply_rx).await {
            Ok(Ok(record)) => Ok(record),
            _ => self
                .shared
                .store
                .get_call(tenant, id)
                .await?
                .ok_or(CoreError::NotFound),
        }
    }
}

impl Switch {
    /// Blind-transfer an answered call's far end to `target` (an E.164 number or a URI;
    /// REFER); progress arrives as `call.transfer` events and the call ends `transferred`
    /// when the far end reports success. On a transit call `leg` (default: the caller) is
    /// the party transferred; see `transit_task::xfer`.
    /// Starts an agent stream on a live call; its `streamSid`.
    pub async fn start_stream(
        &self,
        tenant: &str,
        id: &str,
        spec: agent_stream::StreamSpec,
    ) -> Result<String, CoreError> {
        let (reply, rx) = oneshot::channel();
        let current = self
            .command(tenant, id, TaskInput::StartStream { spec, reply })
            .await?;
        match rx.await {
            Ok(Ok(sid)) => Ok(sid),
            Ok(Err(why)) => Err(CoreError::NotStreamable(why)),
            Err(_) => Err(CoreError::AlreadyEnded(Box::new(current))),
        }
    }

    /// Stops a call's stream; false when no such stream runs.
    pub async fn stop_stream(
        &self,
        tenant: &str,
        id: &str,
        stream_id: &str,
    ) -> Result<bool, CoreError> {
        let (reply, rx) = oneshot::channel();
        let current = self
            .command(
                tenant,
                id,
                TaskInput::StopStream {
                    stream_id: stream_id.to_owned(),
                    reply,
                },
            )
            .await?;
        rx.await
            .map_err(|_| CoreError::AlreadyEnded(Box::new(current)))
    }

    /// Hands `input` to the live call `id` of `tenant`; the call as stored.
    async fn command(
        &self,
        tenant: &str,
        id: &str,
        input: TaskInput,
    ) -> Result<CallRecord, CoreError> {
        let current = self
            .shared
            .store
            .get_call(tenant, id)
            .await?
            .ok_or(CoreError::NotFound)?;
        if current.status.is_terminal() {
            return Err(CoreError::AlreadyEnded(Box::new(current)));
        }
        let tx = self
            .shared
            .calls
            .get(id)
            .map(|e| e.value().clone())
            .ok_or_else(|| CoreError::AlreadyEnded(Box::new(current.clone())))?;
        tx.try_send(input).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CoreError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => {
                CoreError::AlreadyEnded(Box::new(current.clone()))
            }
        })?;
        Ok(current)
    }

    pub async fn transfer(
        &self,
        tenant: &str,
        id: &str,
        target: &str,
        leg: Option<transfer::TransferLeg>,
    ) -> Result<CallRecord, CoreError> {
        let (reply, rx) = oneshot::channel();
        let current = self
            .command(
                tenant,
                id,
                TaskInput::Transfer {
                    target: target.to_owned(),
                    leg,
                    reply,
                },
            )
            .await?;
        match rx.await {
            Ok(Ok(())) => Ok(current),
            Ok(Err(why)) => Err(CoreError::NotTransferable(why)),
            Err(_) => Err(CoreError::AlreadyEnded(Box::new(current))),
        }
    }

    /// Graceful stop: hang up every live call (CANCEL or BYE) and wait, bounded, for each to
    /// be recorded, so a planned restart leaves no call half-open at the carrier.
    pub async fn shutdown(&self, grace: Duration) {
        let live: Vec<(String, mpsc::Sender<TaskInput>)> = self
            .shared
            .calls
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        if live.is_empty() {
            return;
        }
        tracing::info!(count = live.len(), "hanging up live calls before shutdown");
        let mut waits = Vec::with_capacity(live.len());
        for (id, tx) in live {
            let (reply_tx, reply_rx) = oneshot::channel();
            if tx.send(TaskInput::Shutdown(reply_tx)).await.is_ok() {
                waits.push((id, reply_rx));
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (id, rx) in waits {
            if tokio::time::timeout_at(deadline, rx).await.is_err() {
                tracing::warn!(call_id = %id, "call did not end within the shutdown grace");
            }
        }
    }
}

fn route_ua_event(shared: &Shared, event: sip::ua::UaEvent) {
    use sip::ua::UaEvent;
    let leg = match &event {
        UaEvent::Incoming { .. } => {
            incoming::on_incoming(shared, event);
            return;
        }
        UaEvent::Registration { .. } | UaEvent::Pong { .. } => {
            trunk_watch::on_event(shared, event);
            return;
        }
        UaEvent::MessageIn { .. } => {
            masked::on_message(shared, event);
            return;
        }
        UaEvent::MessageResult { msg, code, reason } => {
            masked::on_message_result(shared, *msg, *code, reason.clone());
            return;
        }
        other => match other.leg() {
            Some(leg) => leg,
            None => return,
        },
    };
    match shared.legs.get(&leg) {
        Some(tx) => {
            if tx.try_send(TaskInput::Sip(event)).is_err() {
                tracing::warn!(leg, "call task queue full or gone; SIP event dropped");
            }
        }
        None if leg & RESTORED_LEGS != 0 => {
            tracing::info!(leg, ?event, "dialog left by a previous run ended");
        }
        None => {
            // Nobody owns this dialog any more: a re-offer must still get an answer.
            if let UaEvent::Reoffer { leg, id, .. } = event {
                let _ = shared.ua.send(sip::ua::UaCommand::RejectReoffer {
                    leg,
                    id,
                    code: 481,
                    reason: "Call/Transaction Does Not Exist".to_owned(),
                });
            }
            tracing::debug!(leg, "SIP event for a leg with no call");
        }
    }
}

/// Calls that were live when the process died are closed out honestly: `failed`, with the
/// reason recorded and their callback queued.
async fn close_out_live_calls(shared: &Shared) -> Result<(), StoreError> {
    let live = shared.store.live_calls().await?;
    if !live.is_empty() {
        tracing::warn!(
            count = live.len(),
            "closing out calls left live by a previous run"
        );
    }
    let mut restored: u64 = 0;
    for mut call in live {
        let now = Utc::now();
        // An answered call is still up at the carrier (and, for a transit call, at the
        // caller): end each dialog it stored with a BYE.
        let dialogs = call
            .sip_dialog
            .take()
            .map(|d| dialog::all_from_json(&d))
            .unwrap_or_default();
        let mut byes = 0;
        for snapshot in dialogs {
            restored += 1;
            let sent = shared.ua.send(sip::ua::UaCommand::ByeRestored {
                leg: RESTORED_LEGS | restored,
                snapshot: Box::new(snapshot),
            });
            byes += usize::from(sent.is_ok());
        }
        call.status = CallStatus::Failed;
        call.sip_code = None;
        call.sip_reason = Some(
            match byes {
                0 => "switch restarted during the call",
                1 => "switch restarted during the call; BYE sent to the carrier",
                _ => "switch restarted during the call; BYE sent on both legs",
            }
            .to_owned(),
        );
        call.end_reason = Some("switch_restart".to_owned());
        call.q850_cause = Some(41); // temporary failure
        call.ended_at = Some(now);
        call.duration_seconds = Some(
            call.answered_at
                .map_or(0, |a| (now - a).num_seconds().max(0)),
        );
        let event = NewEvent {
            event_type: "call.failed".to_owned(),
            extra: serde_json::json!({
                "sip_code": null,
                "sip_reason": call.sip_reason,
                "q850_cause": call.q850_cause,
                "end_reason": call.end_reason,
            }),
        };
        let call = Arc::new(call);
        shared.store.update_call(&call, Some(&event)).await?;
        tracing::warn!(call_id = %call.id, "call closed out after restart");
    }
    shared.webhooks.notify_one();
    Ok(())
}
