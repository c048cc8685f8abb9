//! Trunks at run time: the carrier's URI resolved to an address, and the request URI
//! to put on an INVITE for a given number.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use crate::config::{TrunkConfig, TrunkTransport};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkUri {
    pub host: String,
    pub port: u16,
}

/// Accepts `sip:host[:port][;params]` (a user part is ignored: the called number replaces it).
pub fn parse_trunk_uri(uri: &str) -> Result<TrunkUri, String> {
    let rest = uri
        .strip_prefix("sip:")
        .ok_or_else(|| format!("{uri:?} is not a sip: URI (e.g. sip:carrier.example:5060)"))?;
    let rest = rest.split(';').next().unwrap_or_default();
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("{uri:?}: unterminated IPv6 reference"))?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("{uri:?}: bad port {p:?}"))?,
            None => 5060,
        };
        (format!("[{h}]"), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse().map_err(|_| format!("{uri:?}: bad port {p:?}"))?,
            ),
            None => (hostport.to_owned(), 5060),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(format!("{uri:?}: missing or invalid host"));
    }
    if port == 0 {
        return Err(format!("{uri:?}: port 0 is not a valid destination"));
    }
    Ok(TrunkUri { host, port })
}

/// What the switch knows about a trunk at run time, shared by every clone of it.
#[derive(Debug)]
pub struct TrunkState {
    /// False after a failed OPTIONS probe, until one succeeds.
    up: AtomicBool,
    /// Calls on this trunk now, both directions.
    active: AtomicU32,
    /// Token bucket for `max_cps`: (tokens, last refill).
    cps: Mutex<(f64, Option<Instant>)>,
    /// Outbound registration, for the API and metrics.
    registration: Mutex<RegistrationStatus>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct RegistrationStatus {
    /// `disabled`, `registering`, `registered` or `failed`.
    pub state: String,
    pub expires: Option<u32>,
    pub last_code: Option<u16>,
    pub last_reason: Option<String>,
}

/// Why a trunk cannot take a call now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    Down,
    ConcurrentLimit,
    RateLimit,
}

impl Unavailable {
    pub fn as_str(self) -> &'static str {
        match self {
            Unavailable::Down => "trunk down",
            Unavailable::ConcurrentLimit => "trunk at its concurrent-call limit",
            Unavailable::RateLimit => "trunk at its calls-per-second limit",
        }
    }
}

/// A reserved place on a trunk; dropping it frees the place.
#[derive(Debug)]
pub struct TrunkSlot {
    state: Arc<TrunkState>,
}

impl Drop for TrunkSlot {
    fn drop(&mut self) {
        self.state.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone, Debug)]
pub struct Trunk {
    pub config: TrunkConfig,
    pub uri: TrunkUri,
    pub state: Arc<TrunkState>,
}

impl Trunk {
    pub fn new(config: TrunkConfig) -> Result<Self, String> {
        let uri = parse_trunk_uri(&config.uri)?;
        let registration = RegistrationStatus {
            state: if config.register {
                "registering"
            } else {
                "disabled"
            }
            .to_owned(),
            ..RegistrationStatus::default()
        };
        Ok(Self {
            config,
            uri,
            state: Arc::new(TrunkState {
                up: AtomicBool::new(true),
                active: AtomicU32::new(0),
                cps: Mutex::new((0.0, None)),
                registration: Mutex::new(registration),
            }),
        })
    }

    pub fn is_up(&self) -> bool {
        self.state.up.load(Ordering::Acquire)
    }

    /// Returns the previous state.
    pub fn set_up(&self, up: bool) -> bool {
        self.state.up.swap(up, Ordering::AcqRel)
    }

    pub fn active_calls(&self) -> u32 {
        self.state.active.load(Ordering::Acquire)
    }

