//! A thin client for the switch's HTTP API.

use std::time::Duration;

use serde_json::Value;

/// `{base}/api/v1/...` with `X-API-Key`. Every call returns (HTTP status, JSON body); a body
/// that is not JSON comes back as a JSON string, an empty one as `null`.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Api {
        Api {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("reqwest client"),
        }
    }

    /// The same server with another key.
    pub fn with_key(&self, key: &str) -> Api {
        Api {
            key: key.to_owned(),
            ..self.clone()
        }
    }

    /// Any request: `path` is relative to `/api/v1` (e.g. `/voice/calls`).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}/api/v1{path}", self.base);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header("X-API-Key", &self.key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: body: {e}"));
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, json)
    }

    /// `POST /api/v1/voice/calls`.
    pub async fn create_call(&self, body: Value) -> (u16, Value) {
        self.request(reqwest::Method::POST, "/voice/calls", Some(&body))
            .await
    }

    /// `GET /api/v1/voice/calls/{id}`.
    pub async fn get_call(&self, id: &str) -> (u16, Value) {
        self.request(reqwest::Method::GET, &format!("/voice/calls/{id}"), None)
            .await
    }

    /// `POST /api/v1/voice/calls/{id}/hangup`.
    pub async fn hangup(&self, id: &str) -> (u16, Value) {
        self.request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/hangup"),
            Some(&Value::Object(Default::default())),
        )
        .await
    }

    /// `GET /api/v1/voice/calls?{query}` (`query` without the `?`, may be empty).
    pub async fn list_calls(&self, query: &str) -> (u16, Value) {
        let path = if query.is_empty() {
            "/voice/calls".to_owned()
        } else {
            format!("/voice/calls?{query}")
        };
        self.request(reqwest::Method::GET, &path, None).await
    }

    /// `GET /api/v1/voice/calls/{id}/events`.
    pub async fn events(&self, id: &str) -> (u16, Value) {
        self.request(
            reqwest::Method::GET,
            &format!("/voice/calls/{id}/events"),
            None,
        )
        .await
    }

    /// `GET /api/v1/webhooks/secret` → `data.secret`; panics unless 200 with a secret.
    pub async fn webhook_secret(&self) -> String {
        let (status, body) = self
            .request(reqwest::Method::GET, "/webhooks/secret", None)
            .await;
        assert_eq!(status, 200, "GET /webhooks/secret: {body}");
        body["data"]["secret"]
            .as_str()
            .unwrap_or_else(|| panic!("no data.secret in {body}"))
            .to_owned()
    }

    /// Creates a call, asserts 201/200, and returns its `data.id`.
    pub async fn create_call_ok(&self, body: Value) -> String {
        let (status, resp) = self.create_call(body).await;
        assert!(
            status == 201 || status == 200,
            "POST /voice/calls answered {status}: {resp}"
        );
        resp["data"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no data.id in {resp}"))
            .to_owned()
    }
}

/// Polls `GET /voice/calls/{id}` every 25 ms until `data.status == status` and returns
/// `data`; panics with the last body after `timeout`. (The API has no push, so this polls.)
pub async fn wait_for_status(api: &Api, id: &str, status: &str, timeout: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (code, body) = api.get_call(id).await;
        if code == 200 && body["data"]["status"].as_str() == Some(status) {
            return body["data"].clone();
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "call {id} did not reach status {status:?} within {timeout:?}; \
                 last answer {code}: {body}"
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
