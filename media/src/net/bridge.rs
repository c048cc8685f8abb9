//! Real-socket driver for one bridged call: two RTP sockets (one per leg) and the task
//! that runs the sans-IO [`Relay`] over them (symmetric RTP, RFC 4961; header rewriting,
//! RFC 3550 §8.2), transcoding when the legs' codecs differ.
//!
//! In: a [`PortPool`], the negotiated [`SideParams`] of both legs (side B may start as a
//! placeholder until the callee answers), later renegotiations ([`Bridge::set_side`],
//! [`Bridge::update_remote`]). Out: relayed datagrams, per-side [`BridgeCounters`] and
//! receive statistics ([`SideStats`]), and the RFC 4733 digits each side sends
//! ([`Bridge::take_dtmf_events`]; the events are relayed too, with the other side's
//! payload type). One tokio task owns the relay and the four sockets (RTP, plus RTCP on
//! the next port). RTCP is terminated per leg (RFC 3550 §7.2 translator): each side gets
//! our SR (or RR while we have sent it nothing) with a report block on what it sent us,
//! every 5 s randomised 0.5-1.5x (§6.2), at its RTCP source once it sent us RTCP, else
//! at its RTP port + 1; its reports give the RTT in [`SideStats`]. Per wakeup the task
//! drains up to [`BATCH`] ready datagrams with `recvmmsg` ([`RECV_BATCH`] per call, via
//! quinn-udp); nothing allocates per packet. Transcoded directions are played out by
//! the relay's jitter buffer: the task's one timer also wakes for the relay's next
//! playout instant ([`Relay::poll_timeout`]).
//!
//! With a kernel forwarder on the pool ([`super::kernel`]), a call whose relaying has
//! become the identity is handed to the kernel: the task then only reads its counters
//! once a second, and takes the call back on a renegotiation, a hold or at the end.
//! A side on hold ([`Bridge::set_direction`]: its SDP direction says it receives
//! nothing) gets no RTP, as RFC 3264 §5.1 asks; RTCP goes on.
//!
//! [`Bridge::start_recording`] records both parties into one stereo WAV (left side A,
//! right side B; see [`super::recording`]): the task offers each audio packet the relay
//! accepted from a side to that side's tap (a non-blocking copy into a preallocated
//! queue). A recording bridge is never handed to the kernel, whose forwarding would
//! hide the packets from the taps; starting a recording takes an offloaded call back.
//! [`Bridge::listen`] hands both parties' decoded audio to a
//! [`FrameSink`](super::listen::FrameSink) in 20 ms frames, through taps of its own
//! (offered the same packets, independent of a recording, and likewise keeping the
//! call out of the kernel).
#![allow(clippy::disallowed_methods)] // driver: supplies the relay's `now`

use std::cell::RefCell;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::io::{Interest, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::kernel::{Flow, FlowCounters, KernelForwarder};
use super::listen::FrameSink;
use super::pool::{PortPair, PortPool};
use super::recording::{RecordingError, RecordingHandle, RecordingOutcome, Tap, TapState};
use crate::codec::AudioCodec;
use crate::dtmf::DtmfEvent;
use crate::relay::{DropReason, Relay, RelayConfig, Side, SideCounters, SideParams, Verdict};
use crate::rtcp::{self, LegReporter, SenderInfo};
use crate::rtp::HEADER_LEN;
use crate::sdp::Direction;
use crate::transcode::Transcoder;

/// Receive buffer: larger than any sane RTP packet on an Ethernet path.
const RECV_BUF: usize = 2048;
/// Transcoded packet buffer: header plus the largest payload of any codec (Opus).
const SEND_BUF: usize = HEADER_LEN + 4096;
/// Datagrams taken from one socket per wakeup before the other socket gets a turn.
pub const BATCH: usize = 64;
/// Datagrams per `recvmmsg` call.
pub const RECV_BATCH: usize = 8;
/// Digits queued for the owner before more are dropped (a person types far slower).
const DTMF_QUEUE: usize = 32;
/// RTCP buffer: an SR with one block plus SDES fits in ~100 octets; peers may send more.
const RTCP_BUF: usize = 1500;
/// "Never" for a disabled report timer.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);
/// How often the kernel's counters of an offloaded bridge are read (they feed the
/// media timeout and the call's statistics).
pub const KERNEL_POLL: Duration = Duration::from_secs(1);
/// IPv4 and UDP headers, counted in the kernel's octets but not in ours.
const IP_UDP_HEADERS: u64 = 28;

/// Receive statistics of one side for the call record: what that side's far end sent
/// us and the relay accepted (from the latched source, on a negotiated payload type).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SideStats {
    /// Packets received (audio and telephone-events).
    pub packets: u64,
    /// Payload octets of those packets (RFC 3550 octet count: no headers).
    pub bytes: u64,
    /// Packets lost, RFC 3550 A.3 (expected minus received), summed over the SSRCs the
    /// far end used.
    pub lost: u64,
    /// Interarrival jitter of the current SSRC, RFC 3550 A.8, in milliseconds.
    pub jitter_ms: f64,
    /// When the latest of those packets arrived.
    pub last_received: Option<Instant>,
    /// Round-trip time to that side's far end from its RTCP reports (RFC 3550 §6.4.1),
    /// once one referred to a sender report of ours.
    pub rtt: Option<Duration>,
}

/// A point-in-time copy of one side's counters; every field counts packets *received on*
/// this side (and what became of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeCounters {
    /// Datagrams received, valid or not.
    pub received_packets: u64,
    /// Octets of those datagrams.
    pub received_bytes: u64,
    /// Relayed with only the header rewritten.
    pub forwarded_packets: u64,
    /// Handed to the transcoder.
    pub transcoded_packets: u64,
    /// Times this side latched to a source address.
    pub latches: u64,
    /// Times the incoming SSRC changed.
    pub ssrc_changes: u64,
    /// Datagrams handed to the kernel for the other side.
    pub sent_packets: u64,
    /// Sends that failed (socket buffer full or an error): the packet is lost.
    pub send_errors: u64,
    /// Payloads the transcoder rejected (or no transcoder for the codec pair/ptime).
    pub transcode_errors: u64,
    /// Relayed by the kernel ([`super::kernel`]); also counted as received, forwarded
    /// and sent. Read from the kernel every [`KERNEL_POLL`] while it forwards.
    pub kernel_forwarded: u64,
    dropped: [u64; DropReason::ALL.len()],
}

fn reason_idx(reason: DropReason) -> usize {
    DropReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

impl BridgeCounters {
    /// Packets the relay dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason_idx(reason)).copied().unwrap_or(0)
    }

    /// Packets the relay dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
}

