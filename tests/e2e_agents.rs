//! AI voice agents against the real binary: a SIPp carrier that plays a 1 kHz tone is
//! called through the API with an `agent_id`; the agent's model provider is a local
//! server that speaks the provider's wire protocol (`common::fake_realtime`), and its
//! Server URL a local HTTP server written here.
//!
//! Checked: the session setup (prompt, voice, tools with the built-ins), the greeting
//! asked for first and its audio (440 Hz at 24 kHz) arriving at the far end; the
//! caller's tone arriving at the provider at 24 kHz; a tool call posted to the Server
//! URL with its signature verified and the answer returned to the model; a barge-in
//! that flushes the answer being played and tells the provider how much was heard;
//! `end_call` hanging the call up after the goodbye; the conversation and its transcript
//! in the API.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use base64::Engine as _;
use common::Sipp;
use common::fake_realtime::{
    Action, FakeRealtime, Flavor, Trigger, openai_audio, openai_function_call,
    openai_response_done, tone,
};
use common::fixtures::{goertzel, scenario_with_fixtures};
use common::harness::{self, Harness};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

const SECRET: &str = "agent-server-secret";

/// Requests the Server URL received: headers and raw body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// The agent's Server URL: answers `agent:tool-call` with an order status and
/// `agent:assistant-request` with a prompt.
async fn server_url() -> (String, Seen) {
    let seen: Seen = Arc::default();
    async fn hook(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> axum::Json<Value> {
        let event: Value = serde_json::from_slice(&body).unwrap_or_default();
        seen.lock().unwrap().push((headers, body));
        match event["type"].as_str() {
            Some("agent:assistant-request") => axum::Json(json!({
                "instructions": "Dynamic instructions for this caller.",
                "greeting": "Hello from the dynamic greeting.",
            })),
            _ => axum::Json(
                json!({"status": "shipped", "order_id": event["tool_call"]["arguments"]["order_id"]}),
            ),
        }
    }
    // An http agent's own tool: GET with the arguments in the query.
    async fn orders(
        State(seen): State<Seen>,
        headers: HeaderMap,
        axum::extract::RawQuery(query): axum::extract::RawQuery,
    ) -> axum::Json<Value> {
        let query = query.unwrap_or_default();
        seen.lock()
            .unwrap()
            .push((headers, Bytes::from(format!("GET /orders?{query}"))));
        axum::Json(json!({"status": "packed", "query": query}))
    }
    let app = Router::new()
        .route("/hook", axum::routing::post(hook))
        .route("/orders", axum::routing::get(orders))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), seen)
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Creates an agent from `body` and activates it; its id.
async fn active_agent(h: &Harness, body: Value) -> String {
    common::agent::create_active(&h.api, body).await
}

/// Callbacks until the call ends; the last one (the switch's log on a timeout).
async fn until_ended(h: &mut Harness) -> Value {
    loop {
        let Some(r) = h.sink.try_next_event(harness::GUARD).await else {
            panic!("the call did not end\n{}", h.switch.logs());
        };
        let e = h.sink.verify(&h.secret, &r);
        if e["type"] == "call.completed" || e["type"] == "call.failed" {
            return e;
        }
    }
}

