//! RFC 3261 §17.2.1: the INVITE server transaction (Figure 7), with the RFC 6026
//! "Accepted" state: after a 2xx the machine keeps retransmitting it (Timer G,
//! §13.3.1.4) until the TU reports the dialog-level ACK or Timer H expires.
//!
//! The 100 Trying is sent at once by [`ServerInvite::new`]; a new dialog's INVITE uses
//! [`ServerInvite::new_quiet`] and lets the TU answer within 200 ms (§17.2.1) before the
//! user agent sends a 100, so a request refused at once (a spoofed INVITE from an unknown
//! source) draws exactly one answer. Retransmitted INVITEs get the last response again.

use std::time::{Duration, Instant};

use super::{Timer, TimerTable, TxnConfig, TxnOutput};
use crate::msg::{Request, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerInviteState {
    Proceeding,
    /// RFC 6026: a 2xx was sent; waiting for the ACK (which has its own branch).
    Accepted,
    Completed,
    Confirmed,
    Terminated,
}

#[derive(Debug)]
pub struct ServerInvite {
    state: ServerInviteState,
    cfg: TxnConfig,
    timers: TimerTable,
    g_interval: Duration,
    last_response: Vec<u8>,
    last_code: u16,
}

impl ServerInvite {
    /// Creates the machine for a new INVITE and emits the 100 Trying.
    pub fn new(request: &Request, cfg: TxnConfig, out: &mut Vec<TxnOutput>) -> Self {
        let trying = Response::for_request(request, 100, "Trying").to_bytes();
        out.push(TxnOutput::Transmit {
            bytes: trying.clone(),
            retransmission: false,
        });
        ServerInvite {
            state: ServerInviteState::Proceeding,
            cfg,
            timers: TimerTable::default(),
            g_interval: cfg.t1,
            last_response: trying,
            last_code: 100,
        }
    }

    /// As [`Self::new`] without the 100: nothing is sent until the TU responds.
    pub fn new_quiet(cfg: TxnConfig) -> Self {
        ServerInvite {
            state: ServerInviteState::Proceeding,
            cfg,
            timers: TimerTable::default(),
            g_interval: cfg.t1,
            last_response: Vec::new(),
            last_code: 0,
        }
    }

    pub fn state(&self) -> ServerInviteState {
        self.state
    }
    /// Code of the last response sent (100 until the TU responds; 0 when quiet and nothing
    /// was sent yet).
    pub fn last_code(&self) -> u16 {
        self.last_code
    }
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The TU sends a response. Ignored unless in Proceeding.
    pub fn send_response(&mut self, resp: &Response, now: Instant, out: &mut Vec<TxnOutput>) {
        if self.state != ServerInviteState::Proceeding {
            return;
        }
        let bytes = resp.to_bytes();
        out.push(TxnOutput::Transmit {
            bytes: bytes.clone(),
            retransmission: false,
        });
        self.last_response = bytes;
        self.last_code = resp.code;
        if resp.code < 200 {
            return;
        }
        self.state = if resp.code < 300 {
            ServerInviteState::Accepted
        } else {
            ServerInviteState::Completed
        };
        if !self.cfg.reliable {
            self.timers.set(Timer::G, now + self.cfg.t1);
        }
        self.timers.set(Timer::H, now + self.cfg.timeout());
    }

    /// A retransmitted INVITE (same branch).
    pub fn on_invite(&mut self, out: &mut Vec<TxnOutput>) {
        if matches!(
            self.state,
            ServerInviteState::Proceeding | ServerInviteState::Completed
        ) && !self.last_response.is_empty()
        {
            out.push(TxnOutput::Transmit {
                bytes: self.last_response.clone(),
                retransmission: true,
            });
        }
    }

    /// An ACK: matched by branch for a non-2xx final (§17.2.3), or reported by the
    /// TU from the dialog for a 2xx.
    pub fn on_ack(&mut self, now: Instant, out: &mut Vec<TxnOutput>) {
        match self.state {
            ServerInviteState::Completed => {
                self.state = ServerInviteState::Confirmed;
                self.timers.clear_all();
                let i = if self.cfg.reliable {
                    Duration::ZERO
                } else {
                    self.cfg.t4
                };
                self.timers.set(Timer::I, now + i);
            }
            ServerInviteState::Accepted => self.terminate(out),
            _ => {}
        }
    }

    pub fn on_timeout(&mut self, now: Instant, out: &mut Vec<TxnOutput>) {
        while let Some(t) = self.timers.pop_expired(now) {
            match t {
                Timer::G
                    if matches!(
                        self.state,
                        ServerInviteState::Completed | ServerInviteState::Accepted
                    ) =>
                {
                    out.push(TxnOutput::Transmit {
                        bytes: self.last_response.clone(),
                        retransmission: true,
                    });
                    self.g_interval = super::doubled(self.g_interval, Some(self.cfg.t2));
                    self.timers.set(Timer::G, now + self.g_interval);
                }
                Timer::H => {
                    out.push(TxnOutput::Timeout);
                    self.terminate(out);
                }
                Timer::I => self.terminate(out),
                _ => {}
            }
        }
    }

    fn terminate(&mut self, out: &mut Vec<TxnOutput>) {
        self.state = ServerInviteState::Terminated;
        self.timers.clear_all();
        out.push(TxnOutput::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::txn::test_util::*;

    #[test]
    fn sends_trying_at_once_and_answers_retransmits_with_last_response() {
        let mut out = Vec::new();
        let req = invite();
        let mut txn = ServerInvite::new(&req, TxnConfig::default(), &mut out);
        let TxnOutput::Transmit { bytes, .. } = &out[0] else {
            panic!()
        };
        assert!(bytes.starts_with(b"SIP/2.0 100 Trying"));
        out.clear();
        txn.on_invite(&mut out);
        assert!(
            matches!(&out[0], TxnOutput::Transmit { bytes, .. } if bytes.starts_with(b"SIP/2.0 100"))
        );
        let t0 = t0();
        txn.send_response(&response(&req, 180), t0, &mut out);
        out.clear();
        txn.on_invite(&mut out);
        assert!(
            matches!(&out[0], TxnOutput::Transmit { bytes, .. } if bytes.starts_with(b"SIP/2.0 180"))
        );
    }

    #[test]
    fn timer_g_capped_at_t2_h_at_32s() {
        let mut out = Vec::new();
        let req = invite();
        let t0 = t0();
        let mut txn = ServerInvite::new(&req, TxnConfig::default(), &mut out);
        txn.send_response(&response(&req, 486), t0, &mut out);
        let txn = RefCell::new(txn);
        let (times, tail) = retransmit_times(
            t0,
            Duration::from_secs(40),
            || txn.borrow().next_timeout(),
            |at, out| txn.borrow_mut().on_timeout(at, out),
        );
        assert_eq!(
            times,
            vec![
                500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
            ]
        );
        assert_eq!(tail, vec![TxnOutput::Timeout, TxnOutput::Terminated]);
    }

    #[test]
    fn ack_confirms_then_i_terminates() {
        let mut out = Vec::new();
        let req = invite();
        let t0 = t0();
        let mut txn = ServerInvite::new(&req, TxnConfig::default(), &mut out);
        txn.send_response(&response(&req, 486), t0, &mut out);
        out.clear();
        txn.on_ack(t0 + ms(100), &mut out);
        assert_eq!(txn.state(), ServerInviteState::Confirmed);
        assert_eq!(txn.next_timeout(), Some(t0 + ms(5100)));
        // ACK retransmissions and INVITE retransmissions are absorbed.
        txn.on_ack(t0 + ms(200), &mut out);
        txn.on_invite(&mut out);
        assert!(out.is_empty());
        txn.on_timeout(t0 + ms(5100), &mut out);
        assert_eq!(out, vec![TxnOutput::Terminated]);
    }

    #[test]
    fn two_hundred_retransmitted_until_ack() {
        let mut out = Vec::new();
        let req = invite();
        let t0 = t0();
        let mut txn = ServerInvite::new(&req, TxnConfig::default(), &mut out);
        txn.send_response(&response(&req, 200), t0, &mut out);
        out.clear();
        txn.on_timeout(t0 + ms(500), &mut out);
        assert!(
            matches!(&out[0], TxnOutput::Transmit { bytes, retransmission: true } if bytes.starts_with(b"SIP/2.0 200"))
        );
        out.clear();
        txn.on_ack(t0 + ms(600), &mut out);
        assert_eq!(out, vec![TxnOutput::Terminated]);
    }

    #[test]
    fn tcp_has_no_g_and_zero_i() {
        let mut out = Vec::new();
        let req = invite();
        let t0 = t0();
        let cfg = TxnConfig {
            reliable: true,
            ..TxnConfig::default()
        };
        let mut txn = ServerInvite::new(&req, cfg, &mut out);
        txn.send_response(&response(&req, 486), t0, &mut out);
        assert_eq!(txn.next_timeout(), Some(t0 + ms(32_000)));
        txn.on_ack(t0 + ms(5), &mut out);
        assert_eq!(txn.next_timeout(), Some(t0 + ms(5)));
    }
}