/// Counters shared between the task (only writer) and the handle.
#[derive(Debug, Default)]
struct SideAtomics {
    received_packets: AtomicU64,
    received_bytes: AtomicU64,
    forwarded_packets: AtomicU64,
    transcoded_packets: AtomicU64,
    latches: AtomicU64,
    ssrc_changes: AtomicU64,
    sent_packets: AtomicU64,
    send_errors: AtomicU64,
    transcode_errors: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    stat_packets: AtomicU64,
    stat_bytes: AtomicU64,
    stat_lost: AtomicU64,
    /// Jitter in nanoseconds.
    jitter_ns: AtomicU64,
    /// Nanoseconds after the bridge's epoch plus one; 0 means never.
    last_rx: AtomicU64,
    /// RTT in nanoseconds plus one; 0 means unknown.
    rtt: AtomicU64,
    /// Packets the kernel relayed from this side, and their IP-level octets.
    kernel_packets: AtomicU64,
    kernel_bytes: AtomicU64,
}

/// `t` as nanoseconds after `epoch` plus one, so that 0 can mean "never".
fn encode_instant(epoch: Instant, t: Option<Instant>) -> u64 {
    t.map_or(0, |t| {
        let n = t.saturating_duration_since(epoch).as_nanos();
        u64::try_from(n).unwrap_or(u64::MAX - 1).saturating_add(1)
    })
}

fn decode_instant(epoch: Instant, v: u64) -> Option<Instant> {
    v.checked_sub(1)
        .and_then(|n| epoch.checked_add(Duration::from_nanos(n)))
}

impl SideAtomics {
    /// Copies the relay's receive statistics of this side.
    fn publish_stats(&self, relay: &Relay, side: Side, epoch: Instant) {
        let set = |a: &AtomicU64, v| a.store(v, Ordering::Relaxed);
        let st = relay.stats(side);
        set(&self.stat_packets, st.packets);
        set(&self.stat_bytes, st.bytes);
        set(&self.stat_lost, st.lost_all_sources());
        let jitter_ns = st.jitter_ms(relay.params(side).clock_rate) * 1e6;
        set(&self.jitter_ns, jitter_ns as u64);
        // Max: the kernel's counters may have moved it later (in-kernel forwarding).
        self.last_rx.fetch_max(
            encode_instant(epoch, relay.last_received(side)),
            Ordering::Relaxed,
        );
    }

    fn stats(&self, epoch: Instant) -> SideStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (kp, kb) = (get(&self.kernel_packets), get(&self.kernel_bytes));
        SideStats {
            packets: get(&self.stat_packets) + kp,
            bytes: get(&self.stat_bytes)
                + kb.saturating_sub(kp * (IP_UDP_HEADERS + HEADER_LEN as u64)),
            lost: get(&self.stat_lost),
            jitter_ms: get(&self.jitter_ns) as f64 / 1e6,
            last_received: decode_instant(epoch, get(&self.last_rx)),
            rtt: get(&self.rtt).checked_sub(1).map(Duration::from_nanos),
        }
    }

    /// Copies the relay's totals (it keeps them; the task only mirrors them), with the
    /// transcoding errors of the unbuffered path, which the task counts itself.
    fn publish(&self, c: &SideCounters, tc_errors: u64) {
        let set = |a: &AtomicU64, v| a.store(v, Ordering::Relaxed);
        set(&self.transcode_errors, c.transcode_errors + tc_errors);
        set(&self.received_packets, c.received_packets);
        set(&self.received_bytes, c.received_bytes);
        set(&self.forwarded_packets, c.forwarded_packets);
        set(&self.transcoded_packets, c.transcoded_packets);
        set(&self.latches, c.latches);
        set(&self.ssrc_changes, c.ssrc_changes);
        for (a, r) in self.dropped.iter().zip(DropReason::ALL) {
            set(a, c.dropped(r));
        }
    }

    fn snapshot(&self) -> BridgeCounters {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut dropped = [0; DropReason::ALL.len()];
        for (d, a) in dropped.iter_mut().zip(&self.dropped) {
            *d = get(a);
        }
        let (kp, kb) = (get(&self.kernel_packets), get(&self.kernel_bytes));
        BridgeCounters {
            received_packets: get(&self.received_packets) + kp,
            received_bytes: get(&self.received_bytes) + kb.saturating_sub(kp * IP_UDP_HEADERS),
            forwarded_packets: get(&self.forwarded_packets) + kp,
            transcoded_packets: get(&self.transcoded_packets),
            latches: get(&self.latches),
            ssrc_changes: get(&self.ssrc_changes),
            sent_packets: get(&self.sent_packets) + kp,
            send_errors: get(&self.send_errors),
            transcode_errors: get(&self.transcode_errors),
            kernel_forwarded: kp,
            dropped,
        }
    }
}

