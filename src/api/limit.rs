//! Request rate limits per client IP and per API key, answered with 429 and Retry-After
//! (the buckets are `crate::ratelimit`'s).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::ratelimit::{KeyedLimiter, ip_key};

/// The API's two limiters and what they refused (for `/metrics`).
#[derive(Debug)]
pub struct ApiLimits {
    per_ip: Option<std::sync::Mutex<KeyedLimiter<u128>>>,
    per_key: Option<std::sync::Mutex<KeyedLimiter<[u8; 32]>>>,
    refused: std::sync::atomic::AtomicU64,
}

/// Keys (IPs, API keys) tracked at once per limiter.
const MAX_TRACKED: usize = 65_536;

impl ApiLimits {
    pub fn new(http: &crate::config::HttpConfig) -> Self {
        ApiLimits {
            per_ip: (http.rate_limit_per_ip_s > 0).then(|| {
                std::sync::Mutex::new(KeyedLimiter::new(
                    http.rate_limit_per_ip_s,
                    http.rate_limit_ip_burst,
                    MAX_TRACKED,
                ))
            }),
            per_key: (http.rate_limit_per_key_s > 0).then(|| {
                std::sync::Mutex::new(KeyedLimiter::new(
                    http.rate_limit_per_key_s,
                    http.rate_limit_key_burst,
                    MAX_TRACKED,
                ))
            }),
            refused: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Requests answered 429 so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes a token from the client IP's bucket and the API key's; the longer wait wins.
    fn check(
        &self,
        ip: Option<IpAddr>,
        key: Option<[u8; 32]>,
        now: Instant,
    ) -> Result<(), Duration> {
        if let (Some(limiter), Some(ip)) = (&self.per_ip, ip) {
            lock(limiter).check(ip_key(ip), now)?;
        }
        if let (Some(limiter), Some(key)) = (&self.per_key, key) {
            lock(limiter).check(key, now)?;
        }
        Ok(())
    }
}

/// A poisoned lock still holds a usable table: a panic elsewhere must not stop the API.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Middleware for `/api/…`: 429 RATE_LIMITED with Retry-After (whole seconds, rounded up)
/// past either limit. Health checks and metrics scrapes are not limited.
pub async fn rate_limit(
    axum::extract::State(limits): axum::extract::State<std::sync::Arc<ApiLimits>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use sha2::Digest as _;
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let verdict = {
        // Scoped: a borrow of the request held across the await would make this !Send.
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let key: Option<[u8; 32]> = header("x-api-key")
            .or_else(|| header("authorization").and_then(|v| v.trim().strip_prefix("Bearer ")))
            .map(|k| sha2::Sha256::digest(k.trim().as_bytes()).into());
        limits.check(ip, key, Instant::now())
    };
    match verdict {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            limits
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut err = super::error::ApiError::new(
                super::error::ErrorCode::RateLimited,
                "too many requests; retry after the time in Retry-After",
            );
            err.retry_after = Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
            err.into_response()
        }
    }
}
