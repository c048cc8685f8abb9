//! RTP relay core for one bridged call (B2BUA media bridge): symmetric RTP latching
//! (RFC 4961 "symmetric RTP", the NAT practice of RFC 7362 §4 "latching"), anti
//! RTP-bleed source checks, and RFC 3550 §5.1/§8.2 header rewriting so each far side
//! sees one SSRC with continuous sequence numbers and timestamps.
//!
//! In: one received datagram at a time ([`Relay::handle_packet`]) with the side it
//! arrived on, its source address and the caller's `now`; signalling updates
//! ([`Relay::update_remote`], [`Relay::update_side`]). Out: a [`Verdict`] — forward the
//! buffer (rewritten in place) to an address, hand the payload to a transcoder, or drop
//! it with a [`DropReason`] — per-side [`SideCounters`], receive statistics of what each
//! side's far end sends (RFC 3550 A.3/A.8, [`Relay::stats`]) and the RFC 4733 digits it
//! sends ([`Relay::take_dtmf`]; the events themselves are relayed, never transcoded).
//!
//! The per-packet path is allocation-free and map-free: two sides live in a fixed array
//! indexed by [`Side`], and everything it touches is a few dozen bytes of state.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::codec::AudioCodec;
use crate::dtmf::{DtmfDecoder, DtmfEvent, EVENT_LEN};
use crate::rtp::{HEADER_LEN, RtpHeader, RtpView};
use crate::sdp::StreamParams;
use crate::stats::RtpStats;

/// A digit whose end packets never came is reported once the side has sent no event
/// packet for this long (RFC 4733 §2.5.2.2 leaves the timeout to the receiver).
pub const DTMF_END_TIMEOUT: Duration = Duration::from_millis(300);
/// Decoded digits held per side until [`Relay::take_dtmf`]; more are dropped.
const DTMF_PENDING: usize = 4;

/// One leg of the bridged call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The first (usually inbound) leg.
    A,
    /// The second (usually outbound) leg.
    B,
}

impl Side {
    /// The leg packets from this side are relayed to.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// What SDP negotiated for one side: where to send and which payload types it uses
/// (the same numbers in both directions, as RFC 3264 §5.1 recommends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SideParams {
    /// The address from SDP; `None` until an answer says where to send.
    pub remote: Option<SocketAddr>,
    /// The audio codec this side sends and receives.
    pub codec: AudioCodec,
    /// The payload type this side uses for `codec`.
    pub pt: u8,
    /// RTP clock rate of `codec` (and of telephone-event on this side).
    pub clock_rate: u32,
    /// The payload type this side uses for RFC 4733 telephone-event, if any.
    pub dtmf_pt: Option<u8>,
}

/// Why negotiated parameters cannot drive the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The SDP codec has no media-engine codec.
    #[error("codec {0} is not supported by the media engine")]
    UnsupportedCodec(&'static str),
}

impl TryFrom<&StreamParams> for SideParams {
    type Error = RelayError;

    fn try_from(p: &StreamParams) -> Result<Self, RelayError> {
        // By rtpmap name, so new SDP codecs need no change here until the engine has them.
        let name = p.codec.name();
        let codec = if name.eq_ignore_ascii_case("PCMU") {
            AudioCodec::Pcmu
        } else if name.eq_ignore_ascii_case("PCMA") {
            AudioCodec::Pcma
        } else if name.eq_ignore_ascii_case("G722") {
            AudioCodec::G722
        } else if name.eq_ignore_ascii_case("opus") {
            AudioCodec::Opus { channels: 2 }
        } else {
            return Err(RelayError::UnsupportedCodec(name));
        };
        Ok(SideParams {
            remote: Some(p.remote),
            codec,
            pt: p.pt,
            clock_rate: p.clock_rate,
            dtmf_pt: p.dtmf_pt,
        })
    }
}

/// Relay policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// Allow a new source to take over a latched side when the latched source has been
    /// silent for longer than this and the new one sends the SSRC seen last. Zero
    /// (the default) never allows it.
    pub relatch_after_silence: Duration,
    /// After an input SSRC change, packets of the previous SSRC arriving within this
    /// window are late stragglers and are dropped instead of switching back.
    pub stale_ssrc_window: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            relatch_after_silence: Duration::ZERO,
            stale_ssrc_window: Duration::from_millis(500),
        }
    }
}

