//! UA scenarios on a virtual clock: two `UserAgent`s wired in memory
//! (`sip::testing::Pair`), or one UA facing hand-written messages (`Solo`)
//! where the far end must do something our UA never does (ring, challenge).

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip::auth::{self, Credentials, DigestChallenge, DigestResponse};
use sip::msg::{self, Method, Request, Response, SipMessage};
use sip::testing::Pair;
use sip::ua::{Body, Datagram, Target, Transport, UaCommand, UaConfig, UaEvent, UserAgent};

#[allow(clippy::disallowed_methods)] // the virtual clock's origin; never read again
fn t0() -> Instant {
    Instant::now()
}

fn sdp(s: &str) -> Option<Body> {
    Some(Body {
        content_type: "application/sdp".into(),
        bytes: Bytes::from(s.to_string()),
    })
}

fn invite_cmd(leg: u64, target: Target, credentials: Option<Credentials>) -> UaCommand {
    UaCommand::Invite {
        leg,
        target,
        from_uri: "sip:+15550001@switchyard".into(),
        from_display: Some("Alice".into()),
        to_uri: "sip:+15550002@carrier".into(),
        body: sdp("v=0 offer"),
        credentials,
        extra_headers: vec![],
        call_id: None,
    }
}

/// Runs A→B INVITE until B has the Incoming event; returns B's leg.
fn call_b(p: &mut Pair) -> u64 {
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(p.now, invite_cmd(1, target, None));
    p.drive();
    match p.b_events.last() {
        Some((_, UaEvent::Incoming { leg, body, .. })) => {
            assert_eq!(body, &sdp("v=0 offer"));
            *leg
        }
        other => panic!("expected Incoming, got {other:?}"),
    }
}

/// Events without `DialogEstablished` (which `dialog_snapshot_*` checks on its own).
fn events(v: &[(Instant, UaEvent)]) -> Vec<UaEvent> {
    v.iter()
        .map(|(_, e)| e.clone())
        .filter(|e| !matches!(e, UaEvent::DialogEstablished { .. }))
        .collect()
}

#[test]
fn dialog_snapshot_precedes_answer_and_lets_a_new_ua_send_bye() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: sdp("v=0 answer"),
        },
    );
    p.drive();
    let snapshot = match &p.a_events[..] {
        [
            (_, UaEvent::DialogEstablished { leg: 1, snapshot }),
            (_, UaEvent::Answered { leg: 1, .. }),
        ] => snapshot.clone(),
        other => panic!("expected DialogEstablished then Answered, got {other:?}"),
    };
    assert_eq!(Some(snapshot.dialog.call_id.as_str()), p.a.call_id(1));
    // A crashed UA is replaced by a fresh one that knows only the snapshot.
    let cfg = p.a.config().clone();
    p.a = UserAgent::new(cfg, 99);
    p.a_events.clear();
    p.a.handle_command(
        p.now,
        UaCommand::ByeRestored {
            leg: 7,
            snapshot: snapshot.clone(),
        },
    );
    p.drive();
    assert_eq!(
        events(&p.b_events)[1..],
        [UaEvent::Terminated {
            leg: b_leg,
            by_remote: true,
            code: None
        }],
        "the callee's dialog accepted the BYE"
    );
    assert_eq!(
        events(&p.a_events),
        [UaEvent::Terminated {
            leg: 7,
            by_remote: false,
            code: Some(200)
        }]
    );
}

/// The callee's side of the same: the dialog our 200 creates, rebuilt from what `Incoming`
/// reported, lets a fresh UA end the call at the caller.
#[test]
fn incoming_dialog_snapshot_lets_a_new_ua_bye_the_caller() {
    let mut p = Pair::new(t0());
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(p.now, invite_cmd(1, target, None));
    p.drive();
    let Some((
        _,
        UaEvent::Incoming {
            leg: b_leg,
            request,
            local_tag,
            source,
            transport,
            ..
        },
    )) = p.b_events.last().cloned()
    else {
        panic!("expected Incoming, got {:?}", p.b_events);
    };
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: sdp("v=0 answer"),
        },
    );
    p.drive();
    let snapshot = sip::ua::DialogSnapshot::incoming(&request, &local_tag, source, transport)
        .expect("a dialog");
    assert_eq!(Some(snapshot.dialog.call_id.as_str()), p.a.call_id(1));
    let cfg = p.b.config().clone();
    p.b = UserAgent::new(cfg, 98);
    p.a_events.clear();
    p.b_events.clear();
    p.b.handle_command(
        p.now,
        UaCommand::ByeRestored {
            leg: 7,
            snapshot: Box::new(snapshot),
        },
    );
    p.drive();
    assert_eq!(
        events(&p.a_events),
        [UaEvent::Terminated {
            leg: 1,
            by_remote: true,
            code: None
        }],
        "the caller's dialog accepted the BYE"
    );
    assert_eq!(
        events(&p.b_events),
        [UaEvent::Terminated {
            leg: 7,
            by_remote: false,
            code: Some(200)
        }]
    );
}

