//! A switch whose inbound calls to +14155552671 reach an active AI agent, for tests that
//! need the switch to answer a call itself: the agent's model provider is a fake OpenAI
//! Realtime server that accepts the session and holds it open, saying nothing.

use std::net::SocketAddr;

use serde_json::json;

use super::Api;
use super::fake_realtime::{FakeRealtime, Flavor};
use super::transit::{Inbound, start_with};

/// The number the agent answers.
pub const AGENT_NUMBER: &str = "+14155552671";

/// The fake provider (keep it alive for the test) and the agent's id.
pub struct LocalAgent {
    pub fake: FakeRealtime,
    pub id: String,
}

/// A fake provider, and the config that points the switch at it.
pub async fn provider() -> (FakeRealtime, String) {
    let fake = FakeRealtime::builder(Flavor::OpenAi).spawn().await;
    let toml = format!(
        "\n[agents.providers.openai]\nurl = \"{}\"\napi_key = \"test-key\"\n",
        fake.url
    );
    (fake, toml)
}

/// Creates an active static agent of tenant acme assigned [`AGENT_NUMBER`]; its id.
pub async fn assign(api: &Api) -> String {
    create_active(
        api,
        json!({
            "name": "Front desk",
            "model": "gpt-realtime",
            "agent_type": "static",
            "instructions": "Answer the phone.",
            "phone_number_assignments": [{"phone_number": AGENT_NUMBER}],
        }),
    )
    .await
}

/// Creates the agent `body` describes and activates it; its id.
pub async fn create_active(api: &Api, body: serde_json::Value) -> String {
    let (code, created) = api
        .request(reqwest::Method::POST, "/agents", Some(&body))
        .await;
    assert_eq!(code, 201, "{created}");
    let id = created["data"]["id"].as_str().expect("id").to_owned();
    let (code, body) = api
        .request(
            reqwest::Method::PATCH,
            &format!("/agents/{id}"),
            Some(
                &json!({"status": "active", "expected_updated_at": created["data"]["updated_at"]}),
            ),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    id
}

/// [`start_with`] (carrier trunk at `far`, `plan`, `extra`), the agent's number on the
/// carrier trunk, and the agent.
pub async fn start_with_agent(far: SocketAddr, plan: &str, extra: &str) -> (Inbound, LocalAgent) {
    let (fake, toml) = provider().await;
    let h = start_with(far, plan, extra, |c| {
        c.numbers(&["+12025551234", AGENT_NUMBER]).extra(&toml)
    })
    .await;
    let id = assign(&h.api).await;
    (h, LocalAgent { fake, id })
}
