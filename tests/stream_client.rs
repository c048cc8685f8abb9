//! The media-stream driver (`switchyard::streams`) against a real WebSocket server in the
//! test (tokio-tungstenite on 127.0.0.1:0). Waits are on messages and events;
//! `tokio::time::timeout` only guards against hangs.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use media::stream::{StreamFormat, Track};
use serde_json::{Value, json};
use switchyard::streams::{
    Backoff, DirectConnector, EndReason, Stream, StreamConfig, StreamEvent, spawn,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const GUARD: Duration = Duration::from_secs(20);
type Ws = WebSocketStream<TcpStream>;

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/media", listener.local_addr().unwrap());
    (listener, url)
}

async fn accept(listener: &TcpListener) -> Ws {
    let (tcp, _) = timeout(GUARD, listener.accept()).await.unwrap().unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

/// The next text message as JSON (pongs and other control frames skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = timeout(GUARD, ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(text) = msg {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.unwrap();
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn config(url: &str) -> StreamConfig {
    let mut cfg = StreamConfig::new(url, "CA-call-1", "tenant-9");
    cfg.start.custom_parameters = [("agent".to_owned(), "sales".to_owned())].into();
    cfg.start.from = Some("+15550100".into());
    cfg.start.to = Some("+15550199".into());
    cfg.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    cfg
}

fn start(cfg: StreamConfig) -> Stream {
    spawn(cfg, Arc::new(DirectConnector)).unwrap()
}

async fn next_event(stream: &mut Stream) -> StreamEvent {
    timeout(GUARD, stream.events.recv())
        .await
        .expect("an event in time")
        .expect("events open")
}

/// 20 ms of a 1 kHz tone at 8 kHz, frame `n`.
fn tone_frame(n: usize) -> Vec<i16> {
    (0..160)
        .map(|i| {
            let t = (n * 160 + i) as f32 / 8000.0;
            ((t * 1000.0 * std::f32::consts::TAU).sin() * 10000.0) as i16
        })
        .collect()
}

fn ulaw(pcm: &[i16]) -> Vec<u8> {
    let mut out = vec![0; pcm.len()];
    media::g711::encode_ulaw(pcm, &mut out);
    out
}

/// Reads `connected` and `start`, checks they are the first two messages, returns start.
async fn expect_hello(ws: &mut Ws) -> Value {
    let connected = next_json(ws).await;
    assert_eq!(
        connected,
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
    let start = next_json(ws).await;
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequenceNumber"], "1");
    start
}

#[tokio::test]
async fn connected_and_start_come_first_then_media_and_dtmf() {
    let (listener, url) = listen().await;
    let cfg = config(&url);
    let stream_sid = cfg.stream_sid.clone();
    let mut stream = start(cfg);
    let mut ws = accept(&listener).await;

    let start_msg = expect_hello(&mut ws).await;
    assert_eq!(
        start_msg,
        json!({
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": stream_sid,
            "start": {
                "streamSid": stream_sid,
                "accountSid": "tenant-9",
                "callSid": "CA-call-1",
                "tracks": ["inbound"],
                "customParameters": {"agent": "sales"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "from": "+15550100",
                "to": "+15550199",
                "reconnect": false
            }
        })
    );
    assert_eq!(next_event(&mut stream).await, StreamEvent::Connected);

    // Pings are answered.
    ws.send(Message::Ping(b"are-you-there".to_vec().into()))
        .await
        .unwrap();

    for n in 0..5 {
        assert!(stream.handle.send_audio(Track::Inbound, tone_frame(n)));
    }
    // A track the stream does not carry is not sent.
    assert!(stream.handle.send_audio(Track::Outbound, tone_frame(0)));
    assert!(stream.handle.send_dtmf('7'));

    let mut got_pong = false;
    let mut media = Vec::new();
    while media.len() < 6 {
        let msg = timeout(GUARD, ws.next()).await.unwrap().unwrap().unwrap();
        match msg {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"are-you-there");
                got_pong = true;
            }
            Message::Text(t) => media.push(serde_json::from_str::<Value>(t.as_str()).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
    for (n, m) in media[..5].iter().enumerate() {
        assert_eq!(
            *m,
            json!({
                "event": "media",
                "sequenceNumber": (n + 2).to_string(),
                "streamSid": stream_sid,
                "media": {
                    "track": "inbound",
                    "chunk": (n + 1).to_string(),
                    "timestamp": (n * 20).to_string(),
                    "payload": b64(&ulaw(&tone_frame(n))),
                }
            })
        );
    }
    assert_eq!(
        media[5],
        json!({"event": "dtmf", "sequenceNumber": "7", "streamSid": stream_sid,
               "dtmf": {"track": "inbound_track", "digit": "7"}})
    );
    if !got_pong {
        // The pong may trail the text frames.
        let msg = timeout(GUARD, ws.next()).await.unwrap().unwrap().unwrap();
        assert!(matches!(msg, Message::Pong(_)), "{msg:?}");
    }

    stream.handle.stop();
    let stop = next_json(&mut ws).await;
    assert_eq!(
        stop,
        json!({"event": "stop", "sequenceNumber": "8", "streamSid": stream_sid,
               "stop": {"accountSid": "tenant-9", "callSid": "CA-call-1"}})
    );
    let close = timeout(GUARD, ws.next()).await.unwrap().unwrap().unwrap();
    assert!(
        matches!(&close, Message::Close(Some(f)) if f.code == CloseCode::Normal),
        "{close:?}"
    );
    assert_eq!(
        timeout(GUARD, stream.task).await.unwrap().unwrap(),
        EndReason::Stopped
    );
}

#[tokio::test]
async fn a_mark_comes_back_only_after_its_audio_was_pulled() {
    let (listener, url) = listen().await;
    let mut stream = start(config(&url));
    let mut ws = accept(&listener).await;
    expect_hello(&mut ws).await;

    // 50 ms of audio in odd pieces (7 + 193 + 200 samples), then a mark.
    let pcm: Vec<i16> = (0..400).map(|i| (i as i16 - 200) * 40).collect();
    let wire = ulaw(&pcm);
    for piece in [&wire[..7], &wire[7..200], &wire[200..]] {
        send_json(
            &mut ws,
            json!({"event": "media", "streamSid": "x", "media": {"payload": b64(piece)}}),
        )
        .await;
    }
    send_json(
        &mut ws,
        json!({"event": "mark", "streamSid": "x", "mark": {"name": "m1"}}),
    )
    .await;

    let tap = stream.handle.playout().clone();
    timeout(GUARD, tap.wait_until(|p| p.pending_marks() == 1))
        .await
        .unwrap();
    assert_eq!(tap.queued_ms(), 50);

    // Frames pulled, counted under a lock the server takes when the ack arrives.
    let pulled = Arc::new(Mutex::new(0usize));
    let server_pulled = pulled.clone();
    let server = tokio::spawn(async move {
        let ack = next_json(&mut ws).await;
        let at = *server_pulled.lock().unwrap();
        (ack, at, ws)
    });

    let mut played = Vec::new();
    for _ in 0..2 {
        let mut count = pulled.lock().unwrap();
        let frame = tap.next_frame();
        *count += 1;
        assert_eq!(frame.audio_samples, 160);
        assert!(frame.played_marks.is_empty());
        played.extend(frame.pcm);
    }
    assert_eq!(tap.pending_marks(), 1, "40 of 50 ms played: not yet");
    {
        let mut count = pulled.lock().unwrap();
        let frame = tap.next_frame();
        *count += 1;
        assert_eq!(frame.audio_samples, 80);
        assert_eq!(frame.played_marks, ["m1"]);
        played.extend(&frame.pcm[..80]);
    }
    let decoded: Vec<i16> = wire
        .iter()
        .map(|&b| media::g711::ulaw_to_linear(b))
        .collect();
    assert_eq!(played, decoded);

    let (ack, at, _ws) = timeout(GUARD, server).await.unwrap().unwrap();
    assert_eq!(ack["event"], "mark");
    assert_eq!(ack["mark"]["name"], "m1");
    assert_eq!(at, 3, "acknowledged after the third frame was pulled");
    let _ = next_event(&mut stream).await;
}

#[tokio::test]
async fn clear_answers_with_the_played_ms() {
    let (listener, url) = listen().await;
    let mut stream = start(config(&url));
    let mut ws = accept(&listener).await;
    expect_hello(&mut ws).await;

    let media = |ms: usize| {
        json!({"event": "media", "streamSid": "x",
        "media": {"payload": b64(&vec![0x55u8; ms * 8])}})
    };
    send_json(&mut ws, media(200)).await;
    send_json(&mut ws, json!({"event": "mark", "mark": {"name": "a"}})).await;
    send_json(&mut ws, media(100)).await;
    send_json(&mut ws, json!({"event": "mark", "mark": {"name": "b"}})).await;

    let tap = stream.handle.playout().clone();
    timeout(GUARD, tap.wait_until(|p| p.pending_marks() == 2))
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(tap.next_frame().audio_samples, 160);
    }
    send_json(&mut ws, json!({"event": "clear", "streamSid": "x"})).await;

    let a = next_json(&mut ws).await;
    let b = next_json(&mut ws).await;
    let cleared = next_json(&mut ws).await;
    assert_eq!(
        (&a["event"], &a["mark"]["name"]),
        (&json!("mark"), &json!("a"))
    );
    assert_eq!(
        (&b["event"], &b["mark"]["name"]),
        (&json!("mark"), &json!("b"))
    );
    assert_eq!(cleared["event"], "cleared");
    assert_eq!(
        cleared["cleared"],
        json!({"playedMs": 60, "marks": [
            {"name": "a", "playedMs": 60, "played": false},
            {"name": "b", "playedMs": 60, "played": false}
        ]})
    );
    // Flushed: the very next frame is silence.
    assert_eq!(tap.queued_ms(), 0);
    let frame = tap.next_frame();
    assert_eq!(frame.audio_samples, 0);
    assert!(frame.pcm.iter().all(|&s| s == 0));
    let _ = next_event(&mut stream).await;
}

#[tokio::test]
async fn an_abrupt_drop_reconnects_with_the_same_call_and_the_reconnect_flag() {
    let (listener, url) = listen().await;
    let cfg = config(&url);
    let stream_sid = cfg.stream_sid.clone();
    let mut stream = start(cfg);

    let mut ws = accept(&listener).await;
    let first = expect_hello(&mut ws).await;
    assert_eq!(first["start"]["reconnect"], false);
    assert_eq!(next_event(&mut stream).await, StreamEvent::Connected);

    // The call's 20 ms clock keeps sending frames throughout.
    let handle = stream.handle.clone();
    let pacer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for n in 0.. {
            tick.tick().await;
            handle.send_audio(Track::Inbound, tone_frame(n % 50));
        }
    });
    let before = next_json(&mut ws).await;
    assert_eq!(before["event"], "media");
    let ts_before: u64 = before["media"]["timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // No close frame: the TCP connection just goes.
    drop(ws);
    match next_event(&mut stream).await {
        StreamEvent::Reconnecting { reason } => assert!(!reason.is_empty()),
        other => panic!("expected Reconnecting, got {other:?}"),
    }

    let mut ws = accept(&listener).await;
    let again = expect_hello(&mut ws).await;
    assert_eq!(again["streamSid"], stream_sid);
    assert_eq!(again["start"]["callSid"], "CA-call-1");
    assert_eq!(again["start"]["accountSid"], "tenant-9");
    assert_eq!(again["start"]["reconnect"], true);
    assert!(matches!(
        next_event(&mut stream).await,
        StreamEvent::Resumed { .. }
    ));
    // Audio resumes, later in media time.
    let after = next_json(&mut ws).await;
    assert_eq!(after["event"], "media");
    assert_eq!(after["sequenceNumber"], "2");
    let ts_after: u64 = after["media"]["timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ts_after > ts_before, "{ts_after} > {ts_before}");
    assert_eq!(stream.handle.stats().reconnects, 1);
    pacer.abort();
}

#[tokio::test]
async fn a_normal_close_by_the_server_ends_the_stream_without_reconnecting() {
    let (listener, url) = listen().await;
    let mut stream = start(config(&url));
    let mut ws = accept(&listener).await;
    expect_hello(&mut ws).await;
    assert_eq!(next_event(&mut stream).await, StreamEvent::Connected);
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "goodbye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        next_event(&mut stream).await,
        StreamEvent::Ended(EndReason::ServerClosed)
    );
    // The task is over, so nothing can reconnect.
    assert_eq!(
        timeout(GUARD, stream.task).await.unwrap().unwrap(),
        EndReason::ServerClosed
    );
}

#[tokio::test]
async fn an_abnormal_close_code_reconnects() {
    let (listener, url) = listen().await;
    let mut stream = start(config(&url));
    let mut ws = accept(&listener).await;
    expect_hello(&mut ws).await;
    assert_eq!(next_event(&mut stream).await, StreamEvent::Connected);
    ws.close(Some(CloseFrame {
        code: CloseCode::Error,
        reason: "oops".into(),
    }))
    .await
    .unwrap();
    match next_event(&mut stream).await {
        StreamEvent::Reconnecting { reason } => assert!(reason.contains("1011"), "{reason}"),
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    let mut ws = accept(&listener).await;
    assert_eq!(expect_hello(&mut ws).await["start"]["reconnect"], true);
}

// Real time with a short grace period: pausing tokio's clock needs its `test-util`
// feature, which would rebuild the whole dependency tree for every test build.
#[tokio::test]
async fn a_server_that_never_answers_the_upgrade_fails_after_the_grace_period() {
    let (listener, url) = listen().await;
    // Accepts TCP, never answers the upgrade.
    let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = held_tx.send(tcp);
        }
    });
    let mut cfg = config(&url);
    assert_eq!(
        cfg.grace,
        Duration::from_secs(5),
        "the default grace period"
    );
    cfg.grace = Duration::from_millis(500);
    let mut stream = start(cfg);
    match next_event(&mut stream).await {
        StreamEvent::Ended(EndReason::FailedToConnect { after, reason }) => {
            assert!(after >= Duration::from_millis(500), "{after:?}");
            assert!(reason.contains("did not complete"), "{reason}");
        }
        other => panic!("expected FailedToConnect, got {other:?}"),
    }
    held_rx.close();
    acceptor.abort();
}

