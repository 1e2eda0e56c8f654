"""Node agents (SCOM's one agent per computer): for a ManagementGroup with spec.nodeAgents.enabled, an Agent per
selected node, created and retired with the node, and a DaemonSet whose pod on each node runs that node's agent.

Nodes are watched through a kopf index; a timer per group gathers the index, the group's Agents and their issued
certificates, and applies the DaemonSet with its files. Until enrollment by ServiceAccount token exists, each node
agent's certificate reaches its pod through one Secret of every node's pair, picked by subPathExpr.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from opsmgr.api import ManagementGroup
from opsmgr.api.agent import Placement
from opsmgr.api.common import GROUP, VERSION
from opsmgr.operator import render
from opsmgr.operator.agent_lifecycle import node_plan
from opsmgr.operator.assignment import assign
from opsmgr.operator.context import OperatorContext, context_of
from opsmgr.operator.indexes import AgentEntry, entries
from opsmgr.operator.kube import PLURALS, KubeError
from opsmgr.operator.names import agent_tls_secret
from opsmgr.operator.render_agents import (
    NODE_LABEL,
    agent_config,
    node_agent_binding,
    node_agent_workload,
    node_fqdn,
    render_node_agent,
    render_node_agent_access,
    render_node_agent_config_map,
    render_node_agent_daemonset,
    render_node_identity_secret,
    server_addresses,
)
from opsmgr.operator.sidecar_agents import retire

DEFAULT_AGENT_IMAGE = "ghcr.io/opsmgr/opsmgr-agent:0.1.0"
NODE_SECONDS = 10.0
REAPPLY_SECONDS = 60.0
RBAC = "rbac.authorization.k8s.io/v1"
for _kind, _plural in (("DaemonSet", "daemonsets"), ("Node", "nodes"), ("ClusterRoleBinding", "clusterrolebindings")):
    PLURALS.setdefault(_kind, _plural)


@dataclass
class NodeAgentMemory:
    """Per group: the certificates already gathered (by Agent and expiry) and whether cleanup already ran."""

    identities: dict[str, tuple[str, bytes, bytes]] = field(default_factory=dict)
    trust: bytes = b""
    applied: str = ""
    applied_at: float = 0.0
    off: bool = False


def _memory(memo: Any, key: tuple[str, str]) -> NodeAgentMemory:
    store = getattr(memo, "node_agent_memory", None)
    if store is None:
        store = {}
        memo.node_agent_memory = store
    return store.setdefault(key, NodeAgentMemory())  # type: ignore[no-any-return]


@kopf.index("", "v1", "nodes")
def nodes_by_name(*, name: str, labels: kopf.Labels, meta: kopf.Meta, **_: Any) -> dict[str, dict[str, str]]:
    """Every Node's labels, by name; a node being deleted counts as gone."""
    if meta.get("deletionTimestamp") is not None:
        return {}
    return {name: dict(labels)}


def _nodes(index: Any) -> dict[str, dict[str, str]]:
    nodes: dict[str, dict[str, str]] = {}
    for name in list(index):
        found = entries(index, name)
        if found:
            nodes[str(name)] = found[-1]
    return nodes


def _node_agents(agents: list[AgentEntry]) -> dict[str, AgentEntry]:
    """The group's node Agents by node name."""
    found = {}
    for agent in agents:
        node = dict(agent.labels).get(NODE_LABEL)
        if agent.placement == Placement.NODE.value and node and not agent.deleting:
            found[node] = agent
    return found


async def _gather_identities(context: OperatorContext, group: ManagementGroup, agents: Mapping[str, AgentEntry],
                             memory: NodeAgentMemory) -> bool:
    """Copy each node Agent's issued pair into memory when new or renewed; returns whether anything changed."""
    names = render.group_names(group)
    changed = False
    for node, agent in agents.items():
        held = memory.identities.get(node)
        if agent.certificate_not_after is None or (held and held[0] == agent.certificate_not_after):
            continue
        data = render.decode(await context.kube.get("v1", "Secret", names.namespace, agent_tls_secret(agent.name)))
        if "tls.crt" in data and "tls.key" in data:
            memory.identities[node] = (agent.certificate_not_after, data["tls.crt"], data["tls.key"])
            memory.trust = data.get(render.TRUST_FILE, memory.trust)
            changed = True
    for node in set(memory.identities) - set(agents):
        del memory.identities[node]
        changed = True
    return changed


