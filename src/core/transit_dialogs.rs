//! Both legs' SIP dialogs of a transit call, kept for the call row so that after a crash
//! the next process can BYE the caller and the callee (see `close_out_live_calls`).
//!
//! Nothing here costs a write of its own: the dialogs go into the row with the
//! `in_progress` status write the call makes anyway. The callee's dialog is reported by
//! the user agent just before its answer; the caller's is the one our 200 creates, built
//! from its INVITE and our To tag when we answer (before its ACK: a crash in between must
//! still end it). The INVITE is kept until then and dropped after.

use std::net::SocketAddr;

use sip::msg::Request;
use sip::ua::{DialogSnapshot, Transport};

#[derive(Debug, Default)]
pub(crate) struct LegDialogs {
    /// The caller's INVITE, our To tag, its source and transport, until we answer.
    a_invite: Option<(Box<Request>, String, SocketAddr, Transport)>,
    a: Option<DialogSnapshot>,
    b: Option<DialogSnapshot>,
}

impl LegDialogs {
    pub(crate) fn new(
        invite: Box<Request>,
        local_tag: String,
        source: SocketAddr,
        transport: Transport,
    ) -> Self {
        Self {
            a_invite: Some((invite, local_tag, source, transport)),
            a: None,
            b: None,
        }
    }

    /// The callee answered: its dialog (from `UaEvent::DialogEstablished`).
    /// Where the caller's INVITE came from (until we answer).
    pub(crate) fn a_source(&self) -> Option<std::net::IpAddr> {
        self.a_invite.as_ref().map(|(_, _, source, _)| source.ip())
    }

    pub(crate) fn b_established(&mut self, snapshot: DialogSnapshot) {
        self.b = Some(snapshot);
    }

    /// The call is answered (our 200 to the caller is on its way): both dialogs as the
    /// call row's `sip_dialog`.
    pub(crate) fn answered_json(&mut self) -> Option<String> {
        if let Some((invite, tag, source, transport)) = self.a_invite.take() {
            self.a = DialogSnapshot::incoming(&invite, &tag, source, transport);
        }
        let legs: Vec<&DialogSnapshot> = self.a.iter().chain(self.b.iter()).collect();
        super::dialog::to_json_all(&legs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_legs_once_answered() {
        let mut invite = Request::new(sip::msg::Method::Invite, "sip:+14155552671@10.0.0.9");
        invite
            .headers
            .push("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1");
        invite
            .headers
            .push("From", "<sip:+442071838750@10.0.0.1>;tag=a1");
        invite.headers.push("To", "<sip:+14155552671@10.0.0.9>");
        invite.headers.push("Call-ID", "c1@10.0.0.1");
        invite.headers.push("CSeq", "1 INVITE");
        invite.headers.push("Contact", "<sip:caller@10.0.0.1:5062>");
        let source: SocketAddr = "10.0.0.1:5060".parse().unwrap_or_else(|_| unreachable!());
        let mut d = LegDialogs::new(Box::new(invite), "ours".into(), source, Transport::Udp);
        let Some(b) = d.answered_json().as_deref().and_then(|j| {
            let all = super::super::dialog::all_from_json(j);
            all.into_iter().next()
        }) else {
            panic!("the caller's dialog alone before the callee's is known");
        };
        assert_eq!(b.dialog.local_tag, "ours");
        assert_eq!(b.dialog.remote_tag, "a1");
        assert_eq!(b.dialog.remote_target, "sip:caller@10.0.0.1:5062");
        let mut callee = b.clone();
        callee.dialog.call_id = "c2@switch".into();
        d.b_established(callee);
        let json = d.answered_json().unwrap_or_default();
        let all = super::super::dialog::all_from_json(&json);
        assert_eq!(all.len(), 2, "{json}");
        assert_eq!(all[0].dialog.call_id, "c1@10.0.0.1");
        assert_eq!(all[1].dialog.call_id, "c2@switch");
    }
}
