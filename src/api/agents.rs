//! `/api/v1/agents`: AI agents (prompt, voice, Server URL, phone numbers, status), their
//! custom tools, their conversation logs, and short-lived tokens for browser realtime
//! sessions. One API merging the Agents API and the realtime voice agents API of the
//! reference documents, in this API's conventions (snake_case, `{data, meta}`, codes).
//!
//! Agents are created `draft`; only `active` ones take calls and realtime sessions, and
//! activating one counts against the tenant's plan (`[agents.plans]`). PATCH is a
//! compare-and-set on `updated_at` (`expected_updated_at`). DELETE ends the agent's live
//! conversations (through `LiveConversations`) and deletes the agent with its tools and
//! number assignments; its conversations stay in the store as history, but are no longer
//! reachable through the API (they are listed under the agent).

use std::collections::{BTreeMap, HashSet};

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::envelope::{Data, Envelope, Page, Pagination};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{AppJson, AppPath as Path, AppQuery as Query, Auth, parse_limit};
use crate::agents::model::{
    Agent, AgentKind, AgentStatus, AgentType, Channel, Conversation, ConversationChannel,
    ConversationStatus, GreetingType, Message, MessageRole, NumberAssignment, OnError, PromptType,
    Tool, ToolMethod,
};
use crate::store::StoreError;

const MAX_NAME_CHARS: usize = 200;
const MAX_MODEL_CHARS: usize = 200;
const MAX_PROMPT_CHARS: usize = 100_000;
const MAX_GREETING_CHARS: usize = 2_000;
const MAX_VOICE_CHARS: usize = 100;
const MAX_URL_CHARS: usize = 2_048;
const MAX_SECRET_CHARS: usize = 512;
const MAX_HEADERS: usize = 50;
const MAX_HEADER_NAME_CHARS: usize = 128;
const MAX_HEADER_VALUE_CHARS: usize = 4_096;
const MAX_ASSIGNMENTS: usize = 100;
const MAX_DESCRIPTION_CHARS: usize = 2_000;
const MAX_SCHEMA_BYTES: usize = 64 * 1024;
/// Names the runtime gives its own tools; a custom tool may not take them.
const BUILT_IN_TOOLS: [&str; 2] = ["transfer_call", "end_call"];

/// `Option<Option<T>>` for PATCH: absent (None), `null` (Some(None)) or a value.
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// An agent as the API shows it: `server_secret` never, `server_secret_set` instead.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentBody {
    #[schema(example = "agt_01jd6x3m2r8w9k1c4v7b5n0q2s")]
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AgentKind,
    /// The model, e.g. `gpt-realtime`.
    pub model: String,
    pub status: AgentStatus,
    /// Who the agent is.
    pub identity: Option<String>,
    pub instructions: Option<String>,
    /// Read-only: `identity` and `instructions`, a blank line between.
    pub system_prompt: String,
    pub prompt_type: PromptType,
    /// BCP 47, e.g. `en-US`.
    pub language: String,
    pub voice_name: Option<String>,
    pub greeting_type: GreetingType,
    pub static_greeting: Option<String>,
    pub channels: Vec<Channel>,
    pub agent_type: AgentType,
    pub server_url: Option<String>,
    pub server_headers: BTreeMap<String, String>,
    /// Whether a Server URL signing secret is set (the secret itself is write-only).
    pub server_secret_set: bool,
    pub handoff_phone_number: Option<String>,
    pub phone_number_assignments: Vec<NumberAssignment>,
    /// Custom tools of the agent.
    pub tool_count: i64,
    /// Voice conversations started since midnight UTC.
    pub calls_today: i64,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// Changes on every write; PATCH's `expected_updated_at`.
    #[serde(serialize_with = "crate::timefmt::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

