"""One Pod on the local runtime: its directory, volumes, processes, probes, hooks and status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsmgr.dev.runtime_files import DATA_LINK, link_mount, write_volume
from opsmgr.dev.runtime_kube import ApiError, api_time
from opsmgr.dev.runtime_lifecycle import (
    ContainerRun,
    Decision,
    ProbeTiming,
    ProbeVerdict,
    decide,
    pod_status,
    probe_port,
    stop_grace,
)
from opsmgr.dev.runtime_plan import (
    KUBECONFIG_NAME,
    ContainerConfigError,
    LaunchPlan,
    mount_sub_path,
    plan_launch,
    token_requests,
    volume_files,
)

if TYPE_CHECKING:
    from opsmgr.dev.runtime import LocalRuntime

log = logging.getLogger("opsmgr.dev.runtime")

HOST_IP = "127.0.0.1"
TOKEN_REFRESH_FRACTION = 0.8  # the kubelet renews a projected token after 80 % of its lifetime
CONFIG_RETRY_SECONDS = 5.0


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
        self.start_time = (pod.get("status") or {}).get("startTime") or api_time()
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
            async with asyncio.timeout(timeout):
                await self.wake.wait()

    async def _publish(self, decision: Decision) -> None:
        if self.runtime.stopping or self.vanished:
            return
        status = pod_status(self.pod, self.runs, decision, pod_ip=self.pod_ip, host_ip=HOST_IP,
                            start_time=self.start_time, now=api_time(), mono_now=time.monotonic())
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
            host_path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                await asyncio.to_thread(host_path.mkdir, mode=0o755, parents=True, exist_ok=True)
            self.volume_dirs[name] = host_path
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
            sub_path = mount_sub_path(self.pod, container, mount, secrets=secrets, config_maps=config_maps,
                                      pod_ip=self.pod_ip, host_ip=HOST_IP)
            target = volume / sub_path if sub_path else volume
            if sub_path and not target.exists():
                if (volume / DATA_LINK).exists():
                    # A Secret or ConfigMap volume is read-only: the kubelet cannot create the path and waits.
                    raise ContainerConfigError(f"volumeMount {mount['mountPath']!r}: {sub_path!r} does not exist in "
                                               f"volume {mount['name']!r} yet")
                target.mkdir(parents=True, exist_ok=True)
            link_mount(root, mount["mountPath"], target)
        plan = plan_launch(self.pod, container, root=str(root), pod_ip=self.pod_ip, host_ip=HOST_IP,
                           secrets=secrets, config_maps=config_maps, venv_bin=self.runtime.venv_bin,
                           python=sys.executable, api_server=self.runtime.api_address,
                           extra_path=self.runtime.extra_path(container),
                           preload=str(self.runtime.bind_shim) if self.runtime.bind_shim else None)
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
            run.record_start_failure(missing, api_time(), mono, self.runtime.settings.backoff)
            return True
        with log_file.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                *self.runtime.pdeathsig_prefix, program, *plan.argv[1:], stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=plan.env, cwd=plan.cwd, start_new_session=True)
        run.record_start(process.pid, api_time())
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
        self.runs[name].record_exit(returncode, api_time(), mono - entry.started, mono, self.runtime.settings.backoff)
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
                async with asyncio.timeout(remaining):
                    await self._run_handler(name, entry, pre_stop, remaining)
        remaining = max(floor, deadline - time.monotonic())
        stop_signal = signal.SIGINT if entry.plan.postgres else signal.SIGTERM  # the image's STOPSIGNAL
        with contextlib.suppress(ProcessLookupError):
            entry.process.send_signal(stop_signal)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await entry.exited.wait()
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
        async with asyncio.timeout(limit):
            return await process.wait() == 0
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
