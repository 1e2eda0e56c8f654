"""Names and labels of everything the operator creates for a management group, gateway or agent.

Children of one group share its name as a prefix, so `kubectl get all -l opsmgr.io/management-group=<g>` and a
person's eyes find them together. Server pod names (`<group>-server-<n>`) are what Agents name as primaryServer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PREFIX = "opsmgr.io"
FINALIZER = f"{PREFIX}/finalizer"
KOPF_PREFIX = f"kopf.{PREFIX}"  # kopf's own progress and last-handled annotations
FIELD_MANAGER = "opsmgr-operator"
GROUP_LABEL = f"{PREFIX}/management-group"
AGENT_LABEL = f"{PREFIX}/agent"
PARENT_TASK_LABEL = f"{PREFIX}/parent-task"
# A person approves or rejects a reviewed agent with `kubectl annotate agent NAME opsmgr.io/approval=Approved`.
APPROVAL_ANNOTATION = f"{PREFIX}/approval"
# The group's timer sets this on an in-cluster agent whose certificate is due; the change wakes the agent handler.
RENEW_ANNOTATION = f"{PREFIX}/renew-requested"
# The group's approval policy an Agent was last asked to be judged by: set on Pending Agents when the policy
# changes to one that decides (AutoApprove, Reject), which wakes their handler.
POLICY_ANNOTATION = f"{PREFIX}/approval-policy"
CONFIG_HASH_ANNOTATION = f"{PREFIX}/config-hash"
CA_NOT_AFTER_ANNOTATION = f"{PREFIX}/not-after"
MANAGED_BY = "opsmgr-operator"
NAME_MAX = 63


def bounded(name: str, limit: int = NAME_MAX) -> str:
    """`name` cut to `limit` characters with a hash suffix when longer, so distinct long names stay distinct."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9].rstrip('-.')}-{digest}"


def labels(group: str, component: str) -> dict[str, str]:
    """The recommended Kubernetes labels plus the group, on every child."""
    return {
        "app.kubernetes.io/name": "opsmgr",
        "app.kubernetes.io/instance": group,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        GROUP_LABEL: group,
    }


def selector(group: str, component: str) -> dict[str, str]:
    """The immutable subset of `labels` a workload selects its Pods by."""
    return {"app.kubernetes.io/instance": group, "app.kubernetes.io/component": component,
            GROUP_LABEL: group}


@dataclass(frozen=True)
class GroupNames:
    """Every child name of one ManagementGroup."""

    group: str
    namespace: str

    @property
    def ca_secret(self) -> str:
        return bounded(f"{self.group}-ca")

    @property
    def server_tls_secret(self) -> str:
        return bounded(f"{self.group}-server-tls")

    @property
    def server_config_secret(self) -> str:
        return bounded(f"{self.group}-server-config")

    @property
    def directory_config_map(self) -> str:
        return bounded(f"{self.group}-directory")

    @property
    def revocations_config_map(self) -> str:
        return bounded(f"{self.group}-revocations")

    @property
    def statefulset(self) -> str:
        return bounded(f"{self.group}-server", NAME_MAX - 6)  # room for the "-<ordinal>" of its Pods

    @property
    def headless_service(self) -> str:
        return bounded(f"{self.group}-servers")

    @property
    def agent_service(self) -> str:
        return bounded(f"{self.group}-agents")

    @property
    def pod_disruption_budget(self) -> str:
        return self.statefulset

    @property
    def server_account(self) -> str:
        return self.statefulset

    def server_pod(self, replica: int) -> str:
        return f"{self.statefulset}-{replica}"

    def server_pods(self, replicas: int) -> list[str]:
        return [self.server_pod(i) for i in range(replicas)]

    @property
    def database(self) -> str:
        return bounded(f"{self.group}-db", NAME_MAX - 6)

    @property
    def database_credentials(self) -> str:
        return bounded(f"{self.group}-db-credentials")

    def migration_job(self, fingerprint: str) -> str:
        return bounded(f"{self.group}-migrate-{fingerprint[:10]}")

    def service_host(self, service: str) -> str:
        return f"{service}.{self.namespace}.svc"


def agent_tls_secret(agent: str) -> str:
    return bounded(f"{agent}-tls")


def gateway_tls_secret(gateway: str) -> str:
    return bounded(f"{gateway}-gateway-tls")


def gateway_config_secret(gateway: str) -> str:
    return bounded(f"{gateway}-gateway-config")


def gateway_workload(gateway: str) -> str:
    return bounded(f"{gateway}-gateway")


def child_task(parent: str, agent: str) -> str:
    return bounded(f"{parent}-{agent}", 253)
