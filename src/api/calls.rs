//! `/api/v1/voice/calls`: place, list, get, hang up, the call's callback events and its
//! recording.

use axum::extract::State;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::envelope::{Data, Envelope, Page, Pagination};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{AppJson, AppPath as Path, AppQuery as Query, Auth, parse_limit};
use crate::core::OriginateRequest;
use crate::model::{CallEvent, CallRecord};

const MAX_METADATA_BYTES: usize = 16 * 1024;

/// A call to place through the tenant's trunk.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCall {
    /// The called number, E.164.
    #[schema(pattern = "^\\+[1-9][0-9]{7,14}$", example = "+14155552671")]
    pub to: String,
    /// The caller id: E.164 and one of the tenant's trunk `numbers`, else
    /// `INVALID_CALLER_ID`.
    #[schema(pattern = "^\\+[1-9][0-9]{7,14}$", example = "+12025551234")]
    pub from: String,
    /// Connect the answered call to this agent (`agt_…`).
    #[schema(pattern = "^agt_[^\\x00-\\x1f\\x7f-\\x9f]*$", max_length = 64)]
    pub agent_id: Option<String>,
    /// Where status callbacks are POSTed; never an internal address (SSRF guard).
    #[schema(format = "uri")]
    pub webhook_url: Option<String>,
    /// Record the call (stereo WAV, served once it has ended).
    #[serde(default)]
    pub record: bool,
    /// Seconds after answer before the switch hangs up (default `calls.default_max_duration`).
    #[schema(minimum = 1, maximum = 86400)]
    pub max_duration: Option<u64>,
    /// Seconds of ringing before the call is given up as `no_answer` (default 60).
    #[schema(minimum = 1, maximum = 600)]
    pub ring_timeout: Option<u64>,
    /// Any JSON object up to 16 KiB, returned with the call and its callbacks.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Stream the answered call's audio to an agent's WebSocket (the Twilio / Telnyx
    /// media-stream messages), and play what it sends back when `bidirectional`.
    pub stream: Option<StreamRequest>,
}

/// An agent audio stream on a call.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    /// `ws://` or `wss://`; never an internal address (SSRF guard).
    #[schema(format = "uri", example = "wss://agent.example.com/media")]
    pub url: String,
    /// `audio/x-mulaw` (the default, 8 kHz) or `audio/x-l16` (8000, 16000 or 24000 Hz).
    #[schema(example = "audio/x-mulaw")]
    pub encoding: Option<String>,
    #[schema(minimum = 8000, maximum = 24000)]
    pub sample_rate: Option<u32>,
    /// `customParameters` of the `start` message (at most 32, each value at most 512 bytes).
    pub parameters: Option<std::collections::BTreeMap<String, String>>,
    /// The agent talks: its `media` is played to the call (default true); false: it only
    /// listens.
    pub bidirectional: Option<bool>,
    /// What a normal close (1000) by the server does: `hangup` (the default) or `continue`.
    #[schema(pattern = "^(hangup|continue)$")]
    pub on_close: Option<String>,
}

impl StreamRequest {
    fn validate(
        self,
        guard: &crate::netguard::OutboundGuard,
    ) -> Result<crate::core::agent_stream::StreamSpec, ApiError> {
        if self.url.chars().any(char::is_control) {
            return Err(ApiError::validation(
                "stream.url",
                "must not contain control characters",
            ));
        }
        if let Err(e) = crate::streams::check_stream_url(guard, &self.url) {
            return Err(ApiError::validation("stream.url", e.to_string()));
        }
        let encoding = self.encoding.as_deref().unwrap_or("audio/x-mulaw");
        let rate = self.sample_rate.unwrap_or(8000);
        let format = media::stream::StreamFormat::from_mime(encoding, rate).map_err(|_| {
            ApiError::validation(
                "stream.encoding",
                "audio/x-mulaw at 8000 Hz, or audio/x-l16 at 8000, 16000 or 24000 Hz",
            )
        })?;
        let parameters = self.parameters.unwrap_or_default();
        if parameters.len() > 32
            || parameters.iter().any(|(k, v)| {
                k.len() > 128 || v.len() > 512 || k.chars().chain(v.chars()).any(char::is_control)
            })
        {
            return Err(ApiError::validation(
                "stream.parameters",
                "at most 32, names up to 128 and values up to 512 bytes, no control characters",
            ));
        }
        let hangup_on_close = match self.on_close.as_deref() {
            None | Some("hangup") => true,
            Some("continue") => false,
            Some(_) => {
                return Err(ApiError::validation(
                    "stream.on_close",
                    "must be hangup or continue",
                ));
            }
        };
        Ok(crate::core::agent_stream::StreamSpec {
            url: self.url,
            format,
            parameters,
            bidirectional: self.bidirectional.unwrap_or(true),
            hangup_on_close,
            agent: None,
        })
    }
}

