//! Call setup time of a masked call against a plain transit call through the same switch
//! (`cargo bench --bench masked`): INVITE to 200 at the caller, p50/p99, for calls to a
//! proxy number (the session looked up in the store, leg B built from it) and for calls
//! the dialplan routes straight to the trunk; the difference is what masking adds.
//! Settings: MASKED_CALLS (per kind, default 300) at MASKED_CPS (default 20/s).

#[path = "../common/mod.rs"]
mod common;

use std::time::Duration;

use common::Sipp;
use common::transit::start;
use reqwest::Method;
use serde_json::json;

const PLAN: &str = "[[rules]]\nname = \"masked\"\nto = { prefix = \"+141555590\" }\n\
    source_trunk = \"upstream\"\nproxy = true\n\n[[rules]]\nname = \"transit\"\n\
    to = { prefix = \"+1202\" }\nsource_trunk = \"upstream\"\ntrunks = [\"carrier\"]\n";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Places `calls` calls to `number` from `caller`; returns the sorted setup times (ms).
async fn setup_times(
    h: &common::transit::Inbound,
    number: &str,
    caller: &str,
    calls: u64,
    cps: u64,
) -> Vec<f64> {
    let sipp = Sipp::builder("masked_uac_call.xml")
        .remote(h.switch.sip_udp())
        .service(number)
        .calls(calls as u32)
        .pause_ms(100)
        .timeout(Duration::from_secs(calls / cps + 60))
        .arg("-key")
        .arg("caller")
        .arg(caller)
        .arg("-r")
        .arg(&cps.to_string())
        .arg("-trace_rtt")
        .arg("-rtt_freq")
        .arg("1")
        .spawn();
    let out = sipp.wait().await;
    let mut rtts: Vec<f64> = out
        .rtt
        .lines()
        .filter_map(|l| l.split(';').nth(1)?.trim().parse().ok())
        .collect();
    rtts.sort_by(f64::total_cmp);
    rtts
}

fn main() {
    let calls = env_u64("MASKED_CALLS", 300);
    let cps = env_u64("MASKED_CPS", 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let far = Sipp::builder("uas_answer_hold.xml")
            .calls((calls * 3) as u32)
            .timeout(Duration::from_secs(3 * calls / cps + 120))
            .spawn();
        let pool = "[[proxy_numbers]]\nnumber = \"+14155559001\"\ntrunk = \"carrier\"\n";
        let h = start(far.addr(), PLAN, pool).await;
        let body =
            json!({"participants": [{"number": "+14155550001"}, {"number": "+14155550002"}]});
        let (code, session) = h
            .api
            .request(Method::POST, "/proxy/sessions", Some(&body))
            .await;
        assert_eq!(code, 201, "{session}");
        let proxy = session["data"]["participants"][0]["proxy_number"]
            .as_str()
            .expect("proxy number")
            .to_owned();
        println!("{calls} calls of each kind at {cps}/s, INVITE → 200 at the caller");
        // A warm-up round of each, then the measured rounds interleaved.
        let _ = setup_times(&h, "+12025550100", "+14155550001", cps, cps).await;
        let transit = setup_times(&h, "+12025550100", "+14155550001", calls, cps).await;
        let masked = setup_times(&h, &proxy, "+14155550001", calls, cps).await;
        for (name, v) in [("transit", &transit), ("masked", &masked)] {
            println!(
                "{name:<8} {} set up, p50 {:.2} ms, p99 {:.2} ms",
                v.len(),
                percentile(v, 0.5),
                percentile(v, 0.99)
            );
        }
        println!(
            "masking adds p50 {:+.2} ms, p99 {:+.2} ms",
            percentile(&masked, 0.5) - percentile(&transit, 0.5),
            percentile(&masked, 0.99) - percentile(&transit, 0.99)
        );
        drop(far);
    });
}
