"""Pure decisions of the local runtime about a Pod's containers: what to start or stop next, and the status to report.

The I/O layer records what happened (a process started, exited, a probe answered) in `ContainerRun`s and asks
`decide` what to do; `pod_status` turns the same record into the Pod's status. Kubernetes semantics followed:
init containers run one at a time in order; an init container with `restartPolicy: Always` is a native sidecar,
started before the next init container and the app containers, restarted whenever it exits and stopped after the
app containers; app containers restart per the Pod's restartPolicy with the kubelet's crash-loop backoff (first
restart at once, then 10 s doubling to 300 s, forgotten after 10 minutes of running).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Spec = Mapping[str, Any]


class Phase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class RestartBackoff:
    initial: float = 10.0
    cap: float = 300.0
    reset_after: float = 600.0

    def delay(self, streak: int) -> float:
        """Seconds to wait before restart number `streak` of a crash loop (1 = the first restart)."""
        if streak <= 1:
            return 0.0
        return float(min(self.cap, self.initial * 2 ** (streak - 2)))


@dataclass
class ContainerRun:
    """What the runtime observed of one container; the I/O layer updates it, the functions here read it."""

    name: str
    image: str = ""
    running: bool = False
    pid: int | None = None
    started_at: str | None = None
    started: bool = False  # the startup probe passed (at once without one)
    ready: bool = False  # the readiness probe's verdict (at once without one)
    restart_count: int = 0
    exit_code: int | None = None
    exit_signal: int | None = None
    finished_at: str | None = None
    last_started_at: str | None = None
    previous: dict[str, Any] | None = None  # lastState.terminated
    succeeded_once: bool = False
    crash_streak: int = 0
    backoff_until: float = 0.0  # monotonic seconds
    config_error: str | None = None
    start_failed: str | None = None  # executable not found and the like

    @property
    def ever_ran(self) -> bool:
        return self.running or self.exit_code is not None

    def record_start(self, pid: int, now: str) -> None:
        if self.exit_code is not None:
            self.restart_count += 1
            self.previous = self.terminated_state()
        self.running, self.pid, self.started_at = True, pid, now
        self.exit_code = self.exit_signal = self.finished_at = None
        self.config_error = self.start_failed = None
        self.started = self.ready = False

    def record_exit(self, returncode: int, now: str, ran_seconds: float, mono_now: float,
                    backoff: RestartBackoff) -> None:
        """A process exit as subprocess reports it (negative = killed by that signal)."""
        self.running, self.pid, self.started, self.ready = False, None, False, False
        self.exit_signal = -returncode if returncode < 0 else None
        self.exit_code = 128 - returncode if returncode < 0 else returncode
        self.finished_at, self.last_started_at = now, self.started_at
        if self.exit_code == 0:
            self.succeeded_once = True
        self.crash_streak = 1 if ran_seconds >= backoff.reset_after else self.crash_streak + 1
        self.backoff_until = mono_now + backoff.delay(self.crash_streak)

    def record_start_failure(self, message: str, now: str, mono_now: float, backoff: RestartBackoff) -> None:
        """The program could not be executed: a terminated container with exit code 128, as runc reports."""
        if self.exit_code is not None:
            self.restart_count += 1
            self.previous = self.terminated_state()
        self.started_at = now
        self.record_exit(128, now, 0.0, mono_now, backoff)
        self.start_failed = message

    def terminated_state(self) -> dict[str, Any]:
        code = self.exit_code if self.exit_code is not None else 0
        state: dict[str, Any] = {
            "exitCode": code,
            "reason": "StartError" if self.start_failed else ("Completed" if code == 0 else "Error"),
            "startedAt": self.last_started_at, "finishedAt": self.finished_at,
            "containerID": self.container_id,
        }
        if self.exit_signal:
            state["signal"] = self.exit_signal
        if self.start_failed:
            state["message"] = self.start_failed
        return {k: v for k, v in state.items() if v is not None}

    @property
    def container_id(self) -> str | None:
        return f"opsmgr-dev://{self.pid}" if self.pid else None


def _term_matches(term: Mapping[str, Any], node_name: str, labels: Mapping[str, str]) -> bool:
    fields = {"metadata.name": node_name}
    checks = [(r, labels) for r in term.get("matchExpressions") or []]
    checks += [(r, fields) for r in term.get("matchFields") or []]
    for requirement, known in checks:
        operator, value = requirement.get("operator"), known.get(requirement.get("key", ""))
        wanted = requirement.get("values") or []
        if operator == "In" and value not in wanted:
            return False
        if operator == "NotIn" and value in wanted:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return bool(checks)


def fits_node(pod: Mapping[str, Any], node_name: str, labels: Mapping[str, str]) -> bool:
    """The scheduler's say for our single Node: nodeSelector, required node affinity and scheduling gates.

    A DaemonSet's Pod names its Node in a matchFields term, so Pods meant for another Node are left alone.
    """
    spec = pod.get("spec") or {}
    if spec.get("schedulingGates"):
        return False
    if any(labels.get(key) != value for key, value in (spec.get("nodeSelector") or {}).items()):
        return False
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = required.get("nodeSelectorTerms") or []
    return not terms or any(_term_matches(term, node_name, labels) for term in terms)


def is_sidecar(container: Mapping[str, Any]) -> bool:
    return container.get("restartPolicy") == "Always"


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


@dataclass(frozen=True)
class Decision:
    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    wake_at: float | None = None  # monotonic time at which a backoff ends and `decide` should run again
    phase: Phase = Phase.PENDING
    initialized: bool = False
    finished: bool = False  # nothing runs and nothing will: the Pod is terminal or may be removed


@dataclass
class _Plan:
    start: list[str] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    wake_at: float | None = None

    def start_when_due(self, run: ContainerRun, now: float) -> None:
        if run.backoff_until <= now:
            self.start.append(run.name)
        else:
            self.wake_at = run.backoff_until if self.wake_at is None else min(self.wake_at, run.backoff_until)


def _stop_order(spec: Spec, runs: Mapping[str, ContainerRun]) -> tuple[str, ...]:
    """App containers first (together), then sidecars one at a time in reverse order."""
    apps = tuple(c["name"] for c in spec.get("containers") or [] if runs[c["name"]].running)
    if apps:
        return apps
    init = [c["name"] for c in spec.get("initContainers") or [] if runs[c["name"]].running]
    return (init[-1],) if init else ()


def app_phase(spec: Spec, runs: Mapping[str, ContainerRun]) -> Phase:
    """The phase once initialization is done, from the app containers alone."""
    policy = spec.get("restartPolicy", "Always")
    containers = spec.get("containers") or []
    if any(runs[c["name"]].running for c in containers):
        return Phase.RUNNING
    if not all(runs[c["name"]].ever_ran for c in containers):
        return Phase.PENDING
    codes = [runs[c["name"]].exit_code or 0 for c in containers]
    if any(should_restart(policy, code) for code in codes):
        return Phase.RUNNING
    return Phase.SUCCEEDED if all(code == 0 for code in codes) else Phase.FAILED


def _initialize(spec: Spec, runs: Mapping[str, ContainerRun], plan: _Plan, now: float) -> bool | None:
    """Walk the init containers in order; True when all are done, None when one failed for good."""
    policy = spec.get("restartPolicy", "Always")
    for container in spec.get("initContainers") or []:
        run = runs[container["name"]]
        if is_sidecar(container):
            if not run.running:
                plan.start_when_due(run, now)
                return False
            if not run.started:
                return False
            continue
        if run.succeeded_once:
            continue
        if not run.running:
            if run.ever_ran and policy == "Never":
                return None
            plan.start_when_due(run, now)
        return False
    return True


def _stopping(spec: Spec, runs: Mapping[str, ContainerRun], phase: Phase, initialized: bool) -> Decision:
    order = _stop_order(spec, runs)
    return Decision(stop=order, phase=phase, initialized=initialized, finished=not order)


def decide(spec: Spec, runs: Mapping[str, ContainerRun], *, initialized: bool, terminating: bool,
           now: float) -> Decision:
    """What to start and stop now, given the Pod's spec and what its containers did (`now` is monotonic)."""
    policy = spec.get("restartPolicy", "Always")
    plan = _Plan()
    if terminating:
        return _stopping(spec, runs, app_phase(spec, runs) if initialized else Phase.PENDING, initialized)
    if not initialized:
        outcome = _initialize(spec, runs, plan, now)
        if outcome is None:
            return _stopping(spec, runs, Phase.FAILED, False)
        if not outcome:
            return Decision(tuple(plan.start), (), plan.wake_at, Phase.PENDING, False)
    phase = app_phase(spec, runs)
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        return _stopping(spec, runs, phase, True)
    for container in spec.get("initContainers") or []:
        run = runs[container["name"]]
        if is_sidecar(container) and not run.running:
            plan.start_when_due(run, now)
    for container in spec.get("containers") or []:
        run = runs[container["name"]]
        if not run.running and (not run.ever_ran or should_restart(policy, run.exit_code or 0)):
            plan.start_when_due(run, now)
    return Decision(tuple(plan.start), (), plan.wake_at, phase, True)


