//! Audio codecs behind one encoder/decoder interface: G.711 µ-law/A-law (ITU-T G.711),
//! G.722 (ITU-T G.722, 16 kHz audio on an 8 kHz RTP clock per RFC 3551 §4.5.2) and Opus
//! (RFC 6716, RTP payload per RFC 7587: always a 48 kHz clock).
//!
//! PCM is mono i16 at the codec's [`AudioCodec::sample_rate`]. Decoders write into a
//! caller-owned `Vec` whose capacity is reused, and encoders into a caller-owned byte slice,
//! so steady-state frames allocate nothing. Packet-loss concealment: Opus uses its own PLC;
//! the waveform codecs repeat the last good frame and fade it to silence over 60 ms.

use crate::g711;
use crate::resample::ResampleError;

/// A codec the media engine can decode and encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    /// G.711 µ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.722 sub-band ADPCM at 64 kbit/s.
    G722,
    /// Opus. `channels` is the SDP encoding parameter (RFC 7587 always says 2); the
    /// engine's PCM is mono either way: the decoder downmixes, the encoder sends mono.
    Opus { channels: u8 },
}

impl AudioCodec {
    /// Rate of the PCM the codec consumes and produces.
    pub const fn sample_rate(self) -> u32 {
        match self {
            AudioCodec::Pcmu | AudioCodec::Pcma => 8_000,
            AudioCodec::G722 => 16_000,
            AudioCodec::Opus { .. } => 48_000,
        }
    }

    /// RTP timestamp clock rate: G.722 keeps 8000 for historical reasons (RFC 3551 §4.5.2).
    pub const fn rtp_clock_rate(self) -> u32 {
        match self {
            AudioCodec::Pcmu | AudioCodec::Pcma | AudioCodec::G722 => 8_000,
            AudioCodec::Opus { .. } => 48_000,
        }
    }

    /// PCM samples in one frame of `ptime_ms` at [`Self::sample_rate`].
    pub const fn frame_samples(self, ptime_ms: u32) -> usize {
        (self.sample_rate() / 1000 * ptime_ms) as usize
    }

    /// RTP timestamp increment for one frame of `ptime_ms`.
    pub const fn timestamp_step(self, ptime_ms: u32) -> u32 {
        self.rtp_clock_rate() / 1000 * ptime_ms
    }

    /// Largest payload one frame of `ptime_ms` can encode to (a safe `out` size).
    pub const fn max_payload_bytes(self, ptime_ms: u32) -> usize {
        match self {
            AudioCodec::Pcmu | AudioCodec::Pcma => self.frame_samples(ptime_ms),
            AudioCodec::G722 => self.frame_samples(ptime_ms) / 2,
            // RFC 6716 §3.2.1: at most 1275 bytes per Opus frame, up to 3 frames per 60 ms.
            AudioCodec::Opus { .. } => OPUS_MAX_PACKET,
        }
    }

    /// Whether frames of `ptime_ms` are valid for this codec.
    pub const fn supports_ptime(self, ptime_ms: u32) -> bool {
        match self {
            AudioCodec::Pcmu | AudioCodec::Pcma | AudioCodec::G722 => {
                ptime_ms >= 10 && ptime_ms <= 120 && ptime_ms.is_multiple_of(10)
            }
            AudioCodec::Opus { .. } => matches!(ptime_ms, 10 | 20 | 40 | 60),
        }
    }
}

/// The audio duration of an Opus packet in microseconds, from its TOC byte (RFC 6716
/// §3.1: the configuration gives the frame size, the code the number of frames, which
/// code 3 states in the next byte). `None` for an empty or malformed packet, or one over
/// the 120 ms a packet may hold.
pub fn opus_packet_duration_us(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = usize::from(toc >> 3);
    let frame_us: u32 = match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [10_000, 20_000, 40_000, 60_000][config % 4],
        // Hybrid: 10, 20 ms.
        12..=15 => [10_000, 20_000][config % 2],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [2_500, 5_000, 10_000, 20_000][config % 4],
    };
    let frames: u32 = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3f),
    };
    let total = frame_us * frames;
    (frames > 0 && total <= 120_000).then_some(total)
}

