"""Agent handlers: approval per policy, a certificate for approved in-cluster agents, assignment to servers, and
revocation when an Agent is deleted or its approval withdrawn.

The management servers own the live facts (connection, health, heartbeat, queue); the operator writes only
approval, assignment, certificate and its conditions, with a guarded patch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf
import yaml

from opsmgr.api import Agent, ManagementGroup
from opsmgr.api.agent import Approval, CertificateStatus, Placement
from opsmgr.api.common import GROUP, VERSION
from opsmgr.api.conditions import ConditionStatus, find_condition, set_condition, summarize_ready
from opsmgr.operator import render
from opsmgr.operator.approval import ApprovalDecision, decide_approval, withdrawn
from opsmgr.operator.assignment import assign, missing_servers
from opsmgr.operator.certificates import issue_leaf, leaf_lifetimes, leaf_need
from opsmgr.operator.context import OperatorContext, context_of
from opsmgr.operator.indexes import entries
from opsmgr.operator.kube import KubeError, Ref
from opsmgr.operator.management_group import load_ca
from opsmgr.operator.names import GroupNames, agent_tls_secret
from opsmgr.operator.readiness import (
    AGENT_APPROVED,
    AGENT_ASSIGNED,
    AGENT_CERTIFICATE,
    AgentFacts,
    Verdict,
    agent_required,
    assigned_verdict,
    certificate_verdict,
)
from opsmgr.operator.status_writer import announce, fold, status_patch, transitions, write_status
from opsmgr.pki import CertificateError, Identity, RevocationReason, RevocationSet, Role
from opsmgr.pki.pem import load_certificate

OWNED_STATUS = ("observedGeneration", "conditions", "approval", "primaryServer", "failoverServers", "certificate")
IN_CLUSTER = (Placement.NODE, Placement.SIDECAR)
GROUP_MISSING_RETRY = 30.0
CA_RETRY = 5.0


def _approval_verdict(decision: ApprovalDecision) -> Verdict:
    return Verdict(ConditionStatus.of(decision.approval is Approval.APPROVED), decision.reason, decision.message)


def _earlier(agent: Agent) -> ApprovalDecision | None:
    condition = find_condition(agent.status.conditions, AGENT_APPROVED)
    if condition is None:
        return None
    return ApprovalDecision(agent.status.approval, condition.reason, condition.message)


async def revoke(context: OperatorContext, *, namespace: str, group: str, serial_hex: str, fqdn: str,
                 reason: RevocationReason) -> bool:
    """Add one serial to the group's revocation list (read-modify-write under a lock, guarded by resourceVersion)."""
    names = GroupNames(group, namespace)
    async with context.lock(("revocations", namespace, group)):
        for _ in range(5):
            config_map = await context.kube.get("v1", "ConfigMap", namespace, names.revocations_config_map)
            if config_map is None:
                return False  # the group is gone, and with it every server that could honour the certificate
            document = yaml.safe_load((config_map.get("data") or {}).get(render.REVOCATIONS_FILE) or "") or {}
            current = RevocationSet.from_records(document.get("revocations") or [])
            updated = current.revoke(int(serial_hex, 16), reason, datetime.now(UTC), fqdn)
            if updated is current:
                return True
            patch = {"metadata": {"resourceVersion": config_map["metadata"]["resourceVersion"]},
                     "data": {render.REVOCATIONS_FILE: yaml.safe_dump({"revocations": updated.to_records()},
                                                                      sort_keys=True)}}
            try:
                await context.kube.merge_patch(Ref("v1", "ConfigMap", namespace, names.revocations_config_map), patch)
            except KubeError as error:
                if error.conflict:
                    continue
                raise
            return True
    raise kopf.TemporaryError("the revocation list kept changing under us", delay=1)


