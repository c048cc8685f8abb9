//! RFC 3428 MESSAGE through the sans-IO user agent, on a virtual clock: two UAs wired
//! in memory (`sip::testing::Pair`), or one UA facing hand-written messages (`Solo`)
//! where the far end must do something our UA never does (challenge, in-dialog text).

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip::auth::{self, Credentials, DigestChallenge, DigestResponse};
use sip::msg::{self, Header, Method, Request, Response, SipMessage};
use sip::testing::Pair;
use sip::ua::{
    Body, Datagram, INCOMING_LEG_BIT, MAX_PENDING_MESSAGES, MESSAGE_ANSWER_TIMEOUT, Target,
    Transport, UaCommand, UaConfig, UaEvent, UserAgent,
};

#[allow(clippy::disallowed_methods)] // the virtual clock's origin; never read again
fn t0() -> Instant {
    Instant::now()
}

const FROM: &str = "sip:+15550199@mask.switchyard";
const TO: &str = "sip:+15550002@carrier";
const CT: &str = "text/plain;charset=UTF-8";
const TEXT: &str = "héllo, 1 2 3";

fn message_cmd(msg: u64, target: Target, credentials: Option<Credentials>) -> UaCommand {
    UaCommand::Message {
        msg,
        target,
        from_uri: FROM.into(),
        to_uri: TO.into(),
        content_type: CT.into(),
        body: Bytes::from(TEXT),
        credentials,
        extra_headers: vec![],
    }
}

fn events(v: &[(Instant, UaEvent)]) -> Vec<UaEvent> {
    v.iter().map(|(_, e)| e.clone()).collect()
}

/// A sends its MESSAGE; returns B's `msg` id once B reported it.
fn send_a_to_b(p: &mut Pair) -> u64 {
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(p.now, message_cmd(1, target, None));
    p.drive();
    match p.b_events.last() {
        Some((_, UaEvent::MessageIn { msg, .. })) => *msg,
        other => panic!("expected MessageIn, got {other:?}"),
    }
}

#[test]
fn message_is_delivered_and_its_202_reported() {
    let mut p = Pair::new(t0());
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(p.now, message_cmd(1, target, None));
    p.drive();
    let [
        UaEvent::MessageIn {
            msg,
            from,
            to,
            request_uri,
            source,
            transport,
            request,
            body,
        },
    ] = &events(&p.b_events)[..]
    else {
        panic!("expected one MessageIn, got {:?}", p.b_events);
    };
    assert_ne!(
        msg & INCOMING_LEG_BIT,
        0,
        "UA-picked ids carry the incoming bit"
    );
    assert_eq!(from, FROM);
    assert_eq!(to, TO);
    assert_eq!(request_uri, &format!("sip:+15550002@{}", p.b_addr));
    assert_eq!(*source, p.a_addr);
    assert_eq!(*transport, Transport::Udp);
    assert_eq!(request.method, Method::Message);
    assert_eq!(
        body,
        &Some(Body {
            content_type: CT.into(),
            bytes: Bytes::from(TEXT),
        })
    );
    assert_eq!(p.b.stats().legs, 0, "a MESSAGE makes no leg");
    assert_eq!(p.b.stats().messages, 1);
    p.b.handle_command(
        p.now,
        UaCommand::MessageResponse {
            msg: *msg,
            code: 202,
            reason: "Accepted".into(),
        },
    );
    p.drive();
    assert_eq!(
        events(&p.a_events),
        [UaEvent::MessageResult {
            msg: 1,
            code: 202,
            reason: "Accepted".into()
        }]
    );
    let resp = &p.sent(false, "202")[0].transmit.bytes;
    let SipMessage::Response(r) = msg::parse(resp).unwrap() else {
        panic!()
    };
    assert!(r.headers.to().unwrap().tag().is_some(), "§8.2.6.2 To tag");
    // Timers J (B) and K (A) run out: nothing is left on either side.
    let end = p.now + Duration::from_secs(40);
    p.run_until(end);
    for ua in [&p.a, &p.b] {
        let s = ua.stats();
        assert_eq!((s.transactions, s.legs, s.messages), (0, 0, 0), "{s:?}");
    }
    assert_eq!(events(&p.b_events).len(), 1);
    assert_eq!(events(&p.a_events).len(), 1);
}