/// The packet duration in whole milliseconds of a payload of `codec`, as the relay and
/// the transcoder need it: G.711 and G.722 by size (both 64 kbit/s: 8 octets per ms),
/// Opus from its TOC byte (20 ms when that cannot be read, or is not a whole ms).
pub fn payload_ptime_ms(codec: AudioCodec, payload: &[u8]) -> u32 {
    match codec {
        AudioCodec::Pcmu | AudioCodec::Pcma | AudioCodec::G722 => {
            u32::try_from(payload.len() / 8).unwrap_or(u32::MAX)
        }
        AudioCodec::Opus { .. } => opus_packet_duration_us(payload)
            .filter(|us| us % 1000 == 0)
            .map_or(20, |us| us / 1000),
    }
}

/// Why a codec could not be built or could not code a frame.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// This build has no implementation of the codec, or its parameters are invalid.
    #[error("codec {0:?} is not supported")]
    Unsupported(AudioCodec),
    /// The frame duration is not valid for the codec.
    #[error("ptime {ptime_ms} ms is not supported by {codec:?}")]
    Ptime { codec: AudioCodec, ptime_ms: u32 },
    /// The output buffer cannot hold the encoded frame.
    #[error("output buffer holds {got} bytes, need {needed}")]
    OutputTooSmall { needed: usize, got: usize },
    /// A decoded or supplied frame has the wrong number of samples.
    #[error("frame has {got} samples, expected {expected}")]
    FrameLength { expected: usize, got: usize },
    /// An empty payload where audio was expected.
    #[error("empty payload")]
    EmptyPayload,
    /// The Opus codec reported an error (corrupt packet, bad frame size, ...).
    #[error("opus: {0}")]
    Opus(&'static str),
    /// Rate conversion failed.
    #[error(transparent)]
    Resample(#[from] ResampleError),
}

/// Turns RTP payloads into PCM.
pub trait Decoder {
    /// Replaces `out` with the PCM decoded from one payload. `out`'s capacity is reused.
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError>;
    /// Replaces `out` with `samples` of concealment audio for a lost packet.
    fn conceal(&mut self, out: &mut Vec<i16>, samples: usize);
    /// PCM rate in Hz.
    fn sample_rate(&self) -> u32;
    /// Which codec this is.
    fn codec(&self) -> AudioCodec;
}

/// Turns PCM into RTP payloads.
pub trait Encoder {
    /// Encodes one frame of `pcm` into the front of `out`; returns the payload length.
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError>;
    /// PCM rate in Hz.
    fn sample_rate(&self) -> u32;
    /// Which codec this is.
    fn codec(&self) -> AudioCodec;
}

/// A decoder for `codec`.
pub fn decoder(codec: AudioCodec) -> Result<Box<dyn Decoder + Send>, CodecError> {
    Ok(match codec {
        AudioCodec::Pcmu => Box::new(G711Decoder::new(G711Law::Ulaw)),
        AudioCodec::Pcma => Box::new(G711Decoder::new(G711Law::Alaw)),
        AudioCodec::G722 => g722_decoder()?,
        AudioCodec::Opus { channels } => Box::new(OpusDecoder::new(channels)?),
    })
}

/// An encoder for `codec` with default settings (Opus: see [`OpusSettings::default`]).
pub fn encoder(codec: AudioCodec) -> Result<Box<dyn Encoder + Send>, CodecError> {
    Ok(match codec {
        AudioCodec::Pcmu => Box::new(G711Encoder(G711Law::Ulaw)),
        AudioCodec::Pcma => Box::new(G711Encoder(G711Law::Alaw)),
        AudioCodec::G722 => g722_encoder()?,
        AudioCodec::Opus { channels } => {
            Box::new(OpusEncoder::new(channels, &OpusSettings::default())?)
        }
    })
}

/// An Opus encoder with explicit settings.
pub fn opus_encoder(
    channels: u8,
    settings: &OpusSettings,
) -> Result<Box<dyn Encoder + Send>, CodecError> {
    Ok(Box::new(OpusEncoder::new(channels, settings)?))
}

// ---------------------------------------------------------------------------------------
// Concealment shared by the waveform codecs.

/// Seconds over which a repeated frame fades from full level to silence.
const PLC_FADE_SECONDS: f32 = 0.06;

/// Repeat-and-fade concealment: replays the last good frame with a gain that falls
/// linearly, continuously across consecutive losses, to zero after [`PLC_FADE_SECONDS`].
#[derive(Debug)]
struct RepeatFade {
    last: Vec<i16>,
    gain: f32,
    step_per_sample: f32,
}

impl RepeatFade {
    fn new(sample_rate: u32) -> Self {
        Self {
            // 120 ms at 16 kHz: the largest frame expected, so warm-up never reallocates.
            last: Vec::with_capacity(1920),
            gain: 1.0,
            step_per_sample: 1.0 / (PLC_FADE_SECONDS * sample_rate as f32),
        }
    }

    fn remember(&mut self, pcm: &[i16]) {
        self.last.clear();
        self.last.extend_from_slice(pcm);
        self.gain = 1.0;
    }

    fn conceal(&mut self, out: &mut Vec<i16>, samples: usize) {
        out.clear();
        if self.last.is_empty() || self.gain <= 0.0 {
            out.resize(samples, 0);
            return;
        }
        let mut gain = self.gain;
        out.extend(self.last.iter().cycle().take(samples).map(|&s| {
            let v = f32::from(s) * gain;
            gain = (gain - self.step_per_sample).max(0.0);
            v as i16
        }));
        self.gain = gain;
    }
}

// ---------------------------------------------------------------------------------------
// G.711

#[derive(Debug, Clone, Copy)]
enum G711Law {
    Ulaw,
    Alaw,
}

impl G711Law {
    fn codec(self) -> AudioCodec {
        match self {
            G711Law::Ulaw => AudioCodec::Pcmu,
            G711Law::Alaw => AudioCodec::Pcma,
        }
    }
}

#[derive(Debug)]
struct G711Decoder {
    law: G711Law,
    plc: RepeatFade,
}

impl G711Decoder {
    fn new(law: G711Law) -> Self {
        Self {
            law,
            plc: RepeatFade::new(8_000),
        }
    }
}

impl Decoder for G711Decoder {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload);
        }
        out.clear();
        match self.law {
            G711Law::Ulaw => out.extend(payload.iter().map(|&c| g711::ulaw_to_linear(c))),
            G711Law::Alaw => out.extend(payload.iter().map(|&c| g711::alaw_to_linear(c))),
        }
        self.plc.remember(out);
        Ok(())
    }

    fn conceal(&mut self, out: &mut Vec<i16>, samples: usize) {
        self.plc.conceal(out, samples);
    }

    fn sample_rate(&self) -> u32 {
        8_000
    }

    fn codec(&self) -> AudioCodec {
        self.law.codec()
    }
}

