//! `/api/v1/proxy`: number masking. The tenant's pool of proxy numbers, and sessions that
//! give each of two participants a pool number to reach the other through (the shape of
//! Twilio Proxy and Amazon Chime proxy sessions, in this API's conventions).

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::envelope::{Data, Envelope, Page, Pagination};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{AppJson, AppPath as Path, AppQuery as Query, Auth, parse_limit};
use crate::proxy::{
    Capability, NewSession, ProxyInteraction, ProxyNumber, ProxySession, SessionMode,
    SessionStatus, UnknownCaller,
};
use crate::store::{NumberRemoval, StoreError};

const MAX_METADATA_BYTES: usize = 16 * 1024;
/// The longest a session may be opened for (`ttl_seconds`, `expires_at`): one year.
const MAX_TTL_SECONDS: i64 = 31_536_000;

/// A number to add to the tenant's pool.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNumber {
    /// E.164; a number the tenant can be reached on through `trunk`.
    #[schema(pattern = "^\\+[1-9][0-9]{7,14}$", example = "+14155550100")]
    pub number: String,
    /// One of the tenant's trunks (its `[[trunks]]` name).
    #[schema(max_length = 128, example = "carrier")]
    pub trunk: String,
    /// Default: both.
    #[schema(min_items = 1, max_items = 2)]
    pub capabilities: Option<Vec<Capability>>,
}

/// Adds a number to the tenant's proxy pool.
#[utoipa::path(
    post,
    path = "/api/v1/proxy/numbers",
    operation_id = "add_proxy_number",
    tag = "proxy",
    request_body = AddNumber,
    responses(
        (status = 201, description = "The number, in the pool", body = Data<ProxyNumber>),
        (status = 400, description = "`VALIDATION_ERROR`: malformed JSON, not E.164, or not one of the tenant's trunks", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: requires an owner or admin key", body = ErrorBody),
        (status = 409, description = "`NUMBER_ALREADY_EXISTS`: a proxy pool (this tenant's or another's) has it", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
    )
)]
pub async fn add_number(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(body): AppJson<AddNumber>,
) -> Result<Envelope<ProxyNumber>, ApiError> {
    auth.require_admin()?;
    if !dialplan::e164::is_e164(&body.number) {
        return Err(ApiError::validation(
            "number",
            "must be an E.164 number, e.g. +14155550100",
        ));
    }
    if !state
        .config
        .trunks
        .iter()
        .any(|t| t.name == body.trunk && t.tenant == auth.tenant)
    {
        return Err(ApiError::validation(
            "trunk",
            "must name one of this tenant's trunks",
        ));
    }
    let mut capabilities = body
        .capabilities
        .unwrap_or_else(|| vec![Capability::Voice, Capability::Messaging]);
    capabilities.dedup();
    if capabilities.is_empty() || capabilities.len() > 2 {
        return Err(ApiError::validation(
            "capabilities",
            "must list voice, messaging or both, once each",
        ));
    }
    capabilities.sort_by_key(|c| *c == Capability::Messaging);
    let now = Utc::now();
    let number = ProxyNumber {
        number: body.number,
        tenant: auth.tenant.clone(),
        trunk: body.trunk,
        capabilities,
        source: "api".to_owned(),
        active_pairings: 0,
        created_at: now,
    };
    if !state.store.add_proxy_number(&number).await? {
        return Err(ApiError::new(
            ErrorCode::NumberAlreadyExists,
            format!("{} is already a proxy number", number.number),
        ));
    }
    let added = state
        .store
        .get_proxy_number(&auth.tenant, &number.number, now)
        .await?
        .unwrap_or(number);
    Ok(Envelope::created(added))
}

/// The tenant's proxy pool, by number.
#[utoipa::path(
    get,
    path = "/api/v1/proxy/numbers",
    operation_id = "list_proxy_numbers",
    tag = "proxy",
    responses(
        (status = 200, description = "The pool", body = Data<Vec<ProxyNumber>>),
    )
)]
pub async fn list_numbers(
    State(state): State<AppState>,
    auth: Auth,
) -> Result<Envelope<Vec<ProxyNumber>>, ApiError> {
    let numbers = state
        .store
        .list_proxy_numbers(&auth.tenant, Utc::now())
        .await?;
    Ok(Envelope::ok(numbers))
}

