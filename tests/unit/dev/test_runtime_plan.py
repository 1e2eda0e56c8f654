"""How the local runtime turns a container spec into a local process: command, env, paths, addresses, files."""

from __future__ import annotations

from typing import Any

import pytest

from opsmgr.dev.runtime_plan import (
    ContainerConfigError,
    Rewriter,
    container_argv,
    expand_references,
    image_entrypoint,
    plan_launch,
    referenced_names,
    resolve_env,
    runs_postgres,
    token_requests,
    volume_files,
)

VENV = "/venv/bin"
PYTHON = "/venv/bin/python"
ROOT = "/pods/ns_ms-0_uid/containers/server/root"


def pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "ms-0", "namespace": "ops", "uid": "u-1", "labels": {"app": "ms"}},
            "spec": {"nodeName": "local", "serviceAccountName": "server", **spec}}


def argv(**container: Any) -> list[str]:
    return container_argv({"name": "c", **container}, venv_bin=VENV, python=PYTHON)


def test_opsmgr_command_runs_the_venv_opsmgr() -> None:
    assert argv(image="anything", command=["opsmgr", "server"], args=["--port", "5723"]) == [
        f"{VENV}/opsmgr", "server", "--port", "5723"]


def test_operator_image_without_command_uses_its_entrypoint_and_default_args() -> None:
    assert argv(image="ghcr.io/opsmgr/opsmgr:0.1.0") == [f"{VENV}/opsmgr", "--help"]
    assert argv(image="ghcr.io/opsmgr/opsmgr:0.1.0", args=["operator"]) == [f"{VENV}/opsmgr", "operator"]


def test_agent_image_without_command_runs_opsmgr_agent() -> None:
    assert argv(image="registry.local/opsmgr-agent@sha256:abc", args=["--config", "/etc/agent.yaml"]) == [
        f"{VENV}/opsmgr", "agent", "--config", "/etc/agent.yaml"]
    assert image_entrypoint("ghcr.io/opsmgr/opsmgr-agent:1") is not None


def test_other_commands_run_as_given() -> None:
    assert argv(image="busybox", command=["sh", "-c", "echo hi"]) == ["sh", "-c", "echo hi"]


def test_unknown_image_without_command_says_to_set_one() -> None:
    with pytest.raises(ContainerConfigError, match="set the container's `command`"):
        argv(image="nginx:1.27")


def test_postgres_image_runs_the_postgres_stand_in_with_the_server_arguments() -> None:
    assert argv(image="postgres:17", args=["postgres", "-c", "max_connections=300"]) == [
        PYTHON, "-m", "opsmgr.dev.runtime_postgres", "-c", "max_connections=300"]
    assert runs_postgres({"image": "docker.io/library/postgres:17-bookworm", "command": ["docker-entrypoint.sh"]})
    # An init container of the same image doing something else runs as given.
    assert not runs_postgres({"image": "postgres:17", "command": ["sh", "-c", "chown 999 /data"]})


def test_references_expand_from_earlier_variables_and_dollar_dollar_escapes() -> None:
    env = {"HOST": "ms-0", "PORT": "5723"}
    assert expand_references("$(HOST):$(PORT)", env) == "ms-0:5723"
    assert expand_references("$(MISSING) $$(HOST)", env) == "$(MISSING) $(HOST)"


def test_env_resolves_values_field_refs_secret_and_config_map_refs_in_order() -> None:
    container = {
        "name": "server",
        "envFrom": [{"configMapRef": {"name": "defaults"}, "prefix": "CFG_"}],
        "env": [
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "DSN", "valueFrom": {"secretKeyRef": {"name": "db", "key": "uri"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "defaults", "key": "mode"}}},
            {"name": "ADDRESS", "value": "$(NAME).$(NS).svc"},
            {"name": "OPTIONAL", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "x", "optional": True}}},
        ],
    }
    env = resolve_env(pod(), container, secrets={"db": {"uri": b"postgresql://db/x"}},
                      config_maps={"defaults": {"mode": b"fast"}}, pod_ip="127.0.1.5", host_ip="127.0.0.1",
                      base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "CFG_mode": "fast", "NAME": "ms-0", "NS": "ops", "IP": "127.0.1.5",
                   "APP": "ms", "DSN": "postgresql://db/x", "MODE": "fast", "ADDRESS": "ms-0.ops.svc"}


