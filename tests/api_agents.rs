//! The Agents API (`/api/v1/agents`): over HTTP against the real binary on SQLite (CRUD,
//! every validation rule with its code, PATCH compare-and-set, the active-agent limit,
//! number assignment, tools, conversations, realtime session tokens), and the agent store
//! against SQLite and PostgreSQL (postgres://postgres@127.0.0.1:5432/test, or
//! `SWITCHYARD_TEST_PG_URL`): conversations and transcripts, `agent_for_number`, the
//! activation cap under concurrent activations, single-use realtime tokens.

// Test helpers outside #[test] fns unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use common::{Api, SwitchConfig, SwitchProcess};
use reqwest::Method;
use serde_json::{Value, json};
use switchyard::agents::model::{
    Agent, AgentKind, AgentStatus, AgentType, Channel, Conversation, ConversationChannel,
    ConversationStatus, GreetingType, MessageRole, NewMessage, NumberAssignment, PromptType,
};
use switchyard::agents::realtime::{self, TokenError};
use switchyard::store::sql::SqlStore;
use switchyard::store::{Store, StoreError};
use tempfile::TempDir;

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const KEY: &str = "test-realtime-signing-key-0123456789abcdef";

// ---------------------------------------------------------------------------------------
// Store, on both databases.

struct Db {
    store: SqlStore,
    _dir: Option<TempDir>,
    pg: Option<(sqlx::PgPool, String)>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("switchyard.db").display());
        Db {
            store: SqlStore::connect(&url).await.unwrap(),
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres() -> Db {
        let base = std::env::var("SWITCHYARD_TEST_PG_URL").unwrap_or(DEFAULT_PG_URL.to_owned());
        let schema = format!("sy_agents_{}", ulid::Ulid::new().to_string().to_lowercase());
        let admin = sqlx::PgPool::connect(&base).await.unwrap();
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Db {
            store: SqlStore::connect(&url).await.unwrap(),
            _dir: None,
            pg: Some((admin, schema)),
        }
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some((admin, schema)) = self.pg {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
        }
    }
}

/// Each scenario becomes `<name>::sqlite` and `<name>::postgres`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = super::Db::sqlite().await;
                super::$name(&db.store).await;
                db.finish().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let db = super::Db::postgres().await;
                super::$name(&db.store).await;
                db.finish().await;
            }
        }
    )*};
}

on_both!(
    store_agent_round_trip,
    store_activation_cap_holds_under_concurrency,
    store_conversations_and_transcripts,
    store_realtime_tokens_are_single_use,
);

fn ms_now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

fn new_agent(tenant: &str, name: &str) -> Agent {
    let now = ms_now();
    Agent {
        id: format!("agt_{}", ulid::Ulid::new().to_string().to_lowercase()),
        tenant: tenant.to_owned(),
        name: name.to_owned(),
        kind: AgentKind::Conversational,
        model: "gpt-realtime".to_owned(),
        status: AgentStatus::Draft,
        identity: Some("You are the front desk.".to_owned()),
        instructions: Some("Answer briefly.".to_owned()),
        prompt_type: PromptType::Static,
        language: "en-US".to_owned(),
        voice_name: None,
        greeting_type: GreetingType::None,
        static_greeting: None,
        channels: vec![Channel::Voice],
        agent_type: AgentType::Webhook,
        server_url: None,
        server_headers: BTreeMap::new(),
        server_secret: Some("s3cret".to_owned()),
        handoff_phone_number: None,
        phone_number_assignments: Vec::new(),
        created_at: now,
        updated_at: now,
        tool_count: 0,
        calls_today: 0,
    }
}

async fn store_agent_round_trip(s: &SqlStore) {
    let now = ms_now();
    let mut a = new_agent("acme", "A");
    a.phone_number_assignments = vec![NumberAssignment {
        phone_number: "+12025550101".into(),
        handoff_phone_number: Some("+12025550199".into()),
    }];
    let created = s.create_agent(&a, now).await.unwrap();
    assert_eq!(created, a, "what was written reads back");
    assert_eq!(
        created.system_prompt(),
        "You are the front desk.\n\nAnswer briefly."
    );
    assert!(s.get_agent("other", &a.id, now).await.unwrap().is_none());

    // Inbound routing by number.
    let route = s
        .agent_for_number("+12025550101", now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (route.tenant.as_str(), route.agent.id.as_str()),
        ("acme", a.id.as_str())
    );
    assert_eq!(route.handoff_phone_number.as_deref(), Some("+12025550199"));
    assert!(
        s.agent_for_number("+12025550102", now)
            .await
            .unwrap()
            .is_none()
    );

    // A number reaches one agent: a second agent (of any tenant) cannot take it.
    let mut b = new_agent("other", "B");
    b.phone_number_assignments = a.phone_number_assignments.clone();
    assert!(matches!(
        s.create_agent(&b, now).await,
        Err(StoreError::NumberAssigned(n)) if n == "+12025550101"
    ));
    assert!(
        s.get_agent("other", &b.id, now).await.unwrap().is_none(),
        "nothing written"
    );

    // Compare-and-set: a stale expected updated_at writes nothing.
    let mut renamed = created.clone();
    renamed.name = "A2".into();
    let stale = created.updated_at - chrono::Duration::milliseconds(1);
    assert!(matches!(
        s.update_agent(&renamed, stale, 0, now).await,
        Err(StoreError::AgentConflict)
    ));
    assert_eq!(
        s.get_agent("acme", &a.id, now).await.unwrap().unwrap().name,
        "A"
    );
    // Within the same millisecond, updated_at still moves.
    let first = s
        .update_agent(&renamed, created.updated_at, 0, created.updated_at)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.name, "A2");
    assert!(first.updated_at > created.updated_at);
    let second = s
        .update_agent(&first, first.updated_at, 0, created.updated_at)
        .await
        .unwrap()
        .unwrap();
    assert!(second.updated_at > first.updated_at, "{second:?}");
    // An agent that is not there.
    let ghost = new_agent("acme", "ghost");
    assert!(
        s.update_agent(&ghost, ghost.updated_at, 0, now)
            .await
            .unwrap()
            .is_none()
    );

    // Delete: gone with its numbers, its conversations kept.
    let conv = Conversation::start(
        "acme",
        &a.id,
        ConversationChannel::Voice,
        "+14155552671",
        None,
        now,
    );
    s.create_conversation(&conv).await.unwrap();
    assert!(
        !s.delete_agent("other", &a.id).await.unwrap(),
        "another tenant's"
    );
    assert!(s.delete_agent("acme", &a.id).await.unwrap());
    assert!(!s.delete_agent("acme", &a.id).await.unwrap());
    assert!(
        s.agent_for_number("+12025550101", now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.get_conversation("acme", &a.id, &conv.id)
            .await
            .unwrap()
            .is_some()
    );
    // The number is free again.
    assert!(s.create_agent(&b, now).await.is_ok());
}

