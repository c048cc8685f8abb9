//! One RTP endpoint: a pair of UDP sockets and the tokio task that drives them.
//!
//! In: a port pair from the [`PortPool`], then [`StreamParams`] via
//! [`RtpEndpoint::connect`]. Out: paced RTP silence in the negotiated codec (RFC 3550
//! §5.1 seq/timestamp/SSRC, marker on the first packet) towards the remote address or
//! the latched source (symmetric RTP, RFC 4961), receive statistics as a
//! [`MediaSnapshot`], and a first-packet event. Optionally a recording of what arrives
//! ([`RtpEndpoint::start_recording`], see [`recording`](super::recording)) and,
//! independently, a live feed of it as decoded frames ([`RtpEndpoint::listen`], see
//! [`listen`](super::listen)).
//!
//! Latching: after each `connect`, the first valid packet from an address signalling
//! named (the SDP's, or the far end's SIP source given to [`RtpEndpoint::connect_from`])
//! becomes the destination; packets from anyone else are dropped before they count,
//! decode as DTMF or reach a recording (RTP hijack and injection). Before the first
//! `connect` packets are only counted. A later packet from another address with a new SSRC is a new source
//! (the far end moved, e.g. after a transfer) and is latched too. Packets from other
//! addresses with the latched SSRC, or with the SSRC we just moved away from, do not
//! move the latch, so two live sources cannot make it flap.
#![allow(clippy::disallowed_methods)] // driver: the only clock reader in this crate

use std::future::poll_fn;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Interval, MissedTickBehavior};

use super::listen::{DirectListener, FrameSink};
use super::pool::{PortPair, PortPool};
use super::recording::{RecordingError, RecordingHandle, RecordingOutcome, Tap, TapState};
use crate::dtmf::{DtmfDecoder, DtmfEvent};
use crate::rtp::{HEADER_LEN, RtpSender, RtpView};
use crate::sdp::StreamParams;
use crate::source::AudioSource;
use crate::stats::RtpStats;

/// Receive buffer: larger than any sane RTP packet on an Ethernet path.
const RECV_BUF: usize = 2048;
/// Datagrams per `recvmmsg`: two, so that one packet at a time (the normal case) comes
/// back as a short batch, which says the socket is empty without a `recvfrom` failing
/// with `EAGAIN` after every packet.
const RECV_BATCH: usize = 2;
/// Datagrams handled per wake-up before the other branches get a turn.
const DRAIN_MAX: usize = 16;
/// Send buffer: header plus 120 ms of 8 kHz G.711.
const SEND_BUF: usize = HEADER_LEN + 960;
/// Clock rate assumed for jitter before a codec is known.
const DEFAULT_CLOCK: u32 = 8000;

/// A point-in-time copy of an endpoint's counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MediaSnapshot {
    /// Valid RTP packets received.
    pub packets_received: u64,
    /// Payload octets received.
    pub bytes_received: u64,
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Datagrams on the RTP port that were not valid RTP.
    pub malformed: u64,
    /// RTP from addresses signalling did not name, dropped (hijack and injection tries).
    pub foreign: u64,
    /// Packets lost (RFC 3550 cumulative, current source).
    pub lost: u64,
    /// Interarrival jitter in milliseconds (current source).
    pub jitter_ms: f64,
    /// When the latest valid packet arrived.
    pub last_received: Option<Instant>,
}

/// Counters shared between the task (writer) and the handle (reader).
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    packets_received: AtomicU64,
    bytes_received: AtomicU64,
    packets_sent: AtomicU64,
    malformed: AtomicU64,
    foreign: AtomicU64,
    lost: AtomicU64,
    jitter_us: AtomicU64,
    /// Nanoseconds after `epoch` plus one; 0 means never.
    last_rx: AtomicU64,
}

impl Shared {
    fn snapshot(&self) -> MediaSnapshot {
        let last = self.last_rx.load(Ordering::Relaxed);
        MediaSnapshot {
            packets_received: self.packets_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            packets_sent: self.packets_sent.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            foreign: self.foreign.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            jitter_ms: self.jitter_us.load(Ordering::Relaxed) as f64 / 1000.0,
            last_received: last
                .checked_sub(1)
                .and_then(|n| self.epoch.checked_add(Duration::from_nanos(n))),
        }
    }
}

