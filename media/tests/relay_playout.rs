//! Playout of transcoded directions through the relay's jitter buffer, on a fake
//! clock: order restored, losses concealed, jitter absorbed once the buffer adapts,
//! events and pass-through directions not delayed.
// Helpers outside #[test] fns unwrap too; a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::f64::consts::PI;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::codec::{self, AudioCodec as Codec};
use media::g711;
use media::relay::{Relay, RelayConfig, Side, SideParams, Verdict};
use media::rtp::{RtpHeader, RtpView, write_packet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SDP_A: &str = "10.0.0.1:4000";
const SDP_B: &str = "198.51.100.2:5000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn side(remote: &str, codec: Codec, dtmf_pt: Option<u8>) -> SideParams {
    SideParams {
        remote: Some(addr(remote)),
        codec,
        pt: match codec {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
            Codec::Opus { .. } => 111,
        },
        clock_rate: codec.rtp_clock_rate(),
        dtmf_pt,
    }
}

/// PCMU caller on A, PCMA callee on B: both directions transcode.
fn transcoding() -> Relay {
    Relay::new(
        side(SDP_A, Codec::Pcmu, Some(101)),
        side(SDP_B, Codec::Pcma, Some(96)),
        RelayConfig::default(),
        &mut StdRng::seed_from_u64(7),
    )
}

fn t0() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One RTP packet from A's far end.
fn packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + payload.len()];
    let h = RtpHeader {
        marker: false,
        pt,
        seq,
        timestamp: ts,
        ssrc: 0xCA11,
    };
    write_packet(&mut buf, &h, payload).unwrap();
    buf
}

/// 20 ms of a 1 kHz tone at 8 kHz, frame `i` of a continuous signal, µ-law.
fn tone_frame(i: usize) -> Vec<u8> {
    let pcm: Vec<i16> = (i * 160..(i + 1) * 160)
        .map(|k| (8192.0 * (2.0 * PI * 1000.0 * k as f64 / 8000.0).sin()) as i16)
        .collect();
    let mut out = vec![0u8; 160];
    g711::encode_ulaw(&pcm, &mut out);
    out
}

/// 20 ms of a constant level that identifies frame `i`, µ-law.
fn level_frame(i: usize) -> Vec<u8> {
    let pcm = vec![level(i); 160];
    let mut out = vec![0u8; 160];
    g711::encode_ulaw(&pcm, &mut out);
    out
}

/// Levels 600 apart, where G.711's steps are at most 256 (µ-law) plus 256 (A-law):
/// the ids survive transcoding.
fn level(i: usize) -> i16 {
    (600 + 600 * (i % 10)) as i16
}

/// A packet sent to B.
#[derive(Debug)]
struct Out {
    at: Instant,
    seq: u16,
    ts: u32,
    marker: bool,
    pt: u8,
    pcm: Vec<i16>,
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Drives `r` like the bridge does: each packet at its arrival time, and the playout
/// at each [`Relay::poll_timeout`], until `end`. Returns what went to B (PCMA decoded)
/// and the verdicts of the arrivals.
fn run(
    r: &mut Relay,
    mut arrivals: Vec<(Instant, Vec<u8>)>,
    end: Instant,
) -> (Vec<Out>, Vec<Verdict>) {
    arrivals.sort_by_key(|(t, _)| *t);
    let mut arrivals = arrivals.into_iter().peekable();
    let mut out = Vec::new();
    let mut verdicts = Vec::new();
    let mut buf = [0u8; 1500];
    let mut dec = codec::decoder(Codec::Pcma).unwrap();
    loop {
        let next_pkt = arrivals.peek().map(|(t, _)| *t);
        let next_timer = r.poll_timeout();
        let now = match (next_pkt, next_timer) {
            (Some(p), Some(t)) => p.min(t),
            (p, t) => match p.or(t) {
                Some(n) => n,
                None => break,
            },
        };
        if now > end {
            break;
        }
        if next_pkt == Some(now) {
            let (_, mut p) = arrivals.next().unwrap();
            let len = p.len();
            verdicts.push(r.handle_packet(now, Side::A, addr(SDP_A), &mut p, len));
        }
        while let Some(t) = r.handle_timeout(now, &mut buf) {
            assert_eq!((t.to, t.dst), (Side::B, addr(SDP_B)));
            let v = RtpView::parse(&buf[..t.len]).unwrap();
            let mut pcm = Vec::new();
            if v.pt() == 8 {
                dec.decode(v.payload(), &mut pcm).unwrap();
            }
            out.push(Out {
                at: now,
                seq: v.seq(),
                ts: v.timestamp(),
                marker: v.marker(),
                pt: v.pt(),
                pcm,
            });
        }
    }
    (out, verdicts)
}

/// The output is one frame per 20 ms tick with consecutive numbers.
fn assert_continuous(out: &[Out]) {
    for w in out.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{:?} {:?}", w[0], w[1]);
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 160, "{:?} {:?}", w[0], w[1]);
        assert_eq!(w[1].at.duration_since(w[0].at).as_millis().abs_diff(20), 0);
    }
}

