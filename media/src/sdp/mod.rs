//! SDP (RFC 4566) for audio, with the offer/answer model of RFC 3264.
//!
//! In: SDP bytes received from the far end (an answer to our offer, or an offer for an
//! inbound call) and our own [`OfferParams`] (local address, port, codec preferences).
//! Out: SDP text to send ([`build_offer`], [`answer_offer`]) and the [`StreamParams`] the
//! media endpoint needs (remote address, codec, payload types, ptime, direction).
//!
//! Only what a voice call needs is understood: `v o s c t m` lines and the `rtpmap`,
//! `fmtp`, `ptime` and direction attributes; codecs G.711 (RFC 3551), G.722 (RFC 3551
//! §4.5.2: `G722/8000` though it samples at 16 kHz) and Opus (RFC 7587: `opus/48000/2`,
//! dynamic payload type). Everything else is skipped.
//! Parsing never panics, whatever the input.

mod negotiate;
mod parse;

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

pub use negotiate::{answer_offer, negotiate_answer};
pub use parse::{Connection, MediaDescription, Origin, RtpMap, SessionDescription, parse};

/// Errors from parsing or negotiating SDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    /// The body is not UTF-8 text.
    #[error("SDP is not valid UTF-8")]
    NotUtf8,
    /// The first line is not `v=0`.
    #[error("SDP does not start with v=0")]
    BadVersion,
    /// A line is not of the form `<letter>=<value>`.
    #[error("malformed SDP line {line}")]
    Malformed { line: usize },
    /// An `o=` line has the wrong shape.
    #[error("bad o= line {line}")]
    BadOrigin { line: usize },
    /// A `c=` line is not `IN IP4|IP6 <address>`.
    #[error("bad c= line {line}")]
    BadConnection { line: usize },
    /// An `m=` line has the wrong shape.
    #[error("bad m= line {line}")]
    BadMedia { line: usize },
    /// There is no audio m-line at all.
    #[error("no audio stream in SDP")]
    NoAudio,
    /// Every audio m-line has port 0: the stream was rejected.
    #[error("audio stream rejected (port 0)")]
    Rejected,
    /// The audio stream has no c= line, neither at media nor at session level.
    #[error("audio stream has no connection address")]
    NoConnection,
    /// None of the codecs on the audio m-line is one we offered or support.
    #[error("no codec in common")]
    NoCommonCodec,
}

/// The audio codecs this crate can send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// G.722, static payload type 9; 16 kHz audio on an 8000 Hz RTP clock.
    G722,
    /// Opus, dynamic payload type (we offer [`OPUS_PT`]), 48000 Hz clock, `/2` channels
    /// in SDP whatever is sent (RFC 7587 §7).
    Opus,
}

/// The dynamic payload type we offer Opus on (the common choice; an answer's or an
/// offer's own number is used when negotiated).
pub const OPUS_PT: u8 = 111;
/// Opus `fmtp` we send: 10 ms frames at the least, and in-band FEC welcome (RFC 7587 §6.1).
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1";

