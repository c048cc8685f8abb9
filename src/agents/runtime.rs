//! An agent's conversation on a call: one more stream end on the media pipeline. The
//! call's leg feeds this session's [`StreamHandle`] exactly as it feeds a WebSocket
//! stream (decoded 20 ms frames in; a playout queue its pacer pulls from), and the
//! session moves the audio to and from a realtime model provider
//! ([`super::provider`]):
//! - caller frames → resampled to the provider's input rate → the provider;
//! - the provider's audio (24 kHz PCM) → the playout, resampled to the call's rate by it;
//! - the provider's speech-start (the caller talks over the agent) → the playout is
//!   flushed and the provider told how much of its answer the caller heard;
//! - tool calls → the agent's tools ([`super::tools`]) or the built-ins `transfer_call`
//!   and `end_call`; the result goes back to the model;
//! - transcripts and tool calls → the conversation's log in the store.
//!
//! The call sees [`StreamEvent`]s: `Connected` once the provider took the setup, and
//! `Ended` (`ServerClosed` when the agent ended the call, `GaveUp` when the provider
//! failed, `Stopped` when the call went away, `Invalid` when the agent cannot take
//! calls).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures_util::future::BoxFuture;
use media::resample::Resampler;
use media::stream::StreamFormat;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::LiveConversations;
use super::model::{
    Agent, AgentStatus, AgentType, Conversation, ConversationChannel, ConversationStatus,
    GreetingType, MessageRole, NewMessage, PromptType, Tool,
};
use super::provider::{ProviderConfig, ProviderEvent, Role, SessionSetup, ToolSpec};
use super::tools::{self, ConversationRef};
use crate::store::Store;
use crate::streams::{CallInput, EndReason, Stream, StreamEnd, StreamEvent};

/// Audio from the provider held for playout at most (a long answer arrives faster than
/// it plays).
const MAX_PLAYOUT_MS: u32 = 120_000;
/// How long `end_call` waits for the goodbye to play out at most.
const MAX_GOODBYE: Duration = Duration::from_secs(15);
/// Keypad digits are told to the model once none has come for this long (or at `#`).
const KEYPAD_GAP: Duration = Duration::from_millis(1500);
/// The built-in tools every agent has.
pub const TRANSFER_CALL: &str = "transfer_call";
pub const END_CALL: &str = "end_call";

/// What the call offers the agent: a transfer of the caller to a number.
pub trait CallControl: Send + Sync {
    fn transfer(&self, to: String) -> BoxFuture<'static, Result<Transferred, String>>;
}

/// How the caller was transferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transferred {
    /// The caller's side accepted a REFER and calls the number itself; the conversation
    /// lasts until it hangs up on us.
    Referred,
    /// The switch dialled the number and bridged the caller to it: the agent is out of
    /// the call, and its conversation ends once the model has the result.
    Bridged,
}

impl Transferred {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Referred => "refer",
            Self::Bridged => "bridged",
        }
    }
}

/// Counters of agent sessions, for `/metrics`.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    started: AtomicU64,
    /// Ended, by outcome: completed (the agent or the caller ended it), failed (the
    /// provider), refused (the agent could not take it).
    completed: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    tool_calls: AtomicU64,
    tool_failures: AtomicU64,
    barge_ins: AtomicU64,
}

