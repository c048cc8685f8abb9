//! Call recording taps for an [`RtpEndpoint`](super::RtpEndpoint) and a
//! [`Bridge`](super::bridge::Bridge): the receive loop copies each packet of a stream's
//! negotiated audio payload type into a bounded, preallocated queue (a [`Tap`]); a
//! recording task drains each queue every 20 ms into that stream's [`Channel`] (jitter
//! buffer, decoder with loss concealment, resampler to the file's rate) and writes a
//! stereo WAV. Endpoint: left = far end, right = what we sent (silence until an audio
//! source is bridged in). Bridge: left = side A (caller), right = side B (callee).
//!
//! The queue is a `std::sync::mpsc::sync_channel`: a fixed ring allocated up front, and
//! `try_send` never blocks, so the receive loop drops (and counts) packets when the
//! recorder falls behind rather than stalling RTP. The recorder polls it on its 20 ms
//! tick, so no wake-up is needed. WAV writes go through a `BufWriter` (one small write
//! per tick, a syscall every ~100 ms) on the recorder's own task, never the packet path.
//!
//! Both channels advance on the same tick: each tops its output up to the wall-clock
//! sample count (silence while its jitter buffer has nothing to play) or plays one frame
//! per frame time, and a tick writes what both have. So they stay aligned to within the
//! difference of their jitter buffers' delays. Each packet carries its codec: a stream
//! that switches codec (a re-INVITE) gets a new decoder, jitter buffer and resampler at
//! its first packet in the new codec; what the old jitter buffer still held (its delay,
//! tens of ms) is not played.
#![allow(clippy::disallowed_methods)] // driver: stamps packet arrival and paces playout

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::codec::{AudioCodec, CodecError, Decoder};
use crate::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use crate::record::{Recorder, RecordingInfo};
use crate::resample::Resampler;
use crate::rtp::{HEADER_LEN, RtpView};
use crate::sdp::{Codec, StreamParams};

/// Largest payload the tap copies: 120 ms of G.711 plus headroom. Larger ones are dropped.
pub const MAX_TAP_PAYLOAD: usize = 1200;
/// Queue depth: 640 ms of 20 ms packets between two recorder ticks.
const TAP_QUEUE: usize = 32;
/// Frames the recorder catches up at most per tick after a stall.
const MAX_CATCH_UP: usize = 8;
/// Recorder tick: playout is checked this often; longer frames simply skip ticks.
pub(crate) const TICK: Duration = Duration::from_millis(20);
/// Longest frame handled (G.711/G.722 allow 120 ms).
pub(crate) const MAX_FRAME_MS: u32 = 120;
/// Resampler block: every codec's frames are whole multiples of 10 ms at every rate we
/// convert between, and a short block keeps the resampler's delay (half a block) small.
pub(crate) const RESAMPLE_MS: u32 = 10;
/// Frame duration assumed until a packet says otherwise (a bridge has no ptime).
pub(crate) const DEFAULT_PTIME_MS: u32 = 20;

/// Why a recording could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// Creating or writing the WAV file failed.
    #[error("recording file: {0}")]
    Io(#[from] io::Error),
    /// No decoder (or resampler) for the negotiated codec.
    #[error("recording decoder: {0}")]
    Codec(#[from] CodecError),
    /// The endpoint (or bridge) already records.
    #[error("the endpoint is already recording")]
    AlreadyRecording,
    /// The endpoint (or bridge) already hands its audio to a listener.
    #[error("the endpoint is already listening")]
    AlreadyListening,
    /// The endpoint has no negotiated codec yet (`connect` first).
    #[error("the endpoint is not connected")]
    NotConnected,
    /// The endpoint's (or bridge's) task has stopped.
    #[error("the endpoint has stopped")]
    Stopped,
    /// The recording task panicked or was cancelled.
    #[error("recording task failed: {0}")]
    Task(String),
}

/// What a finished recording wrote, plus what the taps could not keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingOutcome {
    /// File, samples per channel and duration.
    pub info: RecordingInfo,
    /// Packets the receive loop dropped because a queue was full (or too big), both
    /// channels together.
    pub dropped: u64,
    /// Jitter buffer counters (played, lost, late, ...) of the left channel: the
    /// endpoint's far end, or a bridge's side A. Summed over codec/ptime changes.
    pub jitter: JitterStats,
    /// The same for the right channel when it records a stream (a bridge's side B);
    /// `None` for an endpoint, whose right channel is not recorded yet.
    pub right_jitter: Option<JitterStats>,
    /// Times a channel's decoder was rebuilt because its stream changed codec.
    pub codec_changes: u64,
}

