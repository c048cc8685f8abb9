//! Transit calls per second: SIPp UAC → system under test → SIPp UAS, INVITE/180/200/ACK/BYE,
//! without RTP and with RTP, through Kamailio (a stateful proxy, `tests/bench/kamailio.cfg`)
//! and through Switchyard (a B2BUA: the `switchyard` binary with an inbound trunk and a dial
//! plan) in the same run, with the ratio of their highest clean rates.
//!
//! Run (release; builds the `switchyard` binary too; needs `sipp` and, for the comparison,
//! Debian's `kamailio` package):
//!
//! ```text
//! cargo bench --bench transit
//! TRANSIT_ONLY=kamailio TRANSIT_RATES=1000,2000,4000 TRANSIT_SECONDS=5 cargo bench --bench transit
//! TRANSIT_MODES=rtp TRANSIT_RTP_RATES=25,50,100 cargo bench --bench transit
//! ```
//!
//! Environment (all optional):
//! - `TRANSIT_SECONDS` length of each rate step (10); `TRANSIT_RATES` offered calls/s without
//!   RTP (`500,1000,2000,4000,8000,12000,16000`); `TRANSIT_RTP_RATES` with RTP
//!   (`50,100,200,400`);
//! - `TRANSIT_ONLY` `kamailio` or `switchyard` (both); `TRANSIT_MODES` `nortp`, `rtp` or both
//!   (`nortp,rtp`);
//! - `TRANSIT_HOLD_MS` ACK → BYE pause without RTP (0); `TRANSIT_RTP_MS` RTP per call and
//!   direction with RTP (2000: the first 2 s of the A-law audio in
//!   `/usr/share/sip-tester/g711a.pcap`, sent as 20 ms packets, 100 of them), which is also
//!   the ACK → BYE pause;
//! - `TRANSIT_LIMIT` SIPp's `-l` (calls in progress; by default rate × (hold + 2 s), so a
//!   system whose calls take longer than 2 s to set up is throttled and shows it);
//! - `TRANSIT_STOP_AFTER` unclean steps in a row after which a ramp stops (2; 0 never stops);
//! - `TRANSIT_INTERLEAVE` (1): both systems run side by side and take turns at every rate,
//!   so drift on the machine (its speed moved by a quarter within an hour here) hits both
//!   ramps alike; 0 runs Kamailio's whole ramp, then the switch's. Forced to 0 with
//!   `TRANSIT_KERNEL_FORWARDING=1` (the switch's connection tracking would tax Kamailio);
//! - `TRANSIT_KAMAILIO_ARGS` (`-n 1 -m 4096 -M 64 -x tlsf -X tlsf`; `-n 1` alone gives
//!   Debian's default memory sizes and allocators, `-n 4` several workers);
//!   `TRANSIT_SWITCH_WORKERS` the switch's `node.worker_threads` (1, the counterpart of
//!   Kamailio's `-n 1`: with two SIPps on a 2-core machine a second worker costs more in
//!   thread wake-ups than it adds); `TRANSIT_KERNEL_FORWARDING=1` the switch's
//!   `[rtp] kernel_forwarding` (RTP relayed by conntrack; Kamailio then runs without
//!   connection tracking, as it does by default); `TRANSIT_RECORD_EVENTS=1` the switch's
//!   `[webhooks] record_without_url` (off by default here: the bench's calls have no
//!   webhook, and a transit deployment without callbacks writes each call's row alone);
//!   `TRANSIT_PREBIND` the switch's `[rtp] prebind_pairs` (0: a ramp that starts high
//!   measures a cold start); `TRANSIT_SWITCH_LOG` the switch's `RUST_LOG` (`warn`); `MIMALLOC_PURGE_DELAY` the
//!   switch's allocator purge delay (`1000`, as the README recommends for deployment); `TRANSIT_DB_URL` the switch's
//!   database (a SQLite file in the work dir); `TRANSIT_DEADLINE` overall seconds (1800),
//!   also the bound on every child's lifetime; `TRANSIT_KEEP` keeps the work dir (logs,
//!   SIPp stat files, the switch's database).
//!
//! Each step starts a fresh SIPp UAS (`bench_transit_uas[_rtp].xml`, `-m calls`) on the port
//! the system relays to and a SIPp UAC (`bench_transit_uac[_rtp].xml`) that places
//! rate × seconds calls at `-r rate` to the system, dialling `+12025550100`. Both run with
//! `-nostdin -aa`, no `-trace_err`/`-trace_msg` (logging every message would cost SIPp more
//! than the call), `-trace_stat` for the counts. Reported per step:
//! - `ok/s`: successful calls over the UAC's wall time less one call's hold (the BYE pause),
//!   i.e. the rate at which calls were set up and torn down;
//! - `failed`, `retrans`: SIPp's FailedCall and Retransmissions counters, UAC + UAS; `stray`
//!   its OutOfCallMsgs + DeadCallMsgs; `drops` the SIP datagrams the kernel dropped on a full
//!   receive buffer (sock_diag, the system's and the SIPps' SIP sockets; RTP sent to
//!   a SIPp is never read, so its media sockets are left out): someone fell behind;
//! - `cpu-us/call`: the system's CPU time (utime + stime of all its processes from
//!   `/proc/PID/stat`, Kamailio's workers included) from UAS start to UAC exit, over the
//!   successful calls; `sys%`, `uac%`, `uas%`: CPU of the system and of each SIPp as a share
//!   of one core over the step (the machine may have only 2 cores for all three); `other%`
//!   the rest of the machine's busy time (`/proc/stat`) over the step, i.e. the noise from
//!   other work on the machine (the UAS's and the system's CPU after the UAC's exit count
//!   there too, a few percent);
//! - `rtp/call` (switch, with RTP): RTP packets the switch received per call, from
//!   `switchyard_rtp_packets_received_total` on `/metrics` (2 × 100 when every packet of both
//!   directions arrived); Kamailio never sees RTP. Nothing checks what reaches the SIPps;
//! - for the switch, a line with its CPU per call split by thread name (the SIP thread, tokio workers,
//!   SQLite workers), and calls still live 10 s after a step (`/health`) make it unclean.
//!
//! A step is clean when both SIPps exit 0, no call failed, every offered call succeeded, and
//! `ok/s` reached 90 % of the offered rate. The summary gives each system's highest clean
//! step, the ratio of their rates, and the ratio of calls/s one core would carry at their CPU
//! cost per call (1e6 / cpu-us/call), which does not depend on how much of the machine the
//! SIPps took. With RTP each SIPp streams that audio (`exec rtp_stream`, from its media port)
//! to the address in the peer's SDP (for Kamailio the other SIPp, for the switch its relay
//! ports). Not `play_pcap_audio`: each pcap player holds a raw UDP socket, and the kernel
//! offers every UDP datagram on the host to every raw UDP socket (`raw_local_deliver`); at
//! 300 calls/s that walk was 42 % of the switch's CPU, paid on each packet it relays, while
//! Kamailio relays none.
//!
//! The switch is started as `switchyard serve` with the far SIPp as trunk `far`, the calling
//! SIPp as trunk `uac` (inbound by source address 127.0.0.1/32) and a plan that sends `+1…`
//! to `far`. Kamailio runs in the foreground (`-DD -E`); both are wrapped in `timeout` so they
//! cannot outlive the bench, and are killed (every process of theirs, by pid) at the end.

