//! Generator of the synthetic RTP captures in `pcap-fixtures/rtp/` that the end-to-end
//! tests replay through SIPp, as Ethernet/IPv4/UDP frames in a classic little-endian pcap
//! like SIPp's own `g711a.pcap` (SIPp's `play_pcap_audio` keeps only the RTP and rewrites
//! addresses and ports). Each holds 3 s of a sine at about -10 dBm0 in 150 packets of
//! 20 ms, encoded with the project's own encoders:
//!
//! - `tone_1khz_pcmu.pcap`: 1 kHz, µ-law (PT 0), for `tests/e2e_bridge.rs` (and as the
//!   G.711 far end in `tests/e2e_codecs.rs`);
//! - `tone_600hz_g722.pcap`: 600 Hz at 16 kHz, G.722 (PT 9, RTP clock 8000: 160 per
//!   packet), for the G.722-only caller of `tests/e2e_codecs.rs`;
//! - `tone_600hz_opus.pcap`: 600 Hz at 48 kHz, Opus (PT 96, mono, the encoder's default
//!   settings, RTP clock 48000: 960 per packet), for its Opus-only caller.
//!
//! - `dtmf_9_te48k.pcap`: the digit 9 as telephone-event/48000 (see [`DTMF_48K`]), for
//!   the Opus callee of `tests/e2e_codecs.rs`.
//!
//! The test checks that each committed file is exactly what this code generates; with
//! `SWITCHYARD_WRITE_FIXTURES=1` it (re)writes the files instead. Opus is the exception:
//! `opus-rs` picks its float code paths (AVX, AVX2, FMA) by the CPU it runs on, and fused
//! multiply-adds round differently, so its bytes differ from one machine to the next (a
//! VM with AVX2 and FMA failed the byte comparison against the committed file, written on
//! an earlier one). For it the packets' headers are checked exactly and the
//! committed payloads by decoding them back to the tone.

use std::path::PathBuf;

mod common;

use common::fixtures::goertzel;

use media::codec::AudioCodec;

/// Peak of a 0 dBm0 sine in µ-law (G.711: the full-scale sine, peak 32124, is +3.17 dBm0).
const PEAK_0_DBM0: f64 = 32124.0 / 1.440_1; // 10^(3.17/20)
/// -10 dBm0.
const LEVEL_DBM0: f64 = -10.0;
const PACKETS: usize = 150;
const PTIME_MS: usize = 20;
/// Arbitrary but fixed capture start, so the files are reproducible.
const EPOCH_S: u32 = 1_700_000_000;

/// One fixture: what is encoded and how it is numbered.
struct Fixture {
    file: &'static str,
    codec: AudioCodec,
    pt: u8,
    tone_hz: f64,
    ssrc: u32,
}

const FIXTURES: [Fixture; 3] = [
    Fixture {
        file: "tone_1khz_pcmu.pcap",
        codec: AudioCodec::Pcmu,
        pt: 0,
        tone_hz: 1000.0,
        ssrc: 0x5157_1000,
    },
    Fixture {
        file: "tone_600hz_g722.pcap",
        codec: AudioCodec::G722,
        pt: 9,
        tone_hz: 600.0,
        ssrc: 0x5157_0722,
    },
    Fixture {
        file: "tone_600hz_opus.pcap",
        codec: AudioCodec::Opus { channels: 2 },
        pt: 96,
        tone_hz: 600.0,
        ssrc: 0x5157_0096,
    },
];

fn fixture_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("pcap-fixtures/rtp")
        .join(file)
}

