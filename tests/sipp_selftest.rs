//! Proves the carrier scenarios in `tests/sipp/` against SIPp itself (or a scripted UDP caller
//! where SIPp cannot check the result), so end-to-end failures point at the switch, not the
//! scenarios. Also exercises the harness pieces that do not need the switch.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::sipp::{Sipp, SippOutcome};
use common::switch::{SwitchConfig, parse_listening};
use common::webhook::WebhookSink;
use tokio::net::UdpSocket;

/// Runs the caller built by `uac` against `uas`; returns (uas, uac) outcomes.
async fn run_pair(uas: Sipp, uac: impl FnOnce(SocketAddr) -> Sipp) -> (SippOutcome, SippOutcome) {
    let caller = uac(uas.addr());
    let (uas_out, uac_out) = tokio::join!(uas.wait(), caller.wait());
    (uas_out, uac_out)
}

async fn assert_pair_ok(uas: &str, uac: impl FnOnce(SocketAddr) -> Sipp) -> SippOutcome {
    let (uas_out, uac_out) = run_pair(Sipp::uas(uas), uac).await;
    uac_out.assert_success(&format!("caller against {uas}"));
    uas_out.assert_success(uas);
    uas_out
}

fn short() -> Duration {
    Duration::from_secs(15)
}

#[tokio::test]
async fn busy_486() {
    let out = assert_pair_ok("uas_busy.xml", |a| {
        Sipp::builder("uac_expect_486.xml")
            .remote(a)
            .timeout(short())
            .spawn()
    })
    .await;
    assert!(out.messages.contains("SIP/2.0 486 Busy Here"));
}

#[tokio::test]
async fn decline_603() {
    let out = assert_pair_ok("uas_decline.xml", |a| {
        Sipp::builder("uac_expect_603.xml")
            .remote(a)
            .timeout(short())
            .spawn()
    })
    .await;
    assert!(out.messages.contains("SIP/2.0 603 Decline"));
}

#[tokio::test]
async fn unavailable_480() {
    let out = assert_pair_ok("uas_unavailable.xml", |a| {
        Sipp::builder("uac_expect_480.xml")
            .remote(a)
            .timeout(short())
            .spawn()
    })
    .await;
    assert!(out.messages.contains("SIP/2.0 480 Temporarily Unavailable"));
}

#[tokio::test]
async fn answer_hold_until_caller_bye() {
    let out = assert_pair_ok("uas_answer_hold.xml", |a| {
        Sipp::builder("uac")
            .remote(a)
            .pause_ms(200)
            .timeout(short())
            .spawn()
    })
    .await;
    assert!(out.messages.contains("BYE sip:"));
}

#[tokio::test]
async fn remote_bye_from_carrier() {
    let uas = Sipp::builder("uas_remote_bye.xml").pause_ms(300).spawn();
    let (uas_out, uac_out) = run_pair(uas, |a| {
        Sipp::builder("uac_remote_bye.xml")
            .remote(a)
            .timeout(short())
            .spawn()
    })
    .await;
    uac_out.assert_success("uac_remote_bye");
    uas_out.assert_success("uas_remote_bye");
}

#[tokio::test]
async fn ring_no_answer_then_cancel() {
    let out = assert_pair_ok("uas_ring_no_answer.xml", |a| {
        Sipp::builder("uac_cancel.xml")
            .remote(a)
            .timeout(short())
            .spawn()
    })
    .await;
    assert!(out.messages.contains("SIP/2.0 487 Request Terminated"));
}

#[tokio::test]
async fn cancel_crossing_the_answer() {
    let out = assert_pair_ok("uas_cancel_race.xml", |a| {
        Sipp::builder("uac_cancel_race.xml")
            .remote(a)
            .timeout(short())
            .spawn()
    })
    .await;
    assert!(out.messages.contains("CSeq: 1 CANCEL"), "{out}");
    assert!(out.messages.contains("CSeq: 2 BYE"), "{out}");
}

