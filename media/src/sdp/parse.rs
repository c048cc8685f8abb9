//! RFC 4566 §5 line parser: SDP bytes in, a [`SessionDescription`] out.
//!
//! Lines end in CRLF or bare LF. The first line must be `v=0`; `o=`, `c=` and `m=`
//! must be well formed; other line types and unknown attributes are skipped, and a
//! malformed `rtpmap`/`fmtp`/`ptime` attribute is ignored rather than failing the body
//! (robustness principle: a peer's odd attribute should not kill the call).

use std::net::IpAddr;

use super::{Direction, SdpError};

/// A parsed session description (only the parts this crate uses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionDescription {
    /// The `o=` line.
    pub origin: Option<Origin>,
    /// The `s=` value.
    pub session_name: Option<String>,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    /// The `m=` sections in order.
    pub media: Vec<MediaDescription>,
}

/// `o=<username> <sess-id> <sess-version> IN <addrtype> <address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Username (`-` when none).
    pub username: String,
    /// Session id, kept as text: peers use numbers larger than u64.
    pub session_id: String,
    /// Session version: a new value means a changed description (RFC 3264 §8).
    pub session_version: u64,
    /// Unicast address, as text (may be a host name).
    pub address: String,
}

/// `c=IN IP4|IP6 <address>[/ttl]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The connection address (any multicast `/ttl` suffix dropped).
    pub addr: IpAddr,
}

