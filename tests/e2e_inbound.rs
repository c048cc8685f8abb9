//! Inbound and transit calls end to end: SIPp as the carrier calling in, the dialplan
//! deciding, and (for transit) a second SIPp as the far end behind another trunk, with the
//! switch as a B2BUA relaying RTP between them.
//!
//! Tests wait on SIPp exits and callbacks, never on fixed sleeps; timeouts are guards only.

mod common;

use std::time::Duration;

use common::transit::{Inbound, TRANSIT_PLAN, plan_file, start, types};
use common::{Sipp, SwitchConfig, SwitchProcess, WebhookSink};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_call_relays_rtp_both_ways_and_reports_to_the_tenant() {
    // The far end answers PCMA and plays ~4.7 s of RTP; the caller does the same towards us.
    // One worker for the call tasks, as the transit bench runs it; SIP has its own thread.
    let (h, events) = rtp_transit_call(
        "uas_answer_rtp.xml",
        "[node]\nworker_threads = 1\n",
        "worker_threads=1",
    )
    .await;
    assert_eq!(
        types(&events),
        [
            "call.initiating",
            "call.ringing",
            "call.in_progress",
            "call.completed"
        ],
        "{}",
        h.switch.logs()
    );
    let call = &events[3]["data"]["call"];
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["to"], "+14155552671");
    assert_eq!(call["from"], "+442071838750");
    assert_eq!(call["end_reason"], "caller_bye");
    assert_eq!(call["trunk"], "carrier");
    assert_eq!(call["metadata"]["route"], "transit");
    assert_eq!(call["metadata"]["source_trunk"], "upstream");
    assert_eq!(call["metadata"]["rule"], "us-transit");

    let listed = h.only_call().await;
    assert_eq!(listed["status"], "completed");
    let media = &listed["metadata"]["media"];
    // Most of g711a.pcap (236 packets) in both directions crossed the bridge.
    for side in ["caller", "callee"] {
        let got = media[side]["packets_received"].as_u64().unwrap_or(0);
        let sent = media[side]["packets_sent"].as_u64().unwrap_or(0);
        assert!(got >= 150, "{side} sent us {got} packets: {media}");
        assert!(sent >= 150, "we sent {side} {sent} packets: {media}");
    }
}

/// One transit call with RTP both ways (~4.7 s each way): SIPp `far` answers behind trunk
/// "carrier", uac_call_rtp.xml calls the owned route through a switch started with
/// `extra` config, whose log must say `logged`. Returns the switch and the call's callbacks.
async fn rtp_transit_call(far: &str, extra: &str, logged: &str) -> (Inbound, Vec<Value>) {
    let far = Sipp::uas(far);
    let mut h = start(far.addr(), TRANSIT_PLAN, extra).await;
    assert!(h.switch.logs().contains(logged), "{}", h.switch.logs());
    let caller = Sipp::builder("uac_call_rtp.xml")
        .remote(h.switch.sip_udp())
        .service("+14155552671")
        .pause_ms(5500)
        .spawn();
    caller.wait().await.assert_success("caller");
    far.wait().await.assert_success("far end");
    let events = h.events_until("call.completed").await;
    (h, events)
}

