//! Recording a bridged call over real loopback UDP: each far end sends a tone, the
//! bridge relays it and writes a stereo WAV (left side A, right side B) that is read
//! back and checked for length and each channel's dominant frequency.
//! Waits are on events (datagrams, the close); the tokio interval only paces senders.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // real sockets: the wall clock is what the bridge sees

use std::f64::consts::PI;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use media::codec::{self, AudioCodec, Encoder};
use media::net::PortPool;
use media::net::bridge::{Bridge, BridgeCounters};
use media::net::recording::RecordingOutcome;
use media::relay::{RelayConfig, Side, SideParams};
use media::rtp::{RtpHeader, RtpView, write_packet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(5);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OPUS: AudioCodec = AudioCodec::Opus { channels: 2 };
/// Packets each far end sends: one second of 20 ms frames.
const PACKETS: usize = 50;

fn pool(min: u16) -> PortPool {
    PortPool::with_rng(min, min + 9, StdRng::seed_from_u64(u64::from(min))).unwrap()
}

fn pt_of(codec: AudioCodec) -> u8 {
    match codec {
        AudioCodec::Pcmu => 0,
        AudioCodec::Pcma => 8,
        AudioCodec::G722 => 9,
        AudioCodec::Opus { .. } => 111,
    }
}

fn params(remote: SocketAddr, codec: AudioCodec) -> SideParams {
    SideParams {
        remote: Some(remote),
        codec,
        pt: pt_of(codec),
        clock_rate: codec.rtp_clock_rate(),
        dtmf_pt: Some(101),
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "switchyard-bridge-rec-{}-{name}.wav",
        std::process::id()
    ))
}

/// A far end sending a continuous tone of `freq` Hz in `codec`.
struct FarEnd {
    sock: UdpSocket,
    freq: f64,
    codec: AudioCodec,
    encoder: Box<dyn Encoder + Send>,
    /// Seconds of tone sent so far (the phase carries over a codec change).
    t: f64,
    seq: u16,
    ts: u32,
}

