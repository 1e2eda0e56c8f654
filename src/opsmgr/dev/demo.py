"""`make demo`: the whole system on one machine, on its embedded default.

`run_demo` starts a real Kubernetes control plane, the local runtime (which plays the kubelet and runs opsmgr's
Pods as local processes) and the shipped operator as its ServiceAccount with the shipped RBAC; then it applies
examples/demo/: a ManagementGroup whose management servers and embedded PostgreSQL the operator renders as Pods,
with node agents on; a ManagementPack whose monitors hold on any healthy machine; and a Deployment whose Pods ask
for an agent, which the operator's webhook injects as a native sidecar. It returns once enough Agents are Healthy
with fresh heartbeats, each running in a Pod the operator rendered (the node agent's DaemonSet, or a sidecar
patched in by its webhook). Deciding that is pure (`agent_views`, `ready_agents`); the rest talks.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.local_operator import (
    SOURCE_TREE,
    RunningOperator,
    register_injection_webhook,
    start_operator,
)
from opsmgr.operator.render_agents import (
    AGENT_ANNOTATION,
    NODE_LABEL,
    SIDECAR,
    node_agent_workload,
)

if TYPE_CHECKING:
    from opsmgr.dev.runtime import RuntimeThread

DEMO_NAMESPACE = "opsmgr-demo"
DEMO_EXAMPLES = SOURCE_TREE / "examples" / "demo"
WANTED_AGENTS = 3
AGENTS_TIMEOUT_SECONDS = 300.0


# --- deciding: which Agents count, from `kubectl get agents,pods -o json` ---

@dataclass(frozen=True)
class AgentView:
    """One Agent as the demo judges it: its status, and the Pod it runs in (None when none was found)."""

    name: str
    placement: str
    health: str
    heartbeat: str
    connection: str
    heartbeat_age: float | None  # seconds since status.lastHeartbeatTime
    interval: int
    pod: str | None
    pod_running: bool

    @property
    def fresh(self) -> bool:
        """The last heartbeat the status shows is younger than two heartbeat intervals."""
        return self.heartbeat_age is not None and self.heartbeat_age < 2 * self.interval

    @property
    def ready(self) -> bool:
        return (self.health == "Healthy" and self.heartbeat == "OK" and self.fresh and self.pod is not None
                and self.pod_running)

    def line(self) -> str:
        age = "never" if self.heartbeat_age is None else f"{self.heartbeat_age:.0f}s ago"
        return (f"{self.name}: {self.placement}, health {self.health}, heartbeat {self.heartbeat} ({age}), "
                f"{self.connection}, pod {self.pod or '-'}{' Running' if self.pod_running else ''}")


def _timestamp(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _container_running(pod: Mapping[str, Any], container: str) -> bool:
    status = pod.get("status") or {}
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    return status.get("phase") == "Running" and any(
        s.get("name") == container and "running" in (s.get("state") or {}) for s in statuses)


def rendered_pod(agent: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], group: str) -> tuple[str, str] | None:
    """The Pod an Agent runs in, and the container that runs it, when the operator rendered that Pod's agent.

    A sidecar's Pod carries the webhook's annotation naming the Agent and its injected init container; a node
    agent's Pod belongs to the group's node-agent DaemonSet and runs on the Agent's node.
    """
    meta = agent.get("metadata") or {}
    placement = (agent.get("spec") or {}).get("placement")
    for pod in pods:
        pod_meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        if placement == "Sidecar":
            injected = any(c.get("name") == SIDECAR for c in spec.get("initContainers") or [])
            if (pod_meta.get("annotations") or {}).get(AGENT_ANNOTATION) == meta.get("name") and injected:
                return pod_meta["name"], SIDECAR
        elif placement == "Node":
            owners = {(o.get("kind"), o.get("name")) for o in pod_meta.get("ownerReferences") or []}
            node = (meta.get("labels") or {}).get(NODE_LABEL)
            if ("DaemonSet", node_agent_workload(group)) in owners and node and spec.get("nodeName") == node:
                return pod_meta["name"], spec["containers"][0]["name"]
    return None


def agent_views(agents: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], *, group: str,
                interval: int, now: datetime) -> list[AgentView]:
    """Every Agent of `group`, judged from the listed Agents and Pods at `now` (`interval`: the group's)."""
    views = []
    for agent in agents:
        spec, status = agent.get("spec") or {}, agent.get("status") or {}
        if (spec.get("managementGroupRef") or {}).get("name") != group:
            continue
        last = _timestamp(status.get("lastHeartbeatTime"))
        found = rendered_pod(agent, pods, group)
        running = found is not None and _container_running(
            next(p for p in pods if p["metadata"]["name"] == found[0]), found[1])
        views.append(AgentView(
            name=agent["metadata"]["name"], placement=spec.get("placement", "?"),
            health=status.get("health", "Unknown"), heartbeat=status.get("heartbeat") or "-",
            connection=status.get("connection", "NeverConnected"),
            heartbeat_age=None if last is None else max(0.0, (now - last).total_seconds()),
            interval=int((spec.get("heartbeat") or {}).get("intervalSeconds") or interval),
            pod=found[0] if found else None, pod_running=running))
    return sorted(views, key=lambda v: v.name)


def ready_agents(views: Sequence[AgentView]) -> list[AgentView]:
    return [v for v in views if v.ready]


# --- talking ---

@dataclass
class DemoManifests:
    """examples/demo/, read and adjusted to this run: the group, its pack, and the application that asks for agents."""

    group: dict[str, Any]
    others: list[dict[str, Any]] = field(default_factory=list)
    application: list[dict[str, Any]] = field(default_factory=list)

    @property
    def group_name(self) -> str:
        return str(self.group["metadata"]["name"])

    @property
    def interval(self) -> int:
        return int(((self.group.get("spec") or {}).get("heartbeat") or {}).get("intervalSeconds", 60))

    @classmethod
    def load(cls, directory: Path, node_queue_root: Path) -> DemoManifests:
        documents = [d for path in sorted(directory.glob("*.yaml"))
                     for d in yaml.safe_load_all(path.read_text()) if d]
        groups = [d for d in documents if d["kind"] == "ManagementGroup"]
        if len(groups) != 1:
            raise ValueError(f"{directory} must hold exactly one ManagementGroup, found {len(groups)}")
        group = groups[0]
        # The node agents' queues live on the host: here, under the demo's own directory, removed with it.
        node_agents = group.setdefault("spec", {}).setdefault("nodeAgents", {})
        if node_agents.get("enabled"):
            node_agents["queueHostPath"] = str(node_queue_root)
        opsmgr = [d for d in documents if d["apiVersion"].startswith("opsmgr.io/") and d is not group]
        application = [d for d in documents if not d["apiVersion"].startswith("opsmgr.io/")]
        return cls(group, opsmgr, application)


@dataclass
class Demo:
    root: Path
    cluster: LocalCluster
    manifests: DemoManifests
    runtime: RuntimeThread | None = None
    operator: RunningOperator | None = None
    runtime_log: logging.Handler | None = None
    progress: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        self.progress(f"[{time.monotonic() - self.started:5.1f}s] {message}")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Any:
        return self.cluster.kubectl("-n", DEMO_NAMESPACE, *args, input=input, check=check)

    def listed(self, kind: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", kind, "-o", "json").stdout)["items"]
        return items

    def views(self) -> list[AgentView]:
        agents, pods = self.listed("agents"), self.listed("pods")
        return agent_views(agents, pods, group=self.manifests.group_name, interval=self.manifests.interval,
                           now=datetime.now().astimezone())

    # --- start ---

    def start(self, timeout: float = AGENTS_TIMEOUT_SECONDS) -> list[AgentView]:
        """Everything up and the examples applied; returns once WANTED_AGENTS agents are ready."""
        self.say("starting the Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager)")
        self.cluster.start()
        self.say(f"control plane up at {self.cluster.server}; starting the local runtime (node `local`)")
        self.start_runtime()
        self.say("installing the CRDs and the operator's RBAC; starting the operator as its ServiceAccount")
        (self.root / "operator").mkdir(exist_ok=True)
        self.operator = start_operator(self.cluster, self.root / "operator")
        register_injection_webhook(self.cluster, self.operator)
        self.create_namespace()
        self.say(f"applying examples/demo/ to namespace {DEMO_NAMESPACE}: ManagementGroup "
                 f"{self.manifests.group_name} and {len(self.manifests.others)} more")
        self.apply([self.manifests.group, *self.manifests.others])
        self.wait_until_injecting()
        self.apply(self.manifests.application)
        self.say("application applied; its Pods get agent sidecars from the operator's webhook")
        return self.wait_for_agents(timeout)

    def start_runtime(self) -> None:
        # Imported here: kubernetes_asyncio is slow to import and only a running demo needs it.
        from opsmgr.dev.runtime import RuntimeSettings, RuntimeThread  # noqa: PLC0415

        runtime_root = self.root / "runtime"
        runtime_root.mkdir(exist_ok=True)
        # What a kubelet would put in events (a Secret not there yet, a restart) goes to a log, not the terminal.
        handler = self.runtime_log = logging.FileHandler(runtime_root / "runtime.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        runtime_log = logging.getLogger("opsmgr.dev.runtime")
        runtime_log.addHandler(handler)
        runtime_log.setLevel(logging.INFO)
        runtime_log.propagate = False
        self.runtime = RuntimeThread(RuntimeSettings(kubeconfig=self.cluster.kubeconfig, root=runtime_root,
                                                     namespaces={DEMO_NAMESPACE}))
        self.runtime.start()  # kept before it is up, so a start that times out is still stopped

    def create_namespace(self) -> None:
        self.cluster.kubectl("create", "namespace", DEMO_NAMESPACE)
        # Pods are admitted only once the controller manager made the namespace's default ServiceAccount.
        deadline = time.monotonic() + 60
        while self.kubectl("get", "serviceaccount", "default", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no default ServiceAccount appeared in {DEMO_NAMESPACE} within 60 s")
            time.sleep(0.3)

    def apply(self, documents: Sequence[Mapping[str, Any]]) -> None:
        if documents:
            self.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(list(documents)))

    def wait_until_injecting(self, timeout: float = 60.0) -> None:
        """The webhook knows the group: a server-side dry run of the application's Pod gets the sidecar.

        Pods created before that would start without an agent (the webhook's failurePolicy is Ignore)."""
        templates = [d["spec"]["template"] for d in self.manifests.application if "template" in d.get("spec", {})]
        if not templates:
            return
        probe = {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"generateName": "probe-", "labels": templates[0]["metadata"].get("labels", {})},
                 "spec": templates[0]["spec"]}
        deadline = time.monotonic() + timeout
        while True:
            result = self.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(probe),
                                  check=False)
            if result.returncode == 0 and any(c["name"] == SIDECAR for c in
                                              json.loads(result.stdout)["spec"].get("initContainers") or []):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the operator's webhook injected no agent into a dry-run Pod within "
                                   f"{timeout:.0f} s:\n{result.stderr.strip()}")
            time.sleep(0.5)

    def wait_for_agents(self, timeout: float) -> list[AgentView]:
        self.say(f"waiting for {WANTED_AGENTS} agents Healthy with heartbeats younger than two intervals "
                 f"({2 * self.manifests.interval} s)")
        deadline = time.monotonic() + timeout
        shown: tuple[Any, ...] | None = None
        while True:
            views = self.views()
            ready = ready_agents(views)
            if len(ready) >= WANTED_AGENTS:
                self.say(f"{len(ready)} agents Healthy with fresh heartbeats")
                return views
            state = (len(ready), *((v.name, v.health, v.heartbeat, v.connection, v.pod_running) for v in views))
            if state != shown:  # a line when something changed, not one per poll
                self.say(f"{len(ready)}/{WANTED_AGENTS} ready" + "".join(f"\n    {v.line()}" for v in views))
                shown = state
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(ready)} of {WANTED_AGENTS} agents ready within {timeout:.0f} s:\n"
                                   + "\n".join(f"  {v.line()}" for v in views))
            time.sleep(2.0)

    # --- tell ---

    def database_uris(self) -> dict[str, str]:
        """The group's embedded databases, from the Secret the operator wrote (reachable here by Service name)."""
        name = f"{self.manifests.group_name}-db-credentials"
        secret = json.loads(self.kubectl("get", "secret", name, "-o", "json").stdout)
        return {key: base64.b64decode(secret["data"][f"{key}-uri"]).decode() for key in ("operational", "warehouse")}

    def summary(self) -> str:
        kubectl = self.cluster.bin_dir / "kubectl"
        uris = self.database_uris()
        runtime_root = self.root / "runtime"
        operator_log = self.operator.log if self.operator is not None else "-"
        agents = self.kubectl("get", "agents").stdout.rstrip()
        return "\n".join([
            "opsmgr demo is running.",
            f"  Kubernetes API:  {self.cluster.server}",
            f"  kubectl:         export KUBECONFIG={self.cluster.kubeconfig} PATH={kubectl.parent}:$PATH",
            f"                   kubectl get agents -n {DEMO_NAMESPACE}     (also: mg, mp, pods)",
            f"  OperationalDB:   psql {uris['operational']}",
            f"  DataWarehouse:   psql {uris['warehouse']}",
            f"  logs:            operator {operator_log}; control plane {self.cluster.directory}/*.log;",
            f"                   runtime {runtime_root}/runtime.log; "
            f"Pods {runtime_root}/pods/<namespace>_<pod>_<uid>/logs/<container>/",
            "",
            agents,
            "",
        ])

    # --- stop ---

    def stop(self) -> None:
        """The operator, then every Pod process (with the runtime), then the control plane."""
        if self.operator is not None:
            self.operator.stop()
            self.operator = None
        if self.runtime is not None:
            self.runtime.stop()
            self.runtime = None
        if self.runtime_log is not None:
            logging.getLogger("opsmgr.dev.runtime").removeHandler(self.runtime_log)
            self.runtime_log.close()
            self.runtime_log = None
        self.cluster.stop()


@contextlib.contextmanager
def running_demo(root: Path, progress: Callable[[str], None] = print) -> Iterator[Demo]:
    """A Demo in `root` (created), stopped on the way out; `root` is removed unless starting failed (its logs)."""
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)  # PostgreSQL runs as its own account when we are root and must reach its directory
    demo = Demo(root, LocalCluster(root / "kubernetes"), DemoManifests.load(DEMO_EXAMPLES, root / "node-agents"),
                progress=progress)
    keep = False
    try:
        yield demo
    except Exception:
        keep = True  # a demo that failed to come up keeps its logs; the caller names the directory
        raise
    finally:
        with _uninterrupted():
            demo.say("stopping the operator, every Pod's processes and the control plane")
            demo.stop()
            if not keep:
                shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C and SIGTERM are ignored while stopping: a second Ctrl-C must not leave half the processes running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
