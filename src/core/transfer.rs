//! What a blind transfer asked for by API needs before it reaches a call task: which party
//! of a transit call is transferred, and a Refer-To the far end can dial.

use super::trunk::Trunk;

/// The party of a transit call the API transfers: it stays connected and ends up talking
/// to the target, while the other party is released. `Caller` (the default) is the party
/// that called in; `Callee` the one the switch called out to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TransferLeg {
    #[default]
    Caller,
    Callee,
}

impl TransferLeg {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferLeg::Caller => "caller",
            TransferLeg::Callee => "callee",
        }
    }
}

/// The E.164 number in `target` (`+…` or `tel:+…`), if that is what it is.
pub fn e164_of(target: &str) -> Option<&str> {
    let number = target.strip_prefix("tel:").unwrap_or(target);
    // A tel: URI may carry parameters (`;phone-context` is for local numbers only).
    let number = number.split(';').next().unwrap_or_default();
    dialplan::e164::is_e164(number).then_some(number)
}

/// The Refer-To URI for `target` sent to a far end on `trunk`: an E.164 number (or a
/// global tel: URI, which most carriers cannot dial) becomes
/// `sip:+…@<trunk host>:<port>[;transport=tcp];user=phone` (RFC 3261 §19.1.1), the
/// Request-URI we would send that carrier for the number; any other URI goes as given.
pub fn refer_uri(target: &str, trunk: &Trunk) -> String {
    match e164_of(target) {
        Some(number) => format!("{};user=phone", trunk.request_uri(number)),
        None => target.to_owned(),
    }
}

/// Whether an `Allow` header value lists REFER; `None` when there was no header (the far
/// end said nothing, so a REFER is worth a try).
pub fn allows_refer(allow: Option<&str>) -> Option<bool> {
    allow.map(|a| a.split(',').any(|m| m.trim().eq_ignore_ascii_case("REFER")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(uri: &str) -> Trunk {
        trunk_toml(&format!("name = \"t\"\nuri = \"{uri}\"\n"))
    }

    fn trunk_toml(toml: &str) -> Trunk {
        let config: crate::config::TrunkConfig = toml::from_str(toml).expect("trunk config");
        Trunk::new(config).expect("trunk")
    }

    #[test]
    fn e164_targets_become_sip_uris_on_the_trunk_host() {
        let t = trunk("sip:carrier.example.net");
        assert_eq!(
            refer_uri("+14155550000", &t),
            "sip:+14155550000@carrier.example.net:5060;user=phone"
        );
        assert_eq!(
            refer_uri("tel:+14155550000", &t),
            "sip:+14155550000@carrier.example.net:5060;user=phone"
        );
        let t = trunk("sip:127.0.0.1:5070");
        assert_eq!(
            refer_uri("+442071838750", &t),
            "sip:+442071838750@127.0.0.1:5070;user=phone"
        );
        // The carrier takes TCP only: so does the URI.
        let tcp = trunk_toml("name = \"t\"\nuri = \"sip:sbc.example\"\ntransport = \"tcp\"\n");
        assert_eq!(
            refer_uri("+14155550000", &tcp),
            "sip:+14155550000@sbc.example:5060;transport=tcp;user=phone"
        );
        // A SIP URI, or a tel: URI that is not global, goes as given.
        assert_eq!(refer_uri("sip:bob@pbx.example", &t), "sip:bob@pbx.example");
        assert_eq!(
            refer_uri("tel:7042;phone-context=example.com", &t),
            "tel:7042;phone-context=example.com"
        );
    }

    #[test]
    fn allow_header_says_whether_refer_is_worth_sending() {
        assert_eq!(allows_refer(None), None);
        assert_eq!(allows_refer(Some("INVITE, ACK, BYE, refer")), Some(true));
        assert_eq!(allows_refer(Some("INVITE,ACK,BYE,CANCEL")), Some(false));
        assert_eq!(allows_refer(Some("")), Some(false));
    }

    #[test]
    fn leg_names() {
        let leg: TransferLeg = serde_json::from_str("\"callee\"").expect("callee");
        assert_eq!(leg, TransferLeg::Callee);
        assert!(serde_json::from_str::<TransferLeg>("\"b\"").is_err());
        assert_eq!(TransferLeg::default().as_str(), "caller");
    }
}
