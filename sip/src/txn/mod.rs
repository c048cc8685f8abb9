//! RFC 3261 §17: the transaction layer, sans-IO.
//!
//! One file per state machine (client INVITE §17.1.1, client non-INVITE §17.1.2,
//! server INVITE §17.2.1, server non-INVITE §17.2.2). Each machine owns a
//! [`TimerTable`] indexed by [`Timer`] and reports what to do through
//! [`TxnOutput`] values pushed onto a caller-supplied buffer, so the user agent
//! can reuse one buffer for every input.

use std::time::{Duration, Instant};

use crate::msg::{Method, Response};

mod client_invite;
mod client_non_invite;
mod server_invite;
mod server_non_invite;

pub use client_invite::{ClientInvite, ClientInviteState};
pub use client_non_invite::{ClientNonInvite, ClientNonInviteState};
pub use server_invite::{ServerInvite, ServerInviteState};
pub use server_non_invite::{ServerNonInvite, ServerNonInviteState};

/// RFC 3261 §17 timer names (Table 4 of Appendix A).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Timer {
    /// INVITE request retransmit (client, unreliable transport).
    A,
    /// INVITE transaction timeout (client).
    B,
    /// Wait time for response retransmits (client INVITE, Completed).
    D,
    /// Non-INVITE request retransmit (client, unreliable transport).
    E,
    /// Non-INVITE transaction timeout (client).
    F,
    /// INVITE final response retransmit (server, unreliable transport).
    G,
    /// Wait time for ACK receipt (server INVITE).
    H,
    /// Wait time for ACK retransmits (server INVITE, Confirmed).
    I,
    /// Wait time for request retransmits (server non-INVITE, Completed).
    J,
    /// Wait time for response retransmits (client non-INVITE, Completed).
    K,
}

const ALL_TIMERS: [Timer; 10] = [
    Timer::A,
    Timer::B,
    Timer::D,
    Timer::E,
    Timer::F,
    Timer::G,
    Timer::H,
    Timer::I,
    Timer::J,
    Timer::K,
];

impl Timer {
    fn index(self) -> usize {
        self as usize
    }
}

/// Deadlines of one transaction, one slot per [`Timer`] (quinn style).
#[derive(Clone, Debug, Default)]
pub struct TimerTable {
    slots: [Option<Instant>; 10],
}

impl TimerTable {
    pub fn set(&mut self, timer: Timer, at: Instant) {
        self.slots[timer.index()] = Some(at);
    }
    pub fn clear(&mut self, timer: Timer) {
        self.slots[timer.index()] = None;
    }
    pub fn get(&self, timer: Timer) -> Option<Instant> {
        self.slots[timer.index()]
    }
    /// Earliest armed deadline.
    pub fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().min().copied()
    }
    /// Disarms and returns the earliest timer whose deadline is `<= now`.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let mut best: Option<(Instant, Timer)> = None;
        for t in ALL_TIMERS {
            if let Some(at) = self.slots[t.index()]
                && at <= now
                && best.is_none_or(|(b, _)| at < b)
            {
                best = Some((at, t));
            }
        }
        let (_, t) = best?;
        self.clear(t);
        Some(t)
    }
    pub fn clear_all(&mut self) {
        self.slots = [None; 10];
    }
}

/// Timer values and transport reliability for one transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxnConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// TCP: no retransmission timers, and the "wait" timers D/I/J/K are zero.
    pub reliable: bool,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            reliable: false,
        }
    }
}

impl TxnConfig {
    /// 64*T1: Timer B, F and H.
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// What a machine asks its user to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutput {
    /// Send these bytes to the transaction's peer.
    Transmit {
        bytes: Vec<u8>,
        retransmission: bool,
    },
    /// Pass this response up to the transaction user (client machines).
    Response(Response),
    /// Timer B/F/H expired (or, for a client INVITE after CANCEL, the 64*T1 guard).
    Timeout,
    /// The machine reached Terminated: forget it.
    Terminated,
}

/// Which machine a message belongs to: ACK goes with its INVITE (§17.2.3), and
/// CANCEL has its own transaction with the INVITE's branch (§9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MethodKind {
    Invite,
    Cancel,
    Other,
}

impl MethodKind {
    pub fn of(m: &Method) -> MethodKind {
        match m {
            Method::Invite | Method::Ack => MethodKind::Invite,
            Method::Cancel => MethodKind::Cancel,
            _ => MethodKind::Other,
        }
    }
}

/// Transaction identity: branch + method kind + which side we are.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxnKey {
    pub branch: String,
    pub kind: MethodKind,
    pub server: bool,
}

/// Doubles `cur`, capped at `cap` (Timer E and G, §17.1.2.2 / §17.2.1).
pub(crate) fn doubled(cur: Duration, cap: Option<Duration>) -> Duration {
    let d = cur.saturating_mul(2);
    match cap {
        Some(c) if d > c => c,
        _ => d,
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use std::time::{Duration, Instant};

    use super::TxnOutput;
    use crate::msg::{Method, Request, Response};

    pub fn invite() -> Request {
        request(Method::Invite)
    }

    pub fn request(m: Method) -> Request {
        let mut r = Request::new(m.clone(), "sip:bob@127.0.0.1:5070");
        r.headers
            .push("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKtest");
        r.headers.push("Max-Forwards", "70");
        r.headers.push("From", "<sip:alice@127.0.0.1>;tag=aaa");
        r.headers.push("To", "<sip:bob@127.0.0.1>");
        r.headers.push("Call-ID", "cid@127.0.0.1");
        r.headers.push("CSeq", format!("1 {}", m.as_str()));
        r
    }

    pub fn response(req: &Request, code: u16) -> Response {
        Response::for_request(req, code, crate::msg::default_reason(code))
    }

    /// The fake clock's origin (any instant will do; nothing reads the clock again).
    #[allow(clippy::disallowed_methods)]
    pub fn t0() -> Instant {
        Instant::now()
    }

    pub fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Instants (relative to `t0`, in ms) at which retransmissions happen when
    /// driving the machine with `step` from timer to timer until `until`.
    pub fn retransmit_times(
        t0: Instant,
        until: Duration,
        mut next: impl FnMut() -> Option<Instant>,
        mut fire: impl FnMut(Instant, &mut Vec<TxnOutput>),
    ) -> (Vec<u64>, Vec<TxnOutput>) {
        let mut times = Vec::new();
        let mut tail = Vec::new();
        while let Some(at) = next() {
            if at > t0 + until {
                break;
            }
            let mut out = Vec::new();
            fire(at, &mut out);
            for o in out {
                match o {
                    TxnOutput::Transmit {
                        retransmission: true,
                        ..
                    } => times.push((at - t0).as_millis() as u64),
                    other => tail.push(other),
                }
            }
            if tail.iter().any(|o| matches!(o, TxnOutput::Terminated)) {
                break;
            }
        }
        (times, tail)
    }
}