/// Why a packet was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a valid RTP packet (or `len` exceeds the buffer).
    Malformed,
    /// An RTCP packet on the RTP port (RFC 5761 §4 demultiplexing).
    Rtcp,
    /// A payload type this side did not negotiate.
    UnexpectedPayloadType,
    /// From an address other than the one the side latched to (RTP bleed).
    WrongSource,
    /// A late packet of an SSRC the stream has just switched away from.
    StaleSsrc,
    /// The other side has no address yet.
    NoDestination,
    /// The other side did not negotiate an equivalent payload type (e.g. no DTMF).
    NoPeerPayloadType,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 7] = [
        DropReason::Malformed,
        DropReason::Rtcp,
        DropReason::UnexpectedPayloadType,
        DropReason::WrongSource,
        DropReason::StaleSsrc,
        DropReason::NoDestination,
        DropReason::NoPeerPayloadType,
    ];

    fn idx(self) -> usize {
        match self {
            DropReason::Malformed => 0,
            DropReason::Rtcp => 1,
            DropReason::UnexpectedPayloadType => 2,
            DropReason::WrongSource => 3,
            DropReason::StaleSsrc => 4,
            DropReason::NoDestination => 5,
            DropReason::NoPeerPayloadType => 6,
        }
    }
}

/// What the driver does with a received packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send `buf[..len]` to `dst`: the header was rewritten in place for the other side.
    Forward {
        /// Where to send.
        dst: SocketAddr,
        /// Length to send (the received length: only header fields change).
        len: usize,
    },
    /// The sides use different codecs: transcode `buf[payload]` from `from` to `to` and
    /// send `header` (a plain 12-byte header, already mapped for the other side)
    /// followed by the new payload to `dst`. `buf` is left unmodified.
    Transcode {
        /// Where to send.
        dst: SocketAddr,
        /// The codec of the received payload.
        from: AudioCodec,
        /// The codec the other side expects.
        to: AudioCodec,
        /// The header to send, with the other side's payload type.
        header: RtpHeader,
        /// The received payload within `buf` (header, extension and padding excluded).
        payload: Range<usize>,
    },
    /// Do not send; counted under the reason.
    Drop(DropReason),
}

/// Counters for packets received on one side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SideCounters {
    /// Datagrams received on this side, valid or not.
    pub received_packets: u64,
    /// Octets of those datagrams.
    pub received_bytes: u64,
    /// Packets relayed to the other side unchanged but for the header.
    pub forwarded_packets: u64,
    /// Octets of those packets.
    pub forwarded_bytes: u64,
    /// Packets handed to a transcoder.
    pub transcoded_packets: u64,
    /// Times the side latched to a source address (first latch included).
    pub latches: u64,
    /// Times the incoming SSRC changed after the first packet.
    pub ssrc_changes: u64,
    dropped: [u64; DropReason::ALL.len()],
}

impl SideCounters {
    /// Packets dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.idx()).copied().unwrap_or(0)
    }

    /// Packets dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// The last packet written on an output stream (highest sequence number so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LastOut {
    seq: u16,
    ts: u32,
    at: Instant,
}

/// The stream we send to one side: its SSRC and the mapping from the input stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutStream {
    ssrc: u32,
    in_ssrc: Option<u32>,
    prev_in_ssrc: Option<u32>,
    switched_at: Option<Instant>,
    seq_offset: u16,
    ts_anchor_in: u32,
    ts_anchor_out: u32,
    last: Option<LastOut>,
}

/// Keep timestamp deltas well inside `i32` when scaling between clock rates.
const REANCHOR_DELTA: i64 = 1 << 30;

impl OutStream {
    /// Whether `ssrc` is the input this stream has just switched away from.
    fn is_stale(&self, now: Instant, ssrc: u32, stale_window: Duration) -> bool {
        self.in_ssrc != Some(ssrc)
            && self.prev_in_ssrc == Some(ssrc)
            && self
                .switched_at
                .is_some_and(|t| now.saturating_duration_since(t) < stale_window)
    }

    fn new(ssrc: u32) -> Self {
        OutStream {
            ssrc,
            in_ssrc: None,
            prev_in_ssrc: None,
            switched_at: None,
            seq_offset: 0,
            ts_anchor_in: 0,
            ts_anchor_out: 0,
            last: None,
        }
    }