#[test]
fn refused_message_reports_404() {
    let mut p = Pair::new(t0());
    let msg = send_a_to_b(&mut p);
    p.b.handle_command(
        p.now,
        UaCommand::MessageResponse {
            msg,
            code: 404,
            reason: String::new(),
        },
    );
    p.drive();
    assert_eq!(
        events(&p.a_events),
        [UaEvent::MessageResult {
            msg: 1,
            code: 404,
            reason: "Not Found".into()
        }],
        "an empty reason becomes the default phrase"
    );
    // A second answer to the same MESSAGE is ignored: the first one stands.
    p.b.handle_command(
        p.now,
        UaCommand::MessageResponse {
            msg,
            code: 200,
            reason: "OK".into(),
        },
    );
    p.drive();
    assert!(p.sent(false, "200").is_empty());
}

#[test]
fn unanswered_message_gets_408_from_the_ua_after_30s() {
    let mut p = Pair::new(t0());
    let start = p.now;
    send_a_to_b(&mut p);
    // Past B's Timer J too (32 s after its 408).
    let end = start + Duration::from_secs(70);
    p.run_until(end);
    let sent_408 = p.sent(false, "408");
    assert_eq!(sent_408.len(), 1);
    assert_eq!(sent_408[0].at - start, MESSAGE_ANSWER_TIMEOUT);
    assert_eq!(
        p.a_events,
        [(
            start + MESSAGE_ANSWER_TIMEOUT,
            UaEvent::MessageResult {
                msg: 1,
                code: 408,
                reason: "Request Timeout".into()
            }
        )],
        "B's 408 arrives before A's own Timer F (32 s)"
    );
    // Timer E retransmitted the MESSAGE meanwhile; B reported it once and answered none.
    assert!(p.sent(true, "MESSAGE").len() > 5);
    assert_eq!(events(&p.b_events).len(), 1);
    assert_eq!(p.sent(false, "SIP/2.0").len(), 1);
    let s = p.b.stats();
    assert_eq!((s.transactions, s.messages), (0, 0));
}

#[test]
fn lost_message_and_lost_answer_are_retransmitted_and_reported_once() {
    let mut p = Pair::new(t0());
    let start = p.now;
    let (mut lost_req, mut lost_resp) = (false, false);
    p.drop_if(move |r| {
        if r.from_a && r.is("MESSAGE") && !lost_req {
            lost_req = true;
            return true;
        }
        if !r.from_a && r.is("200") && !lost_resp {
            lost_resp = true;
            return true;
        }
        false
    });
    let target = p.target_b("+15550002", Transport::Udp);
    p.a.handle_command(p.now, message_cmd(1, target, None));
    p.drive();
    assert!(p.b_events.is_empty(), "the first copy was lost");
    // Timer E (T1 = 500 ms) resends it.
    assert!(p.advance(start + Duration::from_secs(1)));
    assert_eq!(p.now - start, Duration::from_millis(500));
    let msg = match &events(&p.b_events)[..] {
        [UaEvent::MessageIn { msg, .. }] => *msg,
        other => panic!("expected one MessageIn, got {other:?}"),
    };
    p.b.handle_command(
        p.now,
        UaCommand::MessageResponse {
            msg,
            code: 200,
            reason: "OK".into(),
        },
    );
    p.drive();
    assert!(p.a_events.is_empty(), "the 200 was lost");
    // The next retransmission meets B's server transaction, which resends its 200.
    p.run_until(start + Duration::from_secs(3));
    assert_eq!(events(&p.b_events).len(), 1, "reported once");
    assert_eq!(
        events(&p.a_events),
        [UaEvent::MessageResult {
            msg: 1,
            code: 200,
            reason: "OK".into()
        }]
    );
    assert_eq!(p.sent(false, "200").len(), 2);
    assert_eq!(p.b.stats().retransmissions, 1);
}