impl Codec {
    /// Every codec, G.711 first.
    pub const ALL: [Codec; 4] = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus];

    /// The payload type we offer: static (RFC 3551 table 4) or, for Opus, [`OPUS_PT`].
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
            Codec::Opus => OPUS_PT,
        }
    }

    /// Whether [`payload_type`](Self::payload_type) is static (needs no rtpmap to be
    /// understood; we write one anyway).
    pub fn is_static(self) -> bool {
        !matches!(self, Codec::Opus)
    }

    /// RTP clock rate in Hz (8000 for G.722 too, RFC 3551 §4.5.2).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48000,
        }
    }

    /// The encoding name used in `a=rtpmap`.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The `a=rtpmap` value after the payload type, e.g. `opus/48000/2`.
    pub fn rtpmap(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU/8000",
            Codec::Pcma => "PCMA/8000",
            Codec::G722 => "G722/8000",
            Codec::Opus => "opus/48000/2",
        }
    }

    /// The `a=fmtp` parameters we send for this codec, if any.
    pub fn fmtp(self) -> Option<&'static str> {
        match self {
            Codec::Opus => Some(OPUS_FMTP),
            _ => None,
        }
    }

    /// The media engine's codec for it.
    pub fn audio_codec(self) -> crate::codec::AudioCodec {
        use crate::codec::AudioCodec;
        match self {
            Codec::Pcmu => AudioCodec::Pcmu,
            Codec::Pcma => AudioCodec::Pcma,
            Codec::G722 => AudioCodec::G722,
            Codec::Opus => AudioCodec::Opus { channels: 2 },
        }
    }

    /// The byte that encodes linear 0, for codecs where silence is one repeated byte
    /// (G.711); `None` for G.722 and Opus, whose silence must be encoded.
    pub fn silence_byte(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0xFF),
            Codec::Pcma => Some(0xD5),
            Codec::G722 | Codec::Opus => None,
        }
    }

    /// Codec for a static payload type, if it is one we know.
    pub fn from_static_pt(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            _ => None,
        }
    }

    /// Codec from an rtpmap encoding name and clock rate (name is case-insensitive).
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Option<Codec> {
        let codec = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus]
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))?;
        (codec.clock_rate() == clock_rate).then_some(codec)
    }
}

/// Media direction attribute (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// `a=sendrecv` (the default when absent).
    #[default]
    SendRecv,
    /// `a=sendonly`.
    SendOnly,
    /// `a=recvonly`.
    RecvOnly,
    /// `a=inactive`.
    Inactive,
}

impl Direction {
    /// The attribute name, without `a=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Parses an attribute name (`sendrecv`, ...).
    pub fn from_attr(s: &str) -> Option<Direction> {
        match s {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// Whether this side sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    /// Builds a direction from its send and receive halves.
    pub fn from_flags(send: bool, recv: bool) -> Direction {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }

    /// The same stream seen from the other end: sendonly ↔ recvonly.
    pub fn reversed(self) -> Direction {
        Direction::from_flags(self.receives(), self.sends())
    }

    /// Both sides' wishes combined: a half is on only if both allow it.
    pub fn intersect(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }
}

/// What we offer (or answer with): our address, port and codec preferences.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferParams {
    /// `o=` session id; stays the same for the session.
    pub session_id: u64,
    /// `o=` session version; bump it for every new offer in the session.
    pub session_version: u64,
    /// Our RTP address (goes into `o=` and `c=`).
    pub addr: IpAddr,
    /// Our RTP port.
    pub port: u16,
    /// Codecs in order of preference.
    pub codecs: Vec<Codec>,
    /// Payload type for RFC 4733 telephone-event (usually 101), or `None` for no DTMF.
    pub dtmf_pt: Option<u8>,
    /// Packetization time we want to receive, in milliseconds.
    pub ptime_ms: u32,
    /// Our direction.
    pub direction: Direction,
}

/// The negotiated stream: everything the media endpoint needs to send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    /// Where to send RTP (until symmetric RTP latching says otherwise).
    pub remote: SocketAddr,
    /// The codec to send.
    pub codec: Codec,
    /// The payload type to put on sent packets for `codec`.
    pub pt: u8,
    /// RTP clock rate of `codec`.
    pub clock_rate: u32,
    /// Packetization time to send with, in milliseconds (what the far end asked for).
    pub ptime_ms: u32,
    /// The telephone-event payload type both sides agreed on.
    pub dtmf_pt: Option<u8>,
    /// Our direction, from our side: `SendOnly` means we send and do not expect media.
    pub direction: Direction,
}

/// The `IP4`/`IP6` token for an address.
fn addr_type(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    }
}

