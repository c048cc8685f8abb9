//! Switchyard media: SDP offer/answer, RTP packets and statistics, G.711, and (with the
//! `net` feature) UDP endpoints that send and receive RTP.
//!
//! Everything outside [`net`] is sans-IO: values in, values out, no clock, no sockets,
//! randomness only from a caller's seeded rng. This crate knows nothing of SIP; the
//! switch core carries SDP bodies between `sip` and [`sdp`].

pub mod codec;
pub mod dtmf;
pub mod g711;
pub mod g722;
pub mod jitter;
#[cfg(feature = "net")]
pub mod net;
pub mod quality;
pub mod record;
pub mod relay;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
#[cfg(feature = "net")]
pub mod source;
pub mod stats;
pub mod stream;
pub mod transcode;

pub use sdp::{Codec, Direction, OfferParams, SdpError, StreamParams};
