//! An INVITE arrives: admit it (trunk by source or digest), ask the dialplan, and either
//! answer it with a final response here or hand it to a new call task.
//!
//! Runs on the router task, so it must not wait: the task's channel is registered for the
//! leg before anything is spawned (a CANCEL right behind the INVITE finds its owner), and
//! the database write happens inside the spawned task.

use std::sync::Arc;
use std::time::SystemTime;

use chrono::Utc;
use dialplan::plan::Route;
use tokio::sync::mpsc;

use super::inbound::{Admission, caller_number};
use super::metrics::InboundOutcome;
use super::task::{CallTask, TaskInput};
use super::transit_task::{TransitSetup, TransitTask};
use super::trunk::Trunk;
use super::{CALL_QUEUE, Shared};
use crate::model::{CallRecord, CallStatus};

/// Refusals are logged at most once a second: a scan or flood is one line a second.
static REFUSED_LOG: sip::net::LogGate = sip::net::LogGate::new();
static AUTH_FAILED_LOG: sip::net::LogGate = sip::net::LogGate::new();

pub(super) fn on_incoming(shared: &Shared, event: sip::ua::UaEvent) {
    let sip::ua::UaEvent::Incoming {
        leg,
        body,
        source,
        transport,
        request,
        local_tag,
        ..
    } = event
    else {
        return;
    };
    let reject = |code: u16, reason: &str, headers: Vec<sip::msg::Header>| {
        let _ = shared.ua.send(sip::ua::UaCommand::Reject {
            leg,
            code,
            reason: reason.to_owned(),
            headers,
        });
    };
    // Answers to sources nobody vouches for (they may be spoofed) go out once, with no
    // 100 before and no retransmission after: one datagram out for one in.
    let reject_stateless = |code: u16, reason: &str, headers: Vec<sip::msg::Header>| {
        let _ = shared.ua.send(sip::ua::UaCommand::RejectStateless {
            leg,
            code,
            reason: reason.to_owned(),
            headers,
        });
    };
    let now_secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if shared.auth_guard.gate_source(source.ip(), now_secs) == super::auth_guard::Gate::Banned {
        shared.metrics.inbound(InboundOutcome::Forbidden);
        let _ = shared.ua.send(sip::ua::UaCommand::Discard { leg });
        return;
    }
    let index = match shared
        .inbound
        .admit(source.ip(), &request, now_secs, &shared.auth_guard)
    {
        Admission::Trunk(i) => i,
        Admission::Challenge(www) => {
            shared.metrics.inbound(InboundOutcome::Challenged);
            reject_stateless(
                401,
                "Unauthorized",
                vec![sip::msg::Header::new("WWW-Authenticate", www)],
            );
            return;
        }
        Admission::Refuse(why) => {
            // The caller learns nothing about which numbers or routes exist.
            shared.metrics.inbound(InboundOutcome::Forbidden);
            if let Some(held) = REFUSED_LOG.pass() {
                tracing::info!(%source, reason = why, similar_lines_held = held, "inbound INVITE refused");
            }
            reject_stateless(403, "Forbidden", Vec::new());
            return;
        }
        Admission::AuthFailed { why, user } => {
            shared.metrics.inbound(InboundOutcome::Forbidden);
            shared
                .auth_guard
                .failed(source.ip(), user.as_deref(), now_secs);
            if let Some(held) = AUTH_FAILED_LOG.pass() {
                tracing::info!(%source, reason = why, similar_lines_held = held, "inbound INVITE refused: authentication failed");
            }
            reject_stateless(403, "Forbidden", Vec::new());
            return;
        }
        Admission::UserSlowed => {
            shared.metrics.inbound(InboundOutcome::Forbidden);
            reject_stateless(403, "Forbidden", Vec::new());
            return;
        }
    };
    let Some(trunk) = shared.inbound.trunks().get(index).cloned() else {
        return;
    };
    let decision = shared
        .inbound
        .route(&trunk.config.name, &request, Utc::now());
    tracing::info!(
        %source,
        trunk = %trunk.config.name,
        rule = ?decision.rule,
        route = ?decision.route,
        call_id = request.headers.call_id().unwrap_or(""),
        "inbound INVITE routed"
    );
    let (tenant, webhook_url) = owner(shared, &trunk, &decision);
    let to = decision
        .to_e164
        .as_ref()
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default();
    let from = decision
        .from_e164
        .as_ref()
        .map_or_else(|| caller_number(&request), |n| n.as_str().to_owned());
    match decision.route {
        Route::Reject { sip_code, reason } => {
            shared.metrics.inbound(InboundOutcome::Rejected);
            reject(sip_code, &reason, Vec::new());
            return;
        }
        Route::Agent(_) | Route::Stream(_) | Route::Trunks(_) | Route::Proxy { .. } => {}
    }
    let Some(offer) = body.filter(|b| b.content_type.eq_ignore_ascii_case("application/sdp"))
    else {
        // A late offer (INVITE without SDP) is not supported.
        shared.metrics.inbound(InboundOutcome::Rejected);
        reject(488, "Not Acceptable Here", Vec::new());
        return;
    };
    let source_slot = match trunk.reserve() {
        Ok(s) => s,
        Err(why) => {
            shared.metrics.inbound(InboundOutcome::Rejected);
            tracing::warn!(trunk = %trunk.config.name, reason = why.as_str(), "inbound call refused");
            reject(
                503,
                "Service Unavailable",
                vec![sip::msg::Header::new("Retry-After", "5")],
            );
            return;
        }
    };
    if let Route::Proxy { number } = &decision.route {
        super::masked::start_call(
            shared,
            super::masked::ProxyCall {
                leg,
                offer,
                request,
                local_tag,
                source,
                transport,
                source_trunk: trunk,
                source_slot,
                proxy_number: number.as_str().to_owned(),
                caller: from,
            },
        );
        return;
    }
    let calls_cfg = &shared.config.calls;
    let now = chrono::DateTime::from_timestamp_millis(Utc::now().timestamp_millis())
        .unwrap_or_else(Utc::now);
    let mut record = CallRecord {
        id: format!(
            "call_{}",
            ulid::Ulid::new().to_string().to_ascii_lowercase()
        ),
        tenant,
        direction: "inbound".to_owned(),
        to: to.clone(),
        from: from.clone(),
        agent_id: None,
        status: CallStatus::Initiating,
        record: false,
        recording_url: None,
        webhook_url,
        max_duration: calls_cfg.default_max_duration as i64,
        ring_timeout: calls_cfg.default_ring_timeout as i64,
        metadata: serde_json::json!({
            "source_trunk": trunk.config.name,
            "rule": decision.rule,
        }),
        trunk: None,
        sip_call_id: request.headers.call_id().map(str::to_owned),
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
    let (tx, rx) = mpsc::channel(CALL_QUEUE);
    // A number assigned to an agent through the API goes to it, whatever the plan says.
    let route = if shared.agents.numbers.contains(&to) {
        Route::Agent(String::new())
    } else {
        decision.route
    };
    match route {
        Route::Agent(_) | Route::Stream(_) => {
            let (stream, agent) = match route {
                Route::Agent(id) => {
                    record.metadata["route"] = "agent".into();
                    let lookup = if id.is_empty() {
                        AgentLookup::Number(to.clone())
                    } else {
                        AgentLookup::Id(id)
                    };
                    (None, Some(lookup))
                }
                Route::Stream(action) => {
                    record.metadata["route"] = "stream".into();
                    match super::agent_stream::spec_of(&action) {
                        Ok(spec) => (Some(spec), None),
                        Err(why) => {
                            tracing::warn!(reason = why, url = %action.url, "dialplan stream refused");
                            shared.metrics.inbound(InboundOutcome::Failed);
                            reject(500, "Server Internal Error", Vec::new());
                            return;
                        }
                    }
                }
                _ => (None, None),
            };
            let bind_ip = shared.config.rtp_bind_ip();
            let probe = super::codecs::with_codecs(
                super::task::local_offer(&shared.config, bind_ip, 0),
                &trunk.codecs(),
            );
            if media::sdp::answer_offer(&offer.bytes, &probe).is_err() {
                shared.metrics.inbound(InboundOutcome::Rejected);
                reject(488, "Not Acceptable Here", Vec::new());
                return;
            }
            let Ok(endpoint) = media::net::RtpEndpoint::open(&shared.ports, bind_ip) else {
                shared.metrics.inbound(InboundOutcome::Failed);
                reject(503, "Service Unavailable", Vec::new());
                return;
            };
            let caller_dialog =
                sip::ua::DialogSnapshot::incoming(&request, &local_tag, source, transport);
            let local = LocalCall {
                trunk,
                leg,
                endpoint,
                offer,
                source_slot,
                caller_dialog,
                peer: source.ip(),
            };
            match agent {
                None => {
                    let record = Arc::new(record);
                    let task = local.task(shared, &record, stream);
                    start(shared, record, leg, tx, async move { task.run(rx).await });
                }
                Some(lookup) => {
                    // The agent is looked up in a task; the leg is ours meanwhile, so a
                    // CANCEL right behind the INVITE waits in the call's queue.
                    shared.legs.insert(leg, tx.clone());
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        match resolve_agent(&shared, lookup, &record.tenant).await {
                            Ok(target) => {
                                record.tenant = target.tenant;
                                record.agent_id = Some(target.agent_id.clone());
                                let spec = super::agent_stream::StreamSpec::agent(
                                    &target.agent_id,
                                    target.handoff,
                                );
                                let record = Arc::new(record);
                                let task = local.task(&shared, &record, Some(spec));
                                start(&shared, record, leg, tx, async move { task.run(rx).await });
                            }
                            Err((code, why)) => {
                                tracing::info!(to = %record.to, code, reason = %why, "inbound call for an agent refused");
                                shared.metrics.inbound(InboundOutcome::Rejected);
                                shared.legs.remove(&leg);
                                let _ = shared.ua.send(sip::ua::UaCommand::Reject {
                                    leg,
                                    code,
                                    reason: sip::msg::default_reason(code).to_owned(),
                                    headers: Vec::new(),
                                });
                            }
                        }
                    });
                }
            }
        }
        Route::Trunks(names) => {
            record.metadata["route"] = "transit".into();
            let trunks: Vec<Trunk> = names
                .iter()
                .filter_map(|n| {
                    shared
                        .inbound
                        .trunks()
                        .iter()
                        .find(|t| &t.config.name == n)
                        .cloned()
                })
                .collect();
            record.trunk = trunks.first().map(|t| t.config.name.clone());
            let record = Arc::new(record);
            let setup = TransitSetup {
                record: Arc::clone(&record),
                a_leg: leg,
                a_offer: offer,
                max_forwards: request.headers.max_forwards().unwrap_or(70),
                asserted_identity: request
                    .headers
                    .get("P-Asserted-Identity")
                    .map(str::to_owned),
                from,
                to,
                trunks,
                source_slot: Some(source_slot),
                // Read before the INVITE moves into the caller's dialog.
                a_allow: request.headers.get("Allow").map(str::to_owned),
                a_dialog: super::transit_dialogs::LegDialogs::new(
                    request, local_tag, source, transport,
                ),
                a_codecs: trunk.codecs(),
            };
            match TransitTask::new(shared.clone(), setup) {
                Ok(task) => start(shared, record, leg, tx, async move { task.run(rx).await }),
                Err((code, reason)) => {
                    shared.metrics.inbound(InboundOutcome::Failed);
                    tracing::debug!(code, reason, "transit call refused");
                    reject(code, reason, Vec::new());
                }
            }
        }
        _ => {}
    }
}

