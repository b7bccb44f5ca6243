"""Versioned schema migrations (playhouse.migrations scripts)."""
