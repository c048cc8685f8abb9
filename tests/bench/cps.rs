//! End-to-end outbound-call benchmark: HTTP API → switch core → DB → SIP UAC → SIPp UAS.
//!
//! Run (release; builds the `switchyard` binary too):
//!
//! ```text
//! cargo bench --bench cps                                  # ramp 100,200,500,1000,2000 cps
//! BENCH_RATE=500 BENCH_CALLS=5000 cargo bench --bench cps  # one step
//! BENCH_PG=1 cargo bench --bench cps                       # also against PostgreSQL
//! ```
//!
//! Environment (all optional):
//! - `BENCH_CALLS` calls per rate step (2000); `BENCH_RATE` one rate or a comma list
//!   (`100,200,500,1000,2000`); `BENCH_CONCURRENCY` in-flight POSTs (256);
//! - `BENCH_HOLD` live calls for the memory phase (1000, 0 skips it); `BENCH_HOLD_RATE` the
//!   rate they are placed at (200);
//! - `BENCH_PG=1` repeats the ramp with `postgres://postgres@127.0.0.1:5432/test`
//!   (`BENCH_PG_URL` overrides); `BENCH_SQLITE_URL` replaces the tempdir SQLite file (e.g. to
//!   put it on another file system); `BENCH_SWITCH_LOG` the switch's `RUST_LOG` (`warn`: per-call
//!   info lines would be part of what is measured); `BENCH_DEADLINE` overall seconds (1200).
//!
//! Rate steps: each step starts a fresh SIPp UAS (`tests/sipp/bench_uas.xml`, `-m N`) that
//! answers and then sends BYE itself after 100 ms. Carrier-side BYE makes a call's life short
//! and independent of the switch's timers (`max_duration` is whole seconds, so a switch BYE
//! would keep rate × 1 s calls and their 50 pkt/s RTP streams live and measure media, not call
//! setup). The bench paces POSTs at the offered rate with at most `BENCH_CONCURRENCY` in
//! flight, waits until `/health` shows no live call, then reads every call's final status.
//! A step is clean when every POST was accepted at ≥ 90 % of the offered rate, every call
//! ended `completed` and SIPp counted no failed call (its `-trace_stat` file and exit code).
//! `complete/s` is completed calls over first POST → `/health` showing 0 live calls, so it
//! includes the 100 ms hold and the tail of the last calls (short steps understate it).
//!
//! Memory phase: a fresh switch, SIPp `bench_uas_hold.xml` (answers, waits for BYE); K calls
//! with `max_duration` 3600 are placed and all reach `in_progress`; the switch's VmRSS
//! (`/proc/PID/status`) before and with the K live calls gives KiB per live call. Then all
//! are hung up via `POST /api/v1/voice/calls/{id}/hangup` and must end `completed`.

#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Semaphore;

type R<T> = Result<T, Box<dyn Error + Send + Sync>>;

const SCENARIO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");
const SWITCH_BIN: &str = env!("CARGO_BIN_EXE_switchyard");
const SIPP_PAUSE_MS: u64 = 100;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn free_udp_port() -> R<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// SIPp

struct Sipp {
    child: Child,
    stat_file: PathBuf,
    dir: PathBuf,
}

