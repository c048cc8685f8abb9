//! Digest brute force: a source that keeps failing authentication is banned, and a user
//! name that keeps failing is slowed, whatever the address the guesses come from.
//!
//! The per-source request rate limit alone allowed 229 wrong guesses in 15 s, and a
//! trunk's own address (exempt from that limit) 1,988 a second. Here every failed digest
//! answer counts against its source address (an IPv6 /64 as one) and its user name:
//! - `auth_max_failures` failures within `auth_failure_window_s` ban the source for
//!   `auth_ban_s`: its INVITEs are dropped unanswered (nothing to learn, nothing to
//!   reflect), trunk address or not;
//! - `auth_user_max_failures` failures on one user name lock that name for a backoff that
//!   doubles with each further failure (2 s up to 5 min): during it, answers for that
//!   name are refused unchecked, so a botnet spread over many addresses still guesses at
//!   a crawl, while the real trunk, which does not fail, is never locked.
//!
//! Sans-IO: time comes in as seconds; tables are bounded.

use std::hash::{Hash, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hashlink::LinkedHashMap;

use crate::config::SecurityConfig;

/// Least recently failed first: when full, the entry forgotten is the stalest (O(1)).
type Table<K> = LinkedHashMap<K, Record, RandomState>;

/// Sources and user names remembered at most (oldest entries go first when full).
const MAX_TRACKED: usize = 65_536;
const USER_BACKOFF_MIN_S: u64 = 2;
const USER_BACKOFF_MAX_S: u64 = 300;

#[derive(Debug, Default, Clone, Copy)]
struct Record {
    failures: u32,
    window_start: u64,
    blocked_until: u64,
}

#[derive(Debug)]
pub struct AuthGuard {
    max_failures: u32,
    window_s: u64,
    ban_s: u64,
    user_max_failures: u32,
    sources: Mutex<Table<u128>>,
    users: Mutex<Table<String>>,
    failures: AtomicU64,
    bans: AtomicU64,
    dropped: AtomicU64,
}

/// What to do with an INVITE before its credentials are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Pass,
    /// The source is banned: drop without a word.
    Banned,
    /// The user name is locked for a while: refuse without checking.
    UserLocked,
}

