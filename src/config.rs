//! Configuration: embedded defaults → TOML file → environment (`SWITCHYARD_SECTION__KEY`).
//!
//! Every key has a default, so `switchyard serve` runs with no file at all. Errors name the
//! key and, when it came from the file, the line.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[derive(Default)]
pub struct Config {
    pub node: NodeConfig,
    pub sip: SipConfig,
    pub http: HttpConfig,
    pub rtp: RtpConfig,
    pub database: DatabaseConfig,
    pub webhooks: WebhooksConfig,
    pub calls: CallsConfig,
    pub recordings: RecordingsConfig,
    /// Number masking: what callers in no session get, and message limits.
    pub proxy: ProxyConfig,
    /// Agent audio streams (WebSocket).
    pub streams: StreamsConfig,
    /// AI agents: active-agent plans and browser realtime sessions.
    pub agents: AgentsConfig,
    pub security: SecurityConfig,
    pub dialplan: DialplanConfig,
    pub tenants: Vec<TenantConfig>,
    pub trunks: Vec<TrunkConfig>,
    /// The proxy number pool (number masking), written to the store at every start.
    pub proxy_numbers: Vec<ProxyNumberConfig>,
}

/// `[[proxy_numbers]]`: one number of a tenant's proxy pool.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyNumberConfig {
    /// E.164.
    pub number: String,
    /// The tenant whose sessions may be given it (the trunk's tenant when left out).
    pub tenant: Option<String>,
    /// The trunk its masked calls go through (a `[[trunks]]` name).
    pub trunk: String,
    /// `voice` and/or `messaging` (default both).
    #[serde(default = "default_proxy_capabilities")]
    pub capabilities: Vec<crate::proxy::Capability>,
}

fn default_proxy_capabilities() -> Vec<crate::proxy::Capability> {
    vec![
        crate::proxy::Capability::Voice,
        crate::proxy::Capability::Messaging,
    ]
}

