"""Pure decisions of the local runtime about how one container runs as a local process.

Everything here takes plain Pod dictionaries (camelCase, as the API server returns them) and returns values; no
I/O. The rules, which the local runtime's users rely on:

* Command. `command` replaces the image's entrypoint and `args` its default arguments, as in Kubernetes. Our
  images map to the venv: image `opsmgr` (operator/Dockerfile) has entrypoint `opsmgr`, image `opsmgr-agent`
  (agent-image/Dockerfile) has `opsmgr agent`; an `opsmgr` program runs the venv's `opsmgr`. A PostgreSQL image
  runs `opsmgr.dev.runtime_postgres` (real PostgreSQL binaries). Any other command runs as given, found on a PATH
  that starts with the venv's bin directory (so `python` is the venv's).
* Paths. Each container gets a root directory, given to it as `OPSMGR_ROOT`; every volumeMount's mountPath M is
  a symlink at `$OPSMGR_ROOT/M` to the volume's directory. In command, args, env values and workingDir, a path that
  starts with a mountPath is rewritten to `$OPSMGR_ROOT` + that path. Paths outside every mount, and file contents,
  are left alone (programs with built-in default paths can prefix them with `$OPSMGR_ROOT`).
* API access. A container that mounts the projected ServiceAccount token also gets `KUBECONFIG` (unless it sets
  one) naming a kubeconfig with that token, the cluster CA and the API server, which `KUBERNETES_SERVICE_HOST`
  and `KUBERNETES_SERVICE_PORT` name too.
* Addresses. Every Pod shares the host's network but owns one loopback address, its pod IP (also `POD_IP`). The
  Pod's own loopback and wildcard addresses (`localhost`, `127.0.0.1`, `0.0.0.0`, `[::]`) in command, args and env
  values are rewritten to the pod IP, so two Pods can both listen on 5723 and talk to themselves as they would in
  their own network namespace. Wildcard binds the command line does not show (a config file's `0.0.0.0`) are
  redirected to the pod IP by a bind() shim preloaded into the process (`runtime_bindshim`, via `LD_PRELOAD`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

Pod = Mapping[str, Any]
Container = Mapping[str, Any]
SecretData = Mapping[str, Mapping[str, bytes]]  # Secret name -> key -> decoded value, of the Pod's namespace
ConfigMapData = Mapping[str, Mapping[str, bytes]]  # ConfigMap name -> key -> value (data and binaryData)

POSTGRES_MODULE = "opsmgr.dev.runtime_postgres"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TOKEN_SECONDS = 3607  # what the kubelet asks for: an hour plus a little, so refreshes are visible
DEFAULT_FILE_MODE = 0o644
KUBECONFIG_NAME = ".kube/config"
LOOPBACK_WORDS = ("localhost", "127.0.0.1", "0.0.0.0", "[::]")  # noqa: S104 (rewritten, never bound)


class ContainerConfigError(ValueError):
    """The container cannot start with what the Pod names (a missing Secret key, a bad field path)."""


@dataclass(frozen=True)
class ImageEntrypoint:
    entrypoint: tuple[str, ...]
    default_args: tuple[str, ...] = ()


def image_repository(image: str) -> str:
    """The last path component of an image reference without tag or digest: `ghcr.io/x/opsmgr-agent:1` -> name."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def is_postgres_image(image: str) -> bool:
    return "postgres" in image_repository(image).lower()


def image_entrypoint(image: str) -> ImageEntrypoint | None:
    """The ENTRYPOINT/CMD of our own images, or None for images the runtime does not know."""
    repository = image_repository(image).lower()
    if "opsmgr" not in repository:
        return None
    if "agent" in repository:
        return ImageEntrypoint(("opsmgr", "agent"))
    return ImageEntrypoint(("opsmgr",), ("--help",))


def runs_postgres(container: Container) -> bool:
    """A PostgreSQL image whose command is the image's own server entrypoint (not e.g. an init `sh -c`)."""
    if not is_postgres_image(str(container.get("image", ""))):
        return False
    command = container.get("command") or []
    return not command or PurePosixPath(command[0]).name in {"postgres", "docker-entrypoint.sh"}