#[derive(Debug)]
struct G711Encoder(G711Law);

impl Encoder for G711Encoder {
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        if out.len() < pcm.len() {
            return Err(CodecError::OutputTooSmall {
                needed: pcm.len(),
                got: out.len(),
            });
        }
        Ok(match self.0 {
            G711Law::Ulaw => g711::encode_ulaw(pcm, out),
            G711Law::Alaw => g711::encode_alaw(pcm, out),
        })
    }

    fn sample_rate(&self) -> u32 {
        8_000
    }

    fn codec(&self) -> AudioCodec {
        self.0.codec()
    }
}

// ---------------------------------------------------------------------------------------
// G.722 (the codec itself lives in `crate::g722`)

fn g722_decoder() -> Result<Box<dyn Decoder + Send>, CodecError> {
    Ok(Box::new(G722Dec {
        inner: crate::g722::G722Decoder::new(),
        plc: RepeatFade::new(16_000),
    }))
}

fn g722_encoder() -> Result<Box<dyn Encoder + Send>, CodecError> {
    Ok(Box::new(G722Enc(crate::g722::G722Encoder::new())))
}

#[derive(Debug)]
struct G722Dec {
    inner: crate::g722::G722Decoder,
    plc: RepeatFade,
}

impl Decoder for G722Dec {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        if payload.is_empty() {
            return Err(CodecError::EmptyPayload);
        }
        out.clear();
        out.resize(payload.len() * 2, 0);
        let n = self.inner.decode(payload, out);
        out.truncate(n);
        self.plc.remember(out);
        Ok(())
    }

    fn conceal(&mut self, out: &mut Vec<i16>, samples: usize) {
        self.plc.conceal(out, samples);
    }

    fn sample_rate(&self) -> u32 {
        16_000
    }

    fn codec(&self) -> AudioCodec {
        AudioCodec::G722
    }
}

#[derive(Debug)]
struct G722Enc(crate::g722::G722Encoder);

impl Encoder for G722Enc {
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        let needed = pcm.len() / 2;
        if out.len() < needed {
            return Err(CodecError::OutputTooSmall {
                needed,
                got: out.len(),
            });
        }
        Ok(self.0.encode(pcm, out))
    }

    fn sample_rate(&self) -> u32 {
        16_000
    }

    fn codec(&self) -> AudioCodec {
        AudioCodec::G722
    }
}

