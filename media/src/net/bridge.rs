//! Real-socket driver for one bridged call: two RTP sockets (one per leg) and the task
//! that runs the sans-IO [`Relay`] over them (symmetric RTP, RFC 4961; header rewriting,
//! RFC 3550 §8.2), transcoding when the legs' codecs differ.
//!
//! In: a [`PortPool`], the negotiated [`SideParams`] of both legs, later address
//! updates ([`Bridge::update_remote`]). Out: relayed datagrams and per-side
//! [`BridgeCounters`]. One tokio task owns the relay and the four sockets (RTP, plus
//! RTCP on the next port, which is drained but not interpreted). Per wakeup it drains
//! up to [`BATCH`] ready datagrams with `try_recv_from`; nothing allocates per packet.
#![allow(clippy::disallowed_methods)] // driver: supplies the relay's `now`

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::pool::{PortPair, PortPool};
use crate::codec::AudioCodec;
use crate::relay::{DropReason, Relay, RelayConfig, Side, SideCounters, SideParams, Verdict};
use crate::rtp::HEADER_LEN;
use crate::transcode::Transcoder;

/// Receive buffer: larger than any sane RTP packet on an Ethernet path.
const RECV_BUF: usize = 2048;
/// Transcoded packet buffer: header plus the largest payload of any codec (Opus).
const SEND_BUF: usize = HEADER_LEN + 4096;
/// Datagrams taken from one socket per wakeup before the other socket gets a turn.
pub const BATCH: usize = 64;

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
}

