//! The proxy tables (`proxy_numbers`, `proxy_sessions`, `proxy_pairings`) on the same pool.
//!
//! Allocation reads the pool and the open pairings, ranks candidates
//! ([`crate::proxy::rank_candidates`]) and then writes the session and its two pairings in
//! one transaction. The primary key of `proxy_pairings` (tenant, proxy number, participant)
//! is what keeps a pair unique among open sessions, whatever node wrote it: a conflicting
//! insert (or a PostgreSQL deadlock between two such inserts) rolls the attempt back and the
//! next one reads again, now seeing the pairing that won. Each transaction begins with a
//! write, so on SQLite it holds the write lock from its first statement (no read snapshot to
//! upgrade).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row as _};

use super::{Backend, EVENT_INSERT, decode_cursor, from_ms, opt_ms, state_str};
use crate::model::DeliveryState;
use crate::proxy::{
    Capability, NewSession, Participant, ProxyInteraction, ProxyLookup, ProxyNumber, ProxySession,
    SessionMode, SessionStatus, UnknownCaller,
};
use crate::store::{
    NumberRemoval, ProxyInteractionPage, ProxySessionPage, StoreError, StoreResult,
};

/// Attempts at writing a session before giving up; each failed one saw a pairing that
/// another writer committed first, so the next reads a smaller choice.
const MAX_ATTEMPTS: usize = 64;

const SESSION_COLUMNS: &str = "id, tenant, status, mode, participant_a, proxy_a, participant_b, \
     proxy_b, metadata, webhook_url, max_call_duration, record, unknown_caller_code, created_at, \
     expires_at, closed_at, unknown_caller_announcement";

/// An open pairing: no expiry, or one still ahead (`$n` is now).
fn live_pairing(n: usize) -> String {
    format!("(expires_at IS NULL OR expires_at > ${n})")
}

fn number_from_row(row: &AnyRow) -> StoreResult<ProxyNumber> {
    let voice: i64 = row.try_get("voice")?;
    let messaging: i64 = row.try_get("messaging")?;
    let mut capabilities = Vec::new();
    if voice != 0 {
        capabilities.push(Capability::Voice);
    }
    if messaging != 0 {
        capabilities.push(Capability::Messaging);
    }
    Ok(ProxyNumber {
        number: row.try_get("number")?,
        tenant: row.try_get("tenant")?,
        trunk: row.try_get("trunk")?,
        capabilities,
        source: row.try_get("source")?,
        active_pairings: row.try_get("active")?,
        created_at: from_ms(row.try_get("created_at")?)?,
    })
}

fn session_from_row(row: &AnyRow) -> StoreResult<ProxySession> {
    let status: String = row.try_get("status")?;
    let mode: String = row.try_get("mode")?;
    let metadata: String = row.try_get("metadata")?;
    let record: i64 = row.try_get("record")?;
    let code: i64 = row.try_get("unknown_caller_code")?;
    Ok(ProxySession {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        status: SessionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("session status {status:?}")))?,
        mode: SessionMode::parse(&mode)
            .ok_or_else(|| StoreError::Corrupt(format!("session mode {mode:?}")))?,
        participants: vec![
            Participant {
                number: row.try_get("participant_a")?,
                proxy_number: row.try_get("proxy_a")?,
            },
            Participant {
                number: row.try_get("participant_b")?,
                proxy_number: row.try_get("proxy_b")?,
            },
        ],
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("session metadata: {e}")))?,
        webhook_url: row.try_get("webhook_url")?,
        max_call_duration: row.try_get("max_call_duration")?,
        record: record != 0,
        unknown_caller: UnknownCaller {
            sip_code: u16::try_from(code)
                .map_err(|_| StoreError::Corrupt(format!("unknown_caller_code {code}")))?,
            announcement: row.try_get("unknown_caller_announcement")?,
        },
        created_at: from_ms(row.try_get("created_at")?)?,
        expires_at: opt_ms(row.try_get("expires_at")?)?,
        closed_at: opt_ms(row.try_get("closed_at")?)?,
    })
}