/// Writes `v=`, `o=`, `s=`, `c=` and `t=` lines.
fn write_session_header(out: &mut String, session_id: u64, session_version: u64, addr: IpAddr) {
    let at = addr_type(addr);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "v=0\r\no=- {session_id} {session_version} IN {at} {addr}\r\ns=-\r\nc=IN {at} {addr}\r\nt=0 0\r\n"
    );
}

/// Writes the rtpmap/fmtp lines for one audio m-line plus ptime and direction; each of
/// `events` is a telephone-event (payload type, clock rate, events).
fn write_audio_attrs(
    out: &mut String,
    codecs: &[(Codec, u8)],
    events: &[(u8, u32, &str)],
    ptime_ms: u32,
    direction: Direction,
) {
    for (codec, pt) in codecs {
        let _ = write!(out, "a=rtpmap:{pt} {}\r\n", codec.rtpmap());
        if let Some(fmtp) = codec.fmtp() {
            let _ = write!(out, "a=fmtp:{pt} {fmtp}\r\n");
        }
    }
    for (pt, clock, events) in events {
        let _ = write!(
            out,
            "a=rtpmap:{pt} telephone-event/{clock}\r\na=fmtp:{pt} {events}\r\n"
        );
    }
    let _ = write!(out, "a=ptime:{ptime_ms}\r\na={}\r\n", direction.as_str());
}

/// The payload type we offer `codec` on: its own, except that Opus moves off
/// [`OPUS_PT`] when telephone-event was given that number.
pub fn offered_pt(codec: Codec, dtmf_pt: Option<u8>) -> u8 {
    let pt = codec.payload_type();
    if !codec.is_static() && dtmf_pt == Some(pt) {
        pt - 1
    } else {
        pt
    }
}

/// The payload type we offer telephone-event/48000 on beside telephone-event/8000 on
/// `dtmf_pt`: 110 (what WebRTC stacks use), or the first dynamic number that neither
/// `dtmf_pt` nor Opus ([`offered_pt`]) took.
pub fn wideband_event_pt(dtmf_pt: u8) -> u8 {
    let opus = offered_pt(Codec::Opus, Some(dtmf_pt));
    std::iter::once(110)
        .chain(96..=127)
        .find(|pt| *pt != dtmf_pt && *pt != opus)
        .unwrap_or(110)
}

/// The telephone-events an offer of `codecs` carries when DTMF is on `dtmf_pt`
/// (RFC 4733 §2.1: events run on the clock of the audio they go with): `dtmf_pt` at
/// 8000 Hz for G.711 and G.722, [`wideband_event_pt`] at 48000 Hz for Opus.
fn offered_events(codecs: &[Codec], dtmf_pt: Option<u8>) -> Vec<(u8, u32, &'static str)> {
    let Some(pt) = dtmf_pt else {
        return Vec::new();
    };
    let wide = codecs.contains(&Codec::Opus);
    let narrow = codecs.iter().any(|c| c.clock_rate() == 8000);
    let mut out = Vec::with_capacity(2);
    if narrow || !wide {
        out.push((pt, 8000, "0-16"));
    }
    if wide {
        out.push((wideband_event_pt(pt), 48000, "0-16"));
    }
    out
}

