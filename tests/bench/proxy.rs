//! Number-masking proxy sessions through the store (issue 15's figures), on SQLite (a file
//! in a temp dir) and on PostgreSQL (a fresh schema in `SWITCHYARD_TEST_PG_URL`, default
//! postgres://postgres@127.0.0.1:5432/test; skipped with a note when it cannot be reached):
//!
//! 1. session creates per second while the store fills up to `PROXY_SESSIONS` open
//!    sessions, `PROXY_CONCURRENCY` creates at a time (as the API's requests would be), with
//!    no participant in more than 5 open sessions; the rate over every 10,000 creates, the
//!    last 10,000 and overall;
//! 2. lookups per second of (proxy number, caller), the per-call and per-message lookup, at
//!    that many open sessions: random existing pairs, `PROXY_CONCURRENCY` at a time, with
//!    p50 and p99 latency;
//! 3. (SQLite only) the smallest pool with which `PROXY_FIT_SESSIONS` sessions, no
//!    participant in more than 5, can all be open at once; 5 is the lower bound (a
//!    participant in 5 sessions needs 5 distinct proxy numbers).
//!
//! ```text
//! cargo bench --bench proxy                                  # 100,000 sessions
//! PROXY_SESSIONS=20000 PROXY_LOOKUPS=10000 cargo bench --bench proxy   # quick check
//! PROXY_BACKENDS=sqlite PROXY_FIT_SESSIONS=0 cargo bench --bench proxy # SQLite, no fit
//! ```
//!
//! Other knobs: `PROXY_POOL` (pool numbers for 1 and 2, default 10), `PROXY_LOOKUPS`
//! (default 50,000), `PROXY_CONCURRENCY` (default 32), `PROXY_FIT_MAX` (largest pool tried
//! in 3, default 40), `PROXY_SEED`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use switchyard::proxy::{
    Capability, NewSession, ProxyLookup, ProxyNumber, SessionMode, UnknownCaller,
};
use switchyard::store::sql::SqlStore;
use switchyard::store::{Store, StoreError};

const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TENANT: &str = "default";
/// Open sessions a participant is in at most.
const PER_PARTICIPANT: usize = 5;
/// The creates the "last" rate (and each progress line) is taken over.
const WINDOW: usize = 10_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Participant `i`'s E.164 number: +1 NPA 555 XXXX, 10,000 per area code from 201 up.
fn participant(i: u32) -> String {
    format!("+1{}555{:04}", 201 + i / 10_000, i % 10_000)
}

/// `sessions` pairs of participant indexes: each participant in at most `per` of them,
/// never with itself, never the same pair twice.
fn workload(sessions: usize, per: usize, rng: &mut StdRng) -> Vec<[u32; 2]> {
    let participants = (2 * sessions).div_ceil(per);
    let mut slots: Vec<u32> = (0..participants * per)
        .map(|i| u32::try_from(i / per).unwrap())
        .collect();
    slots.shuffle(rng);
    slots.truncate(2 * sessions);
    loop {
        let mut seen = HashSet::with_capacity(sessions);
        let mut bad = Vec::new();
        for i in 0..sessions {
            let (a, b) = (slots[2 * i], slots[2 * i + 1]);
            if a == b || !seen.insert((a.min(b), a.max(b))) {
                bad.push(i);
            }
        }
        if bad.is_empty() {
            break;
        }
        for i in bad {
            let j = rng.random_range(0..2 * sessions);
            slots.swap(2 * i + 1, j);
        }
    }
    slots.chunks(2).map(|c| [c[0], c[1]]).collect()
}

fn pool_number(i: usize) -> ProxyNumber {
    ProxyNumber {
        number: format!("+1415555{:04}", 100 + i),
        tenant: TENANT.to_owned(),
        trunk: "far".to_owned(),
        capabilities: vec![Capability::Voice, Capability::Messaging],
        source: "config".to_owned(),
        active_pairings: 0,
        created_at: Utc::now(),
    }
}

fn new_session(pair: [u32; 2]) -> NewSession {
    NewSession {
        id: format!("ps_{}", ulid::Ulid::new().to_string().to_lowercase()),
        tenant: TENANT.to_owned(),
        mode: SessionMode::VoiceAndMessaging,
        participants: [participant(pair[0]), participant(pair[1])],
        metadata: serde_json::json!({"order": "bench"}),
        webhook_url: None,
        max_call_duration: None,
        record: false,
        unknown_caller: UnknownCaller::default(),
        created_at: Utc::now(),
        expires_at: None,
    }
}

/// A store on a fresh database, and what to drop once done.
struct Db {
    store: Arc<SqlStore>,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(sqlx::PgPool, String)>,
}

