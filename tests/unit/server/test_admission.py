"""Who may open a stream and speak for whom: decided from the certificate identity and the directory alone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from opsmgr.pki import Identity, Role, create_ca
from opsmgr.server.admission import admit_speaker, admit_stream, claimed_role
from opsmgr.server.directory import (
    AgentRecord,
    Approval,
    DirectoryFileError,
    DirectorySnapshot,
    FileAgentDirectory,
    GatewayRecord,
    parse_directory,
)
from opsmgr.server.kube_watch import KubeAgentDirectory
from tests.unit.pki.forge import forge_leaf

GW = "gw01.dmz.contoso.test"
DIRECTORY = DirectorySnapshot(
    agents={"web01.contoso.test": AgentRecord("web01.contoso.test", Approval.APPROVED),
            "web02.contoso.test": AgentRecord("web02.contoso.test", Approval.PENDING),
            "relay.contoso.test": AgentRecord("relay.contoso.test", Approval.APPROVED, GW),
            "other.contoso.test": AgentRecord("other.contoso.test", Approval.APPROVED, "gw02.contoso.test")},
    gateways={GW: GatewayRecord(GW)})


def agent(name: str) -> Identity:
    return Identity.of("contoso", Role.AGENT, name)


def gateway(name: str = GW) -> Identity:
    return Identity.of("contoso", Role.GATEWAY, name)


def test_an_approved_agent_opens_a_stream_and_speaks_for_itself() -> None:
    assert admit_stream(agent("web01.contoso.test"), DIRECTORY) is None
    assert admit_speaker(agent("web01.contoso.test"), "WEB01.contoso.test.", DIRECTORY) is None


@pytest.mark.parametrize(("name", "reason"), [("web02.contoso.test", "NotApproved"),
                                              ("ghost.contoso.test", "UnknownAgent")])
def test_pending_and_unknown_agents_are_refused_at_open(name: str, reason: str) -> None:
    refusal = admit_stream(agent(name), DIRECTORY)
    assert refusal is not None and refusal.reason == reason


def test_a_server_still_listing_the_groups_agents_asks_an_agent_it_has_not_read_yet_to_retry() -> None:
    """Before the first listing only the fallback (the directory file) answers: a miss then is not "unknown"."""
    loading = KubeAgentDirectory(catalog=None, fallback=DIRECTORY)
    refusal = admit_stream(agent("ghost.contoso.test"), loading)
    assert refusal is not None and refusal.reason == "DirectoryLoading" and refusal.retry, refusal
    assert "still listing" in refusal.message and "ghost.contoso.test" in refusal.message
    assert admit_stream(agent("web01.contoso.test"), loading) is None  # what the file already vouches for
    pending = admit_stream(agent("web02.contoso.test"), loading)
    assert pending is not None and pending.reason == "NotApproved" and not pending.retry
    unknown = admit_stream(agent("ghost.contoso.test"), DIRECTORY)
    assert unknown is not None and unknown.reason == "UnknownAgent" and not unknown.retry


def test_an_agent_may_not_speak_for_another() -> None:
    refusal = admit_speaker(agent("web01.contoso.test"), "relay.contoso.test", DIRECTORY)
    assert refusal is not None and refusal.reason == "ImpersonationRefused"


def test_a_gateway_speaks_only_for_its_assigned_and_approved_agents() -> None:
    assert admit_stream(gateway(), DIRECTORY) is None
    assert admit_speaker(gateway(), "relay.contoso.test", DIRECTORY) is None
    for name, reason in (("other.contoso.test", "NotAssignedToGateway"), ("web01.contoso.test",
                                                                          "NotAssignedToGateway"),
                         ("web02.contoso.test", "NotApproved"), (GW, "WrongRole")):
        refusal = admit_speaker(gateway(), name, DIRECTORY)
        assert refusal is not None and refusal.reason == reason, name


def test_an_unregistered_gateway_is_refused() -> None:
    refusal = admit_stream(gateway("gw09.contoso.test"), DIRECTORY)
    assert refusal is not None and refusal.reason == "UnknownGateway"


def test_an_imported_certificate_acts_as_gateway_only_when_registered_as_one() -> None:
    ca = create_ca("contoso", datetime.now(UTC))
    imported_gateway = forge_leaf(ca, GW, now=datetime.now(UTC)).certificate
    imported_agent = forge_leaf(ca, "web01.contoso.test", now=datetime.now(UTC)).certificate
    assert claimed_role(imported_gateway, DIRECTORY) == (Role.GATEWAY, GW)
    assert claimed_role(imported_agent, DIRECTORY) == (Role.AGENT, None)
    uri = forge_leaf(ca, GW, now=datetime.now(UTC), uris=[gateway().uri]).certificate
    assert claimed_role(uri, DIRECTORY) == (Role.GATEWAY, None)


def test_the_directory_file_names_a_bad_entry() -> None:
    with pytest.raises(DirectoryFileError, match=r"agents\[0\].approval = 'Maybe'"):
        parse_directory({"agents": [{"fqdn": "web01.contoso.test", "approval": "Maybe"}]})
    with pytest.raises(DirectoryFileError, match="no such gateway"):
        parse_directory({"agents": [{"fqdn": "web01.contoso.test", "gateway": "gw9.contoso.test"}]})


def test_a_broken_edit_of_the_directory_file_keeps_the_last_good_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "directory.yaml"
    path.write_text("agents: [{fqdn: web01.contoso.test, approval: Approved}]\n")
    directory = FileAgentDirectory(path)
    path.write_text("agents: [{fqdn: ''}]  # broken\n")
    assert directory.load() is False
    record = directory.lookup("web01.contoso.test")
    assert record is not None and record.approval is Approval.APPROVED
