//! Number-masking proxy sessions against the real binary: the `[[proxy_numbers]]` pool and
//! its API, sessions (create, list, get, close, expiry, also across a restart), how proxy
//! numbers are allocated, and the uniqueness of (proxy number, participant) among open
//! sessions under 200 concurrent creates on SQLite and on PostgreSQL.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{Api, SwitchConfig, SwitchProcess};
use reqwest::Method;
use serde_json::{Value, json};

/// A switch whose trunk points at a port nothing listens on (no call is placed), with
/// `pool` as `[[proxy_numbers]]` of tenant acme (each `(number, capabilities)`).
async fn switch_with_pool(pool: &[(&str, &str)], database_url: Option<&str>) -> SwitchProcess {
    let trunk = std::net::SocketAddr::from(([127, 0, 0, 1], common::sipp::free_udp_port()));
    let mut config = SwitchConfig::new(trunk);
    if let Some(url) = database_url {
        config = config.database_url(url);
    }
    // A second tenant with its own trunk, for isolation.
    let mut extra = format!(
        "[[trunks]]\nname = \"other-carrier\"\nuri = \"sip:{trunk}\"\ntenant = \"other\"\n\n"
    );
    for (number, capabilities) in pool {
        extra.push_str(&format!(
            "[[proxy_numbers]]\nnumber = \"{number}\"\ntrunk = \"carrier\"\ncapabilities = {capabilities}\n\n"
        ));
    }
    SwitchProcess::start(config.extra(&extra)).await
}

const BOTH: &str = "[\"voice\", \"messaging\"]";

fn session(a: &str, b: &str) -> Value {
    json!({"participants": [{"number": a}, {"number": b}]})
}

async fn create(api: &Api, body: &Value) -> (u16, Value) {
    api.request(Method::POST, "/proxy/sessions", Some(body))
        .await
}

async fn create_ok(api: &Api, body: &Value) -> Value {
    let (code, resp) = create(api, body).await;
    assert_eq!(code, 201, "POST /proxy/sessions {body}: {resp}");
    resp["data"].clone()
}

