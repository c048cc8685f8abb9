//! SIP messages (RFC 3261 §7, §20, §25): a raw-but-checked header list plus typed accessors.
//!
//! CONTRACT (shared by the parser and the transaction/UA code; keep these signatures):
//! - `parse(&[u8]) -> Result<SipMessage, ParseError>` parses one whole datagram/frame.
//! - `SipMessage::to_bytes()` serialises with CRLF and a correct Content-Length.
//! - header names are stored in canonical long form ("Via", "Call-ID", "From", "To",
//!   "CSeq", "Contact", "Content-Length", "Content-Type", "Max-Forwards", ...), compact
//!   forms (v, i, f, t, m, l, c, k, s, e, o, u, r, b) expanded on parse.
//!   Multi-value comma lists of Via/Contact/Route/Record-Route are split into one
//!   `Header` per value on parse.

use bytes::Bytes;

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<Header>);

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

/// Why a message was refused. `status()` gives the response a UAS should send
/// (400, 505, …) when one can be formed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("{0}")]
    Malformed(&'static str),
}
