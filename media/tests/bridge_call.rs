//! Bridge behaviour a transit call needs, over real loopback UDP: the callee's side
//! filled in after the bridge opened and renegotiated later (codec, payload type and
//! address) with continuous output numbering; per-side receive statistics; RFC 4733
//! digits relayed with payload-type remapping across a transcoding bridge and reported;
//! RTCP reports per leg and the RTT from the answers.
//! Waits are on events (datagrams, channel messages); timeouts only guard.
#![cfg(feature = "net")]
#![allow(clippy::unwrap_used)]
#![allow(clippy::disallowed_methods)] // real sockets: the wall clock is what the bridge sees

use std::f64::consts::PI;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use media::codec::{self, AudioCodec};
use media::dtmf::{DtmfEncoder, DtmfEvent};
use media::g711;
use media::net::PortPool;
use media::net::bridge::Bridge;
use media::relay::{DropReason, RelayConfig, Side, SideParams};
use media::rtcp::{ReportBlock, RtcpPacket, SenderInfo, ntp_middle, parse_compound, write_rr};
use media::rtp::{RtpHeader, RtpView, write_packet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(5);
const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const OPUS: AudioCodec = AudioCodec::Opus { channels: 2 };

/// Each test uses its own range: tests in this file run in parallel.
fn pool(min: u16, max: u16) -> PortPool {
    PortPool::with_rng(min, max, StdRng::seed_from_u64(u64::from(min))).unwrap()
}

fn params(remote: Option<SocketAddr>, codec: AudioCodec, dtmf_pt: Option<u8>) -> SideParams {
    SideParams {
        remote,
        codec,
        pt: match codec {
            AudioCodec::Pcmu => 0,
            AudioCodec::Pcma => 8,
            AudioCodec::G722 => 9,
            AudioCodec::Opus { .. } => 111,
        },
        clock_rate: codec.rtp_clock_rate(),
        dtmf_pt,
    }
}

async fn sock() -> UdpSocket {
    UdpSocket::bind((LO, 0)).await.unwrap()
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().unwrap()
}

async fn send_raw(from: &UdpSocket, to: SocketAddr, h: RtpHeader, payload: &[u8]) {
    let mut buf = [0u8; 1500];
    let n = write_packet(&mut buf, &h, payload).unwrap();
    from.send_to(&buf[..n], to).await.unwrap();
}

fn hdr(pt: u8, seq: u16, ts: u32, ssrc: u32) -> RtpHeader {
    RtpHeader {
        marker: false,
        pt,
        seq,
        timestamp: ts,
        ssrc,
    }
}

/// One received RTP packet.
#[derive(Debug, Clone)]
struct Got {
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    payload: Vec<u8>,
    src: SocketAddr,
}

async fn recv(sock: &UdpSocket) -> Got {
    let mut buf = [0u8; 1500];
    let (n, src) = timeout(GUARD, sock.recv_from(&mut buf))
        .await
        .expect("timed out waiting for RTP")
        .unwrap();
    let v = RtpView::parse(&buf[..n]).unwrap();
    Got {
        pt: v.pt(),
        marker: v.marker(),
        seq: v.seq(),
        ts: v.timestamp(),
        ssrc: v.ssrc(),
        payload: v.payload().to_vec(),
        src,
    }
}

/// 20 ms of a -12 dBFS 1 kHz tone at `rate`, frame `i` of a continuous signal.
fn tone(rate: u32, i: usize) -> Vec<i16> {
    let n = rate as usize / 50;
    (i * n..(i + 1) * n)
        .map(|k| (8192.0 * (2.0 * PI * 1000.0 * k as f64 / f64::from(rate)).sin()) as i16)
        .collect()
}

/// Transcoding without a jitter buffer (the playout is tested in bridge_playout.rs).
const UNBUFFERED: RelayConfig = RelayConfig {
    relatch_after_silence: Duration::ZERO,
    stale_ssrc_window: Duration::from_millis(500),
    transcode_jitter: None,
    pass_ssrc: false,
};

fn ulaw_frame(i: usize) -> Vec<u8> {
    let mut out = vec![0u8; 160];
    g711::encode_ulaw(&tone(8000, i), &mut out);
    out
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// The callee's answer arrives after the bridge opened (B was a placeholder with A's
/// codec and no address), then re-INVITEs switch B to Opus at a new address and back
/// to PCMU: each far end keeps seeing one SSRC with continuous sequence numbers and
/// advancing timestamps, and the payloads are what B negotiated each time.
#[tokio::test]
async fn callee_answer_then_reinvites_change_codec_with_continuity() {
    let pool = pool(42000, 42019);
    let (caller, callee, moved) = (sock().await, sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        params(Some(addr(&caller)), AudioCodec::Pcmu, None),
        params(None, AudioCodec::Pcmu, None),
        // Packet-by-packet transcoding: one packet out per packet in, in lock step.
        UNBUFFERED,
    )
    .unwrap();
    let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
    let mut seq = 100u16;
    let mut frame = 0usize;
    async fn send_a(caller: &UdpSocket, a: SocketAddr, seq: &mut u16, frame: &mut usize) {
        let h = hdr(0, *seq, u32::from(*seq) * 160, 0xCA11);
        send_raw(caller, a, h, &ulaw_frame(*frame)).await;
        *seq += 1;
        *frame += 1;
    }

    // 200 OK from the callee: PCMA.
    bridge.set_side(Side::B, params(Some(addr(&callee)), AudioCodec::Pcma, None));
    let mut out = Vec::new();
    for _ in 0..5 {
        send_a(&caller, a, &mut seq, &mut frame).await;
        let g = recv(&callee).await;
        assert_eq!((g.pt, g.payload.len(), g.src), (8, 160, b));
        let mut pcm = [0i16; 160];
        g711::decode_alaw(&g.payload, &mut pcm);
        let level = 20.0 * (rms(&pcm) / rms(&tone(8000, 0))).log10();
        assert!(level.abs() < 1.5, "PCMA level off by {level:.1} dB");
        out.push(g);
    }

    // re-INVITE: the callee moves and switches to Opus (48 kHz clock).
    bridge.set_side(Side::B, params(Some(addr(&moved)), OPUS, None));
    let mut opus = codec::decoder(OPUS).unwrap();
    let mut pcm = Vec::new();
    for k in 0..5 {
        send_a(&caller, a, &mut seq, &mut frame).await;
        let g = recv(&moved).await;
        assert_eq!((g.pt, g.src), (111, b));
        opus.decode(&g.payload, &mut pcm).unwrap();
        assert_eq!(pcm.len(), 960, "20 ms at 48 kHz");
        assert_eq!(g.marker, k == 0, "marker only where the stream re-based");
        out.push(g);
    }

    // The moved callee talks back in Opus; the caller hears PCMU from the A socket.
    let mut enc = codec::encoder(OPUS).unwrap();
    let mut payload = [0u8; 1500];
    for i in 0..3u16 {
        let n = enc
            .encode(&tone(48000, usize::from(i)), &mut payload)
            .unwrap();
        let h = hdr(111, 7 + i, 960 * u32::from(i), 0xB0B);
        send_raw(&moved, b, h, &payload[..n]).await;
        let g = recv(&caller).await;
        assert_eq!((g.pt, g.payload.len(), g.src), (0, 160, a));
    }

    // re-INVITE back to PCMU: pass-through, the caller's bytes arrive unchanged.
    bridge.set_side(Side::B, params(None, AudioCodec::Pcmu, None));
    for _ in 0..5 {
        let sent = ulaw_frame(frame);
        send_a(&caller, a, &mut seq, &mut frame).await;
        let g = recv(&moved).await;
        assert_eq!(
            (g.pt, &g.payload),
            (0, &sent),
            "address kept, payload as sent"
        );
        out.push(g);
    }

    assert!(
        out.iter().all(|g| g.ssrc == out[0].ssrc),
        "one SSRC throughout"
    );
    for w in out.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "sequence continues");
        let step = w[1].ts.wrapping_sub(w[0].ts) as i32;
        assert!(step > 0, "timestamp moves forward: {w:?}");
    }
    // Within one codec the timestamps step by the frame (160 at 8 kHz, 960 at 48 kHz).
    assert!(out[..5].windows(2).all(|w| w[1].ts - w[0].ts == 160));
    assert!(out[5..10].windows(2).all(|w| w[1].ts - w[0].ts == 960));
    assert!(out[10..].windows(2).all(|w| w[1].ts - w[0].ts == 160));

    let [ca, cb] = bridge.close().await;
    assert_eq!(ca.transcoded_packets, 10);
    assert_eq!(ca.forwarded_packets, 5);
    assert_eq!(ca.transcode_errors + cb.transcode_errors, 0);
    assert_eq!((cb.transcoded_packets, cb.latches), (3, 1));
    assert_eq!(ca.dropped_total() + cb.dropped_total(), 0);
}

