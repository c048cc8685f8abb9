//! `SqlStore` against real databases: every scenario runs on SQLite (temp dir) and on
//! PostgreSQL (a fresh schema per test in `SWITCHYARD_TEST_PG_URL`, default
//! postgres://postgres@127.0.0.1:5432/test).

// Test helpers outside #[test] fns unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, TimeZone as _, Utc};
use serde_json::json;
use switchyard::model::{CallRecord, CallStatus, DeliveryState, NewEvent, Role};
use switchyard::store::sql::SqlStore;
use switchyard::store::{Store, StoreError};
use tempfile::TempDir;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

struct Db {
    store: SqlStore,
    _dir: Option<TempDir>,
    pg: Option<(sqlx::PgPool, String)>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("switchyard.db").display());
        Db {
            store: SqlStore::connect(&url).await.unwrap(),
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres() -> Db {
        let base = std::env::var("SWITCHYARD_TEST_PG_URL").unwrap_or(DEFAULT_PG_URL.to_owned());
        let schema = format!("sy_test_{}", ulid::Ulid::new().to_string().to_lowercase());
        let admin = sqlx::PgPool::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Db {
            store: SqlStore::connect(&url).await.unwrap(),
            _dir: None,
            pg: Some((admin, schema)),
        }
    }

    /// The same database through a store that leaves out events nobody is sent.
    fn without_unsent_events(self) -> Db {
        Db {
            store: self.store.with_unsent_events(false),
            _dir: self._dir,
            pg: self.pg,
        }
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some((admin, schema)) = self.pg {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
        }
    }
}

/// Each scenario becomes `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::Db::sqlite().await;
                super::$name(&db.store).await;
                db.finish().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = super::Db::postgres().await;
                super::$name(&db.store).await;
                db.finish().await;
            }
        }
    )*};
}

on_both!(
    create_get_update_with_events,
    tenant_isolation,
    pagination_three_pages,
    due_events_in_order_per_call,
    redeliver,
    api_keys,
    webhook_secret_rotation,
    live_calls_are_the_non_terminal_ones,
    concurrent_updates_get_distinct_sequences,
    a_bad_write_in_a_batch_fails_alone,
    the_last_of_several_queued_updates_wins,
    both_dialogs_and_live_counters_ride_on_the_call_row,
    proxy_sessions_expire_and_free_pairings,
    proxy_lookup_and_interactions,
);

mod unsent_events_left_out {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        let db = super::Db::sqlite().await.without_unsent_events();
        super::unsent_events_left_out(&db.store).await;
        db.finish().await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        let db = super::Db::postgres().await.without_unsent_events();
        super::unsent_events_left_out(&db.store).await;
        db.finish().await;
    }
}

/// `with_unsent_events(false)`: a call without webhook_url writes its row and every status
/// change to it, but no event; a call with one keeps all of its events.
async fn unsent_events_left_out(s: &SqlStore) {
    let mut quiet = call("acme", "call_quiet", T0, None);
    assert_eq!(
        s.create_call(&shared(&quiet), &ev("call.initiating"))
            .await
            .unwrap(),
        None
    );
    quiet.status = CallStatus::Ringing;
    assert_eq!(
        s.update_call(&shared(&quiet), Some(&ev("call.ringing")))
            .await
            .unwrap(),
        None
    );
    quiet.status = CallStatus::Completed;
    quiet.sip_code = Some(200);
    s.update_call(&shared(&quiet), Some(&ev("call.completed")))
        .await
        .unwrap();
    assert_eq!(
        s.get_call("acme", "call_quiet").await.unwrap(),
        Some(quiet.clone())
    );
    assert!(
        s.list_events("acme", "call_quiet")
            .await
            .unwrap()
            .is_empty()
    );
    // An update of a call that is not there still fails, event or not.
    let ghost = call("acme", "call_ghost", T0, None);
    assert!(matches!(
        s.update_call(&shared(&ghost), Some(&ev("call.ringing")))
            .await,
        Err(StoreError::CallNotFound(_))
    ));

    let mut hooked = call("acme", "call_hooked", T0, HOOK);
    let first = s
        .create_call(&shared(&hooked), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.state, DeliveryState::Pending);
    hooked.status = CallStatus::Ringing;
    let second = s
        .update_call(&shared(&hooked), Some(&ev("call.ringing")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.sequence, 2);
    assert_eq!(
        s.list_events("acme", "call_hooked").await.unwrap(),
        vec![first, second]
    );
}

fn at_ms(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).unwrap()
}

