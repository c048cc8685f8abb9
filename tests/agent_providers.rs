//! The model-provider driver (`switchyard::agents::provider`) against fake OpenAI Realtime
//! and Gemini Live servers on 127.0.0.1 (tests/common/fake_realtime.rs) speaking the wire
//! protocol: credentials, setup, greeting, caller audio, a tone back, barge-in, a tool
//! call and its result, truncation, the server's close. Waits are on messages and events;
//! `timeout` only guards against hangs.
#![allow(clippy::unwrap_used)]

#[path = "common/fake_realtime.rs"]
mod fake_realtime;

use std::sync::Arc;
use std::time::Duration;

use fake_realtime::{
    Action, FakeRealtime, Flavor, Trigger, gemini_audio, goertzel, openai_audio,
    openai_function_call, openai_response_done, tone,
};
use serde_json::{Value, json};
use switchyard::agents::provider::{
    ProviderConfig, ProviderEvent, ProviderKind, ProviderSession, Role, SessionSetup, ToolSpec,
    spawn,
};
use switchyard::streams::DirectConnector;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(20);

fn weather_tool() -> ToolSpec {
    ToolSpec {
        name: "get_weather".into(),
        description: "Weather for a city".into(),
        parameters: json!({
            "type": "object",
            "properties": { "city": { "type": "string" } },
            "required": ["city"],
        }),
    }
}

fn setup(model: &str) -> SessionSetup {
    SessionSetup {
        model: model.into(),
        instructions: "You answer the phone for Acme.".into(),
        voice: None,
        language: Some("en-US".into()),
        greeting: Some("Hello, Acme here.".into()),
        tools: vec![weather_tool()],
    }
}

fn config(url: &str, key: &str) -> ProviderConfig {
    ProviderConfig {
        url: Some(url.to_owned()),
        api_key: Some(key.to_owned()),
        ..ProviderConfig::default()
    }
}

/// What a test saw from the session.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<ProviderEvent>,
    audio: Vec<i16>,
}

impl Seen {
    /// Events other than audio, in order.
    fn control(&self) -> Vec<&ProviderEvent> {
        self.events.iter().filter(|e| !e.is_audio()).collect()
    }
}

/// Plays the call: 20 ms frames of caller audio while the session is up, `truncate(heard)`
/// on barge-in, `result` for every tool call; returns at the fatal end.
async fn run_call(mut session: ProviderSession, heard_ms: u32, result: Value) -> Seen {
    let frame = vec![0i16; (session.input_rate() / 50) as usize];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut seen = Seen::default();
    let mut ready = false;
    loop {
        tokio::select! {
            _ = tick.tick(), if ready => { session.send_audio(frame.clone()); }
            event = session.recv() => {
                let Some(event) = event else { break };
                match &event {
                    ProviderEvent::Ready => ready = true,
                    ProviderEvent::Audio(pcm) => seen.audio.extend_from_slice(pcm),
                    ProviderEvent::SpeechStarted => session.truncate(heard_ms),
                    ProviderEvent::ToolCall { call_id, name, .. } => {
                        session.tool_result(call_id, name, result.clone());
                    }
                    _ => {}
                }
                let end = matches!(event, ProviderEvent::Error { fatal: true, .. });
                seen.events.push(event);
                if end {
                    break;
                }
            }
        }
    }
    // The queue closes after the fatal error.
    assert_eq!(timeout(GUARD, session.recv()).await.unwrap(), None);
    seen
}

fn assert_tone(pcm: &[i16], freq: f64, rate: f64) {
    let on = goertzel(pcm, freq, rate);
    let off = goertzel(pcm, 1000.0, rate);
    assert!(on > 100.0 * off, "{freq} Hz: {on} vs 1 kHz: {off}");
}

