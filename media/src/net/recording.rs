//! Call recording tap for an [`RtpEndpoint`](super::RtpEndpoint): the receive loop copies
//! each packet of the negotiated audio payload type into a bounded, preallocated queue;
//! a recording task drains it every frame time through a [`JitterBuffer`], decodes
//! (concealing losses) and writes a stereo WAV: left = far end, right = what we sent
//! (silence until an audio source is bridged in).
//!
//! The queue is a `std::sync::mpsc::sync_channel`: a fixed ring allocated up front, and
//! `try_send` never blocks, so the receive loop drops (and counts) packets when the
//! recorder falls behind rather than stalling RTP. The recorder polls it on its 20 ms
//! tick, so no wake-up is needed. WAV writes go through a `BufWriter` (one small write
//! per frame, a syscall every ~100 ms) on the recorder's own task, never the packet path.
#![allow(clippy::disallowed_methods)] // driver: stamps packet arrival and paces playout

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use crate::codec::{AudioCodec, CodecError, Decoder};
use crate::jitter::{JitterBuffer, JitterConfig, JitterStats, Playout};
use crate::record::{Recorder, RecordingInfo};
use crate::rtp::RtpView;
use crate::sdp::{Codec, StreamParams};

/// Largest payload the tap copies: 120 ms of G.711 plus headroom. Larger ones are dropped.
pub const MAX_TAP_PAYLOAD: usize = 1200;
/// Queue depth: 640 ms of 20 ms packets between two recorder ticks.
const TAP_QUEUE: usize = 32;
/// Frames the recorder catches up at most per tick after a stall.
const MAX_CATCH_UP: usize = 8;
/// Recorder tick: playout is checked this often; longer frames simply skip ticks.
const TICK: Duration = Duration::from_millis(20);
/// Longest frame handled (G.711/G.722 allow 120 ms).
const MAX_FRAME_MS: u32 = 120;

/// Why a recording could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// Creating or writing the WAV file failed.
    #[error("recording file: {0}")]
    Io(#[from] io::Error),
    /// No decoder for the negotiated codec.
    #[error("recording decoder: {0}")]
    Codec(#[from] CodecError),
    /// The endpoint already records.
    #[error("the endpoint is already recording")]
    AlreadyRecording,
    /// The endpoint's task has stopped.
    #[error("the endpoint has stopped")]
    Stopped,
    /// The recording task panicked or was cancelled.
    #[error("recording task failed: {0}")]
    Task(String),
}

/// What a finished recording wrote, plus what the tap could not keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingOutcome {
    /// File, samples per channel and duration.
    pub info: RecordingInfo,
    /// Packets the receive loop dropped because the queue was full (or too big).
    pub dropped: u64,
    /// Jitter buffer counters (played, lost, late, ...).
    pub jitter: JitterStats,
}

/// One received packet as copied by the receive loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TapPacket {
    at: Instant,
    seq: u16,
    ts: u32,
    ssrc: u32,
    len: usize,
    data: [u8; MAX_TAP_PAYLOAD],
}

