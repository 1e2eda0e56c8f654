"""Pure builders for agents that run inside the cluster: the sidecar the webhook injects (as an RFC 6902 JSON patch),
the node-agent DaemonSet and its files, the Agent resources the operator creates for pods and nodes, and the
agent configuration file they all run with.

Every agent file lives under AGENT_HOME, and the configuration names the rest relative to it (`identity`,
`queue/queue.sqlite`), so the same document works in a container and under the local runtime, which roots each
container's mounts in its own directory.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from opsmgr.api import ManagementGroup
from opsmgr.api.agent import Placement
from opsmgr.api.common import GROUP, VERSION
from opsmgr.api.management_group import ApprovalPolicy
from opsmgr.operator.assignment import Assignment, assign
from opsmgr.operator.names import GROUP_LABEL, MANAGED_BY, NAME_MAX, PREFIX, agent_tls_secret, bounded, labels, selector
from opsmgr.operator.render import TRUST_FILE, Manifest, encode, group_names, metadata, owner_reference

# The pod label (or annotation) that asks for an agent; the chart's webhook objectSelector matches the label.
INJECT_LABEL = f"{PREFIX}/inject-agent"
# Which group an injected agent joins (`name` or `namespace/name`); the only group there is when absent.
GROUP_ANNOTATION = f"{PREFIX}/management-group"
AGENT_ANNOTATION = f"{PREFIX}/agent"  # on an injected pod: the name of its Agent
AGENT_GROUP_ANNOTATION = f"{PREFIX}/agent-group"  # on an injected pod: namespace/name of the group it joined
CONFIG_ANNOTATION = f"{PREFIX}/agent-config"  # on an injected pod: the agent's configuration file
# On an Agent about to go on purpose (its pod or node is being deleted): the silence that follows is planned.
RETIRING_ANNOTATION = f"{PREFIX}/retiring"
PLACEMENT_LABEL = f"{PREFIX}/placement"
POD_LABEL = f"{PREFIX}/pod"
NODE_LABEL = f"{PREFIX}/node"

SIDECAR = "opsmgr-agent"
AGENT_HOME = "/var/opsmgr"
CONFIG_FILE = "agent.yaml"
IDENTITY_DIRECTORY = "identity"
QUEUE_DIRECTORY = "queue"
CONFIG_VOLUME = "opsmgr-agent-config"
IDENTITY_VOLUME = "opsmgr-agent-identity"
QUEUE_VOLUME = "opsmgr-agent-queue"
AGENT_USER = 10002  # the agent image's non-root user
CLUSTER_DOMAIN = "cluster.local"
MB = 1024 * 1024
# Room beside the queue in its volume: SQLite's WAL, collection state and the last inventory.
QUEUE_VOLUME_HEADROOM = 0.25
QUEUE_VOLUME_SLACK_MB = 32
# The agent flushes its queue and says Goodbye within this after the application stopped.
GOODBYE_FLUSH_SECONDS = 10
NODE_DISCOVERY_SECONDS = 60  # pods come and go on a node far more often than hardware does
MIN_GRACE_SECONDS = 20
NODE_AGENT_CLUSTER_ROLE = "opsmgr-node-agent"
# Characters the API server uses for generated name suffixes (no vowels, so no words).
NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


# --- names ---

def pod_fqdn(pod: str, namespace: str) -> str:
    """The computer name (certificate CN) of a pod's agent."""
    return f"{pod}.{namespace}.pod.{CLUSTER_DOMAIN}".lower()


def node_fqdn(node: str) -> str:
    """The computer name of a node's agent: the node name when it is already qualified."""
    return node.lower() if "." in node else f"{node}.node.{CLUSTER_DOMAIN}".lower()


def node_agent_name(group: str, node: str) -> str:
    return bounded(f"{group}-node-{node}", 253)


def node_agent_workload(group: str) -> str:
    return bounded(f"{group}-node-agent", NAME_MAX - 6)


def node_agent_binding(namespace: str, group: str) -> str:
    return bounded(f"opsmgr-node-agent-{namespace}-{group}", 253)


def generated_pod_name(generate_name: str, suffix: str) -> str:
    """What the API server would name a pod from generateName: the prefix cut to leave room, then the suffix."""
    return f"{generate_name[:NAME_MAX - len(suffix)]}{suffix}"