impl AgentMetrics {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ended = load(&self.completed) + load(&self.failed) + load(&self.refused);
        let _ = writeln!(out, "# TYPE switchyard_agent_sessions_active gauge");
        let _ = writeln!(
            out,
            "switchyard_agent_sessions_active {}",
            load(&self.started).saturating_sub(ended)
        );
        let _ = writeln!(out, "# TYPE switchyard_agent_sessions_ended_total counter");
        for (outcome, c) in [
            ("completed", &self.completed),
            ("failed", &self.failed),
            ("refused", &self.refused),
        ] {
            let _ = writeln!(
                out,
                "switchyard_agent_sessions_ended_total{{outcome=\"{outcome}\"}} {}",
                load(c)
            );
        }
        let _ = writeln!(out, "# TYPE switchyard_agent_tool_calls_total counter");
        let _ = writeln!(
            out,
            "switchyard_agent_tool_calls_total {}",
            load(&self.tool_calls)
        );
        let _ = writeln!(out, "# TYPE switchyard_agent_tool_failures_total counter");
        let _ = writeln!(
            out,
            "switchyard_agent_tool_failures_total {}",
            load(&self.tool_failures)
        );
        let _ = writeln!(out, "# TYPE switchyard_agent_barge_ins_total counter");
        let _ = writeln!(
            out,
            "switchyard_agent_barge_ins_total {}",
            load(&self.barge_ins)
        );
    }
}

/// What every agent session needs from the switch.
#[derive(Clone)]
pub struct AgentDeps {
    pub store: Arc<dyn Store>,
    pub config: Arc<crate::config::Config>,
    pub live: Arc<LiveConversations>,
    pub http: reqwest::Client,
    /// Opens provider sockets (the provider URLs are the operator's configuration).
    pub connector: Arc<dyn crate::streams::Connector>,
    /// Numbers assigned to agents (kept in memory so that inbound calls to other numbers
    /// cost no lookup); [`AgentDeps::refresh_numbers`] after every change.
    pub numbers: Arc<dashmap::DashSet<String>>,
    pub metrics: Arc<AgentMetrics>,
}

impl AgentDeps {
    /// Reloads the assigned numbers from the store.
    pub async fn refresh_numbers(&self) -> Result<(), crate::store::StoreError> {
        let numbers = self.store.assigned_agent_numbers().await?;
        self.numbers.retain(|n| numbers.contains(n));
        for n in numbers {
            self.numbers.insert(n);
        }
        Ok(())
    }
}

impl std::fmt::Debug for AgentDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentDeps").finish_non_exhaustive()
    }
}

/// The conversation's party and where transfers go.
#[derive(Debug, Clone)]
pub struct Party {
    pub tenant: String,
    pub agent_id: String,
    /// The switch's call id (`None` for a browser session).
    pub call_id: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    /// The caller's number, or `web`.
    pub contact: String,
    pub channel: ConversationChannel,
    /// The hand-off of the number the call came in on (before the agent's own).
    pub handoff: Option<String>,
    /// Where a browser session hears of the conversation's id, transcripts and flushes
    /// (`None` on calls: the phone has no screen).
    pub notices: Option<mpsc::Sender<SessionNotice>>,
}

/// What a session reports besides audio, for a browser to show (best effort: a full
/// channel drops the notice rather than hold the session up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionNotice {
    /// The conversation was opened with this id.
    Conversation(String),
    /// A final transcript line.
    Transcript { role: MessageRole, text: String },
    /// The caller talked over the agent: the queued audio was flushed.
    Cleared { queued_ms: u64 },
}

/// The playout format: what both providers speak out (PCM16 at 24 kHz).
pub fn playout_format() -> StreamFormat {
    StreamFormat::from_mime("audio/x-l16", 24_000).unwrap_or(StreamFormat::MULAW_8K)
}

/// Starts an agent session on a call whose frames run at `call_rate`. The agent is
/// loaded (and checked active) by the session itself: a missing or inactive one ends it
/// with `Invalid`.
pub fn spawn(
    deps: AgentDeps,
    party: Party,
    call_rate: u32,
    control: Option<Arc<dyn CallControl>>,
) -> Result<Stream, EndReason> {
    let (handle, end) = crate::streams::plumbing(playout_format(), call_rate, MAX_PLAYOUT_MS, 50)?;
    let (events_tx, events_rx) = mpsc::channel(32);
    let session = Session {
        deps,
        party,
        call_rate,
        end,
        events: events_tx,
        control,
        conversation: None,
        pushed_samples: 0,
        response_done: true,
        journal: None,
    };
    let task = tokio::spawn(session.run());
    Ok(Stream {
        handle,
        events: events_rx,
        task,
    })
}

