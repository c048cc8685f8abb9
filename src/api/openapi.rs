//! The OpenAPI 3.1 document of the HTTP API, generated from the code: the route table
//! (`super::routes`) registers each handler with the operation its `#[utoipa::path]`
//! describes, the schemas come from the types that are serialised, and what every
//! authenticated operation can answer (401, 429, 500) is added here once.
//! Served at `GET /api/v1/openapi.json`, without auth.

use std::sync::LazyLock;

use axum::response::IntoResponse;
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};

use super::envelope::{Meta, PageMeta, Pagination};
use super::error::{ErrorBody, ErrorCode, FieldProblem};

pub const PATH: &str = "/api/v1/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard HTTP API",
        description = "Place and control calls through the switch's SIP trunks. Every \
            `/api/v1` response is JSON: `{data, meta}` on success, \
            `{error, code, request_id, details?}` on error (`code` is stable; see ErrorCode). \
            Authenticate with `X-API-Key: <key>` or `Authorization: Bearer <key>`. Lists are \
            paged by cursor (`meta.pagination`). Requests per client IP and per key are \
            limited: past the limit, 429 `RATE_LIMITED` with `Retry-After`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Security),
    security(("api_key" = []), ("bearer" = [])),
    components(schemas(ErrorBody, ErrorCode, FieldProblem, Meta, PageMeta, Pagination)),
    tags(
        (name = "calls", description = "Outbound and inbound calls, their events and recordings"),
        (name = "trunks", description = "SIP trunks' health"),
        (name = "dialplan", description = "The routing plan"),
        (name = "webhooks", description = "Status callbacks' signing secret"),
        (name = "proxy", description = "Number masking: the proxy number pool and sessions between two participants"),
        (name = "agents", description = "AI agents: configuration, custom tools, conversation logs and browser realtime sessions"),
        (name = "operations", description = "Health, metrics and this document (no auth)"),
    )
)]
struct ApiDoc;

/// The two ways to present an API key.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "An API key (`switchyard api-key create`)",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The same API key as a bearer token"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "realtime_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "A single-use realtime session token (`POST /api/v1/agents/{id}/realtime-sessions`)",
            ))),
        );
    }
}

/// The document before the routes are added (`super::routes` adds them).
pub(crate) fn base() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The whole document: the route table's operations, the error responses they share, and
/// links from the responses that name a call or event to the operations on it.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = super::routes().into_openapi();
    add_links(&mut doc);
    for (path, item) in doc.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            add_shared_responses(path, op);
        }
    }
    doc
}

const CALLS: &str = "/api/v1/voice/calls";
const CALL: &str = "/api/v1/voice/calls/{id}";
const EVENTS: &str = "/api/v1/voice/calls/{id}/events";
const AGENTS: &str = "/api/v1/agents";
const AGENT: &str = "/api/v1/agents/{id}";
const TOOLS: &str = "/api/v1/agents/{id}/tools";
const TOOL: &str = "/api/v1/agents/{id}/tools/{tool_id}";