/// One received packet as copied by the receive loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapPacket {
    at: Instant,
    /// The codec negotiated for the payload type when it arrived: a codec change
    /// reaches the recorder in order with the packets.
    codec: AudioCodec,
    seq: u16,
    ts: u32,
    ssrc: u32,
    len: usize,
    data: [u8; MAX_TAP_PAYLOAD],
}

/// The receive loop's side of one recorded stream.
#[derive(Debug)]
pub(crate) struct Tap {
    pt: u8,
    codec: AudioCodec,
    tx: SyncSender<TapPacket>,
    dropped: Arc<AtomicU64>,
}

/// Offer outcome of [`Tap::offer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TapState {
    Open,
    /// The recorder is gone; drop the tap.
    Closed,
}

/// The fields of an audio packet a tap keeps, read before a relay rewrites the header
/// in place (it leaves the payload where it is).
#[derive(Debug, Clone)]
pub(crate) struct TapHeader {
    seq: u16,
    ts: u32,
    ssrc: u32,
    /// Where the payload is in the packet.
    payload: Range<usize>,
}

impl Tap {
    /// Copies `view` into the queue if it carries the recorded payload type. Never blocks.
    pub(crate) fn offer(&self, view: &RtpView<'_>, at: Instant) -> TapState {
        if view.pt() != self.pt {
            return TapState::Open;
        }
        self.push(
            at,
            view.seq(),
            view.timestamp(),
            view.ssrc(),
            view.payload(),
        )
    }

    /// The header of `pkt` if it is RTP of the recorded payload type, to
    /// [`offer_header`](Self::offer_header) once the relay has accepted it.
    pub(crate) fn wants(&self, pkt: &[u8]) -> Option<TapHeader> {
        let view = RtpView::parse(pkt).ok()?;
        if view.pt() != self.pt {
            return None;
        }
        let start = HEADER_LEN
            + 4 * view.csrc_count()
            + view.extension().map_or(0, |(_, data)| 4 + data.len());
        Some(TapHeader {
            seq: view.seq(),
            ts: view.timestamp(),
            ssrc: view.ssrc(),
            payload: start..start + view.payload().len(),
        })
    }

    /// Queues the packet `header` was read from (`pkt`, its header possibly rewritten
    /// since). Never blocks.
    pub(crate) fn offer_header(&self, header: &TapHeader, pkt: &[u8], at: Instant) -> TapState {
        let payload = pkt.get(header.payload.clone()).unwrap_or_default();
        self.push(at, header.seq, header.ts, header.ssrc, payload)
    }

    /// The stream was renegotiated: record `pt` from now on, decoded as `codec`.
    pub(crate) fn retarget(&mut self, pt: u8, codec: AudioCodec) {
        self.pt = pt;
        self.codec = codec;
    }

    fn push(&self, at: Instant, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> TapState {
        let mut pkt = TapPacket {
            at,
            codec: self.codec,
            seq,
            ts,
            ssrc,
            len: payload.len(),
            data: [0; MAX_TAP_PAYLOAD],
        };
        let Some(dst) = pkt.data.get_mut(..payload.len()) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return TapState::Open;
        };
        dst.copy_from_slice(payload);
        match self.tx.try_send(pkt) {
            Ok(()) => TapState::Open,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                TapState::Open
            }
            Err(TrySendError::Disconnected(_)) => TapState::Closed,
        }
    }
}

