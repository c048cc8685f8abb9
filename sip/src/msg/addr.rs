//! Typed views of address-like header values: `Via` (RFC 3261 §20.42), name-addr /
//! addr-spec (`From`, `To`, `Contact`, `Route`, §20.10) and SIP URIs (§19.1).
//!
//! All three parse from the unfolded header string the message keeps. LWS is allowed
//! wherever the grammar has `SWS`/`LWS` (around `/` in the Via sent-protocol, around
//! `;` and `=` of parameters — RFC 4475 §3.1.1.1 puts it in all those places), never
//! inside a URI. Parameter values are stored raw: a quoted value keeps its quotes, a
//! `%`-escape stays escaped, so writing a value back out reproduces it.
//!
//! Hosts are stored without IPv6 brackets (`2001:db8::1`, so `str::parse::<IpAddr>`
//! works on them); `Display` adds the brackets back whenever the host has a `:`.

use std::fmt;

use super::{ParseError, is_lws, is_token};

/// A `;`-separated parameter list: `name` or `name=value`.
pub type Params = Vec<(String, Option<String>)>;

/// One `Via` value: `SIP/2.0/UDP host:port;branch=z9hG4bK…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// Upper case: "UDP", "TCP", "TLS", "SCTP", or any other token (RFC 4475
    /// §3.1.1.10: unknown transports are not an error).
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    pub fn parse(s: &str) -> Result<Via, ParseError> {
        let mut params = Vec::new();
        let parts = via_parts(s, |n, v| params.push((n.to_owned(), v.map(str::to_owned))))?;
        Ok(Via {
            transport: parts.transport.to_ascii_uppercase(),
            host: parts.host.to_owned(),
            port: parts.port,
            params,
        })
    }

    /// What [`parse`](Self::parse) checks, without building the value.
    pub fn check(s: &str) -> Result<(), ParseError> {
        via_parts(s, |_, _| {}).map(|_| ())
    }

    /// The `branch` parameter of a well-formed Via value, read in place.
    pub fn branch_of(s: &str) -> Option<&str> {
        Via::peek(s)?.branch
    }

    /// Sent-by, `branch` and whether `rport` is present, read in place from a
    /// well-formed Via value (`None` if it is not one).
    pub fn peek(s: &str) -> Option<ViaPeek<'_>> {
        let (mut branch, mut rport) = (None, false);
        let parts = via_parts(s, |n, v| {
            if branch.is_none() && n.eq_ignore_ascii_case("branch") {
                branch = Some(v);
            }
            rport |= n.eq_ignore_ascii_case("rport");
        })
        .ok()?;
        Some(ViaPeek {
            host: parts.host,
            port: parts.port,
            branch: branch.flatten(),
            rport,
        })
    }

    /// The `branch` parameter's value.
    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// `None`: no such parameter; `Some(None)`: present without a value.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

/// What the transaction layer reads of a Via, borrowed from the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViaPeek<'a> {
    /// Without IPv6 brackets, as [`Via::host`].
    pub host: &'a str,
    pub port: Option<u16>,
    pub branch: Option<&'a str>,
    pub rport: bool,
}

/// The pieces of a Via value, borrowed from it.
struct ViaParts<'a> {
    transport: &'a str,
    host: &'a str,
    port: Option<u16>,
}

/// Checks a Via value and splits it, handing each parameter to `on_param`.
fn via_parts<'a>(
    s: &'a str,
    on_param: impl FnMut(&'a str, Option<&'a str>),
) -> Result<ViaParts<'a>, ParseError> {
    const E: fn(&'static str) -> ParseError = |why| ParseError::Header { name: "Via", why };
    let s = s.trim_matches(is_lws);
    // sent-protocol = protocol-name SLASH protocol-version SLASH transport,
    // SLASH = SWS "/" SWS.
    let (name, rest) = s.split_once('/').ok_or(E("no sent-protocol"))?;
    let (version, rest) = rest.split_once('/').ok_or(E("no sent-protocol"))?;
    if !name.trim_matches(is_lws).eq_ignore_ascii_case("SIP")
        || version.trim_matches(is_lws) != "2.0"
    {
        return Err(E("sent-protocol is not SIP/2.0"));
    }
    let rest = rest.trim_start_matches(is_lws);
    let tend = rest.find(is_lws).ok_or(E("no sent-by"))?;
    let (transport, rest) = rest.split_at(tend);
    if !is_token(transport) {
        return Err(E("bad transport"));
    }
    let rest = rest.trim_start_matches(is_lws);
    let (sent_by, params) = match rest.find(';') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (host, port) = hostport(sent_by.trim_matches(is_lws)).ok_or(E("bad sent-by"))?;
    if let Some(p) = params {
        scan_params(p, on_param).ok_or(E("bad parameter"))?;
    }
    Ok(ViaParts {
        transport,
        host,
        port,
    })
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} ", self.transport)?;
        write_host(f, &self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write_params(f, &self.params)
    }
}

