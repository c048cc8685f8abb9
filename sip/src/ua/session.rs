//! Session timers (RFC 4028), in the UA.
//!
//! The UAC asks for `Session-Expires`/`Min-SE`; the UAS accepts the interval (422
//! below our Min-SE when the UAC supports timers, else raises it), picks the
//! refresher and puts `Session-Expires: N;refresher=…` (+ `Require: timer`) in its
//! 2xx. Every 2xx re-offer restarts the clock. The refresher refreshes at half the
//! interval (UPDATE when the peer allows it, else re-INVITE with our last body); the
//! other side, and the refresher whose refresh failed, sends BYE at expiry minus
//! min(32 s, interval/3) unless a refresh arrived (§10), after `SessionExpired`.
//!
//! `refresher=uac|uas` is relative to the transaction carrying it, not the dialog:
//! in our own request `uac` means us, in the peer's request it means the peer.

use std::time::{Duration, Instant};

use super::timers::UaTimer;
use super::{LegRef, LegState, Purpose, UaEvent, UserAgent, has_token};
use crate::msg::{self, Method, Request, Response};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Session {
    /// Seconds.
    interval: u32,
    we_refresh: bool,
    /// When the session expires without a refresh.
    expires_at: Option<Instant>,
}

/// `Session-Expires: delta[;refresher=uac|uas]` (the compact `x` is expanded by the
/// parser). The refresher is `Some(true)` for `uac`.
fn parse_se(headers: &msg::Headers) -> Option<(u32, Option<bool>)> {
    let v = headers.get("Session-Expires")?;
    let mut parts = v.split(';');
    let delta = msg::parse_u32(parts.next()?.trim())?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(true),
            "uas" => Some(false),
            _ => None,
        }
    });
    Some((delta, refresher))
}

fn parse_min_se(headers: &msg::Headers) -> Option<u32> {
    let v = headers.get("Min-SE")?;
    msg::parse_u32(v.split(';').next()?.trim())
}

fn supports_timer(h: &msg::Headers) -> bool {
    has_token(h, "Supported", "timer") || has_token(h, "Require", "timer")
}

impl UserAgent {
    fn min_se_secs(&self) -> u32 {
        u32::try_from(self.cfg.min_se.as_secs()).unwrap_or(u32::MAX)
    }

    /// Session-Expires and Min-SE for a new INVITE, if we want a session timer.
    pub(super) fn session_invite_headers(&self, req: &mut Request) {
        if let Some(se) = self.cfg.session_expires {
            let se = se.as_secs().max(self.cfg.min_se.as_secs());
            req.headers.push("Session-Expires", se.to_string());
            req.headers
                .push("Min-SE", self.cfg.min_se.as_secs().to_string());
        }
    }

    /// §8.1 / §9: a 422 for a request whose interval is below our Min-SE (only when
    /// the sender supports timers; otherwise we raise the interval instead).
    pub(super) fn session_check_request(&mut self, req: &Request) -> Option<Response> {
        let (se, _) = parse_se(&req.headers)?;
        if se >= self.min_se_secs() || !supports_timer(&req.headers) {
            return None;
        }
        let mut resp = self.make_response(req, 422, "Session Interval Too Small");
        resp.headers.push("Min-SE", self.min_se_secs().to_string());
        Some(resp)
    }

    /// The session a 2xx to the peer's `req` sets up (initial INVITE or re-offer).
    fn negotiate_uas(&self, req: &Request, current: Option<Session>) -> Option<Session> {
        let floor = self
            .min_se_secs()
            .max(parse_min_se(&req.headers).unwrap_or(0));
        let supports = supports_timer(&req.headers);
        match parse_se(&req.headers) {
            Some((se, refresher)) => Some(Session {
                interval: se.max(floor),
                // `uac` is the peer here; without a choice keep the current one, or let
                // a timer-capable peer refresh.
                we_refresh: match refresher {
                    Some(uac) => !uac,
                    None => current.map_or(!supports, |c| c.we_refresh),
                },
                expires_at: None,
            }),
            None => current.or_else(|| {
                let se = self.cfg.session_expires?;
                Some(Session {
                    interval: u32::try_from(se.as_secs()).unwrap_or(u32::MAX).max(floor),
                    we_refresh: !supports,
                    expires_at: None,
                })
            }),
        }
    }

