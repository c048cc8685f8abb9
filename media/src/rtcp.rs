//! RTCP sender and receiver reports: RFC 3550 §6.4 (SR §6.4.1, RR §6.4.2, report
//! blocks, RTT from LSR/DLSR), §6.5.1 (SDES CNAME) and §6.1 (compound packets), with
//! the interval loss arithmetic of Appendix A.3.
//!
//! In: our wall clock as a caller-provided [`SystemTime`] (never read here), stream
//! counters from [`RtpStats`], and received RTCP datagrams. Out: packets written into a
//! caller buffer, parsed [`RtcpPacket`]s borrowed from the input, and round-trip times.
//! Neither building nor parsing allocates; parsing never panics.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::stats::RtpStats;

/// RTCP packet type: sender report.
pub const PT_SR: u8 = 200;
/// RTCP packet type: receiver report.
pub const PT_RR: u8 = 201;
/// RTCP packet type: source description.
pub const PT_SDES: u8 = 202;
/// RTCP packet type: goodbye.
pub const PT_BYE: u8 = 203;

const HEADER: usize = 4;
const SENDER_INFO: usize = 20;
const BLOCK: usize = 24;
/// At most 31 report blocks fit the 5-bit count.
pub const MAX_BLOCKS: usize = 31;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Why RTCP could not be parsed or built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    /// Shorter than a header or than the packet type's fixed part.
    #[error("RTCP packet too short")]
    TooShort,
    /// Version field is not 2.
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    /// The length field runs past the datagram.
    #[error("RTCP length exceeds datagram")]
    LengthOverrun,
    /// The report count needs more bytes than the packet has.
    #[error("report blocks exceed packet")]
    CountOverrun,
    /// The padding count is 0 or larger than the packet.
    #[error("bad RTCP padding")]
    BadPadding,
    /// The output buffer is too small.
    #[error("buffer too small")]
    BufferTooSmall,
    /// More than 31 report blocks, or a CNAME over 255 bytes.
    #[error("too many report blocks or item too long")]
    TooLarge,
}

/// Converts wall-clock time to a 64-bit NTP timestamp (32.32 fixed point since 1900).
pub fn ntp_timestamp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp: the unit of LSR and of the RTT arithmetic
/// (1/65536 s).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// The sender info section of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    /// Wall clock at the time of `rtp_ts`, as NTP.
    pub ntp: u64,
    /// The same instant in the stream's RTP timestamp units.
    pub rtp_ts: u32,
    /// Packets sent since the stream started (wraps).
    pub packet_count: u32,
    /// Payload octets sent since the stream started (wraps).
    pub octet_count: u32,
}

