"""The local runtime: plays the kubelet (and the scheduler) for Pods of selected namespaces, as local processes.

No container engine runs on the development machines, so this registers a Node `local`, binds Pending Pods to it
and runs each container as a process with the env, files and address the Pod spec gives it. The decisions live in
pure modules (`runtime_plan`: command, env, paths, files; `runtime_lifecycle`: order, restarts, status, binding;
`runtime_names`: addresses and host entries). The I/O is thin: `runtime_kube` (watches and plain-dict calls),
`runtime_pod` (one Pod's processes, probes and status), `runtime_files` (volumes, hosts block) and this module
(the Node, binding, names, start and stop). Use `opsmgr dev runtime` or the `local_runtime` pytest fixture.

Processes never outlive the runtime: each container is a process-group leader started through `setpriv
--pdeathsig KILL` (the kernel kills it when the runtime's thread dies), its group is SIGKILLed when the leader
exits (as a container's PID namespace would be), shutdown stops every group, and a reaper process
(`runtime_reaper`) SIGKILLs the groups of a runtime that died without shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import shutil
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes_asyncio import client as kube
from kubernetes_asyncio.config import new_client_from_config

from opsmgr.dev.postgres import PostgresUnavailable, find_bin_dir
from opsmgr.dev.runtime_bindshim import build_bind_shim
from opsmgr.dev.runtime_files import AddressBlockClaim, HostsFile
from opsmgr.dev.runtime_kube import ApiError, Informer, api_time, json_body, object_key
from opsmgr.dev.runtime_lifecycle import (
    Phase,
    RestartBackoff,
    fits_node,
)
from opsmgr.dev.runtime_names import PodAddressPool, host_entries
from opsmgr.dev.runtime_plan import (
    decode_config_map,
    decode_secret,
    referenced_names,
)
from opsmgr.dev.runtime_pod import HOST_IP, PodWorker

log = logging.getLogger("opsmgr.dev.runtime")

NODE_NAME = "local"
LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_SECONDS = 10.0
CONDITION_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


@dataclass
class RuntimeSettings:
    kubeconfig: Path
    root: Path
    namespaces: set[str] | None = None  # None: every namespace
    hosts_file: Path = Path("/etc/hosts")
    node_name: str = NODE_NAME
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    shutdown_grace: float = 10.0  # grace a container gets when the runtime itself stops


class LocalRuntime:
    """The Node `local`: binds, runs and reports the Pods of the served namespaces."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.namespaces = None if settings.namespaces is None else set(settings.namespaces)
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()
        self.binding: set[str] = set()
        self.stopping = False
        self.serving = False  # start-up succeeded
        self.claim = AddressBlockClaim()
        self.addresses: PodAddressPool | None = None
        self.hosts: HostsFile | None = None
        self.venv_bin = str(Path(sys.prefix) / "bin")
        self.api_address = ("127.0.0.1", 443)
        self.pdeathsig_prefix: list[str] = []
        self.bind_shim: Path | None = None
        self._api: kube.ApiClient | None = None
        self._reaper: asyncio.subprocess.Process | None = None
        self._node_ready: tuple[bool, str] | None = None  # Ready status and since when
        self._tasks: list[asyncio.Task[None]] = []
        self._hosts_dirty = asyncio.Event()
        self._stop_requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.pods = Informer("pods", self._list("list_pod_for_all_namespaces"), self._pod_event)
        self.secrets = Informer("secrets", self._list("list_secret_for_all_namespaces"),
                                lambda kind, obj: self._source_event(obj, secret=True))
        self.config_maps = Informer("configmaps", self._list("list_config_map_for_all_namespaces"),
                                    lambda kind, obj: self._source_event(obj, secret=False))
        self.services = Informer("services", self._list("list_service_for_all_namespaces"), self._names_event)

    def _list(self, method: str) -> Callable[..., Awaitable[Any]]:
        def call(**kwargs: Any) -> Awaitable[Any]:
            result: Awaitable[Any] = getattr(self.core, method)(**kwargs)
            return result
        return call

    @property
    def core(self) -> Any:
        # Any: the runtime sends and reads plain camelCase dicts; the typed signatures name model classes.
        assert self._api is not None
        return kube.CoreV1Api(self._api)

    # --- lifetime ---

    async def run(self) -> None:
        """Serve until `request_stop`; then stop every process, remove the host entries and mark the Node down."""
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            try:
                await self._start()
                self.serving = True
            finally:
                self.ready.set()  # start-up is over, successful or not: whoever waits for it looks at the outcome
            await self._stop_requested.wait()
        finally:
            await self._shutdown()

    def request_stop(self) -> None:
        """Thread-safe."""
        if self._loop is not None and self._stop_requested is not None:
            self._loop.call_soon_threadsafe(self._stop_requested.set)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def serve_namespace(self, namespace: str) -> None:
        """Start running Pods of `namespace` too (call on the runtime's loop)."""
        if self.namespaces is None or namespace in self.namespaces:
            return
        self.namespaces.add(namespace)
        for (pod_namespace, _), pod in list(self.pods.cache.items()):
            if pod_namespace == namespace:
                self._pod_event("ADDED", pod)
        self._hosts_dirty.set()

    async def _start(self) -> None:
        self.settings.root.mkdir(parents=True, exist_ok=True)
        self.settings.root.chmod(0o755)
        self.pdeathsig_prefix = _pdeathsig_prefix()
        self.bind_shim = await build_bind_shim(self.settings.root / "lib")
        # Its own session: a Ctrl-C at the terminal reaches the runtime, which stops Pods; the reaper stays.
        self._reaper = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "opsmgr.dev.runtime_reaper", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        self._api = await new_client_from_config(config_file=str(self.settings.kubeconfig))
        server = urlsplit(self._api.configuration.host)
        self.api_address = (str(server.hostname or "127.0.0.1"), server.port or 443)
        block = self.claim.acquire()
        self.addresses = PodAddressPool(block)
        self.hosts = HostsFile(self.settings.hosts_file, self.claim)
        try:
            await self._register_node()
        except OSError as exc:
            raise RuntimeError(f"cannot reach the API server {self._api.configuration.host} named in "
                               f"{self.settings.kubeconfig} ({exc}); is the cluster up? (`opsmgr dev cluster up`, "
                               "then `opsmgr dev cluster env` names its kubeconfig)") from exc
        for informer in (self.secrets, self.config_maps, self.services):
            self._tasks.append(asyncio.create_task(informer.run()))
        for informer in (self.secrets, self.config_maps, self.services):
            await informer.synced.wait()
        self._tasks.append(asyncio.create_task(self.pods.run()))
        await self.pods.synced.wait()
        self._tasks.append(asyncio.create_task(self._heartbeat()))
        self._tasks.append(asyncio.create_task(self._maintain_hosts()))
        self._hosts_dirty.set()
        log.info("local runtime up: node %s, pod addresses %s, pods in %s", self.settings.node_name,
                 self.claim.network, "every namespace" if self.namespaces is None else sorted(self.namespaces))

    async def _shutdown(self) -> None:
        self.stopping = True
        for worker in list(self.workers.values()):
            worker.wake.set()
        if self.workers:
            done = asyncio.gather(*(w.task for w in self.workers.values() if w.task is not None),
                                  return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.shutdown_grace + 5):
                    await done
        for worker in list(self.workers.values()):
            worker.kill_now()
        if self._reaper is not None and self._reaper.stdin is not None:
            self._reaper.stdin.close()  # end of input: the reaper kills whatever is still listed, then exits
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._reaper.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.hosts is not None:
            with contextlib.suppress(OSError):
                self.hosts.remove()
        if self._api is not None:
            with contextlib.suppress(Exception):
                await self._node_status(ready=False)
            await self._api.close()
        self.claim.release()

    def track_group(self, pgid: int, *, running: bool) -> None:
        """Tell the reaper about a container's process group, so a runtime that dies still leaves nothing."""
        if self._reaper is not None and self._reaper.stdin is not None and not self._reaper.stdin.is_closing():
            self._reaper.stdin.write(f"{'+' if running else '-'}{pgid}\n".encode())

    # --- node ---

    @property
    def node_labels(self) -> dict[str, str]:
        return {"kubernetes.io/hostname": self.settings.node_name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "opsmgr.io/local-runtime": "true"}

    async def _register_node(self) -> None:
        name = self.settings.node_name
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": self.node_labels}}
        try:
            created = await json_body(self.core.create_node(node, _preload_content=False))
        except ApiError as exc:
            if exc.status != 409:
                raise
            created = await json_body(self.core.read_node(name, _preload_content=False))
        await self._node_status(ready=True)
        # Admission taints a new Node not-ready; the node lifecycle controller that would lift it does not run here.
        taints = (created.get("spec") or {}).get("taints") or []
        kept = [t for t in taints if t.get("key") not in CONDITION_TAINTS]
        if kept != taints:
            await json_body(self.core.patch_node(name, {"spec": {"taints": kept or None}}, _preload_content=False,
                                             _content_type="application/merge-patch+json"))

    async def _node_status(self, *, ready: bool) -> None:
        now = api_time()
        cpus = str(os.cpu_count() or 1)
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 1024}Ki"
        capacity = {"cpu": cpus, "memory": memory, "pods": "253", "ephemeral-storage": "100Gi"}
        since = self._node_ready[1] if self._node_ready else now
        conditions = [
            {"type": kind, "status": "False", "reason": f"KubeletHasNo{kind}", "lastHeartbeatTime": now,
             "lastTransitionTime": since} for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
        ]
        if self._node_ready is None or self._node_ready[0] != ready:
            self._node_ready = (ready, now)
        conditions.append({"type": "Ready", "status": "True" if ready else "False",
                           "reason": "KubeletReady" if ready else "KubeletStopped",
                           "message": "opsmgr dev runtime is serving" if ready else "opsmgr dev runtime stopped",
                           "lastHeartbeatTime": now, "lastTransitionTime": self._node_ready[1]})
        status = {"status": {
            "capacity": capacity, "allocatable": capacity, "conditions": conditions,
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": "local"}],
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": os.uname().release,
                         "osImage": "opsmgr dev runtime", "containerRuntimeVersion": "opsmgr-dev://1",
                         "kubeletVersion": "v1.36.3", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64"},
        }}
        await json_body(self.core.patch_node_status(self.settings.node_name, status, _preload_content=False,
                                                _content_type="application/merge-patch+json"))

    async def _heartbeat(self) -> None:
        coordination: Any = kube.CoordinationV1Api(self._api)  # plain dict bodies, as for `core`
        name = self.settings.node_name
        while True:
            try:
                lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": name, "namespace": LEASE_NAMESPACE},
                         "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                                  "renewTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
                try:
                    await json_body(coordination.patch_namespaced_lease(
                        name, LEASE_NAMESPACE, lease, _preload_content=False,
                        _content_type="application/merge-patch+json"))
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    await json_body(coordination.create_namespaced_lease(LEASE_NAMESPACE, lease,
                                                                     _preload_content=False))
                await self._node_status(ready=True)
            except (ApiError, OSError) as exc:
                log.warning("node heartbeat failed: %s", exc)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    # --- pods ---

    def served(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def _pod_event(self, kind: str, pod: dict[str, Any]) -> None:
        metadata, spec = pod["metadata"], pod.get("spec", {})
        if not self.served(metadata["namespace"]) or self.stopping:
            return
        self._hosts_dirty.set()  # readiness and addresses decide what Service names resolve to
        uid = metadata["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.vanished = True
                worker.wake.set()
        elif not spec.get("nodeName"):
            if (not metadata.get("deletionTimestamp") and uid not in self.binding
                    and fits_node(pod, self.settings.node_name, self.node_labels)):
                self.binding.add(uid)
                self._spawn(self._bind(metadata["namespace"], metadata["name"], uid))
        elif spec["nodeName"] == self.settings.node_name and uid not in self.finished:
            if worker is not None:
                worker.update(pod)
            else:
                self._run_pod(pod)

    def _run_pod(self, pod: dict[str, Any]) -> None:
        metadata = pod["metadata"]
        if (pod.get("status") or {}).get("phase") in (Phase.SUCCEEDED, Phase.FAILED):
            # A terminal Pod is never run again; a deleted one only needs removing.
            if metadata.get("deletionTimestamp"):
                self.finished.add(metadata["uid"])
                self._spawn(self.remove_pod(metadata["namespace"], metadata["name"], metadata["uid"]))
            return
        try:
            worker = PodWorker(self, pod)
        except RuntimeError as exc:
            log.error("pod %s/%s cannot run: %s", metadata["namespace"], metadata["name"], exc)
            return
        self.workers[worker.uid] = worker
        worker.task = asyncio.create_task(worker.run())

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _bind(self, namespace: str, name: str, uid: str) -> None:
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "uid": uid},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.settings.node_name}}
        try:
            await json_body(self.core.create_namespaced_binding(namespace, binding, _preload_content=False))
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("binding pod %s/%s failed: %s", namespace, name, exc)
        finally:
            self.binding.discard(uid)

    def address_of(self, pod: dict[str, Any]) -> str:
        assert self.addresses is not None
        uid = pod["metadata"]["uid"]
        if pod.get("spec", {}).get("hostNetwork"):
            return HOST_IP
        reported = (pod.get("status") or {}).get("podIP")
        if reported and self.addresses.adopt(uid, reported):
            return str(reported)
        return self.addresses.address_of(uid)

    def worker_done(self, worker: PodWorker) -> None:
        self.workers.pop(worker.uid, None)
        self.finished.add(worker.uid)
        if self.addresses is not None:
            self.addresses.release(worker.uid)
        if not self.stopping:
            shutil.rmtree(worker.directory, ignore_errors=True)

    async def remove_pod(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's last word on a deleted Pod: its processes are gone, the object may go now."""
        options = {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
        try:
            await json_body(self.core.delete_namespaced_pod(name, namespace, body=options, _preload_content=False))
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("removing pod %s/%s failed: %s", namespace, name, exc)

    async def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await json_body(self.core.patch_namespaced_pod_status(name, namespace, {"status": status},
                                                          _preload_content=False,
                                                          _content_type="application/merge-patch+json"))

    async def request_token(self, pod: dict[str, Any], audiences: list[str], seconds: int) -> str:
        metadata = pod["metadata"]
        spec: dict[str, Any] = {"expirationSeconds": seconds,
                                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"],
                                                   "uid": metadata["uid"]}}
        if audiences:
            spec["audiences"] = audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        account = pod["spec"].get("serviceAccountName") or "default"
        reply = await json_body(self.core.create_namespaced_service_account_token(
            account, metadata["namespace"], body, _preload_content=False))
        return str(reply["status"]["token"])

    # --- secrets and config maps ---

    def sources(self, namespace: str, pod: dict[str, Any]) -> tuple[dict[str, dict[str, bytes]],
                                                                     dict[str, dict[str, bytes]]]:
        """The Secrets and ConfigMaps a Pod refers to, decoded, from the watch caches."""
        secret_names, config_map_names = referenced_names(pod)
        secrets = {name: decode_secret(self.secrets.cache[(namespace, name)]) for name in secret_names
                   if (namespace, name) in self.secrets.cache}
        config_maps = {name: decode_config_map(self.config_maps.cache[(namespace, name)])
                       for name in config_map_names if (namespace, name) in self.config_maps.cache}
        return secrets, config_maps

    def _source_event(self, obj: dict[str, Any], *, secret: bool) -> None:
        namespace, name = object_key(obj)
        for worker in self.workers.values():
            if worker.namespace != namespace:
                continue
            secrets, config_maps = referenced_names(worker.pod)
            if name in (secrets if secret else config_maps):
                worker.volumes_changed()

    # --- names ---

    def _names_event(self, kind: str, obj: dict[str, Any]) -> None:
        if self.served(obj["metadata"].get("namespace", "")):
            self._hosts_dirty.set()

    async def _maintain_hosts(self) -> None:
        assert self.hosts is not None
        while True:
            await self._hosts_dirty.wait()
            await asyncio.sleep(0.05)  # one write for a burst of endpoint changes
            self._hosts_dirty.clear()
            lines = host_entries(self.services.cache.values(), self.pods.cache.values(), self.namespaces,
                                 api_server=self.api_address[0])
            try:
                self.hosts.write(lines)
            except OSError as exc:
                log.error("cannot write host entries to %s: %s (run as root, or pass --hosts-file)",
                          self.settings.hosts_file, exc)

    def extra_path(self, container: dict[str, Any]) -> list[str]:
        image = str(container.get("image", ""))
        if "postgres" in image:
            with contextlib.suppress(PostgresUnavailable):
                return [str(find_bin_dir())]
        return []


def _pdeathsig_prefix() -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("the local runtime needs util-linux's setpriv (apt-get install util-linux) so that "
                           "container processes die with it")
    return [setpriv, "--pdeathsig", "KILL", "--"]


# --- running it next to other code (the pytest fixture) ---

class RuntimeThread:
    """A LocalRuntime on its own event loop in a background thread; `stop()` ends it and every process it ran."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.runtime = LocalRuntime(settings)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="opsmgr-local-runtime", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.runtime.run())
        except BaseException as exc:  # reported to the thread that waits in start()
            self.error = exc
            self.runtime.ready.set()

    def start(self, timeout: float = 60.0) -> RuntimeThread:
        self._thread.start()
        if not self.runtime.ready.wait(timeout):
            raise TimeoutError(f"the local runtime did not start within {timeout:.0f} s")
        if self.error is not None:
            raise RuntimeError(f"the local runtime failed to start: {self.error}") from self.error
        return self

    def stop(self, timeout: float = 60.0) -> None:
        self.runtime.request_stop()
        self._thread.join(timeout)

    def serve(self, namespace: str, timeout: float = 10.0) -> None:
        """Run the Pods of `namespace` too; returns once the runtime has taken it on."""
        loop = self.runtime.loop
        if loop is None:
            raise RuntimeError("the local runtime is not running")

        async def add() -> None:
            self.runtime.serve_namespace(namespace)

        asyncio.run_coroutine_threadsafe(add(), loop).result(timeout)

    def pod_directory(self, namespace: str, name: str) -> Path | None:
        """The directory of the current Pod called `name` (there is one per Pod uid)."""
        matches = sorted((self.runtime.settings.root / "pods").glob(f"{namespace}_{name}_*"),
                         key=lambda p: p.stat().st_mtime)
        return matches[-1] if matches else None

    def logs(self, namespace: str, name: str, container: str) -> str:
        """Everything the container's current and earlier processes wrote (empty before it ran)."""
        directory = self.pod_directory(namespace, name)
        if directory is None:
            return ""
        files = sorted((directory / "logs" / container).glob("*.log"), key=lambda p: int(p.stem))
        return "".join(f.read_text(errors="replace") for f in files)
