//! Switchyard: a SIP/RTP switch with an HTTP API and signed status callbacks.
//!
//! `app` composes the pieces: `config` → `store` → `webhooks` → the SIP driver
//! (`sip::net`) → `core` (one task per call) → `api` (axum).

pub mod agents;
pub mod api;
pub mod app;
pub mod config;
pub mod core;
pub mod model;
pub mod netguard;
pub mod proxy;
pub mod ratelimit;
pub mod store;
pub mod streams;
pub mod timefmt;
pub mod webhooks;
