//! Server side of SIP digest authentication (RFC 3261 §22.4, RFC 2617 §3.2.1 and
//! §3.2.3, RFC 7616 §3.3/§5.4), sans-IO: the wall clock (`now_secs`) and the rng
//! are arguments.
//!
//! Nonces are stateless and unforgeable:
//! `base64url(timestamp_be64 || random(8) || HMAC-SHA256(secret, timestamp || random || realm)[..16])`,
//! so any process holding the secret can check a nonce without having stored it,
//! and a nonce issued for another realm or by another secret is refused.
//!
//! The only state is replay protection (RFC 2617 §3.2.3 / RFC 7616 §5.4): the
//! highest `nc` accepted per nonce, or for RFC 2069 responses (no qop) the fact that
//! the nonce was used. That map is bounded ([`MAX_TRACKED_NONCES`]); when full the
//! entry closest to expiry goes first (expired ones are therefore evicted before
//! fresh ones), and evicting a still-fresh nonce raises a floor below which untracked
//! nonces are answered `Stale` rather than accepted again, so a flood can cost
//! clients a re-challenge but can never re-open a replay.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::auth::{DigestResponse, verify};
use crate::msg::Method;

/// At most this many nonces are remembered for replay protection.
pub const MAX_TRACKED_NONCES: usize = 10_000;

const TS_LEN: usize = 8;
const RAND_LEN: usize = 8;
const MAC_LEN: usize = 16;
const NONCE_LEN: usize = TS_LEN + RAND_LEN + MAC_LEN;

type NonceBytes = [u8; NONCE_LEN];

/// The verdict on an `Authorization` / `Proxy-Authorization` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The credentials are correct and the nonce fresh and unused at this `nc`.
    Ok { username: String },
    /// The response is correct but the nonce (ours, untampered) has expired:
    /// re-challenge with `stale=true` so the client retries without prompting.
    Stale,
    /// This nonce was already used with this or a higher `nc` (or, without qop, at all).
    Replay,
    /// Refused; the reason is for logs only (do not tell the client which check failed).
    Invalid(&'static str),
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    issued: u64,
    /// Highest `nc` accepted; `None` when used without qop (single use).
    nc: Option<u32>,
}

/// Issues digest challenges and checks the answers; see the module docs.
pub struct Challenger {
    secret: [u8; 32],
    realm: String,
    ttl_secs: u64,
    opaque: Option<String>,
    seen: HashMap<NonceBytes, Seen>,
    /// `(issued, nonce)` for every entry of `seen`, so the entry closest to expiry
    /// is found in O(log n).
    by_issue: BTreeSet<(u64, NonceBytes)>,
    /// Untracked nonces issued at or before this second may have been evicted
    /// while fresh; they are answered `Stale` (see module docs).
    evicted_floor: Option<u64>,
}

