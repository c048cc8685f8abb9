//! The UAS core (RFC 3261 §8.2, §13.3, §15.1.2, §9.2, §11): request
//! validation, received/rport (§18.2.1, RFC 3581), response routing (§18.2.2),
//! incoming INVITE/ACK/CANCEL/BYE/OPTIONS (MESSAGE is in `message.rs`).

use std::net::SocketAddr;
use std::time::Instant;

use super::{
    ALLOW, Body, Datagram, EXTENSIONS, INCOMING_LEG_BIT, Leg, LegExt, LegRef, LegState, Machine,
    Purpose, SUPPORTED, SUPPORTED_METHODS, Transport, UaEvent, UserAgent, body_of, has_token,
};
use crate::dialog::{Dialog, DialogId, DialogState};
use crate::msg::{self, Header, Method, Request, Response};
use crate::txn::{MethodKind, ServerInvite, ServerNonInvite, TxnKey};

use super::timers::UaTimer;

/// §17.2.1: a server transaction sends 100 Trying unless the TU responds within 200 ms.
const TRYING_DELAY: std::time::Duration = std::time::Duration::from_millis(200);

/// §18.2.1: add `received` when the sent-by host is not the source IP and fill
/// `rport` (RFC 3581). Returns where responses go (§18.2.2): the source for TCP
/// (same connection) and for rport, else the source IP with the sent-by port.
fn stamp_via(req: &mut Request, src: SocketAddr, transport: Transport) -> Option<SocketAddr> {
    let peek = crate::msg::Via::peek(req.headers.get("Via")?)?;
    let reply_to = if transport == Transport::Tcp || peek.rport {
        src
    } else {
        SocketAddr::new(src.ip(), peek.port.unwrap_or(5060))
    };
    let same_host = peek.host.parse::<std::net::IpAddr>() == Ok(src.ip());
    // The usual case (sent-by is the source address, no rport) changes nothing: the Via
    // is only parsed and rewritten when it must be.
    if same_host && !peek.rport {
        return Some(reply_to);
    }
    let mut via = req.headers.top_via()?;
    if !same_host {
        via.params
            .retain(|(k, _)| !k.eq_ignore_ascii_case("received"));
        via.params
            .push(("received".to_string(), Some(src.ip().to_string())));
    }
    if peek.rport {
        for (k, v) in via.params.iter_mut() {
            if k.eq_ignore_ascii_case("rport") {
                *v = Some(src.port().to_string());
            }
        }
    }
    if let Some(h) = req
        .headers
        .0
        .iter_mut()
        .find(|h| h.name.eq_ignore_ascii_case("Via"))
    {
        h.value = via.to_string();
    }
    Some(reply_to)
}

/// The server transaction key: the RFC 3261 branch plus the top Via's sent-by and, for
/// non-INVITE requests, the method (§17.2.3: two clients may pick the same branch, and a
/// branch names a transaction only together with its sent-by and method), or for RFC 2543
/// peers a synthetic one from Call-ID, CSeq number and From tag.
fn server_branch(req: &Request) -> String {
    let via = req.headers.get("Via").and_then(crate::msg::Via::peek);
    match via.and_then(|v| v.branch) {
        Some(b) if b.starts_with("z9hG4bK") => {
            let (host, port) = via
                .map(|v| (v.host, v.port.unwrap_or(0)))
                .unwrap_or_default();
            let mut key = String::with_capacity(b.len() + host.len() + 20);
            key.push_str(b);
            key.push('|');
            key.push_str(host);
            key.push(':');
            crate::msg::push_decimal(&mut key, u64::from(port));
            match MethodKind::of(&req.method) {
                // INVITE/ACK and CANCEL are told apart by the key's kind, and CANCEL must
                // find its INVITE under the same string.
                MethodKind::Invite | MethodKind::Cancel => {}
                MethodKind::Other => {
                    key.push('|');
                    key.push_str(req.method.as_str());
                }
            }
            key
        }
        _ => format!(
            "2543:{}:{}:{}:{}",
            req.headers.call_id().unwrap_or(""),
            req.headers.cseq().map(|(n, _)| n).unwrap_or(0),
            req.headers
                .from()
                .and_then(|f| f.tag().map(str::to_string))
                .unwrap_or_default(),
            via.and_then(|v| v.branch).unwrap_or_default(),
        ),
    }
}

