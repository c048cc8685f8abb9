//! Browser realtime sessions against the real binary: `GET /api/v1/agents/{id}/realtime`
//! (a WebSocket) with the fake OpenAI Realtime server (`common::fake_realtime`) as the
//! agent's model provider.
//!
//! Checked: a WebSocket client gets a token through the API, connects, is told
//! `session.started`; its 1 kHz tone (16 kHz, uneven chunks) reaches the provider at
//! 24 kHz; the agent's 440 Hz greeting comes back as `output_audio` at 24 kHz, paced in
//! real time; transcripts both ways; a barge-in gives `clear`, the provider is told how
//! much was heard, and no more than that reached the client; `stop` closes the socket
//! with 1000 once the conversation is recorded (`web`, `completed`). Refusals come before
//! the upgrade and before any provider session (expired, forged, reused, another agent's
//! token; an agent missing, not active, or without the `web` channel). The demo page is
//! served only when turned on, and works in headless Chromium with a fake microphone.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::fake_realtime::{
    Action, FakeRealtime, Flavor, Trigger, goertzel, openai_audio, openai_response_done, tone,
};
use common::{Api, SwitchConfig, SwitchProcess};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

const SIGNING_KEY: &str = "web-session-signing-key-0123456789abcdef";
const GUARD: Duration = Duration::from_secs(20);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A switch whose agents talk to `fake`, with realtime sessions on (and the demo page
/// when `demo`); an owner's API client.
async fn switch_with(fake: &FakeRealtime, demo: bool) -> (SwitchProcess, Api) {
    // No call is placed: the trunk is a port nothing listens on.
    let trunk = std::net::SocketAddr::from(([127, 0, 0, 1], common::sipp::free_udp_port()));
    let agents = format!(
        "[agents]\nrealtime_signing_key = \"{SIGNING_KEY}\"\ndemo_page = {demo}\n\
         default_plan = \"agency\"\n\n\
         [agents.providers.openai]\nurl = \"{}\"\napi_key = \"test-key\"\n",
        fake.url
    );
    let switch = SwitchProcess::start(SwitchConfig::new(trunk).extra(&agents)).await;
    let key = switch.create_api_key("acme", "owner").await;
    let api = Api::new(&switch.http_base(), &key);
    (switch, api)
}

/// Creates an agent (`channels` as given) and, when `activate`, activates it; its id.
async fn agent(api: &Api, channels: &[&str], activate: bool) -> String {
    let body = json!({
        "name": "Web desk",
        "model": "gpt-realtime",
        "agent_type": "static",
        "channels": channels,
        "instructions": "You help visitors of the website.",
        "greeting_type": "static",
        "static_greeting": "Hello from the web agent.",
    });
    let (code, created) = api
        .request(reqwest::Method::POST, "/agents", Some(&body))
        .await;
    assert_eq!(code, 201, "{created}");
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    if activate {
        let (code, patched) = api
            .request(
                reqwest::Method::PATCH,
                &format!("/agents/{id}"),
                Some(&json!({"status": "active", "expected_updated_at": created["data"]["updated_at"]})),
            )
            .await;
        assert_eq!(code, 200, "{patched}");
    }
    id
}

/// `POST /agents/{id}/realtime-sessions` → (token, websocket_url).
async fn session_token(api: &Api, agent_id: &str) -> (String, String) {
    let (code, body) = api
        .request(
            reqwest::Method::POST,
            &format!("/agents/{agent_id}/realtime-sessions"),
            None,
        )
        .await;
    assert_eq!(code, 201, "{body}");
    (
        body["data"]["token"].as_str().unwrap().to_owned(),
        body["data"]["websocket_url"].as_str().unwrap().to_owned(),
    )
}

/// A token signed with the switch's key, whatever its content (as `realtime::issue`
/// makes them): for an expired one, or one for an agent the API would not issue.
fn craft_token(agent_id: &str, tenant: &str, expires_ms: i64) -> String {
    let payload =
        json!({"a": agent_id, "t": tenant, "j": ulid::Ulid::new().to_string(), "e": expires_ms});
    let body = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SIGNING_KEY.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!(
        "{body}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn ws_url(switch: &SwitchProcess, agent_id: &str, token: &str) -> String {
    format!(
        "{}/api/v1/agents/{agent_id}/realtime?token={token}",
        switch.http_base().replacen("http://", "ws://", 1)
    )
}

/// A connection the switch must refuse: (HTTP status, error body).
async fn refused(url: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("{url}: upgraded"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("{url}: {e}"),
    }
}

fn pcm_of(b64: &str) -> Vec<i16> {
    STANDARD
        .decode(b64)
        .unwrap()
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

fn pcm_b64(pcm: &[i16]) -> String {
    STANDARD.encode(
        pcm.iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
}

/// The next JSON text message (pings and the like skipped), or how the socket closed.
async fn next_json(ws: &mut Ws) -> Result<Value, Option<(u16, String)>> {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await {
            Err(_) => panic!("no message within {GUARD:?}"),
            Ok(None) | Ok(Some(Err(_))) => return Err(None),
            Ok(Some(Ok(Message::Text(t)))) => {
                return Ok(serde_json::from_str(t.as_str()).expect("JSON"));
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// What the client received, with when.
#[derive(Default)]
struct Received {
    /// 24 kHz samples of `output_audio`, with the instant each message arrived.
    audio: Vec<(Instant, Vec<i16>)>,
    transcripts: Vec<(String, String)>,
    /// Output samples received before the first `clear`.
    clear_at: Option<usize>,
    others: Vec<Value>,
}

impl Received {
    fn samples(&self) -> Vec<i16> {
        self.audio
            .iter()
            .flat_map(|(_, p)| p.iter().copied())
            .collect()
    }

    fn take(&mut self, m: Value) {
        match m["type"].as_str() {
            Some("output_audio") => {
                assert_eq!(m["encoding"], "pcm16", "{m}");
                assert_eq!(m["sampleRate"], 24_000, "{m}");
                let pcm = pcm_of(m["audio"].as_str().unwrap());
                assert_eq!(pcm.len() % 480, 0, "whole 20 ms frames");
                self.audio.push((Instant::now(), pcm));
            }
            Some("transcript") => self.transcripts.push((
                m["role"].as_str().unwrap().to_owned(),
                m["text"].as_str().unwrap().to_owned(),
            )),
            Some("clear") => {
                self.clear_at.get_or_insert(self.samples().len());
            }
            _ => self.others.push(m),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_session_talks_hears_is_interrupted_and_stops() {
    let greeting = tone(440.0, 24_000, 600);
    let answer = tone(660.0, 24_000, 4000);
    let fake = FakeRealtime::builder(Flavor::OpenAi)
        .step(Trigger::Received("response.create"), {
            let mut a = openai_audio("item_greet", &greeting, 6);
            a.push(Action::Send(json!({
                "type": "response.output_audio_transcript.done", "event_id": "event_tr",
                "response_id": "resp_greet", "item_id": "item_greet", "output_index": 0,
                "content_index": 0, "transcript": "Hello from the web agent.",
            })));
            // `response.done` right behind the audio, as the service sends it: the
            // greeting still queued then is not counted as heard of the next answer.
            a.push(openai_response_done("resp_greet"));
            a
        })
        // Once the visitor has talked a while (the greeting has played by then): what
        // they said, and a long answer they interrupt.
        .step(Trigger::InputAudioMs(900), {
            let mut a = vec![Action::Send(json!({
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "event_user1", "item_id": "item_user1", "content_index": 0,
                "transcript": "I need help with my order.",
            }))];
            a.extend(openai_audio("item_answer", &answer, 20));
            a.push(Action::Sleep(Duration::from_millis(600)));
            a.push(Action::Send(json!({
                "type": "input_audio_buffer.speech_started", "event_id": "event_ss",
                "audio_start_ms": 2000, "item_id": "item_user2",
            })));
            a
        })
        .spawn()
        .await;
    let (switch, api) = switch_with(&fake, true).await;
    let agent_id = agent(&api, &["voice", "web"], true).await;

    // The demo page is served (it is turned on here).
    let page = reqwest::get(format!("{}/demo/agent-web/", switch.http_base()))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    for needle in [
        "new WebSocket(",
        "input_audio",
        "realtime-sessions",
        "demo only",
    ] {
        assert!(
            html.to_lowercase().contains(&needle.to_lowercase()),
            "{needle}"
        );
    }

    let (_, url) = session_token(&api, &agent_id).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let started = next_json(&mut ws).await.expect("a message");
    assert_eq!(started["type"], "session.started", "{started}");
    let call_id = started["callId"].as_str().unwrap().to_owned();
    assert!(!call_id.is_empty());

    // 1 s of a 1 kHz tone at 16 kHz in uneven chunks, at the pace a microphone gives it,
    // while the messages that come back are collected.
    let (mut tx, mut rx) = ws.split();
    let reader = tokio::spawn(async move {
        let mut got = Received::default();
        loop {
            let message = match tokio::time::timeout(GUARD, rx.next()).await {
                Ok(Some(Ok(m))) => m,
                other => panic!("socket: {other:?}"),
            };
            match message {
                Message::Text(t) => got.take(serde_json::from_str(t.as_str()).unwrap()),
                Message::Close(frame) => {
                    return (
                        got,
                        frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    );
                }
                _ => {}
            }
        }
    });
    let input = tone(1000.0, 16_000, 1000);
    let sizes = [100usize, 333, 640, 1000, 57, 1500, 320, 7, 2000];
    let mut at = 0;
    let started_at = Instant::now();
    for size in sizes.iter().cycle() {
        if at >= input.len() {
            break;
        }
        let end = (at + size).min(input.len());
        let chunk = &input[at..end];
        tx.send(Message::Text(
            json!({"type": "input_audio", "audio": pcm_b64(chunk)})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        at = end;
        // Real time: the chunk's duration from the start.
        let due = started_at + Duration::from_micros(at as u64 * 1_000_000 / 16_000);
        tokio::time::sleep_until(due.into()).await;
    }

    // The barge-in reached the provider; the visitor then stops.
    assert!(
        fake.wait_until(GUARD, |l| !l
            .of_kind(Flavor::OpenAi, "conversation.item.truncate")
            .is_empty())
            .await,
        "no truncate\n{}",
        switch.logs()
    );
    // The clear follows the same barge-in on the switch; stop once it can have gone out.
    tx.send(Message::Text(json!({"type": "stop"}).to_string().into()))
        .await
        .unwrap();
    let (got, close) = tokio::time::timeout(GUARD, reader)
        .await
        .expect("closed")
        .expect("reader");
    assert_eq!(
        close,
        Some((1000, "stopped".to_owned())),
        "{}",
        switch.logs()
    );
    assert!(got.others.is_empty(), "{:?}", got.others);

    // The visitor's tone reached the provider at 24 kHz.
    let appended: Vec<i16> = fake
        .log(|l| l.of_kind(Flavor::OpenAi, "input_audio_buffer.append"))
        .iter()
        .flat_map(|m| pcm_of(m["audio"].as_str().unwrap()))
        .collect();
    assert!(
        appended.len() >= 23_000,
        "{} samples at the provider",
        appended.len()
    );
    let middle = &appended[4_800..19_200];
    assert!(
        goertzel(middle, 1000.0, 24_000.0) > 50.0 * goertzel(middle, 440.0, 24_000.0),
        "no 1 kHz tone at the provider"
    );

    // The greeting came back: 440 Hz at 24 kHz, paced in real time.
    let samples = got.samples();
    let frames: Vec<&[i16]> = samples.chunks(480).collect();
    let loud = |f: &&&[i16]| f.iter().any(|s| s.abs() > 4000);
    let greeting_frames: Vec<&[i16]> = frames
        .iter()
        .filter(loud)
        .filter(|f| goertzel(f, 440.0, 24_000.0) > 10.0 * goertzel(f, 660.0, 24_000.0))
        .copied()
        .collect();
    assert!(
        greeting_frames.len() >= 29,
        "{} frames of greeting",
        greeting_frames.len()
    );
    let first = got.audio.first().unwrap().0;
    let greeting_end = got
        .audio
        .iter()
        .scan(0usize, |n, (t, p)| {
            *n += p.len();
            Some((*n, *t))
        })
        .find(|(n, _)| *n >= greeting.len())
        .map(|(_, t)| t)
        .unwrap();
    let spread = greeting_end.duration_since(first);
    eprintln!("600 ms greeting arrived over {spread:?}");
    assert!(
        spread >= Duration::from_millis(400),
        "the greeting came faster than real time: {spread:?}"
    );

    // Transcripts both ways.
    assert!(
        got.transcripts.contains(&(
            "assistant".to_owned(),
            "Hello from the web agent.".to_owned()
        )),
        "{:?}",
        got.transcripts
    );
    assert!(
        got.transcripts
            .contains(&("user".to_owned(), "I need help with my order.".to_owned())),
        "{:?}",
        got.transcripts
    );

    // The barge-in: `clear`, and of the 4 s answer no more reached the client than the
    // provider was told was heard.
    let clear_at = got.clear_at.expect("a clear message");
    let truncates = fake.log(|l| l.of_kind(Flavor::OpenAi, "conversation.item.truncate"));
    assert_eq!(truncates[0]["item_id"], "item_answer");
    let heard = truncates[0]["audio_end_ms"].as_u64().unwrap();
    let answer_ms = samples[..clear_at]
        .chunks(480)
        .filter(|f| f.iter().any(|s| s.abs() > 4000))
        .filter(|f| goertzel(f, 660.0, 24_000.0) > 10.0 * goertzel(f, 440.0, 24_000.0))
        .count() as u64
        * 20;
    let after_clear = samples[clear_at..]
        .chunks(480)
        .filter(|f| goertzel(f, 660.0, 24_000.0) > 10.0 * goertzel(f, 440.0, 24_000.0))
        .count();
    eprintln!("answer: {answer_ms} ms received before the clear, {heard} ms reported heard");
    assert!((300..=1500).contains(&heard), "heard {heard} ms");
    assert!(
        answer_ms.abs_diff(heard) <= 60,
        "{answer_ms} ms received, {heard} ms reported heard"
    );
    assert_eq!(after_clear, 0, "answer audio after the clear");

    // The conversation: web, completed once the socket closed, with its transcript.
    let (code, list) = api
        .request(
            reqwest::Method::GET,
            &format!("/agents/{agent_id}/conversations"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{list}");
    let conv = &list["data"][0];
    assert_eq!(conv["id"], call_id.as_str(), "{conv}");
    assert_eq!(conv["channel"], "web", "{conv}");
    assert_eq!(conv["contact"], "web", "{conv}");
    assert_eq!(conv["status"], "completed", "{conv}");
    assert!(conv["call_id"].is_null(), "{conv}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_refused_before_the_upgrade_and_before_any_provider_session() {
    let fake = FakeRealtime::builder(Flavor::OpenAi).spawn().await;
    let (switch, api) = switch_with(&fake, false).await;
    let web = agent(&api, &["voice", "web"], true).await;
    let other = agent(&api, &["web"], true).await;
    let voice_only = agent(&api, &["voice"], true).await;
    let draft = agent(&api, &["web"], false).await;

    // The demo page is off by default.
    let page = reqwest::get(format!("{}/demo/agent-web/", switch.http_base()))
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 404);
    let body: Value = page.json().await.unwrap();
    assert_eq!(body["code"], "NOT_FOUND", "{body}");

    let expect = |(status, body): (u16, Value), want: u16, code: &str, what: &str| {
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(body["code"], code, "{what}: {body}");
        assert!(
            body["request_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("req_")),
            "{what}: {body}"
        );
    };

    // No token.
    let no_token = format!(
        "{}/api/v1/agents/{web}/realtime",
        switch.http_base().replacen("http://", "ws://", 1)
    );
    expect(refused(&no_token).await, 401, "UNAUTHORIZED", "no token");
    // Expired (signed with the switch's key, a second in the past).
    let expired = craft_token(&web, "acme", now_ms() - 1000);
    let r = refused(&ws_url(&switch, &web, &expired)).await;
    assert!(
        r.1["error"].as_str().unwrap().contains("expired"),
        "{}",
        r.1
    );
    expect(r, 401, "UNAUTHORIZED", "expired");
    // Forged: one byte of the signature changed.
    let (token, _) = session_token(&api, &web).await;
    let (body, sig) = token.split_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    sig[0] ^= 0x01;
    let forged = format!("{body}.{}", URL_SAFE_NO_PAD.encode(sig));
    expect(
        refused(&ws_url(&switch, &web, &forged)).await,
        401,
        "UNAUTHORIZED",
        "forged",
    );
    // Another agent's token.
    let (others, _) = session_token(&api, &other).await;
    expect(
        refused(&ws_url(&switch, &web, &others)).await,
        401,
        "UNAUTHORIZED",
        "another agent's token",
    );
    // Agents that cannot take the session, with tokens the switch signed.
    // The token endpoint refuses a voice-only agent; a token signed anyway is refused at
    // the socket.
    let (code, body) = api
        .request(
            reqwest::Method::POST,
            &format!("/agents/{voice_only}/realtime-sessions"),
            None,
        )
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (409, Some("CHANNEL_NOT_ENABLED")),
        "{body}"
    );
    let voice_token = craft_token(&voice_only, "acme", now_ms() + 60_000);
    let r = refused(&ws_url(&switch, &voice_only, &voice_token)).await;
    assert!(r.1["error"].as_str().unwrap().contains("web"), "{}", r.1);
    expect(r, 409, "CHANNEL_NOT_ENABLED", "no web channel");
    let draft_token = craft_token(&draft, "acme", now_ms() + 60_000);
    expect(
        refused(&ws_url(&switch, &draft, &draft_token)).await,
        409,
        "AGENT_NOT_ACTIVE",
        "draft agent",
    );
    let missing = "agt_01JZZZZZZZZZZZZZZZZZZZZZZZ";
    let missing_token = craft_token(missing, "acme", now_ms() + 60_000);
    expect(
        refused(&ws_url(&switch, missing, &missing_token)).await,
        404,
        "NOT_FOUND",
        "no such agent",
    );
    // A plain GET (no upgrade) is refused without using the token up.
    let (token, url) = session_token(&api, &web).await;
    let plain = reqwest::get(url.replacen("ws://", "http://", 1))
        .await
        .unwrap();
    assert_eq!(plain.status().as_u16(), 400);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["code"], "VALIDATION_ERROR", "{body}");

    // None of that reached the provider.
    assert_eq!(fake.log(|l| l.handshakes.len()), 0, "{}", switch.logs());

    // The token opens one session, once.
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&switch, &web, &token))
        .await
        .expect("first use");
    let started = next_json(&mut ws).await.expect("a message");
    assert_eq!(started["type"], "session.started", "{started}");
    assert_eq!(fake.log(|l| l.handshakes.len()), 1);
    let r = refused(&ws_url(&switch, &web, &token)).await;
    assert!(r.1["error"].as_str().unwrap().contains("used"), "{}", r.1);
    expect(r, 401, "UNAUTHORIZED", "reused");
    ws.send(Message::Text(json!({"type": "stop"}).to_string().into()))
        .await
        .unwrap();
    let close = loop {
        if let Err(close) = next_json(&mut ws).await {
            break close;
        }
    };
    assert_eq!(close.map(|c| c.0), Some(1000));
    assert_eq!(fake.log(|l| l.handshakes.len()), 1, "{}", switch.logs());

    // A conversation that ends on the switch's side (here: the agent is deleted) closes
    // the socket with 1000 and a reason.
    let (_, url) = session_token(&api, &other).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("connect");
    let started = next_json(&mut ws).await.expect("a message");
    assert_eq!(started["type"], "session.started", "{started}");
    let (code, body) = api
        .request(reqwest::Method::DELETE, &format!("/agents/{other}"), None)
        .await;
    assert_eq!(code, 204, "{body}");
    let close = loop {
        if let Err(close) = next_json(&mut ws).await {
            break close;
        }
    };
    assert_eq!(
        close,
        Some((1000, "the agent ended the conversation".to_owned())),
        "{}",
        switch.logs()
    );
}

/// Debian's Chromium (`apt-get install chromium`; `.ci/test.sh` installs it).
const CHROMIUM: &str = "chromium";

/// A page in Chromium, driven through the DevTools protocol.
struct Page {
    ws: Ws,
    next_id: u64,
}

impl Page {
    /// The DevTools port Chromium chose (`--remote-debugging-port=0` writes it into the
    /// profile), then the page whose URL contains `url_part`.
    async fn attach(profile: &std::path::Path, url_part: &str) -> Page {
        let deadline = Instant::now() + GUARD;
        let file = profile.join("DevToolsActivePort");
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u16>().ok()))
            {
                break port;
            }
            assert!(Instant::now() < deadline, "Chromium did not open DevTools");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let target = loop {
            let list: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
                .await
                .expect("DevTools list")
                .json()
                .await
                .expect("DevTools list JSON");
            let page = list.as_array().into_iter().flatten().find(|t| {
                t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.contains(url_part))
            });
            if let Some(page) = page {
                break page["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "no page at {url_part}: {list}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(&target)
            .await
            .expect("DevTools socket");
        Page { ws, next_id: 1 }
    }

    /// Evaluates `expression` in the page; its JSON value.
    async fn eval(&mut self, expression: &str) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true},
        });
        self.ws
            .send(Message::Text(request.to_string().into()))
            .await
            .expect("DevTools send");
        loop {
            let reply = next_json(&mut self.ws).await.expect("DevTools reply");
            if reply["id"] == id {
                return reply["result"]["result"]["value"].clone();
            }
        }
    }

    /// The page's `window.agentWeb`, once `ready` holds for it (read every 100 ms).
    async fn wait_for(&mut self, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + GUARD;
        loop {
            let text = self.eval("JSON.stringify(window.agentWeb || null)").await;
            let state: Value = text
                .as_str()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(Value::Null);
            if ready(&state) {
                return state;
            }
            assert!(Instant::now() < deadline, "{what}: {state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_page_talks_to_an_agent_from_headless_chromium() {
    let greeting = tone(440.0, 24_000, 1000);
    let fake = FakeRealtime::builder(Flavor::OpenAi)
        .step(Trigger::Received("response.create"), {
            let mut a = openai_audio("item_greet", &greeting, 10);
            a.push(Action::Send(json!({
                "type": "response.output_audio_transcript.done", "event_id": "event_tr",
                "response_id": "resp_greet", "item_id": "item_greet", "output_index": 0,
                "content_index": 0, "transcript": "Hello from the web agent.",
            })));
            a.push(openai_response_done("resp_greet"));
            a
        })
        // What the visitor said, and a long answer they talk over.
        .step(Trigger::InputAudioMs(1500), {
            let mut a = vec![Action::Send(json!({
                "type": "conversation.item.input_audio_transcription.completed",
                "event_id": "event_user1", "item_id": "item_user1", "content_index": 0,
                "transcript": "I hear a beep.",
            }))];
            a.extend(openai_audio("item_answer", &tone(660.0, 24_000, 3000), 10));
            a.push(Action::Sleep(Duration::from_millis(400)));
            a.push(Action::Send(json!({
                "type": "input_audio_buffer.speech_started", "event_id": "event_ss",
                "audio_start_ms": 1500, "item_id": "item_user2",
            })));
            a
        })
        .spawn()
        .await;
    let (switch, api) = switch_with(&fake, true).await;
    let agent_id = agent(&api, &["web"], true).await;

    // The microphone: Chromium's fake capture device playing a 1 kHz tone (looped).
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("mic.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 48_000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(&wav, spec).unwrap();
    for s in tone(1000.0, 48_000, 1000) {
        writer.write_sample(s).unwrap();
    }
    writer.finalize().unwrap();
    let profile = dir.path().join("profile");
    let page_url = format!(
        "{}/demo/agent-web/?key={}&agent={agent_id}&autostart=1",
        switch.http_base(),
        api.key
    );
    let _chromium = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless=new",
            // Root in CI: Chromium's sandbox needs an unprivileged user.
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--use-fake-device-for-media-stream",
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--remote-debugging-port=0",
        ])
        .arg(format!(
            "--use-file-for-fake-audio-capture={}",
            wav.display()
        ))
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&page_url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{CHROMIUM}: {e} (apt-get install chromium)"));
    let mut page = Page::attach(&profile, "/demo/agent-web/").await;

    // The page created the session, streams the microphone and plays the greeting.
    let state = page
        .wait_for("the greeting and both transcripts", |s| {
            let transcripts = s["transcripts"].as_array().cloned().unwrap_or_default();
            let said = |role: &str, text: &str| {
                transcripts
                    .iter()
                    .any(|t| t["role"] == role && t["text"] == text)
            };
            s["callId"].is_string()
                && s["outputSamples"].as_u64().unwrap_or(0) >= greeting.len() as u64
                && said("assistant", "Hello from the web agent.")
                && said("user", "I hear a beep.")
        })
        .await;
    assert_eq!(state["status"], "talking", "{state}");
    assert!(state["error"].is_null(), "{state}");
    let dom = page
        .eval("document.getElementById('transcript').textContent")
        .await;
    assert!(
        dom.as_str()
            .unwrap()
            .contains("assistant: Hello from the web agent."),
        "{dom}"
    );

    // What the provider heard: the fake microphone's 1 kHz tone, through the page's
    // worklet and 16 kHz PCM, at 24 kHz.
    let appended: Vec<i16> = fake
        .log(|l| l.of_kind(Flavor::OpenAi, "input_audio_buffer.append"))
        .iter()
        .flat_map(|m| pcm_of(m["audio"].as_str().unwrap()))
        .collect();
    assert!(appended.len() >= 36_000, "{} samples", appended.len());
    let tail = &appended[appended.len() - 24_000..];
    let rms = (tail.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
    eprintln!(
        "provider got {} ms from Chromium's microphone, rms {rms:.0}; page state {state}",
        appended.len() / 24
    );
    assert!(
        rms > 300.0,
        "the microphone's audio is near silence: rms {rms:.0}"
    );
    assert!(
        goertzel(tail, 1000.0, 24_000.0) > 20.0 * goertzel(tail, 440.0, 24_000.0),
        "no 1 kHz tone from the microphone"
    );

    // The barge-in: the page is told to clear and drops what it had scheduled.
    let state = page
        .wait_for("the clear", |s| s["clears"].as_u64() >= Some(1))
        .await;
    assert_eq!(state["scheduled"], 0, "{state}");
    assert!(
        fake.log(|l| !l
            .of_kind(Flavor::OpenAi, "conversation.item.truncate")
            .is_empty()),
        "no truncate"
    );

    // Stop: the switch records the conversation and closes with 1000.
    page.eval("agentWebStop()").await;
    let state = page
        .wait_for("the close", |s| s["closeCode"].as_u64().is_some())
        .await;
    assert_eq!(state["closeCode"], 1000, "{state}");
    let (code, list) = api
        .request(
            reqwest::Method::GET,
            &format!("/agents/{agent_id}/conversations"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{list}");
    let conv = &list["data"][0];
    assert_eq!(conv["id"], state["callId"], "{conv}");
    assert_eq!(conv["channel"], "web", "{conv}");
    assert_eq!(conv["status"], "completed", "{conv}");
}
