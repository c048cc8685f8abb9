//! RTP fixed header (RFC 3550 §5.1): a borrowed reader and an in-place writer.
//!
//! In: a received UDP payload ([`RtpView::parse`]) or a caller-owned send buffer
//! ([`RtpHeader::write`], [`write_packet`]). Out: header fields and the payload slice,
//! or the number of bytes written. Nothing here allocates, so it is safe on the
//! per-packet path. [`RtpSender`] keeps the outgoing seq/timestamp/SSRC state.

use rand::Rng;

/// Size of the fixed header without CSRCs.
pub const HEADER_LEN: usize = 12;

/// Why a datagram is not a valid RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    /// Shorter than the fixed header.
    #[error("packet shorter than the RTP header")]
    TooShort,
    /// Version field is not 2.
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    /// The CSRC list runs past the end.
    #[error("CSRC list exceeds packet")]
    CsrcOverrun,
    /// The header extension runs past the end.
    #[error("header extension exceeds packet")]
    ExtensionOverrun,
    /// The padding count is 0 or larger than what follows the header.
    #[error("bad padding length")]
    BadPadding,
    /// The output buffer is too small.
    #[error("buffer too small")]
    BufferTooSmall,
}

/// A validated, borrowed view of an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView<'a> {
    marker: bool,
    pt: u8,
    seq: u16,
    timestamp: u32,
    ssrc: u32,
    padding: bool,
    csrcs: &'a [u8],
    extension: Option<(u16, &'a [u8])>,
    payload: &'a [u8],
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

impl<'a> RtpView<'a> {
    /// Validates `buf` as an RTP packet: version 2, and the CSRC list, header extension
    /// and padding all within bounds.
    pub fn parse(buf: &'a [u8]) -> Result<RtpView<'a>, RtpError> {
        let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
            return Err(RtpError::TooShort);
        };
        if buf.len() < HEADER_LEN {
            return Err(RtpError::TooShort);
        }
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let padding = b0 & 0x20 != 0;
        let has_ext = b0 & 0x10 != 0;
        let cc = usize::from(b0 & 0x0f);
        let seq = be16(buf, 2).ok_or(RtpError::TooShort)?;
        let timestamp = be32(buf, 4).ok_or(RtpError::TooShort)?;
        let ssrc = be32(buf, 8).ok_or(RtpError::TooShort)?;

        let mut pos = HEADER_LEN + 4 * cc;
        let csrcs = buf.get(HEADER_LEN..pos).ok_or(RtpError::CsrcOverrun)?;
        let extension = if has_ext {
            let profile = be16(buf, pos).ok_or(RtpError::ExtensionOverrun)?;
            let words = usize::from(be16(buf, pos + 2).ok_or(RtpError::ExtensionOverrun)?);
            let start = pos + 4;
            pos = start + 4 * words;
            let data = buf.get(start..pos).ok_or(RtpError::ExtensionOverrun)?;
            Some((profile, data))
        } else {
            None
        };
        let mut end = buf.len();
        if padding {
            // The last octet counts the padding, itself included (RFC 3550 §5.1).
            let pad = usize::from(*buf.last().ok_or(RtpError::BadPadding)?);
            if pad == 0 || pad > end - pos {
                return Err(RtpError::BadPadding);
            }
            end -= pad;
        }
        let payload = buf.get(pos..end).ok_or(RtpError::TooShort)?;
        Ok(RtpView {
            marker: b1 & 0x80 != 0,
            pt: b1 & 0x7f,
            seq,
            timestamp,
            ssrc,
            padding,
            csrcs,
            extension,
            payload,
        })
    }

    /// Payload type.
    pub fn pt(&self) -> u8 {
        self.pt
    }

    /// Marker bit.
    pub fn marker(&self) -> bool {
        self.marker
    }

    /// Sequence number.
    pub fn seq(&self) -> u16 {
        self.seq
    }

    /// RTP timestamp.
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }

    /// Synchronisation source.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Whether the padding bit was set (the payload already excludes the padding).
    pub fn has_padding(&self) -> bool {
        self.padding
    }

    /// Number of CSRCs.
    pub fn csrc_count(&self) -> usize {
        self.csrcs.len() / 4
    }

    /// The contributing sources.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        self.csrcs
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// Header extension as (profile-defined id, data), if present.
    pub fn extension(&self) -> Option<(u16, &'a [u8])> {
        self.extension
    }

    /// The payload, without header, extension or padding.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
}

/// Fields of an outgoing packet's fixed header (no CSRCs, no extension, no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit (first packet of a talkspurt for audio).
    pub marker: bool,
    /// Payload type (0..=127).
    pub pt: u8,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the 12-byte header at the start of `buf`; returns [`HEADER_LEN`].
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, RtpError> {
        let out = buf.get_mut(..HEADER_LEN).ok_or(RtpError::BufferTooSmall)?;
        let mut h = [0u8; HEADER_LEN];
        h[0] = 0x80;
        h[1] = (u8::from(self.marker) << 7) | (self.pt & 0x7f);
        h[2..4].copy_from_slice(&self.seq.to_be_bytes());
        h[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        h[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out.copy_from_slice(&h);
        Ok(HEADER_LEN)
    }
}

/// Writes header and payload into `buf`; returns the packet length.
pub fn write_packet(buf: &mut [u8], hdr: &RtpHeader, payload: &[u8]) -> Result<usize, RtpError> {
    let total = HEADER_LEN + payload.len();
    let out = buf.get_mut(..total).ok_or(RtpError::BufferTooSmall)?;
    hdr.write(out)?;
    out.get_mut(HEADER_LEN..)
        .ok_or(RtpError::BufferTooSmall)?
        .copy_from_slice(payload);
    Ok(total)
}

/// Outgoing stream state: SSRC, next sequence number and timestamp (RFC 3550 §5.1:
/// all three start random).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpSender {
    ssrc: u32,
    seq: u16,
    timestamp: u32,
    pt: u8,
    samples_per_packet: u32,
    started: bool,
}

