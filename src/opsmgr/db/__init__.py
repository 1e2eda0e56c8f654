"""Schema migrations, writers, groomers and aggregations for the OperationalDB and the DataWarehouse."""
