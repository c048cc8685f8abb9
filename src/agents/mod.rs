//! AI voice agents: their stored configuration (`model`), the short-lived tokens a
//! browser realtime session is opened with (`realtime`), the registry of live
//! conversations that lets `DELETE /api/v1/agents/{id}` end an agent's conversations, and
//! the realtime model providers a conversation's audio goes to (`provider`).
//!
//! What the runtime calls here and in the store:
//! - `Store::agent_for_number(number)` for an inbound call, `Store::get_agent` for a
//!   browser session, after [`realtime::redeem_realtime_token`];
//! - [`LiveConversations::register`] when a conversation starts (its token is cancelled
//!   when the agent is deleted: end the conversation gracefully then), and
//!   [`LiveConversations::unregister`] when it ends;
//! - `Store::create_conversation`, `Store::append_conversation_message`,
//!   `Store::end_conversation` for the conversation log.

pub mod model;
pub mod provider;
pub mod realtime;
pub mod runtime;
pub mod tools;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

/// The live conversations of each agent, with the token that asks each to end.
#[derive(Debug, Default)]
pub struct LiveConversations {
    by_agent: DashMap<String, Vec<(String, CancellationToken)>>,
}

impl LiveConversations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a conversation that starts; the token is cancelled when the agent is
    /// deleted. Register before reading the agent the conversation runs: a delete that
    /// comes in between is then seen either way (the agent is gone, or the token fires).
    pub fn register(&self, agent_id: &str, conversation_id: &str) -> CancellationToken {
        let token = CancellationToken::new();
        self.by_agent
            .entry(agent_id.to_owned())
            .or_default()
            .push((conversation_id.to_owned(), token.clone()));
        token
    }

    /// Forgets a conversation that ended.
    pub fn unregister(&self, agent_id: &str, conversation_id: &str) {
        if let dashmap::Entry::Occupied(mut entry) = self.by_agent.entry(agent_id.to_owned()) {
            entry.get_mut().retain(|(id, _)| id != conversation_id);
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }

    /// Asks every live conversation of the agent to end (cancels their tokens) and forgets
    /// them; how many there were.
    pub fn end_agent(&self, agent_id: &str) -> usize {
        let Some((_, live)) = self.by_agent.remove(agent_id) else {
            return 0;
        };
        for (_, token) in &live {
            token.cancel();
        }
        live.len()
    }

    /// The agent's live conversations now.
    pub fn count(&self, agent_id: &str) -> usize {
        self.by_agent.get(agent_id).map_or(0, |v| v.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_agent_cancels_only_that_agents_conversations() {
        let live = LiveConversations::new();
        let a1 = live.register("agt_a", "conv_1");
        let a2 = live.register("agt_a", "conv_2");
        let b = live.register("agt_b", "conv_3");
        live.unregister("agt_a", "conv_2");
        assert_eq!(live.count("agt_a"), 1);
        assert_eq!(live.end_agent("agt_a"), 1);
        assert!(a1.is_cancelled());
        assert!(!a2.is_cancelled(), "unregistered before the delete");
        assert!(!b.is_cancelled());
        assert_eq!(live.count("agt_a"), 0);
        assert_eq!(live.end_agent("agt_a"), 0);
        live.unregister("agt_b", "conv_3");
        assert_eq!(live.count("agt_b"), 0);
    }
}
