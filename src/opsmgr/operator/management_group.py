"""ManagementGroup handlers: gather, render, apply, and write status when it changed.

Split by concern as CloudNativePG splits its reconciler: certificates, databases, servers, agents (assignment and
directory), status. One reconcile runs per group at a time; a timer runs it every few seconds, which is what puts
an edited child back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf

from opsmgr.api import ManagementGroup
from opsmgr.api.common import GROUP, VERSION
from opsmgr.api.conditions import READY, is_condition_true, set_condition, summarize_ready
from opsmgr.api.management_group import AgentCounts, Endpoints, ServerCounts
from opsmgr.operator import render
from opsmgr.operator.approval import to_rejudge
from opsmgr.operator.assignment import Assignment, assign
from opsmgr.operator.certificates import (
    CaOutcome,
    generated_ca,
    imported_ca,
    issue_leaf,
    leaf_lifetimes,
    leaf_need,
)
from opsmgr.operator.context import OperatorContext, context_of
from opsmgr.operator.indexes import AgentEntry, GatewayEntry, entries
from opsmgr.operator.kube import Kube, KubeError, Ref
from opsmgr.operator.names import POLICY_ANNOTATION, RENEW_ANNOTATION, GroupNames, selector
from opsmgr.operator.readiness import (
    CERTIFICATES_READY,
    DATABASES_READY,
    GROUP_REQUIRED,
    SERVERS_READY,
    CertificateFacts,
    DatabaseFacts,
    JobState,
    certificates_verdict,
    databases_verdict,
    servers_verdict,
)
from opsmgr.operator.status_writer import announce, fold, status_patch, transitions, write_status
from opsmgr.pki import CertificateAuthority, CertificateError, Check, ManagementServerNames, TrustBundle

log = logging.getLogger(__name__)
OWNED_STATUS = ("observedGeneration", "conditions", "databaseMode", "servers", "agents", "endpoints", "caNotAfter")
RECONCILE_SECONDS = 10.0  # drift is put back within this (plus the apply), well inside the 30 s promise
REBALANCE_CONCURRENCY = 32


async def load_ca(context: OperatorContext, group: ManagementGroup, now: datetime) -> CertificateAuthority:
    """The group's CA for issuing (agents, gateways), from a short cache; raises CertificateError when unusable."""
    names = render.group_names(group)
    key = ("ca", names.namespace, names.group)
    cached = context.cached_ca(key)
    if cached is not None:
        return cached
    imported = group.spec.certificates.authority.imported
    secret_name = imported.secret.name if imported is not None else names.ca_secret
    secret = await context.kube.get("v1", "Secret", names.namespace, secret_name)
    if imported is not None:
        ca = imported_ca(render.decode(secret) if secret else None, secret_name, now)
    else:
        data = render.decode(secret)
        if not data:
            raise CertificateError(Check.UNREADABLE, f"Secret {secret_name}", "(missing)",
                                   "does not exist yet", "wait for the ManagementGroup to create its CA")
        ca = generated_ca(group, data, now).ca
    context.remember_ca(key, ca)
    return ca


# --- certificates ---

@dataclass
class CertificateResult:
    facts: CertificateFacts
    ca: CertificateAuthority | None = None
    tls_data: dict[str, str] | None = None


