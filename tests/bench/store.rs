//! Status writes per second through the SQLite store, and their CPU: each call is created
//! and then moved through ringing, in progress and completed, four writes with an event
//! each, the same sequence a transit call makes. Calls run concurrently (as the switch's
//! call tasks do), so the writer sees batches the way it does under load.
//!
//! ```text
//! cargo bench --bench store                       # 20,000 calls, 400 at a time
//! STORE_CALLS=50000 STORE_CONCURRENCY=1000 STORE_ROUNDS=3 cargo bench --bench store
//! ```
//!
//! Reported per round: calls/s and CPU µs per call, the writer thread's and the whole
//! process's (`/proc/self/task/*/stat`), and the file's bytes per call.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use serde_json::json;
use switchyard::model::{CallRecord, CallStatus, NewEvent};
use switchyard::store::Store;
use switchyard::store::sql::SqlStore;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU ticks (utime + stime) of this process's threads, all and those named `name`.
fn thread_ticks(name: &str) -> (u64, u64) {
    let (mut all, mut named) = (0, 0);
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for task in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The name sits in parentheses and may hold spaces: fields follow the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0);
        all += ticks;
        if &stat[open + 1..close] == name {
            named += ticks;
        }
    }
    (all, named)
}

fn new_call(i: usize) -> CallRecord {
    CallRecord {
        id: format!("call_{}", ulid::Ulid::new().to_string().to_lowercase()),
        tenant: "default".to_owned(),
        direction: "inbound".to_owned(),
        to: "+12025550100".to_owned(),
        from: "+12025551234".to_owned(),
        agent_id: None,
        status: CallStatus::Initiating,
        record: false,
        recording_url: None,
        webhook_url: None,
        max_duration: 3600,
        ring_timeout: 60,
        metadata: json!({"route": "transit", "rule": "transit", "source_trunk": "uac"}),
        trunk: Some("far".to_owned()),
        sip_call_id: Some(format!("{i}-4242@127.0.0.1")),
        sip_code: None,
        sip_reason: None,
        q850_cause: None,
        end_reason: None,
        rtp_packets_received: 0,
        rtp_bytes_received: 0,
        rtp_packets_lost: 0,
        rtp_jitter_ms: None,
        mos: None,
        created_at: Utc::now(),
        answered_at: None,
        ended_at: None,
        duration_seconds: None,
        sip_dialog: None,
        proxy_session_id: None,
    }
}

fn event(event_type: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        extra: json!({}),
    }
}

async fn one_call(store: Arc<SqlStore>, i: usize) {
    let mut call = Arc::new(new_call(i));
    store
        .create_call(&call, &event("call.initiating"))
        .await
        .expect("create");
    let steps = [
        (CallStatus::Ringing, "call.ringing"),
        (CallStatus::InProgress, "call.in_progress"),
        (CallStatus::Completed, "call.completed"),
    ];
    for (status, event_type) in steps {
        let c = Arc::make_mut(&mut call);
        c.status = status;
        match status {
            CallStatus::Ringing => c.sip_code = Some(180),
            CallStatus::InProgress => {
                c.sip_code = Some(200);
                c.answered_at = Some(Utc::now());
            }
            _ => {
                c.ended_at = Some(Utc::now());
                c.duration_seconds = Some(0);
                c.end_reason = Some("caller_bye".to_owned());
            }
        }
        store
            .update_call(&call, Some(&event(event_type)))
            .await
            .expect("update");
    }
}

fn main() {
    let calls = env_usize("STORE_CALLS", 20_000);
    let concurrency = env_usize("STORE_CONCURRENCY", 400).max(1);
    let rounds = env_usize("STORE_ROUNDS", 3).max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // SAFETY-free and portable enough: clock ticks are 100/s on Linux.
    let tick_us = 1_000_000.0 / 100.0;
    println!("store bench: {calls} calls of 4 writes per round, {concurrency} at a time");
    for round in 1..=rounds {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("switchyard.db");
        let url = format!("sqlite://{}", path.display());
        rt.block_on(async {
            let store = Arc::new(SqlStore::connect(&url).await.expect("connect"));
            let (all0, writer0) = thread_ticks("sqlite-writer");
            let started = Instant::now();
            let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..calls {
                let permit = sem.clone().acquire_owned().await.expect("semaphore");
                let store = store.clone();
                tasks.spawn(async move {
                    one_call(store, i).await;
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
            let took = started.elapsed().as_secs_f64();
            let (all1, writer1) = thread_ticks("sqlite-writer");
            let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
                + std::fs::metadata(dir.path().join("switchyard.db-wal"))
                    .map(|m| m.len())
                    .unwrap_or(0);
            let n = calls as f64;
            println!(
                "round {round}: {:>7.0} calls/s  writer {:>5.1} us/call  process {:>5.1} us/call  {:>5.0} bytes/call on disk",
                n / took,
                (writer1 - writer0) as f64 * tick_us / n,
                (all1 - all0) as f64 * tick_us / n,
                bytes as f64 / n,
            );
        });
    }
}
