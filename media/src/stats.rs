//! Receive statistics for one RTP stream: RFC 3550 Appendix A.1/A.3 (extended
//! sequence numbers, cumulative loss) and A.8 (interarrival jitter).
//!
//! In: each valid packet as an [`RtpView`] plus its arrival time converted to RTP
//! timestamp units by the caller (so this stays pure). Out: the public counters of
//! [`RtpStats`]. A new SSRC restarts the sequence and jitter state (the counters of
//! packets and bytes go on).

use crate::rtp::RtpView;

/// A jump of fewer than this many sequence numbers is taken as loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// Packets this far behind the highest sequence are taken as late, not as a restart.
const MAX_MISORDER: u16 = 100;

/// Counters for the packets received on one stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RtpStats {
    /// Valid packets received.
    pub packets: u64,
    /// Payload octets received (RFC 3550 octet count: headers and padding excluded).
    pub bytes: u64,
    /// Cumulative packets lost: expected minus received, never below zero (duplicates
    /// can make the raw RFC value negative).
    pub lost: u64,
    /// Interarrival jitter in RTP timestamp units (RFC 3550 A.8).
    pub jitter: f64,
    /// SSRC of the latest packet.
    pub last_ssrc: Option<u32>,
    /// `lost` of the sources before the current one (a new SSRC restarts `lost`).
    lost_before: u64,
    seq: Option<SeqState>,
    last_transit: Option<i64>,
}

/// RFC 3550 A.1 `source` sequence fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SeqState {
    base_seq: u32,
    max_seq: u16,
    /// Shifted count of sequence number wraps.
    cycles: u32,
    /// The seq after a suspicious jump; a packet with this seq confirms a restart.
    bad_seq: Option<u16>,
    /// Packets counted for loss since `base_seq`.
    received: u64,
}

impl SeqState {
    fn new(seq: u16) -> Self {
        SeqState {
            base_seq: u32::from(seq),
            max_seq: seq,
            cycles: 0,
            bad_seq: None,
            received: 0,
        }
    }

    /// A.1 `update_seq`: returns false for a packet ignored by the loss count.
    fn update(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < MAX_DROPOUT {
            // In order, with an allowed gap.
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_seq = seq;
        } else if udelta <= u16::MAX - MAX_MISORDER {
            // A large jump: the sender restarted, or a stray packet.
            if self.bad_seq == Some(seq) {
                // Two in a row: accept the new numbering.
                *self = SeqState::new(seq);
            } else {
                self.bad_seq = Some(seq.wrapping_add(1));
                return false;
            }
        }
        // Otherwise a duplicate or a late (reordered) packet: counted as received.
        self.received += 1;
        true
    }

    fn extended_max(&self) -> u64 {
        u64::from(self.cycles) + u64::from(self.max_seq)
    }

    /// A.3: expected minus received, clamped at zero.
    fn lost(&self) -> u64 {
        let expected = (self.extended_max() + 1).saturating_sub(u64::from(self.base_seq));
        expected.saturating_sub(self.received)
    }
}

impl RtpStats {
    /// A fresh, empty set of counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// The RFC 3550 extended highest sequence number received, once a packet arrived.
    pub fn extended_max_seq(&self) -> Option<u64> {
        self.seq.map(|s| s.extended_max())
    }

    /// Jitter in milliseconds for a given clock rate.
    pub fn jitter_ms(&self, clock_rate: u32) -> f64 {
        if clock_rate == 0 {
            0.0
        } else {
            self.jitter * 1000.0 / f64::from(clock_rate)
        }
    }

    /// Packets lost over every source seen so far (the sum of each SSRC's `lost`).
    pub fn lost_all_sources(&self) -> u64 {
        self.lost_before + self.lost
    }

