//! API errors: a stable machine code, a human message and the request id, never internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The stable machine code of an error. HTTP status by code: 400 `VALIDATION_ERROR`,
/// `INVALID_CALLER_ID`, `INVALID_CURSOR`; 401 `UNAUTHORIZED`; 403 `FORBIDDEN`,
/// `DESTINATION_NOT_ALLOWED`; 404 `NOT_FOUND`; 405 `METHOD_NOT_ALLOWED`; 409
/// `CALL_ALREADY_ENDED`, `RECORDING_NOT_READY`, `CALL_NOT_TRANSFERABLE`,
/// `NUMBER_ALREADY_EXISTS`, `NUMBER_IN_USE`, `POOL_EXHAUSTED`, `CALL_NOT_STREAMABLE`,
/// `AGENT_UPDATE_CONFLICT`, `AGENT_LIMIT_EXCEEDED`, `NUMBER_ALREADY_ASSIGNED`,
/// `TOOL_NAME_TAKEN`, `AGENT_NOT_ACTIVE`, `CHANNEL_NOT_ENABLED`; 413 `PAYLOAD_TOO_LARGE`; 429 `RATE_LIMITED`; 500
/// `INTERNAL_ERROR`, `REALTIME_NOT_CONFIGURED`; 503 `SERVICE_UNAVAILABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationError,
    InvalidCallerId,
    InvalidCursor,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    CallAlreadyEnded,
    RecordingNotReady,
    CallNotTransferable,
    CallNotStreamable,
    ServiceUnavailable,
    PayloadTooLarge,
    RateLimited,
    DestinationNotAllowed,
    InternalError,
    NumberAlreadyExists,
    NumberInUse,
    PoolExhausted,
    AgentUpdateConflict,
    AgentLimitExceeded,
    NumberAlreadyAssigned,
    ToolNameTaken,
    AgentNotActive,
    RealtimeNotConfigured,
    ChannelNotEnabled,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationError => "VALIDATION_ERROR",
            Self::InvalidCallerId => "INVALID_CALLER_ID",
            Self::InvalidCursor => "INVALID_CURSOR",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Forbidden => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::CallAlreadyEnded => "CALL_ALREADY_ENDED",
            Self::RecordingNotReady => "RECORDING_NOT_READY",
            Self::CallNotTransferable => "CALL_NOT_TRANSFERABLE",
            Self::CallNotStreamable => "CALL_NOT_STREAMABLE",
            Self::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::RateLimited => "RATE_LIMITED",
            Self::DestinationNotAllowed => "DESTINATION_NOT_ALLOWED",
            Self::InternalError => "INTERNAL_ERROR",
            Self::NumberAlreadyExists => "NUMBER_ALREADY_EXISTS",
            Self::NumberInUse => "NUMBER_IN_USE",
            Self::PoolExhausted => "POOL_EXHAUSTED",
            Self::AgentUpdateConflict => "AGENT_UPDATE_CONFLICT",
            Self::AgentLimitExceeded => "AGENT_LIMIT_EXCEEDED",
            Self::NumberAlreadyAssigned => "NUMBER_ALREADY_ASSIGNED",
            Self::ToolNameTaken => "TOOL_NAME_TAKEN",
            Self::AgentNotActive => "AGENT_NOT_ACTIVE",
            Self::RealtimeNotConfigured => "REALTIME_NOT_CONFIGURED",
            Self::ChannelNotEnabled => "CHANNEL_NOT_ENABLED",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::ValidationError | Self::InvalidCallerId | Self::InvalidCursor => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::DestinationNotAllowed => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::CallAlreadyEnded
            | Self::RecordingNotReady
            | Self::CallNotTransferable
            | Self::CallNotStreamable
            | Self::NumberAlreadyExists
            | Self::NumberInUse
            | Self::PoolExhausted
            | Self::AgentUpdateConflict
            | Self::AgentLimitExceeded
            | Self::NumberAlreadyAssigned
            | Self::ToolNameTaken
            | Self::AgentNotActive
            | Self::ChannelNotEnabled => StatusCode::CONFLICT,
            Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::InternalError | Self::RealtimeNotConfigured => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// One field's problem (`details` of a `VALIDATION_ERROR`).
#[derive(Debug, Serialize, ToSchema)]
pub struct FieldProblem {
    /// The request field, e.g. `to`.
    pub field: String,
    pub problem: String,
}