    pub fn registration(&self) -> RegistrationStatus {
        self.state
            .registration
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    pub fn set_registration(&self, status: RegistrationStatus) {
        if let Ok(mut r) = self.state.registration.lock() {
            *r = status;
        }
    }

    /// Takes a place for an outbound call: the trunk must be up, under `max_concurrent`
    /// and under `max_cps` (a bucket one second deep).
    pub fn reserve_outbound(&self, now: Instant) -> Result<TrunkSlot, Unavailable> {
        if !self.is_up() {
            return Err(Unavailable::Down);
        }
        if self.config.max_cps > 0 {
            let rate = f64::from(self.config.max_cps);
            let mut b = self.state.cps.lock().map_err(|_| Unavailable::RateLimit)?;
            let tokens = match b.1 {
                Some(last) => {
                    (b.0 + now.saturating_duration_since(last).as_secs_f64() * rate).min(rate)
                }
                None => rate,
            };
            if tokens < 1.0 {
                *b = (tokens, Some(now));
                return Err(Unavailable::RateLimit);
            }
            *b = (tokens - 1.0, Some(now));
        }
        self.reserve()
    }

    /// Takes a place for a call (inbound calls only count against `max_concurrent`).
    pub fn reserve(&self) -> Result<TrunkSlot, Unavailable> {
        let max = self.config.max_concurrent;
        let mut current = self.state.active.load(Ordering::Acquire);
        loop {
            if max > 0 && current >= max {
                return Err(Unavailable::ConcurrentLimit);
            }
            match self.state.active.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(TrunkSlot {
                        state: Arc::clone(&self.state),
                    });
                }
                Err(seen) => current = seen,
            }
        }
    }

    pub fn sip_transport(&self) -> sip::ua::Transport {
        match self.config.transport {
            TrunkTransport::Udp => sip::ua::Transport::Udp,
            TrunkTransport::Tcp => sip::ua::Transport::Tcp,
        }
    }

    pub fn credentials(&self) -> Option<sip::auth::Credentials> {
        match (&self.config.username, &self.config.password) {
            (Some(u), Some(p)) => Some(sip::auth::Credentials {
                username: u.clone(),
                password: p.clone(),
            }),
            _ => None,
        }
    }

    /// The Request-URI for a call to `number` through this trunk.
    pub fn request_uri(&self, number: &str) -> String {
        let transport = match self.config.transport {
            TrunkTransport::Udp => "",
            TrunkTransport::Tcp => ";transport=tcp",
        };
        format!(
            "sip:{number}@{}:{}{transport}",
            self.uri.host, self.uri.port
        )
    }

    /// Resolve the carrier's address (DNS A/AAAA; SRV/NAPTR are not consulted).
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        let host = self.uri.host.trim_start_matches('[').trim_end_matches(']');
        tokio::net::lookup_host((host, self.uri.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(max_concurrent: u32, max_cps: u32) -> Trunk {
        Trunk::new(TrunkConfig {
            name: "t".into(),
            uri: "sip:127.0.0.1:5070".into(),
            transport: TrunkTransport::Udp,
            username: None,
            password: None,
            numbers: vec![],
            tenant: "x".into(),
            inbound_cidrs: vec![],
            inbound_username: None,
            inbound_password: None,
            max_concurrent,
            max_cps,
            register: false,
            register_expires: 3600,
            keepalive_interval_s: 0,
            codecs: crate::config::default_codecs(),
        })
        .unwrap()
    }

    #[test]
    fn concurrent_limit_counts_live_slots() {
        let t = trunk(2, 0);
        let now = Instant::now();
        let a = t.reserve_outbound(now).unwrap();
        let _b = t.reserve().unwrap();
        assert_eq!(
            t.reserve_outbound(now).unwrap_err(),
            Unavailable::ConcurrentLimit
        );
        drop(a);
        assert!(t.reserve_outbound(now).is_ok());
        assert_eq!(t.active_calls(), 1, "the slot above was dropped at once");
    }

    #[test]
    fn cps_limit_is_a_one_second_bucket() {
        let t = trunk(0, 3);
        let now = Instant::now();
        let slots: Vec<_> = (0..3).map(|_| t.reserve_outbound(now).unwrap()).collect();
        assert_eq!(t.reserve_outbound(now).unwrap_err(), Unavailable::RateLimit);
        let later = now + std::time::Duration::from_millis(340);
        assert!(
            t.reserve_outbound(later).is_ok(),
            "one token back after 1/3 s"
        );
        assert_eq!(
            t.reserve_outbound(later).unwrap_err(),
            Unavailable::RateLimit
        );
        drop(slots);
    }

    #[test]
    fn a_down_trunk_takes_no_calls() {
        let t = trunk(0, 0);
        assert!(t.set_up(false));
        assert_eq!(
            t.reserve_outbound(Instant::now()).unwrap_err(),
            Unavailable::Down
        );
    }

    #[test]
    fn parses_trunk_uris() {
        assert_eq!(
            parse_trunk_uri("sip:127.0.0.1:5070").unwrap(),
            TrunkUri {
                host: "127.0.0.1".into(),
                port: 5070
            }
        );
        assert_eq!(parse_trunk_uri("sip:carrier.example").unwrap().port, 5060);
        assert_eq!(
            parse_trunk_uri("sip:[::1]:5080;transport=tcp").unwrap(),
            TrunkUri {
                host: "[::1]".into(),
                port: 5080
            }
        );
        assert!(parse_trunk_uri("http://x").is_err());
        assert!(parse_trunk_uri("sip:host:99999").is_err());
        assert!(parse_trunk_uri("sip:").is_err());
    }
}