/// The decoder codec for a negotiated SDP codec.
pub fn audio_codec(codec: Codec) -> AudioCodec {
    codec.audio_codec()
}

/// The rate a bridge's recording is written at: the higher of the two sides' PCM
/// rates, so neither side loses bandwidth (a G.722 or Opus side keeps its wideband
/// audio) and a G.711-only call stays at 8 kHz with no resampling at all. A side that
/// later changes codec is resampled to this rate.
pub fn bridge_recording_rate(a: AudioCodec, b: AudioCodec) -> u32 {
    a.sample_rate().max(b.sample_rate())
}

fn jitter_buffer(codec: AudioCodec, frame_ts: u32) -> JitterBuffer {
    JitterBuffer::new(JitterConfig {
        clock_rate: codec.rtp_clock_rate(),
        frame_ts,
        ..JitterConfig::default()
    })
}

/// RTP timestamp units one payload spans, for the codecs whose payload says it
/// (G.711: a byte per 8 kHz sample; G.722: a byte per 8 kHz clock tick; Opus: its TOC
/// byte). Far ends often send another ptime than the SDP says (e.g. 30 ms against a
/// 20 ms default), and the jitter buffer's frame must match what arrives.
pub(crate) fn payload_ts(codec: AudioCodec, payload: &[u8]) -> Option<u32> {
    let ms = match codec {
        AudioCodec::Pcmu | AudioCodec::Pcma | AudioCodec::G722 => {
            let ts = u32::try_from(payload.len()).ok()?;
            (ts % (codec.rtp_clock_rate() / 1000) == 0)
                .then_some(ts / (codec.rtp_clock_rate() / 1000))?
        }
        AudioCodec::Opus { .. } => {
            let us = crate::codec::opus_packet_duration_us(payload)?;
            (us % 1000 == 0).then_some(us / 1000)?
        }
    };
    (ms > 0 && codec.supports_ptime(ms) && ms <= MAX_FRAME_MS).then(|| codec.timestamp_step(ms))
}

/// `a`'s counters plus `b`'s; the delays are `b`'s (the current buffer's).
fn sum_jitter(a: &JitterStats, b: &JitterStats) -> JitterStats {
    JitterStats {
        received: a.received + b.received,
        played: a.played + b.played,
        lost: a.lost + b.lost,
        late: a.late + b.late,
        duplicates: a.duplicates + b.duplicates,
        discarded: a.discarded + b.discarded,
        gaps: a.gaps + b.gaps,
        resets: a.resets + b.resets,
        current_delay_ms: b.current_delay_ms,
        target_delay_ms: b.target_delay_ms,
    }
}

/// Decoding state for one codec and frame duration of a stream.
struct Decoding {
    codec: AudioCodec,
    decoder: Box<dyn Decoder + Send>,
    jitter: JitterBuffer,
    /// RTP timestamp units per frame the jitter buffer is set up for.
    frame_ts: u32,
    /// PCM samples per frame at the decoder's rate.
    frame: usize,
    /// Decoder rate to the file's rate.
    resampler: Resampler,
}

impl Decoding {
    fn new(codec: AudioCodec, ptime_ms: u32, out_rate: u32) -> Result<Decoding, CodecError> {
        let decoder = crate::codec::decoder(codec)?;
        let resampler = Resampler::with_frame_ms(decoder.sample_rate(), out_rate, RESAMPLE_MS)?;
        let frame_ts = codec.timestamp_step(ptime_ms);
        Ok(Decoding {
            codec,
            jitter: jitter_buffer(codec, frame_ts),
            frame_ts,
            frame: codec.frame_samples(ptime_ms),
            decoder,
            resampler,
        })
    }
}