#[test]
fn transport_error_reports_503() {
    let mut p = Pair::new(t0());
    let target = p.target_b("+15550002", Transport::Tcp);
    let (dst, now) = (target.addr, p.now);
    p.a.handle_command(now, message_cmd(4, target, None));
    p.a.handle_transport_error(now, dst, Transport::Tcp);
    assert_eq!(
        p.a.poll_event(),
        Some(UaEvent::MessageResult {
            msg: 4,
            code: 503,
            reason: "Service Unavailable".into()
        })
    );
    let s = p.a.stats();
    assert_eq!((s.transactions, s.messages), (0, 0));
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
        std::iter::from_fn(|| self.ua.poll_transmit())
            .map(|t| msg::parse(&t.bytes).unwrap())
            .collect()
    }
    fn out_raw(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.ua.poll_transmit())
            .map(|t| t.bytes)
            .collect()
    }
    fn events(&mut self) -> Vec<UaEvent> {
        std::iter::from_fn(|| self.ua.poll_event()).collect()
    }
    fn feed(&mut self, bytes: Vec<u8>) {
        self.ua.handle_datagram(
            self.now,
            Datagram {
                src: self.peer,
                dst: self.me,
                transport: Transport::Udp,
                bytes,
            },
        );
    }
    /// Sends our MESSAGE and returns it as it went out.
    fn message(&mut self, creds: Option<Credentials>) -> Request {
        let t = self.target();
        self.ua.handle_command(self.now, message_cmd(1, t, creds));
        let mut out = self.out();
        assert_eq!(out.len(), 1);
        req(out.remove(0))
    }
    /// Runs the clock through every deadline up to `limit`.
    fn run_until(&mut self, limit: Instant) {
        while let Some(at) = self.ua.poll_timeout().filter(|at| *at <= limit) {
            self.now = self.now.max(at);
            self.ua.handle_timeout(self.now);
        }
        self.now = self.now.max(limit);
    }
}

fn req(m: SipMessage) -> Request {
    match m {
        SipMessage::Request(r) => r,
        SipMessage::Response(r) => panic!("expected a request, got {}", r.code),
    }
}

fn resp(m: SipMessage) -> Response {
    match m {
        SipMessage::Response(r) => r,
        SipMessage::Request(r) => panic!("expected a response, got {:?}", r.method),
    }
}

fn branch(r: &Request) -> String {
    r.headers.top_via().unwrap().branch().unwrap().to_string()
}

/// A UAS response with To tag "uas1".
fn reply(r: &Request, code: u16, extra: Option<(&'static str, String)>) -> Vec<u8> {
    let mut resp = Response::for_request(r, code, msg::default_reason(code));
    let to = r.headers.get("To").unwrap().to_string();
    resp.headers.set("To", format!("{to};tag=uas1"));
    if let Some((name, value)) = extra {
        resp.headers.push(name, value);
    }
    resp.to_bytes()
}

#[test]
fn outgoing_message_carries_only_what_the_caller_gave() {
    let mut s = Solo::new();
    let t = s.target();
    s.ua.handle_command(
        s.now,
        UaCommand::Message {
            msg: 9,
            target: t.clone(),
            from_uri: FROM.into(),
            to_uri: TO.into(),
            content_type: CT.into(),
            body: Bytes::from(TEXT),
            credentials: None,
            extra_headers: vec![Header::new("X-Relay", "r1")],
        },
    );
    let raw = s.out_raw();
    assert_eq!(raw.len(), 1);
    let m = parse_req(&raw[0]);
    assert_eq!(m.method, Method::Message);
    assert_eq!(m.uri, t.request_uri);
    let names: Vec<&str> = m.headers.0.iter().map(|h| h.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "Via",
            "Max-Forwards",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "User-Agent",
            "X-Relay",
            "Content-Type",
            "Content-Length"
        ]
    );
    let from = m.headers.get("From").unwrap();
    let tag = m.headers.from().unwrap().tag().unwrap().to_string();
    assert_eq!(
        from,
        format!("<{FROM}>;tag={tag}"),
        "exactly the URI and a tag"
    );
    assert!(m.headers.from().unwrap().display.is_none());
    assert_eq!(m.headers.get("To"), Some(format!("<{TO}>").as_str()));
    assert_eq!(m.headers.get("Max-Forwards"), Some("70"));
    assert_eq!(m.headers.cseq(), Some((1, Method::Message)));
    assert_eq!(m.headers.get("Content-Type"), Some(CT));
    assert_eq!(m.headers.get("User-Agent"), Some("Switchyard"));
    assert_eq!(m.headers.get("X-Relay"), Some("r1"));
    assert_eq!(&m.body[..], TEXT.as_bytes());
    let via = m.headers.top_via().unwrap();
    assert_eq!(via.host, "10.0.0.1");
    assert!(branch(&m).starts_with("z9hG4bK"));
    // Our address shows only in the Via and the Call-ID's host.
    let text = String::from_utf8_lossy(&raw[0]);
    assert_eq!(text.matches("10.0.0.1").count(), 2, "{text}");
    assert!(
        !text.contains("switchyard@"),
        "no Contact-like identity: {text}"
    );
}