#[test]
fn reordered_packets_come_out_in_order() {
    let mut r = transcoding();
    let start = t0();
    // Frames 5 and 6 swap places on the way.
    let arrivals: Vec<_> = (0..20usize)
        .map(|i| {
            let at = match i {
                // Within the 20 ms the buffer holds at zero jitter.
                5 => start + ms(20 * 5 + 15),
                6 => start + ms(20 * 5 + 10),
                _ => start + ms(20 * i as u64),
            };
            (
                at,
                packet(0, 100 + i as u16, 160 * i as u32, &level_frame(i)),
            )
        })
        .collect();
    let (out, verdicts) = run(&mut r, arrivals, start + ms(600));
    assert!(
        verdicts.iter().all(|v| *v == Verdict::Buffered),
        "{verdicts:?}"
    );
    // After the last frame the buffer runs dry and conceals for 60 ms (the PLC fade),
    // then sends nothing until the sender is back.
    assert_eq!(out.len(), 23);
    assert_eq!(r.counters(Side::A).concealed_frames, 3);
    let out = &out[..20];
    assert_continuous(out);
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.pt, 8);
        assert_eq!(frame_id(&o.pcm), Some(i % 10), "output {i}");
    }
    assert!(out[0].marker && out[1..].iter().all(|o| !o.marker));
    let js = r.jitter_stats(Side::A).unwrap();
    assert_eq!((js.played, js.late), (20, 0));
    assert_eq!(r.counters(Side::A).transcoded_packets, 20);
}

#[test]
fn a_lost_packet_is_concealed_not_silenced() {
    let mut r = transcoding();
    let start = t0();
    let arrivals: Vec<_> = (0..30usize)
        .filter(|&i| i != 12)
        .map(|i| {
            let at = start + ms(20 * i as u64);
            (at, packet(0, i as u16, 160 * i as u32, &tone_frame(i)))
        })
        .collect();
    let (out, _) = run(&mut r, arrivals, start + ms(800));
    let out = &out[..30];
    assert_continuous(out);
    assert_eq!(r.jitter_stats(Side::A).unwrap().played, 29);
    let levels: Vec<f64> = out.iter().map(|o| rms(&o.pcm)).collect();
    let around = (levels[11] + levels[13]) / 2.0;
    assert!(
        levels[12] > 0.6 * around && levels[12] < 1.2 * around,
        "concealed frame at {:.0} next to {around:.0}",
        levels[12]
    );
    // Played frames decode to the tone (the output timeline is the input's here).
    let mut dec = codec::decoder(Codec::Pcmu).unwrap();
    let mut want = Vec::new();
    for (i, o) in out.iter().enumerate().filter(|(i, _)| *i != 12) {
        dec.decode(&tone_frame(i), &mut want).unwrap();
        let err: Vec<i16> = o.pcm.iter().zip(&want).map(|(a, b)| a - b).collect();
        assert!(rms(&err) < 300.0, "frame {i}");
    }
}

/// Arrival times jittered uniformly by ±`jitter_ms` around the 20 ms grid; frame `i`
/// carries level `i % 10`.
fn jittered(start: Instant, frames: usize, jitter_ms: i64, seed: u64) -> Vec<(Instant, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..frames)
        .map(|i| {
            let d: i64 = if jitter_ms == 0 {
                0
            } else {
                rng.random_range(-jitter_ms..=jitter_ms)
            };
            // Offset by the jitter so no arrival is before `start`.
            let at = start + ms((20 * i as i64 + jitter_ms + d) as u64);
            (at, packet(0, i as u16, 160 * i as u32, &level_frame(i)))
        })
        .collect()
}

/// Which `level_frame` a decoded frame is, if it is one (concealment fades, so it is
/// not flat).
fn frame_id(pcm: &[i16]) -> Option<usize> {
    let (lo, hi) = (pcm.iter().min()?, pcm.iter().max()?);
    if hi - lo > 300 {
        return None;
    }
    let mean = pcm.iter().map(|&v| f64::from(v)).sum::<f64>() / pcm.len() as f64;
    (0..10).find(|&k| (mean - f64::from(level(k))).abs() < 290.0)
}