/// How an inbound call finds its agent: a dialplan `agent` action names it, or the
/// called number is assigned to one.
enum AgentLookup {
    Id(String),
    Number(String),
}

/// The agent an inbound call talks to.
struct AgentRoute {
    tenant: String,
    agent_id: String,
    handoff: Option<String>,
}

/// The active agent of `lookup` (dialplan ids are `tenant`'s), or the SIP refusal: the
/// configured code when it is missing, not active or not on the voice channel.
async fn resolve_agent(
    shared: &Shared,
    lookup: AgentLookup,
    tenant: &str,
) -> Result<AgentRoute, (u16, String)> {
    use crate::agents::model::{AgentStatus, Channel};
    let unavailable = shared.config.agents.unavailable_sip_code;
    let now = Utc::now();
    let store_failed = |e: crate::store::StoreError| {
        shared.metrics.store_error();
        (503, format!("agent lookup failed: {e}"))
    };
    let (agent, tenant, handoff) = match lookup {
        AgentLookup::Id(id) => {
            let agent = shared
                .store
                .get_agent(tenant, &id, now)
                .await
                .map_err(store_failed)?
                .ok_or_else(|| (unavailable, format!("no agent {id} for tenant {tenant}")))?;
            (agent, tenant.to_owned(), None)
        }
        AgentLookup::Number(number) => {
            let route = shared
                .store
                .agent_for_number(&number, now)
                .await
                .map_err(store_failed)?
                .ok_or_else(|| (unavailable, format!("{number} is no longer assigned")))?;
            (route.agent, route.tenant, route.handoff_phone_number)
        }
    };
    if agent.status != AgentStatus::Active {
        return Err((
            unavailable,
            format!("agent {} is {}", agent.id, agent.status.as_str()),
        ));
    }
    if !agent.channels.contains(&Channel::Voice) {
        return Err((
            unavailable,
            format!("agent {} does not take voice calls", agent.id),
        ));
    }
    Ok(AgentRoute {
        tenant,
        agent_id: agent.id,
        handoff,
    })
}

