"""Pure builders of every child the operator creates, as plain dicts ready for server-side apply.

Nothing here talks to Kubernetes: each function takes the pydantic model of the owner and the facts the handler
gathered (certificates, passwords, DSNs) and returns the manifest. Unit tests call them directly.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from opsmgr.api import CustomResource, Gateway, ManagementGroup
from opsmgr.api.management_group import ExternalDatabase
from opsmgr.operator.names import (
    AGENT_LABEL,
    CA_NOT_AFTER_ANNOTATION,
    CONFIG_HASH_ANNOTATION,
    GroupNames,
    agent_tls_secret,
    bounded,
    gateway_config_secret,
    gateway_tls_secret,
    gateway_workload,
    labels,
    selector,
)
from opsmgr.protocol.enrollment import ENROLLMENT_PORT, tokens_secret_name

Manifest = dict[str, Any]

METRICS_PORT = 9723
GATEWAY_METRICS_PORT = 9724  # the gateway's /metrics and /healthz (opsmgr.gateway.config's default)
POSTGRES_PORT = 5432
DATABASE_USER = "opsmgr"
OPERATIONAL_DATABASE = "operational"
WAREHOUSE_DATABASE = "warehouse"
CONFIG_MOUNT = "/etc/opsmgr"
DIRECTORY_FILE = "directory.yaml"
REVOCATIONS_FILE = "revocations.yaml"
# Shipped with the chart: TokenReview for the enrollment endpoint; the operator may only bind it (escalation rules).
ENROLLMENT_CLUSTER_ROLE = "opsmgr-server-enrollment"
TRUST_FILE = "ca.crt"
# Non-root ids of the distroless-style images; fsGroup lets them read their 0440 key files.
RUN_AS_USER = 65532
KEY_FILE_MODE = 0o440


def encode(values: Mapping[str, bytes | str]) -> dict[str, str]:
    """Secret `data`: every value base64-encoded (stringData would be rewritten by the API server and drift)."""
    return {key: base64.b64encode(value.encode() if isinstance(value, str) else value).decode()
            for key, value in sorted(values.items())}


def decode(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    """The decoded `data` of a Secret as read from the API server; empty for a missing Secret."""
    if not secret:
        return {}
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


def fingerprint(*parts: object) -> str:
    """A short stable hash of JSON-able values: names a Job per input and rolls Pods when their files change."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def owner_reference(owner: CustomResource) -> dict[str, Any]:
    """The reference that makes the garbage collector delete a child with its owner."""
    return {"apiVersion": owner.api_version, "kind": owner.kind_name(), "name": owner.metadata.name,
            "uid": owner.metadata.uid, "controller": True, "blockOwnerDeletion": True}


def metadata(name: str, namespace: str, label_set: Mapping[str, str], owner: CustomResource | None = None,
             annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(label_set)}
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _group_names(group: ManagementGroup) -> GroupNames:
    assert group.metadata.name and group.metadata.namespace, "a ManagementGroup read from the API has both"
    return GroupNames(group.metadata.name, group.metadata.namespace)


def group_names(group: ManagementGroup) -> GroupNames:
    return _group_names(group)


# --- certificates ---

def render_ca_secret(group: ManagementGroup, certificate_pem: bytes, key_pem: bytes, trust_pem: bytes,
                     not_after: str) -> Manifest:
    """The generated CA. Not owned by the group: deleting the group must not destroy the trust root."""
    names = _group_names(group)
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": metadata(names.ca_secret, names.namespace, labels(names.group, "certificate-authority"),
                             annotations={CA_NOT_AFTER_ANNOTATION: not_after}),
        "data": encode({"tls.crt": certificate_pem, "tls.key": key_pem, TRUST_FILE: trust_pem}),
    }


def render_server_tls_secret(group: ManagementGroup, leaves: Mapping[str, tuple[bytes, bytes]],
                             trust_pem: bytes) -> Manifest:
    """One Secret with every replica's certificate and key (`<pod>.crt`, `<pod>.key`) and the trust bundle.

    A StatefulSet's Pods share one template, so each Pod mounts them all and its config names its own pair.
    """
    names = _group_names(group)
    values: dict[str, bytes] = {TRUST_FILE: trust_pem}
    for pod, (certificate_pem, key_pem) in leaves.items():
        values[f"{pod}.crt"] = certificate_pem
        values[f"{pod}.key"] = key_pem
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": metadata(names.server_tls_secret, names.namespace, labels(names.group, "management-server"),
                             group),
        "data": encode(values),
    }


