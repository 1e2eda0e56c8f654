"""A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager.

The binaries are built from the Go module proxy by tools/testbin/build.sh (no container engine runs here, so kind
and k3d cannot). Flags follow controller-runtime's envtest, plus a controller manager so that garbage collection,
namespace deletion, service-account tokens and Pods-from-workloads really happen. There is no kubelet and no
scheduler: Pods stay Pending unless the local runtime plays the kubelet.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import datetime as dt
import ipaddress
import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opsmgr.dev.postgres import free_port

# Controllers the tests and the demo rely on (names as kube-controller-manager --help lists them for 1.36).
CONTROLLERS = (
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "daemonset-controller",
    "job-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "disruption-controller",
)
SERVICE_CIDR = "10.0.0.0/24"
REPO_BUILD_SCRIPT = Path(__file__).resolve().parents[3] / "tools" / "testbin" / "build.sh"


class ClusterError(RuntimeError):
    """The control plane could not be built or started; the message carries the log tail."""


def testbin_dir() -> Path:
    """The directory holding the Go-built binaries, building them first when they are missing."""
    override = os.environ.get("OPSMGR_TESTBIN")
    if override:
        return Path(override)
    if not REPO_BUILD_SCRIPT.exists():
        raise ClusterError(
            "the control-plane binaries are built by tools/testbin/build.sh in a source checkout; "
            "set OPSMGR_TESTBIN to a directory holding etcd, kube-apiserver, kube-controller-manager and kubectl"
        )
    result = subprocess.run(["bash", str(REPO_BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClusterError(f"building the control plane failed ({REPO_BUILD_SCRIPT}):\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


# --- certificates for the control plane itself (a throwaway dev CA, unrelated to a management group's CA) ---

def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _issue(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
           signer: ec.EllipticCurvePrivateKey, *, ca: bool, usages: list[x509.ObjectIdentifier],
           names: list[x509.GeneralName]) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def write_control_plane_pki(directory: Path) -> None:
    """CA, apiserver serving cert, admin and controller-manager client certs, service-account signing key."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("opsmgr-dev-cluster-ca")
    ca = _issue(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True, usages=[], names=[])
    files: dict[str, bytes] = {"ca.crt": ca.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(ca_key)}
    leaves: dict[str, tuple[x509.Name, list[x509.ObjectIdentifier], list[x509.GeneralName]]] = {
        "apiserver": (_name("kube-apiserver"), [ExtendedKeyUsageOID.SERVER_AUTH], [
            x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
        ]),
        # system:masters is bound to cluster-admin by the API server's bootstrap policy.
        "admin": (_name("opsmgr-dev-admin", "system:masters"), [ExtendedKeyUsageOID.CLIENT_AUTH], []),
        "controller-manager": (_name("system:kube-controller-manager"), [ExtendedKeyUsageOID.CLIENT_AUTH], []),
    }
    for stem, (subject, usages, names) in leaves.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, ca_name, key.public_key(), ca_key, ca=False, usages=usages, names=names)
        files[f"{stem}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{stem}.key"] = _pem_key(key)
    sa_key = ec.generate_private_key(ec.SECP256R1())
    files["sa.key"] = _pem_key(sa_key)
    files["sa.pub"] = sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    for filename, content in files.items():
        path = directory / filename
        path.write_bytes(content)
        path.chmod(0o600)


def kubeconfig_document(server: str, pki: Path, user: str, context: str = "opsmgr-dev") -> dict[str, object]:
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(f"{user}.crt"),
                                          "client-key-data": b64(f"{user}.key")}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": user, "namespace": "default"}}],
        "current-context": context,
    }


