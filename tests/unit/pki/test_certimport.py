"""`opsmgr certimport`: every check named when it fails, nothing written unless all pass, 0600 files when they do."""

from __future__ import annotations

import stat
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from opsmgr.cli import main
from opsmgr.pki import CertificateAuthority, Check, Identity, Role, create_ca
from opsmgr.pki.certimport import ImportSource, check_import
from opsmgr.pki.keys import generate_private_key
from opsmgr.pki.names import CA_FILE, CERTIFICATE_FILE, KEY_FILE
from opsmgr.pki.pem import certificate_pem, load_certificates, load_private_key, private_key_pem
from opsmgr.pki.profiles import CLIENT_AUTH, SERVER_AUTH
from tests.unit.pki.forge import AGENT_FQDN, GATEWAY_FQDN, GROUP, NOW, Forged, forge_leaf


def _source(leaf: Forged, ca: CertificateAuthority, *, key: bytes | None = None) -> ImportSource:
    return ImportSource(certificate_pem(leaf.certificate), ca.certificate_pem(),
                        private_key_pem(leaf.key) if key is None else key)


def _failed(source: ImportSource, role: Role = Role.AGENT, fqdn: str = AGENT_FQDN) -> list[Check]:
    outcome = check_import(source, role, fqdn, NOW, GROUP)
    assert outcome.imported is None
    assert all("Fix:" in str(failure) for failure in outcome.failures)
    return [failure.check for failure in outcome.failures]


def test_pem_agent_certificate_from_the_group_ca_is_imported(ca: CertificateAuthority) -> None:
    leaf = forge_leaf(ca, AGENT_FQDN)
    outcome = check_import(_source(leaf, ca), Role.AGENT, "WEB01.contoso.test", NOW)
    assert outcome.failures == ()
    assert outcome.imported is not None and outcome.imported.identity.name == AGENT_FQDN


def test_gateway_certificate_with_server_and_client_auth_is_imported(ca: CertificateAuthority) -> None:
    leaf = forge_leaf(ca, GATEWAY_FQDN, ekus=[SERVER_AUTH, CLIENT_AUTH])
    assert check_import(_source(leaf, ca), Role.GATEWAY, GATEWAY_FQDN, NOW).failures == ()


