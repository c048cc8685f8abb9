//! Offers inside a dialog (RFC 3261 §14 re-INVITE, RFC 3311 UPDATE), both ways.
//!
//! Incoming: a re-INVITE/UPDATE with a new body goes to the TU as `Reoffer`; one
//! with no body, or the very body the peer sent last, is only a session refresh
//! (RFC 4028) and is answered here with our last local body. Glare (§14.2): while our
//! own re-offer is pending the peer's gets 491; while the TU still holds one of the
//! peer's, a second gets 500 + Retry-After.
//!
//! Outgoing: `Reinvite` sends a re-INVITE and reports `ReinviteResult`; session
//! refreshes use the same path, marked internal, and are not reported.

use std::net::SocketAddr;
use std::time::Instant;

use super::{
    ALLOW, Body, LegRef, LegState, Machine, Purpose, SUPPORTED, Transport, UaEvent, UserAgent,
    body_of,
};
use crate::msg::{Method, Request, Response};
use crate::txn::{ServerInvite, ServerNonInvite, TxnKey};

/// The peer's re-offer waiting for the TU.
#[derive(Debug)]
pub(super) struct InReoffer {
    id: u64,
    pub(super) txn: u64,
    req: Request,
}

/// Our re-INVITE/UPDATE in flight.
#[derive(Debug)]
pub(super) struct OutReoffer {
    /// The re-INVITE's client transaction (an UPDATE's ends by Timer F).
    pub(super) txn: Option<u64>,
    method: Method,
    cseq: u32,
    body: Option<Body>,
    /// A session refresh the UA sent on its own: not reported to the TU.
    pub(super) internal: bool,
}

impl UserAgent {
    /// A re-INVITE or UPDATE in an existing dialog (CSeq already checked).
    pub(super) fn on_reoffer(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        leg_ref: LegRef,
        dst: SocketAddr,
        transport: Transport,
    ) {
        let cfg = self.txn_config(transport);
        let txn = if req.method == Method::Invite {
            let mut out = std::mem::take(&mut self.scratch);
            let m = ServerInvite::new(&req, cfg, &mut out);
            let id = self.insert_txn(
                key,
                Machine::ServerInvite(m),
                Some(leg_ref),
                Purpose::Other,
                dst,
                transport,
            );
            self.run_outputs(id, &mut out, now);
            self.scratch = out;
            id
        } else {
            self.insert_txn(
                key,
                Machine::ServerNonInvite(ServerNonInvite::new(cfg)),
                Some(leg_ref),
                Purpose::Other,
                dst,
                transport,
            )
        };
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let early = leg.state != LegState::Confirmed;
        if req.method == Method::Invite {
            // The 2xx ACK is matched through the dialog to this transaction.
            leg.invite_txn = Some(txn);
        }
        // No re-INVITE in an early dialog, and one offer at a time.
        let refusal = if (early && req.method == Method::Invite) || leg.ext.reoffer_out.is_some() {
            Some((491, "Request Pending", None))
        } else if leg.ext.reoffer_in.is_some() {
            Some((500, "Server Internal Error", Some("Retry-After")))
        } else {
            None
        };
        if let Some((code, reason, retry)) = refusal {
            let mut resp = self.make_response(&req, code, reason);
            if retry.is_some() {
                let secs = self.random_hex(1);
                // 0-9 s (§14.2), from one random hex digit.
                let secs = u8::from_str_radix(&secs, 16).unwrap_or(0) % 10;
                resp.headers.push("Retry-After", secs.to_string());
            }
            self.respond_via_txn(txn, &resp, now);
            return;
        }
        if let Some(resp) = self.session_check_request(&req) {
            self.respond_via_txn(txn, &resp, now);
            return;
        }
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        // §12.2.2: a target refresh request updates the remote target.
        if let (Some(c), Some(d)) = (req.headers.contact(), leg.dialog.as_mut()) {
            d.remote_target = c.uri;
        }
        let body = body_of(&req.headers, &req.body);
        let refresh = body.is_none() || body == leg.ext.remote_body;
        if refresh {
            // Answer with our last body when the request calls for one: always for a
            // re-INVITE (an offer-less one wants an offer), for UPDATE only if it offered.
            let answer = if req.method == Method::Invite || body.is_some() {
                leg.local_body.clone()
            } else {
                None
            };
            let resp = self.reoffer_ok(leg_ref, &req, transport, answer);
            self.respond_via_txn(txn, &resp, now);
            self.session_refreshed_by_peer(now, leg_ref, &req);
            return;
        }
        let id = self.next_reoffer;
        self.next_reoffer += 1;
        let method = req.method.clone();
        leg.ext.reoffer_in = Some(InReoffer { id, txn, req });
        self.events.push_back(UaEvent::Reoffer {
            leg: leg_ref,
            id,
            method,
            body,
        });
    }