fn idx(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

/// Signalling changes for the task.
#[derive(Debug)]
enum Command {
    UpdateRemote(Side, SocketAddr),
    SetSide(Side, SideParams),
    SetDirection(Side, Direction),
    SetSignallingIp(Side, Option<std::net::IpAddr>),
    RtcpInterval(Duration),
    /// Start offering each side's audio to its tap (side A, side B).
    Record([Tap; 2]),
    /// Start offering each side's audio to its listen tap (side A, side B).
    Listen([Tap; 2]),
    /// Drop the listen taps.
    StopListen,
}

/// A running media bridge between two legs. Dropping it (or [`close`](Self::close))
/// stops the task, which closes the sockets and then returns the ports to the pool.
#[derive(Debug)]
pub struct Bridge {
    local: [SocketAddr; 2],
    /// Origin of the instants published by the task.
    epoch: Instant,
    shared: Arc<[SideAtomics; 2]>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    dtmf_rx: Option<mpsc::Receiver<(Side, DtmfEvent)>>,
    /// Each side's RTP clock as last set, to read digit durations in.
    clock_rates: [AtomicU32; 2],
    /// Each side's audio payload type and codec as last set, for a recording's decoders.
    audio: Mutex<[(u8, AudioCodec); 2]>,
    recording: Option<RecordingHandle>,
    /// The listen task, while one may run.
    listening: Option<JoinHandle<()>>,
}

impl Bridge {
    /// Binds one RTP/RTCP pair per side on `bind_ip` from `pool` and starts relaying
    /// between `a` and `b`. A side not negotiated yet (the callee before its answer)
    /// can be a placeholder: `remote: None` and the other side's codec; media for it
    /// is dropped until it is known or its far end sends first (latching), and
    /// [`set_side`](Self::set_side) fills it in later. Must run inside a tokio runtime
    /// with I/O enabled (the task runs on that runtime); errors if the pool is exhausted
    /// or there is no runtime.
    ///
    /// If the pool has a kernel forwarder, output streams keep their input's SSRC
    /// ([`RelayConfig::pass_ssrc`]) and, once both sides have latched and relaying
    /// changes nothing in the packets ([`Relay::passthrough_sources`]), the kernel
    /// forwards the call; a renegotiation or the end of the call takes it back. While
    /// the kernel forwards, no DTMF events are reported, loss and jitter stay as they
    /// were, and no RTCP reports are sent (the far ends' RTCP is still read).
    pub fn open(
        pool: &PortPool,
        bind_ip: IpAddr,
        a: SideParams,
        b: SideParams,
        mut config: RelayConfig,
    ) -> io::Result<Bridge> {
        let kernel = pool.kernel_forwarder().cloned();
        config.pass_ssrc |= kernel.is_some();
        let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (pair_a, rtp_a, rtcp_a) = super::pool::bind_from_pool(pool, bind_ip, None)?;
        // In-kernel forwarding needs both ports in one conntrack zone (`Flow::new`).
        let zone_b = kernel
            .is_some()
            .then(|| super::kernel::zone_of(pair_a.rtp()));
        let (pair_b, rtp_b, rtcp_b) = super::pool::bind_from_pool(pool, bind_ip, zone_b)?;
        // Known from the bind: no getsockname per call.
        let local = [
            SocketAddr::new(bind_ip, pair_a.rtp()),
            SocketAddr::new(bind_ip, pair_b.rtp()),
        ];
        let udp_state = recv_state()?;
        let mut rng = StdRng::seed_from_u64(pool.seed());
        let shared = Arc::new([SideAtomics::default(), SideAtomics::default()]);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (dtmf_tx, dtmf_rx) = mpsc::channel(DTMF_QUEUE);
        let epoch = Instant::now();
        let cname = format!("switchyard@{}", local[0]).into_bytes();
        let driver = Driver {
            relay: Relay::new(a, b, config, &mut rng),
            rng,
            rtcp_interval: rtcp::REPORT_INTERVAL,
            next_report: [tokio::time::Instant::now(); 2],
            reporters: [LegReporter::new(), LegReporter::new()],
            rtcp_dest: [None, None],
            sent: [SentCount::default(); 2],
            cname,
            rtp: [rtp_a, rtp_b],
            udp_state,
            rtcp: [rtcp_a, rtcp_b],
            shared: Arc::clone(&shared),
            transcoders: [None, None],
            tc_errors: [0; 2],
            epoch,
            dtmf_tx,
            local,
            kernel,
            early: [
                a.remote.is_none().then(Vec::new),
                b.remote.is_none().then(Vec::new),
            ],
            offload: None,
            kernel_refused: false,
            taps: [None, None],
            listen: [None, None],
        };
        // Boxed: the driver's future is ~9 KB, copied into the task and written over
        // at its end otherwise.
        let clock_rates = [AtomicU32::new(a.clock_rate), AtomicU32::new(b.clock_rate)];
        let task = handle.spawn(Box::pin(driver.run(cmd_rx, [pair_a, pair_b])));
        Ok(Bridge {
            clock_rates,
            audio: Mutex::new([(a.pt, a.codec), (b.pt, b.codec)]),
            recording: None,
            listening: None,
            local,
            epoch,
            shared,
            cmd_tx,
            task,
            dtmf_rx: Some(dtmf_rx),
        })
    }

    /// The RTP address `side`'s far end sends to (RTCP is on the next port).
    pub fn local_addr(&self, side: Side) -> SocketAddr {
        self.local[idx(side)]
    }

    /// A re-INVITE moved `side`'s media to `addr` (see [`Relay::update_remote`]).
    /// Ignored if the bridge has stopped.
    pub fn update_remote(&self, side: Side, addr: SocketAddr) {
        // Fails only when the task has ended, and then there is nothing to update.
        let _ = self.cmd_tx.send(Command::UpdateRemote(side, addr));
    }

    /// `side` was (re)negotiated: the callee's 183/200 answer filled in the placeholder
    /// `open` was given, or a re-INVITE changed its codec, payload types or address.
    /// `params.remote: None` keeps the current address. The streams each side receives
    /// keep their SSRC and continue their sequence numbers and timestamps (a codec
    /// change sets the marker bit); transcoders are rebuilt as the codecs require.
    /// Applied before any packet that arrives after the call; ignored if the bridge
    /// has stopped.
    pub fn set_side(&self, side: Side, params: SideParams) {
        self.clock_rates[idx(side)].store(params.clock_rate, Ordering::Relaxed);
        if let Some(slot) = self
            .audio
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(idx(side))
        {
            *slot = (params.pt, params.codec);
        }
        // Fails only when the task has ended, and then there is nothing to update.
        let _ = self.cmd_tx.send(Command::SetSide(side, params));
    }

    /// Our negotiated direction towards `side` (SDP, from our side; see
    /// [`Relay::set_direction`]): while it does not send (`side` holds the call with
    /// sendonly or inactive), no RTP goes to `side`, and a call the kernel forwards is
    /// taken back (a kernel entry carries both directions). RTCP reports go on.
    /// Applied before any packet that arrives after the call; ignored if the bridge
    /// has stopped.
    pub fn set_direction(&self, side: Side, direction: Direction) {
        // Fails only when the task has ended, and then there is nothing to update.
        let _ = self.cmd_tx.send(Command::SetDirection(side, direction));
    }

    /// Where `side`'s SIP signalling comes from: besides its SDP address the only
    /// address that may latch (RTP hijack; see [`crate::relay::source_allowed`]).
    pub fn set_signalling_ip(&self, side: Side, ip: Option<std::net::IpAddr>) {
        let _ = self.cmd_tx.send(Command::SetSignallingIp(side, ip));
    }

    /// Sets the base RTCP report interval of both sides (default
    /// [`rtcp::REPORT_INTERVAL`], 5 s; each report is sent after the base randomised
    /// 0.5-1.5x); zero stops sending reports. Received RTCP is still read.
    pub fn set_rtcp_interval(&self, interval: Duration) {
        let _ = self.cmd_tx.send(Command::RtcpInterval(interval));
    }

    /// `side`'s RTP clock rate as last set (by `open` or [`set_side`](Self::set_side)):
    /// the unit of the durations of the digits that side sends.
    pub fn clock_rate(&self, side: Side) -> u32 {
        self.clock_rates[idx(side)].load(Ordering::Relaxed)
    }

    /// Current counters of packets received on `side`; cheap (atomic loads).
    pub fn counters(&self, side: Side) -> BridgeCounters {
        self.shared[idx(side)].snapshot()
    }

    /// Receive statistics of `side` (what its far end sent us); cheap (atomic loads).
    pub fn stats(&self, side: Side) -> SideStats {
        self.shared[idx(side)].stats(self.epoch)
    }

    /// The RFC 4733 digits either side's far end sends, each reported once, tagged with
    /// the side that sent it. The events are relayed to the other side as well. `None`
    /// after the first call. Digits are dropped while 32 wait unread.
    pub fn take_dtmf_events(&mut self) -> Option<mpsc::Receiver<(Side, DtmfEvent)>> {
        self.dtmf_rx.take()
    }

    /// Records both parties from now on into a new 2-channel 16-bit WAV at `path`: left
    /// side A (the caller), right side B (the callee), each decoded with its own codec
    /// through a jitter buffer with loss concealment, at the higher of the two sides'
    /// current PCM rates (8 kHz for G.711 both ways, 16 kHz with G.722, 48 kHz with
    /// Opus; see [`super::recording::bridge_recording_rate`]). Only each side's audio
    /// payload type is recorded (not telephone-events or comfort noise), and only what
    /// the relay accepted from that side's far end (also while the other side holds or
    /// has no address yet). A side that changes codec ([`set_side`](Self::set_side))
    /// gets a new decoder, resampled to the file's rate. The call is not forwarded in
    /// the kernel while recording (it is taken back if it was). The file is finalised
    /// when the bridge closes; [`close_with_recording`](Self::close_with_recording)
    /// reports it. Must run inside a tokio runtime.
    pub fn start_recording(&mut self, path: &Path) -> Result<(), RecordingError> {
        if self.recording.is_some() {
            return Err(RecordingError::AlreadyRecording);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RecordingError::Stopped)?;
        let sides = *self.audio.lock().unwrap_or_else(PoisonError::into_inner);
        let (taps, task) = super::recording::prepare_bridge(path, sides)?;
        if self.cmd_tx.send(Command::Record(taps)).is_err() {
            // The task has ended: nothing will be recorded, so no empty file stays behind.
            drop(task);
            if let Err(e) = std::fs::remove_file(path) {
                tracing::debug!(error = %e, "cannot remove an unused recording file");
            }
            return Err(RecordingError::Stopped);
        }
        self.recording = Some(RecordingHandle {
            path: path.to_path_buf(),
            task: runtime.spawn(task.run()),
        });
        Ok(())
    }

    /// Starts handing both parties' audio to `sink`: channel 0 side A (the caller),
    /// channel 1 side B (the callee), each decoded with its own codec through a jitter
    /// buffer with loss concealment and resampled to `out_rate`, one 20 ms frame
    /// (`out_rate / 50` samples) per channel per 20 ms, time-aligned (a side with
    /// nothing to play yet gives silence). The same packets as a recording's are
    /// offered (what the relay accepted from each side's far end, on its audio payload
    /// type), through taps of their own: listening and recording are independent. The
    /// call is not forwarded in the kernel while listening (it is taken back if it
    /// was). A side that changes codec ([`set_side`](Self::set_side)) gets a new
    /// decoder. Runs on a tokio task until [`stop_listening`](Self::stop_listening),
    /// the bridge closes, or the sink returns false. Errors: `AlreadyListening` if a
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
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RecordingError::Stopped)?;
        let sides = *self.audio.lock().unwrap_or_else(PoisonError::into_inner);
        let (taps, task) = super::listen::prepare_bridge(sides, out_rate, sink)?;
        self.cmd_tx
            .send(Command::Listen(taps))
            .map_err(|_| RecordingError::Stopped)?;
        self.listening = Some(runtime.spawn(task.run()));
        Ok(())
    }

    /// Stops the listener (if any): the task drops the listen taps, and the listen task
    /// ends (dropping the sink) at its next tick. The call may go to the kernel again.
    pub fn stop_listening(&mut self) {
        if self.listening.take().is_some() {
            let _ = self.cmd_tx.send(Command::StopListen);
        }
    }

    /// Whether a listener runs (its sink has not asked to stop).
    pub fn is_listening(&self) -> bool {
        self.listening.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Whether [`start_recording`](Self::start_recording) succeeded on this bridge.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Stops the task, waits until the sockets are closed and the ports are back in the
    /// pool, and returns the final counters of side A and side B.
    pub async fn close(self) -> [BridgeCounters; 2] {
        self.close_with_stats().await.0
    }

    /// As [`close`](Self::close), and also returns the final receive statistics of side
    /// A and side B (for the call record). A recording is finalised (and any error
    /// logged); use [`close_with_recording`](Self::close_with_recording) to see it.
    pub async fn close_with_stats(self) -> ([BridgeCounters; 2], [SideStats; 2]) {
        let (counters, stats, recording) = self.close_with_recording().await;
        if let Some(Err(e)) = recording {
            tracing::warn!(error = %e, "bridge recording failed");
        }
        (counters, stats)
    }

    /// As [`close_with_stats`](Self::close_with_stats), and also waits for the recording
    /// (if one was started) to be finalised (WAV header written), returning what it
    /// wrote.
    pub async fn close_with_recording(
        self,
    ) -> (
        [BridgeCounters; 2],
        [SideStats; 2],
        Option<Result<RecordingOutcome, RecordingError>>,
    ) {
        let Bridge {
            epoch,
            shared,
            cmd_tx,
            task,
            recording,
            ..
        } = self;
        drop(cmd_tx);
        // The task drops the taps as it ends, which ends the recording.
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "bridge task failed");
        }
        let recording = match recording {
            Some(r) => Some(r.finish().await),
            None => None,
        };
        (
            [shared[0].snapshot(), shared[1].snapshot()],
            [shared[0].stats(epoch), shared[1].stats(epoch)],
            recording,
        )
    }
}

