//! Hold across a transit call (RFC 3264 §8.4, RFC 6337 §5): when one party re-offers
//! `sendonly`, `recvonly`, `inactive` or `sendrecv`, the bridge stops (or resumes) sending
//! to it at once, and the other party gets a re-INVITE offering the same direction from
//! our side, so it stops sending media nobody listens to and can show "on hold".
//!
//! [`Mirror`] is the sans-IO part: per leg, the direction it should be offered, what it
//! last accepted, the one re-INVITE in flight, and the retry after a 491 (glare, RFC 3261
//! §14.1). The `TransitTask` methods below only turn its decisions into SIP and bridge
//! commands.

use std::time::{Duration, Instant};

use media::relay::{Side, SideParams};
use media::sdp::Direction;

use super::TransitTask;
use crate::core::task::sdp_body;

/// The direction one leg should be offered to mirror the other party's, and the state
/// of the re-INVITE that carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Mirror {
    /// What the other party last offered us, offered as is to this leg.
    wanted: Direction,
    /// What this leg last accepted from us (a call starts `sendrecv`).
    agreed: Direction,
    /// The direction of our re-INVITE in flight.
    in_flight: Option<Direction>,
    /// When to try again after a 491.
    retry_at: Option<Instant>,
    /// A direction this leg refused (other than by glare): not offered again until the
    /// other party asks for something else, or the call would loop re-INVITEs.
    refused: Option<Direction>,
}

impl Mirror {
    /// The other party now offers `theirs`. Returns the direction to re-INVITE this leg
    /// with now, if any.
    pub(super) fn want(&mut self, theirs: Direction) -> Option<Direction> {
        if self.wanted != theirs {
            self.refused = None;
        }
        self.wanted = theirs;
        self.next()
    }

    /// The final response to our re-INVITE. 2xx: accepted; 491: glare, try again at
    /// `now + retry` (a 491 when a re-INVITE was already under way on the leg, too);
    /// anything else: this direction is given up. Returns the next direction to send
    /// now (the other party may have changed its mind meanwhile).
    pub(super) fn on_result(
        &mut self,
        now: Instant,
        code: u16,
        retry: Duration,
    ) -> Option<Direction> {
        let sent = self.in_flight.take()?;
        match code {
            200..=299 => self.agreed = sent,
            491 => {
                self.retry_at = Some(now + retry);
                return None;
            }
            _ => self.refused = Some(sent),
        }
        self.next()
    }

    /// When [`on_timeout`](Self::on_timeout) wants to be called.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The retry timer fired: the direction to send now, if still needed.
    pub(super) fn on_timeout(&mut self, now: Instant) -> Option<Direction> {
        if self.retry_at.is_some_and(|t| t <= now) {
            self.retry_at = None;
            return self.next();
        }
        None
    }

    /// The re-INVITE could not be sent at all (no dialog, no SDP of ours yet).
    pub(super) fn abandon(&mut self) {
        if let Some(d) = self.in_flight.take() {
            self.refused = Some(d);
        }
    }

    fn next(&mut self) -> Option<Direction> {
        let idle = self.in_flight.is_none() && self.retry_at.is_none();
        if idle && self.wanted != self.agreed && self.refused != Some(self.wanted) {
            self.in_flight = Some(self.wanted);
            return self.in_flight;
        }
        None
    }
}

/// Both legs' mirrors, the offer of the re-INVITE in flight on each, and our negotiated
/// direction towards each (as the bridge has it).
#[derive(Debug, Default)]
pub(super) struct HoldState {
    mirrors: [Mirror; 2],
    offers: [Option<media::sdp::OfferParams>; 2],
    directions: [Direction; 2],
}

