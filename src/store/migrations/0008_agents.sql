-- AI agents, their tools, number assignments, conversations and realtime session tokens
-- (portable DDL, as 0001).

-- JSON columns (channels, server_headers) are TEXT; status is draft, active or inactive.
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    identity TEXT,
    instructions TEXT,
    prompt_type TEXT NOT NULL,
    language TEXT NOT NULL,
    voice_name TEXT,
    greeting_type TEXT NOT NULL,
    static_greeting TEXT,
    channels TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    server_url TEXT,
    server_headers TEXT NOT NULL,
    server_secret TEXT,
    handoff_phone_number TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX agents_tenant_created ON agents (tenant, created_at, id);
CREATE INDEX agents_tenant_status ON agents (tenant, status);

-- The key makes a number reach one agent of the whole switch.
CREATE TABLE agent_numbers (
    phone_number TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    handoff_phone_number TEXT,
    position BIGINT NOT NULL
);

CREATE INDEX agent_numbers_agent ON agent_numbers (agent_id, position);

-- One row per tenant, written by every agent update: it serialises a tenant's
-- activations (count, then activate) on every node.
CREATE TABLE agent_tenant_locks (
    tenant TEXT PRIMARY KEY,
    writes BIGINT NOT NULL
);

CREATE TABLE agent_tools (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    parameter_schema TEXT NOT NULL,
    response_schema TEXT,
    timeout_ms BIGINT NOT NULL,
    on_error TEXT NOT NULL,
    enabled BIGINT NOT NULL,
    tool_url TEXT,
    tool_method TEXT NOT NULL,
    tool_headers TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX agent_tools_name ON agent_tools (agent_id, name);

-- Conversations outlive their agent (history): no foreign key.
CREATE TABLE agent_conversations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    contact TEXT NOT NULL,
    call_id TEXT,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    message_count BIGINT NOT NULL
);

CREATE INDEX agent_conversations_agent ON agent_conversations (agent_id, started_at, id);

-- Transcript lines; seq counts from 1 in each conversation. JSON as TEXT.
CREATE TABLE agent_conversation_messages (
    conversation_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    role TEXT NOT NULL,
    text TEXT,
    tool_name TEXT,
    tool_arguments TEXT,
    tool_result TEXT,
    at BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);

-- Redeemed realtime session tokens, kept until they expire: a second redeem of the same
-- token id fails on the key (on any node, after a restart).
CREATE TABLE agent_realtime_tokens (
    jti TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE INDEX agent_realtime_tokens_expiry ON agent_realtime_tokens (expires_at);
