"""Issuing 1,000 agent certificates: from agents' CSRs (enrollment), and with keys the operator generates.

The baseline signs the same 1,000 certificates with cryptography's builder alone, so the ratio is opsmgr's own cost
(CSR validation, profile, approval check) on top of the signature. Run: `.venv/bin/python -m bench.bench_pki`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.common import Figure, measure_seconds
from opsmgr.pki import (
    Approval,
    CertificateAuthority,
    Identity,
    Role,
    build_csr,
    create_ca,
    generate_private_key,
    issue_with_new_key,
    sign_csr,
    validate_csr,
)

AGENTS = 1000
RUNS = 5
GROUP = "bench"


def _fqdn(i: int) -> str:
    return f"agent{i:04d}.contoso.test"


def main() -> None:
    now = datetime.now(UTC)
    ca = create_ca(GROUP, now)
    identities = [Identity.of(GROUP, Role.AGENT, _fqdn(i)) for i in range(AGENTS)]
    keys = [generate_private_key() for _ in range(AGENTS)]
    # Agents make their keys and CSRs on their own machines; only validation and signing are the server's work.
    csrs = [build_csr(key, identity.name) for key, identity in zip(keys, identities, strict=True)]

    def baseline() -> None:
        for key, identity in zip(keys, identities, strict=True):
            _bare_certificate(ca, identity.name, key.public_key(), now)

    def from_csrs() -> None:
        for csr, identity in zip(csrs, identities, strict=True):
            sign_csr(ca, validate_csr(csr, identity), Approval(identity, "bench", now), now)

    def with_new_keys() -> None:
        for identity in identities:
            issue_with_new_key(ca, Approval(identity, "bench", now), now)

    figures = [
        measure_seconds(f"baseline: cryptography builder signs {AGENTS} leaves", baseline, RUNS),
        measure_seconds(f"validate + sign {AGENTS} agent CSRs", from_csrs, RUNS),
        measure_seconds(f"issue {AGENTS} agent certificates with new P-256 keys", with_new_keys, RUNS),
    ]
    for figure in figures:
        print(figure.line())
    base = figures[0].median
    for figure in figures[1:]:
        print(f"  {figure.name}: {_per_certificate_ms(figure):.3f} ms per certificate, "
              f"{figure.median / base:.2f}x the baseline, {AGENTS / figure.median:,.0f} certificates/s")


def _per_certificate_ms(figure: Figure) -> float:
    return figure.median / AGENTS * 1000


def _bare_certificate(ca: CertificateAuthority, cn: str, public_key: object, now: datetime) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    return builder.sign(ca.key, hashes.SHA256())


if __name__ == "__main__":
    main()