const NUMBER_SELECT: &str = "SELECT n.tenant, n.number, n.trunk, n.voice, n.messaging, n.source, \
     n.created_at, (SELECT COUNT(*) FROM proxy_pairings p WHERE p.tenant = n.tenant \
     AND p.proxy_number = n.number AND (p.expires_at IS NULL OR p.expires_at > $1)) AS active \
     FROM proxy_numbers n";

/// `[[proxy_numbers]]` at start: inserted, or its trunk and capabilities brought up to date.
pub(super) async fn put_config_number(pool: &AnyPool, n: &ProxyNumber) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO proxy_numbers (tenant, number, trunk, voice, messaging, source, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'config', $6) ON CONFLICT (tenant, number) DO UPDATE SET \
         trunk = excluded.trunk, voice = excluded.voice, messaging = excluded.messaging, \
         source = 'config'",
    )
    .bind(n.tenant.clone())
    .bind(n.number.clone())
    .bind(n.trunk.clone())
    .bind(i64::from(n.has(Capability::Voice)))
    .bind(i64::from(n.has(Capability::Messaging)))
    .bind(n.created_at.timestamp_millis())
    .execute(pool)
    .await?;
    Ok(())
}

/// A number added through the API; false when a pool (this tenant's or another's)
/// already has it.
pub(super) async fn add_number(pool: &AnyPool, n: &ProxyNumber) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO proxy_numbers (tenant, number, trunk, voice, messaging, source, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'api', $6) ON CONFLICT DO NOTHING",
    )
    .bind(n.tenant.clone())
    .bind(n.number.clone())
    .bind(n.trunk.clone())
    .bind(i64::from(n.has(Capability::Voice)))
    .bind(i64::from(n.has(Capability::Messaging)))
    .bind(n.created_at.timestamp_millis())
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn list_numbers(
    pool: &AnyPool,
    tenant: &str,
    now: DateTime<Utc>,
) -> StoreResult<Vec<ProxyNumber>> {
    let sql = format!("{NUMBER_SELECT} WHERE n.tenant = $2 ORDER BY n.number");
    let rows = sqlx::query(&sql)
        .bind(now.timestamp_millis())
        .bind(tenant.to_owned())
        .fetch_all(pool)
        .await?;
    rows.iter().map(number_from_row).collect()
}

pub(super) async fn get_number(
    pool: &AnyPool,
    tenant: &str,
    number: &str,
    now: DateTime<Utc>,
) -> StoreResult<Option<ProxyNumber>> {
    let sql = format!("{NUMBER_SELECT} WHERE n.tenant = $2 AND n.number = $3");
    let row = sqlx::query(&sql)
        .bind(now.timestamp_millis())
        .bind(tenant.to_owned())
        .bind(number.to_owned())
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(number_from_row).transpose()
}

/// Removes a number unless an open session's participant has it. The delete comes first
/// and the check after it, in one transaction: a session being written at the same time
/// either committed its pairing before (the check sees it) or checks the number after
/// (and finds it gone, see `create_session`).
pub(super) async fn delete_number(
    pool: &AnyPool,
    tenant: &str,
    number: &str,
    now: DateTime<Utc>,
) -> StoreResult<NumberRemoval> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query("DELETE FROM proxy_numbers WHERE tenant = $1 AND number = $2")
        .bind(tenant.to_owned())
        .bind(number.to_owned())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        tx.rollback().await?;
        return Ok(NumberRemoval::NotFound);
    }
    let sql = format!(
        "SELECT COUNT(*) AS n FROM proxy_pairings WHERE tenant = $1 AND proxy_number = $2 AND {}",
        live_pairing(3)
    );
    let in_use: i64 = sqlx::query(&sql)
        .bind(tenant.to_owned())
        .bind(number.to_owned())
        .bind(now.timestamp_millis())
        .fetch_one(&mut *tx)
        .await?
        .try_get("n")?;
    if in_use > 0 {
        tx.rollback().await?;
        return Ok(NumberRemoval::InUse(in_use));
    }
    tx.commit().await?;
    Ok(NumberRemoval::Removed)
}

