"""The management server's configuration file (YAML), validated into `ServerConfig` with one message per bad field.

Every error names the field path, the value and the fix; `opsmgr server` turns them into exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from opsmgr.pki.errors import CertificateError
from opsmgr.pki.names import normalize_fqdn, normalize_group
from opsmgr.protocol.enrollment import ENROLLMENT_PORT
from opsmgr.protocol.limits import AGENT_PORT, MAX_BATCH_ITEMS

# Fixes shown with a pydantic error, by the last element of the field path.
_FIXES: dict[str, str] = {
    "group": "give the ManagementGroup's name (lower-case letters, digits, '-' and '.')",
    "name": "give this management server's FQDN, the CN of its certificate",
    "port": "give a TCP port from 1 to 65535",
    "address": "give an IP address to bind, such as 0.0.0.0 or 127.0.0.1",
    "certificate": "give the path of a readable PEM file",
    "key": "give the path of a readable PEM file",
    "ca_bundle": "give the path of a readable PEM file",
    "operational_dsn": "write postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
    "warehouse_dsn": "write postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
    "file": "give the path of a readable file",
    "format": "use 'json' or 'keyvalue'",
    "level": "use DEBUG, INFO, WARNING or ERROR",
}


class ConfigError(ValueError):
    """The configuration file cannot be used; `problems` holds one line per bad field."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: {len(problems)} problem(s) in the configuration:\n" +
                         "\n".join(f"  - {line}" for line in problems))


def _readable_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"{value} is not a readable file")
    return value


def _fqdn(value: str) -> str:
    try:
        return normalize_fqdn(value, "name")
    except CertificateError as exc:
        raise ValueError(exc.problem) from exc


def _group(value: str) -> str:
    try:
        return normalize_group(value)
    except CertificateError as exc:
        raise ValueError(exc.problem) from exc


def _dsn(value: str) -> str:
    if urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise ValueError("is not a PostgreSQL URL")
    return value


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]
Fqdn = Annotated[str, AfterValidator(_fqdn)]
GroupName = Annotated[str, AfterValidator(_group)]
Dsn = Annotated[str, AfterValidator(_dsn)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Section):
    address: str = "0.0.0.0"  # noqa: S104  (agents reach the server from other hosts)
    port: Annotated[int, Field(ge=0, le=65535)] = AGENT_PORT  # 0 picks a free port (tests)


class TlsConfig(_Section):
    certificate: ReadableFile
    key: ReadableFile
    ca_bundle: ReadableFile


class DatabaseConfig(_Section):
    operational_dsn: Dsn
    warehouse_dsn: Dsn
    # Connections per database shared by the duties and the watcher; the ingest writers hold their own
    # (ingest.writers_per_database more per database).
    pool_size: Annotated[int, Field(ge=1, le=64)] = 4
    connect_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 10.0


class MetricsConfig(_Section):
    address: str = "0.0.0.0"  # noqa: S104  (Prometheus scrapes from another pod)
    port: Annotated[int, Field(ge=0, le=65535)] = 9723


class RevocationConfig(_Section):
    file: ReadableFile | None = None
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0


class DirectoryConfig(_Section):
    file: ReadableFile
    poll_seconds: Annotated[float, Field(gt=0, le=300)] = 2.0


class IngestConfig(_Section):
    """Bounds of the per-database writer pipelines; together they bound the server's memory."""

    operational_queue_items: Annotated[int, Field(ge=MAX_BATCH_ITEMS)] = 100_000
    warehouse_queue_items: Annotated[int, Field(ge=MAX_BATCH_ITEMS)] = 100_000
    writers_per_database: Annotated[int, Field(ge=1, le=32)] = 2
    batches_per_transaction: Annotated[int, Field(ge=1, le=1000)] = 32
    session_inflight_batches: Annotated[int, Field(ge=1, le=10_000)] = 32
    # Batches read past while they wait for pipeline room (wire bytes; in memory each is about twice that).
    parked_batch_bytes: Annotated[int, Field(ge=0)] = 128 * 1024 * 1024
    stall_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    deferred_retry_ms: Annotated[int, Field(ge=100, le=3_600_000)] = 5_000
    alert_sync_seconds: Annotated[float, Field(gt=0)] = 60.0
    partition_maintenance_seconds: Annotated[float, Field(gt=0)] = 3600.0