def container_argv(container: Container, *, venv_bin: str, python: str) -> list[str]:
    """The local program and arguments for a container (before path and address rewriting)."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    image = str(container.get("image", ""))
    if runs_postgres(container):
        server_args = command[1:] + args if command else args
        # The official image accepts `postgres -c ...` as its arguments; the server binary name is implied.
        if server_args and server_args[0] == "postgres":
            server_args = server_args[1:]
        return [python, "-m", POSTGRES_MODULE, *server_args]
    if command:
        argv = command + args
    else:
        known = image_entrypoint(image)
        if known is None:
            raise ContainerConfigError(
                f"container {container.get('name')!r}: image {image!r} has no entrypoint the local runtime knows; "
                "set the container's `command`"
            )
        argv = [*known.entrypoint, *(args or known.default_args)]
    if argv[0] == "opsmgr":
        argv[0] = f"{venv_bin}/opsmgr"
    return argv


# --- $(VAR) references, as Kubernetes expands them in env values, command and args ---

_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand_references(text: str, env: Mapping[str, str]) -> str:
    """`$(NAME)` becomes NAME's value when defined (else stays as written); `$$` escapes a dollar."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


# --- env ---

def field_value(pod: Pod, field_path: str, pod_ip: str, host_ip: str) -> str:
    """The value of a downward-API fieldRef such as `metadata.name` or `metadata.labels['app']`."""
    metadata = pod.get("metadata", {})
    spec = pod.get("spec", {})
    subscript = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", field_path)
    if subscript:
        return str(metadata.get(subscript.group(1), {}).get(subscript.group(2), ""))
    simple: dict[str, str] = {
        "metadata.name": str(metadata.get("name", "")),
        "metadata.namespace": str(metadata.get("namespace", "")),
        "metadata.uid": str(metadata.get("uid", "")),
        "spec.nodeName": str(spec.get("nodeName", "")),
        "spec.serviceAccountName": str(spec.get("serviceAccountName", "default")),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
    }
    if field_path in simple:
        return simple[field_path]
    if field_path in {"metadata.labels", "metadata.annotations"}:
        values = metadata.get(field_path.split(".")[1], {})
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    raise ContainerConfigError(f"fieldRef.fieldPath {field_path!r} is not supported by the local runtime; use one "
                               f"of {', '.join(sorted(simple))} or metadata.labels['...']")


def _key_value(kind: str, ref: Mapping[str, Any], store: Mapping[str, Mapping[str, bytes]],
               where: str) -> str | None:
    name, key = ref.get("name", ""), ref.get("key", "")
    values = store.get(name)
    if values is None or key not in values:
        if ref.get("optional"):
            return None
        missing = f"{kind} {name!r}" if values is None else f"key {key!r} in {kind} {name!r}"
        raise ContainerConfigError(f"{where}: {missing} does not exist; create it or mark the reference optional")
    return values[key].decode("utf-8", errors="replace")


def _env_from(container: Container, secrets: SecretData, config_maps: ConfigMapData) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, ref_key, store in (("ConfigMap", "configMapRef", config_maps), ("Secret", "secretRef", secrets)):
            ref = source.get(ref_key)
            if ref is None:
                continue
            values = store.get(ref.get("name", ""))
            if values is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f"container {container.get('name')!r} envFrom: {kind} "
                                           f"{ref.get('name')!r} does not exist; create it or mark the reference "
                                           "optional")
            env |= {prefix + key: value.decode("utf-8", errors="replace") for key, value in values.items()}
    return env


def _value_from(pod: Pod, container: Container, source: Mapping[str, Any], where: str, *, secrets: SecretData,
                config_maps: ConfigMapData, pod_ip: str, host_ip: str) -> str | None:
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
    if "secretKeyRef" in source:
        return _key_value("Secret", source["secretKeyRef"], secrets, where)
    if "configMapKeyRef" in source:
        return _key_value("ConfigMap", source["configMapKeyRef"], config_maps, where)
    if "resourceFieldRef" in source:
        return resource_value(container, source["resourceFieldRef"])
    raise ContainerConfigError(f"{where}: valueFrom {sorted(source)} is not supported by the local runtime")


def resolve_env(pod: Pod, container: Container, *, secrets: SecretData, config_maps: ConfigMapData,
                pod_ip: str, host_ip: str, base: Mapping[str, str]) -> dict[str, str]:
    """The container's environment: `base`, then envFrom, then env in order, with $(VAR) references expanded."""
    env = dict(base) | _env_from(container, secrets, config_maps)
    for variable in container.get("env") or []:
        name = variable["name"]
        if "valueFrom" not in variable:
            env[name] = expand_references(str(variable.get("value", "")), env)
            continue
        value = _value_from(pod, container, variable["valueFrom"], f"container {container.get('name')!r} env {name}",
                            secrets=secrets, config_maps=config_maps, pod_ip=pod_ip, host_ip=host_ip)
        if value is not None:
            env[name] = value
    return env


