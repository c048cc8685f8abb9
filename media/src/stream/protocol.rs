//! The media-stream messages, both ways, with the field names and types of Twilio's
//! Media Streams ("Media Streams - WebSocket Messages", twilio.com/docs/voice/media-streams/
//! websocket-messages), which Telnyx and Vonage servers accept too:
//!
//! ```text
//! switch → server
//! {"event":"connected","protocol":"Call","version":"1.0.0"}
//! {"event":"start","sequenceNumber":"1","streamSid":"MZ…","start":{"streamSid":"MZ…",
//!   "accountSid":"…","callSid":"…","tracks":["inbound"],"customParameters":{…},
//!   "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},
//!   "from":"+1…","to":"+1…","reconnect":false}}
//! {"event":"media","sequenceNumber":"2","streamSid":"MZ…",
//!   "media":{"track":"inbound","chunk":"1","timestamp":"0","payload":"<base64>"}}
//! {"event":"dtmf","sequenceNumber":"3","streamSid":"MZ…","dtmf":{"track":"inbound_track","digit":"5"}}
//! {"event":"mark","sequenceNumber":"4","streamSid":"MZ…","mark":{"name":"greeting"}}
//! {"event":"cleared","sequenceNumber":"5","streamSid":"MZ…",
//!   "cleared":{"playedMs":60,"marks":[{"name":"greeting","playedMs":60,"played":false}]}}
//! {"event":"stop","sequenceNumber":"6","streamSid":"MZ…","stop":{"accountSid":"…","callSid":"…"}}
//!
//! server → switch
//! {"event":"media","streamSid":"MZ…","media":{"payload":"<base64>"}}
//! {"event":"mark","streamSid":"MZ…","mark":{"name":"greeting"}}
//! {"event":"clear","streamSid":"MZ…"}
//! ```
//!
//! As in Twilio's messages, `sequenceNumber`, `media.chunk` and `media.timestamp` are
//! decimal strings and `sampleRate`/`channels` are numbers. Additions an unaware client
//! ignores: `start.from`/`start.to` (as Telnyx's `start` carries them), `start.reconnect`
//! (true on the `start` of a connection that resumes a dropped one), and the `cleared`
//! event (the switch's answer to `clear`, see [`super::ClearReport`]).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::format::StreamFormat;
use super::playout::ClearReport;
use super::uplink::MediaChunk;

/// `connected.protocol` and `connected.version`, as Twilio sends them.
pub const PROTOCOL: &str = "Call";
pub const PROTOCOL_VERSION: &str = "1.0.0";
/// `dtmf.track`: digits are detected on the caller's audio (Twilio's spelling).
pub const DTMF_TRACK: &str = "inbound_track";

/// Which side of the call a `media` message carries: `inbound` is what the switch
/// receives from the caller, `outbound` what it sends to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    Inbound,
    Outbound,
}

impl Track {
    pub fn as_str(self) -> &'static str {
        match self {
            Track::Inbound => "inbound",
            Track::Outbound => "outbound",
        }
    }
}

/// Every message the switch sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "event",
    rename_all = "lowercase",
    rename_all_fields = "camelCase"
)]
pub enum SwitchMessage {
    Connected {
        protocol: String,
        version: String,
    },
    Start {
        sequence_number: String,
        stream_sid: String,
        start: StartMeta,
    },
    Media {
        sequence_number: String,
        stream_sid: String,
        media: MediaMeta,
    },
    Dtmf {
        sequence_number: String,
        stream_sid: String,
        dtmf: DtmfMeta,
    },
    Mark {
        sequence_number: String,
        stream_sid: String,
        mark: MarkMeta,
    },
    Cleared {
        sequence_number: String,
        stream_sid: String,
        cleared: ClearedMeta,
    },
    Stop {
        sequence_number: String,
        stream_sid: String,
        stop: StopMeta,
    },
}

