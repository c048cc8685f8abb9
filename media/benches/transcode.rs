//! CPU cost of transcoding and resampling per call-second, and how many such calls one
//! core sustains. A call-second is 50 frames of 20 ms in each direction.
//!
//! Run: `cargo bench -p switchyard-media --bench transcode` (release, plain `main`).
//! CPU time comes from `/proc/self/schedstat` (ns on-CPU for this thread) so a busy shared
//! machine doesn't inflate the figures; wall time is the fallback elsewhere.

// A benchmark has to read the clock; the sans-IO rule is for library code.
#![allow(clippy::disallowed_methods)]

use std::alloc::System;
use std::hint::black_box;
use std::time::{Duration, Instant};

use media::codec::{self, AudioCodec};
use media::relay::{Relay, RelayConfig, Side, SideParams, Verdict};
use media::resample::Resampler;
use media::rtp::{RtpHeader, write_packet};
use media::transcode::Transcoder;
use rand::SeedableRng;
use rand::rngs::StdRng;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

// Counts heap allocations so the table can show the hot path makes none.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const PTIME: u32 = 20;
const FRAMES: usize = 50;
const OPUS: AudioCodec = AudioCodec::Opus { channels: 2 };
/// Each row runs for at least this much CPU time.
const BUDGET: Duration = Duration::from_millis(1500);

/// CPU time this thread has used, if the kernel reports it.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

struct Clock {
    wall: Instant,
    cpu: Option<Duration>,
}

impl Clock {
    fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: cpu_time(),
        }
    }

    fn elapsed(&self) -> Duration {
        match (self.cpu, cpu_time()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => self.wall.elapsed(),
        }
    }
}

/// Mean CPU time per call-second, and heap allocations in one warmed-up call-second.
struct Measured {
    per_call_second: Duration,
    allocations: usize,
}

/// Runs `call_second` repeatedly and measures it.
fn measure(mut call_second: impl FnMut()) -> Measured {
    // Warm up buffers, caches and the encoders' adaptive state.
    for _ in 0..3 {
        call_second();
    }
    // Counted apart from the timed loop: reading the CPU clock allocates.
    let region = Region::new(GLOBAL);
    call_second();
    let allocations = region.change().allocations;
    let clock = Clock::start();
    let mut runs = 0u32;
    while clock.elapsed() < BUDGET {
        call_second();
        runs += 1;
    }
    Measured {
        per_call_second: clock.elapsed() / runs,
        allocations,
    }
}

fn tone(rate: u32, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
        })
        .collect()
}

/// One second of 20 ms payloads of `codec`.
fn payloads(codec: AudioCodec) -> Vec<Vec<u8>> {
    let frame = codec.frame_samples(PTIME);
    let pcm = tone(codec.sample_rate(), frame * FRAMES);
    let mut enc = codec::encoder(codec).expect("encoder");
    pcm.chunks_exact(frame)
        .map(|chunk| {
            let mut buf = vec![0u8; codec.max_payload_bytes(PTIME)];
            let n = enc.encode(chunk, &mut buf).expect("encode");
            buf.truncate(n);
            buf
        })
        .collect()
}

/// Both directions of a transcoded call between `a` and `b`.
fn bench_transcode(a: AudioCodec, b: AudioCodec) -> Measured {
    let a_in = payloads(a);
    let b_in = payloads(b);
    let mut ab = Transcoder::new(a, b, PTIME).expect("transcoder");
    let mut ba = Transcoder::new(b, a, PTIME).expect("transcoder");
    let mut buf = vec![0u8; ab.max_output_bytes().max(ba.max_output_bytes())];
    measure(|| {
        for (pa, pb) in a_in.iter().zip(&b_in) {
            black_box(ab.process(black_box(pa), &mut buf).expect("a->b"));
            black_box(ba.process(black_box(pb), &mut buf).expect("b->a"));
        }
    })
}

fn side(codec: AudioCodec, pt: u8, port: u16) -> SideParams {
    SideParams {
        remote: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        codec,
        pt,
        clock_rate: codec.rtp_clock_rate(),
        dtmf_pt: None,
    }
}