// ---------------------------------------------------------------------------------------
// Opus

/// Largest Opus packet: 3 frames of 1275 bytes plus framing (RFC 6716 §3.2.5).
const OPUS_MAX_PACKET: usize = 3 * 1275 + 7;
/// Longest Opus packet in samples: 120 ms at 48 kHz.
const OPUS_MAX_SAMPLES: usize = 5_760;

/// Opus encoder settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpusSettings {
    /// Target bitrate in bit/s.
    pub bitrate: i32,
    /// In-band forward error correction (RFC 6716 §2.1.7); costs bitrate.
    pub inband_fec: bool,
    /// Expected loss percentage, which steers FEC redundancy.
    pub packet_loss_perc: u8,
    /// Computational complexity 0..=10.
    pub complexity: u8,
}

impl Default for OpusSettings {
    /// VoIP-tuned mono at 24 kbit/s, FEC off.
    fn default() -> Self {
        Self {
            bitrate: 24_000,
            inband_fec: false,
            packet_loss_perc: 0,
            complexity: 5,
        }
    }
}

fn check_opus_channels(channels: u8) -> Result<(), CodecError> {
    if matches!(channels, 1 | 2) {
        Ok(())
    } else {
        Err(CodecError::Unsupported(AudioCodec::Opus { channels }))
    }
}

