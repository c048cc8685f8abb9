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
