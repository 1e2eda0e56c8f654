"""skaffold.yaml builds the images the chart deploys, and the Dockerfiles build what the rendered pods expect."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from opsmgr.operator.render import RUN_AS_USER

ROOT = Path(__file__).resolve().parents[3]
CHART_VALUES = yaml.safe_load((ROOT / "charts" / "opsmgr" / "values.yaml").read_text())


def _skaffold() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    return config


def _value(path: str) -> Any:
    node: Any = CHART_VALUES
    for key in path.split("."):
        node = node[key]
    return node


def test_skaffold_uses_the_v4_schema_and_builds_both_images_from_their_dockerfiles() -> None:
    config = _skaffold()
    assert config["apiVersion"].startswith("skaffold/v4")
    artifacts = {a["image"]: a["docker"]["dockerfile"] for a in config["build"]["artifacts"]}
    assert artifacts == {_value("image.repository"): "operator/Dockerfile",
                         _value("agentImage.repository"): "agent-image/Dockerfile"}
    assert all((ROOT / dockerfile).is_file() for dockerfile in artifacts.values())


def test_skaffold_deploys_the_chart_with_the_images_it_built() -> None:
    config = _skaffold()
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"] / "Chart.yaml").is_file()
    built = {re.sub(r"[^A-Za-z0-9]", "_", a["image"]) for a in config["build"]["artifacts"]}
    for value, template in release["setValueTemplates"].items():
        _value(value)  # the chart has this value
        (referenced,) = re.findall(r"\{\{\.IMAGE_(?:REPO|TAG)_(\w+)\}\}", template)
        assert referenced in built, f"{value} refers to an image skaffold does not build: {template}"


def test_operator_image_runs_as_the_user_the_operator_renders_into_its_pods() -> None:
    # Servers, gateways and migration Jobs run the operator image as RUN_AS_USER; the image's own user must match
    # so files it owns (its home) are theirs, and the chart runs the operator pod as the same id.
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    assert f"USER {RUN_AS_USER}:{RUN_AS_USER}" in dockerfile
    deployment = (ROOT / "charts" / "opsmgr" / "templates" / "deployment.yaml").read_text()
    assert f"runAsUser: {RUN_AS_USER}" in deployment


def test_images_build_the_protocol_code_from_setup_py() -> None:
    # The generated gRPC code is not committed: an image built without setup.py would lack it.
    for dockerfile in ("operator/Dockerfile", "agent-image/Dockerfile"):
        copies = [line for line in (ROOT / dockerfile).read_text().splitlines() if line.startswith("COPY ")]
        assert any("setup.py" in line for line in copies), dockerfile