/// Every error response's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people (never internals).
    pub error: String,
    pub code: ErrorCode,
    /// `req_<ulid>`, as in a success response's `meta.request_id`.
    #[schema(pattern = "^req_[0-9a-z]{26}$")]
    pub request_id: String,
    /// Field-level problems; only on some `VALIDATION_ERROR`s and `INVALID_CALLER_ID`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldProblem>,
    /// `AGENT_LIMIT_EXCEEDED` only: the plan's active-agent cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_agents: Option<u32>,
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Field-level problems for VALIDATION_ERROR.
    pub details: Vec<(String, String)>,
    /// Seconds for a Retry-After header (RATE_LIMITED).
    pub retry_after: Option<u64>,
    /// `max_agents` of an AGENT_LIMIT_EXCEEDED body.
    pub max_agents: Option<u32>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            retry_after: None,
            max_agents: None,
        }
    }

    pub fn validation(field: &str, problem: impl Into<String>) -> Self {
        let problem = problem.into();
        Self {
            code: ErrorCode::ValidationError,
            message: format!("{field}: {problem}"),
            details: vec![(field.to_owned(), problem)],
            retry_after: None,
            max_agents: None,
        }
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            code: self.code,
            request_id: super::envelope::new_request_id(),
            details: self
                .details
                .into_iter()
                .map(|(field, problem)| FieldProblem { field, problem })
                .collect(),
            max_agents: self.max_agents,
        };
        let mut response = (self.code.status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        // A cursor the client sent is its mistake, not the store's.
        if matches!(e, crate::store::StoreError::InvalidCursor) {
            return super::extract::invalid_cursor();
        }
        tracing::error!(error = %e, "store error");
        Self::new(ErrorCode::InternalError, "internal error")
    }
}

impl From<crate::core::CoreError> for ApiError {
    fn from(e: crate::core::CoreError) -> Self {
        use crate::core::CoreError as C;
        match e {
            C::UnknownCallerId(n) => Self {
                code: ErrorCode::InvalidCallerId,
                message: format!("from: {n} is not a phone number registered to this account"),
                details: vec![("from".into(), "not a registered caller id".into())],
                retry_after: None,
                max_agents: None,
            },
            C::NotFound => Self::not_found("call"),
            C::AlreadyEnded(call) => Self::new(
                ErrorCode::CallAlreadyEnded,
                format!(
                    "call has already ended with status {}",
                    call.status.as_str()
                ),
            ),
            C::NoMediaPorts | C::Overloaded => {
                Self::new(ErrorCode::ServiceUnavailable, e.to_string())
            }
            C::NotTransferable(why) => Self::new(ErrorCode::CallNotTransferable, why),
            C::NotStreamable(why) => Self::new(ErrorCode::CallNotStreamable, why),
            C::Refused(r) => {
                use super::super::core::tenant_policy::Refusal as R;
                let message = r.to_string();
                match r {
                    R::Barred { .. } | R::NotAllowed { .. } => {
                        Self::new(ErrorCode::DestinationNotAllowed, message)
                    }
                    R::Concurrent(_) => {
                        let mut e = Self::new(ErrorCode::RateLimited, message);
                        e.retry_after = Some(1);
                        e
                    }
                    R::Rate(_, wait) => {
                        let mut e = Self::new(ErrorCode::RateLimited, message);
                        e.retry_after = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
                        e
                    }
                }
            }
            C::Store(s) => s.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serialised code (what clients see) is the one `as_str` names (logs, docs).
    #[test]
    fn codes_serialise_as_their_names() {
        use ErrorCode as E;
        // Exhaustive: a new code does not compile until it is in the list below too.
        let listed = |c: E| match c {
            E::ValidationError
            | E::InvalidCallerId
            | E::InvalidCursor
            | E::Unauthorized
            | E::Forbidden
            | E::NotFound
            | E::MethodNotAllowed
            | E::CallAlreadyEnded
            | E::RecordingNotReady
            | E::CallNotTransferable
            | E::CallNotStreamable
            | E::ServiceUnavailable
            | E::PayloadTooLarge
            | E::RateLimited
            | E::DestinationNotAllowed
            | E::InternalError
            | E::NumberAlreadyExists
            | E::NumberInUse
            | E::PoolExhausted
            | E::AgentUpdateConflict
            | E::AgentLimitExceeded
            | E::NumberAlreadyAssigned
            | E::ToolNameTaken
            | E::AgentNotActive
            | E::RealtimeNotConfigured
            | E::ChannelNotEnabled => c,
        };
        for code in [
            E::ValidationError,
            E::InvalidCallerId,
            E::InvalidCursor,
            E::Unauthorized,
            E::Forbidden,
            E::NotFound,
            E::MethodNotAllowed,
            E::CallAlreadyEnded,
            E::RecordingNotReady,
            E::CallNotTransferable,
            E::CallNotStreamable,
            E::ServiceUnavailable,
            E::PayloadTooLarge,
            E::RateLimited,
            E::DestinationNotAllowed,
            E::InternalError,
            E::NumberAlreadyExists,
            E::NumberInUse,
            E::PoolExhausted,
            E::AgentUpdateConflict,
            E::AgentLimitExceeded,
            E::NumberAlreadyAssigned,
            E::ToolNameTaken,
            E::AgentNotActive,
            E::RealtimeNotConfigured,
            E::ChannelNotEnabled,
        ]
        .map(listed)
        {
            assert_eq!(
                serde_json::to_value(code).ok(),
                Some(serde_json::Value::from(code.as_str()))
            );
        }
    }
}
