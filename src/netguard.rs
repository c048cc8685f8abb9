//! What the switch may connect to when it calls a URL it was given (status callbacks
//! today; agent servers, tools and media streams later): no loopback, private, link-local,
//! multicast, cloud-metadata or otherwise internal address, unless the operator allows it.
//!
//! An API user who names `http://127.0.0.1:6379/` or `http://169.254.169.254/` as a webhook
//! would otherwise make the switch talk to services behind the firewall (SSRF). The rule is
//! applied twice: when a URL is accepted (an IP literal in any spelling, `localhost`), and
//! when it is called — on the addresses the name resolves to at that moment, inside the HTTP
//! client's resolver, so a name that resolves to a public address when checked and to
//! 127.0.0.1 when called (DNS rebinding) is still refused. Redirects are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;

/// Calls refused because the URL or its resolved address was internal (for `/metrics`).
static REFUSED: AtomicU64 = AtomicU64::new(0);

pub fn refused_total() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Why a URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("must be an absolute http(s) URL")]
    NotHttp,
    #[error("names an internal address ({0}); only public addresses may be called")]
    Internal(IpAddr),
    #[error("names this host (localhost); only public addresses may be called")]
    Localhost,
}

#[derive(Debug, Default, Clone)]
pub struct OutboundGuard {
    /// Internal networks the operator allows anyway (receivers on a private network).
    allow: Vec<IpNet>,
}

impl OutboundGuard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        OutboundGuard { allow }
    }

    /// True when the switch may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Checks what can be checked without resolving: the scheme, an IP literal in any of
    /// the spellings a URL parser accepts (`2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`),
    /// and the `localhost` names (RFC 6761).
    pub fn check_url(&self, url: &str) -> Result<url::Url, UrlRefused> {
        let parsed = url::Url::parse(url).map_err(|_| UrlRefused::NotHttp)?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(UrlRefused::NotHttp);
        }
        let ip = match parsed.host() {
            None => return Err(UrlRefused::NotHttp),
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if (name == "localhost" || name.ends_with(".localhost"))
                    && !self.permits(IpAddr::V4(Ipv4Addr::LOCALHOST))
                {
                    return Err(UrlRefused::Localhost);
                }
                return Ok(parsed);
            }
        };
        if self.permits(ip) {
            Ok(parsed)
        } else {
            Err(UrlRefused::Internal(ip))
        }
    }

    /// [`Self::check_url`], counted in `/metrics` when refused (for calls about to be made).
    pub fn check_call(&self, url: &str) -> Result<url::Url, UrlRefused> {
        let checked = self.check_url(url);
        if checked.is_err() {
            REFUSED.fetch_add(1, Ordering::Relaxed);
        }
        checked
    }

    /// A resolver for reqwest that drops every internal address a name resolves to (and
    /// fails when none is left), checked when the connection is made.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver {
            guard: self.clone(),
        })
    }
}

#[derive(Debug)]
pub struct GuardedResolver {
    guard: OutboundGuard,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // Port 0: reqwest puts the URL's port in.
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| guard.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                REFUSED.fetch_add(1, Ordering::Relaxed);
                let shown = all.first().map(|a| a.ip().to_string()).unwrap_or_default();
                return Err(Box::new(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to an internal address ({shown}): refused"),
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Loopback, private, shared (CGNAT), link-local (cloud metadata at 169.254.169.254),
/// multicast, broadcast, unspecified, documentation-free reserved ranges, and their IPv6
/// counterparts, including IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64).
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || a == 0                                   // "this network" 0/8
        || (a == 100 && (64..128).contains(&b))     // shared address space 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments 192.0.0/24
        || (a == 198 && (b == 18 || b == 19))       // benchmarking 198.18/15
        || a >= 240 // reserved 240/4
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_internal_v4(v4);
    }
    let seg = ip.segments();
    // ::a.b.c.d (deprecated compatible) and 64:ff9b::/96 (NAT64) carry an IPv4 address.
    if seg[..6] == [0, 0, 0, 0, 0, 0] || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = seg[6].to_be_bytes();
        let [c, d] = seg[7].to_be_bytes();
        return ip.is_unspecified()
            || ip.is_loopback()
            || is_internal_v4(Ipv4Addr::new(a, b, c, d));
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (incl. fd00:ec2::254)
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_an_internal_host_is_refused() {
        let guard = OutboundGuard::default();
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://2130706433/hook",
            "http://0x7f.1/hook",
            "http://0177.0.0.1/hook",
            "http://0.0.0.0:9/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://100.64.0.1/",
            "http://224.0.0.1/",
            "http://[fd00:ec2::254]/",
            "http://[fe80::1]/",
            "http://[64:ff9b::a9fe:a9fe]/",
        ] {
            assert!(
                matches!(guard.check_url(url), Err(UrlRefused::Internal(_))),
                "{url} was not refused"
            );
        }
        for url in [
            "http://localhost:8080/",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert_eq!(
                guard.check_url(url).err(),
                Some(UrlRefused::Localhost),
                "{url}"
            );
        }
        for url in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "not a url",
            "mailto:a@b.example",
        ] {
            assert!(guard.check_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn public_hosts_pass_and_the_allow_list_opens_what_it_names() {
        let guard = OutboundGuard::default();
        for url in [
            "https://hooks.example.com/calls",
            "http://203.0.113.7:8080/x",
            "http://[2001:db8::1]/",
        ] {
            assert!(guard.check_url(url).is_ok(), "{url}");
        }
        let guard = OutboundGuard::new(vec!["10.20.0.0/16".parse().unwrap()]);
        assert!(guard.check_url("http://10.20.3.4/hook").is_ok());
        assert!(guard.check_url("http://10.21.3.4/hook").is_err());
        assert!(guard.check_url("http://localhost/").is_err());
        let guard = OutboundGuard::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(guard.check_url("http://127.0.0.1:9/").is_ok());
        assert!(guard.check_url("http://localhost:9/").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_resolve_inside() {
        use reqwest::dns::Resolve as _;
        let resolver = OutboundGuard::default().resolver();
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = resolver.resolve(name).await.err().expect("refused");
        assert!(err.to_string().contains("internal address"), "{err}");
        let allowed = OutboundGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])
        .resolver();
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let addrs: Vec<SocketAddr> = allowed.resolve(name).await.expect("allowed").collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }
}
