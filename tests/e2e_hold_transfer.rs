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
use common::harness::GUARD;
use common::transit::{Inbound, TRANSIT_PLAN, start};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A media port for a SIPp party that only listens: every datagram's arrival time.
struct RtpSink {
    port: u16,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Vec<Instant>>,
    count: watch::Receiver<usize>,
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
        let (count_tx, count) = watch::channel(0);
        let task = tokio::spawn(async move {
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                tokio::select! {
                    _ = &mut stopped => return arrivals,
                    r = sock.recv_from(&mut buf) => {
                        if r.is_ok() {
                            arrivals.push(Instant::now());
                            count_tx.send_replace(arrivals.len());
                        }
                    }
                }
            }
        });
        RtpSink {
            port,
            stop,
            task,
            count,
        }
    }

    /// Waits until `n` packets have arrived (the guard only bounds the wait).
    async fn wait_for(&mut self, n: usize) {
        let reached = tokio::time::timeout(GUARD, self.count.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        let got = *self.count.borrow();
        assert!(reached, "{n} RTP packets never arrived (got {got})");
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
        .pause_ms(2000)
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

/// When a message of SIPp's `-trace_msg` log was sent or received: seconds of the day of
/// the timestamp line above the `skip`-th message whose first line starts with
/// `first_line`.
fn sipp_time(log: &str, first_line: &str, skip: usize) -> f64 {
    let block = log
        .split("-----------------------------------------------")
        .filter(|b| {
            b.lines()
                .skip(1)
                .filter(|l| !l.trim().is_empty())
                .nth(1)
                .is_some_and(|l| l.starts_with(first_line))
        })
        .nth(skip)
        .unwrap_or_else(|| panic!("no {first_line} #{skip} in\n{log}"));
    // " 2026-12-06 03:43:06.102108" on the first line.
    let time = block
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .expect("timestamp");
    time.split(':')
        .map(|p| p.parse::<f64>().expect("number"))
        .fold(0.0, |acc, p| acc * 60.0 + p)
}

/// Glare (RFC 3261 §14.1): the callee answers the switch's mirrored hold with 491 (its
/// own re-INVITE crossed ours); the switch retries the same offer after 2.1-4 s, as the
/// owner of the callee leg's Call-ID must, and carries on with the resume. Nobody sends
/// RTP in this call, and the 5 s hold outlasts the 2 s media timeout: a held call must
/// not be ended for silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_491_on_the_mirrored_hold_is_retried_after_the_glare_delay() {
    let far = Sipp::uas("uas_glare_491.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "[rtp]\nmedia_timeout_s = 2").await;
    let sink = RtpSink::start().await;
    let caller = Sipp::builder("uac_hold_sink.xml")
        .remote(h.switch.sip_udp())
        .arg("-key")
        .arg("sink_port")
        .arg(&sink.port.to_string())
        .pause_ms(5000)
        .timeout(Duration::from_secs(30))
        .spawn();
    caller.wait().await.assert_success("caller holding for 5 s");
    let far = far.wait().await;
    far.assert_success("callee answering 491, then the retry");
    let refused = sipp_time(&far.messages, "SIP/2.0 491", 0);
    let retried = sipp_time(&far.messages, "INVITE sip:", 2);
    let delay = retried - refused;
    println!("re-INVITE retried {delay:.3} s after the 491");
    assert!((2.05..=4.3).contains(&delay), "retried after {delay} s");
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(
        call["end_reason"], "caller_bye",
        "not a media timeout on hold"
    );
    drop(sink);
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

/// Routes +14155550111 (the transfer target) to trunk "third" at `target`, the rest of
/// +1 to "carrier"; returns the switch with that plan.
async fn with_target(far: &Sipp, target: &Sipp) -> Inbound {
    let plan = "[[rules]]\nname = \"transfer-target\"\nto = { exact = \"+14155550111\" }\n\
                trunks = [\"third\"]\n\n\
                [[rules]]\nname = \"us\"\nto = { prefix = \"+1\" }\ntrunks = [\"carrier\"]\n";
    let third = format!(
        "[[trunks]]\nname = \"third\"\nuri = \"sip:{}\"\ntenant = \"acme\"\n",
        target.addr()
    );
    start(far.addr(), plan, &third).await
}

/// The id of the call once it is answered.
async fn answered_call(h: &mut Inbound) -> String {
    let events = h.events_until("call.in_progress").await;
    events.last().expect("events")["data"]["call"]["id"]
        .as_str()
        .expect("call id")
        .to_owned()
}

async fn transfer(h: &Inbound, id: &str, body: Value) {
    let (status, reply) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/transfer"),
            Some(&body),
        )
        .await;
    assert_eq!(status, 202, "{reply}\n{}", h.switch.logs());
}

fn transfer_states(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["type"] == "call.transfer")
        .map(|e| {
            let d = &e["data"];
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_owned();
            (s("transfer_state"), s("leg"), s("method"))
        })
        .collect()
}

/// API transfer of a transit call's callee to an E.164 number: its carrier takes REFER,
/// so it gets one whose Refer-To is a SIP URI on its trunk (`sip:+1…@host:port;user=phone`,
/// checked by regexp in uas_answer_refer.xml, not `tel:`); on its NOTIFY 200 both legs
/// are hung up and the call ends `transferred`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_transfer_of_a_transit_callee_refers_it_to_a_sip_uri_on_its_trunk() {
    let far = Sipp::uas("uas_answer_refer.xml");
    let mut h = start(far.addr(), TRANSIT_PLAN, "").await;
    let caller = Sipp::builder("uac_remote_bye.xml")
        .remote(h.switch.sip_udp())
        .spawn();
    let id = answered_call(&mut h).await;
    transfer(&h, &id, json!({"to": "+14155550000", "leg": "callee"})).await;
    far.wait()
        .await
        .assert_success("callee's carrier honouring the REFER");
    caller
        .wait()
        .await
        .assert_success("caller hung up by the switch");
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["end_reason"], "transferred", "{}", h.switch.logs());
    assert_eq!(call["metadata"]["transferred"], true);
    let states = transfer_states(&events);
    let refer = |s: &str| (s.to_owned(), "callee".to_owned(), "refer".to_owned());
    assert!(states.contains(&refer("accepted")), "{states:?}");
    assert!(states.contains(&refer("succeeded")), "{states:?}");
    // A leg name that does not exist is a validation error.
    let (status, body) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/transfer"),
            Some(&json!({"to": "+14155550000", "leg": "b"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// API transfer of a transit call's caller (the default leg) whose carrier takes no
/// REFER (its Allow lists none): the switch dials the target through the dialplan's trunk
/// and bridges it in the callee's place; the caller, still talking, is heard by the
/// target (counted on the target's media socket), the callee is hung up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_transfer_of_a_caller_without_refer_dials_the_target_and_rebridges() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let sink = RtpSink::start().await;
    let target = Sipp::builder("uas_answer_sink.xml")
        .arg("-key")
        .arg("sink_port")
        .arg(&sink.port.to_string())
        .spawn();
    let mut h = with_target(&far, &target).await;
    let caller = Sipp::builder("uac_rtp_no_refer.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(5000)
        .spawn();
    let id = answered_call(&mut h).await;
    // No rule routes this number: refused at once, and the call goes on.
    let (status, body) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/transfer"),
            Some(&json!({"to": "+442079460000"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "CALL_NOT_TRANSFERABLE");
    transfer(&h, &id, json!({"to": "+14155550111"})).await;
    far.wait()
        .await
        .assert_success("callee released by the transfer");
    caller.wait().await.assert_success("caller, transferred");
    let target = target.wait().await;
    target.assert_success("transfer target");
    assert!(
        target.messages.contains("INVITE sip:+14155550111@"),
        "{}",
        target.messages
    );
    let heard = sink.finish().await.0.len();
    println!("the target heard {heard} packets of the caller");
    // ~4.5 s of the caller's 4.7 s recording were left when the target answered.
    assert!(heard >= 150, "the target heard {heard} packets");
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["end_reason"], "caller_bye", "{}", h.switch.logs());
    assert_eq!(call["metadata"]["transferred"], true);
    let states = transfer_states(&events);
    assert!(
        states.contains(&("succeeded".into(), "caller".into(), "dial".into())),
        "{states:?}"
    );
}

/// As above, but the caller's carrier says nothing about REFER (no Allow) and refuses the
/// switch's REFER with 501: the switch falls back to dialling the target itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_transfer_falls_back_to_dialling_when_the_refer_is_refused() {
    let far = Sipp::uas("uas_answer_hold.xml");
    let mut sink = RtpSink::start().await;
    let target = Sipp::builder("uas_answer_sink.xml")
        .arg("-key")
        .arg("sink_port")
        .arg(&sink.port.to_string())
        .spawn();
    let mut h = with_target(&far, &target).await;
    let caller = Sipp::builder("uac_rtp_refuse_refer.xml")
        .remote(h.switch.sip_udp())
        .pause_ms(3000)
        .spawn();
    let id = answered_call(&mut h).await;
    transfer(&h, &id, json!({"to": "+14155550111", "leg": "caller"})).await;
    sink.wait_for(50).await;
    caller
        .wait()
        .await
        .assert_success("caller refusing the REFER");
    far.wait()
        .await
        .assert_success("callee released by the transfer");
    target.wait().await.assert_success("transfer target");
    let events = h.events_until("call.completed").await;
    let states = transfer_states(&events);
    assert_eq!(
        states,
        [
            ("refer_refused".into(), "caller".into(), "refer".into()),
            ("succeeded".into(), "caller".into(), "dial".into()),
        ],
        "{}",
        h.switch.logs()
    );
    let refused = events
        .iter()
        .find(|e| e["data"]["transfer_state"] == "refer_refused")
        .expect("refused event");
    assert_eq!(refused["data"]["sip_code"], 501);
}

/// The caller's carrier transfers the callee (REFER on leg A): the switch answers 202,
/// dials the target through the trunk the dialplan picks, bridges it to the callee in the
/// caller's place, NOTIFYs the caller 100 then 200 and hangs it up. The callee's audio
/// then reaches the target (counted on its media socket) until the API hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refer_from_the_caller_transfers_the_callee_to_the_target() {
    let far = Sipp::uas("uas_answer_rtp.xml");
    let mut sink = RtpSink::start().await;
    let target = Sipp::builder("uas_answer_sink.xml")
        .arg("-key")
        .arg("sink_port")
        .arg(&sink.port.to_string())
        .spawn();
    let mut h = with_target(&far, &target).await;
    let caller = Sipp::builder("uac_call_then_refer.xml")
        .remote(h.switch.sip_udp())
        .spawn();
    let id = answered_call(&mut h).await;
    caller
        .wait()
        .await
        .assert_success("referring caller (NOTIFY 100, NOTIFY 200, BYE)");
    sink.wait_for(50).await;
    let (status, body) = h
        .api
        .request(
            reqwest::Method::POST,
            &format!("/voice/calls/{id}/hangup"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    far.wait()
        .await
        .assert_success("callee, now talking to the target");
    let target = target.wait().await;
    target.assert_success("transfer target");
    assert!(
        target.messages.contains("INVITE sip:+14155550111@"),
        "{}",
        target.messages
    );
    let heard = sink.finish().await.0.len();
    println!("the target heard {heard} packets of the callee");
    let events = h.events_until("call.completed").await;
    let call = &events.last().expect("events")["data"]["call"];
    assert_eq!(call["end_reason"], "hangup", "{}", h.switch.logs());
    assert_eq!(call["metadata"]["transferred"], true);
    let states = transfer_states(&events);
    assert!(
        states.contains(&("succeeded".into(), "callee".into(), "dial".into())),
        "{states:?}"
    );
}
