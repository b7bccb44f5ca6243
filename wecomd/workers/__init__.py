"""Background workers: the outbox, media downloads, webhooks and retention, on one Worker base."""
