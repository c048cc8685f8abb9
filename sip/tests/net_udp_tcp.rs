//! The tokio driver on real loopback sockets: calls over UDP and TCP between two
//! drivers, and a garbage datagram answered with 400 while the driver keeps working.
//! Waits on events; `timeout` is only a guard.

#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use std::net::SocketAddr;
use std::time::Duration;

use sip::msg::{self, SipMessage};
use sip::net::{self, BoundAddrs, NetConfig, UaHandle};
use sip::ua::{Target, Transport, UaCommand, UaConfig, UaEvent};
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(10);

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
        rate_limit: None,
        tcp_limits: Default::default(),
    })
    .unwrap()
}

/// The next event, skipping `DialogEstablished` (checked where it matters).
async fn next(rx: &mut mpsc::Receiver<UaEvent>) -> UaEvent {
    loop {
        let ev = tokio::time::timeout(GUARD, rx.recv())
            .await
            .expect("event in time")
            .expect("driver alive");
        if !matches!(ev, UaEvent::DialogEstablished { .. }) {
            return ev;
        }
    }
}

async fn call(transport: Transport) {
    let (a, mut a_ev, _a_addrs) = start();
    let (b, mut b_ev, b_addrs) = start();
    let addr = match transport {
        Transport::Udp => b_addrs.udp,
        Transport::Tcp => b_addrs.tcp.unwrap(),
    };
    a.send(UaCommand::Invite {
        leg: 42,
        target: Target {
            request_uri: format!("sip:bob@{addr}"),
            addr,
            transport,
        },
        from_uri: "sip:alice@127.0.0.1".into(),
        from_display: None,
        to_uri: format!("sip:bob@{addr}"),
        body: None,
        credentials: None,
        extra_headers: vec![],
        call_id: None,
    })
    .unwrap();
    let UaEvent::Incoming {
        leg: b_leg,
        request_uri,
        ..
    } = next(&mut b_ev).await
    else {
        panic!("expected Incoming")
    };
    assert_eq!(request_uri, format!("sip:bob@{addr}"));
    b.send(UaCommand::Answer {
        leg: b_leg,
        body: None,
    })
    .unwrap();
    assert_eq!(
        next(&mut a_ev).await,
        UaEvent::Answered {
            leg: 42,
            body: None
        }
    );
    a.send(UaCommand::Bye { leg: 42 }).unwrap();
    assert_eq!(
        next(&mut b_ev).await,
        UaEvent::Terminated {
            leg: b_leg,
            by_remote: true,
            code: None
        }
    );
    assert_eq!(
        next(&mut a_ev).await,
        UaEvent::Terminated {
            leg: 42,
            by_remote: false,
            code: Some(200)
        }
    );
    let st = a.stats().await.unwrap();
    // In: 200 to the INVITE and to the BYE (B answered within 200 ms: no 100 Trying).
    assert!(st.messages_out >= 3 && st.messages_in >= 2, "{st:?}");
}

#[tokio::test]
async fn call_over_udp() {
    call(Transport::Udp).await;
}

#[tokio::test]
async fn call_over_tcp() {
    call(Transport::Tcp).await;
}

#[tokio::test]
async fn garbage_datagram_gets_400_and_the_driver_keeps_working() {
    let (b, _b_ev, b_addrs) = start();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    // RFC 4475 §3.1.2.4 (ncl): negative Content-Length.
    let bad = format!(
        "INVITE sip:user@example.com SIP/2.0\r\nMax-Forwards: 254\r\nTo: sip:j.user@example.com\r\n\
         From: sip:caller@example.net;tag=32394234\r\nCall-ID: ncl.0ha0isndaksdj2193423r542w35\r\n\
         CSeq: 0 INVITE\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKkdjuw\r\nContact: <sip:caller@{me}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: -999\r\n\r\nv=0\r\n"
    );
    sock.send_to(bad.as_bytes(), b_addrs.udp).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(GUARD, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let SipMessage::Response(r) = msg::parse(&buf[..n]).unwrap() else {
        panic!()
    };
    assert_eq!(r.code, 400);
    // Still alive: an OPTIONS gets its 200.
    let opt = format!(
        "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKopt1;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:mon@{me}>;tag=1\r\nTo: <sip:sw@{}>\r\nCall-ID: o1\r\nCSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        b_addrs.udp, b_addrs.udp
    );
    sock.send_to(opt.as_bytes(), b_addrs.udp).await.unwrap();
    let (n, _) = tokio::time::timeout(GUARD, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let SipMessage::Response(r) = msg::parse(&buf[..n]).unwrap() else {
        panic!()
    };
    assert_eq!(r.code, 200);
    let st = b.stats().await.unwrap();
    assert_eq!(st.parse_errors, 1);
}

#[tokio::test]
async fn tcp_framing_error_closes_only_that_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (b, _b_ev, b_addrs) = start();
    let mut s = tokio::net::TcpStream::connect(b_addrs.tcp.unwrap())
        .await
        .unwrap();
    s.write_all(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(GUARD, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "connection closed");
    assert!(b.stats().await.is_ok(), "driver still running");
}

#[tokio::test]
async fn tcp_connect_failure_fails_the_call_with_503() {
    let (a, mut a_ev, _) = start();
    // A port nobody listens on: bind, note it, close.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    a.send(UaCommand::Invite {
        leg: 7,
        target: Target {
            request_uri: format!("sip:x@{addr}"),
            addr,
            transport: Transport::Tcp,
        },
        from_uri: "sip:a@127.0.0.1".into(),
        from_display: None,
        to_uri: format!("sip:x@{addr}"),
        body: None,
        credentials: None,
        extra_headers: vec![],
        call_id: None,
    })
    .unwrap();
    assert!(matches!(
        next(&mut a_ev).await,
        UaEvent::Failed {
            leg: 7,
            code: 503,
            ..
        }
    ));
}

#[tokio::test]
async fn tcp_listens_on_the_udp_port_that_contact_names() {
    // Port 0 for both: every driver's TCP port is its UDP port (Contact and Via name one).
    let drivers: Vec<_> = (0..20).map(|_| start()).collect();
    for (_, _, addrs) in &drivers {
        assert_eq!(addrs.tcp.map(|a| a.port()), Some(addrs.udp.port()));
    }
    // A fixed UDP port whose TCP twin is taken: TCP goes elsewhere rather than failing.
    let (_held, port) = (0..10)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .map(|l| {
            let port = l.local_addr().unwrap().port();
            (l, port)
        })
        .find(|(_, port)| std::net::UdpSocket::bind(("127.0.0.1", *port)).is_ok())
        .expect("a TCP port whose UDP twin is free");
    let (_h, _ev, addrs) = net::spawn(NetConfig {
        udp: SocketAddr::from(([127, 0, 0, 1], port)),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        ua: UaConfig::default(),
        socket_buffer: 1 << 20,
        rate_limit: None,
        tcp_limits: Default::default(),
    })
    .unwrap();
    assert_eq!(addrs.udp.port(), port);
    assert_ne!(addrs.tcp.map(|a| a.port()), Some(port));
}
