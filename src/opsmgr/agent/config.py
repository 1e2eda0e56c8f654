"""The agent's configuration file (YAML), validated with one line per bad field: the field, the value, the fix."""

from __future__ import annotations

import pickle
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from opsmgr.agent.collection import CollectionSettings
from opsmgr.agent.connection import ConnectionSettings
from opsmgr.agent.queue import MIN_LIMIT_BYTES
from opsmgr.agent.queue_policy import DEFAULT_LIMIT_BYTES, SendWindow
from opsmgr.agent.server_choice import BackoffPolicy
from opsmgr.pki import CertificateError
from opsmgr.pki.names import normalize_fqdn
from opsmgr.protocol.limits import AGENT_PORT

YAML_READER = "opsmgr.agent.yaml_reader"
YAML_READER_TIMEOUT_SECONDS = 60.0


class AgentConfigError(ValueError):
    """The file cannot be used; `problems` has one line per bad field."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{path}: the agent configuration has {len(problems)} problem(s):\n{lines}")


def _fqdn(value: str) -> str:
    try:
        return normalize_fqdn(value, "fqdn")
    except CertificateError as exc:
        raise ValueError(exc.problem) from exc


def _server(value: str) -> str:
    """`host` or `host:port` (port 5723 when absent); IPv6 literals in brackets."""
    text = value.strip()
    if text.startswith("["):
        inside, _, rest = text[1:].partition("]")
        host, port = f"[{inside}]", rest.removeprefix(":") or str(AGENT_PORT)
    elif text.count(":") > 1:
        raise ValueError("looks like an IPv6 address without brackets; write [address]:port")
    else:
        host, _, port = text.partition(":")
        port = port or str(AGENT_PORT)
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise ValueError("is not a host name or address")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"has the port {port!r}, not a number from 1 to 65535")
    return f"{host}:{port}"


Fqdn = Annotated[str, AfterValidator(_fqdn)]
Server = Annotated[str, AfterValidator(_server)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServersConfig(_Section):
    primary: Server
    failover: list[Server] = Field(default_factory=list, max_length=16)
    tls_server_name: str | None = None  # when servers are dialled by an address their certificates do not name


class CertificatesConfig(_Section):
    directory: Path  # tls.crt, tls.key, ca.crt
    renew: bool = True
    renew_before_days: Annotated[float, Field(gt=0, le=3650)] | None = None
    # In a pod the certificate arrives after the process starts (an optional Secret volume): wait, never exit.
    wait_for_identity: bool = False


class QueueConfig(_Section):
    path: Path
    limit_bytes: Annotated[int, Field(ge=MIN_LIMIT_BYTES, le=1 << 40)] = DEFAULT_LIMIT_BYTES
    bulk_linger_seconds: Annotated[float, Field(ge=0, le=60)] = 1.0


class ConnectionConfig(_Section):
    backoff_initial_seconds: Seconds = 5.0
    backoff_max_seconds: Seconds = 30.0
    backoff_multiplier: Annotated[float, Field(ge=1, le=10)] = 1.5
    primary_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    failback_seconds: Seconds = 60.0
    welcome_timeout_seconds: Seconds = 15.0
    heartbeat_seconds: Seconds | None = None  # None: the interval the server's Welcome names
    window_batches: Annotated[int, Field(ge=2, le=256)] = 8
    goodbye_flush_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0


class HealthConfig(_Section):
    send_queue_check_seconds: Seconds = 60.0


class AgentConfig(_Section):
    fqdn: Fqdn
    placement: Literal["node", "sidecar", "host"] = "host"
    servers: ServersConfig
    certificates: CertificatesConfig
    queue: QueueConfig
    connection: ConnectionConfig = Field(default_factory=ConnectionConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    collection: CollectionSettings = Field(default_factory=CollectionSettings)
    # Off only where several simulated hosts share one machine (development, tests): see opsmgr.agent.host_role.
    refuse_on_management_host: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def connection_settings(self) -> ConnectionSettings:
        c = self.connection
        renew_before = self.certificates.renew_before_days
        return ConnectionSettings(
            primary=self.servers.primary, failovers=tuple(self.servers.failover),
            tls_server_name=self.servers.tls_server_name,
            backoff=BackoffPolicy(c.backoff_initial_seconds, c.backoff_max_seconds, c.backoff_multiplier),
            primary_attempts=c.primary_attempts, failback_seconds=c.failback_seconds,
            welcome_timeout_seconds=c.welcome_timeout_seconds, heartbeat_seconds=c.heartbeat_seconds,
            window=SendWindow(c.window_batches, reserved_for_priority=max(1, c.window_batches // 4)),
            bulk_linger_seconds=self.queue.bulk_linger_seconds, goodbye_flush_seconds=c.goodbye_flush_seconds,
            renew=self.certificates.renew,
            renew_before=timedelta(days=renew_before) if renew_before is not None else None)


# The fix shown for a bad value, by the field's own name.
_HOW_TO_FIX = {
    "fqdn": "give this computer's FQDN, the CN of its certificate (e.g. web01.contoso.com)",
    "placement": "use node, sidecar or host",
    "primary": "write host:port, e.g. ms-0.ms.opsmgr.svc:5723",
    "failover": "write a list of host:port entries",
    "directory": "give the folder holding tls.crt, tls.key and ca.crt",
    "path": "give the queue file's path on a local disk, e.g. /var/lib/opsmgr/agent/queue.sqlite",
    "limit_bytes": f"give a whole number of bytes, at least {MIN_LIMIT_BYTES} (default {DEFAULT_LIMIT_BYTES})",
    "log_level": "use DEBUG, INFO, WARNING or ERROR",
    "window_batches": "give a whole number from 2 to 256",
}


def _problem(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "missing":
        return f"{where}: missing. Fix: add {where} to the file"
    if error["type"] == "extra_forbidden":
        return f"{where}: not a setting the agent knows. Fix: remove it or correct its spelling"
    name = next((str(part) for part in reversed(error["loc"]) if isinstance(part, str)), "")
    fix = _HOW_TO_FIX.get(name, "give a value of the kind the message names")
    reason = str(error["msg"]).removeprefix("Value error, ")
    return f"{where} = {error.get('input')!r}: {reason}. Fix: {fix}"


def parse_config(document: Any, path: Path) -> AgentConfig:
    """Validate a parsed YAML document; relative paths are relative to the file's folder."""
    if not isinstance(document, dict):
        raise AgentConfigError(path, [f"(top level) is a {type(document).__name__}: the file must be a mapping of "
                                      "settings. Fix: start from the example in the agent's documentation"])
    for section, key in (("certificates", "directory"), ("queue", "path")):
        values = document.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
            document = {**document, section: {**values, key: str(path.parent / values[key])}}
    try:
        return AgentConfig.model_validate(document)
    except ValidationError as exc:
        raise AgentConfigError(path, [_problem(error) for error in exc.errors()]) from None