#[test]
fn per_destination_via_names_the_address_toward_the_peer() {
    let mut s = Solo::new();
    s.ua = UserAgent::new(
        UaConfig {
            public_addr: "0.0.0.0:5060".parse().unwrap(),
            local_ips: Some(sip::ua::LocalIps::new(|_| "10.9.9.9".parse().unwrap())),
            ..UaConfig::default()
        },
        7,
    );
    let m = s.message(None);
    assert_eq!(m.headers.top_via().unwrap().host, "10.9.9.9");
    assert!(m.headers.call_id().unwrap().ends_with("@10.9.9.9"));
}

fn parse_req(b: &[u8]) -> Request {
    req(msg::parse(b).unwrap())
}

fn challenge() -> DigestChallenge {
    DigestChallenge {
        realm: "carrier".into(),
        nonce: "abc123".into(),
        opaque: Some("xyz".into()),
        algorithm: Some("MD5".into()),
        qop: vec!["auth".into()],
        stale: false,
    }
}

fn challenged_then(code: u16, challenge_hdr: &'static str, auth_hdr: &str) {
    let mut s = Solo::new();
    let creds = Credentials {
        username: "trunk".into(),
        password: "s3cret".into(),
    };
    let first = s.message(Some(creds));
    s.feed(reply(
        &first,
        code,
        Some((challenge_hdr, challenge().to_header())),
    ));
    let mut out = s.out();
    assert_eq!(out.len(), 1, "no ACK for a non-INVITE: just the retry");
    let retry = req(out.remove(0));
    assert!(s.events().is_empty(), "the challenge is not reported");
    assert_eq!(retry.method, Method::Message);
    assert_eq!(retry.headers.cseq(), Some((2, Method::Message)));
    assert_eq!(retry.headers.call_id(), first.headers.call_id());
    assert_eq!(retry.headers.get("From"), first.headers.get("From"));
    assert_eq!(retry.headers.get("To"), first.headers.get("To"));
    assert_eq!(retry.headers.get_all("Via").count(), 1);
    assert_ne!(branch(&retry), branch(&first));
    assert_eq!(retry.body, first.body);
    let dr = DigestResponse::parse(retry.headers.get(auth_hdr).unwrap()).unwrap();
    assert_eq!(dr.uri, first.uri);
    assert!(auth::verify(&dr, &Method::Message, "s3cret"));
    // A second challenge is the answer: credentials are tried once.
    s.feed(reply(
        &retry,
        code,
        Some((challenge_hdr, challenge().to_header())),
    ));
    assert!(s.out().is_empty());
    assert_eq!(
        s.events(),
        [UaEvent::MessageResult {
            msg: 1,
            code,
            reason: msg::default_reason(code).into()
        }]
    );
    assert_eq!(s.ua.stats().messages, 0);
}

#[test]
fn digest_407_is_answered_once_with_proxy_authorization() {
    challenged_then(407, "Proxy-Authenticate", "Proxy-Authorization");
}

#[test]
fn digest_401_is_answered_once_with_authorization() {
    challenged_then(401, "WWW-Authenticate", "Authorization");
}

