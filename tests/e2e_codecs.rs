//! Wideband callers through a transit call to a G.711-only far end, with real peers at
//! both ends: a G.722-only or Opus-only SIPp caller plays a 600 Hz tone from a capture,
//! the G.711 SIPp callee plays a 1 kHz tone back, and `tcpdump` on `lo` records what the
//! switch sends each of them. The test decodes both directions with the project's
//! decoders and checks each tone's frequency and level where it arrives, the RTP
//! timestamp steps of each codec, and the codecs the SDP offers and answers carried.
//! A PCMU caller and an Opus callee also exchange RFC 4733 digits across the two clocks.
//!
//! Tests wait on SIPp exits, callbacks and tcpdump's own "listening" line, never on
//! fixed sleeps; timeouts are guards only.

mod common;

use common::fixtures::{goertzel, scenario_with_fixtures};

use common::capture::{Capture, Datagram};
use common::transit::{TRANSIT_PLAN, start, start_with, types};
use common::{Sipp, SippBuilder};
use media::codec::AudioCodec;
use media::rtp::RtpView;

/// One of these tests at a time: each transcodes live audio while tcpdump records it, and
/// six at once on a small machine fall behind real time (the checks are about codecs,
/// not about how much the machine can carry; the benches measure that).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Packets at each end of a received stream left out of the measurements (codec and
/// transcoder start-up, the last packets before the BYE).
const EDGE_PACKETS: usize = 10;
/// The callers' tone (`tone_600hz_*.pcap`) and the callee's (`tone_1khz_pcmu.pcap`).
const CALLER_HZ: f64 = 600.0;
const CALLEE_HZ: f64 = 1000.0;
/// -10 dBm0 as the fixtures have it (peak 7054), in dB below a full-scale sine.
const FIXTURE_DB: f64 = -13.35;

/// RMS level in dB relative to a full-scale (±32768) sine.
fn level_db(x: &[i16]) -> f64 {
    let mean_sq = x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64;
    10.0 * (mean_sq / (32768.0f64.powi(2) / 2.0)).log10()
}

/// Frequency from positive-going zero crossings (a second, independent estimate).
fn zero_crossing_hz(x: &[i16], rate: f64) -> f64 {
    let ups = x.windows(2).filter(|w| w[0] < 0 && w[1] >= 0).count();
    ups as f64 * rate / x.len() as f64
}

/// What one end heard: the RTP the switch sent to `port`, in sequence order.
struct Heard {
    pts: Vec<u8>,
    /// Timestamp differences between consecutive packets.
    ts_steps: Vec<u32>,
    /// Decoded audio of the packets between the edges, at the codec's PCM rate.
    pcm: Vec<i16>,
    packets: usize,
}

fn heard(captured: &[Datagram], port: u16, codec: AudioCodec) -> Heard {
    let mut views: Vec<RtpView<'_>> = captured
        .iter()
        .filter(|d| d.dst_port == port)
        .map(|d| RtpView::parse(&d.payload).expect("the switch sends valid RTP"))
        .collect();
    let first = views.first().map_or(0, RtpView::seq);
    views.sort_by_key(|v| v.seq().wrapping_sub(first) as i16);
    let ts_steps = views
        .windows(2)
        .map(|w| w[1].timestamp().wrapping_sub(w[0].timestamp()))
        .collect();
    let mut dec = media::codec::decoder(codec).expect("decoder");
    let mut pcm = Vec::new();
    let mut frame = Vec::new();
    let n = views.len();
    for (i, v) in views.iter().enumerate() {
        // Decoded from the first packet so the decoder's state follows the stream.
        dec.decode(v.payload(), &mut frame)
            .expect("decodable payload");
        if i >= EDGE_PACKETS && i + EDGE_PACKETS < n {
            pcm.extend_from_slice(&frame);
        }
    }
    Heard {
        pts: views.iter().map(RtpView::pt).collect(),
        ts_steps,
        pcm,
        packets: n,
    }
}

