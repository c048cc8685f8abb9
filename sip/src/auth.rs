//! HTTP Digest authentication for SIP (RFC 3261 §22, RFC 2617 §3, RFC 7616 / RFC 8760):
//! MD5 and SHA-256, each plain or `-sess`.
//!
//! A server challenges with `WWW-Authenticate` (401) or `Proxy-Authenticate` (407):
//! `Digest realm="…", nonce="…", qop="auth"`. The client proves it knows the
//! password without sending it:
//!
//! ```text
//! HA1      = H(username ":" realm ":" password)
//! HA2      = H(method ":" digest-uri)
//! response = H(HA1 ":" nonce ":" nc ":" cnonce ":" qop ":" HA2)   with qop=auth
//!          = H(HA1 ":" nonce ":" HA2)                             without qop (RFC 2069)
//! ```
//!
//! where `H` is hex(MD5) or hex(SHA-256) per the challenge's `algorithm`, and the
//! `-sess` variants replace HA1 by `H(HA1 ":" nonce ":" cnonce)`. A server may offer
//! several challenges (SHA-256 first, MD5 for old clients): [`DigestChallenge::select`]
//! takes the first one we can answer.
//!
//! and retries the request with `Authorization` / `Proxy-Authorization` carrying
//! those fields. `cnonce` is random and `nc` counts uses of the same nonce; both come
//! from the caller because this crate is sans-IO (randomness is a seeded rng the UA
//! owns). The server side ([`DigestResponse::parse`] + [`verify`]) recomputes the
//! response from its own copy of the password; checking that the nonce is one it
//! issued and still fresh is the caller's job.
//!
//! `auth-int` (a hash of the body) is not implemented, so a challenge offering only
//! `auth-int` is answered as RFC 2069, and [`verify`] refuses `auth-int` responses.

use std::fmt::Write as _;

use md5::{Digest, Md5};
use sha2::Sha256;

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

    /// Whether [`authorization`] can answer this challenge (its algorithm is absent,
    /// MD5, MD5-sess, SHA-256 or SHA-256-sess).
    pub fn is_supported(&self) -> bool {
        Algorithm::parse(self.algorithm.as_deref()).is_some()
    }

    /// The first challenge among `WWW-Authenticate` / `Proxy-Authenticate` values
    /// that parses and that we can answer (RFC 8760 §2.4: servers list them in
    /// order of preference).
    pub fn select<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<DigestChallenge> {
        values
            .into_iter()
            .filter_map(|v| DigestChallenge::parse(v).ok())
            .find(DigestChallenge::is_supported)
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

/// Returns the value for an Authorization / Proxy-Authorization header (MD5 or
/// SHA-256 as challenged, qop=auth when offered, cnonce from the caller since the
/// crate is sans-IO). A challenge with an algorithm we do not know
/// (`!ch.is_supported()`) is answered with MD5, which the server will refuse:
/// pick challenges with [`DigestChallenge::select`].
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
    let alg = Algorithm::parse(ch.algorithm.as_deref()).unwrap_or(Algorithm::MD5);
    let ha1 = ha1(
        alg,
        &creds.username,
        &ch.realm,
        &creds.password,
        &ch.nonce,
        cnonce,
    );
    let qop = use_qop.then_some(("auth", nc.as_str(), cnonce));
    let response = response(alg, &ha1, &ch.nonce, qop, method.as_str(), uri);
    let mut s = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{response}\"",
        escape(&creds.username),
        escape(&ch.realm),
        escape(&ch.nonce),
        escape(uri),
    );
    let _ = write!(s, ", algorithm={}", alg.name());
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
    let Some(alg) = Algorithm::parse(resp.algorithm.as_deref()) else {
        return false;
    };
    let cnonce = resp.cnonce.as_deref().unwrap_or("");
    let ha1 = ha1(
        alg,
        &resp.username,
        &resp.realm,
        password,
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
    let expected = response(alg, &ha1, &resp.nonce, qop, method.as_str(), &resp.uri);
    constant_time_eq(
        expected.as_bytes(),
        resp.response.to_ascii_lowercase().as_bytes(),
    )
}

