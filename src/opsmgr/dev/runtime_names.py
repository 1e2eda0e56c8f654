"""Pure decisions of the local runtime about names and addresses: pod IPs, and the host entries for Services.

Resolver choice: a block of /etc/hosts that the runtime owns, between marker lines naming its address block, and
removes on exit. Every resolver on the machine (glibc, Python, asyncpg, gRPC's c-ares, the test process itself)
reads /etc/hosts, without a DNS server, a port 53 or changes to resolv.conf; the cost is one namespace-less name
space, so short Service names are written only when a single served namespace has that Service.

Names written, for each Service with a selector in a served namespace (and `kubernetes.default` -> the API server):
* `svc.ns.svc.cluster.local`, `svc.ns.svc`, `svc.ns`, and `svc` when unambiguous -> the pod IP of every ready
  Pod the Service selects, one line each, ordered by Pod name, so `ms-0` comes first. Clients connect to the
  first address and fall back to the next when it refuses: no load spreading (there is no proxy), but one dead
  endpoint is survived; with a single ready endpoint the name is exactly its pod IP. A Service with no ready
  endpoint does not resolve. The Service's port must equal its targetPort.
* for a headless Service, `<hostname>.svc.ns.svc[.cluster.local]` -> the pod IP of each selected Pod whose
  `subdomain` is the Service (StatefulSet Pods), ready Pods only unless the Service publishes not-ready addresses.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CLUSTER_DOMAIN = "cluster.local"
MARKER = "opsmgr dev runtime"


class AddressesExhausted(RuntimeError):
    """Every address of the runtime's block is taken by a Pod."""


def block_network(block: int) -> ipaddress.IPv4Network:
    """Pod address block number `block` (1-254): 127.0.<block>.0/24."""
    return ipaddress.IPv4Network(f"127.0.{block}.0/24")


@dataclass
class PodAddressPool:
    """Hands out 127.0.<block>.2-254, never reusing an address while another is free (stale peers see a refusal)."""

    block: int
    assigned: dict[str, str] = field(default_factory=dict)  # pod uid -> address
    _next: int = 2

    def address_of(self, uid: str) -> str:
        if uid in self.assigned:
            return self.assigned[uid]
        taken = set(self.assigned.values())
        for offset in range(253):
            host = 2 + (self._next - 2 + offset) % 253
            candidate = f"127.0.{self.block}.{host}"
            if candidate not in taken:
                self._next = host + 1
                self.assigned[uid] = candidate
                return candidate
        raise AddressesExhausted(f"all 253 addresses of {block_network(self.block)} are in use by Pods")

    def adopt(self, uid: str, address: str) -> bool:
        """Keep the address a Pod already reports (after a runtime restart), when it is ours and free."""
        if address in self.assigned.values():
            return self.assigned.get(uid) == address
        try:
            inside = ipaddress.IPv4Address(address) in block_network(self.block)
        except ValueError:
            return False
        if inside and not address.endswith((".0", ".1", ".255")):
            self.assigned[uid] = address
            return True
        return False

    def release(self, uid: str) -> None:
        self.assigned.pop(uid, None)


@dataclass(frozen=True)
class Endpoint:
    address: str
    ready: bool
    hostname: str | None
    subdomain: str | None
    pod_name: str


def pod_endpoint(pod: Mapping[str, Any]) -> Endpoint | None:
    """A Pod as a Service endpoint: its address and readiness (None while it has no address or is finished)."""
    status, spec = pod.get("status") or {}, pod.get("spec") or {}
    address = status.get("podIP")
    if not address or status.get("phase") in ("Succeeded", "Failed"):
        return None
    # A Pod being deleted is no longer ready, as the endpoints controller treats it.
    ready = not pod.get("metadata", {}).get("deletionTimestamp") and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    return Endpoint(address, bool(ready), spec.get("hostname"), spec.get("subdomain"),
                    str(pod.get("metadata", {}).get("name", "")))


