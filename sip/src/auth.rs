//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617 §3, RFC 7616), MD5.
//!
//! A server challenges with `WWW-Authenticate` (401) or `Proxy-Authenticate` (407):
//! `Digest realm="…", nonce="…", qop="auth"`. The client proves it knows the
//! password without sending it:
//!
//! ```text
//! HA1      = MD5(username ":" realm ":" password)
//! HA2      = MD5(method ":" digest-uri)
//! response = MD5(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)   with qop=auth
//!          = MD5(HA1 ":" nonce ":" HA2)                             without qop (RFC 2069)
//! ```
//!
//! and retries the request with `Authorization` / `Proxy-Authorization` carrying
//! those fields. `cnonce` is random and `nc` counts uses of the same nonce; both come
//! from the caller because this crate is sans-IO (randomness is a seeded rng the UA
//! owns). The server side ([`DigestResponse::parse`] + [`verify`]) recomputes the
//! response from its own copy of the password; checking that the nonce is one it
//! issued and still fresh is the caller's job.
//!
//! Only `MD5` and `MD5-sess` are implemented; `auth-int` (hash of the body) is not
//! offered, so a challenge offering only `auth-int` is answered as RFC 2069.

use std::fmt::Write as _;

use md5::{Digest, Md5};

use crate::msg::{Method, ParseError};

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestChallenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Option<String>,
    /// The qop options offered, e.g. `["auth", "auth-int"]`.
    pub qop: Vec<String>,
    pub stale: bool,
}

