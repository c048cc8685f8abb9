//! Outbound registration and OPTIONS probes on a virtual clock: one UA against a
//! hand-written registrar, and two UAs (`Pair`) for the probe.

#![allow(clippy::unwrap_used)] // tests may unwrap (helpers included)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip::auth::{self, Credentials, DigestChallenge, DigestResponse};
use sip::msg::{self, Method, Request, Response, SipMessage};
use sip::testing::Pair;
use sip::ua::{
    Datagram, RegistrationState, Target, Transport, UaCommand, UaConfig, UaEvent, UserAgent,
};

#[allow(clippy::disallowed_methods)] // the virtual clock's origin; never read again
fn t0() -> Instant {
    Instant::now()
}

struct Registrar {
    ua: UserAgent,
    start: Instant,
    now: Instant,
    me: SocketAddr,
    peer: SocketAddr,
}

impl Registrar {
    fn new() -> Registrar {
        let me: SocketAddr = "10.0.0.1:5060".parse().unwrap();
        let now = t0();
        Registrar {
            ua: UserAgent::new(
                UaConfig {
                    public_addr: me,
                    ..UaConfig::default()
                },
                11,
            ),
            start: now,
            now,
            me,
            peer: "10.0.0.2:5060".parse().unwrap(),
        }
    }
    fn target(&self) -> Target {
        Target {
            request_uri: "sip:carrier.example".into(),
            addr: self.peer,
            transport: Transport::Udp,
        }
    }
    fn register(&mut self, creds: Option<Credentials>) {
        let target = self.target();
        self.ua.handle_command(
            self.now,
            UaCommand::Register {
                reg: 7,
                target,
                aor: "sip:trunk@carrier.example".into(),
                contact_user: "trunk".into(),
                credentials: creds,
                expires: 3600,
            },
        );
    }
    /// The next request the UA sends (running timers up to `limit` seconds from start).
    fn next_request(&mut self, limit: u64) -> Option<Request> {
        loop {
            if let Some(t) = self.ua.poll_transmit() {
                assert_eq!(t.dst, self.peer);
                match msg::parse(&t.bytes).unwrap() {
                    SipMessage::Request(r) if r.method != Method::Ack => return Some(r),
                    _ => continue,
                }
            }
            let at = self.ua.poll_timeout()?;
            if at > self.start + Duration::from_secs(limit) {
                return None;
            }
            self.now = self.now.max(at);
            self.ua.handle_timeout(self.now);
        }
    }
    fn since_start(&self) -> Duration {
        self.now - self.start
    }
    fn reply(&mut self, resp: Response) {
        self.ua.handle_datagram(
            self.now,
            Datagram {
                src: self.peer,
                dst: self.me,
                transport: Transport::Udp,
                bytes: resp.to_bytes(),
            },
        );
    }
    fn events(&mut self) -> Vec<UaEvent> {
        std::iter::from_fn(|| self.ua.poll_event()).collect()
    }
}

fn resp(req: &Request, code: u16) -> Response {
    let mut r = Response::for_request(req, code, msg::default_reason(code));
    let to = req.headers.get("To").unwrap().to_string();
    r.headers.set("To", format!("{to};tag=reg1"));
    r
}

fn challenge(req: &Request, nonce: &str) -> Response {
    let mut r = resp(req, 401);
    let ch = DigestChallenge {
        realm: "carrier".into(),
        nonce: nonce.into(),
        opaque: None,
        algorithm: Some("MD5".into()),
        qop: vec!["auth".into()],
        stale: false,
    };
    r.headers.push("WWW-Authenticate", ch.to_header());
    r
}

fn creds() -> Option<Credentials> {
    Some(Credentials {
        username: "trunk".into(),
        password: "s3cret".into(),
    })
}

fn registered(expires: u32) -> UaEvent {
    UaEvent::Registration {
        reg: 7,
        state: RegistrationState::Registered { expires },
    }
}

#[test]
fn challenge_answered_then_refreshed_at_expiry_minus_ten_percent() {
    let mut r = Registrar::new();
    r.register(creds());
    let first = r.next_request(0).unwrap();
    assert_eq!(first.method, Method::Register);
    assert_eq!(first.headers.get("Expires"), Some("3600"));
    assert!(
        first
            .headers
            .get("Contact")
            .unwrap()
            .contains("sip:trunk@10.0.0.1:5060")
    );
    r.reply(challenge(&first, "n1"));
    let second = r.next_request(0).unwrap();
    assert_eq!(second.headers.call_id(), first.headers.call_id());
    assert_eq!(second.headers.cseq(), Some((2, Method::Register)));
    let dr = DigestResponse::parse(second.headers.get("Authorization").unwrap()).unwrap();
    assert!(auth::verify(&dr, &Method::Register, "s3cret"));
    assert!(r.events().is_empty(), "the challenge is not reported");
    let mut ok = resp(&second, 200);
    ok.headers.push(
        "Contact",
        "<sip:trunk@10.0.0.1:5060;transport=udp>;expires=600",
    );
    ok.headers.push("Expires", "3600");
    r.reply(ok);
    assert_eq!(r.events(), vec![registered(600)]);
    // Refresh at 600 - max(5, 60) = 540 s, with the known nonce (nc 2).
    let refresh = r.next_request(1000).unwrap();
    assert_eq!(r.since_start(), Duration::from_secs(540));
    assert_eq!(refresh.headers.cseq(), Some((3, Method::Register)));
    let dr = DigestResponse::parse(refresh.headers.get("Authorization").unwrap()).unwrap();
    assert_eq!(dr.nonce, "n1");
    let mut ok = resp(&refresh, 200);
    ok.headers.push("Expires", "30");
    let at = r.now;
    r.reply(ok);
    assert_eq!(r.events(), vec![registered(30)]);
    // 30 s granted: margin max(5 s, 3 s) = 5 s.
    r.next_request(2000).unwrap();
    assert_eq!(r.now - at, Duration::from_secs(25));
}