/// A bound RTP/RTCP socket pair with its send/receive task.
///
/// Dropping it (or [`close`](Self::close)) stops the task, which closes the sockets and
/// then returns the ports to the pool.
/// Digits queued for the owner before more are dropped (a person types far slower).
const DTMF_QUEUE: usize = 32;

/// What the handle tells the task, in order, through one channel (the task polls one
/// queue per wake-up rather than four); the task ends when it closes.
enum Command {
    /// New parameters are in the watch.
    Params,
    /// A recording tap.
    Tap(Tap),
    /// A listener, or none: stop listening (boxed: a listener is large, and so would
    /// every command be).
    Listen(Option<Box<DirectListener>>),
    /// An audio source, or none: back to silence.
    Source(Option<Box<dyn AudioSource>>),
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Params => "Params",
            Command::Tap(_) => "Tap",
            Command::Listen(_) => "Listen",
            Command::Source(_) => "Source",
        })
    }
}

#[derive(Debug)]
pub struct RtpEndpoint {
    local: SocketAddr,
    shared: Arc<Shared>,
    /// The last parameters (the handle reads them; the task is told by `Params`).
    params_tx: watch::Sender<Option<(StreamParams, Option<IpAddr>)>>,
    first_rx: watch::Receiver<bool>,
    task: JoinHandle<()>,
    /// Parameters, taps, listeners and sources to the task.
    cmd_tx: mpsc::UnboundedSender<Command>,
    /// True while the listener given to the task runs.
    listening: Option<Arc<AtomicBool>>,
    recording: Option<RecordingHandle>,
    /// RFC 4733 digits the far end sends, once each (taken by the call's owner).
    dtmf_rx: Option<mpsc::Receiver<DtmfEvent>>,
}