/// The linear samples of the tone at `rate` (before encoding).
fn tone(tone_hz: f64, rate: f64, samples: usize) -> Vec<i16> {
    let peak = PEAK_0_DBM0 * 10f64.powf(LEVEL_DBM0 / 20.0);
    (0..samples)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * tone_hz * n as f64 / rate;
            // A small phase offset so no sample sits exactly on a zero crossing.
            (peak * (phase + 0.3).sin()).round() as i16
        })
        .collect()
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The RTP packets of one fixture: marker on the first, sequence from 1000, timestamps
/// from 0 in steps of one packet on the codec's RTP clock.
fn rtp_packets(f: &Fixture) -> Vec<Vec<u8>> {
    let frame = f.codec.frame_samples(PTIME_MS as u32);
    let step = f.codec.timestamp_step(PTIME_MS as u32);
    let samples = tone(f.tone_hz, f64::from(f.codec.sample_rate()), PACKETS * frame);
    let mut enc = media::codec::encoder(f.codec).expect("encoder");
    let mut payload = vec![0u8; f.codec.max_payload_bytes(PTIME_MS as u32)];
    samples
        .chunks(frame)
        .enumerate()
        .map(|(i, chunk)| {
            let len = enc.encode(chunk, &mut payload).expect("encode");
            let mut rtp = Vec::with_capacity(12 + len);
            rtp.push(0x80);
            rtp.push(if i == 0 { 0x80 | f.pt } else { f.pt });
            rtp.extend_from_slice(&(1000u16 + i as u16).to_be_bytes());
            rtp.extend_from_slice(&(i as u32 * step).to_be_bytes());
            rtp.extend_from_slice(&f.ssrc.to_be_bytes());
            rtp.extend_from_slice(&payload[..len]);
            rtp
        })
        .collect()
}

/// A pcap of `packets` sent 20 ms apart, 10.0.0.1:6000 -> 10.0.0.2:6000.
fn pcap(packets: &[Vec<u8>]) -> Vec<u8> {
    let timed: Vec<(u32, Vec<u8>)> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| ((i as u32) * (PTIME_MS as u32) * 1000, p.clone()))
        .collect();
    pcap_timed(&timed)
}