impl ProxyNumberConfig {
    /// The tenant: the one named, else the trunk's.
    pub fn tenant_in(&self, config: &Config) -> String {
        self.tenant.clone().unwrap_or_else(|| {
            config
                .trunks
                .iter()
                .find(|t| t.name == self.trunk)
                .map_or_else(default_tenant, |t| t.tenant.clone())
        })
    }
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub name: String,
    /// Where status callbacks of this tenant's inbound calls go, unless the called
    /// number has its own `webhook_url` in the dialplan.
    pub webhook_url: Option<String>,
    /// E.164 prefixes (country or area codes) the tenant's API calls may dial; empty: any
    /// not barred by the dial plan.
    #[serde(default)]
    pub allowed_destinations: Vec<String>,
    /// The tenant's live API calls at most (0: no limit).
    #[serde(default)]
    pub max_concurrent_calls: u32,
    /// New API calls per second at most (0: no limit).
    #[serde(default)]
    pub max_calls_per_second: u32,
    /// The `[agents.plans]` entry capping the tenant's active agents (else
    /// `[agents] default_plan`).
    #[serde(default)]
    pub agent_plan: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct DialplanConfig {
    /// The routing plan (TOML, see `dialplan/examples/`). Without one, every inbound call
    /// is refused with 403 (nothing is reachable).
    pub file: Option<std::path::PathBuf>,
    /// Offset of the plan's clock from UTC, in minutes (time-of-day rules).
    pub utc_offset_minutes: i32,
}

/// Beyond this a worker count is a typo, not a machine.
const MAX_WORKER_THREADS: usize = 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's name; unique among nodes sharing one database.
    pub name: String,
    /// Threads running call tasks (default: one per core; SIP has a thread of its own).
    /// Fewer than the cores pays where the switch shares a small machine: every handoff
    /// between two workers is a thread wake-up, which cost more than the work handed
    /// over (README, "Threads").
    pub worker_threads: Option<usize>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "switchyard".to_owned(),
            worker_threads: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// UDP and TCP listen address (the same port for both).
    pub listen: SocketAddr,
    /// Address written in Via, Contact and SDP; defaults to the listen IP (or 127.0.0.1 when
    /// listening on the unspecified address).
    pub public_addr: Option<IpAddr>,
    pub tcp: bool,
    /// SO_RCVBUF/SO_SNDBUF of the SIP sockets; large so bursts are not dropped by the kernel.
    pub socket_buffer: usize,
    pub user_agent: String,
    /// Requests per second accepted from one source IP that is not a trunk; beyond it
    /// (after `rate_limit_burst`) datagrams are dropped and counted. 0 disables the limit.
    pub rate_limit_per_s: u32,
    pub rate_limit_burst: u32,
    /// RFC 4028 session interval we ask for and accept; 0 disables session timers.
    pub session_expires_s: u64,
    /// Smallest session interval accepted (RFC 4028 Min-SE; smaller asks get 422).
    pub min_se_s: u64,
    /// Realm of the digest challenges sent to inbound trunks that authenticate.
    pub realm: String,
    /// SIP over TCP: connections open at once (0: no cap), accepted ones per source IP
    /// (an IPv6 /64 as one), seconds a connection has to deliver a whole message after it
    /// opens or after a message's first byte (slowloris), and to stay silent.
    pub tcp_max_connections: usize,
    pub tcp_max_per_source: usize,
    pub tcp_message_timeout_s: u64,
    pub tcp_idle_timeout_s: u64,
    /// RFC 3261 T1 (round-trip estimate): retransmissions start at it, and a 2xx nobody
    /// ACKs is given up after 64 × T1.
    pub t1_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Base URL used in links the API hands out (recording URLs); defaults to http://listen.
    pub public_url: Option<String>,
    /// API requests per second per client IP (an IPv6 /64 counts as one), and the burst
    /// allowed back to back; beyond it 429 with Retry-After. 0: no limit.
    pub rate_limit_per_ip_s: u32,
    pub rate_limit_ip_burst: u32,
    /// The same per API key (whichever IPs it comes from).
    pub rate_limit_per_key_s: u32,
    pub rate_limit_key_burst: u32,
    /// Largest request body accepted; a larger one gets 413 PAYLOAD_TOO_LARGE.
    pub max_body_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtpConfig {
    pub port_min: u16,
    pub port_max: u16,
    /// Address RTP sockets bind to; defaults to the SIP listen address (0.0.0.0 included).
    pub bind_ip: Option<IpAddr>,
    /// The media address written in SDP when it differs from the SIP one (a media IP or
    /// its NAT's outside address); defaults to `sip.public_addr`, else per destination.
    pub public_addr: Option<IpAddr>,
    /// An answered call that receives no RTP for this long is ended (BYE,
    /// `end_reason: media_timeout`). 0 disables the check.
    pub media_timeout_s: u64,
    /// Bridged calls whose legs share codec and payload types are forwarded by the
    /// kernel (conntrack NAT) once both sides have latched. Needs CAP_NET_ADMIN and
    /// `nft`; without them the switch warns and relays in userspace.
    pub kernel_forwarding: bool,
    /// RTP/RTCP socket pairs bound at start and kept ready (at most the pool keeps), so a
    /// switch started under load does not bind every leg afresh for its first 250 ms.
    pub prebind_pairs: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    pub timeout_ms: u64,
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    pub max_attempts: u32,
    /// Keep the status events of calls without a `webhook_url` in their event list (state
    /// `no_endpoint`). Off, such calls write their call row alone (~3.4 KB less per call).
    pub record_without_url: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    pub default_ring_timeout: u64,
    pub default_max_duration: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecordingsConfig {
    /// Where call recordings (`{call_id}.wav`) are written; created when first needed.
    pub dir: std::path::PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Where announcement WAVs (`unknown_caller.announcement`) are read from.
    pub announcements_dir: std::path::PathBuf,
    /// The pool's choice for a caller in no session, unless the last session that paired
    /// the caller with the number chose otherwise: a SIP code (400–699) ...
    pub unknown_caller_sip_code: u16,
    /// ... after this announcement (a WAV name in `announcements_dir`) as early media.
    pub unknown_caller_announcement: Option<String>,
    /// Largest masked message body relayed, in bytes.
    pub max_message_bytes: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            announcements_dir: std::path::PathBuf::from("./announcements"),
            unknown_caller_sip_code: 404,
            unknown_caller_announcement: None,
            max_message_bytes: 1600,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// Seconds a dropped or failing stream socket is retried (the call hears silence)
    /// before the stream fails.
    pub grace_s: u64,
    /// A WAV (mono PCM) the caller hears, looped, while an agent stream's socket is
    /// being reconnected (else silence). Relative to the config file.
    pub hold_sound: Option<std::path::PathBuf>,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        Self {
            grace_s: 5,
            hold_sound: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// The plan of tenants whose `[[tenants]]` entry names none.
    pub default_plan: String,
    /// Active agents a tenant on each plan may have (0: unlimited). Given in the file, the
    /// table replaces the defaults (trial 1, launch 2, studio 10, agency unlimited).
    pub plans: std::collections::BTreeMap<String, u32>,
    /// Signs browser realtime session tokens (HMAC-SHA256; at least 32 bytes). Also
    /// `SWITCHYARD_REALTIME_SIGNING_KEY`. Without one, realtime sessions are refused.
    pub realtime_signing_key: Option<String>,
    /// `ws://` or `wss://` base of the realtime WebSocket URL handed to browsers; default
    /// from `http.public_url`, else the HTTP listen address.
    pub public_ws_base: Option<String>,
    /// Realtime model providers by name (`openai`, `gemini`): URL override and key (or the
    /// environment variable holding it). An agent's `model` picks one (`gemini…` models
    /// Gemini Live, the others OpenAI Realtime); without an entry the real endpoint and
    /// `OPENAI_API_KEY` / `GEMINI_API_KEY` are used.
    pub providers: std::collections::BTreeMap<String, crate::agents::provider::ProviderConfig>,
    /// The SIP answer to a call for an agent that is missing or not active.
    pub unavailable_sip_code: u16,
    /// Serve the browser demo (`examples/agent-web/index.html`) at `GET /demo/agent-web/`.
    /// Off by default: the page asks for an API key, which a real site never puts in a
    /// browser (its backend creates the realtime session instead).
    pub demo_page: bool,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            default_plan: "trial".to_owned(),
            plans: [("trial", 1), ("launch", 2), ("studio", 10), ("agency", 0)]
                .into_iter()
                .map(|(name, cap)| (name.to_owned(), cap))
                .collect(),
            realtime_signing_key: None,
            public_ws_base: None,
            providers: std::collections::BTreeMap::new(),
            unavailable_sip_code: 480,
            demo_page: false,
        }
    }
}

/// Shortest realtime signing key accepted (bytes).
pub const MIN_SIGNING_KEY_BYTES: usize = 32;

impl Config {
    /// The most active agents `tenant` may have (0: unlimited): its plan's cap.
    pub fn max_active_agents(&self, tenant: &str) -> u32 {
        let plan = self
            .tenants
            .iter()
            .find(|t| t.name == tenant)
            .and_then(|t| t.agent_plan.as_deref())
            .unwrap_or(&self.agents.default_plan);
        // Validation makes every named plan exist; a missing one would be a bug: the
        // most restrictive answer is the safe one.
        self.agents.plans.get(plan).copied().unwrap_or(1)
    }