struct Session {
    deps: AgentDeps,
    party: Party,
    call_rate: u32,
    end: StreamEnd,
    events: mpsc::Sender<StreamEvent>,
    control: Option<Arc<dyn CallControl>>,
    conversation: Option<ConversationRef>,
    /// Provider samples (24 kHz) pushed since the current answer began: what the caller
    /// heard of it is this minus what is still queued.
    pushed_samples: u64,
    /// The latest answer is complete: the next audio starts another.
    response_done: bool,
    /// The conversation log's writer.
    journal: Option<mpsc::UnboundedSender<Journal>>,
}

/// How a session ends, and the conversation's status.
enum Outcome {
    AgentEnded,
    CallGone,
    Failed(String),
}

impl Session {
    async fn run(mut self) -> EndReason {
        AgentMetrics::bump(&self.deps.metrics.started);
        let reason = match self.prepare().await {
            Ok((agent, tools, setup, provider)) => {
                let outcome = self.converse(&agent, &tools, setup, &provider).await;
                self.finish(outcome).await
            }
            Err(reason) => {
                if let Some(c) = &self.conversation {
                    self.end_conversation(&c.conversation_id.clone(), ConversationStatus::Failed)
                        .await;
                }
                reason
            }
        };
        if let Some(c) = &self.conversation {
            self.deps
                .live
                .unregister(&self.party.agent_id, &c.conversation_id);
        }
        let m = &self.deps.metrics;
        AgentMetrics::bump(match &reason {
            EndReason::ServerClosed | EndReason::Stopped => &m.completed,
            EndReason::Invalid(_) => &m.refused,
            _ => &m.failed,
        });
        tracing::info!(agent = %self.party.agent_id, ?reason, "agent session ended");
        let _ = self.events.try_send(StreamEvent::Ended(reason.clone()));
        reason
    }

    /// Loads the agent and its tools, opens the conversation and builds the provider
    /// setup (fetching a dynamic prompt).
    async fn prepare(
        &mut self,
    ) -> Result<(Agent, Vec<Tool>, SessionSetup, ProviderConfig), EndReason> {
        let now = Utc::now();
        let store = self.deps.store.clone();
        let agent = store
            .get_agent(&self.party.tenant, &self.party.agent_id, now)
            .await
            .map_err(|e| EndReason::Invalid(format!("agent lookup failed: {e}")))?
            .ok_or_else(|| EndReason::Invalid("no such agent".to_owned()))?;
        if agent.status != AgentStatus::Active {
            return Err(EndReason::Invalid(format!(
                "the agent is {}, not active",
                agent.status.as_str()
            )));
        }
        let tools: Vec<Tool> = store
            .list_agent_tools(&self.party.tenant, &agent.id)
            .await
            .map_err(|e| EndReason::Invalid(format!("agent tools lookup failed: {e}")))?
            .into_iter()
            .filter(|t| t.enabled && agent.agent_type != AgentType::Static)
            .collect();
        let conversation = Conversation::start(
            &self.party.tenant,
            &agent.id,
            self.party.channel,
            &self.party.contact,
            self.party.call_id.as_deref(),
            now,
        );
        let conv = ConversationRef {
            conversation_id: conversation.id.clone(),
            call_id: self.party.call_id.clone(),
            from: self.party.from.clone(),
            to: self.party.to.clone(),
            channel: self.party.channel.as_str(),
        };
        // The log is written by its own task, in order: no store write waits in the
        // audio's path (the greeting included).
        self.journal = Some(spawn_journal(store.clone(), conversation));
        self.conversation = Some(conv.clone());
        self.notify(SessionNotice::Conversation(conv.conversation_id.clone()));

        let (mut identity, mut instructions) = (agent.identity.clone(), agent.instructions.clone());
        let mut greeting = match agent.greeting_type {
            GreetingType::Static => agent.static_greeting.clone(),
            _ => None,
        };
        if agent.prompt_type == PromptType::Dynamic {
            match tools::assistant_request(&self.deps.http, &agent, &conv).await {
                Ok(prompt) => {
                    identity = prompt.identity.or(identity);
                    instructions = prompt.instructions.or(instructions);
                    if agent.greeting_type == GreetingType::Dynamic {
                        greeting = prompt.greeting;
                    }
                }
                Err(e) => {
                    return Err(EndReason::FailedToConnect {
                        after: Duration::ZERO,
                        reason: format!("agent:assistant-request failed: {e}"),
                    });
                }
            }
        }
        let instructions = [identity.as_deref(), instructions.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n\n");
        if let Some(text) = &instructions_line(&instructions) {
            self.log(MessageRole::System, Some(text.clone()), None, None, None)
                .await;
        }

        let mut specs: Vec<ToolSpec> = tools
            .iter()
            .map(|t| ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameter_schema.clone(),
            })
            .collect();
        specs.extend(builtin_tools(self.party.call_id.is_some()));
        let setup = SessionSetup {
            model: agent.model.clone(),
            instructions,
            voice: agent.voice_name.clone(),
            language: Some(agent.language.clone()).filter(|l| !l.is_empty()),
            greeting,
            tools: specs,
        };
        let kind = super::provider::provider_for_model(&agent.model);
        let mut provider = self
            .deps
            .config
            .agents
            .providers
            .get(kind.as_str())
            .cloned()
            .unwrap_or_default();
        if provider.api_key.is_none() && provider.api_key_env.is_none() {
            provider.api_key_env = Some(
                match kind {
                    super::provider::ProviderKind::OpenAi => "OPENAI_API_KEY",
                    super::provider::ProviderKind::Gemini => "GEMINI_API_KEY",
                }
                .to_owned(),
            );
        }
        Ok((agent, tools, setup, provider))
    }

