"""A node agent's view of the pods on its node: listed from the API server with the pod's ServiceAccount token
(fieldSelector spec.nodeName, so the answer is only this node's pods), as discovery records.

The listing is blocking I/O and runs in discovery's worker thread; `pod_records` is pure. Records, not
`DiscoveredObject`s, so this module and `discovery` do not import each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ACCOUNT_DIRECTORY = "/var/run/secrets/kubernetes.io/serviceaccount"
TIMEOUT_SECONDS = 10.0
POD_LIMIT = 500  # a node runs at most a few hundred pods; the bound keeps one answer small


PodRecord = tuple[str, str, str, dict[str, object]]  # key, class, display name, properties


def pod_records(pods: Iterable[Mapping[str, Any]], node: str) -> list[PodRecord]:
    """One Kubernetes.Pod record per pod on the node, with what describes it (not how busy it is)."""
    found = []
    for pod in pods:
        meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        owner = next((f"{o.get('kind')}/{o.get('name')}" for o in meta.get("ownerReferences") or []
                      if o.get("controller")), "")
        found.append((f"Kubernetes.Pod:{namespace}/{name}", "Kubernetes.Pod", f"{namespace}/{name}", {
            "name": name, "namespace": namespace, "uid": meta.get("uid"), "node": node, "phase": status.get("phase"),
            "pod_ip": status.get("podIP"), "owner": owner,
            "containers": ",".join(sorted(c.get("name", "") for c in spec.get("containers") or [])),
        }))
    return found


def list_node_pods(environ: Mapping[str, str]) -> list[dict[str, Any]] | None:
    """The pods bound to this node (OPSMGR_NODE_NAME), or None outside a node agent's pod. Raises OSError when the
    API server cannot be asked (discovery then retries the whole inventory)."""
    node = environ.get("OPSMGR_NODE_NAME", "")
    host, port = environ.get("KUBERNETES_SERVICE_HOST", ""), environ.get("KUBERNETES_SERVICE_PORT", "443")
    # The local runtime roots a container's mounts under OPSMGR_ROOT; in a container it is unset.
    account = Path(environ.get("OPSMGR_ROOT", "") + ACCOUNT_DIRECTORY)
    if not node or not host or not (account / "token").exists():
        return None
    # Only a node agent in its pod gets here: urllib.request (with http.client) costs every other agent ~0.5 MB, and
    # ssl (with OpenSSL) ~4.5 MB; this runs in a worker thread, so asyncio's lack of ssl does not matter.
    import ssl  # noqa: PLC0415
    from urllib.request import Request, urlopen  # noqa: PLC0415

    token = (account / "token").read_text().strip()
    context = ssl.create_default_context(cafile=str(account / "ca.crt"))
    query = urlencode({"fieldSelector": f"spec.nodeName={node}", "limit": str(POD_LIMIT)})
    address = f"[{host}]" if ":" in host else host
    request = Request(f"https://{address}:{port}/api/v1/pods?{query}",
                      headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    with urlopen(request, timeout=TIMEOUT_SECONDS, context=context) as response:  # noqa: S310
        body = json.loads(response.read())
    items: list[dict[str, Any]] = body.get("items") or []
    return items


def node_pod_records(environ: Mapping[str, str]) -> list[PodRecord]:
    pods = list_node_pods(environ)
    return [] if pods is None else pod_records(pods, environ.get("OPSMGR_NODE_NAME", ""))
