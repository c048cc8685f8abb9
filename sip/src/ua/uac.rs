//! The UAC core (RFC 3261 §8.1, §13.2): INVITE with digest retry (§22.2), CANCEL
//! (§9.1, including the 200/CANCEL race), ACK for 2xx (§13.2.2.4) and BYE (§15).

use std::net::SocketAddr;
use std::time::Instant;

use super::{
    Body, Leg, LegExt, LegRef, LegState, Machine, Purpose, Target, Transport, UaEvent, UserAgent,
    body_of,
};
use crate::auth::{self, Credentials, DigestChallenge};
use crate::dialog::{Dialog, DialogState};
use crate::msg::{Header, Method, Request, Response};
use crate::txn::{ClientInvite, ClientNonInvite, MethodKind, TxnKey};

#[derive(Debug)]
pub(super) struct InviteArgs {
    pub target: Target,
    pub from_uri: String,
    pub from_display: Option<String>,
    pub to_uri: String,
    pub body: Option<Body>,
    pub credentials: Option<Credentials>,
    pub extra_headers: Vec<Header>,
    pub call_id: Option<String>,
}

/// The branch of a request's top Via (empty when absent).
fn branch_of(req: &Request) -> String {
    req.headers.top_via_branch().unwrap_or_default().to_owned()
}