async def _certificates(context: OperatorContext, group: ManagementGroup, now: datetime) -> CertificateResult:
    names = render.group_names(group)
    kube = context.kube
    desired = group.spec.servers.replicas
    imported = group.spec.certificates.authority.imported
    try:
        if imported is not None:
            secret = await kube.get("v1", "Secret", names.namespace, imported.secret.name)
            ca = imported_ca(render.decode(secret) if secret else None, imported.secret.name, now)
        else:
            secret = await kube.get("v1", "Secret", names.namespace, names.ca_secret)
            outcome: CaOutcome = generated_ca(group, render.decode(secret), now)
            ca = outcome.ca
            if outcome.write:
                trust = TrustBundle.of(ca).pem()
                await kube.apply(render.render_ca_secret(group, ca.certificate_pem(), ca.key_pem(), trust,
                                                         ca.certificate.not_valid_after_utc.isoformat()))
                context.forget(("ca", names.namespace, names.group))
    except CertificateError as error:
        return CertificateResult(CertificateFacts(error.reason, str(error), servers_desired=desired))
    validity, renew_before = leaf_lifetimes(group)
    current = render.decode(await kube.get("v1", "Secret", names.namespace, names.server_tls_secret))
    leaves: dict[str, tuple[bytes, bytes]] = {}
    for replica in range(desired):
        server = ManagementServerNames(group=names.group, namespace=names.namespace, statefulset=names.statefulset,
                                       headless_service=names.headless_service, shared_service=names.agent_service,
                                       replica=replica)
        pod = server.pod_name
        dns = list(server.dns_names())
        need = leaf_need(current.get(f"{pod}.crt"), ca, dns, now, renew_before=renew_before)
        if need.issue:
            issued = await asyncio.to_thread(functools.partial(issue_leaf, ca, server.identity(), now, validity,
                                                                dns=dns))
            leaves[pod] = (issued.certificate_pem(), issued.key_pem())
        else:
            leaves[pod] = (current[f"{pod}.crt"], current[f"{pod}.key"])
    manifest = render.render_server_tls_secret(group, leaves, TrustBundle.of(ca).pem())
    await kube.apply(manifest)
    facts = CertificateFacts(ca_not_after=ca.certificate.not_valid_after_utc, servers_issued=len(leaves),
                             servers_desired=desired)
    return CertificateResult(facts, ca, manifest["data"])


# --- databases ---

@dataclass
class DatabaseResult:
    facts: DatabaseFacts
    uris: render.DatabaseUris | None


def _job_state(job: Mapping[str, Any] | None) -> tuple[JobState, str]:
    if job is None:
        return JobState.MISSING, ""
    status = job.get("status") or {}
    if status.get("succeeded"):
        return JobState.SUCCEEDED, ""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Failed" and condition.get("status") == "True":
            return JobState.FAILED, (f"migration Job {job['metadata']['name']} failed: "
                                     f"{condition.get('message') or condition.get('reason')}; see its Pod's log")
    return JobState.RUNNING, ""


async def _secret_value(kube: Kube, namespace: str, name: str, key: str) -> str | None:
    data = render.decode(await kube.get("v1", "Secret", namespace, name))
    value = data.get(key)
    return value.decode() if value is not None else None


async def _databases(context: OperatorContext, group: ManagementGroup) -> DatabaseResult:
    names = render.group_names(group)
    kube = context.kube
    mode = group.spec.database.mode
    external = group.spec.database.external
    if external is not None:
        values: list[str | None] = [await _secret_value(kube, names.namespace, ref.name, ref.key)
                                    for ref in (external.operational, external.warehouse)]
        missing = tuple(f"{ref.name}/{ref.key}" for ref, value in zip((external.operational, external.warehouse),
                                                                      values, strict=True) if value is None)
        ready = True
        uris = render.DatabaseUris(values[0], values[1]) if values[0] and values[1] else None
    else:
        missing = ()
        password = await _secret_value(kube, names.namespace, names.database_credentials, "password")
        if password is None:
            # Created once and never re-generated: PostgreSQL keeps the password it was initialised with.
            password = secrets.token_urlsafe(24)
            await kube.create(render.render_database_credentials(group, password))
            password = await _secret_value(kube, names.namespace, names.database_credentials, "password") or password
        await kube.apply(render.render_database_credentials(group, password))
        await kube.apply(render.render_database_service(group))
        statefulset = await kube.apply(render.render_database_statefulset(group, context.postgres_image))
        ready = int((statefulset.get("status") or {}).get("readyReplicas") or 0) >= 1
        uris = render.embedded_uris(names, password)
    job_fingerprint = render.fingerprint(context.image, render.migration_sources(group))
    job_name = names.migration_job(job_fingerprint)
    job = await kube.get("batch/v1", "Job", names.namespace, job_name)
    if job is None and ready and not missing:
        job = await kube.apply(render.render_migration_job(group, context.image, job_fingerprint))
    state, message = _job_state(job)
    if state is JobState.SUCCEEDED:
        await _delete_old_jobs(kube, names, job_name)
    return DatabaseResult(DatabaseFacts(mode, missing, ready, state, message), uris)


