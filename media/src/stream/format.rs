//! A stream's audio format and payload ⇄ PCM conversion.
//!
//! - `audio/x-mulaw`, 8 kHz: G.711 µ-law, one byte per sample (Twilio's only format and
//!   the default).
//! - `audio/x-l16`, 8, 16 or 24 kHz: 16-bit signed linear PCM in **network byte order
//!   (big-endian)**. Telnyx's stream payloads are RTP payloads ("base64-encoded RTP
//!   payload without RTP headers", L16 among its codecs), and an RTP L16 payload is
//!   big-endian by definition (RFC 3551 §4.5.11; the IANA `audio/L16` type). Vonage's
//!   little-endian L16 travels as binary WebSocket frames, a different protocol this
//!   module does not speak.

use super::FRAME_MS;
use crate::g711;

/// The payload encoding of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// G.711 µ-law, `audio/x-mulaw`.
    Mulaw,
    /// 16-bit linear PCM, big-endian, `audio/x-l16`.
    L16,
}

/// Why a format or a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("unknown stream encoding {0:?} (audio/x-mulaw or audio/x-l16)")]
    UnknownEncoding(String),
    #[error("{encoding} does not run at {rate} Hz (µ-law: 8000; L16: 8000, 16000, 24000)")]
    UnsupportedRate { encoding: &'static str, rate: u32 },
}

/// Encoding plus sample rate (always mono).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamFormat {
    encoding: Encoding,
    rate: u32,
}

impl Default for StreamFormat {
    fn default() -> Self {
        Self::MULAW_8K
    }
}

impl StreamFormat {
    /// The default: µ-law at 8 kHz.
    pub const MULAW_8K: StreamFormat = StreamFormat {
        encoding: Encoding::Mulaw,
        rate: 8_000,
    };

    /// Rates L16 streams may run at.
    pub const L16_RATES: [u32; 3] = [8_000, 16_000, 24_000];

    /// L16 at `rate` (8000, 16000 or 24000).
    pub fn l16(rate: u32) -> Result<Self, FormatError> {
        if Self::L16_RATES.contains(&rate) {
            Ok(StreamFormat {
                encoding: Encoding::L16,
                rate,
            })
        } else {
            Err(FormatError::UnsupportedRate {
                encoding: "audio/x-l16",
                rate,
            })
        }
    }

    /// From the names used in `start.mediaFormat` (and in stream configuration).
    pub fn from_mime(encoding: &str, rate: u32) -> Result<Self, FormatError> {
        match encoding.to_ascii_lowercase().as_str() {
            "audio/x-mulaw" if rate == 8_000 => Ok(Self::MULAW_8K),
            "audio/x-mulaw" => Err(FormatError::UnsupportedRate {
                encoding: "audio/x-mulaw",
                rate,
            }),
            "audio/x-l16" => Self::l16(rate),
            _ => Err(FormatError::UnknownEncoding(encoding.to_owned())),
        }
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// `mediaFormat.encoding`.
    pub fn mime(&self) -> &'static str {
        match self.encoding {
            Encoding::Mulaw => "audio/x-mulaw",
            Encoding::L16 => "audio/x-l16",
        }
    }

    /// `mediaFormat.sampleRate`, and the rate of the stream's PCM pipeline.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Bytes per sample on the wire.
    pub fn bytes_per_sample(&self) -> usize {
        match self.encoding {
            Encoding::Mulaw => 1,
            Encoding::L16 => 2,
        }
    }

    /// Samples in one 20 ms frame at the stream rate.
    pub fn samples_per_frame(&self) -> usize {
        (self.rate / 1000 * FRAME_MS) as usize
    }

    /// Appends the wire bytes for `pcm` to `out`.
    pub fn encode(&self, pcm: &[i16], out: &mut Vec<u8>) {
        match self.encoding {
            Encoding::Mulaw => {
                let start = out.len();
                out.resize(start + pcm.len(), 0);
                g711::encode_ulaw(pcm, &mut out[start..]);
            }
            Encoding::L16 => {
                out.reserve(pcm.len() * 2);
                for s in pcm {
                    out.extend_from_slice(&s.to_be_bytes());
                }
            }
        }
    }
}