#[test]
fn challenge_answered_then_200() {
    let mut s = Solo::new();
    let creds = Credentials {
        username: "trunk".into(),
        password: "s3cret".into(),
    };
    let first = s.message(Some(creds));
    s.feed(reply(
        &first,
        407,
        Some(("Proxy-Authenticate", challenge().to_header())),
    ));
    let retry = req(s.out().remove(0));
    // A late retransmission of the 407 to the first attempt changes nothing.
    s.feed(reply(
        &first,
        407,
        Some(("Proxy-Authenticate", challenge().to_header())),
    ));
    assert!(s.out().is_empty());
    s.feed(reply(&retry, 200, None));
    assert_eq!(
        s.events(),
        [UaEvent::MessageResult {
            msg: 1,
            code: 200,
            reason: "OK".into()
        }]
    );
}

#[test]
fn challenge_without_credentials_is_the_result() {
    let mut s = Solo::new();
    let first = s.message(None);
    s.feed(reply(
        &first,
        401,
        Some(("WWW-Authenticate", challenge().to_header())),
    ));
    assert!(s.out().is_empty());
    assert!(matches!(
        &s.events()[..],
        [UaEvent::MessageResult {
            msg: 1,
            code: 401,
            ..
        }]
    ));
}

#[test]
fn no_answer_at_all_is_408_at_timer_f() {
    let mut s = Solo::new();
    let start = s.now;
    s.message(None);
    s.run_until(start + Duration::from_secs(40));
    assert_eq!(
        s.events(),
        [UaEvent::MessageResult {
            msg: 1,
            code: 408,
            reason: "Request Timeout".into()
        }]
    );
    let st = s.ua.stats();
    assert_eq!((st.transactions, st.messages), (0, 0));
}

