//! The wire parser (RFC 3261 §7, §25) and the best-effort error response for input
//! it refuses.
//!
//! The parse runs in three passes over the datagram, none of which can panic on any
//! input (every index comes from a search in the same slice):
//!
//! 1. **Find the head.** Leading CRLFs are skipped (§7.5). The head ends at the first
//!    empty line; bare LF line ends are tolerated. No empty line → 400 (RFC 4475
//!    baddn ends that way).
//! 2. **Lines.** The start line is split on single SPs, strictly: an extra or trailing
//!    SP is a 400 (RFC 4475 lwsstart/trws allow that choice). Header lines are
//!    unfolded, their names canonicalised, and list headers split on commas.
//! 3. **Checks.** Headers that the transaction layer relies on are parsed once here
//!    so that a bad one is a 400 now rather than a surprise later; single-value
//!    headers that appear twice with different values are a 400 (RFC 4475 multi01);
//!    `Content-Length` frames the body.

use std::borrow::Cow;

use bytes::Bytes;

use super::addr::{NameAddr, SipUri, Via, split_list, uri_scheme};
use super::{
    Header, Headers, Method, ParseError, Request, Response, SipMessage, canonical_name, is_lws,
    is_token, parse_u32,
};

/// Parse one whole UDP datagram, or one message cut out of a TCP stream by
/// [`crate::framing::StreamFramer`].
pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
    let start = skip_leading_crlf(bytes);
    let bytes = &bytes[start..];
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let (head_len, body_start) = head_end(bytes).ok_or(ParseError::NoHeaderEnd)?;
    let head = &bytes[..head_len];
    let mut lines = head_lines(head);
    let start_line = lines.next().ok_or(ParseError::Empty)?;
    // Room for a typical request's headers without regrowing.
    let mut headers = Headers(Vec::with_capacity(16));
    for line in lines {
        let (name, value) = split_header_line(&line).ok_or(ParseError::HeaderLine)?;
        let name = canonical_name(name);
        if is_list_header(&name) && !(name == "Contact" && value == "*") {
            let items = split_list(value).ok_or(ParseError::Header {
                name: static_name(&name),
                why: "empty list element, or unbalanced quotes or <>",
            })?;
            for item in items {
                headers.0.push(Header::new(name.clone(), item));
            }
        } else {
            headers.0.push(Header::new(name, value));
        }
    }
    let body = frame_body(&headers, &bytes[body_start..])?;

    let msg = if start_line.starts_with("SIP/") {
        let (code, reason) = parse_status_line(&start_line)?;
        SipMessage::Response(Response {
            code,
            reason,
            headers,
            body,
        })
    } else {
        let (method, uri) = parse_request_line(&start_line)?;
        SipMessage::Request(Request {
            method,
            uri,
            headers,
            body,
        })
    };
    check_headers(msg.headers())?;
    Ok(msg)
}

fn skip_leading_crlf(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(bytes.len())
}

/// `(length of the head without its final line end, offset of the body)`: the head
/// ends at the first empty line (CRLF CRLF, or LF LF).
pub(crate) fn head_end(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = bytes.get(i..)?.iter().position(|&b| b == b'\n') {
        let nl = i + off;
        let line_end = if nl > 0 && bytes.get(nl - 1) == Some(&b'\r') {
            nl - 1
        } else {
            nl
        };
        match bytes.get(nl + 1..) {
            Some([b'\n', ..]) => return Some((line_end, nl + 2)),
            Some([b'\r', b'\n', ..]) => return Some((line_end, nl + 3)),
            _ => {}
        }
        i = nl + 1;
    }
    None
}