class KubernetesConfig(_Section):
    """Where the group's resources live; present when the server runs in a cluster (the operator renders it)."""

    namespace: Annotated[str, Field(min_length=1, max_length=63)]  # Agents, packs, tasks and Leases of the group
    member: str | None = None  # this server's name in the fleet (its Pod's name); the first label of `name` when unset
    kubeconfig: ReadableFile | None = None  # in-cluster credentials when unset
    lease_seconds: Annotated[float, Field(gt=0, le=300)] = 15.0
    renew_seconds: Annotated[float, Field(gt=0, le=100)] = 5.0


class WatcherConfig(_Section):
    """The health service watcher; the group's interval is `heartbeat_interval_seconds`, Agents may override both."""

    missed_threshold: Annotated[int, Field(ge=1, le=100)] = 4  # Operations Manager's default
    presence_flush_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0
    status_heartbeat_seconds: Annotated[float, Field(gt=0, le=3600)] = 180.0  # lastHeartbeatTime at most this often
    probe_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 5.0


class EnrollmentConfig(_Section):
    """The enrollment endpoint (server-only TLS); it runs only when the `kubernetes` section gives API access."""

    enabled: bool = True
    address: str = "0.0.0.0"  # noqa: S104  (VMs enroll from other hosts)
    port: Annotated[int, Field(ge=0, le=65535)] = ENROLLMENT_PORT  # 0 picks a free port (tests)
    ca_secret: str | None = None  # the generated CA's Secret; `<group>-ca` when unset (the operator renders it)
    retry_after_seconds: Annotated[int, Field(ge=1, le=3600)] = 5  # how soon a Pending agent asks again


class DutiesConfig(_Section):
    """The group's periodic duties (server/duties.py); grooming runs every `ingest.partition_maintenance_seconds`."""

    alert_seconds: Annotated[float, Field(gt=0, le=300)] = 5.0  # storms, then notifications
    aggregation_minute: Annotated[float, Field(ge=0, lt=60)] = 5.0  # past each hour: late samples have arrived
    group_refresh_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0  # retention and notification targets
    console_url: Annotated[str, Field(pattern=r"^https?://")] | None = None  # linked from notifications


class LogConfig(_Section):
    format: Literal["json", "keyvalue"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ServerConfig(_Section):
    group: GroupName
    name: Fqdn
    listen: ListenConfig = ListenConfig()
    tls: TlsConfig
    databases: DatabaseConfig
    metrics: MetricsConfig = MetricsConfig()
    revocations: RevocationConfig = RevocationConfig()
    directory: DirectoryConfig
    ingest: IngestConfig = IngestConfig()
    heartbeat_interval_seconds: Annotated[int, Field(ge=1, le=3600)] = 60  # Operations Manager's default; 1 for tests
    watcher: WatcherConfig = WatcherConfig()
    kubernetes: KubernetesConfig | None = None
    enrollment: EnrollmentConfig = EnrollmentConfig()
    duties: DutiesConfig = DutiesConfig()
    log: LogConfig = LogConfig()


def _describe(error: Any) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    value = error.get("input")
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{path}: missing. Fix: add {path} to the file"
    if error["type"] == "extra_forbidden":
        return f"{path} = {value!r}: not a known setting. Fix: remove it or correct its spelling"
    last = next((str(part) for part in reversed(error["loc"]) if isinstance(part, str)), "")
    shown = "***" if "dsn" in last and isinstance(value, str) and "@" in value else repr(value)
    fix = _FIXES.get(last, "see the example in the server's documentation")
    return f"{path} = {shown}: {message}. Fix: {fix}"


def parse_config(document: object, path: Path, base: Path | None = None) -> ServerConfig:
    """Validate a parsed YAML document; relative file paths are taken relative to `base` (the file's folder)."""
    if not isinstance(document, dict):
        raise ConfigError(path, [f"(top level) = {type(document).__name__}: the file must hold a mapping of "
                                 "settings. Fix: start from the example configuration"])
    if base is not None:
        document = _anchor_paths(document, base)
    try:
        return ServerConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(error) for error in exc.errors()]) from None


def load_config(path: Path) -> ServerConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(path, [f"--config = {str(path)!r}: {exc.strerror}. Fix: give a readable YAML file"]) \
            from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"(YAML) {exc}. Fix: correct the syntax at the line shown"]) from None
    return parse_config(document, path, path.parent)


_PATH_FIELDS = (("tls", "certificate"), ("tls", "key"), ("tls", "ca_bundle"), ("revocations", "file"),
                ("directory", "file"), ("kubernetes", "kubeconfig"))


def _anchor_paths(document: dict[str, Any], base: Path) -> dict[str, Any]:
    anchored = dict(document)
    for section, key in _PATH_FIELDS:
        values = anchored.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
            anchored[section] = {**values, key: str(base / values[key])}
    return anchored
