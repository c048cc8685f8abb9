//! A transit call (B2BUA) as a sans-IO state machine: the caller's leg A came in from a
//! carrier, the dialplan chose trunks, and leg B goes out through them in failover order.
//!
//! Inputs are what the user agent reports on either leg plus API and timer events; outputs
//! are SIP actions per leg and status changes. `transit_task` does the I/O (media bridge,
//! SDP, store). Like `Call`, it reads no clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::call::{EndReason, StatusChange};
use super::status::status_for_final;
use crate::model::CallStatus;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransitInput {
    /// Route the call: try the first trunk.
    Start,
    /// 18x on leg B; `early_media` when it carried SDP.
    BProgress {
        code: u16,
        early_media: bool,
    },
    BAnswered,
    /// Final non-2xx on leg B (408 for a timeout, 503 for a transport failure).
    BFailed {
        code: u16,
        reason: String,
    },
    /// Our CANCEL of B took effect.
    BCancelled,
    /// Leg B's dialog ended (`by_remote`: the callee hung up).
    BTerminated {
        by_remote: bool,
    },
    /// Leg A's dialog ended: the caller's CANCEL (before answer) or BYE, or our BYE done.
    ATerminated {
        by_remote: bool,
    },
    /// The caller never ACKed our 200; the user agent has sent it a BYE.
    AAckTimeout,
    /// The caller's session timer ran out (no refresh).
    SessionExpired,
    Hangup,
    /// The switch is stopping (SIGTERM): a hangup with its own reason.
    Shutdown,
    /// The far end of one leg took over the call by REFER and reported success.
    Transferred,
    MediaTimeout,
    /// Leg B could not even be sent (no address, trunk over its limit): like a 503.
    BUnavailable {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransitOutput {
    /// Send an INVITE on B through `trunks[index]`.
    InviteB {
        index: usize,
    },
    /// Relay progress to the caller (with our SDP when `early_media`).
    ProgressA {
        code: u16,
        early_media: bool,
    },
    /// Answer the caller (with our SDP).
    AnswerA,
    /// Final non-2xx to the caller.
    RejectA {
        code: u16,
        reason: String,
    },
    CancelB,
    ByeA,
    ByeB,
    Status(StatusChange),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// INVITE on B outstanding; `ringing` once a 18x was relayed.
    Calling {
        ringing: bool,
    },
    /// CANCEL sent on B; A already has (or needs no) final response.
    CancellingB(EndReason),
    Answered,
    /// BYEs sent; waiting for the legs still up.
    Ending {
        why: EndReason,
        a_up: bool,
        b_up: bool,
    },
    Done,
}

/// SIP codes after which the next trunk is tried (RFC 3261 §16.7 style serial forking:
/// the destination may be fine, this route is not).
pub fn fails_over(code: u16) -> bool {
    code == 408 || (500..600).contains(&code) && code != 580
}

#[derive(Debug)]
pub struct Transit {
    phase: Phase,
    trunks: usize,
    current: usize,
    ring_timeout: Duration,
    max_duration: Duration,
    ring_deadline: Option<Instant>,
    end_deadline: Option<Instant>,
    /// Early media was relayed to the caller: a failover would splice two callees' audio
    /// into one early dialog, so after it the failure goes to the caller instead.
    early_media_sent: bool,
    out: VecDeque<TransitOutput>,
}

impl Transit {
    /// `trunks`: how many routes the dialplan gave (tried in order).
    pub fn new(trunks: usize, ring_timeout: Duration, max_duration: Duration) -> Self {
        Self {
            phase: Phase::Idle,
            trunks,
            current: 0,
            ring_timeout,
            max_duration,
            ring_deadline: None,
            end_deadline: None,
            early_media_sent: false,
            out: VecDeque::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Index of the trunk leg B uses now.
    pub fn current_trunk(&self) -> usize {
        self.current
    }

    pub fn poll_output(&mut self) -> Option<TransitOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Calling { .. } => self.ring_deadline,
            Phase::Answered => self.end_deadline,
            _ => None,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Calling { .. })
            && self.ring_deadline.is_some_and(|d| now >= d)
        {
            self.ring_deadline = None;
            self.out.push_back(TransitOutput::CancelB);
            self.out.push_back(TransitOutput::RejectA {
                code: 480,
                reason: "Temporarily Unavailable".into(),
            });
            self.phase = Phase::CancellingB(EndReason::RingTimeout);
        }
        if self.phase == Phase::Answered && self.end_deadline.is_some_and(|d| now >= d) {
            self.end_deadline = None;
            self.end_both(EndReason::MaxDuration);
        }
    }

    pub fn handle(&mut self, now: Instant, input: TransitInput) {
        use TransitInput as I;
        let (input, hangup) = match input {
            I::Shutdown => (I::Hangup, EndReason::SwitchShutdown),
            other => (other, EndReason::Hangup),
        };
        match (self.phase, input) {
            (Phase::Idle, I::Start) => {
                if self.trunks == 0 {
                    self.reject_a(404, "No Route".into());
                    return;
                }
                self.phase = Phase::Calling { ringing: false };
                self.ring_deadline = Some(now + self.ring_timeout);
                self.out.push_back(TransitOutput::InviteB { index: 0 });
            }
            (Phase::Idle, I::ATerminated { .. } | I::Hangup) => {
                self.finish(CallStatus::Cancelled, Some(487), None, hangup);
            }
            (Phase::Calling { ringing }, I::BProgress { code, early_media }) => {
                self.out
                    .push_back(TransitOutput::ProgressA { code, early_media });
                self.early_media_sent |= early_media;
                if !ringing {
                    self.phase = Phase::Calling { ringing: true };
                    self.status(CallStatus::Ringing, Some(code), None, None);
                }
            }
            (Phase::Calling { .. }, I::BAnswered) => {
                self.phase = Phase::Answered;
                self.ring_deadline = None;
                self.end_deadline = Some(now + self.max_duration);
                self.out.push_back(TransitOutput::AnswerA);
                self.status(CallStatus::InProgress, Some(200), None, None);
            }
            (Phase::Calling { .. }, I::BFailed { code, reason }) => self.b_failed(code, reason),
            (Phase::Calling { .. }, I::BUnavailable { reason }) => self.b_failed(503, reason),
            // The caller gave up (CANCEL) before an answer: the user agent answered it 487.
            (Phase::Calling { .. }, I::ATerminated { .. }) => {
                self.out.push_back(TransitOutput::CancelB);
                self.phase = Phase::CancellingB(EndReason::CallerCancel);
            }
            (Phase::Calling { .. }, I::Hangup) => {
                self.out.push_back(TransitOutput::CancelB);
                self.out.push_back(TransitOutput::RejectA {
                    code: 487,
                    reason: "Request Terminated".into(),
                });
                self.phase = Phase::CancellingB(hangup);
            }
            // B answered into our CANCEL: the user agent ACKs+BYEs it and reports Cancelled.
            (
                Phase::CancellingB(why),
                I::BCancelled | I::BFailed { .. } | I::BTerminated { .. },
            ) => {
                // The 487 answered our own CANCEL; on a ring timeout the call's outcome is
                // the 480 the caller got, not something the callee said.
                if why == EndReason::RingTimeout {
                    let reason = Some("Temporarily Unavailable".into());
                    self.finish(CallStatus::NoAnswer, Some(480), reason, why);
                } else {
                    let reason = Some("Request Terminated".into());
                    self.finish(CallStatus::Cancelled, Some(487), reason, why);
                }
            }
            (Phase::Answered, I::ATerminated { .. }) => {
                self.ending(EndReason::CallerBye, false, true)
            }
            (Phase::Answered, I::AAckTimeout) => self.ending(EndReason::AckTimeout, false, true),
            (Phase::Answered, I::BTerminated { .. }) => {
                self.ending(EndReason::RemoteBye, true, false)
            }
            (Phase::Answered, I::Hangup) => self.end_both(hangup),
            (Phase::Answered, I::Transferred) => self.end_both(EndReason::Transferred),
            (Phase::Answered, I::MediaTimeout) => self.end_both(EndReason::MediaTimeout),
            (Phase::Answered, I::SessionExpired) => {
                // The user agent already sent the BYE on A.
                self.ending(EndReason::SessionExpired, true, true);
            }
            (Phase::Ending { why, a_up, b_up }, I::ATerminated { .. } | I::AAckTimeout) if a_up => {
                self.after_leg_end(why, false, b_up);
            }
            (Phase::Ending { why, a_up, b_up }, I::BTerminated { .. }) if b_up => {
                self.after_leg_end(why, a_up, false);
            }
            _ => {}
        }
    }

    fn b_failed(&mut self, code: u16, reason: String) {
        let next = self.current + 1;
        if fails_over(code) && next < self.trunks && !self.early_media_sent {
            self.current = next;
            self.out.push_back(TransitOutput::InviteB { index: next });
            return;
        }
        // 503 from our last route means "no route worked": the caller may retry elsewhere.
        // A 408 (ours or the callee's) is not the caller's request timing out: it hears 480
        // with 480's own phrase.
        let (relay, relay_reason) = if code == 408 {
            (480, "Temporarily Unavailable".to_owned())
        } else {
            (code, reason.clone())
        };
        self.out.push_back(TransitOutput::RejectA {
            code: relay,
            reason: relay_reason,
        });
        self.finish(
            status_for_final(code),
            Some(code),
            Some(reason),
            EndReason::Rejected,
        );
    }

    fn reject_a(&mut self, code: u16, reason: String) {
        self.out.push_back(TransitOutput::RejectA {
            code,
            reason: reason.clone(),
        });
        self.finish(
            status_for_final(code),
            Some(code),
            Some(reason),
            EndReason::Rejected,
        );
    }

    /// One leg hung up: BYE the other, report completed once it is down.
    fn ending(&mut self, why: EndReason, a_up: bool, b_up: bool) {
        if a_up {
            self.out.push_back(TransitOutput::ByeA);
        }
        if b_up {
            self.out.push_back(TransitOutput::ByeB);
        }
        self.end_deadline = None;
        self.status(CallStatus::Completed, None, None, Some(why));
        self.phase = if a_up || b_up {
            Phase::Ending { why, a_up, b_up }
        } else {
            Phase::Done
        };
    }

    fn end_both(&mut self, why: EndReason) {
        self.ending(why, true, true);
    }

    fn after_leg_end(&mut self, why: EndReason, a_up: bool, b_up: bool) {
        self.phase = if a_up || b_up {
            Phase::Ending { why, a_up, b_up }
        } else {
            Phase::Done
        };
    }

    fn finish(
        &mut self,
        status: CallStatus,
        code: Option<u16>,
        reason: Option<String>,
        why: EndReason,
    ) {
        self.phase = Phase::Done;
        self.ring_deadline = None;
        self.end_deadline = None;
        self.status(status, code, reason, Some(why));
    }

    fn status(
        &mut self,
        status: CallStatus,
        sip_code: Option<u16>,
        sip_reason: Option<String>,
        end_reason: Option<EndReason>,
    ) {
        self.out.push_back(TransitOutput::Status(StatusChange {
            status,
            sip_code,
            sip_reason,
            end_reason,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransitInput as I;
    use TransitOutput as O;

    const RING: Duration = Duration::from_secs(30);
    const MAX: Duration = Duration::from_secs(3600);

    fn run(trunks: usize, inputs: &[I]) -> (Transit, Vec<O>) {
        let t0 = Instant::now();
        let mut t = Transit::new(trunks, RING, MAX);
        let mut outs = Vec::new();
        for i in inputs {
            t.handle(t0, i.clone());
            outs.extend(std::iter::from_fn(|| t.poll_output()));
        }
        (t, outs)
    }

    fn statuses(outs: &[O]) -> Vec<(CallStatus, Option<EndReason>)> {
        outs.iter()
            .filter_map(|o| match o {
                O::Status(s) => Some((s.status, s.end_reason)),
                _ => None,
            })
            .collect()
    }

    fn failed(code: u16) -> I {
        I::BFailed {
            code,
            reason: "x".into(),
        }
    }

    #[test]
    fn answered_call_bridges_and_ends_when_either_side_hangs_up() {
        let (t, outs) = run(
            1,
            &[
                I::Start,
                I::BProgress {
                    code: 180,
                    early_media: false,
                },
                I::BAnswered,
                I::ATerminated { by_remote: true },
                I::BTerminated { by_remote: false },
            ],
        );
        assert!(t.is_done());
        assert_eq!(
            outs.iter()
                .filter(|o| !matches!(o, O::Status(_)))
                .cloned()
                .collect::<Vec<_>>(),
            vec![
                O::InviteB { index: 0 },
                O::ProgressA {
                    code: 180,
                    early_media: false
                },
                O::AnswerA,
                O::ByeB,
            ]
        );
        assert_eq!(
            statuses(&outs),
            vec![
                (CallStatus::Ringing, None),
                (CallStatus::InProgress, None),
                (CallStatus::Completed, Some(EndReason::CallerBye)),
            ]
        );
        let (t, outs) = run(
            1,
            &[I::Start, I::BAnswered, I::BTerminated { by_remote: true }],
        );
        assert!(!t.is_done(), "waits for A's BYE to complete");
        assert!(outs.contains(&O::ByeA));
        assert_eq!(
            statuses(&outs).last(),
            Some(&(CallStatus::Completed, Some(EndReason::RemoteBye)))
        );
    }

    #[test]
    fn shutdown_ends_both_legs_with_its_own_reason() {
        let (t, outs) = run(
            1,
            &[
                I::Start,
                I::BAnswered,
                I::Shutdown,
                I::ATerminated { by_remote: false },
                I::BTerminated { by_remote: false },
            ],
        );
        assert!(t.is_done() && outs.contains(&O::ByeA) && outs.contains(&O::ByeB));
        assert_eq!(
            statuses(&outs).last(),
            Some(&(CallStatus::Completed, Some(EndReason::SwitchShutdown)))
        );
        let (_, outs) = run(1, &[I::Start, I::Shutdown, I::BCancelled]);
        assert_eq!(
            statuses(&outs).last(),
            Some(&(CallStatus::Cancelled, Some(EndReason::SwitchShutdown)))
        );
    }

    #[test]
    fn a_caller_that_never_acks_is_not_a_caller_bye() {
        let (t, outs) = run(1, &[I::Start, I::BAnswered, I::AAckTimeout]);
        assert!(!t.is_done(), "waits for B's BYE to complete");
        assert!(outs.contains(&O::ByeB) && !outs.contains(&O::ByeA));
        assert_eq!(
            statuses(&outs).last(),
            Some(&(CallStatus::Completed, Some(EndReason::AckTimeout)))
        );
    }

    #[test]
    fn a_transfer_by_refer_ends_both_legs_transferred() {
        let (t, outs) = run(
            1,
            &[
                I::Start,
                I::BAnswered,
                I::Transferred,
                I::ATerminated { by_remote: false },
                I::BTerminated { by_remote: false },
            ],
        );
        assert!(t.is_done());
        assert!(outs.contains(&O::ByeA) && outs.contains(&O::ByeB));
        assert_eq!(
            statuses(&outs).last(),
            Some(&(CallStatus::Completed, Some(EndReason::Transferred)))
        );
        // Before the answer there is nothing to transfer.
        let (_, outs) = run(1, &[I::Start, I::Transferred]);
        assert_eq!(outs, vec![O::InviteB { index: 0 }]);
    }

    #[test]
    fn fails_over_on_503_and_408_but_not_on_486() {
        let (t, outs) = run(3, &[I::Start, failed(503), failed(408), I::BAnswered]);
        assert_eq!(t.current_trunk(), 2);
        assert!(outs.contains(&O::InviteB { index: 1 }));
        assert!(outs.contains(&O::InviteB { index: 2 }));
        assert!(outs.contains(&O::AnswerA));

        let (t, outs) = run(3, &[I::Start, failed(486)]);
        assert!(t.is_done());
        assert!(!outs.contains(&O::InviteB { index: 1 }));
        assert!(outs.contains(&O::RejectA {
            code: 486,
            reason: "x".into()
        }));
        assert_eq!(
            statuses(&outs),
            vec![(CallStatus::Busy, Some(EndReason::Rejected))]
        );
    }

    #[test]
    fn last_trunk_failure_goes_to_the_caller() {
        let (t, outs) = run(2, &[I::Start, failed(503), failed(503)]);
        assert!(t.is_done());
        assert!(outs.contains(&O::RejectA {
            code: 503,
            reason: "x".into()
        }));
        let (_, outs) = run(1, &[I::Start, failed(408)]);
        assert!(outs.contains(&O::RejectA {
            code: 480,
            reason: "Temporarily Unavailable".into()
        }));
    }

    #[test]
    fn no_failover_after_early_media() {
        let (_, outs) = run(
            2,
            &[
                I::Start,
                I::BProgress {
                    code: 183,
                    early_media: true,
                },
                failed(503),
            ],
        );
        assert!(!outs.contains(&O::InviteB { index: 1 }));
    }

    #[test]
    fn caller_cancel_cancels_b() {
        let (t, outs) = run(
            1,
            &[I::Start, I::ATerminated { by_remote: true }, I::BCancelled],
        );
        assert!(t.is_done());
        assert!(outs.contains(&O::CancelB));
        assert_eq!(
            statuses(&outs),
            vec![(CallStatus::Cancelled, Some(EndReason::CallerCancel))]
        );
    }

    #[test]
    fn ring_timeout_cancels_b_and_tells_a() {
        let t0 = Instant::now();
        let mut t = Transit::new(1, RING, MAX);
        t.handle(t0, I::Start);
        assert_eq!(t.poll_timeout(), Some(t0 + RING));
        t.handle_timeout(t0 + RING);
        let outs: Vec<O> = std::iter::from_fn(|| t.poll_output()).collect();
        assert!(outs.contains(&O::CancelB));
        assert!(
            outs.iter()
                .any(|o| matches!(o, O::RejectA { code: 480, .. }))
        );
        t.handle(t0 + RING, I::BCancelled);
        let outs: Vec<O> = std::iter::from_fn(|| t.poll_output()).collect();
        assert_eq!(
            statuses(&outs),
            vec![(CallStatus::NoAnswer, Some(EndReason::RingTimeout))]
        );
        let Some(O::Status(s)) = outs.first() else {
            panic!("a status: {outs:?}");
        };
        assert_eq!(
            (s.sip_code, s.sip_reason.as_deref()),
            (Some(480), Some("Temporarily Unavailable")),
            "what the caller got, not the 487 of our CANCEL"
        );
    }

    #[test]
    fn hangup_and_timers_after_answer_bye_both_legs() {
        let (t, outs) = run(
            1,
            &[
                I::Start,
                I::BAnswered,
                I::Hangup,
                I::ATerminated { by_remote: false },
                I::BTerminated { by_remote: false },
            ],
        );
        assert!(t.is_done());
        assert!(outs.contains(&O::ByeA) && outs.contains(&O::ByeB));
        let t0 = Instant::now();
        let mut t = Transit::new(1, RING, Duration::from_secs(10));
        t.handle(t0, I::Start);
        t.handle(t0, I::BAnswered);
        let _: Vec<O> = std::iter::from_fn(|| t.poll_output()).collect();
        t.handle_timeout(t0 + Duration::from_secs(10));
        let outs: Vec<O> = std::iter::from_fn(|| t.poll_output()).collect();
        assert_eq!(
            statuses(&outs),
            vec![(CallStatus::Completed, Some(EndReason::MaxDuration))]
        );
    }

    #[test]
    fn no_trunks_is_a_404_to_the_caller() {
        let (t, outs) = run(0, &[I::Start]);
        assert!(t.is_done());
        assert!(
            outs.iter()
                .any(|o| matches!(o, O::RejectA { code: 404, .. }))
        );
    }
}