#[tokio::test]
async fn answer_hold_over_tcp() {
    let uas = Sipp::builder("uas_answer_hold.xml").tcp().spawn();
    let (uas_out, uac_out) = run_pair(uas, |a| {
        Sipp::builder("uac")
            .remote(a)
            .tcp()
            .pause_ms(200)
            .timeout(short())
            .spawn()
    })
    .await;
    uac_out.assert_success("uac over tcp");
    uas_out.assert_success("uas_answer_hold over tcp");
    assert!(
        uas_out.messages.contains("TCP message received"),
        "{uas_out}"
    );
}

#[tokio::test]
async fn digest_accepts_right_password() {
    for scenario in ["uas_digest.xml", "uas_digest_qop.xml"] {
        let out = assert_pair_ok(scenario, |a| {
            Sipp::builder("uac_digest.xml")
                .remote(a)
                .auth("user", "secret")
                .pause_ms(200)
                .timeout(short())
                .spawn()
        })
        .await;
        assert!(out.messages.contains("Authorization: Digest"), "{scenario}");
        assert!(!out.messages.contains("403 Forbidden"), "{scenario}");
    }
}

#[tokio::test]
async fn digest_rejects_wrong_password() {
    let (uas_out, uac_out) = run_pair(Sipp::uas("uas_digest.xml"), |a| {
        Sipp::builder("uac_digest.xml")
            .remote(a)
            .auth("user", "wrong")
            .timeout(short())
            .spawn()
    })
    .await;
    // The carrier answers 403 and its run fails, so a switch with bad credentials fails a test.
    assert!(
        !uas_out.success,
        "uas_digest accepted a wrong password\n{uas_out}"
    );
    assert!(
        uas_out.messages.contains("SIP/2.0 403 Forbidden"),
        "{uas_out}"
    );
    uac_out.assert_success("uac_digest (403 branch)");
}

/// A minimal UDP caller: INVITE offering PCMU/PCMA, ACK the 200, count RTP, BYE.
#[tokio::test]
async fn answer_rtp_plays_pcma_from_media_port() {
    let uas = Sipp::uas("uas_answer_rtp.xml");
    let sip = UdpSocket::bind("127.0.0.1:0").await.expect("bind sip");
    let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind rtp");
    let sip_port = sip.local_addr().expect("addr").port();
    let rtp_port = rtp.local_addr().expect("addr").port();
    let target = uas.addr();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n"
    );
    let request = |method: &str, cseq: u32, to_tag: &str, body: &str| {
        let ctype = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".to_owned()
        };
        format!(
            "{method} sip:+14155552671@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bK{method}{cseq}\r\n\
             From: <sip:+12025551234@127.0.0.1>;tag=selftest\r\n\
             To: <sip:+14155552671@{target}>{to_tag}\r\n\
             Call-ID: rtp-selftest-{sip_port}\r\nCSeq: {cseq} {method}\r\n\
             Contact: <sip:127.0.0.1:{sip_port}>\r\nMax-Forwards: 70\r\n{ctype}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    sip.send_to(request("INVITE", 1, "", &sdp).as_bytes(), target)
        .await
        .expect("send INVITE");
    let ok = recv_status(&sip, 200).await;
    assert!(ok.contains("m=audio"), "200 without SDP: {ok}");
    assert!(ok.contains("RTP/AVP 8"), "answer does not pick PCMA: {ok}");
    let to_tag = ok
        .lines()
        .find(|l| l.starts_with("To:"))
        .and_then(|l| l.split_once(";tag="))
        .map(|(_, t)| format!(";tag={}", t.trim()))
        .expect("To tag in 200");
    sip.send_to(request("ACK", 1, &to_tag, "").as_bytes(), target)
        .await
        .expect("send ACK");

    // 50 packets = 1 s of 20 ms PCMA frames, all from SIPp's media port.
    let mut buf = [0u8; 2048];
    for n in 0..50 {
        let (len, from) = tokio::time::timeout(Duration::from_secs(3), rtp.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("only {n} RTP packets arrived"))
            .expect("recv rtp");
        assert!(len > 12, "short RTP packet");
        assert_eq!(buf[0] >> 6, 2, "RTP version");
        assert_eq!(buf[1] & 0x7f, 8, "payload type PCMA");
        assert_eq!(from, uas.media_addr(), "RTP source is the -mp port");
    }

    sip.send_to(request("BYE", 2, &to_tag, "").as_bytes(), target)
        .await
        .expect("send BYE");
    recv_status(&sip, 200).await;
    uas.wait().await.assert_success("uas_answer_rtp");
}