# --- databases ---

@dataclass(frozen=True)
class DatabaseUris:
    """Connection URIs of the two databases (with credentials: they only ever go into Secrets)."""

    operational: str
    warehouse: str


def embedded_uris(names: GroupNames, password: str) -> DatabaseUris:
    host = f"{names.service_host(names.database)}:{POSTGRES_PORT}"
    base = f"postgresql://{DATABASE_USER}:{password}@{host}"
    return DatabaseUris(f"{base}/{OPERATIONAL_DATABASE}", f"{base}/{WAREHOUSE_DATABASE}")


def render_database_credentials(group: ManagementGroup, password: str) -> Manifest:
    names = _group_names(group)
    uris = embedded_uris(names, password)
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": metadata(names.database_credentials, names.namespace, labels(names.group, "database"), group),
        "data": encode({"username": DATABASE_USER, "password": password, "operational-uri": uris.operational,
                        "warehouse-uri": uris.warehouse}),
    }


def render_database_service(group: ManagementGroup) -> Manifest:
    names = _group_names(group)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(names.database, names.namespace, labels(names.group, "database"), group),
        "spec": {"selector": selector(names.group, "database"),
                 "ports": [{"name": "postgresql", "port": POSTGRES_PORT, "targetPort": POSTGRES_PORT,
                            "protocol": "TCP"}]},
    }


def render_database_statefulset(group: ManagementGroup, image: str) -> Manifest:
    """One PostgreSQL Pod holding both databases, for development and small groups."""
    names = _group_names(group)
    embedded = group.spec.database.embedded
    storage = str(embedded.storage_size if embedded is not None else "10Gi")
    secret = names.database_credentials
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": metadata(names.database, names.namespace, labels(names.group, "database"), group),
        "spec": {
            "replicas": 1,
            "serviceName": names.database,
            "selector": {"matchLabels": selector(names.group, "database")},
            "template": {
                "metadata": {"labels": labels(names.group, "database")},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "fsGroup": 999,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "postgresql",
                        "image": image,
                        "env": [
                            {"name": "POSTGRES_USER", "valueFrom": {"secretKeyRef": {"name": secret,
                                                                                     "key": "username"}}},
                            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": secret,
                                                                                         "key": "password"}}},
                            {"name": "POSTGRES_DB", "value": OPERATIONAL_DATABASE},
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                        ],
                        "ports": [{"name": "postgresql", "containerPort": POSTGRES_PORT, "protocol": "TCP"}],
                        "readinessProbe": {"tcpSocket": {"port": POSTGRES_PORT}, "periodSeconds": 2,
                                           "failureThreshold": 3},
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/postgresql/data"}],
                        "securityContext": {"allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data", "labels": labels(names.group, "database")},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}},
            }],
        },
    }


def migration_sources(group: ManagementGroup) -> tuple[dict[str, str], dict[str, str]]:
    """The Secret keys holding the operational and warehouse URIs, for the migration Job's env."""
    names = _group_names(group)
    external: ExternalDatabase | None = group.spec.database.external
    if external is None:
        return ({"name": names.database_credentials, "key": "operational-uri"},
                {"name": names.database_credentials, "key": "warehouse-uri"})
    return external.operational.to_dict(), external.warehouse.to_dict()


def render_migration_job(group: ManagementGroup, image: str, fingerprint_text: str) -> Manifest:
    """A Job that creates both databases when missing and applies pending migrations; named per image and source.

    A Job's Pod template is immutable, so a new image or database gets a new Job (a new name) instead of an edit.
    """
    names = _group_names(group)
    operational, warehouse = migration_sources(group)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": metadata(names.migration_job(fingerprint_text), names.namespace,
                             labels(names.group, "migration"), group),
        "spec": {
            # PostgreSQL may still be starting: retry with the Job controller's backoff rather than fail the group.
            "backoffLimit": 12,
            "template": {
                "metadata": {"labels": labels(names.group, "migration")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [{
                        "name": "migrate",
                        "image": image,
                        "command": ["opsmgr", "db", "migrate", "--create-database", "--connect-timeout", "10"],
                        "env": [
                            {"name": "OPSMGR_OPERATIONAL_DSN", "valueFrom": {"secretKeyRef": operational}},
                            {"name": "OPSMGR_WAREHOUSE_DSN", "valueFrom": {"secretKeyRef": warehouse}},
                        ],
                        "securityContext": _container_security(),
                    }],
                },
            },
        },
    }


