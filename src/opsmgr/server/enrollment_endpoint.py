"""The enrollment listener: its own gRPC server on `enrollment.port` with server-only TLS (the agent has no
certificate yet), and its own API client. Started by `ManagementServer` when the server has Kubernetes access.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from grpc import aio
from kubernetes_asyncio import client as kube_client

from opsmgr.kubeio import client as kubeio_client
from opsmgr.kubeio.kube import Kube
from opsmgr.protocol.transport import grpc_options
from opsmgr.server.config import ServerConfig
from opsmgr.server.enrollment import EnrollmentService
from opsmgr.server.enrollment_cluster import EnrollmentCluster

log = logging.getLogger(__name__)
FIELD_MANAGER = "opsmgr-server"


async def open_api_client(kubeconfig: Path | None) -> kube_client.ApiClient:
    """An API client from the kubeconfig file, or the Pod's in-cluster credentials when none is given."""
    return await kubeio_client.open_api_client(kubeconfig)


class EnrollmentEndpoint:
    """One listener; `start` returns the bound port (0 in the config picks a free one, for tests)."""

    def __init__(self, config: ServerConfig) -> None:
        assert config.kubernetes is not None, "enrollment needs the server's Kubernetes access"
        self.config = config
        self._api: kube_client.ApiClient | None = None
        self._grpc: aio.Server | None = None

    @classmethod
    def of(cls, config: ServerConfig) -> EnrollmentEndpoint | None:
        """The endpoint, or None when enrollment is off or the server has no Kubernetes access (no place to keep
        Agents, tokens and the CA)."""
        if not config.enrollment.enabled or config.kubernetes is None:
            return None
        return cls(config)

    async def start(self) -> int:
        kubernetes, enrollment, tls = self.config.kubernetes, self.config.enrollment, self.config.tls
        assert kubernetes is not None
        self._api = await open_api_client(kubernetes.kubeconfig)
        cluster = EnrollmentCluster(Kube(self._api, field_manager=FIELD_MANAGER), namespace=kubernetes.namespace,
                                    group=self.config.group, ca_secret=enrollment.ca_secret, server=self.config.name)
        service = EnrollmentService(cluster, retry_after_seconds=enrollment.retry_after_seconds)
        key, certificate = await asyncio.to_thread(lambda: (tls.key.read_bytes(), tls.certificate.read_bytes()))
        # Server-only TLS: the agent checks us against the group's CA; it proves itself inside the request.
        credentials = grpc.ssl_server_credentials([(key, certificate)], require_client_auth=False)
        self._grpc = aio.server(options=grpc_options())
        self._grpc.add_generic_rpc_handlers([service.handler()])
        port = int(self._grpc.add_secure_port(f"{enrollment.address}:{enrollment.port}", credentials))
        if port == 0:
            raise OSError(f"cannot listen on {enrollment.address}:{enrollment.port} (enrollment.port): is it in use?")
        await self._grpc.start()
        log.info("enrollment endpoint listening", extra={"fields": {"port": port, "namespace": kubernetes.namespace,
                                                                    "group": self.config.group}})
        return port

    async def stop(self, grace: float = 2.0) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._api is not None:
            await self._api.close()
            self._api = None
