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
