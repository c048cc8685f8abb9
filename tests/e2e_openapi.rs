//! The published API contract against the real binary: `GET /api/v1/openapi.json`, every
//! operation it documents is served, and schemathesis (a property-based fuzzer driven by
//! the document) finds no server error and no response that breaks the document.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Sipp, SwitchConfig, SwitchProcess};
use serde_json::Value;
use tokio::process::Command;

const DOCUMENT: &str = "/api/v1/openapi.json";

async fn document(switch: &SwitchProcess) -> Value {
    let resp = reqwest::get(format!("{}{DOCUMENT}", switch.http_base()))
        .await
        .expect("GET openapi.json");
    assert_eq!(resp.status().as_u16(), 200, "the document needs no key");
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    resp.json().await.expect("openapi.json is JSON")
}

/// Every operation in the document reaches a handler: asked without a key, each answers
/// its own 401 (or 200 for the public ones), never the fallback's 404 or a 405. With the
/// route table unit test (nothing routes around the table), the router's routes and the
/// document's are the same set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    // No call is placed: the trunk is a port nothing listens on.
    let trunk = std::net::SocketAddr::from(([127, 0, 0, 1], common::sipp::free_udp_port()));
    // The demo page (a public operation) answers 200 only when it is turned on.
    let switch =
        SwitchProcess::start(SwitchConfig::new(trunk).extra("[agents]\ndemo_page = true\n")).await;
    let doc = document(&switch).await;
    assert_eq!(doc["openapi"], "3.1.0");
    // `switchyard openapi` prints the same document without a running switch.
    let printed = Command::new(common::switch::switch_bin())
        .arg("openapi")
        .output()
        .await
        .expect("run switchyard openapi");
    assert!(printed.status.success());
    let printed: Value = serde_json::from_slice(&printed.stdout).expect("printed JSON");
    assert_eq!(printed, doc);
    let client = reqwest::Client::new();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let mut probed = 0;
    for (path, item) in &paths {
        // Path parameters get a value no call has: routing does not depend on it.
        let concrete: String = path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "call_probe"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        for (method, op) in item.as_object().into_iter().flatten() {
            let Ok(m) = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                panic!("{path}: {method} is not an HTTP method");
            };
            let resp = client
                .request(m, format!("{}{concrete}", switch.http_base()))
                .send()
                .await
                .expect("probe");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let public = op["security"] == serde_json::json!([{}]);
            let expected = if public { 200 } else { 401 };
            assert_eq!(status, expected, "{method} {path}: {body}");
            if !public {
                assert_eq!(body["code"], "UNAUTHORIZED", "{method} {path}");
            }
            probed += 1;
        }
    }
    assert!(probed >= 15, "only {probed} operations documented");

    // The probe can fail: a path the document does not have meets the fallback.
    let resp = client
        .get(format!("{}/api/v1/undocumented", switch.http_base()))
        .send()
        .await
        .expect("GET undocumented");
    assert_eq!(resp.status().as_u16(), 404);
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(body["code"], "NOT_FOUND", "{body}");

    // A method a path does not have: 405 in the error shape, with Allow.
    let resp = client
        .put(format!("{}/api/v1/voice/calls", switch.http_base()))
        .send()
        .await
        .expect("PUT calls");
    assert_eq!(resp.status().as_u16(), 405);
    let allow = resp
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(body["code"], "METHOD_NOT_ALLOWED", "{body}");
    assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_"))
    );
}

/// schemathesis: from `SWITCHYARD_SCHEMATHESIS` (set by `.ci/test.sh`), else where
/// `.ci/install-schemathesis.sh` puts it, else `schemathesis` on PATH.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD_SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("SWITCHYARD_TOOLS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("switchyard")))
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache").join("switchyard"))
        });
    if let Some(bin) = cache.map(|d| d.join("schemathesis").join("bin").join("schemathesis"))
        && bin.is_file()
    {
        return bin;
    }
    PathBuf::from("schemathesis")
}

