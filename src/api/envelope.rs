//! The `{data, meta}` success envelope.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

pub fn new_request_id() -> String {
    format!("req_{}", ulid::Ulid::new().to_string().to_ascii_lowercase())
}

#[derive(Debug, Serialize)]
pub struct Pagination {
    pub cursor: Option<String>,
    pub has_more: bool,
    pub total: i64,
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
        let mut meta = json!({
            "request_id": new_request_id(),
            "timestamp": crate::timefmt::millis(&chrono::Utc::now()),
        });
        if let Some(p) = self.pagination {
            meta["pagination"] = json!(p);
        }
        (self.status, Json(json!({"data": self.data, "meta": meta}))).into_response()
    }
}