/// Decoded audio of one channel at the file's rate, waiting to be written.
pub(crate) struct ChannelOutput {
    /// Decoded samples short of a whole resampler block.
    staged: Vec<i16>,
    /// One resampled block.
    block: Vec<i16>,
    /// Samples at the file's rate not written yet.
    pub(crate) pending: Vec<i16>,
    /// Samples at the file's rate ever put into `pending`.
    pub(crate) produced: u64,
}

impl ChannelOutput {
    pub(crate) fn new(out_rate: u32) -> ChannelOutput {
        let per_ms = (out_rate / 1000) as usize;
        ChannelOutput {
            staged: Vec::with_capacity(48 * MAX_FRAME_MS as usize * 2),
            block: vec![0; per_ms * RESAMPLE_MS as usize],
            pending: Vec::with_capacity(per_ms * 1000),
            produced: 0,
        }
    }

    /// Appends one decoded frame, resampled in whole blocks.
    pub(crate) fn push(&mut self, resampler: &mut Resampler, pcm: &[i16]) {
        if resampler.is_passthrough() {
            self.pending.extend_from_slice(pcm);
            self.produced += pcm.len() as u64;
            return;
        }
        self.staged.extend_from_slice(pcm);
        let n = resampler.input_frame_len();
        let mut used = 0;
        while let Some(input) = self.staged.get(used..used + n) {
            match resampler.process(input, &mut self.block) {
                Ok(m) => {
                    let out = self.block.get(..m).unwrap_or_default();
                    self.pending.extend_from_slice(out);
                    self.produced += m as u64;
                }
                Err(e) => tracing::debug!(error = %e, "recording: resampling failed"),
            }
            used += n;
        }
        self.staged.drain(..used);
    }

    /// Silence up to `due` samples since the start, so the file keeps wall-clock time.
    /// Drops half a resampler block (it cannot be resampled with another codec's rate).
    pub(crate) fn clear_staged(&mut self) {
        self.staged.clear();
    }

    pub(crate) fn pad_to(&mut self, due: u64) {
        let missing = due.saturating_sub(self.produced);
        let n = usize::try_from(missing).unwrap_or(0);
        self.pending.resize(self.pending.len() + n, 0);
        self.produced += n as u64;
    }
}

/// The recorder's side of one recorded stream: its queue, decoding and output.
pub(crate) struct Channel {
    rx: Receiver<TapPacket>,
    dropped: Arc<AtomicU64>,
    out_rate: u32,
    /// `None` only after a codec change to a codec with no decoder: silence.
    dec: Option<Decoding>,
    /// The codec a rebuild failed for (not retried per packet).
    failed: Option<AudioCodec>,
    /// Counters of the jitter buffers replaced by ptime or codec changes.
    past_jitter: JitterStats,
    codec_changes: u64,
    /// Decoder output.
    pcm: Vec<i16>,
    out: ChannelOutput,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("codec", &self.dec.as_ref().map(|d| d.codec))
            .field("out_rate", &self.out_rate)
            .field("produced", &self.out.produced)
            .finish_non_exhaustive()
    }
}

/// The frame duration a stream's decoder starts with: its negotiated ptime if the codec
/// supports it, else 20 ms (the packets correct it).
pub(crate) fn stream_ptime(params: &StreamParams) -> u32 {
    let codec = audio_codec(params.codec);
    if codec.supports_ptime(params.ptime_ms) {
        params.ptime_ms
    } else {
        DEFAULT_PTIME_MS
    }
}

/// Samples at `rate` in the wall-clock time from `start` to `now`.
pub(crate) fn due_samples(start: Instant, now: Instant, rate: u32) -> u64 {
    let elapsed = now.saturating_duration_since(start).as_micros();
    u64::try_from(elapsed * u128::from(rate) / 1_000_000).unwrap_or(u64::MAX)
}

