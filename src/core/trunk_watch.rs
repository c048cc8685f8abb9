//! Keeping trunks healthy: outbound registration (REGISTER, refreshed by the user agent)
//! and OPTIONS keep-alive probes that mark a trunk down or up. Results arrive as user
//! agent events and land in each trunk's shared state (API, metrics, failover).

use std::time::Duration;

use super::Shared;
use super::trunk::{RegistrationStatus, Trunk};

/// Starts registrations and keep-alive loops for the trunks that ask for them.
pub(crate) fn start(shared: &Shared, trunks: &[Trunk]) {
    for (index, trunk) in trunks.iter().enumerate() {
        if trunk.config.register {
            let shared = shared.clone();
            let trunk = trunk.clone();
            tokio::spawn(async move { register(&shared, index as u64, &trunk).await });
        }
        if trunk.config.keepalive_interval_s > 0 {
            let shared = shared.clone();
            let trunk = trunk.clone();
            tokio::spawn(async move { keepalive(shared, index as u64, trunk).await });
        }
    }
}

async fn register(shared: &Shared, reg: u64, trunk: &Trunk) {
    let addr = match trunk.resolve().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(trunk = %trunk.config.name, error = %e, "cannot resolve the registrar");
            trunk.set_registration(RegistrationStatus {
                state: "failed".into(),
                last_reason: Some(e.to_string()),
                ..RegistrationStatus::default()
            });
            return;
        }
    };
    let user = trunk.config.username.clone().unwrap_or_default();
    let aor = format!("sip:{user}@{}", trunk.uri.host);
    let _ = shared.ua.send(sip::ua::UaCommand::Register {
        reg,
        target: sip::ua::Target {
            request_uri: format!("sip:{}:{}", trunk.uri.host, trunk.uri.port),
            addr,
            transport: trunk.sip_transport(),
        },
        aor,
        contact_user: user,
        credentials: trunk.credentials(),
        expires: trunk.config.register_expires,
    });
    tracing::info!(trunk = %trunk.config.name, %addr, "registering");
}

/// Probe ids carry the trunk index in the high half.
async fn keepalive(shared: Shared, index: u64, trunk: Trunk) {
    let period = Duration::from_secs(trunk.config.keepalive_interval_s);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    loop {
        tick.tick().await;
        let Ok(addr) = trunk.resolve().await else {
            mark(&trunk, false, "address does not resolve");
            continue;
        };
        seq = seq.wrapping_add(1) & 0xffff_ffff;
        let sent = shared.ua.send(sip::ua::UaCommand::Ping {
            probe: index << 32 | seq,
            target: sip::ua::Target {
                request_uri: format!("sip:{}:{}", trunk.uri.host, trunk.uri.port),
                addr,
                transport: trunk.sip_transport(),
            },
        });
        if sent.is_err() {
            return;
        }
    }
}

fn mark(trunk: &Trunk, up: bool, why: &str) {
    if trunk.set_up(up) != up {
        if up {
            tracing::info!(trunk = %trunk.config.name, "trunk up");
        } else {
            tracing::warn!(trunk = %trunk.config.name, reason = why, "trunk down");
        }
    }
}

pub(super) fn on_event(shared: &Shared, event: sip::ua::UaEvent) {
    let trunks = shared.inbound.trunks();
    match event {
        sip::ua::UaEvent::Pong { probe, code } => {
            let Some(trunk) = trunks.get((probe >> 32) as usize) else {
                return;
            };
            match code {
                // Any answer means the carrier is there (some answer OPTIONS 404/405).
                Some(c) if c != 408 && c != 503 => mark(trunk, true, ""),
                Some(c) => mark(trunk, false, &format!("OPTIONS answered {c}")),
                None => mark(trunk, false, "OPTIONS timed out"),
            }
        }
        sip::ua::UaEvent::Registration { reg, state } => {
            let Some(trunk) = trunks.get(reg as usize) else {
                return;
            };
            let status = match state {
                sip::ua::RegistrationState::Registered { expires } => {
                    tracing::info!(trunk = %trunk.config.name, expires, "registered");
                    RegistrationStatus {
                        state: "registered".into(),
                        expires: Some(expires),
                        last_code: Some(200),
                        last_reason: None,
                    }
                }
                sip::ua::RegistrationState::Failed { code, reason } => {
                    tracing::warn!(trunk = %trunk.config.name, code, %reason, "registration failed");
                    RegistrationStatus {
                        state: "failed".into(),
                        expires: None,
                        last_code: Some(code),
                        last_reason: Some(reason),
                    }
                }
                sip::ua::RegistrationState::Unregistered => RegistrationStatus {
                    state: "unregistered".into(),
                    ..RegistrationStatus::default()
                },
            };
            trunk.set_registration(status);
        }
        _ => {}
    }
}
