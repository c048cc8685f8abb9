//! Agent media streams: one tokio task per stream carries a call's audio to a customer's
//! WebSocket server and the server's audio back, in the Twilio Media Streams protocol
//! (`media::stream` holds the sans-IO pieces; this module owns the socket and the timers).
//!
//! Toward the call (wiring is separate):
//! - [`spawn`] with a [`StreamConfig`] and a [`Connector`] gives a [`StreamHandle`], a
//!   receiver of [`StreamEvent`]s and the task's `JoinHandle` (which yields the
//!   [`EndReason`] too).
//! - The call pushes its 20 ms frames and DTMF digits with [`StreamHandle::send_audio`] /
//!   [`StreamHandle::send_dtmf`]: `try_send` on a bounded queue, never blocking; a full
//!   queue drops the frame and counts it ([`StreamStats`]).
//! - The call's 20 ms pacer pulls what to play with [`PlayoutTap::next_frame`]: a
//!   short mutex, no await. Marks whose audio the pacer has pulled are acknowledged to the
//!   server by the task.
//! - Sockets that blip: a drop (no close frame, a close code other than 1000, an I/O
//!   error) or a failed connect is retried with backoff for [`StreamConfig::grace`];
//!   the caller hears silence (queued audio is dropped), and the new connection gets
//!   `connected` and a `start` with the same `callSid` and `"reconnect": true`. A close
//!   with 1000 from the server is the agent hanging up: [`EndReason::ServerClosed`].
//! - The SSRF guard: pass [`GuardedConnector`] (it judges the addresses a name resolves
//!   to at every connect) and check the URL first with [`check_stream_url`].

mod connect;
mod driver;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use media::stream::{Frame, Playout, StartParams, StreamFormat, Track, Uplink};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use connect::{
    ConnectFuture, Connector, DirectConnector, GuardedConnector, Host, StreamUrlError, WsStream,
    check_stream_url, open_with_headers, parse_stream_url,
};

/// Acknowledgements of played marks waiting for the task; past it the oldest are
/// dropped (a server that sends thousands of marks per second gets fewer acks).
const MAX_PENDING_ACKS: usize = 1024;

/// Reconnection backoff: `initial`, doubling up to `max`, until the grace period ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

/// Everything a stream needs.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `ws://` or `wss://`.
    pub url: String,
    pub format: StreamFormat,
    /// The rate of the PCM frames the call sends and pulls (8, 16, 24 or 48 kHz).
    pub call_rate: u32,
    /// `start`'s call fields: tenant (`accountSid`), `callSid`, tracks, custom
    /// parameters, from/to. `tracks` also selects which frames are sent.
    pub start: StartParams,
    /// `streamSid`, kept across reconnections.
    pub stream_sid: String,
    /// Whether the server's audio is played (else `media` from it is ignored).
    pub bidirectional: bool,
    /// How long a dropped or failing socket is retried before giving up.
    pub grace: Duration,
    pub backoff: Backoff,
    /// Frames and digits from the call waiting for the task.
    pub input_queue: usize,
    /// Messages waiting for the socket (a slow server fills it; media is then dropped).
    pub send_queue: usize,
    /// Most audio from the server held for playout.
    pub max_playout_ms: u32,
    /// Largest message accepted from the server (a `media` may carry 30 s of audio).
    pub max_message_bytes: usize,
}

impl StreamConfig {
    /// µ-law 8 kHz both ways, the inbound track, a 5 s grace period.
    pub fn new(
        url: impl Into<String>,
        call_sid: impl Into<String>,
        tenant: impl Into<String>,
    ) -> Self {
        StreamConfig {
            url: url.into(),
            format: StreamFormat::MULAW_8K,
            call_rate: 8_000,
            start: StartParams {
                account_sid: tenant.into(),
                call_sid: call_sid.into(),
                tracks: vec![Track::Inbound],
                ..StartParams::default()
            },
            stream_sid: format!("MZ{}", ulid::Ulid::new()),
            bidirectional: true,
            grace: Duration::from_secs(5),
            backoff: Backoff::default(),
            input_queue: 50,
            send_queue: 128,
            max_playout_ms: 30_000,
            max_message_bytes: 8 << 20,
        }
    }
}

