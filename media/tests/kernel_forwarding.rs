//! In-kernel forwarding through conntrack against the real kernel: needs CAP_NET_ADMIN
//! and `nft` (CI runs as root and installs nftables).
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use media::net::kernel::{Flow, KernelForwarder};

fn sock() -> UdpSocket {
    sock_at(0)
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().unwrap()
}

fn sock_at(port: u16) -> UdpSocket {
    let s = UdpSocket::bind(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

#[test]
fn an_installed_flow_is_forwarded_by_the_kernel_both_ways_and_counted() {
    // Our two ports in the switch's range and in one conntrack zone, as the pool books them.
    let fwd =
        KernelForwarder::enable(46_000..=46_099).expect("in-kernel forwarding needs root and nft");
    let (caller, a, b, callee) = (sock(), sock_at(46_000), sock_at(46_002), sock());
    let other_zone = sock_at(46_004);
    assert_eq!(
        Flow::new(addr(&caller), addr(&a), addr(&other_zone), addr(&callee)),
        None,
        "ports in two zones cannot carry one entry"
    );
    // The first packets went through userspace: plain conntrack entries exist.
    caller.send_to(b"first", addr(&a)).unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = a.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"first"[..], addr(&caller)));
    b.send_to(b"to-callee", addr(&callee)).unwrap();
    callee.recv_from(&mut buf).unwrap();
    callee.send_to(b"back", addr(&b)).unwrap();
    b.recv_from(&mut buf).unwrap();

    let flow = Flow::new(addr(&caller), addr(&a), addr(&b), addr(&callee)).unwrap();
    fwd.install(&flow).unwrap();
    for k in 0..5u8 {
        caller.send_to(&[k; 172], addr(&a)).unwrap();
        let (n, from) = callee
            .recv_from(&mut buf[..])
            .map(|(n, f)| (n.min(64), f))
            .unwrap();
        assert_eq!(from, addr(&b), "the callee sees our B port as the source");
        assert_eq!(buf[..n.min(4)], [k; 4]);
        callee.send_to(&[k + 100; 100], addr(&b)).unwrap();
        let (_, from) = caller.recv_from(&mut buf).unwrap();
        assert_eq!(from, addr(&a), "the caller sees our A port as the source");
        assert_eq!(buf[0], k + 100);
    }
    // A packet relayed by us after the hand-over (it was queued at the socket) is not
    // tracked, so it cannot make an entry that would capture the peer's packets.
    b.send_to(b"queued", addr(&callee)).unwrap();
    callee.recv_from(&mut buf).unwrap();
    callee.send_to(b"after-own-send", addr(&b)).unwrap();
    let (n, from) = caller.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"after-own-send"[..], addr(&a)));
    // Nothing reached our sockets.
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    assert!(a.recv_from(&mut buf).is_err());
    assert!(b.recv_from(&mut buf).is_err());
    let c = fwd.counters(&flow).unwrap().unwrap();
    assert_eq!((c.a_packets, c.b_packets), (5, 6));
    assert_eq!(c.a_bytes, 5 * (172 + 28));
    assert_eq!(c.b_bytes, 5 * (100 + 28) + 14 + 28);

    // Another source is not forwarded: it reaches our socket (where the relay drops it).
    let stranger = sock();
    stranger.send_to(b"bleed", addr(&a)).unwrap();
    a.set_nonblocking(false).unwrap();
    let (_, from) = a.recv_from(&mut buf).unwrap();
    assert_eq!(from, addr(&stranger));

    fwd.remove(&flow).unwrap();
    assert_eq!(fwd.counters(&flow).unwrap(), None);
    let stats = fwd.stats();
    assert_eq!((stats.installed, stats.removed, stats.refused), (1, 1, 0));
    caller.send_to(b"after", addr(&a)).unwrap();
    let (n, from) = a.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"after"[..], addr(&caller)));
    // Removing twice is fine.
    fwd.remove(&flow).unwrap();
}