/// `"Display Name" <uri>;params` or `uri;params` (`From`, `To`, `Contact`, `Route`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    /// Unquoted and unescaped.
    pub display: Option<String>,
    /// The URI exactly as written, without the angle brackets.
    pub uri: String,
    /// Header parameters (after `>`, or after the addr-spec).
    pub params: Params,
}

impl NameAddr {
    pub fn new(uri: impl Into<String>) -> Self {
        NameAddr {
            display: None,
            uri: uri.into(),
            params: Vec::new(),
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    pub fn parse(s: &str) -> Result<NameAddr, ParseError> {
        let mut params = Vec::new();
        let (display, uri) =
            name_addr_parts(s, |n, v| params.push((n.to_owned(), v.map(str::to_owned))))?;
        Ok(NameAddr {
            display: display.map(|d| match d {
                Display::Quoted(q) => unquote(q),
                Display::Words(w) => w.to_owned(),
            }),
            uri: uri.to_owned(),
            params,
        })
    }

    /// What [`parse`](Self::parse) checks, without building the value.
    pub fn check(s: &str) -> Result<(), ParseError> {
        name_addr_parts(s, |_, _| {}).map(|_| ())
    }
}

/// A display name as written: a quoted string (with its quotes) or a run of tokens.
enum Display<'a> {
    Quoted(&'a str),
    Words(&'a str),
}

/// Checks a name-addr or addr-spec and splits it into display name and URI, handing
/// each header parameter to `on_param`.
fn name_addr_parts<'a>(
    s: &'a str,
    on_param: impl FnMut(&'a str, Option<&'a str>),
) -> Result<(Option<Display<'a>>, &'a str), ParseError> {
    const E: fn(&'static str) -> ParseError = ParseError::Uri;
    let s = s.trim_matches(is_lws);
    let (display, rest) = if s.starts_with('"') {
        let end = quoted_end(s).ok_or(E("unterminated quoted string"))?;
        let rest = s[end..].trim_start_matches(is_lws);
        if !rest.starts_with('<') {
            return Err(E("quoted display name without <uri>"));
        }
        (Some(Display::Quoted(&s[..end])), rest)
    } else if let Some(lt) = s.find('<') {
        // display-name = *(token LWS): RFC 4475 §3.1.2.15 (baddn) has a comma here.
        let words = s[..lt].trim_matches(is_lws);
        if !words.split(is_lws).filter(|w| !w.is_empty()).all(is_token) {
            return Err(E("display name is neither a token list nor quoted"));
        }
        let display = (!words.is_empty()).then_some(Display::Words(words));
        (display, &s[lt..])
    } else {
        // addr-spec form: parameters after the URI belong to the header, and a URI
        // holding `?` or `,` must be enclosed in <> (RFC 3261 §20.10).
        let (uri, params) = match s.find(';') {
            Some(i) => (&s[..i], Some(&s[i + 1..])),
            None => (s, None),
        };
        let uri = uri.trim_matches(is_lws);
        if uri.contains(['?', ',']) {
            return Err(E("URI with '?' or ',' must be enclosed in <>"));
        }
        check_uri(uri)?;
        if let Some(p) = params {
            scan_params(p, on_param).ok_or(E("bad parameter"))?;
        }
        return Ok((None, uri));
    };
    // rest starts with '<'
    let gt = rest.find('>').ok_or(E("no closing >"))?;
    let uri = &rest[1..gt];
    check_uri(uri)?;
    let after = rest[gt + 1..].trim_matches(is_lws);
    if !after.is_empty() {
        let p = after.strip_prefix(';').ok_or(E("junk after >"))?;
        scan_params(p, on_param).ok_or(E("bad parameter"))?;
    }
    Ok((display, uri))
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            f.write_str("\"")?;
            for c in d.chars() {
                match c {
                    // CR and LF cannot even be quoted-pairs (RFC 3261 §25.1).
                    '\r' | '\n' => f.write_str(" ")?,
                    '"' | '\\' => write!(f, "\\{c}")?,
                    c if c.is_ascii_control() && c != '\t' => write!(f, "\\{c}")?,
                    c => write!(f, "{c}")?,
                }
            }
            f.write_str("\" ")?;
        }
        write!(f, "<{}>", self.uri)?;
        write_params(f, &self.params)
    }
}

/// An absolute URI as used in headers: `scheme:rest` with no whitespace.
fn check_uri(uri: &str) -> Result<(), ParseError> {
    if uri.is_empty() || uri.contains(|c: char| c.is_whitespace() || c == '<' || c == '>') {
        return Err(ParseError::Uri("whitespace or <> inside a URI"));
    }
    uri_scheme(uri).ok_or(ParseError::Uri("no scheme"))?;
    Ok(())
}

/// `scheme` of `scheme:rest` (RFC 3986 §3.1), when well-formed and `rest` is not
/// empty.
pub(crate) fn uri_scheme(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once(':')?;
    let mut bytes = scheme.bytes();
    let first_alpha = bytes.next().is_some_and(|b| b.is_ascii_alphabetic());
    let ok = first_alpha
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && !rest.is_empty();
    ok.then_some(scheme)
}

/// A `sip:`, `sips:` or `tel:` URI, split into its parts (values still %-escaped).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri {
    /// Lower case.
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// For `tel:` the telephone-subscriber number.
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
    pub headers: Vec<(String, String)>,
}

