//! What an agent's conversation calls over HTTP: its custom tools (`agent:tool-call`
//! events to a webhook agent's Server URL, or an http agent's own tool URLs) and, for
//! dynamic prompts, the `agent:assistant-request` at the start.
//!
//! Every request goes through the outbound guard's resolver (no internal addresses, no
//! redirects), like status callbacks. A body is signed when the agent has a Server URL
//! secret: [`SIGNATURE_HEADER`] carries `sha256=` and the lowercase hex HMAC-SHA256 of
//! the raw body.

use std::collections::BTreeMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::model::{Agent, OnError, Tool, ToolMethod};

/// The header a signed body's HMAC travels in.
pub const SIGNATURE_HEADER: &str = "x-switchyard-signature";
/// How long a dynamic prompt may take to come back.
pub const ASSISTANT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body read from a tool or the Server URL.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// `sha256=` + lowercase hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The HTTP client of agents' requests: no redirects, every name resolved through the
/// outbound guard.
pub fn client(guard: &crate::netguard::OutboundGuard) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(guard.resolver())
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("switchyard-agents/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Who is talking to the agent, for the events sent to the Server URL.
#[derive(Debug, Clone)]
pub struct ConversationRef {
    pub conversation_id: String,
    /// The switch's call id (`None` for a browser session).
    pub call_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub channel: &'static str,
}

impl ConversationRef {
    fn json(&self) -> Value {
        json!({
            "id": self.conversation_id,
            "channel": self.channel,
            "call_id": self.call_id,
            "from": self.from,
            "to": self.to,
        })
    }
}

/// Why a request to a tool or the Server URL failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("no URL to call: {0}")]
    NoUrl(&'static str),
}

fn headers_of(map: &BTreeMap<String, String>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in map {
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(k.as_bytes()),
            reqwest::header::HeaderValue::from_str(v),
        ) {
            headers.insert(name, value);
        }
    }
    headers
}

/// What a request carries: a JSON body, or (GET, HEAD, OPTIONS) the arguments as query
/// parameters.
enum Payload<'a> {
    Json(Vec<u8>),
    Query(&'a Value),
}

/// Sends `payload` to `url` with `method`, a JSON body signed when the agent has a
/// secret, and reads a JSON answer (a body that is not JSON comes back as a string, an
/// empty one as null).
async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    headers: reqwest::header::HeaderMap,
    payload: Payload<'_>,
    secret: Option<&str>,
    timeout: Duration,
) -> Result<Value, CallError> {
    let mut req = client
        .request(method, url)
        .headers(headers)
        .timeout(timeout);
    let (body, query) = match payload {
        Payload::Json(body) => (Some(body), None),
        Payload::Query(args) => (None, Some(args)),
    };
    if let Some(Value::Object(args)) = query {
        let pairs: Vec<(String, String)> = args
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect();
        req = req.query(&pairs);
    }
    if let Some(body) = body {
        if let Some(secret) = secret {
            req = req.header(SIGNATURE_HEADER, signature(secret, &body));
        }
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            CallError::Timeout(timeout.as_millis() as u64)
        } else {
            CallError::Transport(without_url(&e))
        }
    })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(CallError::Status(status.as_u16()));
    }
    let bytes = resp.bytes().await.map_err(|e| {
        if e.is_timeout() {
            CallError::Timeout(timeout.as_millis() as u64)
        } else {
            CallError::Transport(without_url(&e))
        }
    })?;
    let bytes = bytes.get(..MAX_RESPONSE_BYTES).unwrap_or(&bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned())))
}

/// A transport error without the URL (which may carry a secret in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}

fn method_of(m: ToolMethod) -> reqwest::Method {
    match m {
        ToolMethod::Get => reqwest::Method::GET,
        ToolMethod::Post => reqwest::Method::POST,
        ToolMethod::Put => reqwest::Method::PUT,
        ToolMethod::Delete => reqwest::Method::DELETE,
        ToolMethod::Patch => reqwest::Method::PATCH,
        ToolMethod::Head => reqwest::Method::HEAD,
        ToolMethod::Options => reqwest::Method::OPTIONS,
    }
}