#[test]
fn answered_call_ack_then_caller_hangs_up() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    assert!(b_leg & (1 << 63) != 0);
    // §17.2.1: the TU may answer within 200 ms; only then does the 100 go out.
    assert_eq!(p.sent(false, "100").len(), 0, "no 100 before 200 ms");
    p.run_until(p.now + Duration::from_millis(200));
    assert_eq!(p.sent(false, "100").len(), 1, "100 Trying at 200 ms");
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: sdp("v=0 answer"),
        },
    );
    p.drive();
    assert_eq!(
        events(&p.a_events),
        vec![UaEvent::Answered {
            leg: 1,
            body: sdp("v=0 answer")
        }]
    );
    assert_eq!(p.sent(true, "ACK").len(), 1);
    assert!(p.a.call_id(1).is_some());
    p.a.handle_command(p.now, UaCommand::Bye { leg: 1 });
    p.drive();
    assert_eq!(
        events(&p.b_events)[1..],
        [UaEvent::Terminated {
            leg: b_leg,
            by_remote: true,
            code: None
        }]
    );
    assert_eq!(
        events(&p.a_events)[1..],
        [UaEvent::Terminated {
            leg: 1,
            by_remote: false,
            code: Some(200)
        }]
    );
    // Nothing retransmits after the ACK, and all state drains away.
    let wire_len = p.wire.len();
    p.run_until(p.now + Duration::from_secs(64));
    assert_eq!(p.wire.len(), wire_len, "{:?}", &p.wire[wire_len..]);
    assert_eq!(p.a.stats().transactions + p.b.stats().transactions, 0);
    assert_eq!(p.a.stats().legs + p.b.stats().legs, 0);
}

#[test]
fn answered_call_callee_hangs_up() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: sdp("v=0 answer"),
        },
    );
    p.drive();
    p.b.handle_command(p.now, UaCommand::Bye { leg: b_leg });
    p.drive();
    assert_eq!(
        events(&p.a_events),
        vec![
            UaEvent::Answered {
                leg: 1,
                body: sdp("v=0 answer")
            },
            UaEvent::Terminated {
                leg: 1,
                by_remote: true,
                code: None
            },
        ]
    );
    assert_eq!(
        events(&p.b_events)[1..],
        [UaEvent::Terminated {
            leg: b_leg,
            by_remote: false,
            code: Some(200)
        }]
    );
    // The BYE went to A's Contact and carried the dialog's tags.
    let bye = p.sent(false, "BYE");
    assert_eq!(bye.len(), 1);
    assert_eq!(bye[0].transmit.dst, p.a_addr);
}

#[test]
fn busy_486_fails_and_is_acked_in_the_transaction() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    p.b.handle_command(
        p.now,
        UaCommand::Reject {
            leg: b_leg,
            code: 486,
            reason: "Busy Here".into(),
            headers: vec![],
        },
    );
    p.drive();
    assert_eq!(
        events(&p.a_events),
        vec![UaEvent::Failed {
            leg: 1,
            code: 486,
            reason: "Busy Here".into(),
            warning: None
        }]
    );
    let invite = parse_req(&p.sent(true, "INVITE")[0].transmit.bytes);
    let ack = parse_req(&p.sent(true, "ACK")[0].transmit.bytes);
    assert_eq!(branch(&ack), branch(&invite));
    // B's Timer G stops at the ACK: no 486 retransmissions.
    p.run_until(p.now + Duration::from_secs(40));
    assert_eq!(p.sent(false, "486").len(), 1);
    assert_eq!(p.a.stats().transactions + p.b.stats().transactions, 0);
}

