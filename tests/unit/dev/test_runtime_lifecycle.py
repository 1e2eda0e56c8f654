"""What the local runtime starts, stops and reports for a Pod, given what its containers did."""

from __future__ import annotations

from typing import Any

from opsmgr.dev.runtime_lifecycle import (
    ContainerRun,
    Decision,
    Phase,
    ProbeVerdict,
    RestartBackoff,
    decide,
    fits_node,
    pod_status,
    probe_port,
    should_restart,
    stop_grace,
)

BACKOFF = RestartBackoff()
NOW = "2026-01-01T00:00:00Z"


def spec(policy: str = "Always", init: tuple[str, ...] = (), sidecars: tuple[str, ...] = (),
         apps: tuple[str, ...] = ("app",)) -> dict[str, Any]:
    init_containers = [{"name": n, "image": "i"} for n in init]
    init_containers += [{"name": n, "image": "i", "restartPolicy": "Always"} for n in sidecars]
    return {"restartPolicy": policy, "initContainers": init_containers,
            "containers": [{"name": n, "image": "i"} for n in apps]}


def runs_for(pod_spec: dict[str, Any]) -> dict[str, ContainerRun]:
    names = [c["name"] for c in pod_spec["initContainers"] + pod_spec["containers"]]
    return {n: ContainerRun(n) for n in names}


def started(run: ContainerRun, pid: int = 100) -> None:
    run.record_start(pid, NOW)
    run.started = run.ready = True


def exited(run: ContainerRun, code: int, now: float = 0.0, ran: float = 1.0) -> None:
    run.record_exit(code, NOW, ran, now, BACKOFF)


def test_backoff_restarts_at_once_then_doubles_from_10_s_to_300_s() -> None:
    assert [BACKOFF.delay(n) for n in range(1, 9)] == [0, 10, 20, 40, 80, 160, 300, 300]


def test_restart_policy() -> None:
    assert should_restart("Always", 0) and should_restart("OnFailure", 1)
    assert not should_restart("OnFailure", 0) and not should_restart("Never", 1)


def test_init_containers_run_one_at_a_time_in_order_before_the_app() -> None:
    s = spec(init=("migrate", "seed"))
    runs = runs_for(s)
    assert decide(s, runs, initialized=False, terminating=False, now=0).start == ("migrate",)
    started(runs["migrate"])
    assert decide(s, runs, initialized=False, terminating=False, now=0).start == ()
    exited(runs["migrate"], 0)
    assert decide(s, runs, initialized=False, terminating=False, now=0).start == ("seed",)
    started(runs["seed"])
    exited(runs["seed"], 0)
    decision = decide(s, runs, initialized=False, terminating=False, now=0)
    assert decision.initialized and decision.start == ("app",)


def test_native_sidecar_starts_before_the_next_init_container_once_started() -> None:
    s = spec(sidecars=("proxy",), init=())
    s["initContainers"].append({"name": "after", "image": "i"})
    runs = runs_for(s)
    assert decide(s, runs, initialized=False, terminating=False, now=0).start == ("proxy",)
    runs["proxy"].record_start(7, NOW)  # running, startup probe not passed yet
    assert decide(s, runs, initialized=False, terminating=False, now=0).start == ()
    runs["proxy"].started = True
    assert decide(s, runs, initialized=False, terminating=False, now=0).start == ("after",)


def test_failed_init_container_fails_a_never_pod_and_is_retried_with_backoff_otherwise() -> None:
    never = spec("Never", init=("migrate",))
    runs = runs_for(never)
    started(runs["migrate"])
    exited(runs["migrate"], 2)
    decision = decide(never, runs, initialized=False, terminating=False, now=0)
    assert decision.phase is Phase.FAILED and decision.finished
    always = spec("Always", init=("migrate",))
    runs = runs_for(always)
    started(runs["migrate"])
    exited(runs["migrate"], 2, now=100.0)
    assert decide(always, runs, initialized=False, terminating=False, now=100.0).start == ("migrate",)
    started(runs["migrate"])
    exited(runs["migrate"], 2, now=101.0)
    waiting = decide(always, runs, initialized=False, terminating=False, now=101.0)
    assert waiting.start == () and waiting.wake_at == 111.0
    assert decide(always, runs, initialized=False, terminating=False, now=111.0).start == ("migrate",)


def test_crash_streak_is_forgotten_after_ten_minutes_of_running() -> None:
    run = ContainerRun("app")
    for _ in range(4):
        started(run)
        exited(run, 1, now=0.0)
    assert run.backoff_until == 40.0
    started(run)
    exited(run, 1, now=1000.0, ran=700.0)
    assert run.backoff_until == 1000.0 and run.restart_count == 4


def test_app_phase_follows_restart_policy_and_exit_codes() -> None:
    for policy, code, phase in (("Never", 0, Phase.SUCCEEDED), ("Never", 1, Phase.FAILED),
                                ("OnFailure", 0, Phase.SUCCEEDED), ("OnFailure", 1, Phase.RUNNING),
                                ("Always", 0, Phase.RUNNING)):
        s = spec(policy)
        runs = runs_for(s)
        started(runs["app"])
        exited(runs["app"], code)
        assert decide(s, runs, initialized=True, terminating=False, now=0).phase is phase, (policy, code)


