//! Switchyard's SIP stack: message parsing (RFC 3261 §7, tested against RFC 4475),
//! the transaction layer (§17), dialogs (§12), digest authentication (RFC 2617/7616)
//! and a sans-IO user agent. Only the `net` module (feature `net`) does I/O.
//!
//! Bodies are opaque bytes: this crate never parses SDP.

pub mod auth;
pub mod dialog;
pub mod digest_server;
pub mod framing;
pub mod msg;
pub mod ratelimit;
pub mod testing;
pub mod txn;
pub mod ua;

pub use msg::{ParseError, SipMessage, parse};

#[cfg(feature = "net")]
pub mod net;