/// OpenAPI links (what a client, or the fuzzer's stateful phase, can do next): a placed
/// call's id (and the first listed call's) to every operation on one call, and a call's
/// first event to the operations on one event.
fn add_links(doc: &mut utoipa::openapi::OpenApi) {
    // (operation id, path) of every operation under one call or one event.
    let mut on_call = Vec::new();
    let mut on_event = Vec::new();
    let mut on_agent = Vec::new();
    let mut on_tool = Vec::new();
    for (path, item) in &doc.paths.paths {
        let params = path.matches('{').count();
        let ops = [&item.get, &item.put, &item.post, &item.delete, &item.patch];
        for op in ops.into_iter().flatten() {
            let Some(id) = op.operation_id.clone() else {
                continue;
            };
            if path.starts_with(CALL) && params == 1 {
                on_call.push(id);
            } else if path.starts_with(EVENTS) && params == 2 {
                on_event.push(id);
            } else if path.starts_with(AGENT) && params == 1 {
                on_agent.push(id);
            } else if path.starts_with(TOOL) && params == 2 {
                on_tool.push(id);
            }
        }
    }
    let link = |target: &str, params: &[(&str, &str)]| {
        let mut link = utoipa::openapi::link::Link::builder().operation_id(target);
        for (name, value) in params {
            link = link.parameter(*name, *value);
        }
        link.build()
    };
    let mut add = |path: &str, status: &str, links: Vec<(String, utoipa::openapi::link::Link)>| {
        let Some(item) = doc.paths.paths.get_mut(path) else {
            return;
        };
        let ops = [&mut item.get, &mut item.post];
        for op in ops.into_iter().flatten() {
            if let Some(RefOr::T(response)) = op.responses.responses.get_mut(status) {
                response
                    .links
                    .extend(links.iter().cloned().map(|(n, l)| (n, RefOr::T(l))));
            }
        }
    };
    let from_body = |pointer: &str| {
        on_call
            .iter()
            .map(|target| (target.clone(), link(target, &[("id", pointer)])))
            .collect::<Vec<_>>()
    };
    // POST answers 201, GET 200: each gets the links that fit its body.
    add(CALLS, "201", from_body("$response.body#/data/id"));
    add(CALLS, "200", from_body("$response.body#/data/0/id"));
    let to_events = on_event
        .iter()
        .map(|target| {
            let params = [
                ("id", "$request.path.id"),
                ("event_id", "$response.body#/data/0/id"),
            ];
            (target.clone(), link(target, &params))
        })
        .collect();
    add(EVENTS, "200", to_events);
    // A created (or the first listed) agent to every operation on one agent, and a
    // created tool to the operations on one tool.
    let to_agent = |pointer: &str| {
        on_agent
            .iter()
            .map(|target| (target.clone(), link(target, &[("id", pointer)])))
            .collect::<Vec<_>>()
    };
    add(AGENTS, "201", to_agent("$response.body#/data/id"));
    add(AGENTS, "200", to_agent("$response.body#/data/0/id"));
    let to_tool = on_tool
        .iter()
        .map(|target| {
            let params = [
                ("id", "$request.path.id"),
                ("tool_id", "$response.body#/data/id"),
            ];
            (target.clone(), link(target, &params))
        })
        .collect();
    add(TOOLS, "201", to_tool);
}

fn error_response(description: &str) -> ResponseBuilder {
    Response::builder().description(description).content(
        "application/json",
        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
    )
}

/// 401 for operations that take a key (those without their own `security`), 500 for them
/// too (the key is looked up in the store), 429 under `/api/` (the rate limiter's scope).
fn add_shared_responses(path: &str, op: &mut Operation) {
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, response: ResponseBuilder| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| RefOr::T(response.build()));
    };
    if op.security.is_none() {
        add(
            "401",
            error_response("`UNAUTHORIZED`: no API key, or not a valid one"),
        );
        add(
            "500",
            error_response("`INTERNAL_ERROR`: the store failed; nothing internal is shown"),
        );
    }
    if path.starts_with("/api/") {
        let retry_after = utoipa::openapi::header::HeaderBuilder::new()
            .schema(Some(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::Integer)
                    .minimum(Some(0)),
            ))
            .description(Some("Seconds until a request is accepted again"))
            .build();
        add(
            "429",
            error_response("`RATE_LIMITED`: too many requests from this IP or key")
                .header("Retry-After", retry_after),
        );
    }
}

static DOCUMENT_JSON: LazyLock<String> = LazyLock::new(|| {
    document()
        .to_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"openapi document: {e}\"}}"))
});

