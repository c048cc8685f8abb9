//! Masked calls and messages against the real binary: SIPp as participant A calling its
//! proxy number through a carrier trunk, SIPp as participant B's carrier receiving the
//! call; the bytes B received checked for the caller id (the proxy number) and for any
//! trace of A's number; the reverse direction; callers in no session refused (a code, an
//! announcement as early media); messages over HTTP and SIP MESSAGE both ways.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::harness::GUARD;
use common::sipp::Sipp;
use common::transit::{Inbound, start};
use reqwest::Method;
use serde_json::{Value, json};

const ALICE: &str = "+14155550001";
const BOB: &str = "+14155550002";
const STRANGER: &str = "+14155550003";
const POOL: [&str; 2] = ["+14155559001", "+14155559002"];

/// Calls to the pool's numbers, from the upstream carrier, go to their proxy sessions.
const PLAN: &str = "[[rules]]\nname = \"masked\"\nto = { prefix = \"+141555590\" }\n\
    source_trunk = \"upstream\"\nproxy = true\n";

/// The switch: trunk "carrier" towards `far` (where both participants are reached), the
/// pool on it, and `extra` TOML.
async fn masked_switch(far: SocketAddr, extra: &str) -> Inbound {
    let mut pool = String::new();
    for n in POOL {
        pool.push_str(&format!(
            "[[proxy_numbers]]\nnumber = \"{n}\"\ntrunk = \"carrier\"\n\n"
        ));
    }
    start(far, PLAN, &format!("{pool}{extra}")).await
}

async fn open_session(h: &Inbound, options: Value) -> Value {
    let mut body = json!({"participants": [{"number": ALICE}, {"number": BOB}]});
    if let (Some(b), Some(o)) = (body.as_object_mut(), options.as_object()) {
        b.extend(o.clone());
    }
    let (code, resp) = h
        .api
        .request(Method::POST, "/proxy/sessions", Some(&body))
        .await;
    assert_eq!(code, 201, "{resp}");
    resp["data"].clone()
}