    /// Maps one input header onto the output stream; returns (seq, ts, marker) and
    /// whether the input SSRC changed.
    #[allow(clippy::too_many_arguments)]
    fn map(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        ts: u32,
        marker: bool,
        rate_in: u32,
        rate_out: u32,
        stale_window: Duration,
    ) -> Result<(u16, u32, bool, bool), DropReason> {
        let mut changed = false;
        if self.in_ssrc != Some(ssrc) {
            if self.is_stale(now, ssrc, stale_window) {
                return Err(DropReason::StaleSsrc);
            }
            match self.last {
                None => {
                    // First packet: pass numbering through unchanged.
                    self.seq_offset = 0;
                    self.ts_anchor_in = ts;
                    self.ts_anchor_out = ts;
                }
                Some(last) => {
                    // Continue where the previous input left off, advanced by the wall
                    // clock gap so the far side's playout timing stays right.
                    self.seq_offset = last.seq.wrapping_add(1).wrapping_sub(seq);
                    let gap = now.saturating_duration_since(last.at);
                    let ticks = gap.as_nanos() * u128::from(rate_out) / 1_000_000_000;
                    self.ts_anchor_in = ts;
                    // At least one tick: the far side must never see time stand still
                    // or go back, however fast the new input follows the old one.
                    self.ts_anchor_out = last.ts.wrapping_add((ticks as u32).max(1));
                    changed = true;
                }
            }
            self.prev_in_ssrc = self.in_ssrc;
            self.in_ssrc = Some(ssrc);
            self.switched_at = Some(now);
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = if rate_in == rate_out || rate_in == 0 {
            ts.wrapping_add(self.ts_anchor_out.wrapping_sub(self.ts_anchor_in))
        } else {
            let delta = i64::from(ts.wrapping_sub(self.ts_anchor_in) as i32);
            let scaled = delta * i64::from(rate_out) / i64::from(rate_in);
            let out = self.ts_anchor_out.wrapping_add(scaled as u32);
            if delta.abs() > REANCHOR_DELTA {
                self.ts_anchor_in = ts;
                self.ts_anchor_out = out;
            }
            out
        };
        let newer = self
            .last
            .is_none_or(|l| (out_seq.wrapping_sub(l.seq) as i16) > 0);
        if newer {
            self.last = Some(LastOut {
                seq: out_seq,
                ts: out_ts,
                at: now,
            });
        }
        Ok((out_seq, out_ts, marker || changed, changed))
    }
}

/// Per-side state: negotiated parameters, latching, counters, and the stream sent to it.
#[derive(Debug, Clone)]
struct Leg {
    params: SideParams,
    latched: Option<SocketAddr>,
    /// Set by a re-INVITE that moved the remote address: the next new source may latch.
    relatch_open: bool,
    /// The latched address before `relatch_open`; its in-flight packets are still taken.
    prev_latched: Option<SocketAddr>,
    /// When the latched source last sent a valid packet, and with which SSRC.
    last_rx: Option<Instant>,
    last_ssrc: Option<u32>,
    counters: SideCounters,
    out: OutStream,
    /// What this side's far end sends us (accepted packets only).
    stats: RtpStats,
    /// When an accepted packet last arrived (from the latched or an in-flight source).
    last_valid: Option<Instant>,
    dtmf: Option<DtmfDecoder>,
    /// When the last telephone-event packet arrived (for the missing-end timeout).
    dtmf_last: Option<Instant>,
    dtmf_ready: [Option<DtmfEvent>; DTMF_PENDING],
}

impl Leg {
    fn push_dtmf(&mut self, event: DtmfEvent) {
        match self.dtmf_ready.iter_mut().find(|e| e.is_none()) {
            Some(slot) => *slot = Some(event),
            None => tracing::debug!(digit = %event.digit, "DTMF digit dropped: nobody takes them"),
        }
    }

    fn destination(&self) -> Option<SocketAddr> {
        if self.relatch_open {
            self.params.remote
        } else {
            self.latched.or(self.params.remote)
        }
    }
}

/// Whether a source may send on a side, and what accepting it does to the latch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceCheck {
    /// The latched source (or in-flight media from the previous one).
    Known,
    /// A source to latch to.
    Latch,
}

/// The relay state of one bridged call.
#[derive(Debug, Clone)]
pub struct Relay {
    legs: [Leg; 2],
    config: RelayConfig,
    /// Origin of the arrival clock for jitter (the first packet's `now`).
    epoch: Option<Instant>,
}