async def _delete_old_jobs(kube: Kube, names: GroupNames, current: str) -> None:
    for job in await kube.list("batch/v1", "Job", names.namespace, selector(names.group, "migration")):
        if job["metadata"]["name"] != current:
            await kube.delete("batch/v1", "Job", names.namespace, job["metadata"]["name"])


# --- servers ---

async def _servers(context: OperatorContext, group: ManagementGroup, uris: render.DatabaseUris,
                   tls_data: Mapping[str, str], start: bool) -> tuple[bool, int]:
    """Apply config and server children; returns (StatefulSet exists, ready replicas)."""
    names = render.group_names(group)
    kube = context.kube
    config = render.render_server_config_secret(group, uris)
    await kube.apply(config)
    if not start and await kube.get("apps/v1", "StatefulSet", names.namespace, names.statefulset) is None:
        return False, 0
    config_hash = render.fingerprint(config["data"], dict(tls_data))
    ready = 0
    try:
        await kube.apply(render.render_server_enrollment_binding(group))
    except KubeError as error:
        if error.status != 403:
            raise
        # Without it only pod enrollment (TokenReview) fails; the servers themselves must still start.
        log.warning("cannot bind ClusterRole %s for the servers' TokenReview (%s): apply the chart's RBAC",
                    render.ENROLLMENT_CLUSTER_ROLE, error)
    for child in render.server_children(group, context.image, config_hash):
        applied = await kube.apply(child)
        if child["kind"] == "StatefulSet":
            status = applied.get("status") or {}
            # Pods of an older template do not count until the rollout reaches them.
            current = status.get("updateRevision") == status.get("currentRevision")
            ready = int(status.get("readyReplicas") or 0) if current else int(status.get("updatedReplicas") or 0)
            ready = min(ready, int(status.get("readyReplicas") or 0))
    return True, ready


async def _support_files(context: OperatorContext, group: ManagementGroup, agents: list[AgentEntry],
                         gateways: list[GatewayEntry]) -> None:
    """The directory the servers admit agents by, and the revocation list (created empty, edited by agents)."""
    kube = context.kube
    directory = [(a.fqdn, a.approval) for a in agents if not a.deleting]
    desired = render.render_directory_config_map(group, directory, [(g.fqdn, "Approved") for g in gateways])
    # At 10,000 agents the directory is half a megabyte: applied on every pass, the API server merged it every
    # 10 s for nothing. Read it instead, and apply only what is missing, edited or out of date.
    live = await kube.get("v1", "ConfigMap", desired["metadata"]["namespace"], desired["metadata"]["name"])
    if not render.config_map_current(live, desired):
        await kube.apply(desired)
    await kube.create(render.render_revocations_config_map(group, []))


def desired_assignments(group: ManagementGroup, agents: list[AgentEntry]) -> dict[tuple[str, str], Assignment]:
    """Where each agent of the group should report now, by its (namespace, name): a group takes Agents from any
    namespace, so a name alone is not unique (pure; rebalances when replicas change).
    """
    servers = render.group_names(group).server_pods(group.spec.servers.replicas)
    wanted = {}
    for agent in agents:
        assignment = assign(agent.name, servers, agent.pinned_primary, agent.pinned_failover)
        if assignment is not None:
            wanted[agent.namespace, agent.name] = assignment
    return wanted


