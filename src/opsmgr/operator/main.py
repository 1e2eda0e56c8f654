"""`opsmgr operator`: run the kopf operator, with /metrics, a liveness endpoint and one API client.

Importing the handler modules registers them with kopf; this module wires startup (settings, the ApiClient in
memo, the metrics endpoint) and cleanup (closing the client).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import logging
from pathlib import Path
from typing import Any

import click
import kopf
from kubernetes_asyncio import client as kube_client
from kubernetes_asyncio import config as kube_config
from prometheus_client import start_http_server

from opsmgr.allocator import glibc_malloc, release_free_memory
from opsmgr.operator import (
    agent,
    agent_task,
    gateway,
    indexes,
    management_group,
    management_pack,
    node_agents,
    sidecar_agents,
    webhook,
)
from opsmgr.operator.context import DEFAULT_IMAGE, DEFAULT_POSTGRES_IMAGE, OperatorContext
from opsmgr.operator.kube import Kube
from opsmgr.operator.names import FINALIZER, KOPF_PREFIX, MANAGED_BY
from opsmgr.operator.node_agents import DEFAULT_AGENT_IMAGE

KOPF_PACKAGE = str(Path(kopf.__file__).parent)
HANDLER_MODULES = (agent, agent_task, gateway, indexes, management_group, management_pack, node_agents,
                   sidecar_agents, webhook)
# Connections to the API server; handlers beyond this wait for one. (Key pairs are made in the default thread pool,
# so they are bounded by its threads, not by the number of handlers.)
API_CONNECTIONS = 64
EVENT_POSTERS = 8
# How long an Event poster waits for more Events of its object before it frees its slot. kopf's default (1 s) made
# each of the EVENT_POSTERS slots idle a second per object: at most 8 Agents' Events a second, so a burst of new
# Agents queued thousands of posters (each with its queue and Events) that outlived the burst by many minutes and
# held the operator's memory at its peak. Not 0: kopf's poster then spins on a queue it never reads.
EVENT_POSTER_IDLE_SECONDS = 0.05
# Read buffer of each TLS connection. asyncio gives every one 256 KiB, zero-filled and so resident, for its whole
# life; the operator holds 64 connections of its own and kopf's pool grows past 100 in a burst of new Agents, so the
# buffers alone were the largest part of the operator's memory (45 of 81 MiB malloc'd at 2,000 Agents, heaptrack).
# OpenSSL hands back at most one record (16 KiB) per read, so 32 KiB still takes two records per receive.
TLS_READ_BUFFER = 32 * 1024
# How long kopf keeps a per-object worker (its task, queue and the object's latest body) after the object's last
# event. kopf's 5 s kept one for nearly every Agent of a burst at once.
OBJECT_WORKER_IDLE_SECONDS = 0.5
# How often the operator hands glibc's free pages back to the kernel (see opsmgr.allocator). A burst of new Agents
# leaves holes among what the operator keeps: bench_operator, 10,000 Agents, 4 runs each, medians: peak RSS
# 266 -> 247 MiB (highest 287 -> 262), 15 s after the last Ready 265 -> 232 MiB; CPU per Agent unchanged. A pass
# that finds nothing to give back takes under a millisecond.
RELEASE_MEMORY_SECONDS = 2.0


async def _api_client() -> kube_client.ApiClient:
    try:
        kube_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kube_config.ConfigException:
        await kube_config.load_kube_config()
    configuration = kube_client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = API_CONNECTIONS
    return kube_client.ApiClient(configuration)


def _kopf_progress_not_posted(record: logging.LogRecord) -> bool:
    """Keep kopf's own per-pass INFO lines ("Handler ... succeeded.", "Creation is processed: ...") in the log but
    out of Events: they doubled the Events of every new Agent (and of every Agent at a restart) after our own
    announcement, and the posters' backlog grew with them. kopf's warnings and errors, and our own lines, still post.
    """
    if record.levelno < logging.WARNING and record.pathname.startswith(KOPF_PACKAGE):
        record.k8s_skip = True
    return True


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own watches use the same credentials as our client: in-cluster token, else the kubeconfig."""
    return await kopf.login_via_async_client(**kwargs)