fn proxy_of(session: &Value, number: &str) -> String {
    session["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["number"] == number))
        .and_then(|p| p["proxy_number"].as_str())
        .expect("participant")
        .to_owned()
}

/// The SIP messages a SIPp received, split out of its `-trace_msg` log.
fn received(log: &str) -> Vec<String> {
    log.split("----------------------------------------------- ")
        .filter_map(|block| {
            let (head, msg) = block.split_once('\n')?;
            let _ = head;
            let msg = msg.trim_start();
            msg.contains("message received").then(|| {
                msg.split_once("\n\n")
                    .map_or(msg, |(_, m)| m)
                    .trim()
                    .to_owned()
            })
        })
        .collect()
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The national digits of an E.164 number: a leak shows as these whatever the prefix.
fn digits(n: &str) -> &str {
    &n[2..]
}

/// Checks what the callee's carrier received of one masked call from `caller` to `callee`.
fn assert_masked(messages: &[String], caller: &str, callee: &str, shown: &str) {
    let invite = messages
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("no INVITE among {messages:#?}"));
    let request_line = invite.lines().next().unwrap_or_default();
    assert!(
        request_line.contains(&format!("sip:{callee}@")),
        "{request_line}"
    );
    let from = header(invite, "From").expect("From");
    assert!(from.contains(&format!("<sip:{shown}@")), "From: {from}");
    let pai = header(invite, "P-Asserted-Identity").expect("P-Asserted-Identity");
    assert!(pai.contains(&format!("sip:{shown}@")), "PAI: {pai}");
    for m in messages {
        assert!(
            !m.contains(digits(caller)),
            "the caller's number reached the callee:\n{m}"
        );
    }
    for h in [
        "Remote-Party-ID",
        "Diversion",
        "History-Info",
        "Subject",
        "X-Original-Caller",
    ] {
        assert!(
            header(invite, h).is_none(),
            "{h} was passed through:\n{invite}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_masked_call_shows_only_the_proxy_number_both_ways() {
    let far = Sipp::builder("uas_answer_hold.xml").calls(2).spawn();
    let mut h = masked_switch(far.addr(), "").await;
    let session = open_session(
        &h,
        json!({"webhook_url": h.sink.url(), "record": true, "max_call_duration": 30}),
    )
    .await;
    let sid = session["id"].as_str().expect("id").to_owned();
    let (alice_proxy, bob_proxy) = (proxy_of(&session, ALICE), proxy_of(&session, BOB));

    // Alice dials her proxy number: Bob is called from his.
    let alice = Sipp::builder("masked_uac_call.xml")
        .remote(h.switch.sip_udp())
        .service(&alice_proxy)
        .arg("-key")
        .arg("caller")
        .arg(ALICE)
        // The Call-ID names the caller too: it must not reach the callee either.
        .arg("-cid_str")
        .arg(&format!("{ALICE}-%u-%p@%s"))
        .pause_ms(300)
        .spawn();
    alice.wait().await.assert_success("alice");
    let done = h
        .sink
        .next_matching(&h.secret, GUARD, |e| e["type"] == "call.completed")
        .await;
    let call = &done["data"]["call"];
    assert_eq!(call["proxy_session_id"], sid.as_str(), "{done}");
    assert_eq!(
        (call["from"].as_str(), call["to"].as_str()),
        (Some(ALICE), Some(BOB))
    );
    assert_eq!(call["direction"], "inbound");
    assert_eq!(call["max_duration"], 30, "the session's call time limit");
    // Recorded, both parties: a stereo WAV served by the calls API.
    let id = call["id"].as_str().expect("id");
    let url = format!("{}/api/v1/voice/calls/{id}/recording", h.api.base);
    assert_eq!(call["recording_url"], url.as_str(), "{done}");
    let wav = h
        .api
        .client
        .get(&url)
        .header("X-API-Key", &h.api.key)
        .send()
        .await
        .expect("GET recording");
    assert_eq!(wav.status(), 200);
    let wav = wav.bytes().await.expect("wav");
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "two channels");

    // Bob calls back his proxy number: Alice is called from hers.
    let bob = Sipp::builder("masked_uac_call.xml")
        .remote(h.switch.sip_udp())
        .service(&bob_proxy)
        .arg("-key")
        .arg("caller")
        .arg(BOB)
        // The Call-ID names the caller too: it must not reach the callee either.
        .arg("-cid_str")
        .arg(&format!("{BOB}-%u-%p@%s"))
        .pause_ms(300)
        .spawn();
    bob.wait().await.assert_success("bob");
    h.sink
        .next_matching(&h.secret, GUARD, |e| {
            e["type"] == "call.completed" && e["data"]["call"]["from"] == BOB
        })
        .await;
    let outcome = far.wait().await;
    outcome.assert_success("callee carrier");
    let messages = received(&outcome.messages);
    // Split by call: the first call's messages carry one Call-ID, the second's another.
    let first_call_id = messages
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .and_then(|m| header(m, "Call-ID"))
        .expect("Call-ID")
        .to_owned();
    let (first, second): (Vec<String>, Vec<String>) = messages
        .into_iter()
        .partition(|m| header(m, "Call-ID") == Some(first_call_id.as_str()));
    assert_masked(&first, ALICE, BOB, &bob_proxy);
    assert_masked(&second, BOB, ALICE, &alice_proxy);

    // Both calls are the session's interactions, newest first, with their calls' status.
    let (code, list) = h
        .api
        .request(
            Method::GET,
            &format!("/proxy/sessions/{sid}/interactions"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{list}");
    let items = list["data"].as_array().expect("data");
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["from_participant"], BOB);
    assert_eq!(items[0]["to_participant"], ALICE);
    assert_eq!(items[1]["from_participant"], ALICE);
    assert_eq!(items[1]["inbound_proxy_number"], alice_proxy.as_str());
    assert_eq!(items[1]["outbound_proxy_number"], bob_proxy.as_str());
    for i in items {
        assert_eq!(i["kind"], "voice");
        assert_eq!(i["status"], "completed", "{i}");
        let (code, c) = h
            .api
            .get_call(i["call_id"].as_str().expect("call_id"))
            .await;
        assert_eq!(code, 200);
        assert_eq!(c["data"]["proxy_session_id"], sid.as_str());
    }
}

/// Runs a caller from `caller` to `number` that expects a refusal; returns the final code.
async fn refused_code(h: &Inbound, caller: &str, number: &str) -> (u16, Vec<String>) {
    let sipp = Sipp::builder("masked_uac_refused.xml")
        .remote(h.switch.sip_udp())
        .service(number)
        .arg("-key")
        .arg("caller")
        .arg(caller)
        .spawn();
    let outcome = sipp.wait().await;
    outcome.assert_success("refused caller");
    let messages = received(&outcome.messages);
    let code = messages
        .iter()
        .filter_map(|m| m.strip_prefix("SIP/2.0 "))
        .filter_map(|m| m.get(..3)?.parse::<u16>().ok())
        .find(|c| *c >= 300)
        .expect("a final response");
    (code, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_in_no_open_session_are_never_connected() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let mut h = masked_switch(far.addr(), "").await;
    let session = open_session(
        &h,
        json!({"unknown_caller": {"sip_code": 480}, "webhook_url": h.sink.url()}),
    )
    .await;
    let sid = session["id"].as_str().expect("id").to_owned();
    let alice_proxy = proxy_of(&session, ALICE);
    // A stranger: the pool's choice (404).
    assert_eq!(refused_code(&h, STRANGER, &alice_proxy).await.0, 404);
    // Closed: Alice's own number no longer connects; the session chose 480.
    let (code, _) = h
        .api
        .request(Method::DELETE, &format!("/proxy/sessions/{sid}"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(refused_code(&h, ALICE, &alice_proxy).await.0, 480);
    // Expired: a new session with a 1 s ttl, refused once its expiry event is out.
    let short = open_session(
        &h,
        json!({"ttl_seconds": 1, "unknown_caller": {"sip_code": 480}, "webhook_url": h.sink.url()}),
    )
    .await;
    let short_id = short["id"].as_str().expect("id").to_owned();
    h.sink
        .next_matching(&h.secret, Duration::from_secs(10), |e| {
            e["type"] == "proxy.session.expired" && e["data"]["session"]["id"] == short_id.as_str()
        })
        .await;
    assert_eq!(
        refused_code(&h, ALICE, &proxy_of(&short, ALICE)).await.0,
        480
    );
    // Nothing reached the callee's carrier; no call was made.
    let (_, list) = h.api.list_calls("").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");
    assert_eq!(far.messages_so_far().matches("INVITE sip:").count(), 0);
}

/// A 16-bit mono WAV of `ms` of a square wave at 8 kHz.
fn square_wav(path: &std::path::Path, ms: u32) {
    let samples: Vec<i16> = (0..8 * ms)
        .map(|i| if (i / 4) % 2 == 0 { 12000 } else { -12000 })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&8000u32.to_le_bytes());
    b.extend_from_slice(&16000u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        b.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, b).expect("write wav");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_caller_hears_the_announcement_before_the_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    square_wav(&dir.path().join("not-in-service.wav"), 400);
    let far = Sipp::uas("uas_answer_hold.xml");
    let extra = format!(
        "[proxy]\nannouncements_dir = {:?}\nunknown_caller_sip_code = 480\n\
         unknown_caller_announcement = \"not-in-service.wav\"\n",
        dir.path().display().to_string()
    );
    let h = masked_switch(far.addr(), &extra).await;
    let session = open_session(&h, json!({})).await;
    // An announcement that is not in the directory is refused at creation.
    let (code, body) = h
        .api
        .request(
            Method::POST,
            "/proxy/sessions",
            Some(
                &json!({"participants": [{"number": STRANGER}, {"number": BOB}],
                "unknown_caller": {"announcement": "nope.wav"}}),
            ),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["details"][0]["field"], "unknown_caller.announcement");

    let capture = common::capture::Capture::start("udp and src portrange 30000-30999").await;
    let (code, messages) = refused_code(&h, STRANGER, &proxy_of(&session, ALICE)).await;
    assert_eq!(code, 480);
    let early = messages
        .iter()
        .find(|m| m.starts_with("SIP/2.0 183"))
        .expect("a 183 with the announcement");
    assert!(early.contains("m=audio "), "{early}");
    // The announcement's RTP: 400 ms of a loud square wave in PCMU, so about 20
    // packets that are not G.711 silence, sent to SIPp's media port.
    let port = early
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("our media port");
    let packets = capture.finish().await;
    let loud = packets
        .iter()
        .filter(|d| d.src_port == port && d.payload.len() > 12)
        .filter(|d| d.payload[12..].iter().any(|&b| b != 0xff && b != 0x7f))
        .count();
    let ports: std::collections::BTreeSet<(u16, u16)> =
        packets.iter().map(|d| (d.src_port, d.dst_port)).collect();
    assert!(
        (17..=23).contains(&loud),
        "{loud} announcement packets from {port}; seen {ports:?}\n{}",
        h.switch.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_relayed_both_ways_over_http_and_sip() {
    let far = Sipp::builder("uas_message.xml").calls(2).spawn();
    let mut h = masked_switch(far.addr(), "[proxy]\nmax_message_bytes = 64\n").await;
    let session = open_session(&h, json!({"webhook_url": h.sink.url()})).await;
    let sid = session["id"].as_str().expect("id").to_owned();
    let (alice_proxy, bob_proxy) = (proxy_of(&session, ALICE), proxy_of(&session, BOB));

    // HTTP in (Alice texted her proxy number) → SIP MESSAGE out to Bob.
    let (code, resp) = h
        .api
        .request(
            Method::POST,
            "/proxy/inbound",
            Some(&json!({"from": ALICE, "to": alice_proxy, "body": "on my way"})),
        )
        .await;
    assert_eq!(code, 202, "{resp}");
    assert_eq!(resp["data"]["status"], "sending");
    let delivered = h
        .sink
        .next_matching(&h.secret, GUARD, |e| {
            e["type"] == "proxy.interaction" && e["data"]["interaction"]["status"] != "sending"
        })
        .await;
    assert_eq!(
        delivered["data"]["interaction"]["status"], "delivered",
        "{delivered}"
    );

    // An unknown pair, and a body over the limit: refused, nothing sent.
    let (code, resp) = h
        .api
        .request(
            Method::POST,
            "/proxy/inbound",
            Some(&json!({"from": STRANGER, "to": alice_proxy, "body": "hi"})),
        )
        .await;
    assert_eq!(
        (code, resp["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{resp}"
    );
    let (code, resp) = h
        .api
        .request(
            Method::POST,
            "/proxy/inbound",
            Some(&json!({"from": ALICE, "to": alice_proxy, "body": "x".repeat(65)})),
        )
        .await;
    assert_eq!(
        (code, resp["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE")),
        "{resp}"
    );

    // SIP MESSAGE in (Bob texted his proxy number through the upstream carrier) → out to
    // Alice.
    let bob = Sipp::builder("uac_message.xml")
        .remote(h.switch.sip_udp())
        .service(&bob_proxy)
        .arg("-key")
        .arg("caller")
        .arg(BOB)
        // The Call-ID names the caller too: it must not reach the callee either.
        .arg("-cid_str")
        .arg(&format!("{BOB}-%u-%p@%s"))
        .spawn();
    let bob_out = bob.wait().await;
    bob_out.assert_success("bob's carrier");
    assert!(
        received(&bob_out.messages)
            .iter()
            .any(|m| m.starts_with("SIP/2.0 202")),
        "{}",
        bob_out.messages
    );
    let second = h
        .sink
        .next_matching(&h.secret, GUARD, |e| {
            e["type"] == "proxy.interaction"
                && e["data"]["interaction"]["from_participant"] == BOB
                && e["data"]["interaction"]["status"] != "sending"
        })
        .await;
    assert_eq!(
        second["data"]["interaction"]["status"], "delivered",
        "{second}"
    );

    let outcome = far.wait().await;
    outcome.assert_success("callee carrier");
    let messages: Vec<String> = received(&outcome.messages)
        .into_iter()
        .filter(|m| m.starts_with("MESSAGE "))
        .collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let to_bob = &messages[0];
    assert!(
        to_bob
            .lines()
            .next()
            .unwrap_or_default()
            .contains(&format!("sip:{BOB}@"))
    );
    assert!(
        header(to_bob, "From")
            .expect("From")
            .contains(&format!("<sip:{bob_proxy}@"))
    );
    assert!(to_bob.ends_with("on my way"), "{to_bob}");
    assert!(!to_bob.contains(digits(ALICE)), "{to_bob}");
    let to_alice = &messages[1];
    assert!(
        to_alice
            .lines()
            .next()
            .unwrap_or_default()
            .contains(&format!("sip:{ALICE}@"))
    );
    assert!(
        header(to_alice, "From")
            .expect("From")
            .contains(&format!("<sip:{alice_proxy}@"))
    );
    assert!(to_alice.ends_with("see you soon"), "{to_alice}");
    assert!(!to_alice.contains(digits(BOB)), "{to_alice}");

    let (code, list) = h
        .api
        .request(
            Method::GET,
            &format!("/proxy/sessions/{sid}/interactions"),
            None,
        )
        .await;
    assert_eq!(code, 200);
    let items = list["data"].as_array().expect("data");
    assert_eq!(items.len(), 2, "{list}");
    for i in items {
        assert_eq!(
            (i["kind"].as_str(), i["status"].as_str()),
            (Some("messaging"), Some("delivered"))
        );
    }
    // "on my way" over HTTP; SIPp ends its body with a line break.
    assert_eq!(items[1]["body_bytes"], 9);
    assert!(
        (12..=14).contains(&items[0]["body_bytes"].as_i64().unwrap_or(0)),
        "{list}"
    );
}
