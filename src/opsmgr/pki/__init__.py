"""Certificates: the management-group CA, role profiles, renewal, revocation, CSR validation and certificate import.

Pure and I/O-free except `certimport.write_identity`, the `revocation_watch` file poller and the `cli` module.
Every error a person can cause is a `CertificateError` naming the check, the field, the value and the fix.
"""

from opsmgr.pki.ca import (
    CaKeyRollover,
    CertificateAuthority,
    RolloverPhase,
    TrustBundle,
    create_ca,
    import_ca,
    renew_ca,
    start_key_rollover,
)
from opsmgr.pki.csr import ValidatedCsr, build_csr, sign_csr, validate_csr
from opsmgr.pki.errors import CertificateError, Check
from opsmgr.pki.issue import Approval, IssuedIdentity, issue_certificate, issue_with_new_key
from opsmgr.pki.keys import KeyAlgorithm, generate_private_key
from opsmgr.pki.names import Identity, Role
from opsmgr.pki.profiles import ManagementServerNames
from opsmgr.pki.renewal import RenewalAction, RenewalDecision, approve_renewal, renewal_decision
from opsmgr.pki.revocation import Revocation, RevocationReason, RevocationSet
from opsmgr.pki.verify import authorize_peer, peer_certificate, verify_chain

__all__ = [
    "Approval",
    "CaKeyRollover",
    "CertificateAuthority",
    "CertificateError",
    "Check",
    "Identity",
    "IssuedIdentity",
    "KeyAlgorithm",
    "ManagementServerNames",
    "RenewalAction",
    "RenewalDecision",
    "Revocation",
    "RevocationReason",
    "RevocationSet",
    "Role",
    "RolloverPhase",
    "TrustBundle",
    "ValidatedCsr",
    "approve_renewal",
    "authorize_peer",
    "build_csr",
    "create_ca",
    "generate_private_key",
    "import_ca",
    "issue_certificate",
    "issue_with_new_key",
    "peer_certificate",
    "renew_ca",
    "renewal_decision",
    "sign_csr",
    "start_key_rollover",
    "validate_csr",
    "verify_chain",
]
