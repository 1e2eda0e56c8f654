"""The local runtime plays the kubelet on a real control plane: Pods run as processes, resolve, restart and stop."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.runtime import RuntimeSettings, RuntimeThread

# Each peer listens on its pod IP at 5723, then resolves its peer by DNS name, asks its name and prints the answer.
PEER_SCRIPT = """
import os, socket, threading, time
me, ns = os.environ["POD_NAME"], os.environ["POD_NAMESPACE"]
peer = "peer-1" if me == "peer-0" else "peer-0"
server = socket.create_server((os.environ["POD_IP"], 5723))
def serve():
    while True:
        connection, _ = server.accept()
        connection.sendall(me.encode())
        connection.close()
threading.Thread(target=serve, daemon=True).start()
name = f"{peer}.peers.{ns}.svc"
while True:
    try:
        address = socket.gethostbyname(name)
        with socket.create_connection((name, 5723), timeout=2) as connection:
            print(f"resolved {name} to {address}, it says {connection.recv(100).decode()}", flush=True)
        break
    except OSError:
        time.sleep(0.3)
time.sleep(100000)
"""

PEERS = """
apiVersion: v1
kind: Service
metadata: {name: peers}
spec:
  clusterIP: None
  selector: {app: peer}
  ports: [{name: peer, port: 5723}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: peer}
spec:
  serviceName: peers
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: peer}}
  template:
    metadata: {labels: {app: peer}}
    spec:
      terminationGracePeriodSeconds: 5
      initContainers:
        - name: version
          image: ghcr.io/opsmgr/opsmgr:dev
          command: [opsmgr, --version]
      containers:
        - name: peer
          image: ghcr.io/opsmgr/opsmgr:dev
          command: [python, -c, PEER_SCRIPT]
          env:
            - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
            - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
          ports: [{name: peer, containerPort: 5723}]
          readinessProbe: {tcpSocket: {port: peer}, periodSeconds: 1}
""".replace("PEER_SCRIPT", json.dumps(PEER_SCRIPT))


def eventually(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.3)
    raise AssertionError(f"within {timeout:.0f} s: {what}")


def pod(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any] | None:
    result = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def is_ready(obj: dict[str, Any] | None) -> bool:
    conditions = (obj or {}).get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def ready_pod(cluster: LocalCluster, namespace: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
    found: dict[str, Any] = eventually(lambda: (p := pod(cluster, namespace, name)) and is_ready(p) and p,
                                       f"pod {namespace}/{name} is Ready", timeout)
    return found


def pid_of(obj: dict[str, Any], container: str) -> int:
    status = next(s for s in obj["status"]["containerStatuses"] if s["name"] == container)
    return int(status["containerID"].removeprefix("opsmgr-dev://"))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def test_statefulset_peers_become_ready_resolve_each_other_restart_and_stop(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    begun = time.monotonic()
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=PEERS)
    first = {name: ready_pod(kube_cluster, namespace, name) for name in ("peer-0", "peer-1")}
    ready_after = time.monotonic() - begun
    addresses = {name: p["status"]["podIP"] for name, p in first.items()}
    assert len(set(addresses.values())) == 2 and all(a.startswith("127.0.") for a in addresses.values())
    assert "opsmgr" in local_runtime.logs(namespace, "peer-0", "version")  # the init container ran the venv's
    for me, peer in (("peer-0", "peer-1"), ("peer-1", "peer-0")):
        expected = f"resolved {peer}.peers.{namespace}.svc to {addresses[peer]}, it says {peer}"

        def reached(me: str = me, expected: str = expected) -> bool:
            return expected in local_runtime.logs(namespace, me, "peer")

        eventually(reached, f"{me} reached its peer by name ({expected!r})", 30)
    # The test process resolves the same names: the hosts block serves everyone on the machine.
    assert socket.gethostbyname(f"peer-0.peers.{namespace}.svc") == addresses["peer-0"]

    old_pid = pid_of(first["peer-0"], "peer")
    kube_cluster.kubectl("delete", "pod", "peer-0", "-n", namespace, "--wait=false")
    eventually(lambda: not alive(old_pid), "the deleted Pod's process stopped", 30)
    again = eventually(lambda: (p := pod(kube_cluster, namespace, "peer-0")) and is_ready(p)
                       and p["metadata"]["uid"] != first["peer-0"]["metadata"]["uid"] and p,
                       "the StatefulSet's new peer-0 is Ready", 60)
    new_pid = pid_of(again, "peer")
    assert new_pid != old_pid and alive(new_pid)

    pids = [new_pid, pid_of(first["peer-1"], "peer")]
    kube_cluster.kubectl("delete", "statefulset", "peer", "-n", namespace)
    eventually(lambda: not any(alive(p) for p in pids), "both peer processes stopped after the StatefulSet went", 60)
    eventually(lambda: pod(kube_cluster, namespace, "peer-1") is None, "the Pods were removed", 30)
    print(f"two StatefulSet Pods Ready {ready_after:.1f} s after apply")


SETTINGS_SCRIPT = """
import os, sys, time
path = sys.argv[1]
last = None
while True:
    seen = f"mode={os.environ['MODE']} password={open(path).read()}"
    if seen != last:
        print(seen, flush=True)
        last = seen
    time.sleep(0.2)