/// Wire bytes → PCM, for payloads of any length: an L16 payload that splits a sample
/// across two messages keeps the odd byte for the next one.
#[derive(Debug, Clone)]
pub struct PayloadDecoder {
    format: StreamFormat,
    odd_byte: Option<u8>,
}

impl PayloadDecoder {
    pub fn new(format: StreamFormat) -> Self {
        PayloadDecoder {
            format,
            odd_byte: None,
        }
    }

    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Appends the samples in `payload` to `out`.
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        match self.format.encoding {
            Encoding::Mulaw => out.extend(payload.iter().map(|&b| g711::ulaw_to_linear(b))),
            Encoding::L16 => {
                let mut rest = payload;
                if let Some(hi) = self.odd_byte.take() {
                    match rest.split_first() {
                        Some((&lo, tail)) => {
                            out.push(i16::from_be_bytes([hi, lo]));
                            rest = tail;
                        }
                        None => {
                            self.odd_byte = Some(hi);
                            return;
                        }
                    }
                }
                let mut pairs = rest.chunks_exact(2);
                out.extend(pairs.by_ref().map(|p| i16::from_be_bytes([p[0], p[1]])));
                self.odd_byte = pairs.remainder().first().copied();
            }
        }
    }

    /// Forgets a held odd byte (after a clear or a reconnection).
    pub fn reset(&mut self) {
        self.odd_byte = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_refuse() {
        assert_eq!(
            StreamFormat::from_mime("audio/x-mulaw", 8000),
            Ok(StreamFormat::MULAW_8K)
        );
        let l16 = StreamFormat::from_mime("audio/x-l16", 16000).unwrap();
        assert_eq!((l16.mime(), l16.sample_rate()), ("audio/x-l16", 16000));
        assert_eq!(l16.samples_per_frame(), 320);
        assert!(StreamFormat::from_mime("audio/x-mulaw", 16000).is_err());
        assert!(StreamFormat::from_mime("audio/x-l16", 48000).is_err());
        assert!(StreamFormat::from_mime("audio/opus", 48000).is_err());
        assert_eq!(StreamFormat::default(), StreamFormat::MULAW_8K);
    }

    #[test]
    fn l16_is_big_endian_and_round_trips() {
        let f = StreamFormat::l16(24000).unwrap();
        let mut wire = Vec::new();
        f.encode(&[0x0102, -2, i16::MAX, i16::MIN], &mut wire);
        assert_eq!(wire, [0x01, 0x02, 0xff, 0xfe, 0x7f, 0xff, 0x80, 0x00]);
        let mut dec = PayloadDecoder::new(f);
        let mut pcm = Vec::new();
        dec.decode(&wire, &mut pcm);
        assert_eq!(pcm, [0x0102, -2, i16::MAX, i16::MIN]);
    }

    #[test]
    fn l16_keeps_a_split_sample_for_the_next_payload() {
        let f = StreamFormat::l16(8000).unwrap();
        let mut wire = Vec::new();
        let src: Vec<i16> = (0..7).map(|i| i * 1000 - 3000).collect();
        f.encode(&src, &mut wire);
        let mut dec = PayloadDecoder::new(f);
        let mut pcm = Vec::new();
        // 14 bytes in pieces of 3, 1, 0, 5, 5.
        for piece in [
            &wire[..3],
            &wire[3..4],
            &wire[4..4],
            &wire[4..9],
            &wire[9..],
        ] {
            dec.decode(piece, &mut pcm);
        }
        assert_eq!(pcm, src);
    }

    #[test]
    fn mulaw_round_trips_within_companding_error() {
        let f = StreamFormat::MULAW_8K;
        let src: Vec<i16> = (0..160)
            .map(|i| ((i as f32 * 0.3).sin() * 12000.0) as i16)
            .collect();
        let mut wire = Vec::new();
        f.encode(&src, &mut wire);
        assert_eq!(wire.len(), 160);
        let mut pcm = Vec::new();
        PayloadDecoder::new(f).decode(&wire, &mut pcm);
        for (a, b) in src.iter().zip(&pcm) {
            // µ-law's step at 12000 is 512: the error is at most half of it.
            assert!((i32::from(*a) - i32::from(*b)).abs() <= 512, "{a} vs {b}");
        }
        // Decoding is exact the other way: code → linear → code.
        let mut again = Vec::new();
        f.encode(&pcm, &mut again);
        assert_eq!(again, wire);
    }
}
