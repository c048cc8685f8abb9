//! The tokio task behind one provider session: connect, send the setup, pump both ways.
//!
//! - Toward the provider: the caller's frames arrive on a bounded queue
//!   ([`ProviderSession::send_audio`] is a `try_send`; a full queue drops the frame and
//!   counts it), tool results and truncations on an unbounded one (rare, and never to be
//!   lost). Frames are written inline; a write that stalls for [`WRITE_TIMEOUT`] ends the
//!   session.
//! - Toward the call: one bounded queue of [`ProviderEvent`]s, so audio and barge-in stay
//!   in order. Audio only takes a slot while more than [`EVENT_RESERVE`] are free (else
//!   it is dropped and counted); every other event waits for a slot, so a slow consumer
//!   loses audio, never a tool call or a barge-in.
//! - The end: a close frame, a socket error or a failed connect is reported as a fatal
//!   [`ProviderEvent::Error`], then the queue closes. [`ProviderSession::close`] (or
//!   dropping the session) closes the socket quietly. Pings are answered by tungstenite
//!   as it reads. There is no reconnection: a provider session holds the conversation, a
//!   new socket would be a new conversation.
//!
//! The key is sent as the provider wants it (OpenAI: `Authorization: Bearer`, Gemini:
//! `?key=`) and never logged: logs name the host only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use super::{Incoming, Protocol, ProviderConfig, ProviderEvent, ProviderKind, SessionSetup};
use crate::streams::{Connector, WsStream, open_with_headers};

/// Caller frames waiting for the socket (1 s of 20 ms frames).
pub const INPUT_QUEUE: usize = 50;
/// Events waiting for the call.
pub const EVENT_QUEUE: usize = 256;
/// Event slots audio may not take: kept for control events.
pub const EVENT_RESERVE: usize = 32;
/// TCP + TLS + upgrade.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One batch of frames to the provider.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The closing handshake on [`ProviderSession::close`].
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest message accepted from a provider (an audio delta is a few hundred kB at most).
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Counters for one session.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Caller frames dropped because the input queue was full.
    pub input_dropped: AtomicU64,
    /// Caller frames written to the provider.
    pub input_sent: AtomicU64,
    /// Audio events dropped because the consumer was slow.
    pub audio_events_dropped: AtomicU64,
    /// Audio events delivered.
    pub audio_events: AtomicU64,
}

impl SessionStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

enum Control {
    ToolResult {
        call_id: String,
        name: String,
        output: serde_json::Value,
    },
    Truncate {
        heard_ms: u32,
    },
    UserText(String),
}

/// The call's side of a provider session.
#[derive(Debug)]
pub struct ProviderSession {
    kind: ProviderKind,
    audio: mpsc::Sender<Vec<i16>>,
    control: mpsc::UnboundedSender<Control>,
    /// What the provider says, in order; closes when the session ends.
    pub events: mpsc::Receiver<ProviderEvent>,
    stats: Arc<SessionStats>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Control::ToolResult { call_id, name, .. } => f
                .debug_struct("ToolResult")
                .field("call_id", call_id)
                .field("name", name)
                .finish_non_exhaustive(),
            Control::Truncate { heard_ms } => f
                .debug_struct("Truncate")
                .field("heard_ms", heard_ms)
                .finish(),
            Control::UserText(text) => f.debug_tuple("UserText").field(text).finish(),
        }
    }
}

impl ProviderSession {
    pub fn kind(&self) -> ProviderKind {
        self.kind
    }

    /// The rate [`ProviderSession::send_audio`] expects.
    pub fn input_rate(&self) -> u32 {
        self.kind.input_rate()
    }

