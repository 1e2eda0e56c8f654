"""Pydantic models of every custom resource's spec and status: the single source of truth for the CRDs."""
