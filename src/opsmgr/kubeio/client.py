"""Opening the one ApiClient a component keeps for its lifetime."""

from __future__ import annotations

from pathlib import Path

from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio import config as kube_config


async def open_api_client(kubeconfig: Path | None, *, pool_size: int = 16) -> kube_client.ApiClient:
    """An API client from the kubeconfig file, or the Pod's in-cluster credentials when none is given."""
    configuration = kube_client.Configuration()
    if kubeconfig is not None:
        await kube_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        try:
            kube_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except kube_config.ConfigException:
            # No token at the in-cluster path (the local runtime roots mounts elsewhere): $KUBECONFIG names it.
            await kube_config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = pool_size
    return kube_client.ApiClient(configuration)
