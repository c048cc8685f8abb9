//! The task behind one stream: connect (with backoff inside the grace period), run a
//! session on the socket, and on a drop go back to connecting.
//!
//! A session writes `connected` and `start` itself before anything else. After that one
//! task serves everything on the socket, reading and writing (no writer task: a frame
//! from the call is formatted and written in the same wake-up that brings it, with no
//! hop through a second task). What is to be written goes through a bounded queue
//! ([`Outbox`]) that is written only while the socket takes it, so a server that stops
//! reading never blocks the loop: reading (pings are answered by tungstenite as it
//! reads), the call's frames and the playout's mark acknowledgements keep being served,
//! and media that finds the queue full is dropped and counted. A few slots stay
//! reserved for marks, digits and `cleared`, which matter more than one 20 ms frame.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream};
use media::stream::protocol::{SwitchMessage, parse_server_message};
use media::stream::{PayloadDecoder, Sequencer, ServerMessage, Uplink};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_util::sync::CancellationToken;

use super::connect::{self, Connector, WsStream};
use super::{CallInput, Counters, EndReason, SharedPlayout, StreamConfig, StreamEvent};

/// Send-queue slots kept for non-media messages.
const CONTROL_RESERVE: usize = 16;
/// tungstenite's read buffer (see `Driver::new`).
const READ_BUFFER_BYTES: usize = 4096;
/// How long a closing handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

enum SessionEnd {
    ServerClosed,
    Stopped,
    Dropped(String),
}

/// What woke a session.
enum Wake {
    Stop,
    Acks,
    Input(Option<CallInput>),
    Frame(Option<Result<Message, tungstenite::Error>>),
    WriteFailed(tungstenite::Error),
}

/// Messages waiting for the socket, written by the session's task as far as the socket
/// takes them: a bounded queue in front of tungstenite's write buffer.
struct Outbox {
    queue: VecDeque<Message>,
    capacity: usize,
    /// Given to tungstenite but not yet flushed to the socket.
    unflushed: bool,
}

impl Outbox {
    fn new(capacity: usize) -> Self {
        Outbox {
            queue: VecDeque::with_capacity(capacity),
            capacity,
            unflushed: false,
        }
    }

    /// Free slots.
    fn room(&self) -> usize {
        self.capacity.saturating_sub(self.queue.len())
    }

    /// False (nothing queued) when full.
    fn push(&mut self, msg: Message) -> bool {
        if self.queue.len() >= self.capacity {
            return false;
        }
        self.queue.push_back(msg);
        true
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.unflushed
    }

