//! RFC 3264 offer/answer for one audio stream.
//!
//! - [`negotiate_answer`] (§6 seen from the offerer): our [`OfferParams`] plus the far
//!   end's answer in, [`StreamParams`] out.
//! - [`answer_offer`] (§6 as the answerer): the far end's offer plus our preferences in,
//!   answer SDP text and [`StreamParams`] out.
//!
//! `StreamParams::direction` is always from our side: the far end's attribute reversed
//! (its `recvonly` means we send only), then limited to what we allow. A `c=` of
//! `0.0.0.0` (RFC 2543 hold, RFC 3264 §8.4) takes away our send half.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::parse::{MediaDescription, SessionDescription, parse};
use super::{Codec, Direction, OfferParams, SdpError, StreamParams};
use super::{write_audio_attrs, write_session_header};

/// Lowest and highest ptime we follow; anything else falls back to our own.
const PTIME_RANGE: std::ops::RangeInclusive<u32> = 10..=120;

/// Index of the first usable audio m-line; `Rejected` if audio exists only with port 0.
fn pick_audio(sd: &SessionDescription) -> Result<usize, SdpError> {
    let mut saw_audio = false;
    for (i, m) in sd.media.iter().enumerate() {
        if m.is_rtp_audio() {
            if m.port != 0 {
                return Ok(i);
            }
            saw_audio = true;
        }
    }
    Err(if saw_audio {
        SdpError::Rejected
    } else {
        SdpError::NoAudio
    })
}

/// Media-level `c=` overrides session-level (RFC 4566 §5.7).
fn connection_addr(sd: &SessionDescription, m: &MediaDescription) -> Result<IpAddr, SdpError> {
    m.connection
        .or(sd.connection)
        .map(|c| c.addr)
        .ok_or(SdpError::NoConnection)
}

/// Codec for a payload type on this m-line: rtpmap if present, else the static table.
fn resolve_codec(m: &MediaDescription, pt: u8) -> Option<Codec> {
    match m.rtpmap(pt) {
        Some(map) => Codec::from_rtpmap(&map.encoding, map.clock_rate),
        None => Codec::from_static_pt(pt),
    }
}

/// The first codec of `preferred` that the m-line lists, with its payload type there
/// (the first one, should a codec be listed twice).
fn preferred_common(m: &MediaDescription, preferred: &[Codec]) -> Option<(Codec, u8)> {
    preferred.iter().find_map(|want| {
        m.payload_types()
            .find(|pt| resolve_codec(m, *pt) == Some(*want))
            .map(|pt| (*want, pt))
    })
}

/// First listed payload type whose codec is in `allowed`.
fn first_common(m: &MediaDescription, allowed: &[Codec]) -> Option<(Codec, u8)> {
    m.payload_types().find_map(|pt| {
        resolve_codec(m, pt)
            .filter(|c| allowed.contains(c))
            .map(|c| (c, pt))
    })
}

/// The listed telephone-event payload type on the audio codec's clock (RFC 4733
/// §2.1: events use the clock of the audio they accompany, so the relay can map their
/// timestamps with the audio's).
fn telephone_event(m: &MediaDescription, clock_rate: u32) -> Option<u8> {
    m.payload_types().find(|pt| {
        m.rtpmap(*pt).is_some_and(|r| {
            r.encoding.eq_ignore_ascii_case("telephone-event") && r.clock_rate == clock_rate
        })
    })
}

/// Our direction given the far end's attribute and what we allow.
fn our_direction(
    sd: &SessionDescription,
    m: &MediaDescription,
    ip: IpAddr,
    local: Direction,
) -> Direction {
    let theirs = m.direction.or(sd.direction).unwrap_or_default();
    let ours = theirs.reversed().intersect(local);
    if ip.is_unspecified() {
        Direction::from_flags(false, ours.receives())
    } else {
        ours
    }
}

fn sane_ptime(p: Option<u32>) -> Option<u32> {
    p.filter(|p| PTIME_RANGE.contains(p))
}

