"""The agent: durable queue, connection, discovery, rules, monitors, optimized collection and tasks."""