impl RtpEndpoint {
    /// Takes a port pair from `pool`, binds RTP and RTCP on `bind_ip`, and starts
    /// receiving. Pairs that fail to bind are skipped. Must run inside a tokio runtime
    /// with I/O enabled; errors if the pool is exhausted or there is no runtime.
    pub fn open(pool: &PortPool, bind_ip: IpAddr) -> io::Result<RtpEndpoint> {
        let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (pair, rtp, rtcp) = super::pool::bind_from_pool(pool, bind_ip, None)?;
        let local = SocketAddr::new(bind_ip, pair.rtp());
        // Registered for reading only: a socket registered for writing too gets an
        // EPOLLOUT edge every time the kernel frees a sent datagram, one event per packet
        // that nobody waits for. Sends go straight to the socket (see `send_packet`).
        // `with_interest` is deprecated because an arbitrary `AsRawFd` may change or
        // close its descriptor behind the reactor's back; the `AsyncFd` owns this
        // `std::net::UdpSocket`, whose descriptor is fixed until it is dropped.
        #[allow(deprecated)]
        let rtp = AsyncFd::with_interest(rtp.into_std()?, Interest::READABLE)?;
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            packets_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            packets_sent: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            jitter_us: AtomicU64::new(0),
            last_rx: AtomicU64::new(0),
        });
        let (params_tx, params_rx) = watch::channel(None);
        let (first_tx, first_rx) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (dtmf_tx, dtmf_rx) = mpsc::channel(DTMF_QUEUE);
        let driver = Driver {
            rtp,
            rtcp,
            shared: Arc::clone(&shared),
            first_tx,
            rng: StdRng::seed_from_u64(pool.seed()),
            stats: RtpStats::new(),
            send: None,
            tap: None,
            listen: None,
            dtmf: None,
            dtmf_tx,
            source: None,
            pcm: Vec::new(),
            early_source: None,
            source_wake: None,
            udp_state: super::bridge::recv_state()?,
        };
        let task = handle.spawn(driver.run(params_rx, cmd_rx, pair));
        Ok(RtpEndpoint {
            local,
            shared,
            params_tx,
            first_rx,
            task,
            cmd_tx,
            listening: None,
            recording: None,
            dtmf_rx: Some(dtmf_rx),
        })
    }

    /// Sends `source`'s audio instead of silence from the next packet time until it
    /// ends (then silence again); replaces any source playing. The source is pulled at
    /// the negotiated codec's PCM rate (8 kHz for G.711, 16 kHz for G.722, 48 kHz for
    /// Opus). Ignored when the endpoint has stopped.
    pub fn play(&self, source: Box<dyn AudioSource>) {
        let _ = self.cmd_tx.send(Command::Source(Some(source)));
    }

    /// Back to silence at once.
    pub fn stop_playing(&self) {
        let _ = self.cmd_tx.send(Command::Source(None));
    }

    /// The bound RTP address (RTCP is on the next port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts (or re-targets) sending per `params`; resets latching. Sends nothing if
    /// `params.direction` does not send.
    pub fn connect(&self, params: StreamParams) {
        self.connect_from(params, None);
    }

    /// As [`connect`](Self::connect), with the address the far end's SIP signalling
    /// comes from, which may latch besides the SDP address (a far end behind NAT).
    pub fn connect_from(&self, params: StreamParams, signalling: Option<IpAddr>) {
        self.params_tx.send_replace(Some((params, signalling)));
        let _ = self.cmd_tx.send(Command::Params);
    }

    /// What the last [`connect`](Self::connect) negotiated, if anything yet.
    pub fn params(&self) -> Option<StreamParams> {
        self.params_tx.borrow().map(|(p, _)| p)
    }

    /// The digits (RFC 4733 telephone-event on the negotiated payload type) the far end
    /// sends, each reported once. `None` after the first call.
    pub fn take_dtmf_events(&mut self) -> Option<mpsc::Receiver<DtmfEvent>> {
        self.dtmf_rx.take()
    }

    /// Current counters; cheap (atomic loads).
    pub fn stats(&self) -> MediaSnapshot {
        self.shared.snapshot()
    }

    /// Resolves when the first valid RTP packet has arrived (at once if it already
    /// has): `true`; `false` if the endpoint stopped first.
    pub async fn first_packet(&self) -> bool {
        let mut rx = self.first_rx.clone();
        rx.wait_for(|got| *got).await.is_ok()
    }

    /// A watch that turns `true` at the first valid packet, for use in `select!`.
    pub fn first_packet_watch(&self) -> watch::Receiver<bool> {
        self.first_rx.clone()
    }

    /// Records what arrives from now on into a new 2-channel 16-bit WAV at `path` (left:
    /// the far end, decoded through a jitter buffer with loss concealment; right: what
    /// this endpoint sends, silence for now), at the codec's PCM rate (8 kHz for G.711).
    /// Only packets of `params.pt` are recorded. The file is finalised when the endpoint
    /// closes; [`close_with_recording`](Self::close_with_recording) reports it. Must run
    /// inside a tokio runtime.
    pub fn start_recording(
        &mut self,
        path: impl AsRef<Path>,
        params: &StreamParams,
    ) -> Result<(), RecordingError> {
        if self.recording.is_some() {
            return Err(RecordingError::AlreadyRecording);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RecordingError::Stopped)?;
        let path = path.as_ref();
        let (tap, task) = super::recording::prepare(path, params)?;
        self.cmd_tx
            .send(Command::Tap(tap))
            .map_err(|_| RecordingError::Stopped)?;
        self.recording = Some(RecordingHandle {
            path: path.to_path_buf(),
            task: runtime.spawn(task.run()),
        });
        Ok(())
    }

    /// Starts handing the far end's audio (put back in order, decoded, concealed,
    /// resampled to `out_rate`) to `sink`, in 20 ms frames (`out_rate / 50` samples),
    /// channel 0, as packets arrive: the receive path calls the sink, with no buffering
    /// delay (see [`DirectListener`](super::listen)); while packets stop, silence keeps
    /// the frames in step with the clock. Only packets of the negotiated audio payload
    /// type count; the decoder follows the codec of [`connect`](Self::connect).
    /// Independent of a recording (both may run). Runs until
    /// [`stop_listening`](Self::stop_listening), the endpoint closes, or the sink
    /// returns false. Errors: `NotConnected` before `connect`, `AlreadyListening` if a
    /// listener runs, `Codec` if `out_rate` is not a supported PCM rate (8, 16, 24, 32
    /// or 48 kHz). Must run inside a tokio runtime.
    pub fn listen(
        &mut self,
        out_rate: u32,
        sink: Box<dyn FrameSink>,
    ) -> Result<(), RecordingError> {
        if self.is_listening() {
            return Err(RecordingError::AlreadyListening);
        }
        let params = self.params().ok_or(RecordingError::NotConnected)?;
        let alive = Arc::new(AtomicBool::new(false));
        let listener =
            DirectListener::new(&params, out_rate, sink, Arc::clone(&alive), Instant::now())?;
        self.cmd_tx
            .send(Command::Listen(Some(Box::new(listener))))
            .map_err(|_| RecordingError::Stopped)?;
        self.listening = Some(alive);
        Ok(())
    }

    /// Stops the listener (if any): the task drops it (and its sink) at once.
    pub fn stop_listening(&mut self) {
        if let Some(alive) = self.listening.take() {
            alive.store(false, Ordering::Relaxed);
            let _ = self.cmd_tx.send(Command::Listen(None));
        }
    }

    /// Whether a listener runs (its sink has not asked to stop).
    pub fn is_listening(&self) -> bool {
        self.listening
            .as_ref()
            .is_some_and(|alive| alive.load(Ordering::Relaxed))
    }

    /// Whether [`start_recording`](Self::start_recording) succeeded on this endpoint.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Stops the task, waits until the sockets are closed and the ports are back in
    /// the pool, and returns the final counters. A recording is finalised (and any
    /// error logged); use [`close_with_recording`](Self::close_with_recording) to see it.
    pub async fn close(self) -> MediaSnapshot {
        let (snapshot, recording) = self.close_with_recording().await;
        if let Some(Err(e)) = recording {
            tracing::warn!(error = %e, "recording failed");
        }
        snapshot
    }

    /// As [`close`](Self::close), and also waits for the recording (if one was
    /// started) to be finalised, returning what it wrote.
    pub async fn close_with_recording(
        self,
    ) -> (
        MediaSnapshot,
        Option<Result<RecordingOutcome, RecordingError>>,
    ) {
        let RtpEndpoint {
            shared,
            cmd_tx,
            task,
            recording,
            ..
        } = self;
        // The task ends when the command channel closes; it drops the tap, which ends
        // the recording.
        drop(cmd_tx);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "RTP endpoint task failed");
        }
        let recording = match recording {
            Some(r) => Some(r.finish().await),
            None => None,
        };
        (shared.snapshot(), recording)
    }
}