/// Reads the far end's answer to our offer `offered` (RFC 3264 §6/§7).
///
/// Picks the first audio m-line with a non-zero port, its connection address, the first
/// codec in the answer that we offered (static PT 0/8/9 need no rtpmap), telephone-event
/// if we offered DTMF and the answer has it, the answer's ptime (else ours), and our
/// direction.
pub fn negotiate_answer(offered: &OfferParams, answer: &[u8]) -> Result<StreamParams, SdpError> {
    let sd = parse(answer)?;
    let idx = pick_audio(&sd)?;
    let m = sd.media.get(idx).ok_or(SdpError::NoAudio)?;
    let ip = connection_addr(&sd, m)?;
    let (codec, pt) = first_common(m, &offered.codecs).ok_or(SdpError::NoCommonCodec)?;
    Ok(StreamParams {
        remote: SocketAddr::new(ip, m.port),
        codec,
        pt,
        clock_rate: codec.clock_rate(),
        ptime_ms: sane_ptime(m.ptime).unwrap_or(offered.ptime_ms),
        dtmf_pt: offered.dtmf_pt.and(telephone_event(m, codec.clock_rate())),
        direction: our_direction(&sd, m, ip, offered.direction),
    })
}

/// Answers the far end's offer (inbound calls, RFC 3264 §6).
///
/// Accepts the first audio m-line with a non-zero port using the first codec of
/// `local.codecs` (our preference order, e.g. a trunk's `codecs`) that the offer lists,
/// under the offer's payload type, plus telephone-event if both sides have it on that
/// codec's clock. We answer with one codec, so RFC 3264 §6.1's advice to keep the
/// offerer's order has nothing to order; choosing ours lets the operator steer the call
/// to a codec that passes through unchanged. Every other m-line is rejected with port 0,
/// so the answer has as many m-lines as the offer. `local.port`, `local.addr`,
/// `local.ptime_ms` and the `o=` fields describe us.
pub fn answer_offer(offer: &[u8], local: &OfferParams) -> Result<(String, StreamParams), SdpError> {
    let sd = parse(offer)?;
    let idx = pick_audio(&sd)?;
    let m = sd.media.get(idx).ok_or(SdpError::NoAudio)?;
    let ip = connection_addr(&sd, m)?;
    let (codec, pt) = preferred_common(m, &local.codecs).ok_or(SdpError::NoCommonCodec)?;
    let dtmf_pt = local.dtmf_pt.and(telephone_event(m, codec.clock_rate()));
    let direction = our_direction(&sd, m, ip, local.direction);
    let params = StreamParams {
        remote: SocketAddr::new(ip, m.port),
        codec,
        pt,
        clock_rate: codec.clock_rate(),
        ptime_ms: sane_ptime(m.ptime).unwrap_or(local.ptime_ms),
        dtmf_pt,
        direction,
    };

    let mut out = String::with_capacity(320);
    write_session_header(
        &mut out,
        local.session_id,
        local.session_version,
        local.addr,
    );
    for (i, om) in sd.media.iter().enumerate() {
        if i == idx {
            let _ = write!(out, "m=audio {} {} {pt}", local.port, om.proto);
            if let Some(d) = dtmf_pt {
                let _ = write!(out, " {d}");
            }
            out.push_str("\r\n");
            let events: Vec<(u8, u32, &str)> = dtmf_pt
                .map(|d| (d, codec.clock_rate(), om.fmtp(d).unwrap_or("0-16")))
                .into_iter()
                .collect();
            write_audio_attrs(&mut out, &[(codec, pt)], &events, local.ptime_ms, direction);
        } else {
            // Rejected stream: port 0, formats echoed (RFC 3264 §6).
            let fmt = om.formats.first().map_or("0", String::as_str);
            let _ = write!(out, "m={} 0 {} {fmt}\r\n", om.media, om.proto);
        }
    }
    Ok((out, params))
}

#[cfg(test)]
mod tests {
    use super::super::build_offer;
    use super::*;
    use std::net::Ipv4Addr;

