//! Agent audio streams against the real binary: an API call to a SIPp carrier that plays a
//! 1 kHz tone, streamed to a WebSocket server written here that speaks the Twilio media
//! stream messages. The tone is checked where it arrives on the socket; the 440 Hz the
//! server sends back is checked where it arrives at the far end (a capture of the RTP
//! SIPp receives); the mark comes back only once that audio has been played; the
//! server's normal close hangs the call up. A server that never completes the upgrade
//! fails the stream after its grace period.

mod common;

use common::fixtures::{goertzel, scenario_with_fixtures};
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
    let metrics = h.switch.metrics().await;
    for line in [
        "switchyard_streams_started_total 1",
        "switchyard_streams_ended_total{reason=\"server_closed\"} 1",
        "switchyard_streams_active 0",
    ] {
        assert!(metrics.contains(line), "{line} not in {metrics}");
    }

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

/// A WebSocket server's side of one connection: the first two messages, checked.
async fn accept_stream(
    listener: &TcpListener,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    Value,
) {
    let (tcp, _) = tokio::time::timeout(GUARD, listener.accept())
        .await
        .expect("the switch connects")
        .expect("accept");
    let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
    let connected = next_json(&mut ws).await;
    assert_eq!(connected["event"], "connected", "{connected}");
    let start = next_json(&mut ws).await;
    assert_eq!(start["event"], "start", "{start}");
    (ws, start)
}

