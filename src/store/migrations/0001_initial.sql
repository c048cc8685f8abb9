-- Portable DDL: runs unchanged on SQLite and PostgreSQL.
-- Timestamps are BIGINT epoch milliseconds, JSON is TEXT, booleans are BIGINT 0/1.

CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    webhook_secret TEXT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    role TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    direction TEXT NOT NULL,
    to_uri TEXT NOT NULL,
    from_uri TEXT NOT NULL,
    agent_id TEXT,
    status TEXT NOT NULL,
    record BIGINT NOT NULL,
    recording_url TEXT,
    webhook_url TEXT,
    max_duration BIGINT NOT NULL,
    ring_timeout BIGINT NOT NULL,
    metadata TEXT NOT NULL,
    trunk TEXT,
    sip_call_id TEXT,
    sip_code BIGINT,
    sip_reason TEXT,
    q850_cause BIGINT,
    end_reason TEXT,
    rtp_packets_received BIGINT NOT NULL,
    rtp_bytes_received BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    answered_at BIGINT,
    ended_at BIGINT,
    duration_seconds BIGINT
);

CREATE INDEX calls_tenant_created ON calls (tenant, created_at, id);
CREATE INDEX calls_status ON calls (status);

CREATE TABLE call_events (
    id TEXT PRIMARY KEY,
    call_id TEXT NOT NULL,
    tenant TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    webhook_url TEXT,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT,
    UNIQUE (call_id, sequence)
);

-- The deliverer's scan: pending rows by due time.
CREATE INDEX call_events_due ON call_events (state, next_attempt_at);
