//! A switch wired to a SIPp carrier, an owner's API client and a webhook sink: the
//! setup most end-to-end call tests share.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Api, Sipp, SwitchConfig, SwitchProcess, WebhookSink};

/// Guard for waiting on a callback.
pub const GUARD: Duration = Duration::from_secs(30);

/// A switch whose trunk points at `sipp`, an owner key, and a webhook sink.
pub async fn setup(sipp: &Sipp, config: impl FnOnce(SwitchConfig) -> SwitchConfig) -> Harness {
    let switch = SwitchProcess::start(config(SwitchConfig::new(sipp.addr()))).await;
    let key = switch.create_api_key("acme", "owner").await;
    let api = Api::new(&switch.http_base(), &key);
    let secret = api.webhook_secret().await;
    let sink = WebhookSink::start().await;
    Harness {
        switch,
        api,
        secret,
        sink,
    }
}

pub struct Harness {
    pub switch: SwitchProcess,
    pub api: Api,
    pub secret: String,
    pub sink: WebhookSink,
}

impl Harness {
    /// Places a call from the trunk's number with this sink as `webhook_url`; `extra`
    /// fields are merged into the body.
    pub async fn call(&self, extra: Value) -> String {
        let mut body = json!({
            "to": "+14155552671",
            "from": "+12025551234",
            "webhook_url": self.sink.url(),
            "metadata": {"test": "e2e"},
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.api.create_call_ok(body).await
    }

    /// The next callback, signature verified with the official crate.
    pub async fn event(&mut self) -> Value {
        let r = self.sink.next_accepted(GUARD).await;
        self.sink.verify(&self.secret, &r)
    }

    /// Callbacks until `event_type`, asserting the types seen are exactly `expected` in order
    /// and that sequence numbers count up from 1 for this call.
    pub async fn expect_events(&mut self, call_id: &str, expected: &[&str]) -> Vec<Value> {
        let mut got = Vec::new();
        for (i, want) in expected.iter().enumerate() {
            let e = self.event().await;
            assert_eq!(
                e["type"],
                *want,
                "event {i} of {call_id}: {e}\n{}",
                self.switch.logs()
            );
            assert_eq!(e["data"]["call"]["id"], call_id, "{e}");
            assert_eq!(e["sequence"], i as i64 + 1, "{e}");
            got.push(e);
        }
        got
    }
}