/// A pcap of (microseconds after the start, RTP packet), 10.0.0.1:6000 -> 10.0.0.2:6000.
fn pcap_timed(packets: &[(u32, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    // Global header: magic, v2.4, GMT offset 0, accuracy 0, snaplen 65535, Ethernet.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, (usec, rtp)) in packets.iter().enumerate() {
        let udp_len = 8 + rtp.len();
        let ip_len = 20 + udp_len;
        let mut ip = vec![0x45, 0x00];
        ip.extend_from_slice(&(ip_len as u16).to_be_bytes());
        ip.extend_from_slice(&(i as u16).to_be_bytes()); // identification
        ip.extend_from_slice(&[0x40, 0x00, 64, 17, 0, 0]); // DF, TTL 64, UDP, checksum
        ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let sum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        // UDP 10.0.0.1:6000 -> 10.0.0.2:6000, checksum 0 (none, allowed over IPv4).
        ip.extend_from_slice(&6000u16.to_be_bytes());
        ip.extend_from_slice(&6000u16.to_be_bytes());
        ip.extend_from_slice(&(udp_len as u16).to_be_bytes());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(rtp);

        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&ip);

        out.extend_from_slice(&(EPOCH_S + usec / 1_000_000).to_le_bytes());
        out.extend_from_slice(&(usec % 1_000_000).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

/// `dtmf_9_te48k.pcap`: the digit 9 for 100 ms as RFC 4733 telephone-event/48000 on
/// PT 97, written by the project's `DtmfEncoder` (start with the marker, an update at
/// 50 ms, three end packets 20 ms apart; durations in 48 kHz units, 4800 at the end),
/// each packet at its send time. No audio: it stands for an Opus leg's keypad.
const DTMF_48K: &str = "dtmf_9_te48k.pcap";

fn dtmf_48k() -> Vec<u8> {
    let mut enc = media::dtmf::DtmfEncoder::new(97, 48_000, 0x5157_0097);
    enc.start('9', 100, 10, 2000, 96_000).expect("digit");
    let mut buf = [0u8; 64];
    let mut packets = Vec::new();
    while let Some(p) = enc.next_packet(&mut buf).expect("packet") {
        // Timestamp units of 48 kHz to microseconds.
        let usec = u32::try_from(u64::from(p.send_offset_ts) * 1000 / 48).expect("fits");
        packets.push((usec, buf[..p.len].to_vec()));
    }
    pcap_timed(&packets)
}

/// The RTP packets of a capture written by [`pcap`] (Ethernet 14 + IPv4 20 + UDP 8
/// bytes before each).
fn pcap_rtp(bytes: &[u8]) -> Vec<&[u8]> {
    let mut at = 24;
    let mut packets = Vec::new();
    while at + 16 <= bytes.len() {
        let incl = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4")) as usize;
        packets.push(&bytes[at + 16 + 42..at + 16 + incl]);
        at += 16 + incl;
    }
    packets
}

fn write_fixture(path: &std::path::Path, bytes: &[u8]) -> bool {
    let write = std::env::var_os("SWITCHYARD_WRITE_FIXTURES").is_some();
    if write {
        std::fs::write(path, bytes).expect("write fixture");
    }
    write
}

fn read_fixture(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("read fixture (SWITCHYARD_WRITE_FIXTURES=1 writes it)")
}

fn check_or_write(path: &std::path::Path, bytes: &[u8]) {
    write_fixture(path, bytes);
    let committed = read_fixture(path);
    assert!(
        committed == bytes,
        "{} differs from its generator; rerun with SWITCHYARD_WRITE_FIXTURES=1",
        path.display()
    );
}

#[test]
fn dtmf_48k_fixture_matches_its_generator_and_decodes() {
    let bytes = dtmf_48k();
    check_or_write(&fixture_path(DTMF_48K), &bytes);
    // Read back as RTP: one digit, 100 ms.
    let mut dec = media::dtmf::DtmfDecoder::new(97);
    let mut digits = Vec::new();
    for rtp in pcap_rtp(&bytes) {
        let view = media::rtp::RtpView::parse(rtp).expect("rtp");
        digits.extend(dec.handle(&view));
    }
    assert_eq!(digits.len(), 1, "{digits:?}");
    assert_eq!((digits[0].digit, digits[0].duration_ms(48_000)), ('9', 100));
}

#[test]
fn tone_fixtures_match_their_generator() {
    for f in &FIXTURES {
        let packets = rtp_packets(f);
        let path = fixture_path(f.file);
        if !matches!(f.codec, AudioCodec::Opus { .. }) {
            check_or_write(&path, &pcap(&packets));
            continue;
        }
        // Opus: the headers exactly, the payloads by what they decode to.
        if write_fixture(&path, &pcap(&packets)) {
            continue;
        }
        let bytes = read_fixture(&path);
        let committed = pcap_rtp(&bytes);
        assert_eq!(committed.len(), packets.len(), "{}: packets", f.file);
        for (i, (c, g)) in committed.iter().zip(&packets).enumerate() {
            assert_eq!(
                c.get(..12),
                g.get(..12),
                "{}: RTP header of packet {i}",
                f.file
            );
        }
        assert_tone(f, &decode(f, committed.iter().map(|p| &p[12..])));
    }
}

/// The payloads decoded with the project's decoder for `f`'s codec.
fn decode<'a>(f: &Fixture, payloads: impl Iterator<Item = &'a [u8]>) -> Vec<i16> {
    let mut dec = media::codec::decoder(f.codec).expect("decoder");
    let mut pcm = Vec::new();
    let mut frame = Vec::new();
    for p in payloads {
        dec.decode(p, &mut frame).expect("decode");
        assert_eq!(frame.len(), f.codec.frame_samples(PTIME_MS as u32));
        pcm.extend_from_slice(&frame);
    }
    pcm
}

/// The wideband fixtures decode, with the project's decoders, back to their tone: a
/// check on the encoders that made them, independent of the byte comparison above.
#[test]
fn wideband_fixtures_decode_to_their_tone() {
    for f in FIXTURES.iter().filter(|f| f.codec != AudioCodec::Pcmu) {
        let packets = rtp_packets(f);
        assert_tone(f, &decode(f, packets.iter().map(|p| &p[12..])));
    }
}

/// `pcm` (decoded from `f`) carries `f`'s tone 30 dB above its neighbours at 0.7 and 1.3
/// times its frequency.
fn assert_tone(f: &Fixture, pcm: &[i16]) {
    // Past the codec's start-up; whole 10 ms blocks, so 600 Hz completes its cycles.
    let rate = f64::from(f.codec.sample_rate());
    let tail = &pcm[pcm.len() / 2..];
    let power = |hz: f64| goertzel(tail, hz, rate);
    let margin =
        10.0 * (power(f.tone_hz) / power(f.tone_hz * 0.7).max(power(f.tone_hz * 1.3))).log10();
    assert!(
        margin > 30.0,
        "{}: tone only {margin:.1} dB over its neighbours",
        f.file
    );
}
