"""Gateway handlers: a certificate from the group CA (or the imported one), the relay Deployment and its Service."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from opsmgr.api import Gateway, GatewayStatus, ManagementGroup
from opsmgr.api.common import GROUP, VERSION
from opsmgr.api.conditions import ConditionStatus, set_condition, summarize_ready
from opsmgr.operator import render
from opsmgr.operator.assignment import assign
from opsmgr.operator.certificates import issue_leaf, leaf_lifetimes, leaf_need
from opsmgr.operator.context import OperatorContext, context_of
from opsmgr.operator.indexes import entries
from opsmgr.operator.kube import KubeError
from opsmgr.operator.management_group import load_ca
from opsmgr.operator.names import gateway_tls_secret, gateway_workload
from opsmgr.operator.readiness import Verdict
from opsmgr.operator.status_writer import announce, fold, status_patch, transitions, write_status
from opsmgr.pki import CertificateError, Check, Identity, Role
from opsmgr.pki.pem import load_certificate

OWNED_STATUS = ("observedGeneration", "conditions", "replicas", "readyReplicas", "endpoint", "primaryServer",
                "failoverServers", "certificateNotAfter")
CERTIFICATE_READY = "CertificateReady"
AVAILABLE = "Available"
RECONCILE_SECONDS = 15.0


def gateway_dns_names(gateway: Gateway) -> list[str]:
    """The names agents reach the gateway by: its FQDN and its Service's in-cluster names."""
    service = gateway_workload(gateway.metadata.name or "")
    namespace = gateway.metadata.namespace or ""
    return [f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


async def _certificate(context: OperatorContext, gateway: Gateway, group: ManagementGroup,
                       now: datetime) -> tuple[str, datetime]:
    """(Secret name, notAfter) of the gateway's certificate, issued or renewed when needed."""
    namespace = gateway.metadata.namespace or ""
    imported = gateway.spec.certificate_secret
    if imported is not None:
        data = render.decode(await context.kube.get("v1", "Secret", namespace, imported.name))
        if "tls.crt" not in data:
            raise CertificateError(Check.UNREADABLE, "spec.certificateSecret", imported.name,
                                   "does not exist or has no tls.crt", "create a kubernetes.io/tls Secret")
        return imported.name, load_certificate(data["tls.crt"]).not_valid_after_utc
    names = render.group_names(group)
    ca = await load_ca(context, group, now)
    identity = Identity.of(names.group, Role.GATEWAY, gateway.spec.fqdn)
    extra = gateway_dns_names(gateway)
    expected = list(dict.fromkeys([identity.name, *extra]))
    secret_name = gateway_tls_secret(gateway.metadata.name or "")
    held = render.decode(await context.kube.get("v1", "Secret", namespace, secret_name)).get("tls.crt")
    validity, renew_before = leaf_lifetimes(group)
    if leaf_need(held, ca, expected, now, renew_before=renew_before).issue:
        issued = await asyncio.to_thread(functools.partial(issue_leaf, ca, identity, now, validity, dns=extra))
        held = issued.certificate_pem()
        await context.kube.apply(render.render_gateway_tls_secret(gateway, names.group, held, issued.key_pem(),
                                                                  ca.certificate_pem()))
    assert held is not None
    return secret_name, load_certificate(held).not_valid_after_utc


async def reconcile(context: OperatorContext, body: Mapping[str, Any], groups_index: Any) -> bool:
    gateway = Gateway.from_body(body)
    namespace = gateway.metadata.namespace or ""
    reference = gateway.spec.management_group_ref
    found = entries(groups_index, (reference.namespace_or(namespace), reference.name))
    now = datetime.now(UTC)
    if not found:
        # Said in the status, not only the operator's log: without the group there is no CA to issue from.
        missing = Verdict(ConditionStatus.FALSE, "ManagementGroupNotFound",
                          f"spec.managementGroupRef names {reference.name}, which does not exist; create it or "
                          "correct the reference")
        await _write(context, body, verdicts={CERTIFICATE_READY: missing}, update={}, now=now)
        raise kopf.TemporaryError(f"ManagementGroup {reference.name} does not exist (yet)", delay=30)
    group = ManagementGroup.from_body(found[0])
    names = render.group_names(group)
    verdicts: dict[str, Verdict] = {}
    update: dict[str, Any] = {}
    servers = names.server_pods(group.spec.servers.replicas)
    assignment = assign(gateway.metadata.name or "", servers, gateway.spec.primary_server,
                        gateway.spec.failover_servers)
    assert assignment is not None, "a group runs at least one server"
    update |= {"primary_server": assignment.primary, "failover_servers": list(assignment.failover),
               "endpoint": f"{gateway_workload(gateway.metadata.name or '')}.{namespace}.svc:{gateway.spec.port}"}
    try:
        secret_name, not_after = await _certificate(context, gateway, group, now)
    except CertificateError as error:
        verdicts[CERTIFICATE_READY] = Verdict(ConditionStatus.FALSE, error.reason, str(error))
    else:
        verdicts[CERTIFICATE_READY] = Verdict(ConditionStatus.TRUE, "Issued", f"valid until {not_after.date()}")
        update["certificate_not_after"] = not_after
        config = render.render_gateway_config_secret(gateway, group, assignment.primary, assignment.failover)
        await context.kube.apply(config)
        config_hash = render.fingerprint(config["data"], secret_name, not_after.isoformat())
        deployment = await context.kube.apply(render.render_gateway_deployment(gateway, names.group, context.image,
                                                                               config_hash, secret_name))
        await context.kube.apply(render.render_gateway_service(gateway, names.group))
        status = deployment.get("status") or {}
        ready = int(status.get("readyReplicas") or 0)
        update |= {"replicas": int(status.get("replicas") or 0), "ready_replicas": ready}
        verdicts[AVAILABLE] = (Verdict(ConditionStatus.TRUE, "Available", f"{ready} gateway pod(s) accept agents")
                               if ready >= 1 else
                               Verdict(ConditionStatus.FALSE, "Starting", "no gateway pod accepts agents yet"))
    return (await _write(context, body, verdicts=verdicts, update=update, now=now)).ready


async def _write(context: OperatorContext, body: Mapping[str, Any], *, verdicts: Mapping[str, Verdict],
                 update: Mapping[str, Any], now: datetime) -> GatewayStatus:
    gateway = Gateway.from_body(body)
    old, generation = gateway.status, gateway.metadata.generation
    conditions = fold(old.conditions, verdicts, generation, now)
    conditions = set_condition(conditions, summarize_ready(conditions, (CERTIFICATE_READY, AVAILABLE),
                                                           generation=generation, now=now))
    new = old.model_copy(update={**update, "observed_generation": generation, "conditions": conditions})
    if await write_status(context.kube, body, status_patch(body.get("status") or {}, new.to_dict(), OWNED_STATUS)):
        announce(body, transitions(old.conditions, new.conditions))
    return new


@kopf.on.resume(GROUP, VERSION, "gateways")
@kopf.on.create(GROUP, VERSION, "gateways")
@kopf.on.update(GROUP, VERSION, "gateways", field="spec")
@kopf.timer(GROUP, VERSION, "gateways", interval=RECONCILE_SECONDS, initial_delay=RECONCILE_SECONDS)
async def gateway_changed(*, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Bring the gateway to its spec, and put back edited children on every timer tick."""
    try:
        await reconcile(context_of(memo), body, kwargs["groups_by_name"])
    except KubeError as error:
        raise kopf.TemporaryError(str(error), delay=1 if error.conflict else 10) from None