fn pcm_of(b64: &str) -> Vec<i16> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn ulaw(bytes: &[u8]) -> Vec<i16> {
    bytes
        .iter()
        .map(|&b| media::g711::ulaw_to_linear(b))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_agent_greets_calls_a_tool_is_interrupted_and_hangs_up() {
    let (hook_url, seen) = server_url().await;
    let greeting_tone = tone(440.0, 24_000, 1200);
    let answer_tone = tone(660.0, 24_000, 4000);
    let fake = FakeRealtime::builder(Flavor::OpenAi)
        // The greeting, asked for first.
        .step(Trigger::Received("response.create"), {
            let mut a = openai_audio("item_greet", &greeting_tone, 6);
            a.push(Action::Send(json!({
                "type": "response.output_audio_transcript.done", "event_id": "event_tr",
                "response_id": "resp_greet", "item_id": "item_greet", "output_index": 0,
                "content_index": 0, "transcript": "Thanks for calling Acme.",
            })));
            a.push(openai_response_done("resp_greet"));
            a
        })
        // Once the caller has talked a while: a tool call.
        .step(Trigger::InputAudioMs(1500), {
            let mut a = vec![Action::Send(json!({
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "event_user1", "item_id": "item_user1", "content_index": 0,
                "transcript": "Where is my order A1?",
            }))];
            a.extend(openai_function_call(
                "call_lookup",
                "lookup_order",
                &json!({"order_id": "A1"}),
            ));
            a.push(openai_response_done("resp_fc"));
            a
        })
        // The tool's answer came back: a long reply, interrupted by the caller.
        .step(Trigger::Received("conversation.item.create"), {
            let mut a = openai_audio("item_answer", &answer_tone, 20);
            a.push(Action::Sleep(Duration::from_millis(800)));
            a.push(Action::Send(json!({
                "type": "input_audio_buffer.speech_started", "event_id": "event_ss",
                "audio_start_ms": 4000, "item_id": "item_user2",
            })));
            a
        })
        // Told what was heard: the agent says goodbye and ends the call.
        .step(Trigger::Received("conversation.item.truncate"), {
            let mut a = openai_function_call("call_end", "end_call", &json!({}));
            a.push(openai_response_done("resp_end"));
            a
        })
        .spawn()
        .await;

    let (_dir, scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = Sipp::builder(scenario.to_str().unwrap()).spawn();
    let provider = format!(
        "[agents.providers.openai]\nurl = \"{}\"\napi_key = \"test-key\"\n",
        fake.url
    );
    let mut h = harness::setup(&far, |c| c.rtp_ports(36300, 36399).extra(&provider)).await;
    let agent_id = active_agent(
        &h,
        json!({
            "name": "Order desk",
            "model": "gpt-realtime",
            "agent_type": "webhook",
            "server_url": hook_url,
            "server_secret": SECRET,
            "server_headers": {"x-tenant-tag": "acme-orders"},
            "identity": "You are Acme's order desk.",
            "instructions": "Look orders up with lookup_order.",
            "voice_name": "marin",
            "greeting_type": "static",
            "static_greeting": "Thanks for calling Acme.",
        }),
    )
    .await;
    let (code, tool) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/agents/{agent_id}/tools"),
            Some(&json!({
                "name": "lookup_order",
                "description": "Find an order by id.",
                "parameter_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
            })),
        )
        .await;
    assert_eq!(code, 201, "{tool}");

    let capture = common::capture::Capture::start("udp and src portrange 36300-36399").await;
    let id = h.call(json!({"agent_id": agent_id})).await;

    // The call runs until the agent's `end_call`.
    let mut types = Vec::new();
    let done = loop {
        let e = h.event().await;
        assert_eq!(e["data"]["call"]["id"], id.as_str(), "{e}");
        let t = e["type"].as_str().unwrap().to_owned();
        types.push(t.clone());
        if t == "call.completed" || t == "call.failed" {
            break e;
        }
        assert!(types.len() < 20, "{types:?}");
    };
    assert_eq!(
        done["type"],
        "call.completed",
        "{done}\n{}",
        h.switch.logs()
    );
    assert_eq!(done["data"]["call"]["end_reason"], "stream_ended", "{done}");
    assert_eq!(done["data"]["call"]["agent_id"], agent_id.as_str());
    assert!(
        types.iter().any(|t| t == "call.stream.started"),
        "{types:?}"
    );
    far.wait().await.assert_success("far end");
    let metrics = h.switch.metrics().await;
    for line in [
        "switchyard_agent_sessions_active 0",
        "switchyard_agent_sessions_ended_total{outcome=\"completed\"} 1",
        "switchyard_agent_tool_calls_total 2",
        "switchyard_agent_tool_failures_total 0",
        "switchyard_agent_barge_ins_total 1",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }

    // The setup: the prompt, the voice, the tools with the built-ins.
    let update = fake.log(|l| l.of_kind(Flavor::OpenAi, "session.update"));
    let session = &update.first().expect("session.update")["session"];
    let instructions = session["instructions"].as_str().unwrap();
    assert!(
        instructions.contains("order desk") && instructions.contains("lookup_order"),
        "{instructions}"
    );
    assert_eq!(session["audio"]["output"]["voice"], "marin", "{session}");
    let tools: Vec<&str> = session["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    for name in ["lookup_order", "end_call", "transfer_call"] {
        assert!(tools.contains(&name), "{tools:?}");
    }
    // The greeting is the first response asked for.
    let kinds = fake.log(|l| l.kinds(Flavor::OpenAi));
    let first_response = kinds.iter().position(|k| k == "response.create").unwrap();
    let first_audio = kinds.iter().position(|k| k == "input_audio_buffer.append");
    let creates = fake.log(|l| l.of_kind(Flavor::OpenAi, "response.create"));
    let greet = creates[0].to_string();
    assert!(greet.contains("Thanks for calling Acme."), "{greet}");
    assert!(first_audio.is_none_or(|a| a > 0) && first_response > 0);

    // The caller's 1 kHz tone reached the provider at 24 kHz.
    let appended: Vec<i16> = fake
        .log(|l| l.of_kind(Flavor::OpenAi, "input_audio_buffer.append"))
        .iter()
        .flat_map(|m| pcm_of(m["audio"].as_str().unwrap()))
        .collect();
    assert!(appended.len() >= 24_000, "{} samples", appended.len());
    let tail = &appended[appended.len() / 2..];
    assert!(
        goertzel(tail, 1000.0, 24_000.0) > 50.0 * goertzel(tail, 440.0, 24_000.0),
        "no 1 kHz tone at the provider"
    );

    // The tool call went to the Server URL, signed, with the agent's headers.
    let requests = seen.lock().unwrap().clone();
    let (headers, body) = requests
        .iter()
        .find(|(_, b)| String::from_utf8_lossy(b).contains("agent:tool-call"))
        .expect("a tool call at the Server URL");
    let signature = headers["x-switchyard-signature"].to_str().unwrap();
    assert_eq!(signature, format!("sha256={}", hmac_hex(SECRET, body)));
    assert_eq!(headers["x-tenant-tag"], "acme-orders");
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["tool_call"]["name"], "lookup_order");
    assert_eq!(event["tool_call"]["arguments"]["order_id"], "A1");
    assert_eq!(event["conversation"]["call_id"], id.as_str());
    // …and its answer went back to the model.
    let outputs = fake.log(|l| l.of_kind(Flavor::OpenAi, "conversation.item.create"));
    let output = outputs
        .iter()
        .find(|m| m["item"]["call_id"] == "call_lookup")
        .expect("the tool's output");
    assert!(
        output["item"]["output"]
            .as_str()
            .unwrap()
            .contains("shipped"),
        "{output}"
    );

    // The barge-in: the provider is told how much of the 4 s answer was heard (the
    // interruption came ~800 ms after the answer started arriving).
    let truncates = fake.log(|l| l.of_kind(Flavor::OpenAi, "conversation.item.truncate"));
    let heard = truncates[0]["audio_end_ms"].as_u64().unwrap();
    assert_eq!(truncates[0]["item_id"], "item_answer");
    assert!((300..=2000).contains(&heard), "heard {heard} ms");

    // What the far end got: the 440 Hz greeting, and of the 660 Hz answer no more than
    // what was heard (plus a packet or two).
    let packets = capture.finish().await;
    let pcm: Vec<i16> = packets
        .iter()
        .filter(|d| d.payload.len() == 172)
        .flat_map(|d| ulaw(&d.payload[12..]))
        .collect();
    let frames: Vec<&[i16]> = pcm.chunks(160).collect();
    let loud = |f: &&&[i16]| f.iter().any(|s| s.abs() > 4000);
    let greeting: Vec<i16> = frames
        .iter()
        .filter(loud)
        .filter(|f| goertzel(f, 440.0, 8000.0) > goertzel(f, 660.0, 8000.0))
        .flat_map(|f| f.iter().copied())
        .collect();
    assert!(
        greeting.len() >= 8000,
        "{} samples of greeting",
        greeting.len()
    );
    let answer_ms = frames
        .iter()
        .filter(loud)
        .filter(|f| goertzel(f, 660.0, 8000.0) > goertzel(f, 440.0, 8000.0))
        .count() as u64
        * 20;
    eprintln!(
        "greeting {} ms at the far end; answer {answer_ms} ms played, {heard} ms reported heard",
        greeting.len() / 8
    );
    assert!(
        answer_ms <= heard + 100,
        "{answer_ms} ms of the answer reached the caller, {heard} ms reported heard"
    );

    // The conversation, with its transcript.
    let list = conversations(&h.api, &agent_id).await;
    let conv = &list["data"][0];
    assert_eq!(conv["channel"], "voice", "{conv}");
    assert_eq!(conv["status"], "completed", "{conv}");
    assert_eq!(conv["contact"], "+14155552671", "{conv}");
    let (code, detail) = h
        .api
        .request(
            reqwest::Method::GET,
            &format!(
                "/agents/{agent_id}/conversations/{}",
                conv["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(code, 200, "{detail}");
    let transcript = detail["data"]["transcript"].as_array().unwrap();
    let roles: Vec<&str> = transcript
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    for role in ["assistant", "user", "tool_call", "tool_result"] {
        assert!(roles.contains(&role), "{role} missing: {roles:?}");
    }
    assert!(
        transcript
            .iter()
            .any(|m| m["text"] == "Where is my order A1?"),
        "{transcript:#?}"
    );
}

/// `[agents.providers.<name>]` pointing at a fake provider.
fn provider_toml(name: &str, fake: &FakeRealtime) -> String {
    format!(
        "[agents.providers.{name}]\nurl = \"{}\"\napi_key = \"test-key\"\n",
        fake.url
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_assigned_to_a_gemini_agent_answers_inbound_calls() {
    let greeting_tone = tone(440.0, 24_000, 1000);
    let fake = FakeRealtime::builder(Flavor::Gemini)
        .step(Trigger::Received("realtimeInput.text"), {
            let mut a = common::fake_realtime::gemini_audio(&greeting_tone, 5);
            a.push(Action::Send(json!({ "serverContent": { "outputTranscription": { "text": "Hello, Acme here." } } })));
            a.push(Action::Send(json!({ "serverContent": { "turnComplete": true } })));
            a
        })
        .step(
            Trigger::InputAudioMs(1000),
            vec![
                Action::Send(json!({ "serverContent": { "inputTranscription": { "text": "Bye now.", "finished": true } } })),
                Action::Send(json!({
                    "toolCall": { "functionCalls": [{ "id": "fc-end", "name": "end_call", "args": {} }] }
                })),
            ],
        )
        .spawn()
        .await;
    let carrier = Sipp::uas("uas_answer_hold.xml");
    // Without the assignment the plan would send +1… on to the carrier.
    let mut h = common::transit::start_with(
        carrier.addr(),
        common::transit::TRANSIT_PLAN,
        &provider_toml("gemini", &fake),
        |c| {
            c.rtp_ports(36600, 36699)
                .numbers(&["+12025551234", "+14155552671"])
        },
    )
    .await;
    let agent_id = common::agent::create_active(
        &h.api,
        json!({
            "name": "Front desk",
            "model": "gemini-2.5-flash-native-audio-preview-09-2025",
            "agent_type": "static",
            "identity": "You are the front desk of Acme Clinic.",
            "instructions": "Answer questions and say goodbye.",
            "voice_name": "Aoede",
            "language": "en-US",
            "greeting_type": "static",
            "static_greeting": "Thanks for calling Acme Clinic.",
            "phone_number_assignments": [{"phone_number": "+14155552671"}],
        }),
    )
    .await;

    let (_dir, scenario) = scenario_with_fixtures("bridge_uac_pcmu_tone_remote_bye.xml");
    let caller = Sipp::builder(scenario.to_str().unwrap())
        .remote(h.switch.sip_udp())
        .spawn();
    // The agent's `end_call` hangs up on the caller.
    caller.wait().await.assert_success("caller");
    let events = h.events_until("call.completed").await;
    let done = &events.last().unwrap()["data"]["call"];
    assert_eq!(done["agent_id"], agent_id.as_str(), "{done}");
    assert_eq!(done["metadata"]["route"], "agent", "{done}");
    assert_eq!(done["end_reason"], "stream_ended", "{done}");

    // The Gemini setup: key in the query, the model, voice, language, prompt.
    let handshake = fake.log(|l| l.handshakes[0].query.get("key").cloned());
    assert_eq!(handshake.as_deref(), Some("test-key"));
    let setup = fake.log(|l| l.of_kind(Flavor::Gemini, "setup"))[0]["setup"].clone();
    assert_eq!(
        setup["model"],
        "models/gemini-2.5-flash-native-audio-preview-09-2025"
    );
    let speech = &setup["generationConfig"]["speechConfig"];
    assert_eq!(
        speech["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"], "Aoede",
        "{setup}"
    );
    assert_eq!(speech["languageCode"], "en-US", "{setup}");
    assert!(
        setup["systemInstruction"]
            .to_string()
            .contains("Acme Clinic"),
        "{setup}"
    );
    // The caller's tone at Gemini's 16 kHz input.
    let input: Vec<i16> = fake
        .log(|l| l.of_kind(Flavor::Gemini, "realtimeInput.audio"))
        .iter()
        .flat_map(|m| pcm_of(m["realtimeInput"]["audio"]["data"].as_str().unwrap()))
        .collect();
    assert!(input.len() >= 16_000, "{} samples", input.len());
    let tail = &input[input.len() / 2..];
    assert!(
        goertzel(tail, 1000.0, 16_000.0) > 50.0 * goertzel(tail, 440.0, 16_000.0),
        "no 1 kHz tone at the provider"
    );
    // The conversation: the caller is the contact.
    let list = conversations(&h.api, &agent_id).await;
    assert_eq!(list["data"][0]["contact"], "+442071838750", "{list}");
    assert_eq!(list["data"][0]["status"], "completed", "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_for_an_agent_that_is_not_active_is_refused() {
    let fake = FakeRealtime::builder(Flavor::OpenAi).spawn().await;
    let carrier = Sipp::uas("uas_answer_hold.xml");
    let h = common::transit::start_with(
        carrier.addr(),
        common::transit::TRANSIT_PLAN,
        &provider_toml("openai", &fake),
        |c| {
            c.rtp_ports(36700, 36799)
                .numbers(&["+12025551234", "+14155552671"])
        },
    )
    .await;
    // A draft agent owns the number: its calls get the configured 480.
    let (code, created) = h
        .api
        .request(
            reqwest::Method::POST,
            "/agents",
            Some(&json!({
                "name": "Not yet",
                "model": "gpt-realtime",
                "agent_type": "static",
                "instructions": "Hi.",
                "phone_number_assignments": [{"phone_number": "+14155552671"}],
            })),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let agent_id = created["data"]["id"].as_str().unwrap().to_owned();
    let caller = Sipp::uac("uac_expect_480.xml", h.switch.sip_udp());
    caller
        .wait()
        .await
        .assert_success("caller refused with 480");
    assert!(
        fake.log(|l| l.handshakes.is_empty()),
        "a provider session was opened"
    );

    // Outbound, the API says why before anything is dialled.
    let (code, body) = h
        .api
        .create_call(json!({"to": "+14155550100", "from": "+12025551234", "agent_id": agent_id}))
        .await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], "AGENT_NOT_ACTIVE", "{body}");
    let (code, body) = h
        .api
        .create_call(
            json!({"to": "+14155550100", "from": "+12025551234", "agent_id": "agt_missing"}),
        )
        .await;
    assert_eq!(code, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_call_refers_the_caller_to_the_hand_off_number() {
    let fake = FakeRealtime::builder(Flavor::OpenAi)
        .step(Trigger::Received("response.create"), {
            let mut a = openai_function_call(
                "call_xfer",
                "transfer_call",
                &json!({"reason": "wants a human"}),
            );
            a.push(openai_response_done("resp_xfer"));
            a
        })
        .spawn()
        .await;
    // The carrier honours REFER to +14155550000 (checked by the scenario).
    let far = Sipp::uas("uas_answer_refer.xml");
    let provider = provider_toml("openai", &fake);
    let mut h = harness::setup(&far, |c| c.rtp_ports(36800, 36899).extra(&provider)).await;
    let agent_id = active_agent(
        &h,
        json!({
            "name": "Router",
            "model": "gpt-realtime",
            "agent_type": "static",
            "instructions": "Transfer every caller.",
            "handoff_phone_number": "+14155550000",
            "greeting_type": "static",
            "static_greeting": "One moment.",
        }),
    )
    .await;
    let id = h.call(json!({"agent_id": agent_id})).await;
    let done = until_ended(&mut h).await;
    assert_eq!(done["data"]["call"]["id"], id.as_str());
    assert_eq!(
        done["data"]["call"]["end_reason"],
        "transferred",
        "{done}\n{}",
        h.switch.logs()
    );
    far.wait().await.assert_success("carrier");
    let told = fake
        .wait_until(Duration::from_secs(10), |l| {
            l.of_kind(Flavor::OpenAi, "conversation.item.create")
                .iter()
                .any(|m| m["item"]["call_id"] == "call_xfer")
        })
        .await;
    assert!(told, "the model was not told the transfer's outcome");
    let output =
        fake.log(|l| l.of_kind(Flavor::OpenAi, "conversation.item.create"))[0]["item"]["output"]
            .clone();
    assert!(
        output.as_str().unwrap().contains("+14155550000"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_prompt_is_fetched_and_an_http_tool_is_called() {
    let (hook_url, seen) = server_url().await;
    let orders_url = hook_url.replace("/hook", "/orders");
    // One provider for both calls: each call runs the script again (a fresh fake).
    let script = |fc: &'static str, args: Value| {
        FakeRealtime::builder(Flavor::OpenAi)
            .step(Trigger::Received("response.create"), {
                let mut a = openai_function_call(fc, "lookup_order", &args);
                a.push(openai_response_done("resp_1"));
                a
            })
            .step(Trigger::Received("conversation.item.create"), {
                let mut a = openai_function_call(&format!("{fc}_end"), "end_call", &json!({}));
                a.push(openai_response_done("resp_2"));
                a
            })
    };
    let fake = script("call_dyn", json!({"order_id": "B2"})).spawn().await;
    let (_dir, scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = Sipp::builder(scenario.to_str().unwrap()).spawn();
    let provider = provider_toml("openai", &fake);
    let mut h = harness::setup(&far, |c| c.rtp_ports(36900, 36999).extra(&provider)).await;

    // A webhook agent whose prompt and greeting come from its Server URL.
    let agent_id = active_agent(
        &h,
        json!({
            "name": "Dynamic desk",
            "model": "gpt-realtime",
            "agent_type": "webhook",
            "server_url": hook_url,
            "server_secret": SECRET,
            "prompt_type": "dynamic",
            "greeting_type": "dynamic",
        }),
    )
    .await;
    let (code, tool) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/agents/{agent_id}/tools"),
            Some(&json!({"name": "lookup_order", "description": "Find an order."})),
        )
        .await;
    assert_eq!(code, 201, "{tool}");
    let id = h.call(json!({"agent_id": agent_id})).await;
    let done = until_ended(&mut h).await;
    assert_eq!(done["data"]["call"]["id"], id.as_str());
    assert_eq!(done["data"]["call"]["end_reason"], "stream_ended", "{done}");
    far.wait().await.assert_success("far end");
    let requests = seen.lock().unwrap().clone();
    let (headers, body) = requests
        .iter()
        .find(|(_, b)| String::from_utf8_lossy(b).contains("agent:assistant-request"))
        .expect("an assistant request");
    assert_eq!(
        headers["x-switchyard-signature"].to_str().unwrap(),
        format!("sha256={}", hmac_hex(SECRET, body))
    );
    let update = fake.log(|l| l.of_kind(Flavor::OpenAi, "session.update"));
    assert!(
        update[0]["session"]["instructions"]
            .as_str()
            .unwrap()
            .contains("Dynamic instructions for this caller."),
        "{}",
        update[0]
    );
    let creates = fake.log(|l| l.of_kind(Flavor::OpenAi, "response.create"));
    assert!(
        creates[0]
            .to_string()
            .contains("Hello from the dynamic greeting."),
        "{}",
        creates[0]
    );
    drop(fake);

    // An http agent: its tool calls its own URL (GET: the arguments in the query).
    let fake = script("call_http", json!({"order_id": "C3"})).spawn().await;
    drop(h);
    let (_dir, scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = Sipp::builder(scenario.to_str().unwrap()).spawn();
    let provider = provider_toml("openai", &fake);
    let mut h = harness::setup(&far, |c| c.rtp_ports(36900, 36999).extra(&provider)).await;
    let agent_id = active_agent(
        &h,
        json!({
            "name": "Http desk",
            "model": "gpt-realtime",
            "agent_type": "http",
            "instructions": "Look orders up.",
            "greeting_type": "static",
            "static_greeting": "Order line.",
        }),
    )
    .await;
    let (code, tool) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/agents/{agent_id}/tools"),
            Some(&json!({
                "name": "lookup_order",
                "description": "Find an order.",
                "tool_url": orders_url,
                "tool_method": "GET",
                "tool_headers": {"x-api-token": "orders-token"},
            })),
        )
        .await;
    assert_eq!(code, 201, "{tool}");
    h.call(json!({"agent_id": agent_id})).await;
    let e = until_ended(&mut h).await;
    assert_eq!(e["data"]["call"]["end_reason"], "stream_ended", "{e}");
    far.wait().await.assert_success("far end");
    let requests = seen.lock().unwrap().clone();
    let (headers, line) = requests
        .iter()
        .find(|(_, b)| b.starts_with(b"GET /orders"))
        .expect("the http tool was called");
    assert_eq!(String::from_utf8_lossy(line), "GET /orders?order_id=C3");
    assert_eq!(headers["x-api-token"], "orders-token");
    let outputs = fake.log(|l| l.of_kind(Flavor::OpenAi, "conversation.item.create"));
    let output = outputs
        .iter()
        .find(|m| m["item"]["call_id"] == "call_http")
        .expect("the tool's output went back");
    assert!(
        output["item"]["output"]
            .as_str()
            .unwrap()
            .contains("packed"),
        "{output}"
    );
}

/// An outbound call to a SIPp far end (a PCMU tone) connected to an agent named `name`
/// whose provider greets and then waits; returned once the agent's stream has started.
struct LiveAgentCall {
    fake: FakeRealtime,
    far: Sipp,
    h: Harness,
    agent_id: String,
    id: String,
    _scenario: tempfile::TempDir,
}

async fn live_agent_call(rtp_base: u16, name: &str) -> LiveAgentCall {
    let fake = FakeRealtime::builder(Flavor::OpenAi)
        .step(
            Trigger::Received("response.create"),
            openai_audio("item_greet", &tone(440.0, 24_000, 400), 2),
        )
        .spawn()
        .await;
    let (dir, scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = Sipp::builder(scenario.to_str().unwrap()).spawn();
    let provider = provider_toml("openai", &fake);
    let mut h = harness::setup(&far, |c| {
        c.rtp_ports(rtp_base, rtp_base + 99).extra(&provider)
    })
    .await;
    let agent_id = active_agent(
        &h,
        json!({"name": name, "model": "gpt-realtime", "agent_type": "static", "instructions": "Hi."}),
    )
    .await;
    let id = h.call(json!({"agent_id": agent_id})).await;
    loop {
        let e = h.event().await;
        assert_ne!(e["type"], "call.completed", "{e}");
        if e["type"] == "call.stream.started" {
            break;
        }
    }
    LiveAgentCall {
        fake,
        far,
        h,
        agent_id,
        id,
        _scenario: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_agent_ends_its_live_call() {
    // The provider greets and then waits: only the DELETE ends the call.
    let call = live_agent_call(37000, "Temp").await;
    let (fake, far, mut h, agent_id, id) = (call.fake, call.far, call.h, call.agent_id, call.id);
    let (code, body) = h
        .api
        .request(
            reqwest::Method::DELETE,
            &format!("/agents/{agent_id}"),
            None,
        )
        .await;
    assert_eq!(code, 204, "{body}");
    let done = until_ended(&mut h).await;
    assert_eq!(done["data"]["call"]["id"], id.as_str());
    assert_eq!(done["data"]["call"]["end_reason"], "stream_ended", "{done}");
    far.wait().await.assert_success("far end");
    assert!(
        fake.log(|l| l.closed),
        "the provider session was not closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hangup_api_ends_the_model_session_too() {
    let call = live_agent_call(37200, "Brief").await;
    let (fake, far, mut h, agent_id, id) = (call.fake, call.far, call.h, call.agent_id, call.id);
    let (code, body) = h.api.hangup(&id).await;
    assert!(code < 300, "{code} {body}");
    let done = until_ended(&mut h).await;
    assert_eq!(done["data"]["call"]["id"], id.as_str());
    assert_eq!(done["data"]["call"]["end_reason"], "hangup", "{done}");
    far.wait().await.assert_success("far end");
    let closed = fake.wait_until(Duration::from_secs(10), |l| l.closed).await;
    assert!(closed, "the provider session outlived the call");
    let list = conversations(&h.api, &agent_id).await;
    assert_eq!(list["data"][0]["status"], "completed", "{list}");
}

/// The person a caller is handed to: a SIPp that answers PCMA, its media at the sink.
async fn pcma_sink_person() -> (PayloadSink, Sipp) {
    let sink = PayloadSink::start().await;
    let person = Sipp::builder("bridge_uas_pcma_sink.xml")
        .arg("-key")
        .arg("sinkport")
        .arg(&sink.port.to_string())
        .spawn();
    (sink, person)
}

/// A media socket for a SIPp party whose SDP points at it: every RTP payload received.
struct PayloadSink {
    port: u16,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    count: tokio::sync::watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl PayloadSink {
    async fn start() -> Self {
        // An even port, as RTP wants.
        let sock = loop {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if s.local_addr().unwrap().port() % 2 == 0 {
                break s;
            }
        };
        let port = sock.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let (count_tx, count) = tokio::sync::watch::channel(0);
        let store = Arc::clone(&received);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok(n) = sock.recv(&mut buf).await {
                // RTP header (12 bytes, no CSRC or extension from the switch).
                if let Some(payload) = buf.get(12..n) {
                    let mut all = store.lock().unwrap();
                    all.push(payload.to_vec());
                    count_tx.send_replace(all.len());
                }
            }
        });
        Self {
            port,
            received,
            count,
            task,
        }
    }

    async fn wait_for(&mut self, n: usize) {
        let reached =
            tokio::time::timeout(Duration::from_secs(20), self.count.wait_for(|c| *c >= n))
                .await
                .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "{n} RTP packets never reached the sink (got {})",
            *self.count.borrow()
        );
    }

    fn finish(self) -> Vec<Vec<u8>> {
        self.task.abort();
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

/// The caller's carrier refuses the agent's REFER: the switch dials the hand-off number
/// itself, through the trunk the dialplan picks for it (a second SIPp), and once that
/// answers bridges the caller to it in the agent's place; the model hears that the
/// caller was handed off and its conversation ends. The caller's tone (PCMU) then
/// reaches the person it was handed to (PCMA), and the caller's BYE ends both legs.
/// A switch whose dialplan sends +1 numbers from the caller's trunk to `person` (trunk
/// "carrier"), with an agent on +14155552671 whose model calls `transfer_call` at once
/// (hand-off number +14155550111).
async fn transferring_agent(
    person: &Sipp,
    configure: impl FnOnce(common::switch::SwitchConfig) -> common::switch::SwitchConfig,
) -> (FakeRealtime, common::transit::Inbound, String) {
    let fake = FakeRealtime::builder(Flavor::OpenAi)
        .step(Trigger::Received("response.create"), {
            let mut a = openai_function_call("call_xfer", "transfer_call", &json!({}));
            a.push(openai_response_done("resp_xfer"));
            a
        })
        .spawn()
        .await;
    let h = common::transit::start_with(
        person.addr(),
        common::transit::TRANSIT_PLAN,
        &provider_toml("openai", &fake),
        |c| configure(c.numbers(&["+12025551234", "+14155552671"])),
    )
    .await;
    let agent_id = common::agent::create_active(&h.api, json!({
                "name": "Desk",
                "model": "gpt-realtime",
                "agent_type": "static",
                "instructions": "Transfer callers.",
                "greeting_type": "static",
                "static_greeting": "Hello.",
                "phone_number_assignments": [{"phone_number": "+14155552671", "handoff_phone_number": "+14155550111"}],
            })).await;
    (fake, h, agent_id)
}

/// What the model was told of its `transfer_call` (waits for it).
async fn transfer_outcome(fake: &FakeRealtime, logs: impl Fn() -> String) -> Value {
    let told = fake
        .wait_until(Duration::from_secs(20), |l| {
            l.of_kind(Flavor::OpenAi, "conversation.item.create")
                .iter()
                .any(|m| m["item"]["call_id"] == "call_xfer")
        })
        .await;
    assert!(
        told,
        "the model was not told the transfer's outcome\n{}",
        logs()
    );
    let output =
        fake.log(|l| l.of_kind(Flavor::OpenAi, "conversation.item.create"))[0]["item"]["output"]
            .clone();
    serde_json::from_str(output.as_str().unwrap()).unwrap()
}

/// `GET /agents/{id}/conversations`.
async fn conversations(api: &common::api::Api, agent_id: &str) -> Value {
    let (status, list) = api
        .request(
            reqwest::Method::GET,
            &format!("/agents/{agent_id}/conversations"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    list
}

/// Linear samples of RTP payloads in `law` (`decode_alaw` or `decode_ulaw`).
fn decoded(payloads: Vec<Vec<u8>>, law: fn(&[u8], &mut [i16]) -> usize) -> Vec<i16> {
    let mut pcm = Vec::new();
    for payload in payloads {
        let mut frame = vec![0i16; payload.len()];
        let n = law(&payload, &mut frame);
        pcm.extend_from_slice(&frame[..n]);
    }
    pcm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_refer_falls_back_to_a_bridged_leg() {
    let (mut sink, person) = pcma_sink_person().await;
    let (fake, mut h, agent_id) = transferring_agent(&person, |c| c.rtp_ports(37300, 37399)).await;
    let (_dir, scenario) = scenario_with_fixtures("agent_uac_tone_refuse_refer.xml");
    let caller = Sipp::builder(scenario.to_str().unwrap())
        .remote(h.switch.sip_udp())
        .pause_ms(2500)
        .spawn();
    let output = transfer_outcome(&fake, || h.switch.logs()).await;
    assert_eq!(output["ok"], true, "{output}");
    assert_eq!(output["method"], "bridged", "{output}");
    assert_eq!(output["transferred_to"], "+14155550111", "{output}");
    // A second of the caller's tone through the bridge.
    sink.wait_for(50).await;
    caller
        .wait()
        .await
        .assert_success("caller refusing the REFER");
    let person = person.wait().await;
    person.assert_success("the person the caller was handed to");
    assert!(
        person.messages.contains("INVITE sip:+14155550111@"),
        "{}",
        person.messages
    );
    // The person sees who is calling: the caller, not the agent's number.
    assert!(
        person.messages.contains("From: <sip:+442071838750@"),
        "{}",
        person.messages
    );

    let events = h.events_until("call.completed").await;
    let transfers: Vec<(String, i64, String)> = events
        .iter()
        .filter(|e| e["type"] == "call.transfer")
        .map(|e| {
            let d = &e["data"];
            (
                d["transfer_state"].as_str().unwrap_or_default().to_owned(),
                d["sip_code"].as_i64().unwrap_or_default(),
                d["method"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        transfers,
        [
            ("refer_refused".to_owned(), 501, "refer".to_owned()),
            ("succeeded".to_owned(), 200, "dial".to_owned()),
        ],
        "{}",
        h.switch.logs()
    );
    let call = &events.last().unwrap()["data"]["call"];
    assert_eq!(call["end_reason"], "remote_bye", "{call}");
    assert_eq!(call["metadata"]["transferred"], true, "{call}");
    assert_eq!(call["metadata"]["transferred_to"], "+14155550111", "{call}");

    // The caller's 1 kHz tone, transcoded to A-law, is what the person heard.
    let heard = decoded(sink.finish(), media::g711::decode_alaw);
    assert!(
        goertzel(&heard, 1000.0, 8000.0) > 50.0 * goertzel(&heard, 440.0, 8000.0),
        "no 1 kHz tone at the person ({} samples)",
        heard.len()
    );
    // The agent is out of the call: its conversation ended with the hand-off.
    let list = conversations(&h.api, &agent_id).await;
    assert_eq!(list["data"][0]["status"], "completed", "{list}");
}

/// The person the caller was handed to hangs up: the switch hangs the caller up too
/// (`end_reason` `handoff_bye`). Before that, the person's tone (PCMU) reached the
/// caller through the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hand_off_party_hanging_up_ends_the_call() {
    let (_dir, scenario) = scenario_with_fixtures("agent_uas_tone_bye.xml");
    let person = Sipp::builder(scenario.to_str().unwrap())
        .pause_ms(1500)
        .spawn();
    let (fake, mut h, _) = transferring_agent(&person, |c| c.rtp_ports(37400, 37499)).await;
    let mut sink = PayloadSink::start().await;
    let caller = Sipp::builder("agent_uac_sink_refuse_refer.xml")
        .remote(h.switch.sip_udp())
        .arg("-key")
        .arg("sinkport")
        .arg(&sink.port.to_string())
        .spawn();
    let output = transfer_outcome(&fake, || h.switch.logs()).await;
    assert_eq!(output["method"], "bridged", "{output}");
    sink.wait_for(50).await;
    person.wait().await.assert_success("the person hanging up");
    caller
        .wait()
        .await
        .assert_success("the caller, hung up by the switch");
    let events = h.events_until("call.completed").await;
    let call = &events.last().unwrap()["data"]["call"];
    assert_eq!(
        call["end_reason"],
        "handoff_bye",
        "{call}\n{}",
        h.switch.logs()
    );
    let heard = decoded(sink.finish(), media::g711::decode_ulaw);
    assert!(
        goertzel(&heard, 1000.0, 8000.0) > 50.0 * goertzel(&heard, 440.0, 8000.0),
        "no 1 kHz tone at the caller ({} samples)",
        heard.len()
    );
}

/// Keypad digits the caller sends (RFC 4733) reach the model as the caller's words once
/// the caller stops pressing, followed by a request to answer them; the transcript keeps
/// them as a user message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keypad_digits_reach_the_model_as_the_callers_text() {
    let fake = FakeRealtime::builder(Flavor::OpenAi).spawn().await;
    // The far end answers and presses 1.
    let far = Sipp::uas("uas_answer_dtmf.xml");
    let provider = provider_toml("openai", &fake);
    let mut h = harness::setup(&far, |c| c.rtp_ports(37500, 37599).extra(&provider)).await;
    let agent_id = active_agent(
        &h,
        json!({"name": "Menu", "model": "gpt-realtime", "agent_type": "static", "instructions": "Press 1 for sales."}),
    )
    .await;
    let id = h.call(json!({"agent_id": agent_id})).await;
    let keypad = |l: &common::fake_realtime::Log| {
        let kinds = l.kinds(Flavor::OpenAi);
        l.messages.iter().enumerate().any(|(at, m)| {
            m["type"] == "conversation.item.create"
                && m["item"]["role"] == "user"
                && m["item"]["content"][0]["text"] == "[The caller pressed on the keypad: 1]"
                && kinds[at + 1..].iter().any(|k| k == "response.create")
        })
    };
    let told = fake.wait_until(Duration::from_secs(20), keypad).await;
    assert!(
        told,
        "{:?}\n{}",
        fake.log(|l| l.kinds(Flavor::OpenAi)),
        h.switch.logs()
    );
    let (code, body) = h.api.hangup(&id).await;
    assert!(code < 300, "{code} {body}");
    until_ended(&mut h).await;
    far.wait().await.assert_success("far end pressing 1");
    let list = conversations(&h.api, &agent_id).await;
    let conv_id = list["data"][0]["id"].as_str().unwrap().to_owned();
    let (_, conv) = h
        .api
        .request(
            reqwest::Method::GET,
            &format!("/agents/{agent_id}/conversations/{conv_id}"),
            None,
        )
        .await;
    let transcript = conv["data"]["transcript"].as_array().unwrap();
    assert!(
        transcript
            .iter()
            .any(|m| m["role"] == "user" && m["text"] == "[The caller pressed on the keypad: 1]"),
        "{transcript:#?}"
    );
}

/// Bridged to a hand-off party that sends no RTP: its silence ends the call after the
/// media timeout (`end_reason` `media_timeout`) while the caller is still talking, and
/// both parties get a BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_hand_off_party_times_the_call_out() {
    let (mut sink, person) = pcma_sink_person().await;
    let (fake, mut h, _) =
        transferring_agent(&person, |c| c.rtp_ports(37600, 37699).media_timeout_s(1)).await;
    // The caller's tone lasts 3 s, past the person's 1 s of silence after the bridge.
    let (_dir, scenario) = scenario_with_fixtures("agent_uac_tone_refuse_refer_bye.xml");
    let caller = Sipp::builder(scenario.to_str().unwrap())
        .remote(h.switch.sip_udp())
        .spawn();
    let output = transfer_outcome(&fake, || h.switch.logs()).await;
    assert_eq!(output["method"], "bridged", "{output}");
    sink.wait_for(10).await;
    let events = h.events_until("call.completed").await;
    let call = &events.last().unwrap()["data"]["call"];
    assert_eq!(
        call["end_reason"],
        "media_timeout",
        "{call}\n{}",
        h.switch.logs()
    );
    // The person's silence did it, not the caller's: the caller's 150 packets (3 s) had
    // not all arrived yet.
    let from_caller = call["rtp_packets_received"].as_i64().unwrap_or(0);
    assert!((1..150).contains(&from_caller), "{call}");
    caller
        .wait()
        .await
        .assert_success("the caller, hung up while talking");
    person
        .wait()
        .await
        .assert_success("the silent person, hung up");
}
