//! RFC 3428 instant messages (MESSAGE), both ways, out of dialog.
//!
//! Outgoing: `UaCommand::Message` builds one request (fresh Call-ID, From tag, CSeq 1,
//! no Contact: §5 of RFC 3428 has none) and runs it by a non-INVITE client transaction.
//! A 401/407 is answered once with digest credentials (CSeq + 1, new branch, same
//! Call-ID and From tag, §22.2 of RFC 3261); the final code (408 on Timer F, 503 on a
//! transport error) is reported as `UaEvent::MessageResult`.
//!
//! Incoming: a MESSAGE gets a non-INVITE server transaction at once (it absorbs
//! retransmissions: nothing is sent before the TU answers, as RFC 4320 §4.1 bars an
//! early 100 to a non-INVITE over UDP) and is reported as `UaEvent::MessageIn`. The TU answers with
//! `UaCommand::MessageResponse`; without an answer within [`MESSAGE_ANSWER_TIMEOUT`] the
//! UA answers 408 itself, before the sender's own Timer F (64*T1 = 32 s) gives up.
//! A MESSAGE inside one of our dialogs (its To tag names a leg) is reported the same
//! way, once the dialog checks passed (481 when there is no such dialog, 500 for a
//! CSeq out of order): a text is a text to the relay, and the TU can tell from the
//! request's To tag. The pending map is capped ([`MAX_PENDING_MESSAGES`]); past it new
//! MESSAGEs get 503 at once, so a flood costs bounded memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::timers::UaTimer;
use super::{INCOMING_LEG_BIT, Machine, Purpose, Target, Transport, UaEvent, UserAgent, body_of};
use crate::auth::{self, Credentials, DigestChallenge};
use crate::msg::{Header, Method, Request, Response, default_reason};
use crate::txn::{ClientNonInvite, MethodKind, ServerNonInvite, TxnKey};

/// How long the TU has to answer an incoming MESSAGE before the UA sends 408.
pub const MESSAGE_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Incoming MESSAGEs waiting for the TU at once; more get 503.
pub const MAX_PENDING_MESSAGES: usize = 10_000;

/// What `UaCommand::Message` carries.
#[derive(Debug)]
pub(super) struct MessageArgs {
    pub target: Target,
    pub from_uri: String,
    pub to_uri: String,
    pub content_type: String,
    pub body: Bytes,
    pub credentials: Option<Credentials>,
    pub extra_headers: Vec<Header>,
}

/// Our MESSAGE in flight: kept for the one digest retry.
#[derive(Debug)]
pub(super) struct OutMessage {
    /// As last sent.
    req: Request,
    target: Target,
    credentials: Option<Credentials>,
    auth_tried: bool,
    txn: u64,
}

/// A MESSAGE from the peer waiting for the TU's answer.
#[derive(Debug)]
pub(super) struct InMessage {
    /// The request as received (Via stamped), to build the response from.
    req: Request,
    txn: u64,
}

/// The state of both directions, in the UA.
#[derive(Debug, Default)]
pub(super) struct Messages {
    out: HashMap<u64, OutMessage>,
    pending_in: HashMap<u64, InMessage>,
    next_in: u64,
}

impl UserAgent {
    /// `UaCommand::Message`. A `msg` still in flight is replaced (its outcome is not
    /// reported).
    pub(super) fn send_message(&mut self, now: Instant, msg: u64, a: MessageArgs) {
        if let Some(old) = self.messages.out.remove(&msg) {
            tracing::warn!(
                msg,
                "Message reuses an id in flight: the older one is dropped"
            );
            self.remove_txn(old.txn);
        }
        let peer_ip = a.target.addr.ip();
        let tag = self.random_hex(10);
        let mut call_id = self.random_hex(16);
        call_id.push('@');
        call_id.push_str(&self.call_id_host(peer_ip));
        let mut req = Request::new(Method::Message, a.target.request_uri.clone());
        // The Via is pushed by `start_message` (a fresh branch per attempt).
        req.headers.push("Max-Forwards", "70");
        // Exactly the caller's URI: the switch puts a masked number there, and nothing
        // else of the sender (no display name, no Contact) may leak.
        req.headers
            .push("From", format!("<{}>;tag={tag}", a.from_uri));
        req.headers.push("To", format!("<{}>", a.to_uri));
        req.headers.push("Call-ID", call_id);
        req.headers.push("CSeq", "1 MESSAGE");
        req.headers.push("User-Agent", self.cfg.user_agent.clone());
        for h in a.extra_headers {
            // A relay passes on the inbound Max-Forwards minus one instead of our 70.
            if h.name.eq_ignore_ascii_case("Max-Forwards") {
                req.headers.set("Max-Forwards", h.value);
            } else {
                req.headers.push(h.name, h.value);
            }
        }
        if !a.body.is_empty() {
            req.headers.push("Content-Type", a.content_type);
            req.body = a.body;
        }
        let txn = self.start_message(now, msg, &mut req, &a.target);
        self.messages.out.insert(
            msg,
            OutMessage {
                req,
                target: a.target,
                credentials: a.credentials,
                auth_tried: false,
                txn,
            },
        );
    }

