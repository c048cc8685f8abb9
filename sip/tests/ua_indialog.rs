//! Carrier features on a virtual clock (`sip::testing::Pair`): reliable provisional
//! responses (RFC 3262), Max-Forwards, challenge headers on a reject, in-dialog
//! offers (re-INVITE/UPDATE), session timers (RFC 4028) and REFER (RFC 3515).

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use std::time::{Duration, Instant};

use bytes::Bytes;
use sip::auth::Credentials;
use sip::msg::{self, Header, Method, Request, SipMessage};
use sip::testing::Pair;
use sip::ua::{Body, Target, Transport, UaCommand, UaEvent};

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

fn invite_cmd(leg: u64, target: Target, extra_headers: Vec<Header>) -> UaCommand {
    UaCommand::Invite {
        leg,
        target,
        from_uri: "sip:+15550001@switchyard".into(),
        from_display: None,
        to_uri: "sip:+15550002@carrier".into(),
        body: sdp("v=0 offer"),
        credentials: Some(Credentials {
            username: "trunk".into(),
            password: "pw".into(),
        }),
        extra_headers,
        call_id: None,
    }
}

/// A→B INVITE (leg 1) until B has the Incoming event; returns B's leg.
fn call_b(p: &mut Pair) -> u64 {
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(p.now, invite_cmd(1, target, vec![]));
    p.drive();
    match p.b_events.last() {
        Some((_, UaEvent::Incoming { leg, .. })) => *leg,
        other => panic!("expected Incoming, got {other:?}"),
    }
}

/// A call from A (leg 1) answered by B; returns B's leg.
fn answered_call(p: &mut Pair) -> u64 {
    let b_leg = call_b(p);
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: sdp("v=0 answer"),
        },
    );
    p.drive();
    assert!(
        p.a_events
            .iter()
            .any(|(_, e)| matches!(e, UaEvent::Answered { leg: 1, .. }))
    );
    b_leg
}

fn events(v: &[(Instant, UaEvent)]) -> Vec<UaEvent> {
    v.iter()
        .map(|(_, e)| e.clone())
        .filter(|e| !matches!(e, UaEvent::DialogEstablished { .. }))
        .collect()
}

fn progress(leg: u64, code: u16, body: Option<Body>) -> UaCommand {
    UaCommand::Progress {
        leg,
        code,
        reason: msg::default_reason(code).into(),
        body,
    }
}

fn parse_req(b: &[u8]) -> Request {
    match msg::parse(b).unwrap() {
        SipMessage::Request(r) => r,
        SipMessage::Response(r) => panic!("expected a request, got {}", r.code),
    }
}