fn call(tenant: &str, id: &str, created_ms: i64, webhook: Option<&str>) -> CallRecord {
    CallRecord {
        id: id.to_owned(),
        tenant: tenant.to_owned(),
        direction: "outbound".to_owned(),
        to: "+15551230001".to_owned(),
        from: "+15551230002".to_owned(),
        agent_id: None,
        status: CallStatus::Initiating,
        record: true,
        recording_url: None,
        webhook_url: webhook.map(str::to_owned),
        max_duration: 3600,
        ring_timeout: 30,
        metadata: json!({"order": 42, "tags": ["a", "b"]}),
        trunk: Some("carrier-a".to_owned()),
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
        created_at: at_ms(created_ms),
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

const T0: i64 = 1_750_000_000_000;
const HOOK: Option<&str> = Some("http://127.0.0.1:9/hook");

async fn create_get_update_with_events(s: &SqlStore) {
    let mut c = call("acme", "call_1", T0, HOOK);
    let e1 = s
        .create_call(&shared(&c), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e1.sequence, 1);
    assert!(e1.id.starts_with("evt_"));
    assert_eq!(e1.state, DeliveryState::Pending);
    assert_eq!(e1.payload.value()["id"], json!(e1.id));
    assert_eq!(e1.payload.value()["type"], json!("call.initiating"));
    assert_eq!(e1.payload.value()["sequence"], json!(1));
    assert_eq!(e1.payload.value()["data"]["call"]["id"], json!("call_1"));
    assert_eq!(
        e1.payload.value()["data"]["call"]["status"],
        json!("initiating")
    );
    assert!(
        e1.payload.value()["created_at"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(s.get_call("acme", "call_1").await.unwrap(), Some(c.clone()));

    c.status = CallStatus::Ringing;
    c.sip_call_id = Some("abc@host".to_owned());
    let e2 = s
        .update_call(&shared(&c), Some(&ev("call.ringing")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e2.sequence, 2);

    // A plain update writes the row and no event.
    c.rtp_packets_received = 1000;
    c.rtp_bytes_received = 172_000;
    assert_eq!(s.update_call(&shared(&c), None).await.unwrap(), None);

    c.status = CallStatus::Busy;
    c.sip_code = Some(486);
    c.sip_reason = Some("Busy Here".to_owned());
    c.q850_cause = Some(17);
    c.end_reason = Some("remote_busy".to_owned());
    c.ended_at = Some(at_ms(T0 + 5_000));
    c.duration_seconds = Some(0);
    let terminal = NewEvent {
        event_type: "call.busy".to_owned(),
        extra: json!({"sip_code": 486, "sip_reason": "Busy Here", "q850_cause": 17}),
    };
    let e3 = s
        .update_call(&shared(&c), Some(&terminal))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e3.sequence, 3);
    assert_eq!(e3.payload.value()["data"]["sip_code"], json!(486));
    assert_eq!(e3.payload.value()["data"]["q850_cause"], json!(17));
    assert_eq!(e3.payload.value()["data"]["call"]["status"], json!("busy"));
    assert_eq!(
        e3.payload.value()["data"]["call"]["rtp_packets_received"],
        json!(1000)
    );

    assert_eq!(s.get_call("acme", "call_1").await.unwrap(), Some(c.clone()));
    let events = s.list_events("acme", "call_1").await.unwrap();
    assert_eq!(events, vec![e1, e2, e3]);

    // No webhook_url: the event is recorded but never queued.
    let quiet = call("acme", "call_2", T0, None);
    let q1 = s
        .create_call(&shared(&quiet), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q1.state, DeliveryState::NoEndpoint);
    assert_eq!(q1.webhook_url, None);

    let ghost = call("acme", "call_missing", T0, None);
    assert!(matches!(
        s.update_call(&shared(&ghost), Some(&ev("call.ringing")))
            .await,
        Err(StoreError::CallNotFound(_))
    ));
    // The failed update left no orphan event behind.
    assert!(
        s.list_events("acme", "call_missing")
            .await
            .unwrap()
            .is_empty()
    );
    // A duplicate id is refused and leaves the original untouched.
    assert!(
        s.create_call(&shared(&quiet), &ev("call.initiating"))
            .await
            .is_err()
    );
    assert_eq!(s.list_events("acme", "call_2").await.unwrap().len(), 1);
}

async fn tenant_isolation(s: &SqlStore) {
    let c = call("acme", "call_a", T0, HOOK);
    let e = s
        .create_call(&shared(&c), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    s.create_call(
        &shared(&call("globex", "call_g", T0, HOOK)),
        &ev("call.initiating"),
    )
    .await
    .unwrap()
    .unwrap();

    assert_eq!(s.get_call("globex", "call_a").await.unwrap(), None);
    assert!(s.list_events("globex", "call_a").await.unwrap().is_empty());
    assert_eq!(
        s.redeliver_event("globex", "call_a", &e.id, Utc::now())
            .await
            .unwrap(),
        None
    );
    let page = s.list_calls("globex", 10, None).await.unwrap();
    assert_eq!(page.total, 1);
    let ids: Vec<_> = page.calls.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["call_g"]);
    // The other tenant's update with a forged tenant does not touch the row.
    let mut forged = c.clone();
    forged.tenant = "globex".to_owned();
    forged.status = CallStatus::Completed;
    assert!(s.update_call(&shared(&forged), None).await.is_err());
    assert_eq!(
        s.get_call("acme", "call_a").await.unwrap().unwrap().status,
        CallStatus::Initiating
    );
}

async fn pagination_three_pages(s: &SqlStore) {
    // 7 calls; three share a timestamp so the id tie-break matters.
    let stamps = [T0, T0 + 1, T0 + 2, T0 + 2, T0 + 2, T0 + 3, T0 + 4];
    for (i, ms) in stamps.iter().enumerate() {
        let c = call("acme", &format!("call_{i}"), *ms, None);
        s.create_call(&shared(&c), &ev("call.initiating"))
            .await
            .unwrap()
            .unwrap();
    }
    s.create_call(
        &shared(&call("other", "call_x", T0 + 9, None)),
        &ev("call.initiating"),
    )
    .await
    .unwrap()
    .unwrap();

    let p1 = s.list_calls("acme", 3, None).await.unwrap();
    assert_eq!((p1.calls.len(), p1.total, p1.has_more), (3, 7, true));
    let p2 = s
        .list_calls("acme", 3, p1.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!((p2.calls.len(), p2.total, p2.has_more), (3, 7, true));
    let p3 = s
        .list_calls("acme", 3, p2.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!((p3.calls.len(), p3.total, p3.has_more), (1, 7, false));
    assert_eq!(p3.next_cursor, None);

    let ids: Vec<String> = [p1.calls, p2.calls, p3.calls]
        .concat()
        .into_iter()
        .map(|c| c.id)
        .collect();
    // Newest first by (created_at, id).
    assert_eq!(
        ids,
        [
            "call_6", "call_5", "call_4", "call_3", "call_2", "call_1", "call_0"
        ]
    );

    // Exact page boundaries: 7 of 7 has no more, 6 of 7 has.
    let all = s.list_calls("acme", 7, None).await.unwrap();
    assert_eq!((all.calls.len(), all.has_more), (7, false));
    assert_eq!(all.next_cursor, None);
    let six = s.list_calls("acme", 6, None).await.unwrap();
    assert!(six.has_more);
    let last = s
        .list_calls("acme", 6, six.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(last.calls.len(), 1);
    assert!(!last.has_more);

    assert!(matches!(
        s.list_calls("acme", 3, Some("!!garbage")).await,
        Err(StoreError::InvalidCursor)
    ));
    let empty = s.list_calls("nobody", 3, None).await.unwrap();
    assert_eq!(
        (empty.calls.len(), empty.total, empty.has_more),
        (0, 0, false)
    );
}

async fn due_events_in_order_per_call(s: &SqlStore) {
    let mut x = call("acme", "call_x", T0, HOOK);
    let x1 = s
        .create_call(&shared(&x), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    x.status = CallStatus::Ringing;
    let x2 = s
        .update_call(&shared(&x), Some(&ev("call.ringing")))
        .await
        .unwrap();
    let x2 = x2.unwrap();
    x.status = CallStatus::InProgress;
    let x3 = s
        .update_call(&shared(&x), Some(&ev("call.in_progress")))
        .await
        .unwrap();
    let x3 = x3.unwrap();
    let y = call("acme", "call_y", T0, HOOK);
    let y1 = s
        .create_call(&shared(&y), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    s.create_call(
        &shared(&call("acme", "call_q", T0, None)),
        &ev("call.initiating"),
    )
    .await
    .unwrap()
    .unwrap();

    let now = x1.created_at.max(y1.created_at) + chrono::Duration::milliseconds(1);
    // Only the head of each call; the no-endpoint event never appears.
    let due = s.due_events(now, 10).await.unwrap();
    let ids: HashSet<&str> = due.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, HashSet::from([x1.id.as_str(), y1.id.as_str()]));

    // Claimed: invisible until the lease runs out.
    assert!(s.due_events(now, 10).await.unwrap().is_empty());
    let lease_end = s.next_due_at().await.unwrap().unwrap();
    assert!(lease_end > now + chrono::Duration::seconds(30));

    s.mark_delivered(&y1.id, now).await.unwrap();
    let retry_at = now + chrono::Duration::hours(1);
    s.mark_attempt_failed(&x1.id, 1, retry_at, "HTTP 500")
        .await
        .unwrap();
    // x2 is older than retry_at but blocked behind x1, also for the sleep computation.
    assert_eq!(s.next_due_at().await.unwrap(), Some(retry_at));
    let later = now + chrono::Duration::minutes(30);
    assert!(s.due_events(later, 10).await.unwrap().is_empty());

    let after = retry_at + chrono::Duration::seconds(1);
    let due = s.due_events(after, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!((due[0].id.as_str(), due[0].attempts), (x1.id.as_str(), 1));
    assert_eq!(due[0].last_error.as_deref(), Some("HTTP 500"));
    s.mark_delivered(&x1.id, after).await.unwrap();

    let due = s.due_events(after, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [x2.id.as_str()]);
    // Giving up on x2 unblocks x3.
    s.mark_abandoned(&x2.id, 12, "HTTP 410").await.unwrap();
    let due = s.due_events(after, 10).await.unwrap();
    let ids: Vec<&str> = due.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, [x3.id.as_str()]);

    let events = s.list_events("acme", "call_x").await.unwrap();
    let states: Vec<_> = events.iter().map(|e| (e.state, e.attempts)).collect();
    assert_eq!(
        states,
        [
            (DeliveryState::Delivered, 2),
            (DeliveryState::Failed, 12),
            (DeliveryState::Pending, 0),
        ]
    );
    assert_eq!(events[0].delivered_at, Some(after));
    // The limit is honoured.
    let mut z = call("acme", "call_z", T0, HOOK);
    s.create_call(&shared(&z), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    z.status = CallStatus::Ringing;
    s.update_call(&shared(&z), Some(&ev("call.ringing")))
        .await
        .unwrap();
    let far = after + chrono::Duration::hours(1);
    assert_eq!(s.due_events(far, 1).await.unwrap().len(), 1);
}

async fn redeliver(s: &SqlStore) {
    let c = call("acme", "call_r", T0, HOOK);
    let e = s
        .create_call(&shared(&c), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    let now = e.created_at + chrono::Duration::seconds(1);
    assert_eq!(s.due_events(now, 10).await.unwrap().len(), 1);
    s.mark_abandoned(&e.id, 12, "HTTP 503").await.unwrap();
    assert!(
        s.due_events(now + chrono::Duration::hours(2), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let again = s
        .redeliver_event("acme", "call_r", &e.id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.state, DeliveryState::Pending);
    assert_eq!((again.attempts, again.last_error.clone()), (0, None));
    assert_eq!(again.next_attempt_at, now);
    assert_eq!(again.payload, e.payload);
    let due = s.due_events(now, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, e.id);

    assert_eq!(
        s.redeliver_event("acme", "call_r", "evt_nope", now)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.redeliver_event("acme", "call_other", &e.id, now)
            .await
            .unwrap(),
        None
    );
    // Nowhere to send: stays no_endpoint.
    let q = s
        .create_call(
            &shared(&call("acme", "call_q", T0, None)),
            &ev("call.initiating"),
        )
        .await
        .unwrap()
        .unwrap();
    let q = s
        .redeliver_event("acme", "call_q", &q.id, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(q.state, DeliveryState::NoEndpoint);
}

async fn api_keys(s: &SqlStore) {
    let k = s.create_api_key("acme", Role::Admin, "ab12").await.unwrap();
    assert!(k.id.starts_with("key_"));
    assert_eq!((k.tenant.as_str(), k.role), ("acme", Role::Admin));
    let m = s
        .create_api_key("acme", Role::Member, "cd34")
        .await
        .unwrap();
    assert_ne!(k.id, m.id);
    assert_eq!(s.find_api_key("ab12").await.unwrap(), Some(k));
    assert_eq!(s.find_api_key("cd34").await.unwrap(), Some(m));
    assert_eq!(s.find_api_key("ffff").await.unwrap(), None);
    assert!(
        s.create_api_key("globex", Role::Owner, "ab12")
            .await
            .is_err()
    );
}

async fn webhook_secret_rotation(s: &SqlStore) {
    let a = s.webhook_secret("acme").await.unwrap();
    assert!(a.starts_with("whsec_"));
    assert_eq!(s.webhook_secret("acme").await.unwrap(), a);
    let g = s.webhook_secret("globex").await.unwrap();
    assert_ne!(a, g);
    // The official library accepts our secrets.
    assert!(standardwebhooks::Webhook::new(&a).is_ok());

    let rotated = s.rotate_webhook_secret("acme").await.unwrap();
    assert_ne!(rotated, a);
    assert_eq!(s.webhook_secret("acme").await.unwrap(), rotated);
    assert_eq!(s.webhook_secret("globex").await.unwrap(), g);
    // Rotating a tenant that never had one creates it.
    let fresh = s.rotate_webhook_secret("initech").await.unwrap();
    assert_eq!(s.webhook_secret("initech").await.unwrap(), fresh);
}

async fn live_calls_are_the_non_terminal_ones(s: &SqlStore) {
    let statuses = [
        CallStatus::Initiating,
        CallStatus::Ringing,
        CallStatus::InProgress,
        CallStatus::Completed,
        CallStatus::Busy,
        CallStatus::NoAnswer,
        CallStatus::Cancelled,
        CallStatus::Failed,
    ];
    for (i, status) in statuses.iter().enumerate() {
        let mut c = call("acme", &format!("call_{i}"), T0 + i as i64, None);
        c.status = *status;
        s.create_call(&shared(&c), &ev("call.initiating"))
            .await
            .unwrap()
            .unwrap();
    }
    let live: Vec<CallStatus> = s
        .live_calls()
        .await
        .unwrap()
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(
        live,
        [
            CallStatus::Initiating,
            CallStatus::Ringing,
            CallStatus::InProgress
        ]
    );
}

/// A transit call's two dialogs (a JSON array in `sip_dialog`) are stored with its
/// `in_progress` write and returned by `live_calls` for the close-out after a crash; a row
/// write without an event (live media counters) keeps them and adds no event; the terminal
/// write clears them.
async fn both_dialogs_and_live_counters_ride_on_the_call_row(s: &SqlStore) {
    let mut c = call("acme", "call_t", T0, HOOK);
    s.create_call(&shared(&c), &ev("call.initiating"))
        .await
        .unwrap();
    let dialogs = r#"[{"call_id":"a@x","local_tag":"1"},{"call_id":"b@y","local_tag":"2"}]"#;
    c.status = CallStatus::InProgress;
    c.sip_dialog = Some(dialogs.to_owned());
    s.update_call(&shared(&c), Some(&ev("call.in_progress")))
        .await
        .unwrap();
    c.metadata["media"] = json!({"caller": {"packets_received": 42}});
    assert_eq!(s.update_call(&shared(&c), None).await.unwrap(), None);
    let live = s.live_calls().await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].sip_dialog.as_deref(), Some(dialogs));
    assert_eq!(live[0].metadata["media"]["caller"]["packets_received"], 42);
    assert_eq!(s.list_events("acme", "call_t").await.unwrap().len(), 2);
    c.status = CallStatus::Completed;
    c.sip_dialog = None;
    s.update_call(&shared(&c), Some(&ev("call.completed")))
        .await
        .unwrap();
    assert!(s.live_calls().await.unwrap().is_empty());
    let stored = s.get_call("acme", "call_t").await.unwrap().unwrap();
    assert_eq!(stored.sip_dialog, None);
}

/// Updates queued back to back (often one write batch, where only the last row write of a
/// call is carried out): the row ends in the last state sent, every event is kept.
async fn the_last_of_several_queued_updates_wins(s: &SqlStore) {
    for round in 0..20 {
        let id = format!("call_q{round}");
        let c = call("acme", &id, T0, HOOK);
        s.create_call(&shared(&c), &ev("call.initiating"))
            .await
            .unwrap()
            .unwrap();
        let mut ringing = c.clone();
        ringing.status = CallStatus::Ringing;
        let mut answered = c.clone();
        answered.status = CallStatus::InProgress;
        answered.rtp_packets_received = 7;
        let (ev_ringing, ev_answered) = (ev("call.ringing"), ev("call.in_progress"));
        let (ringing, answered) = (shared(&ringing), shared(&answered));
        // join! polls in order, so the writes are queued ringing first.
        let (r1, r2) = tokio::join!(
            s.update_call(&ringing, Some(&ev_ringing)),
            s.update_call(&answered, Some(&ev_answered)),
        );
        assert_eq!(r1.unwrap().unwrap().sequence, 2);
        assert_eq!(r2.unwrap().unwrap().sequence, 3);
        let row = s.get_call("acme", &id).await.unwrap().unwrap();
        assert_eq!(row.status, CallStatus::InProgress, "round {round}");
        assert_eq!(row.rtp_packets_received, 7);
        let types: Vec<String> = s
            .list_events("acme", &id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_type)
            .collect();
        assert_eq!(
            types,
            ["call.initiating", "call.ringing", "call.in_progress"]
        );
    }
}

async fn concurrent_updates_get_distinct_sequences(s: &SqlStore) {
    let c = call("acme", "call_c", T0, HOOK);
    s.create_call(&shared(&c), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let s = s.clone();
        let mut c = c.clone();
        c.rtp_packets_received = i;
        tasks.spawn(async move { s.update_call(&shared(&c), Some(&ev("call.ringing"))).await });
    }
    let mut seqs = HashSet::new();
    while let Some(r) = tasks.join_next().await {
        seqs.insert(r.unwrap().unwrap().unwrap().sequence);
    }
    assert_eq!(seqs, (2..=11).collect::<HashSet<i64>>());
}

/// Writes are group-committed: many concurrent writes share transactions, and one that
/// fails (an update of a call that does not exist) must not take its neighbours with it.
async fn a_bad_write_in_a_batch_fails_alone(s: &SqlStore) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let s = s.clone();
        tasks.spawn(async move {
            let c = call("acme", &format!("call_b{i}"), T0 + i, HOOK);
            if i == 17 {
                // Never created: the update must fail, alone.
                return (
                    i,
                    s.update_call(&shared(&c), Some(&ev("call.ringing")))
                        .await
                        .map(|_| ()),
                );
            }
            let r = s.create_call(&shared(&c), &ev("call.initiating")).await;
            let r = match r {
                Ok(_) => s
                    .update_call(&shared(&c), Some(&ev("call.ringing")))
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            };
            (i, r)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.unwrap();
        if i == 17 {
            assert!(matches!(r, Err(StoreError::CallNotFound(_))), "{r:?}");
        } else {
            assert!(r.is_ok(), "write {i}: {r:?}");
            let events = s.list_events("acme", &format!("call_b{i}")).await.unwrap();
            let seqs: Vec<i64> = events.iter().map(|e| e.sequence).collect();
            assert_eq!(seqs, vec![1, 2], "call_b{i}");
        }
    }
}

#[tokio::test]
async fn sqlite_reopen_keeps_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested.db");
    // The short form without mode=rwc still creates the file.
    let url = format!("sqlite:{}", path.display());
    let c = call("acme", "call_p", T0, HOOK);
    let first = SqlStore::connect(&url).await.unwrap();
    let e = first
        .create_call(&shared(&c), &ev("call.initiating"))
        .await
        .unwrap()
        .unwrap();
    let secret = first.webhook_secret("acme").await.unwrap();
    first.close().await;
    assert!(path.exists());

    for _ in 0..2 {
        let again = SqlStore::connect(&url).await.unwrap();
        assert_eq!(
            again.get_call("acme", "call_p").await.unwrap(),
            Some(c.clone())
        );
        assert_eq!(
            again.list_events("acme", "call_p").await.unwrap(),
            vec![e.clone()]
        );
        assert_eq!(again.webhook_secret("acme").await.unwrap(), secret);
        again.close().await;
    }

    // A new process numbers a live call's next event after what the old one wrote.
    let third = SqlStore::connect(&url).await.unwrap();
    let mut ringing = c.clone();
    ringing.status = CallStatus::Ringing;
    let e2 = third
        .update_call(&shared(&ringing), Some(&ev("call.ringing")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e2.sequence, 2);
    third.close().await;
}

#[tokio::test]
async fn in_memory_sqlite_and_bad_urls() {
    let s = SqlStore::connect("sqlite::memory:").await.unwrap();
    s.create_call(
        &shared(&call("acme", "call_m", T0, None)),
        &ev("call.initiating"),
    )
    .await
    .unwrap()
    .unwrap();
    // The single in-memory connection is shared, so the row is visible.
    assert!(s.get_call("acme", "call_m").await.unwrap().is_some());
    assert!(matches!(
        SqlStore::connect("mysql://u:secret@db/x").await,
        Err(StoreError::UnsupportedUrl(u)) if !u.contains("secret")
    ));
}

fn proxy_number(tenant: &str, number: &str) -> switchyard::proxy::ProxyNumber {
    switchyard::proxy::ProxyNumber {
        number: number.to_owned(),
        tenant: tenant.to_owned(),
        trunk: "carrier".to_owned(),
        capabilities: vec![
            switchyard::proxy::Capability::Voice,
            switchyard::proxy::Capability::Messaging,
        ],
        source: "config".to_owned(),
        active_pairings: 0,
        created_at: Utc.timestamp_millis_opt(T0).unwrap(),
    }
}

fn new_session(
    id: &str,
    a: &str,
    b: &str,
    expires_at: Option<DateTime<Utc>>,
) -> switchyard::proxy::NewSession {
    switchyard::proxy::NewSession {
        id: id.to_owned(),
        tenant: "acme".to_owned(),
        mode: switchyard::proxy::SessionMode::VoiceAndMessaging,
        participants: [a.to_owned(), b.to_owned()],
        metadata: json!({"k": "v"}),
        webhook_url: None,
        max_call_duration: Some(60),
        record: true,
        unknown_caller: switchyard::proxy::UnknownCaller {
            sip_code: 480,
            announcement: None,
        },
        created_at: Utc.timestamp_millis_opt(T0).unwrap(),
        expires_at,
    }
}

/// One pool number: a participant's second open session is refused, the number cannot be
/// removed while used; past the expiry the session reads expired, the sweep marks it once,
/// and the number is free again (for the participant and for removal).
async fn proxy_sessions_expire_and_free_pairings(s: &SqlStore) {
    use switchyard::proxy::SessionStatus;
    use switchyard::store::NumberRemoval;
    let t0 = Utc.timestamp_millis_opt(T0).unwrap();
    let later = t0 + chrono::Duration::seconds(2);
    s.put_config_proxy_number(&proxy_number("acme", "+14155550100"))
        .await
        .unwrap();
    // Written again at the next start: no duplicate.
    s.put_config_proxy_number(&proxy_number("acme", "+14155550100"))
        .await
        .unwrap();
    let expiry = Some(t0 + chrono::Duration::seconds(1));
    let created = s
        .create_proxy_session(&new_session("ps_1", "+14155552671", "+14155553333", expiry))
        .await
        .unwrap();
    assert_eq!(created.status, SessionStatus::Open);
    assert_eq!(created.metadata, json!({"k": "v"}));
    assert_eq!(created.unknown_caller.sip_code, 480);
    assert!(
        created
            .participants
            .iter()
            .all(|p| p.proxy_number == "+14155550100")
    );
    assert!(matches!(
        s.create_proxy_session(&new_session("ps_2", "+14155552671", "+14155554444", None))
            .await,
        Err(StoreError::PoolExhausted)
    ));
    assert_eq!(
        s.delete_proxy_number("acme", "+14155550100", t0)
            .await
            .unwrap(),
        NumberRemoval::InUse(2)
    );
    // Another tenant has no pool.
    assert!(matches!(
        s.create_proxy_session(&switchyard::proxy::NewSession {
            tenant: "other".into(),
            ..new_session("ps_3", "+14155552671", "+14155554444", None)
        })
        .await,
        Err(StoreError::PoolExhausted)
    ));
    let numbers = s.list_proxy_numbers("acme", t0).await.unwrap();
    assert_eq!(numbers.len(), 1);
    assert_eq!(numbers[0].active_pairings, 2);

    let got = s
        .get_proxy_session("acme", "ps_1", later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, SessionStatus::Expired);
    assert_eq!(got.closed_at, expiry);
    let open = |at| s.list_proxy_sessions("acme", Some(SessionStatus::Open), 10, None, at);
    assert_eq!(open(t0).await.unwrap().total, 1);
    assert_eq!(open(later).await.unwrap().total, 0);
    let expired = s
        .list_proxy_sessions("acme", Some(SessionStatus::Expired), 10, None, later)
        .await
        .unwrap();
    assert_eq!(expired.sessions.len(), 1);
    assert_eq!(s.expire_proxy_sessions(t0).await.unwrap(), 0, "not yet");
    assert_eq!(s.expire_proxy_sessions(later).await.unwrap(), 1);
    assert_eq!(s.expire_proxy_sessions(later).await.unwrap(), 0, "once");
    assert_eq!(
        s.list_proxy_numbers("acme", later).await.unwrap()[0].active_pairings,
        0
    );
    // Closing an expired session changes nothing.
    let closed = s
        .close_proxy_session("acme", "ps_1", later)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.status, SessionStatus::Expired);
    assert!(
        s.close_proxy_session("acme", "ps_x", later)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.delete_proxy_number("acme", "+14155550100", later)
            .await
            .unwrap(),
        NumberRemoval::Removed
    );
    assert_eq!(
        s.delete_proxy_number("acme", "+14155550100", later)
            .await
            .unwrap(),
        NumberRemoval::NotFound
    );
}

/// The lookup of a call or message to a proxy number: the open session and which side
/// sent it; after close, the last session that paired them (its unknown-caller choice);
/// a number of no pool. Interactions are listed newest first, a voice one with its
/// call's status, paged by cursor.
async fn proxy_lookup_and_interactions(s: &SqlStore) {
    use switchyard::proxy::{ProxyInteraction, ProxyLookup};
    let t0 = Utc.timestamp_millis_opt(T0).unwrap();
    s.put_config_proxy_number(&proxy_number("acme", "+14155550100"))
        .await
        .unwrap();
    let session = s
        .create_proxy_session(&new_session("ps_l", "+14155551111", "+14155552222", None))
        .await
        .unwrap();
    let proxy = session.participants[1].proxy_number.clone();
    match s.lookup_proxy(&proxy, "+14155552222", t0).await.unwrap() {
        ProxyLookup::Open {
            session: found,
            from,
        } => {
            assert_eq!((found.id.as_str(), from), ("ps_l", 1));
        }
        other => panic!("{other:?}"),
    }
    match s.lookup_proxy(&proxy, "+14155559999", t0).await.unwrap() {
        ProxyLookup::NoSession { tenant, last } => {
            assert_eq!(tenant, "acme");
            assert!(last.is_none());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.lookup_proxy("+19999999999", "+14155552222", t0)
            .await
            .unwrap(),
        ProxyLookup::NotProxy
    );
    // Interactions: a call (its status read from the call row) and two messages.
    let mut call = call("acme", "call_l", T0, None);
    call.status = CallStatus::Completed;
    call.proxy_session_id = Some("ps_l".into());
    s.create_call(&shared(&call), &ev("call.initiating"))
        .await
        .unwrap();
    let base = ProxyInteraction {
        id: String::new(),
        session_id: "ps_l".into(),
        tenant: "acme".into(),
        kind: "voice".into(),
        from_participant: "+14155551111".into(),
        to_participant: "+14155552222".into(),
        inbound_proxy_number: proxy.clone(),
        outbound_proxy_number: proxy.clone(),
        status: "initiating".into(),
        call_id: Some("call_l".into()),
        body_bytes: None,
        error: None,
        created_at: t0,
        updated_at: t0,
    };
    let voice = ProxyInteraction {
        id: "pi_1".into(),
        ..base.clone()
    };
    s.put_proxy_interaction(&session, &voice, true)
        .await
        .unwrap();
    for (i, id) in ["pi_2", "pi_3"].iter().enumerate() {
        let mut m = ProxyInteraction {
            id: (*id).into(),
            kind: "messaging".into(),
            status: "sending".into(),
            call_id: None,
            body_bytes: Some(5),
            created_at: t0 + chrono::Duration::seconds(i as i64 + 1),
            updated_at: t0 + chrono::Duration::seconds(i as i64 + 1),
            ..base.clone()
        };
        s.put_proxy_interaction(&session, &m, true).await.unwrap();
        m.status = "delivered".into();
        s.put_proxy_interaction(&session, &m, false).await.unwrap();
    }
    let page = s
        .list_proxy_interactions("acme", "ps_l", 2, None)
        .await
        .unwrap();
    assert_eq!(page.total, 3);
    let ids: Vec<&str> = page.interactions.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(ids, ["pi_3", "pi_2"]);
    assert!(page.interactions.iter().all(|i| i.status == "delivered"));
    let rest = s
        .list_proxy_interactions("acme", "ps_l", 2, page.next_cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(rest.interactions.len(), 1);
    assert_eq!(
        rest.interactions[0].status, "completed",
        "the call's status"
    );
    assert!(!rest.has_more);
    // Another tenant sees none of it.
    let other = s
        .list_proxy_interactions("globex", "ps_l", 10, None)
        .await
        .unwrap();
    assert_eq!(other.total, 0);
    // Closed: the lookup finds no open session but the last one, with its 480.
    s.close_proxy_session("acme", "ps_l", t0).await.unwrap();
    match s.lookup_proxy(&proxy, "+14155552222", t0).await.unwrap() {
        ProxyLookup::NoSession {
            last: Some(last), ..
        } => {
            assert_eq!(last.id, "ps_l");
            assert_eq!(last.unknown_caller.sip_code, 480);
        }
        other => panic!("{other:?}"),
    }
}