/// Whether an error means "another writer got there first": a unique violation, or on
/// PostgreSQL a deadlock or serialization failure between two allocations.
fn lost_race(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || matches!(db.code().as_deref(), Some("40P01" | "40001"))
                || db.message().contains("UNIQUE constraint failed")
                || sqlite_busy(e)
        }
        _ => false,
    }
}

/// SQLite's `SQLITE_BUSY` (5) or `SQLITE_LOCKED` (6): another writer held the database
/// past the busy timeout. The attempt is rolled back and made again, as a lost race is.
fn sqlite_busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("5" | "6" | "517" | "262"))
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

/// What allocation reads before it writes.
async fn choose(pool: &AnyPool, new: &NewSession, now: i64) -> StoreResult<Option<[String; 2]>> {
    let rows = sqlx::query(
        "SELECT number, voice, messaging FROM proxy_numbers WHERE tenant = $1 ORDER BY number",
    )
    .bind(new.tenant.clone())
    .fetch_all(pool)
    .await?;
    let mut numbers = Vec::with_capacity(rows.len());
    for row in &rows {
        let voice: i64 = row.try_get("voice")?;
        let messaging: i64 = row.try_get("messaging")?;
        let fits = new.mode.needs().iter().all(|c| match c {
            Capability::Voice => voice != 0,
            Capability::Messaging => messaging != 0,
        });
        if fits {
            numbers.push(row.try_get::<String, _>("number")?);
        }
    }
    if numbers.is_empty() {
        return Ok(None);
    }
    // Which numbers are in use (one index probe each, however many sessions are open):
    // a number in use is given before a fresh one, so the pool stays small. A scalar
    // subquery with LIMIT, not EXISTS: PostgreSQL's generic plan for an EXISTS hashed
    // every open pairing on each create.
    let sql = format!(
        "SELECT n.number, (SELECT p.session_id FROM proxy_pairings p WHERE p.tenant = n.tenant \
         AND p.proxy_number = n.number AND {} LIMIT 1) AS used \
         FROM proxy_numbers n WHERE n.tenant = $1",
        live_pairing(2).replace("expires_at", "p.expires_at")
    );
    let mut usage = HashMap::new();
    for row in sqlx::query(&sql)
        .bind(new.tenant.clone())
        .bind(now)
        .fetch_all(pool)
        .await?
    {
        let used: Option<String> = row.try_get("used")?;
        if used.is_some() {
            usage.insert(row.try_get::<String, _>("number")?, 1_i64);
        }
    }
    // The same two participants' latest session: each keeps the number it had there.
    // Two lookups on the pair index: with an OR, SQLite may walk the tenant's sessions in
    // `created_at` order instead, every one of them when the pair is new.
    let last = sqlx::query(
        "SELECT participant_a, proxy_a, participant_b, proxy_b FROM (\
         SELECT participant_a, proxy_a, participant_b, proxy_b, created_at, id \
         FROM proxy_sessions WHERE tenant = $1 AND participant_a = $2 AND participant_b = $3 \
         UNION ALL \
         SELECT participant_a, proxy_a, participant_b, proxy_b, created_at, id \
         FROM proxy_sessions WHERE tenant = $1 AND participant_a = $3 AND participant_b = $2\
         ) AS pair ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(new.tenant.clone())
    .bind(new.participants[0].clone())
    .bind(new.participants[1].clone())
    .fetch_optional(pool)
    .await?;
    let mut sticky: HashMap<String, String> = HashMap::new();
    if let Some(row) = last {
        sticky.insert(row.try_get("participant_a")?, row.try_get("proxy_a")?);
        sticky.insert(row.try_get("participant_b")?, row.try_get("proxy_b")?);
    }
    let taken_sql = format!(
        "SELECT proxy_number FROM proxy_pairings WHERE tenant = $1 AND participant_number = $2 \
         AND {}",
        live_pairing(3)
    );
    let mut chosen = Vec::with_capacity(2);
    for participant in &new.participants {
        let taken: HashSet<String> = sqlx::query(&taken_sql)
            .bind(new.tenant.clone())
            .bind(participant.clone())
            .bind(now)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| r.try_get("proxy_number"))
            .collect::<Result<_, _>>()?;
        let ranked = crate::proxy::rank_candidates(
            &numbers,
            participant,
            sticky.get(participant).map(String::as_str),
            &taken,
            &usage,
        );
        let Some(best) = ranked.first() else {
            return Ok(None);
        };
        // The next participant's ranking counts this choice as use.
        *usage.entry((*best).to_owned()).or_insert(0) += 1;
        chosen.push((*best).to_owned());
    }
    let [a, b]: [String; 2] = chosen
        .try_into()
        .map_err(|_| StoreError::Corrupt("two participants, two numbers".into()))?;
    Ok(Some([a, b]))
}

