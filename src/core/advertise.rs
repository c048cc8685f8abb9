//! Which of our addresses each peer is told, in Via, Contact, From and SDP.
//!
//! A switch bound to a specific address advertises that address, and `sip.public_addr` /
//! `rtp.public_addr` (a NAT's outside address, or a separate media IP) override it. A switch
//! listening on 0.0.0.0 with neither has no single right answer: a multi-homed host reaches
//! a carrier through one interface and a local SBC through another, and writing 127.0.0.1
//! sends the far end's answers into the void. Then each peer is told the local address the
//! kernel routes toward it, the one its packets from us carry as source.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Mutex;

use crate::config::Config;

/// Peer IPs remembered before the route cache starts over (routes rarely change; a
/// bounded map keeps a scan of many sources from growing it without end).
const ROUTE_CACHE_MAX: usize = 4096;

#[derive(Debug)]
pub struct Advertise {
    /// The SIP address every peer is told, when there is one.
    sip: Option<IpAddr>,
    /// The media (SDP) address every peer is told, when there is one.
    media: Option<IpAddr>,
    routes: Mutex<HashMap<IpAddr, IpAddr>>,
}

impl Advertise {
    pub fn new(config: &Config) -> Self {
        let listen = Some(config.sip.listen.ip()).filter(|ip| !ip.is_unspecified());
        let sip = config.sip.public_addr.or(listen);
        let bind = config.rtp.bind_ip.filter(|ip| !ip.is_unspecified());
        let media = config
            .rtp
            .public_addr
            .or(config.sip.public_addr)
            .or(bind)
            .or(listen);
        Advertise {
            sip,
            media,
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// True when peers are told per-destination addresses (no single SIP address).
    pub fn per_destination(&self) -> bool {
        self.sip.is_none()
    }

    /// The host part of Call-IDs we make: our one SIP address, or (per destination, when
    /// no address is right for every peer) the node's name.
    pub fn call_id_host(&self, node: &str) -> String {
        match self.sip {
            Some(ip) => ip.to_string(),
            None => node
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
                .collect(),
        }
    }

    /// Our SIP address as `peer` must see it.
    pub fn sip_ip_for(&self, peer: IpAddr) -> IpAddr {
        self.sip.unwrap_or_else(|| self.route_toward(peer))
    }

    /// Our media address as `peer` must see it (SDP `c=` and `o=`).
    pub fn media_ip_for(&self, peer: IpAddr) -> IpAddr {
        self.media.unwrap_or_else(|| self.route_toward(peer))
    }

    /// Our media address for an answer to `offer`: as the offer's audio address must see
    /// it (the SDP is parsed only in per-destination mode).
    pub fn media_ip_for_offer(&self, offer: &[u8]) -> IpAddr {
        if let Some(ip) = self.media {
            return ip;
        }
        match sdp_audio_ip(offer) {
            Some(peer) => self.route_toward(peer),
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// The local source address the kernel picks toward `peer`, cached per peer.
    pub fn route_toward(&self, peer: IpAddr) -> IpAddr {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ip) = routes.get(&peer) {
            return *ip;
        }
        let ip = local_ip_toward(peer);
        if routes.len() >= ROUTE_CACHE_MAX {
            routes.clear();
        }
        routes.insert(peer, ip);
        ip
    }
}

/// Where an SDP's first audio stream is (media-level `c=` over session-level).
fn sdp_audio_ip(sdp: &[u8]) -> Option<IpAddr> {
    let desc = media::sdp::parse(sdp).ok()?;
    let audio = desc.media.iter().find(|m| m.media == "audio");
    audio
        .and_then(|m| m.connection)
        .or(desc.connection)
        .map(|c| c.addr)
}

/// A UDP socket `connect`ed to `peer` asks the kernel's routing table for the source
/// address without sending anything. With no route at all, nothing can be sent to `peer`
/// anyway; then a loopback peer gets loopback and any other the unspecified address, so a
/// loopback address is never told to a non-loopback peer.
pub fn local_ip_toward(peer: IpAddr) -> IpAddr {
    let unspecified = match peer {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let routed = UdpSocket::bind(SocketAddr::new(unspecified, 0))
        .and_then(|s| {
            // Port 9 (discard): any port does, nothing is sent.
            s.connect(SocketAddr::new(peer, 9))?;
            s.local_addr()
        })
        .map(|a| a.ip());
    match routed {
        Ok(ip) if !ip.is_unspecified() => ip,
        _ if peer.is_loopback() => match peer {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        },
        other => {
            tracing::warn!(%peer, result = ?other, "no route toward peer; advertising no address");
            unspecified
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::from_sources(text, &[]).expect("config")
    }

    #[test]
    fn fixed_addresses_win_over_routes() {
        let a = Advertise::new(&config(
            "[sip]\nlisten = \"0.0.0.0:5060\"\npublic_addr = \"203.0.113.10\"\n",
        ));
        let peer: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            a.sip_ip_for(peer),
            "203.0.113.10".parse::<IpAddr>().unwrap()
        );
        // The media address follows the SIP one unless it has its own.
        assert_eq!(
            a.media_ip_for(peer),
            "203.0.113.10".parse::<IpAddr>().unwrap()
        );
        let a = Advertise::new(&config(
            "[sip]\nlisten = \"0.0.0.0:5060\"\npublic_addr = \"203.0.113.10\"\n\
             [rtp]\npublic_addr = \"203.0.113.99\"\n",
        ));
        assert_eq!(
            a.media_ip_for(peer),
            "203.0.113.99".parse::<IpAddr>().unwrap()
        );
        assert!(!a.per_destination());
        // A specific listen address is advertised as it is.
        let a = Advertise::new(&config("[sip]\nlisten = \"127.0.0.5:5060\"\n"));
        assert_eq!(a.sip_ip_for(peer), "127.0.0.5".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn unspecified_listen_advertises_the_route_toward_each_peer() {
        let a = Advertise::new(&config("[sip]\nlisten = \"0.0.0.0:5060\"\n"));
        assert!(a.per_destination());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(a.sip_ip_for(lo), lo);
        assert_eq!(a.media_ip_for("127.0.0.9".parse().unwrap()), lo);
        // Whatever this host's routes are, a non-loopback peer is never told loopback.
        let far: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!a.sip_ip_for(far).is_loopback());
        assert!(!a.media_ip_for(far).is_loopback());
    }
}
