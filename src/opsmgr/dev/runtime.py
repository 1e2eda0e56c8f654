"""The local runtime: plays the kubelet (and the scheduler) for Pods of selected namespaces, as local processes.

No container engine runs on the development machines, so this registers a Node `local`, binds Pending Pods to it
and runs each container as a process with the env, files and address the Pod spec gives it. The decisions live in
pure modules (`runtime_plan`: command, env, paths; `runtime_lifecycle`: order, restarts, status; `runtime_names`:
addresses and host entries); this module only watches the API server, starts and stops processes, probes and
writes status. Use `opsmgr dev runtime` or the `local_runtime` pytest fixture.

Processes never outlive the runtime: each container is a process-group leader started through `setpriv
--pdeathsig KILL` (the kernel kills it when the runtime's thread dies), its group is SIGKILLed when the leader
exits (as a container's PID namespace would be), shutdown stops every group, and a reaper process
(`runtime_reaper`) SIGKILLs the groups of a runtime that died without shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes_asyncio import client as kube
from kubernetes_asyncio.config import new_client_from_config

from opsmgr.dev.postgres import PostgresUnavailable, find_bin_dir
from opsmgr.dev.runtime_files import AddressBlockClaim, HostsFile, link_mount, write_volume
from opsmgr.dev.runtime_lifecycle import (
    ContainerRun,
    Decision,
    Phase,
    ProbeTiming,
    ProbeVerdict,
    RestartBackoff,
    decide,
    fits_node,
    pod_status,
    probe_port,
    stop_grace,
)
from opsmgr.dev.runtime_names import PodAddressPool, host_entries
from opsmgr.dev.runtime_plan import (
    KUBECONFIG_NAME,
    ContainerConfigError,
    LaunchPlan,
    decode_config_map,
    decode_secret,
    plan_launch,
    referenced_names,
    token_requests,
    volume_files,
)

log = logging.getLogger("opsmgr.dev.runtime")

NODE_NAME = "local"
HOST_IP = "127.0.0.1"
LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_SECONDS = 10.0
WATCH_SECONDS = 290  # the API server ends a watch after this; we resume from the last resourceVersion
TOKEN_REFRESH_FRACTION = 0.8  # the kubelet renews a projected token after 80 % of its lifetime
CONFIG_RETRY_SECONDS = 5.0
CONDITION_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


async def _json(response: Awaitable[Any]) -> dict[str, Any]:
    """The body of a `_preload_content=False` call as a dict (camelCase, as the API server wrote it)."""
    reply = await response
    try:
        text = await reply.text()
        if not 200 <= reply.status < 300:
            raise ApiError(reply.status, text)
        return dict(json.loads(text)) if text else {}
    finally:
        reply.release()


async def _lines(stream: Any) -> AsyncIterator[bytes]:
    """A watch's newline-separated events of any length (aiohttp's readline() refuses lines over 128 KiB)."""
    pending = bytearray()
    async for chunk in stream.iter_any():
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[:end])
            del pending[:end + 1]
            if line.strip():
                yield line
    if pending.strip():
        yield bytes(pending)


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata", {})
    return metadata.get("namespace", ""), metadata.get("name", "")


class Informer:
    """A list-then-watch cache of one resource kind, resuming from the last resourceVersion and relisting on 410."""

    def __init__(self, kind: str, lister: Callable[..., Awaitable[Any]],
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.kind = kind
        self.lister = lister
        self.on_event = on_event
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}
        self.synced = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                version = await self._relist()
                while version:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: relist after a pause, as client-go does
                log.warning("watch of %s failed (%s); listing again", self.kind, exc)
                await asyncio.sleep(1.0)

    async def _relist(self) -> str:
        listing = await _json(self.lister(_preload_content=False))
        fresh = {_key(item): item for item in listing.get("items") or []}
        for gone in self.cache.keys() - fresh.keys():
            self.on_event("DELETED", self.cache.pop(gone))
        for key, item in fresh.items():
            old = self.cache.get(key)
            self.cache[key] = item
            if old is None or old["metadata"].get("resourceVersion") != item["metadata"].get("resourceVersion"):
                self.on_event("ADDED" if old is None else "MODIFIED", item)
        self.synced.set()
        return str(listing["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> str:
        """Follow one watch; returns the version to resume from, or '' when a relist is needed."""
        reply = await self.lister(watch=True, resource_version=version, allow_watch_bookmarks=True,
                                  timeout_seconds=WATCH_SECONDS, _preload_content=False)
        try:
            if reply.status != 200:
                raise ApiError(reply.status, await reply.text())
            async for line in _lines(reply.content):
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ERROR":
                    return ""  # usually 410 Gone: our version is too old
                version = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                if event["type"] == "DELETED":
                    self.cache.pop(_key(obj), None)
                else:
                    self.cache[_key(obj)] = obj
                self.on_event(event["type"], obj)
        finally:
            reply.release()
        return version


@dataclass
class RuntimeSettings:
    kubeconfig: Path
    root: Path
    namespaces: set[str] | None = None  # None: every namespace
    hosts_file: Path = Path("/etc/hosts")
    node_name: str = NODE_NAME
    backoff: RestartBackoff = field(default_factory=RestartBackoff)
    shutdown_grace: float = 10.0  # grace a container gets when the runtime itself stops


@dataclass
class _Process:
    process: asyncio.subprocess.Process
    plan: LaunchPlan
    started: float
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class PodWorker:
    """Runs one Pod: its directory, volumes, processes, probes and status, until it is deleted."""

    def __init__(self, runtime: LocalRuntime, pod: dict[str, Any]) -> None:
        self.runtime = runtime
        self.pod = pod
        metadata = pod["metadata"]
        self.namespace, self.name, self.uid = metadata["namespace"], metadata["name"], metadata["uid"]
        self.spec: dict[str, Any] = pod["spec"]
        containers = [*(self.spec.get("initContainers") or []), *(self.spec.get("containers") or [])]
        self.containers = {c["name"]: c for c in containers}
        self.runs = {c["name"]: ContainerRun(c["name"], c.get("image", "")) for c in containers}
        self.processes: dict[str, _Process] = {}
        self.stopping: dict[str, asyncio.Task[None]] = {}
        self.directory = runtime.settings.root / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.pod_ip = runtime.address_of(pod)
        self.wake = asyncio.Event()
        self.initialized = False
        self.volumes_stale = True
        self.volume_dirs: dict[str, Path] = {}
        self.volume_error: str | None = None
        self.tokens: dict[str, tuple[str, float]] = {}  # path -> (token, monotonic refresh time)
        self.vanished = False
        self.stop_deadline: float | None = None
        self.last_status: dict[str, Any] | None = None
        self.start_time = (pod.get("status") or {}).get("startTime") or _now()
        self.task: asyncio.Task[None] | None = None

    # --- inputs from the runtime ---

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        self.wake.set()

    def volumes_changed(self) -> None:
        self.volumes_stale = True
        for run in self.runs.values():
            if run.config_error:
                run.backoff_until = 0.0  # what was missing may be there now
        self.wake.set()

    @property
    def terminating(self) -> bool:
        return self.vanished or self.runtime.stopping or bool(self.pod["metadata"].get("deletionTimestamp"))

    # --- the loop ---

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: the runtime failed to run it", self.namespace, self.name)
        finally:
            self._kill_all()
            self.runtime.worker_done(self)

    async def _run(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # PostgreSQL, demoted to its own account, must reach its volume
        while True:
            self.wake.clear()
            if not self.terminating and (self.volumes_stale or self.volume_error or self._token_due()):
                await self._prepare_volumes()
            mono = time.monotonic()
            decision = decide(self.spec, self.runs, initialized=self.initialized, terminating=self.terminating,
                              now=mono)
            self.initialized = decision.initialized
            if decision.stop and self.stop_deadline is None:
                grace = stop_grace(self.pod)
                if self.runtime.stopping or self.vanished:
                    grace = min(grace, self.runtime.settings.shutdown_grace)
                self.stop_deadline = mono + grace  # one grace period for the whole Pod, sidecars included
            for name in decision.stop:
                if name not in self.stopping and self.stop_deadline is not None:
                    self.stopping[name] = asyncio.create_task(self._stop(name, self.stop_deadline))
            started = [name for name in decision.start if await self._start(name)]
            if started:
                continue  # a start changes what comes next (the next init container, the phase)
            await self._publish(decision)
            if decision.finished and self.terminating:
                break
            if decision.finished and self.runtime.addresses is not None:
                self.runtime.addresses.release(self.uid)  # a finished Pod keeps its status, not its address
            await self._sleep(decision)
        if not self.vanished and not self.runtime.stopping:
            await self.runtime.remove_pod(self.namespace, self.name, self.uid)

    async def _sleep(self, decision: Decision) -> None:
        deadlines = [t for _, t in self.tokens.values()]
        if decision.wake_at is not None:
            deadlines.append(decision.wake_at)
        if self.volume_error or any(r.config_error for r in self.runs.values()):
            deadlines.append(time.monotonic() + CONFIG_RETRY_SECONDS)
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), timeout)

    async def _publish(self, decision: Decision) -> None:
        if self.runtime.stopping or self.vanished:
            return
        status = pod_status(self.pod, self.runs, decision, pod_ip=self.pod_ip, host_ip=HOST_IP,
                            start_time=self.start_time, now=_now(), mono_now=time.monotonic())
        if self.volume_error and not decision.initialized:
            for entry in status["containerStatuses"] + status.get("initContainerStatuses", []):
                if "waiting" in entry["state"]:
                    entry["state"]["waiting"]["message"] = self.volume_error
        if status == self.last_status:
            return
        try:
            await self.runtime.patch_pod_status(self.namespace, self.name, status)
            self.last_status = status
        except ApiError as exc:
            if exc.status != 404:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, exc)

    # --- volumes ---

    def _token_due(self) -> bool:
        return any(refresh <= time.monotonic() for _, refresh in self.tokens.values())

    async def _prepare_volumes(self) -> None:
        self.volumes_stale = False
        secrets, config_maps = self.runtime.sources(self.namespace, self.pod)
        try:
            for volume in self.spec.get("volumes") or []:
                await self._prepare_volume(volume, secrets, config_maps)
            self.volume_error = None
        except (ContainerConfigError, ApiError) as exc:
            self.volume_error = f"MountVolume.SetUp failed: {exc}"
            log.warning("pod %s/%s: %s", self.namespace, self.name, self.volume_error)

    async def _prepare_volume(self, volume: dict[str, Any], secrets: dict[str, dict[str, bytes]],
                              config_maps: dict[str, dict[str, bytes]]) -> None:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            # Outside the Pod directory, so a StatefulSet Pod's data survives its deletion, as on a real volume.
            target = self.runtime.settings.root / "claims" / self.namespace / claim
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o755)
            self.volume_dirs[name] = target
            return
        if "hostPath" in volume:
            self.volume_dirs[name] = Path(volume["hostPath"]["path"])
            return
        tokens: dict[str, str] = {}
        for path, audiences, seconds in token_requests(volume):
            key = f"{name}/{path}"
            if key not in self.tokens or self.tokens[key][1] <= time.monotonic():
                token = await self.runtime.request_token(self.pod, audiences, seconds)
                self.tokens[key] = (token, time.monotonic() + seconds * TOKEN_REFRESH_FRACTION)
            tokens[path] = self.tokens[key][0]
        files = volume_files(self.pod, volume, secrets=secrets, config_maps=config_maps, tokens=tokens,
                             pod_ip=self.pod_ip, host_ip=HOST_IP)
        target = self.directory / "volumes" / name
        if files is None:
            target.mkdir(parents=True, exist_ok=True)
        elif write_volume(target, files):
            log.info("pod %s/%s: volume %s written (%d files)", self.namespace, self.name, name, len(files))
        self.volume_dirs[name] = target

    # --- processes ---

    def _root(self, name: str) -> Path:
        return self.directory / "containers" / name / "root"

    def _plan(self, name: str) -> LaunchPlan:
        container = self.containers[name]
        secrets, config_maps = self.runtime.sources(self.namespace, self.pod)
        root = self._root(name)
        root.mkdir(parents=True, exist_ok=True)
        for mount in container.get("volumeMounts") or []:
            volume = self.volume_dirs.get(mount["name"])
            if volume is None:
                raise ContainerConfigError(f"volumeMount {mount['mountPath']!r} names volume {mount['name']!r}, "
                                           "which the Pod does not define or which is not ready")
            target = volume / mount["subPath"] if mount.get("subPath") else volume
            if mount.get("subPath") and not target.exists():
                target.mkdir(parents=True, exist_ok=True)
            link_mount(root, mount["mountPath"], target)
        plan = plan_launch(self.pod, container, root=str(root), pod_ip=self.pod_ip, host_ip=HOST_IP,
                           secrets=secrets, config_maps=config_maps, venv_bin=self.runtime.venv_bin,
                           python=sys.executable, api_server=self.runtime.api_address,
                           extra_path=self.runtime.extra_path(container))
        if plan.kubeconfig is not None:
            kubeconfig = root / KUBECONFIG_NAME
            kubeconfig.parent.mkdir(parents=True, exist_ok=True)
            kubeconfig.write_text(json.dumps(plan.kubeconfig, indent=2))
        return plan

    async def _start(self, name: str) -> bool:
        """Start a container's process; False when its config is not there yet (it is retried later)."""
        run = self.runs[name]
        mono = time.monotonic()
        if self.volume_error:
            run.config_error = self.volume_error
            run.backoff_until = mono + CONFIG_RETRY_SECONDS
            return False
        try:
            plan = self._plan(name)
        except ContainerConfigError as exc:
            run.config_error = str(exc)
            run.backoff_until = mono + CONFIG_RETRY_SECONDS
            return False
        program = shutil.which(plan.argv[0], path=plan.env["PATH"]) if "/" not in plan.argv[0] else plan.argv[0]
        logs = self.directory / "logs" / name
        logs.mkdir(parents=True, exist_ok=True)
        log_file = logs / f"{run.restart_count + (1 if run.exit_code is not None else 0)}.log"
        if program is None or not _is_directory(plan.cwd):
            missing = f'exec: "{plan.argv[0]}": executable file not found in $PATH' if program is None else \
                f"workingDir {plan.cwd} does not exist"
            log_file.write_text(missing + "\n")
            run.record_start_failure(missing, _now(), mono, self.runtime.settings.backoff)
            return True
        with log_file.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *self.runtime.pdeathsig_prefix, program, *plan.argv[1:], stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=plan.env, cwd=plan.cwd, start_new_session=True)
        run.record_start(process.pid, _now())
        self.runtime.track_group(process.pid, running=True)
        container = self.containers[name]
        run.started = "startupProbe" not in container
        run.ready = run.started and "readinessProbe" not in container
        entry = _Process(process, plan, mono)
        self.processes[name] = entry
        entry.tasks.append(asyncio.create_task(self._watch_exit(name, entry)))
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            if kind in container:
                entry.tasks.append(asyncio.create_task(self._probe_loop(name, entry, kind, container[kind])))
        log.info("pod %s/%s: container %s started as pid %d (%s)", self.namespace, self.name, name, process.pid,
                 " ".join(plan.argv)[:200])
        return True

    async def _watch_exit(self, name: str, entry: _Process) -> None:
        returncode = await entry.process.wait()
        _kill_group(entry.process.pid, signal.SIGKILL)  # what is left of the container dies with its main process
        self.runtime.track_group(entry.process.pid, running=False)
        mono = time.monotonic()
        for task in entry.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.runs[name].record_exit(returncode, _now(), mono - entry.started, mono, self.runtime.settings.backoff)
        self.processes.pop(name, None)
        self.stopping.pop(name, None)
        entry.exited.set()
        log.info("pod %s/%s: container %s exited with %d", self.namespace, self.name, name, returncode)
        self.wake.set()

    async def _stop(self, name: str, deadline: float) -> None:
        """preStop hook, stop signal, and SIGKILL to the container's process group once `deadline` passed."""
        entry = self.processes.get(name)
        if entry is None:
            return
        # Sidecars stopped last still get a moment, as the kubelet gives them at least 2 s.
        floor = 2.0 if name in self._sidecars() else 0.0
        pre_stop = (self.containers[name].get("lifecycle") or {}).get("preStop")
        if pre_stop:
            remaining = max(floor, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._run_handler(name, entry, pre_stop, remaining), remaining)
        remaining = max(floor, deadline - time.monotonic())
        stop_signal = signal.SIGINT if entry.plan.postgres else signal.SIGTERM  # the image's STOPSIGNAL
        with contextlib.suppress(ProcessLookupError):
            entry.process.send_signal(stop_signal)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(entry.exited.wait(), remaining)
        if not entry.exited.is_set():
            _kill_group(entry.process.pid, signal.SIGKILL)
            await entry.exited.wait()

    def _sidecars(self) -> set[str]:
        return {c["name"] for c in self.spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"}

    def _kill_all(self) -> None:
        for entry in list(self.processes.values()):
            _kill_group(entry.process.pid, signal.SIGKILL)

    def kill_now(self) -> None:
        """Synchronous last resort when the runtime's loop is going away."""
        self._kill_all()

    # --- probes ---

    async def _probe_loop(self, name: str, entry: _Process, kind: str, probe: dict[str, Any]) -> None:
        timing, verdict = ProbeTiming.of(probe), ProbeVerdict.of(probe)
        run = self.runs[name]
        await asyncio.sleep(timing.initial_delay)
        while not entry.exited.is_set():
            if kind == "startupProbe" or run.started:
                success = await self._run_handler(name, entry, probe, timing.timeout)
                changed = verdict.record(success)
                if kind == "startupProbe" and verdict.passing:
                    run.started = True
                    run.ready = "readinessProbe" not in self.containers[name]
                    self.wake.set()
                    return
                if kind == "readinessProbe" and changed:
                    run.ready = verdict.passing
                    self.wake.set()
                if kind in ("livenessProbe", "startupProbe") and verdict.failed:
                    log.info("pod %s/%s: container %s failed its %s; restarting it", self.namespace, self.name,
                             name, kind)
                    await self._stop(name, time.monotonic() + stop_grace({"spec": self.spec, "metadata": {}}))
                    return
            await asyncio.sleep(timing.period)

    async def _run_handler(self, name: str, entry: _Process, probe: dict[str, Any], limit: float) -> bool:
        """One probe or lifecycle hook action (exec, httpGet, tcpSocket, grpc, sleep); whether it succeeded."""
        try:
            return await self._act(self.containers[name], entry, probe, limit)
        except (OSError, ValueError, TimeoutError) as exc:
            log.debug("pod %s/%s: probe or hook of %s failed: %s", self.namespace, self.name, name, exc)
            return False

    async def _act(self, container: dict[str, Any], entry: _Process, action: dict[str, Any], limit: float) -> bool:
        if "sleep" in action:
            await asyncio.sleep(min(limit, float(action["sleep"].get("seconds", 0))))
            return True
        if "exec" in action:
            return await _exec_probe(entry.plan.command(action["exec"].get("command") or []), entry.plan, limit,
                                     self.runtime.pdeathsig_prefix)
        if "httpGet" in action:
            http = action["httpGet"]
            return await _http_probe(http.get("host") or self.pod_ip, probe_port(http["port"], container), http,
                                     limit)
        if "tcpSocket" in action:
            tcp = action["tcpSocket"]
            return await _tcp_probe(tcp.get("host") or self.pod_ip, probe_port(tcp["port"], container), limit)
        if "grpc" in action:
            grpc_action = action["grpc"]
            return await _grpc_probe(self.pod_ip, int(grpc_action["port"]), grpc_action.get("service", ""), limit)
        return False


def _is_directory(path: str) -> bool:
    return os.path.isdir(path)  # one stat of a local directory; not worth a thread


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    if pgid > 1:  # never kill(-0) or kill(-1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


async def _exec_probe(argv: list[str], plan: LaunchPlan, limit: float, prefix: list[str]) -> bool:
    program = shutil.which(argv[0], path=plan.env["PATH"]) if argv and "/" not in argv[0] else (argv or [""])[0]
    if not program:
        return False
    process = await asyncio.create_subprocess_exec(
        *prefix, program, *argv[1:], stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL, env=plan.env, cwd=plan.cwd, start_new_session=True)
    try:
        return await asyncio.wait_for(process.wait(), limit) == 0
    except TimeoutError:
        return False
    finally:
        if process.returncode is None:
            _kill_group(process.pid, signal.SIGKILL)
            await process.wait()


async def _http_probe(host: str, port: int, http: dict[str, Any], limit: float) -> bool:
    secure = str(http.get("scheme", "HTTP")).upper() == "HTTPS"
    context = None
    if secure:
        # The kubelet does not verify a probed server's certificate either.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    async with asyncio.timeout(limit):
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            headers = "".join(f"{h['name']}: {h['value']}\r\n" for h in http.get("httpHeaders") or [])
            writer.write(f"GET {http.get('path', '/')} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"User-Agent: kube-probe/opsmgr-dev\r\n{headers}Connection: close\r\n\r\n".encode())
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
    parts = status_line.split()
    return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400


async def _tcp_probe(host: str, port: int, limit: float) -> bool:
    async with asyncio.timeout(limit):
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
    return True


async def _grpc_probe(host: str, port: int, service: str, limit: float) -> bool:
    import grpc  # noqa: PLC0415 (only Pods with gRPC probes need it)

    # grpc.health.v1.HealthCheckRequest{service} by hand: field 1, length-delimited; SERVING is field 1 = 1.
    encoded = service.encode()
    request = (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""
    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            reply = await check(request, timeout=limit)
        except grpc.aio.AioRpcError:
            return False
    return bool(reply == b"\x08\x01")


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
                await asyncio.wait_for(done, self.settings.shutdown_grace + 5)
        for worker in list(self.workers.values()):
            worker.kill_now()
        if self._reaper is not None and self._reaper.stdin is not None:
            self._reaper.stdin.close()  # end of input: the reaper kills whatever is still listed, then exits
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reaper.wait(), 10)
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
            created = await _json(self.core.create_node(node, _preload_content=False))
        except ApiError as exc:
            if exc.status != 409:
                raise
            created = await _json(self.core.read_node(name, _preload_content=False))
        await self._node_status(ready=True)
        # Admission taints a new Node not-ready; the node lifecycle controller that would lift it does not run here.
        taints = (created.get("spec") or {}).get("taints") or []
        kept = [t for t in taints if t.get("key") not in CONDITION_TAINTS]
        if kept != taints:
            await _json(self.core.patch_node(name, {"spec": {"taints": kept or None}}, _preload_content=False,
                                             _content_type="application/merge-patch+json"))

    async def _node_status(self, *, ready: bool) -> None:
        now = _now()
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
        await _json(self.core.patch_node_status(self.settings.node_name, status, _preload_content=False,
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
                    await _json(coordination.patch_namespaced_lease(
                        name, LEASE_NAMESPACE, lease, _preload_content=False,
                        _content_type="application/merge-patch+json"))
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    await _json(coordination.create_namespaced_lease(LEASE_NAMESPACE, lease,
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
            await _json(self.core.create_namespaced_binding(namespace, binding, _preload_content=False))
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
            await _json(self.core.delete_namespaced_pod(name, namespace, body=options, _preload_content=False))
        except ApiError as exc:
            if exc.status not in (404, 409):
                log.warning("removing pod %s/%s failed: %s", namespace, name, exc)

    async def patch_pod_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await _json(self.core.patch_namespaced_pod_status(name, namespace, {"status": status},
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
        reply = await _json(self.core.create_namespaced_service_account_token(
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
        namespace, name = _key(obj)
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


def served_namespaces(values: Iterable[str]) -> set[str] | None:
    names = {v for v in values if v}
    return names or None