/// Removes a number from the pool, unless an open session uses it.
#[utoipa::path(
    delete,
    path = "/api/v1/proxy/numbers/{number}",
    operation_id = "remove_proxy_number",
    tag = "proxy",
    params(("number" = String, Path, description = "The number, E.164 (`+` as is or as `%2B`)")),
    responses(
        (status = 200, description = "The number removed", body = Data<ProxyNumber>),
        (status = 403, description = "`FORBIDDEN`: requires an owner or admin key", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: not in the tenant's pool", body = ErrorBody),
        (status = 409, description = "`NUMBER_IN_USE`: open sessions' participants have it; close them first", body = ErrorBody),
    )
)]
pub async fn remove_number(
    State(state): State<AppState>,
    auth: Auth,
    Path(number): Path<String>,
) -> Result<Envelope<ProxyNumber>, ApiError> {
    auth.require_admin()?;
    if !dialplan::e164::is_e164(&number) {
        return Err(ApiError::not_found("proxy number"));
    }
    let now = Utc::now();
    let Some(found) = state
        .store
        .get_proxy_number(&auth.tenant, &number, now)
        .await?
    else {
        return Err(ApiError::not_found("proxy number"));
    };
    match state
        .store
        .delete_proxy_number(&auth.tenant, &number, now)
        .await?
    {
        NumberRemoval::Removed => Ok(Envelope::ok(ProxyNumber {
            active_pairings: 0,
            ..found
        })),
        NumberRemoval::NotFound => Err(ApiError::not_found("proxy number")),
        NumberRemoval::InUse(n) => Err(ApiError::new(
            ErrorCode::NumberInUse,
            format!("{number} serves {n} participant(s) of open sessions; close them first"),
        )),
    }
}

/// One participant of a session to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewParticipant {
    /// The participant's real number, E.164.
    #[schema(pattern = "^\\+[1-9][0-9]{7,14}$", example = "+14155552671")]
    pub number: String,
}

/// `unknown_caller` of a session to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnknownCallerRequest {
    /// SIP final response to a caller with no open session on the number (default 404).
    #[schema(minimum = 400, maximum = 699)]
    pub sip_code: Option<u16>,
    /// A WAV file name in the switch's `[proxy] announcements_dir`, played as early
    /// media before the rejection.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]*\\.wav$", max_length = 128)]
    pub announcement: Option<String>,
}

/// A session between two participants.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// Exactly two, with different numbers.
    #[schema(min_items = 2, max_items = 2)]
    pub participants: Vec<NewParticipant>,
    /// Default `voice_and_messaging`; only pool numbers with the capabilities are used.
    pub mode: Option<SessionMode>,
    /// Seconds until the session expires by itself (not with `expires_at`).
    #[schema(minimum = 1, maximum = 31536000)]
    pub ttl_seconds: Option<i64>,
    /// When the session expires by itself (RFC 3339, in the future, within a year; not
    /// with `ttl_seconds`). Without either, it stays open until closed.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Any JSON object up to 16 KiB, returned with the session.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Where the session's events (`proxy.session.created`, `.closed`, `.expired`) are
    /// POSTed, signed as call events are; never an internal address (SSRF guard).
    #[schema(format = "uri")]
    pub webhook_url: Option<String>,
    /// Seconds a masked call may last.
    #[schema(minimum = 1, maximum = 86400)]
    pub max_call_duration: Option<i64>,
    /// Record masked calls.
    #[serde(default)]
    pub record: bool,
    pub unknown_caller: Option<UnknownCallerRequest>,
}

