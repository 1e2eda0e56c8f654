"""AgentTask delivery (the talking half; `task_rules` decides): a watch of the group namespace's AgentTasks, the
TaskRequest sent to agents whose stream is on this server, and the AgentTask status and Event for each result.

Only the server holding an agent's stream delivers its runs, and only a Pending run, claimed with a guarded status
patch before anything is sent; an agent that connects later gets its pending runs then. Deliveries run one at a
time in one loop, so a burst of AgentTasks never floods the API server; result writes run beside it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from opsmgr.api.agent import Agent
from opsmgr.api.common import API_VERSION
from opsmgr.api.management_pack import ManagementPack, Task
from opsmgr.kubeio.informer import Informer
from opsmgr.kubeio.kube import Kube, KubeError, Ref
from opsmgr.protocol import agent_channel_pb2 as pb
from opsmgr.server.kube_watch import AgentCatalog, custom_lister, fqdn_of
from opsmgr.server.session import AgentSession
from opsmgr.server.task_rules import (
    Announcement,
    PendingRun,
    SentTask,
    Undeliverable,
    pending_run,
    result_announcement,
    result_patch,
    running_patch,
    task_request,
    unclaim_patch,
)

log = logging.getLogger(__name__)

COMPONENT = "opsmgr-server"
RESULT_ATTEMPTS = 5  # a result write that keeps meeting newer objects (409) is tried this often
RETRY_SECONDS = 0.2
DELIVERIES_AT_ONCE = 16


class TaskDispatcher:
    """Delivers the group's AgentTasks to agents connected to this server and writes back what they report.

    `session_of(fqdn)` is the agent's live stream on this server, or None.
    """

    def __init__(self, kube: Kube, *, namespace: str, server: str, catalog: AgentCatalog,
                 session_of: Callable[[str], AgentSession | None]) -> None:
        self.kube = kube
        self.namespace = namespace
        self.server = server
        self.catalog = catalog
        self.session_of = session_of
        self.informer = Informer("agenttasks", custom_lister(kube, namespace, "agenttasks"), self._event)
        self.delivered = 0
        self.reported = 0
        self._due: dict[str, None] = {}  # names to look at, in order
        self._wake = asyncio.Event()
        # Reasons already logged per run uid (a pending run is looked at often); forgotten once it is no longer
        # pending, so the memory is bounded by the pending runs.
        self._told: dict[str, set[str]] = {}
        self._writes: set[asyncio.Task[None]] = set()  # result writes and deliveries under way
        self._slots = asyncio.Semaphore(DELIVERIES_AT_ONCE)
        catalog.on_change(self._agent_changed)

    def agent_connected(self, session: AgentSession) -> None:
        """A stream bound to its agent here: its pending runs are due now (they waited for it)."""
        agent = self.catalog.get(session.agent or "")
        if agent is not None:
            self._due_for(agent.metadata.name or "")

    def task_reported(self, session: AgentSession, sent: SentTask, result: pb.TaskResult) -> None:
        """The stream accepted a result for a run it was sent; written beside the stream, which reads on."""
        write = asyncio.create_task(self._record(sent, result), name=f"task-result-{sent.name}")
        self._writes.add(write)
        write.add_done_callback(self._writes.discard)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._due:
                name = next(iter(self._due))
                del self._due[name]
                # Each run on its own: an agent that stops reading fills its stream's outbox, and its send must not
                # hold up every other agent's runs. Bounded, so a burst of runs does not flood the API server.
                await self._slots.acquire()
                delivery = asyncio.create_task(self._deliver_one(name), name=f"task-delivery-{name}")
                self._writes.add(delivery)
                delivery.add_done_callback(self._writes.discard)

    async def _deliver_one(self, name: str) -> None:
        try:
            await self._deliver(name)
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("task delivery failed; tried again on the next change", extra={"fields": {
                "agenttask": f"{self.namespace}/{name}", "error": str(exc)}})
        finally:
            self._slots.release()

    async def close(self) -> None:
        for write in list(self._writes):
            write.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)

    def _event(self, kind: str, body: dict[str, Any]) -> None:
        if kind != "DELETED" and pending_run(body) is not None:
            self._due_name(str(body["metadata"]["name"]))
        else:
            self._told.pop(str((body.get("metadata") or {}).get("uid") or ""), None)

    def _agent_changed(self, before: Agent | None, after: Agent | None) -> None:
        # An Agent that appears (or changes FQDN) after its stream opened still gets its runs.
        if after is not None and (before is None or fqdn_of(before) != fqdn_of(after)):
            self._due_for(after.metadata.name or "")

    def _due_for(self, agent_name: str) -> None:
        for body in list(self.informer.cache.values()):
            if (body.get("spec") or {}).get("agent") != agent_name:
                continue  # cheap before parsing: a reconnect storm looks at every cached run
            run = pending_run(body)
            if run is not None and run.agent == agent_name:
                self._due_name(run.name)

    def _due_name(self, name: str) -> None:
        self._due[name] = None
        self._wake.set()

    def _tell_once(self, run: PendingRun, reason: str) -> None:
        told = self._told.setdefault(run.uid, set())
        if reason not in told:
            told.add(reason)
            log.info("task not delivered", extra={"fields": {"agenttask": f"{run.namespace}/{run.name}",
                                                              "agent": run.agent, "reason": reason}})

    async def _definition(self, run: PendingRun) -> Task | None:
        reference = run.task.spec.task
        body = await self.kube.get(API_VERSION, "ManagementPack", self.namespace, reference.management_pack)
        if body is None:
            return None
        try:
            return ManagementPack.from_body(body).spec.task(reference.name)
        except ValidationError:
            return None

    async def _deliver(self, name: str) -> None:
        body = self.informer.cache.get((self.namespace, name))
        run = pending_run(body) if body is not None else None
        if run is None:
            return
        agent = self.catalog.by_name.get(run.agent)
        stream = self.session_of(fqdn_of(agent)) if agent is not None else None
        if agent is None or stream is None or not stream.config_version:
            # Not this server's to deliver (the agent's stream is elsewhere, or not open yet); or not yet: the agent
            # runs only tasks its packs define, so a stream gets its runs after its packs (due again once they are
            # sent, see `packs.PackDelivery.on_first_packs`).
            return
        request = task_request(run, await self._definition(run))
        if isinstance(request, Undeliverable):
            self._tell_once(run, request.reason)
            return
        ref = Ref(API_VERSION, "AgentTask", self.namespace, name)
        stored = (body or {}).get("status") or {}
        try:
            claimed = await self.kube.merge_patch(ref, running_patch(run, stored, self.server, datetime.now(UTC)),
                                                  subresource="status")
        except KubeError as error:
            if error.status == 409:
                # Changed since read: by another server that claimed it, or the operator. The watch brings the newer
                # object, and a run still Pending in it is due again.
                return
            if error.status == 404:
                return
            raise
        session = self.session_of(fqdn_of(agent))
        if session is None:
            # The stream closed while we claimed: nothing was sent, so the run may wait for the agent again.
            metadata = claimed.get("metadata") or {}
            await self.kube.merge_patch(ref, unclaim_patch(str(metadata.get("resourceVersion")),
                                                           claimed.get("status") or {}, metadata.get("generation"),
                                                           datetime.now(UTC)), subresource="status")
            return
        await session.send_task(SentTask(request.task_id, run.namespace, run.name, run.uid, fqdn_of(agent)), request)
        self.delivered += 1
        log.info("task sent", extra={"fields": session.fields(agenttask=f"{run.namespace}/{run.name}",
                                                              task=request.task, task_id=request.task_id)})
        await self._announce(run.name, run.uid, Announcement(False, "TaskSent", (
            f"sent task {request.task} to agent {run.agent} ({fqdn_of(agent)}) by management server {self.server}")))

    async def _record(self, sent: SentTask, result: pb.TaskResult) -> None:
        ref = Ref(API_VERSION, "AgentTask", sent.namespace, sent.name)
        fields = {"agenttask": f"{sent.namespace}/{sent.name}", "agent": sent.agent,
                  "status": pb.TaskResult.Status.Name(result.status) if result.status in pb.TaskResult.Status.values()
                  else str(result.status)}
        for _ in range(RESULT_ATTEMPTS):
            try:
                body = await self.kube.get(API_VERSION, "AgentTask", sent.namespace, sent.name)
                if body is None:
                    log.info("task result not written: the AgentTask is gone", extra={"fields": fields})
                    return
                patch = result_patch(body, sent, result, datetime.now(UTC))
                if isinstance(patch, Undeliverable):
                    log.info("task result not written", extra={"fields": {**fields, "reason": patch.reason}})
                    return
                await self.kube.merge_patch(ref, patch, subresource="status")
            except KubeError as error:
                if error.status == 409:
                    await asyncio.sleep(RETRY_SECONDS)  # the operator wrote meanwhile: decide again on the newer one
                    continue
                log.warning("task result not written", extra={"fields": {**fields, "error": str(error)}})
                return
            except (OSError, TimeoutError) as exc:
                log.warning("task result not written", extra={"fields": {**fields, "error": str(exc)}})
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.reported += 1
            log.info("task result written", extra={"fields": {**fields, "exit_code": result.exit_code}})
            await self._announce(sent.name, sent.uid, result_announcement(sent, result))
            return
        log.warning("task result not written: the AgentTask kept changing", extra={"fields": fields})

    async def _announce(self, name: str, uid: str, announcement: Announcement) -> None:
        """A Kubernetes Event on the AgentTask (`kubectl describe` shows it); best effort."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name[:200]}.", "namespace": self.namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": "AgentTask", "namespace": self.namespace,
                               "name": name, "uid": uid},
            "type": "Warning" if announcement.warning else "Normal", "reason": announcement.reason,
            "message": announcement.message, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": COMPONENT, "host": self.server},
            "reportingComponent": COMPONENT, "reportingInstance": self.server[:128],
        }
        try:
            await self.kube.create(manifest)
        except (KubeError, OSError, TimeoutError) as exc:
            log.warning("event not created", extra={"fields": {"agenttask": f"{self.namespace}/{name}",
                                                                "reason": announcement.reason, "error": str(exc)}})