/// Sending state after `connect`.
#[derive(Debug)]
struct SendState {
    params: StreamParams,
    sender: RtpSender,
    /// (source, SSRC) we latched onto.
    latched: Option<(SocketAddr, u32)>,
    /// The SSRC latched before the current one; never latched again.
    retired: Option<u32>,
    /// The far end's SIP source: may latch besides `params.remote`.
    signalling: Option<IpAddr>,
    payload_len: usize,
    ticker: Option<Interval>,
    last_tick: Option<tokio::time::Instant>,
    ptime: Duration,
    /// How far the timestamps run ahead of the clock after packets sent early (audio
    /// that arrived between ticks); idle packets are left out to pay it back.
    lead: Duration,
}

impl SendState {
    fn dest(&self) -> SocketAddr {
        self.latched.map_or(self.params.remote, |(a, _)| a)
    }
}

/// The task's state. Buffers live on the task's stack: nothing allocates per packet.
#[derive(Debug)]
struct Driver {
    /// Non-blocking; registered for readiness to read only.
    rtp: AsyncFd<std::net::UdpSocket>,
    rtcp: UdpSocket,
    shared: Arc<Shared>,
    first_tx: watch::Sender<bool>,
    rng: StdRng,
    stats: RtpStats,
    send: Option<SendState>,
    /// Copies received audio to a recording.
    tap: Option<Tap>,
    /// Hands received audio to a listener.
    listen: Option<DirectListener>,
    /// Telephone-event decoder for the negotiated payload type.
    dtmf: Option<DtmfDecoder>,
    dtmf_tx: mpsc::Sender<DtmfEvent>,
    /// What is sent instead of silence, with its encoder (built for the codec in use).
    source: Option<(Box<dyn AudioSource>, SourceEncoder)>,
    /// One frame of the source's PCM (sized when a source starts, reused after).
    pcm: Vec<i16>,
    /// A source given before `connect`: it starts once the codec is known.
    early_source: Option<Box<dyn AudioSource>>,
    /// The playing source's wake-up: audio arrived after it ran dry.
    source_wake: Option<Arc<tokio::sync::Notify>>,
    /// quinn-udp's state for `recvmmsg` on `rtp` (shared, see `bridge::recv_state`).
    udp_state: &'static UdpSocketState,
}

/// The encoder of a playing source (the codec's encoders have no `Debug`).
struct SourceEncoder(Box<dyn crate::codec::Encoder + Send>);

impl std::fmt::Debug for SourceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SourceEncoder")
            .field(&self.0.codec())
            .finish()
    }
}

