//! Jitter buffer on a virtual clock, fed by a seeded netem-like sender: 20 ms packets,
//! random delay, loss and reordering. The driver jumps to the earlier of the next
//! arrival and the buffer's `poll_timeout`.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use media::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

/// The virtual clock's zero. Only its offsets matter; reading the real clock once for
/// a base is the sole way to get an `Instant`.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

const FRAME: Duration = Duration::from_millis(20);
const SSRC: u32 = 0xabcd_0001;

#[derive(Debug, Clone)]
struct Pkt {
    at: Duration,
    seq: u16,
    ts: u32,
    ssrc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Frame(u32),
    Lost(u32),
    Gap(u32),
}

/// Payload carrying its own timestamp, so the test can check what plays.
fn payload(ts: u32) -> [u8; 160] {
    let mut p = [0x55u8; 160];
    p[..4].copy_from_slice(&ts.to_be_bytes());
    p
}

struct Sender {
    rng: StdRng,
    seq: u16,
    ts: u32,
    sent: u64,
    /// Timestamps sent but dropped by the network.
    dropped: HashSet<u32>,
}

impl Sender {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        Sender {
            seq: rng.random(),
            ts: rng.random(),
            rng,
            sent: 0,
            dropped: HashSet::new(),
        }
    }

    /// `n` packets from the current send time with delay U(0, jitter_ms), `loss`
    /// probability, and `reorder` probability of an extra 30 ms hold.
    fn send(&mut self, n: u32, jitter_ms: u64, loss: f64, reorder: f64) -> Vec<Pkt> {
        let mut out = Vec::new();
        for _ in 0..n {
            let sent_at = FRAME * u32::try_from(self.sent).unwrap();
            let (seq, ts) = (self.seq, self.ts);
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(160);
            self.sent += 1;
            if self.rng.random_bool(loss) {
                self.dropped.insert(ts);
                continue;
            }
            let mut delay = Duration::from_micros(self.rng.random_range(0..=jitter_ms * 1000));
            if self.rng.random_bool(reorder) {
                delay += Duration::from_millis(30);
            }
            out.push(Pkt {
                at: sent_at + Duration::from_millis(30) + delay,
                seq,
                ts,
                ssrc: SSRC,
            });
        }
        out
    }
}

struct Run {
    outs: Vec<(Duration, Out)>,
    /// current_delay_ms sampled at each playout.
    delays: Vec<(Duration, u32)>,
}

/// Feeds `pkts` (any order) and pops whenever due until `end`.
fn drive(jb: &mut JitterBuffer, start: Instant, mut pkts: Vec<Pkt>, end: Duration) -> Run {
    pkts.sort_by_key(|p| p.at);
    let mut run = Run {
        outs: Vec::new(),
        delays: Vec::new(),
    };
    let mut i = 0;
    loop {
        let arrival = pkts.get(i).map(|p| start + p.at);
        let due = jb.poll_timeout();
        let now = match (arrival, due) {
            (Some(a), Some(d)) => a.min(d),
            (Some(a), None) => a,
            (None, Some(d)) => d,
            (None, None) => break,
        };
        if now > start + end {
            break;
        }
        if arrival == Some(now) {
            let p = &pkts[i];
            jb.push(now, p.seq, p.ts, p.ssrc, &payload(p.ts));
            i += 1;
            continue;
        }
        let t = now - start;
        let out = match jb.pop(now) {
            None => panic!("pop at poll_timeout returned None"),
            Some(Playout::Nothing) => continue,
            Some(Playout::Frame { ts, payload: p }) => {
                assert_eq!(p[..160], payload(ts)[..], "payload belongs to its frame");
                Out::Frame(ts)
            }
            Some(Playout::Lost { ts }) => Out::Lost(ts),
            Some(Playout::Gap { ts }) => Out::Gap(ts),
        };
        run.outs.push((t, out));
        run.delays.push((t, jb.stats().current_delay_ms));
        // Playout is one frame per frame duration.
        if let Some(next) = jb.poll_timeout() {
            assert!(next > now, "next playout must be later than this one");
        }
    }
    run
}

fn config() -> JitterConfig {
    JitterConfig {
        clock_rate: 8000,
        frame_ts: 160,
        min_delay_ms: 20,
        max_delay_ms: 200,
        max_packets: 64,
    }
}

