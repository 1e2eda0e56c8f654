"""The API server itself rejects invalid objects (OpenAPI bounds, CEL rules, list keys, immutable fields).

Each rejection must name the field and say why, in the words a person reads in `kubectl apply` output.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.api.conftest import Kubectl
from tests.unit.api.cases import EXAMPLES, INVALID, INVALID_ON_CREATE, INVALID_ON_UPDATE, Invalid


def test_the_catalog_covers_at_least_25_invalid_objects() -> None:
    assert len(INVALID) >= 25
    assert len({case.id for case in INVALID}) == len(INVALID)


@pytest.mark.parametrize("case", INVALID_ON_CREATE, ids=lambda case: case.id)
def test_api_server_rejects_invalid_object(kubectl: Kubectl, case: Invalid) -> None:
    code, output = kubectl.run("create", "-f", "-", input=json.dumps(case.document()), check=False)
    assert code != 0, f"{case.id} was accepted"
    assert "is invalid" in output or "Invalid value" in output, output
    assert case.field in output, f"the message does not name {case.field}: {output}"
    assert case.says in output, output


@pytest.mark.parametrize("case", INVALID_ON_UPDATE, ids=lambda case: case.id)
def test_api_server_rejects_change_of_immutable_field(kubectl: Kubectl, case: Invalid) -> None:
    kubectl.create(EXAMPLES[case.example])
    code, output = kubectl.run("replace", "-f", "-", input=json.dumps(case.document()), check=False)
    assert code != 0, f"{case.id} was accepted"
    assert case.field in output, f"the message does not name {case.field}: {output}"
    assert case.says in output, output