impl From<Agent> for AgentBody {
    fn from(a: Agent) -> Self {
        Self {
            system_prompt: a.system_prompt(),
            server_secret_set: a.server_secret.is_some(),
            id: a.id,
            name: a.name,
            kind: a.kind,
            model: a.model,
            status: a.status,
            identity: a.identity,
            instructions: a.instructions,
            prompt_type: a.prompt_type,
            language: a.language,
            voice_name: a.voice_name,
            greeting_type: a.greeting_type,
            static_greeting: a.static_greeting,
            channels: a.channels,
            agent_type: a.agent_type,
            server_url: a.server_url,
            server_headers: a.server_headers,
            handoff_phone_number: a.handoff_phone_number,
            phone_number_assignments: a.phone_number_assignments,
            tool_count: a.tool_count,
            calls_today: a.calls_today,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// The fields of an agent to create (`CreateAgent`) or replace (`ReplaceAgent`); the
/// same list, with `status` and `expected_updated_at` for PUT only.
macro_rules! agent_request {
    ($(#[$m:meta])* $name:ident { $($extra:tt)* }) => {
        $(#[$m])*
        #[derive(Debug, Deserialize, ToSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// 1 to 200 characters.
            #[schema(min_length = 1, max_length = 200, example = "Receptionist")]
            pub name: String,
            /// Default `conversational`.
            #[serde(rename = "type")]
            pub kind: Option<AgentKind>,
            /// The model, e.g. `gpt-realtime` or `gemini-2.5-flash-native-audio-preview-09-2025`.
            #[schema(min_length = 1, max_length = 200, example = "gpt-realtime")]
            pub model: String,
            /// Who the agent is and what role it plays.
            pub identity: Option<String>,
            /// The prompt's instructions (required when `prompt_type` is `static`).
            pub instructions: Option<String>,
            /// A synonym of `instructions` (give one or the other).
            pub system_prompt: Option<String>,
            /// Default `static`; `dynamic` needs a `webhook` agent with a `server_url`.
            pub prompt_type: Option<PromptType>,
            /// BCP 47 (default `en-US`).
            #[schema(pattern = "^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length = 35, example = "en-US")]
            pub language: Option<String>,
            #[schema(min_length = 1, max_length = 100, example = "Aoede")]
            pub voice_name: Option<String>,
            /// Default `none`; `static` needs `static_greeting`, `dynamic` a dynamic prompt.
            pub greeting_type: Option<GreetingType>,
            #[schema(max_length = 2000)]
            pub static_greeting: Option<String>,
            /// Default `["voice"]`; each once.
            #[schema(min_items = 1, max_items = 4)]
            pub channels: Option<Vec<Channel>>,
            /// Default `webhook`.
            pub agent_type: Option<AgentType>,
            /// The webhook agent's endpoint: http(s), never an internal address.
            #[schema(format = "uri", max_length = 2048)]
            pub server_url: Option<String>,
            /// Extra headers sent to the Server URL (at most 50).
            pub server_headers: Option<BTreeMap<String, String>>,
            /// Signs Server URL requests; write-only. Left out: the current one stays;
            /// `null`: removed.
            #[serde(default, deserialize_with = "nullable")]
            #[schema(value_type = Option<String>, min_length = 1, max_length = 512)]
            pub server_secret: Option<Option<String>>,
            /// E.164: where `transfer_call` goes when the number called has no handoff.
            #[schema(pattern = "^\\+[1-9][0-9]{7,14}$", example = "+15551234567")]
            pub handoff_phone_number: Option<String>,
            /// The tenant's numbers routed to this agent (each reaches one agent at most).
            #[schema(max_items = 100)]
            pub phone_number_assignments: Option<Vec<NumberAssignment>>,
            $($extra)*
        }
    };
}

agent_request!(
    /// A new agent (always created `draft`).
    CreateAgent {}
);

agent_request!(
    /// An agent's whole configuration: what is left out takes its default, except
    /// `server_secret` and `status`, which stay as they are.
    ReplaceAgent {
        /// Activating counts against the tenant's active-agent allowance.
        pub status: Option<AgentStatus>,
        /// When given, the replace is refused (409) unless the agent's `updated_at` is this.
        #[schema(format = DateTime)]
        pub expected_updated_at: Option<String>,
    }
);

/// Some fields of an agent; `expected_updated_at` is required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchAgent {
    /// The agent's current `updated_at`: if it changed meanwhile, 409 and nothing changes.
    #[schema(format = DateTime, example = "2026-05-14T12:00:00.000Z")]
    pub expected_updated_at: String,
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<AgentKind>,
    #[schema(min_length = 1, max_length = 200)]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub identity: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub instructions: Option<Option<String>>,
    /// A synonym of `instructions`.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub system_prompt: Option<Option<String>>,
    pub prompt_type: Option<PromptType>,
    #[schema(pattern = "^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", max_length = 35)]
    pub language: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 100)]
    pub voice_name: Option<Option<String>>,
    pub greeting_type: Option<GreetingType>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, max_length = 2000)]
    pub static_greeting: Option<Option<String>>,
    #[schema(min_items = 1, max_items = 4)]
    pub channels: Option<Vec<Channel>>,
    pub agent_type: Option<AgentType>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = "uri", max_length = 2048)]
    pub server_url: Option<Option<String>>,
    pub server_headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 512)]
    pub server_secret: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, pattern = "^\\+[1-9][0-9]{7,14}$")]
    pub handoff_phone_number: Option<Option<String>>,
    #[schema(max_items = 100)]
    pub phone_number_assignments: Option<Vec<NumberAssignment>>,
    pub status: Option<AgentStatus>,
}

/// Blank text counts as not given.
fn text(value: Option<String>) -> Option<String> {
    value.filter(|s| !s.trim().is_empty())
}

/// `instructions` from either spelling; both given and different: refused.
fn instructions_of(
    instructions: Option<String>,
    system_prompt: Option<String>,
) -> Result<Option<String>, ApiError> {
    match (instructions, system_prompt) {
        (Some(a), Some(b)) if a != b => Err(ApiError::validation(
            "system_prompt",
            "is a synonym of instructions: give one of them (or the same text)",
        )),
        (a, b) => Ok(text(a.or(b))),
    }
}

fn ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

fn parse_expected(text: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| ms(t.with_timezone(&Utc)))
        .map_err(|_| {
            ApiError::validation(
                "expected_updated_at",
                "must be an RFC 3339 date-time (the agent's updated_at)",
            )
        })
}

macro_rules! agent_from_request {
    ($body:expr, $base:expr) => {{
        let body = $body;
        let base: Agent = $base;
        Agent {
            name: body.name,
            kind: body.kind.unwrap_or(AgentKind::Conversational),
            model: body.model,
            identity: text(body.identity),
            instructions: instructions_of(body.instructions, body.system_prompt)?,
            prompt_type: body.prompt_type.unwrap_or(PromptType::Static),
            language: body.language.unwrap_or_else(|| "en-US".to_owned()),
            voice_name: body.voice_name,
            greeting_type: body.greeting_type.unwrap_or(GreetingType::None),
            static_greeting: text(body.static_greeting),
            channels: body.channels.unwrap_or_else(|| vec![Channel::Voice]),
            agent_type: body.agent_type.unwrap_or(AgentType::Webhook),
            server_url: text(body.server_url),
            server_headers: body.server_headers.unwrap_or_default(),
            server_secret: match body.server_secret {
                None => base.server_secret.clone(),
                Some(s) => s,
            },
            handoff_phone_number: body.handoff_phone_number,
            phone_number_assignments: body.phone_number_assignments.unwrap_or_default(),
            ..base
        }
    }};
}

