//! Media through a transit call, checked at the far end: a SIPp caller (the upstream
//! carrier) sends RTP from a capture; the callee's SIPp answers with an SDP that points
//! at a UDP socket this test owns, so the test receives what the switch's bridge sends
//! the callee and decodes it (transcoded audio, remapped RFC 4733 events). Also checks
//! that RTP from a wrong source is dropped on a latched leg.
//!
//! Tests wait on SIPp exits, callbacks and received packets, never on fixed sleeps;
//! timeouts are guards only.

mod common;

use common::fixtures::{repo, scenario_with_fixtures};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::transit::{Inbound, TRANSIT_PLAN, start, types};
use common::{Sipp, SippBuilder};
use media::rtp::RtpView;
use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::sync::watch;

const TONE_PCAP: &str = "pcap-fixtures/rtp/tone_1khz_pcmu.pcap";
const RATE: f64 = 8000.0;
/// Packets at each end of the received stream left out of the measurements (the
/// transcoder's start and the last packets before the BYE).
const EDGE_PACKETS: usize = 5;

/// The callee's media endpoint: an RTP socket on an even port (with the RTCP port above
/// it bound too, so the switch's reports land somewhere) and a task collecting datagrams.
struct Sink {
    port: u16,
    /// Datagrams in arrival order.
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
    _rtcp: UdpSocket,
}

impl Sink {
    async fn bind() -> Sink {
        let (rtp, rtcp) = loop {
            let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            let port = probe.local_addr().expect("addr").port() & !1;
            drop(probe);
            let Some(rtcp_port) = port.checked_add(1) else {
                continue;
            };
            if let (Ok(a), Ok(b)) = (
                UdpSocket::bind(("127.0.0.1", port)).await,
                UdpSocket::bind(("127.0.0.1", rtcp_port)).await,
            ) {
                break (a, b);
            }
        };
        let port = rtp.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (tx, count) = watch::channel(0);
        let store = Arc::clone(&received);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok(n) = rtp.recv(&mut buf).await {
                let total = {
                    let mut r = store.lock().expect("lock");
                    r.push(buf[..n].to_vec());
                    r.len()
                };
                let _ = tx.send(total);
            }
        });
        Sink {
            port,
            received,
            count,
            task,
            _rtcp: rtcp,
        }
    }

    /// Waits until at least `n` datagrams arrived.
    async fn wait_for(&mut self, n: usize) {
        tokio::time::timeout(Duration::from_secs(20), self.count.wait_for(|c| *c >= n))
            .await
            .expect("packets at the callee's sink in time")
            .expect("sink task alive");
    }

    /// Stops collecting and returns everything received.
    fn finish(self) -> Vec<Vec<u8>> {
        self.task.abort();
        std::mem::take(&mut *self.received.lock().expect("lock"))
    }
}

/// The callee's SIPp answering with `scenario`, its SDP pointing at `sink`.
fn callee(scenario: &str, sink: &Sink) -> Sipp {
    SippBuilder::new(scenario)
        .arg("-key")
        .arg("sinkport")
        .arg(&sink.port.to_string())
        .spawn()
}

/// RTP payloads of the IPv4/UDP packets in a classic little-endian Ethernet pcap.
fn pcap_rtp(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).expect("read pcap");
    assert_eq!(
        data.get(..4),
        Some(&[0xd4, 0xc3, 0xb2, 0xa1][..]),
        "pcap magic"
    );
    let mut at = 24;
    let mut out = Vec::new();
    while at + 16 <= data.len() {
        let incl = u32::from_le_bytes(data[at + 8..at + 12].try_into().expect("4 bytes")) as usize;
        let frame = &data[at + 16..at + 16 + incl];
        at += 16 + incl;
        // Ethernet (14) + IPv4 (IHL words) + UDP (8).
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        out.push(frame[14 + ihl + 8..].to_vec());
    }
    out
}

/// Linear samples of the µ-law (PT 0) packets, in order.
fn decode_ulaw_packets(packets: &[Vec<u8>]) -> Vec<i16> {
    let mut pcm = Vec::new();
    for p in packets {
        let v = RtpView::parse(p).expect("rtp in pcap");
        assert_eq!(v.pt(), 0);
        let mut out = vec![0i16; v.payload().len()];
        media::g711::decode_ulaw(v.payload(), &mut out);
        pcm.extend_from_slice(&out);
    }
    pcm
}

/// Goertzel power of `freq` in `x` at this file's rate.
fn goertzel(x: &[i16], freq: f64) -> f64 {
    common::fixtures::goertzel(x, freq, RATE)
}

/// Ratio of the `freq` component's power to everything else (noise and distortion), in
/// dB: SINAD. `freq` must complete whole cycles in `x`, as Goertzel then measures it alone.
fn sinad_db(x: &[i16], freq: f64) -> f64 {
    let n = x.len() as f64;
    // A sine of amplitude a gives |X|^2 = (a n / 2)^2, and a mean square of a^2 / 2.
    let tone_ms = 2.0 * goertzel(x, freq) / (n * n);
    let total_ms = x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / n;
    10.0 * (tone_ms / (total_ms - tone_ms).max(f64::MIN_POSITIVE)).log10()
}