def test_missing_secret_key_names_it_and_the_fix() -> None:
    reference = {"secretKeyRef": {"name": "db", "key": "uri"}}
    container = {"name": "server", "env": [{"name": "DSN", "valueFrom": reference}]}
    with pytest.raises(ContainerConfigError, match=r"env DSN: key 'uri' in Secret 'db' does not exist; create it"):
        resolve_env(pod(), container, secrets={"db": {}}, config_maps={}, pod_ip="", host_ip="", base={})


def test_mount_paths_are_rewritten_under_the_container_root_longest_first() -> None:
    rewrite = Rewriter(ROOT, ("/etc/opsmgr", "/etc/opsmgr/tls/", "/var/lib/data"), "127.0.1.5")
    assert rewrite("--cert=/etc/opsmgr/tls/tls.crt") == f"--cert={ROOT}/etc/opsmgr/tls/tls.crt"
    assert rewrite("/etc/opsmgr") == f"{ROOT}/etc/opsmgr"
    assert rewrite("/var/lib/data:/etc/opsmgr/x.yaml") == f"{ROOT}/var/lib/data:{ROOT}/etc/opsmgr/x.yaml"
    # Only whole path components: a longer sibling and a path that merely contains the mount are left alone.
    assert rewrite("/etc/opsmgr-other /srv/etc/opsmgr") == "/etc/opsmgr-other /srv/etc/opsmgr"


def test_the_pods_own_loopback_and_wildcard_addresses_become_its_pod_ip() -> None:
    rewrite = Rewriter(ROOT, (), "127.0.1.5")
    assert rewrite("--listen=0.0.0.0:5723") == "--listen=127.0.1.5:5723"
    assert rewrite("http://localhost:8080/healthz") == "http://127.0.1.5:8080/healthz"
    assert rewrite("[::]:9090 127.0.0.1") == "127.0.1.5:9090 127.0.1.5"
    assert rewrite("127.0.0.10 localhost.example mylocalhost") == "127.0.0.10 localhost.example mylocalhost"
    assert rewrite("--allow 0.0.0.0/0") == "--allow 0.0.0.0/0"


def test_plan_rewrites_args_env_and_working_dir_and_gives_pod_ip_and_root() -> None:
    container = {
        "name": "server", "image": "ghcr.io/opsmgr/opsmgr:1", "args": ["server", "--tls-dir", "/etc/opsmgr/tls"],
        "env": [{"name": "CONFIG", "value": "/etc/opsmgr/tls/ca.crt"}, {"name": "BIND", "value": "0.0.0.0:5723"}],
        "workingDir": "/etc/opsmgr/tls",
        "volumeMounts": [{"name": "tls", "mountPath": "/etc/opsmgr/tls"}],
    }
    plan = plan_launch(pod(), container, root=ROOT, pod_ip="127.0.1.5", host_ip="127.0.0.1", secrets={},
                       config_maps={}, venv_bin=VENV, python=PYTHON, api_server=("127.0.0.1", 6443))
    assert plan.argv == [f"{VENV}/opsmgr", "server", "--tls-dir", f"{ROOT}/etc/opsmgr/tls"]
    assert plan.env["CONFIG"] == f"{ROOT}/etc/opsmgr/tls/ca.crt"
    assert plan.env["BIND"] == "127.0.1.5:5723"
    assert plan.env["POD_IP"] == "127.0.1.5"
    assert plan.env["OPSMGR_ROOT"] == ROOT
    assert plan.env["KUBERNETES_SERVICE_HOST"] == "127.0.0.1" and plan.env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert plan.env["PATH"].startswith(f"{VENV}:")
    assert plan.cwd == f"{ROOT}/etc/opsmgr/tls"
    assert plan.command(["cat", "/etc/opsmgr/tls/ca.crt"]) == ["cat", f"{ROOT}/etc/opsmgr/tls/ca.crt"]


