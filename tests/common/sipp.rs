//! SIPp as a child process: the carrier (UAS) or a caller (UAC) for end-to-end tests.
//!
//! Every run gets its own free SIP port, its own media port and a tempdir for SIPp's logs, and
//! is bounded by `-timeout` (with `-timeout_error`, so hitting it is a failure) and by a guard
//! in `wait` (SIPp was once seen ignoring `-timeout` while stuck on a retransmitting message).
//!
//! Carrier scenarios in `tests/sipp/` (each proven against SIPp in `tests/sipp_selftest.rs`):
//! - `uas_answer_rtp.xml`: 100, 180, 200 answering PCMA (PT 8, because the replayed
//!   `/usr/share/sip-tester/g711a.pcap` is PCMA), ACK, replay (~4.7 s of RTP from
//!   `media_addr()`), wait for BYE.
//! - `uas_answer_hold.xml`: 180, 200 (PCMU), ACK, wait for BYE (bounded by `-timeout` only).
//! - `uas_remote_bye.xml`: 180, 200 (PCMU), ACK, pause `-d` (`pause_ms`, default 1000), BYE.
//! - `uas_busy.xml` (486), `uas_decline.xml` (603), `uas_unavailable.xml` (480): 100, final, ACK.
//! - `uas_ring_no_answer.xml`: 100, 180, wait for CANCEL; 200 to it, 487 to the INVITE, ACK.
//! - `uas_cancel_race.xml`: 100, 180, CANCEL arrives; 200 to the INVITE, then 200 to the
//!   CANCEL; expects ACK and BYE.
//! - `uas_digest.xml` / `uas_digest_qop.xml`: 401 (realm `carrier.test`, MD5, without / with
//!   qop=auth), ACK, INVITE with Authorization checked for user / secret: 180, 200 (PCMU), ACK,
//!   wait for BYE; a wrong digest gets 403 and SIPp exits non-zero.
//!
//! The 200 answers carry no telephone-event: the offer's PT for it is not known in advance.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::{Child, Command};

/// SIPp's exit code when it cannot bind a socket (another process took the port we probed).
const EXIT_BIND_ERROR: i32 = 254;
const SPAWN_ATTEMPTS: usize = 8;
const READY_DEADLINE: Duration = Duration::from_secs(10);

/// Directory holding the scenario files.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sipp")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Uas,
    Uac(SocketAddr),
}

/// Options for one SIPp run; `Sipp::uas`/`Sipp::uac` cover the common cases.
#[derive(Debug, Clone)]
pub struct SippBuilder {
    scenario: String,
    role: Role,
    calls: u32,
    service: String,
    pause_ms: u64,
    timeout: Duration,
    tcp: bool,
    ip: IpAddr,
    extra: Vec<String>,
    /// Run inside this network namespace (`ip netns exec`).
    netns: Option<String>,
}

