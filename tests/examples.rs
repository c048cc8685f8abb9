//! What a newcomer meets first: the example configs, the README's sample config and its
//! first-call walkthrough (SIPp as the carrier), run against the real binary.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::switch::switch_bin;
use common::{Api, Sipp, SwitchProcess, wait_for_status};
use serde_json::json;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_config(path: &Path) -> std::process::Output {
    std::process::Command::new(switch_bin())
        .arg("check-config")
        .arg(path)
        .output()
        .expect("run switchyard check-config")
}

#[test]
fn every_example_config_passes_check_config_as_it_is() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo().join("examples")).expect("examples/") {
        let dir = entry.expect("examples entry").path();
        let config = dir.join("switchyard.toml");
        assert!(config.is_file(), "{} has no switchyard.toml", dir.display());
        let out = check_config(&config);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {stdout}{}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Complete: every example carries a dial plan, not just a switch config.
        assert!(stdout.contains("ok (dialplan:"), "{stdout}");
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} examples");
}

/// The config's top-level sections, as the parser itself lists them when it meets an
/// unknown one (so a section added later is caught here without a list to keep).
fn config_sections() -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let probe = dir.path().join("probe.toml");
    std::fs::write(&probe, "__probe = 1\n").expect("write probe");
    let out = check_config(&probe);
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let list = text
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("no field list in {text}"));
    list.split(',')
        .map(|s| s.trim().trim_matches('`').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[test]
fn readme_sample_config_shows_every_section_and_parses() {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let (_, after) = readme
        .split_once("## Configuration")
        .expect("a Configuration section");
    let block = after
        .split("```toml\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a toml block in the Configuration section");
    let table: toml::Table = toml::from_str(block).expect("README sample config is TOML");
    let sections = config_sections();
    assert!(sections.len() >= 10, "{sections:?}");
    for section in &sections {
        assert!(
            table.contains_key(section),
            "the README's sample config has no [{section}]"
        );
    }
    // And the switch accepts it (less the dial plan file, which the README does not ship).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("readme.toml");
    std::fs::write(&path, block.replace("file = \"dialplan.toml\"", "")).expect("write");
    let out = check_config(&path);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's "first call with no carrier", as written: `examples/first-call` with SIPp's
/// built-in UAS as the carrier, an API key from the CLI, a call placed over the API. Only
/// the ports are moved so the test can run beside others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_call_walkthrough_with_sipp_as_the_carrier() {
    let sipp = Sipp::uas("uas_answer_rtp.xml");
    let example = repo().join("examples/first-call");
    let config = std::fs::read_to_string(example.join("switchyard.toml"))
        .expect("first-call config")
        .replace("127.0.0.1:5060", "127.0.0.1:0")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:5070", &sipp.addr().to_string())
        .replace("port_min = 20000", "port_min = 41000")
        .replace("port_max = 20999", "port_max = 41999");
    let plan = std::fs::read_to_string(example.join("dialplan.toml")).expect("first-call plan");
    let switch =
        SwitchProcess::start_files(&[("switchyard.toml", &config), ("dialplan.toml", &plan)]).await;
    let key = switch.create_api_key("demo", "owner").await;
    let api = Api::new(&switch.http_base(), &key);
    let id = api
        .create_call_ok(json!({"to": "+15550100", "from": "+15550199", "max_duration": 2}))
        .await;
    let call = wait_for_status(&api, &id, "completed", Duration::from_secs(20)).await;
    assert_eq!(call["end_reason"], "max_duration", "{call}");
    assert!(
        call["rtp_packets_received"].as_i64().unwrap_or(0) > 0,
        "{call}"
    );
    sipp.wait().await.assert_success("carrier");
}
