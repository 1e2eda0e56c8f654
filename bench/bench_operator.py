"""N Agent CRs to Ready with certificates, through the shipped operator on a real API server.

Starts a local control plane, applies the CRDs and deploy/opsmgr.yaml's RBAC, runs `opsmgr operator` as its
ServiceAccount, creates one AutoApprove group and N Node agents, and waits until every agent is Ready (approved,
assigned, certificate Secret issued). Prints wall time, agents/s, the operator's peak RSS, the API requests its
handlers sent and the API server's whole request rate (every client: kopf's patches and Events, the creating
kubectl, the controller manager).
Baseline, in the same run and before the operator starts: the same N Agents created, and deleted again, in another
namespace with nobody reconciling them. That is how fast this API server (on this machine, now) takes the objects
at all, so "Ready in T" reads against "created in T0".
Run: `.venv/bin/python -m bench.bench_operator [N]` (default 1,000).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import yaml

from opsmgr.api import RESOURCES
from opsmgr.api.crd import crd_stream
from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.postgres import free_port

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "bench"
BATCH = 500
# kubectl processes creating Agents side by side: one alone is bound by its own request round trips.
CREATORS = 4
SETTLE_SECONDS = 15


def _kubeconfig_for_operator(cluster: LocalCluster, directory: Path) -> Path:
    token = cluster.kubectl("create", "token", "opsmgr-operator", "-n", "opsmgr-system", "--duration=6h").stdout
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    cluster_name = admin["clusters"][0]["name"]
    document = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
                "users": [{"name": "operator", "user": {"token": token.strip()}}],
                "contexts": [{"name": "operator", "context": {"cluster": cluster_name, "user": "operator"}}],
                "current-context": "operator"}
    path = directory / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(document))
    return path


def _agents(namespace: str, start: int, stop: int) -> str:
    return yaml.safe_dump_all([{
        "apiVersion": "opsmgr.io/v1alpha1", "kind": "Agent",
        "metadata": {"name": f"agent-{i:05d}", "namespace": namespace},
        "spec": {"managementGroupRef": {"name": "bench"}, "fqdn": f"agent-{i:05d}.bench.test", "placement": "Node"},
    } for i in range(start, stop)])


def _create_agents(cluster: LocalCluster, namespace: str, agents: int) -> float:
    """Seconds to create `agents` Agents in `namespace`, CREATORS kubectl processes at a time."""
    start = time.perf_counter()
    with ThreadPoolExecutor(CREATORS) as pool:
        list(pool.map(lambda first: cluster.kubectl("create", "-f", "-", timeout=900,
                                                    input=_agents(namespace, first, min(agents, first + BATCH))),
                      range(0, agents, BATCH)))
    return time.perf_counter() - start


def _apiserver_requests(cluster: LocalCluster) -> float:
    """Requests the API server has answered so far (all clients, long-running watches included once)."""
    text = cluster.kubectl("get", "--raw", "/metrics", timeout=60).stdout
    return sum(float(m) for m in re.findall(r"^apiserver_request_total\{[^}]*\} (\S+)$", text, re.M))


def _ready_count(cluster: LocalCluster) -> int:
    out = cluster.kubectl("get", "agents", "-n", NAMESPACE, "-o",
                          'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
                          timeout=300).stdout
    return sum(1 for line in out.splitlines() if line == "True")


def _handler_requests(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(r"^opsmgr_operator_api_requests_total\{[^}]*\} (\S+)$", text, re.M))


def _install(cluster: LocalCluster) -> None:
    """The CRDs and the shipped RBAC, as a user installs them, and the bench namespace."""
    cluster.kubectl("apply", "--server-side", "-f", "-", input=crd_stream(RESOURCES))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{r.crd_name()}" for r in RESOURCES])
    rbac = [d for d in yaml.safe_load_all((REPO / "deploy" / "opsmgr.yaml").read_text())
            if d and d["kind"] != "Deployment"]
    cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(rbac))
    cluster.kubectl("create", "namespace", NAMESPACE)


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def _baseline(cluster: LocalCluster, agents: int) -> float:
    """Seconds the API server takes to create the same Agents with no operator running (then deleted again)."""
    cluster.kubectl("create", "namespace", "baseline")
    seconds = _create_agents(cluster, "baseline", agents)
    cluster.kubectl("delete", "namespace", "baseline", "--wait=true", timeout=900)
    return seconds


def _start_operator(cluster: LocalCluster, directory: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    """`opsmgr operator` as its ServiceAccount, logging to operator.log."""
    env = {**os.environ, "KUBECONFIG": str(_kubeconfig_for_operator(cluster, directory))}
    log = (directory / "operator.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "opsmgr", "operator", "--metrics-port", str(metrics_port),
                             "--liveness-port", str(free_port())], env=env, stdout=log, stderr=subprocess.STDOUT)


def main(agents: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-bench-operator-"))
    cluster = LocalCluster(directory / "cluster")
    cluster.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        _install(cluster)
        baseline = _baseline(cluster, agents)
        metrics_port = free_port()
        process = _start_operator(cluster, directory, metrics_port)
        peak = [0]
        stop = threading.Event()

        def sample() -> None:
            watched = psutil.Process(process.pid)
            while not stop.is_set():
                peak[0] = max(peak[0], watched.memory_info().rss)
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        group = {"apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup",
                 "metadata": {"name": "bench", "namespace": NAMESPACE},
                 "spec": {"approvalPolicy": "AutoApprove", "servers": {"replicas": 3}}}
        cluster.kubectl("create", "-f", "-", input=json.dumps(group))
        while cluster.kubectl("get", "secret", "bench-ca", "-n", NAMESPACE, check=False).returncode != 0:
            time.sleep(0.5)
        requests_before = _handler_requests(metrics_port)
        all_before = _apiserver_requests(cluster)
        cpu_before = _cpu_seconds(process.pid)
        start = time.perf_counter()
        created = _create_agents(cluster, NAMESPACE, agents)
        ready = 0
        while ready < agents:
            time.sleep(2)
            ready = _ready_count(cluster)
        elapsed = time.perf_counter() - start
        cpu = _cpu_seconds(process.pid) - cpu_before
        requests = _handler_requests(metrics_port) - requests_before
        all_requests = _apiserver_requests(cluster) - all_before
        # What the operator keeps for N Agents once the burst is over (the peak holds the burst's garbage too).
        time.sleep(SETTLE_SECONDS)
        settled = psutil.Process(process.pid).memory_info().rss
        stop.set()
        print(f"baseline: {agents} Agents created with no operator in {baseline:.1f} s ({agents / baseline:.1f}/s)")
        print(f"agents: {agents} created in {created:.1f} s; all Ready with certificates in {elapsed:.1f} s "
              f"({agents / elapsed:.1f} agents/s; {elapsed / baseline:.2f} x the baseline's creation time)")
        print(f"operator RSS: peak {peak[0] / 2**20:.0f} MiB, {SETTLE_SECONDS} s after the last Ready "
              f"{settled / 2**20:.0f} MiB")
        print(f"operator CPU: {cpu:.0f} s, {cpu / elapsed:.0%} of one core over the run "
              f"({cpu / agents * 1000:.1f} ms per Agent)")
        print(f"handler API requests: {requests:.0f} ({requests / elapsed:.1f}/s, {requests / agents:.2f} per agent)")
        print(f"API server requests, all clients: {all_requests:.0f} ({all_requests / elapsed:.1f}/s, "
              f"{all_requests / agents:.2f} per agent)")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