fn is_header_name(name: &str) -> bool {
    (1..=MAX_HEADER_NAME_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_headers(field: &str, headers: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if headers.len() > MAX_HEADERS {
        return Err(ApiError::validation(
            field,
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in headers {
        if !is_header_name(name) {
            return Err(ApiError::validation(
                &format!("{field}.{name}"),
                "a header name is 1 to 128 token characters (letters, digits, !#$%&'*+-.^_`|~)",
            ));
        }
        if value.chars().count() > MAX_HEADER_VALUE_CHARS
            || value.chars().any(|c| c.is_control() && c != '\t')
        {
            return Err(ApiError::validation(
                &format!("{field}.{name}"),
                "a header value is at most 4096 characters, without control characters",
            ));
        }
    }
    Ok(())
}

fn check_url(
    field: &str,
    url: &str,
    guard: &crate::netguard::OutboundGuard,
) -> Result<(), ApiError> {
    if url.chars().count() > MAX_URL_CHARS || url.chars().any(char::is_control) {
        return Err(ApiError::validation(
            field,
            "must be a URL of at most 2048 characters, without control characters",
        ));
    }
    guard
        .check_call(url)
        .map(|_| ())
        .map_err(|e| ApiError::validation(field, format!("must be an http(s) URL: {e}")))
}

fn check_e164(field: &str, number: &str) -> Result<(), ApiError> {
    if dialplan::e164::is_e164(number) {
        Ok(())
    } else {
        Err(ApiError::validation(
            field,
            "must be an E.164 number, e.g. +14155550100",
        ))
    }
}

fn is_language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let primary = parts.next().unwrap_or_default();
    tag.len() <= 35
        && (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn check_text(field: &str, value: &str, min: usize, max: usize) -> Result<(), ApiError> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(ApiError::validation(
            field,
            format!("must be {min} to {max} characters"),
        ));
    }
    // Prompts may hold newlines and tabs, but PostgreSQL stores no NUL (a 500 before,
    // found by Schemathesis on PostgreSQL).
    if value.contains('\0') {
        return Err(ApiError::validation(field, "must not contain NUL (U+0000)"));
    }
    Ok(())
}

/// Every rule an agent (as it would be stored) must meet, given its tools.
fn validate_agent(a: &Agent, tools: &[Tool], state: &AppState) -> Result<(), ApiError> {
    check_text("name", &a.name, 1, MAX_NAME_CHARS)?;
    if a.name.trim().is_empty() || a.name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "name",
            "must not be blank or hold control characters",
        ));
    }
    check_text("model", &a.model, 1, MAX_MODEL_CHARS)?;
    if a.model.trim().is_empty() || a.model.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "model",
            "must not be blank or hold control characters",
        ));
    }
    for (field, value) in [("identity", &a.identity), ("instructions", &a.instructions)] {
        if let Some(v) = value {
            check_text(field, v, 0, MAX_PROMPT_CHARS)?;
        }
    }
    if !is_language_tag(&a.language) {
        return Err(ApiError::validation(
            "language",
            "must be a BCP 47 language tag, e.g. en-US",
        ));
    }
    if let Some(v) = &a.voice_name {
        check_text("voice_name", v, 1, MAX_VOICE_CHARS)?;
        if v.chars().any(char::is_control) {
            return Err(ApiError::validation(
                "voice_name",
                "must not hold control characters",
            ));
        }
    }
    if let Some(g) = &a.static_greeting {
        check_text("static_greeting", g, 0, MAX_GREETING_CHARS)?;
    }
    if a.channels.is_empty() {
        return Err(ApiError::validation(
            "channels",
            "must list at least one of voice, web, whatsapp, sms",
        ));
    }
    if a.channels.iter().collect::<HashSet<_>>().len() != a.channels.len() {
        return Err(ApiError::validation(
            "channels",
            "must list each channel once",
        ));
    }
    if let Some(url) = &a.server_url {
        check_url("server_url", url, &state.outbound_guard)?;
    }
    check_headers("server_headers", &a.server_headers)?;
    if let Some(s) = &a.server_secret {
        check_text("server_secret", s, 1, MAX_SECRET_CHARS)?;
    }
    if let Some(n) = &a.handoff_phone_number {
        check_e164("handoff_phone_number", n)?;
    }
    if a.phone_number_assignments.len() > MAX_ASSIGNMENTS {
        return Err(ApiError::validation(
            "phone_number_assignments",
            format!("at most {MAX_ASSIGNMENTS} numbers"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, n) in a.phone_number_assignments.iter().enumerate() {
        let field = format!("phone_number_assignments[{i}].phone_number");
        check_e164(&field, &n.phone_number)?;
        if !seen.insert(n.phone_number.as_str()) {
            return Err(ApiError::validation(&field, "is listed twice"));
        }
        let owned = state
            .config
            .trunks
            .iter()
            .any(|t| t.tenant == a.tenant && t.numbers.contains(&n.phone_number));
        if !owned {
            return Err(ApiError::validation(
                &field,
                format!(
                    "{} is not one of this tenant's numbers (a number of one of its trunks)",
                    n.phone_number
                ),
            ));
        }
        if let Some(h) = &n.handoff_phone_number {
            check_e164(
                &format!("phone_number_assignments[{i}].handoff_phone_number"),
                h,
            )?;
        }
    }
    // The prompt and greeting rules of the realtime agents document.
    if a.prompt_type == PromptType::Dynamic {
        if a.agent_type != AgentType::Webhook {
            return Err(ApiError::validation(
                "prompt_type",
                "dynamic prompts need agent_type webhook",
            ));
        }
        if a.server_url.is_none() {
            return Err(ApiError::validation(
                "server_url",
                "dynamic prompts are fetched from the server_url: give one",
            ));
        }
    } else if a.instructions.is_none() {
        return Err(ApiError::validation(
            "instructions",
            "static prompts need instructions",
        ));
    }
    match a.greeting_type {
        GreetingType::Dynamic if a.prompt_type != PromptType::Dynamic => {
            return Err(ApiError::validation(
                "greeting_type",
                "dynamic greetings need prompt_type dynamic",
            ));
        }
        GreetingType::Static if a.static_greeting.is_none() => {
            return Err(ApiError::validation(
                "static_greeting",
                "static greetings need static_greeting",
            ));
        }
        _ => {}
    }
    // The tools must still fit the integration mode.
    if !tools.is_empty() {
        match a.agent_type {
            AgentType::Static => {
                return Err(ApiError::validation(
                    "agent_type",
                    "static agents take no tools: delete the agent's tools first",
                ));
            }
            AgentType::Webhook if a.server_url.is_none() => {
                return Err(ApiError::validation(
                    "server_url",
                    "a webhook agent's tools are called through its server_url: keep one",
                ));
            }
            AgentType::Webhook if tools.iter().any(|t| t.tool_url.is_some()) => {
                return Err(ApiError::validation(
                    "agent_type",
                    "the agent's tools have tool_url, which webhook agents' tools do not",
                ));
            }
            AgentType::Http if tools.iter().any(|t| t.tool_url.is_none()) => {
                return Err(ApiError::validation(
                    "agent_type",
                    "http agents' tools need a tool_url, which some of the agent's lack",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// An agent write's store errors as the API's.
fn agent_write_error(e: StoreError) -> ApiError {
    match e {
        StoreError::AgentConflict => ApiError::new(
            ErrorCode::AgentUpdateConflict,
            "the agent changed since expected_updated_at: read it again and retry",
        ),
        StoreError::AgentLimit(max) => {
            let mut err = ApiError::new(
                ErrorCode::AgentLimitExceeded,
                format!(
                    "active agent limit exceeded: the plan allows {max} active agent(s); \
                     deactivate one or change plan"
                ),
            );
            err.max_agents = Some(max);
            err
        }
        StoreError::NumberAssigned(n) => ApiError::new(
            ErrorCode::NumberAlreadyAssigned,
            format!("{n} is assigned to another agent"),
        ),
        StoreError::ToolNameTaken => ApiError::new(
            ErrorCode::ToolNameTaken,
            "the agent has a tool by that name already",
        ),
        e => e.into(),
    }
}

async fn find_agent(state: &AppState, tenant: &str, id: &str) -> Result<Agent, ApiError> {
    state
        .store
        .get_agent(tenant, id, Utc::now())
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))
}

/// Creates an agent, `draft`.
#[utoipa::path(
    post,
    path = "/api/v1/agents",
    operation_id = "create_agent",
    tag = "agents",
    request_body = CreateAgent,
    responses(
        (status = 201, description = "The agent, `draft`", body = Data<AgentBody>),
        (status = 400, description = "`VALIDATION_ERROR` (malformed JSON or a field, see `details`; a number not the tenant's)", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 409, description = "`NUMBER_ALREADY_ASSIGNED`: a number is another agent's", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
    )
)]
pub async fn create_agent(
    State(state): State<AppState>,
    auth: Auth,
    AppJson(body): AppJson<CreateAgent>,
) -> Result<Envelope<AgentBody>, ApiError> {
    auth.require_write()?;
    let now = ms(Utc::now());
    let base = Agent {
        id: format!("agt_{}", ulid::Ulid::new().to_string().to_ascii_lowercase()),
        tenant: auth.tenant.clone(),
        name: String::new(),
        kind: AgentKind::Conversational,
        model: String::new(),
        status: AgentStatus::Draft,
        identity: None,
        instructions: None,
        prompt_type: PromptType::Static,
        language: String::new(),
        voice_name: None,
        greeting_type: GreetingType::None,
        static_greeting: None,
        channels: Vec::new(),
        agent_type: AgentType::Webhook,
        server_url: None,
        server_headers: BTreeMap::new(),
        server_secret: None,
        handoff_phone_number: None,
        phone_number_assignments: Vec::new(),
        created_at: now,
        updated_at: now,
        tool_count: 0,
        calls_today: 0,
    };
    let agent = agent_from_request!(body, base);
    validate_agent(&agent, &[], &state)?;
    let created = state
        .store
        .create_agent(&agent, now)
        .await
        .map_err(agent_write_error)?;
    if !created.phone_number_assignments.is_empty() {
        state.switch.agent_numbers_changed().await;
    }
    Ok(Envelope::created(created.into()))
}

/// `limit` and `cursor`, as every list takes them.
pub use super::calls::ListQuery as PageQuery;

/// The tenant's agents, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/agents",
    operation_id = "list_agents",
    tag = "agents",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of agents", body = Page<Vec<AgentBody>>),
        (status = 400, description = "`VALIDATION_ERROR` (limit) or `INVALID_CURSOR`", body = ErrorBody),
    )
)]
pub async fn list_agents(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<PageQuery>,
) -> Result<Envelope<Vec<AgentBody>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    let page = state
        .store
        .list_agents(&auth.tenant, limit, cursor, Utc::now())
        .await?;
    Ok(Envelope::page(
        page.agents.into_iter().map(AgentBody::from).collect(),
        Pagination {
            cursor: page.next_cursor,
            has_more: page.has_more,
            total: page.total,
        },
    ))
}

/// One agent and its whole configuration.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}",
    operation_id = "get_agent",
    tag = "agents",
    params(("id" = String, Path, description = "The agent's id (`agt_…`)")),
    responses(
        (status = 200, description = "The agent", body = Data<AgentBody>),
        (status = 404, description = "`NOT_FOUND`: no such agent for this tenant", body = ErrorBody),
    )
)]
pub async fn get_agent(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Envelope<AgentBody>, ApiError> {
    Ok(Envelope::ok(
        find_agent(&state, &auth.tenant, &id).await?.into(),
    ))
}

/// Writes a validated agent over `current` (compare-and-set on `expected`).
async fn write_agent(
    state: &AppState,
    agent: Agent,
    expected: DateTime<Utc>,
) -> Result<Envelope<AgentBody>, ApiError> {
    let tools = state
        .store
        .list_agent_tools(&agent.tenant, &agent.id)
        .await?;
    validate_agent(&agent, &tools, state)?;
    let max_active = state.config.max_active_agents(&agent.tenant);
    let updated = state
        .store
        .update_agent(&agent, expected, max_active, Utc::now())
        .await
        .map_err(agent_write_error)?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    state.switch.agent_numbers_changed().await;
    Ok(Envelope::ok(updated.into()))
}

/// Replaces an agent's configuration; new conversations use it at once.
#[utoipa::path(
    put,
    path = "/api/v1/agents/{id}",
    operation_id = "replace_agent",
    tag = "agents",
    params(("id" = String, Path, description = "The agent's id")),
    request_body = ReplaceAgent,
    responses(
        (status = 200, description = "The agent as it is now", body = Data<AgentBody>),
        (status = 400, description = "`VALIDATION_ERROR`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`AGENT_UPDATE_CONFLICT` (changed meanwhile), `AGENT_LIMIT_EXCEEDED` (with `max_agents`) or `NUMBER_ALREADY_ASSIGNED`", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
    )
)]
pub async fn replace_agent(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    AppJson(body): AppJson<ReplaceAgent>,
) -> Result<Envelope<AgentBody>, ApiError> {
    auth.require_write()?;
    let current = find_agent(&state, &auth.tenant, &id).await?;
    let expected = match body.expected_updated_at.as_deref() {
        Some(t) => parse_expected(t)?,
        None => current.updated_at,
    };
    let status = body.status.unwrap_or(current.status);
    let mut agent = agent_from_request!(body, current);
    agent.status = status;
    write_agent(&state, agent, expected).await
}