    /// The rate of [`ProviderEvent::Audio`].
    pub fn output_rate(&self) -> u32 {
        self.kind.output_rate()
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Queues caller audio at [`ProviderSession::input_rate`]; never blocks. `false` if the
    /// frame was dropped (queue full, counted) or the session is over.
    pub fn send_audio(&self, pcm: Vec<i16>) -> bool {
        match self.audio.try_send(pcm) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                SessionStats::bump(&self.stats.input_dropped);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Answers a [`ProviderEvent::ToolCall`].
    pub fn tool_result(&self, call_id: &str, name: &str, output: serde_json::Value) {
        let _ = self.control.send(Control::ToolResult {
            call_id: call_id.to_owned(),
            name: name.to_owned(),
            output,
        });
    }

    /// Tells the model something the caller did that is not speech (keypad digits).
    pub fn user_text(&self, text: String) {
        let _ = self.control.send(Control::UserText(text));
    }

    /// After a barge-in: the caller heard only `heard_ms` of the current assistant audio.
    pub fn truncate(&self, heard_ms: u32) {
        let _ = self.control.send(Control::Truncate { heard_ms });
    }

    /// The next event; `None` once the session is over.
    pub async fn recv(&mut self) -> Option<ProviderEvent> {
        self.events.recv().await
    }

    /// Closes the socket; the event queue closes once the task is done.
    pub fn close(&self) {
        self.stop.cancel();
    }

    /// Closes and waits for the task.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ProviderSession {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Opens a session with the provider that runs `setup.model` (or `provider.kind`).
/// Failures, including a missing key, arrive as a fatal [`ProviderEvent::Error`].
pub fn spawn(
    provider: ProviderConfig,
    setup: SessionSetup,
    connector: Arc<dyn Connector>,
) -> ProviderSession {
    let kind = provider.kind_for(&setup.model);
    let (audio_tx, audio_rx) = mpsc::channel(INPUT_QUEUE);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let stats = Arc::new(SessionStats::default());
    let stop = CancellationToken::new();
    let task = Task {
        kind,
        provider,
        setup,
        connector,
        audio: audio_rx,
        control: control_rx,
        events: events_tx,
        stats: stats.clone(),
        stop: stop.clone(),
    };
    let task = tokio::spawn(task.run());
    ProviderSession {
        kind,
        audio: audio_tx,
        control: control_tx,
        events: events_rx,
        stats,
        stop,
        task: Some(task),
    }
}

type Sink = SplitSink<WsStream, Message>;

/// Why the pump loop ended.
enum End {
    /// Closed by us, or the call went away: no report.
    Quiet,
    Failed(String),
    /// The provider announced this connection's end; the session goes on over a new one.
    Reconnect,
}

/// Connections in a row that may drop unannounced and be resumed before the session is
/// given up (an announced end, `goAway`, does not count).
const MAX_DROPS_RESUMED: u32 = 3;

struct Task {
    kind: ProviderKind,
    provider: ProviderConfig,
    setup: SessionSetup,
    connector: Arc<dyn Connector>,
    audio: mpsc::Receiver<Vec<i16>>,
    control: mpsc::UnboundedReceiver<Control>,
    events: mpsc::Sender<ProviderEvent>,
    stats: Arc<SessionStats>,
    stop: CancellationToken,
}

impl Task {
    async fn run(mut self) {
        let end = self.session().await;
        match end {
            // `session` resumes on `Reconnect` itself: it never ends with one.
            End::Quiet | End::Reconnect => {
                tracing::debug!(provider = ?self.kind, "provider session closed");
            }
            End::Failed(message) => {
                tracing::info!(provider = ?self.kind, %message, "provider session ended");
                // The last event: wait for room, unless the call has gone.
                let _ = self
                    .events
                    .send(ProviderEvent::Error {
                        message,
                        fatal: true,
                    })
                    .await;
            }
        }
    }

    async fn connect(&self) -> Result<WsStream, String> {
        let key = self.provider.resolve_key().map_err(|e| e.to_string())?;
        let url = self
            .provider
            .endpoint(self.kind, &self.setup.model, &key)
            .map_err(|e| e.to_string())?;
        let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
        if self.kind == ProviderKind::OpenAi {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "the API key is not a valid header value".to_owned())?;
            value.set_sensitive(true);
            headers.push((header::AUTHORIZATION, value));
        }
        // tungstenite zero-fills its whole read buffer before each read: 16 KiB holds a
        // typical audio delta without the 128 KiB default's cost per poll.
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES))
            .read_buffer_size(16 * 1024);
        let host = url.host_str().unwrap_or("?").to_owned();
        tracing::debug!(provider = ?self.kind, %host, "connecting to model provider");
        match timeout(
            CONNECT_TIMEOUT,
            open_with_headers(&url, &headers, self.connector.as_ref(), ws_config),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no connection to {host} within {CONNECT_TIMEOUT:?}"
            )),
        }
    }

    async fn session(&mut self) -> End {
        let mut protocol = self.kind.protocol();
        let mut resuming = false;
        let mut drops = 0;
        loop {
            let ws = tokio::select! {
                () = self.stop.cancelled() => return End::Quiet,
                result = self.connect() => match result {
                    Ok(ws) => ws,
                    Err(e) => return End::Failed(e),
                },
            };
            let (mut sink, mut stream) = ws.split();
            if resuming {
                protocol.handle_resume();
            } else {
                protocol.handle_setup(&self.setup);
            }
            let end = match flush(protocol.as_mut(), &mut sink).await {
                Ok(()) => self.pump(protocol.as_mut(), &mut sink, &mut stream).await,
                Err(e) => End::Failed(e),
            };
            match end {
                End::Reconnect => drops = 0,
                End::Failed(e) if protocol.can_resume() && drops < MAX_DROPS_RESUMED => {
                    drops += 1;
                    tracing::info!(provider = ?self.kind, error = %e, "provider connection lost: resuming the session");
                }
                End::Quiet => {
                    let _ = timeout(CLOSE_TIMEOUT, sink.close()).await;
                    return End::Quiet;
                }
                End::Failed(e) => return End::Failed(e),
            }
            // The old connection is left behind: closed politely, not waited on long.
            let _ = timeout(CLOSE_TIMEOUT, sink.close()).await;
            resuming = true;
        }
    }

    async fn pump(
        &mut self,
        protocol: &mut dyn Protocol,
        sink: &mut Sink,
        stream: &mut SplitStream<WsStream>,
    ) -> End {
        loop {
            tokio::select! {
                // A tool result sent just before the session is closed (a caller handed
                // off) still reaches the model: control goes first.
                biased;
                command = self.control.recv() => {
                    match command {
                        Some(Control::ToolResult { call_id, name, output }) => {
                            protocol.handle_tool_result(&call_id, &name, &output);
                        }
                        Some(Control::Truncate { heard_ms }) => protocol.handle_truncate(heard_ms),
                        Some(Control::UserText(text)) => protocol.handle_user_text(&text),
                        None => return End::Quiet,
                    }
                }
                () = self.stop.cancelled() => return End::Quiet,
                message = stream.next() => {
                    match message {
                        Some(Ok(Message::Text(text))) => {
                            protocol.handle_message(Incoming::Text(text.as_str()));
                        }
                        Some(Ok(Message::Binary(bytes))) => {
                            protocol.handle_message(Incoming::Binary(&bytes));
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let why = match frame {
                                Some(f) => format!("{} {}", u16::from(f.code), f.reason),
                                None => "no close code".to_owned(),
                            };
                            // Events already parsed go first.
                            if !self.deliver(protocol).await {
                                return End::Quiet;
                            }
                            return End::Failed(format!("provider closed the session ({})", why.trim()));
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return End::Failed(format!("provider socket error: {e}")),
                        None => return End::Failed("provider connection dropped".to_owned()),
                    }
                    if !self.deliver(protocol).await {
                        return End::Quiet;
                    }
                    if protocol.take_reconnect() {
                        return End::Reconnect;
                    }
                }
                frame = self.audio.recv() => {
                    let Some(pcm) = frame else { return End::Quiet };
                    protocol.handle_audio(&pcm);
                    SessionStats::bump(&self.stats.input_sent);
                }
            }
            // Setup acknowledgements queue frames too (Gemini's greeting).
            if let Err(e) = flush(protocol, sink).await {
                return End::Failed(e);
            }
        }
    }

    /// Hands the protocol's events to the call; `false` if the call has gone.
    async fn deliver(&mut self, protocol: &mut dyn Protocol) -> bool {
        while let Some(event) = protocol.poll_event() {
            if event.is_audio() {
                if self.events.capacity() > EVENT_RESERVE && self.events.try_send(event).is_ok() {
                    SessionStats::bump(&self.stats.audio_events);
                } else if self.events.is_closed() {
                    return false;
                } else {
                    SessionStats::bump(&self.stats.audio_events_dropped);
                }
                continue;
            }
            let sent = tokio::select! {
                () = self.stop.cancelled() => return false,
                sent = self.events.send(event) => sent,
            };
            if sent.is_err() {
                return false;
            }
        }
        true
    }
}

/// Writes what the protocol queued, as one flush.
async fn flush(protocol: &mut dyn Protocol, sink: &mut Sink) -> Result<(), String> {
    let mut any = false;
    let write = async {
        while let Some(out) = protocol.poll_outgoing() {
            any = true;
            sink.feed(Message::Text(out.0.into())).await?;
        }
        if any {
            sink.flush().await?;
        }
        Ok::<(), tokio_tungstenite::tungstenite::Error>(())
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("writing to the provider: {e}")),
        Err(_) => Err(format!("the provider did not read for {WRITE_TIMEOUT:?}")),
    }
}
