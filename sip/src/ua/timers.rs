//! UA-level timers, beside the transaction timers: reliable-provisional
//! retransmission (RFC 3262), session timers (RFC 4028), registration refresh.
//!
//! One slot per [`UaTimer`] (re-arming replaces the deadline) and a lazy-deletion
//! min-heap, like the transaction timers in `mod.rs`. Session timers are long (half
//! an hour) and most calls end first, so stale entries would pile up: the heap is
//! rebuilt from the live slots when they are outnumbered two to one.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Instant;

use super::LegRef;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum UaTimer {
    /// Retransmit this leg's unacknowledged reliable 18x.
    Rel1xx(LegRef),
    /// RFC 3262 §3: no PRACK within 64*T1.
    Rel1xxGiveUp(LegRef),
    /// RFC 4028: we are the refresher and half the interval has passed.
    SessionRefresh(LegRef),
    /// RFC 4028 §10: no refresh arrived in time.
    SessionExpiry(LegRef),
    /// Send (or resend) this registration's REGISTER.
    Register(u64),
    /// §17.2.1: the TU has not answered this new INVITE in 200 ms: send the 100.
    Trying(LegRef),
    /// RFC 3428: the TU has not answered this incoming MESSAGE in time: send 408.
    MessageAnswer(u64),
}

#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, UaTimer)>>,
    armed: HashMap<UaTimer, (Instant, u64)>,
    seq: u64,
}

impl Timers {
    /// Arms `t` at `at`, replacing any earlier deadline for it.
    pub(super) fn set(&mut self, t: UaTimer, at: Instant) {
        self.seq += 1;
        self.armed.insert(t, (at, self.seq));
        self.heap.push(Reverse((at, self.seq, t)));
    }

    pub(super) fn cancel(&mut self, t: UaTimer) {
        self.armed.remove(&t);
        // Answered MESSAGEs cancel a 30 s timer each: under load these pile up too.
        self.maybe_compact();
    }

    /// Drops stale heap entries once they dominate (amortised O(1) per cancel).
    fn maybe_compact(&mut self) {
        if self.heap.len() > 1024 && self.heap.len() > 2 * self.armed.len() {
            self.heap = self
                .armed
                .iter()
                .map(|(t, (at, seq))| Reverse((*at, *seq, *t)))
                .collect();
        }
    }

    /// Earliest heap entry (possibly stale: then firing it is a no-op).
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Disarms and returns the earliest live timer due at `now`.
    pub(super) fn pop_expired(&mut self, now: Instant) -> Option<UaTimer> {
        while let Some(Reverse((at, seq, t))) = self.heap.peek().copied() {
            if at > now {
                return None;
            }
            self.heap.pop();
            if self.armed.get(&t) == Some(&(at, seq)) {
                self.armed.remove(&t);
                return Some(t);
            }
        }
        None
    }

    /// Every timer of a leg that goes away.
    pub(super) fn cancel_leg(&mut self, leg: LegRef) {
        for t in [
            UaTimer::Rel1xx(leg),
            UaTimer::Rel1xxGiveUp(leg),
            UaTimer::SessionRefresh(leg),
            UaTimer::SessionExpiry(leg),
            UaTimer::Trying(leg),
        ] {
            self.armed.remove(&t);
        }
        self.maybe_compact();
    }

    #[cfg(test)]
    fn heap_len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[allow(clippy::disallowed_methods)] // a fixed origin for the fake clock
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn rearm_replaces_and_cancel_disarms() {
        let t0 = t0();
        let s = Duration::from_secs(1);
        let mut t = Timers::default();
        t.set(UaTimer::Rel1xx(1), t0 + s);
        t.set(UaTimer::Rel1xx(1), t0 + 3 * s);
        t.set(UaTimer::Register(9), t0 + 2 * s);
        t.set(UaTimer::SessionRefresh(2), t0 + s);
        t.cancel_leg(2);
        assert_eq!(
            t.pop_expired(t0 + s),
            None,
            "stale and cancelled entries skipped"
        );
        assert_eq!(t.pop_expired(t0 + 3 * s), Some(UaTimer::Register(9)));
        assert_eq!(t.pop_expired(t0 + 3 * s), Some(UaTimer::Rel1xx(1)));
        assert_eq!(t.pop_expired(t0 + 3 * s), None);
    }

    #[test]
    fn ended_legs_do_not_pile_up_in_the_heap() {
        let t0 = t0();
        let mut t = Timers::default();
        t.set(UaTimer::Register(1), t0 + Duration::from_secs(5));
        for leg in 0..100_000 {
            t.set(UaTimer::SessionRefresh(leg), t0 + Duration::from_secs(900));
            t.set(UaTimer::SessionExpiry(leg), t0 + Duration::from_secs(1800));
            t.cancel_leg(leg);
        }
        assert!(t.heap_len() <= 2048, "{}", t.heap_len());
        assert_eq!(
            t.pop_expired(t0 + Duration::from_secs(3600)),
            Some(UaTimer::Register(1))
        );
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(3600)), None);
    }
}
