//! The HTTP API (axum): `/api/v1/...` with the `{data, meta}` envelope, `X-API-Key` auth and
//! stable error codes. Handlers read durable state from the store and send commands to the
//! core; they never touch SIP or RTP.

pub mod calls;
pub mod envelope;
pub mod error;
pub mod extract;

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
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/voice/calls", post(calls::create).get(calls::list))
        .route("/api/v1/voice/calls/{id}", get(calls::get))
        .route("/api/v1/voice/calls/{id}/hangup", post(calls::hangup))
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
        state.switch.render_metrics().await,
    )
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
