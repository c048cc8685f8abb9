//! Attacks on a switch with a public API, made the way they are made, against the binary.

mod common;

use std::time::Duration;

use common::{Api, Sipp, SwitchProcess, WebhookSink};
use serde_json::{Value, json};

/// A switch with no `[security] outbound_allow_cidrs`: nothing internal may be called.
fn guarded_config(tenant_hook: &str, plan_carrier: std::net::SocketAddr) -> String {
    format!(
        "[sip]\nlisten = \"127.0.0.1:0\"\npublic_addr = \"127.0.0.1\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [rtp]\nport_min = 30000\nport_max = 30999\n\n\
         [database]\nurl = \"sqlite://switchyard.db?mode=rwc\"\n\n\
         [webhooks]\nretry_base_ms = 50\n\n\
         [dialplan]\nfile = \"dialplan.toml\"\n\n\
         [[tenants]]\nname = \"acme\"\nwebhook_url = \"{tenant_hook}\"\n\n\
         [[trunks]]\nname = \"carrier\"\nuri = \"sip:{plan_carrier}\"\ntenant = \"acme\"\n\
         numbers = [\"+12025551234\"]\ninbound_cidrs = [\"127.0.0.1/32\"]\n"
    )
}

const TRANSIT_PLAN: &str = "default_country_code = \"1\"\n\n\
    [[numbers]]\nnumber = \"+14155552671\"\ntenant = \"acme\"\n\n\
    [[rules]]\nname = \"out\"\nto = { exact = \"+14155552671\" }\ntrunks = [\"carrier\"]\n";

/// This host's name when it resolves to loopback only.
fn loopback_hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim().to_owned();
    let addrs: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 0))
            .ok()?
            .collect();
    (!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()) && name != "localhost")
        .then_some(name)
}

async fn metric(switch: &SwitchProcess, name: &str) -> u64 {
    SwitchProcess::metric(&switch.metrics().await, name).unwrap_or(0)
}

/// SSRF: every spelling of an internal callback URL is refused by the API, and a URL that
/// only turns out internal when resolved (an operator's `localhost` here; DNS rebinding in
/// the wild) is refused at connect time: the receiver on 127.0.0.1 never hears a thing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_urls_to_internal_addresses_are_refused() {
    let mut sink = WebhookSink::start().await;
    let port = sink.addr().port();
    let carrier = Sipp::uas("uas_busy.xml");
    // A name that is not `localhost` but resolves to loopback (this host's own name, as
    // /etc/hosts usually has it) reaches the connect-time check, as DNS rebinding would.
    let name = loopback_hostname();
    let switch = SwitchProcess::start_files(&[
        (
            "switchyard.toml",
            &guarded_config(
                &format!(
                    "http://{}:{port}/hook",
                    name.as_deref().unwrap_or("localhost")
                ),
                carrier.addr(),
            ),
        ),
        ("dialplan.toml", TRANSIT_PLAN),
    ])
    .await;
    let api = Api::new(
        &switch.http_base(),
        &switch.create_api_key("acme", "owner").await,
    );

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("2130706433:{port}"),
        format!("0x7f.1:{port}"),
        format!("0.0.0.0:{port}"),
        format!("[::1]:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        "169.254.169.254".to_owned(),
        "10.0.0.1".to_owned(),
        "192.168.0.1".to_owned(),
    ] {
        let hook = format!("http://{host}/hook");
        let (code, body) = api
            .create_call(json!({"to": "+14155550100", "from": "+12025551234", "webhook_url": hook}))
            .await;
        assert_eq!(code, 400, "{hook}: {body}");
        assert_eq!(body["code"], "VALIDATION_ERROR", "{hook}: {body}");
        assert!(
            body["error"].as_str().unwrap_or("").contains("webhook_url"),
            "{body}"
        );
    }
    let (_, list) = api.list_calls("").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(0), "{list}");
    let refused_by_api = metric(&switch, "switchyard_outbound_refused_total").await;
    assert!(refused_by_api >= 10, "refused {refused_by_api}");

    // A transit call (the carrier is busy) whose tenant callback is `localhost`.
    let caller = Sipp::builder("uac_expect_486.xml")
        .remote(switch.sip_udp())
        .service("+14155552671")
        .spawn();
    caller.wait().await.assert_success("caller");
    let (_, list) = api.list_calls("").await;
    let id = list["data"][0]["id"]
        .as_str()
        .expect("the inbound call")
        .to_owned();
    // Wait for the deliverer's verdict on its events (refused: abandoned at once).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let events = loop {
        let (_, events) = api.events(&id).await;
        let all: Vec<Value> = events["data"].as_array().cloned().unwrap_or_default();
        if !all.is_empty() && all.iter().all(|e| e["last_error"].is_string()) {
            break all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no verdict: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for e in &events {
        let error = e["last_error"].as_str().unwrap_or("");
        assert!(error.starts_with("refused"), "{e}");
        if name.is_some() {
            assert!(error.contains("resolves to an internal address"), "{e}");
        }
        assert_eq!(e["attempts"], 1, "a refusal is not retried: {e}");
    }
    assert!(metric(&switch, "switchyard_outbound_refused_total").await > refused_by_api);
    assert!(
        sink.try_next_event(Duration::from_millis(300))
            .await
            .is_none(),
        "the internal receiver was called"
    );
    drop(carrier);
}

