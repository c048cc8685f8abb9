//! A user agent listening on 0.0.0.0 with no public address tells each peer the local
//! address routed toward it (Via, Contact, Call-ID, OPTIONS From), as a multi-homed switch
//! must: one carrier on one interface, another on a second, loopback for neither.

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use sip::msg::{self, Method, SipMessage};
use sip::ua::{Datagram, LocalIps, Target, Transport, UaCommand, UaConfig, UaEvent, UserAgent};

#[allow(clippy::disallowed_methods)] // the virtual clock's origin; never read again
fn t0() -> Instant {
    Instant::now()
}

/// Two "interfaces": 10.1.0.1 toward 10.1/16, 192.0.2.1 toward everything else.
fn two_homed() -> UserAgent {
    let routes = LocalIps::new(|peer: IpAddr| match peer {
        IpAddr::V4(v4) if v4.octets()[..2] == [10, 1] => "10.1.0.1".parse().unwrap(),
        _ => "192.0.2.1".parse().unwrap(),
    });
    UserAgent::new(
        UaConfig {
            public_addr: "0.0.0.0:5060".parse().unwrap(),
            local_ips: Some(routes),
            ..UaConfig::default()
        },
        3,
    )
}

fn next_request(ua: &mut UserAgent) -> (SocketAddr, msg::Request) {
    let t = ua.poll_transmit().expect("a transmit");
    match msg::parse(&t.bytes).unwrap() {
        SipMessage::Request(r) => (t.dst, r),
        other => panic!("expected a request, got {other:?}"),
    }
}

fn invite(ua: &mut UserAgent, leg: u64, to: &str) {
    ua.handle_command(
        t0(),
        UaCommand::Invite {
            leg,
            target: Target {
                request_uri: format!("sip:+15550100@{to}"),
                addr: to.parse().unwrap(),
                transport: Transport::Udp,
            },
            from_uri: "sip:+15550199@switch".into(),
            from_display: None,
            to_uri: "sip:+15550100@carrier".into(),
            body: None,
            credentials: None,
            extra_headers: Vec::new(),
            call_id: None,
        },
    );
}

#[test]
fn requests_carry_the_address_routed_toward_their_peer() {
    let mut ua = two_homed();
    invite(&mut ua, 1, "10.1.7.7:5060");
    let (dst, req) = next_request(&mut ua);
    assert_eq!(dst, "10.1.7.7:5060".parse().unwrap());
    let via = req.headers.get("Via").unwrap();
    assert!(via.starts_with("SIP/2.0/UDP 10.1.0.1:5060;"), "{via}");
    let contact = req.headers.get("Contact").unwrap();
    assert!(contact.contains("@10.1.0.1:5060"), "{contact}");
    assert!(req.headers.get("Call-ID").unwrap().ends_with("@10.1.0.1"));

    invite(&mut ua, 2, "198.51.100.9:5060");
    let (_, req) = next_request(&mut ua);
    let via = req.headers.get("Via").unwrap();
    assert!(via.starts_with("SIP/2.0/UDP 192.0.2.1:5060;"), "{via}");
    assert!(
        req.headers
            .get("Contact")
            .unwrap()
            .contains("@192.0.2.1:5060")
    );
    let text = req.to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        !text.contains("0.0.0.0") && !text.contains("127.0.0.1"),
        "{text}"
    );

    ua.handle_command(
        t0(),
        UaCommand::Ping {
            probe: 9,
            target: Target {
                request_uri: "sip:10.1.9.9".into(),
                addr: "10.1.9.9:5060".parse().unwrap(),
                transport: Transport::Udp,
            },
        },
    );
    let (_, req) = next_request(&mut ua);
    assert_eq!(req.method, Method::Options);
    assert!(req.headers.get("From").unwrap().contains("@10.1.0.1:5060"));
}

#[test]
fn answers_carry_the_address_routed_toward_the_caller() {
    let mut ua = two_homed();
    let invite = "INVITE sip:+15550100@switch SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.1.3.3:5060;branch=z9hG4bK-adv-1\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:+15550199@carrier>;tag=c1\r\n\
        To: <sip:+15550100@switch>\r\n\
        Call-ID: adv-1@10.1.3.3\r\n\
        CSeq: 1 INVITE\r\n\
        Contact: <sip:carrier@10.1.3.3:5060>\r\n\
        Content-Length: 0\r\n\r\n";
    ua.handle_datagram(
        t0(),
        Datagram {
            src: "10.1.3.3:5060".parse().unwrap(),
            dst: "0.0.0.0:5060".parse().unwrap(),
            transport: Transport::Udp,
            bytes: invite.as_bytes().to_vec(),
        },
    );
    let leg = loop {
        match ua.poll_event().expect("an Incoming event") {
            UaEvent::Incoming { leg, .. } => break leg,
            _ => continue,
        }
    };
    ua.handle_command(t0(), UaCommand::Answer { leg, body: None });
    let ok = std::iter::from_fn(|| ua.poll_transmit())
        .filter_map(|t| match msg::parse(&t.bytes).ok()? {
            SipMessage::Response(r) if r.code == 200 => Some(r),
            _ => None,
        })
        .next()
        .expect("a 200");
    let contact = ok.headers.get("Contact").unwrap();
    assert!(contact.contains("@10.1.0.1:5060"), "{contact}");
}
