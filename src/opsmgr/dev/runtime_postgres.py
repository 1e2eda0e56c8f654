"""The local runtime's stand-in for a PostgreSQL image: `python -m opsmgr.dev.runtime_postgres [postgres args]`.

Behaves like the official image's entrypoint with the real server binaries: on first start, initdb with
POSTGRES_USER (default postgres), POSTGRES_PASSWORD (scram-sha-256 over TCP when set, trust otherwise, or
POSTGRES_HOST_AUTH_METHOD), POSTGRES_DB (default the user) and POSTGRES_INITDB_ARGS, data in PGDATA (default
`$OPSMGR_ROOT/var/lib/postgresql/data`); then the server replaces this process, listening on the pod IP at port
5432 (PGPORT). PostgreSQL refuses root, so it runs as the `postgres` account, as `opsmgr.dev.postgres` does.
"""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from opsmgr.dev.postgres import UNPRIVILEGED_USER, PostgresUnavailable, find_bin_dir


def _account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError as exc:
        raise PostgresUnavailable(f"running as root and PostgreSQL refuses root, but there is no "
                                  f"'{UNPRIVILEGED_USER}' account; `apt-get install postgresql` creates it") from exc


def _demote(account: pwd.struct_passwd | None) -> None:
    if account is not None:
        os.setgroups([])
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)


def _run_as(account: pwd.struct_passwd | None, argv: list[str], stdin: str | None = None) -> None:
    extra: dict[str, object] = {}
    if account is not None:
        extra = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False,  # type: ignore[call-overload]
                            **extra)
    if result.returncode != 0:
        raise PostgresUnavailable(f"{' '.join(argv[:2])} failed ({result.returncode}): "
                                  f"{(result.stderr or result.stdout).strip()}")


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def initialise(data: Path, bin_dir: Path, account: pwd.struct_passwd | None) -> None:
    user = os.environ.get("POSTGRES_USER") or "postgres"
    password = os.environ.get("POSTGRES_PASSWORD", "")
    database = os.environ.get("POSTGRES_DB") or user
    method = os.environ.get("POSTGRES_HOST_AUTH_METHOD") or ("scram-sha-256" if password else "trust")
    extra = shlex.split(os.environ.get("POSTGRES_INITDB_ARGS", ""))
    with tempfile.NamedTemporaryFile("w", prefix="pw-", dir=data.parent, delete=False) as pwfile:
        pwfile.write(password or "unused")
    try:
        if account is not None:
            os.chown(pwfile.name, account.pw_uid, account.pw_gid)
        _run_as(account, [str(bin_dir / "initdb"), "-D", str(data), "-U", user, f"--pwfile={pwfile.name}",
                          "--auth-local=trust", f"--auth-host={method}", "--encoding=UTF8", "--no-sync", *extra])
    finally:
        os.unlink(pwfile.name)
    if database != "postgres":
        # Single-user mode creates the database without opening a port before the server is configured.
        _run_as(account, [str(bin_dir / "postgres"), "--single", "-D", str(data), "postgres"],
                stdin=f"CREATE DATABASE {_quote_identifier(database)} OWNER {_quote_identifier(user)};\n")
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all 0.0.0.0/0 {method}\nhost all all ::/0 {method}\n")


def main(argv: list[str]) -> None:
    root = os.environ.get("OPSMGR_ROOT", os.getcwd())
    data = Path(os.environ.get("PGDATA") or f"{root}/var/lib/postgresql/data").resolve()
    listen = os.environ.get("POD_IP", "127.0.0.1")
    port = os.environ.get("PGPORT", "5432")
    bin_dir = find_bin_dir()
    account = _account()
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    if account is not None:
        os.chown(data, account.pw_uid, account.pw_gid)
    if not (data / "PG_VERSION").exists():
        initialise(data, bin_dir, account)
    server = [str(bin_dir / "postgres"), "-D", str(data), "-c", f"listen_addresses={listen}", "-c", f"port={port}",
              "-c", "unix_socket_directories=", *argv]
    sys.stdout.flush()
    _demote(account)
    os.execv(server[0], server)  # noqa: S606 (the server becomes the container's main process)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except PostgresUnavailable as exc:
        print(f"opsmgr dev runtime: {exc}", file=sys.stderr)
        sys.exit(1)