/// Appends `proxy.session.<what>` to the outbox in the transaction that made the change
/// (the session's id stands for the call's in `call_events`), when the session has a
/// `webhook_url`: delivered and signed as calls' events are, in order per session.
async fn insert_event(
    tx: &mut sqlx::Transaction<'static, Any>,
    session: &ProxySession,
    event_type: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let data = serde_json::json!({"session": session});
    insert_session_event(tx, session, event_type, data, now).await
}

/// An event of `session` with `data` as its payload's `data`, queued as `insert_event` says.
async fn insert_session_event(
    tx: &mut sqlx::Transaction<'static, Any>,
    session: &ProxySession,
    event_type: &str,
    data: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let Some(url) = session.webhook_url.clone().filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    let last: i64 = sqlx::query(
        "SELECT COALESCE(MAX(sequence), 0) AS last FROM call_events WHERE call_id = $1",
    )
    .bind(session.id.clone())
    .fetch_one(&mut **tx)
    .await?
    .try_get("last")?;
    let id = format!("evt_{}", ulid::Ulid::new());
    let payload = serde_json::json!({
        "id": id,
        "type": event_type,
        "sequence": last + 1,
        "created_at": crate::timefmt::millis(&now),
        "data": data,
    });
    sqlx::query(EVENT_INSERT)
        .bind(id)
        .bind(session.id.clone())
        .bind(session.tenant.clone())
        .bind(last + 1)
        .bind(event_type.to_owned())
        .bind(payload.to_string())
        .bind(url)
        .bind(state_str(DeliveryState::Pending))
        .bind(0_i64)
        .bind(now.timestamp_millis())
        .bind(None::<String>)
        .bind(now.timestamp_millis())
        .bind(None::<i64>)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Writes the session and its pairings; `Ok(false)` when a pairing or a removed number
/// lost a race (rolled back, to be tried again).
async fn try_write(
    pool: &AnyPool,
    backend: Backend,
    new: &NewSession,
    proxies: &[String; 2],
    session: &ProxySession,
) -> StoreResult<bool> {
    let mut tx = match pool.begin().await {
        Ok(tx) => tx,
        Err(e) if sqlite_busy(&e) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let result: Result<bool, sqlx::Error> = async {
        // First a write (SQLite: the write lock from here on). Pairings past their expiry
        // are free again even before the sweep runs.
        // Any tenant's: with `tenant = ` in it, SQLite walks the tenant's every pairing
        // by the participant index instead of the few expired ones by the expiry index.
        sqlx::query("DELETE FROM proxy_pairings WHERE expires_at IS NOT NULL AND expires_at <= $1")
            .bind(new.created_at.timestamp_millis())
            .execute(&mut *tx)
            .await?;
        let metadata = new.metadata.to_string();
        sqlx::query(&format!(
            "INSERT INTO proxy_sessions ({SESSION_COLUMNS}) VALUES ($1, $2, 'open', $3, $4, $5, \
             $6, $7, $8, $9, $10, $11, $12, $13, $14, NULL, $15)"
        ))
        .bind(new.id.clone())
        .bind(new.tenant.clone())
        .bind(new.mode.as_str())
        .bind(new.participants[0].clone())
        .bind(proxies[0].clone())
        .bind(new.participants[1].clone())
        .bind(proxies[1].clone())
        .bind(metadata)
        .bind(new.webhook_url.clone())
        .bind(new.max_call_duration)
        .bind(i64::from(new.record))
        .bind(i64::from(new.unknown_caller.sip_code))
        .bind(new.created_at.timestamp_millis())
        .bind(new.expires_at.map(|t| t.timestamp_millis()))
        .bind(new.unknown_caller.announcement.clone())
        .execute(&mut *tx)
        .await?;
        // Inserted in key order, so two writers cannot each hold what the other waits for.
        let mut pairs = [
            (&proxies[0], &new.participants[0]),
            (&proxies[1], &new.participants[1]),
        ];
        pairs.sort();
        for (proxy, participant) in pairs {
            sqlx::query(
                "INSERT INTO proxy_pairings (tenant, proxy_number, participant_number, \
                 session_id, expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(new.tenant.clone())
            .bind(proxy.clone())
            .bind(participant.clone())
            .bind(new.id.clone())
            .bind(new.expires_at.map(|t| t.timestamp_millis()))
            .execute(&mut *tx)
            .await?;
        }
        // The numbers are still in the pool (a concurrent removal either sees the pairings
        // above once committed, or removed the row first and this finds it gone).
        let lock = if backend == Backend::Postgres {
            " FOR SHARE"
        } else {
            ""
        };
        let found = sqlx::query(&format!(
            "SELECT number FROM proxy_numbers WHERE tenant = $1 AND number IN ($2, $3){lock}"
        ))
        .bind(new.tenant.clone())
        .bind(proxies[0].clone())
        .bind(proxies[1].clone())
        .fetch_all(&mut *tx)
        .await?
        .len();
        let distinct = if proxies[0] == proxies[1] { 1 } else { 2 };
        if found != distinct {
            return Ok(false);
        }
        insert_event(&mut tx, session, "proxy.session.created", new.created_at).await?;
        Ok(true)
    }
    .await;
    match result {
        Ok(true) => match tx.commit().await {
            Ok(()) => Ok(true),
            Err(e) if sqlite_busy(&e) => Ok(false),
            Err(e) => Err(e.into()),
        },
        Ok(false) => {
            tx.rollback().await?;
            Ok(false)
        }
        Err(e) if lost_race(&e) => {
            let _ = tx.rollback().await;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn create_session(
    pool: &AnyPool,
    backend: Backend,
    new: &NewSession,
) -> StoreResult<ProxySession> {
    let now = new.created_at.timestamp_millis();
    for _ in 0..MAX_ATTEMPTS {
        let Some(proxies) = choose(pool, new, now).await? else {
            return Err(StoreError::PoolExhausted);
        };
        let session = ProxySession {
            id: new.id.clone(),
            tenant: new.tenant.clone(),
            status: SessionStatus::Open,
            mode: new.mode,
            participants: new
                .participants
                .iter()
                .zip(&proxies)
                .map(|(number, proxy)| Participant {
                    number: number.clone(),
                    proxy_number: proxy.clone(),
                })
                .collect(),
            metadata: new.metadata.clone(),
            webhook_url: new.webhook_url.clone(),
            max_call_duration: new.max_call_duration,
            record: new.record,
            unknown_caller: new.unknown_caller.clone(),
            created_at: new.created_at,
            expires_at: new.expires_at,
            closed_at: None,
        };
        if try_write(pool, backend, new, &proxies, &session).await? {
            return Ok(session);
        }
    }
    tracing::warn!(
        tenant = %new.tenant,
        "proxy number allocation kept losing races; answering pool exhausted"
    );
    Err(StoreError::PoolExhausted)
}

pub(super) async fn get_session(
    pool: &AnyPool,
    tenant: &str,
    id: &str,
    now: DateTime<Utc>,
) -> StoreResult<Option<ProxySession>> {
    let row = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM proxy_sessions WHERE tenant = $1 AND id = $2"
    ))
    .bind(tenant.to_owned())
    .bind(id.to_owned())
    .fetch_optional(pool)
    .await?;
    Ok(row
        .as_ref()
        .map(session_from_row)
        .transpose()?
        .map(|s| s.evaluated(now)))
}

/// One bound value of a list query.
enum Bind {
    Text(String),
    Int(i64),
}

pub(super) async fn list_sessions(
    pool: &AnyPool,
    tenant: &str,
    status: Option<SessionStatus>,
    limit: u32,
    cursor: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<ProxySessionPage> {
    let limit = i64::from(limit.max(1));
    let mut binds = vec![Bind::Text(tenant.to_owned())];
    let mut filter = "tenant = $1".to_owned();
    match status {
        None => {}
        Some(SessionStatus::Open) => {
            binds.push(Bind::Int(now.timestamp_millis()));
            filter.push_str(&format!(
                " AND status = 'open' AND (expires_at IS NULL OR expires_at > ${})",
                binds.len()
            ));
        }
        Some(SessionStatus::Expired) => {
            binds.push(Bind::Int(now.timestamp_millis()));
            filter.push_str(&format!(
                " AND (status = 'expired' OR (status = 'open' AND expires_at <= ${}))",
                binds.len()
            ));
        }
        Some(SessionStatus::Closed) => filter.push_str(" AND status = 'closed'"),
    }
    let count_binds = binds.len();
    let mut page_filter = filter.clone();
    if let Some(cursor) = cursor {
        let (at, id) = decode_cursor(cursor)?;
        binds.push(Bind::Int(at));
        let at_n = binds.len();
        binds.push(Bind::Text(id));
        page_filter.push_str(&format!(
            " AND (created_at < ${at_n} OR (created_at = ${at_n} AND id < ${}))",
            binds.len()
        ));
    }
    binds.push(Bind::Int(limit + 1));
    let sql = format!(
        "SELECT {SESSION_COLUMNS} FROM proxy_sessions WHERE {page_filter} \
         ORDER BY created_at DESC, id DESC LIMIT ${}",
        binds.len()
    );
    let mut q = sqlx::query(&sql);
    for b in &binds {
        q = match b {
            Bind::Text(s) => q.bind(s.clone()),
            Bind::Int(i) => q.bind(*i),
        };
    }
    let rows = q.fetch_all(pool).await?;
    let count_sql = format!("SELECT COUNT(*) AS n FROM proxy_sessions WHERE {filter}");
    let mut cq = sqlx::query(&count_sql);
    for b in &binds[..count_binds] {
        cq = match b {
            Bind::Text(s) => cq.bind(s.clone()),
            Bind::Int(i) => cq.bind(*i),
        };
    }
    let total: i64 = cq.fetch_one(pool).await?.try_get("n")?;
    let mut sessions = rows
        .iter()
        .map(|r| session_from_row(r).map(|s| s.evaluated(now)))
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = sessions.len() as i64 > limit;
    sessions.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if has_more {
        sessions
            .last()
            .map(|s| super::encode_cursor_parts(s.created_at, &s.id))
    } else {
        None
    };
    Ok(ProxySessionPage {
        sessions,
        total,
        has_more,
        next_cursor,
    })
}

/// Closes an open session and frees its pairings; None when there is no such session.
/// A session that is not open any more is returned as it is.
pub(super) async fn close_session(
    pool: &AnyPool,
    tenant: &str,
    id: &str,
    now: DateTime<Utc>,
) -> StoreResult<Option<ProxySession>> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE proxy_sessions SET status = 'closed', closed_at = $3 WHERE tenant = $1 \
         AND id = $2 AND status = 'open' AND (expires_at IS NULL OR expires_at > $3)",
    )
    .bind(tenant.to_owned())
    .bind(id.to_owned())
    .bind(now.timestamp_millis())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() > 0 {
        sqlx::query("DELETE FROM proxy_pairings WHERE session_id = $1")
            .bind(id.to_owned())
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM proxy_sessions WHERE id = $1"
        ))
        .bind(id.to_owned())
        .fetch_one(&mut *tx)
        .await?;
        let closed = session_from_row(&row)?;
        insert_event(&mut tx, &closed, "proxy.session.closed", now).await?;
    }
    tx.commit().await?;
    get_session(pool, tenant, id, now).await
}

/// Marks open sessions past their expiry `expired` and frees their pairings.
pub(super) async fn expire_sessions(pool: &AnyPool, now: DateTime<Utc>) -> StoreResult<u64> {
    let now = now.timestamp_millis();
    // Look before writing: most sweeps find nothing, and a read takes no write lock.
    let due = sqlx::query(
        "SELECT id FROM proxy_sessions WHERE status = 'open' AND expires_at IS NOT NULL \
         AND expires_at <= $1 LIMIT 1",
    )
    .bind(now)
    .fetch_optional(pool)
    .await?;
    if due.is_none() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM proxy_pairings WHERE expires_at IS NOT NULL AND expires_at <= $1")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM proxy_sessions WHERE status = 'open' \
         AND expires_at IS NOT NULL AND expires_at <= $1"
    ))
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    let mut expired = 0;
    for row in &rows {
        let session = session_from_row(row)?;
        // One row at a time: of two nodes sweeping at once, one marks it (and writes its
        // event), the other finds it no longer open.
        let done = sqlx::query(
            "UPDATE proxy_sessions SET status = 'expired', closed_at = expires_at \
             WHERE id = $1 AND status = 'open'",
        )
        .bind(session.id.clone())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            continue;
        }
        expired += 1;
        let session = ProxySession {
            status: SessionStatus::Expired,
            closed_at: session.expires_at,
            ..session
        };
        let at = session.expires_at.unwrap_or_else(Utc::now);
        insert_event(&mut tx, &session, "proxy.session.expired", at).await?;
    }
    tx.commit().await?;
    Ok(expired)
}

