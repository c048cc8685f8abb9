//! RFC 4733 DTMF: encoder → decoder round trips, loss/reorder/retransmission handling,
//! and the SIPp telephone-event captures in `pcap-fixtures/rtp/`.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use media::dtmf::{DtmfDecoder, DtmfEncoder, DtmfEvent, END_REPEATS};
use media::rtp::RtpView;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;

const PT: u8 = 101;
const DIGITS: &str = "0123456789*#ABCD";

/// All packets of one digit, as owned byte vectors (tests only).
fn encode(enc: &mut DtmfEncoder) -> Vec<(Vec<u8>, u32, bool)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 64];
    while let Some(p) = enc.next_packet(&mut buf).unwrap() {
        out.push((buf[..p.len].to_vec(), p.send_offset_ts, p.end));
    }
    out
}

fn decode_all(dec: &mut DtmfDecoder, packets: &[Vec<u8>]) -> Vec<DtmfEvent> {
    let mut got: Vec<DtmfEvent> = packets
        .iter()
        .filter_map(|b| dec.handle(&RtpView::parse(b).unwrap()))
        .collect();
    got.extend(dec.flush());
    got
}

#[test]
fn every_digit_round_trips() {
    let mut enc = DtmfEncoder::new(PT, 8000, 0x1234_5678);
    let mut dec = DtmfDecoder::new(PT);
    let mut seq = 65_530u16; // crosses the wrap
    let mut ts = 4_294_960_000u32;
    for digit in DIGITS.chars() {
        enc.start(digit, 120, 10, seq, ts).unwrap();
        let pkts = encode(&mut enc);
        // 120 ms: updates at 0, 50, 100 ms, then three end packets.
        assert_eq!(pkts.len(), 3 + usize::from(END_REPEATS));
        let first = RtpView::parse(&pkts[0].0).unwrap();
        assert!(first.marker());
        assert_eq!(first.seq(), seq);
        let offsets: Vec<u32> = pkts.iter().map(|p| p.1).collect();
        assert_eq!(offsets, vec![0, 400, 800, 960, 1120, 1280]);
        for (i, (b, _, end)) in pkts.iter().enumerate() {
            let v = RtpView::parse(b).unwrap();
            assert_eq!(v.timestamp(), ts, "all packets carry the event start");
            assert_eq!(v.seq(), seq.wrapping_add(i as u16));
            assert_eq!(v.pt(), PT);
            assert_eq!(v.marker(), i == 0);
            assert_eq!(*end, i >= 3);
        }
        let got: Vec<DtmfEvent> = pkts
            .iter()
            .filter_map(|(b, _, _)| dec.handle(&RtpView::parse(b).unwrap()))
            .collect();
        assert_eq!(
            got,
            vec![DtmfEvent {
                digit,
                duration_ts: 960,
                volume: 10
            }]
        );
        assert_eq!(dec.flush(), None);
        seq = enc.next_seq();
        ts = ts.wrapping_add(8000);
    }
}

#[test]
fn lowercase_and_long_durations() {
    let mut enc = DtmfEncoder::new(PT, 8000, 1);
    let mut dec = DtmfDecoder::new(PT);
    enc.start('d', 10_000, 70, 0, 0).unwrap();
    let pkts: Vec<Vec<u8>> = encode(&mut enc).into_iter().map(|p| p.0).collect();
    let got = decode_all(&mut dec, &pkts);
    // 10 s exceeds the 16-bit duration: cut to 0xffff; volume clamped to 63.
    assert_eq!(
        got,
        vec![DtmfEvent {
            digit: 'D',
            duration_ts: 0xffff,
            volume: 63
        }]
    );
}

/// Random loss of every kind except "all packets of a digit", plus reordering and
/// duplication: each digit is still reported exactly once, in order.
#[test]
fn sequence_survives_loss_reorder_and_duplication() {
    let mut rng = StdRng::seed_from_u64(4733);
    for _ in 0..50 {
        let mut enc = DtmfEncoder::new(PT, 8000, 9);
        let mut dec = DtmfDecoder::new(PT);
        let (mut seq, mut ts) = (rng.random::<u16>(), rng.random::<u32>());
        let digits: Vec<char> = (0..8)
            .map(|_| DIGITS.as_bytes()[rng.random_range(0..16)] as char)
            .collect();
        let mut wire: Vec<Vec<u8>> = Vec::new();
        for &d in &digits {
            enc.start(d, rng.random_range(60..400), 10, seq, ts)
                .unwrap();
            let mut pkts: Vec<Vec<u8>> = encode(&mut enc).into_iter().map(|p| p.0).collect();
            seq = enc.next_seq();
            ts = ts.wrapping_add(rng.random_range(4000..16000));
            let keep = rng.random_range(0..pkts.len());
            let kept = pkts[keep].clone();
            pkts.retain(|_| rng.random_bool(0.7));
            if pkts.is_empty() {
                pkts.push(kept);
            }
            if rng.random_bool(0.3) {
                let dup = pkts[rng.random_range(0..pkts.len())].clone();
                pkts.push(dup);
            }
            // Reorder within the digit only (events don't overlap in time).
            pkts.shuffle(&mut rng);
            wire.extend(pkts);
        }
        let got: Vec<char> = decode_all(&mut dec, &wire)
            .iter()
            .map(|e| e.digit)
            .collect();
        assert_eq!(got, digits);
    }
}

