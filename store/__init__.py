"""The event log: the EventStore seam, PostgreSQL and SQLite logs, projections, relay."""