impl SippBuilder {
    /// `scenario` is a file in `tests/sipp/` when it ends in `.xml`, else a built-in (`-sn`).
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            role: Role::Uas,
            calls: 1,
            service: "+14155552671".to_owned(),
            pause_ms: 1000,
            timeout: Duration::from_secs(60),
            tcp: false,
            ip: IpAddr::from([127, 0, 0, 1]),
            extra: Vec::new(),
            netns: None,
        }
    }

    /// Makes this a caller towards `remote` (the positional SIPp argument).
    pub fn remote(mut self, remote: SocketAddr) -> Self {
        self.role = Role::Uac(remote);
        self
    }

    /// `-m N`: exit after N calls (default 1).
    pub fn calls(mut self, n: u32) -> Self {
        self.calls = n;
        self
    }

    /// `-s`: the user part of the Request-URI a UAC dials (default `+14155552671`).
    pub fn service(mut self, service: &str) -> Self {
        self.service = service.to_owned();
        self
    }

    /// `-d`: length of `<pause/>` without an explicit duration (default 1000 ms).
    pub fn pause_ms(mut self, ms: u64) -> Self {
        self.pause_ms = ms;
        self
    }

    /// `-timeout`: bound on the whole run (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `-au`/`-ap`: credentials for `[authentication]` in UAC scenarios.
    pub fn auth(self, user: &str, password: &str) -> Self {
        self.arg("-au").arg(user).arg("-ap").arg(password)
    }

    /// `-t t1`: one TCP connection instead of UDP.
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// `-i`/`-mi`: the loopback address SIPp binds (default 127.0.0.1), e.g. 127.0.0.3 to
    /// call from a source no trunk trusts.
    pub fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.parse().expect("an IP address");
        self
    }

    /// Runs SIPp inside network namespace `ns` (give it an `ip` of that namespace too).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_owned());
        self
    }

    /// Any other SIPp argument, appended as is.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// Spawns SIPp and returns once its SIP socket is bound (listening for a UAS).
    pub fn spawn(self) -> Sipp {
        let mut last_err = String::new();
        for _ in 0..SPAWN_ATTEMPTS {
            match self.try_spawn() {
                Ok(sipp) => return sipp,
                Err(e) => last_err = e,
            }
        }
        panic!(
            "sipp {} did not start after {SPAWN_ATTEMPTS} attempts: {last_err}",
            self.scenario
        );
    }

    fn try_spawn(&self) -> Result<Sipp, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let port = free_udp_port();
        let media_port = free_media_port();
        let addr = SocketAddr::new(self.ip, port);
        let ip = self.ip.to_string();
        let mut cmd = match &self.netns {
            // `ip netns exec` execs SIPp in place: the pid stays the same.
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, "sipp"]);
                cmd
            }
            None => Command::new("sipp"),
        };
        if let Role::Uac(remote) = self.role {
            cmd.arg(remote.to_string());
        }
        if self.scenario.ends_with(".xml") {
            let path = scenario_dir().join(&self.scenario);
            assert!(path.is_file(), "no scenario file {}", path.display());
            cmd.arg("-sf").arg(path);
        } else {
            cmd.arg("-sn").arg(&self.scenario);
        }
        cmd.args(["-i", &ip, "-p", &port.to_string()])
            .args(["-mi", &ip, "-mp", &media_port.to_string()])
            .args(["-m", &self.calls.to_string()])
            .args(["-s", &self.service])
            .args(["-d", &self.pause_ms.to_string()])
            .args(["-timeout", &format!("{}s", self.timeout.as_secs().max(1))])
            .arg("-timeout_error")
            .arg("-nostdin")
            .arg("-trace_err")
            .arg("-error_file")
            .arg(dir.path().join("errors.log"))
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(dir.path().join("messages.log"))
            .args(&self.extra);
        if self.tcp {
            cmd.args(["-t", "t1"]);
        }
        // Screen output goes to files: a pipe nobody reads would fill up and stall SIPp.
        let stdout = std::fs::File::create(dir.path().join("stdout.log"))
            .map_err(|e| format!("stdout.log: {e}"))?;
        let stderr = std::fs::File::create(dir.path().join("stderr.log"))
            .map_err(|e| format!("stderr.log: {e}"))?;
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| format!("spawn sipp: {e}"))?;
        let pid = child.id().ok_or("sipp exited at once")?;
        let listen = self.role == Role::Uas && self.tcp;
        // A TCP caller binds no UDP socket and listens on nothing: nothing to wait for.
        let early_exit = if self.tcp && self.role != Role::Uas {
            None
        } else {
            wait_bound(&mut child, pid, port, listen, dir.path())?
        };
        Ok(Sipp {
            child: Some(child),
            early_exit,
            addr,
            media_port,
            timeout: self.timeout,
            scenario: self.scenario.clone(),
            dir,
        })
    }
}

/// A running SIPp. Dropping it kills the process (and prints its logs if the test panicked).
#[derive(Debug)]
pub struct Sipp {
    child: Option<Child>,
    early_exit: Option<std::process::ExitStatus>,
    addr: SocketAddr,
    media_port: u16,
    timeout: Duration,
    scenario: String,
    dir: TempDir,
}

/// How a SIPp run ended.
#[derive(Debug, Clone)]
pub struct SippOutcome {
    /// Exit code 0: every call reached the end of the scenario.
    pub success: bool,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// `-trace_err` output: unexpected messages, failed checks.
    pub errors: String,
    /// `-trace_msg` output: every SIP message sent and received.
    pub messages: String,
    /// `-trace_rtt` output (`date_ms;response_time_ms;rtd_no` per call), when asked for.
    pub rtt: String,
}

impl SippOutcome {
    /// Panics with every log when the run failed.
    pub fn assert_success(&self, what: &str) {
        assert!(self.success, "{what}: sipp failed\n{self}");
    }
}

impl std::fmt::Display for SippOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- errors ---\n{}\n--- stderr ---\n{}\n--- messages ---\n{}\n--- stdout (tail) ---\n{}",
            self.exit_code,
            self.errors,
            self.stderr,
            self.messages,
            tail(&self.stdout, 4000)
        )
    }
}

impl Sipp {
    /// Starts the UAS scenario `scenario` (one call) and waits until it listens.
    pub fn uas(scenario: &str) -> Sipp {
        SippBuilder::new(scenario).spawn()
    }

    /// Starts the UAC scenario `scenario` (one call) against `remote`.
    pub fn uac(scenario: &str, remote: SocketAddr) -> Sipp {
        SippBuilder::new(scenario).remote(remote).spawn()
    }

    pub fn builder(scenario: &str) -> SippBuilder {
        SippBuilder::new(scenario)
    }

    /// SIPp's SIP address (what a trunk URI should point at).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `sip:127.0.0.1:PORT`.
    pub fn uri(&self) -> String {
        format!("sip:{}", self.addr)
    }