/// Opus through `opus-rs`, a pure-Rust port of libopus 1.6: no system library and no
/// cmake, so `cargo run` works on a machine with only a Rust toolchain.
struct OpusDecoder {
    channels: u8,
    inner: opus_rs::OpusDecoder,
    /// Float scratch the decoder writes into (reused: steady state allocates nothing).
    pcm: Vec<f32>,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl OpusDecoder {
    fn new(channels: u8) -> Result<Self, CodecError> {
        check_opus_channels(channels)?;
        // Mono output whatever the stream: the media engine mixes to one channel.
        let inner = opus_rs::OpusDecoder::new(48_000, 1).map_err(CodecError::Opus)?;
        Ok(Self {
            channels,
            inner,
            pcm: vec![0.0; OPUS_MAX_SAMPLES],
        })
    }

    fn run(
        &mut self,
        payload: &[u8],
        samples: usize,
        out: &mut Vec<i16>,
    ) -> Result<(), CodecError> {
        self.pcm.resize(samples.max(OPUS_MAX_SAMPLES), 0.0);
        let n = self
            .inner
            .decode(payload, samples, &mut self.pcm)
            .map_err(CodecError::Opus)?;
        out.clear();
        out.extend(self.pcm.iter().take(n).map(|&v| f32_to_i16(v)));
        Ok(())
    }
}

/// `opus_decode_float`'s scale (1.0 is 32768), saturated as `opus_decode` does.
fn f32_to_i16(v: f32) -> i16 {
    (v * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

impl Decoder for OpusDecoder {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), CodecError> {
        // An empty payload would ask the decoder to conceal: that is `conceal`'s job.
        if payload.is_empty() {
            out.clear();
            return Err(CodecError::EmptyPayload);
        }
        let result = self.run(payload, OPUS_MAX_SAMPLES, out);
        if result.is_err() {
            out.clear();
        }
        result
    }

    fn conceal(&mut self, out: &mut Vec<i16>, samples: usize) {
        if self.run(&[], samples, out).is_err() {
            // Opus conceals multiples of 2.5 ms only; otherwise fall back to silence.
            out.clear();
            out.resize(samples, 0);
        }
    }

    fn sample_rate(&self) -> u32 {
        48_000
    }

    fn codec(&self) -> AudioCodec {
        AudioCodec::Opus {
            channels: self.channels,
        }
    }
}

struct OpusEncoder {
    channels: u8,
    inner: opus_rs::OpusEncoder,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl OpusEncoder {
    fn new(channels: u8, settings: &OpusSettings) -> Result<Self, CodecError> {
        check_opus_channels(channels)?;
        let mut inner = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Voip)
            .map_err(CodecError::Opus)?;
        inner.bitrate_bps = settings.bitrate;
        inner.use_inband_fec = settings.inband_fec;
        inner.packet_loss_perc = i32::from(settings.packet_loss_perc.min(100));
        inner.complexity = i32::from(settings.complexity.min(10));
        Ok(Self { channels, inner })
    }
}

impl Encoder for OpusEncoder {
    fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        let len = out.len().min(OPUS_MAX_PACKET);
        // In bounds: `len` is at most `out.len()`.
        self.inner
            .encode_i16(pcm, pcm.len(), &mut out[..len])
            .map_err(CodecError::Opus)
    }

    fn sample_rate(&self) -> u32 {
        48_000
    }

    fn codec(&self) -> AudioCodec {
        AudioCodec::Opus {
            channels: self.channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_frames() {
        assert_eq!(AudioCodec::G722.sample_rate(), 16_000);
        assert_eq!(AudioCodec::G722.rtp_clock_rate(), 8_000);
        assert_eq!(AudioCodec::G722.timestamp_step(20), 160);
        let opus = AudioCodec::Opus { channels: 2 };
        assert_eq!(opus.frame_samples(20), 960);
        assert_eq!(opus.timestamp_step(20), 960);
        assert_eq!(AudioCodec::Pcmu.frame_samples(30), 240);
        assert!(!opus.supports_ptime(30));
        assert!(AudioCodec::Pcma.supports_ptime(30));
    }

    #[test]
    fn g711_round_trip_and_buffer_check() {
        let mut enc = encoder(AudioCodec::Pcma).unwrap();
        let mut dec = decoder(AudioCodec::Pcma).unwrap();
        let pcm: Vec<i16> = (0..160).map(|i| (i * 100 - 8000) as i16).collect();
        let mut buf = [0u8; 160];
        assert_eq!(enc.encode(&pcm, &mut buf).unwrap(), 160);
        assert!(matches!(
            enc.encode(&pcm, &mut buf[..10]),
            Err(CodecError::OutputTooSmall { .. })
        ));
        let mut out = Vec::new();
        dec.decode(&buf, &mut out).unwrap();
        assert_eq!(out.len(), 160);
        for (a, b) in pcm.iter().zip(&out) {
            assert!((i32::from(*a) - i32::from(*b)).abs() < 300, "{a} vs {b}");
        }
        assert!(matches!(
            dec.decode(&[], &mut out),
            Err(CodecError::EmptyPayload)
        ));
    }

    #[test]
    fn opus_packet_durations_from_the_toc_byte() {
        // Encoded by our encoder at each frame size it takes.
        for ms in [10u32, 20, 40, 60] {
            let mut enc = encoder(AudioCodec::Opus { channels: 2 }).unwrap();
            let pcm = vec![0i16; 48 * ms as usize];
            let mut out = [0u8; OPUS_MAX_PACKET];
            let n = enc.encode(&pcm, &mut out).unwrap();
            assert_eq!(
                opus_packet_duration_us(&out[..n]),
                Some(ms * 1000),
                "{ms} ms"
            );
            assert_eq!(
                payload_ptime_ms(AudioCodec::Opus { channels: 2 }, &out[..n]),
                ms
            );
        }
        // RFC 6716 §3.1 by hand: CELT 2.5 ms x code 3 with 8 frames = 20 ms; SILK 60 ms x
        // 2 frames = 120 ms; 3 x 60 ms is over the limit; code 3 needs its count byte.
        assert_eq!(opus_packet_duration_us(&[(16 << 3) | 3, 8]), Some(20_000));
        assert_eq!(opus_packet_duration_us(&[(3 << 3) | 1]), Some(120_000));
        assert_eq!(opus_packet_duration_us(&[(3 << 3) | 3, 3]), None);
        assert_eq!(opus_packet_duration_us(&[(3 << 3) | 3]), None);
        assert_eq!(opus_packet_duration_us(&[]), None);
        assert_eq!(payload_ptime_ms(AudioCodec::Opus { channels: 2 }, &[]), 20);
        assert_eq!(payload_ptime_ms(AudioCodec::G722, &[0; 240]), 30);
        assert_eq!(payload_ptime_ms(AudioCodec::Pcmu, &[0; 160]), 20);
    }

    #[test]
    fn opus_rejects_garbage_and_bad_channels() {
        assert!(decoder(AudioCodec::Opus { channels: 3 }).is_err());
        let mut dec = decoder(AudioCodec::Opus { channels: 2 }).unwrap();
        let mut out = Vec::new();
        assert!(dec.decode(&[], &mut out).is_err());
        // TOC says code 3 (arbitrary frame count) but there is no count byte.
        assert!(dec.decode(&[0xff], &mut out).is_err());
        let mut enc = encoder(AudioCodec::Opus { channels: 1 }).unwrap();
        let mut buf = [0u8; 1500];
        // 7 samples is not an Opus frame size.
        assert!(enc.encode(&[0; 7], &mut buf).is_err());
    }
}