    async fn converse(
        &mut self,
        agent: &Agent,
        tools: &[Tool],
        setup: SessionSetup,
        provider: &ProviderConfig,
    ) -> Outcome {
        let Some(conv) = self.conversation.clone() else {
            return Outcome::Failed("no conversation".to_owned());
        };
        let deleted = self.deps.live.register(&agent.id, &conv.conversation_id);
        let greeting = setup.greeting.clone();
        let mut session =
            super::provider::driver::spawn(provider.clone(), setup, self.deps.connector.clone());
        let input_rate = session.input_rate();
        let output_rate = session.output_rate();
        let Ok(mut up) = Resampler::new(self.call_rate, input_rate) else {
            session.close();
            return Outcome::Failed(format!(
                "cannot resample {} Hz to {input_rate} Hz",
                self.call_rate
            ));
        };
        // Both providers speak at the playout's rate; another would be resampled here.
        let mut down = match Resampler::new(output_rate, 24_000) {
            Ok(r) if !r.is_passthrough() => Some(r),
            _ => None,
        };
        let mut up_buf = vec![0i16; up.output_frame_len()];
        let mut ready = false;
        let mut assistant_text = String::new();
        let mut ending: Option<tokio::time::Instant> = None;
        let (tool_tx, mut tool_rx) = mpsc::channel::<(String, String, Value)>(16);
        // Keypad digits go to the model together, once the caller stops pressing.
        let mut keypad = String::new();
        let mut keypad_due: Option<tokio::time::Instant> = None;
        if let Some(g) = &greeting {
            self.log(MessageRole::Assistant, Some(g.clone()), None, None, None)
                .await;
        }

        let outcome = loop {
            tokio::select! {
                () = self.end.stop.cancelled() => break Outcome::CallGone,
                () = deleted.cancelled() => {
                    tracing::info!(agent = %agent.id, "agent deleted: ending its conversation");
                    break Outcome::AgentEnded;
                }
                () = sleep_until_opt(ending) => break Outcome::AgentEnded,
                input = self.end.input.recv() => match input {
                    None => break Outcome::CallGone,
                    Some(CallInput::Audio { pcm, .. }) => {
                        if ready && up.process(&pcm, &mut up_buf).is_ok() {
                            session.send_audio(up_buf.clone());
                        }
                    }
                    Some(CallInput::Dtmf(digit)) => {
                        keypad.push(digit);
                        keypad_due = Some(tokio::time::Instant::now() + KEYPAD_GAP);
                        if digit == '#' {
                            keypad_due = Some(tokio::time::Instant::now());
                        }
                    }
                },
                () = sleep_until_opt(keypad_due) => {
                    keypad_due = None;
                    let text = format!("[The caller pressed on the keypad: {}]", std::mem::take(&mut keypad));
                    tracing::info!(agent = %agent.id, %text, "keypad digits to the model");
                    self.log(MessageRole::User, Some(text.clone()), None, None, None).await;
                    session.user_text(text);
                }
                Some((call_id, name, result)) = tool_rx.recv() => {
                    // Bridged to a person: the agent has nobody left to talk to.
                    let handed_off = name == TRANSFER_CALL
                        && result["method"] == Transferred::Bridged.as_str();
                    self.log(MessageRole::ToolResult, None, Some(name.clone()), None, Some(result.clone())).await;
                    session.tool_result(&call_id, &name, result);
                    if handed_off {
                        tracing::info!(agent = %agent.id, "caller handed off: the conversation ends");
                        break Outcome::AgentEnded;
                    }
                }
                event = session.recv() => {
                    let Some(event) = event else {
                        break Outcome::Failed("the model provider session ended".to_owned());
                    };
                    match event {
                        ProviderEvent::Ready => {
                            if !ready {
                                ready = true;
                                let _ = self.events.try_send(StreamEvent::Connected);
                            }
                        }
                        ProviderEvent::Audio(pcm) => {
                            let pcm = match down.as_mut() {
                                Some(r) => resample_all(r, &pcm),
                                None => pcm,
                            };
                            if self.response_done {
                                // The first audio of a new answer: its item starts here.
                                self.response_done = false;
                                self.pushed_samples = 0;
                            }
                            self.pushed_samples += pcm.len() as u64;
                            self.end.push_audio(&pcm);
                        }
                        ProviderEvent::SpeechStarted => {
                            let (queued_ms, _) = self.end.clear();
                            self.notify(SessionNotice::Cleared { queued_ms });
                            // The queue holds the end of earlier answers, then the latest
                            // one's unplayed part: what was heard of the latest answer (the
                            // item the provider truncates) is what of it left the queue.
                            let pushed_ms = self.pushed_samples * 1000 / 24_000;
                            let heard_ms = pushed_ms.saturating_sub(queued_ms.min(pushed_ms));
                            if queued_ms > 0 {
                                AgentMetrics::bump(&self.deps.metrics.barge_ins);
                                tracing::debug!(heard_ms, dropped_ms = queued_ms, "barge-in: agent audio flushed");
                                session.truncate(u32::try_from(heard_ms).unwrap_or(u32::MAX));
                            }
                            self.pushed_samples = 0;
                            self.response_done = true;
                            if ending.is_some() {
                                // The goodbye was cut short: no need to wait for it.
                                ending = Some(tokio::time::Instant::now() + Duration::from_millis(300));
                            }
                        }
                        ProviderEvent::SpeechStopped => {}
                        ProviderEvent::ResponseDone => {
                            // The next answer's audio counts from its first sample (this
                            // one's stays the latest until then).
                            self.response_done = true;
                            if !assistant_text.is_empty() {
                                let text = std::mem::take(&mut assistant_text);
                                self.notify(SessionNotice::Transcript { role: MessageRole::Assistant, text: text.clone() });
                                self.log(MessageRole::Assistant, Some(text), None, None, None).await;
                            }
                        }
                        ProviderEvent::Transcript { role, text, is_final } => match role {
                            Role::User if is_final => {
                                self.notify(SessionNotice::Transcript { role: MessageRole::User, text: text.clone() });
                                self.log(MessageRole::User, Some(text), None, None, None).await;
                            }
                            Role::Assistant if is_final => {
                                assistant_text.clear();
                                self.notify(SessionNotice::Transcript { role: MessageRole::Assistant, text: text.clone() });
                                self.log(MessageRole::Assistant, Some(text), None, None, None).await;
                            }
                            Role::Assistant => assistant_text.push_str(&text),
                            Role::User => {}
                        },
                        ProviderEvent::ToolCall { call_id, name, arguments } => {
                            AgentMetrics::bump(&self.deps.metrics.tool_calls);
                            self.log(MessageRole::ToolCall, None, Some(name.clone()), Some(arguments.clone()), None).await;
                            match name.as_str() {
                                END_CALL => {
                                    let result = json!({"ok": true, "note": "the call ends after your last words"});
                                    self.log(MessageRole::ToolResult, None, Some(name.clone()), None, Some(result.clone())).await;
                                    session.tool_result(&call_id, &name, result);
                                    // Whatever is queued (the goodbye) plays first.
                                    let queued = Duration::from_millis(self.end.queued_ms());
                                    let wait = (queued + Duration::from_millis(1500)).min(MAX_GOODBYE);
                                    ending = Some(tokio::time::Instant::now() + wait);
                                }
                                TRANSFER_CALL => {
                                    let to = self.party.handoff.clone().or_else(|| agent.handoff_phone_number.clone());
                                    let control = self.control.clone();
                                    let tx = tool_tx.clone();
                                    tokio::spawn(async move {
                                        let result = match (to, control) {
                                            (Some(to), Some(control)) => match control.transfer(to.clone()).await {
                                                Ok(how) => json!({"ok": true, "transferred_to": to, "method": how.as_str()}),
                                                Err(e) => json!({"error": format!("transfer failed: {e}")}),
                                            },
                                            (None, _) => json!({"error": "no hand-off number is configured"}),
                                            (_, None) => json!({"error": "this conversation cannot be transferred"}),
                                        };
                                        let _ = tx.send((call_id, name, result)).await;
                                    });
                                }
                                _ => match tools.iter().find(|t| t.name == name) {
                                    Some(tool) => {
                                        let (client, agent, tool, conv, tx) = (
                                            self.deps.http.clone(),
                                            agent.clone(),
                                            tool.clone(),
                                            conv.clone(),
                                            tool_tx.clone(),
                                        );
                                        let metrics = self.deps.metrics.clone();
                                        tokio::spawn(async move {
                                            let (result, ok) = tools::run_tool(&client, &agent, &tool, &conv, &call_id, &arguments).await;
                                            if !ok {
                                                AgentMetrics::bump(&metrics.tool_failures);
                                            }
                                            let _ = tx.send((call_id, name, result)).await;
                                        });
                                    }
                                    None => {
                                        let result = json!({"error": format!("no tool named {name}")});
                                        session.tool_result(&call_id, &name, result);
                                    }
                                },
                            }
                        }
                        ProviderEvent::ToolCallsCancelled { call_ids } => {
                            tracing::debug!(?call_ids, "model cancelled tool calls");
                        }
                        ProviderEvent::Error { message, fatal } => {
                            if fatal {
                                break Outcome::Failed(message);
                            }
                            tracing::info!(agent = %agent.id, %message, "model provider error");
                        }
                    }
                }
            }
        };
        self.deps.live.unregister(&agent.id, &conv.conversation_id);
        session.shutdown().await;
        outcome
    }