/// The receive loop's side of a recording.
#[derive(Debug)]
pub(crate) struct Tap {
    pt: u8,
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

impl Tap {
    /// Copies `view` into the queue if it carries the recorded payload type. Never blocks.
    pub(crate) fn offer(&self, view: &RtpView<'_>, at: Instant) -> TapState {
        if view.pt() != self.pt {
            return TapState::Open;
        }
        let payload = view.payload();
        let mut pkt = TapPacket {
            at,
            seq: view.seq(),
            ts: view.timestamp(),
            ssrc: view.ssrc(),
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

/// Everything the recording task owns, built before it is spawned so setup errors
/// (file, codec) reach the caller of `start_recording`.
pub(crate) struct RecordingTask {
    rx: Receiver<TapPacket>,
    dropped: Arc<AtomicU64>,
    recorder: Recorder,
    decoder: Box<dyn Decoder + Send>,
    jitter: JitterBuffer,
    codec: AudioCodec,
    /// RTP timestamp units per frame the jitter buffer is set up for.
    frame_ts: u32,
    /// PCM samples per frame at the decoder's rate.
    frame: usize,
    /// PCM samples per second.
    rate: u32,
}

impl std::fmt::Debug for RecordingTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingTask")
            .field("recorder", &self.recorder)
            .field("frame", &self.frame)
            .finish_non_exhaustive()
    }
}

/// Builds the tap and its task: creates `path` (a 2-channel WAV at the codec's PCM rate).
pub(crate) fn prepare(
    path: &Path,
    params: &StreamParams,
) -> Result<(Tap, RecordingTask), RecordingError> {
    let codec = audio_codec(params.codec);
    let ptime_ms = if codec.supports_ptime(params.ptime_ms) {
        params.ptime_ms
    } else {
        20
    };
    let decoder = crate::codec::decoder(codec)?;
    let recorder = Recorder::create(path, decoder.sample_rate(), 2)?;
    let frame_ts = codec.timestamp_step(ptime_ms);
    let jitter = jitter_buffer(codec, frame_ts);
    let (tx, rx) = sync_channel(TAP_QUEUE);
    let dropped = Arc::new(AtomicU64::new(0));
    let tap = Tap {
        pt: params.pt,
        tx,
        dropped: Arc::clone(&dropped),
    };
    let task = RecordingTask {
        rx,
        dropped,
        recorder,
        decoder,
        jitter,
        codec,
        frame_ts,
        frame: codec.frame_samples(ptime_ms),
        rate: codec.sample_rate(),
    };
    Ok((tap, task))
}

fn jitter_buffer(codec: AudioCodec, frame_ts: u32) -> JitterBuffer {
    JitterBuffer::new(JitterConfig {
        clock_rate: codec.rtp_clock_rate(),
        frame_ts,
        ..JitterConfig::default()
    })
}

/// RTP timestamp units one payload of `len` bytes spans, for the waveform codecs whose
/// size says it (G.711: a byte per 8 kHz sample; G.722: a byte per 8 kHz clock tick).
/// Far ends often send another ptime than the SDP says (e.g. 30 ms against a 20 ms
/// default), and the jitter buffer's frame must match what arrives.
fn payload_ts(codec: AudioCodec, len: usize) -> Option<u32> {
    match codec {
        AudioCodec::Pcmu | AudioCodec::Pcma | AudioCodec::G722 => {
            let ts = u32::try_from(len).ok()?;
            let ms = ts / (codec.rtp_clock_rate() / 1000);
            (ts > 0 && codec.supports_ptime(ms) && ms <= MAX_FRAME_MS).then_some(ts)
        }
        AudioCodec::Opus { .. } => None,
    }
}

impl RecordingTask {
    /// Runs until the tap is dropped (the endpoint closed), then finalises the WAV.
    pub(crate) async fn run(mut self) -> Result<RecordingOutcome, RecordingError> {
        let max_frame = (self.rate / 1000 * MAX_FRAME_MS) as usize;
        let mut pcm: Vec<i16> = Vec::with_capacity(max_frame);
        let silence = vec![0i16; max_frame];
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let start = Instant::now();
        loop {
            ticker.tick().await;
            let open = self.drain();
            let now = Instant::now();
            let elapsed = now.saturating_duration_since(start).as_micros();
            let due =
                u64::try_from(elapsed * u128::from(self.rate) / 1_000_000).unwrap_or(u64::MAX);
            self.play(now, due, &mut pcm, &silence)?;
            if !open {
                break;
            }
        }
        let jitter = self.jitter.stats();
        let info = self.recorder.finish()?;
        Ok(RecordingOutcome {
            info,
            dropped: self.dropped.load(Ordering::Relaxed),
            jitter,
        })
    }

    /// Moves queued packets into the jitter buffer; `false` once the tap is gone.
    fn drain(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(p) => {
                    let payload = p.data.get(..p.len).unwrap_or_default();
                    if let Some(ts) = payload_ts(self.codec, payload.len())
                        && ts != self.frame_ts
                    {
                        // Rare (first packet or a ptime change): the buffer is rebuilt.
                        self.frame_ts = ts;
                        self.frame = (u64::from(ts) * u64::from(self.rate)
                            / u64::from(self.codec.rtp_clock_rate()))
                            as usize;
                        self.jitter = jitter_buffer(self.codec, ts);
                    }
                    self.jitter.push(p.at, p.seq, p.ts, p.ssrc, payload);
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    /// Writes the frames due at `now`: one per frame time, more after a stall. While
    /// nothing plays, silence up to `due` samples since the start, so the file keeps
    /// wall-clock time.
    fn play(
        &mut self,
        now: Instant,
        due: u64,
        pcm: &mut Vec<i16>,
        silence: &[i16],
    ) -> Result<(), RecordingError> {
        for _ in 0..MAX_CATCH_UP {
            match self.jitter.pop(now) {
                None => return Ok(()),
                Some(Playout::Nothing) => {
                    let mut missing = due.saturating_sub(self.recorder.samples());
                    while missing > 0 {
                        let n = usize::try_from(missing)
                            .unwrap_or(usize::MAX)
                            .min(silence.len());
                        let chunk = silence.get(..n).unwrap_or_default();
                        self.recorder.write_frame(chunk, chunk)?;
                        missing -= n as u64;
                    }
                    return Ok(());
                }
                Some(Playout::Frame { payload, .. }) => {
                    if let Err(e) = self.decoder.decode(payload, pcm) {
                        tracing::trace!(error = %e, "undecodable frame concealed");
                        self.decoder.conceal(pcm, self.frame);
                    }
                }
                Some(Playout::Lost { .. } | Playout::Gap { .. }) => {
                    self.decoder.conceal(pcm, self.frame);
                }
            }
            let right = silence.get(..pcm.len()).unwrap_or(silence);
            self.recorder.write_frame(pcm, right)?;
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
    fn payload_size_gives_frame_duration() {
        assert_eq!(payload_ts(AudioCodec::Pcma, 160), Some(160));
        assert_eq!(payload_ts(AudioCodec::Pcmu, 240), Some(240));
        assert_eq!(payload_ts(AudioCodec::G722, 160), Some(160));
        assert_eq!(payload_ts(AudioCodec::Pcmu, 0), None);
        assert_eq!(payload_ts(AudioCodec::Pcmu, 100), None);
        assert_eq!(payload_ts(AudioCodec::Pcmu, 1040), None);
        assert_eq!(payload_ts(AudioCodec::Opus { channels: 2 }, 160), None);
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
        assert_eq!(task.dropped.load(Ordering::Relaxed), 4);
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