#[tokio::test]
async fn openai_realtime_session_end_to_end() {
    let greeting_tone = tone(440.0, 24_000, 300);
    let fake = FakeRealtime::builder(Flavor::OpenAi)
        .api_key("sk-test")
        // The greeting's response: 300 ms of 440 Hz in three deltas, its transcript.
        .step(Trigger::Received("response.create"), {
            let mut a = openai_audio("item_greet", &greeting_tone, 3);
            a.push(Action::Send(json!({
                "type": "response.output_audio_transcript.done",
                "event_id": "event_tr", "response_id": "resp_fake", "item_id": "item_greet",
                "output_index": 0, "content_index": 0, "transcript": "Hello, Acme here.",
            })));
            a.push(openai_response_done("resp_greet"));
            a
        })
        // The caller talks over it, then asks something that needs a tool.
        .step(Trigger::InputAudioMs(200), {
            let mut a = vec![
                Action::Send(json!({
                    "type": "input_audio_buffer.speech_started", "event_id": "event_ss",
                    "audio_start_ms": 180, "item_id": "item_user1",
                })),
                Action::Send(json!({
                    "type": "input_audio_buffer.speech_stopped", "event_id": "event_sp",
                    "audio_end_ms": 200, "item_id": "item_user1",
                })),
                Action::Send(json!({
                    "type": "conversation.item.input_audio_transcription.completed",
                    "event_id": "event_tx", "item_id": "item_user1", "content_index": 0,
                    "transcript": "Weather in Paris?",
                })),
            ];
            a.extend(openai_function_call(
                "call_w1",
                "get_weather",
                &json!({ "city": "Paris" }),
            ));
            a.push(openai_response_done("resp_fc"));
            a
        })
        .step(Trigger::Received("conversation.item.truncate"), vec![])
        .step(Trigger::Received("conversation.item.create"), vec![])
        .step(
            Trigger::Received("response.create"),
            vec![Action::Close(1000, "done")],
        )
        .spawn()
        .await;

    let session = spawn(
        config(&fake.url, "sk-test"),
        setup("gpt-realtime"),
        Arc::new(DirectConnector),
    );
    assert_eq!(session.kind(), ProviderKind::OpenAi);
    assert_eq!(
        (session.input_rate(), session.output_rate()),
        (24_000, 24_000)
    );
    let seen = timeout(GUARD, run_call(session, 100, json!({ "temp_c": 21 })))
        .await
        .unwrap();

    // Events, in order.
    let control = seen.control();
    assert_eq!(control[0], &ProviderEvent::Ready);
    let pos = |want: &ProviderEvent| control.iter().position(|e| *e == want);
    let transcript = ProviderEvent::Transcript {
        role: Role::Assistant,
        text: "Hello, Acme here.".into(),
        is_final: true,
    };
    let tool_call = ProviderEvent::ToolCall {
        call_id: "call_w1".into(),
        name: "get_weather".into(),
        arguments: json!({ "city": "Paris" }),
    };
    let order = [
        pos(&transcript),
        pos(&ProviderEvent::ResponseDone),
        pos(&ProviderEvent::SpeechStarted),
        pos(&ProviderEvent::SpeechStopped),
        pos(&ProviderEvent::Transcript {
            role: Role::User,
            text: "Weather in Paris?".into(),
            is_final: true,
        }),
        pos(&tool_call),
    ];
    assert!(order.iter().all(Option::is_some), "{control:?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{control:?}");
    assert_eq!(control.iter().filter(|e| ***e == tool_call).count(), 1);
    match control.last().unwrap() {
        ProviderEvent::Error {
            message,
            fatal: true,
        } => assert!(message.contains("1000"), "{message}"),
        other => panic!("ended with {other:?}"),
    }

    // The tone, whole and in tune.
    assert_eq!(seen.audio.len(), greeting_tone.len());
    assert_eq!(seen.audio, greeting_tone);
    assert_tone(&seen.audio, 440.0, 24_000.0);

    // What the server received.
    fake.log(|log| {
        let hs = &log.handshakes[0];
        assert!(hs.accepted);
        assert_eq!(hs.authorization.as_deref(), Some("Bearer sk-test"));
        assert_eq!(hs.query.get("model").map(String::as_str), Some("gpt-realtime"));
        assert_eq!(hs.path, "/v1/realtime");

        let kinds = log.kinds(Flavor::OpenAi);
        assert_eq!(kinds[0], "session.update");
        assert_eq!(kinds[1], "response.create");
        let update = &log.messages[0]["session"];
        assert_eq!(update["type"], "realtime");
        assert_eq!(update["audio"]["input"]["format"], json!({ "type": "audio/pcm", "rate": 24000 }));
        assert_eq!(update["audio"]["input"]["turn_detection"]["type"], "server_vad");
        assert_eq!(update["tools"][0]["name"], "get_weather");
        assert_eq!(update["tools"][0]["type"], "function");
        assert!(log.messages[1]["response"]["instructions"].as_str().unwrap().contains("Hello, Acme here."));
        assert!(log.input_samples >= 200 * 24, "{}", log.input_samples);

        let truncate = log.of_kind(Flavor::OpenAi, "conversation.item.truncate");
        assert_eq!(
            truncate,
            vec![json!({ "type": "conversation.item.truncate", "item_id": "item_greet", "content_index": 0, "audio_end_ms": 100 })]
        );
        let output = log.of_kind(Flavor::OpenAi, "conversation.item.create");
        assert_eq!(
            output,
            vec![json!({ "type": "conversation.item.create", "item": { "type": "function_call_output", "call_id": "call_w1", "output": "{\"temp_c\":21}" } })]
        );
        // The result is followed by a new response.
        let result_at = kinds.iter().position(|k| k == "conversation.item.create").unwrap();
        assert_eq!(kinds[result_at + 1], "response.create");
        assert_eq!(log.steps_done, 5);
        assert_eq!(log.garbage, 0);
    });
}

