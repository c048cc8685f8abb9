//! `Store` over sqlx's `Any` driver: one set of portable SQL for SQLite and PostgreSQL.
//!
//! Portability rules: `$n` placeholders (SQLite accepts them too), timestamps as BIGINT epoch
//! milliseconds, JSON as TEXT, booleans as BIGINT 0/1; migrations in `migrations/` use only DDL
//! both databases understand and are applied by sqlx's migrator (idempotent on restart).
//!
//! Outbox claiming: `due_events` is one `UPDATE ... WHERE id IN (SELECT ...) RETURNING` that
//! pushes `next_attempt_at` of the rows it returns forward by a lease. On PostgreSQL the inner
//! select takes `FOR UPDATE SKIP LOCKED`, so several nodes can drain one outbox without sending
//! an event twice. On SQLite (one node per file) the single write statement already runs under
//! the database write lock, so no row locking is needed. A node that dies mid-delivery leaves the
//! claim to expire and the event is retried (at-least-once delivery).
//!
//! Group commit: `create_call`/`update_call` go through one writer task that takes every
//! write queued at that moment and commits them in one transaction (each call row still
//! with its own outbox event, so a status never exists without its callback). Under load
//! this turns hundreds of small commits into a few large ones; when one write in a batch
//! fails, the batch is rolled back and each write retried alone so only the bad one fails.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row as _};
use ulid::Ulid;

use super::{
    AgentPage, CallPage, ConversationPage, NumberRemoval, ProxyInteractionPage, ProxySessionPage,
    Store, StoreError, StoreResult,
};
use crate::agents::model::{
    Agent, Conversation, ConversationStatus, Message, NewMessage, NumberRoute, Tool,
};
use crate::model::{
    ApiKeyRecord, CallEvent, CallRecord, CallStatus, DeliveryState, JsonText, NewEvent, Role,
};
use crate::proxy::{
    NewSession, ProxyInteraction, ProxyLookup, ProxyNumber, ProxySession, SessionStatus,
};

#[path = "proxy_sql.rs"]
mod proxy;

#[path = "agents_sql.rs"]
mod agents;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations");

/// How long a claimed event stays invisible to other deliverers; must exceed the webhook timeout.
const DEFAULT_CLAIM_LEASE: Duration = Duration::from_secs(60);

/// Column order shared by INSERT, UPDATE and `call_from_row`.
const CALL_COLUMNS: [&str; 30] = [
    "id",
    "tenant",
    "direction",
    "to_uri",
    "from_uri",
    "agent_id",
    "status",
    "record",
    "recording_url",
    "webhook_url",
    "max_duration",
    "ring_timeout",
    "metadata",
    "trunk",
    "sip_call_id",
    "sip_code",
    "sip_reason",
    "q850_cause",
    "end_reason",
    "rtp_packets_received",
    "rtp_bytes_received",
    "created_at",
    "answered_at",
    "ended_at",
    "duration_seconds",
    "sip_dialog",
    "rtp_packets_lost",
    "rtp_jitter_ms",
    "mos",
    "proxy_session_id",
];

pub(super) const EVENT_INSERT: &str = "INSERT INTO call_events (id, call_id, tenant, sequence, \
     event_type, payload, webhook_url, state, attempts, next_attempt_at, last_error, created_at, \
     delivered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

const EVENT_COLUMNS: &str = "id, call_id, tenant, sequence, event_type, payload, webhook_url, \
     state, attempts, next_attempt_at, last_error, created_at, delivered_at";

/// Statuses that are not terminal (`CallStatus::is_terminal`); checked by a unit test below.
const LIVE_STATUSES: [CallStatus; 3] = [
    CallStatus::Initiating,
    CallStatus::Ringing,
    CallStatus::InProgress,
];

/// The head-of-line rule: an event is eligible only if it is its call's lowest pending sequence.
const HEAD_OF_CALL: &str = "e.sequence = (SELECT MIN(p.sequence) FROM call_events p \
     WHERE p.call_id = e.call_id AND p.state = 'pending')";

static CALL_SELECT: LazyLock<String> = LazyLock::new(|| CALL_COLUMNS.join(", "));
pub(super) static CALL_INSERT: LazyLock<String> = LazyLock::new(|| {
    let placeholders: Vec<String> = (1..=CALL_COLUMNS.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO calls ({}) VALUES ({})",
        CALL_COLUMNS.join(", "),
        placeholders.join(", ")
    )
});
// Binds in the same order as the INSERT: $1 = id, $2 = tenant, then the rest.
pub(super) static CALL_UPDATE: LazyLock<String> = LazyLock::new(|| {
    let sets: Vec<String> = CALL_COLUMNS
        .iter()
        .enumerate()
        .skip(2)
        .map(|(i, c)| format!("{c} = ${}", i + 1))
        .collect();
    format!(
        "UPDATE calls SET {} WHERE id = $1 AND tenant = $2",
        sets.join(", ")
    )
});

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite or PostgreSQL, chosen by the URL given to [`SqlStore::connect`].
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    writer: tokio::sync::mpsc::Sender<WriteJob>,
    backend: Backend,
    claim_lease: chrono::Duration,
    /// Written on claimed events; see [`Store::release_claims`].
    node: String,
    /// See [`SqlStore::with_unsent_events`].
    record_unsent: bool,
}

