//! The agent tables (`agents`, `agent_numbers`, `agent_tools`, `agent_conversations`,
//! `agent_conversation_messages`, `agent_realtime_tokens`) on the same pool.
//!
//! Races are settled by the database, whatever node writes:
//! - an update is a compare-and-set on `updated_at` (`UPDATE ... WHERE id = $ AND
//!   updated_at = $expected`), so of two writers that read the same version one wins and
//!   the other gets `AgentConflict`;
//! - every agent update first upserts the tenant's row of `agent_tenant_locks`, which
//!   holds that row's lock (PostgreSQL) or the write lock (SQLite) until commit: a
//!   tenant's activations run one at a time, and the active count read after the lock
//!   sees every activation committed before;
//! - `agent_numbers` is keyed by the number, so a number reaches one agent at most;
//! - a tool write moves its agent's `updated_at`, so an agent update read before it fails
//!   its compare-and-set instead of, say, making an agent with tools static.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row as _};

use super::{decode_cursor, encode_cursor_parts, from_ms, opt_ms};
use crate::agents::model::{
    Agent, AgentKind, AgentStatus, AgentType, Channel, Conversation, ConversationChannel,
    ConversationStatus, GreetingType, Message, MessageRole, NewMessage, NumberAssignment,
    NumberRoute, OnError, PromptType, Tool, ToolMethod,
};
use crate::store::{AgentPage, ConversationPage, StoreError, StoreResult};

const AGENT_COLUMNS: &str = "a.id, a.tenant, a.name, a.kind, a.model, a.status, a.identity, \
     a.instructions, a.prompt_type, a.language, a.voice_name, a.greeting_type, \
     a.static_greeting, a.channels, a.agent_type, a.server_url, a.server_headers, \
     a.server_secret, a.handoff_phone_number, a.created_at, a.updated_at";

/// The agent columns and the two figures read with them (`$1`: UTC midnight, in ms).
fn agent_select() -> String {
    format!(
        "SELECT {AGENT_COLUMNS}, \
         (SELECT COUNT(*) FROM agent_tools t WHERE t.agent_id = a.id) AS tool_count, \
         (SELECT COUNT(*) FROM agent_conversations c WHERE c.agent_id = a.id \
         AND c.channel = 'voice' AND c.started_at >= $1) AS calls_today \
         FROM agents a"
    )
}

const TOOL_COLUMNS: &str = "id, agent_id, tenant, name, description, parameter_schema, \
     response_schema, timeout_ms, on_error, enabled, tool_url, tool_method, tool_headers, \
     created_at, updated_at";

const CONVERSATION_COLUMNS: &str = "id, tenant, agent_id, channel, contact, call_id, status, \
     started_at, ended_at, message_count";

/// Moves `updated_at` to `$n` (now), or one millisecond past its value when that is not
/// earlier: every write shows a new `updated_at`, even within one millisecond.
fn bump_updated_at(n: usize) -> String {
    format!("updated_at = CASE WHEN updated_at >= ${n} THEN updated_at + 1 ELSE ${n} END")
}

fn midnight_ms(now: DateTime<Utc>) -> i64 {
    now.date_naive()
        .and_hms_opt(0, 0, 0)
        .map_or(0, |m| m.and_utc().timestamp_millis())
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?}"))
}

fn parse_col<T>(row: &AnyRow, col: &str, parse: fn(&str) -> Option<T>) -> StoreResult<T> {
    let text: String = row.try_get(col)?;
    parse(&text).ok_or_else(|| corrupt(col, &text))
}

fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> StoreResult<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn opt_json_col(row: &AnyRow, col: &str) -> StoreResult<Option<serde_json::Value>> {
    let text: Option<String> = row.try_get(col)?;
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn agent_from_row(row: &AnyRow) -> StoreResult<Agent> {
    let channels: Vec<String> = json_col(row, "channels")?;
    Ok(Agent {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        kind: parse_col(row, "kind", AgentKind::parse)?,
        model: row.try_get("model")?,
        status: parse_col(row, "status", AgentStatus::parse)?,
        identity: row.try_get("identity")?,
        instructions: row.try_get("instructions")?,
        prompt_type: parse_col(row, "prompt_type", PromptType::parse)?,
        language: row.try_get("language")?,
        voice_name: row.try_get("voice_name")?,
        greeting_type: parse_col(row, "greeting_type", GreetingType::parse)?,
        static_greeting: row.try_get("static_greeting")?,
        channels: channels
            .iter()
            .map(|c| Channel::parse(c).ok_or_else(|| corrupt("channel", c)))
            .collect::<StoreResult<_>>()?,
        agent_type: parse_col(row, "agent_type", AgentType::parse)?,
        server_url: row.try_get("server_url")?,
        server_headers: json_col(row, "server_headers")?,
        server_secret: row.try_get("server_secret")?,
        handoff_phone_number: row.try_get("handoff_phone_number")?,
        phone_number_assignments: Vec::new(),
        created_at: from_ms(row.try_get("created_at")?)?,
        updated_at: from_ms(row.try_get("updated_at")?)?,
        tool_count: row.try_get("tool_count")?,
        calls_today: row.try_get("calls_today")?,
    })
}

/// Fills in the agents' number assignments (one query for all of them).
async fn with_assignments<'e, E>(executor: E, agents: &mut [Agent]) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    if agents.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=agents.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT agent_id, phone_number, handoff_phone_number FROM agent_numbers \
         WHERE agent_id IN ({}) ORDER BY agent_id, position",
        placeholders.join(", ")
    );
    let mut q = sqlx::query(&sql);
    for a in agents.iter() {
        q = q.bind(a.id.clone());
    }
    let mut by_agent: HashMap<String, Vec<NumberAssignment>> = HashMap::new();
    for row in q.fetch_all(executor).await? {
        by_agent
            .entry(row.try_get("agent_id")?)
            .or_default()
            .push(NumberAssignment {
                phone_number: row.try_get("phone_number")?,
                handoff_phone_number: row.try_get("handoff_phone_number")?,
            });
    }
    for a in agents.iter_mut() {
        a.phone_number_assignments = by_agent.remove(&a.id).unwrap_or_default();
    }
    Ok(())
}

/// Writes the agent's assignments (after deleting its old ones); `NumberAssigned` when a
/// number is another agent's.
async fn put_assignments(
    tx: &mut sqlx::Transaction<'static, Any>,
    agent: &Agent,
) -> StoreResult<()> {
    sqlx::query("DELETE FROM agent_numbers WHERE agent_id = $1")
        .bind(agent.id.clone())
        .execute(&mut **tx)
        .await?;
    for (i, n) in agent.phone_number_assignments.iter().enumerate() {
        let done = sqlx::query(
            "INSERT INTO agent_numbers (phone_number, agent_id, tenant, handoff_phone_number, \
             position) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(n.phone_number.clone())
        .bind(agent.id.clone())
        .bind(agent.tenant.clone())
        .bind(n.handoff_phone_number.clone())
        .bind(i64::try_from(i).unwrap_or(i64::MAX))
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NumberAssigned(n.phone_number.clone()));
        }
    }
    Ok(())
}

/// Binds the agent's settings, `name` to `handoff_phone_number`, in the column order
/// the insert and the update share.
fn bind_settings<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    agent: &Agent,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    query
        .bind(agent.name.clone())
        .bind(agent.kind.as_str())
        .bind(agent.model.clone())
        .bind(agent.status.as_str())
        .bind(agent.identity.clone())
        .bind(agent.instructions.clone())
        .bind(agent.prompt_type.as_str())
        .bind(agent.language.clone())
        .bind(agent.voice_name.clone())
        .bind(agent.greeting_type.as_str())
        .bind(agent.static_greeting.clone())
        .bind(to_json(&agent.channels))
        .bind(agent.agent_type.as_str())
        .bind(agent.server_url.clone())
        .bind(to_json(&agent.server_headers))
        .bind(agent.server_secret.clone())
        .bind(agent.handoff_phone_number.clone())
}