/// This document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "openapi_document",
    tag = "operations",
    security(()),
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object))
)]
pub(crate) async fn document_json() -> axum::response::Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOCUMENT_JSON.as_str(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::to_value(document()).unwrap_or(Value::Null)
    }

    #[test]
    fn is_openapi_3_1_with_both_auth_schemes() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["api_key"]["type"], "apiKey");
        assert_eq!(schemes["api_key"]["in"], "header");
        assert_eq!(schemes["api_key"]["name"], "X-API-Key");
        assert_eq!(schemes["bearer"]["type"], "http");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
    }

    #[test]
    fn every_error_code_is_in_the_schema() {
        let doc = doc();
        let codes = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for code in [
            "VALIDATION_ERROR",
            "INVALID_CALLER_ID",
            "INVALID_CURSOR",
            "UNAUTHORIZED",
            "FORBIDDEN",
            "NOT_FOUND",
            "METHOD_NOT_ALLOWED",
            "CALL_ALREADY_ENDED",
            "RECORDING_NOT_READY",
            "CALL_NOT_TRANSFERABLE",
            "SERVICE_UNAVAILABLE",
            "PAYLOAD_TOO_LARGE",
            "RATE_LIMITED",
            "DESTINATION_NOT_ALLOWED",
            "INTERNAL_ERROR",
            "NUMBER_ALREADY_EXISTS",
            "NUMBER_IN_USE",
            "POOL_EXHAUSTED",
        ] {
            assert!(codes.contains(&Value::from(code)), "{code} missing");
        }
        let required = &doc["components"]["schemas"]["ErrorBody"]["required"];
        for field in ["error", "code", "request_id"] {
            assert!(
                required
                    .as_array()
                    .is_some_and(|r| r.contains(&Value::from(field))),
                "ErrorBody.{field} not required: {required}"
            );
        }
    }

    /// Routes reach the router only through the route table (`super::routes`), where each
    /// is registered with its operation: no source file that uses axum adds a route, nests
    /// or merges a router any other way, so a route without documentation cannot be served.
    /// (`tests/e2e_openapi.rs` checks the converse: every documented operation is served.)
    #[test]
    fn routes_are_added_only_through_the_documented_table() {
        // Built with concat! so this test's own source does not match.
        let bypasses = [
            concat!(".", "route("),
            concat!(".", "route_service("),
            concat!(".", "nest("),
            concat!(".", "nest_service("),
            concat!(".", "merge("),
            concat!(".", "fallback_service("),
            concat!("Router", "::new("),
        ];
        let mut files = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        let mut scanned = 0;
        let mut found = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                let entries = std::fs::read_dir(&path).map_or_else(|_| Vec::new(), |d| d.collect());
                files.extend(entries.into_iter().flatten().map(|e| e.path()));
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.contains("axum") {
                continue;
            }
            scanned += 1;
            for (n, line) in text.lines().enumerate() {
                if let Some(b) = bypasses.iter().find(|b| line.contains(**b)) {
                    found.push(format!("{}:{}: {b}", path.display(), n + 1));
                }
            }
        }
        assert!(scanned >= 5, "only {scanned} files using axum found");
        assert!(
            found.is_empty(),
            "routes added outside api::routes (use .routes(routes!(handler)) with \
             #[utoipa::path] on the handler):\n{}",
            found.join("\n")
        );
    }

    /// The route table's paths are the document's (the two are one list).
    #[test]
    fn the_document_lists_the_route_table() {
        let doc = doc();
        let documented: std::collections::BTreeSet<String> = doc["paths"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        for path in [
            "/health",
            "/metrics",
            PATH,
            "/api/v1/voice/calls",
            "/api/v1/voice/calls/{id}",
            "/api/v1/voice/calls/{id}/hangup",
            "/api/v1/voice/calls/{id}/transfer",
            "/api/v1/voice/calls/{id}/events",
            "/api/v1/voice/calls/{id}/events/{event_id}/redeliver",
            "/api/v1/voice/calls/{id}/recording",
            "/api/v1/trunks",
            "/api/v1/dialplan/reload",
            "/api/v1/webhooks/secret",
            "/api/v1/webhooks/secret/rotate",
            "/api/v1/proxy/numbers",
            "/api/v1/proxy/numbers/{number}",
            "/api/v1/proxy/sessions",
            "/api/v1/proxy/sessions/{id}",
            "/api/v1/proxy/sessions/{id}/interactions",
            "/api/v1/agents/{id}/realtime",
            DEMO,
        ] {
            assert!(documented.contains(path), "{path} not documented");
        }
    }

    const DEMO: &str = "/demo/agent-web/";

    /// Every operation that needs a key says 401 and 429 and names an error body; the
    /// public ones say they need nothing.
    #[test]
    fn operations_declare_auth_and_shared_errors() {
        let doc = doc();
        let public = ["/health", "/metrics", PATH, DEMO];
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        assert!(paths.len() >= 14, "{paths:?}");
        for (path, item) in &paths {
            for (method, op) in item.as_object().into_iter().flatten() {
                let responses = &op["responses"];
                if public.contains(&path.as_str()) {
                    assert_eq!(op["security"], serde_json::json!([{}]), "{method} {path}");
                    continue;
                }
                for status in ["401", "429", "500"] {
                    assert_eq!(
                        responses[status]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
                // A WebSocket's success is its upgrade.
                assert!(
                    responses
                        .as_object()
                        .is_some_and(|r| r.keys().any(|k| k.starts_with('2') || k == "101")),
                    "{method} {path} has no success response"
                );
            }
        }
    }
}