impl SqlStore {
    /// `sqlite://path`, `sqlite:path` (file created if missing), `sqlite::memory:`, or
    /// `postgres://...`. Runs pending migrations.
    pub async fn connect(url: &str) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(url))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl(redact(url)));
        };
        let options = match backend {
            Backend::Sqlite => {
                let memory = url.contains(":memory:") || url.contains("mode=memory");
                let options = AnyPoolOptions::new()
                    // Each in-memory connection is its own database: keep exactly one forever.
                    .max_connections(if memory { 1 } else { 8 })
                    // A local file cannot drop a connection: a ping before every read
                    // doubled the reads' cost under load.
                    .test_before_acquire(false)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            // busy_timeout is per connection: writers queue instead of failing.
                            sqlx::query("PRAGMA busy_timeout = 5000")
                                .execute(&mut *conn)
                                .await?;
                            // Only a new, empty file takes this (an existing one keeps
                            // its size). Event rows are ~1 KB: with 16 KiB pages a commit
                            // writes fewer WAL frames and the B-trees split less often
                            // (`cargo bench --bench store`: a few per cent of the writer).
                            sqlx::query("PRAGMA page_size = 16384")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA journal_mode = WAL")
                                .execute(&mut *conn)
                                .await?;
                            sqlx::query("PRAGMA synchronous = NORMAL")
                                .execute(&mut *conn)
                                .await?;
                            Ok(())
                        })
                    });
                if memory {
                    options
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None)
                } else {
                    options
                }
            }
            Backend::Postgres => AnyPoolOptions::new().max_connections(16),
        };
        let pool = options.connect(&url).await?;
        MIGRATOR.run(&pool).await?;
        let (writer, jobs) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        match (backend, super::sqlite_writer::file_path(&url)) {
            (Backend::Sqlite, Some(path)) => super::sqlite_writer::spawn(&path, jobs)?,
            _ => {
                tokio::spawn(run_writer(pool.clone(), jobs));
            }
        }
        Ok(SqlStore {
            pool,
            writer,
            backend,
            claim_lease: to_chrono(DEFAULT_CLAIM_LEASE),
            node: "switchyard".to_owned(),
            record_unsent: true,
        })
    }

    /// Whether events of calls without a `webhook_url` (nothing to send, state
    /// `no_endpoint`) are written to their event list (default true). Off, such a call
    /// writes its row alone: at high call rates those events were most of what was
    /// written per call (four JSON copies of the call, ~3.4 KB).
    pub fn with_unsent_events(mut self, record: bool) -> Self {
        self.record_unsent = record;
        self
    }

    fn records_events_of(&self, call: &CallRecord) -> bool {
        self.record_unsent || call.webhook_url.as_deref().is_some_and(|u| !u.is_empty())
    }

    /// The name this node writes on the events it claims (one per node sharing a database).
    pub fn with_node(mut self, node: &str) -> Self {
        self.node = node.to_owned();
        self
    }

    /// How long `due_events` hides a claimed event from other deliverers (default 60 s).
    /// Must be longer than the webhook timeout, or a slow delivery may be sent twice.
    pub fn with_claim_lease(mut self, lease: Duration) -> Self {
        self.claim_lease = to_chrono(lease);
        self
    }

    /// Closes the pool (tests reopen the same file).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn insert_event(
        tx: &mut sqlx::Transaction<'static, Any>,
        call: &CallRecord,
        event: &NewEvent,
    ) -> StoreResult<CallEvent> {
        // Inside the transaction, after the call row was written (which holds the write lock on
        // SQLite and the call's row lock on PostgreSQL), so concurrent updates serialise here.
        let row = sqlx::query(
            "SELECT COALESCE(MAX(sequence), 0) AS last FROM call_events WHERE call_id = $1",
        )
        .bind(call.id.clone())
        .fetch_one(&mut **tx)
        .await?;
        let last: i64 = row.try_get("last")?;
        let ev = build_event(call, event, last + 1, now_ms())?;
        sqlx::query(EVENT_INSERT)
            .bind(ev.id.clone())
            .bind(ev.call_id.clone())
            .bind(ev.tenant.clone())
            .bind(ev.sequence)
            .bind(ev.event_type.clone())
            .bind(ev.payload.as_str().to_owned())
            .bind(ev.webhook_url.clone())
            .bind(state_str(ev.state))
            .bind(ev.attempts)
            .bind(ev.next_attempt_at.timestamp_millis())
            .bind(ev.last_error.clone())
            .bind(ev.created_at.timestamp_millis())
            .bind(ev.delivered_at.map(|t| t.timestamp_millis()))
            .execute(&mut **tx)
            .await?;
        Ok(ev)
    }

    async fn write(&self, op: WriteOp) -> StoreResult<Option<CallEvent>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(WriteJob { op, reply })
            .await
            .map_err(|_| StoreError::Corrupt("store writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Corrupt("store writer stopped".into()))?
    }

    async fn fetch_event(&self, event_id: &str) -> StoreResult<Option<CallEvent>> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM call_events WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(event_id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn create_call(
        &self,
        call: &Arc<CallRecord>,
        event: &NewEvent,
    ) -> StoreResult<Option<CallEvent>> {
        let event = self.records_events_of(call).then(|| event.clone());
        let recorded = event.is_some();
        let ev = self.write(WriteOp::Create(Arc::clone(call), event)).await?;
        if recorded && ev.is_none() {
            return Err(StoreError::Corrupt("create wrote no event".into()));
        }
        Ok(ev)
    }

    async fn update_call(
        &self,
        call: &Arc<CallRecord>,
        event: Option<&NewEvent>,
    ) -> StoreResult<Option<CallEvent>> {
        let event = event.filter(|_| self.records_events_of(call)).cloned();
        self.write(WriteOp::Update(Arc::clone(call), event)).await
    }

    async fn get_call(&self, tenant: &str, id: &str) -> StoreResult<Option<CallRecord>> {
        let sql = format!(
            "SELECT {} FROM calls WHERE tenant = $1 AND id = $2",
            *CALL_SELECT
        );
        let row = sqlx::query(&sql)
            .bind(tenant.to_owned())
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(call_from_row).transpose()
    }

    async fn list_calls(
        &self,
        tenant: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> StoreResult<CallPage> {
        let limit = i64::from(limit.max(1));
        // One extra row tells whether another page exists, exactly at page boundaries too.
        let rows = match cursor {
            None => {
                let sql = format!(
                    "SELECT {} FROM calls WHERE tenant = $1 \
                     ORDER BY created_at DESC, id DESC LIMIT $2",
                    *CALL_SELECT
                );
                sqlx::query(&sql)
                    .bind(tenant.to_owned())
                    .bind(limit + 1)
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(cursor) => {
                let (at, id) = decode_cursor(cursor)?;
                let sql = format!(
                    "SELECT {} FROM calls WHERE tenant = $1 \
                     AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
                     ORDER BY created_at DESC, id DESC LIMIT $4",
                    *CALL_SELECT
                );
                sqlx::query(&sql)
                    .bind(tenant.to_owned())
                    .bind(at)
                    .bind(id)
                    .bind(limit + 1)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM calls WHERE tenant = $1")
            .bind(tenant.to_owned())
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?;
        let mut calls = rows
            .iter()
            .map(call_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let has_more = calls.len() as i64 > limit;
        calls.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        let next_cursor = if has_more {
            calls.last().map(encode_cursor)
        } else {
            None
        };
        Ok(CallPage {
            calls,
            total,
            has_more,
            next_cursor,
        })
    }

    async fn live_calls(&self) -> StoreResult<Vec<CallRecord>> {
        let statuses: Vec<String> = LIVE_STATUSES
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let sql = format!(
            "SELECT {} FROM calls WHERE status IN ({}) ORDER BY created_at, id",
            *CALL_SELECT,
            statuses.join(", ")
        );
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(call_from_row).collect()
    }

    async fn due_events(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<Vec<CallEvent>> {
        // Look before claiming: the claim is a write and would queue behind the call writer
        // for the database lock even when nothing is due (a read does not, under WAL).
        let any_due = sqlx::query(
            "SELECT 1 AS due FROM call_events WHERE state = 'pending' AND next_attempt_at <= $1 LIMIT 1",
        )
        .bind(now.timestamp_millis())
        .fetch_optional(&self.pool)
        .await?;
        if any_due.is_none() {
            return Ok(Vec::new());
        }
        let lock = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE call_events SET next_attempt_at = $3, claimed_by = $4 WHERE id IN (\
               SELECT e.id FROM call_events e \
               WHERE e.state = 'pending' AND e.next_attempt_at <= $1 AND {HEAD_OF_CALL} \
               ORDER BY e.created_at, e.id LIMIT $2{lock}) \
             RETURNING {EVENT_COLUMNS}"
        );
        let rows = sqlx::query(&sql)
            .bind(now.timestamp_millis())
            .bind(i64::from(limit))
            .bind((now + self.claim_lease).timestamp_millis())
            .bind(self.node.clone())
            .fetch_all(&self.pool)
            .await?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        // RETURNING does not promise an order.
        events.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(events)
    }

    async fn release_claims(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE call_events SET next_attempt_at = $1, claimed_by = NULL \
             WHERE state = 'pending' AND claimed_by = $2",
        )
        .bind(now.timestamp_millis())
        .bind(self.node.clone())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn next_due_at(&self) -> StoreResult<Option<DateTime<Utc>>> {
        // Same head-of-line rule as due_events: a blocked later event must not cause busy wakeups.
        let sql = format!(
            "SELECT MIN(e.next_attempt_at) AS t FROM call_events e \
             WHERE e.state = 'pending' AND {HEAD_OF_CALL}"
        );
        let t: Option<i64> = sqlx::query(&sql)
            .fetch_one(&self.pool)
            .await?
            .try_get("t")?;
        t.map(from_ms).transpose()
    }

    async fn mark_delivered(&self, event_id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE call_events SET state = 'delivered', delivered_at = $1, \
             attempts = attempts + 1 WHERE id = $2",
        )
        .bind(at.timestamp_millis())
        .bind(event_id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mark_attempt_failed(
        &self,
        event_id: &str,
        attempts: i64,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE call_events SET attempts = $1, next_attempt_at = $2, last_error = $3, \
             claimed_by = NULL WHERE id = $4",
        )
        .bind(attempts)
        .bind(next_attempt_at.timestamp_millis())
        .bind(error.to_owned())
        .bind(event_id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mark_abandoned(&self, event_id: &str, attempts: i64, error: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE call_events SET state = 'failed', attempts = $1, last_error = $2 \
             WHERE id = $3",
        )
        .bind(attempts)
        .bind(error.to_owned())
        .bind(event_id.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_events(&self, tenant: &str, call_id: &str) -> StoreResult<Vec<CallEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM call_events WHERE tenant = $1 AND call_id = $2 \
             ORDER BY sequence"
        );
        let rows = sqlx::query(&sql)
            .bind(tenant.to_owned())
            .bind(call_id.to_owned())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn redeliver_event(
        &self,
        tenant: &str,
        call_id: &str,
        event_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<CallEvent>> {
        // An event of a call without webhook_url stays no_endpoint: there is nowhere to send it.
        let done = sqlx::query(
            "UPDATE call_events SET \
             state = CASE WHEN webhook_url IS NULL THEN 'no_endpoint' ELSE 'pending' END, \
             attempts = 0, next_attempt_at = $1, last_error = NULL, delivered_at = NULL \
             WHERE id = $2 AND call_id = $3 AND tenant = $4",
        )
        .bind(now.timestamp_millis())
        .bind(event_id.to_owned())
        .bind(call_id.to_owned())
        .bind(tenant.to_owned())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.fetch_event(event_id).await
    }

    async fn create_api_key(
        &self,
        tenant: &str,
        role: Role,
        key_hash: &str,
    ) -> StoreResult<ApiKeyRecord> {
        let id = format!("key_{}", Ulid::new());
        sqlx::query(
            "INSERT INTO api_keys (id, tenant, role, key_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id.clone())
        .bind(tenant.to_owned())
        .bind(role.as_str())
        .bind(key_hash.to_owned())
        .bind(Utc::now().timestamp_millis())
        .execute(&self.pool)
        .await?;
        Ok(ApiKeyRecord {
            id,
            tenant: tenant.to_owned(),
            role,
        })
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let row = sqlx::query("SELECT id, tenant, role FROM api_keys WHERE key_hash = $1")
            .bind(key_hash.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get("role")?;
        Ok(Some(ApiKeyRecord {
            id: row.try_get("id")?,
            tenant: row.try_get("tenant")?,
            role: Role::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("api key role {role:?}")))?,
        }))
    }

    async fn webhook_secret(&self, tenant: &str) -> StoreResult<String> {
        let select = "SELECT webhook_secret FROM tenants WHERE name = $1";
        let row = sqlx::query(select)
            .bind(tenant.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        if let Some(row) = row {
            return Ok(row.try_get("webhook_secret")?);
        }
        // Two callers may race to create it: the first insert wins, both read the winner.
        sqlx::query(
            "INSERT INTO tenants (name, webhook_secret) VALUES ($1, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(tenant.to_owned())
        .bind(new_secret())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(select)
            .bind(tenant.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("webhook_secret")?)
    }

    async fn put_config_proxy_number(&self, number: &ProxyNumber) -> StoreResult<()> {
        proxy::put_config_number(&self.pool, number).await
    }

    async fn add_proxy_number(&self, number: &ProxyNumber) -> StoreResult<bool> {
        proxy::add_number(&self.pool, number).await
    }

    async fn list_proxy_numbers(
        &self,
        tenant: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Vec<ProxyNumber>> {
        proxy::list_numbers(&self.pool, tenant, now).await
    }

    async fn get_proxy_number(
        &self,
        tenant: &str,
        number: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ProxyNumber>> {
        proxy::get_number(&self.pool, tenant, number, now).await
    }

    async fn delete_proxy_number(
        &self,
        tenant: &str,
        number: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<NumberRemoval> {
        proxy::delete_number(&self.pool, tenant, number, now).await
    }

    async fn create_proxy_session(&self, session: &NewSession) -> StoreResult<ProxySession> {
        proxy::create_session(&self.pool, self.backend, session).await
    }

    async fn get_proxy_session(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ProxySession>> {
        proxy::get_session(&self.pool, tenant, id, now).await
    }

    async fn list_proxy_sessions(
        &self,
        tenant: &str,
        status: Option<SessionStatus>,
        limit: u32,
        cursor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<ProxySessionPage> {
        proxy::list_sessions(&self.pool, tenant, status, limit, cursor, now).await
    }

    async fn close_proxy_session(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<ProxySession>> {
        proxy::close_session(&self.pool, tenant, id, now).await
    }

    async fn expire_proxy_sessions(&self, now: DateTime<Utc>) -> StoreResult<u64> {
        proxy::expire_sessions(&self.pool, now).await
    }

    async fn lookup_proxy(
        &self,
        proxy_number: &str,
        sender: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<ProxyLookup> {
        proxy::lookup(&self.pool, proxy_number, sender, now).await
    }

    async fn put_proxy_interaction(
        &self,
        session: &ProxySession,
        interaction: &ProxyInteraction,
        insert: bool,
    ) -> StoreResult<()> {
        proxy::put_interaction(&self.pool, session, interaction, insert).await
    }

    async fn list_proxy_interactions(
        &self,
        tenant: &str,
        session_id: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> StoreResult<ProxyInteractionPage> {
        proxy::list_interactions(&self.pool, tenant, session_id, limit, cursor).await
    }

    async fn create_agent(&self, agent: &Agent, now: DateTime<Utc>) -> StoreResult<Agent> {
        agents::create_agent(&self.pool, agent, now).await
    }

    async fn get_agent(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>> {
        agents::get_agent(&self.pool, tenant, id, now).await
    }

    async fn list_agents(
        &self,
        tenant: &str,
        limit: u32,
        cursor: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<AgentPage> {
        agents::list_agents(&self.pool, tenant, limit, cursor, now).await
    }

    async fn update_agent(
        &self,
        agent: &Agent,
        expected: DateTime<Utc>,
        max_active: u32,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Agent>> {
        agents::update_agent(&self.pool, agent, expected, max_active, now).await
    }

    async fn delete_agent(&self, tenant: &str, id: &str) -> StoreResult<bool> {
        agents::delete_agent(&self.pool, tenant, id).await
    }

    async fn agent_for_number(
        &self,
        number: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<NumberRoute>> {
        agents::agent_for_number(&self.pool, number, now).await
    }

    async fn assigned_agent_numbers(&self) -> StoreResult<Vec<String>> {
        agents::assigned_numbers(&self.pool).await
    }

    async fn list_agent_tools(&self, tenant: &str, agent_id: &str) -> StoreResult<Vec<Tool>> {
        agents::list_tools(&self.pool, tenant, agent_id).await
    }

    async fn get_agent_tool(
        &self,
        tenant: &str,
        agent_id: &str,
        tool_id: &str,
    ) -> StoreResult<Option<Tool>> {
        agents::get_tool(&self.pool, tenant, agent_id, tool_id).await
    }

    async fn create_agent_tool(&self, tool: &Tool) -> StoreResult<Tool> {
        agents::create_tool(&self.pool, tool).await
    }

    async fn update_agent_tool(&self, tool: &Tool) -> StoreResult<Option<Tool>> {
        agents::update_tool(&self.pool, tool).await
    }

    async fn delete_agent_tool(
        &self,
        tenant: &str,
        agent_id: &str,
        tool_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        agents::delete_tool(&self.pool, tenant, agent_id, tool_id, now).await
    }

    async fn create_conversation(&self, conversation: &Conversation) -> StoreResult<()> {
        agents::create_conversation(&self.pool, conversation).await
    }

    async fn append_conversation_message(
        &self,
        conversation_id: &str,
        message: &NewMessage,
    ) -> StoreResult<Option<Message>> {
        agents::append_message(&self.pool, conversation_id, message).await
    }

    async fn end_conversation(
        &self,
        conversation_id: &str,
        status: ConversationStatus,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        agents::end_conversation(&self.pool, conversation_id, status, at).await
    }

    async fn list_conversations(
        &self,
        tenant: &str,
        agent_id: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> StoreResult<ConversationPage> {
        agents::list_conversations(&self.pool, tenant, agent_id, limit, cursor).await
    }

    async fn get_conversation(
        &self,
        tenant: &str,
        agent_id: &str,
        id: &str,
    ) -> StoreResult<Option<(Conversation, Vec<Message>)>> {
        agents::get_conversation(&self.pool, tenant, agent_id, id).await
    }

    async fn consume_realtime_token(
        &self,
        jti: &str,
        agent_id: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        agents::consume_token(&self.pool, jti, agent_id, expires_at, now).await
    }

    async fn rotate_webhook_secret(&self, tenant: &str) -> StoreResult<String> {
        let secret = new_secret();
        sqlx::query(
            "INSERT INTO tenants (name, webhook_secret) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET webhook_secret = excluded.webhook_secret",
        )
        .bind(tenant.to_owned())
        .bind(secret.clone())
        .execute(&self.pool)
        .await?;
        Ok(secret)
    }
}

/// Adds `mode=rwc` so a missing database file is created (unless the URL picks a mode).
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// Keeps passwords out of error messages.
fn redact(url: &str) -> String {
    match url.split_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => url.to_owned(),
    }
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Now, truncated to the millisecond precision the database keeps.
pub(super) fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

fn from_ms(ms: i64) -> StoreResult<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} out of range")))
}

fn opt_ms(ms: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    ms.map(from_ms).transpose()
}

/// "whsec_" + base64 of 32 bytes from the thread-local CSPRNG.
fn new_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

fn encode_cursor(call: &CallRecord) -> String {
    encode_cursor_parts(call.created_at, &call.id)
}

/// `<created_at ms>:<id>`, base64url: the cursor of every list ordered newest first.
fn encode_cursor_parts(created_at: DateTime<Utc>, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{id}", created_at.timestamp_millis()))
}

fn decode_cursor(cursor: &str) -> StoreResult<(i64, String)> {
    let raw = URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| StoreError::InvalidCursor)?;
    let text = String::from_utf8(raw).map_err(|_| StoreError::InvalidCursor)?;
    let (at, id) = text.split_once(':').ok_or(StoreError::InvalidCursor)?;
    let at = at.parse().map_err(|_| StoreError::InvalidCursor)?;
    // Ids are generated text: a control character (NUL, which PostgreSQL refuses in a
    // query parameter, made a 500) means the cursor is not ours.
    if id.chars().any(char::is_control) {
        return Err(StoreError::InvalidCursor);
    }
    Ok((at, id.to_owned()))
}

pub(super) fn state_str(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending => "pending",
        DeliveryState::Delivered => "delivered",
        DeliveryState::NoEndpoint => "no_endpoint",
        DeliveryState::Failed => "failed",
    }
}

fn parse_state(s: &str) -> StoreResult<DeliveryState> {
    Ok(match s {
        "pending" => DeliveryState::Pending,
        "delivered" => DeliveryState::Delivered,
        "no_endpoint" => DeliveryState::NoEndpoint,
        "failed" => DeliveryState::Failed,
        other => return Err(StoreError::Corrupt(format!("delivery state {other:?}"))),
    })
}

/// An event's webhook body, serialised straight to text.
#[derive(serde::Serialize)]
struct EventPayload<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    sequence: i64,
    created_at: String,
    data: EventData<'a>,
}

/// `{"call": {...}, ...extras}`; "call" is ours: an extra cannot replace the call object.
struct EventData<'a> {
    call: &'a CallRecord,
    extra: &'a serde_json::Value,
}

impl serde::Serialize for EventData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let extras = match self.extra {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        };
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("call", self.call)?;
        for (k, v) in extras.into_iter().flatten() {
            if k != "call" {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

pub(super) fn build_event(
    call: &CallRecord,
    event: &NewEvent,
    sequence: i64,
    now: DateTime<Utc>,
) -> StoreResult<CallEvent> {
    let id = format!("evt_{}", Ulid::new());
    let payload = serde_json::to_string(&EventPayload {
        id: &id,
        event_type: &event.event_type,
        sequence,
        created_at: crate::timefmt::millis(&now),
        data: EventData {
            call,
            extra: &event.extra,
        },
    })
    .map_err(|e| StoreError::Corrupt(format!("call {} does not serialise: {e}", call.id)))?;
    let payload = JsonText::from_serialized(payload);
    let webhook_url = call.webhook_url.clone().filter(|u| !u.is_empty());
    let state = if webhook_url.is_some() {
        DeliveryState::Pending
    } else {
        DeliveryState::NoEndpoint
    };
    Ok(CallEvent {
        id,
        call_id: call.id.clone(),
        tenant: call.tenant.clone(),
        sequence,
        event_type: event.event_type.clone(),
        payload,
        webhook_url,
        state,
        attempts: 0,
        next_attempt_at: now,
        last_error: None,
        created_at: now,
        delivered_at: None,
    })
}

fn bind_call<'q>(
    q: Query<'q, Any, AnyArguments<'q>>,
    c: &CallRecord,
) -> StoreResult<Query<'q, Any, AnyArguments<'q>>> {
    let metadata = serde_json::to_string(&c.metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata of {}: {e}", c.id)))?;
    Ok(q.bind(c.id.clone())
        .bind(c.tenant.clone())
        .bind(c.direction.clone())
        .bind(c.to.clone())
        .bind(c.from.clone())
        .bind(c.agent_id.clone())
        .bind(c.status.as_str())
        .bind(i64::from(c.record))
        .bind(c.recording_url.clone())
        .bind(c.webhook_url.clone())
        .bind(c.max_duration)
        .bind(c.ring_timeout)
        .bind(metadata)
        .bind(c.trunk.clone())
        .bind(c.sip_call_id.clone())
        .bind(c.sip_code.map(i64::from))
        .bind(c.sip_reason.clone())
        .bind(c.q850_cause.map(i64::from))
        .bind(c.end_reason.clone())
        .bind(c.rtp_packets_received)
        .bind(c.rtp_bytes_received)
        .bind(c.created_at.timestamp_millis())
        .bind(c.answered_at.map(|t| t.timestamp_millis()))
        .bind(c.ended_at.map(|t| t.timestamp_millis()))
        .bind(c.duration_seconds)
        .bind(c.sip_dialog.clone())
        .bind(c.rtp_packets_lost)
        .bind(c.rtp_jitter_ms)
        .bind(c.mos)
        .bind(c.proxy_session_id.clone()))
}

fn opt_i32(row: &AnyRow, col: &str) -> StoreResult<Option<i32>> {
    let v: Option<i64> = row.try_get(col)?;
    v.map(|v| i32::try_from(v).map_err(|_| StoreError::Corrupt(format!("{col} {v} out of range"))))
        .transpose()
}

fn call_from_row(row: &AnyRow) -> StoreResult<CallRecord> {
    let status: String = row.try_get("status")?;
    let metadata: String = row.try_get("metadata")?;
    let record: i64 = row.try_get("record")?;
    Ok(CallRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        direction: row.try_get("direction")?,
        to: row.try_get("to_uri")?,
        from: row.try_get("from_uri")?,
        agent_id: row.try_get("agent_id")?,
        status: CallStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("call status {status:?}")))?,
        record: record != 0,
        recording_url: row.try_get("recording_url")?,
        webhook_url: row.try_get("webhook_url")?,
        max_duration: row.try_get("max_duration")?,
        ring_timeout: row.try_get("ring_timeout")?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("call metadata: {e}")))?,
        trunk: row.try_get("trunk")?,
        sip_call_id: row.try_get("sip_call_id")?,
        sip_code: opt_i32(row, "sip_code")?,
        sip_reason: row.try_get("sip_reason")?,
        q850_cause: opt_i32(row, "q850_cause")?,
        end_reason: row.try_get("end_reason")?,
        rtp_packets_received: row.try_get("rtp_packets_received")?,
        rtp_bytes_received: row.try_get("rtp_bytes_received")?,
        created_at: from_ms(row.try_get("created_at")?)?,
        answered_at: opt_ms(row.try_get("answered_at")?)?,
        ended_at: opt_ms(row.try_get("ended_at")?)?,
        duration_seconds: row.try_get("duration_seconds")?,
        sip_dialog: row.try_get("sip_dialog")?,
        rtp_packets_lost: row.try_get("rtp_packets_lost")?,
        rtp_jitter_ms: row.try_get("rtp_jitter_ms")?,
        mos: row.try_get("mos")?,
        proxy_session_id: row.try_get("proxy_session_id")?,
    })
}

fn event_from_row(row: &AnyRow) -> StoreResult<CallEvent> {
    let payload: String = row.try_get("payload")?;
    let state: String = row.try_get("state")?;
    Ok(CallEvent {
        id: row.try_get("id")?,
        call_id: row.try_get("call_id")?,
        tenant: row.try_get("tenant")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        payload: JsonText::new(payload)
            .map_err(|e| StoreError::Corrupt(format!("event payload: {e}")))?,
        webhook_url: row.try_get("webhook_url")?,
        state: parse_state(&state)?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: from_ms(row.try_get("next_attempt_at")?)?,
        last_error: row.try_get("last_error")?,
        created_at: from_ms(row.try_get("created_at")?)?,
        delivered_at: opt_ms(row.try_get("delivered_at")?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_statuses_are_exactly_the_non_terminal_ones() {
        let all = [
            "initiating",
            "ringing",
            "in_progress",
            "completed",
            "busy",
            "no_answer",
            "cancelled",
            "failed",
        ];
        let live: Vec<CallStatus> = all
            .iter()
            .filter_map(|s| CallStatus::parse(s))
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(live, LIVE_STATUSES.to_vec());
    }

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let (at, id) = decode_cursor(&URL_SAFE_NO_PAD.encode("1700000000123:call_01X:y"))
            .expect("valid cursor");
        assert_eq!((at, id.as_str()), (1_700_000_000_123, "call_01X:y"));
        assert!(matches!(
            decode_cursor("not base64!"),
            Err(StoreError::InvalidCursor)
        ));
        assert!(matches!(
            decode_cursor(&URL_SAFE_NO_PAD.encode("nocolon")),
            Err(StoreError::InvalidCursor)
        ));
        assert!(matches!(
            decode_cursor(&URL_SAFE_NO_PAD.encode("1:call_\0")),
            Err(StoreError::InvalidCursor)
        ));
    }

    #[test]
    fn sqlite_url_gains_create_mode() {
        assert_eq!(sqlite_url("sqlite:a.db"), "sqlite:a.db?mode=rwc");
        assert_eq!(
            sqlite_url("sqlite://a.db?x=1"),
            "sqlite://a.db?x=1&mode=rwc"
        );
        assert_eq!(sqlite_url("sqlite://a.db?mode=ro"), "sqlite://a.db?mode=ro");
        assert_eq!(sqlite_url("sqlite::memory:"), "sqlite::memory:");
    }
}

/// Writes queued for the writer task before callers wait (backpressure beyond this).
const WRITE_QUEUE: usize = 4096;
/// Most writes committed in one transaction.
const MAX_BATCH: usize = 256;

#[derive(Debug)]
pub(super) enum WriteOp {
    /// A new call, with its first event unless the store leaves it out.
    Create(Arc<CallRecord>, Option<NewEvent>),
    Update(Arc<CallRecord>, Option<NewEvent>),
}

#[derive(Debug)]
pub(super) struct WriteJob {
    pub(super) op: WriteOp,
    pub(super) reply: tokio::sync::oneshot::Sender<StoreResult<Option<CallEvent>>>,
}

impl WriteJob {
    /// Lets go of the call before answering: the waiting task then holds the only
    /// reference and changes its record in place instead of copying it.
    pub(super) fn answer(self, result: StoreResult<Option<CallEvent>>) {
        let WriteJob { op, reply } = self;
        drop(op);
        let _ = reply.send(result);
    }
}

async fn run_writer(pool: AnyPool, mut jobs: tokio::sync::mpsc::Receiver<WriteJob>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let ops: Vec<&WriteOp> = batch.iter().map(|j| &j.op).collect();
        match write_batch(&pool, &ops).await {
            Ok(events) => {
                for (job, ev) in batch.drain(..).zip(events) {
                    job.answer(Ok(ev));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    job.answer(Err(e));
                }
            }
            Err(_) => {
                // One bad write must not fail its neighbours: retry each alone.
                for job in batch.drain(..) {
                    let result = write_batch(&pool, &[&job.op])
                        .await
                        .map(|mut evs| evs.pop().flatten());
                    job.answer(result);
                }
            }
        }
    }
}

/// All `ops` in one transaction; the events they wrote, in order.
async fn write_batch(pool: &AnyPool, ops: &[&WriteOp]) -> StoreResult<Vec<Option<CallEvent>>> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let ev = match op {
            WriteOp::Create(call, event) => {
                bind_call(sqlx::query(&CALL_INSERT), call)?
                    .execute(&mut *tx)
                    .await?;
                match event {
                    Some(event) => Some(SqlStore::insert_event(&mut tx, call, event).await?),
                    None => None,
                }
            }
            WriteOp::Update(call, event) => {
                let done = bind_call(sqlx::query(&CALL_UPDATE), call)?
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::CallNotFound(call.id.clone()));
                }
                match event {
                    Some(event) => Some(SqlStore::insert_event(&mut tx, call, event).await?),
                    None => None,
                }
            }
        };
        out.push(ev);
    }
    tx.commit().await?;
    Ok(out)
}
