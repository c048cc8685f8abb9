//! Agent media streams: a call's audio to and from a customer's WebSocket server in the
//! media-stream protocol Twilio ("Media Streams"), Telnyx and Vonage converged on
//! (`connected`, `start`, `media`, `dtmf`, `mark`, `clear`, `stop`), so existing
//! voice-agent servers connect unchanged.
//!
//! Sans-IO like the rest of this crate: no sockets, no clock. The WebSocket driver (the
//! main crate's `streams` module) owns the connection and the timers and moves values
//! through these pieces:
//! - [`protocol`]: the JSON messages both ways, with the providers' exact field names;
//! - [`format`]: the stream's encoding and rate, payload ⇄ PCM;
//! - [`playout`]: the downlink queue the call's 20 ms pacer pulls from, with mark and
//!   clear accounting;
//! - [`uplink`]: the call's 20 ms frames → `media` payloads with chunk numbers and
//!   timestamps per track.
//!
//! PCM inside a stream runs at the stream's rate ([`StreamFormat::sample_rate`]);
//! [`Uplink`] and [`Playout`] resample from and to the call's codec rate at their edges
//! with [`crate::resample::Resampler`].

pub mod format;
pub mod playout;
pub mod protocol;
pub mod reorder;
pub mod uplink;

pub use format::{Encoding, FormatError, PayloadDecoder, StreamFormat};
pub use playout::{ClearReport, ClearedMark, Frame, Playout};
pub use protocol::{ParseError, Sequencer, ServerMessage, StartParams, Track};
pub use reorder::{Release, Reorder, ReorderStats};
pub use uplink::{MediaChunk, Uplink};

/// Every frame both ways is 20 ms (the RTP packetisation the switch uses).
pub const FRAME_MS: u32 = 20;

/// Samples in `ms` milliseconds at `rate` Hz.
pub(crate) fn samples_for_ms(rate: u32, ms: u64) -> u64 {
    ms * u64::from(rate) / 1000
}

/// Whole milliseconds in `samples` at `rate` Hz (rounded down).
pub(crate) fn ms_for_samples(rate: u32, samples: u64) -> u64 {
    samples * 1000 / u64::from(rate.max(1))
}
