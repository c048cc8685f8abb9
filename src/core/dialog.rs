//! The SIP dialog of an answered call as JSON in the call row, so that after a crash the
//! next process can end the call at the carrier with a BYE (RFC 3261 §15: a dialog is
//! ended by BYE, and a carrier keeps billing one that nobody ends).

use serde::{Deserialize, Serialize};
use sip::dialog::{Dialog, DialogState};
use sip::ua::{DialogSnapshot, Transport};

#[derive(Debug, Serialize, Deserialize)]
struct DialogJson {
    call_id: String,
    local_tag: String,
    remote_tag: String,
    local_party: String,
    remote_party: String,
    local_cseq: u32,
    remote_target: String,
    route_set: Vec<String>,
    peer: String,
    transport: String,
}

pub fn to_json(s: &DialogSnapshot) -> Option<String> {
    let d = &s.dialog;
    serde_json::to_string(&DialogJson {
        call_id: d.call_id.clone(),
        local_tag: d.local_tag.clone(),
        remote_tag: d.remote_tag.clone(),
        local_party: d.local_party.clone(),
        remote_party: d.remote_party.clone(),
        local_cseq: d.local_cseq,
        remote_target: d.remote_target.clone(),
        route_set: d.route_set.clone(),
        peer: s.peer.to_string(),
        transport: match s.transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
        .to_owned(),
    })
    .ok()
}

pub fn from_json(text: &str) -> Option<DialogSnapshot> {
    let j: DialogJson = serde_json::from_str(text).ok()?;
    Some(DialogSnapshot {
        dialog: Dialog {
            state: DialogState::Confirmed,
            call_id: j.call_id,
            local_tag: j.local_tag,
            remote_tag: j.remote_tag,
            local_party: j.local_party,
            remote_party: j.remote_party,
            local_cseq: j.local_cseq,
            remote_cseq: None,
            remote_target: j.remote_target,
            route_set: j.route_set,
        },
        peer: j.peer.parse().ok()?,
        transport: match j.transport.as_str() {
            "tcp" => Transport::Tcp,
            _ => Transport::Udp,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = DialogSnapshot {
            dialog: Dialog {
                state: DialogState::Confirmed,
                call_id: "abc@127.0.0.1".into(),
                local_tag: "l1".into(),
                remote_tag: "r1".into(),
                local_party: "<sip:+12025551234@127.0.0.1>;tag=l1".into(),
                remote_party: "<sip:+14155552671@127.0.0.1:5070>;tag=r1".into(),
                local_cseq: 1,
                remote_cseq: None,
                remote_target: "sip:carrier@127.0.0.1:5070".into(),
                route_set: vec!["<sip:proxy@127.0.0.1;lr>".into()],
            },
            peer: "127.0.0.1:5070".parse().unwrap(),
            transport: Transport::Tcp,
        };
        assert_eq!(from_json(&to_json(&s).unwrap()), Some(s));
        assert_eq!(from_json("{not json"), None);
    }
}
