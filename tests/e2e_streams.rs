//! Agent audio streams against the real binary: an API call to a SIPp carrier that plays a
//! 1 kHz tone, streamed to a WebSocket server written here that speaks the Twilio media
//! stream messages. The tone is checked where it arrives on the socket; the 440 Hz the
//! server sends back is checked where it arrives at the far end (a capture of the RTP
//! SIPp receives); the mark comes back only once that audio has been played; the
//! server's normal close hangs the call up. A server that never completes the upgrade
//! fails the stream after its grace period.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Sipp;
use common::harness::{self, GUARD, Harness};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const RTP: (u16, u16) = (36000, 36099);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of `tests/sipp/<name>` with its `pcap-fixtures/` paths made absolute.
fn scenario_with_fixtures(name: &str) -> (tempfile::TempDir, PathBuf) {
    let text = std::fs::read_to_string(common::sipp::scenario_dir().join(name)).expect("scenario");
    let fixtures = format!("\"{}/pcap-fixtures/", repo().display());
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(name);
    std::fs::write(&path, text.replace("\"pcap-fixtures/", &fixtures)).expect("write scenario");
    (dir, path)
}

fn goertzel(x: &[i16], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &s in x {
        let s0 = f64::from(s) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

fn ulaw(bytes: &[u8]) -> Vec<i16> {
    bytes
        .iter()
        .map(|&b| media::g711::ulaw_to_linear(b))
        .collect()
}

/// Verified callbacks of `call_id` until `event_type`; returns them all.
async fn events_until(h: &mut Harness, call_id: &str, event_type: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let r = h.sink.next_accepted(GUARD).await;
        let e = h.sink.verify(&h.secret, &r);
        assert_eq!(e["data"]["call"]["id"], call_id, "{e}");
        let done = e["type"] == event_type;
        got.push(e);
        if done {
            return got;
        }
        assert!(got.len() < 30, "no {event_type}: {got:#?}");
    }
}

async fn next_json(ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Value {
    loop {
        let msg = tokio::time::timeout(GUARD, ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(t.as_str()).expect("json");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_hears_the_call_and_talks_to_it() {
    let (_dir, scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = Sipp::builder(scenario.to_str().expect("utf-8")).spawn();
    let mut h = harness::setup(&far, |c| c.rtp_ports(RTP.0, RTP.1)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/media", listener.local_addr().expect("addr"));
    let capture =
        common::capture::Capture::start(&format!("udp and src portrange {}-{}", RTP.0, RTP.1))
            .await;
    let id = h
        .call(json!({"stream": {"url": url, "parameters": {"agent": "demo"}}}))
        .await;
    let (tcp, _) = tokio::time::timeout(GUARD, listener.accept())
        .await
        .expect("the switch connects")
        .expect("accept");
    let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");

    // `connected`, then `start`, nothing before them.
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["event"], "connected", "{connected}");
    let start = next_json(&mut ws).await;
    assert_eq!(start["event"], "start", "{start}");
    assert_eq!(start["start"]["callSid"], id.as_str());
    assert_eq!(start["start"]["accountSid"], "acme");
    assert_eq!(start["start"]["customParameters"]["agent"], "demo");
    assert_eq!(start["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
    assert_eq!(start["start"]["mediaFormat"]["sampleRate"], 8000);
    let stream_sid = start["streamSid"].as_str().expect("streamSid").to_owned();

    // The caller's 1 kHz tone, as it arrives on the socket (1 s of it).
    let mut heard = Vec::new();
    while heard.len() < 8000 {
        let m = next_json(&mut ws).await;
        if m["event"] != "media" {
            continue;
        }
        assert_eq!(m["streamSid"], stream_sid.as_str());
        assert_eq!(m["media"]["track"], "inbound");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(m["media"]["payload"].as_str().expect("payload"))
            .expect("base64");
        heard.extend(ulaw(&payload));
    }
    let tail = &heard[4000..];
    assert!(
        goertzel(tail, 1000.0, 8000.0) > 50.0 * goertzel(tail, 440.0, 8000.0),
        "no 1 kHz tone on the socket"
    );

    // The agent talks: 600 ms of 440 Hz in odd-sized chunks, then a mark.
    let talk: Vec<u8> = (0..4800)
        .map(|i| {
            let x = (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 8000.0).sin();
            media::g711::linear_to_ulaw((x * 12000.0) as i16)
        })
        .collect();
    let sent_at = Instant::now();
    for chunk in talk.chunks(333) {
        let media = json!({"event": "media", "streamSid": stream_sid, "media": {
            "payload": base64::engine::general_purpose::STANDARD.encode(chunk)}});
        ws.send(Message::text(media.to_string()))
            .await
            .expect("send");
    }
    let mark = json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": "said-hello"}});
    ws.send(Message::text(mark.to_string()))
        .await
        .expect("send");
    let echoed = loop {
        let m = next_json(&mut ws).await;
        if m["event"] == "mark" {
            break m;
        }
    };
    let took = sent_at.elapsed();
    assert_eq!(echoed["mark"]["name"], "said-hello");
    assert!(
        took >= Duration::from_millis(550),
        "the mark came back after {took:?}: before its 600 ms of audio were played"
    );

    // The agent hangs up: a normal close ends the call.
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .expect("close");
    let events = events_until(&mut h, &id, "call.completed").await;
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    let started = types.iter().position(|t| *t == "call.stream.started");
    let stopped = types.iter().position(|t| *t == "call.stream.stopped");
    assert!(started.is_some() && started < stopped, "{types:?}");
    let stop = &events[stopped.expect("stopped")]["data"];
    assert_eq!(stop["reason"], "server_closed", "{stop}");
    assert_eq!(stop["stream_id"], stream_sid.as_str());
    let done = &events.last().expect("completed")["data"]["call"];
    assert_eq!(done["end_reason"], "stream_ended", "{done}");
    far.wait().await.assert_success("far end");

    // What SIPp received from the switch: the agent's 440 Hz among the silence.
    let packets = capture.finish().await;
    let pcm: Vec<i16> = packets
        .iter()
        .filter(|d| d.payload.len() == 172)
        .flat_map(|d| ulaw(&d.payload[12..]))
        .collect();
    let loud: Vec<i16> = pcm
        .chunks(160)
        .filter(|f| f.iter().any(|s| s.abs() > 4000))
        .flatten()
        .copied()
        .collect();
    assert!(
        loud.len() >= 4000,
        "{} samples of the agent reached the far end",
        loud.len()
    );
    assert!(
        goertzel(&loud, 440.0, 8000.0) > 50.0 * goertzel(&loud, 1000.0, 8000.0),
        "the far end did not hear 440 Hz"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_upgrades_fails_the_stream_after_the_grace_period() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let mut h = harness::setup(&far, |c| {
        c.rtp_ports(36100, 36199).extra("[streams]\ngrace_s = 1\n")
    })
    .await;
    // Accepts TCP and then says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/media", listener.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            socks.push(s);
        }
    });
    let id = h.call(json!({"stream": {"url": url}})).await;
    let events = events_until(&mut h, &id, "call.completed").await;
    let failed = events
        .iter()
        .find(|e| e["type"] == "call.stream.failed")
        .unwrap_or_else(|| panic!("no call.stream.failed: {events:#?}"));
    assert!(
        failed["data"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{failed}"
    );
    let done = &events.last().expect("completed")["data"]["call"];
    assert_eq!(done["end_reason"], "stream_failed", "{done}");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_urls_are_checked() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let h = harness::setup(&far, |c| c.rtp_ports(36200, 36299)).await;
    for (stream, field) in [
        (json!({"url": "http://example.com/x"}), "stream.url"),
        (
            json!({"url": "ws://127.0.0.1:1/x", "encoding": "audio/x-l16", "sample_rate": 11025}),
            "stream.encoding",
        ),
        (
            json!({"url": "ws://127.0.0.1:1/x", "on_close": "maybe"}),
            "stream.on_close",
        ),
    ] {
        let (code, body) = h
            .api
            .create_call(json!({"to": "+14155552671", "from": "+12025551234", "stream": stream}))
            .await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(body["details"][0]["field"], field, "{body}");
    }
}
