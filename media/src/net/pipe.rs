//! A PCM pipe between two endpoints: what one leg hears (the [`FrameSink`] of its
//! listener) is what another leg plays (an [`AudioSource`]). Two pipes bridge two
//! [`RtpEndpoint`](super::RtpEndpoint)s whatever their codecs, each end decoding and
//! encoding its own: the bridge a call uses when a second leg joins audio the switch was
//! terminating itself (an agent's caller handed to a person).
//!
//! The listener delivers a frame as its packet arrives; the playing leg pulls one every
//! packet time on its own clock. The two clocks' phases are unrelated, so the pipe keeps
//! a small cushion: it starts playing once two frames are queued (and again after it ran
//! dry), which absorbs up to a packet time of arrival jitter without a gap, and it drops
//! the oldest audio past [`MAX_FRAMES`] so a drift between the far ends' clocks never
//! builds latency.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::listen::FrameSink;
use crate::source::AudioSource;

/// Frames queued before playing starts (or restarts after running dry).
pub const CUSHION_FRAMES: usize = 2;
/// Past this many queued frames the oldest are dropped down to the cushion.
pub const MAX_FRAMES: usize = 5;

#[derive(Debug, Default)]
struct Inner {
    queue: Mutex<VecDeque<i16>>,
    /// Samples dropped to keep the latency bounded.
    dropped: AtomicU64,
}

/// The listening end: hands each frame to the pipe.
#[derive(Debug)]
pub struct PipeSink {
    inner: Arc<Inner>,
    frame: usize,
}

/// The playing end: one frame per pull, silence while the cushion refills.
#[derive(Debug)]
pub struct PipeSource {
    inner: Arc<Inner>,
    frame: usize,
    playing: bool,
    idle: bool,
}

/// A pipe of 20 ms frames at `rate` Hz: the sink's listener must deliver `rate`, and the
/// source must be played by a leg whose codec runs at `rate`.
pub fn pipe(rate: u32) -> (PipeSink, PipeSource) {
    let inner = Arc::new(Inner::default());
    let frame = (rate / 50) as usize;
    (
        PipeSink {
            inner: Arc::clone(&inner),
            frame,
        },
        PipeSource {
            inner,
            frame,
            playing: false,
            idle: true,
        },
    )
}

impl PipeSource {
    /// Samples dropped so far because the queue ran past [`MAX_FRAMES`].
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

impl FrameSink for PipeSink {
    fn frame(&mut self, _channel: usize, pcm: &[i16]) -> bool {
        // The other leg is gone: stop listening.
        if Arc::strong_count(&self.inner) < 2 {
            return false;
        }
        let Ok(mut queue) = self.inner.queue.lock() else {
            return false;
        };
        queue.extend(pcm.iter().copied());
        let max = MAX_FRAMES * self.frame;
        if queue.len() > max {
            let excess = queue.len() - CUSHION_FRAMES * self.frame;
            queue.drain(..excess);
            self.inner
                .dropped
                .fetch_add(excess as u64, Ordering::Relaxed);
        }
        true
    }
}

impl AudioSource for PipeSource {
    fn fill(&mut self, _rate: u32, out: &mut [i16]) -> bool {
        let Ok(mut queue) = self.inner.queue.lock() else {
            out.fill(0);
            self.idle = true;
            return true;
        };
        let need = out.len().max(self.frame);
        if !self.playing && queue.len() >= CUSHION_FRAMES * need {
            self.playing = true;
        }
        if self.playing && queue.len() >= out.len() {
            let n = out.len();
            for (o, s) in out.iter_mut().zip(queue.drain(..n)) {
                *o = s;
            }
            self.idle = false;
        } else {
            // Ran dry: silence until the cushion is back.
            self.playing = false;
            out.fill(0);
            self.idle = true;
        }
        true
    }

    fn idle(&self) -> bool {
        self.idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> Vec<i16> {
        vec![v; 160]
    }

    fn pull(src: &mut PipeSource) -> Option<i16> {
        let mut out = [0i16; 160];
        assert!(src.fill(8000, &mut out));
        (!src.idle()).then_some(out[0])
    }

    #[test]
    fn plays_in_order_once_the_cushion_is_queued() {
        let (mut sink, mut src) = pipe(8000);
        assert!(sink.frame(0, &frame(1)));
        assert_eq!(pull(&mut src), None, "one frame is not yet the cushion");
        assert!(sink.frame(0, &frame(2)));
        assert_eq!(pull(&mut src), Some(1));
        assert!(sink.frame(0, &frame(3)));
        assert_eq!(pull(&mut src), Some(2));
        assert_eq!(pull(&mut src), Some(3));
        // Dry: silence, and playing waits for two frames again.
        assert_eq!(pull(&mut src), None);
        assert!(sink.frame(0, &frame(4)));
        assert_eq!(pull(&mut src), None);
        assert!(sink.frame(0, &frame(5)));
        assert_eq!(pull(&mut src), Some(4));
    }

    #[test]
    fn a_late_frame_within_the_cushion_leaves_no_gap() {
        let (mut sink, mut src) = pipe(8000);
        sink.frame(0, &frame(1));
        sink.frame(0, &frame(2));
        let mut heard = Vec::new();
        // Frame 3 comes after the pull it would have been due for, frame 4 on time.
        heard.push(pull(&mut src));
        heard.push(pull(&mut src));
        sink.frame(0, &frame(3));
        sink.frame(0, &frame(4));
        heard.push(pull(&mut src));
        heard.push(pull(&mut src));
        assert_eq!(heard, [Some(1), Some(2), Some(3), Some(4)]);
    }

    #[test]
    fn a_backlog_is_trimmed_to_the_cushion() {
        let (mut sink, mut src) = pipe(8000);
        for v in 1..=6 {
            sink.frame(0, &frame(v));
        }
        // Six frames exceed five: the oldest four go, two are left.
        assert_eq!(src.dropped(), 4 * 160);
        assert_eq!(pull(&mut src), Some(5));
        assert_eq!(pull(&mut src), Some(6));
        assert_eq!(pull(&mut src), None);
    }

    #[test]
    fn the_sink_stops_once_the_source_is_gone() {
        let (mut sink, src) = pipe(16_000);
        assert!(sink.frame(0, &[0; 320]));
        drop(src);
        assert!(!sink.frame(0, &[0; 320]));
    }
}
