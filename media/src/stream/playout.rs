//! The downlink queue: audio and marks from the server in, one 20 ms frame out each time
//! the call's pacer asks.
//!
//! The server sends audio in chunks of any size (Telnyx allows 20 ms to 30 s, agents
//! often send whole sentences faster than real time) and marks between them. The queue
//! keeps the PCM at the stream rate and hands out exactly one 20 ms frame per
//! [`Playout::next_frame`], resampled to the call's rate; when it runs short the rest
//! of the frame is silence. A mark is *played* once every sample queued before it has
//! left in a frame already returned: [`Frame::played_marks`] names them, in order, so
//! the driver acknowledges a mark only after its audio went out as RTP.
//!
//! [`Playout::clear`] (the server's `clear`, barge-in) drops everything queued at once:
//! the next frame is silence. Its [`ClearReport`] says how much of the interrupted
//! *utterance* was played, in total and before each mark. An utterance is the audio
//! queued since the last clear or since the queue was last idle (drained, every mark
//! played, and one frame of silence returned).
//!
//! Bounded: at most `max_queued_ms` of audio is held; audio past it is dropped and
//! counted ([`Playout::dropped_ms`]). Time is the caller's: nothing here reads a clock.

use std::collections::VecDeque;

use super::format::StreamFormat;
use super::{ms_for_samples, samples_for_ms};
use crate::resample::{ResampleError, Resampler};

/// Marks held at once (pending plus played in the current utterance); past it the
/// oldest played ones are forgotten and new pending ones dropped and counted.
const MAX_MARKS: usize = 1024;

/// One 20 ms frame for the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// 20 ms at the output (call) rate.
    pub pcm: Vec<i16>,
    /// Samples (at the stream rate) of the frame that were queued audio; the rest was
    /// silence. 0 when the queue was empty.
    pub audio_samples: usize,
    /// Marks whose preceding audio has now entirely been returned, in order.
    pub played_marks: Vec<String>,
}

/// One mark in a [`ClearReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClearedMark {
    pub name: String,
    /// Milliseconds of the utterance's audio before this mark that were played.
    pub played_ms: u64,
    /// True for a mark that had been played (and acknowledged) before the clear.
    pub played: bool,
}

/// What a clear interrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearReport {
    /// Milliseconds of the utterance played before the clear.
    pub played_ms: u64,
    /// The utterance's marks in order: those already played, then those cleared.
    pub marks: Vec<ClearedMark>,
}

impl ClearReport {
    /// The cleared marks (never played), which the driver acknowledges on clear as
    /// Twilio and Telnyx do.
    pub fn cleared_marks(&self) -> impl Iterator<Item = &ClearedMark> {
        self.marks.iter().filter(|m| !m.played)
    }
}

#[derive(Debug, Clone)]
struct PendingMark {
    name: String,
    /// Utterance sample position: the mark is played once `played >= at`.
    at: u64,
}

/// The downlink queue of one stream.
#[derive(Debug)]
pub struct Playout {
    format: StreamFormat,
    frame_len: usize,
    out_frame_len: usize,
    /// Stream rate → call rate; passthrough when equal.
    resampler: Resampler,
    max_queued: usize,
    queue: VecDeque<i16>,
    pending: VecDeque<PendingMark>,
    played_marks: VecDeque<PendingMark>,
    /// Samples accepted into the current utterance.
    pushed: u64,
    /// Samples of the current utterance returned in frames.
    played: u64,
    dropped_samples: u64,
    dropped_marks: u64,
    frame_in: Vec<i16>,
}

impl Playout {
    /// A queue for `format` whose frames come out at `out_rate` (the call's PCM rate:
    /// 8, 16, 24 or 48 kHz), holding at most `max_queued_ms` of audio.
    pub fn new(
        format: StreamFormat,
        out_rate: u32,
        max_queued_ms: u32,
    ) -> Result<Self, ResampleError> {
        let resampler = Resampler::new(format.sample_rate(), out_rate)?;
        let frame_len = format.samples_per_frame();
        Ok(Playout {
            format,
            frame_len,
            out_frame_len: resampler.output_frame_len(),
            resampler,
            max_queued: samples_for_ms(format.sample_rate(), u64::from(max_queued_ms)) as usize,
            queue: VecDeque::new(),
            pending: VecDeque::new(),
            played_marks: VecDeque::new(),
            pushed: 0,
            played: 0,
            dropped_samples: 0,
            dropped_marks: 0,
            frame_in: vec![0; frame_len],
        })
    }

    pub fn format(&self) -> StreamFormat {
        self.format
    }

    /// Queues audio at the stream rate, any length. Returns how many samples were
    /// accepted; the rest (over the bound) is dropped and counted.
    pub fn push_audio(&mut self, pcm: &[i16]) -> usize {
        let room = self.max_queued.saturating_sub(self.queue.len());
        let accepted = pcm.len().min(room);
        self.queue.extend(&pcm[..accepted]);
        self.pushed += accepted as u64;
        self.dropped_samples += (pcm.len() - accepted) as u64;
        accepted
    }