#[test]
fn same_nonce_twice_fails_and_failures_back_off() {
    let mut r = Registrar::new();
    r.register(creds());
    let first = r.next_request(0).unwrap();
    r.reply(challenge(&first, "n1"));
    let second = r.next_request(0).unwrap();
    r.reply(challenge(&second, "n1"));
    assert_eq!(
        r.events(),
        vec![UaEvent::Registration {
            reg: 7,
            state: RegistrationState::Failed {
                code: 401,
                reason: "Unauthorized".into()
            }
        }]
    );
    let failed_at = r.now;
    let retry = r.next_request(1000).unwrap();
    assert_eq!(r.now - failed_at, Duration::from_secs(30));
    // A 403 now: the next try waits twice as long.
    r.reply(resp(&retry, 403));
    assert!(matches!(
        &r.events()[..],
        [UaEvent::Registration {
            state: RegistrationState::Failed { code: 403, .. },
            ..
        }]
    ));
    let failed_at = r.now;
    r.next_request(1000).unwrap();
    assert_eq!(r.now - failed_at, Duration::from_secs(60));
}

#[test]
fn registrar_silence_is_a_408_then_unregister_sends_expires_zero() {
    let mut r = Registrar::new();
    r.register(None);
    r.next_request(0).unwrap();
    // Let the REGISTER and its retransmissions go unanswered.
    while r.since_start() < Duration::from_secs(32) {
        r.next_request(32);
        if r.ua
            .poll_timeout()
            .is_none_or(|t| t > r.start + Duration::from_secs(32))
        {
            break;
        }
    }
    let ev = r.events();
    assert_eq!(
        ev,
        vec![UaEvent::Registration {
            reg: 7,
            state: RegistrationState::Failed {
                code: 408,
                reason: "Request Timeout".into()
            }
        }]
    );
    let retry = r.next_request(100).unwrap();
    assert_eq!(r.since_start(), Duration::from_secs(62));
    r.reply(resp(&retry, 200));
    assert_eq!(r.events(), vec![registered(3600)]);
    r.ua.handle_command(r.now, UaCommand::Unregister { reg: 7 });
    let unreg = r.next_request(r.since_start().as_secs()).unwrap();
    assert_eq!(unreg.headers.get("Expires"), Some("0"));
    assert_eq!(unreg.headers.call_id(), retry.headers.call_id());
    r.reply(resp(&unreg, 200));
    assert_eq!(
        r.events(),
        vec![UaEvent::Registration {
            reg: 7,
            state: RegistrationState::Unregistered
        }]
    );
    // Nothing more is ever sent.
    assert!(r.next_request(100_000).is_none());
}

#[test]
fn ping_pong_timeout_and_transport_error() {
    let mut p = Pair::new(t0());
    let target = p.target_b("ping", Transport::Udp);
    p.a.handle_command(
        p.now,
        UaCommand::Ping {
            probe: 3,
            target: target.clone(),
        },
    );
    p.drive();
    assert_eq!(
        p.a_events.last().map(|(_, e)| e.clone()),
        Some(UaEvent::Pong {
            probe: 3,
            code: Some(200)
        })
    );
    // Unanswered: None after 64*T1.
    p.drop_if(|r| r.is("OPTIONS"));
    let start = p.now;
    p.a.handle_command(
        p.now,
        UaCommand::Ping {
            probe: 4,
            target: target.clone(),
        },
    );
    p.drive();
    p.run_until(start + Duration::from_secs(40));
    let (at, ev) = p.a_events.last().cloned().unwrap();
    assert_eq!(
        ev,
        UaEvent::Pong {
            probe: 4,
            code: None
        }
    );
    assert_eq!(at - start, Duration::from_secs(32));
    // A transport error ends probes and registrations towards that peer at once.
    let tcp = Target {
        transport: Transport::Tcp,
        ..target
    };
    p.a.handle_command(
        p.now,
        UaCommand::Ping {
            probe: 5,
            target: tcp.clone(),
        },
    );
    p.a.handle_command(
        p.now,
        UaCommand::Register {
            reg: 1,
            target: tcp,
            aor: "sip:me@x".into(),
            contact_user: "me".into(),
            credentials: None,
            expires: 60,
        },
    );
    p.a.handle_transport_error(p.now, p.b_addr, Transport::Tcp);
    let evs: Vec<_> = std::iter::from_fn(|| p.a.poll_event()).collect();
    assert!(evs.contains(&UaEvent::Pong {
        probe: 5,
        code: None
    }));
    assert!(evs.iter().any(|e| matches!(
        e,
        UaEvent::Registration {
            reg: 1,
            state: RegistrationState::Failed { code: 503, .. }
        }
    )));
}
