//! Adaptive receive jitter buffer for one RTP stream. The delay estimate follows the
//! RFC 3550 §6.4.1 / Appendix A.8 interarrival jitter; playout is one frame per frame
//! duration.
//!
//! In: packets with their arrival time ([`JitterBuffer::push`]) and the caller's clock
//! ([`JitterBuffer::pop`]). Out: one [`Playout`] per frame duration, in sequence order:
//! a frame, a lost frame the caller conceals, or a gap (delay growth, sender silence).
//!
//! Timing model: all times are in RTP timestamp units since the first packet after a
//! reset (`epoch`). A packet's *transit* is arrival minus its (unwrapped) timestamp;
//! the frame with timestamp `X` is due at `X + play_offset`. The fastest recent packet
//! (minimum transit) defines the buffering delay `play_offset - min_transit`, which is
//! steered towards a target `clamp(max(K·J + frame, spread + frame/2), min, max)`, where
//! `spread` is the largest recent transit above the minimum (so the target does not dip
//! below what recent packets needed and shrink into late packets), raised at once to
//! cover any packet that arrived after its playout time. Growing inserts a
//! [`Playout::Gap`], and only for what packets actually needed (the spread, a late
//! packet): the noisy `K·J` term keeps the delay from shrinking but never makes a gap
//! by itself. Shrinking discards one queued frame at most every [`SHRINK_EVERY`] frames.
//!
//! A missing sequence number is placed by the timestamp of the next buffered packet:
//! lost at its own slot, or a gap if the sender paused before it. With nothing
//! buffered (underrun) the frame is reported lost and the buffer keeps waiting for the
//! same sequence number; if it turns up after its slot it is dropped as late. After
//! `max_delay + 1 s` of underrun the buffer re-fills from the next packet.
//!
//! Payloads are copied into a pool of `max_packets` slots allocated up front (a slot's
//! buffer grows only if a payload is bigger than any before), indexed by
//! `seq % max_packets`: nothing allocates per packet after warm-up.

use std::time::{Duration, Instant};

/// Multiplier of the jitter estimate in the target delay.
const JITTER_K: f64 = 3.0;
/// Frames between two shrink steps (500 ms at 20 ms frames): shrink slowly.
pub const SHRINK_EVERY: u32 = 25;
/// Per-packet decay of the late-packet boost (half-life ~3.5 s at 50 packets/s).
const BOOST_DECAY: f64 = 1.0 / 256.0;
/// Packets per minimum-transit window; the minimum is over the last two windows so
/// clock drift and route changes age out.
const WINDOW: u32 = 128;
/// Packets this far behind the playout point still count as late, not as a restart.
const MAX_MISORDER: i32 = 100;
/// Initial payload capacity of each slot (a 20 ms G.711 frame is 160 bytes).
const SLOT_CAPACITY: usize = 320;

/// Buffer parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// RTP clock rate of the payload (8000 for G.711).
    pub clock_rate: u32,
    /// Timestamp units per packet (160 for 20 ms of G.711).
    pub frame_ts: u32,
    /// Lowest target delay.
    pub min_delay_ms: u32,
    /// Highest target delay.
    pub max_delay_ms: u32,
    /// Slots in the pool: packets further ahead of the playout point resynchronise.
    pub max_packets: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            clock_rate: 8000,
            frame_ts: 160,
            min_delay_ms: 20,
            max_delay_ms: 200,
            max_packets: 64,
        }
    }
}

/// What to play for the current frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout<'a> {
    /// The buffer is still filling (or has no stream): play silence.
    Nothing,
    /// The frame with this timestamp.
    Frame {
        /// RTP timestamp of the frame.
        ts: u32,
        /// Its payload, valid until the next call on the buffer.
        payload: &'a [u8],
    },
    /// No packet for this frame: lost, not yet arrived (it will be dropped as late),
    /// or, when the buffer ran dry, possibly sender silence. Conceal it.
    Lost {
        /// Timestamp the frame would have had.
        ts: u32,
    },
    /// No frame is missing, but nothing plays now: the buffer grows its delay, or the
    /// sender paused (timestamps jumped ahead). Play comfort noise or conceal.
    Gap {
        /// Timestamp of the playout point (the next frame's).
        ts: u32,
    },
}