/// Both directions of a transcoded call through the sans-IO relay, packets arriving on
/// a steady 20 ms clock: transcoded on arrival (`buffered: false`, the driver's
/// transcoder) or played out through the jitter buffer and `handle_timeout`.
fn bench_relay(a: AudioCodec, b: AudioCodec, buffered: bool) -> Measured {
    let (pa, pb) = (payloads(a), payloads(b));
    let config = RelayConfig {
        transcode_jitter: if buffered {
            RelayConfig::default().transcode_jitter
        } else {
            None
        },
        ..RelayConfig::default()
    };
    let (sa, sb) = (side(a, 0, 4000), side(b, 8, 5000));
    let mut relay = Relay::new(sa, sb, config, &mut StdRng::seed_from_u64(1));
    let mut tcs = [
        Transcoder::new(a, b, PTIME).expect("transcoder"),
        Transcoder::new(b, a, PTIME).expect("transcoder"),
    ];
    let start = Instant::now();
    let mut n: u32 = 0;
    let mut pkt = [0u8; 1500];
    let mut out = [0u8; 1500];
    measure(move || {
        for (xa, xb) in pa.iter().zip(&pb) {
            let now = start + Duration::from_millis(20 * u64::from(n));
            for (from, params, payload) in [(Side::A, sa, xa), (Side::B, sb, xb)] {
                let h = RtpHeader {
                    marker: false,
                    pt: params.pt,
                    seq: n as u16,
                    timestamp: n.wrapping_mul(params.codec.timestamp_step(PTIME)),
                    ssrc: 7,
                };
                let len = write_packet(&mut pkt, &h, payload).expect("packet");
                let src = params.remote.expect("remote");
                let v = relay.handle_packet(now, from, src, &mut pkt, len);
                if let Verdict::Transcode { payload, .. } = v {
                    let tc = &mut tcs[usize::from(from == Side::B)];
                    black_box(tc.process(&pkt[payload], &mut out).expect("transcode"));
                }
            }
            while let Some(t) = relay.handle_timeout(now, &mut out) {
                black_box(t);
            }
            n += 1;
        }
    })
}

/// Both directions of rate conversion between `a` and `b` Hz.
fn bench_resample(a: u32, b: u32) -> Measured {
    let mut up = Resampler::new(a, b).expect("resampler");
    let mut down = Resampler::new(b, a).expect("resampler");
    let a_pcm = tone(a, up.input_frame_len());
    let b_pcm = tone(b, down.input_frame_len());
    let mut a_out = vec![0i16; down.output_frame_len()];
    let mut b_out = vec![0i16; up.output_frame_len()];
    measure(|| {
        for _ in 0..FRAMES {
            black_box(up.process(black_box(&a_pcm), &mut b_out).expect("up"));
            black_box(down.process(black_box(&b_pcm), &mut a_out).expect("down"));
        }
    })
}

/// A table row: label and the measurement that fills it.
type Row = (&'static str, fn() -> Measured);

fn main() {
    let rows: [Row; 11] = [
        ("PCMU <-> PCMA", || {
            bench_transcode(AudioCodec::Pcmu, AudioCodec::Pcma)
        }),
        ("PCMU <-> G.722", || {
            bench_transcode(AudioCodec::Pcmu, AudioCodec::G722)
        }),
        ("PCMU <-> Opus", || bench_transcode(AudioCodec::Pcmu, OPUS)),
        ("G.722 <-> Opus", || bench_transcode(AudioCodec::G722, OPUS)),
        ("relay PCMU<->PCMA direct", || {
            bench_relay(AudioCodec::Pcmu, AudioCodec::Pcma, false)
        }),
        ("relay PCMU<->PCMA jb", || {
            bench_relay(AudioCodec::Pcmu, AudioCodec::Pcma, true)
        }),
        ("relay PCMU<->Opus direct", || {
            bench_relay(AudioCodec::Pcmu, OPUS, false)
        }),
        ("relay PCMU<->Opus jb", || {
            bench_relay(AudioCodec::Pcmu, OPUS, true)
        }),
        ("resample 8 <-> 16 kHz", || bench_resample(8_000, 16_000)),
        ("resample 8 <-> 24 kHz", || bench_resample(8_000, 24_000)),
        ("resample 16 <-> 48 kHz", || bench_resample(16_000, 48_000)),
    ];
    let source = if cpu_time().is_some() {
        "thread CPU time"
    } else {
        "wall time"
    };
    println!("per call-second = 50 frames of 20 ms each way ({source})");
    println!(
        "{:<24} {:>14} {:>12} {:>16} {:>14}",
        "path", "µs/call-sec", "µs/frame", "calls per core", "allocs/call-s"
    );
    for (name, run) in &rows {
        let m = run();
        let us = m.per_call_second.as_secs_f64() * 1e6;
        let per_frame = us / (2 * FRAMES) as f64;
        let calls = 1e6 / us;
        let allocs = m.allocations;
        println!("{name:<24} {us:>14.1} {per_frame:>12.2} {calls:>16.0} {allocs:>14}");
    }
}