impl SenderInfo {
    /// Sender info for `wall` (the caller's clock), converting it to NTP.
    pub fn new(wall: SystemTime, rtp_ts: u32, packet_count: u32, octet_count: u32) -> Self {
        SenderInfo {
            ntp: ntp_timestamp(wall),
            rtp_ts,
            packet_count,
            octet_count,
        }
    }
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub ext_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from the source.
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

impl ReportBlock {
    fn write(&self, out: &mut [u8; BLOCK]) {
        out[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32;
        let lost = lost.to_be_bytes();
        out[4] = self.fraction_lost;
        out[5..8].copy_from_slice(&lost[1..4]);
        out[8..12].copy_from_slice(&self.ext_highest_seq.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.lsr.to_be_bytes());
        out[20..24].copy_from_slice(&self.dlsr.to_be_bytes());
    }

    fn read(b: &[u8; BLOCK]) -> Self {
        let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        // Sign-extend the 24-bit count.
        let lost = (i32::from_be_bytes([b[5], b[6], b[7], 0])) >> 8;
        ReportBlock {
            ssrc: be(0),
            fraction_lost: b[4],
            cumulative_lost: lost,
            ext_highest_seq: be(8),
            jitter: be(12),
            lsr: be(16),
            dlsr: be(20),
        }
    }
}

/// Round-trip time from a report block received at `arrival_ntp` (our clock, as NTP):
/// RFC 3550 §6.4.1, A − LSR − DLSR. `None` when the peer has not seen an SR from us
/// (LSR 0) or the result is negative (clock trouble).
pub fn round_trip_time(arrival_ntp: u64, block: &ReportBlock) -> Option<Duration> {
    if block.lsr == 0 {
        return None;
    }
    let rtt = ntp_middle(arrival_ntp)
        .wrapping_sub(block.lsr)
        .wrapping_sub(block.dlsr);
    if rtt >= 0x8000_0000 {
        return None;
    }
    Some(Duration::from_nanos(
        u64::from(rtt) * 1_000_000_000 / 65_536,
    ))
}

fn write_header(out: &mut [u8], count: u8, pt: u8, total: usize) -> Result<(), RtcpError> {
    let words = u16::try_from(total / 4 - 1).map_err(|_| RtcpError::TooLarge)?;
    let h = out.get_mut(..HEADER).ok_or(RtcpError::BufferTooSmall)?;
    h[0] = 0x80 | (count & 0x1f);
    h[1] = pt;
    h[2..4].copy_from_slice(&words.to_be_bytes());
    Ok(())
}

fn write_blocks(out: &mut [u8], blocks: &[ReportBlock]) {
    for (chunk, block) in out.chunks_exact_mut(BLOCK).zip(blocks) {
        if let Ok(arr) = <&mut [u8; BLOCK]>::try_from(chunk) {
            block.write(arr);
        }
    }
}

/// Writes a sender report into `buf`; returns its length.
pub fn write_sr(
    buf: &mut [u8],
    ssrc: u32,
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    if blocks.len() > MAX_BLOCKS {
        return Err(RtcpError::TooLarge);
    }
    let total = HEADER + 4 + SENDER_INFO + BLOCK * blocks.len();
    let out = buf.get_mut(..total).ok_or(RtcpError::BufferTooSmall)?;
    write_header(out, blocks.len() as u8, PT_SR, total)?;
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8..16].copy_from_slice(&info.ntp.to_be_bytes());
    out[16..20].copy_from_slice(&info.rtp_ts.to_be_bytes());
    out[20..24].copy_from_slice(&info.packet_count.to_be_bytes());
    out[24..28].copy_from_slice(&info.octet_count.to_be_bytes());
    write_blocks(&mut out[28..], blocks);
    Ok(total)
}

/// Writes a receiver report into `buf`; returns its length.
pub fn write_rr(buf: &mut [u8], ssrc: u32, blocks: &[ReportBlock]) -> Result<usize, RtcpError> {
    if blocks.len() > MAX_BLOCKS {
        return Err(RtcpError::TooLarge);
    }
    let total = HEADER + 4 + BLOCK * blocks.len();
    let out = buf.get_mut(..total).ok_or(RtcpError::BufferTooSmall)?;
    write_header(out, blocks.len() as u8, PT_RR, total)?;
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    write_blocks(&mut out[8..], blocks);
    Ok(total)
}

/// Writes an SDES packet with one chunk carrying a CNAME item (RFC 3550 §6.5.1), which
/// every compound packet must include; returns its length.
pub fn write_sdes_cname(buf: &mut [u8], ssrc: u32, cname: &[u8]) -> Result<usize, RtcpError> {
    let n = u8::try_from(cname.len()).map_err(|_| RtcpError::TooLarge)?;
    // ssrc, type, length, text, then a null item end, padded to 32 bits.
    let chunk = (4 + 2 + cname.len() + 1).div_ceil(4) * 4;
    let total = HEADER + chunk;
    let out = buf.get_mut(..total).ok_or(RtcpError::BufferTooSmall)?;
    write_header(out, 1, PT_SDES, total)?;
    out[4..8].copy_from_slice(&ssrc.to_be_bytes());
    out[8] = 1; // CNAME
    out[9] = n;
    let end = 10 + cname.len();
    out[10..end].copy_from_slice(cname);
    out[end..].fill(0);
    Ok(total)
}

/// Report blocks of a parsed SR or RR, read lazily from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlocks<'a> {
    data: &'a [u8],
}

