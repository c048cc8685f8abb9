//! Truthful call records, end to end against SIPp: what the API and callbacks say about a
//! call matches what happened on the wire (end reasons, SIP codes and phrases, live media
//! counters, timestamps), and the CLI refuses keys for tenants nobody declared.
//!
//! Tests wait on SIPp exits, callbacks or API states, never on fixed sleeps; timeouts are
//! guards only.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::harness::{GUARD, setup};
use common::switch::switch_bin;
use common::transit::{TRANSIT_PLAN, start, start_with, types};
use common::{Api, Sipp, SwitchConfig, SwitchProcess};
use serde_json::{Value, json};

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`: RFC 3339, UTC, exactly milliseconds.
fn is_millis_rfc3339(v: &Value) -> bool {
    let Some(s) = v.as_str() else {
        return false;
    };
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// Polls `GET /voice/calls/{id}` until `pred` holds for `data`; panics after `timeout`.
async fn wait_for_call(
    api: &Api,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (code, body) = api.get_call(id).await;
        if code == 200 && pred(&body["data"]) {
            return body["data"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "call {id} never got there; last answer {code}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_create_refuses_a_tenant_the_config_does_not_declare() {
    let switch = SwitchProcess::start(SwitchConfig::new("127.0.0.1:5999".parse().unwrap())).await;
    for tenant in ["initech", "", "  "] {
        let out = tokio::process::Command::new(switch_bin())
            .args(["api-key", "create", "--tenant", tenant, "--role", "owner"])
            .arg("--config")
            .arg(switch.config_path())
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run switchyard api-key create");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{tenant:?} accepted");
        assert!(stderr.contains("unknown tenant"), "{tenant:?}: {stderr}");
        assert!(out.stdout.is_empty(), "no key printed for {tenant:?}");
    }
    // The trunk's tenant is declared: its key works.
    let api = switch.api("acme", "owner").await;
    assert_eq!(api.list_calls("").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_are_milliseconds_in_callbacks_and_the_api_alike() {
    let sipp = Sipp::uas("uas_remote_bye.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    let events = h
        .expect_events(
            &id,
            &[
                "call.initiating",
                "call.ringing",
                "call.in_progress",
                "call.completed",
            ],
        )
        .await;
    sipp.wait().await.assert_success("carrier");
    let hooked = &events[3]["data"]["call"];
    let (code, body) = h.api.get_call(&id).await;
    assert_eq!(code, 200, "{body}");
    let served = &body["data"];
    for field in ["created_at", "answered_at", "ended_at"] {
        assert!(
            is_millis_rfc3339(&hooked[field]),
            "callback {field}: {hooked}"
        );
        assert_eq!(hooked[field], served[field], "{field}: callback vs API");
    }
    assert!(is_millis_rfc3339(&events[3]["created_at"]), "{}", events[3]);
    assert!(is_millis_rfc3339(&body["meta"]["timestamp"]), "{body}");
    let (_, listed) = h.api.events(&id).await;
    let first = &listed["data"][0];
    for field in ["created_at", "next_attempt_at", "delivered_at"] {
        assert!(is_millis_rfc3339(&first[field]), "event {field}: {first}");
    }
}

/// A ring timeout on a transit call: the caller hears 480 Temporarily Unavailable and the
/// record says so, not the 487 that answered our own CANCEL to the callee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_ring_timeout_reports_the_480_sent_not_the_487_of_our_cancel() {
    let far = Sipp::uas("uas_ring_no_answer.xml");
    let mut h = start(
        far.addr(),
        TRANSIT_PLAN,
        "[calls]\ndefault_ring_timeout = 2\n",
    )
    .await;
    let caller = Sipp::uac("uac_ring_expect_480.xml", h.switch.sip_udp());
    let heard = caller.wait().await;
    heard.assert_success("caller");
    assert!(
        heard
            .messages
            .contains("SIP/2.0 480 Temporarily Unavailable"),
        "{heard}"
    );
    far.wait().await.assert_success("far end cancelled");
    let events = h.events_until("call.no_answer").await;
    let done = &events.last().expect("events")["data"];
    assert_eq!(done["end_reason"], "ring_timeout", "{done}");
    assert_eq!(done["sip_code"], 480, "{done}");
    assert_eq!(done["sip_reason"], "Temporarily Unavailable", "{done}");
    assert_eq!(done["q850_cause"], 19, "{done}");
}

/// The same on an outbound call: no SIP code at all (the far end only rang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_ring_timeout_reports_no_sip_code() {
    let sipp = Sipp::uas("uas_ring_no_answer.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({"ring_timeout": 2})).await;
    let events = h
        .expect_events(&id, &["call.initiating", "call.ringing", "call.no_answer"])
        .await;
    sipp.wait().await.assert_success("carrier");
    let done = &events[2]["data"];
    assert_eq!(done["end_reason"], "ring_timeout", "{done}");
    assert!(done["sip_code"].is_null(), "{done}");
    assert!(done["sip_reason"].is_null(), "{done}");
    let (_, call) = h.api.get_call(&id).await;
    assert!(call["data"]["sip_code"].is_null(), "{call}");
}

/// A callee's 408 reaches the caller as 480 with 480's own reason phrase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_408_reaches_the_caller_as_480_temporarily_unavailable() {
    let far = Sipp::uas("uas_408.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let caller = Sipp::uac("uac_expect_480.xml", h.switch.sip_udp());
    let heard = caller.wait().await;
    heard.assert_success("caller");
    assert!(
        heard
            .messages
            .contains("SIP/2.0 480 Temporarily Unavailable"),
        "{heard}"
    );
    far.wait().await.assert_success("far end");
    let events = h.events_until("call.no_answer").await;
    let done = &events.last().expect("events")["data"];
    assert_eq!(done["sip_code"], 408, "what the callee said: {done}");
}

/// A caller that never ACKs our 200: after 64 × T1 the switch BYEs it (and the callee), and
/// the call ends `ack_timeout`, not `caller_bye`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_never_acks_ends_ack_timeout() {
    let far = Sipp::uas("uas_answer_hold.xml");
    // T1 = 100 ms: Timer H is 6.4 s instead of 32 s.
    let mut h = start(far.addr(), TRANSIT_PLAN, "[sip]\nt1_ms = 100\n").await;
    let caller = Sipp::uac("uac_no_ack.xml", h.switch.sip_udp());
    caller.wait().await.assert_success("caller gets a BYE");
    far.wait().await.assert_success("callee gets a BYE");
    let events = h.events_until("call.completed").await;
    assert_eq!(
        types(&events),
        [
            "call.initiating",
            "call.ringing",
            "call.in_progress",
            "call.completed"
        ]
    );
    let done = &events[3]["data"];
    assert_eq!(done["end_reason"], "ack_timeout", "{}", h.switch.logs());
}

/// SIGTERM hangs up live calls, transit and outbound, with `end_reason: switch_shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_live_calls_as_switch_shutdown() {
    let far = Sipp::builder("uas_answer_hold.xml").calls(2).spawn();
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let caller = Sipp::uac("uac_remote_bye.xml", h.switch.sip_udp());
    // The outbound call goes to the same far end through trunk "carrier".
    let outbound = h
        .api
        .create_call_ok(json!({"to": "+14155552671", "from": "+12025551234"}))
        .await;
    common::wait_for_status(&h.api, &outbound, "in_progress", GUARD).await;
    // Only the transit call has a webhook URL (the tenant's): its first callback names it.
    let first = h.event().await;
    let transit = first["data"]["call"]["id"].as_str().expect("id").to_owned();
    common::wait_for_status(&h.api, &transit, "in_progress", GUARD).await;
    assert_eq!(
        h.switch.terminate(GUARD).await,
        Some(0),
        "{}",
        h.switch.logs()
    );
    caller.wait().await.assert_success("caller gets a BYE");
    far.wait().await.assert_success("far end gets both BYEs");
    h.switch.restart().await;
    let api = Api::new(&h.switch.http_base(), &h.api.key);
    for id in [&transit, &outbound] {
        let (_, call) = api.get_call(id).await;
        assert_eq!(call["data"]["status"], "completed", "{call}");
        assert_eq!(call["data"]["end_reason"], "switch_shutdown", "{call}");
    }
}