/// Logical lines of a head: the start line, then one entry per header with
/// continuation lines joined by a single SP (§7.3.1). Bytes that are not UTF-8 are
/// replaced (U+FFFD) rather than refused.
pub(crate) fn head_lines(head: &[u8]) -> impl Iterator<Item = Cow<'_, str>> + '_ {
    let mut raw = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .peekable();
    let folded = |next: &&[u8]| matches!(next.first(), Some(b' ' | b'\t'));
    std::iter::from_fn(move || {
        let first = raw.next()?;
        let line = String::from_utf8_lossy(first);
        // The usual line: UTF-8 and not folded, borrowed as it is.
        if !raw.peek().is_some_and(folded) {
            return Some(line);
        }
        let mut line = line.into_owned();
        while let Some(next) = raw.peek() {
            if !folded(next) {
                break;
            }
            let cont = String::from_utf8_lossy(next);
            let cont = cont.trim_start_matches([' ', '\t']);
            let kept = line.trim_end_matches([' ', '\t']).len();
            line.truncate(kept);
            line.push(' ');
            line.push_str(cont);
            raw.next();
        }
        Some(Cow::Owned(line))
    })
}

/// `name HCOLON value`: the name is a token, whitespace may precede the colon, and
/// the value is trimmed of surrounding LWS.
pub(crate) fn split_header_line(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once(':')?;
    let name = name.trim_end_matches([' ', '\t']);
    is_token(name).then_some((name, value.trim_matches(is_lws)))
}

fn is_list_header(name: &str) -> bool {
    matches!(name, "Via" | "Contact" | "Route" | "Record-Route")
}

fn static_name(name: &str) -> &'static str {
    match name {
        "Via" => "Via",
        "Contact" => "Contact",
        "Route" => "Route",
        "Record-Route" => "Record-Route",
        "From" => "From",
        "To" => "To",
        "Call-ID" => "Call-ID",
        "CSeq" => "CSeq",
        "Max-Forwards" => "Max-Forwards",
        _ => "a",
    }
}

/// All `Content-Length` values agree and are plain decimal numbers. `Ok(None)` when
/// there is none.
pub(crate) fn content_length<'a>(
    values: impl Iterator<Item = &'a str>,
) -> Result<Option<usize>, ParseError> {
    let mut found: Option<usize> = None;
    for v in values {
        let v = v.trim_matches(is_lws);
        if v.starts_with('-') {
            return Err(ParseError::ContentLength("negative"));
        }
        // u32 bounds it: no datagram or frame is 4 GiB.
        let n = parse_u32(v).ok_or(ParseError::ContentLength("not a number"))?;
        let n = usize::try_from(n).map_err(|_| ParseError::ContentLength("too large"))?;
        match found {
            Some(prev) if prev != n => {
                return Err(ParseError::ContentLength(
                    "given twice with different values",
                ));
            }
            _ => found = Some(n),
        }
    }
    Ok(found)
}

fn frame_body(headers: &Headers, rest: &[u8]) -> Result<Bytes, ParseError> {
    match content_length(headers.get_all("Content-Length"))? {
        // Extra bytes after the body in a datagram are ignored (RFC 4475 dblreq).
        Some(n) => match rest.get(..n) {
            Some(body) => Ok(Bytes::copy_from_slice(body)),
            None => Err(ParseError::BodyTooShort {
                declared: n,
                available: rest.len(),
            }),
        },
        None => Ok(Bytes::copy_from_slice(rest)),
    }
}

/// `SIP-Version SP Status-Code SP Reason-Phrase`; the reason may be empty and the
/// SP before it missing.
fn parse_status_line(line: &str) -> Result<(u16, String), ParseError> {
    const E: fn(&'static str) -> ParseError = ParseError::StartLine;
    let (version, rest) = line.split_once(' ').ok_or(E("no status code"))?;
    check_version(version)?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(E("status code is not three digits"));
    }
    let code: u16 = code.parse().map_err(|_| E("status code"))?;
    if !(100..=699).contains(&code) {
        return Err(E("status code out of range"));
    }
    Ok((code, reason.to_owned()))
}

/// `Method SP Request-URI SP SIP-Version`, one SP each.
fn parse_request_line(line: &str) -> Result<(Method, String), ParseError> {
    const E: fn(&'static str) -> ParseError = ParseError::StartLine;
    let mut parts = line.splitn(3, ' ');
    let method = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();
    let version = parts.next().ok_or(E("not a request line"))?;
    if !is_token(method) {
        return Err(E("method is not a token"));
    }
    if version.contains(is_lws) {
        return Err(E("extra whitespace in the request line"));
    }
    check_version(version)?;
    if uri.is_empty() || uri.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(E("extra whitespace in the request line"));
    }
    let scheme = uri_scheme(uri).ok_or(ParseError::Uri("Request-URI is not an absolute URI"))?;
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        // §19.1.1: headers are not allowed in a Request-URI (RFC 4475 escruri).
        if SipUri::check(uri)? {
            return Err(ParseError::Uri("headers in the Request-URI"));
        }
    }
    Ok((Method::from_token(method), uri.to_owned()))
}

