//! Outbound registration (RFC 3261 §10) and OPTIONS keep-alive probes, in the UA.
//!
//! A registration keeps one Call-ID and counts CSeq up (§10.2.4). Digest challenges
//! are answered once per nonce (a second 401/407 with the nonce we just answered is a
//! failure; a refresh meeting a new nonce answers again). The binding is refreshed at
//! the granted expiry minus max(5 s, 10 %); granted = our Contact's `expires`, else
//! `Expires`, else what we asked. Failures are reported and retried after 30 s,
//! doubling up to 5 min. A 423 is retried at once with its Min-Expires.
//! `Unregister` sends expires=0 and reports `Unregistered` whatever the answer.

use std::time::{Duration, Instant};

use super::timers::UaTimer;
use super::{Machine, Purpose, Target, UaEvent, UserAgent};
use crate::auth::{self, Credentials, DigestChallenge};
use crate::msg::{Method, Request, Response};
use crate::txn::{ClientNonInvite, MethodKind, TxnKey};

/// What `UaEvent::Registration` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// The registrar granted this many seconds; a refresh is scheduled.
    Registered { expires: u32 },
    /// The last attempt failed (a retry is scheduled unless unregistering).
    Failed { code: u16, reason: String },
    /// The binding was removed (`Unregister`).
    Unregistered,
}

#[derive(Debug)]
pub(super) struct Registration {
    target: Target,
    aor: String,
    contact_user: String,
    credentials: Option<Credentials>,
    expires: u32,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// The challenge to answer on the next REGISTER, and its nonce count.
    challenge: Option<(DigestChallenge, bool, u32)>,
    /// The nonce our last REGISTER answered (one answer per nonce).
    answered_nonce: Option<String>,
    failures: u32,
    unregistering: bool,
    /// The REGISTER in flight.
    txn: Option<u64>,
}

const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_CAP: Duration = Duration::from_secs(300);

/// The granted interval: our Contact's `expires`, else `Expires`.
fn granted(resp: &Response, contact_user: &str, asked: u32) -> u32 {
    let ours = resp.headers.get_all("Contact").find_map(|c| {
        let na = crate::msg::NameAddr::parse(c).ok()?;
        if !na.uri.contains(&format!("{contact_user}@")) {
            return None;
        }
        crate::msg::parse_u32(na.param("expires").flatten()?.trim())
    });
    ours.or_else(|| crate::msg::parse_u32(resp.headers.get("Expires")?.trim()))
        .unwrap_or(asked)
}