impl RtpSender {
    /// A new stream with random SSRC, seq and timestamp drawn from `rng`.
    pub fn new<R: Rng + ?Sized>(rng: &mut R, pt: u8, samples_per_packet: u32) -> Self {
        RtpSender {
            ssrc: rng.random(),
            seq: rng.random(),
            timestamp: rng.random(),
            pt,
            samples_per_packet,
            started: false,
        }
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Header for the next packet; `skipped` pacing intervals that sent nothing are
    /// added to the timestamp so it keeps pace with the clock. The first packet carries
    /// the marker bit.
    pub fn next_header(&mut self, skipped: u32) -> RtpHeader {
        if self.started {
            let step = self
                .samples_per_packet
                .wrapping_mul(skipped.wrapping_add(1));
            self.seq = self.seq.wrapping_add(1);
            self.timestamp = self.timestamp.wrapping_add(step);
        }
        let marker = !self.started;
        self.started = true;
        RtpHeader {
            marker,
            pt: self.pt,
            seq: self.seq,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn write_then_parse() {
        let hdr = RtpHeader {
            marker: true,
            pt: 8,
            seq: 0xfffe,
            timestamp: 0x1234_5678,
            ssrc: 0xdead_beef,
        };
        let mut buf = [0u8; 64];
        let n = write_packet(&mut buf, &hdr, &[0xd5; 20]).unwrap();
        assert_eq!(n, 32);
        assert_eq!(&buf[..4], &[0x80, 0x88, 0xff, 0xfe]);
        let v = RtpView::parse(&buf[..n]).unwrap();
        assert!(v.marker());
        assert_eq!(v.pt(), 8);
        assert_eq!(v.seq(), 0xfffe);
        assert_eq!(v.timestamp(), 0x1234_5678);
        assert_eq!(v.ssrc(), 0xdead_beef);
        assert_eq!(v.payload(), &[0xd5; 20]);
        assert_eq!(v.csrc_count(), 0);
        assert_eq!(v.extension(), None);
        assert_eq!(
            write_packet(&mut buf[..31], &hdr, &[0; 20]),
            Err(RtpError::BufferTooSmall)
        );
    }

    #[test]
    fn csrc_extension_padding() {
        let mut p = vec![0xb2, 0x00, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]; // V=2 P X CC=2
        p.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 11]); // CSRCs
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 1, 2, 3, 4]); // extension, 1 word
        p.extend_from_slice(&[9, 9, 9]); // payload
        p.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
        let v = RtpView::parse(&p).unwrap();
        assert_eq!(v.csrcs().collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(v.extension(), Some((0xbede, &[1u8, 2, 3, 4][..])));
        assert_eq!(v.payload(), &[9, 9, 9]);
        assert!(v.has_padding());
    }

    #[test]
    fn rejects_malformed() {
        let base = [0x80u8, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        assert_eq!(RtpView::parse(&base[..11]), Err(RtpError::TooShort));
        assert_eq!(RtpView::parse(&[]), Err(RtpError::TooShort));
        let mut v1 = base;
        v1[0] = 0x40;
        assert_eq!(RtpView::parse(&v1), Err(RtpError::BadVersion(1)));
        let mut cc = base;
        cc[0] = 0x81;
        assert_eq!(RtpView::parse(&cc), Err(RtpError::CsrcOverrun));
        let mut x = base.to_vec();
        x[0] = 0x90;
        x.extend_from_slice(&[0, 0, 0, 2, 1, 2, 3, 4]); // says 2 words, has 1
        assert_eq!(RtpView::parse(&x), Err(RtpError::ExtensionOverrun));
        let mut pad = base.to_vec();
        pad[0] = 0xa0;
        pad.push(0);
        assert_eq!(RtpView::parse(&pad), Err(RtpError::BadPadding));
        *pad.last_mut().unwrap() = 2; // only one byte after the header
        assert_eq!(RtpView::parse(&pad), Err(RtpError::BadPadding));
        *pad.last_mut().unwrap() = 1;
        assert_eq!(RtpView::parse(&pad).unwrap().payload(), &[] as &[u8]);
    }

    #[test]
    fn sender_sequences_and_wraps() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut s = RtpSender::new(&mut rng, 0, 160);
        let h1 = s.next_header(0);
        assert!(h1.marker);
        let h2 = s.next_header(0);
        assert!(!h2.marker);
        assert_eq!(h2.seq, h1.seq.wrapping_add(1));
        assert_eq!(h2.timestamp, h1.timestamp.wrapping_add(160));
        assert_eq!(h2.ssrc, h1.ssrc);
        let h3 = s.next_header(2);
        assert_eq!(h3.seq, h2.seq.wrapping_add(1));
        assert_eq!(h3.timestamp, h2.timestamp.wrapping_add(480));
        // Same seed, same stream; another seed, another SSRC.
        let mut again = RtpSender::new(&mut StdRng::seed_from_u64(1), 0, 160);
        assert_eq!(again.next_header(0), h1);
        let other = RtpSender::new(&mut StdRng::seed_from_u64(2), 0, 160);
        assert_ne!(other.ssrc(), h1.ssrc);
    }

    proptest! {
        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            if let Ok(v) = RtpView::parse(&data) {
                prop_assert!(v.payload().len() + HEADER_LEN <= data.len());
            }
        }
    }
}
