//! A webhook receiver: records every request and hands it to the test over a channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One request as the sink saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the sink answered: 500 while `fail_first` is in effect, else 200.
    pub status_sent: u16,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON (unverified); panics if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Clone)]
struct SinkState {
    tx: mpsc::UnboundedSender<Received>,
    fail_remaining: Arc<AtomicUsize>,
}

/// An HTTP server on 127.0.0.1:0 that accepts any path and method.
#[derive(Debug)]
pub struct WebhookSink {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    fail_remaining: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl WebhookSink {
    pub async fn start() -> WebhookSink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook sink");
        let addr = listener.local_addr().expect("sink local_addr");
        let (tx, rx) = mpsc::unbounded_channel();
        let fail_remaining = Arc::new(AtomicUsize::new(0));
        let state = SinkState {
            tx,
            fail_remaining: fail_remaining.clone(),
        };
        let app = Router::new().fallback(record).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookSink {
            addr,
            rx,
            fail_remaining,
            task,
        }
    }

    /// `http://127.0.0.1:PORT/hooks`.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next `n` requests get 500 (they are still recorded and delivered to the test).
    pub fn fail_first(&self, n: usize) {
        self.fail_remaining.store(n, Ordering::SeqCst);
    }

    /// The next request, failed or not; panics after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Received {
        match self.try_next_event(timeout).await {
            Some(r) => r,
            None => panic!("no webhook request within {timeout:?}"),
        }
    }

    /// The next request, or `None` after `timeout`.
    pub async fn try_next_event(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next request that the sink accepted (200), skipping ones it failed on purpose.
    pub async fn next_accepted(&mut self, timeout: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.next_event(left).await;
            if r.status_sent == 200 {
                return r;
            }
        }
    }

    /// Skips requests until one whose verified JSON satisfies `pred`; returns that JSON.
    /// Panics on a bad signature or after `timeout`.
    pub async fn next_matching(
        &mut self,
        secret: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self.next_event(left).await;
            let v = self.verify(secret, &r);
            if pred(&v) {
                return v;
            }
        }
    }

    /// Checks the Standard Webhooks signature with the official crate and returns the JSON
    /// body; panics if either fails.
    pub fn verify(&self, secret: &str, received: &Received) -> Value {
        self.try_verify(secret, received)
            .unwrap_or_else(|e| panic!("webhook verification failed: {e}\n{received:?}"))
    }

    pub fn try_verify(&self, secret: &str, received: &Received) -> Result<Value, String> {
        verify_signature(secret, received)
    }
}

/// Standard Webhooks verification (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
pub fn verify_signature(secret: &str, received: &Received) -> Result<Value, String> {
    let wh = standardwebhooks::Webhook::new(secret).map_err(|e| format!("bad secret: {e}"))?;
    wh.verify(&received.body, &received.headers)
        .map_err(|e| format!("bad signature: {e}"))?;
    serde_json::from_slice(&received.body).map_err(|e| format!("body is not JSON: {e}"))
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(state): State<SinkState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let fail = state
        .fail_remaining
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    let _ = state.tx.send(Received {
        method,
        path: uri.path().to_owned(),
        headers,
        body,
        status_sent: status.as_u16(),
        at: Instant::now(),
    });
    status
}
