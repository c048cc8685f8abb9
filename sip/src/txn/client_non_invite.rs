//! RFC 3261 §17.1.2: the non-INVITE client transaction (Figure 6).
//!
//! Timer E retransmits from T1, doubling up to T2 (and at T2 once Proceeding);
//! Timer F times out at 64*T1; Timer K absorbs response retransmissions.

use std::time::{Duration, Instant};

use super::{Timer, TimerTable, TxnConfig, TxnOutput};
use crate::msg::{Request, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

#[derive(Debug)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    cfg: TxnConfig,
    timers: TimerTable,
    e_interval: Duration,
    request_bytes: Vec<u8>,
}

impl ClientNonInvite {
    /// Starts the transaction. The caller transmits `request_bytes()` once now.
    pub fn new(request: &Request, cfg: TxnConfig, now: Instant) -> Self {
        let mut timers = TimerTable::default();
        if !cfg.reliable {
            timers.set(Timer::E, now + cfg.t1);
        }
        timers.set(Timer::F, now + cfg.timeout());
        ClientNonInvite {
            state: ClientNonInviteState::Trying,
            cfg,
            timers,
            e_interval: cfg.t1,
            request_bytes: request.to_bytes(),
        }
    }

    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }
    pub fn request_bytes(&self) -> &[u8] {
        &self.request_bytes
    }
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    pub fn on_response(&mut self, resp: Response, now: Instant, out: &mut Vec<TxnOutput>) {
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                if resp.code < 200 {
                    self.state = ClientNonInviteState::Proceeding;
                    out.push(TxnOutput::Response(resp));
                } else {
                    self.state = ClientNonInviteState::Completed;
                    self.timers.clear_all();
                    let k = if self.cfg.reliable {
                        Duration::ZERO
                    } else {
                        self.cfg.t4
                    };
                    self.timers.set(Timer::K, now + k);
                    out.push(TxnOutput::Response(resp));
                }
            }
            // Retransmitted finals are absorbed.
            ClientNonInviteState::Completed | ClientNonInviteState::Terminated => {}
        }
    }

    pub fn on_timeout(&mut self, now: Instant, out: &mut Vec<TxnOutput>) {
        while let Some(t) = self.timers.pop_expired(now) {
            match t {
                Timer::E if self.state != ClientNonInviteState::Completed => {
                    out.push(TxnOutput::Transmit {
                        bytes: self.request_bytes.clone(),
                        retransmission: true,
                    });
                    self.e_interval = if self.state == ClientNonInviteState::Proceeding {
                        self.cfg.t2
                    } else {
                        super::doubled(self.e_interval, Some(self.cfg.t2))
                    };
                    self.timers.set(Timer::E, now + self.e_interval);
                }
                Timer::F => {
                    out.push(TxnOutput::Timeout);
                    self.terminate(out);
                }
                Timer::K => self.terminate(out),
                _ => {}
            }
        }
    }

    fn terminate(&mut self, out: &mut Vec<TxnOutput>) {
        self.state = ClientNonInviteState::Terminated;
        self.timers.clear_all();
        out.push(TxnOutput::Terminated);
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::msg::Method;
    use crate::txn::test_util::*;

    #[test]
    fn timer_e_doubles_capped_at_t2_and_f_at_32s() {
        let t0 = t0();
        let txn = RefCell::new(ClientNonInvite::new(
            &request(Method::Bye),
            TxnConfig::default(),
            t0,
        ));
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
    fn proceeding_retransmits_at_t2_and_final_absorbs_retransmits() {
        let t0 = t0();
        let req = request(Method::Bye);
        let mut txn = ClientNonInvite::new(&req, TxnConfig::default(), t0);
        let mut out = Vec::new();
        txn.on_response(response(&req, 100), t0 + ms(100), &mut out);
        assert_eq!(txn.state(), ClientNonInviteState::Proceeding);
        out.clear();
        txn.on_timeout(t0 + ms(500), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(txn.next_timeout(), Some(t0 + ms(4500)));
        out.clear();
        txn.on_response(response(&req, 200), t0 + ms(600), &mut out);
        assert!(matches!(&out[..], [TxnOutput::Response(r)] if r.code == 200));
        assert_eq!(txn.next_timeout(), Some(t0 + ms(5600)));
        out.clear();
        txn.on_response(response(&req, 200), t0 + ms(700), &mut out);
        assert!(out.is_empty());
        txn.on_timeout(t0 + ms(5600), &mut out);
        assert_eq!(out, vec![TxnOutput::Terminated]);
    }

    #[test]
    fn tcp_has_no_e_and_zero_k() {
        let t0 = t0();
        let req = request(Method::Bye);
        let cfg = TxnConfig {
            reliable: true,
            ..TxnConfig::default()
        };
        let mut txn = ClientNonInvite::new(&req, cfg, t0);
        assert_eq!(txn.next_timeout(), Some(t0 + ms(32_000)));
        let mut out = Vec::new();
        txn.on_response(response(&req, 200), t0 + ms(10), &mut out);
        assert_eq!(txn.next_timeout(), Some(t0 + ms(10)));
    }
}