    /// Writes what is queued and flushes it, one write for all of it where the socket
    /// takes it. Pending while the socket is full (woken when it drains).
    fn poll_write(
        &mut self,
        ws: &mut WsStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), tungstenite::Error>> {
        while !self.queue.is_empty() {
            ready!(Pin::new(&mut *ws).poll_ready(cx))?;
            if let Some(msg) = self.queue.pop_front() {
                Pin::new(&mut *ws).start_send(msg)?;
                self.unflushed = true;
            }
        }
        if self.unflushed {
            ready!(Pin::new(&mut *ws).poll_flush(cx))?;
            self.unflushed = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// Whether the socket under `ws` may have something to read. Only asked once a read
/// found nothing (tungstenite and TLS hold no undelivered data then): it saves the read
/// attempt, and its zero-filled buffer, on every wake-up that is only the call's frame.
fn poll_maybe_readable(ws: &WsStream, cx: &mut Context<'_>) -> bool {
    let tcp = match ws.get_ref() {
        MaybeTlsStream::Plain(tcp) => tcp,
        MaybeTlsStream::Rustls(tls) => tls.get_ref().0,
        _ => return true,
    };
    tcp.poll_read_ready(cx).is_ready()
}

pub(super) struct Driver {
    config: StreamConfig,
    url: url::Url,
    connector: Arc<dyn Connector>,
    ws_config: WebSocketConfig,
    seq: Sequencer,
    uplink: Uplink,
    decoder: PayloadDecoder,
    decoded: Vec<i16>,
    input: mpsc::Receiver<CallInput>,
    shared: Arc<SharedPlayout>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    events: mpsc::Sender<StreamEvent>,
}

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        config: StreamConfig,
        url: url::Url,
        connector: Arc<dyn Connector>,
        uplink: Uplink,
        input: mpsc::Receiver<CallInput>,
        shared: Arc<SharedPlayout>,
        counters: Arc<Counters>,
        stop: CancellationToken,
        events: mpsc::Sender<StreamEvent>,
    ) -> Self {
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes))
            // tungstenite zero-fills up to this much before every read attempt, and the
            // loop polls the socket each time a call frame wakes it: at the 128 KiB
            // default that was the largest cost of a stream. Larger messages still
            // arrive, over several reads.
            .read_buffer_size(READ_BUFFER_BYTES);
        Driver {
            seq: Sequencer::new(config.stream_sid.clone()),
            decoder: PayloadDecoder::new(config.format),
            decoded: Vec::new(),
            config,
            url,
            connector,
            ws_config,
            uplink,
            input,
            shared,
            counters,
            stop,
            events,
        }
    }

    pub(super) async fn run(mut self) -> EndReason {
        let reason = self.lifecycle().await;
        tracing::info!(stream = %self.seq.stream_sid(), ?reason, "media stream ended");
        self.emit(StreamEvent::Ended(reason.clone()));
        reason
    }

    fn emit(&self, event: StreamEvent) {
        // Bounded: a call that does not read its events loses them, never blocks us.
        let _ = self.events.try_send(event);
    }

    async fn lifecycle(&mut self) -> EndReason {
        let mut ever_connected = false;
        let mut outage_start = Instant::now();
        loop {
            let (ws, attempts) = match self
                .connect_within_grace(outage_start, ever_connected)
                .await
            {
                Ok(connected) => connected,
                Err(end) => return end,
            };
            let reconnect = ever_connected;
            ever_connected = true;
            match self.session(ws, reconnect, attempts).await {
                SessionEnd::ServerClosed => return EndReason::ServerClosed,
                SessionEnd::Stopped => return EndReason::Stopped,
                SessionEnd::Dropped(reason) => {
                    tracing::info!(stream = %self.seq.stream_sid(), %reason, "media stream socket dropped; reconnecting");
                    // What was queued belongs to the lost connection; the caller hears
                    // silence until the new one sends audio.
                    self.drop_playout();
                    self.shared
                        .reconnecting
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    Counters::bump(&self.counters.reconnects);
                    self.emit(StreamEvent::Reconnecting { reason });
                    outage_start = Instant::now();
                }
            }
        }
    }

    /// Connection attempts with backoff until one succeeds or the grace period that
    /// began at `outage_start` is over. The call's frames keep being drained meanwhile.
    async fn connect_within_grace(
        &mut self,
        outage_start: Instant,
        ever_connected: bool,
    ) -> Result<(WsStream, u32), EndReason> {
        let grace = self.config.grace;
        let deadline = outage_start + grace;
        let mut delay = self.config.backoff.initial;
        let mut attempts = 0u32;
        let mut last_error: Option<String> = None;
        let give_up = |reason: String| {
            let after = outage_start.elapsed();
            if ever_connected {
                EndReason::GaveUp { after, reason }
            } else {
                EndReason::FailedToConnect { after, reason }
            }
        };
        loop {
            attempts += 1;
            let url = self.url.clone();
            let connector = self.connector.clone();
            let ws_config = self.ws_config;
            let attempt = async move { connect::open(&url, connector.as_ref(), ws_config).await };
            tokio::pin!(attempt);
            let outcome = loop {
                tokio::select! {
                    result = &mut attempt => break Some(result),
                    () = sleep_until(deadline) => break None,
                    () = self.stop.cancelled() => return Err(EndReason::Stopped),
                    input = self.input.recv() => {
                        if !self.offline_input(input) {
                            return Err(EndReason::Stopped);
                        }
                    }
                }
            };
            match outcome {
                Some(Ok(ws)) => return Ok((ws, attempts)),
                Some(Err(e)) => {
                    tracing::debug!(stream = %self.seq.stream_sid(), attempt = attempts, error = %e, "media stream connect failed");
                    last_error = Some(e);
                }
                None => {
                    let pending = "the connection or WebSocket handshake did not complete";
                    let reason = match &last_error {
                        Some(e) => {
                            format!("no connection within {grace:?}: {pending} (before: {e})")
                        }
                        None => format!("no connection within {grace:?}: {pending}"),
                    };
                    return Err(give_up(reason));
                }
            }
            // Retry until the grace period is over, not until the next wait would be.
            let wake = (Instant::now() + delay).min(deadline);
            loop {
                tokio::select! {
                    () = sleep_until(wake) => break,
                    () = self.stop.cancelled() => return Err(EndReason::Stopped),
                    input = self.input.recv() => {
                        if !self.offline_input(input) {
                            return Err(EndReason::Stopped);
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                let e = last_error.unwrap_or_default();
                return Err(give_up(format!(
                    "no connection within {grace:?} ({attempts} attempts): {e}"
                )));
            }
            delay = (delay * 2).min(self.config.backoff.max);
        }
    }

    /// A call input while no socket is up: media time advances, nothing is sent.
    /// False when every handle is gone.
    fn offline_input(&mut self, input: Option<CallInput>) -> bool {
        match input {
            None => false,
            Some(CallInput::Audio { track, .. }) => {
                if self.config.start.tracks.contains(&track) {
                    self.uplink.skip(track);
                    Counters::bump(&self.counters.offline_frames);
                }
                true
            }
            Some(CallInput::Dtmf(_)) => {
                Counters::bump(&self.counters.offline_frames);
                true
            }
        }
    }

    async fn session(&mut self, mut ws: WsStream, reconnect: bool, attempts: u32) -> SessionEnd {
        self.seq.reset();
        // `connected` and `start` are the first two messages, before anything queued.
        let connected = Message::text(self.seq.connected().to_json());
        let start = Message::text(
            self.seq
                .start(&self.config.start, self.config.format, reconnect)
                .to_json(),
        );
        let hello = async {
            ws.feed(connected).await?;
            ws.send(start).await
        };
        match timeout(self.config.grace, hello).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return SessionEnd::Dropped(format!("sending start: {e}")),
            Err(_) => return SessionEnd::Dropped("sending start timed out".to_owned()),
        }
        self.shared
            .reconnecting
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.emit(if reconnect {
            StreamEvent::Resumed { attempts }
        } else {
            StreamEvent::Connected
        });

        let mut out = Outbox::new(self.config.send_queue.max(CONTROL_RESERVE + 1));
        // The wake-up sources live across iterations: re-registering a cancellation
        // and a `Notify` waiter on every frame was a visible cost.
        let stop = self.stop.clone();
        let mut cancelled = pin!(stop.cancelled());
        let shared = self.shared.clone();
        let mut acks = pin!(shared.acks_ready.notified());
        // The last read found nothing: wait for the socket's readiness before another.
        let mut read_idle = false;
        let end = loop {
            let input = &mut self.input;
            let wake = poll_fn(|cx| {
                if cancelled.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Stop);
                }
                if !out.is_idle()
                    && let Poll::Ready(Err(e)) = out.poll_write(&mut ws, cx)
                {
                    return Poll::Ready(Wake::WriteFailed(e));
                }
                if acks.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Acks);
                }
                if let Poll::Ready(input) = input.poll_recv(cx) {
                    return Poll::Ready(Wake::Input(input));
                }
                if !read_idle || poll_maybe_readable(&ws, cx) {
                    match Pin::new(&mut ws).poll_next(cx) {
                        Poll::Ready(frame) => {
                            read_idle = false;
                            return Poll::Ready(Wake::Frame(frame));
                        }
                        Poll::Pending => read_idle = true,
                    }
                }
                Poll::Pending
            })
            .await;
            match wake {
                Wake::Stop => {
                    self.say_stop(&mut out);
                    break SessionEnd::Stopped;
                }
                Wake::Acks => {
                    acks.set(shared.acks_ready.notified());
                    self.send_acks(&mut out);
                }
                Wake::Input(Some(input)) => self.on_input(input, &mut out),
                Wake::Input(None) => {
                    self.say_stop(&mut out);
                    break SessionEnd::Stopped;
                }
                Wake::Frame(frame) => {
                    if let Some(end) = self.on_frame(frame, &mut out) {
                        break end;
                    }
                }
                Wake::WriteFailed(e) => return SessionEnd::Dropped(format!("write: {e}")),
            }
        };
        if !matches!(end, SessionEnd::Dropped(_)) {
            // What is queued (`stop` and the close frame, or the reply to the server's
            // close), then the closing handshake; errors here change nothing.
            let _ = timeout(CLOSE_TIMEOUT, async {
                if poll_fn(|cx| out.poll_write(&mut ws, cx)).await.is_ok() {
                    let _ = SinkExt::close(&mut ws).await;
                }
            })
            .await;
        }
        end
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
        out: &mut Outbox,
    ) -> Option<SessionEnd> {
        match frame {
            None => Some(SessionEnd::Dropped(
                "the connection ended without a close frame".to_owned(),
            )),
            Some(Err(e)) => Some(SessionEnd::Dropped(e.to_string())),
            Some(Ok(Message::Text(text))) => {
                self.on_server_text(text.as_str(), out);
                None
            }
            Some(Ok(Message::Close(Some(frame)))) if frame.code == CloseCode::Normal => {
                Some(SessionEnd::ServerClosed)
            }
            Some(Ok(Message::Close(frame))) => Some(SessionEnd::Dropped(match frame {
                Some(f) => format!("the server closed with code {}", u16::from(f.code)),
                None => "the server closed without a status code".to_owned(),
            })),
            Some(Ok(Message::Binary(_))) => {
                Counters::bump(&self.counters.ignored_messages);
                None
            }
            // Pings are answered by tungstenite itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => None,
        }
    }

    fn on_server_text(&mut self, text: &str, out: &mut Outbox) {
        match parse_server_message(text) {
            Err(e) => {
                Counters::bump(&self.counters.bad_messages);
                tracing::debug!(stream = %self.seq.stream_sid(), error = %e, "bad message from media stream server");
            }
            Ok(ServerMessage::Media { payload }) => {
                if !self.config.bidirectional {
                    Counters::bump(&self.counters.ignored_messages);
                    return;
                }
                self.decoded.clear();
                self.decoder.decode(&payload, &mut self.decoded);
                let was_empty = {
                    let mut state = self.shared.lock();
                    let was_empty = state.playout.is_empty();
                    state.playout.push_audio(&self.decoded);
                    was_empty
                };
                if was_empty && !self.decoded.is_empty() {
                    self.shared.audio_ready.notify_one();
                }
                self.changed();
            }
            Ok(ServerMessage::Mark { name }) => {
                self.shared.lock().playout.push_mark(name);
                self.changed();
            }
            Ok(ServerMessage::Clear) => {
                // Marks already played are acknowledged first, then the cleared ones
                // (as Twilio and Telnyx return them), then the report.
                let (played, report) = {
                    let mut state = self.shared.lock();
                    let played: Vec<String> = state.acks.drain(..).collect();
                    (played, state.playout.clear())
                };
                self.decoder.reset();
                for name in &played {
                    self.send_control(out, |seq| seq.mark(name));
                }
                for mark in report.cleared_marks() {
                    self.send_control(out, |seq| seq.mark(&mark.name));
                }
                self.send_control(out, |seq| seq.cleared(&report));
                self.changed();
            }
            Ok(ServerMessage::Other { event }) => {
                Counters::bump(&self.counters.ignored_messages);
                tracing::trace!(stream = %self.seq.stream_sid(), %event, "ignored media stream event");
            }
        }
    }

    fn on_input(&mut self, input: CallInput, out: &mut Outbox) {
        match input {
            CallInput::Audio { track, pcm } => {
                if !self.config.start.tracks.contains(&track) {
                    return;
                }
                if out.room() <= CONTROL_RESERVE {
                    // Slow server: drop this frame (media time still advances, and no
                    // sequence number is spent on it).
                    Counters::bump(&self.counters.media_dropped);
                    self.uplink.skip(track);
                    return;
                }
                match self.uplink.frame(track, &pcm) {
                    Ok(chunk) => {
                        let msg = Message::text(self.seq.media_json(&chunk));
                        if !out.push(msg) {
                            Counters::bump(&self.counters.media_dropped);
                        }
                    }
                    Err(e) => {
                        Counters::bump(&self.counters.input_dropped);
                        tracing::debug!(error = %e, "media stream frame refused");
                    }
                }
            }
            CallInput::Dtmf(digit) => self.send_control(out, |seq| seq.dtmf(digit)),
        }
    }

    /// Queues a non-media message if there is room (then its sequence number is used).
    fn send_control(
        &mut self,
        out: &mut Outbox,
        build: impl FnOnce(&mut Sequencer) -> SwitchMessage,
    ) {
        if out.room() == 0 {
            Counters::bump(&self.counters.control_dropped);
            return;
        }
        let msg = Message::text(build(&mut self.seq).to_json());
        if !out.push(msg) {
            Counters::bump(&self.counters.control_dropped);
        }
    }

    fn send_acks(&mut self, out: &mut Outbox) {
        let names: Vec<String> = self.shared.lock().acks.drain(..).collect();
        for name in &names {
            self.send_control(out, |seq| seq.mark(name));
        }
    }

    fn say_stop(&mut self, out: &mut Outbox) {
        let start = self.config.start.clone();
        self.send_control(out, |seq| seq.stop(&start));
        let close = Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "stream stopped".into(),
        }));
        if !out.push(close) {
            Counters::bump(&self.counters.control_dropped);
        }
    }

    fn drop_playout(&mut self) {
        {
            let mut state = self.shared.lock();
            state.playout.clear();
            state.acks.clear();
        }
        self.decoder.reset();
        self.changed();
    }

    fn changed(&self) {
        self.shared.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}