// Never print the secret.
impl std::fmt::Debug for Challenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenger")
            .field("realm", &self.realm)
            .field("ttl_secs", &self.ttl_secs)
            .field("opaque", &self.opaque)
            .field("tracked", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl Challenger {
    pub fn new(secret: [u8; 32], realm: String, nonce_ttl: Duration) -> Self {
        Challenger {
            secret,
            realm,
            ttl_secs: nonce_ttl.as_secs(),
            opaque: None,
            seen: HashMap::new(),
            by_issue: BTreeSet::new(),
            evicted_floor: None,
        }
    }

    /// Send this `opaque` in every challenge and require it back unchanged.
    pub fn with_opaque(mut self, opaque: String) -> Self {
        self.opaque = Some(opaque);
        self
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// How many nonces are currently remembered for replay protection
    /// (never more than [`MAX_TRACKED_NONCES`]).
    pub fn tracked_nonces(&self) -> usize {
        self.seen.len()
    }

    /// A `WWW-Authenticate` / `Proxy-Authenticate` header value with a fresh nonce:
    /// `Digest realm="…", nonce="…", algorithm=MD5, qop="auth"` (+ `opaque`, and
    /// `stale=true` when the client's nonce was [`AuthOutcome::Stale`]).
    pub fn challenge(&mut self, now_secs: u64, rng: &mut impl rand::Rng, stale: bool) -> String {
        let mut random = [0u8; RAND_LEN];
        rng.fill(&mut random);
        let nonce = self.make_nonce(now_secs, random);
        let mut s = format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"",
            escape(&self.realm),
            base64url_encode(&nonce)
        );
        if let Some(o) = &self.opaque {
            let _ = write!(s, ", opaque=\"{}\"", escape(o));
        }
        if stale {
            s.push_str(", stale=true");
        }
        s
    }

    /// Checks an `Authorization` / `Proxy-Authorization` header value for a request
    /// with this method and Request-URI. `lookup` maps a username to its password.
    /// Only a correct response can update the replay state.
    pub fn check(
        &mut self,
        now_secs: u64,
        authorization_header: &str,
        method: &Method,
        request_uri: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> AuthOutcome {
        let Ok(resp) = DigestResponse::parse(authorization_header) else {
            return AuthOutcome::Invalid("malformed Authorization");
        };
        if resp.realm != self.realm {
            return AuthOutcome::Invalid("wrong realm");
        }
        // We only ever challenge with MD5 (absent means MD5, RFC 7616 §3.3).
        if !resp
            .algorithm
            .as_deref()
            .is_none_or(|a| a.eq_ignore_ascii_case("MD5"))
        {
            return AuthOutcome::Invalid("unsupported algorithm");
        }
        let nc = match resp.qop.as_deref() {
            None => None,
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let Some(nc) = resp.nc.as_deref().and_then(parse_nc) else {
                    return AuthOutcome::Invalid("bad or missing nc");
                };
                if resp.cnonce.as_deref().is_none_or(str::is_empty) {
                    return AuthOutcome::Invalid("missing cnonce");
                }
                Some(nc)
            }
            Some(_) => return AuthOutcome::Invalid("unsupported qop"),
        };
        let Some(nonce) = self.open_nonce(&resp.nonce) else {
            return AuthOutcome::Invalid("bad nonce");
        };
        if let Some(o) = &self.opaque
            && resp.opaque.as_deref() != Some(o.as_str())
        {
            return AuthOutcome::Invalid("opaque mismatch");
        }
        // RFC 3261 §22.4 leaves the comparison to the server. Exact match, or the same
        // host:port without the user part: some UAs (SIPp among them) digest the remote
        // target rather than the Request-URI. The nonce still binds the answer to us.
        if resp.uri != request_uri && uri_hostport(&resp.uri) != uri_hostport(request_uri) {
            return AuthOutcome::Invalid("uri mismatch");
        }
        let Some(password) = lookup(&resp.username) else {
            return AuthOutcome::Invalid("unknown user");
        };
        if !verify(&resp, method, &password) {
            return AuthOutcome::Invalid("wrong response");
        }

        let issued = nonce_timestamp(&nonce);
        self.evict_expired(now_secs);
        if self.is_expired(issued, now_secs) {
            return AuthOutcome::Stale;
        }
        match self.seen.get_mut(&nonce) {
            Some(seen) => match (seen.nc, nc) {
                (Some(last), Some(nc)) if nc > last => {
                    seen.nc = Some(nc);
                    AuthOutcome::Ok {
                        username: resp.username,
                    }
                }
                _ => AuthOutcome::Replay,
            },
            None => {
                if self.evicted_floor.is_some_and(|floor| issued <= floor) {
                    // Possibly used before and forgotten: make the client fetch a new one.
                    return AuthOutcome::Stale;
                }
                self.remember(nonce, Seen { issued, nc });
                AuthOutcome::Ok {
                    username: resp.username,
                }
            }
        }
    }

    fn is_expired(&self, issued: u64, now_secs: u64) -> bool {
        issued.saturating_add(self.ttl_secs) < now_secs
    }

    fn evict_expired(&mut self, now_secs: u64) {
        while let Some(&(issued, nonce)) = self.by_issue.first() {
            if !self.is_expired(issued, now_secs) {
                break;
            }
            self.by_issue.pop_first();
            self.seen.remove(&nonce);
        }
    }

    fn remember(&mut self, nonce: NonceBytes, seen: Seen) {
        while self.seen.len() >= MAX_TRACKED_NONCES {
            let Some((issued, old)) = self.by_issue.pop_first() else {
                break;
            };
            self.seen.remove(&old);
            // Expired entries were evicted just before, so this one was still fresh.
            self.evicted_floor = Some(self.evicted_floor.map_or(issued, |f| f.max(issued)));
        }
        self.by_issue.insert((seen.issued, nonce));
        self.seen.insert(nonce, seen);
    }

    fn make_nonce(&self, now_secs: u64, random: [u8; RAND_LEN]) -> NonceBytes {
        let mut n = [0u8; NONCE_LEN];
        let (ts, rest) = n.split_at_mut(TS_LEN);
        let (rnd, mac) = rest.split_at_mut(RAND_LEN);
        ts.copy_from_slice(&now_secs.to_be_bytes());
        rnd.copy_from_slice(&random);
        let full = self.mac(&now_secs.to_be_bytes(), &random);
        mac.copy_from_slice(&full[..MAC_LEN]);
        n
    }

    /// Decodes a nonce and checks its MAC; `None` if it is not one of ours.
    fn open_nonce(&self, s: &str) -> Option<NonceBytes> {
        let bytes: NonceBytes = base64url_decode(s)?.try_into().ok()?;
        let (ts, rest) = bytes.split_at(TS_LEN);
        let (rnd, mac) = rest.split_at(RAND_LEN);
        let expected = self.mac(ts, rnd);
        constant_time_eq(&expected[..MAC_LEN], mac).then_some(bytes)
    }

    fn mac(&self, ts: &[u8], random: &[u8]) -> [u8; 32] {
        hmac_sha256(&self.secret, &[ts, random, self.realm.as_bytes()])
    }
}

fn nonce_timestamp(n: &NonceBytes) -> u64 {
    let mut ts = [0u8; TS_LEN];
    ts.copy_from_slice(&n[..TS_LEN]);
    u64::from_be_bytes(ts)
}

/// `nc` is exactly 8 hex digits (RFC 2617 §3.2.2).
fn parse_nc(s: &str) -> Option<u32> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    // A 32-byte key is shorter than the block, so it is used zero-padded as is.
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut inner = Sha256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(opad);
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 §5).
fn base64url_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            let idx = (v >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(B64URL[idx as usize]));
        }
    }
    out
}

