"""Pure policies that turn what a handler gathered into conditions: facts in, (status, reason, message) out.

Handlers gather (read Kubernetes), call these, and write status only when a condition's decision changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from opsmgr.api.conditions import Condition, ConditionStatus
from opsmgr.api.management_group import DatabaseMode, ManagementGroupConditionType

DATABASES_READY = ManagementGroupConditionType.DATABASES_READY.value
CERTIFICATES_READY = ManagementGroupConditionType.CERTIFICATES_READY.value
SERVERS_READY = ManagementGroupConditionType.SERVERS_READY.value
GROUP_REQUIRED = (DATABASES_READY, CERTIFICATES_READY, SERVERS_READY)


class JobState(StrEnum):
    MISSING = "Missing"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class DatabaseFacts:
    mode: DatabaseMode
    missing_secrets: tuple[str, ...] = ()  # "secret/key" the group names that do not exist
    database_ready: bool = True  # the embedded PostgreSQL Pod is ready (always True for external)
    migration: JobState = JobState.MISSING
    migration_message: str = ""


@dataclass(frozen=True)
class Verdict:
    """One condition's decision, before it gets a time and generation."""

    status: ConditionStatus
    reason: str
    message: str

    def condition(self, type: str, generation: int | None, now: datetime) -> Condition:
        return Condition.of(type, self.status, self.reason, self.message, generation=generation, now=now)


def _true(reason: str, message: str) -> Verdict:
    return Verdict(ConditionStatus.TRUE, reason, message)


def _false(reason: str, message: str) -> Verdict:
    return Verdict(ConditionStatus.FALSE, reason, message)


def databases_verdict(facts: DatabaseFacts) -> Verdict:
    if facts.missing_secrets:
        missing = ", ".join(facts.missing_secrets)
        return _false("SecretMissing", f"spec.database.external names {missing}, which does not exist: create the "
                                       "Secret (a CloudNativePG app Secret has the URI in key `uri`)")
    if not facts.database_ready:
        return _false("DatabaseStarting", "the embedded PostgreSQL Pod is not ready yet")
    match facts.migration:
        case JobState.SUCCEEDED:
            return _true("Migrated", f"OperationalDB and DataWarehouse ({facts.mode.value.lower()}) exist and "
                                     "their schemas are current")
        case JobState.FAILED:
            return _false("MigrationFailed", facts.migration_message or
                          "the migration Job failed; see its Pod's log (kubectl logs job/NAME)")
        case _:
            return _false("Migrating", "creating the databases and applying migrations")


@dataclass(frozen=True)
class CertificateFacts:
    problem_reason: str | None = None  # a CertificateError's reason, or CASecretMissing
    problem_message: str = ""
    ca_not_after: datetime | None = None
    servers_issued: int = 0
    servers_desired: int = 0


def certificates_verdict(facts: CertificateFacts) -> Verdict:
    if facts.problem_reason is not None:
        return _false(facts.problem_reason, facts.problem_message)
    if facts.servers_issued < facts.servers_desired:
        return _false("Issuing", f"{facts.servers_issued} of {facts.servers_desired} server certificates issued")
    until = facts.ca_not_after.date().isoformat() if facts.ca_not_after else "unknown"
    return _true("Issued", f"CA valid until {until}; {facts.servers_issued} server certificate(s) issued")


def servers_verdict(desired: int, ready: int, exists: bool = True) -> Verdict:
    if not exists:
        return _false("WaitingForDependencies", "the servers start once certificates and databases are ready")
    if ready >= desired:
        return _true("AllServersReady", f"{ready} of {desired} management servers accept agents")
    return _false("ServersStarting", f"{ready} of {desired} management servers accept agents")


@dataclass(frozen=True)
class AgentFacts:
    approved: bool
    in_cluster: bool
    certificate_issued: bool = False
    primary: str | None = None
    missing_servers: tuple[str, ...] = field(default=())
    group_found: bool = True


AGENT_APPROVED = "Approved"
AGENT_CERTIFICATE = "CertificateIssued"
AGENT_ASSIGNED = "Assigned"


def agent_required(in_cluster: bool) -> tuple[str, ...]:
    return (AGENT_APPROVED, AGENT_ASSIGNED, AGENT_CERTIFICATE) if in_cluster else (AGENT_APPROVED, AGENT_ASSIGNED)


def assigned_verdict(facts: AgentFacts) -> Verdict:
    if not facts.group_found:
        return _false("ManagementGroupNotFound", "spec.managementGroupRef names a ManagementGroup that does not "
                                                 "exist; create it or correct the reference")
    if facts.primary is None:
        return _false("NoServers", "the group runs no management servers yet")
    if facts.missing_servers:
        return _false("ServerNotFound", f"spec names {', '.join(facts.missing_servers)}, which the group does not "
                                        "run; clear primaryServer/failoverServers to let the operator assign")
    return _true("Assigned", f"primary server {facts.primary}")


def certificate_verdict(facts: AgentFacts) -> Verdict:
    if not facts.approved:
        return _false("NotApproved", "a certificate is issued once the agent is approved")
    if not facts.certificate_issued:
        return _false("Issuing", "issuing the agent's certificate")
    return _true("Issued", "the agent's certificate is in its Secret")
