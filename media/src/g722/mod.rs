//! ITU-T G.722 (09/2012) 7 kHz wideband audio at 64 kbit/s (mode 1), sans-IO.
//!
//! Structure follows the Recommendation: a 24-tap transmit QMF (clause 3.1) splits
//! 16 kHz PCM into two 8 kHz sub-bands; the lower is coded with 6-bit ADPCM and the
//! higher with 2-bit ADPCM (clauses 3.2-3.6, fixed point per clause 6), and each pair
//! of codes becomes one octet `IH << 6 | IL`. The decoder mirrors this with the 6-bit
//! inverse quantiser for the output (clause 4) and the receive QMF (clause 4.4).
//! Only mode 1 is implemented: all six lower-band bits are audio, no auxiliary data.
//!
//! Rates, and the RTP quirk: the codec samples at 16 kHz and emits one octet per two
//! samples, but RFC 3551 (section 4.5.2) registers payload type 9 with an RTP clock
//! rate of **8000** Hz, an error kept for backward compatibility. So a 20 ms frame is
//! 320 PCM samples = 160 octets, and the RTP timestamp advances by **160** per frame,
//! exactly as for G.711. Use [`RTP_CLOCK_RATE`], not [`SAMPLE_RATE`], for timestamps.
//!
//! The fixed-point arithmetic follows clause 6 exactly; `tests/g722.rs` checks the
//! encoder and decoder bit for bit against an independent implementation that passes
//! the ITU-T test sequences.
//!
//! The codec delay (transmit plus receive QMF) is [`CODEC_DELAY_SAMPLES`] at 16 kHz.
//! Encoding and decoding allocate nothing; state is a few hundred bytes.

mod adpcm;
mod qmf;
mod tables;

use adpcm::Band;
use qmf::{Analysis, Synthesis};

/// PCM sample rate the codec works at.
pub const SAMPLE_RATE: u32 = 16_000;

/// RTP timestamp clock rate for G.722 (RFC 3551's historical 8000, see module docs).
pub const RTP_CLOCK_RATE: u32 = 8_000;

/// Static RTP payload type (RFC 3551).
pub const PAYLOAD_TYPE: u8 = 9;

/// End-to-end delay of encode followed by decode, in 16 kHz samples, all of it from
/// the two 24-tap QMFs (the ADPCM adds none).
pub const CODEC_DELAY_SAMPLES: usize = 22;

/// G.722 encoder: 16 kHz 16-bit PCM in, 64 kbit/s octets out.
#[derive(Debug, Clone)]
pub struct G722Encoder {
    qmf: Analysis,
    low: Band,
    high: Band,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// An encoder in the Recommendation's reset state.
    pub const fn new() -> Self {
        Self {
            qmf: Analysis::new(),
            low: Band::new_low(),
            high: Band::new_high(),
        }
    }

    /// Encodes `pcm16k` into `out` and returns the number of octets written:
    /// `pcm16k.len() / 2`, or fewer if `out` is shorter. Each octet needs two samples,
    /// so a trailing odd sample is ignored (callers pass whole frames).
    pub fn encode(&mut self, pcm16k: &[i16], out: &mut [u8]) -> usize {
        let mut n = 0;
        for (pair, o) in pcm16k.chunks_exact(2).zip(out.iter_mut()) {
            let (xl, xh) = self.qmf.split(pair[0], pair[1]);
            let il = self.low.encode_low(xl);
            let ih = self.high.encode_high(xh);
            *o = (ih << 6) | il;
            n += 1;
        }
        n
    }

    /// Returns to the reset state (e.g. after a discontinuity in the input).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

/// G.722 decoder: 64 kbit/s octets in, 16 kHz 16-bit PCM out.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    qmf: Synthesis,
    low: Band,
    high: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A decoder in the Recommendation's reset state.
    pub const fn new() -> Self {
        Self {
            qmf: Synthesis::new(),
            low: Band::new_low(),
            high: Band::new_high(),
        }
    }

    /// Decodes `data` into `out` and returns the number of samples written:
    /// `data.len() * 2`, or fewer (always even) if `out` is shorter. Every octet is a
    /// valid code word, so any input decodes.
    pub fn decode(&mut self, data: &[u8], out: &mut [i16]) -> usize {
        let mut n = 0;
        for (&octet, o) in data.iter().zip(out.chunks_exact_mut(2)) {
            let rl = self.low.decode_low(octet & 0x3f);
            let rh = self.high.decode_high(octet >> 6);
            let (first, second) = self.qmf.merge(rl, rh);
            o[0] = first;
            o[1] = second;
            n += 2;
        }
        n
    }

    /// Returns to the reset state (e.g. on a new stream or SSRC change).
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}