/// While a transit call is up, `metadata.media` shows each leg's counters moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_transit_call_shows_per_leg_media_counters() {
    let far = Sipp::uas("uas_answer_rtp.xml");
    // The media check runs every media_timeout / 4: 750 ms here (the ~0.8 s of silence
    // between the end of the replayed RTP and the caller's BYE stays well under 3 s).
    let mut h = start(far.addr(), TRANSIT_PLAN, "[rtp]\nmedia_timeout_s = 3\n").await;
    let caller = Sipp::builder("uac_call_rtp.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(5500)
        .spawn();
    let first = h.event().await;
    let id = first["data"]["call"]["id"].as_str().expect("id").to_owned();
    let live = wait_for_call(&h.api, &id, GUARD, |c| {
        ["caller", "callee"].iter().all(|side| {
            c["metadata"]["media"][side]["packets_received"]
                .as_u64()
                .is_some_and(|n| n > 0)
        })
    })
    .await;
    assert_eq!(live["status"], "in_progress", "counters shown live: {live}");
    assert!(live["ended_at"].is_null(), "{live}");
    assert!(
        live["rtp_packets_received"].as_i64().is_some_and(|n| n > 0),
        "{live}"
    );
    // They keep moving while the call lasts.
    let before = live["metadata"]["media"]["caller"]["packets_received"]
        .as_u64()
        .unwrap_or(0);
    let later = wait_for_call(&h.api, &id, GUARD, |c| {
        c["metadata"]["media"]["caller"]["packets_received"]
            .as_u64()
            .is_some_and(|n| n > before)
    })
    .await;
    assert_eq!(later["status"], "in_progress", "{later}");
    caller.wait().await.assert_success("caller");
    far.wait().await.assert_success("far end");
    let done = h.events_until("call.completed").await;
    let media = &done.last().expect("events")["data"]["call"]["metadata"]["media"];
    assert!(
        media["caller"]["packets_received"].as_u64() >= Some(before),
        "{media}"
    );
}