async fn store_activation_cap_holds_under_concurrency(s: &SqlStore) {
    let now = ms_now();
    let mut agents = Vec::new();
    for i in 0..8 {
        let a = new_agent("acme", &format!("A{i}"));
        agents.push(s.create_agent(&a, now).await.unwrap());
    }
    let store = Arc::new(s.clone());
    let mut tasks = Vec::new();
    for a in agents.clone() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut active = a.clone();
            active.status = AgentStatus::Active;
            store.update_agent(&active, a.updated_at, 3, ms_now()).await
        }));
    }
    let (mut ok, mut capped) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(Some(a)) => {
                assert_eq!(a.status, AgentStatus::Active);
                ok += 1;
            }
            Err(StoreError::AgentLimit(3)) => capped += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, capped), (3, 5));
    let page = s.list_agents("acme", 100, None, now).await.unwrap();
    let active = page
        .agents
        .iter()
        .filter(|a| a.status == AgentStatus::Active)
        .count();
    assert_eq!(active, 3);
    // An agent active already stays editable past the cap; 0 is no cap.
    let one = page
        .agents
        .iter()
        .find(|a| a.status == AgentStatus::Active)
        .unwrap();
    assert!(s.update_agent(one, one.updated_at, 1, now).await.is_ok());
    let draft = page
        .agents
        .iter()
        .find(|a| a.status == AgentStatus::Draft)
        .unwrap();
    let mut activate = draft.clone();
    activate.status = AgentStatus::Active;
    assert!(matches!(
        s.update_agent(&activate, draft.updated_at, 3, now).await,
        Err(StoreError::AgentLimit(3))
    ));
    assert_eq!(
        s.get_agent("acme", &draft.id, now)
            .await
            .unwrap()
            .unwrap()
            .status,
        AgentStatus::Draft,
        "refused activation wrote nothing"
    );
    assert!(
        s.update_agent(&activate, draft.updated_at, 0, now)
            .await
            .is_ok()
    );
}

async fn store_conversations_and_transcripts(s: &SqlStore) {
    let now = ms_now();
    let a = s.create_agent(&new_agent("acme", "A"), now).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let at = now + chrono::Duration::milliseconds(i);
        let c = Conversation::start(
            "acme",
            &a.id,
            ConversationChannel::Voice,
            "+14155552671",
            Some("call_x"),
            at,
        );
        s.create_conversation(&c).await.unwrap();
        ids.push(c.id);
    }
    let web = Conversation::start("acme", &a.id, ConversationChannel::Web, "web", None, now);
    s.create_conversation(&web).await.unwrap();
    // Yesterday's call is not today's.
    let old = Conversation::start(
        "acme",
        &a.id,
        ConversationChannel::Voice,
        "+14155552671",
        None,
        now - chrono::Duration::days(1),
    );
    s.create_conversation(&old).await.unwrap();
    assert_eq!(
        s.get_agent("acme", &a.id, now)
            .await
            .unwrap()
            .unwrap()
            .calls_today,
        3
    );

    let line = |role, text: &str| NewMessage {
        role,
        text: Some(text.to_owned()),
        tool_name: None,
        tool_arguments: None,
        tool_result: None,
        at: now,
    };
    let m1 = s
        .append_conversation_message(&ids[0], &line(MessageRole::Assistant, "Hello"))
        .await
        .unwrap()
        .unwrap();
    let m2 = s
        .append_conversation_message(&ids[0], &line(MessageRole::User, "Hi"))
        .await
        .unwrap()
        .unwrap();
    let call = NewMessage {
        role: MessageRole::ToolCall,
        text: None,
        tool_name: Some("lookup_order".into()),
        tool_arguments: Some(json!({"order_id": "42"})),
        tool_result: None,
        at: now,
    };
    let m3 = s
        .append_conversation_message(&ids[0], &call)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((m1.seq, m2.seq, m3.seq), (1, 2, 3));
    assert!(
        s.append_conversation_message("conv_nope", &line(MessageRole::User, "x"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.end_conversation(&ids[0], ConversationStatus::Completed, now)
            .await
            .unwrap()
    );
    assert!(
        !s.end_conversation(&ids[0], ConversationStatus::Failed, now)
            .await
            .unwrap(),
        "ended already"
    );

    let (c, transcript) = s
        .get_conversation("acme", &a.id, &ids[0])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.status, c.message_count, c.ended_at),
        (ConversationStatus::Completed, 3, Some(now))
    );
    assert_eq!(
        transcript.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        transcript[2].tool_arguments,
        Some(json!({"order_id": "42"}))
    );
    assert_eq!(transcript[1].text.as_deref(), Some("Hi"));
    assert!(
        s.get_conversation("other", &a.id, &ids[0])
            .await
            .unwrap()
            .is_none()
    );

    // Newest first, two per page.
    let p1 = s.list_conversations("acme", &a.id, 2, None).await.unwrap();
    assert_eq!(p1.total, 5);
    assert!(p1.has_more);
    assert_eq!(p1.conversations[0].id, ids[2]);
    let p2 = s
        .list_conversations("acme", &a.id, 2, p1.next_cursor.as_deref())
        .await
        .unwrap();
    let p3 = s
        .list_conversations("acme", &a.id, 2, p2.next_cursor.as_deref())
        .await
        .unwrap();
    assert!(!p3.has_more && p3.next_cursor.is_none());
    let all: Vec<String> = [p1, p2, p3]
        .into_iter()
        .flat_map(|p| p.conversations)
        .map(|c| c.id)
        .collect();
    assert_eq!(all.len(), 5);
    assert_eq!(all.last(), Some(&old.id));
    assert!(matches!(
        s.list_conversations("acme", &a.id, 2, Some("garbage!"))
            .await,
        Err(StoreError::InvalidCursor)
    ));
}