    /// Negotiates the session for a 2xx to the peer's `req` and adds its headers.
    pub(super) fn session_response_headers(
        &mut self,
        leg_ref: LegRef,
        req: &Request,
        resp: &mut Response,
    ) {
        let Some(current) = self.legs.get(&leg_ref).map(|l| l.ext.session) else {
            return;
        };
        let Some(s) = self.negotiate_uas(req, current) else {
            return;
        };
        if let Some(leg) = self.legs.get_mut(&leg_ref) {
            leg.ext.session = Some(s);
        }
        // In our response the peer is the UAC.
        let who = if s.we_refresh { "uas" } else { "uac" };
        resp.headers
            .push("Session-Expires", format!("{};refresher={who}", s.interval));
        if supports_timer(&req.headers) {
            resp.headers.push("Require", "timer");
        }
    }

    /// Session-Expires/Min-SE on our in-dialog re-offer when a session timer runs.
    pub(super) fn session_request_headers(&self, leg_ref: LegRef, req: &mut Request) {
        let Some(s) = self.legs.get(&leg_ref).and_then(|l| l.ext.session) else {
            return;
        };
        let who = if s.we_refresh { "uac" } else { "uas" };
        req.headers
            .push("Session-Expires", format!("{};refresher={who}", s.interval));
        req.headers.push("Min-SE", self.min_se_secs().to_string());
    }

    /// A 2xx to our INVITE or re-offer: the session is what it says (§7.2: none when
    /// it has no Session-Expires).
    pub(super) fn session_refreshed_by_us(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        resp: Option<&Response>,
    ) {
        let s = resp
            .and_then(|r| parse_se(&r.headers))
            .map(|(se, refresher)| Session {
                interval: se,
                // `uac` is us here; a 2xx must name one, assume us if it does not.
                we_refresh: refresher.unwrap_or(true),
                expires_at: None,
            });
        if let Some(leg) = self.legs.get_mut(&leg_ref) {
            leg.ext.session = s;
        }
        self.arm_session(now, leg_ref);
    }

    /// We sent a 2xx to the peer's INVITE or re-offer (already negotiated).
    pub(super) fn session_refreshed_by_peer(&mut self, now: Instant, leg_ref: LegRef, _: &Request) {
        self.arm_session(now, leg_ref);
    }