/// Loss and jitter of what each side's far end sent, per RFC 3550, and when it last
/// sent; a side that sent nothing has empty statistics.
#[tokio::test]
async fn per_side_statistics_count_loss_jitter_and_last_arrival() {
    let pool = pool(42100, 42119);
    let (caller, callee) = (sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        params(Some(addr(&caller)), AudioCodec::Pcmu, None),
        params(Some(addr(&callee)), AudioCodec::Pcmu, None),
        RelayConfig::default(),
    )
    .unwrap();
    let a = bridge.local_addr(Side::A);
    assert_eq!(bridge.stats(Side::A).last_received, None);
    let before = Instant::now();
    // Seq 0..20 without 5 and 6, sent back to back: the timestamps advance 20 ms per
    // packet while arrivals are microseconds apart, which RFC 3550 A.8 calls jitter.
    for s in (0..20u16).filter(|s| *s != 5 && *s != 6) {
        send_raw(
            &caller,
            a,
            hdr(0, s, u32::from(s) * 160, 0xCA11),
            &[0xff; 160],
        )
        .await;
        recv(&callee).await;
    }
    let st = bridge.stats(Side::A);
    assert_eq!((st.packets, st.bytes, st.lost), (18, 18 * 160, 2));
    // J(i) = J(i-1) + (|D| - J(i-1))/16 with |D| ≈ 160 (20 ms), 17 times: ≈ 13.3 ms.
    assert!(
        (4.0..25.0).contains(&st.jitter_ms),
        "jitter {} ms",
        st.jitter_ms
    );
    let last = st.last_received.unwrap();
    assert!(last >= before && last <= Instant::now());
    assert_eq!(st.rtt, None, "no RTCP exchanged");

    // A packet on a payload type side A never negotiated is not A's media.
    send_raw(&caller, a, hdr(18, 20, 3200, 0xCA11), &[0; 20]).await;
    // A valid one after it, to know the first was handled.
    send_raw(&caller, a, hdr(0, 21, 21 * 160, 0xCA11), &[0xff; 160]).await;
    recv(&callee).await;
    assert_eq!(
        bridge
            .counters(Side::A)
            .dropped(DropReason::UnexpectedPayloadType),
        1
    );

    let (_, [sa, sb]) = bridge.close_with_stats().await;
    // 21 was sent after 19, so 20 counts as lost too.
    assert_eq!((sa.packets, sa.lost), (19, 3));
    assert_eq!(sb, Default::default(), "the callee sent nothing");
}