/// `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type.
    pub pt: u8,
    /// Encoding name as written (compare case-insensitively).
    pub encoding: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Channel count, when given.
    pub channels: Option<u16>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MediaDescription {
    /// Media type (`audio`, `video`, ...).
    pub media: String,
    /// Transport port; 0 means the stream is rejected or disabled.
    pub port: u16,
    /// Transport protocol (`RTP/AVP`, ...).
    pub proto: String,
    /// Format list as written (payload types for RTP).
    pub formats: Vec<String>,
    /// Media-level `c=` (overrides the session-level one).
    pub connection: Option<Connection>,
    /// `a=rtpmap` attributes.
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp` attributes as (payload type, parameters).
    pub fmtps: Vec<(u8, String)>,
    /// `a=ptime` in milliseconds.
    pub ptime: Option<u32>,
    /// Media-level direction attribute.
    pub direction: Option<Direction>,
}

impl MediaDescription {
    /// The numeric formats, in order (non-numeric ones skipped).
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse::<u8>().ok())
    }

    /// The rtpmap for a payload type.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.pt == pt)
    }

    /// The fmtp parameters for a payload type.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, s)| s.as_str())
    }

    /// Whether this is a plain (unencrypted) RTP audio stream we can handle.
    pub fn is_rtp_audio(&self) -> bool {
        self.media == "audio" && matches!(self.proto.as_str(), "RTP/AVP" | "RTP/AVPF")
    }
}

/// Parses an SDP body. Never panics.
pub fn parse(sdp: &[u8]) -> Result<SessionDescription, SdpError> {
    let text = std::str::from_utf8(sdp).map_err(|_| SdpError::NotUtf8)?;
    let mut sd = SessionDescription::default();
    let mut seen_version = false;
    for (idx, raw) in text.split('\n').enumerate() {
        let line_no = idx + 1;
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or(SdpError::Malformed { line: line_no })?;
        if key.len() != 1 {
            return Err(SdpError::Malformed { line: line_no });
        }
        if !seen_version {
            if key != "v" || value.trim() != "0" {
                return Err(SdpError::BadVersion);
            }
            seen_version = true;
            continue;
        }
        match key {
            "o" => sd.origin = Some(parse_origin(value, line_no)?),
            "s" => sd.session_name = Some(value.to_owned()),
            "c" => {
                let c = parse_connection(value, line_no)?;
                match sd.media.last_mut() {
                    Some(m) => m.connection = Some(c),
                    None => sd.connection = Some(c),
                }
            }
            "m" => sd.media.push(parse_media(value, line_no)?),
            "a" => match sd.media.last_mut() {
                Some(m) => parse_media_attr(m, value),
                None => {
                    if let Some(d) = Direction::from_attr(value.trim()) {
                        sd.direction = Some(d);
                    }
                }
            },
            // v= again, t=, b=, k=, i=, u=, e=, p=, z=, r=: nothing we need.
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::BadVersion);
    }
    Ok(sd)
}

fn parse_origin(value: &str, line: usize) -> Result<Origin, SdpError> {
    let err = SdpError::BadOrigin { line };
    let mut it = value.split_ascii_whitespace();
    let (Some(user), Some(id), Some(ver), Some(_net), Some(_at), Some(addr), None) = (
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
        it.next(),
    ) else {
        return Err(err);
    };
    Ok(Origin {
        username: user.to_owned(),
        session_id: id.to_owned(),
        session_version: ver.parse().map_err(|_| err)?,
        address: addr.to_owned(),
    })
}

fn parse_connection(value: &str, line: usize) -> Result<Connection, SdpError> {
    let err = SdpError::BadConnection { line };
    let mut it = value.split_ascii_whitespace();
    let (Some("IN"), Some(addr_type), Some(addr), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(err);
    };
    // Multicast addresses carry /ttl[/count]; the address is what precedes it.
    let addr = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = addr.parse().map_err(|_| err.clone())?;
    match (addr_type, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(Connection { addr: ip }),
        _ => Err(err),
    }
}

fn parse_media(value: &str, line: usize) -> Result<MediaDescription, SdpError> {
    let err = SdpError::BadMedia { line };
    let mut it = value.split_ascii_whitespace();
    let (Some(media), Some(port), Some(proto)) = (it.next(), it.next(), it.next()) else {
        return Err(err);
    };
    // `<port>/<number of ports>`: only the base port matters here.
    let port = port.split('/').next().unwrap_or(port);
    let port: u16 = port.parse().map_err(|_| err)?;
    Ok(MediaDescription {
        media: media.to_owned(),
        port,
        proto: proto.to_owned(),
        formats: it.map(str::to_owned).collect(),
        ..MediaDescription::default()
    })
}

fn parse_media_attr(m: &mut MediaDescription, value: &str) {
    let (name, arg) = match value.split_once(':') {
        Some((n, a)) => (n.trim(), Some(a.trim())),
        None => (value.trim(), None),
    };
    match (name, arg) {
        ("rtpmap", Some(arg)) => {
            if let Some(map) = parse_rtpmap(arg) {
                m.rtpmaps.push(map);
            }
        }
        ("fmtp", Some(arg)) => {
            if let Some((pt, params)) = arg.split_once(char::is_whitespace)
                && let Ok(pt) = pt.parse::<u8>()
            {
                m.fmtps.push((pt, params.trim().to_owned()));
            }
        }
        ("ptime", Some(arg)) => {
            if let Ok(p) = arg.parse::<u32>() {
                m.ptime = Some(p);
            }
        }
        (name, None) => {
            if let Some(d) = Direction::from_attr(name) {
                m.direction = Some(d);
            }
        }
        _ => {}
    }
}

fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, rest) = arg.split_once(char::is_whitespace)?;
    let pt: u8 = pt.parse().ok()?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.to_owned();
    let clock_rate: u32 = parts.next()?.parse().ok()?;
    let channels = match parts.next() {
        Some(c) => Some(c.parse::<u16>().ok()?),
        None => None,
    };
    Some(RtpMap {
        pt,
        encoding,
        clock_rate,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_full_description() {
        let sdp = b"v=0\r\n\
            o=alice 2890844526 2890844527 IN IP4 host.example.com\r\n\
            s=Call\r\n\
            c=IN IP4 198.51.100.1\r\n\
            t=0 0\r\n\
            a=recvonly\r\n\
            m=audio 49170 RTP/AVP 0 97 101\r\n\
            c=IN IP4 203.0.113.9/127\r\n\
            a=rtpmap:97 iLBC/8000\r\n\
            a=rtpmap:101 telephone-event/8000\r\n\
            a=fmtp:101 0-15\r\n\
            a=ptime:30\r\n\
            a=sendonly\r\n\
            m=video 0 RTP/AVP 31\r\n";
        let sd = parse(sdp).unwrap();
        let o = sd.origin.as_ref().unwrap();
        assert_eq!(o.session_version, 2890844527);
        assert_eq!(o.address, "host.example.com");
        assert_eq!(sd.session_name.as_deref(), Some("Call"));
        assert_eq!(
            sd.connection.unwrap().addr,
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(sd.direction, Some(Direction::RecvOnly));
        assert_eq!(sd.media.len(), 2);
        let a = &sd.media[0];
        assert!(a.is_rtp_audio());
        assert_eq!(a.port, 49170);
        assert_eq!(a.payload_types().collect::<Vec<_>>(), vec![0, 97, 101]);
        assert_eq!(
            a.connection.unwrap().addr,
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(a.rtpmap(97).unwrap().encoding, "iLBC");
        assert_eq!(a.fmtp(101), Some("0-15"));
        assert_eq!(a.ptime, Some(30));
        assert_eq!(a.direction, Some(Direction::SendOnly));
        assert_eq!(sd.media[1].port, 0);
        assert!(!sd.media[1].is_rtp_audio());
    }

    #[test]
    fn rejects_bad_inputs() {
        assert_eq!(parse(b""), Err(SdpError::BadVersion));
        assert_eq!(parse(b"s=-\r\nv=0\r\n"), Err(SdpError::BadVersion));
        assert_eq!(parse(b"v=1\r\n"), Err(SdpError::BadVersion));
        assert_eq!(
            parse(b"v=0\r\nhello\r\n"),
            Err(SdpError::Malformed { line: 2 })
        );
        assert_eq!(
            parse(b"v=0\r\nxy=1\r\n"),
            Err(SdpError::Malformed { line: 2 })
        );
        assert_eq!(
            parse(&[b'v', b'=', b'0', b'\n', 0xff]),
            Err(SdpError::NotUtf8)
        );
        assert_eq!(
            parse(b"v=0\r\nc=IN IP4 999.1.1.1\r\n"),
            Err(SdpError::BadConnection { line: 2 })
        );
        assert_eq!(
            parse(b"v=0\r\nc=IN IP6 10.0.0.1\r\n"),
            Err(SdpError::BadConnection { line: 2 })
        );
        assert_eq!(
            parse(b"v=0\r\nc=IN IP4 host.example.com\r\n"),
            Err(SdpError::BadConnection { line: 2 })
        );
        assert_eq!(
            parse(b"v=0\r\nm=audio 70000 RTP/AVP 0\r\n"),
            Err(SdpError::BadMedia { line: 2 })
        );
        assert_eq!(
            parse(b"v=0\r\no=- 1 x IN IP4 1.2.3.4\r\n"),
            Err(SdpError::BadOrigin { line: 2 })
        );
    }

    #[test]
    fn ignores_odd_attributes() {
        let sd = parse(
            b"v=0\nm=audio 4000/2 RTP/AVP 0\na=rtpmap:x PCMU/8000\na=rtpmap:0 PCMU\n\
              a=ptime:abc\na=fmtp:101\na=weird\n",
        )
        .unwrap();
        let m = &sd.media[0];
        assert_eq!(m.port, 4000);
        assert!(m.rtpmaps.is_empty());
        assert!(m.fmtps.is_empty());
        assert_eq!(m.ptime, None);
        assert_eq!(m.direction, None);
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&data);
        }

        #[test]
        fn parse_never_panics_on_sdp_like_lines(
            lines in proptest::collection::vec(
                ("[vosctma]", "[ -~]{0,40}"), 0..20),
        ) {
            let mut body = String::from("v=0\r\n");
            for (k, v) in &lines {
                body.push_str(k);
                body.push('=');
                body.push_str(v);
                body.push_str("\r\n");
            }
            let _ = parse(body.as_bytes());
        }
    }
}
