//! What a leg hears from the switch itself instead of silence: an [`AudioSource`] the
//! endpoint's pacer pulls one frame from at every packet time (an announcement now; the
//! agent audio streams' playout queue is the next one).

use std::path::Path;
use std::sync::Arc;

use crate::resample::Resampler;

/// Audio pulled one frame at a time at the leg's codec PCM rate.
pub trait AudioSource: Send + std::fmt::Debug {
    /// Fills `out` (one frame at `rate` Hz, mono); false when the source has ended
    /// (`out` is then not sent and the leg returns to silence).
    fn fill(&mut self, rate: u32, out: &mut [i16]) -> bool;

    /// Whether the last `fill` was silence because the source had nothing (a live
    /// source between utterances). The leg may then leave that packet out to bring its
    /// timestamps back in step with the clock after sending early (see `wake`).
    fn idle(&self) -> bool {
        false
    }

    /// Notified when audio arrives at a source that had run dry, so the leg sends it at
    /// once instead of at its next pacing tick (up to a packet time later).
    fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
}

/// Mono PCM at a known rate, loaded once and shared (an announcement played to many).
#[derive(Debug, Clone)]
pub struct Clip {
    pub rate: u32,
    pub samples: Arc<[i16]>,
}

/// Why a WAV could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    #[error("cannot read the WAV: {0}")]
    Wav(#[from] hound::Error),
    #[error("unsupported WAV: {0}")]
    Unsupported(String),
    #[error("cannot resample: {0}")]
    Resample(#[from] crate::resample::ResampleError),
}

impl Clip {
    /// Reads a 16-bit PCM WAV (any rate, channels mixed to mono).
    pub fn load_wav(path: &Path) -> Result<Clip, ClipError> {
        let mut reader = hound::WavReader::open(path)?;
        let spec = reader.spec();
        if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
            return Err(ClipError::Unsupported(format!(
                "{} bits {:?}; 16-bit PCM is needed",
                spec.bits_per_sample, spec.sample_format
            )));
        }
        let channels = usize::from(spec.channels.max(1));
        let mut mono = Vec::with_capacity(reader.len() as usize / channels);
        let mut acc = 0i32;
        for (i, s) in reader.samples::<i16>().enumerate() {
            acc += i32::from(s?);
            if (i + 1) % channels == 0 {
                mono.push((acc / channels as i32) as i16);
                acc = 0;
            }
        }
        Ok(Clip {
            rate: spec.sample_rate,
            samples: mono.into(),
        })
    }

    /// The clip at `rate` (itself when it already is).
    pub fn resampled(&self, rate: u32) -> Result<Clip, ClipError> {
        if rate == self.rate {
            return Ok(self.clone());
        }
        let mut r = Resampler::new(self.rate, rate)?;
        let (inl, outl) = (r.input_frame_len(), r.output_frame_len());
        let mut out = Vec::with_capacity(self.samples.len() * rate as usize / self.rate as usize);
        let mut frame = vec![0i16; inl];
        let mut buf = vec![0i16; outl];
        // One extra frame of zeros flushes the resampler's delay.
        let frames = self.samples.len().div_ceil(inl) + 1;
        for f in 0..frames {
            frame.fill(0);
            let start = f * inl;
            if let Some(chunk) = self
                .samples
                .get(start..(start + inl).min(self.samples.len()))
            {
                frame[..chunk.len()].copy_from_slice(chunk);
            }
            let n = r.process(&frame, &mut buf)?;
            out.extend_from_slice(&buf[..n]);
        }
        let skip = r.delay_samples().min(out.len());
        let want = self.samples.len() * rate as usize / self.rate as usize;
        let end = (skip + want).min(out.len());
        Ok(Clip {
            rate,
            samples: out[skip..end].into(),
        })
    }

    pub fn duration_ms(&self) -> u64 {
        self.samples.len() as u64 * 1000 / u64::from(self.rate.max(1))
    }
}

/// A clip played once; `done` fires when its last sample has been handed out (or the
/// player is dropped: the leg ended first).
#[derive(Debug)]
pub struct ClipPlayer {
    clip: Clip,
    pos: usize,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ClipPlayer {
    /// A player and what tells that it has finished. `clip` must be at the rate the
    /// leg's codec runs at (see [`Clip::resampled`]); another rate plays silence.
    pub fn new(clip: Clip) -> (ClipPlayer, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (
            ClipPlayer {
                clip,
                pos: 0,
                done: Some(tx),
            },
            rx,
        )
    }
}

impl AudioSource for ClipPlayer {
    fn fill(&mut self, rate: u32, out: &mut [i16]) -> bool {
        if self.pos >= self.clip.samples.len() || rate != self.clip.rate {
            if let Some(done) = self.done.take() {
                let _ = done.send(());
            }
            return false;
        }
        let end = (self.pos + out.len()).min(self.clip.samples.len());
        let n = end - self.pos;
        out[..n].copy_from_slice(&self.clip.samples[self.pos..end]);
        out[n..].fill(0);
        self.pos = end;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn player_hands_out_the_clip_then_ends() {
        let clip = Clip {
            rate: 8000,
            samples: (0..400).map(|i| i as i16).collect::<Vec<_>>().into(),
        };
        let (mut p, mut done) = ClipPlayer::new(clip);
        let mut out = [0i16; 160];
        assert!(p.fill(8000, &mut out));
        assert_eq!(out[159], 159);
        assert!(p.fill(8000, &mut out));
        assert!(p.fill(8000, &mut out));
        assert_eq!(out[79], 399);
        assert_eq!(out[80], 0, "the last frame is padded with silence");
        assert!(done.try_recv().is_err());
        assert!(!p.fill(8000, &mut out));
        assert!(done.try_recv().is_ok());
    }

    #[test]
    fn resampling_keeps_the_duration() {
        let clip = Clip {
            rate: 16000,
            samples: vec![1000i16; 16000].into(),
        };
        let c8 = clip.resampled(8000).expect("resample");
        assert_eq!(c8.rate, 8000);
        assert_eq!(c8.samples.len(), 8000);
        assert_eq!(c8.duration_ms(), 1000);
        // The middle is the same level (a constant passes the low-pass filter).
        assert!((c8.samples[4000] - 1000).abs() < 50, "{}", c8.samples[4000]);
    }
}
