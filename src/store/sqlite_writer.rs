//! The SQLite write path on a thread of its own (rusqlite): a batch of status writes is
//! one transaction with cached prepared statements and one thread handoff, where sqlx's
//! SQLite driver hands every statement to its worker thread and back (three per status
//! write) — that handoff was the largest cost per call under load. Reads and PostgreSQL
//! stay on sqlx; the schema and migrations are sqlx's.

use rusqlite::{Connection, ToSql, TransactionBehavior};

use super::sql::{CALL_INSERT, CALL_UPDATE, EVENT_INSERT, WriteJob, WriteOp, build_event, now_ms};
use super::{StoreError, StoreResult};
use crate::model::{CallEvent, CallRecord, NewEvent};

const MAX_BATCH: usize = 256;
/// A batch at least this large means writes are queueing: the next one lingers.
const LINGER_FROM: usize = 2;
const LINGER: std::time::Duration = std::time::Duration::from_micros(2000);
/// A commit at least this slow is logged: the calls in it were held up meanwhile.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(50);
/// How often slow commits are logged at most (the line counts those since the last).
const SLOW_COMMIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Calls whose last event sequence the writer remembers; past this the memory is
/// dropped and sequences are read back from the table (correct, just slower).
const MAX_SEQUENCES: usize = 100_000;

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Corrupt(format!("sqlite: {e}"))
}

/// The file path in a `sqlite:` URL, or None for in-memory databases (which only the
/// sqlx pool's single connection can see).
pub(super) fn file_path(url: &str) -> Option<String> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty()).then(|| path.to_owned())
}

/// Opens the file (already created and migrated by sqlx) and runs the writer loop on a
/// new thread until every sender is gone.
pub(super) fn spawn(path: &str, jobs: tokio::sync::mpsc::Receiver<WriteJob>) -> StoreResult<()> {
    let conn = Connection::open(path).map_err(db_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(db_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(db_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(db_err)?;
    conn.set_prepared_statement_cache_capacity(16);
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || run(conn, jobs))
        .map_err(|e| StoreError::Corrupt(format!("cannot start the SQLite writer: {e}")))?;
    Ok(())
}

fn run(conn: Connection, mut jobs: tokio::sync::mpsc::Receiver<WriteJob>) {
    let insert = CALL_INSERT.replace('$', "?");
    // created_at never changes and is indexed: leaving it out of the SET list spares
    // SQLite that index's upkeep on every status (its ?N stays bound, unused).
    let update = CALL_UPDATE
        .replace(", created_at = $22", "")
        .replace('$', "?");
    debug_assert!(!update.contains("created_at"));
    let event = EVENT_INSERT.replace('$', "?");
    // Prepared once for the thread's life: a statement cache lookup hashes the whole SQL
    // text (hundreds of bytes) on every use.
    let prepared = (|| {
        Ok::<_, rusqlite::Error>(Statements {
            insert: conn.prepare(&insert)?,
            update: conn.prepare(&update)?,
            event: conn.prepare(&event)?,
        })
    })();
    let mut sql = match prepared {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "the SQLite writer cannot prepare its statements");
            while let Some(job) = jobs.blocking_recv() {
                job.answer(Err(StoreError::Corrupt(format!("sqlite: {e}"))));
            }
            return;
        }
    };
    let conn = &conn;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // This thread is the only writer of events on a file database, so it can number
    // them itself instead of asking the table for MAX(sequence) on every event.
    let mut seqs = Sequences::default();
    let mut last_batch = 0;
    let (mut slow_commits, mut last_slow_log) = (0u64, None);
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        if last_batch >= LINGER_FROM {
            // Busy: let the batch fill a little. A commit (WAL frames, checksums) costs
            // about as much as the rows in it, so fewer, larger commits save CPU per call.
            std::thread::sleep(LINGER);
        }
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        last_batch = batch.len();
        let ops: Vec<&WriteOp> = batch.iter().map(|j| &j.op).collect();
        let started = std::time::Instant::now();
        let written = write_batch(conn, &mut sql, &ops, &mut seqs);
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            slow_commits += 1;
            // Every call with a status in this batch waited this long. At most one line
            // per SLOW_COMMIT_LOG_EVERY: a slow disk must not turn into a log flood.
            if last_slow_log
                .is_none_or(|at: std::time::Instant| at.elapsed() >= SLOW_COMMIT_LOG_EVERY)
            {
                tracing::warn!(
                    ms = took.as_millis(),
                    writes = ops.len(),
                    slow_commits,
                    "slow database commit"
                );
                last_slow_log = Some(std::time::Instant::now());
                slow_commits = 0;
            }
        }
        match written {
            Ok(events) => {
                for (job, ev) in batch.drain(..).zip(events) {
                    job.answer(Ok(ev));
                }
            }
            Err(e) if batch.len() == 1 => {
                seqs.clear();
                if let Some(job) = batch.pop() {
                    job.answer(Err(e));
                }
            }
            Err(_) => {
                // One bad write must not fail its neighbours: retry each alone. The
                // rolled-back numbers are forgotten first.
                seqs.clear();
                for job in batch.drain(..) {
                    let result = write_batch(conn, &mut sql, &[&job.op], &mut seqs)
                        .map(|mut evs| evs.pop().flatten());
                    if result.is_err() {
                        seqs.clear();
                    }
                    job.answer(result);
                }
            }
        }
    }
}