impl Db {
    async fn sqlite() -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("switchyard.db").display());
        Db {
            store: Arc::new(SqlStore::connect(&url).await.expect("connect")),
            _dir: Some(dir),
            pg: None,
        }
    }

    async fn postgres() -> Result<Db, String> {
        let base = std::env::var("SWITCHYARD_TEST_PG_URL").unwrap_or(DEFAULT_PG_URL.to_owned());
        let admin = tokio::time::timeout(Duration::from_secs(5), sqlx::PgPool::connect(&base))
            .await
            .map_err(|_| format!("{base}: no answer in 5 s"))?
            .map_err(|e| format!("{base}: {e}"))?;
        let schema = format!("sy_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .map_err(|e| format!("create schema: {e}"))?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Ok(Db {
            store: Arc::new(SqlStore::connect(&url).await.expect("connect")),
            _dir: None,
            pg: Some((admin, schema)),
        })
    }

    async fn finish(self) {
        self.store.close().await;
        if let Some((admin, schema)) = self.pg {
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .expect("drop schema");
        }
    }
}

async fn fill_pool(store: &SqlStore, n: usize) {
    for i in 0..n {
        store
            .put_config_proxy_number(&pool_number(i))
            .await
            .expect("pool number");
    }
}

/// What creating a workload did.
struct Created {
    /// (proxy number, participant) of every participant of every session created.
    pairs: Vec<(String, String)>,
    exhausted: usize,
    /// Creates that failed otherwise (e.g. SQLite's "database is locked").
    failed: usize,
    took: Duration,
    /// Seconds the last `WINDOW` creates took.
    last_window: Option<f64>,
}

/// Creates the workload's sessions, `concurrency` at a time; `progress` prints the rate of
/// every `WINDOW` creates; `stop_on_exhausted` ends at the first refusal.
async fn create_all(
    store: Arc<SqlStore>,
    work: Arc<Vec<[u32; 2]>>,
    concurrency: usize,
    progress: bool,
    stop_on_exhausted: bool,
) -> Created {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let exhausted = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let pairs = Arc::new(Mutex::new(Vec::with_capacity(2 * work.len())));
    let started = Instant::now();
    let mark = Arc::new(Mutex::new(started));
    let last_window = Arc::new(Mutex::new(None));
    let total = work.len();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (store, work, next, done) = (store.clone(), work.clone(), next.clone(), done.clone());
        let (exhausted, failed, pairs, mark, last_window) = (
            exhausted.clone(),
            failed.clone(),
            pairs.clone(),
            mark.clone(),
            last_window.clone(),
        );
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= work.len() {
                    break;
                }
                match store.create_proxy_session(&new_session(work[i])).await {
                    Ok(s) => {
                        let mut p = pairs.lock().unwrap();
                        for part in s.participants {
                            p.push((part.proxy_number, part.number));
                        }
                    }
                    Err(StoreError::PoolExhausted) => {
                        exhausted.fetch_add(1, Ordering::Relaxed);
                        if stop_on_exhausted {
                            next.store(work.len(), Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            println!(
                                "  create failed: {e} (first such error; counted, not retried)"
                            );
                        }
                    }
                }
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % WINDOW == 0 || d == total {
                    let now = Instant::now();
                    let mut m = mark.lock().unwrap();
                    let secs = now.duration_since(*m).as_secs_f64();
                    let n = if d % WINDOW == 0 { WINDOW } else { d % WINDOW };
                    if progress {
                        println!(
                            "  {d:>7} open: {:>7.0} creates/s over the last {n}",
                            n as f64 / secs
                        );
                    }
                    *m = now;
                }
                if total > WINDOW && d == total - WINDOW {
                    *last_window.lock().unwrap() = Some(Instant::now());
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("create task");
    }
    let took = started.elapsed();
    let pairs = std::mem::take(&mut *pairs.lock().unwrap());
    let last_window = last_window
        .lock()
        .unwrap()
        .map(|at| at.elapsed().as_secs_f64());
    Created {
        pairs,
        exhausted: exhausted.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        took,
        last_window,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn lookups(
    store: Arc<SqlStore>,
    pairs: Arc<Vec<(String, String)>>,
    count: usize,
    concurrency: usize,
    seed: u64,
) {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let (store, pairs) = (store.clone(), pairs.clone());
        let n = count / concurrency + usize::from(t < count % concurrency);
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (t as u64 + 1));
            let mut lat = Vec::with_capacity(n);
            for _ in 0..n {
                let (proxy, caller) = &pairs[rng.random_range(0..pairs.len())];
                let t0 = Instant::now();
                let found = store
                    .lookup_proxy(proxy, caller, Utc::now())
                    .await
                    .expect("lookup");
                lat.push(t0.elapsed());
                assert!(
                    matches!(found, ProxyLookup::Open { .. }),
                    "({proxy}, {caller}) finds no open session"
                );
            }
            lat
        });
    }
    let mut lat = Vec::with_capacity(count);
    while let Some(r) = tasks.join_next().await {
        lat.extend(r.expect("lookup task"));
    }
    let took = started.elapsed().as_secs_f64();
    lat.sort();
    println!(
        "lookups: {} in {took:.1} s, {:.0} lookups/s, p50 {:.2} ms, p99 {:.2} ms ({concurrency} at a time)",
        lat.len(),
        lat.len() as f64 / took,
        pct(&lat, 0.50).as_secs_f64() * 1000.0,
        pct(&lat, 0.99).as_secs_f64() * 1000.0,
    );
}