impl Relay {
    /// A relay between `a` and `b`; the SSRCs each side will see are drawn from `rng`.
    pub fn new<R: Rng + ?Sized>(
        a: SideParams,
        b: SideParams,
        config: RelayConfig,
        rng: &mut R,
    ) -> Self {
        let leg = |params: SideParams, ssrc: u32| Leg {
            params,
            latched: None,
            relatch_open: false,
            prev_latched: None,
            last_rx: None,
            last_ssrc: None,
            counters: SideCounters::default(),
            out: OutStream::new(ssrc),
            stats: RtpStats::new(),
            last_valid: None,
            dtmf: params.dtmf_pt.map(DtmfDecoder::new),
            dtmf_last: None,
            dtmf_ready: [None; DTMF_PENDING],
        };
        let ssrc_a: u32 = rng.random();
        let mut ssrc_b: u32 = rng.random();
        if ssrc_b == ssrc_a {
            ssrc_b = ssrc_b.wrapping_add(1);
        }
        Relay {
            legs: [leg(a, ssrc_a), leg(b, ssrc_b)],
            config,
            epoch: None,
        }
    }

    fn leg(&self, side: Side) -> &Leg {
        match side {
            Side::A => &self.legs[0],
            Side::B => &self.legs[1],
        }
    }

    fn leg_mut(&mut self, side: Side) -> &mut Leg {
        match side {
            Side::A => &mut self.legs[0],
            Side::B => &mut self.legs[1],
        }
    }

    /// The negotiated parameters of `side`.
    pub fn params(&self, side: Side) -> &SideParams {
        &self.leg(side).params
    }

    /// The source address `side` is latched to, if any.
    pub fn latched(&self, side: Side) -> Option<SocketAddr> {
        self.leg(side).latched
    }

    /// Where media for `side` goes now: the latched source, else the SDP address.
    pub fn destination(&self, side: Side) -> Option<SocketAddr> {
        self.leg(side).destination()
    }

    /// The SSRC `side` sees on the packets we send it.
    pub fn output_ssrc(&self, side: Side) -> u32 {
        self.leg(side).out.ssrc
    }

    /// The RTP timestamp of the stream we send `side`, extrapolated to `now` on its
    /// clock (for an RTCP SR, RFC 3550 §6.4.1); `None` before anything was sent.
    pub fn rtp_timestamp_at(&self, side: Side, now: Instant) -> Option<u32> {
        let leg = self.leg(side);
        let last = leg.out.last?;
        let gap = now.saturating_duration_since(last.at).as_micros();
        let ticks = gap * u128::from(leg.params.clock_rate) / 1_000_000;
        Some(last.ts.wrapping_add(ticks as u32))
    }

    /// Counters for packets received on `side`.
    pub fn counters(&self, side: Side) -> &SideCounters {
        &self.leg(side).counters
    }

    /// Receive statistics of the packets `side`'s far end sent us and the relay
    /// accepted (right source, negotiated payload type): RFC 3550 loss and jitter in
    /// `side`'s clock. Telephone-events count as packets but not for jitter.
    pub fn stats(&self, side: Side) -> &RtpStats {
        &self.leg(side).stats
    }

    /// When `side` last sent a packet the relay accepted.
    pub fn last_received(&self, side: Side) -> Option<Instant> {
        self.leg(side).last_valid
    }

    /// The next RFC 4733 digit `side`'s far end sent, each reported once, oldest first.
    /// Up to four are held; take them after each [`handle_packet`](Self::handle_packet).
    pub fn take_dtmf(&mut self, side: Side) -> Option<DtmfEvent> {
        let ready = &mut self.leg_mut(side).dtmf_ready;
        let first = ready.first_mut()?.take()?;
        ready.rotate_left(1);
        Some(first)
    }

    /// A re-INVITE moved `side`'s media to `addr`. If that differs from the current
    /// SDP address, media for `side` goes to `addr` and the next packet from a new
    /// source re-latches; packets still arriving from the old latched source are
    /// accepted meanwhile (they were in flight).
    pub fn update_remote(&mut self, side: Side, addr: SocketAddr) {
        let leg = self.leg_mut(side);
        if leg.params.remote == Some(addr) {
            return;
        }
        leg.params.remote = Some(addr);
        if leg.latched.is_some() {
            leg.prev_latched = leg.latched;
            leg.relatch_open = true;
        }
    }

