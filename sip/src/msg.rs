//! SIP messages (RFC 3261 §7, §20, §25): a raw-but-checked header list plus typed accessors.
//!
//! # How a message is represented
//!
//! A [`Request`] or [`Response`] keeps its headers as an ordered list of
//! `(name, value)` strings ([`Headers`]). Values are stored exactly as received after
//! two normalisations that RFC 3261 declares meaning-preserving:
//!
//! - **Unfolding** (§7.3.1): a header line that continues on the next line (the next
//!   line starts with SP or HTAB) is joined with a single SP.
//! - **Names** are canonicalised: compact forms are expanded (`v` → `Via`, `i` →
//!   `Call-ID`, `m` → `Contact`, …) and well-known names get their usual spelling
//!   (`cseq` → `CSeq`). Unknown names are kept verbatim. Lookups are case-insensitive.
//!
//! Comma-separated lists of `Via`, `Contact`, `Route` and `Record-Route` are split
//! into one [`Header`] per value (commas inside quoted strings and `<…>` do not
//! split). Every other header is kept as one line, so `Allow: INVITE, ACK` stays one
//! value. `%`-escapes are never decoded: a URI is stored byte-for-byte, which is what
//! RFC 4475 §3.1.1.3-5 asks (`RE%47IST%45R` is *not* `REGISTER`).
//!
//! Typed views ([`Via`], [`NameAddr`], [`SipUri`], [`Headers::cseq`], …) parse on
//! demand from those strings. The parser has already checked that the headers a
//! transaction layer depends on (`Via`, `From`, `To`, `Call-ID`, `CSeq`, `Contact`,
//! `Route`, `Record-Route`, `Content-Length`, `Max-Forwards`) are well-formed, so on a
//! message that came out of [`parse`] those accessors return `Some`.
//!
//! # What the parser refuses (and what it leaves to [`validate_request`])
//!
//! [`parse`] answers "is this a well-formed SIP message?" (RFC 4475 §3.1). Its
//! [`ParseError`] carries the status a UAS should answer with ([`ParseError::status`]:
//! 400, or 505 for an unknown SIP version) and [`error_response`] builds that answer
//! from whatever header lines can still be found. Questions of *meaning* — unknown
//! method, CSeq method mismatch, unsupported URI scheme, unknown `Require`, body type
//! — belong to [`validate_request`] (RFC 3261 §8.2), which returns a [`Rejection`].
//!
//! Deliberate strictness choices (each allowed by RFC 4475): extra or trailing SP in
//! the request line (lwsstart, trws), headers in a SIP Request-URI (escruri), spaces
//! inside `<…>` (badaspec), and a name-addr URI with `?` not enclosed in `<>`
//! (regbadct) are all 400s.
//!
//! # Bodies and Content-Length
//!
//! The body is framed by `Content-Length`; bytes after it in a UDP datagram are
//! ignored (RFC 4475 §3.1.1.8). Without `Content-Length` the body is the rest of the
//! datagram (§18.3; TCP framing is [`crate::framing`]'s job and insists on the
//! header). A `Content-Length` larger than the data, negative, non-numeric or given
//! twice with different values is a 400. `to_bytes` always writes the correct
//! `Content-Length` for the body it carries, replacing any stale one in place.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

mod addr;
pub(crate) mod parser;
mod validate;

pub use addr::{NameAddr, Params, SipUri, Via, ViaPeek};
pub(crate) use addr::{quoted_end as quoted_string_end, unquote};
pub use parser::{error_response, parse};
pub use validate::{Rejection, validate_request};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Refer,
    Notify,
    Subscribe,
    Message,
    Publish,
    /// Any other token (RFC 3261 extension-method), kept verbatim.
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }

    /// Methods are case-sensitive (RFC 3261 §7.1): `invite` is an extension method,
    /// not `INVITE`.
    pub fn from_token(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Borrowed for the well-known names (the common case costs no allocation).
    pub name: Cow<'static, str>,
    pub value: String,
}