impl CreateCall {
    fn validate(
        self,
        guard: &crate::netguard::OutboundGuard,
    ) -> Result<OriginateRequest, ApiError> {
        if !dialplan::e164::is_e164(&self.to) {
            return Err(ApiError::validation(
                "to",
                "must be an E.164 number, e.g. +14155552671",
            ));
        }
        if !dialplan::e164::is_e164(&self.from) {
            return Err(ApiError::validation(
                "from",
                "must be an E.164 number, e.g. +12025551234",
            ));
        }
        // No control characters in stored text: PostgreSQL refuses NUL (a 500 before).
        if let Some(agent) = &self.agent_id
            && (!agent.starts_with("agt_")
                || agent.len() > 64
                || agent.chars().any(char::is_control))
        {
            return Err(ApiError::validation(
                "agent_id",
                "must be an agent id (agt_…)",
            ));
        }
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
        if let Some(d) = self.max_duration
            && !(1..=86_400).contains(&d)
        {
            return Err(ApiError::validation(
                "max_duration",
                "must be 1 to 86400 seconds",
            ));
        }
        if let Some(r) = self.ring_timeout
            && !(1..=600).contains(&r)
        {
            return Err(ApiError::validation(
                "ring_timeout",
                "must be 1 to 600 seconds",
            ));
        }
        let metadata = self.metadata.unwrap_or_else(|| serde_json::json!({}));
        if !metadata.is_object() {
            return Err(ApiError::validation("metadata", "must be a JSON object"));
        }
        if metadata.to_string().len() > MAX_METADATA_BYTES {
            return Err(ApiError::validation("metadata", "must be at most 16 KiB"));
        }
        let stream = self.stream.map(|s| s.validate(guard)).transpose()?;
        Ok(OriginateRequest {
            to: self.to,
            from: self.from,
            agent_id: self.agent_id,
            webhook_url: self.webhook_url,
            record: self.record,
            max_duration: self.max_duration,
            ring_timeout: self.ring_timeout,
            metadata,
            stream,
        })
    }
}