impl UserAgent {
    pub(super) fn on_request(&mut self, now: Instant, mut req: Request, d: &Datagram) {
        let Some(dst) = stamp_via(&mut req, d.src, d.transport) else {
            self.stats.strays_dropped += 1;
            return;
        };
        let transport = d.transport;
        let key = TxnKey {
            branch: server_branch(&req),
            kind: MethodKind::of(&req.method),
            server: true,
        };
        if req.method == Method::Ack {
            self.on_ack(now, &req, &key);
            return;
        }
        // A retransmission: the transaction resends its last response.
        if let Some(&id) = self.txn_index.get(&key) {
            if let Some(e) = self.txns.get_mut(&id) {
                // The answer to a retransmission goes where this copy says (§18.2.2): over
                // TCP that is the connection it came in on, which may be a new one.
                e.dst = dst;
                e.transport = transport;
                let mut out = std::mem::take(&mut self.scratch);
                match &mut e.machine {
                    Machine::ServerInvite(m) => m.on_invite(&mut out),
                    Machine::ServerNonInvite(m) => m.on_request(&mut out),
                    _ => {}
                }
                self.run_outputs(id, &mut out, now);
                self.scratch = out;
            }
            return;
        }
        // Max-Forwards exhausted (§8.2.2 / §16.3 item 2); OPTIONS to us may still be answered.
        if req.headers.max_forwards() == Some(0) && req.method != Method::Options {
            self.stats.rejected += 1;
            let resp = self.make_response(&req, 483, "Too Many Hops");
            self.respond_new(now, key, &req, &resp, dst, transport);
            return;
        }
        if let Err(rej) = msg::validate_request(&req, &SUPPORTED_METHODS, &EXTENSIONS) {
            self.stats.rejected += 1;
            let mut resp = self.make_response(&req, rej.code, &rej.reason);
            for h in rej.headers {
                resp.headers.push(h.name, h.value);
            }
            self.respond_new(now, key, &req, &resp, dst, transport);
            return;
        }
        match req.method {
            Method::Cancel => self.on_cancel(now, key, &req, dst, transport),
            Method::Invite if req.headers.to().and_then(|t| t.tag().map(|_| ())).is_none() => {
                self.on_new_invite(now, key, req, dst, d);
            }
            Method::Message if req.headers.to().and_then(|t| t.tag().map(|_| ())).is_none() => {
                self.on_message(now, key, req, dst, d.src, transport);
            }
            _ => self.on_in_dialog(now, key, req, dst, d),
        }
    }

    /// Creates the server transaction for a new request and sends `resp` through it.
    pub(super) fn respond_new(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: &Request,
        resp: &Response,
        dst: SocketAddr,
        transport: Transport,
    ) {
        let cfg = self.txn_config(transport);
        let id = if req.method == Method::Invite {
            let mut out = Vec::new();
            // The 100 is superseded at once by `resp`; not sending it saves a packet.
            let m = ServerInvite::new(req, cfg, &mut out);
            self.insert_txn(
                key,
                Machine::ServerInvite(m),
                None,
                Purpose::Other,
                dst,
                transport,
            )
        } else {
            self.insert_txn(
                key,
                Machine::ServerNonInvite(ServerNonInvite::new(cfg)),
                None,
                Purpose::Other,
                dst,
                transport,
            )
        };
        self.respond_via_txn(id, resp, now);
    }

    fn on_ack(&mut self, now: Instant, req: &Request, key: &TxnKey) {
        // ACK for a non-2xx final: same branch as the INVITE (§17.2.3).
        let target = self.txn_index.get(key).copied().or_else(|| {
            // ACK for a 2xx: matched by dialog (§13.3.1.4).
            let id = DialogId {
                call_id: req.headers.call_id()?.to_string(),
                local_tag: req.headers.to()?.tag()?.to_string(),
            };
            let leg = self.legs.get(self.dialogs.get(&id)?)?;
            leg.invite_txn
        });
        let Some(id) = target else {
            self.stats.strays_dropped += 1;
            return;
        };
        self.ack_server_invite(id, now);
    }

    fn ack_server_invite(&mut self, id: u64, now: Instant) {
        if let Some(e) = self.txns.get_mut(&id)
            && let Machine::ServerInvite(m) = &mut e.machine
        {
            let mut out = std::mem::take(&mut self.scratch);
            m.on_ack(now, &mut out);
            self.run_outputs(id, &mut out, now);
            self.scratch = out;
            self.schedule(id);
        }
    }