#[test]
fn end_packets_all_lost_reported_by_flush() {
    let mut enc = DtmfEncoder::new(PT, 8000, 9);
    let mut dec = DtmfDecoder::new(PT);
    enc.start('7', 200, 10, 100, 1000).unwrap();
    let pkts: Vec<Vec<u8>> = encode(&mut enc)
        .into_iter()
        .filter(|p| !p.2)
        .map(|p| p.0)
        .collect();
    for p in &pkts {
        assert_eq!(dec.handle(&RtpView::parse(p).unwrap()), None);
    }
    assert!(dec.in_progress());
    let e = dec.flush().unwrap();
    assert_eq!((e.digit, e.duration_ts), ('7', 1200));
    assert_eq!(dec.flush(), None);
    assert!(!dec.in_progress());
}

// --- SIPp captures -------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../pcap-fixtures/rtp")
        .join(name)
}

fn u16_at(b: &[u8], at: usize, le: bool) -> usize {
    let v = [b[at], b[at + 1]];
    usize::from(if le {
        u16::from_le_bytes(v)
    } else {
        u16::from_be_bytes(v)
    })
}

fn u32_at(b: &[u8], at: usize, le: bool) -> u32 {
    let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    if le {
        u32::from_le_bytes(v)
    } else {
        u32::from_be_bytes(v)
    }
}

/// UDP payloads of a classic pcap (Ethernet or Linux cooked capture, IPv4, UDP).
fn udp_payloads(pcap: &[u8]) -> Vec<Vec<u8>> {
    let le = match u32::from_le_bytes(pcap[0..4].try_into().unwrap()) {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => panic!("not a pcap: magic {m:#x}"),
    };
    let linktype = u32_at(pcap, 20, le);
    let mut out = Vec::new();
    let mut pos = 24;
    while pos + 16 <= pcap.len() {
        let incl = u32_at(pcap, pos + 8, le) as usize;
        let frame = &pcap[pos + 16..pos + 16 + incl];
        pos += 16 + incl;
        let (l3, ethertype) = match linktype {
            1 => (14, u16_at(frame, 12, false)),
            113 => (16, u16_at(frame, 14, false)),
            t => panic!("link type {t}"),
        };
        if ethertype != 0x0800 || frame[l3 + 9] != 17 {
            continue;
        }
        let ihl = usize::from(frame[l3] & 0x0f) * 4;
        let udp = l3 + ihl;
        let ulen = u16_at(frame, udp + 4, false);
        out.push(frame[udp + 8..udp + ulen].to_vec());
    }
    assert_eq!(pos, pcap.len(), "trailing bytes");
    out
}

fn decode_capture(name: &str) -> (Vec<DtmfEvent>, usize) {
    let pcap = std::fs::read(fixture(name)).unwrap();
    let payloads = udp_payloads(&pcap);
    let mut dec = DtmfDecoder::new(PT);
    (decode_all(&mut dec, &payloads), payloads.len())
}

#[test]
fn sipp_captures_decode_to_one_digit_each() {
    for (file, digit) in [
        ("dtmf_2833_1.pcap", '1'),
        ("dtmf_2833_star.pcap", '*'),
        ("dtmf_2833_pound.pcap", '#'),
    ] {
        let (events, packets) = decode_capture(file);
        // 7 start/update packets, then the end packet three times.
        assert_eq!(packets, 10, "{file}");
        assert_eq!(
            events,
            vec![DtmfEvent {
                digit,
                duration_ts: 0x08c0,
                volume: 10
            }],
            "{file}"
        );
    }
}

#[test]
fn sipp_capture_with_wrong_payload_type_yields_nothing() {
    let pcap = std::fs::read(fixture("dtmf_2833_1.pcap")).unwrap();
    let mut dec = DtmfDecoder::new(96);
    assert!(decode_all(&mut dec, &udp_payloads(&pcap)).is_empty());
}
