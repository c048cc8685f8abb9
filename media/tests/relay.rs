//! The RTP relay core: latching behind NAT, anti-bleed, SSRC/seq/timestamp continuity
//! across input changes, payload-type mapping, re-latching after a re-INVITE,
//! transcode routing and malformed input. All sans-IO: time is a synthetic `Instant`.
// Helpers outside #[test] fns unwrap too; a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::codec::AudioCodec as Codec;
use media::relay::{DropReason, Relay, RelayConfig, Side, SideParams, Verdict};
use media::rtp::{RtpHeader, RtpView, write_packet};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const SDP_A: &str = "10.0.0.1:4000";
const SDP_B: &str = "198.51.100.2:5000";
const NAT_A: &str = "203.0.113.5:40000";
const THIRD: &str = "192.0.2.66:6666";

fn side(remote: Option<&str>, codec: Codec, dtmf_pt: Option<u8>) -> SideParams {
    SideParams {
        remote: remote.map(addr),
        codec,
        pt: match codec {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
            Codec::Opus { .. } => 111,
        },
        clock_rate: codec.rtp_clock_rate(),
        dtmf_pt,
    }
}

/// A relay whose side A signals from behind a NAT (`NAT_A`'s address, as its SIP came
/// from there): that address may latch besides each side's SDP address.
fn relay_with(a: SideParams, b: SideParams, config: RelayConfig) -> Relay {
    let mut r = Relay::new(a, b, config, &mut StdRng::seed_from_u64(7));
    r.set_signalling_ip(Side::A, Some(addr(NAT_A).ip()));
    r
}

/// Packet-by-packet transcoding ([`Verdict::Transcode`]); the jitter-buffered
/// playout is tested in relay_playout.rs.
const UNBUFFERED: RelayConfig = RelayConfig {
    relatch_after_silence: Duration::ZERO,
    stale_ssrc_window: Duration::from_millis(500),
    transcode_jitter: None,
    pass_ssrc: false,
};

fn relay() -> Relay {
    relay_with(
        side(Some(SDP_A), Codec::Pcmu, Some(101)),
        side(Some(SDP_B), Codec::Pcmu, Some(96)),
        RelayConfig::default(),
    )
}

/// An origin instant; only differences matter.
fn t0() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Pkt {
    buf: [u8; 256],
    len: usize,
}

fn pkt(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool) -> Pkt {
    let mut buf = [0u8; 256];
    let h = RtpHeader {
        marker,
        pt,
        seq,
        timestamp: ts,
        ssrc,
    };
    let payload: Vec<u8> = (0..160).map(|i| i as u8).collect();
    let len = write_packet(&mut buf, &h, &payload).unwrap();
    Pkt { buf, len }
}

/// Sends a packet through the relay; returns the verdict and the (possibly rewritten)
/// packet bytes.
fn send(r: &mut Relay, now: Instant, from: Side, src: &str, mut p: Pkt) -> (Verdict, Pkt) {
    let v = r.handle_packet(now, from, addr(src), &mut p.buf, p.len);
    (v, p)
}

/// Forwards and returns (dst, pt, seq, ts, ssrc, marker) of the rewritten packet.
fn forward(
    r: &mut Relay,
    now: Instant,
    from: Side,
    src: &str,
    p: Pkt,
) -> (SocketAddr, u8, u16, u32, u32, bool) {
    let (v, p) = send(r, now, from, src, p);
    let Verdict::Forward { dst, len } = v else {
        panic!("expected Forward, got {v:?}");
    };
    assert_eq!(len, p.len);
    let view = RtpView::parse(&p.buf[..len]).unwrap();
    (
        dst,
        view.pt(),
        view.seq(),
        view.timestamp(),
        view.ssrc(),
        view.marker(),
    )
}

#[test]
fn latches_to_nated_source_instead_of_sdp_address() {
    let mut r = relay();
    let now = t0();
    // Nothing received yet: media for each side goes to its SDP address.
    assert_eq!(r.destination(Side::A), Some(addr(SDP_A)));
    assert_eq!(r.latched(Side::A), None);
    // B talks first (from its SDP address): goes to A's SDP address.
    let (dst, ..) = forward(&mut r, now, Side::B, SDP_B, pkt(0, 1, 0, 0xb, false));
    assert_eq!(dst, addr(SDP_A));
    // A's packets come from its NAT's public address, not the private one in SDP.
    let (dst, ..) = forward(&mut r, now, Side::A, NAT_A, pkt(0, 1, 0, 0xa, false));
    assert_eq!(dst, addr(SDP_B));
    assert_eq!(r.latched(Side::A), Some(addr(NAT_A)));
    assert_eq!(r.latched(Side::B), Some(addr(SDP_B)));
    // From now on B's media goes to the NAT address.
    let (dst, ..) = forward(
        &mut r,
        now + ms(20),
        Side::B,
        SDP_B,
        pkt(0, 2, 160, 0xb, false),
    );
    assert_eq!(dst, addr(NAT_A));
    assert_eq!(r.counters(Side::A).latches, 1);
    assert_eq!(r.counters(Side::B).forwarded_packets, 2);
}

