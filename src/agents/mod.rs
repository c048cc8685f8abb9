//! AI voice agents: a call's audio to a realtime speech-to-speech model and back.

pub mod provider;