impl FarEnd {
    async fn new(freq: f64, codec: AudioCodec) -> FarEnd {
        FarEnd {
            sock: UdpSocket::bind((LO, 0)).await.unwrap(),
            freq,
            codec,
            encoder: codec::encoder(codec).unwrap(),
            t: 0.0,
            seq: 0,
            ts: 0,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    fn switch_codec(&mut self, codec: AudioCodec) {
        self.codec = codec;
        self.encoder = codec::encoder(codec).unwrap();
    }

    /// Sends the next 20 ms of tone (a -12 dBFS sine) to `to`.
    async fn send_frame(&mut self, to: SocketAddr) {
        let rate = f64::from(self.codec.sample_rate());
        let n = self.codec.frame_samples(20);
        let pcm: Vec<i16> = (0..n)
            .map(|k| (8192.0 * (2.0 * PI * self.freq * (self.t + k as f64 / rate)).sin()) as i16)
            .collect();
        self.t += n as f64 / rate;
        let mut payload = [0u8; 1500];
        let len = self.encoder.encode(&pcm, &mut payload).unwrap();
        let h = RtpHeader {
            marker: self.seq == 0,
            pt: pt_of(self.codec),
            seq: self.seq,
            timestamp: self.ts,
            ssrc: 0x5eed_0000 | u32::from(pt_of(self.codec)),
        };
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(self.codec.timestamp_step(20));
        let mut buf = [0u8; 1600];
        let n = write_packet(&mut buf, &h, &payload[..len]).unwrap();
        self.sock.send_to(&buf[..n], to).await.unwrap();
    }

    /// Waits for `n` RTP packets relayed to this far end; returns their payload types.
    async fn receive(&self, n: usize) -> Vec<u8> {
        let mut buf = [0u8; 1600];
        let mut pts = Vec::with_capacity(n);
        for _ in 0..n {
            let (len, _) = timeout(GUARD, self.sock.recv_from(&mut buf))
                .await
                .expect("timed out waiting for relayed RTP")
                .unwrap();
            pts.push(RtpView::parse(&buf[..len]).unwrap().pt());
        }
        pts
    }
}

/// Goertzel power of `freq` in `x` sampled at `rate`.
fn goertzel(x: &[i16], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * PI * freq / f64::from(rate);
    let c = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s0 = f64::from(v) + c * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - c * s1 * s2
}

/// The strongest frequency of `x` between 100 Hz and 3.5 kHz, to 5 Hz.
fn dominant_frequency(x: &[i16], rate: u32) -> f64 {
    (20..=700)
        .map(|k| f64::from(k) * 5.0)
        .map(|f| (f, goertzel(x, rate, f)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap()
        .0
}

/// A finished recorded call: what the bridge and the file say.
struct Recorded {
    outcome: RecordingOutcome,
    counters: [BridgeCounters; 2],
    rate: u32,
    left: Vec<i16>,
    right: Vec<i16>,
    /// From `start_recording` to the end of `close_with_recording`.
    elapsed: Duration,
    /// Payload types the caller and the callee received.
    to_caller: Vec<u8>,
    to_callee: Vec<u8>,
}

/// Opens a bridge between a caller sending `freq_a` in `codec_a` and a callee sending
/// `freq_b` in `codec_b`, records one second of both, and reads the file back. With
/// `switch_b`, the callee re-negotiates to that codec half-way through.
async fn record_call(
    port: u16,
    name: &str,
    (codec_a, freq_a): (AudioCodec, f64),
    (codec_b, freq_b): (AudioCodec, f64),
    switch_b: Option<AudioCodec>,
) -> Recorded {
    let pool = pool(port);
    let mut caller = FarEnd::new(freq_a, codec_a).await;
    let mut callee = FarEnd::new(freq_b, codec_b).await;
    let mut bridge = Bridge::open(
        &pool,
        LO,
        params(caller.addr(), codec_a),
        params(callee.addr(), codec_b),
        RelayConfig::default(),
    )
    .unwrap();
    let (to_a, to_b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
    let path = temp_path(name);
    let started = Instant::now();
    bridge.start_recording(&path).unwrap();
    assert!(bridge.is_recording());

    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for i in 0..PACKETS {
        pace.tick().await;
        if i == PACKETS / 2
            && let Some(codec) = switch_b
        {
            bridge.set_side(Side::B, params(callee.addr(), codec));
            callee.switch_codec(codec);
        }
        caller.send_frame(to_a).await;
        callee.send_frame(to_b).await;
    }
    // The relay delivered (nearly) everything while recording; a transcoded direction
    // plays out through its own jitter buffer, which may conceal or skip a frame.
    let to_callee = caller_relayed(&callee, codec_a, codec_b, switch_b).await;
    let to_caller = caller_relayed(&caller, codec_b, codec_a, switch_b).await;
    // Let the recorder's jitter buffers play out the last frames before closing.
    for _ in 0..10 {
        pace.tick().await;
    }
    let (counters, _, rec) = bridge.close_with_recording().await;
    let elapsed = started.elapsed();
    let outcome = rec.expect("a recording was started").unwrap();
    assert_eq!(outcome.info.path, path);

    let mut r = hound::WavReader::open(&path).unwrap();
    let spec = r.spec();
    assert_eq!(spec.channels, 2);
    assert_eq!(u64::from(r.duration()), outcome.info.samples);
    let all: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    std::fs::remove_file(&path).unwrap();
    Recorded {
        outcome,
        counters,
        rate: spec.sample_rate,
        left: all.iter().step_by(2).copied().collect(),
        right: all.iter().skip(1).step_by(2).copied().collect(),
        elapsed,
        to_caller,
        to_callee,
    }
}

/// What `receiver` got from the other far end: all packets when nothing is
/// transcoded, else at least 90% of them.
async fn caller_relayed(
    receiver: &FarEnd,
    from: AudioCodec,
    to: AudioCodec,
    switch: Option<AudioCodec>,
) -> Vec<u8> {
    let n = if from == to && switch.is_none() {
        PACKETS
    } else {
        PACKETS * 9 / 10
    };
    receiver.receive(n).await
}

impl Recorded {
    /// The middle of the call: past the jitter buffers' start, before the tail.
    fn middle(&self, channel: &[i16]) -> Vec<i16> {
        let per_ms = self.rate as usize / 1000;
        let end = channel.len().saturating_sub(250 * per_ms);
        channel[300 * per_ms..end].to_vec()
    }

    fn check_length(&self) {
        let ms = self.outcome.info.duration_ms;
        let wall = self.elapsed.as_millis() as u64;
        assert!(ms.abs_diff(wall) <= 100, "{ms} ms recorded in {wall} ms");
        assert!((1100..=1500).contains(&ms), "{ms} ms");
    }
}

fn peak(x: &[i16]) -> u16 {
    x.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0)
}

#[tokio::test]
async fn records_both_parties_of_a_pcmu_call_left_and_right() {
    let rec = record_call(
        43300,
        "pcmu",
        (AudioCodec::Pcmu, 440.0),
        (AudioCodec::Pcmu, 1000.0),
        None,
    )
    .await;
    assert_eq!(rec.rate, 8000);
    rec.check_length();
    assert!(rec.to_callee.iter().all(|&pt| pt == 0));
    assert!(rec.to_caller.iter().all(|&pt| pt == 0));
    for c in &rec.counters {
        assert_eq!(c.forwarded_packets, PACKETS as u64, "{c:?}");
        assert_eq!(c.kernel_forwarded, 0);
    }
    assert_eq!(rec.outcome.dropped, 0);
    assert!(rec.outcome.jitter.played >= 45, "{:?}", rec.outcome.jitter);
    let right_jitter = rec.outcome.right_jitter.unwrap();
    assert!(right_jitter.played >= 45, "{right_jitter:?}");
    let (left, right) = (rec.middle(&rec.left), rec.middle(&rec.right));
    assert!(peak(&left) > 6000 && peak(&right) > 6000);
    let (fl, fr) = (
        dominant_frequency(&left, rec.rate),
        dominant_frequency(&right, rec.rate),
    );
    assert!((fl - 440.0).abs() <= 10.0, "left {fl} Hz");
    assert!((fr - 1000.0).abs() <= 10.0, "right {fr} Hz");
}

/// G.722 on the callee's side: the file is at 16 kHz, the caller's 8 kHz PCMU
/// resampled up, and the bridge transcodes between the two while recording.
#[tokio::test]
async fn records_a_transcoded_call_at_the_wider_sides_rate() {
    let rec = record_call(
        43310,
        "g722",
        (AudioCodec::Pcmu, 440.0),
        (AudioCodec::G722, 1000.0),
        None,
    )
    .await;
    assert_eq!(rec.rate, 16000);
    rec.check_length();
    assert!(
        rec.to_callee.iter().all(|&pt| pt == 9),
        "{:?}",
        rec.to_callee
    );
    assert!(
        rec.to_caller.iter().all(|&pt| pt == 0),
        "{:?}",
        rec.to_caller
    );
    for c in &rec.counters {
        assert_eq!(c.transcoded_packets, PACKETS as u64, "{c:?}");
    }
    assert_eq!(rec.outcome.dropped, 0);
    let (left, right) = (rec.middle(&rec.left), rec.middle(&rec.right));
    assert!(peak(&left) > 5000 && peak(&right) > 5000);
    let (fl, fr) = (
        dominant_frequency(&left, rec.rate),
        dominant_frequency(&right, rec.rate),
    );
    assert!((fl - 440.0).abs() <= 10.0, "left {fl} Hz");
    assert!((fr - 1000.0).abs() <= 10.0, "right {fr} Hz");
}

/// The callee switches from PCMU to Opus half-way (a re-INVITE): its channel gets a new
/// decoder (48 kHz, resampled to the file's 8 kHz) and keeps its tone on both halves.
#[tokio::test]
async fn a_codec_change_mid_call_keeps_the_channel_decodable() {
    let rec = record_call(
        43320,
        "switch",
        (AudioCodec::Pcmu, 440.0),
        (AudioCodec::Pcmu, 1000.0),
        Some(OPUS),
    )
    .await;
    assert_eq!(rec.rate, 8000);
    rec.check_length();
    assert_eq!(rec.outcome.codec_changes, 1);
    // The callee gets Opus once it negotiated it; the caller hears PCMU throughout
    // (transcoded from Opus after the switch).
    assert!(rec.to_callee.iter().all(|&pt| pt == 0 || pt == 111));
    assert!(rec.to_callee.contains(&111), "{:?}", rec.to_callee);
    assert!(rec.to_caller.iter().all(|&pt| pt == 0));
    let right = rec.middle(&rec.right);
    let half = right.len() / 2;
    // Around the switch the old jitter buffer's last frames are dropped: skip 150 ms.
    let skip = 150 * rec.rate as usize / 1000;
    let (before, after) = (&right[..half - skip], &right[half + skip..]);
    for part in [before, after] {
        assert!(peak(part) > 5000, "peak {}", peak(part));
        let f = dominant_frequency(part, rec.rate);
        assert!((f - 1000.0).abs() <= 10.0, "right {f} Hz");
    }
    let f = dominant_frequency(&rec.middle(&rec.left), rec.rate);
    assert!((f - 440.0).abs() <= 10.0, "left {f} Hz");
}