    async fn finish(&mut self, outcome: Outcome) -> EndReason {
        let Some(conv) = self.conversation.clone() else {
            return EndReason::Stopped;
        };
        let (status, reason) = match outcome {
            Outcome::AgentEnded => (ConversationStatus::Completed, EndReason::ServerClosed),
            Outcome::CallGone => (ConversationStatus::Completed, EndReason::Stopped),
            Outcome::Failed(why) => (
                ConversationStatus::Failed,
                EndReason::GaveUp {
                    after: Duration::ZERO,
                    reason: why,
                },
            ),
        };
        self.end_conversation(&conv.conversation_id, status).await;
        reason
    }

    /// Ends the conversation once every line before has been written (awaited: the call
    /// ends after its conversation does).
    async fn end_conversation(&self, id: &str, status: ConversationStatus) {
        let Some(journal) = &self.journal else {
            return;
        };
        let (done, written) = tokio::sync::oneshot::channel();
        if journal.send(Journal::End(status, done)).is_ok() {
            let _ = written.await;
        } else {
            tracing::warn!(conversation = id, "agent conversation end not recorded");
        }
    }

    async fn log(
        &self,
        role: MessageRole,
        text: Option<String>,
        tool_name: Option<String>,
        tool_arguments: Option<Value>,
        tool_result: Option<Value>,
    ) {
        let Some(journal) = &self.journal else {
            return;
        };
        let message = NewMessage {
            role,
            text,
            tool_name,
            tool_arguments,
            tool_result,
            at: Utc::now(),
        };
        let _ = journal.send(Journal::Append(message));
    }
}

