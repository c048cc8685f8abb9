//! Bridge over real loopback UDP: pass-through with SSRC/sequence rewriting, RTP-bleed
//! rejection, PCMU→PCMA transcoding checked by tone analysis, and port return.
//! Waits are on events; timeouts only guard.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::f64::consts::PI;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use media::codec::AudioCodec;
use media::g711;
use media::net::PortPool;
use media::net::bridge::Bridge;
use media::relay::{DropReason, RelayConfig, Side, SideParams};
use media::rtp::{RtpHeader, RtpView, write_packet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(5);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Each test uses its own range: tests in this file run in parallel.
fn pool(min: u16, max: u16) -> PortPool {
    PortPool::with_rng(min, max, StdRng::seed_from_u64(u64::from(min))).unwrap()
}

fn side(remote: SocketAddr, codec: AudioCodec) -> SideParams {
    SideParams {
        remote: Some(remote),
        codec,
        pt: if codec == AudioCodec::Pcma { 8 } else { 0 },
        clock_rate: 8000,
        dtmf_pt: None,
    }
}

async fn sock() -> UdpSocket {
    UdpSocket::bind((LO, 0)).await.unwrap()
}

async fn send(from: &UdpSocket, to: SocketAddr, pt: u8, seq: u16, ssrc: u32, payload: &[u8]) {
    let mut buf = [0u8; 1500];
    let hdr = RtpHeader {
        marker: false,
        pt,
        seq,
        timestamp: u32::from(seq) * 160,
        ssrc,
    };
    let n = write_packet(&mut buf, &hdr, payload).unwrap();
    from.send_to(&buf[..n], to).await.unwrap();
}

/// Receives one datagram: (pt, seq, ssrc, payload, source).
async fn recv(sock: &UdpSocket) -> (u8, u16, u32, Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, src) = timeout(GUARD, sock.recv_from(&mut buf))
        .await
        .expect("timed out waiting for RTP")
        .unwrap();
    let v = RtpView::parse(&buf[..n]).unwrap();
    (v.pt(), v.seq(), v.ssrc(), v.payload().to_vec(), src)
}

#[tokio::test]
async fn passthrough_both_ways_with_relay_ssrc_and_continuous_seq() {
    let pool = pool(41000, 41019);
    let (caller, callee) = (sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        side(caller.local_addr().unwrap(), AudioCodec::Pcmu),
        side(callee.local_addr().unwrap(), AudioCodec::Pcmu),
        RelayConfig::default(),
    )
    .unwrap();
    let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
    assert_ne!(a, b);

    let mut seen = Vec::new();
    for i in 0..10u16 {
        send(&caller, a, 0, 1000 + i, 0xCA11, &[i as u8; 160]).await;
        let (pt, seq, ssrc, payload, src) = recv(&callee).await;
        assert_eq!((pt, payload.len(), payload[0]), (0, 160, i as u8));
        assert_eq!(src, b, "callee hears the bridge's B socket");
        assert_ne!(ssrc, 0xCA11, "the relay's own SSRC");
        seen.push((seq, ssrc));
    }
    assert!(seen.iter().all(|&(_, s)| s == seen[0].1));
    assert!(seen.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1)));

    let mut back = Vec::new();
    for i in 0..10u16 {
        send(&callee, b, 0, 7 + i, 0xCA1E, &[0x55; 160]).await;
        let (_, seq, ssrc, _, src) = recv(&caller).await;
        assert_eq!(src, a);
        assert_ne!(ssrc, 0xCA1E);
        back.push((seq, ssrc));
    }
    assert!(back.iter().all(|&(_, s)| s == back[0].1));
    assert_ne!(back[0].1, seen[0].1, "each side sees its own SSRC");
    assert!(back.windows(2).all(|w| w[1].0 == w[0].0.wrapping_add(1)));

    let [ca, cb] = bridge.close().await;
    assert_eq!((ca.received_packets, ca.sent_packets), (10, 10));
    assert_eq!((cb.received_packets, cb.sent_packets), (10, 10));
    assert_eq!(ca.dropped_total() + cb.dropped_total(), 0);
    assert_eq!((ca.latches, cb.latches), (1, 1));
}

#[tokio::test]
async fn injected_packets_after_latching_are_dropped_and_counted() {
    let pool = pool(41100, 41119);
    let (caller, callee, attacker) = (sock().await, sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        side(caller.local_addr().unwrap(), AudioCodec::Pcmu),
        side(callee.local_addr().unwrap(), AudioCodec::Pcmu),
        RelayConfig::default(),
    )
    .unwrap();
    let a = bridge.local_addr(Side::A);
    send(&caller, a, 0, 1, 0xCA11, &[1; 160]).await;
    assert_eq!(recv(&callee).await.3[0], 1);

    // Sent before the caller's next packet on the same socket, so handled before it.
    send(&attacker, a, 0, 500, 0xBAD, &[0xEE; 160]).await;
    send(&caller, a, 0, 2, 0xCA11, &[2; 160]).await;
    let (_, _, _, payload, _) = recv(&callee).await;
    assert_eq!(
        payload[0], 2,
        "the injected packet never reaches the callee"
    );
    let c = bridge.counters(Side::A);
    assert_eq!(c.dropped(DropReason::WrongSource), 1);
    assert_eq!(c.received_packets, 3);

    // The call goes on, and media still flows back to the latched caller.
    send(&callee, bridge.local_addr(Side::B), 0, 9, 0xCA1E, &[3; 160]).await;
    let (_, _, _, payload, _) = recv(&caller).await;
    assert_eq!(payload[0], 3);
    let [ca, _] = bridge.close().await;
    assert_eq!(ca.dropped(DropReason::WrongSource), 1);
    assert_eq!(ca.sent_packets, 2);
}

