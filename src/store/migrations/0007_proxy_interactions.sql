-- Masked calls and messages (portable DDL, as 0001).

-- A masked call names its session.
ALTER TABLE calls ADD COLUMN proxy_session_id TEXT;

-- Each call or message relayed in a session. A voice interaction's status is its call's
-- (read through call_id); a message's is written here: sending, delivered or failed.
CREATE TABLE proxy_interactions (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_participant TEXT NOT NULL,
    to_participant TEXT NOT NULL,
    inbound_proxy_number TEXT NOT NULL,
    outbound_proxy_number TEXT NOT NULL,
    status TEXT NOT NULL,
    call_id TEXT,
    body_bytes BIGINT,
    error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX proxy_interactions_session ON proxy_interactions (session_id, created_at, id);

-- What a caller who is in no open session gets is the choice of the last session that
-- paired it with this number (closed or expired), found through these.
CREATE INDEX proxy_sessions_proxy_a ON proxy_sessions (proxy_a, participant_a, created_at);
CREATE INDEX proxy_sessions_proxy_b ON proxy_sessions (proxy_b, participant_b, created_at);

-- An announcement (a WAV name) played to a caller in no open session before the rejection.
ALTER TABLE proxy_sessions ADD COLUMN unknown_caller_announcement TEXT;
