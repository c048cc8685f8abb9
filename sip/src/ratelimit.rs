//! Per-source-IP rate limiting, sans-IO: the driver asks [`RateLimiter::allow`] with the
//! source address and the current `Instant` before a message reaches the UA.
//!
//! Each source has a token bucket of `burst` tokens refilled at `per_second`, kept as one
//! timestamp (GCRA, the "virtual scheduling" form of a token bucket): the time at which
//! the bucket would be full again. A source whose bucket is full carries no information,
//! so forgetting it changes nothing.
//!
//! Memory is bounded by `max_sources`. Sources are kept in least-recently-seen order
//! (every check, allowed or not, moves a source to the back), so when the table is full
//! the source evicted is the one idle longest: its bucket is full unless more than
//! `max_sources` sources were all seen within the last `burst / per_second`. A flooder is
//! seen constantly and so keeps its (empty) bucket; a spray of fresh addresses only
//! recycles entries, each new address getting what any new address gets: one burst.
//!
//! Why not `governor`: its keyed limiter reads its own clock (a `Clock` trait object, not
//! an `Instant` argument), and its keyed store only shrinks when the caller runs
//! `retain_recent` — between two sweeps a spray of source addresses grows it without
//! bound. Here the bound is structural, every check is O(1) (one hash lookup, one list
//! move, at most one eviction) and no thread or timer is involved.

use std::hash::RandomState;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;
use ipnet::IpNet;

/// Limits applied to each source IP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained messages per second per source (0 is treated as 1).
    pub per_second: u32,
    /// Messages a source may send back to back after being idle (0 is treated as 1).
    pub burst: u32,
    /// Most sources tracked at once (0 is treated as 1); bounds memory.
    pub max_sources: usize,
    /// Never limited (carrier trunks, our own proxies).
    pub exempt: Vec<IpNet>,
}

impl Default for RateLimit {
    /// 50/s with a burst of 100, enough for a busy PBX's registrations and OPTIONS
    /// pings; anything carrying real traffic belongs in `exempt`.
    fn default() -> Self {
        RateLimit {
            per_second: 50,
            burst: 100,
            max_sources: 65_536,
            exempt: Vec::new(),
        }
    }
}

/// A keyed token bucket; see the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    limit: RateLimit,
    /// Time one token takes to refill.
    interval: Duration,
    /// `burst * interval`: how far ahead of now a bucket's full time may be.
    tolerance: Duration,
    max_sources: usize,
    /// Source → the instant its bucket is full again; front = least recently seen.
    /// SipHash with a random key: the keys are chosen by whoever sends us packets.
    buckets: LinkedHashMap<SourceKey, Instant, RandomState>,
}

/// The unit limited: an IPv4 address, or an IPv6 /64 (one subscriber's allocation, so
/// a single host cannot walk its own prefix to escape the limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum SourceKey {
    V4([u8; 4]),
    V6Prefix(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => SourceKey::V6Prefix((v6.to_bits() >> 64) as u64),
        }
    }
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let per_second = limit.per_second.max(1);
        let burst = limit.burst.max(1);
        let interval = Duration::from_secs(1) / per_second;
        let max_sources = limit.max_sources.max(1);
        RateLimiter {
            interval,
            tolerance: interval * burst,
            max_sources,
            // Grows with use up to `max_sources`; not preallocated, most deployments
            // see far fewer sources than the bound.
            buckets: LinkedHashMap::with_hasher(RandomState::new()),
            limit,
        }
    }

    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Sources currently tracked (at most `max_sources`).
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Whether a message from `ip` at `now` is within the limit; takes a token if so.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        // A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        if self.is_exempt(ip) {
            return true;
        }
        let key = SourceKey::of(ip);
        if let Some(full_at) = self.buckets.to_back(&key) {
            return take(full_at, now, self.interval, self.tolerance);
        }
        if self.buckets.len() >= self.max_sources {
            // Least recently seen first: idle, so (almost always) a full bucket.
            self.buckets.pop_front();
        }
        // A new source starts with a full bucket, one token taken.
        self.buckets.insert(key, now + self.interval);
        true
    }

    /// Whether `ip` is in one of the exempt networks (linear: the list is a few trunks).
    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.limit.exempt.iter().any(|net| net.contains(&ip))
    }
}