def test_certificate_from_another_ca_is_refused(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    assert _failed(_source(forge_leaf(other_ca, AGENT_FQDN), ca)) == [Check.WRONG_CA]


def test_expired_certificate_is_refused(ca: CertificateAuthority) -> None:
    leaf = forge_leaf(ca, AGENT_FQDN, not_before=NOW - timedelta(days=10), not_after=NOW - timedelta(days=1))
    assert _failed(_source(leaf, ca)) == [Check.EXPIRED]


def test_not_yet_valid_certificate_is_refused(ca: CertificateAuthority) -> None:
    leaf = forge_leaf(ca, AGENT_FQDN, not_before=NOW + timedelta(days=1))
    assert _failed(_source(leaf, ca)) == [Check.NOT_YET_VALID]


def test_gateway_certificate_without_server_auth_is_refused(ca: CertificateAuthority) -> None:
    leaf = forge_leaf(ca, GATEWAY_FQDN, ekus=[CLIENT_AUTH])
    assert _failed(_source(leaf, ca), Role.GATEWAY, GATEWAY_FQDN) == [Check.WRONG_EKU]


def test_agent_certificate_without_client_auth_is_refused(ca: CertificateAuthority) -> None:
    assert _failed(_source(forge_leaf(ca, AGENT_FQDN, ekus=[SERVER_AUTH]), ca)) == [Check.WRONG_EKU]


def test_agent_certificate_cannot_be_imported_as_gateway(ca: CertificateAuthority) -> None:
    uri = Identity.of(GROUP, Role.AGENT, GATEWAY_FQDN).uri
    leaf = forge_leaf(ca, GATEWAY_FQDN, ekus=[SERVER_AUTH, CLIENT_AUTH], uris=[uri])
    assert _failed(_source(leaf, ca), Role.GATEWAY, GATEWAY_FQDN) == [Check.WRONG_ROLE]


def test_certificate_for_another_computer_is_refused(ca: CertificateAuthority) -> None:
    assert _failed(_source(forge_leaf(ca, "db01.contoso.test"), ca)) == [Check.CN_MISMATCH]


def test_key_of_another_certificate_is_refused(ca: CertificateAuthority) -> None:
    source = _source(forge_leaf(ca, AGENT_FQDN), ca, key=private_key_pem(generate_private_key()))
    assert _failed(source) == [Check.KEY_MISMATCH]


def test_every_failing_check_is_reported_together(other_ca: CertificateAuthority, ca: CertificateAuthority) -> None:
    leaf = forge_leaf(other_ca, "db01.contoso.test", ekus=[SERVER_AUTH], not_after=NOW - timedelta(days=1),
                      not_before=NOW - timedelta(days=5))
    source = _source(leaf, ca, key=private_key_pem(generate_private_key()))
    assert _failed(source) == [Check.KEY_MISMATCH, Check.EXPIRED, Check.WRONG_CA, Check.WRONG_EKU, Check.CN_MISMATCH]


def test_pkcs12_with_chain_and_password_is_imported(ca: CertificateAuthority) -> None:
    leaf = forge_leaf(ca, AGENT_FQDN)
    blob = pkcs12.serialize_key_and_certificates(b"web01", leaf.key, leaf.certificate, [ca.certificate],
                                                 serialization.BestAvailableEncryption(b"s3cret"))
    outcome = check_import(ImportSource(blob, ca.certificate_pem(), password=b"s3cret"), Role.AGENT, AGENT_FQDN, NOW)
    assert outcome.failures == ()


@pytest.mark.parametrize("password", [None, b"wrong"])
def test_pkcs12_with_wrong_or_missing_password_is_named(ca: CertificateAuthority, password: bytes | None) -> None:
    leaf = forge_leaf(ca, AGENT_FQDN)
    blob = pkcs12.serialize_key_and_certificates(b"web01", leaf.key, leaf.certificate, None,
                                                 serialization.BestAvailableEncryption(b"s3cret"))
    outcome = check_import(ImportSource(blob, ca.certificate_pem(), password=password), Role.AGENT, AGENT_FQDN, NOW)
    assert [f.check for f in outcome.failures] == [Check.UNREADABLE]
    assert "password" in str(outcome.failures[0])


def test_one_pem_file_with_key_leaf_and_intermediate_is_imported(ca: CertificateAuthority) -> None:
    intermediate_key = generate_private_key()
    intermediate = forge_leaf(ca, "Issuing CA", ekus=[], key=intermediate_key, ca=True).certificate
    leaf = forge_leaf(CertificateAuthority(intermediate, intermediate_key), AGENT_FQDN)
    combined = certificate_pem([intermediate, leaf.certificate]) + private_key_pem(leaf.key)
    outcome = check_import(ImportSource(combined, ca.certificate_pem()), Role.AGENT, AGENT_FQDN, NOW)
    assert outcome.imported is not None
    assert outcome.imported.certificate == leaf.certificate and outcome.imported.chain == (intermediate,)


# The CLI runs at the real time, so its certificates are made around now rather than the fixed NOW.


@pytest.fixture(scope="module")
def live_ca() -> CertificateAuthority:
    return create_ca(GROUP, datetime.now(UTC))


def _write(directory: Path, files: dict[str, bytes]) -> dict[str, str]:
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return {name: str(directory / name) for name in files}


def _certimport(args: Sequence[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["certimport", *args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_certimport_installs_identity_with_owner_only_files(tmp_path: Path, live_ca: CertificateAuthority) -> None:
    leaf = forge_leaf(live_ca, AGENT_FQDN, now=datetime.now(UTC))
    paths = _write(tmp_path, {"web01.pem": certificate_pem(leaf.certificate), "web01.key": private_key_pem(leaf.key),
                              "ca.pem": live_ca.certificate_pem()})
    identity_dir = tmp_path / "identity"
    code, output = _certimport(["--cert", paths["web01.pem"], "--key", paths["web01.key"], "--ca-bundle",
                                paths["ca.pem"], "--fqdn", AGENT_FQDN, "--identity-dir", str(identity_dir)])
    assert code == 0, output
    assert f"imported agent identity {AGENT_FQDN}" in output
    assert stat.S_IMODE(identity_dir.stat().st_mode) == 0o700
    for name in (CERTIFICATE_FILE, KEY_FILE, CA_FILE):
        assert stat.S_IMODE((identity_dir / name).stat().st_mode) == 0o600
    assert load_certificates((identity_dir / CERTIFICATE_FILE).read_bytes()) == [leaf.certificate]
    assert load_certificates((identity_dir / CA_FILE).read_bytes()) == [live_ca.certificate]
    assert load_private_key((identity_dir / KEY_FILE).read_bytes()).public_key() == leaf.key.public_key()
    assert sorted(p.name for p in identity_dir.iterdir()) == sorted([CERTIFICATE_FILE, KEY_FILE, CA_FILE])


def test_certimport_reads_the_pkcs12_password_from_a_file(tmp_path: Path, live_ca: CertificateAuthority) -> None:
    leaf = forge_leaf(live_ca, GATEWAY_FQDN, now=datetime.now(UTC), ekus=[SERVER_AUTH, CLIENT_AUTH])
    blob = pkcs12.serialize_key_and_certificates(b"gw", leaf.key, leaf.certificate, None,
                                                 serialization.BestAvailableEncryption(b"s3cret"))
    paths = _write(tmp_path, {"gw.pfx": blob, "pw": b"s3cret\n", "ca.pem": live_ca.certificate_pem()})
    code, output = _certimport(["--cert", paths["gw.pfx"], "--password-file", paths["pw"], "--ca-bundle",
                                paths["ca.pem"], "--role", "gateway", "--fqdn", GATEWAY_FQDN,
                                "--identity-dir", str(tmp_path / "gw")])
    assert code == 0, output


def test_certimport_names_each_failed_check_writes_nothing_and_exits_nonzero(
        tmp_path: Path, live_ca: CertificateAuthority) -> None:
    leaf = forge_leaf(live_ca, "db01.contoso.test", now=datetime.now(UTC), ekus=[SERVER_AUTH])
    paths = _write(tmp_path, {"db01.pem": certificate_pem(leaf.certificate), "db01.key": private_key_pem(leaf.key),
                              "ca.pem": live_ca.certificate_pem()})
    code, output = _certimport(["--cert", paths["db01.pem"], "--key", paths["db01.key"], "--ca-bundle",
                                paths["ca.pem"], "--fqdn", AGENT_FQDN, "--identity-dir", str(tmp_path / "identity")])
    assert code == 1
    assert "2 check(s) failed; nothing was written" in output
    assert "[WrongEKU] certificate extendedKeyUsage = serverAuth: lacks clientAuth" in output
    assert "[CNMismatch] certificate subject CN = 'db01.contoso.test': is not 'web01.contoso.test'" in output
    assert "Traceback" not in output
    assert not (tmp_path / "identity").exists()


def test_certimport_reports_unreadable_input_without_a_traceback(tmp_path: Path) -> None:
    paths = _write(tmp_path, {"junk.pem": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                              "ca.pem": b"junk"})
    code, output = _certimport(["--cert", paths["junk.pem"], "--key", paths["junk.pem"], "--ca-bundle",
                                paths["ca.pem"], "--fqdn", AGENT_FQDN, "--identity-dir", str(tmp_path / "i")])
    assert code == 1 and "[Unreadable] --key" in output and "Traceback" not in output


def test_certimport_is_listed_in_opsmgr_help() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert "certimport" in result.output


def test_certimport_names_a_missing_file_as_a_usage_error(tmp_path: Path) -> None:
    code, output = _certimport(["--cert", str(tmp_path / "missing.pem"), "--ca-bundle", str(tmp_path / "ca.pem"),
                                "--fqdn", AGENT_FQDN, "--identity-dir", str(tmp_path)])
    assert code == 2 and "--cert" in output and "does not exist" in output
