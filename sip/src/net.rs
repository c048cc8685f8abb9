//! The tokio driver (feature `net`): one task, on a thread of its own, owns the [`UserAgent`] and
//! `select!`s over the UDP socket, TCP frames, commands and the UA's next
//! deadline; after every input it drains transmits and events. One owner means
//! the messages of a call are handled in arrival order.
//!
//! TCP: each connection (accepted, or opened on demand to a `Target`) has a
//! reader task that frames the stream with [`StreamFramer`] (a framing error
//! closes the connection) and a writer task fed by the owner, on the same thread. Connections are
//! keyed by peer address, so responses go back on the connection the request
//! came in on.
//!
//! Rate limiting (optional, [`NetConfig::rate_limit`]): every UDP datagram and every
//! TCP frame passes its source IP through a [`RateLimiter`] before the UA sees it; over
//! the limit it is dropped unparsed and unanswered (an answer would spend the very
//! resources the limit protects, and reflect traffic at a forged source), and counted
//! in [`UaStats::rate_limited`].

// driver: the only place in the crate that reads the clock.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use crate::framing::StreamFramer;
use crate::ratelimit::{RateLimit, RateLimiter};
use crate::ua::{Datagram, Transmit, Transport, UaCommand, UaConfig, UaEvent, UaStats, UserAgent};

/// Largest SIP message accepted on a stream.
const MAX_TCP_MESSAGE: usize = 64 * 1024;
/// Events buffered for the consumer before the owner starts waiting (bounded).
const EVENT_QUEUE: usize = 65_536;
/// How long the owner waits for a full events channel before dropping an event.
const EVENT_SEND_PATIENCE: Duration = Duration::from_secs(1);
/// Datagrams received in one go before transmits are drained.
const RECV_BATCH: usize = 64;
/// First pause after a failed `accept`; doubles to `ACCEPT_BACKOFF_MAX`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Bounds on SIP over TCP, so connections cannot take every descriptor (21,000 idle
/// connections did, and then no TCP call could connect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpLimits {
    /// Connections open at once, accepted and our own (0: no cap).
    pub max_connections: usize,
    /// Accepted connections from one source IP (an IPv6 /64 as one; 0: no cap).
    pub max_per_source: usize,
    /// A connection must deliver a whole message this soon after it opens, and finish a
    /// message this soon after its first byte (slowloris).
    pub message_timeout: Duration,
    /// A connection that sends nothing for this long is closed (CRLF keep-alives count).
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: 8192,
            max_per_source: 256,
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(900),
        }
    }
}

/// A log line on the network path, let through at most once a second; the lines held
/// back meanwhile are counted and reported with the next (a flood must not turn into a
/// log flood: "Too many open files" once logged ten million times in 30 s).
#[derive(Debug, Default)]
pub struct LogGate {
    last: std::sync::atomic::AtomicU64,
    held: std::sync::atomic::AtomicU64,
}

impl LogGate {
    pub const fn new() -> Self {
        LogGate {
            last: std::sync::atomic::AtomicU64::new(0),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this line may be written.
    pub fn pass(&self) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last.swap(now, Ordering::Relaxed) == now {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            Some(self.held.swap(0, Ordering::Relaxed))
        }
    }
}

static ACCEPT_LOG: LogGate = LogGate::new();
static REFUSED_LOG: LogGate = LogGate::new();
static FRAMING_LOG: LogGate = LogGate::new();
static CONNECT_LOG: LogGate = LogGate::new();
static UDP_SEND_LOG: LogGate = LogGate::new();

#[derive(Clone, Debug)]
pub struct NetConfig {
    pub udp: SocketAddr,
    pub tcp: Option<SocketAddr>,
    /// A `public_addr` with port 0 (or an unspecified IP) is filled from the bound UDP socket.
    pub ua: UaConfig,
    /// SO_RCVBUF / SO_SNDBUF for the UDP socket.
    pub socket_buffer: usize,
    /// Per-source-IP limit on incoming messages; `None` = unlimited.
    pub rate_limit: Option<RateLimit>,
    pub tcp_limits: TcpLimits,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            udp: SocketAddr::from(([0, 0, 0, 0], 5060)),
            tcp: None,
            ua: UaConfig::default(),
            socket_buffer: 4 * 1024 * 1024,
            rate_limit: None,
            tcp_limits: TcpLimits::default(),
        }
    }
}