/// A tap for `pt` (`codec`) and the channel it feeds, writing at `out_rate`.
pub(crate) fn channel(
    pt: u8,
    codec: AudioCodec,
    ptime_ms: u32,
    out_rate: u32,
) -> Result<(Tap, Channel), RecordingError> {
    let dec = Decoding::new(codec, ptime_ms, out_rate)?;
    let (tx, rx) = sync_channel(TAP_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let tap = Tap {
        pt,
        codec,
        tx,
        dropped: Arc::clone(&dropped),
    };
    let max_frame = (codec.sample_rate() / 1000 * MAX_FRAME_MS) as usize;
    let channel = Channel {
        rx,
        dropped,
        out_rate,
        dec: Some(dec),
        failed: None,
        past_jitter: JitterStats::default(),
        codec_changes: 0,
        pcm: Vec::with_capacity(max_frame),
        out: ChannelOutput::new(out_rate),
    };
    Ok((tap, channel))
}

impl Channel {
    /// Moves queued packets into the jitter buffer; `false` once the tap is gone.
    pub(crate) fn drain(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(p) => self.accept(&p),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn accept(&mut self, p: &TapPacket) {
        let current = self.dec.as_ref().map(|d| d.codec);
        if current != Some(p.codec) && self.failed != Some(p.codec) {
            self.switch_codec(p.codec);
        }
        let Some(d) = self.dec.as_mut() else {
            return;
        };
        let payload = p.data.get(..p.len).unwrap_or_default();
        if let Some(ts) = payload_ts(d.codec, payload)
            && ts != d.frame_ts
        {
            // Rare (first packet or a ptime change): the buffer is rebuilt.
            self.past_jitter = sum_jitter(&self.past_jitter, &d.jitter.stats());
            d.frame_ts = ts;
            d.frame = (u64::from(ts) * u64::from(d.codec.sample_rate())
                / u64::from(d.codec.rtp_clock_rate())) as usize;
            d.jitter = jitter_buffer(d.codec, ts);
        }
        d.jitter.push(p.at, p.seq, p.ts, p.ssrc, payload);
    }

    /// The stream changed codec (a renegotiation): new decoder, jitter buffer and
    /// resampler; the old ones' unplayed frames are dropped.
    fn switch_codec(&mut self, codec: AudioCodec) {
        if let Some(old) = self.dec.take() {
            self.past_jitter = sum_jitter(&self.past_jitter, &old.jitter.stats());
            self.codec_changes += 1;
        }
        // Half a block of the old codec cannot be resampled with the new one.
        self.out.staged.clear();
        match Decoding::new(codec, DEFAULT_PTIME_MS, self.out_rate) {
            Ok(d) => {
                self.dec = Some(d);
                self.failed = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?codec, "recording: no decoder after a codec change; recording silence");
                self.failed = Some(codec);
            }
        }
    }

    /// Plays the frames due at `now` into the output: one per frame time, more after a
    /// stall; while nothing plays, silence up to `due` samples since the start.
    pub(crate) fn play(&mut self, now: Instant, due: u64) {
        let Some(d) = self.dec.as_mut() else {
            self.out.pad_to(due);
            return;
        };
        for _ in 0..MAX_CATCH_UP {
            match d.jitter.pop(now) {
                None => return,
                Some(Playout::Nothing) => {
                    self.out.pad_to(due);
                    return;
                }
                Some(Playout::Frame { payload, .. }) => {
                    if let Err(e) = d.decoder.decode(payload, &mut self.pcm) {
                        tracing::trace!(error = %e, "undecodable frame concealed");
                        d.decoder.conceal(&mut self.pcm, d.frame);
                    }
                }
                Some(Playout::Lost { .. } | Playout::Gap { .. }) => {
                    d.decoder.conceal(&mut self.pcm, d.frame);
                }
            }
            self.out.push(&mut d.resampler, &self.pcm);
        }
    }

    /// Decoded samples at the output rate not taken yet (oldest first); the caller
    /// removes what it consumed.
    pub(crate) fn pending_mut(&mut self) -> &mut Vec<i16> {
        &mut self.out.pending
    }

    fn jitter_stats(&self) -> JitterStats {
        match &self.dec {
            Some(d) => sum_jitter(&self.past_jitter, &d.jitter.stats()),
            None => self.past_jitter,
        }
    }
}

/// Everything the recording task owns, built before it is spawned so setup errors
/// (file, codec) reach the caller of `start_recording`.
pub(crate) struct RecordingTask {
    recorder: Recorder,
    /// The file's sample rate.
    out_rate: u32,
    left: Channel,
    /// `None`: the right channel is silence (an endpoint's sent audio).
    right: Option<Channel>,
}

impl std::fmt::Debug for RecordingTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingTask")
            .field("recorder", &self.recorder)
            .field("left", &self.left)
            .field("right", &self.right)
            .finish_non_exhaustive()
    }
}