#[test]
fn lost_200_is_retransmitted_by_timer_g_until_acked() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    let mut dropped = false;
    p.drop_if(move |r| {
        if !dropped && r.is("200") {
            dropped = true;
            return true;
        }
        false
    });
    let answered_at = p.now;
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: sdp("v=0 answer"),
        },
    );
    p.drive();
    assert!(p.a_events.is_empty());
    p.run_until(answered_at + Duration::from_secs(40));
    let oks: Vec<Duration> = p
        .sent(false, "200")
        .iter()
        .map(|r| r.at - answered_at)
        .collect();
    assert_eq!(oks, vec![Duration::ZERO, Duration::from_millis(500)]);
    let answered: Vec<_> = p
        .a_events
        .iter()
        .filter(|(_, e)| matches!(e, UaEvent::Answered { .. }))
        .collect();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].0 - answered_at, Duration::from_millis(500));
    assert_eq!(p.sent(true, "ACK").len(), 1);
    // The dialog is still up (no BYE from Timer H).
    assert!(p.sent(false, "BYE").is_empty());
}

#[test]
fn retransmitted_200_is_acked_again() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    // Lose A's first ACK: B retransmits its 200, A re-ACKs from the dialog.
    let mut dropped = false;
    p.drop_if(move |r| {
        if !dropped && r.is("ACK") {
            dropped = true;
            return true;
        }
        false
    });
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: None,
        },
    );
    p.drive();
    p.run_until(p.now + Duration::from_secs(40));
    assert_eq!(p.sent(true, "ACK").len(), 2);
    assert_eq!(p.sent(false, "200").len(), 2);
    assert_eq!(events(&p.a_events).len(), 1, "one Answered only");
    assert_eq!(p.a.stats().retransmissions, 1);
}

// ---- one UA against hand-written messages ----

struct Solo {
    ua: UserAgent,
    now: Instant,
    me: SocketAddr,
    peer: SocketAddr,
}

impl Solo {
    fn new() -> Solo {
        let me: SocketAddr = "10.0.0.1:5060".parse().unwrap();
        Solo {
            ua: UserAgent::new(
                UaConfig {
                    public_addr: me,
                    ..UaConfig::default()
                },
                7,
            ),
            now: t0(),
            me,
            peer: "10.0.0.2:5070".parse().unwrap(),
        }
    }
    fn target(&self) -> Target {
        Target {
            request_uri: format!("sip:+15550002@{}", self.peer),
            addr: self.peer,
            transport: Transport::Udp,
        }
    }
    fn out(&mut self) -> Vec<SipMessage> {
        let mut v = Vec::new();
        while let Some(t) = self.ua.poll_transmit() {
            v.push(msg::parse(&t.bytes).unwrap());
        }
        v
    }
    fn out_raw(&mut self) -> Vec<sip::ua::Transmit> {
        std::iter::from_fn(|| self.ua.poll_transmit()).collect()
    }
    fn events(&mut self) -> Vec<UaEvent> {
        std::iter::from_fn(|| self.ua.poll_event())
            .filter(|e| !matches!(e, UaEvent::DialogEstablished { .. }))
            .collect()
    }
    fn feed(&mut self, bytes: Vec<u8>) {
        self.feed_from(self.peer, bytes);
    }
    fn feed_from(&mut self, src: SocketAddr, bytes: Vec<u8>) {
        self.ua.handle_datagram(
            self.now,
            Datagram {
                src,
                dst: self.me,
                transport: Transport::Udp,
                bytes,
            },
        );
    }
    /// Places an INVITE and returns it as sent.
    fn invite(&mut self, creds: Option<Credentials>) -> Request {
        let t = self.target();
        self.ua.handle_command(self.now, invite_cmd(1, t, creds));
        let mut out = self.out();
        assert_eq!(out.len(), 1);
        req(out.remove(0))
    }
}

fn req(m: SipMessage) -> Request {
    match m {
        SipMessage::Request(r) => r,
        SipMessage::Response(r) => panic!("expected a request, got {}", r.code),
    }
}