    /// Queues a mark after the audio queued so far.
    pub fn push_mark(&mut self, name: impl Into<String>) {
        if self.pending.len() >= MAX_MARKS {
            self.dropped_marks += 1;
            return;
        }
        self.pending.push_back(PendingMark {
            name: name.into(),
            at: self.pushed,
        });
    }

    /// The next 20 ms for the call: queued audio, padded with silence when short.
    pub fn next_frame(&mut self) -> Frame {
        let mut pcm = vec![0; self.out_frame_len];
        let (audio_samples, played_marks) = self.next_frame_into(&mut pcm);
        Frame {
            pcm,
            audio_samples,
            played_marks,
        }
    }

    /// [`Self::next_frame`] into a caller's buffer of at least one output frame;
    /// returns the audio samples in it and the marks now played.
    pub fn next_frame_into(&mut self, out: &mut [i16]) -> (usize, Vec<String>) {
        if self.queue.is_empty() && self.pending.is_empty() {
            // Idle: the previous utterance is over.
            self.pushed = 0;
            self.played = 0;
            self.played_marks.clear();
        }
        let n = self.frame_len.min(self.queue.len());
        for (dst, src) in self.frame_in.iter_mut().zip(self.queue.drain(..n)) {
            *dst = src;
        }
        self.frame_in[n..].fill(0);
        self.played += n as u64;

        let mut played_now = Vec::new();
        while self.pending.front().is_some_and(|m| m.at <= self.played) {
            if let Some(mark) = self.pending.pop_front() {
                played_now.push(mark.name.clone());
                if self.played_marks.len() >= MAX_MARKS {
                    self.played_marks.pop_front();
                }
                self.played_marks.push_back(mark);
            }
        }

        if self.resampler.process(&self.frame_in, out).is_err() {
            // Only a short `out` can fail here (the input is always one frame).
            out.fill(0);
        }
        (n, played_now)
    }

    /// Drops everything queued; the next frame is silence. Reports what the
    /// interrupted utterance played and starts a new one.
    pub fn clear(&mut self) -> ClearReport {
        let rate = self.format.sample_rate();
        let played = self.played;
        let mut marks: Vec<ClearedMark> = self
            .played_marks
            .drain(..)
            .map(|m| ClearedMark {
                name: m.name,
                played_ms: ms_for_samples(rate, m.at),
                played: true,
            })
            .collect();
        marks.extend(self.pending.drain(..).map(|m| ClearedMark {
            name: m.name,
            played_ms: ms_for_samples(rate, m.at.min(played)),
            played: false,
        }));
        self.queue.clear();
        self.pushed = 0;
        self.played = 0;
        self.resampler.reset();
        ClearReport {
            played_ms: ms_for_samples(rate, played),
            marks,
        }
    }