/// What the task reports to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// The first connection is up (`connected` and `start` sent).
    Connected,
    /// The socket dropped; reconnecting for the grace period (the caller hears silence).
    Reconnecting { reason: String },
    /// A new connection resumed the stream (`start` with `"reconnect": true` sent).
    Resumed { attempts: u32 },
    /// The stream is over; the task has finished.
    Ended(EndReason),
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The server closed with 1000: the agent ended the conversation (the call hangs up
    /// by default).
    ServerClosed,
    /// The socket dropped and no reconnection succeeded within the grace period.
    GaveUp { after: Duration, reason: String },
    /// The first connection never came up within the grace period.
    FailedToConnect { after: Duration, reason: String },
    /// The call stopped the stream (or dropped every handle); `stop` was sent.
    Stopped,
    /// The configuration cannot work (bad URL, unsupported rate).
    Invalid(String),
}

/// Counters of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Call frames and digits dropped because the task's input queue was full.
    pub input_dropped: u64,
    /// `media` messages dropped because the socket's send queue was full (slow server).
    pub media_dropped: u64,
    /// Other messages (marks, dtmf, cleared) dropped for the same reason.
    pub control_dropped: u64,
    /// Frames that arrived while the socket was down (media time still advanced).
    pub offline_frames: u64,
    /// Server messages that did not parse (bad JSON, bad base64, missing fields).
    pub bad_messages: u64,
    /// Server messages ignored: unknown events, binary frames, media on a
    /// unidirectional stream.
    pub ignored_messages: u64,
    /// Audio from the server dropped because the playout was full, in ms.
    pub playout_dropped_ms: u64,
    pub reconnects: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    input_dropped: AtomicU64,
    media_dropped: AtomicU64,
    control_dropped: AtomicU64,
    offline_frames: AtomicU64,
    bad_messages: AtomicU64,
    ignored_messages: AtomicU64,
    reconnects: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Input from the call to the task.
#[derive(Debug)]
pub(crate) enum CallInput {
    Audio { track: Track, pcm: Vec<i16> },
    Dtmf(char),
}

#[derive(Debug)]
struct TapState {
    playout: Playout,
    /// Marks played by the pacer, waiting to be acknowledged by the task.
    acks: VecDeque<String>,
}

#[derive(Debug)]
pub(crate) struct SharedPlayout {
    state: Mutex<TapState>,
    /// Wakes the task when `acks` has something.
    acks_ready: Notify,
    /// Wakes the leg's pacer when audio arrives at an empty queue (it sends at once).
    audio_ready: Arc<Notify>,
    /// The socket dropped and is being reconnected (the leg may play a hold sound).
    reconnecting: std::sync::atomic::AtomicBool,
    /// Bumped by the task after each change from the server (for waiters).
    changed: watch::Sender<u64>,
}

impl SharedPlayout {
    fn lock(&self) -> MutexGuard<'_, TapState> {
        // A panic while holding this lock leaves a consistent queue: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The media side's view of the downlink: pull one 20 ms frame per pacer tick.
#[derive(Debug, Clone)]
pub struct PlayoutTap {
    shared: Arc<SharedPlayout>,
}

impl PlayoutTap {
    /// The next 20 ms at the call rate into `out` (silence when nothing is queued);
    /// returns how many samples (at the stream rate) were queued audio. Never awaits;
    /// holds the lock for one frame's copy and resampling. Allocates nothing unless a
    /// mark was played.
    pub fn fill(&self, out: &mut [i16]) -> usize {
        let (audio, played) = {
            let mut state = self.shared.lock();
            let (audio, played) = state.playout.next_frame_into(out);
            if !played.is_empty() {
                for name in &played {
                    if state.acks.len() >= MAX_PENDING_ACKS {
                        state.acks.pop_front();
                    }
                    state.acks.push_back(name.clone());
                }
            }
            (audio, !played.is_empty())
        };
        if played {
            self.shared.acks_ready.notify_one();
        }
        audio
    }