def mount_sub_path(pod: Pod, container: Container, mount: Mapping[str, Any], *, secrets: SecretData,
                   config_maps: ConfigMapData, pod_ip: str, host_ip: str) -> str | None:
    """A volumeMount's subPath, or its subPathExpr with $(VAR) expanded from the container's own env."""
    if mount.get("subPath"):
        return str(mount["subPath"])
    expression = mount.get("subPathExpr")
    if not expression:
        return None
    env = resolve_env(pod, container, secrets=secrets, config_maps=config_maps, pod_ip=pod_ip, host_ip=host_ip,
                      base={})
    return expand_references(str(expression), env)


def resource_value(container: Container, ref: Mapping[str, Any]) -> str:
    """A resourceFieldRef: the limit or request as written, else the request, else `0` (no node limit here)."""
    resource = str(ref.get("resource", ""))
    section, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    value = (resources.get(section) or {}).get(name) or (resources.get("requests") or {}).get(name)
    return str(value) if value is not None else "0"


# --- path and address rewriting ---

@dataclass(frozen=True)
class Rewriter:
    """Rewrites mount paths to the container's root and the Pod's own loopback addresses to its pod IP."""

    root: str
    mount_paths: tuple[str, ...]
    pod_ip: str
    _paths: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _addresses: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Longest first, so /etc/opsmgr/tls wins over /etc/opsmgr when both are mounts.
        paths = sorted({p.rstrip("/") or "/" for p in self.mount_paths}, key=len, reverse=True)
        pattern = None
        if paths:
            alternatives = "|".join(re.escape(p) for p in paths)
            pattern = re.compile(rf"(?<![\w./-])(?:{alternatives})(?=/|$|[^\w.-])")
        object.__setattr__(self, "_paths", pattern)
        words = "|".join(re.escape(w) for w in LOOPBACK_WORDS)
        # Not inside longer names or addresses, and not a CIDR such as 0.0.0.0/0 (an allow-list, not a bind).
        object.__setattr__(self, "_addresses", re.compile(rf"(?<![\w.-])(?:{words})(?![\w-]|\.\w|/\d)"))

    def __call__(self, text: str) -> str:
        if self._paths is not None:
            text = self._paths.sub(lambda m: self.root + m.group(0), text)
        return self._addresses.sub(self.pod_ip, text)

    def path(self, text: str) -> str:
        """Only the path rule (for workingDir)."""
        return self._paths.sub(lambda m: self.root + m.group(0), text) if self._paths is not None else text


def service_account_kubeconfig(pod: Pod, container: Container, *, root: str,
                               api_server: tuple[str, int]) -> dict[str, Any] | None:
    """A kubeconfig for the container's mounted ServiceAccount token, or None when it mounts none.

    In-cluster clients read the token from a fixed path outside `$OPSMGR_ROOT`; pointed at this file by
    `KUBECONFIG`, clients that fall back to a kubeconfig (kopf, kubernetes_asyncio, kubectl) use the same token.
    """
    volumes = {v["name"]: v for v in pod.get("spec", {}).get("volumes") or []}
    for mount in container.get("volumeMounts") or []:
        sources = (volumes.get(mount["name"], {}).get("projected") or {}).get("sources") or []
        token = next((s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s), None)
        if token is None or mount.get("subPath"):
            continue
        base = root + mount["mountPath"].rstrip("/")
        cluster: dict[str, Any] = {"server": f"https://{api_server[0]}:{api_server[1]}"}
        for source in sources:
            items = (source.get("configMap") or {}).get("items") or []
            ca = next((i.get("path", i["key"]) for i in items if i["key"] == "ca.crt"), None)
            if ca:
                cluster["certificate-authority"] = f"{base}/{ca}"
        namespace = pod.get("metadata", {}).get("namespace", "default")
        return {"apiVersion": "v1", "kind": "Config", "current-context": "pod",
                "clusters": [{"name": "pod", "cluster": cluster}],
                "users": [{"name": "pod", "user": {"tokenFile": f"{base}/{token['path']}"}}],
                "contexts": [{"name": "pod", "context": {"cluster": "pod", "user": "pod", "namespace": namespace}}]}
    return None