impl SipUri {
    pub fn parse(s: &str) -> Result<SipUri, ParseError> {
        let p = sip_uri_parts(s)?;
        let params = match p.params {
            None => Vec::new(),
            Some(ps) => ps
                .split(';')
                .map(|kv| match kv.split_once('=') {
                    Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                    None => (kv.to_owned(), None),
                })
                .collect(),
        };
        let headers = match p.headers {
            None => Vec::new(),
            Some(hs) => hs
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
        };
        Ok(SipUri {
            scheme: p.scheme.to_ascii_lowercase(),
            user: p.user.map(str::to_owned),
            password: p.password.map(str::to_owned),
            host: p.host.to_owned(),
            port: p.port,
            params,
            headers,
        })
    }

    /// What [`parse`](Self::parse) checks, without building the value; whether the URI
    /// carries headers (`?name=value`).
    pub fn check(s: &str) -> Result<bool, ParseError> {
        sip_uri_parts(s).map(|p| p.headers.is_some())
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

/// The pieces of a `sip:`, `sips:` or `tel:` URI, borrowed from it; parameters and
/// headers are still joined, already checked.
struct SipUriParts<'a> {
    scheme: &'a str,
    user: Option<&'a str>,
    password: Option<&'a str>,
    host: &'a str,
    port: Option<u16>,
    params: Option<&'a str>,
    headers: Option<&'a str>,
}

fn sip_uri_parts(s: &str) -> Result<SipUriParts<'_>, ParseError> {
    const E: fn(&'static str) -> ParseError = ParseError::Uri;
    if s.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(E("whitespace in URI"));
    }
    let scheme = uri_scheme(s).ok_or(E("no scheme"))?;
    let rest = &s[scheme.len() + 1..];
    if scheme.eq_ignore_ascii_case("tel") {
        let (number, params) = match rest.find(';') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if number.is_empty() {
            return Err(E("empty telephone number"));
        }
        check_uri_params(params)?;
        return Ok(SipUriParts {
            scheme,
            user: None,
            password: None,
            host: number,
            port: None,
            params,
            headers: None,
        });
    }
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return Err(E("unsupported URI scheme"));
    }
    // userinfo may hold `;`, `?`, `,` and `:` (RFC 4475 §3.1.1.2, §3.1.1.9), but
    // never an unescaped `@`, and nothing after the host may hold one either.
    let (user, password, hostpart) = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, hostpart) = (&rest[..at], &rest[at + 1..]);
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err(E("empty user"));
            }
            (Some(user), password, hostpart)
        }
        None => (None, None, rest),
    };
    let (before_headers, headers) = match hostpart.split_once('?') {
        Some((b, h)) => (b, Some(h)),
        None => (hostpart, None),
    };
    let (hostport_str, params) = match before_headers.split_once(';') {
        Some((h, p)) => (h, Some(p)),
        None => (before_headers, None),
    };
    let (host, port) = hostport(hostport_str).ok_or(E("bad host or port"))?;
    check_uri_params(params)?;
    if let Some(h) = headers {
        for pair in h.split('&') {
            let (n, _) = pair.split_once('=').ok_or(E("URI header without ="))?;
            if n.is_empty() {
                return Err(E("empty URI header name"));
            }
        }
    }
    Ok(SipUriParts {
        scheme,
        user,
        password,
        host,
        port,
        params,
        headers,
    })
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if self.scheme == "tel" {
            f.write_str(&self.host)?;
            return write_params(f, &self.params);
        }
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        write_host(f, &self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write_params(f, &self.params)?;
        for (i, (n, v)) in self.headers.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{n}={v}")?;
        }
        Ok(())
    }
}