#[utoipa::path(
    post,
    path = "/api/v1/voice/calls",
    operation_id = "create_call",
    tag = "calls",
    request_body = CreateCall,
    responses(
        (status = 201, description = "The call, `initiating`: its INVITE is on its way", body = Data<CallRecord>),
        (status = 400, description = "`VALIDATION_ERROR` (malformed JSON or a field, see `details`) or `INVALID_CALLER_ID`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only; `DESTINATION_NOT_ALLOWED`: the dial plan bars the number or it is outside the tenant's `allowed_destinations`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no agent `agent_id` of this tenant", body = ErrorBody),
        (status = 409, description = "`AGENT_NOT_ACTIVE`: the agent `agent_id` is draft or inactive", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: body over `http.max_body_bytes`", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: this IP or key, or the tenant's `max_calls_per_second` or `max_concurrent_calls`; see Retry-After", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a call may be placed again"))),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: no media ports free or the switch is overloaded", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(body): AppJson<CreateCall>,
) -> Result<Envelope<CallRecord>, ApiError> {
    auth.require_write()?;
    let mut req = body.validate(&state.outbound_guard)?;
    if let Some(agent_id) = req.agent_id.clone() {
        // The call talks to the agent once answered: it must exist and be active now.
        if req.stream.is_some() {
            return Err(ApiError::validation(
                "agent_id",
                "a call talks to an agent or streams to a URL, not both",
            ));
        }
        let agent = state
            .store
            .get_agent(&auth.tenant, &agent_id, chrono::Utc::now())
            .await?
            .ok_or_else(|| ApiError::not_found("agent"))?;
        if agent.status != crate::agents::model::AgentStatus::Active {
            return Err(ApiError::new(
                ErrorCode::AgentNotActive,
                format!(
                    "agent {agent_id} is {}: activate it before it takes calls",
                    agent.status.as_str()
                ),
            ));
        }
        if !agent
            .channels
            .contains(&crate::agents::model::Channel::Voice)
        {
            return Err(ApiError::validation(
                "agent_id",
                "the agent's channels do not include voice",
            ));
        }
        req.stream = Some(crate::core::agent_stream::StreamSpec::agent(
            &agent_id, None,
        ));
    }
    let call = state.switch.originate(&auth.tenant, req).await?;
    Ok(Envelope::created(call))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size (taken as text so a bad value gets our `VALIDATION_ERROR`).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100, default = 20)]
    pub limit: Option<String>,
    /// `meta.pagination.cursor` of the previous page; else `INVALID_CURSOR`.
    pub cursor: Option<String>,
}

/// The tenant's calls, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/voice/calls",
    operation_id = "list_calls",
    tag = "calls",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of calls", body = Page<Vec<CallRecord>>),
        (status = 400, description = "`VALIDATION_ERROR` (limit) or `INVALID_CURSOR`", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<ListQuery>,
) -> Result<Envelope<Vec<CallRecord>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    let page = state.store.list_calls(&auth.tenant, limit, cursor).await?;
    Ok(Envelope::page(
        page.calls,
        Pagination {
            cursor: page.next_cursor,
            has_more: page.has_more,
            total: page.total,
        },
    ))
}

/// One call of the tenant.
#[utoipa::path(
    get,
    path = "/api/v1/voice/calls/{id}",
    operation_id = "get_call",
    tag = "calls",
    params(("id" = String, Path, description = "The call's id (`call_…`)")),
    responses(
        (status = 200, description = "The call", body = Data<CallRecord>),
        (status = 404, description = "`NOT_FOUND`: no such call for this tenant", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Envelope<CallRecord>, ApiError> {
    let call = state
        .store
        .get_call(&auth.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("call"))?;
    Ok(Envelope::ok(call))
}

/// CANCEL before answer, BYE after.
#[utoipa::path(
    post,
    path = "/api/v1/voice/calls/{id}/hangup",
    operation_id = "hangup_call",
    tag = "calls",
    params(("id" = String, Path, description = "The call's id")),
    responses(
        (status = 200, description = "The call once it has ended (`completed` or `cancelled`); after 10 s without the far end's answer, as it is then", body = Data<CallRecord>),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`CALL_ALREADY_ENDED`", body = ErrorBody),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the call's command queue is full", body = ErrorBody),
    )
)]
pub async fn hangup(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Envelope<CallRecord>, ApiError> {
    auth.require_write()?;
    let call = state.switch.hangup(&auth.tenant, &id).await?;
    Ok(Envelope::ok(call))
}

#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// E.164 number or a sip:/tel: URI.
    #[schema(
        pattern = "^(\\+[1-9][0-9]{7,14}|(sip|sips|tel):[^<>\\x00-\\x1f\\x7f-\\x9f]+)$",
        max_length = 256,
        example = "+14155550000"
    )]
    pub to: String,
    /// Transit calls: the party transferred, `caller` (default) or `callee`.
    #[serde(default)]
    pub leg: Option<crate::core::transfer::TransferLeg>,
}