/// Waits for a response with status `code` (skipping provisional ones) and returns it.
async fn recv_status(sock: &UdpSocket, code: u16) -> String {
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {code} within 5 s"))
            .expect("recv sip");
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if text.starts_with(&format!("SIP/2.0 {code} ")) {
            return text;
        }
        assert!(
            text.starts_with("SIP/2.0 1"),
            "expected {code}, got: {text}"
        );
    }
}

#[tokio::test]
async fn webhook_sink_fails_first_and_verifies_signatures() {
    let mut sink = WebhookSink::start().await;
    sink.fail_first(1);
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let signer = standardwebhooks::Webhook::new(secret).expect("secret");
    let body = br#"{"type":"call.completed","data":{"id":"call_1"}}"#;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let sig = signer.sign("msg_1", ts, body).expect("sign");
    let client = reqwest::Client::new();
    let post = |payload: &'static [u8]| {
        client
            .post(sink.url())
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig.clone())
            .body(payload)
            .send()
    };
    assert_eq!(post(body).await.expect("post").status().as_u16(), 500);
    assert_eq!(post(body).await.expect("post").status().as_u16(), 200);
    let tampered = br#"{"type":"call.completed","data":{"id":"call_2"}}"#;
    assert_eq!(post(tampered).await.expect("post").status().as_u16(), 200);

    let first = sink.next_event(Duration::from_secs(5)).await;
    assert_eq!(first.status_sent, 500);
    assert_eq!(first.path, "/hooks");
    let second = sink.next_event(Duration::from_secs(5)).await;
    assert_eq!(second.status_sent, 200);
    let v = sink.verify(secret, &second);
    assert_eq!(v["data"]["id"], "call_1");
    let third = sink.next_event(Duration::from_secs(5)).await;
    assert!(
        sink.try_verify(secret, &third).is_err(),
        "tampered body verified"
    );
    assert!(
        sink.try_next_event(Duration::from_millis(50))
            .await
            .is_none()
    );
}

#[test]
fn listening_line_parses() {
    let l = parse_listening(
        r#"{"event":"listening","sip_udp":"127.0.0.1:5060","sip_tcp":"127.0.0.1:5061","http":"127.0.0.1:8080"}"#,
    )
    .expect("parses");
    assert_eq!(l.sip_udp.port(), 5060);
    assert_eq!(l.sip_tcp.port(), 5061);
    assert_eq!(l.http.port(), 8080);
    assert!(parse_listening(r#"{"event":"other"}"#).is_none());
    assert!(parse_listening("not json").is_none());
}

#[test]
fn config_renders_valid_toml() {
    let cfg = SwitchConfig::new("127.0.0.1:5070".parse().expect("addr"))
        .credentials("user", "se\"cret")
        .extra("[extra]\nx = 1");
    let text = cfg.render(std::path::Path::new("/tmp/x/switchyard.db"));
    let v: toml::Value = toml::from_str(&text).expect("valid toml");
    assert_eq!(v["trunks"][0]["uri"].as_str(), Some("sip:127.0.0.1:5070"));
    assert_eq!(v["trunks"][0]["password"].as_str(), Some("se\"cret"));
    assert_eq!(v["trunks"][0]["numbers"][0].as_str(), Some("+12025551234"));
    assert_eq!(v["trunks"][0]["tenant"].as_str(), Some("acme"));
    assert_eq!(
        v["database"]["url"].as_str(),
        Some("sqlite:///tmp/x/switchyard.db")
    );
    assert_eq!(v["webhooks"]["retry_base_ms"].as_integer(), Some(50));
    assert_eq!(v["sip"]["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(v["extra"]["x"].as_integer(), Some(1));
}
