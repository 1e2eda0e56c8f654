"""The fixtures of the servers-with-Kubernetes tests (a fleet of `opsmgr server` processes under the servers' own
Role) and of the data-path tests (real agent processes)."""

from tests.integration.agent.datapath.conftest import make_agent  # noqa: F401
from tests.integration.server.conftest import pki, warehouse_dsn, warehouse_server  # noqa: F401
from tests.integration.watcher.conftest import fleet, kube  # noqa: F401
