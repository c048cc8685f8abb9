//! RFC 3261 §12: dialogs.
//!
//! A dialog is identified by Call-ID + local tag + remote tag; the UA indexes them
//! by (Call-ID, local tag) since our tags are unique. It holds the CSeq spaces,
//! the remote target (Contact) and the route set (Record-Route, reversed at the
//! UAC), and builds in-dialog requests (§12.2.1.1). Only loose routing (`;lr`)
//! is supported: the Request-URI is always the remote target.

use std::net::SocketAddr;

use crate::msg::{Method, NameAddr, Request, Response, SipUri};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    Early,
    Confirmed,
    Terminated,
}

/// The (Call-ID, local tag) pair under which the UA files a dialog.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DialogId {
    pub call_id: String,
    pub local_tag: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dialog {
    pub state: DialogState,
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: String,
    /// Our From (UAC) / To (UAS) header value, with our tag.
    pub local_party: String,
    /// Their To (UAC) / From (UAS) header value, with their tag.
    pub remote_party: String,
    pub local_cseq: u32,
    pub remote_cseq: Option<u32>,
    pub remote_target: String,
    pub route_set: Vec<String>,
}

impl Dialog {
    pub fn id(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
        }
    }

    /// §12.1.2: the UAC side, from our INVITE and a response carrying a To tag.
    /// `None` when mandatory headers are missing.
    pub fn uac(invite: &Request, resp: &Response) -> Option<Dialog> {
        let from = invite.headers.from()?;
        let to = resp.headers.to()?;
        // A 2xx without a To tag is broken, but must still be ACKed.
        let remote_tag = to.tag().unwrap_or_default().to_string();
        let local_tag = from.tag()?.to_string();
        let mut route_set: Vec<String> = resp
            .headers
            .get_all("Record-Route")
            .map(str::to_string)
            .collect();
        route_set.reverse();
        let remote_target = resp
            .headers
            .contact()
            .map(|c| c.uri)
            .unwrap_or_else(|| invite.uri.clone());
        Some(Dialog {
            state: if resp.code < 200 {
                DialogState::Early
            } else {
                DialogState::Confirmed
            },
            call_id: invite.headers.call_id()?.to_string(),
            local_tag,
            remote_tag,
            local_party: invite.headers.get("From")?.to_string(),
            remote_party: resp.headers.get("To")?.to_string(),
            local_cseq: invite.headers.cseq()?.0,
            remote_cseq: None,
            remote_target,
            route_set,
        })
    }

    /// §12.1.1: the UAS side, from the INVITE and the tag we put in our To.
    pub fn uas(invite: &Request, local_tag: &str) -> Option<Dialog> {
        let from = invite.headers.from()?;
        let remote_tag = from.tag().unwrap_or_default().to_string();
        let route_set = invite
            .headers
            .get_all("Record-Route")
            .map(str::to_string)
            .collect();
        let remote_target = invite
            .headers
            .contact()
            .map(|c| c.uri)
            .unwrap_or_else(|| from.uri.clone());
        Some(Dialog {
            state: DialogState::Early,
            call_id: invite.headers.call_id()?.to_string(),
            local_tag: local_tag.to_string(),
            remote_tag,
            local_party: crate::msg::with_tag(invite.headers.get("To")?, local_tag),
            remote_party: invite.headers.get("From")?.to_string(),
            local_cseq: 0,
            remote_cseq: invite.headers.cseq().map(|(n, _)| n),
            remote_target,
            route_set,
        })
    }

    /// §12.2.1.1: a new in-dialog request. `via` is the full Via value (with a
    /// fresh branch). CSeq is incremented, except for ACK, which takes `ack_cseq`.
    pub fn request(&mut self, method: Method, via: &str, ack_cseq: Option<u32>) -> Request {
        let cseq = match (&method, ack_cseq) {
            (Method::Ack, Some(n)) => n,
            _ => {
                self.local_cseq = self.local_cseq.wrapping_add(1);
                self.local_cseq
            }
        };
        let mut req = Request::new(method.clone(), self.remote_target.clone());
        req.headers.push("Via", via);
        req.headers.push("Max-Forwards", "70");
        req.headers.push("From", self.local_party.clone());
        req.headers.push("To", self.remote_party.clone());
        req.headers.push("Call-ID", self.call_id.clone());
        let mut cseq_value = String::with_capacity(24);
        crate::msg::push_decimal(&mut cseq_value, u64::from(cseq));
        cseq_value.push(' ');
        cseq_value.push_str(method.as_str());
        req.headers.push("CSeq", cseq_value);
        for r in &self.route_set {
            req.headers.push("Route", r.clone());
        }
        req
    }

    /// §12.2.2: an in-dialog request from the peer. Returns false when its CSeq
    /// is lower than the last one seen (out of order: answer 500).
    pub fn accept_remote_cseq(&mut self, cseq: u32) -> bool {
        match self.remote_cseq {
            Some(last) if cseq < last => false,
            _ => {
                self.remote_cseq = Some(cseq);
                true
            }
        }
    }

    /// Where in-dialog requests go: the first route, else the remote target, when
    /// it names an IP literal (no DNS in a sans-IO crate); `None` otherwise.
    pub fn next_hop(&self) -> Option<SocketAddr> {
        let uri = match self.route_set.first() {
            Some(r) => NameAddr::parse(r).ok()?.uri,
            None => self.remote_target.clone(),
        };
        let uri = SipUri::parse(&uri).ok()?;
        let host = uri.host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host.parse().ok()?;
        Some(SocketAddr::new(ip, uri.port.unwrap_or(5060)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite() -> Request {
        let mut r = Request::new(Method::Invite, "sip:bob@10.0.0.2");
        r.headers
            .push("Via", "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1");
        r.headers.push("From", "<sip:alice@10.0.0.1>;tag=a1");
        r.headers.push("To", "<sip:bob@10.0.0.2>");
        r.headers.push("Call-ID", "c1@10.0.0.1");
        r.headers.push("CSeq", "7 INVITE");
        r.headers.push("Contact", "<sip:alice@10.0.0.1:5062>");
        r
    }

    fn ok(req: &Request) -> Response {
        let mut resp = Response::for_request(req, 200, "OK");
        resp.headers.set("To", "<sip:bob@10.0.0.2>;tag=b2");
        resp.headers.push("Record-Route", "<sip:p1.example;lr>");
        resp.headers.push("Record-Route", "<sip:10.0.0.9:5080;lr>");
        resp.headers.push("Contact", "<sip:bob@10.0.0.2:5070>");
        resp
    }

    #[test]
    fn uac_dialog_reverses_route_set_and_builds_bye_and_ack() {
        let inv = invite();
        let mut d = Dialog::uac(&inv, &ok(&inv)).unwrap();
        assert_eq!(d.state, DialogState::Confirmed);
        assert_eq!(d.remote_tag, "b2");
        assert_eq!(d.remote_target, "sip:bob@10.0.0.2:5070");
        assert_eq!(
            d.route_set,
            vec!["<sip:10.0.0.9:5080;lr>", "<sip:p1.example;lr>"]
        );
        assert_eq!(d.next_hop(), Some("10.0.0.9:5080".parse().unwrap()));
        let ack = d.request(
            Method::Ack,
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKnew",
            Some(7),
        );
        assert_eq!(ack.headers.cseq(), Some((7, Method::Ack)));
        assert_eq!(ack.uri, "sip:bob@10.0.0.2:5070");
        let bye = d.request(Method::Bye, "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb", None);
        assert_eq!(bye.headers.cseq(), Some((8, Method::Bye)));
        assert_eq!(bye.headers.to().unwrap().tag(), Some("b2"));
        assert_eq!(bye.headers.from().unwrap().tag(), Some("a1"));
        assert_eq!(bye.headers.get_all("Route").count(), 2);
    }

    #[test]
    fn uas_dialog_keeps_route_order_and_checks_cseq() {
        let mut inv = invite();
        inv.headers.push("Record-Route", "<sip:p1.example;lr>");
        let mut d = Dialog::uas(&inv, "x9").unwrap();
        assert_eq!(d.remote_target, "sip:alice@10.0.0.1:5062");
        assert_eq!(d.local_party, "<sip:bob@10.0.0.2>;tag=x9");
        assert!(d.accept_remote_cseq(8));
        assert!(!d.accept_remote_cseq(6));
        let bye = d.request(Method::Bye, "SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKq", None);
        assert_eq!(bye.uri, "sip:alice@10.0.0.1:5062");
        assert_eq!(bye.headers.cseq(), Some((1, Method::Bye)));
        assert_eq!(d.next_hop(), None, "p1.example is not an IP literal");
    }
}