    /// The realtime WebSocket base (no trailing slash) for a switch whose HTTP server is
    /// bound to `http` (the configured listen address may have port 0).
    pub fn realtime_ws_base(&self, http: SocketAddr) -> String {
        if let Some(base) = &self.agents.public_ws_base {
            return base.trim_end_matches('/').to_owned();
        }
        if let Some(url) = &self.http.public_url {
            let url = url.trim_end_matches('/');
            if let Some(rest) = url.strip_prefix("https://") {
                return format!("wss://{rest}");
            }
            if let Some(rest) = url.strip_prefix("http://") {
                return format!("ws://{rest}");
            }
        }
        let ip = if http.ip().is_unspecified() {
            self.public_ip()
        } else {
            http.ip()
        };
        format!("ws://{}", SocketAddr::new(ip, http.port()))
    }
}

/// An announcement name: a plain WAV file name, so nothing outside the directory is read.
pub fn valid_announcement_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.ends_with(".wav")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Internal networks (loopback, private, link-local …) that URLs the switch calls
    /// (status callbacks and, later, agent servers and streams) may reach anyway; by
    /// default none may (SSRF). E.g. `["10.20.0.0/16"]` for receivers on a private network.
    pub outbound_allow_cidrs: Vec<String>,
    /// Failed digest answers from one source (an IPv6 /64 as one) within
    /// `auth_failure_window_s` that ban it for `auth_ban_s` (0: no bans), trunk or not.
    pub auth_max_failures: u32,
    pub auth_failure_window_s: u64,
    pub auth_ban_s: u64,
    /// Failures on one user name (from any address) after which it is slowed: refused
    /// unchecked for a backoff doubling from 2 s to 5 min with each further failure.
    pub auth_user_max_failures: u32,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            outbound_allow_cidrs: Vec::new(),
            auth_max_failures: 10,
            auth_failure_window_s: 600,
            auth_ban_s: 900,
            auth_user_max_failures: 5,
        }
    }
}

