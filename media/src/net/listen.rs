//! Live listening: decoded audio of an [`RtpEndpoint`](super::RtpEndpoint) (channel 0:
//! what its far end sends) or of a [`Bridge`](super::bridge::Bridge) (channel 0: side A,
//! channel 1: side B) handed to a [`FrameSink`] one 20 ms frame at a time, e.g. to
//! stream a call to an agent.
//!
//! It reuses the recording's machinery (see [`super::recording`]): a [`Tap`] per stream
//! in the packet path (a non-blocking copy into a preallocated queue, a slot of its own
//! next to a recording's) and a [`Channel`] per stream on the listen task (jitter
//! buffer, decoder with loss concealment, resampler to the asked rate). Every 20 ms the
//! task moves what arrived into the channels, plays what is due (silence while a
//! channel's jitter buffer has nothing to play, so the channels stay time-aligned) and
//! hands every whole frame all channels have to the sink, channel by channel.
//!
//! Latency from a packet's arrival to its frame reaching the sink: the jitter buffer's
//! delay (20 ms minimum, adapting up to 200 ms with the stream's jitter) plus up to one
//! 20 ms tick, plus half a 10 ms resampler block when the rate is converted.
#![allow(clippy::disallowed_methods)] // driver: paces playout on the wall clock

use std::time::Instant;

use tokio::time::MissedTickBehavior;

use super::recording::{
    Channel, DEFAULT_PTIME_MS, RecordingError, TICK, Tap, audio_codec, channel, due_samples,
    stream_ptime,
};
use crate::codec::AudioCodec;
use crate::sdp::StreamParams;

/// Receives decoded audio: one 20 ms frame of `channel` at a time, at the rate asked for.
///
/// Called on the listen task (a tokio task): it should not block (hand the frame on,
/// e.g. with a `try_send`).
pub trait FrameSink: Send + 'static {
    /// `pcm` is exactly out_rate/50 samples. Return false to stop listening (the taps are
    /// then dropped).
    fn frame(&mut self, channel: usize, pcm: &[i16]) -> bool;
}

/// Everything the listen task owns, built before it is spawned so setup errors (codec,
/// rate) reach the caller of `listen`.
pub(crate) struct ListenTask {
    out_rate: u32,
    channels: Vec<Channel>,
    sink: Box<dyn FrameSink>,
}

impl std::fmt::Debug for ListenTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenTask")
            .field("out_rate", &self.out_rate)
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// An endpoint's tap (its far end, per `params`) and the listen task.
pub(crate) fn prepare_endpoint(
    params: &StreamParams,
    out_rate: u32,
    sink: Box<dyn FrameSink>,
) -> Result<(Tap, ListenTask), RecordingError> {
    let codec = audio_codec(params.codec);
    let (tap, ch) = channel(params.pt, codec, stream_ptime(params), out_rate)?;
    let task = ListenTask {
        out_rate,
        channels: vec![ch],
        sink,
    };
    Ok((tap, task))
}

/// A bridge's two taps (side A, side B: each its audio payload type and codec) and the
/// listen task.
pub(crate) fn prepare_bridge(
    sides: [(u8, AudioCodec); 2],
    out_rate: u32,
    sink: Box<dyn FrameSink>,
) -> Result<([Tap; 2], ListenTask), RecordingError> {
    let [(pt_a, codec_a), (pt_b, codec_b)] = sides;
    let (tap_a, a) = channel(pt_a, codec_a, DEFAULT_PTIME_MS, out_rate)?;
    let (tap_b, b) = channel(pt_b, codec_b, DEFAULT_PTIME_MS, out_rate)?;
    let task = ListenTask {
        out_rate,
        channels: vec![a, b],
        sink,
    };
    Ok(([tap_a, tap_b], task))
}

impl ListenTask {
    /// Runs until every tap is gone (the endpoint or bridge closed, or stopped
    /// listening) or the sink asks to stop; the sink is dropped at the end.
    pub(crate) async fn run(mut self) {
        let frame = (self.out_rate / 50) as usize;
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let start = Instant::now();
        loop {
            ticker.tick().await;
            // Every queue drained every tick (no short-circuit).
            let mut open = false;
            for c in &mut self.channels {
                open |= c.drain();
            }
            let now = Instant::now();
            let due = due_samples(start, now, self.out_rate);
            for c in &mut self.channels {
                c.play(now, due);
            }
            if !self.emit(frame) || !open {
                break;
            }
        }
    }

    /// Hands the sink every whole frame all channels have, in time order; `false` if
    /// the sink asked to stop.
    fn emit(&mut self, frame: usize) -> bool {
        let ListenTask { channels, sink, .. } = self;
        let ready = channels
            .iter_mut()
            .map(|c| c.pending_mut().len())
            .min()
            .unwrap_or(0);
        let frames = ready / frame.max(1);
        let mut go_on = true;
        'frames: for k in 0..frames {
            for (i, c) in channels.iter_mut().enumerate() {
                let pcm = c
                    .pending_mut()
                    .get(k * frame..(k + 1) * frame)
                    .unwrap_or_default();
                if !sink.frame(i, pcm) {
                    go_on = false;
                    break 'frames;
                }
            }
        }
        for c in channels.iter_mut() {
            c.pending_mut().drain(..frames * frame);
        }
        go_on
    }
}