/// `SIP/2.0` (case-insensitive, as ABNF literals are). Another well-formed version
/// is a 505; anything else is a 400.
fn check_version(v: &str) -> Result<(), ParseError> {
    let Some(num) = v
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("SIP/"))
        .map(|_| &v[4..])
    else {
        return Err(ParseError::StartLine("bad SIP version"));
    };
    if num == "2.0" {
        return Ok(());
    }
    match num.split_once('.') {
        Some((a, b))
            if !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit()) =>
        {
            Err(ParseError::Version)
        }
        _ => Err(ParseError::StartLine("bad SIP version")),
    }
}

/// Mandatory and single-valued headers, and the syntax of those the stack reads.
fn check_headers(h: &Headers) -> Result<(), ParseError> {
    // The parser spelled every name this looks at canonically: an exact compare finds
    // them, and the syntax checks build nothing (the UA parses what it reads later).
    let values = |name: &'static str| {
        h.0.iter()
            .filter(move |x| x.name == name)
            .map(|x| x.value.as_str())
    };
    for name in ["Call-ID", "From", "To", "CSeq", "Max-Forwards"] {
        let mut all = values(name);
        if let Some(first) = all.next()
            && all.any(|v| v != first)
        {
            return Err(ParseError::Conflicting(static_name(name)));
        }
    }
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if values(name).next().is_none() {
            return Err(ParseError::MissingHeader(static_name(name)));
        }
    }
    if values("Call-ID").next().is_some_and(str::is_empty) {
        return Err(ParseError::Header {
            name: "Call-ID",
            why: "empty",
        });
    }
    if values("CSeq").next().and_then(super::parse_cseq).is_none() {
        return Err(ParseError::Header {
            name: "CSeq",
            why: "not a 32-bit number and a method",
        });
    }
    if let Some(mf) = values("Max-Forwards").next()
        && parse_u32(mf).is_none()
    {
        return Err(ParseError::Header {
            name: "Max-Forwards",
            why: "not a number",
        });
    }
    for v in values("Via") {
        Via::check(v)?;
    }
    for name in ["From", "To", "Route", "Record-Route"] {
        for v in values(name) {
            NameAddr::check(v).map_err(|_| ParseError::Header {
                name: static_name(name),
                why: "not a name-addr",
            })?;
        }
    }
    for v in values("Contact") {
        if v != "*" {
            NameAddr::check(v).map_err(|_| ParseError::Header {
                name: "Contact",
                why: "not a name-addr",
            })?;
        }
    }
    Ok(())
}