/// A conversation log's writes, in order.
enum Journal {
    Append(NewMessage),
    End(ConversationStatus, tokio::sync::oneshot::Sender<()>),
}

/// Creates `conversation` and then writes what comes, in order, on a task of its own.
fn spawn_journal(
    store: Arc<dyn Store>,
    conversation: Conversation,
) -> mpsc::UnboundedSender<Journal> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let id = conversation.id.clone();
        if let Err(e) = store.create_conversation(&conversation).await {
            tracing::warn!(error = %e, "agent conversation not recorded");
        }
        while let Some(op) = rx.recv().await {
            match op {
                Journal::Append(message) => {
                    if let Err(e) = store.append_conversation_message(&id, &message).await {
                        tracing::warn!(error = %e, "agent transcript line not recorded");
                    }
                }
                Journal::End(status, done) => {
                    if let Err(e) = store.end_conversation(&id, status, Utc::now()).await {
                        tracing::warn!(error = %e, "agent conversation end not recorded");
                    }
                    let _ = done.send(());
                }
            }
        }
    });
    tx
}

impl Session {
    fn notify(&self, notice: SessionNotice) {
        if let Some(tx) = &self.party.notices {
            let _ = tx.try_send(notice);
        }
    }
}

/// The system prompt's transcript line (none when empty).
fn instructions_line(instructions: &str) -> Option<String> {
    (!instructions.is_empty()).then(|| instructions.to_owned())
}

