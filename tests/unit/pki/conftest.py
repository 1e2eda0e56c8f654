"""One management-group CA and one foreign CA per session: ECDSA keys are cheap, but there is no need to repeat them."""

from __future__ import annotations

import pytest

from opsmgr.pki import CertificateAuthority, create_ca
from tests.unit.pki.forge import GROUP, NOW


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    return create_ca(GROUP, NOW)


@pytest.fixture(scope="session")
def other_ca() -> CertificateAuthority:
    return create_ca("fabrikam", NOW)
