//! The per-source rate limit in the real driver on loopback: a flooding source
//! (127.0.0.3) gets about burst + rate × elapsed answers and the rest is dropped and
//! counted, while an exempt source (127.0.0.1) in parallel gets every answer. Waits on
//! answers and on the driver's counters; `timeout` is only a guard.

#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]
// tests may unwrap (helpers included)
// A driver test: elapsed wall time bounds what the limiter may let through.
#![allow(clippy::disallowed_methods)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sip::net::{self, BoundAddrs, NetConfig, UaHandle};
use sip::ratelimit::RateLimit;
use sip::ua::{UaConfig, UaEvent, UaStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(20);
const RATE: u32 = 20;
const BURST: u32 = 20;
const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn start() -> (UaHandle, mpsc::Receiver<UaEvent>, BoundAddrs) {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    net::spawn(NetConfig {
        udp: local,
        tcp: Some(local),
        ua: UaConfig {
            public_addr: local,
            ..UaConfig::default()
        },
        socket_buffer: 4 * 1024 * 1024,
        rate_limit: Some(RateLimit {
            per_second: RATE,
            burst: BURST,
            max_sources: 1024,
            exempt: vec!["127.0.0.1/32".parse().unwrap()],
        }),
        tcp_limits: Default::default(),
    })
    .unwrap()
}

fn options(transport: &str, me: SocketAddr, to: SocketAddr, n: u32) -> Vec<u8> {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/{transport} {me};branch=z9hG4bK{n}x{port};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:mon@{me}>;tag=f{n}\r\nTo: <sip:sw@{to}>\r\n\
         Call-ID: rl{n}-{port}@{ip}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        port = me.port(),
        ip = me.ip(),
    )
    .into_bytes()
}

/// Messages the driver has finished with, from every source: handed to the UA or dropped.
fn seen(s: &UaStats) -> u64 {
    s.messages_in + s.rate_limited
}

/// Waits (stats round trips through the driver, no sleeps) until it has seen `target`.
async fn settle(ua: &UaHandle, target: u64) -> UaStats {
    tokio::time::timeout(GUARD, async {
        loop {
            let s = ua.stats().await.unwrap();
            if seen(&s) >= target {
                return s;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("driver saw every message in time")
}

/// The exempt source: `n` OPTIONS one after the other, each must get its 200;
/// `answered` counts them as they come.
async fn exempt_client(to: SocketAddr, n: u32, answered: &AtomicU64) -> u32 {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        sock.send_to(&options("UDP", me, to, i), to).await.unwrap();
        let (len, _) = tokio::time::timeout(GUARD, sock.recv_from(&mut buf))
            .await
            .expect("exempt source answered in time")
            .unwrap();
        let resp = String::from_utf8_lossy(&buf[..len]);
        assert!(resp.starts_with("SIP/2.0 200 "), "exempt got {resp}");
        answered.fetch_add(1, Ordering::Relaxed);
    }
    n
}

#[tokio::test]
async fn udp_flood_is_limited_exempt_source_is_not() {
    let (ua, _events, addrs) = start();
    let to = addrs.udp;
    let flood = UdpSocket::bind((FLOODER, 0)).await.unwrap();
    let me = flood.local_addr().unwrap();
    const FLOOD: u32 = 500;
    const EXEMPT: u32 = 200;
    // In chunks the driver is known to have read before the next is sent, so the
    // kernel's receive buffer (often clamped well below 4 MB) never drops any.
    const CHUNK: u32 = 50;

    let exempt_answered = AtomicU64::new(0);
    let flooding = async {
        let t0 = Instant::now();
        let mut sent = 0u64;
        for chunk in 0..FLOOD / CHUNK {
            for i in 0..CHUNK {
                flood
                    .send_to(&options("UDP", me, to, chunk * CHUNK + i), to)
                    .await
                    .unwrap();
            }
            sent += u64::from(CHUNK);
            // The driver has seen each answered exempt message, and at most one more
            // of them, so this leaves at most one flood datagram unread.
            settle(&ua, sent + exempt_answered.load(Ordering::Relaxed)).await;
        }
        t0
    };
    let (t0, exempt_ok) = tokio::join!(flooding, exempt_client(to, EXEMPT, &exempt_answered));
    assert_eq!(exempt_ok, EXEMPT, "every exempt OPTIONS got its 200");

    let stats = settle(&ua, u64::from(FLOOD + EXEMPT)).await;
    let elapsed = t0.elapsed();
    assert_eq!(seen(&stats), u64::from(FLOOD + EXEMPT));
    let admitted = stats.messages_in - u64::from(EXEMPT);
    assert_eq!(stats.rate_limited, u64::from(FLOOD) - admitted);

    // The flooder gets exactly the admitted ones answered, no more.
    let mut buf = vec![0u8; 4096];
    let mut answers = 0u64;
    while answers < admitted {
        let (len, _) = tokio::time::timeout(GUARD, flood.recv_from(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(buf[..len].starts_with(b"SIP/2.0 200 "));
        answers += 1;
    }
    let bound = f64::from(BURST) + f64::from(RATE) * elapsed.as_secs_f64() + 1.0;
    println!(
        "flood: {FLOOD} sent in {elapsed:?}, {admitted} answered (bound {bound:.1}), {} dropped",
        stats.rate_limited
    );
    assert!(admitted >= u64::from(BURST), "the burst passes: {admitted}");
    assert!(
        (admitted as f64) <= bound,
        "{admitted} answered, limit allows {bound:.1}"
    );

    // Config reload lifting the limit: the flooder is answered again. Commands are
    // handled in order, so once `stats` answers the new limit is in force.
    ua.set_rate_limit(None).unwrap();
    ua.stats().await.unwrap();
    flood
        .send_to(&options("UDP", me, to, 9999), to)
        .await
        .unwrap();
    let (len, _) = tokio::time::timeout(GUARD, flood.recv_from(&mut buf))
        .await
        .expect("answer after the limit was lifted")
        .unwrap();
    assert!(buf[..len].starts_with(b"SIP/2.0 200 "));
    assert_eq!(
        ua.stats().await.unwrap().rate_limited,
        stats.rate_limited,
        "nothing more dropped"
    );
}

#[tokio::test]
async fn tcp_frames_are_limited_per_source() {
    let (ua, _events, addrs) = start();
    let to = addrs.tcp.unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((FLOODER, 0))).unwrap();
    let mut stream = sock.connect(to).await.unwrap();
    let me = stream.local_addr().unwrap();
    const FRAMES: u32 = 60;
    let mut bytes = Vec::new();
    for i in 0..FRAMES {
        bytes.extend(options("TCP", me, to, i));
    }
    let t0 = Instant::now();
    stream.write_all(&bytes).await.unwrap();

    let stats = settle(&ua, u64::from(FRAMES)).await;
    let elapsed = t0.elapsed();
    assert_eq!(stats.messages_in + stats.rate_limited, u64::from(FRAMES));
    let admitted = stats.messages_in;
    let bound = f64::from(BURST) + f64::from(RATE) * elapsed.as_secs_f64() + 1.0;
    assert!(admitted >= u64::from(BURST) && (admitted as f64) <= bound);
    assert!(stats.rate_limited > 0);

    // Exactly the admitted frames are answered on the connection.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let count = |b: &[u8]| b.windows(12).filter(|w| w == b"SIP/2.0 200 ").count() as u64;
    while count(&got) < admitted {
        let n = tokio::time::timeout(GUARD, stream.read(&mut buf))
            .await
            .expect("answers in time")
            .unwrap();
        assert!(n > 0, "connection closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(count(&got), admitted);
}
