//! Listening to an endpoint and to a bridge over real loopback UDP: far ends send
//! tones, a sink forwards the decoded 20 ms frames through a tokio channel to the test,
//! which checks their size, channel and dominant frequency, and how soon they come.
//! Waits are on events (frames, datagrams, the close) with a timeout guard; the tokio
//! interval only paces senders.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // real sockets: the wall clock is what the media sees

use std::f64::consts::PI;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use media::codec::{self, AudioCodec, Encoder};
use media::net::bridge::Bridge;
use media::net::listen::FrameSink;
use media::net::{PortPool, RecordingError, RtpEndpoint};
use media::relay::{RelayConfig, Side, SideParams};
use media::rtp::{RtpHeader, write_packet};
use media::sdp::{Codec, Direction, StreamParams};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(5);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
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

fn side(remote: SocketAddr, codec: AudioCodec) -> SideParams {
    SideParams {
        remote: Some(remote),
        codec,
        pt: pt_of(codec),
        clock_rate: codec.rtp_clock_rate(),
        dtmf_pt: Some(101),
    }
}

fn stream(remote: SocketAddr) -> StreamParams {
    StreamParams {
        remote,
        codec: Codec::Pcmu,
        pt: 0,
        clock_rate: 8000,
        ptime_ms: 20,
        dtmf_pt: Some(101),
        direction: Direction::SendRecv,
    }
}

/// A frame as the sink got it, stamped on arrival.
#[derive(Debug)]
struct Frame {
    channel: usize,
    pcm: Vec<i16>,
    at: Instant,
}

/// Forwards every frame to the test; stops when the test's receiver is gone.
struct ChannelSink(mpsc::UnboundedSender<Frame>);

impl FrameSink for ChannelSink {
    fn frame(&mut self, channel: usize, pcm: &[i16]) -> bool {
        let f = Frame {
            channel,
            pcm: pcm.to_vec(),
            at: Instant::now(),
        };
        self.0.send(f).is_ok()
    }
}

fn sink() -> (Box<dyn FrameSink>, mpsc::UnboundedReceiver<Frame>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Box::new(ChannelSink(tx)), rx)
}

/// Stops after `n` frames.
struct Counted(usize, mpsc::UnboundedSender<Frame>);

impl FrameSink for Counted {
    fn frame(&mut self, channel: usize, pcm: &[i16]) -> bool {
        let _ = self.1.send(Frame {
            channel,
            pcm: pcm.to_vec(),
            at: Instant::now(),
        });
        self.0 -= 1;
        self.0 > 0
    }
}

async fn next_frame(rx: &mut mpsc::UnboundedReceiver<Frame>) -> Frame {
    timeout(GUARD, rx.recv())
        .await
        .expect("timed out waiting for a frame")
        .expect("the listener stopped")
}

/// A far end sending a continuous tone of `freq` Hz in `codec`.
struct FarEnd {
    sock: UdpSocket,
    freq: f64,
    codec: AudioCodec,
    encoder: Box<dyn Encoder + Send>,
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

    /// Sends the next 20 ms of tone (a -12 dBFS sine) to `to`; returns when it was sent.
    async fn send_frame(&mut self, to: SocketAddr) -> Instant {
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
        let at = Instant::now();
        self.sock.send_to(&buf[..n], to).await.unwrap();
        at
    }