pub(super) async fn create_agent(
    pool: &AnyPool,
    agent: &Agent,
    now: DateTime<Utc>,
) -> StoreResult<Agent> {
    let mut tx = pool.begin().await?;
    let insert = sqlx::query(
        "INSERT INTO agents (id, tenant, name, kind, model, status, identity, instructions, \
         prompt_type, language, voice_name, greeting_type, static_greeting, channels, \
         agent_type, server_url, server_headers, server_secret, handoff_phone_number, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, $15, $16, $17, $18, $19, $20, $21)",
    )
    .bind(agent.id.clone())
    .bind(agent.tenant.clone());
    bind_settings(insert, agent)
        .bind(agent.created_at.timestamp_millis())
        .bind(agent.updated_at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
    if let Err(e) = put_assignments(&mut tx, agent).await {
        tx.rollback().await?;
        return Err(e);
    }
    tx.commit().await?;
    get_agent(pool, &agent.tenant, &agent.id, now)
        .await?
        .ok_or_else(|| StoreError::Corrupt("agent vanished after insert".into()))
}

pub(super) async fn get_agent(
    pool: &AnyPool,
    tenant: &str,
    id: &str,
    now: DateTime<Utc>,
) -> StoreResult<Option<Agent>> {
    let sql = format!("{} WHERE a.tenant = $2 AND a.id = $3", agent_select());
    let Some(row) = sqlx::query(&sql)
        .bind(midnight_ms(now))
        .bind(tenant.to_owned())
        .bind(id.to_owned())
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let mut agents = [agent_from_row(&row)?];
    with_assignments(pool, &mut agents).await?;
    let [agent] = agents;
    Ok(Some(agent))
}

pub(super) async fn list_agents(
    pool: &AnyPool,
    tenant: &str,
    limit: u32,
    cursor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<AgentPage> {
    let limit = i64::from(limit);
    let mut sql = format!("{} WHERE a.tenant = $2", agent_select());
    let after = cursor.map(decode_cursor).transpose()?;
    if after.is_some() {
        sql.push_str(" AND (a.created_at < $3 OR (a.created_at = $3 AND a.id < $4))");
    }
    sql.push_str(&format!(
        " ORDER BY a.created_at DESC, a.id DESC LIMIT ${}",
        if after.is_some() { 5 } else { 3 }
    ));
    let mut q = sqlx::query(&sql)
        .bind(midnight_ms(now))
        .bind(tenant.to_owned());
    if let Some((at, id)) = &after {
        q = q.bind(*at).bind(id.clone());
    }
    let rows = q.bind(limit + 1).fetch_all(pool).await?;
    let mut agents = rows
        .iter()
        .map(agent_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = agents.len() as i64 > limit;
    agents.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    with_assignments(pool, &mut agents).await?;
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM agents WHERE tenant = $1")
        .bind(tenant.to_owned())
        .fetch_one(pool)
        .await?
        .try_get("n")?;
    let next_cursor = if has_more {
        agents
            .last()
            .map(|a| encode_cursor_parts(a.created_at, &a.id))
    } else {
        None
    };
    Ok(AgentPage {
        agents,
        total,
        has_more,
        next_cursor,
    })
}

pub(super) async fn update_agent(
    pool: &AnyPool,
    agent: &Agent,
    expected: DateTime<Utc>,
    max_active: u32,
    now: DateTime<Utc>,
) -> StoreResult<Option<Agent>> {
    let mut tx = pool.begin().await?;
    // Serialises the tenant's agent updates (see the module doc).
    sqlx::query(
        "INSERT INTO agent_tenant_locks (tenant, writes) VALUES ($1, 1) ON CONFLICT (tenant) \
         DO UPDATE SET writes = agent_tenant_locks.writes + 1",
    )
    .bind(agent.tenant.clone())
    .execute(&mut *tx)
    .await?;
    let Some(current) = sqlx::query("SELECT status FROM agents WHERE tenant = $1 AND id = $2")
        .bind(agent.tenant.clone())
        .bind(agent.id.clone())
        .fetch_optional(&mut *tx)
        .await?
    else {
        tx.rollback().await?;
        return Ok(None);
    };
    let was_active = current.try_get::<String, _>("status")? == AgentStatus::Active.as_str();
    let sql = format!(
        "UPDATE agents SET name = $4, kind = $5, model = $6, status = $7, identity = $8, \
         instructions = $9, prompt_type = $10, language = $11, voice_name = $12, \
         greeting_type = $13, static_greeting = $14, channels = $15, agent_type = $16, \
         server_url = $17, server_headers = $18, server_secret = $19, \
         handoff_phone_number = $20, {} WHERE tenant = $1 AND id = $2 AND updated_at = $3",
        bump_updated_at(21)
    );
    let update = sqlx::query(&sql)
        .bind(agent.tenant.clone())
        .bind(agent.id.clone())
        .bind(expected.timestamp_millis());
    let done = bind_settings(update, agent)
        .bind(now.timestamp_millis())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Err(StoreError::AgentConflict);
    }
    // Only an activation is capped: an agent active already stays editable when the
    // tenant's plan shrank below its active count.
    if agent.status == AgentStatus::Active && !was_active && max_active > 0 {
        let active: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM agents WHERE tenant = $1 AND status = 'active'")
                .bind(agent.tenant.clone())
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
        if active > i64::from(max_active) {
            tx.rollback().await?;
            return Err(StoreError::AgentLimit(max_active));
        }
    }
    if let Err(e) = put_assignments(&mut tx, agent).await {
        tx.rollback().await?;
        return Err(e);
    }
    tx.commit().await?;
    get_agent(pool, &agent.tenant, &agent.id, now).await
}

pub(super) async fn delete_agent(pool: &AnyPool, tenant: &str, id: &str) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query("DELETE FROM agents WHERE tenant = $1 AND id = $2")
        .bind(tenant.to_owned())
        .bind(id.to_owned())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    for table in ["agent_numbers", "agent_tools"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE agent_id = $1"))
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

pub(super) async fn assigned_numbers(pool: &AnyPool) -> StoreResult<Vec<String>> {
    let rows = sqlx::query("SELECT phone_number FROM agent_numbers")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| r.try_get("phone_number").map_err(Into::into))
        .collect()
}

pub(super) async fn agent_for_number(
    pool: &AnyPool,
    number: &str,
    now: DateTime<Utc>,
) -> StoreResult<Option<NumberRoute>> {
    let Some(row) = sqlx::query(
        "SELECT agent_id, tenant, handoff_phone_number FROM agent_numbers WHERE phone_number = $1",
    )
    .bind(number.to_owned())
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let tenant: String = row.try_get("tenant")?;
    let agent_id: String = row.try_get("agent_id")?;
    let Some(agent) = get_agent(pool, &tenant, &agent_id, now).await? else {
        return Ok(None);
    };
    Ok(Some(NumberRoute {
        tenant,
        agent,
        handoff_phone_number: row.try_get("handoff_phone_number")?,
    }))
}

fn tool_from_row(row: &AnyRow) -> StoreResult<Tool> {
    let enabled: i64 = row.try_get("enabled")?;
    let headers: BTreeMap<String, String> = json_col(row, "tool_headers")?;
    Ok(Tool {
        id: row.try_get("id")?,
        agent_id: row.try_get("agent_id")?,
        tenant: row.try_get("tenant")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        parameter_schema: json_col(row, "parameter_schema")?,
        response_schema: opt_json_col(row, "response_schema")?,
        timeout_ms: row.try_get("timeout_ms")?,
        on_error: parse_col(row, "on_error", OnError::parse)?,
        enabled: enabled != 0,
        tool_url: row.try_get("tool_url")?,
        tool_method: parse_col(row, "tool_method", ToolMethod::parse)?,
        tool_headers: headers,
        created_at: from_ms(row.try_get("created_at")?)?,
        updated_at: from_ms(row.try_get("updated_at")?)?,
    })
}

pub(super) async fn list_tools(
    pool: &AnyPool,
    tenant: &str,
    agent_id: &str,
) -> StoreResult<Vec<Tool>> {
    let sql = format!(
        "SELECT {TOOL_COLUMNS} FROM agent_tools WHERE tenant = $1 AND agent_id = $2 \
         ORDER BY created_at, id"
    );
    let rows = sqlx::query(&sql)
        .bind(tenant.to_owned())
        .bind(agent_id.to_owned())
        .fetch_all(pool)
        .await?;
    rows.iter().map(tool_from_row).collect()
}

pub(super) async fn get_tool(
    pool: &AnyPool,
    tenant: &str,
    agent_id: &str,
    tool_id: &str,
) -> StoreResult<Option<Tool>> {
    let sql = format!(
        "SELECT {TOOL_COLUMNS} FROM agent_tools WHERE tenant = $1 AND agent_id = $2 AND id = $3"
    );
    let row = sqlx::query(&sql)
        .bind(tenant.to_owned())
        .bind(agent_id.to_owned())
        .bind(tool_id.to_owned())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(tool_from_row).transpose()
}

/// Moves the agent's `updated_at` (a tool changed); false when the agent is gone or
/// static (which takes no tools).
async fn touch_agent(
    tx: &mut sqlx::Transaction<'static, Any>,
    tenant: &str,
    agent_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let sql = format!(
        "UPDATE agents SET {} WHERE tenant = $2 AND id = $3 AND agent_type <> 'static'",
        bump_updated_at(1)
    );
    let done = sqlx::query(&sql)
        .bind(now.timestamp_millis())
        .bind(tenant.to_owned())
        .bind(agent_id.to_owned())
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Whether another tool of the agent has the name (checked after `touch_agent`, which
/// holds the agent row's lock: tool writes of one agent run one at a time).
async fn name_taken(tx: &mut sqlx::Transaction<'static, Any>, tool: &Tool) -> StoreResult<bool> {
    Ok(
        sqlx::query("SELECT id FROM agent_tools WHERE agent_id = $1 AND name = $2 AND id <> $3")
            .bind(tool.agent_id.clone())
            .bind(tool.name.clone())
            .bind(tool.id.clone())
            .fetch_optional(&mut **tx)
            .await?
            .is_some(),
    )
}

pub(super) async fn create_tool(pool: &AnyPool, tool: &Tool) -> StoreResult<Tool> {
    let mut tx = pool.begin().await?;
    if !touch_agent(&mut tx, &tool.tenant, &tool.agent_id, tool.updated_at).await? {
        tx.rollback().await?;
        return Err(StoreError::AgentConflict);
    }
    if name_taken(&mut tx, tool).await? {
        tx.rollback().await?;
        return Err(StoreError::ToolNameTaken);
    }
    let sql = format!(
        "INSERT INTO agent_tools ({TOOL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
         $10, $11, $12, $13, $14, $15)"
    );
    sqlx::query(&sql)
        .bind(tool.id.clone())
        .bind(tool.agent_id.clone())
        .bind(tool.tenant.clone())
        .bind(tool.name.clone())
        .bind(tool.description.clone())
        .bind(to_json(&tool.parameter_schema))
        .bind(tool.response_schema.as_ref().map(to_json))
        .bind(tool.timeout_ms)
        .bind(tool.on_error.as_str())
        .bind(i64::from(tool.enabled))
        .bind(tool.tool_url.clone())
        .bind(tool.tool_method.as_str())
        .bind(to_json(&tool.tool_headers))
        .bind(tool.created_at.timestamp_millis())
        .bind(tool.updated_at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(tool.clone())
}

pub(super) async fn update_tool(pool: &AnyPool, tool: &Tool) -> StoreResult<Option<Tool>> {
    let mut tx = pool.begin().await?;
    if !touch_agent(&mut tx, &tool.tenant, &tool.agent_id, tool.updated_at).await? {
        tx.rollback().await?;
        return Err(StoreError::AgentConflict);
    }
    if name_taken(&mut tx, tool).await? {
        tx.rollback().await?;
        return Err(StoreError::ToolNameTaken);
    }
    let done = sqlx::query(
        "UPDATE agent_tools SET name = $4, description = $5, parameter_schema = $6, \
         response_schema = $7, timeout_ms = $8, on_error = $9, enabled = $10, tool_url = $11, \
         tool_method = $12, tool_headers = $13, updated_at = $14 \
         WHERE tenant = $1 AND agent_id = $2 AND id = $3",
    )
    .bind(tool.tenant.clone())
    .bind(tool.agent_id.clone())
    .bind(tool.id.clone())
    .bind(tool.name.clone())
    .bind(tool.description.clone())
    .bind(to_json(&tool.parameter_schema))
    .bind(tool.response_schema.as_ref().map(to_json))
    .bind(tool.timeout_ms)
    .bind(tool.on_error.as_str())
    .bind(i64::from(tool.enabled))
    .bind(tool.tool_url.clone())
    .bind(tool.tool_method.as_str())
    .bind(to_json(&tool.tool_headers))
    .bind(tool.updated_at.timestamp_millis())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    tx.commit().await?;
    get_tool(pool, &tool.tenant, &tool.agent_id, &tool.id).await
}

pub(super) async fn delete_tool(
    pool: &AnyPool,
    tenant: &str,
    agent_id: &str,
    tool_id: &str,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let mut tx = pool.begin().await?;
    let done =
        sqlx::query("DELETE FROM agent_tools WHERE tenant = $1 AND agent_id = $2 AND id = $3")
            .bind(tenant.to_owned())
            .bind(agent_id.to_owned())
            .bind(tool_id.to_owned())
            .execute(&mut *tx)
            .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    // A static agent has no tools to delete; the touch cannot miss for a tool that was.
    touch_agent(&mut tx, tenant, agent_id, now).await?;
    tx.commit().await?;
    Ok(true)
}

fn conversation_from_row(row: &AnyRow) -> StoreResult<Conversation> {
    Ok(Conversation {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        agent_id: row.try_get("agent_id")?,
        channel: parse_col(row, "channel", ConversationChannel::parse)?,
        contact: row.try_get("contact")?,
        call_id: row.try_get("call_id")?,
        status: parse_col(row, "status", ConversationStatus::parse)?,
        started_at: from_ms(row.try_get("started_at")?)?,
        ended_at: opt_ms(row.try_get("ended_at")?)?,
        message_count: row.try_get("message_count")?,
    })
}

fn message_from_row(row: &AnyRow) -> StoreResult<Message> {
    Ok(Message {
        seq: row.try_get("seq")?,
        role: parse_col(row, "role", MessageRole::parse)?,
        text: row.try_get("text")?,
        tool_name: row.try_get("tool_name")?,
        tool_arguments: opt_json_col(row, "tool_arguments")?,
        tool_result: opt_json_col(row, "tool_result")?,
        at: from_ms(row.try_get("at")?)?,
    })
}

pub(super) async fn create_conversation(pool: &AnyPool, c: &Conversation) -> StoreResult<()> {
    let sql = format!(
        "INSERT INTO agent_conversations ({CONVERSATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, \
         $6, $7, $8, $9, $10)"
    );
    sqlx::query(&sql)
        .bind(c.id.clone())
        .bind(c.tenant.clone())
        .bind(c.agent_id.clone())
        .bind(c.channel.as_str())
        .bind(c.contact.clone())
        .bind(c.call_id.clone())
        .bind(c.status.as_str())
        .bind(c.started_at.timestamp_millis())
        .bind(c.ended_at.map(|t| t.timestamp_millis()))
        .bind(c.message_count)
        .execute(pool)
        .await?;
    Ok(())
}

pub(super) async fn append_message(
    pool: &AnyPool,
    conversation_id: &str,
    m: &NewMessage,
) -> StoreResult<Option<Message>> {
    let mut tx = pool.begin().await?;
    // The count is the sequence: the UPDATE holds the row, so lines of one conversation
    // are numbered one at a time.
    let Some(row) = sqlx::query(
        "UPDATE agent_conversations SET message_count = message_count + 1 WHERE id = $1 \
         RETURNING message_count",
    )
    .bind(conversation_id.to_owned())
    .fetch_optional(&mut *tx)
    .await?
    else {
        tx.rollback().await?;
        return Ok(None);
    };
    let seq: i64 = row.try_get("message_count")?;
    let at = DateTime::from_timestamp_millis(m.at.timestamp_millis()).unwrap_or(m.at);
    sqlx::query(
        "INSERT INTO agent_conversation_messages (conversation_id, seq, role, text, tool_name, \
         tool_arguments, tool_result, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(conversation_id.to_owned())
    .bind(seq)
    .bind(m.role.as_str())
    .bind(m.text.clone())
    .bind(m.tool_name.clone())
    .bind(m.tool_arguments.as_ref().map(to_json))
    .bind(m.tool_result.as_ref().map(to_json))
    .bind(at.timestamp_millis())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(Message {
        seq,
        role: m.role,
        text: m.text.clone(),
        tool_name: m.tool_name.clone(),
        tool_arguments: m.tool_arguments.clone(),
        tool_result: m.tool_result.clone(),
        at,
    }))
}

pub(super) async fn end_conversation(
    pool: &AnyPool,
    conversation_id: &str,
    status: ConversationStatus,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let done = sqlx::query(
        "UPDATE agent_conversations SET status = $2, ended_at = $3 WHERE id = $1 \
         AND status = 'active'",
    )
    .bind(conversation_id.to_owned())
    .bind(status.as_str())
    .bind(at.timestamp_millis())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub(super) async fn list_conversations(
    pool: &AnyPool,
    tenant: &str,
    agent_id: &str,
    limit: u32,
    cursor: Option<&str>,
) -> StoreResult<ConversationPage> {
    let limit = i64::from(limit);
    let mut sql = format!(
        "SELECT {CONVERSATION_COLUMNS} FROM agent_conversations WHERE tenant = $1 \
         AND agent_id = $2"
    );
    let after = cursor.map(decode_cursor).transpose()?;
    if after.is_some() {
        sql.push_str(" AND (started_at < $3 OR (started_at = $3 AND id < $4))");
    }
    sql.push_str(&format!(
        " ORDER BY started_at DESC, id DESC LIMIT ${}",
        if after.is_some() { 5 } else { 3 }
    ));
    let mut q = sqlx::query(&sql)
        .bind(tenant.to_owned())
        .bind(agent_id.to_owned());
    if let Some((at, id)) = &after {
        q = q.bind(*at).bind(id.clone());
    }
    let rows = q.bind(limit + 1).fetch_all(pool).await?;
    let mut conversations = rows
        .iter()
        .map(conversation_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = conversations.len() as i64 > limit;
    conversations.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let total: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM agent_conversations WHERE tenant = $1 AND agent_id = $2",
    )
    .bind(tenant.to_owned())
    .bind(agent_id.to_owned())
    .fetch_one(pool)
    .await?
    .try_get("n")?;
    let next_cursor = if has_more {
        conversations
            .last()
            .map(|c| encode_cursor_parts(c.started_at, &c.id))
    } else {
        None
    };
    Ok(ConversationPage {
        conversations,
        total,
        has_more,
        next_cursor,
    })
}

pub(super) async fn get_conversation(
    pool: &AnyPool,
    tenant: &str,
    agent_id: &str,
    id: &str,
) -> StoreResult<Option<(Conversation, Vec<Message>)>> {
    let sql = format!(
        "SELECT {CONVERSATION_COLUMNS} FROM agent_conversations WHERE tenant = $1 \
         AND agent_id = $2 AND id = $3"
    );
    let Some(row) = sqlx::query(&sql)
        .bind(tenant.to_owned())
        .bind(agent_id.to_owned())
        .bind(id.to_owned())
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let conversation = conversation_from_row(&row)?;
    let messages = sqlx::query(
        "SELECT seq, role, text, tool_name, tool_arguments, tool_result, at \
         FROM agent_conversation_messages WHERE conversation_id = $1 ORDER BY seq",
    )
    .bind(id.to_owned())
    .fetch_all(pool)
    .await?
    .iter()
    .map(message_from_row)
    .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some((conversation, messages)))
}

pub(super) async fn consume_token(
    pool: &AnyPool,
    jti: &str,
    agent_id: &str,
    expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    // Records of expired tokens are of no use: such a token fails its expiry check first.
    sqlx::query("DELETE FROM agent_realtime_tokens WHERE expires_at <= $1")
        .bind(now.timestamp_millis())
        .execute(pool)
        .await?;
    let done = sqlx::query(
        "INSERT INTO agent_realtime_tokens (jti, agent_id, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(jti.to_owned())
    .bind(agent_id.to_owned())
    .bind(expires_at.timestamp_millis())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}