fn parse_req(b: &[u8]) -> Request {
    req(msg::parse(b).unwrap())
}

fn branch(r: &Request) -> String {
    r.headers.top_via().unwrap().branch().unwrap().to_string()
}

/// A UAS response with To tag "uas1" and a Contact.
fn reply(r: &Request, code: u16) -> Vec<u8> {
    let mut resp = Response::for_request(r, code, msg::default_reason(code));
    let to = r.headers.get("To").unwrap().to_string();
    if code > 100 && !to.contains("tag=") {
        resp.headers.set("To", format!("{to};tag=uas1"));
    }
    resp.headers.push("Contact", "<sip:uas@10.0.0.2:5070>");
    resp.to_bytes()
}

#[test]
fn ring_then_cancel_then_487_is_cancelled() {
    let mut s = Solo::new();
    let inv = s.invite(None);
    s.feed(reply(&inv, 180));
    assert!(matches!(
        &s.events()[..],
        [UaEvent::Progress {
            leg: 1,
            code: 180,
            ..
        }]
    ));
    s.ua.handle_command(s.now, UaCommand::Cancel { leg: 1 });
    let cancel = req(s.out().remove(0));
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(branch(&cancel), branch(&inv));
    assert_eq!(cancel.headers.cseq(), Some((1, Method::Cancel)));
    assert_eq!(cancel.uri, inv.uri);
    s.feed(reply(&cancel, 200));
    s.feed(reply(&inv, 487));
    let out = s.out();
    assert!(
        matches!(&out[..], [SipMessage::Request(a)] if a.method == Method::Ack && branch(a) == branch(&inv))
    );
    assert_eq!(s.events(), vec![UaEvent::Cancelled { leg: 1 }]);
}

#[test]
fn cancel_before_any_provisional_waits_for_the_180() {
    let mut s = Solo::new();
    let inv = s.invite(None);
    s.ua.handle_command(s.now, UaCommand::Cancel { leg: 1 });
    assert!(s.out().is_empty(), "§9.1: no CANCEL before a provisional");
    s.now += Duration::from_millis(200);
    s.feed(reply(&inv, 180));
    let out = s.out();
    assert!(matches!(&out[..], [SipMessage::Request(c)] if c.method == Method::Cancel));
    s.feed(reply(&inv, 487));
    assert_eq!(s.events().last(), Some(&UaEvent::Cancelled { leg: 1 }));
}

#[test]
fn cancel_then_final_first_means_nothing_to_cancel() {
    let mut s = Solo::new();
    let inv = s.invite(None);
    s.ua.handle_command(s.now, UaCommand::Cancel { leg: 1 });
    s.feed(reply(&inv, 486));
    let out = s.out();
    assert!(matches!(&out[..], [SipMessage::Request(a)] if a.method == Method::Ack));
    assert!(matches!(
        &s.events()[..],
        [UaEvent::Failed { code: 486, .. }]
    ));
}

#[test]
fn two_hundred_racing_the_cancel_is_acked_and_byed() {
    let mut s = Solo::new();
    let inv = s.invite(None);
    s.feed(reply(&inv, 183));
    s.ua.handle_command(s.now, UaCommand::Cancel { leg: 1 });
    let _cancel = s.out();
    s.feed(reply(&inv, 200));
    let out: Vec<Request> = s.out().into_iter().map(req).collect();
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].method, Method::Ack);
    assert_ne!(branch(&out[0]), branch(&inv), "2xx ACK has a new branch");
    assert_eq!(out[0].headers.cseq(), Some((1, Method::Ack)));
    assert_eq!(out[0].uri, "sip:uas@10.0.0.2:5070");
    assert_eq!(out[1].method, Method::Bye);
    assert_eq!(out[1].headers.cseq(), Some((2, Method::Bye)));
    assert_eq!(out[1].headers.to().unwrap().tag(), Some("uas1"));
    let ev = s.events();
    assert_eq!(ev[1..], [UaEvent::Cancelled { leg: 1 }]);
    // The BYE completes silently: the leg was reported once.
    s.feed(reply(&out[1], 200));
    assert!(s.events().is_empty());
    assert_eq!(s.ua.stats().legs, 0);
}

