"""Certificates: the management-group CA, role profiles, renewal, revocation and CSR validation."""