fn key(ip: IpAddr) -> u128 {
    crate::ratelimit::ip_key(ip)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AuthGuard {
    pub fn new(cfg: &SecurityConfig) -> Self {
        AuthGuard {
            max_failures: cfg.auth_max_failures.max(1),
            window_s: cfg.auth_failure_window_s.max(1),
            ban_s: cfg.auth_ban_s,
            user_max_failures: cfg.auth_user_max_failures.max(1),
            sources: Mutex::new(LinkedHashMap::with_hasher(RandomState::new())),
            users: Mutex::new(LinkedHashMap::with_hasher(RandomState::new())),
            failures: AtomicU64::new(0),
            bans: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Checked first for every INVITE (a banned source is dropped before anything else).
    pub fn gate_source(&self, ip: IpAddr, now: u64) -> Gate {
        let banned = lock(&self.sources)
            .get(&key(ip))
            .is_some_and(|r| r.blocked_until > now);
        if banned {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            Gate::Banned
        } else {
            Gate::Pass
        }
    }

    /// Checked before a digest answer for `user` is verified.
    pub fn gate_user(&self, user: &str, now: u64) -> Gate {
        let locked = lock(&self.users)
            .get(user)
            .is_some_and(|r| r.blocked_until > now);
        if locked { Gate::UserLocked } else { Gate::Pass }
    }

    /// A wrong digest answer from `ip` for `user` (when one was named).
    pub fn failed(&self, ip: IpAddr, user: Option<&str>, now: u64) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if self.ban_s > 0 {
            let mut sources = lock(&self.sources);
            let r = bump(&mut sources, key(ip), now, self.window_s);
            if r.failures >= self.max_failures && r.blocked_until <= now {
                r.blocked_until = now + self.ban_s;
                self.bans.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%ip, failures = r.failures, ban_s = self.ban_s, "source banned after failed authentication");
            }
        }
        if let Some(user) = user {
            let mut users = lock(&self.users);
            let r = bump(&mut users, user.to_owned(), now, self.window_s);
            if r.failures >= self.user_max_failures {
                let over = r.failures - self.user_max_failures;
                let backoff = USER_BACKOFF_MIN_S
                    .saturating_mul(1u64 << over.min(20))
                    .min(USER_BACKOFF_MAX_S);
                r.blocked_until = now + backoff;
            }
        }
    }

    /// `switchyard_sip_auth_*` lines for `/metrics`.
    pub fn render(&self, out: &mut String, now: u64) {
        use std::fmt::Write as _;
        let banned_now = lock(&self.sources)
            .values()
            .filter(|r| r.blocked_until > now)
            .count();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# TYPE switchyard_sip_auth_failures_total counter");
        let _ = writeln!(
            out,
            "switchyard_sip_auth_failures_total {}",
            load(&self.failures)
        );
        let _ = writeln!(out, "# TYPE switchyard_sip_auth_bans_total counter");
        let _ = writeln!(out, "switchyard_sip_auth_bans_total {}", load(&self.bans));
        let _ = writeln!(out, "# TYPE switchyard_sip_banned_sources gauge");
        let _ = writeln!(out, "switchyard_sip_banned_sources {banned_now}");
        let _ = writeln!(out, "# TYPE switchyard_sip_banned_dropped_total counter");
        let _ = writeln!(
            out,
            "switchyard_sip_banned_dropped_total {}",
            load(&self.dropped)
        );
    }
}

/// One more failure in the window (a new window once the old one has passed).
fn bump<K: Hash + Eq>(table: &mut Table<K>, k: K, now: u64, window_s: u64) -> &mut Record {
    if table.contains_key(&k) {
        table.to_back(&k);
    } else if table.len() >= MAX_TRACKED {
        table.pop_front();
    }
    let r = table.entry(k).or_insert_with(Record::default);
    if now >= r.window_start + window_s {
        r.failures = 0;
        r.window_start = now;
    }
    r.failures += 1;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(max: u32, ban_s: u64, user_max: u32) -> AuthGuard {
        AuthGuard::new(&SecurityConfig {
            auth_max_failures: max,
            auth_failure_window_s: 60,
            auth_ban_s: ban_s,
            auth_user_max_failures: user_max,
            ..SecurityConfig::default()
        })
    }

    #[test]
    fn a_source_is_banned_after_n_failures_for_the_ban_time() {
        let g = guard(5, 600, 100);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        for i in 0..4 {
            g.failed(ip, Some("carrier"), 1000 + i);
            assert_eq!(g.gate_source(ip, 1000 + i), Gate::Pass);
        }
        g.failed(ip, Some("carrier"), 1004);
        assert_eq!(g.gate_source(ip, 1004), Gate::Banned);
        assert_eq!(g.gate_source(ip, 1603), Gate::Banned);
        assert_eq!(g.gate_source(ip, 1604), Gate::Pass);
        // Another address is not affected; one of the same IPv6 /64 would be.
        assert_eq!(
            g.gate_source("198.51.100.8".parse().unwrap(), 1004),
            Gate::Pass
        );
        let mut text = String::new();
        g.render(&mut text, 1004);
        assert!(text.contains("switchyard_sip_auth_bans_total 1"), "{text}");
        assert!(text.contains("switchyard_sip_banned_sources 1"), "{text}");
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let g = guard(3, 600, 100);
        let ip: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        g.failed(ip, None, 0);
        g.failed(ip, None, 30);
        g.failed(ip, None, 70); // a new window
        assert_eq!(g.gate_source(ip, 70), Gate::Pass);
        g.failed("2001:db8:1:2::99".parse().unwrap(), None, 71);
        g.failed(ip, None, 72);
        assert_eq!(g.gate_source(ip, 72), Gate::Banned, "one /64 is one source");
    }

    #[test]
    fn a_user_name_failing_from_many_addresses_is_slowed() {
        let g = guard(1000, 600, 3);
        for i in 0..3u8 {
            g.failed(IpAddr::from([203, 0, 113, i]), Some("carrier"), 100);
        }
        assert_eq!(g.gate_user("carrier", 100), Gate::UserLocked);
        assert_eq!(g.gate_user("carrier", 102), Gate::Pass, "2 s backoff");
        assert_eq!(g.gate_user("other", 100), Gate::Pass);
        // Each further failure doubles the wait.
        g.failed(IpAddr::from([203, 0, 113, 9]), Some("carrier"), 102);
        assert_eq!(g.gate_user("carrier", 105), Gate::UserLocked);
        assert_eq!(g.gate_user("carrier", 106), Gate::Pass);
    }
}