impl SideAtomics {
    /// Copies the relay's totals (it keeps them; the task only mirrors them).
    fn publish(&self, c: &SideCounters) {
        let set = |a: &AtomicU64, v| a.store(v, Ordering::Relaxed);
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
        BridgeCounters {
            received_packets: get(&self.received_packets),
            received_bytes: get(&self.received_bytes),
            forwarded_packets: get(&self.forwarded_packets),
            transcoded_packets: get(&self.transcoded_packets),
            latches: get(&self.latches),
            ssrc_changes: get(&self.ssrc_changes),
            sent_packets: get(&self.sent_packets),
            send_errors: get(&self.send_errors),
            transcode_errors: get(&self.transcode_errors),
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
}

/// A running media bridge between two legs. Dropping it (or [`close`](Self::close))
/// stops the task, which closes the sockets and then returns the ports to the pool.
#[derive(Debug)]
pub struct Bridge {
    local: [SocketAddr; 2],
    shared: Arc<[SideAtomics; 2]>,
    cmd_tx: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
}

impl Bridge {
    /// Binds one RTP/RTCP pair per side on `bind_ip` from `pool` and starts relaying
    /// between `a` and `b`. Must run inside a tokio runtime with I/O enabled (the task
    /// runs on that runtime); errors if the pool is exhausted or there is no runtime.
    pub fn open(
        pool: &PortPool,
        bind_ip: IpAddr,
        a: SideParams,
        b: SideParams,
        config: RelayConfig,
    ) -> io::Result<Bridge> {
        let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        let (pair_a, rtp_a, rtcp_a) = super::pool::bind_from_pool(pool, bind_ip)?;
        let (pair_b, rtp_b, rtcp_b) = super::pool::bind_from_pool(pool, bind_ip)?;
        let local = [rtp_a.local_addr()?, rtp_b.local_addr()?];
        let mut rng = StdRng::seed_from_u64(pool.seed());
        let shared = Arc::new([SideAtomics::default(), SideAtomics::default()]);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            relay: Relay::new(a, b, config, &mut rng),
            rtp: [rtp_a, rtp_b],
            rtcp: [rtcp_a, rtcp_b],
            shared: Arc::clone(&shared),
            transcoders: [None, None],
        };
        let task = handle.spawn(driver.run(cmd_rx, [pair_a, pair_b]));
        Ok(Bridge {
            local,
            shared,
            cmd_tx,
            task,
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

    /// Current counters of packets received on `side`; cheap (atomic loads).
    pub fn counters(&self, side: Side) -> BridgeCounters {
        self.shared[idx(side)].snapshot()
    }

    /// Stops the task, waits until the sockets are closed and the ports are back in the
    /// pool, and returns the final counters of side A and side B.
    pub async fn close(self) -> [BridgeCounters; 2] {
        let Bridge {
            shared,
            cmd_tx,
            task,
            ..
        } = self;
        drop(cmd_tx);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "bridge task failed");
        }
        [shared[0].snapshot(), shared[1].snapshot()]
    }
}

/// The task's state; buffers live on the task's stack.
struct Driver {
    relay: Relay,
    rtp: [UdpSocket; 2],
    rtcp: [UdpSocket; 2],
    shared: Arc<[SideAtomics; 2]>,
    /// Per direction, indexed by the receiving side; built at the first packet that
    /// needs it and rebuilt only if the codecs or the packet duration change.
    transcoders: [Option<Transcoder>; 2],
}

/// Packet duration implied by a payload's size, for building a transcoder.
fn ptime_ms(codec: AudioCodec, payload_len: usize) -> u32 {
    match codec {
        // Both 64 kbit/s: 8 octets per millisecond.
        AudioCodec::Pcmu | AudioCodec::Pcma | AudioCodec::G722 => {
            u32::try_from(payload_len / 8).unwrap_or(u32::MAX)
        }
        // Opus frames are self-describing; 20 ms is what SDP offers by default.
        AudioCodec::Opus { .. } => 20,
    }
}

impl Driver {
    async fn run(mut self, mut cmd_rx: mpsc::UnboundedReceiver<Command>, ports: [PortPair; 2]) {
        let mut rbuf = [0u8; RECV_BUF];
        let mut sbuf = [0u8; SEND_BUF];
        let mut cbuf_a = [0u8; 512];
        let mut cbuf_b = [0u8; 512];
        loop {
            tokio::select! {
                // Commands first: an update sent before a packet is applied before it.
                biased;
                cmd = cmd_rx.recv() => match cmd {
                    Some(Command::UpdateRemote(side, addr)) => self.relay.update_remote(side, addr),
                    None => break,
                },
                r = self.rtp[0].readable() => match r {
                    Ok(()) => self.drain(Side::A, &mut rbuf, &mut sbuf),
                    Err(e) => tracing::trace!(error = %e, "RTP readiness error"),
                },
                r = self.rtp[1].readable() => match r {
                    Ok(()) => self.drain(Side::B, &mut rbuf, &mut sbuf),
                    Err(e) => tracing::trace!(error = %e, "RTP readiness error"),
                },
                // RTCP is not relayed yet; drain it so the socket buffer stays empty.
                _ = self.rtcp[0].recv_from(&mut cbuf_a) => {}
                _ = self.rtcp[1].recv_from(&mut cbuf_b) => {}
            }
        }
        // Sockets close before the ports go back to the pool.
        drop(self);
        drop(ports);
    }

    /// Relays the datagrams waiting on `side`'s socket, up to [`BATCH`].
    fn drain(&mut self, side: Side, rbuf: &mut [u8; RECV_BUF], sbuf: &mut [u8; SEND_BUF]) {
        let (i, o) = (idx(side), idx(side.other()));
        // One clock read per wakeup: the batch arrived within microseconds.
        let now = Instant::now();
        for _ in 0..BATCH {
            let (len, src) = match self.rtp[i].try_recv_from(rbuf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::trace!(error = %e, "RTP recv error");
                    continue;
                }
            };
            let verdict = self.relay.handle_packet(now, side, src, rbuf, len);
            let shared = &self.shared[i];
            // Published before sending, so a far end that sees the packet sees the count.
            shared.publish(self.relay.counters(side));
            let (out, dst) = match verdict {
                Verdict::Forward { dst, len } => (rbuf.get(..len), dst),
                Verdict::Transcode {
                    dst,
                    from,
                    to,
                    header,
                    payload,
                } => {
                    let input = rbuf.get(payload).unwrap_or_default();
                    let slot = &mut self.transcoders[i];
                    match transcode(slot, from, to, header, input, sbuf) {
                        Some(n) => (sbuf.get(..n), dst),
                        None => {
                            shared.transcode_errors.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                Verdict::Drop(_) => continue,
            };
            let Some(out) = out else { continue };
            match self.rtp[o].try_send_to(out, dst) {
                Ok(_) => shared.sent_packets.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::trace!(error = %e, %dst, "RTP send failed");
                    shared.send_errors.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
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
    let ptime = ptime_ms(from, input.len());
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