/// Checks ordering, uniqueness and that every reported loss is a real one.
fn check_stream(run: &Run, sender: &Sender, pkts: &[Pkt], stats: &JitterStats) {
    let arrival: BTreeMap<u32, Duration> = pkts.iter().map(|p| (p.ts, p.at)).collect();
    let mut last: Option<u32> = None;
    let mut seen = HashSet::new();
    let (mut frames, mut lost, mut tail) = (0u64, 0u64, 0u64);
    for &(t, out) in &run.outs {
        // Concealment after the sender's last packet is not a network loss.
        if let Out::Lost(ts) = out
            && (ts.wrapping_sub(sender.ts) as i32) >= 0
        {
            tail += 1;
            continue;
        }
        let ts = match out {
            Out::Gap(_) => continue,
            Out::Frame(ts) => {
                frames += 1;
                ts
            }
            Out::Lost(ts) => {
                lost += 1;
                // Missing on the network, or arrived only after its slot was given up.
                let real =
                    sender.dropped.contains(&ts) || arrival.get(&ts).is_some_and(|&a| a >= t);
                assert!(
                    real,
                    "loss reported for ts {ts} that had arrived at {:?} (t={t:?})",
                    arrival.get(&ts)
                );
                ts
            }
        };
        assert!(seen.insert(ts), "ts {ts} played twice");
        if let Some(prev) = last {
            let step = ts.wrapping_sub(prev);
            assert!(
                step > 0 && step < 0x8000_0000,
                "out of order: {prev} then {ts}"
            );
            // Every frame in between was discarded by a shrink step.
            assert_eq!(step % 160, 0);
        }
        last = Some(ts);
    }
    assert_eq!(frames, stats.played);
    assert_eq!(lost + tail, stats.lost);
    // Every frame between the first and last output is accounted for exactly once.
    let first = run.outs.iter().find_map(|o| match o.1 {
        Out::Frame(ts) | Out::Lost(ts) => Some(ts),
        Out::Gap(_) => None,
    });
    if let (Some(first), Some(last)) = (first, last) {
        let span = u64::from(last.wrapping_sub(first) / 160) + 1;
        assert_eq!(span, frames + lost + stats.discarded);
        // Every packet the network dropped inside that span was reported lost.
        for &ts in &sender.dropped {
            let off = ts.wrapping_sub(first);
            if off <= last.wrapping_sub(first) {
                assert!(
                    run.outs.iter().any(|o| o.1 == Out::Lost(ts)),
                    "dropped ts {ts} not reported lost"
                );
            }
        }
    }
}

#[test]
fn netem_stream_plays_in_order_and_reports_losses() {
    for seed in [1u64, 2, 3, 4] {
        let mut sender = Sender::new(seed);
        let pkts = sender.send(3000, 60, 0.02, 0.01);
        let mut jb = JitterBuffer::new(config());
        let start = origin();
        // Stop right after the last packet's slot, so the tail isn't counted as lost.
        let run = drive(&mut jb, start, pkts.clone(), FRAME * 3010);
        let stats = jb.stats();
        check_stream(&run, &sender, &pkts, &stats);
        assert_eq!(stats.received, pkts.len() as u64);
        assert_eq!(stats.duplicates, 0);
        assert_eq!(stats.resets, 0);
        // The buffer adapted: late packets are rare (< 1 %), and loss is about 2 %.
        assert!(stats.late * 100 < stats.received, "seed {seed}: {stats:?}");
        let loss = stats.lost as f64 / (stats.played + stats.lost) as f64;
        assert!(
            (0.01..0.04).contains(&loss),
            "seed {seed}: loss {loss}, {stats:?}"
        );
        assert!(stats.played > 2800, "{stats:?}");
        assert!(stats.current_delay_ms <= 200, "{stats:?}");
    }
}

#[test]
fn delay_adapts_up_under_jitter_and_back_down() {
    let mut sender = Sender::new(42);
    let mut pkts = sender.send(1000, 2, 0.0, 0.0); // 20 s calm
    pkts.extend(sender.send(1500, 60, 0.0, 0.0)); // 30 s of 0-60 ms jitter
    pkts.extend(sender.send(2000, 2, 0.0, 0.0)); // 40 s calm again
    let mut jb = JitterBuffer::new(config());
    let start = origin();
    let run = drive(&mut jb, start, pkts.clone(), FRAME * 4500);
    let stats = jb.stats();
    check_stream(&run, &sender, &pkts, &stats);

    let max_in = |from: u64, to: u64| {
        run.delays
            .iter()
            .filter(|(t, _)| (Duration::from_secs(from)..Duration::from_secs(to)).contains(t))
            .map(|d| d.1)
            .max()
            .unwrap()
    };
    let min_in = |from: u64, to: u64| {
        run.delays
            .iter()
            .filter(|(t, _)| (Duration::from_secs(from)..Duration::from_secs(to)).contains(t))
            .map(|d| d.1)
            .min()
            .unwrap()
    };
    let calm = max_in(15, 20);
    let jittery = min_in(40, 50);
    let calm_again = max_in(80, 90);
    assert!(calm <= 40, "calm delay {calm} ms");
    assert!(
        jittery >= 60,
        "delay under 0-60 ms jitter only {jittery} ms"
    );
    assert!(calm_again <= 40, "delay after calming {calm_again} ms");
    assert!(stats.discarded > 0 && stats.gaps > 0, "{stats:?}");
    // Late packets only while the delay was catching up.
    assert!(stats.late < 40, "{stats:?}");
}

