//! Outbound calls end to end: the real `switchyard` binary places calls through a SIPp
//! carrier on loopback, the API reports each status, and signed callbacks arrive in order.
//!
//! Tests wait on callbacks (events), never on fixed sleeps; timeouts are guards only.

mod common;

use common::harness::{GUARD, setup};
use common::{Api, Sipp};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_call_with_rtp_ends_at_max_duration() {
    let sipp = Sipp::uas("uas_answer_rtp.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({"max_duration": 3})).await;
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
    let done = &events[3]["data"];
    assert_eq!(done["end_reason"], "max_duration");
    assert_eq!(done["q850_cause"], 16);
    let (_, call) = h.api.get_call(&id).await;
    let call = &call["data"];
    assert_eq!(call["status"], "completed");
    assert!(call["answered_at"].is_string() && call["ended_at"].is_string());
    assert_eq!(call["duration_seconds"], 3, "{call}");
    // SIPp replays a 4.7 s PCMA capture from the moment of the ACK; 3 s of it is ~150 packets.
    let packets = call["rtp_packets_received"].as_i64().unwrap_or(0);
    assert!(packets >= 100, "RTP packets counted: {packets}\n{call}");
    assert!(call["sip_call_id"].as_str().is_some_and(|c| !c.is_empty()));
    // A clean loopback stream: nothing lost, little jitter, toll quality.
    assert_eq!(call["rtp_packets_lost"], 0, "{call}");
    assert!(
        call["rtp_jitter_ms"].as_f64().is_some_and(|j| j < 20.0),
        "{call}"
    );
    assert!(call["mos"].as_f64().is_some_and(|m| m > 4.0), "{call}");
    assert_eq!(call["metadata"]["test"], "e2e");
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_carrier_gives_busy_with_sip_cause() {
    let sipp = Sipp::uas("uas_busy.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    let events = h
        .expect_events(&id, &["call.initiating", "call.busy"])
        .await;
    let busy = &events[1]["data"];
    assert_eq!(busy["sip_code"], 486);
    assert_eq!(busy["q850_cause"], 17);
    assert_eq!(busy["call"]["status"], "busy");
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_603_is_failed_and_keeps_the_sip_reason() {
    let sipp = Sipp::uas("uas_decline.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    let events = h
        .expect_events(&id, &["call.initiating", "call.failed"])
        .await;
    let failed = &events[1]["data"];
    assert_eq!(failed["sip_code"], 603);
    assert_eq!(failed["sip_reason"], "Decline");
    assert_eq!(failed["q850_cause"], 21);
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporarily_unavailable_480_is_no_answer() {
    let sipp = Sipp::uas("uas_unavailable.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    let events = h
        .expect_events(&id, &["call.initiating", "call.no_answer"])
        .await;
    assert_eq!(events[1]["data"]["sip_code"], 480);
    assert_eq!(events[1]["data"]["q850_cause"], 18);
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_timeout_cancels_and_gives_no_answer() {
    let sipp = Sipp::uas("uas_ring_no_answer.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({"ring_timeout": 2})).await;
    let events = h
        .expect_events(&id, &["call.initiating", "call.ringing", "call.no_answer"])
        .await;
    let last = &events[2]["data"];
    assert_eq!(last["end_reason"], "ring_timeout");
    assert_eq!(last["q850_cause"], 19);
    // The carrier saw a CANCEL, answered 487, and got its ACK.
    let outcome = sipp.wait().await;
    outcome.assert_success("carrier");
    assert!(outcome.messages.contains("CANCEL sip:"), "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_before_answer_cancels() {
    let sipp = Sipp::uas("uas_ring_no_answer.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    h.expect_events(&id, &["call.initiating", "call.ringing"])
        .await;
    let (code, body) = h.api.hangup(&id).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["status"], "cancelled", "{body}");
    let e = h.event().await;
    assert_eq!(e["type"], "call.cancelled");
    assert_eq!(e["data"]["end_reason"], "hangup");
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_bye_completes_the_call() {
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
    assert_eq!(events[3]["data"]["end_reason"], "remote_bye");
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_via_api_sends_bye_and_second_hangup_conflicts() {
    let sipp = Sipp::uas("uas_answer_hold.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    h.expect_events(
        &id,
        &["call.initiating", "call.ringing", "call.in_progress"],
    )
    .await;
    let (code, body) = h.api.hangup(&id).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["status"], "completed");
    assert!(body["data"]["ended_at"].is_string());
    assert!(body["data"]["duration_seconds"].is_i64());
    let e = h.event().await;
    assert_eq!(e["type"], "call.completed");
    assert_eq!(e["data"]["end_reason"], "hangup");
    let (code, body) = h.api.hangup(&id).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], "CALL_ALREADY_ENDED");
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_challenged_trunk_is_answered_with_credentials() {
    let sipp = Sipp::uas("uas_digest.xml");
    let mut h = setup(&sipp, |c| c.credentials("user", "secret")).await;
    let id = h.call(json!({})).await;
    h.expect_events(
        &id,
        &["call.initiating", "call.ringing", "call.in_progress"],
    )
    .await;
    let (code, body) = h.api.hangup(&id).await;
    assert_eq!(code, 200, "{body}");
    let outcome = sipp.wait().await;
    outcome.assert_success("carrier (verifies the digest)");
    assert!(
        outcome.messages.contains("Authorization: Digest"),
        "{outcome}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_password_fails_the_call() {
    let sipp = Sipp::uas("uas_digest.xml");
    let mut h = setup(&sipp, |c| c.credentials("user", "wrong")).await;
    let id = h.call(json!({})).await;
    let events = h
        .expect_events(&id, &["call.initiating", "call.failed"])
        .await;
    assert_eq!(events[1]["data"]["sip_code"], 403, "{}", events[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_receiver_failing_twice_gets_every_event_in_order() {
    let sipp = Sipp::uas("uas_busy.xml");
    let mut h = setup(&sipp, |c| c).await;
    h.sink.fail_first(2);
    let id = h.call(json!({})).await;
    // Two refused attempts of event 1, then events 1 and 2 in order.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let r = h.sink.next_event(GUARD).await;
        let v = h.sink.verify(&h.secret, &r);
        seen.push((r.status_sent, v["sequence"].as_i64().unwrap_or(-1)));
    }
    assert_eq!(seen, vec![(500, 1), (500, 1), (200, 1), (200, 2)]);
    let (code, body) = h.api.events(&id).await;
    assert_eq!(code, 200);
    let events = body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 2, "{body}");
    assert_eq!(events[0]["attempts"], 3, "{body}");
    assert_eq!(events[0]["state"], "delivered");
    assert_eq!(events[1]["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeliver_sends_an_event_again() {
    let sipp = Sipp::uas("uas_busy.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    let events = h
        .expect_events(&id, &["call.initiating", "call.busy"])
        .await;
    let event_id = events[0]["id"].as_str().unwrap_or_default().to_owned();
    let (code, body) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/events/{event_id}/redeliver"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let again = h.event().await;
    assert_eq!(again["id"], event_id.as_str());
    assert_eq!(again["type"], "call.initiating");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_call_closes_it_out_as_failed_with_callback() {
    let sipp = Sipp::uas("uas_answer_hold.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    let before = h
        .expect_events(
            &id,
            &["call.initiating", "call.ringing", "call.in_progress"],
        )
        .await;
    h.switch.kill_9().await;
    h.switch.restart().await;
    // Delivery is at least once: an event whose delivery the crash interrupted may come
    // again, with the same webhook-id, before the close-out.
    let seen: Vec<Value> = before.iter().map(|e| e["id"].clone()).collect();
    let e = loop {
        let e = h.event().await;
        if e["type"] == "call.failed" {
            break e;
        }
        assert!(
            seen.contains(&e["id"]),
            "unexpected new event before close-out: {e}"
        );
    };
    assert_eq!(e["sequence"], 4);
    assert_eq!(e["data"]["end_reason"], "switch_restart");
    let api = Api::new(&h.switch.http_base(), &h.api.key);
    let (_, call) = api.get_call(&id).await;
    assert_eq!(call["data"]["status"], "failed", "{call}");
    assert_eq!(call["data"]["end_reason"], "switch_restart");
    assert!(
        call["data"]["sip_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("BYE sent"),
        "{call}"
    );
    // The carrier's call is not left up: the restarted switch sent it a BYE in the old
    // dialog, which SIPp's scenario requires to finish successfully.
    let outcome = sipp.wait().await;
    outcome.assert_success("carrier gets a BYE after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_over_a_tcp_trunk() {
    let sipp = Sipp::builder("uas_remote_bye.xml").tcp().spawn();
    let mut h = setup(&sipp, |c| c.transport("tcp")).await;
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
    assert_eq!(events[3]["data"]["end_reason"], "remote_bye");
    let outcome = sipp.wait().await;
    outcome.assert_success("carrier over TCP");
    assert!(outcome.messages.contains("SIP/2.0/TCP"), "{outcome}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hangs_up_live_calls() {
    let sipp = Sipp::uas("uas_answer_hold.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    h.expect_events(
        &id,
        &["call.initiating", "call.ringing", "call.in_progress"],
    )
    .await;
    let code = h.switch.terminate(GUARD).await;
    assert_eq!(code, Some(0), "{}", h.switch.logs());
    // The carrier got its BYE (its scenario ends only on one) and the call is completed.
    sipp.wait().await.assert_success("carrier");
    h.switch.restart().await;
    let api = Api::new(&h.switch.http_base(), &h.api.key);
    let (_, call) = api.get_call(&id).await;
    assert_eq!(call["data"]["status"], "completed", "{call}");
    assert_eq!(call["data"]["end_reason"], "switch_shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_far_end_is_ended_by_the_media_timeout() {
    // The carrier answers but never sends RTP.
    let sipp = Sipp::uas("uas_answer_hold.xml");
    let mut h = setup(&sipp, |c| c.media_timeout_s(2)).await;
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
    let done = &events[3]["data"];
    assert_eq!(done["end_reason"], "media_timeout", "{done}");
    assert_eq!(done["q850_cause"], 102);
    assert_eq!(done["call"]["rtp_packets_received"], 0);
    assert_eq!(done["call"]["duration_seconds"], 2);
    sipp.wait().await.assert_success("carrier got the BYE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc4733_digit_from_the_far_end_is_a_call_event() {
    // The carrier answers with telephone-event 101 and sends the digit "1" (SIPp's capture).
    let sipp = Sipp::uas("uas_answer_dtmf.xml");
    let mut h = setup(&sipp, |c| c).await;
    let id = h.call(json!({})).await;
    let events = h
        .expect_events(
            &id,
            &[
                "call.initiating",
                "call.ringing",
                "call.in_progress",
                "call.dtmf",
            ],
        )
        .await;
    let dtmf = &events[3]["data"];
    assert_eq!(dtmf["digit"], "1", "{dtmf}");
    // The capture's end packets carry duration 2240 at 8 kHz.
    assert_eq!(dtmf["duration_ms"], 280, "{dtmf}");
    let (code, body) = h.api.hangup(&id).await;
    assert_eq!(code, 200, "{body}");
    let e = h.event().await;
    assert_eq!(e["type"], "call.completed");
    assert_eq!(e["sequence"], 5, "exactly one dtmf event for one digit");
    sipp.wait().await.assert_success("carrier");
}

/// The same switch on PostgreSQL (a fresh schema): calls, callbacks and a restart close-out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_restart_on_postgresql() {
    let base = std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("sy_e2e_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL reachable");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");

    let sipp = Sipp::uas("uas_answer_hold.xml");
    let mut h = setup(&sipp, |c| c.database_url(&url)).await;
    let id = h.call(json!({})).await;
    h.expect_events(
        &id,
        &["call.initiating", "call.ringing", "call.in_progress"],
    )
    .await;
    h.switch.kill_9().await;
    h.switch.restart().await;
    let e = loop {
        let e = h.event().await;
        if e["type"] == "call.failed" {
            break e;
        }
    };
    assert_eq!(e["data"]["end_reason"], "switch_restart");
    sipp.wait()
        .await
        .assert_success("carrier gets its BYE after the restart");
    let api = Api::new(&h.switch.http_base(), &h.api.key);
    let (_, list) = api.list_calls("").await;
    assert_eq!(list["meta"]["pagination"]["total"], 1, "{list}");
    drop(h);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