    /// 200 to a re-offer: Contact, Allow, Supported, session timer, `body`.
    fn reoffer_ok(
        &mut self,
        leg_ref: LegRef,
        req: &Request,
        transport: Transport,
        body: Option<Body>,
    ) -> Response {
        let mut resp = self.make_response(req, 200, "OK");
        let peer_ip = self
            .legs
            .get(&leg_ref)
            .map_or(self.cfg.public_addr.ip(), |l| l.peer.ip());
        resp.headers
            .push("Contact", self.contact(transport, peer_ip));
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Supported", SUPPORTED);
        self.session_response_headers(leg_ref, req, &mut resp);
        if let Some(b) = body {
            resp.headers.push("Content-Type", b.content_type);
            resp.body = b.bytes;
        }
        resp
    }

    /// `UaCommand::AnswerReoffer`.
    pub(super) fn answer_reoffer(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        id: u64,
        body: Option<Body>,
    ) {
        let Some(pending) = self.take_reoffer_in(leg_ref, id) else {
            return;
        };
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let transport = leg.transport;
        leg.ext.remote_body = body_of(&pending.req.headers, &pending.req.body);
        if body.is_some() {
            leg.local_body = body.clone();
        }
        let resp = self.reoffer_ok(leg_ref, &pending.req, transport, body);
        self.respond_via_txn(pending.txn, &resp, now);
        self.session_refreshed_by_peer(now, leg_ref, &pending.req);
    }

    /// `UaCommand::RejectReoffer`: the dialog stays as it was.
    pub(super) fn reject_reoffer(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        id: u64,
        code: u16,
        reason: &str,
    ) {
        if !(300..700).contains(&code) {
            tracing::warn!(
                leg = leg_ref,
                code,
                "RejectReoffer needs a final non-2xx code"
            );
            return;
        }
        let Some(pending) = self.take_reoffer_in(leg_ref, id) else {
            return;
        };
        let resp = self.make_response(&pending.req, code, reason);
        self.respond_via_txn(pending.txn, &resp, now);
    }

    fn take_reoffer_in(&mut self, leg_ref: LegRef, id: u64) -> Option<InReoffer> {
        let leg = self.legs.get_mut(&leg_ref)?;
        if leg.ext.reoffer_in.as_ref().is_some_and(|r| r.id == id) {
            leg.ext.reoffer_in.take()
        } else {
            tracing::warn!(leg = leg_ref, id, "no such pending re-offer");
            None
        }
    }