/// With `[rtp] kernel_forwarding`, a transit call whose legs share every payload type
/// is handed to the kernel after the first packets: the call record shows most packets
/// forwarded there, and the counts still add up. Needs root and nft, as CI has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_call_media_is_forwarded_in_the_kernel_when_enabled() {
    let (h, events) = rtp_transit_call(
        "uas_answer_rtp_te.xml",
        "[rtp]\nkernel_forwarding = true",
        "in-kernel RTP forwarding on",
    )
    .await;
    assert_eq!(events.len(), 4, "{}", h.switch.logs());
    let listed = h.only_call().await;
    let media = &listed["metadata"]["media"];
    for side in ["caller", "callee"] {
        let got = media[side]["packets_received"].as_u64().unwrap_or(0);
        let kernel = media[side]["kernel_forwarded"].as_u64().unwrap_or(0);
        let dropped = media[side]["dropped"].as_u64().unwrap_or(u64::MAX);
        assert!(got >= 150, "{side} sent us {got} packets: {media}");
        // Only the first packets, before both sides latched, crossed userspace.
        assert!(
            kernel + 20 >= got,
            "{side}: {kernel} of {got} in the kernel: {media}\n{}",
            h.switch.logs()
        );
        assert_eq!(dropped, 0, "{media}");
    }
    let metrics = h.switch.metrics().await;
    for line in [
        "switchyard_rtp_kernel_handovers_total{outcome=\"forwarded\"} 1",
        "switchyard_rtp_kernel_handovers_total{outcome=\"refused\"} 0",
        "switchyard_rtp_kernel_calls 0",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_fails_over_to_the_next_trunk_on_503() {
    let broken = Sipp::uas("uas_503.xml");
    let good = Sipp::uas("uas_answer_hold.xml");
    let plan = "[[rules]]\nname = \"failover\"\nto = { prefix = \"+1\" }\n\
                trunks = [\"carrier\", \"backup\"]\n";
    let backup = format!(
        "[[trunks]]\nname = \"backup\"\nuri = \"sip:{}\"\ntenant = \"acme\"\n",
        good.addr()
    );
    let mut h = start(broken.addr(), plan, &backup).await;
    let caller = Sipp::builder("uac_call.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(500)
        .spawn();
    caller.wait().await.assert_success("caller");
    broken.wait().await.assert_success("503 trunk");
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["trunk"], "backup", "{}", h.switch.logs());
    assert_eq!(call["end_reason"], "caller_bye");
    drop(good);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_gets_403_and_no_call_is_created() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let h = start(far.addr(), TRANSIT_PLAN, "").await;
    // 127.0.0.3 is on no trunk's allow-list.
    let stranger = Sipp::builder("uac_expect_403.xml")
        .remote(h.switch.sip_udp())
        .ip("127.0.0.3")
        .spawn();
    stranger.wait().await.assert_success("stranger");
    let (_, list) = h.api.list_calls("").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");
    let metrics = h.switch.metrics().await;
    assert!(
        metrics.contains("switchyard_inbound_invites_total{outcome=\"forbidden\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_can_reject_with_its_own_code() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let plan = "[[rules]]\nname = \"barred\"\nto = { prefix = \"+1\" }\nreject = 403\nreason = \"Barred\"\n";
    let h = start(far.addr(), plan, "").await;
    let caller = Sipp::builder("uac_expect_403.xml")
        .remote(h.switch.sip_udp())
        .spawn();
    caller.wait().await.assert_success("caller");
    assert!(
        h.switch.logs().contains("barred"),
        "the log names the rule:\n{}",
        h.switch.logs()
    );
}

/// A carrier that authenticates by digest (not by address): challenged with 401, then
/// admitted; the agent route answers the call itself, and the API hangs it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_authenticated_trunk_reaches_an_agent_and_api_hangup_ends_it() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let plan = "[[numbers]]\nnumber = \"+14155552671\"\ntenant = \"acme\"\n\n\
                [[rules]]\nname = \"to-agent\"\nto = { exact = \"+14155552671\" }\nagent = \"agt_front_desk\"\n";
    let digest_trunk = "[[trunks]]\nname = \"digest-carrier\"\nuri = \"sip:127.0.0.1:5998\"\n\
        inbound_username = \"carrier\"\ninbound_password = \"s3cret\"\ntenant = \"acme\"\n";
    // No CIDR trusts 127.0.0.4: only the digest identifies this caller.
    let upstream_elsewhere = "";
    let sink = WebhookSink::start().await;
    let (_plan_dir, plan_path) = plan_file(plan);
    let (_fake, provider) = common::agent::provider().await;
    let config = SwitchConfig::new(far.addr())
        .numbers(&["+12025551234", common::agent::AGENT_NUMBER])
        .extra(&format!(
            "{digest_trunk}{upstream_elsewhere}\n[dialplan]\nfile = {:?}\n\n[[tenants]]\nname = \"acme\"\nwebhook_url = {:?}\n{provider}",
            plan_path.display().to_string(),
            sink.url()
        ));
    let switch = SwitchProcess::start(config).await;
    let api = switch.api("acme", "owner").await;
    let agent_id = common::agent::assign(&api).await;
    let secret = api.webhook_secret().await;
    let mut h = Inbound {
        switch,
        api,
        secret,
        sink,
        _plan: _plan_dir,
    };
    // uac_digest: INVITE, 401, ACK, INVITE with Authorization, 200, ACK, pause, BYE.
    let caller = Sipp::builder("uac_digest.xml")
        .remote(h.switch.sip_udp())
        .ip("127.0.0.4")
        .auth("carrier", "s3cret")
        .pause_ms(30_000)
        .timeout(Duration::from_secs(40))
        .spawn();
    let events = h.events_until("call.in_progress").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["agent_id"], agent_id.as_str());
    assert_eq!(call["metadata"]["source_trunk"], "digest-carrier");
    let id = call["id"].as_str().expect("id").to_owned();
    let (status, body) = h.api.hangup(&id).await;
    assert_eq!(status, 200, "{body}");
    let events = h.events_until("call.completed").await;
    let done = &events.last().expect("events")["data"]["call"];
    assert_eq!(done["end_reason"], "hangup", "{done}");
    // SIPp gets our BYE while pausing; it counts that as an unexpected message, so only
    // check that it saw the BYE.
    let outcome = caller.wait().await;
    assert!(
        outcome.messages.contains("BYE sip:"),
        "the caller got our BYE:\n{}",
        outcome.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_digest_password_is_403() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let plan = "[[rules]]\nname = \"to-agent\"\nto = { prefix = \"+1\" }\nagent = \"agt_x\"\n";
    let digest_trunk = "[[trunks]]\nname = \"digest-carrier\"\nuri = \"sip:127.0.0.1:5998\"\n\
        inbound_username = \"carrier\"\ninbound_password = \"s3cret\"\ntenant = \"acme\"\n";
    let (_plan_dir, plan_path) = plan_file(plan);
    let config = SwitchConfig::new(far.addr()).extra(&format!(
        "{digest_trunk}\n[dialplan]\nfile = {:?}\n",
        plan_path.display().to_string(),
    ));
    let switch = SwitchProcess::start(config).await;
    let caller = Sipp::builder("uac_digest.xml")
        .remote(switch.sip_udp())
        .ip("127.0.0.4")
        .auth("carrier", "wrong")
        .spawn();
    let outcome = caller.wait().await;
    assert!(
        outcome.messages.contains("SIP/2.0 403"),
        "{}\n{}",
        outcome.messages,
        switch.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_hold_and_unhold_get_the_mirrored_direction() {
    // The far end checks the switch's re-INVITEs: sendonly (the hold), then sendrecv.
    let far = Sipp::uas("uas_rtp_held.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    // The scenario itself checks recvonly for sendonly and sendrecv for sendrecv.
    let caller = Sipp::builder("uac_call_hold.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(300)
        .spawn();
    caller
        .wait()
        .await
        .assert_success("caller holding and resuming");
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["end_reason"], "caller_bye", "never a hang-up on hold");
    far.wait().await.assert_success("far end held and resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_timer_expiry_ends_the_call() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let plan = "[[rules]]\nname = \"to-agent\"\nto = { prefix = \"+1\" }\nagent = \"agt_x\"\n";
    let (mut h, _agent) =
        common::agent::start_with_agent(far.addr(), plan, "[sip]\nmin_se_s = 2\n").await;
    // Asks for 4 s with itself as refresher, then never refreshes: the switch must BYE.
    let caller = Sipp::builder("uac_call_timer.xml")
        .remote(h.switch.sip_udp())
        .timeout(Duration::from_secs(20))
        .spawn();
    caller
        .wait()
        .await
        .assert_success("caller that never refreshes");
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["end_reason"], "session_expired", "{}", h.switch.logs());
    let secs = call["duration_seconds"].as_i64().unwrap_or(-1);
    assert!(
        (2..=4).contains(&secs),
        "expired after {secs} s of a 4 s interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_is_limited_while_a_carrier_call_completes() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let mut h = start(
        far.addr(),
        TRANSIT_PLAN,
        "[sip]\nrate_limit_per_s = 20\nrate_limit_burst = 20\n",
    )
    .await;
    // 127.0.0.3 hammers the switch with INVITEs (SIPp's built-in caller at 400/s).
    let flood_started = std::time::Instant::now();
    let flood = Sipp::builder("uac")
        .remote(h.switch.sip_udp())
        .ip("127.0.0.3")
        .arg("-r")
        .arg("400")
        .calls(2000)
        .timeout(Duration::from_secs(15))
        .spawn();
    let caller = Sipp::builder("uac_call.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(1000)
        .spawn();
    caller
        .wait()
        .await
        .assert_success("the carrier's call during the flood");
    let events = h.events_until("call.completed").await;
    assert_eq!(
        events.last().expect("events")["data"]["call"]["end_reason"],
        "caller_bye"
    );
    let metrics = h.switch.metrics().await;
    let limited = SwitchProcess::metric(&metrics, "switchyard_sip_rate_limited_total")
        .expect("rate-limited counter");
    let forbidden = SwitchProcess::metric(
        &metrics,
        "switchyard_inbound_invites_total{outcome=\"forbidden\"}",
    )
    .expect("forbidden counter");
    assert!(
        limited >= 100,
        "flood datagrams dropped: {limited}\n{metrics}"
    );
    // The bucket lets through its burst plus 20/s for as long as the flood has run.
    let allowed = 20 + (20.0 * flood_started.elapsed().as_secs_f64()).ceil() as u64;
    assert!(
        forbidden <= allowed,
        "only the burst plus 20/s reached the dialplan: {forbidden} > {allowed}"
    );
    drop(flood);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_to_a_carrier_is_refreshed_and_visible() {
    let registrar = Sipp::builder("uas_registrar.xml")
        .timeout(Duration::from_secs(30))
        .spawn();
    let far = Sipp::uas("uas_answer_hold.xml");
    let trunk = format!(
        "[[trunks]]\nname = \"registered\"\nuri = \"sip:{}\"\nusername = \"user\"\npassword = \"secret\"\n\
         register = true\nregister_expires = 10\ntenant = \"acme\"\n",
        registrar.addr()
    );
    let h = start(far.addr(), TRANSIT_PLAN, &trunk).await;
    let admin = h.switch.api("acme", "admin").await;
    // The registrar's scenario ends after answering the refresh.
    registrar
        .wait()
        .await
        .assert_success("registrar saw REGISTER, auth, refresh");
    let (status, trunks) = admin.request(reqwest::Method::GET, "/trunks", None).await;
    assert_eq!(status, 200, "{trunks}");
    let reg = trunks["data"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "registered"))
        .expect("trunk listed")
        .clone();
    assert_eq!(reg["registration"]["state"], "registered", "{reg}");
    assert_eq!(reg["registration"]["expires"], 10, "{reg}");
    let metrics = h.switch.metrics().await;
    assert!(
        metrics.contains("switchyard_trunk_registered{trunk=\"registered\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_transfer_refers_the_far_end_and_ends_the_call_transferred() {
    let carrier = Sipp::uas("uas_answer_refer.xml");
    let mut h = common::harness::setup(&carrier, |c| c).await;
    let id = h.call(serde_json::json!({})).await;
    h.expect_events(
        &id,
        &["call.initiating", "call.ringing", "call.in_progress"],
    )
    .await;
    let (status, body) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/transfer"),
            Some(&serde_json::json!({"to": "+14155550000"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let mut seen = Vec::new();
    loop {
        let e = h.event().await;
        let t = e["type"].as_str().unwrap_or_default().to_owned();
        seen.push(e);
        if t == "call.completed" {
            break;
        }
        assert!(seen.len() < 10, "{seen:#?}");
    }
    let done = &seen.last().expect("events")["data"]["call"];
    assert_eq!(done["end_reason"], "transferred", "{}", h.switch.logs());
    assert!(
        seen.iter().any(|e| e["type"] == "call.transfer"),
        "transfer progress reported: {seen:#?}"
    );
    carrier
        .wait()
        .await
        .assert_success("carrier honouring the REFER");
    // A bad target is a 400 with a field.
    let (status, body) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/transfer"),
            Some(&serde_json::json!({"to": "nowhere"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "VALIDATION_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_cli_explains_and_check_config_names_the_bad_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("plan.toml"),
        "default_country_code = \"1\"\n\n[[rules]]\nname = \"premium\"\nto = { prefix = \"+1900\" }\nreject = 403\n\n\
         [[rules]]\nname = \"us\"\nto = { prefix = \"+1\" }\ntrunks = [\"carrier\"]\n",
    )
    .expect("plan");
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        "[dialplan]\nfile = \"plan.toml\"\n\n[[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:5070\"\n",
    )
    .expect("config");
    let out = std::process::Command::new(common::switch::switch_bin())
        .args([
            "route",
            "--from",
            "2025550100",
            "--to",
            "4155552671",
            "--config",
        ])
        .arg(&config)
        .output()
        .expect("route");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("route: trunks carrier"), "{text}");
    assert!(text.contains("rule: us"), "{text}");
    assert!(text.contains("\"premium\" skipped"), "{text}");
    assert!(text.contains("to: +14155552671"), "{text}");

    // A rule naming a trunk that does not exist: check-config names rule and line.
    std::fs::write(
        dir.path().join("plan.toml"),
        "[[rules]]\nname = \"us\"\nto = { prefix = \"+1\" }\ntrunks = [\"nope\"]\n",
    )
    .expect("plan");
    let out = std::process::Command::new(common::switch::switch_bin())
        .arg("check-config")
        .arg(&config)
        .output()
        .expect("check-config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("\"us\""), "{err}");
    assert!(err.contains("line"), "{err}");
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_forwards_zero_is_483_and_transit_decrements_it() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let h = start(far.addr(), TRANSIT_PLAN, "").await;
    let looped = Sipp::builder("uac_expect_483.xml")
        .remote(h.switch.sip_udp())
        .spawn();
    looped
        .wait()
        .await
        .assert_success("INVITE with Max-Forwards: 0");
    let caller = Sipp::builder("uac_call.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(200)
        .spawn();
    caller.wait().await.assert_success("caller");
    let far = far.wait().await;
    far.assert_success("far end");
    assert!(
        far.messages.contains("Max-Forwards: 69"),
        "B2BUA passes Max-Forwards on, decremented:\n{}",
        far.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_over_tcp_from_the_caller() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let caller = Sipp::builder("uac_call.xml")
        .remote(h.switch.sip_tcp())
        .tcp()
        .pause_ms(300)
        .spawn();
    caller.wait().await.assert_success("caller over TCP");
    let events = h.events_until("call.completed").await;
    assert_eq!(
        events.last().expect("events")["data"]["call"]["end_reason"],
        "caller_bye"
    );
    drop(far);
}

/// The callee's carrier transfers the caller (REFER): the switch calls the target through
/// the dialplan, puts it on the bridge in the referrer's place, reports NOTIFY 100/200 and
/// hangs up the referrer; the caller never notices and later hangs up on the new party.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refer_from_the_carrier_transfers_a_transit_call() {
    let referrer = Sipp::uas("uas_answer_then_refer.xml");
    let target = Sipp::uas("uas_answer_hold.xml");
    let plan = "[[rules]]\nname = \"transfer-target\"\nto = { exact = \"+14155550111\" }\n\
                trunks = [\"third\"]\n\n\
                [[rules]]\nname = \"us\"\nto = { prefix = \"+1\" }\ntrunks = [\"carrier\"]\n";
    let third = format!(
        "[[trunks]]\nname = \"third\"\nuri = \"sip:{}\"\ntenant = \"acme\"\n",
        target.addr()
    );
    let mut h = start(referrer.addr(), plan, &third).await;
    let caller = Sipp::builder("uac_call.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(3000)
        .spawn();
    referrer.wait().await.assert_success("referring callee");
    caller.wait().await.assert_success("caller");
    let target = target.wait().await;
    target.assert_success("transfer target (BYE from the switch when the caller hung up)");
    assert!(
        target.messages.contains("INVITE sip:+14155550111@"),
        "{}",
        target.messages
    );
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["end_reason"], "caller_bye", "{}", h.switch.logs());
    assert_eq!(call["metadata"]["transferred"], true);
}

/// The far end sends early media reliably (183 + SDP, Require: 100rel): the switch PRACKs
/// it, bridges it, and relays a 183 with its own SDP to the caller before the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_183_with_100rel_is_pracked_and_relayed_to_the_caller() {
    let far = Sipp::uas("uas_early_media_100rel.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let caller = Sipp::builder("uac_call.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(300)
        .spawn();
    let caller = caller.wait().await;
    caller.assert_success("caller");
    far.wait()
        .await
        .assert_success("far end checking the PRACK");
    let got_183 = caller
        .messages
        .split("SIP/2.0 183")
        .nth(1)
        .unwrap_or_default();
    // SIPp separates logged messages with a line of dashes.
    let block = got_183.split("-----").next().unwrap_or_default();
    assert!(
        block.contains("application/sdp") && block.contains("m=audio"),
        "the caller's 183 carries our SDP:\n{}",
        caller.messages
    );
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
}

/// OPTIONS keep-alive: a trunk whose probes get 503 is marked down (API and metrics) and
/// the dialplan's failover skips it without sending it the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_marks_a_sick_trunk_down_and_failover_skips_it() {
    let sick = Sipp::builder("uas_options_503.xml")
        .calls(1000)
        .timeout(Duration::from_secs(30))
        .spawn();
    let good = Sipp::uas("uas_answer_hold.xml");
    let plan =
        "[[rules]]\nname = \"us\"\nto = { prefix = \"+1\" }\ntrunks = [\"sick\", \"carrier\"]\n";
    let sick_trunk = format!(
        "[[trunks]]\nname = \"sick\"\nuri = \"sip:{}\"\nkeepalive_interval_s = 1\ntenant = \"acme\"\n",
        sick.addr()
    );
    let mut h = start(good.addr(), plan, &sick_trunk).await;
    let admin = h.switch.api("acme", "admin").await;
    // Wait (bounded) for the first probe's answer to land in the trunk state.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, trunks) = admin.request(reqwest::Method::GET, "/trunks", None).await;
        let state = trunks["data"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["name"] == "sick"))
            .map(|t| t["status"].clone());
        if state == Some(Value::from("down")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never marked down: {trunks}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caller = Sipp::builder("uac_call.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(200)
        .spawn();
    caller.wait().await.assert_success("caller");
    let events = h.events_until("call.completed").await;
    assert_eq!(
        events.last().expect("events")["data"]["call"]["trunk"],
        "carrier"
    );
    let metrics = h.switch.metrics().await;
    assert!(
        metrics.contains("switchyard_trunk_up{trunk=\"sick\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_trunk_skipped_total 1"),
        "{metrics}"
    );
    drop(sick);
    drop(good);
}

/// The dialplan is swapped by `POST /api/v1/dialplan/reload` without a restart; a plan that
/// does not validate is refused with its problem and the running one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialplan_reload_by_api_takes_effect_and_refuses_a_bad_plan() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let closed = "[[rules]]\nname = \"closed\"\nto = { prefix = \"+1\" }\nreject = 403\n";
    let mut h = start(far.addr(), closed, "").await;
    // The dial plan spans tenants: the switch operator's key reloads it.
    let admin = h.switch.api("acme", "operator").await;
    let refused = Sipp::builder("uac_expect_403.xml")
        .remote(h.switch.sip_udp())
        .spawn();
    refused.wait().await.assert_success("closed plan");

    let plan_path = h.plan_path();
    std::fs::write(
        &plan_path,
        "[[rules]]\nname = \"bad\"\nto = { prefix = \"+1\" }\ntrunks = [\"nope\"]\n",
    )
    .expect("write plan");
    let (status, body) = admin
        .request(reqwest::Method::POST, "/dialplan/reload", None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("nope"),
        "{body}"
    );
    let still_closed = Sipp::builder("uac_expect_403.xml")
        .remote(h.switch.sip_udp())
        .spawn();
    still_closed.wait().await.assert_success("old plan kept");

    std::fs::write(&plan_path, TRANSIT_PLAN).expect("write plan");
    let (status, body) = admin
        .request(reqwest::Method::POST, "/dialplan/reload", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["rules"], 1);
    let member = h.switch.api("acme", "member").await;
    let (status, _) = member
        .request(reqwest::Method::POST, "/dialplan/reload", None)
        .await;
    assert_eq!(status, 403, "members cannot reload");
    // Nor can a tenant's owner: that is the switch administrator's.
    let owner = h.switch.api("acme", "owner").await;
    let (status, body) = owner
        .request(reqwest::Method::POST, "/dialplan/reload", None)
        .await;
    assert_eq!(status, 403, "a tenant owner reloaded the dial plan: {body}");
    let caller = Sipp::builder("uac_call.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(200)
        .spawn();
    caller.wait().await.assert_success("open plan");
    h.events_until("call.completed").await;
    drop(far);
}

/// The caller gives up while the far end rings: our CANCEL follows on leg B, the caller gets
/// its 487, and the call ends `cancelled` / `caller_cancel`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancel_while_ringing_cancels_the_far_end() {
    let far = Sipp::uas("uas_ring_no_answer.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let caller = Sipp::builder("uac_cancel.xml")
        .remote(h.switch.sip_udp())
        .spawn();
    caller.wait().await.assert_success("caller cancelling");
    far.wait()
        .await
        .assert_success("far end receiving the CANCEL");
    let events = h.events_until("call.cancelled").await;
    assert_eq!(
        types(&events),
        ["call.initiating", "call.ringing", "call.cancelled"]
    );
    assert_eq!(
        events[2]["data"]["call"]["end_reason"],
        "caller_cancel",
        "{}",
        h.switch.logs()
    );
}
