//! End-to-end relay load over loopback UDP: N bridged G.711 calls, each carrying four
//! 20 ms streams (caller→bridge→callee and back), through real `Bridge` tasks.
//!
//! The bridges run on a single-thread tokio runtime in their own OS thread, whose CPU
//! time is read from `/proc/self/task/<tid>/schedstat`; the traffic generators run on
//! another single-thread runtime (the main thread), so both compete for the cores.
//! Each generator task serves 100 calls with one "caller" and one "callee" socket
//! (every bridge latches independently, so sharing a source socket is fine), stamps
//! each payload with a monotonic send time, and measures loss and added latency.
//!
//! Run: `cargo bench -p switchyard-media --bench relay`. Env: `RELAY_CALLS` (comma list,
//! default 250,500,1000,1500,2000), `RELAY_SECS` (per step, default 10).

// A benchmark has to read the clock; the sans-IO rule is for library code.
#![allow(clippy::disallowed_methods)]
// A failed setup step aborts the benchmark; there is nothing to recover.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use media::codec::AudioCodec;
use media::net::PortPool;
use media::net::bridge::Bridge;
use media::relay::{RelayConfig, Side, SideParams};
use media::rtp::{RtpHeader, write_packet};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::net::UdpSocket;
use tokio::time::MissedTickBehavior;

const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const CALLS_PER_GROUP: usize = 100;
const PTIME: Duration = Duration::from_millis(20);
/// Each group sends in this many sub-bursts per packet time, a tenth of its calls each,
/// so arrivals at the relay are spread as they would be from independent phones.
const SLOTS: u32 = 10;
const PAYLOAD: usize = 160;
/// Latency histogram: 1 µs bins up to 100 ms (the last bin collects the rest).
const BINS: usize = 100_000;
const WARMUP: Duration = Duration::from_secs(1);
const DRAIN: Duration = Duration::from_millis(300);

fn thread_tid() -> String {
    // "/proc/thread-self" links to "<pid>/task/<tid>".
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_string_lossy().into_owned()
}

/// CPU time of thread `tid` of this process in ns (first field of schedstat).
fn cpu_ns(tid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn side(remote: SocketAddr) -> SideParams {
    SideParams {
        remote: Some(remote),
        codec: AudioCodec::Pcmu,
        pt: 0,
        clock_rate: 8000,
        dtmf_pt: None,
    }
}

fn udp(big: bool) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    if big {
        // Each generator socket carries 100 calls' worth of packets.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
    }
    s.bind(&SocketAddr::new(LO, 0).into()).unwrap();
    s.set_nonblocking(true).unwrap();
    UdpSocket::from_std(s.into()).unwrap()
}

#[derive(Debug)]
struct GroupResult {
    sent: u64,
    received: u64,
    /// Received within the measurement window (ns since epoch).
    in_window: u64,
    window: (u64, u64),
    hist: Vec<u32>,
    max_us: u64,
}

