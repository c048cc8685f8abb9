//! UAS checks on a parsed new request, in the order of RFC 3261 §8.2: method
//! (§8.2.1), header inspection (§8.2.2: CSeq method, URI scheme, `Require`), content
//! (§8.2.3), then what the answer could carry (`Accept`, RFC 3261 §21.4.7). The
//! verdicts match RFC 4475 §3.1.2 and §3.3 for a user agent (not a proxy, not a
//! registrar).
//!
//! Policy: session bodies (INVITE, ACK, UPDATE, PRACK) must be SDP, so a body of any
//! other type there is a 415, and an INVITE whose `Accept` excludes `application/sdp`
//! is a 406. Bodies of other methods (NOTIFY's sipfrag, INFO's DTMF) pass: the user
//! agent reads or ignores them itself. A method the
//! stack knows but the caller does not support (REGISTER at a B2BUA) is a 405; an
//! unknown one a 501; both list `Allow`.

use super::addr::{NameAddr, SipUri, Via, uri_scheme};
use super::{Header, Method, Request, Response, default_reason, is_lws};

/// The rejection a UAS should send for a request (`code`, `reason`, and the extra
/// headers RFC 3261 asks for: `Allow`, `Unsupported`, `Accept`, `Warning`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub code: u16,
    pub reason: String,
    pub headers: Vec<Header>,
}

impl Rejection {
    fn new(code: u16) -> Self {
        Rejection {
            code,
            reason: default_reason(code).to_owned(),
            headers: Vec::new(),
        }
    }

    fn with_reason(code: u16, reason: &str) -> Self {
        Rejection {
            reason: reason.to_owned(),
            ..Rejection::new(code)
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push(Header::new(name, value));
        self
    }

    /// The response to send: [`Response::for_request`] plus this rejection's
    /// headers. (A To tag, when wanted, is the caller's to add.)
    pub fn to_response(&self, req: &Request) -> Response {
        let mut resp = Response::for_request(req, self.code, &self.reason);
        resp.headers.0.extend(self.headers.iter().cloned());
        resp
    }
}

/// UAS-side validation of a *parsed* new request (RFC 3261 §8.2 and RFC 4475
/// §3.1.2/3.3 verdicts), before it reaches a transaction user: returns the rejection
/// to send, if any.
///
/// An ACK is never answered (§17.2.1): callers must drop, not reject, an ACK this
/// refuses.
pub fn validate_request(
    req: &Request,
    supported_methods: &[Method],
    supported_extensions: &[&str],
) -> Result<(), Rejection> {
    // §8.2.1: method inspection.
    if !supported_methods.contains(&req.method) {
        let code = match req.method {
            Method::Other(_) => 501,
            _ => 405,
        };
        let allow: Vec<&str> = supported_methods.iter().map(Method::as_str).collect();
        return Err(Rejection::new(code).header("Allow", allow.join(", ")));
    }

    // The parser insists on these; a hand-built request might not have them.
    let h = &req.headers;
    let bad_name_addr = |name| h.get(name).is_none_or(|v| NameAddr::check(v).is_err());
    if h.call_id().is_none()
        || bad_name_addr("From")
        || bad_name_addr("To")
        || h.get("Via").is_none_or(|v| Via::check(v).is_err())
    {
        return Err(Rejection::with_reason(
            400,
            "Bad Request: missing Via, From, To or Call-ID",
        ));
    }
    match h.cseq() {
        None => return Err(Rejection::with_reason(400, "Bad Request: bad CSeq")),
        Some((_, m)) if m != req.method => {
            return Err(Rejection::with_reason(
                400,
                "Bad Request: CSeq method does not match the request line",
            ));
        }
        Some(_) => {}
    }

    // §8.2.2.1: the Request-URI scheme.
    let scheme = uri_scheme(&req.uri).unwrap_or_default();
    let known = ["sip", "sips", "tel"]
        .iter()
        .any(|k| k.eq_ignore_ascii_case(scheme));
    if !known || SipUri::check(&req.uri).is_err() {
        return Err(Rejection::new(416));
    }

    // §8.2.2.3: Require. Never applied to ACK or CANCEL (a UAS must not reject those
    // for an extension).
    if !matches!(req.method, Method::Ack | Method::Cancel) {
        let unsupported: Vec<&str> = h
            .get_all("Require")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim_matches(is_lws))
            .filter(|t| !t.is_empty())
            .filter(|t| {
                !supported_extensions
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(t))
            })
            .collect();
        if !unsupported.is_empty() {
            return Err(Rejection::new(420).header("Unsupported", unsupported.join(", ")));
        }
    }

    // §8.2.3: content processing.
    let session_body = matches!(
        req.method,
        Method::Invite | Method::Ack | Method::Update | Method::Prack
    );
    if !req.body.is_empty() && session_body {
        let sdp = h
            .get("Content-Type")
            .is_some_and(|ct| media_type_is(ct, "application", "sdp"));
        if !sdp {
            return Err(Rejection::new(415).header("Accept", "application/sdp"));
        }
        if let Some(enc) = h.get("Content-Encoding")
            && !enc.trim_matches(is_lws).eq_ignore_ascii_case("identity")
        {
            return Err(Rejection::new(415).header("Accept-Encoding", "identity"));
        }
    }

    // Our answer to an INVITE carries SDP: the caller must accept it (RFC 4475
    // §3.3.15).
    if req.method == Method::Invite {
        let accepts: Vec<&str> = h
            .get_all("Accept")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim_matches(is_lws))
            .filter(|t| !t.is_empty())
            .collect();
        if !accepts.is_empty()
            && !accepts
                .iter()
                .any(|a| media_range_matches(a, "application", "sdp"))
        {
            return Err(Rejection::new(406).header(
                "Warning",
                "399 switchyard \"Only application/sdp bodies are supported\"",
            ));
        }
    }
    Ok(())
}

/// `type/subtype;params` equals `ty/sub` (case-insensitive, params ignored).
fn media_type_is(value: &str, ty: &str, sub: &str) -> bool {
    let mt = value.split(';').next().unwrap_or_default();
    match mt.split_once('/') {
        Some((t, s)) => {
            t.trim_matches(is_lws).eq_ignore_ascii_case(ty)
                && s.trim_matches(is_lws).eq_ignore_ascii_case(sub)
        }
        None => false,
    }
}

/// An `Accept` media-range (`*/*`, `type/*`, `type/subtype`) covers `ty/sub`.
fn media_range_matches(range: &str, ty: &str, sub: &str) -> bool {
    let mt = range.split(';').next().unwrap_or_default();
    match mt.split_once('/') {
        Some((t, s)) => {
            let (t, s) = (t.trim_matches(is_lws), s.trim_matches(is_lws));
            (t == "*" && s == "*")
                || (t.eq_ignore_ascii_case(ty) && (s == "*" || s.eq_ignore_ascii_case(sub)))
        }
        None => false,
    }
}
