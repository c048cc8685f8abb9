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
    let app = Router::new()
        .route("/hook", axum::routing::post(hook))
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
    let (code, created) = h
        .api
        .request(reqwest::Method::POST, "/agents", Some(&body))
        .await;
    assert_eq!(code, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let (code, patched) = h
        .api
        .request(
            reqwest::Method::PATCH,
            &format!("/agents/{id}"),
            Some(
                &json!({"status": "active", "expected_updated_at": created["data"]["updated_at"]}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    id
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
    let (code, list) = h
        .api
        .request(
            reqwest::Method::GET,
            &format!("/agents/{agent_id}/conversations"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{list}");
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
