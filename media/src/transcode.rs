//! Frame-by-frame transcoding between two codecs: decode → resample (when the PCM rates
//! differ) → encode, one packet of `ptime_ms` in, one packet out.
//!
//! Pass-through when both legs use the same codec is the relay's job, not this one's.
//! All buffers are sized at construction; steady-state frames allocate nothing.

use crate::codec::{self, AudioCodec, CodecError, Decoder, Encoder};
use crate::resample::Resampler;

/// Converts RTP payloads of one codec into payloads of another.
pub struct Transcoder {
    from: AudioCodec,
    to: AudioCodec,
    ptime_ms: u32,
    decoder: Box<dyn Decoder + Send>,
    encoder: Box<dyn Encoder + Send>,
    resampler: Resampler,
    /// Decoded PCM at the source rate.
    pcm: Vec<i16>,
    /// PCM at the target rate (unused when the rates match).
    resampled: Vec<i16>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("ptime_ms", &self.ptime_ms)
            .field("resampler", &self.resampler)
            .finish_non_exhaustive()
    }
}

impl Transcoder {
    /// A transcoder for packets of `ptime_ms` (which both codecs must support).
    pub fn new(from: AudioCodec, to: AudioCodec, ptime_ms: u32) -> Result<Self, CodecError> {
        for codec in [from, to] {
            if !codec.supports_ptime(ptime_ms) {
                return Err(CodecError::Ptime { codec, ptime_ms });
            }
        }
        let decoder = codec::decoder(from)?;
        let encoder = codec::encoder(to)?;
        let resampler = Resampler::with_frame_ms(from.sample_rate(), to.sample_rate(), ptime_ms)?;
        // Opus may legitimately deliver up to 120 ms in one packet; size for that.
        let pcm = Vec::with_capacity(from.frame_samples(120).max(resampler.input_frame_len()));
        let resampled = vec![0; resampler.output_frame_len()];
        Ok(Self {
            from,
            to,
            ptime_ms,
            decoder,
            encoder,
            resampler,
            pcm,
            resampled,
        })
    }

    /// Source codec.
    pub fn from_codec(&self) -> AudioCodec {
        self.from
    }

    /// Target codec.
    pub fn to_codec(&self) -> AudioCodec {
        self.to
    }

    /// Frame duration in ms.
    pub fn ptime_ms(&self) -> u32 {
        self.ptime_ms
    }

    /// A buffer size that always holds one output payload.
    pub fn max_output_bytes(&self) -> usize {
        self.to.max_payload_bytes(self.ptime_ms)
    }

    /// Delay added by rate conversion, in samples at the target codec's PCM rate
    /// (codec look-ahead comes on top).
    pub fn resampler_delay_samples(&self) -> usize {
        self.resampler.delay_samples()
    }

    /// Transcodes one received payload into `out`; returns the output payload length.
    /// The payload must decode to exactly one `ptime_ms` frame.
    pub fn process(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, CodecError> {
        self.decoder.decode(payload, &mut self.pcm)?;
        let expected = self.resampler.input_frame_len();
        if self.pcm.len() != expected {
            return Err(CodecError::FrameLength {
                expected,
                got: self.pcm.len(),
            });
        }
        self.encode_pcm(out)
    }

    /// Produces the output payload for a lost input packet from the source decoder's
    /// concealment, keeping the target encoder's state continuous.
    pub fn conceal(&mut self, out: &mut [u8]) -> Result<usize, CodecError> {
        let samples = self.resampler.input_frame_len();
        self.decoder.conceal(&mut self.pcm, samples);
        if self.pcm.len() != samples {
            // A decoder that could not conceal that many samples: pad with silence.
            self.pcm.resize(samples, 0);
        }
        self.encode_pcm(out)
    }

    fn encode_pcm(&mut self, out: &mut [u8]) -> Result<usize, CodecError> {
        if self.resampler.is_passthrough() {
            return self.encoder.encode(&self.pcm, out);
        }
        let n = self.resampler.process(&self.pcm, &mut self.resampled)?;
        let pcm = self.resampled.get(..n).unwrap_or_default();
        self.encoder.encode(pcm, out)
    }
}