// --- DTMF --------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../pcap-fixtures/rtp")
        .join(name)
}

/// UDP payloads of a little-endian classic pcap (Ethernet or Linux cooked, IPv4).
fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let rd16 = |b: &[u8], at: usize| usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
    let rd32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    assert_eq!(rd32(pcap, 0), 0xa1b2_c3d4, "little-endian µs pcap");
    let l3 = match rd32(pcap, 20) {
        1 => 14,
        113 => 16,
        t => panic!("link type {t}"),
    };
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 16 <= pcap.len() {
        let incl = rd32(pcap, pos + 8) as usize;
        let frame = &pcap[pos + 16..pos + 16 + incl];
        pos += 16 + incl;
        if frame[l3 + 9] != 17 {
            continue;
        }
        let udp = l3 + usize::from(frame[l3] & 0x0f) * 4;
        out.push(frame[udp + 8..udp + rd16(frame, udp + 4)].to_vec());
    }
    out
}

/// The SIPp capture of digit '1' (telephone-event PT 101) from the PCMU caller crosses
/// a transcoding bridge to a PCMA callee that uses PT 96: every event packet arrives
/// with PT 96 and its payload untouched, in the same sequence space as the transcoded
/// audio around it, and the digit is reported once, as from side A. The callee's '#'
/// (PT 96) reaches the caller as PT 101 and is reported as from side B.
#[tokio::test]
async fn dtmf_is_remapped_across_a_transcoding_bridge_and_reported() {
    let pool = pool(42200, 42219);
    let (caller, callee) = (sock().await, sock().await);
    let mut bridge = Bridge::open(
        &pool,
        LO,
        params(Some(addr(&caller)), AudioCodec::Pcmu, Some(101)),
        params(Some(addr(&callee)), AudioCodec::Pcma, Some(96)),
        // Packet-by-packet transcoding, so the audio's numbering is the caller's.
        UNBUFFERED,
    )
    .unwrap();
    let mut digits = bridge.take_dtmf_events().unwrap();
    assert!(bridge.take_dtmf_events().is_none());
    let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));

    let capture = udp_payloads(&std::fs::read(fixture("dtmf_2833_1.pcap")).unwrap());
    assert_eq!(capture.len(), 10);
    let first = RtpView::parse(&capture[0]).unwrap();
    assert_eq!(first.pt(), 101);
    let (ssrc, seq0, ts0) = (first.ssrc(), first.seq(), first.timestamp());

    // Audio of the same stream before the event, then the captured event packets (whose
    // three end packets share one sequence number, as SIPp sends them).
    let mut got = Vec::new();
    let mut sent_seq = Vec::new();
    for i in 0..3u16 {
        let s = seq0.wrapping_sub(3 - i);
        let ts = ts0.wrapping_sub(160 * u32::from(3 - i));
        send_raw(&caller, a, hdr(0, s, ts, ssrc), &ulaw_frame(usize::from(i))).await;
        let g = recv(&callee).await;
        assert_eq!((g.pt, g.payload.len()), (8, 160), "audio is transcoded");
        sent_seq.push(s);
        got.push(g);
    }
    for p in &capture {
        caller.send_to(p, a).await.unwrap();
        let g = recv(&callee).await;
        let v = RtpView::parse(p).unwrap();
        assert_eq!(g.pt, 96, "the callee's telephone-event payload type");
        assert_eq!(g.payload, v.payload(), "events are never transcoded");
        sent_seq.push(v.seq());
        got.push(g);
    }
    // One offset maps the caller's numbering, audio and events alike.
    let offset = got[0].seq.wrapping_sub(sent_seq[0]);
    assert!(
        got.iter()
            .zip(&sent_seq)
            .all(|(g, s)| g.seq == s.wrapping_add(offset))
    );
    assert!(got.iter().all(|g| g.ssrc == got[0].ssrc));
    // Event packets keep the event's start timestamp, mapped like the audio's.
    assert!(got[3..].iter().all(|g| g.ts == got[2].ts.wrapping_add(160)));

    let (side, event) = timeout(GUARD, digits.recv()).await.unwrap().unwrap();
    assert_eq!(side, Side::A);
    assert_eq!(
        event,
        DtmfEvent {
            digit: '1',
            duration_ts: 0x08c0,
            volume: 10
        }
    );

    // The callee presses '#': 60 ms, PT 96, in its own stream.
    let mut enc = DtmfEncoder::new(96, 8000, 0xCA1E);
    enc.start('#', 60, 7, 500, 80_000).unwrap();
    let mut buf = [0u8; 64];
    let mut sent = 0;
    while let Some(p) = enc.next_packet(&mut buf).unwrap() {
        callee.send_to(&buf[..p.len], b).await.unwrap();
        let g = recv(&caller).await;
        assert_eq!((g.pt, g.src), (101, a));
        assert_eq!(g.payload, RtpView::parse(&buf[..p.len]).unwrap().payload());
        sent += 1;
    }
    assert_eq!(sent, 5, "start, update, three ends");
    let (side, event) = timeout(GUARD, digits.recv()).await.unwrap().unwrap();
    assert_eq!((side, event.digit, event.duration_ts), (Side::B, '#', 480));
    assert!(digits.try_recv().is_err(), "each digit is reported once");

    let [ca, cb] = bridge.close().await;
    assert_eq!((ca.transcoded_packets, ca.forwarded_packets), (3, 10));
    assert_eq!(cb.forwarded_packets, 5);
    assert_eq!(ca.dropped_total() + cb.dropped_total(), 0);
}

