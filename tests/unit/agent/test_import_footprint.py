"""The agent's memory budget (issue 9: RSS <= 50 MB) is mostly what it imports, so guard the causes, not a figure.

A fresh interpreter resolves `opsmgr agent` the way the command line does, reads its configuration file, loads its
identity as a connection would and applies a management pack as a Welcome would; what it then holds must not include
the other components' libraries, the custom-resource kinds the agent never reads, validators of models it never
validates, cryptography or PyYAML, which only the agent's short-lived helper processes load, Python's OpenSSL
bindings, or what only a node agent in its pod needs. The memory figures themselves come from
`bench/bench_agent_collection.py`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from opsmgr.pki import Approval, Identity, Role, create_ca, issue_with_new_key

PROBE = r"""
import json, sys
from pathlib import Path
from opsmgr.cli import main
main.get_command(None, "agent")  # what `opsmgr agent` imports before it runs
from opsmgr.agent.config import load_config
config = load_config(Path(sys.argv[2]))  # what `opsmgr agent` does first
from opsmgr.agent.identity import IdentityFiles
identity = IdentityFiles(Path(sys.argv[1])).load()  # what each connection does before it dials
from opsmgr.agent.packs import plan_from_json
pack = {"metadata": {"name": "p"}, "spec": {"managementGroupRef": {"name": "g"}, "version": "1.0", "rules": [
    {"name": "cpu", "performance": {"object": "Processor", "counter": "% Processor Time", "instance": "_Total",
                                    "intervalSeconds": 10}}]}}
plan = plan_from_json(json.dumps([pack]).encode(), {})
from opsmgr.api.management_group import ManagementGroup
print(json.dumps({"rules": len(plan.rules), "identity": identity.name, "fqdn": config.fqdn,
                  "modules": sorted(sys.modules),
                  "management_group_built": ManagementGroup.__pydantic_complete__}))
"""

# Libraries of the operator, server, gateway and console: tens of MB the agent must never load.
OTHER_COMPONENTS_LIBRARIES = ("kopf", "kubernetes_asyncio", "aiohttp", "asyncpg", "prometheus_client", "jinja2")
OTHER_COMPONENTS = ("opsmgr.server", "opsmgr.operator", "opsmgr.gateway", "opsmgr.db", "opsmgr.console", "opsmgr.dev")
# Kinds the agent never reads, and enrollment, which runs as its own command before the agent starts.
UNUSED_HERE = ("opsmgr.api.agent", "opsmgr.api.gateway", "opsmgr.api.agent_task", "opsmgr.agent.enroll",
               "opsmgr.protocol.enrollment_pb2")
# About 8 MB with its own OpenSSL: parsing and making certificates is the identity helper's, a process of its own.
HELPERS_ONLY = ("cryptography", "opsmgr.agent.identity_store", "opsmgr.agent.identity_helper")
# About 1.4 MB for a file read once at start-up: the agent parses its configuration in a short-lived reader process.
YAML_READER_ONLY = ("yaml", "opsmgr.agent.yaml_reader")
# About 0.5 MB that only a node agent in its pod uses, to list its node's pods from the API server.
NODE_POD_LISTING_ONLY = ("urllib.request", "http.client")
# About 4.4 MB: Python's OpenSSL bindings. The agent's TLS is grpc's; only an HTTPS probe or a node agent loads them.
OPENSSL = ("ssl", "_ssl", "_hashlib")


@pytest.fixture(scope="module")
def agent_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    now = datetime.now(UTC)
    ca = create_ca("contoso", now)
    issued = issue_with_new_key(ca, Approval(Identity.of("contoso", Role.AGENT, "web01.contoso.test"), "test", now),
                                now)
    directory: Path = tmp_path_factory.mktemp("identity")
    (directory / "tls.key").write_bytes(issued.key_pem())
    (directory / "tls.crt").write_bytes(issued.certificate_pem())
    (directory / "ca.crt").write_bytes(ca.certificate_pem())
    config = directory / "agent.yaml"
    config.write_text("fqdn: web01.contoso.test\nservers: {primary: ms-0.ms.opsmgr.svc}\n"
                      "certificates: {directory: .}\nqueue: {path: queue.sqlite}\n")
    out = subprocess.run([sys.executable, "-c", PROBE, str(directory), str(config)], capture_output=True, text=True,
                         check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_the_agent_loads_no_other_component_and_no_kind_it_never_reads(agent_process: dict[str, object]) -> None:
    assert agent_process["rules"] == 1  # the pack was really applied, so its validation ran
    modules = agent_process["modules"]
    assert isinstance(modules, list)
    loaded = [m for m in modules if m.split(".")[0] in OTHER_COMPONENTS_LIBRARIES
              or m.startswith(tuple(f"{c}." for c in OTHER_COMPONENTS)) or m in OTHER_COMPONENTS or m in UNUSED_HERE]
    assert loaded == []


def test_the_agent_loads_its_identity_without_loading_cryptography(agent_process: dict[str, object]) -> None:
    assert agent_process["identity"] == "web01.contoso.test"  # the helper really checked the files
    modules = agent_process["modules"]
    assert isinstance(modules, list)
    assert [m for m in modules if m.split(".")[0] in HELPERS_ONLY or m in HELPERS_ONLY] == []


def test_the_agent_builds_no_validator_for_the_management_group_it_only_takes_an_enum_from(
        agent_process: dict[str, object]) -> None:
    # management_pack imports AlertSeverity from management_group; building that model's validator at import
    # cost the agent memory for a resource it never parses.
    assert agent_process["management_group_built"] is False


def test_the_agent_reads_its_configuration_file_without_loading_pyyaml(agent_process: dict[str, object]) -> None:
    assert agent_process["fqdn"] == "web01.contoso.test"  # the reader really parsed the file
    modules = agent_process["modules"]
    assert isinstance(modules, list)
    assert [m for m in modules if m.split(".")[0] in YAML_READER_ONLY or m in YAML_READER_ONLY] == []


def test_an_agent_outside_a_node_pod_loads_no_http_client(agent_process: dict[str, object]) -> None:
    modules = agent_process["modules"]
    assert isinstance(modules, list)
    assert [m for m in modules if m in NODE_POD_LISTING_ONLY] == []


def test_the_agent_loads_no_openssl_of_pythons_own(agent_process: dict[str, object]) -> None:
    modules = agent_process["modules"]
    assert isinstance(modules, list)
    assert [m for m in modules if m in OPENSSL] == []
    assert "hashlib" in modules  # it was imported, with its builtin digests: the test looks at the right process
