//! The webhook deliverer against a real HTTP receiver (axum on 127.0.0.1:0) and a real SQLite
//! outbox; every request's signature is checked with the official `standardwebhooks` crate.

// Test helpers outside #[test] fns unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{TimeZone as _, Utc};
use serde_json::{Value, json};
use switchyard::model::{CallRecord, CallStatus, DeliveryState, NewEvent};
use switchyard::store::Store;
use switchyard::store::sql::SqlStore;
use switchyard::webhooks::{self, WebhookConfig, WebhookHandle};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const GUARD: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct Hit {
    call_id: String,
    sequence: i64,
    event_id: String,
    verified: bool,
    status: StatusCode,
}

type Respond = Box<dyn Fn(usize, i64) -> StatusCode + Send + Sync>;

struct Receiver {
    secret: String,
    count: AtomicUsize,
    respond: Respond,
    hits: mpsc::UnboundedSender<Hit>,
}

async fn hook(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let n = rx.count.fetch_add(1, Ordering::SeqCst) + 1;
    let verified = standardwebhooks::Webhook::new(&rx.secret)
        .unwrap()
        .verify(&body, &headers)
        .is_ok();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let header_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let json_ok = headers.get("content-type").map(|v| v.as_bytes()) == Some(b"application/json")
        && json["id"].as_str() == Some(header_id.as_str());
    let sequence = json["sequence"].as_i64().unwrap_or(-1);
    let status = if verified && json_ok {
        (rx.respond)(n, sequence)
    } else {
        StatusCode::BAD_REQUEST
    };
    let hit = Hit {
        call_id: json["data"]["call"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        sequence,
        event_id: header_id,
        verified: verified && json_ok,
        status,
    };
    rx.hits.send(hit).unwrap();
    status
}

/// Starts a receiver; returns its URL and the stream of requests it saw.
async fn receiver(
    secret: String,
    respond: impl Fn(usize, i64) -> StatusCode + Send + Sync + 'static,
) -> (String, mpsc::UnboundedReceiver<Hit>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = Arc::new(Receiver {
        secret,
        count: AtomicUsize::new(0),
        respond: Box::new(respond),
        hits: tx,
    });
    let app = Router::new().route("/hook", post(hook)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), rx)
}

fn fast_config() -> WebhookConfig {
    WebhookConfig {
        timeout: Duration::from_secs(5),
        retry_base: Duration::from_millis(50),
        retry_cap: Duration::from_secs(1),
        max_attempts: 12,
        // The receivers here listen on loopback, which only an allow-list opens.
        guard: switchyard::netguard::OutboundGuard::new(vec!["127.0.0.0/8".parse().unwrap()]),
        ..WebhookConfig::default()
    }
}

fn call(id: &str, webhook: &str) -> CallRecord {
    CallRecord {
        id: id.to_owned(),
        tenant: "acme".to_owned(),
        direction: "outbound".to_owned(),
        to: "+15551230001".to_owned(),
        from: "+15551230002".to_owned(),
        agent_id: None,
        status: CallStatus::Initiating,
        record: false,
        recording_url: None,
        webhook_url: Some(webhook.to_owned()),
        max_duration: 3600,
        ring_timeout: 30,
        metadata: json!({}),
        trunk: None,
        sip_call_id: None,
        sip_code: None,
        sip_reason: None,
        q850_cause: None,
        end_reason: None,
        rtp_packets_received: 0,
        rtp_bytes_received: 0,
        rtp_packets_lost: 0,
        rtp_jitter_ms: None,
        mos: None,
        created_at: Utc.timestamp_millis_opt(1_750_000_000_000).unwrap(),
        answered_at: None,
        ended_at: None,
        duration_seconds: None,
        sip_dialog: None,
        proxy_session_id: None,
    }
}

/// The store takes the call shared, as a call task holds it.
fn shared(c: &CallRecord) -> Arc<CallRecord> {
    Arc::new(c.clone())
}

fn ev(event_type: &str) -> NewEvent {
    NewEvent {
        event_type: event_type.to_owned(),
        extra: json!({}),
    }
}