async def _turn_off(context: OperatorContext, group: ManagementGroup) -> None:
    names = render.group_names(group)
    workload = node_agent_workload(names.group)
    await context.kube.delete("apps/v1", "DaemonSet", names.namespace, workload)
    await context.kube.delete("v1", "Secret", names.namespace, workload)
    await context.kube.delete(RBAC, "ClusterRoleBinding", "", node_agent_binding(names.namespace, names.group))


async def reconcile(context: OperatorContext, group: ManagementGroup, *, nodes: Mapping[str, Mapping[str, str]],
                    agents: list[AgentEntry], memory: NodeAgentMemory, image: str, logger: Any) -> None:
    names = render.group_names(group)
    spec = group.spec.node_agents
    have = _node_agents(agents)
    plan = node_plan(nodes, spec.node_selector, have, enabled=spec.enabled)
    for node in plan.create:
        if await context.kube.create(render_node_agent(group, node)) is not None:
            logger.info(f"Agent for node {node} created")
    for node in plan.retire:
        await retire(context, names.namespace, have[node].name, "NodeGone" if spec.enabled else "NodeAgentsOff")
        logger.info(f"Agent {have[node].name} retired: node {node} is gone or no longer selected")
    if not spec.enabled:
        if not memory.off:
            await _turn_off(context, group)
            memory.off, memory.applied = True, ""
        return
    memory.off = False
    live = {node: agent for node, agent in have.items() if node not in plan.retire}
    await _gather_identities(context, group, live, memory)
    servers = names.server_pods(group.spec.servers.replicas)
    configs = {}
    for node, agent in live.items():
        primary, failover = server_addresses(group, assign(agent.name, servers, agent.pinned_primary,
                                                           agent.pinned_failover))
        configs[node] = agent_config(fqdn=node_fqdn(node), placement=Placement.NODE, primary=primary,
                                     failover=failover, queue_limit_mb=spec.queue_limit_mb,
                                     heartbeat_seconds=group.spec.heartbeat.interval_seconds)
    identities = {node: (crt, key) for node, (_, crt, key) in memory.identities.items()}
    children = [*render_node_agent_access(group), render_node_agent_config_map(group, configs)]
    if memory.trust:
        children.append(render_node_identity_secret(group, identities, memory.trust))
    children.append(render_node_agent_daemonset(group, image))
    # Applied when something changed, and now and then to put back edits: a quiet group costs few requests.
    digest = render.fingerprint(children)
    if digest == memory.applied and time.monotonic() - memory.applied_at < REAPPLY_SECONDS:
        return
    for child in children:
        await context.kube.apply(child)
    memory.applied, memory.applied_at = digest, time.monotonic()


@kopf.timer(GROUP, VERSION, "managementgroups", interval=NODE_SECONDS, initial_delay=2.0)
async def node_agents_kept(*, body: kopf.Body, memo: Any, logger: kopf.Logger, **kwargs: Any) -> None:
    """Keep one Agent per selected node and the node-agent DaemonSet with its files."""
    group = ManagementGroup.from_body(body)
    names = render.group_names(group)
    key = (names.namespace, names.group)
    memory = _memory(memo, key)
    if not group.spec.node_agents.enabled and memory.off:
        return
    context = context_of(memo)
    async with context.lock(("node-agents", *key)):
        try:
            await reconcile(context, group, nodes=_nodes(kwargs["nodes_by_name"]),
                            agents=entries(kwargs["agents_by_group"], key), memory=memory,
                            image=str(memo.agent_image), logger=logger)
        except KubeError as error:
            raise kopf.TemporaryError(str(error), delay=NODE_SECONDS) from None
