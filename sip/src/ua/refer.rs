//! REFER (RFC 3515) with its implicit subscription, inside a dialog, both ways.
//!
//! Incoming: `Refer` goes to the TU, which answers with `ReferResponse`. After a
//! 2xx the UA itself sends the first NOTIFY (`SIP/2.0 100 Trying`, active), which
//! RFC 3515 §2.4.4 requires at once; the TU reports progress with `Notify`.
//!
//! Outgoing: `Refer` → `ReferResult` on the final response; NOTIFYs for it are
//! answered 200 here and reported as `ReferNotify`.

use std::net::SocketAddr;
use std::time::Instant;

use super::{LegRef, Machine, Purpose, Transport, UaEvent, UserAgent};
use crate::msg::{Method, Request, default_reason};
use crate::txn::{ServerNonInvite, TxnKey};

/// A REFER from the peer waiting for the TU's answer.
#[derive(Debug)]
pub(super) struct InRefer {
    id: u64,
    pub(super) txn: u64,
    req: Request,
}

/// `SIP/2.0 200 OK` (a message/sipfrag status line) → 200.
fn sipfrag_code(body: &[u8]) -> Option<u16> {
    let line = body.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut it = line.split_ascii_whitespace();
    if it.next()? != "SIP/2.0" {
        return None;
    }
    it.next()?.parse().ok().filter(|c| (100..700).contains(c))
}

impl UserAgent {
    /// A REFER in a dialog (CSeq already checked).
    pub(super) fn on_refer(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: Request,
        leg_ref: LegRef,
        dst: SocketAddr,
        transport: Transport,
    ) {
        let cfg = self.txn_config(transport);
        let txn = self.insert_txn(
            key,
            Machine::ServerNonInvite(ServerNonInvite::new(cfg)),
            Some(leg_ref),
            Purpose::Other,
            dst,
            transport,
        );
        let Some(refer_to) = req.headers.get("Refer-To").map(str::to_string) else {
            // §2.4.1: exactly one Refer-To.
            let resp = self.make_response(&req, 400, "Bad Request: missing Refer-To");
            self.respond_via_txn(txn, &resp, now);
            return;
        };
        let referred_by = req.headers.get("Referred-By").map(str::to_string);
        let id = self.next_reoffer;
        self.next_reoffer += 1;
        if let Some(leg) = self.legs.get_mut(&leg_ref) {
            leg.ext.refer_in.push(InRefer { id, txn, req });
        }
        self.events.push_back(UaEvent::Refer {
            leg: leg_ref,
            id,
            refer_to,
            referred_by,
        });
    }

    /// `UaCommand::ReferResponse`; a 2xx starts the implicit subscription.
    pub(super) fn refer_response(&mut self, now: Instant, leg_ref: LegRef, id: u64, code: u16) {
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(pos) = leg.ext.refer_in.iter().position(|r| r.id == id) else {
            tracing::warn!(leg = leg_ref, id, "no such pending REFER");
            return;
        };
        if !(200..700).contains(&code) {
            tracing::warn!(leg = leg_ref, code, "ReferResponse needs a final code");
            return;
        }
        let pending = leg.ext.refer_in.remove(pos);
        let transport = leg.transport;
        let peer_ip = leg.peer.ip();
        let mut resp = self.make_response(&pending.req, code, default_reason(code));
        if code < 300 {
            resp.headers
                .push("Contact", self.contact(transport, peer_ip));
        }
        self.respond_via_txn(pending.txn, &resp, now);
        if code < 300 {
            self.notify(now, leg_ref, 100, "Trying", false);
        }
    }

    /// `UaCommand::Notify`: the referred request's progress as message/sipfrag.
    pub(super) fn notify(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        status_code: u16,
        reason: &str,
        terminated: bool,
    ) {
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return;
        };
        let via = self.new_via(transport, peer_ip);
        let contact = self.contact(transport, peer_ip);
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(dialog) = leg.dialog.as_mut() else {
            tracing::warn!(leg = leg_ref, "Notify without a dialog");
            return;
        };
        let mut req = dialog.request(Method::Notify, &via, None);
        let dst = dialog.next_hop().unwrap_or(leg.peer);
        req.headers.push("Contact", contact);
        req.headers.push("Event", "refer");
        req.headers.push(
            "Subscription-State",
            if terminated {
                "terminated;reason=noresource"
            } else {
                "active;expires=60"
            },
        );
        req.headers
            .push("Content-Type", "message/sipfrag;version=2.0");
        req.body = format!("SIP/2.0 {status_code} {reason}\r\n").into();
        self.start_client_non_invite(now, leg_ref, &req, Purpose::Other, dst, transport);
    }

    /// `UaCommand::Refer`: REFER in the dialog; `ReferResult` follows.
    pub(super) fn send_refer(&mut self, now: Instant, leg_ref: LegRef, refer_to: &str) {
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return;
        };
        let via = self.new_via(transport, peer_ip);
        let contact = self.contact(transport, peer_ip);
        let ua = self.cfg.user_agent.clone();
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(dialog) = leg.dialog.as_mut() else {
            tracing::warn!(leg = leg_ref, "Refer without a dialog");
            return;
        };
        let mut req = dialog.request(Method::Refer, &via, None);
        let dst = dialog.next_hop().unwrap_or(leg.peer);
        let target = if refer_to.starts_with('<') || refer_to.contains('"') {
            refer_to.to_string()
        } else {
            format!("<{refer_to}>")
        };
        req.headers.push("Contact", contact);
        req.headers.push("Refer-To", target);
        req.headers.push("User-Agent", ua);
        self.start_client_non_invite(now, leg_ref, &req, Purpose::Refer, dst, transport);
    }

    /// A NOTIFY in a dialog: refer progress is reported, other packages get 489.
    pub(super) fn on_notify(
        &mut self,
        now: Instant,
        key: TxnKey,
        req: &Request,
        leg_ref: LegRef,
        dst: SocketAddr,
        transport: Transport,
    ) {
        let event = req
            .headers
            .get("Event")
            .and_then(|e| e.split(';').next())
            .map(str::trim)
            .unwrap_or("");
        if !event.eq_ignore_ascii_case("refer") {
            let resp = self.make_response(req, 489, "Bad Event");
            self.respond_new(now, key, req, &resp, dst, transport);
            return;
        }
        let resp = self.make_response(req, 200, "OK");
        self.respond_new(now, key, req, &resp, dst, transport);
        let terminated = req.headers.get("Subscription-State").is_some_and(|s| {
            s.trim_start()
                .to_ascii_lowercase()
                .starts_with("terminated")
        });
        let Some(status_code) = sipfrag_code(&req.body) else {
            tracing::debug!(leg = leg_ref, "refer NOTIFY without a sipfrag status line");
            return;
        };
        self.events.push_back(UaEvent::ReferNotify {
            leg: leg_ref,
            status_code,
            terminated,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::sipfrag_code;

    #[test]
    fn sipfrag_status_line() {
        assert_eq!(sipfrag_code(b"SIP/2.0 180 Ringing\r\n"), Some(180));
        assert_eq!(sipfrag_code(b"SIP/2.0 603 Declined"), Some(603));
        assert_eq!(sipfrag_code(b"INVITE sip:x SIP/2.0\r\n"), None);
        assert_eq!(sipfrag_code(b"SIP/2.0 99 Odd"), None);
        assert_eq!(sipfrag_code(b""), None);
    }
}