/// Inverse of [`base64url_encode`]; `None` on any character outside the alphabet,
/// padding, or an impossible length.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0u32;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero, so each byte string has exactly one encoding.
    (acc == 0).then_some(out)
}

/// `sip:user@host:port;params` → `host:port` (lower-cased).
fn uri_hostport(uri: &str) -> String {
    let rest = uri.split_once(':').map_or(uri, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    rest.split([';', '?'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 §4.2 and §4.3: HMAC zero-pads short keys to the block size, so the
    /// RFC's 20- and 4-byte keys are our 32-byte keys with zero tails.
    #[test]
    fn hmac_rfc4231_vectors() {
        let hex = |m: [u8; 32]| m.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut key = [0u8; 32];
        key[..20].fill(0x0b);
        assert_eq!(
            hex(hmac_sha256(&key, &[b"Hi ", b"There"])),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex(hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"])),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn base64url_round_trip() {
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let s = base64url_encode(&data);
            assert!(!s.contains('='));
            assert_eq!(base64url_decode(&s).unwrap(), data, "{s}");
        }
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
        assert!(base64url_decode("A").is_none());
        assert!(base64url_decode("AB+/").is_none());
        assert!(base64url_decode("AB==").is_none());
        // Non-zero trailing bits: a second spelling of the same bytes.
        assert!(base64url_decode("AB").is_none());
    }

    #[test]
    fn nonce_layout() {
        let c = Challenger::new([7; 32], "r".into(), Duration::from_secs(60));
        let n = c.make_nonce(1234, [9; 8]);
        assert_eq!(nonce_timestamp(&n), 1234);
        let s = base64url_encode(&n);
        assert_eq!(s.len(), 43);
        assert_eq!(c.open_nonce(&s), Some(n));
        let other_realm = Challenger::new([7; 32], "s".into(), Duration::from_secs(60));
        assert_eq!(other_realm.open_nonce(&s), None);
    }

    #[test]
    fn nc_parsing() {
        assert_eq!(parse_nc("00000001"), Some(1));
        assert_eq!(parse_nc("ffffffff"), Some(u32::MAX));
        assert_eq!(parse_nc("1"), None);
        assert_eq!(parse_nc("+0000001"), None);
        assert_eq!(parse_nc("0000000g"), None);
    }
}
