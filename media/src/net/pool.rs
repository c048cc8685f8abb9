//! RTP port allocation: even RTP ports with RTCP on the next odd port (RFC 3550 §11).
//!
//! In: a configured port range. Out: [`PortPair`] guards that give the pair back when
//! dropped, and [`bind_from_pool`], which binds a booked pair (skipping numbers some
//! other process holds). When asked to, the pool also keeps the bound sockets of ended
//! legs for reuse. It also holds the rng that seeds endpoints.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Why a pool cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PortPoolError {
    /// The range holds no even port whose odd neighbour is also in range, or starts at 0.
    #[error("port range {min}-{max} holds no RTP/RTCP pair")]
    EmptyRange {
        /// Lowest port asked for.
        min: u16,
        /// Highest port asked for.
        max: u16,
    },
}

#[derive(Debug)]
struct PoolInner {
    /// Lowest even port.
    first: u16,
    /// `in_use[i]` is the pair `first + 2i`.
    in_use: Vec<bool>,
    /// Free pairs by conntrack zone ([`super::kernel::zone_of`]), each the longest free
    /// first; bookings take the zones in turn. A just-freed pair is reused last, so
    /// stray packets of an old call are unlikely to reach a new one, and booking is O(1)
    /// even when nearly every pair is taken (a linear search there made overload worse).
    /// By zone so that a bridge can have both its pairs in one (in-kernel forwarding).
    free: Vec<VecDeque<usize>>,
    /// Pairs in `free`.
    free_count: usize,
    /// The zone the next booking tries first.
    cursor: usize,
    rng: StdRng,
    /// Bound socket pairs of ended legs kept for reuse (their slots stay booked), oldest
    /// first; empty unless [`PortPool::keep_sockets`] turned it on.
    warm: VecDeque<WarmPair>,
    warm_max: usize,
    warm_rest: Duration,
    /// Booked pairs (live legs and kept pairs, each two sockets) beyond which a new leg
    /// is refused before any socket is made: the rest of the descriptors are for SIP,
    /// the database and HTTP, and a refusal that costs no system calls keeps an
    /// overloaded switch from spending itself on opening and closing sockets.
    max_open: usize,
    /// The process ran out of descriptors: until then ended legs close their sockets
    /// instead of keeping them, so live calls get every descriptor there is.
    no_keep_until: Option<Instant>,
}

impl PoolInner {
    /// Gives the pair whose RTP port is `rtp` back.
    fn free_slot(&mut self, rtp: u16) {
        let idx = usize::from(rtp.saturating_sub(self.first)) / 2;
        if let Some(slot) = self.in_use.get_mut(idx)
            && *slot
        {
            *slot = false;
            self.push_free(idx);
        }
    }

    /// Puts pair `idx` at the back of its zone's free list.
    fn push_free(&mut self, idx: usize) {
        let zone = usize::from(super::kernel::zone_of(self.port(idx)));
        if let Some(list) = self.free.get_mut(zone) {
            list.push_back(idx);
            self.free_count += 1;
        }
    }

    /// The RTP port of pair `idx` (`idx < n` and `first + 2n - 1 <= max`, so it fits).
    fn port(&self, idx: usize) -> u16 {
        u16::try_from(usize::from(self.first) + 2 * idx).unwrap_or(u16::MAX)
    }

    /// Books pair `idx`, taken off its free list.
    fn book(&mut self, idx: usize) -> u16 {
        self.free_count = self.free_count.saturating_sub(1);
        if let Some(slot) = self.in_use.get_mut(idx) {
            *slot = true;
        }
        self.port(idx)
    }

    /// Pairs booked now: live legs, kept pairs, and pairs a bind is trying.
    fn open_pairs(&self) -> usize {
        self.in_use.len().saturating_sub(self.free_count)
    }

    /// Out of descriptors: ended legs stop keeping sockets for a while.
    fn fd_pressure(&mut self) {
        self.no_keep_until = Some(Instant::now() + FD_PRESSURE_HOLD);
    }

    /// Closes up to `n` kept socket pairs (oldest first) and frees their slots; how many.
    fn shed_kept(&mut self, n: usize) -> usize {
        let mut shed = 0;
        while shed < n {
            let Some(oldest) = self.warm.pop_front() else {
                break;
            };
            self.free_slot(oldest.rtp_port);
            shed += 1;
        }
        shed
    }
}