async fn run_backend(name: &str, db: Db, work: Arc<Vec<[u32; 2]>>, seed: u64) {
    let pool = env_usize("PROXY_POOL", 10).max(1);
    let concurrency = env_usize("PROXY_CONCURRENCY", 32).max(1);
    let count = env_usize("PROXY_LOOKUPS", 50_000);
    println!(
        "== {name}: {} sessions, pool of {pool}, {concurrency} creates at a time",
        work.len()
    );
    fill_pool(&db.store, pool).await;
    let created = create_all(db.store.clone(), work.clone(), concurrency, true, false).await;
    let ok = work.len() - created.exhausted - created.failed;
    println!(
        "creates: {ok} in {:.1} s, {:.0} creates/s overall, {} at ~{} open ({} refused: pool exhausted, {} failed otherwise)",
        created.took.as_secs_f64(),
        ok as f64 / created.took.as_secs_f64(),
        created.last_window.map_or(
            "n/a (not more than 10,000 creates)".to_owned(),
            |s| format!("{:.0} creates/s over the last {WINDOW}", WINDOW as f64 / s)
        ),
        ok,
        created.exhausted,
        created.failed,
    );
    if count > 0 && !created.pairs.is_empty() {
        lookups(
            db.store.clone(),
            Arc::new(created.pairs),
            count,
            concurrency,
            seed,
        )
        .await;
    }
    db.finish().await;
}

/// The smallest pool (from 5 up) with which every session of a `sessions`-session workload,
/// no participant in more than 5, is created; a fresh SQLite file per attempt.
async fn fit(sessions: usize, seed: u64) {
    let max = env_usize("PROXY_FIT_MAX", 40).max(PER_PARTICIPANT);
    let concurrency = env_usize("PROXY_CONCURRENCY", 32).max(1);
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(3));
    let work = Arc::new(workload(sessions, PER_PARTICIPANT, &mut rng));
    println!(
        "== pool fit (SQLite): {sessions} sessions, {} participants in {PER_PARTICIPANT} each, \
         {concurrency} creates at a time",
        (2 * sessions).div_ceil(PER_PARTICIPANT)
    );
    for n in PER_PARTICIPANT..=max {
        let db = Db::sqlite().await;
        fill_pool(&db.store, n).await;
        let created = create_all(db.store.clone(), work.clone(), concurrency, false, true).await;
        let open = created.pairs.len() / 2;
        db.finish().await;
        if created.failed > 0 {
            println!("pool of {n}: {} creates failed otherwise", created.failed);
        }
        if created.exhausted == 0 && open == sessions {
            println!(
                "pool of {n}: all {sessions} created in {:.1} s",
                created.took.as_secs_f64()
            );
            println!(
                "smallest pool: {n} numbers ({} above the lower bound of {PER_PARTICIPANT}, \
                 {:.2}x)",
                n - PER_PARTICIPANT,
                n as f64 / PER_PARTICIPANT as f64
            );
            return;
        }
        println!("pool of {n}: pool exhausted after {open} sessions");
    }
    println!("smallest pool: more than {max} numbers");
}

fn main() {
    let sessions = env_usize("PROXY_SESSIONS", 100_000);
    let fit_sessions = env_usize("PROXY_FIT_SESSIONS", 10_000);
    let seed = env_usize("PROXY_SEED", 15) as u64;
    let backends = std::env::var("PROXY_BACKENDS").unwrap_or("sqlite,postgres".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = StdRng::seed_from_u64(seed);
    let work = Arc::new(workload(sessions, PER_PARTICIPANT, &mut rng));
    println!(
        "proxy bench: {sessions} sessions between {} participants, none in more than {PER_PARTICIPANT}",
        (2 * sessions).div_ceil(PER_PARTICIPANT)
    );
    rt.block_on(async {
        for backend in backends.split(',').map(str::trim) {
            match backend {
                "sqlite" => run_backend("SQLite", Db::sqlite().await, work.clone(), seed).await,
                "postgres" => match Db::postgres().await {
                    Ok(db) => run_backend("PostgreSQL", db, work.clone(), seed).await,
                    Err(e) => println!("== PostgreSQL skipped: {e}"),
                },
                "" => {}
                other => println!("== unknown backend {other:?} (sqlite, postgres)"),
            }
        }
        if fit_sessions > 0 {
            fit(fit_sessions, seed).await;
        }
    });
}