def group_of_pod(annotations: Mapping[str, str], pod_namespace: str,
                 groups: Sequence[tuple[str, str]]) -> tuple[str, str] | str:
    """The (namespace, name) of the group an injected pod joins, or a sentence saying why there is none."""
    asked = annotations.get(GROUP_ANNOTATION, "").strip()
    if asked:
        namespace, _, name = asked.rpartition("/")
        key = (namespace or pod_namespace, name)
        if key in groups:
            return key
        return (f"annotation {GROUP_ANNOTATION}={asked!r} names no ManagementGroup; name an existing group as "
                "name (same namespace) or namespace/name")
    local = [g for g in groups if g[0] == pod_namespace]
    for candidates in (local, list(groups)):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            shown = ", ".join(f"{n}/{g}" for n, g in sorted(candidates))
            return (f"several ManagementGroups could take this pod ({shown}); annotate the pod with "
                    f"{GROUP_ANNOTATION}=namespace/name")
    return "no ManagementGroup exists yet; create one, then recreate the pod"


# --- the agent's configuration file ---

def server_addresses(group: ManagementGroup, assignment: Assignment | None) -> tuple[str, list[str]]:
    """host:port of the assigned primary and failovers; the shared agent Service when nothing is assigned yet."""
    names = group_names(group)
    port = group.spec.agent_port
    if assignment is None:
        return f"{names.service_host(names.agent_service)}:{port}", []
    return (f"{names.service_host(assignment.primary)}:{port}",
            [f"{names.service_host(server)}:{port}" for server in assignment.failover])