fn challenge_then_ok(code: u16, challenge_hdr: &'static str, auth_hdr: &str) {
    let mut s = Solo::new();
    let creds = Credentials {
        username: "trunk".into(),
        password: "s3cret".into(),
    };
    let inv = s.invite(Some(creds));
    let ch = DigestChallenge {
        realm: "carrier".into(),
        nonce: "abc123".into(),
        opaque: Some("xyz".into()),
        algorithm: Some("MD5".into()),
        qop: vec!["auth".into()],
        stale: false,
    };
    let mut r = msg::parse(&reply(&inv, code)).unwrap();
    let SipMessage::Response(resp) = &mut r else {
        panic!()
    };
    resp.headers.push(challenge_hdr, ch.to_header());
    s.feed(r.to_bytes());
    let out: Vec<Request> = s.out().into_iter().map(req).collect();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].method, Method::Ack);
    assert_eq!(branch(&out[0]), branch(&inv));
    let retry = &out[1];
    assert_eq!(retry.method, Method::Invite);
    assert_eq!(retry.headers.cseq(), Some((2, Method::Invite)));
    assert_eq!(retry.headers.call_id(), inv.headers.call_id());
    assert_eq!(retry.headers.from(), inv.headers.from());
    assert_ne!(branch(retry), branch(&inv));
    let dr = DigestResponse::parse(retry.headers.get(auth_hdr).unwrap()).unwrap();
    assert!(auth::verify(&dr, &Method::Invite, "s3cret"));
    assert!(s.events().is_empty(), "the challenge is not reported");
    s.feed(reply(retry, 200));
    let ack = req(s.out().remove(0));
    assert_eq!(ack.headers.cseq(), Some((2, Method::Ack)));
    assert!(matches!(
        &s.events()[..],
        [UaEvent::Answered { leg: 1, .. }]
    ));
}

#[test]
fn digest_401_is_answered_once() {
    challenge_then_ok(401, "WWW-Authenticate", "Authorization");
}

#[test]
fn digest_407_is_answered_once() {
    challenge_then_ok(407, "Proxy-Authenticate", "Proxy-Authorization");
}

#[test]
fn second_challenge_fails() {
    let mut s = Solo::new();
    let creds = Credentials {
        username: "u".into(),
        password: "p".into(),
    };
    let inv = s.invite(Some(creds));
    let with_ch = |r: &Request| {
        let mut m = msg::parse(&reply(r, 401)).unwrap();
        if let SipMessage::Response(resp) = &mut m {
            resp.headers
                .push("WWW-Authenticate", "Digest realm=\"r\", nonce=\"n\"");
        }
        m.to_bytes()
    };
    s.feed(with_ch(&inv));
    let retry = req(s.out().remove(1));
    s.feed(with_ch(&retry));
    assert!(matches!(
        &s.events()[..],
        [UaEvent::Failed { code: 401, .. }]
    ));
}