async def reconcile(context: OperatorContext, body: Mapping[str, Any], groups_index: Any) -> bool:
    """One pass over an Agent; returns whether it is Ready."""
    agent = Agent.from_body(body)
    namespace, name = agent.metadata.namespace or "", agent.metadata.name or ""
    group_namespace = agent.spec.management_group_ref.namespace_or(namespace)
    found = entries(groups_index, (group_namespace, agent.spec.management_group_ref.name))
    now = datetime.now(UTC)
    old = agent.status
    in_cluster = agent.spec.placement in IN_CLUSTER
    if not found:
        facts = AgentFacts(approved=old.approval is Approval.APPROVED, in_cluster=in_cluster, group_found=False)
        await _write(context, body, agent, verdicts={AGENT_ASSIGNED: assigned_verdict(facts)}, update={},
                     in_cluster=in_cluster, now=now)
        raise kopf.TemporaryError(f"ManagementGroup {group_namespace}/{agent.spec.management_group_ref.name} does "
                                  "not exist (yet)", delay=GROUP_MISSING_RETRY)
    group = ManagementGroup.from_body(found[0])
    names = render.group_names(group)
    decision = decide_approval(group.spec.approval_policy, agent.metadata.annotations, old.approval, _earlier(agent))
    certificate = old.certificate
    if withdrawn(old.approval, decision.approval):
        if certificate.serial_number:
            await revoke(context, namespace=names.namespace, group=names.group, serial_hex=certificate.serial_number,
                         fqdn=agent.spec.fqdn, reason=RevocationReason.AFFILIATION_CHANGED)
        await context.kube.delete("v1", "Secret", namespace, agent_tls_secret(name))
        certificate = CertificateStatus()
    approved = decision.approval is Approval.APPROVED
    verdicts: dict[str, Verdict] = {AGENT_APPROVED: _approval_verdict(decision)}
    issued = False
    if approved and in_cluster:
        try:
            certificate = await _ensure_certificate(context, agent, group, certificate, now)
            issued = True
        except CertificateError as error:
            verdicts[AGENT_CERTIFICATE] = Verdict(ConditionStatus.FALSE, error.reason, str(error))
    servers = names.server_pods(group.spec.servers.replicas)
    assignment = assign(name, servers, agent.spec.primary_server, agent.spec.failover_servers)
    facts = AgentFacts(approved=approved, in_cluster=in_cluster, certificate_issued=issued,
                       primary=assignment.primary if assignment else None,
                       missing_servers=tuple(missing_servers(assignment, servers)) if assignment else ())
    verdicts[AGENT_ASSIGNED] = assigned_verdict(facts)
    if in_cluster and AGENT_CERTIFICATE not in verdicts:
        verdicts[AGENT_CERTIFICATE] = certificate_verdict(facts)
    update: dict[str, Any] = {"approval": decision.approval, "certificate": certificate}
    if assignment is not None:
        update |= {"primary_server": assignment.primary, "failover_servers": list(assignment.failover)}
    ready = await _write(context, body, agent, verdicts=verdicts, update=update, in_cluster=in_cluster, now=now)
    if approved and in_cluster and not issued:
        raise kopf.TemporaryError("the group's CA is not usable yet; see CertificateIssued", delay=CA_RETRY)
    return ready


async def _ensure_certificate(context: OperatorContext, agent: Agent, group: ManagementGroup,
                              current: CertificateStatus, now: datetime) -> CertificateStatus:
    """The agent's certificate Secret, issued when missing, from another CA, due or for another name."""
    names = render.group_names(group)
    ca = await load_ca(context, group, now)
    identity = Identity.of(names.group, Role.AGENT, agent.spec.fqdn)
    validity, renew_before = leaf_lifetimes(group)
    secret_name = agent_tls_secret(agent.metadata.name or "")
    held: bytes | None = None
    if current.serial_number:
        # Only an agent that has a certificate on record needs its Secret read; a new one skips the request.
        held = render.decode(await context.kube.get("v1", "Secret", agent.metadata.namespace or "",
                                                    secret_name)).get("tls.crt")
    need = leaf_need(held, ca, [identity.name], now, renew_before=renew_before)
    if need.issue:
        issued = await asyncio.to_thread(issue_leaf, ca, identity, now, validity)
        pem = issued.certificate_pem()
        await context.kube.apply(render.render_agent_tls_secret(agent, names.group, pem, issued.key_pem(),
                                                                ca.certificate_pem()))
    else:
        assert held is not None
        pem = held
    certificate = load_certificate(pem)
    return CertificateStatus(serial_number=format(certificate.serial_number, "x"),
                             not_after=certificate.not_valid_after_utc)


async def _write(context: OperatorContext, body: Mapping[str, Any], agent: Agent, *, verdicts: Mapping[str, Verdict],
                 update: Mapping[str, Any], in_cluster: bool, now: datetime) -> bool:
    generation = agent.metadata.generation
    old = agent.status
    conditions = fold(old.conditions, verdicts, generation, now)
    conditions = set_condition(conditions, summarize_ready(conditions, agent_required(in_cluster),
                                                           generation=generation, now=now))
    new = old.model_copy(update={**update, "observed_generation": generation, "conditions": conditions})
    patch = status_patch(body.get("status") or {}, new.to_dict(), OWNED_STATUS)
    if await write_status(context.kube, body, patch):
        announce(body, transitions(old.conditions, new.conditions))
    return new.ready


@kopf.on.resume(GROUP, VERSION, "agents")
@kopf.on.create(GROUP, VERSION, "agents")
@kopf.on.update(GROUP, VERSION, "agents", field="spec")
@kopf.on.update(GROUP, VERSION, "agents", field="metadata.annotations")
async def agent_changed(*, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    await _guarded(context_of(memo), body, kwargs["groups_by_name"])


@kopf.on.delete(GROUP, VERSION, "agents")
async def agent_deleted(*, body: kopf.Body, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    """Revoke the agent's certificate, so a copy of its key can never connect again. Not optional: that is the
    one thing that must happen outside the Agent's own children.
    """
    agent = Agent.from_body(body)
    serial = agent.status.certificate.serial_number
    if not serial:
        return
    reference = agent.spec.management_group_ref
    group_namespace = reference.namespace_or(agent.metadata.namespace or "")
    try:
        done = await revoke(context_of(memo), namespace=group_namespace, group=reference.name, serial_hex=serial,
                            fqdn=agent.spec.fqdn, reason=RevocationReason.CESSATION_OF_OPERATION)
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=5) from None
    if done:
        logger.info(f"revoked certificate serial {serial} of {agent.spec.fqdn}")


async def _guarded(context: OperatorContext, body: Mapping[str, Any], groups_index: Any) -> None:
    try:
        async with context.agent_reconciles:
            await reconcile(context, body, groups_index)
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=1 if error.conflict else 10) from None