    /// §9.2: 200 to the CANCEL, 487 to the INVITE if still unanswered.
    fn on_cancel(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: &Request,
        dst: SocketAddr,
        transport: Transport,
    ) {
        let inv_key = TxnKey {
            kind: MethodKind::Invite,
            ..key.clone()
        };
        let Some(inv_id) = self.txn_index.get(&inv_key).copied() else {
            let resp = self.make_response(req, 481, "Call/Transaction Does Not Exist");
            self.respond_new(now, key, req, &resp, dst, transport);
            return;
        };
        let resp = self.make_response(req, 200, "OK");
        self.respond_new(now, key, req, &resp, dst, transport);
        let leg_ref = self.txns.get(&inv_id).and_then(|e| e.leg);
        let Some(leg_ref) = leg_ref else { return };
        let Some(leg) = self.legs.get(&leg_ref) else {
            return;
        };
        if leg.state != LegState::Calling {
            return;
        }
        let mut resp = Response::for_request(&leg.invite, 487, "Request Terminated");
        set_to_tag(&mut resp, &leg.invite, &leg.local_tag);
        self.respond_via_txn(inv_id, &resp, now);
        self.events.push_back(UaEvent::Terminated {
            leg: leg_ref,
            by_remote: true,
            code: Some(487),
        });
        self.remove_leg(leg_ref);
    }

    fn on_new_invite(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        dst: SocketAddr,
        d: &Datagram,
    ) {
        if let Some(resp) = self.session_check_request(&req) {
            self.stats.rejected += 1;
            self.respond_new(now, key, &req, &resp, dst, d.transport);
            return;
        }
        let leg_ref = INCOMING_LEG_BIT | self.next_incoming;
        self.next_incoming = self.next_incoming.wrapping_add(1) & !INCOMING_LEG_BIT;
        let local_tag = self.random_hex(10);
        let mut out = std::mem::take(&mut self.scratch);
        // No 100 yet: a TU that refuses at once sends the only answer (no amplification).
        let m = ServerInvite::new_quiet(self.txn_config(d.transport));
        self.ua_timers
            .set(UaTimer::Trying(leg_ref), now + TRYING_DELAY);
        let id = self.insert_txn(
            key,
            Machine::ServerInvite(m),
            Some(leg_ref),
            Purpose::Invite,
            dst,
            d.transport,
        );
        self.run_outputs(id, &mut out, now);
        self.scratch = out;
        let ev = UaEvent::Incoming {
            leg: leg_ref,
            from: req.headers.from().map(|f| f.uri).unwrap_or_default(),
            to: req.headers.to().map(|t| t.uri).unwrap_or_default(),
            request_uri: req.uri.clone(),
            body: body_of(&req.headers, &req.body),
            source: d.src,
            transport: d.transport,
            request: Box::new(req.clone()),
            local_tag: local_tag.clone(),
        };
        let remote_body = body_of(&req.headers, &req.body);
        self.legs.insert(
            leg_ref,
            Box::new(Leg {
                uac: false,
                state: LegState::Calling,
                peer: dst,
                transport: d.transport,
                call_id: req.headers.call_id().unwrap_or("").to_string(),
                local_tag,
                invite: req,
                invite_txn: Some(id),
                credentials: None,
                auth_tried: false,
                got_provisional: false,
                cancel_requested: false,
                cancel_sent: false,
                dialog: None,
                ack: None,
                local_body: None,
                silent_bye: false,
                ext: LegExt {
                    remote_body,
                    ..LegExt::default()
                },
            }),
        );
        self.events.push_back(ev);
    }