/// The last event sequence written per live call.
#[derive(Default)]
struct Sequences(std::collections::HashMap<String, i64>);

impl Sequences {
    fn clear(&mut self) {
        self.0.clear();
    }

    /// The next sequence for `call`, asking the table only for a call not seen yet.
    fn next(&mut self, tx: &rusqlite::Transaction<'_>, call: &CallRecord) -> StoreResult<i64> {
        let last = match self.0.get(&call.id) {
            Some(&last) => last,
            None => tx
                .prepare_cached(
                    "SELECT COALESCE(MAX(sequence), 0) FROM call_events WHERE call_id = ?1",
                )
                .and_then(|mut s| s.query_row([&call.id], |row| row.get(0)))
                .map_err(db_err)?,
        };
        let next = last + 1;
        self.remember(call, next);
        Ok(next)
    }

    /// A new call's first event: nothing to look up.
    fn first(&mut self, call: &CallRecord) -> i64 {
        self.remember(call, 1);
        1
    }

    fn remember(&mut self, call: &CallRecord, sequence: i64) {
        if call.status.is_terminal() {
            // Nothing but a redelivery (which keeps its number) follows a final status.
            self.0.remove(&call.id);
            return;
        }
        if self.0.len() >= MAX_SEQUENCES {
            self.0.clear();
        }
        self.0.insert(call.id.clone(), sequence);
    }
}

struct Statements<'c> {
    insert: rusqlite::Statement<'c>,
    update: rusqlite::Statement<'c>,
    event: rusqlite::Statement<'c>,
}

fn write_batch(
    conn: &Connection,
    sql: &mut Statements<'_>,
    ops: &[&WriteOp],
    seqs: &mut Sequences,
) -> StoreResult<Vec<Option<CallEvent>>> {
    // Unchecked: the statements borrow the connection too. This thread is its only user,
    // and the transaction rolls back on drop unless committed.
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(db_err)?;
    // A status update whose call is updated again later in this batch only needs its
    // event: the later row write carries the newer state.
    let mut last_update = std::collections::HashMap::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        if let WriteOp::Update(call, _) = op {
            last_update.insert(call.id.as_str(), i);
        }
    }
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let ev = match op {
            WriteOp::Create(call, event) => {
                with_call_params(call, |params| sql.insert.execute(params))?;
                match event {
                    Some(event) => {
                        let sequence = seqs.first(call);
                        Some(insert_event(&mut sql.event, call, event, sequence)?)
                    }
                    None => None,
                }
            }
            WriteOp::Update(call, event) => {
                if last_update.get(call.id.as_str()) == Some(&i) {
                    let changed = with_call_params(call, |params| sql.update.execute(params))?;
                    if changed == 0 {
                        return Err(StoreError::CallNotFound(call.id.clone()));
                    }
                }
                match event {
                    Some(event) => {
                        let sequence = seqs.next(&tx, call)?;
                        Some(insert_event(&mut sql.event, call, event, sequence)?)
                    }
                    None => None,
                }
            }
        };
        out.push(ev);
    }
    tx.commit().map_err(db_err)?;
    Ok(out)
}

