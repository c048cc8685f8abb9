//! Status-callback deliverer: drains the store's outbox, signs each event (Standard Webhooks),
//! POSTs it and records the outcome. All state lives in the outbox rows, so a restart simply
//! picks up where the last process stopped.
//!
//! Ordering: the store only hands out the lowest pending sequence of each call, so one call's
//! events go out strictly in order, while different calls are delivered concurrently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::CONTENT_TYPE;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::model::CallEvent;
use crate::store::Store;

pub mod schedule;
pub mod sign;

/// Upper bound on how long the deliverer sleeps without a wakeup, so events written by
/// another node sharing the database (which cannot notify us) are still picked up.
const MAX_IDLE: Duration = Duration::from_secs(5);
/// Lower bound for a wakeup that is already due, so a row we could not claim (locked by another
/// node) does not make the loop spin.
const MIN_SLEEP: Duration = Duration::from_millis(10);
/// Back-off after a database error in the loop itself.
const DB_ERROR_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Whole-request timeout for one POST.
    pub timeout: Duration,
    /// Delay after the first failed attempt; doubles per attempt.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Attempts before an event is marked failed (redeliverable through the API).
    pub max_attempts: u32,
    /// Deliveries in flight at once (across calls; one per call at most).
    pub max_in_flight: usize,
    /// Which addresses a callback may reach (SSRF).
    pub guard: crate::netguard::OutboundGuard,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(600),
            max_attempts: 12,
            max_in_flight: 64,
            guard: crate::netguard::OutboundGuard::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The running deliverer. Dropping it does not stop the task; cancel the shutdown token.
#[derive(Debug)]
pub struct WebhookHandle {
    notify: Arc<Notify>,
    task: JoinHandle<()>,
}

impl WebhookHandle {
    /// Wake the deliverer: call after writing an event.
    pub fn notify(&self) {
        self.notify.notify_one();
    }

    /// A plain `Notify` for code that must not depend on this module (the core):
    /// `notify_one()` on it is the same as [`WebhookHandle::notify`].
    pub fn notifier(&self) -> Arc<Notify> {
        Arc::clone(&self.notify)
    }

    /// Waits for the deliverer to stop after the shutdown token is cancelled. Deliveries in
    /// flight finish (each bounded by the request timeout) and their outcome is recorded.
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "webhook deliverer task ended abnormally");
        }
    }
}