    /// Requests with a To tag (BYE, re-INVITE, OPTIONS, MESSAGE) and out-of-dialog
    /// OPTIONS/BYE.
    fn on_in_dialog(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        dst: SocketAddr,
        d: &Datagram,
    ) {
        let transport = d.transport;
        let to_tag = req.headers.to().and_then(|t| t.tag().map(str::to_string));
        let Some(to_tag) = to_tag else {
            // Out of dialog.
            let resp = if req.method == Method::Options {
                self.options_response(&req)
            } else {
                self.make_response(&req, 481, "Call/Transaction Does Not Exist")
            };
            self.respond_new(now, key, &req, &resp, dst, transport);
            return;
        };
        let id = DialogId {
            call_id: req.headers.call_id().unwrap_or("").to_string(),
            local_tag: to_tag,
        };
        let Some(leg_ref) = self.dialogs.get(&id).copied() else {
            let resp = self.make_response(&req, 481, "Call/Transaction Does Not Exist");
            self.respond_new(now, key, &req, &resp, dst, transport);
            return;
        };
        let cseq = req.headers.cseq().map(|(n, _)| n).unwrap_or(0);
        let in_order = self
            .legs
            .get_mut(&leg_ref)
            .and_then(|l| l.dialog.as_mut())
            .is_some_and(|d| d.accept_remote_cseq(cseq));
        if !in_order {
            let resp = Response::for_request(&req, 500, "Server Internal Error");
            self.respond_new(now, key, &req, &resp, dst, transport);
            return;
        }
        match req.method {
            Method::Bye => {
                let resp = Response::for_request(&req, 200, "OK");
                self.respond_new(now, key, &req, &resp, dst, transport);
                let Some(leg) = self.legs.get(&leg_ref) else {
                    return;
                };
                if leg.state == LegState::Calling && !leg.uac {
                    // A BYE in the early dialog (§15): the INVITE ends with a 487.
                    let mut resp = Response::for_request(&leg.invite, 487, "Request Terminated");
                    set_to_tag(&mut resp, &leg.invite, &leg.local_tag);
                    if let Some(t) = leg.invite_txn {
                        self.respond_via_txn(t, &resp, now);
                    }
                } else if let Some(t) = leg.invite_txn {
                    // A BYE implies the ACK was sent: stop retransmitting our 2xx.
                    self.ack_server_invite(t, now);
                }
                self.events.push_back(UaEvent::Terminated {
                    leg: leg_ref,
                    by_remote: true,
                    code: None,
                });
                self.remove_leg(leg_ref);
            }
            Method::Prack => self.on_prack(now, key, &req, leg_ref, dst, transport),
            Method::Invite | Method::Update => {
                self.on_reoffer(now, key, req, leg_ref, dst, transport);
            }
            Method::Refer => self.on_refer(now, key, req, leg_ref, dst, transport),
            Method::Notify => self.on_notify(now, key, &req, leg_ref, dst, transport),
            Method::Info => {
                let resp = self.make_response(&req, 200, "OK");
                self.respond_new(now, key, &req, &resp, dst, transport);
            }
            // In a dialog of ours: reported like any MESSAGE (see message.rs).
            Method::Message => self.on_message(now, key, req, dst, d.src, transport),
            _ => {
                let resp = self.options_response(&req);
                self.respond_new(now, key, &req, &resp, dst, transport);
            }
        }
    }

    /// §11.2: what we support.
    fn options_response(&mut self, req: &Request) -> Response {
        let mut resp = self.make_response(req, 200, "OK");
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Accept", "application/sdp");
        resp.headers.push("Supported", SUPPORTED);
        resp.headers.push("User-Agent", self.cfg.user_agent.clone());
        resp
    }

    /// §13.3.1.4: 2xx with our tag, Contact and the Record-Route set; the
    /// server transaction retransmits it until the ACK.
    pub(super) fn answer(&mut self, now: Instant, leg_ref: LegRef, body: Option<Body>) {
        let (transport, peer_ip) = match self.legs.get(&leg_ref) {
            Some(l) if !l.uac && l.state == LegState::Calling => (l.transport, l.peer.ip()),
            _ => return,
        };
        let contact = self.contact(transport, peer_ip);
        if self.answer_waits_for_prack(leg_ref, &body) {
            return;
        }
        let ua = self.cfg.user_agent.clone();
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        // The early dialog of an 18x, if any, becomes the confirmed one.
        let Some(mut dialog) = leg
            .dialog
            .take()
            .or_else(|| Dialog::uas(&leg.invite, &leg.local_tag))
        else {
            return;
        };
        dialog.state = DialogState::Confirmed;
        let mut resp = Response::for_request(&leg.invite, 200, "OK");
        set_to_tag(&mut resp, &leg.invite, &leg.local_tag);
        for rr in leg.invite.headers.get_all("Record-Route") {
            resp.headers.push("Record-Route", rr);
        }
        resp.headers.push("Contact", contact);
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Supported", SUPPORTED);
        resp.headers.push("User-Agent", ua);
        leg.ext.peer_allows_update = has_token(&leg.invite.headers, "Allow", "UPDATE");
        leg.local_body = body.clone();
        leg.dialog = Some(dialog);
        leg.state = LegState::Confirmed;
        let inv_txn = leg.invite_txn;
        let invite = leg.invite.clone();
        let id = DialogId {
            call_id: leg.call_id.clone(),
            local_tag: leg.local_tag.clone(),
        };
        self.dialogs.insert(id, leg_ref);
        self.session_response_headers(leg_ref, &invite, &mut resp);
        if let Some(b) = body {
            resp.headers.push("Content-Type", b.content_type);
            resp.body = b.bytes;
        }
        if let Some(t) = inv_txn {
            self.respond_via_txn(t, &resp, now);
        }
        self.session_refreshed_by_peer(now, leg_ref, &invite);
    }

