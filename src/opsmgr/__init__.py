"""opsmgr: the Operations Manager model (management groups, servers, agents, gateways) on Kubernetes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("opsmgr")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
