//! SIP over TCP under connection abuse, against the real driver on loopback: caps in
//! total and per source, connections that never send a whole message (idle, slowloris)
//! closed, and answered connections left alone.

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use std::net::SocketAddr;
use std::time::Duration;

use sip::net::{self, NetConfig, TcpLimits, UaHandle};
use sip::ua::{UaConfig, UaEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const MESSAGE_TIMEOUT: Duration = Duration::from_millis(400);

fn start() -> (UaHandle, mpsc::Receiver<UaEvent>, SocketAddr) {
    let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (h, ev, addrs) = net::spawn(NetConfig {
        udp: local,
        tcp: Some(local),
        ua: UaConfig {
            public_addr: local,
            ..UaConfig::default()
        },
        socket_buffer: 1 << 20,
        rate_limit: None,
        tcp_limits: TcpLimits {
            max_connections: 12,
            max_per_source: 4,
            message_timeout: MESSAGE_TIMEOUT,
            idle_timeout: Duration::from_secs(2),
        },
    })
    .unwrap();
    (h, ev, addrs.tcp.unwrap())
}

async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// How long until the server closes `s` (reads return 0 or fail), bounded by `guard`.
async fn closed_within(s: &mut TcpStream, guard: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(guard.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
        }
    }
}

fn options(me: SocketAddr, to: SocketAddr) -> String {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bK-tcp-{port}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=1\r\nTo: <sip:{to}>\r\n\
         Call-ID: tcp-{port}@{ip}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        port = me.port(),
        ip = me.ip()
    )
}

#[tokio::test]
async fn connections_past_the_per_source_cap_are_closed_at_once() {
    let (h, _ev, addr) = start();
    let mut kept = Vec::new();
    for _ in 0..4 {
        kept.push(connect_from("127.0.0.1", addr).await);
    }
    // The fifth from the same source is closed as soon as it is accepted.
    let mut fifth = connect_from("127.0.0.1", addr).await;
    let closed = closed_within(&mut fifth, Duration::from_millis(300)).await;
    assert!(
        closed.is_some(),
        "the fifth connection from one source stayed open"
    );
    // Another source still gets in.
    let mut other = connect_from("127.0.0.2", addr).await;
    let me = other.local_addr().unwrap();
    other.write_all(options(me, addr).as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = timeout(Duration::from_secs(2), other.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let st = h.stats().await.unwrap();
    assert_eq!(st.tcp_refused, 1, "{st:?}");
    assert_eq!(st.tcp_connections, 5, "{st:?}");
    drop(kept);
}

#[tokio::test]
async fn the_total_cap_holds_across_sources() {
    let (h, _ev, addr) = start();
    let mut kept = Vec::new();
    for i in 0..12 {
        kept.push(connect_from(&format!("127.0.1.{}", i + 1), addr).await);
    }
    let mut over = connect_from("127.0.2.1", addr).await;
    assert!(
        closed_within(&mut over, Duration::from_millis(300))
            .await
            .is_some()
    );
    let st = h.stats().await.unwrap();
    assert_eq!((st.tcp_refused, st.tcp_connections), (1, 12), "{st:?}");
}

#[tokio::test]
async fn silent_and_slowloris_connections_are_closed_but_talkers_stay() {
    let (h, _ev, addr) = start();
    // Never says anything.
    let mut silent = connect_from("127.0.3.1", addr).await;
    // Sends a message one byte at a time, too slowly to ever finish it in time.
    let mut slow = connect_from("127.0.3.2", addr).await;
    let slow_msg = options(slow.local_addr().unwrap(), addr).into_bytes();
    // Sends a whole message, gets its answer, then stays quiet (under the idle timeout).
    let mut talker = connect_from("127.0.3.3", addr).await;
    let me = talker.local_addr().unwrap();
    talker
        .write_all(options(me, addr).as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = timeout(Duration::from_secs(2), talker.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"SIP/2.0 200"));

    let dripping = tokio::spawn(async move {
        let mut closed_after = None;
        for (i, b) in slow_msg.iter().enumerate() {
            if slow.write_all(&[*b]).await.is_err() {
                closed_after = Some(i);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (closed_after, slow_msg.len())
    });
    let silent_closed = closed_within(&mut silent, Duration::from_secs(3)).await;
    assert!(
        silent_closed.is_some_and(|d| d >= MESSAGE_TIMEOUT / 2),
        "{silent_closed:?}"
    );
    let (closed_after, total) = dripping.await.unwrap();
    assert!(
        closed_after.is_some_and(|i| i < total),
        "the slow sender finished its message: {closed_after:?} of {total}"
    );
    // The talker is still connected well past the message timeout.
    tokio::time::sleep(MESSAGE_TIMEOUT * 2).await;
    talker
        .write_all(options(me, addr).replace("CSeq: 1", "CSeq: 2").as_bytes())
        .await
        .unwrap();
    let n = timeout(Duration::from_secs(2), talker.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(n > 0 && buf[..n].starts_with(b"SIP/2.0 200"));
    let st = h.stats().await.unwrap();
    assert!(st.tcp_timed_out >= 2, "{st:?}");
}