/// The open session in which `sender` is paired with `proxy_number`, else what a caller
/// in none gets.
pub(super) async fn lookup(
    pool: &AnyPool,
    proxy_number: &str,
    sender: &str,
    now: DateTime<Utc>,
) -> StoreResult<ProxyLookup> {
    let now_ms = now.timestamp_millis();
    // The pool row first (unique on number), then the pairing by its primary key.
    let Some(number) = sqlx::query("SELECT tenant FROM proxy_numbers WHERE number = $1")
        .bind(proxy_number.to_owned())
        .fetch_optional(pool)
        .await?
    else {
        return Ok(ProxyLookup::NotProxy);
    };
    let tenant: String = number.try_get("tenant")?;
    let cols = SESSION_COLUMNS
        .split(", ")
        .map(|c| format!("s.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let open = sqlx::query(&format!(
        "SELECT {cols} FROM proxy_pairings p JOIN proxy_sessions s ON s.id = p.session_id \
         WHERE p.tenant = $1 AND p.proxy_number = $2 AND p.participant_number = $3 \
         AND (p.expires_at IS NULL OR p.expires_at > $4) AND s.status = 'open'"
    ))
    .bind(tenant.clone())
    .bind(proxy_number.to_owned())
    .bind(sender.to_owned())
    .bind(now_ms)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = open {
        let session = session_from_row(&row)?;
        let from = usize::from(
            session.participants[0].number != sender
                || session.participants[0].proxy_number != proxy_number,
        );
        return Ok(ProxyLookup::Open { session, from });
    }
    let last = sqlx::query(&format!(
        "SELECT {SESSION_COLUMNS} FROM proxy_sessions WHERE tenant = $1 AND id IN \
         (SELECT id FROM (SELECT id, created_at FROM proxy_sessions WHERE proxy_a = $2 \
         AND participant_a = $3 UNION ALL SELECT id, created_at FROM proxy_sessions \
         WHERE proxy_b = $2 AND participant_b = $3) AS paired ORDER BY created_at DESC LIMIT 1)"
    ))
    .bind(tenant.clone())
    .bind(proxy_number.to_owned())
    .bind(sender.to_owned())
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(session_from_row)
    .transpose()?
    .map(|s| s.evaluated(now));
    Ok(ProxyLookup::NoSession { tenant, last })
}

