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
//!
//! Transcoded directions (the legs' codecs differ) are played out on a clock unless
//! [`RelayConfig::transcode_jitter`] is `None`: their audio packets go into an adaptive
//! [`JitterBuffer`] ([`Verdict::Buffered`]) and [`Relay::handle_timeout`] produces one
//! transcoded packet per frame time ([`Relay::poll_timeout`] says when): a packet is
//! decoded, resampled and encoded; a lost one is concealed by the source codec's PLC,
//! so the far side gets a continuous stream in order. RFC 4733 events are never
//! buffered, and pass-through directions add no delay.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::codec::AudioCodec;
use crate::dtmf::{DtmfDecoder, DtmfEvent, EVENT_LEN};
use crate::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use crate::rtp::{HEADER_LEN, RtpHeader, RtpView};
use crate::sdp::{Direction, StreamParams};
use crate::stats::RtpStats;
use crate::transcode::Transcoder;

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
    /// Jitter buffering of transcoded directions (the default). `None` hands each
    /// packet to the caller's transcoder as it arrives ([`Verdict::Transcode`]).
    pub transcode_jitter: Option<TranscodeJitter>,
    /// Each output stream takes the SSRC of the first stream relayed into it instead of
    /// a random one, so relaying between legs that share a codec leaves headers as
    /// they are, as in-kernel forwarding needs ([`Relay::passthrough_sources`]).
    pub pass_ssrc: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            relatch_after_silence: Duration::ZERO,
            stale_ssrc_window: Duration::from_millis(500),
            transcode_jitter: Some(TranscodeJitter::default()),
            pass_ssrc: false,
        }
    }
}

/// Delay bounds of the adaptive jitter buffer of a transcoded direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranscodeJitter {
    /// Lowest buffering delay.
    pub min_delay_ms: u32,
    /// Highest buffering delay.
    pub max_delay_ms: u32,
}

impl Default for TranscodeJitter {
    fn default() -> Self {
        TranscodeJitter {
            // One frame more than the buffer's own minimum: the first packets come before
            // any jitter estimate, and a concealed frame is worse than 20 ms of delay.
            min_delay_ms: 40,
            max_delay_ms: JitterConfig::default().max_delay_ms,
        }
    }
}

