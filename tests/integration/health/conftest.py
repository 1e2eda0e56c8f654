"""The db tier's two real databases (operational and warehouse, migrated) for the health tests."""

from tests.integration.db.conftest import databases, warehouse_dsn

__all__ = ["databases", "warehouse_dsn"]
