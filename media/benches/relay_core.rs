//! Cost of `Relay::handle_packet` on the pass-through path (same codec both sides, header
//! rewrite only), in ns per packet, and a check that it allocates nothing.
//!
//! Run: `cargo bench -p switchyard-media --bench relay_core` (release, plain `main`).
//! Allocations are counted by `stats_alloc`'s instrumented system allocator.

// A benchmark has to read the clock; the sans-IO rule is for library code.
#![allow(clippy::disallowed_methods)]

use std::alloc::System;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::codec::AudioCodec;
use media::relay::{Relay, RelayConfig, Side, SideParams, Verdict};
use media::rtp::{RtpHeader, write_packet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PACKETS: u32 = 2_000_000;
const ROUNDS: usize = 5;

fn side(remote: &str, pt: u8, dtmf_pt: Option<u8>) -> SideParams {
    SideParams {
        remote: remote.parse().ok(),
        codec: AudioCodec::Pcmu,
        pt,
        clock_rate: 8000,
        dtmf_pt,
    }
}

/// Runs `PACKETS` packets A→B with payload type `pt`; returns ns per packet and the
/// number of allocations made inside the loop.
fn run(relay: &mut Relay, pt: u8, start: Instant, src: SocketAddr) -> (f64, usize) {
    let mut buf = [0u8; 1500];
    let hdr = RtpHeader {
        marker: false,
        pt,
        seq: 0,
        timestamp: 0,
        ssrc: 0x1234_5678,
    };
    let Ok(len) = write_packet(&mut buf, &hdr, &[0xff; 160]) else {
        return (f64::NAN, 0);
    };
    let mut template = [0u8; 12];
    template.copy_from_slice(&buf[..12]);
    let mut forwarded = 0u32;
    let region = Region::new(GLOBAL);
    let t = Instant::now();
    for i in 0..PACKETS {
        // What a recv into the buffer would do: a fresh header every packet.
        buf[..12].copy_from_slice(&template);
        buf[2..4].copy_from_slice(&(i as u16).to_be_bytes());
        buf[4..8].copy_from_slice(&i.wrapping_mul(160).to_be_bytes());
        let now = start + Duration::from_millis(u64::from(i) * 20);
        let v = relay.handle_packet(now, Side::A, src, black_box(&mut buf), len);
        if matches!(v, Verdict::Forward { .. }) {
            forwarded += 1;
        }
    }
    let elapsed = t.elapsed();
    let allocs = region.change().allocations;
    assert_eq!(forwarded, PACKETS, "every packet should be forwarded");
    (elapsed.as_nanos() as f64 / f64::from(PACKETS), allocs)
}

fn main() {
    let src: SocketAddr = "203.0.113.5:40000"
        .parse()
        .unwrap_or(SocketAddr::from(([0; 4], 1)));
    let start = Instant::now();
    for (name, pt, dtmf_a, dtmf_b) in [
        ("pass-through (same PT)", 0u8, Some(101), Some(101)),
        ("pass-through + PT remap (101→96)", 101, Some(101), Some(96)),
    ] {
        let mut relay = Relay::new(
            side("10.0.0.1:4000", 0, dtmf_a),
            side("198.51.100.2:5000", 0, dtmf_b),
            RelayConfig::default(),
            &mut StdRng::seed_from_u64(1),
        );
        let mut best = f64::INFINITY;
        let mut total_allocs = 0;
        for _ in 0..ROUNDS {
            let (ns, allocs) = run(&mut relay, pt, start, src);
            best = best.min(ns);
            total_allocs += allocs;
        }
        println!(
            "relay_core {name}: {best:.1} ns/packet (best of {ROUNDS} x {PACKETS}), \
             {total_allocs} allocations in the loop"
        );
        assert_eq!(total_allocs, 0, "the pass-through path must not allocate");
    }
}