/// The addresses actually bound (port 0 resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundAddrs {
    pub udp: SocketAddr,
    pub tcp: Option<SocketAddr>,
}

/// The driver task has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SIP driver stopped")]
pub struct DriverGone;

// Mostly `Ua`: boxing it would only add an allocation per command.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Cmd {
    Ua(UaCommand),
    Stats(oneshot::Sender<UaStats>),
    SetRateLimit(Option<RateLimit>),
}

/// Cheap to clone; the driver stops when every handle is dropped.
#[derive(Clone, Debug)]
pub struct UaHandle {
    tx: mpsc::UnboundedSender<Cmd>,
}

impl UaHandle {
    pub fn send(&self, cmd: UaCommand) -> Result<(), DriverGone> {
        self.tx.send(Cmd::Ua(cmd)).map_err(|_| DriverGone)
    }

    pub async fn stats(&self) -> Result<UaStats, DriverGone> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Stats(tx)).map_err(|_| DriverGone)?;
        rx.await.map_err(|_| DriverGone)
    }

    /// Replaces the per-source limit (config reload); `None` lifts it. Buckets start
    /// afresh, so each source gets one new burst.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) -> Result<(), DriverGone> {
        self.tx
            .send(Cmd::SetRateLimit(limit))
            .map_err(|_| DriverGone)
    }
}

/// Input from connection tasks to the owner.
#[derive(Debug)]
enum ConnInput {
    Frame {
        peer: SocketAddr,
        local: SocketAddr,
        bytes: Vec<u8>,
    },
    Closed {
        peer: SocketAddr,
        id: u64,
        /// Closed for sending nothing whole in time.
        timed_out: bool,
    },
    ConnectFailed {
        peer: SocketAddr,
        id: u64,
    },
}

/// Binds the sockets and starts the owner task on a thread of its own (`sip-driver`, a
/// single-threaded runtime), which ends when every [`UaHandle`] is gone. Its own thread
/// because every SIP message passes through it: sharing a runtime's workers with the call
/// tasks, it either competed with them for one thread or, with several workers, was
/// handed between threads with a wake-up each time. Measured through the transit bench:
/// 5,000 calls/s clean with it apart, 4,000 on one shared worker, at the same CPU per call.
pub fn spawn(config: NetConfig) -> io::Result<(UaHandle, mpsc::Receiver<UaEvent>, BoundAddrs)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The sockets register with the runtime that will drive them.
    let guard = rt.enter();
    let (udp, tcp) = bind_sockets(&config)?;
    let udp_addr = udp.local_addr()?;
    let tcp_addr = match &tcp {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let mut ua_cfg = config.ua;
    if ua_cfg.public_addr.port() == 0 {
        ua_cfg.public_addr.set_port(udp_addr.port());
    }
    // Unspecified with `local_ips`: the UA advertises per destination.
    if ua_cfg.public_addr.ip().is_unspecified() && ua_cfg.local_ips.is_none() {
        let ip = if udp_addr.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            udp_addr.ip()
        };
        ua_cfg.public_addr.set_ip(ip);
    }
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()).rotate_left(32)
        ^ u64::from(udp_addr.port());
    let ua = UserAgent::new(ua_cfg, seed);
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (conn_tx, conn_rx) = mpsc::unbounded_channel();
    let driver = Driver {
        ua,
        udp,
        udp_addr,
        tcp,
        tcp_addr,
        conns: HashMap::new(),
        next_conn: 0,
        conn_tx,
        events: ev_tx,
        events_stalled: false,
        limiter: config.rate_limit.map(RateLimiter::new),
        rate_limited: 0,
        tcp_limits: config.tcp_limits.clone(),
        per_source: HashMap::new(),
        tcp_refused: 0,
        tcp_timed_out: 0,
        accept_errors: 0,
        accept_resume: None,
        accept_backoff: ACCEPT_BACKOFF_MIN,
    };
    drop(guard);
    std::thread::Builder::new()
        .name("sip-driver".into())
        .spawn(move || rt.block_on(driver.run(cmd_rx, conn_rx)))?;
    Ok((
        UaHandle { tx: cmd_tx },
        ev_rx,
        BoundAddrs {
            udp: udp_addr,
            tcp: tcp_addr,
        },
    ))
}