/// `POST /calls/{id}/transfer`: blind transfer by REFER; 202, progress in callbacks.
#[utoipa::path(
    post,
    path = "/api/v1/voice/calls/{id}/transfer",
    operation_id = "transfer_call",
    tag = "calls",
    params(("id" = String, Path, description = "The call's id")),
    request_body = TransferRequest,
    responses(
        (status = 202, description = "REFER sent; progress as `call.transfer` events", body = Data<CallRecord>),
        (status = 400, description = "`VALIDATION_ERROR`: malformed JSON or `to` not usable", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`CALL_ALREADY_ENDED`, or `CALL_NOT_TRANSFERABLE` (not answered, a transfer under way, or a target the switch cannot dial)", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the call's command queue is full", body = ErrorBody),
    )
)]
pub async fn transfer(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    crate::api::extract::AppJson(req): crate::api::extract::AppJson<TransferRequest>,
) -> Result<(axum::http::StatusCode, Envelope<CallRecord>), ApiError> {
    auth.require_write()?;
    let to = req.to.trim();
    let target = if to.starts_with("sip:") || to.starts_with("sips:") || to.starts_with("tel:") {
        to.to_owned()
    } else if dialplan::e164::is_e164(to) {
        // Made a SIP URI on the call's trunk by the call (it knows the trunk).
        to.to_owned()
    } else {
        return Err(ApiError::validation(
            "to",
            "must be an E.164 number (+ and 8 to 15 digits) or a sip:/tel: URI",
        ));
    };
    if target.len() > 256
        || target
            .chars()
            .any(|c| c.is_control() || c == '<' || c == '>')
    {
        return Err(ApiError::validation("to", "not a usable URI"));
    }
    let call = state
        .switch
        .transfer(&auth.tenant, &id, &target, req.leg)
        .await?;
    Ok((axum::http::StatusCode::ACCEPTED, Envelope::ok(call)))
}

/// The call's status-callback events and their delivery state, in order.
#[utoipa::path(
    get,
    path = "/api/v1/voice/calls/{id}/events",
    operation_id = "list_call_events",
    tag = "calls",
    params(("id" = String, Path, description = "The call's id")),
    responses(
        (status = 200, description = "The events", body = Data<Vec<CallEvent>>),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Envelope<Vec<CallEvent>>, ApiError> {
    if state.store.get_call(&auth.tenant, &id).await?.is_none() {
        return Err(ApiError::not_found("call"));
    }
    let events = state.store.list_events(&auth.tenant, &id).await?;
    Ok(Envelope::ok(events))
}

/// Queues an event for delivery again (e.g. one that `failed`).
#[utoipa::path(
    post,
    path = "/api/v1/voice/calls/{id}/events/{event_id}/redeliver",
    operation_id = "redeliver_call_event",
    tag = "calls",
    params(
        ("id" = String, Path, description = "The call's id"),
        ("event_id" = String, Path, description = "The event's id (`evt_…`)"),
    ),
    responses(
        (status = 200, description = "The event, `pending` again", body = Data<CallEvent>),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such call or event", body = ErrorBody),
    )
)]
pub async fn redeliver(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, event_id)): Path<(String, String)>,
) -> Result<Envelope<CallEvent>, ApiError> {
    auth.require_write()?;
    let event = state
        .store
        .redeliver_event(&auth.tenant, &id, &event_id, chrono::Utc::now())
        .await?
        .ok_or_else(|| ApiError::not_found("event"))?;
    state.webhooks.notify_one();
    Ok(Envelope::ok(event))
}

/// A WAV file's bytes (the document's name for the recording body).
#[derive(Debug, ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Wav(pub Vec<u8>);

