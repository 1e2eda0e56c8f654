"""The sidecar-injection webhook: an HTTPS endpoint in the operator process that the kube-apiserver calls for pods
that ask for an agent, answering with the JSON patch `render_agents.plan_injection` decides.

Reachability: in a cluster the chart's Service `<operator>-webhook` (443 -> 9443) fronts it; the
MutatingWebhookConfiguration names that Service, or a URL when the operator runs outside the cluster (development,
tests: `--webhook-host 127.0.0.1`). TLS: a dedicated webhook CA in a Secret, kept across restarts; the operator
writes its certificate into every webhook's caBundle of the configuration it is told about. failurePolicy is
Ignore (see the chart): when this endpoint is down, pods start without an agent rather than not at all.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from opsmgr.api import ManagementGroup
from opsmgr.api.common import GROUP, VERSION
from opsmgr.operator import render
from opsmgr.operator.context import OperatorContext
from opsmgr.operator.kube import PLURALS, KubeError, Ref
from opsmgr.operator.names import MANAGED_BY
from opsmgr.operator.render_agents import NAME_SUFFIX_ALPHABET, admission_response, plan_injection
from opsmgr.operator.webhook_tls import ServingIdentity, serving_identity

log = logging.getLogger(__name__)

PATH = "/inject-agent"
DEFAULT_PORT = 9443
DEFAULT_CONFIGURATION = "opsmgr-sidecar-injection"
ADMISSION = "admissionregistration.k8s.io/v1"
CA_BUNDLE_SECONDS = 15.0
PLURALS.setdefault("MutatingWebhookConfiguration", "mutatingwebhookconfigurations")


@dataclass
class WebhookSettings:
    """Where the webhook listens, the names its certificate carries, and where its CA is kept."""

    port: int
    hosts: tuple[str, ...]
    secret_namespace: str
    secret_name: str
    configuration: str
    agent_image: str
    address: str = "0.0.0.0"  # noqa: S104 (the kube-apiserver is remote)


@dataclass
class WebhookState:
    """The groups the webhook can place pods in (kept from a watch) and its running server."""

    groups: dict[tuple[str, str], ManagementGroup] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    keeper: asyncio.Task[None] | None = None


def _state(memo: Any) -> WebhookState:
    state = getattr(memo, "webhook_state", None)
    if state is None:
        state = WebhookState()
        memo.webhook_state = state
    assert isinstance(state, WebhookState)
    return state


def _suffix() -> str:
    return "".join(secrets.choice(NAME_SUFFIX_ALPHABET) for _ in range(5))


def review(body: dict[str, Any], state: WebhookState, image: str) -> dict[str, Any]:
    """The AdmissionReview answer to one request; never refuses a pod, whatever goes wrong."""
    request = body.get("request") or {}
    uid = str(request.get("uid", ""))
    pod = request.get("object") or {}
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default"
    try:
        injection = plan_injection(pod, namespace, state.groups, image=image, name_suffix=_suffix())
    except (KeyError, TypeError, ValueError) as error:
        log.warning("sidecar injection skipped for a pod in %s: %s", namespace, error)
        return admission_response(uid, [], [f"opsmgr: no agent injected: {error}"])
    return admission_response(uid, injection.patch, injection.warnings)


def _application(state: WebhookState, image: str) -> web.Application:
    async def inject(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "not an AdmissionReview"}, status=400)
        return web.json_response(review(body, state, image))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    application = web.Application(client_max_size=8 * 1024 * 1024)
    application.router.add_post(PATH, inject)
    application.router.add_get("/healthz", healthz)
    return application


async def _serving_identity(context: OperatorContext, settings: WebhookSettings) -> ServingIdentity:
    """Load or issue the serving identity and keep it in its Secret."""
    secret = await context.kube.get("v1", "Secret", settings.secret_namespace, settings.secret_name)
    identity = await asyncio.to_thread(serving_identity, render.decode(secret), settings.hosts, datetime.now(UTC))
    if identity.changed:
        await context.kube.apply({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": settings.secret_name, "namespace": settings.secret_namespace,
                         "labels": {"app.kubernetes.io/name": "opsmgr", "app.kubernetes.io/component": "webhook",
                                    "app.kubernetes.io/managed-by": MANAGED_BY}},
            "data": render.encode(identity.secret_data()),
        })
    return identity


def _ssl_context(identity: ServingIdentity) -> ssl.SSLContext:
    """A server context for the pair (ssl loads keys only from files: a private temporary directory)."""
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="opsmgr-webhook-") as directory:
        certificate, key = Path(directory) / "tls.crt", Path(directory) / "tls.key"
        certificate.write_bytes(identity.certificate_pem)
        key.touch(mode=0o600)
        key.write_bytes(identity.key_pem)
        tls.load_cert_chain(certificate, key)
    return tls


async def publish_ca_bundle(context: OperatorContext, configuration: str, ca_pem: bytes) -> bool:
    """Put the webhook CA into every webhook of the configuration; False when the configuration does not exist."""
    found = await context.kube.get(ADMISSION, "MutatingWebhookConfiguration", "", configuration)
    if found is None:
        return False
    bundle = base64.b64encode(ca_pem).decode()
    webhooks = found.get("webhooks") or []
    if all((w.get("clientConfig") or {}).get("caBundle") == bundle for w in webhooks):
        return True
    for webhook in webhooks:
        webhook.setdefault("clientConfig", {})["caBundle"] = bundle
    patch = {"metadata": {"resourceVersion": found["metadata"]["resourceVersion"]}, "webhooks": webhooks}
    await context.kube.merge_patch(Ref(ADMISSION, "MutatingWebhookConfiguration", None, configuration), patch)
    return True


async def start(context: OperatorContext, settings: WebhookSettings, memo: Any) -> None:
    state = _state(memo)
    identity = await _serving_identity(context, settings)
    tls = await asyncio.to_thread(_ssl_context, identity)
    runner = web.AppRunner(_application(state, settings.agent_image), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.address, settings.port, ssl_context=tls).start()
    state.runner = runner
    log.info(f"sidecar-injection webhook serving https://{settings.hosts[0]}:{settings.port}{PATH}")
    state.keeper = asyncio.create_task(_keep_ca_bundle(context, settings.configuration, identity.ca_pem))


async def _keep_ca_bundle(context: OperatorContext, configuration: str, ca_pem: bytes) -> None:
    """Write the caBundle now and again whenever someone re-applies the configuration without it."""
    warned = False
    while True:
        try:
            if not await publish_ca_bundle(context, configuration, ca_pem) and not warned:
                warned = True
                log.warning(f"MutatingWebhookConfiguration {configuration} does not exist; the kube-apiserver will "
                            "not call the webhook until it does (the chart creates it with webhook.enabled=true)")
        except KubeError as error:
            log.warning(f"could not write the webhook caBundle into {configuration}: {error}")
        await asyncio.sleep(CA_BUNDLE_SECONDS)


async def stop(memo: Any) -> None:
    state = _state(memo)
    if state.keeper is not None:
        state.keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await state.keeper
    if state.runner is not None:
        with contextlib.suppress(Exception):
            await state.runner.cleanup()
        state.runner = None


@kopf.on.event(GROUP, VERSION, "managementgroups")
def group_seen(*, event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """Keep the webhook's view of the groups current without a request to the API server per pod."""
    body = event.get("object") or {}
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
    state = _state(memo)
    if event.get("type") == "DELETED":
        state.groups.pop(key, None)
        return
    try:
        state.groups[key] = ManagementGroup.from_body(body)
    except ValueError as error:
        log.warning(f"ManagementGroup {key[0]}/{key[1]} is not usable for injection: {error}")