async def _rebalance(kube: Kube, group: ManagementGroup, agents: list[AgentEntry]) -> int:
    """Patch the agents whose assignment changed (a scale of the servers); returns how many moved."""
    wanted = desired_assignments(group, agents)
    moves = [a for a in agents if (a.namespace, a.name) in wanted and a.approval != "Pending" and not a.deleting
             and (a.primary, a.failover) != (wanted[a.namespace, a.name].primary, wanted[a.namespace, a.name].failover)
             and a.primary is not None]
    limit = asyncio.Semaphore(REBALANCE_CONCURRENCY)

    async def move(agent: AgentEntry) -> None:
        target = wanted[agent.namespace, agent.name]
        async with limit:
            try:
                await kube.merge_patch(Ref(f"{GROUP}/{VERSION}", "Agent", agent.namespace, agent.name),
                                       {"status": {"primaryServer": target.primary,
                                                   "failoverServers": list(target.failover)}},
                                       subresource="status")
            except KubeError as error:
                if error.status != 404:
                    raise

    await asyncio.gather(*(move(agent) for agent in moves))
    return len(moves)


def renewals_due(group: ManagementGroup, agents: list[AgentEntry], now: datetime) -> list[AgentEntry]:
    """Approved in-cluster agents whose certificate is due for renewal (the operator holds their key)."""
    _, renew_before = leaf_lifetimes(group)
    due = []
    for agent in agents:
        if agent.approval != "Approved" or agent.placement == "Host" or agent.deleting:
            continue
        if agent.certificate_not_after and datetime.fromisoformat(agent.certificate_not_after) - renew_before <= now:
            due.append(agent)
    return due


async def _rejudge_pending(kube: Kube, group: ManagementGroup, agents: list[AgentEntry]) -> None:
    """Wake the handler of each Pending Agent the group's policy now decides, through an annotation: a timer on
    every Agent did this before, and kopf keeps a copy of every object that has a timer (10,000 Agents).
    """
    policy = group.spec.approval_policy
    for agent in to_rejudge(policy, agents):
        ref = Ref(f"{GROUP}/{VERSION}", "Agent", agent.namespace, agent.name)
        await kube.merge_patch(ref, {"metadata": {"annotations": {POLICY_ANNOTATION: policy.value}}})


async def _request_renewals(kube: Kube, group: ManagementGroup, agents: list[AgentEntry], now: datetime) -> None:
    for agent in renewals_due(group, agents, now):
        ref = Ref(f"{GROUP}/{VERSION}", "Agent", agent.namespace, agent.name)
        await kube.merge_patch(ref, {"metadata": {"annotations": {RENEW_ANNOTATION: now.isoformat()}}})


# --- the reconcile ---

async def reconcile(context: OperatorContext, body: Mapping[str, Any], agents_index: Any, gateways_index: Any,
                    logger: Any) -> bool:
    """One full pass over a group; returns whether it is Ready."""
    group = ManagementGroup.from_body(body)
    names = render.group_names(group)
    key = (names.namespace, names.group)
    async with context.lock(("group", *key)):
        now = datetime.now(UTC)
        agents: list[AgentEntry] = entries(agents_index, key)
        gateways: list[GatewayEntry] = entries(gateways_index, key)
        certificates = await _certificates(context, group, now)
        databases = await _databases(context, group)
        await _support_files(context, group, agents, gateways)
        exists, ready = False, 0
        if certificates.ca is not None and certificates.tls_data is not None and databases.uris is not None:
            start = databases.facts.migration is JobState.SUCCEEDED
            exists, ready = await _servers(context, group, databases.uris, certificates.tls_data, start)
        moved = await _rebalance(context.kube, group, agents)
        await _request_renewals(context.kube, group, agents, now)
        await _rejudge_pending(context.kube, group, agents)
        if moved:
            logger.info(f"rebalanced {moved} agent(s) across {group.spec.servers.replicas} server(s)")
        desired = group.spec.servers.replicas
        verdicts = {
            DATABASES_READY: databases_verdict(databases.facts),
            CERTIFICATES_READY: certificates_verdict(certificates.facts),
            SERVERS_READY: servers_verdict(desired, ready, exists),
        }
        return await _write_status(context.kube, body, group, verdicts=verdicts, agents=agents, ready=ready,
                                   certificates=certificates, now=now)


