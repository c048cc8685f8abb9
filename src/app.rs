//! The composition root: config → store → webhooks → SIP driver → core → HTTP.

use std::path::Path;
use std::sync::Arc;

use rand::RngCore;

use crate::config::{Config, ConfigError};
use crate::store::sql::SqlStore;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("invalid role {0:?}")]
    Role(String),
    #[error(
        "unknown tenant {0:?}: the configuration declares no such tenant \
         (add a [[tenants]] entry or a trunk with tenant = {0:?})"
    )]
    UnknownTenant(String),
    #[error("dialplan: {0}")]
    Plan(#[from] crate::core::inbound::PlanLoadError),
}

/// The dialplan file named by the config (relative paths are taken from the config
/// file's directory), loaded and checked against the configured trunks.
pub fn load_dialplan(
    config: &Config,
    config_path: Option<&Path>,
) -> Result<Option<dialplan::plan::Plan>, crate::core::inbound::PlanLoadError> {
    let Some(file) = &config.dialplan.file else {
        return Ok(None);
    };
    let path = match config_path.and_then(Path::parent) {
        Some(dir) if file.is_relative() => dir.join(file),
        _ => file.clone(),
    };
    let names: Vec<&str> = config.trunks.iter().map(|t| t.name.as_str()).collect();
    crate::core::inbound::load_plan(&path, &names).map(Some)
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AppError {
    let what = what.into();
    move |source| AppError::Io { what, source }
}

pub async fn create_api_key(
    config: Option<&Path>,
    tenant: &str,
    role: &str,
) -> Result<String, AppError> {
    let config = Config::load(config)?;
    let role = crate::model::Role::parse(role).ok_or_else(|| AppError::Role(role.to_owned()))?;
    // A key for a tenant nothing in the config names would see no trunk, number or
    // callback URL: almost always a typo, so it is refused rather than stored.
    if !config.declares_tenant(tenant) {
        return Err(AppError::UnknownTenant(tenant.to_owned()));
    }
    let store = SqlStore::connect(&config.database.url).await?;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!(
        "sy_live_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    store
        .create_api_key(tenant, role, &crate::api::extract::hash_key(&key))
        .await?;
    Ok(key)
}

pub async fn serve(config_path: Option<&Path>) -> Result<(), AppError> {
    let mut config = Config::load(config_path)?;
    init_tracing();
    let fds = raise_fd_limit();
    let plan = load_dialplan(&config, config_path)?;
    match &plan {
        Some(p) => tracing::info!(
            rules = p.rules().len(),
            numbers = p.numbers().len(),
            "dialplan loaded"
        ),
        None => tracing::warn!("no dialplan configured: inbound calls are refused (403)"),
    }
    // Bound first so links the core hands out (recording URLs) name the real port even
    // when the configured one is 0.
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(io(format!("HTTP listen on {}", config.http.listen)))?;
    let http = listener.local_addr().map_err(io("HTTP listener"))?;
    config.http.listen = http;
    let config = Arc::new(config);

    let store: Arc<dyn Store> = Arc::new(
        SqlStore::connect(&config.database.url)
            .await?
            .with_node(&config.node.name)
            .with_unsent_events(config.webhooks.record_without_url),
    );
    tracing::info!(url = %redact(&config.database.url), "database ready");
    let released = store.release_claims(chrono::Utc::now()).await?;
    if released > 0 {
        tracing::warn!(
            released,
            "callbacks claimed by this node before a crash are due again"
        );
    }

    load_proxy_numbers(&config, store.as_ref()).await?;

    let shutdown = tokio_util::sync::CancellationToken::new();
    let webhooks = crate::webhooks::spawn(store.clone(), webhook_config(&config), shutdown.clone())
        .map_err(|e| AppError::Io {
            what: "webhook client".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    spawn_proxy_expiry(store.clone(), webhooks.notifier(), shutdown.clone());

    // Listening on 0.0.0.0 with no public_addr: each peer is told the address routed toward
    // it (the UA asks `advertise` per destination); otherwise one address for all.
    let advertise = std::sync::Arc::new(crate::core::advertise::Advertise::new(&config));
    let public = std::net::SocketAddr::new(
        if advertise.per_destination() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            advertise.sip_ip_for(config.sip.listen.ip())
        },
        config.sip.listen.port(),
    );
    let local_ips = advertise.per_destination().then(|| {
        let advertise = advertise.clone();
        sip::ua::LocalIps::new(move |peer| advertise.sip_ip_for(peer))
    });
    let (ua, ua_events, bound) = sip::net::spawn(sip::net::NetConfig {
        udp: config.sip.listen,
        tcp: config.sip.tcp.then_some(config.sip.listen),
        ua: sip::ua::UaConfig {
            public_addr: public,
            local_ips,
            user_agent: config.sip.user_agent.clone(),
            session_expires: (config.sip.session_expires_s > 0)
                .then(|| std::time::Duration::from_secs(config.sip.session_expires_s)),
            min_se: std::time::Duration::from_secs(config.sip.min_se_s.max(1)),
            t1: std::time::Duration::from_millis(config.sip.t1_ms.max(1)),
            ..Default::default()
        },
        socket_buffer: config.sip.socket_buffer,
        rate_limit: rate_limit(&config),
        tcp_limits: sip::net::TcpLimits {
            max_connections: config.sip.tcp_max_connections,
            max_per_source: config.sip.tcp_max_per_source,
            message_timeout: std::time::Duration::from_secs(
                config.sip.tcp_message_timeout_s.max(1),
            ),
            idle_timeout: std::time::Duration::from_secs(config.sip.tcp_idle_timeout_s.max(1)),
        },
    })
    .map_err(io(format!("SIP listen on {}", config.sip.listen)))?;

    let mut ports =
        media::net::PortPool::new(config.rtp.port_min, config.rtp.port_max).map_err(|e| {
            AppError::Io {
                what: "RTP port range".into(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
    if config.rtp.kernel_forwarding && config.rtp_bind_ip().is_unspecified() {
        tracing::warn!(
            "in-kernel RTP forwarding needs a specific media address: RTP binds 0.0.0.0 \
             (sip.listen), so calls stay in userspace; set rtp.bind_ip"
        );
    }
    if config.rtp.kernel_forwarding {
        match media::net::kernel::KernelForwarder::enable(config.rtp.port_min..=config.rtp.port_max)
        {
            Ok(k) => {
                tracing::info!(
                    table = media::net::kernel::NFT_TABLE,
                    "in-kernel RTP forwarding on: pass-through calls are relayed by conntrack"
                );
                ports = ports.with_kernel_forwarder(std::sync::Arc::new(k));
            }
            Err(e) => tracing::warn!(
                error = %e,
                "in-kernel RTP forwarding unavailable; relaying all RTP in userspace"
            ),
        }
    }
    // Media sockets may take all but an eighth of the descriptors (at least 256 left for
    // SIP over TCP, HTTP and the database); a call beyond that gets a 503 at once.
    let fds = usize::try_from(fds).unwrap_or(usize::MAX);
    let max_open = fds.saturating_sub((fds / 8).max(256)) / 2;
    ports.limit_open_pairs(max_open);
    // Ended legs' sockets are kept for reuse after resting (`WARM_REST`): a call rate
    // needs 2 × rate × rest pairs kept, and past that every leg binds and closes afresh,
    // which costs more than the rest of the call (at 10,000 calls/s: 5,000 pairs). So up
    // to three quarters of the media share and of the port range; live calls take kept
    // pairs' descriptors when they need them (`bind_from_pool`).
    ports.keep_sockets((ports.capacity() / 4 * 3).min(max_open / 4 * 3));
    if config.rtp.prebind_pairs > 0 {
        let ip = config.rtp_bind_ip();
        match ports.prebind(ip, config.rtp.prebind_pairs) {
            Ok(n) => tracing::info!(pairs = n, %ip, "RTP socket pairs bound ahead of calls"),
            Err(e) => tracing::warn!(error = %e, %ip, "cannot bind RTP socket pairs ahead"),
        }
    }
    let switch = crate::core::Switch::start(
        config.clone(),
        store.clone(),
        webhooks.notifier(),
        ua,
        ua_events,
        ports,
        plan,
    )
    .await?;
    spawn_reload_on_sighup(
        switch.clone(),
        config.clone(),
        config_path.map(Path::to_path_buf),
    );

    let app = crate::api::router(crate::api::AppState {
        switch: switch.clone(),
        store,
        webhooks: webhooks.notifier(),
        recordings_dir: config.recordings.dir.clone(),
        config: config.clone(),
        config_path: config_path.map(Path::to_path_buf),
        outbound_guard: std::sync::Arc::new(config.outbound_guard()),
        limits: std::sync::Arc::new(crate::api::limit::ApiLimits::new(&config.http)),
        live_conversations: switch.live_conversations(),
        realtime_ws_base: config.realtime_ws_base(http),
    });

    // Logged before the line below, which is what scripts wait for.
    tracing::info!(
        sip_udp = %bound.udp,
        sip_tcp = ?bound.tcp,
        %http,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "switchyard listening"
    );
    // One machine-readable line so scripts and tests learn the bound ports (port 0 configs).
    println!(
        "{}",
        serde_json::json!({
            "event": "listening",
            "sip_udp": bound.udp.to_string(),
            "sip_tcp": bound.tcp.map(|a| a.to_string()),
            "http": http.to_string(),
        })
    );

    // The client's address reaches the per-IP rate limit.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await
    .map_err(io("HTTP server"))?;
    switch.shutdown(std::time::Duration::from_secs(5)).await;
    shutdown.cancel();
    webhooks.join().await;
    tracing::info!("shut down");
    Ok(())
}

/// `[[proxy_numbers]]` into the store (a number already there keeps its sessions; its
/// trunk and capabilities follow the config).
async fn load_proxy_numbers(config: &Config, store: &dyn Store) -> Result<(), AppError> {
    let now = chrono::Utc::now();
    for p in &config.proxy_numbers {
        store
            .put_config_proxy_number(&crate::proxy::ProxyNumber {
                number: p.number.clone(),
                tenant: p.tenant_in(config),
                trunk: p.trunk.clone(),
                capabilities: p.capabilities.clone(),
                source: "config".to_owned(),
                active_pairings: 0,
                created_at: now,
            })
            .await?;
    }
    if !config.proxy_numbers.is_empty() {
        tracing::info!(numbers = config.proxy_numbers.len(), "proxy numbers loaded");
    }
    Ok(())
}

/// How often open proxy sessions past their expiry are marked `expired` (reads evaluate
/// the expiry themselves; the sweep frees pairings and settles the rows).
const PROXY_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

fn spawn_proxy_expiry(
    store: Arc<dyn Store>,
    webhooks: Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROXY_SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match store.expire_proxy_sessions(chrono::Utc::now()).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(sessions = n, "proxy sessions expired");
                    // Their `proxy.session.expired` events are in the outbox.
                    webhooks.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "proxy session expiry sweep"),
            }
        }
    });
}

/// Per-source limit for everything that is not a trunk (carriers are never limited: their
/// source networks, and the addresses their URIs name, are exempt).
fn rate_limit(config: &Config) -> Option<sip::ratelimit::RateLimit> {
    if config.sip.rate_limit_per_s == 0 {
        return None;
    }
    let mut exempt: Vec<ipnet::IpNet> = config
        .trunks
        .iter()
        .flat_map(|t| t.inbound_cidrs.iter())
        .filter_map(|c| crate::config::parse_cidr(c))
        .collect();
    for t in &config.trunks {
        if let Ok(uri) = crate::core::trunk::parse_trunk_uri(&t.uri)
            && let Ok(ip) = uri
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
        {
            exempt.push(ipnet::IpNet::from(ip));
        }
    }
    Some(sip::ratelimit::RateLimit {
        per_second: config.sip.rate_limit_per_s,
        burst: config.sip.rate_limit_burst.max(config.sip.rate_limit_per_s),
        exempt,
        ..Default::default()
    })
}

/// SIGHUP re-reads the dialplan; a plan that fails validation is refused and the
/// current one stays (live calls are never touched either way).
fn spawn_reload_on_sighup(
    switch: crate::core::Switch,
    config: Arc<Config>,
    config_path: Option<std::path::PathBuf>,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match reload_dialplan(&switch, &config, config_path.as_deref()) {
                Ok(rules) => tracing::info!(rules, "dialplan reloaded (SIGHUP)"),
                Err(e) => {
                    tracing::error!(error = %e, "dialplan reload refused; keeping the current plan")
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (switch, config, config_path);
}

/// Loads the plan again and swaps it in; returns its rule count.
pub fn reload_dialplan(
    switch: &crate::core::Switch,
    config: &Config,
    config_path: Option<&Path>,
) -> Result<usize, crate::core::inbound::PlanLoadError> {
    match load_dialplan(config, config_path)? {
        Some(plan) => {
            let rules = plan.rules().len();
            switch.inbound().set_plan(plan);
            Ok(rules)
        }
        None => Ok(0),
    }
}

fn webhook_config(config: &Config) -> crate::webhooks::WebhookConfig {
    use std::time::Duration;
    crate::webhooks::WebhookConfig {
        timeout: Duration::from_millis(config.webhooks.timeout_ms),
        retry_base: Duration::from_millis(config.webhooks.retry_base_ms),
        retry_cap: Duration::from_millis(config.webhooks.retry_cap_ms),
        max_attempts: config.webhooks.max_attempts,
        guard: config.outbound_guard(),
        ..Default::default()
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Lifts the soft open-files limit to the hard one, as media servers do: each bridged call
/// holds four sockets, and a default soft limit of 1,024 would cap the switch near 250
/// calls. Returns the limit in force (the soft one if it cannot be read or raised).
fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current.unwrap_or(u64::MAX), limit.maximum);
    let mut in_force = soft;
    if hard.is_none_or(|h| h > soft) {
        // No hard cap means "unlimited"; the kernel still bounds it by fs.nr_open.
        let target = hard.unwrap_or(1 << 20);
        let raised = rustix::process::Rlimit {
            current: Some(target),
            maximum: hard,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => in_force = target,
            Err(e) => tracing::warn!(soft, ?hard, error = %e, "cannot raise the open-files limit"),
        }
    }
    let calls = in_force / 4;
    if in_force < 4096 {
        tracing::warn!(
            open_files = in_force,
            "low open-files limit: about {calls} bridged calls at most (raise `ulimit -n`)"
        );
    } else {
        tracing::info!(open_files = in_force, "open-files limit");
    }
    in_force
}