/// The hash and whether it is a `-sess` variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Algorithm {
    sha256: bool,
    sess: bool,
}

impl Algorithm {
    const MD5: Algorithm = Algorithm {
        sha256: false,
        sess: false,
    };

    /// RFC 7616 §3.3: absent means MD5. Names are case-insensitive.
    fn parse(name: Option<&str>) -> Option<Algorithm> {
        let name = name.unwrap_or("MD5").to_ascii_uppercase();
        let (base, sess) = match name.strip_suffix("-SESS") {
            Some(b) => (b, true),
            None => (name.as_str(), false),
        };
        let sha256 = match base {
            "MD5" => false,
            "SHA-256" => true,
            _ => return None,
        };
        Some(Algorithm { sha256, sess })
    }

    fn name(self) -> &'static str {
        match (self.sha256, self.sess) {
            (false, false) => "MD5",
            (false, true) => "MD5-sess",
            (true, false) => "SHA-256",
            (true, true) => "SHA-256-sess",
        }
    }

    fn hex(self, parts: &[&str]) -> String {
        if self.sha256 {
            hash_hex::<Sha256>(parts)
        } else {
            hash_hex::<Md5>(parts)
        }
    }
}

fn ha1(
    alg: Algorithm,
    user: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    cnonce: &str,
) -> String {
    let h = alg.hex(&[user, ":", realm, ":", password]);
    if alg.sess {
        alg.hex(&[&h, ":", nonce, ":", cnonce])
    } else {
        h
    }
}

/// `qop` is `(qop, nc, cnonce)` when a qop is in use.
fn response(
    alg: Algorithm,
    ha1: &str,
    nonce: &str,
    qop: Option<(&str, &str, &str)>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = alg.hex(&[method, ":", uri]);
    match qop {
        Some((q, nc, cnonce)) => {
            alg.hex(&[ha1, ":", nonce, ":", nc, ":", cnonce, ":", q, ":", &ha2])
        }
        None => alg.hex(&[ha1, ":", nonce, ":", &ha2]),
    }
}

fn hash_hex<D: Digest>(parts: &[&str]) -> String {
    let mut h = D::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    h.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
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

    /// RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
    #[test]
    fn rfc7616_sha256_example() {
        let creds = Credentials {
            username: "Mufasa".into(),
            password: "Circle of Life".into(),
        };
        let get = Method::Other("GET".into());
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let values = [
            "Basic realm=\"x\"",
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=SHA-512-256, nonce=\"x\"",
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=SHA-256, \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=MD5, \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        ];
        let sha = DigestChallenge::select(values).unwrap();
        assert_eq!(sha.algorithm.as_deref(), Some("SHA-256"));
        let h = authorization(&sha, &creds, &get, "/dir/index.html", cnonce, 1);
        assert!(
            h.contains(
                "response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""
            ),
            "{h}"
        );
        assert!(h.contains("algorithm=SHA-256"));
        assert!(verify(
            &DigestResponse::parse(&h).unwrap(),
            &get,
            "Circle of Life"
        ));

        let md5 = DigestChallenge::parse(values[3]).unwrap();
        let h = authorization(&md5, &creds, &get, "/dir/index.html", cnonce, 1);
        assert!(
            h.contains("response=\"8ca523f5e9506fed4657c9700eebdbec\""),
            "{h}"
        );
        assert!(!DigestChallenge::parse(values[1]).unwrap().is_supported());
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
        ch.algorithm = Some("sha-256-sess".into());
        let h = authorization(&ch, &creds, &Method::Invite, "sip:b@c", "cn", 7);
        assert!(h.contains("algorithm=SHA-256-sess"));
        assert!(verify(
            &DigestResponse::parse(&h).unwrap(),
            &Method::Invite,
            "p"
        ));
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
