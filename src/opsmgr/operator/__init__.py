"""The kopf operator: one module per custom resource, pure renderers building children as plain dicts."""
