//! An in-memory harness for scenario tests: two [`UserAgent`]s wired back to
//! back with zero latency and a virtual clock advanced to the earliest
//! `poll_timeout` (quinn/str0m style; nothing sleeps). Loss is injected with a
//! predicate over each transmit.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use crate::ua::{Datagram, Target, Transmit, Transport, UaConfig, UaEvent, UserAgent};

/// One message put on the wire by either side.
#[derive(Clone, Debug)]
pub struct WireRecord {
    pub at: Instant,
    pub from_a: bool,
    /// "INVITE sip:…" or "SIP/2.0 200 OK".
    pub first_line: String,
    pub transmit: Transmit,
    pub dropped: bool,
}

impl WireRecord {
    /// True when this is a request with `method` or a response with that status code.
    pub fn is(&self, what: &str) -> bool {
        self.first_line.starts_with(what)
            || self
                .first_line
                .strip_prefix("SIP/2.0 ")
                .is_some_and(|r| r.starts_with(what))
    }
}

type DropFn = Box<dyn FnMut(&WireRecord) -> bool>;

pub struct Pair {
    pub now: Instant,
    pub a: UserAgent,
    pub b: UserAgent,
    pub a_addr: SocketAddr,
    pub b_addr: SocketAddr,
    pub a_events: Vec<(Instant, UaEvent)>,
    pub b_events: Vec<(Instant, UaEvent)>,
    pub wire: Vec<WireRecord>,
    /// Transmits addressed to neither side.
    pub elsewhere: Vec<Transmit>,
    drop_if: DropFn,
}

impl fmt::Debug for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pair")
            .field("now", &self.now)
            .field("a_addr", &self.a_addr)
            .field("b_addr", &self.b_addr)
            .field("wire", &self.wire.len())
            .finish_non_exhaustive()
    }
}

impl Pair {
    /// A at 127.0.0.1:5060, B at 127.0.0.1:5070, default timers.
    pub fn new(now: Instant) -> Pair {
        let a_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5060));
        let b_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5070));
        let cfg = |addr| UaConfig {
            public_addr: addr,
            ..UaConfig::default()
        };
        Pair {
            now,
            a: UserAgent::new(cfg(a_addr), 1),
            b: UserAgent::new(cfg(b_addr), 2),
            a_addr,
            b_addr,
            a_events: Vec::new(),
            b_events: Vec::new(),
            wire: Vec::new(),
            elsewhere: Vec::new(),
            drop_if: Box::new(|_| false),
        }
    }

    /// Installs a loss predicate: return true to drop that transmit.
    pub fn drop_if(&mut self, f: impl FnMut(&WireRecord) -> bool + 'static) {
        self.drop_if = Box::new(f);
    }

    /// A target that reaches B.
    pub fn target_b(&self, user: &str, transport: Transport) -> Target {
        Target {
            request_uri: format!("sip:{user}@{}", self.b_addr),
            addr: self.b_addr,
            transport,
        }
    }

    /// Delivers transmits (and collects events) until both sides are quiet.
    pub fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                self.deliver(true, t);
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                self.deliver(false, t);
            }
            while let Some(e) = self.a.poll_event() {
                self.a_events.push((self.now, e));
            }
            while let Some(e) = self.b.poll_event() {
                self.b_events.push((self.now, e));
            }
            if !moved {
                return;
            }
        }
    }

    fn deliver(&mut self, from_a: bool, t: Transmit) {
        let first_line = t
            .bytes
            .split(|&b| b == b'\r')
            .next()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .unwrap_or_default();
        let mut rec = WireRecord {
            at: self.now,
            from_a,
            first_line,
            transmit: t.clone(),
            dropped: false,
        };
        rec.dropped = (self.drop_if)(&rec);
        self.wire.push(rec.clone());
        if rec.dropped {
            return;
        }
        let (src, to) = if from_a {
            (self.a_addr, &mut self.b)
        } else {
            (self.b_addr, &mut self.a)
        };
        let expected = if from_a { self.b_addr } else { self.a_addr };
        if t.dst != expected {
            self.elsewhere.push(t);
            return;
        }
        to.handle_datagram(
            self.now,
            Datagram {
                src,
                dst: t.dst,
                transport: t.transport,
                bytes: t.bytes,
            },
        );
    }

    /// The earliest deadline of either side.
    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.a.poll_timeout(), self.b.poll_timeout()) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// Jumps the clock to the next deadline if it is `<= limit`, fires it, drives.
    pub fn advance(&mut self, limit: Instant) -> bool {
        let Some(at) = self.next_timeout() else {
            return false;
        };
        if at > limit {
            return false;
        }
        self.now = self.now.max(at);
        self.a.handle_timeout(self.now);
        self.b.handle_timeout(self.now);
        self.drive();
        true
    }

    /// Advances through every deadline up to `limit`, then sets the clock to it.
    pub fn run_until(&mut self, limit: Instant) {
        while self.advance(limit) {}
        self.now = self.now.max(limit);
    }

    /// Messages that went on the wire matching `what` (see [`WireRecord::is`]).
    pub fn sent(&self, from_a: bool, what: &str) -> Vec<&WireRecord> {
        self.wire
            .iter()
            .filter(|r| r.from_a == from_a && r.is(what))
            .collect()
    }
}