# --- management servers ---

def server_config(group: ManagementGroup, pod: str, uris: DatabaseUris) -> dict[str, Any]:
    """The `opsmgr server --config` document of one replica; file paths are relative to the config's folder."""
    names = _group_names(group)
    return {
        "group": names.group,
        "name": f"{pod}.{names.headless_service}.{names.namespace}.svc",
        "listen": {"address": "0.0.0.0", "port": group.spec.agent_port},  # noqa: S104 (agents are remote)
        "tls": {"certificate": f"{pod}.crt", "key": f"{pod}.key", "ca_bundle": TRUST_FILE},
        "databases": {"operational_dsn": uris.operational, "warehouse_dsn": uris.warehouse},
        "metrics": {"address": "0.0.0.0", "port": METRICS_PORT},  # noqa: S104 (Prometheus scrapes remotely)
        "revocations": {"file": REVOCATIONS_FILE},
        "directory": {"file": DIRECTORY_FILE},
        "heartbeat_interval_seconds": group.spec.heartbeat.interval_seconds,
        "watcher": {"missed_threshold": group.spec.heartbeat.missed_threshold,
                    "status_heartbeat_seconds": group.spec.heartbeat.status_update_seconds},
        # The servers watch the group's Agents, packs and tasks and hold their fleet Leases here, in-cluster.
        "kubernetes": {"namespace": names.namespace, "member": pod},
        "enrollment": {"port": ENROLLMENT_PORT, "ca_secret": names.ca_secret},
    }


def render_server_config_secret(group: ManagementGroup, uris: DatabaseUris) -> Manifest:
    """Each replica's config file (`<pod>.yaml`); a Secret because it carries the database credentials."""
    names = _group_names(group)
    files = {f"{pod}.yaml": yaml.safe_dump(server_config(group, pod, uris), sort_keys=True)
             for pod in names.server_pods(group.spec.servers.replicas)}
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": metadata(names.server_config_secret, names.namespace, labels(names.group, "management-server"),
                             group),
        "data": encode(files),
    }


def render_directory_config_map(group: ManagementGroup, agents: Sequence[tuple[str, str]],
                                gateways: Sequence[tuple[str, str]]) -> Manifest:
    """The agents and gateways the servers admit, with their approval: (fqdn, approval) pairs, sorted."""
    names = _group_names(group)
    document = {"agents": [{"fqdn": fqdn, "approval": approval} for fqdn, approval in sorted(agents)],
                "gateways": [{"fqdn": fqdn, "approval": approval} for fqdn, approval in sorted(gateways)]}
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(names.directory_config_map, names.namespace, labels(names.group, "management-server"),
                             group),
        "data": {DIRECTORY_FILE: _dump_large(document)},
    }


def _dump_large(document: Any) -> str:
    """YAML through libyaml where PyYAML has it: the same text, five times faster. The directory of 10,000 agents
    took the pure-Python dumper 0.6 s, every reconcile pass, on the operator's only event loop.
    """
    return yaml.dump(document, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=True)


def config_map_current(live: Mapping[str, Any] | None, desired: Manifest) -> bool:
    """Whether the ConfigMap in the cluster already holds what `desired` says: its data, and the labels and owners
    we set (others may add their own labels). A large one is then left alone instead of applied again.
    """
    if live is None:
        return False
    meta, wanted = live.get("metadata") or {}, desired["metadata"]
    labels = meta.get("labels") or {}
    return (live.get("data") == desired.get("data")
            and all(labels.get(key) == value for key, value in (wanted.get("labels") or {}).items())
            and [(o.get("uid"), o.get("controller")) for o in meta.get("ownerReferences") or []]
            == [(o.get("uid"), o.get("controller")) for o in wanted.get("ownerReferences") or []])