/// RMS level in dB relative to a full-scale (±32768) sine.
fn level_db(x: &[i16]) -> f64 {
    let mean_sq = x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64;
    10.0 * (mean_sq / (32768.0f64.powi(2) / 2.0)).log10()
}

/// Frequency from positive-going zero crossings (a second, independent estimate).
fn zero_crossing_hz(x: &[i16]) -> f64 {
    let ups = x.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    ups as f64 * RATE / x.len() as f64
}

/// The received packets sorted by sequence number (unwrapped around the first one).
fn in_seq_order(packets: &[Vec<u8>]) -> Vec<RtpView<'_>> {
    let mut views: Vec<RtpView<'_>> = packets
        .iter()
        .map(|p| RtpView::parse(p).expect("the switch sends valid RTP"))
        .collect();
    let Some(first) = views.first().map(RtpView::seq) else {
        return views;
    };
    views.sort_by_key(|v| v.seq().wrapping_sub(first) as i16);
    views
}

/// The port of the `m=audio` line in the first SIP 200 carrying SDP in a SIPp message log.
fn answered_media_port(messages: &str) -> Option<u16> {
    let answer = messages.split("SIP/2.0 200").skip(1).find(|m| {
        m.split("-----")
            .next()
            .is_some_and(|block| block.contains("m=audio"))
    })?;
    let line = answer
        .lines()
        .find(|l| l.trim_start().starts_with("m=audio "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct ToneCall {
    h: Inbound,
    sink: Sink,
    caller: Sipp,
    far: Sipp,
    _scenario: tempfile::TempDir,
}

/// A PCMU-only caller playing the 1 kHz tone, bridged to a PCMA-only callee whose media
/// is the test's sink.
async fn tone_call(pause_ms: u64) -> ToneCall {
    let sink = Sink::bind().await;
    let far = callee("bridge_uas_pcma_sink.xml", &sink);
    let h = start(far.addr(), TRANSIT_PLAN, "").await;
    let (dir, scenario) = scenario_with_fixtures("bridge_uac_pcmu_tone.xml");
    let caller = Sipp::builder(scenario.to_str().expect("utf-8 path"))
        .remote(h.switch.sip_udp())
        .pause_ms(pause_ms)
        .spawn();
    ToneCall {
        h,
        sink,
        caller,
        far,
        _scenario: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_caller_reaches_a_pcma_callee_with_the_tone_intact() {
    let ToneCall {
        mut h,
        sink,
        caller,
        far,
        _scenario,
    } = tone_call(3500).await;
    let caller = caller.wait().await;
    caller.assert_success("caller");
    far.wait().await.assert_success("callee");
    let events = h.events_until("call.completed").await;
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
    let packets = sink.finish();

    // The caller was answered with its only codec; the callee's leg is PCMA: transcoding.
    let answer = caller
        .messages
        .split("SIP/2.0 200")
        .nth(1)
        .unwrap_or_default();
    assert!(
        answer.contains("RTP/AVP 0") && answer.contains("PCMU/8000"),
        "{}",
        caller.messages
    );

    let rtp = in_seq_order(&packets);
    assert!(
        rtp.len() >= 140,
        "the callee got {} of 150 packets",
        rtp.len()
    );
    assert!(
        rtp.iter().all(|v| v.pt() == 8),
        "every packet PCMA: {:?}",
        rtp.iter().map(RtpView::pt).collect::<Vec<_>>()
    );
    let mut got = Vec::new();
    for v in &rtp[EDGE_PACKETS..rtp.len() - EDGE_PACKETS] {
        assert_eq!(v.payload().len(), 160, "20 ms of A-law");
        let mut pcm = [0i16; 160];
        media::g711::decode_alaw(v.payload(), &mut pcm);
        got.extend_from_slice(&pcm);
    }
    let source = decode_ulaw_packets(&pcap_rtp(&repo().join(TONE_PCAP)));

    let tone = goertzel(&got, 1000.0);
    let below = goertzel(&got, 700.0);
    let above = goertzel(&got, 1300.0);
    let margin_db = 10.0 * (tone / below.max(above)).log10();
    let hz = zero_crossing_hz(&got);
    let (src_db, got_db) = (level_db(&source), level_db(&got));
    let (src_sinad, got_sinad) = (sinad_db(&source, 1000.0), sinad_db(&got, 1000.0));
    eprintln!(
        "tone: {hz:.1} Hz by zero crossings, 1 kHz {margin_db:.1} dB above 700/1300 Hz; \
         level {got_db:.2} dB (source {src_db:.2} dB); SINAD {got_sinad:.1} dB (source \
         {src_sinad:.1} dB) over {} samples",
        got.len()
    );
    assert!(
        margin_db >= 20.0,
        "1 kHz only {margin_db:.1} dB above its neighbours"
    );
    // One more G.711 quantisation (µ-law to A-law) costs a few dB, not the tone.
    assert!(got_sinad >= 25.0, "SINAD {got_sinad:.1} dB");
    assert!((hz - 1000.0).abs() < 10.0, "tone at {hz:.1} Hz");
    assert!(
        (got_db - src_db).abs() <= 1.5,
        "level {got_db:.2} dB vs source {src_db:.2} dB"
    );

    let listed = h.only_call().await;
    let media = &listed["metadata"]["media"];
    eprintln!("media: {media}");
    let count = |side: &str, key: &str| media[side][key].as_u64().unwrap_or(u64::MAX);
    assert!(
        (140..=150).contains(&count("caller", "packets_received")),
        "{media}"
    );
    assert_eq!(
        count("callee", "packets_sent"),
        packets.len() as u64,
        "every packet sent to the callee arrived: {media}"
    );
    assert_eq!(count("caller", "dropped"), 0, "{media}");
    assert_eq!(count("callee", "packets_received"), 0, "{media}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digit_crosses_the_bridge_with_its_payload_type_remapped() {
    let sink = Sink::bind().await;
    let far = callee("bridge_uas_pcma_te96_sink.xml", &sink);
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    // The capture carries telephone-event at PT 101, which the caller offers.
    let source = pcap_rtp(&repo().join("pcap-fixtures/rtp/dtmf_2833_1.pcap"));
    assert!(
        source
            .iter()
            .all(|p| RtpView::parse(p).map(|v| v.pt()) == Ok(101))
    );
    let (_dir, scenario) = scenario_with_fixtures("bridge_uac_pcmu_dtmf.xml");
    let caller = Sipp::builder(scenario.to_str().expect("utf-8 path"))
        .remote(h.switch.sip_udp())
        .pause_ms(1500)
        .spawn();
    caller.wait().await.assert_success("caller");
    far.wait().await.assert_success("callee");
    let events = h.events_until("call.completed").await;
    let packets = sink.finish();

    let dtmf: Vec<&Value> = events.iter().filter(|e| e["type"] == "call.dtmf").collect();
    assert_eq!(dtmf.len(), 1, "one digit, one callback: {events:#?}");
    assert_eq!(dtmf[0]["data"]["digit"], "1", "{:#}", dtmf[0]);
    assert_eq!(dtmf[0]["data"]["from"], "caller", "{:#}", dtmf[0]);
    // The capture's end packets carry duration 2240 at 8 kHz.
    assert_eq!(dtmf[0]["data"]["duration_ms"], 280, "{:#}", dtmf[0]);

    let rtp = in_seq_order(&packets);
    let pts: Vec<u8> = rtp.iter().map(RtpView::pt).collect();
    assert!(
        !rtp.is_empty() && pts.iter().all(|pt| *pt == 96),
        "events reach the callee on its PT 96 only: {pts:?}"
    );
    let mut decoder = media::dtmf::DtmfDecoder::new(96);
    let mut digits: Vec<char> = rtp
        .iter()
        .filter_map(|v| decoder.handle(v))
        .map(|e| e.digit)
        .collect();
    digits.extend(decoder.flush().map(|e| e.digit));
    assert_eq!(
        digits,
        ['1'],
        "decoded at the callee from {} packets",
        rtp.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_from_a_wrong_source_is_dropped_after_latching() {
    const INJECTED: u64 = 10;
    let ToneCall {
        mut h,
        mut sink,
        caller,
        far,
        _scenario,
    } = tone_call(3500).await;
    // Transcoded tone at the callee: the caller's leg has latched to SIPp's media port.
    sink.wait_for(10).await;
    let port = answered_media_port(&caller.messages_so_far())
        .expect("the caller's 200 with our SDP is in SIPp's log");
    let switch_side = SocketAddr::from(([127, 0, 0, 1], port));
    let intruder = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    // Full-scale µ-law (0x80 decodes to +32124): unmistakable if it got through.
    let mut packet = vec![0x80, 0x00, 0, 0, 0, 0, 0, 0, 0xba, 0xd5, 0x00, 0x01];
    packet.extend_from_slice(&[0x80; 160]);
    for i in 0..INJECTED {
        packet[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        packet[4..8].copy_from_slice(&((i as u32) * 160).to_be_bytes());
        intruder.send_to(&packet, switch_side).await.expect("send");
    }
    caller.wait().await.assert_success("caller");
    far.wait().await.assert_success("callee");
    let events = h.events_until("call.completed").await;
    assert_eq!(
        events.last().expect("events")["data"]["call"]["end_reason"],
        "caller_bye"
    );
    let packets = sink.finish();

    let listed = h.only_call().await;
    let media = &listed["metadata"]["media"];
    eprintln!("media: {media}");
    let dropped = media["caller"]["dropped"].as_u64().unwrap_or(0);
    assert!(
        dropped >= INJECTED,
        "{dropped} dropped of {INJECTED} injected: {media}\n{}",
        h.switch.logs()
    );
    let loud = in_seq_order(&packets)
        .iter()
        .filter(|v| {
            let mut pcm = [0i16; 160];
            let n = media::g711::decode_alaw(v.payload(), &mut pcm);
            pcm[..n].iter().all(|s| *s > 20_000)
        })
        .count();
    assert_eq!(loud, 0, "none of the intruder's audio reached the callee");
}