/// The task's state; buffers live on the task's stack.
struct Driver {
    relay: Relay,
    rtp: [UdpSocket; 2],
    /// quinn-udp's state for `recvmmsg` on `rtp`.
    udp_state: &'static UdpSocketState,
    rtcp: [UdpSocket; 2],
    shared: Arc<[SideAtomics; 2]>,
    /// Per direction, indexed by the receiving side; built at the first packet that
    /// needs it and rebuilt only if the codecs or the packet duration change.
    transcoders: [Option<Transcoder>; 2],
    /// Payloads the unbuffered path's transcoders rejected, per receiving side.
    tc_errors: [u64; 2],
    epoch: Instant,
    dtmf_tx: mpsc::Sender<(Side, DtmfEvent)>,
    rng: StdRng,
    /// Base report interval; zero: no reports.
    rtcp_interval: Duration,
    /// When each side's next report is due.
    next_report: [tokio::time::Instant; 2],
    reporters: [LegReporter; 2],
    /// Where a side's far end sends RTCP from (its reports go back there).
    rtcp_dest: [Option<SocketAddr>; 2],
    /// What we sent each side, for its SR.
    sent: [SentCount; 2],
    cname: Vec<u8>,
    /// Our RTP addresses, side A and B.
    local: [SocketAddr; 2],
    kernel: Option<Arc<KernelForwarder>>,
    /// The flow the kernel forwards now.
    offload: Option<Offload>,
    /// The kernel refused this bridge's flow once; it stays in userspace.
    kernel_refused: bool,
    /// A side opened without an address (the callee before its answer) holds what it
    /// receives until `set_side` says what it negotiated: the far end starts sending on
    /// our ACK, which can beat the answer to this task by a packet or two.
    early: [Option<Vec<EarlyPacket>>; 2],
    /// A recording's taps, side A and B (both or neither).
    taps: [Option<Tap>; 2],
    /// A listener's taps, side A and B.
    listen: [Option<Tap>; 2],
}

