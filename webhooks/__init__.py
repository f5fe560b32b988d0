"""Webhook delivery: fans the log out to subscriptions, signs, retries, records."""
