"""`opsmgr certimport`: the MOMCertImport of opsmgr, for agents and gateways with certificates from another CA."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import click

from opsmgr.pki.certimport import ImportSource, check_import, write_identity
from opsmgr.pki.names import Role

PASSWORD_ENV = "OPSMGR_CERTIMPORT_PASSWORD"  # noqa: S105 - the variable that holds it, not a password
_FILE = click.Path(exists=True, dir_okay=False, readable=True, path_type=Path)


@click.command("certimport")
@click.option("--cert", "cert_path", type=_FILE, required=True,
              help="Certificate: PEM (may also hold the chain and the key) or PKCS#12 (.pfx/.p12).")
@click.option("--key", "key_path", type=_FILE, default=None, help="PEM private key, when not inside --cert.")
@click.option("--password-file", type=_FILE, default=None,
              help=f"File holding the PKCS#12 or key password (or set {PASSWORD_ENV}).")
@click.option("--ca-bundle", type=_FILE, required=True, help="PEM CA certificates that the chain must end in.")
@click.option("--role", type=click.Choice([Role.AGENT.value, Role.GATEWAY.value]), default=Role.AGENT.value,
              show_default=True, help="What this identity is for.")
@click.option("--fqdn", required=True, help="This computer's configured FQDN; the certificate's CN must match it.")
@click.option("--group", default=None, help="Management group; checked against the certificate's role URI if any.")
@click.option("--identity-dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Where the agent or gateway reads tls.crt, tls.key and ca.crt.")
def certimport(*, cert_path: Path, key_path: Path | None, password_file: Path | None, ca_bundle: Path, role: str,
               fqdn: str, group: str | None, identity_dir: Path) -> None:
    """Check a certificate and key for this agent or gateway and install them into its identity directory.

    Every check (key matches, chain verifies, EKUs fit the role, CN matches the FQDN, valid now) is reported by
    name; nothing is written unless all pass.
    """
    password = password_file.read_bytes().rstrip(b"\r\n") if password_file else os.environ.get(PASSWORD_ENV)
    source = ImportSource(
        certificate=cert_path.read_bytes(),
        ca_bundle=ca_bundle.read_bytes(),
        key=key_path.read_bytes() if key_path else None,
        password=password.encode() if isinstance(password, str) else password,
    )
    outcome = check_import(source, Role(role), fqdn, datetime.now(UTC), group)
    if outcome.imported is None:
        click.echo(f"certimport: {len(outcome.failures)} check(s) failed; nothing was written to {identity_dir}",
                   err=True)
        for failure in outcome.failures:
            click.echo(f"  [{failure.reason}] {failure}", err=True)
        raise SystemExit(1)
    try:
        written = write_identity(identity_dir, outcome.imported)
    except OSError as exc:
        raise click.ClickException(f"--identity-dir = {identity_dir}: cannot be written ({exc.strerror}). "
                                   "Fix: run as the agent's user or choose a directory it owns") from exc
    imported = outcome.imported
    click.echo(f"imported {imported.identity.role.value} identity {imported.identity.name} "
               f"(serial {imported.certificate.serial_number:x}, expires "
               f"{imported.certificate.not_valid_after_utc:%Y-%m-%d}) into {', '.join(map(str, written))}")