async fn store_realtime_tokens_are_single_use(s: &SqlStore) {
    let key = KEY.as_bytes();
    let now = ms_now();
    let (token, expires) = realtime::issue(key, "agt_1", "acme", now);
    let redeemed = realtime::redeem_at(s, key, "agt_1", &token, now)
        .await
        .unwrap();
    assert_eq!(
        (redeemed.tenant.as_str(), redeemed.expires_at),
        ("acme", expires)
    );
    assert!(matches!(
        realtime::redeem_at(s, key, "agt_1", &token, now).await,
        Err(TokenError::Reused)
    ));
    // A fresh token: refused for another agent, forged, or late; none of that uses it up.
    let (token, _) = realtime::issue(key, "agt_1", "acme", now);
    assert!(matches!(
        realtime::redeem_at(s, key, "agt_2", &token, now).await,
        Err(TokenError::WrongAgent)
    ));
    assert!(matches!(
        realtime::redeem_at(s, b"another-key-0123456789abcdef0123", "agt_1", &token, now).await,
        Err(TokenError::BadSignature)
    ));
    let late = now + chrono::Duration::seconds(61);
    assert!(matches!(
        realtime::redeem_at(s, key, "agt_1", &token, late).await,
        Err(TokenError::Expired)
    ));
    assert!(
        realtime::redeem_at(s, key, "agt_1", &token, now)
            .await
            .is_ok()
    );
    // Records of expired tokens are swept by later redeems; the token stays refused (expired).
    let (third, _) = realtime::issue(key, "agt_1", "acme", late);
    assert!(
        realtime::redeem_at(s, key, "agt_1", &third, late)
            .await
            .is_ok()
    );
    // The first token's record was swept (its expiry passed), and the token is refused
    // as expired all the same.
    assert!(
        s.consume_realtime_token(&redeemed.jti, "agt_1", late, late)
            .await
            .unwrap()
    );
    let (first, _) = realtime::issue(key, "agt_1", "acme", now);
    assert!(matches!(
        realtime::redeem_at(s, key, "agt_1", &first, late).await,
        Err(TokenError::Expired)
    ));
}

// ---------------------------------------------------------------------------------------
// HTTP, against the binary on SQLite.

/// A switch with tenant acme (trial plan: 1 active agent) owning +12025551234 and
/// +12025551235, tenant other (launch plan: 2) owning +13035550100, and realtime tokens
/// signed with `KEY` when `realtime` (through the environment variable).
async fn switch(realtime: bool) -> SwitchProcess {
    let trunk = std::net::SocketAddr::from(([127, 0, 0, 1], common::sipp::free_udp_port()));
    let mut config = SwitchConfig::new(trunk)
        .numbers(&["+12025551234", "+12025551235"])
        .extra(&format!(
            "[[trunks]]\nname = \"other-carrier\"\nuri = \"sip:{trunk}\"\ntenant = \"other\"\n\
             numbers = [\"+13035550100\"]\n\n\
             [[tenants]]\nname = \"other\"\nagent_plan = \"launch\"\n\n\
             [agents]\ndefault_plan = \"trial\"\n\n\
             [agents.plans]\ntrial = 1\nlaunch = 2\nstudio = 10\nagency = 0\n"
        ));
    if realtime {
        config = config.env("SWITCHYARD_REALTIME_SIGNING_KEY", KEY);
    }
    SwitchProcess::start(config).await
}

fn minimal() -> Value {
    json!({"name": "Receptionist", "model": "gpt-realtime", "instructions": "Answer briefly."})
}

