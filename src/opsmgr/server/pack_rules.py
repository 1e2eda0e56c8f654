"""Which ManagementPacks a management server pushes to which agent, and in what form (pure).

A pack is pushed when it belongs to this server's group (in its namespace), is not being deleted, and passes the
checks of the operator's Valid condition (`opsmgr.api.pack_validation`). A pack that `kubectl get mp` calls
invalid is held back as a whole: not run in part, and not kept at an older spec, because every server decides
from what is in the cluster alone, so all servers and restarts agree; its Ready condition names the fix, and once
fixed it reaches the agents.

Each agent gets the packs whose agentSelector matches its Agent resource's labels, resolved for it: the overrides
that do not select it are dropped and the selectors cleared. The agent (`opsmgr.agent.packs`) matches selectors
against its own configured labels, which may differ from the Agent resource's; resolved here, its verdict cannot
differ from the server's. The config version is a digest of the exact JSON sent, so an unchanged config is never
sent again and any change (a rule, an override, a pack's version, a new label) is.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from opsmgr.api.common import API_VERSION, LabelSelector
from opsmgr.api.management_pack import ManagementPack
from opsmgr.api.pack_validation import pack_problems

VERSION_CHARS = 16  # of the SHA-256 hex digest: ample to tell one agent's configs apart


@dataclass(frozen=True, slots=True)
class PackConfig:
    """What `AgentConfig` carries about packs: the JSON list of packs for one agent and its version."""

    packs_json: bytes
    version: str
    packs: tuple[str, ...] = ()  # the names of the packs in it, for the server's log


@dataclass(frozen=True, slots=True)
class Withheld:
    """A pack of this group that is not pushed, and why (a sentence for the server's log)."""

    reason: str


def accept_pack(body: Mapping[str, Any], *, namespace: str, group: str) -> ManagementPack | Withheld | None:
    """The pack to push, Withheld with the reason, or None when it is not this group's."""
    name = str((body.get("metadata") or {}).get("name", ""))
    try:
        pack = ManagementPack.from_body(body)
    except ValidationError as error:
        # The API server's schema admitted it, so this server is older than the CRD: say so, and push nothing.
        return Withheld(f"management pack {name} does not parse ({error.errors()[0]['msg']}); upgrade the "
                        "management servers to the version of the installed CRDs")
    reference = pack.spec.management_group_ref
    if reference.name != group or reference.namespace_or(pack.metadata.namespace or namespace) != namespace:
        return None
    if pack.metadata.deletion_timestamp is not None:
        return Withheld(f"management pack {name} is being deleted")
    problems = pack_problems(pack.spec)
    if problems:
        return Withheld(f"management pack {name} is invalid, so no agent runs it until it is fixed: "
                        f"{'; '.join(problems)}")
    return pack


def packs_for(packs: Iterable[ManagementPack], labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """The packs an agent with these (Agent resource) labels runs, resolved for it, ordered by name."""
    chosen = []
    for pack in sorted(packs, key=lambda p: p.metadata.name or ""):
        spec = pack.spec
        if not spec.agent_selector.matches(labels):
            continue
        overrides = [override.model_copy(update={"agent_selector": None}) for override in spec.overrides
                     if override.agent_selector is None or override.agent_selector.matches(labels)]
        resolved = spec.model_copy(update={"agent_selector": LabelSelector(), "overrides": overrides})
        # Only name and spec: status and resourceVersion change without changing what the agent runs.
        chosen.append({"apiVersion": API_VERSION, "kind": "ManagementPack",
                       "metadata": {"name": pack.metadata.name}, "spec": resolved.to_dict()})
    return chosen


def pack_config(packs: Iterable[ManagementPack], labels: Mapping[str, str]) -> PackConfig:
    """The packs JSON of one agent and its version; "[]" when none targets it (the agent then runs none)."""
    chosen = packs_for(packs, labels)
    document = json.dumps(chosen, sort_keys=True, separators=(",", ":")).encode()
    return PackConfig(document, hashlib.sha256(document).hexdigest()[:VERSION_CHARS],
                      tuple(pack["metadata"]["name"] for pack in chosen))