/// Sockets of an ended leg, still bound and registered with the runtime that opened them.
#[derive(Debug)]
struct WarmPair {
    rtp_port: u16,
    ip: std::net::IpAddr,
    rtp: tokio::net::UdpSocket,
    rtcp: tokio::net::UdpSocket,
    freed: Instant,
}

/// How long a kept pair rests before another call gets it: packets the old peer had in
/// flight when the call ended arrive in this time and are thrown away, so they cannot
/// be taken for the new call's first packet (latching).
pub const WARM_REST: Duration = Duration::from_millis(250);

/// How long ended legs close their sockets instead of keeping them after the process
/// ran out of descriptors.
const FD_PRESSURE_HOLD: Duration = Duration::from_secs(2);

/// A thread-safe pool of RTP/RTCP port pairs. Cloning shares the same pool.
#[derive(Debug, Clone)]
pub struct PortPool {
    inner: Arc<Mutex<PoolInner>>,
    /// Bridges from this pool hand pass-through calls to the kernel when set.
    kernel: Option<Arc<super::kernel::KernelForwarder>>,
}

/// Locks, ignoring poisoning: the state is a bitmap that stays consistent.
fn lock(m: &Mutex<PoolInner>) -> MutexGuard<'_, PoolInner> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PortPool {
    /// A pool over `min..=max`, its rng seeded from the operating system.
    pub fn new(min: u16, max: u16) -> Result<Self, PortPoolError> {
        Self::with_rng(min, max, StdRng::from_os_rng())
    }

    /// A pool over `min..=max` whose endpoints draw SSRCs etc. from `rng`.
    pub fn with_rng(min: u16, max: u16, rng: StdRng) -> Result<Self, PortPoolError> {
        let err = PortPoolError::EmptyRange { min, max };
        if min == 0 {
            return Err(err);
        }
        let first = u32::from(min) + u32::from(min % 2);
        let max = u32::from(max);
        if first + 1 > max {
            return Err(err);
        }
        // Pair k needs first + 2k + 1 <= max.
        let pairs = (max - first).div_ceil(2) as usize;
        let first = u16::try_from(first).map_err(|_| err)?;
        let mut inner = PoolInner {
            first,
            in_use: vec![false; pairs],
            free: vec![VecDeque::new(); super::kernel::ZONES],
            free_count: 0,
            cursor: 0,
            rng,
            warm: VecDeque::new(),
            warm_max: 0,
            warm_rest: WARM_REST,
            max_open: usize::MAX,
            no_keep_until: None,
        };
        for idx in 0..pairs {
            inner.push_free(idx);
        }
        Ok(PortPool {
            inner: Arc::new(Mutex::new(inner)),
            kernel: None,
        })
    }

    /// Bridges opened from this pool offload pass-through calls to `kernel`
    /// ([`super::kernel`]).
    pub fn with_kernel_forwarder(mut self, kernel: Arc<super::kernel::KernelForwarder>) -> Self {
        self.kernel = Some(kernel);
        self
    }

    /// The in-kernel forwarder bridges from this pool use, if any.
    pub fn kernel_forwarder(&self) -> Option<&Arc<super::kernel::KernelForwarder>> {
        self.kernel.as_ref()
    }

    /// Keeps up to `max` bound socket pairs of ended legs for reuse, saving each new leg
    /// the socket/bind/register/close system calls (a large share of a short call's
    /// cost). The sockets stay registered with the tokio runtime that opened them, so a
    /// pool that keeps sockets must only be used from one runtime (the switch's).
    pub fn keep_sockets(&self, max: usize) {
        self.keep_sockets_resting(max, WARM_REST);
    }

    /// [`keep_sockets`](Self::keep_sockets) with another rest than [`WARM_REST`].
    pub fn keep_sockets_resting(&self, max: usize, rest: Duration) {
        let mut g = lock(&self.inner);
        g.warm_max = max;
        g.warm_rest = rest;
    }

    /// Binds up to `n` pairs on `ip` now and keeps them as if their legs had ended and
    /// rested, so the first calls after a start reuse sockets like later ones (a switch
    /// restarted under load otherwise binds every leg afresh for its first
    /// [`WARM_REST`], at about twice the CPU per call). Bounded by
    /// [`keep_sockets`](Self::keep_sockets) and the open-pair limit; call it from the
    /// runtime that will use the pool. Returns how many pairs it kept.
    pub fn prebind(&self, ip: std::net::IpAddr, n: usize) -> std::io::Result<usize> {
        let mut kept = 0;
        while kept < n {
            {
                let g = lock(&self.inner);
                if g.warm.len() >= g.warm_max || g.open_pairs() >= g.max_open {
                    break;
                }
            }
            let (mut pair, rtp, rtcp) = match bind_fresh(self, ip, None) {
                Ok(bound) => bound,
                // Ports other processes hold, or the range ran out: keep what we have.
                Err(_) if kept > 0 => break,
                Err(e) => return Err(e),
            };
            let mut g = lock(&self.inner);
            let rested = Instant::now()
                .checked_sub(g.warm_rest)
                .unwrap_or_else(Instant::now);
            g.warm.push_back(WarmPair {
                rtp_port: pair.rtp,
                ip,
                rtp,
                rtcp,
                freed: rested,
            });
            pair.kept = true;
            kept += 1;
        }
        Ok(kept)
    }

    /// At most `max` pairs (two sockets each) open at once, kept ones included; a leg
    /// beyond that is refused before it makes a socket (see [`bind_from_pool`]).
    pub fn limit_open_pairs(&self, max: usize) {
        lock(&self.inner).max_open = max;
    }

    /// Books a free pair, or `None` when all are in use (a kept socket pair gives its
    /// slot up rather than a call going without).
    pub fn alloc(&self) -> Option<PortPair> {
        let mut g = lock(&self.inner);
        if g.free_count == 0 {
            g.shed_kept(1);
        }
        let start = g.cursor;
        let (zone, idx) = (0..super::kernel::ZONES)
            .map(|k| (start + k) % super::kernel::ZONES)
            .find_map(|z| Some((z, g.free.get_mut(z)?.pop_front()?)))?;
        g.cursor = (zone + 1) % super::kernel::ZONES;
        let rtp = g.book(idx);
        Some(PortPair {
            rtp,
            bound_ip: None,
            pool: Arc::clone(&self.inner),
            kept: false,
        })
    }

    /// Books a free pair in conntrack zone `zone` ([`super::kernel::zone_of`]), or
    /// `None` when that zone has none free.
    pub fn alloc_in_zone(&self, zone: u16) -> Option<PortPair> {
        let mut g = lock(&self.inner);
        let idx = g.free.get_mut(usize::from(zone))?.pop_front()?;
        let rtp = g.book(idx);
        Some(PortPair {
            rtp,
            bound_ip: None,
            pool: Arc::clone(&self.inner),
            kept: false,
        })
    }

    /// Number of pairs in the range.
    pub fn capacity(&self) -> usize {
        lock(&self.inner).in_use.len()
    }

    /// Number of pairs not booked now (kept socket pairs count as free).
    pub fn available(&self) -> usize {
        let g = lock(&self.inner);
        g.free_count + g.warm.len()
    }

    /// Number of bound socket pairs kept for reuse now.
    pub fn kept(&self) -> usize {
        lock(&self.inner).warm.len()
    }

    /// A seed for a new endpoint's own rng.
    pub(crate) fn seed(&self) -> u64 {
        lock(&self.inner).rng.random()
    }
}