def agent_config(*, fqdn: str, placement: Placement, primary: str, failover: Sequence[str], queue_limit_mb: int,
                 heartbeat_seconds: int, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `opsmgr agent --config` document of an in-cluster agent; paths are relative to AGENT_HOME."""
    collection: dict[str, Any] = {"labels": dict(sorted((labels or {}).items()))}
    if placement is Placement.NODE:
        collection["discovery_interval_seconds"] = NODE_DISCOVERY_SECONDS
    return {
        "fqdn": fqdn,
        "placement": placement.value.lower(),
        "servers": {"primary": primary, "failover": list(failover)},
        # The operator holds the key and renews the Secret; a mounted Secret is read-only anyway.
        "certificates": {"directory": IDENTITY_DIRECTORY, "renew": False, "wait_for_identity": True},
        "queue": {"path": f"{QUEUE_DIRECTORY}/queue.sqlite", "limit_bytes": queue_limit_mb * MB},
        "connection": {"goodbye_flush_seconds": GOODBYE_FLUSH_SECONDS, "heartbeat_seconds": heartbeat_seconds},
        "collection": collection,
        # A container sees only its own pod's processes, and the webhook never injects into opsmgr's own pods.
        "refuse_on_management_host": False,
    }


def config_yaml(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=True)


def queue_size_limit(queue_limit_mb: int) -> str:
    """The queue volume's sizeLimit: above the queue's own limit, so the agent evicts before the kubelet does."""
    return f"{math.ceil(queue_limit_mb * (1 + QUEUE_VOLUME_HEADROOM)) + QUEUE_VOLUME_SLACK_MB}Mi"


# --- the sidecar, as the webhook's JSON patch ---

def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _downward_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def sidecar_container(pod: Mapping[str, Any], image: str, resources: Mapping[str, Any]) -> dict[str, Any]:
    """The agent as a native sidecar: an init container with restartPolicy Always starts before the application
    and is stopped after it, so the queue it flushes on SIGTERM holds the application's last data."""
    spec = pod.get("spec") or {}
    applications = ",".join(f"{c['name']}={c.get('image', '')}" for c in spec.get("containers") or [])
    container: dict[str, Any] = {
        "name": SIDECAR,
        "image": image,
        "restartPolicy": "Always",
        "args": ["--config", f"{AGENT_HOME}/{CONFIG_FILE}"],
        "env": [
            _downward_env("OPSMGR_POD_NAME", "metadata.name"),
            _downward_env("OPSMGR_POD_NAMESPACE", "metadata.namespace"),
            _downward_env("OPSMGR_POD_UID", "metadata.uid"),
            _downward_env("OPSMGR_NODE_NAME", "spec.nodeName"),
            _downward_env("OPSMGR_POD_IP", "status.podIP"),
            {"name": "OPSMGR_CONTAINER_NAME", "value": SIDECAR},
            {"name": "OPSMGR_CONTAINER_IMAGE", "value": image},
            {"name": "OPSMGR_CONTAINERS", "value": applications},
        ],
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": f"{AGENT_HOME}/{CONFIG_FILE}", "subPath": CONFIG_FILE,
             "readOnly": True},
            {"name": IDENTITY_VOLUME, "mountPath": f"{AGENT_HOME}/{IDENTITY_DIRECTORY}", "readOnly": True},
            {"name": QUEUE_VOLUME, "mountPath": f"{AGENT_HOME}/{QUEUE_DIRECTORY}"},
        ],
        "securityContext": {"runAsNonRoot": True, "runAsUser": AGENT_USER, "runAsGroup": AGENT_USER,
                            "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if resources.get("requests") or resources.get("limits"):
        container["resources"] = {k: dict(v) for k, v in resources.items() if v}
    return container


def sidecar_volumes(agent: str, queue_limit_mb: int) -> list[dict[str, Any]]:
    return [
        {"name": CONFIG_VOLUME, "downwardAPI": {"items": [
            {"path": CONFIG_FILE, "fieldRef": {"fieldPath": f"metadata.annotations['{CONFIG_ANNOTATION}']"}}]}},
        # Optional: the pod starts at once and the agent waits for its certificate; monitoring never blocks it.
        {"name": IDENTITY_VOLUME, "secret": {"secretName": agent_tls_secret(agent), "optional": True,
                                             "defaultMode": 0o444}},
        {"name": QUEUE_VOLUME, "emptyDir": {"sizeLimit": queue_size_limit(queue_limit_mb)}},
    ]


def injection_patch(pod: Mapping[str, Any], *, agent: str, group: tuple[str, str], config: str, image: str,
                    queue_limit_mb: int, resources: Mapping[str, Any], name_suffix: str) -> list[dict[str, Any]]:
    """The JSON patch that adds the agent to a pod; empty when the pod already has it (a re-invocation).

    A pod created from generateName gets its name here, so the Agent, its Secret and the agent's FQDN are known
    before the pod exists.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = meta.get("annotations") or {}
    if AGENT_ANNOTATION in annotations or any(c.get("name") == SIDECAR for c in spec.get("initContainers") or []):
        return []
    ops: list[dict[str, Any]] = []
    if not meta.get("name"):
        ops.append({"op": "add", "path": "/metadata/name",
                    "value": generated_pod_name(meta.get("generateName") or "pod-", name_suffix)})
    added = {AGENT_ANNOTATION: agent, AGENT_GROUP_ANNOTATION: f"{group[0]}/{group[1]}", CONFIG_ANNOTATION: config}
    if meta.get("annotations") is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": added})
    else:
        ops += [{"op": "add", "path": f"/metadata/annotations/{_pointer(k)}", "value": v} for k, v in added.items()]
    volumes = sidecar_volumes(agent, queue_limit_mb)
    if spec.get("volumes") is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": volumes})
    else:
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in volumes]
    container = sidecar_container(pod, image, resources)
    # First of the init containers, so the agent also sees the pod's own initialisation.
    if spec.get("initContainers") is None:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers/0", "value": container})
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and grace < MIN_GRACE_SECONDS:
        ops.append({"op": "replace", "path": "/spec/terminationGracePeriodSeconds", "value": MIN_GRACE_SECONDS})
    return ops


def admission_response(uid: str, patch: Sequence[Mapping[str, Any]], warnings: Sequence[str] = ()) -> dict[str, Any]:
    """An AdmissionReview (v1) that admits the object with `patch` applied; warnings reach kubectl."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(list(patch)).encode()).decode()
    if warnings:
        response["warnings"] = list(warnings)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


# --- Agent resources the operator creates ---

def _agent(name: str, namespace: str, group: tuple[str, str], *, fqdn: str, placement: Placement,
           label_set: Mapping[str, str], owner: Mapping[str, Any] | None) -> Manifest:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(label_set)}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    reference: dict[str, str] = {"name": group[1]}
    if group[0] != namespace:
        reference["namespace"] = group[0]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Agent", "metadata": meta,
            "spec": {"managementGroupRef": reference, "fqdn": fqdn, "placement": placement.value}}


