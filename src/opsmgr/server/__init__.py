"""The management server: listener, sessions, ingest, health service watcher, enrollment, notifications."""