    /// Restarts the session clock at `now`.
    pub(super) fn arm_session(&mut self, now: Instant, leg_ref: LegRef) {
        self.ua_timers.cancel(UaTimer::SessionRefresh(leg_ref));
        self.ua_timers.cancel(UaTimer::SessionExpiry(leg_ref));
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return;
        };
        let Some(s) = leg.ext.session.as_mut() else {
            return;
        };
        let interval = Duration::from_secs(u64::from(s.interval));
        s.expires_at = Some(now + interval);
        let s = *s;
        if s.we_refresh {
            self.ua_timers
                .set(UaTimer::SessionRefresh(leg_ref), now + interval / 2);
        } else {
            self.ua_timers
                .set(UaTimer::SessionExpiry(leg_ref), bye_point(now, s));
        }
    }

    /// Half the interval passed: refresh (UPDATE if the peer allows it).
    pub(super) fn session_refresh_due(&mut self, now: Instant, leg_ref: LegRef) {
        let Some(leg) = self.legs.get(&leg_ref) else {
            return;
        };
        let Some(s) = leg.ext.session else {
            return;
        };
        if leg.state != LegState::Confirmed {
            return;
        }
        // Should the refresh fail, the BYE still goes out in time.
        self.ua_timers
            .set(UaTimer::SessionExpiry(leg_ref), bye_point(now, s));
        let (method, body) = if leg.ext.peer_allows_update {
            (Method::Update, None)
        } else {
            (Method::Invite, leg.local_body.clone())
        };
        if !self.send_reoffer(now, leg_ref, method, body, true) {
            // An offer exchange is in progress: try again shortly.
            self.retry_refresh(now, leg_ref, s);
        }
    }

    fn retry_refresh(&mut self, now: Instant, leg_ref: LegRef, s: Session) {
        let again = now + Duration::from_secs(u64::from((s.interval / 16).max(1)));
        if again < bye_point(now, s) {
            self.ua_timers.set(UaTimer::SessionRefresh(leg_ref), again);
        }
    }

    /// Our refresh got a non-2xx: 408/481 mean the dialog is gone (BYE at the
    /// expiry point, by the timer armed when the refresh left); others are retried.
    pub(super) fn session_refresh_failed(&mut self, now: Instant, leg_ref: LegRef, code: u16) {
        let Some(s) = self.legs.get(&leg_ref).and_then(|l| l.ext.session) else {
            return;
        };
        tracing::info!(leg = leg_ref, code, "session refresh failed");
        if code != 408 && code != 481 {
            self.retry_refresh(now, leg_ref, s);
        }
    }

    /// §10: no refresh arrived: report and hang up.
    pub(super) fn session_expired(&mut self, now: Instant, leg_ref: LegRef) {
        if self
            .legs
            .get(&leg_ref)
            .is_none_or(|l| l.state != LegState::Confirmed)
        {
            return;
        }
        self.ua_timers.cancel(UaTimer::SessionRefresh(leg_ref));
        self.events
            .push_back(UaEvent::SessionExpired { leg: leg_ref });
        self.send_bye(now, leg_ref, false);
    }

    /// §7.4: a 422 to our INVITE: retry once with the interval it asks for. False
    /// when that is not possible (the 422 is then a failure).
    pub(super) fn retry_with_min_se(
        &mut self,
        now: Instant,
        leg_ref: LegRef,
        resp: &Response,
    ) -> bool {
        let Some(min) = parse_min_se(&resp.headers) else {
            return false;
        };
        let Some((transport, peer_ip)) =
            self.legs.get(&leg_ref).map(|l| (l.transport, l.peer.ip()))
        else {
            return false;
        };
        let via = self.new_via(transport, peer_ip);
        let Some(leg) = self.legs.get_mut(&leg_ref) else {
            return false;
        };
        if leg.ext.se_retried {
            return false;
        }
        let mut req = leg.invite.clone();
        let n = req.headers.cseq().map(|(n, _)| n).unwrap_or(1);
        req.headers.set("Via", via);
        req.headers
            .set("CSeq", format!("{} INVITE", n.wrapping_add(1)));
        req.headers.set("Session-Expires", min.to_string());
        req.headers.set("Min-SE", min.to_string());
        leg.ext.se_retried = true;
        leg.got_provisional = false;
        leg.cancel_sent = false;
        leg.invite = req.clone();
        let (peer, transport) = (leg.peer, leg.transport);
        let id = self.start_client_invite(now, leg_ref, req, peer, transport, Purpose::Invite);
        if let Some(leg) = self.legs.get_mut(&leg_ref) {
            leg.invite_txn = Some(id);
        }
        true
    }
}

/// §10: BYE at expiry minus min(32 s, interval/3).
fn bye_point(now: Instant, s: Session) -> Instant {
    let interval = Duration::from_secs(u64::from(s.interval));
    let expires = s.expires_at.unwrap_or(now + interval);
    let margin = Duration::from_secs(32).min(interval / 3);
    expires.checked_sub(margin).unwrap_or(expires).max(now)
}
