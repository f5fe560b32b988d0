"""Event subscriptions delivered as signed webhooks (grows in the event-feed issue)."""