#[test]
fn no_answer_times_out_with_408_at_exactly_32s() {
    let mut s = Solo::new();
    let start = s.now;
    s.invite(None);
    let mut retransmits = Vec::new();
    let mut failed_at = None;
    while let Some(at) = s.ua.poll_timeout() {
        s.now = at;
        s.ua.handle_timeout(at);
        for _ in s.out() {
            retransmits.push((at - start).as_millis());
        }
        for e in s.events() {
            assert_eq!(
                e,
                UaEvent::Failed {
                    leg: 1,
                    code: 408,
                    reason: "Request Timeout".into(),
                    warning: None
                }
            );
            failed_at = Some(at - start);
        }
        assert!(at - start <= Duration::from_secs(40));
    }
    assert_eq!(retransmits, vec![500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(failed_at, Some(Duration::from_secs(32)));
    assert_eq!(s.ua.stats().retransmissions, 6);
    assert_eq!(s.ua.stats().legs, 0);
}

fn options(via: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:switchyard@10.0.0.1 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
         From: <sip:mon@10.0.0.9>;tag=m1\r\nTo: <sip:switchyard@10.0.0.1>\r\n\
         Call-ID: opt1@10.0.0.9\r\nCSeq: 5 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn options_gets_200_with_allow() {
    let mut s = Solo::new();
    s.feed(options("SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKo1"));
    let out = s.out_raw();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, s.peer);
    let SipMessage::Response(r) = msg::parse(&out[0].bytes).unwrap() else {
        panic!()
    };
    assert_eq!(r.code, 200);
    assert!(r.headers.get("Allow").unwrap().contains("INVITE"));
    assert_eq!(r.headers.get("Accept"), Some("application/sdp"));
    assert!(r.headers.to().unwrap().tag().is_some());
    // A retransmission gets the same response from the transaction.
    s.feed(options("SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKo1"));
    assert_eq!(s.out_raw()[0].bytes, out[0].bytes);
}

#[test]
fn responses_honour_received_and_rport() {
    let mut s = Solo::new();
    let nat: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    s.feed_from(
        nat,
        options("SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKo2;rport"),
    );
    let out = s.out_raw();
    assert_eq!(out[0].dst, nat, "rport: back to the source port");
    let SipMessage::Response(r) = msg::parse(&out[0].bytes).unwrap() else {
        panic!()
    };
    let via = r.headers.top_via().unwrap();
    assert_eq!(via.param("received"), Some(Some("192.0.2.7")));
    assert_eq!(via.param("rport"), Some(Some("40000")));
    // Without rport: the source IP, the sent-by port.
    s.feed_from(nat, options("SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKo3"));
    assert_eq!(s.out_raw()[0].dst, "192.0.2.7:5070".parse().unwrap());
}

#[test]
fn bye_for_unknown_dialog_gets_481_and_unknown_method_405() {
    let mut s = Solo::new();
    let bye = "BYE sip:switchyard@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKb1\r\n\
               Max-Forwards: 70\r\nFrom: <sip:x@10.0.0.2>;tag=x1\r\nTo: <sip:switchyard@10.0.0.1>;tag=nope\r\n\
               Call-ID: gone@10.0.0.2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    s.feed(bye.as_bytes().to_vec());
    let SipMessage::Response(r) = s.out().remove(0) else {
        panic!()
    };
    assert_eq!(r.code, 481);
    let sub = bye
        .replace("BYE", "SUBSCRIBE")
        .replace("z9hG4bKb1", "z9hG4bKs1");
    s.feed(sub.into_bytes());
    let SipMessage::Response(r) = s.out().remove(0) else {
        panic!()
    };
    assert_eq!(r.code, 405);
    assert!(r.headers.get("Allow").is_some());
}

#[test]
fn garbage_gets_400_and_strays_are_counted_never_panicking() {
    let mut s = Solo::new();
    // RFC 4475 §3.1.2.4-style: a request with a negative Content-Length.
    let bad = "INVITE sip:x@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKg\r\n\
               Max-Forwards: 70\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@10.0.0.1>\r\nCall-ID: g@b\r\n\
               CSeq: 1 INVITE\r\nContent-Length: -5\r\n\r\n";
    s.feed(bad.as_bytes().to_vec());
    let SipMessage::Response(r) = s.out().remove(0) else {
        panic!()
    };
    assert_eq!(r.code, 400);
    // A response for nobody.
    s.feed(
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKzz\r\nFrom: <sip:a@b>;tag=1\r\n\
          To: <sip:c@d>;tag=2\r\nCall-ID: zz\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
            .to_vec(),
    );
    for junk in [&b""[..], b"\0\0\0", b"SIP/2.0", b"INVITE", &[0xff; 300]] {
        s.feed(junk.to_vec());
    }
    assert!(s.out().is_empty());
    let st = s.ua.stats();
    assert_eq!(st.strays_dropped, 1);
    assert_eq!(st.parse_errors, 6);
    assert_eq!(st.messages_in, 7);
}

#[test]
fn remote_cancel_of_incoming_call_gets_487() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    p.a.handle_command(p.now, UaCommand::Cancel { leg: 1 });
    // §9.1: A's CANCEL waits for a provisional; B's 100 comes at 200 ms.
    p.run_until(p.now + Duration::from_millis(250));
    assert_eq!(
        events(&p.b_events)[1..],
        [UaEvent::Terminated {
            leg: b_leg,
            by_remote: true,
            code: Some(487)
        }]
    );
    assert_eq!(events(&p.a_events), vec![UaEvent::Cancelled { leg: 1 }]);
    assert_eq!(p.sent(false, "487").len(), 1);
}

#[test]
fn many_calls_do_not_leak_state() {
    let mut p = Pair::new(t0());
    for leg in 0..200u64 {
        let target = p.target_b("x", Transport::Udp);
        p.a.handle_command(p.now, invite_cmd(leg, target, None));
        p.drive();
        let Some((_, UaEvent::Incoming { leg: bl, .. })) = p.b_events.last().cloned() else {
            panic!()
        };
        p.b.handle_command(
            p.now,
            UaCommand::Answer {
                leg: bl,
                body: None,
            },
        );
        p.drive();
        p.a.handle_command(p.now, UaCommand::Bye { leg });
        p.drive();
        p.now += Duration::from_millis(5);
    }
    p.run_until(p.now + Duration::from_secs(64));
    assert_eq!(p.a.stats().transactions + p.b.stats().transactions, 0);
    assert_eq!(p.a.stats().legs + p.b.stats().legs, 0);
    let answered = p
        .a_events
        .iter()
        .filter(|(_, e)| matches!(e, UaEvent::Answered { .. }))
        .count();
    assert_eq!(answered, 200);
}

fn incoming(method: &str, cseq: u32, branch: &str, to_tag: Option<&str>) -> Vec<u8> {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "{method} sip:switchyard@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch={branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:carrier@10.0.0.2>;tag=c1\r\nTo: <sip:switchyard@10.0.0.1>{to_tag}\r\n\
         Call-ID: in1@10.0.0.2\r\nCSeq: {cseq} {method}\r\nContact: <sip:carrier@10.0.0.2:5070>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn incoming_call_answer_and_session_refresh_reinvite() {
    let mut s = Solo::new();
    s.feed(incoming("INVITE", 1, "z9hG4bKi1", None));
    // No 100 at once (§17.2.1: the TU has 200 ms); it follows if the TU takes longer.
    assert!(s.out().is_empty());
    s.now += Duration::from_millis(200);
    s.ua.handle_timeout(s.now);
    let out = s.out();
    assert!(matches!(&out[..], [SipMessage::Response(r)] if r.code == 100));
    let [UaEvent::Incoming { leg, source, .. }] = &s.events()[..] else {
        panic!()
    };
    assert_eq!(*source, s.peer);
    let leg = *leg;
    s.ua.handle_command(
        s.now,
        UaCommand::Answer {
            leg,
            body: sdp("v=0 answer"),
        },
    );
    let SipMessage::Response(ok) = s.out().remove(0) else {
        panic!()
    };
    assert_eq!(ok.code, 200);
    let tag = ok.headers.to().unwrap().tag().unwrap().to_string();
    assert!(ok.headers.get("Contact").unwrap().contains("10.0.0.1:5060"));
    s.feed(incoming("ACK", 1, "z9hG4bKa1", Some(&tag)));
    // No more 200 retransmissions once ACKed.
    s.now += Duration::from_secs(1);
    s.ua.handle_timeout(s.now);
    assert!(s.out().is_empty());
    // A session-refresh re-INVITE gets 100 + 200 with our answer unchanged.
    s.feed(incoming("INVITE", 2, "z9hG4bKi2", Some(&tag)));
    let out = s.out();
    assert_eq!(out.len(), 2);
    let SipMessage::Response(r) = &out[1] else {
        panic!()
    };
    assert_eq!(r.code, 200);
    assert_eq!(&r.body[..], b"v=0 answer");
    s.feed(incoming("ACK", 2, "z9hG4bKa2", Some(&tag)));
    // An out-of-order CSeq gets 500; then the carrier hangs up.
    s.feed(incoming("BYE", 1, "z9hG4bKb0", Some(&tag)));
    let SipMessage::Response(r) = s.out().remove(0) else {
        panic!()
    };
    assert_eq!(r.code, 500);
    s.feed(incoming("BYE", 3, "z9hG4bKb1", Some(&tag)));
    let SipMessage::Response(r) = s.out().remove(0) else {
        panic!()
    };
    assert_eq!(r.code, 200);
    assert_eq!(
        s.events(),
        vec![UaEvent::Terminated {
            leg,
            by_remote: true,
            code: None
        }]
    );
}

#[test]
fn unacked_200_ends_at_timer_h_with_a_bye() {
    let mut s = Solo::new();
    s.feed(incoming("INVITE", 1, "z9hG4bKi1", None));
    let [UaEvent::Incoming { leg, .. }] = &s.events()[..] else {
        panic!()
    };
    let leg = *leg;
    s.ua.handle_command(s.now, UaCommand::Answer { leg, body: None });
    let start = s.now;
    assert_eq!(s.out().len(), 1, "the 200 (answered at once: no 100)");
    let mut oks = 0;
    let mut end = None;
    while let Some(at) = s.ua.poll_timeout() {
        if at - start > Duration::from_secs(40) {
            break;
        }
        s.now = at;
        s.ua.handle_timeout(at);
        for m in s.out() {
            match m {
                SipMessage::Response(r) if r.code == 200 => oks += 1,
                SipMessage::Request(r) if r.method == Method::Bye => {
                    end.get_or_insert(at - start);
                }
                _ => {}
            }
        }
    }
    // Timer G: 0.5, 1.5, 3.5, 7.5, then every T2 up to 31.5 s; H at 32 s.
    assert_eq!(oks, 10);
    assert_eq!(end, Some(Duration::from_secs(32)));
    assert!(s.events().contains(&UaEvent::Terminated {
        leg,
        by_remote: false,
        code: Some(408)
    }));
}

#[test]
fn second_forked_200_is_acked_and_hung_up() {
    let mut s = Solo::new();
    let inv = s.invite(None);
    s.feed(reply(&inv, 200));
    let _ack = s.out();
    let mut m = msg::parse(&reply(&inv, 200)).unwrap();
    if let SipMessage::Response(r) = &mut m {
        r.headers.set("To", "<sip:+15550002@carrier>;tag=fork2");
    }
    s.feed(m.to_bytes());
    let out: Vec<Request> = s.out().into_iter().map(req).collect();
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].method, Method::Ack);
    assert_eq!(out[1].method, Method::Bye);
    assert_eq!(out[1].headers.to().unwrap().tag(), Some("fork2"));
    // The first dialog is untouched: one Answered, no Terminated.
    assert!(matches!(
        &s.events()[..],
        [UaEvent::Answered { leg: 1, .. }]
    ));
    // A plain retransmission of the first 200 is just re-ACKed.
    s.feed(reply(&inv, 200));
    let out: Vec<Request> = s.out().into_iter().map(req).collect();
    assert!(matches!(&out[..], [a] if a.method == Method::Ack));
}