impl SwitchMessage {
    /// The message as a WebSocket text frame.
    pub fn to_json(&self) -> String {
        // Only strings, numbers and string-keyed maps: serialisation cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartMeta {
    pub stream_sid: String,
    pub account_sid: String,
    pub call_sid: String,
    pub tracks: Vec<Track>,
    pub custom_parameters: BTreeMap<String, String>,
    pub media_format: MediaFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// True when this connection resumes the stream after the previous one dropped.
    #[serde(default)]
    pub reconnect: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaFormat {
    pub encoding: String,
    pub sample_rate: u32,
    pub channels: u32,
}

impl From<StreamFormat> for MediaFormat {
    fn from(f: StreamFormat) -> Self {
        MediaFormat {
            encoding: f.mime().to_owned(),
            sample_rate: f.sample_rate(),
            channels: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaMeta {
    pub track: Track,
    /// 1, 2, 3… per track, as a string.
    pub chunk: String,
    /// Milliseconds since the stream started, as a string.
    pub timestamp: String,
    /// Base64 of the wire bytes ([`StreamFormat`]).
    pub payload: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmfMeta {
    pub track: String,
    pub digit: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkMeta {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClearedMeta {
    /// Milliseconds of the interrupted utterance that were played out.
    pub played_ms: u64,
    pub marks: Vec<ClearedMarkMeta>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClearedMarkMeta {
    pub name: String,
    /// Milliseconds of the audio queued before this mark that were played out.
    pub played_ms: u64,
    /// True when all of it was (the mark had been acknowledged as played).
    pub played: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopMeta {
    pub account_sid: String,
    pub call_sid: String,
}

/// What the call tells the server in `start` (and `stop`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartParams {
    /// The tenant.
    pub account_sid: String,
    pub call_sid: String,
    pub tracks: Vec<Track>,
    pub custom_parameters: BTreeMap<String, String>,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// Numbers the messages of one connection: `start` is 1 and every later message one
/// more (`connected` has none), as in Twilio's streams. A new connection starts again
/// at 1; the stream's `streamSid` stays.
#[derive(Debug, Clone)]
pub struct Sequencer {
    stream_sid: String,
    /// `stream_sid` as a JSON string literal, for [`Sequencer::media_json`].
    sid_json: String,
    next: u64,
}

impl Sequencer {
    pub fn new(stream_sid: impl Into<String>) -> Self {
        let stream_sid = stream_sid.into();
        Sequencer {
            sid_json: serde_json::to_string(&stream_sid).unwrap_or_default(),
            stream_sid,
            next: 1,
        }
    }

    pub fn stream_sid(&self) -> &str {
        &self.stream_sid
    }

    /// Numbering for a new connection.
    pub fn reset(&mut self) {
        self.next = 1;
    }

    fn take(&mut self) -> String {
        let n = self.next;
        self.next += 1;
        n.to_string()
    }

    pub fn connected(&self) -> SwitchMessage {
        SwitchMessage::Connected {
            protocol: PROTOCOL.to_owned(),
            version: PROTOCOL_VERSION.to_owned(),
        }
    }

    pub fn start(
        &mut self,
        params: &StartParams,
        format: StreamFormat,
        reconnect: bool,
    ) -> SwitchMessage {
        SwitchMessage::Start {
            sequence_number: self.take(),
            stream_sid: self.stream_sid.clone(),
            start: StartMeta {
                stream_sid: self.stream_sid.clone(),
                account_sid: params.account_sid.clone(),
                call_sid: params.call_sid.clone(),
                tracks: params.tracks.clone(),
                custom_parameters: params.custom_parameters.clone(),
                media_format: format.into(),
                from: params.from.clone(),
                to: params.to.clone(),
                reconnect,
            },
        }
    }

    pub fn media(&mut self, chunk: MediaChunk) -> SwitchMessage {
        SwitchMessage::Media {
            sequence_number: self.take(),
            stream_sid: self.stream_sid.clone(),
            media: MediaMeta {
                track: chunk.track,
                chunk: chunk.chunk.to_string(),
                timestamp: chunk.timestamp_ms.to_string(),
                payload: chunk.payload,
            },
        }
    }

    /// `self.media(chunk).to_json()`, the same text, formatted directly: one of these
    /// goes out per 20 ms frame of every stream, and serde's envelope (five `String`
    /// fields, then the serialiser) was a visible share of the uplink's cost.
    pub fn media_json(&mut self, chunk: &MediaChunk) -> String {
        let seq = self.next;
        self.next += 1;
        let mut out = String::with_capacity(112 + self.sid_json.len() + chunk.payload.len());
        // Pieces pushed in order (this runs for every frame; `write!` was a visible cost).
        // The payload is base64: nothing to escape.
        let mut num = itoa::Buffer::new();
        out.push_str(r#"{"event":"media","sequenceNumber":""#);
        out.push_str(num.format(seq));
        out.push_str(r#"","streamSid":"#);
        out.push_str(&self.sid_json);
        out.push_str(r#","media":{"track":""#);
        out.push_str(chunk.track.as_str());
        out.push_str(r#"","chunk":""#);
        out.push_str(num.format(chunk.chunk));
        out.push_str(r#"","timestamp":""#);
        out.push_str(num.format(chunk.timestamp_ms));
        out.push_str(r#"","payload":""#);
        out.push_str(&chunk.payload);
        out.push_str(r#""}}"#);
        out
    }

    pub fn dtmf(&mut self, digit: char) -> SwitchMessage {
        SwitchMessage::Dtmf {
            sequence_number: self.take(),
            stream_sid: self.stream_sid.clone(),
            dtmf: DtmfMeta {
                track: DTMF_TRACK.to_owned(),
                digit: digit.to_string(),
            },
        }
    }

    /// The acknowledgement of a mark whose audio has been played (or cleared).
    pub fn mark(&mut self, name: &str) -> SwitchMessage {
        SwitchMessage::Mark {
            sequence_number: self.take(),
            stream_sid: self.stream_sid.clone(),
            mark: MarkMeta {
                name: name.to_owned(),
            },
        }
    }

    pub fn cleared(&mut self, report: &ClearReport) -> SwitchMessage {
        SwitchMessage::Cleared {
            sequence_number: self.take(),
            stream_sid: self.stream_sid.clone(),
            cleared: ClearedMeta {
                played_ms: report.played_ms,
                marks: report
                    .marks
                    .iter()
                    .map(|m| ClearedMarkMeta {
                        name: m.name.clone(),
                        played_ms: m.played_ms,
                        played: m.played,
                    })
                    .collect(),
            },
        }
    }

    pub fn stop(&mut self, params: &StartParams) -> SwitchMessage {
        SwitchMessage::Stop {
            sequence_number: self.take(),
            stream_sid: self.stream_sid.clone(),
            stop: StopMeta {
                account_sid: params.account_sid.clone(),
                call_sid: params.call_sid.clone(),
            },
        }
    }
}

/// A message from the server that the switch acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// Audio to play, decoded from base64 (wire bytes in the stream's format).
    Media { payload: Vec<u8> },
    /// Acknowledge `name` once the audio queued before it has been played.
    Mark { name: String },
    /// Drop the queued audio (barge-in).
    Clear,
    /// An event this switch does not act on (e.g. a server echoing `start`): ignored
    /// and counted by the caller.
    Other { event: String },
}

/// Why a server message could not be used. Never fatal to the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("no \"event\" string")]
    NoEvent,
    #[error("{event} without {field}")]
    Missing {
        event: &'static str,
        field: &'static str,
    },
    #[error("media payload is not base64: {0}")]
    BadBase64(String),
}

/// Parses one text frame from the server. Never panics; unknown events are
/// [`ServerMessage::Other`], malformed known ones an error.
pub fn parse_server_message(text: &str) -> Result<ServerMessage, ParseError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let event = value
        .get("event")
        .and_then(|e| e.as_str())
        .ok_or(ParseError::NoEvent)?;
    match event {
        "media" => {
            let payload = value
                .get("media")
                .and_then(|m| m.get("payload"))
                .and_then(|p| p.as_str())
                .ok_or(ParseError::Missing {
                    event: "media",
                    field: "media.payload",
                })?;
            let payload = BASE64
                .decode(payload.trim())
                .map_err(|e| ParseError::BadBase64(e.to_string()))?;
            Ok(ServerMessage::Media { payload })
        }
        "mark" => {
            let name = value
                .get("mark")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .ok_or(ParseError::Missing {
                    event: "mark",
                    field: "mark.name",
                })?;
            Ok(ServerMessage::Mark {
                name: name.to_owned(),
            })
        }
        "clear" => Ok(ServerMessage::Clear),
        other => Ok(ServerMessage::Other {
            event: other.chars().take(64).collect(),
        }),
    }
}

/// Base64 as used in `media.payload`.
pub fn encode_payload(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::playout::ClearedMark;
    use serde_json::{Value, json};

    #[test]
    fn media_json_is_the_serde_text() {
        for sid in ["MZ01HXYZ", "odd \"sid\" \\ \u{1}"] {
            let (mut fast, mut slow) = (Sequencer::new(sid), Sequencer::new(sid));
            for (track, chunk, ts) in [(Track::Inbound, 1, 0), (Track::Outbound, 77, 1540)] {
                let chunk = MediaChunk {
                    track,
                    chunk,
                    timestamp_ms: ts,
                    payload: encode_payload(&[0xff, 0x7f, 0x00, 0x12]),
                };
                assert_eq!(fast.media_json(&chunk), slow.media(chunk).to_json());
            }
            // The numbering goes on from there for either.
            assert_eq!(fast.dtmf('5'), slow.dtmf('5'));
        }
    }

    fn params() -> StartParams {
        StartParams {
            account_sid: "tenant-7".into(),
            call_sid: "CA01HXYZ".into(),
            tracks: vec![Track::Inbound, Track::Outbound],
            custom_parameters: [("FirstName".to_owned(), "Jane".to_owned())].into(),
            from: Some("+15550100".into()),
            to: Some("+15550199".into()),
        }
    }

    fn as_value(m: &SwitchMessage) -> Value {
        serde_json::from_str(&m.to_json()).unwrap()
    }

    // Fixtures follow the examples on Twilio's "Media Streams - WebSocket Messages" page,
    // with this switch's ids and the documented additions.
    #[test]
    fn connected_and_start_match_the_twilio_shapes() {
        let mut seq = Sequencer::new("MZ01");
        assert_eq!(
            as_value(&seq.connected()),
            json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        );
        let start = seq.start(&params(), StreamFormat::MULAW_8K, false);
        assert_eq!(
            as_value(&start),
            json!({
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": "MZ01",
                "start": {
                    "streamSid": "MZ01",
                    "accountSid": "tenant-7",
                    "callSid": "CA01HXYZ",
                    "tracks": ["inbound", "outbound"],
                    "customParameters": {"FirstName": "Jane"},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "from": "+15550100",
                    "to": "+15550199",
                    "reconnect": false
                }
            })
        );
        seq.reset();
        let again = seq.start(
            &params(),
            StreamFormat::l16(16000).unwrap(),
            /* reconnect */ true,
        );
        let v = as_value(&again);
        assert_eq!(v["sequenceNumber"], "1");
        assert_eq!(v["start"]["reconnect"], true);
        assert_eq!(v["start"]["mediaFormat"]["encoding"], "audio/x-l16");
        assert_eq!(v["start"]["mediaFormat"]["sampleRate"], 16000);
    }

    #[test]
    fn media_dtmf_mark_cleared_stop_shapes() {
        let mut seq = Sequencer::new("MZ01");
        let _ = seq.start(&params(), StreamFormat::MULAW_8K, false);
        let media = seq.media(MediaChunk {
            track: Track::Inbound,
            chunk: 1,
            timestamp_ms: 0,
            payload: encode_payload(&[0xff, 0x7f]),
        });
        assert_eq!(
            as_value(&media),
            json!({"event": "media", "sequenceNumber": "2", "streamSid": "MZ01",
                   "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "/38="}})
        );
        assert_eq!(
            as_value(&seq.dtmf('5')),
            json!({"event": "dtmf", "sequenceNumber": "3", "streamSid": "MZ01",
                   "dtmf": {"track": "inbound_track", "digit": "5"}})
        );
        assert_eq!(
            as_value(&seq.mark("greeting")),
            json!({"event": "mark", "sequenceNumber": "4", "streamSid": "MZ01",
                   "mark": {"name": "greeting"}})
        );
        let report = ClearReport {
            played_ms: 60,
            marks: vec![ClearedMark {
                name: "greeting".into(),
                played_ms: 60,
                played: false,
            }],
        };
        assert_eq!(
            as_value(&seq.cleared(&report)),
            json!({"event": "cleared", "sequenceNumber": "5", "streamSid": "MZ01",
                   "cleared": {"playedMs": 60, "marks": [{"name": "greeting", "playedMs": 60, "played": false}]}})
        );
        assert_eq!(
            as_value(&seq.stop(&params())),
            json!({"event": "stop", "sequenceNumber": "6", "streamSid": "MZ01",
                   "stop": {"accountSid": "tenant-7", "callSid": "CA01HXYZ"}})
        );
    }

    #[test]
    fn without_from_and_to_the_fields_are_absent() {
        let mut seq = Sequencer::new("MZ01");
        let v = as_value(&seq.start(&StartParams::default(), StreamFormat::MULAW_8K, false));
        assert!(v["start"].get("from").is_none());
        assert!(v["start"].get("to").is_none());
    }

    #[test]
    fn server_messages_parse_as_twilio_documents_them() {
        assert_eq!(
            parse_server_message(
                r#"{"event":"media","streamSid":"MZ01","media":{"payload":"/38="}}"#
            ),
            Ok(ServerMessage::Media {
                payload: vec![0xff, 0x7f]
            })
        );
        assert_eq!(
            parse_server_message(r#"{"event":"mark","streamSid":"MZ01","mark":{"name":"m1"}}"#),
            Ok(ServerMessage::Mark { name: "m1".into() })
        );
        assert_eq!(
            parse_server_message(r#"{"event":"clear","streamSid":"MZ01"}"#),
            Ok(ServerMessage::Clear)
        );
        assert_eq!(
            parse_server_message(r#"{"event":"hello"}"#),
            Ok(ServerMessage::Other {
                event: "hello".into()
            })
        );
    }

    #[test]
    fn bad_server_input_is_an_error_value() {
        for (text, want) in [
            ("", "json"),
            ("[1,2]", "event"),
            ("{\"event\":5}", "event"),
            ("{\"event\":\"media\"}", "missing"),
            ("{\"event\":\"media\",\"media\":{\"payload\":7}}", "missing"),
            (
                "{\"event\":\"media\",\"media\":{\"payload\":\"@@@\"}}",
                "base64",
            ),
            ("{\"event\":\"mark\",\"mark\":{}}", "missing"),
            ("\u{0}\u{1}garbage", "json"),
        ] {
            let err = parse_server_message(text).unwrap_err();
            let matches = match want {
                "json" => matches!(err, ParseError::NotJson(_)),
                "event" => matches!(err, ParseError::NoEvent),
                "missing" => matches!(err, ParseError::Missing { .. }),
                _ => matches!(err, ParseError::BadBase64(_)),
            };
            assert!(matches, "{text:?} → {err:?}");
        }
    }

    #[test]
    fn switch_messages_read_back() {
        let mut seq = Sequencer::new("MZ01");
        let start = seq.start(&params(), StreamFormat::MULAW_8K, true);
        let back: SwitchMessage = serde_json::from_str(&start.to_json()).unwrap();
        assert_eq!(back, start);
    }
}