/// Media of each track until both have `n` samples (µ-law decoded).
async fn both_tracks(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    n: usize,
) -> (Vec<i16>, Vec<i16>) {
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    while inbound.len() < n || outbound.len() < n {
        let m = next_json(ws).await;
        if m["event"] != "media" {
            continue;
        }
        let payload = base64::engine::general_purpose::STANDARD
            .decode(m["media"]["payload"].as_str().expect("payload"))
            .expect("base64");
        match m["media"]["track"].as_str() {
            Some("inbound") => inbound.extend(ulaw(&payload)),
            Some("outbound") => outbound.extend(ulaw(&payload)),
            other => panic!("track {other:?}"),
        }
    }
    (inbound, outbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_only_fork_of_a_transit_call_hears_both_parties() {
    let (_far_dir, far_scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = Sipp::builder(far_scenario.to_str().expect("utf-8")).spawn();
    let mut h = common::transit::start_with(far.addr(), common::transit::TRANSIT_PLAN, "", |c| {
        c.rtp_ports(36300, 36399)
    })
    .await;
    // What the callee receives from the switch, to see the fork leaves it alone.
    let capture = common::capture::Capture::start(&format!(
        "udp and src portrange 36300-36399 and dst port {}",
        far.media_addr().port()
    ))
    .await;
    let (_dir, scenario) = scenario_with_fixtures("bridge_uac_g722_tone.xml");
    let caller = Sipp::builder(scenario.to_str().expect("utf-8"))
        .remote(h.switch.sip_udp())
        .pause_ms(2500)
        .spawn();
    let answered = h
        .sink
        .next_matching(&h.secret, GUARD, |e| e["type"] == "call.in_progress")
        .await;
    let id = answered["data"]["call"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/fork", listener.local_addr().expect("addr"));
    let (code, resp) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/streams"),
            Some(&json!({"url": url})),
        )
        .await;
    assert_eq!(code, 201, "{resp}");
    let stream_id = resp["data"]["stream_id"]
        .as_str()
        .expect("stream_id")
        .to_owned();
    let (mut ws, start) = accept_stream(&listener).await;
    assert_eq!(start["streamSid"], stream_id.as_str());
    assert_eq!(
        start["start"]["tracks"],
        json!(["inbound", "outbound"]),
        "{start}"
    );
    // A second stream on the same call is refused while this one runs.
    let (code, resp) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/streams"),
            Some(&json!({"url": url})),
        )
        .await;
    assert_eq!(
        (code, resp["code"].as_str()),
        (409, Some("CALL_NOT_STREAMABLE")),
        "{resp}"
    );
    // The caller's 600 Hz (G.722, transcoded for the callee) and the callee's 1 kHz.
    let (inbound, outbound) = both_tracks(&mut ws, 4000).await;
    let (i, o) = (&inbound[1600..], &outbound[1600..]);
    assert!(
        goertzel(i, 600.0, 8000.0) > 20.0 * goertzel(i, 1000.0, 8000.0),
        "inbound is not the caller"
    );
    assert!(
        goertzel(o, 1000.0, 8000.0) > 20.0 * goertzel(o, 600.0, 8000.0),
        "outbound is not the callee"
    );
    // Stopped by API: `stop` reaches the server, the call goes on to its normal end.
    let (code, _) = h
        .api
        .request(
            reqwest::Method::DELETE,
            &format!("/voice/calls/{id}/streams/{stream_id}"),
            None,
        )
        .await;
    assert_eq!(code, 204);
    loop {
        let m = next_json(&mut ws).await;
        if m["event"] == "stop" {
            assert_eq!(m["stop"]["callSid"], id.as_str(), "{m}");
            break;
        }
    }
    caller.wait().await.assert_success("caller");
    far.wait().await.assert_success("callee");
    let done = h
        .sink
        .next_matching(&h.secret, GUARD, |e| e["type"] == "call.completed")
        .await;
    assert_eq!(done["data"]["call"]["end_reason"], "caller_bye", "{done}");
    // The callee heard the caller's 600 Hz (transcoded to PCMU) throughout: 20 ms
    // packets, none lost to the fork.
    let packets = capture.finish().await;
    let rtp: Vec<&common::capture::Datagram> = packets
        .iter()
        .filter(|d| d.payload.len() == 172 && d.payload[1] & 0x7f == 0)
        .collect();
    let seqs: Vec<u16> = rtp
        .iter()
        .map(|d| u16::from_be_bytes([d.payload[2], d.payload[3]]))
        .collect();
    assert!(rtp.len() >= 100, "{} packets to the callee", rtp.len());
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "a gap in what the callee received"
    );
    let pcm: Vec<i16> = rtp.iter().flat_map(|d| ulaw(&d.payload[12..])).collect();
    let mid = &pcm[pcm.len() / 4..pcm.len() * 3 / 4];
    assert!(
        goertzel(mid, 600.0, 8000.0) > 20.0 * goertzel(mid, 1000.0, 8000.0),
        "the callee did not hear the caller"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbound_call_streamed_by_the_dialplan_sends_its_digits() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/bot", listener.local_addr().expect("addr"));
    let plan = format!(
        "[[rules]]\nname = \"bot\"\nto = {{ prefix = \"+1\" }}\nsource_trunk = \"upstream\"\n\
         stream = {{ url = \"{url}\", parameters = {{ line = \"support\" }} }}\n"
    );
    let far = Sipp::uas("uas_answer_hold.xml");
    let h = common::transit::start_with(far.addr(), &plan, "", |c| c.rtp_ports(36400, 36499)).await;
    let (_dir, scenario) = scenario_with_fixtures("bridge_uac_pcmu_dtmf.xml");
    let caller = Sipp::builder(scenario.to_str().expect("utf-8"))
        .remote(h.switch.sip_udp())
        .pause_ms(1500)
        .spawn();
    let (mut ws, start) = accept_stream(&listener).await;
    assert_eq!(
        start["start"]["customParameters"]["line"], "support",
        "{start}"
    );
    assert_eq!(start["start"]["to"], "+14155552671", "{start}");
    let call_id = start["start"]["callSid"]
        .as_str()
        .expect("callSid")
        .to_owned();
    let digit = loop {
        let m = next_json(&mut ws).await;
        if m["event"] == "dtmf" {
            break m;
        }
    };
    assert_eq!(digit["dtmf"]["digit"], "1", "{digit}");
    // The caller hangs up: the server gets `stop`.
    loop {
        let m = next_json(&mut ws).await;
        if m["event"] == "stop" {
            break;
        }
    }
    caller.wait().await.assert_success("caller");
    let (code, call) = h.api.get_call(&call_id).await;
    assert_eq!(code, 200, "{call}");
    assert_eq!(call["data"]["metadata"]["route"], "stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_reports_what_was_played_and_a_dropped_socket_resumes() {
    let (_dir, scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = Sipp::builder(scenario.to_str().expect("utf-8")).spawn();
    let mut h = harness::setup(&far, |c| c.rtp_ports(36500, 36599)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/media", listener.local_addr().expect("addr"));
    let id = h.call(json!({"stream": {"url": url}})).await;
    let (mut ws, start) = accept_stream(&listener).await;
    let sid = start["streamSid"].as_str().expect("sid").to_owned();

    // Barge-in: 2 s of audio and a mark, then `clear` after about 300 ms of it.
    let talk = vec![media::g711::linear_to_ulaw(8000); 16000];
    let media = json!({"event": "media", "streamSid": sid, "media": {
        "payload": base64::engine::general_purpose::STANDARD.encode(&talk)}});
    ws.send(Message::text(media.to_string()))
        .await
        .expect("send");
    let mark = json!({"event": "mark", "streamSid": sid, "mark": {"name": "long"}});
    ws.send(Message::text(mark.to_string()))
        .await
        .expect("send");
    let sent = Instant::now();
    // Fifteen inbound frames (300 ms of the call) as the clock.
    let mut frames = 0;
    while frames < 15 {
        if next_json(&mut ws).await["event"] == "media" {
            frames += 1;
        }
    }
    let clear = json!({"event": "clear", "streamSid": sid});
    ws.send(Message::text(clear.to_string()))
        .await
        .expect("send");
    let elapsed_ms = sent.elapsed().as_millis() as i64;
    let (mut acked, mut cleared) = (None, None);
    while acked.is_none() || cleared.is_none() {
        let m = next_json(&mut ws).await;
        match m["event"].as_str() {
            Some("mark") => acked = Some(m),
            Some("cleared") => cleared = Some(m),
            _ => {}
        }
    }
    let acked = acked.expect("mark");
    assert_eq!(acked["mark"]["name"], "long");
    let cleared = cleared.expect("cleared");
    let played = cleared["cleared"]["playedMs"].as_i64().expect("playedMs");
    assert!(
        played > 0 && played < 2000 && played <= elapsed_ms + 100,
        "played {played} ms of 2000 with {elapsed_ms} ms elapsed: {cleared}"
    );
    let long = &cleared["cleared"]["marks"][0];
    assert_eq!(long["name"], "long");
    assert_eq!(long["played"], false, "{cleared}");

    // The socket drops with no close frame: the call stays up and the switch comes back
    // with the same callSid, saying it is a reconnection.
    drop(ws);
    let (mut again, restart) = accept_stream(&listener).await;
    assert_eq!(restart["start"]["callSid"], id.as_str());
    assert_eq!(restart["start"]["reconnect"], true, "{restart}");
    assert_eq!(restart["streamSid"], sid.as_str());
    let mut resumed = 0;
    while resumed < 5 {
        if next_json(&mut again).await["event"] == "media" {
            resumed += 1;
        }
    }
    let (code, call) = h.api.get_call(&id).await;
    assert_eq!(code, 200);
    assert_eq!(call["data"]["status"], "in_progress", "{call}");
    again
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .expect("close");
    let events = events_until(&mut h, &id, "call.completed").await;
    assert_eq!(
        events.last().expect("completed")["data"]["call"]["end_reason"],
        "stream_ended"
    );
    far.wait().await.assert_success("far end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_plays_the_hold_sound_until_the_stream_resumes() {
    // A 300 Hz hold sound, 8 kHz mono.
    let dir = tempfile::tempdir().expect("tempdir");
    let wav = dir.path().join("hold.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).expect("wav");
    for i in 0..8000 {
        let x = (2.0 * std::f64::consts::PI * 300.0 * f64::from(i) / 8000.0).sin();
        w.write_sample((x * 12000.0) as i16).expect("sample");
    }
    w.finalize().expect("wav");
    let (_dir, scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = Sipp::builder(scenario.to_str().expect("utf-8")).spawn();
    let streams = format!(
        "[streams]\ngrace_s = 5\nhold_sound = {:?}\n",
        wav.display().to_string()
    );
    let mut h = harness::setup(&far, |c| c.rtp_ports(37100, 37199).extra(&streams)).await;
    let capture = common::capture::Capture::start("udp and src portrange 37100-37199").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/media", listener.local_addr().expect("addr"));
    let id = h.call(json!({"stream": {"url": url}})).await;
    let (mut ws, _) = accept_stream(&listener).await;
    let mut frames = 0;
    while frames < 10 {
        if next_json(&mut ws).await["event"] == "media" {
            frames += 1;
        }
    }
    // The socket drops; the outage lasts until this server answers again (~800 ms).
    drop(ws);
    let (tcp, _) = tokio::time::timeout(GUARD, listener.accept())
        .await
        .expect("the switch reconnects")
        .expect("accept");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut again = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
    assert_eq!(next_json(&mut again).await["event"], "connected");
    let restart = next_json(&mut again).await;
    assert_eq!(restart["start"]["reconnect"], true, "{restart}");
    let mut resumed = 0;
    while resumed < 25 {
        if next_json(&mut again).await["event"] == "media" {
            resumed += 1;
        }
    }
    again
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .expect("close");
    events_until(&mut h, &id, "call.completed").await;
    far.wait().await.assert_success("far end");

    // The far end heard the hold sound during the outage, and silence after it resumed.
    let packets = capture.finish().await;
    let frames: Vec<Vec<i16>> = packets
        .iter()
        .filter(|d| d.payload.len() == 172)
        .map(|d| ulaw(&d.payload[12..]))
        .collect();
    let held: Vec<usize> = frames
        .iter()
        .enumerate()
        .filter(|(_, f)| {
            f.iter().any(|s| s.abs() > 4000)
                && goertzel(f, 300.0, 8000.0) > 10.0 * goertzel(f, 1000.0, 8000.0)
        })
        .map(|(i, _)| i)
        .collect();
    assert!(
        held.len() >= 25,
        "{} frames of hold sound in {} sent",
        held.len(),
        frames.len()
    );
    // One run of it: the outage, not the rest of the call.
    let span = held.last().expect("held") - held.first().expect("held") + 1;
    assert!(
        span <= held.len() + 5,
        "hold sound scattered over {span} frames"
    );
    let after = frames.len() - held.last().expect("held") - 1;
    assert!(after >= 20, "only {after} frames after the hold sound");
}
