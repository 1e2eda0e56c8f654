"""`make demo` starts what exists, tells a person how to reach it, and leaves nothing running when stopped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_starts_databases_and_cluster_with_examples_installed() -> None:
    opsmgr = Path(sys.executable).parent / "opsmgr"
    result = subprocess.run([str(opsmgr), "dev", "demo", "--exit-when-ready"], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "opsmgr demo is running." in result.stdout
    installed = "3 agent, 1 agenttask, 1 gateway, 1 managementgroup, 1 managementpack (namespace opsmgr-demo)"
    assert installed in result.stdout, result.stdout
    assert re.search(r"OperationalDB:\s+psql postgresql://\S+/opsmgr_operational", result.stdout)
    assert re.search(r"DataWarehouse:\s+psql postgresql://\S+/opsmgr_warehouse", result.stdout)
    demo_dir = re.search(r"KUBECONFIG=(/\S+?)/kubernetes/kubeconfig", result.stdout)
    assert demo_dir is not None
    assert not Path(demo_dir.group(1)).exists(), "the demo left its directory behind"