fn parse_resp(b: &[u8]) -> sip::msg::Response {
    match msg::parse(b).unwrap() {
        SipMessage::Response(r) => r,
        SipMessage::Request(r) => panic!("expected a response, got {}", r.method),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- milestone 1 ----

#[test]
fn incoming_carries_request_and_transport_and_reject_carries_challenge() {
    let mut p = Pair::new(t0());
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(
        p.now,
        invite_cmd(1, target, vec![Header::new("Max-Forwards", "69")]),
    );
    p.drive();
    let inv = parse_req(&p.sent(true, "INVITE")[0].transmit.bytes);
    assert_eq!(
        inv.headers.get_all("Max-Forwards").collect::<Vec<_>>(),
        ["69"]
    );
    assert_eq!(inv.headers.get("Supported"), Some("100rel, timer"));
    let Some((
        _,
        UaEvent::Incoming {
            leg,
            transport,
            request,
            ..
        },
    )) = p.b_events.last().cloned()
    else {
        panic!()
    };
    assert_eq!(transport, Transport::Udp);
    assert_eq!(request.headers.max_forwards(), Some(69));
    assert!(request.headers.get("Authorization").is_none());
    let via = request.headers.top_via().unwrap();
    assert_eq!(via.param("rport"), Some(Some("5060")), "Via stamped");
    p.b.handle_command(
        p.now,
        UaCommand::Reject {
            leg,
            code: 401,
            reason: "Unauthorized".into(),
            headers: vec![Header::new(
                "WWW-Authenticate",
                "Digest realm=\"sw\", nonce=\"n1\", qop=\"auth\"",
            )],
        },
    );
    p.drive();
    // A answered the challenge: B sees a second INVITE, now with credentials.
    let Some((_, UaEvent::Incoming { request, .. })) = p.b_events.last().cloned() else {
        panic!()
    };
    let auth = request.headers.get("Authorization").unwrap();
    assert!(auth.contains("nonce=\"n1\""), "{auth}");
    assert_eq!(p.sent(true, "INVITE").len(), 2);
}

#[test]
fn max_forwards_zero_gets_483_but_options_is_answered() {
    let mut p = Pair::new(t0());
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(
        p.now,
        invite_cmd(1, target, vec![Header::new("Max-Forwards", "0")]),
    );
    p.drive();
    assert!(p.b_events.is_empty());
    assert!(matches!(
        &events(&p.a_events)[..],
        [UaEvent::Failed { code: 483, .. }]
    ));
    assert_eq!(p.b.stats().rejected, 1);
    let options = "OPTIONS sip:sw@127.0.0.1:5070 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKopt\r\nMax-Forwards: 0\r\n\
        From: <sip:mon@127.0.0.1>;tag=m\r\nTo: <sip:sw@127.0.0.1>\r\nCall-ID: o@x\r\n\
        CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    p.b.handle_datagram(
        p.now,
        sip::ua::Datagram {
            src: p.a_addr,
            dst: p.b_addr,
            transport: Transport::Udp,
            bytes: options.as_bytes().to_vec(),
        },
    );
    let resp = parse_resp(&p.b.poll_transmit().unwrap().bytes);
    assert_eq!(resp.code, 200);
    let allow = resp.headers.get("Allow").unwrap();
    for m in ["UPDATE", "PRACK", "REFER", "NOTIFY", "INFO"] {
        assert!(allow.contains(m), "{allow}");
    }
    assert_eq!(resp.headers.get("Supported"), Some("100rel, timer"));
}

#[test]
fn reliable_183_is_pracked_once_and_retransmissions_stop() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    // Lose A's first PRACK: B retransmits the 183, A's PRACK transaction resends.
    let mut dropped = false;
    p.drop_if(move |r| {
        if !dropped && r.is("PRACK") {
            dropped = true;
            return true;
        }
        false
    });
    let start = p.now;
    p.b.handle_command(p.now, progress(b_leg, 183, sdp("v=0 early")));
    p.drive();
    let first = parse_resp(&p.sent(false, "183")[0].transmit.bytes);
    assert_eq!(first.headers.get("Require"), Some("100rel"));
    let rseq: u32 = first.headers.get("RSeq").unwrap().parse().unwrap();
    let prack = parse_req(&p.sent(true, "PRACK")[0].transmit.bytes);
    let cseq = prack.headers.cseq().unwrap().0;
    assert_eq!(
        prack.headers.get("RAck").unwrap(),
        format!("{rseq} 1 INVITE")
    );
    assert_eq!(
        prack.headers.to().unwrap().tag(),
        first.headers.to().unwrap().tag()
    );
    p.run_until(start + Duration::from_secs(10));
    let times: Vec<_> = p.sent(false, "183").iter().map(|r| r.at - start).collect();
    assert_eq!(times, vec![ms(0), ms(500)], "stops once the PRACK arrives");
    assert_eq!(p.sent(false, "200").len(), 1, "PRACK answered");
    let progress: Vec<_> = events(&p.a_events)
        .into_iter()
        .filter(|e| matches!(e, UaEvent::Progress { .. }))
        .collect();
    assert_eq!(
        progress,
        vec![UaEvent::Progress {
            leg: 1,
            code: 183,
            reason: "Session Progress".into(),
            body: sdp("v=0 early")
        }]
    );
    // The answer then confirms the early dialog; the BYE continues its CSeq.
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: sdp("v=0 answer"),
        },
    );
    p.drive();
    p.a.handle_command(p.now, UaCommand::Bye { leg: 1 });
    p.drive();
    let bye = parse_req(&p.sent(true, "BYE")[0].transmit.bytes);
    assert_eq!(bye.headers.cseq().unwrap().0, cseq + 1);
    assert!(events(&p.b_events).contains(&UaEvent::Terminated {
        leg: b_leg,
        by_remote: true,
        code: None
    }));
}

#[test]
fn ringing_without_body_is_unreliable_when_only_supported() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    p.b.handle_command(p.now, progress(b_leg, 180, None));
    p.drive();
    let ringing = parse_resp(&p.sent(false, "180")[0].transmit.bytes);
    assert!(ringing.headers.get("RSeq").is_none());
    assert!(ringing.headers.to().unwrap().tag().is_some());
    assert!(p.sent(true, "PRACK").is_empty());
    p.run_until(p.now + Duration::from_secs(5));
    assert_eq!(p.sent(false, "180").len(), 1);
}

#[test]
fn no_prack_means_504_after_64_t1() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    p.drop_if(|r| r.is("PRACK"));
    let start = p.now;
    p.b.handle_command(p.now, progress(b_leg, 183, sdp("v=0 early")));
    p.drive();
    p.run_until(start + Duration::from_secs(40));
    let times: Vec<_> = p
        .sent(false, "183")
        .iter()
        .map(|r| (r.at - start).as_millis())
        .collect();
    assert_eq!(times, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
    let fail = p.sent(false, "504");
    assert_eq!(fail[0].at - start, Duration::from_secs(32));
    assert!(events(&p.b_events).contains(&UaEvent::Terminated {
        leg: b_leg,
        by_remote: false,
        code: Some(504)
    }));
    assert!(
        events(&p.a_events)
            .iter()
            .any(|e| matches!(e, UaEvent::Failed { code: 504, .. }))
    );
    assert_eq!(p.b.stats().legs, 0);
}

