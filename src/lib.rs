//! Switchyard: a SIP/RTP switch with an HTTP API and signed status callbacks.

pub mod model;
pub mod store;