mod bridge {
    //! A real [`Bridge`] handing a pass-through call to the kernel and taking it back.
    #![allow(clippy::disallowed_methods)] // real sockets and the wall clock

    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use media::codec::AudioCodec;
    use media::net::PortPool;
    use media::net::bridge::{Bridge, BridgeCounters};
    use media::net::kernel::KernelForwarder;
    use media::relay::{DropReason, RelayConfig, Side, SideParams};
    use media::rtp::{RtpHeader, RtpView, write_packet};
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use tokio::net::UdpSocket;
    use tokio::time::timeout;

    const GUARD: Duration = Duration::from_secs(5);
    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn pool(min: u16) -> PortPool {
        let kernel = KernelForwarder::enable(min..=min + 20)
            .expect("in-kernel forwarding needs root and nft");
        PortPool::with_rng(min, min + 20, StdRng::seed_from_u64(u64::from(min)))
            .unwrap()
            .with_kernel_forwarder(Arc::new(kernel))
    }

    fn params(remote: SocketAddr, codec: AudioCodec) -> SideParams {
        SideParams {
            remote: Some(remote),
            codec,
            pt: if codec == AudioCodec::Pcma { 8 } else { 0 },
            clock_rate: 8000,
            dtmf_pt: Some(101),
        }
    }

    async fn sock() -> UdpSocket {
        UdpSocket::bind((LO, 0)).await.unwrap()
    }

    fn addr(s: &UdpSocket) -> SocketAddr {
        s.local_addr().unwrap()
    }

    async fn send(from: &UdpSocket, to: SocketAddr, pt: u8, seq: u16, ssrc: u32) {
        let h = RtpHeader {
            marker: false,
            pt,
            seq,
            timestamp: u32::from(seq) * 160,
            ssrc,
        };
        let mut buf = [0u8; 400];
        let n = write_packet(&mut buf, &h, &[0xd5; 160]).unwrap();
        from.send_to(&buf[..n], to).await.unwrap();
    }

    /// (seq, ssrc, source) of the next packet.
    async fn recv(s: &UdpSocket) -> (u16, u32, SocketAddr) {
        let mut buf = [0u8; 1500];
        let (n, src) = timeout(GUARD, s.recv_from(&mut buf))
            .await
            .expect("timed out waiting for RTP")
            .unwrap();
        let v = RtpView::parse(&buf[..n]).unwrap();
        (v.seq(), v.ssrc(), src)
    }

