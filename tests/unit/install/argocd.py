"""Argo CD's health-check runtime, for tests: each `health.lua` evaluated as Argo CD evaluates it.

Argo CD runs a health script in gopher-lua (Lua 5.1) with the object as the global `obj` and only the base,
string, table and math libraries; `assess` does the same with Lua 5.1 from lupa, in a fresh state per call.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from lupa.lua51 import LuaRuntime  # type: ignore[import-untyped]  # lupa ships no stubs

from opsmgr.api import GROUP

CUSTOMIZATIONS = Path(__file__).resolve().parents[3] / "argocd" / "resource_customizations" / GROUP

# Argo CD opens only these libraries for health scripts; a script reaching for io or os must fail here too.
SANDBOXED_RUN = """
return function(script, obj)
  local chunk, problem = loadstring(script, "health.lua")
  if chunk == nil then error(problem) end
  setfenv(chunk, {
    obj = obj, ipairs = ipairs, pairs = pairs, next = next, select = select, type = type,
    tostring = tostring, tonumber = tonumber, error = error, pcall = pcall, unpack = unpack,
    string = string, table = table, math = math,
  })
  local hs = chunk()
  return hs.status, hs.message
end
"""


class _ApiServerLoader(yaml.SafeLoader):
    """YAML as the API server serves it to Argo CD: timestamps stay strings."""


_ApiServerLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_ApiServerLoader)


def assess(kind: str, obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, message) of the kind's health.lua for this object, in a fresh Lua state as Argo CD uses."""
    lua = LuaRuntime()
    run = lua.execute(SANDBOXED_RUN)
    status, message = run((CUSTOMIZATIONS / kind / "health.lua").read_text(), lua.table_from(obj, recursive=True))
    return str(status), str(message)
