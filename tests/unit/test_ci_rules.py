"""In CI a skipped test against a real component is a failure, so a missing install step cannot pass silently."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SKIPPING_TEST = """
import pytest

def test_needs_a_real_server():
    pytest.skip("kube-apiserver binary not built")
"""


def _project_with_a_skipping_integration_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.mkdir("integration")
    pytester.makepyfile(**{"integration/test_real": SKIPPING_TEST})


def test_skipped_integration_test_fails_when_ci_is_set(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    _project_with_a_skipping_integration_test(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*skipped integration test fails in CI*kube-apiserver binary not built*"])


def test_skipped_integration_test_is_only_reported_outside_ci(pytester: pytest.Pytester,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    _project_with_a_skipping_integration_test(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)


def test_a_known_issue_marked_xfail_does_not_fail_ci(pytester: pytest.Pytester,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.mkdir("integration")
    pytester.makepyfile(**{"integration/test_known": """
import pytest

@pytest.mark.xfail(reason="known issue", strict=False)
def test_known_issue():
    assert False
"""})
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(xfailed=1)