impl Config {
    /// The outbound URL guard built from `[security]` (validated: bad CIDRs never get here).
    pub fn outbound_guard(&self) -> crate::netguard::OutboundGuard {
        crate::netguard::OutboundGuard::new(
            self.security
                .outbound_allow_cidrs
                .iter()
                .filter_map(|c| parse_cidr(c))
                .collect(),
        )
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    Udp,
    Tcp,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    /// The carrier's SIP URI, e.g. `sip:sip.carrier.example:5060` (host must resolve).
    pub uri: String,
    #[serde(default = "default_transport")]
    pub transport: TrunkTransport,
    pub username: Option<String>,
    pub password: Option<String>,
    /// E.164 caller-id numbers the tenant owns on this trunk.
    #[serde(default)]
    pub numbers: Vec<String>,
    /// Tenant that may place calls through this trunk.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Calls from these source networks are accepted as arriving on this trunk.
    #[serde(default)]
    pub inbound_cidrs: Vec<String>,
    /// Calls that answer our digest challenge with these credentials arrive on this trunk.
    pub inbound_username: Option<String>,
    pub inbound_password: Option<String>,
    /// Concurrent calls on this trunk, both directions (0: no limit).
    #[serde(default)]
    pub max_concurrent: u32,
    /// New outbound calls per second through this trunk (0: no limit).
    #[serde(default)]
    pub max_cps: u32,
    /// Register to the carrier with `username`/`password` (REGISTER, refreshed).
    #[serde(default)]
    pub register: bool,
    #[serde(default = "default_register_expires")]
    pub register_expires: u32,
    /// OPTIONS keep-alive period; the trunk is marked down when a probe fails (0: off).
    #[serde(default)]
    pub keepalive_interval_s: u64,
    /// Codecs in order of preference (see `core::codecs`).
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
}

pub fn default_codecs() -> Vec<String> {
    crate::core::codecs::DEFAULT_CODECS
        .map(str::to_owned)
        .to_vec()
}

fn default_register_expires() -> u32 {
    3600
}

fn default_transport() -> TrunkTransport {
    TrunkTransport::Udp
}

fn default_tenant() -> String {
    "default".to_owned()
}

impl Config {
    /// Whether `name` is a tenant: a `[[tenants]]` entry or the owner of a trunk. Empty
    /// or blank names never are.
    pub fn declares_tenant(&self, name: &str) -> bool {
        !name.trim().is_empty()
            && (self.tenants.iter().any(|t| t.name == name)
                || self.trunks.iter().any(|t| t.tenant == name))
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 5060)),
            public_addr: None,
            tcp: true,
            socket_buffer: 4 * 1024 * 1024,
            user_agent: concat!("Switchyard/", env!("CARGO_PKG_VERSION")).to_owned(),
            rate_limit_per_s: 50,
            rate_limit_burst: 100,
            session_expires_s: 1800,
            min_se_s: 90,
            realm: "switchyard".to_owned(),
            t1_ms: 500,
            tcp_max_connections: 8192,
            tcp_max_per_source: 256,
            tcp_message_timeout_s: 10,
            tcp_idle_timeout_s: 900,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            rate_limit_per_ip_s: 100,
            rate_limit_ip_burst: 200,
            rate_limit_per_key_s: 50,
            rate_limit_key_burst: 100,
            max_body_bytes: 64 * 1024,
        }
    }
}

impl Default for RtpConfig {
    fn default() -> Self {
        Self {
            port_min: 20000,
            port_max: 29999,
            bind_ip: None,
            public_addr: None,
            media_timeout_s: 30,
            kernel_forwarding: false,
            prebind_pairs: 0,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://switchyard.db?mode=rwc".to_owned(),
        }
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            retry_base_ms: 1_000,
            retry_cap_ms: 600_000,
            max_attempts: 12,
            record_without_url: true,
        }
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        Self {
            default_ring_timeout: 60,
            default_max_duration: 3600,
        }
    }
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        Self {
            dir: std::path::PathBuf::from("./recordings"),
        }
    }
}

/// One problem found in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `trunks[0].uri`.
    pub key: String,
    /// 1-based line in the file, when the key came from the file.
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}: {}", self.key, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigProblem>),
}

impl Config {
    /// Load from an optional file, then apply `SWITCHYARD_*` environment overrides, then validate.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        let mut config = Self::from_sources(&text, &env)?;
        // One rule for every path a config names: relative to the config file's
        // directory, or to the working directory when the switch runs on its defaults.
        let base = match path.and_then(Path::parent) {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        config.resolve_paths(&base);
        Ok(config)
    }

    /// Makes the database file, recordings dir and dialplan file absolute against `base`
    /// (absolute paths, `:memory:` databases and PostgreSQL URLs are left as they are).
    pub fn resolve_paths(&mut self, base: &Path) {
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        let join = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        self.recordings.dir = join(&self.recordings.dir);
        self.proxy.announcements_dir = join(&self.proxy.announcements_dir);
        if let Some(hold) = &self.streams.hold_sound {
            self.streams.hold_sound = Some(join(hold));
        }
        if let Some(file) = &self.dialplan.file {
            self.dialplan.file = Some(join(file));
        }
        if let Some(url) = sqlite_url_with_base(&self.database.url, &base) {
            self.database.url = url;
        }
    }

