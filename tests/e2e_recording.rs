//! Call recording end to end: a recorded outbound call to a SIPp carrier that plays a
//! PCMA capture yields a stereo WAV (far end left, our side right) served only to the
//! owning tenant; an unrecorded call has no recording.
//!
//! Tests wait on callbacks (events), never on fixed sleeps; timeouts are guards only.

mod common;

use common::harness::{self, GUARD, Harness};
use common::{Api, Sipp};
use serde_json::{Value, json};

/// The shared harness, recording into `rec_dir` with its own RTP ports.
async fn setup(sipp: &Sipp, rec_dir: &std::path::Path, rtp: (u16, u16)) -> Harness {
    let dir = Value::String(rec_dir.display().to_string());
    harness::setup(sipp, |c| {
        c.rtp_ports(rtp.0, rtp.1).extra(&format!(
            "[recordings]\ndir = {dir}\n\n[[tenants]]\nname = \"globex\"\n"
        ))
    })
    .await
}

/// Verified callbacks until one of `event_type` for `call_id`; returns its data.
async fn wait_event(h: &mut Harness, call_id: &str, event_type: &str) -> Value {
    loop {
        let r = h.sink.next_accepted(GUARD).await;
        let e = h.sink.verify(&h.secret, &r);
        assert_eq!(e["data"]["call"]["id"], call_id, "{e}");
        if e["type"] == event_type {
            return e["data"].clone();
        }
        assert!(
            !e["type"]
                .as_str()
                .is_some_and(|t| ["call.failed", "call.busy", "call.no_answer"].contains(&t)),
            "call ended unexpectedly: {e}\n{}",
            h.switch.logs()
        );
    }
}

/// `GET /voice/calls/{id}/recording` with `api`'s key: (status, content type, body).
async fn get_recording(api: &Api, id: &str) -> (u16, String, Vec<u8>) {
    let url = format!("{}/api/v1/voice/calls/{id}/recording", api.base);
    let resp = api
        .client
        .get(&url)
        .header("X-API-Key", &api.key)
        .send()
        .await
        .expect("GET recording");
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        ctype,
        resp.bytes().await.expect("recording body").to_vec(),
    )
}

fn rms(x: &[i16]) -> f64 {
    let sum: f64 = x.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / x.len().max(1) as f64).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_call_serves_a_stereo_wav_to_its_owner_only() {
    let rec_dir = tempfile::tempdir().unwrap();
    let sipp = Sipp::uas("uas_answer_rtp.xml");
    let mut h = setup(&sipp, rec_dir.path(), (31000, 31099)).await;
    let id = h.call(json!({"record": true, "max_duration": 3})).await;

    // Live: the file is not final, so there is nothing to serve yet.
    wait_event(&mut h, &id, "call.in_progress").await;
    let (status, _, body) = get_recording(&h.api, &id).await;
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let live: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(live["code"], "RECORDING_NOT_READY", "{live}");

    let done = wait_event(&mut h, &id, "call.completed").await;
    let url = format!("{}/api/v1/voice/calls/{id}/recording", h.switch.http_base());
    assert_eq!(done["call"]["recording_url"], url.as_str(), "{done}");
    let (_, call) = h.api.get_call(&id).await;
    assert_eq!(call["data"]["recording_url"], url.as_str(), "{call}");

    let (status, ctype, wav) = get_recording(&h.api, &id).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&wav));
    assert_eq!(ctype, "audio/wav");
    let mut reader = hound::WavReader::new(std::io::Cursor::new(wav)).unwrap();
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let secs = f64::from(reader.duration()) / 8000.0;
    assert!(
        (2.5..=3.5).contains(&secs),
        "recording lasts {secs} s\n{}",
        h.switch.logs()
    );
    let all: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let left: Vec<i16> = all.iter().step_by(2).copied().collect();
    let right: Vec<i16> = all.iter().skip(1).step_by(2).copied().collect();
    // The middle second: well inside the capture, clear of jitter-buffer fill at the start.
    let mid = left.len() / 2;
    let left_rms = rms(&left[mid - 4000..mid + 4000]);
    assert!(
        left_rms > 100.0,
        "far-end RMS {left_rms}: no audio recorded"
    );
    assert!(right.iter().all(|&s| s == 0), "our side must be silence");
    // The file on disk is where the config says.
    assert!(rec_dir.path().join(format!("{id}.wav")).is_file());

    // Another tenant cannot tell the call exists.
    let other = h.switch.api("globex", "owner").await;
    let (status, _, body) = get_recording(&other, &id).await;
    assert_eq!(status, 404);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], "NOT_FOUND", "{err}");
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrecorded_call_has_no_recording() {
    let rec_dir = tempfile::tempdir().unwrap();
    let sipp = Sipp::uas("uas_answer_rtp.xml");
    let mut h = setup(&sipp, rec_dir.path(), (31100, 31199)).await;
    let id = h.call(json!({"record": false, "max_duration": 1})).await;
    let done = wait_event(&mut h, &id, "call.completed").await;
    assert!(done["call"]["recording_url"].is_null(), "{done}");
    let (_, call) = h.api.get_call(&id).await;
    assert!(call["data"]["recording_url"].is_null(), "{call}");
    let (status, _, body) = get_recording(&h.api, &id).await;
    assert_eq!(status, 404);
    let err: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(err["code"], "NOT_FOUND", "{err}");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|m| m.contains("not recorded")),
        "{err}"
    );
    assert!(!rec_dir.path().join(format!("{id}.wav")).exists());
    // An unknown call id is a 404 too.
    let (status, _, _) = get_recording(&h.api, "call_nope").await;
    assert_eq!(status, 404);
    sipp.wait().await.assert_success("carrier");
}
