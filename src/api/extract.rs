//! Request extractors: the caller's identity from `X-API-Key` / `Authorization: Bearer`,
//! and JSON bodies whose rejections become VALIDATION_ERROR instead of axum's plain text.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::model::Role;

/// The authenticated caller.
#[derive(Clone, Debug)]
pub struct Auth {
    pub tenant: String,
    pub role: Role,
}

impl Auth {
    /// Roles that may change things (place and hang up calls, redeliver events).
    pub fn require_write(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Owner | Role::Admin | Role::Developer | Role::Operator => Ok(()),
            Role::Member => Err(ApiError::new(
                ErrorCode::Forbidden,
                "this API key's role (member) is read-only",
            )),
        }
    }

    /// The switch's administrator (operator keys): what spans tenants.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Operator => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::Forbidden,
                "requires the switch operator's API key (role operator)",
            )),
        }
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Owner | Role::Admin | Role::Operator => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::Forbidden,
                "requires an owner or admin API key",
            )),
        }
    }
}

pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let key = header("x-api-key")
            .map(str::trim)
            .or_else(|| header("authorization").and_then(|v| v.trim().strip_prefix("Bearer ")))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing API key (X-API-Key)"))?;
        let record = state
            .store
            .find_api_key(&hash_key(key))
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "invalid API key"))?;
        Ok(Self {
            tenant: record.tenant,
            role: record.role,
        })
    }
}

/// A list's `limit` query parameter: 1 to 100, 20 when absent.
pub fn parse_limit(limit: Option<&str>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(20),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(ApiError::validation(
                "limit",
                "must be an integer from 1 to 100",
            )),
        },
    }
}

/// A `cursor` the store did not recognise.
pub fn invalid_cursor() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidCursor,
        "cursor is not one this API returned",
    )
}

/// `Json<T>` with our error shape.
#[derive(Debug)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Self(v)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    "request body is larger than the limit (http.max_body_bytes)",
                ))
            }
            Err(rejection) => Err(ApiError::new(
                ErrorCode::ValidationError,
                rejection.body_text(),
            )),
        }
    }
}

/// `Path<T>` with our error shape (axum's rejection is plain text). Our path parameters
/// are ids, which are generated text: one that is not UTF-8 once percent-decoded, or holds
/// a NUL, names nothing and is answered 404 NOT_FOUND here (a NUL reached PostgreSQL,
/// which refuses it in text, and made a 500).
#[derive(Debug)]
pub struct AppPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AppPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        // `%00` is the only spelling of NUL in a path once it has been percent-decoded.
        if parts.uri.path().contains("%00") {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "not found (an id never contains NUL)",
            ));
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(rejection) => Err(ApiError::new(ErrorCode::NotFound, rejection.body_text())),
        }
    }
}

/// `Query<T>` with our error shape (a repeated or undecodable parameter).
#[derive(Debug)]
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::ValidationError,
                rejection.body_text(),
            )),
        }
    }
}