impl ReportBlocks<'_> {
    /// Number of blocks left.
    pub fn len(&self) -> usize {
        self.data.len() / BLOCK
    }

    /// Whether there are no blocks left.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        let (head, rest) = self.data.split_first_chunk::<BLOCK>()?;
        self.data = rest;
        Some(ReportBlock::read(head))
    }
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    /// A sender report.
    SenderReport {
        /// The sender's SSRC.
        ssrc: u32,
        /// Its sender info.
        info: SenderInfo,
        /// Reception reports it carries.
        blocks: ReportBlocks<'a>,
    },
    /// A receiver report.
    ReceiverReport {
        /// The reporter's SSRC.
        ssrc: u32,
        /// Reception reports it carries.
        blocks: ReportBlocks<'a>,
    },
    /// Any other packet type (SDES, BYE, APP, feedback), body without header.
    Other {
        /// Packet type.
        pt: u8,
        /// The 5-bit count/format field.
        count: u8,
        /// Body after the 4-byte header, padding removed.
        body: &'a [u8],
    },
}

/// Iterates the packets of a compound RTCP datagram; yields one error and stops at the
/// first malformed packet.
pub fn parse_compound(buf: &[u8]) -> Compound<'_> {
    Compound { rest: buf }
}

/// Iterator returned by [`parse_compound`].
#[derive(Debug, Clone)]
pub struct Compound<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Compound<'a> {
    type Item = Result<RtcpPacket<'a>, RtcpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let r = parse_one(self.rest);
        match r {
            Ok((pkt, used)) => {
                self.rest = self.rest.get(used..).unwrap_or_default();
                Some(Ok(pkt))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32, RtcpError> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .ok_or(RtcpError::TooShort)
}

/// Parses the packet at the start of `buf`; returns it and its length on the wire.
fn parse_one(buf: &[u8]) -> Result<(RtcpPacket<'_>, usize), RtcpError> {
    let [b0, pt, l0, l1, ..] = *buf else {
        return Err(RtcpError::TooShort);
    };
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion(version));
    }
    let count = b0 & 0x1f;
    let total = (usize::from(u16::from_be_bytes([l0, l1])) + 1) * 4;
    let pkt = buf.get(..total).ok_or(RtcpError::LengthOverrun)?;
    let mut end = total;
    if b0 & 0x20 != 0 {
        let pad = usize::from(*pkt.last().ok_or(RtcpError::BadPadding)?);
        if pad == 0 || pad > total - HEADER {
            return Err(RtcpError::BadPadding);
        }
        end -= pad;
    }
    let body = pkt.get(HEADER..end).ok_or(RtcpError::BadPadding)?;
    let blocks_at = |start: usize| -> Result<ReportBlocks<'_>, RtcpError> {
        let len = usize::from(count) * BLOCK;
        let data = body
            .get(start..start + len)
            .ok_or(RtcpError::CountOverrun)?;
        Ok(ReportBlocks { data })
    };
    let parsed = match pt {
        PT_SR => {
            if body.len() < 4 + SENDER_INFO {
                return Err(RtcpError::TooShort);
            }
            let ntp = (u64::from(be32(body, 4)?) << 32) | u64::from(be32(body, 8)?);
            RtcpPacket::SenderReport {
                ssrc: be32(body, 0)?,
                info: SenderInfo {
                    ntp,
                    rtp_ts: be32(body, 12)?,
                    packet_count: be32(body, 16)?,
                    octet_count: be32(body, 20)?,
                },
                blocks: blocks_at(4 + SENDER_INFO)?,
            }
        }
        PT_RR => RtcpPacket::ReceiverReport {
            ssrc: be32(body, 0)?,
            blocks: blocks_at(4)?,
        },
        _ => RtcpPacket::Other { pt, count, body },
    };
    Ok((parsed, total))
}

