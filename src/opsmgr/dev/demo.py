"""`make demo`: the system on one machine, on its embedded default.

It starts what exists today and tells a person how to reach it: a real PostgreSQL holding the operational
database and the data warehouse (migrated), a real Kubernetes control plane with the opsmgr CRDs installed, and the
examples applied in the `opsmgr-demo` namespace. Later issues add the operator, the local runtime and agents.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from opsmgr.dev.cluster import LocalCluster
from opsmgr.dev.postgres import LocalPostgres

DEMO_NAMESPACE = "opsmgr-demo"
DATABASES = {"operational": "opsmgr_operational", "warehouse": "opsmgr_warehouse"}
SOURCE_TREE = Path(__file__).resolve().parents[3]


@dataclass
class Demo:
    postgres: LocalPostgres
    cluster: LocalCluster

    def database_dsn(self, role: str) -> str:
        return self.postgres.dsn(DATABASES[role])

    def resource_counts(self) -> dict[str, int]:
        names = self.cluster.kubectl("get", "mg,agt,gw,mp,atask", "-n", DEMO_NAMESPACE, "-o", "name").stdout.split()
        counts: dict[str, int] = {}
        for name in names:
            kind = name.split("/")[0].split(".")[0]
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def summary(self) -> str:
        kubectl = self.cluster.bin_dir / "kubectl"
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.resource_counts().items())) or "none"
        return "\n".join([
            "opsmgr demo is running.",
            f"  resources:       {counts} (namespace {DEMO_NAMESPACE})",
            f"  Kubernetes API:  {self.cluster.server}",
            f"  kubectl:         export KUBECONFIG={self.cluster.kubeconfig}; {kubectl} get mg,agt,gw,mp,atask "
            f"-n {DEMO_NAMESPACE}",
            f"  OperationalDB:   psql {self.database_dsn('operational')}",
            f"  DataWarehouse:   psql {self.database_dsn('warehouse')}",
            f"  logs:            {self.cluster.directory}/*.log, {self.postgres.log_file}",
            "Ctrl-C stops everything.",
        ])


async def create_databases(postgres: LocalPostgres) -> None:
    admin = await asyncpg.connect(postgres.dsn())
    try:
        existing = {row["datname"] for row in await admin.fetch("SELECT datname FROM pg_database")}
        for name in DATABASES.values():
            if name not in existing:
                await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


def opsmgr(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an `opsmgr` subcommand the way a person would, so the demo exercises the real commands."""
    return subprocess.run([sys.executable, "-m", "opsmgr", *args], capture_output=True, text=True, check=True)


def install_resources(demo: Demo) -> None:
    """Install the CRDs generated from the models, then the examples into the demo namespace."""
    crds = opsmgr("crds").stdout
    demo.cluster.kubectl("apply", "--server-side", "-f", "-", input=crds)
    demo.cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    demo.cluster.kubectl("create", "namespace", DEMO_NAMESPACE)
    examples = SOURCE_TREE / "examples"
    if examples.is_dir():
        demo.cluster.kubectl("apply", "-n", DEMO_NAMESPACE, "-f", str(examples))