/// `minimal()` with `patch`'s keys set (a null removes the key).
fn with(patch: Value) -> Value {
    let mut body = minimal();
    for (k, v) in patch.as_object().into_iter().flatten() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body
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

/// A 400 VALIDATION_ERROR whose first detail names `field` (or starts so).
fn assert_invalid(code: u16, body: &Value, field: &str) {
    assert_error(code, body, 400, "VALIDATION_ERROR");
    let named = body["details"][0]["field"].as_str().unwrap_or_default();
    assert!(named.starts_with(field), "wanted {field}: {body}");
}

async fn create(api: &Api, body: &Value) -> (u16, Value) {
    api.request(Method::POST, "/agents", Some(body)).await
}

async fn create_ok(api: &Api, body: &Value) -> Value {
    let (code, resp) = create(api, body).await;
    assert_eq!(code, 201, "POST /agents {body}: {resp}");
    resp["data"].clone()
}

async fn get(api: &Api, id: &str) -> (u16, Value) {
    api.request(Method::GET, &format!("/agents/{id}"), None)
        .await
}

async fn patch(api: &Api, agent: &Value, changes: Value) -> (u16, Value) {
    let mut body = changes;
    body["expected_updated_at"] = agent["updated_at"].clone();
    let id = agent["id"].as_str().unwrap();
    api.request(Method::PATCH, &format!("/agents/{id}"), Some(&body))
        .await
}

async fn patch_ok(api: &Api, agent: &Value, changes: Value) -> Value {
    let (code, body) = patch(api, agent, changes.clone()).await;
    assert_eq!(code, 200, "PATCH {changes}: {body}");
    body["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_crud_and_validation() {
    let switch = switch(false).await;
    let api = switch.api("acme", "developer").await;

    let a = create_ok(
        &api,
        &with(json!({"server_secret": "s3cret-value", "identity": "You are Ana."})),
    )
    .await;
    assert!(a["id"].as_str().unwrap().starts_with("agt_"), "{a}");
    assert_eq!(a["status"], "draft");
    assert_eq!(a["type"], "conversational");
    assert_eq!(a["agent_type"], "webhook");
    assert_eq!(a["prompt_type"], "static");
    assert_eq!(a["greeting_type"], "none");
    assert_eq!(a["channels"], json!(["voice"]));
    assert_eq!(a["language"], "en-US");
    assert_eq!(a["system_prompt"], "You are Ana.\n\nAnswer briefly.");
    assert_eq!(a["server_secret_set"], true);
    assert_eq!(
        (a["tool_count"].as_i64(), a["calls_today"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(a["created_at"], a["updated_at"]);
    let updated_at = a["updated_at"].as_str().unwrap();
    assert!(
        updated_at.len() == 24 && updated_at.ends_with('Z'),
        "{updated_at}"
    );
    let id = a["id"].as_str().unwrap().to_owned();

    // The secret is write-only: in no response.
    let (_, got) = get(&api, &id).await;
    let (_, list) = api.request(Method::GET, "/agents", None).await;
    for body in [&a, &got, &list] {
        assert!(!body.to_string().contains("s3cret-value"), "{body}");
        assert!(!body.to_string().contains("\"server_secret\""), "{body}");
    }
    assert_eq!(got["data"], a);

    // system_prompt is instructions' synonym.
    let b = create_ok(
        &api,
        &with(json!({"instructions": null, "system_prompt": "Be kind.", "name": "B"})),
    )
    .await;
    assert_eq!(
        (b["instructions"].as_str(), b["system_prompt"].as_str()),
        (Some("Be kind."), Some("Be kind."))
    );
    assert_eq!(b["server_secret_set"], false);
    let (code, body) = create(&api, &with(json!({"system_prompt": "Other."}))).await;
    assert_invalid(code, &body, "system_prompt");
    // A new agent is a draft: status is for PUT and PATCH.
    let (code, body) = create(&api, &with(json!({"status": "active"}))).await;
    assert_error(code, &body, 400, "VALIDATION_ERROR");

    // Every rule, with the field it names.
    let long_name = "n".repeat(201);
    let cases = [
        (json!({"name": ""}), "name"),
        (json!({"name": "   "}), "name"),
        (json!({"name": long_name}), "name"),
        (json!({"model": ""}), "model"),
        (json!({"language": "english"}), "language"),
        (json!({"language": "en_US"}), "language"),
        (json!({"channels": []}), "channels"),
        (json!({"channels": ["voice", "voice"]}), "channels"),
        (
            json!({"prompt_type": "dynamic", "agent_type": "http", "server_url": "http://127.0.0.1:9/hook"}),
            "prompt_type",
        ),
        (
            json!({"prompt_type": "dynamic", "agent_type": "static"}),
            "prompt_type",
        ),
        (json!({"prompt_type": "dynamic"}), "server_url"),
        (json!({"greeting_type": "dynamic"}), "greeting_type"),
        (json!({"greeting_type": "static"}), "static_greeting"),
        (
            json!({"greeting_type": "static", "static_greeting": "  "}),
            "static_greeting",
        ),
        (json!({"instructions": null}), "instructions"),
        (json!({"instructions": ""}), "instructions"),
        // PostgreSQL stores no NUL: refused in every text, prompts included.
        (json!({"instructions": "Be\u{0}kind."}), "instructions"),
        (
            json!({"instructions": null, "system_prompt": "\u{0}"}),
            "instructions",
        ),
        (json!({"identity": "You are\u{0}Ana."}), "identity"),
        (
            json!({"greeting_type": "static", "static_greeting": "Hi\u{0}"}),
            "static_greeting",
        ),
        (json!({"server_url": "ftp://example.com/x"}), "server_url"),
        (json!({"server_url": "not a url"}), "server_url"),
        (
            json!({"server_url": "http://169.254.169.254/latest"}),
            "server_url",
        ),
        (json!({"server_url": "http://10.1.2.3/hook"}), "server_url"),
        (
            json!({"server_headers": {"bad name": "x"}}),
            "server_headers",
        ),
        (
            json!({"server_headers": {"X-Ok": "a\r\nInjected: 1"}}),
            "server_headers",
        ),
        (json!({"server_secret": ""}), "server_secret"),
        (
            json!({"handoff_phone_number": "5551234"}),
            "handoff_phone_number",
        ),
        (
            json!({"phone_number_assignments": [{"phone_number": "+19995550100"}]}),
            "phone_number_assignments[0].phone_number",
        ),
        (
            json!({"phone_number_assignments": [{"phone_number": "+13035550100"}]}),
            "phone_number_assignments[0].phone_number",
        ),
        (
            json!({"phone_number_assignments": [{"phone_number": "+12025551234"}, {"phone_number": "+12025551234"}]}),
            "phone_number_assignments[1].phone_number",
        ),
        (
            json!({"phone_number_assignments": [{"phone_number": "+12025551234", "handoff_phone_number": "x"}]}),
            "phone_number_assignments[0].handoff_phone_number",
        ),
        (json!({"voice_name": ""}), "voice_name"),
    ];
    for (change, field) in cases {
        let (code, body) = create(&api, &with(change.clone())).await;
        assert_invalid(code, &body, field);
    }
    // Malformed types: refused by the body's schema.
    for change in [
        json!({"channels": ["fax"]}),
        json!({"type": "robot"}),
        json!({"server_headers": {"X-Num": 1}}),
        json!({"model": null}),
        json!({"unknown_field": 1}),
    ] {
        let (code, body) = create(&api, &with(change.clone())).await;
        assert_error(code, &body, 400, "VALIDATION_ERROR");
    }
    // The dynamic forms that are valid.
    let dynamic = create_ok(
        &api,
        &with(json!({
            "instructions": null,
            "prompt_type": "dynamic",
            "greeting_type": "dynamic",
            "server_url": "http://127.0.0.1:9/hook",
            "server_headers": {"X-Tenant": "acme"},
            "channels": ["voice", "web", "whatsapp", "sms"],
            "type": "task",
            "language": "zh-Hant-TW",
            "voice_name": "Aoede",
        })),
    )
    .await;
    assert_eq!(
        dynamic["channels"],
        json!(["voice", "web", "whatsapp", "sms"])
    );
    assert_eq!(dynamic["server_headers"], json!({"X-Tenant": "acme"}));
    assert_eq!(dynamic["system_prompt"], "");

    // List: newest first, paged by cursor, this tenant's only.
    let (code, page) = api.request(Method::GET, "/agents?limit=2", None).await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["meta"]["pagination"]["total"], 3);
    assert_eq!(page["meta"]["pagination"]["has_more"], true);
    assert_eq!(page["data"][0]["id"], dynamic["id"]);
    let cursor = page["meta"]["pagination"]["cursor"].as_str().unwrap();
    let (_, page2) = api
        .request(
            Method::GET,
            &format!("/agents?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page2["data"][0]["id"], a["id"]);
    assert_eq!(page2["meta"]["pagination"]["has_more"], false);
    let (code, body) = api.request(Method::GET, "/agents?limit=101", None).await;
    assert_invalid(code, &body, "limit");
    let (code, body) = api
        .request(Method::GET, "/agents?cursor=bm9wZQ", None)
        .await;
    assert_error(code, &body, 400, "INVALID_CURSOR");
    let other = switch.api("other", "owner").await;
    let (_, theirs) = other.request(Method::GET, "/agents", None).await;
    assert_eq!(theirs["data"], json!([]), "{theirs}");
    let (code, body) = get(&other, &id).await;
    assert_error(code, &body, 404, "NOT_FOUND");
    let (code, body) = other
        .request(Method::DELETE, &format!("/agents/{id}"), None)
        .await;
    assert_error(code, &body, 404, "NOT_FOUND");

    // PATCH: only what is given changes; a stale expected_updated_at changes nothing.
    let renamed = patch_ok(
        &api,
        &a,
        json!({"name": "Front desk", "voice_name": "Puck"}),
    )
    .await;
    assert_eq!(
        (renamed["name"].as_str(), renamed["voice_name"].as_str()),
        (Some("Front desk"), Some("Puck"))
    );
    assert_eq!(renamed["identity"], a["identity"]);
    assert_eq!(renamed["server_secret_set"], true);
    assert!(
        renamed["updated_at"].as_str() > a["updated_at"].as_str(),
        "{renamed}"
    );
    let (code, body) = patch(&api, &a, json!({"name": "Stale"})).await;
    assert_error(code, &body, 409, "AGENT_UPDATE_CONFLICT");
    let (_, now) = get(&api, &id).await;
    assert_eq!(now["data"], renamed, "the stale PATCH changed nothing");
    // Back to back: updated_at moves every time.
    let again = patch_ok(&api, &renamed, json!({"name": "Front desk 2"})).await;
    let again2 = patch_ok(&api, &again, json!({"name": "Front desk 3"})).await;
    assert!(again2["updated_at"].as_str() > again["updated_at"].as_str());
    // expected_updated_at is required and must be a date-time.
    let (code, body) = api
        .request(
            Method::PATCH,
            &format!("/agents/{id}"),
            Some(&json!({"name": "X"})),
        )
        .await;
    assert_error(code, &body, 400, "VALIDATION_ERROR");
    let (code, body) = api
        .request(
            Method::PATCH,
            &format!("/agents/{id}"),
            Some(&json!({"expected_updated_at": "yesterday"})),
        )
        .await;
    assert_invalid(code, &body, "expected_updated_at");
    // The merged result must validate.
    let (code, body) = patch(&api, &again2, json!({"greeting_type": "static"})).await;
    assert_invalid(code, &body, "static_greeting");
    let (code, body) = patch(&api, &again2, json!({"prompt_type": "dynamic"})).await;
    assert_invalid(code, &body, "server_url");
    // null clears, the secret too.
    let cleared = patch_ok(
        &api,
        &again2,
        json!({"voice_name": null, "server_secret": null, "identity": null}),
    )
    .await;
    assert_eq!(
        (
            cleared["voice_name"].clone(),
            cleared["server_secret_set"].clone()
        ),
        (Value::Null, json!(false))
    );
    assert_eq!(cleared["system_prompt"], "Answer briefly.");

    // PUT replaces: what is left out takes its default (the secret and status stay).
    let put_body = with(json!({"name": "Replaced", "language": "fr-FR", "server_secret": "again"}));
    let (code, replaced) = api
        .request(Method::PUT, &format!("/agents/{id}"), Some(&put_body))
        .await;
    assert_eq!(code, 200, "{replaced}");
    let replaced = replaced["data"].clone();
    assert_eq!(
        (replaced["name"].as_str(), replaced["language"].as_str()),
        (Some("Replaced"), Some("fr-FR"))
    );
    assert_eq!(replaced["identity"], Value::Null);
    assert_eq!(replaced["status"], "draft");
    assert_eq!(replaced["server_secret_set"], true);
    let (code, body) = api
        .request(
            Method::PUT,
            &format!("/agents/{id}"),
            Some(&with(json!({"expected_updated_at": a["updated_at"]}))),
        )
        .await;
    assert_error(code, &body, 409, "AGENT_UPDATE_CONFLICT");
    let (code, body) = api
        .request(
            Method::PUT,
            &format!("/agents/{id}"),
            Some(&with(json!({"name": ""}))),
        )
        .await;
    assert_invalid(code, &body, "name");

    // A member key reads only.
    let member = switch.api("acme", "member").await;
    let (code, body) = create(&member, &minimal()).await;
    assert_error(code, &body, 403, "FORBIDDEN");
    let (code, _) = get(&member, &id).await;
    assert_eq!(code, 200);

    // DELETE.
    let (code, body) = api
        .request(Method::DELETE, &format!("/agents/{id}"), None)
        .await;
    assert_eq!((code, body), (204, Value::Null));
    let (code, body) = get(&api, &id).await;
    assert_error(code, &body, 404, "NOT_FOUND");
    let (code, body) = api
        .request(Method::DELETE, &format!("/agents/{id}"), None)
        .await;
    assert_error(code, &body, 404, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_limit_and_number_assignment() {
    let switch = switch(false).await;
    let api = switch.api("acme", "developer").await;
    let a = create_ok(&api, &with(json!({"name": "A"}))).await;
    let b = create_ok(&api, &with(json!({"name": "B"}))).await;

    // Trial: one active agent.
    let a = patch_ok(&api, &a, json!({"status": "active"})).await;
    assert_eq!(a["status"], "active");
    let (code, body) = patch(&api, &b, json!({"status": "active"})).await;
    assert_error(code, &body, 409, "AGENT_LIMIT_EXCEEDED");
    assert_eq!(body["max_agents"], 1, "{body}");
    let (code, body) = api
        .request(
            Method::PUT,
            &format!("/agents/{}", b["id"].as_str().unwrap()),
            Some(&with(json!({"name": "B", "status": "active"}))),
        )
        .await;
    assert_error(code, &body, 409, "AGENT_LIMIT_EXCEEDED");
    let (_, now) = get(&api, b["id"].as_str().unwrap()).await;
    assert_eq!(now["data"], b, "the refused activation changed nothing");
    // An active agent stays editable; inactive ones do not count.
    let a = patch_ok(&api, &a, json!({"name": "A2"})).await;
    let a = patch_ok(&api, &a, json!({"status": "inactive"})).await;
    let b = patch_ok(&api, &b, json!({"status": "active"})).await;
    assert_eq!(b["status"], "active");
    let (code, body) = patch(&api, &a, json!({"status": "active"})).await;
    assert_error(code, &body, 409, "AGENT_LIMIT_EXCEEDED");

    // Tenant other is on launch: two.
    let other = switch.api("other", "owner").await;
    let mut theirs = Vec::new();
    for name in ["X", "Y", "Z"] {
        let agent = create_ok(&other, &with(json!({"name": name}))).await;
        theirs.push(patch(&other, &agent, json!({"status": "active"})).await);
    }
    assert_eq!((theirs[0].0, theirs[1].0), (200, 200), "{theirs:?}");
    assert_error(theirs[2].0, &theirs[2].1, 409, "AGENT_LIMIT_EXCEEDED");
    assert_eq!(theirs[2].1["max_agents"], 2);

    // Numbers: the tenant's own, one agent each.
    let assigned = patch_ok(
        &api,
        &a,
        json!({"phone_number_assignments": [{"phone_number": "+12025551234", "handoff_phone_number": "+14155550000"}]}),
    )
    .await;
    assert_eq!(
        assigned["phone_number_assignments"],
        json!([{"phone_number": "+12025551234", "handoff_phone_number": "+14155550000"}])
    );
    let (code, body) = patch(
        &api,
        &b,
        json!({"phone_number_assignments": [{"phone_number": "+12025551234"}]}),
    )
    .await;
    assert_error(code, &body, 409, "NUMBER_ALREADY_ASSIGNED");
    let (_, now) = get(&api, b["id"].as_str().unwrap()).await;
    assert_eq!(now["data"]["phone_number_assignments"], json!([]));
    let (code, body) = create(
        &api,
        &with(json!({"phone_number_assignments": [{"phone_number": "+12025551234"}]})),
    )
    .await;
    assert_error(code, &body, 409, "NUMBER_ALREADY_ASSIGNED");
    let (code, body) = create(
        &other,
        &with(json!({"phone_number_assignments": [{"phone_number": "+12025551234"}]})),
    )
    .await;
    assert_invalid(code, &body, "phone_number_assignments[0].phone_number");
    // Deleting the agent frees its number.
    let (code, _) = api
        .request(
            Method::DELETE,
            &format!("/agents/{}", a["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(code, 204);
    let b = patch_ok(&api, &b, json!({"phone_number_assignments": [{"phone_number": "+12025551234"}, {"phone_number": "+12025551235"}]})).await;
    assert_eq!(
        b["phone_number_assignments"][1]["phone_number"],
        "+12025551235"
    );
    assert_eq!(
        b["phone_number_assignments"][1]["handoff_phone_number"],
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_crud_and_rules() {
    let switch = switch(false).await;
    let api = switch.api("acme", "developer").await;
    let tools = |id: &Value| format!("/agents/{}/tools", id.as_str().unwrap());

    let stat = create_ok(&api, &with(json!({"agent_type": "static", "name": "S"}))).await;
    let (code, body) = api
        .request(
            Method::POST,
            &tools(&stat["id"]),
            Some(&json!({"name": "lookup"})),
        )
        .await;
    assert_invalid(code, &body, "agent_type");

    let hook = create_ok(&api, &with(json!({"name": "W"}))).await;
    let (code, body) = api
        .request(
            Method::POST,
            &tools(&hook["id"]),
            Some(&json!({"name": "lookup"})),
        )
        .await;
    assert_invalid(code, &body, "server_url");
    let hook = patch_ok(
        &api,
        &hook,
        json!({"server_url": "http://127.0.0.1:9/hook"}),
    )
    .await;
    let (code, t) = api
        .request(
            Method::POST,
            &tools(&hook["id"]),
            Some(&json!({"name": "lookup_customer", "description": "Find a customer."})),
        )
        .await;
    assert_eq!(code, 201, "{t}");
    let t = t["data"].clone();
    assert!(t["id"].as_str().unwrap().starts_with("tool_"));
    assert_eq!(
        t["parameter_schema"],
        json!({"type": "object", "properties": {}})
    );
    assert_eq!(
        (t["timeout_ms"].as_i64(), t["on_error"].as_str()),
        (Some(5000), Some("return_error"))
    );
    assert_eq!(
        (t["enabled"].as_bool(), t["tool_method"].as_str()),
        (Some(true), Some("POST"))
    );
    assert_eq!(
        (t["tool_url"].clone(), t["response_schema"].clone()),
        (Value::Null, Value::Null)
    );
    assert_eq!(t["tool_headers"], json!({}));
    let (_, after) = get(&api, hook["id"].as_str().unwrap()).await;
    assert_eq!(after["data"]["tool_count"], 1);
    assert!(
        after["data"]["updated_at"].as_str() > hook["updated_at"].as_str(),
        "a new tool moves updated_at"
    );
    let hook = after["data"].clone();

    // The tool rules, each with its field.
    let bad = [
        (json!({"name": "lookup_customer"}), None),
        (json!({"name": "transfer_call"}), Some("name")),
        (json!({"name": "end_call"}), Some("name")),
        (json!({"name": "has space"}), Some("name")),
        (json!({"name": "x".repeat(65)}), Some("name")),
        (json!({"name": "t", "timeout_ms": 999}), Some("timeout_ms")),
        (
            json!({"name": "t", "timeout_ms": 30001}),
            Some("timeout_ms"),
        ),
        (
            json!({"name": "t", "parameter_schema": []}),
            Some("parameter_schema"),
        ),
        (
            json!({"name": "t", "response_schema": "x"}),
            Some("response_schema"),
        ),
        (
            json!({"name": "t", "tool_url": "http://127.0.0.1:9/t"}),
            Some("tool_url"),
        ),
        (
            json!({"name": "t", "tool_headers": {"a b": "c"}}),
            Some("tool_headers"),
        ),
        (json!({"name": "t", "tool_method": "TRACE"}), Some("")),
        (json!({"name": "t", "on_error": "ignore"}), Some("")),
    ];
    for (body, field) in bad {
        let (code, resp) = api
            .request(Method::POST, &tools(&hook["id"]), Some(&body))
            .await;
        match field {
            None => assert_error(code, &resp, 409, "TOOL_NAME_TAKEN"),
            Some("") => assert_error(code, &resp, 400, "VALIDATION_ERROR"),
            Some(f) => assert_invalid(code, &resp, f),
        }
    }
    // The agent must keep fitting its tools.
    let (code, body) = patch(&api, &hook, json!({"agent_type": "static"})).await;
    assert_invalid(code, &body, "agent_type");
    let (code, body) = patch(&api, &hook, json!({"server_url": null})).await;
    assert_invalid(code, &body, "server_url");
    let (code, body) = patch(&api, &hook, json!({"agent_type": "http"})).await;
    assert_invalid(code, &body, "agent_type");

    // http agents: every tool has its own URL.
    let http = create_ok(&api, &with(json!({"agent_type": "http", "name": "H"}))).await;
    let (code, body) = api
        .request(
            Method::POST,
            &tools(&http["id"]),
            Some(&json!({"name": "t"})),
        )
        .await;
    assert_invalid(code, &body, "tool_url");
    let (code, body) = api
        .request(
            Method::POST,
            &tools(&http["id"]),
            Some(&json!({"name": "t", "tool_url": "http://10.0.0.1/t"})),
        )
        .await;
    assert_invalid(code, &body, "tool_url");
    let full = json!({
        "name": "create_ticket",
        "description": "Open a ticket.",
        "parameter_schema": {"type": "object", "properties": {"subject": {"type": "string"}}, "required": ["subject"]},
        "response_schema": {"type": "object"},
        "timeout_ms": 30000,
        "on_error": "return_empty",
        "enabled": false,
        "tool_url": "https://127.0.0.1:9/tickets",
        "tool_method": "PUT",
        "tool_headers": {"Authorization": "Bearer x"},
    });
    let (code, created) = api
        .request(Method::POST, &tools(&http["id"]), Some(&full))
        .await;
    assert_eq!(code, 201, "{created}");
    let created = created["data"].clone();
    for key in [
        "name",
        "description",
        "parameter_schema",
        "response_schema",
        "timeout_ms",
        "on_error",
        "enabled",
        "tool_url",
        "tool_method",
        "tool_headers",
    ] {
        assert_eq!(created[key], full[key], "{key}");
    }
    let one = format!("{}/{}", tools(&http["id"]), created["id"].as_str().unwrap());
    let (code, got) = api.request(Method::GET, &one, None).await;
    assert_eq!((code, got["data"].clone()), (200, created.clone()));
    // Another agent's path does not reach it.
    let (code, body) = api
        .request(
            Method::GET,
            &format!("{}/{}", tools(&hook["id"]), created["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_error(code, &body, 404, "NOT_FOUND");
    let (code, patched) = api
        .request(
            Method::PATCH,
            &one,
            Some(&json!({"enabled": true, "response_schema": null, "tool_method": "GET"})),
        )
        .await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(
        (
            patched["data"]["enabled"].clone(),
            patched["data"]["response_schema"].clone()
        ),
        (json!(true), Value::Null)
    );
    assert_eq!(patched["data"]["description"], "Open a ticket.");
    let (code, body) = api
        .request(Method::PATCH, &one, Some(&json!({"tool_url": null})))
        .await;
    assert_invalid(code, &body, "tool_url");
    let (code, list) = api.request(Method::GET, &tools(&http["id"]), None).await;
    assert_eq!(
        (code, list["data"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let (_, before) = get(&api, http["id"].as_str().unwrap()).await;
    let (code, _) = api.request(Method::DELETE, &one, None).await;
    assert_eq!(code, 204);
    let (code, body) = api.request(Method::GET, &one, None).await;
    assert_error(code, &body, 404, "NOT_FOUND");
    let (code, body) = api.request(Method::DELETE, &one, None).await;
    assert_error(code, &body, 404, "NOT_FOUND");
    let (_, after) = get(&api, http["id"].as_str().unwrap()).await;
    assert_eq!(after["data"]["tool_count"], 0);
    assert!(after["data"]["updated_at"].as_str() > before["data"]["updated_at"].as_str());
    // With no tools left, the agent may become static.
    patch_ok(&api, &after["data"], json!({"agent_type": "static"})).await;
    // Deleting an agent deletes its tools.
    let (code, _) = api
        .request(
            Method::DELETE,
            &format!("/agents/{}", hook["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(code, 204);
    let (code, body) = api.request(Method::GET, &tools(&hook["id"]), None).await;
    assert_error(code, &body, 404, "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_and_realtime_sessions() {
    let switch = switch(true).await;
    let api = switch.api("acme", "developer").await;
    let agent = create_ok(&api, &minimal()).await;
    let id = agent["id"].as_str().unwrap().to_owned();

    // The runtime's store calls, on the switch's own database file.
    let store = SqlStore::connect(&format!("sqlite://{}", switch.db_path().display()))
        .await
        .unwrap();
    let now = ms_now();
    let mut convs = Vec::new();
    for i in 0..3 {
        let c = Conversation::start(
            "acme",
            &id,
            ConversationChannel::Voice,
            "+14155552671",
            Some("call_1"),
            now + chrono::Duration::milliseconds(i),
        );
        store.create_conversation(&c).await.unwrap();
        convs.push(c.id);
    }
    for (role, text) in [
        (MessageRole::Assistant, "Hello, Acme."),
        (MessageRole::User, "Hi!"),
    ] {
        let m = NewMessage {
            role,
            text: Some(text.into()),
            tool_name: None,
            tool_arguments: None,
            tool_result: None,
            at: now,
        };
        store
            .append_conversation_message(&convs[1], &m)
            .await
            .unwrap();
    }
    store
        .end_conversation(&convs[1], ConversationStatus::Completed, now)
        .await
        .unwrap();

    let (code, page) = api
        .request(
            Method::GET,
            &format!("/agents/{id}/conversations?limit=2"),
            None,
        )
        .await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(
        page["data"][0]["id"].as_str(),
        Some(convs[2].as_str()),
        "newest first"
    );
    assert_eq!(page["meta"]["pagination"]["total"], 3);
    let cursor = page["meta"]["pagination"]["cursor"].as_str().unwrap();
    let (_, page2) = api
        .request(
            Method::GET,
            &format!("/agents/{id}/conversations?limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(page2["data"][0]["id"].as_str(), Some(convs[0].as_str()));
    let (code, detail) = api
        .request(
            Method::GET,
            &format!("/agents/{id}/conversations/{}", convs[1]),
            None,
        )
        .await;
    assert_eq!(code, 200, "{detail}");
    let d = &detail["data"];
    assert_eq!(
        (
            d["status"].as_str(),
            d["message_count"].as_i64(),
            d["channel"].as_str()
        ),
        (Some("completed"), Some(2), Some("voice"))
    );
    assert_eq!(
        (d["contact"].as_str(), d["call_id"].as_str()),
        (Some("+14155552671"), Some("call_1"))
    );
    assert_eq!(d["transcript"][0]["text"], "Hello, Acme.");
    assert_eq!(
        (
            d["transcript"][1]["seq"].as_i64(),
            d["transcript"][1]["role"].as_str()
        ),
        (Some(2), Some("user"))
    );
    assert!(d["ended_at"].is_string(), "{d}");
    let (code, body) = api
        .request(
            Method::GET,
            &format!("/agents/{id}/conversations/conv_nope"),
            None,
        )
        .await;
    assert_error(code, &body, 404, "NOT_FOUND");
    let (_, got) = get(&api, &id).await;
    assert_eq!(got["data"]["calls_today"], 3);

    // Realtime sessions: active agents only.
    let sessions = format!("/agents/{id}/realtime-sessions");
    let (code, body) = api.request(Method::POST, &sessions, None).await;
    assert_error(code, &body, 409, "AGENT_NOT_ACTIVE");
    let active = patch_ok(&api, &got["data"], json!({"status": "active"})).await;
    // Only agents on the web channel.
    let (code, body) = api.request(Method::POST, &sessions, None).await;
    assert_error(code, &body, 409, "CHANNEL_NOT_ENABLED");
    patch_ok(&api, &active, json!({"channels": ["voice", "web"]})).await;
    let (code, body) = api.request(Method::POST, &sessions, None).await;
    assert_eq!(code, 201, "{body}");
    let s = &body["data"];
    let token = s["token"].as_str().unwrap().to_owned();
    let http = switch.listening().http;
    assert_eq!(
        s["websocket_url"].as_str(),
        Some(format!("ws://{http}/api/v1/agents/{id}/realtime?token={token}").as_str())
    );
    assert_eq!(
        s["protocol"],
        json!({"input_audio": {"encoding": "pcm16", "sample_rate": 16000},
               "output_audio": {"encoding": "pcm16", "sample_rate": 24000}})
    );
    let expires: DateTime<Utc> = s["expires_at"].as_str().unwrap().parse().unwrap();
    let ttl = expires - Utc::now();
    assert!(
        ttl > chrono::Duration::seconds(50) && ttl <= chrono::Duration::seconds(60),
        "{ttl}"
    );

    // Redeemed as the WebSocket endpoint will: once, for this agent.
    let config = switchyard::config::Config::from_sources(
        "",
        &[("SWITCHYARD_REALTIME_SIGNING_KEY".to_owned(), KEY.to_owned())],
    )
    .unwrap();
    let other = realtime::redeem_realtime_token(&store, &config, "agt_other", &token).await;
    assert!(matches!(other, Err(TokenError::WrongAgent)), "{other:?}");
    let ok = realtime::redeem_realtime_token(&store, &config, &id, &token)
        .await
        .unwrap();
    assert_eq!(
        (ok.tenant.as_str(), ok.agent_id.as_str()),
        ("acme", id.as_str())
    );
    let again = realtime::redeem_realtime_token(&store, &config, &id, &token).await;
    assert!(matches!(again, Err(TokenError::Reused)), "{again:?}");
    // The last character changed to another valid one: the signature no longer verifies.
    let last = if token.ends_with('A') { 'E' } else { 'A' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    let forged = realtime::redeem_realtime_token(&store, &config, &id, &forged).await;
    assert!(
        matches!(forged, Err(TokenError::BadSignature)),
        "{forged:?}"
    );
    let unconfigured = switchyard::config::Config::default();
    let refused = realtime::redeem_realtime_token(&store, &unconfigured, &id, &token).await;
    assert!(
        matches!(refused, Err(TokenError::NotConfigured)),
        "{refused:?}"
    );
    // Reused survives a restart of the switch (the record is in the database).
    let (_, body) = api.request(Method::POST, &sessions, None).await;
    let fresh = body["data"]["token"].as_str().unwrap().to_owned();
    assert!(
        realtime::redeem_realtime_token(&store, &config, &id, &fresh)
            .await
            .is_ok()
    );
    store.close().await;
    let store = SqlStore::connect(&format!("sqlite://{}", switch.db_path().display()))
        .await
        .unwrap();
    let again = realtime::redeem_realtime_token(&store, &config, &id, &fresh).await;
    assert!(matches!(again, Err(TokenError::Reused)), "{again:?}");

    // A read-only key may not open sessions; deleting the agent keeps its conversations
    // out of the API.
    let member = switch.api("acme", "member").await;
    let (code, body) = member.request(Method::POST, &sessions, None).await;
    assert_error(code, &body, 403, "FORBIDDEN");
    let (code, _) = api
        .request(Method::DELETE, &format!("/agents/{id}"), None)
        .await;
    assert_eq!(code, 204);
    let (code, body) = api
        .request(Method::GET, &format!("/agents/{id}/conversations"), None)
        .await;
    assert_error(code, &body, 404, "NOT_FOUND");
    assert!(
        store
            .get_conversation("acme", &id, &convs[1])
            .await
            .unwrap()
            .is_some(),
        "kept as history"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_sessions_need_a_signing_key() {
    let switch = switch(false).await;
    let api = switch.api("acme", "developer").await;
    let agent = create_ok(&api, &minimal()).await;
    let agent = patch_ok(&api, &agent, json!({"status": "active"})).await;
    let (code, body) = api
        .request(
            Method::POST,
            &format!(
                "/agents/{}/realtime-sessions",
                agent["id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_error(code, &body, 500, "REALTIME_NOT_CONFIGURED");
    let (code, body) = api
        .request(Method::POST, "/agents/agt_nope/realtime-sessions", None)
        .await;
    assert_error(code, &body, 404, "NOT_FOUND");
}