fn insert_event(
    statement: &mut rusqlite::Statement<'_>,
    call: &CallRecord,
    event: &NewEvent,
    sequence: i64,
) -> StoreResult<CallEvent> {
    let ev = build_event(call, event, sequence, now_ms())?;
    let state = super::sql::state_str(ev.state);
    let next_attempt = ev.next_attempt_at.timestamp_millis();
    let created = ev.created_at.timestamp_millis();
    let delivered = ev.delivered_at.map(|t| t.timestamp_millis());
    let params: [&dyn ToSql; 13] = [
        &ev.id,
        &ev.call_id,
        &ev.tenant,
        &ev.sequence,
        &ev.event_type,
        &ev.payload.as_str(),
        &ev.webhook_url,
        &state,
        &ev.attempts,
        &next_attempt,
        &ev.last_error,
        &created,
        &delivered,
    ];
    statement.execute(&params[..]).map_err(db_err)?;
    Ok(ev)
}

/// Runs `f` with the call's columns in `CALL_COLUMNS` order (as `bind_call` binds them for
/// sqlx), borrowed rather than copied into owned values.
fn with_call_params<R>(
    c: &CallRecord,
    f: impl FnOnce(&[&dyn ToSql]) -> rusqlite::Result<R>,
) -> StoreResult<R> {
    let metadata = serde_json::to_string(&c.metadata)
        .map_err(|e| StoreError::Corrupt(format!("metadata of {}: {e}", c.id)))?;
    let status = c.status.as_str();
    let record = i64::from(c.record);
    let sip_code = c.sip_code.map(i64::from);
    let q850 = c.q850_cause.map(i64::from);
    let created = c.created_at.timestamp_millis();
    let answered = c.answered_at.map(|t| t.timestamp_millis());
    let ended = c.ended_at.map(|t| t.timestamp_millis());
    let params: [&dyn ToSql; 30] = [
        &c.id,
        &c.tenant,
        &c.direction,
        &c.to,
        &c.from,
        &c.agent_id,
        &status,
        &record,
        &c.recording_url,
        &c.webhook_url,
        &c.max_duration,
        &c.ring_timeout,
        &metadata,
        &c.trunk,
        &c.sip_call_id,
        &sip_code,
        &c.sip_reason,
        &q850,
        &c.end_reason,
        &c.rtp_packets_received,
        &c.rtp_bytes_received,
        &created,
        &answered,
        &ended,
        &c.duration_seconds,
        &c.sip_dialog,
        &c.rtp_packets_lost,
        &c.rtp_jitter_ms,
        &c.mos,
        &c.proxy_session_id,
    ];
    f(&params).map_err(db_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_paths_from_urls() {
        assert_eq!(
            file_path("sqlite://a/b.db?mode=rwc").as_deref(),
            Some("a/b.db")
        );
        assert_eq!(file_path("sqlite:x.db").as_deref(), Some("x.db"));
        assert_eq!(
            file_path("sqlite:///tmp/x.db").as_deref(),
            Some("/tmp/x.db")
        );
        assert_eq!(file_path("sqlite::memory:"), None);
        assert_eq!(file_path("sqlite://x?mode=memory"), None);
    }
}
