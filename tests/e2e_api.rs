//! The HTTP API contract against the real binary: auth, roles, validation codes, tenant
//! isolation, cursor pagination, the webhook secret, and `check-config`.

mod common;

use std::time::Duration;

use common::{Api, Sipp, SwitchConfig, SwitchProcess};
use serde_json::{Value, json};

fn call_body() -> Value {
    json!({"to": "+14155552671", "from": "+12025551234"})
}

/// A carrier that answers every INVITE with 486, so calls end quickly.
fn busy_carrier(calls: u32) -> Sipp {
    Sipp::builder("uas_busy.xml").calls(calls).spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_roles() {
    let sipp = busy_carrier(1);
    let switch = SwitchProcess::start(SwitchConfig::new(sipp.addr())).await;
    let owner = Api::new(
        &switch.http_base(),
        &switch.create_api_key("acme", "owner").await,
    );

    let (code, body) = owner.with_key("").create_call(call_body()).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (401, Some("UNAUTHORIZED")),
        "{body}"
    );
    assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_"))
    );
    let (code, body) = owner.with_key("sy_live_nope").get_call("call_x").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (401, Some("UNAUTHORIZED")),
        "{body}"
    );

    // Bearer works as well as X-API-Key.
    let resp = owner
        .client
        .get(format!("{}/api/v1/voice/calls", owner.base))
        .bearer_auth(&owner.key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let member = owner.with_key(&switch.create_api_key("acme", "member").await);
    let (code, body) = member.create_call(call_body()).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (403, Some("FORBIDDEN")),
        "{body}"
    );
    let (code, _) = member.list_calls("").await;
    assert_eq!(code, 200, "members can read");
    let (code, body) = member
        .request(reqwest::Method::GET, "/webhooks/secret", None)
        .await;
    assert_eq!(code, 403, "{body}");

    // Secret rotation: a new whsec_ value, and the old one is gone.
    let old = owner.webhook_secret().await;
    let (code, body) = owner
        .request(reqwest::Method::POST, "/webhooks/secret/rotate", None)
        .await;
    assert_eq!(code, 200, "{body}");
    let new = body["data"]["secret"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(new.starts_with("whsec_") && new != old, "{body}");
    assert_eq!(owner.webhook_secret().await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_have_stable_codes() {
    let sipp = busy_carrier(1);
    let switch = SwitchProcess::start(SwitchConfig::new(sipp.addr())).await;
    let api = Api::new(
        &switch.http_base(),
        &switch.create_api_key("acme", "developer").await,
    );
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            json!({"to": "4155552671", "from": "+12025551234"}),
            400,
            "VALIDATION_ERROR",
            "to",
        ),
        (
            json!({"to": "+1415555267x", "from": "+12025551234"}),
            400,
            "VALIDATION_ERROR",
            "to",
        ),
        (
            json!({"to": "+14155552671", "from": "12025551234"}),
            400,
            "VALIDATION_ERROR",
            "from",
        ),
        (
            json!({"to": "+14155552671", "from": "+19998887777"}),
            400,
            "INVALID_CALLER_ID",
            "from",
        ),
        (
            json!({"to": "+14155552671", "from": "+12025551234", "ring_timeout": 0}),
            400,
            "VALIDATION_ERROR",
            "ring_timeout",
        ),
        (
            json!({"to": "+14155552671", "from": "+12025551234", "max_duration": 100000}),
            400,
            "VALIDATION_ERROR",
            "max_duration",
        ),
        (
            json!({"to": "+14155552671", "from": "+12025551234", "webhook_url": "ftp://x"}),
            400,
            "VALIDATION_ERROR",
            "webhook_url",
        ),
        (
            json!({"to": "+14155552671", "from": "+12025551234", "metadata": [1, 2]}),
            400,
            "VALIDATION_ERROR",
            "metadata",
        ),
        (
            json!({"to": "+14155552671", "from": "+12025551234", "agent_id": "bogus"}),
            400,
            "VALIDATION_ERROR",
            "agent_id",
        ),
        (
            json!({"to": "+14155552671", "from": "+12025551234", "colour": "blue"}),
            400,
            "VALIDATION_ERROR",
            "colour",
        ),
        (
            json!({"from": "+12025551234"}),
            400,
            "VALIDATION_ERROR",
            "to",
        ),
    ];
    for (body, status, code, mention) in cases {
        let (got, resp) = api.create_call(body.clone()).await;
        assert_eq!(got, status, "{body} -> {resp}");
        assert_eq!(resp["code"], code, "{body} -> {resp}");
        let message = resp["error"].as_str().unwrap_or_default();
        assert!(message.contains(mention), "{body} -> {resp}");
    }
    // Not JSON at all.
    let resp = api
        .client
        .post(format!("{}/api/v1/voice/calls", api.base))
        .header("X-API-Key", &api.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "VALIDATION_ERROR");

    let (code, body) = api.get_call("call_doesnotexist").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    let (code, body) = api.hangup("call_doesnotexist").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("NOT_FOUND")),
        "{body}"
    );
    let (code, body) = api.list_calls("limit=101").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("VALIDATION_ERROR")),
        "{body}"
    );
    let (code, body) = api.list_calls("cursor=garbage").await;
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("INVALID_CURSOR")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_and_pagination_is_exact() {
    let sipp = busy_carrier(7);
    let config = SwitchConfig::new(sipp.addr()).extra("[[tenants]]\nname = \"globex\"\n");
    let switch = SwitchProcess::start(config).await;
    let acme = Api::new(
        &switch.http_base(),
        &switch.create_api_key("acme", "owner").await,
    );
    let other = acme.with_key(&switch.create_api_key("globex", "owner").await);

    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(acme.create_call_ok(call_body()).await);
    }
    for id in &ids {
        common::wait_for_status(&acme, id, "busy", Duration::from_secs(20)).await;
    }
    // Another tenant sees none of them, and cannot act on them.
    let (code, body) = other.get_call(&ids[0]).await;
    assert_eq!(code, 404, "{body}");
    let (code, _) = other.hangup(&ids[0]).await;
    assert_eq!(code, 404);
    let (code, _) = other.events(&ids[0]).await;
    assert_eq!(code, 404);
    let (_, body) = other.list_calls("").await;
    assert_eq!(body["meta"]["pagination"]["total"], 0);
    // The other tenant owns no caller ids on this trunk.
    let (code, body) = other.create_call(call_body()).await;
    assert_eq!(
        (code, body["code"].as_str()),
        (400, Some("INVALID_CALLER_ID"))
    );

    // 7 calls in pages of 3: 3 + 3 + 1, newest first, no repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=3&cursor={c}"),
            None => "limit=3".to_owned(),
        };
        let (code, body) = acme.list_calls(&q).await;
        assert_eq!(code, 200, "{body}");
        let p = &body["meta"]["pagination"];
        assert_eq!(p["total"], 7);
        for c in body["data"].as_array().unwrap() {
            seen.push(c["id"].as_str().unwrap().to_owned());
        }
        pages += 1;
        if p["has_more"] == true {
            cursor = Some(p["cursor"].as_str().unwrap().to_owned());
        } else {
            assert!(p["cursor"].is_null());
            break;
        }
    }
    assert_eq!(pages, 3);
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    sipp.wait().await.assert_success("carrier");
}

#[tokio::test]
async fn check_config_reports_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[sip]\nlisten = \"0.0.0.0:5060\"\n\n[[trunks]]\nname = \"c\"\nuri = \"http://carrier\"\nnumbers = [\"+1202555\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(common::switch::switch_bin())
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 6: trunks[0].uri"), "{err}");
    assert!(err.contains("line 7: trunks[0].numbers[0]"), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[http]\nlisten = \"127.0.0.1:8089\"\n").unwrap();
    let out = std::process::Command::new(common::switch::switch_bin())
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
