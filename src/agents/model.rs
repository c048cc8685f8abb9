//! The agent's durable shape: what the API stores and the runtime reads (an agent, its
//! custom tools, its conversations and their transcripts). Enums are stored and shown as
//! their snake_case text (`as_str`/`parse` are the one mapping).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// An enum whose every variant has one text (JSON and database alike).
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $($(#[$vm])* #[serde(rename = $text)] $variant),+
        }

        // Written out: utoipa's derive does not see `serde(rename)` through the macro's
        // literal and would document the variant names instead of the texts.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::new(
                        utoipa::openapi::schema::Type::String,
                    ))
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

text_enum!(
    /// `conversational` (a dialogue) or `task` (a job to carry out).
    AgentKind { Conversational = "conversational", Task = "task" }
);
text_enum!(
    /// Whether the instructions are stored (`static`) or fetched from the Server URL.
    PromptType { Static = "static", Dynamic = "dynamic" }
);
text_enum!(
    /// How the first assistant message is chosen.
    GreetingType { Static = "static", Dynamic = "dynamic", None = "none" }
);
text_enum!(
    /// Where an agent can be reached.
    Channel { Voice = "voice", Web = "web", Whatsapp = "whatsapp", Sms = "sms" }
);
text_enum!(
    /// The integration mode: `static` (saved prompt, no tools), `webhook` (prompt and
    /// tool calls through the Server URL) or `http` (each tool calls its own URL).
    AgentType { Static = "static", Webhook = "webhook", Http = "http" }
);
text_enum!(
    /// Only `active` agents take calls and realtime sessions (and count against the plan).
    AgentStatus { Draft = "draft", Active = "active", Inactive = "inactive" }
);
text_enum!(
    /// What the model is told when a tool fails.
    OnError { ReturnError = "return_error", ReturnEmpty = "return_empty" }
);
text_enum!(
    /// The HTTP method of an `http` agent's tool.
    ToolMethod {
        Get = "GET",
        Post = "POST",
        Put = "PUT",
        Delete = "DELETE",
        Patch = "PATCH",
        Head = "HEAD",
        Options = "OPTIONS",
    }
);
text_enum!(
    /// Where a conversation takes place: a phone call or a browser realtime session.
    ConversationChannel { Voice = "voice", Web = "web" }
);
text_enum!(
    ConversationStatus { Active = "active", Completed = "completed", Failed = "failed" }
);
text_enum!(
    /// Who a transcript line is from.
    MessageRole {
        User = "user",
        Assistant = "assistant",
        ToolCall = "tool_call",
        ToolResult = "tool_result",
        System = "system",
    }
);

/// One of the tenant's numbers routed to an agent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct NumberAssignment {
    /// E.164; one of the tenant's trunk numbers, assigned to one agent at most.
    #[schema(example = "+14155550100")]
    pub phone_number: String,
    /// Where `transfer_call` goes for calls to this number (else the agent's own).
    pub handoff_phone_number: Option<String>,
}

/// An agent as stored. `server_secret` is write-only in the API.
#[derive(Clone, Debug, PartialEq)]
pub struct Agent {
    /// `agt_<ulid>`.
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub kind: AgentKind,
    pub model: String,
    pub status: AgentStatus,
    pub identity: Option<String>,
    pub instructions: Option<String>,
    pub prompt_type: PromptType,
    pub language: String,
    pub voice_name: Option<String>,
    pub greeting_type: GreetingType,
    pub static_greeting: Option<String>,
    pub channels: Vec<Channel>,
    pub agent_type: AgentType,
    pub server_url: Option<String>,
    pub server_headers: BTreeMap<String, String>,
    pub server_secret: Option<String>,
    pub handoff_phone_number: Option<String>,
    pub phone_number_assignments: Vec<NumberAssignment>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Read with the row: custom tools of the agent.
    pub tool_count: i64,
    /// Read with the row: voice conversations started since UTC midnight.
    pub calls_today: i64,
}

impl Agent {
    /// What the model is given: identity and instructions, a blank line between.
    pub fn system_prompt(&self) -> String {
        [self.identity.as_deref(), self.instructions.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

/// A custom tool of an agent.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// `tool_<ulid>`.
    pub id: String,
    pub agent_id: String,
    pub tenant: String,
    pub name: String,
    pub description: String,
    pub parameter_schema: serde_json::Value,
    pub response_schema: Option<serde_json::Value>,
    pub timeout_ms: i64,
    pub on_error: OnError,
    pub enabled: bool,
    pub tool_url: Option<String>,
    pub tool_method: ToolMethod,
    pub tool_headers: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One conversation of an agent (a call or a browser session).
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    /// `conv_<ulid>`.
    pub id: String,
    pub tenant: String,
    pub agent_id: String,
    pub channel: ConversationChannel,
    /// The caller's number, or `web`.
    pub contact: String,
    pub call_id: Option<String>,
    pub status: ConversationStatus,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub message_count: i64,
}

impl Conversation {
    /// A new `active` conversation starting `now`.
    pub fn start(
        tenant: &str,
        agent_id: &str,
        channel: ConversationChannel,
        contact: &str,
        call_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: format!(
                "conv_{}",
                ulid::Ulid::new().to_string().to_ascii_lowercase()
            ),
            tenant: tenant.to_owned(),
            agent_id: agent_id.to_owned(),
            channel,
            contact: contact.to_owned(),
            call_id: call_id.map(str::to_owned),
            status: ConversationStatus::Active,
            started_at: DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now),
            ended_at: None,
            message_count: 0,
        }
    }
}

/// A transcript line to append (the store numbers it).
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    pub role: MessageRole,
    pub text: Option<String>,
    /// `tool_call` / `tool_result`: the tool's name.
    pub tool_name: Option<String>,
    /// `tool_call`: the arguments the model gave.
    pub tool_arguments: Option<serde_json::Value>,
    /// `tool_result`: what the tool returned.
    pub tool_result: Option<serde_json::Value>,
    pub at: DateTime<Utc>,
}

/// A transcript line as stored: `seq` counts from 1 in each conversation.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub seq: i64,
    pub role: MessageRole,
    pub text: Option<String>,
    pub tool_name: Option<String>,
    pub tool_arguments: Option<serde_json::Value>,
    pub tool_result: Option<serde_json::Value>,
    pub at: DateTime<Utc>,
}

/// What an inbound call to an assigned number reaches.
#[derive(Clone, Debug, PartialEq)]
pub struct NumberRoute {
    pub tenant: String,
    pub agent: Agent,
    /// The assignment's own handoff number (else the agent's `handoff_phone_number`).
    pub handoff_phone_number: Option<String>,
}