/// The proxy number each participant of a session was given, by participant number.
fn proxies(session: &Value) -> HashMap<String, String> {
    session["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["number"].as_str().unwrap_or_default().to_owned(),
                p["proxy_number"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn assert_error(code: u16, body: &Value, want_code: u16, want: &str) {
    assert_eq!(
        (code, body["code"].as_str()),
        (want_code, Some(want)),
        "{body}"
    );
    assert!(
        body["request_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("req_")),
        "{body}"
    );
}

/// Every session of the tenant, following the cursor (`query` e.g. `status=open`).
async fn all_sessions(api: &Api, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/proxy/sessions?limit=100&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (code, body) = api.request(Method::GET, &path, None).await;
        assert_eq!(code, 200, "{path}: {body}");
        out.extend(body["data"].as_array().cloned().unwrap_or_default());
        match body["meta"]["pagination"]["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_from_config_and_api() {
    let switch = switch_with_pool(
        &[("+14155550100", BOTH), ("+14155550101", "[\"voice\"]")],
        None,
    )
    .await;
    let owner = switch.api("acme", "owner").await;

    let (code, body) = owner.request(Method::GET, "/proxy/numbers", None).await;
    assert_eq!(code, 200, "{body}");
    let numbers = body["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(numbers.len(), 2, "{body}");
    assert_eq!(numbers[0]["number"], "+14155550100");
    assert_eq!(numbers[0]["source"], "config");
    assert_eq!(numbers[0]["capabilities"], json!(["voice", "messaging"]));
    assert_eq!(numbers[1]["capabilities"], json!(["voice"]));
    assert_eq!(numbers[1]["trunk"], "carrier");

    // Added through the API.
    let add = json!({"number": "+12125550100", "trunk": "carrier", "capabilities": ["messaging"]});
    let (code, body) = owner
        .request(Method::POST, "/proxy/numbers", Some(&add))
        .await;
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["data"]["source"], "api");
    assert_eq!(body["data"]["active_pairings"], 0);
    let (code, body) = owner
        .request(Method::POST, "/proxy/numbers", Some(&add))
        .await;
    assert_error(code, &body, 409, "NUMBER_ALREADY_EXISTS");
    for bad in [
        json!({"number": "12125550100", "trunk": "carrier"}),
        json!({"number": "+12125550199", "trunk": "nope"}),
        json!({"number": "+12125550199", "trunk": "carrier", "capabilities": []}),
        json!({"number": "+12125550199", "trunk": "carrier", "extra": 1}),
    ] {
        let (code, body) = owner
            .request(Method::POST, "/proxy/numbers", Some(&bad))
            .await;
        assert_error(code, &body, 400, "VALIDATION_ERROR");
    }
    // Developers open sessions but do not manage the pool; another tenant does not see it.
    let developer = switch.api("acme", "developer").await;
    let (code, body) = developer
        .request(Method::POST, "/proxy/numbers", Some(&add))
        .await;
    assert_error(code, &body, 403, "FORBIDDEN");
    let other = switch.api("other", "owner").await;
    let (_, body) = other.request(Method::GET, "/proxy/numbers", None).await;
    assert_eq!(body["data"], json!([]), "{body}");
    // A number reaches one tenant; the other tenant's trunk is not acme's.
    let theirs = json!({"number": "+12125550100", "trunk": "other-carrier"});
    let (code, body) = other
        .request(Method::POST, "/proxy/numbers", Some(&theirs))
        .await;
    assert_error(code, &body, 409, "NUMBER_ALREADY_EXISTS");
    let (code, body) = owner
        .request(
            Method::POST,
            "/proxy/numbers",
            Some(&json!({"number": "+12125550199", "trunk": "other-carrier"})),
        )
        .await;
    assert_error(code, &body, 400, "VALIDATION_ERROR");

    // A number an open session uses cannot be removed; once the session closes it can.
    let s = create_ok(&developer, &session("+14155552671", "+14155559999")).await;
    assert_eq!(s["status"], "open");
    for p in s["participants"].as_array().into_iter().flatten() {
        assert_eq!(
            p["proxy_number"], "+14155550100",
            "the only voice+messaging number"
        );
    }
    let (_, body) = owner.request(Method::GET, "/proxy/numbers", None).await;
    assert_eq!(body["data"][1]["number"], "+14155550100");
    assert_eq!(body["data"][1]["active_pairings"], 2, "{body}");
    let (code, body) = owner
        .request(Method::DELETE, "/proxy/numbers/+14155550100", None)
        .await;
    assert_error(code, &body, 409, "NUMBER_IN_USE");
    let id = s["id"].as_str().unwrap_or_default();
    let (code, body) = developer
        .request(Method::DELETE, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["status"], "closed");
    let (code, body) = owner
        .request(Method::DELETE, "/proxy/numbers/%2B14155550100", None)
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["number"], "+14155550100");
    let (code, body) = owner
        .request(Method::DELETE, "/proxy/numbers/+14155550100", None)
        .await;
    assert_error(code, &body, 404, "NOT_FOUND");
    // Nothing left for voice and messaging: the messaging-only and voice-only numbers
    // do not serve a voice_and_messaging session, but each serves its own mode.
    let (code, body) = create(&developer, &session("+14155552671", "+14155559999")).await;
    assert_error(code, &body, 409, "POOL_EXHAUSTED");
    let mut voice = session("+14155552671", "+14155559999");
    voice["mode"] = "voice".into();
    let s = create_ok(&developer, &voice).await;
    assert!(proxies(&s).values().all(|p| p == "+14155550101"), "{s}");
    let mut messaging = session("+14155552671", "+14155559999");
    messaging["mode"] = "messaging".into();
    let s = create_ok(&developer, &messaging).await;
    assert!(proxies(&s).values().all(|p| p == "+12125550100"), "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_api_and_validation() {
    let switch = switch_with_pool(&[("+14155550100", BOTH), ("+14155550101", BOTH)], None).await;
    let api = switch.api("acme", "developer").await;

    let body = json!({
        "participants": [{"number": "+14155552671"}, {"number": "+14155553333"}],
        "mode": "voice",
        "ttl_seconds": 3600,
        "metadata": {"order": "A-17"},
        "webhook_url": "http://127.0.0.1:9/hook",
        "max_call_duration": 600,
        "record": true,
        "unknown_caller": {"sip_code": 480}
    });
    let s = create_ok(&api, &body).await;
    let id = s["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("ps_"), "{s}");
    assert_eq!(s["status"], "open");
    assert_eq!(s["mode"], "voice");
    assert_eq!(s["metadata"], json!({"order": "A-17"}));
    assert_eq!(s["webhook_url"], "http://127.0.0.1:9/hook");
    assert_eq!(s["max_call_duration"], 600);
    assert_eq!(s["record"], true);
    assert_eq!(
        s["unknown_caller"],
        json!({"sip_code": 480, "announcement": null})
    );
    assert!(
        s["expires_at"].is_string() && s["closed_at"].is_null(),
        "{s}"
    );
    let p = proxies(&s);
    assert_eq!(p.len(), 2);
    assert!(p.values().all(|n| n.starts_with("+1415555010")), "{s}");

    let (code, got) = api
        .request(Method::GET, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["data"], s, "GET answers what POST did");
    let (code, got) = api
        .request(
            Method::GET,
            &format!("/proxy/sessions/{id}/interactions"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["data"], json!([]));
    assert_eq!(got["meta"]["pagination"]["total"], 0);
    assert_eq!(got["meta"]["pagination"]["has_more"], false);
    for path in [
        "/proxy/sessions/ps_nope",
        "/proxy/sessions/ps_nope/interactions",
    ] {
        let (code, body) = api.request(Method::GET, path, None).await;
        assert_error(code, &body, 404, "NOT_FOUND");
    }
    let (code, body) = api
        .request(Method::DELETE, "/proxy/sessions/ps_nope", None)
        .await;
    assert_error(code, &body, 404, "NOT_FOUND");
    // Another tenant does not see it.
    let other = switch.api("other", "owner").await;
    let (code, _) = other
        .request(Method::GET, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 404);

    // Defaults: voice and messaging, no expiry, unknown callers get 404.
    let d = create_ok(&api, &session("+14155552671", "+14155554444")).await;
    assert_eq!(d["mode"], "voice_and_messaging");
    assert!(d["expires_at"].is_null(), "{d}");
    assert_eq!(d["unknown_caller"]["sip_code"], 404);
    assert_eq!(d["record"], false);

    // Validation.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"participants": [{"number": "+14155552671"}]}),
            "participants",
        ),
        (session("+14155552671", "+14155552671"), "participants"),
        (
            session("4155552671", "+14155552672"),
            "participants[0].number",
        ),
        (session("+14155552671", "+0123"), "participants[1].number"),
        (
            json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "ttl_seconds": 0}),
            "ttl_seconds",
        ),
        (
            json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "ttl_seconds": 60, "expires_at": future}),
            "expires_at",
        ),
        (
            json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "expires_at": past}),
            "expires_at",
        ),
        (
            json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "expires_at": "tomorrow"}),
            "expires_at",
        ),
        (
            json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "webhook_url": "http://169.254.169.254/latest"}),
            "webhook_url",
        ),
        (
            json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "max_call_duration": 0}),
            "max_call_duration",
        ),
        (
            json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "unknown_caller": {"sip_code": 200}}),
            "unknown_caller.sip_code",
        ),
        (
            json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "metadata": [1]}),
            "metadata",
        ),
    ];
    for (body, field) in bad {
        let (code, resp) = create(&api, &body).await;
        assert_error(code, &resp, 400, "VALIDATION_ERROR");
        assert_eq!(resp["details"][0]["field"], field, "{body}: {resp}");
    }
    for body in [
        json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "mode": "fax"}),
        json!({"participants": [{"number": "+14155552671"}, {"number": "+14155552672"}], "surprise": 1}),
    ] {
        let (code, resp) = create(&api, &body).await;
        assert_error(code, &resp, 400, "VALIDATION_ERROR");
    }
    let member = switch.api("acme", "member").await;
    let (code, resp) = create(&member, &session("+14155552671", "+14155552672")).await;
    assert_error(code, &resp, 403, "FORBIDDEN");

    // Close: closed, closed_at set, idempotent; the list filters by status.
    let (code, closed) = api
        .request(Method::DELETE, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 200, "{closed}");
    assert_eq!(closed["data"]["status"], "closed");
    assert!(closed["data"]["closed_at"].is_string());
    let (code, again) = api
        .request(Method::DELETE, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(again["data"]["closed_at"], closed["data"]["closed_at"]);
    let third = create_ok(&api, &session("+14155557777", "+14155558888")).await;
    let all = all_sessions(&api, "").await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["id"], third["id"], "newest first");
    let open: Vec<Value> = all_sessions(&api, "status=open").await;
    assert_eq!(open.len(), 2);
    assert!(open.iter().all(|s| s["status"] == "open"));
    let closed_list = all_sessions(&api, "status=closed").await;
    assert_eq!(closed_list.len(), 1);
    assert_eq!(closed_list[0]["id"], id.as_str());

    // Cursor pagination: pages of 2.
    let (code, page1) = api
        .request(Method::GET, "/proxy/sessions?limit=2", None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(page1["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(page1["meta"]["pagination"]["has_more"], true);
    assert_eq!(page1["meta"]["pagination"]["total"], 3);
    let cursor = page1["meta"]["pagination"]["cursor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, page2) = api
        .request(
            Method::GET,
            &format!("/proxy/sessions?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["data"].as_array().map(Vec::len), Some(1), "{page2}");
    assert_eq!(page2["meta"]["pagination"]["has_more"], false);
    assert_eq!(page2["data"][0]["id"], id.as_str(), "the oldest last");
    for (path, want) in [
        ("/proxy/sessions?cursor=bm9wZQ", "INVALID_CURSOR"),
        ("/proxy/sessions?status=bogus", "VALIDATION_ERROR"),
        ("/proxy/sessions?limit=0", "VALIDATION_ERROR"),
    ] {
        let (code, body) = api.request(Method::GET, path, None).await;
        assert_error(code, &body, 400, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocation_sticky_geo_busiest_and_exhaustion() {
    let switch = switch_with_pool(
        &[
            ("+12125550100", BOTH),
            ("+14155550100", BOTH),
            ("+14155550101", BOTH),
            ("+442071230000", BOTH),
        ],
        None,
    )
    .await;
    let api = switch.api("acme", "developer").await;
    let sf = "+14155552671";
    let london = "+447700900123";

    // Geo: each side gets a number of its own country and area code.
    let s1 = create_ok(&api, &session(sf, london)).await;
    let p1 = proxies(&s1);
    assert!(p1[sf].starts_with("+1415555010"), "{s1}");
    assert_eq!(p1[london], "+442071230000", "{s1}");

    // The busiest of equally close numbers: a second San Francisco participant gets the
    // 415 number already in use (for someone else), not the idle one.
    let s2 = create_ok(&api, &session("+14155553333", "+12125551234")).await;
    let p2 = proxies(&s2);
    assert_eq!(p2["+14155553333"], p1[sf], "{s2}");
    assert_eq!(p2["+12125551234"], "+12125550100", "{s2}");

    // The same participant in a second open session cannot get the same number again.
    let s3 = create_ok(&api, &session(sf, "+12125559999")).await;
    let p3 = proxies(&s3);
    assert_ne!(p3[sf], p1[sf], "pair reused: {s1} {s3}");
    assert!(
        p3[sf].starts_with("+1415555010"),
        "the other 415 number: {s3}"
    );

    // Sticky: the same two participants again, after closing, get the numbers they had.
    let id1 = s1["id"].as_str().unwrap_or_default();
    let (code, _) = api
        .request(Method::DELETE, &format!("/proxy/sessions/{id1}"), None)
        .await;
    assert_eq!(code, 200);
    let s4 = create_ok(&api, &session(london, sf)).await;
    let p4 = proxies(&s4);
    assert_eq!(p4[sf], p1[sf], "sticky: {s1} {s4}");
    assert_eq!(p4[london], p1[london], "sticky: {s1} {s4}");

    // Exhaustion: sf is in two open sessions (two numbers); two more, then none is left.
    create_ok(&api, &session(sf, "+12125550001")).await;
    create_ok(&api, &session(sf, "+12125550002")).await;
    let (code, body) = create(&api, &session(sf, "+12125550003")).await;
    assert_error(code, &body, 409, "POOL_EXHAUSTED");
    // Closing one of sf's sessions frees its pairing.
    let id3 = s3["id"].as_str().unwrap_or_default();
    let (code, _) = api
        .request(Method::DELETE, &format!("/proxy/sessions/{id3}"), None)
        .await;
    assert_eq!(code, 200);
    let s5 = create_ok(&api, &session(sf, "+12125550003")).await;
    assert_eq!(proxies(&s5)[sf], p3[sf], "the freed number: {s5}");
    assert_pairs_unique(&all_sessions(&api, "status=open").await);
}

/// No (proxy number, participant) pair in two open sessions.
fn assert_pairs_unique(open: &[Value]) {
    let mut seen = HashSet::new();
    for s in open {
        assert_eq!(s["status"], "open", "{s}");
        for (participant, proxy) in proxies(s) {
            assert!(
                seen.insert((proxy.clone(), participant.clone())),
                "({proxy}, {participant}) in two open sessions"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_frees_pairings_and_holds_across_restart() {
    // One number: a participant can be in one open session at a time.
    let mut switch = switch_with_pool(&[("+14155550100", BOTH)], None).await;
    let api = switch.api("acme", "developer").await;
    let mut body = session("+14155552671", "+14155553333");
    body["ttl_seconds"] = 2.into();
    let s = create_ok(&api, &body).await;
    let id = s["id"].as_str().unwrap_or_default().to_owned();
    let (code, resp) = create(&api, &session("+14155552671", "+14155554444")).await;
    assert_error(code, &resp, 409, "POOL_EXHAUSTED");

    let expired = wait_for_session_status(&api, &id, "expired").await;
    assert_eq!(expired["closed_at"], expired["expires_at"], "{expired}");
    let listed = all_sessions(&api, "status=expired").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());
    assert!(all_sessions(&api, "status=open").await.is_empty());
    // Its pairing is free again; closing an expired session changes nothing.
    create_ok(&api, &session("+14155552671", "+14155554444")).await;
    let (code, resp) = api
        .request(Method::DELETE, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 200);
    assert_eq!(resp["data"]["status"], "expired");

    // Expiry is kept in the database: a session that expires while the switch is down
    // reads as expired after the restart, and its pairing is free.
    let mut body = session("+14155555555", "+14155556666");
    body["ttl_seconds"] = 2.into();
    let s = create_ok(&api, &body).await;
    let id = s["id"].as_str().unwrap_or_default().to_owned();
    switch.kill_9().await;
    let expires_at = chrono::DateTime::parse_from_rfc3339(s["expires_at"].as_str().unwrap_or(""))
        .expect("expires_at is RFC 3339");
    while chrono::Utc::now() < expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    switch.restart().await;
    let api = Api::new(&switch.http_base(), &api.key);
    let (code, got) = api
        .request(Method::GET, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["data"]["status"], "expired", "{got}");
    create_ok(&api, &session("+14155555555", "+14155557777")).await;
    let (_, numbers) = api.request(Method::GET, "/proxy/numbers", None).await;
    assert_eq!(
        numbers["data"].as_array().map(Vec::len),
        Some(1),
        "{numbers}"
    );
}

/// Polls `GET /proxy/sessions/{id}` until `status` (expiry is time-driven).
async fn wait_for_session_status(api: &Api, id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = api
            .request(Method::GET, &format!("/proxy/sessions/{id}"), None)
            .await;
        if code == 200 && body["data"]["status"] == status {
            return body["data"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {id} not {status} within 10 s: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 200 creates at once against 5 numbers, among 40 participants who each appear in ~10
/// sessions: at most 5 of a participant's sessions can be open, so many creates must be
/// refused. Every answer is 201 or 409 POOL_EXHAUSTED, no pair is in two open sessions,
/// and each refusal was real: asked again one at a time (nothing has closed since), each
/// is refused again.
async fn concurrent_creates(database_url: Option<&str>) {
    let pool: Vec<String> = (0..5).map(|i| format!("+1415555010{i}")).collect();
    let entries: Vec<(&str, &str)> = pool.iter().map(|n| (n.as_str(), BOTH)).collect();
    let switch = switch_with_pool(&entries, database_url).await;
    let api = switch.api("acme", "developer").await;
    let participants: Vec<String> = (0..40).map(|i| format!("+1212555{i:04}")).collect();
    let bodies: Vec<Value> = (0..200usize)
        .map(|i| {
            let a = i % 40;
            let b = (a + 1 + (i / 40) * 7) % 40;
            let b = if b == a { (b + 1) % 40 } else { b };
            session(&participants[a], &participants[b])
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, body) in bodies.iter().cloned().enumerate() {
        let api = api.clone();
        tasks.spawn(async move {
            let (code, resp) = create(&api, &body).await;
            (i, code, resp)
        });
    }
    let mut created = Vec::new();
    let mut refused = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, code, resp) = joined.expect("create task");
        match code {
            201 => created.push(resp["data"].clone()),
            409 => {
                assert_eq!(resp["code"], "POOL_EXHAUSTED", "{resp}");
                refused.push(i);
            }
            _ => panic!("create {i}: {code} {resp}"),
        }
    }
    assert_eq!(created.len() + refused.len(), 200);
    eprintln!("{} created, {} refused", created.len(), refused.len());
    assert!(
        created.len() >= 40,
        "only {} of 200 created (40 participants × 5 numbers allow 100)",
        created.len()
    );
    assert!(!refused.is_empty(), "a pool of 5 cannot serve all 200");
    assert_pairs_unique(&created);
    // What the store holds agrees.
    let open = all_sessions(&api, "status=open").await;
    assert_eq!(open.len(), created.len());
    assert_pairs_unique(&open);
    let mut per_participant: HashMap<String, usize> = HashMap::new();
    for s in &open {
        for p in proxies(s).into_keys() {
            *per_participant.entry(p).or_default() += 1;
        }
    }
    assert!(
        per_participant.values().all(|&n| n <= 5),
        "{per_participant:?}"
    );
    for i in refused {
        let (code, resp) = create(&api, &bodies[i]).await;
        assert_error(code, &resp, 409, "POOL_EXHAUSTED");
    }
    let (_, numbers) = api.request(Method::GET, "/proxy/numbers", None).await;
    let pairings: i64 = numbers["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["active_pairings"].as_i64())
        .sum();
    assert_eq!(pairings, 2 * open.len() as i64, "{numbers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_keep_pairs_unique_on_sqlite() {
    concurrent_creates(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_keep_pairs_unique_on_postgresql() {
    let base = std::env::var("SWITCHYARD_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("sy_proxy_{}", std::process::id());
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
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    concurrent_creates(Some(&url)).await;
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .expect("drop schema");
}

/// The sink's next request, its signature checked; its JSON.
async fn next_signed(sink: &mut common::WebhookSink, secret: &str) -> Value {
    let received = sink.next_event(Duration::from_secs(10)).await;
    common::webhook::verify_signature(secret, &received)
        .unwrap_or_else(|e| panic!("{e}: {received:?}"))
}

/// A session with a `webhook_url` sends `proxy.session.created`, then `closed` (DELETE)
/// or `expired` (its time passed), signed as call events are and numbered per session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_events_through_the_outbox() {
    let mut sink = common::WebhookSink::start().await;
    let switch = switch_with_pool(&[("+14155550100", BOTH), ("+14155550101", BOTH)], None).await;
    let api = switch.api("acme", "owner").await;
    let secret = api.webhook_secret().await;

    let mut body = session("+14155552671", "+14155553333");
    body["webhook_url"] = sink.url().into();
    let s = create_ok(&api, &body).await;
    let id = s["id"].as_str().unwrap_or_default().to_owned();
    let created = next_signed(&mut sink, &secret).await;
    assert_eq!(created["type"], "proxy.session.created", "{created}");
    assert_eq!(created["sequence"], 1);
    assert_eq!(
        created["data"]["session"], s,
        "the session as the API answered it"
    );
    let (code, _) = api
        .request(Method::DELETE, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 200);
    let closed = next_signed(&mut sink, &secret).await;
    assert_eq!(closed["type"], "proxy.session.closed", "{closed}");
    assert_eq!(closed["sequence"], 2);
    assert_eq!(closed["data"]["session"]["status"], "closed");
    // Closing again sends nothing more.
    let (code, _) = api
        .request(Method::DELETE, &format!("/proxy/sessions/{id}"), None)
        .await;
    assert_eq!(code, 200);

    body["ttl_seconds"] = 1.into();
    let s = create_ok(&api, &body).await;
    let created = next_signed(&mut sink, &secret).await;
    assert_eq!(created["type"], "proxy.session.created", "{created}");
    assert_eq!(created["data"]["session"]["id"], s["id"]);
    let expired = next_signed(&mut sink, &secret).await;
    assert_eq!(expired["type"], "proxy.session.expired", "{expired}");
    assert_eq!(expired["sequence"], 2);
    assert_eq!(expired["data"]["session"]["id"], s["id"]);
    assert_eq!(expired["data"]["session"]["status"], "expired");
    assert!(
        sink.try_next_event(Duration::from_millis(1500))
            .await
            .is_none(),
        "one event each, nothing for the twice-closed session"
    );
}