#[tokio::test]
async fn gemini_live_session_end_to_end() {
    let model = "gemini-2.5-flash-native-audio-preview-12-2025";
    let greeting_tone = tone(440.0, 24_000, 300);
    let fake = FakeRealtime::builder(Flavor::Gemini)
        .api_key("AIza-test")
        .step(Trigger::Received("realtimeInput.text"), {
            let mut a = gemini_audio(&greeting_tone, 3);
            a.push(Action::Send(json!({ "serverContent": { "outputTranscription": { "text": "Hello, Acme here." } } })));
            a.push(Action::Send(json!({ "serverContent": { "turnComplete": true } })));
            a
        })
        .step(
            Trigger::InputAudioMs(200),
            vec![
                Action::Send(json!({ "serverContent": { "inputTranscription": { "text": "Weather in Paris?" } } })),
                Action::Send(json!({ "serverContent": { "interrupted": true } })),
                Action::Send(json!({
                    "toolCall": { "functionCalls": [{ "id": "fc-1", "name": "get_weather", "args": { "city": "Paris" } }] }
                })),
            ],
        )
        .step(
            Trigger::Received("toolResponse"),
            vec![
                Action::Send(json!({ "goAway": { "timeLeft": "1s" } })),
                Action::Close(1000, "bye"),
            ],
        )
        .spawn()
        .await;

    // Kind from the model name.
    let session = spawn(
        config(&fake.url, "AIza-test"),
        setup(model),
        Arc::new(DirectConnector),
    );
    assert_eq!(session.kind(), ProviderKind::Gemini);
    assert_eq!(
        (session.input_rate(), session.output_rate()),
        (16_000, 24_000)
    );
    let seen = timeout(GUARD, run_call(session, 100, json!("sunny, 21 C")))
        .await
        .unwrap();

    let control = seen.control();
    assert_eq!(control[0], &ProviderEvent::Ready);
    let pos = |want: &ProviderEvent| control.iter().position(|e| *e == want);
    let tool_call = ProviderEvent::ToolCall {
        call_id: "fc-1".into(),
        name: "get_weather".into(),
        arguments: json!({ "city": "Paris" }),
    };
    let order = [
        pos(&ProviderEvent::Transcript {
            role: Role::Assistant,
            text: "Hello, Acme here.".into(),
            is_final: true,
        }),
        pos(&ProviderEvent::ResponseDone),
        pos(&ProviderEvent::SpeechStarted),
        pos(&tool_call),
    ];
    assert!(order.iter().all(Option::is_some), "{control:?}");
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{control:?}");
    assert!(control.iter().any(
        |e| matches!(e, ProviderEvent::Error { fatal: false, message } if message.contains("1s"))
    ));
    assert!(matches!(
        control.last().unwrap(),
        ProviderEvent::Error { fatal: true, .. }
    ));

    assert_eq!(seen.audio, greeting_tone);
    assert_tone(&seen.audio, 440.0, 24_000.0);

    fake.log(|log| {
        let hs = &log.handshakes[0];
        assert!(hs.accepted);
        assert_eq!(hs.query.get("key").map(String::as_str), Some("AIza-test"));
        assert_eq!(hs.authorization, None, "Gemini's key goes in the query only");

        let kinds = log.kinds(Flavor::Gemini);
        assert_eq!(kinds[0], "setup");
        // The greeting waits for setupComplete and precedes the audio.
        assert_eq!(kinds[1], "realtimeInput.text");
        let setup = &log.messages[0]["setup"];
        assert_eq!(setup["model"], format!("models/{model}"));
        assert_eq!(setup["generationConfig"]["responseModalities"], json!(["AUDIO"]));
        assert_eq!(setup["generationConfig"]["speechConfig"]["languageCode"], "en-US");
        assert_eq!(setup["systemInstruction"]["parts"][0]["text"], "You answer the phone for Acme.");
        assert_eq!(setup["tools"][0]["functionDeclarations"][0]["name"], "get_weather");
        assert_eq!(setup["inputAudioTranscription"], json!({}));
        assert_eq!(setup["outputAudioTranscription"], json!({}));

        let audio = log.of_kind(Flavor::Gemini, "realtimeInput.audio");
        assert!(!audio.is_empty());
        assert_eq!(audio[0]["realtimeInput"]["audio"]["mimeType"], "audio/pcm;rate=16000");
        assert!(log.input_samples >= 200 * 16, "{}", log.input_samples);

        assert_eq!(
            log.of_kind(Flavor::Gemini, "toolResponse"),
            vec![json!({ "toolResponse": { "functionResponses": [{ "id": "fc-1", "name": "get_weather", "response": { "output": "sunny, 21 C" } }] } })]
        );
        // No truncation message exists: nothing else was sent.
        assert!(kinds.iter().all(|k| ["setup", "realtimeInput.text", "realtimeInput.audio", "toolResponse"].contains(&k.as_str())), "{kinds:?}");
        assert_eq!(log.steps_done, 3);
    });
}