def test_secret_volume_with_items_and_modes() -> None:
    volume = {"name": "tls", "secret": {"secretName": "tls", "defaultMode": 0o440,
                                        "items": [{"key": "tls.key", "path": "keys/server.key", "mode": 0o400},
                                                  {"key": "tls.crt", "path": "server.crt"}]}}
    files = volume_files(pod(), volume, secrets={"tls": {"tls.key": b"K", "tls.crt": b"C", "ca.crt": b"A"}},
                         config_maps={}, tokens={}, pod_ip="", host_ip="")
    assert files is not None
    assert [(f.path, f.content, oct(f.mode)) for f in files] == [
        ("keys/server.key", b"K", "0o400"), ("server.crt", b"C", "0o440")]


def test_projected_service_account_volume_holds_token_ca_and_namespace() -> None:
    volume = {"name": "kube-api-access", "projected": {"defaultMode": 0o644, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ]}}
    assert token_requests(volume) == [("token", [], 3607)]
    files = volume_files(pod(), volume, secrets={}, config_maps={"kube-root-ca.crt": {"ca.crt": b"PEM"}},
                         tokens={"token": "jwt"}, pod_ip="", host_ip="")
    assert files is not None
    assert {f.path: f.content for f in files} == {"token": b"jwt", "ca.crt": b"PEM", "namespace": b"ops"}


def test_missing_config_map_volume_fails_unless_optional_and_empty_dir_is_a_directory() -> None:
    volume = {"name": "settings", "configMap": {"name": "settings"}}
    with pytest.raises(ContainerConfigError, match="ConfigMap 'settings' does not exist"):
        volume_files(pod(), volume, secrets={}, config_maps={}, tokens={}, pod_ip="", host_ip="")
    optional = {"name": "settings", "configMap": {"name": "settings", "optional": True}}
    assert volume_files(pod(), optional, secrets={}, config_maps={}, tokens={}, pod_ip="", host_ip="") == []
    assert volume_files(pod(), {"name": "scratch", "emptyDir": {}}, secrets={}, config_maps={}, tokens={},
                        pod_ip="", host_ip="") is None


def test_referenced_names_cover_volumes_projections_env_and_env_from() -> None:
    spec = {
        "volumes": [{"name": "a", "secret": {"secretName": "s1"}},
                    {"name": "b", "projected": {"sources": [{"configMap": {"name": "c1"}},
                                                            {"secret": {"name": "s2"}}]}}],
        "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s3"}}]}],
        "containers": [{"name": "c", "env": [{"name": "X",
                                              "valueFrom": {"configMapKeyRef": {"name": "c2", "key": "k"}}}]}],
    }
    assert referenced_names(pod(**spec)) == ({"s1", "s2", "s3"}, {"c1", "c2"})


def test_container_mounting_the_service_account_token_gets_a_kubeconfig_for_it() -> None:
    volume = {"name": "kube-api-access", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}
    container = {"name": "operator", "image": "ghcr.io/opsmgr/opsmgr:1", "args": ["operator"], "volumeMounts": [
        {"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}
    plan = plan_launch(pod(volumes=[volume]), container, root=ROOT, pod_ip="127.0.1.5", host_ip="127.0.0.1",
                       secrets={}, config_maps={}, venv_bin=VENV, python=PYTHON, api_server=("127.0.0.1", 6443))
    assert plan.env["KUBECONFIG"] == f"{ROOT}/.kube/config"
    assert plan.kubeconfig is not None
    mounted = f"{ROOT}/var/run/secrets/kubernetes.io/serviceaccount"
    assert plan.kubeconfig["users"][0]["user"] == {"tokenFile": f"{mounted}/token"}
    assert plan.kubeconfig["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:6443",
                                                         "certificate-authority": f"{mounted}/ca.crt"}
    assert plan.kubeconfig["contexts"][0]["context"]["namespace"] == "ops"
    without = plan_launch(pod(), {"name": "c", "image": "busybox", "command": ["true"]}, root=ROOT, pod_ip="",
                          host_ip="", secrets={}, config_maps={}, venv_bin=VENV, python=PYTHON,
                          api_server=("127.0.0.1", 6443))
    assert without.kubeconfig is None and "KUBECONFIG" not in without.env