#[test]
fn second_reliable_18x_and_the_answer_wait_for_the_prack() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    // The first PRACK is lost; its retransmission gets through at 500 ms.
    let mut n = 0;
    p.drop_if(move |r| {
        if r.is("PRACK") {
            n += 1;
            return n == 1;
        }
        false
    });
    let start = p.now;
    p.b.handle_command(p.now, progress(b_leg, 183, sdp("v=0 one")));
    p.b.handle_command(p.now, progress(b_leg, 183, sdp("v=0 two")));
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: sdp("v=0 answer"),
        },
    );
    p.drive();
    assert_eq!(p.sent(false, "183").len(), 1, "the second 18x is queued");
    assert!(p.sent(false, "200").is_empty(), "no 2xx before the PRACK");
    p.run_until(start + Duration::from_secs(5));
    // The retransmitted PRACK arrives at 500 ms; the queued 183 was dropped by the
    // Answer (it supersedes early media), and the 200 follows the PRACK.
    let oks: Vec<_> = p
        .sent(false, "200")
        .iter()
        .map(|r| parse_resp(&r.transmit.bytes))
        .collect();
    assert_eq!(oks.len(), 2, "PRACK 200 and INVITE 200");
    assert_eq!(oks[1].headers.cseq().unwrap().1, Method::Invite);
    assert_eq!(p.sent(false, "200")[1].at - start, ms(500));
    assert!(
        events(&p.a_events)
            .iter()
            .any(|e| matches!(e, UaEvent::Answered { leg: 1, .. }))
    );
}

#[test]
fn queued_reliable_18x_goes_out_after_the_prack() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    let mut held = true;
    let start = p.now;
    p.drop_if(move |r| {
        if r.is("PRACK") && held {
            held = false;
            return true;
        }
        false
    });
    p.b.handle_command(p.now, progress(b_leg, 183, sdp("v=0 one")));
    p.b.handle_command(p.now, progress(b_leg, 183, sdp("v=0 two")));
    p.drive();
    assert_eq!(p.sent(false, "183").len(), 1);
    p.run_until(start + Duration::from_secs(5));
    let bodies: Vec<_> = p
        .sent(false, "183")
        .iter()
        .map(|r| parse_resp(&r.transmit.bytes))
        .map(|r| (r.headers.get("RSeq").unwrap().to_string(), r.body))
        .collect();
    assert_eq!(
        bodies.len(),
        3,
        "first, its retransmission, then the second"
    );
    assert_eq!(&bodies[2].1[..], b"v=0 two");
    let r0: u32 = bodies[0].0.parse().unwrap();
    assert_eq!(bodies[2].0, (r0 + 1).to_string());
    let progress = events(&p.a_events)
        .into_iter()
        .filter(|e| matches!(e, UaEvent::Progress { .. }))
        .count();
    assert_eq!(progress, 2);
}

#[test]
fn require_100rel_makes_even_a_bodiless_180_reliable_and_info_gets_200() {
    let mut p = Pair::new(t0());
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(
        p.now,
        invite_cmd(1, target, vec![Header::new("Require", "100rel")]),
    );
    p.drive();
    let Some((_, UaEvent::Incoming { leg: b_leg, .. })) = p.b_events.last().cloned() else {
        panic!("Require: 100rel is supported, no 420")
    };
    p.b.handle_command(p.now, progress(b_leg, 180, None));
    p.drive();
    let ringing = parse_resp(&p.sent(false, "180")[0].transmit.bytes);
    assert_eq!(ringing.headers.get("Require"), Some("100rel"));
    assert_eq!(p.sent(true, "PRACK").len(), 1);
    p.b.handle_command(
        p.now,
        UaCommand::Answer {
            leg: b_leg,
            body: None,
        },
    );
    p.drive();
    // INFO in the dialog, hand-built from A's dialog view: 200.
    let ack = parse_req(&p.sent(true, "ACK")[0].transmit.bytes);
    let mut info = ack.clone();
    info.method = Method::Info;
    info.headers.set("CSeq", "10 INFO");
    info.headers
        .set("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKinfo1");
    info.headers.push("Content-Type", "application/dtmf-relay");
    info.body = Bytes::from_static(b"Signal=5\r\nDuration=160\r\n");
    p.b.handle_datagram(
        p.now,
        sip::ua::Datagram {
            src: p.a_addr,
            dst: p.b_addr,
            transport: Transport::Udp,
            bytes: info.to_bytes(),
        },
    );
    let resp = parse_resp(&p.b.poll_transmit().unwrap().bytes);
    assert_eq!(resp.code, 200);
    assert_eq!(resp.headers.cseq().unwrap().1, Method::Info);
}

// ---- milestone 2: offers inside a dialog ----

fn b_reoffers(p: &Pair) -> Vec<(u64, Method, Option<Body>)> {
    events(&p.a_events)
        .into_iter()
        .filter_map(|e| match e {
            UaEvent::Reoffer {
                leg: 1,
                id,
                method,
                body,
            } => Some((id, method, body)),
            _ => None,
        })
        .collect()
}