/// Starts the deliverer on the current tokio runtime.
pub fn spawn(
    store: Arc<dyn Store>,
    config: WebhookConfig,
    shutdown: CancellationToken,
) -> Result<WebhookHandle, WebhookError> {
    let client = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        // A redirect is a misconfigured endpoint, not a delivery.
        .redirect(reqwest::redirect::Policy::none())
        // Every name is resolved through the guard: internal addresses are never dialled.
        .dns_resolver(config.guard.resolver())
        .user_agent(concat!("switchyard-webhooks/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let notify = Arc::new(Notify::new());
    let deliverer = Deliverer {
        store,
        config: Arc::new(config),
        client,
    };
    let task = tokio::spawn(deliverer.run(Arc::clone(&notify), shutdown));
    Ok(WebhookHandle { notify, task })
}

#[derive(Clone, Debug)]
struct Deliverer {
    store: Arc<dyn Store>,
    config: Arc<WebhookConfig>,
    client: reqwest::Client,
}

impl Deliverer {
    async fn run(self, notify: Arc<Notify>, shutdown: CancellationToken) {
        let mut in_flight: JoinSet<()> = JoinSet::new();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            while in_flight.try_join_next().is_some() {}
            let room = self.config.max_in_flight.saturating_sub(in_flight.len());
            let mut sleep_for = Some(MAX_IDLE);
            if room > 0 {
                sleep_for = match self.claim(room, &mut in_flight).await {
                    Ok(sleep) => sleep,
                    Err(e) => {
                        tracing::error!(error = %e, "webhook outbox query failed");
                        Some(DB_ERROR_BACKOFF)
                    }
                };
            }
            let sleep = tokio::time::sleep(sleep_for.unwrap_or(MAX_IDLE));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = notify.notified() => {}
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                () = sleep, if sleep_for.is_some() => {}
            }
        }
        // Let deliveries in flight finish so each outcome is recorded exactly once.
        while in_flight.join_next().await.is_some() {}
        tracing::debug!("webhook deliverer stopped");
    }

    /// Claims due events, starts their deliveries, and says how long to sleep
    /// (None: only a notify, a finished delivery or shutdown should wake us).
    async fn claim(
        &self,
        room: usize,
        in_flight: &mut JoinSet<()>,
    ) -> Result<Option<Duration>, crate::store::StoreError> {
        let limit = u32::try_from(room).unwrap_or(u32::MAX);
        let events = self.store.due_events(Utc::now(), limit).await?;
        let claimed = events.len();
        for event in events {
            let this = self.clone();
            in_flight.spawn(async move { this.deliver(event).await });
        }
        if claimed == room {
            // Full batch: more may be due; come back when a slot frees up.
            return Ok(None);
        }
        let next = self.store.next_due_at().await?;
        Ok(Some(match next {
            Some(at) => (at - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .clamp(MIN_SLEEP, MAX_IDLE),
            None => MAX_IDLE,
        }))
    }

    async fn deliver(&self, event: CallEvent) {
        let attempt = event.attempts.saturating_add(1);
        let started = Instant::now();
        let outcome = self.post(&event).await;
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let recorded = match outcome {
            // Not transient: retrying a refused address would only be refused again.
            Err(error) if error.starts_with(REFUSED_PREFIX) => {
                tracing::warn!(
                    call_id = %event.call_id, event_id = %event.id, attempt, %error,
                    "webhook refused: internal address"
                );
                self.store.mark_abandoned(&event.id, attempt, &error).await
            }
            Ok(status) => {
                tracing::info!(
                    call_id = %event.call_id, event_id = %event.id, attempt, status, latency_ms,
                    "webhook delivered"
                );
                self.store.mark_delivered(&event.id, Utc::now()).await
            }
            Err(error) if attempt >= i64::from(self.config.max_attempts) => {
                tracing::warn!(
                    call_id = %event.call_id, event_id = %event.id, attempt, latency_ms, %error,
                    "webhook delivery abandoned"
                );
                self.store.mark_abandoned(&event.id, attempt, &error).await
            }
            Err(error) => {
                let n = u32::try_from(attempt).unwrap_or(u32::MAX);
                let delay = schedule::next_delay(n, self.config.retry_base, self.config.retry_cap);
                let next =
                    Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                tracing::warn!(
                    call_id = %event.call_id, event_id = %event.id, attempt, latency_ms, %error,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "webhook delivery failed"
                );
                self.store
                    .mark_attempt_failed(&event.id, attempt, next, &error)
                    .await
            }
        };
        if let Err(e) = recorded {
            // The claim lease expires and the event is tried again: at-least-once delivery.
            tracing::error!(event_id = %event.id, error = %e, "cannot record webhook outcome");
        }
    }

    /// One signed POST; Ok(status) on 2xx, Err(reason) otherwise.
    async fn post(&self, event: &CallEvent) -> Result<u16, String> {
        let url = event
            .webhook_url
            .as_deref()
            .ok_or_else(|| "event has no webhook_url".to_owned())?;
        self.config
            .guard
            .check_call(url)
            .map_err(|e| format!("{REFUSED_PREFIX}{e}"))?;
        let secret = self
            .store
            .webhook_secret(&event.tenant)
            .await
            .map_err(|e| format!("webhook secret unavailable: {e}"))?;
        // These exact bytes are both signed and sent.
        let body = event.payload.as_str().as_bytes().to_vec();
        let timestamp = Utc::now().timestamp();
        let signature =
            sign::sign(&secret, &event.id, timestamp, &body).map_err(|e| e.to_string())?;
        let response = self
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }
}

/// How a delivery refused by the outbound guard is recorded.
const REFUSED_PREFIX: &str = "refused: webhook_url ";

/// A short reason without the URL (it may carry credentials in its query).
fn describe(e: reqwest::Error) -> String {
    let mut reason = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    }
    .to_owned();
    let e = e.without_url();
    let mut source = std::error::Error::source(&e);
    // The guarded resolver's refusal reads as a refusal, not a connect failure.
    let mut walk = source;
    while let Some(s) = walk {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::PermissionDenied
        {
            return format!("{REFUSED_PREFIX}{io}");
        }
        walk = s.source();
    }
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    reason
}