#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

#[path = "../common/mod.rs"]
mod common;

use std::collections::{HashMap, VecDeque};
use std::error::Error;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use common::sipp::free_udp_port;
use common::switch::{SwitchConfig, parse_listening, switch_bin};

type R<T> = Result<T, Box<dyn Error + Send + Sync>>;

const SCENARIO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");
const KAMAILIO_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bench/kamailio.cfg");
const PCAP_SRC: &str = "/usr/share/sip-tester/g711a.pcap";
/// Written into each RTP step's directory; the RTP scenarios name it relative to SIPp's cwd.
const AUDIO_NAME: &str = "transit_rtp.alaw";
const CALLED: &str = "+12025550100";
/// One worker, TLSF allocators, 4 GiB of shared memory (touched only as used): tm keeps
/// every transaction for its 5 s wait timer, about 13 KiB each here, so 256 MiB runs out
/// near 2000 calls/s and 1 GiB near 8000 ("out of mem" in t_newtran, 500 to the caller).
const DEFAULT_KAMAILIO_ARGS: &str = "-n 1 -m 4096 -M 64 -x tlsf -X tlsf";
/// USER_HZ: the unit of the times in /proc/PID/stat (100 on every mainstream Linux build).
const TICK_US: f64 = 10_000.0;
const IDLE_WINDOW: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// Settings

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum System {
    Kamailio,
    Switchyard,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Kamailio => "kamailio",
            System::Switchyard => "switchyard",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoRtp,
    Rtp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoRtp => "no-rtp",
            Mode::Rtp => "rtp",
        }
    }
}

#[derive(Debug, Clone)]
struct Settings {
    seconds: f64,
    rates: Vec<f64>,
    rtp_rates: Vec<f64>,
    systems: Vec<System>,
    modes: Vec<Mode>,
    hold_ms: u64,
    rtp_ms: u64,
    limit: Option<u64>,
    stop_after: usize,
    kamailio_args: Vec<String>,
    switch_log: String,
    /// The switch's `node.worker_threads`.
    switch_workers: u64,
    /// The switch's `[rtp] kernel_forwarding`.
    kernel_forwarding: bool,
    /// The switch's `[webhooks] record_without_url`.
    record_events: bool,
    /// The switch's `[rtp] prebind_pairs`.
    prebind: u64,
    /// Systems take turns step by step rather than ramp after ramp.
    interleave: bool,
    db_url: Option<String>,
    deadline: Duration,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn env_rates(name: &str, default: &[f64]) -> Vec<f64> {
    match std::env::var(name) {
        Ok(s) => s
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .filter(|r: &f64| *r > 0.0)
            .collect(),
        Err(_) => default.to_vec(),
    }
}

impl Settings {
    fn from_env() -> R<Settings> {
        let systems = match std::env::var("TRANSIT_ONLY").ok().as_deref().map(str::trim) {
            None | Some("") => vec![System::Kamailio, System::Switchyard],
            Some("kamailio") => vec![System::Kamailio],
            Some("switchyard") => vec![System::Switchyard],
            Some(other) => {
                return Err(format!("TRANSIT_ONLY={other}: kamailio or switchyard").into());
            }
        };
        let mut modes = Vec::new();
        let modes_env = std::env::var("TRANSIT_MODES").unwrap_or_else(|_| "nortp,rtp".into());
        for m in modes_env
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            modes.push(match m {
                "nortp" | "no-rtp" => Mode::NoRtp,
                "rtp" => Mode::Rtp,
                other => return Err(format!("TRANSIT_MODES: {other}: nortp or rtp").into()),
            });
        }
        let kamailio_args = std::env::var("TRANSIT_KAMAILIO_ARGS")
            .unwrap_or_else(|_| DEFAULT_KAMAILIO_ARGS.to_owned())
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        Ok(Settings {
            seconds: env_u64("TRANSIT_SECONDS", 10).max(1) as f64,
            rates: env_rates(
                "TRANSIT_RATES",
                &[500.0, 1000.0, 2000.0, 4000.0, 8000.0, 12000.0, 16000.0],
            ),
            rtp_rates: env_rates("TRANSIT_RTP_RATES", &[50.0, 100.0, 200.0, 400.0]),
            systems,
            modes,
            hold_ms: env_u64("TRANSIT_HOLD_MS", 0),
            rtp_ms: env_u64("TRANSIT_RTP_MS", 2000).max(30),
            limit: std::env::var("TRANSIT_LIMIT")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
            stop_after: env_u64("TRANSIT_STOP_AFTER", 2) as usize,
            kamailio_args,
            switch_log: std::env::var("TRANSIT_SWITCH_LOG").unwrap_or_else(|_| "warn".into()),
            switch_workers: env_u64("TRANSIT_SWITCH_WORKERS", 1).max(1),
            kernel_forwarding: env_u64("TRANSIT_KERNEL_FORWARDING", 0) == 1,
            record_events: env_u64("TRANSIT_RECORD_EVENTS", 0) == 1,
            prebind: env_u64("TRANSIT_PREBIND", 0),
            interleave: env_u64("TRANSIT_INTERLEAVE", 1) == 1,
            db_url: std::env::var("TRANSIT_DB_URL").ok(),
            deadline: Duration::from_secs(env_u64("TRANSIT_DEADLINE", 1800).max(10)),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// /proc

/// `(ppid, utime + stime)` of a process from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// A process's start time (field 22 of /proc/PID/stat), to tell it from a later one that
/// reuses its pid.
fn proc_start_time(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// CPU ticks of the children this process has waited for (cutime + cstime of
/// `/proc/self/stat`): read around reaping a SIPp, it gives that SIPp's whole CPU time.
fn reaped_children_ticks() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    let Some(close) = text.rfind(')') else {
        return 0;
    };
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(13) + get(14)
}

/// `root` and every process below it (Kamailio forks its workers from the main process).
fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = proc_stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        out.push(pid);
        if let Some(c) = children.get(&pid) {
            queue.extend(c.iter().copied());
        }
    }
    out
}

/// CPU ticks of every thread of `pids`, summed by thread name (`comm`): the switch's tokio
/// workers, SQLite workers and media threads show up under their own names.
fn ticks_by_thread_name(pids: &[u32]) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path();
            let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_owned();
            let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            *out.entry(name).or_insert(0) += get(11) + get(12);
        }
    }
    out
}