    /// A re-INVITE renegotiated `side`. The address is handled as by
    /// [`Relay::update_remote`]; a codec or clock-rate change re-bases both output
    /// streams as if the SSRC had changed (continuous numbering, marker set).
    pub fn update_side(&mut self, side: Side, params: SideParams) {
        let old = self.leg(side).params;
        if let Some(addr) = params.remote {
            self.update_remote(side, addr);
        }
        let leg = self.leg_mut(side);
        leg.params = SideParams {
            remote: leg.params.remote,
            ..params
        };
        leg.stats.clock_changed(old.clock_rate, params.clock_rate);
        if old.dtmf_pt != params.dtmf_pt {
            // A digit in progress on the old payload type is reported, not lost.
            if let Some(event) = leg.dtmf.as_mut().and_then(DtmfDecoder::flush) {
                leg.push_dtmf(event);
            }
            leg.dtmf = params.dtmf_pt.map(DtmfDecoder::new);
        }
        if old.codec != params.codec || old.clock_rate != params.clock_rate {
            for leg in &mut self.legs {
                leg.out.prev_in_ssrc = None;
                leg.out.in_ssrc = None;
            }
        }
    }

    fn check_source(
        &self,
        now: Instant,
        side: Side,
        src: SocketAddr,
        ssrc: u32,
    ) -> Option<SourceCheck> {
        let leg = self.leg(side);
        let Some(latched) = leg.latched else {
            return Some(SourceCheck::Latch);
        };
        if leg.relatch_open {
            return Some(if leg.prev_latched == Some(src) {
                SourceCheck::Known
            } else {
                SourceCheck::Latch
            });
        }
        if latched == src {
            return Some(SourceCheck::Known);
        }
        let silence = self.config.relatch_after_silence;
        let silent = !silence.is_zero()
            && leg
                .last_rx
                .is_some_and(|t| now.saturating_duration_since(t) > silence);
        (silent && leg.last_ssrc == Some(ssrc)).then_some(SourceCheck::Latch)
    }

    fn drop(&mut self, side: Side, reason: DropReason) -> Verdict {
        if let Some(c) = self.leg_mut(side).counters.dropped.get_mut(reason.idx()) {
            *c += 1;
        }
        Verdict::Drop(reason)
    }

