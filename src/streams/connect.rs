//! Opening the WebSocket: TCP through a [`Connector`] (where the SSRF guard applies),
//! then TLS for `wss` (rustls, webpki roots) and the upgrade.
//!
//! The guard must judge the addresses actually connected to, not the name in the URL
//! (a name can resolve to a public address when checked and to 127.0.0.1 when called,
//! DNS rebinding): so the driver never resolves names itself; it asks its
//! [`Connector`] for a connected `TcpStream` to (host, port) on every attempt, and
//! [`GuardedConnector`] resolves, drops every address [`OutboundGuard`] refuses and
//! connects to what is left — as `netguard::GuardedResolver` does for reqwest. Check the
//! URL itself (scheme, IP literals, `localhost`) with [`check_stream_url`] before
//! spawning the stream.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::netguard::{OutboundGuard, UrlRefused};

/// The connected WebSocket the driver runs a session on.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A boxed connect future.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;

/// Opens the TCP connection for a stream URL's host and port; called on every
/// (re)connection attempt.
pub trait Connector: Send + Sync + fmt::Debug {
    fn connect<'a>(&'a self, host: &'a Host, port: u16) -> ConnectFuture<'a>;
}

/// A URL's host: a name to resolve or an IP literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

async fn resolve(host: &Host, port: u16) -> io::Result<Vec<SocketAddr>> {
    match host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => Ok(tokio::net::lookup_host((name.as_str(), port))
            .await?
            .collect()),
    }
}

/// Tries each address in turn; the last error if none answers.
async fn connect_first(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                // 20 ms frames: don't let Nagle hold them back.
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects anywhere the name resolves to (tests, trusted configuration).
#[derive(Debug, Default, Clone)]
pub struct DirectConnector;

impl Connector for DirectConnector {
    fn connect<'a>(&'a self, host: &'a Host, port: u16) -> ConnectFuture<'a> {
        Box::pin(async move { connect_first(&resolve(host, port).await?).await })
    }
}

/// Connects only to addresses the [`OutboundGuard`] permits, judged at connect time.
#[derive(Debug, Clone)]
pub struct GuardedConnector {
    guard: OutboundGuard,
}

impl GuardedConnector {
    pub fn new(guard: OutboundGuard) -> Self {
        GuardedConnector { guard }
    }
}

impl Connector for GuardedConnector {
    fn connect<'a>(&'a self, host: &'a Host, port: u16) -> ConnectFuture<'a> {
        Box::pin(async move {
            let all = resolve(host, port).await?;
            let permitted: Vec<SocketAddr> = all
                .iter()
                .copied()
                .filter(|a| self.guard.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let shown = all.first().map(|a| a.ip().to_string()).unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{host} resolves to an internal address ({shown}): refused"),
                ));
            }
            connect_first(&permitted).await
        })
    }
}

/// Why a stream URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamUrlError {
    #[error("must be an absolute ws:// or wss:// URL")]
    NotWebSocket,
    #[error(transparent)]
    Refused(#[from] UrlRefused),
}

/// Parses a stream URL (`ws`/`wss` only).
pub fn parse_stream_url(url: &str) -> Result<url::Url, StreamUrlError> {
    let parsed = url::Url::parse(url).map_err(|_| StreamUrlError::NotWebSocket)?;
    if !matches!(parsed.scheme(), "ws" | "wss") || parsed.host().is_none() {
        return Err(StreamUrlError::NotWebSocket);
    }
    Ok(parsed)
}

/// The guard's URL check for a stream URL: `ws`/`wss` are judged as `http`/`https` (IP
/// literals in any spelling, `localhost`), counted in `/metrics` when refused. Use
/// with [`GuardedConnector`], which judges the resolved addresses at connect time.
pub fn check_stream_url(guard: &OutboundGuard, url: &str) -> Result<url::Url, StreamUrlError> {
    let parsed = parse_stream_url(url)?;
    let mut as_http = parsed.clone();
    let scheme = if parsed.scheme() == "wss" {
        "https"
    } else {
        "http"
    };
    as_http
        .set_scheme(scheme)
        .map_err(|()| StreamUrlError::NotWebSocket)?;
    guard.check_call(as_http.as_str())?;
    Ok(parsed)
}

/// One connection attempt: TCP through `connector`, then TLS and the upgrade.
pub(super) async fn open(
    url: &url::Url,
    connector: &dyn Connector,
    config: WebSocketConfig,
) -> Result<WsStream, String> {
    open_with_headers(url, &[], connector, config).await
}

/// [`open`] with extra handshake headers (e.g. `Authorization` for a model provider).
/// Errors name the host and port only, never the URL: its query may hold a key.
pub async fn open_with_headers(
    url: &url::Url,
    headers: &[(HeaderName, HeaderValue)],
    connector: &dyn Connector,
    config: WebSocketConfig,
) -> Result<WsStream, String> {
    let host = match url.host() {
        Some(url::Host::Domain(d)) => Host::Name(d.to_owned()),
        Some(url::Host::Ipv4(v4)) => Host::Ip(IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => Host::Ip(IpAddr::V6(v6)),
        None => return Err("URL has no host".to_owned()),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = connector
        .connect(&host, port)
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("WebSocket request for {host}:{port}: {e}"))?;
    for (name, value) in headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let (ws, _response) =
        tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(config), None)
            .await
            .map_err(|e| format!("WebSocket handshake with {host}:{port}: {e}"))?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_urls_are_ws_and_checked_like_http() {
        let guard = OutboundGuard::default();
        assert!(check_stream_url(&guard, "wss://agent.example.com/media").is_ok());
        assert_eq!(
            check_stream_url(&guard, "https://agent.example.com/"),
            Err(StreamUrlError::NotWebSocket)
        );
        assert!(matches!(
            check_stream_url(&guard, "ws://127.0.0.1:9000/"),
            Err(StreamUrlError::Refused(UrlRefused::Internal(_)))
        ));
        assert!(matches!(
            check_stream_url(&guard, "ws://localhost/"),
            Err(StreamUrlError::Refused(UrlRefused::Localhost))
        ));
    }

    #[tokio::test]
    async fn the_guarded_connector_refuses_internal_addresses() {
        let connector = GuardedConnector::new(OutboundGuard::default());
        let err = connector
            .connect(&Host::Name("localhost".into()), 9)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        let err = connector
            .connect(&Host::Ip("10.0.0.1".parse().unwrap()), 9)
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
    }
}