def test_finished_app_stops_sidecars_last_first_and_then_the_pod_is_done() -> None:
    s = spec("Never", sidecars=("log", "proxy"))
    runs = runs_for(s)
    for name in ("log", "proxy", "app"):
        started(runs[name])
    exited(runs["app"], 0)
    decision = decide(s, runs, initialized=True, terminating=False, now=0)
    assert decision.phase is Phase.SUCCEEDED and decision.stop == ("proxy",) and not decision.finished
    exited(runs["proxy"], 0)
    assert decide(s, runs, initialized=True, terminating=False, now=0).stop == ("log",)
    exited(runs["log"], 0)
    assert decide(s, runs, initialized=True, terminating=False, now=0).finished


def test_deleted_pod_stops_app_containers_before_sidecars() -> None:
    s = spec(sidecars=("proxy",), apps=("a", "b"))
    runs = runs_for(s)
    for name in ("proxy", "a", "b"):
        started(runs[name])
    assert decide(s, runs, initialized=True, terminating=True, now=0).stop == ("a", "b")
    exited(runs["a"], 143)
    exited(runs["b"], 143)
    assert decide(s, runs, initialized=True, terminating=True, now=0).stop == ("proxy",)
    exited(runs["proxy"], 143)
    assert decide(s, runs, initialized=True, terminating=True, now=0).finished


def test_exit_by_signal_is_reported_as_128_plus_the_signal() -> None:
    run = ContainerRun("app")
    started(run, pid=42)
    run.record_exit(-15, NOW, 1.0, 0.0, BACKOFF)
    assert run.exit_code == 143 and run.terminated_state()["signal"] == 15


def test_probe_verdict_counts_thresholds() -> None:
    verdict = ProbeVerdict(success_threshold=2, failure_threshold=3)
    assert not verdict.record(True) and not verdict.passing
    assert verdict.record(True) and verdict.passing
    assert not verdict.record(False) and not verdict.record(False) and verdict.passing
    assert verdict.record(False) and not verdict.passing and verdict.failed


def test_named_probe_port_is_looked_up_in_the_container_ports() -> None:
    container = {"name": "server", "ports": [{"name": "agents", "containerPort": 5723}]}
    assert probe_port("agents", container) == 5723 and probe_port(8080, container) == 8080


def test_status_reports_running_ready_pod_with_conditions_and_keeps_transition_times() -> None:
    s = spec()
    runs = runs_for(s)
    started(runs["app"], pid=4242)
    pod = {"metadata": {"name": "p"}, "spec": s, "status": {"conditions": [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-12-31T00:00:00Z"}]}}
    decision = Decision(phase=Phase.RUNNING, initialized=True)
    status = pod_status(pod, runs, decision, pod_ip="127.0.1.2", host_ip="127.0.0.1", start_time=NOW, now=NOW,
                        mono_now=0)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Running" and status["podIP"] == "127.0.1.2"
    assert conditions["Ready"]["status"] == "True" and conditions["ContainersReady"]["status"] == "True"
    assert conditions["PodScheduled"]["lastTransitionTime"] == "2025-12-31T00:00:00Z"
    container = status["containerStatuses"][0]
    assert container["ready"] and container["containerID"] == "opsmgr-dev://4242"
    assert container["state"] == {"running": {"startedAt": NOW}}


def test_status_shows_crash_loop_back_off_and_the_last_termination() -> None:
    s = spec()
    runs = runs_for(s)
    started(runs["app"])
    exited(runs["app"], 1, now=0.0)
    started(runs["app"])
    exited(runs["app"], 1, now=0.0)
    status = pod_status({"spec": s}, runs, Decision(phase=Phase.RUNNING, initialized=True), pod_ip="",
                        host_ip="", start_time=NOW, now=NOW, mono_now=5.0)
    container = status["containerStatuses"][0]
    assert container["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert container["restartCount"] == 1 and container["lastState"]["terminated"]["exitCode"] == 1
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"


def test_deletion_grace_comes_from_the_deletion_then_the_spec() -> None:
    deleted = {"metadata": {"deletionGracePeriodSeconds": 5}, "spec": {"terminationGracePeriodSeconds": 9}}
    assert stop_grace(deleted) == 5
    assert stop_grace({"metadata": {}, "spec": {"terminationGracePeriodSeconds": 9}}) == 9
    assert stop_grace({"metadata": {}, "spec": {}}) == 30


def test_pods_are_bound_only_where_their_node_selector_and_affinity_allow() -> None:
    labels = {"kubernetes.io/os": "linux"}

    def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
        required = {"nodeSelectorTerms": list(terms)}
        return {"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}}}

    daemon_set_pod = affinity({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["local"]}]})
    assert fits_node(daemon_set_pod, "local", labels)
    assert not fits_node(daemon_set_pod, "other", labels)
    assert fits_node({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}, "local", labels)
    assert not fits_node({"spec": {"nodeSelector": {"disk": "ssd"}}}, "local", labels)
    assert fits_node(affinity({"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]}), "local", labels)
    assert not fits_node(affinity({"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}), "local", labels)
    assert not fits_node({"spec": {"schedulingGates": [{"name": "wait"}]}}, "local", labels)