/// Builds an SDP offer for one audio stream (RFC 3264 §5), CRLF line ends.
///
/// Payload types are listed in `p.codecs` order (Opus on [`offered_pt`] with its fmtp),
/// then, when `p.dtmf_pt` is set, telephone-event (events 0-16) on each clock the codecs
/// use: `p.dtmf_pt` at 8000 Hz for G.711/G.722, [`wideband_event_pt`] at 48000 Hz for
/// Opus. An answer picks the events on its codec's clock (see [`negotiate_answer`]).
pub fn build_offer(p: &OfferParams) -> String {
    let mut out = String::with_capacity(320);
    write_session_header(&mut out, p.session_id, p.session_version, p.addr);
    let mut seen: Vec<Codec> = Vec::with_capacity(p.codecs.len());
    for c in &p.codecs {
        if !seen.contains(c) {
            seen.push(*c);
        }
    }
    let pairs: Vec<(Codec, u8)> = seen
        .iter()
        .map(|c| (*c, offered_pt(*c, p.dtmf_pt)))
        .collect();
    let events = offered_events(&seen, p.dtmf_pt);
    let _ = write!(out, "m=audio {} RTP/AVP", p.port);
    for (_, pt) in &pairs {
        let _ = write!(out, " {pt}");
    }
    for (pt, _, _) in &events {
        let _ = write!(out, " {pt}");
    }
    out.push_str("\r\n");
    write_audio_attrs(&mut out, &pairs, &events, p.ptime_ms, p.direction);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    pub(crate) fn offer_params() -> OfferParams {
        OfferParams {
            session_id: 42,
            session_version: 1,
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            port: 20000,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            dtmf_pt: Some(101),
            ptime_ms: 20,
            direction: Direction::SendRecv,
        }
    }

    #[test]
    fn offer_text_is_exact() {
        let sdp = build_offer(&offer_params());
        let expected = "v=0\r\n\
            o=- 42 1 IN IP4 192.0.2.10\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.10\r\n\
            t=0 0\r\n\
            m=audio 20000 RTP/AVP 0 8 101\r\n\
            a=rtpmap:0 PCMU/8000\r\n\
            a=rtpmap:8 PCMA/8000\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            a=fmtp:101 0-16\r\n\
            a=ptime:20\r\n\
            a=sendrecv\r\n";
        assert_eq!(sdp, expected);
    }

    #[test]
    fn offer_ipv6_no_dtmf_parses_back() {
        let mut p = offer_params();
        p.addr = "2001:db8::1".parse().unwrap();
        p.dtmf_pt = None;
        p.codecs = vec![Codec::Pcma, Codec::Pcma];
        p.direction = Direction::SendOnly;
        let sdp = build_offer(&p);
        assert!(sdp.contains("c=IN IP6 2001:db8::1\r\n"));
        assert!(sdp.contains("m=audio 20000 RTP/AVP 8\r\n"));
        assert!(!sdp.contains("telephone-event"));
        let parsed = parse(sdp.as_bytes()).unwrap();
        assert_eq!(parsed.media.len(), 1);
        assert_eq!(parsed.media[0].direction, Some(Direction::SendOnly));
    }

    #[test]
    fn direction_algebra() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(Direction::RecvOnly.reversed(), Direction::SendOnly);
        assert_eq!(Direction::SendRecv.reversed(), Direction::SendRecv);
        assert_eq!(Direction::Inactive.reversed(), Direction::Inactive);
        assert_eq!(
            Direction::SendRecv.intersect(Direction::RecvOnly),
            Direction::RecvOnly
        );
        assert_eq!(
            Direction::SendOnly.intersect(Direction::RecvOnly),
            Direction::Inactive
        );
    }

    #[test]
    fn codec_tables() {
        assert_eq!(Codec::Pcmu.payload_type(), 0);
        assert_eq!(Codec::Pcma.payload_type(), 8);
        assert_eq!(Codec::Pcma.name(), "PCMA");
        assert_eq!(Codec::from_rtpmap("pcmu", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("PCMU", 16000), None);
        assert_eq!(Codec::from_static_pt(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_static_pt(9), Some(Codec::G722));
        assert_eq!(Codec::from_static_pt(18), None);
        assert_eq!(Codec::from_rtpmap("G722", 8000), Some(Codec::G722));
        assert_eq!(Codec::from_rtpmap("G722", 16000), None, "RFC 3551: 8000");
        assert_eq!(Codec::from_rtpmap("OPUS", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("opus", 8000), None);
        for c in Codec::ALL {
            assert_eq!(c.audio_codec().rtp_clock_rate(), c.clock_rate(), "{c:?}");
        }
        assert_eq!(Codec::Pcma.silence_byte(), Some(0xD5));
        assert_eq!(Codec::Opus.silence_byte(), None);
    }

    #[test]
    fn offer_with_g722_and_opus() {
        let mut p = offer_params();
        p.codecs = vec![Codec::Opus, Codec::G722, Codec::Pcmu];
        let sdp = build_offer(&p);
        assert!(
            sdp.contains("m=audio 20000 RTP/AVP 111 9 0 101 110\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains(
            "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n\
             a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
             a=rtpmap:110 telephone-event/48000\r\na=fmtp:110 0-16\r\n"
        ));
        // telephone-event on 111 pushes Opus to 110, and the 48 kHz events to 96.
        p.dtmf_pt = Some(111);
        let sdp = build_offer(&p);
        assert!(
            sdp.contains("m=audio 20000 RTP/AVP 110 9 0 111 96\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=rtpmap:110 opus/48000/2\r\n"));
        assert!(sdp.contains("a=rtpmap:96 telephone-event/48000\r\n"));
        let parsed = parse(sdp.as_bytes()).unwrap();
        let m = &parsed.media[0];
        assert_eq!(m.rtpmap(110).unwrap().channels, Some(2));
        assert_eq!(m.fmtp(110), Some(OPUS_FMTP));
    }

    #[test]
    fn telephone_event_on_each_clock_the_codecs_use() {
        let events = |codecs: &[Codec], dtmf: Option<u8>| {
            let mut p = offer_params();
            p.codecs = codecs.to_vec();
            p.dtmf_pt = dtmf;
            let sdp = build_offer(&p);
            let parsed = parse(sdp.as_bytes()).unwrap();
            let m = &parsed.media[0];
            let mut got: Vec<(u8, u32)> = m
                .rtpmaps
                .iter()
                .filter(|r| r.encoding == "telephone-event")
                .map(|r| (r.pt, r.clock_rate))
                .collect();
            got.sort_unstable();
            // Every event payload type is on the m-line and has its fmtp.
            for (pt, _) in &got {
                assert!(m.payload_types().any(|p| p == *pt), "{sdp}");
                assert_eq!(m.fmtp(*pt), Some("0-16"), "{sdp}");
            }
            got
        };
        assert_eq!(
            events(&[Codec::Pcmu, Codec::Pcma], Some(101)),
            [(101, 8000)]
        );
        assert_eq!(events(&[Codec::G722], Some(101)), [(101, 8000)]);
        assert_eq!(events(&[Codec::Opus], Some(101)), [(110, 48000)]);
        assert_eq!(events(&Codec::ALL, Some(101)), [(101, 8000), (110, 48000)]);
        assert_eq!(events(&[Codec::Opus], Some(110)), [(96, 48000)]);
        assert_ne!(wideband_event_pt(110), 110);
        assert_ne!(wideband_event_pt(110), offered_pt(Codec::Opus, Some(110)));
        assert!(events(&Codec::ALL, None).is_empty());
    }

    #[test]
    fn each_codec_offered_alone_reads_back() {
        for codec in Codec::ALL {
            let mut p = offer_params();
            p.codecs = vec![codec];
            let sdp = build_offer(&p);
            let parsed = parse(sdp.as_bytes()).unwrap();
            let m = &parsed.media[0];
            let pt = offered_pt(codec, p.dtmf_pt);
            assert_eq!(m.payload_types().next(), Some(pt), "{sdp}");
            let map = m.rtpmap(pt).unwrap();
            assert_eq!(
                Codec::from_rtpmap(&map.encoding, map.clock_rate),
                Some(codec),
                "{sdp}"
            );
            assert_eq!(m.fmtp(pt), codec.fmtp(), "{sdp}");
            // Exactly one telephone-event, on this codec's clock.
            let te: Vec<u32> = m
                .rtpmaps
                .iter()
                .filter(|r| r.encoding == "telephone-event")
                .map(|r| r.clock_rate)
                .collect();
            assert_eq!(te, [codec.clock_rate()], "{sdp}");
        }
    }
}