/// GCRA step: the bucket's full time moves one interval later per token; refused when
/// that would put it more than `burst` intervals ahead of now (bucket empty).
fn take(full_at: &mut Instant, now: Instant, interval: Duration, tolerance: Duration) -> bool {
    let next = (*full_at).max(now) + interval;
    if next.saturating_duration_since(now) > tolerance {
        return false;
    }
    *full_at = next;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn limiter(per_second: u32, burst: u32, max_sources: usize, exempt: &[&str]) -> RateLimiter {
        RateLimiter::new(RateLimit {
            per_second,
            burst,
            max_sources,
            exempt: exempt.iter().map(|s| s.parse().unwrap()).collect(),
        })
    }

    #[allow(clippy::disallowed_methods)] // the fake clock's origin; never read again
    fn t0() -> Instant {
        Instant::now()
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// How many of `n` checks at `now` pass.
    fn passes(l: &mut RateLimiter, ip: IpAddr, now: Instant, n: u32) -> u32 {
        (0..n).filter(|_| l.allow(ip, now)).count() as u32
    }

    #[test]
    fn burst_then_steady_rate() {
        let mut l = limiter(10, 20, 100, &[]);
        let t0 = t0();
        let ip = v4(192, 0, 2, 1);
        assert_eq!(passes(&mut l, ip, t0, 100), 20, "exactly the burst at once");
        // Then one per 100 ms: over 5 s of one attempt per ms, 50 pass.
        let mut passed = 0;
        for ms in 1..=5000 {
            if l.allow(ip, t0 + Duration::from_millis(ms)) {
                passed += 1;
            }
        }
        assert_eq!(passed, 50);
    }

    #[test]
    fn refills_to_burst_and_no_more() {
        let mut l = limiter(10, 20, 100, &[]);
        let t0 = t0();
        let ip = v4(192, 0, 2, 1);
        assert_eq!(passes(&mut l, ip, t0, 20), 20);
        assert!(!l.allow(ip, t0));
        // Half the refill time: half the burst back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(passes(&mut l, ip, t1, 100), 10);
        // A long idle refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(passes(&mut l, ip, t2, 100), 20);
    }

    #[test]
    fn sources_are_independent() {
        let mut l = limiter(1, 5, 100, &[]);
        let t0 = t0();
        assert_eq!(passes(&mut l, v4(192, 0, 2, 1), t0, 10), 5);
        assert_eq!(passes(&mut l, v4(192, 0, 2, 2), t0, 10), 5);
        assert_eq!(l.tracked(), 2);
    }

    #[test]
    fn exempt_networks_are_never_limited_nor_tracked() {
        let mut l = limiter(1, 1, 100, &["198.51.100.0/24", "2001:db8::/32"]);
        let t0 = t0();
        assert_eq!(passes(&mut l, v4(198, 51, 100, 7), t0, 10_000), 10_000);
        let v6: IpAddr = "2001:db8::5060".parse().unwrap();
        assert_eq!(passes(&mut l, v6, t0, 1000), 1000);
        // IPv4-mapped IPv6 (dual-stack socket) matches the IPv4 network.
        let mapped: IpAddr = "::ffff:198.51.100.9".parse().unwrap();
        assert_eq!(passes(&mut l, mapped, t0, 1000), 1000);
        assert_eq!(l.tracked(), 0);
        // Just outside the /24 is limited.
        assert_eq!(passes(&mut l, v4(198, 51, 101, 7), t0, 10), 1);
    }

    #[test]
    fn mapped_and_plain_ipv4_share_a_bucket() {
        let mut l = limiter(1, 3, 100, &[]);
        let t0 = t0();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(passes(&mut l, mapped, t0, 2), 2);
        assert_eq!(passes(&mut l, v4(192, 0, 2, 1), t0, 10), 1);
    }

    #[test]
    fn ipv6_limited_per_slash_64() {
        let mut l = limiter(1, 3, 100, &[]);
        let t0 = t0();
        let hosts = (0..10u128).map(|i| IpAddr::V6(Ipv6Addr::from_bits((0x2001_0db8 << 96) | i)));
        let passed = hosts.filter(|&ip| l.allow(ip, t0)).count();
        assert_eq!(passed, 3, "addresses in one /64 share the bucket");
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(l.allow(other, t0), "the next /64 is another source");
    }

    #[test]
    fn memory_bounded_under_address_spray() {
        let max = 1000;
        let mut l = limiter(1, 20, max, &[]);
        let t0 = t0();
        let flooder = v4(192, 0, 2, 1);
        assert_eq!(passes(&mut l, flooder, t0, 20), 20);
        // 100k distinct sources, one packet each, interleaved with the flooder.
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            let [_, b, c, d] = i.to_be_bytes();
            assert!(l.allow(v4(10, b, c, d), now), "a new source gets its burst");
            assert!(l.tracked() <= max);
            if i % 100 == 0 {
                // Seen often, so never the least recently seen: its bucket survives.
                assert!(!l.allow(flooder, now), "flooder still limited at {i}");
            }
        }
        assert_eq!(l.tracked(), max);
    }

    #[test]
    fn eviction_takes_the_idle_source() {
        let mut l = limiter(1, 2, 2, &[]);
        let t0 = t0();
        let (idle, busy, fresh) = (v4(192, 0, 2, 1), v4(192, 0, 2, 2), v4(192, 0, 2, 3));
        assert!(l.allow(idle, t0));
        assert_eq!(passes(&mut l, busy, t0, 5), 2);
        let t1 = t0 + Duration::from_millis(10);
        assert!(!l.allow(busy, t1));
        assert!(l.allow(fresh, t1), "table full: the idle source makes room");
        assert_eq!(l.tracked(), 2);
        assert!(!l.allow(busy, t1), "the busy source kept its empty bucket");
    }

    #[test]
    fn zero_settings_are_clamped() {
        let mut l = limiter(0, 0, 0, &[]);
        let t0 = t0();
        assert_eq!(passes(&mut l, v4(192, 0, 2, 1), t0, 10), 1);
        assert_eq!(
            passes(&mut l, v4(192, 0, 2, 1), t0 + Duration::from_secs(1), 10),
            1
        );
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn clock_going_backwards_does_not_refill() {
        let mut l = limiter(1, 2, 10, &[]);
        let t0 = t0() + Duration::from_secs(10);
        let ip = v4(192, 0, 2, 1);
        assert_eq!(passes(&mut l, ip, t0, 5), 2);
        assert!(!l.allow(ip, t0 - Duration::from_secs(5)));
    }
}