/// A fresh schema in `SWITCHYARD_TEST_PG_URL` (as `.ci/test.sh` sets it): a database URL
/// that uses it, and the statement that drops it.
async fn postgres_url() -> (String, String) {
    let base = std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("sy_openapi_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&base)
        .await
        .expect("PostgreSQL reachable");
    for sql in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(&sql).execute(&admin).await.expect(&sql);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    (
        format!("{base}{sep}options=-c%20search_path%3D{schema}"),
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
    )
}

/// Inputs the fuzzer does not generate: ids that are not UTF-8 or hold a NUL name nothing
/// (404), a cursor with a NUL in its id is not ours, and an agent id or callback URL with
/// a NUL is refused (400).
async fn odd_inputs_are_refused(api: &common::Api) {
    let (code, body) = api
        .request(reqwest::Method::GET, "/voice/calls/call_%FF", None)
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    for path in [
        "/voice/calls/call_%00",
        "/voice/calls/call_%00/events",
        "/voice/calls/call_%00/recording",
    ] {
        let (code, body) = api.request(reqwest::Method::GET, path, None).await;
        assert_eq!(
            (code, body["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{path}: {body}"
        );
    }
    for path in [
        "/voice/calls/call_%00/hangup",
        "/voice/calls/call_x/events/evt_%00/redeliver",
    ] {
        let (code, body) = api.request(reqwest::Method::POST, path, None).await;
        assert_eq!(
            (code, body["code"].as_str()),
            (404, Some("NOT_FOUND")),
            "{path}: {body}"
        );
    }
    // A cursor of ours in form ("<ms>:<id>", base64url) with a NUL in the id.
    let (code, body) = api
        .request(reqwest::Method::GET, "/voice/calls?cursor=MToAeA", None)
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("INVALID_CURSOR")),
        "{body}"
    );
    let transfer = serde_json::json!({"to": "+14155550000"});
    let (code, body) = api
        .request(
            reqwest::Method::POST,
            "/voice/calls/call_%00/transfer",
            Some(&transfer),
        )
        .await;
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    for (field, value) in [
        ("agent_id", "agt_\0"),
        ("webhook_url", "https://example.com/\0"),
    ] {
        let mut call = serde_json::json!({"to": "+14155552671", "from": "+12025551234"});
        call[field] = value.into();
        let (code, body) = api.create_call(call).await;
        assert_eq!(
            (code, body["details"][0]["field"].as_str()),
            (400, Some(field)),
            "{body}"
        );
    }
}

/// On SQLite, the default store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_or_contract_violation() {
    let (switch, key) = fuzz(None, 34000).await;
    odd_inputs_are_refused(&common::Api::new(&switch.http_base(), &key)).await;
}

/// On PostgreSQL, which is stricter about text: it refuses NUL, and ids, cursors, agent
/// ids and callback URLs with one were 500s before the API refused them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_on_postgresql() {
    let (url, drop_schema) = postgres_url().await;
    let (switch, key) = fuzz(Some(url), 36000).await;
    odd_inputs_are_refused(&common::Api::new(&switch.http_base(), &key)).await;
    drop(switch);
    let base = std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    if let Ok(admin) = sqlx::PgPool::connect(&base).await {
        let _ = sqlx::query(&drop_schema).execute(&admin).await;
    }
}

