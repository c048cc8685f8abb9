//! Fixed-ratio sample-rate conversion between the telephony rates (8, 16, 24, 48 kHz) in
//! whole frames (20 ms by default: 160/320/480/960 samples).
//!
//! Built on rubato's synchronous FFT resampler with `FixedSync::Both`, which for these
//! rate pairs takes exactly one input frame and yields exactly one output frame per call.
//! Samples are i16 at the edges and f32 inside; all buffers are allocated at construction,
//! so [`Resampler::process`] allocates nothing. Equal rates are a plain copy.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler as _};

/// Rates the engine converts between.
pub const SUPPORTED_RATES: [u32; 4] = [8_000, 16_000, 24_000, 48_000];

/// Frame length used when none is given.
pub const DEFAULT_FRAME_MS: u32 = 20;

/// Why a resampler could not be built or could not process a frame.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    /// A rate outside [`SUPPORTED_RATES`] or a frame length that is not a whole number of
    /// samples at both rates.
    #[error("unsupported conversion {from} Hz -> {to} Hz with {frame_ms} ms frames")]
    Unsupported { from: u32, to: u32, frame_ms: u32 },
    /// The input slice was not exactly one frame.
    #[error("input frame has {got} samples, expected {expected}")]
    InputLength { expected: usize, got: usize },
    /// The output slice cannot hold one frame.
    #[error("output buffer holds {got} samples, need {needed}")]
    OutputTooSmall { needed: usize, got: usize },
    /// rubato refused to build the resampler.
    #[error("resampler construction: {0}")]
    Construction(#[from] rubato::ResamplerConstructionError),
    /// rubato failed while processing.
    #[error("resampling: {0}")]
    Process(#[from] rubato::ResampleError),
}

/// Converts mono i16 frames from one rate to another, one frame in, one frame out.
pub struct Resampler {
    from: u32,
    to: u32,
    in_frame: usize,
    out_frame: usize,
    /// `None` when the rates are equal (copy through).
    inner: Option<FftState>,
}

struct FftState {
    fft: Fft<f32>,
    /// Interleaved (= mono) f32 input, `in_frame` long.
    input: Vec<f32>,
    /// Interleaved (= mono) f32 output, `out_frame` long.
    output: Vec<f32>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .field("in_frame", &self.in_frame)
            .field("out_frame", &self.out_frame)
            .field("delay_samples", &self.delay_samples())
            .finish()
    }
}

const I16_SCALE: f32 = 32_768.0;

impl Resampler {
    /// A resampler for 20 ms frames.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<Self, ResampleError> {
        Self::with_frame_ms(from_hz, to_hz, DEFAULT_FRAME_MS)
    }

    /// A resampler for `frame_ms` frames (e.g. 10, 20, 30, 40, 60).
    pub fn with_frame_ms(from_hz: u32, to_hz: u32, frame_ms: u32) -> Result<Self, ResampleError> {
        let unsupported = ResampleError::Unsupported {
            from: from_hz,
            to: to_hz,
            frame_ms,
        };
        if !SUPPORTED_RATES.contains(&from_hz) || !SUPPORTED_RATES.contains(&to_hz) || frame_ms == 0
        {
            return Err(unsupported);
        }
        // Every supported rate is a multiple of 8 kHz, i.e. 8 samples per ms: whole frames.
        let in_frame = (from_hz / 1000 * frame_ms) as usize;
        let out_frame = (to_hz / 1000 * frame_ms) as usize;
        let inner = if from_hz == to_hz {
            None
        } else {
            let fft = Fft::<f32>::new(
                from_hz as usize,
                to_hz as usize,
                in_frame,
                1,
                FixedSync::Both,
            )?;
            // FixedSync::Both rounds the chunk to the rates' GCD; with 8 kHz multiples the
            // rounding is a no-op, but check rather than trust it.
            if fft.input_frames_next() != in_frame || fft.output_frames_next() != out_frame {
                return Err(unsupported);
            }
            Some(FftState {
                fft,
                input: vec![0.0; in_frame],
                output: vec![0.0; out_frame],
            })
        };
        Ok(Self {
            from: from_hz,
            to: to_hz,
            in_frame,
            out_frame,
            inner,
        })
    }

    /// Input rate in Hz.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// Output rate in Hz.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Samples per input frame.
    pub fn input_frame_len(&self) -> usize {
        self.in_frame
    }

    /// Samples per output frame.
    pub fn output_frame_len(&self) -> usize {
        self.out_frame
    }

    /// True when the rates are equal and frames are copied unchanged.
    pub fn is_passthrough(&self) -> bool {
        self.inner.is_none()
    }

    /// Algorithmic delay in output samples: the output lags the input by this much
    /// (half the FFT block, i.e. half a frame, for a converting resampler; 0 when equal).
    pub fn delay_samples(&self) -> usize {
        self.inner.as_ref().map_or(0, |s| s.fft.output_delay())
    }

    /// Converts one input frame (exactly [`Self::input_frame_len`] samples) into the first
    /// [`Self::output_frame_len`] samples of `output`; returns that length.
    pub fn process(&mut self, input: &[i16], output: &mut [i16]) -> Result<usize, ResampleError> {
        if input.len() != self.in_frame {
            return Err(ResampleError::InputLength {
                expected: self.in_frame,
                got: input.len(),
            });
        }
        let out_len = output.len();
        let Some(out) = output.get_mut(..self.out_frame) else {
            return Err(ResampleError::OutputTooSmall {
                needed: self.out_frame,
                got: out_len,
            });
        };
        let Some(state) = self.inner.as_mut() else {
            out.copy_from_slice(input);
            return Ok(self.out_frame);
        };
        for (dst, &src) in state.input.iter_mut().zip(input) {
            *dst = f32::from(src) / I16_SCALE;
        }
        let adapter_in = InterleavedSlice::new(&state.input, 1, self.in_frame).map_err(|_| {
            ResampleError::InputLength {
                expected: self.in_frame,
                got: input.len(),
            }
        })?;
        let mut adapter_out = InterleavedSlice::new_mut(&mut state.output, 1, self.out_frame)
            .map_err(|_| ResampleError::OutputTooSmall {
                needed: self.out_frame,
                got: out_len,
            })?;
        state
            .fft
            .process_into_buffer(&adapter_in, &mut adapter_out, None)?;
        for (dst, &src) in out.iter_mut().zip(&state.output) {
            // `as` saturates, which is the clipping we want.
            *dst = (src * I16_SCALE).round() as i16;
        }
        Ok(self.out_frame)
    }

    /// Clears the filter history (e.g. after a stream restart).
    pub fn reset(&mut self) {
        if let Some(state) = self.inner.as_mut() {
            state.fft.reset();
        }
    }
}