/// An endpoint's tap and recording task: creates `path`, a 2-channel WAV at the
/// codec's PCM rate (left: what arrives; right: silence).
pub(crate) fn prepare(
    path: &Path,
    params: &StreamParams,
) -> Result<(Tap, RecordingTask), RecordingError> {
    let codec = audio_codec(params.codec);
    let ptime_ms = stream_ptime(params);
    let out_rate = codec.sample_rate();
    let (tap, left) = channel(params.pt, codec, ptime_ms, out_rate)?;
    let recorder = Recorder::create(path, out_rate, 2)?;
    let task = RecordingTask {
        recorder,
        out_rate,
        left,
        right: None,
    };
    Ok((tap, task))
}

/// A bridge's two taps (side A, side B: each its audio payload type and codec) and
/// the recording task: creates `path`, a 2-channel WAV at [`bridge_recording_rate`]
/// (left: side A; right: side B).
pub(crate) fn prepare_bridge(
    path: &Path,
    sides: [(u8, AudioCodec); 2],
) -> Result<([Tap; 2], RecordingTask), RecordingError> {
    let [(pt_a, codec_a), (pt_b, codec_b)] = sides;
    let out_rate = bridge_recording_rate(codec_a, codec_b);
    let (tap_a, left) = channel(pt_a, codec_a, DEFAULT_PTIME_MS, out_rate)?;
    let (tap_b, right) = channel(pt_b, codec_b, DEFAULT_PTIME_MS, out_rate)?;
    let recorder = Recorder::create(path, out_rate, 2)?;
    let task = RecordingTask {
        recorder,
        out_rate,
        left,
        right: Some(right),
    };
    Ok(([tap_a, tap_b], task))
}

impl RecordingTask {
    /// Runs until the taps are dropped (the endpoint or bridge closed), then finalises
    /// the WAV.
    pub(crate) async fn run(mut self) -> Result<RecordingOutcome, RecordingError> {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let start = Instant::now();
        loop {
            ticker.tick().await;
            // Both drained every tick (no short-circuit): each queue must keep emptying.
            let left_open = self.left.drain();
            let right_open = self.right.as_mut().is_some_and(Channel::drain);
            let now = Instant::now();
            let due = due_samples(start, now, self.out_rate);
            self.left.play(now, due);
            if let Some(right) = self.right.as_mut() {
                right.play(now, due);
            }
            self.write(false)?;
            if !left_open && !right_open {
                break;
            }
        }
        self.write(true)?;
        let RecordingTask {
            recorder,
            left,
            right,
            ..
        } = self;
        let info = recorder.finish()?;
        let right_dropped = right
            .as_ref()
            .map_or(0, |r| r.dropped.load(Ordering::Relaxed));
        Ok(RecordingOutcome {
            info,
            dropped: left.dropped.load(Ordering::Relaxed) + right_dropped,
            jitter: left.jitter_stats(),
            right_jitter: right.as_ref().map(Channel::jitter_stats),
            codec_changes: left.codec_changes + right.as_ref().map_or(0, |r| r.codec_changes),
        })
    }

