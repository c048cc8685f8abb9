//! Generator of the synthetic RTP capture `pcap-fixtures/rtp/tone_1khz_pcmu.pcap` that
//! `tests/e2e_bridge.rs` replays through SIPp: 3 s of a 1 kHz sine at about -10 dBm0,
//! µ-law (PT 0), 150 packets of 20 ms, as Ethernet/IPv4/UDP frames in a classic
//! little-endian pcap like SIPp's own `g711a.pcap` (SIPp's `play_pcap_audio` keeps only
//! the RTP and rewrites addresses and ports).
//!
//! The test checks that the committed file is exactly what this code generates; with
//! `SWITCHYARD_WRITE_FIXTURES=1` it (re)writes the file instead.

use std::path::PathBuf;

/// Peak of a 0 dBm0 sine in µ-law (G.711: the full-scale sine, peak 32124, is +3.17 dBm0).
const PEAK_0_DBM0: f64 = 32124.0 / 1.440_1; // 10^(3.17/20)
/// -10 dBm0.
const LEVEL_DBM0: f64 = -10.0;
const TONE_HZ: f64 = 1000.0;
const RATE: f64 = 8000.0;
const SAMPLES_PER_PACKET: usize = 160;
const PACKETS: usize = 150;
const SSRC: u32 = 0x5157_1000;
/// Arbitrary but fixed capture start, so the file is reproducible.
const EPOCH_S: u32 = 1_700_000_000;

fn fixture_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pcap-fixtures/rtp/tone_1khz_pcmu.pcap")
}

/// The linear samples of the tone (before µ-law).
fn tone() -> Vec<i16> {
    let peak = PEAK_0_DBM0 * 10f64.powf(LEVEL_DBM0 / 20.0);
    (0..PACKETS * SAMPLES_PER_PACKET)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * TONE_HZ * n as f64 / RATE;
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

fn generate() -> Vec<u8> {
    let samples = tone();
    let mut out = Vec::new();
    // Global header: magic, v2.4, GMT offset 0, accuracy 0, snaplen 65535, Ethernet.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    for (i, chunk) in samples.chunks(SAMPLES_PER_PACKET).enumerate() {
        let mut rtp = Vec::with_capacity(12 + SAMPLES_PER_PACKET);
        rtp.push(0x80);
        rtp.push(if i == 0 { 0x80 } else { 0x00 }); // marker on the first packet, PT 0
        rtp.extend_from_slice(&(1000u16 + i as u16).to_be_bytes());
        rtp.extend_from_slice(&((i * SAMPLES_PER_PACKET) as u32).to_be_bytes());
        rtp.extend_from_slice(&SSRC.to_be_bytes());
        let mut payload = [0u8; SAMPLES_PER_PACKET];
        media::g711::encode_ulaw(chunk, &mut payload);
        rtp.extend_from_slice(&payload);

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
        ip.extend_from_slice(&rtp);

        let mut frame = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00];
        frame.extend_from_slice(&ip);

        let usec = (i as u32) * 20_000;
        out.extend_from_slice(&(EPOCH_S + usec / 1_000_000).to_le_bytes());
        out.extend_from_slice(&(usec % 1_000_000).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&frame);
    }
    out
}

#[test]
fn tone_fixture_matches_its_generator() {
    let bytes = generate();
    let path = fixture_path();
    if std::env::var_os("SWITCHYARD_WRITE_FIXTURES").is_some() {
        std::fs::write(&path, &bytes).expect("write fixture");
    }
    let committed =
        std::fs::read(&path).expect("read fixture (SWITCHYARD_WRITE_FIXTURES=1 writes it)");
    assert!(
        committed == bytes,
        "{} differs from its generator; rerun with SWITCHYARD_WRITE_FIXTURES=1",
        path.display()
    );
}