// --- RTCP --------------------------------------------------------------------------

/// An RTP socket and its RTCP socket on the next port, from `range`.
async fn rtp_rtcp_pair(range: std::ops::Range<u16>) -> (UdpSocket, UdpSocket) {
    for p in range.step_by(2) {
        if let (Ok(rtp), Ok(rtcp)) = (
            UdpSocket::bind((LO, p)).await,
            UdpSocket::bind((LO, p + 1)).await,
        ) {
            return (rtp, rtcp);
        }
    }
    panic!("no free port pair");
}

async fn recv_rtcp(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, src) = timeout(GUARD, sock.recv_from(&mut buf))
        .await
        .expect("timed out waiting for RTCP")
        .unwrap();
    (buf[..n].to_vec(), src)
}

/// The first report of a compound: (pt, sender SSRC, sender info, blocks).
fn report(data: &[u8]) -> (u8, u32, Option<SenderInfo>, Vec<ReportBlock>) {
    let mut pkts = parse_compound(data);
    let first = pkts.next().unwrap().unwrap();
    let sdes = pkts.next().unwrap().unwrap();
    assert!(
        matches!(sdes, RtcpPacket::Other { pt: 202, .. }),
        "SDES follows: {sdes:?}"
    );
    match first {
        RtcpPacket::SenderReport { ssrc, info, blocks } => {
            (200, ssrc, Some(info), blocks.collect())
        }
        RtcpPacket::ReceiverReport { ssrc, blocks } => (201, ssrc, None, blocks.collect()),
        other => panic!("not a report: {other:?}"),
    }
}

