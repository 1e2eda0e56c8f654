"""The agent's identity as the long-running process holds it: the PEM bytes gRPC needs and the plain facts renewal
needs (name, serial, validity), with no certificate library loaded.

Everything that parses, checks or makes keys and certificates runs in a short-lived helper process
(`python -m opsmgr.agent.identity_helper`, see `identity_store` for the checks and the renewal journal). This is
Operations Manager's split between the long-lived HealthService and the short-lived MonitoringHost processes it
starts for heavier work: cryptography costs about 8 MB resident (it carries its own OpenSSL), which the agent
would otherwise hold for its whole life to use for a second per connection or renewal. The channel's own TLS is
gRPC's and needs only the PEM bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from opsmgr.pki.names import CA_FILE, CERTIFICATE_FILE, KEY_FILE

HELPER = "opsmgr.agent.identity_helper"
HELPER_TIMEOUT_SECONDS = 60.0
COMMIT_MARKER = "renewal.commit"
PENDING_SUFFIX = ".new"
IDENTITY_FILES = (KEY_FILE, CERTIFICATE_FILE, CA_FILE)


class IdentityError(RuntimeError):
    """The identity directory cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class AgentIdentity:
    """A checked identity: tls.key matches the leaf of tls.crt; `chain_pem` starts with that leaf."""

    name: str  # the certificate's CN, the agent's FQDN
    serial: str  # hexadecimal
    not_before: datetime
    not_after: datetime
    key_pem: bytes
    chain_pem: bytes
    trust_pem: bytes


@dataclass(frozen=True)
class RenewalRequest:
    key_pem: bytes  # kept in memory only until the Renewal answering this request is installed
    csr_pem: bytes


class IdentityFiles:
    """tls.crt, tls.key and ca.crt in one directory, read fresh for every connection so a trust update or renewal
    applies without a restart. The helper checks them only when their bytes changed since the last check."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._checked: tuple[tuple[bytes, ...], AgentIdentity | IdentityError] | None = None

    def load(self) -> AgentIdentity:
        # With a journal open the helper first finishes or discards an interrupted renewal: nothing to compare.
        before = None if self._journal_open() else read_identity_files(self.directory)
        if before is not None and self._checked is not None and self._checked[0] == before:
            return _result(self._checked[1])
        try:
            outcome: AgentIdentity | IdentityError = identity_from_wire(ask_helper(
                {"op": "load", "directory": str(self.directory)}))
        except IdentityError as exc:
            outcome = exc
        # Remembered only for the bytes the helper saw: a renewal installed (from the stream) while a failback
        # probe's check ran would otherwise pin the old identity to the new files until they change again.
        if before is not None and _unchanged(self.directory, before):
            self._checked = (before, outcome)
        return _result(outcome)

    def request_renewal(self, fqdn: str) -> RenewalRequest:
        """A new key and a CSR for `fqdn` signed with it."""
        answer = ask_helper({"op": "renewal_request", "fqdn": fqdn})
        return RenewalRequest(pem_bytes(answer["key_pem"]), pem_bytes(answer["csr_pem"]))

    def install_renewal(self, current: AgentIdentity, key_pem: bytes, certificate_pem: bytes,
                        trust_pem: bytes) -> None:
        """Check the Renewal (our new key, our identity, a chain to the trust) and replace the three files."""
        ask_helper({"op": "install_renewal", "directory": str(self.directory), "current": identity_to_wire(current),
                    "key_pem": pem_text(key_pem), "certificate_pem": pem_text(certificate_pem),
                    "trust_pem": pem_text(trust_pem)})

    def write_trust(self, trust_pem: bytes) -> None:
        """Check and replace ca.crt alone (a TrustUpdate)."""
        ask_helper({"op": "write_trust", "directory": str(self.directory), "trust_pem": pem_text(trust_pem)})

    def _journal_open(self) -> bool:
        return (self.directory / COMMIT_MARKER).exists() or any(
            (self.directory / f"{name}{PENDING_SUFFIX}").exists() for name in IDENTITY_FILES)



def read_identity_files(directory: Path) -> tuple[bytes, ...]:
    """The bytes of IDENTITY_FILES, in that order."""
    try:
        return tuple((directory / name).read_bytes() for name in IDENTITY_FILES)
    except OSError as exc:
        raise IdentityError(f"certificates.directory: {exc.filename} cannot be read ({exc.strerror}): run "
                            "`opsmgr certimport` or enroll the agent so tls.crt, tls.key and ca.crt exist") from exc


def _unchanged(directory: Path, before: tuple[bytes, ...]) -> bool:
    try:
        return read_identity_files(directory) == before
    except IdentityError:  # gone since: the next load says so
        return False


def _result(outcome: AgentIdentity | IdentityError) -> AgentIdentity:
    if isinstance(outcome, IdentityError):
        raise IdentityError(str(outcome))
    return outcome


def ask_helper(request: dict[str, Any]) -> dict[str, Any]:
    """Run one request in a fresh helper process; its error message (file, problem, fix) becomes an IdentityError."""
    command = [sys.executable, "-m", HELPER]
    try:
        done = subprocess.run(command, input=json.dumps(request), capture_output=True, text=True, check=False,
                              timeout=HELPER_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IdentityError(f"the agent's identity helper `{' '.join(command)}` did not run: {exc}. Fix: check "
                            "that the agent's installation is complete and the machine is not out of memory") from exc
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise IdentityError(f"the agent's identity helper `{' '.join(command)}` failed (exit code {done.returncode}: "
                            f"{last}). Fix: check that the agent's installation is complete")
    if "error" in answer:
        raise IdentityError(str(answer["error"]))
    return answer


# PEM is ASCII, but a peer may send any bytes: Latin-1 carries every byte through JSON unchanged.
def pem_text(data: bytes) -> str:
    return data.decode("latin-1")


def pem_bytes(text: str) -> bytes:
    return text.encode("latin-1")


def identity_to_wire(identity: AgentIdentity) -> dict[str, str]:
    return {"name": identity.name, "serial": identity.serial, "not_before": identity.not_before.isoformat(),
            "not_after": identity.not_after.isoformat(), "key_pem": pem_text(identity.key_pem),
            "chain_pem": pem_text(identity.chain_pem), "trust_pem": pem_text(identity.trust_pem)}


def identity_from_wire(data: dict[str, Any]) -> AgentIdentity:
    return AgentIdentity(name=data["name"], serial=data["serial"],
                         not_before=datetime.fromisoformat(data["not_before"]),
                         not_after=datetime.fromisoformat(data["not_after"]), key_pem=pem_bytes(data["key_pem"]),
                         chain_pem=pem_bytes(data["chain_pem"]), trust_pem=pem_bytes(data["trust_pem"]))
