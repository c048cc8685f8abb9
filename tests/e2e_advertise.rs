//! A switch listening on 0.0.0.0 with no `public_addr`, between a carrier on another
//! "host" (SIPp in a network namespace, reached over a veth pair) and one on loopback: each
//! is told the switch's address on its own side, in Via, Contact and SDP, and audio flows.
//! Before, both were told 127.0.0.1 and the far host's answers went nowhere.
//!
//! Needs root (network namespaces), as CI and the kernel-forwarding tests do.

mod common;

use std::time::Duration;

use common::netns::Netns;
use common::{Api, Sipp, SwitchProcess, wait_for_status};
use serde_json::json;

fn config(
    ns: &Netns,
    ns_carrier: std::net::SocketAddr,
    lo_carrier: std::net::SocketAddr,
) -> String {
    format!(
        "[sip]\nlisten = \"0.0.0.0:0\"\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [rtp]\nport_min = 30000\nport_max = 30999\n\n\
         [database]\nurl = \"sqlite://switchyard.db?mode=rwc\"\n\n\
         [dialplan]\nfile = \"dialplan.toml\"\n\n\
         [[tenants]]\nname = \"acme\"\n\n\
         [[trunks]]\nname = \"far\"\nuri = \"sip:{ns_carrier}\"\ntenant = \"acme\"\n\
         numbers = [\"+14155550000\"]\ninbound_cidrs = [\"{}/32\"]\n\n\
         [[trunks]]\nname = \"local\"\nuri = \"sip:{lo_carrier}\"\ntenant = \"acme\"\n",
        ns.ns_ip
    )
}

const PLAN: &str = "default_country_code = \"1\"\n\n\
    [[rules]]\nname = \"far-to-local\"\nsource_trunk = \"far\"\nto = { prefix = \"+1\" }\n\
    trunks = [\"local\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_peer_is_told_the_address_on_its_own_side() {
    let ns = Netns::create("adv");
    let ns_ip = ns.ns_ip.to_string();
    let far_uas = Sipp::builder("uas_answer_rtp.xml")
        .netns(&ns.name)
        .ip(&ns_ip)
        .spawn();
    let local_uas = Sipp::uas("uas_answer_rtp.xml");
    let switch = SwitchProcess::start_files(&[
        (
            "switchyard.toml",
            &config(&ns, far_uas.addr(), local_uas.addr()),
        ),
        ("dialplan.toml", PLAN),
    ])
    .await;
    let sip_port = switch.sip_udp().port();
    assert!(switch.sip_udp().ip().is_unspecified());

    // Outbound over the API to the far carrier: its INVITE names the veth address.
    let api = Api::new(
        &switch.http_base(),
        &switch.create_api_key("acme", "owner").await,
    );
    let id = api
        .create_call_ok(json!({"to": "+14155550123", "from": "+14155550000", "max_duration": 2}))
        .await;
    let call = wait_for_status(&api, &id, "completed", Duration::from_secs(20)).await;
    // Its audio reached the address we advertised.
    assert!(
        call["rtp_packets_received"].as_i64().unwrap_or(0) > 20,
        "{call}"
    );
    let far = far_uas.wait().await;
    far.assert_success("far carrier (outbound)");
    let host = ns.host_ip.to_string();
    assert!(
        far.messages
            .contains(&format!("SIP/2.0/UDP {host}:{sip_port}")),
        "{far}"
    );
    assert!(
        far.messages.contains(&format!("@{host}:{sip_port}")),
        "{far}"
    );
    assert!(far.messages.contains(&format!("c=IN IP4 {host}")), "{far}");
    assert!(
        !far.messages.contains("127.0.0.1"),
        "loopback told to a far peer:\n{far}"
    );

    // Inbound from the far carrier, carried out to the local one: each leg hears its own side.
    let caller = Sipp::builder("uac_call_rtp.xml")
        .netns(&ns.name)
        .ip(&ns_ip)
        .remote(std::net::SocketAddr::new(ns.host_ip.into(), sip_port))
        .pause_ms(500)
        .spawn();
    let caller = caller.wait().await;
    caller.assert_success("far caller (inbound)");
    assert!(
        caller.messages.contains(&format!("c=IN IP4 {host}")),
        "{caller}"
    );
    assert!(
        caller.messages.contains(&format!("@{host}:{sip_port}")),
        "{caller}"
    );
    assert!(
        !caller.messages.contains("127.0.0.1"),
        "loopback told to a far peer:\n{caller}"
    );
    let local = local_uas.wait().await;
    local.assert_success("local carrier (transit leg B)");
    assert!(local.messages.contains("c=IN IP4 127.0.0.1"), "{local}");
    assert!(
        !local.messages.contains(&host),
        "the veth address told to a loopback peer:\n{local}"
    );
}
