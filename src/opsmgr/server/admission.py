"""Who may open a stream and speak for which agent (pure decisions over a certificate identity and the directory)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from opsmgr.pki.errors import CertificateError
from opsmgr.pki.names import Identity, Role
from opsmgr.pki.verify import certificate_identity, common_name
from opsmgr.server.directory import AgentDirectory, Approval


@dataclass(frozen=True)
class Refusal:
    """Why a stream or message is refused: `reason` is one CamelCase word (a metric label), `message` a sentence."""

    reason: str
    message: str
    retry: bool = False  # the peer did nothing wrong and should dial again soon (gRPC UNAVAILABLE, not denied)


def claimed_role(certificate: x509.Certificate, directory: AgentDirectory) -> tuple[Role, str | None]:
    """The role to authorize the certificate for, and the name to expect when only the directory vouches for it.

    A group-issued certificate says its role in its URI; one from an imported CA has none, and acts as a gateway
    only when its CN is registered as one (authorize_peer then insists on that name).
    """
    try:
        identity = certificate_identity(certificate, "client certificate")
    except CertificateError:
        return Role.AGENT, None  # authorize_peer reports the malformed URI itself
    if identity is not None:
        return identity.role, None
    cn = (common_name(certificate) or "").strip().lower().removesuffix(".")
    if cn and directory.gateway(cn) is not None:
        return Role.GATEWAY, cn
    return Role.AGENT, None


def admit_stream(identity: Identity, directory: AgentDirectory) -> Refusal | None:
    """Checked when the stream opens, before any message, and again whenever the directory changes."""
    if identity.role is Role.GATEWAY:
        gateway = directory.gateway(identity.name)
        if gateway is None:
            return Refusal("UnknownGateway", f"gateway {identity.name} is not registered in this management group: "
                                             "create its Gateway resource")
        if gateway.approval is not Approval.APPROVED:
            return Refusal("NotApproved", f"gateway {identity.name} is {gateway.approval.value}, not Approved")
        return None
    if identity.role is not Role.AGENT:
        return Refusal("WrongRole", f"{identity.role.article} certificate may not open an agent stream")
    return _agent_admitted(identity.name, directory)


def admit_speaker(identity: Identity, agent: str, directory: AgentDirectory) -> Refusal | None:
    """May the stream bound to `identity` speak for `agent` (Hello.agent)?"""
    agent = agent.strip().lower().removesuffix(".")
    if agent == identity.name:
        return admit_stream(identity, directory) if identity.role is Role.AGENT else Refusal(
            "WrongRole", f"gateway {identity.name} relays agents; it sends no data of its own")
    if identity.role is not Role.GATEWAY:
        return Refusal("ImpersonationRefused", f"Hello.agent = {agent!r}, but the certificate is {identity.name}'s: "
                                               "only a gateway certificate may speak for another agent")
    refusal = _agent_admitted(agent, directory)
    if refusal is not None:
        return refusal
    record = directory.lookup(agent)
    if record is None or record.gateway != identity.name:
        return Refusal("NotAssignedToGateway", f"Hello.agent = {agent!r} is not assigned to gateway "
                                               f"{identity.name}: set the Agent's gateway, or connect it directly")
    return None


def _agent_admitted(agent: str, directory: AgentDirectory) -> Refusal | None:
    record = directory.lookup(agent)
    if record is None and directory.loading:
        # A server that has not finished listing the group's Agents (just started, or the Kubernetes API is slow)
        # must not tell a registered agent that it is unknown: it says so, and the agent dials again.
        return Refusal("DirectoryLoading", f"agent {agent} is not in what this server has read of the group's "
                                           "Agents yet: it is still listing them from the Kubernetes API; retry "
                                           "shortly", retry=True)
    if record is None:
        return Refusal("UnknownAgent", f"agent {agent} is not registered in this management group: create its "
                                       "Agent resource (or enroll it)")
    if record.approval is not Approval.APPROVED:
        return Refusal("NotApproved", f"agent {agent} is {record.approval.value}, not Approved: approve its Agent "
                                      "resource")
    return None