#[tokio::test]
async fn a_server_that_stays_away_is_given_up_after_the_grace_period() {
    let (listener, url) = listen().await;
    let mut cfg = config(&url);
    cfg.grace = Duration::from_millis(400);
    let mut stream = start(cfg);
    let mut ws = accept(&listener).await;
    expect_hello(&mut ws).await;
    assert_eq!(next_event(&mut stream).await, StreamEvent::Connected);
    // Gone for good: the socket and the listener (connections are refused).
    drop(listener);
    drop(ws);
    assert!(matches!(
        next_event(&mut stream).await,
        StreamEvent::Reconnecting { .. }
    ));
    match next_event(&mut stream).await {
        StreamEvent::Ended(EndReason::GaveUp { after, reason }) => {
            assert!(after >= Duration::from_millis(400), "{after:?}");
            assert!(reason.contains("no connection within"), "{reason}");
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_does_not_read_never_blocks_the_call() {
    let (listener, url) = listen().await;
    let mut cfg = config(&url);
    cfg.format = StreamFormat::l16(24000).unwrap();
    cfg.call_rate = 24000;
    cfg.send_queue = 32;
    let mut stream = start(cfg);
    let mut ws = accept(&listener).await;
    expect_hello(&mut ws).await;
    assert_eq!(next_event(&mut stream).await, StreamEvent::Connected);
    // From here the server reads nothing.

    let frame = vec![1234i16; 480];
    let handle = stream.handle.clone();
    let filled = timeout(GUARD, async {
        loop {
            // Never blocks: try_send into bounded queues.
            handle.send_audio(Track::Inbound, frame.clone());
            if handle.stats().media_dropped > 100 {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        filled.is_ok(),
        "the send queue filled and media was dropped"
    );
    // The downlink side is still served.
    assert_eq!(stream.handle.playout().next_frame().pcm.len(), 480);
    stream.handle.stop();
    assert_eq!(
        timeout(GUARD, stream.task).await.unwrap().unwrap(),
        EndReason::Stopped
    );
    drop(ws);
}

#[tokio::test]
async fn bad_messages_from_the_server_are_counted_not_fatal() {
    let (listener, url) = listen().await;
    let mut stream = start(config(&url));
    let mut ws = accept(&listener).await;
    expect_hello(&mut ws).await;
    ws.send(Message::text("not json")).await.unwrap();
    send_json(
        &mut ws,
        json!({"event": "media", "media": {"payload": "@@"}}),
    )
    .await;
    send_json(&mut ws, json!({"event": "whatever"})).await;
    send_json(
        &mut ws,
        json!({"event": "mark", "mark": {"name": "still-alive"}}),
    )
    .await;
    let tap = stream.handle.playout().clone();
    timeout(GUARD, tap.wait_until(|p| p.pending_marks() == 1))
        .await
        .unwrap();
    let stats = stream.handle.stats();
    assert_eq!((stats.bad_messages, stats.ignored_messages), (2, 1));
    assert_eq!(tap.next_frame().played_marks, ["still-alive"]);
    assert_eq!(next_json(&mut ws).await["mark"]["name"], "still-alive");
    let _ = next_event(&mut stream).await;
}
