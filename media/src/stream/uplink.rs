//! The uplink: the call's 20 ms PCM frames → `media` payloads, per track.
//!
//! Each track numbers its chunks 1, 2, 3… and stamps each with the milliseconds of
//! media since the stream started (media time: 20 ms per frame, whatever the wall
//! clock did). Frames the driver could not send (the socket was down) still advance
//! the timestamp through [`Uplink::skip`], so after a reconnection the server sees the
//! gap; chunk numbers count only what was sent.

use super::format::StreamFormat;
use super::ms_for_samples;
use super::protocol::{Track, encode_payload};
use crate::resample::{ResampleError, Resampler};

/// One `media` message's content (the [`super::Sequencer`] adds the envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaChunk {
    pub track: Track,
    pub chunk: u64,
    pub timestamp_ms: u64,
    /// Base64 of the wire bytes.
    pub payload: String,
}

#[derive(Debug)]
struct TrackState {
    /// Call rate → stream rate.
    resampler: Resampler,
    /// Chunks sent so far.
    chunks: u64,
    /// Stream-rate samples of media time so far (sent or skipped).
    samples: u64,
    pcm: Vec<i16>,
    wire: Vec<u8>,
}

/// The uplink of one stream (both tracks).
#[derive(Debug)]
pub struct Uplink {
    format: StreamFormat,
    inbound: TrackState,
    outbound: TrackState,
}

impl Uplink {
    /// Frames arrive at `call_rate` (8, 16, 24 or 48 kHz), 20 ms each.
    pub fn new(format: StreamFormat, call_rate: u32) -> Result<Self, ResampleError> {
        let track = || -> Result<TrackState, ResampleError> {
            let resampler = Resampler::new(call_rate, format.sample_rate())?;
            Ok(TrackState {
                pcm: vec![0; resampler.output_frame_len()],
                resampler,
                chunks: 0,
                samples: 0,
                wire: Vec::new(),
            })
        };
        Ok(Uplink {
            format,
            inbound: track()?,
            outbound: track()?,
        })
    }

    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Samples in one 20 ms frame from the call.
    pub fn call_frame_len(&self) -> usize {
        self.inbound.resampler.input_frame_len()
    }

    fn state(&mut self, track: Track) -> &mut TrackState {
        match track {
            Track::Inbound => &mut self.inbound,
            Track::Outbound => &mut self.outbound,
        }
    }

    /// Encodes one 20 ms frame of the call's `track` (exactly [`Self::call_frame_len`]
    /// samples).
    pub fn frame(&mut self, track: Track, pcm: &[i16]) -> Result<MediaChunk, ResampleError> {
        let format = self.format;
        let rate = format.sample_rate();
        let state = self.state(track);
        let n = state.resampler.process(pcm, &mut state.pcm)?;
        state.wire.clear();
        format.encode(&state.pcm[..n], &mut state.wire);
        state.chunks += 1;
        let timestamp_ms = ms_for_samples(rate, state.samples);
        state.samples += n as u64;
        Ok(MediaChunk {
            track,
            chunk: state.chunks,
            timestamp_ms,
            payload: encode_payload(&state.wire),
        })
    }

    /// A 20 ms frame of `track` that is not sent: media time advances.
    pub fn skip(&mut self, track: Track) {
        let state = self.state(track);
        state.samples += state.resampler.output_frame_len() as u64;
        // The filter history no longer matches what the server heard.
        state.resampler.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::format::PayloadDecoder;
    use base64::Engine as _;

    fn decode(format: StreamFormat, payload: &str) -> Vec<i16> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(payload)
            .unwrap();
        let mut pcm = Vec::new();
        PayloadDecoder::new(format).decode(&bytes, &mut pcm);
        pcm
    }

    #[test]
    fn chunks_and_timestamps_count_per_track() {
        let mut up = Uplink::new(StreamFormat::MULAW_8K, 8000).unwrap();
        let frame = vec![0i16; 160];
        let a = up.frame(Track::Inbound, &frame).unwrap();
        let b = up.frame(Track::Inbound, &frame).unwrap();
        let c = up.frame(Track::Outbound, &frame).unwrap();
        assert_eq!((a.chunk, a.timestamp_ms), (1, 0));
        assert_eq!((b.chunk, b.timestamp_ms), (2, 20));
        assert_eq!((c.track, c.chunk, c.timestamp_ms), (Track::Outbound, 1, 0));
        up.skip(Track::Inbound);
        up.skip(Track::Inbound);
        let d = up.frame(Track::Inbound, &frame).unwrap();
        assert_eq!((d.chunk, d.timestamp_ms), (3, 80));
    }

    #[test]
    fn mulaw_payload_is_the_g711_encoding_of_the_frame() {
        let mut up = Uplink::new(StreamFormat::MULAW_8K, 8000).unwrap();
        let pcm: Vec<i16> = (0..160).map(|i| (i * 97 % 2000) as i16 - 1000).collect();
        let chunk = up.frame(Track::Inbound, &pcm).unwrap();
        let mut want = vec![0u8; 160];
        crate::g711::encode_ulaw(&pcm, &mut want);
        assert_eq!(chunk.payload, encode_payload(&want));
    }

    #[test]
    fn l16_at_the_call_rate_is_exact() {
        let format = StreamFormat::l16(16000).unwrap();
        let mut up = Uplink::new(format, 16000).unwrap();
        let pcm: Vec<i16> = (0..320).map(|i| (i * 211) as i16).collect();
        let chunk = up.frame(Track::Inbound, &pcm).unwrap();
        assert_eq!(decode(format, &chunk.payload), pcm);
    }

    #[test]
    fn an_8k_call_is_resampled_up_to_a_24k_stream() {
        let format = StreamFormat::l16(24000).unwrap();
        let mut up = Uplink::new(format, 8000).unwrap();
        assert_eq!(up.call_frame_len(), 160);
        // A 400 Hz tone survives the conversion: count zero crossings over 200 ms
        // (after the first frame, which carries the resampler's delay).
        let mut out = Vec::new();
        for f in 0..10 {
            let pcm: Vec<i16> = (0..160)
                .map(|i| {
                    let t = (f * 160 + i) as f32 / 8000.0;
                    ((t * 400.0 * std::f32::consts::TAU).sin() * 8000.0) as i16
                })
                .collect();
            let chunk = up.frame(Track::Inbound, &pcm).unwrap();
            let samples = decode(format, &chunk.payload);
            assert_eq!(samples.len(), 480);
            assert_eq!(chunk.timestamp_ms, f as u64 * 20);
            out.extend(samples);
        }
        let tail = &out[480..];
        let crossings = tail.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        // 180 ms of 400 Hz: 144 crossings.
        assert!((140..=148).contains(&crossings), "{crossings}");
    }

    #[test]
    fn a_wrong_frame_length_is_an_error() {
        let mut up = Uplink::new(StreamFormat::MULAW_8K, 8000).unwrap();
        assert!(up.frame(Track::Inbound, &[0; 100]).is_err());
    }
}
