"""The console's configuration file (YAML), validated into `ConsoleConfig` with one message per bad field.

Every error names the field path, the value and the fix; `opsmgr console` turns them into exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

CONSOLE_PORT = 8443

_FIXES: dict[str, str] = {
    "address": "give an IP address to bind, such as 0.0.0.0 or 127.0.0.1",
    "port": "give a TCP port from 1 to 65535 (0 picks a free one)",
    "certificate": "give the path of a readable PEM file (the console serves HTTPS only)",
    "key": "give the path of a readable PEM file (the console serves HTTPS only)",
    "operational_dsn": "write postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
    "operational_dsn_file": "give the path of a readable file holding the DSN (e.g. a CloudNativePG Secret's `uri`)",
    "warehouse_dsn_file": "give the path of a readable file holding the DSN (e.g. a CloudNativePG Secret's `uri`)",
    "warehouse_dsn": "write postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
    "namespace": "give the namespace of the ManagementGroup whose Agents the console shows",
    "kubeconfig": "give the path of a readable kubeconfig, or leave it out to use the Pod's ServiceAccount",
    "refresh_seconds": "give a whole number of seconds from 5 to 3600",
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


def _dsn(value: str) -> str:
    if urlsplit(value).scheme not in ("postgresql", "postgres"):
        raise ValueError("is not a PostgreSQL URL")
    return value


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]
Dsn = Annotated[str, AfterValidator(_dsn)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenConfig(_Section):
    address: str = "0.0.0.0"  # noqa: S104  (people reach the console through its Service)
    port: Annotated[int, Field(ge=0, le=65535)] = CONSOLE_PORT


class TlsConfig(_Section):
    certificate: ReadableFile
    key: ReadableFile


class DatabaseConfig(_Section):
    operational_dsn: Dsn
    warehouse_dsn: Dsn
    pool_size: Annotated[int, Field(ge=1, le=32)] = 4


class KubernetesConfig(_Section):
    namespace: Annotated[str, Field(min_length=1, max_length=63)]
    kubeconfig: ReadableFile | None = None  # in-cluster credentials when unset


class LogConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class ConsoleConfig(_Section):
    listen: ListenConfig = ListenConfig()
    tls: TlsConfig
    databases: DatabaseConfig
    kubernetes: KubernetesConfig
    refresh_seconds: Annotated[int, Field(ge=5, le=3600)] = 30  # pages reload themselves this often
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
    fix = _FIXES.get(last, "see the example in the console's documentation")
    return f"{path} = {shown}: {message}. Fix: {fix}"


_PATH_FIELDS = (("tls", "certificate"), ("tls", "key"), ("kubernetes", "kubeconfig"),
                ("databases", "operational_dsn_file"), ("databases", "warehouse_dsn_file"))


def _read_dsn_files(document: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`<db>_dsn_file` (a mounted Secret key, so no password sits in the file) becomes `<db>_dsn`."""
    databases = document.get("databases")
    if not isinstance(databases, dict):
        return document, []
    databases, problems = dict(databases), []
    for name in ("operational_dsn", "warehouse_dsn"):
        given = databases.pop(f"{name}_file", None)
        if given is None:
            continue
        if name in databases:
            problems.append(f"databases.{name}_file = {given!r}: databases.{name} is given too. Fix: keep one")
            continue
        try:
            databases[name] = Path(str(given)).read_text().strip()
        except OSError as exc:
            problems.append(f"databases.{name}_file = {given!r}: {exc.strerror}. Fix: {_FIXES[name + '_file']}")
    return {**document, "databases": databases}, problems


def parse_config(document: object, path: Path, base: Path | None = None) -> ConsoleConfig:
    """Validate a parsed YAML document; relative file paths are taken relative to `base` (the file's folder)."""
    if not isinstance(document, dict):
        raise ConfigError(path, [f"(top level) = {type(document).__name__}: the file must hold a mapping of "
                                 "settings. Fix: start from the example configuration"])
    if base is not None:
        document = dict(document)
        for section, key in _PATH_FIELDS:
            values = document.get(section)
            if isinstance(values, dict) and isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
                document[section] = {**values, key: str(base / values[key])}
    document, problems = _read_dsn_files(document)
    try:
        config = ConsoleConfig.model_validate(document)
    except ValidationError as exc:
        problems += [_describe(error) for error in exc.errors()]
    if problems:
        raise ConfigError(path, problems)
    return config


def load_config(path: Path) -> ConsoleConfig:
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