/// Changes the fields given and keeps the others; the result must still be a valid agent.
#[utoipa::path(
    patch,
    path = "/api/v1/agents/{id}",
    operation_id = "update_agent",
    tag = "agents",
    params(("id" = String, Path, description = "The agent's id")),
    request_body = PatchAgent,
    responses(
        (status = 200, description = "The agent as it is now", body = Data<AgentBody>),
        (status = 400, description = "`VALIDATION_ERROR`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`AGENT_UPDATE_CONFLICT` (`expected_updated_at` is not the agent's `updated_at`; nothing changed), `AGENT_LIMIT_EXCEEDED` (with `max_agents`) or `NUMBER_ALREADY_ASSIGNED`", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
    )
)]
pub async fn update_agent(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    AppJson(p): AppJson<PatchAgent>,
) -> Result<Envelope<AgentBody>, ApiError> {
    auth.require_write()?;
    let expected = parse_expected(&p.expected_updated_at)?;
    let current = find_agent(&state, &auth.tenant, &id).await?;
    if current.updated_at != expected {
        return Err(agent_write_error(StoreError::AgentConflict));
    }
    let instructions = match (p.instructions, p.system_prompt) {
        (None, None) => current.instructions.clone(),
        (a, b) => instructions_of(a.flatten(), b.flatten())?,
    };
    let merged = Agent {
        name: p.name.unwrap_or_else(|| current.name.clone()),
        kind: p.kind.unwrap_or(current.kind),
        model: p.model.unwrap_or_else(|| current.model.clone()),
        identity: p.identity.map_or_else(|| current.identity.clone(), text),
        instructions,
        prompt_type: p.prompt_type.unwrap_or(current.prompt_type),
        language: p.language.unwrap_or_else(|| current.language.clone()),
        voice_name: p.voice_name.unwrap_or_else(|| current.voice_name.clone()),
        greeting_type: p.greeting_type.unwrap_or(current.greeting_type),
        static_greeting: p
            .static_greeting
            .map_or_else(|| current.static_greeting.clone(), text),
        channels: p.channels.unwrap_or_else(|| current.channels.clone()),
        agent_type: p.agent_type.unwrap_or(current.agent_type),
        server_url: p
            .server_url
            .map_or_else(|| current.server_url.clone(), text),
        server_headers: p
            .server_headers
            .unwrap_or_else(|| current.server_headers.clone()),
        server_secret: p
            .server_secret
            .unwrap_or_else(|| current.server_secret.clone()),
        handoff_phone_number: p
            .handoff_phone_number
            .unwrap_or_else(|| current.handoff_phone_number.clone()),
        phone_number_assignments: p
            .phone_number_assignments
            .unwrap_or_else(|| current.phone_number_assignments.clone()),
        status: p.status.unwrap_or(current.status),
        ..current
    };
    write_agent(&state, merged, expected).await
}

