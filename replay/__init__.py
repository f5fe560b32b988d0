"""Replay and debug tool over the event log (grows in the event-feed issue)."""
