//! UDP driver for RTP (feature `net`; the only module that touches tokio, sockets and
//! the clock).
//!
//! In: a [`PortPool`] to take an even/odd port pair from, a bind address, then the
//! negotiated [`StreamParams`](crate::sdp::StreamParams). Out: an [`RtpEndpoint`] that
//! counts what arrives (from the moment it opens), sends paced silence once connected,
//! and reports a [`MediaSnapshot`] and a first-packet event; optionally records what
//! arrives to a WAV ([`recording`]) or hands it, decoded, to a listener ([`listen`]).

pub mod bridge;
mod endpoint;
pub mod kernel;
pub mod listen;
pub mod pipe;
mod pool;
pub mod recording;

pub use endpoint::{MediaSnapshot, RtpEndpoint};

/// RTP datagrams dropped process-wide because they came from an address no call's
/// signalling named (hijack tries, port sweeps, bleed), for `/metrics`.
pub static FOREIGN_RTP_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
pub use pool::{PortPair, PortPool, PortPoolError};
pub use recording::{RecordingError, RecordingOutcome};