/// Counters since creation (resets do not clear them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    /// Packets pushed.
    pub received: u64,
    /// Frames returned as [`Playout::Frame`].
    pub played: u64,
    /// Frames returned as [`Playout::Lost`] (concealed), including underruns.
    pub lost: u64,
    /// Packets dropped because their frame's playout time had passed.
    pub late: u64,
    /// Packets dropped as copies of one already buffered or played.
    pub duplicates: u64,
    /// Frames thrown away to shrink the delay.
    pub discarded: u64,
    /// [`Playout::Gap`]s returned.
    pub gaps: u64,
    /// Restarts (SSRC change, sequence/timestamp jump, overflow, long underrun).
    pub resets: u64,
    /// Buffering delay of the fastest recent packets.
    pub current_delay_ms: u32,
    /// Delay the buffer steers towards.
    pub target_delay_ms: u32,
}

#[derive(Debug, Clone)]
struct Slot {
    used: bool,
    seq: u16,
    ts: u32,
    data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No packet since creation or since a long underrun.
    Idle,
    /// Holding packets until the first frame is due.
    Buffering,
    Playing,
}

/// Adaptive jitter buffer for one stream (see the module docs).
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    slots: Vec<Slot>,
    state: State,
    ssrc: u32,
    epoch: Option<Instant>,
    /// Next sequence number to play and its timestamp (wrapped and unwrapped).
    next_seq: u16,
    play_ts: u32,
    play_ext: i64,
    /// Frame with unwrapped timestamp X is due at X + play_offset (timestamp units).
    play_offset: i64,
    highest_seq: u16,
    count: usize,
    /// Bit i set: seq `next_seq - 1 - i` was played (tells duplicates from late ones).
    history: u64,
    /// RFC 3550 interarrival jitter, timestamp units.
    jitter: f64,
    last_transit: Option<i64>,
    win_min: [i64; 2],
    /// Largest transit above the minimum, over the same two windows.
    win_spread: [i64; 2],
    win_count: u32,
    boost: f64,
    target: i64,
    /// The part of `target` the delay grows for: spread and late-packet boost.
    need: i64,
    since_shrink: u32,
    empty_run: u32,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer with its slot pool allocated.
    pub fn new(cfg: JitterConfig) -> Self {
        let cfg = JitterConfig {
            clock_rate: cfg.clock_rate.max(1),
            frame_ts: cfg.frame_ts.max(1),
            max_delay_ms: cfg.max_delay_ms.max(cfg.min_delay_ms),
            max_packets: cfg.max_packets.max(2),
            ..cfg
        };
        let slots = (0..cfg.max_packets)
            .map(|_| Slot {
                used: false,
                seq: 0,
                ts: 0,
                data: Vec::with_capacity(SLOT_CAPACITY),
            })
            .collect();
        let mut jb = JitterBuffer {
            cfg,
            slots,
            state: State::Idle,
            ssrc: 0,
            epoch: None,
            next_seq: 0,
            play_ts: 0,
            play_ext: 0,
            play_offset: 0,
            highest_seq: 0,
            count: 0,
            history: 0,
            jitter: 0.0,
            last_transit: None,
            win_min: [i64::MAX; 2],
            win_spread: [0; 2],
            win_count: 0,
            boost: 0.0,
            target: 0,
            need: 0,
            since_shrink: 0,
            empty_run: 0,
            stats: JitterStats::default(),
        };
        jb.target = jb.initial_target();
        jb.need = jb.target;
        jb
    }

    fn ms_to_ts(&self, ms: u32) -> i64 {
        i64::from(ms) * i64::from(self.cfg.clock_rate) / 1000
    }

    fn ts_to_ms(&self, ts: i64) -> u32 {
        u32::try_from(ts.max(0) * 1000 / i64::from(self.cfg.clock_rate)).unwrap_or(u32::MAX)
    }

    fn frame(&self) -> i64 {
        i64::from(self.cfg.frame_ts)
    }

    fn min_ts(&self) -> i64 {
        self.ms_to_ts(self.cfg.min_delay_ms)
    }

    fn max_ts(&self) -> i64 {
        self.ms_to_ts(self.cfg.max_delay_ms)
    }

    /// Three frames until the first jitter estimate says otherwise.
    fn initial_target(&self) -> i64 {
        (3 * self.frame()).clamp(self.min_ts(), self.max_ts())
    }

    fn min_transit(&self) -> i64 {
        let m = self.win_min[0].min(self.win_min[1]);
        if m == i64::MAX { 0 } else { m }
    }

    /// Timestamp units elapsed since the epoch.
    fn units(&self, now: Instant) -> i64 {
        let Some(epoch) = self.epoch else { return 0 };
        let ns = now.saturating_duration_since(epoch).as_nanos();
        i64::try_from(ns * u128::from(self.cfg.clock_rate) / 1_000_000_000).unwrap_or(i64::MAX)
    }

    /// The instant at which `units` have elapsed (rounded up, so that
    /// `units(instant_of(u)) >= u`).
    fn instant_of(&self, units: i64) -> Option<Instant> {
        let epoch = self.epoch?;
        let u = u128::try_from(units.max(0)).unwrap_or(0);
        let rate = u128::from(self.cfg.clock_rate);
        let ns = (u * 1_000_000_000).div_ceil(rate);
        Some(epoch + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    /// Counters, with the current and target delay.
    pub fn stats(&self) -> JitterStats {
        let mut s = self.stats;
        s.current_delay_ms = match self.state {
            State::Idle => 0,
            _ => self.ts_to_ms(self.play_offset - self.min_transit()),
        };
        s.target_delay_ms = self.ts_to_ms(self.target);
        s
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Slots in the pool (the memory bound: never more packets than this are held).
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn clear_slots(&mut self) {
        for s in &mut self.slots {
            s.used = false;
        }
        self.count = 0;
    }

    /// Starts over with this packet as the first of a stream.
    fn reset(&mut self, now: Instant, seq: u16, ts: u32, ssrc: u32) {
        self.stats.resets += u64::from(self.epoch.is_some());
        self.clear_slots();
        self.state = State::Buffering;
        self.ssrc = ssrc;
        self.epoch = Some(now);
        self.next_seq = seq;
        self.highest_seq = seq;
        self.play_ts = ts;
        self.play_ext = 0;
        self.history = 0;
        self.last_transit = None;
        self.win_min = [i64::MAX; 2];
        self.win_spread = [0; 2];
        self.win_count = 0;
        self.boost = 0.0;
        self.jitter = 0.0;
        self.target = self.initial_target();
        self.need = self.target;
        self.play_offset = self.target;
        self.since_shrink = 0;
        self.empty_run = 0;
    }

    /// Takes one packet (a copy of `payload` is kept). Late packets, duplicates and
    /// packets beyond the pool are counted and dropped; a new SSRC or a jump in
    /// sequence number or timestamp restarts the buffer.
    pub fn push(&mut self, now: Instant, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) {
        self.stats.received += 1;
        if self.state == State::Idle || ssrc != self.ssrc {
            self.reset(now, seq, ts, ssrc);
        }
        let d = i32::from(seq.wrapping_sub(self.next_seq) as i16);
        let dts = i64::from(ts.wrapping_sub(self.play_ts) as i32);
        let expected = i64::from(d) * self.frame();
        let jump = i64::from(self.cfg.clock_rate) * 2 + self.max_ts();
        let cap = i32::try_from(self.slots.len()).unwrap_or(i32::MAX);
        if d >= cap || d < -MAX_MISORDER - cap || (dts - expected).abs() > jump {
            self.reset(now, seq, ts, ssrc);
            return self.store(now, seq, ts, 0, payload);
        }
        if d < 0 {
            let behind_highest = i32::from(self.highest_seq.wrapping_sub(seq));
            if self.state == State::Buffering && behind_highest < cap {
                // Reordered before playout started: move the playout point back to it.
                self.next_seq = seq;
                self.play_ts = ts;
                self.play_ext += dts;
                return self.store(now, seq, ts, 0, payload);
            }
            let back = u32::try_from(-d - 1).unwrap_or(u32::MAX);
            if back < 64 && self.history & (1u64 << back) != 0 {
                self.stats.duplicates += 1;
            } else {
                self.stats.late += 1;
                self.observe(now, self.play_ext + dts);
            }
            return;
        }
        self.store(now, seq, ts, dts, payload);
    }

    fn store(&mut self, now: Instant, seq: u16, ts: u32, dts: i64, payload: &[u8]) {
        let idx = usize::from(seq) % self.slots.len();
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if slot.used && slot.seq == seq {
            self.stats.duplicates += 1;
            return;
        }
        if !slot.used {
            self.count += 1;
        }
        slot.used = true;
        slot.seq = seq;
        slot.ts = ts;
        slot.data.clear();
        slot.data.extend_from_slice(payload);
        if (seq.wrapping_sub(self.highest_seq) as i16) > 0 {
            self.highest_seq = seq;
        }
        self.observe(now, self.play_ext + dts);
    }

    /// Updates jitter, minimum transit and target from one arrival of the frame with
    /// unwrapped timestamp `ext`.
    fn observe(&mut self, now: Instant, ext: i64) {
        let transit = self.units(now) - ext;
        if let Some(last) = self.last_transit {
            // RFC 3550 A.8: J += (|D| - J) / 16.
            let d = (transit - last).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        self.win_min[1] = self.win_min[1].min(transit);
        self.win_count += 1;
        let spread_ts = transit - self.min_transit();
        self.win_spread[1] = self.win_spread[1].max(spread_ts);
        if self.win_count >= WINDOW {
            self.win_min = [self.win_min[1], i64::MAX];
            self.win_spread = [self.win_spread[1], 0];
            self.win_count = 0;
        }
        let spread = spread_ts as f64;
        if transit > self.play_offset {
            // Arrived after (or too close to) its playout time: grow at once.
            self.boost = self.boost.max(spread + f64::from(self.cfg.frame_ts) / 2.0);
        }
        self.boost -= self.boost * BOOST_DECAY;
        let from_jitter = (JITTER_K * self.jitter) as i64 + self.frame();
        let from_spread = self.win_spread[0].max(self.win_spread[1]) + self.frame() / 2;
        self.need = from_spread
            .max(self.boost as i64)
            .clamp(self.min_ts(), self.max_ts());
        self.target = from_jitter
            .max(self.need)
            .clamp(self.min_ts(), self.max_ts());
        if self.state == State::Buffering {
            self.play_offset = self.min_transit() + self.target;
        }
    }

    /// When the next [`pop`](Self::pop) has something to do: the next frame's playout
    /// time, or the end of the initial fill. `None` without a stream.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle => None,
            _ => self.instant_of(self.play_ext + self.play_offset),
        }
    }

    fn slot_of(&self, seq: u16) -> Option<usize> {
        let idx = usize::from(seq) % self.slots.len();
        let s = self.slots.get(idx)?;
        (s.used && s.seq == seq).then_some(idx)
    }

    /// Gives up sequence number `next_seq` (played or not) without moving the clock.
    fn next_seq_done(&mut self, played: bool) {
        if let Some(idx) = self.slot_of(self.next_seq)
            && let Some(s) = self.slots.get_mut(idx)
        {
            s.used = false;
            self.count = self.count.saturating_sub(1);
        }
        self.history = (self.history << 1) | u64::from(played);
        self.next_seq = self.next_seq.wrapping_add(1);
    }

    /// Moves the playout clock one frame on.
    fn tick(&mut self) {
        self.play_ts = self.play_ts.wrapping_add(self.cfg.frame_ts);
        self.play_ext += self.frame();
    }

    /// Sequence distance and timestamp of the first buffered packet after `next_seq`.
    fn first_buffered(&self) -> Option<(u16, u32)> {
        let cap = u16::try_from(self.slots.len()).unwrap_or(u16::MAX);
        (1..cap).find_map(|k| {
            let idx = self.slot_of(self.next_seq.wrapping_add(k))?;
            self.slots.get(idx).map(|s| (k, s.ts))
        })
    }

    /// The frame due at `now`: `None` if none is due yet (wait for
    /// [`poll_timeout`](Self::poll_timeout)), `Some(Playout::Nothing)` while filling.
    /// Each call plays at most one frame; a caller that fell behind calls again.
    pub fn pop(&mut self, now: Instant) -> Option<Playout<'_>> {
        if self.state == State::Idle {
            return Some(Playout::Nothing);
        }
        let due = self.play_ext + self.play_offset;
        if self.units(now) < due {
            return match self.state {
                State::Buffering => Some(Playout::Nothing),
                _ => None,
            };
        }
        self.state = State::Playing;
        let frame = self.frame();
        let current = self.play_offset - self.min_transit();
        self.since_shrink = self.since_shrink.saturating_add(1);

        if current + frame / 2 <= self.need {
            self.play_offset += frame;
            self.stats.gaps += 1;
            return Some(Playout::Gap { ts: self.play_ts });
        }
        if current > self.target + frame + frame / 2
            && self.since_shrink >= SHRINK_EVERY
            && self.slot_of(self.next_seq.wrapping_add(1)).is_some()
            && self
                .slot_of(self.next_seq)
                .and_then(|i| self.slots.get(i))
                .is_some_and(|s| s.ts == self.play_ts)
        {
            // Drop one queued frame; the next one is due at the same instant.
            self.next_seq_done(false);
            self.tick();
            self.play_offset -= frame;
            self.stats.discarded += 1;
            self.since_shrink = 0;
        }

        // Each pass gives up one sequence number or returns, so this ends.
        loop {
            let ts = self.play_ts;
            if let Some(idx) = self.slot_of(self.next_seq) {
                self.empty_run = 0;
                let slot_ts = self.slots.get(idx).map_or(ts, |s| s.ts);
                let ahead = slot_ts.wrapping_sub(ts) as i32;
                if ahead < 0 {
                    // Its frame time passed (concealed during an underrun): too late.
                    self.next_seq_done(false);
                    self.stats.late += 1;
                    continue;
                }
                self.tick();
                if ahead > 0 {
                    // Timestamps ran ahead with no sequence gap: the sender paused.
                    self.stats.gaps += 1;
                    return Some(Playout::Gap { ts });
                }
                self.next_seq_done(true);
                self.stats.played += 1;
                let payload = self.slots.get(idx).map_or(&[][..], |s| s.data.as_slice());
                return Some(Playout::Frame { ts, payload });
            }
            if let Some((k, later_ts)) = self.first_buffered() {
                // `next_seq` is missing; place it by the timestamp of a later packet.
                self.empty_run = 0;
                let missing_ts = later_ts.wrapping_sub(u32::from(k) * self.cfg.frame_ts);
                let ahead = missing_ts.wrapping_sub(ts) as i32;
                if ahead < 0 {
                    // Its slot was already concealed during an underrun.
                    self.next_seq_done(false);
                    continue;
                }
                self.tick();
                if ahead > 0 {
                    self.stats.gaps += 1;
                    return Some(Playout::Gap { ts });
                }
                self.next_seq_done(false);
                self.stats.lost += 1;
                return Some(Playout::Lost { ts });
            }
            // Underrun: lost, late or the sender is silent; conceal and keep waiting
            // for `next_seq`.
            self.empty_run += 1;
            if i64::from(self.empty_run) * frame > self.max_ts() + self.ms_to_ts(1000) {
                // The sender stopped: re-buffer from its next packet.
                self.state = State::Idle;
                self.clear_slots();
                return Some(Playout::Nothing);
            }
            self.tick();
            self.stats.lost += 1;
            return Some(Playout::Lost { ts });
        }
    }
}