/// URI parameters: `;`-separated, each `name` or `name=value`, no name empty.
fn check_uri_params(p: Option<&str>) -> Result<(), ParseError> {
    let Some(p) = p else {
        return Ok(());
    };
    for kv in p.split(';') {
        let n = kv.split_once('=').map_or(kv, |(n, _)| n);
        if n.is_empty() {
            return Err(ParseError::Uri("empty URI parameter"));
        }
    }
    Ok(())
}

/// `host[:port]` where host is a hostname, an IPv4 address or an `[IPv6]` reference.
/// The IPv6 reference is checked for its character set only: RFC 5118 §4.10 asks us
/// to tolerate `[2001:db8:::192.0.2.1]`.
fn hostport(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (inner, after) = v6.split_once(']')?;
        let ok = !inner.is_empty()
            && inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !ok || !inner.contains(':') {
            return None;
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (inner, port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        let ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !ok {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().ok()?)
        }
        Some(_) => return None,
    };
    Some((host, port))
}

/// Header parameters after the first `;`: `name [= value]` separated by `;`, with
/// LWS allowed around both. A value is a token-ish run, an `[IPv6]` reference, or a
/// quoted string (kept with its quotes). `None` on any empty or malformed element
/// (RFC 4475 §3.1.2.1's `;;,;,,`). Each `(name, value)` goes to `f`, in order.
fn scan_params<'a>(s: &'a str, mut f: impl FnMut(&'a str, Option<&'a str>)) -> Option<()> {
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(is_lws);
        let name_end = rest
            .find(|c: char| c == '=' || c == ';' || is_lws(c))
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if !is_token(name) {
            return None;
        }
        rest = rest[name_end..].trim_start_matches(is_lws);
        let value = if let Some(v) = rest.strip_prefix('=') {
            let v = v.trim_start_matches(is_lws);
            let end = if v.starts_with('"') {
                quoted_end(v)?
            } else {
                v.find(|c: char| c == ';' || c == ',' || c == '"' || is_lws(c))
                    .unwrap_or(v.len())
            };
            if end == 0 {
                return None;
            }
            rest = v[end..].trim_start_matches(is_lws);
            Some(&v[..end])
        } else {
            None
        };
        f(name, value);
        if rest.is_empty() {
            return Some(());
        }
        rest = rest.strip_prefix(';')?;
    }
}

fn find_param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

fn write_params(f: &mut fmt::Formatter<'_>, params: &Params) -> fmt::Result {
    for (n, v) in params {
        match v {
            Some(v) => write!(f, ";{n}={v}")?,
            None => write!(f, ";{n}")?,
        }
    }
    Ok(())
}

fn write_host(f: &mut fmt::Formatter<'_>, host: &str) -> fmt::Result {
    if host.contains(':') {
        write!(f, "[{host}]")
    } else {
        f.write_str(host)
    }
}