fn bind_udp(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel may clamp these (net.core.rmem_max); a smaller buffer still works.
    if let Err(e) = s.set_recv_buffer_size(buffer) {
        tracing::warn!(error = %e, "SO_RCVBUF not set");
    }
    if let Err(e) = s.set_send_buffer_size(buffer) {
        tracing::warn!(error = %e, "SO_SNDBUF not set");
    }
    // Linux reports twice what it granted; less than asked means bursts will be dropped.
    if let Ok(got) = s.recv_buffer_size()
        && got < buffer
    {
        tracing::warn!(
            requested = buffer,
            granted = got / 2,
            "SIP receive buffer clamped by the kernel (raise net.core.rmem_max)"
        );
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    UdpSocket::from_std(s.into())
}

/// UDP, and TCP when asked for. Contact and Via name one port, so TCP on port 0 takes the
/// UDP port; when something already holds that port for TCP and UDP was on port 0 too, a
/// fresh UDP port is drawn (a few times) rather than listening for TCP where no Contact
/// points.
fn bind_sockets(config: &NetConfig) -> io::Result<(UdpSocket, Option<TcpListener>)> {
    const SAME_PORT_TRIES: usize = 16;
    let mut tries = 0;
    loop {
        tries += 1;
        let udp = bind_udp(config.udp, config.socket_buffer)?;
        let Some(tcp_addr) = config.tcp else {
            return Ok((udp, None));
        };
        if tcp_addr.port() != 0 {
            return Ok((udp, Some(bind_tcp(tcp_addr)?)));
        }
        let port = udp.local_addr()?.port();
        match bind_tcp(SocketAddr::new(tcp_addr.ip(), port)) {
            Ok(l) => return Ok((udp, Some(l))),
            Err(_) if config.udp.port() == 0 && tries < SAME_PORT_TRIES => continue,
            Err(e) => {
                tracing::warn!(
                    udp_port = port,
                    error = %e,
                    "TCP cannot share the UDP port; it listens elsewhere, but Contact and Via name the UDP port"
                );
                return Ok((udp, Some(bind_tcp(tcp_addr)?)));
            }
        }
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

#[derive(Debug)]
struct Conn {
    id: u64,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Accepted (counted against its source), not opened by us.
    accepted: bool,
}

#[derive(Debug)]
struct Driver {
    ua: UserAgent,
    udp: UdpSocket,
    udp_addr: SocketAddr,
    tcp: Option<TcpListener>,
    tcp_addr: Option<SocketAddr>,
    conns: HashMap<SocketAddr, Conn>,
    next_conn: u64,
    conn_tx: mpsc::UnboundedSender<ConnInput>,
    events: mpsc::Sender<UaEvent>,
    /// The consumer let the events channel fill up and a bounded wait expired.
    events_stalled: bool,
    limiter: Option<RateLimiter>,
    /// Messages dropped by `limiter` (kept here: the UA never sees them).
    rate_limited: u64,
    tcp_limits: TcpLimits,
    /// Accepted connections per source (IPv4 address, IPv6 /64).
    per_source: HashMap<u128, usize>,
    tcp_refused: u64,
    tcp_timed_out: u64,
    accept_errors: u64,
    /// After a failed accept: no accept before this, and the next pause.
    accept_resume: Option<tokio::time::Instant>,
    accept_backoff: Duration,
}

/// An IPv4 address, or an IPv6 /64: one source for the per-source cap.
fn source_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (v6.to_bits() >> 64) << 64 | 1,
    }
}

/// Accepts the next connection, after waiting out a backoff from a failed accept.
async fn accept(
    l: &Option<TcpListener>,
    resume: Option<tokio::time::Instant>,
) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => {
            if let Some(at) = resume {
                tokio::time::sleep_until(at).await;
            }
            l.accept().await
        }
        None => std::future::pending().await,
    }
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        mut conn_rx: mpsc::UnboundedReceiver<ConnInput>,
    ) {
        let mut buf = vec![0u8; 65_535];
        // One timer for the driver's life, moved only when the UA's next deadline moves
        // (a fresh `sleep_until` per turn was a timer-wheel insert and removal each time).
        let sleep = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(sleep);
        loop {
            match self.ua.poll_timeout().map(tokio::time::Instant::from_std) {
                Some(at) if at != sleep.deadline() => sleep.as_mut().reset(at),
                Some(_) => {}
                None => {
                    // Nothing due: park far away (and leave it there while nothing is due).
                    let now = tokio::time::Instant::now();
                    if sleep.deadline() < now + Duration::from_secs(1800) {
                        sleep.as_mut().reset(now + Duration::from_secs(3600));
                    }
                }
            }
            tokio::select! {
                r = self.udp.recv_from(&mut buf) => {
                    match r {
                        Ok((n, src)) => {
                            self.on_udp(Instant::now(), src, buf.get(..n).unwrap_or_default());
                            // Take whatever else is already queued before sending.
                            for _ in 1..RECV_BATCH {
                                match self.udp.try_recv_from(&mut buf) {
                                    Ok((n, src)) => self.on_udp(Instant::now(), src, buf.get(..n).unwrap_or_default()),
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "udp recv error"),
                    }
                }
                Some(input) = conn_rx.recv() => self.on_conn_input(input),
                cmd = cmds.recv() => match cmd {
                    None => break,
                    // One per turn: taking a queue's worth at once sent peers bursts that
                    // overflowed their receive buffers (SIPp's are small) under load.
                    Some(cmd) => self.on_cmd(Instant::now(), cmd),
                },
                r = accept(&self.tcp, self.accept_resume) => match r {
                    Ok((stream, peer)) => {
                        self.accept_resume = None;
                        self.accept_backoff = ACCEPT_BACKOFF_MIN;
                        self.on_accept(stream, peer);
                    }
                    Err(e) => {
                        // Out of descriptors, most likely: retrying at once only spins
                        // (and logged millions of lines); pause, longer each time.
                        self.accept_errors += 1;
                        if let Some(held) = ACCEPT_LOG.pass() {
                            tracing::warn!(error = %e, retry_in_ms = self.accept_backoff.as_millis() as u64, similar_lines_held = held, "tcp accept failed");
                        }
                        self.accept_resume = Some(tokio::time::Instant::now() + self.accept_backoff);
                        self.accept_backoff = (self.accept_backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                },
                () = &mut sleep => self.ua.handle_timeout(Instant::now()),
            }
            self.flush().await;
        }
        tracing::debug!("SIP driver stopped: all handles dropped");
    }

    fn on_cmd(&mut self, now: Instant, cmd: Cmd) {
        match cmd {
            Cmd::Ua(c) => self.ua.handle_command(now, c),
            Cmd::Stats(tx) => {
                let stats = UaStats {
                    rate_limited: self.rate_limited,
                    tcp_refused: self.tcp_refused,
                    tcp_timed_out: self.tcp_timed_out,
                    tcp_accept_errors: self.accept_errors,
                    tcp_connections: self.conns.len() as u64,
                    ..self.ua.stats()
                };
                let _ = tx.send(stats);
            }
            Cmd::SetRateLimit(limit) => self.limiter = limit.map(RateLimiter::new),
        }
    }

    /// Whether a message from `src` may go to the UA; counts the ones that may not.
    fn admit(&mut self, now: Instant, src: SocketAddr) -> bool {
        let Some(limiter) = &mut self.limiter else {
            return true;
        };
        if limiter.allow(src.ip(), now) {
            return true;
        }
        self.rate_limited += 1;
        // Per drop, so debug only: a flood must not turn into a log flood.
        tracing::debug!(%src, "rate limited: dropped");
        false
    }

    fn on_udp(&mut self, now: Instant, src: SocketAddr, bytes: &[u8]) {
        // Before the copy: a dropped datagram costs a hash lookup and nothing else.
        if !self.admit(now, src) {
            return;
        }
        self.ua.handle_datagram(
            now,
            Datagram {
                src,
                dst: self.udp_addr,
                transport: Transport::Udp,
                bytes: bytes.to_vec(),
            },
        );
    }

    fn on_conn_input(&mut self, input: ConnInput) {
        match input {
            ConnInput::Frame { peer, local, bytes } => {
                let now = Instant::now();
                if self.admit(now, peer) {
                    self.ua.handle_datagram(
                        now,
                        Datagram {
                            src: peer,
                            dst: local,
                            transport: Transport::Tcp,
                            bytes,
                        },
                    );
                }
            }
            ConnInput::Closed {
                peer,
                id,
                timed_out,
            } => {
                if timed_out {
                    self.tcp_timed_out += 1;
                }
                if self.conns.get(&peer).is_some_and(|c| c.id == id) {
                    self.remove_conn(peer);
                }
            }
            ConnInput::ConnectFailed { peer, id } => {
                if self.conns.get(&peer).is_some_and(|c| c.id == id) {
                    self.remove_conn(peer);
                }
                self.ua
                    .handle_transport_error(Instant::now(), peer, Transport::Tcp);
            }
        }
    }

    fn remove_conn(&mut self, peer: SocketAddr) {
        if let Some(c) = self.conns.remove(&peer)
            && c.accepted
        {
            let key = source_key(peer.ip());
            if let Some(n) = self.per_source.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_source.remove(&key);
                }
            }
        }
    }

    /// A new inbound connection: refused (closed at once) past the caps.
    fn on_accept(&mut self, stream: TcpStream, peer: SocketAddr) {
        let limits = &self.tcp_limits;
        let from_source = self
            .per_source
            .get(&source_key(peer.ip()))
            .copied()
            .unwrap_or(0);
        let full = limits.max_connections > 0 && self.conns.len() >= limits.max_connections;
        let source_full = limits.max_per_source > 0 && from_source >= limits.max_per_source;
        // A second connection from the same address and port replaces the first.
        if (full || source_full) && !self.conns.contains_key(&peer) {
            self.tcp_refused += 1;
            if let Some(held) = REFUSED_LOG.pass() {
                tracing::warn!(%peer, total = self.conns.len(), from_source, similar_lines_held = held, "tcp connection refused: over the connection caps");
            }
            drop(stream);
            return;
        }
        self.add_conn(stream, peer);
    }

    /// Registers a connected stream: reader task → owner, owner → writer task.
    fn add_conn(&mut self, stream: TcpStream, peer: SocketAddr) {
        let id = self.next_conn;
        self.next_conn += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.remove_conn(peer);
        *self.per_source.entry(source_key(peer.ip())).or_insert(0) += 1;
        self.conns.insert(
            peer,
            Conn {
                id,
                tx,
                accepted: true,
            },
        );
        let local = stream
            .local_addr()
            .ok()
            .or(self.tcp_addr)
            .unwrap_or(self.udp_addr);
        let limits = self.tcp_limits.clone();
        tokio::spawn(run_conn(
            stream,
            peer,
            local,
            id,
            rx,
            self.conn_tx.clone(),
            (limits, true),
        ));
    }

    /// Opens a connection on demand; bytes queue in the writer channel meanwhile.
    fn connect(&mut self, peer: SocketAddr) -> mpsc::UnboundedSender<Vec<u8>> {
        let id = self.next_conn;
        self.next_conn += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        self.remove_conn(peer);
        self.conns.insert(
            peer,
            Conn {
                id,
                tx: tx.clone(),
                accepted: false,
            },
        );
        let conn_tx = self.conn_tx.clone();
        let fallback_local = self.tcp_addr.unwrap_or(self.udp_addr);
        let limits = self.tcp_limits.clone();
        tokio::spawn(async move {
            match TcpStream::connect(peer).await {
                Ok(stream) => {
                    let local = stream.local_addr().unwrap_or(fallback_local);
                    run_conn(stream, peer, local, id, rx, conn_tx, (limits, false)).await;
                }
                Err(e) => {
                    if let Some(held) = CONNECT_LOG.pass() {
                        tracing::warn!(%peer, error = %e, similar_lines_held = held, "tcp connect failed");
                    }
                    let _ = conn_tx.send(ConnInput::ConnectFailed { peer, id });
                }
            }
        });
        tx
    }

    async fn flush(&mut self) {
        while let Some(t) = self.ua.poll_transmit() {
            self.transmit(t).await;
        }
        while let Some(ev) = self.ua.poll_event() {
            match self.events.try_send(ev) {
                Ok(()) => self.events_stalled = false,
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    // Bounded wait, once: a stuck consumer must not stall signalling
                    // forever, so after one timeout events are dropped until it drains.
                    let sent = if self.events_stalled {
                        false
                    } else {
                        let r =
                            tokio::time::timeout(EVENT_SEND_PATIENCE, self.events.send(ev)).await;
                        matches!(r, Ok(Ok(())))
                    };
                    self.events_stalled = !sent;
                    if !sent {
                        tracing::warn!("event channel full: event dropped");
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    async fn transmit(&mut self, t: Transmit) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let line = t.bytes.split(|&b| b == b'\r').next().unwrap_or_default();
            tracing::debug!(dst = %t.dst, transport = ?t.transport, first_line = %String::from_utf8_lossy(line), "send");
        }
        match t.transport {
            Transport::Udp => {
                if let Err(e) = self.udp.send_to(&t.bytes, t.dst).await
                    && let Some(held) = UDP_SEND_LOG.pass()
                {
                    tracing::warn!(dst = %t.dst, error = %e, similar_lines_held = held, "udp send failed");
                }
            }
            Transport::Tcp => {
                let tx = match self.conns.get(&t.dst) {
                    Some(c) if !c.tx.is_closed() => c.tx.clone(),
                    _ => self.connect(t.dst),
                };
                let _ = tx.send(t.bytes);
            }
        }
    }
}

/// One TCP connection: a writer loop fed by the owner, a reader loop feeding it.
async fn run_conn(
    stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    id: u64,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    conn_tx: mpsc::UnboundedSender<ConnInput>,
    // And whether the peer connected to us: then it must speak first, and soon.
    (limits, accepted): (TcpLimits, bool),
) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut framer = StreamFramer::new(MAX_TCP_MESSAGE);
    let mut buf = vec![0u8; 16 * 1024];
    let opened = tokio::time::Instant::now();
    // Until the first whole message (on a connection the peer opened), and while a
    // message is partly in: when it started.
    let mut message_since = accepted.then_some(opened);
    let mut last_data = opened;
    let mut timed_out = false;
    'read: loop {
        let deadline = match message_since {
            Some(since) => since + limits.message_timeout,
            None => last_data + limits.idle_timeout,
        };
        let n = match tokio::time::timeout_at(deadline, rd.read(&mut buf)).await {
            Err(_) => {
                timed_out = true;
                break;
            }
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => n,
        };
        let now = tokio::time::Instant::now();
        last_data = now;
        framer.push(buf.get(..n).unwrap_or_default());
        let mut whole = false;
        while let Some(r) = framer.next_message() {
            match r {
                Ok(bytes) => {
                    whole = true;
                    if conn_tx
                        .send(ConnInput::Frame { peer, local, bytes })
                        .is_err()
                    {
                        break 'read;
                    }
                }
                Err(e) => {
                    if let Some(held) = FRAMING_LOG.pass() {
                        tracing::warn!(%peer, error = %e, similar_lines_held = held, "tcp framing error: closing");
                    }
                    break 'read;
                }
            }
        }
        // Keep-alive CRLFs are consumed by the framer: nothing partial is left of them.
        message_since = match (framer.buffered(), whole) {
            (0, _) => None,
            // The rest of a message begun after the last whole one.
            (_, true) => Some(now),
            (_, false) => message_since.or(Some(now)),
        };
    }
    // The owner drops this connection's sender when it handles `Closed`, after the frames
    // queued before it: the writer then flushes the answers to those frames (a 405 to the
    // message before a framing error, say) and ends, and the socket closes. Bounded, so a
    // peer that stopped reading cannot hold the task.
    let _ = conn_tx.send(ConnInput::Closed {
        peer,
        id,
        timed_out,
    });
    drop(rd);
    let mut writer = writer;
    if tokio::time::timeout(std::time::Duration::from_secs(5), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}