def render_revocations_config_map(group: ManagementGroup, records: Sequence[Mapping[str, str]]) -> Manifest:
    """The revocation list the servers enforce. Owned by the group; revocation is never undone while it lives."""
    names = _group_names(group)
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": metadata(names.revocations_config_map, names.namespace,
                             labels(names.group, "management-server"), group),
        "data": {REVOCATIONS_FILE: _dump_large({"revocations": list(records)})},
    }


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def render_server_statefulset(group: ManagementGroup, image: str, config_hash: str) -> Manifest:
    """The management servers. `config_hash` covers their config and certificates, so a change rolls the Pods."""
    names = _group_names(group)
    spec = group.spec
    port = spec.agent_port
    component = "management-server"
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "command": ["opsmgr", "server", "--config", f"{CONFIG_MOUNT}/$(POD_NAME).yaml"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
        "ports": [{"name": "agents", "containerPort": port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                  {"name": "enrollment", "containerPort": ENROLLMENT_PORT, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": METRICS_PORT}, "initialDelaySeconds": 30,
                          "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
        "securityContext": _container_security(),
    }
    resources = spec.servers.resources.to_dict()
    if resources.get("requests") or resources.get("limits"):
        container["resources"] = {k: v for k, v in resources.items() if v}
    projected = [
        {"secret": {"name": names.server_config_secret}},
        {"secret": {"name": names.server_tls_secret}},
        {"configMap": {"name": names.directory_config_map}},
        {"configMap": {"name": names.revocations_config_map}},
    ]
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": metadata(names.statefulset, names.namespace, labels(names.group, component), group),
        "spec": {
            "replicas": spec.servers.replicas,
            "serviceName": names.headless_service,
            # Servers do not depend on each other: start and replace them all at once.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector(names.group, component)},
            "template": {
                "metadata": {"labels": labels(names.group, component),
                             "annotations": {CONFIG_HASH_ANNOTATION: config_hash}},
                "spec": {
                    "serviceAccountName": names.server_account,
                    "securityContext": _pod_security(),
                    "terminationGracePeriodSeconds": 30,
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": selector(names.group, component)}},
                    }]}},
                    "containers": [container],
                    "volumes": [{"name": "config", "projected": {"defaultMode": KEY_FILE_MODE,
                                                                 "sources": projected}}],
                },
            },
        },
    }


def _agent_port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "port": port, "targetPort": "agents", "protocol": "TCP"}


def render_headless_service(group: ManagementGroup) -> Manifest:
    """Stable per-Pod DNS names (`<pod>.<group>-servers`), published before readiness so certificates match."""
    names = _group_names(group)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(names.headless_service, names.namespace, labels(names.group, "management-server"),
                             group),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": selector(names.group, "management-server"),
                 "ports": [_agent_port("agents", group.spec.agent_port)]},
    }


def render_replica_services(group: ManagementGroup) -> list[Manifest]:
    """One Service per replica, named like its Pod: what an Agent's primaryServer and failoverServers name."""
    names = _group_names(group)
    services = []
    for pod in names.server_pods(group.spec.servers.replicas):
        services.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": metadata(pod, names.namespace, labels(names.group, "management-server"), group),
            "spec": {"selector": {"statefulset.kubernetes.io/pod-name": pod},
                     "ports": [_agent_port("agents", group.spec.agent_port)]},
        })
    return services


def render_agent_service(group: ManagementGroup) -> Manifest:
    """The shared address every agent may use for its first connection (the server then redirects it)."""
    names = _group_names(group)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(names.agent_service, names.namespace, labels(names.group, "management-server"), group),
        "spec": {"selector": selector(names.group, "management-server"),
                 "ports": [_agent_port("agents", group.spec.agent_port),
                           {"name": "enrollment", "port": ENROLLMENT_PORT, "targetPort": "enrollment",
                            "protocol": "TCP"}]},
    }


def render_pod_disruption_budget(group: ManagementGroup) -> Manifest:
    """At most one server down by choice at a time, so agents always have somewhere to fail over to."""
    names = _group_names(group)
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": metadata(names.pod_disruption_budget, names.namespace,
                             labels(names.group, "management-server"), group),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(names.group, "management-server")}},
    }