@dataclass(frozen=True)
class LaunchPlan:
    argv: list[str]
    env: dict[str, str]
    cwd: str
    postgres: bool
    rewrite: Rewriter
    kubeconfig: dict[str, Any] | None = None  # to be written at $OPSMGR_ROOT/KUBECONFIG_NAME

    def command(self, words: Sequence[str]) -> list[str]:
        """An exec probe's command, expanded and rewritten like the container's own."""
        return [self.rewrite(expand_references(word, self.env)) for word in words]


def plan_launch(pod: Pod, container: Container, *, root: str, pod_ip: str, host_ip: str, secrets: SecretData,
                config_maps: ConfigMapData, venv_bin: str, python: str,
                api_server: tuple[str, int], extra_path: Sequence[str] = (), preload: str | None = None) -> LaunchPlan:
    """Everything needed to start `container` of `pod` as a local process whose root directory is `root`."""
    metadata = pod.get("metadata", {})
    spec = pod.get("spec", {})
    api_host, api_port = api_server
    base = {
        "PATH": ":".join([venv_bin, *extra_path, SYSTEM_PATH]),
        "HOME": root,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",  # log files show output as it happens, as a container's log does
        "HOSTNAME": str(spec.get("hostname") or metadata.get("name", "")),
        "POD_IP": pod_ip,
        "OPSMGR_ROOT": root,
        "KUBERNETES_SERVICE_HOST": api_host,
        "KUBERNETES_SERVICE_PORT": str(api_port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(api_port),
    }
    env = resolve_env(pod, container, secrets=secrets, config_maps=config_maps, pod_ip=pod_ip, host_ip=host_ip,
                      base=base)
    rewrite = Rewriter(root, tuple(m["mountPath"] for m in container.get("volumeMounts") or []), pod_ip)
    protected = set(base) - {"HOSTNAME"}
    env = {name: value if name in protected else rewrite(value) for name, value in env.items()}
    argv = [rewrite(expand_references(word, env)) for word in container_argv(container, venv_bin=venv_bin,
                                                                               python=python)]
    working_dir = container.get("workingDir")
    cwd = rewrite.path(working_dir) if working_dir else root
    if preload:
        env["LD_PRELOAD"] = " ".join(filter(None, [preload, env.get("LD_PRELOAD")]))
    kubeconfig = service_account_kubeconfig(pod, container, root=root, api_server=api_server)
    if kubeconfig is not None:
        env.setdefault("KUBECONFIG", f"{root}/{KUBECONFIG_NAME}")
    return LaunchPlan(argv, env, cwd, runs_postgres(container), rewrite, kubeconfig)


# --- volumes as files ---

@dataclass(frozen=True)
class ProjectedFile:
    path: str  # relative to the volume directory
    content: bytes
    mode: int


def _select(values: Mapping[str, bytes], items: Sequence[Mapping[str, Any]] | None, default_mode: int,
            where: str, optional: bool) -> list[ProjectedFile]:
    if not items:
        return [ProjectedFile(key, value, default_mode) for key, value in sorted(values.items())]
    files = []
    for item in items:
        key = item["key"]
        if key not in values:
            if optional:
                continue
            raise ContainerConfigError(f"{where}: key {key!r} is not there; add it or drop it from `items`")
        files.append(ProjectedFile(item.get("path", key), values[key], int(item.get("mode", default_mode))))
    return files


def decode_secret(secret: Mapping[str, Any]) -> dict[str, bytes]:
    values = {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
    values |= {key: str(value).encode() for key, value in (secret.get("stringData") or {}).items()}
    return values


def decode_config_map(config_map: Mapping[str, Any]) -> dict[str, bytes]:
    values = {key: str(value).encode() for key, value in (config_map.get("data") or {}).items()}
    values |= {key: base64.b64decode(value) for key, value in (config_map.get("binaryData") or {}).items()}
    return values


def _reference(kind: str, source: Mapping[str, Any], *, name_key: str, store: Mapping[str, Mapping[str, bytes]],
               default_mode: int, where: str) -> list[ProjectedFile]:
    name = source.get(name_key, "")
    optional = bool(source.get("optional"))
    values = store.get(name)
    if values is None:
        if optional:
            return []
        raise ContainerConfigError(f"{where}: {kind} {name!r} does not exist; create it or mark it optional")
    return _select(values, source.get("items"), default_mode, f"{where} ({kind} {name!r})", optional)


def volume_files(pod: Pod, volume: Mapping[str, Any], *, secrets: SecretData, config_maps: ConfigMapData,
                 tokens: Mapping[str, str], pod_ip: str, host_ip: str) -> list[ProjectedFile] | None:
    """The files a Secret, ConfigMap, downwardAPI or projected volume holds; None for directory volumes.

    `tokens` maps a projected volume's token path to the token the runtime obtained by TokenRequest.
    """
    where = f"volume {volume.get('name')!r}"
    if "secret" in volume:
        source = volume["secret"]
        mode = int(source.get("defaultMode", DEFAULT_FILE_MODE))
        return _reference("Secret", source, name_key="secretName", store=secrets, default_mode=mode, where=where)
    if "configMap" in volume:
        source = volume["configMap"]
        mode = int(source.get("defaultMode", DEFAULT_FILE_MODE))
        return _reference("ConfigMap", source, name_key="name", store=config_maps, default_mode=mode,
                          where=where)
    if "downwardAPI" in volume:
        source = volume["downwardAPI"]
        return _downward(pod, source.get("items") or [], int(source.get("defaultMode", DEFAULT_FILE_MODE)),
                         pod_ip, host_ip)
    if "projected" in volume:
        source = volume["projected"]
        mode = int(source.get("defaultMode", DEFAULT_FILE_MODE))
        files: list[ProjectedFile] = []
        for projection in source.get("sources") or []:
            if "secret" in projection:
                files += _reference("Secret", projection["secret"], name_key="name", store=secrets,
                                    default_mode=mode, where=where)
            elif "configMap" in projection:
                files += _reference("ConfigMap", projection["configMap"], name_key="name", store=config_maps,
                                    default_mode=mode, where=where)
            elif "downwardAPI" in projection:
                files += _downward(pod, projection["downwardAPI"].get("items") or [], mode, pod_ip, host_ip)
            elif "serviceAccountToken" in projection:
                path = projection["serviceAccountToken"]["path"]
                if path not in tokens:
                    raise ContainerConfigError(f"{where}: the service account token for {path!r} is not issued yet")
                files.append(ProjectedFile(path, tokens[path].encode(), mode))
        return files
    return None


def _downward(pod: Pod, items: Sequence[Mapping[str, Any]], mode: int, pod_ip: str,
              host_ip: str) -> list[ProjectedFile]:
    files = []
    for item in items:
        if "fieldRef" not in item:
            continue  # resourceFieldRef files carry container limits; nothing of ours reads them
        value = field_value(pod, item["fieldRef"]["fieldPath"], pod_ip, host_ip)
        files.append(ProjectedFile(item["path"], value.encode(), int(item.get("mode", mode))))
    return files


def token_requests(volume: Mapping[str, Any]) -> list[tuple[str, list[str], int]]:
    """(path, audiences, expirationSeconds) of each serviceAccountToken source in a projected volume."""
    requests = []
    for projection in (volume.get("projected") or {}).get("sources") or []:
        token = projection.get("serviceAccountToken")
        if token is not None:
            audience = token.get("audience")
            requests.append((token["path"], [audience] if audience else [],
                             int(token.get("expirationSeconds", DEFAULT_TOKEN_SECONDS))))
    return requests


def _volume_references(volume: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    secrets: set[str] = set()
    config_maps: set[str] = set()
    sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
    for source in sources:
        if "secret" in source:
            secrets.add(source["secret"].get("secretName") or source["secret"].get("name", ""))
        if "configMap" in source:
            config_maps.add(source["configMap"].get("name", ""))
    return secrets, config_maps


def referenced_names(pod: Pod) -> tuple[set[str], set[str]]:
    """Names of the Secrets and ConfigMaps a Pod's volumes and env refer to (its volumes follow their changes)."""
    secrets: set[str] = set()
    config_maps: set[str] = set()
    spec = pod.get("spec", {})
    for volume in spec.get("volumes") or []:
        volume_secrets, volume_config_maps = _volume_references(volume)
        secrets |= volume_secrets
        config_maps |= volume_config_maps
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        references = [*(container.get("envFrom") or []),
                      *((v.get("valueFrom") or {}) for v in container.get("env") or [])]
        for reference in references:
            for key in ("secretRef", "secretKeyRef"):
                if key in reference:
                    secrets.add(reference[key].get("name", ""))
            for key in ("configMapRef", "configMapKeyRef"):
                if key in reference:
                    config_maps.add(reference[key].get("name", ""))
    return secrets, config_maps
