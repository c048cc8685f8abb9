//! RFC 3261 §17.2.2: the non-INVITE server transaction (Figure 8).
//!
//! Retransmitted requests get the last response (none while Trying); Timer J
//! (64*T1 over UDP, zero over TCP) keeps the machine around to do so.

use std::time::{Duration, Instant};

use super::{Timer, TimerTable, TxnConfig, TxnOutput};
use crate::msg::Response;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

#[derive(Debug)]
pub struct ServerNonInvite {
    state: ServerNonInviteState,
    cfg: TxnConfig,
    timers: TimerTable,
    last_response: Option<Vec<u8>>,
}

impl ServerNonInvite {
    pub fn new(cfg: TxnConfig) -> Self {
        ServerNonInvite {
            state: ServerNonInviteState::Trying,
            cfg,
            timers: TimerTable::default(),
            last_response: None,
        }
    }

    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub fn send_response(&mut self, resp: &Response, now: Instant, out: &mut Vec<TxnOutput>) {
        if matches!(
            self.state,
            ServerNonInviteState::Completed | ServerNonInviteState::Terminated
        ) {
            return;
        }
        let bytes = resp.to_bytes();
        out.push(TxnOutput::Transmit {
            bytes: bytes.clone(),
            retransmission: false,
        });
        self.last_response = Some(bytes);
        if resp.code < 200 {
            self.state = ServerNonInviteState::Proceeding;
        } else {
            self.state = ServerNonInviteState::Completed;
            let j = if self.cfg.reliable {
                Duration::ZERO
            } else {
                self.cfg.timeout()
            };
            self.timers.set(Timer::J, now + j);
        }
    }

    /// A retransmission of the request.
    pub fn on_request(&mut self, out: &mut Vec<TxnOutput>) {
        if let (ServerNonInviteState::Proceeding | ServerNonInviteState::Completed, Some(b)) =
            (self.state, &self.last_response)
        {
            out.push(TxnOutput::Transmit {
                bytes: b.clone(),
                retransmission: true,
            });
        }
    }

    pub fn on_timeout(&mut self, now: Instant, out: &mut Vec<TxnOutput>) {
        while let Some(t) = self.timers.pop_expired(now) {
            if t == Timer::J {
                self.state = ServerNonInviteState::Terminated;
                self.timers.clear_all();
                out.push(TxnOutput::Terminated);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Method;
    use crate::txn::test_util::*;

    #[test]
    fn retransmitted_request_gets_last_response_until_j() {
        let t0 = t0();
        let req = request(Method::Bye);
        let mut txn = ServerNonInvite::new(TxnConfig::default());
        let mut out = Vec::new();
        txn.on_request(&mut out);
        assert!(out.is_empty(), "nothing to resend while Trying");
        txn.send_response(&response(&req, 200), t0, &mut out);
        assert_eq!(out.len(), 1);
        out.clear();
        txn.on_request(&mut out);
        assert!(
            matches!(&out[..], [TxnOutput::Transmit { bytes, retransmission: true }] if bytes.starts_with(b"SIP/2.0 200"))
        );
        assert_eq!(txn.next_timeout(), Some(t0 + ms(32_000)));
        out.clear();
        txn.on_timeout(t0 + ms(31_999), &mut out);
        assert!(out.is_empty());
        txn.on_timeout(t0 + ms(32_000), &mut out);
        assert_eq!(out, vec![TxnOutput::Terminated]);
    }

    #[test]
    fn j_is_zero_over_tcp() {
        let t0 = t0();
        let req = request(Method::Options);
        let mut txn = ServerNonInvite::new(TxnConfig {
            reliable: true,
            ..TxnConfig::default()
        });
        let mut out = Vec::new();
        txn.send_response(&response(&req, 200), t0, &mut out);
        assert_eq!(txn.next_timeout(), Some(t0));
    }
}