# --- readiness ---

@dataclass
class ProbeVerdict:
    """successThreshold/failureThreshold bookkeeping of one probe."""

    success_threshold: int = 1
    failure_threshold: int = 3
    passing: bool = False
    _successes: int = 0
    _failures: int = 0

    @classmethod
    def of(cls, probe: Mapping[str, Any]) -> ProbeVerdict:
        return cls(int(probe.get("successThreshold", 1)), int(probe.get("failureThreshold", 3)))

    @property
    def failed(self) -> bool:
        """failureThreshold consecutive failures: time to restart the container (liveness, startup)."""
        return self._failures >= self.failure_threshold

    def record(self, success: bool) -> bool:
        """Count one result; returns whether the verdict changed."""
        before = self.passing
        if success:
            self._successes, self._failures = self._successes + 1, 0
            if self._successes >= self.success_threshold:
                self.passing = True
        else:
            self._failures, self._successes = self._failures + 1, 0
            if self._failures >= self.failure_threshold:
                self.passing = False
        return before != self.passing


@dataclass(frozen=True)
class ProbeTiming:
    initial_delay: float
    period: float
    timeout: float

    @classmethod
    def of(cls, probe: Mapping[str, Any]) -> ProbeTiming:
        return cls(float(probe.get("initialDelaySeconds", 0)), float(probe.get("periodSeconds", 10)),
                   float(probe.get("timeoutSeconds", 1)))