/// Checks that `x` (at `rate`) is a tone of `hz` at the fixtures' level; returns a line
/// for the log.
fn assert_tone(what: &str, x: &[i16], hz: f64, rate: f64) -> String {
    assert!(x.len() as f64 > rate, "{what}: only {} samples", x.len());
    let on = goertzel(x, hz, rate);
    let margin_db =
        10.0 * (on / goertzel(x, hz * 0.7, rate).max(goertzel(x, hz * 1.3, rate))).log10();
    let zc = zero_crossing_hz(x, rate);
    let level = level_db(x);
    let line = format!(
        "{what}: {zc:.1} Hz by zero crossings, {hz} Hz {margin_db:.1} dB above {:.0}/{:.0} Hz, \
         level {level:.2} dB (source {FIXTURE_DB} dB), {} samples at {rate} Hz",
        hz * 0.7,
        hz * 1.3,
        x.len()
    );
    eprintln!("{line}");
    assert!(margin_db >= 20.0, "{line}");
    assert!((zc - hz).abs() < hz * 0.01, "{line}");
    assert!((level - FIXTURE_DB).abs() <= 2.0, "{line}");
    line
}

/// The `m=audio` line of the first message in a SIPp log that starts with `start`.
fn m_line(messages: &str, start: &str) -> String {
    messages
        .split(start)
        .skip(1)
        .find_map(|m| {
            m.split("-----")
                .next()?
                .lines()
                .find(|l| l.trim_start().starts_with("m=audio "))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_default()
}

struct Case {
    scenario: &'static str,
    codec: AudioCodec,
    /// The caller's payload type, the RTP clock step of 20 ms, and the telephone-event
    /// our answer must carry (on the codec's clock).
    pt: u8,
    step: u32,
    answer_te: &'static str,
    /// The switch's RTP ports: its capture filter.
    rtp: (u16, u16),
    /// More keys for the callee's trunk "carrier" (e.g. its `codecs`).
    carrier: &'static str,
    /// The payload types of our offer to the callee, in order.
    offer: &'static str,
}

async fn wideband_caller_to_g711_callee(case: Case) {
    let (_far_dir, far_scenario) = scenario_with_fixtures("bridge_uas_pcmu_tone.xml");
    let far = SippBuilder::new(far_scenario.to_str().expect("utf-8 path")).spawn();
    let mut h = start_with(far.addr(), TRANSIT_PLAN, case.carrier, |c| {
        c.rtp_ports(case.rtp.0, case.rtp.1)
    })
    .await;
    // Only what the switch's media ports send: both SIPps' received RTP (and RTCP).
    let capture = Capture::start(&format!(
        "udp and src portrange {}-{}",
        case.rtp.0, case.rtp.1
    ))
    .await;
    let (_dir, scenario) = scenario_with_fixtures(case.scenario);
    let caller = Sipp::builder(scenario.to_str().expect("utf-8 path"))
        .remote(h.switch.sip_udp())
        .pause_ms(3500)
        .spawn();
    let (caller_port, far_port) = (caller.media_addr().port(), far.media_addr().port());
    let caller = caller.wait().await;
    caller.assert_success("caller");
    let far = far.wait().await;
    far.assert_success("callee");
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
    let captured = capture.finish().await;

    // SDP: the caller is answered in its only codec with events on that codec's clock;
    // the callee is offered the caller's codec first, then G.711.
    let answer = m_line(&caller.messages, "SIP/2.0 200");
    assert!(
        answer.ends_with(&format!(" RTP/AVP {} {}", case.pt, case.answer_te)),
        "{answer}\n{}",
        caller.messages
    );
    assert!(
        caller
            .messages
            .contains(&format!("telephone-event/{}", case.codec.rtp_clock_rate())),
        "{}",
        caller.messages
    );
    let offer = m_line(&far.messages, "INVITE sip:");
    let offered = offer.split(' ').skip(3).collect::<Vec<_>>().join(" ");
    assert_eq!(offered, case.offer, "{offer}");
    eprintln!("answer to the caller: {answer}; offer to the callee: {offer}");

    // The G.711 callee hears the caller's 600 Hz, transcoded to PCMU, 160 per packet.
    let at_far = heard(&captured, far_port, AudioCodec::Pcmu);
    // Most of the 150: a loaded CI machine may make the playout skip a few frames.
    assert!(
        at_far.packets >= 120,
        "the callee got {} of 150 packets",
        at_far.packets
    );
    assert!(at_far.pts.iter().all(|pt| *pt == 0), "{:?}", at_far.pts);
    assert_clock(&at_far.ts_steps, 160);
    assert_tone("at the callee (PCMU)", &at_far.pcm, CALLER_HZ, 8000.0);

    // The wideband caller hears the callee's 1 kHz in its own codec and clock.
    let at_caller = heard(&captured, caller_port, case.codec);
    assert!(
        at_caller.packets >= 120,
        "the caller got {} of 150 packets",
        at_caller.packets
    );
    assert!(
        at_caller.pts.iter().all(|pt| *pt == case.pt),
        "{:?}",
        at_caller.pts
    );
    assert_clock(&at_caller.ts_steps, case.step);
    assert_tone(
        &format!("at the caller ({:?})", case.codec),
        &at_caller.pcm,
        CALLEE_HZ,
        f64::from(case.codec.sample_rate()),
    );

    let listed = h.only_call().await;
    let media = &listed["metadata"]["media"];
    eprintln!("media: {media}");
    assert_eq!(media["caller"]["dropped"], 0, "{media}");
    // The callee starts its tone on our ACK, which the switch sends just before it points
    // the bridge's B side at the answer: its first packet may meet the placeholder codec.
    let dropped = media["callee"]["dropped"].as_u64().unwrap_or(u64::MAX);
    assert!(dropped <= 1, "{media}");
    let received = |side: &str| media[side]["packets_received"].as_u64().unwrap_or(0);
    assert!(
        received("caller") >= 140 && received("callee") >= 140,
        "{media}"
    );
}

/// RTP timestamps advance on the codec's clock: every step a whole number of frames (a
/// frame skipped under load still advances the clock), and nearly all exactly one.
fn assert_clock(steps: &[u32], frame: u32) {
    assert!(steps.iter().all(|s| *s > 0 && *s % frame == 0), "{steps:?}");
    let single = steps.iter().filter(|s| **s == frame).count();
    assert!(single * 10 >= steps.len() * 9, "{steps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g722_only_caller_and_g711_callee_hear_each_other() {
    let _one = ONE_AT_A_TIME.lock().await;
    wideband_caller_to_g711_callee(Case {
        scenario: "bridge_uac_g722_tone.xml",
        codec: AudioCodec::G722,
        pt: 9,
        step: 160,
        answer_te: "101",
        rtp: (24600, 24699),
        carrier: "",
        // The trunk's default list with the caller's codec first; events on both clocks.
        offer: "9 0 8 111 101 110",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_only_caller_and_g711_callee_hear_each_other() {
    let _one = ONE_AT_A_TIME.lock().await;
    wideband_caller_to_g711_callee(Case {
        scenario: "bridge_uac_opus_tone.xml",
        codec: AudioCodec::Opus { channels: 2 },
        pt: 96,
        step: 960,
        answer_te: "100",
        rtp: (24700, 24799),
        carrier: "",
        offer: "111 0 8 9 101 110",
    })
    .await;
}

/// A callee trunk whose `codecs` lack the caller's codec is offered its own list only,
/// in its order, and the bridge transcodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g722_caller_to_a_g711_only_trunk_is_offered_that_trunks_list() {
    let _one = ONE_AT_A_TIME.lock().await;
    wideband_caller_to_g711_callee(Case {
        scenario: "bridge_uac_g722_tone.xml",
        codec: AudioCodec::G722,
        pt: 9,
        step: 160,
        answer_te: "101",
        rtp: (24900, 24999),
        carrier: "codecs = [\"PCMA\", \"PCMU\"]\n",
        offer: "8 0 101",
    })
    .await;
}

/// The RFC 4733 digits in what the switch sent to `port` on payload type `pt`, decoded in
/// sequence order; with every event packet's (end bit, duration).
fn digits_at(
    captured: &[Datagram],
    port: u16,
    pt: u8,
) -> (Vec<media::dtmf::DtmfEvent>, Vec<(bool, u16)>) {
    let mut views: Vec<RtpView<'_>> = captured
        .iter()
        .filter(|d| d.dst_port == port)
        .filter_map(|d| RtpView::parse(&d.payload).ok())
        .collect();
    let first = views.first().map_or(0, RtpView::seq);
    views.sort_by_key(|v| v.seq().wrapping_sub(first) as i16);
    let mut dec = media::dtmf::DtmfDecoder::new(pt);
    let mut digits: Vec<_> = views.iter().filter_map(|v| dec.handle(v)).collect();
    digits.extend(dec.flush());
    let packets = views
        .iter()
        .filter(|v| v.pt() == pt)
        .filter_map(|v| {
            let p = v.payload();
            Some((
                p.get(1)? & 0x80 != 0,
                u16::from_be_bytes([*p.get(2)?, *p.get(3)?]),
            ))
        })
        .collect();
    (digits, packets)
}

/// A PCMU caller (telephone-event/8000) and an Opus-only callee (telephone-event/48000
/// on PT 97) each press a digit: each reaches the other on its own payload type with its
/// duration in that side's clock units, and each `call.dtmf` callback has the right
/// milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_cross_between_a_pcmu_caller_and_an_opus_callee() {
    let _one = ONE_AT_A_TIME.lock().await;
    const RTP: (u16, u16) = (24800, 24899);
    let (_far_dir, far_scenario) = scenario_with_fixtures("bridge_uas_opus_te48_dtmf.xml");
    let far = SippBuilder::new(far_scenario.to_str().expect("utf-8 path")).spawn();
    let mut h = start_with(far.addr(), TRANSIT_PLAN, "", |c| c.rtp_ports(RTP.0, RTP.1)).await;
    let capture = Capture::start(&format!("udp and src portrange {}-{}", RTP.0, RTP.1)).await;
    let (_dir, scenario) = scenario_with_fixtures("bridge_uac_pcmu_dtmf.xml");
    let caller = Sipp::builder(scenario.to_str().expect("utf-8 path"))
        .remote(h.switch.sip_udp())
        .pause_ms(1500)
        .spawn();
    let (caller_port, far_port) = (caller.media_addr().port(), far.media_addr().port());
    caller.wait().await.assert_success("caller");
    let far = far.wait().await;
    far.assert_success("callee");
    let events = h.events_until("call.completed").await;
    let captured = capture.finish().await;

    // Our offer to the callee: the caller's PCMU first, events on both clocks.
    let offer = m_line(&far.messages, "INVITE sip:");
    assert!(offer.contains(" RTP/AVP 0 "), "{offer}");
    for te in ["telephone-event/8000", "telephone-event/48000"] {
        assert!(far.messages.contains(te), "{te} offered: {}", far.messages);
    }

    let dtmf = |from: &str| -> Vec<(String, u64)> {
        events
            .iter()
            .filter(|e| e["type"] == "call.dtmf" && e["data"]["from"] == from)
            .map(|e| {
                (
                    e["data"]["digit"].as_str().unwrap_or_default().to_owned(),
                    e["data"]["duration_ms"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    // The caller's capture ends at 2240 on 8 kHz; the callee's at 4800 on 48 kHz.
    assert_eq!(dtmf("caller"), [("1".to_owned(), 280)], "{events:#?}");
    assert_eq!(dtmf("callee"), [("9".to_owned(), 100)], "{events:#?}");

    // At the Opus callee: '1' on its PT 97, durations six times the capture's.
    let (digits, packets) = digits_at(&captured, far_port, 97);
    eprintln!("at the callee: {digits:?} from {packets:?}");
    assert_eq!(digits.len(), 1, "{digits:?}");
    assert_eq!((digits[0].digit, digits[0].duration_ts), ('1', 2240 * 6));
    assert_eq!(digits[0].duration_ms(48_000), 280);
    assert!(packets.iter().all(|(_, d)| d % 6 == 0), "{packets:?}");
    // At the PCMU caller: '9' on its PT 101, durations a sixth of the callee's.
    let (digits, packets) = digits_at(&captured, caller_port, 101);
    eprintln!("at the caller: {digits:?} from {packets:?}");
    assert_eq!(digits.len(), 1, "{digits:?}");
    assert_eq!((digits[0].digit, digits[0].duration_ts), ('9', 800));
    assert_eq!(digits[0].duration_ms(8000), 100);
    assert_eq!(
        packets.iter().filter(|(end, _)| *end).count(),
        3,
        "{packets:?}"
    );
}

/// A caller offering PCMA then PCMU would be answered PCMU (the source trunk's order),
/// and the callee is offered PCMU first; the callee picks PCMA, which the caller offered
/// too: the caller is answered in PCMA instead, and media passes both ways in one codec
/// (the caller's PCMA capture would be dropped as an unexpected payload type otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_is_answered_in_the_callees_codec_when_it_offered_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let far = Sipp::uas("uas_answer_rtp.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let caller = Sipp::builder("uac_call_rtp.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(5500)
        .spawn();
    let caller = caller.wait().await;
    caller.assert_success("caller");
    let far = far.wait().await;
    far.assert_success("callee");
    h.events_until("call.completed").await;

    let offer = m_line(&far.messages, "INVITE sip:");
    assert!(offer.ends_with(" RTP/AVP 0 8 9 111 101 110"), "{offer}");
    let answer = m_line(&caller.messages, "SIP/2.0 200");
    assert!(answer.ends_with(" RTP/AVP 8 101"), "{answer}");
    let listed = h.only_call().await;
    let media = &listed["metadata"]["media"];
    for side in ["caller", "callee"] {
        let got = media[side]["packets_received"].as_u64().unwrap_or(0);
        assert!(got >= 150, "{side} sent us {got} packets: {media}");
    }
    assert_eq!(media["caller"]["dropped"], 0, "{media}");
    assert!(
        h.switch
            .logs()
            .contains("caller answered in the callee's codec"),
        "{}",
        h.switch.logs()
    );
}

/// An outbound API call on a trunk with `codecs = ["opus", "PCMU"]` offers them in that
/// order (events on both clocks); the carrier answers Opus, and the switch's endpoint
/// sends it encoded Opus silence every 20 ms on the 48 kHz clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_call_offers_the_trunks_codecs_and_sends_opus_silence() {
    let _one = ONE_AT_A_TIME.lock().await;
    const RTP: (u16, u16) = (25000, 25099);
    let far = Sipp::uas("uas_answer_opus.xml");
    let mut h = common::harness::setup(&far, |c| {
        c.rtp_ports(RTP.0, RTP.1)
            .extra("codecs = [\"opus\", \"PCMU\"]\n")
    })
    .await;
    let capture = Capture::start(&format!("udp and src portrange {}-{}", RTP.0, RTP.1)).await;
    let id = h.call(serde_json::json!({"max_duration": 2})).await;
    h.expect_events(
        &id,
        &[
            "call.initiating",
            "call.ringing",
            "call.in_progress",
            "call.completed",
        ],
    )
    .await;
    let far_port = far.media_addr().port();
    let far = far.wait().await;
    far.assert_success("carrier");
    let captured = capture.finish().await;

    let offer = m_line(&far.messages, "INVITE sip:");
    assert!(offer.ends_with(" RTP/AVP 111 0 101 110"), "{offer}");
    let heard = heard(&captured, far_port, AudioCodec::Opus { channels: 2 });
    eprintln!("{} Opus packets at the carrier", heard.packets);
    // 2 s of 20 ms packets, less the edges and start-up.
    assert!(heard.packets >= 80, "{} packets", heard.packets);
    assert!(heard.pts.iter().all(|pt| *pt == 111), "{:?}", heard.pts);
    assert_clock(&heard.ts_steps, 960);
    let peak = heard
        .pcm
        .iter()
        .map(|s| s.unsigned_abs())
        .max()
        .unwrap_or(u16::MAX);
    assert!(peak < 64, "silence, not {peak}");
}
