"""The fixtures of the duties tests: a fleet of `opsmgr server` processes with Kubernetes access, under the
servers' own Role, and agent certificates."""

from tests.integration.server.conftest import pki, warehouse_dsn, warehouse_server  # noqa: F401
from tests.integration.watcher.conftest import agent_credentials, fleet, kube  # noqa: F401