/// Deletes an agent with its tools and number assignments; its live conversations are
/// ended gracefully. Its conversation logs stay stored, no longer listed.
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{id}",
    operation_id = "delete_agent",
    tag = "agents",
    params(("id" = String, Path, description = "The agent's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn delete_agent(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    auth.require_write()?;
    // The tenant's own agent only: another tenant's id must not end its conversations.
    find_agent(&state, &auth.tenant, &id).await?;
    let ended = state.live_conversations.end_agent(&id);
    if ended > 0 {
        tracing::info!(agent_id = %id, conversations = ended, "ending a deleted agent's conversations");
    }
    if state.store.delete_agent(&auth.tenant, &id).await? {
        state.switch.agent_numbers_changed().await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("agent"))
    }
}

/// A custom tool as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolBody {
    #[schema(example = "tool_01jd6x3m2r8w9k1c4v7b5n0q2s")]
    pub id: String,
    pub agent_id: String,
    /// The function name the model calls.
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    #[schema(value_type = Object)]
    pub parameter_schema: serde_json::Value,
    /// JSON Schema of the response, if any.
    #[schema(value_type = Option<Object>)]
    pub response_schema: Option<serde_json::Value>,
    pub timeout_ms: i64,
    pub on_error: OnError,
    pub enabled: bool,
    /// `http` agents: the URL the tool calls; null for webhook agents' tools.
    pub tool_url: Option<String>,
    pub tool_method: ToolMethod,
    pub tool_headers: BTreeMap<String, String>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