    /// Writes what both channels have (time-aligned); at the end (`flush`) everything,
    /// the shorter channel padded with silence.
    fn write(&mut self, flush: bool) -> Result<(), RecordingError> {
        let left = &self.left.out.pending;
        let n = match (&self.right, flush) {
            (Some(r), false) => left.len().min(r.out.pending.len()),
            (Some(r), true) => left.len().max(r.out.pending.len()),
            (None, _) => left.len(),
        };
        let l = left.get(..n.min(left.len())).unwrap_or_default();
        let r = match &self.right {
            Some(r) => {
                let p = &r.out.pending;
                p.get(..n.min(p.len())).unwrap_or_default()
            }
            None => &[],
        };
        // An empty right channel (an endpoint's) is padded with silence by the recorder.
        self.recorder.write_frame(l, r)?;
        let drop_front = |v: &mut Vec<i16>| {
            let k = n.min(v.len());
            v.drain(..k);
        };
        drop_front(&mut self.left.out.pending);
        if let Some(r) = self.right.as_mut() {
            drop_front(&mut r.out.pending);
        }
        Ok(())
    }
}

/// A running recording: the task's handle, kept by the endpoint until it closes.
#[derive(Debug)]
pub(crate) struct RecordingHandle {
    pub(crate) path: PathBuf,
    pub(crate) task: tokio::task::JoinHandle<Result<RecordingOutcome, RecordingError>>,
}

impl RecordingHandle {
    /// Waits for the task (its tap must already be gone) and returns what it wrote.
    pub(crate) async fn finish(self) -> Result<RecordingOutcome, RecordingError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(RecordingError::Task(format!(
                "{}: {e}",
                self.path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::net::{PortPool, RtpEndpoint};
    use crate::rtp::{RtpHeader, write_packet};
    use crate::sdp::Direction;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("switchyard-tap-{}-{name}.wav", std::process::id()))
    }

    fn params(remote: SocketAddr) -> StreamParams {
        StreamParams {
            remote,
            codec: Codec::Pcmu,
            pt: 0,
            clock_rate: 8000,
            ptime_ms: 20,
            dtmf_pt: Some(101),
            direction: Direction::SendRecv,
        }
    }

    fn packet(pt: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 12 + payload.len()];
        let h = RtpHeader {
            marker: false,
            pt,
            seq,
            timestamp: u32::from(seq) * payload.len() as u32,
            ssrc: 0x1234,
        };
        let n = write_packet(&mut buf, &h, payload).unwrap();
        buf.truncate(n);
        buf
    }

    /// A 400 Hz µ-law tone frame of `n` samples starting at sample `start`.
    fn tone(start: usize, n: usize) -> Vec<u8> {
        let pcm: Vec<i16> = (start..start + n)
            .map(|i| {
                (8000.0 * (2.0 * std::f64::consts::PI * 400.0 * i as f64 / 8000.0).sin()) as i16
            })
            .collect();
        let mut out = vec![0u8; n];
        crate::g711::encode_ulaw(&pcm, &mut out);
        out
    }

    #[test]
    fn payload_gives_frame_duration() {
        assert_eq!(payload_ts(AudioCodec::Pcma, &[0; 160]), Some(160));
        assert_eq!(payload_ts(AudioCodec::Pcmu, &[0; 240]), Some(240));
        assert_eq!(payload_ts(AudioCodec::G722, &[0; 160]), Some(160));
        assert_eq!(payload_ts(AudioCodec::Pcmu, &[]), None);
        assert_eq!(payload_ts(AudioCodec::Pcmu, &[0; 100]), None);
        assert_eq!(payload_ts(AudioCodec::Pcmu, &[0; 1040]), None);
        let opus = AudioCodec::Opus { channels: 2 };
        // TOC config 1: SILK 20 ms, one frame; config 0: 10 ms.
        assert_eq!(payload_ts(opus, &[0x08, 1, 2]), Some(960));
        assert_eq!(payload_ts(opus, &[0x00, 1, 2]), Some(480));
        assert_eq!(payload_ts(opus, &[]), None);
    }

