"""A throwaway PostgreSQL server from initdb/pg_ctl, for tests and the local demo.

Real PostgreSQL, never a mock: it runs in its own directory on a free loopback port and is stopped cleanly.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Debian installs the server binaries off PATH, under its version folder.
DEBIAN_LIB_DIR = Path("/usr/lib/postgresql")
# initdb and postgres refuse to run as root; when we are root we run them as this account.
UNPRIVILEGED_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries cannot be found or the server does not start."""


def find_bin_dir() -> Path:
    """Where initdb, pg_ctl and postgres live: PATH first, then Debian's newest version folder."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    versions = sorted(
        (p for p in DEBIAN_LIB_DIR.glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (no pg_ctl on PATH or under /usr/lib/postgresql/*/bin); "
            "install them with `apt-get install postgresql` or run `make test`, which does"
        )
    return versions[-1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _demote_kwargs() -> dict[str, object]:
    """subprocess arguments that drop root to the unprivileged account PostgreSQL insists on."""
    if os.geteuid() != 0:
        return {}
    try:
        account = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError as exc:
        raise PostgresUnavailable(
            f"running as root, and PostgreSQL refuses root, but there is no '{UNPRIVILEGED_USER}' account "
            "to run it as; `apt-get install postgresql` creates it"
        ) from exc
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


@dataclass
class LocalPostgres:
    """One PostgreSQL server in `directory`, listening on 127.0.0.1:`port` with trust auth for `superuser`."""

    directory: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    bin_dir: Path = field(default_factory=find_bin_dir)
    fsync: bool = False  # tests trade durability of the throwaway cluster for speed; the demo may keep it

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "sock"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            [str(self.bin_dir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=check,
            env={**os.environ, "LC_ALL": "C.UTF-8", "TZ": "UTC"},
            **_demote_kwargs(),
        )

    def _give_to_unprivileged(self, path: Path) -> None:
        if os.geteuid() == 0:
            account = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def start(self, timeout: float = 60.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._give_to_unprivileged(self.directory)
        if not (self.data_dir / "PG_VERSION").exists():
            try:
                self._run("initdb", "-D", str(self.data_dir), "-U", self.superuser, "--auth=trust",
                          "--encoding=UTF8", "--no-sync")
            except subprocess.CalledProcessError as exc:
                raise PostgresUnavailable(f"initdb failed in {self.data_dir}: {exc.stderr.strip()}") from exc
        self.socket_dir.mkdir(exist_ok=True)
        self._give_to_unprivileged(self.socket_dir)
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "300",
        }
        if not self.fsync:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        options = " ".join(f"-c {name}={value}" for name, value in settings.items())
        try:
            self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-o", options,
                      "-w", "-t", str(int(timeout)))
        except subprocess.CalledProcessError as exc:
            raise PostgresUnavailable(
                f"PostgreSQL did not start on {self.host}:{self.port}: {exc.stderr.strip()}\n"
                f"--- last lines of {self.log_file} ---\n{self.log_tail()}"
            ) from exc
        self._wait_accepting(timeout)

    def _wait_accepting(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=1):
                return
            time.sleep(0.1)
        raise PostgresUnavailable(f"PostgreSQL on {self.host}:{self.port} accepted no connection in {timeout} s\n"
                                  f"{self.log_tail()}")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", check=False)

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, for tests that SIGSTOP or SIGKILL the server."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log written)"

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