/// What a call the switch answers itself (a stream or an agent) is made of.
struct LocalCall {
    trunk: Trunk,
    leg: sip::ua::LegRef,
    endpoint: media::net::RtpEndpoint,
    offer: sip::ua::Body,
    source_slot: super::trunk::TrunkSlot,
    caller_dialog: Option<sip::ua::DialogSnapshot>,
    peer: std::net::IpAddr,
}

impl LocalCall {
    fn task(
        self,
        shared: &Shared,
        record: &Arc<CallRecord>,
        stream: Option<super::agent_stream::StreamSpec>,
    ) -> CallTask {
        CallTask::new(
            shared.clone(),
            Arc::clone(record),
            self.trunk,
            self.leg,
            self.endpoint,
            Some(self.offer),
            Some(self.source_slot),
        )
        .with_caller_dialog(self.caller_dialog)
        .with_peer_ip(self.peer)
        .with_stream(stream)
    }
}

/// The tenant that owns the called number (else the trunk's) and where its callbacks go.
fn owner(
    shared: &Shared,
    trunk: &Trunk,
    decision: &dialplan::plan::Decision,
) -> (String, Option<String>) {
    let number = shared
        .inbound
        .plan()
        .and_then(|p| decision.to_e164.as_ref().and_then(|n| p.number(n).cloned()));
    let tenant = number
        .as_ref()
        .and_then(|n| n.tenant.clone())
        .unwrap_or_else(|| trunk.config.tenant.clone());
    let webhook = number.and_then(|n| n.webhook_url).or_else(|| {
        shared
            .config
            .tenants
            .iter()
            .find(|t| t.name == tenant)
            .and_then(|t| t.webhook_url.clone())
    });
    (tenant, webhook)
}