    /// The final response refusing an incoming INVITE, with its leg's transaction, when
    /// the leg can still be refused (`what` names the command in the warning if not).
    fn refusal(
        &self,
        leg_ref: LegRef,
        code: u16,
        reason: &str,
        headers: Vec<Header>,
        what: &str,
    ) -> Option<(Response, Option<u64>)> {
        let leg = self.legs.get(&leg_ref)?;
        if leg.uac || leg.state != LegState::Calling || !(300..700).contains(&code) {
            tracing::warn!(leg = leg_ref, code, command = what, "refusal ignored");
            return None;
        }
        let mut resp = Response::for_request(&leg.invite, code, reason);
        set_to_tag(&mut resp, &leg.invite, &leg.local_tag);
        for h in headers {
            resp.headers.push(h.name, h.value);
        }
        Some((resp, leg.invite_txn))
    }

    pub(super) fn reject(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        code: u16,
        reason: &str,
        headers: Vec<Header>,
    ) {
        let Some((resp, inv_txn)) = self.refusal(leg_ref, code, reason, headers, "Reject") else {
            return;
        };
        self.remove_leg(leg_ref);
        if let Some(t) = inv_txn {
            self.respond_via_txn(t, &resp, now);
        }
    }

    /// `UaTimer::Trying`: the TU took 200 ms; the caller gets its 100 before retransmitting.
    pub(super) fn trying_due(&mut self, now: Instant, leg_ref: LegRef) {
        let Some(leg) = self.legs.get(&leg_ref) else {
            return;
        };
        if leg.uac || leg.state != LegState::Calling {
            return;
        }
        let Some(id) = leg.invite_txn else {
            return;
        };
        let quiet = matches!(
            self.txns.get(&id).map(|e| &e.machine),
            Some(Machine::ServerInvite(m)) if m.last_code() == 0
        );
        if quiet {
            let trying = Response::for_request(&leg.invite, 100, "Trying");
            self.respond_via_txn(id, &trying, now);
        }
    }

    /// `UaCommand::RejectStateless`: the final response is sent once and everything about
    /// the request is forgotten: no retransmissions (Timer G), no transaction to absorb
    /// a retransmitted INVITE (it is a new request). For answers to sources nobody
    /// vouches for, which may be spoofed: one datagram out per datagram in.
    pub(super) fn reject_stateless(
        &mut self,
        leg_ref: LegRef,
        code: u16,
        reason: &str,
        headers: Vec<Header>,
    ) {
        let Some((resp, txn)) = self.refusal(leg_ref, code, reason, headers, "RejectStateless")
        else {
            return;
        };
        let Some((peer, transport)) = self.legs.get(&leg_ref).map(|l| (l.peer, l.transport)) else {
            return;
        };
        let dst = txn.and_then(|t| self.txns.get(&t)).map_or(peer, |e| e.dst);
        self.discard(leg_ref);
        self.stats.rejected += 1;
        self.send(dst, transport, resp.to_bytes(), false);
    }

    /// `UaCommand::Discard`: forget an incoming INVITE without a word (a banned source).
    pub(super) fn discard(&mut self, leg_ref: LegRef) {
        let txn = self.legs.get(&leg_ref).and_then(|l| l.invite_txn);
        self.remove_leg(leg_ref);
        if let Some(t) = txn {
            self.remove_txn(t);
        }
    }

    /// Timer H: our 2xx was never ACKed (§13.3.1.4): hang up.
    pub(super) fn uas_timeout(&mut self, now: Instant, leg_ref: LegRef, purpose: Purpose) {
        if purpose != Purpose::Invite {
            return;
        }
        let Some(leg) = self.legs.get(&leg_ref) else {
            return;
        };
        if leg.state == LegState::Confirmed {
            self.events.push_back(UaEvent::Terminated {
                leg: leg_ref,
                by_remote: false,
                code: Some(408),
            });
            self.send_bye(now, leg_ref, true);
        }
    }
}

pub(super) fn set_to_tag(resp: &mut Response, req: &Request, tag: &str) {
    if let Some(to) = req.headers.get("To")
        && req.headers.to().is_some_and(|t| t.tag().is_none())
    {
        resp.headers.set("To", crate::msg::with_tag(to, tag));
    }
}
