-- The deliverer only ever looks for pending events: index those alone, so the events of
-- calls without a webhook (no_endpoint) and delivered ones cost no index upkeep.
DROP INDEX call_events_due;
CREATE INDEX call_events_due ON call_events (next_attempt_at) WHERE state = 'pending';
