//! The HTTP API (axum): `/api/v1/...` with the `{data, meta}` envelope, `X-API-Key` auth and
//! stable error codes. Handlers read durable state from the store and send commands to the
//! core; they never touch SIP or RTP.

pub mod agent_web;
pub mod agents;
pub mod calls;
pub mod envelope;
pub mod error;
pub mod extract;
pub mod limit;
pub mod openapi;
pub mod proxy;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::core::Switch;
use crate::store::Store;
use envelope::{Data, Envelope};
use error::{ApiError, ErrorBody};
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
    /// Agents' live conversations: deleting an agent ends them through it.
    pub live_conversations: Arc<crate::agents::LiveConversations>,
    /// `ws(s)://host:port` of the realtime WebSocket URLs handed to browsers.
    pub realtime_ws_base: String,
}

/// The route table: every route the switch serves, each registered with its OpenAPI
/// operation (`#[utoipa::path]` on the handler gives both the path and the document), so
/// the router and `GET /api/v1/openapi.json` cannot disagree. Add routes here only.
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(health))
        .routes(routes!(metrics))
        .routes(routes!(openapi::document_json))
        .routes(routes!(calls::create, calls::list))
        .routes(routes!(calls::get))
        .routes(routes!(calls::hangup))
        .routes(routes!(calls::transfer))
        .routes(routes!(calls::start_stream))
        .routes(routes!(calls::stop_stream))
        .routes(routes!(trunks))
        .routes(routes!(reload_dialplan))
        .routes(routes!(calls::events))
        .routes(routes!(calls::recording))
        .routes(routes!(calls::redeliver))
        .routes(routes!(webhook_secret))
        .routes(routes!(rotate_webhook_secret))
        .routes(routes!(proxy::add_number, proxy::list_numbers))
        .routes(routes!(proxy::remove_number))
        .routes(routes!(proxy::create_session, proxy::list_sessions))
        .routes(routes!(proxy::get_session, proxy::close_session))
        .routes(routes!(proxy::list_interactions))
        .routes(routes!(proxy::inbound_message))
        .routes(routes!(agents::create_agent, agents::list_agents))
        .routes(routes!(
            agents::get_agent,
            agents::replace_agent,
            agents::update_agent,
            agents::delete_agent
        ))
        .routes(routes!(agents::create_tool, agents::list_tools))
        .routes(routes!(
            agents::get_tool,
            agents::update_tool,
            agents::delete_tool
        ))
        .routes(routes!(agents::list_conversations))
        .routes(routes!(agents::get_conversation))
        .routes(routes!(agents::create_realtime_session))
        .routes(routes!(agent_web::open_realtime_session))
        .routes(routes!(agent_web::demo_page))
}

pub fn router(state: AppState) -> Router {
    let (router, _document) = routes().split_for_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.http.max_body_bytes,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            limit::rate_limit,
        ))
        .with_state(state)
}

#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// Always `ok` when the process answers.
    #[schema(pattern = "^ok$")]
    status: &'static str,
    live_calls: usize,
}

/// Liveness and the number of live calls (no auth, no envelope).
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The switch is up", body = Health))
)]
async fn health(State(state): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        live_calls: state.switch.live_calls(),
    })
}

/// Prometheus metrics (no auth).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    security(()),
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String))
)]
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

/// One trunk's health and limits.
#[derive(Debug, Serialize, ToSchema)]
struct TrunkStatus {
    name: String,
    /// The carrier's SIP URI.
    uri: String,
    #[schema(pattern = "^(udp|tcp)$")]
    transport: &'static str,
    /// `down` when keep-alive probes fail.
    #[schema(pattern = "^(up|down)$")]
    status: &'static str,
    /// Calls on the trunk now, both directions.
    active_calls: u32,
    /// 0: no limit.
    max_concurrent: u32,
    /// New outbound calls per second; 0: no limit.
    max_cps: u32,
    registration: crate::core::trunk::RegistrationStatus,
}

