"""Certificates: the management-group CA, role profiles, renewal, revocation, CSR validation and certificate import.

Pure and I/O-free except `certimport.write_identity`, the `revocation_watch` file poller and the `cli` module.
Every error a person can cause is a `CertificateError` naming the check, the field, the value and the fix.

The names below load their module on first use (PEP 562), so importing `opsmgr.pki.errors`, `names` or `schedule`
does not load cryptography (about 8 MB resident, its own OpenSSL): the long-running agent needs those three and
leaves everything that parses certificates to its short-lived identity helper (`opsmgr.agent.identity_helper`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy and readers see; at run time __getattr__ imports each on first use
    from opsmgr.pki.ca import CaKeyRollover as CaKeyRollover
    from opsmgr.pki.ca import CertificateAuthority as CertificateAuthority
    from opsmgr.pki.ca import RolloverPhase as RolloverPhase
    from opsmgr.pki.ca import TrustBundle as TrustBundle
    from opsmgr.pki.ca import create_ca as create_ca
    from opsmgr.pki.ca import import_ca as import_ca
    from opsmgr.pki.ca import renew_ca as renew_ca
    from opsmgr.pki.ca import start_key_rollover as start_key_rollover
    from opsmgr.pki.csr import ValidatedCsr as ValidatedCsr
    from opsmgr.pki.csr import build_csr as build_csr
    from opsmgr.pki.csr import sign_csr as sign_csr
    from opsmgr.pki.csr import validate_csr as validate_csr
    from opsmgr.pki.errors import CertificateError as CertificateError
    from opsmgr.pki.errors import Check as Check
    from opsmgr.pki.issue import Approval as Approval
    from opsmgr.pki.issue import IssuedIdentity as IssuedIdentity
    from opsmgr.pki.issue import issue_certificate as issue_certificate
    from opsmgr.pki.issue import issue_with_new_key as issue_with_new_key
    from opsmgr.pki.keys import KeyAlgorithm as KeyAlgorithm
    from opsmgr.pki.keys import generate_private_key as generate_private_key
    from opsmgr.pki.names import Identity as Identity
    from opsmgr.pki.names import Role as Role
    from opsmgr.pki.profiles import ManagementServerNames as ManagementServerNames
    from opsmgr.pki.renewal import approve_renewal as approve_renewal
    from opsmgr.pki.renewal import renewal_decision as renewal_decision
    from opsmgr.pki.revocation import Revocation as Revocation
    from opsmgr.pki.revocation import RevocationReason as RevocationReason
    from opsmgr.pki.revocation import RevocationSet as RevocationSet
    from opsmgr.pki.schedule import RenewalAction as RenewalAction
    from opsmgr.pki.schedule import RenewalDecision as RenewalDecision
    from opsmgr.pki.verify import authorize_peer as authorize_peer
    from opsmgr.pki.verify import peer_certificate as peer_certificate
    from opsmgr.pki.verify import verify_chain as verify_chain

# Each public name and the submodule it lives in.
_MODULES = {
    "ca": ("CaKeyRollover", "CertificateAuthority", "RolloverPhase", "TrustBundle", "create_ca", "import_ca",
           "renew_ca", "start_key_rollover"),
    "csr": ("ValidatedCsr", "build_csr", "sign_csr", "validate_csr"),
    "errors": ("CertificateError", "Check"),
    "issue": ("Approval", "IssuedIdentity", "issue_certificate", "issue_with_new_key"),
    "keys": ("KeyAlgorithm", "generate_private_key"),
    "names": ("Identity", "Role"),
    "profiles": ("ManagementServerNames",),
    "renewal": ("approve_renewal", "renewal_decision"),
    "revocation": ("Revocation", "RevocationReason", "RevocationSet"),
    "schedule": ("RenewalAction", "RenewalDecision"),
    "verify": ("authorize_peer", "peer_certificate", "verify_chain"),
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups find it without coming here
    return value