/// A booked RTP/RTCP port pair; dropping it returns the pair to the pool.
#[derive(Debug)]
pub struct PortPair {
    rtp: u16,
    /// The address its sockets are bound on, once bound here (spares a getsockname).
    bound_ip: Option<std::net::IpAddr>,
    pool: Arc<Mutex<PoolInner>>,
    /// Its sockets went to the warm list, which now holds the booking.
    kept: bool,
}

impl PortPair {
    /// The even RTP port.
    pub fn rtp(&self) -> u16 {
        self.rtp
    }

    /// The RTCP port (RTP + 1).
    pub fn rtcp(&self) -> u16 {
        self.rtp.wrapping_add(1)
    }

    /// Gives the pair back now (same as dropping it).
    pub fn release(self) {}

    /// Ends the leg: its bound sockets go to the pool's warm list when it keeps sockets
    /// (and has room), else they close and the pair is freed.
    pub(crate) fn recycle(mut self, rtp: tokio::net::UdpSocket, rtcp: tokio::net::UdpSocket) {
        let Some(ip) = self
            .bound_ip
            .or_else(|| rtp.local_addr().ok().map(|a| a.ip()))
        else {
            return;
        };
        let mut g = lock(&self.pool);
        let pressed = g.no_keep_until.is_some_and(|t| Instant::now() < t);
        if g.warm.len() < g.warm_max && !pressed {
            g.warm.push_back(WarmPair {
                rtp_port: self.rtp,
                ip,
                rtp,
                rtcp,
                freed: Instant::now(),
            });
            self.kept = true;
        }
    }
}