/// Waits until `f` yields: for state the bridge exposes only by polling.
async fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    timeout(GUARD, async {
        loop {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .expect("condition never held")
}

/// Each leg gets its own reports: an RR about what the caller sent while we sent it
/// nothing, then SRs counting what we sent; at RTP port + 1 until the far end sends
/// RTCP, then at its RTCP source. The caller's answer to our SR gives the RTT.
#[tokio::test]
async fn rtcp_reports_per_leg_and_rtt_from_the_answer() {
    let pool = pool(42300, 42319);
    let (caller, caller_rtcp) = rtp_rtcp_pair(42400..42500).await;
    let (callee, callee_rtcp) = (sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        params(Some(addr(&caller)), AudioCodec::Pcmu, None),
        params(Some(addr(&callee)), AudioCodec::Pcmu, None),
        RelayConfig::default(),
    )
    .unwrap();
    bridge.set_rtcp_interval(Duration::from_millis(60));
    let (a, b) = (bridge.local_addr(Side::A), bridge.local_addr(Side::B));
    let a_rtcp = SocketAddr::new(a.ip(), a.port() + 1);
    let b_rtcp = SocketAddr::new(b.ip(), b.port() + 1);

    // The caller sends 0..5 without 2.
    for s in [0u16, 1, 3, 4] {
        send_raw(
            &caller,
            a,
            hdr(0, s, u32::from(s) * 160, 0xCA11),
            &[0xff; 160],
        )
        .await;
        recv(&callee).await;
    }
    // Reports until one covers all of that (one may have left before the media came).
    let (pt, blocks) = loop {
        let (data, src) = recv_rtcp(&caller_rtcp).await;
        assert_eq!(
            src, a_rtcp,
            "from A's RTCP port to the caller's RTP port + 1"
        );
        let (pt, _, info, blocks) = report(&data);
        if blocks.iter().any(|b| b.ext_highest_seq == 4) {
            assert!(info.is_none());
            break (pt, blocks);
        }
    };
    assert_eq!(pt, 201, "RR: we have sent the caller nothing yet");
    assert_eq!(blocks.len(), 1);
    assert_eq!((blocks[0].ssrc, blocks[0].cumulative_lost), (0xCA11, 1));

    // The callee talks; what the caller hears is what the next SRs count.
    let mut heard = Vec::new();
    for s in 0..3u16 {
        send_raw(
            &callee,
            b,
            hdr(0, s, u32::from(s) * 160, 0xCA1E),
            &[0x55; 160],
        )
        .await;
        heard.push(recv(&caller).await);
    }
    let (ssrc, info) = loop {
        let (data, _) = recv_rtcp(&caller_rtcp).await;
        if let (200, ssrc, Some(info), _) = report(&data) {
            break (ssrc, info);
        }
    };
    assert_eq!(
        ssrc, heard[0].ssrc,
        "the SSRC of the stream the caller hears"
    );
    assert_eq!((info.packet_count, info.octet_count), (3, 3 * 160));
    let ahead = info.rtp_ts.wrapping_sub(heard[2].ts) as i32;
    assert!(
        (0..8000 * 5).contains(&ahead),
        "SR timestamp {ahead} ticks after the last packet"
    );

    // The caller answers at once (DLSR 0): the RTT is the SR's age, well under GUARD.
    let answer = ReportBlock {
        ssrc,
        lsr: ntp_middle(info.ntp),
        ..ReportBlock::default()
    };
    let mut buf = [0u8; 64];
    let n = write_rr(&mut buf, 0xCA11, &[answer]).unwrap();
    caller_rtcp.send_to(&buf[..n], a_rtcp).await.unwrap();
    let rtt = eventually(|| bridge.stats(Side::A).rtt).await;
    assert!(rtt < GUARD, "{rtt:?}");
    assert_eq!(bridge.stats(Side::B).rtt, None);

    // The callee's RTCP comes from an arbitrary port: reports follow it there.
    let n = write_rr(&mut buf, 0xCA1E, &[]).unwrap();
    callee_rtcp.send_to(&buf[..n], b_rtcp).await.unwrap();
    let (data, src) = recv_rtcp(&callee_rtcp).await;
    assert_eq!(src, b_rtcp);
    let (pt, ssrc, _, blocks) = report(&data);
    assert_eq!(pt, 200, "we relayed the caller's media to the callee");
    assert_ne!(ssrc, heard[0].ssrc, "each leg sees its own SSRC");
    assert_eq!((blocks[0].ssrc, blocks[0].ext_highest_seq), (0xCA1E, 2));
    bridge.close().await;
}

// --- SDP to bridge -----------------------------------------------------------------

/// Power of `freq` in `x` (Goertzel).
fn goertzel(x: &[i16], freq: f64, rate: f64) -> f64 {
    let coeff = 2.0 * (2.0 * PI * freq / rate).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// A caller that offers only G.722, or only Opus, is answered with that codec; the
/// negotiated stream drives a bridge to a PCMU callee, which hears the caller's 1 kHz
/// tone at the right level.
#[tokio::test]
async fn wideband_only_caller_is_answered_in_kind_and_transcoded_to_g711() {
    use media::sdp::{Codec, Direction, OfferParams, answer_offer};
    const PACKETS: usize = 25;
    let offers: [(&str, Codec, u32); 2] = [
        (
            "m=audio 5000 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n",
            Codec::G722,
            16000,
        ),
        (
            "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n\
             a=fmtp:96 useinbandfec=1\r\n",
            Codec::Opus,
            48000,
        ),
    ];
    for (n, (media_lines, want, rate)) in offers.into_iter().enumerate() {
        let pool = pool(42500 + 20 * n as u16, 42519 + 20 * n as u16);
        let (caller, callee) = (sock().await, sock().await);
        let offer = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{}",
            media_lines.replace("5000", &addr(&caller).port().to_string())
        );
        let local = OfferParams {
            session_id: 1,
            session_version: 1,
            addr: LO,
            port: 30000,
            codecs: Codec::ALL.to_vec(),
            dtmf_pt: Some(101),
            ptime_ms: 20,
            direction: Direction::SendRecv,
        };
        let (answer, negotiated) = answer_offer(offer.as_bytes(), &local).unwrap();
        assert_eq!(negotiated.codec, want, "{answer}");
        assert_eq!(negotiated.remote, addr(&caller));
        let side_a = SideParams::try_from(&negotiated).unwrap();
        let bridge = Bridge::open(
            &pool,
            LO,
            side_a,
            params(Some(addr(&callee)), AudioCodec::Pcmu, None),
            RelayConfig::default(),
        )
        .unwrap();
        let a = bridge.local_addr(Side::A);
        let mut enc = codec::encoder(side_a.codec).unwrap();
        let step = side_a.clock_rate / 50;
        let mut heard = Vec::new();
        let mut payload = [0u8; 1500];
        for i in 0..PACKETS {
            let len = enc.encode(&tone(rate, i), &mut payload).unwrap();
            let h = hdr(side_a.pt, i as u16, step * i as u32, 0xCA11);
            send_raw(&caller, a, h, &payload[..len]).await;
            let g = recv(&callee).await;
            assert_eq!((g.pt, g.payload.len()), (0, 160), "{want:?}");
            let mut pcm = [0i16; 160];
            g711::decode_ulaw(&g.payload, &mut pcm);
            heard.extend_from_slice(&pcm);
        }
        // The second half: past codec and resampler start-up.
        let tail = &heard[heard.len() / 2..];
        let level = 20.0 * (rms(tail) / rms(&tone(8000, 0))).log10();
        assert!(level.abs() < 2.0, "{want:?}: level off by {level:.1} dB");
        let on = goertzel(tail, 1000.0, 8000.0);
        for off in [700.0, 1300.0] {
            let db = 10.0 * (on / goertzel(tail, off, 8000.0)).log10();
            assert!(db > 20.0, "{want:?}: 1 kHz only {db:.1} dB over {off} Hz");
        }
        let [ca, _] = bridge.close().await;
        assert_eq!(
            (ca.transcoded_packets, ca.transcode_errors),
            (PACKETS as u64, 0)
        );
    }
}

/// A burst queued before the bridge runs (the test runtime has one thread, and sends
/// complete without yielding) is read in `recvmmsg` batches and relayed whole, in order.
#[tokio::test]
async fn a_queued_burst_is_relayed_whole_and_in_order() {
    let pool = pool(42600, 42619);
    let (caller, callee) = (sock().await, sock().await);
    let bridge = Bridge::open(
        &pool,
        LO,
        params(Some(addr(&caller)), AudioCodec::Pcmu, None),
        params(Some(addr(&callee)), AudioCodec::Pcmu, None),
        RelayConfig::default(),
    )
    .unwrap();
    let a = bridge.local_addr(Side::A);
    // More than one recvmmsg batch, and more than one wakeup's budget.
    const BURST: u16 = 150;
    for s in 0..BURST {
        send_raw(
            &caller,
            a,
            hdr(0, s, u32::from(s) * 160, 0xCA11),
            &[s as u8; 160],
        )
        .await;
    }
    let mut first = None;
    for s in 0..BURST {
        let g = recv(&callee).await;
        let base = *first.get_or_insert(g.seq);
        assert_eq!(g.seq, base.wrapping_add(s), "in order, none lost");
        assert_eq!(g.payload[0], s as u8);
    }
    let [ca, _] = bridge.close().await;
    assert_eq!((ca.received_packets, ca.sent_packets), (150, 150));
}