/// The playing source's wake-up, kept armed across the task's loop iterations: a fresh
/// `Notified` on every packet and tick cost two round trips through the `Notify`'s
/// waiter lock. The `Notify` it was armed on tells when the source changed.
type ArmedWake = Option<(
    Arc<tokio::sync::Notify>,
    std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>,
)>;

/// Arms `armed` on `wake` (the playing source's), unless it already is.
fn arm(armed: &mut ArmedWake, wake: Option<&Arc<tokio::sync::Notify>>) {
    match (wake, armed.as_ref()) {
        (Some(w), Some((on, _))) if Arc::ptr_eq(w, on) => {}
        (Some(w), _) => *armed = Some((Arc::clone(w), Box::pin(Arc::clone(w).notified_owned()))),
        (None, _) => *armed = None,
    }
}

/// What woke the endpoint's task.
enum Wake {
    /// A command, or `None`: the handle is gone.
    Command(Option<Command>),
    /// The pacing tick.
    Tick(tokio::time::Instant),
    /// Audio arrived at the playing source after it ran dry.
    Source,
    /// Datagrams wait on the RTP socket.
    Rtp,
    /// The reactor is gone (the runtime shuts down).
    Gone(io::Error),
}

/// Datagrams this many at most per wake-up on the RTCP socket.
const RTCP_DRAIN_MAX: usize = 16;

/// Empties the RTCP socket (not interpreted yet), registering for its next datagram.
fn drain_rtcp(rtcp: &UdpSocket, buf: &mut [u8; RECV_BUF], cx: &mut Context<'_>) {
    for _ in 0..RTCP_DRAIN_MAX {
        let mut rb = ReadBuf::new(&mut buf[..]);
        if rtcp.poll_recv_from(cx, &mut rb).is_pending() {
            return;
        }
    }
    // More than a wake-up's share: come back for the rest.
    cx.waker().wake_by_ref();
}