/// initiating, ringing, in_progress: sequences 1, 2, 3.
async fn three_events(store: &SqlStore, id: &str, url: &str) {
    let mut c = call(id, url);
    store
        .create_call(&shared(&c), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    c.status = CallStatus::Ringing;
    store
        .update_call(&shared(&c), Some(&ev("call.ringing")))
        .await
        .unwrap();
    c.status = CallStatus::InProgress;
    store
        .update_call(&shared(&c), Some(&ev("call.in_progress")))
        .await
        .unwrap();
}

async fn sqlite_store(dir: &tempfile::TempDir) -> SqlStore {
    let url = format!("sqlite://{}", dir.path().join("hooks.db").display());
    SqlStore::connect(&url).await.unwrap()
}

fn start(store: &SqlStore, config: WebhookConfig) -> (WebhookHandle, CancellationToken) {
    let shutdown = CancellationToken::new();
    let handle = webhooks::spawn(Arc::new(store.clone()), config, shutdown.clone()).unwrap();
    handle.notify();
    (handle, shutdown)
}

async fn next_hit(hits: &mut mpsc::UnboundedReceiver<Hit>) -> Hit {
    timeout(GUARD, hits.recv()).await.unwrap().unwrap()
}

async fn stop(handle: WebhookHandle, shutdown: CancellationToken) {
    shutdown.cancel();
    timeout(GUARD, handle.join()).await.unwrap();
}

#[tokio::test]
async fn retries_then_delivers_in_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let secret = store.webhook_secret("acme").await.unwrap();
    // The first two requests fail, everything after succeeds.
    let (url, mut hits) = receiver(secret, |n, _| {
        if n <= 2 {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::NO_CONTENT
        }
    })
    .await;
    three_events(&store, "call_1", &url).await;

    let (handle, shutdown) = start(&store, fast_config());
    let mut seen = Vec::new();
    for _ in 0..5 {
        let hit = next_hit(&mut hits).await;
        assert!(hit.verified, "signature or headers rejected: {hit:?}");
        assert_eq!(hit.call_id, "call_1");
        seen.push((hit.sequence, hit.status.as_u16()));
    }
    assert_eq!(seen, [(1, 500), (1, 500), (1, 204), (2, 204), (3, 204)]);
    stop(handle, shutdown).await;

    let events = store.list_events("acme", "call_1").await.unwrap();
    let rows: Vec<_> = events
        .iter()
        .map(|e| (e.sequence, e.state, e.attempts))
        .collect();
    assert_eq!(
        rows,
        [
            (1, DeliveryState::Delivered, 3),
            (2, DeliveryState::Delivered, 1),
            (3, DeliveryState::Delivered, 1),
        ]
    );
    assert_eq!(events[0].last_error.as_deref(), Some("HTTP 500"));
    assert!(events.iter().all(|e| e.delivered_at.is_some()));

    // A fresh deliverer on the same outbox sends the new call's event and nothing old:
    // the old events would have been claimed no later than the sentinel (oldest first).
    let mut sentinel = call("call_2", &url);
    sentinel.created_at = Utc::now();
    store
        .create_call(&shared(&sentinel), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    let (handle, shutdown) = start(&store, fast_config());
    let hit = next_hit(&mut hits).await;
    assert_eq!((hit.call_id.as_str(), hit.sequence), ("call_2", 1));
    stop(handle, shutdown).await;
    assert!(hits.try_recv().is_err(), "unexpected extra delivery");
}

#[tokio::test]
async fn survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let secret = store.webhook_secret("acme").await.unwrap();
    let (url, mut hits) = receiver(secret, |_, _| StatusCode::OK).await;
    three_events(&store, "call_r", &url).await;

    // The first process stops before it delivers anything.
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let first = webhooks::spawn(Arc::new(store.clone()), fast_config(), shutdown).unwrap();
    timeout(GUARD, first.join()).await.unwrap();
    assert!(hits.try_recv().is_err());
    let pending = store.list_events("acme", "call_r").await.unwrap();
    assert!(pending.iter().all(|e| e.state == DeliveryState::Pending));
    store.close().await;

    // A new process on the same file finds the outbox and delivers it, in order.
    let store = sqlite_store(&dir).await;
    let (handle, shutdown) = start(&store, fast_config());
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let hit = next_hit(&mut hits).await;
        assert!(hit.verified);
        seqs.push(hit.sequence);
    }
    assert_eq!(seqs, [1, 2, 3]);
    stop(handle, shutdown).await;
    let events = store.list_events("acme", "call_r").await.unwrap();
    assert!(events.iter().all(|e| e.state == DeliveryState::Delivered));
}