#[test]
fn bleed_from_third_address_is_dropped_and_call_continues() {
    let mut r = relay();
    let now = t0();
    let (_, _, s0, _, ssrc, _) = forward(&mut r, now, Side::A, NAT_A, pkt(0, 10, 1600, 1, false));
    for i in 0..5u16 {
        let (v, _) = send(
            &mut r,
            now,
            Side::A,
            THIRD,
            pkt(0, 500 + i, 0, 0x666, false),
        );
        assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    }
    // Even a bleed packet with the latched SSRC is refused without a relatch policy.
    let (v, _) = send(
        &mut r,
        now + ms(10_000),
        Side::A,
        THIRD,
        pkt(0, 11, 1760, 1, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    let (dst, _, s1, _, ssrc1, _) = forward(
        &mut r,
        now + ms(20),
        Side::A,
        NAT_A,
        pkt(0, 11, 1760, 1, false),
    );
    assert_eq!(dst, addr(SDP_B));
    assert_eq!(s1, s0.wrapping_add(1));
    assert_eq!(ssrc1, ssrc);
    let c = r.counters(Side::A);
    assert_eq!(c.dropped(DropReason::WrongSource), 6);
    assert_eq!(c.dropped_total(), 6);
    assert_eq!(c.forwarded_packets, 2);
    assert_eq!(c.received_packets, 8);
    assert_eq!(r.latched(Side::A), Some(addr(NAT_A)));
}

#[test]
fn ssrc_change_keeps_output_stream_continuous() {
    let mut r = relay();
    let start = t0();
    let mut last = (0u16, 0u32, 0u32);
    for i in 0..10u16 {
        let now = start + ms(20 * u64::from(i));
        let p = pkt(
            0,
            65530u16.wrapping_add(i),
            1_000 + 160 * u32::from(i),
            0x1111,
            i == 0,
        );
        let (_, _, seq, ts, ssrc, marker) = forward(&mut r, now, Side::A, NAT_A, p);
        assert_eq!(marker, i == 0);
        if i > 0 {
            assert_eq!(seq, last.0.wrapping_add(1));
            assert_eq!(ts, last.1.wrapping_add(160));
            assert_eq!(ssrc, last.2);
        }
        last = (seq, ts, ssrc);
    }
    // The output SSRC is the relay's own, not the input's.
    assert_eq!(last.2, r.output_ssrc(Side::B));
    assert_ne!(last.2, 0x1111);

    // A media server switch: new SSRC, unrelated seq and timestamp, 60 ms later.
    let switch = start + ms(20 * 9 + 60);
    let (_, _, seq, ts, ssrc, marker) = forward(
        &mut r,
        switch,
        Side::A,
        NAT_A,
        pkt(0, 7, 0xdead_0000, 0x2222, false),
    );
    assert_eq!(ssrc, last.2, "far side keeps seeing one SSRC");
    assert_eq!(seq, last.0.wrapping_add(1), "sequence continues");
    assert_eq!(
        ts,
        last.1.wrapping_add(480),
        "timestamp advances by the 60 ms gap"
    );
    assert!(marker, "marker flags the discontinuity");
    assert_eq!(r.counters(Side::A).ssrc_changes, 1);
    let after = (seq, ts);

    // The new stream goes on normally, without marker.
    let (_, _, seq, ts, ssrc, marker) = forward(
        &mut r,
        switch + ms(20),
        Side::A,
        NAT_A,
        pkt(0, 8, 0xdead_0000 + 160, 0x2222, false),
    );
    assert_eq!(
        (seq, ts, ssrc, marker),
        (after.0 + 1, after.1 + 160, last.2, false)
    );

    // A late packet of the old SSRC does not flip the stream back.
    let (v, _) = send(
        &mut r,
        switch + ms(30),
        Side::A,
        NAT_A,
        pkt(0, 65535, 2_000, 0x1111, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::StaleSsrc));
    let (_, _, seq, ..) = forward(
        &mut r,
        switch + ms(40),
        Side::A,
        NAT_A,
        pkt(0, 9, 0xdead_0000 + 320, 0x2222, false),
    );
    assert_eq!(seq, after.0 + 2);

    // Reordering within a stream is preserved, not renumbered.
    let (_, _, s11, ..) = forward(
        &mut r,
        switch + ms(80),
        Side::A,
        NAT_A,
        pkt(0, 11, 0xdead_0000 + 640, 0x2222, false),
    );
    let (_, _, s10, ..) = forward(
        &mut r,
        switch + ms(81),
        Side::A,
        NAT_A,
        pkt(0, 10, 0xdead_0000 + 480, 0x2222, false),
    );
    assert_eq!(s10.wrapping_add(1), s11);
}

#[test]
fn payload_types_are_mapped_between_sides() {
    let mut r = relay();
    let now = t0();
    // telephone-event is 101 on A and 96 on B.
    let (_, pt, ..) = forward(&mut r, now, Side::A, NAT_A, pkt(101, 1, 0, 1, true));
    assert_eq!(pt, 96);
    let (_, pt, ..) = forward(&mut r, now, Side::B, SDP_B, pkt(96, 1, 0, 2, true));
    assert_eq!(pt, 101);
    // Audio keeps its (equal) payload type, and the payload is untouched.
    let (v, p) = send(&mut r, now, Side::A, NAT_A, pkt(0, 2, 160, 1, false));
    assert!(matches!(v, Verdict::Forward { .. }));
    let view = RtpView::parse(&p.buf[..p.len]).unwrap();
    assert_eq!(view.pt(), 0);
    assert!(
        view.payload()
            .iter()
            .enumerate()
            .all(|(i, b)| *b == i as u8)
    );
    // A payload type A never negotiated is refused (and does not reach B).
    let (v, _) = send(&mut r, now, Side::A, NAT_A, pkt(96, 3, 320, 1, false));
    assert_eq!(v, Verdict::Drop(DropReason::UnexpectedPayloadType));
}

#[test]
fn same_codec_different_pt_numbers_are_remapped() {
    // A dynamic-PT-style mismatch for the audio codec itself.
    let mut a = side(Some(SDP_A), Codec::Pcma, None);
    a.pt = 8;
    let mut b = side(Some(SDP_B), Codec::Pcma, None);
    b.pt = 98;
    let mut r = relay_with(a, b, RelayConfig::default());
    let now = t0();
    let (_, pt, ..) = forward(&mut r, now, Side::A, SDP_A, pkt(8, 1, 0, 1, false));
    assert_eq!(pt, 98);
    let (_, pt, ..) = forward(&mut r, now, Side::B, SDP_B, pkt(98, 1, 0, 2, false));
    assert_eq!(pt, 8);
    // DTMF towards a side without telephone-event cannot be forwarded.
    let mut a = side(Some(SDP_A), Codec::Pcmu, Some(101));
    a.pt = 0;
    let mut r = relay_with(
        a,
        side(Some(SDP_B), Codec::Pcmu, None),
        RelayConfig::default(),
    );
    let (v, _) = send(&mut r, now, Side::A, SDP_A, pkt(101, 1, 0, 1, false));
    assert_eq!(v, Verdict::Drop(DropReason::NoPeerPayloadType));
}

#[test]
fn relatches_after_update_remote() {
    let mut r = relay();
    let now = t0();
    forward(&mut r, now, Side::A, NAT_A, pkt(0, 1, 0, 1, false));
    // Same address again (session refresh): nothing changes.
    r.update_remote(Side::A, addr(SDP_A));
    assert_eq!(r.destination(Side::A), Some(addr(NAT_A)));

    // Re-INVITE moves A to a media server.
    let moved = "198.51.100.77:7000";
    r.update_remote(Side::A, addr(moved));
    assert_eq!(r.destination(Side::A), Some(addr(moved)));
    // In-flight media from the old source is still relayed and does not re-latch.
    forward(
        &mut r,
        now + ms(20),
        Side::A,
        NAT_A,
        pkt(0, 2, 160, 1, false),
    );
    assert_eq!(r.destination(Side::A), Some(addr(moved)));
    // A stranger cannot use the open window.
    let (v, _) = send(
        &mut r,
        now + ms(30),
        Side::A,
        THIRD,
        pkt(0, 900, 77, 0x5555, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    // The new source (from the new SDP address, its port rewritten by a NAT) latches.
    let newsrc = "198.51.100.77:41000";
    let (_, _, seq, ts, _, marker) = forward(
        &mut r,
        now + ms(40),
        Side::A,
        newsrc,
        pkt(0, 900, 77, 0x5555, false),
    );
    assert!(marker);
    assert_eq!(r.latched(Side::A), Some(addr(newsrc)));
    assert_eq!(r.destination(Side::A), Some(addr(newsrc)));
    assert_eq!(r.counters(Side::A).latches, 2);
    let _ = (seq, ts);
    // Now the old source is bleed.
    let (v, _) = send(
        &mut r,
        now + ms(60),
        Side::A,
        NAT_A,
        pkt(0, 3, 320, 1, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    // Media from B follows the new latch.
    let (dst, ..) = forward(&mut r, now + ms(60), Side::B, SDP_B, pkt(0, 1, 0, 9, false));
    assert_eq!(dst, addr(newsrc));
}

#[test]
fn relatch_after_silence_needs_the_same_ssrc() {
    let config = RelayConfig {
        relatch_after_silence: ms(2_000),
        ..RelayConfig::default()
    };
    let mut r = relay_with(
        side(Some(SDP_A), Codec::Pcmu, None),
        side(Some(SDP_B), Codec::Pcmu, None),
        config,
    );
    let now = t0();
    forward(&mut r, now, Side::A, NAT_A, pkt(0, 1, 0, 0xabc, false));
    let roamed = "203.0.113.5:40999"; // NAT rebinding: new port, same stream
    // Not silent long enough.
    let (v, _) = send(
        &mut r,
        now + ms(1_000),
        Side::A,
        roamed,
        pkt(0, 2, 160, 0xabc, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    // Silent long enough, but another SSRC: still bleed.
    let (v, _) = send(
        &mut r,
        now + ms(3_000),
        Side::A,
        roamed,
        pkt(0, 2, 160, 0xdef, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    // Silent long enough and the known SSRC: take over.
    let (_, _, seq, ..) = forward(
        &mut r,
        now + ms(3_000),
        Side::A,
        roamed,
        pkt(0, 3, 320, 0xabc, false),
    );
    assert_eq!(r.latched(Side::A), Some(addr(roamed)));
    let _ = seq;
    let (v, _) = send(
        &mut r,
        now + ms(3_020),
        Side::A,
        NAT_A,
        pkt(0, 4, 480, 0xabc, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
}

#[test]
fn malformed_rtcp_and_unknown_packets_are_dropped_and_never_latch() {
    let mut r = relay();
    let now = t0();
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vec![0x80, 0, 0], DropReason::Malformed),
        (vec![0x40; 20], DropReason::Malformed), // version 1
        (
            vec![0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            DropReason::Malformed,
        ), // CSRCs overrun
        // RTCP receiver report (PT 201) on the RTP port.
        (vec![0x80, 201, 0, 1, 0, 0, 0, 1], DropReason::Rtcp),
        (
            vec![
                0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                0, 0,
            ],
            DropReason::Rtcp,
        ),
    ];
    for (bytes, reason) in &cases {
        let mut buf = [0u8; 64];
        buf[..bytes.len()].copy_from_slice(bytes);
        let v = r.handle_packet(now, Side::A, addr(THIRD), &mut buf, bytes.len());
        assert_eq!(v, Verdict::Drop(*reason), "{bytes:?}");
    }
    // `len` beyond the buffer.
    let mut small = [0x80u8; 16];
    let v = r.handle_packet(now, Side::A, addr(THIRD), &mut small, 17);
    assert_eq!(v, Verdict::Drop(DropReason::Malformed));
    // Wrong payload type, even from the signalled address.
    let (v, _) = send(&mut r, now, Side::A, NAT_A, pkt(18, 1, 0, 1, false));
    assert_eq!(v, Verdict::Drop(DropReason::UnexpectedPayloadType));
    // Valid RTP from an address neither SDP nor signalling named: no hijack.
    let (v, _) = send(&mut r, now, Side::A, THIRD, pkt(0, 1, 0, 1, false));
    assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    // None of that latched: the real source still can.
    assert_eq!(r.latched(Side::A), None);
    let (dst, ..) = forward(&mut r, now, Side::A, NAT_A, pkt(0, 1, 0, 1, false));
    assert_eq!(dst, addr(SDP_B));
    assert_eq!(r.latched(Side::A), Some(addr(NAT_A)));
    let c = r.counters(Side::A);
    assert_eq!(c.dropped(DropReason::Malformed), 4);
    assert_eq!(c.dropped(DropReason::Rtcp), 2);
    assert_eq!(c.dropped(DropReason::UnexpectedPayloadType), 1);
    assert_eq!(c.dropped(DropReason::WrongSource), 1);
    assert_eq!(c.received_packets, 9);
    assert_eq!(c.forwarded_packets, 1);
    assert_eq!(c.forwarded_bytes, 172);
}

#[test]
fn no_destination_until_the_other_side_is_known() {
    let mut r = relay_with(
        side(Some(SDP_A), Codec::Pcmu, None),
        side(None, Codec::Pcmu, None),
        RelayConfig::default(),
    );
    let now = t0();
    let (v, _) = send(&mut r, now, Side::A, SDP_A, pkt(0, 1, 0, 1, false));
    assert_eq!(v, Verdict::Drop(DropReason::NoDestination));
    // The answer arrives.
    r.update_remote(Side::B, addr(SDP_B));
    let (dst, ..) = forward(
        &mut r,
        now + ms(20),
        Side::A,
        SDP_A,
        pkt(0, 2, 160, 1, false),
    );
    assert_eq!(dst, addr(SDP_B));
}

#[test]
fn different_codecs_route_to_the_transcoder() {
    let mut r = relay_with(
        side(Some(SDP_A), Codec::Pcmu, Some(101)),
        side(Some(SDP_B), Codec::Pcma, Some(101)),
        UNBUFFERED,
    );
    let now = t0();
    let p = pkt(0, 1, 0, 1, true);
    let original = p.buf;
    let (v, p) = send(&mut r, now, Side::A, SDP_A, p);
    let Verdict::Transcode {
        dst,
        from,
        to,
        header,
        payload,
    } = v
    else {
        panic!("expected Transcode, got {v:?}");
    };
    assert_eq!((dst, from, to), (addr(SDP_B), Codec::Pcmu, Codec::Pcma));
    assert_eq!(header.pt, 8);
    assert_eq!(header.ssrc, r.output_ssrc(Side::B));
    assert!(header.marker);
    assert_eq!(payload, 12..172);
    assert_eq!(p.buf, original, "buffer untouched for the transcoder");
    let (v, _) = send(
        &mut r,
        now + ms(20),
        Side::A,
        SDP_A,
        pkt(0, 2, 160, 1, false),
    );
    let Verdict::Transcode { header: h2, .. } = v else {
        panic!("expected Transcode");
    };
    assert_eq!(
        (h2.seq, h2.timestamp),
        (header.seq + 1, header.timestamp + 160)
    );
    assert_eq!(r.counters(Side::A).transcoded_packets, 2);
    // DTMF events need no transcoding.
    let (_, pt, ..) = forward(
        &mut r,
        now + ms(40),
        Side::A,
        SDP_A,
        pkt(101, 3, 320, 1, false),
    );
    assert_eq!(pt, 101);
}

#[test]
fn csrc_and_extension_survive_pass_through() {
    let mut r = relay();
    let now = t0();
    let mut buf = [0u8; 64];
    let raw = [
        0x91, 0x00, 0, 5, 0, 0, 0, 9, 0, 0, 0, 1, // V=2 X CC=1 PT0 seq 5 ts 9 ssrc 1
        0, 0, 0, 42, // CSRC
        0xbe, 0xde, 0, 1, 1, 2, 3, 4, // one-word extension
        7, 7, 7, // payload
    ];
    buf[..raw.len()].copy_from_slice(&raw);
    let v = r.handle_packet(now, Side::A, addr(NAT_A), &mut buf, raw.len());
    assert_eq!(
        v,
        Verdict::Forward {
            dst: addr(SDP_B),
            len: raw.len()
        }
    );
    let view = RtpView::parse(&buf[..raw.len()]).unwrap();
    assert_eq!(view.csrcs().collect::<Vec<_>>(), vec![42]);
    assert_eq!(view.extension(), Some((0xbede, &[1u8, 2, 3, 4][..])));
    assert_eq!(view.payload(), &[7, 7, 7]);
    assert_eq!(view.ssrc(), r.output_ssrc(Side::B));
}

proptest! {
    /// In-order input with arbitrary SSRC switches and gaps: the output is one SSRC with
    /// strictly consecutive sequence numbers and never-decreasing timestamps (in wrap
    /// arithmetic), and nothing panics.
    #[test]
    fn output_is_continuous_across_random_switches(
        steps in proptest::collection::vec((any::<bool>(), 1u64..200, any::<u16>(), any::<u32>()), 1..60)
    ) {
        let mut r = relay();
        let start = t0();
        let mut now = start;
        let mut ssrc = 1u32;
        let mut seq = 0u16;
        let mut ts = 0u32;
        let mut prev: Option<(u16, u32)> = None;
        for (switch, gap_ms, new_seq, new_ts) in steps {
            now += ms(gap_ms);
            if switch {
                // A fresh SSRC (never a recent one, which would be a stale packet).
                ssrc = ssrc.wrapping_add(1);
                seq = new_seq;
                ts = new_ts;
            } else {
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(8 * gap_ms as u32);
            }
            let (_, _, oseq, ots, ossrc, _) = forward(&mut r, now, Side::A, NAT_A, pkt(0, seq, ts, ssrc, false));
            prop_assert_eq!(ossrc, r.output_ssrc(Side::B));
            if let Some((ps, pt)) = prev {
                prop_assert_eq!(oseq, ps.wrapping_add(1));
                prop_assert_eq!(ots.wrapping_sub(pt), 8 * gap_ms as u32);
            }
            prev = Some((oseq, ots));
        }
    }
}

#[test]
fn timestamps_scale_between_clock_rates() {
    // 8 kHz PCMU on A, 48 kHz Opus on B: 160 ticks in are 960 ticks out.
    let mut r = relay_with(
        side(Some(SDP_A), Codec::Pcmu, None),
        side(Some(SDP_B), Codec::Opus { channels: 2 }, None),
        UNBUFFERED,
    );
    let now = t0();
    let mut prev: Option<(u16, u32)> = None;
    for i in 0..5u32 {
        let (v, _) = send(
            &mut r,
            now + ms(20 * u64::from(i)),
            Side::A,
            SDP_A,
            pkt(
                0,
                i as u16,
                (u32::MAX - 200).wrapping_add(160 * i),
                1,
                false,
            ),
        );
        let Verdict::Transcode {
            header, from, to, ..
        } = v
        else {
            panic!("expected Transcode, got {v:?}");
        };
        assert_eq!(
            (from, to, header.pt),
            (Codec::Pcmu, Codec::Opus { channels: 2 }, 111)
        );
        if let Some((s, t)) = prev {
            assert_eq!(header.seq, s.wrapping_add(1));
            assert_eq!(
                header.timestamp.wrapping_sub(t),
                960,
                "across the input ts wrap too"
            );
        }
        prev = Some((header.seq, header.timestamp));
    }
    // And an input SSRC switch after 100 ms advances by 100 ms of the 48 kHz clock.
    let (v, _) = send(
        &mut r,
        now + ms(180),
        Side::A,
        SDP_A,
        pkt(0, 1000, 5, 2, false),
    );
    let Verdict::Transcode { header, .. } = v else {
        panic!("expected Transcode");
    };
    let (s, t) = prev.unwrap();
    assert_eq!(header.seq, s.wrapping_add(1));
    assert_eq!(header.timestamp.wrapping_sub(t), 4800);
    assert!(header.marker);
}

#[test]
fn side_params_from_negotiated_stream() {
    use media::sdp::{Codec as SdpCodec, Direction, StreamParams};
    let sp = StreamParams {
        remote: addr(SDP_B),
        codec: SdpCodec::Pcma,
        pt: 8,
        clock_rate: 8000,
        ptime_ms: 20,
        dtmf_pt: Some(101),
        direction: Direction::SendRecv,
    };
    let p = SideParams::try_from(&sp).unwrap();
    assert_eq!(p.remote, Some(addr(SDP_B)));
    assert_eq!(
        (p.codec, p.pt, p.clock_rate, p.dtmf_pt),
        (Codec::Pcma, 8, 8000, Some(101))
    );
}

/// One RFC 4733 packet: event `code`, end bit, duration, at event start `ts`.
fn event(pt: u8, seq: u16, ts: u32, code: u8, end: bool, duration: u16) -> Pkt {
    let mut buf = [0u8; 256];
    let h = RtpHeader {
        marker: false,
        pt,
        seq,
        timestamp: ts,
        ssrc: 1,
    };
    let d = duration.to_be_bytes();
    let payload = [code, (u8::from(end) << 7) | 10, d[0], d[1]];
    let len = write_packet(&mut buf, &h, &payload).unwrap();
    Pkt { buf, len }
}

#[test]
fn dtmf_is_decoded_once_and_durations_follow_the_clock() {
    // A: PCMU with telephone-event/8000 on 101; B: Opus with telephone-event/48000 on 110.
    let mut r = relay_with(
        side(Some(SDP_A), Codec::Pcmu, Some(101)),
        side(Some(SDP_B), Codec::Opus { channels: 2 }, Some(110)),
        UNBUFFERED,
    );
    let now = t0();
    assert!(matches!(
        send(&mut r, now, Side::A, SDP_A, pkt(0, 1, 0, 1, false)).0,
        Verdict::Transcode { .. }
    ));
    let mut reported = Vec::new();
    for (i, (end, dur)) in [(false, 0), (false, 400), (true, 800), (true, 800)]
        .into_iter()
        .enumerate()
    {
        let p = event(101, 2 + i as u16, 160, 9, end, dur);
        let (v, p) = send(&mut r, now + ms(20 + 50 * i as u64), Side::A, SDP_A, p);
        assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
        let view = RtpView::parse(&p.buf[..p.len]).unwrap();
        assert_eq!(view.pt(), 110);
        let out = view.payload();
        assert_eq!(
            u16::from_be_bytes([out[2], out[3]]),
            dur * 6,
            "8 kHz duration in 48 kHz units"
        );
        assert_eq!(out[..2], [9, (u8::from(end) << 7) | 10]);
        reported.extend(r.take_dtmf(Side::A));
    }
    assert_eq!(
        reported.len(),
        1,
        "the repeated end packet is not a new digit"
    );
    assert_eq!((reported[0].digit, reported[0].duration_ts), ('9', 800));
    assert_eq!(r.take_dtmf(Side::B), None);
    // Events count as received packets but not for jitter.
    let st = r.stats(Side::A);
    assert_eq!((st.packets, st.lost, st.jitter), (5, 0, 0.0));
    assert_eq!(r.last_received(Side::A), Some(now + ms(170)));
}

#[test]
fn dtmf_without_end_packets_is_reported_after_the_timeout() {
    let mut r = relay();
    let now = t0();
    send(&mut r, now, Side::B, SDP_B, event(96, 1, 800, 4, false, 0));
    send(
        &mut r,
        now + ms(50),
        Side::B,
        SDP_B,
        event(96, 2, 800, 4, false, 400),
    );
    // Audio resumes, but too soon to give up on the end packets.
    send(
        &mut r,
        now + ms(100),
        Side::B,
        SDP_B,
        pkt(0, 3, 1600, 1, false),
    );
    assert_eq!(r.take_dtmf(Side::B), None);
    send(
        &mut r,
        now + ms(400),
        Side::B,
        SDP_B,
        pkt(0, 4, 1760, 1, false),
    );
    let d = r.take_dtmf(Side::B).unwrap();
    assert_eq!((d.digit, d.duration_ts), ('4', 400));
    send(
        &mut r,
        now + ms(420),
        Side::B,
        SDP_B,
        pkt(0, 5, 1920, 1, false),
    );
    assert_eq!(r.take_dtmf(Side::B), None, "reported once");
}

#[test]
fn update_side_switches_dtmf_payload_type_and_keeps_stats() {
    let mut r = relay();
    let now = t0();
    for i in 0..3u16 {
        send(
            &mut r,
            now + ms(20 * u64::from(i)),
            Side::B,
            SDP_B,
            pkt(0, i, 160 * u32::from(i), 1, false),
        );
    }
    // A re-INVITE on B: telephone-event moves from 96 to 100, the codec to PCMA.
    r.update_side(Side::B, side(None, Codec::Pcma, Some(100)));
    assert_eq!(r.destination(Side::B), Some(addr(SDP_B)), "address kept");
    let (v, _) = send(
        &mut r,
        now + ms(60),
        Side::B,
        SDP_B,
        event(96, 3, 480, 1, true, 160),
    );
    assert_eq!(v, Verdict::Drop(DropReason::UnexpectedPayloadType));
    let (v, p) = send(
        &mut r,
        now + ms(80),
        Side::B,
        SDP_B,
        event(100, 4, 640, 2, true, 160),
    );
    assert!(matches!(v, Verdict::Forward { .. }));
    assert_eq!(RtpView::parse(&p.buf[..p.len]).unwrap().pt(), 101);
    assert_eq!(r.take_dtmf(Side::B).map(|d| d.digit), Some('2'));
    // Seq 3 never arrived (dropped as junk before it counted).
    let st = r.stats(Side::B);
    assert_eq!((st.packets, st.lost), (4, 1));
}

/// With `pass_ssrc`, a pass-through call leaves headers as they are, which is what lets
/// the kernel take it over; anything that makes the relay rewrite them rules that out.
#[test]
fn passthrough_sources_only_while_relaying_is_the_identity() {
    let same = |dtmf_b| {
        relay_with(
            side(Some(SDP_A), Codec::Pcmu, Some(101)),
            side(Some(SDP_B), Codec::Pcmu, dtmf_b),
            RelayConfig {
                pass_ssrc: true,
                ..RelayConfig::default()
            },
        )
    };
    let start = t0();
    let mut r = same(Some(101));
    let (_, _, seq, ts, ssrc, _) =
        forward(&mut r, start, Side::A, NAT_A, pkt(0, 9, 900, 0x1111, false));
    assert_eq!((seq, ts, ssrc), (9, 900, 0x1111), "headers pass through");
    assert_eq!(r.passthrough_sources(), None, "side B has not latched yet");
    forward(
        &mut r,
        start,
        Side::B,
        SDP_B,
        pkt(0, 70, 7000, 0x2222, false),
    );
    assert_eq!(r.passthrough_sources(), Some((addr(NAT_A), addr(SDP_B))));

    // An SSRC change makes the relay renumber: no longer the identity.
    let later = start + ms(40);
    let (_, _, seq, _, ssrc, _) =
        forward(&mut r, later, Side::A, NAT_A, pkt(0, 500, 1, 0x3333, false));
    assert_eq!((seq, ssrc), (10, 0x1111));
    assert_eq!(r.passthrough_sources(), None);

    // A re-INVITE that moves a side waits for it to re-latch.
    let mut r = same(Some(101));
    forward(&mut r, start, Side::A, NAT_A, pkt(0, 1, 160, 0x1111, false));
    forward(&mut r, start, Side::B, SDP_B, pkt(0, 1, 160, 0x2222, false));
    r.update_remote(Side::B, addr(THIRD));
    assert_eq!(r.passthrough_sources(), None);

    // A callee that sends before its answer is known (a placeholder side latches) has
    // not moved when the answer names the address it sends from: it stays latched.
    let placeholder = || {
        let mut r = relay_with(
            side(Some(SDP_A), Codec::Pcmu, Some(101)),
            side(None, Codec::Pcmu, Some(101)),
            RelayConfig {
                pass_ssrc: true,
                ..RelayConfig::default()
            },
        );
        // The callee signals from its media address (its trunk's).
        r.set_signalling_ip(Side::B, Some(addr(SDP_B).ip()));
        send(&mut r, start, Side::A, NAT_A, pkt(0, 1, 160, 0x1111, false));
        r
    };
    let mut r = placeholder();
    forward(&mut r, start, Side::B, SDP_B, pkt(0, 1, 160, 0x2222, false));
    r.update_remote(Side::B, addr(SDP_B));
    assert_eq!(r.passthrough_sources(), Some((addr(NAT_A), addr(SDP_B))));
    // A stranger sending first gets nowhere (no SDP yet, not the signalling address),
    // and nothing goes to the kernel until the real callee latches.
    let mut r = placeholder();
    let (v, _) = send(&mut r, start, Side::B, THIRD, pkt(0, 1, 160, 0x2222, false));
    assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    r.update_remote(Side::B, addr(SDP_B));
    assert_eq!(r.destination(Side::B), Some(addr(SDP_B)));
    assert_eq!(r.passthrough_sources(), None);

    // Different DTMF payload types need remapping; without pass_ssrc the SSRC changes.
    let mut r = same(Some(96));
    forward(&mut r, start, Side::A, NAT_A, pkt(0, 1, 160, 0x1111, false));
    forward(&mut r, start, Side::B, SDP_B, pkt(0, 1, 160, 0x2222, false));
    assert_eq!(r.passthrough_sources(), None);
    let mut r = relay_with(
        side(Some(SDP_A), Codec::Pcmu, None),
        side(Some(SDP_B), Codec::Pcmu, None),
        RelayConfig::default(),
    );
    forward(&mut r, start, Side::A, NAT_A, pkt(0, 1, 160, 0x1111, false));
    forward(&mut r, start, Side::B, SDP_B, pkt(0, 1, 160, 0x2222, false));
    assert_eq!(r.passthrough_sources(), None);
}

/// RFC 3264 hold: a side whose negotiated direction says it receives nothing (it offered
/// sendonly or inactive, so our direction towards it is recvonly or inactive) gets no RTP,
/// even from a far end that keeps sending; what it sends still crosses to the other side;
/// resuming restores the stream with continuous numbering; no kernel hand-over meanwhile.
#[test]
fn a_holding_side_receives_nothing_until_it_resumes() {
    use media::sdp::Direction;
    let mut r = relay_with(
        side(Some(SDP_A), Codec::Pcmu, Some(101)),
        side(Some(SDP_B), Codec::Pcmu, Some(101)),
        RelayConfig {
            pass_ssrc: true,
            ..RelayConfig::default()
        },
    );
    let start = t0();
    forward(&mut r, start, Side::A, NAT_A, pkt(0, 1, 160, 0x1111, false));
    forward(&mut r, start, Side::B, SDP_B, pkt(0, 1, 160, 0x2222, false));
    assert!(r.passthrough_sources().is_some());

    // A holds with sendonly: we answer recvonly, so nothing goes to A.
    r.set_direction(Side::A, Direction::RecvOnly);
    assert_eq!(r.direction(Side::A), Direction::RecvOnly);
    assert_eq!(
        r.passthrough_sources(),
        None,
        "a held call stays in userspace"
    );
    for k in 0..5u16 {
        let now = start + ms(20 * u64::from(k + 1));
        let (v, _) = send(
            &mut r,
            now,
            Side::B,
            SDP_B,
            pkt(0, 2 + k, 320 + 160 * u32::from(k), 0x2222, false),
        );
        assert_eq!(v, Verdict::Drop(DropReason::Held));
        // A's music on hold still reaches B.
        let (dst, ..) = forward(
            &mut r,
            now,
            Side::A,
            NAT_A,
            pkt(0, 2 + k, 320 + 160 * u32::from(k), 0x1111, false),
        );
        assert_eq!(dst, addr(SDP_B));
    }
    assert_eq!(r.counters(Side::B).dropped(DropReason::Held), 5);
    // What B sent during the hold was still received (statistics, not loss).
    assert_eq!(r.stats(Side::B).packets, 6);

    // Inactive: nothing to A either way round; B still receives what A sends.
    r.set_direction(Side::A, Direction::Inactive);
    let (v, _) = send(
        &mut r,
        start + ms(120),
        Side::B,
        SDP_B,
        pkt(0, 7, 1120, 0x2222, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::Held));

    // Resume: sendrecv again; B's stream continues where it was, numbering unbroken.
    r.set_direction(Side::A, Direction::SendRecv);
    let (dst, _, seq, _, ssrc, _) = forward(
        &mut r,
        start + ms(140),
        Side::B,
        SDP_B,
        pkt(0, 8, 1280, 0x2222, false),
    );
    assert_eq!((dst, seq, ssrc), (addr(NAT_A), 8, 0x2222));
    assert_eq!(r.passthrough_sources(), Some((addr(NAT_A), addr(SDP_B))));

    // B holding A is symmetric: A's packets stop at the relay.
    r.set_direction(Side::B, Direction::Inactive);
    let (v, _) = send(
        &mut r,
        start + ms(160),
        Side::A,
        NAT_A,
        pkt(0, 8, 1280, 0x1111, false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::Held));
    assert_eq!(r.passthrough_sources(), None);
}

/// A transcoded direction towards a held side plays out nothing (its buffered frames
/// are muted, not sent), and plays out again after the resume.
#[test]
fn a_held_side_gets_no_played_out_frames() {
    use media::sdp::Direction;
    let mut r = relay_with(
        side(Some(SDP_A), Codec::Pcmu, None),
        side(Some(SDP_B), Codec::Pcma, None),
        RelayConfig::default(),
    );
    let start = t0();
    let mut out = [0u8; 2048];
    let mut sent_to_b = 0;
    let mut run = |r: &mut Relay, from_seq: u16, frames: u16| {
        let mut sent = 0;
        for k in 0..frames {
            let seq = from_seq + k;
            let now = start + ms(20 * u64::from(seq));
            let (v, _) = send(
                r,
                now,
                Side::A,
                NAT_A,
                pkt(0, seq, 160 * u32::from(seq), 0x1111, false),
            );
            assert!(
                matches!(v, Verdict::Buffered | Verdict::Drop(DropReason::Held)),
                "{v:?}"
            );
            while let Some(t) = r.handle_timeout(now, &mut out) {
                assert_eq!(t.to, Side::B);
                sent += 1;
            }
        }
        sent
    };
    sent_to_b += run(&mut r, 1, 20);
    assert!(sent_to_b >= 15, "played out before the hold: {sent_to_b}");
    r.set_direction(Side::B, Direction::RecvOnly);
    assert_eq!(run(&mut r, 21, 20), 0, "nothing played out to a held side");
    r.set_direction(Side::B, Direction::SendRecv);
    let after = run(&mut r, 41, 20);
    assert!(after >= 15, "played out after the resume: {after}");
}

/// RTP hijack (rtpbleed, CVE-2025-53399, AST-2017-005): a stranger that sends to a leg's
/// port before its far end speaks must not latch it; it gets nothing and injects nothing,
/// and the real far end latches when it starts.
#[test]
fn a_stranger_racing_the_far_end_never_latches() {
    let mut r = relay();
    let now = t0();
    for i in 0..5u16 {
        let (v, _) = send(
            &mut r,
            now,
            Side::B,
            THIRD,
            pkt(0, i, u32::from(i) * 160, 0x6666, false),
        );
        assert_eq!(v, Verdict::Drop(DropReason::WrongSource));
    }
    assert_eq!(r.latched(Side::B), None);
    // A's audio goes to B's SDP address, never to the stranger.
    let (dst, ..) = forward(&mut r, now, Side::A, NAT_A, pkt(0, 1, 0, 1, false));
    assert_eq!(dst, addr(SDP_B));
    let (dst, ..) = forward(&mut r, now + ms(20), Side::B, SDP_B, pkt(0, 1, 0, 2, false));
    assert_eq!(dst, addr(NAT_A));
    assert_eq!(r.latched(Side::B), Some(addr(SDP_B)));
    assert_eq!(r.counters(Side::B).dropped(DropReason::WrongSource), 5);
    assert_eq!(r.counters(Side::B).latches, 1);
}