def load_config(path: Path) -> AgentConfig:
    try:
        text = path.read_text()
    except OSError as exc:
        raise AgentConfigError(path, [f"--config {path}: {exc.strerror}. Fix: give a readable YAML file"]) from None
    outcome, value = _read_yaml(text, path)
    if outcome == "error":
        raise AgentConfigError(path, [f"YAML syntax: {value}. Fix: correct the file at the line shown"])
    return parse_config(value, path)


def _read_yaml(text: str, path: Path) -> tuple[str, Any]:
    """What `yaml.safe_load` makes of the text, parsed in `opsmgr.agent.yaml_reader` so PyYAML never stays loaded."""
    try:
        done = subprocess.run([sys.executable, "-m", YAML_READER], input=text.encode("utf-8"), capture_output=True,
                              timeout=YAML_READER_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentConfigError(path, [f"the YAML reader ({sys.executable} -m {YAML_READER}) could not run: {exc}. "
                                      "Fix: check that the agent's Python installation is complete"]) from None
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise AgentConfigError(path, [f"the YAML reader failed ({last}). Fix: check that the agent's Python "
                                      "installation is complete and the file is a YAML mapping of settings"])
    # Our own child's answer to our own request: pickle keeps the types YAML produced (see yaml_reader).
    answer: tuple[str, Any] = pickle.loads(done.stdout)  # noqa: S301
    return answer