/// Busy CPU ticks of the whole machine, all cores (`cpu` line of /proc/stat less idle and
/// iowait): with the system's and the SIPps' own ticks it shows what else ran during a step.
fn machine_busy_ticks() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    total.saturating_sub(v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0))
}

/// Datagrams dropped on a full receive buffer by the UDP sockets bound to `ports` on
/// 127.0.0.1 (or the wildcard). A socket's count dies with it, so `DropWatch` samples
/// while the step runs.
fn udp_drops(ports: &[u16]) -> HashMap<u16, u64> {
    ports
        .iter()
        .filter_map(|&p| Some((p, udp_socket_drops(p)?)))
        .collect()
}

/// One UDP socket's drop counter, found by an exact sock_diag lookup on its local port
/// (`None`: nothing bound there). Not /proc/net/udp: that file re-walks the whole socket
/// table for every page it prints, which with the switch's thousands of media sockets
/// cost the bench 30–45 % of a core at 10 reads a second, taken from the system under
/// test on this 2-core machine.
fn udp_socket_drops(port: u16) -> Option<u64> {
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType, netlink};
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const INET_DIAG_SKMEMINFO: u16 = 7;
    const SK_MEMINFO_DROPS: usize = 8;
    const REQ_LEN: usize = 16 + 56;
    let fd = rustix::net::socket(
        AddressFamily::NETLINK,
        SocketType::RAW,
        Some(netlink::SOCK_DIAG),
    )
    .ok()?;
    // nlmsghdr, then inet_diag_req_v2. The lookup takes the local side as the
    // destination (udp_dump_one → __udp4_lib_lookup(src, sport, dst, dport)).
    let mut req = Vec::with_capacity(REQ_LEN);
    req.extend_from_slice(&(REQ_LEN as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    req.extend_from_slice(&[2, 17, 1 << (INET_DIAG_SKMEMINFO - 1), 0]); // AF_INET, UDP, ext
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u16.to_be_bytes()); // sport: any remote port
    req.extend_from_slice(&port.to_be_bytes()); // dport: the local port
    req.extend_from_slice(&[0; 16]); // src: any remote address
    req.extend_from_slice(&[127, 0, 0, 1]);
    req.extend_from_slice(&[0; 12]);
    req.extend_from_slice(&0u32.to_ne_bytes()); // interface
    req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
    rustix::net::sendto(
        &fd,
        &req,
        SendFlags::empty(),
        &netlink::SocketAddrNetlink::new(0, 0),
    )
    .ok()?;
    let mut buf = vec![0u8; 8192];
    let (_, n) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty()).ok()?;
    let msg = buf.get(..n)?;
    let u16_at = |o: usize| Some(u16::from_ne_bytes(msg.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_ne_bytes(msg.get(o..o + 4)?.try_into().ok()?));
    // An NLMSG_ERROR (nothing bound there) or anything else is not an answer.
    if u16_at(4)? != SOCK_DIAG_BY_FAMILY {
        return None;
    }
    let len = (u32_at(0)? as usize).min(n);
    // Attributes follow the 72-byte inet_diag_msg, each 4-byte aligned.
    let mut at = 16 + 72;
    while at + 4 <= len {
        let (rta_len, rta_type) = (u16_at(at)? as usize, u16_at(at + 2)?);
        if rta_len < 4 {
            return None;
        }
        if rta_type == INET_DIAG_SKMEMINFO {
            return u32_at(at + 4 + 4 * SK_MEMINFO_DROPS).map(u64::from);
        }
        at += (rta_len + 3) & !3;
    }
    None
}

/// Samples `udp_drops` for the SIP sockets of a step every 100 ms and keeps each port's
/// highest count (the counters only grow while a socket lives).
struct DropWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<HashMap<u16, u64>>,
}