    /// Notified when audio arrives while nothing was queued.
    pub fn audio_ready(&self) -> Arc<Notify> {
        Arc::clone(&self.shared.audio_ready)
    }

    /// The socket dropped and the stream is reconnecting (within its grace period).
    pub fn is_reconnecting(&self) -> bool {
        self.shared.reconnecting.load(Ordering::Relaxed)
    }

    /// The next 20 ms at the call rate (silence when nothing is queued). Never awaits;
    /// holds the lock for one frame's copy and resampling.
    pub fn next_frame(&self) -> Frame {
        let frame = {
            let mut state = self.shared.lock();
            let frame = state.playout.next_frame();
            for name in &frame.played_marks {
                if state.acks.len() >= MAX_PENDING_ACKS {
                    state.acks.pop_front();
                }
                state.acks.push_back(name.clone());
            }
            frame
        };
        if !frame.played_marks.is_empty() {
            self.shared.acks_ready.notify_one();
        }
        frame
    }

    /// Audio queued for playout, in ms.
    pub fn queued_ms(&self) -> u64 {
        self.shared.lock().playout.queued_ms()
    }

    /// Marks waiting for their audio to be played.
    pub fn pending_marks(&self) -> usize {
        self.shared.lock().playout.pending_marks()
    }

    /// Waits until `ready` holds for the playout (checked now and after each change the
    /// server makes). For tests and diagnostics.
    pub async fn wait_until(&self, ready: impl Fn(&Playout) -> bool) {
        let mut changes = self.shared.changed.subscribe();
        loop {
            if ready(&self.shared.lock().playout) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

/// The call's handle on a stream. Cloning is cheap; dropping every clone stops it.
#[derive(Debug, Clone)]
pub struct StreamHandle {
    input: mpsc::Sender<CallInput>,
    playout: PlayoutTap,
    counters: Arc<Counters>,
    stop: CancellationToken,
    call_frame_len: usize,
}

impl StreamHandle {
    /// Queues one 20 ms frame of `track` at the call rate. False (and counted) when the
    /// queue is full, the frame has the wrong length, or the stream is over.
    pub fn send_audio(&self, track: Track, pcm: Vec<i16>) -> bool {
        if pcm.len() != self.call_frame_len {
            Counters::bump(&self.counters.input_dropped);
            return false;
        }
        self.offer(CallInput::Audio { track, pcm })
    }

    /// Queues a DTMF digit for the server.
    pub fn send_dtmf(&self, digit: char) -> bool {
        self.offer(CallInput::Dtmf(digit))
    }

    fn offer(&self, input: CallInput) -> bool {
        match self.input.try_send(input) {
            Ok(()) => true,
            Err(_) => {
                Counters::bump(&self.counters.input_dropped);
                false
            }
        }
    }

    /// Samples in one 20 ms frame at the call rate.
    pub fn call_frame_len(&self) -> usize {
        self.call_frame_len
    }

    pub fn playout(&self) -> &PlayoutTap {
        &self.playout
    }

    /// Ends the stream: `stop` and a close with 1000 go to the server.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    pub fn stats(&self) -> StreamStats {
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamStats {
            input_dropped: load(&c.input_dropped),
            media_dropped: load(&c.media_dropped),
            control_dropped: load(&c.control_dropped),
            offline_frames: load(&c.offline_frames),
            bad_messages: load(&c.bad_messages),
            ignored_messages: load(&c.ignored_messages),
            playout_dropped_ms: self.playout.shared.lock().playout.dropped_ms(),
            reconnects: load(&c.reconnects),
        }
    }
}

/// A running stream: the handle, its events and its task.
#[derive(Debug)]
pub struct Stream {
    pub handle: StreamHandle,
    /// Bounded; an event that finds it full is dropped (the task's result still says
    /// how it ended).
    pub events: mpsc::Receiver<StreamEvent>,
    pub task: JoinHandle<EndReason>,
}

/// The far end's side of a stream's plumbing: what the call sends, the playout it
/// pulls from, the counters and the stop signal. The WebSocket driver owns one; so does
/// an AI agent's session (`crate::agents::runtime`), which is one more stream end.
#[derive(Debug)]
pub(crate) struct StreamEnd {
    pub input: mpsc::Receiver<CallInput>,
    pub shared: Arc<SharedPlayout>,
    pub counters: Arc<Counters>,
    pub stop: CancellationToken,
}

impl StreamEnd {
    /// Queues audio (at the playout format's rate) for the call; the leg's pacer is woken
    /// when the queue was empty, so the first packet goes out at once.
    pub fn push_audio(&self, pcm: &[i16]) {
        if pcm.is_empty() {
            return;
        }
        let was_empty = {
            let mut state = self.shared.lock();
            let was_empty = state.playout.is_empty();
            state.playout.push_audio(pcm);
            was_empty
        };
        if was_empty {
            self.shared.audio_ready.notify_one();
        }
        self.shared.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Drops what is queued (barge-in); the audio still queued (ms) and the report.
    pub fn clear(&self) -> (u64, media::stream::ClearReport) {
        let out = {
            let mut state = self.shared.lock();
            let queued = state.playout.queued_ms();
            (queued, state.playout.clear())
        };
        self.shared.changed.send_modify(|n| *n = n.wrapping_add(1));
        out
    }

    /// Audio queued for the call, in ms.
    pub fn queued_ms(&self) -> u64 {
        self.shared.lock().playout.queued_ms()
    }
}

/// A stream's handle and far end, the playout in `format` played at `call_rate`.
pub(crate) fn plumbing(
    format: StreamFormat,
    call_rate: u32,
    max_playout_ms: u32,
    input_queue: usize,
) -> Result<(StreamHandle, StreamEnd), EndReason> {
    let invalid = |e: media::resample::ResampleError| EndReason::Invalid(e.to_string());
    let playout = Playout::new(format, call_rate, max_playout_ms).map_err(invalid)?;
    let call_frame_len = (call_rate / 50) as usize;
    let (input_tx, input_rx) = mpsc::channel(input_queue.max(1));
    let shared = Arc::new(SharedPlayout {
        state: Mutex::new(TapState {
            playout,
            acks: VecDeque::new(),
        }),
        acks_ready: Notify::new(),
        audio_ready: Arc::new(Notify::new()),
        reconnecting: std::sync::atomic::AtomicBool::new(false),
        changed: watch::channel(0).0,
    });
    let counters = Arc::new(Counters::default());
    let stop = CancellationToken::new();
    let handle = StreamHandle {
        input: input_tx,
        playout: PlayoutTap {
            shared: shared.clone(),
        },
        counters: counters.clone(),
        stop: stop.clone(),
        call_frame_len,
    };
    let end = StreamEnd {
        input: input_rx,
        shared,
        counters,
        stop,
    };
    Ok((handle, end))
}

/// Starts a stream's task. Fails at once on a configuration that cannot work.
pub fn spawn(config: StreamConfig, connector: Arc<dyn Connector>) -> Result<Stream, EndReason> {
    let url = parse_stream_url(&config.url).map_err(|e| EndReason::Invalid(e.to_string()))?;
    let invalid = |e: media::resample::ResampleError| EndReason::Invalid(e.to_string());
    let uplink = Uplink::new(config.format, config.call_rate).map_err(invalid)?;
    let (handle, end) = plumbing(
        config.format,
        config.call_rate,
        config.max_playout_ms,
        config.input_queue,
    )?;
    let (events_tx, events_rx) = mpsc::channel(32);
    let driver = driver::Driver::new(
        config,
        url,
        connector,
        uplink,
        end.input,
        end.shared,
        end.counters,
        end.stop,
        events_tx,
    );
    let task = tokio::spawn(driver.run());
    Ok(Stream {
        handle,
        events: events_rx,
        task,
    })
}