#[test]
fn reinvite_reoffer_answered_then_refresh_answered_by_the_ua() {
    let mut p = Pair::new(t0());
    let b_leg = answered_call(&mut p);
    p.b.handle_command(
        p.now,
        UaCommand::Reinvite {
            leg: b_leg,
            body: sdp("v=0 hold"),
        },
    );
    p.drive();
    let offers = b_reoffers(&p);
    assert_eq!(offers.len(), 1);
    let (id, method, body) = offers[0].clone();
    assert_eq!((method, body), (Method::Invite, sdp("v=0 hold")));
    assert!(
        p.b_events
            .iter()
            .all(|(_, e)| !matches!(e, UaEvent::ReinviteResult { .. }))
    );
    p.a.handle_command(
        p.now,
        UaCommand::AnswerReoffer {
            leg: 1,
            id,
            body: sdp("v=0 held"),
        },
    );
    p.drive();
    assert_eq!(
        events(&p.b_events).last(),
        Some(&UaEvent::ReinviteResult {
            leg: b_leg,
            code: 200,
            body: sdp("v=0 held")
        })
    );
    assert_eq!(p.sent(false, "ACK").len(), 1, "B ACKs the re-INVITE's 200");
    // A's 200 stops at the ACK.
    let oks = p.sent(true, "200").len();
    p.run_until(p.now + Duration::from_secs(10));
    assert_eq!(p.sent(true, "200").len(), oks);
    // A body-less re-INVITE is a refresh: A answers with its new body, no event.
    p.b.handle_command(
        p.now,
        UaCommand::Reinvite {
            leg: b_leg,
            body: None,
        },
    );
    p.drive();
    assert_eq!(b_reoffers(&p).len(), 1);
    assert_eq!(
        events(&p.b_events).last(),
        Some(&UaEvent::ReinviteResult {
            leg: b_leg,
            code: 200,
            body: sdp("v=0 held")
        })
    );
    // So is one repeating the peer's last body.
    p.b.handle_command(
        p.now,
        UaCommand::Reinvite {
            leg: b_leg,
            body: sdp("v=0 hold"),
        },
    );
    p.drive();
    assert_eq!(b_reoffers(&p).len(), 1);
}

#[test]
fn reoffer_rejected_keeps_the_dialog() {
    let mut p = Pair::new(t0());
    let b_leg = answered_call(&mut p);
    p.a.handle_command(
        p.now,
        UaCommand::Reinvite {
            leg: 1,
            body: sdp("v=0 video"),
        },
    );
    p.drive();
    let Some(UaEvent::Reoffer { leg, id, .. }) = events(&p.b_events).last().cloned() else {
        panic!("{:?}", p.b_events)
    };
    assert_eq!(leg, b_leg);
    p.b.handle_command(
        p.now,
        UaCommand::RejectReoffer {
            leg,
            id,
            code: 488,
            reason: "Not Acceptable Here".into(),
        },
    );
    p.drive();
    assert_eq!(
        events(&p.a_events).last(),
        Some(&UaEvent::ReinviteResult {
            leg: 1,
            code: 488,
            body: None
        })
    );
    // The 488 was ACKed in its transaction; B stops retransmitting it.
    p.run_until(p.now + Duration::from_secs(40));
    assert_eq!(p.sent(false, "488").len(), 1);
    p.a.handle_command(p.now, UaCommand::Bye { leg: 1 });
    p.drive();
    assert_eq!(
        events(&p.b_events).last(),
        Some(&UaEvent::Terminated {
            leg: b_leg,
            by_remote: true,
            code: None
        })
    );
}

#[test]
fn glare_gets_491_on_both_sides_and_a_pending_reinvite_refuses_another() {
    let mut p = Pair::new(t0());
    let b_leg = answered_call(&mut p);
    p.a.handle_command(
        p.now,
        UaCommand::Reinvite {
            leg: 1,
            body: sdp("v=0 a"),
        },
    );
    p.b.handle_command(
        p.now,
        UaCommand::Reinvite {
            leg: b_leg,
            body: sdp("v=0 b"),
        },
    );
    p.drive();
    let a = events(&p.a_events);
    let b = events(&p.b_events);
    assert_eq!(
        a.last(),
        Some(&UaEvent::ReinviteResult {
            leg: 1,
            code: 491,
            body: None
        })
    );
    assert_eq!(
        b.last(),
        Some(&UaEvent::ReinviteResult {
            leg: b_leg,
            code: 491,
            body: None
        })
    );
    assert!(
        !a.iter()
            .chain(&b)
            .any(|e| matches!(e, UaEvent::Reoffer { .. }))
    );
    assert_eq!(p.sent(true, "491").len() + p.sent(false, "491").len(), 2);
    // Locally: a second Reinvite while one is pending is refused at once.
    p.drop_if(|r| r.is("INVITE"));
    p.a.handle_command(p.now, UaCommand::Reinvite { leg: 1, body: None });
    p.a.handle_command(p.now, UaCommand::Reinvite { leg: 1, body: None });
    p.drive();
    assert_eq!(
        events(&p.a_events).last(),
        Some(&UaEvent::ReinviteResult {
            leg: 1,
            code: 491,
            body: None
        })
    );
    // The first times out: 408.
    p.run_until(p.now + Duration::from_secs(40));
    assert_eq!(
        events(&p.a_events).last(),
        Some(&UaEvent::ReinviteResult {
            leg: 1,
            code: 408,
            body: None
        })
    );
}

