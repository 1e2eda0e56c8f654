"""`opsmgr enroll`: get this agent's first certificate from the enrollment endpoint (default port 5724).

A VM presents a join token (`opsmgr token create`), a pod or node agent its projected ServiceAccount token. The
key is generated here and never leaves the machine; while the request is pending it waits in the identity
directory as `enroll.key` (0600), so running `opsmgr enroll` again after a restart continues with the same key.
The issued certificate, key and trust bundle are written as tls.crt, tls.key and ca.crt (0600) by IdentityStore.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click
import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from grpc import aio

from opsmgr import __version__
from opsmgr.agent.identity import IdentityError
from opsmgr.agent.identity_store import IdentityStore
from opsmgr.pki import CertificateError, TrustBundle, build_csr, generate_private_key, verify_chain
from opsmgr.pki.keys import PrivateKey, same_public_key
from opsmgr.pki.names import normalize_fqdn
from opsmgr.pki.pem import load_certificates, load_private_key, private_key_pem
from opsmgr.protocol import enrollment_pb2 as pb
from opsmgr.protocol.enrollment import DEFAULT_TOKEN_PATH, ENROLLMENT_PORT, METHOD

PENDING_KEY = "enroll.key"
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_STILL_PENDING = 4
# Reconnect as the agent channel does (OTel's schedule): 5 s, x1.5, at most 30 s, with jitter.
BACKOFF_INITIAL, BACKOFF_FACTOR, BACKOFF_MAX = 5.0, 1.5, 30.0
CALL_TIMEOUT_SECONDS = 30.0


class EnrollmentRefused(RuntimeError):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(f"enrollment refused ({reason}): {message}")


class StillPending(RuntimeError):
    """The wait ended before a person approved the Agent; the key stays for the next run."""


@dataclass(frozen=True)
class Proof:
    """What the agent proves itself with: a join token, or the path of its projected ServiceAccount token."""

    join_token: str = ""
    token_file: Path | None = None

    def request(self, first: bool) -> dict[str, str]:
        if self.token_file is not None:
            # Read each time: the kubelet rotates the projected token.
            return {"service_account_token": self.token_file.read_text().strip()}
        # Only the first request spends the join token; polls prove the machine by the key the Agent recorded.
        return {"join_token": self.join_token} if first and self.join_token else {}


@dataclass(frozen=True)
class Enrolled:
    agent: str
    certificate_serial: str
    not_after: datetime


def pending_key(directory: Path) -> PrivateKey:
    """The key of an enrollment in progress, created 0600 on the first run and reused by later ones."""
    path = directory / PENDING_KEY
    if path.exists():
        return load_private_key(path.read_bytes(), field=str(path))
    key = generate_private_key()
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(private_key_pem(key))
        handle.flush()
        os.fsync(handle.fileno())
    return key


def accept_issued(reply: pb.EnrollReply, key: PrivateKey, fqdn: str,
                  now: datetime) -> tuple[list[x509.Certificate], TrustBundle]:
    """The issued chain and trust, once proven to fit: our key, our FQDN, a chain to the trust bundle it came with."""
    certificates = load_certificates(bytes(reply.certificate_pem), "EnrollReply.certificate_pem")
    trust = TrustBundle.from_pem(bytes(reply.trust_bundle_pem), "EnrollReply.trust_bundle_pem")
    leaf = certificates[0]
    if not same_public_key(leaf.public_key(), key.public_key()):
        raise IdentityError("the issued certificate is not for this agent's key: run `opsmgr enroll` again")
    names = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or str(names[0].value) != fqdn:
        raise IdentityError(f"the issued certificate is not for {fqdn}: run `opsmgr enroll` again")
    verify_chain(leaf, trust.certificates, now, certificates[1:])
    return list(certificates), trust


def _say(message: str, *, err: bool = False) -> None:
    click.echo(message, err=err)


async def run_enrollment(*, server: str, proof: Proof, fqdn: str, directory: Path, key: PrivateKey,
                         ca_bundle: bytes | None, server_name: str | None, wait_seconds: float,
                         echo: Callable[..., None] = _say) -> Enrolled:
    """Ask until the certificate is issued, the request is refused, or `wait_seconds` pass while pending."""
    csr = build_csr(key, fqdn).public_bytes(Encoding.PEM)
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_bundle)
    deadline = time.monotonic() + wait_seconds
    delay, first, told_pending = BACKOFF_INITIAL, True, False
    async with aio.secure_channel(server, credentials, options=options) as channel:
        stub = channel.unary_unary(METHOD, request_serializer=pb.EnrollRequest.SerializeToString,
                                   response_deserializer=pb.EnrollReply.FromString)
        while True:
            request = pb.EnrollRequest(csr_pem=csr, fqdn=fqdn, agent_version=__version__, **proof.request(first))
            try:
                reply: pb.EnrollReply = await stub(request, timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as error:
                if time.monotonic() + delay > deadline:
                    raise ConnectionError(f"cannot enroll at {server}: {error.code().name}: {error.details()}. Fix: "
                                          "check --server and the port (5724), and that --ca-bundle is the group's "
                                          "CA (ca.crt)") from None
                echo(f"enrollment endpoint {server} not reachable ({error.code().name}: {error.details()}); "
                     f"retrying in {delay:.0f} s", err=True)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 (jitter, not a secret)
                delay = min(delay * BACKOFF_FACTOR, BACKOFF_MAX)
                continue
            first, delay = False, BACKOFF_INITIAL
            if reply.outcome == pb.EnrollReply.ISSUED:
                return await asyncio.to_thread(_store, reply, key, fqdn, directory)
            if reply.outcome == pb.EnrollReply.PENDING:
                if not told_pending:
                    echo(f"enrollment pending: {reply.message}")
                    told_pending = True
                retry = max(int(reply.retry_after_seconds), 1)
                if time.monotonic() + retry > deadline:
                    raise StillPending(f"Agent {reply.agent} is still pending approval; run `opsmgr enroll` again "
                                       f"later (the key in {directory / PENDING_KEY} is kept)")
                await asyncio.sleep(retry)
                continue
            await asyncio.to_thread((directory / PENDING_KEY).unlink, missing_ok=True)
            raise EnrollmentRefused(reply.reason or "Refused", reply.message or "no reason given")


def _store(reply: pb.EnrollReply, key: PrivateKey, fqdn: str, directory: Path) -> Enrolled:
    certificates, trust = accept_issued(reply, key, fqdn, datetime.now(UTC))
    store = IdentityStore(directory)
    store.write_renewal(key, certificates, trust)  # tls.key, tls.crt, ca.crt: 0600, journaled, together
    (directory / PENDING_KEY).unlink(missing_ok=True)
    identity = store.load()  # proves the three files work together before we say so
    return Enrolled(reply.agent, format(identity.certificate.serial_number, "x"),
                    identity.certificate.not_valid_after_utc)


def _already_enrolled(directory: Path, fqdn: str) -> str | None:
    """A description of a usable identity already in `directory` for this FQDN, or None."""
    if not (directory / "tls.crt").exists():
        return None
    try:
        identity = IdentityStore(directory).load()
    except IdentityError:
        return None
    names = identity.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or str(names[0].value) != fqdn:
        return None
    return f"{fqdn} (certificate {identity.certificate.serial_number:x}, valid until " \
           f"{identity.certificate.not_valid_after_utc.isoformat()})"


def _duration_seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise click.BadParameter(f"{text!r} is not a duration such as 30s, 10m or 24h") from None


@click.command("enroll")
@click.option("--server", required=True, metavar="HOST[:PORT]",
              help=f"The group's enrollment endpoint (port {ENROLLMENT_PORT} when left out).")
@click.option("--token", "join_token", envvar="OPSMGR_JOIN_TOKEN", metavar="TOKEN",
              help="A join token from `opsmgr token create` (VMs); also read from $OPSMGR_JOIN_TOKEN.")
@click.option("--service-account-token", "token_file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"The pod's projected ServiceAccount token (pods and node agents), e.g. {DEFAULT_TOKEN_PATH}.")
@click.option("--fqdn", required=True, help="This computer's FQDN: the certificate's CN and the Agent's spec.fqdn.")
@click.option("--identity-dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where tls.crt, tls.key and ca.crt are written (the agent's certificates.directory).")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The group's CA certificate (ca.crt) to trust the server by; the system's roots when left out.")
@click.option("--server-name", help="The name the server's certificate must carry, when --server is an address.")
@click.option("--wait", "wait", default="24h", show_default=True,
              help="How long to keep asking while the Agent waits for approval.")
def enroll(*, server: str, join_token: str | None, token_file: Path | None, fqdn: str, identity_dir: Path,
           ca_bundle: Path | None, server_name: str | None, wait: str) -> None:
    """Enroll this agent: generate a key and CSR, prove who it is, and store the certificate it is given."""
    if bool(join_token) == (token_file is not None):
        click.echo("give exactly one of --token (a VM) and --service-account-token (a pod or node agent)", err=True)
        sys.exit(EXIT_USAGE)
    try:
        name = normalize_fqdn(fqdn, "--fqdn")
    except CertificateError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
    if token_file is not None and not token_file.is_file():
        click.echo(f"--service-account-token = {str(token_file)!r}: not a readable file. Fix: mount a projected "
                   "serviceAccountToken volume with audience opsmgr and give its path", err=True)
        sys.exit(EXIT_USAGE)
    done = _already_enrolled(identity_dir, name)
    if done is not None:
        click.echo(f"already enrolled as {done}; renewal happens over the agent channel")
        return
    try:
        identity_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = pending_key(identity_dir)
    except (OSError, CertificateError) as exc:
        click.echo(f"--identity-dir = {str(identity_dir)!r}: {exc}. Fix: give a writable directory", err=True)
        sys.exit(EXIT_USAGE)
    target = server if ":" in server.rsplit("]", 1)[-1] else f"{server}:{ENROLLMENT_PORT}"
    try:
        enrolled = asyncio.run(run_enrollment(
            server=target, proof=Proof(join_token or "", token_file), fqdn=name, directory=identity_dir, key=key,
            ca_bundle=ca_bundle.read_bytes() if ca_bundle else None, server_name=server_name,
            wait_seconds=_duration_seconds(wait)))
    except EnrollmentRefused as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_REFUSED)
    except StillPending as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_STILL_PENDING)
    except (ConnectionError, IdentityError, CertificateError, OSError) as exc:
        click.echo(f"opsmgr enroll: {exc}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    click.echo(f"enrolled: Agent {enrolled.agent}, certificate {enrolled.certificate_serial} valid until "
               f"{enrolled.not_after.isoformat()}, stored in {identity_dir}")
