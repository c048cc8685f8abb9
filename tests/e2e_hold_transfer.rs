//! Hold and transfer on transit calls, end to end: SIPp as the caller's carrier and as the
//! far end (and as a transfer target), the switch in between as a B2BUA anchoring media.
//!
//! Hold: RFC 3264 §8.4 says a party that offers `sendonly` or `inactive` receives nothing;
//! the switch must stop relaying to it and re-INVITE the other party with the same
//! direction. What the holding party receives is counted on a UDP socket of the test that
//! its SDP names (SIPp sends no RTP from there), so the count is independent of the switch.
//!
//! Tests wait on SIPp exits and callbacks, never on fixed sleeps; timeouts are guards only.

mod common;

use std::time::{Duration, Instant};

use common::Sipp;
use common::transit::{TRANSIT_PLAN, start};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A media port for a SIPp party that only listens: every datagram's arrival time.
struct RtpSink {
    port: u16,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Instant>>,
}

impl RtpSink {
    async fn start() -> RtpSink {
        // An even port, as RTP wants (RTCP would go to the odd one above).
        let sock = loop {
            let s = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
            if s.local_addr().expect("addr").port() % 2 == 0 {
                break s;
            }
        };
        let port = sock.local_addr().expect("addr").port();
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                tokio::select! {
                    _ = &mut stopped => return arrivals,
                    r = sock.recv_from(&mut buf) => {
                        if r.is_ok() {
                            arrivals.push(Instant::now());
                        }
                    }
                }
            }
        });
        RtpSink { port, stop, task }
    }

    async fn finish(self) -> Arrivals {
        let _ = self.stop.send(());
        Arrivals(self.task.await.expect("sink task"))
    }
}

struct Arrivals(Vec<Instant>);

impl Arrivals {
    /// The longest silence between two packets, and the packets before and after it.
    fn longest_gap(&self) -> (Duration, usize, usize) {
        let mut best = (Duration::ZERO, self.0.len(), 0);
        for (i, w) in self.0.windows(2).enumerate() {
            let gap = w[1].saturating_duration_since(w[0]);
            if gap > best.0 {
                best = (gap, i + 1, self.0.len() - i - 1);
            }
        }
        best
    }
}

/// The caller (A) puts the callee (B) on hold with `a=sendonly` for 2 s and resumes. B
/// keeps talking all along (a careless far end). A must receive ~nothing while holding
/// and B's audio again afterwards; B must see the switch's re-INVITEs mirroring the hold
/// (`a=sendonly`) and the resume (`a=sendrecv`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_hold_stops_rtp_to_the_holder_and_is_mirrored_to_the_callee() {
    let far = Sipp::uas("uas_rtp_held.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let sink = RtpSink::start().await;
    let caller = Sipp::builder("uac_hold_sink.xml")
        .remote(h.switch.sip_udp())
        .arg("-key")
        .arg("sink_port")
        .arg(&sink.port.to_string())
        .pause_ms(1000)
        .spawn();
    caller
        .wait()
        .await
        .assert_success("caller holding and resuming");
    let far = far.wait().await;
    far.assert_success("callee getting the mirrored hold");
    let arrivals = sink.finish().await;
    let (gap, before, after) = arrivals.longest_gap();
    println!(
        "holder received {} packets: {before} before the hold, {after} after, longest gap {gap:?}",
        arrivals.0.len()
    );
    // 1.5 s of talk before the 2 s hold, 1.2 s of the 4.7 s recording after it.
    assert!(before >= 40, "{before} packets before the hold");
    assert!(after >= 30, "{after} packets after the resume");
    // The hold lasted 2 s at 50 packets/s: a gap of 1.9 s leaves room for ~5 of those
    // 100 packets, all at its edges (re-INVITE round trips), none in the middle.
    assert!(
        gap >= Duration::from_millis(1900),
        "the holder kept receiving RTP: longest gap {gap:?}\n{}",
        h.switch.logs()
    );
    // Mirrored: B's two re-INVITEs carry sendonly, then sendrecv.
    let invites: Vec<&str> = far.messages.split("INVITE sip:").skip(2).collect();
    assert_eq!(invites.len(), 2, "{}", far.messages);
    assert!(invites[0].contains("a=sendonly"), "{}", invites[0]);
    assert!(invites[1].contains("a=sendrecv"), "{}", invites[1]);
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["end_reason"], "caller_bye", "never a hang-up on hold");
}

/// Symmetric, and `inactive`: the callee (B) holds the caller (A) with `a=inactive` for
/// 2 s while A keeps talking; B must receive ~nothing meanwhile and A's audio after the
/// resume; A must see the switch's re-INVITEs with `a=inactive`, then `a=sendrecv`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callee_inactive_hold_stops_rtp_to_the_callee_and_is_mirrored_to_the_caller() {
    let sink = RtpSink::start().await;
    let far = Sipp::builder("uas_hold_sink.xml")
        .arg("-key")
        .arg("sink_port")
        .arg(&sink.port.to_string())
        .spawn();
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let caller = Sipp::builder("uac_rtp_held.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(1000)
        .spawn();
    let caller = caller.wait().await;
    caller.assert_success("caller put on hold and resumed");
    far.wait()
        .await
        .assert_success("callee holding and resuming");
    let arrivals = sink.finish().await;
    let (gap, before, after) = arrivals.longest_gap();
    println!(
        "held callee received {} packets: {before} before the hold, {after} after, longest gap {gap:?}",
        arrivals.0.len()
    );
    assert!(before >= 40, "{before} packets before the hold");
    assert!(after >= 30, "{after} packets after the resume");
    assert!(
        gap >= Duration::from_millis(1900),
        "the holding callee kept receiving RTP: longest gap {gap:?}\n{}",
        h.switch.logs()
    );
    let invites: Vec<&str> = caller.messages.split("INVITE sip:").skip(2).collect();
    assert_eq!(invites.len(), 2, "{}", caller.messages);
    assert!(invites[0].contains("a=inactive"), "{}", invites[0]);
    assert!(invites[1].contains("a=sendrecv"), "{}", invites[1]);
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["end_reason"], "caller_bye", "never a hang-up on hold");
}
