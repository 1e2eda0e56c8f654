"""The gateway's configuration file (YAML), as the operator renders it (`render.gateway_config`) plus tuning.

Every problem is one line naming the field, the value and the fix; `opsmgr gateway` exits 2 on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from opsmgr.pki.errors import CertificateError
from opsmgr.pki.names import normalize_fqdn, normalize_group
from opsmgr.protocol.limits import AGENT_PORT
from opsmgr.protocol.server_choice import BackoffPolicy

GATEWAY_METRICS_PORT = 9724  # next to the server's 9723, so both can be scraped on one development host


class GatewayConfigError(ValueError):
    """The file cannot be used; `problems` has one line per bad field."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        listed = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{path}: the gateway configuration has {len(problems)} problem(s):\n{listed}")


def _checked(normalize: Any) -> Any:
    def check(value: str) -> str:
        try:
            return str(normalize(value))
        except CertificateError as exc:
            raise ValueError(exc.problem) from exc
    return check


def _server_address(value: str) -> str:
    """`host[:port]` (5723 when absent), IPv6 literals in brackets, as gRPC dials it."""
    parts = urlsplit(f"//{value.strip()}")
    try:
        port = parts.port or AGENT_PORT
    except ValueError:
        raise ValueError("has a port that is not a number from 1 to 65535") from None
    host = parts.hostname
    if not host or parts.path or parts.username or parts.query:
        raise ValueError("is not host:port")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _readable(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"{value} is not a readable file")
    return value


Fqdn = Annotated[str, AfterValidator(_checked(lambda v: normalize_fqdn(v, "name")))]
GroupName = Annotated[str, AfterValidator(_checked(normalize_group))]
ServerAddress = Annotated[str, AfterValidator(_server_address)]
ReadableFile = Annotated[Path, AfterValidator(_readable)]
Seconds = Annotated[float, Field(gt=0, le=86_400)]
AnyPort = Annotated[int, Field(ge=0, le=65535)]  # 0 picks a free port (tests)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Section):
    address: str = "0.0.0.0"  # noqa: S104  (agents outside the trust boundary reach it from other hosts)
    port: AnyPort = AGENT_PORT


class TlsConfig(_Section):
    certificate: ReadableFile
    key: ReadableFile
    ca_bundle: ReadableFile  # trusts the agents' CAs (group CA and any imported one) and the servers' CA
    server_name: str | None = None  # when servers are dialled by an address their certificates do not name
    # The identity shown to management servers when agents are served with another one (e.g. an imported DMZ
    # certificate outside, the group-issued gateway certificate inside); both or neither.
    upstream_certificate: ReadableFile | None = None
    upstream_key: ReadableFile | None = None

    @model_validator(mode="after")
    def _upstream_pair(self) -> TlsConfig:
        if (self.upstream_certificate is None) != (self.upstream_key is None):
            raise ValueError("tls.upstream_certificate and tls.upstream_key come together: give both or neither")
        return self

    def upstream_identity(self) -> tuple[Path, Path]:
        """(certificate, key) the gateway presents to its management servers."""
        if self.upstream_certificate is not None and self.upstream_key is not None:
            return self.upstream_certificate, self.upstream_key
        return self.certificate, self.key


class MetricsConfig(_Section):
    address: str = "0.0.0.0"  # noqa: S104  (Prometheus and the kubelet's probe come from elsewhere)
    port: AnyPort = GATEWAY_METRICS_PORT


class RevocationConfig(_Section):
    file: ReadableFile | None = None
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0


class UpstreamConfig(_Section):
    """How the gateway reaches its servers: the agents' rules (3 primary attempts, failback probe every 60 s)."""

    backoff_initial_seconds: Seconds = 5.0
    backoff_max_seconds: Seconds = 30.0
    backoff_multiplier: Annotated[float, Field(ge=1, le=10)] = 1.5
    primary_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    failback_seconds: Seconds = 60.0
    connect_timeout_seconds: Seconds = 5.0
    welcome_timeout_seconds: Seconds = 15.0
    goodbye_flush_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0

    def backoff(self) -> BackoffPolicy:
        return BackoffPolicy(self.backoff_initial_seconds, self.backoff_max_seconds, self.backoff_multiplier)


class GatewayConfig(_Section):
    group: GroupName
    name: Fqdn  # the gateway's FQDN: its certificate's CN
    listen: ListenConfig = Field(default_factory=ListenConfig)
    tls: TlsConfig
    servers: Annotated[list[ServerAddress], Field(min_length=1, max_length=9)]  # primary first, then failovers
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    revocations: RevocationConfig = Field(default_factory=RevocationConfig)
    heartbeat_seconds: Annotated[int, Field(ge=5, le=3600)] = 60  # Operations Manager's default
    # Off only where several simulated hosts share one machine (development, tests): see opsmgr.protocol.host_roles.
    refuse_on_agent_host: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


_FIXES = {
    "group": "give the ManagementGroup's name (lower-case letters, digits, '-' and '.')",
    "name": "give this gateway's FQDN, the CN of its certificate",
    "servers": "list the management servers as host:port, primary first, e.g. ms-0.ms.opsmgr.svc:5723",
    "port": "give a TCP port from 1 to 65535",
    "certificate": "give the path of a readable PEM file",
    "key": "give the path of a readable PEM file",
    "ca_bundle": "give the path of a readable PEM file",
    "upstream_certificate": "give the path of a readable PEM file",
    "upstream_key": "give the path of a readable PEM file",
    "file": "give the path of a readable file",
    "log_level": "use DEBUG, INFO, WARNING or ERROR",
}
_RELATIVE_PATHS = (("tls", "certificate"), ("tls", "key"), ("tls", "ca_bundle"), ("tls", "upstream_certificate"),
                   ("tls", "upstream_key"), ("revocations", "file"))


def _problem(error: ErrorDetails) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "missing":
        return f"{where}: missing. Fix: add {where} to the file"
    if error["type"] == "extra_forbidden":
        return f"{where}: not a setting the gateway knows. Fix: remove it or correct its spelling"
    field = next((str(part) for part in reversed(error["loc"]) if isinstance(part, str)), "")
    reason = str(error["msg"]).removeprefix("Value error, ")
    return f"{where} = {error.get('input')!r}: {reason}. Fix: {_FIXES.get(field, 'see the example configuration')}"


def parse_config(document: Any, path: Path) -> GatewayConfig:
    """Validate a parsed YAML document; relative file paths are taken from the file's folder (a mounted Secret)."""
    if not isinstance(document, dict):
        raise GatewayConfigError(path, [f"(top level) is a {type(document).__name__}: the file must be a mapping "
                                        "of settings. Fix: start from the configuration the operator renders"])
    for section, key in _RELATIVE_PATHS:
        values = document.get(section)
        if isinstance(values, dict) and isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
            document = {**document, section: {**values, key: str(path.parent / values[key])}}
    try:
        return GatewayConfig.model_validate(document)
    except ValidationError as exc:
        raise GatewayConfigError(path, [_problem(error) for error in exc.errors()]) from None


def load_config(path: Path) -> GatewayConfig:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GatewayConfigError(path, [f"--config {path}: {exc.strerror}. Fix: give a readable YAML file"]) from None
    except yaml.YAMLError as exc:
        raise GatewayConfigError(path, [f"YAML syntax: {exc}. Fix: correct the file at the line shown"]) from None
    return parse_config(document, path)
