-- Which node claimed a pending event, so a node that restarts can release its own claims
-- at once instead of waiting for the lease to expire.
ALTER TABLE call_events ADD COLUMN claimed_by TEXT;