impl UserAgent {
    /// `UaCommand::Register`: replaces any registration with the same `reg`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn register(
        &mut self,
        now: Instant,
        reg: u64,
        target: Target,
        aor: String,
        contact_user: String,
        credentials: Option<Credentials>,
        expires: u32,
    ) {
        if let Some(old) = self.regs.remove(&reg)
            && let Some(t) = old.txn
        {
            self.remove_txn(t);
        }
        self.ua_timers.cancel(UaTimer::Register(reg));
        let call_id = format!(
            "{}@{}",
            self.random_hex(16),
            self.call_id_host(target.addr.ip())
        );
        let from_tag = self.random_hex(10);
        self.regs.insert(
            reg,
            Registration {
                target,
                aor,
                contact_user,
                credentials,
                expires,
                call_id,
                from_tag,
                cseq: 0,
                challenge: None,
                answered_nonce: None,
                failures: 0,
                unregistering: false,
                txn: None,
            },
        );
        self.send_register(now, reg);
    }

    /// `UaCommand::Unregister`.
    pub(super) fn unregister(&mut self, now: Instant, reg: u64) {
        let Some(r) = self.regs.get_mut(&reg) else {
            return;
        };
        r.unregistering = true;
        r.expires = 0;
        let old = r.txn.take();
        if let Some(t) = old {
            self.remove_txn(t);
        }
        self.ua_timers.cancel(UaTimer::Register(reg));
        self.send_register(now, reg);
    }

    /// Sends (or resends) the REGISTER, with credentials when a challenge is known.
    pub(super) fn send_register(&mut self, now: Instant, reg: u64) {
        let Some((transport, peer_ip)) = self
            .regs
            .get(&reg)
            .map(|r| (r.target.transport, r.target.addr.ip()))
        else {
            return;
        };
        let via = self.new_via(transport, peer_ip);
        let cnonce = self.random_hex(16);
        let public = self.sent_by(peer_ip).to_owned();
        let ua = self.cfg.user_agent.clone();
        let Some(r) = self.regs.get_mut(&reg) else {
            return;
        };
        r.cseq = r.cseq.wrapping_add(1);
        let mut req = Request::new(Method::Register, r.target.request_uri.clone());
        req.headers.push("Via", via);
        req.headers.push("Max-Forwards", "70");
        req.headers
            .push("From", format!("<{}>;tag={}", r.aor, r.from_tag));
        req.headers.push("To", format!("<{}>", r.aor));
        req.headers.push("Call-ID", r.call_id.clone());
        req.headers.push("CSeq", format!("{} REGISTER", r.cseq));
        req.headers.push(
            "Contact",
            format!(
                "<sip:{}@{public};transport={}>",
                r.contact_user,
                transport.uri_param()
            ),
        );
        req.headers.push("Expires", r.expires.to_string());
        req.headers.push("User-Agent", ua);
        req.headers.push("Allow", super::ALLOW);
        if let (Some((ch, proxy, nc)), Some(creds)) = (r.challenge.as_mut(), &r.credentials) {
            *nc += 1;
            let value = auth::authorization(ch, creds, &Method::Register, &req.uri, &cnonce, *nc);
            let name = if *proxy {
                "Proxy-Authorization"
            } else {
                "Authorization"
            };
            req.headers.push(name, value);
            r.answered_nonce = Some(ch.nonce.clone());
        }
        let dst = r.target.addr;
        let key = TxnKey {
            branch: req
                .headers
                .top_via()
                .and_then(|v| v.branch().map(str::to_string))
                .unwrap_or_default(),
            kind: MethodKind::Other,
            server: false,
        };
        let m = ClientNonInvite::new(&req, self.txn_config(transport), now);
        let bytes = m.request_bytes().to_vec();
        self.send(dst, transport, bytes, false);
        let id = self.insert_txn(
            key,
            Machine::ClientNonInvite(m),
            None,
            Purpose::Register(reg),
            dst,
            transport,
        );
        if let Some(r) = self.regs.get_mut(&reg) {
            r.txn = Some(id);
        }
    }

    /// A final response to a REGISTER, or a code for a timeout (408) or transport
    /// error (503).
    pub(super) fn register_done(
        &mut self,
        now: Instant,
        reg: u64,
        code: u16,
        resp: Option<&Response>,
    ) {
        let Some(r) = self.regs.get_mut(&reg) else {
            return;
        };
        r.txn = None;
        if r.unregistering {
            self.regs.remove(&reg);
            self.events.push_back(UaEvent::Registration {
                reg,
                state: RegistrationState::Unregistered,
            });
            return;
        }
        if (200..300).contains(&code) {
            let expires = resp.map_or(r.expires, |resp| granted(resp, &r.contact_user, r.expires));
            r.failures = 0;
            let margin = (expires / 10).max(5);
            let refresh = Duration::from_secs(u64::from(expires.saturating_sub(margin).max(1)));
            self.ua_timers.set(UaTimer::Register(reg), now + refresh);
            self.events.push_back(UaEvent::Registration {
                reg,
                state: RegistrationState::Registered { expires },
            });
            return;
        }
        if let Some(resp) = resp {
            if (code == 401 || code == 407) && r.credentials.is_some() {
                let hname = if code == 401 {
                    "WWW-Authenticate"
                } else {
                    "Proxy-Authenticate"
                };
                let ch = resp
                    .headers
                    .get_all(hname)
                    .find_map(|v| DigestChallenge::parse(v).ok());
                if let Some(ch) = ch
                    && (ch.stale || r.answered_nonce.as_deref() != Some(ch.nonce.as_str()))
                {
                    r.challenge = Some((ch, code == 407, 0));
                    self.send_register(now, reg);
                    return;
                }
            }
            if code == 423
                && let Some(min) = resp
                    .headers
                    .get("Min-Expires")
                    .and_then(|v| crate::msg::parse_u32(v.trim()))
                && min > r.expires
            {
                r.expires = min;
                self.send_register(now, reg);
                return;
            }
        }
        let reason = resp.map_or_else(
            || crate::msg::default_reason(code).to_string(),
            |r| r.reason.clone(),
        );
        let backoff = RETRY_FIRST
            .saturating_mul(1 << r.failures.min(4))
            .min(RETRY_CAP);
        r.failures += 1;
        self.ua_timers.set(UaTimer::Register(reg), now + backoff);
        self.events.push_back(UaEvent::Registration {
            reg,
            state: RegistrationState::Failed { code, reason },
        });
    }

    /// `UaCommand::Ping`: OPTIONS out of dialog; `Pong` reports the outcome.
    pub(super) fn ping(&mut self, now: Instant, probe: u64, target: Target) {
        let transport = target.transport;
        let peer_ip = target.addr.ip();
        let via = self.new_via(transport, peer_ip);
        let tag = self.random_hex(10);
        let call_id = format!("{}@{}", self.random_hex(16), self.call_id_host(peer_ip));
        let mut req = Request::new(Method::Options, target.request_uri.clone());
        req.headers.push("Via", via);
        req.headers.push("Max-Forwards", "70");
        req.headers.push(
            "From",
            format!("<sip:switchyard@{}>;tag={tag}", self.sent_by(peer_ip)),
        );
        req.headers.push("To", format!("<{}>", target.request_uri));
        req.headers.push("Call-ID", call_id);
        req.headers.push("CSeq", "1 OPTIONS");
        req.headers
            .push("Contact", self.contact(transport, peer_ip));
        req.headers.push("Accept", "application/sdp");
        req.headers.push("User-Agent", self.cfg.user_agent.clone());
        let key = TxnKey {
            branch: req
                .headers
                .top_via()
                .and_then(|v| v.branch().map(str::to_string))
                .unwrap_or_default(),
            kind: MethodKind::Other,
            server: false,
        };
        let m = ClientNonInvite::new(&req, self.txn_config(transport), now);
        let bytes = m.request_bytes().to_vec();
        self.send(target.addr, transport, bytes, false);
        self.insert_txn(
            key,
            Machine::ClientNonInvite(m),
            None,
            Purpose::Ping(probe),
            target.addr,
            transport,
        );
    }

    /// Outputs of transactions that belong to no leg: registrations, probes, MESSAGEs.
    /// `resp` None: timeout (408) or transport error (503).
    pub(super) fn unowned_done(
        &mut self,
        now: Instant,
        purpose: Purpose,
        code: u16,
        resp: Option<&Response>,
    ) {
        match purpose {
            Purpose::Register(reg) => self.register_done(now, reg, code, resp),
            Purpose::Ping(probe) => self.events.push_back(UaEvent::Pong {
                probe,
                code: resp.map(|r| r.code),
            }),
            Purpose::Message(msg) => self.message_done(now, msg, code, resp),
            _ => {}
        }
    }
}