def probe_port(port: int | str, container: Mapping[str, Any]) -> int:
    """A probe's port number, looking named ports up in the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container {container.get('name')!r} has no port named {port!r}")


# --- status ---

def _state(run: ContainerRun, *, waiting_reason: str, will_restart: bool, now: float) -> dict[str, Any]:
    if run.running:
        return {"running": {"startedAt": run.started_at}}
    if run.config_error:
        return {"waiting": {"reason": "CreateContainerConfigError", "message": run.config_error}}
    if run.exit_code is not None:
        if will_restart and run.backoff_until > now:
            return {"waiting": {"reason": "CrashLoopBackOff",
                                "message": f"back-off restarting failed container {run.name}"}}
        return {"terminated": run.terminated_state()}
    return {"waiting": {"reason": waiting_reason}}


def container_status(container: Mapping[str, Any], run: ContainerRun, *, waiting_reason: str, will_restart: bool,
                     now: float) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": run.name, "image": container.get("image", ""), "imageID": container.get("image", ""),
        "ready": run.running and run.ready, "started": run.running and run.started,
        "restartCount": run.restart_count,
        "state": _state(run, waiting_reason=waiting_reason, will_restart=will_restart, now=now),
        "lastState": {"terminated": run.previous} if run.previous else {},
    }
    if run.pid or run.exit_code is not None:
        status["containerID"] = run.container_id or (run.previous or {}).get("containerID", "opsmgr-dev://0")
    return status


def _condition(kind: str, ok: bool, reason: str, previous: Mapping[str, Mapping[str, Any]],
               now: str) -> dict[str, Any]:
    status = "True" if ok else "False"
    old = previous.get(kind)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
        "lastTransitionTime") else now
    condition = {"type": kind, "status": status, "lastTransitionTime": since}
    if not ok:
        condition["reason"] = reason
    return condition


def pod_status(pod: Mapping[str, Any], runs: Mapping[str, ContainerRun], decision: Decision, *, pod_ip: str,
               host_ip: str, start_time: str, now: str, mono_now: float) -> dict[str, Any]:
    """The Pod's status as the kubelet reports it, keeping transition times of unchanged conditions."""
    spec = pod.get("spec", {})
    current = pod.get("status") or {}
    previous = {c["type"]: c for c in current.get("conditions") or []}
    init_specs = spec.get("initContainers") or []
    app_specs = spec.get("containers") or []
    terminal = decision.phase in (Phase.SUCCEEDED, Phase.FAILED)
    policy = spec.get("restartPolicy", "Always")
    app_waiting = "ContainerCreating" if decision.initialized else "PodInitializing"
    statuses = [container_status(c, runs[c["name"]], waiting_reason=app_waiting, now=mono_now,
                                 will_restart=not terminal and should_restart(policy, runs[c["name"]].exit_code or 0))
                for c in app_specs]
    init_statuses = [container_status(c, runs[c["name"]], waiting_reason="PodInitializing", now=mono_now,
                                      will_restart=not terminal and (is_sidecar(c) or policy != "Never"))
                     for c in init_specs]
    sidecars_ready = all(runs[c["name"]].running and runs[c["name"]].ready for c in init_specs if is_sidecar(c))
    containers_ready = not terminal and sidecars_ready and all(s["ready"] for s in statuses)
    gates = [gate["conditionType"] for gate in spec.get("readinessGates") or []]
    gates_pass = all(previous.get(gate, {}).get("status") == "True" for gate in gates)
    not_ready = "PodCompleted" if terminal else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", not terminal, "PodCompleted", previous, now),
        _condition("Initialized", decision.initialized or terminal, "ContainersNotInitialized", previous, now),
        _condition("Ready", containers_ready and gates_pass,
                   "ReadinessGatesNotReady" if containers_ready else not_ready, previous, now),
        _condition("ContainersReady", containers_ready, not_ready, previous, now),
        _condition("PodScheduled", True, "", previous, now),
    ]
    conditions += [dict(previous[gate]) for gate in gates if gate in previous]
    status: dict[str, Any] = {
        "phase": str(decision.phase), "conditions": conditions, "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": start_time, "containerStatuses": statuses,
    }
    if init_specs:
        status["initContainerStatuses"] = init_statuses
    return status


def stop_grace(pod: Mapping[str, Any], default: float = 30.0) -> float:
    """Seconds a container gets between the stop signal and SIGKILL for this Pod's current state."""
    metadata = pod.get("metadata", {})
    if metadata.get("deletionGracePeriodSeconds") is not None:
        return float(metadata["deletionGracePeriodSeconds"])
    value = pod.get("spec", {}).get("terminationGracePeriodSeconds")
    return float(value) if value is not None else default


def names_in_order(spec: Spec) -> Sequence[str]:
    return [c["name"] for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]