    /// Puts a fresh Via on top of `req`, sends it and files its client transaction.
    fn start_message(&mut self, now: Instant, msg: u64, req: &mut Request, t: &Target) -> u64 {
        let via = self.new_via(t.transport, t.addr.ip());
        // The only Via of a request we originate: a retry replaces it.
        req.headers
            .0
            .retain(|h| !h.name.eq_ignore_ascii_case("Via"));
        req.headers.0.insert(0, Header::new("Via", via));
        let branch = req.headers.top_via_branch().unwrap_or_default().to_owned();
        let key = TxnKey {
            branch,
            kind: MethodKind::Other,
            server: false,
        };
        let m = ClientNonInvite::new(req, self.txn_config(t.transport), now);
        let bytes = m.request_bytes().to_vec();
        self.send(t.addr, t.transport, bytes, false);
        self.insert_txn(
            key,
            Machine::ClientNonInvite(m),
            None,
            Purpose::Message(msg),
            t.addr,
            t.transport,
        )
    }

    /// A final response to our MESSAGE, or 408 (Timer F) / 503 (transport) without one.
    pub(super) fn message_done(
        &mut self,
        now: Instant,
        msg: u64,
        code: u16,
        resp: Option<&Response>,
    ) {
        let Some(mut m) = self.messages.out.remove(&msg) else {
            return;
        };
        if let Some(resp) = resp
            && (code == 401 || code == 407)
            && !m.auth_tried
            && let Some(creds) = m.credentials.as_ref()
        {
            let (hname, aname) = if code == 401 {
                ("WWW-Authenticate", "Authorization")
            } else {
                ("Proxy-Authenticate", "Proxy-Authorization")
            };
            if let Some(ch) = DigestChallenge::select(resp.headers.get_all(hname)) {
                let cnonce = self.random_hex(16);
                let value =
                    auth::authorization(&ch, creds, &Method::Message, &m.req.uri, &cnonce, 1);
                let n = m.req.headers.cseq().map_or(1, |(n, _)| n);
                m.req
                    .headers
                    .set("CSeq", format!("{} MESSAGE", n.wrapping_add(1)));
                m.req.headers.set(aname, value);
                m.auth_tried = true;
                m.txn = self.start_message(now, msg, &mut m.req, &m.target);
                self.messages.out.insert(msg, m);
                return;
            }
        }
        let reason = resp.map_or_else(|| default_reason(code).to_owned(), |r| r.reason.clone());
        self.events
            .push_back(UaEvent::MessageResult { msg, code, reason });
    }

    /// A new MESSAGE from the network (validated; in dialog, the dialog checks passed).
    pub(super) fn on_message(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        dst: SocketAddr,
        source: SocketAddr,
        transport: Transport,
    ) {
        if self.messages.pending_in.len() >= MAX_PENDING_MESSAGES {
            self.stats.rejected += 1;
            let mut resp = self.make_response(&req, 503, "Service Unavailable");
            resp.headers.push("Retry-After", "5");
            self.respond_new(now, key, &req, &resp, dst, transport);
            return;
        }
        // The incoming-leg bit keeps these ids apart from those the TU picks for its own
        // messages, should it file both in one map.
        let msg = INCOMING_LEG_BIT | self.messages.next_in;
        self.messages.next_in = self.messages.next_in.wrapping_add(1) & !INCOMING_LEG_BIT;
        let m = ServerNonInvite::new(self.txn_config(transport));
        let txn = self.insert_txn(
            key,
            Machine::ServerNonInvite(m),
            None,
            Purpose::Other,
            dst,
            transport,
        );
        self.ua_timers
            .set(UaTimer::MessageAnswer(msg), now + MESSAGE_ANSWER_TIMEOUT);
        self.events.push_back(UaEvent::MessageIn {
            msg,
            from: req.headers.from().map(|f| f.uri).unwrap_or_default(),
            to: req.headers.to().map(|t| t.uri).unwrap_or_default(),
            request_uri: req.uri.clone(),
            source,
            transport,
            body: body_of(&req.headers, &req.body),
            request: Box::new(req.clone()),
        });
        // The body is in the event; the response needs only the headers.
        let mut req = req;
        req.body = Bytes::new();
        self.messages.pending_in.insert(msg, InMessage { req, txn });
    }

    /// `UaCommand::MessageResponse`: a final answer (200..=699) to an incoming MESSAGE.
    pub(super) fn message_response(&mut self, now: Instant, msg: u64, code: u16, reason: &str) {
        if !(200..700).contains(&code) {
            tracing::warn!(msg, code, "MessageResponse needs a final code: ignored");
            return;
        }
        let Some(m) = self.messages.pending_in.remove(&msg) else {
            tracing::debug!(msg, "MessageResponse for no pending MESSAGE: ignored");
            return;
        };
        self.ua_timers.cancel(UaTimer::MessageAnswer(msg));
        let reason = if reason.is_empty() {
            default_reason(code)
        } else {
            reason
        };
        let resp = self.make_response(&m.req, code, reason);
        // Timer J then ends the transaction, which answers retransmissions until then.
        self.respond_via_txn(m.txn, &resp, now);
    }

    /// `UaTimer::MessageAnswer`: the TU kept silent; answer 408 and forget it.
    pub(super) fn message_answer_due(&mut self, now: Instant, msg: u64) {
        let Some(m) = self.messages.pending_in.remove(&msg) else {
            return;
        };
        tracing::debug!(msg, "no answer from the TU: 408");
        let resp = self.make_response(&m.req, 408, "Request Timeout");
        self.respond_via_txn(m.txn, &resp, now);
    }

    /// Incoming MESSAGEs waiting for the TU, plus ours in flight.
    pub(super) fn messages_held(&self) -> usize {
        self.messages.pending_in.len() + self.messages.out.len()
    }
}