/// Sends 50 pkt/s per call per direction for `run`, receiving all the while, then
/// keeps receiving for [`DRAIN`].
async fn generator(
    epoch: Instant,
    phase: Duration,
    caller: UdpSocket,
    callee: UdpSocket,
    targets: Vec<(SocketAddr, SocketAddr)>,
    run: Duration,
    window: (u64, u64),
) -> GroupResult {
    let mut res = GroupResult {
        sent: 0,
        received: 0,
        in_window: 0,
        window,
        hist: vec![0; BINS],
        max_us: 0,
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, PTIME / SLOTS);
    let mut slot = 0usize;
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let stop_at = tokio::time::Instant::now() + phase + run;
    let end = tokio::time::sleep_until(stop_at + DRAIN);
    tokio::pin!(end);
    let mut seq: u16 = 0;
    let mut pkt = [0u8; 12 + PAYLOAD];
    let mut rbuf = [0u8; 2048];
    let mut sending = true;
    // Duplicates of the fds for polling inside a send burst: tokio only re-arms
    // readiness when the runtime parks, and receive times would include the burst.
    let caller_poll = socket2::SockRef::from(&caller).try_clone().unwrap();
    let callee_poll = socket2::SockRef::from(&callee).try_clone().unwrap();
    let (caller_poll, callee_poll): (std::net::UdpSocket, std::net::UdpSocket) =
        (caller_poll.into(), callee_poll.into());
    let hdr = |seq: u16| RtpHeader {
        marker: false,
        pt: 0,
        seq,
        timestamp: u32::from(seq) * PAYLOAD as u32,
        ssrc: 0x5eed,
    };
    loop {
        tokio::select! {
            _ = &mut end => break,
            t = ticker.tick(), if sending => {
                if t >= stop_at {
                    sending = false;
                    continue;
                }
                write_packet(&mut pkt, &hdr(seq), &[0xff; PAYLOAD]).unwrap();
                let mine = targets.iter().enumerate().skip(slot).step_by(SLOTS as usize);
                for (k, (call, (a, b))) in mine.enumerate() {
                    for (dir, (sock, dst)) in [(&caller, a), (&callee, b)].into_iter().enumerate() {
                        let ns = epoch.elapsed().as_nanos() as u64;
                        pkt[12..20].copy_from_slice(&ns.to_be_bytes());
                        pkt[20..24].copy_from_slice(&(call as u32).to_be_bytes());
                        pkt[24] = dir as u8;
                        pkt[25..27].copy_from_slice(&seq.to_be_bytes());
                        let ok = match sock.try_send_to(&pkt, *dst) {
                            Ok(_) => true,
                            Err(_) => sock.send_to(&pkt, *dst).await.is_ok(),
                        };
                        res.sent += u64::from(ok);
                    }
                    if k % 8 == 7 {
                        recv_std(&caller_poll, &mut rbuf, epoch, &mut res);
                        recv_std(&callee_poll, &mut rbuf, epoch, &mut res);
                    }
                }
                slot += 1;
                if slot == SLOTS as usize {
                    slot = 0;
                    seq = seq.wrapping_add(1);
                }
            }
            r = caller.readable() => if r.is_ok() { recv_all(&caller, &mut rbuf, epoch, &mut res) },
            r = callee.readable() => if r.is_ok() { recv_all(&callee, &mut rbuf, epoch, &mut res) },
        }
    }
    res
}

fn recv_all(sock: &UdpSocket, rbuf: &mut [u8], epoch: Instant, res: &mut GroupResult) {
    while let Ok((n, _)) = sock.try_recv_from(rbuf) {
        record(n, rbuf, epoch, res);
    }
}

fn recv_std(sock: &std::net::UdpSocket, rbuf: &mut [u8], epoch: Instant, res: &mut GroupResult) {
    while let Ok((n, _)) = sock.recv_from(rbuf) {
        record(n, rbuf, epoch, res);
    }
}

fn record(n: usize, rbuf: &[u8], epoch: Instant, res: &mut GroupResult) {
    let now = epoch.elapsed().as_nanos() as u64;
    let Some(stamp) = rbuf.get(12..20).filter(|_| n >= 27) else {
        return;
    };
    let sent = u64::from_be_bytes(stamp.try_into().unwrap());
    let us = now.saturating_sub(sent) / 1000;
    res.received += 1;
    res.in_window += u64::from((res.window.0..res.window.1).contains(&now));
    res.max_us = res.max_us.max(us);
    let bin = (us as usize).min(BINS - 1);
    res.hist[bin] += 1;
}

fn percentile(hist: &[u64], total: u64, p: f64) -> usize {
    let want = (total as f64 * p).ceil() as u64;
    let mut acc = 0;
    for (i, c) in hist.iter().enumerate() {
        acc += c;
        if acc >= want.max(1) {
            return i;
        }
    }
    hist.len()
}

/// What carries the calls.
enum Target<'a> {
    Bridge {
        relay: &'a tokio::runtime::Handle,
        tid: &'a str,
        pool: &'a PortPool,
    },
    Rtpengine(&'a mut Ng),
    /// No relay: each generator's caller and callee sockets send to each other (the
    /// baseline whose host CPU the relays' is compared against).
    Direct,
}

/// Busy time of all CPUs of the host in ns (/proc/stat: everything but idle and
/// iowait). In-kernel forwarding runs in the senders' system calls, so only the whole
/// host's CPU shows what a relay costs in every mode alike.
fn host_busy_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...; USER_HZ is 100.
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .map(|(_, v)| v)
        .sum();
    busy * 10_000_000
}

