//! Reliable provisional responses (RFC 3262), both sides.
//!
//! UAS: an 18x goes out reliably when the INVITE requires 100rel, or supports it and
//! the 18x carries SDP. It gets `Require: 100rel` + `RSeq`, is retransmitted from T1
//! doubling until its PRACK arrives, and after 64*T1 without one the INVITE is
//! rejected with 504 (§3 asks for a 5xx). One reliable 18x is outstanding at a time;
//! later ones queue. A 2xx waits for the PRACK of an 18x that carried SDP (§3).
//!
//! UAC: a reliable 18x is PRACKed once per RSeq in its early dialog, and a
//! retransmission of one already PRACKed is not reported again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::timers::UaTimer;
use super::{Body, LegRef, LegState, Purpose, Transport, UaEvent, UserAgent, has_token};
use crate::dialog::{Dialog, DialogId};
use crate::msg::{self, Method, Request, Response};
use crate::txn::TxnKey;

#[derive(Debug, Default)]
pub(super) struct UasRel {
    /// The next RSeq (0 until the first reliable 18x picks a random start).
    next_rseq: u32,
    unacked: Option<Unacked>,
    queue: VecDeque<(u16, String, Option<Body>)>,
    /// An `Answer` waiting for the PRACK of an 18x with SDP.
    deferred_answer: Option<Option<Body>>,
}

#[derive(Debug)]
struct Unacked {
    rseq: u32,
    bytes: Vec<u8>,
    has_body: bool,
    interval: Duration,
}

/// UAC: one early dialog created by a reliable 18x (one per forked UAS).
#[derive(Debug)]
pub(super) struct EarlyDialog {
    pub(super) dialog: Dialog,
    last_rseq: u32,
}

/// `RAck: rseq cseq method` (RFC 3262 §7.2).
fn parse_rack(v: &str) -> Option<(u32, u32, Method)> {
    let mut it = v.split_ascii_whitespace();
    let rseq = msg::parse_u32(it.next()?)?;
    let cseq = msg::parse_u32(it.next()?)?;
    let method = Method::from_token(it.next()?);
    Some((rseq, cseq, method))
}

impl UserAgent {
    /// `UaCommand::Progress`: an 18x on an incoming, unanswered leg.
    pub(super) fn progress(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        code: u16,
        reason: &str,
        body: Option<Body>,
    ) {
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        if leg.uac || leg.state != LegState::Calling || !(101..200).contains(&code) {
            tracing::warn!(leg = leg_ref, code, "Progress ignored");
            return;
        }
        let h = &leg.invite.headers;
        let reliable = has_token(h, "Require", "100rel")
            || (body.is_some() && has_token(h, "Supported", "100rel"));
        let rel = &mut leg.ext.rel;
        if rel.deferred_answer.is_some() {
            return;
        }
        if reliable && rel.unacked.is_some() {
            rel.queue.push_back((code, reason.to_string(), body));
            return;
        }
        let pick_start = reliable && rel.next_rseq == 0;
        if pick_start {
            // §3: a random start below 2^31.
            let start = self.rng_u32() % 0x7fff_ffff + 1;
            if let Some(leg) = self.legs.get_mut(&leg_ref) {
                leg.ext.rel.next_rseq = start;
            }
        }
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let transport = leg.transport;
        let peer_ip = leg.peer.ip();
        let mut resp = Response::for_request(&leg.invite, code, reason);
        super::uas::set_to_tag(&mut resp, &leg.invite, &leg.local_tag);
        for rr in leg.invite.headers.get_all("Record-Route") {
            resp.headers.push("Record-Route", rr);
        }
        resp.headers
            .push("Contact", self.contact(transport, peer_ip));
        resp.headers.push("Allow", super::ALLOW);
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let rseq = leg.ext.rel.next_rseq;
        if reliable {
            resp.headers.push("Require", "100rel");
            resp.headers.push("RSeq", rseq.to_string());
            leg.ext.rel.next_rseq = rseq.wrapping_add(1);
        }
        if let Some(b) = &body {
            resp.headers.push("Content-Type", b.content_type.clone());
            resp.body = b.bytes.clone();
        }
        // The 18x creates the early dialog: PRACK, UPDATE and BYE may arrive in it.
        if leg.dialog.is_none() {
            leg.dialog = Dialog::uas(&leg.invite, &leg.local_tag);
            let id = DialogId {
                call_id: leg.call_id.clone(),
                local_tag: leg.local_tag.clone(),
            };
            self.dialogs.insert(id, leg_ref);
        }
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        if reliable {
            leg.ext.rel.unacked = Some(Unacked {
                rseq,
                bytes: resp.to_bytes(),
                has_body: body.is_some(),
                interval: self.cfg.t1,
            });
            // Over TCP the transport is reliable; only the PRACK deadline matters.
            if !transport.reliable() {
                self.ua_timers
                    .set(UaTimer::Rel1xx(leg_ref), now + self.cfg.t1);
            }
            self.ua_timers
                .set(UaTimer::Rel1xxGiveUp(leg_ref), now + self.cfg.t1 * 64);
        }
        if let Some(t) = leg.invite_txn {
            self.respond_via_txn(t, &resp, now);
        }
    }

    fn rng_u32(&mut self) -> u32 {
        use rand::Rng;
        self.rng.random()
    }

