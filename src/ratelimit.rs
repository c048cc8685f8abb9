//! A keyed GCRA token bucket (the same virtual-scheduling form as the SIP driver's
//! per-source limiter): each key keeps one instant, when its bucket is full again. Memory is
//! bounded: keys are kept least-recently-seen first and the idlest is forgotten when the
//! table is full (a forgotten key has a full bucket, or is about to). Sans-IO: the caller
//! passes `now`, so the tests run on a virtual clock.

use std::hash::{Hash, RandomState};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;

#[derive(Debug)]
pub struct KeyedLimiter<K: Hash + Eq> {
    interval: Duration,
    tolerance: Duration,
    max_keys: usize,
    /// Key → the instant its bucket is full again. Random SipHash keys: clients pick keys.
    buckets: LinkedHashMap<K, Instant, RandomState>,
}

impl<K: Hash + Eq> KeyedLimiter<K> {
    /// `per_second` sustained and `burst` back to back (both at least 1).
    pub fn new(per_second: u32, burst: u32, max_keys: usize) -> Self {
        let interval = Duration::from_secs(1) / per_second.max(1);
        KeyedLimiter {
            interval,
            tolerance: interval * burst.max(1),
            max_keys: max_keys.max(1),
            buckets: LinkedHashMap::with_hasher(RandomState::new()),
        }
    }

    /// Takes a token for `key`, or says how long until one is free.
    pub fn check(&mut self, key: K, now: Instant) -> Result<(), Duration> {
        if let Some(full_at) = self.buckets.to_back(&key) {
            let next = (*full_at).max(now) + self.interval;
            let ahead = next.saturating_duration_since(now);
            if ahead > self.tolerance {
                return Err(ahead - self.tolerance);
            }
            *full_at = next;
            return Ok(());
        }
        if self.buckets.len() >= self.max_keys {
            self.buckets.pop_front();
        }
        self.buckets.insert(key, now + self.interval);
        Ok(())
    }
}

/// An IPv4 address, or an IPv6 /64 (one subscriber's allocation).
pub fn ip_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (v6.to_bits() >> 64) << 64 | 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // the virtual clock's origin
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn burst_then_rate_and_a_truthful_retry_after() {
        let mut l = KeyedLimiter::new(10, 5, 100);
        let t0 = t0();
        assert_eq!((0..20).filter(|_| l.check("k", t0).is_ok()).count(), 5);
        let wait = l.check("k", t0).expect_err("empty");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // After the wait it said, one more passes, and no sooner.
        assert!(l.check("k", t0 + wait - Duration::from_millis(1)).is_err());
        assert!(l.check("k", t0 + wait).is_ok());
        // Another key is not affected.
        assert!(l.check("other", t0).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_the_idlest_key_goes() {
        let mut l = KeyedLimiter::new(1, 1, 3);
        let t0 = t0();
        for k in 0..10u32 {
            assert!(l.check(k, t0).is_ok());
        }
        assert_eq!(l.buckets.len(), 3);
        // The flooder seen last keeps its empty bucket.
        assert!(l.check(9, t0).is_err());
    }

    #[test]
    fn ipv6_hosts_of_one_prefix_share_a_key() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        assert_eq!(
            ip_key("::ffff:192.0.2.1".parse().unwrap()),
            ip_key("192.0.2.1".parse().unwrap())
        );
    }
}
