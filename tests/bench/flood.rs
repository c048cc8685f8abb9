//! Legitimate calls during an INVITE flood from 1,000 sources (`cargo bench --bench
//! flood`): call success and setup time (INVITE to 200 at the caller, p50/p99) without and
//! with the flood, and what the flood drew back (answers per flooding INVITE, bytes out
//! per byte in: the reflection a spoofed source could aim at a victim).
//!
//! The legitimate caller is SIPp on a trusted trunk (127.0.0.1) calling through the switch
//! to a SIPp callee; the flood is unauthenticated INVITEs from 127.1.0.1 … 127.1.3.232,
//! none of which a trunk covers, each answered (once, statelessly) with 403.
//! Settings: FLOOD_RATE (INVITEs/s, default 5000), FLOOD_CALLS (legitimate calls per run,
//! default 300, at FLOOD_CPS default 30/s).

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::Sipp;
use common::transit::{TRANSIT_PLAN, start};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Debug, Default)]
struct FloodCounts {
    sent: AtomicU64,
    bytes_sent: AtomicU64,
    answers: AtomicU64,
    bytes_answered: AtomicU64,
}

fn invite(n: u64, me: std::net::SocketAddr, to: std::net::SocketAddr) -> String {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
        ip = me.ip()
    );
    format!(
        "INVITE sip:+14155550100@{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-fl-{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:100@{me}>;tag=f{n}\r\nTo: <sip:+14155550100@{to}>\r\n\
         Call-ID: flood-{n}@{ip}\r\nCSeq: 1 INVITE\r\nContact: <sip:100@{me}>\r\n\
         User-Agent: friendly-scanner\r\nContent-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{sdp}",
        ip = me.ip(),
        len = sdp.len()
    )
}

/// 1,000 sources sending `rate` INVITEs a second in all until `stop`.
async fn flood(
    to: std::net::SocketAddr,
    rate: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<FloodCounts>,
) {
    let mut socks = Vec::new();
    for i in 0..1000u32 {
        let ip = format!("127.1.{}.{}", i / 250, i % 250 + 1);
        if let Ok(s) = tokio::net::UdpSocket::bind(format!("{ip}:0")).await {
            socks.push(Arc::new(s));
        }
    }
    for s in &socks {
        let (s, stop, counts) = (s.clone(), stop.clone(), counts.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok((n, _))) =
                    tokio::time::timeout(Duration::from_millis(100), s.recv_from(&mut buf)).await
                {
                    counts.answers.fetch_add(1, Ordering::Relaxed);
                    counts.bytes_answered.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        });
    }
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut n = 0u64;
    let mut next = tokio::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..per_tick {
            let s = &socks[(n as usize) % socks.len()];
            let Ok(me) = s.local_addr() else { continue };
            let msg = invite(n, me, to);
            if s.send_to(msg.as_bytes(), to).await.is_ok() {
                counts.sent.fetch_add(1, Ordering::Relaxed);
                counts
                    .bytes_sent
                    .fetch_add(msg.len() as u64, Ordering::Relaxed);
            }
            n += 1;
        }
        next += tick;
        tokio::time::sleep_until(next).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(with_flood: bool, rate: u64, calls: u64, cps: u64) {
    let far = Sipp::builder("bench_transit_uas.xml")
        .calls(calls as u32)
        .timeout(Duration::from_secs(calls / cps + 60))
        .spawn();
    let h = start(far.addr(), TRANSIT_PLAN, "").await;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(FloodCounts::default());
    let flooding = with_flood.then(|| {
        tokio::spawn(flood(
            h.switch.sip_udp(),
            rate,
            stop.clone(),
            counts.clone(),
        ))
    });
    if with_flood {
        // Let the flood reach its rate before the first call.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let caller = Sipp::builder("bench_transit_uac.xml")
        .remote(h.switch.sip_udp())
        .service("+14155552671")
        .calls(calls as u32)
        .pause_ms(200)
        .timeout(Duration::from_secs(calls / cps + 60))
        .arg("-r")
        .arg(&cps.to_string())
        .arg("-trace_rtt")
        .arg("-rtt_freq")
        .arg("1")
        .spawn();
    let out = caller.wait().await;
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = flooding {
        let _ = f.await;
    }
    let _ = far.wait().await;
    let mut rtts: Vec<f64> = out
        .rtt
        .lines()
        .filter_map(|l| l.split(';').nth(1)?.trim().parse().ok())
        .collect();
    rtts.sort_by(f64::total_cmp);
    let ok = rtts.len() as u64;
    let sent = counts.sent.load(Ordering::Relaxed);
    let answers = counts.answers.load(Ordering::Relaxed);
    let ratio_bytes = counts.bytes_answered.load(Ordering::Relaxed) as f64
        / counts.bytes_sent.load(Ordering::Relaxed).max(1) as f64;
    println!(
        "{:<10} calls {ok}/{calls} set up ({:.1} %), setup p50 {:.1} ms, p99 {:.1} ms; flood: {sent} INVITEs, {answers} answers ({:.3} per INVITE, {:.2}x bytes)",
        if with_flood { "flood" } else { "no flood" },
        100.0 * ok as f64 / calls as f64,
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
        answers as f64 / sent.max(1) as f64,
        ratio_bytes,
    );
}

fn main() {
    let rate = env_u64("FLOOD_RATE", 5000);
    let calls = env_u64("FLOOD_CALLS", 300);
    let cps = env_u64("FLOOD_CPS", 30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("legitimate calls at {cps}/s during a {rate}/s INVITE flood from 1,000 sources");
        run(false, rate, calls, cps).await;
        run(true, rate, calls, cps).await;
    });
}
