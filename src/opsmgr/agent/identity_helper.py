"""The agent's identity helper: one request as JSON on stdin, one answer as JSON on stdout, then exit.

`opsmgr agent` starts it for the work that needs cryptography (loading and checking its identity, a renewal's key
and CSR, installing a renewal or a trust update), so the long-running process never loads that library; see
`opsmgr.agent.identity`. An error a person can fix is answered as {"error": message}, the message naming the
file, the problem and the fix, exactly as the agent logs it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opsmgr.agent.identity import IdentityError, identity_from_wire, identity_to_wire, pem_bytes, pem_text
from opsmgr.agent.identity_store import IdentityStore, parse_identity
from opsmgr.pki import CertificateError, build_csr, generate_private_key
from opsmgr.pki.pem import csr_pem, load_private_key, private_key_pem


def load(request: dict[str, Any]) -> dict[str, Any]:
    return identity_to_wire(IdentityStore(Path(request["directory"])).load().facts())


def renewal_request(request: dict[str, Any]) -> dict[str, Any]:
    key = generate_private_key()
    return {"key_pem": pem_text(private_key_pem(key)), "csr_pem": pem_text(csr_pem(build_csr(key, request["fqdn"])))}


def install_renewal(request: dict[str, Any]) -> dict[str, Any]:
    held = identity_from_wire(request["current"])
    current = parse_identity(held.key_pem, held.chain_pem, held.trust_pem,
                             ("the current key", "the current certificate", "the current trust bundle"))
    store = IdentityStore(Path(request["directory"]))
    key = load_private_key(pem_bytes(request["key_pem"]), field="the renewal's key")
    certificates, trust = store.check_renewal(current, key, pem_bytes(request["certificate_pem"]),
                                              pem_bytes(request["trust_pem"]), datetime.now(UTC))
    store.write_renewal(key, certificates, trust)
    return {}


def write_trust(request: dict[str, Any]) -> dict[str, Any]:
    IdentityStore(Path(request["directory"])).write_trust(pem_bytes(request["trust_pem"]))
    return {}


OPERATIONS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "load": load, "renewal_request": renewal_request, "install_renewal": install_renewal, "write_trust": write_trust}


def answer(request: dict[str, Any]) -> dict[str, Any]:
    try:
        return OPERATIONS[request["op"]](request)
    except (IdentityError, CertificateError, OSError) as exc:
        return {"error": str(exc)}


if __name__ == "__main__":
    json.dump(answer(json.load(sys.stdin)), sys.stdout)
