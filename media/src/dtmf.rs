//! RFC 4733 telephone-events (DTMF digits 0-9, *, #, A-D): §2.3 payload format, §2.5.1
//! sender rules, §2.5.2 receiver rules.
//!
//! In: parsed RTP packets of the negotiated telephone-event payload type
//! ([`DtmfDecoder::handle`]), or a digit to send ([`DtmfEncoder::start`]). Out: one
//! [`DtmfEvent`] per digit, or the packets of one digit written into caller buffers.
//! An event is identified by its RTP timestamp (§2.5.2.2); the end packet is sent
//! three times (§2.5.1.4), so the decoder reports on the first end bit and ignores the
//! rest. Nothing here allocates.

use crate::rtp::{RtpError, RtpHeader, RtpView, write_packet};

/// Octets of one event in the payload (§2.3).
pub const EVENT_LEN: usize = 4;
/// Times the final (E bit) packet is sent (§2.5.1.4).
pub const END_REPEATS: u8 = 3;
/// The longest duration one packet can carry (§2.5.1.3: 16-bit field).
const MAX_DURATION: u32 = 0xffff;

/// A finished (or timed-out) DTMF digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    /// `0`-`9`, `*`, `#` or `A`-`D`.
    pub digit: char,
    /// Duration in timestamp units of the stream's clock (8000 Hz for telephone-event/8000).
    pub duration_ts: u32,
    /// Power level as dBm0 below zero (0..=63).
    pub volume: u8,
}

impl DtmfEvent {
    /// The duration in milliseconds, given the clock of the stream it came on (the
    /// telephone-event's rate: 8000 beside G.711/G.722, 48000 beside Opus).
    pub fn duration_ms(&self, clock_rate: u32) -> u64 {
        u64::from(self.duration_ts) * 1000 / u64::from(clock_rate.max(1))
    }
}

/// Why a DTMF packet could not be produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtmfError {
    /// Not one of 0-9 * # A-D.
    #[error("not a DTMF digit: {0:?}")]
    UnknownDigit(char),
    /// The caller's buffer cannot hold the packet.
    #[error("RTP write: {0}")]
    Rtp(#[from] RtpError),
}

/// §3.2 event codes 0-15 as characters.
pub fn event_to_digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some(char::from(b'0' + code)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (code - 12))),
        _ => None,
    }
}

/// The event code of a DTMF character (lower-case a-d accepted).
pub fn digit_to_event(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Current {
    ts: u32,
    event: DtmfEvent,
    /// Already handed to the caller (by an end packet, a newer event or `flush`).
    reported: bool,
}

/// Receiver side: turns the packet stream of one SSRC into one event per digit.
#[derive(Debug, Clone)]
pub struct DtmfDecoder {
    pt: u8,
    current: Option<Current>,
    /// A finished event found while another still had to be reported; handed out by
    /// the next `handle` or `flush`.
    queued: Option<DtmfEvent>,
}

impl DtmfDecoder {
    /// A decoder for the negotiated telephone-event payload type.
    pub fn new(pt: u8) -> Self {
        DtmfDecoder {
            pt,
            current: None,
            queued: None,
        }
    }

    /// Feeds one packet. Packets of other payload types, unknown events (e.g. flash)
    /// and malformed payloads are ignored. Returns a digit at most once: on its first
    /// end packet, or when a new event starts while the previous one never ended
    /// (its end packets were all lost).
    pub fn handle(&mut self, view: &RtpView<'_>) -> Option<DtmfEvent> {
        if view.pt() != self.pt {
            return self.queued.take();
        }
        let p = view.payload();
        let (Some(&code), Some(&flags), Some(d)) = (p.first(), p.get(1), p.get(2..4)) else {
            return self.queued.take();
        };
        let Some(digit) = event_to_digit(code) else {
            return self.queued.take();
        };
        let end = flags & 0x80 != 0;
        let event = DtmfEvent {
            digit,
            duration_ts: u32::from(u16::from_be_bytes([d[0], d[1]])),
            volume: flags & 0x3f,
        };
        let ts = view.timestamp();
        match &mut self.current {
            Some(cur) if cur.ts == ts => {
                if cur.reported {
                    // Retransmitted end packet, or an update reordered after it.
                    return self.queued.take();
                }
                cur.event.duration_ts = cur.event.duration_ts.max(event.duration_ts);
                cur.event.digit = digit;
                cur.event.volume = event.volume;
                if end {
                    cur.reported = true;
                    let out = cur.event;
                    return Some(self.queued.take().map_or(out, |q| {
                        self.queued = Some(out);
                        q
                    }));
                }
                self.queued.take()
            }
            // A packet of an event older than the current one arrived late (§2.5.2.2).
            Some(cur) if (ts.wrapping_sub(cur.ts) as i32) < 0 => self.queued.take(),
            _ => {
                let previous = self
                    .current
                    .filter(|c| !c.reported)
                    .map(|c| c.event)
                    .or(self.queued.take());
                self.current = Some(Current {
                    ts,
                    event,
                    reported: end,
                });
                match (previous, end) {
                    (Some(prev), true) => {
                        self.queued = Some(event);
                        Some(prev)
                    }
                    (Some(prev), false) => Some(prev),
                    (None, true) => Some(event),
                    (None, false) => None,
                }
            }
        }
    }

    /// Reports an event that started but whose end never arrived (the caller decides
    /// the timeout, e.g. no telephone-event packet for a few hundred ms), or an event
    /// still queued. Each digit is reported once.
    pub fn flush(&mut self) -> Option<DtmfEvent> {
        if let Some(q) = self.queued.take() {
            return Some(q);
        }
        let cur = self.current.as_mut()?;
        if cur.reported {
            return None;
        }
        cur.reported = true;
        Some(cur.event)
    }

    /// Whether an event is in progress (started, not yet reported).
    pub fn in_progress(&self) -> bool {
        self.queued.is_some() || self.current.is_some_and(|c| !c.reported)
    }
}

/// One packet written by [`DtmfEncoder::next_packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// Bytes written at the start of the buffer.
    pub len: usize,
    /// Its sequence number.
    pub seq: u16,
    /// When to send it, in timestamp units after the event start.
    pub send_offset_ts: u32,
    /// Whether this is one of the end packets.
    pub end: bool,
}