impl CreateSession {
    fn validate(
        self,
        tenant: &str,
        guard: &crate::netguard::OutboundGuard,
        announcements_dir: &std::path::Path,
        now: DateTime<Utc>,
    ) -> Result<NewSession, ApiError> {
        let numbers: Vec<String> = self.participants.into_iter().map(|p| p.number).collect();
        let [a, b]: [String; 2] = numbers.try_into().map_err(|_| {
            ApiError::validation("participants", "must be exactly two participants")
        })?;
        for (i, n) in [&a, &b].into_iter().enumerate() {
            if !dialplan::e164::is_e164(n) {
                return Err(ApiError::validation(
                    &format!("participants[{i}].number"),
                    "must be an E.164 number, e.g. +14155552671",
                ));
            }
        }
        if a == b {
            return Err(ApiError::validation(
                "participants",
                "the two participants must have different numbers",
            ));
        }
        let expires_at = match (self.ttl_seconds, self.expires_at) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "expires_at",
                    "give ttl_seconds or expires_at, not both",
                ));
            }
            (Some(ttl), None) => {
                if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
                    return Err(ApiError::validation(
                        "ttl_seconds",
                        "must be 1 to 31536000 seconds",
                    ));
                }
                Some(now + chrono::Duration::seconds(ttl))
            }
            (None, Some(at)) => {
                let at = DateTime::parse_from_rfc3339(&at)
                    .map_err(|_| {
                        ApiError::validation("expires_at", "must be an RFC 3339 date-time")
                    })?
                    .with_timezone(&Utc);
                if at <= now {
                    return Err(ApiError::validation("expires_at", "must be in the future"));
                }
                if at > now + chrono::Duration::seconds(MAX_TTL_SECONDS) {
                    return Err(ApiError::validation(
                        "expires_at",
                        "must be within a year from now",
                    ));
                }
                // The store keeps milliseconds.
                DateTime::from_timestamp_millis(at.timestamp_millis())
            }
            (None, None) => None,
        };
        if let Some(hook) = &self.webhook_url {
            if hook.chars().any(char::is_control) {
                return Err(ApiError::validation(
                    "webhook_url",
                    "must not contain control characters",
                ));
            }
            if let Err(e) = guard.check_call(hook) {
                return Err(ApiError::validation("webhook_url", e.to_string()));
            }
        }
        if let Some(d) = self.max_call_duration
            && !(1..=86_400).contains(&d)
        {
            return Err(ApiError::validation(
                "max_call_duration",
                "must be 1 to 86400 seconds",
            ));
        }
        let (sip_code, announcement) = self
            .unknown_caller
            .map_or((None, None), |u| (u.sip_code, u.announcement));
        let sip_code = sip_code.unwrap_or(UnknownCaller::default().sip_code);
        if let Some(name) = &announcement {
            if !crate::config::valid_announcement_name(name) {
                return Err(ApiError::validation(
                    "unknown_caller.announcement",
                    "must be a .wav file name (letters, digits, - _ .)",
                ));
            }
            if !announcements_dir.join(name).is_file() {
                return Err(ApiError::validation(
                    "unknown_caller.announcement",
                    "no such announcement in the switch's announcements directory",
                ));
            }
        }
        if !(400..=699).contains(&sip_code) {
            return Err(ApiError::validation(
                "unknown_caller.sip_code",
                "must be a SIP final failure code, 400 to 699",
            ));
        }
        let metadata = self.metadata.unwrap_or_else(|| serde_json::json!({}));
        if !metadata.is_object() {
            return Err(ApiError::validation("metadata", "must be a JSON object"));
        }
        if metadata.to_string().len() > MAX_METADATA_BYTES {
            return Err(ApiError::validation("metadata", "must be at most 16 KiB"));
        }
        Ok(NewSession {
            id: format!("ps_{}", ulid::Ulid::new().to_string().to_ascii_lowercase()),
            tenant: tenant.to_owned(),
            mode: self.mode.unwrap_or_default(),
            participants: [a, b],
            metadata,
            webhook_url: self.webhook_url,
            max_call_duration: self.max_call_duration,
            record: self.record,
            unknown_caller: UnknownCaller {
                sip_code,
                announcement,
            },
            created_at: DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now),
            expires_at,
        })
    }
}

