//! Outbound routing: which trunks may carry a call from a tenant's caller id.

/// What the plan knows of a trunk for routing (the switch keeps the SIP details).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkEntry {
    pub name: String,
    pub tenant: String,
    /// E.164 caller ids this tenant owns on the trunk.
    pub numbers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundRoute {
    /// Trunk names in the order to try.
    Trunks(Vec<String>),
    /// The caller id is not a number the tenant owns.
    UnknownCallerId,
}

/// Trunks (in configuration order) on which `tenant` owns `from`.
pub fn route_outbound(trunks: &[TrunkEntry], tenant: &str, from: &str) -> OutboundRoute {
    let names: Vec<String> = trunks
        .iter()
        .filter(|t| t.tenant == tenant && t.numbers.iter().any(|n| n == from))
        .map(|t| t.name.clone())
        .collect();
    if names.is_empty() {
        OutboundRoute::UnknownCallerId
    } else {
        OutboundRoute::Trunks(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(name: &str, tenant: &str, numbers: &[&str]) -> TrunkEntry {
        TrunkEntry {
            name: name.into(),
            tenant: tenant.into(),
            numbers: numbers.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn picks_owned_caller_id_in_order_and_isolates_tenants() {
        let t = [
            trunk("a", "acme", &["+12025551234"]),
            trunk("b", "other", &["+12025551234"]),
            trunk("c", "acme", &["+12025551234", "+12025550000"]),
        ];
        assert_eq!(
            route_outbound(&t, "acme", "+12025551234"),
            OutboundRoute::Trunks(vec!["a".into(), "c".into()])
        );
        assert_eq!(
            route_outbound(&t, "acme", "+19999999999"),
            OutboundRoute::UnknownCallerId
        );
        assert_eq!(
            route_outbound(&t, "nobody", "+12025551234"),
            OutboundRoute::UnknownCallerId
        );
    }
}
