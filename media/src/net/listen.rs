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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::time::MissedTickBehavior;

use super::recording::{
    Channel, ChannelOutput, DEFAULT_PTIME_MS, MAX_FRAME_MS, RESAMPLE_MS, RecordingError, TICK, Tap,
    audio_codec, channel, due_samples, payload_ts,
};
use crate::codec::{AudioCodec, Decoder};
use crate::resample::Resampler;
use crate::rtp::RtpView;
use crate::sdp::StreamParams;
use crate::stream::{Release, Reorder};

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

/// How far the frames handed on may fall behind the wall clock (packets late or not
/// coming) before silence fills in: beyond normal jitter, short enough that an agent's
/// voice activity detection hears the caller stop.
const DIRECT_SLACK_MS: u64 = 60;

/// An endpoint's listener in its receive path: each packet goes through a reorder buffer
/// ([`Reorder`], no delay while packets come in order), the decoder and the resampler,
/// and every whole 20 ms frame goes to the sink at once, so the listener adds no
/// buffering delay. When packets stop (hold, silence suppression, loss), the endpoint's
/// pacing tick fills silence so the sink's media time keeps up with the call's.
pub(crate) struct DirectListener {
    pt: u8,
    codec: AudioCodec,
    out_rate: u32,
    frame: usize,
    reorder: Reorder,
    decoder: Box<dyn Decoder + Send>,
    resampler: Resampler,
    pcm: Vec<i16>,
    out: ChannelOutput,
    start: Instant,
    sink: Box<dyn FrameSink>,
    alive: Arc<AtomicBool>,
}

impl std::fmt::Debug for DirectListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectListener")
            .field("pt", &self.pt)
            .field("codec", &self.codec)
            .field("out_rate", &self.out_rate)
            .finish_non_exhaustive()
    }
}

impl Drop for DirectListener {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
    }
}

impl DirectListener {
    /// A listener for `params`' payload type, handing frames at `out_rate` to `sink`;
    /// `alive` turns false when it is dropped (stopped, or the sink said no).
    pub(crate) fn new(
        params: &StreamParams,
        out_rate: u32,
        sink: Box<dyn FrameSink>,
        alive: Arc<AtomicBool>,
        now: Instant,
    ) -> Result<DirectListener, RecordingError> {
        let codec = audio_codec(params.codec);
        let (decoder, resampler) = Self::decoding(codec, out_rate)?;
        alive.store(true, Ordering::Relaxed);
        Ok(DirectListener {
            pt: params.pt,
            codec,
            out_rate,
            frame: (out_rate / 50) as usize,
            reorder: Reorder::new(),
            decoder,
            resampler,
            pcm: Vec::with_capacity((codec.sample_rate() / 1000 * MAX_FRAME_MS) as usize),
            out: ChannelOutput::new(out_rate),
            start: now,
            sink,
            alive,
        })
    }

    fn decoding(
        codec: AudioCodec,
        out_rate: u32,
    ) -> Result<(Box<dyn Decoder + Send>, Resampler), RecordingError> {
        let decoder = crate::codec::decoder(codec)?;
        let resampler = Resampler::with_frame_ms(decoder.sample_rate(), out_rate, RESAMPLE_MS)
            .map_err(crate::codec::CodecError::from)?;
        Ok((decoder, resampler))
    }

    /// The stream was renegotiated: listen to `pt` as `codec` from now on.
    pub(crate) fn retarget(&mut self, pt: u8, codec: AudioCodec) {
        self.pt = pt;
        if codec == self.codec {
            return;
        }
        match Self::decoding(codec, self.out_rate) {
            Ok((decoder, resampler)) => {
                self.codec = codec;
                self.decoder = decoder;
                self.resampler = resampler;
                self.reorder = Reorder::new();
                self.out.clear_staged();
            }
            Err(e) => {
                tracing::warn!(error = %e, ?codec, "listener: no decoder after a codec change")
            }
        }
    }

    /// One received packet; false once the sink asked to stop.
    pub(crate) fn on_packet(&mut self, view: &RtpView<'_>) -> bool {
        let audio = view.pt() == self.pt;
        // Other payload types of the same stream (RFC 4733 events, comfort noise) take
        // sequence numbers too: they go through the reorder buffer as empty placeholders,
        // so the audio after a digit is not taken for lost.
        if !audio && self.reorder.ssrc() != Some(view.ssrc()) {
            return true;
        }
        let payload = if audio { view.payload() } else { &[] };
        let codec = self.codec;
        let ts_len = if audio {
            payload_ts(codec, payload).unwrap_or_else(|| codec.timestamp_step(DEFAULT_PTIME_MS))
        } else {
            0
        };
        let DirectListener {
            reorder,
            decoder,
            resampler,
            pcm,
            out,
            ..
        } = self;
        reorder.push(
            view.seq(),
            view.timestamp(),
            view.ssrc(),
            payload,
            ts_len,
            &mut |rel| {
                match rel {
                    Release::Packet { payload: [], .. } => {}
                    Release::Packet { payload, ts_len } => {
                        if let Err(e) = decoder.decode(payload, pcm) {
                            tracing::trace!(error = %e, "undecodable frame concealed");
                            decoder.conceal(pcm, samples_of(codec, ts_len));
                        }
                        out.push(resampler, pcm);
                    }
                    Release::Lost { count, ts_len } => {
                        for _ in 0..count.min(MAX_CONCEALED) {
                            decoder.conceal(pcm, samples_of(codec, ts_len));
                            out.push(resampler, pcm);
                        }
                    }
                    // Pauses are filled by the clock (`on_tick`), which also covers a sender
                    // that stops altogether.
                    Release::Pause { .. } => {}
                }
            },
        );
        self.emit()
    }

    /// The endpoint's pacing tick: silence for whatever the wall clock says is missing
    /// beyond the slack. False once the sink asked to stop.
    pub(crate) fn on_tick(&mut self, now: Instant) -> bool {
        let due = due_samples(self.start, now, self.out_rate);
        let slack = u64::from(self.out_rate) * DIRECT_SLACK_MS / 1000;
        if due > self.out.produced + slack {
            self.out.pad_to(due - slack);
            return self.emit();
        }
        true
    }

    fn emit(&mut self) -> bool {
        let frame = self.frame.max(1);
        let whole = self.out.pending.len() / frame * frame;
        let mut go_on = true;
        for pcm in self.out.pending[..whole].chunks_exact(frame) {
            if !self.sink.frame(0, pcm) {
                go_on = false;
                break;
            }
        }
        self.out.pending.drain(..whole);
        go_on
    }
}

/// Concealment is capped per gap (the reorder buffer bounds gaps anyway).
const MAX_CONCEALED: u32 = 10;

/// Samples at the decoder's rate in `ts_len` RTP units of `codec`.
fn samples_of(codec: AudioCodec, ts_len: u32) -> usize {
    (u64::from(ts_len) * u64::from(codec.sample_rate()) / u64::from(codec.rtp_clock_rate().max(1)))
        as usize
}
