//! The HTTP API (axum): `/api/v1/...` with the `{data, meta}` envelope, `X-API-Key` auth and
//! stable error codes. Handlers read durable state from the store and send commands to the
//! core; they never touch SIP or RTP.

pub mod calls;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod limit;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde_json::json;

use crate::core::Switch;
use crate::store::Store;
use envelope::Envelope;
use error::ApiError;
use extract::Auth;

#[derive(Clone, Debug)]
pub struct AppState {
    pub switch: Switch,
    pub store: Arc<dyn Store>,
    pub webhooks: Arc<tokio::sync::Notify>,
    /// `[recordings] dir`: where `{call_id}.wav` files are read from.
    pub recordings_dir: std::path::PathBuf,
    pub config: Arc<crate::config::Config>,
    /// The file the config came from (the dialplan path is relative to it).
    pub config_path: Option<std::path::PathBuf>,
    /// Which URLs the switch may be asked to call (SSRF).
    pub outbound_guard: Arc<crate::netguard::OutboundGuard>,
    /// Per-IP and per-key request limits.
    pub limits: Arc<limit::ApiLimits>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/voice/calls", post(calls::create).get(calls::list))
        .route("/api/v1/voice/calls/{id}", get(calls::get))
        .route("/api/v1/voice/calls/{id}/hangup", post(calls::hangup))
        .route("/api/v1/voice/calls/{id}/transfer", post(calls::transfer))
        .route("/api/v1/trunks", get(trunks))
        .route("/api/v1/dialplan/reload", post(reload_dialplan))
        .route("/api/v1/voice/calls/{id}/events", get(calls::events))
        .route("/api/v1/voice/calls/{id}/recording", get(calls::recording))
        .route(
            "/api/v1/voice/calls/{id}/events/{event_id}/redeliver",
            post(calls::redeliver),
        )
        .route("/api/v1/webhooks/secret", get(webhook_secret))
        .route(
            "/api/v1/webhooks/secret/rotate",
            post(rotate_webhook_secret),
        )
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.http.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            limit::rate_limit,
        ))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"status": "ok", "live_calls": state.switch.live_calls()}))
}

async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        {
            let mut text = state.switch.render_metrics().await;
            text.push_str(
                "# HELP switchyard_outbound_refused_total URLs refused because they name or \
                 resolve to an internal address (SSRF guard).\n\
                 # TYPE switchyard_outbound_refused_total counter\n",
            );
            text.push_str(&format!(
                "switchyard_outbound_refused_total {}\n",
                crate::netguard::refused_total()
            ));
            text.push_str(
                "# HELP switchyard_api_rate_limited_total API requests answered 429.\n\
                 # TYPE switchyard_api_rate_limited_total counter\n",
            );
            text.push_str(&format!(
                "switchyard_api_rate_limited_total {}\n",
                state.limits.refused()
            ));
            text
        },
    )
}

/// Trunk health: keep-alive state, registration, calls in progress (admin only: it names
/// carriers' addresses).
async fn trunks(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<Vec<serde_json::Value>>, ApiError> {
    auth.require_admin()?;
    // A tenant's owner sees its own trunks; only the operator sees every tenant's.
    let list = state
        .switch
        .trunks()
        .iter()
        .filter(|t| auth.is_operator() || t.config.tenant == auth.tenant)
        .map(|t| {
            json!({
                "name": t.config.name,
                "uri": t.config.uri,
                "transport": if t.config.transport == crate::config::TrunkTransport::Tcp { "tcp" } else { "udp" },
                "status": if t.is_up() { "up" } else { "down" },
                "active_calls": t.active_calls(),
                "max_concurrent": t.config.max_concurrent,
                "max_cps": t.config.max_cps,
                "registration": t.registration(),
            })
        })
        .collect();
    Ok(Envelope::ok(list))
}

/// Re-reads the dialplan file (as SIGHUP does); a plan that does not validate is refused
/// with its problems and the current one stays.
async fn reload_dialplan(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<serde_json::Value>, ApiError> {
    // The dial plan is the whole switch's: the operator's, not any tenant owner's.
    auth.require_operator()?;
    match crate::app::reload_dialplan(&state.switch, &state.config, state.config_path.as_deref()) {
        Ok(rules) => Ok(Envelope::ok(json!({"reloaded": true, "rules": rules}))),
        Err(e) => Err(ApiError::validation("dialplan", e.to_string())),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn webhook_secret(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<serde_json::Value>, ApiError> {
    auth.require_admin()?;
    let secret = state.store.webhook_secret(&auth.tenant).await?;
    Ok(Envelope::ok(json!({"secret": secret})))
}

async fn rotate_webhook_secret(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<serde_json::Value>, ApiError> {
    auth.require_admin()?;
    let secret = state.store.rotate_webhook_secret(&auth.tenant).await?;
    Ok(Envelope::ok(json!({"secret": secret})))
}
