"""N Agent CRs to Ready with certificates, through the shipped operator on a real API server.

Starts a local control plane, applies the CRDs and deploy/opsmgr.yaml's RBAC, runs `opsmgr operator` as its
ServiceAccount, creates one AutoApprove group and N Node agents, and waits until every agent is Ready (approved,
assigned, certificate Secret issued). Prints wall time, agents/s, the operator's peak RSS and the API requests
its handlers sent per second (kopf's own watch and progress-annotation requests are not in that count).
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


def _agents(start: int, stop: int) -> str:
    return yaml.safe_dump_all([{
        "apiVersion": "opsmgr.io/v1alpha1", "kind": "Agent",
        "metadata": {"name": f"agent-{i:05d}", "namespace": NAMESPACE},
        "spec": {"managementGroupRef": {"name": "bench"}, "fqdn": f"agent-{i:05d}.bench.test", "placement": "Node"},
    } for i in range(start, stop)])


def _ready_count(cluster: LocalCluster) -> int:
    out = cluster.kubectl("get", "agents", "-n", NAMESPACE, "-o",
                          'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
                          timeout=300).stdout
    return sum(1 for line in out.splitlines() if line == "True")


def _handler_requests(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(m) for m in re.findall(r"^opsmgr_operator_api_requests_total\{[^}]*\} (\S+)$", text, re.M))


def main(agents: int) -> None:
    directory = Path(tempfile.mkdtemp(prefix="opsmgr-bench-operator-"))
    cluster = LocalCluster(directory / "cluster")
    cluster.start()
    process: subprocess.Popen[bytes] | None = None
    try:
        cluster.kubectl("apply", "--server-side", "-f", "-", input=crd_stream(RESOURCES))
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        *[f"crd/{r.crd_name()}" for r in RESOURCES])
        rbac = [d for d in yaml.safe_load_all((REPO / "deploy" / "opsmgr.yaml").read_text())
                if d and d["kind"] != "Deployment"]
        cluster.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(rbac))
        cluster.kubectl("create", "namespace", NAMESPACE)
        metrics_port, liveness_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(_kubeconfig_for_operator(cluster, directory))}
        log = (directory / "operator.log").open("wb")
        process = subprocess.Popen([sys.executable, "-m", "opsmgr", "operator", "--metrics-port", str(metrics_port),
                                    "--liveness-port", str(liveness_port)], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
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
        start = time.perf_counter()
        for first in range(0, agents, BATCH):
            cluster.kubectl("create", "-f", "-", input=_agents(first, min(agents, first + BATCH)), timeout=600)
        created = time.perf_counter() - start
        ready = 0
        while ready < agents:
            time.sleep(2)
            ready = _ready_count(cluster)
        elapsed = time.perf_counter() - start
        requests = _handler_requests(metrics_port) - requests_before
        stop.set()
        print(f"agents: {agents} created in {created:.1f} s; all Ready with certificates in {elapsed:.1f} s "
              f"({agents / elapsed:.1f} agents/s)")
        print(f"operator peak RSS: {peak[0] / 2**20:.0f} MiB")
        print(f"handler API requests: {requests:.0f} ({requests / elapsed:.1f}/s, {requests / agents:.2f} per agent)")
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