impl From<Tool> for ToolBody {
    fn from(t: Tool) -> Self {
        Self {
            id: t.id,
            agent_id: t.agent_id,
            name: t.name,
            description: t.description,
            parameter_schema: t.parameter_schema,
            response_schema: t.response_schema,
            timeout_ms: t.timeout_ms,
            on_error: t.on_error,
            enabled: t.enabled,
            tool_url: t.tool_url,
            tool_method: t.tool_method,
            tool_headers: t.tool_headers,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// A custom tool to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTool {
    /// A function name, unique in the agent; not `transfer_call` or `end_call` (built in).
    #[schema(pattern = "^[a-zA-Z0-9_-]{1,64}$", example = "lookup_customer")]
    pub name: String,
    /// What the tool does and when to call it.
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// A JSON Schema object (default `{"type": "object", "properties": {}}`).
    #[schema(value_type = Option<Object>)]
    pub parameter_schema: Option<serde_json::Value>,
    /// A JSON Schema object, or null.
    #[schema(value_type = Option<Object>)]
    pub response_schema: Option<serde_json::Value>,
    /// Default 5000.
    #[schema(minimum = 1000, maximum = 30000)]
    pub timeout_ms: Option<i64>,
    /// Default `return_error`.
    pub on_error: Option<OnError>,
    /// Default true.
    pub enabled: Option<bool>,
    /// Required for `http` agents (http(s), never an internal address); null for webhook
    /// agents.
    #[schema(format = "uri", max_length = 2048)]
    pub tool_url: Option<String>,
    /// Default `POST`.
    pub tool_method: Option<ToolMethod>,
    pub tool_headers: Option<BTreeMap<String, String>>,
}

/// Some fields of a tool.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTool {
    #[schema(pattern = "^[a-zA-Z0-9_-]{1,64}$")]
    pub name: Option<String>,
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub parameter_schema: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Object>)]
    pub response_schema: Option<Option<serde_json::Value>>,
    #[schema(minimum = 1000, maximum = 30000)]
    pub timeout_ms: Option<i64>,
    pub on_error: Option<OnError>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, format = "uri", max_length = 2048)]
    pub tool_url: Option<Option<String>>,
    pub tool_method: Option<ToolMethod>,
    pub tool_headers: Option<BTreeMap<String, String>>,
}

fn is_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_schema(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    if !value.is_object() {
        return Err(ApiError::validation(field, "must be a JSON Schema object"));
    }
    if value.to_string().len() > MAX_SCHEMA_BYTES {
        return Err(ApiError::validation(field, "must be at most 64 KiB"));
    }
    Ok(())
}

/// Every rule a tool (as it would be stored) of `agent` must meet.
fn validate_tool(t: &Tool, agent: &Agent, state: &AppState) -> Result<(), ApiError> {
    if agent.agent_type == AgentType::Static {
        return Err(ApiError::validation(
            "agent_type",
            "static agents take no tools (make the agent webhook or http first)",
        ));
    }
    if !is_function_name(&t.name) {
        return Err(ApiError::validation(
            "name",
            "must be 1 to 64 letters, digits, _ or -",
        ));
    }
    if BUILT_IN_TOOLS.contains(&t.name.as_str()) {
        return Err(ApiError::validation(
            "name",
            format!("{} is a built-in tool", t.name),
        ));
    }
    check_text("description", &t.description, 0, MAX_DESCRIPTION_CHARS)?;
    check_schema("parameter_schema", &t.parameter_schema)?;
    if let Some(s) = &t.response_schema {
        check_schema("response_schema", s)?;
    }
    if !(1000..=30_000).contains(&t.timeout_ms) {
        return Err(ApiError::validation(
            "timeout_ms",
            "must be 1000 to 30000 milliseconds",
        ));
    }
    check_headers("tool_headers", &t.tool_headers)?;
    match (agent.agent_type, &t.tool_url) {
        (AgentType::Http, None) => Err(ApiError::validation(
            "tool_url",
            "http agents' tools call their own tool_url: give one",
        )),
        (AgentType::Http, Some(url)) => check_url("tool_url", url, &state.outbound_guard),
        (_, Some(_)) => Err(ApiError::validation(
            "tool_url",
            "must be null for a webhook agent's tools (they go to the agent's server_url)",
        )),
        (_, None) if agent.server_url.is_none() => Err(ApiError::validation(
            "server_url",
            "a webhook agent's tools go to its server_url: save one on the agent first",
        )),
        _ => Ok(()),
    }
}

/// The agent's custom tools, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/tools",
    operation_id = "list_agent_tools",
    tag = "agents",
    params(("id" = String, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The tools", body = Data<Vec<ToolBody>>),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn list_tools(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Envelope<Vec<ToolBody>>, ApiError> {
    find_agent(&state, &auth.tenant, &id).await?;
    let tools = state.store.list_agent_tools(&auth.tenant, &id).await?;
    Ok(Envelope::ok(
        tools.into_iter().map(ToolBody::from).collect(),
    ))
}

/// Adds a custom tool to a webhook or http agent (the agent's `updated_at` changes).
#[utoipa::path(
    post,
    path = "/api/v1/agents/{id}/tools",
    operation_id = "create_agent_tool",
    tag = "agents",
    params(("id" = String, Path, description = "The agent's id")),
    request_body = CreateTool,
    responses(
        (status = 201, description = "The tool", body = Data<ToolBody>),
        (status = 400, description = "`VALIDATION_ERROR`: a field, a static agent, a webhook agent without server_url, an http agent's tool without tool_url", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`TOOL_NAME_TAKEN`, or `AGENT_UPDATE_CONFLICT` (the agent changed meanwhile)", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
    )
)]
pub async fn create_tool(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    AppJson(body): AppJson<CreateTool>,
) -> Result<Envelope<ToolBody>, ApiError> {
    auth.require_write()?;
    let agent = find_agent(&state, &auth.tenant, &id).await?;
    let now = ms(Utc::now());
    let tool = Tool {
        id: format!(
            "tool_{}",
            ulid::Ulid::new().to_string().to_ascii_lowercase()
        ),
        agent_id: agent.id.clone(),
        tenant: auth.tenant.clone(),
        name: body.name,
        description: body.description.unwrap_or_default(),
        parameter_schema: body
            .parameter_schema
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        response_schema: body.response_schema.filter(|v| !v.is_null()),
        timeout_ms: body.timeout_ms.unwrap_or(5000),
        on_error: body.on_error.unwrap_or(OnError::ReturnError),
        enabled: body.enabled.unwrap_or(true),
        tool_url: text(body.tool_url),
        tool_method: body.tool_method.unwrap_or(ToolMethod::Post),
        tool_headers: body.tool_headers.unwrap_or_default(),
        created_at: now,
        updated_at: now,
    };
    validate_tool(&tool, &agent, &state)?;
    let created = state
        .store
        .create_agent_tool(&tool)
        .await
        .map_err(agent_write_error)?;
    Ok(Envelope::created(created.into()))
}