#[tokio::test]
async fn a_claim_by_a_crashed_node_expires_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir)
        .await
        .with_claim_lease(Duration::from_millis(200));
    let secret = store.webhook_secret("acme").await.unwrap();
    let (url, mut hits) = receiver(secret, |_, _| StatusCode::OK).await;
    store
        .create_call(&shared(&call("call_c", &url)), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    // Another node claimed the event and died without recording an outcome.
    let claimed = store.due_events(Utc::now(), 10).await.unwrap();
    assert_eq!(claimed.len(), 1);

    let (handle, shutdown) = start(&store, fast_config());
    let hit = next_hit(&mut hits).await;
    assert_eq!(hit.event_id, claimed[0].id);
    stop(handle, shutdown).await;
    let events = store.list_events("acme", "call_c").await.unwrap();
    assert_eq!(events[0].state, DeliveryState::Delivered);
}

#[tokio::test]
async fn gives_up_after_max_attempts_and_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let secret = store.webhook_secret("acme").await.unwrap();
    // Event 1 is always refused; the rest are accepted.
    let (url, mut hits) = receiver(secret, |_, seq| {
        if seq == 1 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::NO_CONTENT
        }
    })
    .await;
    three_events(&store, "call_f", &url).await;

    let config = WebhookConfig {
        max_attempts: 3,
        ..fast_config()
    };
    let (handle, shutdown) = start(&store, config);
    let mut seqs = Vec::new();
    for _ in 0..5 {
        seqs.push(next_hit(&mut hits).await.sequence);
    }
    assert_eq!(seqs, [1, 1, 1, 2, 3]);
    stop(handle, shutdown).await;

    let events = store.list_events("acme", "call_f").await.unwrap();
    assert_eq!(
        (events[0].state, events[0].attempts),
        (DeliveryState::Failed, 3)
    );
    assert_eq!(events[0].last_error.as_deref(), Some("HTTP 503"));
    assert_eq!(events[1].state, DeliveryState::Delivered);
    assert_eq!(events[2].state, DeliveryState::Delivered);
}

#[tokio::test]
async fn unreachable_endpoint_counts_as_a_failed_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(&dir).await;
    let secret = store.webhook_secret("acme").await.unwrap();
    let (live_url, mut hits) = receiver(secret, |_, _| StatusCode::NO_CONTENT).await;
    // Bind then drop: nothing listens on this port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Event 1 goes to the dead URL; the call then changes its webhook_url for event 2.
    let mut c = call("call_u", &format!("http://127.0.0.1:{port}/hook"));
    store
        .create_call(&shared(&c), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    c.webhook_url = Some(live_url);
    c.status = CallStatus::Ringing;
    store
        .update_call(&shared(&c), Some(&ev("call.ringing")))
        .await
        .unwrap();

    let config = WebhookConfig {
        max_attempts: 2,
        ..fast_config()
    };
    let (handle, shutdown) = start(&store, config);
    // Event 2 only goes out once event 1 was given up on.
    let hit = next_hit(&mut hits).await;
    assert_eq!((hit.call_id.as_str(), hit.sequence), ("call_u", 2));
    stop(handle, shutdown).await;
    let events = store.list_events("acme", "call_u").await.unwrap();
    assert_eq!(
        (events[0].state, events[0].attempts),
        (DeliveryState::Failed, 2)
    );
    let error = events[0].last_error.clone().unwrap();
    assert!(error.starts_with("connect"), "{error}");
    assert_eq!(events[1].state, DeliveryState::Delivered);
}