async def _write_status(kube: Kube, body: Mapping[str, Any], group: ManagementGroup, *, verdicts: Mapping[str, Any],
                        agents: list[AgentEntry], ready: int, certificates: CertificateResult, now: datetime) -> bool:
    generation = group.metadata.generation
    old = group.status
    conditions = fold(old.conditions, verdicts, generation, now)
    conditions = set_condition(conditions, summarize_ready(conditions, GROUP_REQUIRED, generation=generation,
                                                           now=now))
    live = [a for a in agents if not a.deleting]
    new = old.model_copy(update={
        "observed_generation": generation,
        "conditions": conditions,
        "database_mode": group.spec.database.mode,
        "servers": ServerCounts(desired=group.spec.servers.replicas, ready=ready),
        "agents": AgentCounts.tally([a.health for a in live], pending=sum(1 for a in live if a.approval == "Pending")),
        "endpoints": Endpoints(agents=render.agent_endpoint(group)),
        "ca_not_after": certificates.facts.ca_not_after or old.ca_not_after,
    })
    patch = status_patch(body.get("status") or {}, new.to_dict(), OWNED_STATUS)
    if await write_status(kube, body, patch):
        announce(body, transitions(old.conditions, new.conditions))
    return is_condition_true(conditions, READY)


# --- handlers ---

@kopf.on.resume(GROUP, VERSION, "managementgroups")
@kopf.on.create(GROUP, VERSION, "managementgroups")
@kopf.on.update(GROUP, VERSION, "managementgroups", field="spec")
async def group_changed(*, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Bring the group to its spec; retried until it is Ready (databases and servers take a while)."""
    ready = await _guarded(context_of(memo), body, kwargs["agents_by_group"], kwargs["gateways_by_group"], logger)
    if not ready:
        raise kopf.TemporaryError("the group is not Ready yet; see its conditions", delay=RECONCILE_SECONDS)


@kopf.timer(GROUP, VERSION, "managementgroups", interval=RECONCILE_SECONDS,
            initial_delay=RECONCILE_SECONDS)
async def group_kept(*, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Put back edited or deleted children, renew certificates, rebalance agents and refresh counts."""
    await _guarded(context_of(memo), body, kwargs["agents_by_group"], kwargs["gateways_by_group"], logger)


@kopf.on.delete(GROUP, VERSION, "managementgroups", optional=True)
async def group_deleted(*, body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Children go with the group (ownerReferences); the CA Secret stays, so a re-created group keeps its agents."""
    context = context_of(memo)
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    context.forget(("ca", namespace, name))
    context.forget(("group", namespace, name))
    try:
        await context.kube.delete("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "",
                                  render.enrollment_binding(GroupNames(name, namespace)))
    except KubeError as error:  # cluster-scoped, so no owner cleans it up: say so rather than block the deletion
        logger.warning(f"the servers' enrollment ClusterRoleBinding was not deleted: {error}")
    logger.info(f"group deleted; its CA Secret {GroupNames(name, namespace).ca_secret} is kept")


async def _guarded(context: OperatorContext, body: Mapping[str, Any], agents_index: Any, gateways_index: Any,
                   logger: Any) -> bool:
    try:
        return await reconcile(context, body, agents_index, gateways_index, logger)
    except KubeError as error:
        if error.conflict:
            raise kopf.TemporaryError(f"{error}; retrying with a fresh read", delay=1) from None
        raise kopf.TemporaryError(str(error), delay=RECONCILE_SECONDS) from None