const INTERACTION_COLUMNS: &str = "i.id, i.tenant, i.session_id, i.kind, i.from_participant, \
     i.to_participant, i.inbound_proxy_number, i.outbound_proxy_number, i.status, i.call_id, \
     i.body_bytes, i.error, i.created_at, i.updated_at";

fn interaction_from_row(row: &AnyRow) -> StoreResult<ProxyInteraction> {
    // A voice interaction reads its call's status.
    let call_status: Option<String> = row.try_get("call_status")?;
    let status: String = row.try_get("status")?;
    Ok(ProxyInteraction {
        id: row.try_get("id")?,
        session_id: row.try_get("session_id")?,
        tenant: row.try_get("tenant")?,
        kind: row.try_get("kind")?,
        from_participant: row.try_get("from_participant")?,
        to_participant: row.try_get("to_participant")?,
        inbound_proxy_number: row.try_get("inbound_proxy_number")?,
        outbound_proxy_number: row.try_get("outbound_proxy_number")?,
        status: call_status.unwrap_or(status),
        call_id: row.try_get("call_id")?,
        body_bytes: row.try_get("body_bytes")?,
        error: row.try_get("error")?,
        created_at: from_ms(row.try_get("created_at")?)?,
        updated_at: from_ms(row.try_get("updated_at")?)?,
    })
}