def _die_with_parent() -> None:
    # A test session killed hard must not leave an API server running on the shared machine.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class LocalCluster:
    """etcd + kube-apiserver + kube-controller-manager in `directory`, reachable through `kubeconfig`."""

    directory: Path
    bin_dir: Path = field(default_factory=testbin_dir)
    apiserver_port: int = field(default_factory=free_port)
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    detached: bool = False  # True for `opsmgr dev cluster up`: processes outlive the command that started them
    processes: list[Process] = field(default_factory=list)
    startup_seconds: float = 0.0

    @property
    def pki(self) -> Path:
        return self.directory / "pki"

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def log_files(self) -> dict[str, Path]:
        return {p.name: p.log for p in self.processes}

    def _spawn(self, name: str, args: list[str]) -> Process:
        log = self.directory / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [str(self.bin_dir / name), *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=None if self.detached else _die_with_parent,  # noqa: PLW1509
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def _wait(self, process: Process, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise ClusterError(f"{process.name} exited with code {process.popen.returncode} during start-up "
                                   f"(log: {process.log}):\n{process.tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise ClusterError(f"{process.name} was not ready within {timeout:.0f} s (log: {process.log}):\n"
                           f"{process.tail()}")

    def _https_ok(self, path: str) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        try:
            with urllib.request.urlopen(f"{self.server}{path}", context=context, timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = 120.0) -> None:
        begun = time.monotonic()
        self.directory.mkdir(parents=True, exist_ok=True)
        write_control_plane_pki(self.pki)
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig_document(self.server, self.pki, "admin")))
        self.kubeconfig.chmod(0o600)
        cm_kubeconfig = self.directory / "controller-manager.kubeconfig"
        cm_kubeconfig.write_text(yaml.safe_dump(kubeconfig_document(self.server, self.pki, "controller-manager")))
        try:
            self._start_processes(cm_kubeconfig, timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - begun

    def _start_processes(self, cm_kubeconfig: Path, timeout: float) -> None:
        etcd_url = f"http://127.0.0.1:{self.etcd_port}"
        peer_url = f"http://127.0.0.1:{self.etcd_peer_port}"
        etcd = self._spawn("etcd", [
            f"--data-dir={self.directory / 'etcd'}", "--name=default",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}", "--unsafe-no-fsync", "--log-level=warn",
        ])
        self._wait(etcd, lambda: _http_ok(f"{etcd_url}/health"), timeout)
        pki = self.pki
        apiserver = self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}", f"--cert-dir={self.directory / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}", f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=RBAC", "--allow-privileged=true", "--profiling=false",
            "--enable-priority-and-fairness=false", "--v=1",
        ])
        self._wait(apiserver, lambda: self._https_ok("/readyz"), timeout)
        manager = self._spawn("kube-controller-manager", [
            f"--kubeconfig={cm_kubeconfig}", f"--authentication-kubeconfig={cm_kubeconfig}",
            f"--authorization-kubeconfig={cm_kubeconfig}", "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--controllers={','.join(CONTROLLERS)}", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
            "--use-service-account-credentials=true", "--concurrent-gc-syncs=5", "--v=1",
        ])
        # The controller manager has no readiness endpoint we can reach without more certificates: it is
        # up once the token controller has created the default namespace's service account.
        self._wait(manager, lambda: self._service_account_exists("default", "default"), timeout)

    def _service_account_exists(self, namespace: str, name: str) -> bool:
        return self._https_ok(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                process.popen.terminate()
                try:
                    process.popen.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.popen.kill()
                    process.popen.wait()
        self.processes.clear()

    # --- detached mode, for `opsmgr dev cluster up|down|env` ---

    def save_state(self) -> None:
        state = {
            "kubeconfig": str(self.kubeconfig), "bin_dir": str(self.bin_dir), "server": self.server,
            "pids": {p.name: p.popen.pid for p in self.processes},
        }
        (self.directory / "state.json").write_text(json.dumps(state, indent=2))


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback http, our own etcd)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_detached(directory: Path, timeout: float = 15.0) -> list[str]:
    """Stop the processes a detached cluster recorded in state.json; returns the names stopped."""
    state_file = directory / "state.json"
    if not state_file.exists():
        return []
    pids: dict[str, int] = json.loads(state_file.read_text())["pids"]
    stopped = []
    for name, pid in reversed(list(pids.items())):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            stopped.append(name)
    state_file.unlink()
    return stopped


def _alive(pid: int) -> bool:
    if pid <= 0:  # kill(0 or -1, ...) would address a whole process group or every process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie we are not the parent of still answers kill(0); /proc says whether it is really gone.
    with contextlib.suppress(OSError):
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    return False


def running_state(directory: Path) -> dict[str, object] | None:
    """The recorded state of a detached cluster whose API server is still alive, else None."""
    state_file = directory / "state.json"
    if not state_file.exists():
        return None
    state: dict[str, object] = json.loads(state_file.read_text())
    pids = state.get("pids")
    if not isinstance(pids, dict) or not _alive(int(pids.get("kube-apiserver", 0))):
        return None
    return state