/// Sender side: the packets of one digit at a time (§2.5.1).
///
/// The caller supplies the stream's SSRC, and per digit the next sequence number and
/// the timestamp of the event start (the audio stream's current timestamp); the
/// encoder hands back the next free sequence number so audio can continue after it.
#[derive(Debug, Clone)]
pub struct DtmfEncoder {
    pt: u8,
    ssrc: u32,
    /// Timestamp units between update packets (50 ms).
    interval: u32,
    /// Timestamp units between the repeated end packets (20 ms).
    end_spacing: u32,
    seq: u16,
    ts: u32,
    code: u8,
    volume: u8,
    total: u32,
    /// Update packets sent for the current digit.
    updates: u32,
    /// End packets sent for the current digit.
    ends: u8,
    active: bool,
}

impl DtmfEncoder {
    /// An encoder for payload type `pt` on the stream `ssrc`, with the event clock
    /// `clock_rate` (8000 for telephone-event/8000).
    pub fn new(pt: u8, clock_rate: u32, ssrc: u32) -> Self {
        DtmfEncoder {
            pt,
            ssrc,
            interval: (clock_rate / 20).max(1),
            end_spacing: (clock_rate / 50).max(1),
            seq: 0,
            ts: 0,
            code: 0,
            volume: 0,
            total: 0,
            updates: 0,
            ends: 0,
            active: false,
        }
    }

    /// Begins a digit of `duration_ms` at `volume` (dBm0 below zero, clamped to 63);
    /// the first packet gets sequence number `seq` and every packet timestamp `ts`.
    /// Durations beyond the 16-bit field (about 8 s at 8 kHz) are cut to it.
    pub fn start(
        &mut self,
        digit: char,
        duration_ms: u32,
        volume: u8,
        seq: u16,
        ts: u32,
    ) -> Result<(), DtmfError> {
        let code = digit_to_event(digit).ok_or(DtmfError::UnknownDigit(digit))?;
        let rate = u64::from(self.interval) * 20;
        let total = (u64::from(duration_ms) * rate / 1000).min(u64::from(MAX_DURATION));
        self.code = code;
        self.volume = volume.min(63);
        self.total = u32::try_from(total).unwrap_or(MAX_DURATION);
        self.seq = seq;
        self.ts = ts;
        self.updates = 0;
        self.ends = 0;
        self.active = true;
        Ok(())
    }

