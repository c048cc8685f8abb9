//! One outbound call as a sans-IO state machine.
//!
//! Inputs are what the SIP user agent reports and what the API or timers ask for; outputs
//! are SIP actions and status changes. `core::task` does the I/O around it. The machine
//! reads no clock: every input carries `now`, and `poll_timeout` says when to call
//! `handle_timeout` next (ring timeout before answer, max duration after).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::status::status_for_final;
use crate::model::CallStatus;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallInput {
    /// Place the call (send the INVITE).
    Start,
    /// An inbound call the switch itself answers (agent route).
    StartInbound,
    /// The session timer ran out; the user agent has sent the BYE.
    SessionExpired,
    /// A transfer (REFER) succeeded: the far end is connected elsewhere.
    Transferred,
    /// 18x from the far end.
    Progress { code: u16 },
    /// 2xx, already ACKed by the user agent.
    Answered,
    /// Final non-2xx (or a transaction timeout reported as 408 / transport error as 503).
    Failed { code: u16, reason: String },
    /// Our CANCEL took effect (487, or a 200 that raced it and was closed with BYE).
    Cancelled,
    /// The dialog ended: the far end's BYE (`by_remote`) or ours completing.
    Terminated { by_remote: bool },
    /// Inbound: our 2xx was never ACKed; the user agent has sent the BYE.
    AckTimeout,
    /// Hang up from the API.
    Hangup,
    /// Hang up because the switch is stopping (SIGTERM): a hangup with its own reason.
    Shutdown,
    /// No RTP from the far end for the configured time on an answered call.
    MediaTimeout,
    /// The call's agent stream ended the conversation (the server closed normally).
    StreamEnded,
    /// The call's agent stream failed past its grace period.
    StreamFailed,
    /// The party the caller was handed to (a second leg bridged in) hung up.
    HandoffBye,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallOutput {
    Invite,
    /// Answer the inbound leg.
    Answer,
    Cancel,
    Bye,
    Status(StatusChange),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub status: CallStatus,
    pub sip_code: Option<u16>,
    pub sip_reason: Option<String>,
    /// Why the call ended, for terminal statuses.
    pub end_reason: Option<EndReason>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    RemoteBye,
    Hangup,
    MaxDuration,
    MediaTimeout,
    RingTimeout,
    Rejected,
    /// Transit and inbound calls: the caller's CANCEL before answer.
    CallerCancel,
    /// Transit calls: the caller's BYE (`RemoteBye` is the callee's).
    CallerBye,
    /// RFC 4028: the session was not refreshed in time.
    SessionExpired,
    /// Handed to another party by REFER.
    Transferred,
    /// Inbound and transit calls: the caller never ACKed our 200 (RFC 3261 §13.3.1.4).
    AckTimeout,
    /// The switch was stopped (SIGTERM) while the call was live.
    SwitchShutdown,
    /// The agent's stream server closed the conversation.
    StreamEnded,
    /// The agent's stream could not be (re)connected within its grace period.
    StreamFailed,
    /// The party the caller was handed to (a bridged hand-off leg) hung up.
    HandoffBye,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RemoteBye => "remote_bye",
            Self::Hangup => "hangup",
            Self::MaxDuration => "max_duration",
            Self::MediaTimeout => "media_timeout",
            Self::RingTimeout => "ring_timeout",
            Self::Rejected => "rejected",
            Self::CallerCancel => "caller_cancel",
            Self::CallerBye => "caller_bye",
            Self::SessionExpired => "session_expired",
            Self::Transferred => "transferred",
            Self::AckTimeout => "ack_timeout",
            Self::SwitchShutdown => "switch_shutdown",
            Self::StreamEnded => "stream_ended",
            Self::StreamFailed => "stream_failed",
            Self::HandoffBye => "handoff_bye",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Calling,
    Ringing,
    /// CANCEL sent; the reason decides the final status.
    Cancelling(EndReason),
    Answered,
    /// BYE sent.
    Ending(EndReason),
    Done,
}

#[derive(Debug)]
pub struct Call {
    phase: Phase,
    ring_timeout: Duration,
    max_duration: Duration,
    ring_deadline: Option<Instant>,
    end_deadline: Option<Instant>,
    out: VecDeque<CallOutput>,
}

impl Call {
    pub fn new(ring_timeout: Duration, max_duration: Duration) -> Self {
        Self {
            phase: Phase::Idle,
            ring_timeout,
            max_duration,
            ring_deadline: None,
            end_deadline: None,
            out: VecDeque::new(),
        }
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn handle(&mut self, now: Instant, input: CallInput) {
        use CallInput as I;
        let (input, hangup) = match input {
            I::Shutdown => (I::Hangup, EndReason::SwitchShutdown),
            I::StreamEnded => (I::Hangup, EndReason::StreamEnded),
            I::StreamFailed => (I::Hangup, EndReason::StreamFailed),
            I::HandoffBye => (I::Hangup, EndReason::HandoffBye),
            other => (other, EndReason::Hangup),
        };
        match (self.phase, input) {
            (Phase::Idle, I::Start) => {
                self.phase = Phase::Calling;
                self.ring_deadline = Some(now + self.ring_timeout);
                self.out.push_back(CallOutput::Invite);
            }
            (Phase::Idle, I::StartInbound) => {
                self.out.push_back(CallOutput::Answer);
                self.answered(now);
            }
            (Phase::Idle, I::Hangup) => self.finish(CallStatus::Cancelled, None, None, hangup),
            (Phase::Calling, I::Progress { code }) => {
                self.phase = Phase::Ringing;
                self.status(CallStatus::Ringing, Some(code), None, None);
            }
            (Phase::Calling | Phase::Ringing, I::Answered) => self.answered(now),
            (Phase::Calling | Phase::Ringing, I::Failed { code, reason }) => {
                self.finish(
                    status_for_final(code),
                    Some(code),
                    Some(reason),
                    EndReason::Rejected,
                );
            }
            (Phase::Calling | Phase::Ringing, I::Hangup) => {
                self.phase = Phase::Cancelling(hangup);
                self.out.push_back(CallOutput::Cancel);
            }
            // The far end answered although we were cancelling: the user agent ACKs and
            // BYEs it and then reports Cancelled; nothing to do until then.
            (Phase::Cancelling(_), I::Answered | I::Progress { .. } | I::Hangup) => {}
            (Phase::Cancelling(why), I::Cancelled | I::Terminated { .. }) => {
                self.finish_cancelled(why, Some(487), Some("Request Terminated".into()));
            }
            (Phase::Cancelling(why), I::Failed { code, reason }) => {
                self.finish_cancelled(why, Some(code), Some(reason));
            }
            (Phase::Answered, I::Terminated { by_remote: true }) => {
                self.finish(CallStatus::Completed, None, None, EndReason::RemoteBye);
            }
            (Phase::Answered, I::AckTimeout) => {
                self.finish(CallStatus::Completed, None, None, EndReason::AckTimeout);
            }
            (Phase::Ending(why), I::AckTimeout) => {
                self.finish(CallStatus::Completed, None, None, why);
            }
            (Phase::Answered, I::Hangup) => {
                self.phase = Phase::Ending(hangup);
                self.out.push_back(CallOutput::Bye);
            }
            (Phase::Answered, I::SessionExpired) => {
                self.phase = Phase::Ending(EndReason::SessionExpired);
            }
            (Phase::Answered, I::Transferred) => {
                self.phase = Phase::Ending(EndReason::Transferred);
                self.out.push_back(CallOutput::Bye);
            }
            (Phase::Answered, I::MediaTimeout) => {
                self.phase = Phase::Ending(EndReason::MediaTimeout);
                self.out.push_back(CallOutput::Bye);
            }
            (Phase::Ending(why), I::Terminated { by_remote }) => {
                // Both sides sent BYE at once: the far end's counts as theirs.
                let why = if by_remote && why != EndReason::Transferred {
                    EndReason::RemoteBye
                } else {
                    why
                };
                self.finish(CallStatus::Completed, None, None, why);
            }
            // A late 18x after answer, a duplicate hangup, a stray event: nothing changes.
            _ => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Calling | Phase::Ringing)
            && self.ring_deadline.is_some_and(|d| now >= d)
        {
            self.ring_deadline = None;
            self.phase = Phase::Cancelling(EndReason::RingTimeout);
            self.out.push_back(CallOutput::Cancel);
        }
        if self.phase == Phase::Answered && self.end_deadline.is_some_and(|d| now >= d) {
            self.end_deadline = None;
            self.phase = Phase::Ending(EndReason::MaxDuration);
            self.out.push_back(CallOutput::Bye);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Calling | Phase::Ringing => self.ring_deadline,
            Phase::Answered => self.end_deadline,
            _ => None,
        }
    }

    pub fn poll_output(&mut self) -> Option<CallOutput> {
        self.out.pop_front()
    }

    fn answered(&mut self, now: Instant) {
        self.phase = Phase::Answered;
        self.ring_deadline = None;
        self.end_deadline = Some(now + self.max_duration);
        self.status(CallStatus::InProgress, Some(200), None, None);
    }

    fn finish_cancelled(&mut self, why: EndReason, code: Option<u16>, reason: Option<String>) {
        if why == EndReason::RingTimeout {
            // A 487 answered our own CANCEL: nothing the far end decided, so a ring timeout
            // reports no SIP code (a final the far end raced in with is still its own).
            let (code, reason) = match code {
                Some(487) => (None, None),
                _ => (code, reason),
            };
            self.finish(CallStatus::NoAnswer, code, reason, why);
        } else {
            self.finish(CallStatus::Cancelled, code, reason, why);
        }
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
        self.out.push_back(CallOutput::Status(StatusChange {
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
    use CallInput as I;

    const RING: Duration = Duration::from_secs(60);
    const MAX: Duration = Duration::from_secs(3600);

    fn drain(c: &mut Call) -> Vec<CallOutput> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn statuses(outs: &[CallOutput]) -> Vec<CallStatus> {
        outs.iter()
            .filter_map(|o| match o {
                CallOutput::Status(s) => Some(s.status),
                _ => None,
            })
            .collect()
    }

    fn run(inputs: &[I]) -> (Call, Vec<CallOutput>) {
        let t0 = Instant::now();
        let mut c = Call::new(RING, MAX);
        let mut outs = Vec::new();
        for i in inputs {
            c.handle(t0, i.clone());
            outs.extend(drain(&mut c));
        }
        (c, outs)
    }

    fn failed(code: u16) -> I {
        I::Failed {
            code,
            reason: "x".into(),
        }
    }

    #[test]
    fn status_matrix() {
        use CallStatus::*;
        let rows: Vec<(Vec<I>, Vec<CallStatus>)> = vec![
            (
                vec![
                    I::Start,
                    I::Progress { code: 180 },
                    I::Answered,
                    I::Terminated { by_remote: true },
                ],
                vec![Ringing, InProgress, Completed],
            ),
            (vec![I::Start, failed(486)], vec![Busy]),
            (
                vec![I::Start, I::Progress { code: 180 }, failed(600)],
                vec![Ringing, Busy],
            ),
            (vec![I::Start, failed(480)], vec![NoAnswer]),
            (vec![I::Start, failed(408)], vec![NoAnswer]),
            (vec![I::Start, failed(404)], vec![Failed]),
            (vec![I::Start, failed(503)], vec![Failed]),
            (
                vec![I::Start, I::Progress { code: 180 }, I::Hangup, I::Cancelled],
                vec![Ringing, Cancelled],
            ),
            (
                vec![
                    I::Start,
                    I::Answered,
                    I::Hangup,
                    I::Terminated { by_remote: false },
                ],
                vec![InProgress, Completed],
            ),
            (
                vec![I::Start, I::Hangup, I::Answered, I::Cancelled],
                vec![Cancelled],
            ),
        ];
        for (inputs, want) in rows {
            let (c, outs) = run(&inputs);
            assert_eq!(statuses(&outs), want, "{inputs:?}");
            assert!(c.is_done(), "{inputs:?}");
        }
    }

    #[test]
    fn hangup_before_answer_sends_cancel_and_after_answer_bye() {
        let (_, outs) = run(&[I::Start, I::Progress { code: 183 }, I::Hangup]);
        assert!(outs.contains(&CallOutput::Cancel));
        let (_, outs) = run(&[I::Start, I::Answered, I::Hangup]);
        assert!(outs.contains(&CallOutput::Bye));
        assert!(!outs.contains(&CallOutput::Cancel));
    }

    fn end_reason(outs: &[CallOutput]) -> Option<EndReason> {
        outs.iter().rev().find_map(|o| match o {
            CallOutput::Status(s) => s.end_reason,
            _ => None,
        })
    }

    #[test]
    fn the_hand_off_party_hanging_up_byes_the_caller() {
        let (c, outs) = run(&[I::StartInbound, I::HandoffBye]);
        assert!(outs.contains(&CallOutput::Bye), "{outs:?}");
        assert!(!c.is_done(), "done once our BYE completes");
        let (c, outs) = run(&[
            I::StartInbound,
            I::HandoffBye,
            I::Terminated { by_remote: false },
        ]);
        assert!(c.is_done());
        assert_eq!(end_reason(&outs), Some(EndReason::HandoffBye));
        assert_eq!(EndReason::HandoffBye.as_str(), "handoff_bye");
    }

    #[test]
    fn shutdown_is_a_hangup_with_its_own_reason_and_an_api_hangup_keeps_its_own() {
        let (c, outs) = run(&[
            I::Start,
            I::Answered,
            I::Shutdown,
            I::Terminated { by_remote: false },
        ]);
        assert!(c.is_done() && outs.contains(&CallOutput::Bye));
        assert_eq!(end_reason(&outs), Some(EndReason::SwitchShutdown));
        let (_, outs) = run(&[I::Start, I::Shutdown, I::Cancelled]);
        assert_eq!(end_reason(&outs), Some(EndReason::SwitchShutdown));
        let (_, outs) = run(&[
            I::Start,
            I::Answered,
            I::Hangup,
            I::Shutdown,
            I::Terminated { by_remote: false },
        ]);
        assert_eq!(end_reason(&outs), Some(EndReason::Hangup));
    }

    #[test]
    fn an_inbound_call_never_acked_ends_ack_timeout() {
        let (c, outs) = run(&[I::StartInbound, I::AckTimeout]);
        assert!(c.is_done());
        assert_eq!(end_reason(&outs), Some(EndReason::AckTimeout));
    }

    #[test]
    fn ring_timeout_cancels_then_no_answer() {
        let t0 = Instant::now();
        let mut c = Call::new(Duration::from_secs(5), MAX);
        c.handle(t0, I::Start);
        c.handle(t0, I::Progress { code: 180 });
        drain(&mut c);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(5)));
        c.handle_timeout(t0 + Duration::from_millis(4999));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(t0 + Duration::from_secs(5));
        assert_eq!(drain(&mut c), vec![CallOutput::Cancel]);
        c.handle(t0 + Duration::from_secs(5), I::Cancelled);
        let outs = drain(&mut c);
        assert_eq!(statuses(&outs), vec![CallStatus::NoAnswer]);
        let CallOutput::Status(s) = &outs[0] else {
            panic!()
        };
        assert_eq!(s.end_reason, Some(EndReason::RingTimeout));
        assert_eq!(
            (s.sip_code, &s.sip_reason),
            (None, &None),
            "not our CANCEL's 487"
        );
    }

    #[test]
    fn max_duration_counts_from_answer_and_sends_bye() {
        let t0 = Instant::now();
        let mut c = Call::new(RING, Duration::from_secs(10));
        c.handle(t0, I::Start);
        c.handle(t0 + Duration::from_secs(3), I::Answered);
        drain(&mut c);
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(13)));
        c.handle_timeout(t0 + Duration::from_secs(13));
        assert_eq!(drain(&mut c), vec![CallOutput::Bye]);
        c.handle(
            t0 + Duration::from_secs(13),
            I::Terminated { by_remote: false },
        );
        let outs = drain(&mut c);
        let CallOutput::Status(s) = &outs[0] else {
            panic!()
        };
        assert_eq!(
            (s.status, s.end_reason),
            (CallStatus::Completed, Some(EndReason::MaxDuration))
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn media_timeout_ends_an_answered_call_with_bye_only() {
        let (_, outs) = run(&[I::Start, I::Progress { code: 180 }, I::MediaTimeout]);
        assert!(!outs.contains(&CallOutput::Bye), "not before answer");
        let (c, outs) = run(&[
            I::Start,
            I::Answered,
            I::MediaTimeout,
            I::Terminated { by_remote: false },
        ]);
        assert!(c.is_done());
        assert!(outs.contains(&CallOutput::Bye));
        let Some(CallOutput::Status(s)) = outs.last() else {
            panic!("{outs:?}")
        };
        assert_eq!(
            (s.status, s.end_reason),
            (CallStatus::Completed, Some(EndReason::MediaTimeout))
        );
    }

    #[test]
    fn events_after_done_change_nothing() {
        let (mut c, _) = run(&[I::Start, failed(486)]);
        c.handle(Instant::now(), I::Answered);
        c.handle(Instant::now(), I::Hangup);
        assert!(drain(&mut c).is_empty());
    }
}