@kopf.on.startup()
async def startup(*, settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # kopf ignores every annotation under its storage prefix when diffing, so it gets a subdomain of its own:
    # otherwise a person's opsmgr.io/approval annotation would never reach a handler.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    settings.posting.reporting_component = MANAGED_BY
    settings.posting.level = logging.INFO
    logging.getLogger("kopf.objects").addFilter(_kopf_progress_not_posted)
    # Events are posted by kopf's own client, outside our connection pool; unbounded, a burst of new Agents posted
    # thousands at once and crowded the API server into 429s for the handlers' own requests.
    settings.posting.worker_limit = EVENT_POSTERS
    settings.posting.idle_timeout = EVENT_POSTER_IDLE_SECONDS
    # No limit on kopf's per-object workers: handlers wait until every index holds the whole initial listing, and
    # indexing runs in those same workers, so a restart that found more Agents than the limit deadlocked (the
    # first workers waited for an index that the queued rest never filled). API calls are bounded by the pool.
    settings.queueing.worker_limit = None
    settings.queueing.idle_timeout = OBJECT_WORKER_IDLE_SECONDS
    # Served resources are found once at start (our CRDs are installed first), so no cluster-wide CRD watch.
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    memo.context = OperatorContext(Kube(await _api_client()), image=memo.image, postgres_image=memo.postgres_image)
    if memo.metrics_port:
        start_http_server(memo.metrics_port)
    if memo.webhook is not None:
        await webhook.start(memo.context, memo.webhook, memo)
    memo.releasing = asyncio.create_task(_release_free_memory_every(RELEASE_MEMORY_SECONDS), name="release-memory")
    logger.info(f"opsmgr operator started; servers run {memo.image}, embedded databases {memo.postgres_image}")


@kopf.on.cleanup()
async def cleanup(*, memo: Any, **_: Any) -> None:
    releasing = getattr(memo, "releasing", None)
    if releasing is not None:
        releasing.cancel()
    await webhook.stop(memo)
    context = getattr(memo, "context", None)
    if isinstance(context, OperatorContext):
        await context.kube.api.close()


async def _release_free_memory_every(seconds: float) -> None:
    if not glibc_malloc():
        return  # another C library keeps its own ways
    while True:
        await asyncio.sleep(seconds)
        release_free_memory()


def _small_tls_read_buffers() -> None:
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def run(*, namespaces: tuple[str, ...], image: str, postgres_image: str, metrics_port: int,
        liveness_port: int, agent_image: str = DEFAULT_AGENT_IMAGE,
        webhook_settings: webhook.WebhookSettings | None = None) -> None:
    memo = kopf.Memo(image=image, postgres_image=postgres_image, metrics_port=metrics_port, agent_image=agent_image,
                     webhook=webhook_settings)
    liveness = f"http://0.0.0.0:{liveness_port}/healthz" if liveness_port else None
    _small_tls_read_buffers()
    asyncio.run(kopf.operator(
        clusterwide=not namespaces, namespaces=list(namespaces), standalone=True, memo=memo,
        liveness_endpoint=liveness))


@click.command("operator")
@click.option("--namespace", "-n", "namespaces", multiple=True, metavar="NAME",
              help="Serve only this namespace (repeatable); every namespace when omitted.")
@click.option("--image", envvar="OPSMGR_IMAGE", default=DEFAULT_IMAGE, show_default=True,
              help="Image of the management servers, gateways and migration Jobs (or $OPSMGR_IMAGE).")
@click.option("--postgres-image", envvar="OPSMGR_POSTGRES_IMAGE", default=DEFAULT_POSTGRES_IMAGE, show_default=True,
              help="Image of embedded PostgreSQL (or $OPSMGR_POSTGRES_IMAGE).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9090, show_default=True,
              help="Port of /metrics (0 turns it off).")
@click.option("--liveness-port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port of the liveness endpoint /healthz (0 turns it off).")
@click.option("--agent-image", envvar="OPSMGR_AGENT_IMAGE", default=DEFAULT_AGENT_IMAGE, show_default=True,
              help="Image of node agents and injected sidecar agents (or $OPSMGR_AGENT_IMAGE).")
@click.option("--webhook-port", envvar="OPSMGR_WEBHOOK_PORT", type=click.IntRange(0, 65535), default=0,
              show_default=True, help="Port of the sidecar-injection webhook (HTTPS); 0 turns it off.")
@click.option("--webhook-host", "webhook_hosts", multiple=True, metavar="NAME", envvar="OPSMGR_WEBHOOK_HOSTS",
              help="Name or address the kube-apiserver calls the webhook by (repeatable; its certificate's names); "
                   "default: the webhook Service's DNS names.")
@click.option("--webhook-service", envvar="OPSMGR_WEBHOOK_SERVICE", default="opsmgr-system/opsmgr-operator-webhook",
              show_default=True, metavar="NAMESPACE/NAME", help="The Service in front of the webhook.")
@click.option("--webhook-secret", envvar="OPSMGR_WEBHOOK_SECRET", default="opsmgr-system/opsmgr-webhook-tls",
              show_default=True, metavar="NAMESPACE/NAME", help="Secret that keeps the webhook's CA and certificate.")
@click.option("--webhook-configuration", envvar="OPSMGR_WEBHOOK_CONFIGURATION",
              default=webhook.DEFAULT_CONFIGURATION, show_default=True, metavar="NAME",
              help="MutatingWebhookConfiguration whose caBundle the operator keeps current.")
@click.option("--verbose", "-v", is_flag=True, help="Log every handler's progress.")
def operator(*, namespaces: tuple[str, ...], image: str, postgres_image: str, metrics_port: int, liveness_port: int,
             agent_image: str, webhook_port: int, webhook_hosts: tuple[str, ...], webhook_service: str,
             webhook_secret: str, webhook_configuration: str, verbose: bool) -> None:
    """Reconcile ManagementGroups, Agents, Gateways, ManagementPacks and AgentTasks."""
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.PLAIN)
    settings = None
    if webhook_port:
        service_namespace, _, service = webhook_service.rpartition("/")
        secret_namespace, _, secret = webhook_secret.rpartition("/")
        if not (service_namespace and service and secret_namespace and secret):
            raise click.BadParameter("write NAMESPACE/NAME", param_hint="--webhook-service / --webhook-secret")
        hosts = webhook_hosts or (f"{service}.{service_namespace}.svc",
                                  f"{service}.{service_namespace}.svc.cluster.local")
        settings = webhook.WebhookSettings(port=webhook_port, hosts=tuple(hosts), secret_namespace=secret_namespace,
                                           secret_name=secret, configuration=webhook_configuration,
                                           agent_image=agent_image)
    run(namespaces=namespaces, image=image, postgres_image=postgres_image, metrics_port=metrics_port,
        liveness_port=liveness_port, agent_image=agent_image, webhook_settings=settings)
