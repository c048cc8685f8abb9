//! The `{data, meta}` success envelope. The types below are what is serialised, so the
//! OpenAPI document (derived from them) shows exactly what is sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

pub fn new_request_id() -> String {
    format!("req_{}", ulid::Ulid::new().to_string().to_ascii_lowercase())
}

/// Cursor pagination of a list (`meta.pagination`).
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    /// Pass as `cursor` to get the next page; null on the last page.
    pub cursor: Option<String>,
    pub has_more: bool,
    /// Items in the whole list, all pages.
    pub total: i64,
}

/// `meta` of a single object's response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Meta {
    /// `req_<ulid>`, unique per response (also in errors).
    #[schema(pattern = "^req_[0-9a-z]{26}$")]
    pub request_id: String,
    /// When the response was made (RFC 3339 UTC, milliseconds).
    #[schema(format = DateTime)]
    pub timestamp: String,
}

/// `meta` of a list's response.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageMeta {
    #[schema(pattern = "^req_[0-9a-z]{26}$")]
    pub request_id: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
    pub pagination: Pagination,
}

/// A success response: `{data, meta}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
    pub meta: Meta,
}

/// A page of a list: `{data: [...], meta: {..., pagination}}` (`T` is the list).
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: T,
    pub meta: PageMeta,
}

#[derive(Debug)]
pub struct Envelope<T> {
    pub status: StatusCode,
    pub data: T,
    pub pagination: Option<Pagination>,
}

impl<T> Envelope<T> {
    pub fn ok(data: T) -> Self {
        Self {
            status: StatusCode::OK,
            data,
            pagination: None,
        }
    }

    pub fn created(data: T) -> Self {
        Self {
            status: StatusCode::CREATED,
            data,
            pagination: None,
        }
    }

    pub fn page(data: T, pagination: Pagination) -> Self {
        Self {
            status: StatusCode::OK,
            data,
            pagination: Some(pagination),
        }
    }
}

impl<T: Serialize> IntoResponse for Envelope<T> {
    fn into_response(self) -> Response {
        let request_id = new_request_id();
        let timestamp = crate::timefmt::millis(&chrono::Utc::now());
        match self.pagination {
            None => (
                self.status,
                Json(Data {
                    data: self.data,
                    meta: Meta {
                        request_id,
                        timestamp,
                    },
                }),
            )
                .into_response(),
            Some(pagination) => (
                self.status,
                Json(Page {
                    data: self.data,
                    meta: PageMeta {
                        request_id,
                        timestamp,
                        pagination,
                    },
                }),
            )
                .into_response(),
        }
    }
}