    #[test]
    fn bridge_rate_is_the_wider_side() {
        let opus = AudioCodec::Opus { channels: 2 };
        assert_eq!(
            bridge_recording_rate(AudioCodec::Pcmu, AudioCodec::Pcma),
            8000
        );
        assert_eq!(
            bridge_recording_rate(AudioCodec::Pcmu, AudioCodec::G722),
            16000
        );
        assert_eq!(bridge_recording_rate(opus, AudioCodec::Pcmu), 48000);
    }

    #[test]
    fn full_queue_drops_and_counts_other_pts_are_ignored() {
        let path = temp_path("full");
        let remote = SocketAddr::new(LO, 9);
        let (tap, task) = prepare(&path, &params(remote)).unwrap();
        let now = Instant::now();
        let frame = [0xffu8; 160];
        for seq in 0..TAP_QUEUE as u16 + 3 {
            let buf = packet(0, seq, &frame);
            assert_eq!(
                tap.offer(&RtpView::parse(&buf).unwrap(), now),
                TapState::Open
            );
        }
        let dtmf = packet(101, 99, &[1, 2, 3, 4]);
        tap.offer(&RtpView::parse(&dtmf).unwrap(), now);
        let huge = packet(0, 100, &[0xff; MAX_TAP_PAYLOAD + 1]);
        tap.offer(&RtpView::parse(&huge).unwrap(), now);
        // 3 beyond the queue plus the oversized one; the DTMF packet is not audio.
        assert_eq!(task.left.dropped.load(Ordering::Relaxed), 4);
        drop(task);
        let buf = packet(0, 200, &frame);
        assert_eq!(
            tap.offer(&RtpView::parse(&buf).unwrap(), now),
            TapState::Closed
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test]
    async fn endpoint_records_far_end_left_and_silence_right() {
        let pool = PortPool::with_rng(41100, 41109, StdRng::seed_from_u64(41100)).unwrap();
        let mut ep = RtpEndpoint::open(&pool, LO).unwrap();
        let far = tokio::net::UdpSocket::bind((LO, 0)).await.unwrap();
        let p = params(far.local_addr().unwrap());
        ep.connect(p);
        let path = temp_path("endpoint");
        ep.start_recording(&path, &p).unwrap();
        assert!(matches!(
            ep.start_recording(&path, &p),
            Err(RecordingError::AlreadyRecording)
        ));
        // One second of tone, paced like a real sender, with DTMF packets mixed in.
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        for seq in 0..50u16 {
            pace.tick().await;
            let buf = packet(0, seq, &tone(usize::from(seq) * 160, 160));
            far.send_to(&buf, ep.local_addr()).await.unwrap();
            if seq % 10 == 0 {
                let dtmf = packet(101, 1000 + seq, &[1, 0x0a, 0, 160]);
                far.send_to(&dtmf, ep.local_addr()).await.unwrap();
            }
        }
        // Let the jitter buffer play out the last frames before closing.
        for _ in 0..10 {
            pace.tick().await;
        }
        let (stats, rec) = ep.close_with_recording().await;
        assert_eq!(stats.packets_received, 55);
        let rec = rec.unwrap().unwrap();
        assert_eq!(rec.dropped, 0);
        assert!(rec.jitter.played >= 45, "{:?}", rec.jitter);
        assert_eq!(rec.info.path, path);
        // Wall-clock length: 1.2 s of pacing, give or take scheduling.
        assert!(
            (1000..=1600).contains(&rec.info.duration_ms),
            "{}",
            rec.info.duration_ms
        );

        let mut r = hound::WavReader::open(&path).unwrap();
        let spec = r.spec();
        assert_eq!((spec.channels, spec.sample_rate), (2, 8000));
        assert_eq!(u64::from(r.duration()), rec.info.samples);
        let all: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
        let left: Vec<i16> = all.iter().step_by(2).copied().collect();
        assert!(all.iter().skip(1).step_by(2).all(|&s| s == 0));
        let peak = left.iter().map(|s| s.unsigned_abs()).max().unwrap();
        assert!(peak > 6000, "tone peak {peak}");
        std::fs::remove_file(&path).unwrap();
    }
}
