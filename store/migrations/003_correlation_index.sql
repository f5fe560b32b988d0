-- read_correlated: everything one request caused (the replay tool's trace, the event
-- feed's correlation filter) without scanning the whole log.
CREATE INDEX events_correlation ON events (correlation_id);
