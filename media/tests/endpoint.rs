//! RtpEndpoint over real loopback UDP: exchange, statistics, malformed packets,
//! symmetric-RTP latching and port return. Waits are on events; timeouts only guard.
#![cfg(feature = "net")]
// Helpers outside #[test] fns unwrap too; a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use media::net::{PortPool, RtpEndpoint};
use media::rtp::{RtpHeader, RtpView, write_packet};
use media::sdp::{Codec, Direction, StreamParams};
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

fn params(remote: SocketAddr, codec: Codec) -> StreamParams {
    StreamParams {
        remote,
        codec,
        pt: codec.payload_type(),
        clock_rate: 8000,
        ptime_ms: 20,
        dtmf_pt: None,
        direction: Direction::SendRecv,
    }
}

/// Receives one datagram from `sock`, returning (length, source).
async fn recv(sock: &UdpSocket, buf: &mut [u8]) -> (usize, SocketAddr) {
    timeout(GUARD, sock.recv_from(buf))
        .await
        .expect("no packet within guard")
        .unwrap()
}

fn rtp_packet(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut buf = vec![0u8; 12 + 160];
    let h = RtpHeader {
        marker: false,
        pt: 0,
        seq,
        timestamp: u32::from(seq) * 160,
        ssrc,
    };
    let n = write_packet(&mut buf, &h, &[0xff; 160]).unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn two_endpoints_exchange_silence() {
    let pool = pool(41000, 41019);
    let a = RtpEndpoint::open(&pool, LO).unwrap();
    let b = RtpEndpoint::open(&pool, LO).unwrap();
    assert_eq!(a.local_addr().port() % 2, 0);
    assert_ne!(a.local_addr(), b.local_addr());
    assert_eq!(a.stats().packets_received, 0);
    assert_eq!(a.stats().last_received, None);

    a.connect(params(b.local_addr(), Codec::Pcmu));
    b.connect(params(a.local_addr(), Codec::Pcma));
    assert!(timeout(GUARD, a.first_packet()).await.unwrap());
    assert!(timeout(GUARD, b.first_packet()).await.unwrap());

    for ep in [&a, &b] {
        let s = ep.stats();
        assert!(s.packets_received >= 1, "{s:?}");
        // 20 ms of G.711 is 160 payload bytes per packet.
        assert!(
            s.bytes_received >= 160 && s.bytes_received % 160 == 0,
            "{s:?}"
        );
        assert!(s.last_received.is_some());
        assert_eq!(s.malformed, 0);
        assert_eq!(s.lost, 0);
    }
    assert!(a.stats().packets_sent >= 1);

    let final_a = a.close().await;
    assert!(final_a.packets_received >= 1 && final_a.packets_sent >= 1);
    b.close().await;
    assert_eq!(pool.available(), pool.capacity());
}

#[tokio::test]
async fn sends_paced_silence_to_remote_with_rtp_sequencing() {
    let pool = pool(41020, 41029);
    let peer = UdpSocket::bind((LO, 0)).await.unwrap();
    let ep = RtpEndpoint::open(&pool, LO).unwrap();
    ep.connect(params(peer.local_addr().unwrap(), Codec::Pcma));
    let mut buf = [0u8; 1500];

    let (n, src) = recv(&peer, &mut buf).await;
    assert_eq!(src, ep.local_addr());
    let first = RtpView::parse(&buf[..n]).unwrap();
    assert!(first.marker());
    assert_eq!(first.pt(), 8);
    assert_eq!(first.payload(), &[0xd5; 160][..]);
    let (seq, ts, ssrc) = (first.seq(), first.timestamp(), first.ssrc());

    let (n, _) = recv(&peer, &mut buf).await;
    let second = RtpView::parse(&buf[..n]).unwrap();
    assert!(!second.marker());
    assert_eq!(second.seq(), seq.wrapping_add(1));
    assert_eq!(second.ssrc(), ssrc);
    // One 20 ms step (more only if the runtime stalled and skipped ticks).
    let step = second.timestamp().wrapping_sub(ts);
    assert!(step >= 160 && step % 160 == 0, "timestamp step {step}");
    ep.close().await;
}

/// G.722 and Opus have no silence byte: the endpoint encodes a frame of zeros and sends
/// it every packet time, on the codec's RTP clock, and it decodes to silence.
#[tokio::test]
async fn sends_encoded_silence_in_g722_and_opus() {
    let pool = pool(41040, 41049);
    for (codec, pt, step) in [(Codec::G722, 9, 160), (Codec::Opus, 111, 960)] {
        let peer = UdpSocket::bind((LO, 0)).await.unwrap();
        let ep = RtpEndpoint::open(&pool, LO).unwrap();
        let mut p = params(peer.local_addr().unwrap(), codec);
        p.clock_rate = codec.clock_rate();
        ep.connect(p);
        let mut dec = media::codec::decoder(codec.audio_codec()).unwrap();
        let mut pcm = Vec::new();
        let mut buf = [0u8; 1500];
        let mut last: Option<(u16, u32)> = None;
        for _ in 0..10 {
            let (n, src) = recv(&peer, &mut buf).await;
            assert_eq!(src, ep.local_addr());
            let v = RtpView::parse(&buf[..n]).unwrap();
            assert_eq!(v.pt(), pt, "{codec:?}");
            assert!(!v.payload().is_empty(), "{codec:?}");
            if let Some((seq, ts)) = last {
                assert_eq!(v.seq(), seq.wrapping_add(1));
                let d = v.timestamp().wrapping_sub(ts);
                assert!(d >= step && d % step == 0, "{codec:?}: timestamp step {d}");
            }
            last = Some((v.seq(), v.timestamp()));
            dec.decode(v.payload(), &mut pcm).unwrap();
            assert_eq!(
                pcm.len(),
                codec.audio_codec().frame_samples(20),
                "{codec:?}"
            );
            let peak = pcm.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
            assert!(
                peak < 64,
                "{codec:?}: not silence, peak {peak}, payload {:02x?}",
                v.payload()
            );
        }
        ep.close().await;
    }
}

#[tokio::test]
async fn malformed_packets_are_counted_and_dropped() {
    let pool = pool(41030, 41039);
    let ep = RtpEndpoint::open(&pool, LO).unwrap();
    let peer = UdpSocket::bind((LO, 0)).await.unwrap();
    // Receiving works before connect. Same socket pair, so the datagrams arrive in
    // order: by the time the valid packet signals, the garbage has been handled.
    peer.send_to(b"not rtp at all", ep.local_addr())
        .await
        .unwrap();
    peer.send_to(&[0x40; 20], ep.local_addr()).await.unwrap(); // version 1
    peer.send_to(&rtp_packet(1, 99), ep.local_addr())
        .await
        .unwrap();
    assert!(timeout(GUARD, ep.first_packet()).await.unwrap());
    let s = ep.stats();
    assert_eq!(s.malformed, 2);
    assert_eq!(s.packets_received, 1);
    assert_eq!(s.bytes_received, 160);
    assert_eq!(s.packets_sent, 0, "nothing is sent before connect");
    ep.close().await;
}

#[tokio::test]
async fn latching_follows_a_new_source() {
    let pool = pool(41040, 41049);
    let a = RtpEndpoint::open(&pool, LO).unwrap();
    let b = RtpEndpoint::open(&pool, LO).unwrap();
    a.connect(params(b.local_addr(), Codec::Pcmu));
    b.connect(params(a.local_addr(), Codec::Pcmu));
    assert!(timeout(GUARD, b.first_packet()).await.unwrap());

    // A third party with another SSRC shows up: b must now send to it, and stay with
    // it although `a` keeps sending (a's SSRC is retired, so no flapping back).
    let mover = UdpSocket::bind((LO, 0)).await.unwrap();
    mover
        .send_to(&rtp_packet(500, 0x5151_5151), b.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 1500];
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let (n, src) = recv(&mover, &mut buf).await;
        assert_eq!(src, b.local_addr());
        let v = RtpView::parse(&buf[..n]).unwrap();
        assert_eq!(v.pt(), 0);
        assert_eq!(v.payload(), &[0xff; 160][..]);
        seqs.push(v.seq());
    }
    // Consecutive: no packet of b's went back to `a` in between.
    assert_eq!(seqs[1], seqs[0].wrapping_add(1));
    assert_eq!(seqs[2], seqs[1].wrapping_add(1));
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn connect_again_resets_latching() {
    let pool = pool(41080, 41089);
    let ep = RtpEndpoint::open(&pool, LO).unwrap();
    let signalled = UdpSocket::bind((LO, 0)).await.unwrap();
    let mover = UdpSocket::bind((LO, 0)).await.unwrap();
    ep.connect(params(signalled.local_addr().unwrap(), Codec::Pcmu));
    let mut buf = [0u8; 1500];
    recv(&signalled, &mut buf).await;
    mover
        .send_to(&rtp_packet(1, 7), ep.local_addr())
        .await
        .unwrap();
    let (_, src) = recv(&mover, &mut buf).await;
    assert_eq!(src, ep.local_addr());

    // Re-targeting (a re-INVITE) drops the latch: packets go to the new remote.
    let fresh = UdpSocket::bind((LO, 0)).await.unwrap();
    ep.connect(params(fresh.local_addr().unwrap(), Codec::Pcmu));
    let (n, src) = recv(&fresh, &mut buf).await;
    assert_eq!(src, ep.local_addr());
    assert!(RtpView::parse(&buf[..n]).unwrap().marker());
    ep.close().await;
}

#[tokio::test]
async fn recvonly_sends_nothing_but_still_receives() {
    let pool = pool(41090, 41099);
    let quiet = RtpEndpoint::open(&pool, LO).unwrap();
    let talker = RtpEndpoint::open(&pool, LO).unwrap();
    let mut p = params(talker.local_addr(), Codec::Pcmu);
    p.direction = Direction::RecvOnly;
    quiet.connect(p);
    talker.connect(params(quiet.local_addr(), Codec::Pcmu));
    assert!(timeout(GUARD, quiet.first_packet()).await.unwrap());
    assert_eq!(quiet.stats().packets_sent, 0);
    assert_eq!(quiet.close().await.packets_sent, 0);
    talker.close().await;
}

#[tokio::test]
async fn ports_return_to_pool_after_close() {
    // Two pairs: 41050/41051 and 41052/41053.
    let pool = pool(41050, 41053);
    assert_eq!(pool.capacity(), 2);
    let a = RtpEndpoint::open(&pool, LO).unwrap();
    let b = RtpEndpoint::open(&pool, LO).unwrap();
    assert!(RtpEndpoint::open(&pool, LO).is_err(), "pool is exhausted");
    assert_eq!(pool.available(), 0);
    a.close().await;
    assert_eq!(pool.available(), 1);
    b.close().await;
    assert_eq!(pool.available(), 2);

    // Exhaust the same range again, then give it back again.
    let pairs: Vec<_> = std::iter::from_fn(|| pool.alloc()).collect();
    assert_eq!(pairs.len(), 2);
    assert!(pool.alloc().is_none());
    drop(pairs);
    assert_eq!(pool.available(), 2);

    // And the closed sockets really are gone: both pairs bind again.
    let c = RtpEndpoint::open(&pool, LO).unwrap();
    let d = RtpEndpoint::open(&pool, LO).unwrap();
    let mut ports = [c.local_addr().port(), d.local_addr().port()];
    ports.sort_unstable();
    assert_eq!(ports, [41050, 41052]);
    c.close().await;
    d.close().await;
}

#[tokio::test]
async fn busy_ports_are_skipped() {
    let pool = pool(41060, 41063);
    // Someone else holds 41061 (the first pair's RTCP port).
    let squatter = std::net::UdpSocket::bind((LO, 41061)).unwrap();
    let ep = RtpEndpoint::open(&pool, LO).unwrap();
    assert_eq!(ep.local_addr().port(), 41062);
    // The failed pair was given back to the pool.
    assert_eq!(pool.available(), 1);
    drop(squatter);
    ep.close().await;
}

#[test]
fn open_outside_a_runtime_is_an_error_not_a_panic() {
    let pool = pool(41070, 41073);
    assert!(RtpEndpoint::open(&pool, LO).is_err());
    assert_eq!(pool.available(), 2);
}

/// RTP hijack and injection: once connected, packets from an address neither the SDP nor
/// the signalling named are dropped before they latch, count or decode; the signalled
/// NAT address (another port of the far end's SIP source IP) is accepted.
#[tokio::test]
async fn strangers_neither_latch_nor_count() {
    let pool = pool(41090, 41099);
    let ep = RtpEndpoint::open(&pool, LO).unwrap();
    let far = UdpSocket::bind((LO, 0)).await.unwrap();
    let stranger = UdpSocket::bind(("127.0.0.2", 0)).await.unwrap();
    // The far end's SDP names 127.0.0.3 (say, its private address); its SIP came from LO.
    let sdp_remote: std::net::SocketAddr = "127.0.0.3:4000".parse().unwrap();
    ep.connect_from(params(sdp_remote, Codec::Pcmu), Some(LO));
    for i in 0..5 {
        stranger
            .send_to(&rtp_packet(i, 0), ep.local_addr())
            .await
            .unwrap();
    }
    far.send_to(&rtp_packet(9, 0), ep.local_addr())
        .await
        .unwrap();
    assert!(timeout(GUARD, ep.first_packet()).await.unwrap());
    let s = ep.stats();
    assert_eq!(s.packets_received, 1, "only the far end's packet counts");
    assert_eq!(s.foreign, 5);
    // Our audio goes to the far end (latched), never to the stranger.
    let mut buf = [0u8; 512];
    let (_, from) = timeout(GUARD, far.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, ep.local_addr());
    let nothing = timeout(
        std::time::Duration::from_millis(100),
        stranger.recv_from(&mut buf),
    )
    .await;
    assert!(nothing.is_err(), "the stranger received our audio");
    ep.close().await;
}

/// A clip played on the endpoint goes out in the negotiated codec, in place of silence,
/// and the endpoint goes back to silence once it has ended.
#[tokio::test]
async fn a_clip_plays_in_place_of_silence() {
    use media::source::{Clip, ClipPlayer};
    let pool = pool(41200, 41219);
    let far = UdpSocket::bind((LO, 0)).await.unwrap();
    let ep = RtpEndpoint::open(&pool, LO).unwrap();
    ep.connect(params(far.local_addr().unwrap(), Codec::Pcmu));
    // 100 ms of a full-scale square wave at 1 kHz: nothing like G.711 silence.
    let samples: Vec<i16> = (0..800)
        .map(|i| if (i / 4) % 2 == 0 { 16000 } else { -16000 })
        .collect();
    let clip = Clip {
        rate: 8000,
        samples: samples.into(),
    };
    let mut buf = [0u8; 1500];
    // Silence first.
    let (n, _) = recv(&far, &mut buf).await;
    assert!(buf[12..n].iter().all(|&b| b == 0xff));
    let (player, done) = ClipPlayer::new(clip);
    ep.play(Box::new(player));
    let mut loud = 0;
    let mut last_seq = None;
    let mut silent_after = 0;
    // Until five silent packets follow the clip's five loud ones.
    while silent_after < 5 {
        let (n, _) = recv(&far, &mut buf).await;
        let view = RtpView::parse(&buf[..n]).unwrap();
        if let Some(prev) = last_seq {
            assert_eq!(view.seq(), u16::wrapping_add(prev, 1), "one stream, no gap");
        }
        last_seq = Some(view.seq());
        if view.payload().iter().all(|&b| b == 0xff) {
            if loud > 0 {
                silent_after += 1;
            }
        } else {
            assert_eq!(silent_after, 0, "audio after the clip ended");
            loud += 1;
        }
    }
    assert_eq!(loud, 5, "100 ms of clip is five 20 ms packets");
    timeout(GUARD, done).await.unwrap().unwrap();
    ep.close().await;
}

/// A clip given right after `connect` (before the task has applied it) plays too.
#[tokio::test]
async fn a_clip_given_with_connect_plays_from_the_first_packet() {
    use media::source::{Clip, ClipPlayer};
    let pool = pool(41220, 41239);
    let far = UdpSocket::bind((LO, 0)).await.unwrap();
    let ep = RtpEndpoint::open(&pool, LO).unwrap();
    let clip = Clip {
        rate: 8000,
        samples: vec![16000i16; 800].into(),
    };
    let (player, done) = ClipPlayer::new(clip);
    ep.connect(params(far.local_addr().unwrap(), Codec::Pcmu));
    ep.play(Box::new(player));
    let mut buf = [0u8; 1500];
    let mut loud = 0;
    while loud < 5 {
        let (n, _) = recv(&far, &mut buf).await;
        if buf[12..n].iter().any(|&b| b != 0xff) {
            loud += 1;
        } else {
            assert_eq!(loud, 0, "silence in the middle of the clip");
        }
    }
    timeout(GUARD, done).await.unwrap().unwrap();
    ep.close().await;
}