"""


def test_pod_sees_secret_volume_and_config_map_env_and_follows_secret_changes(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    manifest = {
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
             "stringData": {"password": "s3cret", "unused": "x"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "fast"}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader"}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "volumes": [{"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o400,
                                                         "items": [{"key": "password", "path": "pw.txt"}]}}],
                "containers": [{
                    "name": "reader", "image": "python:3.11",
                    "command": ["python", "-c", SETTINGS_SCRIPT, "/etc/creds/pw.txt"],
                    "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}],
                    "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}],
                }],
            }},
        ],
    }
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    eventually(lambda: "mode=fast password=s3cret" in local_runtime.logs(namespace, "reader", "reader"),
               "the Pod read the Secret file and the ConfigMap env var", 30)
    directory = local_runtime.pod_directory(namespace, "reader")
    assert directory is not None
    secret_file = directory / "containers" / "reader" / "root" / "etc" / "creds" / "pw.txt"
    assert secret_file.stat().st_mode & 0o777 == 0o400
    assert sorted(p.name for p in (directory / "volumes" / "creds").iterdir() if not p.name.startswith("..")) == [
        "pw.txt"]

    kube_cluster.kubectl("patch", "secret", "creds", "-n", namespace, "-p", '{"stringData": {"password": "n3w"}}')
    eventually(lambda: "mode=fast password=n3w" in local_runtime.logs(namespace, "reader", "reader"),
               "the running Pod saw the Secret's new value in its file", 30)


POSTGRES = """
apiVersion: v1
kind: Secret
metadata: {name: db-credentials}
stringData: {password: pg-s3cret}
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{name: postgres, port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 1
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
        - name: postgres
          image: docker.io/library/postgres:17
          env:
            - {name: POSTGRES_USER, value: opsmgr}
            - {name: POSTGRES_DB, value: operational}
            - {name: POSTGRES_PASSWORD, valueFrom: {secretKeyRef: {name: db-credentials, key: password}}}
            - {name: PGDATA, value: /var/lib/postgresql/data/pgdata}
          ports: [{name: postgres, containerPort: 5432}]
          readinessProbe:
            exec: {command: [pg_isready, -U, opsmgr, -h, localhost, -p, "5432"]}
            periodSeconds: 1
          volumeMounts: [{name: data, mountPath: /var/lib/postgresql/data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"""


async def test_postgres_statefulset_is_ready_and_accepts_asyncpg_at_its_service_name(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    begun = time.monotonic()
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=POSTGRES)
    running = ready_pod(kube_cluster, namespace, "db-0", timeout=120)
    ready_after = time.monotonic() - begun
    service = f"db.{namespace}.svc"
    eventually(lambda: _resolves(service), f"{service} resolves", 30)
    connection = await asyncpg.connect(host=service, port=5432, user="opsmgr", password="pg-s3cret",
                                       database="operational", timeout=10)
    try:
        assert await connection.fetchval("SELECT current_database()") == "operational"
    finally:
        await connection.close()
    assert socket.gethostbyname(service) == running["status"]["podIP"]
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host=service, port=5432, user="opsmgr", password="wrong", database="operational",
                              timeout=10)
    pid = pid_of(running, "postgres")
    kube_cluster.kubectl("delete", "statefulset", "db", "-n", namespace)
    eventually(lambda: not alive(pid), "PostgreSQL stopped with its StatefulSet", 60)
    print(f"PostgreSQL StatefulSet Ready {ready_after:.1f} s after apply")


def _resolves(name: str) -> bool:
    try:
        socket.gethostbyname(name)
    except OSError:
        return False
    return True


def test_init_container_sidecar_and_app_run_in_order_and_the_pod_succeeds(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ordered"}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 2,
        "volumes": [{"name": "work", "emptyDir": {}}],
        "initContainers": [
            {"name": "prepare", "image": "busybox", "command": ["sh", "-c", "echo prepared > /work/order"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            {"name": "sidecar", "image": "busybox", "restartPolicy": "Always",
             "command": ["sh", "-c", "echo sidecar >> /work/order; exec sleep 100000"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        ],
        "containers": [
            {"name": "app", "image": "busybox",
             "command": ["sh", "-c", "sleep 0.5; echo app >> /work/order; cat /work/order"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        ],
    }}
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    done = eventually(lambda: (p := pod(kube_cluster, namespace, "ordered"))
                      and p.get("status", {}).get("phase") == "Succeeded" and p, "the Pod Succeeded", 60)
    assert local_runtime.logs(namespace, "ordered", "app").split() == ["prepared", "sidecar", "app"]
    sidecar = next(s for s in done["status"]["initContainerStatuses"] if s["name"] == "sidecar")
    assert "terminated" in sidecar["state"], "the sidecar is stopped once the app container finished"


def test_failing_container_restarts_with_backoff_and_reports_exit_codes(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"}, "spec": {
        "restartPolicy": "OnFailure",
        "containers": [{"name": "crash", "image": "busybox", "command": ["sh", "-c", "exit 3"]}],
    }}
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def restarted_twice() -> dict[str, Any] | None:
        found = pod(kube_cluster, namespace, "crasher")
        statuses = (found or {}).get("status", {}).get("containerStatuses") or []
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 2 else None

    status = eventually(restarted_twice, "the failing container was restarted twice", 30)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"


def test_stopping_the_runtime_stops_its_processes_and_removes_its_host_entries(
        kube_cluster: LocalCluster, namespace: str) -> None:
    hosts = Path(tempfile.mkdtemp(prefix="opsmgr-hosts-")) / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    root = Path(tempfile.mkdtemp(prefix="opsmgr-runtime-"))
    runtime = RuntimeThread(RuntimeSettings(kubeconfig=kube_cluster.kubeconfig, root=root, namespaces={namespace},
                                            hosts_file=hosts, node_name="local-shutdown-test")).start()
    try:
        manifest = {"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sleeper"},
             "spec": {"selector": {"app": "sleeper"}, "ports": [{"port": 80}]}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper", "labels": {"app": "sleeper"}},
             "spec": {"containers": [{"name": "sleep", "image": "busybox",
                                      "command": ["sh", "-c", "sleep 100000 & exec sleep 100000"]}]}},
        ]}
        kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
        running = ready_pod(kube_cluster, namespace, "sleeper")
        leader = pid_of(running, "sleep")
        eventually(lambda: f"sleeper.{namespace}.svc" in hosts.read_text(), "the Service got a host entry", 30)
    finally:
        runtime.stop()
        kube_cluster.kubectl("delete", "node", "local-shutdown-test", "--ignore-not-found")
        shutil.rmtree(root, ignore_errors=True)
    assert not alive(leader)
    assert not any(alive(int(p)) for p in os.listdir("/proc") if p.isdigit() and _in_group(int(p), leader))
    assert hosts.read_text() == "127.0.0.1 localhost\n"


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except ProcessLookupError:
        return False


def test_wildcard_bind_becomes_the_pod_ip_http_probe_makes_it_ready_and_pre_stop_runs(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    marker = Path(tempfile.mkdtemp(prefix="opsmgr-prestop-"))
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"}, "spec": {
        "terminationGracePeriodSeconds": 5,
        "volumes": [{"name": "marker", "hostPath": {"path": str(marker)}}],
        "containers": [{
            "name": "web", "image": "python:3.11", "command": ["python", "-m", "http.server", "8080"],
            "args": ["--bind", "0.0.0.0"],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo stopping > /marker/pre-stop"]}}},
            "volumeMounts": [{"name": "marker", "mountPath": "/marker"}],
        }],
    }}
    try:
        kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
        address = ready_pod(kube_cluster, namespace, "web")["status"]["podIP"]
        with socket.create_connection((address, 8080), timeout=5):
            pass  # the server bound the pod IP, not every address
        kube_cluster.kubectl("delete", "pod", "web", "-n", namespace, "--timeout=30s")
        assert (marker / "pre-stop").read_text() == "stopping\n"
    finally:
        shutil.rmtree(marker, ignore_errors=True)


def test_a_killed_runtime_leaves_no_process_behind(kube_cluster: LocalCluster, namespace: str) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="opsmgr-runtime-cli-"))
    (scratch / "hosts").write_text("")
    node = "local-kill-test"
    command = [str(Path(os.environ.get("VIRTUAL_ENV", Path(sys.executable).parent.parent)) / "bin" / "opsmgr"),
               "dev", "runtime", "--kubeconfig", str(kube_cluster.kubeconfig), "--namespace", namespace,
               "--root", str(scratch / "root"), "--hosts-file", str(scratch / "hosts"), "--node-name", node]
    runtime = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert runtime.stdout is not None
        assert "local runtime serving" in runtime.stdout.readline()
        manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "forker"}, "spec": {"containers": [{
            "name": "forker", "image": "busybox",
            "command": ["sh", "-c", "sleep 100000 & echo child $!; exec sleep 100001"]}]}}
        kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
        leader = pid_of(ready_pod(kube_cluster, namespace, "forker"), "forker")
        logs = next((scratch / "root" / "pods").glob(f"{namespace}_forker_*")) / "logs" / "forker" / "0.log"
        child = int(eventually(lambda: logs.exists() and logs.read_text().split()[-1], "the child's pid", 10))
        assert alive(leader) and alive(child)
        runtime.kill()
        runtime.wait()
        eventually(lambda: not alive(leader) and not alive(child),
                   "the container's main process and its child died with the runtime", 15)
    finally:
        if runtime.poll() is None:
            runtime.kill()
        kube_cluster.kubectl("delete", "pod", "forker", "-n", namespace, "--grace-period=0", "--force",
                             "--ignore-not-found", check=False)
        kube_cluster.kubectl("delete", "node", node, "--ignore-not-found")
        shutil.rmtree(scratch, ignore_errors=True)


def test_failing_liveness_probe_restarts_the_container(kube_cluster: LocalCluster, namespace: str,
                                                       local_runtime: RuntimeThread) -> None:
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unhealthy"}, "spec": {
        "terminationGracePeriodSeconds": 3,
        "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "100000"],
                        "livenessProbe": {"tcpSocket": {"port": 9}, "periodSeconds": 1, "failureThreshold": 2}}],
    }}
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def restarted() -> dict[str, Any] | None:
        statuses = ((pod(kube_cluster, namespace, "unhealthy") or {}).get("status") or {}).get(
            "containerStatuses") or []
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 1 else None

    status = eventually(restarted, "the container failing its liveness probe was restarted", 30)
    assert status["lastState"]["terminated"]["exitCode"] == 143  # stopped with SIGTERM


def test_daemon_set_runs_one_pod_on_the_local_node(kube_cluster: LocalCluster, namespace: str,
                                                   local_runtime: RuntimeThread) -> None:
    manifest = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{"name": "agent", "image": "ghcr.io/opsmgr/opsmgr-agent:dev",
                            "command": ["sleep", "100000"]}]}},
    }}
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def running_on_local() -> bool:
        listing = json.loads(kube_cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
        return any(p["spec"].get("nodeName") == "local" and is_ready(p) for p in listing["items"])

    eventually(running_on_local, "the DaemonSet's Pod for Node local is Ready", 60)


WHOAMI_SCRIPT = """
import asyncio
from kubernetes_asyncio import client, config

async def main():
    try:
        config.load_incluster_config()  # the token is not at the in-cluster path on this machine
    except config.ConfigException:
        await config.load_kube_config()  # so this reads $KUBECONFIG, as the operator does
    async with client.ApiClient() as api:
        review = await client.AuthenticationV1Api(api).create_self_subject_review(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        print("I am", review.status.user_info.username, flush=True)

asyncio.run(main())
"""


def test_pod_reaches_the_api_server_with_its_projected_service_account_token(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "whoami"}, "spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "whoami", "image": "ghcr.io/opsmgr/opsmgr:dev",
                        "command": ["python", "-c", WHOAMI_SCRIPT]}],
    }}
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    eventually(lambda: (p := pod(kube_cluster, namespace, "whoami")) and p["status"].get("phase") == "Succeeded",
               f"the Pod finished: {local_runtime.logs(namespace, 'whoami', 'whoami')}", 60)
    assert f"I am system:serviceaccount:{namespace}:default" in local_runtime.logs(namespace, "whoami", "whoami")


def test_config_map_larger_than_a_watch_line_buffer_still_updates_its_volume(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    def config_map(fill: str) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "directory"},
                           "data": {"agents.txt": fill * 300_000}})

    # create and replace: apply's last-applied annotation would not hold 300 kB
    kube_cluster.kubectl("create", "-n", namespace, "-f", "-", input=config_map("a"))
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "big"}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "volumes": [{"name": "directory", "configMap": {"name": "directory"}}],
        "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "100000"],
                        "volumeMounts": [{"name": "directory", "mountPath": "/etc/directory"}]}]}}
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    ready_pod(kube_cluster, namespace, "big")

    def content() -> str:
        directory = local_runtime.pod_directory(namespace, "big")
        path = directory / "volumes" / "directory" / "agents.txt" if directory else None
        return path.read_text()[:1] if path and path.exists() else ""

    assert content() == "a"
    kube_cluster.kubectl("replace", "-n", namespace, "-f", "-", input=config_map("b"))
    eventually(lambda: content() == "b", "the 300 kB ConfigMap's change reached the volume", 30)


def test_job_pod_runs_to_completion_and_the_job_completes(kube_cluster: LocalCluster, namespace: str,
                                                          local_runtime: RuntimeThread) -> None:
    manifest = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"}, "spec": {
        "backoffLimit": 2,
        "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "migrate", "image": "ghcr.io/opsmgr/opsmgr:dev", "args": ["--version"]}]}}}}
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    kube_cluster.kubectl("wait", "job/migrate", "-n", namespace, "--for=condition=Complete", "--timeout=60s")


CONFIGURED_SERVER = """
import os, socket
address = open("/etc/server/address").read().strip()
server = socket.create_server((address, 15723))
while True:
    connection, _ = server.accept()
    connection.sendall(os.environ["POD_NAME"].encode())
    connection.close()
"""


def test_two_servers_binding_the_wildcard_from_a_config_file_each_get_their_pod_ip(
        kube_cluster: LocalCluster, namespace: str, local_runtime: RuntimeThread) -> None:
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "server"}, "data": {"address": "0.0.0.0"}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "ms"}, "spec": {
            "serviceName": "ms", "replicas": 2, "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "ms"}},
            "template": {"metadata": {"labels": {"app": "ms"}}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "volumes": [{"name": "config", "configMap": {"name": "server"}}],
                "containers": [{
                    "name": "server", "image": "ghcr.io/opsmgr/opsmgr:dev",
                    "command": ["python", "-c", CONFIGURED_SERVER],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/server"}],
                    "readinessProbe": {"tcpSocket": {"port": 15723}, "periodSeconds": 1}}]}}}},
    ]}
    kube_cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))
    # Not 5723: a server another test runs outside the runtime on 0.0.0.0:5723 would answer for every address.
    for name in ("ms-0", "ms-1"):
        address = ready_pod(kube_cluster, namespace, name)["status"]["podIP"]
        with socket.create_connection((address, 15723), timeout=5) as connection:
            assert connection.recv(100).decode() == name
