"""Every child of a ManagementGroup, Agent and Gateway, built without a cluster from the example resources."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from opsmgr.api import Agent, Gateway, ManagementGroup
from opsmgr.api.agent import Connection, Health
from opsmgr.operator import render
from opsmgr.operator.names import CONFIG_HASH_ANNOTATION, GROUP_LABEL, GroupNames, bounded
from opsmgr.server.agent_status import ObservedAgent, status_patch
from opsmgr.server.config import WatcherConfig
from opsmgr.server.heartbeat_watcher import HeartbeatStatus

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
UID = "0b6f2d9e-0000-4000-8000-000000000001"


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    document["metadata"] |= {"namespace": "ops", "uid": UID, "generation": 1}
    return document


def group() -> ManagementGroup:
    return ManagementGroup.from_body(example("management-group.yaml"))


def owned_by_group(manifest: dict[str, Any]) -> bool:
    return bool(manifest["metadata"]["ownerReferences"] == [{
        "apiVersion": "opsmgr.io/v1alpha1", "kind": "ManagementGroup", "name": "production", "uid": UID,
        "controller": True, "blockOwnerDeletion": True}])


def test_every_server_child_is_owned_by_the_group_and_labelled_with_it() -> None:
    children = render.server_children(group(), "opsmgr:1", "abc")
    kinds = sorted(c["kind"] for c in children)
    assert kinds == ["PodDisruptionBudget", "Role", "RoleBinding", "Service", "Service", "Service", "Service",
                     "ServiceAccount", "StatefulSet"]
    for child in children:
        assert owned_by_group(child), child["kind"]
        assert child["metadata"]["labels"][GROUP_LABEL] == "production"
        assert child["metadata"]["namespace"] == "ops"


def test_the_server_statefulset_runs_opsmgr_server_with_its_own_config_and_rolls_on_config_change() -> None:
    statefulset = render.render_server_statefulset(group(), "opsmgr:1", "hash-1")
    spec = statefulset["spec"]
    assert spec["replicas"] == 2 and spec["serviceName"] == "production-servers"
    pod = spec["template"]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["opsmgr", "server", "--config", "/etc/opsmgr/$(POD_NAME).yaml"]
    assert container["ports"][0] == {"name": "agents", "containerPort": 5723, "protocol": "TCP"}
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert pod["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == "hash-1"
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    sources = pod["spec"]["volumes"][0]["projected"]["sources"]
    assert [next(iter(s.values()))["name"] for s in sources] == [
        "production-server-config", "production-server-tls", "production-directory", "production-revocations"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_each_replica_gets_a_service_named_like_its_pod_and_a_shared_agent_service_on_5723() -> None:
    services = render.render_replica_services(group())
    assert [s["metadata"]["name"] for s in services] == ["production-server-0", "production-server-1"]
    assert services[1]["spec"]["selector"] == {"statefulset.kubernetes.io/pod-name": "production-server-1"}
    shared = render.render_agent_service(group())
    assert shared["metadata"]["name"] == "production-agents" and shared["spec"]["ports"][0]["port"] == 5723
    headless = render.render_headless_service(group())
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert render.agent_endpoint(group()) == "production-agents.ops.svc:5723"


def test_the_disruption_budget_allows_one_server_down() -> None:
    budget = render.render_pod_disruption_budget(group())
    assert budget["spec"]["maxUnavailable"] == 1


def test_server_config_matches_the_servers_config_file_and_names_files_relative_to_itself() -> None:
    uris = render.DatabaseUris("postgresql://u:p@db/operational", "postgresql://u:p@db/warehouse")
    config = render.server_config(group(), "production-server-1", uris)
    assert config["name"] == "production-server-1.production-servers.ops.svc"
    assert config["tls"] == {"certificate": "production-server-1.crt", "key": "production-server-1.key",
                             "ca_bundle": "ca.crt"}
    assert config["databases"] == {"operational_dsn": uris.operational, "warehouse_dsn": uris.warehouse}
    assert config["listen"]["port"] == 5723 and config["directory"] == {"file": "directory.yaml"}
    secret = render.render_server_config_secret(group(), uris)
    files = render.decode(secret)
    assert sorted(files) == ["production-server-0.yaml", "production-server-1.yaml"]
    assert yaml.safe_load(files["production-server-1.yaml"]) == config


def _heartbeat_writes(managed: ManagementGroup, beats: int) -> tuple[float, int]:
    """Run `beats` heartbeats through the servers' status rule as rendered for `managed`: the oldest
    lastHeartbeatTime `kubectl get agents` showed (seconds), and how many heartbeats were written.
    """
    uris = render.DatabaseUris("postgresql://u:p@db/operational", "postgresql://u:p@db/warehouse")
    watcher = WatcherConfig.model_validate(render.server_config(managed, "production-server-0", uris)["watcher"])
    interval = managed.spec.heartbeat.interval_seconds
    every = timedelta(seconds=watcher.status_heartbeat_seconds)
    stored: dict[str, Any] = {}
    oldest, writes = 0.0, 0
    start = datetime(2026, 1, 1, 12, 0, 0, 700000, tzinfo=UTC)
    for beat in range(beats):
        # Heartbeats a little early, as a busy agent's or a skewed clock's are.
        at = start + timedelta(seconds=beat * interval - beat * 0.05)
        observed = ObservedAgent(heartbeat=HeartbeatStatus.OK, connection=Connection.CONNECTED, server="s-0",
                                 last_heartbeat=at, queue=None, maintenance=False, health=Health.HEALTHY)
        patch = status_patch(stored, observed, at, heartbeat_every=every)
        writes += "lastHeartbeatTime" in patch
        stored |= patch
        shown = datetime.fromisoformat(stored["lastHeartbeatTime"].replace("Z", "+00:00"))
        # Just before the next heartbeat arrives the status is at its oldest.
        oldest = max(oldest, (at + timedelta(seconds=interval) - shown).total_seconds())
    return oldest, writes


def test_a_default_group_does_not_write_status_per_heartbeat() -> None:
    production = group()
    assert production.spec.heartbeat.status_update_seconds == 180
    oldest, writes = _heartbeat_writes(production, 30)
    # 30 heartbeats a minute apart: the first, then one per 180 s (every third), never each one.
    assert writes <= 11
    assert oldest <= 180 + production.spec.heartbeat.interval_seconds


def test_the_demo_group_shows_a_last_heartbeat_younger_than_two_intervals() -> None:
    demo: dict[str, Any] = yaml.safe_load((EXAMPLES / "demo" / "management-group.yaml").read_text())
    demo["metadata"] |= {"namespace": "demo", "uid": UID, "generation": 1}
    managed = ManagementGroup.from_body(demo)
    oldest, writes = _heartbeat_writes(managed, 20)
    assert writes == 20
    assert oldest < 2 * managed.spec.heartbeat.interval_seconds - 5


def test_the_ca_secret_is_not_owned_so_deleting_the_group_keeps_the_trust_root() -> None:
    secret = render.render_ca_secret(group(), b"CERT", b"KEY", b"BUNDLE", "2035-01-01T00:00:00+00:00")
    assert "ownerReferences" not in secret["metadata"]
    assert secret["type"] == "kubernetes.io/tls"
    assert render.decode(secret) == {"ca.crt": b"BUNDLE", "tls.crt": b"CERT", "tls.key": b"KEY"}


def test_server_tls_secret_holds_each_replicas_pair_and_the_bundle() -> None:
    secret = render.render_server_tls_secret(group(), {"production-server-0": (b"C0", b"K0")}, b"CA")
    assert render.decode(secret) == {"ca.crt": b"CA", "production-server-0.crt": b"C0",
                                     "production-server-0.key": b"K0"}
    assert owned_by_group(secret)


def test_embedded_database_is_one_postgres_with_generated_credentials_and_a_volume() -> None:
    statefulset = render.render_database_statefulset(group(), "postgres:16")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "postgres:16"
    env = {e["name"]: e for e in container["env"]}
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "production-db-credentials",
                                                                     "key": "password"}
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    credentials = render.decode(render.render_database_credentials(group(), "pw"))
    assert credentials["operational-uri"] == b"postgresql://opsmgr:pw@production-db.ops.svc:5432/operational"
    assert credentials["warehouse-uri"] == b"postgresql://opsmgr:pw@production-db.ops.svc:5432/warehouse"


def test_the_migration_job_creates_and_migrates_both_databases_from_secret_references() -> None:
    job = render.render_migration_job(group(), "opsmgr:1", "0123456789abcdef")
    assert job["metadata"]["name"] == "production-migrate-0123456789"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:4] == ["opsmgr", "db", "migrate", "--create-database"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert refs == {"OPSMGR_OPERATIONAL_DSN": {"name": "production-db-credentials", "key": "operational-uri"},
                    "OPSMGR_WAREHOUSE_DSN": {"name": "production-db-credentials", "key": "warehouse-uri"}}


def test_an_external_database_migrates_from_the_users_secrets() -> None:
    document = example("management-group.yaml")
    document["spec"]["database"] = {"external": {"operational": {"name": "pg-app"},
                                                 "warehouse": {"name": "dw-app", "key": "dsn"}}}
    external = ManagementGroup.from_body(document)
    assert render.migration_sources(external) == ({"name": "pg-app", "key": "uri"}, {"name": "dw-app", "key": "dsn"})


def test_directory_and_revocations_are_what_the_server_files_expect() -> None:
    directory = render.render_directory_config_map(group(), [("b.example.com", "Pending"),
                                                             ("a.example.com", "Approved")],
                                                   [("gw.example.com", "Approved")])
    document = yaml.safe_load(directory["data"]["directory.yaml"])
    assert document == {"agents": [{"fqdn": "a.example.com", "approval": "Approved"},
                                   {"fqdn": "b.example.com", "approval": "Pending"}],
                        "gateways": [{"fqdn": "gw.example.com", "approval": "Approved"}]}
    revocations = render.render_revocations_config_map(group(), [{"serial": "ab", "reason": "unspecified",
                                                                  "revokedAt": "2026-01-01T00:00:00+00:00"}])
    assert yaml.safe_load(revocations["data"]["revocations.yaml"])["revocations"][0]["serial"] == "ab"


def test_an_agent_certificate_secret_is_owned_by_its_agent() -> None:
    agent = Agent.from_body(example("agent-node.yaml"))
    secret = render.render_agent_tls_secret(agent, "production", b"C", b"K", b"CA")
    assert secret["metadata"]["name"] == "worker-1-tls"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "Agent"


def test_a_gateway_relays_to_its_assigned_servers_through_a_service_of_its_type() -> None:
    gateway = Gateway.from_body(example("gateway.yaml"))
    config = render.gateway_config(gateway, group(), "production-server-0", ["production-server-1"])
    assert config["servers"] == ["production-server-0.ops.svc:5723", "production-server-1.ops.svc:5723"]
    deployment = render.render_gateway_deployment(gateway, "production", "opsmgr:1", "h", "dmz-gateway-tls")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["opsmgr", "gateway"]
    # Ready means the gateway reaches a management server: /healthz on the port its config names.
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": config["metrics"]["port"]}
    service = render.render_gateway_service(gateway, "production")
    assert service["spec"]["type"] == "LoadBalancer"


def test_long_names_are_cut_with_a_hash_and_stay_distinct() -> None:
    long = "a" * 70
    assert len(bounded(long)) == 63 and bounded(long) != bounded("a" * 69 + "b")
    names = GroupNames("g" * 63, "ops")
    assert len(names.server_pod(63)) <= 63


def test_the_directory_is_applied_again_only_when_the_cluster_copy_is_missing_edited_or_out_of_date() -> None:
    desired = render.render_directory_config_map(group(), [("a.example.com", "Approved")], [])
    live = {**desired, "metadata": {**desired["metadata"], "resourceVersion": "7",
                                    "labels": {**desired["metadata"]["labels"], "added-by": "someone"}}}
    assert render.config_map_current(live, desired)
    assert not render.config_map_current(None, desired)
    assert not render.config_map_current({**live, "data": {render.DIRECTORY_FILE: "agents: []\n"}}, desired)
    unlabelled = {**live, "metadata": {**live["metadata"], "labels": {}}}
    assert not render.config_map_current(unlabelled, desired)
    orphaned = {**live, "metadata": {**live["metadata"], "ownerReferences": []}}
    assert not render.config_map_current(orphaned, desired)
    newer = render.render_directory_config_map(group(), [("a.example.com", "Approved"), ("b.example.com", "Pending")],
                                               [])
    assert not render.config_map_current(live, newer)
    # The text is what the pure-Python dumper wrote before: servers read both the same way.
    assert yaml.safe_load(desired["data"][render.DIRECTORY_FILE]) == {
        "agents": [{"fqdn": "a.example.com", "approval": "Approved"}], "gateways": []}