impl Driver {
    async fn run(
        mut self,
        mut params_rx: watch::Receiver<Option<(StreamParams, Option<IpAddr>)>>,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        ports: PortPair,
    ) {
        let mut rbufs = [[0u8; RECV_BUF]; RECV_BATCH];
        let mut cbuf = [0u8; RECV_BUF];
        let mut sbuf = [0u8; SEND_BUF];
        let mut armed: ArmedWake = None;
        loop {
            arm(&mut armed, self.source_wake.as_ref());
            // Polled by hand rather than with `select!`: the readiness futures `select!`
            // builds and drops on every iteration each took the socket's waiter lock
            // twice. The pacing tick comes before the RTP socket, so a flood of packets
            // cannot starve what we send.
            let wake = poll_fn(|cx| {
                if let Poll::Ready(cmd) = cmd_rx.poll_recv(cx) {
                    return Poll::Ready(Wake::Command(cmd));
                }
                if let Some(ticker) = self.send.as_mut().and_then(|s| s.ticker.as_mut())
                    && let Poll::Ready(tick) = ticker.poll_tick(cx)
                {
                    return Poll::Ready(Wake::Tick(tick));
                }
                if let Some((_, notified)) = armed.as_mut()
                    && notified.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Wake::Source);
                }
                match self.rtp.poll_read_ready(cx) {
                    // Readiness stays set: `drain_rtp` clears it when the socket is empty.
                    Poll::Ready(Ok(_)) => return Poll::Ready(Wake::Rtp),
                    Poll::Ready(Err(e)) => return Poll::Ready(Wake::Gone(e)),
                    Poll::Pending => {}
                }
                drain_rtcp(&self.rtcp, &mut cbuf, cx);
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Command(None) => break,
                // Several `connect`s before the task looks: the last one, once (as the
                // watch alone gave it).
                Wake::Command(Some(Command::Params)) => {
                    if params_rx.has_changed().unwrap_or(false) {
                        let params = *params_rx.borrow_and_update();
                        if let Some((p, signalling)) = params {
                            self.configure(p, signalling, &mut sbuf);
                        }
                    }
                }
                Wake::Command(Some(Command::Tap(tap))) => self.tap = Some(tap),
                Wake::Command(Some(Command::Listen(listener))) => {
                    self.listen = listener.map(|l| *l);
                }
                Wake::Command(Some(Command::Source(source))) => self.set_source(source, &mut sbuf),
                Wake::Rtp => self.drain_rtp(&mut rbufs),
                Wake::Source => {
                    // Spent: armed again at the top of the loop.
                    armed = None;
                    self.send_early(&mut sbuf);
                }
                Wake::Tick(tick) => {
                    self.send_packet(tick, false, &mut sbuf);
                    if let Some(listener) = self.listen.as_mut()
                        && !listener.on_tick(Instant::now())
                    {
                        self.listen = None;
                    }
                }
                Wake::Gone(e) => {
                    // Only when the runtime shuts down.
                    tracing::debug!(error = %e, "RTP endpoint's reactor is gone");
                    break;
                }
            }
        }
        // The sockets go back with their ports (kept for the next call, or closed first).
        let Driver { rtp, rtcp, .. } = self;
        match UdpSocket::from_std(rtp.into_inner()) {
            Ok(rtp) => ports.recycle(rtp, rtcp),
            // No reactor to register it with (shutdown): it closes, the pair is freed.
            Err(e) => tracing::debug!(error = %e, "RTP socket not kept"),
        }
    }

    fn configure(
        &mut self,
        params: StreamParams,
        signalling: Option<IpAddr>,
        sbuf: &mut [u8; SEND_BUF],
    ) {
        let ptime_ms = params.ptime_ms.clamp(10, 120);
        let samples = params.clock_rate.saturating_mul(ptime_ms) / 1000;
        let silence = sbuf
            .get_mut(HEADER_LEN..)
            .and_then(|out| silence_frame(params.codec, ptime_ms, samples, out));
        let payload_len = silence.unwrap_or(0);
        self.dtmf = params.dtmf_pt.map(DtmfDecoder::new);
        if let Some(listener) = self.listen.as_mut() {
            listener.retarget(params.pt, super::recording::audio_codec(params.codec));
        }
        let ptime = Duration::from_millis(u64::from(ptime_ms));
        // A codec whose silence could not be made (an Opus ptime it has no frame for) is
        // received but nothing is sent.
        let ticker = (params.direction.sends() && silence.is_some()).then(|| {
            let mut t = tokio::time::interval(ptime);
            t.set_missed_tick_behavior(MissedTickBehavior::Skip);
            t
        });
        self.send = Some(SendState {
            params,
            sender: RtpSender::new(&mut self.rng, params.pt, samples),
            latched: None,
            retired: None,
            signalling,
            payload_len,
            ticker,
            last_tick: None,
            ptime,
            lead: Duration::ZERO,
        });
        // A new codec needs a new encoder for what is playing (or waited for this).
        let playing = self.source.take().map(|(source, _)| source);
        if let Some(source) = playing.or_else(|| self.early_source.take()) {
            self.set_source(Some(source), sbuf);
        }
    }

    /// Starts (or stops, `None`) sending `source` instead of silence.
    fn set_source(&mut self, source: Option<Box<dyn AudioSource>>, sbuf: &mut [u8; SEND_BUF]) {
        let had = self.source.take().is_some();
        self.early_source = None;
        self.source_wake = source.as_ref().and_then(|s| s.wake());
        let Some(source) = source else {
            if had {
                self.restore_silence(sbuf);
            }
            return;
        };
        let Some(s) = self.send.as_ref() else {
            // Played from the first packet once connected.
            self.early_source = Some(source);
            return;
        };
        let codec = s.params.codec.audio_codec();
        let ptime_ms = s.ptime.as_millis() as u32;
        match crate::codec::encoder(codec) {
            Ok(enc) if codec.supports_ptime(ptime_ms) => {
                self.source_wake = source.wake();
                self.pcm.resize(codec.frame_samples(ptime_ms), 0);
                self.source = Some((source, SourceEncoder(enc)));
            }
            _ => tracing::warn!(
                ?codec,
                ptime_ms,
                "cannot encode an audio source for this codec"
            ),
        }
    }

    /// Writes the silence payload back into the send buffer after a source.
    fn restore_silence(&mut self, sbuf: &mut [u8; SEND_BUF]) {
        if let Some(s) = self.send.as_mut() {
            let ptime_ms = s.ptime.as_millis() as u32;
            let samples = s.params.clock_rate.saturating_mul(ptime_ms) / 1000;
            s.payload_len = sbuf
                .get_mut(HEADER_LEN..)
                .and_then(|out| silence_frame(s.params.codec, ptime_ms, samples, out))
                .unwrap_or(0);
        }
    }

    /// Handles the datagrams waiting on the RTP socket, up to [`DRAIN_MAX`]. A short
    /// `recvmmsg` batch means the socket was empty at that moment, so readiness is
    /// cleared right there (as the bridge does) instead of by one more `recvfrom`
    /// failing with `EAGAIN`: one syscall less per packet.
    fn drain_rtp(&mut self, bufs: &mut [[u8; RECV_BUF]; RECV_BATCH]) {
        let mut handled = 0;
        while handled < DRAIN_MAX {
            let mut meta = [RecvMeta::default(); RECV_BATCH];
            let mut got = 0;
            let res = {
                let (sock, state) = (&self.rtp, self.udp_state);
                sock.try_io(Interest::READABLE, |inner| {
                    let mut iovs = bufs.each_mut().map(|b| IoSliceMut::new(b));
                    got = state.recv(UdpSockRef::from(inner), &mut iovs, &mut meta)?;
                    if got < RECV_BATCH {
                        // Tokio clears readiness on WouldBlock (only if no new event
                        // arrived meanwhile); what `got` holds is still handled below.
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                })
            };
            for (m, buf) in meta.iter().zip(bufs.iter()).take(got) {
                // GRO is off on this socket (see `bridge::recv_state`): one datagram each.
                self.on_datagram(buf.get(..m.len).unwrap_or_default(), m.addr);
            }
            handled += got.max(1);
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::trace!(error = %e, "RTP recv error");
                    return;
                }
            }
        }
    }

    fn on_datagram(&mut self, data: &[u8], src: SocketAddr) {
        let view = match RtpView::parse(data) {
            Ok(v) => v,
            Err(e) => {
                tracing::trace!(%src, error = %e, "malformed RTP dropped");
                self.shared.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        // RTCP multiplexed on the RTP port (RFC 5761 §4): PT 64-95 is not media.
        if (64..=95).contains(&view.pt()) {
            return;
        }
        // Once connected, only the latched source or an address signalling named is media
        // of this call. (Before `connect` packets are only counted: nothing latches,
        // decodes or records until then.)
        let named = self.send.as_ref().is_none_or(|s| {
            s.latched.is_some_and(|(a, _)| a == src)
                || crate::relay::source_allowed(src.ip(), Some(s.params.remote), s.signalling)
        });
        if !named {
            self.shared.foreign.fetch_add(1, Ordering::Relaxed);
            super::FOREIGN_RTP_DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = Instant::now();
        let since = now.saturating_duration_since(self.shared.epoch);
        let clock = self
            .send
            .as_ref()
            .map_or(DEFAULT_CLOCK, |s| s.params.clock_rate);
        // Arrival in RTP units; wraps like an RTP timestamp.
        let arrival = (since.as_micros() * u128::from(clock) / 1_000_000) as u32;
        self.stats.on_packet(&view, arrival);

        let sh = &self.shared;
        sh.packets_received
            .store(self.stats.packets, Ordering::Relaxed);
        sh.bytes_received.store(self.stats.bytes, Ordering::Relaxed);
        sh.lost.store(self.stats.lost, Ordering::Relaxed);
        let jitter_us = (self.stats.jitter_ms(clock) * 1000.0) as u64;
        sh.jitter_us.store(jitter_us, Ordering::Relaxed);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX - 1);
        sh.last_rx.store(nanos.saturating_add(1), Ordering::Relaxed);
        self.first_tx
            .send_if_modified(|got| !std::mem::replace(got, true));
        if let Some(decoder) = self.dtmf.as_mut()
            && let Some(event) = decoder.handle(&view)
            && self.dtmf_tx.try_send(event).is_err()
        {
            tracing::debug!(digit = %event.digit, "DTMF event dropped: nobody is reading");
        }
        if let Some(tap) = &self.tap
            && tap.offer(&view, now) == TapState::Closed
        {
            self.tap = None;
        }
        if let Some(listener) = self.listen.as_mut()
            && !listener.on_packet(&view)
        {
            self.listen = None;
        }

        if let Some(s) = self.send.as_mut() {
            let ssrc = view.ssrc();
            match s.latched {
                None => s.latched = Some((src, ssrc)),
                Some((addr, old)) if addr != src && old != ssrc && s.retired != Some(ssrc) => {
                    tracing::debug!(from = %addr, to = %src, "RTP re-latched to a new source");
                    s.latched = Some((src, ssrc));
                    s.retired = Some(old);
                }
                Some(_) => {}
            }
        }
    }

    /// Audio arrived at a source that had run dry: send it now rather than at the next
    /// tick, and tick from here on. The packet's timestamp is one frame on, as always,
    /// so the timestamps now lead the clock by what was left of the packet time.
    fn send_early(&mut self, sbuf: &mut [u8; SEND_BUF]) {
        let Some(s) = self.send.as_mut() else {
            return;
        };
        let Some(ticker) = s.ticker.as_mut() else {
            return;
        };
        let now = tokio::time::Instant::now();
        // However close to the last packet: two packets back to back are nothing to a
        // jitter buffer, waiting up to a packet time is latency the caller hears.
        let since = s
            .last_tick
            .map_or(s.ptime, |t| now.saturating_duration_since(t));
        s.lead += s.ptime.saturating_sub(since);
        ticker.reset();
        self.send_packet(now, true, sbuf);
    }

    fn send_packet(&mut self, tick: tokio::time::Instant, early: bool, sbuf: &mut [u8; SEND_BUF]) {
        let Some(s) = self.send.as_mut() else {
            return;
        };
        // Ticks lost to a stalled runtime still advance the timestamp.
        let skipped = match s.last_tick {
            Some(last) if !early => {
                let elapsed = tick.saturating_duration_since(last).as_micros();
                let per = s.ptime.as_micros().max(1);
                let n = (elapsed + per / 2) / per;
                u32::try_from(n.saturating_sub(1)).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        s.last_tick = Some(tick);
        let mut payload_len = s.payload_len;
        let mut ended = false;
        if let Some((source, enc)) = self.source.as_mut() {
            let rate = enc.0.sample_rate();
            if source.fill(rate, &mut self.pcm) {
                match sbuf
                    .get_mut(HEADER_LEN..)
                    .map(|out| enc.0.encode(&self.pcm, out))
                {
                    Some(Ok(n)) => payload_len = n,
                    _ => ended = true,
                }
            } else {
                ended = true;
            }
        }
        if ended {
            // The silence payload was written over: put it back for this packet on.
            self.source = None;
            self.restore_silence(sbuf);
            let Some(s) = self.send.as_ref() else {
                return;
            };
            payload_len = s.payload_len;
        }
        let Some(s) = self.send.as_mut() else {
            return;
        };
        let idle = self
            .source
            .as_ref()
            .is_some_and(|(source, _)| source.idle());
        if idle && !early && skipped == 0 && s.lead >= s.ptime {
            // Silence that nobody misses: leaving it out (its timestamp too) pays back
            // a packet time of lead.
            s.lead -= s.ptime;
            return;
        }
        let header = s.sender.next_header(skipped);
        if header.write(&mut sbuf[..]).is_err() {
            return;
        }
        let Some(packet) = sbuf.get(..HEADER_LEN + payload_len) else {
            return;
        };
        // Straight to the socket: a datagram that finds the send buffer full is late
        // audio, better dropped than waited for.
        match self.rtp.get_ref().send_to(packet, s.dest()) {
            Ok(_) => {
                self.shared.packets_sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::trace!(dest = %s.dest(), error = %e, "RTP send failed"),
        }
    }
}

const SILENCE_WARMUP_FRAMES: usize = 5;

/// Writes one frame of silence in `codec` into `out` and returns its length: G.711's
/// silence byte repeated (`samples` of them), or for G.722 and Opus a frame of zeros
/// encoded once, which is then sent again every packet time (silence stays silence
/// whatever the decoder's state). `None` if the codec cannot make a frame of `ptime_ms`.
fn silence_frame(
    codec: crate::sdp::Codec,
    ptime_ms: u32,
    samples: u32,
    out: &mut [u8],
) -> Option<usize> {
    if let Some(byte) = codec.silence_byte() {
        let p = out.get_mut(..samples as usize)?;
        p.fill(byte);
        return Some(p.len());
    }
    let audio = codec.audio_codec();
    if !audio.supports_ptime(ptime_ms) {
        return None;
    }
    let mut enc = crate::codec::encoder(audio).ok()?;
    let zeros = vec![0i16; audio.frame_samples(ptime_ms)];
    // A few frames first: G.722's ADPCM settles from its reset state to its idle pattern.
    for _ in 0..SILENCE_WARMUP_FRAMES {
        enc.encode(&zeros, out).ok()?;
    }
    let len = enc.encode(&zeros, out).ok()?;
    (len > 0).then_some(len)
}