    /// Waits for `n` datagrams (relayed RTP or an endpoint's silence).
    async fn receive(&self, n: usize) {
        let mut buf = [0u8; 1600];
        for _ in 0..n {
            timeout(GUARD, self.sock.recv_from(&mut buf))
                .await
                .expect("timed out waiting for RTP")
                .unwrap();
        }
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

fn peak(x: &[i16]) -> u16 {
    x.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0)
}

/// Whether a frame carries the tone (not the silence before it).
fn loud(pcm: &[i16]) -> bool {
    peak(pcm) > 2000
}

/// Listens to an endpoint whose far end sends a second of a 1 kHz PCMU tone; returns
/// the frames (all channel 0) and the latency from the first packet's send to its
/// first loud frame at the sink.
async fn listen_to_endpoint(port: u16, out_rate: u32) -> (Vec<Frame>, Duration, Duration) {
    let pool = pool(port);
    let mut ep = RtpEndpoint::open(&pool, LO).unwrap();
    let mut far = FarEnd::new(1000.0, AudioCodec::Pcmu).await;
    let (s, _) = sink();
    assert!(matches!(
        ep.listen(out_rate, s),
        Err(RecordingError::NotConnected)
    ));
    ep.connect(stream(far.addr()));
    let (s, mut rx) = sink();
    ep.listen(out_rate, s).unwrap();
    assert!(ep.is_listening());
    let (s, _) = sink();
    assert!(matches!(
        ep.listen(out_rate, s),
        Err(RecordingError::AlreadyListening)
    ));

    let frame = out_rate as usize / 50;
    let mut frames = Vec::new();
    let mut first_sent = None;
    let mut last_sent = None;
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..PACKETS {
        pace.tick().await;
        let at = far.send_frame(ep.local_addr()).await;
        first_sent.get_or_insert(at);
        last_sent = Some(at);
        while let Ok(f) = rx.try_recv() {
            frames.push(f);
        }
    }
    // Steady-state lag: tone frames not at the sink yet when the last packet went out.
    let behind = PACKETS - frames.iter().filter(|f| loud(&f.pcm)).count().min(PACKETS);
    eprintln!("{out_rate} Hz: {behind} tone frames behind the sender at its last packet");
    // Until the tone's last frames have played out, then a few more.
    let mut quiet_after_tone = 0;
    while quiet_after_tone < 5 {
        let f = next_frame(&mut rx).await;
        let heard = frames.iter().any(|f: &Frame| loud(&f.pcm));
        if heard && !loud(&f.pcm) {
            quiet_after_tone += 1;
        }
        frames.push(f);
    }
    ep.stop_listening();
    assert!(!ep.is_listening());
    // The listener ends: the sink (and its sender) is dropped.
    while timeout(GUARD, rx.recv())
        .await
        .expect("the listener did not stop")
        .is_some()
    {}
    // Recorded and sent: the endpoint is unaffected.
    far.receive(5).await;
    let stats = ep.close().await;
    assert_eq!(stats.packets_received, PACKETS as u64);

    assert!(
        frames
            .iter()
            .all(|f| f.channel == 0 && f.pcm.len() == frame)
    );
    let first_loud = frames.iter().find(|f| loud(&f.pcm)).unwrap();
    let latency = first_loud.at.duration_since(first_sent.unwrap());
    let last_loud = frames.iter().rfind(|f| loud(&f.pcm)).unwrap();
    let tail = last_loud.at.duration_since(last_sent.unwrap());
    (frames, latency, tail)
}

/// The loud frames (the tone), concatenated.
fn tone_of(frames: &[Frame], channel: usize) -> Vec<i16> {
    frames
        .iter()
        .filter(|f| f.channel == channel && loud(&f.pcm))
        .flat_map(|f| f.pcm.iter().copied())
        .collect()
}

#[tokio::test]
async fn endpoint_frames_at_8khz_carry_the_far_ends_tone() {
    let (frames, latency, tail) = listen_to_endpoint(44500, 8000).await;
    let tone = tone_of(&frames, 0);
    // A second of tone, give or take the concealed edges.
    assert!(tone.len() >= 45 * 160, "{} samples of tone", tone.len());
    let f = dominant_frequency(&tone, 8000);
    assert!((f - 1000.0).abs() <= 10.0, "{f} Hz");
    assert!(peak(&tone) > 6000, "peak {}", peak(&tone));
    eprintln!(
        "endpoint 8 kHz: first tone frame {latency:?} after the first packet, last {tail:?} after the last"
    );
    assert!(latency < Duration::from_millis(150), "{latency:?}");
    assert!(tail < Duration::from_millis(150), "{tail:?}");
}

#[tokio::test]
async fn endpoint_frames_at_16khz_are_resampled() {
    let (frames, latency, tail) = listen_to_endpoint(44510, 16000).await;
    let tone = tone_of(&frames, 0);
    assert!(tone.len() >= 45 * 320, "{} samples of tone", tone.len());
    let f = dominant_frequency(&tone, 16000);
    assert!((f - 1000.0).abs() <= 10.0, "{f} Hz");
    eprintln!(
        "endpoint 16 kHz: first tone frame {latency:?} after the first packet, last {tail:?} after the last"
    );
    assert!(latency < Duration::from_millis(150), "{latency:?}");
    assert!(tail < Duration::from_millis(150), "{tail:?}");
}

#[tokio::test]
async fn a_sink_that_returns_false_stops_the_listener() {
    let pool = pool(44520);
    let mut ep = RtpEndpoint::open(&pool, LO).unwrap();
    let far = FarEnd::new(1000.0, AudioCodec::Pcmu).await;
    ep.connect(stream(far.addr()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    ep.listen(8000, Box::new(Counted(3, tx))).unwrap();
    for _ in 0..3 {
        assert_eq!(next_frame(&mut rx).await.pcm.len(), 160);
    }
    // The sink is dropped once it said no.
    assert!(timeout(GUARD, rx.recv()).await.unwrap().is_none());
    // A finished listener makes room for another.
    let (s, mut rx) = sink();
    let deadline = Instant::now() + GUARD;
    while ep.is_listening() {
        assert!(Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    ep.listen(8000, s).unwrap();
    next_frame(&mut rx).await;
    ep.close().await;
    // Closing the endpoint ends the listener too.
    while timeout(GUARD, rx.recv()).await.unwrap().is_some() {}
}

/// A bridge between a caller sending 440 Hz PCMU and a callee sending 1 kHz in
/// `codec_b`, listened to at 16 kHz (and recorded too with `record`).
async fn listen_to_bridge(port: u16, codec_b: AudioCodec, record: bool) {
    let pool = pool(port);
    let mut caller = FarEnd::new(440.0, AudioCodec::Pcmu).await;
    let mut callee = FarEnd::new(1000.0, codec_b).await;
    let mut bridge = Bridge::open(
        &pool,
        LO,
        side(caller.addr(), AudioCodec::Pcmu),
        side(callee.addr(), codec_b),
        RelayConfig::default(),
    )
    .unwrap();
    let (to_a, to_b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
    let path = std::env::temp_dir().join(format!(
        "switchyard-listen-{}-{port}.wav",
        std::process::id()
    ));
    if record {
        bridge.start_recording(&path).unwrap();
    }
    let (s, mut rx) = sink();
    bridge.listen(16000, s).unwrap();
    let (s, _) = sink();
    assert!(matches!(
        bridge.listen(16000, s),
        Err(RecordingError::AlreadyListening)
    ));

    let mut frames = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..PACKETS {
        pace.tick().await;
        caller.send_frame(to_a).await;
        callee.send_frame(to_b).await;
        while let Ok(f) = rx.try_recv() {
            frames.push(f);
        }
    }
    // The relay still forwards everything (transcoded towards a G.722 callee: its
    // own jitter buffer may conceal or skip a frame).
    let n = if codec_b == AudioCodec::Pcmu {
        PACKETS
    } else {
        PACKETS * 9 / 10
    };
    callee.receive(n).await;
    caller.receive(n).await;
    // Frames until both tones have played out.
    let mut quiet = 0;
    while quiet < 10 {
        let f = next_frame(&mut rx).await;
        if frames.iter().any(|f: &Frame| loud(&f.pcm)) && !loud(&f.pcm) {
            quiet += 1;
        }
        frames.push(f);
    }
    let (counters, _, rec) = bridge.close_with_recording().await;
    while timeout(GUARD, rx.recv()).await.unwrap().is_some() {}
    for c in &counters {
        let relayed = c.forwarded_packets + c.transcoded_packets;
        assert_eq!(relayed, PACKETS as u64, "{c:?}");
        assert_eq!(c.kernel_forwarded, 0);
    }

    // Frames alternate channel 0, channel 1, all 320 samples (16 kHz).
    assert!(frames.iter().all(|f| f.pcm.len() == 320));
    for (k, f) in frames.iter().enumerate() {
        assert_eq!(f.channel, k % 2, "frame {k}");
    }
    let (a, b) = (tone_of(&frames, 0), tone_of(&frames, 1));
    assert!(a.len() >= 45 * 320, "side A: {} samples of tone", a.len());
    assert!(b.len() >= 45 * 320, "side B: {} samples of tone", b.len());
    let (fa, fb) = (dominant_frequency(&a, 16000), dominant_frequency(&b, 16000));
    assert!((fa - 440.0).abs() <= 10.0, "side A {fa} Hz");
    assert!((fb - 1000.0).abs() <= 10.0, "side B {fb} Hz");

    if record {
        let outcome = rec.expect("a recording was started").unwrap();
        assert_eq!(outcome.dropped, 0);
        assert!(outcome.jitter.played >= 45, "{:?}", outcome.jitter);
        let mut r = hound::WavReader::open(&path).unwrap();
        let all: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        let rate = r.spec().sample_rate as usize;
        std::fs::remove_file(&path).unwrap();
        let left: Vec<i16> = all.iter().step_by(2).copied().collect();
        let right: Vec<i16> = all.iter().skip(1).step_by(2).copied().collect();
        let mid = |x: &[i16]| x[300 * rate / 1000..x.len() - 300 * rate / 1000].to_vec();
        let (fl, fr) = (
            dominant_frequency(&mid(&left), rate as u32),
            dominant_frequency(&mid(&right), rate as u32),
        );
        assert!((fl - 440.0).abs() <= 10.0, "recorded left {fl} Hz");
        assert!((fr - 1000.0).abs() <= 10.0, "recorded right {fr} Hz");
    } else {
        assert!(rec.is_none());
    }
}

#[tokio::test]
async fn bridge_pcmu_both_sides_on_two_channels() {
    listen_to_bridge(44530, AudioCodec::Pcmu, false).await;
}

#[tokio::test]
async fn bridge_g722_callee_is_decoded_at_16khz() {
    listen_to_bridge(44540, AudioCodec::G722, false).await;
}

#[tokio::test]
async fn bridge_listens_and_records_at_once() {
    listen_to_bridge(44550, AudioCodec::Pcmu, true).await;
}

#[tokio::test]
async fn bridge_stop_listening_ends_the_listener() {
    let pool = pool(44560);
    let caller = FarEnd::new(440.0, AudioCodec::Pcmu).await;
    let callee = FarEnd::new(1000.0, AudioCodec::Pcmu).await;
    let mut bridge = Bridge::open(
        &pool,
        LO,
        side(caller.addr(), AudioCodec::Pcmu),
        side(callee.addr(), AudioCodec::Pcmu),
        RelayConfig::default(),
    )
    .unwrap();
    let (s, mut rx) = sink();
    bridge.listen(8000, s).unwrap();
    // Silence on both channels while nobody speaks, aligned.
    let (f0, f1) = (next_frame(&mut rx).await, next_frame(&mut rx).await);
    assert_eq!((f0.channel, f1.channel), (0, 1));
    assert!(f0.pcm.iter().chain(&f1.pcm).all(|&s| s == 0));
    bridge.stop_listening();
    assert!(!bridge.is_listening());
    while timeout(GUARD, rx.recv()).await.unwrap().is_some() {}
    // And again.
    let (s, mut rx) = sink();
    bridge.listen(8000, s).unwrap();
    assert_eq!(next_frame(&mut rx).await.pcm.len(), 160);
    bridge.close().await;
    while timeout(GUARD, rx.recv()).await.unwrap().is_some() {}
}
