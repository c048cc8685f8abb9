//! What an API key may dial: toll-fraud barriers for outbound calls placed over the API.
//!
//! A stolen or leaked key is a way to sell premium-rate and international minutes on the
//! victim's account. Three barriers stand between the API and a trunk:
//! - the dial plan's barring: a `reject` rule that matches the call (from, to, no source
//!   trunk) refuses it, so a prefix barred for inbound traffic is barred over the API too;
//! - the tenant's `allowed_destinations` (E.164 prefixes: country codes, area codes);
//! - the tenant's `max_concurrent_calls` and `max_calls_per_second`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::TenantConfig;
use crate::ratelimit::KeyedLimiter;

/// Why an outbound API call was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{to} is barred by dial plan rule {rule:?}")]
    Barred { to: String, rule: String },
    #[error("{to} is outside this account's allowed destinations")]
    NotAllowed { to: String },
    #[error("this account's concurrent call limit ({0}) is reached")]
    Concurrent(u32),
    #[error("this account's call rate limit ({0}/s) is reached")]
    Rate(u32, Duration),
}

impl Refusal {
    fn index(&self) -> usize {
        match self {
            Refusal::Barred { .. } => 0,
            Refusal::NotAllowed { .. } => 1,
            Refusal::Concurrent(_) => 2,
            Refusal::Rate(..) => 3,
        }
    }
}

const REASONS: [&str; 4] = ["barred", "destination", "concurrent", "rate"];

#[derive(Debug)]
struct TenantLimit {
    allowed: Vec<String>,
    max_concurrent: u32,
    live: Arc<AtomicU32>,
    cps: Option<(u32, Mutex<KeyedLimiter<()>>)>,
}

#[derive(Debug, Default)]
pub struct TenantPolicy {
    tenants: HashMap<String, TenantLimit>,
    refused: [AtomicU64; 4],
}

/// A place among the tenant's live API calls, given back when dropped (the call ended).
#[derive(Debug)]
pub struct TenantSlot(Option<Arc<AtomicU32>>);

impl Drop for TenantSlot {
    fn drop(&mut self) {
        if let Some(live) = &self.0 {
            live.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl TenantPolicy {
    pub fn new(tenants: &[TenantConfig]) -> Self {
        TenantPolicy {
            tenants: tenants
                .iter()
                .map(|t| {
                    let cps = (t.max_calls_per_second > 0).then(|| {
                        let rate = t.max_calls_per_second;
                        // A burst of one second's worth: bursts beyond the rate are refused.
                        (rate, Mutex::new(KeyedLimiter::new(rate, rate, 1)))
                    });
                    let limit = TenantLimit {
                        allowed: t.allowed_destinations.clone(),
                        max_concurrent: t.max_concurrent_calls,
                        live: Arc::new(AtomicU32::new(0)),
                        cps,
                    };
                    (t.name.clone(), limit)
                })
                .collect(),
            refused: Default::default(),
        }
    }

    /// Destination checks (the dial plan's barring is decided by the caller and passed as
    /// `barred_by`), then the rate, then a concurrent-call slot.
    pub fn admit(
        &self,
        tenant: &str,
        to: &str,
        barred_by: Option<String>,
        now: Instant,
    ) -> Result<TenantSlot, Refusal> {
        let verdict = self.check(tenant, to, barred_by, now);
        if let Err(r) = &verdict {
            self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
        }
        verdict
    }

    fn check(
        &self,
        tenant: &str,
        to: &str,
        barred_by: Option<String>,
        now: Instant,
    ) -> Result<TenantSlot, Refusal> {
        if let Some(rule) = barred_by {
            return Err(Refusal::Barred {
                to: to.to_owned(),
                rule,
            });
        }
        let Some(limit) = self.tenants.get(tenant) else {
            return Ok(TenantSlot(None));
        };
        if !limit.allowed.is_empty() && !limit.allowed.iter().any(|p| to.starts_with(p.as_str())) {
            return Err(Refusal::NotAllowed { to: to.to_owned() });
        }
        if let Some((rate, limiter)) = &limit.cps {
            let mut limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(wait) = limiter.check((), now) {
                return Err(Refusal::Rate(*rate, wait));
            }
        }
        if limit.max_concurrent > 0 {
            let before = limit.live.fetch_add(1, Ordering::AcqRel);
            if before >= limit.max_concurrent {
                limit.live.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::Concurrent(limit.max_concurrent));
            }
            return Ok(TenantSlot(Some(limit.live.clone())));
        }
        Ok(TenantSlot(None))
    }

    /// `switchyard_api_calls_refused_total{reason=…}` lines.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE switchyard_api_calls_refused_total counter");
        for (i, reason) in REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_api_calls_refused_total{{reason=\"{reason}\"}} {}",
                self.refused[i].load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(allowed: &[&str], concurrent: u32, cps: u32) -> TenantConfig {
        TenantConfig {
            name: "acme".into(),
            allowed_destinations: allowed.iter().map(|s| (*s).to_owned()).collect(),
            max_concurrent_calls: concurrent,
            max_calls_per_second: cps,
            ..TenantConfig::default()
        }
    }

    #[allow(clippy::disallowed_methods)] // the virtual clock's origin
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn destinations_outside_the_prefixes_and_barred_ones_are_refused() {
        let p = TenantPolicy::new(&[tenant(&["+1", "+44"], 0, 0)]);
        let t0 = t0();
        assert!(p.admit("acme", "+14155550100", None, t0).is_ok());
        assert!(p.admit("acme", "+442071838750", None, t0).is_ok());
        assert_eq!(
            p.admit("acme", "+88213500001", None, t0).err(),
            Some(Refusal::NotAllowed {
                to: "+88213500001".into()
            })
        );
        assert!(matches!(
            p.admit("acme", "+19005550100", Some("premium".into()), t0),
            Err(Refusal::Barred { .. })
        ));
        // A tenant without a policy is only subject to the dial plan.
        assert!(p.admit("globex", "+88213500001", None, t0).is_ok());
        let mut text = String::new();
        p.render(&mut text);
        assert!(text.contains("reason=\"destination\"} 1"), "{text}");
        assert!(text.contains("reason=\"barred\"} 1"), "{text}");
    }

    #[test]
    fn concurrent_slots_are_given_back_when_calls_end() {
        let p = TenantPolicy::new(&[tenant(&[], 2, 0)]);
        let t0 = t0();
        let a = p.admit("acme", "+1", None, t0).expect("first");
        let _b = p.admit("acme", "+1", None, t0).expect("second");
        assert_eq!(
            p.admit("acme", "+1", None, t0).err(),
            Some(Refusal::Concurrent(2))
        );
        drop(a);
        assert!(p.admit("acme", "+1", None, t0).is_ok());
    }

    #[test]
    fn calls_per_second_hold_to_the_rate() {
        let p = TenantPolicy::new(&[tenant(&[], 0, 5)]);
        let t0 = t0();
        let passed = (0..50)
            .filter(|_| p.admit("acme", "+1", None, t0).is_ok())
            .count();
        assert_eq!(passed, 5);
        assert!(matches!(
            p.admit("acme", "+1", None, t0),
            Err(Refusal::Rate(5, _))
        ));
        assert!(
            p.admit("acme", "+1", None, t0 + Duration::from_millis(200))
                .is_ok()
        );
    }
}