#[derive(Debug)]
struct Row {
    calls: usize,
    offered: f64,
    pps: f64,
    loss: f64,
    p50: usize,
    p99: usize,
    max: u64,
    cpu_pct: f64,
    us_per_k: f64,
    /// The whole host's busy CPU, in % of one core and per 1,000 relayed packets.
    host_pct: f64,
    host_us_per_k: f64,
    /// CPU of the processes taking part (this one, generators and bridges; rtpengine),
    /// per 1,000 relayed packets: in-kernel forwarding runs in the generators' sends.
    procs_us_per_k: f64,
}

impl Target<'_> {
    fn cpu_ns(&self) -> u64 {
        match self {
            Target::Bridge { tid, .. } => cpu_ns(tid),
            Target::Rtpengine(ng) => process_cpu_ns(ng.pid),
            Target::Direct => 0,
        }
    }

    /// CPU of every process taking part, in ns.
    fn procs_cpu_ns(&self) -> u64 {
        let own = process_cpu_ns(std::process::id());
        match self {
            Target::Rtpengine(ng) => own + process_cpu_ns(ng.pid),
            _ => own,
        }
    }
}

async fn step(calls: usize, secs: u64, target: &mut Target<'_>) -> Row {
    let groups = calls.div_ceil(CALLS_PER_GROUP);
    let mut bridges = Vec::with_capacity(calls);
    let mut call_ids = Vec::new();
    let mut plans = Vec::new();
    for g in 0..groups {
        let (caller, callee) = (udp(true), udp(true));
        let (ca, cb) = (caller.local_addr().unwrap(), callee.local_addr().unwrap());
        let n = CALLS_PER_GROUP.min(calls - g * CALLS_PER_GROUP);
        let mut targets = Vec::with_capacity(n);
        for i in 0..n {
            match target {
                Target::Bridge { relay, pool, .. } => {
                    // Registers the sockets with, and spawns the task on, the relay runtime.
                    let _enter = relay.enter();
                    let b =
                        Bridge::open(pool, LO, side(ca), side(cb), RelayConfig::default()).unwrap();
                    targets.push((b.local_addr(Side::A), b.local_addr(Side::B)));
                    bridges.push(b);
                }
                Target::Rtpengine(ng) => {
                    let id = format!("bench-{calls}-{g}-{i}");
                    targets.push(ng.call(&id, ca, cb).await);
                    call_ids.push(id);
                }
                Target::Direct => targets.push((cb, ca)),
            }
        }
        plans.push((caller, callee, targets));
    }
    let run = Duration::from_secs(secs);
    let window = (WARMUP, run.saturating_sub(Duration::from_millis(100)));
    let epoch = Instant::now();
    let wns = (window.0.as_nanos() as u64, window.1.as_nanos() as u64);
    let mut tasks = Vec::new();
    for (g, (caller, callee, targets)) in plans.into_iter().enumerate() {
        // Spread the groups over one sub-burst so their bursts do not coincide.
        let phase = PTIME / SLOTS * g as u32 / groups as u32;
        tasks.push(tokio::spawn(generator(
            epoch, phase, caller, callee, targets, run, wns,
        )));
    }
    tokio::time::sleep_until((epoch + window.0).into()).await;
    let (c0, h0, p0) = (target.cpu_ns(), host_busy_ns(), target.procs_cpu_ns());
    tokio::time::sleep_until((epoch + window.1).into()).await;
    let cpu = target.cpu_ns() - c0;
    let host = host_busy_ns() - h0;
    let procs = target.procs_cpu_ns() - p0;
    let span = window.1 - window.0;
    let mut hist = vec![0u64; BINS];
    let (mut sent, mut received, mut rel, mut max) = (0, 0, 0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        sent += r.sent;
        received += r.received;
        rel += r.in_window;
        max = max.max(r.max_us);
        for (h, c) in hist.iter_mut().zip(&r.hist) {
            *h += u64::from(*c);
        }
    }
    for b in bridges {
        b.close().await;
    }
    if let Target::Rtpengine(ng) = target {
        for id in &call_ids {
            ng.delete(id).await;
        }
    }
    Row {
        calls,
        offered: sent as f64 / run.as_secs_f64(),
        pps: rel as f64 / span.as_secs_f64(),
        loss: 100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64,
        p50: percentile(&hist, received, 0.50),
        p99: percentile(&hist, received, 0.99),
        max,
        cpu_pct: 100.0 * cpu as f64 / span.as_nanos() as f64,
        us_per_k: cpu as f64 / 1000.0 / (rel.max(1) as f64 / 1000.0),
        host_pct: 100.0 * host as f64 / span.as_nanos() as f64,
        host_us_per_k: host as f64 / 1000.0 / (rel.max(1) as f64 / 1000.0),
        procs_us_per_k: procs as f64 / 1000.0 / (rel.max(1) as f64 / 1000.0),
    }
}