#[test]
fn ssrc_change_resets() {
    let mut a = Sender::new(7);
    let mut pkts = a.send(100, 5, 0.0, 0.0);
    // A new source takes over right after, with unrelated seq/ts.
    let b_seq = pkts[0].seq.wrapping_add(30_000);
    let b_ts = pkts[0].ts.wrapping_add(1_000_000);
    for i in 0..100u16 {
        pkts.push(Pkt {
            at: FRAME * (100 + u32::from(i)) + Duration::from_millis(30),
            seq: b_seq.wrapping_add(i),
            ts: b_ts.wrapping_add(160 * u32::from(i)),
            ssrc: 0x0bad_cafe,
        });
    }
    let mut jb = JitterBuffer::new(config());
    let start = origin();
    let run = drive(&mut jb, start, pkts, FRAME * 200);
    let stats = jb.stats();
    assert_eq!(stats.resets, 1);
    assert_eq!(stats.late, 0);
    let frames: Vec<u32> = run
        .outs
        .iter()
        .filter_map(|o| match o.1 {
            Out::Frame(ts) => Some(ts),
            _ => None,
        })
        .collect();
    let switch = frames
        .iter()
        .position(|&ts| ts == b_ts)
        .expect("B's first frame played");
    // Nothing of A after B began, and B plays in order from its first packet.
    for (i, &ts) in frames[switch..].iter().enumerate() {
        assert_eq!(ts, b_ts.wrapping_add(160 * i as u32));
    }
    assert!(switch > 80, "most of A played before the change: {switch}");
}

#[test]
fn sequence_jump_resets() {
    let mut jb = JitterBuffer::new(config());
    let t0 = origin();
    jb.push(t0, 10, 1600, SSRC, &[1]);
    jb.push(t0 + FRAME, 11, 1760, SSRC, &[2]);
    // Same SSRC, sequence 5000 ahead (an RFC 3550 "restart").
    jb.push(t0 + FRAME * 2, 5011, 9_000_000, SSRC, &[3]);
    assert_eq!(jb.stats().resets, 1);
    assert_eq!(jb.len(), 1);
    let due = jb.poll_timeout().unwrap();
    assert!(due > t0 + FRAME * 2);
    assert_eq!(jb.pop(t0 + FRAME * 2), Some(Playout::Nothing));
    assert_eq!(
        jb.pop(due),
        Some(Playout::Frame {
            ts: 9_000_000,
            payload: &[3]
        })
    );
    // Timestamp leap of an hour with continuous seq also restarts.
    jb.push(
        due,
        5012,
        9_000_000u32.wrapping_add(8000 * 3600),
        SSRC,
        &[4],
    );
    assert_eq!(jb.stats().resets, 2);
}

#[test]
fn duplicates_dropped_and_counted() {
    let mut sender = Sender::new(9);
    let pkts = sender.send(500, 30, 0.0, 0.0);
    let mut doubled = pkts.clone();
    for p in &pkts {
        // Copies arrive 1-40 ms after the original: some while it is still buffered,
        // some after it played.
        let mut c = p.clone();
        c.at += Duration::from_millis(1 + u64::from(p.seq % 40));
        doubled.push(c);
    }
    let mut jb = JitterBuffer::new(config());
    let start = origin();
    let run = drive(&mut jb, start, doubled, FRAME * 510);
    let stats = jb.stats();
    check_stream(&run, &sender, &pkts, &stats);
    assert_eq!(stats.received, 1000);
    assert!(stats.duplicates >= 490, "{stats:?}");
}