def render_server_access(group: ManagementGroup) -> list[Manifest]:
    """The servers' ServiceAccount and Role: read the group's resources, write the status of agents and tasks."""
    names = _group_names(group)
    label_set = labels(names.group, "management-server")
    account = names.server_account
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": metadata(account, names.namespace, label_set, group)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": metadata(account, names.namespace, label_set, group),
         "rules": [
             {"apiGroups": ["opsmgr.io"], "resources": ["agents", "managementpacks", "agenttasks", "gateways",
                                                        "managementgroups"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": ["opsmgr.io"], "resources": ["agents/status", "agenttasks/status"],
              "verbs": ["get", "patch"]},
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
             # Enrollment: a VM's Agent is created (and its key recorded) by the server that enrolls it.
             {"apiGroups": ["opsmgr.io"], "resources": ["agents"], "verbs": ["create", "patch"]},
             # Secrets by name only: the CA that signs enrollments, and the join tokens whose uses are counted.
             {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
              "resourceNames": [ca_secret_of(group)]},
             {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"],
              "resourceNames": [tokens_secret_name(names.group)]},
             *_notification_secret_rules(group),
             # Fleet membership: each server renews its own Lease and lists the others'.
             {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
              "verbs": ["get", "list", "create", "patch", "delete"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": metadata(account, names.namespace, label_set, group),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": names.namespace}]},
    ]


def _notification_secret_rules(group: ManagementGroup) -> list[Manifest]:
    """Read access to exactly the Secrets holding the notification targets' bearer tokens, when there are any."""
    secrets = sorted({t.credentials.name for t in group.spec.notifications if t.credentials is not None})
    return [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": secrets}] if secrets \
        else []


def render_server_enrollment_binding(group: ManagementGroup) -> Manifest:
    """The servers' ServiceAccount bound to the shipped enrollment ClusterRole (TokenReview). Cluster-scoped, so
    not owned by the group: group_deleted removes it."""
    names = _group_names(group)
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": enrollment_binding(names), "labels": labels(names.group, "management-server")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": ENROLLMENT_CLUSTER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": names.server_account, "namespace": names.namespace}]}


def enrollment_binding(names: GroupNames) -> str:
    return bounded(f"{ENROLLMENT_CLUSTER_ROLE}-{names.namespace}-{names.group}", 253)


def ca_secret_of(group: ManagementGroup) -> str:
    """The Secret holding the group's CA: the imported one it names, or the one the operator generates."""
    imported = group.spec.certificates.authority.imported
    return imported.secret.name if imported is not None else _group_names(group).ca_secret


def agent_endpoint(group: ManagementGroup) -> str:
    names = _group_names(group)
    return f"{names.service_host(names.agent_service)}:{group.spec.agent_port}"


def server_children(group: ManagementGroup, image: str, config_hash: str) -> list[Manifest]:
    """Everything the servers need besides Secrets: workload, Services, PDB and access."""
    return [
        *render_server_access(group),
        render_headless_service(group),
        *render_replica_services(group),
        render_agent_service(group),
        render_pod_disruption_budget(group),
        render_server_statefulset(group, image, config_hash),
    ]


# --- agents and gateways ---

def render_agent_tls_secret(agent: CustomResource, group: str, certificate_pem: bytes, key_pem: bytes,
                            trust_pem: bytes) -> Manifest:
    """An in-cluster agent's certificate, key and trust bundle, owned by its Agent (gone when the Agent is)."""
    name = agent.metadata.name or ""
    label_set = {**labels(group, "agent"), AGENT_LABEL: name}
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": metadata(agent_tls_secret(name), agent.metadata.namespace or "", label_set, agent),
        "data": encode({"tls.crt": certificate_pem, "tls.key": key_pem, TRUST_FILE: trust_pem}),
    }


def render_gateway_tls_secret(gateway: CustomResource, group: str, certificate_pem: bytes, key_pem: bytes,
                              trust_pem: bytes) -> Manifest:
    name = gateway.metadata.name or ""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": metadata(gateway_tls_secret(name), gateway.metadata.namespace or "", labels(group, "gateway"),
                             gateway),
        "data": encode({"tls.crt": certificate_pem, "tls.key": key_pem, TRUST_FILE: trust_pem}),
    }