    pub(super) fn rel1xx_retransmit(&mut self, now: Instant, leg_ref: LegRef) {
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(u) = leg.ext.rel.unacked.as_mut() else {
            return;
        };
        u.interval = u.interval.saturating_mul(2);
        let (bytes, next) = (u.bytes.clone(), now + u.interval);
        let (peer, transport) = (leg.peer, leg.transport);
        self.send(peer, transport, bytes, true);
        self.ua_timers.set(UaTimer::Rel1xx(leg_ref), next);
    }

    /// §3: no PRACK within 64*T1: reject the INVITE with a 5xx.
    pub(super) fn rel1xx_give_up(&mut self, now: Instant, leg_ref: LegRef) {
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        if leg.ext.rel.unacked.take().is_none() || leg.state != LegState::Calling {
            return;
        }
        tracing::info!(leg = leg_ref, "no PRACK for a reliable 18x: 504");
        self.reject(now, leg_ref, 504, "Server Time-out", Vec::new());
        self.events.push_back(UaEvent::Terminated {
            leg: leg_ref,
            by_remote: false,
            code: Some(504),
        });
    }

    /// An `Answer` while a reliable 18x is outstanding. True when the answer must
    /// wait for the PRACK (the 18x carried SDP); otherwise the 18x is forgotten.
    pub(super) fn answer_waits_for_prack(&mut self, leg_ref: LegRef, body: &Option<Body>) -> bool {
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return false;
        };
        let rel = &mut leg.ext.rel;
        rel.queue.clear();
        match &rel.unacked {
            Some(u) if u.has_body => {
                rel.deferred_answer = Some(body.clone());
                true
            }
            Some(_) => {
                rel.unacked = None;
                self.ua_timers.cancel(UaTimer::Rel1xx(leg_ref));
                self.ua_timers.cancel(UaTimer::Rel1xxGiveUp(leg_ref));
                false
            }
            None => false,
        }
    }

    /// A PRACK in the early (or just confirmed) dialog of an incoming leg.
    pub(super) fn on_prack(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: &Request,
        leg_ref: LegRef,
        dst: std::net::SocketAddr,
        transport: Transport,
    ) {
        let rack = req.headers.get("RAck").and_then(parse_rack);
        let matched = self.legs.get_mut(&leg_ref).is_some_and(|leg| {
            let inv_cseq = leg.invite.headers.cseq().map(|(n, _)| n);
            let hit = match (&rack, &leg.ext.rel.unacked) {
                (Some((r, c, Method::Invite)), Some(u)) => u.rseq == *r && Some(*c) == inv_cseq,
                _ => false,
            };
            if hit {
                leg.ext.rel.unacked = None;
            }
            hit
        });
        if !matched {
            // §3: a PRACK matching no outstanding reliable 18x.
            let resp = self.make_response(req, 481, "Call/Transaction Does Not Exist");
            self.respond_new(now, key, req, &resp, dst, transport);
            return;
        }
        self.ua_timers.cancel(UaTimer::Rel1xx(leg_ref));
        self.ua_timers.cancel(UaTimer::Rel1xxGiveUp(leg_ref));
        let resp = self.make_response(req, 200, "OK");
        self.respond_new(now, key, req, &resp, dst, transport);
        // Next: queued 18x (until one is reliable again), then a deferred 2xx.
        loop {
            let Some(rel) = self.legs.get_mut(&leg_ref).map(|l| &mut l.ext.rel) else {
                return;
            };
            if rel.unacked.is_some() {
                return;
            }
            if let Some((code, reason, body)) = rel.queue.pop_front() {
                self.progress(now, leg_ref, code, &reason, body);
                continue;
            }
            if let Some(body) = rel.deferred_answer.take() {
                self.answer(now, leg_ref, body);
            }
            return;
        }
    }

    /// UAC: a 1xx (not 100) to our INVITE. PRACKs it when reliable; false when it is a
    /// retransmission of one already PRACKed (not to be reported again).
    pub(super) fn uac_reliable_provisional(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        resp: &Response,
    ) -> bool {
        if !has_token(&resp.headers, "Require", "100rel") {
            return true;
        }
        let Some(rseq) = resp
            .headers
            .get("RSeq")
            .and_then(|v| msg::parse_u32(v.trim()))
        else {
            return true;
        };
        let Some(to_tag) = resp.headers.to().and_then(|t| t.tag().map(str::to_string)) else {
            return true;
        };
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return false;
        };
        let via = self.new_via(transport, peer_ip);
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return false;
        };
        let idx = match leg
            .ext
            .early
            .iter()
            .position(|e| e.dialog.remote_tag == to_tag)
        {
            Some(i) => i,
            None => {
                let Some(dialog) = Dialog::uac(&leg.invite, resp) else {
                    return true;
                };
                leg.ext.early.push(EarlyDialog {
                    dialog,
                    last_rseq: 0,
                });
                leg.ext.early.len() - 1
            }
        };
        let e = &mut leg.ext.early[idx];
        if e.last_rseq != 0 && rseq <= e.last_rseq {
            return false;
        }
        e.last_rseq = rseq;
        let inv_cseq = leg.invite.headers.cseq().map(|(n, _)| n).unwrap_or(1);
        let mut prack = e.dialog.request(Method::Prack, &via, None);
        prack
            .headers
            .push("RAck", format!("{rseq} {inv_cseq} INVITE"));
        prack
            .headers
            .push("User-Agent", self.cfg.user_agent.clone());
        let dst = e.dialog.next_hop().unwrap_or(leg.peer);
        self.start_client_non_invite(now, leg_ref, &prack, Purpose::Other, dst, transport);
        true
    }
}
