//! Call recording to 16-bit PCM WAV (RIFF/WAVE, via `hound`).
//!
//! In: one frame of decoded caller and callee samples at a time. Out: a WAV file,
//! stereo (caller left, callee right) or mono (the two mixed with saturation). This
//! does blocking file I/O but nothing async: run it on a blocking thread or a
//! dedicated writer task, never on the packet path.

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

/// Writes one call's audio as it arrives.
pub struct Recorder {
    writer: hound::WavWriter<BufWriter<File>>,
    path: PathBuf,
    sample_rate: u32,
    channels: u16,
    /// Frames (one sample per channel) written so far.
    samples: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .field("sample_rate", &self.sample_rate)
            .field("channels", &self.channels)
            .field("samples", &self.samples)
            .finish()
    }
}

/// What [`Recorder::finish`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingInfo {
    /// Samples per channel.
    pub samples: u64,
    /// `samples` at the sample rate, in milliseconds.
    pub duration_ms: u64,
    /// The file written.
    pub path: PathBuf,
}

fn to_io(e: hound::Error) -> io::Error {
    match e {
        hound::Error::IoError(e) => e,
        other => io::Error::other(other),
    }
}

impl Recorder {
    /// Creates (truncates) `path` and writes the WAV header. `channels` must be 1 (mixed)
    /// or 2 (caller left, callee right); `sample_rate` must be non-zero.
    pub fn create(path: impl AsRef<Path>, sample_rate: u32, channels: u16) -> io::Result<Self> {
        if !(1..=2).contains(&channels) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recording needs 1 or 2 channels",
            ));
        }
        if sample_rate == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "recording sample rate is 0",
            ));
        }
        let spec = hound::WavSpec {
            channels,
            sample_rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let path = path.as_ref().to_path_buf();
        let writer = hound::WavWriter::create(&path, spec).map_err(to_io)?;
        Ok(Recorder {
            writer,
            path,
            sample_rate,
            channels,
            samples: 0,
        })
    }

    /// Appends one frame. The longer side is padded with silence, so both sides keep
    /// time even when one of them skipped a frame (e.g. passed an empty slice).
    pub fn write_frame(&mut self, caller: &[i16], callee: &[i16]) -> io::Result<()> {
        let n = caller.len().max(callee.len());
        for i in 0..n {
            let a = caller.get(i).copied().unwrap_or(0);
            let b = callee.get(i).copied().unwrap_or(0);
            if self.channels == 2 {
                self.writer.write_sample(a).map_err(to_io)?;
                self.writer.write_sample(b).map_err(to_io)?;
            } else {
                self.writer
                    .write_sample(a.saturating_add(b))
                    .map_err(to_io)?;
            }
        }
        self.samples += n as u64;
        Ok(())
    }

    /// Samples per channel written so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Fixes up the header lengths and closes the file.
    pub fn finish(self) -> io::Result<RecordingInfo> {
        self.writer.finalize().map_err(to_io)?;
        Ok(RecordingInfo {
            samples: self.samples,
            duration_ms: self.samples * 1000 / u64::from(self.sample_rate),
            path: self.path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("switchyard-rec-{}-{name}.wav", std::process::id()))
    }

    fn tone(freq: f64, rate: u32, start: usize, n: usize) -> Vec<i16> {
        (start..start + n)
            .map(|i| (8000.0 * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin()) as i16)
            .collect()
    }

    /// Power of `freq` in `x` (Goertzel), normalised by length.
    fn goertzel(x: &[i16], freq: f64, rate: u32) -> f64 {
        let w = 2.0 * PI * freq / f64::from(rate);
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s = f64::from(v) + c * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f64).powi(2)
    }

    #[test]
    fn stereo_keeps_each_side_on_its_channel() {
        let path = temp_path("stereo");
        let rate = 8000;
        let mut rec = Recorder::create(&path, rate, 2).unwrap();
        for f in 0..50 {
            let a = tone(440.0, rate, f * 160, 160);
            let b = tone(1000.0, rate, f * 160, 160);
            rec.write_frame(&a, &b).unwrap();
        }
        let info = rec.finish().unwrap();
        assert_eq!(info.samples, 8000);
        assert_eq!(info.duration_ms, 1000);
        assert_eq!(info.path, path);

        let mut r = hound::WavReader::open(&path).unwrap();
        let spec = r.spec();
        assert_eq!(
            (spec.channels, spec.sample_rate, spec.bits_per_sample),
            (2, 8000, 16)
        );
        assert_eq!(r.duration(), 8000);
        let all: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        let left: Vec<i16> = all.iter().step_by(2).copied().collect();
        let right: Vec<i16> = all.iter().skip(1).step_by(2).copied().collect();
        assert!(goertzel(&left, 440.0, rate) > 100.0 * goertzel(&left, 1000.0, rate));
        assert!(goertzel(&right, 1000.0, rate) > 100.0 * goertzel(&right, 440.0, rate));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn mono_mixes_with_saturation() {
        let path = temp_path("mono");
        let mut rec = Recorder::create(&path, 8000, 1).unwrap();
        rec.write_frame(&[30000, -30000, 5], &[10000, -10000, 7, 9])
            .unwrap();
        assert_eq!(rec.samples(), 4);
        let info = rec.finish().unwrap();
        assert_eq!(info.samples, 4);
        let mut r = hound::WavReader::open(&path).unwrap();
        let got: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(got, vec![i16::MAX, i16::MIN, 12, 9]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn rejects_bad_channel_count() {
        let path = temp_path("bad");
        assert_eq!(
            Recorder::create(&path, 8000, 3).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(Recorder::create(&path, 0, 1).is_err());
        assert!(!path.exists());
    }
}