def render_sidecar_agent(pod: Mapping[str, Any], group: tuple[str, str], queue_limit_mb: int) -> Manifest:
    """The Agent of an injected pod, owned by the pod: the garbage collector retires it with the pod even while the
    operator is down. The pod's label is the request and its admission the review, so it is approved."""
    meta = pod["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    agent = (meta.get("annotations") or {}).get(AGENT_ANNOTATION) or name
    label_set = {**labels(group[1], "agent"), PLACEMENT_LABEL: Placement.SIDECAR.value, POD_LABEL: name}
    owner = {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": meta["uid"], "blockOwnerDeletion": False}
    manifest = _agent(agent, namespace, group, fqdn=pod_fqdn(name, namespace), placement=Placement.SIDECAR,
                      label_set=label_set, owner=owner)
    manifest["metadata"]["annotations"] = {f"{PREFIX}/approval": "Approved"}
    manifest["spec"]["queueLimitMB"] = queue_limit_mb
    return manifest


def render_node_agent(group: ManagementGroup, node: str) -> Manifest:
    """The Agent of one node, owned by the group (a node outlives no group)."""
    names = group_names(group)
    label_set = {**labels(names.group, "agent"), PLACEMENT_LABEL: Placement.NODE.value, NODE_LABEL: node}
    manifest = _agent(node_agent_name(names.group, node), names.namespace, (names.namespace, names.group),
                      fqdn=node_fqdn(node), placement=Placement.NODE, label_set=label_set,
                      owner=owner_reference(group))
    manifest["metadata"]["annotations"] = {f"{PREFIX}/approval": "Approved"}
    manifest["spec"]["queueLimitMB"] = group.spec.node_agents.queue_limit_mb
    return manifest


# --- node agents: DaemonSet, files, access ---

def render_node_agent_config_map(group: ManagementGroup, configs: Mapping[str, Mapping[str, Any]]) -> Manifest:
    """Each node's configuration file as `<node>.yaml`; a DaemonSet Pod picks its own by subPathExpr."""
    names = group_names(group)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(node_agent_workload(names.group), names.namespace, labels(names.group, "node-agent"),
                                 group),
            "data": {f"{node}.yaml": config_yaml(config) for node, config in sorted(configs.items())}}


def render_node_identity_secret(group: ManagementGroup, identities: Mapping[str, tuple[bytes, bytes]],
                                trust_pem: bytes) -> Manifest:
    """Every node agent's certificate and key (`<node>.crt`, `<node>.key`) and the trust bundle in one Secret: a
    DaemonSet's Pods share one template, so each mounts its own pair by subPathExpr."""
    names = group_names(group)
    values: dict[str, bytes] = {TRUST_FILE: trust_pem}
    for node, (certificate_pem, key_pem) in identities.items():
        values[f"{node}.crt"] = certificate_pem
        values[f"{node}.key"] = key_pem
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": metadata(node_agent_workload(names.group), names.namespace,
                                 labels(names.group, "node-agent"), group),
            "data": encode(values)}


def render_node_agent_access(group: ManagementGroup) -> list[Manifest]:
    """The node agents' ServiceAccount, bound to the shipped ClusterRole that reads pods and nodes."""
    names = group_names(group)
    account = node_agent_workload(names.group)
    label_set = labels(names.group, "node-agent")
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": metadata(account, names.namespace, label_set, group)},
        # Cluster-scoped, so it cannot be owned by the group: the node-agent reconcile deletes it when turned off.
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": node_agent_binding(names.namespace, names.group), "labels": label_set},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_AGENT_CLUSTER_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": names.namespace}]},
    ]