impl DigestChallenge {
    pub fn parse(header_value: &str) -> Result<Self, ParseError> {
        let params = parse_digest_params(header_value)?;
        let get = |n: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        Ok(DigestChallenge {
            realm: get("realm").ok_or(ParseError::Digest("no realm"))?,
            nonce: get("nonce").ok_or(ParseError::Digest("no nonce"))?,
            opaque: get("opaque"),
            algorithm: get("algorithm"),
            qop: get("qop")
                .map(|q| {
                    q.split(',')
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// A challenge header value (`Digest realm="…", nonce="…", algorithm=MD5,
    /// qop="auth"`) for a server to send.
    pub fn to_header(&self) -> String {
        let mut s = format!(
            "Digest realm=\"{}\", nonce=\"{}\"",
            escape(&self.realm),
            escape(&self.nonce)
        );
        if let Some(o) = &self.opaque {
            let _ = write!(s, ", opaque=\"{}\"", escape(o));
        }
        if let Some(a) = &self.algorithm {
            let _ = write!(s, ", algorithm={a}");
        }
        if !self.qop.is_empty() {
            let _ = write!(s, ", qop=\"{}\"", self.qop.join(","));
        }
        if self.stale {
            s.push_str(", stale=TRUE");
        }
        s
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

// Never print the password.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Returns the value for an Authorization / Proxy-Authorization header (MD5,
/// qop=auth when offered, cnonce from the caller since the crate is sans-IO).
pub fn authorization(
    ch: &DigestChallenge,
    creds: &Credentials,
    method: &Method,
    uri: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let use_qop = ch.qop.iter().any(|q| q.eq_ignore_ascii_case("auth"));
    let nc = format!("{nc:08x}");
    let sess = is_sess(ch.algorithm.as_deref());
    let ha1 = ha1(
        &creds.username,
        &ch.realm,
        &creds.password,
        sess,
        &ch.nonce,
        cnonce,
    );
    let qop = use_qop.then_some(("auth", nc.as_str(), cnonce));
    let response = response(&ha1, &ch.nonce, qop, method.as_str(), uri);
    let mut s = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{response}\"",
        escape(&creds.username),
        escape(&ch.realm),
        escape(&ch.nonce),
        escape(uri),
    );
    let _ = write!(
        s,
        ", algorithm={}",
        ch.algorithm.as_deref().unwrap_or("MD5")
    );
    if use_qop {
        let _ = write!(s, ", cnonce=\"{}\", qop=auth, nc={nc}", escape(cnonce));
    }
    if let Some(o) = &ch.opaque {
        let _ = write!(s, ", opaque=\"{}\"", escape(o));
    }
    s
}

/// A parsed `Authorization` / `Proxy-Authorization` value (server side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestResponse {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
}

impl DigestResponse {
    pub fn parse(header_value: &str) -> Result<Self, ParseError> {
        let params = parse_digest_params(header_value)?;
        let get = |n: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let need = |n: &'static str| get(n).ok_or(ParseError::Digest(n));
        Ok(DigestResponse {
            username: need("username")?,
            realm: need("realm")?,
            nonce: need("nonce")?,
            uri: need("uri")?,
            response: need("response")?,
            algorithm: get("algorithm"),
            cnonce: get("cnonce"),
            opaque: get("opaque"),
            qop: get("qop"),
            nc: get("nc"),
        })
    }
}

/// Does `resp` prove knowledge of `password` for a request with this `method`?
/// The caller has already checked `resp.realm`, `resp.nonce` (issued by us, fresh)
/// and `resp.username`, and that `resp.uri` matches the Request-URI.
pub fn verify(resp: &DigestResponse, method: &Method, password: &str) -> bool {
    let sess = is_sess(resp.algorithm.as_deref());
    let cnonce = resp.cnonce.as_deref().unwrap_or("");
    let ha1 = ha1(
        &resp.username,
        &resp.realm,
        password,
        sess,
        &resp.nonce,
        cnonce,
    );
    let qop = match (resp.qop.as_deref(), &resp.nc, &resp.cnonce) {
        (None, _, _) => None,
        (Some(q), Some(nc), Some(cn)) if q.eq_ignore_ascii_case("auth") => {
            Some(("auth", nc.as_str(), cn.as_str()))
        }
        // auth-int, or qop without nc/cnonce: not something we can check.
        _ => return false,
    };
    if !matches!(
        resp.algorithm
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref(),
        None | Some("MD5") | Some("MD5-SESS")
    ) {
        return false;
    }
    let expected = response(&ha1, &resp.nonce, qop, method.as_str(), &resp.uri);
    constant_time_eq(
        expected.as_bytes(),
        resp.response.to_ascii_lowercase().as_bytes(),
    )
}

fn is_sess(algorithm: Option<&str>) -> bool {
    algorithm.is_some_and(|a| a.eq_ignore_ascii_case("MD5-sess"))
}

fn ha1(user: &str, realm: &str, password: &str, sess: bool, nonce: &str, cnonce: &str) -> String {
    let h = md5_hex(&[user, ":", realm, ":", password]);
    if sess {
        md5_hex(&[&h, ":", nonce, ":", cnonce])
    } else {
        h
    }
}

/// `qop` is `(qop, nc, cnonce)` when a qop is in use.
fn response(
    ha1: &str,
    nonce: &str,
    qop: Option<(&str, &str, &str)>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = md5_hex(&[method, ":", uri]);
    match qop {
        Some((q, nc, cnonce)) => {
            md5_hex(&[ha1, ":", nonce, ":", nc, ":", cnonce, ":", q, ":", &ha2])
        }
        None => md5_hex(&[ha1, ":", nonce, ":", &ha2]),
    }
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `Digest name=value, name="quoted, value", …` → unquoted pairs.
fn parse_digest_params(v: &str) -> Result<Vec<(String, String)>, ParseError> {
    let v = v.trim();
    let (scheme, mut rest) = v
        .split_once([' ', '\t'])
        .ok_or(ParseError::Digest("no parameters"))?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(ParseError::Digest("scheme is not Digest"));
    }
    let mut out = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Ok(out);
        }
        let (name, after) = rest
            .split_once('=')
            .ok_or(ParseError::Digest("parameter without ="))?;
        let name = name.trim();
        if name.is_empty() || name.contains([' ', '\t', ',']) {
            return Err(ParseError::Digest("bad parameter name"));
        }
        let after = after.trim_start();
        let (value, next) = if after.starts_with('"') {
            let end = crate::msg::quoted_string_end(after)
                .ok_or(ParseError::Digest("unterminated quoted string"))?;
            (crate::msg::unquote(&after[..end]), &after[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        out.push((name.to_owned(), value));
        rest = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5, with SIP's method in place of HTTP's GET.
    #[test]
    fn rfc2617_worked_example() {
        let ch = DigestChallenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        assert_eq!(ch.qop, vec!["auth", "auth-int"]);
        let creds = Credentials {
            username: "Mufasa".into(),
            password: "Circle Of Life".into(),
        };
        let get = Method::Other("GET".into());
        let h = authorization(&ch, &creds, &get, "/dir/index.html", "0a4f113b", 1);
        assert!(
            h.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{h}"
        );
        assert!(h.contains("nc=00000001"));
        assert!(h.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));

        let parsed = DigestResponse::parse(&h).unwrap();
        assert_eq!(parsed.response, "6629fae49393a05397450978507c4ef1");
        assert!(verify(&parsed, &get, "Circle Of Life"));
        assert!(!verify(&parsed, &get, "circle of life"));
        assert!(!verify(&parsed, &Method::Invite, "Circle Of Life"));
    }

    #[test]
    fn without_qop_and_with_sess() {
        let mut ch = DigestChallenge::parse("Digest realm=\"r\", nonce=\"n\", stale=TRUE").unwrap();
        assert!(ch.stale && ch.qop.is_empty());
        let creds = Credentials {
            username: "u".into(),
            password: "p".into(),
        };
        let h = authorization(&ch, &creds, &Method::Invite, "sip:b@c", "cn", 1);
        assert!(!h.contains("qop"));
        assert!(verify(
            &DigestResponse::parse(&h).unwrap(),
            &Method::Invite,
            "p"
        ));
        ch.algorithm = Some("MD5-sess".into());
        ch.qop = vec!["auth".into()];
        let h = authorization(&ch, &creds, &Method::Invite, "sip:b@c", "cn", 7);
        let r = DigestResponse::parse(&h).unwrap();
        assert_eq!(r.nc.as_deref(), Some("00000007"));
        assert!(verify(&r, &Method::Invite, "p"));
        assert!(!verify(&r, &Method::Invite, "q"));
    }

    #[test]
    fn challenge_round_trip_and_errors() {
        let ch = DigestChallenge {
            realm: "sip.example.com".into(),
            nonce: "abc".into(),
            opaque: Some("o".into()),
            algorithm: Some("MD5".into()),
            qop: vec!["auth".into()],
            stale: false,
        };
        assert_eq!(DigestChallenge::parse(&ch.to_header()).unwrap(), ch);
        assert!(DigestChallenge::parse("Basic realm=\"x\"").is_err());
        assert!(DigestChallenge::parse("Digest nonce=\"x\"").is_err());
        assert!(DigestChallenge::parse("Digest realm=\"x").is_err());
        assert!(DigestResponse::parse("NoOneKnowsThisScheme opaque-data=here").is_err());
    }
}