#[test]
fn flood_is_bounded_by_max_packets() {
    let mut jb = JitterBuffer::new(config());
    let t0 = origin();
    // 10 000 in-sequence packets in one instant (a burst or an attack).
    for i in 0..10_000u32 {
        jb.push(t0, i as u16, i * 160, SSRC, &payload(i * 160));
        assert!(jb.len() <= jb.capacity());
    }
    assert_eq!(jb.capacity(), 64);
    assert!(jb.len() <= 64);
    // Random garbage of the same SSRC keeps it bounded and never panics.
    let mut rng = StdRng::seed_from_u64(99);
    let mut now = t0;
    for _ in 0..20_000 {
        now += Duration::from_micros(rng.random_range(0..3000));
        let len = rng.random_range(0..1400);
        let ts: u32 = rng.random();
        // Valid bodies (so whatever still plays afterwards checks out), some oversized.
        let mut body = payload(ts).to_vec();
        body.resize(len.max(160), 0x55);
        jb.push(now, rng.random(), ts, SSRC, &body);
        assert!(jb.len() <= 64);
        if let Some(due) = jb.poll_timeout()
            && due <= now
        {
            let _ = jb.pop(now);
        }
    }
    // After the flood a clean stream plays normally again.
    let mut sender = Sender::new(5);
    let pkts = sender.send(200, 10, 0.0, 0.0);
    let start = now + Duration::from_secs(5);
    let run = drive(&mut jb, start, pkts, FRAME * 210);
    let frames = run
        .outs
        .iter()
        .filter(|o| matches!(o.1, Out::Frame(_)))
        .count();
    assert!(frames > 180, "{frames}");
}

#[test]
fn idle_buffer_plays_nothing() {
    let mut jb = JitterBuffer::new(config());
    let t0 = origin();
    assert_eq!(jb.poll_timeout(), None);
    assert_eq!(jb.pop(t0), Some(Playout::Nothing));
    jb.push(t0, 1, 160, SSRC, &[9; 160]);
    // Still filling: nothing yet, and the first frame is due within the target delay.
    assert_eq!(
        jb.pop(t0 + Duration::from_millis(5)),
        Some(Playout::Nothing)
    );
    let due = jb.poll_timeout().unwrap();
    assert!(due >= t0 + Duration::from_millis(20) && due <= t0 + Duration::from_millis(200));
    assert!(matches!(jb.pop(due), Some(Playout::Frame { ts: 160, .. })));
    // Not due again until one frame later.
    assert_eq!(jb.pop(due), None);
    assert_eq!(jb.poll_timeout(), Some(due + FRAME));
}

#[test]
fn sender_silence_is_concealed_and_talk_resumes() {
    // 1 s of talk, 500 ms of silence (timestamps jump, sequence numbers don't), 1 s more.
    let mut pkts = Vec::new();
    for i in 0..100u32 {
        let pause = if i >= 50 { 25 } else { 0 };
        pkts.push(Pkt {
            at: FRAME * (i + pause) + Duration::from_millis(u64::from(i % 3) * 4),
            seq: 65_500u16.wrapping_add(i as u16),
            ts: 1_000 + 160 * (i + pause),
            ssrc: SSRC,
        });
    }
    let mut jb = JitterBuffer::new(config());
    let start = origin();
    let run = drive(
        &mut jb,
        start,
        pkts,
        FRAME * 125 + Duration::from_millis(150),
    );
    let stats = jb.stats();
    assert_eq!((stats.late, stats.resets), (0, 0), "{stats:?}");
    assert_eq!(stats.played, 100);
    // Every silent frame is concealed exactly once at its own timestamp: as lost while
    // the buffer ran dry (nothing tells silence from loss then), as a gap once the
    // next talkspurt's first packet showed where it starts.
    let in_pause = |ts: u32| ts > 1_000 + 160 * 49 && ts < 1_000 + 160 * 75;
    let mut silent: Vec<u32> = run
        .outs
        .iter()
        .filter_map(|o| match o.1 {
            Out::Lost(ts) | Out::Gap(ts) if in_pause(ts) => Some(ts),
            // Only the tail after the last packet may be concealed outside the pause.
            Out::Lost(ts) => {
                assert!(ts > 1_000 + 160 * 124, "lost {ts} outside the pause");
                None
            }
            _ => None,
        })
        .collect();
    silent.dedup();
    let expect: Vec<u32> = (50..75).map(|i| 1_000 + 160 * i).collect();
    assert_eq!(silent, expect);
    let frames: Vec<u32> = run
        .outs
        .iter()
        .filter_map(|o| match o.1 {
            Out::Frame(ts) => Some(ts),
            _ => None,
        })
        .collect();
    assert!(frames.windows(2).all(|w| w[1] > w[0]));
}