def _natural(name: str) -> tuple[Any, ...]:
    # ms-2 before ms-10
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _selects(selector: Mapping[str, str], pod: Mapping[str, Any]) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def host_entries(services: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]],
                 namespaces: Iterable[str] | None, *, api_server: str = "127.0.0.1",
                 domain: str = CLUSTER_DOMAIN) -> list[tuple[str, list[str]]]:
    """(address, names) lines for the Services of `namespaces` (None = all), from the Pods they select.

    Computed here rather than read from EndpointSlices: the API server refuses loopback addresses in
    EndpointSlices, so the endpoints controllers cannot publish our pod IPs. `kubernetes.default` is the API server.
    """
    served = None if namespaces is None else set(namespaces)
    by_namespace: dict[str, list[tuple[Mapping[str, Any], Endpoint]]] = {}
    for pod in pods:
        endpoint = pod_endpoint(pod)
        namespace = pod.get("metadata", {}).get("namespace", "")
        if endpoint is not None and (served is None or namespace in served):
            by_namespace.setdefault(namespace, []).append((pod, endpoint))
    chosen = []
    for service in services:
        metadata, spec = service.get("metadata", {}), service.get("spec", {})
        namespace, name = metadata.get("namespace", ""), metadata.get("name", "")
        if (served is None or namespace in served) and spec.get("selector") and spec.get("type") != "ExternalName":
            chosen.append((namespace, name, spec))
    short_counts = Counter(name for _, name, _ in chosen)
    lines: list[tuple[str, list[str]]] = [
        (api_server, [f"kubernetes.default.svc.{domain}", "kubernetes.default.svc", "kubernetes.default"])]
    for namespace, name, spec in sorted(chosen, key=lambda s: (s[0], s[1])):
        publish_all = bool(spec.get("publishNotReadyAddresses"))
        endpoints = sorted((e for p, e in by_namespace.get(namespace, [])
                            if _selects(spec["selector"], p) and (e.ready or publish_all)),
                           key=lambda e: (_natural(e.pod_name), e.address))
        names = [f"{name}.{namespace}.svc.{domain}", f"{name}.{namespace}.svc", f"{name}.{namespace}"]
        if short_counts[name] == 1:
            names.append(name)
        lines += [(endpoint.address, names) for endpoint in endpoints]
        if spec.get("clusterIP") == "None":
            lines += [(e.address, [f"{e.hostname}.{name}.{namespace}.svc.{domain}",
                                   f"{e.hostname}.{name}.{namespace}.svc"])
                      for e in endpoints if e.hostname and e.subdomain == name]
    return lines


def _markers(block_id: str) -> tuple[str, str]:
    return f"# BEGIN {MARKER} {block_id}", f"# END {MARKER} {block_id}"


def render_block(block_id: str, lines: Sequence[tuple[str, Sequence[str]]]) -> str:
    begin, end = _markers(block_id)
    body = [f"{address}\t{' '.join(names)}" for address, names in lines]
    return "\n".join([begin, "# managed by `opsmgr dev runtime`; removed when it stops", *body, end]) + "\n"


_BLOCK = re.compile(rf"^# BEGIN {re.escape(MARKER)} (?P<id>\S+)\n.*?^# END {re.escape(MARKER)} (?P=id)\n?",
                    re.MULTILINE | re.DOTALL)


def splice_hosts(text: str, block_id: str, lines: Sequence[tuple[str, Sequence[str]]] | None,
                 keep: Iterable[str] | None = None) -> str:
    """`text` with this runtime's block replaced by `lines` (removed when None).

    With `keep`, blocks of other runtimes whose ids are not in it (left by a runtime that died) go too.
    """
    keep_ids = None if keep is None else {*keep, block_id}

    def drop(match: re.Match[str]) -> str:
        ident = match.group("id")
        if ident == block_id or (keep_ids is not None and ident not in keep_ids):
            return ""
        return match.group(0)

    without = _BLOCK.sub(drop, text)
    if without and not without.endswith("\n"):
        without += "\n"
    return without if lines is None else without + render_block(block_id, lines)


def block_ids(text: str) -> list[str]:
    return [m.group("id") for m in _BLOCK.finditer(text)]
