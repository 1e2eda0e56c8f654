"""The agent's YAML reader: the text of a configuration file on stdin, the parsed document (pickled) on stdout.

`opsmgr agent` reads its configuration file once, at start-up, but PyYAML's modules would then stay resident for
the agent's whole life: about 1.4 MB of issue 9's 50 MB budget. So the long-running process parses the file in this
short-lived process, as it checks certificates in `identity_helper`. The document travels pickled, not as JSON, so
the values YAML makes of a file (dates, bytes, sets as well as strings and numbers) reach the configuration's
validation exactly as an in-process `yaml.safe_load` would give them, and every message stays the same.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

import yaml


def parse(text: str) -> tuple[str, Any]:
    """("document", what `yaml.safe_load` makes of the text) or ("error", PyYAML's message with line and column)."""
    try:
        return "document", yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return "error", str(exc)


if __name__ == "__main__":
    pickle.dump(parse(sys.stdin.buffer.read().decode("utf-8")), sys.stdout.buffer)