fn idx(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

impl HoldState {
    /// The earliest retry of either leg.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let [a, b] = &self.mirrors;
        match (a.poll_timeout(), b.poll_timeout()) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// A new party took `side`'s place (transfer): it was offered `sendrecv`.
    pub(super) fn reset(&mut self, side: Side) {
        self.mirrors[idx(side)] = Mirror::default();
        self.offers[idx(side)] = None;
        self.directions[idx(side)] = Direction::SendRecv;
    }

    /// Our direction towards `side` is now `d`.
    fn set_direction(&mut self, side: Side, d: Direction) {
        self.directions[idx(side)] = d;
    }

    /// Whether either side is on hold (media flows one way or not at all).
    pub(super) fn on_hold(&self) -> bool {
        self.directions.iter().any(|d| *d != Direction::SendRecv)
    }
}

/// RFC 3261 §14.1: after a 491, the owner of the Call-ID (we are, on leg B) waits
/// 2.1-4 s, the other end 0-2 s, in units of 10 ms.
fn glare_delay(side: Side) -> Duration {
    use rand::Rng;
    let tens = match side {
        Side::B => rand::rng().random_range(210..=400),
        Side::A => rand::rng().random_range(0..=200),
    };
    Duration::from_millis(tens * 10)
}

impl TransitTask {
    /// `side` has just been answered for an offer with `ours` as our direction: the bridge
    /// follows at once, and the other leg is re-INVITEd with the direction `side` asked
    /// for (its offer's direction is `ours` reversed).
    pub(super) fn mirror_hold(&mut self, side: Side, ours: Direction) {
        if let Some(bridge) = &self.bridge {
            bridge.set_direction(side, ours);
        }
        self.hold.set_direction(side, ours);
        let other = side.other();
        if let Some(d) = self.hold.mirrors[idx(other)].want(ours.reversed()) {
            self.send_mirror(other, d);
        }
    }

    /// The final response to a re-INVITE of ours on `leg`.
    pub(super) fn on_reinvite_result(
        &mut self,
        leg: sip::ua::LegRef,
        code: u16,
        body: Option<&sip::ua::Body>,
    ) {
        let side = if leg == self.a_leg {
            Side::A
        } else if Some(leg) == self.b_leg {
            Side::B
        } else {
            return;
        };
        let offer = self.hold.offers[idx(side)].take();
        if (200..300).contains(&code)
            && let Some(offer) = offer
        {
            self.apply_mirror_answer(side, offer, body);
        } else if code != 491 {
            tracing::warn!(
                ?side,
                code,
                "hold re-INVITE refused; the bridge still holds"
            );
        }
        let now = Instant::now();
        if let Some(d) = self.hold.mirrors[idx(side)].on_result(now, code, glare_delay(side)) {
            self.send_mirror(side, d);
        }
    }

    /// The glare retry timer of either leg fired.
    pub(super) fn hold_timeout(&mut self, now: Instant) {
        for side in [Side::A, Side::B] {
            if let Some(d) = self.hold.mirrors[idx(side)].on_timeout(now) {
                self.send_mirror(side, d);
            }
        }
    }

    /// `side` accepted our re-INVITE: the bridge follows its answer (address, codec and
    /// the direction it agreed to).
    fn apply_mirror_answer(
        &mut self,
        side: Side,
        offer: media::sdp::OfferParams,
        body: Option<&sip::ua::Body>,
    ) {
        let params = body.and_then(|b| media::sdp::negotiate_answer(&offer, &b.bytes).ok());
        if let (Some(bridge), Some(p)) = (&self.bridge, params) {
            if let Ok(sp) = SideParams::try_from(&p) {
                bridge.set_side(side, sp);
            }
            bridge.set_direction(side, p.direction);
            self.hold.set_direction(side, p.direction);
            tracing::info!(?side, direction = ?p.direction, "hold mirrored");
        }
        match side {
            Side::A => self.a_sdp = media::sdp::build_offer(&offer),
            Side::B => self.b_local = Some(offer),
        }
    }

    /// Re-INVITEs `side` offering `direction` (our SDP for that leg, one version up, the
    /// caller's codec first so the leg keeps the codec it has).
    fn send_mirror(&mut self, side: Side, direction: Direction) {
        let leg = match side {
            Side::A => Some(self.a_leg),
            Side::B => self.b_leg,
        };
        let base = match side {
            Side::A => Some(&mut self.a_local),
            Side::B => self.b_local.as_mut(),
        };
        let (Some(leg), Some(base)) = (leg, base) else {
            self.hold.mirrors[idx(side)].abandon();
            return;
        };
        base.session_version += 1;
        let mut offer = base.clone();
        offer.direction = direction;
        let first = self.a_codec;
        offer.codecs.retain(|c| *c != first);
        offer.codecs.insert(0, first);
        let body = sdp_body(media::sdp::build_offer(&offer));
        self.hold.offers[idx(side)] = Some(offer);
        tracing::info!(
            ?side,
            ?direction,
            "re-INVITE mirroring the other party's hold"
        );
        self.send(sip::ua::UaCommand::Reinvite {
            leg,
            body: Some(body),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETRY: Duration = Duration::from_secs(3);

    #[test]
    fn hold_and_resume_are_offered_once_each() {
        let mut m = Mirror::default();
        let t = Instant::now();
        // A refresh while nothing changed sends nothing.
        assert_eq!(m.want(Direction::SendRecv), None);
        assert_eq!(m.want(Direction::SendOnly), Some(Direction::SendOnly));
        // The same offer again while the first is in flight: still one re-INVITE.
        assert_eq!(m.want(Direction::SendOnly), None);
        assert_eq!(m.on_result(t, 200, RETRY), None);
        assert_eq!(m.want(Direction::SendOnly), None, "already agreed");
        assert_eq!(m.want(Direction::SendRecv), Some(Direction::SendRecv));
        assert_eq!(m.on_result(t, 200, RETRY), None);
        assert_eq!(m, Mirror::default());
    }

    #[test]
    fn a_change_while_in_flight_is_sent_after_the_answer() {
        let mut m = Mirror::default();
        let t = Instant::now();
        assert_eq!(m.want(Direction::SendOnly), Some(Direction::SendOnly));
        assert_eq!(m.want(Direction::Inactive), None, "one re-INVITE at a time");
        assert_eq!(m.on_result(t, 200, RETRY), Some(Direction::Inactive));
        // Back to where the leg already is before the answer: nothing more to send.
        assert_eq!(m.want(Direction::SendOnly), None);
        assert_eq!(m.on_result(t, 200, RETRY), Some(Direction::SendOnly));
    }

    #[test]
    fn glare_is_retried_after_the_delay_and_a_refusal_is_not() {
        let mut m = Mirror::default();
        let t = Instant::now();
        assert_eq!(m.want(Direction::Inactive), Some(Direction::Inactive));
        assert_eq!(m.on_result(t, 491, RETRY), None);
        assert_eq!(m.poll_timeout(), Some(t + RETRY));
        // The other party changes its mind during the wait: still no early re-INVITE.
        assert_eq!(m.want(Direction::SendOnly), None);
        assert_eq!(m.on_timeout(t + Duration::from_secs(1)), None, "not yet");
        assert_eq!(m.on_timeout(t + RETRY), Some(Direction::SendOnly));
        assert_eq!(m.poll_timeout(), None);
        // A 488 gives this direction up: no loop of re-INVITEs...
        assert_eq!(m.on_result(t, 488, RETRY), None);
        assert_eq!(m.want(Direction::SendOnly), None);
        // ...but a resume is offered (the leg is still where it agreed: sendrecv).
        assert_eq!(m.want(Direction::SendRecv), None, "never left sendrecv");
        assert_eq!(m.want(Direction::Inactive), Some(Direction::Inactive));
    }

    #[test]
    fn a_call_is_on_hold_while_either_side_is_not_sendrecv() {
        let mut h = HoldState::default();
        assert!(!h.on_hold());
        h.set_direction(Side::A, Direction::Inactive);
        assert!(h.on_hold());
        h.set_direction(Side::B, Direction::SendOnly);
        h.set_direction(Side::A, Direction::SendRecv);
        assert!(h.on_hold());
        h.set_direction(Side::B, Direction::SendRecv);
        assert!(!h.on_hold());
        // A new party after a transfer starts sendrecv.
        h.set_direction(Side::B, Direction::RecvOnly);
        h.reset(Side::B);
        assert!(!h.on_hold());
    }

    #[test]
    fn an_unsendable_reinvite_is_abandoned() {
        let mut m = Mirror::default();
        assert_eq!(m.want(Direction::SendOnly), Some(Direction::SendOnly));
        m.abandon();
        assert_eq!(m.want(Direction::SendOnly), None);
        assert_eq!(m.want(Direction::Inactive), Some(Direction::Inactive));
    }

    #[test]
    fn glare_delays_follow_rfc3261() {
        for _ in 0..50 {
            let b = glare_delay(Side::B);
            assert!((Duration::from_millis(2100)..=Duration::from_secs(4)).contains(&b));
            assert!(glare_delay(Side::A) <= Duration::from_secs(2));
        }
    }
}
