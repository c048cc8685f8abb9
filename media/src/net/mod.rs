//! UDP driver for RTP (feature `net`; the only module that touches tokio, sockets and
//! the clock).
//!
//! In: a [`PortPool`] to take an even/odd port pair from, a bind address, then the
//! negotiated [`StreamParams`](crate::sdp::StreamParams). Out: an [`RtpEndpoint`] that
//! counts what arrives (from the moment it opens), sends paced silence once connected,
//! and reports a [`MediaSnapshot`] and a first-packet event; optionally records what
//! arrives to a WAV ([`recording`]).

pub mod bridge;
mod endpoint;
pub mod kernel;
mod pool;
pub mod recording;

pub use endpoint::{MediaSnapshot, RtpEndpoint};
pub use pool::{PortPair, PortPool, PortPoolError};
pub use recording::{RecordingError, RecordingOutcome};