/// Writes an interaction of `session` and queues its `proxy.interaction` event.
pub(super) async fn put_interaction(
    pool: &AnyPool,
    session: &ProxySession,
    i: &ProxyInteraction,
    insert: bool,
) -> StoreResult<()> {
    let mut tx = pool.begin().await?;
    if insert {
        sqlx::query(
            "INSERT INTO proxy_interactions (id, tenant, session_id, kind, from_participant, \
             to_participant, inbound_proxy_number, outbound_proxy_number, status, call_id, \
             body_bytes, error, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(i.id.clone())
        .bind(i.tenant.clone())
        .bind(i.session_id.clone())
        .bind(i.kind.clone())
        .bind(i.from_participant.clone())
        .bind(i.to_participant.clone())
        .bind(i.inbound_proxy_number.clone())
        .bind(i.outbound_proxy_number.clone())
        .bind(i.status.clone())
        .bind(i.call_id.clone())
        .bind(i.body_bytes)
        .bind(i.error.clone())
        .bind(i.created_at.timestamp_millis())
        .bind(i.updated_at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query(
            "UPDATE proxy_interactions SET status = $2, error = $3, updated_at = $4 \
             WHERE id = $1",
        )
        .bind(i.id.clone())
        .bind(i.status.clone())
        .bind(i.error.clone())
        .bind(i.updated_at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
    }
    let data = serde_json::json!({"interaction": i});
    insert_session_event(&mut tx, session, "proxy.interaction", data, i.updated_at).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_interactions(
    pool: &AnyPool,
    tenant: &str,
    session_id: &str,
    limit: u32,
    cursor: Option<&str>,
) -> StoreResult<ProxyInteractionPage> {
    let limit = i64::from(limit.max(1));
    let mut filter = "i.tenant = $1 AND i.session_id = $2".to_owned();
    let mut at = None;
    if let Some(cursor) = cursor {
        at = Some(decode_cursor(cursor)?);
        filter.push_str(" AND (i.created_at < $3 OR (i.created_at = $3 AND i.id < $4))");
    }
    let limit_n = if at.is_some() { 5 } else { 3 };
    let sql = format!(
        "SELECT {INTERACTION_COLUMNS}, c.status AS call_status FROM proxy_interactions i \
         LEFT JOIN calls c ON c.id = i.call_id WHERE {filter} \
         ORDER BY i.created_at DESC, i.id DESC LIMIT ${limit_n}"
    );
    let mut q = sqlx::query(&sql)
        .bind(tenant.to_owned())
        .bind(session_id.to_owned());
    if let Some((ms, id)) = &at {
        q = q.bind(*ms).bind(id.clone());
    }
    let rows = q.bind(limit + 1).fetch_all(pool).await?;
    let total: i64 = sqlx::query(
        "SELECT COUNT(*) AS n FROM proxy_interactions WHERE tenant = $1 AND session_id = $2",
    )
    .bind(tenant.to_owned())
    .bind(session_id.to_owned())
    .fetch_one(pool)
    .await?
    .try_get("n")?;
    let mut interactions = rows
        .iter()
        .map(interaction_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let has_more = interactions.len() as i64 > limit;
    interactions.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_cursor = if has_more {
        interactions
            .last()
            .map(|i| super::encode_cursor_parts(i.created_at, &i.id))
    } else {
        None
    };
    Ok(ProxyInteractionPage {
        interactions,
        total,
        has_more,
        next_cursor,
    })
}