impl Drop for PortPair {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        lock(&self.pool).free_slot(self.rtp);
    }
}

/// "Too many open files" (Linux, the BSDs and macOS agree on the number).
const EMFILE: i32 = 24;

/// A rested kept pair bound on `ip` (in `zone` if given), emptied of anything that
/// arrived while it rested.
fn take_warm(
    pool: &PortPool,
    ip: std::net::IpAddr,
    zone: Option<u16>,
) -> Option<(PortPair, tokio::net::UdpSocket, tokio::net::UdpSocket)> {
    let warm = {
        let mut g = lock(&pool.inner);
        let front = g.warm.front()?;
        if front.ip != ip
            || front.freed.elapsed() < g.warm_rest
            || zone.is_some_and(|z| super::kernel::zone_of(front.rtp_port) != z)
        {
            return None;
        }
        g.warm.pop_front()?
    };
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    for s in [&warm.rtp, &warm.rtcp] {
        // Straight to the socket (not tokio's cached readiness): every queued datagram
        // goes. Bounded: a socket buffer holds a few hundred at most.
        let sock = socket2::SockRef::from(s);
        for _ in 0..1024 {
            match sock.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                _ => {}
            }
        }
    }
    let pair = PortPair {
        rtp: warm.rtp_port,
        bound_ip: Some(ip),
        pool: Arc::clone(&pool.inner),
        kept: false,
    };
    Some((pair, warm.rtp, warm.rtcp))
}

/// Takes pairs from `pool` until one binds RTP and RTCP on `ip` (non-blocking tokio
/// sockets), a rested kept pair first, in conntrack zone `zone` while it has one free
/// (then any). Pairs that fail stay booked until we are done so `alloc` moves past them.
pub(crate) fn bind_from_pool(
    pool: &PortPool,
    ip: std::net::IpAddr,
    zone: Option<u16>,
) -> std::io::Result<(PortPair, tokio::net::UdpSocket, tokio::net::UdpSocket)> {
    match take_warm(pool, ip, zone) {
        Some(warm) => Ok(warm),
        None => bind_fresh(pool, ip, zone),
    }
}