#[test]
fn update_with_a_new_offer_is_a_reoffer_and_moves_the_remote_target() {
    let mut p = Pair::new(t0());
    let b_leg = answered_call(&mut p);
    // An UPDATE from B built from A's view of the dialog, with a new Contact.
    let ack = parse_req(&p.sent(true, "ACK")[0].transmit.bytes);
    let mut upd = Request::new(Method::Update, "sip:switchyard@127.0.0.1:5060");
    upd.headers
        .push("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKupd1");
    upd.headers.push("Max-Forwards", "70");
    upd.headers.push("From", ack.headers.get("To").unwrap());
    upd.headers.push("To", ack.headers.get("From").unwrap());
    upd.headers.push("Call-ID", ack.headers.call_id().unwrap());
    upd.headers.push("CSeq", "50 UPDATE");
    upd.headers
        .push("Contact", "<sip:moved@127.0.0.1:5070;transport=udp>");
    upd.headers.push("Content-Type", "application/sdp");
    upd.body = Bytes::from_static(b"v=0 moved");
    p.a.handle_datagram(
        p.now,
        sip::ua::Datagram {
            src: p.b_addr,
            dst: p.a_addr,
            transport: Transport::Udp,
            bytes: upd.to_bytes(),
        },
    );
    p.drive();
    let offers = b_reoffers(&p);
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].1, Method::Update);
    p.a.handle_command(
        p.now,
        UaCommand::AnswerReoffer {
            leg: 1,
            id: offers[0].0,
            body: sdp("v=0 ok"),
        },
    );
    p.drive();
    let ok = p
        .sent(true, "200")
        .into_iter()
        .map(|r| parse_resp(&r.transmit.bytes))
        .find(|r| r.headers.cseq().unwrap().1 == Method::Update)
        .unwrap();
    assert_eq!(&ok.body[..], b"v=0 ok");
    p.a.handle_command(p.now, UaCommand::Bye { leg: 1 });
    p.drive();
    let bye = parse_req(&p.sent(true, "BYE")[0].transmit.bytes);
    assert_eq!(bye.uri, "sip:moved@127.0.0.1:5070;transport=udp");
    let _ = b_leg;
}

// ---- milestone 3: session timers ----

fn pair_with_se(se: u64) -> Pair {
    let mut p = Pair::new(t0());
    for ua in [&mut p.a, &mut p.b] {
        let mut cfg = ua.config().clone();
        cfg.session_expires = Some(Duration::from_secs(se));
        *ua = sip::ua::UserAgent::new(cfg, 5);
    }
    p
}

#[test]
fn refresher_sends_update_at_half_the_interval() {
    let mut p = pair_with_se(120);
    let start = p.now;
    let b_leg = answered_call(&mut p);
    let ok = parse_resp(&p.sent(false, "200").last().unwrap().transmit.bytes);
    assert_eq!(ok.headers.get("Session-Expires"), Some("120;refresher=uac"));
    assert_eq!(ok.headers.get("Require"), Some("timer"));
    let inv = parse_req(&p.sent(true, "INVITE")[0].transmit.bytes);
    assert_eq!(inv.headers.get("Session-Expires"), Some("120"));
    assert_eq!(inv.headers.get("Min-SE"), Some("90"));
    p.run_until(start + Duration::from_secs(300));
    let updates: Vec<_> = p
        .sent(true, "UPDATE")
        .iter()
        .map(|r| (r.at - start).as_secs())
        .collect();
    assert_eq!(updates, vec![60, 120, 180, 240, 300]);
    let upd = parse_req(&p.sent(true, "UPDATE")[0].transmit.bytes);
    assert_eq!(
        upd.headers.get("Session-Expires"),
        Some("120;refresher=uac")
    );
    assert!(upd.body.is_empty(), "a refresh UPDATE carries no offer");
    assert!(
        !events(&p.a_events)
            .iter()
            .chain(&events(&p.b_events))
            .any(|e| matches!(
                e,
                UaEvent::Reoffer { .. }
                    | UaEvent::SessionExpired { .. }
                    | UaEvent::Terminated { .. }
            ))
    );
    let _ = b_leg;
}

#[test]
fn dropped_refreshes_end_the_call_at_expiry_minus_32s() {
    let mut p = pair_with_se(120);
    let start = p.now;
    let b_leg = answered_call(&mut p);
    p.drop_if(|r| r.is("UPDATE"));
    p.run_until(start + Duration::from_secs(200));
    let b = p
        .b_events
        .iter()
        .skip_while(|(_, e)| !matches!(e, UaEvent::SessionExpired { .. }))
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(b[0].1, UaEvent::SessionExpired { leg: b_leg });
    assert_eq!(b[0].0 - start, Duration::from_secs(88));
    assert!(matches!(b.last(), Some((_, UaEvent::Terminated { leg, .. })) if *leg == b_leg));
    let a: Vec<_> = events(&p.a_events);
    let pos = a
        .iter()
        .position(|e| *e == UaEvent::SessionExpired { leg: 1 })
        .unwrap();
    assert!(matches!(a[pos + 1..], [UaEvent::Terminated { leg: 1, .. }]));
    assert_eq!(p.a.stats().legs + p.b.stats().legs, 0);
}