    /// Audio queued and not yet returned, in ms.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn queued_ms(&self) -> u64 {
        ms_for_samples(self.format.sample_rate(), self.queue.len() as u64)
    }

    /// Marks waiting for their audio.
    pub fn pending_marks(&self) -> usize {
        self.pending.len()
    }

    /// Audio dropped because the queue was full, in ms.
    pub fn dropped_ms(&self) -> u64 {
        ms_for_samples(self.format.sample_rate(), self.dropped_samples)
    }

    /// Marks dropped because too many were pending.
    pub fn dropped_marks(&self) -> u64 {
        self.dropped_marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mulaw_playout() -> Playout {
        Playout::new(StreamFormat::MULAW_8K, 8000, 10_000).unwrap()
    }

    fn ramp(n: usize, from: i16) -> Vec<i16> {
        (0..n).map(|i| from + i as i16).collect()
    }

    #[test]
    fn empty_queue_gives_silence_frames() {
        let mut p = mulaw_playout();
        let f = p.next_frame();
        assert_eq!(f.pcm, vec![0; 160]);
        assert_eq!(f.audio_samples, 0);
        assert!(f.played_marks.is_empty());
    }

    #[test]
    fn odd_chunks_are_reframed_into_20ms_frames() {
        let mut p = mulaw_playout();
        let src = ramp(500, 1);
        // 500 samples in chunks of 7, 93, 1, 399.
        for piece in [&src[..7], &src[7..100], &src[100..101], &src[101..]] {
            assert_eq!(p.push_audio(piece), piece.len());
        }
        assert_eq!(p.queued_ms(), 62);
        let mut out = Vec::new();
        for _ in 0..3 {
            let f = p.next_frame();
            assert_eq!(f.audio_samples, 160);
            out.extend(f.pcm);
        }
        let last = p.next_frame();
        assert_eq!(last.audio_samples, 20);
        assert_eq!(&last.pcm[..20], &src[480..]);
        assert!(last.pcm[20..].iter().all(|&s| s == 0));
        assert_eq!(out, src[..480]);
    }

    #[test]
    fn a_mark_is_played_only_after_all_its_audio_was_returned() {
        let mut p = mulaw_playout();
        p.push_audio(&ramp(400, 0)); // 50 ms: 2.5 frames
        p.push_mark("m1");
        p.push_audio(&ramp(160, 0));
        p.push_mark("m2");
        assert!(p.next_frame().played_marks.is_empty()); // 20 ms
        assert!(p.next_frame().played_marks.is_empty()); // 40 ms
        assert_eq!(p.pending_marks(), 2);
        assert_eq!(p.next_frame().played_marks, ["m1"]); // 60 ms: all 50 ms out
        assert_eq!(p.next_frame().played_marks, ["m2"]); // 70 ms (+ silence)
        assert_eq!(p.pending_marks(), 0);
    }

    #[test]
    fn marks_on_an_empty_queue_are_played_on_the_next_frame_in_order() {
        let mut p = mulaw_playout();
        p.push_mark("a");
        p.push_mark("b");
        assert_eq!(p.next_frame().played_marks, ["a", "b"]);
    }

    #[test]
    fn clear_mid_utterance_reports_played_ms_exactly() {
        let mut p = mulaw_playout();
        p.push_audio(&ramp(1600, 0)); // 200 ms
        p.push_mark("a");
        p.push_audio(&ramp(800, 0)); // 100 ms
        p.push_mark("b");
        for _ in 0..3 {
            p.next_frame();
        }
        let report = p.clear();
        assert_eq!(
            report,
            ClearReport {
                played_ms: 60,
                marks: vec![
                    ClearedMark {
                        name: "a".into(),
                        played_ms: 60,
                        played: false
                    },
                    ClearedMark {
                        name: "b".into(),
                        played_ms: 60,
                        played: false
                    },
                ],
            }
        );
        assert_eq!(report.cleared_marks().count(), 2);
        // Flushed at once: the very next frame is silence.
        let f = p.next_frame();
        assert_eq!(f.audio_samples, 0);
        assert!(f.pcm.iter().all(|&s| s == 0));
        assert_eq!(p.queued_ms(), 0);
    }

    #[test]
    fn clear_after_a_played_mark_reports_it_as_played() {
        let mut p = mulaw_playout();
        p.push_audio(&ramp(320, 0)); // 40 ms
        p.push_mark("first");
        p.push_audio(&ramp(800, 0)); // 100 ms
        p.push_mark("second");
        assert!(p.next_frame().played_marks.is_empty());
        assert_eq!(p.next_frame().played_marks, ["first"]);
        p.next_frame(); // 60 ms played
        let report = p.clear();
        assert_eq!(report.played_ms, 60);
        assert_eq!(
            report.marks,
            [
                ClearedMark {
                    name: "first".into(),
                    played_ms: 40,
                    played: true
                },
                ClearedMark {
                    name: "second".into(),
                    played_ms: 60,
                    played: false
                },
            ]
        );
        assert_eq!(report.cleared_marks().count(), 1);
    }

    #[test]
    fn an_idle_frame_starts_a_new_utterance() {
        let mut p = mulaw_playout();
        p.push_audio(&ramp(160, 0));
        p.push_mark("old");
        assert_eq!(p.next_frame().played_marks, ["old"]);
        // Drained and acknowledged, then one frame of silence: idle.
        p.next_frame();
        p.push_audio(&ramp(320, 0));
        p.next_frame();
        let report = p.clear();
        assert_eq!(report.played_ms, 20);
        assert!(report.marks.is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let mut p = Playout::new(StreamFormat::MULAW_8K, 8000, 100).unwrap();
        assert_eq!(p.push_audio(&ramp(640, 0)), 640); // 80 ms
        assert_eq!(p.push_audio(&ramp(320, 0)), 160); // room for 20 ms of 40
        assert_eq!(p.queued_ms(), 100);
        assert_eq!(p.dropped_ms(), 20);
        p.push_mark("end");
        for _ in 0..4 {
            assert!(p.next_frame().played_marks.is_empty());
        }
        assert_eq!(p.next_frame().played_marks, ["end"]);
    }

    #[test]
    fn frames_come_out_at_the_call_rate() {
        // A 24 kHz L16 stream played into a 48 kHz (Opus) call, and into an 8 kHz one.
        let mut p = Playout::new(StreamFormat::l16(24000).unwrap(), 48000, 1000).unwrap();
        p.push_audio(&vec![1000; 480]);
        p.push_mark("m");
        let f = p.next_frame();
        assert_eq!((f.pcm.len(), f.audio_samples), (960, 480));
        assert_eq!(f.played_marks, ["m"]);
        let mut p = Playout::new(StreamFormat::l16(24000).unwrap(), 8000, 1000).unwrap();
        p.push_audio(&vec![1000; 480]);
        assert_eq!(p.next_frame().pcm.len(), 160);
    }
}