/// A fresh PostgreSQL schema for one test (dropped by the caller): its URL and the pool.
async fn pg_schema(name: &str) -> (String, sqlx::PgPool, String) {
    let base = std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("sy_{name}_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL reachable");
    for q in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(&q).execute(&admin).await.expect("schema");
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    (url, admin, schema)
}

/// `CALLS` transit calls are up between two SIPps when the switch is killed with SIGKILL;
/// the restarted switch (same database) sends a BYE on both legs of every one of them,
/// which both SIPps require to finish, and closes each call out as `switch_restart`.
async fn kill_9_with_live_transit_calls(database_url: Option<&str>) {
    const CALLS: u32 = 10;
    let far = Sipp::builder("uas_answer_hold.xml")
        .calls(CALLS)
        .timeout(Duration::from_secs(30))
        .spawn();
    let mut h = start_with(far.addr(), TRANSIT_PLAN, "", |c| match database_url {
        Some(url) => c.database_url(url),
        None => c,
    })
    .await;
    // Without the BYEs the SIPps wait for them until this guard runs out.
    let caller = Sipp::builder("uac_remote_bye.xml")
        .remote(h.switch.sip_udp())
        .calls(CALLS)
        .timeout(Duration::from_secs(30))
        .spawn();
    // An in_progress callback is sent only once its row (with both dialogs) is committed.
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < CALLS as usize {
        let e = h.event().await;
        if e["type"] == "call.in_progress" {
            answered.insert(e["data"]["call"]["id"].as_str().expect("id").to_owned());
        }
    }
    h.switch.kill_9().await;
    h.switch.restart().await;
    let callers = caller.wait().await;
    callers.assert_success("every caller gets a BYE after the restart");
    let callees = far.wait().await;
    callees.assert_success("every callee gets a BYE after the restart");
    for (side, out) in [("callers", &callers), ("callees", &callees)] {
        let byes = out.messages.matches("BYE sip:").count();
        assert!(byes >= CALLS as usize, "{side} saw {byes} BYEs\n{out}");
    }
    let api = Api::new(&h.switch.http_base(), &h.api.key);
    for id in &answered {
        let (_, call) = api.get_call(id).await;
        let call = &call["data"];
        assert_eq!(call["status"], "failed", "{call}");
        assert_eq!(call["end_reason"], "switch_restart", "{call}");
        assert!(
            call["sip_reason"]
                .as_str()
                .is_some_and(|r| r.contains("BYE sent on both legs")),
            "{call}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_transit_calls_byes_both_legs_after_restart() {
    kill_9_with_live_transit_calls(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_transit_calls_byes_both_legs_after_restart_on_postgresql() {
    let (url, admin, schema) = pg_schema("transit_restart").await;
    kill_9_with_live_transit_calls(Some(&url)).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop schema");
}

/// Calls from the upstream trunk answered by the switch itself (an agent).
const AGENT_PLAN: &str = "[[rules]]\nname = \"to-agent\"\nto = { prefix = \"+1\" }\n\
    source_trunk = \"upstream\"\nagent = \"agt_front_desk\"\n";

/// A call the switch answers itself, never ACKed: `ack_timeout` there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_call_never_acked_ends_ack_timeout() {
    let (mut h, agent) = common::agent::start_with_agent(
        "127.0.0.1:5999".parse().unwrap(),
        AGENT_PLAN,
        "[sip]\nt1_ms = 100\n",
    )
    .await;
    let caller = Sipp::uac("uac_no_ack.xml", h.switch.sip_udp());
    caller.wait().await.assert_success("caller gets a BYE");
    let events = h.events_until("call.completed").await;
    let done = &events.last().expect("events")["data"];
    assert_eq!(done["call"]["agent_id"], agent.id.as_str(), "{done}");
    assert_eq!(done["end_reason"], "ack_timeout", "{}", h.switch.logs());
}

/// An agent call up when the switch is killed: the caller gets its BYE from the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_agent_call_byes_the_caller_after_restart() {
    let (mut h, _agent) =
        common::agent::start_with_agent("127.0.0.1:5999".parse().unwrap(), AGENT_PLAN, "").await;
    let caller = Sipp::builder("uac_remote_bye.xml")
        .remote(h.switch.sip_udp())
        .timeout(Duration::from_secs(30))
        .spawn();
    let events = h.events_until("call.in_progress").await;
    let id = events.last().expect("events")["data"]["call"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    h.switch.kill_9().await;
    h.switch.restart().await;
    caller
        .wait()
        .await
        .assert_success("the caller gets a BYE after the restart");
    let api = Api::new(&h.switch.http_base(), &h.api.key);
    let (_, call) = api.get_call(&id).await;
    assert_eq!(call["data"]["end_reason"], "switch_restart", "{call}");
    assert!(
        call["data"]["sip_reason"]
            .as_str()
            .is_some_and(|r| r.contains("BYE sent")),
        "{call}"
    );
}
