//! End-to-end test support: SIPp peers, the switch binary, a webhook sink and an API client.
//! Included with `mod common;` by several test files, each using a different part of it.
#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod api;
pub mod capture;
pub mod fake_realtime;
pub mod fixtures;
pub mod harness;
pub mod netns;
pub mod sipp;
pub mod switch;
pub mod transit;
pub mod webhook;

pub use api::{Api, wait_for_status};
pub use sipp::{Sipp, SippBuilder, SippOutcome};
pub use switch::{Listening, SwitchConfig, SwitchProcess};
pub use webhook::{Received, WebhookSink};