/// Given `s` starting with `"`, the index just past the closing quote, honouring
/// `\` quoted-pairs. `None` when the string never closes.
pub(crate) fn quoted_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The content of a quoted string (with its quotes) with quoted-pairs resolved.
pub(crate) fn unquote(q: &str) -> String {
    let inner = q
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(q);
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Split a header value on commas that are outside quoted strings and `<…>`.
/// `None` for an unterminated quote or `<`, or an empty element.
pub(crate) fn split_list(s: &str) -> Option<Vec<&str>> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut in_angle = false;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += quoted_end(&s[i..])?;
                continue;
            }
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => {
                out.push(s[start..i].trim_matches(is_lws));
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if in_angle {
        return None;
    }
    out.push(s[start..].trim_matches(is_lws));
    if out.iter().any(|e| e.is_empty()) {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_everywhere() {
        let v = Via::parse("SIP  /   2.0 /UDP    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.2");
        assert_eq!(v.branch(), Some("390skdjuw"));
        let v =
            Via::parse("SIP  / 2.0  / TCP     spindle.example.com   ; branch  =   z9hG4bK9ikj8")
                .unwrap();
        assert_eq!(v.branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8"
        );
    }

    #[test]
    fn via_ipv6_and_received() {
        let v =
            Via::parse("SIP/2.0/UDP [2001:db8::9:1]:6050;received=2001:db8::9:255;rport").unwrap();
        assert_eq!(v.host, "2001:db8::9:1");
        assert_eq!(v.port, Some(6050));
        assert_eq!(v.param("received"), Some(Some("2001:db8::9:255")));
        assert_eq!(v.param("rport"), Some(None));
        assert_eq!(v.param("maddr"), None);
        assert_eq!(
            v.to_string(),
            "SIP/2.0/UDP [2001:db8::9:1]:6050;received=2001:db8::9:255;rport"
        );
    }

    #[test]
    fn via_rejects_empty_params() {
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP host:99999").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""J Rosenberg \\\""  <sip:jdrosen@example.com> ; tag = 98asjd8"#)
            .unwrap();
        assert_eq!(n.display.as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(n.uri, "sip:jdrosen@example.com");
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display.as_deref(), Some("caller"));
        let n = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
        assert_eq!(n.uri, "sip:+19725552222@gw1.example.net");
        assert_eq!(n.param("unknownparam"), Some(None));
        assert_eq!(
            n.to_string(),
            "<sip:+19725552222@gw1.example.net>;unknownparam"
        );
        let n = NameAddr::parse(r#""A \"b\"" <sip:a@b>"#).unwrap();
        assert_eq!(NameAddr::parse(&n.to_string()).unwrap(), n);
        let mut n = NameAddr::new("sip:a@b");
        n.display = Some("NUL:\0 \\ \"".into());
        assert_eq!(NameAddr::parse(&n.to_string()).unwrap(), n);
        // A display name from an API caller cannot smuggle in a header.
        n.display = Some("x\r\nVia: evil".into());
        assert_eq!(n.to_string(), "\"x  Via: evil\" <sip:a@b>");
    }

    #[test]
    fn name_addr_rejections() {
        assert!(NameAddr::parse(r#""Mr. J. User <sip:j.user@example.com>"#).is_err());
        assert!(NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err());
        assert!(NameAddr::parse(r#""Watson, Thomas" < sip:t.watson@example.org >"#).is_err());
        assert!(NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(NameAddr::parse(r#""Joe" <sip:joe@example.org>;;;;"#).is_err());
    }

    #[test]
    fn sip_uri_parts() {
        let u = SipUri::parse("sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(u.host, "example.com");
        let u = SipUri::parse(
            "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com",
        )
        .unwrap();
        assert_eq!(
            u.user.as_deref(),
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );
        assert_eq!(u.host, "example.com");
        let u = SipUri::parse("SIP:alice@[2001:db8::10]:5070;transport=tcp;lr?Subject=hi").unwrap();
        assert_eq!(u.scheme, "sip");
        assert_eq!(u.host, "2001:db8::10");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param("transport"), Some(Some("tcp")));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(u.headers, vec![("Subject".to_owned(), "hi".to_owned())]);
        assert_eq!(
            u.to_string(),
            "sip:alice@[2001:db8::10]:5070;transport=tcp;lr?Subject=hi"
        );
        let u = SipUri::parse("sip:[2001:db8::10:5070]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::10:5070", None));
        assert!(SipUri::parse("sip:2001:db8::10").is_err());
        assert!(SipUri::parse("http://example.com").is_err());
        let t = SipUri::parse("tel:+14155552671;phone-context=x").unwrap();
        assert_eq!(t.host, "+14155552671");
    }

    #[test]
    fn list_splitting() {
        assert_eq!(
            split_list(r#""a, b" <sip:x@y;p=1,2>, <sip:z>"#).unwrap(),
            vec![r#""a, b" <sip:x@y;p=1,2>"#, "<sip:z>"]
        );
        assert!(split_list("a,,b").is_none());
        assert!(split_list(r#""open, <sip:x>"#).is_none());
    }
}
