//! Switchyard's SIP stack: message parsing (RFC 3261 §7, tested against RFC 4475),
//! the transaction layer (§17), dialogs (§12), digest authentication (RFC 2617/7616)
//! and a sans-IO user agent. Only the `net` module (feature `net`) does I/O.
//!
//! Bodies are opaque bytes: this crate never parses SDP.

pub mod msg;