#[test]
fn too_small_interval_gets_422_and_the_uac_retries_with_min_se() {
    let mut p = pair_with_se(120);
    let mut cfg = p.b.config().clone();
    cfg.min_se = Duration::from_secs(300);
    p.b = sip::ua::UserAgent::new(cfg, 6);
    let _ = call_b(&mut p);
    let r422 = parse_resp(&p.sent(false, "422")[0].transmit.bytes);
    assert_eq!(r422.headers.get("Min-SE"), Some("300"));
    let invites = p.sent(true, "INVITE");
    assert_eq!(invites.len(), 2);
    let retry = parse_req(&invites[1].transmit.bytes);
    assert_eq!(retry.headers.get("Session-Expires"), Some("300"));
    assert_eq!(retry.headers.cseq().unwrap().0, 2);
    let incoming = p
        .b_events
        .iter()
        .filter(|(_, e)| matches!(e, UaEvent::Incoming { .. }))
        .count();
    assert_eq!(incoming, 1);
}

#[test]
fn uas_refreshes_with_reinvite_when_the_peer_lacks_update() {
    // A plain RFC 3261 caller: no Supported, no Allow. We refresh (refresher=uas)
    // with a re-INVITE carrying our body.
    let me: std::net::SocketAddr = "10.0.0.1:5060".parse().unwrap();
    let peer: std::net::SocketAddr = "10.0.0.2:5070".parse().unwrap();
    let mut ua = sip::ua::UserAgent::new(
        sip::ua::UaConfig {
            public_addr: me,
            session_expires: Some(Duration::from_secs(100)),
            ..sip::ua::UaConfig::default()
        },
        3,
    );
    let start = t0();
    let feed = |ua: &mut sip::ua::UserAgent, now, bytes: Vec<u8>| {
        ua.handle_datagram(
            now,
            sip::ua::Datagram {
                src: peer,
                dst: me,
                transport: Transport::Udp,
                bytes,
            },
        )
    };
    let invite = "INVITE sip:sw@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKi1\r\n\
        Max-Forwards: 70\r\nFrom: <sip:c@10.0.0.2>;tag=c1\r\nTo: <sip:sw@10.0.0.1>\r\n\
        Call-ID: old@10.0.0.2\r\nCSeq: 1 INVITE\r\nContact: <sip:c@10.0.0.2:5070>\r\n\
        Content-Length: 0\r\n\r\n";
    feed(&mut ua, start, invite.as_bytes().to_vec());
    let Some(UaEvent::Incoming { leg, .. }) = ua.poll_event() else {
        panic!()
    };
    ua.handle_command(
        start,
        UaCommand::Answer {
            leg,
            body: sdp("v=0 ours"),
        },
    );
    let out: Vec<_> = std::iter::from_fn(|| ua.poll_transmit()).collect();
    let ok = parse_resp(&out.last().unwrap().bytes);
    assert_eq!(ok.headers.get("Session-Expires"), Some("100;refresher=uas"));
    assert!(
        ok.headers.get("Require").is_none(),
        "the caller did not say timer"
    );
    let tag = ok.headers.to().unwrap().tag().unwrap().to_string();
    let ack = format!(
        "ACK sip:sw@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKa1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:c@10.0.0.2>;tag=c1\r\nTo: <sip:sw@10.0.0.1>;tag={tag}\r\n\
         Call-ID: old@10.0.0.2\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    feed(&mut ua, start, ack.into_bytes());
    let mut now = start;
    let reinvite = loop {
        let at = ua.poll_timeout().unwrap();
        assert!(at >= now && at - start <= Duration::from_secs(50));
        now = at;
        ua.handle_timeout(now);
        if let Some(t) = ua.poll_transmit() {
            break parse_req(&t.bytes);
        }
    };
    assert_eq!(now - start, Duration::from_secs(50));
    assert_eq!(reinvite.method, Method::Invite);
    assert_eq!(&reinvite.body[..], b"v=0 ours");
    assert_eq!(
        reinvite.headers.get("Session-Expires"),
        Some("100;refresher=uac")
    );
    let mut ok = sip::msg::Response::for_request(&reinvite, 200, "OK");
    ok.headers.push("Contact", "<sip:c@10.0.0.2:5070>");
    ok.headers.push("Session-Expires", "100;refresher=uas");
    feed(&mut ua, now, ok.to_bytes());
    let ack = parse_req(&ua.poll_transmit().unwrap().bytes);
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(
        ack.headers.cseq().unwrap().0,
        reinvite.headers.cseq().unwrap().0
    );
    // The peer said refresher=uas (itself, the re-INVITE's UAS): we now wait instead.
    let mut expired = None;
    while let Some(at) = ua.poll_timeout() {
        if at - now > Duration::from_secs(200) {
            break;
        }
        ua.handle_timeout(at);
        while let Some(e) = ua.poll_event() {
            if e == (UaEvent::SessionExpired { leg }) {
                expired.get_or_insert(at - now);
            }
        }
        while ua.poll_transmit().is_some() {}
    }
    assert_eq!(expired, Some(Duration::from_secs(100 - 32)));
}

// ---- milestone 4: REFER ----

#[test]
fn refer_accepted_with_notify_100_then_200() {
    let mut p = Pair::new(t0());
    let b_leg = answered_call(&mut p);
    p.a.handle_command(
        p.now,
        UaCommand::Refer {
            leg: 1,
            refer_to: "sip:+15550003@carrier".into(),
        },
    );
    p.drive();
    let Some(UaEvent::Refer {
        leg,
        id,
        refer_to,
        referred_by,
    }) = events(&p.b_events).last().cloned()
    else {
        panic!("{:?}", p.b_events)
    };
    assert_eq!(leg, b_leg);
    assert_eq!(refer_to, "<sip:+15550003@carrier>");
    assert_eq!(referred_by, None);
    p.b.handle_command(p.now, UaCommand::ReferResponse { leg, id, code: 202 });
    p.drive();
    p.b.handle_command(
        p.now,
        UaCommand::Notify {
            leg,
            status_code: 200,
            reason: "OK".into(),
            terminated: true,
        },
    );
    p.drive();
    let a: Vec<_> = events(&p.a_events)
        .into_iter()
        .filter(|e| matches!(e, UaEvent::ReferResult { .. } | UaEvent::ReferNotify { .. }))
        .collect();
    assert_eq!(
        a,
        vec![
            UaEvent::ReferResult { leg: 1, code: 202 },
            UaEvent::ReferNotify {
                leg: 1,
                status_code: 100,
                terminated: false
            },
            UaEvent::ReferNotify {
                leg: 1,
                status_code: 200,
                terminated: true
            },
        ]
    );
    let notifies: Vec<_> = p
        .sent(false, "NOTIFY")
        .iter()
        .map(|r| parse_req(&r.transmit.bytes))
        .collect();
    assert_eq!(notifies.len(), 2);
    let last = &notifies[1];
    assert_eq!(last.headers.get("Event"), Some("refer"));
    assert_eq!(
        last.headers.get("Subscription-State"),
        Some("terminated;reason=noresource")
    );
    assert_eq!(
        last.headers.get("Content-Type"),
        Some("message/sipfrag;version=2.0")
    );
    assert_eq!(&last.body[..], b"SIP/2.0 200 OK\r\n");
    assert_eq!(
        notifies[0].headers.get("Subscription-State"),
        Some("active;expires=60")
    );
    // Each NOTIFY got a 200 from A.
    let notify_oks = p
        .sent(true, "200")
        .iter()
        .filter(|r| parse_resp(&r.transmit.bytes).headers.cseq().unwrap().1 == Method::Notify)
        .count();
    assert_eq!(notify_oks, 2);
}

#[test]
fn refer_declined_and_refer_timeout() {
    let mut p = Pair::new(t0());
    let b_leg = answered_call(&mut p);
    p.b.handle_command(
        p.now,
        UaCommand::Refer {
            leg: b_leg,
            refer_to: "<sip:x@y>".into(),
        },
    );
    p.drive();
    let Some(UaEvent::Refer { id, refer_to, .. }) = events(&p.a_events).last().cloned() else {
        panic!()
    };
    assert_eq!(refer_to, "<sip:x@y>");
    p.a.handle_command(
        p.now,
        UaCommand::ReferResponse {
            leg: 1,
            id,
            code: 603,
        },
    );
    p.drive();
    assert_eq!(
        events(&p.b_events).last(),
        Some(&UaEvent::ReferResult {
            leg: b_leg,
            code: 603
        })
    );
    assert!(p.sent(true, "NOTIFY").is_empty());
    p.drop_if(|r| r.is("REFER"));
    p.b.handle_command(
        p.now,
        UaCommand::Refer {
            leg: b_leg,
            refer_to: "sip:z@y".into(),
        },
    );
    p.drive();
    p.run_until(p.now + Duration::from_secs(33));
    assert_eq!(
        events(&p.b_events).last(),
        Some(&UaEvent::ReferResult {
            leg: b_leg,
            code: 408
        })
    );
}

#[test]
fn hanging_up_with_a_reoffer_pending_leaks_nothing() {
    let mut p = Pair::new(t0());
    let b_leg = answered_call(&mut p);
    p.b.handle_command(
        p.now,
        UaCommand::Reinvite {
            leg: b_leg,
            body: sdp("v=0 new"),
        },
    );
    p.a.handle_command(
        p.now,
        UaCommand::Refer {
            leg: 1,
            refer_to: "sip:t@x".into(),
        },
    );
    p.drive();
    assert_eq!(b_reoffers(&p).len(), 1, "A's TU holds B's re-INVITE");
    assert!(matches!(
        events(&p.b_events).last(),
        Some(UaEvent::Refer { .. })
    ));
    p.b.handle_command(p.now, UaCommand::Bye { leg: b_leg });
    p.drive();
    assert!(events(&p.a_events).contains(&UaEvent::Terminated {
        leg: 1,
        by_remote: true,
        code: None
    }));
    // Late TU answers are ignored.
    p.a.handle_command(
        p.now,
        UaCommand::AnswerReoffer {
            leg: 1,
            id: b_reoffers(&p)[0].0,
            body: None,
        },
    );
    p.drive();
    p.run_until(p.now + Duration::from_secs(64));
    assert_eq!(p.a.stats().transactions + p.b.stats().transactions, 0);
    assert_eq!(p.a.stats().legs + p.b.stats().legs, 0);
}

/// A request from B to A in their dialog, built from A's ACK (tags swapped).
fn from_b(p: &Pair, method: &str, cseq: u32, branch: &str, body: Option<(&str, &str)>) -> Vec<u8> {
    let ack = parse_req(&p.sent(true, "ACK")[0].transmit.bytes);
    let mut r = Request::new(Method::from_token(method), "sip:switchyard@127.0.0.1:5060");
    r.headers
        .push("Via", format!("SIP/2.0/UDP 127.0.0.1:5070;branch={branch}"));
    r.headers.push("Max-Forwards", "70");
    r.headers.push("From", ack.headers.get("To").unwrap());
    r.headers.push("To", ack.headers.get("From").unwrap());
    r.headers.push("Call-ID", ack.headers.call_id().unwrap());
    r.headers.push("CSeq", format!("{cseq} {method}"));
    if let Some((ct, b)) = body {
        r.headers.push("Content-Type", ct);
        r.body = Bytes::from(b.to_string());
    }
    r.to_bytes()
}

fn deliver_to_a(p: &mut Pair, bytes: Vec<u8>) -> Option<sip::msg::Response> {
    p.a.handle_datagram(
        p.now,
        sip::ua::Datagram {
            src: p.b_addr,
            dst: p.a_addr,
            transport: Transport::Udp,
            bytes,
        },
    );
    let mut last = None;
    while let Some(t) = p.a.poll_transmit() {
        last = Some(parse_resp(&t.bytes));
    }
    while let Some(e) = p.a.poll_event() {
        p.a_events.push((p.now, e));
    }
    last
}

#[test]
fn second_offer_while_the_tu_holds_one_gets_500_retry_after_and_bad_event_489() {
    let mut p = Pair::new(t0());
    answered_call(&mut p);
    let sdp1 = Some(("application/sdp", "v=0 one"));
    let sdp2 = Some(("application/sdp", "v=0 two"));
    let m = from_b(&p, "UPDATE", 10, "z9hG4bKu1", sdp1);
    assert!(deliver_to_a(&mut p, m).is_none(), "waits for the TU");
    assert_eq!(b_reoffers(&p).len(), 1);
    let m = from_b(&p, "UPDATE", 11, "z9hG4bKu2", sdp2);
    let r = deliver_to_a(&mut p, m).unwrap();
    assert_eq!(r.code, 500);
    let secs: u32 = r.headers.get("Retry-After").unwrap().parse().unwrap();
    assert!(secs < 10);
    assert_eq!(b_reoffers(&p).len(), 1, "the second one is not reported");
    let m = from_b(&p, "NOTIFY", 12, "z9hG4bKn1", None);
    let r = deliver_to_a(&mut p, m).unwrap();
    assert_eq!(r.code, 489, "a NOTIFY without Event: refer");
}

#[test]
fn bye_in_the_early_dialog_ends_the_invite_with_487() {
    let mut p = Pair::new(t0());
    let b_leg = call_b(&mut p);
    p.b.handle_command(p.now, progress(b_leg, 180, None));
    p.drive();
    let inv = parse_req(&p.sent(true, "INVITE")[0].transmit.bytes);
    let ringing = parse_resp(&p.sent(false, "180")[0].transmit.bytes);
    let mut bye = Request::new(Method::Bye, "sip:switchyard@127.0.0.1:5070");
    bye.headers
        .push("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKeb1");
    bye.headers.push("Max-Forwards", "70");
    bye.headers.push("From", inv.headers.get("From").unwrap());
    bye.headers.push("To", ringing.headers.get("To").unwrap());
    bye.headers.push("Call-ID", inv.headers.call_id().unwrap());
    bye.headers.push("CSeq", "2 BYE");
    p.b.handle_datagram(
        p.now,
        sip::ua::Datagram {
            src: p.a_addr,
            dst: p.b_addr,
            transport: Transport::Udp,
            bytes: bye.to_bytes(),
        },
    );
    p.drive();
    assert_eq!(p.sent(false, "487").len(), 1);
    assert_eq!(
        events(&p.b_events).last(),
        Some(&UaEvent::Terminated {
            leg: b_leg,
            by_remote: true,
            code: None
        })
    );
    assert!(matches!(
        events(&p.a_events).last(),
        Some(UaEvent::Failed { code: 487, .. })
    ));
}