/// Registers the leg and the call, then (in a task) writes the row and runs the call.
fn start(
    shared: &Shared,
    record: Arc<CallRecord>,
    leg: sip::ua::LegRef,
    tx: mpsc::Sender<TaskInput>,
    run: impl Future<Output = ()> + Send + 'static,
) {
    shared.metrics.inbound(InboundOutcome::Accepted);
    shared.metrics.call_started();
    shared.legs.insert(leg, tx.clone());
    shared.calls.insert(record.id.clone(), tx);
    let shared = shared.clone();
    // The call's future holds its whole task (~7 KB): boxed once here, it is not
    // copied again by the spawn, nor written over when the task completes.
    let run = Box::pin(run);
    tokio::spawn(async move {
        match super::task::record_created(&shared, &record).await {
            Ok(_) => {
                // The task then holds the only reference and updates the record in place.
                drop(record);
                run.await
            }
            Err(e) => {
                shared.metrics.store_error();
                tracing::error!(error = %e, "cannot record the inbound call; refusing it");
                shared.legs.remove(&leg);
                shared.calls.remove(&record.id);
                let _ = shared.ua.send(sip::ua::UaCommand::Reject {
                    leg,
                    code: 500,
                    reason: "Server Internal Error".to_owned(),
                    headers: Vec::new(),
                });
            }
        }
    });
}
