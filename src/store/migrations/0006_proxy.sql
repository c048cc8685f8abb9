-- Number-masking proxy sessions (portable DDL, as 0001).

-- The tenant's pool of proxy numbers; voice/messaging are 0/1.
CREATE TABLE proxy_numbers (
    tenant TEXT NOT NULL,
    number TEXT NOT NULL,
    trunk TEXT NOT NULL,
    voice BIGINT NOT NULL,
    messaging BIGINT NOT NULL,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, number)
);

-- A number reaches one tenant: calls and messages to it are looked up by number alone.
CREATE UNIQUE INDEX proxy_numbers_number ON proxy_numbers (number);

-- Two participants a session; status is written as open, closed or expired (an open row
-- past expires_at reads as expired until the sweep marks it).
CREATE TABLE proxy_sessions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    mode TEXT NOT NULL,
    participant_a TEXT NOT NULL,
    proxy_a TEXT NOT NULL,
    participant_b TEXT NOT NULL,
    proxy_b TEXT NOT NULL,
    metadata TEXT NOT NULL,
    webhook_url TEXT,
    max_call_duration BIGINT,
    record BIGINT NOT NULL,
    unknown_caller_code BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    closed_at BIGINT
);

CREATE INDEX proxy_sessions_tenant_created ON proxy_sessions (tenant, created_at, id);
CREATE INDEX proxy_sessions_pair ON proxy_sessions (tenant, participant_a, participant_b);
CREATE INDEX proxy_sessions_open_expiry ON proxy_sessions (expires_at) WHERE status = 'open';

-- One row per participant of an open session: the key makes (proxy number, participant)
-- name one open session across every node on the database. Rows go when the session
-- closes or expires.
CREATE TABLE proxy_pairings (
    tenant TEXT NOT NULL,
    proxy_number TEXT NOT NULL,
    participant_number TEXT NOT NULL,
    session_id TEXT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (tenant, proxy_number, participant_number)
);

CREATE INDEX proxy_pairings_participant ON proxy_pairings (tenant, participant_number);
CREATE INDEX proxy_pairings_session ON proxy_pairings (session_id);
CREATE INDEX proxy_pairings_expiry ON proxy_pairings (expires_at);