    /// The address SIPp advertises in its SDP and sends RTP from (`-mi`/`-mp`).
    pub fn media_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.media_port))
    }

    /// The SIP messages exchanged so far (SIPp writes them as it goes).
    pub fn messages_so_far(&self) -> String {
        read_or_empty(&self.dir.path().join("messages.log"))
    }

    /// Waits for SIPp to exit, bounded by its `-timeout` plus a margin; kills it past that.
    pub async fn wait(mut self) -> SippOutcome {
        let guard = self.timeout + Duration::from_secs(10);
        let mut exit_code = self.early_exit.and_then(|s| s.code());
        let mut timed_out = false;
        if let Some(mut child) = self.child.take() {
            match tokio::time::timeout(guard, child.wait()).await {
                Ok(Ok(status)) => exit_code = status.code(),
                Ok(Err(e)) => panic!("waiting for sipp: {e}"),
                Err(_) => {
                    timed_out = true;
                    let _ = child.kill().await;
                }
            }
        }
        let mut outcome = self.outcome(exit_code);
        if timed_out {
            outcome.success = false;
            outcome
                .errors
                .push_str("\n(harness: sipp outlived its guard and was killed)");
        }
        outcome
    }

    fn outcome(&self, exit_code: Option<i32>) -> SippOutcome {
        let p = self.dir.path();
        SippOutcome {
            success: exit_code == Some(0),
            exit_code,
            stdout: read_or_empty(&p.join("stdout.log")),
            stderr: read_or_empty(&p.join("stderr.log")),
            errors: read_or_empty(&p.join("errors.log")),
            messages: read_or_empty(&p.join("messages.log")),
            rtt: std::fs::read_dir(p)
                .ok()
                .and_then(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .find(|e| e.file_name().to_string_lossy().ends_with("_rtt.csv"))
                })
                .map(|e| read_or_empty(&e.path()))
                .unwrap_or_default(),
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            if std::thread::panicking() {
                eprintln!(
                    "==== sipp {} ({}) logs ====\n{}",
                    self.scenario,
                    self.addr,
                    self.outcome(None)
                );
            }
        }
    }
}

/// Waits until SIPp (`pid`) owns its SIP socket. `Ok(Some(status))` when it already exited
/// (a fast UAC may finish before we look; the status is kept for `wait`); `Err` when it could
/// not bind (the caller retries with other ports) or never got ready.
fn wait_bound(
    child: &mut Child,
    pid: u32,
    port: u16,
    tcp_listen: bool,
    dir: &Path,
) -> Result<Option<std::process::ExitStatus>, String> {
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        if socket_bound_by(pid, port, tcp_listen) {
            return Ok(None);
        }
        match child.try_wait() {
            Ok(Some(status)) if status.code() == Some(EXIT_BIND_ERROR) => {
                return Err(format!(
                    "bind failed: {}",
                    read_or_empty(&dir.join("stderr.log"))
                ));
            }
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => {}
            Err(e) => return Err(format!("try_wait: {e}")),
        }
        if Instant::now() > deadline {
            return Err("SIP socket not bound within 10 s".to_owned());
        }
        // Readiness poll: /proc has no change notification for socket tables.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A UDP port that was free a moment ago (bound to :0, then released).
/// A port free for UDP and for TCP on 127.0.0.1 (SIPp over TCP binds its `-p` port for
/// TCP: a UDP-only check let it meet a port a TCP socket held, "errno 98").
pub fn free_udp_port() -> u16 {
    loop {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = sock.local_addr().expect("local_addr").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An even port P with P and P+2 free (SIPp uses P for audio and P+2 for video).
fn free_media_port() -> u16 {
    loop {
        let port = free_udp_port() & !1;
        let Some(video) = port.checked_add(2) else {
            continue;
        };
        let a = UdpSocket::bind(("127.0.0.1", port));
        let b = UdpSocket::bind(("127.0.0.1", video));
        if a.is_ok() && b.is_ok() {
            return port;
        }
    }
}

/// Whether process `pid` owns a socket on local `port`: a bound UDP socket, or a listening
/// TCP socket when `tcp_listen`. Reads the inode from /proc/net/{udp,tcp} and looks for it
/// among the process's file descriptors, so a port taken by someone else does not count.
fn socket_bound_by(pid: u32, port: u16, tcp_listen: bool) -> bool {
    // The process's own view: SIPp may run in another network namespace.
    let table = if tcp_listen {
        format!("/proc/{pid}/net/tcp")
    } else {
        format!("/proc/{pid}/net/udp")
    };
    let Ok(text) = std::fs::read_to_string(table) else {
        return false;
    };
    let wanted_port = format!("{port:04X}");
    let inodes: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = cols.get(1)?;
            let state = cols.get(3)?;
            let inode = cols.get(9)?;
            let (_, p) = local.split_once(':')?;
            // 0A is TCP_LISTEN; UDP sockets have no listen state.
            let state_ok = !tcp_listen || *state == "0A";
            (p == wanted_port && state_ok).then(|| format!("socket:[{inode}]"))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .map(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
            .unwrap_or(false)
    })
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}