impl Header {
    pub fn new(name: impl Into<Cow<'static, str>>, value: impl Into<String>) -> Self {
        Header {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Compact forms (RFC 3261 §7.3.3 and the IANA registry) and the usual spelling of
/// well-known long names, keyed by lower case.
const NAMES: &[(&str, &str)] = &[
    ("v", "Via"),
    ("i", "Call-ID"),
    ("f", "From"),
    ("t", "To"),
    ("m", "Contact"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("k", "Supported"),
    ("s", "Subject"),
    ("e", "Content-Encoding"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("x", "Session-Expires"),
    ("a", "Accept-Contact"),
    ("j", "Reject-Contact"),
    ("d", "Request-Disposition"),
    ("y", "Identity"),
    ("n", "Identity-Info"),
    ("via", "Via"),
    ("call-id", "Call-ID"),
    ("from", "From"),
    ("to", "To"),
    ("contact", "Contact"),
    ("content-length", "Content-Length"),
    ("content-type", "Content-Type"),
    ("supported", "Supported"),
    ("subject", "Subject"),
    ("content-encoding", "Content-Encoding"),
    ("cseq", "CSeq"),
    ("max-forwards", "Max-Forwards"),
    ("route", "Route"),
    ("record-route", "Record-Route"),
    ("www-authenticate", "WWW-Authenticate"),
    ("authorization", "Authorization"),
    ("proxy-authenticate", "Proxy-Authenticate"),
    ("proxy-authorization", "Proxy-Authorization"),
    ("allow", "Allow"),
    ("require", "Require"),
    ("proxy-require", "Proxy-Require"),
    ("unsupported", "Unsupported"),
    ("accept", "Accept"),
    ("accept-encoding", "Accept-Encoding"),
    ("accept-language", "Accept-Language"),
    ("expires", "Expires"),
    ("user-agent", "User-Agent"),
    ("server", "Server"),
    ("warning", "Warning"),
    ("retry-after", "Retry-After"),
    ("date", "Date"),
    ("timestamp", "Timestamp"),
    ("event", "Event"),
    ("rseq", "RSeq"),
    ("rack", "RAck"),
    ("reason", "Reason"),
    ("session-expires", "Session-Expires"),
    ("min-se", "Min-SE"),
    ("p-asserted-identity", "P-Asserted-Identity"),
    ("content-disposition", "Content-Disposition"),
];

/// The canonical spelling of a header name: compact forms expanded, well-known names
/// in their RFC spelling, anything else unchanged.
pub fn canonical_name(raw: &str) -> Cow<'static, str> {
    // Most peers spell names the usual way: an exact match is a length check and a
    // compare, far cheaper than a case-insensitive one against every entry.
    if let Some((_, v)) = NAMES.iter().find(|(_, v)| *v == raw) {
        return Cow::Borrowed(*v);
    }
    NAMES
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(raw))
        .map_or_else(|| Cow::Owned(raw.to_owned()), |(_, v)| Cow::Borrowed(*v))
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

impl Headers {
    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every value of `name`, in message order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn push(&mut self, name: impl Into<Cow<'static, str>>, value: impl Into<String>) {
        self.0.push(Header::new(name, value));
    }

    /// Replace every header called `name` with one, at the position of the first
    /// (or at the end when there was none).
    pub fn set(&mut self, name: &'static str, value: impl Into<String>) {
        let value = value.into();
        match self
            .0
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(name))
        {
            Some(first) => {
                self.0[first].value = value;
                let mut i = 0;
                self.0.retain(|h| {
                    let keep = i <= first || !h.name.eq_ignore_ascii_case(name);
                    i += 1;
                    keep
                });
            }
            None => self.push(name, value),
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    pub fn iter(&self) -> impl Iterator<Item = &Header> {
        self.0.iter()
    }

    pub fn call_id(&self) -> Option<&str> {
        self.get("Call-ID")
    }

    /// `CSeq` as (sequence number, method). Leading zeros are fine (`0009`); a number
    /// above 2^32-1 is not a CSeq (RFC 4475 §3.1.2.4).
    pub fn cseq(&self) -> Option<(u32, Method)> {
        parse_cseq(self.get("CSeq")?)
    }

    /// The topmost `Via` value, parsed.
    pub fn top_via(&self) -> Option<Via> {
        Via::parse(self.get("Via")?).ok()
    }

    /// The topmost `Via`'s `branch`, read in place (no parsed copy).
    pub fn top_via_branch(&self) -> Option<&str> {
        Via::branch_of(self.get("Via")?)
    }

    /// Every `Via`, top first. Values that do not parse are skipped.
    pub fn vias(&self) -> Vec<Via> {
        self.get_all("Via")
            .filter_map(|v| Via::parse(v).ok())
            .collect()
    }

    pub fn from(&self) -> Option<NameAddr> {
        NameAddr::parse(self.get("From")?).ok()
    }

    pub fn to(&self) -> Option<NameAddr> {
        NameAddr::parse(self.get("To")?).ok()
    }

    pub fn contact(&self) -> Option<NameAddr> {
        NameAddr::parse(self.get("Contact")?).ok()
    }

    pub fn max_forwards(&self) -> Option<u32> {
        parse_u32(self.get("Max-Forwards")?.trim())
    }
}

/// A decimal number of at most 2^32-1, leading zeros allowed, nothing else.
pub(crate) fn parse_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u32, |acc, b| {
        acc.checked_mul(10)?.checked_add(u32::from(b - b'0'))
    })
}

pub(crate) fn parse_cseq(v: &str) -> Option<(u32, Method)> {
    let v = v.trim_matches(is_lws);
    let split = v.find(is_lws)?;
    let (num, method) = v.split_at(split);
    let method = method.trim_matches(is_lws);
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return None;
    }
    Some((parse_u32(num)?, Method::from_token(method)))
}

pub(crate) fn is_lws(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r' || c == '\n'
}

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The Request-URI exactly as received (validated by the parser).
    pub uri: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SipMessage {
    Request(Request),
    Response(Response),
}

impl SipMessage {
    pub fn headers(&self) -> &Headers {
        match self {
            SipMessage::Request(r) => &r.headers,
            SipMessage::Response(r) => &r.headers,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            SipMessage::Request(r) => r.to_bytes(),
            SipMessage::Response(r) => r.to_bytes(),
        }
    }
}

impl Request {
    pub fn new(method: Method, uri: impl Into<String>) -> Self {
        Request {
            method,
            uri: uri.into(),
            headers: Headers::default(),
            body: Bytes::new(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let method = self.method.as_str();
        let mut start = String::with_capacity(method.len() + self.uri.len() + 9);
        start.push_str(method);
        start.push(' ');
        start.push_str(&self.uri);
        start.push_str(" SIP/2.0");
        write_message(&start, &self.headers, &self.body)
    }
}

impl Response {
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Response {
            code,
            reason: reason.into(),
            headers: Headers::default(),
            body: Bytes::new(),
        }
    }

    /// RFC 3261 §8.2.6: copies all Via (in order), From, To, Call-ID, CSeq; adds
    /// nothing else (the caller adds a To tag when the response needs one).
    pub fn for_request(req: &Request, code: u16, reason: &str) -> Self {
        let mut resp = Response::new(code, reason);
        for h in &req.headers.0 {
            let copy = ["Via", "From", "To", "Call-ID", "CSeq"]
                .iter()
                .any(|n| h.name.eq_ignore_ascii_case(n));
            if copy {
                resp.headers.0.push(h.clone());
            }
        }
        resp
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut start = String::with_capacity(self.reason.len() + 14);
        start.push_str("SIP/2.0 ");
        push_decimal(&mut start, u64::from(self.code));
        start.push(' ');
        start.push_str(&self.reason);
        write_message(&start, &self.headers, &self.body)
    }
}

/// Start line, headers (with a correct Content-Length in place of any stale one),
/// blank line, body.
fn write_message(start: &str, headers: &Headers, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(start.len() + 64 * headers.0.len() + body.len() + 32);
    push_line_safe(&mut out, start);
    out.extend_from_slice(b"\r\n");
    let mut wrote_length = false;
    for h in &headers.0 {
        if h.name.eq_ignore_ascii_case("Content-Length") {
            if !wrote_length {
                write_length(&mut out, body.len());
                wrote_length = true;
            }
            continue;
        }
        push_line_safe(&mut out, &h.name);
        out.extend_from_slice(b": ");
        push_line_safe(&mut out, &h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !wrote_length {
        write_length(&mut out, body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Values can come from API callers: a CR or LF in one would end the header early
/// and let the rest pose as headers or body, so both become SP.
fn push_line_safe(out: &mut Vec<u8>, s: &str) {
    let start = out.len();
    // One copy, then a scan for the rare CR/LF, rather than a byte-by-byte map.
    out.extend_from_slice(s.as_bytes());
    if let Some(tail) = out.get_mut(start..) {
        for b in tail.iter_mut().filter(|b| **b == b'\r' || **b == b'\n') {
            *b = b' ';
        }
    }
}

fn write_length(out: &mut Vec<u8>, len: usize) {
    let mut buf = [0u8; 20];
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(decimal(len as u64, &mut buf).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `v` in decimal. Messages are built on every call: `format!` and its
/// `core::fmt` machinery were a few per cent of the SIP thread.
pub(crate) fn push_decimal(out: &mut String, v: u64) {
    let mut buf = [0u8; 20];
    out.push_str(decimal(v, &mut buf));
}

/// `v` in decimal, written into the end of `buf` (20 digits hold any u64).
fn decimal(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// `{a};tag={tag}`: a To or From value with a tag added.
pub(crate) fn with_tag(value: &str, tag: &str) -> String {
    let mut out = String::with_capacity(value.len() + 5 + tag.len());
    out.push_str(value);
    out.push_str(";tag=");
    out.push_str(tag);
    out
}

/// The RFC 3261 §21 reason phrase for a status code ("" for unknown codes).
pub fn default_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "",
    }
}

/// Why a message was refused. [`ParseError::status`] gives the response a UAS
/// should send (400 or 505) and [`ParseError::reason`] a phrase for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("{0}")]
    Malformed(&'static str),
    #[error("empty message")]
    Empty,
    #[error("no blank line after the headers")]
    NoHeaderEnd,
    #[error("malformed start line: {0}")]
    StartLine(&'static str),
    #[error("unsupported SIP version")]
    Version,
    #[error("malformed header line")]
    HeaderLine,
    #[error("malformed {name} header: {why}")]
    Header {
        name: &'static str,
        why: &'static str,
    },
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("conflicting {0} headers")]
    Conflicting(&'static str),
    #[error("bad Content-Length: {0}")]
    ContentLength(&'static str),
    #[error("Content-Length {declared} larger than the {available}-byte body")]
    BodyTooShort { declared: usize, available: usize },
    #[error("malformed URI: {0}")]
    Uri(&'static str),
    #[error("malformed digest header: {0}")]
    Digest(&'static str),
}

impl ParseError {
    /// The status a UAS answers an unparseable request with.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::Version => 505,
            _ => 400,
        }
    }

    /// A short reason phrase for that response, e.g. "Bad Request: bad
    /// Content-Length: negative". Never contains CR or LF.
    pub fn reason(&self) -> String {
        match self {
            ParseError::Version => "Version Not Supported".to_owned(),
            other => format!("Bad Request: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn push_decimal_writes_what_format_does(v in any::<u64>()) {
            let mut s = String::from("x");
            push_decimal(&mut s, v);
            prop_assert_eq!(s, format!("x{v}"));
        }
    }

    #[test]
    fn start_lines_and_length() {
        let mut r = Response::new(180, "Ringing");
        r.body = Bytes::from_static(b"v=0\r\n");
        let text = String::from_utf8(r.to_bytes()).unwrap_or_default();
        assert!(text.starts_with("SIP/2.0 180 Ringing\r\n"), "{text}");
        assert!(text.contains("Content-Length: 5\r\n"), "{text}");
        let q = Request::new(Method::Other("FOO".into()), "sip:a@b");
        let text = String::from_utf8(q.to_bytes()).unwrap_or_default();
        assert!(text.starts_with("FOO sip:a@b SIP/2.0\r\n"), "{text}");
        assert_eq!(with_tag("<sip:a@b>", "x1"), "<sip:a@b>;tag=x1");
    }
}