/// Takes pairs from `pool` until one binds RTP and RTCP on `ip`.
fn bind_fresh(
    pool: &PortPool,
    ip: std::net::IpAddr,
    zone: Option<u16>,
) -> std::io::Result<(PortPair, tokio::net::UdpSocket, tokio::net::UdpSocket)> {
    let bind = |port| -> std::io::Result<tokio::net::UdpSocket> {
        let s = std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, port))?;
        s.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(s)
    };
    let mut failed = Vec::new();
    let mut last_err = None;
    loop {
        {
            let mut g = lock(&pool.inner);
            if g.open_pairs() >= g.max_open && g.shed_kept(1) == 0 {
                g.fd_pressure();
                return Err(std::io::Error::other(
                    "RTP sockets at their share of the descriptor limit",
                ));
            }
        }
        let Some(mut pair) = zone
            .and_then(|z| pool.alloc_in_zone(z))
            .or_else(|| pool.alloc())
        else {
            return Err(last_err.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::AddrInUse, "RTP port pool exhausted")
            }));
        };
        match bind(pair.rtp()).and_then(|rtp| Ok((rtp, bind(pair.rtcp())?))) {
            Ok((rtp, rtcp)) => {
                pair.bound_ip = Some(ip);
                return Ok((pair, rtp, rtcp));
            }
            // Out of descriptors: kept sockets give theirs up before a call is refused.
            Err(e)
                if e.raw_os_error() == Some(EMFILE) && {
                    let mut g = lock(&pool.inner);
                    g.fd_pressure();
                    g.shed_kept(64) > 0
                } =>
            {
                drop(pair);
                last_err = Some(e);
            }
            Err(e) => {
                tracing::debug!(port = pair.rtp(), error = %e, "RTP port pair unavailable");
                last_err = Some(e);
                failed.push(pair);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(min: u16, max: u16) -> Result<PortPool, PortPoolError> {
        PortPool::with_rng(min, max, StdRng::seed_from_u64(3))
    }

    #[test]
    fn range_rules() {
        assert!(pool(0, 10).is_err());
        assert!(pool(10, 10).is_err());
        assert!(pool(11, 12).is_err());
        assert!(pool(20, 10).is_err());
        assert!(pool(65534, 65535).is_ok());
        assert!(pool(65535, 65535).is_err());
        assert_eq!(pool(11, 16).unwrap().capacity(), 2); // 12/13, 14/15
        assert_eq!(pool(10, 19).unwrap().capacity(), 5);
    }

    #[test]
    fn allocates_even_pairs_to_exhaustion_and_back() {
        let p = pool(11, 16).unwrap();
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_eq!((a.rtp(), a.rtcp()), (12, 13));
        assert_eq!((b.rtp(), b.rtcp()), (14, 15));
        assert!(p.alloc().is_none());
        assert_eq!(p.available(), 0);
        a.release();
        assert_eq!(p.available(), 1);
        let c = p.alloc().unwrap();
        assert_eq!(c.rtp(), 12);
        drop(b);
        drop(c);
        assert_eq!(p.available(), 2);
    }

    #[test]
    fn a_freed_pair_is_reused_after_every_other_free_pair() {
        let p = pool(20, 25).unwrap(); // 20 and 22 in zone 5, 24 in zone 6
        let a = p.alloc().unwrap();
        let a_port = a.rtp();
        drop(a);
        let mut taken = Vec::new();
        while let Some(pair) = p.alloc() {
            taken.push(pair);
        }
        let ports: Vec<u16> = taken.iter().map(PortPair::rtp).collect();
        assert_eq!(ports.len(), 3);
        assert_eq!(
            ports.last(),
            Some(&a_port),
            "the never-used pairs first: {ports:?}"
        );
        drop(taken);
        assert_eq!(p.available(), 3);
    }

    #[test]
    fn a_pair_in_a_given_zone_is_booked_while_that_zone_has_one() {
        use super::super::kernel::zone_of;
        let p = pool(20_000, 20_519).unwrap(); // two 256-port blocks and a bit
        let a = p.alloc().unwrap();
        let zone = zone_of(a.rtp());
        let mut same = Vec::new();
        while let Some(pair) = p.alloc_in_zone(zone) {
            assert_eq!(zone_of(pair.rtp()), zone);
            assert_eq!(zone_of(pair.rtcp()), zone);
            assert_ne!(pair.rtp(), a.rtp());
            same.push(pair);
        }
        let in_zone = (20_000..20_519u16)
            .step_by(2)
            .filter(|&port| zone_of(port) == zone)
            .count();
        assert_eq!(same.len(), in_zone - 1, "every other pair of the zone");
        assert!(p.alloc_in_zone(64).is_none(), "no such zone");
        let other = p.alloc().unwrap();
        assert_ne!(zone_of(other.rtp()), zone, "other zones still book");
        let before = p.available();
        drop(same);
        assert!(p.available() > before);
        assert!(p.alloc_in_zone(zone).is_some());
    }

    #[tokio::test]
    async fn kept_sockets_are_reused_empty_and_give_way() {
        let p = pool(41300, 41303).unwrap(); // two pairs
        p.keep_sockets_resting(4, Duration::ZERO);
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let (pair, rtp, rtcp) = bind_from_pool(&p, ip, None).unwrap();
        let port = pair.rtp();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&rtp);
        // A packet of the old call still queued when the leg ends.
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(b"old call", ("127.0.0.1", port)).unwrap();
        rtp.readable().await.unwrap();
        pair.recycle(rtp, rtcp);
        assert_eq!(p.kept(), 1);
        assert_eq!(p.available(), 2, "a kept pair counts as free");

        let (again, rtp, rtcp) = bind_from_pool(&p, ip, None).unwrap();
        assert_eq!(again.rtp(), port);
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&rtp), fd, "same socket");
        assert_eq!(p.kept(), 0);
        peer.send_to(b"new call", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 32];
        let (n, _) = rtp.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"new call", "the old packet was thrown away");

        // Every slot booked, one of them by a kept pair: alloc takes the kept pair's slot.
        again.recycle(rtp, rtcp);
        let other = p.alloc().unwrap();
        assert_eq!(p.kept(), 1);
        let freed = p.alloc().expect("the kept pair gives its slot up");
        assert_eq!(freed.rtp(), port);
        assert_eq!(p.kept(), 0);
        drop((other, freed));
        assert_eq!(p.available(), 2);
    }

    #[tokio::test]
    async fn resting_pairs_and_pools_without_keeping_bind_afresh() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let p = pool(41310, 41313).unwrap();
        let (pair, rtp, rtcp) = bind_from_pool(&p, ip, None).unwrap();
        pair.recycle(rtp, rtcp);
        assert_eq!(p.kept(), 0, "keeping is off by default");
        assert_eq!(p.available(), 2);

        p.keep_sockets_resting(4, Duration::from_secs(3600));
        let (pair, rtp, rtcp) = bind_from_pool(&p, ip, None).unwrap();
        let port = pair.rtp();
        pair.recycle(rtp, rtcp);
        let (next, _, _) = bind_from_pool(&p, ip, None).unwrap();
        assert_ne!(next.rtp(), port, "a resting pair is not handed out");
        assert_eq!(p.kept(), 1);
    }

    #[tokio::test]
    async fn prebound_pairs_are_ready_at_once_and_bounded_by_the_keep_limit() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let p = pool(41330, 41341).unwrap();
        assert_eq!(p.prebind(ip, 4).unwrap(), 0, "nothing is kept unless asked");
        // A rest far longer than the test: only prebound pairs can be ready now.
        p.keep_sockets_resting(3, Duration::from_secs(3600));
        assert_eq!(p.prebind(ip, 5).unwrap(), 3);
        assert_eq!(p.kept(), 3);
        let (pair, _rtp, _rtcp) = bind_from_pool(&p, ip, None).unwrap();
        assert_eq!(p.kept(), 2, "the leg took a prebound pair");
        assert!((41330..=41341).contains(&pair.rtp()));
        // The open-pair limit counts prebound pairs too.
        let q = pool(41350, 41361).unwrap();
        q.keep_sockets_resting(6, Duration::from_secs(3600));
        q.limit_open_pairs(2);
        assert_eq!(q.prebind(ip, 6).unwrap(), 2);
    }

    #[tokio::test]
    async fn over_the_socket_budget_a_kept_pair_goes_first_then_legs_are_refused() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let p = pool(41320, 41329).unwrap();
        p.keep_sockets_resting(4, Duration::from_secs(3600));
        p.limit_open_pairs(2);
        let (a, rtp, rtcp) = bind_from_pool(&p, ip, None).unwrap();
        a.recycle(rtp, rtcp);
        assert_eq!(p.kept(), 1);
        let (_b, _b_rtp, _b_rtcp) = bind_from_pool(&p, ip, None).unwrap();
        // Two pairs open (one kept, one live): the next leg closes the kept pair instead
        // of going over the budget.
        let (c, c_rtp, c_rtcp) = bind_from_pool(&p, ip, None).unwrap();
        assert_eq!(p.kept(), 0);
        // Nothing left to close: refused, and the pool had room for it.
        let err = bind_from_pool(&p, ip, None).unwrap_err();
        assert!(err.to_string().contains("descriptor"), "{err}");
        assert_eq!(p.available(), 3);
        // Having hit the budget, ended legs close their sockets for a while.
        c.recycle(c_rtp, c_rtcp);
        assert_eq!(p.kept(), 0);
        assert_eq!(p.available(), 4);
    }

    #[test]
    fn shared_across_threads() {
        let p = pool(30000, 30099).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || (0..10).filter_map(|_| p.alloc()).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<PortPair> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 40);
        let mut ports: Vec<u16> = all.iter().map(PortPair::rtp).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 40);
        assert!(ports.iter().all(|p| p % 2 == 0));
        all.clear();
        assert_eq!(p.available(), 50);
    }
}