/// Power of `freq` in `x` (Goertzel).
fn goertzel(x: &[f64], freq: f64, rate: f64) -> f64 {
    let w = 2.0 * PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

fn rms(x: &[f64]) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

#[tokio::test]
async fn pcmu_caller_to_pcma_callee_keeps_a_1khz_tone() {
    const PACKETS: usize = 25;
    let pool = pool(41200, 41219);
    let (caller, callee) = (sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        side(caller.local_addr().unwrap(), AudioCodec::Pcmu),
        side(callee.local_addr().unwrap(), AudioCodec::Pcma),
        RelayConfig::default(),
    )
    .unwrap();
    let a = bridge.local_addr(Side::A);
    // -12 dBFS 1 kHz tone.
    let source: Vec<f64> = (0..PACKETS * 160)
        .map(|n| 8192.0 * (2.0 * PI * 1000.0 * n as f64 / 8000.0).sin())
        .collect();
    let mut received = Vec::new();
    for (i, frame) in source.chunks(160).enumerate() {
        let pcm: Vec<i16> = frame.iter().map(|&v| v.round() as i16).collect();
        let mut payload = [0u8; 160];
        g711::encode_ulaw(&pcm, &mut payload);
        send(&caller, a, 0, i as u16, 0xCA11, &payload).await;
        let (pt, _, _, payload, _) = recv(&callee).await;
        assert_eq!((pt, payload.len()), (8, 160));
        let mut out = [0i16; 160];
        g711::decode_alaw(&payload, &mut out);
        received.extend(out.iter().map(|&s| f64::from(s)));
    }
    let on = goertzel(&received, 1000.0, 8000.0);
    for off in [800.0, 1200.0] {
        let db = 10.0 * (on / goertzel(&received, off, 8000.0)).log10();
        assert!(db >= 20.0, "1 kHz only {db:.1} dB over {off} Hz");
    }
    let level = 20.0 * (rms(&received) / rms(&source)).log10();
    assert!(level.abs() <= 1.5, "level off by {level:.2} dB");
    let [ca, _] = bridge.close().await;
    assert_eq!(ca.transcoded_packets, PACKETS as u64);
    assert_eq!(ca.transcode_errors, 0);
}

#[tokio::test]
async fn ports_return_to_the_pool_after_close() {
    let pool = pool(41300, 41319);
    let before = pool.available();
    let peer = sock().await;
    let addr = peer.local_addr().unwrap();
    let bridge = Bridge::open(
        &pool,
        LO,
        side(addr, AudioCodec::Pcmu),
        side(addr, AudioCodec::Pcmu),
        RelayConfig::default(),
    )
    .unwrap();
    assert_eq!(pool.available(), before - 2);
    let a = bridge.local_addr(Side::A);
    bridge.close().await;
    assert_eq!(pool.available(), before);
    // The socket is really closed: the port can be bound again.
    UdpSocket::bind(a).await.unwrap();
}

#[tokio::test]
async fn update_remote_moves_media_and_relatches() {
    let pool = pool(41400, 41419);
    let (caller, callee, moved) = (sock().await, sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        side(caller.local_addr().unwrap(), AudioCodec::Pcmu),
        side(callee.local_addr().unwrap(), AudioCodec::Pcmu),
        RelayConfig::default(),
    )
    .unwrap();
    let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
    send(&callee, b, 0, 1, 0xCA1E, &[1; 160]).await;
    assert_eq!(recv(&caller).await.3[0], 1);
    send(&caller, a, 0, 1, 0xCA11, &[2; 160]).await;
    assert_eq!(recv(&callee).await.3[0], 2);

    // A re-INVITE moved the callee; its new socket is accepted and media follows it.
    bridge.update_remote(Side::B, moved.local_addr().unwrap());
    send(&moved, b, 0, 2, 0xBEEF, &[3; 160]).await;
    assert_eq!(recv(&caller).await.3[0], 3);
    send(&caller, a, 0, 2, 0xCA11, &[4; 160]).await;
    let (_, _, _, payload, src) = recv(&moved).await;
    assert_eq!((payload[0], src), (4, b));
    let [_, cb] = bridge.close().await;
    assert_eq!((cb.latches, cb.dropped_total()), (2, 0));
}