/// The fuzz run against a switch on `database_url` (SQLite when None): schemathesis reads
/// the document from the running switch and sends requests generated from it (examples,
/// each constraint's edges, random valid and invalid data, and stateful chains along the
/// document's links: place a call, then get, hang up, transfer it...). Every check it has
/// runs but one (below). Returns the switch, still running, and the key it used.
async fn fuzz(database_url: Option<String>, rtp_port_min: u16) -> (SwitchProcess, String) {
    let bin = schemathesis();
    let version = Command::new(&bin).arg("--version").output().await;
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "schemathesis not found at {} ({version:?}); install it with \
         `bash .ci/install-schemathesis.sh` or set SWITCHYARD_SCHEMATHESIS",
        bin.display()
    );

    // The carrier: a SIPp UAS that answers every call the fuzzer places and stays in the
    // dialog (declining transfers), so hang-ups and transfers meet live calls. Nothing
    // leaves loopback.
    let carrier = Sipp::builder("uas_fuzz_carrier.xml")
        .calls(1_000_000)
        .timeout(Duration::from_secs(600))
        .spawn();
    // Callback URLs the fuzzer invents (public names and addresses) go to this proxy,
    // which drops every connection: no DNS lookup or connection leaves the machine.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let proxy_url = format!("http://{}", proxy.local_addr().expect("proxy addr"));
    tokio::spawn(async move {
        while let Ok((conn, _)) = proxy.accept().await {
            drop(conn);
        }
    });
    let mut config = SwitchConfig::new(carrier.addr());
    if let Some(url) = &database_url {
        config = config.database_url(url);
    }
    let switch = SwitchProcess::start(
        config
            // 1,000 calls' worth of RTP ports, of which a run uses a few hundred: the 503
            // for want of ports is not what is being tested.
            .rtp_ports(rtp_port_min, rtp_port_min + 1999)
            // SIPp's UAS sends no RTP: answered calls end after 2 s and free their ports.
            .media_timeout_s(2)
            // A tenant call rate the fuzzer exceeds in bursts, so it meets the 429
            // RATE_LIMITED (with Retry-After) of the tenant's limit too.
            .extra("[[tenants]]\nname = \"acme\"\nmax_calls_per_second = 20\n")
            // Realtime sessions configured: their documented 500 (no signing key) is a
            // configuration answer, not what the fuzzer looks for.
            .extra(
                "[agents]\nrealtime_signing_key = \"schemathesis-signing-key-0123456789abcdef\"\n",
            )
            .env("HTTP_PROXY", &proxy_url)
            .env("HTTPS_PROXY", &proxy_url)
            .env("ALL_PROXY", &proxy_url)
            .env("NO_PROXY", ""),
    )
    .await;
    // The operator's key reaches every handler's code (dial plan reload included).
    let key = switch.create_api_key("acme", "operator").await;
    let base = switch.http_base();

    let examples = std::env::var("SWITCHYARD_FUZZ_EXAMPLES").unwrap_or_else(|_| "100".into());
    let workdir = tempfile::tempdir().expect("tempdir");
    let junit = workdir.path().join("junit.xml");
    // The checks, in a config file so that one can be turned off for one resource (a
    // check named on the command line would override that): every check runs but
    // positive_data_acceptance, for schema-valid data the API may still refuse, for rules
    // no schema can state (the caller id must be one of the tenant's numbers (config), a
    // cursor one the API issued, a callback URL not internal); and use_after_free is off
    // for a proxy session and what is under it: DELETE closes a session, which stays
    // readable (status `closed`, listed with `?status=closed`), so reading it after the
    // DELETE is the contract, not a use after free.
    let config = workdir.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[checks]\n\
         enabled = true\n\
         positive_data_acceptance.enabled = false\n\
         \n\
         [[operations]]\n\
         include-path-regex = \"^/api/v1/proxy/sessions/\\\\{id\\\\}\"\n\
         checks.use_after_free.enabled = false\n",
    )
    .expect("write schemathesis.toml");
    let mut cmd = Command::new(&bin);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("{base}{DOCUMENT}"))
        .args(["--url", &base])
        .args(["--header", &format!("X-API-Key: {key}")])
        .args(["--max-examples", &examples])
        // One worker: CPython 3.11's ast module miscounts its recursion depth when two
        // threads parse at once (python/cpython#106905), which hypothesis does to describe
        // its strategies: a "Runtime Error" of the fuzzer's, not of the switch.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--report", "junit"])
        .arg("--report-junit-path")
        .arg(&junit)
        .arg("--no-color")
        .current_dir(workdir.path())
        .kill_on_drop(true);
    if let Ok(seed) = std::env::var("SWITCHYARD_FUZZ_SEED") {
        cmd.args(["--seed", &seed]);
    }
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("schemathesis finished within 300 s")
        .expect("run schemathesis");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("schemathesis ran {elapsed:.1?}\n{stdout}");
    assert!(
        out.status.success(),
        "schemathesis found problems ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    // It really ran: each operation of the document is a test case of the report
    // (schemathesis does not fuzz the document it was given itself).
    let report = std::fs::read_to_string(&junit).unwrap_or_default();
    let doc = document(&switch).await;
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            if path == DOCUMENT {
                continue;
            }
            let case = format!("name=\"{} {path}\"", method.to_ascii_uppercase());
            assert!(report.contains(&case), "{case} not tested:\n{report}");
            operations += 1;
        }
    }
    assert!(operations >= 14, "{operations} operations");
    assert!(
        !switch.logs().contains("panicked"),
        "the switch panicked:\n{}",
        switch.logs()
    );
    drop(carrier);
    (switch, key)
}