/// The HTTP API under abuse: a key past its rate gets 429 with a truthful Retry-After, a
/// client IP spraying fresh keys is limited by address, an oversized body gets 413, and a
/// tenant's owner sees only its own trunks (the operator sees all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rate_limits_body_limit_and_roles() {
    let carrier = Sipp::uas("uas_busy.xml");
    let config = format!(
        "[sip]\nlisten = \"127.0.0.1:0\"\npublic_addr = \"127.0.0.1\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_ip_s = 60\nrate_limit_ip_burst = 60\n\
         rate_limit_per_key_s = 20\nrate_limit_key_burst = 20\n\n\
         [rtp]\nport_min = 30000\nport_max = 30999\n\n\
         [database]\nurl = \"sqlite://switchyard.db?mode=rwc\"\n\n\
         [[tenants]]\nname = \"acme\"\n\n[[tenants]]\nname = \"globex\"\n\n\
         [[trunks]]\nname = \"acme-carrier\"\nuri = \"sip:{0}\"\ntenant = \"acme\"\n\
         numbers = [\"+12025551234\"]\n\n\
         [[trunks]]\nname = \"globex-carrier\"\nuri = \"sip:{0}\"\ntenant = \"globex\"\n\
         numbers = [\"+12025559999\"]\n",
        carrier.addr()
    );
    let switch = SwitchProcess::start_files(&[("switchyard.toml", &config)]).await;
    let acme_key = switch.create_api_key("acme", "owner").await;
    let operator_key = switch.create_api_key("acme", "operator").await;
    let globex_key = switch.create_api_key("globex", "owner").await;
    let base = format!("{}/api/v1", switch.http_base());
    let http = reqwest::Client::new();
    let get = |key: &str, path: &str| {
        http.get(format!("{base}{path}"))
            .header("X-API-Key", key)
            .send()
    };

    // Roles first, while every bucket is full.
    let names = |v: Value| -> Vec<String> {
        v["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let own: Value = get(&acme_key, "/trunks")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        names(own),
        ["acme-carrier"],
        "a tenant owner saw another tenant's trunks"
    );
    let all: Value = get(&operator_key, "/trunks")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(names(all).len(), 2);
    let reload = http
        .post(format!("{base}/dialplan/reload"))
        .header("X-API-Key", &globex_key)
        .send()
        .await
        .unwrap();
    assert_eq!(reload.status(), 403);

    // 413 for a body over the limit (64 KiB by default), before any parsing.
    let big = json!({"to": "+14155550100", "from": "+12025551234", "metadata": {"x": "a".repeat(100_000)}});
    let resp = http
        .post(format!("{base}/voice/calls"))
        .header("X-API-Key", &acme_key)
        .json(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "PAYLOAD_TOO_LARGE", "{body}");

    // One key, 40 requests back to back: its burst of 20 (plus what refills meanwhile).
    let mut ok = 0;
    let mut limited = None;
    for _ in 0..40 {
        let resp = get(&acme_key, "/voice/calls").await.unwrap();
        match resp.status().as_u16() {
            200 => ok += 1,
            429 => limited = Some(resp),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        (15..40).contains(&ok),
        "{ok} of 40 passed a 20-request burst"
    );
    let limited = limited.expect("at least one 429");
    let retry: u64 = limited
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["code"], "RATE_LIMITED", "{body}");
    // Another key is not held back by acme's.
    assert_eq!(
        get(&globex_key, "/voice/calls").await.unwrap().status(),
        200
    );

    // One address spraying fresh keys: each key is new, the address is not.
    let mut statuses = Vec::new();
    for i in 0..100 {
        statuses.push(
            get(&format!("guess-{i}"), "/voice/calls")
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses[0], 401, "{statuses:?}");
    assert!(statuses.contains(&429), "no per-IP limit: {statuses:?}");
    assert!(
        !statuses.iter().any(|s| *s != 401 && *s != 429),
        "{statuses:?}"
    );
    let limited_total = metric(&switch, "switchyard_api_rate_limited_total").await;
    assert!(limited_total >= 2, "{limited_total}");
    drop(carrier);
}

/// Toll fraud through the API: a key cannot dial what the dial plan bars for inbound
/// traffic (+1900 premium rate here), nor outside its tenant's allowed destinations, nor
/// more calls at once or per second than the tenant's limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_are_held_to_barring_and_tenant_limits() {
    // Rings without answering: calls stay live, holding their slots.
    let ringing = Sipp::builder("uas_ring_no_answer.xml").calls(3).spawn();
    // Answers up to five calls (SIPp's built-in UAS).
    let answering = Sipp::builder("uas").calls(5).spawn();
    let config = format!(
        "[sip]\nlisten = \"127.0.0.1:0\"\npublic_addr = \"127.0.0.1\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [rtp]\nport_min = 30000\nport_max = 30999\n\n\
         [database]\nurl = \"sqlite://switchyard.db?mode=rwc\"\n\n\
         [dialplan]\nfile = \"dialplan.toml\"\n\n\
         [[tenants]]\nname = \"acme\"\nallowed_destinations = [\"+1\", \"+44\"]\n\
         max_concurrent_calls = 2\n\n\
         [[tenants]]\nname = \"globex\"\nmax_calls_per_second = 3\n\n\
         [[trunks]]\nname = \"acme-carrier\"\nuri = \"sip:{}\"\ntenant = \"acme\"\n\
         numbers = [\"+12025551234\"]\n\n\
         [[trunks]]\nname = \"globex-carrier\"\nuri = \"sip:{}\"\ntenant = \"globex\"\n\
         numbers = [\"+12025559999\"]\n",
        ringing.addr(),
        answering.addr()
    );
    let plan = "[[rules]]\nname = \"premium-barred\"\nto = { prefix = \"+1900\" }\nreject = 403\n";
    let switch =
        SwitchProcess::start_files(&[("switchyard.toml", &config), ("dialplan.toml", plan)]).await;
    let acme = Api::new(
        &switch.http_base(),
        &switch.create_api_key("acme", "owner").await,
    );
    let globex = Api::new(
        &switch.http_base(),
        &switch.create_api_key("globex", "owner").await,
    );
    let call = |to: &str, from: &str| json!({"to": to, "from": from, "ring_timeout": 30});

    // Barred by the dial plan, although no inbound trunk is involved.
    let (code, body) = acme.create_call(call("+19005550100", "+12025551234")).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (403, Some("DESTINATION_NOT_ALLOWED")),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("premium-barred"),
        "{body}"
    );
    // Outside the tenant's prefixes.
    let (code, body) = acme.create_call(call("+88213500001", "+12025551234")).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (403, Some("DESTINATION_NOT_ALLOWED")),
        "{body}"
    );

    // Two ringing calls fill the tenant's two slots; a third waits for one to end.
    let first = acme
        .create_call_ok(call("+14155550101", "+12025551234"))
        .await;
    let _second = acme
        .create_call_ok(call("+442071838750", "+12025551234"))
        .await;
    let (code, body) = acme.create_call(call("+14155550103", "+12025551234")).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (429, Some("RATE_LIMITED")),
        "{body}"
    );
    let (code, _) = acme.hangup(&first).await;
    assert_eq!(code, 200);
    // The slot is given back when the call task ends, just after the hangup answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = acme.create_call(call("+14155550104", "+12025551234")).await;
        if code == 201 {
            break;
        }
        assert_eq!(code, 429, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Calls per second: 10 back to back, 3 pass.
    let mut created = 0;
    for i in 0..10 {
        let (code, body) = globex
            .create_call(
                json!({"to": format!("+1415555020{i}"), "from": "+12025559999", "max_duration": 1}),
            )
            .await;
        match code {
            201 => created += 1,
            429 => assert_eq!(body["code"], "RATE_LIMITED", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        (3..=4).contains(&created),
        "{created} of 10 calls passed a 3/s limit"
    );
    let metrics = switch.metrics().await;
    for reason in ["barred", "destination", "concurrent", "rate"] {
        let line = format!("switchyard_api_calls_refused_total{{reason=\"{reason}\"}} ");
        let n: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(n >= 1, "{reason}: {metrics}");
    }
    drop(ringing);
    drop(answering);
}

/// A raw SIP peer on its own loopback address (127.0.0.0/8 gives many "sources").
struct RawPeer {
    sock: tokio::net::UdpSocket,
    switch: std::net::SocketAddr,
    n: u32,
}

impl RawPeer {
    async fn new(ip: &str, switch: std::net::SocketAddr) -> RawPeer {
        let sock = tokio::net::UdpSocket::bind(format!("{ip}:0"))
            .await
            .expect("bind");
        RawPeer { sock, switch, n: 0 }
    }

    /// An INVITE with an SDP offer, as a scanner or a softphone sends it.
    fn invite(&mut self, auth: Option<&str>) -> String {
        self.n += 1;
        let me = self.sock.local_addr().expect("local addr");
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n",
            ip = me.ip()
        );
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "INVITE sip:+14155552671@{sw} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK-sec-{n}-{port};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:+12025550100@{me}>;tag=t{n}\r\n\
             To: <sip:+14155552671@{sw}>\r\nCall-ID: sec-{n}-{port}@{ip}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:+12025550100@{me}>\r\nUser-Agent: friendly-scanner\r\n{auth}\
             Content-Type: application/sdp\r\nContent-Length: {len}\r\n\r\n{sdp}",
            sw = self.switch,
            n = self.n,
            port = me.port(),
            ip = me.ip(),
            len = sdp.len(),
        )
    }

    async fn send(&self, msg: &str) {
        self.sock
            .send_to(msg.as_bytes(), self.switch)
            .await
            .expect("send");
    }

    /// Every datagram that arrives within `quiet` of the previous one (or of the call).
    async fn answers(&self, quiet: Duration) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok(Ok((n, _))) = tokio::time::timeout(quiet, self.sock.recv_from(&mut buf)).await
        {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }

    /// Sends an INVITE and returns the first answer's status code (None: no answer).
    async fn try_invite(&mut self, auth: Option<&str>) -> (Option<u16>, String) {
        let msg = self.invite(auth);
        self.send(&msg).await;
        let mut buf = vec![0u8; 65_536];
        match tokio::time::timeout(Duration::from_millis(1500), self.sock.recv_from(&mut buf)).await
        {
            Ok(Ok((n, _))) => {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let code = text.get(8..11).and_then(|c| c.parse().ok());
                (code, text)
            }
            _ => (None, String::new()),
        }
    }
}