/// Trunk health: keep-alive state, registration, calls in progress (admin only: it names
/// carriers' addresses).
#[utoipa::path(
    get,
    path = "/api/v1/trunks",
    operation_id = "list_trunks",
    tag = "trunks",
    responses(
        (status = 200, description = "The trunks (the tenant's; all of them for the operator)", body = Data<Vec<TrunkStatus>>),
        (status = 403, description = "`FORBIDDEN`: requires an owner, admin or operator key", body = ErrorBody),
    )
)]
async fn trunks(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<Vec<TrunkStatus>>, ApiError> {
    auth.require_admin()?;
    // A tenant's owner sees its own trunks; only the operator sees every tenant's.
    let list = state
        .switch
        .trunks()
        .iter()
        .filter(|t| auth.is_operator() || t.config.tenant == auth.tenant)
        .map(|t| TrunkStatus {
            name: t.config.name.clone(),
            uri: t.config.uri.clone(),
            transport: if t.config.transport == crate::config::TrunkTransport::Tcp {
                "tcp"
            } else {
                "udp"
            },
            status: if t.is_up() { "up" } else { "down" },
            active_calls: t.active_calls(),
            max_concurrent: t.config.max_concurrent,
            max_cps: t.config.max_cps,
            registration: t.registration(),
        })
        .collect();
    Ok(Envelope::ok(list))
}

#[derive(Debug, Serialize, ToSchema)]
struct Reloaded {
    reloaded: bool,
    /// Rules in the plan now in force.
    rules: usize,
}

/// Re-reads the dialplan file (as SIGHUP does); a plan that does not validate is refused
/// with its problems and the current one stays.
#[utoipa::path(
    post,
    path = "/api/v1/dialplan/reload",
    operation_id = "reload_dialplan",
    tag = "dialplan",
    responses(
        (status = 200, description = "The new plan is in force", body = Data<Reloaded>),
        (status = 400, description = "`VALIDATION_ERROR`: the file does not validate; the current plan stays", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: requires the operator's key", body = ErrorBody),
    )
)]
async fn reload_dialplan(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<Reloaded>, ApiError> {
    // The dial plan is the whole switch's: the operator's, not any tenant owner's.
    auth.require_operator()?;
    match crate::app::reload_dialplan(&state.switch, &state.config, state.config_path.as_deref()) {
        Ok(rules) => Ok(Envelope::ok(Reloaded {
            reloaded: true,
            rules,
        })),
        Err(e) => Err(ApiError::validation("dialplan", e.to_string())),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// A known path asked with a method it does not have; axum adds the `Allow` header.
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        error::ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on this path (see the Allow header)"),
    )
}

#[derive(Debug, Serialize, ToSchema)]
struct WebhookSecret {
    /// `whsec_…` (Standard Webhooks).
    secret: String,
}

/// The tenant's Standard Webhooks signing secret.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/secret",
    operation_id = "get_webhook_secret",
    tag = "webhooks",
    responses(
        (status = 200, description = "The secret", body = Data<WebhookSecret>),
        (status = 403, description = "`FORBIDDEN`: requires an owner or admin key", body = ErrorBody),
    )
)]
async fn webhook_secret(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<WebhookSecret>, ApiError> {
    auth.require_admin()?;
    let secret = state.store.webhook_secret(&auth.tenant).await?;
    Ok(Envelope::ok(WebhookSecret { secret }))
}

/// A new signing secret for the tenant; the old one stops signing at once.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/secret/rotate",
    operation_id = "rotate_webhook_secret",
    tag = "webhooks",
    responses(
        (status = 200, description = "The new secret", body = Data<WebhookSecret>),
        (status = 403, description = "`FORBIDDEN`: requires an owner or admin key", body = ErrorBody),
    )
)]
async fn rotate_webhook_secret(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<WebhookSecret>, ApiError> {
    auth.require_admin()?;
    let secret = state.store.rotate_webhook_secret(&auth.tenant).await?;
    Ok(Envelope::ok(WebhookSecret { secret }))
}