def render_node_agent_daemonset(group: ManagementGroup, image: str) -> Manifest:
    """One agent per selected node; its queue on a hostPath that outlives the pod."""
    names = group_names(group)
    spec = group.spec.node_agents
    workload = node_agent_workload(names.group)
    queue_path = f"{spec.queue_host_path}/{names.namespace}_{names.group}"
    container: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "args": ["--config", f"{AGENT_HOME}/{CONFIG_FILE}"],
        "env": [
            _downward_env("NODE_NAME", "spec.nodeName"),
            _downward_env("OPSMGR_NODE_NAME", "spec.nodeName"),
            _downward_env("OPSMGR_AGENT_POD_NAME", "metadata.name"),
        ],
        "volumeMounts": [
            {"name": "config", "mountPath": f"{AGENT_HOME}/{CONFIG_FILE}", "subPathExpr": "$(NODE_NAME).yaml",
             "readOnly": True},
            {"name": "identity", "mountPath": f"{AGENT_HOME}/{IDENTITY_DIRECTORY}/tls.crt",
             "subPathExpr": "$(NODE_NAME).crt", "readOnly": True},
            {"name": "identity", "mountPath": f"{AGENT_HOME}/{IDENTITY_DIRECTORY}/tls.key",
             "subPathExpr": "$(NODE_NAME).key", "readOnly": True},
            {"name": "identity", "mountPath": f"{AGENT_HOME}/{IDENTITY_DIRECTORY}/{TRUST_FILE}",
             "subPath": TRUST_FILE, "readOnly": True},
            {"name": "queue", "mountPath": f"{AGENT_HOME}/{QUEUE_DIRECTORY}"},
        ],
        # Root only to own its hostPath queue directory; no capabilities, no escalation.
        "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    resources = spec.resources.to_dict()
    if resources.get("requests") or resources.get("limits"):
        container["resources"] = {k: v for k, v in resources.items() if v}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": workload,
        "terminationGracePeriodSeconds": GOODBYE_FLUSH_SECONDS + 10,
        "tolerations": [{"operator": "Exists"}],  # a node agent watches every node, tainted or not
        "nodeSelector": {"kubernetes.io/os": "linux", **spec.node_selector},
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": workload}},
            {"name": "identity", "secret": {"secretName": workload, "defaultMode": 0o400}},
            {"name": "queue", "hostPath": {"path": queue_path, "type": "DirectoryOrCreate"}},
        ],
    }
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": metadata(workload, names.namespace, labels(names.group, "node-agent"), group),
        "spec": {
            "selector": {"matchLabels": selector(names.group, "node-agent")},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
            "template": {
                # No config hash here: a new node's file must not restart the agents of every other node.
                "metadata": {"labels": {**labels(names.group, "node-agent"), GROUP_LABEL: names.group}},
                "spec": pod_spec,
            },
        },
    }


# --- the webhook's decision ---

@dataclass(frozen=True)
class Injection:
    """What the webhook answers for one pod: a patch (maybe empty) and warnings kubectl shows."""

    patch: list[dict[str, Any]]
    warnings: list[str]


def wants_agent(pod: Mapping[str, Any]) -> bool:
    """The pod asks for an agent by label or annotation, and is not one of opsmgr's own."""
    meta = pod.get("metadata") or {}
    pod_labels = meta.get("labels") or {}
    asked = pod_labels.get(INJECT_LABEL) == "true" or (meta.get("annotations") or {}).get(INJECT_LABEL) == "true"
    return asked and pod_labels.get("app.kubernetes.io/managed-by") != MANAGED_BY


def plan_injection(pod: Mapping[str, Any], namespace: str, groups: Mapping[tuple[str, str], ManagementGroup], *,
                   image: str, name_suffix: str) -> Injection:
    """Whether and how to add the agent to a pod being created in `namespace`."""
    if not wants_agent(pod):
        return Injection([], [])
    meta = pod.get("metadata") or {}
    found = group_of_pod(meta.get("annotations") or {}, namespace, sorted(groups))
    if isinstance(found, str):
        return Injection([], [f"opsmgr: no agent injected: {found}"])
    group = groups[found]
    if group.spec.approval_policy is ApprovalPolicy.REJECT:
        return Injection([], [f"opsmgr: no agent injected: ManagementGroup {found[0]}/{found[1]} rejects new "
                              "agents (spec.approvalPolicy Reject)"])
    name = meta.get("name") or generated_pod_name(meta.get("generateName") or "pod-", name_suffix)
    servers = group_names(group).server_pods(group.spec.servers.replicas)
    primary, failover = server_addresses(group, assign(name, servers))
    sidecar = group.spec.sidecar_agents
    config = agent_config(fqdn=pod_fqdn(name, namespace), placement=Placement.SIDECAR, primary=primary,
                          failover=failover, queue_limit_mb=sidecar.queue_limit_mb,
                          heartbeat_seconds=group.spec.heartbeat.interval_seconds,
                          labels=meta.get("labels") or {})
    patch = injection_patch(pod, agent=name, group=found, config=config_yaml(config), image=image,
                            queue_limit_mb=sidecar.queue_limit_mb, resources=sidecar.resources.to_dict(),
                            name_suffix=name_suffix)
    return Injection(patch, [])