/// Opens a session: each participant is given a pool number (one it had with the same
/// counterpart before, else one sharing its country and area code, else one in use), such
/// that no open session has the same (proxy number, participant) pair.
#[utoipa::path(
    post,
    path = "/api/v1/proxy/sessions",
    operation_id = "create_proxy_session",
    tag = "proxy",
    request_body = CreateSession,
    responses(
        (status = 201, description = "The session, `open`, with each participant's proxy number", body = Data<ProxySession>),
        (status = 400, description = "`VALIDATION_ERROR` (malformed JSON or a field, see `details`)", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 409, description = "`POOL_EXHAUSTED`: a participant cannot be given any pool number (each one that fits the mode is already paired with it in an open session)", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
    )
)]
pub async fn create_session(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(body): AppJson<CreateSession>,
) -> Result<Envelope<ProxySession>, ApiError> {
    auth.require_write()?;
    let new = body.validate(
        &auth.tenant,
        &state.outbound_guard,
        &state.config.proxy.announcements_dir,
        Utc::now(),
    )?;
    match state.store.create_proxy_session(&new).await {
        Ok(session) => {
            if session.webhook_url.is_some() {
                state.webhooks.notify_one();
            }
            Ok(Envelope::created(session))
        }
        Err(StoreError::PoolExhausted) => Err(ApiError::new(
            ErrorCode::PoolExhausted,
            "no proxy number left for a participant: every pool number that fits the mode \
             is in an open session with it (add numbers or close sessions)",
        )),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionListQuery {
    /// Page size (taken as text so a bad value gets our `VALIDATION_ERROR`).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
    /// `meta.pagination.cursor` of the previous page; else `INVALID_CURSOR`.
    pub cursor: Option<String>,
    /// Only sessions with this status (as it reads now).
    #[param(value_type = Option<SessionStatus>)]
    pub status: Option<String>,
}

/// The tenant's sessions, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/proxy/sessions",
    operation_id = "list_proxy_sessions",
    tag = "proxy",
    params(SessionListQuery),
    responses(
        (status = 200, description = "A page of sessions", body = Page<Vec<ProxySession>>),
        (status = 400, description = "`VALIDATION_ERROR` (limit, status) or `INVALID_CURSOR`", body = ErrorBody),
    )
)]
pub async fn list_sessions(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<SessionListQuery>,
) -> Result<Envelope<Vec<ProxySession>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(
            SessionStatus::parse(s)
                .ok_or_else(|| ApiError::validation("status", "must be open, closed or expired"))?,
        ),
    };
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    let page = state
        .store
        .list_proxy_sessions(&auth.tenant, status, limit, cursor, Utc::now())
        .await?;
    Ok(Envelope::page(
        page.sessions,
        Pagination {
            cursor: page.next_cursor,
            has_more: page.has_more,
            total: page.total,
        },
    ))
}

