#!/usr/bin/env python3
"""Generates the install artefacts that are derived from other files, or checks that they are current.

* charts/opsmgr/templates/crds/*.yaml from crds/*.yaml (which `opsmgr crds` generates from the models): the
  same CRDs, behind `crds.enabled`, with the keep policy and the Argo CD sync wave.
* deploy/opsmgr.yaml from the chart (`helm template`, CRDs off), for `kubectl apply` without Helm.
* argocd/argocd-cm-patch.yaml from argocd/resource_customizations: the health checks as `argocd-cm` keys.

Independent of the opsmgr package on purpose: it needs only PyYAML and a helm binary, so it runs from any checkout.

    python tools/manifests.py --helm PATH/helm           # rewrite the files
    python tools/manifests.py --helm PATH/helm --check   # exit 1 and name the files that differ
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
CHART = ROOT / "charts" / "opsmgr"
CHART_CRDS = CHART / "templates" / "crds"
DEPLOY = ROOT / "deploy" / "opsmgr.yaml"
ARGOCD = ROOT / "argocd"
ARGOCD_CM_PATCH = ARGOCD / "argocd-cm-patch.yaml"
RELEASE = "opsmgr"
NAMESPACE = "opsmgr-system"
REGENERATE = "make manifests"

CRD_TEMPLATE_HEADER = """\
{{{{- /* Generated from crds/{name} by `{regenerate}` (tools/manifests.py); edit the models, not this file. */}}}}
{{{{- if .Values.crds.enabled }}}}
"""
# Inserted under `metadata:`. Deleting a CRD deletes every object of its kind, so both Helm (uninstall) and
# Argo CD (prune, app deletion) leave the CRDs in place unless crds.keep is false.
CRD_ANNOTATIONS = """\
  annotations:
    argocd.argoproj.io/sync-wave: {{ include "opsmgr.syncWave.crds" . }}
    {{- if .Values.crds.keep }}
    helm.sh/resource-policy: keep
    argocd.argoproj.io/sync-options: Prune=false,Delete=false
    {{- end }}
"""

DEPLOY_HEADER = f"""\
# opsmgr without Helm: the operator's Namespace, ServiceAccount, RBAC, Deployment and metrics Service.
# Generated from charts/opsmgr by `{REGENERATE}` (tools/manifests.py) as
#   helm template {RELEASE} charts/opsmgr --namespace {NAMESPACE} --set crds.enabled=false
# Edit the chart, not this file. Install the CRDs first:
#   kubectl apply -f crds/ && kubectl apply -f deploy/opsmgr.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: {NAMESPACE}
  labels:
    app.kubernetes.io/part-of: opsmgr
    # The operator pod meets the restricted Pod Security Standard; enforcing it keeps it that way.
    pod-security.kubernetes.io/enforce: restricted
"""


class GenerationError(RuntimeError):
    """A source file cannot be turned into its derived artefact; the message says which and why."""


def chart_crd_template(name: str, text: str) -> str:
    """The chart template for one generated CRD file: the same object, plus the chart's annotations."""
    document = yaml.safe_load(text)
    if "annotations" in document.get("metadata", {}):
        raise GenerationError(f"crds/{name} already has metadata.annotations; merge them into CRD_ANNOTATIONS")
    if "{{" in text or "}}" in text:
        raise GenerationError(f"crds/{name} contains '{{{{' or '}}}}', which Helm would read as a template action")
    body = [line for line in text.splitlines(keepends=True) if not line.startswith("#")]
    try:
        at = body.index("metadata:\n") + 1
    except ValueError:
        raise GenerationError(f"crds/{name} has no top-level `metadata:` line") from None
    return CRD_TEMPLATE_HEADER.format(name=name, regenerate=REGENERATE) + "".join(
        [*body[:at], CRD_ANNOTATIONS, *body[at:]]) + "{{- end }}\n"


def render_deploy(helm: str) -> str:
    """deploy/opsmgr.yaml: the chart rendered for the plain `kubectl apply` path."""
    result = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "crds.enabled=false"],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise GenerationError(f"helm template failed:\n{result.stderr}")
    return DEPLOY_HEADER + result.stdout


ARGOCD_CM_HEADER = f"""\
# The opsmgr health checks for Argo CD, one `argocd-cm` key per kind (Argo CD 2.x and later):
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file argocd/argocd-cm-patch.yaml
# Generated from argocd/resource_customizations by `{REGENERATE}` (tools/manifests.py); edit the health.lua files.
"""


class _LiteralBlocks(yaml.SafeDumper):
    """Writes multi-line strings as `|` blocks, so the Lua reads as it does in its own file."""


def _literal(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_LiteralBlocks.add_representer(str, _literal)


def argocd_cm_patch() -> str:
    """A merge patch for argocd-cm holding every kind's health.lua under Argo CD's per-kind key."""
    data = {}
    for script in sorted(ARGOCD.glob("resource_customizations/*/*/health.lua")):
        group, kind = script.parent.parent.name, script.parent.name
        data[f"resource.customizations.health.{group}_{kind}"] = script.read_text()
    return ARGOCD_CM_HEADER + yaml.dump({"data": data}, Dumper=_LiteralBlocks, sort_keys=False, width=1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", default=os.environ.get("HELM") or shutil.which("helm") or "helm",
                        help="the helm binary (default: $HELM, else helm on PATH)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a file is out of date")
    options = parser.parse_args()
    try:
        crd_templates = {CHART_CRDS / path.name: chart_crd_template(path.name, path.read_text())
                         for path in sorted(CRDS.glob("*.yaml"))}
        deploy = render_deploy(options.helm)
    except (GenerationError, OSError) as problem:
        print(f"tools/manifests.py: {problem}", file=sys.stderr)
        return 2
    expected = {**crd_templates, DEPLOY: deploy, ARGOCD_CM_PATCH: argocd_cm_patch()}
    stale_templates = sorted(set(CHART_CRDS.glob("*.yaml")) - expected.keys())
    if options.check:
        drifted = [path for path, text in expected.items() if not path.exists() or path.read_text() != text]
        drifted += stale_templates
        if drifted:
            names = ", ".join(str(path.relative_to(ROOT)) for path in drifted)
            print(f"out of date: {names}; run `{REGENERATE}` and commit the result", file=sys.stderr)
            return 1
        print(f"{len(expected)} generated install files are current")
        return 0
    CHART_CRDS.mkdir(parents=True, exist_ok=True)
    for path in stale_templates:
        path.unlink()
    for path, text in expected.items():
        path.write_text(text)
    print(f"wrote {len(expected)} files: " + ", ".join(str(path.relative_to(ROOT)) for path in expected))
    return 0


if __name__ == "__main__":
    sys.exit(main())