/// CPU time of every thread of process `pid`, in ns.
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

/// Minimal bencode (BEP 3) for rtpengine's ng protocol.
#[derive(Debug, Clone, PartialEq)]
enum Bv {
    Int(i64),
    Str(Vec<u8>),
    List(Vec<Bv>),
    Dict(Vec<(Vec<u8>, Bv)>),
}

impl Bv {
    fn s(v: &str) -> Bv {
        Bv::Str(v.as_bytes().to_vec())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bv::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            Bv::Str(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            Bv::List(l) => {
                out.push(b'l');
                l.iter().for_each(|v| v.encode(out));
                out.push(b'e');
            }
            Bv::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Bv::Str(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    fn decode(b: &[u8]) -> Option<(Bv, &[u8])> {
        match *b.first()? {
            b'i' => {
                let end = b.iter().position(|&c| c == b'e')?;
                let n = std::str::from_utf8(b.get(1..end)?).ok()?.parse().ok()?;
                Some((Bv::Int(n), b.get(end + 1..)?))
            }
            b'l' | b'd' => {
                let dict = b[0] == b'd';
                let mut rest = b.get(1..)?;
                let (mut l, mut d) = (Vec::new(), Vec::new());
                while *rest.first()? != b'e' {
                    let (v, r) = Bv::decode(rest)?;
                    rest = r;
                    if dict {
                        let Bv::Str(k) = v else { return None };
                        let (v, r) = Bv::decode(rest)?;
                        rest = r;
                        d.push((k, v));
                    } else {
                        l.push(v);
                    }
                }
                let v = if dict { Bv::Dict(d) } else { Bv::List(l) };
                Some((v, rest.get(1..)?))
            }
            _ => {
                let colon = b.iter().position(|&c| c == b':')?;
                let n: usize = std::str::from_utf8(b.get(..colon)?).ok()?.parse().ok()?;
                let s = b.get(colon + 1..colon + 1 + n)?;
                Some((Bv::Str(s.to_vec()), b.get(colon + 1 + n..)?))
            }
        }
    }

    fn get(&self, key: &str) -> Option<&Bv> {
        let Bv::Dict(d) = self else { return None };
        d.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v)
    }

    fn str(&self) -> Option<&str> {
        match self {
            Bv::Str(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// An ng control connection to an rtpengine we started.
struct Ng {
    sock: UdpSocket,
    server: SocketAddr,
    pid: u32,
    cookie: u64,
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// The RTP address in an SDP body (session-level `c=` and the first `m=audio`).
fn sdp_addr(sdp: &str) -> Option<SocketAddr> {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .parse()
        .ok()?;
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

impl Ng {
    async fn request(&mut self, pairs: &[(&str, &str)]) -> Option<Bv> {
        self.cookie += 1;
        let dict = Bv::Dict(
            pairs
                .iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), Bv::s(v)))
                .collect(),
        );
        let mut msg = format!("{} ", self.cookie).into_bytes();
        dict.encode(&mut msg);
        let mut buf = vec![0u8; 65536];
        for _ in 0..3 {
            self.sock.send_to(&msg, self.server).await.ok()?;
            let got = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    let (n, _) = self.sock.recv_from(&mut buf).await.ok()?;
                    let reply = buf.get(..n)?;
                    let space = reply.iter().position(|&c| c == b' ')?;
                    if reply.get(..space)? == self.cookie.to_string().as_bytes() {
                        return Bv::decode(reply.get(space + 1..)?).map(|(v, _)| v);
                    }
                }
            })
            .await;
            if let Ok(v) = got {
                return v;
            }
        }
        None
    }

    /// Sets up one call; returns where the caller and the callee send their RTP.
    async fn call(
        &mut self,
        id: &str,
        caller: SocketAddr,
        callee: SocketAddr,
    ) -> (SocketAddr, SocketAddr) {
        let offer = sdp(caller.port());
        let r = self
            .request(&[
                ("command", "offer"),
                ("call-id", id),
                ("from-tag", "caller"),
                ("sdp", &offer),
            ])
            .await
            .unwrap();
        let to_callee = r.get("sdp").and_then(Bv::str).and_then(sdp_addr);
        let answer = sdp(callee.port());
        let r2 = self
            .request(&[
                ("command", "answer"),
                ("call-id", id),
                ("from-tag", "caller"),
                ("to-tag", "callee"),
                ("sdp", &answer),
            ])
            .await
            .unwrap();
        let to_caller = r2.get("sdp").and_then(Bv::str).and_then(sdp_addr);
        match (to_caller, to_callee) {
            (Some(a), Some(b)) => (a, b),
            _ => panic!("rtpengine refused the call: {r:?} / {r2:?}"),
        }
    }

    async fn delete(&mut self, id: &str) {
        let _ = self
            .request(&[("command", "delete"), ("call-id", id)])
            .await;
    }
}

fn print_header(title: &str) {
    println!("{title}");
    println!(
        "{:>6} {:>8} {:>10} {:>10} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>7} {:>10} {:>11}",
        "calls",
        "streams",
        "offered/s",
        "relayed/s",
        "loss %",
        "p50 µs",
        "p99 µs",
        "max µs",
        "CPU %",
        "µs/1k pkt",
        "host %",
        "host µs/1k",
        "procs µs/1k"
    );
}

fn print_row(r: &Row) {
    // The histogram ends at 100 ms.
    let p = |v: usize| {
        if v + 1 >= BINS {
            ">100000".to_string()
        } else {
            v.to_string()
        }
    };
    println!(
        "{:>6} {:>8} {:>10.0} {:>10.0} {:>7.3} {:>7} {:>7} {:>8} {:>8.1} {:>9.0} {:>7.0} {:>10.0} {:>11.0}",
        r.calls,
        r.calls * 4,
        r.offered,
        r.pps,
        r.loss,
        p(r.p50),
        p(r.p99),
        r.max,
        r.cpu_pct,
        r.us_per_k,
        r.host_pct,
        r.host_us_per_k,
        r.procs_us_per_k
    );
}

/// Starts rtpengine (userspace forwarding, one worker) for the comparison.
fn start_rtpengine() -> std::process::Child {
    std::process::Command::new("rtpengine")
        .args([
            "--table=-1",
            "--interface=127.0.0.1",
            "--listen-ng=127.0.0.1:2223",
            "--num-threads=1",
            "--delete-delay=0",
            "--foreground",
            "--log-stderr",
            "--log-level=3",
            "--port-min=42000",
            "--port-max=59999",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Drops the in-kernel forwarding table so the userspace modes run without connection
/// tracking (each packet would pay for it); the kernel mode creates it again.
fn drop_nft_table() {
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "ip", media::net::kernel::NFT_TABLE])
        .stderr(std::process::Stdio::null())
        .status();
}

fn main() {
    let calls: Vec<usize> = std::env::var("RELAY_CALLS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![250, 500, 1000, 1500, 2000]);
    let secs: u64 = std::env::var("RELAY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(2);
    let mut modes: Vec<String> = std::env::var("RELAY_MODES")
        .unwrap_or_else(|_| "direct,bridge,kernel".into())
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    if std::env::var("RELAY_RTPENGINE").is_ok_and(|v| v == "1")
        && !modes.iter().any(|m| m == "rtpengine")
    {
        modes.push("rtpengine".into());
    }
    // Userspace modes first, without conntrack; the kernel mode last.
    modes.sort_by_key(|m| m == "kernel");

    let relay_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let relay = relay_rt.handle().clone();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let relay_thread = std::thread::Builder::new()
        .name("relay".into())
        .spawn(move || {
            tid_tx.send(thread_tid()).unwrap();
            relay_rt.block_on(async {
                let _ = stop_rx.await;
            });
        })
        .unwrap();
    let tid = tid_rx.recv().unwrap();
    let gen_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    drop_nft_table();
    let results = gen_rt.block_on(async {
        let mut results: Vec<(String, Vec<Row>)> = Vec::new();
        for mode in &modes {
            let mut rows = Vec::new();
            match mode.as_str() {
                "direct" | "bridge" | "kernel" => {
                    let mut pool = PortPool::with_rng(20000, 39999, StdRng::seed_from_u64(7)).unwrap();
                    if mode == "kernel" {
                        match media::net::kernel::KernelForwarder::enable(20000..=39999) {
                            Ok(k) => pool = pool.with_kernel_forwarder(std::sync::Arc::new(k)),
                            Err(e) => {
                                println!("kernel: in-kernel forwarding unavailable ({e}); skipped\n");
                                continue;
                            }
                        }
                    }
                    print_header(&match mode.as_str() {
                        "direct" => format!("direct (no relay, the baseline): {secs} s per step"),
                        "bridge" => format!("Switchyard bridge, userspace: {secs} s per step; bridges on one thread, generators on another"),
                        _ => format!("Switchyard bridge, in-kernel forwarding (conntrack NAT): {secs} s per step"),
                    });
                    for &n in &calls {
                        let mut target = if mode == "direct" {
                            Target::Direct
                        } else {
                            Target::Bridge {
                                relay: &relay,
                                tid: &tid,
                                pool: &pool,
                            }
                        };
                        let r = step(n, secs, &mut target).await;
                        print_row(&r);
                        rows.push(r);
                    }
                }
                "rtpengine" => {
                    let mut child = start_rtpengine();
                    let mut ng = Ng {
                        sock: UdpSocket::bind((LO, 0)).await.unwrap(),
                        server: SocketAddr::new(LO, 2223),
                        pid: child.id(),
                        cookie: 0,
                    };
                    // Ready when it answers a ping (retried inside `request`).
                    if ng.request(&[("command", "ping")]).await.is_none() {
                        println!("rtpengine did not answer on 127.0.0.1:2223\n");
                    } else {
                        print_header("rtpengine (userspace, --num-threads=1): whole-process CPU");
                        for &n in &calls {
                            let r = step(n, secs, &mut Target::Rtpengine(&mut ng)).await;
                            print_row(&r);
                            rows.push(r);
                        }
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                }
                other => println!("unknown mode {other}"),
            }
            println!();
            results.push((mode.clone(), rows));
        }
        results
    });
    drop_nft_table();
    summarise(&results);
    let _ = stop_tx.send(());
    relay_thread.join().unwrap();
}

/// The host CPU each relay adds over the direct baseline at the same load, and what
/// that makes per core.
fn summarise(results: &[(String, Vec<Row>)]) {
    let Some((_, direct)) = results.iter().find(|(m, _)| m == "direct") else {
        return;
    };
    println!(
        "CPU added over the direct baseline at the same load, same run (host: /proc/stat, \
         noisy; procs: the processes taking part, in-kernel work in their system calls \
         included), and p99 latency added:"
    );
    println!(
        "{:>10} {:>6} {:>8} {:>12} {:>14} {:>16} {:>15} {:>12}",
        "mode",
        "calls",
        "streams",
        "added CPU %",
        "host µs/1k",
        "streams / core",
        "procs µs/1k",
        "p99 added µs"
    );
    for (mode, rows) in results.iter().filter(|(m, _)| m != "direct") {
        for (r, d) in rows.iter().zip(direct) {
            let added = (r.host_pct - d.host_pct).max(0.1);
            println!(
                "{:>10} {:>6} {:>8} {:>12.1} {:>14.0} {:>16.0} {:>15.0} {:>12}",
                mode,
                r.calls,
                r.calls * 4,
                r.host_pct - d.host_pct,
                r.host_us_per_k - d.host_us_per_k,
                (r.calls * 4) as f64 / (added / 100.0),
                r.procs_us_per_k - d.procs_us_per_k,
                r.p99 as i64 - d.p99 as i64
            );
        }
    }
}