/// A packet held by a side without parameters: when and from where it came, its bytes.
type EarlyPacket = (Instant, SocketAddr, Vec<u8>);

/// Packets a side without parameters holds at most (0.2 s of 20 ms packets).
const EARLY_HOLD: usize = 10;

/// A bridge the kernel forwards: its flow, the counters already folded into ours, and
/// when they are read next.
struct Offload {
    flow: Flow,
    seen: FlowCounters,
    next_poll: tokio::time::Instant,
}

/// Packets and payload octets sent to one side (RFC 3550 SR counts wrap at 2^32).
#[derive(Debug, Clone, Copy, Default)]
struct SentCount {
    packets: u32,
    octets: u32,
}

/// What woke the task.
enum Wake {
    Command(Option<Command>),
    Rtp(Side),
    Rtcp(Side, usize, SocketAddr),
    RtcpError,
    Timer,
    /// The runtime's I/O driver is gone.
    Shutdown,
}

const SIDES: [Side; 2] = [Side::A, Side::B];

/// The first RTP socket that is readable, side `first` polled first.
fn poll_rtp(rtp: &[UdpSocket; 2], first: usize, cx: &mut Context<'_>) -> Option<Wake> {
    for k in [first, first ^ 1] {
        match rtp.get(k)?.poll_recv_ready(cx) {
            Poll::Ready(Ok(())) => return Some(Wake::Rtp(SIDES[k % 2])),
            Poll::Ready(Err(_)) => return Some(Wake::Shutdown),
            Poll::Pending => {}
        }
    }
    None
}

/// One datagram from the first RTCP socket that has one.
fn poll_rtcp(
    rtcp: &[UdpSocket; 2],
    cbufs: &mut [[u8; RTCP_BUF]; 2],
    cx: &mut Context<'_>,
) -> Option<Wake> {
    for (k, (sock, cbuf)) in rtcp.iter().zip(cbufs.iter_mut()).enumerate() {
        let mut rb = ReadBuf::new(cbuf);
        if let Poll::Ready(r) = sock.poll_recv_from(cx, &mut rb) {
            return Some(match r {
                Ok(src) => Wake::Rtcp(SIDES[k % 2], rb.filled().len(), src),
                Err(e) => {
                    tracing::trace!(error = %e, "RTCP recv error");
                    Wake::RtcpError
                }
            });
        }
    }
    None
}

/// `recvmmsg` buffers and their metadata, and the transcoder's output buffer.
struct WorkBufs {
    data: [[u8; RECV_BUF]; RECV_BATCH],
    meta: [RecvMeta; RECV_BATCH],
    sbuf: [u8; SEND_BUF],
}

thread_local! {
    /// One set per runtime worker thread rather than ~20 KiB in every call's task.
    static WORK_BUFS: RefCell<Box<WorkBufs>> = RefCell::new(Box::new(WorkBufs {
        data: [[0; RECV_BUF]; RECV_BATCH],
        meta: [RecvMeta::default(); RECV_BATCH],
        sbuf: [0; SEND_BUF],
    }));
}

/// The quinn-udp state for `recvmmsg`. Its constructor also turns on GRO, PKTINFO and
/// TOS reception on the socket it is given; relay sockets want none of that (a GRO'd
/// burst could exceed our buffers, and cmsgs cost per packet), and `recv` keeps no
/// per-socket state. So one state, built on a throwaway unbound socket, serves all.
pub(super) fn recv_state() -> io::Result<&'static UdpSocketState> {
    static STATE: OnceLock<UdpSocketState> = OnceLock::new();
    if let Some(state) = STATE.get() {
        return Ok(state);
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
    Ok(STATE.get_or_init(|| state))
}