    /// Whether packets of the current digit remain.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The sequence number the next packet of the stream (audio or DTMF) should use.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// Writes the next packet of the digit into `buf`: first the start packet (marker
    /// set), then updates every 50 ms with the duration so far, then three end packets
    /// with the final duration. Returns `None` once the digit is done.
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Result<Option<DtmfPacket>, DtmfError> {
        if !self.active {
            return Ok(None);
        }
        let elapsed = self.updates.saturating_mul(self.interval);
        let (end, duration, offset) = if elapsed < self.total {
            (false, elapsed, elapsed)
        } else {
            let offset = self
                .total
                .saturating_add(u32::from(self.ends) * self.end_spacing);
            (true, self.total, offset)
        };
        let hdr = RtpHeader {
            marker: self.updates == 0 && self.ends == 0,
            pt: self.pt,
            seq: self.seq,
            timestamp: self.ts,
            ssrc: self.ssrc,
        };
        let dur = u16::try_from(duration).unwrap_or(u16::MAX).to_be_bytes();
        let flags = (u8::from(end) << 7) | self.volume;
        let len = write_packet(buf, &hdr, &[self.code, flags, dur[0], dur[1]])?;
        let out = DtmfPacket {
            len,
            seq: self.seq,
            send_offset_ts: offset,
            end,
        };
        self.seq = self.seq.wrapping_add(1);
        if end {
            self.ends += 1;
            self.active = self.ends < END_REPEATS;
        } else {
            self.updates += 1;
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(buf: &mut [u8], ts: u32, seq: u16, code: u8, end: bool, dur: u16) -> usize {
        let hdr = RtpHeader {
            marker: false,
            pt: 101,
            seq,
            timestamp: ts,
            ssrc: 7,
        };
        let d = dur.to_be_bytes();
        write_packet(buf, &hdr, &[code, (u8::from(end) << 7) | 10, d[0], d[1]]).unwrap()
    }

    fn feed(
        dec: &mut DtmfDecoder,
        ts: u32,
        seq: u16,
        code: u8,
        end: bool,
        dur: u16,
    ) -> Option<DtmfEvent> {
        let mut b = [0u8; 32];
        let n = pkt(&mut b, ts, seq, code, end, dur);
        dec.handle(&RtpView::parse(&b[..n]).unwrap())
    }

    #[test]
    fn digit_table_round_trips() {
        for code in 0..16 {
            let d = event_to_digit(code).unwrap();
            assert_eq!(digit_to_event(d), Some(code));
        }
        assert_eq!(event_to_digit(16), None);
        assert_eq!(digit_to_event('x'), None);
        assert_eq!(digit_to_event('b'), Some(13));
    }

    #[test]
    fn lost_end_reported_by_next_event_and_flush() {
        let mut dec = DtmfDecoder::new(101);
        assert_eq!(feed(&mut dec, 1000, 1, 5, false, 400), None);
        assert!(dec.in_progress());
        // New timestamp while 5 never ended: 5 comes out, with its last duration.
        let e = feed(&mut dec, 3000, 2, 7, false, 0).unwrap();
        assert_eq!((e.digit, e.duration_ts), ('5', 400));
        // Late update of the old event is ignored.
        assert_eq!(feed(&mut dec, 1000, 3, 5, false, 800), None);
        let e = dec.flush().unwrap();
        assert_eq!(e.digit, '7');
        assert_eq!(dec.flush(), None);
        // Its end packets arrive after the flush: no duplicate.
        assert_eq!(feed(&mut dec, 3000, 4, 7, true, 800), None);
    }

    #[test]
    fn unended_event_then_lone_end_packet() {
        let mut dec = DtmfDecoder::new(101);
        assert_eq!(feed(&mut dec, 10, 1, 1, false, 160), None);
        // Only the end of the next digit survives: both are reported, in order.
        assert_eq!(
            feed(&mut dec, 5000, 9, 2, true, 800).map(|e| e.digit),
            Some('1')
        );
        assert_eq!(
            feed(&mut dec, 5000, 10, 2, true, 800).map(|e| e.digit),
            Some('2')
        );
        assert_eq!(feed(&mut dec, 5000, 11, 2, true, 800), None);
        assert_eq!(dec.flush(), None);
    }

    #[test]
    fn other_payload_types_and_short_payloads_ignored() {
        let mut dec = DtmfDecoder::new(100);
        assert_eq!(feed(&mut dec, 10, 1, 1, true, 160), None);
        let mut b = [0u8; 32];
        let hdr = RtpHeader {
            marker: false,
            pt: 100,
            seq: 1,
            timestamp: 1,
            ssrc: 1,
        };
        let n = write_packet(&mut b, &hdr, &[1, 0x80]).unwrap();
        assert_eq!(dec.handle(&RtpView::parse(&b[..n]).unwrap()), None);
        let n = write_packet(&mut b, &hdr, &[16, 0x80, 0, 1]).unwrap();
        assert_eq!(dec.handle(&RtpView::parse(&b[..n]).unwrap()), None);
        assert_eq!(dec.flush(), None);
    }

    #[test]
    fn encoder_rejects_unknown_digit_and_small_buffer() {
        let mut enc = DtmfEncoder::new(101, 8000, 1);
        assert_eq!(
            enc.start('x', 100, 10, 0, 0),
            Err(DtmfError::UnknownDigit('x'))
        );
        enc.start('1', 100, 10, 0, 0).unwrap();
        let mut small = [0u8; 10];
        assert_eq!(
            enc.next_packet(&mut small),
            Err(DtmfError::Rtp(RtpError::BufferTooSmall))
        );
    }
}