    /// Parse `text` (TOML) with `env` overrides. Pure, for tests and `check-config`.
    pub fn from_sources(text: &str, env: &[(String, String)]) -> Result<Self, ConfigError> {
        // First pass on the raw text: type errors carry the file's line numbers.
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(vec![toml_problem(text, &e)]))?;
        let _: Config =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(vec![toml_problem(text, &e)]))?;
        let mut problems = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("SWITCHYARD_") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.len() != 2 || path.iter().any(String::is_empty) {
                continue;
            }
            let parsed = parse_env_value(value);
            let section = table
                .entry(path[0].clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match section {
                toml::Value::Table(t) => {
                    t.insert(path[1].clone(), parsed);
                }
                _ => problems.push(ConfigProblem {
                    key: path[0].clone(),
                    line: None,
                    message: format!("{name} cannot override a non-table key"),
                }),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    ConfigError::Invalid(vec![ConfigProblem {
                        key: "environment".to_owned(),
                        line: None,
                        message: e.message().to_owned(),
                    }])
                })?;
        let mut config = config;
        // The signing key's own variable (a secret is easier to hand over by its name).
        if config.agents.realtime_signing_key.is_none()
            && let Some((_, key)) = env
                .iter()
                .find(|(name, _)| name == "SWITCHYARD_REALTIME_SIGNING_KEY")
        {
            config.agents.realtime_signing_key = Some(key.clone());
        }
        let problems = config.validate(text);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Semantic checks that the types alone can't express.
    fn validate(&self, text: &str) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| {
            let line = find_key_line(text, &key);
            out.push(ConfigProblem { key, line, message });
        };
        if self.rtp.port_min == 0 || self.rtp.port_min >= self.rtp.port_max {
            problem(
                "rtp.port_min".into(),
                format!(
                    "port range {}..{} is empty or starts at 0",
                    self.rtp.port_min, self.rtp.port_max
                ),
            );
        }
        if self.rtp.port_max - self.rtp.port_min.min(self.rtp.port_max) < 3 {
            problem(
                "rtp.port_max".into(),
                "port range needs room for at least two RTP/RTCP pairs".into(),
            );
        }
        let db = &self.database.url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            problem(
                "database.url".into(),
                format!("unsupported database url {db:?} (sqlite:… or postgres://…)"),
            );
        }
        if self.webhooks.max_attempts == 0 {
            problem("webhooks.max_attempts".into(), "must be at least 1".into());
        }
        if let Some(n) = self.node.worker_threads
            && !(1..=MAX_WORKER_THREADS).contains(&n)
        {
            problem(
                "node.worker_threads".into(),
                format!("{n} is not between 1 and {MAX_WORKER_THREADS}"),
            );
        }
        for (i, c) in self.security.outbound_allow_cidrs.iter().enumerate() {
            if parse_cidr(c).is_none() {
                problem(
                    format!("security.outbound_allow_cidrs[{i}]"),
                    format!("{c:?} is not an IP network (e.g. 10.20.0.0/16)"),
                );
            }
        }
        for (i, t) in self.tenants.iter().enumerate() {
            for (j, p) in t.allowed_destinations.iter().enumerate() {
                let digits = p.strip_prefix('+').unwrap_or("");
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    problem(
                        format!("tenants[{i}].allowed_destinations[{j}]"),
                        format!(
                            "{p:?} is not an E.164 prefix (\"+\" and 1-15 digits, e.g. \"+1\")"
                        ),
                    );
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.trunks.iter().enumerate() {
            if t.name.trim().is_empty() {
                problem(format!("trunks[{i}].name"), "must not be empty".into());
            } else if !names.insert(t.name.clone()) {
                problem(
                    format!("trunks[{i}].name"),
                    format!("duplicate trunk name {:?}", t.name),
                );
            }
            if let Err(e) = crate::core::trunk::parse_trunk_uri(&t.uri) {
                problem(format!("trunks[{i}].uri"), e);
            }
            if t.username.is_some() != t.password.is_some() {
                problem(
                    format!("trunks[{i}].username"),
                    "username and password go together".into(),
                );
            }
            for (j, c) in t.inbound_cidrs.iter().enumerate() {
                if parse_cidr(c).is_none() {
                    problem(
                        format!("trunks[{i}].inbound_cidrs[{j}]"),
                        format!("{c:?} is not an IP network (e.g. 192.0.2.0/24 or 2001:db8::1)"),
                    );
                }
            }
            if t.inbound_username.is_some() != t.inbound_password.is_some() {
                problem(
                    format!("trunks[{i}].inbound_username"),
                    "inbound_username and inbound_password go together".into(),
                );
            }
            if t.register && t.username.is_none() {
                problem(
                    format!("trunks[{i}].register"),
                    "registration needs username and password".into(),
                );
            }
            for (j, message) in crate::core::codecs::problems(&t.codecs) {
                let key = match j {
                    Some(j) => format!("trunks[{i}].codecs[{j}]"),
                    None => format!("trunks[{i}].codecs"),
                };
                problem(key, message);
            }
            for (j, n) in t.numbers.iter().enumerate() {
                if !dialplan::e164::is_e164(n) {
                    problem(
                        format!("trunks[{i}].numbers[{j}]"),
                        format!("{n:?} is not an E.164 number (+ and 8 to 15 digits)"),
                    );
                }
            }
        }
        let mut proxy_numbers = std::collections::HashSet::new();
        for (i, p) in self.proxy_numbers.iter().enumerate() {
            if !dialplan::e164::is_e164(&p.number) {
                problem(
                    format!("proxy_numbers[{i}].number"),
                    format!(
                        "{:?} is not an E.164 number (+ and 8 to 15 digits)",
                        p.number
                    ),
                );
            }
            let tenant = p.tenant_in(self);
            match self.trunks.iter().find(|t| t.name == p.trunk) {
                None => problem(
                    format!("proxy_numbers[{i}].trunk"),
                    format!("no trunk named {:?}", p.trunk),
                ),
                Some(t) if t.tenant != tenant => problem(
                    format!("proxy_numbers[{i}].trunk"),
                    format!(
                        "trunk {:?} belongs to tenant {:?}, not {tenant:?}",
                        p.trunk, t.tenant
                    ),
                ),
                Some(_) => {}
            }
            if p.capabilities.is_empty() {
                problem(
                    format!("proxy_numbers[{i}].capabilities"),
                    "needs voice, messaging or both".into(),
                );
            }
            // A number reaches one tenant.
            if !proxy_numbers.insert(p.number.clone()) {
                problem(
                    format!("proxy_numbers[{i}].number"),
                    format!("duplicate proxy number {:?}", p.number),
                );
            }
        }
        if !(400..=699).contains(&self.proxy.unknown_caller_sip_code) {
            problem(
                "proxy.unknown_caller_sip_code".into(),
                "must be a SIP final failure code, 400 to 699".into(),
            );
        }
        if let Some(name) = &self.proxy.unknown_caller_announcement
            && !valid_announcement_name(name)
        {
            problem(
                "proxy.unknown_caller_announcement".into(),
                format!("{name:?} must be a .wav file name (letters, digits, - _ .)"),
            );
        }
        if !self.agents.plans.contains_key(&self.agents.default_plan) {
            problem(
                "agents.default_plan".into(),
                format!("no [agents.plans] entry {:?}", self.agents.default_plan),
            );
        }
        for (i, t) in self.tenants.iter().enumerate() {
            if let Some(plan) = &t.agent_plan
                && !self.agents.plans.contains_key(plan)
            {
                problem(
                    format!("tenants[{i}].agent_plan"),
                    format!("no [agents.plans] entry {plan:?}"),
                );
            }
        }
        if let Some(key) = &self.agents.realtime_signing_key
            && key.len() < MIN_SIGNING_KEY_BYTES
        {
            problem(
                "agents.realtime_signing_key".into(),
                format!("must be at least {MIN_SIGNING_KEY_BYTES} bytes"),
            );
        }
        if let Some(base) = &self.agents.public_ws_base
            && !(base.starts_with("ws://") || base.starts_with("wss://"))
        {
            problem(
                "agents.public_ws_base".into(),
                format!("{base:?} must start with ws:// or wss://"),
            );
        }
        if self.proxy.max_message_bytes == 0 {
            problem(
                "proxy.max_message_bytes".into(),
                "must be at least 1".into(),
            );
        }
        out
    }

    /// The address RTP sockets bind to.
    pub fn rtp_bind_ip(&self) -> IpAddr {
        self.rtp.bind_ip.unwrap_or_else(|| self.sip.listen.ip())
    }

    /// One address for what names the switch outside SIP and SDP (the recording URL when
    /// HTTP listens on 0.0.0.0). What peers are told is `core::advertise`'s business.
    pub fn public_ip(&self) -> IpAddr {
        match self.sip.public_addr {
            Some(ip) => ip,
            None if self.sip.listen.ip().is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            None => self.sip.listen.ip(),
        }
    }
}

