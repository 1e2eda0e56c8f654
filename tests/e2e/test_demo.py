"""`make demo` from a person's point of view: it comes up with agents Healthy in Pods the operator rendered, says how
to reach everything, and Ctrl-C leaves nothing behind: no process, no directory, no host entries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from opsmgr.dev.local_operator import LOCAL_AGENT_IMAGE
from opsmgr.operator.render_agents import AGENT_ANNOTATION, NODE_LABEL, SIDECAR

NAMESPACE = "opsmgr-demo"
READY_TIMEOUT = 240.0  # from a cold start on 2 cores, the control plane included
HEARTBEAT_INTERVAL = 10  # examples/demo/management-group.yaml


class Output:
    """The demo's stdout, read line by line in a thread so the test can wait for a line with a deadline."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return "\n".join(self.lines)
        raise AssertionError(f"{text!r} not printed within {timeout:.0f} s:\n" + "\n".join(self.lines))

    def rest(self, timeout: float) -> str:
        self._thread.join(timeout)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines)


def leftovers(root: str) -> list[str]:
    """Processes that still name the demo's directory in their command line, environment or working directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            facts = [(entry / "cmdline").read_bytes(), (entry / "environ").read_bytes(),
                     os.readlink(entry / "cwd").encode()]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if any(root.encode() in fact for fact in facts):
            command = facts[0].replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{entry.name}: {command[:200]}")
    return found


def kubectl(kubectl_bin: str, kubeconfig: str, *args: str) -> Any:
    out = subprocess.run([kubectl_bin, "--kubeconfig", kubeconfig, "-n", NAMESPACE, *args, "-o", "json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out)


async def connected_agents(dsn: str) -> set[str]:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return {r["agent"] for r in await connection.fetch("SELECT agent FROM agent_presence WHERE connected")}
    finally:
        await connection.close()


def running(pod: dict[str, Any], container: str) -> bool:
    status = pod.get("status") or {}
    statuses = [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]
    return any(s["name"] == container and "running" in (s.get("state") or {}) for s in statuses)


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_demo_brings_up_three_healthy_agents_in_operator_rendered_pods_and_ctrl_c_leaves_nothing() -> None:
    started = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # `python -m opsmgr` runs the code under test, as the console script would once installed.
    process = subprocess.Popen([sys.executable, "-m", "opsmgr", "dev", "demo"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    output = Output(process)
    try:
        printed = output.until("Ctrl-C stops everything.", READY_TIMEOUT)
    except AssertionError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        raise
    ready_after = time.monotonic() - started
    try:
        exports = re.search(r"export KUBECONFIG=(/\S+?/kubernetes/kubeconfig) PATH=(/\S+):\$PATH", printed)
        assert exports is not None, printed
        kubeconfig, bin_dir = exports.groups()
        root = kubeconfig.removesuffix("/kubernetes/kubeconfig")
        assert f"kubectl get agents -n {NAMESPACE}" in printed
        operational = re.search(r"OperationalDB:\s+psql (postgresql://\S+/operational)$", printed, re.MULTILINE)
        assert operational is not None, printed
        assert re.search(r"DataWarehouse:\s+psql postgresql://\S+/warehouse$", printed, re.MULTILINE), printed

        # What a person sees with the printed KUBECONFIG, as JSON.
        kubectl_bin = f"{bin_dir}/kubectl"
        agents = kubectl(kubectl_bin, kubeconfig, "get", "agents")["items"]
        pods = {p["metadata"]["name"]: p for p in kubectl(kubectl_bin, kubeconfig, "get", "pods")["items"]}
        now = datetime.now().astimezone()
        healthy = [a for a in agents if a["status"].get("health") == "Healthy" and a["status"].get("heartbeat") == "OK"
                   and (now - datetime.fromisoformat(a["status"]["lastHeartbeatTime"].replace("Z", "+00:00")))
                   .total_seconds() < 2 * HEARTBEAT_INTERVAL]
        assert len(healthy) >= 3, json.dumps([{"name": a["metadata"]["name"], **a["status"]} for a in agents],
                                             indent=1)
        placements = sorted(a["spec"]["placement"] for a in healthy)
        assert placements.count("Sidecar") >= 2 and "Node" in placements, placements

        # Each runs in a Pod the operator rendered, bound to the local runtime's node and started by it.
        for agent in healthy:
            name = agent["metadata"]["name"]
            if agent["spec"]["placement"] == "Sidecar":
                (owner,) = [o for o in agent["metadata"]["ownerReferences"] if o["kind"] == "Pod"]
                pod = pods[owner["name"]]
                assert pod["metadata"]["annotations"][AGENT_ANNOTATION] == name
                sidecar = pod["spec"]["initContainers"][0]  # patched in by the operator's webhook
                assert sidecar["name"] == SIDECAR and sidecar["image"] == LOCAL_AGENT_IMAGE
                assert sidecar["restartPolicy"] == "Always"
                container = SIDECAR
            else:
                node = agent["metadata"]["labels"][NODE_LABEL]
                (pod,) = [p for p in pods.values() if p["spec"].get("nodeName") == node and any(
                    o["kind"] == "DaemonSet" for o in p["metadata"].get("ownerReferences") or [])]
                daemonset = kubectl(kubectl_bin, kubeconfig, "get", "daemonset",
                                    pod["metadata"]["ownerReferences"][0]["name"])
                (group_owner,) = daemonset["metadata"]["ownerReferences"]
                assert group_owner["kind"] == "ManagementGroup" and group_owner["controller"]
                assert daemonset["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "opsmgr-operator"
                container = pod["spec"]["containers"][0]["name"]
            assert pod["spec"]["nodeName"] == "local" and pod["status"]["phase"] == "Running", pod["status"]
            assert running(pod, container), pod["status"]
            logs = sorted(Path(root, "runtime", "pods").glob(f"{NAMESPACE}_{pod['metadata']['name']}_*/logs/"
                                                            f"{container}/*.log"))
            assert logs, f"the local runtime ran no {container} process for Pod {pod['metadata']['name']}"

        # The printed database line reaches the group's embedded PostgreSQL, where the agents are present.
        present = asyncio.run(connected_agents(operational.group(1)))
        assert {a["spec"]["fqdn"] for a in healthy} <= present, present
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)  # Ctrl-C at a terminal reaches the whole foreground group
        code = process.wait(timeout=120)
    rest = output.rest(timeout=10)
    assert code == 0, rest
    assert "stopped; nothing is left running" in rest
    assert not Path(root).exists(), "the demo left its directory behind"
    assert leftovers(root) == []
    hosts = Path("/etc/hosts").read_text()
    assert "opsmgr-demo.svc" not in hosts, "the runtime left its host entries behind"
    print(f"demo ready after {ready_after:.0f} s, stopped after {time.monotonic() - started:.0f} s")