/// One session: its status as of now, each participant with the proxy number it dials.
#[utoipa::path(
    get,
    path = "/api/v1/proxy/sessions/{id}",
    operation_id = "get_proxy_session",
    tag = "proxy",
    params(("id" = String, Path, description = "The session's id (`ps_…`)")),
    responses(
        (status = 200, description = "The session", body = Data<ProxySession>),
        (status = 404, description = "`NOT_FOUND`: no such session for this tenant", body = ErrorBody),
    )
)]
pub async fn get_session(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Envelope<ProxySession>, ApiError> {
    let session = state
        .store
        .get_proxy_session(&auth.tenant, &id, Utc::now())
        .await?
        .ok_or_else(|| ApiError::not_found("proxy session"))?;
    Ok(Envelope::ok(session))
}

/// Closes the session: its proxy numbers are free for its participants again. The session
/// stays readable, `closed` (closing one that is not open any more changes nothing).
#[utoipa::path(
    delete,
    path = "/api/v1/proxy/sessions/{id}",
    operation_id = "close_proxy_session",
    tag = "proxy",
    params(("id" = String, Path, description = "The session's id")),
    responses(
        (status = 200, description = "The session, `closed` (or as it was: `expired`, already `closed`)", body = Data<ProxySession>),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn close_session(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Envelope<ProxySession>, ApiError> {
    auth.require_write()?;
    let session = state
        .store
        .close_proxy_session(&auth.tenant, &id, Utc::now())
        .await?
        .ok_or_else(|| ApiError::not_found("proxy session"))?;
    if session.webhook_url.is_some() {
        state.webhooks.notify_one();
    }
    Ok(Envelope::ok(session))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InteractionListQuery {
    /// Page size.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
    /// `meta.pagination.cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The calls and messages relayed in a session, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/proxy/sessions/{id}/interactions",
    operation_id = "list_proxy_interactions",
    tag = "proxy",
    params(("id" = String, Path, description = "The session's id"), InteractionListQuery),
    responses(
        (status = 200, description = "A page of interactions", body = Page<Vec<ProxyInteraction>>),
        (status = 400, description = "`VALIDATION_ERROR` (limit) or `INVALID_CURSOR`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn list_interactions(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<InteractionListQuery>,
) -> Result<Envelope<Vec<ProxyInteraction>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    if state
        .store
        .get_proxy_session(&auth.tenant, &id, Utc::now())
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("proxy session"));
    }
    let page = state
        .store
        .list_proxy_interactions(
            &auth.tenant,
            &id,
            limit,
            q.cursor.as_deref().filter(|c| !c.is_empty()),
        )
        .await?;
    Ok(Envelope::page(
        page.interactions,
        Pagination {
            cursor: page.next_cursor,
            has_more: page.has_more,
            total: page.total,
        },
    ))
}

/// An inbound message, as a carrier's messaging webhook sends it.
#[derive(Debug, Deserialize, ToSchema)]
pub struct InboundMessage {
    /// The sender (a participant's real number), E.164.
    #[schema(example = "+14155552671")]
    pub from: String,
    /// The proxy number it was sent to, E.164.
    #[schema(example = "+14155550100")]
    pub to: String,
    /// The text, relayed as is (at most `[proxy] max_message_bytes` bytes).
    pub body: String,
}

/// Relays a message a participant sent to its proxy number: to the other participant,
/// from that one's proxy number, over SIP MESSAGE through the number's trunk. Answered
/// at once with the interaction (`sending`); its outcome (`delivered` or `failed`) is a
/// `proxy.interaction` event and shows in the session's interactions.
#[utoipa::path(
    post,
    path = "/api/v1/proxy/inbound",
    operation_id = "proxy_inbound_message",
    tag = "proxy",
    request_body = InboundMessage,
    responses(
        (status = 202, description = "Relayed: the interaction, `sending`", body = Data<ProxyInteraction>),
        (status = 400, description = "`VALIDATION_ERROR`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no open messaging session pairs the sender with that proxy number; nothing was sent", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: the body is over the switch's message limit", body = ErrorBody),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the other participant's proxy number or trunk cannot carry it", body = ErrorBody),
    )
)]
pub async fn inbound_message(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(msg): AppJson<InboundMessage>,
) -> Result<Envelope<ProxyInteraction>, ApiError> {
    use crate::core::masked::MessageRefusal as R;
    auth.require_write()?;
    for (field, n) in [("from", &msg.from), ("to", &msg.to)] {
        if !dialplan::e164::is_e164(n) {
            return Err(ApiError::validation(
                field,
                "must be an E.164 number, e.g. +14155552671",
            ));
        }
    }
    if msg.body.is_empty() {
        return Err(ApiError::validation("body", "must not be empty"));
    }
    match state
        .switch
        .relay_proxy_message(
            &auth.tenant,
            &msg.to,
            &msg.from,
            msg.body.into_bytes().into(),
        )
        .await
    {
        Ok(interaction) => {
            state.webhooks.notify_one();
            Ok(Envelope {
                status: axum::http::StatusCode::ACCEPTED,
                data: interaction,
                pagination: None,
            })
        }
        Err(R::TooLarge { limit }) => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("body: a message may be at most {limit} bytes"),
        )),
        Err(R::UnknownPair) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no open messaging session pairs {} with proxy number {}; nothing was sent",
                msg.from, msg.to
            ),
        )),
        Err(R::Unroutable(why)) => Err(ApiError::new(ErrorCode::ServiceUnavailable, why)),
        Err(R::Store(e)) => {
            tracing::error!(error = e, "store error relaying a message");
            Err(ApiError::new(ErrorCode::InternalError, "internal error"))
        }
    }
}