/// One tool of the agent.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/tools/{tool_id}",
    operation_id = "get_agent_tool",
    tag = "agents",
    params(
        ("id" = String, Path, description = "The agent's id"),
        ("tool_id" = String, Path, description = "The tool's id (`tool_…`)"),
    ),
    responses(
        (status = 200, description = "The tool", body = Data<ToolBody>),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn get_tool(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tool_id)): Path<(String, String)>,
) -> Result<Envelope<ToolBody>, ApiError> {
    let tool = state
        .store
        .get_agent_tool(&auth.tenant, &id, &tool_id)
        .await?
        .ok_or_else(|| ApiError::not_found("tool"))?;
    Ok(Envelope::ok(tool.into()))
}

/// Changes the fields of a tool that are given (the agent's `updated_at` changes).
#[utoipa::path(
    patch,
    path = "/api/v1/agents/{id}/tools/{tool_id}",
    operation_id = "update_agent_tool",
    tag = "agents",
    params(
        ("id" = String, Path, description = "The agent's id"),
        ("tool_id" = String, Path, description = "The tool's id"),
    ),
    request_body = PatchTool,
    responses(
        (status = 200, description = "The tool as it is now", body = Data<ToolBody>),
        (status = 400, description = "`VALIDATION_ERROR`", body = ErrorBody),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`TOOL_NAME_TAKEN`, or `AGENT_UPDATE_CONFLICT` (the agent changed meanwhile)", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`", body = ErrorBody),
    )
)]
pub async fn update_tool(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tool_id)): Path<(String, String)>,
    AppJson(p): AppJson<PatchTool>,
) -> Result<Envelope<ToolBody>, ApiError> {
    auth.require_write()?;
    let agent = find_agent(&state, &auth.tenant, &id).await?;
    let current = state
        .store
        .get_agent_tool(&auth.tenant, &id, &tool_id)
        .await?
        .ok_or_else(|| ApiError::not_found("tool"))?;
    let tool = Tool {
        name: p.name.unwrap_or_else(|| current.name.clone()),
        description: p.description.unwrap_or_else(|| current.description.clone()),
        parameter_schema: p
            .parameter_schema
            .unwrap_or_else(|| current.parameter_schema.clone()),
        response_schema: p.response_schema.map_or_else(
            || current.response_schema.clone(),
            |v| v.filter(|v| !v.is_null()),
        ),
        timeout_ms: p.timeout_ms.unwrap_or(current.timeout_ms),
        on_error: p.on_error.unwrap_or(current.on_error),
        enabled: p.enabled.unwrap_or(current.enabled),
        tool_url: p.tool_url.map_or_else(|| current.tool_url.clone(), text),
        tool_method: p.tool_method.unwrap_or(current.tool_method),
        tool_headers: p
            .tool_headers
            .unwrap_or_else(|| current.tool_headers.clone()),
        updated_at: ms(Utc::now()),
        ..current
    };
    validate_tool(&tool, &agent, &state)?;
    let updated = state
        .store
        .update_agent_tool(&tool)
        .await
        .map_err(agent_write_error)?
        .ok_or_else(|| ApiError::not_found("tool"))?;
    Ok(Envelope::ok(updated.into()))
}

/// Deletes a tool (the agent's `updated_at` changes).
#[utoipa::path(
    delete,
    path = "/api/v1/agents/{id}/tools/{tool_id}",
    operation_id = "delete_agent_tool",
    tag = "agents",
    params(
        ("id" = String, Path, description = "The agent's id"),
        ("tool_id" = String, Path, description = "The tool's id"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn delete_tool(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, tool_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    auth.require_write()?;
    if state
        .store
        .delete_agent_tool(&auth.tenant, &id, &tool_id, ms(Utc::now()))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("tool"))
    }
}

/// A conversation of an agent.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationBody {
    #[schema(example = "conv_01jd6x3m2r8w9k1c4v7b5n0q2s")]
    pub id: String,
    pub agent_id: String,
    pub channel: ConversationChannel,
    /// The caller's number (voice) or `web`.
    pub contact: String,
    /// The call, for voice conversations.
    pub call_id: Option<String>,
    pub status: ConversationStatus,
    pub message_count: i64,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::timefmt::serialize_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<DateTime<Utc>>,
}

impl From<Conversation> for ConversationBody {
    fn from(c: Conversation) -> Self {
        Self {
            id: c.id,
            agent_id: c.agent_id,
            channel: c.channel,
            contact: c.contact,
            call_id: c.call_id,
            status: c.status,
            message_count: c.message_count,
            started_at: c.started_at,
            ended_at: c.ended_at,
        }
    }
}

/// A transcript line.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageBody {
    /// 1, 2, … in the conversation.
    pub seq: i64,
    pub role: MessageRole,
    pub text: Option<String>,
    /// `tool_call` and `tool_result`: the tool.
    pub tool_name: Option<String>,
    /// `tool_call`: the arguments (JSON).
    #[schema(value_type = Option<Object>)]
    pub tool_arguments: Option<serde_json::Value>,
    /// `tool_result`: what the tool returned (JSON).
    #[schema(value_type = Option<Object>)]
    pub tool_result: Option<serde_json::Value>,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
}

impl From<Message> for MessageBody {
    fn from(m: Message) -> Self {
        Self {
            seq: m.seq,
            role: m.role,
            text: m.text,
            tool_name: m.tool_name,
            tool_arguments: m.tool_arguments,
            tool_result: m.tool_result,
            at: m.at,
        }
    }
}

/// A conversation with its transcript.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConversationDetail {
    #[serde(flatten)]
    pub conversation: ConversationBody,
    /// The messages, in order.
    pub transcript: Vec<MessageBody>,
}