/// `end_call` always; `transfer_call` on calls.
fn builtin_tools(on_a_call: bool) -> Vec<ToolSpec> {
    let mut tools = vec![ToolSpec {
        name: END_CALL.to_owned(),
        description: "End the conversation and hang up, after saying goodbye.".to_owned(),
        parameters: json!({"type": "object", "properties": {}}),
    }];
    if on_a_call {
        tools.push(ToolSpec {
            name: TRANSFER_CALL.to_owned(),
            description: "Transfer the caller to a human colleague.".to_owned(),
            parameters: json!({
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "Why the caller is transferred"}},
            }),
        });
    }
    tools
}

/// Resamples any length (whole 20 ms frames; a tail shorter than a frame is padded).
fn resample_all(r: &mut Resampler, pcm: &[i16]) -> Vec<i16> {
    let n = r.input_frame_len().max(1);
    let mut out = Vec::with_capacity(pcm.len() * r.output_frame_len() / n + 1);
    let mut frame = vec![0i16; r.output_frame_len()];
    for chunk in pcm.chunks(n) {
        let mut input = chunk.to_vec();
        input.resize(n, 0);
        if let Ok(m) = r.process(&input, &mut frame) {
            out.extend_from_slice(&frame[..m]);
        }
    }
    out
}

/// Sleeps until `at`; pends forever without one.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
