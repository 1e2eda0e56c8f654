"""The console's door to the API server: its own identity reads Agents and ManagementPacks and asks TokenReview and
SubjectAccessReview; a person's change to an Agent is sent with that person's own token, so Kubernetes RBAC (and
the audit log) see who made it. No decisions here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio.client.exceptions import ApiException

from opsmgr.api.common import GROUP, VERSION
from opsmgr.kubeio.kube import Kube, KubeError, Manifest, Ref

API_VERSION = f"{GROUP}/{VERSION}"
# The operator's annotation (opsmgr.operator.names.APPROVAL_ANNOTATION): a person's decision on a reviewed agent.
APPROVAL_ANNOTATION = f"{GROUP}/approval"
FIELD_MANAGER = "opsmgr-console"


@dataclass(frozen=True)
class User:
    """Who a bearer token belongs to, as TokenReview said."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Review:
    authenticated: bool
    user: User | None
    error: str


class ConsoleCluster:
    def __init__(self, api: kube_client.ApiClient, namespace: str) -> None:
        self.api = api
        self.kube = Kube(api, field_manager=FIELD_MANAGER)
        self.namespace = namespace

    async def agents(self) -> list[Manifest]:
        return await self.kube.list(API_VERSION, "Agent", self.namespace)

    async def agent(self, name: str) -> Manifest | None:
        return await self.kube.get(API_VERSION, "Agent", self.namespace, name)

    async def packs(self) -> list[Manifest]:
        return await self.kube.list(API_VERSION, "ManagementPack", self.namespace)

    async def pack(self, name: str) -> Manifest | None:
        return await self.kube.get(API_VERSION, "ManagementPack", self.namespace, name)

    async def review(self, token: str) -> Review:
        """TokenReview with the API server's own audiences: the tokens people use with kubectl."""
        body = kube_client.V1TokenReview(spec=kube_client.V1TokenReviewSpec(token=token))
        try:
            reply = await kube_client.AuthenticationV1Api(self.api).create_token_review(body)
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), "create", "TokenReview", str(exc.reason)) from None
        status = reply.status
        if not status.authenticated or status.user is None:
            return Review(False, None, str(status.error or "the token was not accepted"))
        user = status.user
        return Review(True, User(str(user.username or ""), str(user.uid or ""), tuple(user.groups or ()),
                                 {key: list(value) for key, value in (user.extra or {}).items()}), "")

    async def allowed(self, user: User, *, verb: str, resource: str, name: str | None = None) -> tuple[bool, str]:
        """SubjectAccessReview: whether RBAC lets `user` do `verb` on `resource` of opsmgr.io in the namespace."""
        attributes = kube_client.V1ResourceAttributes(group=GROUP, resource=resource, verb=verb,
                                                      namespace=self.namespace, name=name)
        spec = kube_client.V1SubjectAccessReviewSpec(user=user.username, uid=user.uid or None,
                                                     groups=list(user.groups), extra=user.extra or None,
                                                     resource_attributes=attributes)
        try:
            reply = await kube_client.AuthorizationV1Api(self.api).create_subject_access_review(
                kube_client.V1SubjectAccessReview(spec=spec))
        except ApiException as exc:
            raise KubeError(int(exc.status or 0), "create", "SubjectAccessReview", str(exc.reason)) from None
        return bool(reply.status.allowed), str(reply.status.reason or "")

    async def decide_approval(self, token: str, name: str, decision: str) -> Manifest:
        """Set the approval annotation as the person whose token this is (RBAC decides; 403 when it says no)."""
        api = self._client_for(token)
        try:
            kube = Kube(api, field_manager=FIELD_MANAGER)
            return await kube.merge_patch(Ref(API_VERSION, "Agent", self.namespace, name),
                                          {"metadata": {"annotations": {APPROVAL_ANNOTATION: decision}}})
        finally:
            await api.close()

    def _client_for(self, token: str) -> kube_client.ApiClient:
        """An ApiClient to the same API server that authenticates with `token` alone (none of the console's
        own credentials: no client certificate, no ServiceAccount token)."""
        mine: Any = self.api.configuration
        configuration = kube_client.Configuration(host=mine.host)
        configuration.ssl_ca_cert = mine.ssl_ca_cert
        configuration.verify_ssl = mine.verify_ssl
        configuration.tls_server_name = getattr(mine, "tls_server_name", None)
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        return kube_client.ApiClient(configuration)