    /// Waits until `side`'s counters satisfy `ok` (they are read from the kernel once
    /// a second); the guard only bounds the wait.
    async fn counters_until(
        bridge: &Bridge,
        side: Side,
        ok: impl Fn(&BridgeCounters) -> bool,
    ) -> BridgeCounters {
        let start = Instant::now();
        loop {
            let c = bridge.counters(side);
            if ok(&c) {
                return c;
            }
            assert!(start.elapsed() < GUARD, "counters never got there: {c:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_pass_through_call_moves_to_the_kernel_and_back_on_a_reinvite() {
        let (caller, callee) = (sock().await, sock().await);
        let pool = pool(43_000);
        let bridge = Bridge::open(
            &pool,
            LO,
            params(addr(&caller), AudioCodec::Pcmu),
            params(addr(&callee), AudioCodec::Pcmu),
            RelayConfig::default(),
        )
        .unwrap();
        let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
        // The first packet each way latches; the output keeps the sender's SSRC.
        send(&caller, a, 0, 1, 0x1111).await;
        assert_eq!(recv(&callee).await, (1, 0x1111, b));
        send(&callee, b, 0, 500, 0x2222).await;
        assert_eq!(recv(&caller).await, (500, 0x2222, a));
        // From here the kernel forwards, headers untouched, sources rewritten.
        for seq in 2..=11 {
            send(&caller, a, 0, seq, 0x1111).await;
            assert_eq!(recv(&callee).await, (seq, 0x1111, b));
            send(&callee, b, 0, 499 + seq, 0x2222).await;
            assert_eq!(recv(&caller).await, (499 + seq, 0x2222, a));
        }
        let ca = counters_until(&bridge, Side::A, |c| c.kernel_forwarded >= 8).await;
        let cb = counters_until(&bridge, Side::B, |c| c.kernel_forwarded >= 8).await;
        // The bridge itself relayed at most the packets before the hand-over.
        assert!(ca.forwarded_packets - ca.kernel_forwarded <= 3, "{ca:?}");
        assert_eq!(ca.received_packets, 11);
        assert_eq!(cb.received_packets, 11);
        let stats = bridge.stats(Side::A);
        assert_eq!((stats.packets, stats.bytes), (11, 11 * 160));

        // RTP bleed: another source reaches the bridge's socket and is dropped there.
        let stranger = sock().await;
        send(&stranger, a, 0, 7, 0x9999).await;
        counters_until(&bridge, Side::A, |c| {
            c.dropped(DropReason::WrongSource) == 1
        })
        .await;

        // A re-INVITE moves the callee: the bridge takes the call back and sends there.
        let moved = sock().await;
        bridge.update_remote(Side::B, addr(&moved));
        // Until the bridge task has taken the call back, the kernel still forwards to
        // the old address (as packets in flight would go there anyway).
        let mut seq = 12;
        let got = loop {
            send(&caller, a, 0, seq, 0x1111).await;
            if let Ok(got) = timeout(Duration::from_millis(100), recv(&moved)).await {
                break got;
            }
            seq += 1;
            assert!(seq < 40, "the bridge never took the call back");
        };
        assert_eq!(got, (seq, 0x1111, b));
        let [ca, _] = bridge.close().await;
        // Every packet counted once, by the kernel or by the bridge (and the stranger's).
        assert_eq!(ca.received_packets, u64::from(seq) + 1, "{ca:?}");
        assert!(ca.kernel_forwarded >= 8);
    }

    /// A held side (its SDP direction says it receives nothing) is not fed by the
    /// kernel: the bridge takes the call back on the hold, drops what the other side
    /// sends towards it, and hands the call to the kernel again after the resume.
    #[tokio::test]
    async fn a_held_call_is_taken_back_from_the_kernel_and_the_holder_gets_nothing() {
        use media::sdp::Direction;
        let (caller, callee) = (sock().await, sock().await);
        let pool = pool(43_200);
        let bridge = Bridge::open(
            &pool,
            LO,
            params(addr(&caller), AudioCodec::Pcmu),
            params(addr(&callee), AudioCodec::Pcmu),
            RelayConfig::default(),
        )
        .unwrap();
        let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
        for seq in 1..=6 {
            send(&caller, a, 0, seq, 0x1111).await;
            assert_eq!(recv(&callee).await.0, seq);
            send(&callee, b, 0, 100 + seq, 0x2222).await;
            assert_eq!(recv(&caller).await.0, 100 + seq);
        }
        counters_until(&bridge, Side::B, |c| c.kernel_forwarded >= 2).await;

        // The caller holds (sendonly, answered recvonly): the callee's RTP stops at the
        // bridge from the first packet the bridge sees after the command.
        bridge.set_direction(Side::A, Direction::RecvOnly);
        let mut seq = 107;
        loop {
            send(&callee, b, 0, seq, 0x2222).await;
            seq += 1;
            if bridge.counters(Side::B).dropped(DropReason::Held) > 0 {
                break;
            }
            // Lets the bridge task (same thread) take the command and the packet.
            tokio::task::yield_now().await;
            assert!(
                seq < 140,
                "the bridge never took the held call back: {:?}",
                bridge.counters(Side::B)
            );
        }
        let held_from = bridge.counters(Side::B).dropped(DropReason::Held);
        let hold_start = seq;
        for _ in 0..10 {
            send(&callee, b, 0, seq, 0x2222).await;
            seq += 1;
            // The caller's music on hold still reaches the callee.
            send(&caller, a, 0, seq, 0x1111).await;
            assert_eq!(recv(&callee).await.0, seq);
        }
        counters_until(&bridge, Side::B, |c| {
            c.dropped(DropReason::Held) >= held_from + 10
        })
        .await;
        // Only what the kernel forwarded before the bridge took the call back reached
        // the caller, none of the ten sent on hold.
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = caller.try_recv_from(&mut buf) {
            let got = RtpView::parse(&buf[..n]).unwrap().seq();
            assert!(
                got < hold_start,
                "the holding caller received RTP (seq {got})"
            );
        }

        // Resume: the callee's RTP reaches the caller again, and the kernel takes over.
        let before = bridge.counters(Side::B).kernel_forwarded;
        bridge.set_direction(Side::A, Direction::SendRecv);
        for _ in 0..20 {
            seq += 1;
            send(&callee, b, 0, seq, 0x2222).await;
            assert_eq!(recv(&caller).await.0, seq);
            send(&caller, a, 0, seq, 0x1111).await;
            assert_eq!(recv(&callee).await.0, seq);
        }
        counters_until(&bridge, Side::B, |c| c.kernel_forwarded > before).await;
        bridge.close().await;
    }

    #[tokio::test]
    async fn a_transcoded_call_stays_in_userspace() {
        let (caller, callee) = (sock().await, sock().await);
        let pool = pool(43_100);
        let bridge = Bridge::open(
            &pool,
            LO,
            params(addr(&caller), AudioCodec::Pcmu),
            params(addr(&callee), AudioCodec::Pcma),
            RelayConfig {
                transcode_jitter: None,
                ..RelayConfig::default()
            },
        )
        .unwrap();
        let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
        for seq in 1..=5 {
            send(&caller, a, 0, seq, 0x1111).await;
            assert_eq!(recv(&callee).await.0, seq);
            send(&callee, b, 8, seq, 0x2222).await;
            assert_eq!(recv(&caller).await.0, seq);
        }
        let [ca, cb] = bridge.close().await;
        assert_eq!((ca.kernel_forwarded, cb.kernel_forwarded), (0, 0));
        assert_eq!((ca.transcoded_packets, cb.transcoded_packets), (5, 5));
    }

    /// A pass-through call the kernel would take over stays in userspace while it is
    /// recorded: the recording sees every packet.
    #[tokio::test]
    async fn a_recorded_call_stays_in_userspace() {
        let (caller, callee) = (sock().await, sock().await);
        let pool = pool(43_200);
        let mut bridge = Bridge::open(
            &pool,
            LO,
            params(addr(&caller), AudioCodec::Pcmu),
            params(addr(&callee), AudioCodec::Pcmu),
            RelayConfig::default(),
        )
        .unwrap();
        let path =
            std::env::temp_dir().join(format!("switchyard-kernel-rec-{}.wav", std::process::id()));
        bridge.start_recording(&path).unwrap();
        let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
        for seq in 1..=10 {
            send(&caller, a, 0, seq, 0x1111).await;
            assert_eq!(recv(&callee).await.0, seq);
            send(&callee, b, 0, seq, 0x2222).await;
            assert_eq!(recv(&caller).await.0, seq);
        }
        let ([ca, cb], _, rec) = bridge.close_with_recording().await;
        assert_eq!((ca.kernel_forwarded, cb.kernel_forwarded), (0, 0));
        assert_eq!((ca.forwarded_packets, cb.forwarded_packets), (10, 10));
        let rec = rec.unwrap().unwrap();
        assert_eq!(rec.jitter.received, 10);
        assert_eq!(rec.right_jitter.unwrap().received, 10);
        std::fs::remove_file(&path).unwrap();
    }
}
