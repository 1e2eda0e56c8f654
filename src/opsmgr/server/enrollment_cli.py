"""`opsmgr token create|list|delete` (join tokens for VM enrollment) and `opsmgr agents approve|reject` (a person's
decision on a Pending agent), run by an administrator with their own kubeconfig.

A token is printed once and never stored: its Secret keeps the SHA-256 of the secret part, the expiry and the
use count. Approving sets the operator's `opsmgr.io/approval` annotation, as `kubectl annotate` would.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
from kubernetes_asyncio import config as kube_config

from opsmgr.api.common import GROUP, VERSION, parse_duration
from opsmgr.kubeio.kube import Kube, KubeError, Ref
from opsmgr.protocol.enrollment import tokens_secret_name
from opsmgr.server.enrollment_endpoint import open_api_client
from opsmgr.server.enrollment_rules import APPROVAL_ANNOTATION
from opsmgr.server.enrollment_tokens import (
    TOKENS_SECRET_TYPE,
    JoinTokenRecord,
    NewToken,
    mint_token,
    parse_records,
    without_expired,
)

FIELD_MANAGER = "opsmgr-cli"
API = f"{GROUP}/{VERSION}"
EXIT_FAILED = 1
EXIT_USAGE = 2
T = TypeVar("T")


def _current_namespace(kubeconfig: Path | None) -> str:
    try:
        _, active = kube_config.list_kube_config_contexts(str(kubeconfig) if kubeconfig else None)
    except (kube_config.ConfigException, OSError):
        return "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


def _run(kubeconfig: Path | None, action: Callable[[Kube], Awaitable[T]]) -> T:
    async def main() -> T:
        api = await open_api_client(kubeconfig or _default_kubeconfig())
        try:
            return await action(Kube(api, field_manager=FIELD_MANAGER))
        finally:
            await api.close()

    try:
        return asyncio.run(main())
    except KubeError as exc:
        hint = " Fix: your kubeconfig's user needs that verb (ask for the opsmgr admin role)" \
            if exc.status == 403 else ""
        click.echo(f"{exc}.{hint}", err=True)
        sys.exit(EXIT_FAILED)
    except (kube_config.ConfigException, OSError) as exc:
        click.echo(f"cannot reach the Kubernetes API: {exc}. Fix: set KUBECONFIG or pass --kubeconfig", err=True)
        sys.exit(EXIT_FAILED)


def _default_kubeconfig() -> Path | None:
    first = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if first:
        return Path(first)
    home = Path.home() / ".kube" / "config"
    return home if home.exists() else None


def _kube_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--kubeconfig", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                           help="Kubeconfig file; $KUBECONFIG or ~/.kube/config when left out.")(command)
    return click.option("-n", "--namespace", help="Namespace of the group (the kubeconfig context's by default).")(
        command)


# --- join tokens ---

@click.group("token")
def token() -> None:
    """Join tokens with which VMs enroll (`opsmgr enroll --token`)."""


def _encoded(record: JoinTokenRecord) -> str:
    return base64.b64encode(record.to_json().encode()).decode()


async def _store_token(kube: Kube, namespace: str, group: str, minted: NewToken, now: datetime) -> None:
    owner = await kube.get(API, "ManagementGroup", namespace, group)
    if owner is None:
        raise click.ClickException(f"--group = {group!r}: no ManagementGroup {group} in namespace {namespace}. Fix: "
                                   "give the group's name and its namespace (-n)")
    name = tokens_secret_name(group)
    for _ in range(8):
        secret = await kube.get("v1", "Secret", namespace, name)
        if secret is None:
            manifest = {"apiVersion": "v1", "kind": "Secret", "type": TOKENS_SECRET_TYPE,
                        "metadata": {"name": name, "namespace": namespace,
                                     "labels": {"opsmgr.io/management-group": group,
                                                "app.kubernetes.io/component": "join-tokens"},
                                     # Tokens go with their group.
                                     "ownerReferences": [{"apiVersion": API, "kind": "ManagementGroup",
                                                          "name": group, "uid": owner["metadata"]["uid"]}]},
                        "data": {minted.record.token_id: _encoded(minted.record)}}
            if await kube.create(manifest) is not None:
                return
            continue
        current = parse_records({k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()})
        dropped = set(current) - set(without_expired(current, now))
        data: dict[str, str | None] = {token_id: None for token_id in dropped}  # null removes a key in a merge patch
        data[minted.record.token_id] = _encoded(minted.record)
        try:
            await kube.merge_patch(Ref("v1", "Secret", namespace, name),
                                   {"metadata": {"resourceVersion": secret["metadata"]["resourceVersion"]},
                                    "data": data})
        except KubeError as error:
            if error.conflict:
                continue
            raise
        return
    raise click.ClickException(f"Secret {namespace}/{name} kept changing; run the command again")


@token.command("create")
@click.option("--group", required=True, help="The ManagementGroup whose servers accept the token.")
@click.option("--uses", type=click.IntRange(min=1), help="How many enrollments the token allows (unlimited when "
              "left out, until it expires).")
@click.option("--single-use", is_flag=True, help="Allow exactly one enrollment (same as --uses 1).")
@click.option("--ttl", default="24h", show_default=True, help="How long the token is valid (at most 720h).")
@click.option("--description", default="", help="A note kept with the token, shown by `opsmgr token list`.")
@_kube_options
def create(*, group: str, uses: int | None, single_use: bool, ttl: str, description: str, namespace: str | None,
           kubeconfig: Path | None) -> None:
    """Create a join token and print it once; only its hash is stored."""
    if single_use and uses not in (None, 1):
        click.echo(f"--uses = {uses} contradicts --single-use. Fix: give one of them", err=True)
        sys.exit(EXIT_USAGE)
    try:
        lifetime = parse_duration(ttl)
        now = datetime.now(UTC)
        minted = mint_token(now, lifetime, 1 if single_use else uses, description[:200])
    except ValueError as exc:
        click.echo(f"--ttl = {ttl!r}: {exc}" if "--" not in str(exc) else str(exc), err=True)
        sys.exit(EXIT_USAGE)
    target = namespace or _current_namespace(kubeconfig)
    _run(kubeconfig, lambda kube: _store_token(kube, target, group, minted, now))
    record = minted.record
    click.echo(f"join token {record.token_id} for management group {target}/{group}: valid until "
               f"{record.expires.isoformat()}, uses: {record.uses_left()}. It is shown only now:", err=True)
    click.echo(minted.token)


async def _records(kube: Kube, namespace: str, group: str) -> dict[str, JoinTokenRecord]:
    secret = await kube.get("v1", "Secret", namespace, tokens_secret_name(group))
    return parse_records({k: base64.b64decode(v) for k, v in ((secret or {}).get("data") or {}).items()})


@token.command("list")
@click.option("--group", required=True, help="The ManagementGroup.")
@_kube_options
def list_tokens(*, group: str, namespace: str | None, kubeconfig: Path | None) -> None:
    """List a group's join tokens (ids, expiry, uses; never the tokens themselves)."""
    target = namespace or _current_namespace(kubeconfig)
    records = _run(kubeconfig, lambda kube: _records(kube, target, group))
    now = datetime.now(UTC)
    click.echo(f"{'ID':<10} {'EXPIRES':<27} {'USED':>5} {'LEFT':>9}  DESCRIPTION")
    for record in sorted(records.values(), key=lambda r: r.created):
        expires = record.expires.isoformat(timespec="seconds") + (" (expired)" if record.expires <= now else "")
        click.echo(f"{record.token_id:<10} {expires:<27} {record.uses:>5} {record.uses_left():>9}  "
                   f"{record.description}")


