//! The SIP dialog of an answered call as JSON in the call row, so that after a crash the
//! next process can end the call at the carrier with a BYE (RFC 3261 §15: a dialog is
//! ended by BYE, and a carrier keeps billing one that nobody ends). An outbound call has
//! one dialog (a JSON object); a transit call has two, the caller's and the callee's (a
//! JSON array of them).

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
    serde_json::to_string(&json_of(s)).ok()
}

/// Several dialogs (a transit call's legs) as one JSON array; None when there are none.
pub fn to_json_all(dialogs: &[&DialogSnapshot]) -> Option<String> {
    if dialogs.is_empty() {
        return None;
    }
    let all: Vec<DialogJson> = dialogs.iter().map(|s| json_of(s)).collect();
    serde_json::to_string(&all).ok()
}

fn json_of(s: &DialogSnapshot) -> DialogJson {
    let d = &s.dialog;
    DialogJson {
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
    }
}

/// Every dialog in a stored value: one object or an array of them. Entries that do not
/// parse are skipped (a BYE that cannot be addressed is not sent).
pub fn all_from_json(text: &str) -> Vec<DialogSnapshot> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        One(Box<DialogJson>),
        Many(Vec<serde_json::Value>),
    }
    match serde_json::from_str::<Stored>(text) {
        Ok(Stored::One(j)) => snapshot_of(*j).into_iter().collect(),
        Ok(Stored::Many(all)) => all
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .filter_map(snapshot_of)
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub fn from_json(text: &str) -> Option<DialogSnapshot> {
    snapshot_of(serde_json::from_str(text).ok()?)
}

fn snapshot_of(j: DialogJson) -> Option<DialogSnapshot> {
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
        assert_eq!(from_json(&to_json(&s).unwrap()), Some(s.clone()));
        assert_eq!(from_json("{not json"), None);
        assert_eq!(all_from_json(&to_json(&s).unwrap()), vec![s.clone()]);
        let mut other = s.clone();
        other.dialog.local_tag = "l2".into();
        other.transport = Transport::Udp;
        let both = to_json_all(&[&s, &other]).unwrap();
        assert_eq!(all_from_json(&both), vec![s, other]);
        assert_eq!(to_json_all(&[]), None);
        assert!(all_from_json("[1, {\"bad\": true}]").is_empty());
        assert!(all_from_json("nonsense").is_empty());
    }
}
