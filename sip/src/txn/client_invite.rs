//! RFC 3261 §17.1.1: the INVITE client transaction (Figure 5).
//!
//! 2xx responses terminate the machine and go to the TU, which ACKs them at the
//! dialog level (§13.2.2.4). Non-2xx finals are ACKed here with the INVITE's
//! branch (§17.1.1.3). After a CANCEL the TU may re-arm Timer B as the §9.1
//! 64*T1 guard while in Proceeding.

use std::time::{Duration, Instant};

use super::{Timer, TimerTable, TxnConfig, TxnOutput};
use crate::msg::{Method, Request, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientInviteState {
    Calling,
    Proceeding,
    Completed,
    Terminated,
}

#[derive(Debug)]
pub struct ClientInvite {
    state: ClientInviteState,
    cfg: TxnConfig,
    timers: TimerTable,
    /// Current Timer A interval.
    a_interval: Duration,
    request: Request,
    request_bytes: Vec<u8>,
    /// ACK for the non-2xx final, resent for each retransmitted final.
    ack_bytes: Option<Vec<u8>>,
}

impl ClientInvite {
    /// Starts the transaction. The caller transmits `request_bytes()` once now.
    pub fn new(request: Request, cfg: TxnConfig, now: Instant) -> Self {
        let request_bytes = request.to_bytes();
        let mut timers = TimerTable::default();
        if !cfg.reliable {
            timers.set(Timer::A, now + cfg.t1);
        }
        timers.set(Timer::B, now + cfg.timeout());
        ClientInvite {
            state: ClientInviteState::Calling,
            cfg,
            timers,
            a_interval: cfg.t1,
            request,
            request_bytes,
            ack_bytes: None,
        }
    }

    pub fn state(&self) -> ClientInviteState {
        self.state
    }
    pub fn request(&self) -> &Request {
        &self.request
    }
    pub fn request_bytes(&self) -> &[u8] {
        &self.request_bytes
    }
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// §9.1: after sending CANCEL, give up on the INVITE if no final arrives within 64*T1.
    pub fn cancel_sent(&mut self, now: Instant) {
        if self.state == ClientInviteState::Proceeding {
            self.timers.set(Timer::B, now + self.cfg.timeout());
        }
    }

    pub fn on_response(&mut self, resp: Response, now: Instant, out: &mut Vec<TxnOutput>) {
        let code = resp.code;
        match self.state {
            ClientInviteState::Calling | ClientInviteState::Proceeding => {
                if code < 200 {
                    if self.state == ClientInviteState::Calling {
                        self.state = ClientInviteState::Proceeding;
                        self.timers.clear(Timer::A);
                        // Figure 5: Timer B only fires in Calling.
                        self.timers.clear(Timer::B);
                    }
                    out.push(TxnOutput::Response(resp));
                } else if code < 300 {
                    self.terminate(out, Some(resp));
                } else {
                    let ack = self.build_ack(&resp).to_bytes();
                    out.push(TxnOutput::Transmit {
                        bytes: ack.clone(),
                        retransmission: false,
                    });
                    self.ack_bytes = Some(ack);
                    out.push(TxnOutput::Response(resp));
                    self.state = ClientInviteState::Completed;
                    self.timers.clear_all();
                    let d = if self.cfg.reliable {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(32).max(self.cfg.t1 * 64)
                    };
                    self.timers.set(Timer::D, now + d);
                }
            }
            ClientInviteState::Completed => {
                // Retransmitted final: ACK again, do not bother the TU.
                if code >= 300
                    && let Some(ack) = &self.ack_bytes
                {
                    out.push(TxnOutput::Transmit {
                        bytes: ack.clone(),
                        retransmission: true,
                    });
                }
            }
            ClientInviteState::Terminated => {}
        }
    }

    pub fn on_timeout(&mut self, now: Instant, out: &mut Vec<TxnOutput>) {
        while let Some(t) = self.timers.pop_expired(now) {
            match t {
                Timer::A if self.state == ClientInviteState::Calling => {
                    out.push(TxnOutput::Transmit {
                        bytes: self.request_bytes.clone(),
                        retransmission: true,
                    });
                    self.a_interval = super::doubled(self.a_interval, None);
                    self.timers.set(Timer::A, now + self.a_interval);
                }
                Timer::B => {
                    out.push(TxnOutput::Timeout);
                    self.terminate(out, None);
                }
                Timer::D => self.terminate(out, None),
                _ => {}
            }
        }
    }

    fn terminate(&mut self, out: &mut Vec<TxnOutput>, resp: Option<Response>) {
        self.state = ClientInviteState::Terminated;
        self.timers.clear_all();
        if let Some(r) = resp {
            out.push(TxnOutput::Response(r));
        }
        out.push(TxnOutput::Terminated);
    }

    /// §17.1.1.3: the ACK for a non-2xx final response.
    fn build_ack(&self, resp: &Response) -> Request {
        let req = &self.request;
        let mut ack = Request::new(Method::Ack, req.uri.clone());
        if let Some(v) = req.headers.get("Via") {
            ack.headers.push("Via", v);
        }
        ack.headers.push("Max-Forwards", "70");
        for name in ["From", "Call-ID"] {
            if let Some(v) = req.headers.get(name) {
                ack.headers.push(name, v);
            }
        }
        if let Some(v) = resp.headers.get("To").or_else(|| req.headers.get("To")) {
            ack.headers.push("To", v);
        }
        let n = req.headers.cseq().map(|(n, _)| n).unwrap_or(1);
        ack.headers.push("CSeq", format!("{n} ACK"));
        for r in req.headers.get_all("Route") {
            ack.headers.push("Route", r);
        }
        ack
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::txn::test_util::*;

    fn start(reliable: bool) -> (Instant, ClientInvite) {
        let t0 = t0();
        let cfg = TxnConfig {
            reliable,
            ..TxnConfig::default()
        };
        (t0, ClientInvite::new(invite(), cfg, t0))
    }

    #[test]
    fn timer_a_doubles_and_b_times_out_at_32s() {
        let (t0, txn) = start(false);
        let txn = std::cell::RefCell::new(txn);
        let (times, tail) = retransmit_times(
            t0,
            Duration::from_secs(40),
            || txn.borrow().next_timeout(),
            |at, out| txn.borrow_mut().on_timeout(at, out),
        );
        assert_eq!(times, vec![500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(tail, vec![TxnOutput::Timeout, TxnOutput::Terminated]);
        assert_eq!(txn.borrow().state(), ClientInviteState::Terminated);
    }

    #[test]
    fn b_fires_exactly_at_64_t1() {
        let (t0, mut txn) = start(false);
        let mut out = Vec::new();
        txn.on_timeout(t0 + ms(31_999), &mut out);
        assert!(!out.contains(&TxnOutput::Timeout));
        out.clear();
        txn.on_timeout(t0 + ms(32_000), &mut out);
        assert!(out.contains(&TxnOutput::Timeout));
    }

    #[test]
    fn no_retransmission_over_tcp() {
        let (t0, txn) = start(true);
        assert_eq!(txn.next_timeout(), Some(t0 + ms(32_000)));
    }

    #[test]
    fn provisional_stops_retransmissions_and_non2xx_is_acked_with_same_branch() {
        let (t0, mut txn) = start(false);
        let mut out = Vec::new();
        txn.on_response(response(&invite(), 180), t0 + ms(100), &mut out);
        assert!(matches!(&out[..], [TxnOutput::Response(r)] if r.code == 180));
        assert_eq!(txn.next_timeout(), None);
        out.clear();
        txn.on_response(response(&invite(), 486), t0 + ms(200), &mut out);
        let TxnOutput::Transmit { bytes, .. } = &out[0] else {
            panic!("expected ACK first: {out:?}")
        };
        let ack = String::from_utf8_lossy(bytes);
        assert!(ack.starts_with("ACK sip:bob@127.0.0.1:5070 SIP/2.0"));
        assert!(ack.contains("branch=z9hG4bKtest"));
        assert!(ack.contains("1 ACK"));
        assert!(matches!(&out[1], TxnOutput::Response(r) if r.code == 486));
        assert_eq!(txn.next_timeout(), Some(t0 + ms(200) + ms(32_000)));
        // A retransmitted 486 is ACKed again and absorbed.
        out.clear();
        txn.on_response(response(&invite(), 486), t0 + ms(300), &mut out);
        assert!(matches!(
            &out[..],
            [TxnOutput::Transmit {
                retransmission: true,
                ..
            }]
        ));
        out.clear();
        txn.on_timeout(t0 + ms(32_200), &mut out);
        assert_eq!(out, vec![TxnOutput::Terminated]);
    }

    #[test]
    fn timer_d_is_zero_over_tcp() {
        let (t0, mut txn) = start(true);
        let mut out = Vec::new();
        txn.on_response(response(&invite(), 503), t0, &mut out);
        assert_eq!(txn.next_timeout(), Some(t0));
    }

    #[test]
    fn two_hundred_goes_to_tu_and_terminates() {
        let (t0, mut txn) = start(false);
        let mut out = Vec::new();
        txn.on_response(response(&invite(), 200), t0, &mut out);
        assert!(matches!(&out[0], TxnOutput::Response(r) if r.code == 200));
        assert_eq!(out[1], TxnOutput::Terminated);
    }

    #[test]
    fn cancel_guard_rearms_b_in_proceeding() {
        let (t0, mut txn) = start(false);
        let mut out = Vec::new();
        txn.on_response(response(&invite(), 180), t0, &mut out);
        txn.cancel_sent(t0 + ms(1000));
        assert_eq!(txn.next_timeout(), Some(t0 + ms(33_000)));
    }
}