/// A packet [`Relay::handle_timeout`] wrote for the driver to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// The side it goes to.
    pub to: Side,
    /// Where to send it.
    pub dst: SocketAddr,
    /// Packet length at the front of the caller's buffer (header and payload).
    pub len: usize,
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
    /// From an address other than the one the side latched to (RTP bleed), or, before
    /// latching, from an address neither the side's SDP nor its signalling named (an
    /// attacker racing the real far end, or a port sweep: RTP hijack).
    WrongSource,
    /// A late packet of an SSRC the stream has just switched away from.
    StaleSsrc,
    /// The other side has no address yet.
    NoDestination,
    /// The other side did not negotiate an equivalent payload type (e.g. no DTMF).
    NoPeerPayloadType,
    /// The other side's negotiated direction says it receives nothing (it is holding
    /// the call: `a=sendonly` or `a=inactive`, RFC 3264 §5.1).
    Held,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::Rtcp,
        DropReason::UnexpectedPayloadType,
        DropReason::WrongSource,
        DropReason::StaleSsrc,
        DropReason::NoDestination,
        DropReason::NoPeerPayloadType,
        DropReason::Held,
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
            DropReason::Held => 7,
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
    /// Held in the jitter buffer of a transcoded direction: it leaves, transcoded, from
    /// [`Relay::handle_timeout`]. Nothing to send now.
    Buffered,
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
    /// Packets handed to a transcoder (or to a transcoded direction's jitter buffer).
    pub transcoded_packets: u64,
    /// Frames a transcoded direction could not decode or encode (nothing was sent).
    pub transcode_errors: u64,
    /// Frames a transcoded direction concealed (lost, late or missing input).
    pub concealed_frames: u64,
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

    /// Whether packets leave this stream exactly as they came in (or none came yet).
    fn is_identity(&self) -> bool {
        self.last.is_none()
            || (self.in_ssrc == Some(self.ssrc)
                && self.seq_offset == 0
                && self.ts_anchor_in == self.ts_anchor_out)
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
        pass_ssrc: bool,
    ) -> Result<(u16, u32, bool, bool), DropReason> {
        let mut changed = false;
        if self.in_ssrc != Some(ssrc) {
            if self.is_stale(now, ssrc, stale_window) {
                return Err(DropReason::StaleSsrc);
            }
            match self.last {
                None => {
                    // First packet: pass numbering (and maybe the SSRC) through unchanged.
                    if pass_ssrc {
                        self.ssrc = ssrc;
                    }
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
    /// Our negotiated direction towards this side (RFC 3264 §6.1, from our side): no
    /// RTP is sent to it unless it `sends()`.
    direction: Direction,
    /// Where the side's SIP signalling comes from: may latch besides the SDP address.
    signal_ip: Option<std::net::IpAddr>,
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

/// Whether `src` may become a side's media source: its IP is the one the side's SDP
/// signalled, or (a far end behind NAT, whose SDP names its private address) the one its
/// SIP signalling came from. The port is not checked: a NAT rewrites it. Anyone else
/// must not latch, or the first stranger to send takes the call's audio both ways.
pub fn source_allowed(
    src: std::net::IpAddr,
    sdp: Option<SocketAddr>,
    signalling: Option<std::net::IpAddr>,
) -> bool {
    let src = src.to_canonical();
    sdp.is_some_and(|a| a.ip().to_canonical() == src)
        || signalling.is_some_and(|ip| ip.to_canonical() == src)
}

/// Whether a source may send on a side, and what accepting it does to the latch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceCheck {
    /// The latched source (or in-flight media from the previous one).
    Known,
    /// A source to latch to.
    Latch,
}

/// Frames of concealment not sent after an RFC 4733 event: the sender replaced its
/// audio by the event, so there is nothing to conceal.
const EVENT_QUIET: Duration = Duration::from_millis(60);
/// Concealment sent for a run of missing input, at most: the PLC has faded to silence
/// by then (60 ms), and a sender that stopped (end of talkspurt, hold) should not be
/// replaced by a stream of silence. The output resumes, re-based, with its next packet.
const MAX_CONCEALED_MS: u32 = 60;
/// Frames one [`Relay::handle_timeout`] call may skip without sending (concealment
/// muted by an event) before it returns.
const MAX_SILENT_POPS: usize = 16;

/// The playout of one transcoded direction: its jitter buffer, keyed on the numbering
/// [`OutStream::map`] gives the packets (continuous across input SSRC changes, in the
/// output clock), and the transcoder its frames go through.
struct PlayoutPath {
    from: AudioCodec,
    to: AudioCodec,
    ptime_ms: u32,
    frame_ts: u32,
    jb: JitterBuffer,
    tc: Transcoder,
    /// Sequence number of the next packet sent (audio or event) in this direction.
    next_seq: u16,
    /// The last audio packet sent.
    sent: Option<LastOut>,
    /// Frame times played out without sending since `sent` (muted concealment).
    muted: u32,
    /// Consecutive frames concealed.
    concealed_run: u32,
    /// The buffer's restart count when `sent` was sent; a restart re-bases the output.
    resets: u64,
    /// The buffer has been filling since `sent`: the output re-bases.
    refill: bool,
}

impl std::fmt::Debug for PlayoutPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayoutPath")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("ptime_ms", &self.ptime_ms)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl PlayoutPath {
    fn new(
        from: AudioCodec,
        to: AudioCodec,
        to_rate: u32,
        ptime_ms: u32,
        first_seq: u16,
        cfg: TranscodeJitter,
    ) -> Option<Self> {
        let tc = match Transcoder::new(from, to, ptime_ms) {
            Ok(tc) => tc,
            Err(e) => {
                tracing::debug!(error = %e, ?from, ?to, ptime_ms, "cannot transcode");
                return None;
            }
        };
        let frame_ts = to_rate / 1000 * ptime_ms;
        let jb = JitterBuffer::new(JitterConfig {
            clock_rate: to_rate,
            frame_ts,
            min_delay_ms: cfg.min_delay_ms,
            max_delay_ms: cfg.max_delay_ms,
            ..JitterConfig::default()
        });
        Some(PlayoutPath {
            from,
            to,
            ptime_ms,
            frame_ts,
            jb,
            tc,
            next_seq: first_seq,
            sent: None,
            muted: 0,
            concealed_run: 0,
            resets: 0,
            refill: false,
        })
    }

    /// The timestamp of the audio packet sent at `now`: one frame after the previous
    /// one per frame time, whatever the buffer did (a growth step inserts a frame, a
    /// shrink step drops one); after a restart or a refill, advanced by the wall-clock
    /// gap. `None` for the first packet (it keeps the buffer's timestamp). Also says
    /// whether the stream was re-based (the packet gets the marker bit).
    fn next_ts(&mut self, now: Instant, rate: u32) -> Option<(u32, bool)> {
        let last = self.sent?;
        let resets = self.jb.stats().resets;
        if self.refill || resets != self.resets {
            let gap = now.saturating_duration_since(last.at).as_nanos();
            let ticks = u32::try_from(gap * u128::from(rate) / 1_000_000_000).unwrap_or(u32::MAX);
            return Some((last.ts.wrapping_add(ticks.max(self.frame_ts)), true));
        }
        let frames = self.muted.saturating_add(1);
        Some((
            last.ts.wrapping_add(frames.wrapping_mul(self.frame_ts)),
            self.muted > 0,
        ))
    }

    fn take_seq(&mut self) -> u16 {
        let s = self.next_seq;
        self.next_seq = s.wrapping_add(1);
        s
    }
}

/// The relay state of one bridged call.
#[derive(Debug)]
pub struct Relay {
    legs: [Leg; 2],
    config: RelayConfig,
    /// Origin of the arrival clock for jitter (the first packet's `now`).
    epoch: Option<Instant>,
    /// Playout of each transcoded direction, indexed by the receiving side; built at
    /// its first audio packet (this allocates, once per codec/ptime change).
    paths: [Option<Box<PlayoutPath>>; 2],
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
            direction: Direction::SendRecv,
            signal_ip: None,
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
            paths: [None, None],
        }
    }

    fn path_mut(&mut self, from: Side) -> &mut Option<Box<PlayoutPath>> {
        match from {
            Side::A => &mut self.paths[0],
            Side::B => &mut self.paths[1],
        }
    }

    fn path(&self, from: Side) -> Option<&PlayoutPath> {
        match from {
            Side::A => self.paths[0].as_deref(),
            Side::B => self.paths[1].as_deref(),
        }
    }

    /// Ends the playout of packets from `from`; the pass-through stream that may follow
    /// continues its numbering from the last packet sent.
    fn end_path(&mut self, from: Side) {
        if let Some(path) = self.path_mut(from).take() {
            let out = &mut self.leg_mut(from.other()).out;
            if let Some(sent) = path.sent {
                out.last = Some(sent);
            }
            out.prev_in_ssrc = None;
            out.in_ssrc = None;
        }
    }

    /// Jitter buffer counters and delay of the transcoded direction carrying what
    /// `from`'s far end sends; `None` while it has no playout.
    pub fn jitter_stats(&self, from: Side) -> Option<JitterStats> {
        self.path(from).map(|p| p.jb.stats())
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has a frame to play out;
    /// `None` while no transcoded direction has a stream.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let a = self.path(Side::A).and_then(|p| p.jb.poll_timeout());
        let b = self.path(Side::B).and_then(|p| p.jb.poll_timeout());
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Plays out the next due frame of a transcoded direction: writes the packet
    /// (12-byte header and transcoded or concealed payload) into the front of `buf`
    /// and says where it goes. `None` once nothing more is due at `now`; call again
    /// until then. `buf` should hold [`HEADER_LEN`] plus the largest payload of the
    /// target codec.
    pub fn handle_timeout(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let mut silent = 0;
        loop {
            let from = [Side::A, Side::B]
                .into_iter()
                .filter_map(|s| Some((s, self.path(s)?.jb.poll_timeout()?)))
                .filter(|(_, t)| *t <= now)
                .min_by_key(|(_, t)| *t)
                .map(|(s, _)| s)?;
            match self.play_one(now, from, buf) {
                Played::Sent(t) => return Some(t),
                Played::Nothing => return None,
                Played::Silent => {
                    silent += 1;
                    if silent >= MAX_SILENT_POPS {
                        return None;
                    }
                }
            }
        }
    }

    fn play_one(&mut self, now: Instant, from: Side, buf: &mut [u8]) -> Played {
        let to = from.other();
        let quiet = self
            .leg(from)
            .dtmf_last
            .is_some_and(|t| now.saturating_duration_since(t) < EVENT_QUIET)
            || self
                .leg(from)
                .dtmf
                .as_ref()
                .is_some_and(DtmfDecoder::in_progress);
        // A held side gets nothing: its frames play out muted (the numbering goes on).
        let dst = self
            .destination(to)
            .filter(|_| self.leg(to).direction.sends());
        let (pt, ssrc, rate) = (
            self.params(to).pt,
            self.leg(to).out.ssrc,
            self.params(to).clock_rate,
        );
        let idx = match from {
            Side::A => 0,
            Side::B => 1,
        };
        let Some(path) = self.paths.get_mut(idx).and_then(|p| p.as_deref_mut()) else {
            return Played::Nothing;
        };
        let PlayoutPath { jb, tc, .. } = path;
        let Some(h) = buf.get_mut(HEADER_LEN..) else {
            return Played::Nothing;
        };
        let (ts, coded, concealed) = match jb.pop(now) {
            None => return Played::Nothing,
            Some(Playout::Nothing) => {
                path.refill = true;
                return Played::Silent;
            }
            Some(Playout::Frame { ts, payload }) => match tc.process(payload, h) {
                Ok(n) => (ts, Ok(n), false),
                // A corrupt payload is as good as lost.
                Err(_) => (ts, tc.conceal(h), true),
            },
            Some(Playout::Lost { ts } | Playout::Gap { ts }) => {
                let limit = MAX_CONCEALED_MS.div_ceil(path.ptime_ms.max(1));
                if quiet || path.concealed_run >= limit {
                    path.muted = path.muted.saturating_add(1);
                    return Played::Silent;
                }
                (ts, tc.conceal(h), true)
            }
        };
        let n = match (dst, coded) {
            (Some(_), Ok(n)) => n,
            (None, _) => {
                path.muted = path.muted.saturating_add(1);
                return Played::Silent;
            }
            (_, Err(e)) => {
                tracing::trace!(error = %e, "transcoding a frame failed");
                path.muted = path.muted.saturating_add(1);
                self.leg_mut(from).counters.transcode_errors += 1;
                return Played::Silent;
            }
        };
        let Some(dst) = dst else {
            return Played::Silent;
        };
        let (ts, marker) = path.next_ts(now, rate).unwrap_or((ts, true));
        path.concealed_run = if concealed {
            path.concealed_run.saturating_add(1)
        } else {
            0
        };
        path.muted = 0;
        path.refill = false;
        path.resets = path.jb.stats().resets;
        let seq = path.take_seq();
        let header = RtpHeader {
            marker,
            pt,
            seq,
            timestamp: ts,
            ssrc,
        };
        if header.write(buf).is_err() {
            return Played::Nothing;
        }
        path.sent = Some(LastOut { seq, ts, at: now });
        if concealed {
            self.leg_mut(from).counters.concealed_frames += 1;
        }
        Played::Sent(Transmit {
            to,
            dst,
            len: HEADER_LEN + n,
        })
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

    /// The far ends' sources `(A, B)` when relaying between them changes nothing a NAT
    /// binding could not: both sides latched (no re-latch pending), the same codec,
    /// payload types and DTMF payload type both ways, no playout running, and each
    /// output stream passing its input's SSRC, numbering and timing through (or not
    /// started). `None` otherwise. In-kernel forwarding may then take the call over.
    pub fn passthrough_sources(&self) -> Option<(SocketAddr, SocketAddr)> {
        let [a, b] = &self.legs;
        let source = |leg: &Leg| leg.latched.filter(|_| !leg.relatch_open);
        let (pa, pb) = (source(a)?, source(b)?);
        let (x, y) = (&a.params, &b.params);
        let same = x.codec == y.codec
            && x.pt == y.pt
            && x.clock_rate == y.clock_rate
            && x.dtmf_pt == y.dtmf_pt;
        let identity = a.out.is_identity() && b.out.is_identity();
        let playout = self.paths.iter().any(Option::is_some);
        // The kernel entry forwards both ways: a held side keeps the call here.
        let both_receive = a.direction.sends() && b.direction.sends();
        (same && identity && !playout && both_receive).then_some((pa, pb))
    }

    /// The SSRC `side` sees on the packets we send it.
    pub fn output_ssrc(&self, side: Side) -> u32 {
        self.leg(side).out.ssrc
    }

    /// The RTP timestamp of the stream we send `side`, extrapolated to `now` on its
    /// clock (for an RTCP SR, RFC 3550 §6.4.1); `None` before anything was sent.
    pub fn rtp_timestamp_at(&self, side: Side, now: Instant) -> Option<u32> {
        let leg = self.leg(side);
        let played = self.path(side.other()).and_then(|p| p.sent);
        let last = played.or(leg.out.last)?;
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

    /// A re-INVITE moved `side`'s media to `addr` (or the callee's answer gave the
    /// address of a placeholder side). If that differs from the current SDP address and
    /// from the latched source, media for `side` goes to `addr` and the next packet from
    /// a new source re-latches; packets still arriving from the old latched source are
    /// accepted meanwhile (they were in flight). A latched source that is at `addr`
    /// stays latched.
    pub fn update_remote(&mut self, side: Side, addr: SocketAddr) {
        let leg = self.leg_mut(side);
        if leg.params.remote == Some(addr) {
            return;
        }
        leg.params.remote = Some(addr);
        if leg.latched == Some(addr) {
            // The latched source is where the new address says: nothing moved.
            leg.relatch_open = false;
            leg.prev_latched = None;
        } else if leg.latched.is_some() {
            leg.prev_latched = leg.latched;
            leg.relatch_open = true;
        }
    }

    /// Our negotiated direction towards `side` ([`StreamParams::direction`]: from our
    /// side). Unless it `sends()` (`sendrecv`/`sendonly`), `side` is holding the call and
    /// nothing is relayed or played out to it ([`DropReason::Held`]); what it sends is
    /// still received, counted and relayed to the other side if that one receives.
    pub fn set_direction(&mut self, side: Side, direction: Direction) {
        self.leg_mut(side).direction = direction;
    }

    /// Where `side`'s SIP signalling comes from (the caller's source address, the callee
    /// trunk's): besides its SDP address, the only address that may latch (see
    /// [`source_allowed`]).
    pub fn set_signalling_ip(&mut self, side: Side, ip: Option<std::net::IpAddr>) {
        self.leg_mut(side).signal_ip = ip;
    }

    /// Our negotiated direction towards `side` (see [`Relay::set_direction`]).
    pub fn direction(&self, side: Side) -> Direction {
        self.leg(side).direction
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
            // Playout restarts with the new codecs at the next packet.
            self.end_path(Side::A);
            self.end_path(Side::B);
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
        // Learning (first latch, after a re-INVITE moved the address, after silence) is
        // open only to the addresses signalling named. Not worked out for the latched
        // source's packets, nearly all of them.
        let may_latch = || source_allowed(src.ip(), leg.params.remote, leg.signal_ip);
        let Some(latched) = leg.latched else {
            return may_latch().then_some(SourceCheck::Latch);
        };
        if leg.relatch_open {
            if leg.prev_latched == Some(src) {
                return Some(SourceCheck::Known);
            }
            return may_latch().then_some(SourceCheck::Latch);
        }
        if latched == src {
            return Some(SourceCheck::Known);
        }
        if !may_latch() {
            return None;
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

        if !self.leg(side.other()).direction.sends() {
            // Received and counted above (stats, DTMF), but the other side is holding.
            return self.drop(side, DropReason::Held);
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

        let pass_ssrc = self.config.pass_ssrc;
        let out = &mut self.leg_mut(side.other()).out;
        let mapped = out.map(
            now,
            ssrc,
            seq,
            ts,
            marker,
            from.clock_rate,
            to.clock_rate,
            stale,
            pass_ssrc,
        );
        let out_ssrc = out.ssrc;
        let (out_seq, out_ts, out_marker, changed) = match mapped {
            Ok(m) => m,
            Err(reason) => return self.drop(side, reason),
        };
        if changed {
            self.leg_mut(side).counters.ssrc_changes += 1;
        }
        if transcode && let Some(cfg) = self.config.transcode_jitter {
            let input = pkt.get(payload).unwrap_or_default();
            return self.buffer(now, side, out_seq, out_ts, input, cfg);
        }
        if !transcode && !is_event {
            // The direction passes through (again): no playout may run beside it.
            self.end_path(side);
        }
        // Packets sent in a played-out direction are numbered by its playout.
        let out_seq = match self.path_mut(side) {
            Some(path) if is_event => path.take_seq(),
            _ => out_seq,
        };
        let header = RtpHeader {
            marker: out_marker,
            pt: out_pt,
            seq: out_seq,
            timestamp: out_ts,
            ssrc: out_ssrc,
        };
        let c = &mut self.leg_mut(side).counters;
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

/// What one playout step did.
enum Played {
    /// A packet is in the caller's buffer.
    Sent(Transmit),
    /// A frame time passed without a packet (filling, muted, no destination).
    Silent,
    /// Nothing is due.
    Nothing,
}

impl Relay {
    /// Puts one audio packet of a transcoded direction, already numbered for the
    /// output stream, into that direction's jitter buffer.
    fn buffer(
        &mut self,
        now: Instant,
        side: Side,
        seq: u16,
        ts: u32,
        payload: &[u8],
        cfg: TranscodeJitter,
    ) -> Verdict {
        let from = self.params(side).codec;
        let to = *self.params(side.other());
        let ptime = crate::codec::payload_ptime_ms(from, payload);
        let fits = self
            .path(side)
            .is_some_and(|p| p.from == from && p.to == to.codec && p.ptime_ms == ptime);
        if !fits {
            // Continue the numbering of whatever this direction sent before.
            let next_seq = self.path(side).map_or(seq, |p| p.next_seq);
            let path = PlayoutPath::new(from, to.codec, to.clock_rate, ptime, next_seq, cfg);
            *self.path_mut(side) = path.map(Box::new);
        }
        let counters = match side {
            Side::A => &mut self.legs[0].counters,
            Side::B => &mut self.legs[1].counters,
        };
        counters.transcoded_packets += 1;
        match self.path_mut(side) {
            // One stream: the output numbering is already continuous across input SSRCs.
            Some(path) => path.jb.push(now, seq, ts, 0, payload),
            // No transcoder for this codec pair or packet duration.
            None => self.leg_mut(side).counters.transcode_errors += 1,
        }
        Verdict::Buffered
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
