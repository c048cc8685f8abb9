//! The `switchyard` binary as a child process, configured in a tempdir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use super::api::Api;

const LISTEN_DEADLINE: Duration = Duration::from_secs(20);

/// Path of the binary under test.
pub fn switch_bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// What goes into the generated TOML; start from `SwitchConfig::new(trunk)`.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    pub trunk_name: String,
    pub trunk_uri: String,
    pub trunk_transport: String,
    pub credentials: Option<(String, String)>,
    pub numbers: Vec<String>,
    pub tenant: String,
    pub retry_base_ms: u64,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// `[rtp] media_timeout_s` (the switch's default when None).
    pub media_timeout_s: Option<u64>,
    /// `[database] url`; a SQLite file in the tempdir when None.
    pub database_url: Option<String>,
    /// Appended verbatim to the generated file (extra sections or tables).
    pub extra_toml: String,
    /// Extra keys for the `[sip]` section (which the generated file already has).
    pub sip_toml: String,
    /// Extra keys for the `[rtp]` section.
    pub rtp_toml: String,
    /// Extra keys for the `[webhooks]` section.
    pub webhooks_toml: String,
    /// Environment variables for the switch process.
    pub env: Vec<(String, String)>,
}

impl SwitchConfig {
    /// One UDP trunk "carrier" at `trunk` (e.g. `sipp.addr()`) owned by tenant "acme" with
    /// caller id +12025551234, no credentials.
    pub fn new(trunk: SocketAddr) -> Self {
        Self {
            trunk_name: "carrier".to_owned(),
            trunk_uri: format!("sip:{trunk}"),
            trunk_transport: "udp".to_owned(),
            credentials: None,
            numbers: vec!["+12025551234".to_owned()],
            tenant: "acme".to_owned(),
            retry_base_ms: 50,
            rtp_port_min: 30000,
            rtp_port_max: 30999,
            media_timeout_s: None,
            database_url: None,
            extra_toml: String::new(),
            sip_toml: String::new(),
            rtp_toml: String::new(),
            webhooks_toml: String::new(),
            env: Vec::new(),
        }
    }

    /// Digest credentials the switch answers a 401/407 from the trunk with.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some((username.to_owned(), password.to_owned()));
        self
    }

    pub fn transport(mut self, transport: &str) -> Self {
        self.trunk_transport = transport.to_owned();
        self
    }

    pub fn numbers(mut self, numbers: &[&str]) -> Self {
        self.numbers = numbers.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = tenant.to_owned();
        self
    }

    pub fn retry_base_ms(mut self, ms: u64) -> Self {
        self.retry_base_ms = ms;
        self
    }

    pub fn rtp_ports(mut self, min: u16, max: u16) -> Self {
        self.rtp_port_min = min;
        self.rtp_port_max = max;
        self
    }

    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    pub fn media_timeout_s(mut self, secs: u64) -> Self {
        self.media_timeout_s = Some(secs);
        self
    }

    /// Adds raw `key = value` lines to the `[sip]` section.
    pub fn sip(mut self, toml: &str) -> Self {
        self.sip_toml.push_str(toml);
        if !toml.ends_with('\n') {
            self.sip_toml.push('\n');
        }
        self
    }

    /// Adds raw `key = value` lines to the `[rtp]` section.
    pub fn rtp(mut self, toml: &str) -> Self {
        self.rtp_toml.push_str(toml);
        self.rtp_toml.push('\n');
        self
    }

    /// Adds keys to the `[webhooks]` section.
    pub fn webhooks(mut self, toml: &str) -> Self {
        self.webhooks_toml.push_str(toml);
        self.webhooks_toml.push('\n');
        self
    }

    /// Sets an environment variable for the switch process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Appends raw TOML (e.g. another `[[trunks]]` entry).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra_toml.push('\n');
        self.extra_toml.push_str(toml);
        self
    }

    /// The TOML text, with the database in `db_path`.
    pub fn render(&self, db_path: &Path) -> String {
        let q = |s: &str| toml_string(s);
        let mut out = format!(
            "[sip]\nlisten = \"127.0.0.1:0\"\npublic_addr = \"127.0.0.1\"\n{}\n\
             [http]\nlisten = \"127.0.0.1:0\"\nrate_limit_per_ip_s = 0\nrate_limit_per_key_s = 0\n\n\
             [rtp]\nport_min = {}\nport_max = {}\n{}{}\n\
             [database]\nurl = {}\n\n\
             [security]\noutbound_allow_cidrs = [\"127.0.0.0/8\"]\n\n\
             [webhooks]\nretry_base_ms = {}\n{}\n\
             [[trunks]]\nname = {}\nuri = {}\ntransport = {}\n",
            self.sip_toml,
            self.rtp_port_min,
            self.rtp_port_max,
            self.media_timeout_s
                .map(|t| format!("media_timeout_s = {t}\n"))
                .unwrap_or_default(),
            self.rtp_toml,
            q(&self
                .database_url
                .clone()
                .unwrap_or_else(|| format!("sqlite://{}", db_path.display()))),
            self.retry_base_ms,
            self.webhooks_toml,
            q(&self.trunk_name),
            q(&self.trunk_uri),
            q(&self.trunk_transport),
        );
        if let Some((user, pass)) = &self.credentials {
            out.push_str(&format!("username = {}\npassword = {}\n", q(user), q(pass)));
        }
        let numbers: Vec<String> = self.numbers.iter().map(|n| q(n)).collect();
        out.push_str(&format!(
            "numbers = [{}]\ntenant = {}\n",
            numbers.join(", "),
            q(&self.tenant)
        ));
        out.push_str(&self.extra_toml);
        out
    }
}