fn challenge_of(text: &str) -> sip::auth::DigestChallenge {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .unwrap_or_else(|| panic!("no WWW-Authenticate header in {text:?}"));
    sip::auth::DigestChallenge::parse(line).expect("a digest challenge")
}

fn answer(ch: &sip::auth::DigestChallenge, password: &str, uri: &str) -> String {
    sip::auth::authorization(
        ch,
        &sip::auth::Credentials {
            username: "carrier".into(),
            password: password.into(),
        },
        &sip::msg::Method::Invite,
        uri,
        "0a4f113b",
        1,
    )
}

/// A switch whose only trunk authenticates by digest (its CIDR is elsewhere), and a dial
/// plan that answers every admitted call 486, so admission shows on the wire.
async fn digest_switch(security: &str) -> SwitchProcess {
    let config = format!(
        "[sip]\nlisten = \"127.0.0.1:0\"\npublic_addr = \"127.0.0.1\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [rtp]\nport_min = 30000\nport_max = 30999\n\n\
         [database]\nurl = \"sqlite://switchyard.db?mode=rwc\"\n\n\
         [security]\n{security}\n\n\
         [dialplan]\nfile = \"dialplan.toml\"\n\n\
         [[tenants]]\nname = \"acme\"\n\n\
         [[trunks]]\nname = \"carrier\"\nuri = \"sip:192.0.2.1:5060\"\ntenant = \"acme\"\n\
         inbound_cidrs = [\"192.0.2.0/24\"]\ninbound_username = \"carrier\"\n\
         inbound_password = \"s3cret\"\n"
    );
    let plan = "[[rules]]\nname = \"busy\"\nto = { prefix = \"+1\" }\nreject = 486\n";
    SwitchProcess::start_files(&[("switchyard.toml", &config), ("dialplan.toml", plan)]).await
}