impl Driver {
    async fn run(mut self, mut cmd_rx: mpsc::UnboundedReceiver<Command>, ports: [PortPair; 2]) {
        let mut cbufs = [[0u8; RTCP_BUF]; 2];
        let start = tokio::time::Instant::now();
        for side in [Side::A, Side::B] {
            self.schedule_report(side, start);
        }
        // One timer for the task, reset to the earlier of the two sides' deadlines.
        let sleep = tokio::time::sleep_until(self.next_deadline());
        tokio::pin!(sleep);
        let mut first = 0;
        let mut rtcp_last = false;
        loop {
            // Hand-rolled instead of `select!`: the poll_* methods keep one waker slot
            // per socket instead of building, registering and dropping a readiness
            // future per source on every wakeup.
            let wake = std::future::poll_fn(|cx| {
                // Commands first: an update sent before a packet is applied before it.
                if let Poll::Ready(cmd) = cmd_rx.poll_recv(cx) {
                    return Poll::Ready(Wake::Command(cmd));
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
                // Neither kind of socket may starve the other under a flood: after an
                // RTCP datagram, RTP goes first; the RTP sides take turns going first.
                first ^= 1;
                let wake = if rtcp_last {
                    poll_rtp(&self.rtp, first, cx).or_else(|| poll_rtcp(&self.rtcp, &mut cbufs, cx))
                } else {
                    poll_rtcp(&self.rtcp, &mut cbufs, cx).or_else(|| poll_rtp(&self.rtp, first, cx))
                };
                if let Some(wake) = wake {
                    return Poll::Ready(wake);
                }
                Poll::Pending
            })
            .await;
            rtcp_last = matches!(wake, Wake::Rtcp(..) | Wake::RtcpError);
            match wake {
                Wake::Command(Some(cmd)) => self.command(cmd, sleep.as_mut()),
                Wake::Command(None) | Wake::Shutdown => break,
                // The buffers are the worker thread's: `drain` never awaits, so no other
                // bridge on this thread can be inside it meanwhile.
                Wake::Rtp(side) => {
                    WORK_BUFS.with_borrow_mut(|b| self.drain(side, b));
                    if self.offload.is_none() {
                        self.try_offload();
                    }
                }
                Wake::Rtcp(side, n, src) => {
                    let data = cbufs[idx(side)].get(..n).unwrap_or_default();
                    self.on_rtcp(side, data, src);
                }
                Wake::RtcpError => {}
                Wake::Timer => {
                    WORK_BUFS.with_borrow_mut(|b| self.play_out(&mut b.sbuf));
                    let now = tokio::time::Instant::now();
                    if self.offload.as_ref().is_some_and(|o| o.next_poll <= now) {
                        self.poll_offload(now);
                    }
                    for side in SIDES {
                        if self.next_report[idx(side)] <= now {
                            self.send_report(side, &mut cbufs[0]);
                            self.schedule_report(side, now);
                        }
                    }
                    sleep.as_mut().reset(self.next_deadline());
                }
            }
            // A packet may have started a playout, or brought its next frame forward.
            let deadline = self.next_deadline();
            if deadline != sleep.deadline() {
                sleep.as_mut().reset(deadline);
            }
        }
        self.end_offload();
        // The sockets go back with their ports (kept for the next call, or closed first).
        let Driver { rtp, rtcp, .. } = self;
        let [rtp_a, rtp_b] = rtp;
        let [rtcp_a, rtcp_b] = rtcp;
        let [port_a, port_b] = ports;
        port_a.recycle(rtp_a, rtcp_a);
        port_b.recycle(rtp_b, rtcp_b);
    }

    fn command(&mut self, cmd: Command, sleep: Pin<&mut tokio::time::Sleep>) {
        if matches!(cmd, Command::UpdateRemote(..) | Command::SetSide(..)) {
            // The relay decides anew with the new parameters, from the next packet.
            self.end_offload();
        }
        match cmd {
            Command::UpdateRemote(side, addr) => {
                if self.relay.params(side).remote != Some(addr) {
                    self.rtcp_dest[idx(side)] = None;
                }
                self.relay.update_remote(side, addr);
            }
            Command::SetSide(side, params) => {
                if params
                    .remote
                    .is_some_and(|r| Some(r) != self.relay.params(side).remote)
                {
                    self.rtcp_dest[idx(side)] = None;
                }
                self.relay.update_side(side, params);
                let i = idx(side);
                for tap in [&mut self.taps[i], &mut self.listen[i]]
                    .into_iter()
                    .flatten()
                {
                    tap.retarget(params.pt, params.codec);
                }
                // A digit still in progress on the old DTMF payload type.
                self.forward_dtmf(side);
                self.replay_early(side);
            }
            Command::SetSignallingIp(side, ip) => self.relay.set_signalling_ip(side, ip),
            Command::SetDirection(side, direction) => {
                if !direction.sends() {
                    // The kernel entry would forward to the held side: take it back.
                    self.end_offload();
                }
                self.relay.set_direction(side, direction);
            }
            Command::Record(taps) => {
                // The taps see only what reaches userspace.
                self.end_offload();
                self.taps = taps.map(Some);
                for (side, tap) in SIDES.into_iter().zip(&mut self.taps) {
                    let p = self.relay.params(side);
                    if let Some(tap) = tap {
                        tap.retarget(p.pt, p.codec);
                    }
                }
            }
            Command::Listen(taps) => {
                // The taps see only what reaches userspace.
                self.end_offload();
                self.listen = taps.map(Some);
                for (side, tap) in SIDES.into_iter().zip(&mut self.listen) {
                    let p = self.relay.params(side);
                    if let Some(tap) = tap {
                        tap.retarget(p.pt, p.codec);
                    }
                }
            }
            Command::StopListen => self.listen = [None, None],
            Command::RtcpInterval(interval) => {
                self.rtcp_interval = interval;
                let now = tokio::time::Instant::now();
                for side in SIDES {
                    self.schedule_report(side, now);
                }
                sleep.reset(self.next_deadline());
            }
        }
    }

    fn schedule_report(&mut self, side: Side, now: tokio::time::Instant) {
        let wait = if self.rtcp_interval.is_zero() {
            FAR_FUTURE
        } else {
            rtcp::randomized_interval(self.rtcp_interval, &mut self.rng)
        };
        self.next_report[idx(side)] = now + wait;
    }

    /// The earliest of the two report timers and the relay's next playout frame.
    fn next_deadline(&self) -> tokio::time::Instant {
        let mut reports = self.next_report[0].min(self.next_report[1]);
        if let Some(o) = &self.offload {
            reports = reports.min(o.next_poll);
        }
        match self.relay.poll_timeout() {
            Some(t) => reports.min(tokio::time::Instant::from_std(t)),
            None => reports,
        }
    }

    /// Sends the transcoded directions' frames that are due.
    fn play_out(&mut self, sbuf: &mut [u8; SEND_BUF]) {
        let now = Instant::now();
        let mut played = [false; 2];
        while let Some(t) = self.relay.handle_timeout(now, sbuf) {
            let from = t.to.other();
            played[idx(from)] = true;
            if let Some(out) = sbuf.get(..t.len) {
                self.send_rtp(from, out, t.dst);
            }
        }
        for side in SIDES {
            if played[idx(side)] {
                let i = idx(side);
                self.shared[i].publish(self.relay.counters(side), self.tc_errors[i]);
            }
        }
    }

    /// Sends a packet received on `from` (relayed or transcoded) to the other side.
    fn send_rtp(&mut self, from: Side, out: &[u8], dst: SocketAddr) {
        let o = idx(from.other());
        let shared = &self.shared[idx(from)];
        match self.rtp[o].try_send_to(out, dst) {
            Ok(_) => {
                // Octets after the fixed header (CSRCs/extensions are rare here).
                let payload = u32::try_from(out.len().saturating_sub(HEADER_LEN)).unwrap_or(0);
                let sent = &mut self.sent[o];
                sent.packets = sent.packets.wrapping_add(1);
                sent.octets = sent.octets.wrapping_add(payload);
                shared.sent_packets.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::trace!(error = %e, %dst, "RTP send failed");
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Where `side`'s reports go: its RTCP source, else its RTP destination's port + 1.
    fn rtcp_destination(&self, side: Side) -> Option<SocketAddr> {
        self.rtcp_dest[idx(side)].or_else(|| {
            let rtp = self.relay.destination(side)?;
            Some(SocketAddr::new(rtp.ip(), rtp.port().checked_add(1)?))
        })
    }

    /// Sends `side` its compound report: SR once we sent it media, else RR.
    fn send_report(&mut self, side: Side, buf: &mut [u8; RTCP_BUF]) {
        if self.offload.is_some() {
            // Our counts stand still while the kernel forwards: no report beats a wrong one.
            return;
        }
        let i = idx(side);
        let Some(dst) = self.rtcp_destination(side) else {
            return;
        };
        let now = Instant::now();
        let sent = self.sent[i];
        let info = self
            .relay
            .rtp_timestamp_at(side, now)
            .filter(|_| sent.packets > 0)
            .map(|ts| SenderInfo::new(SystemTime::now(), ts, sent.packets, sent.octets));
        let ssrc = self.relay.output_ssrc(side);
        let stats = self.relay.stats(side);
        match self.reporters[i].write_report(buf, ssrc, info.as_ref(), stats, &self.cname, now) {
            Ok(n) => {
                if let Err(e) = self.rtcp[i].try_send_to(buf.get(..n).unwrap_or_default(), dst) {
                    tracing::trace!(error = %e, %dst, "RTCP send failed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot build RTCP report"),
        }
    }

    /// A datagram on `side`'s RTCP port. Only from the address media for `side` goes
    /// to (or anywhere while that is unknown): RTCP bleed must not redirect reports.
    fn on_rtcp(&mut self, side: Side, data: &[u8], src: SocketAddr) {
        let i = idx(side);
        if self
            .relay
            .destination(side)
            .is_some_and(|d| d.ip() != src.ip())
        {
            tracing::trace!(%src, "RTCP from an unexpected address dropped");
            return;
        }
        let ssrc = self.relay.output_ssrc(side);
        let arrival = rtcp::ntp_timestamp(SystemTime::now());
        if self.reporters[i].on_compound(data, ssrc, Instant::now(), arrival) {
            self.rtcp_dest[i] = Some(src);
            if let Some(rtt) = self.reporters[i].rtt() {
                let nanos = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX - 1);
                self.shared[i]
                    .rtt
                    .store(nanos.saturating_add(1), Ordering::Relaxed);
            }
        }
    }

    /// Hands the call to the kernel if it can forward it now (see [`Bridge::open`]).
    fn try_offload(&mut self) {
        let recording = self.taps.iter().chain(&self.listen).any(Option::is_some);
        if !may_offload(
            self.kernel.is_some(),
            self.offload.is_some(),
            self.kernel_refused,
            recording,
        ) || self.relay.passthrough_sources().is_none()
        {
            return;
        }
        // Relay what is queued now: a packet relayed after the hand-over costs a cleanup.
        WORK_BUFS.with_borrow_mut(|b| {
            self.drain(Side::A, b);
            self.drain(Side::B, b);
        });
        let Some((pa, pb)) = self.relay.passthrough_sources() else {
            return;
        };
        let (Some(kernel), Some(flow)) = (
            &self.kernel,
            Flow::new(pa, self.local[0], self.local[1], pb),
        ) else {
            self.kernel_refused = true;
            return;
        };
        match kernel.install(&flow) {
            Ok(()) => {
                tracing::debug!(?flow, "RTP forwarded in the kernel");
                self.offload = Some(Offload {
                    flow,
                    seen: FlowCounters::default(),
                    next_poll: tokio::time::Instant::now() + KERNEL_POLL,
                });
            }
            Err(e) => {
                self.kernel_refused = true;
                if once_per_second(&KERNEL_REFUSED_LOGGED) {
                    tracing::warn!(error = %e, "the kernel refused to forward a call's RTP; relaying it here");
                }
            }
        }
    }

    /// Reads the kernel's counters into ours; an expired entry ends the offload (its
    /// packets reach our sockets again).
    fn poll_offload(&mut self, now: tokio::time::Instant) {
        let (Some(kernel), Some(o)) = (&self.kernel, &mut self.offload) else {
            return;
        };
        o.next_poll = now + KERNEL_POLL;
        match kernel.counters(&o.flow) {
            Ok(Some(c)) => fold_counters(&self.shared, self.epoch, &mut o.seen, c),
            Ok(None) => {
                kernel.note_expired();
                self.offload = None;
            }
            Err(e) => tracing::debug!(error = %e, "cannot read the kernel's RTP counters"),
        }
    }

    /// Takes the call back from the kernel, with its last counts.
    fn end_offload(&mut self) {
        let (Some(kernel), Some(mut o)) = (&self.kernel, self.offload.take()) else {
            return;
        };
        match kernel.counters(&o.flow) {
            Ok(Some(c)) => fold_counters(&self.shared, self.epoch, &mut o.seen, c),
            Ok(None) => {
                // Expired already: nothing to take back.
                kernel.note_expired();
                return;
            }
            Err(_) => {}
        }
        if let Err(e) = kernel.remove(&o.flow) {
            tracing::warn!(error = %e, flow = ?o.flow, "cannot take RTP forwarding back from the kernel");
        }
    }

    /// Hands the digits the relay decoded from `side` to the owner.
    fn forward_dtmf(&mut self, side: Side) {
        while let Some(event) = self.relay.take_dtmf(side) {
            if self.dtmf_tx.try_send((side, event)).is_err() {
                tracing::debug!(digit = %event.digit, "DTMF event dropped: nobody is reading");
            }
        }
    }

    /// Relays the datagrams waiting on `side`'s socket, up to [`BATCH`] per wakeup.
    ///
    /// `recvmmsg` (quinn-udp) takes up to [`RECV_BATCH`] per call. A short batch means
    /// the socket was empty at that moment, so readiness is cleared right there instead
    /// of by one more `recvfrom` failing with `EAGAIN`: one syscall less per packet when
    /// packets arrive one at a time (the normal case at 50 packets/s per socket).
    fn drain(&mut self, side: Side, bufs: &mut WorkBufs) {
        let i = idx(side);
        // One clock read per wakeup: the batch arrived within microseconds.
        let now = Instant::now();
        let mut handled = 0;
        while handled < BATCH {
            let mut got = 0;
            let res = {
                let (sock, state) = (&self.rtp[i], self.udp_state);
                let WorkBufs { data, meta, .. } = &mut *bufs;
                sock.try_io(Interest::READABLE, || {
                    let mut iovs = data.each_mut().map(|b| IoSliceMut::new(b));
                    got = state.recv(UdpSockRef::from(sock), &mut iovs, meta)?;
                    if got < RECV_BATCH {
                        // Tokio clears readiness on WouldBlock (only if no new event
                        // arrived meanwhile); what `got` holds is still handled below.
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(())
                    }
                })
            };
            let WorkBufs { data, meta, sbuf } = &mut *bufs;
            for k in 0..got {
                let (Some(m), Some(data)) = (meta.get(k), data.get_mut(k)) else {
                    break;
                };
                let (src, len, stride) = (m.addr, m.len, m.stride);
                let Some(buf) = data.get_mut(..len) else {
                    continue;
                };
                // GRO is off on our sockets (see `recv_state`), so `stride` is `len`; were it
                // on, one buffer would hold several datagrams of `stride` bytes.
                for pkt in buf.chunks_mut(stride.max(1)) {
                    self.relay_one(now, side, src, pkt, sbuf);
                }
            }
            handled += got.max(1);
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => tracing::trace!(error = %e, "RTP recv error"),
            }
        }
    }

    /// Relays the packets `side` held before its parameters were known, in order.
    fn replay_early(&mut self, side: Side) {
        let Some(held) = self.early[idx(side)].take() else {
            return;
        };
        let mut sbuf = [0u8; SEND_BUF];
        for (at, src, mut pkt) in held {
            self.relay_one(at, side, src, &mut pkt, &mut sbuf);
        }
    }

    /// Relays one datagram received on `side` from `src`.
    fn relay_one(
        &mut self,
        now: Instant,
        side: Side,
        src: SocketAddr,
        pkt: &mut [u8],
        sbuf: &mut [u8; SEND_BUF],
    ) {
        if let Some(held) = &mut self.early[idx(side)] {
            if held.len() < EARLY_HOLD {
                held.push((now, src, pkt.to_vec()));
                return;
            }
            // Parameters never came in time: stop holding and relay as configured.
            self.replay_early(side);
        }
        let i = idx(side);
        let len = pkt.len();
        // Read before the relay rewrites the header for the other side.
        let tapped = self.taps[i].as_ref().and_then(|t| t.wants(pkt));
        let listened = self.listen[i].as_ref().and_then(|t| t.wants(pkt));
        let verdict = self.relay.handle_packet(now, side, src, pkt, len);
        if recorded(&verdict) {
            if let Some(header) = tapped
                && let Some(tap) = &self.taps[i]
                && tap.offer_header(&header, pkt, now) == TapState::Closed
            {
                // The recording task is gone (it failed): stop offering.
                self.taps[i] = None;
            }
            if let Some(header) = listened
                && let Some(tap) = &self.listen[i]
                && tap.offer_header(&header, pkt, now) == TapState::Closed
            {
                // The listener stopped (its sink said so): stop offering.
                self.listen[i] = None;
            }
        }
        self.forward_dtmf(side);
        let shared = &self.shared[i];
        // Published before sending, so a far end that sees the packet sees the count.
        shared.publish(self.relay.counters(side), self.tc_errors[i]);
        shared.publish_stats(&self.relay, side, self.epoch);
        let (out, dst) = match verdict {
            Verdict::Forward { dst, len } => (pkt.get(..len), dst),
            Verdict::Transcode {
                dst,
                from,
                to,
                header,
                payload,
            } => {
                let input = pkt.get(payload).unwrap_or_default();
                let slot = &mut self.transcoders[i];
                match transcode(slot, from, to, header, input, sbuf) {
                    Some(n) => (sbuf.get(..n), dst),
                    None => {
                        self.tc_errors[i] += 1;
                        shared.transcode_errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
            Verdict::Drop(crate::relay::DropReason::WrongSource) => {
                super::FOREIGN_RTP_DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Verdict::Buffered | Verdict::Drop(_) => return,
        };
        let Some(out) = out else { return };
        self.send_rtp(side, out, dst);
    }
}

/// Whether the kernel may take a call over (if relaying it has become the identity):
/// there is a forwarder, it does not forward the call already, it has not refused it,
/// and no recording needs to see the packets.
fn may_offload(kernel: bool, offloaded: bool, refused: bool, recording: bool) -> bool {
    kernel && !offloaded && !refused && !recording
}

/// Whether a packet the relay decided on goes to a recording: what the side's far end
/// said, from its accepted source on its audio payload type, whether or not the other
/// side can hear it now (holding, no address yet).
fn recorded(verdict: &Verdict) -> bool {
    matches!(
        verdict,
        Verdict::Forward { .. }
            | Verdict::Transcode { .. }
            | Verdict::Buffered
            | Verdict::Drop(DropReason::Held | DropReason::NoDestination)
    )
}

static KERNEL_REFUSED_LOGGED: AtomicU64 = AtomicU64::new(0);

/// True at most once per second per `last` (seconds since the Unix epoch).
fn once_per_second(last: &AtomicU64) -> bool {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    last.swap(now, Ordering::Relaxed) != now
}

/// Adds what the kernel relayed since `seen` to each side's counters.
fn fold_counters(
    shared: &[SideAtomics; 2],
    epoch: Instant,
    seen: &mut FlowCounters,
    c: FlowCounters,
) {
    let now = encode_instant(epoch, Some(Instant::now()));
    let deltas = [
        (
            c.a_packets.saturating_sub(seen.a_packets),
            c.a_bytes.saturating_sub(seen.a_bytes),
        ),
        (
            c.b_packets.saturating_sub(seen.b_packets),
            c.b_bytes.saturating_sub(seen.b_bytes),
        ),
    ];
    for (side, (packets, bytes)) in shared.iter().zip(deltas) {
        if packets > 0 {
            side.kernel_packets.fetch_add(packets, Ordering::Relaxed);
            side.kernel_bytes.fetch_add(bytes, Ordering::Relaxed);
            side.last_rx.store(now, Ordering::Relaxed);
        }
    }
    *seen = c;
}

/// Writes `header` and the transcoded `input` into `sbuf`; returns the packet length.
fn transcode(
    slot: &mut Option<Transcoder>,
    from: AudioCodec,
    to: AudioCodec,
    header: crate::rtp::RtpHeader,
    input: &[u8],
    sbuf: &mut [u8; SEND_BUF],
) -> Option<usize> {
    let ptime = crate::codec::payload_ptime_ms(from, input);
    let fits = slot
        .as_ref()
        .is_some_and(|t| t.from_codec() == from && t.to_codec() == to && t.ptime_ms() == ptime);
    if !fits {
        // Allocates, but only on the first packet or a codec/ptime change.
        *slot = match Transcoder::new(from, to, ptime) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::debug!(error = %e, ?from, ?to, ptime, "cannot transcode");
                None
            }
        };
    }
    let tc = slot.as_mut()?;
    let h = header.write(sbuf).ok()?;
    let n = tc.process(input, sbuf.get_mut(h..)?).ok()?;
    Some(h + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_keeps_the_call_out_of_the_kernel() {
        assert!(may_offload(true, false, false, false));
        assert!(!may_offload(true, false, false, true), "recording");
        assert!(!may_offload(false, false, false, false), "no forwarder");
        assert!(!may_offload(true, true, false, false), "offloaded already");
        assert!(!may_offload(true, false, true, false), "refused");
    }

    #[test]
    fn only_accepted_packets_are_recorded() {
        let dst = SocketAddr::from(([127, 0, 0, 1], 9));
        assert!(recorded(&Verdict::Forward { dst, len: 172 }));
        assert!(recorded(&Verdict::Buffered));
        assert!(recorded(&Verdict::Drop(DropReason::Held)));
        assert!(!recorded(&Verdict::Drop(DropReason::WrongSource)));
        assert!(!recorded(&Verdict::Drop(DropReason::StaleSsrc)));
        assert!(!recorded(&Verdict::Drop(DropReason::UnexpectedPayloadType)));
    }
}