impl UserAgent {
    pub(super) fn invite(&mut self, now: Instant, leg: LegRef, a: InviteArgs) {
        if self.legs.contains_key(&leg) {
            tracing::warn!(leg, "Invite for a leg that exists: ignored");
            return;
        }
        let transport = a.target.transport;
        let peer_ip = a.target.addr.ip();
        let via = self.new_via(transport, peer_ip);
        let tag = self.random_hex(10);
        let call_id = match a.call_id {
            Some(id) if !id.is_empty() => id,
            _ => {
                let mut id = self.random_hex(16);
                id.push('@');
                id.push_str(&self.call_id_host(peer_ip));
                id
            }
        };
        let mut req = Request::new(Method::Invite, a.target.request_uri.clone());
        req.headers.push("Via", via);
        req.headers.push("Max-Forwards", "70");
        let from = match &a.from_display {
            Some(d) => format!("\"{}\" <{}>;tag={tag}", d.replace('"', ""), a.from_uri),
            None => {
                let mut from = String::with_capacity(a.from_uri.len() + tag.len() + 7);
                from.push('<');
                from.push_str(&a.from_uri);
                from.push_str(">;tag=");
                from.push_str(&tag);
                from
            }
        };
        req.headers.push("From", from);
        let mut to = String::with_capacity(a.to_uri.len() + 2);
        to.push('<');
        to.push_str(&a.to_uri);
        to.push('>');
        req.headers.push("To", to);
        req.headers.push("Call-ID", call_id.clone());
        req.headers.push("CSeq", "1 INVITE");
        req.headers
            .push("Contact", self.contact(transport, peer_ip));
        req.headers.push("User-Agent", self.cfg.user_agent.clone());
        req.headers.push("Allow", super::ALLOW);
        req.headers.push("Supported", super::SUPPORTED);
        self.session_invite_headers(&mut req);
        for h in a.extra_headers {
            // A B2BUA passes on the inbound Max-Forwards minus one instead of our 70
            // (and may pass on the caller's session interval).
            let replaces = ["Max-Forwards", "Session-Expires", "Min-SE"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n));
            if replaces {
                req.headers.set("Max-Forwards", h.value);
            } else {
                req.headers.push(h.name, h.value);
            }
        }
        // Our offer doubles as the answer to a session-refresh re-INVITE.
        let local_body = a.body;
        if let Some(b) = &local_body {
            req.headers.push("Content-Type", b.content_type.clone());
            req.body = b.bytes.clone();
        }
        let txn = self.start_client_invite(
            now,
            leg,
            req.clone(),
            a.target.addr,
            transport,
            Purpose::Invite,
        );
        self.legs.insert(
            leg,
            Box::new(Leg {
                uac: true,
                state: LegState::Calling,
                peer: a.target.addr,
                transport,
                call_id,
                local_tag: tag,
                invite: req,
                invite_txn: Some(txn),
                credentials: a.credentials,
                auth_tried: false,
                got_provisional: false,
                cancel_requested: false,
                cancel_sent: false,
                dialog: None,
                ack: None,
                local_body,
                silent_bye: false,
                ext: LegExt::default(),
            }),
        );
    }

    pub(super) fn start_client_invite(
        &mut self,
        now: Instant,
        leg: LegRef,
        req: Request,
        dst: SocketAddr,
        transport: Transport,
        purpose: Purpose,
    ) -> u64 {
        let key = TxnKey {
            branch: branch_of(&req),
            kind: MethodKind::Invite,
            server: false,
        };
        let m = ClientInvite::new(req, self.txn_config(transport), now);
        let bytes = m.request_bytes().to_vec();
        self.send(dst, transport, bytes, false);
        self.insert_txn(
            key,
            Machine::ClientInvite(m),
            Some(leg),
            purpose,
            dst,
            transport,
        )
    }

    pub(super) fn start_client_non_invite(
        &mut self,
        now: Instant,
        leg: LegRef,
        req: &Request,
        purpose: Purpose,
        dst: SocketAddr,
        transport: Transport,
    ) {
        let key = TxnKey {
            branch: branch_of(req),
            kind: MethodKind::of(&req.method),
            server: false,
        };
        let m = ClientNonInvite::new(req, self.txn_config(transport), now);
        let bytes = m.request_bytes().to_vec();
        self.send(dst, transport, bytes, false);
        self.insert_txn(
            key,
            Machine::ClientNonInvite(m),
            Some(leg),
            purpose,
            dst,
            transport,
        );
    }

    pub(super) fn cancel(&mut self, now: Instant, leg_ref: LegRef) {
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        match (leg.uac, leg.state) {
            (true, LegState::Calling) => {
                leg.cancel_requested = true;
                // §9.1: only once a provisional response has arrived.
                if leg.got_provisional && !leg.cancel_sent {
                    self.send_cancel(now, leg_ref);
                }
            }
            (false, LegState::Calling) => {
                self.reject(now, leg_ref, 487, "Request Terminated", Vec::new())
            }
            (_, LegState::Confirmed) => self.send_bye(now, leg_ref, false),
            (_, LegState::Terminating) => {}
        }
    }

    pub(super) fn bye(&mut self, now: Instant, leg_ref: LegRef) {
        let Some(leg) = self.legs.get(&leg_ref) else {
            return;
        };
        match (leg.uac, leg.state) {
            (_, LegState::Confirmed) => self.send_bye(now, leg_ref, false),
            (true, LegState::Calling) => self.cancel(now, leg_ref),
            (false, LegState::Calling) => {
                self.reject(now, leg_ref, 480, "Temporarily Unavailable", Vec::new())
            }
            (_, LegState::Terminating) => {}
        }
    }

    /// §9.1: CANCEL with the INVITE's Request-URI, Via (same branch), From, To,
    /// Call-ID, CSeq number and Route; its own non-INVITE client transaction.
    fn send_cancel(&mut self, now: Instant, leg_ref: LegRef) {
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        leg.cancel_sent = true;
        let inv = &leg.invite;
        let mut c = Request::new(Method::Cancel, inv.uri.clone());
        if let Some(v) = inv.headers.get("Via") {
            c.headers.push("Via", v);
        }
        c.headers.push("Max-Forwards", "70");
        for name in ["From", "To", "Call-ID"] {
            if let Some(v) = inv.headers.get(name) {
                c.headers.push(name, v);
            }
        }
        let n = inv.headers.cseq().map(|(n, _)| n).unwrap_or(1);
        c.headers.push("CSeq", format!("{n} CANCEL"));
        for r in inv.headers.get_all("Route") {
            c.headers.push("Route", r);
        }
        let (peer, transport, inv_txn) = (leg.peer, leg.transport, leg.invite_txn);
        if let Some(id) = inv_txn
            && let Some(e) = self.txns.get_mut(&id)
            && let Machine::ClientInvite(m) = &mut e.machine
        {
            m.cancel_sent(now);
            self.schedule(id);
        }
        self.start_client_non_invite(now, leg_ref, &c, Purpose::Cancel, peer, transport);
    }

    /// §15.1.1: BYE in the dialog. `silent`: the leg was already reported.
    pub(super) fn send_bye(&mut self, now: Instant, leg_ref: LegRef, silent: bool) {
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return;
        };
        let via = self.new_via(transport, peer_ip);
        let ua = self.cfg.user_agent.clone();
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(dialog) = leg.dialog.as_mut() else {
            return;
        };
        let mut req = dialog.request(Method::Bye, &via, None);
        req.headers.push("User-Agent", ua);
        let dst = dialog.next_hop().unwrap_or(leg.peer);
        leg.state = LegState::Terminating;
        leg.silent_bye = silent;
        self.start_client_non_invite(now, leg_ref, &req, Purpose::Bye, dst, transport);
    }

    /// Responses from a client transaction, for the TU.
    pub(super) fn tu_response(
        &mut self,
        now: Instant,
        leg: LegRef,
        purpose: Purpose,
        resp: Response,
    ) {
        match purpose {
            Purpose::Invite => self.invite_response(now, leg, resp),
            Purpose::Bye if resp.code >= 200 => {
                self.bye_done(leg, Some(resp.code));
            }
            Purpose::Reoffer if resp.code >= 200 => {
                self.reoffer_done(now, leg, resp.code, Some(resp));
            }
            Purpose::Refer if resp.code >= 200 => {
                self.events.push_back(UaEvent::ReferResult {
                    leg,
                    code: resp.code,
                });
            }
            _ => {}
        }
    }

    fn bye_done(&mut self, leg_ref: LegRef, code: Option<u16>) {
        let silent = self.legs.get(&leg_ref).map(|l| l.silent_bye);
        if silent == Some(false) {
            self.events.push_back(UaEvent::Terminated {
                leg: leg_ref,
                by_remote: false,
                code,
            });
        }
        self.remove_leg(leg_ref);
    }

    pub(super) fn uac_timeout(&mut self, leg_ref: LegRef, purpose: Purpose) {
        match purpose {
            Purpose::Invite => {
                let Some(leg) = self.legs.get(&leg_ref) else {
                    return;
                };
                if leg.state != LegState::Calling {
                    return;
                }
                let ev = if leg.cancel_requested {
                    UaEvent::Cancelled { leg: leg_ref }
                } else {
                    UaEvent::Failed {
                        leg: leg_ref,
                        code: 408,
                        reason: "Request Timeout".to_string(),
                        warning: None,
                    }
                };
                self.events.push_back(ev);
                self.remove_leg(leg_ref);
            }
            Purpose::Bye => self.bye_done(leg_ref, Some(408)),
            _ => {}
        }
    }

    fn invite_response(&mut self, now: Instant, leg_ref: LegRef, resp: Response) {
        let calling = self
            .legs
            .get(&leg_ref)
            .is_some_and(|l| l.state == LegState::Calling);
        if !calling || (resp.code == 422 && self.retry_with_min_se(now, leg_ref, &resp)) {
            return;
        }
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let code = resp.code;
        if code < 200 {
            leg.got_provisional = true;
            let cancel_now = leg.cancel_requested && !leg.cancel_sent;
            // RFC 3262: PRACK a reliable 18x; a retransmitted one is not reported again.
            if code > 100 && self.uac_reliable_provisional(now, leg_ref, &resp) {
                self.events.push_back(UaEvent::Progress {
                    leg: leg_ref,
                    code,
                    reason: resp.reason.clone(),
                    body: body_of(&resp.headers, &resp.body),
                });
            }
            if cancel_now {
                self.send_cancel(now, leg_ref);
            }
        } else if code < 300 {
            self.answered(now, leg_ref, resp);
        } else if (code == 401 || code == 407) && leg.credentials.is_some() && !leg.auth_tried {
            if !self.retry_with_auth(now, leg_ref, &resp) {
                self.fail(leg_ref, &resp);
            }
        } else if code == 487 && leg.cancel_requested {
            self.events.push_back(UaEvent::Cancelled { leg: leg_ref });
            self.remove_leg(leg_ref);
        } else {
            self.fail(leg_ref, &resp);
        }
    }

    fn fail(&mut self, leg_ref: LegRef, resp: &Response) {
        self.events.push_back(UaEvent::Failed {
            leg: leg_ref,
            code: resp.code,
            reason: resp.reason.clone(),
            warning: resp.headers.get("Warning").map(str::to_string),
        });
        self.remove_leg(leg_ref);
    }

    /// §13.2.2.4: build the dialog, ACK the 2xx (new branch, INVITE's CSeq number).
    fn answered(&mut self, now: Instant, leg_ref: LegRef, resp: Response) {
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return;
        };
        let via = self.new_via(transport, peer_ip);
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(mut dialog) = Dialog::uac(&leg.invite, &resp) else {
            tracing::warn!(leg = leg_ref, "2xx without the headers to form a dialog");
            return;
        };
        dialog.state = DialogState::Confirmed;
        // PRACKs in the early dialog used CSeq numbers: keep counting from there.
        if let Some(early) = leg
            .ext
            .early
            .iter()
            .find(|e| e.dialog.remote_tag == dialog.remote_tag)
        {
            dialog.local_cseq = dialog.local_cseq.max(early.dialog.local_cseq);
        }
        leg.ext.early.clear();
        let n = leg.invite.headers.cseq().map(|(n, _)| n).unwrap_or(1);
        let mut ack = dialog.request(Method::Ack, &via, Some(n));
        // Credentials that opened the dialog go on the ACK too (§22.1).
        for name in ["Authorization", "Proxy-Authorization"] {
            if let Some(v) = leg.invite.headers.get(name) {
                ack.headers.push(name, v);
            }
        }
        let dst = dialog.next_hop().unwrap_or(leg.peer);
        let bytes = ack.to_bytes();
        leg.ack = Some((dst, bytes.clone()));
        leg.dialog = Some(dialog);
        leg.ext.remote_body = body_of(&resp.headers, &resp.body);
        leg.ext.peer_allows_update = super::has_token(&resp.headers, "Allow", "UPDATE");
        leg.state = LegState::Confirmed;
        let cancelled = leg.cancel_requested;
        let id = crate::dialog::DialogId {
            call_id: leg.call_id.clone(),
            local_tag: leg.local_tag.clone(),
        };
        self.dialogs.insert(id, leg_ref);
        self.send(dst, transport, bytes, false);
        if cancelled {
            // The 200 raced our CANCEL: the call is up, so hang it up (§9.1).
            self.events.push_back(UaEvent::Cancelled { leg: leg_ref });
            self.send_bye(now, leg_ref, true);
        } else {
            if let Some(snapshot) = self.snapshot(leg_ref) {
                self.events.push_back(UaEvent::DialogEstablished {
                    leg: leg_ref,
                    snapshot: Box::new(snapshot),
                });
            }
            self.events.push_back(UaEvent::Answered {
                leg: leg_ref,
                body: body_of(&resp.headers, &resp.body),
            });
            self.session_refreshed_by_us(now, leg_ref, Some(&resp));
        }
    }

    fn snapshot(&self, leg_ref: LegRef) -> Option<super::DialogSnapshot> {
        let leg = self.legs.get(&leg_ref)?;
        Some(super::DialogSnapshot {
            dialog: leg.dialog.clone()?,
            peer: leg.peer,
            transport: leg.transport,
        })
    }

    /// A BYE in a dialog known only from a snapshot: rebuild the leg as confirmed and end it.
    pub(super) fn bye_restored(&mut self, now: Instant, leg_ref: LegRef, s: super::DialogSnapshot) {
        if self.legs.contains_key(&leg_ref) {
            tracing::warn!(leg = leg_ref, "ByeRestored for a leg that exists: ignored");
            return;
        }
        let mut dialog = s.dialog;
        dialog.state = DialogState::Confirmed;
        // Past anything the previous process might have sent after the snapshot.
        dialog.local_cseq = dialog.local_cseq.saturating_add(100);
        let id = dialog.id();
        self.legs.insert(
            leg_ref,
            Box::new(Leg {
                uac: true,
                state: LegState::Confirmed,
                peer: s.peer,
                transport: s.transport,
                call_id: dialog.call_id.clone(),
                local_tag: dialog.local_tag.clone(),
                invite: Request::new(Method::Invite, dialog.remote_target.clone()),
                invite_txn: None,
                credentials: None,
                auth_tried: false,
                got_provisional: true,
                cancel_requested: false,
                cancel_sent: false,
                dialog: Some(dialog),
                ack: None,
                local_body: None,
                silent_bye: false,
                ext: LegExt::default(),
            }),
        );
        self.dialogs.insert(id, leg_ref);
        self.send_bye(now, leg_ref, false);
    }

    /// §22.2: resend the INVITE once with credentials (new CSeq and branch, same
    /// Call-ID and From tag). False when the challenge cannot be answered.
    fn retry_with_auth(&mut self, now: Instant, leg_ref: LegRef, resp: &Response) -> bool {
        let (hname, aname) = if resp.code == 401 {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        let Some(ch) = resp
            .headers
            .get_all(hname)
            .find_map(|v| DigestChallenge::parse(v).ok())
        else {
            return false;
        };
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return false;
        };
        let via = self.new_via(transport, peer_ip);
        let cnonce = self.random_hex(16);
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return false;
        };
        let Some(creds) = leg.credentials.as_ref() else {
            return false;
        };
        let value = auth::authorization(&ch, creds, &Method::Invite, &leg.invite.uri, &cnonce, 1);
        let mut req = leg.invite.clone();
        let n = req.headers.cseq().map(|(n, _)| n).unwrap_or(1);
        req.headers.set("Via", via);
        req.headers
            .set("CSeq", format!("{} INVITE", n.wrapping_add(1)));
        req.headers.set(aname, value);
        leg.auth_tried = true;
        leg.got_provisional = false;
        leg.cancel_sent = false;
        leg.invite = req.clone();
        let (peer, transport) = (leg.peer, leg.transport);
        let id = self.start_client_invite(now, leg_ref, req, peer, transport, Purpose::Invite);
        if let Some(leg) = self.legs.get_mut(&leg_ref) {
            leg.invite_txn = Some(id);
        }
        true
    }

    /// A response from the network: to its client transaction, or (2xx to
    /// INVITE) to its dialog for a re-ACK, or dropped.
    pub(super) fn on_response(&mut self, now: Instant, resp: Response) {
        let Some((_, method)) = resp.headers.cseq() else {
            self.stats.strays_dropped += 1;
            return;
        };
        let branch = resp.headers.top_via_branch().unwrap_or_default().to_owned();
        let key = TxnKey {
            branch,
            kind: MethodKind::of(&method),
            server: false,
        };
        if let Some(&id) = self.txn_index.get(&key) {
            let Some(e) = self.txns.get_mut(&id) else {
                return;
            };
            let mut out = std::mem::take(&mut self.scratch);
            match &mut e.machine {
                Machine::ClientInvite(m) => m.on_response(resp, now, &mut out),
                Machine::ClientNonInvite(m) => m.on_response(resp, now, &mut out),
                _ => {}
            }
            self.run_outputs(id, &mut out, now);
            self.scratch = out;
            self.schedule(id);
            return;
        }
        if method == Method::Invite && (200..300).contains(&resp.code) {
            // §13.2.2.4: a retransmitted 2xx; the transaction is gone, the dialog ACKs.
            let from_tag = resp
                .headers
                .from()
                .and_then(|f| f.tag().map(str::to_string));
            if let (Some(call_id), Some(local_tag)) = (resp.headers.call_id(), from_tag) {
                let id = crate::dialog::DialogId {
                    call_id: call_id.to_string(),
                    local_tag,
                };
                let to_tag = resp.headers.to().and_then(|t| t.tag().map(str::to_string));
                if let Some(&leg_ref) = self.dialogs.get(&id)
                    && let Some(leg) = self.legs.get(&leg_ref)
                    && let Some((dst, ack)) = leg.ack.clone()
                {
                    let transport = leg.transport;
                    let same =
                        leg.dialog.as_ref().map(|d| d.remote_tag.as_str()) == to_tag.as_deref();
                    if same {
                        self.send(dst, transport, ack, true);
                    } else {
                        self.hang_up_fork(now, leg_ref, &resp);
                    }
                    return;
                }
            }
        }
        self.stats.strays_dropped += 1;
        tracing::debug!(code = resp.code, "stray response dropped");
    }

    /// §13.2.2.4: a 2xx from another fork after we already have a dialog: ACK it
    /// and BYE that second dialog at once (we only keep the first).
    fn hang_up_fork(&mut self, now: Instant, leg_ref: LegRef, resp: &Response) {
        let Some((invite, peer, transport)) = self
            .legs
            .get(&leg_ref)
            .map(|l| (l.invite.clone(), l.peer, l.transport))
        else {
            return;
        };
        let Some(mut d) = Dialog::uac(&invite, resp) else {
            return;
        };
        let n = invite.headers.cseq().map(|(n, _)| n).unwrap_or(1);
        let dst = d.next_hop().unwrap_or(peer);
        let via = self.new_via(transport, peer.ip());
        let ack = d.request(Method::Ack, &via, Some(n));
        self.send(dst, transport, ack.to_bytes(), false);
        let via = self.new_via(transport, peer.ip());
        let bye = d.request(Method::Bye, &via, None);
        let key = TxnKey {
            branch: branch_of(&bye),
            kind: MethodKind::Other,
            server: false,
        };
        let m = ClientNonInvite::new(&bye, self.txn_config(transport), now);
        let bytes = m.request_bytes().to_vec();
        self.send(dst, transport, bytes, false);
        self.insert_txn(
            key,
            Machine::ClientNonInvite(m),
            None,
            Purpose::Other,
            dst,
            transport,
        );
    }
}
