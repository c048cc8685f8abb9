//! A bridge between legs of different codecs and clocks, over real loopback UDP.
//!
//! Packet durations: G.722 and Opus packets of 10 to 60 ms are transcoded packet for
//! packet, each output packet holding as much audio and stepping its timestamp by that
//! duration on its own leg's clock (Opus packets tell their duration in their TOC byte).
//!
//! RFC 4733 digits: a G.711 or G.722 leg (telephone-event/8000) bridged to an Opus leg
//! (telephone-event/48000). Each digit must reach the other leg on that leg's
//! telephone-event payload type with its durations in that leg's clock units (RFC 4733
//! §2.3.5: timestamp units), decode there to the same digit and length in milliseconds,
//! and be reported once with a duration that [`Bridge::clock_rate`] turns into the same
//! milliseconds. Waits are on datagrams and channel messages; timeouts only guard.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // real sockets: the wall clock is what the bridge sees

use std::f64::consts::PI;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use media::codec::{self, AudioCodec};
use media::dtmf::{DtmfDecoder, DtmfEncoder};
use media::net::PortPool;
use media::net::bridge::Bridge;
use media::relay::{RelayConfig, Side, SideParams};
use media::rtp::{RtpHeader, RtpView, write_packet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(5);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OPUS: AudioCodec = AudioCodec::Opus { channels: 2 };
/// telephone-event payload types: 8 kHz on the narrow leg, 48 kHz on the Opus leg (what
/// the switch offers).
const TE_8K: u8 = 101;
const TE_48K: u8 = 110;

fn side(remote: SocketAddr, codec: AudioCodec, pt: u8, dtmf_pt: u8) -> SideParams {
    SideParams {
        remote: Some(remote),
        codec,
        pt,
        clock_rate: codec.rtp_clock_rate(),
        dtmf_pt: Some(dtmf_pt),
    }
}

async fn sock() -> UdpSocket {
    UdpSocket::bind((LO, 0)).await.unwrap()
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().unwrap()
}

/// One telephone-event packet as received: (timestamp, end bit, duration, raw packet).
type Event = (u32, bool, u16, Vec<u8>);

/// Receives on `sock` until `n` packets of payload type `pt` arrived (audio of the other
/// payload type in between is skipped).
async fn recv_events(sock: &UdpSocket, pt: u8, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    while out.len() < n {
        let (len, _) = timeout(GUARD, sock.recv_from(&mut buf))
            .await
            .expect("timed out waiting for telephone-events")
            .unwrap();
        let v = RtpView::parse(&buf[..len]).unwrap();
        if v.pt() != pt {
            continue;
        }
        let p = v.payload();
        assert_eq!(p.len(), 4, "one event per packet");
        out.push((
            v.timestamp(),
            p[1] & 0x80 != 0,
            u16::from_be_bytes([p[2], p[3]]),
            buf[..len].to_vec(),
        ));
    }
    out
}

/// Sends the packets of one digit from `from` to `to`; returns each packet's
/// (end bit, duration).
async fn send_digit(
    from: &UdpSocket,
    to: SocketAddr,
    mut enc: DtmfEncoder,
    digit: char,
    ms: u32,
    ts: u32,
) -> Vec<(bool, u16)> {
    enc.start(digit, ms, 10, 100, ts).unwrap();
    let mut buf = [0u8; 64];
    let mut sent = Vec::new();
    while let Some(p) = enc.next_packet(&mut buf).unwrap() {
        from.send_to(&buf[..p.len], to).await.unwrap();
        let v = RtpView::parse(&buf[..p.len]).unwrap();
        let d = v.payload();
        sent.push((p.end, u16::from_be_bytes([d[2], d[3]])));
    }
    sent
}

/// 20 ms frames of a tone in `codec`, so the digit arrives amid audio as on a call.
fn audio(codec: AudioCodec, frames: usize) -> Vec<Vec<u8>> {
    let mut enc = codec::encoder(codec).unwrap();
    let rate = f64::from(codec.sample_rate());
    let n = codec.frame_samples(20);
    let mut out = Vec::new();
    for i in 0..frames {
        let pcm: Vec<i16> = (i * n..(i + 1) * n)
            .map(|k| (8192.0 * (2.0 * PI * 1000.0 * k as f64 / rate).sin()) as i16)
            .collect();
        let mut payload = vec![0u8; codec.max_payload_bytes(20)];
        let len = enc.encode(&pcm, &mut payload).unwrap();
        payload.truncate(len);
        out.push(payload);
    }
    out
}

async fn digits_cross_between_clocks(narrow: AudioCodec, narrow_pt: u8, ports: (u16, u16)) {
    let pool =
        PortPool::with_rng(ports.0, ports.1, StdRng::seed_from_u64(u64::from(ports.0))).unwrap();
    let (caller, callee) = (sock().await, sock().await);
    let mut bridge = Bridge::open(
        &pool,
        LO,
        side(addr(&caller), narrow, narrow_pt, TE_8K),
        side(addr(&callee), OPUS, 111, TE_48K),
        RelayConfig::default(),
    )
    .unwrap();
    let mut reported = bridge.take_dtmf_events().unwrap();
    let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
    assert_eq!(
        (bridge.clock_rate(Side::A), bridge.clock_rate(Side::B)),
        (8000, 48000)
    );

    // The caller talks, then presses '5' for 120 ms at the timestamp after its audio.
    let ssrc = 0x0A11_0001;
    let mut buf = [0u8; 1500];
    for (i, payload) in audio(narrow, 5).iter().enumerate() {
        let h = RtpHeader {
            marker: i == 0,
            pt: narrow_pt,
            seq: 95 + i as u16,
            timestamp: 160 * i as u32,
            ssrc,
        };
        let n = write_packet(&mut buf, &h, payload).unwrap();
        caller.send_to(&buf[..n], a).await.unwrap();
    }
    let sent = send_digit(
        &caller,
        a,
        DtmfEncoder::new(TE_8K, 8000, ssrc),
        '5',
        120,
        800,
    )
    .await;
    assert_eq!(sent.last(), Some(&(true, 960)), "120 ms at 8 kHz");
    let got = recv_events(&callee, TE_48K, sent.len()).await;
    for ((end, dur), (_, got_end, got_dur, _)) in sent.iter().zip(&got) {
        assert_eq!(*got_end, *end);
        assert_eq!(
            u32::from(*got_dur),
            u32::from(*dur) * 6,
            "durations on the 48 kHz clock"
        );
    }
    assert!(
        got.iter().all(|g| g.0 == got[0].0),
        "one event, one timestamp"
    );
    let mut dec = DtmfDecoder::new(TE_48K);
    let heard: Vec<_> = got
        .iter()
        .filter_map(|g| dec.handle(&RtpView::parse(&g.3).unwrap()))
        .collect();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!((heard[0].digit, heard[0].duration_ms(48000)), ('5', 120));
    let (from, ev) = timeout(GUARD, reported.recv()).await.unwrap().unwrap();
    assert_eq!((from, ev.digit, ev.duration_ts), (Side::A, '5', 960));
    assert_eq!(ev.duration_ms(bridge.clock_rate(from)), 120);

    // The Opus callee presses '#' for 60 ms on its 48 kHz clock.
    let sent = send_digit(
        &callee,
        b,
        DtmfEncoder::new(TE_48K, 48000, 0x0B22_0002),
        '#',
        60,
        48_000,
    )
    .await;
    assert_eq!(sent.last(), Some(&(true, 2880)), "60 ms at 48 kHz");
    let got = recv_events(&caller, TE_8K, sent.len()).await;
    for ((end, dur), (_, got_end, got_dur, _)) in sent.iter().zip(&got) {
        assert_eq!(*got_end, *end);
        assert_eq!(
            u32::from(*got_dur) * 6,
            u32::from(*dur),
            "durations on the 8 kHz clock"
        );
    }
    let mut dec = DtmfDecoder::new(TE_8K);
    let heard: Vec<_> = got
        .iter()
        .filter_map(|g| dec.handle(&RtpView::parse(&g.3).unwrap()))
        .collect();
    assert_eq!(heard.len(), 1, "{heard:?}");
    assert_eq!((heard[0].digit, heard[0].duration_ms(8000)), ('#', 60));
    let (from, ev) = timeout(GUARD, reported.recv()).await.unwrap().unwrap();
    assert_eq!((from, ev.digit, ev.duration_ts), (Side::B, '#', 2880));
    assert_eq!(ev.duration_ms(bridge.clock_rate(from)), 60);
    assert!(reported.try_recv().is_err(), "each digit is reported once");

    let [ca, cb] = bridge.close().await;
    assert_eq!(ca.dropped_total() + cb.dropped_total(), 0);
}

#[tokio::test]
async fn pcmu_and_opus_legs_exchange_digits_in_their_own_clock_units() {
    digits_cross_between_clocks(AudioCodec::Pcmu, 0, (42800, 42819)).await;
}

#[tokio::test]
async fn g722_and_opus_legs_exchange_digits_in_their_own_clock_units() {
    digits_cross_between_clocks(AudioCodec::G722, 9, (42820, 42839)).await;
}

/// Packet-by-packet transcoding (no playout clock), so each packet sent yields one.
const UNBUFFERED: RelayConfig = RelayConfig {
    relatch_after_silence: Duration::ZERO,
    stale_ssrc_window: Duration::from_millis(500),
    transcode_jitter: None,
    pass_ssrc: false,
};

fn pt_of(codec: AudioCodec) -> u8 {
    match codec {
        AudioCodec::Pcmu => 0,
        AudioCodec::Pcma => 8,
        AudioCodec::G722 => 9,
        AudioCodec::Opus { .. } => 111,
    }
}

#[tokio::test]
async fn packets_of_10_to_60_ms_keep_their_duration_across_codecs() {
    const PACKETS: usize = 6;
    let cases = [
        (OPUS, AudioCodec::Pcmu, 40),
        (AudioCodec::Pcmu, OPUS, 40),
        (OPUS, AudioCodec::G722, 10),
        (AudioCodec::G722, OPUS, 60),
        (AudioCodec::G722, AudioCodec::Pcma, 30),
    ];
    for (n, (from, to, ms)) in cases.into_iter().enumerate() {
        let base = 42860 + 20 * n as u16;
        let pool =
            PortPool::with_rng(base, base + 19, StdRng::seed_from_u64(u64::from(base))).unwrap();
        let (caller, callee) = (sock().await, sock().await);
        let bridge = Bridge::open(
            &pool,
            LO,
            side(addr(&caller), from, pt_of(from), TE_8K),
            side(addr(&callee), to, pt_of(to), TE_48K),
            UNBUFFERED,
        )
        .unwrap();
        let a = bridge.local_addr(Side::A);
        let mut enc = codec::encoder(from).unwrap();
        let mut dec = codec::decoder(to).unwrap();
        let frame = from.frame_samples(ms);
        let rate = f64::from(from.sample_rate());
        let mut buf = [0u8; 1500];
        let mut payload = vec![0u8; from.max_payload_bytes(ms)];
        let mut got_ts = Vec::new();
        let mut pcm = Vec::new();
        for i in 0..PACKETS {
            let tone: Vec<i16> = (i * frame..(i + 1) * frame)
                .map(|k| (8192.0 * (2.0 * PI * 1000.0 * k as f64 / rate).sin()) as i16)
                .collect();
            let len = enc.encode(&tone, &mut payload).unwrap();
            let h = RtpHeader {
                marker: i == 0,
                pt: pt_of(from),
                seq: i as u16,
                timestamp: from.timestamp_step(ms) * i as u32,
                ssrc: 0x5EED,
            };
            let n = write_packet(&mut buf, &h, &payload[..len]).unwrap();
            caller.send_to(&buf[..n], a).await.unwrap();
            let (n, _) = timeout(GUARD, callee.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let v = RtpView::parse(&buf[..n]).unwrap();
            assert_eq!(v.pt(), pt_of(to), "{from:?} -> {to:?}");
            got_ts.push(v.timestamp());
            dec.decode(v.payload(), &mut pcm).unwrap();
            assert_eq!(
                pcm.len(),
                to.frame_samples(ms),
                "{from:?} -> {to:?} at {ms} ms"
            );
        }
        let steps: Vec<u32> = got_ts.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(
            steps.iter().all(|s| *s == to.timestamp_step(ms)),
            "{from:?} -> {to:?} at {ms} ms: {steps:?}"
        );
        // The last packet carries the tone, past the codecs' start-up.
        let rms =
            (pcm.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
        assert!(rms > 2000.0, "{from:?} -> {to:?}: rms {rms:.0}");
        let [ca, _] = bridge.close().await;
        assert_eq!(
            (ca.transcoded_packets, ca.transcode_errors),
            (PACKETS as u64, 0),
            "{from:?} -> {to:?}"
        );
    }
}

/// A re-negotiated side changes the unit its digits are read in.
#[tokio::test]
async fn clock_rate_follows_set_side() {
    let pool = PortPool::with_rng(42840, 42859, StdRng::seed_from_u64(42840)).unwrap();
    let (caller, callee) = (sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        side(addr(&caller), AudioCodec::Pcmu, 0, TE_8K),
        side(addr(&callee), AudioCodec::Pcmu, 0, TE_8K),
        RelayConfig::default(),
    )
    .unwrap();
    assert_eq!(bridge.clock_rate(Side::B), 8000);
    bridge.set_side(Side::B, side(addr(&callee), OPUS, 111, TE_48K));
    assert_eq!(bridge.clock_rate(Side::B), 48000);
    assert_eq!(bridge.clock_rate(Side::A), 8000);
    bridge.close().await;
}
