"""The operator's one door to the API server: `opsmgr.kubeio.kube.Kube` with the operator's field manager, every
request counted for /metrics.
"""

from __future__ import annotations

from kubernetes_asyncio import client as kube_client
from prometheus_client import Counter

from opsmgr.kubeio import kube
from opsmgr.kubeio.kube import PLURALS, KubeError, Manifest, Ref
from opsmgr.operator.names import FIELD_MANAGER

__all__ = ["API_REQUESTS", "PLURALS", "Kube", "KubeError", "Manifest", "Ref"]

API_REQUESTS = Counter("opsmgr_operator_api_requests", "Requests the operator's handlers sent to the API server.",
                       ["verb", "resource", "code"])


class Kube(kube.Kube):
    def __init__(self, api: kube_client.ApiClient) -> None:
        super().__init__(api, field_manager=FIELD_MANAGER, requests=API_REQUESTS)