/// Runs a custom tool and returns what the model is told (the response, or per
/// `on_error` `{"error": …}` or `{}`) and whether the tool answered.
pub async fn run_tool(
    client: &reqwest::Client,
    agent: &Agent,
    tool: &Tool,
    conversation: &ConversationRef,
    tool_call_id: &str,
    arguments: &Value,
) -> (Value, bool) {
    let timeout = Duration::from_millis(u64::try_from(tool.timeout_ms).unwrap_or(5000));
    let secret = agent.server_secret.as_deref();
    let outcome = match agent.agent_type {
        super::model::AgentType::Http => match tool.tool_url.as_deref() {
            Some(url) => {
                let method = method_of(tool.tool_method);
                let with_body = !matches!(
                    tool.tool_method,
                    ToolMethod::Get | ToolMethod::Head | ToolMethod::Options
                );
                let payload = if with_body {
                    Payload::Json(arguments.to_string().into_bytes())
                } else {
                    Payload::Query(arguments)
                };
                send(
                    client,
                    method,
                    url,
                    headers_of(&tool.tool_headers),
                    payload,
                    secret,
                    timeout,
                )
                .await
            }
            None => Err(CallError::NoUrl("the tool has no tool_url")),
        },
        _ => match agent.server_url.as_deref() {
            Some(url) => {
                let event = json!({
                    "type": "agent:tool-call",
                    "agent_id": agent.id,
                    "conversation": conversation.json(),
                    "tool_call": {
                        "id": tool_call_id,
                        "tool_id": tool.id,
                        "name": tool.name,
                        "arguments": arguments,
                    },
                    "timestamp": crate::timefmt::millis(&chrono::Utc::now()),
                });
                send(
                    client,
                    reqwest::Method::POST,
                    url,
                    headers_of(&agent.server_headers),
                    Payload::Json(event.to_string().into_bytes()),
                    secret,
                    timeout,
                )
                .await
            }
            None => Err(CallError::NoUrl("the agent has no server_url")),
        },
    };
    match outcome {
        Ok(value) => (value, true),
        Err(e) => {
            tracing::info!(agent = %agent.id, tool = %tool.name, error = %e, "agent tool failed");
            let told = match tool.on_error {
                OnError::ReturnError => json!({"error": e.to_string()}),
                OnError::ReturnEmpty => json!({}),
            };
            (told, false)
        }
    }
}

/// What an `agent:assistant-request` answered: the prompt (and greeting) of this
/// conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DynamicPrompt {
    pub identity: Option<String>,
    pub instructions: Option<String>,
    pub greeting: Option<String>,
}

/// Asks a webhook agent's Server URL for this conversation's prompt.
pub async fn assistant_request(
    client: &reqwest::Client,
    agent: &Agent,
    conversation: &ConversationRef,
) -> Result<DynamicPrompt, CallError> {
    let url = agent
        .server_url
        .as_deref()
        .ok_or(CallError::NoUrl("the agent has no server_url"))?;
    let event = json!({
        "type": "agent:assistant-request",
        "agent_id": agent.id,
        "conversation": conversation.json(),
        "timestamp": crate::timefmt::millis(&chrono::Utc::now()),
    });
    let answer = send(
        client,
        reqwest::Method::POST,
        url,
        headers_of(&agent.server_headers),
        Payload::Json(event.to_string().into_bytes()),
        agent.server_secret.as_deref(),
        ASSISTANT_REQUEST_TIMEOUT,
    )
    .await?;
    let text = |k: &str| {
        answer
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    Ok(DynamicPrompt {
        identity: text("identity"),
        instructions: text("instructions").or_else(|| text("system_prompt")),
        greeting: text("greeting"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_sha256_hex_of_the_raw_body() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