/// Reflection: an INVITE from a source nobody vouches for (as a spoofed one would be)
/// draws exactly one answer, no larger than itself: no 100 first, no retransmissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_invite_draws_one_answer_no_larger_than_itself() {
    let switch = digest_switch("").await;
    let mut peer = RawPeer::new("127.0.0.1", switch.sip_udp()).await;
    let invite = peer.invite(None);
    peer.send(&invite).await;
    // Timer G would retransmit at 0.5, 1 and 2 s: listen past that.
    let got = peer.answers(Duration::from_millis(2600)).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].starts_with("SIP/2.0 401 "), "{}", got[0]);
    assert!(
        got[0].len() <= invite.len(),
        "{} bytes out for {} in",
        got[0].len(),
        invite.len()
    );
    // A wrong answer to the challenge: one 403, just as quiet.
    let ch = challenge_of(&got[0]);
    let uri = format!("sip:+14155552671@{}", switch.sip_udp());
    let guess = peer.invite(Some(&answer(&ch, "guess", &uri)));
    peer.send(&guess).await;
    let got = peer.answers(Duration::from_millis(2600)).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].starts_with("SIP/2.0 403 "), "{}", got[0]);
}

/// Brute force: a source is banned after the configured number of wrong digest answers
/// (then even the right password gets no answer), and a user name guessed from many
/// addresses is slowed until the guesses stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_guesses_are_cut_off_by_a_ban_and_a_user_backoff() {
    let switch =
        digest_switch("auth_max_failures = 5\nauth_ban_s = 60\nauth_user_max_failures = 8").await;
    let uri = format!("sip:+14155552671@{}", switch.sip_udp());
    let mut guesser = RawPeer::new("127.0.0.2", switch.sip_udp()).await;
    let mut allowed = 0;
    loop {
        let (code, text) = guesser.try_invite(None).await;
        let Some(401) = code else {
            assert_eq!(code, None, "{text}");
            break;
        };
        let (code, text) = guesser
            .try_invite(Some(&answer(
                &challenge_of(&text),
                &format!("guess{allowed}"),
                &uri,
            )))
            .await;
        match code {
            Some(403) => allowed += 1,
            None => break,
            _ => panic!("{text}"),
        }
        assert!(allowed <= 50, "never banned");
    }
    assert_eq!(allowed, 5, "guesses allowed before the ban");
    // Banned: nothing more, not even for the right password.
    let mut ok_peer_same_source = RawPeer::new("127.0.0.2", switch.sip_udp()).await;
    assert_eq!(ok_peer_same_source.try_invite(None).await.0, None);
    let metrics = switch.metrics().await;
    assert!(
        metrics.contains("switchyard_sip_auth_bans_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_sip_banned_sources 1"),
        "{metrics}"
    );

    // The user name: three more wrong answers from three other addresses lock it (8 in all).
    for ip in ["127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        let mut p = RawPeer::new(ip, switch.sip_udp()).await;
        let (_, text) = p.try_invite(None).await;
        let (code, _) = p
            .try_invite(Some(&answer(&challenge_of(&text), "nope", &uri)))
            .await;
        assert_eq!(code, Some(403));
    }
    let mut owner = RawPeer::new("127.0.0.6", switch.sip_udp()).await;
    let (_, text) = owner.try_invite(None).await;
    let (code, _) = owner
        .try_invite(Some(&answer(&challenge_of(&text), "s3cret", &uri)))
        .await;
    assert_eq!(
        code,
        Some(403),
        "the right password during the backoff is refused unchecked"
    );
    // Once the backoff (2 s) has passed, the right password is admitted (486 by the plan).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = owner.try_invite(None).await;
        let (code, text) = owner
            .try_invite(Some(&answer(&challenge_of(&text), "s3cret", &uri)))
            .await;
        if code == Some(486) {
            break;
        }
        assert_eq!(code, Some(403), "{text}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never admitted again"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// RTP hijack (rtpbleed): an attacker on another address sweeps the switch's RTP ports
/// with valid RTP for the whole of a transit call, from before either far end speaks.
/// No leg latches to it: it receives nothing, the call's audio flows both ways, and the
/// sweep is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_sweep_never_hijacks_a_calls_media() {
    use common::transit::{TRANSIT_PLAN, start_with};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const PORTS: (u16, u16) = (31100, 31199);
    let far = Sipp::uas("uas_answer_rtp.xml");
    let h = start_with(far.addr(), TRANSIT_PLAN, "", |c| {
        c.rtp_ports(PORTS.0, PORTS.1)
    })
    .await;

    let attacker = Arc::new(
        tokio::net::UdpSocket::bind("127.0.0.2:0")
            .await
            .expect("bind"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let listen = {
        let (sock, stop, received) = (attacker.clone(), stop.clone(), received.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(50), sock.recv_from(&mut buf)).await
                {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let sweep = {
        let (sock, stop, sent) = (attacker.clone(), stop.clone(), sent.clone());
        tokio::spawn(async move {
            let mut seq: u16 = 0;
            while !stop.load(Ordering::Relaxed) {
                for port in (PORTS.0..=PORTS.1).step_by(2) {
                    seq = seq.wrapping_add(1);
                    let mut pkt = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x66, 0x66, 0x66, 0x66];
                    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                    pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                    pkt.extend_from_slice(&[0xff; 160]);
                    let _ = sock.send_to(&pkt, ("127.0.0.1", port)).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // The sweep is under way before the call exists.
    while sent.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let caller = Sipp::builder("uac_call_rtp.xml")
        .remote(h.switch.sip_udp())
        .service("+14155552671")
        .pause_ms(5500)
        .spawn();
    caller.wait().await.assert_success("caller");
    far.wait().await.assert_success("far end");
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::join!(listen, sweep);

    assert_eq!(
        received.load(Ordering::Relaxed),
        0,
        "the attacker received call audio"
    );
    let call = h.only_call().await;
    let media = &call["metadata"]["media"];
    for side in ["caller", "callee"] {
        let got = media[side]["packets_received"].as_u64().unwrap_or(0);
        let sent_on = media[side]["packets_sent"].as_u64().unwrap_or(0);
        assert!(got >= 150 && sent_on >= 150, "{side}: {media}");
    }
    let dropped = SwitchProcess::metric(
        &h.switch.metrics().await,
        "switchyard_rtp_foreign_dropped_total",
    )
    .unwrap_or(0);
    assert!(dropped > 0, "the sweep never reached the call's ports");
}

/// Connection exhaustion: a flood of TCP connections that never speak, from one source
/// and from many, leaves the switch's descriptors bounded by its caps and its log quiet
/// (one refusal line a second), and a TCP call placed meanwhile goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_flood_is_capped_and_calls_still_connect() {
    use common::transit::{TRANSIT_PLAN, start};
    let far = Sipp::uas("uas_answer_hold.xml");
    let h = start(
        far.addr(),
        TRANSIT_PLAN,
        "[sip]\ntcp_max_connections = 300\ntcp_max_per_source = 50\ntcp_message_timeout_s = 3",
    )
    .await;
    let tcp = h.switch.sip_tcp();
    let baseline = h.switch.open_fds();
    // 2,000 attempts: 1,800 from one address, 200 spread over 100 others.
    let mut held = Vec::new();
    let attempts = 2000u32;
    // At once, as a flood comes: every attempt is in before any could time out.
    let mut connecting = tokio::task::JoinSet::new();
    for i in 0..attempts {
        let ip = if i < 1800 {
            "127.0.9.1".to_owned()
        } else {
            format!("127.0.10.{}", 1 + i % 100)
        };
        connecting.spawn(async move {
            let s = tokio::net::TcpSocket::new_v4().ok()?;
            s.bind(format!("{ip}:0").parse().ok()?).ok()?;
            tokio::time::timeout(Duration::from_secs(2), s.connect(tcp))
                .await
                .ok()?
                .ok()
        });
    }
    while let Some(c) = connecting.join_next().await {
        if let Ok(Some(c)) = c {
            held.push(c);
        }
    }
    // Every accept has been handled once the switch says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (refused, open) = loop {
        let m = h.switch.metrics().await;
        let refused = SwitchProcess::metric(&m, "switchyard_sip_tcp_refused_total").unwrap_or(0);
        let open = SwitchProcess::metric(&m, "switchyard_sip_tcp_connections").unwrap_or(0);
        let timed_out =
            SwitchProcess::metric(&m, "switchyard_sip_tcp_timed_out_total").unwrap_or(0);
        assert!(open <= 250, "{open} connections open");
        if refused + open + timed_out >= 2000 {
            break (refused, open);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refused {refused}, open {open}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // 50 from the one source and 2 from each of the others got in.
    assert_eq!(refused, 1750);
    let fds = h.switch.open_fds();
    assert!(
        fds <= baseline + 300 + 20,
        "{fds} descriptors (baseline {baseline})"
    );
    // A TCP call while the flood holds its share.
    let caller = Sipp::builder("uac_call.xml")
        .remote(tcp)
        .tcp()
        .pause_ms(300)
        .spawn();
    caller
        .wait()
        .await
        .assert_success("caller over TCP during the flood");
    let refusal_lines = h.switch.logs().matches("tcp connection refused").count();
    eprintln!(
        "{attempts} attempts: {open} open, {refused} refused, {fds} descriptors (baseline {baseline}), {refusal_lines} refusal log lines"
    );
    assert!(refusal_lines <= 30, "{refusal_lines} refusal log lines");
    // Connections that never send a whole message are closed after the message timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = h.switch.metrics().await;
        let open = SwitchProcess::metric(&m, "switchyard_sip_tcp_connections").unwrap_or(0);
        if open <= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let timed_out = SwitchProcess::metric(
        &h.switch.metrics().await,
        "switchyard_sip_tcp_timed_out_total",
    )
    .unwrap_or(0);
    assert!(timed_out >= 250, "{timed_out}");
    drop(held);
    drop(far);
}
