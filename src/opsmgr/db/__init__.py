"""Schema migrations, writers, groomers and aggregations for the OperationalDB and the DataWarehouse.

The management server calls `prepare_database` at start, `write_operational` / `write_warehouse` per batch
(or the `_batches` forms for what queued up; choosing the databases with `databases_for`),
`maintain_partitions` periodically and `sync_alerts_to_warehouse`; `group_alert_storms` every few seconds,
`aggregate_warehouse` a few minutes past each hour and `groom` hourly on each database.
"""

from opsmgr.db.aggregation import AggregationReport, aggregate_warehouse
from opsmgr.db.alert_storms import StormPolicy, StormReport, group_alert_storms
from opsmgr.db.alert_sync import AlertSyncResult, sync_alerts_to_warehouse
from opsmgr.db.grooming import GroomingReport, groom
from opsmgr.db.migrations import SchemaMismatch
from opsmgr.db.model import (
    Alert,
    AlertPriority,
    AlertSeverity,
    Batch,
    BatchId,
    Database,
    DiscoveryItem,
    DropReason,
    Event,
    EventLevel,
    HealthState,
    InvalidBatch,
    Item,
    ItemKind,
    Lane,
    PerformanceSample,
    ResolutionState,
    Retention,
    StateChange,
)
from opsmgr.db.routing import ROUTES, databases_for
from opsmgr.db.schema import MigrationReport, PartitionReport, maintain_partitions, migrate, prepare_database
from opsmgr.db.writer import (
    CommitOutcome,
    CommitResult,
    write_operational,
    write_operational_batches,
    write_warehouse,
    write_warehouse_batches,
)

__all__ = [
    "ROUTES", "AggregationReport", "Alert", "AlertPriority", "AlertSeverity", "AlertSyncResult", "Batch", "BatchId",
    "CommitOutcome", "CommitResult", "Database", "DiscoveryItem", "DropReason", "Event", "EventLevel",
    "GroomingReport", "HealthState", "InvalidBatch", "Item", "ItemKind", "Lane", "MigrationReport", "PartitionReport",
    "PerformanceSample", "ResolutionState", "Retention", "SchemaMismatch", "StateChange", "StormPolicy",
    "StormReport", "aggregate_warehouse", "databases_for", "groom", "group_alert_storms", "maintain_partitions",
    "migrate", "prepare_database", "sync_alerts_to_warehouse", "write_operational", "write_operational_batches",
    "write_warehouse", "write_warehouse_batches",
]
