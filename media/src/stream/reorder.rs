//! The uplink's jitter buffer: RTP packets back in sequence order with no added delay
//! while they arrive in order.
//!
//! A playout jitter buffer (`crate::jitter`) holds every packet for a target delay so a
//! loudspeaker never starves; an agent's socket needs no such smoothing (its recogniser
//! reads whatever arrives), only complete audio in order. So a packet in sequence is
//! released the moment it arrives; one that comes after a gap is held until the missing
//! packet shows up or a second packet after the gap arrives (about one packet time),
//! then the missing ones are given up as lost (the caller conceals them). Late and
//! duplicate packets are dropped. A pause of the sender (timestamps jump with no
//! sequence gap, e.g. silence suppression) comes out as silence frames, so media time
//! stays in step with the call.

/// Packets held past a gap before the missing ones are given up.
const HOLD: usize = 2;
/// Packets this far from the expected one (either way) restart the stream: a new
/// sender or a jump.
const MAX_JUMP: i32 = 100;
/// Most silence put in for one pause (longer pauses only advance media time).
pub const MAX_SILENCE_FRAMES: u32 = 50;

/// What to hand on, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release<'a> {
    /// A packet's payload, `ts_len` RTP units long.
    Packet { payload: &'a [u8], ts_len: u32 },
    /// `count` packets never came: conceal them (each as long as the packet after).
    Lost { count: u32, ts_len: u32 },
    /// The sender paused for `ts_len` RTP units.
    Pause { ts_len: u32 },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReorderStats {
    pub released: u64,
    /// Held behind a gap (then released in order).
    pub reordered: u64,
    pub lost: u64,
    /// Arrived after their place was given up, or twice.
    pub late: u64,
    pub restarts: u64,
}

#[derive(Debug, Clone)]
struct Held {
    seq: u16,
    ts: u32,
    ts_len: u32,
    data: Vec<u8>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Reorder {
    /// Sequence number and timestamp the next in-order packet should carry.
    next: Option<(u16, u32)>,
    ssrc: u32,
    /// Packets after a gap, in sequence order.
    held: Vec<Held>,
    stats: ReorderStats,
}

impl Reorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// The SSRC of the stream being put in order (none before the first packet).
    pub fn ssrc(&self) -> Option<u32> {
        self.next.map(|_| self.ssrc)
    }

    /// Packets waiting behind a gap.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes one packet (`ts_len`: the RTP units its payload spans) and hands `out`
    /// everything that is now in order.
    pub fn push(
        &mut self,
        seq: u16,
        ts: u32,
        ssrc: u32,
        payload: &[u8],
        ts_len: u32,
        out: &mut impl FnMut(Release<'_>),
    ) {
        let Some((next_seq, next_ts)) = self.next else {
            self.restart(seq, ts, ssrc, payload, ts_len, out);
            return;
        };
        let ahead = i32::from(seq.wrapping_sub(next_seq) as i16);
        if ssrc != self.ssrc || !(-MAX_JUMP..=MAX_JUMP).contains(&ahead) {
            self.stats.restarts += 1;
            self.restart(seq, ts, ssrc, payload, ts_len, out);
            return;
        }
        if ahead < 0 || self.held.iter().any(|h| h.seq == seq) {
            self.stats.late += 1;
            return;
        }
        if ahead == 0 {
            self.release(seq, ts, payload, ts_len, next_ts, out);
            self.drain_held(out);
            return;
        }
        // A gap: hold this one until the missing packet or one more after the gap.
        let at = self
            .held
            .iter()
            .position(|h| h.seq.wrapping_sub(next_seq) > seq.wrapping_sub(next_seq))
            .unwrap_or(self.held.len());
        self.held.insert(
            at,
            Held {
                seq,
                ts,
                ts_len,
                data: payload.to_vec(),
            },
        );
        self.stats.reordered += 1;
        if self.held.len() >= HOLD {
            self.give_up_gap(out);
        }
    }

    fn restart(
        &mut self,
        seq: u16,
        ts: u32,
        ssrc: u32,
        payload: &[u8],
        ts_len: u32,
        out: &mut impl FnMut(Release<'_>),
    ) {
        self.held.clear();
        self.ssrc = ssrc;
        self.release(seq, ts, payload, ts_len, ts, out);
    }

    /// Releases the packet expected next, after any pause before it.
    fn release(
        &mut self,
        seq: u16,
        ts: u32,
        payload: &[u8],
        ts_len: u32,
        expected_ts: u32,
        out: &mut impl FnMut(Release<'_>),
    ) {
        // A timestamp behind the expected one (a sender that restarted its clock) is
        // taken as it is.
        let pause = ts.wrapping_sub(expected_ts);
        if (pause as i32) > 0 {
            out(Release::Pause { ts_len: pause });
        }
        out(Release::Packet { payload, ts_len });
        self.stats.released += 1;
        self.next = Some((seq.wrapping_add(1), ts.wrapping_add(ts_len)));
    }

    /// Releases held packets that are now in order.
    fn drain_held(&mut self, out: &mut impl FnMut(Release<'_>)) {
        while let Some((next_seq, next_ts)) = self.next {
            if self.held.first().is_none_or(|h| h.seq != next_seq) {
                return;
            }
            let h = self.held.remove(0);
            self.release(h.seq, h.ts, &h.data, h.ts_len, next_ts, out);
        }
    }

    /// The packets before the first held one are not coming: conceal them and release
    /// what is held.
    fn give_up_gap(&mut self, out: &mut impl FnMut(Release<'_>)) {
        let (Some((next_seq, next_ts)), Some(first)) = (self.next, self.held.first()) else {
            return;
        };
        let missing = u32::from(first.seq.wrapping_sub(next_seq));
        let ts_len = first.ts_len;
        self.stats.lost += u64::from(missing);
        out(Release::Lost {
            count: missing,
            ts_len,
        });
        // The first held packet's place if the lost ones were as long as it is; any
        // further difference is a pause.
        let expected = next_ts.wrapping_add(missing.wrapping_mul(ts_len));
        self.next = Some((first.seq, expected));
        self.drain_held(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        P(u8),
        Lost(u32),
        Pause(u32),
    }

    fn feed(r: &mut Reorder, seq: u16, ts: u32) -> Vec<Got> {
        feed_ssrc(r, seq, ts, 7)
    }

    fn feed_ssrc(r: &mut Reorder, seq: u16, ts: u32, ssrc: u32) -> Vec<Got> {
        let mut got = Vec::new();
        r.push(seq, ts, ssrc, &[seq as u8], 160, &mut |rel| {
            got.push(match rel {
                Release::Packet { payload, ts_len } => {
                    assert_eq!(ts_len, 160);
                    Got::P(payload[0])
                }
                Release::Lost { count, .. } => Got::Lost(count),
                Release::Pause { ts_len } => Got::Pause(ts_len),
            })
        });
        got
    }

    #[test]
    fn in_order_packets_come_out_at_once() {
        let mut r = Reorder::new();
        for k in 0..5u16 {
            assert_eq!(
                feed(&mut r, 65534u16.wrapping_add(k), 160 * u32::from(k)),
                vec![Got::P(65534u16.wrapping_add(k) as u8)]
            );
        }
        assert_eq!(r.stats().released, 5);
    }

    #[test]
    fn a_swapped_pair_is_put_back_in_order() {
        let mut r = Reorder::new();
        assert_eq!(feed(&mut r, 10, 0), vec![Got::P(10)]);
        assert_eq!(feed(&mut r, 12, 320), vec![]);
        assert_eq!(r.held(), 1);
        assert_eq!(feed(&mut r, 11, 160), vec![Got::P(11), Got::P(12)]);
        assert_eq!(feed(&mut r, 13, 480), vec![Got::P(13)]);
        assert_eq!(r.stats().lost, 0);
    }

    #[test]
    fn a_lost_packet_is_given_up_when_a_second_one_follows_the_gap() {
        let mut r = Reorder::new();
        feed(&mut r, 1, 0);
        assert_eq!(feed(&mut r, 3, 320), vec![]);
        assert_eq!(
            feed(&mut r, 4, 480),
            vec![Got::Lost(1), Got::P(3), Got::P(4)]
        );
        // The lost one arriving now is late.
        assert_eq!(feed(&mut r, 2, 160), vec![]);
        assert_eq!(r.stats().late, 1);
        assert_eq!(r.stats().lost, 1);
        assert_eq!(feed(&mut r, 5, 640), vec![Got::P(5)]);
    }

    #[test]
    fn placeholders_keep_the_sequence_without_audio() {
        let mut r = Reorder::new();
        feed(&mut r, 1, 0);
        // Two RFC 4733 packets (no audio, no duration) between the audio packets.
        for seq in [2u16, 3] {
            let mut got = Vec::new();
            r.push(seq, 160, 7, &[], 0, &mut |rel| {
                got.push(matches!(rel, Release::Packet { payload: [], .. }))
            });
            assert_eq!(got, vec![true]);
        }
        assert_eq!(feed(&mut r, 4, 160), vec![Got::P(4)]);
        assert_eq!(r.stats().lost, 0);
        assert_eq!(r.ssrc(), Some(7));
    }

    #[test]
    fn duplicates_are_dropped() {
        let mut r = Reorder::new();
        feed(&mut r, 1, 0);
        assert_eq!(feed(&mut r, 1, 0), vec![]);
        feed(&mut r, 3, 320);
        assert_eq!(feed(&mut r, 3, 320), vec![]);
        assert_eq!(r.stats().late, 2);
    }

    #[test]
    fn a_pause_in_timestamps_comes_out_as_silence() {
        let mut r = Reorder::new();
        feed(&mut r, 1, 0);
        assert_eq!(feed(&mut r, 2, 160 + 800), vec![Got::Pause(800), Got::P(2)]);
        assert_eq!(feed(&mut r, 3, 1120), vec![Got::P(3)]);
    }

    #[test]
    fn a_new_ssrc_or_a_jump_restarts() {
        let mut r = Reorder::new();
        feed(&mut r, 1, 0);
        feed(&mut r, 3, 320);
        assert_eq!(feed_ssrc(&mut r, 900, 5000, 8), vec![Got::P(132)]);
        assert_eq!(r.held(), 0);
        assert_eq!(feed_ssrc(&mut r, 5, 5160, 8), vec![Got::P(5)]);
        assert_eq!(r.stats().restarts, 2);
    }
}
