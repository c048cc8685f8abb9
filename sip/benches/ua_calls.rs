//! Call setups per second through two in-memory user agents on one core:
//! INVITE, 100, 200, ACK, BYE, 200 per call (six messages parsed and built).
//! Run: `cargo bench -p switchyard-sip --bench ua_calls`.

#![allow(clippy::disallowed_methods)] // a benchmark measures wall time
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sip::testing::Pair;
use sip::ua::{Transport, UaCommand, UaEvent};

fn main() {
    let calls: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000);
    let mut p = Pair::new(Instant::now());
    let started = Instant::now();
    for leg in 0..calls {
        let target = p.target_b("+15550002", Transport::Udp);
        p.a.handle_command(
            p.now,
            UaCommand::Invite {
                leg,
                target,
                from_uri: "sip:+15550001@switchyard".into(),
                from_display: None,
                to_uri: "sip:+15550002@carrier".into(),
                body: None,
                credentials: None,
                extra_headers: vec![],
                call_id: None,
            },
        );
        p.drive();
        let Some((_, UaEvent::Incoming { leg: b_leg, .. })) = p.b_events.pop() else {
            panic!("no Incoming")
        };
        p.b.handle_command(
            p.now,
            UaCommand::Answer {
                leg: b_leg,
                body: None,
            },
        );
        p.drive();
        p.a.handle_command(p.now, UaCommand::Bye { leg });
        p.drive();
        p.a_events.clear();
        p.b_events.clear();
        p.wire.clear();
        // Keep timers firing as in real life (Timer J/K/I expiries).
        p.now += Duration::from_micros(100);
        p.a.handle_timeout(p.now);
        p.b.handle_timeout(p.now);
    }
    let el = started.elapsed();
    println!(
        "{calls} calls in {el:?}: {:.0} call setups/s (both UAs on one core)",
        calls as f64 / el.as_secs_f64()
    );
}