#[test]
fn jitter_of_30ms_is_absorbed_once_the_buffer_adapts() {
    let mut r = transcoding();
    let start = t0();
    let frames = 500; // 10 s
    let settle = start + ms(3000);
    let end = start + ms(20 * frames as u64);
    let (early, late): (Vec<_>, Vec<_>) = jittered(start, frames, 30, 11)
        .into_iter()
        .partition(|(t, _)| *t < settle);
    let (out, _) = run(&mut r, early, settle);
    let before = r.counters(Side::A).concealed_frames;
    let (rest, _) = run(&mut r, late, end);
    let js = r.jitter_stats(Side::A).unwrap();
    eprintln!("±30 ms jitter, after 10 s: {js:?}");
    let all: Vec<&Out> = out.iter().chain(&rest).collect();
    let settled: Vec<&&Out> = all.iter().filter(|o| o.at >= settle).collect();
    assert_eq!(
        r.counters(Side::A).concealed_frames,
        before,
        "nothing concealed once adapted"
    );
    assert!(settled.len() > 300);
    // In order, one per tick; a frame may be dropped when the buffer shrinks.
    let mut skips = 0;
    for w in settled.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
        assert_eq!(w[1].ts.wrapping_sub(w[0].ts), 160);
        assert_eq!(w[1].at.duration_since(w[0].at), ms(20));
        let (a, b) = (frame_id(&w[0].pcm).unwrap(), frame_id(&w[1].pcm).unwrap());
        match (b + 10 - a) % 10 {
            1 => {}
            2 => skips += 1,
            d => panic!("frame {a} then {b} (step {d})"),
        }
    }
    assert_eq!(skips as u64, js.discarded.min(skips as u64));
    assert!(js.target_delay_ms <= 120, "{js:?}");
}

/// The buffering delay the playout adds, at 0 and ±20 ms of jitter (printed for the
/// report; bounded here).
#[test]
fn added_latency_at_0_and_20ms_jitter() {
    for (jitter, bound) in [(0i64, 40u32), (20, 120)] {
        let mut r = transcoding();
        let start = t0();
        let frames = 500;
        let arrivals = jittered(start, frames, jitter, 5);
        run(&mut r, arrivals, start + ms(20 * frames as u64));
        let js = r.jitter_stats(Side::A).unwrap();
        eprintln!(
            "jitter ±{jitter} ms: buffer delay {} ms (target {} ms), lost {}, discarded {}",
            js.current_delay_ms, js.target_delay_ms, js.lost, js.discarded
        );
        assert!(js.current_delay_ms <= bound, "{js:?}");
        if jitter == 0 {
            assert_eq!((js.lost, js.late), (0, 0));
        }
    }
}

#[test]
fn events_are_relayed_at_once_in_the_playout_numbering() {
    let mut r = transcoding();
    let start = t0();
    let mut arrivals: Vec<_> = (0..5usize)
        .map(|i| {
            let at = start + ms(20 * i as u64);
            (at, packet(0, i as u16, 160 * i as u32, &tone_frame(i)))
        })
        .collect();
    let (out, _) = run(&mut r, std::mem::take(&mut arrivals), start + ms(150));
    let last = out.last().unwrap();
    // An event packet now: forwarded at once, numbered after the last packet sent.
    let mut p = packet(101, 5, 800, &[1, 10, 0, 160]);
    let len = p.len();
    let v = r.handle_packet(start + ms(150), Side::A, addr(SDP_A), &mut p, len);
    assert_eq!(
        v,
        Verdict::Forward {
            dst: addr(SDP_B),
            len
        }
    );
    let view = RtpView::parse(&p).unwrap();
    assert_eq!(view.pt(), 96);
    assert_eq!(view.seq(), last.seq.wrapping_add(1));
    assert_eq!(view.ssrc(), r.output_ssrc(Side::B));
}

#[test]
fn pass_through_adds_no_delay() {
    let mut r = Relay::new(
        side(SDP_A, Codec::Pcmu, None),
        side(SDP_B, Codec::Pcmu, None),
        RelayConfig::default(),
        &mut StdRng::seed_from_u64(7),
    );
    let start = t0();
    for i in 0..10u16 {
        let payload = tone_frame(usize::from(i));
        let mut p = packet(0, i, 160 * u32::from(i), &payload);
        let len = p.len();
        let v = r.handle_packet(
            start + ms(20 * u64::from(i)),
            Side::A,
            addr(SDP_A),
            &mut p,
            len,
        );
        assert_eq!(
            v,
            Verdict::Forward {
                dst: addr(SDP_B),
                len
            },
            "sent on arrival"
        );
        assert_eq!(RtpView::parse(&p).unwrap().payload(), &payload[..]);
    }
    assert_eq!(r.poll_timeout(), None);
    assert_eq!(r.handle_timeout(start + ms(1000), &mut [0u8; 1500]), None);
    assert!(r.jitter_stats(Side::A).is_none());
}

#[test]
fn unbuffered_config_transcodes_on_arrival() {
    let mut r = Relay::new(
        side(SDP_A, Codec::Pcmu, None),
        side(SDP_B, Codec::Pcma, None),
        RelayConfig {
            transcode_jitter: None,
            ..RelayConfig::default()
        },
        &mut StdRng::seed_from_u64(7),
    );
    let mut p = packet(0, 1, 0, &tone_frame(0));
    let len = p.len();
    let v = r.handle_packet(t0(), Side::A, addr(SDP_A), &mut p, len);
    assert!(matches!(v, Verdict::Transcode { .. }), "{v:?}");
    assert_eq!(r.poll_timeout(), None);
}
