//! Raw SIP UAC calls per second, without the API, DB, call tasks or RTP: the `sip` crate's
//! tokio driver (`sip::net::spawn`) places INVITE → 200 → ACK → BYE → 200 against a SIPp UAS
//! (`tests/sipp/bench_uas_hold.xml`) on loopback. This isolates the SIP stack's CPS.
//!
//! Run: `cargo bench --bench sip_uac`
//! (`BENCH_SIP_CALLS` calls, default 20000; `BENCH_SIP_WINDOW` calls in flight, default 200,
//! a comma list runs one step per value; every step is bounded by SIPp's `-timeout` and a
//! 120 s deadline).
//!
//! Closed loop: at most WINDOW calls are in flight; a call's BYE is sent on `Answered` and a
//! new INVITE on its `Terminated`, so the measured rate is what the stack sustains.

#![allow(clippy::disallowed_methods)] // a benchmark reads the wall clock

use std::error::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sip::net::{NetConfig, spawn};
use sip::ua::{Body, Target, Transport, UaCommand, UaConfig, UaEvent};
use tokio::process::Command;

type R<T> = Result<T, Box<dyn Error + Send + Sync>>;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/bench_uas_hold.xml");

const SDP: &str = "v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n";

fn free_udp_port() -> R<u16> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

/// `SuccessfulCall(C)` and `FailedCall(C)` from the last row of SIPp's stat file.
fn read_stat(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let last: Vec<&str> = lines.next_back()?.split(';').collect();
    let col = |name: &str| -> Option<u64> {
        let i = header.iter().position(|h| *h == name)?;
        last.get(i)?.trim().parse().ok()
    };
    Some((col("SuccessfulCall(C)")?, col("FailedCall(C)")?))
}

struct Outcome {
    window: u64,
    calls: u64,
    completed: u64,
    failed: u64,
    secs: f64,
    retransmissions: u64,
    sipp_exit: Option<i32>,
    sipp_stat: Option<(u64, u64)>,
}

async fn step(dir: &Path, calls: u64, window: u64) -> R<Outcome> {
    let port = free_udp_port()?;
    let sipp_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let stat = dir.join(format!("stat-{window}.csv"));
    let mut sipp = Command::new("sipp")
        .arg("-sf")
        .arg(SCENARIO)
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-mi", "127.0.0.1", "-mp", &free_udp_port()?.to_string()])
        .args(["-buff_size", "4194304", "-m", &calls.to_string()])
        .args(["-timeout", "120s", "-timeout_error", "-nostdin"])
        .args(["-trace_stat", "-fd", "1", "-stf"])
        .arg(&stat)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let bound = Instant::now();
    while std::net::UdpSocket::bind(sipp_addr).is_ok() {
        if bound.elapsed() > Duration::from_secs(10) {
            return Err("sipp did not bind".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (ua, mut events, addrs) = spawn(NetConfig {
        udp: ([127, 0, 0, 1], 0).into(),
        tcp: None,
        ua: UaConfig {
            public_addr: ([127, 0, 0, 1], 0).into(),
            ..UaConfig::default()
        },
        socket_buffer: 4 * 1024 * 1024,
        rate_limit: None,
        tcp_limits: Default::default(),
    })?;
    let invite = |leg: u64| UaCommand::Invite {
        leg,
        target: Target {
            request_uri: format!("sip:+14155552671@{sipp_addr}"),
            addr: sipp_addr,
            transport: Transport::Udp,
        },
        from_uri: format!("sip:+12025551234@{}", addrs.udp.ip()),
        from_display: None,
        to_uri: format!("sip:+14155552671@{sipp_addr}"),
        body: Some(Body {
            content_type: "application/sdp".to_owned(),
            bytes: bytes::Bytes::from_static(SDP.as_bytes()),
        }),
        credentials: None,
        extra_headers: Vec::new(),
        call_id: None,
    };

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut next_leg = 0u64;
    let mut finished = 0u64;
    let (mut completed, mut failed) = (0u64, 0u64);
    while next_leg < window.min(calls) {
        ua.send(invite(next_leg))?;
        next_leg += 1;
    }
    while finished < calls {
        let ev = match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => return Err("SIP driver stopped".into()),
            Err(_) => break,
        };
        let ended = match ev {
            UaEvent::Answered { leg, .. } => {
                ua.send(UaCommand::Bye { leg })?;
                false
            }
            UaEvent::Terminated { code, .. } => {
                if matches!(code, Some(200..=299)) {
                    completed += 1;
                } else {
                    failed += 1;
                }
                true
            }
            UaEvent::Failed { .. } | UaEvent::Cancelled { .. } => {
                failed += 1;
                true
            }
            _ => false,
        };
        if ended {
            finished += 1;
            if next_leg < calls {
                ua.send(invite(next_leg))?;
                next_leg += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let retransmissions = ua.stats().await.map_or(0, |s| s.retransmissions);
    let sipp_exit = match tokio::time::timeout(Duration::from_secs(5), sipp.wait()).await {
        Ok(Ok(st)) => st.code(),
        _ => {
            let _ = sipp.kill().await;
            None
        }
    };
    Ok(Outcome {
        window,
        calls,
        completed,
        failed,
        secs,
        retransmissions,
        sipp_exit,
        sipp_stat: read_stat(&stat),
    })
}

async fn run() -> R<()> {
    let calls = std::env::var("BENCH_SIP_CALLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000u64);
    let windows: Vec<u64> = std::env::var("BENCH_SIP_WINDOW")
        .unwrap_or_else(|_| "200".to_owned())
        .split(',')
        .filter_map(|w| w.trim().parse().ok())
        .filter(|w| *w > 0)
        .collect();
    let dir = tempfile::tempdir()?;
    println!("window  calls  completed  failed  calls/s  retrans  sipp(ok/fail)  sipp exit");
    for w in windows {
        let o = step(dir.path(), calls, w).await?;
        println!(
            "{:>6} {:>6} {:>10} {:>7} {:>8.0} {:>8}  {:>13}  {:?}",
            o.window,
            o.calls,
            o.completed,
            o.failed,
            o.completed as f64 / o.secs.max(1e-3),
            o.retransmissions,
            o.sipp_stat
                .map_or_else(|| "?".to_owned(), |(s, f)| format!("{s}/{f}")),
            o.sipp_exit,
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
    match rt.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
