//! Durable storage behind one trait: SQLite by default, PostgreSQL when the URL says so.
//! Every status change and its outbox event are written in one transaction.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::agents::model::{
    Agent, Conversation, ConversationStatus, Message, NewMessage, NumberRoute, Tool,
};
use crate::model::{ApiKeyRecord, CallEvent, CallRecord, NewEvent, Role};
use crate::proxy::{
    NewSession, ProxyInteraction, ProxyLookup, ProxyNumber, ProxySession, SessionStatus,
};

pub mod sql;
mod sqlite_writer;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("unsupported database url: {0}")]
    UnsupportedUrl(String),
    /// A pagination cursor that this store did not issue (the API answers 400).
    #[error("invalid cursor")]
    InvalidCursor,
    /// No pool number can be given to a participant of a new proxy session (every one
    /// that fits is paired with that participant in an open session, or the pool is empty).
    #[error("proxy number pool exhausted")]
    PoolExhausted,
    /// `update_call` for a call id/tenant that has no row.
    #[error("call not found: {0}")]
    CallNotFound(String),
    /// The agent changed since the `updated_at` the write expected (nothing was written).
    #[error("agent changed meanwhile")]
    AgentConflict,
    /// Activating the agent would pass the tenant's active-agent cap (nothing written).
    #[error("active agent limit {0} reached")]
    AgentLimit(u32),
    /// A number to assign is another agent's already (nothing written).
    #[error("number {0} is assigned to another agent")]
    NumberAssigned(String),
    /// The agent has a tool by that name already.
    #[error("tool name taken")]
    ToolNameTaken,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A page of calls, newest first.
#[derive(Debug, Clone)]
pub struct CallPage {
    pub calls: Vec<CallRecord>,
    pub total: i64,
    pub has_more: bool,
    /// Opaque cursor for the next page (None when `has_more` is false).
    pub next_cursor: Option<String>,
}