/// A TOML basic string (JSON string escapes are valid TOML).
fn toml_string(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

/// Addresses from the `{"event":"listening",...}` line.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub sip_udp: SocketAddr,
    pub sip_tcp: SocketAddr,
    pub http: SocketAddr,
}

/// A running switch. Its stderr (logs) goes to `switch.log` in its tempdir and is printed when
/// a test panics; dropping it kills the process.
#[derive(Debug)]
pub struct SwitchProcess {
    config: SwitchConfig,
    dir: TempDir,
    child: Option<Child>,
    listening: Listening,
    starts: u32,
}

impl SwitchProcess {
    /// Writes the config and starts `switchyard serve`, returning once it is listening.
    pub async fn start(config: SwitchConfig) -> SwitchProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("switchyard.toml");
        let db_path = dir.path().join("switchyard.db");
        std::fs::write(&config_path, config.render(&db_path)).expect("write config");
        let (child, listening) = spawn_serve(dir.path(), 1, &config.env).await;
        SwitchProcess {
            config,
            dir,
            child: Some(child),
            listening,
            starts: 1,
        }
    }

    /// Starts `switchyard serve` on config files written as they are (`switchyard.toml`
    /// and any others it names, such as a dial plan) instead of a rendered config.
    pub async fn start_files(files: &[(&str, &str)]) -> SwitchProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write config file");
        }
        let (child, listening) = spawn_serve(dir.path(), 1, &[]).await;
        SwitchProcess {
            // Only for `config()`, which such a test has no use for.
            config: SwitchConfig::new(listening.sip_udp),
            dir,
            child: Some(child),
            listening,
            starts: 1,
        }
    }

    /// `start(SwitchConfig::new(trunk))`.
    pub async fn with_trunk(trunk: SocketAddr) -> SwitchProcess {
        Self::start(SwitchConfig::new(trunk)).await
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn http_base(&self) -> String {
        format!("http://{}", self.listening.http)
    }

    pub fn sip_udp(&self) -> SocketAddr {
        self.listening.sip_udp
    }

    pub fn sip_tcp(&self) -> SocketAddr {
        self.listening.sip_tcp
    }

    pub fn listening(&self) -> Listening {
        self.listening
    }

    pub fn config(&self) -> &SwitchConfig {
        &self.config
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("switchyard.db")
    }

    /// `GET /metrics` as text (Prometheus exposition).
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http_base()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    /// One sample's value from `/metrics` text (`name` with its labels, e.g.
    /// `switchyard_trunk_up{trunk="a"}`), or None when it is not there.
    pub fn metric(text: &str, name: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The tempdir holding config, database and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the switch wrote to stderr so far (all runs, separated by markers).
    pub fn logs(&self) -> String {
        std::fs::read(self.dir.path().join("switch.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// SIGKILL (no shutdown hooks run), then reap the process.
    pub async fn kill_9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill switchyard");
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Descriptors the switch holds open now (from /proc).
    pub fn open_fds(&self) -> usize {
        self.pid()
            .and_then(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
            .map_or(0, Iterator::count)
    }

    /// SIGTERM (graceful shutdown) and wait for exit; returns the exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = child.id()?;
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => status.expect("wait switchyard").code(),
            Err(_) => panic!(
                "switchyard did not exit within {timeout:?} of SIGTERM\n{}",
                self.logs()
            ),
        }
    }

    /// Starts again with the same config and database (SIGKILLs a still-running process
    /// first). The new process listens on new ports.
    pub async fn restart(&mut self) {
        self.kill_9().await;
        self.starts += 1;
        let (child, listening) = spawn_serve(self.dir.path(), self.starts, &self.config.env).await;
        self.child = Some(child);
        self.listening = listening;
    }

    /// Runs `switchyard api-key create` and returns the key (last stdout line).
    pub async fn create_api_key(&self, tenant: &str, role: &str) -> String {
        let config_path = self.config_path();
        let out = Command::new(switch_bin())
            .args(["api-key", "create", "--tenant", tenant, "--role", role])
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run switchyard api-key create");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "api-key create failed ({:?})\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_else(|| panic!("api-key create printed nothing"))
            .to_owned()
    }

    /// An API client with a fresh key for `tenant` and `role`.
    pub async fn api(&self, tenant: &str, role: &str) -> Api {
        let key = self.create_api_key(tenant, role).await;
        Api::new(&self.http_base(), &key)
    }
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            eprintln!(
                "==== switchyard logs ({}) ====\n{}\n==== end of switchyard logs ====",
                self.dir.path().display(),
                self.logs()
            );
        }
    }
}

/// Spawns `serve` and reads stdout until the listening line; the rest of stdout is copied to
/// `stdout.log` in the background so the pipe never fills.
async fn spawn_serve(dir: &Path, run: u32, env: &[(String, String)]) -> (Child, Listening) {
    let log_path = dir.join("switch.log");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open switch.log");
    use std::io::Write as _;
    writeln!(log, "---- switchyard run {run} ----").expect("write switch.log");
    let mut cmd = Command::new(switch_bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("switchyard.toml"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info,switchyard=debug,sip=debug,media=debug");
    }
    cmd.env("RUST_BACKTRACE", "1");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = cmd.spawn().expect("spawn switchyard serve");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(LISTEN_DEADLINE, async {
        while let Some(line) = lines.next_line().await.expect("read switchyard stdout") {
            if let Some(l) = parse_listening(&line) {
                return Some(l);
            }
            seen.push(line);
        }
        None
    })
    .await;
    let listening = match found {
        Ok(Some(l)) => l,
        other => {
            let _ = child.kill().await;
            let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
            let why = if other.is_err() {
                "no listening line within 20 s"
            } else {
                "stdout closed (process exited) before the listening line"
            };
            panic!(
                "switchyard serve: {why}\nstdout:\n{}\nstderr:\n{logs}",
                seen.join("\n")
            );
        }
    };
    let stdout_path = dir.join("stdout.log");
    tokio::spawn(async move {
        let Ok(mut file) = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stdout_path)
            .await
        else {
            return;
        };
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = file.write_all(line.as_bytes()).await;
            let _ = file.write_all(b"\n").await;
        }
    });
    (child, listening)
}

/// Parses the `{"event":"listening",...}` line; `None` for any other line.
pub fn parse_listening(line: &str) -> Option<Listening> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    if v.get("event")?.as_str()? != "listening" {
        return None;
    }
    let addr = |k: &str| v.get(k)?.as_str()?.parse::<SocketAddr>().ok();
    Some(Listening {
        sip_udp: addr("sip_udp")?,
        sip_tcp: addr("sip_tcp")?,
        http: addr("http")?,
    })
}