def gateway_config(gateway: Gateway, group: ManagementGroup, primary: str, failover: Sequence[str]) -> dict[str, Any]:
    """The `opsmgr gateway --config` document: who it is, where agents connect, which servers it relays to."""
    names = _group_names(group)
    port = group.spec.agent_port
    return {
        "group": names.group,
        "name": gateway.spec.fqdn.lower(),
        "listen": {"address": "0.0.0.0", "port": gateway.spec.port},  # noqa: S104 (agents are remote)
        "tls": {"certificate": "tls/tls.crt", "key": "tls/tls.key", "ca_bundle": f"tls/{TRUST_FILE}"},
        "servers": [f"{names.service_host(server)}:{port}" for server in (primary, *failover)],
        "metrics": {"address": "0.0.0.0", "port": GATEWAY_METRICS_PORT},  # noqa: S104 (probes and scrapes are remote)
        # A pod is a host of its own (PID namespace); the local runtime runs every pod as a process of one machine.
        "refuse_on_agent_host": False,
    }


def render_gateway_config_secret(gateway: Gateway, group: ManagementGroup, primary: str,
                                 failover: Sequence[str]) -> Manifest:
    name = gateway.metadata.name or ""
    return {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": metadata(gateway_config_secret(name), gateway.metadata.namespace or "",
                             labels(_group_names(group).group, "gateway"), gateway),
        "data": encode({"gateway.yaml": yaml.safe_dump(gateway_config(gateway, group, primary, failover),
                                                       sort_keys=True)}),
    }


def _gateway_selector(group: str, gateway: str) -> dict[str, str]:
    return {**selector(group, "gateway"), "opsmgr.io/gateway": gateway}


def render_gateway_deployment(gateway: Gateway, group: str, image: str, config_hash: str,
                              tls_secret: str) -> Manifest:
    name = gateway.metadata.name or ""
    match = _gateway_selector(group, name)
    container: dict[str, Any] = {
        "name": "gateway",
        "image": image,
        "command": ["opsmgr", "gateway", "--config", f"{CONFIG_MOUNT}/gateway.yaml"],
        "ports": [{"name": "agents", "containerPort": gateway.spec.port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": GATEWAY_METRICS_PORT, "protocol": "TCP"}],
        # /healthz answers 200 only while a management server is reachable: readyReplicas is the Gateway's health.
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": GATEWAY_METRICS_PORT}, "periodSeconds": 5},
        "volumeMounts": [{"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True}],
        "securityContext": _container_security(),
    }
    resources = gateway.spec.resources.to_dict()
    if resources.get("requests") or resources.get("limits"):
        container["resources"] = {k: v for k, v in resources.items() if v}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(gateway_workload(name), gateway.metadata.namespace or "", labels(group, "gateway"),
                             gateway),
        "spec": {
            "replicas": gateway.spec.replicas,
            "selector": {"matchLabels": match},
            "template": {
                "metadata": {"labels": {**labels(group, "gateway"), **match},
                             "annotations": {CONFIG_HASH_ANNOTATION: config_hash}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": _pod_security(),
                    "containers": [container],
                    "volumes": [{"name": "config", "projected": {"defaultMode": KEY_FILE_MODE, "sources": [
                        {"secret": {"name": gateway_config_secret(name)}},
                        {"secret": {"name": tls_secret, "items": [
                            {"key": "tls.crt", "path": "tls/tls.crt"}, {"key": "tls.key", "path": "tls/tls.key"},
                            {"key": TRUST_FILE, "path": f"tls/{TRUST_FILE}"}]}},
                    ]}}],
                },
            },
        },
    }


def render_gateway_service(gateway: Gateway, group: str) -> Manifest:
    name = gateway.metadata.name or ""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(gateway_workload(name), gateway.metadata.namespace or "", labels(group, "gateway"),
                             gateway),
        "spec": {"type": gateway.spec.service_type.value, "selector": _gateway_selector(group, name),
                 "ports": [{"name": "agents", "port": gateway.spec.port, "targetPort": "agents", "protocol": "TCP"}]},
    }