/// A page of proxy sessions, newest first.
#[derive(Debug, Clone)]
pub struct ProxyInteractionPage {
    pub interactions: Vec<ProxyInteraction>,
    pub total: i64,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ProxySessionPage {
    pub sessions: Vec<ProxySession>,
    pub total: i64,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// A page of agents, newest first.
#[derive(Debug, Clone)]
pub struct AgentPage {
    pub agents: Vec<Agent>,
    pub total: i64,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// A page of an agent's conversations, newest first.
#[derive(Debug, Clone)]
pub struct ConversationPage {
    pub conversations: Vec<Conversation>,
    pub total: i64,
    pub has_more: bool,
    pub next_cursor: Option<String>,
}

/// What removing a proxy number did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberRemoval {
    Removed,
    NotFound,
    /// Kept: this many open sessions' participants have it.
    InUse(i64),
}

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Insert a new call and its first event (sequence 1) in one transaction.
    ///
    /// The call is shared rather than copied: a writer holds it only until it answers,
    /// so a task that owns the other reference can change it afterwards without a copy
    /// (`Arc::make_mut`).
    ///
    /// Events of a call without a `webhook_url` are written only when the store records
    /// unsent events (the default); otherwise this and [`Store::update_call`] return
    /// `None` for such a call and write its row alone.
    async fn create_call(
        &self,
        call: &Arc<CallRecord>,
        event: &NewEvent,
    ) -> StoreResult<Option<CallEvent>>;
    /// Overwrite the call row and, if given, append its next event (sequence = last + 1) in one transaction.
    async fn update_call(
        &self,
        call: &Arc<CallRecord>,
        event: Option<&NewEvent>,
    ) -> StoreResult<Option<CallEvent>>;
    async fn get_call(&self, tenant: &str, id: &str) -> StoreResult<Option<CallRecord>>;
    /// Newest first; `cursor` is one returned by a previous page.
    async fn list_calls(
        &self,
        tenant: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> StoreResult<CallPage>;
    /// Calls whose status is not terminal (for closing out after a restart).
    async fn live_calls(&self) -> StoreResult<Vec<CallRecord>>;

    /// Events ready to send: state pending, next_attempt_at <= now, and the lowest pending
    /// sequence of their call (so a call's events go out in order). Oldest first.
    /// The returned events are claimed: their next_attempt_at moves forward by a lease, so
    /// other deliverers (other nodes, or the next loop turn) skip them while they are in flight.
    async fn due_events(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<CallEvent>>;
    /// Make events this node had claimed when it died due again now (at start-up, before the
    /// deliverer runs): the process that held the claim is gone, so waiting out the lease
    /// would only delay callbacks. Returns how many were released.
    async fn release_claims(&self, now: DateTime<Utc>) -> StoreResult<u64>;
    /// The earliest next_attempt_at among pending events (for the deliverer's sleep).
    async fn next_due_at(&self) -> StoreResult<Option<DateTime<Utc>>>;
    /// Success: state delivered, `attempts` incremented (it counts every POST, including this one).
    async fn mark_delivered(&self, event_id: &str, at: DateTime<Utc>) -> StoreResult<()>;
    async fn mark_attempt_failed(
        &self,
        event_id: &str,
        attempts: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()>;
    /// Give up on an event after the last allowed attempt: state failed (redeliverable via the API).
    async fn mark_abandoned(&self, event_id: &str, attempts: i64, error: &str) -> StoreResult<()>;
    async fn list_events(&self, tenant: &str, call_id: &str) -> StoreResult<Vec<CallEvent>>;
    /// Put an event back in the queue (state pending, attempts 0, due now). None if unknown.
    async fn redeliver_event(
        &self,
        tenant: &str,
        call_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CallEvent>>;

    /// Keys are stored as SHA-256 hex of the secret.
    async fn create_api_key(
        &self,
        tenant: &str,
        role: Role,
        key_hash: &str,
    ) -> StoreResult<ApiKeyRecord>;
    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// The tenant's webhook signing secret ("whsec_" + base64 of 32 random bytes), created on first use.
    async fn webhook_secret(&self, tenant: &str) -> StoreResult<String>;
    async fn rotate_webhook_secret(&self, tenant: &str) -> StoreResult<String>;

    /// A `[[proxy_numbers]]` entry: inserted, or its trunk and capabilities updated.
    async fn put_config_proxy_number(&self, number: &ProxyNumber) -> StoreResult<()>;
    /// False when a pool already has the number (it reaches one tenant only).
    async fn add_proxy_number(&self, number: &ProxyNumber) -> StoreResult<bool>;
    async fn list_proxy_numbers(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<ProxyNumber>>;
    async fn get_proxy_number(
        &self,
        tenant: &str,
        number: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ProxyNumber>>;
    /// Refused (`InUse`) while an open session's participant has the number.
    async fn delete_proxy_number(
        &self,
        tenant: &str,
        number: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<NumberRemoval>;
    /// Allocates each participant a proxy number and writes the session;
    /// `StoreError::PoolExhausted` when one cannot be given any.
    async fn create_proxy_session(&self, session: &NewSession) -> StoreResult<ProxySession>;
    /// The session with its status as of `now` (expired once past `expires_at`).
    async fn get_proxy_session(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ProxySession>>;
    async fn list_proxy_sessions(
        &self,
        tenant: &str,
        status: Option<SessionStatus>,
        limit: u32,
        cursor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<ProxySessionPage>;
    /// Closes an open session (its pairings are freed); None when there is no such session.
    async fn close_proxy_session(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ProxySession>>;
    /// Marks sessions past their expiry `expired` and frees their pairings; how many.
    async fn expire_proxy_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64>;
    /// What a call or message from `sender` to `proxy_number` finds (see [`ProxyLookup`]).
    async fn lookup_proxy(
        &self,
        proxy_number: &str,
        sender: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<ProxyLookup>;
    /// Records a new interaction of `session` (`insert`) or its new status, with a
    /// `proxy.interaction` event to the session's webhook.
    async fn put_proxy_interaction(
        &self,
        session: &ProxySession,
        interaction: &ProxyInteraction,
        insert: bool,
    ) -> StoreResult<()>;
    async fn list_proxy_interactions(
        &self,
        tenant: &str,
        session_id: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> StoreResult<ProxyInteractionPage>;

    // Agents (`agents_sql.rs`). `tool_count` and `calls_today` of a returned agent are
    // read with it (`calls_today`: voice conversations started since UTC midnight of
    // `now`).

    /// Inserts the agent and its number assignments; `NumberAssigned` when a number is
    /// another agent's (nothing written).
    async fn create_agent(&self, agent: &Agent, now: DateTime<Utc>) -> StoreResult<Agent>;
    async fn get_agent(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>>;
    async fn list_agents(
        &self,
        tenant: &str,
        limit: u32,
        cursor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<AgentPage>;
    /// Overwrites the agent and its number assignments if its `updated_at` is still
    /// `expected` (else `AgentConflict`), in one transaction that also counts the tenant's
    /// active agents when this one becomes active: past `max_active` (0: no cap) it is
    /// `AgentLimit`. None when there is no such agent.
    async fn update_agent(
        &self,
        agent: &Agent,
        expected: DateTime<Utc>,
        max_active: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>>;
    /// Deletes the agent, its tools and number assignments (its conversations stay, as
    /// history); false when there is no such agent.
    async fn delete_agent(&self, tenant: &str, id: &str) -> StoreResult<bool>;
    /// The agent a number is assigned to (inbound routing), whatever its status.
    async fn agent_for_number(
        &self,
        number: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<NumberRoute>>;
    /// Every number assigned to an agent (inbound routing keeps them in memory).
    async fn assigned_agent_numbers(&self) -> StoreResult<Vec<String>>;
    /// The agent's tools, oldest first.
    async fn list_agent_tools(&self, tenant: &str, agent_id: &str) -> StoreResult<Vec<Tool>>;
    async fn get_agent_tool(
        &self,
        tenant: &str,
        agent_id: &str,
        tool_id: &str,
    ) -> StoreResult<Option<Tool>>;
    /// Inserts the tool and moves the agent's `updated_at`; `ToolNameTaken`, or
    /// `AgentConflict` when the agent is gone or became static meanwhile.
    async fn create_agent_tool(&self, tool: &Tool) -> StoreResult<Tool>;
    /// Overwrites the tool (and moves the agent's `updated_at`); None when it is gone.
    async fn update_agent_tool(&self, tool: &Tool) -> StoreResult<Option<Tool>>;
    async fn delete_agent_tool(
        &self,
        tenant: &str,
        agent_id: &str,
        tool_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// A new conversation (the runtime, when a call or session reaches an agent).
    async fn create_conversation(&self, conversation: &Conversation) -> StoreResult<()>;
    /// Appends a transcript line (numbered next) and counts it in `message_count`; None
    /// when there is no such conversation.
    async fn append_conversation_message(
        &self,
        conversation_id: &str,
        message: &NewMessage,
    ) -> StoreResult<Option<Message>>;
    /// Ends an active conversation with `status`; false when it is not active (or unknown).
    async fn end_conversation(
        &self,
        conversation_id: &str,
        status: ConversationStatus,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
    async fn list_conversations(
        &self,
        tenant: &str,
        agent_id: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> StoreResult<ConversationPage>;
    /// The conversation with its transcript in order.
    async fn get_conversation(
        &self,
        tenant: &str,
        agent_id: &str,
        id: &str,
    ) -> StoreResult<Option<(Conversation, Vec<Message>)>>;
    /// Records a realtime token id as used; false when it was already (deletes the
    /// records of tokens expired by `now` on the way).
    async fn consume_realtime_token(
        &self,
        jti: &str,
        agent_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
}
