"""Webhooks out (SPEC §16): subscriptions, an outbox of deliveries written in the transaction of what
they report, and their signed sending after commit in batches by Celery."""