/// The agent's conversations, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/conversations",
    operation_id = "list_agent_conversations",
    tag = "agents",
    params(("id" = String, Path, description = "The agent's id"), PageQuery),
    responses(
        (status = 200, description = "A page of conversations", body = Page<Vec<ConversationBody>>),
        (status = 400, description = "`VALIDATION_ERROR` (limit) or `INVALID_CURSOR`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn list_conversations(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Result<Envelope<Vec<ConversationBody>>, ApiError> {
    let limit = parse_limit(q.limit.as_deref())?;
    find_agent(&state, &auth.tenant, &id).await?;
    let cursor = q.cursor.as_deref().filter(|c| !c.is_empty());
    let page = state
        .store
        .list_conversations(&auth.tenant, &id, limit, cursor)
        .await?;
    Ok(Envelope::page(
        page.conversations
            .into_iter()
            .map(ConversationBody::from)
            .collect(),
        Pagination {
            cursor: page.next_cursor,
            has_more: page.has_more,
            total: page.total,
        },
    ))
}

/// One conversation with its transcript.
#[utoipa::path(
    get,
    path = "/api/v1/agents/{id}/conversations/{conversation_id}",
    operation_id = "get_agent_conversation",
    tag = "agents",
    params(
        ("id" = String, Path, description = "The agent's id"),
        ("conversation_id" = String, Path, description = "The conversation's id (`conv_…`)"),
    ),
    responses(
        (status = 200, description = "The conversation", body = Data<ConversationDetail>),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
    )
)]
pub async fn get_conversation(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, conversation_id)): Path<(String, String)>,
) -> Result<Envelope<ConversationDetail>, ApiError> {
    find_agent(&state, &auth.tenant, &id).await?;
    let (conversation, messages) = state
        .store
        .get_conversation(&auth.tenant, &id, &conversation_id)
        .await?
        .ok_or_else(|| ApiError::not_found("conversation"))?;
    Ok(Envelope::ok(ConversationDetail {
        conversation: conversation.into(),
        transcript: messages.into_iter().map(MessageBody::from).collect(),
    }))
}

/// One direction's audio on the realtime WebSocket.
#[derive(Debug, Serialize, ToSchema)]
pub struct AudioFormat {
    /// Little-endian 16-bit PCM, mono, base64 in the JSON messages.
    #[schema(pattern = "^pcm16$")]
    pub encoding: &'static str,
    pub sample_rate: u32,
}

/// The realtime WebSocket's audio formats.
#[derive(Debug, Serialize, ToSchema)]
pub struct RealtimeProtocol {
    /// What the browser sends: 16 kHz.
    pub input_audio: AudioFormat,
    /// What the agent sends: 24 kHz.
    pub output_audio: AudioFormat,
}

/// A browser realtime session: open `websocket_url` within 60 s, once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RealtimeSession {
    /// Single-use, signed; also in `websocket_url`.
    pub token: String,
    #[serde(serialize_with = "crate::timefmt::serialize")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
    /// `ws(s)://…/api/v1/agents/{id}/realtime?token=…`, for the browser.
    pub websocket_url: String,
    pub protocol: RealtimeProtocol,
}

/// A short-lived token for a browser to talk to an active agent over a WebSocket; create
/// it from a backend (never hand API keys to a browser).
#[utoipa::path(
    post,
    path = "/api/v1/agents/{id}/realtime-sessions",
    operation_id = "create_realtime_session",
    tag = "agents",
    params(("id" = String, Path, description = "The agent's id")),
    responses(
        (status = 201, description = "The session's token and WebSocket URL", body = Data<RealtimeSession>),
        (status = 403, description = "`FORBIDDEN`: the key's role is read-only", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`", body = ErrorBody),
        (status = 409, description = "`AGENT_NOT_ACTIVE`: activate the agent first; `CHANNEL_NOT_ENABLED`: `web` is not among its channels", body = ErrorBody),
        (status = 500, description = "`REALTIME_NOT_CONFIGURED`: no `[agents] realtime_signing_key`", body = ErrorBody),
    )
)]
pub async fn create_realtime_session(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Envelope<RealtimeSession>, ApiError> {
    auth.require_write()?;
    let agent = find_agent(&state, &auth.tenant, &id).await?;
    let Some(key) = crate::agents::realtime::signing_key(&state.config) else {
        return Err(ApiError::new(
            ErrorCode::RealtimeNotConfigured,
            "realtime sessions are not configured on this switch ([agents] realtime_signing_key)",
        ));
    };
    if agent.status != AgentStatus::Active {
        return Err(ApiError::new(
            ErrorCode::AgentNotActive,
            format!(
                "the agent is {}: only active agents take realtime sessions",
                agent.status.as_str()
            ),
        ));
    }
    // Refused here, before a token is spent on a socket that would refuse it.
    if !agent.channels.contains(&crate::agents::model::Channel::Web) {
        return Err(ApiError::new(
            ErrorCode::ChannelNotEnabled,
            "the agent's channels do not include web: add it to take browser sessions",
        ));
    }
    let (token, expires_at) =
        crate::agents::realtime::issue(key, &agent.id, &auth.tenant, Utc::now());
    let websocket_url = format!(
        "{}/api/v1/agents/{}/realtime?token={token}",
        state.realtime_ws_base, agent.id
    );
    Ok(Envelope::created(RealtimeSession {
        token,
        expires_at,
        websocket_url,
        protocol: RealtimeProtocol {
            input_audio: AudioFormat {
                encoding: "pcm16",
                sample_rate: 16_000,
            },
            output_audio: AudioFormat {
                encoding: "pcm16",
                sample_rate: 24_000,
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_tags_and_function_names() {
        for ok in ["en", "en-US", "zh-Hant-TW", "es-419", "fil-PH"] {
            assert!(is_language_tag(ok), "{ok}");
        }
        for bad in [
            "",
            "e",
            "english",
            "en_US",
            "en-",
            "-US",
            "en-U",
            "en-USUSUSUSU",
        ] {
            assert!(!is_language_tag(bad), "{bad}");
        }
        assert!(is_function_name("lookup_order-2"));
        assert!(!is_function_name("lookup order"));
        assert!(!is_function_name(&"a".repeat(65)));
        assert!(is_header_name("X-Api-Key"));
        assert!(!is_header_name("X Api"));
        assert!(!is_header_name(""));
    }
}
