"""The security tier runs against the same real processes as the integration tier: these fixtures are reused."""

from tests.integration.server.conftest import (  # noqa: F401 - fixtures shared with the server's tests
    make_server,
    pki,
    running_server,
    warehouse_dsn,
    warehouse_server,
)