fn incoming_message(branch: &str, cseq: u32, to_tag: Option<&str>, max_forwards: u32) -> Vec<u8> {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let body = "see you at 8";
    format!(
        "MESSAGE sip:+15550100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch={branch}\r\n\
         Max-Forwards: {max_forwards}\r\nFrom: \"Bob\" <sip:+15550111@carrier>;tag=c1\r\n\
         To: <sip:+15550100@switchyard>{to_tag}\r\nCall-ID: m1@10.0.0.2\r\nCSeq: {cseq} MESSAGE\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn incoming_message_leaves_no_state_after_answer_and_timer_j() {
    let mut s = Solo::new();
    let start = s.now;
    s.feed(incoming_message("z9hG4bKm1", 1, None, 70));
    assert!(s.out().is_empty(), "no 100 for a non-INVITE (RFC 4320)");
    let msg = match &s.events()[..] {
        [
            UaEvent::MessageIn {
                msg,
                from,
                to,
                body,
                source,
                ..
            },
        ] => {
            assert_eq!(from, "sip:+15550111@carrier");
            assert_eq!(to, "sip:+15550100@switchyard");
            assert_eq!(*source, s.peer);
            assert_eq!(body.as_ref().unwrap().bytes, Bytes::from("see you at 8"));
            assert_eq!(body.as_ref().unwrap().content_type, "text/plain");
            *msg
        }
        other => panic!("expected MessageIn, got {other:?}"),
    };
    assert_eq!(s.ua.stats().legs, 0);
    // A retransmission before the answer: absorbed, nothing to resend yet.
    s.feed(incoming_message("z9hG4bKm1", 1, None, 70));
    assert!(s.out().is_empty());
    assert!(s.events().is_empty());
    s.ua.handle_command(
        s.now,
        UaCommand::MessageResponse {
            msg,
            code: 200,
            reason: "OK".into(),
        },
    );
    let raw = s.out_raw();
    let ok = resp(msg::parse(&raw[0]).unwrap());
    assert_eq!(ok.code, 200);
    assert!(ok.headers.to().unwrap().tag().is_some());
    assert!(ok.body.is_empty());
    // A retransmission after it: the same 200 again, still one event.
    s.feed(incoming_message("z9hG4bKm1", 1, None, 70));
    assert_eq!(s.out_raw(), raw);
    assert!(s.events().is_empty());
    let st = s.ua.stats();
    assert_eq!((st.transactions, st.messages, st.legs), (1, 0, 0));
    // Timer J (64*T1) ends the server transaction.
    s.run_until(start + Duration::from_secs(33));
    let st = s.ua.stats();
    assert_eq!((st.transactions, st.messages, st.legs), (0, 0, 0));
    assert_eq!(s.ua.poll_timeout(), None, "no timer left either");
}

#[test]
fn incoming_message_with_no_hops_left_is_483_and_not_reported() {
    let mut s = Solo::new();
    s.feed(incoming_message("z9hG4bKm2", 1, None, 0));
    assert_eq!(resp(s.out().remove(0)).code, 483);
    assert!(s.events().is_empty());
}

#[test]
fn message_in_an_unknown_dialog_is_481() {
    let mut s = Solo::new();
    s.feed(incoming_message("z9hG4bKm3", 1, Some("nope"), 70));
    assert_eq!(resp(s.out().remove(0)).code, 481);
    assert!(s.events().is_empty());
    assert_eq!(s.ua.stats().messages, 0);
}

#[test]
fn message_in_one_of_our_dialogs_is_reported_too() {
    let mut s = Solo::new();
    let invite = "INVITE sip:+15550100@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKi1\r\n\
         Max-Forwards: 70\r\nFrom: \"Bob\" <sip:+15550111@carrier>;tag=c1\r\n\
         To: <sip:+15550100@switchyard>\r\nCall-ID: m1@10.0.0.2\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:bob@10.0.0.2:5070>\r\nContent-Length: 0\r\n\r\n";
    s.feed(invite.as_bytes().to_vec());
    let [UaEvent::Incoming { leg, .. }] = &s.events()[..] else {
        panic!()
    };
    s.ua.handle_command(
        s.now,
        UaCommand::Answer {
            leg: *leg,
            body: None,
        },
    );
    let ok = resp(s.out().remove(0));
    let tag = ok.headers.to().unwrap().tag().unwrap().to_string();
    s.feed(incoming_message("z9hG4bKm4", 2, Some(&tag), 70));
    let msg = match &s.events()[..] {
        [UaEvent::MessageIn { msg, request, .. }] => {
            assert_eq!(request.headers.to().unwrap().tag(), Some(tag.as_str()));
            *msg
        }
        other => panic!("expected MessageIn, got {other:?}"),
    };
    s.ua.handle_command(
        s.now,
        UaCommand::MessageResponse {
            msg,
            code: 200,
            reason: "OK".into(),
        },
    );
    let r = resp(s.out().remove(0));
    assert_eq!(r.code, 200);
    assert_eq!(
        r.headers.to().unwrap().tag(),
        Some(tag.as_str()),
        "tag kept"
    );
    // An out-of-order CSeq in the dialog is a 500 and is not reported.
    s.feed(incoming_message("z9hG4bKm5", 1, Some(&tag), 70));
    assert_eq!(resp(s.out().remove(0)).code, 500);
    assert!(s.events().is_empty());
}

#[test]
fn options_advertise_message() {
    let mut s = Solo::new();
    let options = "OPTIONS sip:switchyard@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.2:5070;branch=z9hG4bKo1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:mon@10.0.0.9>;tag=m1\r\nTo: <sip:switchyard@10.0.0.1>\r\n\
         Call-ID: opt1@10.0.0.9\r\nCSeq: 5 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    s.feed(options.as_bytes().to_vec());
    let r = resp(s.out().remove(0));
    let allow = r.headers.get("Allow").unwrap();
    assert!(allow.split(", ").any(|m| m == "MESSAGE"), "{allow}");
}

#[test]
fn pending_messages_are_capped_with_503() {
    let mut s = Solo::new();
    for i in 0..MAX_PENDING_MESSAGES {
        s.feed(incoming_message(&format!("z9hG4bKf{i}"), 1, None, 70));
    }
    assert!(s.out().is_empty());
    assert_eq!(s.events().len(), MAX_PENDING_MESSAGES);
    s.feed(incoming_message("z9hG4bKover", 1, None, 70));
    let r = resp(s.out().remove(0));
    assert_eq!(r.code, 503);
    assert!(s.events().is_empty());
    assert_eq!(s.ua.stats().messages, MAX_PENDING_MESSAGES as u64);
    // All of them time out to 408 at once; the map empties.
    let start = s.now;
    s.run_until(start + MESSAGE_ANSWER_TIMEOUT);
    assert_eq!(s.out().len(), MAX_PENDING_MESSAGES);
    assert_eq!(s.ua.stats().messages, 0);
}