/// `GET /voice/calls/{id}/recording`: the WAV for the owning tenant. 404 `NOT_FOUND` for a
/// call of another tenant, a call without a recording, and a call still live (its file
/// is not finalised until the call ends; `recording_url` is set at that point).
#[utoipa::path(
    get,
    path = "/api/v1/voice/calls/{id}/recording",
    operation_id = "get_call_recording",
    tag = "calls",
    params(("id" = String, Path, description = "The call's id")),
    responses(
        (status = 200, description = "Stereo WAV: far end left, switch right", content_type = "audio/wav", body = Wav),
        (status = 404, description = "`NOT_FOUND`: no such call, not recorded, or no file", body = ErrorBody),
        (status = 409, description = "`RECORDING_NOT_READY`: the call is still live", body = ErrorBody),
    )
)]
pub async fn recording(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let call = state
        .store
        .get_call(&auth.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("call"))?;
    if !call.record {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "call was not recorded (it was placed with record: false)",
        ));
    }
    if !call.status.is_terminal() {
        return Err(ApiError::new(
            ErrorCode::RecordingNotReady,
            "recording is not available until the call has ended",
        ));
    }
    if call.recording_url.is_none() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "call has no recording (it was not answered or recording failed)",
        ));
    }
    // `id` names a call this tenant owns (the store found it), so it is a safe file name.
    let path = state.recordings_dir.join(format!("{}.wav", call.id));
    let bytes = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "recording file is no longer available",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, path = %path.display(), "reading recording");
            return Err(ApiError::new(ErrorCode::InternalError, "internal error"));
        }
    };
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "audio/wav".to_owned()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.wav\"", call.id),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// A stream started on a live call.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct StreamStarted {
    /// `streamSid` (`MZ…`): what the server sees and what `DELETE` takes.
    pub stream_id: String,
    pub call_id: String,
    pub url: String,
    /// `connecting`: `call.stream.started` follows once the socket is up.
    pub status: String,
}

/// `POST /calls/{id}/streams`: stream a live call. On a call the switch answers itself,
/// a bidirectional stream is the call's audio (the agent talks); on a transit call the
/// stream is a listen-only fork of both parties (`inbound`: the caller, `outbound`: the
/// callee) and the media between them is untouched.
#[utoipa::path(
    post,
    path = "/api/v1/voice/calls/{id}/streams",
    operation_id = "start_call_stream",
    tag = "calls",
    params(("id" = String, Path, description = "The call's id")),
    request_body = StreamRequest,
    responses(
        (status = 201, description = "Connecting; `call.stream.started` follows", body = Data<StreamStarted>),
        (status = 400, description = "`VALIDATION_ERROR`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`CALL_ALREADY_ENDED`, or `CALL_NOT_STREAMABLE` (not answered, or a stream already runs)", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the call's command queue is full", body = ErrorBody),
    )
)]
pub async fn start_stream(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    crate::api::extract::AppJson(req): crate::api::extract::AppJson<StreamRequest>,
) -> Result<Envelope<StreamStarted>, ApiError> {
    auth.require_write()?;
    let spec = req.validate(&state.outbound_guard)?;
    let url = spec.url.clone();
    let stream_id = state.switch.start_stream(&auth.tenant, &id, spec).await?;
    Ok(Envelope::created(StreamStarted {
        stream_id,
        call_id: id,
        url,
        status: "connecting".to_owned(),
    }))
}

/// `DELETE /calls/{id}/streams/{stream_id}`: stop a stream (`stop` is sent, the socket
/// closed, `call.stream.stopped` follows); the call goes on.
#[utoipa::path(
    delete,
    path = "/api/v1/voice/calls/{id}/streams/{stream_id}",
    operation_id = "stop_call_stream",
    tag = "calls",
    params(
        ("id" = String, Path, description = "The call's id"),
        ("stream_id" = String, Path, description = "The stream's id (`MZ…`)"),
    ),
    responses(
        (status = 204, description = "Stopped"),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: no such call, or no such stream running on it", body = ErrorBody),
        (status = 409, description = "`CALL_ALREADY_ENDED`", body = ErrorBody),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the call's command queue is full", body = ErrorBody),
    )
)]
pub async fn stop_stream(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, stream_id)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    auth.require_write()?;
    if state
        .switch
        .stop_stream(&auth.tenant, &id, &stream_id)
        .await?
    {
        Ok(axum::http::StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("stream"))
    }
}
