//! RTP port allocation: even RTP ports with RTCP on the next odd port (RFC 3550 §11).
//!
//! In: a configured port range. Out: [`PortPair`] guards that give the pair back when
//! dropped. The pool only books numbers; binding (and skipping numbers some other
//! process holds) is the endpoint's job. It also holds the rng that seeds endpoints.

use std::sync::{Arc, Mutex, MutexGuard};

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
    /// Where the next search starts: round robin, so a just-freed pair is reused last
    /// and stray packets of an old call are unlikely to reach a new one.
    next: usize,
    rng: StdRng,
}

/// A thread-safe pool of RTP/RTCP port pairs. Cloning shares the same pool.
#[derive(Debug, Clone)]
pub struct PortPool {
    inner: Arc<Mutex<PoolInner>>,
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
        Ok(PortPool {
            inner: Arc::new(Mutex::new(PoolInner {
                first,
                in_use: vec![false; pairs],
                next: 0,
                rng,
            })),
        })
    }

    /// Books a free pair, or `None` when all are in use.
    pub fn alloc(&self) -> Option<PortPair> {
        let mut g = lock(&self.inner);
        let n = g.in_use.len();
        let start = g.next;
        let idx = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| !g.in_use.get(i).copied().unwrap_or(true))?;
        if let Some(slot) = g.in_use.get_mut(idx) {
            *slot = true;
        }
        g.next = (idx + 1) % n;
        // idx < n and first + 2n - 1 <= max, so this fits in u16.
        let rtp = u16::try_from(usize::from(g.first) + 2 * idx).ok()?;
        Some(PortPair {
            rtp,
            pool: Arc::clone(&self.inner),
        })
    }

    /// Number of pairs in the range.
    pub fn capacity(&self) -> usize {
        lock(&self.inner).in_use.len()
    }

    /// Number of pairs not booked now.
    pub fn available(&self) -> usize {
        lock(&self.inner).in_use.iter().filter(|u| !**u).count()
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
    pool: Arc<Mutex<PoolInner>>,
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
}

impl Drop for PortPair {
    fn drop(&mut self) {
        let mut g = lock(&self.pool);
        let idx = usize::from(self.rtp.saturating_sub(g.first)) / 2;
        if let Some(slot) = g.in_use.get_mut(idx) {
            *slot = false;
        }
    }
}

/// Takes pairs from `pool` until one binds RTP and RTCP on `ip` (non-blocking tokio
/// sockets). Pairs that fail stay booked until we are done so `alloc` moves past them.
pub(crate) fn bind_from_pool(
    pool: &PortPool,
    ip: std::net::IpAddr,
) -> std::io::Result<(PortPair, tokio::net::UdpSocket, tokio::net::UdpSocket)> {
    let bind = |port| -> std::io::Result<tokio::net::UdpSocket> {
        let s = std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, port))?;
        s.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(s)
    };
    let mut failed = Vec::new();
    let mut last_err = None;
    loop {
        let Some(pair) = pool.alloc() else {
            return Err(last_err.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::AddrInUse, "RTP port pool exhausted")
            }));
        };
        match bind(pair.rtp()).and_then(|rtp| Ok((rtp, bind(pair.rtcp())?))) {
            Ok((rtp, rtcp)) => return Ok((pair, rtp, rtcp)),
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