impl Sipp {
    /// A UAS on `port` that stops after `calls` calls and after `timeout` in any case.
    fn spawn(dir: &Path, scenario: &str, port: u16, calls: u64, timeout: Duration) -> R<Sipp> {
        std::fs::create_dir_all(dir)?;
        let stat_file = dir.join("stat.csv");
        let media_port = free_udp_port()?;
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(Path::new(SCENARIO_DIR).join(scenario))
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-mi", "127.0.0.1", "-mp", &media_port.to_string()])
            .args(["-buff_size", "4194304"])
            .args(["-m", &calls.to_string()])
            .args(["-d", &SIPP_PAUSE_MS.to_string()])
            .args(["-timeout", &format!("{}s", timeout.as_secs().max(1))])
            .arg("-timeout_error")
            .arg("-nostdin")
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(&stat_file)
            .arg("-trace_err")
            .arg("-error_file")
            .arg(dir.join("errors.log"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log"))?)
            .kill_on_drop(true)
            .spawn()?;
        // SIPp binds asynchronously; wait until its port answers for UDP (bind fails = taken).
        let started = Instant::now();
        while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(format!("sipp did not bind port {port}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Sipp {
            child,
            stat_file,
            dir: dir.to_path_buf(),
        })
    }

    /// Waits up to `grace` for SIPp to exit on its own (`-m` reached), else stops it.
    async fn finish(mut self, grace: Duration) -> SippResult {
        let code = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(st)) => st.code(),
            _ => {
                if let Some(pid) = self.child.id() {
                    let _ = Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .await;
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
        let (successful, failed) = read_stat(&self.stat_file).unwrap_or((None, None));
        let errors = std::fs::read_to_string(self.dir.join("errors.log")).unwrap_or_default();
        SippResult {
            exit_code: code,
            successful,
            failed,
            error_lines: errors.lines().filter(|l| !l.trim().is_empty()).count(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct SippResult {
    exit_code: Option<i32>,
    successful: Option<u64>,
    failed: Option<u64>,
    error_lines: usize,
}

/// `SuccessfulCall(C)` and `FailedCall(C)` from the last row of SIPp's `;`-separated stat file.
fn read_stat(path: &Path) -> R<(Option<u64>, Option<u64>)> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or("empty stat file")?.split(';').collect();
    let last: Vec<&str> = lines.next_back().ok_or("no stat row")?.split(';').collect();
    let col = |name: &str| -> Option<u64> {
        let i = header.iter().position(|h| *h == name)?;
        last.get(i)?.trim().parse().ok()
    };
    Ok((col("SuccessfulCall(C)"), col("FailedCall(C)")))
}

// ---------------------------------------------------------------------------------------------
// The switch

struct Switch {
    child: Child,
    pid: u32,
    http: String,
    key: String,
    dir: PathBuf,
}

impl Switch {
    async fn start(dir: &Path, db_url: &str, trunk_port: u16) -> R<Switch> {
        std::fs::create_dir_all(dir)?;
        let config = format!(
            "[sip]\nlisten = \"127.0.0.1:0\"\nsocket_buffer = 4194304\n\n\
             [http]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_ip_s = 0\nrate_limit_per_key_s = 0\n\n\
             [rtp]\nport_min = 40000\nport_max = 49999\n\n\
             [database]\nurl = {}\n\n\
             [[trunks]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{trunk_port}\"\n\
             numbers = [\"+12025551234\"]\ntenant = \"acme\"\n",
            Value::String(db_url.to_owned())
        );
        let config_path = dir.join("switchyard.toml");
        std::fs::write(&config_path, config)?;
        let log = std::env::var("BENCH_SWITCH_LOG").unwrap_or_else(|_| "warn".to_owned());
        let mut child = Command::new(SWITCH_BIN)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .env("RUST_LOG", &log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("switch.log"))?)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("switch exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let http = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                    continue;
                };
                if v["event"] == "listening" {
                    return v["http"].as_str().map(str::to_owned);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .ok_or_else(|| {
            format!(
                "switch did not report listening; log:\n{}",
                std::fs::read_to_string(dir.join("switch.log")).unwrap_or_default()
            )
        })?;
        // Keep draining stdout so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let out = Command::new(SWITCH_BIN)
            .args(["api-key", "create", "--tenant", "acme", "--role", "owner"])
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            return Err(format!(
                "api-key create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let key = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .ok_or("api-key create printed nothing")?
            .to_owned();
        Ok(Switch {
            child,
            pid,
            http: format!("http://{http}"),
            key,
            dir: dir.to_path_buf(),
        })
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("switch.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(sw: &Switch, concurrency: usize) -> R<Api> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(concurrency)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Api {
            client,
            base: sw.http.clone(),
            key: sw.key.clone(),
        })
    }

    /// Places a call; returns its id.
    async fn place(&self, max_duration: u64) -> R<String> {
        let resp = self
            .client
            .post(format!("{}/api/v1/voice/calls", self.base))
            .header("X-API-Key", &self.key)
            .json(&json!({"to": "+14155552671", "from": "+12025551234", "max_duration": max_duration}))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if status.as_u16() != 201 {
            return Err(format!("POST calls: {status} {body}").into());
        }
        Ok(body["data"]["id"].as_str().ok_or("no data.id")?.to_owned())
    }

    async fn status(&self, id: &str) -> R<String> {
        let body: Value = self
            .client
            .get(format!("{}/api/v1/voice/calls/{id}", self.base))
            .header("X-API-Key", &self.key)
            .send()
            .await?
            .json()
            .await?;
        Ok(body["data"]["status"]
            .as_str()
            .ok_or_else(|| format!("no data.status in {body}"))?
            .to_owned())
    }

    async fn hangup(&self, id: &str) -> R<String> {
        let body: Value = self
            .client
            .post(format!("{}/api/v1/voice/calls/{id}/hangup", self.base))
            .header("X-API-Key", &self.key)
            .send()
            .await?
            .json()
            .await?;
        Ok(body["data"]["status"]
            .as_str()
            .ok_or_else(|| format!("no data.status in {body}"))?
            .to_owned())
    }

    async fn live_calls(&self) -> R<u64> {
        let body: Value = self
            .client
            .get(format!("{}/health", self.base))
            .send()
            .await?
            .json()
            .await?;
        body["live_calls"]
            .as_u64()
            .ok_or_else(|| "no live_calls".into())
    }

    /// Polls `/health` until at most `target` calls are live; returns when, or None at deadline.
    async fn wait_live_at_most(&self, target: u64, deadline: Instant) -> Option<Instant> {
        while Instant::now() < deadline {
            if matches!(self.live_calls().await, Ok(n) if n <= target) {
                return Some(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Final status of each id (errors counted as `error`), `concurrency` requests at a time.
    async fn statuses(&self, ids: &[String], concurrency: usize) -> Vec<String> {
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            let (api, id, sem) = (self.clone(), id.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                api.status(&id).await.unwrap_or_else(|_| "error".to_owned())
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            out.push(t.await.unwrap_or_else(|_| "error".to_owned()));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Placing calls at a rate

struct Placed {
    ids: Vec<String>,
    errors: Vec<String>,
    /// POST round trips of accepted calls.
    latencies: Vec<Duration>,
    /// First send → last send started (the offered-rate window).
    send_window: Duration,
    /// First send → last response.
    accept_window: Duration,
    started: Instant,
}

async fn place_calls(
    api: &Api,
    n: u64,
    rate: f64,
    concurrency: usize,
    max_duration: u64,
) -> Placed {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tasks = Vec::with_capacity(n as usize);
    let mut last_send = started;
    for i in 0..n {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        last_send = Instant::now();
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = api.place(max_duration).await;
            drop(permit);
            (r, t.elapsed(), Instant::now())
        }));
    }
    let send_window = last_send - started;
    let mut placed = Placed {
        ids: Vec::with_capacity(n as usize),
        errors: Vec::new(),
        latencies: Vec::with_capacity(n as usize),
        send_window,
        accept_window: Duration::ZERO,
        started,
    };
    let mut last_done = started;
    for t in tasks {
        match t.await {
            Ok((Ok(id), lat, done)) => {
                placed.ids.push(id);
                placed.latencies.push(lat);
                last_done = last_done.max(done);
            }
            Ok((Err(e), _, done)) => {
                placed.errors.push(e.to_string());
                last_done = last_done.max(done);
            }
            Err(e) => placed.errors.push(e.to_string()),
        }
    }
    placed.accept_window = last_done - started;
    placed
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// Steps

struct StepResult {
    db: &'static str,
    rate: f64,
    calls: u64,
    sent_per_s: f64,
    accepted_per_s: f64,
    completed_per_s: f64,
    statuses: BTreeMap<String, u64>,
    post_errors: usize,
    sipp: SippResult,
    p50: Duration,
    p99: Duration,
    clean: bool,
}

#[allow(clippy::too_many_arguments)]
async fn run_step(
    db: &'static str,
    sw: &Switch,
    api: &Api,
    sipp_port: u16,
    work: &Path,
    rate: f64,
    n: u64,
    concurrency: usize,
) -> R<StepResult> {
    let timeout = Duration::from_secs_f64(n as f64 / rate + 60.0);
    let sipp = Sipp::spawn(
        &work.join(format!("sipp-{db}-{rate}")),
        "bench_uas.xml",
        sipp_port,
        n,
        timeout,
    )?;
    let placed = place_calls(api, n, rate, concurrency, 60).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = api.wait_live_at_most(0, deadline).await;
    let all_done = done.unwrap_or_else(Instant::now);
    let statuses = api.statuses(&placed.ids, 32).await;
    let mut counts = BTreeMap::new();
    for s in statuses {
        *counts.entry(s).or_insert(0u64) += 1;
    }
    let sipp = sipp.finish(Duration::from_secs(5)).await;
    let mut lat = placed.latencies.clone();
    lat.sort();
    let completed = counts.get("completed").copied().unwrap_or(0);
    let clean = done.is_some()
        // Kept up: the switch accepted calls at (nearly) the offered rate.
        && placed.ids.len() as f64 / placed.accept_window.as_secs_f64().max(1e-3) >= 0.9 * rate
        && placed.errors.is_empty()
        && completed == n
        && sipp.failed == Some(0)
        && sipp.exit_code == Some(0);
    if !placed.errors.is_empty() {
        eprintln!(
            "  {} POST errors, first: {}",
            placed.errors.len(),
            placed.errors[0]
        );
    }
    if !clean {
        eprintln!("  switch log tail:\n{}", sw.log_tail(10));
    }
    Ok(StepResult {
        db,
        rate,
        calls: n,
        sent_per_s: n as f64 / placed.send_window.as_secs_f64().max(1e-3),
        accepted_per_s: placed.ids.len() as f64 / placed.accept_window.as_secs_f64().max(1e-3),
        completed_per_s: completed as f64 / (all_done - placed.started).as_secs_f64().max(1e-3),
        statuses: counts,
        post_errors: placed.errors.len(),
        sipp,
        p50: percentile(&lat, 0.50),
        p99: percentile(&lat, 0.99),
        clean,
    })
}

fn print_step(s: &StepResult) {
    let statuses: Vec<String> = s.statuses.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "{:<6} {:>6.0} {:>6} {:>8.0} {:>9.0} {:>10.0} {:>8.1} {:>8.1} {:>11} {:>5} {:>5}  {}{}",
        s.db,
        s.rate,
        s.calls,
        s.sent_per_s,
        s.accepted_per_s,
        s.completed_per_s,
        ms(s.p50),
        ms(s.p99),
        format!(
            "{}/{}",
            s.sipp
                .successful
                .map_or_else(|| "?".to_owned(), |v| v.to_string()),
            s.sipp
                .failed
                .map_or_else(|| "?".to_owned(), |v| v.to_string())
        ),
        s.sipp
            .exit_code
            .map_or_else(|| "-".to_owned(), |c| c.to_string()),
        if s.clean { "yes" } else { "NO" },
        statuses.join(","),
        if s.post_errors > 0 || s.sipp.error_lines > 0 {
            format!(
                " post_errors={} sipp_error_lines={}",
                s.post_errors, s.sipp.error_lines
            )
        } else {
            String::new()
        },
    );
}

const STEP_HEADER: &str = "db      offer  calls  sent/s  accept/s  complete/s  p50(ms)  p99(ms)  sipp ok/fail sippX clean  statuses";

async fn ramp(
    db: &'static str,
    db_url: &str,
    work: &Path,
    rates: &[f64],
    n: u64,
    concurrency: usize,
) -> R<Vec<StepResult>> {
    let sipp_port = free_udp_port()?;
    let sw = Switch::start(&work.join(format!("switch-{db}")), db_url, sipp_port).await?;
    let api = Api::new(&sw, concurrency)?;
    println!("\n== {db}: {n} calls per step, {concurrency} POSTs in flight at most ==");
    println!("{STEP_HEADER}");
    let mut out = Vec::new();
    for &rate in rates {
        let step = run_step(db, &sw, &api, sipp_port, work, rate, n, concurrency).await?;
        print_step(&step);
        out.push(step);
    }
    sw.stop().await;
    Ok(out)
}

struct HoldResult {
    k: u64,
    rss_idle: u64,
    rss_live: u64,
    rss_after: u64,
    answered: u64,
    hung_up_completed: u64,
    hangup_secs: f64,
    sipp: SippResult,
}

async fn hold(work: &Path, k: u64, rate: f64, concurrency: usize) -> R<HoldResult> {
    let sipp_port = free_udp_port()?;
    let dir = work.join("switch-hold");
    let db = format!("sqlite://{}", dir.join("sy.db").display());
    let sw = Switch::start(&dir, &db, sipp_port).await?;
    let api = Api::new(&sw, concurrency)?;
    let sipp = Sipp::spawn(
        &work.join("sipp-hold"),
        "bench_uas_hold.xml",
        sipp_port,
        k,
        Duration::from_secs_f64(k as f64 / rate + 180.0),
    )?;
    // Settle after start-up (pools, first connections) before the idle reading.
    api.live_calls().await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = sw.rss_kib().ok_or("no VmRSS")?;
    println!("\n== memory: {k} live calls placed at {rate}/s ==");
    let placed = place_calls(&api, k, rate, concurrency, 3600).await;
    if !placed.errors.is_empty() {
        eprintln!(
            "  {} POST errors, first: {}",
            placed.errors.len(),
            placed.errors[0]
        );
    }
    // Wait until every call is answered (status in_progress), bounded.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut answered = 0;
    while Instant::now() < deadline {
        let st = api.statuses(&placed.ids, 32).await;
        answered = st.iter().filter(|s| *s == "in_progress").count() as u64;
        if answered == placed.ids.len() as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Let RTP senders and buffers reach steady state before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_live = sw.rss_kib().ok_or("no VmRSS")?;
    println!("  answered {answered}/{k}; VmRSS idle {rss_idle} KiB, live {rss_live} KiB");
    let t = Instant::now();
    let sem = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::new();
    for id in &placed.ids {
        let (api, id, sem) = (api.clone(), id.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            api.hangup(&id)
                .await
                .unwrap_or_else(|e| format!("error: {e}"))
        }));
    }
    let mut hangup_status = BTreeMap::new();
    for task in tasks {
        let s = task.await.unwrap_or_else(|_| "error".to_owned());
        *hangup_status.entry(s).or_insert(0u64) += 1;
    }
    let hangup_secs = t.elapsed().as_secs_f64();
    let _ = api
        .wait_live_at_most(0, Instant::now() + Duration::from_secs(60))
        .await;
    // The hangup reply is the record when the call ended; re-read to check what was stored.
    let finals = api.statuses(&placed.ids, 32).await;
    let hung_up_completed = finals.iter().filter(|s| *s == "completed").count() as u64;
    if hung_up_completed != k {
        eprintln!("  hangup replies: {hangup_status:?}");
        eprintln!("  switch log tail:\n{}", sw.log_tail(10));
    }
    let rss_after = sw.rss_kib().unwrap_or(0);
    let sipp = sipp.finish(Duration::from_secs(5)).await;
    sw.stop().await;
    Ok(HoldResult {
        k,
        rss_idle,
        rss_live,
        rss_after,
        answered,
        hung_up_completed,
        hangup_secs,
        sipp,
    })
}

async fn run() -> R<()> {
    let n = env_u64("BENCH_CALLS", 2000).max(1);
    let concurrency = env_u64("BENCH_CONCURRENCY", 256).max(1) as usize;
    let rates: Vec<f64> = match std::env::var("BENCH_RATE") {
        Ok(s) => s
            .split(',')
            .filter_map(|r| r.trim().parse().ok())
            .filter(|r: &f64| *r > 0.0)
            .collect(),
        Err(_) => vec![100.0, 200.0, 500.0, 1000.0, 2000.0],
    };
    let k = env_u64("BENCH_HOLD", 1000);
    let hold_rate = env_u64("BENCH_HOLD_RATE", 200).max(1) as f64;
    let work = tempfile::tempdir()?;
    println!("work dir {}", work.path().display());

    let sqlite = std::env::var("BENCH_SQLITE_URL").unwrap_or_else(|_| {
        format!(
            "sqlite://{}",
            work.path().join("switch-sqlite").join("sy.db").display()
        )
    });
    let mut steps = ramp("sqlite", &sqlite, work.path(), &rates, n, concurrency).await?;
    if std::env::var("BENCH_PG").is_ok_and(|v| v == "1") {
        let url = std::env::var("BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        steps.extend(ramp("pg", &url, work.path(), &rates, n, concurrency).await?);
    }
    let held = if k > 0 {
        Some(hold(work.path(), k, hold_rate, concurrency).await?)
    } else {
        None
    };

    println!("\n==== summary ====");
    println!("{STEP_HEADER}");
    for s in &steps {
        print_step(s);
    }
    for db in ["sqlite", "pg"] {
        let best = steps
            .iter()
            .filter(|s| s.db == db && s.clean)
            .max_by(|a, b| a.rate.total_cmp(&b.rate));
        match best {
            Some(s) => println!(
                "{db}: highest clean offered rate {:.0} calls/s (accepted {:.0}/s, completed {:.0}/s)",
                s.rate, s.accepted_per_s, s.completed_per_s
            ),
            None if steps.iter().any(|s| s.db == db) => println!("{db}: no clean step"),

            None => {}
        }
    }
    for db in ["sqlite", "pg"] {
        if let Some(s) = steps
            .iter()
            .filter(|s| s.db == db)
            .max_by(|a, b| a.accepted_per_s.total_cmp(&b.accepted_per_s))
        {
            println!(
                "{db}: highest achieved accept rate {:.0} calls/s (offered {:.0}, clean: {})",
                s.accepted_per_s, s.rate, s.clean
            );
        }
    }
    if let Some(h) = held {
        println!(
            "memory: {} live calls: VmRSS idle {} KiB, live {} KiB, after hangup {} KiB => {:.1} KiB per live call; answered {}/{}, completed after API hangup {}/{} ({:.1} s); sipp failed {:?} exit {:?}",
            h.k,
            h.rss_idle,
            h.rss_live,
            h.rss_after,
            h.rss_live.saturating_sub(h.rss_idle) as f64 / h.k as f64,
            h.answered,
            h.k,
            h.hung_up_completed,
            h.k,
            h.hangup_secs,
            h.sipp.failed,
            h.sipp.exit_code
        );
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let deadline = Duration::from_secs(env_u64("BENCH_DEADLINE", 1200));
    match rt.block_on(async { tokio::time::timeout(deadline, run()).await }) {
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