impl DropWatch {
    fn start(ports: Vec<u16>) -> DropWatch {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let base = udp_drops(&ports);
        let task = tokio::spawn(async move {
            let mut max: HashMap<u16, u64> = HashMap::new();
            loop {
                for (port, d) in udp_drops(&ports) {
                    let m = max.entry(port).or_insert(0);
                    *m = (*m).max(d.saturating_sub(base.get(&port).copied().unwrap_or(0)));
                }
                if *stopped.borrow() {
                    return max;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), stopped.changed()).await;
            }
        });
        DropWatch { stop, task }
    }

    async fn finish(self) -> u64 {
        let _ = self.stop.send(true);
        self.task.await.map_or(0, |m| m.values().sum())
    }
}

async fn wait_udp_bound(port: u16, child: &mut Child, what: &str, log: &Path) -> R<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while udp_socket_drops(port).is_none() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited ({status}) before binding port {port}:\n{}",
                tail(&std::fs::read_to_string(log).unwrap_or_default(), 3000)
            )
            .into());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not bind UDP port {port} within 20 s").into());
        }
        // Readiness poll: /proc has no change notification for socket tables.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// An even port P with P and P+2 free (SIPp uses P for audio and P+2 for video).
fn free_media_port() -> u16 {
    loop {
        let port = free_udp_port() & !1;
        let Some(video) = port.checked_add(2) else {
            continue;
        };
        let a = std::net::UdpSocket::bind(("127.0.0.1", port));
        let b = std::net::UdpSocket::bind(("127.0.0.1", video));
        if a.is_ok() && b.is_ok() {
            return port;
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

async fn kill_pids(signal: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

// ---------------------------------------------------------------------------------------------
// RTP

/// The first `ms` of A-law audio in the RTP payloads of the pcap at `src` (classic libpcap,
/// Ethernet, IPv4/UDP/RTP), written raw to `dst` for SIPp's `rtp_stream`; returns the RTP
/// packets SIPp will send for it (20 ms, 160 bytes each).
fn alaw_from_pcap(src: &Path, dst: &Path, ms: u64) -> R<usize> {
    const LINKTYPE_ETHERNET: u64 = 1;
    let data = std::fs::read(src)?;
    let le = match data.get(..4) {
        Some([0xd4, 0xc3, 0xb2, 0xa1]) => true,
        Some([0xa1, 0xb2, 0xc3, 0xd4]) => false,
        _ => return Err(format!("{}: not a microsecond pcap", src.display()).into()),
    };
    let u32_at = |o: usize| -> Option<u64> {
        let b: [u8; 4] = data.get(o..o + 4)?.try_into().ok()?;
        Some(u64::from(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }))
    };
    if u32_at(20) != Some(LINKTYPE_ETHERNET) {
        return Err(format!("{}: not an Ethernet capture", src.display()).into());
    }
    let wanted = (ms * 8) as usize;
    let mut out = Vec::with_capacity(wanted);
    let mut off = 24;
    while out.len() < wanted && off + 16 <= data.len() {
        let Some(incl) = u32_at(off + 8) else { break };
        let frame = data
            .get(off + 16..off + 16 + incl as usize)
            .unwrap_or_default();
        off += 16 + incl as usize;
        // Ethernet (14), IPv4 (IHL words), UDP (8), RTP (12 + 4 per CSRC).
        let Some(ip) = frame.get(14..) else { continue };
        let ihl = usize::from(ip.first().map_or(0, |b| b & 0x0f)) * 4;
        let Some(rtp) = ip.get(ihl + 8..) else {
            continue;
        };
        let csrcs = usize::from(rtp.first().map_or(0, |b| b & 0x0f));
        if let Some(payload) = rtp.get(12 + 4 * csrcs..) {
            out.extend_from_slice(payload);
        }
    }
    if out.len() < wanted {
        return Err(format!("{}: holds less than {ms} ms of audio", src.display()).into());
    }
    out.truncate(wanted);
    std::fs::write(dst, &out)?;
    Ok(wanted / 160)
}

// ---------------------------------------------------------------------------------------------
// Systems under test

/// Kamailio or the switch, wrapped in `timeout` (bounded lifetime). Dropping it kills every
/// process of the tree by pid.
struct Sut {
    system: System,
    /// The `timeout` wrapper; the system is its child.
    child: Child,
    wrapper_pid: u32,
    /// Where the UAC sends (the system's SIP UDP address).
    addr: SocketAddr,
    uas_port: u16,
    uac_port: u16,
    /// The switch's HTTP API (`/metrics`, `/health`); None for Kamailio.
    http: Option<SocketAddr>,
    dir: PathBuf,
    log: PathBuf,
}

impl Sut {
    async fn start(system: System, s: &Settings, work: &Path) -> R<Sut> {
        let dir = work.join(system.name());
        std::fs::create_dir_all(&dir)?;
        let uas_port = free_udp_port();
        let uac_port = free_udp_port();
        let lifetime = format!("{}s", s.deadline.as_secs() + 60);
        let mut cmd = Command::new("timeout");
        cmd.args(["-s", "TERM", "-k", "5", &lifetime]);
        // Connection tracking, once the switch's in-kernel forwarding turned it on, costs
        // every packet on the host: only a switch forwarding in the kernel runs with it.
        if !(system == System::Switchyard && s.kernel_forwarding) {
            let _ = std::process::Command::new("nft")
                .args(["delete", "table", "ip", media::net::kernel::NFT_TABLE])
                .stderr(std::process::Stdio::null())
                .status();
        }
        match system {
            System::Kamailio => Self::kamailio(cmd, s, dir, uas_port, uac_port).await,
            System::Switchyard => Self::switchyard(cmd, s, dir, uas_port, uac_port).await,
        }
    }

    async fn kamailio(
        mut cmd: Command,
        s: &Settings,
        dir: PathBuf,
        uas_port: u16,
        uac_port: u16,
    ) -> R<Sut> {
        let port = free_udp_port();
        let log = dir.join("kamailio.log");
        cmd.arg("kamailio")
            .args(["-DD", "-E", "-f", KAMAILIO_CFG])
            .arg("-l")
            .arg(format!("udp:127.0.0.1:{port}"))
            .arg("-A")
            .arg(format!("UAS_URI=\"sip:127.0.0.1:{uas_port}\""))
            .arg("-Y")
            .arg(&dir)
            .arg("-w")
            .arg(&dir)
            .args(&s.kamailio_args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("kamailio.out"))?)
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn kamailio: {e}"))?;
        let wrapper_pid = child.id().ok_or("kamailio exited at once")?;
        wait_udp_bound(port, &mut child, "kamailio", &log).await?;
        Ok(Sut {
            system: System::Kamailio,
            child,
            wrapper_pid,
            addr: ([127, 0, 0, 1], port).into(),
            uas_port,
            uac_port,
            http: None,
            dir,
            log,
        })
    }

    async fn switchyard(
        mut cmd: Command,
        s: &Settings,
        dir: PathBuf,
        uas_port: u16,
        uac_port: u16,
    ) -> R<Sut> {
        let plan = dir.join("plan.toml");
        std::fs::write(
            &plan,
            "[[rules]]\nname = \"transit\"\nto = { prefix = \"+1\" }\ntrunks = [\"far\"]\n",
        )?;
        let mut config = SwitchConfig::new(([127, 0, 0, 1], uas_port).into())
            // Away from the ephemeral range SIPp's ports come from; room for 5000 calls.
            .rtp_ports(10000, 29999)
            .rtp(if s.kernel_forwarding {
                "kernel_forwarding = true"
            } else {
                ""
            })
            .rtp(&format!("prebind_pairs = {}", s.prebind))
            // The bench's calls have no webhook_url: as a transit carrier would run it.
            .webhooks(&format!("record_without_url = {}", s.record_events))
            .extra(&format!(
                "[node]\nworker_threads = {workers}\n\n\
                 [dialplan]\nfile = {plan:?}\n\n\
                 [[trunks]]\nname = \"uac\"\nuri = \"sip:127.0.0.1:{uac_port}\"\n\
                 inbound_cidrs = [\"127.0.0.1/32\"]\n",
                plan = plan.display().to_string(),
                workers = s.switch_workers,
            ));
        config.trunk_name = "far".to_owned();
        if let Some(url) = &s.db_url {
            config = config.database_url(url);
        }
        let config_path = dir.join("switchyard.toml");
        std::fs::write(&config_path, config.render(&dir.join("switchyard.db")))?;
        let log = dir.join("switch.log");
        cmd.arg(switch_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(&dir)
            .env("RUST_LOG", &s.switch_log)
            // The deployment setting the README recommends (unless the caller set one).
            .env(
                "MIMALLOC_PURGE_DELAY",
                std::env::var("MIMALLOC_PURGE_DELAY").unwrap_or_else(|_| "1000".to_owned()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn switchyard: {e}"))?;
        let wrapper_pid = child.id().ok_or("switchyard exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(l) = parse_listening(&line) {
                    return Some(l);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(listening) = listening else {
            let _ = child.kill().await;
            return Err(format!(
                "switch did not report listening; log:\n{}",
                tail(&std::fs::read_to_string(&log).unwrap_or_default(), 4000)
            )
            .into());
        };
        // Keep draining stdout so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Sut {
            system: System::Switchyard,
            child,
            wrapper_pid,
            addr: listening.sip_udp,
            uas_port,
            uac_port,
            http: Some(listening.http),
            dir,
            log,
        })
    }

    /// The system's processes (the wrapper excluded).
    fn pids(&self) -> Vec<u32> {
        process_tree(self.wrapper_pid)
            .into_iter()
            .filter(|p| *p != self.wrapper_pid)
            .collect()
    }

    fn thread_ticks(&self) -> HashMap<String, u64> {
        ticks_by_thread_name(&self.pids())
    }

    fn cpu_ticks(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|p| proc_stat(p).map(|(_, t)| t))
            .sum()
    }

    /// `switchyard_rtp_packets_received_total` (both legs, added when a call ends).
    async fn rtp_packets(&self) -> Option<u64> {
        let http = self.http?;
        let text = reqwest::get(format!("http://{http}/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("switchyard_rtp_packets_received_total "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits (bounded) until the switch has no live call; returns how many are left.
    async fn settle(&self) -> Option<u64> {
        let http = self.http?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let live = async {
                let v: serde_json::Value = reqwest::get(format!("http://{http}/health"))
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                v["live_calls"].as_u64()
            }
            .await;
            if live == Some(0) || Instant::now() > deadline {
                return live;
            }
            // /health has no change notification: poll.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM to the system (Kamailio's main process stops its workers), then SIGKILL to
    /// whatever is left of the tree.
    async fn stop(mut self) {
        // Identified by start time too: once the wrapper is reaped, a pid could be reused.
        let procs: Vec<(u32, u64)> = self
            .pids()
            .into_iter()
            .filter_map(|p| proc_start_time(p).map(|t| (p, t)))
            .collect();
        if let Some((main, _)) = procs.first() {
            kill_pids("TERM", &[*main]).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let left: Vec<u32> = procs
            .into_iter()
            .filter(|(p, t)| proc_start_time(*p) == Some(*t))
            .map(|(p, _)| p)
            .collect();
        kill_pids("KILL", &left).await;
        let _ = self.child.kill().await;
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        // Reached when the bench fails or times out before `stop`: kill the tree by pid.
        // Only while the wrapper is unreaped (its pid, and so the tree, is still ours).
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pids: Vec<String> = process_tree(self.wrapper_pid)
            .into_iter()
            .filter(|p| proc_stat(*p).is_some())
            .map(|p| p.to_string())
            .collect();
        if !pids.is_empty() {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// SIPp

struct SippRun {
    child: Child,
    stat_file: PathBuf,
    stderr_file: PathBuf,
}

#[derive(Debug, Clone, Copy, Default)]
struct SippStats {
    exit_code: Option<i32>,
    successful: u64,
    failed: u64,
    retransmissions: u64,
    /// Messages for no or a finished call (e.g. a retransmitted 200 after the call ended).
    stray: u64,
    cpu_ticks: u64,
}

#[allow(clippy::too_many_arguments)]
fn spawn_sipp(
    dir: &Path,
    tag: &str,
    scenario: &str,
    port: u16,
    remote: Option<SocketAddr>,
    extra: &[String],
    timeout: Duration,
) -> R<SippRun> {
    let stat_file = dir.join(format!("{tag}-stat.csv"));
    let stderr_file = dir.join(format!("{tag}-stderr.log"));
    let mut cmd = Command::new("sipp");
    if let Some(r) = remote {
        cmd.arg(r.to_string());
    }
    cmd.arg("-sf")
        .arg(Path::new(SCENARIO_DIR).join(scenario))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_media_port().to_string()])
        .args(["-buff_size", "4194304"])
        .args(["-timeout", &format!("{}s", timeout.as_secs().max(1))])
        .args(["-timeout_error", "-nostdin", "-aa"])
        .args(["-trace_stat", "-fd", "1", "-stf"])
        .arg(&stat_file)
        .args(extra)
        .current_dir(dir)
        .stdin(Stdio::null())
        // SIPp redraws its screen on stdout: nobody reads it.
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_file)?)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| format!("spawn sipp: {e}"))?;
    Ok(SippRun {
        child,
        stat_file,
        stderr_file,
    })
}

impl SippRun {
    /// Waits up to `grace` for SIPp to exit on its own, else SIGTERM (it writes its final
    /// statistics) and then SIGKILL. Its CPU time comes from this process's reaped-children
    /// counters, so no other child may be reaped meanwhile.
    async fn finish(mut self, grace: Duration) -> SippStats {
        let before = reaped_children_ticks();
        let code = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(st)) => st.code(),
            _ => {
                if let Some(pid) = self.child.id() {
                    kill_pids("TERM", &[pid]).await;
                }
                match tokio::time::timeout(Duration::from_secs(3), self.child.wait()).await {
                    Ok(Ok(st)) => st.code(),
                    _ => {
                        let _ = self.child.kill().await;
                        None
                    }
                }
            }
        };
        let cpu_ticks = reaped_children_ticks().saturating_sub(before);
        let mut stats = read_stat(&self.stat_file).unwrap_or_default();
        stats.exit_code = code;
        stats.cpu_ticks = cpu_ticks;
        stats
    }
}

/// The counters from the last row of SIPp's `;`-separated stat file.
fn read_stat(path: &Path) -> Option<SippStats> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let col = |name: &str| -> u64 {
        header
            .iter()
            .position(|h| *h == name)
            .and_then(|i| last.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Some(SippStats {
        exit_code: None,
        successful: col("SuccessfulCall(C)"),
        failed: col("FailedCall(C)"),
        retransmissions: col("Retransmissions(C)"),
        stray: col("OutOfCallMsgs(C)") + col("DeadCallMsgs(C)"),
        cpu_ticks: 0,
    })
}

// ---------------------------------------------------------------------------------------------
// Steps

#[derive(Debug, Clone)]
struct Step {
    system: System,
    mode: Mode,
    offered: f64,
    calls: u64,
    limit: u64,
    ok_per_s: f64,
    secs: f64,
    uac: SippStats,
    uas: SippStats,
    sut_ticks: u64,
    /// The system's CPU ticks by thread name, largest first.
    threads: Vec<(String, u64)>,
    /// Every process's CPU on the machine during the step.
    machine_ticks: u64,
    /// SIP datagrams the kernel dropped on a full receive buffer during the step.
    drops: u64,
    sut_alive: bool,
    /// RTP packets the switch received per successful call (None: Kamailio, or no RTP).
    rtp_per_call: Option<f64>,
    /// Calls still live in the switch 10 s after the step.
    leftover: Option<u64>,
    clean: bool,
}

impl Step {
    fn failed(&self) -> u64 {
        self.uac.failed + self.uas.failed
    }

    fn cpu_us_per_call(&self) -> f64 {
        self.sut_ticks as f64 * TICK_US / self.uac.successful.max(1) as f64
    }

    /// CPU used by anything but the system and the two SIPps (builds, other benches).
    fn other_ticks(&self) -> u64 {
        self.machine_ticks
            .saturating_sub(self.sut_ticks + self.uac.cpu_ticks + self.uas.cpu_ticks)
    }

    fn pct(&self, ticks: u64) -> f64 {
        ticks as f64 * TICK_US / 1e6 / self.secs.max(1e-3) * 100.0
    }
}

async fn run_step(sut: &mut Sut, mode: Mode, rate: f64, s: &Settings, work: &Path) -> R<Step> {
    let dir = work.join(format!("{}-{}-{rate}", sut.system.name(), mode.name()));
    std::fs::create_dir_all(&dir)?;
    let (uac_sf, uas_sf, hold_ms) = match mode {
        Mode::NoRtp => ("bench_transit_uac.xml", "bench_transit_uas.xml", s.hold_ms),
        Mode::Rtp => {
            // The scenarios name the audio relative to SIPp's working directory (the step's).
            std::fs::copy(work.join(AUDIO_NAME), dir.join(AUDIO_NAME))?;
            (
                "bench_transit_uac_rtp.xml",
                "bench_transit_uas_rtp.xml",
                s.rtp_ms,
            )
        }
    };
    let hold = Duration::from_millis(hold_ms);
    let calls = (rate * s.seconds).round().max(1.0) as u64;
    let limit = s
        .limit
        .unwrap_or_else(|| (rate * (hold.as_secs_f64() + 2.0)).ceil() as u64)
        .max(10);
    // The run's bound: the offered time at a quarter of the rate, plus the calls' own length.
    let timeout = Duration::from_secs_f64(s.seconds * 4.0 + hold.as_secs_f64() + 30.0);

    let mut uas = spawn_sipp(
        &dir,
        "uas",
        uas_sf,
        sut.uas_port,
        None,
        &["-m".into(), calls.to_string()],
        timeout,
    )?;
    wait_udp_bound(sut.uas_port, &mut uas.child, "sipp UAS", &uas.stderr_file).await?;
    let rtp_before = sut.rtp_packets().await;
    let sut_before = sut.cpu_ticks();
    let threads_before = sut.thread_ticks();
    let machine_before = machine_busy_ticks();
    // The system's SIP socket (Kamailio's is the whole system's only one) and the SIPps'.
    let drop_watch = DropWatch::start(vec![sut.addr.port(), sut.uas_port, sut.uac_port]);
    let started = Instant::now();
    let uac = spawn_sipp(
        &dir,
        "uac",
        uac_sf,
        sut.uac_port,
        Some(sut.addr),
        &[
            "-s".into(),
            CALLED.into(),
            "-r".into(),
            format!("{rate}"),
            "-rp".into(),
            "1000".into(),
            "-m".into(),
            calls.to_string(),
            "-l".into(),
            limit.to_string(),
            "-d".into(),
            hold_ms.to_string(),
        ],
        timeout,
    )?;
    let uac = uac.finish(timeout + Duration::from_secs(10)).await;
    let secs = started.elapsed().as_secs_f64();
    // Every call the UAC finished has had its BYE answered: the system's work is done.
    let sut_ticks = sut.cpu_ticks().saturating_sub(sut_before);
    let mut threads: Vec<(String, u64)> = sut
        .thread_ticks()
        .into_iter()
        .map(|(name, t)| {
            let before = threads_before.get(&name).copied().unwrap_or(0);
            (name, t.saturating_sub(before))
        })
        .filter(|(_, t)| *t > 0)
        .collect();
    threads.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    // The UAS ends after its last call's time-wait (500 ms) once it has seen every call.
    let uas = uas.finish(Duration::from_secs(5)).await;
    let machine_ticks = machine_busy_ticks().saturating_sub(machine_before);
    let drops = drop_watch.finish().await;
    let leftover = sut.settle().await;
    let rtp_per_call = match (mode, rtp_before, sut.rtp_packets().await) {
        (Mode::Rtp, Some(a), Some(b)) => {
            Some(b.saturating_sub(a) as f64 / uac.successful.max(1) as f64)
        }
        _ => None,
    };
    let sut_alive = sut.alive();
    let ok_per_s = uac.successful as f64 / (secs - hold.as_secs_f64()).max(1e-3);
    let clean = sut_alive
        && uac.exit_code == Some(0)
        && uas.exit_code == Some(0)
        && uac.failed == 0
        && uas.failed == 0
        && uac.successful == calls
        && leftover.unwrap_or(0) == 0
        && ok_per_s >= 0.9 * rate;
    Ok(Step {
        system: sut.system,
        mode,
        offered: rate,
        calls,
        limit,
        ok_per_s,
        secs,
        uac,
        uas,
        sut_ticks,
        threads,
        machine_ticks,
        drops,
        sut_alive,
        rtp_per_call,
        leftover,
        clean,
    })
}

const HEADER: &str = "system      mode     offer  calls  limit     ok/s  failed  retrans  stray  drops  cpu-us/call   sys%   uac%   uas% other%  rtp/call  exit  clean";

fn print_step(st: &Step) {
    let exit = |c: Option<i32>| c.map_or_else(|| "-".to_owned(), |c| c.to_string());
    println!(
        "{:<10}  {:<6} {:>6.0} {:>6} {:>6} {:>8.0} {:>7} {:>8} {:>6} {:>6} {:>12.1} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>9}  {:>4}  {}{}{}",
        st.system.name(),
        st.mode.name(),
        st.offered,
        st.calls,
        st.limit,
        st.ok_per_s,
        st.failed(),
        st.uac.retransmissions + st.uas.retransmissions,
        st.uac.stray + st.uas.stray,
        st.drops,
        st.cpu_us_per_call(),
        st.pct(st.sut_ticks),
        st.pct(st.uac.cpu_ticks),
        st.pct(st.uas.cpu_ticks),
        st.pct(st.other_ticks()),
        st.rtp_per_call
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.0}")),
        format!("{}/{}", exit(st.uac.exit_code), exit(st.uas.exit_code)),
        if st.clean { "yes" } else { "NO" },
        if st.sut_alive { "" } else { "  (system died)" },
        match st.leftover {
            Some(n) if n > 0 => format!("  ({n} calls still live)"),
            _ => String::new(),
        },
    );
}

/// One system's ramp within an interleaved run.
struct Lane {
    system: System,
    sut: Option<Sut>,
    unclean_in_row: usize,
}

/// Starts each system in `systems` and runs their ramps step by step, taking turns at every
/// rate (the first system goes first at even steps, last at odd ones): drift on the machine
/// then lands on both sides alike instead of on whichever ramp ran later. A system idles
/// while the other's step runs.
async fn ramps(systems: &[System], s: &Settings, work: &Path) -> R<Vec<Step>> {
    let mut lanes = Vec::new();
    for &system in systems {
        let sut = match Sut::start(system, s, work).await {
            Ok(sut) => sut,
            Err(e) => {
                eprintln!("{}: {e}", system.name());
                continue;
            }
        };
        println!(
            "\n== {}: SIP at {}, UAS port {}, UAC port {}, dir {} ==",
            system.name(),
            sut.addr,
            sut.uas_port,
            sut.uac_port,
            sut.dir.display()
        );
        // Background CPU (Kamailio's timer processes, the switch's housekeeping) for reference.
        let idle_before = sut.cpu_ticks();
        tokio::time::sleep(IDLE_WINDOW).await;
        let idle = sut.cpu_ticks().saturating_sub(idle_before);
        println!(
            "idle CPU {:.1} % of a core",
            idle as f64 * TICK_US / 1e6 / IDLE_WINDOW.as_secs_f64() * 100.0
        );
        lanes.push(Lane {
            system,
            sut: Some(sut),
            unclean_in_row: 0,
        });
    }
    let mut out = Vec::new();
    println!("{HEADER}");
    for &mode in &s.modes {
        if mode == Mode::Rtp {
            let kept = alaw_from_pcap(Path::new(PCAP_SRC), &work.join(AUDIO_NAME), s.rtp_ms)?;
            println!(
                "RTP: {kept} packets per call and direction ({} ms); the switch should receive {} per call",
                s.rtp_ms,
                2 * kept
            );
        }
        let rates = match mode {
            Mode::NoRtp => &s.rates,
            Mode::Rtp => &s.rtp_rates,
        };
        for lane in &mut lanes {
            lane.unclean_in_row = 0;
        }
        for (i, &rate) in rates.iter().enumerate() {
            let order: Vec<usize> = if i % 2 == 0 {
                (0..lanes.len()).collect()
            } else {
                (0..lanes.len()).rev().collect()
            };
            for li in order {
                let Some(lane) = lanes.get_mut(li) else {
                    continue;
                };
                if s.stop_after > 0 && lane.unclean_in_row >= s.stop_after {
                    continue;
                }
                let Some(sut) = lane.sut.as_mut() else {
                    continue;
                };
                let step = run_step(sut, mode, rate, s, work).await?;
                print_step(&step);
                if step.threads.len() > 1 {
                    let calls = step.uac.successful.max(1) as f64;
                    let parts: Vec<String> = step
                        .threads
                        .iter()
                        .map(|(name, t)| format!("{name} {:.0}", *t as f64 * TICK_US / calls))
                        .collect();
                    println!("    us/call by thread: {}", parts.join(", "));
                }
                if step.clean {
                    lane.unclean_in_row = 0;
                } else {
                    eprintln!("  {} log tail:\n{}", lane.system.name(), sut.log_tail(8));
                    lane.unclean_in_row += 1;
                    if s.stop_after > 0 && lane.unclean_in_row >= s.stop_after {
                        eprintln!(
                            "  {}: {} unclean steps in a row; rest of its ramp skipped",
                            lane.system.name(),
                            lane.unclean_in_row
                        );
                    }
                }
                let alive = step.sut_alive;
                out.push(step);
                if !alive {
                    eprintln!(
                        "  {} is no longer running; its ramp stopped",
                        lane.system.name()
                    );
                    if let Some(sut) = lane.sut.take() {
                        sut.stop().await;
                    }
                }
            }
        }
    }
    for lane in &mut lanes {
        if let Some(sut) = lane.sut.take() {
            sut.stop().await;
        }
    }
    Ok(out)
}

fn best_clean(steps: &[Step], system: System, mode: Mode) -> Option<&Step> {
    steps
        .iter()
        .filter(|st| st.system == system && st.mode == mode && st.clean)
        .max_by(|a, b| a.offered.total_cmp(&b.offered))
}

async fn run(s: Settings) -> R<()> {
    let work = tempfile::Builder::new().prefix("transit-bench").tempdir()?;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start: {} ({} CPUs)",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "transit bench: {} s per step, no-RTP rates {:?}, RTP rates {:?} ({} ms of RTP per call), work dir {}",
        s.seconds,
        s.rates,
        s.rtp_rates,
        s.rtp_ms,
        work.path().display()
    );
    // Connection tracking, once the switch's in-kernel forwarding turned it on, would cost
    // Kamailio's packets too while both run: then the ramps run one after the other.
    let groups: Vec<Vec<System>> = if s.kernel_forwarding || !s.interleave {
        s.systems.iter().map(|&sys| vec![sys]).collect()
    } else {
        vec![s.systems.clone()]
    };
    let mut steps = Vec::new();
    for group in &groups {
        match ramps(group, &s, work.path()).await {
            Ok(v) => steps.extend(v),
            Err(e) => eprintln!("ramp: {e}"),
        }
    }

    println!("\n==== summary ====");
    println!("{HEADER}");
    for st in &steps {
        print_step(st);
    }
    for &mode in &s.modes {
        let top = match mode {
            Mode::NoRtp => &s.rates,
            Mode::Rtp => &s.rtp_rates,
        }
        .iter()
        .copied()
        .fold(0.0, f64::max);
        let mut best = Vec::new();
        for &system in &s.systems {
            match best_clean(&steps, system, mode) {
                Some(st) => {
                    // What one core would carry at this step's CPU cost: a bound that does
                    // not depend on how much of the machine the SIPps took.
                    let per_core = 1e6 / st.cpu_us_per_call().max(1e-3);
                    println!(
                        "{} {}: highest clean offered rate {:.0} calls/s{} (ok {:.0}/s, {:.1} us CPU per call, ~{:.0} calls/s per core)",
                        system.name(),
                        mode.name(),
                        st.offered,
                        if st.offered >= top {
                            ", the ramp's top step"
                        } else {
                            ""
                        },
                        st.ok_per_s,
                        st.cpu_us_per_call(),
                        per_core,
                    );
                    best.push((system, st.ok_per_s, per_core));
                }
                None => println!("{} {}: no clean step", system.name(), mode.name()),
            }
        }
        let of = |sys: System| best.iter().find(|b| b.0 == sys).map(|b| (b.1, b.2));
        if let (Some(k), Some(sw)) = (of(System::Kamailio), of(System::Switchyard)) {
            println!(
                "{}: switchyard / kamailio: max clean rate {:.2}, CPU capacity {:.2} (target: max clean rate >= 0.50)",
                mode.name(),
                sw.0 / k.0,
                sw.1 / k.1
            );
        }
    }
    if std::env::var_os("TRANSIT_KEEP").is_some() {
        println!("work dir kept: {}", work.keep().display());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("transit bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let deadline = settings.deadline;
    match rt.block_on(async { tokio::time::timeout(deadline, run(settings)).await }) {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("bench failed: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("bench exceeded its {deadline:?} deadline");
            std::process::ExitCode::FAILURE
        }
    }
}
