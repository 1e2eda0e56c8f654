"""Development and test tooling: local PostgreSQL, the Go-built control plane, and the local runtime."""