    fn offered() -> OfferParams {
        OfferParams {
            session_id: 7,
            session_version: 1,
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            port: 20000,
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            dtmf_pt: Some(101),
            ptime_ms: 20,
            direction: Direction::SendRecv,
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// What SIPp's built-in `uas` scenario puts in its 200 OK.
    const SIPP_UAS: &[u8] = b"v=0\r\n\
        o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        c=IN IP4 127.0.0.1\r\n\
        t=0 0\r\n\
        m=audio 6000 RTP/AVP 0\r\n\
        a=rtpmap:0 PCMU/8000\r\n";

    #[test]
    fn sipp_uas_answer() {
        let p = negotiate_answer(&offered(), SIPP_UAS).unwrap();
        assert_eq!(
            p,
            StreamParams {
                remote: sa("127.0.0.1:6000"),
                codec: Codec::Pcmu,
                pt: 0,
                clock_rate: 8000,
                ptime_ms: 20,
                dtmf_pt: None,
                direction: Direction::SendRecv,
            }
        );
    }

    #[test]
    fn session_level_connection_only_lf_endings() {
        let ans = b"v=0\no=- 1 1 IN IP4 198.51.100.7\ns=-\nc=IN IP4 198.51.100.7\nt=0 0\n\
                    m=audio 40000 RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\n\
                    a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\na=ptime:30\n";
        let p = negotiate_answer(&offered(), ans).unwrap();
        assert_eq!(p.remote, sa("198.51.100.7:40000"));
        assert_eq!(p.codec, Codec::Pcma);
        assert_eq!(p.pt, 8);
        assert_eq!(p.dtmf_pt, Some(101));
        assert_eq!(p.ptime_ms, 30);
    }

    #[test]
    fn media_level_connection_overrides_session() {
        let ans = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                    m=audio 40000 RTP/AVP 0\r\nc=IN IP4 203.0.113.5\r\n";
        let p = negotiate_answer(&offered(), ans).unwrap();
        assert_eq!(p.remote, sa("203.0.113.5:40000"));
    }

    #[test]
    fn static_pts_without_rtpmap_answer_order_wins() {
        let ans = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 30000 RTP/AVP 8 0\r\n";
        let p = negotiate_answer(&offered(), ans).unwrap();
        assert_eq!((p.codec, p.pt), (Codec::Pcma, 8));
        // A codec we did not offer is skipped even if listed first.
        let mut only_pcmu = offered();
        only_pcmu.codecs = vec![Codec::Pcmu];
        let p = negotiate_answer(&only_pcmu, ans).unwrap();
        assert_eq!((p.codec, p.pt), (Codec::Pcmu, 0));
    }

    #[test]
    fn dynamic_pt_via_rtpmap() {
        let ans = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                    m=audio 30000 RTP/AVP 18 96\r\na=rtpmap:18 G729/8000\r\na=rtpmap:96 pcmu/8000\r\n";
        let p = negotiate_answer(&offered(), ans).unwrap();
        assert_eq!((p.codec, p.pt), (Codec::Pcmu, 96));
    }

    #[test]
    fn rejected_stream_port_zero() {
        let ans = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n";
        assert_eq!(negotiate_answer(&offered(), ans), Err(SdpError::Rejected));
    }

    #[test]
    fn skips_rejected_audio_for_a_later_one() {
        let ans = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n\
                    m=audio 5000 RTP/AVP 8\r\n";
        assert_eq!(
            negotiate_answer(&offered(), ans).unwrap().remote,
            sa("198.51.100.7:5000")
        );
    }

    #[test]
    fn error_cases() {
        let o = offered();
        let no_audio = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=video 5000 RTP/AVP 31\r\n";
        assert_eq!(negotiate_answer(&o, no_audio), Err(SdpError::NoAudio));
        let srtp = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n";
        assert_eq!(negotiate_answer(&o, srtp), Err(SdpError::NoAudio));
        let g729 = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 18 101\r\n\
                     a=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(negotiate_answer(&o, g729), Err(SdpError::NoCommonCodec));
        let bad_c = b"v=0\r\nc=IN IP4 not-an-ip\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert_eq!(
            negotiate_answer(&o, bad_c),
            Err(SdpError::BadConnection { line: 2 })
        );
        let no_c = b"v=0\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert_eq!(negotiate_answer(&o, no_c), Err(SdpError::NoConnection));
        assert_eq!(
            negotiate_answer(&o, b"garbage"),
            Err(SdpError::Malformed { line: 1 })
        );
    }

    #[test]
    fn ipv6_answer() {
        let ans = b"v=0\r\nc=IN IP6 2001:db8::5\r\nt=0 0\r\nm=audio 7078 RTP/AVP 0\r\n";
        let p = negotiate_answer(&offered(), ans).unwrap();
        assert_eq!(p.remote, sa("[2001:db8::5]:7078"));
    }

    #[test]
    fn dtmf_only_if_offered() {
        let ans = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0 101\r\n\
                    a=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(
            negotiate_answer(&offered(), ans).unwrap().dtmf_pt,
            Some(101)
        );
        let mut o = offered();
        o.dtmf_pt = None;
        assert_eq!(negotiate_answer(&o, ans).unwrap().dtmf_pt, None);
    }

    #[test]
    fn direction_from_our_side() {
        let base = "v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        let dir = |attr: &str, ours: Direction| {
            let mut o = offered();
            o.direction = ours;
            negotiate_answer(&o, format!("{base}{attr}").as_bytes())
                .unwrap()
                .direction
        };
        assert_eq!(dir("", Direction::SendRecv), Direction::SendRecv);
        assert_eq!(
            dir("a=recvonly\r\n", Direction::SendRecv),
            Direction::SendOnly
        );
        assert_eq!(
            dir("a=sendonly\r\n", Direction::SendRecv),
            Direction::RecvOnly
        );
        assert_eq!(
            dir("a=inactive\r\n", Direction::SendRecv),
            Direction::Inactive
        );
        assert_eq!(
            dir("a=recvonly\r\n", Direction::SendOnly),
            Direction::SendOnly
        );
        assert_eq!(
            dir("a=sendrecv\r\n", Direction::RecvOnly),
            Direction::RecvOnly
        );
        let hold = b"v=0\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert_eq!(
            negotiate_answer(&offered(), hold).unwrap().direction,
            Direction::RecvOnly
        );
    }

    #[test]
    fn odd_ptime_falls_back_to_ours() {
        let ans =
            b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=ptime:0\r\n";
        assert_eq!(negotiate_answer(&offered(), ans).unwrap().ptime_ms, 20);
    }

    #[test]
    fn answer_to_our_own_offer_round_trips() {
        let mut remote = offered();
        remote.addr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
        remote.port = 30000;
        remote.codecs = vec![Codec::Pcma];
        let our_offer = build_offer(&offered());
        let (answer, their_params) = answer_offer(our_offer.as_bytes(), &remote).unwrap();
        assert_eq!(their_params.remote, sa("192.0.2.10:20000"));
        assert_eq!((their_params.codec, their_params.pt), (Codec::Pcma, 8));
        assert_eq!(their_params.dtmf_pt, Some(101));
        let ours = negotiate_answer(&offered(), answer.as_bytes()).unwrap();
        assert_eq!(ours.remote, sa("198.51.100.20:30000"));
        assert_eq!((ours.codec, ours.pt), (Codec::Pcma, 8));
        assert_eq!(ours.dtmf_pt, Some(101));
        assert_eq!(ours.direction, Direction::SendRecv);
    }

    #[test]
    fn answer_mirrors_direction_and_rejects_other_streams() {
        let offer =
            b"v=0\r\no=- 5 5 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                      m=video 6000 RTP/AVP 31\r\n\
                      m=audio 5000 RTP/AVP 97 8 0 101\r\na=rtpmap:97 opus/48000/2\r\n\
                      a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendonly\r\n";
        let mut local = offered();
        local.codecs = vec![Codec::Pcma, Codec::Pcmu];
        let (answer, params) = answer_offer(offer, &local).unwrap();
        // Our order: PCMA first.
        assert_eq!((params.codec, params.pt), (Codec::Pcma, 8));
        assert_eq!(params.direction, Direction::RecvOnly);
        assert_eq!(params.remote, sa("198.51.100.7:5000"));
        let expected = "v=0\r\n\
            o=- 7 1 IN IP4 192.0.2.10\r\n\
            s=-\r\n\
            c=IN IP4 192.0.2.10\r\n\
            t=0 0\r\n\
            m=video 0 RTP/AVP 31\r\n\
            m=audio 20000 RTP/AVP 8 101\r\n\
            a=rtpmap:8 PCMA/8000\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            a=fmtp:101 0-15\r\n\
            a=ptime:20\r\n\
            a=recvonly\r\n";
        assert_eq!(answer, expected);
    }

    #[test]
    fn caller_offering_only_g722_or_only_opus_is_answered_with_it() {
        let mut local = offered();
        local.codecs = Codec::ALL.to_vec();
        let g722 =
            b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                     m=audio 5000 RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\n\
                     a=rtpmap:101 telephone-event/8000\r\n";
        let (answer, p) = answer_offer(g722, &local).unwrap();
        assert_eq!(
            (p.codec, p.pt, p.clock_rate, p.dtmf_pt),
            (Codec::G722, 9, 8000, Some(101))
        );
        assert!(
            answer.contains("m=audio 20000 RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\n"),
            "{answer}"
        );
        // G.722 by its static payload type alone.
        let bare = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 9\r\n";
        assert_eq!(answer_offer(bare, &local).unwrap().1.codec, Codec::G722);

        // WebRTC-style: Opus on 96 with telephone-event on both clocks.
        let opus =
            b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                     m=audio 5000 RTP/AVP 96 100 101\r\na=rtpmap:96 opus/48000/2\r\n\
                     a=fmtp:96 minptime=10;useinbandfec=1\r\n\
                     a=rtpmap:100 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\n";
        let (answer, p) = answer_offer(opus, &local).unwrap();
        assert_eq!((p.codec, p.pt, p.clock_rate), (Codec::Opus, 96, 48000));
        assert_eq!(p.dtmf_pt, Some(100), "events on the audio's 48 kHz clock");
        let expected_media = "m=audio 20000 RTP/AVP 96 100\r\n\
            a=rtpmap:96 opus/48000/2\r\n\
            a=fmtp:96 minptime=10;useinbandfec=1\r\n\
            a=rtpmap:100 telephone-event/48000\r\n";
        assert!(answer.contains(expected_media), "{answer}");
        // And the answer reads back as Opus on 96 for the offerer.
        let mut them = offered();
        them.codecs = vec![Codec::Opus];
        them.dtmf_pt = Some(100);
        let back = negotiate_answer(&them, answer.as_bytes()).unwrap();
        assert_eq!(
            (back.codec, back.pt, back.dtmf_pt),
            (Codec::Opus, 96, Some(100))
        );

        // A G.711-only switch still refuses both.
        assert_eq!(answer_offer(opus, &offered()), Err(SdpError::NoCommonCodec));
    }

    #[test]
    fn answer_with_opus_to_our_offer() {
        let mut o = offered();
        o.codecs = vec![Codec::Pcmu, Codec::Opus];
        let ans = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 111 101\r\n\
                    a=rtpmap:111 OPUS/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n";
        let p = negotiate_answer(&o, ans).unwrap();
        assert_eq!((p.codec, p.pt, p.clock_rate), (Codec::Opus, 111, 48000));
        assert_eq!(p.dtmf_pt, None, "8 kHz events cannot ride a 48 kHz stream");
    }

    #[test]
    fn answer_errors() {
        let local = offered();
        let g729 = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 18\r\n";
        assert_eq!(answer_offer(g729, &local), Err(SdpError::NoCommonCodec));
        let rejected = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n";
        assert_eq!(answer_offer(rejected, &local), Err(SdpError::Rejected));
    }

    /// An offer listing every codec, with telephone-event on both clocks, as a WebRTC
    /// gateway would send it.
    const EVERYTHING: &[u8] = b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\n\
        c=IN IP4 198.51.100.7\r\nt=0 0\r\n\
        m=audio 5000 RTP/AVP 96 9 8 0 100 101\r\na=rtpmap:96 opus/48000/2\r\n\
        a=fmtp:96 minptime=10;useinbandfec=1\r\na=rtpmap:9 G722/8000\r\n\
        a=rtpmap:100 telephone-event/48000\r\na=fmtp:100 0-15\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";

    #[test]
    fn answer_follows_our_preference_order_with_events_on_its_clock() {
        let cases: [(&[Codec], Codec, u8, u8, &str); 4] = [
            (
                &[Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus],
                Codec::Pcmu,
                0,
                101,
                "0-16",
            ),
            (&[Codec::Pcma, Codec::Pcmu], Codec::Pcma, 8, 101, "0-16"),
            (&[Codec::G722, Codec::Pcmu], Codec::G722, 9, 101, "0-16"),
            (&[Codec::Opus, Codec::Pcmu], Codec::Opus, 96, 100, "0-15"),
        ];
        for (prefs, want, pt, te, events) in cases {
            let mut local = offered();
            local.codecs = prefs.to_vec();
            let (answer, p) = answer_offer(EVERYTHING, &local).unwrap();
            assert_eq!((p.codec, p.pt, p.dtmf_pt), (want, pt, Some(te)), "{answer}");
            assert_eq!(p.clock_rate, want.clock_rate());
            let sd = parse(answer.as_bytes()).unwrap();
            let m = &sd.media[0];
            assert_eq!(m.payload_types().collect::<Vec<_>>(), [pt, te], "{answer}");
            let map = m.rtpmap(pt).unwrap();
            assert_eq!(
                Codec::from_rtpmap(&map.encoding, map.clock_rate),
                Some(want)
            );
            assert_eq!(m.fmtp(pt), want.fmtp(), "{answer}");
            let ev = m.rtpmap(te).unwrap();
            assert_eq!(
                (ev.encoding.as_str(), ev.clock_rate),
                ("telephone-event", want.clock_rate()),
                "{answer}"
            );
            // The events the offerer listed for that payload type are echoed.
            assert_eq!(m.fmtp(te), Some(events), "{answer}");
        }
        // A codec we do not allow is never chosen, however early the offer lists it.
        let mut local = offered();
        local.codecs = vec![Codec::G722];
        let only_pcmu = b"v=0\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";
        assert_eq!(
            answer_offer(only_pcmu, &local),
            Err(SdpError::NoCommonCodec)
        );
    }

    #[test]
    fn our_full_offer_answered_in_each_codec_reads_back() {
        let mut ours = offered();
        ours.codecs = Codec::ALL.to_vec();
        let offer = build_offer(&ours);
        for codec in Codec::ALL {
            let mut far = offered();
            far.addr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
            far.port = 30000;
            far.codecs = vec![codec];
            let (answer, theirs) = answer_offer(offer.as_bytes(), &far).unwrap();
            assert_eq!(theirs.codec, codec, "{answer}");
            assert!(
                theirs.dtmf_pt.is_some(),
                "{codec:?}: events on its clock offered"
            );
            let p = negotiate_answer(&ours, answer.as_bytes()).unwrap();
            assert_eq!((p.codec, p.pt), (codec, theirs.pt), "{answer}");
            assert_eq!(p.clock_rate, codec.clock_rate());
            assert_eq!(p.dtmf_pt, theirs.dtmf_pt, "{answer}");
            let expected_te = if codec == Codec::Opus { 110 } else { 101 };
            assert_eq!(p.dtmf_pt, Some(expected_te), "{answer}");
        }
    }
}