    /// `UaCommand::Reinvite`, and the UA's own session refreshes (`internal`).
    /// Returns false when nothing was sent.
    pub(super) fn send_reoffer(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        method: Method,
        body: Option<Body>,
        internal: bool,
    ) -> bool {
        let busy = match self.legs.get(&leg_ref) {
            Some(l) if l.state == LegState::Confirmed && l.dialog.is_some() => {
                l.ext.reoffer_out.is_some() || l.ext.reoffer_in.is_some()
            }
            _ => {
                tracing::warn!(
                    leg = leg_ref,
                    "re-offer on a leg without a confirmed dialog"
                );
                return false;
            }
        };
        if busy {
            // §14.1: one offer at a time; the TU hears it as a 491 and may retry.
            if !internal {
                self.events.push_back(UaEvent::ReinviteResult {
                    leg: leg_ref,
                    code: 491,
                    body: None,
                });
            }
            return false;
        }
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return false;
        };
        let via = self.new_via(transport, peer_ip);
        let contact = self.contact(transport, peer_ip);
        let ua = self.cfg.user_agent.clone();
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return false;
        };
        let Some(dialog) = leg.dialog.as_mut() else {
            return false;
        };
        let mut req = dialog.request(method.clone(), &via, None);
        let dst = dialog.next_hop().unwrap_or(leg.peer);
        let cseq = dialog.local_cseq;
        req.headers.push("Contact", contact);
        req.headers.push("Allow", ALLOW);
        req.headers.push("Supported", SUPPORTED);
        req.headers.push("User-Agent", ua);
        self.session_request_headers(leg_ref, &mut req);
        if let Some(b) = &body {
            req.headers.push("Content-Type", b.content_type.clone());
            req.body = b.bytes.clone();
        }
        if let Some(leg) = self.legs.get_mut(&leg_ref) {
            leg.ext.reoffer_out = Some(OutReoffer {
                txn: None,
                method: method.clone(),
                cseq,
                body,
                internal,
            });
        }
        if method == Method::Invite {
            let txn = self.start_client_invite(now, leg_ref, req, dst, transport, Purpose::Reoffer);
            if let Some(out) = self
                .legs
                .get_mut(&leg_ref)
                .and_then(|l| l.ext.reoffer_out.as_mut())
            {
                out.txn = Some(txn);
            }
        } else {
            self.start_client_non_invite(now, leg_ref, &req, Purpose::Reoffer, dst, transport);
        }
        true
    }

    /// A final response (or `code` without one: timeout, transport error) to our re-offer.
    pub(super) fn reoffer_done(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        code: u16,
        resp: Option<Response>,
    ) {
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(out) = leg.ext.reoffer_out.take() else {
            return;
        };
        let body = resp.as_ref().and_then(|r| body_of(&r.headers, &r.body));
        if (200..300).contains(&code) {
            if let Some(b) = &out.body {
                leg.local_body = Some(b.clone());
            }
            if body.is_some() {
                leg.ext.remote_body = body.clone();
            }
            if let (Some(c), Some(d)) = (
                resp.as_ref().and_then(|r| r.headers.contact()),
                leg.dialog.as_mut(),
            ) {
                d.remote_target = c.uri;
            }
            if out.method == Method::Invite {
                self.ack_reinvite(leg_ref, out.cseq);
            }
            self.session_refreshed_by_us(now, leg_ref, resp.as_ref());
        } else if out.internal {
            self.session_refresh_failed(now, leg_ref, code);
        }
        if !out.internal && out.method == Method::Invite {
            self.events.push_back(UaEvent::ReinviteResult {
                leg: leg_ref,
                code,
                body,
            });
        }
    }

    /// §13.2.2.4 for a re-INVITE: ACK with its CSeq, kept for 2xx retransmissions.
    fn ack_reinvite(&mut self, leg_ref: LegRef, cseq: u32) {
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return;
        };
        let via = self.new_via(transport, peer_ip);
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(dialog) = leg.dialog.as_mut() else {
            return;
        };
        let ack = dialog.request(Method::Ack, &via, Some(cseq));
        let dst = dialog.next_hop().unwrap_or(leg.peer);
        let bytes = ack.to_bytes();
        leg.ack = Some((dst, bytes.clone()));
        self.send(dst, transport, bytes, false);
    }
}
