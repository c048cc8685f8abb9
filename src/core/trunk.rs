//! Trunks at run time: the carrier's URI resolved to an address, and the request URI
//! to put on an INVITE for a given number.

use std::net::SocketAddr;

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

#[derive(Clone, Debug)]
pub struct Trunk {
    pub config: TrunkConfig,
    pub uri: TrunkUri,
}

impl Trunk {
    pub fn new(config: TrunkConfig) -> Result<Self, String> {
        let uri = parse_trunk_uri(&config.uri)?;
        Ok(Self { config, uri })
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