    /// Accounts for one valid packet that arrived at `arrival_rtp_ts` (the receiver's
    /// clock in the stream's timestamp units; its origin does not matter).
    pub fn on_packet(&mut self, view: &RtpView<'_>, arrival_rtp_ts: u32) {
        self.account(view);
        // A.8: transit differences, wrapped as 32-bit signed timestamp deltas.
        let transit = i64::from(arrival_rtp_ts.wrapping_sub(view.timestamp()) as i32);
        if let Some(prev) = self.last_transit {
            let d = (transit - prev).abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
    }

    /// Accounts for a packet of the stream that must not feed the jitter estimate:
    /// RFC 4733 events repeat the event's start timestamp for its whole duration, so
    /// their transit time says nothing about network jitter. Counts and loss go on.
    pub fn on_packet_without_timing(&mut self, view: &RtpView<'_>) {
        self.account(view);
    }

    /// The stream's RTP clock changed from `old` to `new` Hz (a re-INVITE changed the
    /// codec): jitter is rescaled and the transit baseline restarts.
    pub fn clock_changed(&mut self, old: u32, new: u32) {
        if old != 0 && old != new {
            self.jitter = self.jitter * f64::from(new) / f64::from(old);
            self.last_transit = None;
        }
    }

    fn account(&mut self, view: &RtpView<'_>) {
        self.packets += 1;
        self.bytes += view.payload().len() as u64;
        let ssrc = view.ssrc();
        if self.last_ssrc != Some(ssrc) {
            // New source: its numbering and timing have nothing to do with the old one.
            self.last_ssrc = Some(ssrc);
            self.lost_before += self.lost;
            self.lost = 0;
            self.seq = None;
            self.last_transit = None;
            self.jitter = 0.0;
        }
        let state = self.seq.get_or_insert_with(|| SeqState::new(view.seq()));
        state.update(view.seq());
        self.lost = state.lost();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{RtpHeader, write_packet};

    fn pkt(buf: &mut [u8; 64], seq: u16, ts: u32, ssrc: u32) -> usize {
        let h = RtpHeader {
            marker: false,
            pt: 0,
            seq,
            timestamp: ts,
            ssrc,
        };
        write_packet(buf, &h, &[0xff; 20]).unwrap()
    }

    /// Feeds (seq, rtp ts, arrival) triples for one SSRC.
    fn feed(stats: &mut RtpStats, packets: &[(u16, u32, u32)], ssrc: u32) {
        let mut buf = [0u8; 64];
        for &(seq, ts, arrival) in packets {
            let n = pkt(&mut buf, seq, ts, ssrc);
            let v = RtpView::parse(&buf[..n]).unwrap();
            stats.on_packet(&v, arrival);
        }
    }

    #[test]
    fn perfect_stream_has_no_loss_or_jitter() {
        let mut s = RtpStats::new();
        let pkts: Vec<_> = (0..50u16)
            .map(|i| (i, u32::from(i) * 160, 1000 + u32::from(i) * 160))
            .collect();
        feed(&mut s, &pkts, 7);
        assert_eq!(s.packets, 50);
        assert_eq!(s.bytes, 1000);
        assert_eq!(s.lost, 0);
        assert_eq!(s.jitter, 0.0);
        assert_eq!(s.last_ssrc, Some(7));
    }

    #[test]
    fn gap_counts_loss_across_wrap() {
        let mut s = RtpStats::new();
        // 65533, 65534, [65535 lost], 0, [1, 2 lost], 3
        feed(
            &mut s,
            &[
                (65533, 0, 0),
                (65534, 160, 160),
                (0, 480, 480),
                (3, 960, 960),
            ],
            1,
        );
        assert_eq!(s.packets, 4);
        assert_eq!(s.lost, 3);
        assert_eq!(s.extended_max_seq(), Some(65536 + 3));
    }

    #[test]
    fn reordered_packet_is_not_lost() {
        let mut s = RtpStats::new();
        feed(&mut s, &[(10, 0, 0), (12, 320, 320)], 1);
        assert_eq!(s.lost, 1);
        // 11 arrives late: no longer lost, and max seq stays 12.
        feed(&mut s, &[(11, 160, 340)], 1);
        assert_eq!(s.lost, 0);
        assert_eq!(s.extended_max_seq(), Some(12));
        feed(&mut s, &[(13, 480, 480)], 1);
        assert_eq!(s.lost, 0);
        assert_eq!(s.packets, 4);
    }

    #[test]
    fn jitter_follows_rfc_a8() {
        let mut s = RtpStats::new();
        // Transit: 0, +80, 0 → D = 80 then 80: J = 80/16 = 5, then 5 + (80-5)/16.
        feed(&mut s, &[(1, 0, 0), (2, 160, 240), (3, 320, 320)], 9);
        let expected = 5.0 + (80.0 - 5.0) / 16.0;
        assert!((s.jitter - expected).abs() < 1e-9, "{}", s.jitter);
        assert!((s.jitter_ms(8000) - expected / 8.0).abs() < 1e-9);
    }

    #[test]
    fn restart_after_big_jump_needs_two_packets_and_ssrc_change_resets() {
        let mut s = RtpStats::new();
        feed(&mut s, &[(100, 0, 0), (101, 160, 160)], 1);
        feed(&mut s, &[(20000, 320, 320)], 1);
        // One stray packet is ignored for loss.
        assert_eq!(s.lost, 0);
        assert_eq!(s.extended_max_seq(), Some(101));
        feed(&mut s, &[(20001, 480, 480), (20003, 800, 800)], 1);
        // Renumbered from 20001: 20002 is missing.
        assert_eq!(s.lost, 1);
        feed(&mut s, &[(5, 0, 0), (6, 160, 160)], 2);
        assert_eq!(s.last_ssrc, Some(2));
        assert_eq!(s.lost, 0);
        assert_eq!(s.lost_all_sources(), 1);
        assert_eq!(s.packets, 7);
    }

    #[test]
    fn untimed_packets_count_for_loss_but_not_jitter() {
        let mut s = RtpStats::new();
        feed(&mut s, &[(1, 0, 0), (2, 160, 160)], 9);
        // An RFC 4733 event: start timestamp repeated while the arrival moves on.
        let mut buf = [0u8; 64];
        for seq in 3..6u16 {
            let n = pkt(&mut buf, seq, 160, 9);
            s.on_packet_without_timing(&RtpView::parse(&buf[..n]).unwrap());
        }
        feed(&mut s, &[(7, 960, 960)], 9);
        assert_eq!(s.packets, 6);
        assert_eq!(s.lost, 1, "seq 6 is missing");
        assert_eq!(s.jitter, 0.0, "the event's stale timestamps are not jitter");
    }

    #[test]
    fn clock_change_rescales_jitter() {
        let mut s = RtpStats::new();
        feed(&mut s, &[(1, 0, 0), (2, 160, 240)], 9);
        let ms = s.jitter_ms(8000);
        s.clock_changed(8000, 48000);
        assert!((s.jitter_ms(48000) - ms).abs() < 1e-9);
        // The next packet, in the new clock, is not compared with an old transit.
        feed(&mut s, &[(3, 5_000_000, 17)], 9);
        assert!((s.jitter_ms(48000) - ms).abs() < 1e-9);
    }
}