/// Best effort: a response to an unparseable request (400/505 with the reason),
/// built from whatever Via/From/To/Call-ID/CSeq lines can be found raw; `None` when
/// the input is a response or no Via can be found (then the datagram is dropped).
pub fn error_response(bytes: &[u8], err: &ParseError) -> Option<Response> {
    let bytes = &bytes[skip_leading_crlf(bytes)..];
    if bytes.len() >= 4 && bytes[..4].eq_ignore_ascii_case(b"SIP/") {
        return None;
    }
    let head = match head_end(bytes) {
        Some((len, _)) => &bytes[..len],
        None => bytes,
    };
    let mut resp = Response::new(err.status(), err.reason());
    let mut seen = [false; 4];
    for line in head_lines(head).skip(1) {
        let Some((name, value)) = split_header_line(&line) else {
            continue;
        };
        if value.is_empty() {
            continue;
        }
        let name = canonical_name(name);
        // All Vias in order; the first of each of the others.
        let slot = match &*name {
            "Via" => None,
            "From" => Some(0),
            "To" => Some(1),
            "Call-ID" => Some(2),
            "CSeq" => Some(3),
            _ => continue,
        };
        if let Some(i) = slot {
            if seen[i] {
                continue;
            }
            seen[i] = true;
        }
        resp.headers.push(name, value);
    }
    resp.headers.get("Via").is_some().then_some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Request {
        match parse(s.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => panic!("not a request"),
        }
    }

    const BASE: &str = "INVITE sip:bob@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
        From: <sip:alice@example.com>;tag=1\r\n\
        To: <sip:bob@example.com>\r\n\
        Call-ID: abc\r\n\
        CSeq: 1 INVITE\r\n";

    #[test]
    fn minimal_request_and_body_framing() {
        let r = req(&format!("{BASE}Content-Length: 4\r\n\r\nbodyEXTRA"));
        assert_eq!(r.method, Method::Invite);
        assert_eq!(&r.body[..], b"body");
        assert_eq!(r.headers.cseq(), Some((1, Method::Invite)));
        let r = req(&format!("{BASE}\r\nall of it"));
        assert_eq!(&r.body[..], b"all of it");
    }

    #[test]
    fn folding_compact_and_lists() {
        let r = req(&format!(
            "{BASE}v: SIP/2.0/TCP a.example.com;branch=z9hG4bK2,\r\n SIP/2.0/UDP b;branch=z9hG4bK3\r\nm: \"x, y\" <sip:c@d>\r\nl: 0\r\n\r\n"
        ));
        let vias: Vec<_> = r.headers.get_all("via").collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[2], "SIP/2.0/UDP b;branch=z9hG4bK3");
        assert_eq!(
            r.headers.contact().unwrap().display.as_deref(),
            Some("x, y")
        );
    }

    #[test]
    fn content_length_errors() {
        for (cl, body) in [("-1", ""), ("five", "five!"), ("10", "short")] {
            let e = parse(format!("{BASE}Content-Length: {cl}\r\n\r\n{body}").as_bytes());
            assert!(e.is_err(), "{cl}");
        }
        let e = parse(format!("{BASE}l: 1\r\nContent-Length: 2\r\n\r\nab").as_bytes());
        assert_eq!(
            e,
            Err(ParseError::ContentLength(
                "given twice with different values"
            ))
        );
        // The same value twice is only redundant.
        assert!(parse(format!("{BASE}l: 2\r\nContent-Length: 2\r\n\r\nab").as_bytes()).is_ok());
    }

    #[test]
    fn status_lines() {
        let ok = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n";
        for (line, good) in [
            ("SIP/2.0 200 OK", true),
            ("SIP/2.0 100 ", true),
            ("SIP/2.0 180", true),
            ("SIP/2.0 99 Low", false),
            ("SIP/2.0 700 High", false),
            ("SIP/2.0 4294967301 big", false),
            ("SIP/3.0 200 OK", false),
        ] {
            let r = parse(format!("{line}\r\n{ok}").as_bytes());
            assert_eq!(r.is_ok(), good, "{line}");
        }
    }

    #[test]
    fn version_505_and_error_response() {
        let bad = BASE.replace("SIP/2.0\r\n", "SIP/7.0\r\n") + "\r\n";
        let err = parse(bad.as_bytes()).unwrap_err();
        assert_eq!(err.status(), 505);
        let resp = error_response(bad.as_bytes(), &err).unwrap();
        assert_eq!(resp.code, 505);
        assert_eq!(resp.headers.call_id(), Some("abc"));
        assert_eq!(resp.headers.get("CSeq"), Some("1 INVITE"));
        assert!(error_response(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", &err).is_none());
        assert!(error_response(b"INVITE x SIP/2.0\r\nTo: y\r\n\r\n", &err).is_none());
    }

    #[test]
    fn keepalive_crlf_before_start_line() {
        assert!(parse(format!("\r\n\r\n{BASE}\r\n").as_bytes()).is_ok());
        assert_eq!(parse(b"\r\n\r\n"), Err(ParseError::Empty));
    }

    #[test]
    fn serialise_round_trip() {
        let r = req(&format!("{BASE}Content-Length: 4\r\n\r\nbody"));
        let bytes = r.to_bytes();
        let again = req(std::str::from_utf8(&bytes).unwrap());
        assert_eq!(again, r);
    }
}