/// A `sqlite:` URL whose file path is relative, rewritten with the path joined to `base`;
/// `None` when there is nothing to rewrite (absolute, in memory, or not SQLite).
fn sqlite_url_with_base(url: &str, base: &Path) -> Option<String> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (file, query) = match rest.split_once('?') {
        Some((file, query)) => (file, Some(query)),
        None => (rest, None),
    };
    if file.is_empty() || file.starts_with(':') || Path::new(file).is_absolute() {
        return None;
    }
    let mut out = format!("sqlite://{}", base.join(file).display());
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Some(out)
}

/// `a.b.c.d/len`, `v6/len`, or a bare address (a host network).
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(ipnet::IpNet::from))
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Numbers and booleans as TOML literals; everything else (addresses, URLs) as a string.
    if let Ok(i) = raw.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match raw {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn toml_problem(text: &str, e: &toml::de::Error) -> ConfigProblem {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    ConfigProblem {
        key: "file".to_owned(),
        line,
        message: e.message().to_owned(),
    }
}

/// Best-effort line of a dotted key (`section.key` or `trunks[i].key`) in the TOML text.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let (section, index, field) = if let Some(rest) = key.strip_prefix("trunks[") {
        let (idx, field) = rest.split_once("].")?;
        (
            "trunks",
            idx.parse::<usize>().ok()?,
            field.split('[').next()?,
        )
    } else {
        let (section, field) = key.split_once('.')?;
        (section, 0, field)
    };
    let mut current: Option<(&str, usize)> = None;
    let mut seen_array = 0usize;
    for (n, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
            let name = name.trim();
            if name == section {
                current = Some((section, seen_array));
                seen_array += 1;
            } else {
                current = None;
            }
            continue;
        }
        if let Some(name) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            current = (name.trim() == section).then_some((section, 0));
            continue;
        }
        if current == Some((section, index))
            && let Some((k, _)) = l.split_once('=')
            && k.trim() == field
        {
            return Some(n + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_plans_signing_key_and_ws_base() {
        let key = "k".repeat(MIN_SIGNING_KEY_BYTES);
        let env = [("SWITCHYARD_REALTIME_SIGNING_KEY".to_owned(), key.clone())];
        let text = "[[tenants]]\nname = \"a\"\nagent_plan = \"studio\"\n";
        let c = Config::from_sources(text, &env).unwrap_or_default();
        assert_eq!(c.max_active_agents("a"), 10);
        assert_eq!(c.max_active_agents("b"), 1, "the default plan: trial");
        assert_eq!(c.agents.realtime_signing_key.as_deref(), Some(key.as_str()));
        let http: SocketAddr = ([0, 0, 0, 0], 8080).into();
        assert_eq!(c.realtime_ws_base(http), "ws://127.0.0.1:8080");
        let text = "[http]\npublic_url = \"https://api.example.com/\"\n";
        let c = Config::from_sources(text, &[]).unwrap_or_default();
        assert_eq!(c.realtime_ws_base(http), "wss://api.example.com");
        for bad in [
            "[[tenants]]\nname = \"a\"\nagent_plan = \"gold\"\n",
            "[agents]\ndefault_plan = \"gold\"\n",
            "[agents]\nrealtime_signing_key = \"short\"\n",
            "[agents]\npublic_ws_base = \"http://x\"\n",
        ] {
            assert!(Config::from_sources(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::from_sources("", &[]).unwrap();
        assert_eq!(c.sip.listen.port(), 5060);
        assert!(c.database.url.starts_with("sqlite:"));
        assert_eq!(c.calls.default_ring_timeout, 60);
    }

    #[test]
    fn events_without_url_are_recorded_unless_turned_off() {
        let c = Config::from_sources("", &[]).unwrap();
        assert!(c.webhooks.record_without_url);
        let c = Config::from_sources("[webhooks]\nrecord_without_url = false\n", &[]).unwrap();
        assert!(!c.webhooks.record_without_url);
        assert_eq!(c.rtp.prebind_pairs, 0);
        let c = Config::from_sources("[rtp]\nprebind_pairs = 4000\n", &[]).unwrap();
        assert_eq!(c.rtp.prebind_pairs, 4000);
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = "[database]\nurl = \"sqlite://data/sy.db?mode=rwc\"\n\
                    [recordings]\ndir = \"rec\"\n[dialplan]\nfile = \"plan.toml\"\n";
        let mut c = Config::from_sources(text, &[]).unwrap();
        c.resolve_paths(Path::new("/etc/switchyard"));
        assert_eq!(
            c.database.url,
            "sqlite:///etc/switchyard/data/sy.db?mode=rwc"
        );
        assert_eq!(c.recordings.dir, Path::new("/etc/switchyard/rec"));
        assert_eq!(
            c.dialplan.file.as_deref(),
            Some(Path::new("/etc/switchyard/plan.toml"))
        );

        // Absolute paths, in-memory databases and PostgreSQL are left alone.
        for url in [
            "sqlite:///var/lib/sy.db",
            "sqlite::memory:",
            "sqlite://:memory:",
            "postgres://u@h/db",
        ] {
            assert_eq!(sqlite_url_with_base(url, Path::new("/x")), None, "{url}");
        }
        assert_eq!(
            sqlite_url_with_base("sqlite:sy.db", Path::new("/x")).as_deref(),
            Some("sqlite:///x/sy.db")
        );
    }

    #[test]
    fn recordings_dir_defaults_and_overrides() {
        let c = Config::from_sources("", &[]).unwrap();
        assert_eq!(c.recordings.dir, std::path::PathBuf::from("./recordings"));
        let c = Config::from_sources("[recordings]\ndir = \"/var/rec\"\n", &[]).unwrap();
        assert_eq!(c.recordings.dir, std::path::PathBuf::from("/var/rec"));
    }

    #[test]
    fn env_overrides_file() {
        let text = "[http]\nlisten = \"127.0.0.1:9000\"\n";
        let env = vec![
            (
                "SWITCHYARD_HTTP__LISTEN".to_owned(),
                "127.0.0.1:9100".to_owned(),
            ),
            ("SWITCHYARD_RTP__PORT_MIN".to_owned(), "40000".to_owned()),
            ("SWITCHYARD_RTP__PORT_MAX".to_owned(), "40100".to_owned()),
        ];
        let c = Config::from_sources(text, &env).unwrap();
        assert_eq!(c.http.listen.port(), 9100);
        assert_eq!(c.rtp.port_min, 40000);
    }

    #[test]
    fn worker_threads_is_checked() {
        let c = Config::from_sources("[node]\nworker_threads = 1\n", &[]).unwrap();
        assert_eq!(c.node.worker_threads, Some(1));
        assert_eq!(
            Config::from_sources("", &[]).unwrap().node.worker_threads,
            None
        );
        let Err(ConfigError::Invalid(p)) =
            Config::from_sources("[node]\nname = \"a\"\nworker_threads = 0\n", &[])
        else {
            panic!("expected error")
        };
        assert_eq!(p[0].key, "node.worker_threads", "{p:?}");
        assert_eq!(p[0].line, Some(3), "{p:?}");
    }

    #[test]
    fn type_error_reports_line() {
        let text = "[sip]\nuser_agent = \"x\"\nlisten = 12\n";
        let Err(ConfigError::Invalid(p)) = Config::from_sources(text, &[]) else {
            panic!("expected error")
        };
        assert_eq!(p[0].line, Some(3), "{p:?}");
    }

    #[test]
    fn unknown_key_reports_line() {
        let text = "[sip]\nlisten = \"0.0.0.0:5060\"\nlsiten = 1\n";
        let Err(ConfigError::Invalid(p)) = Config::from_sources(text, &[]) else {
            panic!("expected error")
        };
        assert_eq!(p[0].line, Some(3), "{p:?}");
        assert!(p[0].message.contains("lsiten"), "{p:?}");
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let text = "[[trunks]]\nname = \"a\"\nuri = \"sip:127.0.0.1:5070\"\n\n[[trunks]]\nname = \"b\"\nuri = \"http://nope\"\nnumbers = [\"12345\"]\n";
        let Err(ConfigError::Invalid(p)) = Config::from_sources(text, &[]) else {
            panic!("expected error")
        };
        let uri = p.iter().find(|p| p.key == "trunks[1].uri").unwrap();
        assert_eq!(uri.line, Some(7));
        let num = p.iter().find(|p| p.key == "trunks[1].numbers[0]").unwrap();
        assert_eq!(num.line, Some(8));
    }

    #[test]
    fn trunk_codecs_default_and_are_checked() {
        let one = "[[trunks]]\nname = \"a\"\nuri = \"sip:127.0.0.1:5070\"\n";
        let c = Config::from_sources(one, &[]).unwrap();
        assert_eq!(c.trunks[0].codecs, ["PCMU", "PCMA", "G722", "opus"]);
        let c =
            Config::from_sources(&format!("{one}codecs = [\"opus\", \"PCMA\"]\n"), &[]).unwrap();
        assert_eq!(c.trunks[0].codecs, ["opus", "PCMA"]);
        let text = format!("{one}codecs = [\"PCMU\", \"G729\"]\n");
        let Err(ConfigError::Invalid(p)) = Config::from_sources(&text, &[]) else {
            panic!("expected error")
        };
        assert_eq!(p[0].key, "trunks[0].codecs[1]", "{p:?}");
        assert_eq!(p[0].line, Some(4), "{p:?}");
        assert!(p[0].message.contains("unknown codec \"G729\""), "{p:?}");
        let Err(ConfigError::Invalid(p)) =
            Config::from_sources(&format!("{one}codecs = []\n"), &[])
        else {
            panic!("expected error")
        };
        assert_eq!(p[0].key, "trunks[0].codecs", "{p:?}");
    }

    #[test]
    fn proxy_numbers_default_and_are_checked() {
        let trunk = "[[trunks]]\nname = \"a\"\nuri = \"sip:127.0.0.1:5070\"\ntenant = \"acme\"\n\n";
        let c = Config::from_sources(
            &format!("{trunk}[[proxy_numbers]]\nnumber = \"+14155550100\"\ntrunk = \"a\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.proxy_numbers.len(), 1);
        assert_eq!(
            c.proxy_numbers[0].tenant_in(&c),
            "acme",
            "the trunk's tenant"
        );
        assert_eq!(
            c.proxy_numbers[0].capabilities.len(),
            2,
            "voice and messaging"
        );
        let text = format!(
            "{trunk}[[proxy_numbers]]\nnumber = \"4155550100\"\ntrunk = \"b\"\ncapabilities = []\n\n\
             [[proxy_numbers]]\nnumber = \"+14155550101\"\ntrunk = \"a\"\ntenant = \"other\"\n\n\
             [[proxy_numbers]]\nnumber = \"+14155550102\"\ntrunk = \"a\"\n\n\
             [[proxy_numbers]]\nnumber = \"+14155550102\"\ntrunk = \"a\"\n"
        );
        let Err(ConfigError::Invalid(p)) = Config::from_sources(&text, &[]) else {
            panic!("expected error")
        };
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "proxy_numbers[0].number",
                "proxy_numbers[0].trunk",
                "proxy_numbers[0].capabilities",
                "proxy_numbers[1].trunk",
                "proxy_numbers[3].number",
            ],
            "{p:?}"
        );
        let Err(ConfigError::Invalid(_)) = Config::from_sources(
            &format!(
                "{trunk}[[proxy_numbers]]\nnumber = \"+14155550100\"\ntrunk = \"a\"\ncapabilities = [\"fax\"]\n"
            ),
            &[],
        ) else {
            panic!("an unknown capability is refused")
        };
    }
}