@token.command("delete")
@click.option("--group", required=True, help="The ManagementGroup.")
@click.argument("token_id")
@_kube_options
def delete(*, group: str, token_id: str, namespace: str | None, kubeconfig: Path | None) -> None:
    """Delete a join token by its id (the part before the dot): it accepts nothing from now on."""
    target = namespace or _current_namespace(kubeconfig)

    async def remove(kube: Kube) -> bool:
        if token_id not in await _records(kube, target, group):
            return False
        await kube.merge_patch(Ref("v1", "Secret", target, tokens_secret_name(group)), {"data": {token_id: None}})
        return True

    if not _run(kubeconfig, remove):
        click.echo(f"TOKEN_ID = {token_id!r}: no such token in group {target}/{group}. Fix: see `opsmgr token list "
                   f"--group {group}`", err=True)
        sys.exit(EXIT_FAILED)
    click.echo(f"join token {token_id} deleted")


# --- approvals ---

@click.group("agents")
def agents() -> None:
    """A person's decisions on agents waiting for approval."""


async def _decide(kube: Kube, namespace: str, name: str, decision: str) -> dict[str, Any]:
    ref = Ref(API, "Agent", namespace, name)
    if await kube.get(API, "Agent", namespace, name) is None:
        raise click.ClickException(f"NAME = {name!r}: no Agent {name} in namespace {namespace}. Fix: see `kubectl "
                                   f"get agents -n {namespace}`")
    return await kube.merge_patch(ref, {"metadata": {"annotations": {APPROVAL_ANNOTATION: decision}}})


def _decision_command(decision: str, verb: str) -> click.Command:
    @click.command(verb)
    @click.argument("name")
    @_kube_options
    def command(*, name: str, namespace: str | None, kubeconfig: Path | None) -> None:
        target = namespace or _current_namespace(kubeconfig)
        _run(kubeconfig, lambda kube: _decide(kube, target, name, decision))
        click.echo(f"agent {target}/{name} {decision.lower()}: the operator records it and the servers act on it")

    command.help = (f"{verb.capitalize()} an agent (sets {APPROVAL_ANNOTATION}={decision}); a Pending VM's "
                    "`opsmgr enroll` then gets its certificate." if decision == "Approved" else
                    f"{verb.capitalize()} an agent (sets {APPROVAL_ANNOTATION}={decision}); its certificate is "
                    "revoked.")
    return command


agents.add_command(_decision_command("Approved", "approve"))
agents.add_command(_decision_command("Rejected", "reject"))