/// Reception-report state for one incoming stream: the interval counters of RFC 3550
/// A.3 and the last SR heard from that source (for LSR/DLSR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceptionReporter {
    prior: Option<Prior>,
    last_sr: Option<(u32, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prior {
    ssrc: u32,
    packets: u64,
    lost: u64,
}

impl ReceptionReporter {
    /// Fresh state: the first report covers everything received so far.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an SR received from the source at `now`.
    pub fn on_sender_report(&mut self, info: &SenderInfo, now: Instant) {
        self.last_sr = Some((ntp_middle(info.ntp), now));
    }

    /// The report block for the stream `stats` describes, as of `now`, and starts a new
    /// interval. `None` before any packet was received.
    pub fn report_block(&mut self, stats: &RtpStats, now: Instant) -> Option<ReportBlock> {
        let ssrc = stats.last_ssrc?;
        let ext_max = stats.extended_max_seq()?;
        // A.3 interval arithmetic from the public counters: expected = received + lost
        // over the interval. A new SSRC restarts the loss count in RtpStats.
        let (prior_packets, prior_lost) = match self.prior {
            Some(p) if p.ssrc == ssrc => (p.packets, p.lost),
            Some(p) => (p.packets, 0),
            None => (0, 0),
        };
        let received = stats.packets.saturating_sub(prior_packets);
        let lost = i128::from(stats.lost) - i128::from(prior_lost);
        let expected = i128::from(received) + lost;
        let fraction_lost = if expected <= 0 || lost <= 0 {
            0
        } else {
            ((lost << 8) / expected).min(255) as u8
        };
        self.prior = Some(Prior {
            ssrc,
            packets: stats.packets,
            lost: stats.lost,
        });
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at).as_nanos() * 65_536 / 1_000_000_000;
                (lsr, u32::try_from(d).unwrap_or(u32::MAX))
            }
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: i32::try_from(stats.lost.min(0x7f_ffff)).unwrap_or(0x7f_ffff),
            ext_highest_seq: ext_max as u32,
            jitter: stats.jitter as u32,
            lsr,
            dlsr,
        })
    }
}

/// RTCP of one leg of a relayed call (RFC 3550 §6 as a translator that terminates RTCP
/// per leg): what we report to that leg's far end about the stream it sends us, and
/// what its reports say about the stream we send it (round-trip time).
///
/// In: the leg's receive statistics and, once we have sent it media, our
/// [`SenderInfo`]; received compound packets with their arrival time. Out: compound
/// reports (SR or RR, then SDES CNAME, §6.1) and the latest RTT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegReporter {
    reception: ReceptionReporter,
    rtt: Option<Duration>,
    reports_received: u64,
}

impl LegReporter {
    /// Fresh state: nothing reported, nothing heard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the compound report for the leg into `buf`: an SR from `our_ssrc` when
    /// `sent` is given (we have sent the leg media), else an RR; a report block about
    /// the stream `received` describes once a packet arrived; then SDES CNAME.
    pub fn write_report(
        &mut self,
        buf: &mut [u8],
        our_ssrc: u32,
        sent: Option<&SenderInfo>,
        received: &RtpStats,
        cname: &[u8],
        now: Instant,
    ) -> Result<usize, RtcpError> {
        let block = self.reception.report_block(received, now);
        let blocks = block.as_slice();
        let n = match sent {
            Some(info) => write_sr(buf, our_ssrc, info, blocks)?,
            None => write_rr(buf, our_ssrc, blocks)?,
        };
        let rest = buf.get_mut(n..).ok_or(RtcpError::BufferTooSmall)?;
        Ok(n + write_sdes_cname(rest, our_ssrc, cname)?)
    }