#[tokio::test]
async fn wrong_or_missing_keys_end_the_session_with_a_fatal_error() {
    let fake = FakeRealtime::builder(Flavor::OpenAi)
        .api_key("sk-right")
        .spawn()
        .await;
    let mut session = spawn(
        config(&fake.url, "sk-wrong"),
        setup("gpt-realtime"),
        Arc::new(DirectConnector),
    );
    let event = timeout(GUARD, session.recv()).await.unwrap().unwrap();
    match event {
        ProviderEvent::Error {
            message,
            fatal: true,
        } => {
            assert!(message.contains("401"), "{message}");
            assert!(!message.contains("sk-wrong"), "the key leaked: {message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(timeout(GUARD, session.recv()).await.unwrap(), None);
    assert!(!fake.log(|l| l.handshakes[0].accepted));

    // Gemini: the key is in the URL; errors must not show it.
    let fake = FakeRealtime::builder(Flavor::Gemini)
        .api_key("AIza-right")
        .spawn()
        .await;
    let mut session = spawn(
        config(&fake.url, "AIza-wrong"),
        setup("gemini-live-2.5-flash"),
        Arc::new(DirectConnector),
    );
    match timeout(GUARD, session.recv()).await.unwrap().unwrap() {
        ProviderEvent::Error {
            message,
            fatal: true,
        } => assert!(!message.contains("AIza-wrong"), "{message}"),
        other => panic!("{other:?}"),
    }

    let mut session = spawn(
        ProviderConfig {
            url: Some(fake.url.clone()),
            ..ProviderConfig::default()
        },
        setup("gpt-realtime"),
        Arc::new(DirectConnector),
    );
    match timeout(GUARD, session.recv()).await.unwrap().unwrap() {
        ProviderEvent::Error {
            message,
            fatal: true,
        } => assert!(message.contains("API key"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn close_ends_quietly_and_audio_before_ready_is_not_lost_on_openai() {
    let fake = FakeRealtime::builder(Flavor::OpenAi).spawn().await;
    let mut session = spawn(
        config(&fake.url, "test-key"),
        setup("gpt-realtime"),
        Arc::new(DirectConnector),
    );
    assert!(session.send_audio(vec![0; 480]));
    assert_eq!(
        timeout(GUARD, session.recv()).await.unwrap(),
        Some(ProviderEvent::Ready)
    );
    assert!(fake.wait_until(GUARD, |l| l.input_samples == 480).await);
    session.close();
    // No error for a close we asked for; the queue just ends.
    assert_eq!(timeout(GUARD, session.recv()).await.unwrap(), None);
    assert!(fake.wait_until(GUARD, |l| l.closed).await);
    assert!(!session.send_audio(vec![0; 480]));
}

/// Runs a Gemini session whose first connection gives a resumption handle and then ends
/// with `ending` (after the greeting is asked for); returns once the fake has seen caller
/// audio on a second connection, whose `setup` is returned with the session's events.
async fn resumed_gemini_session(ending: Vec<Action>) -> (Value, Vec<ProviderEvent>, FakeRealtime) {
    let mut actions = vec![Action::Send(json!({
        "sessionResumptionUpdate": { "newHandle": "handle-7", "resumable": true }
    }))];
    actions.extend(ending);
    let fake = FakeRealtime::builder(Flavor::Gemini)
        .api_key("AIza-test")
        .step(Trigger::Received("realtimeInput.text"), actions)
        .spawn()
        .await;
    let mut session = spawn(
        config(&fake.url, "AIza-test"),
        setup("gemini-live-2.5-flash-preview"),
        Arc::new(DirectConnector),
    );
    // Caller audio on the second connection: after its `setup`.
    let resumed = |l: &fake_realtime::Log| {
        let kinds = l.kinds(Flavor::Gemini);
        kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| *k == "setup")
            .nth(1)
            .is_some_and(|(at, _)| kinds[at..].iter().any(|k| k == "realtimeInput.audio"))
    };
    let mut events = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::Instant::now() + GUARD;
    while !fake.log(resumed) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            fake.log(|l| l.kinds(Flavor::Gemini))
        );
        tokio::select! {
            _ = tick.tick() => { session.send_audio(vec![0; 320]); }
            event = session.recv() => events.push(event.expect("the session ended")),
        }
    }
    session.close();
    let setups = fake.log(|l| l.of_kind(Flavor::Gemini, "setup"));
    assert_eq!(setups.len(), 2, "{setups:?}");
    assert_eq!(setups[0]["setup"]["sessionResumption"], json!({}));
    (setups[1].clone(), events, fake)
}

#[tokio::test]
async fn gemini_go_away_resumes_the_session_on_a_new_connection() {
    let (second, events, fake) = resumed_gemini_session(vec![Action::Send(
        json!({ "goAway": { "timeLeft": "30s" } }),
    )])
    .await;
    assert_eq!(
        second["setup"]["sessionResumption"],
        json!({ "handle": "handle-7" })
    );
    assert_eq!(
        second["setup"]["model"],
        "models/gemini-live-2.5-flash-preview"
    );
    // No error reached the call; the greeting was asked for once.
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ProviderEvent::Error { .. })),
        "{events:?}"
    );
    assert_eq!(
        fake.log(|l| l.of_kind(Flavor::Gemini, "realtimeInput.text"))
            .len(),
        1
    );
    assert_eq!(fake.log(|l| l.handshakes.len()), 2);
}

#[tokio::test]
async fn a_dropped_gemini_connection_is_resumed_with_the_last_handle() {
    let (second, events, _fake) =
        resumed_gemini_session(vec![Action::Close(1011, "internal error")]).await;
    assert_eq!(
        second["setup"]["sessionResumption"],
        json!({ "handle": "handle-7" })
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ProviderEvent::Error { fatal: true, .. })),
        "{events:?}"
    );
}