    /// Handles one datagram of `len` bytes in `buf`, received on `side` from `src`.
    ///
    /// On [`Verdict::Forward`] the header in `buf` has been rewritten for the other
    /// side (SSRC, sequence number, timestamp, marker, payload type); the payload is
    /// untouched. Nothing is allocated.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        side: Side,
        src: SocketAddr,
        buf: &mut [u8],
        len: usize,
    ) -> Verdict {
        {
            let c = &mut self.leg_mut(side).counters;
            c.received_packets += 1;
            c.received_bytes += len as u64;
        }
        let Some(pkt) = buf.get_mut(..len) else {
            return self.drop(side, DropReason::Malformed);
        };
        // RFC 5761 §4: a second octet of 192..=223 is RTCP (SR 200, RR 201, ...).
        if pkt.first().is_some_and(|b| b >> 6 == 2)
            && pkt.get(1).is_some_and(|b| (192..=223).contains(b))
        {
            return self.drop(side, DropReason::Rtcp);
        }
        let Ok(view) = RtpView::parse(pkt) else {
            return self.drop(side, DropReason::Malformed);
        };
        let (pt, marker, seq, ts, ssrc) = (
            view.pt(),
            view.marker(),
            view.seq(),
            view.timestamp(),
            view.ssrc(),
        );
        let payload_start = HEADER_LEN
            + 4 * view.csrc_count()
            + view.extension().map_or(0, |(_, data)| 4 + data.len());
        let payload = payload_start..payload_start + view.payload().len();

        let Some(check) = self.check_source(now, side, src, ssrc) else {
            return self.drop(side, DropReason::WrongSource);
        };
        let from = *self.params(side);
        let to = *self.params(side.other());
        let is_event = from.dtmf_pt == Some(pt);
        if pt != from.pt && !is_event {
            // Junk never latches: the check above only decided, this commits.
            return self.drop(side, DropReason::UnexpectedPayloadType);
        }

        {
            let leg = self.leg_mut(side);
            if check == SourceCheck::Latch {
                leg.latched = Some(src);
                leg.relatch_open = false;
                leg.prev_latched = None;
                leg.counters.latches += 1;
            }
            if check == SourceCheck::Latch || leg.latched == Some(src) {
                leg.last_rx = Some(now);
                leg.last_ssrc = Some(ssrc);
            }
        }

        let stale = self.config.stale_ssrc_window;
        if self.leg(side.other()).out.is_stale(now, ssrc, stale) {
            return self.drop(side, DropReason::StaleSsrc);
        }
        let epoch = *self.epoch.get_or_insert(now);
        {
            // Reception side of the packet: counted whether or not it can be relayed.
            let leg = self.leg_mut(side);
            leg.last_valid = Some(now);
            if is_event {
                leg.stats.on_packet_without_timing(&view);
                leg.dtmf_last = Some(now);
                if let Some(event) = leg.dtmf.as_mut().and_then(|d| d.handle(&view)) {
                    leg.push_dtmf(event);
                }
            } else {
                leg.stats
                    .on_packet(&view, arrival_ts(now, epoch, from.clock_rate));
                let ended = leg
                    .dtmf_last
                    .is_some_and(|t| now.saturating_duration_since(t) >= DTMF_END_TIMEOUT);
                if ended
                    && leg.dtmf.as_ref().is_some_and(DtmfDecoder::in_progress)
                    && let Some(event) = leg.dtmf.as_mut().and_then(DtmfDecoder::flush)
                {
                    leg.push_dtmf(event);
                }
            }
        }

        let Some(dst) = self.destination(side.other()) else {
            return self.drop(side, DropReason::NoDestination);
        };
        let transcode = !is_event && from.codec != to.codec;
        let out_pt = if is_event {
            match to.dtmf_pt {
                Some(p) => p,
                None => return self.drop(side, DropReason::NoPeerPayloadType),
            }
        } else {
            to.pt
        };

        let out = &mut self.leg_mut(side.other()).out;
        let out_ssrc = out.ssrc;
        let mapped = out.map(
            now,
            ssrc,
            seq,
            ts,
            marker,
            from.clock_rate,
            to.clock_rate,
            stale,
        );
        let (out_seq, out_ts, out_marker, changed) = match mapped {
            Ok(m) => m,
            Err(reason) => return self.drop(side, reason),
        };
        let header = RtpHeader {
            marker: out_marker,
            pt: out_pt,
            seq: out_seq,
            timestamp: out_ts,
            ssrc: out_ssrc,
        };
        let c = &mut self.leg_mut(side).counters;
        if changed {
            c.ssrc_changes += 1;
        }
        if transcode {
            c.transcoded_packets += 1;
            return Verdict::Transcode {
                dst,
                from: from.codec,
                to: to.codec,
                header,
                payload,
            };
        }
        if rewrite_header(pkt, &header).is_none() {
            return self.drop(side, DropReason::Malformed);
        }
        if is_event && from.clock_rate != to.clock_rate {
            // Event durations are in timestamp units (RFC 4733 §2.3.5): rescale them
            // with the timestamps, or a digit would last 6x too long or short.
            let events = pkt.get_mut(payload.clone()).unwrap_or_default();
            for ev in events.chunks_exact_mut(EVENT_LEN) {
                let d = u64::from(u16::from_be_bytes([ev[2], ev[3]]));
                let scaled = d * u64::from(to.clock_rate) / u64::from(from.clock_rate.max(1));
                let scaled = u16::try_from(scaled).unwrap_or(u16::MAX);
                ev[2..4].copy_from_slice(&scaled.to_be_bytes());
            }
        }
        let c = &mut self.leg_mut(side).counters;
        c.forwarded_packets += 1;
        c.forwarded_bytes += len as u64;
        Verdict::Forward { dst, len }
    }
}

/// `now` on a `clock_rate` Hz clock started at `epoch`, wrapping like an RTP timestamp.
fn arrival_ts(now: Instant, epoch: Instant, clock_rate: u32) -> u32 {
    let us = u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX);
    // u64 microseconds times a clock rate below 2^20 overflows only after ~500 years.
    (us.saturating_mul(u64::from(clock_rate)) / 1_000_000) as u32
}

/// Overwrites the mutable fields of a parsed header, keeping V/P/X/CC and the rest.
fn rewrite_header(pkt: &mut [u8], h: &RtpHeader) -> Option<()> {
    let fixed = pkt.get_mut(..HEADER_LEN)?;
    let mut b = [0u8; HEADER_LEN - 1];
    b[0] = (u8::from(h.marker) << 7) | (h.pt & 0x7f);
    b[1..3].copy_from_slice(&h.seq.to_be_bytes());
    b[3..7].copy_from_slice(&h.timestamp.to_be_bytes());
    b[7..11].copy_from_slice(&h.ssrc.to_be_bytes());
    fixed.get_mut(1..)?.copy_from_slice(&b);
    Some(())
}