    /// Takes a compound packet from the leg's far end that arrived at `now` (wall clock
    /// `arrival_ntp`): its SR is remembered for our next report's LSR/DLSR, and a report
    /// block about `our_ssrc` updates the RTT. Parsing stops at the first malformed
    /// packet; what came before it counts. Returns whether any packet was valid.
    pub fn on_compound(
        &mut self,
        data: &[u8],
        our_ssrc: u32,
        now: Instant,
        arrival_ntp: u64,
    ) -> bool {
        let mut valid = false;
        for packet in parse_compound(data) {
            let Ok(packet) = packet else { break };
            valid = true;
            let blocks = match packet {
                RtcpPacket::SenderReport { info, blocks, .. } => {
                    self.reception.on_sender_report(&info, now);
                    blocks
                }
                RtcpPacket::ReceiverReport { blocks, .. } => blocks,
                RtcpPacket::Other { .. } => continue,
            };
            for b in blocks.filter(|b| b.ssrc == our_ssrc) {
                if let Some(rtt) = round_trip_time(arrival_ntp, &b) {
                    self.rtt = Some(rtt);
                }
            }
        }
        if valid {
            self.reports_received += 1;
        }
        valid
    }

    /// The latest round-trip time to the far end, once it reported on one of our SRs.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Valid compound packets received from the leg.
    pub fn reports_received(&self) -> u64 {
        self.reports_received
    }
}

