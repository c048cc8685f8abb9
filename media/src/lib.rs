//! Switchyard media: SDP offer/answer, RTP packets and statistics, G.711, and (with the
//! `net` feature) UDP endpoints that send and receive RTP.
//!
//! Everything outside [`net`] is sans-IO: values in, values out, no clock, no sockets,
//! randomness only from a caller's seeded rng. This crate knows nothing of SIP; the
//! switch core carries SDP bodies between `sip` and [`sdp`].

pub mod g711;
#[cfg(feature = "net")]
pub mod net;
pub mod rtp;
pub mod sdp;
pub mod stats;

pub use sdp::{Codec, Direction, OfferParams, SdpError, StreamParams};