#[test]
fn over_tcp_nothing_is_retransmitted_and_timer_b_still_fires() {
    let mut s = Solo::new();
    let mut t = s.target();
    t.transport = Transport::Tcp;
    s.ua.handle_command(s.now, invite_cmd(1, t, None));
    let first = s.out_raw();
    assert_eq!(first[0].transport, Transport::Tcp);
    assert!(String::from_utf8_lossy(&first[0].bytes).contains("SIP/2.0/TCP 10.0.0.1:5060"));
    let start = s.now;
    while let Some(at) = s.ua.poll_timeout() {
        s.now = at;
        s.ua.handle_timeout(at);
        assert!(s.out().is_empty(), "no retransmission over TCP");
    }
    assert_eq!(s.now - start, Duration::from_secs(32));
    assert!(matches!(
        &s.events()[..],
        [UaEvent::Failed { code: 408, .. }]
    ));
}

/// Amplification: a new INVITE refused statelessly gets exactly one answer, with no 100
/// before it and no retransmission after it (a spoofed source draws one datagram).
#[test]
fn a_stateless_refusal_is_one_datagram() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    p.b.handle_command(
        p.now,
        UaCommand::RejectStateless {
            leg: b_leg,
            code: 401,
            reason: "Unauthorized".into(),
            headers: Vec::new(),
        },
    );
    p.drive();
    // Well past Timer G's retransmissions and Timer H.
    p.run_until(p.now + Duration::from_secs(40));
    let from_b: Vec<&str> = p
        .wire
        .iter()
        .filter(|r| !r.from_a)
        .map(|r| r.first_line.as_str())
        .collect();
    assert_eq!(from_b, ["SIP/2.0 401 Unauthorized"], "{from_b:?}");
}