/// The RFC 3550 §6.2 minimum report interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// `base` randomised to a uniform 0.5-1.5x (RFC 3550 §6.2/§6.3.1), so that reports of
/// calls set up together do not stay synchronised.
pub fn randomized_interval<R: rand::Rng + ?Sized>(base: Duration, rng: &mut R) -> Duration {
    base.mul_f64(rng.random_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::{RtpHeader, RtpView, write_packet};
    use proptest::prelude::*;

    fn block(n: u32) -> ReportBlock {
        ReportBlock {
            ssrc: 0x1000 + n,
            fraction_lost: 25,
            cumulative_lost: -3,
            ext_highest_seq: 0x0001_0005 + n,
            jitter: 42,
            lsr: 0xabcd_0000,
            dlsr: 0x0001_8000,
        }
    }

    #[test]
    fn ntp_conversion() {
        let t = UNIX_EPOCH + Duration::new(1, 500_000_000);
        let ntp = ntp_timestamp(t);
        assert_eq!(ntp >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp as u32, 0x8000_0000);
        assert_eq!(
            ntp_middle(ntp),
            (((NTP_UNIX_OFFSET + 1) as u32) << 16) | 0x8000
        );
    }

    #[test]
    fn sr_sdes_rr_compound_round_trip() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let info = SenderInfo::new(wall, 160_000, 1000, 160_000);
        let mut buf = [0u8; 256];
        let n1 = write_sr(&mut buf, 7, &info, &[block(1), block(2)]).unwrap();
        assert_eq!(n1, 28 + 48);
        let n2 = write_sdes_cname(&mut buf[n1..], 7, b"switchyard").unwrap();
        assert_eq!(n2 % 4, 0);
        let n3 = write_rr(&mut buf[n1 + n2..], 7, &[block(3)]).unwrap();
        assert_eq!(n3, 32);
        let pkts: Vec<_> = parse_compound(&buf[..n1 + n2 + n3])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(pkts.len(), 3);
        let RtcpPacket::SenderReport {
            ssrc,
            info: got,
            blocks,
        } = pkts[0]
        else {
            panic!("not an SR: {:?}", pkts[0]);
        };
        assert_eq!(ssrc, 7);
        assert_eq!(got, info);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks.collect::<Vec<_>>(), vec![block(1), block(2)]);
        let RtcpPacket::Other { pt, count, body } = pkts[1] else {
            panic!("not SDES");
        };
        assert_eq!((pt, count), (PT_SDES, 1));
        assert_eq!(&body[6..16], b"switchyard");
        let RtcpPacket::ReceiverReport { ssrc, blocks } = pkts[2] else {
            panic!("not an RR");
        };
        assert_eq!(ssrc, 7);
        assert_eq!(blocks.collect::<Vec<_>>(), vec![block(3)]);
    }

    #[test]
    fn build_errors() {
        let mut small = [0u8; 20];
        assert_eq!(
            write_rr(&mut small, 1, &[block(0)]),
            Err(RtcpError::BufferTooSmall)
        );
        let many = [block(0); 32];
        let mut big = [0u8; 2048];
        assert_eq!(write_rr(&mut big, 1, &many), Err(RtcpError::TooLarge));
        assert_eq!(write_rr(&mut big, 1, &many[..31]), Ok(8 + 31 * 24));
    }

    #[test]
    fn cumulative_lost_is_24_bit_signed() {
        let mut b = block(0);
        let mut buf = [0u8; 64];
        for (lost, wire) in [(-3, -3), (0x7f_ffff, 0x7f_ffff), (0x100_0000, 0x7f_ffff)] {
            b.cumulative_lost = lost;
            let n = write_rr(&mut buf, 1, &[b]).unwrap();
            let Some(Ok(RtcpPacket::ReceiverReport { mut blocks, .. })) =
                parse_compound(&buf[..n]).next()
            else {
                panic!("no RR");
            };
            assert_eq!(blocks.next().unwrap().cumulative_lost, wire);
        }
    }

    #[test]
    fn rtt_arithmetic() {
        // RFC 3550 §6.4.1 example: A = 0xb710_8000 (46864.500 s), LSR = 0xb705_2000
        // (46853.125 s), DLSR = 0x0005_4000 (5.250 s) → RTT 6.125 s.
        let arrival = u64::from(0xb710_8000u32) << 16;
        let b = ReportBlock {
            lsr: 0xb705_2000,
            dlsr: 0x0005_4000,
            ..ReportBlock::default()
        };
        assert_eq!(
            round_trip_time(arrival, &b),
            Some(Duration::from_millis(6125))
        );
        // No SR seen by the peer yet.
        let none = ReportBlock { lsr: 0, ..b };
        assert_eq!(round_trip_time(arrival, &none), None);
        // Peer claims a delay longer than elapsed: negative, rejected.
        let neg = ReportBlock {
            dlsr: 0x0010_0000,
            ..b
        };
        assert_eq!(round_trip_time(arrival, &neg), None);
        // Across the 32-bit wrap of the middle word.
        let wrap = ReportBlock {
            lsr: 0xffff_8000,
            dlsr: 0x0000_4000,
            ..b
        };
        assert_eq!(
            round_trip_time(u64::from(0x0000_8000u32) << 16, &wrap),
            Some(Duration::from_millis(750))
        );
    }

    #[test]
    fn report_block_from_stats_and_sr() {
        let mut stats = RtpStats::new();
        let mut buf = [0u8; 256];
        let mut feed = |stats: &mut RtpStats, seq: u16| {
            let h = RtpHeader {
                marker: false,
                pt: 0,
                seq,
                timestamp: u32::from(seq) * 160,
                ssrc: 99,
            };
            let n = write_packet(&mut buf, &h, &[0; 160]).unwrap();
            stats.on_packet(&RtpView::parse(&buf[..n]).unwrap(), u32::from(seq) * 160);
        };
        // An origin instant: only differences matter here.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut rep = ReceptionReporter::new();
        assert_eq!(rep.report_block(&stats, t0), None);
        // 0..10 with 3 and 4 missing: 8 received, 2 lost of 10 → 51/256.
        for s in (0..10).filter(|s| *s != 3 && *s != 4) {
            feed(&mut stats, s);
        }
        let b = rep.report_block(&stats, t0).unwrap();
        assert_eq!(b.ssrc, 99);
        assert_eq!(b.fraction_lost, (2 * 256 / 10) as u8);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.ext_highest_seq, 9);
        assert_eq!((b.lsr, b.dlsr), (0, 0));
        // Next interval: 10..20 all received → fraction 0, cumulative still 2.
        for s in 10..20 {
            feed(&mut stats, s);
        }
        let sr = SenderInfo {
            ntp: 0x1234_5678_9abc_def0,
            rtp_ts: 0,
            packet_count: 0,
            octet_count: 0,
        };
        rep.on_sender_report(&sr, t0);
        let b = rep
            .report_block(&stats, t0 + Duration::from_millis(1500))
            .unwrap();
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.ext_highest_seq, 19);
        assert_eq!(b.lsr, 0x5678_9abc);
        assert_eq!(b.dlsr, 0x0001_8000);
    }

    #[test]
    fn rejects_malformed() {
        let mut buf = [0u8; 64];
        let n = write_rr(&mut buf, 1, &[block(0)]).unwrap();
        fn first(b: &[u8]) -> Result<RtcpPacket<'_>, RtcpError> {
            parse_compound(b).next().unwrap()
        }
        assert_eq!(first(&buf[..3]), Err(RtcpError::TooShort));
        assert_eq!(first(&buf[..n - 4]), Err(RtcpError::LengthOverrun));
        let mut v1 = buf;
        v1[0] = 0x41;
        assert_eq!(first(&v1[..n]), Err(RtcpError::BadVersion(1)));
        let mut cnt = buf;
        cnt[0] = 0x82; // claims 2 blocks, has 1
        assert_eq!(first(&cnt[..n]), Err(RtcpError::CountOverrun));
        let mut pad = buf;
        pad[0] |= 0x20;
        pad[n - 1] = 0;
        assert_eq!(first(&pad[..n]), Err(RtcpError::BadPadding));
        // An error ends the iteration.
        let mut two = [0u8; 128];
        two[..n].copy_from_slice(&buf[..n]);
        two[n] = 0x40;
        two[n + 3] = 1;
        let all: Vec<_> = parse_compound(&two[..n + 8]).collect();
        assert_eq!(all.len(), 2);
        assert!(all[1].is_err());
    }

    #[test]
    fn leg_reporter_rr_then_sr_and_rtt_from_the_answer() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut leg = LegReporter::new();
        let mut stats = RtpStats::new();
        let mut buf = [0u8; 256];
        // Nothing sent, nothing received: an empty RR plus CNAME.
        let n = leg
            .write_report(&mut buf, 42, None, &stats, b"sy", t0)
            .unwrap();
        let pkts: Vec<_> = parse_compound(&buf[..n]).map(Result::unwrap).collect();
        assert!(
            matches!(pkts[0], RtcpPacket::ReceiverReport { ssrc: 42, blocks } if blocks.is_empty())
        );
        assert!(matches!(pkts[1], RtcpPacket::Other { pt: PT_SDES, .. }));
        // Media arrived and we sent some: an SR with one block about the far end.
        let mut pbuf = [0u8; 64];
        for seq in [1u16, 2, 4] {
            let h = RtpHeader {
                marker: false,
                pt: 0,
                seq,
                timestamp: 0,
                ssrc: 7,
            };
            let len = write_packet(&mut pbuf, &h, &[0; 20]).unwrap();
            stats.on_packet(&RtpView::parse(&pbuf[..len]).unwrap(), 0);
        }
        let info = SenderInfo::new(wall, 1234, 10, 1600);
        let n = leg
            .write_report(&mut buf, 42, Some(&info), &stats, b"sy", t0)
            .unwrap();
        let Some(Ok(RtcpPacket::SenderReport {
            ssrc,
            info: got,
            mut blocks,
        })) = parse_compound(&buf[..n]).next()
        else {
            panic!("no SR");
        };
        assert_eq!((ssrc, got), (42, info));
        let b = blocks.next().unwrap();
        assert_eq!((b.ssrc, b.cumulative_lost, b.ext_highest_seq), (7, 1, 4));
        // The far end answers 250 ms after our SR, having held it for 200 ms: RTT 50 ms.
        let answer = ReportBlock {
            ssrc: 42,
            lsr: ntp_middle(info.ntp),
            dlsr: 65_536 / 5,
            ..ReportBlock::default()
        };
        let mut rbuf = [0u8; 64];
        let n = write_rr(&mut rbuf, 7, &[answer]).unwrap();
        let arrival = ntp_timestamp(wall + Duration::from_millis(250));
        assert!(leg.on_compound(&rbuf[..n], 42, t0, arrival));
        let rtt = leg.rtt().unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(50)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        // A block about someone else's SSRC, or garbage, changes nothing.
        let other = ReportBlock { ssrc: 43, ..answer };
        let n = write_rr(&mut rbuf, 7, &[other]).unwrap();
        assert!(leg.on_compound(&rbuf[..n], 42, t0, arrival + (1 << 32)));
        assert!(!leg.on_compound(&[0x40, 0, 0], 42, t0, arrival));
        assert_eq!((leg.rtt(), leg.reports_received()), (Some(rtt), 2));
    }

    #[test]
    fn leg_reporter_echoes_the_far_ends_sr_in_lsr_dlsr() {
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let mut leg = LegReporter::new();
        let mut stats = RtpStats::new();
        let mut pbuf = [0u8; 64];
        let h = RtpHeader {
            marker: false,
            pt: 0,
            seq: 1,
            timestamp: 0,
            ssrc: 7,
        };
        let len = write_packet(&mut pbuf, &h, &[0; 20]).unwrap();
        stats.on_packet(&RtpView::parse(&pbuf[..len]).unwrap(), 0);
        let sr = SenderInfo {
            ntp: 0x0000_1111_2222_0000,
            rtp_ts: 0,
            packet_count: 1,
            octet_count: 20,
        };
        let mut buf = [0u8; 128];
        let n = write_sr(&mut buf, 7, &sr, &[]).unwrap();
        assert!(leg.on_compound(&buf[..n], 42, t0, 0));
        let n = leg
            .write_report(
                &mut buf,
                42,
                None,
                &stats,
                b"sy",
                t0 + Duration::from_millis(500),
            )
            .unwrap();
        let Some(Ok(RtcpPacket::ReceiverReport { mut blocks, .. })) =
            parse_compound(&buf[..n]).next()
        else {
            panic!("no RR");
        };
        let b = blocks.next().unwrap();
        assert_eq!((b.lsr, b.dlsr), (0x1111_2222, 0x8000));
    }

    #[test]
    fn intervals_are_randomised_within_half_to_one_and_a_half() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let got: Vec<_> = (0..200)
            .map(|_| randomized_interval(REPORT_INTERVAL, &mut rng))
            .collect();
        assert!(
            got.iter()
                .all(|d| (Duration::from_millis(2500)..Duration::from_millis(7500)).contains(d))
        );
        let (lo, hi) = (got.iter().min().unwrap(), got.iter().max().unwrap());
        assert!(
            *lo < Duration::from_secs(3) && *hi > Duration::from_secs(7),
            "{lo:?}..{hi:?}"
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut total = 0usize;
            for p in parse_compound(&data) {
                match p {
                    Ok(RtcpPacket::SenderReport { blocks, .. })
                    | Ok(RtcpPacket::ReceiverReport { blocks, .. }) => {
                        total += blocks.count();
                    }
                    Ok(RtcpPacket::Other { body, .. }) => prop_assert!(body.len() <= data.len()),
                    Err(_) => {}
                }
            }
            prop_assert!(total * BLOCK <= data.len());
        }

        #[test]
        fn report_blocks_round_trip(
            ssrc in any::<u32>(), fraction in any::<u8>(), lost in -0x80_0000i32..0x80_0000,
            ext in any::<u32>(), jitter in any::<u32>(), lsr in any::<u32>(), dlsr in any::<u32>(),
        ) {
            let b = ReportBlock { ssrc, fraction_lost: fraction, cumulative_lost: lost,
                ext_highest_seq: ext, jitter, lsr, dlsr };
            let mut buf = [0u8; 64];
            let n = write_sr(&mut buf, 5, &SenderInfo { ntp: 1, rtp_ts: 2, packet_count: 3,
                octet_count: 4 }, &[b]).unwrap();
            let got: Vec<_> = parse_compound(&buf[..n]).collect();
            prop_assert_eq!(got.len(), 1);
            match got[0] {
                Ok(RtcpPacket::SenderReport { mut blocks, .. }) => {
                    prop_assert_eq!(blocks.next(), Some(b));
                }
                _ => prop_assert!(false, "not an SR"),
            }
        }
    }
}
