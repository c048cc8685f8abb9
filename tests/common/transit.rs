//! Transit calls (a carrier calling in, the dialplan routing it out to trunk "carrier"):
//! a switch with an upstream trunk, a dialplan file and tenant acme's callbacks in a sink.
//! Shared by `tests/e2e_inbound.rs` and `tests/e2e_bridge.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;

use super::harness::GUARD;
use super::{Api, SwitchConfig, SwitchProcess, WebhookSink};

/// The calling carrier, trusted by source address (SIPp binds 127.0.0.1).
pub const UPSTREAM: &str = "[[trunks]]\nname = \"upstream\"\nuri = \"sip:127.0.0.1:5999\"\n\
    inbound_cidrs = [\"127.0.0.1/32\"]\ntenant = \"acme\"\n";

/// Routes `+1…` from the upstream trunk to trunk "carrier".
pub const TRANSIT_PLAN: &str = "[[rules]]\nname = \"us-transit\"\nto = { prefix = \"+1\" }\n\
    source_trunk = \"upstream\"\ntrunks = [\"carrier\"]\n";

/// Writes `plan` next to nothing else and returns its path (kept alive by the TempDir).
pub fn plan_file(plan: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan).expect("write plan");
    (dir, path)
}

pub struct Inbound {
    pub switch: SwitchProcess,
    pub api: Api,
    pub secret: String,
    pub sink: WebhookSink,
    pub _plan: tempfile::TempDir,
}

/// A switch whose trunk "carrier" points at `far` (the callee side), with the upstream
/// trunk, `plan` as its dialplan, and tenant acme's callbacks going to a sink. `extra` is
/// more TOML; if it starts with `[sip]` (or `[rtp]`), its lines go into that section.
pub async fn start(far: SocketAddr, plan: &str, extra: &str) -> Inbound {
    start_with(far, plan, extra, |c| c).await
}

/// As [`start`], with `configure` applied to the switch's configuration last (e.g. its
/// RTP port range).
pub async fn start_with(
    far: SocketAddr,
    plan: &str,
    extra: &str,
    configure: impl FnOnce(SwitchConfig) -> SwitchConfig,
) -> Inbound {
    let sink = WebhookSink::start().await;
    let (plan_dir, plan_path) = plan_file(plan);
    let (sip, extra) = match extra.strip_prefix("[sip]\n") {
        Some(keys) => (keys, ""),
        None => ("", extra),
    };
    let (rtp, extra) = match extra.strip_prefix("[rtp]\n") {
        Some(keys) => (keys, ""),
        None => ("", extra),
    };
    let config = SwitchConfig::new(far).sip(sip).rtp(rtp).extra(&format!(
        "{extra}\n{UPSTREAM}\n[dialplan]\nfile = {:?}\n\n[[tenants]]\nname = \"acme\"\nwebhook_url = {:?}\n",
        plan_path.display().to_string(),
        sink.url()
    ));
    let switch = SwitchProcess::start(configure(config)).await;
    let api = switch.api("acme", "owner").await;
    let secret = api.webhook_secret().await;
    Inbound {
        switch,
        api,
        secret,
        sink,
        _plan: plan_dir,
    }
}

impl Inbound {
    pub async fn event(&mut self) -> Value {
        let r = self.sink.next_accepted(GUARD).await;
        self.sink.verify(&self.secret, &r)
    }

    /// Callbacks of one call until `last`, returned in order.
    pub async fn events_until(&mut self, last: &str) -> Vec<Value> {
        let mut got = Vec::new();
        loop {
            let e = self.event().await;
            let done = e["type"] == last;
            got.push(e);
            if done {
                return got;
            }
            assert!(
                got.len() < 20,
                "no {last}: {got:#?}\n{}",
                self.switch.logs()
            );
        }
    }

    /// The dialplan file the switch reads (rewrite it, then reload by API).
    pub fn plan_path(&self) -> PathBuf {
        self._plan.path().join("plan.toml")
    }

    pub async fn only_call(&self) -> Value {
        let (status, list) = self.api.list_calls("").await;
        assert_eq!(status, 200, "{list}");
        let calls = list["data"].as_array().expect("data array").clone();
        assert_eq!(calls.len(), 1, "{list}");
        calls[0].clone()
    }
}

pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
        .collect()
}
